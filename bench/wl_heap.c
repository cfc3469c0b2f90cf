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
 * What is timed, and what is not. The program using a heap writes the memory
 * it gets: every allocated block is touched, one write in every page it
 * overlaps (in the untimed fill too). That first touch is the user's cost,
 * not the allocator's, so it is timed on its own (touch_*), and the
 * allocator's numbers (op_*, alloc_*, free_*) are the allocation or free call
 * alone, each bracketed by two TSC reads. A page fault the allocator takes
 * inside its call (a header written into a page it had given back) stays in
 * the allocator's numbers; a fault on the block's own pages when the user
 * first writes them shows in touch_*: an allocator that gives memory back
 * pays there, visibly.
 *
 * Passes, per thread:
 *   1. fill (untimed) to the target;
 *   2. the measured pass: `ops` operations, each timed: while the fill is
 *      under the target allocate a new block and touch it, otherwise free a
 *      random live block. A failed allocation is counted and followed by a
 *      free, so the run keeps moving at full fill;
 *   3. an attribution pass of ops/4 more operations of the same kind, with
 *      getrusage(RUSAGE_THREAD) read before and after every call (outside
 *      the timed interval; the system call disturbs caches, so this pass does
 *      not feed the main percentiles): the share of allocator calls and of
 *      touches that took a page fault, and the percentiles of the allocator
 *      calls that took none;
 * then, once, in the main thread:
 *   4. the machine's own floor: one timed write to the first word of a random
 *      live block, 200 000 times (a cache and TLB miss in a ~60 MiB working
 *      set: on a VM its p99.9 is several microseconds, and no heap operation
 *      that touches a header can beat it);
 *   5. the timer's own cost (an empty timed interval).
 * rpool only: the system calls the library made during pass 2 (madvise and
 * mprotect, counted by rpool itself, process-wide, read between barriers so
 * that no thread is in another pass) per 1000 operations.
 *
 * Replays (threads == 1 and replays=R > 0, before everything above): the
 * allocator's own tail, with the machine's noise filtered out. With one
 * thread the run is deterministic: the same seed gives the same sizes,
 * allocations and frees, and an allocator starting from the same state
 * makes the same decisions (the same searches, splits, merges, system calls
 * and header page faults) at the same operation. The process forks R
 * children one after the other, from one state; each does the fill and the
 * measured pass (its own rpool pool for the rpool column) and logs every
 * allocation's and free's ticks into shared memory. The k-th allocation is
 * then the same call in every child, and the minimum of its R times keeps
 * every cost the call has each time while dropping what hits it only in
 * some runs: timer interrupts, preemption, the hypervisor, and work a
 * background thread does at a time that depends on the clock (rpool's
 * purger). rmin_alloc_* / rmin_free_* report the distribution of these
 * per-call minima (p50, p99, p99.9, max) and rmin_alloc_max_x its max over
 * its p50: "the slowest allocation within a small constant of the median"
 * measured on the allocator rather than on the machine. If the R runs do
 * not make the same calls (counts or failures differ), rmin_diverged = 1
 * and nothing else is reported for the replays.
 *
 * Reported: ns/op over pass 2 (wall time / ops: includes the touches and the
 * harness), op_* p50 / p99 / p99.9 / max (allocator calls, alloc and free
 * pooled), alloc_* and free_* separately, touch_*, fault_pct, touch_fault_pct,
 * nofault_op_*, mem_*, timer_*, oscalls_per_kop, failures and the fill at the
 * end. With threads > 1 (workload 7) each thread keeps target/threads live
 * and does ops/threads operations; latencies of all threads are pooled.
 *
 * rpool column: rp_heap_alloc / rp_heap_free on a pool with a HEAP_BYTES heap
 * (one heap per pool, behind a lock).
 * Threads: each thread owns its live table and its slices of the latency
 * logs; the main thread reads them after rpb_run_threads has joined them.
 */
