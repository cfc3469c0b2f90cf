/* internal.h -- types and cross-file prototypes of rpool, grouped by file.
 *
 * Layering (a file calls only files above it in this list):
 *   os.c       the only caller of mmap/mprotect/madvise/munmap/sysconf
 *   account.c  virtual/physical counters and budget checks
 *   reserve.c  the pool's reservation: layout, metadata, carving, ptr -> desc
 *   region.c   region classes, lock-free free stacks, CAS-claimed reuse, purge
 *   thread.c   per-thread shards on an RCU-protected registry
 *   heap.c     the constant-time fallback heap
 *   slab.c     size-class object pools (rp_alloc family)
 *   arena.c    bump arenas
 *   pool.c     rp_pool_create/destroy, rp_check, error reporting
 *   stats.c    snapshots and printing
 *   config.c   defaults, presets, validation, environment
 *
 * Cross-file internal names start with rpi_ and have hidden visibility (the
 * library is built with -fvisibility=hidden; only RP_API names are exported).
 */
#ifndef RP_INTERNAL_H
#define RP_INTERNAL_H

#define RP_BUILDING_LIBRARY 1
#include "rpool.h"
#include "atomic.h"

#include <assert.h>
#include <ck_stack.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <urcu/list.h>

#define RP_CACHELINE 64
#define RP_POOL_MAGIC 0x6c6f6f7070722d72ull /* "r-rppool" */

