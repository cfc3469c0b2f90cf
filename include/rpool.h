/* rpool.h -- the public contract of rpool.
 *
 * rpool is a memory allocator for multithreaded servers: one address-space
 * reservation per pool, carved into power-of-two regions that are recycled
 * through lock-free per-class pools, with bump arenas, size-class object pools
 * and a constant-time fallback heap on top, all under hard virtual and
 * physical memory budgets.
 *
 * Conventions used by every declaration below:
 *  - Allocation calls return NULL and set errno (ENOMEM: a budget or the
 *    reservation is exhausted or the OS refused memory; EINVAL: a bad
 *    argument) and count the failure in the pool's stats. Nothing already
 *    handed out is touched by a failure.
 *  - Control calls return 0 or a negative errno value.
 *  - Misuse that can be detected (foreign pointer, interior pointer, double
 *    free, wrong API) is reported through the pool's error hook (see
 *    rp_config.error_hook) and otherwise ignored; in strict mode it aborts.
 *  - "Cost" names the worst case. "May call the OS" means a system call
 *    (mprotect/madvise) can happen on that path.
 *
 * Synchronization table (what may run concurrently with what):
 *
 *   operation                       | concurrent with
 *   --------------------------------+---------------------------------------
 *   rp_pool_create                  | anything (on other pools)
 *   rp_pool_destroy                 | nothing on the same pool
 *   rp_region_*, rp_alloc family,   | anything except rp_pool_destroy
 *   rp_heap_*, rp_purge, rp_stats_*,|
 *   rp_budget_*, rp_thread_detach   |
 *   rp_arena_thread result          | owned by the calling thread only
 *   rp_arena_create result          | one thread at a time; hand-off needs a
 *                                   | happens-before edge the caller provides
 *   rp_arena_stats_get              | any thread, while the arena is live
 *   rp_check                        | may run any time; exact only when the
 *                                   | pool is quiescent
 */
#ifndef RPOOL_H
#define RPOOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RP_VERSION_MAJOR 0
#define RP_VERSION_MINOR 1
#define RP_VERSION_PATCH 0
#define RP_VERSION_STRING "0.1.0"

#if defined(RP_BUILDING_LIBRARY)
#define RP_API __attribute__((visibility("default")))
#else
#define RP_API
#endif

/* The version of the library linked at run time, as "MAJOR.MINOR.PATCH". */
RP_API const char *rp_version(void);

typedef struct rp_pool rp_pool;
typedef struct rp_arena rp_arena;

/* ------------------------------------------------------------------------ */
/* Errors reported through the error hook.                                   */

typedef enum rp_error {
    RP_ERR_FOREIGN = 1,    /* pointer is not memory this pool hands out
                              (outside its reservation, or in no carved
                              region or heap range) */
    RP_ERR_INTERIOR,       /* pointer is inside a block/region, not its start */
    RP_ERR_NOT_LIVE,       /* start of a block/region that is not allocated:
                              never allocated, or already freed (double free) */
    RP_ERR_WRONG_API,      /* freed through the wrong call (region vs object
                              vs heap vs arena memory) */
    RP_ERR_CORRUPT,        /* allocator metadata found damaged */
    RP_ERR_INVARIANT,      /* rp_check found a broken invariant */
    RP_ERR_MISUSE,         /* other misuse (destroyed pool, bad arena state) */
    RP_ERR_WARNING         /* not an error: a configuration the pool accepted
                              but cannot fully honour (e.g. a heap too small
                              for its worst-case fragmentation bound). Not
                              counted in rp_stats.errors; strict mode does not
                              abort for it */
} rp_error;

/* Called once per detected misuse. `ptr` is the offending pointer (or NULL),
 * `msg` a one-line description naming the pointer and the failed check. The
 * hook runs on the thread that made the bad call, with no rpool lock held; it
 * may call rp_stats_get but must not free into the pool. */
typedef void (*rp_error_fn)(void *opaque, rp_pool *p, rp_error code,
                            const void *ptr, const char *msg);

