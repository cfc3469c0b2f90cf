/* Link probe: thread arenas (workload 3). Linking is the test; never run. */
#include "rpool.h"

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1000) {
        rp_config c;
        rp_config_init(&c);
        rp_pool *p = rp_pool_create(&c);
        rp_arena *a = rp_arena_thread(p);
        (void)rp_arena_alloc(a, 64, 0);   /* inline: rp_arena_alloc_slow */
        (void)(rp_arena_alloc)(a, 64, 0); /* the exported function */
        rp_arena_reset(a);
        rp_pool_destroy(p);
    }
    return 0;
}
