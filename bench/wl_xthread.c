/* wl_xthread.c -- workload 2: cross-thread free through a ring.
 *
 * Models a pipeline where one thread builds a message and another consumes
 * and frees it: threads/2 producer-consumer pairs, each pair joined by its
 * own single-producer single-consumer ring of RING slots. The producer
 * allocates a 64 B object, writes it and pushes it; the consumer pops it,
 * reads it and frees it, so every free is a remote free. ns/object is wall
 * time / objects moved (all pairs together).
 *
 * rpool column: rp_alloc in the producer, rp_free in the consumer.
 * bump column: the ring alone with preallocated objects and no allocator,
 * the floor that the harness itself costs.
 *
 * Placement (place=): free leaves it to the scheduler; split pins pair i's
 * producer to CPU 2i and its consumer to CPU 2i+1 (modulo the CPUs the
 * process may use), so every free crosses cores; pair pins both to CPU i,
 * so producer and consumer take turns on one core. On a machine with fewer
 * CPUs than threads, free placement is a lottery between those two regimes
 * (which one a run gets decides its time, for every allocator alike); the
 * pinned rows measure each regime on its own.
 *
 * Concurrency: ring.head is written only by the producer and ring.tail only
 * by the consumer. The producer's release store of head pairs with the
 * consumer's acquire load of head (the slot write happens-before the slot
 * read); the consumer's release store of tail pairs with the producer's
 * acquire load of tail (the slot read happens-before its reuse). When the
 * ring is full/empty a thread spins briefly and then yields: with more
 * threads than CPUs the partner must get to run.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#include <sched.h>
#include <stdatomic.h>

#define RING 1024
/* head/tail are published every PUBLISH items, and before waiting */
#define PUBLISH 32
#define OBJ_BYTES 64

typedef struct ring {
    _Alignas(64) _Atomic uint64_t head; /* producer writes, release */
    _Alignas(64) _Atomic uint64_t tail; /* consumer writes, release */
    _Alignas(64) void *slot[RING];
    /* reference column only: the producer's object cycle */
    _Alignas(64) uint64_t ref_next;
    void *ref[2 * RING];
} ring;