/* Called when physical use crosses cfg.physical_soft_limit upwards (above = 1)
 * or back down below it (above = 0). Runs on the allocating/freeing thread;
 * must not allocate from the pool. */
typedef void (*rp_watermark_fn)(void *opaque, rp_pool *p,
                                size_t physical_bytes, int above);

/* Sink for text output (stats, config). `text` is NUL-terminated. */
typedef void (*rp_write_fn)(void *opaque, const char *text);

/* ------------------------------------------------------------------------ */
/* Configuration.                                                            */

typedef enum rp_purge_advice {
    RP_PURGE_DONTNEED = 0, /* madvise(MADV_DONTNEED): pages leave at once */
    RP_PURGE_FREE = 1      /* madvise(MADV_FREE): the kernel takes the pages
                              lazily; they stay counted as physical until a
                              budget squeeze escalates them to DONTNEED */
} rp_purge_advice;

typedef struct rp_config {
    /* Address space reserved once at pool creation (PROT_NONE, NORESERVE).
     * Range [16 MiB, 64 TiB]; under ThreadSanitizer at most 512 GiB. */
    size_t reserve_bytes;
    /* Hard cap on committed bytes (carved regions + committed heap + metadata).
     * 0 = automatic: the whole reservation. */
    size_t virtual_budget;
    /* Hard cap on resident bytes by rpool's account. 0 = automatic: the
     * cgroup v2 memory.max of this process when set, else physical RAM. */
    size_t physical_budget;
    /* Smallest and largest region class; powers of two, page size <= min
     * <= max <= 1 GiB, at most 24 classes. Defaults 64 KiB .. 64 MiB. */
    size_t region_min_bytes;
    size_t region_max_bytes;
    /* Released regions stay resident this long before being purged
     * (0 = purge at release). > 0 also lets the heap keep freed fragments
     * resident (up to 1/8 of heap_bytes) until the delay passes or a budget
     * squeeze needs them. Range [0, 3600000]. */
    uint32_t purge_delay_ms;
    /* rp_purge_advice. */
    int purge_advice;
    /* 1: a background thread purges expired regions so that RSS falls even
     * when the program stops calling rpool (it runs with every signal
     * blocked). 0: expired regions are purged only from within rpool calls.
     * rp_check excludes it while checking. */
    int purge_thread;
    /* Per-thread region cache: up to this many bytes of regions a thread
     * released stay parked for its own next acquire of the same class (two
     * per class), skipping the shared free stacks. Used only with
     * purge_delay_ms > 0 and purge_thread = 1; the purger takes back what
     * has sat longer than the delay, and a purge or a budget squeeze takes
     * back everything. 0 = off. Range 0 or [64 KiB, 1 GiB]. */
    size_t region_cache_bytes;
    /* Sub-range of the reservation given to the fallback heap; 0 = no heap.
     * Range 0 or [1 MiB, reserve_bytes / 2]. */
    size_t heap_bytes;
    /* 1: hardened mode (encoded free-list links, double-free detection on
     * every object free). */
    int hardened;
    /* 1: abort() after reporting any misuse. */
    int strict;
    /* Misuse reports; NULL = one line on stderr. */
    rp_error_fn error_hook;
    void *error_opaque;
    /* Soft watermark on physical bytes; 0 = off. Must be <= physical_budget
     * when the budget is explicit. */
    size_t physical_soft_limit;
    rp_watermark_fn watermark_hook;
    void *watermark_opaque;
} rp_config;

/* Fill every field with the "server" preset. Returns 0; -EINVAL iff cfg is NULL.
 * Thread-safety: any thread. Cost: O(1). */
RP_API int rp_config_init(rp_config *cfg);

/* Set the fields a named preset defines (the hooks, budgets, hardened and
 * strict fields are left as they are, so call rp_config_init first):
 * "server" (64 GiB reserve, 1 s purge
 * delay, background purger, 1 GiB heap) or "lowmem" (4 GiB reserve, purge at
 * release, no purger thread, 64 MiB heap, 64 KiB .. 4 MiB regions).
 * Returns 0, or -EINVAL iff the name is unknown (cfg unchanged). */
