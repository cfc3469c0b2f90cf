/* arena.c -- bump arenas: per-thread (sharded) arenas, explicit request
 * arenas, per-arena stats, and the generic allocator interface.
 *
 * Concept. An arena hands out memory by bumping a pointer through a chunk,
 * a region of kind RK_ARENA from the region pools, and frees it all at once
 * (reset) or everything after a saved position (rewind). The chunks of an
 * arena form a chain, newest first. A chunk's header lives in its region
 * descriptor's user area (d->user), not in the chunk, so every byte of a
 * chunk is usable, a 2^k-aligned request can use a whole region, and a user
 * overrun cannot damage the chain.
 *
 *   arena --top--> [D2 dedicated] -prev-> [C1 bump = cur] -prev-> [C0] -> NULL
 *                                          start  bump   limit end
 *
 * One chunk is the bump chunk B (a->cur): the newest chunk whose `bumpable`
 * flag is set. Normal chunks are bumpable; a request larger than the next
 * chunk size gets a dedicated region of its own, which becomes B only when
 * the room left in it after the request exceeds the room left in B. The
 * first chunk of a chain is always bumpable. Chunk sizes: the next normal
 * chunk is min(cap, max(region_min, 2 * bytes(B))), cap = max(region_min,
 * region_max / 4): doubling from region_min, restarting after a reset.
 *
 * Two kinds of arena share one struct:
 *  - thread arenas live in the calling thread's shard (rp_tstate.arena,
 *    RP_TS_ARENA_BYTES) and hold no chunk until their first allocation;
 *    thread.c calls rpi_arena_thread_exit at thread exit, rp_thread_detach
 *    and pool destruction, which returns every chunk;
 *  - explicit arenas live at the start of their first chunk (past the
 *    struct, rounded to a cache line, the chunk hands out memory), which is
 *    kept until rp_arena_destroy. They are on the pool's explicit list
 *    (arena_pool.list) from creation to destruction.
 *
 * Fast path. The struct starts with the public rp_arena_head {bump, limit}
 * of rpool.h, and rp_arena_alloc is inline in the caller
 * (rp_arena_alloc_inline): an aligned bump below h.limit, one relaxed store
 * of h.bump. Everything else is rp_arena_alloc_slow. The real limit is
 * a->limit; h.limit is a copy for the inline path, kept at 0 in ASan builds
 * so that every allocation reaches the slow path, which unpoisons it (user
 * code compiled without ASan cannot poison). Both are written only in
 * set_limit (and cleared together at thread exit and destroy).
 *
 * Threads and data.
 *  - An arena and its chunk headers are written by its owner only (one
 *    thread at a time; an explicit arena moves between threads through the
 *    caller's happens-before edge). The allocation fast path is a plain bump:
 *    no lock, no atomic read-modify-write; the bump pointer is written with a
 *    relaxed store (one mov on x86-64) because stats read it.
 *  - Stats (any thread) read an arena's counters: bytes in use as
 *    bump - origin (origin = start - base_used), peak, nchunks and
 *    chunk_bytes. bump and origin change together only at chunk events
 *    (new chunk, rewind, reset, thread exit), and so do the other three,
 *    which the owner brackets with a sequence count (a seqlock with one
 *    writer: odd = in flight; release stores by the owner, relaxed loads and
 *    fences in the reader, so no happens-before edge is made for TSan). The
 *    owner writes every word a reader loads with atomic stores; the fast
 *    path's bump store is a plain relaxed store. Events do no system call:
 *    chunks leave the chain inside an event and go back to the region pools
 *    (maybe madvise) after it, so a reader rarely has to retry.
 *    Thread arenas are reached by walking the shards under RCU
 *    (rpi_threads_foreach); explicit arenas on the explicit list, under
 *    list_lock; rp_arena_stats_get reads one arena the caller keeps alive.
 *  - The explicit list: create links and destroy unlinks the arena under
 *    list_lock, the iterator walks it under list_lock, so a listed arena
 *    cannot be destroyed while it is being read. The list's links and the
 *    walker's reads of listed arenas are hidden from TSan (RP_HIDE): the
 *    lock is, and rpool's lock must not order user threads.
 *  - rp_check (any thread, exact when quiescent) reads arenas' other fields
 *    and chunk headers inside RP_HIDE_BEGIN/END: a concurrent check may read
 *    stale or foreign values, so every pointer is range-checked before use
 *    and walks are bounded.
 *  - Pool-wide counters for explicit arenas (struct arena_pool) are relaxed
 *    read-modify-writes made only at chunk events, rewind, reset and
 *    destroy, never per allocation.
 *  - Chunks go back to the pool through rpi_region_put, which shows TSan the
 *    release -> next-claim edge; ASan poisoning is done here (below).
 *
 * Locks. One: arena_pool.list_lock (a test-and-set lock, see lock_list;
 * its synchronization is hidden from TSan), which protects the explicit
 * list. A leaf: it is held only to link or unlink one arena, and by
 * rpi_arena_foreach and rp_check while they walk the list; nothing else is
 * taken or called while holding it (the foreach callback must not call
 * rpool). In the pool's fork order it comes last, after the heap lock
 * (rpi_arena_prefork/postfork). The region layer takes carve_lock when it
 * carves new address space, never under list_lock.
 *
 * Invariants, per arena a with chain top .. bottom (quiescent, owner's view):
 *   a.nchunks     = length of the chain
 *   a.chunk_bytes = sum over the chain of region bytes
 *   B = newest chunk with bumpable = 1; bottom.bumpable = 1
 *   start(B) <= bump <= limit <= end(B) = base(B) + bytes(B)
 *   h.limit   = limit (0 in ASan builds)
 *   used(a)   = base_used + (bump - start(B))     bytes handed out, padding
 *                                                  included, unused chunk
 *                                                  tails excluded
 *   base_used = top.base_after
 *   origin    = start(B) - base_used (0 without chunks), so used = bump - origin
 *   peak      >= used(a) at every chunk event since creation/peak reset;
 *               the high-water mark is max(peak, used(a)) (use only grows
 *               between events)
 *   seq even  outside chunk events
 *   budget != 0  =>  used(a) <= budget and limit <= start + budget - base_used
 * Pool-wide (quiescent):
 *   #regions IN_USE with kind RK_ARENA
 *       = sum over thread arenas of nchunks + arena_pool.explicit_chunks
 *   explicit_chunks = sum over the explicit list of nchunks
 *   explicit_live   = length of the explicit list
 *   rp_stats.arena_bytes
 *       = sum over thread arenas of used(a) + arena_pool.explicit_bytes
 *   explicit_bytes = sum over explicit arenas of base_used: bytes handed out
 *       outside each explicit arena's current bump range (that range is
 *       counted once the arena moves past it; see docs/ARENAS.md).
 *
 * ASan (RP_ASAN): a chunk is poisoned when acquired; each allocation
 * unpoisons exactly [p, p + size) (always in the slow path: h.limit = 0);
 * rewind and reset poison what they free in the chunks they keep; chunks
 * returned to the pool are poisoned by the region layer. The explicit arena
 * struct stays unpoisoned while it lives.
 */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC_THREAD 0x647268742d616e72ull   /* "rna-thrd" */