#define _GNU_SOURCE
#include "common.h"
#include "ops.h"

#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define HEAP_BYTES ((size_t)64 << 20)
#define MIN_BYTES 16
#define MAX_BYTES ((size_t)64 << 10)
#define FILL_PCT 90
#define MAX_LIVE ((size_t)1 << 20)
#define FLOOR_SAMPLES 200000

/* Bytes a live block of n bytes occupies in a half-fit heap (see above). */
static inline size_t frag_bytes(size_t n)
{
    size_t f = n + 32;
    f = (size_t)1 << (64 - __builtin_clzll(f - 1));
    return f < 64 ? 64 : f;
}

/* The user's first touch of a new block: its first word, then one byte in
 * every further page the block overlaps. */
static inline void touch_block(uint64_t *p, size_t n, size_t page)
{
    p[0] = n;
    uintptr_t a = ((uintptr_t)p + page) & ~(uintptr_t)(page - 1);
    for (; a < (uintptr_t)p + n; a += page)
        *(volatile char *)a = 1;
}

static long minor_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_THREAD, &u);
    return u.ru_minflt;
}

/* Latency logs of one thread's measured pass: allocator calls (alloc and
 * free, in operation order), allocations only, frees only, touches. */
typedef struct heap_log {
    uint32_t *op, *alloc, *free, *touch;
    size_t nop, nalloc, nfree, ntouch;
} heap_log;

/* Results of one thread's attribution pass. */
typedef struct heap_attr {
    uint32_t *nofault;  /* allocator calls that took no page fault */
    size_t nnofault;
    uint64_t calls, faulted_calls, touches, faulted_touches;
    /* Replays only (else NULL): per allocation / per free, in call order,
     * 1 if the call took a page fault. */
    uint8_t *afault, *ffault;
    size_t nafault, nffault;
} heap_attr;

typedef struct heap_thr {
    void **ptr;
    uint32_t *size;
    size_t nlive;
    size_t live_bytes; /* sum of frag_bytes() over live blocks */
    uint64_t fails;
    int fill_failed;
    heap_log log;
    heap_attr attr;
} heap_thr;

typedef void (*heap_fill_fn)(void *ctx, heap_thr *t, size_t target,
                             rpb_rng *r);
typedef void (*heap_run_fn)(void *ctx, heap_thr *t, size_t target,
                            rpb_rng *r, uint64_t ops);