/* RP_DEBUG: 0 none, 1 cheap preconditions, 2 internal checks, 3 walks. */
#ifndef RP_DEBUG
#define RP_DEBUG 0
#endif
#define rp_assert(level, cond)                                                \
    do {                                                                      \
        if (RP_DEBUG >= (level) && !(cond))                                   \
            rpi_assert_fail(#cond, __FILE__, __LINE__);                       \
    } while (0)

#define RP_LIKELY(x) __builtin_expect(!!(x), 1)
#define RP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define RP_HIDDEN __attribute__((visibility("hidden")))

static inline size_t rp_align_up(size_t v, size_t a) { return (v + a - 1) & ~(a - 1); }
static inline bool rp_is_pow2(size_t v) { return v && !(v & (v - 1)); }
static inline unsigned rp_log2(size_t v) { return 63u - (unsigned)__builtin_clzll(v); }

/* ======================================================================== */
/* os.c                                                                      */

/* Each returns 0 or a negative errno; never sets errno as its only report.
 * Fault injection (rp_os_fault_inject) is checked first. */
RP_HIDDEN int rpi_os_reserve(size_t bytes, void **out);
RP_HIDDEN int rpi_os_commit(void *addr, size_t bytes);
/* advice: RP_PURGE_DONTNEED or RP_PURGE_FREE. */
RP_HIDDEN int rpi_os_purge(void *addr, size_t bytes, int advice);
RP_HIDDEN int rpi_os_release(void *addr, size_t bytes);
RP_HIDDEN size_t rpi_os_page_size(void);
/* cgroup v2 memory.max of this process when set, else physical RAM. */
RP_HIDDEN size_t rpi_os_physical_default(void);
/* Monotonic milliseconds. */
RP_HIDDEN uint64_t rpi_now_ms(void);

/* ======================================================================== */
/* Region descriptors: one per granule (region_min_bytes) of the region area. */

enum rp_rstate {
    RS_UNUSED = 0,  /* never carved */
    RS_TAIL,        /* inside a region; .head names the head granule */
    RS_IN_USE,      /* handed out; .kind says to whom */
    RS_FREE_DIRTY,  /* on a free stack, resident, counted physical */
    RS_FREE_LAZY,   /* on a free stack, MADV_FREE'd, still counted physical */
    RS_FREE_CLEAN,  /* on a free stack, purged (DONTNEED), not counted */
    RS_PURGING,     /* held by a purger while madvise runs */
    RS_CACHED,      /* released into a thread's region cache (region.c):
                       resident, counted physical and in the in_use gauge */
    RS_RESERVED     /* carved into a thread's run (region.c), never handed
                       out since: not resident, not counted physical;
                       counted in the clean gauge */
};

enum rp_rkind {
    RK_NONE = 0,
    RK_USER,        /* rp_region_acquire */
    RK_SLAB,        /* slab of an object size class (slab.c) */
    RK_ARENA,       /* arena chunk (arena.c) */
    RK_LARGE        /* one large object of rp_alloc (slab.c) */
};

#define RP_DESC_USER_BYTES 96

typedef struct rp_rdesc {
    ck_stack_entry_t link;  /* free-stack link; meaningful only while free */
    /* The state word: state | cls << 8 | kind << 16. Changed by CAS only
     * (or by the carver before the region is reachable); read relaxed by
     * pointer lookups on any thread. */
    uint32_t word;
    uint32_t head;          /* granule index of this region's head; atomic */
    uint32_t gen;           /* times this head was handed out; atomic */
    uint32_t epoch;         /* purge epoch when put in a thread cache; atomic */
    uint64_t release_ms;    /* rpi_now_ms() at release; atomic */
    /* State of the layer that owns the region while IN_USE (slab, arena).
     * Zeroed when the region is handed out; the owner's rules apply. */
    union {
        unsigned char bytes[RP_DESC_USER_BYTES];
        void *align_ptr;
        uint64_t align_u64;
    } user;
} rp_rdesc;

#define RW_MAKE(state, cls, kind)                                             \
    ((uint32_t)(state) | (uint32_t)(cls) << 8 | (uint32_t)(kind) << 16)
#define RW_STATE(w) ((w) & 0xffu)
#define RW_CLS(w) (((w) >> 8) & 0xffu)
#define RW_KIND(w) (((w) >> 16) & 0xffu)

_Static_assert(sizeof(rp_rdesc) == 128, "descriptor is two cache lines");

/* ======================================================================== */
/* The pool.                                                                 */

struct rp_class {
    ck_stack_t free __attribute__((aligned(16))); /* free regions, LIFO */
    uint64_t nfree;      /* regions on `free` or held by a purger; relaxed */
    uint64_t in_use;     /* gauges (regions), relaxed */
    uint64_t dirty;      /* FREE_DIRTY + FREE_LAZY */
    uint64_t clean;      /* FREE_CLEAN + RESERVED */
    uint64_t carves, reuses, purges, splits; /* counters, relaxed */
} __attribute__((aligned(RP_CACHELINE)));

typedef struct rp_account {
    uint64_t virtual_bytes;     /* committed; CAS-charged against budget */
    uint64_t physical_bytes;    /* resident by our account; CAS-charged */
    uint64_t virtual_budget;    /* may change at run time (rp_budget_set) */
    uint64_t physical_budget;
    uint64_t virtual_peak, physical_peak;
    uint64_t metadata_bytes;
    uint64_t heap_committed_bytes, heap_physical_bytes;
    uint64_t fail_virtual, fail_physical, fail_os, fail_other;
    uint64_t errors;
    uint64_t soft_above;        /* 1 while physical > soft limit */
} rp_account;

/* Per-(thread, pool) shard. Lives in pool metadata, recycled after an RCU
 * grace period. Embedded blobs belong to arena.c and slab.c. */
#define RP_TS_ARENA_BYTES 256
#define RP_RCACHE_WAYS 2
#define RP_TS_SLAB_BYTES 2624

/* Remote-free batches (slab.c "Remote-free batches"): a batch holds at most
 * RP_RB_OBJS objects and RP_RB_BYTES bytes of one slab. Here so that
 * white-box tests derive where batches end. */
#define RP_RB_OBJS 512
#define RP_RB_BYTES 32768

typedef struct rp_tstate {
    struct cds_list_head node;  /* on pool->threads; RCU list */
    struct rp_tstate *next_free;/* recycling list (thread.c, under lock) */
    rp_pool *pool;
    uint64_t tid;               /* small id, for stats */
    uint32_t live;              /* 1 while linked; relaxed reads by stats */
    uint32_t spare;
    /* RCU deferred reclamation handle (struct rcu_head, 16 bytes). */
    void *rcu_space[2];
    /* Region cache (region.c): regions of each class this thread released,
     * in state RS_CACHED, for its next acquire of that class. A slot is
     * filled only by its owner (relaxed store into an empty slot) and
     * emptied by an exchange (owner) or a CAS d -> NULL (any thread
     * stealing it); whoever empties the slot owns the region. */
    rp_rdesc *rcache[RP_MAX_CLASSES][RP_RCACHE_WAYS];
    uint64_t rc_hits[RP_MAX_CLASSES]; /* acquires served; owner relaxed
                                         stores, stats read relaxed */
    uint64_t rc_bytes;          /* bytes the owner put in and has not taken
                                   out (stolen ones included); owner only */
    /* Run (region.c): regions RS_RESERVED that this thread carved next to
     * the one it needed, taken in address order by its next carves of the
     * class: RUN_MAKE(next head granule, regions left, class), 0 if none.
     * Filled by the owner (release store into an empty word); taken from
     * by the owner's CAS; emptied by a stealer's CAS to 0. */
    uint64_t run;
    unsigned char arena[RP_TS_ARENA_BYTES] __attribute__((aligned(RP_CACHELINE)));
    unsigned char slab[RP_TS_SLAB_BYTES] __attribute__((aligned(RP_CACHELINE)));
} rp_tstate;

struct rp_pool {
    uint64_t magic;
    uint64_t id;                /* unique per process, never reused */
    rp_config cfg;
    size_t page;

    /* Layout of the reservation [base, base + reserve_bytes):
     *   [base, meta_end)        pool struct, descriptor table, meta bump area
     *   [heap_base, +heap_bytes) fallback heap
     *   [rbase, rbase + rbytes)  regions, carved from rbase upwards
     * Equation: reserve = meta + heap + region area (+ alignment slack). */
    char *base;
    size_t reserve_bytes;
    rp_rdesc *desc;             /* table of ngranules descriptors */
    uint64_t desc_committed;    /* bytes of the table committed; written
                                   under carve_lock, atomic */
    char *bump_base;            /* meta bump area for shards/heap state */
    size_t bump_reserved;       /* constant */
    uint64_t bump_used, bump_committed; /* written under meta_lock, atomic */
    char *heap_base;
    size_t heap_bytes;
    char *rbase;
    size_t rbytes;
    unsigned gshift;            /* log2(region_min_bytes) */
    unsigned nclasses;
    size_t ngranules;

    pthread_mutex_t carve_lock; /* serializes carving (a syscall path) */
    pthread_mutex_t meta_lock;  /* meta bump area */
    uint64_t hwm;               /* granules carved; written under carve_lock,
                                   read relaxed (monotonic) */

    rp_account acct __attribute__((aligned(RP_CACHELINE)));
    struct rp_class cls[RP_MAX_CLASSES];

    /* Delayed purge. */
    uint64_t next_purge_ms;     /* relaxed hint */
    uint64_t rc_cap;            /* per-thread region cache bytes (0: off);
                                   constant after creation */
    uint32_t rc_on;             /* 1: releases may go to thread caches (0
                                   in a fork child: no purger there);
                                   relaxed */
    uint32_t esteal_busy;       /* 1: a steal of threads' empty slabs or the
                                   slab check runs (slab.c); CAS 0 -> 1 */
    uint64_t rc_epoch;          /* purger ticks; the purger writes, cache
                                   puts read (relaxed) */
    uint64_t rc_ticks;          /* ticks a cached region must sit before the
                                   purger takes it back; constant */
    uint32_t purge_busy;        /* CAS 0->1 to become the purger */
    uint32_t purger_stop;       /* set by destroy; read by the purger */
    pthread_t purger;
    int purger_running;
    pthread_mutex_t purger_lock;
    pthread_cond_t purger_cond;

    /* Thread registry (thread.c). */
    pthread_mutex_t threads_lock;   /* writers of `threads`, free_ts */
    struct cds_list_head threads;   /* RCU list of rp_tstate */
    rp_tstate *free_ts;             /* recycled shards */
    uint64_t nthreads;              /* live shards; relaxed */
    uint64_t next_tid;          /* atomic */

    rp_pool *reg_next;          /* process-wide registry (pool.c) */

    /* Other modules' state, allocated from the meta bump area. */
    void *heap;                 /* heap.c */
    void *slab;                 /* slab.c */
    void *arena;                /* arena.c */
};

/* ======================================================================== */
/* account.c                                                                 */

/* Charge bytes to the virtual counter iff it stays within the budget.
 * Returns 0 or -ENOMEM (nothing changed; the caller counts the failure). */
RP_HIDDEN int rpi_virt_charge(rp_pool *p, size_t bytes);
RP_HIDDEN void rpi_virt_uncharge(rp_pool *p, size_t bytes);
/* Charge physical bytes iff within the budget; on refusal, purge free
 * regions (rpi_purge_for) and try once more. Returns 0 or -ENOMEM. */
RP_HIDDEN int rpi_phys_charge(rp_pool *p, size_t bytes);
/* Charge physical iff within budget (true); never purges or calls the hook. */
RP_HIDDEN bool rpi_phys_try_charge(rp_pool *p, size_t bytes);
/* Charge without a budget check (for pages that are already resident). */
RP_HIDDEN void rpi_phys_force(rp_pool *p, size_t bytes);
RP_HIDDEN void rpi_phys_uncharge(rp_pool *p, size_t bytes);
/* Failure counters. */
enum rp_fail { RP_FAIL_VIRTUAL, RP_FAIL_PHYSICAL, RP_FAIL_OS, RP_FAIL_OTHER };
RP_HIDDEN void rpi_count_fail(rp_pool *p, enum rp_fail why);
/* Errno for a failure of this kind, after counting it. */
RP_HIDDEN void *rpi_fail_null(rp_pool *p, enum rp_fail why, int err);

/* ======================================================================== */
/* reserve.c                                                                 */

/* Lay out and reserve a pool; returns the pool (at the reservation's base)
 * or NULL with errno. cfg must be validated. */
RP_HIDDEN rp_pool *rpi_reserve_create(const rp_config *cfg);
RP_HIDDEN void rpi_reserve_destroy(rp_pool *p);
/* Carve `count` adjacent regions of class cls at the high-water mark:
 * charges virtual, commits, sets up descriptors. The first region is
 * returned IN_USE with `kind`; the others follow it in state RS_RESERVED
 * (the caller puts them in its run). Physical is NOT charged here. On
 * failure returns NULL, sets *why and changes nothing (the failure is not
 * counted: the caller may still succeed another way). */
RP_HIDDEN rp_rdesc *rpi_carve(rp_pool *p, unsigned cls, unsigned kind,
                              size_t count, enum rp_fail *why);
/* Commit part of the reservation for the heap (virtual charged and counted
 * as heap). Returns 0, or -ENOMEM with *why set (budget or OS; not counted:
 * the heap counts the refusal once it knows whether the caller falls back). */
RP_HIDDEN int rpi_heap_commit(rp_pool *p, void *addr, size_t bytes,
                              enum rp_fail *why);
/* Bump-allocate zeroed metadata (never freed; recycled by its owner).
 * Charged to virtual and physical as metadata. NULL + errno on failure. */
RP_HIDDEN void *rpi_meta_alloc(rp_pool *p, size_t bytes, size_t align);

static inline size_t rpi_class_bytes(const rp_pool *p, unsigned cls)
{ return (size_t)1 << (p->gshift + cls); }
static inline size_t rpi_desc_index(const rp_pool *p, const rp_rdesc *d)
{ return (size_t)(d - p->desc); }
static inline void *rpi_desc_base(const rp_pool *p, const rp_rdesc *d)
{ return p->rbase + (rpi_desc_index(p, d) << p->gshift); }
static inline size_t rpi_desc_bytes(const rp_pool *p, const rp_rdesc *d)
{ return rpi_class_bytes(p, RW_CLS(rp_load_relaxed_u32(&d->word))); }
/* Head descriptor of the carved region containing ptr, or NULL when ptr is
 * outside the carved part of the region area. O(1). Any thread. */
static inline rp_rdesc *rpi_desc_lookup(const rp_pool *p, const void *ptr)
{
    uintptr_t off = (uintptr_t)ptr - (uintptr_t)p->rbase;
    if (off >= p->rbytes)
        return NULL;
    size_t g = off >> p->gshift;
    if (g >= rp_load_relaxed_u64((uint64_t *)&p->hwm))
        return NULL;
    rp_rdesc *d = &p->desc[g];
    if (RW_STATE(rp_load_relaxed_u32(&d->word)) == RS_TAIL)
        d = &p->desc[rp_load_relaxed_u32(&d->head)];
    return d;
}

/* ======================================================================== */
/* Lock-free stacks (ck_stack, mpmc).                                        */

/* Take a whole ck_stack. ck_stack_batch_pop_mpmc swaps only the head and
 * leaves the ABA generation alone; mixed with ck_stack_pop_mpmc (which relies
 * on the generation) and with entries being pushed back, a pop that read
 * {A, gen} before the batch pop could still CAS {A, gen} -> {A's stale next,
 * gen + 1} once A is back on top, dropping every entry between (seen: 6 free
 * regions lost in stress_budget under ASan timing). This one bumps the
 * generation with the same double-width CAS a pop uses, so such a pop fails
 * and retries. Pairs with the CAS in ck_stack_pop_mpmc/push_mpmc. Callers
 * wrap it in RP_HIDE_BEGIN/END like every other stack operation. */
static inline ck_stack_entry_t *rpi_stack_batch_pop(ck_stack_t *s)
{
    struct ck_stack orig, upd;
    orig.generation = ck_pr_load_ptr(&s->generation);
    ck_pr_fence_load();
    orig.head = ck_pr_load_ptr(&s->head);
    do {
        if (orig.head == NULL)
            return NULL;
        upd.head = NULL;
        /* integer arithmetic: the generation may start at NULL */
        upd.generation = (char *)((uintptr_t)orig.generation + 1);
    } while (!ck_pr_cas_ptr_2_value(s, &orig, &upd, &orig));
    return orig.head;
}

/* ======================================================================== */
/* region.c                                                                  */

/* Smallest class holding bytes, or -1 if bytes > region_max_bytes. */
RP_HIDDEN int rpi_class_of(const rp_pool *p, size_t bytes);
/* Hand out a region of the smallest class >= bytes to an internal user
 * (kind RK_SLAB/RK_ARENA/RK_LARGE/RK_USER): state IN_USE, physical charged,
 * user area zeroed. NULL + errno (ENOMEM/EINVAL) on failure, counted.
 * Lock-free on reuse. */
RP_HIDDEN rp_rdesc *rpi_region_get(rp_pool *p, size_t bytes, unsigned kind);
/* Return a region obtained from rpi_region_get (no validation: internal
 * callers own it). Purges now or later per config. */
RP_HIDDEN void rpi_region_put(rp_pool *p, rp_rdesc *d);
/* Purge free regions until `bytes` of physical are released (or none left).
 * Returns bytes released. */
RP_HIDDEN size_t rpi_purge_for(rp_pool *p, size_t bytes);
/* True while some class has free regions still counted as resident. */
RP_HIDDEN bool rpi_dirty_any(rp_pool *p);
/* Purge regions released more than purge_delay_ms ago. */
RP_HIDDEN void rpi_purge_expired(rp_pool *p);
RP_HIDDEN int rpi_region_check(rp_pool *p);
RP_HIDDEN int rpi_purger_start(rp_pool *p);
/* Return the regions in shard ts's region cache and run to the free stacks
 * (thread exit, detach). Any thread. */
RP_HIDDEN void rpi_region_thread_exit(rp_pool *p, rp_tstate *ts);
/* Regions held in thread region caches, per class (cached[] has
 * RP_MAX_CLASSES entries, added to), and cache hits per class (added to
 * hits[]). Lock-free walk of the shards. */
RP_HIDDEN void rpi_region_cache_stats(rp_pool *p, uint64_t *cached, uint64_t *hits);
/* Regions and bytes in one shard's region cache. Any thread (relaxed). */
RP_HIDDEN void rpi_region_cache_shard(const rp_pool *p, rp_tstate *ts, uint64_t *regions,
                                      uint64_t *bytes);
RP_HIDDEN void rpi_purger_stop(rp_pool *p);

/* ======================================================================== */
/* thread.c                                                                  */

/* The calling thread's shard for p, created on first use (NULL + ENOMEM).
 * The fast path is a thread-local lookup. */
RP_HIDDEN rp_tstate *rpi_tstate_get(rp_pool *p);
/* The calling thread's shard for p, or NULL; never creates. */
RP_HIDDEN rp_tstate *rpi_tstate_peek(rp_pool *p);
/* The last shard this thread looked up (thread.c). */
struct rpi_tfast {
    uint64_t id;     /* pool id, 0 = none */
    rp_tstate *ts;
};
extern __thread struct rpi_tfast rpi_tfast
    __attribute__((tls_model("initial-exec"), visibility("hidden")));
/* rpi_tstate_peek with a one-entry thread-local cache in front. O(1). */
static inline rp_tstate *rpi_tstate_fast(rp_pool *p)
{
    if (RP_LIKELY(rpi_tfast.id == p->id))
        return rpi_tfast.ts;
    return rpi_tstate_peek(p);
}
/* Detach every shard of p (pool destruction). */
RP_HIDDEN void rpi_threads_destroy(rp_pool *p);
/* Call fn for each live shard under an RCU read-side lock. fn must not block. */
RP_HIDDEN void rpi_threads_foreach(rp_pool *p, void (*fn)(rp_tstate *, void *),
                                   void *arg);
RP_HIDDEN int rpi_threads_init(rp_pool *p);
RP_HIDDEN void rpi_threads_prefork(void);
/* Register the calling thread with liburcu-bp if it is not yet (a TLS test
 * when it is). Called before taking carve_lock or meta_lock: code under
 * them may charge physical memory, and a refused charge purges, which walks
 * the thread registry under rcu_read_lock; a first rcu_read_lock registers
 * the thread under liburcu's registry mutex, which fork_prepare holds while
 * it waits for these locks. Registered beforehand, no liburcu mutex is ever
 * wanted under a pool lock (pool.c's lock order). */
RP_HIDDEN void rpi_rcu_ready(void);
RP_HIDDEN void rpi_threads_postfork(int child);

/* ======================================================================== */
/* Module hooks, implemented by heap.c, slab.c and arena.c.                   */

RP_HIDDEN int rpi_heap_init(rp_pool *p);      /* after the reservation */
RP_HIDDEN int rpi_heap_check(rp_pool *p);     /* 0 or -EFAULT (reported) */
RP_HIDDEN void rpi_heap_stats(rp_pool *p, rp_stats *st);
RP_HIDDEN bool rpi_heap_owns(const rp_pool *p, const void *ptr);
RP_HIDDEN void *rpi_heap_alloc(rp_pool *p, size_t size);
RP_HIDDEN void rpi_heap_free(rp_pool *p, void *ptr);
RP_HIDDEN size_t rpi_heap_usable(rp_pool *p, const void *ptr);
RP_HIDDEN void rpi_heap_prefork(rp_pool *p);
/* Largest request the heap can ever serve (0: no heap). O(1). */
RP_HIDDEN size_t rpi_heap_max_request(const rp_pool *p);
/* Largest sum of live bytes the heap guarantees against worst-case
 * fragmentation (half-fit: H = 2M(1 + ceil(log2 n)), in 64-byte units) when
 * every request is <= max_request (0 = rpi_heap_max_request). 0 if no heap. */
RP_HIDDEN size_t rpi_heap_guaranteed_live(const rp_pool *p, size_t max_request);
/* Capacity that guarantees live_bytes with requests <= max_request;
 * SIZE_MAX on overflow. */
RP_HIDDEN size_t rpi_heap_required_capacity(size_t live_bytes, size_t max_request);
/* As rpi_heap_alloc, for callers with another place to go: NULL + ENOSPC
 * (not counted) when another allocator could still serve the request (no
 * room, growth refused, damaged heap); NULL + ENOMEM (counted) on a physical
 * budget refusal. */
RP_HIDDEN void *rpi_heap_try_alloc(rp_pool *p, size_t size);
RP_HIDDEN void rpi_heap_postfork(rp_pool *p);
/* Purge lazily kept free heap fragments released at or before cutoff_ms
 * until `bytes` of physical are released. Returns bytes released. */
RP_HIDDEN size_t rpi_heap_purge_lazy(rp_pool *p, size_t bytes, uint64_t cutoff_ms);
/* Heap event counters for tests (9 slots, see heap.c). */
RP_HIDDEN void rpi_heap_counters(rp_pool *p, uint64_t *out);
/* Test hook: when set, called by the thread that runs a purge (what = 1) or
 * growth (what = 2) job, after it dropped the heap lock and before the
 * system call. NULL in production. */
RP_HIDDEN extern void (*rpi_heap_job_hook)(rp_pool *p, int what);

RP_HIDDEN int rpi_slab_init(rp_pool *p);
RP_HIDDEN int rpi_slab_check(rp_pool *p);
RP_HIDDEN void rpi_slab_stats(rp_pool *p, rp_stats *st);
RP_HIDDEN void rpi_slab_thread_exit(rp_pool *p, rp_tstate *ts);
/* Give back the empty slabs threads keep for reuse: all of them, or those
 * kept for at least the purge delay (rc_ticks purger ticks). Any thread;
 * skipped (0) while another steal or rp_check's slab part runs. Returns the
 * slabs released. O(shards x ESLOTS). */
RP_HIDDEN size_t rpi_slab_steal(rp_pool *p, bool all);

RP_HIDDEN int rpi_arena_init(rp_pool *p);
RP_HIDDEN int rpi_arena_check(rp_pool *p);
RP_HIDDEN void rpi_arena_stats(rp_pool *p, rp_stats *st);
RP_HIDDEN void rpi_arena_thread_exit(rp_pool *p, rp_tstate *ts);
/* Visit every thread arena (thread_id = the shard's tid, never 0; shards whose
 * thread never called rp_arena_thread are skipped) and every live explicit
 * arena (thread_id = 0) of p: fn(&st, thread_id, arg) once each, st as from
 * rp_arena_stats_get (in_flight = 1 and the four counters 0 if the owner stayed
 * inside a chunk event through 16 tries). Thread arenas under the RCU read
 * lock, explicit arenas under the arena list lock: fn must not block and must
 * not call rpool. Arenas created/destroyed meanwhile may be missed or seen.
 * O(threads + explicit arenas). */
RP_HIDDEN void rpi_arena_foreach(rp_pool *p,
                                 void (*fn)(const rp_arena_stats *st,
                                            uint64_t thread_id, void *arg),
                                 void *arg);
/* Fork: hold the arena list lock across fork() (last in pool.c's order). */
RP_HIDDEN void rpi_arena_prefork(rp_pool *p);
RP_HIDDEN void rpi_arena_postfork(rp_pool *p);

/* ======================================================================== */
/* pool.c                                                                    */

/* The one error path: count, format "rpool: <message>", call the hook (or
 * print to stderr), abort in strict mode. p may be NULL. */
RP_HIDDEN void rpi_report(rp_pool *p, rp_error code, const void *ptr,
                          const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Process-wide registry of live pools. rpi_registry_lock takes its lock and
 * returns the live pool with that id, or NULL; rpi_registry_unlock drops it. */
RP_HIDDEN rp_pool *rpi_registry_lock(uint64_t id);
RP_HIDDEN void rpi_registry_unlock(void);
RP_HIDDEN void rpi_assert_fail(const char *cond, const char *file, int line)
    __attribute__((noreturn));

#endif /* RP_INTERNAL_H */