RP_API int rp_config_preset(rp_config *cfg, const char *name);

/* Check every field. Returns 0 if valid; otherwise -EINVAL and, when err is
 * not NULL, writes a message naming the first bad field, its value and the
 * allowed range ("region_min_bytes = 1000: must be a power of two in
 * [4096, 1073741824]"). Thread-safety: any thread. Cost: O(1). */
RP_API int rp_config_validate(const rp_config *cfg, char *err, size_t err_len);

/* Apply "key=value,key=value" settings from the environment variable `var`
 * (e.g. "physical_budget=2G,purge_delay_ms=500,preset=server") on top of cfg.
 * Sizes take K/M/G/T suffixes (powers of 1024). An unset variable is not an
 * error. Returns 0, or -EINVAL with a message naming the key, the value and
 * the allowed range; an unknown key is an error. cfg is changed only on
 * success. Thread-safety: any thread (reads the environment). */
RP_API int rp_config_from_env(rp_config *cfg, const char *var, char *err,
                              size_t err_len);

/* Write the effective configuration as "key=value" lines. Returns 0. */
RP_API int rp_config_print(const rp_config *cfg, rp_write_fn write,
                           void *opaque);

/* ------------------------------------------------------------------------ */
/* Pools.                                                                    */

/* Create a pool: reserve cfg->reserve_bytes of address space and set up its
 * metadata. cfg NULL means rp_config_init defaults.
 * Returns NULL and sets errno to EINVAL iff the config is invalid (the reason
 * goes to stderr through the error path), or ENOMEM iff the reservation or the
 * first metadata commit is refused by the OS.
 * Thread-safety: any thread. Cost: a few system calls. */
RP_API rp_pool *rp_pool_create(const rp_config *cfg);

/* Destroy a pool and return its whole reservation to the OS. Every pointer
 * from the pool becomes invalid. Must not run concurrently with any other call
 * on the pool; threads that used the pool may exit afterwards safely.
 * NULL is ignored. Cost: O(threads that used the pool) plus munmap. */
RP_API void rp_pool_destroy(rp_pool *p);

/* Validate the pool's invariants (counters, region states, free lists, heap).
 * Returns 0 if all hold, else -EFAULT after reporting the first broken one
 * through the error hook (RP_ERR_INVARIANT). Exact only at quiescent points;
 * concurrent use may report transient mismatches.
 * Cost: O(carved regions + free regions + heap fragments). */
RP_API int rp_check(rp_pool *p);

/* ------------------------------------------------------------------------ */
/* Regions: power-of-two blocks straight from the pool.                      */

/* Return the base of a region of the smallest class >= bytes (bytes in
 * [1, region_max_bytes]). The region's contents are unspecified (a recycled
 * region may hold old data unless it was purged with MADV_DONTNEED).
 * Order of supply: a free region of that class (warm first), a newly carved
 * one, a split of a larger free region; purging free regions first when
 * physical memory is short.
 * Returns NULL with errno = EINVAL iff bytes is 0 or larger than the largest
 * class; ENOMEM iff the virtual or physical budget, the reservation, or the
 * OS (mprotect) refuses.
 * Thread-safety: any thread; lock-free on the reuse path, a mutex serializes
 * carving new address space. Cost: O(1) on reuse; may call the OS. */
RP_API void *rp_region_acquire(rp_pool *p, size_t bytes);

/* Give a region back to its pool. Its pages are purged at once or after
 * cfg.purge_delay_ms, and it is queued for reuse.
 * Errors: a pointer that is not the base of a live region acquired with
 * rp_region_acquire from this pool is reported (RP_ERR_FOREIGN, _INTERIOR,
 * _NOT_LIVE, _WRONG_API) and ignored. NULL is ignored.
 * Thread-safety: any thread; lock-free. Cost: O(1); may call madvise. */
RP_API void rp_region_release(rp_pool *p, void *region);