static inline void backoff(unsigned *spins)
{
    if (++*spins < 64) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

#define XT_FUNCS(SUFFIX, ALLOC, FREE)                                         \
    RPB_MEASURED static void xt_produce_##SUFFIX(                             \
        void *ctx, ring *r, uint64_t n)                                       \
    {                                                                         \
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed); \
        uint64_t pub = head;                                                  \
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire); \
        for (uint64_t i = 0; i < n; i++) {                                    \
            uint64_t *p = ALLOC(ctx, OBJ_BYTES);                              \
            if (__builtin_expect(p == NULL, 0))                               \
                op_failed(#ALLOC, OBJ_BYTES);                                 \
            p[0] = i;                                                         \
            p[7] = i;                                                         \
            unsigned spins = 0;                                               \
            while (head - tail >= RING) {                                     \
                if (pub != head) { /* never wait with items unpublished */    \
                    atomic_store_explicit(&r->head, head,                     \
                                          memory_order_release);              \
                    pub = head;                                               \
                }                                                             \
                /* pairs with the consumer's release stores of tail */        \
                tail = atomic_load_explicit(&r->tail, memory_order_acquire);  \
                if (head - tail >= RING)                                      \
                    backoff(&spins);                                          \
            }                                                                 \
            r->slot[head % RING] = p;                                         \
            head++;                                                           \
            if (head - pub >= PUBLISH) {                                      \
                /* pairs with the consumer's acquire loads of head */         \
                atomic_store_explicit(&r->head, head, memory_order_release);  \
                pub = head;                                                   \
            }                                                                 \
        }                                                                     \
        atomic_store_explicit(&r->head, head, memory_order_release);          \
    }                                                                         \
    RPB_MEASURED static uint64_t xt_consume_##SUFFIX(                         \
        void *ctx, ring *r, uint64_t n)                                       \
    {                                                                         \
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed); \
        uint64_t pub = tail;                                                  \
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire); \
        uint64_t sum = 0;                                                     \
        for (uint64_t i = 0; i < n; i++) {                                    \
            unsigned spins = 0;                                               \
            while (tail == head) {                                            \
                if (pub != tail) { /* never wait with slots unreturned */     \
                    atomic_store_explicit(&r->tail, tail,                     \
                                          memory_order_release);              \
                    pub = tail;                                               \
                }                                                             \
                /* pairs with the producer's release stores of head */        \
                head = atomic_load_explicit(&r->head, memory_order_acquire);  \
                if (tail == head)                                             \
                    backoff(&spins);                                          \
            }                                                                 \
            uint64_t *p = r->slot[tail % RING];                               \
            sum += p[0] + p[7];                                               \
            FREE(ctx, p);                                                     \
            tail++;                                                           \
            if (tail - pub >= PUBLISH) {                                      \
                /* pairs with the producer's acquire loads of tail */         \
                atomic_store_explicit(&r->tail, tail, memory_order_release);  \
                pub = tail;                                                   \
            }                                                                 \
        }                                                                     \
        atomic_store_explicit(&r->tail, tail, memory_order_release);          \
        return sum;                                                           \
    }                                                                         \
    static void xt_warm_##SUFFIX(void *ctx)                                   \
    {                                                                         \
        void **tmp = rpb_hbuf(RING * sizeof(void *));                         \
        for (size_t i = 0; i < RING; i++) {                                   \
            tmp[i] = ALLOC(ctx, OBJ_BYTES);                                   \
            if (!tmp[i])                                                      \
                op_failed(#ALLOC, OBJ_BYTES);                                 \
        }                                                                     \
        for (size_t i = 0; i < RING; i++)                                     \
            FREE(ctx, tmp[i]);                                                \
        rpb_hbuf_free(tmp, RING * sizeof(void *));                            \
    }

/* The reference column ("bump"): the ring alone, no allocator. The producer
 * cycles through 2 * RING preallocated objects of the ring's own pool; at
 * most RING are in flight, so an object is consumed before it comes round
 * again. */
static inline void *op_refalloc(void *ctx, size_t n)
{
    ring *r = ctx;
    (void)n;
    return r->ref[r->ref_next++ % (2 * RING)];
}
static inline void op_reffree(void *ctx, void *p)
{
    (void)ctx;
    (void)p;
}

XT_FUNCS(malloc, op_malloc, op_mfree)
XT_FUNCS(ref, op_refalloc, op_reffree)
#if RPB_HAVE_ALLOC
XT_FUNCS(rpool, op_rpalloc, op_rpfree)
#endif

typedef struct xt_ctx {
    void (*produce)(void *, ring *, uint64_t);
    uint64_t (*consume)(void *, ring *, uint64_t);
    void (*warm)(void *);
    void *actx;
    ring *rings;
    int pairs;
    int ref;
    int place;
    uint64_t per_pair;
    _Atomic uint64_t checksum;
} xt_ctx;

static void xt_thread(int idx, void *arg)
{
    xt_ctx *c = arg;
    int pair = idx < c->pairs ? idx : idx - c->pairs;
    int consumer = idx >= c->pairs;
    /* pinned before the warm-up, so the thread's cache is warmed where it
     * runs */
    if (c->place != RPB_PLACE_FREE) {
        int cpu = c->place == RPB_PLACE_SPLIT ? 2 * pair + consumer : pair;
        if (rpb_pin_thread(cpu) != 0)
            rpb_error("xthread: cannot pin thread %d to CPU %d", idx, cpu);
    }
    if (!c->ref)
        c->warm(c->actx);
    rpb_start(idx);
    ring *r = &c->rings[pair];
    void *actx = c->ref ? (void *)r : c->actx;
    if (!consumer) {
        c->produce(actx, r, c->per_pair);
    } else {
        uint64_t s = c->consume(actx, r, c->per_pair);
        atomic_fetch_add_explicit(&c->checksum, s, memory_order_relaxed);
    }
    rpb_stop(idx);
}

void wl_xthread(const rpb_args *a)
{
    if (a->threads < 2 || a->threads % 2)
        rpb_error("xthread needs an even thread count >= 2, got %d",
                  a->threads);
    if (a->place == RPB_PLACE_SPLIT && rpb_cpu_count() < 2)
        rpb_error("xthread place=split needs 2 CPUs, the process may use %d",
                  rpb_cpu_count());
    xt_ctx c = {.pairs = a->threads / 2, .place = a->place};
    c.per_pair = a->ops / (uint64_t)c.pairs;
    if (c.per_pair == 0)
        c.per_pair = 1;
    c.rings = rpb_hbuf(sizeof(ring) * (size_t)c.pairs);
    if (rpb_is_malloc(a->alloc)) {
        c.produce = xt_produce_malloc;
        c.consume = xt_consume_malloc;
        c.warm = xt_warm_malloc;
    } else if (a->alloc == RPB_BUMP) {
        c.ref = 1;
        c.produce = xt_produce_ref;
        c.consume = xt_consume_ref;
        c.warm = xt_warm_ref;
        for (int i = 0; i < c.pairs; i++) {
            char *objs = rpb_hbuf(2 * RING * OBJ_BYTES);
            for (size_t k = 0; k < 2 * RING; k++)
                c.rings[i].ref[k] = objs + k * OBJ_BYTES;
        }
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_ALLOC
        c.actx = rpb_pool(0, -1, -1);
        c.produce = xt_produce_rpool;
        c.consume = xt_consume_rpool;
        c.warm = xt_warm_rpool;
#else
        rpb_unavailable("rp_alloc/rp_free");
#endif
    } else {
        rpb_error("xthread: no %s column", a->alloc_name);
    }
    uint64_t wall = rpb_run_threads(a->threads, xt_thread, &c);
    rpb_metric("ns_per_object",
               (double)wall / ((double)c.per_pair * (double)c.pairs));
}