#define MAGIC_EXPLICIT 0x6c7078652d616e72ull /* "rna-expl" */
#define CHUNK_MAGIC 0x6b6e6863u             /* "chnk" */

/* rp_arena_pos.offset = generation of pos.chunk << 32 | byte offset in B. */
#define POS_GEN_SHIFT 32
#define POS_OFF_MASK ((UINT64_C(1) << POS_GEN_SHIFT) - 1)

/* Stats reads: tries before giving up on an arena that stays inside chunk
 * events (spinning, then yielding the CPU; pool walks do not yield). */
#define READ_SPINS 16
#define READ_YIELDS 64

struct rp_arena {
    /* Hot: the fast path reads h.bump and h.limit and writes h.bump. */
    rp_arena_head h;      /* public prefix (rpool.h). h.bump: next free byte
                             of B (an address); owner writes with relaxed
                             stores, stats read relaxed. h.limit: limit for
                             the inline path (0 in ASan builds); owner */
    uint64_t limit;       /* min(end, start + budget - base_used); owner */
    uint64_t magic;       /* MAGIC_THREAD / MAGIC_EXPLICIT, 0 when dead;
                             owner writes relaxed, readers load relaxed */
    uint64_t origin;      /* start - base_used (0: no chunk), so that
                             used = bump - origin; owner writes with
                             release stores inside seq, stats read */
    uint64_t seq;         /* odd while a chunk event changes bump/origin;
                             owner writes, stats read */
    rp_pool *pool;        /* set at creation, never changed */
    rp_rdesc *top;        /* newest chunk, NULL when none; owner */
    rp_rdesc *cur;        /* B, NULL when none; owner */
    uint64_t start;       /* first byte B hands out; owner */
    uint64_t end;         /* end of B; owner */
    uint64_t base_used;   /* bytes handed out outside [start, bump); owner */
    uint64_t budget;      /* bytes; 0 = none; set at creation */
    uint64_t published;   /* explicit: base_used as added to explicit_bytes */
    uint64_t peak;        /* high-water mark of used(a) up to the last
                             chunk event; owner writes relaxed inside
                             events (and at peak reset), stats read */
    uint64_t nchunks;     /* regions held; owner writes relaxed inside
                             events, stats read */
    uint64_t chunk_bytes; /* bytes of regions held; as nchunks */
    uint64_t regrow;      /* size (a class) for the first normal chunk after
                             a reset: what the last cycle bumped beyond its
                             first chunk; 0 = the usual doubling; owner */
    rp_arena *lnext;      /* explicit list: newer and older neighbours; */
    rp_arena *lprev;      /* under list_lock, hidden from TSan */
};

_Static_assert(offsetof(struct rp_arena, h) == 0,
               "the public rp_arena_head is the arena's prefix");
_Static_assert(offsetof(rp_arena_head, bump) == 0 &&
               offsetof(rp_arena_head, limit) == sizeof(uint64_t) &&
               sizeof(rp_arena_head) == 2 * sizeof(uint64_t),
               "rp_arena_head layout: bump, limit (rpool.h, inline fast path)");
_Static_assert(sizeof(struct rp_arena) <= RP_TS_ARENA_BYTES,
               "a thread arena fits its shard blob");
_Static_assert(_Alignof(struct rp_arena) <= RP_CACHELINE,
               "the shard blob's alignment suffices");
_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "addresses are 64-bit");

/* Bytes at the start of an explicit arena's first chunk taken by the struct. */
#define ARENA_HDR_BYTES                                                       \
    ((sizeof(struct rp_arena) + RP_CACHELINE - 1) & ~(size_t)(RP_CACHELINE - 1))

/* Chunk header, in the region descriptor's user area. Owner only; rp_check
 * reads it hidden from TSan. `prev` stays first: slab.c relies on offset 0
 * holding a descriptor pointer or NULL for arena regions. */
struct chunk {
    rp_rdesc *prev;      /* older chunk of the same arena, or NULL */
    rp_arena *owner;
    uint64_t start;      /* first byte this chunk hands out */
    uint64_t top;        /* bumpable: bump when it stopped being B;
                            dedicated: end of its one allocation */
    uint64_t base_after; /* the arena's base_used while this chunk is top */
    uint32_t bumpable;   /* 1: bump chunk; 0: one dedicated allocation */
    uint32_t magic;      /* CHUNK_MAGIC */
};

_Static_assert(sizeof(struct chunk) <= RP_DESC_USER_BYTES,
               "chunk header fits the descriptor's user area");
_Static_assert(offsetof(struct chunk, prev) == 0, "slab.c reads offset 0");

/* Pool-wide arena state (p->arena), from the meta bump area. */
struct arena_pool {
    uint64_t explicit_bytes;  /* sum of explicit arenas' base_used; relaxed */
    uint64_t explicit_chunks; /* regions held by explicit arenas; relaxed */
    uint64_t explicit_live;   /* explicit arenas alive; relaxed */
    size_t base_align;        /* every region base is aligned to this */
    size_t chunk_cap;         /* largest normal chunk */
    uint32_t list_lock;       /* the explicit list: 0 free, 1 held (see
                                 lock_list); a leaf lock */
    rp_arena *list;           /* live explicit arenas, newest first;
                                 under list_lock, hidden from TSan */
};

/* Small accessors; each O(1). */
static inline struct chunk *hdr(rp_rdesc *d)
{
    return (struct chunk *)(void *)d->user.bytes;
}

static inline uint64_t chunk_base(const rp_pool *p, const rp_rdesc *d)
{
    return (uint64_t)(uintptr_t)rpi_desc_base(p, d);
}

static inline struct arena_pool *apool(const rp_pool *p)
{
    return (struct arena_pool *)p->arena;
}