/* Size of the live region whose base is `region`, or 0 if it is not one.
 * Thread-safety: any thread. Cost: O(1). */
RP_API size_t rp_region_size(const rp_pool *p, const void *region);

/* Purge every free region now (expired or not) and return the number of bytes
 * whose physical count was released. Thread-safety: any thread; concurrent
 * acquirers may claim regions first, which is fine. Cost: O(free regions)
 * madvise calls. */
RP_API size_t rp_purge(rp_pool *p);

/* ------------------------------------------------------------------------ */
/* Budgets.                                                                  */

typedef enum rp_budget_kind {
    RP_BUDGET_VIRTUAL = 0,
    RP_BUDGET_PHYSICAL = 1
} rp_budget_kind;

/* Change a budget at run time. Lowering the physical budget below current
 * use purges free regions to meet it; memory in use is never taken back, so
 * use may stay above the new budget until it is freed (new allocations fail
 * meanwhile). Returns 0, or -EINVAL for a bad kind or a value of 0 or above
 * the reservation (virtual). Thread-safety: any thread. */
RP_API int rp_budget_set(rp_pool *p, rp_budget_kind kind, size_t bytes);
/* Current budget of that kind, or 0 for a bad kind. */
RP_API size_t rp_budget_get(const rp_pool *p, rp_budget_kind kind);

/* ------------------------------------------------------------------------ */
/* Stats.                                                                    */

#define RP_STATS_VERSION 2
#define RP_MAX_CLASSES 24

typedef struct rp_class_stats {
    size_t region_bytes;    /* size of one region of this class */
    uint64_t in_use;        /* regions handed out (to users, slabs, arenas) */
    uint64_t free_dirty;    /* free, still resident */
    uint64_t cached;        /* of free_dirty: parked in thread region caches */
    uint64_t free_clean;    /* free, not resident: purged, or carved into a
                               thread's run and not used yet (see
                               docs/DESIGN.md "Runs") */
    uint64_t carves;        /* regions carved from new address space (a
                               run counts each of its regions) */
    uint64_t reuses;        /* regions taken from the free pool */
    uint64_t purges;        /* regions purged */
    uint64_t splits;        /* regions of this class produced by splitting */
} rp_class_stats;

typedef struct rp_stats {
    uint32_t size;          /* sizeof(rp_stats) of the library that filled it */
    uint32_t version;       /* RP_STATS_VERSION */
    size_t reserved_bytes;  /* the whole reservation */
    size_t virtual_bytes;   /* committed: carved regions + heap + metadata */
    size_t physical_bytes;  /* resident by rpool's account */
    size_t virtual_budget;
    size_t physical_budget;
    size_t virtual_peak;
    size_t physical_peak;
    size_t metadata_bytes;  /* committed metadata (counted in both above) */
    size_t region_in_use_bytes;
    size_t region_dirty_bytes;   /* free but resident */
    size_t region_clean_bytes;   /* free, not resident (purged or in runs) */
    size_t heap_committed_bytes;
    size_t heap_physical_bytes;
    size_t heap_capacity_bytes;
    size_t heap_allocated_bytes;
    size_t heap_peak_allocated_bytes;
    size_t heap_largest_request;
    uint64_t heap_oom_count;
    /* Live bytes the heap guarantees to serve under worst-case
     * fragmentation (half-fit bound) for requests up to the largest it
     * accepts; see docs/HEAP.md. */
    size_t heap_guaranteed_live_bytes;
    size_t arena_bytes;     /* bytes handed out by live arenas */
    size_t slab_bytes;      /* object bytes in use (rounded to class), for
                               objects served by slabs; larger ones count in
                               region_in_use_bytes / heap_allocated_bytes */
    uint64_t carves, reuses, purges, splits;
    uint64_t fail_virtual;  /* allocations refused by the virtual budget */
    uint64_t fail_physical; /* ... by the physical budget */
    uint64_t fail_os;       /* ... because an OS call failed */
    uint64_t fail_other;    /* ... for other reasons (reservation full, arena budget) */
    uint64_t errors;        /* misuse reports */
    uint64_t threads;       /* live per-thread shards */
    uint32_t nclasses;
    rp_class_stats cls[RP_MAX_CLASSES];
} rp_stats;

