/* Link probe: regions (workload 4). Linking is the test; never run. */
#include "rpool.h"

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1000) {
        rp_config c;
        rp_config_init(&c);
        rp_pool *p = rp_pool_create(&c);
        rp_region_release(p, rp_region_acquire(p, 65536));
        rp_pool_destroy(p);
    }
    return 0;
}
