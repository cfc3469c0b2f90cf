/* wl_request.c -- workload 3: request-scoped allocation.
 *
 * Models a server request: NOBJ objects of mixed sizes (log-uniform in
 * 16..4096 B, one fixed seeded sequence shared by every thread and every
 * allocator), each written once, then everything freed at the end of the
 * request. ns/object is wall time / objects (all threads together).
 *
 *   malloc columns: malloc each object, free them all in allocation order.
 *   rpool:          the calling thread's arena (rp_arena_thread), one
 *                   rp_arena_alloc per object, rp_arena_reset per request.
 *                   rp_arena_alloc is the inline fast path of rpool.h (an
 *                   aligned bump in this loop, rp_arena_alloc_slow when a
 *                   chunk ends), as in any program built against rpool.h.
 *   bump:           an inline bump pointer over a preallocated, pre-touched
 *                   buffer, reset per request: the physical limit (what
 *                   an arena's fast path could at best cost).
 *
 * Every column stores each pointer in the same slot array, so the harness
 * cost is the same in all of them.
 * Threads: each thread owns its arena, slots and bump buffer; sizes[] is
 * read-only.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#define NOBJ 200
#define MIN_BYTES 16
#define MAX_BYTES 4096

typedef void (*req_loop_fn)(void *ctx, void **slots, const uint32_t *sizes,
                            uint64_t requests);

RPB_MEASURED static void
request_loop_malloc(void *ctx, void **slots, const uint32_t *sizes,
                    uint64_t requests)
{
    (void)ctx;
    for (uint64_t r = 0; r < requests; r++) {
        for (size_t i = 0; i < NOBJ; i++) {
            uint64_t *p = op_malloc(NULL, sizes[i]);
            if (__builtin_expect(p == NULL, 0))
                op_failed("malloc", sizes[i]);
            p[0] = i;
            slots[i] = p;
        }
        for (size_t i = 0; i < NOBJ; i++)
            op_mfree(NULL, slots[i]);
    }
}

typedef struct bump {
    char *base;
    size_t bytes;
} bump;

RPB_MEASURED static void
request_loop_bump(void *ctx, void **slots, const uint32_t *sizes,
                  uint64_t requests)
{
    bump *b = ctx;
    for (uint64_t r = 0; r < requests; r++) {
        size_t off = 0;
        for (size_t i = 0; i < NOBJ; i++) {
            uint64_t *p = (uint64_t *)(b->base + off);
            off += ((size_t)sizes[i] + 15) & ~(size_t)15;
            p[0] = i;
            slots[i] = p;
        }
        /* reset: off goes back to 0 at the top of the next request */
    }
}

#if RPB_HAVE_ARENA
RPB_MEASURED static void
request_loop_rpool(void *ctx, void **slots, const uint32_t *sizes,
                   uint64_t requests)
{
    rp_arena *a = ctx;
    for (uint64_t r = 0; r < requests; r++) {
        for (size_t i = 0; i < NOBJ; i++) {
            uint64_t *p = rp_arena_alloc(a, sizes[i], 0);
            if (__builtin_expect(p == NULL, 0))
                op_failed("rp_arena_alloc", sizes[i]);
            p[0] = i;
            slots[i] = p;
        }
        rp_arena_reset(a);
    }
}
#endif

typedef struct req_ctx {
    req_loop_fn loop;
    rp_pool *pool;
    rpb_alloc alloc;
    const uint32_t *sizes;
    size_t total_bytes; /* sum of 16-aligned sizes, for the bump buffer */
    uint64_t requests;  /* per thread */
} req_ctx;

static void req_thread(int idx, void *arg)
{
    req_ctx *c = arg;
    void **slots = rpb_hbuf(NOBJ * sizeof(void *));
    void *actx = NULL;
    bump b = {0};
    if (c->alloc == RPB_BUMP) {
        b.bytes = c->total_bytes;
        b.base = rpb_hbuf(b.bytes);
        memset(b.base, 1, b.bytes); /* pre-touched: no page faults */
        actx = &b;
    }
#if RPB_HAVE_ARENA
    if (c->alloc == RPB_RPOOL) {
        actx = rp_arena_thread(c->pool);
        if (!actx)
            op_failed("rp_arena_thread", 0);
    }
#endif
    c->loop(actx, slots, c->sizes, 2); /* warm-up */
    rpb_start(idx);
    c->loop(actx, slots, c->sizes, c->requests);
    rpb_stop(idx);
    if (b.base)
        rpb_hbuf_free(b.base, b.bytes);
    rpb_hbuf_free(slots, NOBJ * sizeof(void *));
}

void wl_request(const rpb_args *a)
{
    uint32_t *sizes = rpb_hbuf(NOBJ * sizeof(uint32_t));
    rpb_rng r;
    rpb_rng_seed(&r, a->seed);
    req_ctx c = {.alloc = a->alloc, .sizes = sizes};
    for (size_t i = 0; i < NOBJ; i++) {
        sizes[i] = (uint32_t)rpb_rng_logsize(&r, MIN_BYTES, MAX_BYTES);
        c.total_bytes += ((size_t)sizes[i] + 15) & ~(size_t)15;
    }
    if (a->iters) {
        c.requests = a->iters;
    } else {
        uint64_t per = a->ops / NOBJ / (uint64_t)a->threads;
        c.requests = per ? per : 1;
    }
    if (rpb_is_malloc(a->alloc)) {
        c.loop = request_loop_malloc;
    } else if (a->alloc == RPB_BUMP) {
        c.loop = request_loop_bump;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_ARENA
        c.pool = rpb_pool(0, -1, -1);
        c.loop = request_loop_rpool;
#else
        rpb_unavailable("rp_arena_thread/rp_arena_alloc/rp_arena_reset");
#endif
    }
    rpb_info("request: %d objects, %zu bytes per request", NOBJ,
             c.total_bytes);
    uint64_t wall = rpb_run_threads(a->threads, req_thread, &c);
    double objs = (double)c.requests * NOBJ * a->threads;
    rpb_metric("ns_per_object", (double)wall / objs);
}