/* Fill a snapshot of the counters. Does not allocate. Each field is read
 * atomically; fields may be mutually inconsistent by in-flight operations
 * unless the pool is quiescent. Returns 0, -EINVAL for NULL arguments.
 * Thread-safety: any thread, lock-free. Cost: O(classes). */
RP_API int rp_stats_get(rp_pool *p, rp_stats *st);

#define RP_STATS_TEXT 0
#define RP_STATS_JSON 1
#define RP_STATS_PROMETHEUS 2

/* Write the stats in one of the formats above through write(opaque, text).
 * Text and JSON also list each thread that has a shard (its thread arena's
 * bytes in use, peak and regions, and its region cache) and each explicit
 * arena (bytes in use, peak, regions, budget), up to 32 of each; the rest
 * are counted and their arena bytes summed. write is never called while
 * rpool holds a lock, so it may block or call rpool (not rp_pool_destroy).
 * Returns 0, or -EINVAL for a bad format. Does not allocate (about 6 KiB of
 * stack). Thread-safety: any thread. Cost: O(classes + threads + explicit
 * arenas * 32) plus the writes. */
RP_API int rp_stats_print(rp_pool *p, rp_write_fn write, void *opaque,
                          int flags);

/* ------------------------------------------------------------------------ */
/* Arenas: bump allocation, freed all at once.                               */

/* The calling thread's own arena for pool p, created on first use and
 * returned to the pool when the thread exits or calls rp_thread_detach.
 * Returns NULL with errno = ENOMEM iff its metadata cannot be allocated.
 * Thread-safety: the result must only be used by the calling thread. */
RP_API rp_arena *rp_arena_thread(rp_pool *p);

/* Create an explicit arena with its own byte budget (0 = none). Owned by one
 * thread at a time; to hand it to another thread, publish it with a
 * happens-before edge (a mutex, a queue, a release/acquire pair).
 * Returns NULL with errno = ENOMEM iff metadata cannot be allocated.
 * Cost: O(1); one region from the pool (lock-free on reuse, may call the
 * OS), and the pool's arena list lock taken once (uncontended unless stats
 * are walking the arenas at that moment). */
RP_API rp_arena *rp_arena_create(rp_pool *p, size_t budget_bytes);

/* Free everything in the arena and the arena itself. NULL is ignored;
 * destroying a thread arena is reported (RP_ERR_MISUSE) and ignored.
 * Cost: O(chunks held), each may call madvise; the arena list lock once. */
RP_API void rp_arena_destroy(rp_arena *a);

/* The public prefix of every arena: an rp_arena pointer points at its
 * rp_arena_head, whose two words are all that the inline fast path of
 * rp_arena_alloc reads; the rest of the arena is private. Only rpool writes
 * them (its own calls, and the inline fast path on the owner's thread):
 *   bump   the next free address of the arena's current chunk. The owner
 *          writes it with relaxed atomic stores, because stats read it from
 *          other threads (relaxed loads).
 *   limit  the fast path serves a request iff it ends at or below limit:
 *          the end of the current chunk, or lower where the arena's budget
 *          ends first. 0 (every request takes rp_arena_alloc_slow) while the
 *          arena has no chunk, after it is destroyed, and always in a library
 *          built with AddressSanitizer, whose slow path unpoisons each block.
 * Layout: part of the ABI (SONAME librpool.so.0). */
typedef struct rp_arena_head {
    uint64_t bump;
    uint64_t limit;
} rp_arena_head;

/* Alignments below this take the inline fast path; larger ones (up to
 * region_max_bytes) are served by rp_arena_alloc_slow. */
#define RP_ARENA_FAST_ALIGN ((size_t)4096)

