/* arena.c -- bump arenas: per-thread (sharded) arenas, explicit request
 * arenas, and the generic allocator interface.
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
 *    kept until rp_arena_destroy.
 *
 * Threads and data.
 *  - An arena and its chunk headers are written by its owner only (one
 *    thread at a time; an explicit arena moves between threads through the
 *    caller's happens-before edge). The allocation fast path is a plain bump:
 *    no lock, no atomic read-modify-write; the bump pointer is written with a
 *    relaxed store (one mov on x86-64) because stats read it.
 *  - Stats (any thread) read a thread arena's bytes in use as
 *    bump - origin (origin = start - base_used) while walking the shards
 *    under RCU. The two words change together only at chunk events, which
 *    the owner brackets with a sequence count (a seqlock with one writer:
 *    odd = in flight; release stores by the owner, relaxed loads and fences
 *    in the reader, so no happens-before edge is made for TSan). The fast
 *    path's bump store is a plain relaxed store.
 *  - rp_check (any thread, exact when quiescent) reads thread arenas' other
 *    fields and chunk headers inside RP_HIDE_BEGIN/END: a concurrent check
 *    may read stale or foreign values, so every pointer is range-checked
 *    before use and walks are bounded.
 *  - Pool-wide counters for explicit arenas (struct arena_pool) are relaxed
 *    read-modify-writes made only at chunk events, rewind, reset and
 *    destroy, never per allocation.
 *  - Chunks go back to the pool through rpi_region_put, which shows TSan the
 *    release -> next-claim edge; ASan poisoning is done here (below).
 * No lock is taken in this file (the region layer takes carve_lock when it
 * carves new address space).
 *
 * Invariants, per arena a with chain top .. bottom (quiescent, owner's view):
 *   a.nchunks     = length of the chain
 *   a.chunk_bytes = sum over the chain of region bytes
 *   B = newest chunk with bumpable = 1; bottom.bumpable = 1
 *   start(B) <= bump <= limit <= end(B) = base(B) + bytes(B)
 *   used(a)   = base_used + (bump - start(B))     bytes handed out, padding
 *                                                  included, unused chunk
 *                                                  tails excluded
 *   base_used = top.base_after
 *   origin    = start(B) - base_used (0 without chunks), so used = bump - origin
 *   seq even  outside chunk events
 *   budget != 0  =>  used(a) <= budget and limit <= start + budget - base_used
 * Pool-wide (quiescent):
 *   #regions IN_USE with kind RK_ARENA
 *       = sum over thread arenas of nchunks + arena_pool.explicit_chunks
 *   rp_stats.arena_bytes
 *       = sum over thread arenas of used(a) + arena_pool.explicit_bytes
 *   explicit_bytes = sum over explicit arenas of base_used: bytes handed out
 *       outside each explicit arena's current bump range (that range is
 *       counted once the arena moves past it; see docs/ARENAS.md).
 *
 * ASan (RP_ASAN): a chunk is poisoned when acquired; each allocation
 * unpoisons exactly [p, p + size); rewind and reset poison what they free in
 * the chunks they keep; chunks returned to the pool are poisoned by the
 * region layer. The explicit arena struct stays unpoisoned while it lives.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC_THREAD 0x647268742d616e72ull   /* "rna-thrd" */
#define MAGIC_EXPLICIT 0x6c7078652d616e72ull /* "rna-expl" */
#define CHUNK_MAGIC 0x6b6e6863u             /* "chnk" */

/* Alignments below this take the fast path; larger ones are checked against
 * region_max_bytes on the slow path. */
#define FAST_ALIGN ((size_t)4096)

/* rp_arena_pos.offset = generation of pos.chunk << 32 | byte offset in B. */
#define POS_GEN_SHIFT 32
#define POS_OFF_MASK ((UINT64_C(1) << POS_GEN_SHIFT) - 1)

struct rp_arena {
    /* Hot: the fast path reads bump and limit and writes bump. */
    uint64_t bump;        /* next free byte of B (an address); owner writes
                             with relaxed stores, stats read relaxed */
    uint64_t limit;       /* min(end, start + budget - base_used); owner */
    uint64_t magic;       /* MAGIC_THREAD / MAGIC_EXPLICIT, 0 when dead;
                             owner writes relaxed, rp_check reads relaxed */
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
                             rewind/reset/chunk event; owner */
    uint64_t nchunks;     /* regions held; owner */
    uint64_t chunk_bytes; /* bytes of regions held; owner */
};

