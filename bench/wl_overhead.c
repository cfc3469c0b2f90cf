/* wl_overhead.c -- workload 5: memory overhead of many small live objects.
 *
 * Models a large in-memory index: ops (default 8 million) live objects of
 * 32 bytes, each fully written. Reported: RSS growth / payload bytes (1.00
 * would be no overhead at all; 1.5 means 16 bytes of header or rounding per
 * 32-byte object), and the cost per allocation while filling. The pointer
 * array comes from mmap and is touched before the baseline is taken, so only
 * the allocator's pages count.
 *
 * rpool column: rp_alloc(32) on one pool.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#define OBJ_BYTES 32

#define FILL_LOOP(NAME, ALLOC)                                                \
    RPB_MEASURED static void NAME(void *ctx,                                  \
                                                        void **ptrs,          \
                                                        uint64_t n)           \
    {                                                                         \
        for (uint64_t i = 0; i < n; i++) {                                    \
            uint64_t *p = ALLOC(ctx, OBJ_BYTES);                              \
            if (__builtin_expect(p == NULL, 0))                               \
                op_failed(#ALLOC, OBJ_BYTES);                                 \
            p[0] = i;                                                         \
            p[1] = i;                                                         \
            p[2] = i;                                                         \
            p[3] = i;                                                         \
            ptrs[i] = p;                                                      \
        }                                                                     \
    }

FILL_LOOP(overhead_fill_malloc, op_malloc)
#if RPB_HAVE_ALLOC
FILL_LOOP(overhead_fill_rpool, op_rpalloc)
#endif

void wl_overhead(const rpb_args *a)
{
    uint64_t n = a->ops ? a->ops : 8000000;
    void (*fill)(void *, void **, uint64_t) = NULL;
    void *ctx = NULL;
    if (rpb_is_malloc(a->alloc)) {
        fill = overhead_fill_malloc;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_ALLOC
        ctx = rpb_pool(0, -1, -1);
        fill = overhead_fill_rpool;
#else
        rpb_unavailable("rp_alloc/rp_free");
#endif
    } else {
        rpb_error("overhead: no %s column", a->alloc_name);
    }
    size_t pbytes = (size_t)n * sizeof(void *);
    void **ptrs = rpb_hbuf(pbytes);
    memset(ptrs, 0, pbytes); /* resident before the baseline */
    size_t base = rpb_rss_bytes();
    uint64_t t0 = rpb_now_ns();
    fill(ctx, ptrs, n);
    uint64_t t1 = rpb_now_ns();
    size_t full = rpb_rss_bytes();
    double payload = (double)n * OBJ_BYTES;
    rpb_info("overhead: %llu objects of %d bytes, baseline RSS %.1f MiB, "
             "full %.1f MiB",
             (unsigned long long)n, OBJ_BYTES, (double)base / 1048576.0,
             (double)full / 1048576.0);
    rpb_metric("rss_per_payload", ((double)full - (double)base) / payload);
    rpb_metric("ns_per_alloc", (double)(t1 - t0) / (double)n);
}