static inline uint64_t align_up64(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

/* Bytes handed out by a (owner's view). O(1). */
static inline uint64_t used_now(const rp_arena *a)
{
    return a->base_used + (a->h.bump - a->start);
}

static inline bool live_magic(uint64_t m)
{
    return m == MAGIC_THREAD || m == MAGIC_EXPLICIT;
}

/* ---- bookkeeping shared by the slow paths --------------------------------- */

/* The limit of B: its end, or lower when the budget ends first; h.limit
 * follows it (0 in ASan builds: the inline path always misses). O(1). */
static void set_limit(rp_arena *a)
{
    uint64_t lim = a->end;
    if (a->budget && a->cur) {
        uint64_t room = a->budget > a->base_used ? a->budget - a->base_used : 0;
        if (room < a->end - a->start)
            lim = a->start + room;
    }
    a->limit = lim;
    /* A store of its own (not merged with the one above into a vector
     * store fed by a 16-byte load, which stalls on the owner's fresh 8-byte
     * stores to end and base_used). */
    rp_store_relaxed_u64(&a->h.limit, RP_ASAN ? 0 : lim);
}

/* Raise the high-water mark to the current use. Inside an event (or by the
 * owner alone). O(1). */
static void note_peak(rp_arena *a)
{
    uint64_t u = used_now(a);
    if (u > a->peak)
        rp_store_relaxed_u64(&a->peak, u); /* stats read it */
}

/* Explicit arenas: bring the pool's counters up to date with base_used and a
 * change of `dchunks` regions. Relaxed RMWs (statistics; they order nothing).
 * Thread arenas are read live by the stats walk instead. O(1). */
static void publish(rp_arena *a, int64_t dchunks)
{
    if (a->magic != MAGIC_EXPLICIT)
        return;
    struct arena_pool *ap = apool(a->pool);
    if (a->base_used > a->published)
        rp_add_relaxed_u64(&ap->explicit_bytes, a->base_used - a->published);
    else if (a->base_used < a->published)
        rp_sub_relaxed_u64(&ap->explicit_bytes, a->published - a->base_used);
    a->published = a->base_used;
    if (dchunks > 0)
        rp_add_relaxed_u64(&ap->explicit_chunks, (uint64_t)dchunks);
    else if (dchunks < 0)
        rp_sub_relaxed_u64(&ap->explicit_chunks, (uint64_t)-dchunks);
}

/* A chunk event begins: stats readers must not combine bump, origin, peak
 * and the chunk counts until ev_end. Owner only. O(1). */
static void ev_begin(rp_arena *a)
{
    rp_store_relaxed_u64(&a->seq, a->seq + 1); /* odd */
}

/* A chunk event ends: publish origin, then an even seq. Release stores:
 * each orders the owner's earlier stores (the odd seq first of all) before
 * itself; they pair with the fences in read_counters. O(1). */
static void ev_end(rp_arena *a)
{
    rp_store_release_u64(&a->origin, a->cur ? a->start - a->base_used : 0);
    rp_store_release_u64(&a->seq, a->seq + 1); /* even */
}

/* Make chunk b the bump chunk with its bump at `bump`. Inside an event.
 * O(1). */
static void set_cur(rp_arena *a, rp_rdesc *b, uint64_t bump)
{
    rp_pool *p = a->pool;
    a->cur = b;
    a->start = b ? hdr(b)->start : 0;
    a->end = b ? chunk_base(p, b) + rpi_desc_bytes(p, b) : 0;
    /* Release: after the odd seq (see ev_end). */
    rp_store_release_u64(&a->h.bump, bump);
}

/* Take every chunk newer than `keep` (all of them when keep is NULL) off the
 * chain and make keep the top. Inside an event (or on an arena no reader can
 * reach). Returns the old top: the taken chunks, newest first, still linked
 * through their headers' prev down to keep, for put_chunks once the event
 * is over; *n = how many. O(chunks taken). */
static rp_rdesc *take_above(rp_arena *a, rp_rdesc *keep, int64_t *n)
{
    rp_pool *p = a->pool;
    int64_t k = 0;
    uint64_t bytes = 0;
    for (rp_rdesc *d = a->top; d && d != keep; d = hdr(d)->prev) {
        bytes += rpi_desc_bytes(p, d);
        k++;
    }
    rp_rdesc *old = a->top;
    a->top = keep;
    rp_store_relaxed_u64(&a->nchunks, a->nchunks - (uint64_t)k);
    rp_store_relaxed_u64(&a->chunk_bytes, a->chunk_bytes - bytes);
    *n = k;
    return old;
}

/* Return chunks taken by take_above (from d down to, not including, keep)
 * to the region pools, newest first. O(chunks); each may call madvise. */
static void put_chunks(rp_pool *p, rp_rdesc *d, rp_rdesc *keep)
{
    while (d && d != keep) {
        /* Read the link first: once put, d may be claimed (and its user
         * area cleared) by another thread at once. */
        rp_rdesc *prev = hdr(d)->prev;
        rpi_region_put(p, d);
        d = prev;
    }
}

/* list_lock: a test-and-set lock. Uncontended it costs one swap to take
 * and one plain store to drop (a mutex costs two atomic read-modify-writes
 * and two calls), which matters for request arenas created and destroyed
 * per request. Contended (a stats walk holds it), a taker spins briefly,
 * then yields. Its synchronization is hidden from TSan like every rpool
 * lock (rp_mutex_lock): it must not order user threads. */
static void lock_list(struct arena_pool *ap)
{
    RP_HIDE_BEGIN();
    /* The swap acquires the list; pairs with the release in unlock_list. */
    while (rp_swap_u32(&ap->list_lock, 1) != 0) {
        for (int i = 0; rp_load_relaxed_u32(&ap->list_lock) != 0; i++)
            if (i >= 100)
                sched_yield(); /* the holder may be walking, or preempted */
    }
    RP_HIDE_END();
}

static void unlock_list(struct arena_pool *ap)
{
    RP_HIDE_BEGIN();
    /* Release: the list changes before it; pairs with the swap above. */
    rp_store_release_u32(&ap->list_lock, 0);
    RP_HIDE_END();
}

/* Explicit list: link a newly created arena / unlink a dying one. The
 * links are rpool's own data under list_lock, hidden from TSan like the
 * lock. O(1). */
static void list_add(struct arena_pool *ap, rp_arena *a)
{
    lock_list(ap);
    RP_HIDE_BEGIN();
    a->lprev = NULL;
    a->lnext = ap->list;
    if (ap->list)
        ap->list->lprev = a;
    ap->list = a;
    RP_HIDE_END();
    unlock_list(ap);
}

static void list_del(struct arena_pool *ap, rp_arena *a)
{
    lock_list(ap);
    RP_HIDE_BEGIN();
    if (a->lprev)
        a->lprev->lnext = a->lnext;
    else
        ap->list = a->lnext;
    if (a->lnext)
        a->lnext->lprev = a->lprev;
    a->lnext = a->lprev = NULL;
    RP_HIDE_END();
    unlock_list(ap);
}

/* ---- creation ---------------------------------------------------------------- */

/* Pool-wide arena state, at pool creation. Returns 0 or -ENOMEM.
 * Cost: O(1); may commit metadata (a system call). */
int rpi_arena_init(rp_pool *p)
{
    struct arena_pool *ap = rpi_meta_alloc(p, sizeof *ap, RP_CACHELINE);
    if (!ap)
        return -ENOMEM;
    size_t gmin = p->cfg.region_min_bytes, gmax = p->cfg.region_max_bytes;
    uintptr_t rb = (uintptr_t)p->rbase;
    size_t low = (size_t)(rb & (~rb + 1)); /* alignment of the region area */
    ap->base_align = low && low < gmin ? low : gmin;
    ap->chunk_cap = gmax / 4 > gmin ? gmax / 4 : gmin;
    ap->list_lock = 0;
    ap->list = NULL;
    p->arena = ap;
    return 0;
}

/* Fork (pool.c's handlers, in its lock order after the heap lock): the
 * forking thread holds list_lock across fork(), so the child never inherits
 * it held by a thread that does not exist there. O(1). */
void rpi_arena_prefork(rp_pool *p)
{
    lock_list(apool(p));
}

void rpi_arena_postfork(rp_pool *p)
{
    unlock_list(apool(p));
}

/* The calling thread's arena for p, set up on first use (no chunk yet).
 * Cost: a thread-local lookup; the first call per thread and pool creates
 * the shard (thread.c: a mutex, maybe a metadata commit). */
rp_arena *rp_arena_thread(rp_pool *p)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    rp_tstate *ts = rpi_tstate_get(p);
    if (!ts)
        return NULL; /* errno from thread.c */
    rp_arena *a = (rp_arena *)(void *)ts->arena;
    if (RP_UNLIKELY(a->magic != MAGIC_THREAD)) {
        /* Shard blobs start zeroed (fresh or recycled by thread.c). */
        a->pool = p;
        a->budget = 0;
        rp_store_relaxed_u64(&a->magic, MAGIC_THREAD);
    }
    return a;
}

