/* stress_heap -- the fallback heap under concurrent random walks: threads
 * allocate random sizes (16 B .. 256 KiB) and free in random order, each
 * block filled with a per-block pattern that is checked before its free.
 * Periodically every thread pauses at a barrier and the main thread runs
 * rp_check (which includes the heap's invariant checker) and compares the
 * heap's allocated-bytes counter with the threads' own tally. */
#include "stress_common.h"

#define SLOTS 256

static rp_pool *pool;
static pthread_barrier_t bar;
static volatile int done;
static size_t tally[64];

struct blk {
    unsigned char *p;
    size_t n;
};

static void *walker(void *arg)
{
    int id = (int)(uintptr_t)arg;
    uint64_t rng = 99 + (uint64_t)id * 7919;
    struct blk b[SLOTS] = {{0}};
    for (int phase = 0;; phase++) {
        for (int i = 0; i < 4000; i++) {
            int s = (int)(stress_rand(&rng) % SLOTS);
            if (b[s].p) {
                for (size_t k = 0; k < b[s].n && k < 64; k++)
                    if (b[s].p[k] != (unsigned char)(s ^ id))
                        stress_fail("heap block %p damaged", (void *)b[s].p);
                tally[id] -= rp_usable_size(pool, b[s].p);
                rp_heap_free(pool, b[s].p);
                b[s].p = NULL;
            } else {
                size_t n = 16 + stress_rand(&rng) % ((stress_rand(&rng) & 7) ? 4096 : 256 * KiB);
                b[s].p = rp_heap_alloc(pool, n);
                if (!b[s].p)
                    continue; /* full: allowed */
                b[s].n = n;
                memset(b[s].p, s ^ id, n < 64 ? n : 64);
                tally[id] += rp_usable_size(pool, b[s].p);
            }
        }
        pthread_barrier_wait(&bar); /* main checks */
        pthread_barrier_wait(&bar);
        if (__atomic_load_n(&done, __ATOMIC_RELAXED))
            break;
    }
    for (int s = 0; s < SLOTS; s++)
        if (b[s].p) {
            tally[id] -= rp_usable_size(pool, b[s].p);
            rp_heap_free(pool, b[s].p);
        }
    return NULL;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_heap", 4, STRESS_TSAN ? 1.0 : 2.0, 0);
    int nt = a.threads > 64 ? 64 : a.threads;
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)2 << 30;
    c.heap_bytes = 32 * MiB; /* small: the walk fills it often */
    c.purge_delay_ms = 0;
    c.purge_thread = 0;
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
    pthread_t t[64];
    for (int i = 0; i < nt; i++)
        pthread_create(&t[i], NULL, walker, (void *)(uintptr_t)i);
    double end = stress_now() + a.seconds;
    int checks = 0;
    for (;;) {
        pthread_barrier_wait(&bar);
        size_t sum = 0;
        for (int i = 0; i < nt; i++)
            sum += tally[i];
        rp_stats s;
        rp_stats_get(pool, &s);
        STRESS_CHECK(rp_check(pool) == 0, "rp_check at check %d", checks);
        STRESS_CHECK(s.heap_allocated_bytes >= sum, "heap allocated %zu below tally %zu",
                     s.heap_allocated_bytes, sum);
        checks++;
        if (stress_now() >= end)
            __atomic_store_n(&done, 1, __ATOMIC_RELAXED);
        pthread_barrier_wait(&bar);
        if (__atomic_load_n(&done, __ATOMIC_RELAXED))
            break;
    }
    for (int i = 0; i < nt; i++)
        pthread_join(t[i], NULL);
    rp_stats s;
    rp_stats_get(pool, &s);
    STRESS_CHECK(s.heap_allocated_bytes == 0, "heap allocated %zu after freeing all",
                 s.heap_allocated_bytes);
    STRESS_CHECK(rp_check(pool) == 0, "final rp_check");
    char sum[160];
    snprintf(sum, sizeof sum, "%d checks, peak allocated %zu of %zu, ooms %llu", checks,
             s.heap_peak_allocated_bytes, s.heap_capacity_bytes, (unsigned long long)s.heap_oom_count);
    rp_pool_destroy(pool);
    return stress_finish("stress_heap", sum);
}