/* Bump-allocate size bytes aligned to align (a power of two up to
 * region_max_bytes; 0 means 16). size 0 returns a unique pointer.
 * Returns NULL with errno = EINVAL for a bad alignment or a NULL arena; ENOMEM
 * iff the arena budget or the pool refuses (the arena stays usable).
 * Thread-safety: owner only; no lock and no atomic read-modify-write on the
 * fast path.
 * Inline: rpool.h defines a macro rp_arena_alloc(a, size, align) that
 * expands to the static inline rp_arena_alloc_inline, which does the
 * aligned bump in the caller on the arena's public prefix (rp_arena_head)
 * and calls rp_arena_alloc_slow for everything else. This exported function
 * does the same; it is what (rp_arena_alloc)(...), &rp_arena_alloc, code
 * compiled with RP_ARENA_NO_INLINE defined, and binaries built against
 * older headers call.
 * Cost: O(1); inline, no call on the fast path (11 instructions with
 * gcc 12 -O2); a new chunk may call the OS. */
RP_API void *rp_arena_alloc(rp_arena *a, size_t size, size_t align);

/* rp_arena_alloc without its inline fast path: the same contract for every
 * argument (it also serves requests the fast path could have). Called by
 * rp_arena_alloc_inline when a request does not fit below limit, for size 0,
 * alignments of RP_ARENA_FAST_ALIGN and more or invalid ones, and a NULL
 * arena. Owner only. Cost: O(1); a new chunk may call the OS. */
RP_API void *rp_arena_alloc_slow(rp_arena *a, size_t size, size_t align);

/* The fast path of rp_arena_alloc, inline in the caller: r = bump rounded up
 * to align; if r < r + size <= limit, bump = r + size (a relaxed atomic
 * store) and r is returned; anything else goes to rp_arena_alloc_slow. */
static inline void *rp_arena_alloc_inline(rp_arena *a, size_t size, size_t align)
{
    size_t m = align ? align - 1 : 15;
    if (__builtin_expect(a != NULL && m < RP_ARENA_FAST_ALIGN && !(m & (m + 1)), 1)) {
        rp_arena_head *h = (rp_arena_head *)(void *)a;
        uint64_t r = (h->bump + m) & ~(uint64_t)m;
        uint64_t end = r + size;
        /* end > r: size >= 1 and no wrap-around; end <= limit: inside the
         * current chunk and the arena's budget. */
        if (__builtin_expect(end > r && end <= h->limit, 1)) {
            __atomic_store_n(&h->bump, end, __ATOMIC_RELAXED);
            /* r is inside a chunk, never 0: saying so lets the caller's
             * NULL check fold away on this path. */
            if (r == 0)
                __builtin_unreachable();
            return (void *)(uintptr_t)r;
        }
    }
    return rp_arena_alloc_slow(a, size, align);
}

#ifndef RP_ARENA_NO_INLINE
#define rp_arena_alloc(a, size, align) rp_arena_alloc_inline((a), (size), (align))
#endif

/* A position in an arena, for nested scratch scopes. */
typedef struct rp_arena_pos {
    void *chunk;
    size_t offset;
} rp_arena_pos;

/* Current position. Owner only. O(1). */
RP_API rp_arena_pos rp_arena_mark(rp_arena *a);
/* Free everything allocated after `pos` (chunks acquired since go back to the
 * pool). A position not from this arena, or one already rewound past, is
 * reported (RP_ERR_MISUSE) and ignored. Owner only. */
RP_API void rp_arena_rewind(rp_arena *a, rp_arena_pos pos);
/* Free everything; keep the first chunk warm and return the others to the
 * region pools. Owner only. */
RP_API void rp_arena_reset(rp_arena *a);

#define RP_ARENA_STATS_VERSION 1

/* One arena's counters (rp_arena_stats_get). Bytes handed out count each
 * allocation's size plus its alignment padding (size 0 counts 1); the unused
 * tail of a chunk the arena moved past does not count. */
