/* Link probe: the fallback heap and its stats (workloads 6, 7). Linking is the test;
 * never run. */
#include "rpool.h"

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1000) {
        rp_config c;
        rp_config_init(&c);
        rp_pool *p = rp_pool_create(&c);
        rp_stats st;
        rp_heap_free(p, rp_heap_alloc(p, 64));
        rp_stats_get(p, &st);
        rp_pool_destroy(p);
    }
    return 0;
}
