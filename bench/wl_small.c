/* wl_small.c -- workload 1: small objects, LIFO or random free order.
 *
 * Models the object churn of a server's hot path: each thread allocates a
 * batch of BATCH objects of one size (64 or 256 B), writes a word into each,
 * then frees the batch in reverse order (LIFO: the friendliest case for a
 * free list) or in a fixed random permutation (scattered frees, the free list
 * loses locality). Strong scaling: the total number of pairs is fixed and
 * split over the threads, so ns/pair is wall time / total pairs (the inverse
 * of throughput; it can only fall with threads if the allocator scales).
 *
 * rpool column: rp_alloc / rp_free on one pool shared by all threads.
 * Threads: each thread owns its slot array; the permutation is read-only.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#define BATCH 4096

typedef void (*small_loop_fn)(void *ctx, void **slots, const uint32_t *perm,
                              size_t size, uint64_t iters);

/* The measured loop; one copy per allocator and free order, named for
 * callgrind's --toggle-collect=small_loop_*. */
#define SMALL_LOOP(NAME, ALLOC, FREE, RANDOM)                                 \
    RPB_MEASURED static void NAME(                                            \
        void *ctx, void **slots, const uint32_t *perm, size_t size,           \
        uint64_t iters)                                                       \
    {                                                                         \
        for (uint64_t it = 0; it < iters; it++) {                             \
            for (size_t i = 0; i < BATCH; i++) {                              \
                uint64_t *p = ALLOC(ctx, size);                               \
                if (__builtin_expect(p == NULL, 0))                           \
                    op_failed(#ALLOC, size);                                  \
                p[0] = i;                                                     \
                slots[i] = p;                                                 \
            }                                                                 \
            if (RANDOM) {                                                     \
                for (size_t i = 0; i < BATCH; i++)                            \
                    FREE(ctx, slots[perm[i]]);                                \
            } else {                                                          \
                for (size_t i = BATCH; i > 0; i--)                            \
                    FREE(ctx, slots[i - 1]);                                  \
            }                                                                 \
        }                                                                     \
    }

SMALL_LOOP(small_loop_malloc_lifo, op_malloc, op_mfree, 0)
SMALL_LOOP(small_loop_malloc_random, op_malloc, op_mfree, 1)
#if RPB_HAVE_ALLOC
SMALL_LOOP(small_loop_rpool_lifo, op_rpalloc, op_rpfree, 0)
SMALL_LOOP(small_loop_rpool_random, op_rpalloc, op_rpfree, 1)
#endif

typedef struct small_ctx {
    small_loop_fn loop;
    void *actx;
    size_t size;
    uint64_t iters; /* per thread */
    const uint32_t *perm;
} small_ctx;

static void small_thread(int idx, void *arg)
{
    small_ctx *c = arg;
    void **slots = rpb_hbuf(BATCH * sizeof(void *));
    /* Warm-up: one batch, so first-touch page faults and thread-cache set-up
     * fall outside the measured interval for every allocator alike. */
    c->loop(c->actx, slots, c->perm, c->size, 1);
    rpb_start(idx);
    c->loop(c->actx, slots, c->perm, c->size, c->iters);
    rpb_stop(idx);
    rpb_hbuf_free(slots, BATCH * sizeof(void *));
}

void wl_small(const rpb_args *a)
{
    small_ctx c = {.size = a->size ? a->size : 64};
    uint32_t *perm = rpb_hbuf(BATCH * sizeof(uint32_t));
    rpb_permutation(perm, BATCH, a->seed);
    c.perm = perm;
    if (a->iters) {
        c.iters = a->iters;
    } else {
        uint64_t per = a->ops / (uint64_t)a->threads / BATCH;
        c.iters = per ? per : 1;
    }
    if (rpb_is_malloc(a->alloc)) {
        c.loop = a->random_order ? small_loop_malloc_random
                                 : small_loop_malloc_lifo;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_ALLOC
        c.actx = rpb_pool(0, -1, -1);
        c.loop = a->random_order ? small_loop_rpool_random
                                 : small_loop_rpool_lifo;
#else
        rpb_unavailable("rp_alloc/rp_free");
#endif
    } else {
        rpb_error("small: no %s column", a->alloc_name);
    }
    uint64_t wall = rpb_run_threads(a->threads, small_thread, &c);
    double pairs = (double)c.iters * BATCH * a->threads;
    rpb_metric("ns_per_pair", (double)wall / pairs);
}
