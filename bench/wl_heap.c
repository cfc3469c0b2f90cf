/* wl_heap.c -- workload 6 (and 7's heap half): fallback-heap latency at 90%
 * fill.
 *
 * Models the odd-sized, long-lived allocations a server sends to its general
 * heap. Sizes are log-uniform in 16 B .. 64 KiB.
 *
 * Fill is measured the way a half-fit heap sees it: a live block of n bytes
 * occupies frag(n) = max(64, next_pow2(n + 32)) bytes (rpool's heap: a
 * 32-byte header, power-of-two fragments), and "90% fill" means the sum of
 * frag() over live blocks is 90% of HEAP_BYTES. (Counting request bytes
 * instead, 90% is out of reach for any power-of-two heap: rounding alone
 * costs ~1.4x on log-uniform sizes.) The harness keeps this account itself,
 * so every column runs the identical sequence of sizes, allocations and
 * frees; the malloc columns have no capacity and simply hold the same live
 * set.
 *
 * The heap is first filled (untimed) to the target; then `ops` operations
 * run, each timed on its own with the TSC: while the fill is under the target
 * allocate a new block (and write its first word), otherwise free a random
 * live block. A failed allocation is counted and followed by a free, so the
 * run keeps moving at full fill. Reported: p50 / p99 / p99.9 / max ns per
 * operation, ns/op over the whole run, failures, the fill at the end and the
 * timer's own cost (an empty timed interval) measured in the same process.
 * With threads > 1 (workload 7) each thread keeps target/threads live and
 * does ops/threads operations; latencies of all threads are pooled.
 *
 * rpool column: rp_heap_alloc / rp_heap_free on a pool with a HEAP_BYTES heap
 * (one heap per pool, behind a lock).
 * Threads: each thread owns its live table and its slice of the latency log.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#define HEAP_BYTES ((size_t)64 << 20)
#define MIN_BYTES 16
#define MAX_BYTES ((size_t)64 << 10)
#define FILL_PCT 90
#define MAX_LIVE ((size_t)1 << 20)

/* Bytes a live block of n bytes occupies in a half-fit heap (see above). */
static inline size_t frag_bytes(size_t n)
{
    size_t f = n + 32;
    f = (size_t)1 << (64 - __builtin_clzll(f - 1));
    return f < 64 ? 64 : f;
}

typedef struct heap_thr {
    void **ptr;
    uint32_t *size;
    size_t nlive;
    size_t live_bytes; /* sum of frag_bytes() over live blocks */
    uint64_t fails;
    int fill_failed;
} heap_thr;

typedef struct heap_ctx heap_ctx;
typedef void (*heap_fill_fn)(void *ctx, heap_thr *t, size_t target,
                             rpb_rng *r);
typedef void (*heap_run_fn)(void *ctx, heap_thr *t, size_t target,
                            rpb_rng *r, uint32_t *lat, uint64_t ops);

#define HEAP_FUNCS(SUFFIX, ALLOC, FREE)                                       \
    static void heap_fill_##SUFFIX(void *ctx, heap_thr *t, size_t target,     \
                                   rpb_rng *r)                                \
    {                                                                         \
        while (t->live_bytes < target && t->nlive < MAX_LIVE) {               \
            size_t sz = rpb_rng_logsize(r, MIN_BYTES, MAX_BYTES);             \
            uint64_t *p = ALLOC(ctx, sz);                                     \
            if (!p) {                                                         \
                t->fill_failed = 1;                                           \
                break;                                                        \
            }                                                                 \
            p[0] = sz;                                                        \
            t->ptr[t->nlive] = p;                                             \
            t->size[t->nlive++] = (uint32_t)sz;                               \
            t->live_bytes += frag_bytes(sz);                                  \
        }                                                                     \
    }                                                                         \
    RPB_MEASURED static void heap_run_##SUFFIX(                               \
        void *ctx, heap_thr *t, size_t target, rpb_rng *r, uint32_t *lat,     \
        uint64_t ops)                                                         \
    {                                                                         \
        int must_free = 0;                                                    \
        for (uint64_t k = 0; k < ops; k++) {                                  \
            uint64_t t0, t1;                                                  \
            if (!must_free && t->live_bytes < target &&                       \
                t->nlive < MAX_LIVE) {                                        \
                size_t sz = rpb_rng_logsize(r, MIN_BYTES, MAX_BYTES);         \
                t0 = rpb_ticks();                                             \
                uint64_t *p = ALLOC(ctx, sz);                                 \
                t1 = rpb_ticks();                                             \
                if (p) {                                                      \
                    p[0] = sz;                                                \
                    t->ptr[t->nlive] = p;                                     \
                    t->size[t->nlive++] = (uint32_t)sz;                       \
                    t->live_bytes += frag_bytes(sz);                          \
                } else {                                                      \
                    t->fails++;                                               \
                    must_free = 1;                                            \
                }                                                             \
            } else {                                                          \
                must_free = 0;                                                \
                if (t->nlive == 0) {                                          \
                    lat[k] = 0;                                               \
                    continue;                                                 \
                }                                                             \
                size_t j = (size_t)rpb_rng_below(r, t->nlive);                \
                void *p = t->ptr[j];                                          \
                t0 = rpb_ticks();                                             \
                FREE(ctx, p);                                                 \
                t1 = rpb_ticks();                                             \
                t->live_bytes -= frag_bytes(t->size[j]);                      \
                t->nlive--;                                                   \
                t->ptr[j] = t->ptr[t->nlive];                                 \
                t->size[j] = t->size[t->nlive];                               \
            }                                                                 \
            uint64_t d = t1 - t0;                                             \
            lat[k] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;               \
        }                                                                     \
    }

