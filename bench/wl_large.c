/* wl_large.c -- workload 4: large buffers, alloc/free churn, and RSS.
 *
 * Models I/O buffers and per-connection scratch: a working set of SLOTS
 * buffers of one size (64 KiB, 1 MiB or 4 MiB; SLOTS * size = 32 MiB,
 * at least 8 slots). Each operation picks a random slot, frees its buffer,
 * allocates a new one and touches every page of it (one write per page), so
 * the cost includes page faults on memory the allocator handed back to the
 * OS. Single thread.
 *
 * Where in each page the write lands matters: buffers aligned to a power of
 * two (rpool regions are aligned to their size) all start on the same cache
 * sets, so writing the same page offset in every buffer makes them evict each
 * other (cache-set aliasing). After the fill and an untimed warm-up churn of
 * ops/2 (steady state, not the allocator's first reaction: glibc, e.g.,
 * unmaps the first large frees, then raises its mmap threshold), the timed
 * churn runs twice: first writing at offset 64 * slot within each page
 * (staggered by slot, so the figure is allocator + page-fault cost), then the
 * same number of operations writing at page offset 0 (what code that writes
 * a header at the start of each page or buffer sees; the aliasing shows as
 * the difference).
 *
 * Reported: ns per operation (alloc + touch + free; ops/s = 1e9 / ns) for
 * both passes, the peak RSS growth over the baseline taken before the first
 * allocation, the RSS growth right after every buffer is freed, and again
 * after waiting wait_ms (past rpool's purge delay): which allocators give
 * memory back and when.
 *
 * rpool column: rp_region_acquire / rp_region_release on a pool with
 * purge_delay_ms = purge_ms and the background purge thread on.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#include <time.h>

#define WORKING_SET_BYTES ((size_t)32 << 20)
#define MIN_SLOTS 8

#define LARGE_LOOP(NAME, ALLOC, FREE)                                         \
    RPB_MEASURED static void NAME(                                            \
        void *ctx, void **slots, size_t nslots, size_t size, uint64_t ops,    \
        rpb_rng *r, int stagger)                                              \
    {                                                                         \
        size_t page = rpb_page_size();                                        \
        for (uint64_t k = 0; k < ops; k++) {                                  \
            size_t i = (size_t)rpb_rng_below(r, nslots);                      \
            if (slots[i])                                                     \
                FREE(ctx, slots[i]);                                          \
            char *p = ALLOC(ctx, size);                                       \
            if (__builtin_expect(p == NULL, 0))                               \
                op_failed(#ALLOC, size);                                      \
            size_t at = stagger ? (i * 64) % page : 0;                        \
            for (size_t off = at; off < size; off += page)                    \
                p[off] = (char)k;                                             \
            slots[i] = p;                                                     \
        }                                                                     \
    }                                                                         \
    static void NAME##_fill(void *ctx, void **slots, size_t nslots,           \
                            size_t size)                                      \
    {                                                                         \
        size_t page = rpb_page_size();                                        \
        for (size_t i = 0; i < nslots; i++) {                                 \
            char *p = ALLOC(ctx, size);                                       \
            if (p == NULL)                                                    \
                op_failed(#ALLOC, size);                                      \
            for (size_t off = 0; off < size; off += page)                     \
                p[off] = 1;                                                   \
            slots[i] = p;                                                     \
        }                                                                     \
    }                                                                         \
    static void NAME##_drain(void *ctx, void **slots, size_t nslots)          \
    {                                                                         \
        for (size_t i = 0; i < nslots; i++) {                                 \
            if (slots[i])                                                     \
                FREE(ctx, slots[i]);                                          \
            slots[i] = NULL;                                                  \
        }                                                                     \
    }

LARGE_LOOP(large_loop_malloc, op_malloc, op_mfree)
#if RPB_HAVE_REGION
LARGE_LOOP(large_loop_rpool, op_regacquire, op_regrelease)
#endif

static double mib(size_t now, size_t base)
{
    return ((double)now - (double)base) / (1024.0 * 1024.0);
}

void wl_large(const rpb_args *a)
{
    size_t size = a->size ? a->size : (size_t)1 << 20;
    size_t nslots = WORKING_SET_BYTES / size;
    if (nslots < MIN_SLOTS)
        nslots = MIN_SLOTS;
    void **slots = rpb_hbuf(nslots * sizeof(void *));
    void (*loop)(void *, void **, size_t, size_t, uint64_t, rpb_rng *,
                 int) = NULL;
    void (*fill)(void *, void **, size_t, size_t) = NULL;
    void (*drain)(void *, void **, size_t) = NULL;
    void *ctx = NULL;
    if (rpb_is_malloc(a->alloc)) {
        loop = large_loop_malloc;
        fill = large_loop_malloc_fill;
        drain = large_loop_malloc_drain;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_REGION
        ctx = rpb_pool(0, (long)a->purge_ms, 1);
        loop = large_loop_rpool;
        fill = large_loop_rpool_fill;
        drain = large_loop_rpool_drain;
#else
        rpb_unavailable("rp_region_acquire/rp_region_release");
#endif
    } else {
        rpb_error("large: no %s column", a->alloc_name);
    }
    rpb_rng r;
    rpb_rng_seed(&r, a->seed);

    size_t base = rpb_rss_bytes();
    int hwm_ok = rpb_rss_peak_reset() == 0;
    /* Fill the working set (untimed), then churn. */
    fill(ctx, slots, nslots, size);
    uint64_t ops = a->ops ? a->ops : 1000;
    /* Untimed warm-up churn: steady state, not the allocator's first
     * reaction (glibc, e.g., unmaps the first large frees and then raises
     * its mmap threshold). */
    loop(ctx, slots, nslots, size, ops / 2, &r, 1);
    uint64_t t0 = rpb_now_ns();
    loop(ctx, slots, nslots, size, ops, &r, 1);
    uint64_t t1 = rpb_now_ns();
    loop(ctx, slots, nslots, size, ops, &r, 0);
    uint64_t t2 = rpb_now_ns();
    size_t live = rpb_rss_bytes();
    drain(ctx, slots, nslots);
    size_t after_free = rpb_rss_bytes();
    size_t peak = rpb_rss_peak_bytes();
    struct timespec d = {(time_t)(a->wait_ms / 1000),
                         (long)(a->wait_ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
    size_t after_wait = rpb_rss_bytes();

    if (!hwm_ok || peak < live)
        peak = live; /* no clear_refs: the live sample is the best we have */
    rpb_info("large: %zu slots of %zu bytes, %llu ops, baseline RSS %.1f MiB",
             nslots, size, (unsigned long long)ops, mib(base, 0));
    rpb_metric("ns_per_op", (double)(t1 - t0) / (double)ops);
    rpb_metric("ns_per_op_offset0", (double)(t2 - t1) / (double)ops);
    rpb_metric("peak_rss_mib", mib(peak, base));
    rpb_metric("rss_after_free_mib", mib(after_free, base));
    rpb_metric("rss_after_wait_mib", mib(after_wait, base));
}