/* An explicit arena living in its first chunk (region_min_bytes), linked
 * on the pool's explicit list. Cost: O(1); one region from the pool
 * (lock-free on reuse, may call the OS); list_lock once. */
rp_arena *rp_arena_create(rp_pool *p, size_t budget_bytes)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    rp_rdesc *d = rpi_region_get(p, p->cfg.region_min_bytes, RK_ARENA);
    if (!d)
        return NULL; /* ENOMEM, counted by the region layer */
    uint64_t base = chunk_base(p, d);
    size_t bytes = rpi_desc_bytes(p, d);
    rp_arena *a = (rp_arena *)(uintptr_t)base;
    memset(a, 0, sizeof *a); /* no reader can reach a before list_add */
    a->pool = p;
    a->budget = budget_bytes;
    struct chunk *h = hdr(d);
    h->prev = NULL;
    h->owner = a;
    h->start = base + ARENA_HDR_BYTES;
    h->top = 0;
    h->base_after = 0;
    h->bumpable = 1;
    h->magic = CHUNK_MAGIC;
    a->top = d;
    a->nchunks = 1;
    a->chunk_bytes = bytes;
    ev_begin(a);
    set_cur(a, d, h->start);
    set_limit(a);
    ev_end(a);
    rp_store_relaxed_u64(&a->magic, MAGIC_EXPLICIT);
    rp_poison((void *)(uintptr_t)h->start, base + bytes - h->start);
    publish(a, 1);
    rp_add_relaxed_u64(&apool(p)->explicit_live, 1);
    list_add(apool(p), a);
    return a;
}

/* ---- allocation ----------------------------------------------------------------- */

/* Report a call on something that is not a live arena. O(1). */
static void bad_arena(const rp_arena *a, const char *what)
{
    rpi_report(NULL, RP_ERR_MISUSE, a,
               "%s(%p): not a live arena (destroyed, detached or never created)",
               what, (const void *)a);
}

/* The arena's own budget refused: counted as RP_FAIL_OTHER. O(1). */
static void *budget_fail(rp_arena *a)
{
    return rpi_fail_null(a->pool, RP_FAIL_OTHER, ENOMEM);
}

/* Serve (size, align) from a new chunk: a normal one of the next size, or a
 * dedicated region when the request is larger. The arena is unchanged on
 * failure. O(1) plus the region layer's cost (may call the OS). */
static void *alloc_chunk(rp_arena *a, size_t size, size_t align)
{
    rp_pool *p = a->pool;
    struct arena_pool *ap = apool(p);
    size_t gmin = p->cfg.region_min_bytes, gmax = p->cfg.region_max_bytes;
    size_t pad = align > ap->base_align ? align - ap->base_align : 0;
    if (size > gmax || pad > gmax - size)
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM); /* no region fits */
    size_t need = size + pad;
    size_t next = gmin;
    if (a->cur) {
        size_t twice = 2 * rpi_desc_bytes(p, a->cur);
        /* Still on the first chunk since a reset: take at once what the
         * last cycle needed beyond it (see rp_arena_reset). */
        if (a->regrow > twice && !hdr(a->cur)->prev)
            twice = (size_t)a->regrow;
        next = twice > ap->chunk_cap ? ap->chunk_cap : twice < gmin ? gmin : twice;
    }
    bool dedicated = need > next;
    rp_rdesc *d = rpi_region_get(p, dedicated ? need : next, RK_ARENA);
    if (!d)
        return NULL; /* ENOMEM, counted by the region layer */
    uint64_t base = chunk_base(p, d);
    size_t bytes = rpi_desc_bytes(p, d);
    uint64_t end = base + bytes;
    uint64_t r = align_up64(base, align), nb = r + size;
    rp_assert(1, nb <= end);
    /* Exact budget check now that the padding is known. */
    if (a->budget && used_now(a) + (nb - base) > a->budget) {
        rpi_region_put(p, d);
        return budget_fail(a);
    }
    /* A dedicated region becomes B only if it has more room left than B. */
    bool bumpable = !dedicated || !a->cur || end - nb >= a->end - a->h.bump;
    struct chunk *h = hdr(d);
    h->prev = a->top;
    h->owner = a;
    h->start = base;
    h->bumpable = bumpable;
    h->magic = CHUNK_MAGIC;
    rp_poison((void *)(uintptr_t)base, bytes);
    ev_begin(a);
    note_peak(a);
    uint64_t bu = a->base_used;
    if (bumpable) {
        if (a->cur) {
            hdr(a->cur)->top = a->h.bump;
            bu += a->h.bump - a->start;
        }
        h->top = 0;
        a->base_used = bu;
        set_cur(a, d, nb);
    } else {
        h->top = nb;
        bu += nb - base;
        a->base_used = bu;
    }
    h->base_after = bu;
    a->top = d;
    rp_store_relaxed_u64(&a->nchunks, a->nchunks + 1);
    rp_store_relaxed_u64(&a->chunk_bytes, a->chunk_bytes + bytes);
    set_limit(a);
    ev_end(a);
    publish(a, 1);
    rp_unpoison((void *)(uintptr_t)r, size);
    return (void *)(uintptr_t)r;
}

/* Everything the inline fast path does not serve: size 0, alignments >=
 * RP_ARENA_FAST_ALIGN or invalid, the end of B or of the budget, no chunk
 * yet, a bad arena, and every allocation of an ASan build. Serves any
 * request, fast-path ones included. O(1); a new chunk may call the OS. */
void *rp_arena_alloc_slow(rp_arena *a, size_t size, size_t align)
{
    if (!a) {
        errno = EINVAL;
        return NULL;
    }
    if (!live_magic(a->magic)) {
        bad_arena(a, "rp_arena_alloc");
        errno = EINVAL;
        return NULL;
    }
    rp_pool *p = a->pool;
    if (align == 0)
        align = 16;
    if (!rp_is_pow2(align) || align > p->cfg.region_max_bytes)
        return rpi_fail_null(p, RP_FAIL_OTHER, EINVAL);
    if (size == 0)
        size = 1; /* a unique pointer costs one byte */
    if (size > p->cfg.region_max_bytes)
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM);
    if (a->cur) {
        uint64_t r = align_up64(a->h.bump, align), nb = r + size;
        if (nb <= a->end) {
            if (nb > a->limit)
                return budget_fail(a); /* fits B, not the budget */
            rp_store_relaxed_u64(&a->h.bump, nb); /* stats read it */
            rp_unpoison((void *)(uintptr_t)r, size);
            return (void *)(uintptr_t)r;
        }
    }
    /* A new chunk adds at least `size` (used <= budget, size <= 1 GiB: no
     * overflow). */
    if (a->budget && used_now(a) + size > a->budget)
        return budget_fail(a);
    return alloc_chunk(a, size, align);
}

