/* Link probe: object pools (workloads 1, 2, 5, 7). Linking is the test;
 * never run. */
#include "rpool.h"

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1000) {
        rp_config c;
        rp_config_init(&c);
        rp_pool *p = rp_pool_create(&c);
        rp_free(p, rp_alloc(p, 64));
        rp_pool_destroy(p);
    }
    return 0;
}