typedef struct rp_arena_stats {
    uint32_t size;          /* sizeof(rp_arena_stats) of the library that filled it */
    uint32_t version;       /* RP_ARENA_STATS_VERSION */
    size_t bytes_in_use;    /* bytes handed out now (0 after a reset) */
    size_t region_bytes;    /* bytes of the regions (chunks) the arena holds */
    uint64_t regions;       /* regions (chunks) held */
    size_t peak_bytes;      /* most bytes_in_use has been since the arena was
                               created (a thread arena: since the thread's
                               first rp_arena_thread) or rp_arena_peak_reset */
    size_t budget_bytes;    /* the arena's own budget; 0 = none */
    uint32_t is_thread_arena; /* 1: from rp_arena_thread; 0: rp_arena_create */
    uint32_t in_flight;     /* 1: the owner stayed inside a chunk change
                               through every read; the four counters above
                               are then 0 (only pool-internal walks report
                               this; rp_arena_stats_get returns -EAGAIN) */
} rp_arena_stats;

/* Fill *out (rp_arena_stats: bytes in use, bytes and number of regions
 * held, peak bytes in use, budget, kind) with a snapshot of a's counters.
 * bytes_in_use, region_bytes, regions and peak_bytes are read together,
 * consistent with one moment.
 * Thread-safety: any thread, while a is live (the caller orders the call
 * before rp_arena_destroy, or the owner's exit or rp_thread_detach for a
 * thread arena); the owner is never blocked. Reads only.
 * Returns 0; -EINVAL iff a or out is NULL or a is marked dead (destroyed
 * or detached, as far as its memory still shows; reported, RP_ERR_MISUSE);
 * -EAGAIN iff the owner was changing chunks at every one of 80 tries (the
 * last 64 after sched_yield), in which case the four counters are 0.
 * Cost: a few loads and two fences per try; one try unless the owner is in
 * the middle of taking or returning a chunk. */
RP_API int rp_arena_stats_get(const rp_arena *a, rp_arena_stats *out);

/* Start a new high-water mark: peak_bytes becomes the current bytes_in_use.
 * Owner only. A NULL or dead arena is reported (RP_ERR_MISUSE) and ignored.
 * Cost: O(1). */
RP_API void rp_arena_peak_reset(rp_arena *a);

/* Return the calling thread's shards of pool p (thread arena, object caches)
 * now instead of at thread exit. The thread arena's memory becomes invalid.
 * Returns 0 (also when the thread had no shard). */
RP_API int rp_thread_detach(rp_pool *p);

/* ------------------------------------------------------------------------ */
/* Generic allocator interface.                                              */

typedef struct rp_allocator {
    void *(*alloc)(void *ctx, size_t size, size_t align);
    /* size is the size passed to alloc; implementations may ignore it. */
    void (*free)(void *ctx, void *ptr, size_t size);
    void *ctx;
} rp_allocator;

/* An allocator over an arena (free is a no-op: the arena frees at reset). */
RP_API rp_allocator rp_allocator_arena(rp_arena *a);
/* An allocator over rp_alloc/rp_aligned_alloc/rp_free of a pool. */
RP_API rp_allocator rp_allocator_pool(rp_pool *p);
/* An allocator over the C library's aligned_alloc/free. */
RP_API rp_allocator rp_allocator_libc(void);

/* n * size, or SIZE_MAX if that overflows (so that the allocation fails). */
static inline size_t rp_mul_size(size_t n, size_t size)
{
    size_t r;
    if (__builtin_mul_overflow(n, size, &r))
        return SIZE_MAX;
    return r;
}

/* Allocate `count` objects of type T through an rp_allocator; NULL with
 * errno = ENOMEM when count * sizeof(T) overflows or the allocator fails. */
#define RP_NEW(alloc, T, count)                                               \
    ((T *)rp_allocator_call((alloc), rp_mul_size((count), sizeof(T)),         \
                            _Alignof(T)))

/* Call a.alloc, turning an overflowed size (SIZE_MAX) into ENOMEM. */
RP_API void *rp_allocator_call(rp_allocator a, size_t size, size_t align);

/* ------------------------------------------------------------------------ */
/* Object pools.                                                             */