/* The exported rp_arena_alloc (the parentheses keep rpool.h's macro out):
 * the header's inline fast path, then rp_arena_alloc_slow. For callers that
 * take its address or build with RP_ARENA_NO_INLINE. Cost: as the inline
 * path plus a call. */
void *(rp_arena_alloc)(rp_arena *a, size_t size, size_t align)
{
    return rp_arena_alloc_inline(a, size, align);
}

/* ---- positions, rewind, reset, destroy --------------------------------------- */

/* Position = (base of the top chunk, its generation << 32 | offset of the
 * bump in B). Cost: O(1). */
rp_arena_pos rp_arena_mark(rp_arena *a)
{
    rp_arena_pos pos = {NULL, 0};
    if (!a || !live_magic(a->magic)) {
        bad_arena(a, "rp_arena_mark");
        return pos;
    }
    if (!a->top)
        return pos; /* a thread arena without chunks */
    rp_rdesc *t = a->top;
    pos.chunk = rpi_desc_base(a->pool, t);
    pos.offset = (size_t)((uint64_t)rp_load_relaxed_u32(&t->gen) << POS_GEN_SHIFT |
                          (a->h.bump - chunk_base(a->pool, a->cur)));
    return pos;
}

/* Report a position that cannot be rewound to. O(1). */
static void bad_pos(rp_arena *a, rp_arena_pos pos, const char *why)
{
    rpi_report(a->pool, RP_ERR_MISUSE, pos.chunk,
               "rp_arena_rewind(%p, {%p, %#zx}): %s; ignored", (void *)a,
               pos.chunk, pos.offset, why);
}

/* Free everything allocated after pos: chunks newer than the position's
 * top chunk go back to the pool, B's bump returns to the position's offset.
 * Validated before anything changes. Cost: O(chunks newer than the
 * position) + O(dedicated chunks between its top and its B); O(chain) when
 * the position is not found; each released chunk may call madvise. */
void rp_arena_rewind(rp_arena *a, rp_arena_pos pos)
{
    if (!a || !live_magic(a->magic)) {
        bad_arena(a, "rp_arena_rewind");
        return;
    }
    rp_pool *p = a->pool;
    int64_t n;
    if (!pos.chunk) {
        /* The position of an empty thread arena: free every chunk. */
        if (pos.offset != 0 || a->magic != MAGIC_THREAD) {
            bad_pos(a, pos, "not a position of this arena");
            return;
        }
        ev_begin(a);
        note_peak(a);
        rp_rdesc *gone = take_above(a, NULL, &n);
        a->base_used = 0;
        set_cur(a, NULL, 0);
        set_limit(a);
        ev_end(a);
        put_chunks(p, gone, NULL); /* the region layer poisons */
        publish(a, -n);
        return;
    }
    /* Find the position's top chunk in our own chain (only our own headers
     * are read). O(chunks above it). */
    rp_rdesc *x = a->top;
    while (x && chunk_base(p, x) != (uint64_t)(uintptr_t)pos.chunk)
        x = hdr(x)->prev;
    if (!x) {
        bad_pos(a, pos, "chunk not in this arena (foreign position, or rewound past)");
        return;
    }
    if ((uint32_t)(pos.offset >> POS_GEN_SHIFT) != rp_load_relaxed_u32(&x->gen)) {
        bad_pos(a, pos, "chunk was recycled since the mark (rewound past)");
        return;
    }
    rp_rdesc *b = x;
    while (b && !hdr(b)->bumpable)
        b = hdr(b)->prev;
    if (!b) {
        rpi_report(p, RP_ERR_CORRUPT, pos.chunk,
                   "rp_arena_rewind(%p): no bump chunk below %p", (void *)a, pos.chunk);
        return;
    }
    uint64_t base = chunk_base(p, b);
    uint64_t off = pos.offset & POS_OFF_MASK;
    uint64_t hi = b == a->cur ? a->h.bump : hdr(b)->top;
    if (off < hdr(b)->start - base || base + off > hi) {
        bad_pos(a, pos, "offset beyond the arena's use (rewound past)");
        return;
    }
    ev_begin(a);
    note_peak(a);
    rp_rdesc *gone = take_above(a, x, &n);
    a->base_used = hdr(x)->base_after;
    set_cur(a, b, base + off);
    set_limit(a);
    ev_end(a);
    put_chunks(p, gone, x);
    publish(a, -n);
    rp_poison((void *)(uintptr_t)(base + off), hi - (base + off));
}

/* Free everything; keep the first (bottom) chunk. Cost: O(chunks); each
 * released chunk may call madvise. */
void rp_arena_reset(rp_arena *a)
{
    if (!a || !live_magic(a->magic)) {
        bad_arena(a, "rp_arena_reset");
        return;
    }
    if (!a->top)
        return;
    /* Find the first chunk; on the way, what the normal chunks above it
     * handed out (used) and their bytes (held). The next cycle's first
     * normal chunk is sized for `used` at once, rounded up to a class but
     * never above `held` rounded down, so a steady request pattern takes
     * one region per cycle instead of doubling through several, and never
     * holds more than the last cycle did. */
    rp_rdesc *f = a->top;
    uint64_t used = 0, held = 0;
    for (struct chunk *h = hdr(f); h->prev; f = h->prev, h = hdr(f)) {
        if (h->bumpable) {
            used += (f == a->cur ? a->h.bump : h->top) - h->start;
            held += rpi_desc_bytes(a->pool, f);
        }
    }
    a->regrow = 0;
    if (used > 1) {
        uint64_t up = UINT64_C(1) << (rp_log2((size_t)used - 1) + 1);
        uint64_t down = UINT64_C(1) << rp_log2((size_t)held);
        a->regrow = up < down ? up : down;
    }
    uint64_t hi = f == a->cur ? a->h.bump : hdr(f)->top;
    int64_t n;
    ev_begin(a);
    note_peak(a);
    rp_rdesc *gone = take_above(a, f, &n);
    hdr(f)->base_after = 0;
    a->base_used = 0;
    set_cur(a, f, hdr(f)->start);
    set_limit(a);
    ev_end(a);
    put_chunks(a->pool, gone, f);
    publish(a, -n);
    rp_poison((void *)(uintptr_t)hdr(f)->start, hi - hdr(f)->start);
}

/* Unlink from the explicit list, then return every chunk, the first
 * (holding the struct) last. Cost: list_lock once; O(chunks); each released
 * chunk may call madvise. */
