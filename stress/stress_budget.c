/* stress_budget -- two scenarios against a physical budget.
 *
 * ramp: threads raise live memory in steps to 90% of the budget and back
 * down, several times. A monitor samples the counters: physical never above
 * the budget; virtual plateaus; at each quiescent step the counters equal
 * the test's own tally of live bytes.
 *
 * storm: all threads allocate until ENOMEM at the same moment, hold, free
 * everything; repeated. Nobody deadlocks (watchdog); after everyone frees,
 * the whole budget is usable again by a single thread. */
#include "stress_common.h"

#define BUDGET (64 * MiB)

static rp_pool *pool;
static pthread_barrier_t bar;
static int nthreads;
static volatile int stop_monitor;
static size_t live_bytes[64];

static void print_err(void *opaque, const char *text)
{
    (void)opaque;
    fputs(text, stderr);
}

static void *monitor(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop_monitor, __ATOMIC_RELAXED)) {
        rp_stats s;
        rp_stats_get(pool, &s);
        STRESS_CHECK(s.physical_bytes <= s.physical_budget, "physical %zu above budget %zu",
                     s.physical_bytes, s.physical_budget);
        STRESS_CHECK(s.virtual_bytes <= s.virtual_budget, "virtual %zu above budget",
                     s.virtual_bytes);
        usleep(200);
    }
    return NULL;
}

/* Each thread holds a list of regions and objects totalling its share. */
struct held {
    void *p;
    size_t size;
    int region;
};

static void *ramp_worker(void *arg)
{
    int id = (int)(uintptr_t)arg;
    uint64_t rng = 1234 + (uint64_t)id;
    struct held *h = calloc(4096, sizeof *h);
    int n = 0;
    size_t share = BUDGET / 10 * 9 / (size_t)nthreads; /* 90% of the budget overall */
    for (int cycle = 0; cycle < 3; cycle++) {
        for (int step = 1; step <= 4; step++) {
            size_t target = share * (size_t)step / 4;
            while (live_bytes[id] + 256 * KiB <= target && n < 4096) {
                uint64_t r = stress_rand(&rng);
                int region = r & 1;
                size_t sz = region ? 64 * KiB : 1024 + (r >> 8) % 8192;
                void *p = region ? rp_region_acquire(pool, sz) : rp_alloc(pool, sz);
                if (!p) { /* metadata and slab rounding use a little room */
                    break;
                }
                memset(p, 1, sz < 4096 ? sz : 4096);
                h[n++] = (struct held){p, region ? rp_region_size(pool, p) : rp_usable_size(pool, p), region};
                live_bytes[id] += h[n - 1].size;
            }
            pthread_barrier_wait(&bar); /* quiescent point: main checks */
            pthread_barrier_wait(&bar);
        }
        while (n > 0) {
            n--;
            if (h[n].region)
                rp_region_release(pool, h[n].p);
            else
                rp_free(pool, h[n].p);
            live_bytes[id] -= h[n].size;
        }
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar);
    }
    free(h);
    rp_thread_detach(pool);
    return NULL;
}

static void *storm_worker(void *arg)
{
    (void)arg;
    void **p = calloc(8192, sizeof *p);
    for (int round = 0; round < 5; round++) {
        pthread_barrier_wait(&bar);
        int n = 0, enomem = 0;
        while (n < 8192) {
            void *q = (n & 1) ? rp_alloc(pool, 8192) : rp_region_acquire(pool, 128 * KiB);
            if (!q) {
                STRESS_CHECK(errno == ENOMEM, "errno %d, not ENOMEM", errno);
                enomem = 1;
                break;
            }
            memset(q, 3, 64);
            p[n++] = q;
        }
        STRESS_CHECK(enomem, "never reached the budget");
        pthread_barrier_wait(&bar); /* everyone at the budget at once */
        for (int i = 0; i < n; i++) {
            if (i & 1)
                rp_free(pool, p[i]);
            else
                rp_region_release(pool, p[i]);
        }
        rp_thread_detach(pool);
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar); /* main thread re-fills the budget */
    }
    free(p);
    return NULL;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_budget", 4, 0, 0);
    nthreads = a.threads > 64 ? 64 : a.threads;
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)2 << 30;
    c.physical_budget = BUDGET;
    c.heap_bytes = 32 * MiB;
    c.purge_delay_ms = 10;
    c.purge_thread = 1;
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    pthread_t mon, t[64];
    pthread_create(&mon, NULL, monitor, NULL);

    /* ramp */
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++)
        pthread_create(&t[i], NULL, ramp_worker, (void *)(uintptr_t)i);
    size_t plateau = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
        for (int step = 0; step <= 4; step++) {
            pthread_barrier_wait(&bar);
            rp_stats s;
            rp_stats_get(pool, &s);
            size_t tally = 0;
            for (int i = 0; i < nthreads; i++)
                tally += live_bytes[i];
            /* Counters equal our tally: regions exactly; objects by their
             * class size (usable size). */
            STRESS_CHECK(s.region_in_use_bytes + s.slab_bytes + s.heap_allocated_bytes >= tally,
                         "counters %zu below tally %zu",
                         s.region_in_use_bytes + s.slab_bytes + s.heap_allocated_bytes, tally);
            if (step == 4) { /* all freed */
                STRESS_CHECK(s.slab_bytes == 0 && s.heap_allocated_bytes == 0, "objects left");
                if (cycle == 0)
                    plateau = s.virtual_bytes;
                else
                    STRESS_CHECK(s.virtual_bytes <= plateau + 4 * MiB,
                                 "virtual grew from %zu to %zu", plateau, s.virtual_bytes);
            }
            STRESS_CHECK(rp_check(pool) == 0, "rp_check at step %d", step);
            pthread_barrier_wait(&bar);
        }
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);

    /* storm */
    pthread_barrier_init(&bar, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++)
        pthread_create(&t[i], NULL, storm_worker, NULL);
    size_t best = 0;
    for (int round = 0; round < 5; round++) {
        pthread_barrier_wait(&bar); /* go */
        pthread_barrier_wait(&bar); /* all at the budget */
        pthread_barrier_wait(&bar); /* all freed */
        /* The whole budget is usable again, by one thread. */
        size_t got = 0;
        void *r[1024];
        int n = 0;
        while (n < 1024 && (r[n] = rp_region_acquire(pool, 128 * KiB)))
            got += 128 * KiB, n++;
        rp_stats s;
        rp_stats_get(pool, &s);
        if (!(got + s.metadata_bytes + s.heap_physical_bytes + 128 * KiB > BUDGET)) {
            stress_fail("only %zu of the budget usable after the storm", got);
            rp_stats_print(pool, print_err, NULL, RP_STATS_TEXT);
        }
        best = got;
        for (int i = 0; i < n; i++)
            rp_region_release(pool, r[i]);
        pthread_barrier_wait(&bar);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    __atomic_store_n(&stop_monitor, 1, __ATOMIC_RELAXED);
    pthread_join(mon, NULL);
    rp_stats s;
    rp_stats_get(pool, &s);
    STRESS_CHECK(s.fail_physical > 0, "the storm never hit the physical budget");
    STRESS_CHECK(rp_check(pool) == 0, "final rp_check");
    char sum[200];
    snprintf(sum, sizeof sum, "budget %zu: peak physical %zu, refills %zu, ENOMEMs %llu",
             (size_t)BUDGET, s.physical_peak, best, (unsigned long long)s.fail_physical);
    rp_pool_destroy(pool);
    return stress_finish("stress_budget", sum);
}