static inline uint32_t clamp32(uint64_t d)
{
    return d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

/* The live set: add a block, or drop entry j (the last one moves into its
 * place). Outside the timed intervals. */
static inline void live_add(heap_thr *t, void *p, size_t sz)
{
    t->ptr[t->nlive] = p;
    t->size[t->nlive++] = (uint32_t)sz;
    t->live_bytes += frag_bytes(sz);
}

static inline void live_drop(heap_thr *t, size_t j)
{
    t->live_bytes -= frag_bytes(t->size[j]);
    t->nlive--;
    t->ptr[j] = t->ptr[t->nlive];
    t->size[j] = t->size[t->nlive];
}

/* One allocator's fill, measured pass and attribution pass. The measured
 * pass and the attribution pass make the same decisions from the same
 * random stream; only the instrumentation differs. */
#define HEAP_FUNCS(SUFFIX, ALLOC, FREE)                                       \
    static void heap_fill_##SUFFIX(void *ctx, heap_thr *t, size_t target,     \
                                   rpb_rng *r)                                \
    {                                                                         \
        size_t page = rpb_page_size();                                        \
        while (t->live_bytes < target && t->nlive < MAX_LIVE) {               \
            size_t sz = rpb_rng_logsize(r, MIN_BYTES, MAX_BYTES);             \
            uint64_t *p = ALLOC(ctx, sz);                                     \
            if (!p) {                                                         \
                t->fill_failed = 1;                                           \
                break;                                                        \
            }                                                                 \
            touch_block(p, sz, page);                                         \
            live_add(t, p, sz);                                               \
        }                                                                     \
    }                                                                         \
    RPB_MEASURED static void heap_run_##SUFFIX(                               \
        void *ctx, heap_thr *t, size_t target, rpb_rng *r, uint64_t ops)      \
    {                                                                         \
        size_t page = rpb_page_size();                                        \
        heap_log *L = &t->log;                                                \
        int must_free = 0;                                                    \
        for (uint64_t k = 0; k < ops; k++) {                                  \
            if (!must_free && t->live_bytes < target &&                       \
                t->nlive < MAX_LIVE) {                                        \
                size_t sz = rpb_rng_logsize(r, MIN_BYTES, MAX_BYTES);         \
                uint64_t t0 = rpb_ticks();                                    \
                uint64_t *p = ALLOC(ctx, sz);                                 \
                uint64_t t1 = rpb_ticks();                                    \
                L->op[L->nop++] = L->alloc[L->nalloc++] = clamp32(t1 - t0);   \
                if (p) {                                                      \
                    uint64_t t2 = rpb_ticks();                                \
                    touch_block(p, sz, page);                                 \
                    uint64_t t3 = rpb_ticks();                                \
                    L->touch[L->ntouch++] = clamp32(t3 - t2);                 \
                    live_add(t, p, sz);                                       \
                } else {                                                      \
                    t->fails++;                                               \
                    must_free = 1;                                            \
                }                                                             \
            } else {                                                          \
                must_free = 0;                                                \
                if (t->nlive == 0)                                            \
                    continue;                                                 \
                size_t j = (size_t)rpb_rng_below(r, t->nlive);                \
                void *p = t->ptr[j];                                          \
                uint64_t t0 = rpb_ticks();                                    \
                FREE(ctx, p);                                                 \
                uint64_t t1 = rpb_ticks();                                    \
                L->op[L->nop++] = L->free[L->nfree++] = clamp32(t1 - t0);     \
                live_drop(t, j);                                              \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    static void heap_attr_##SUFFIX(void *ctx, heap_thr *t, size_t target,     \
                                   rpb_rng *r, uint64_t ops)                  \
    {                                                                         \
        size_t page = rpb_page_size();                                        \
        heap_attr *A = &t->attr;                                              \
        int must_free = 0;                                                    \
        for (uint64_t k = 0; k < ops; k++) {                                  \
            uint64_t t0, t1;                                                  \
            long f0 = minor_faults(), f1;                                     \
            if (!must_free && t->live_bytes < target &&                       \
                t->nlive < MAX_LIVE) {                                        \
                size_t sz = rpb_rng_logsize(r, MIN_BYTES, MAX_BYTES);         \
                t0 = rpb_ticks();                                             \
                uint64_t *p = ALLOC(ctx, sz);                                 \
                t1 = rpb_ticks();                                             \
                f1 = minor_faults();                                          \
                if (A->afault)                                                \
                    A->afault[A->nafault++] = f1 > f0;                        \
                if (p) {                                                      \
                    touch_block(p, sz, page);                                 \
                    long f2 = minor_faults();                                 \
                    A->touches++;                                             \
                    A->faulted_touches += f2 > f1;                            \
                    live_add(t, p, sz);                                       \
                } else {                                                      \
                    must_free = 1; /* counted in pass 2 only */               \
                }                                                             \
            } else {                                                          \
                must_free = 0;                                                \
                if (t->nlive == 0)                                            \
                    continue;                                                 \
                size_t j = (size_t)rpb_rng_below(r, t->nlive);                \
                void *p = t->ptr[j];                                          \
                t0 = rpb_ticks();                                             \
                FREE(ctx, p);                                                 \
                t1 = rpb_ticks();                                             \
                f1 = minor_faults();                                          \
                if (A->ffault)                                                \
                    A->ffault[A->nffault++] = f1 > f0;                        \
                live_drop(t, j);                                              \
            }                                                                 \
            A->calls++;                                                       \
            if (f1 > f0)                                                      \
                A->faulted_calls++;                                           \
            else                                                              \
                A->nofault[A->nnofault++] = clamp32(t1 - t0);                 \
        }                                                                     \
    }

HEAP_FUNCS(malloc, op_malloc, op_mfree)
#if RPB_HAVE_HEAP
HEAP_FUNCS(rpool, op_heapalloc, op_heapfree)
#endif

struct heap_ctx {
    heap_fill_fn fill;
    heap_run_fn run, attr;
    void *actx;
    size_t target;   /* live bytes per thread */
    uint64_t ops;    /* per thread, measured pass */
    uint64_t aops;   /* per thread, attribution pass */
    uint64_t seed;
    heap_thr thr[64];
};

/* Harness memory, touched before the measured pass so that the logs' own
 * first-touch faults do not land in it. */
static void *hbuf_touched(size_t bytes)
{
    char *b = rpb_hbuf(bytes);
    memset(b, 0, bytes);
    return b;
}

/* Pass boundaries: every thread has finished the previous pass before thread
 * 0 reads rpool's process-wide OS-call counter, and none starts the next
 * pass before it has read it. */
static pthread_barrier_t pass_barrier;
static unsigned long os_at_start, os_at_stop;

static unsigned long os_calls_now(void)
{
#if RPB_HAVE_HEAP
    return rp_os_calls(RP_OS_PURGE) + rp_os_calls(RP_OS_COMMIT);
#else
    return 0;
#endif
}

/* A thread's live table and latency logs for `ops` operations, touched
 * before use; alloc/free: logs given by the caller (the replays' shared
 * ones), or NULL for fresh ones. */
static void thr_buffers(heap_thr *t, uint64_t ops, uint32_t *alloc, uint32_t *free_)
{
    size_t n = (size_t)ops * sizeof(uint32_t);
    t->ptr = hbuf_touched(MAX_LIVE * sizeof(void *));
    t->size = hbuf_touched(MAX_LIVE * sizeof(uint32_t));
    t->log.op = hbuf_touched(n);
    t->log.alloc = alloc ? alloc : hbuf_touched(n);
    t->log.free = free_ ? free_ : hbuf_touched(n);
    t->log.touch = hbuf_touched(n);
}

static void heap_thread(int idx, void *arg)
{
    struct heap_ctx *c = arg;
    heap_thr *t = &c->thr[idx];
    thr_buffers(t, c->ops, NULL, NULL);
    t->attr.nofault = hbuf_touched((size_t)c->aops * sizeof(uint32_t));
    rpb_rng r;
    rpb_rng_seed(&r, c->seed + (uint64_t)idx);
    c->fill(c->actx, t, c->target, &r);
    pthread_barrier_wait(&pass_barrier);
    if (idx == 0)
        os_at_start = os_calls_now(); /* no thread is in pass 2 yet */
    rpb_start(idx);
    c->run(c->actx, t, c->target, &r, c->ops);
    rpb_stop(idx);
    pthread_barrier_wait(&pass_barrier);
    if (idx == 0)
        os_at_stop = os_calls_now();
    pthread_barrier_wait(&pass_barrier);
    c->attr(c->actx, t, c->target, &r, c->aops);
}

/* Concatenate one log of every thread into one array (for the pooled
 * percentiles). */
static uint32_t *pool_logs(struct heap_ctx *c, int threads, size_t which,
                           size_t *n)
{
    size_t total = 0;
    for (int i = 0; i < threads; i++) {
        heap_log *L = &c->thr[i].log;
        size_t k[] = {L->nop, L->nalloc, L->nfree, L->ntouch,
                      c->thr[i].attr.nnofault};
        total += k[which];
    }
    uint32_t *all = rpb_hbuf(total * sizeof(uint32_t) + 1);
    size_t at = 0;
    for (int i = 0; i < threads; i++) {
        heap_log *L = &c->thr[i].log;
        uint32_t *src[] = {L->op, L->alloc, L->free, L->touch,
                           c->thr[i].attr.nofault};
        size_t k[] = {L->nop, L->nalloc, L->nfree, L->ntouch,
                      c->thr[i].attr.nnofault};
        memcpy(all + at, src[which], k[which] * sizeof(uint32_t));
        at += k[which];
    }
    *n = total;
    return all;
}

/* Step 4: one timed write to the first word of a random live block. */
static void memory_floor(struct heap_ctx *c, int threads, uint64_t seed)
{
    uint32_t *lat = hbuf_touched(FLOOR_SAMPLES * sizeof(uint32_t));
    rpb_rng r;
    rpb_rng_seed(&r, seed ^ 0xf1002ull);
    size_t n = 0;
    for (size_t i = 0; i < FLOOR_SAMPLES; i++) {
        heap_thr *t = &c->thr[rpb_rng_below(&r, (uint64_t)threads)];
        if (!t->nlive)
            continue;
        volatile uint64_t *p = t->ptr[rpb_rng_below(&r, t->nlive)];
        uint64_t t0 = rpb_ticks();
        *p = *p + 1;
        uint64_t t1 = rpb_ticks();
        lat[n++] = clamp32(t1 - t0);
    }
    rpb_report_latency(lat, n, "mem_");
    rpb_hbuf_free(lat, FLOOR_SAMPLES * sizeof(uint32_t));
}

/* Step 5: the cost of an empty timed interval, so readers can tell the
 * timer from the allocator in the percentiles. */
static void timer_cost(void)
{
    enum { N = 100000 };
    uint32_t *lat = hbuf_touched(N * sizeof(uint32_t));
    for (size_t i = 0; i < N; i++) {
        uint64_t t0 = rpb_ticks();
        uint64_t t1 = rpb_ticks();
        lat[i] = (uint32_t)(t1 - t0);
    }
    rpb_report_latency(lat, N, "timer_");
    rpb_hbuf_free(lat, N * sizeof(uint32_t));
}


/* Replays (see the top): R children, one after the other, each from the
 * state this process has now; every child runs fill + measured pass and
 * leaves its allocation and free ticks in shared memory. One more child runs
 * fill + the attribution pass over the same calls and marks which took a
 * page fault. */
struct replay_log {
    uint64_t nalloc, nfree, fails;
    int done;
};

/* One replay child: the measured pass logging into the shared alloc/free
 * logs, or (afault != NULL) the marking run, whose tick logs are private
 * and unused. */
static void replay_child(struct heap_ctx *c, const rpb_args *a, uint32_t *alloc,
                         uint32_t *free_, uint8_t *afault, uint8_t *ffault,
                         struct replay_log *out)
{
    heap_thr *t = &c->thr[0];
    memset(t, 0, sizeof *t);
    thr_buffers(t, c->ops, alloc, free_);
#if RPB_HAVE_HEAP
    if (a->alloc == RPB_RPOOL)
        c->actx = rpb_pool(HEAP_BYTES, -1, -1);
#else
    (void)a;
#endif
    rpb_rng r;
    rpb_rng_seed(&r, c->seed);
    c->fill(c->actx, t, c->target, &r);
    if (afault) {
        t->attr.nofault = hbuf_touched((size_t)c->ops * sizeof(uint32_t));
        t->attr.afault = afault;
        t->attr.ffault = ffault;
        c->attr(c->actx, t, c->target, &r, c->ops);
        out->nalloc = t->attr.nafault;
        out->nfree = t->attr.nffault;
    } else {
        c->run(c->actx, t, c->target, &r, c->ops);
        out->nalloc = t->log.nalloc;
        out->nfree = t->log.nfree;
        out->fails = t->fails;
    }
    out->done = 1;
}

/* Report the per-call minima of the calls whose fault flag is `want`
 * (want < 0: all calls). Sorts a copy. */
static void report_rmin(const uint32_t *min, const uint8_t *fault, size_t n,
                        int want, const char *prefix)
{
    uint32_t *v = rpb_hbuf(n * sizeof(uint32_t) + 1);
    size_t m = 0;
    for (size_t k = 0; k < n; k++)
        if (want < 0 || fault[k] == want)
            v[m++] = min[k];
    rpb_report_latency(v, m, prefix); /* sorts v */
    char name[96];
    snprintf(name, sizeof name, "%scalls", prefix);
    rpb_metric(name, (double)m);
    if (m && v[(m - 1) / 2]) {
        snprintf(name, sizeof name, "%smax_x", prefix);
        rpb_metric(name, (double)v[m - 1] / (double)v[(m - 1) / 2]);
    }
    rpb_hbuf_free(v, n * sizeof(uint32_t) + 1);
}

static void replays(struct heap_ctx *c, const rpb_args *a, unsigned R)
{
    size_t per = (size_t)c->ops;
    size_t bytes = 2 * R * per * sizeof(uint32_t) + 2 * per +
                   (R + 1) * sizeof(struct replay_log);
    char *shm = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        rpb_error("heap replays: mmap of %zu bytes: %s", bytes, strerror(errno));
    memset(shm, 0, bytes); /* no first-touch fault inside a timed interval */
    uint32_t *alloc = (uint32_t *)shm, *free_ = alloc + R * per;
    uint8_t *afault = (uint8_t *)(free_ + R * per), *ffault = afault + per;
    struct replay_log *logs = (struct replay_log *)(ffault + per);
    for (unsigned i = 0; i <= R; i++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
            rpb_error("heap replays: fork: %s", strerror(errno));
        if (pid == 0) {
            if (i < R)
                replay_child(c, a, alloc + i * per, free_ + i * per, NULL,
                             NULL, &logs[i]);
            else /* the marking run */
                replay_child(c, a, NULL, NULL, afault, ffault, &logs[i]);
            _exit(0);
        }
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) ||
            WEXITSTATUS(st) != 0 || !logs[i].done)
            rpb_error("heap replays: child %u failed (status %#x)", i, st);
    }
    int same = 1;
    for (unsigned i = 1; i < R; i++)
        same &= logs[i].nalloc == logs[0].nalloc &&
                logs[i].nfree == logs[0].nfree && logs[i].fails == logs[0].fails;
    int marked = logs[R].nalloc == logs[0].nalloc &&
                 logs[R].nfree == logs[0].nfree;
    rpb_metric("rmin_diverged", !same);
    if (same) {
        /* Per call, the minimum over the replays, into replay 0's slot. */
        for (unsigned i = 1; i < R; i++) {
            for (size_t k = 0; k < logs[0].nalloc; k++)
                if (alloc[i * per + k] < alloc[k])
                    alloc[k] = alloc[i * per + k];
            for (size_t k = 0; k < logs[0].nfree; k++)
                if (free_[i * per + k] < free_[k])
                    free_[k] = free_[i * per + k];
        }
        rpb_metric("replays", R);
        report_rmin(alloc, afault, logs[0].nalloc, -1, "rmin_alloc_");
        report_rmin(free_, ffault, logs[0].nfree, -1, "rmin_free_");
        rpb_metric("rmin_marked", marked);
        if (marked) {
            report_rmin(alloc, afault, logs[0].nalloc, 0, "rmin_nofault_alloc_");
            report_rmin(alloc, afault, logs[0].nalloc, 1, "rmin_fault_alloc_");
            report_rmin(free_, ffault, logs[0].nfree, 0, "rmin_nofault_free_");
        }
    }
    munmap(shm, bytes);
}