void rp_arena_destroy(rp_arena *a)
{
    if (!a)
        return;
    if (a->magic == MAGIC_THREAD) {
        rpi_report(a->pool, RP_ERR_MISUSE, a,
                   "rp_arena_destroy(%p): a thread arena is returned at thread "
                   "exit or rp_thread_detach, not destroyed; ignored",
                   (void *)a);
        return;
    }
    if (a->magic != MAGIC_EXPLICIT) {
        bad_arena(a, "rp_arena_destroy");
        return;
    }
    rp_pool *p = a->pool;
    rp_rdesc *first = rpi_desc_lookup(p, a);
    uint32_t w = first ? rp_load_relaxed_u32(&first->word) : 0;
    if (!first || chunk_base(p, first) != (uint64_t)(uintptr_t)a ||
        RW_STATE(w) != RS_IN_USE || RW_KIND(w) != RK_ARENA || hdr(first)->owner != a) {
        rpi_report(p, RP_ERR_CORRUPT, a,
                   "rp_arena_destroy(%p): the arena's first chunk is not a live "
                   "arena region of its pool; ignored", (void *)a);
        return;
    }
    struct arena_pool *ap = apool(p);
    list_del(ap, a); /* from here on no pool walk can reach a */
    int64_t n;
    rp_rdesc *gone = take_above(a, first, &n);
    put_chunks(p, gone, first);
    rp_sub_relaxed_u64(&ap->explicit_bytes, a->published);
    rp_sub_relaxed_u64(&ap->explicit_chunks, (uint64_t)n + 1);
    rp_sub_relaxed_u64(&ap->explicit_live, 1);
    rp_store_relaxed_u64(&a->magic, 0);
    a->limit = 0;
    a->h.limit = 0; /* a stray rp_arena_alloc goes to the slow path's check */
    rpi_region_put(p, first); /* the struct goes with it */
}

/* thread.c: the shard is leaving (thread exit, rp_thread_detach, pool
 * destruction). Returns every chunk of the thread arena and clears it.
 * Runs on the owner, or on the destroying thread when the pool goes (the
 * caller's contract orders it after the owner's last use). Cost: O(chunks);
 * each may call madvise. */
void rpi_arena_thread_exit(rp_pool *p, rp_tstate *ts)
{
    rp_arena *a = (rp_arena *)(void *)ts->arena;
    if (rp_load_relaxed_u64(&a->magic) != MAGIC_THREAD || a->pool != p)
        return; /* never used */
    int64_t n;
    ev_begin(a);
    rp_rdesc *gone = take_above(a, NULL, &n);
    rp_store_relaxed_u64(&a->magic, 0);
    a->base_used = 0;
    set_cur(a, NULL, 0);
    a->limit = 0;
    a->h.limit = 0;
    a->regrow = 0;
    rp_store_relaxed_u64(&a->peak, 0);
    ev_end(a);
    put_chunks(p, gone, NULL);
}

/* ---- stats ------------------------------------------------------------------------ */

/* The counters of a that need no consistent read. O(1). */
static void read_fixed(const rp_arena *a, uint64_t magic, rp_arena_stats *st)
{
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    st->version = RP_ARENA_STATS_VERSION;
    st->is_thread_arena = magic == MAGIC_THREAD;
    /* A thread arena's budget is always 0 (and its word is written plainly
     * by the owner at first use, so it is not read here). */
    st->budget_bytes = magic == MAGIC_EXPLICIT ? (size_t)a->budget : 0;
}

/* The counters that change together at chunk events, read as a seqlock
 * reader (relaxed loads and fences; the owner never waits): up to `spins`
 * tries, then up to `yields` more after sched_yield. Returns false (and
 * leaves them 0) when the owner was inside an event at every try.
 * Cost: O(tries) loads and fences. */
static bool read_counters(const rp_arena *a, rp_arena_stats *st, int spins, int yields)
{
    for (int i = 0; i < spins + yields; i++) {
        if (i >= spins)
            sched_yield(); /* let an owner preempted mid-event finish */
        uint64_t s1 = rp_load_relaxed_u64(&a->seq);
        /* Fence: the loads below see at least what the owner published
         * with the even seq just read (pairs with ev_end's releases). */
        rp_fence_seq_cst();
        uint64_t o = rp_load_relaxed_u64(&a->origin);
        uint64_t b = rp_load_relaxed_u64(&a->h.bump);
        uint64_t pk = rp_load_relaxed_u64(&a->peak);
        uint64_t n = rp_load_relaxed_u64(&a->nchunks);
        uint64_t cb = rp_load_relaxed_u64(&a->chunk_bytes);
        /* Fence: a value from a newer event makes the seq load below see
         * that event's odd seq (pairs with ev_begin/set_cur/ev_end). */
        rp_fence_seq_cst();
        uint64_t s2 = rp_load_relaxed_u64(&a->seq);
        if (s1 == s2 && !(s1 & 1)) {
            uint64_t used = o ? b - o : 0;
            st->bytes_in_use = (size_t)used;
            st->region_bytes = (size_t)cb;
            st->regions = n;
            st->peak_bytes = (size_t)(pk > used ? pk : used);
            return true;
        }
    }
    return false;
}

/* Public per-arena snapshot. Any thread, arena kept alive by the caller.
 * Cost: O(1) loads and fences; at most READ_SPINS + READ_YIELDS tries. */
int rp_arena_stats_get(const rp_arena *a, rp_arena_stats *out)
{
    if (!a || !out)
        return -EINVAL;
    uint64_t magic = rp_load_relaxed_u64(&a->magic);
    if (!live_magic(magic)) {
        bad_arena(a, "rp_arena_stats_get");
        return -EINVAL;
    }
    read_fixed(a, magic, out);
    return read_counters(a, out, READ_SPINS, READ_YIELDS) ? 0 : -EAGAIN;
}

/* A new high-water mark from the current use. Owner only. O(1). */
void rp_arena_peak_reset(rp_arena *a)
{
    if (!a || !live_magic(a->magic)) {
        bad_arena(a, "rp_arena_peak_reset");
        return;
    }
    /* One word: a reader sees the old or the new mark, and reports at
     * least the use it reads with it. */
    rp_store_relaxed_u64(&a->peak, used_now(a));
}

struct visit {
    void (*fn)(const rp_arena_stats *st, uint64_t thread_id, void *arg);
    void *arg;
    uint64_t sum; /* rpi_arena_stats: bytes in use of thread arenas */
};

/* One shard's arena, under the RCU read lock (thread.c). The shard was
 * published with a release the walk acquired, so ts->tid is plain data. */
static void visit_thread(rp_tstate *ts, void *arg)
{
    struct visit *v = arg;
    const rp_arena *a = (const rp_arena *)(const void *)ts->arena;
    if (rp_load_relaxed_u64(&a->magic) != MAGIC_THREAD)
        return; /* this thread never asked for its arena */
    rp_arena_stats st;
    read_fixed(a, MAGIC_THREAD, &st);
    /* No yielding under the RCU read lock: an arena stuck in an event is
     * reported in flight. */
    st.in_flight = !read_counters(a, &st, READ_SPINS, 0);
    v->fn(&st, ts->tid, v->arg);
}

