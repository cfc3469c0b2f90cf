/* stress_churn -- many short-lived threads, each allocating from its thread
 * arena, the object pools and the region pools, then exiting without
 * cleaning up. Afterwards physical memory must be back at its baseline
 * (after rp_purge), every shard detached (stats threads == 0 once the RCU
 * grace periods have run), and rp_check must pass. */
#include "stress_common.h"

static rp_pool *pool;

static void *one(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg;
    rp_arena *a = rp_arena_thread(pool);
    if (!a)
        return stress_fail("rp_arena_thread failed"), NULL;
    for (int i = 0; i < 50; i++) {
        char *p = rp_arena_alloc(a, 16 + stress_rand(&rng) % 2000, 16);
        if (!p)
            return stress_fail("arena alloc failed"), NULL;
        p[0] = 1;
    }
    void *keep[8];
    for (int i = 0; i < 8; i++) {
        keep[i] = rp_alloc(pool, 16 + stress_rand(&rng) % 3000);
        if (!keep[i])
            return stress_fail("rp_alloc failed"), NULL;
        memset(keep[i], 7, 16);
    }
    for (int i = 0; i < 8; i += 2) /* half freed, half left to thread exit */
        rp_free(pool, keep[i]);
    void *r = rp_region_acquire(pool, 64 * KiB);
    if (r)
        rp_region_release(pool, r);
    /* The odd objects stay allocated: the main thread frees them after the
     * thread is gone (a cross-thread free into an abandoned slab). */
    void **out = malloc(4 * sizeof *out);
    for (int i = 1, j = 0; i < 8; i += 2)
        out[j++] = keep[i];
    return out;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_churn", 4, 0,
                                        STRESS_TSAN ? 1000 : 4000);
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)4 << 30;
    c.heap_bytes = 64 * MiB;
    c.purge_delay_ms = 0;
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    rp_stats base;
    rp_stats_get(pool, &base);
    long done = 0;
    while (done < a.count) {
        pthread_t t[16];
        int n = a.threads > 16 ? 16 : a.threads;
        for (int i = 0; i < n; i++)
            if (pthread_create(&t[i], NULL, one, (void *)(uintptr_t)(a.seed + (uint64_t)done + (uint64_t)i)))
                stress_fail("pthread_create");
        for (int i = 0; i < n; i++) {
            void **left;
            pthread_join(t[i], (void **)&left);
            if (left) {
                for (int j = 0; j < 4; j++)
                    rp_free(pool, left[j]);
                free(left);
            }
        }
        done += n;
    }
    /* Shards are recycled after an RCU grace period: wait for them. */
    rp_stats st;
    for (int i = 0; i < 500; i++) {
        rp_stats_get(pool, &st);
        if (st.threads == 0)
            break;
        usleep(10000);
    }
    STRESS_CHECK(st.threads == 0, "%llu shards still live", (unsigned long long)st.threads);
    STRESS_CHECK(st.slab_bytes == 0, "slab_bytes %zu", st.slab_bytes);
    STRESS_CHECK(st.arena_bytes == 0, "arena_bytes %zu", st.arena_bytes);
    STRESS_CHECK(rp_check(pool) == 0, "rp_check");
    rp_purge(pool);
    rp_stats_get(pool, &st);
    STRESS_CHECK(st.region_in_use_bytes == 0, "regions in use %zu", st.region_in_use_bytes);
    STRESS_CHECK(st.physical_bytes == st.metadata_bytes + st.heap_physical_bytes,
                 "physical %zu != metadata %zu + heap %zu", st.physical_bytes,
                 st.metadata_bytes, st.heap_physical_bytes);
    /* Metadata may only have grown by recycled shard slots and descriptor
     * pages: bounded by 4 MiB here, never per-thread-unbounded. */
    STRESS_CHECK(st.metadata_bytes - base.metadata_bytes < 4 * MiB,
                 "metadata grew by %zu bytes", st.metadata_bytes - base.metadata_bytes);
    char sum[160];
    snprintf(sum, sizeof sum, "%ld threads; physical %zu, metadata +%zu", done, st.physical_bytes,
             st.metadata_bytes - base.metadata_bytes);
    rp_pool_destroy(pool);
    return stress_finish("stress_churn", sum);
}