/* Largest size served from size-class slabs; larger requests go to the
 * fallback heap (when they fit it) or to a region of their own. */
#define RP_OBJECT_MAX ((size_t)32 * 1024)

/* Allocate size bytes (16-byte aligned). size 0 returns a unique pointer.
 * Sizes up to RP_OBJECT_MAX come from size-class slabs (rounding wastes under
 * 16 bytes up to 64 and under 25% of the request above); larger sizes up to
 * min(1 MiB, the heap's largest request, heap capacity / 8) from the
 * fallback heap, or from a region of their own when the heap has no room;
 * larger sizes up to region_max_bytes from a region of their own, larger
 * ones from the heap (docs/OBJECTS.md "Routing"). On success errno is
 * unchanged.
 * Returns NULL with errno = ENOMEM iff a budget, the heap or the OS refuses,
 * or size is too large for any of them.
 * Thread-safety: any thread; the common path takes no lock. */
RP_API void *rp_alloc(rp_pool *p, size_t size);
/* Zeroed array of n * size bytes; ENOMEM on overflow. */
RP_API void *rp_calloc(rp_pool *p, size_t n, size_t size);
/* Resize keeping the contents up to the smaller size. ptr NULL acts as
 * rp_alloc; size 0 frees ptr and returns NULL. On failure ptr is untouched. */
RP_API void *rp_realloc(rp_pool *p, void *ptr, size_t size);
/* align must be a power of two (EINVAL otherwise). */
RP_API void *rp_aligned_alloc(rp_pool *p, size_t align, size_t size);
/* Free memory from rp_alloc/calloc/realloc/aligned_alloc of this pool, from
 * any thread. NULL is ignored. A pointer of another pool, an interior
 * pointer, one never allocated or already freed is reported and ignored
 * (double free: always for heap and region-sized blocks; for slab objects
 * always in hardened mode, best-effort otherwise). */
RP_API void rp_free(rp_pool *p, void *ptr);
/* Usable bytes of a live allocation (>= the size asked for); 0 for NULL or
 * a pointer that is not a live allocation of p (reported). */
RP_API size_t rp_usable_size(rp_pool *p, const void *ptr);

/* ------------------------------------------------------------------------ */
/* The fallback heap (constant-time half-fit, one per pool, behind a lock).  */

/* Allocate from the pool's heap directly: O(1) worst case, 16-byte aligned.
 * Returns NULL with errno = ENOMEM iff the pool has no heap, size is 0 or
 * larger than the heap can ever hold, the heap has no fragment large enough,
 * or a budget or the OS refuses to commit more (an OOM is counted). */
RP_API void *rp_heap_alloc(rp_pool *p, size_t size);
/* Free a block from rp_heap_alloc. Foreign pointers, double frees and damaged
 * fragment headers are reported and ignored. NULL is ignored. O(1); a purge
 * (madvise) of a large free fragment runs after the heap lock is dropped. */
RP_API void rp_heap_free(rp_pool *p, void *ptr);

/* ------------------------------------------------------------------------ */
/* Testing: OS fault injection.                                              */

typedef enum rp_os_op {
    RP_OS_RESERVE = 0, /* mmap(PROT_NONE) of a reservation */
    RP_OS_COMMIT,      /* mprotect(READ|WRITE) */
    RP_OS_PURGE,       /* madvise */
    RP_OS_RELEASE,     /* munmap */
    RP_OS_NOPS
} rp_os_op;

/* Make the nth call (1-based) from now of operation op fail, process-wide,
 * as the OS would (ENOMEM; EINVAL for purge). nth = 0 disarms. Returns the
 * number of calls of op made since the last arming, or -EINVAL for a bad op.
 * For tests only; thread-safe. */
RP_API long rp_os_fault_inject(rp_os_op op, unsigned long nth);
/* Number of calls of op made so far (process-wide). */
RP_API unsigned long rp_os_calls(rp_os_op op);

#ifdef __cplusplus
}
#endif
#endif /* RPOOL_H */