/* Every thread arena (with its shard's thread id) and every live explicit
 * arena (thread id 0) of p, one fn call each. Thread arenas are visited
 * under the RCU read lock, explicit arenas under list_lock: fn must not
 * block and must not call rpool (create/destroy would deadlock on the
 * lock). Arenas created or destroyed meanwhile may be missed or seen once.
 * Cost: O(threads + explicit arenas) reads; list_lock held for the
 * explicit part, delaying rp_arena_create/destroy meanwhile. */
void rpi_arena_foreach(rp_pool *p,
                       void (*fn)(const rp_arena_stats *st, uint64_t thread_id,
                                  void *arg),
                       void *arg)
{
    struct visit v = {fn, arg, 0};
    rpi_threads_foreach(p, visit_thread, &v);
    struct arena_pool *ap = apool(p);
    lock_list(ap);
    RP_HIDE_BEGIN();
    rp_arena *a = ap->list;
    RP_HIDE_END();
    while (a) {
        rp_arena_stats st;
        /* Hidden: a listed arena cannot be destroyed while list_lock is
         * held, but TSan cannot see that lock (see the file comment). */
        RP_HIDE_BEGIN();
        read_fixed(a, MAGIC_EXPLICIT, &st);
        bool ok = read_counters(a, &st, READ_SPINS, 0);
        rp_arena *next = a->lnext;
        RP_HIDE_END();
        st.in_flight = !ok;
        fn(&st, 0, arg);
        a = next;
    }
    unlock_list(ap);
}

/* rpi_arena_stats' visitor: thread arenas' bytes in use. O(1). */
static void sum_thread(rp_tstate *ts, void *arg)
{
    struct visit *v = arg;
    const rp_arena *a = (const rp_arena *)(const void *)ts->arena;
    rp_arena_stats st;
    /* An arena in flight through every try counts 0 in this snapshot, like
     * any other in-flight operation. */
    if (read_counters(a, &st, READ_SPINS, 0))
        v->sum += st.bytes_in_use;
}

/* st->arena_bytes: live sum over thread arenas plus the explicit arenas'
 * published bytes. Cost: O(threads) relaxed loads under the RCU read lock;
 * no lock, no allocation. */
void rpi_arena_stats(rp_pool *p, rp_stats *st)
{
    struct visit v = {NULL, NULL, 0};
    rpi_threads_foreach(p, sum_thread, &v);
    v.sum += rp_load_relaxed_u64(&apool(p)->explicit_bytes);
    st->arena_bytes = (size_t)v.sum;
}

/* ---- checks ------------------------------------------------------------------------- */

struct check_ctx {
    rp_pool *p;
    uint64_t hwm;
    uint64_t chunks;   /* sum of chain lengths of the arenas checked */
    const void *ptr;   /* first failure */
    char msg[256];
};

#define CFAIL(c, at, ...)                                                      \
    do {                                                                      \
        if (!(c)->msg[0]) {                                                   \
            (c)->ptr = (at);                                                  \
            snprintf((c)->msg, sizeof (c)->msg, __VA_ARGS__);                 \
        }                                                                     \
    } while (0)

/* d points at a descriptor below the high-water mark. O(1). */
static bool desc_ok(const struct check_ctx *c, const rp_rdesc *d)
{
    uintptr_t off = (uintptr_t)d - (uintptr_t)c->p->desc;
    return (uintptr_t)d >= (uintptr_t)c->p->desc && off % sizeof *d == 0 &&
           off / sizeof *d < c->hwm;
}

/* Validate one arena's chain and fields (`kind` names it in messages).
 * May run under the RCU read lock or list_lock (must not block): failures
 * are recorded, reported later. Reads hidden from TSan, every pointer
 * range-checked. O(chunks). */
static void check_arena(struct check_ctx *c, rp_arena *a, const char *kind)
{
    rp_pool *p = c->p;
    RP_HIDE_BEGIN();
    uint64_t bump = a->h.bump, hlimit = a->h.limit, origin = a->origin;
    uint64_t start = a->start, end = a->end, base_used = a->base_used;
    rp_rdesc *top = a->top, *cur = a->cur, *b = NULL;
    uint64_t limit = a->limit, n = 0, bytes = 0, base_after = 0;
    uint64_t nchunks = a->nchunks, chunk_bytes = a->chunk_bytes;
    for (rp_rdesc *d = top; d; n++) {
        if (n > c->hwm || !desc_ok(c, d)) {
            CFAIL(c, a, "arena check: %s arena %p: chain link %p is not a "
                        "carved region descriptor", kind, (void *)a, (void *)d);
            break;
        }
        uint32_t w = rp_load_relaxed_u32(&d->word);
        struct chunk *h = hdr(d);
        if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) != RK_ARENA ||
            h->magic != CHUNK_MAGIC || h->owner != a) {
            CFAIL(c, rpi_desc_base(p, d),
                  "arena check: %s arena %p: chunk %p has word %#x, magic %#x, "
                  "owner %p", kind, (void *)a, rpi_desc_base(p, d), w, h->magic,
                  (void *)h->owner);
            break;
        }
        if (d == top)
            base_after = h->base_after;
        if (!b && h->bumpable)
            b = d;
        bytes += rpi_class_bytes(p, RW_CLS(w));
        d = h->prev;
    }
    uint64_t cur_start = cur && desc_ok(c, cur) ? hdr(cur)->start : 0;
    RP_HIDE_END();
    c->chunks += n;
    if (c->msg[0])
        return;
    if (n != nchunks || bytes != chunk_bytes)
        CFAIL(c, a, "arena check: %s arena %p: chain has %lu chunks / %lu bytes, "
                    "arena says %lu / %lu", kind, (void *)a, (unsigned long)n,
              (unsigned long)bytes, (unsigned long)nchunks, (unsigned long)chunk_bytes);
    else if (b != cur)
        CFAIL(c, a, "arena check: %s arena %p: bump chunk %p is not the newest "
                    "bumpable chunk %p", kind, (void *)a, (void *)cur, (void *)b);
    else if (!cur && (bump || start || end || limit || hlimit || base_used))
        CFAIL(c, a, "arena check: %s arena %p without chunks has state", kind, (void *)a);
    else if (cur && (start != cur_start || end != chunk_base(p, cur) + rpi_desc_bytes(p, cur) ||
                     !(start <= bump && bump <= limit && limit <= end)))
        CFAIL(c, a, "arena check: %s arena %p: start %#lx <= bump %#lx <= limit %#lx "
                    "<= end %#lx fails (chunk %p)", kind, (void *)a, (unsigned long)start,
              (unsigned long)bump, (unsigned long)limit, (unsigned long)end,
              rpi_desc_base(p, cur));
    else if (hlimit != (RP_ASAN ? 0 : limit))
        CFAIL(c, a, "arena check: %s arena %p: fast-path limit %#lx, limit %#lx",
              kind, (void *)a, (unsigned long)hlimit, (unsigned long)limit);
    else if (top && base_used != base_after)
        CFAIL(c, a, "arena check: %s arena %p: base_used %lu != top's base_after %lu",
              kind, (void *)a, (unsigned long)base_used, (unsigned long)base_after);
    else if (origin != (cur ? start - base_used : 0))
        CFAIL(c, a, "arena check: %s arena %p: published origin %#lx != start - "
                    "base_used %#lx", kind, (void *)a, (unsigned long)origin,
              (unsigned long)(cur ? start - base_used : 0));
}

