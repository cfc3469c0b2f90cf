/* hello.c -- the smallest rpool program: a pool with a physical budget, a
 * region, an object, a per-thread arena, and the stats. */
#include <rpool.h>
#include <stdio.h>
#include <string.h>

static void print(void *opaque, const char *text)
{
    fputs(text, opaque);
}

int main(void)
{
    rp_config cfg;
    rp_config_init(&cfg);
    cfg.reserve_bytes = (size_t)1 << 30;
    cfg.physical_budget = (size_t)256 << 20;
    cfg.heap_bytes = (size_t)64 << 20;
    rp_pool *pool = rp_pool_create(&cfg);
    if (!pool) {
        perror("rp_pool_create");
        return 1;
    }
    char *region = rp_region_acquire(pool, 1 << 20);
    strcpy(region, "hello from a 1 MiB region");
    char *obj = rp_alloc(pool, 64);
    strcpy(obj, "hello from a 64-byte object");
    rp_arena *a = rp_arena_thread(pool);
    char *tmp = rp_arena_alloc(a, 128, 16);
    snprintf(tmp, 128, "%s / %s", region, obj);
    puts(tmp);
    rp_arena_reset(a);
    rp_free(pool, obj);
    rp_region_release(pool, region);
    rp_stats_print(pool, print, stdout, RP_STATS_TEXT);
    rp_pool_destroy(pool);
    printf("rpool %s\n", rp_version());
    return 0;
}