_Static_assert(sizeof(struct rp_arena) <= RP_TS_ARENA_BYTES,
               "a thread arena fits its shard blob");
_Static_assert(_Alignof(struct rp_arena) <= RP_CACHELINE,
               "the shard blob's alignment suffices");
_Static_assert(sizeof(uintptr_t) == sizeof(uint64_t), "addresses are 64-bit");

/* Bytes at the start of an explicit arena's first chunk taken by the struct. */
#define ARENA_HDR_BYTES                                                       \
    ((sizeof(struct rp_arena) + RP_CACHELINE - 1) & ~(size_t)(RP_CACHELINE - 1))

/* Chunk header, in the region descriptor's user area. Owner only; rp_check
 * reads it hidden from TSan. */
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

/* Pool-wide arena state (p->arena), from the meta bump area. */
struct arena_pool {
    uint64_t explicit_bytes;  /* sum of explicit arenas' base_used; relaxed */
    uint64_t explicit_chunks; /* regions held by explicit arenas; relaxed */
    uint64_t explicit_live;   /* explicit arenas alive; relaxed */
    size_t base_align;        /* every region base is aligned to this */
    size_t chunk_cap;         /* largest normal chunk */
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
    return a->base_used + (a->bump - a->start);
}

/* ---- bookkeeping shared by the slow paths --------------------------------- */

/* The fast-path limit of B: its end, or lower when the budget ends first.
 * O(1). */
static void set_limit(rp_arena *a)
{
    uint64_t lim = a->end;
    if (a->budget && a->cur) {
        uint64_t room = a->budget > a->base_used ? a->budget - a->base_used : 0;
        if (room < a->end - a->start)
            lim = a->start + room;
    }
    a->limit = lim;
}

/* Raise the high-water mark to the current use. O(1). */
static void note_peak(rp_arena *a)
{
    uint64_t u = used_now(a);
    if (u > a->peak)
        a->peak = u;
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

/* A chunk event begins: stats readers must not combine bump and origin
 * until ev_end. Owner only. O(1). */
static void ev_begin(rp_arena *a)
{
    rp_store_relaxed_u64(&a->seq, a->seq + 1); /* odd */
}

/* A chunk event ends: publish origin, then an even seq. Release stores:
 * each orders the owner's earlier stores (the odd seq first of all) before
 * itself; they pair with the fences in sum_thread. O(1). */
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
    /* Release: after the odd seq (see ev_end); later fast-path stores
     * continue its release sequence. */
    rp_store_release_u64(&a->bump, bump);
}

/* Return every chunk newer than `keep` (all of them when keep is NULL) to
 * the region pools, newest first, and make keep the top. Returns the number
 * of chunks released. O(chunks released); may call madvise. */