/* rpi_threads_foreach visitor: one thread arena. */
static void check_thread(rp_tstate *ts, void *arg)
{
    rp_arena *a = (rp_arena *)(void *)ts->arena;
    if (rp_load_relaxed_u64(&a->magic) == MAGIC_THREAD)
        check_arena(arg, a, "thread");
}

/* Validate thread arenas' and listed explicit arenas' chains and fields,
 * every arena region's header, and the pool-wide counts (see the
 * invariants above). Returns 0 or -EFAULT after one RP_ERR_INVARIANT
 * report. Exact only when quiescent. Cost: O(threads + explicit arenas +
 * their chunks + carved granules / region size); list_lock held while the
 * explicit arenas are checked. */
int rpi_arena_check(rp_pool *p)
{
    struct check_ctx c = {.p = p, .hwm = rp_load_acquire_u64(&p->hwm)};
    rpi_threads_foreach(p, check_thread, &c);
    uint64_t thread_chunks = c.chunks;
    /* Explicit arenas: the list, walked under its lock. */
    struct arena_pool *ap = apool(p);
    uint64_t listed = 0;
    c.chunks = 0;
    lock_list(ap);
    RP_HIDE_BEGIN();
    rp_arena *e = ap->list;
    RP_HIDE_END();
    while (e && !c.msg[0]) {
        RP_HIDE_BEGIN();
        uint64_t magic = e->magic;
        rp_arena *next = e->lnext;
        RP_HIDE_END();
        if (magic != MAGIC_EXPLICIT) {
            CFAIL(&c, e, "arena check: listed arena %p has magic %#lx", (void *)e,
                  (unsigned long)magic);
            break;
        }
        check_arena(&c, e, "explicit");
        listed++;
        e = next;
    }
    unlock_list(ap);
    uint64_t expl = rp_load_relaxed_u64(&ap->explicit_chunks);
    uint64_t live = rp_load_relaxed_u64(&ap->explicit_live);
    if (!c.msg[0] && (c.chunks != expl || listed != live))
        CFAIL(&c, NULL, "arena check: %lu explicit arenas listed holding %lu chunks, "
                        "counters say %lu holding %lu", (unsigned long)listed,
              (unsigned long)c.chunks, (unsigned long)live, (unsigned long)expl);
    /* Every arena region: a chunk header naming a thread arena (in a shard,
     * inside the meta area) or an explicit arena (the base of a live arena
     * region). Hidden reads: other owners may be writing their headers. */
    uint64_t regions = 0;
    char *meta_lo = p->bump_base, *meta_hi = p->bump_base + p->bump_reserved;
    RP_HIDE_BEGIN();
    for (size_t g = 0; g < c.hwm && !c.msg[0];) {
        rp_rdesc *d = &p->desc[g];
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        size_t step = st == RS_TAIL || st == RS_UNUSED ? 1 : (size_t)1 << RW_CLS(w);
        if (st == RS_IN_USE && RW_KIND(w) == RK_ARENA) {
            regions++;
            struct chunk *h = hdr(d);
            char *o = (char *)h->owner;
            bool ok = h->magic == CHUNK_MAGIC;
            if (ok && !(o >= meta_lo && o < meta_hi)) {
                rp_rdesc *od = rpi_desc_lookup(p, o);
                uint32_t ow = od ? rp_load_relaxed_u32(&od->word) : 0;
                ok = od && rpi_desc_base(p, od) == o && RW_STATE(ow) == RS_IN_USE &&
                     RW_KIND(ow) == RK_ARENA && hdr(od)->owner == (rp_arena *)o;
            }
            if (!ok)
                CFAIL(&c, rpi_desc_base(p, d),
                      "arena check: arena region %p has magic %#x and owner %p, "
                      "which is no live arena", rpi_desc_base(p, d), h->magic,
                      (void *)o);
        }
        g += step;
    }
    RP_HIDE_END();
    if (!c.msg[0] && regions != thread_chunks + expl)
        CFAIL(&c, NULL, "arena check: %lu arena regions in use, but thread arenas "
                        "hold %lu and explicit arenas %lu", (unsigned long)regions,
              (unsigned long)thread_chunks, (unsigned long)expl);
    if (c.msg[0]) {
        rpi_report(p, RP_ERR_INVARIANT, c.ptr, "%s", c.msg);
        return -EFAULT;
    }
    return 0;
}

/* ---- generic allocator interface -------------------------------------------------- */

/* Allocator callbacks: each costs what the call it wraps costs. */
static void *arena_alloc_fn(void *ctx, size_t size, size_t align)
{
    return rp_arena_alloc(ctx, size, align);
}

static void arena_free_fn(void *ctx, void *ptr, size_t size)
{
    (void)ctx, (void)ptr, (void)size; /* freed by reset/rewind/destroy */
}

static void *pool_alloc_fn(void *ctx, size_t size, size_t align)
{
    return rp_aligned_alloc(ctx, align ? align : 16, size);
}

static void pool_free_fn(void *ctx, void *ptr, size_t size)
{
    (void)size;
    rp_free(ctx, ptr);
}

static void *libc_alloc_fn(void *ctx, size_t size, size_t align)
{
    (void)ctx;
    if (align == 0)
        align = 16;
    if (!rp_is_pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    if (align < sizeof(void *))
        align = sizeof(void *);
    if (size == 0)
        size = 1; /* a unique pointer, as the other allocators give */
    if (size > SIZE_MAX - (align - 1)) {
        errno = ENOMEM;
        return NULL;
    }
    /* C11 wants size to be a multiple of the alignment. */
    return aligned_alloc(align, rp_align_up(size, align));
}

static void libc_free_fn(void *ctx, void *ptr, size_t size)
{
    (void)ctx, (void)size;
    free(ptr);
}

/* Allocator constructors: O(1), no allocation. */
rp_allocator rp_allocator_arena(rp_arena *a)
{
    return (rp_allocator){arena_alloc_fn, arena_free_fn, a};
}

rp_allocator rp_allocator_pool(rp_pool *p)
{
    return (rp_allocator){pool_alloc_fn, pool_free_fn, p};
}

rp_allocator rp_allocator_libc(void)
{
    return (rp_allocator){libc_alloc_fn, libc_free_fn, NULL};
}

/* a.alloc, with rp_mul_size's SIZE_MAX (overflow) turned into ENOMEM.
 * Cost: O(1) plus a.alloc. */
void *rp_allocator_call(rp_allocator a, size_t size, size_t align)
{
    if (size == SIZE_MAX) { /* rp_mul_size's overflow marker */
        errno = ENOMEM;
        return NULL;
    }
    if (!a.alloc) {
        errno = EINVAL;
        return NULL;
    }
    return a.alloc(a.ctx, size, align);
}