HEAP_FUNCS(malloc, op_malloc, op_mfree)
#if RPB_HAVE_HEAP
HEAP_FUNCS(rpool, op_heapalloc, op_heapfree)
#endif

struct heap_ctx {
    heap_fill_fn fill;
    heap_run_fn run;
    void *actx;
    size_t target;   /* live bytes per thread */
    uint64_t ops;    /* per thread */
    uint32_t *lat;   /* threads * ops */
    uint64_t seed;
    heap_thr thr[64];
};

static void heap_thread(int idx, void *arg)
{
    heap_ctx *c = arg;
    heap_thr *t = &c->thr[idx];
    t->ptr = rpb_hbuf(MAX_LIVE * sizeof(void *));
    t->size = rpb_hbuf(MAX_LIVE * sizeof(uint32_t));
    rpb_rng r;
    rpb_rng_seed(&r, c->seed + (uint64_t)idx);
    c->fill(c->actx, t, c->target, &r);
    rpb_start(idx);
    c->run(c->actx, t, c->target, &r, c->lat + (size_t)idx * c->ops, c->ops);
    rpb_stop(idx);
}

/* The cost of an empty timed interval, so readers can tell the timer from
 * the allocator in the percentiles. */
static void timer_cost(void)
{
    enum { N = 100000 };
    uint32_t *lat = rpb_hbuf(N * sizeof(uint32_t));
    for (size_t i = 0; i < N; i++) {
        uint64_t t0 = rpb_ticks();
        uint64_t t1 = rpb_ticks();
        lat[i] = (uint32_t)(t1 - t0);
    }
    rpb_report_latency(lat, N, "timer_");
    rpb_hbuf_free(lat, N * sizeof(uint32_t));
}

void wl_heap(const rpb_args *a)
{
    static heap_ctx c;
    c.ops = (a->ops ? a->ops : 1000000) / (uint64_t)a->threads;
    c.target = HEAP_BYTES / 100 * FILL_PCT / (size_t)a->threads;
    c.seed = a->seed;
    if (rpb_is_malloc(a->alloc)) {
        c.fill = heap_fill_malloc;
        c.run = heap_run_malloc;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_HEAP
        c.actx = rpb_pool(HEAP_BYTES, -1, -1);
        c.fill = heap_fill_rpool;
        c.run = heap_run_rpool;
#else
        rpb_unavailable("rp_heap_alloc/rp_heap_free");
#endif
    } else {
        rpb_error("heap: no %s column", a->alloc_name);
    }
    (void)rpb_ns_per_tick(); /* calibrate before the threads start */
    size_t lat_bytes = (size_t)c.ops * (size_t)a->threads * sizeof(uint32_t);
    c.lat = rpb_hbuf(lat_bytes);
    uint64_t wall = rpb_run_threads(a->threads, heap_thread, &c);

    uint64_t fails = 0;
    size_t live = 0;
    int fill_failed = 0;
    for (int i = 0; i < a->threads; i++) {
        fails += c.thr[i].fails;
        live += c.thr[i].live_bytes;
        fill_failed |= c.thr[i].fill_failed;
    }
    rpb_info("heap: %d thread(s), target %zu live bytes, %llu ops/thread%s",
             a->threads, c.target * (size_t)a->threads,
             (unsigned long long)c.ops,
             fill_failed ? ", fill stopped early on a failed allocation"
                         : "");
#if RPB_HAVE_HEAP
    if (a->alloc == RPB_RPOOL) {
        rp_stats st;
        if (rp_stats_get(c.actx, &st) == 0)
            rpb_info("rpool heap by its own account: capacity %zu, "
                     "allocated %zu (%.1f%%), committed %zu, oom %llu",
                     st.heap_capacity_bytes, st.heap_allocated_bytes,
                     st.heap_capacity_bytes
                         ? 100.0 * (double)st.heap_allocated_bytes /
                               (double)st.heap_capacity_bytes
                         : 0.0,
                     st.heap_committed_bytes,
                     (unsigned long long)st.heap_oom_count);
    }
#endif
    rpb_metric("ns_per_op",
               (double)wall / ((double)c.ops * (double)a->threads));
    rpb_report_latency(c.lat, (size_t)c.ops * (size_t)a->threads, "op_");
    rpb_metric("alloc_failures", (double)fails);
    rpb_metric("end_fill_pct", 100.0 * (double)live / (double)HEAP_BYTES);
    timer_cost();
}