static int64_t release_above(rp_arena *a, rp_rdesc *keep)
{
    rp_pool *p = a->pool;
    int64_t n = 0;
    uint64_t bytes = 0;
    for (rp_rdesc *d = a->top; d && d != keep;) {
        /* Read the link first: once put, d may be claimed (and its user
         * area cleared) by another thread at once. */
        rp_rdesc *prev = hdr(d)->prev;
        bytes += rpi_desc_bytes(p, d);
        n++;
        rpi_region_put(p, d);
        d = prev;
    }
    a->top = keep;
    a->nchunks -= (uint64_t)n;
    a->chunk_bytes -= bytes;
    return n;
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
    p->arena = ap;
    return 0;
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

/* An explicit arena living in its first chunk (region_min_bytes).
 * Cost: O(1); one region from the pool (lock-free on reuse, may call the
 * OS). */
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
    memset(a, 0, sizeof *a);
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
    bool bumpable = !dedicated || !a->cur || end - nb >= a->end - a->bump;
    struct chunk *h = hdr(d);
    h->prev = a->top;
    h->owner = a;
    h->start = base;
    h->bumpable = bumpable;
    h->magic = CHUNK_MAGIC;
    rp_poison((void *)(uintptr_t)base, bytes);
    note_peak(a);
    ev_begin(a);
    uint64_t bu = a->base_used;
    if (bumpable) {
        if (a->cur) {
            hdr(a->cur)->top = a->bump;
            bu += a->bump - a->start;
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
    a->nchunks++;
    a->chunk_bytes += bytes;
    set_limit(a);
    ev_end(a);
    publish(a, 1);
    rp_unpoison((void *)(uintptr_t)r, size);
    return (void *)(uintptr_t)r;
}

/* Everything the fast path does not serve: size 0, alignments >= 4 KiB or
 * invalid, the end of B or of the budget, no chunk yet, a bad arena.
 * O(1); a new chunk may call the OS. */
__attribute__((noinline, cold)) /* keeps the fast path free of a frame */
static void *alloc_slow(rp_arena *a, size_t size, size_t align)
{
    if (!a) {
        errno = EINVAL;
        return NULL;
    }
    if (a->magic != MAGIC_THREAD && a->magic != MAGIC_EXPLICIT) {
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
        uint64_t r = align_up64(a->bump, align), nb = r + size;
        if (nb <= a->end) {
            if (nb > a->limit)
                return budget_fail(a); /* fits B, not the budget */
            rp_store_relaxed_u64(&a->bump, nb); /* stats read it */
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

/* The fast path: one aligned bump inside B and below the budget limit.
 * Cost: 16 instructions (align 0) or 20 (an explicit alignment < 4 KiB)
 * with gcc 12 -O2 on x86-64, 22 with clang 14, measured with callgrind
 * (docs/ARENAS.md); no lock, no atomic read-modify-write, one relaxed
 * store. Everything else: alloc_slow. */
void *rp_arena_alloc(rp_arena *a, size_t size, size_t align)
{
    size_t m = align ? align - 1 : 15;
    if (RP_LIKELY(a && m < FAST_ALIGN && !(m & (m + 1)))) {
        uint64_t r = (a->bump + m) & ~(uint64_t)m;
        uint64_t nb = r + size;
        /* nb > r: size >= 1 and no wrap-around; nb <= limit: inside B and
         * the budget. */
        if (RP_LIKELY(nb > r && nb <= a->limit)) {
            rp_store_relaxed_u64(&a->bump, nb); /* stats read it relaxed */
            rp_unpoison((void *)(uintptr_t)r, size);
            return (void *)(uintptr_t)r;
        }
    }
    return alloc_slow(a, size, align);
}

/* ---- positions, rewind, reset, destroy --------------------------------------- */

/* Position = (base of the top chunk, its generation << 32 | offset of the
 * bump in B). Cost: O(1). */
rp_arena_pos rp_arena_mark(rp_arena *a)
{
    rp_arena_pos pos = {NULL, 0};
    if (!a || (a->magic != MAGIC_THREAD && a->magic != MAGIC_EXPLICIT)) {
        bad_arena(a, "rp_arena_mark");
        return pos;
    }
    if (!a->top)
        return pos; /* a thread arena without chunks */
    rp_rdesc *t = a->top;
    pos.chunk = rpi_desc_base(a->pool, t);
    pos.offset = (size_t)((uint64_t)rp_load_relaxed_u32(&t->gen) << POS_GEN_SHIFT |
                          (a->bump - chunk_base(a->pool, a->cur)));
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
    if (!a || (a->magic != MAGIC_THREAD && a->magic != MAGIC_EXPLICIT)) {
        bad_arena(a, "rp_arena_rewind");
        return;
    }
    rp_pool *p = a->pool;
    if (!pos.chunk) {
        /* The position of an empty thread arena: free every chunk. */
        if (pos.offset != 0 || a->magic != MAGIC_THREAD) {
            bad_pos(a, pos, "not a position of this arena");
            return;
        }
        note_peak(a);
        ev_begin(a);
        int64_t n = release_above(a, NULL); /* the region layer poisons */
        a->base_used = 0;
        set_cur(a, NULL, 0);
        set_limit(a);
        ev_end(a);
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
    uint64_t hi = b == a->cur ? a->bump : hdr(b)->top;
    if (off < hdr(b)->start - base || base + off > hi) {
        bad_pos(a, pos, "offset beyond the arena's use (rewound past)");
        return;
    }
    note_peak(a);
    ev_begin(a);
    int64_t n = release_above(a, x);
    a->base_used = hdr(x)->base_after;
    set_cur(a, b, base + off);
    set_limit(a);
    ev_end(a);
    publish(a, -n);
    rp_poison((void *)(uintptr_t)(base + off), hi - (base + off));
}

/* Free everything; keep the first (bottom) chunk. Cost: O(chunks); each
 * released chunk may call madvise. */
void rp_arena_reset(rp_arena *a)
{
    if (!a || (a->magic != MAGIC_THREAD && a->magic != MAGIC_EXPLICIT)) {
        bad_arena(a, "rp_arena_reset");
        return;
    }
    if (!a->top)
        return;
    rp_rdesc *f = a->top;
    while (hdr(f)->prev)
        f = hdr(f)->prev;
    uint64_t hi = f == a->cur ? a->bump : hdr(f)->top;
    note_peak(a);
    ev_begin(a);
    int64_t n = release_above(a, f);
    hdr(f)->base_after = 0;
    a->base_used = 0;
    set_cur(a, f, hdr(f)->start);
    set_limit(a);
    ev_end(a);
    publish(a, -n);
    rp_poison((void *)(uintptr_t)hdr(f)->start, hi - hdr(f)->start);
}

/* Return every chunk, the first (holding the struct) last. Cost:
 * O(chunks); each released chunk may call madvise. */
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
    int64_t n = release_above(a, first);
    struct arena_pool *ap = apool(p);
    rp_sub_relaxed_u64(&ap->explicit_bytes, a->published);
    rp_sub_relaxed_u64(&ap->explicit_chunks, (uint64_t)n + 1);
    rp_sub_relaxed_u64(&ap->explicit_live, 1);
    rp_store_relaxed_u64(&a->magic, 0);
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
    ev_begin(a);
    release_above(a, NULL);
    rp_store_relaxed_u64(&a->magic, 0);
    a->base_used = 0;
    set_cur(a, NULL, 0);
    a->limit = 0;
    ev_end(a);
    a->peak = 0;
    a->nchunks = 0;
    a->chunk_bytes = 0;
}

/* ---- stats and checks -------------------------------------------------------------- */

/* Bytes handed out by one thread arena: bump - origin, read as a seqlock
 * reader (relaxed loads, fences; the owner never waits). An arena that stays
 * in chunk events through every try counts 0 for this snapshot, like any
 * other in-flight operation. Cost: O(1); a few loads and fences. */
static void sum_thread(rp_tstate *ts, void *arg)
{
    rp_arena *a = (rp_arena *)(void *)ts->arena;
    for (int tries = 0; tries < 16; tries++) {
        uint64_t s1 = rp_load_relaxed_u64(&a->seq);
        /* Fence: the loads below see at least what the owner published
         * with the even seq just read (pairs with ev_end's releases). */
        rp_fence_seq_cst();
        uint64_t o = rp_load_relaxed_u64(&a->origin);
        uint64_t b = rp_load_relaxed_u64(&a->bump);
        /* Fence: a bump or origin from a newer event makes the seq load
         * below see that event's odd seq (pairs with set_cur/ev_end). */
        rp_fence_seq_cst();
        uint64_t s2 = rp_load_relaxed_u64(&a->seq);
        if (s1 == s2 && !(s1 & 1)) {
            *(uint64_t *)arg += o ? b - o : 0;
            return;
        }
    }
}

/* st->arena_bytes: live sum over thread arenas plus the explicit arenas'
 * published bytes. Cost: O(threads) relaxed loads under the RCU read lock;
 * no lock, no allocation. */
void rpi_arena_stats(rp_pool *p, rp_stats *st)
{
    uint64_t sum = 0;
    rpi_threads_foreach(p, sum_thread, &sum);
    sum += rp_load_relaxed_u64(&apool(p)->explicit_bytes);
    st->arena_bytes = (size_t)sum;
}

struct check_ctx {
    rp_pool *p;
    uint64_t hwm;
    uint64_t chunks;   /* sum of thread arenas' chain lengths */
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

/* Validate one thread arena's chain and fields. Runs under the RCU read
 * lock (must not block): failures are recorded, reported later. Reads
 * hidden from TSan, every pointer range-checked. O(chunks). */
static void check_thread(rp_tstate *ts, void *arg)
{
    struct check_ctx *c = arg;
    rp_pool *p = c->p;
    rp_arena *a = (rp_arena *)(void *)ts->arena;
    if (rp_load_relaxed_u64(&a->magic) != MAGIC_THREAD)
        return;
    uint64_t bump = rp_load_relaxed_u64(&a->bump);
    uint64_t origin = rp_load_relaxed_u64(&a->origin);
    RP_HIDE_BEGIN();
    uint64_t start = a->start, end = a->end, base_used = a->base_used;
    rp_rdesc *top = a->top, *cur = a->cur, *b = NULL;
    uint64_t limit = a->limit, n = 0, bytes = 0, base_after = 0;
    uint64_t nchunks = a->nchunks, chunk_bytes = a->chunk_bytes;
    for (rp_rdesc *d = top; d; n++) {
        if (n > c->hwm || !desc_ok(c, d)) {
            CFAIL(c, a, "arena check: thread arena %p: chain link %p is not a "
                        "carved region descriptor", (void *)a, (void *)d);
            break;
        }
        uint32_t w = rp_load_relaxed_u32(&d->word);
        struct chunk *h = hdr(d);
        if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) != RK_ARENA ||
            h->magic != CHUNK_MAGIC || h->owner != a) {
            CFAIL(c, rpi_desc_base(p, d),
                  "arena check: thread arena %p: chunk %p has word %#x, magic %#x, "
                  "owner %p", (void *)a, rpi_desc_base(p, d), w, h->magic,
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
        CFAIL(c, a, "arena check: thread arena %p: chain has %lu chunks / %lu bytes, "
                    "arena says %lu / %lu", (void *)a, (unsigned long)n,
              (unsigned long)bytes, (unsigned long)nchunks, (unsigned long)chunk_bytes);
    else if (b != cur)
        CFAIL(c, a, "arena check: thread arena %p: bump chunk %p is not the newest "
                    "bumpable chunk %p", (void *)a, (void *)cur, (void *)b);
    else if (!cur && (bump || start || end || limit || base_used))
        CFAIL(c, a, "arena check: thread arena %p without chunks has state", (void *)a);
    else if (cur && (start != cur_start || end != chunk_base(p, cur) + rpi_desc_bytes(p, cur) ||
                     !(start <= bump && bump <= limit && limit <= end)))
        CFAIL(c, a, "arena check: thread arena %p: start %#lx <= bump %#lx <= limit %#lx "
                    "<= end %#lx fails (chunk %p)", (void *)a, (unsigned long)start,
              (unsigned long)bump, (unsigned long)limit, (unsigned long)end,
              rpi_desc_base(p, cur));
    else if (top && base_used != base_after)
        CFAIL(c, a, "arena check: thread arena %p: base_used %lu != top's base_after %lu",
              (void *)a, (unsigned long)base_used, (unsigned long)base_after);
    else if (origin != (cur ? start - base_used : 0))
        CFAIL(c, a, "arena check: thread arena %p: published origin %#lx != start - "
                    "base_used %#lx", (void *)a, (unsigned long)origin,
              (unsigned long)(cur ? start - base_used : 0));
}

/* Validate thread arenas' chains and fields, every arena region's header,
 * and the pool-wide region count (see the invariants above). Returns 0 or
 * -EFAULT after one RP_ERR_INVARIANT report. Exact only when quiescent.
 * Cost: O(threads + their chunks + carved granules / region size). */
int rpi_arena_check(rp_pool *p)
{
    struct check_ctx c = {.p = p, .hwm = rp_load_acquire_u64(&p->hwm)};
    rpi_threads_foreach(p, check_thread, &c);
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
    uint64_t expl = rp_load_relaxed_u64(&apool(p)->explicit_chunks);
    if (!c.msg[0] && regions != c.chunks + expl)
        CFAIL(&c, NULL, "arena check: %lu arena regions in use, but thread arenas "
                        "hold %lu and explicit arenas %lu", (unsigned long)regions,
              (unsigned long)c.chunks, (unsigned long)expl);
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