void wl_heap(const rpb_args *a)
{
    static struct heap_ctx c;
    int nt = a->threads;
    c.ops = (a->ops ? a->ops : 1000000) / (uint64_t)nt;
    c.aops = c.ops / 4;
    c.target = HEAP_BYTES / 100 * FILL_PCT / (size_t)nt;
    c.seed = a->seed;
    if (rpb_is_malloc(a->alloc)) {
        c.fill = heap_fill_malloc;
        c.run = heap_run_malloc;
        c.attr = heap_attr_malloc;
    } else if (a->alloc == RPB_RPOOL) {
#if RPB_HAVE_HEAP
        c.actx = rpb_pool(HEAP_BYTES, -1, -1);
        c.fill = heap_fill_rpool;
        c.run = heap_run_rpool;
        c.attr = heap_attr_rpool;
#else
        rpb_unavailable("rp_heap_alloc/rp_heap_free");
#endif
    } else {
        rpb_error("heap: no %s column", a->alloc_name);
    }
    (void)rpb_ns_per_tick(); /* calibrate before the threads start */
    if (a->replays && nt == 1 && c.fill)
        replays(&c, a, a->replays);
    pthread_barrier_init(&pass_barrier, NULL, (unsigned)nt);
    uint64_t wall = rpb_run_threads(nt, heap_thread, &c);
    pthread_barrier_destroy(&pass_barrier);

    uint64_t fails = 0, calls = 0, fcalls = 0, touches = 0, ftouches = 0;
    size_t live = 0;
    int fill_failed = 0;
    for (int i = 0; i < nt; i++) {
        fails += c.thr[i].fails;
        live += c.thr[i].live_bytes;
        fill_failed |= c.thr[i].fill_failed;
        calls += c.thr[i].attr.calls;
        fcalls += c.thr[i].attr.faulted_calls;
        touches += c.thr[i].attr.touches;
        ftouches += c.thr[i].attr.faulted_touches;
    }
    rpb_info("heap: %d thread(s), target %zu live bytes, %llu measured + "
             "%llu attribution ops/thread%s",
             nt, c.target * (size_t)nt, (unsigned long long)c.ops,
             (unsigned long long)c.aops,
             fill_failed ? ", fill stopped early on a failed allocation" : "");
#if RPB_HAVE_HEAP
    if (a->alloc == RPB_RPOOL) {
        rp_stats st;
        if (rp_stats_get(c.actx, &st) == 0)
            rpb_info("rpool heap by its own account: capacity %zu, "
                     "allocated %zu (%.1f%%), committed %zu, physical %zu, "
                     "oom %llu",
                     st.heap_capacity_bytes, st.heap_allocated_bytes,
                     st.heap_capacity_bytes
                         ? 100.0 * (double)st.heap_allocated_bytes /
                               (double)st.heap_capacity_bytes
                         : 0.0,
                     st.heap_committed_bytes, st.heap_physical_bytes,
                     (unsigned long long)st.heap_oom_count);
        /* madvise + mprotect calls rpool made in the measured pass. */
        rpb_metric("oscalls_per_kop", 1000.0 * (double)(os_at_stop - os_at_start) /
                                          ((double)c.ops * (double)nt));
    }
#endif
    rpb_metric("ns_per_op", (double)wall / ((double)c.ops * (double)nt));
    static const char *const prefix[] = {"op_", "alloc_", "free_", "touch_",
                                         "nofault_op_"};
    for (size_t w = 0; w < 5; w++) {
        size_t n;
        uint32_t *all = pool_logs(&c, nt, w, &n);
        rpb_report_latency(all, n, prefix[w]);
        rpb_hbuf_free(all, n * sizeof(uint32_t) + 1);
    }
    rpb_metric("fault_pct", calls ? 100.0 * (double)fcalls / (double)calls : 0);
    rpb_metric("touch_fault_pct",
               touches ? 100.0 * (double)ftouches / (double)touches : 0);
    rpb_metric("alloc_failures", (double)fails);
    rpb_metric("end_fill_pct", 100.0 * (double)live / (double)HEAP_BYTES);
    memory_floor(&c, nt, c.seed);
    timer_cost();
}
