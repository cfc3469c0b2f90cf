/* slab.c -- size-class object pools: rp_alloc, rp_calloc, rp_realloc,
 * rp_aligned_alloc, rp_free, rp_usable_size.
 *
 * Concept. Requests up to RP_OBJECT_MAX (32 KiB) are rounded up to one of 40
 * size classes (16, 32, 48, 64, then 4 per power of two up to 32 KiB) and
 * served from *slabs*: regions of kind RK_SLAB (rpi_region_get) cut into
 * equal objects, object 0 at the region base. Objects carry no header: the
 * class comes from the pointer's region descriptor (O(1) arithmetic), whose
 * 96-byte user area holds the slab's metadata (struct slab). Larger requests
 * go to the fallback heap first (up to heap_route, see large_alloc) or to a
 * region of their own (RK_LARGE). docs/OBJECTS.md has the tables and the
 * numbers.
 *
 * Who touches what.
 *  - Each (thread, pool) shard holds a struct tcache in its ts->slab blob:
 *    per class a free list of objects of its current slab (the "bin"), the
 *    current slab, a list of partial slabs and a list of full slabs, a few
 *    empty slabs kept for reuse, and up to RB_N open batches of remote
 *    frees (objects of other threads' slabs freed by this thread, not yet
 *    pushed). Only the owning thread touches a tcache, except the per-class
 *    net counters (owner stores them relaxed, rpi_slab_stats loads them
 *    relaxed), the empty-slab slots (eslot/ekept: a stealer -- budget
 *    squeeze, rp_purge, the purger -- may empty a slot with a CAS and
 *    release its slab; see slab_retire and rpi_slab_steal) and rp_check
 *    (hidden, quiescent).
 *  - A slab is owned by one tcache (s->owner = that thread's token: its
 *    thread pointer). Only the owner touches s->free (the local free list),
 *    s->used and the list links.
 *    Any thread reads s->owner, s->lim (relaxed) and the constant format
 *    fields (size, cap, divc, first, cls: written before any object of the
 *    slab is handed out, so a freer holding a pointer sees them through the
 *    user's own hand-off of the pointer; it reads them before it releases
 *    the object, see Sanitizers).
 *  - Frees by other threads go to the slab's remote list, whose head lives
 *    in the 64-bit word s->xword together with the list length and the
 *    ownership state; freers push with CAS (plain pools: a whole batch of
 *    up to 512 objects per CAS), the owner takes the whole list with one
 *    exchange. The same word records abandonment: when a thread exits, its
 *    partly used slabs go to a pool-wide lock-free stack per class
 *    (p->slab->ab[c]) from which other threads adopt them by CAS on the
 *    word (exactly one wins); the freer whose free makes an abandoned slab
 *    completely free marks it DEAD and the next holder releases it.
 *  - The fast paths (rp_alloc from a non-empty bin: 21 instructions;
 *    rp_free of an object of a current or partial slab the calling thread
 *    owns, not its last object out: 33, or 35 for a slab outside the
 *    counted set; rp_free into an open batch: 67)
 *    touch only the calling thread's tcache and slab metadata: no lock, no
 *    atomic read-modify-write, and (but for the batch) no call. They are
 *    compiled only without sanitizers and used only by tcaches that are
 *    not "slow" (hardened pool, or a TSan runtime present in the process).
 *    Owner words with bit 0 set (every slab of a slow tcache; full and
 *    empty slabs of any tcache) never match the fast free, so those frees
 *    take the general path, which does the list moves and the checks.
 *
 * Invariants (per slab; "bumped" = nbumped = slots ever handed out):
 *   lim == bumped * step                  (step = divc * size mod 2^64)
 *   used == bumped - |s->free|            (objects with users, in the bin
 *                                          list when current, in the remote
 *                                          list, in other threads' open
 *                                          batches: all counted in used)
 *   XW_COUNT(xword) == |remote list| <= used
 *   owned, not current, not empty-cached:  used > 0
 *   abandoned: owner == 0, XW_AUSED == used at abandonment,
 *              live objects == XW_AUSED - XW_COUNT > 0 (else DEAD)
 *   hardened:  popcount(bitmap) == used - |bin list| - XW_COUNT (hardened
 *              pools never batch)
 *   word 1 of an object == tag_key ^ its address  only while it is the
 *              head of an open batch (the last object a thread freed into
 *              that slab); cleared when another joins or the batch is pushed
 * Per class c:
 *   objects in use == ab[c].net + sum over live shards of bin[c].net
 *                     + sum over their counted sets' slabs of class c of
 *                     (used - ubase)
 *   (allocations count +1 in the allocating thread's shard, frees -1 in the
 *   freeing thread's shard, a fast free into a slab of its counted set by
 *   lowering used alone; a detaching shard adds its nets to ab[c].net)
 *   counted set: cset[i] == s  <=>  s->cidx == i + 1  =>  s current or
 *              partial, owner word token | OWNER_CSET
 *
 * Lock order: slab.c takes no lock of its own. It calls the region layer
 * (lock-free except carving), the heap (its own spinlock, never held on
 * return) and the thread registry (rpi_tstate_get; threads_lock on shard
 * creation). rpi_slab_thread_exit runs with registry/threads locks as
 * thread.c holds them and takes none.
 *
 * Sanitizers (see atomic.h). TSan: every free does rp_hb_release(obj)
 * before the object is linked anywhere (a batched free: when the user frees,
 * not when the batch is pushed), every allocation rp_hb_acquire(obj) after
 * it is unlinked; a remote freer reads the slab's plain fields before that
 * release only (a batch push takes the format from the class table);
 * remote-list and abandoned-stack operations, link and tag writes into free
 * objects and every read of a link or tag run hidden (RP_HIDE_*), one
 * hidden section per free; abandonment hands the slab's metadata over with
 * rp_hb_release(s)/rp_hb_acquire(s); before a slab is reformatted or
 * released, its owner acquires every slot (the last free of each slot
 * happens-before the memory's next use). ASan: free objects and never-used
 * slots are poisoned; the link and tag accessors opt out of ASan.
 */
#include "internal.h"

#include <sched.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Fast paths only in plain builds: sanitizer builds take the general path,
 * which carries the annotations. */
#if RP_TSAN || RP_ASAN
#define RP_FAST 0
#else
#define RP_FAST 1
#endif

/* rp_alloc and rp_free start on a cache line: their fast paths (about 80
 * and 100 bytes) span the fewest instruction-fetch blocks, and unrelated
 * code changes no longer shift them, so that timings of two builds are
 * not confounded by where the hot paths happen to fall. */
#define RP_HOT_ALIGN __attribute__((aligned(64)))

#if RP_ASAN
#define NOASAN __attribute__((no_sanitize("address"), noinline))
#else
#define NOASAN
#endif

/* ======================================================================== */
/* Size classes.                                                            */

#define NCLS 40
#define MIN_OBJS 8          /* objects per slab when region_max allows */
#define EMPTY_MAX 4         /* empty slabs a thread keeps for reuse, at least */
#define EMPTY_BYTES ((size_t)2 << 20) /* ... and up to this many bytes of them
                                        when the pool has a purger */
#define ESLOTS 32           /* ... in at most this many slots */
#define FULL_SCAN 16        /* full slabs polled for remote frees per refill */
#define HEAP_ROUTE_MAX ((size_t)1 << 20) /* mid sizes: heap first up to this */

static const uint32_t cls_bytes[NCLS] = {
    16,    32,    48,    64,    80,    96,    112,   128,   160,   192,
    224,   256,   320,   384,   448,   512,   640,   768,   896,   1024,
    1280,  1536,  1792,  2048,  2560,  3072,  3584,  4096,  5120,  6144,
    7168,  8192,  10240, 12288, 14336, 16384, 20480, 24576, 28672, 32768};

/* Class of 64 < s <= 32 KiB: s in (2^k, 2^(k+1)] falls in the
 * ceil((s - 2^k) / 2^(k-2))-th quarter step. O(1). */
static inline unsigned class_big(size_t s)
{
    size_t w = s - 1;
    unsigned k = rp_log2(w);
    return 4 * k - 20 + (unsigned)((w >> (k - 2)) & 3);
}

/* Class of every size, indexed by (size + 15) / 16 (class edges are
 * multiples of 16), stored as the byte offset of the class's bin in a
 * tcache (class * sizeof(struct bin)): one load and one add on the fast
 * path. Filled once per process (slab_once) before any pool exists;
 * read-only afterwards. */
static uint16_t cls_lut[RP_OBJECT_MAX / 16 + 1];
#define BIN_BYTES 16u /* sizeof(struct bin), asserted below */

_Static_assert(RP_OBJECT_MAX == 32768, "the class table ends at RP_OBJECT_MAX");

/* Fill cls_lut. O(RP_OBJECT_MAX / 16), once per process. */
static void lut_fill(void)
{
    for (size_t i = 0; i <= RP_OBJECT_MAX / 16; i++) {
        size_t s = i * 16; /* the largest size with this index */
        unsigned c = s <= 64 ? (s ? (unsigned)(s / 16 - 1) : 0) : class_big(s);
        cls_lut[i] = (uint16_t)(c * BIN_BYTES);
    }
}

/* Class of 0 <= s <= RP_OBJECT_MAX (0 counts as 1). O(1). */
static inline unsigned class_of(size_t s)
{
    return cls_lut[(s + 15) >> 4] / BIN_BYTES;
}

/* ======================================================================== */
/* Data.                                                                    */

/* The remote word: | state:4 | aused:20 | count:20 | head:20 |.
 * head = index + 1 of the last object pushed (0: empty); count = objects on
 * the remote list; aused = objects out when the slab was abandoned. */
#define XW_BITS 20
#define XW_MASK (((uint64_t)1 << XW_BITS) - 1)
#define XW_HEAD(w) ((uint32_t)((w) & XW_MASK))
#define XW_COUNT(w) ((uint32_t)(((w) >> XW_BITS) & XW_MASK))
#define XW_AUSED(w) ((uint32_t)(((w) >> (2 * XW_BITS)) & XW_MASK))
#define XW_STATE(w) ((unsigned)((w) >> 60))
#define XW_MAKE(h, x, a, st)                                                  \
    ((uint64_t)(h) | (uint64_t)(x) << XW_BITS | (uint64_t)(a) << (2 * XW_BITS) | \
     (uint64_t)(st) << 60)
enum { XS_OWNED = 0, XS_ABANDONED = 1, XS_DEAD = 2 };
#define CAP_MAX ((uint32_t)XW_MASK - 1) /* head = index + 1 must fit */

/* Where an owned slab sits. */
enum { W_NONE = 0, W_CUR, W_PARTIAL, W_FULL, W_EMPTY, W_ABANDONED };

#define SLAB_QUARANTINE 1u /* a corrupt link was found: never reused */
#define OWNER_SLOW ((uint64_t)1) /* owner word bit 0: fast free never matches */
#define OWNER_CSET ((uint64_t)2) /* owner word bit 1: the slab is in its owner's
                                    counted set ("Counted set" below) */
#define CSET_N 16u               /* slabs per tcache in the counted set */

/* Slab metadata, in the region descriptor's user area (descriptor bytes
 * 32..127). The first cache line (descriptor bytes 0..63) holds all that
 * the batched remote free reads (owner, divc, lim, xword), none of which
 * the owner writes on its hot paths; the second holds the owner's hot
 * fields (free, used), so batched remote frees and the owner's local frees
 * do not share a line.
 *
 * Slot arithmetic. divc = ceil(2^64 / size), plus 1 when size is a power
 * of two, and step = divc * size mod 2^64 (0 < step <= size). For a byte
 * offset n < 2^32: n * divc mod 2^64 is k * step when n = k * size, and at
 * least divc otherwise; the high half of the 128-bit product is k. So one
 * multiplication and one compare against lim = bumped * step (< divc)
 * check "n is the start of a slot that was handed out at least once". */
struct slab {
    uint64_t owner;     /* owner token (| OWNER_SLOW or OWNER_CSET), 0 =
                           none; owner writes relaxed, any thread reads
                           relaxed */
    uint64_t divc;      /* see above (constant while formatted) */
    uint64_t lim;       /* bumped * step; owner writes relaxed, freers read
                           relaxed */
    uint64_t xword;     /* remote list + state; CAS by any thread */
    char *first;        /* object 0 == the region base */
    void *free;         /* local free list (owner) */
    int32_t used;       /* see the invariants (owner) */
    union {
        uint32_t bm_off; /* hardened: bitmap offset from first */
        int32_t ubase;   /* in the counted set (never hardened): used + the
                            fast frees not yet in net (owner) */
    };
    uint64_t *net;      /* owner's bin[cls].net (owner) */
    uint32_t size;      /* object bytes */
    uint32_t cap;       /* objects */
    union {
        struct {
            struct slab *next, *prev; /* owner's circular lists / empty cache */
        } l;
        ck_stack_entry_t alink;       /* abandoned stack (while abandoned) */
    } u;
    uint8_t cls;
    uint8_t where;      /* W_* (owner) */
    uint8_t flags;      /* SLAB_* (owner) */
    uint8_t cidx;       /* counted-set slot + 1, 0: not in the set (owner) */
    uint32_t nbumped;   /* slots handed out at least once: lim / step (owner) */
};
_Static_assert(sizeof(struct slab) <= RP_DESC_USER_BYTES,
               "slab metadata fits the descriptor's user area");
_Static_assert(offsetof(rp_rdesc, user) + offsetof(struct slab, xword) < RP_CACHELINE &&
               offsetof(rp_rdesc, user) + offsetof(struct slab, free) >= RP_CACHELINE,
               "remote-freer fields and owner-hot fields on different lines");

/* Large object bookkeeping (RK_LARGE), in the descriptor's user area. */
struct large {
    uint64_t off;       /* object start - region base (alignment) */
};
_Static_assert(sizeof(struct large) <= RP_DESC_USER_BYTES, "large header fits");

/* Per-thread, per-class hot state: the fast alloc path touches only this. */
struct bin {
    void *free;         /* free objects of the current slab (owner) */
    uint64_t net;       /* allocations - frees by this thread (two's
                           complement); owner stores relaxed, stats load */
};
_Static_assert(sizeof(struct bin) == BIN_BYTES, "the class table holds bin offsets");

struct cold {
    struct slab *cur;     /* slab whose objects fill bin.free */
    struct slab *partial; /* circular list: owned slabs with free objects */
    struct slab *full;    /* circular list: owned slabs without local free
                             objects (remote frees may be pending) */
};

/* An open batch of remote frees: objects of one slab owned by another
 * thread, freed by this thread and not yet pushed to the slab's remote list
 * (see "Remote-free batches" below). Only the tcache's thread touches it
 * (and rp_check, hidden, quiescent). */
struct rbuf {
    struct slab *s;     /* slab of the batch; NULL: no batch open */
    void *head;         /* chain of freed objects, last freed first, linked
                           through their first word */
    void *tail;         /* first object freed: the chain's end (link NULL) */
    uint32_t left;      /* frees until the batch is pushed */
    uint32_t cls;       /* s->cls (this thread's bin[cls].net counts) */
};
_Static_assert(sizeof(struct rbuf) == 32, "a power of two: one shift to index");

#define RB_N 8          /* open batches per tcache, by slab granule index */

struct tcache {
    struct bin bin[NCLS];
    struct cold cold[NCLS];
    struct rbuf rb[RB_N]; /* open remote-free batches */
    uint64_t tagkey;      /* pool-wide: word 1 of a batched object is
                             tagkey ^ its address */
    uint64_t gmask;       /* region_min_bytes - 1: offset in a granule */
    /* Empty slabs kept for reuse (any class), one per slot ("Empty slabs"
     * below). eslot[i]: atomic. Only the owner fills a slot (release store,
     * after the slab's fields and ekept[i]); the owner empties one with an
     * exchange, a stealer (budget squeeze, rp_purge, the purger's expiry)
     * with a CAS: whoever empties a slot owns the slab. ekept[i]: purger
     * tick when kept (relaxed; stealers read it). ecls/esize and emask are
     * the owner's: the class and bytes it put in slot i, and the slots it
     * filled and has not emptied itself; a slot in emask found NULL was
     * stolen (empty_resync forgets it). Count and bytes kept derive from
     * emask and esize (empty_fits). */
    struct slab *eslot[ESLOTS];
    uint32_t ekept[ESLOTS];
    uint32_t esize[ESLOTS];
    uint8_t ecls[ESLOTS];
    uint32_t emask;
    uint64_t ecap;        /* keep empty slabs up to this many bytes (or
                             EMPTY_MAX of them) */
    uint32_t inited;
    uint64_t token;       /* owner word of this tcache's slabs */
    uint32_t slow;        /* 1: no fast paths (hardened, TSan runtime) */
    uint32_t cmask;       /* counted-set slots in use (owner) */
    /* The counted set ("Counted set" below): cset[i] is the slab whose
     * cidx is i + 1; the owner stores relaxed, stats and checks load. */
    struct slab *cset[CSET_N];
};
_Static_assert(sizeof(struct tcache) <= RP_TS_SLAB_BYTES,
               "the tcache fits the shard's slab blob");
_Static_assert(offsetof(struct tcache, bin) == 0, "tlc.bins is the tcache");
_Static_assert((RB_N & (RB_N - 1)) == 0, "RB_N is a power of two");
_Static_assert(ESLOTS == 32, "emask has one bit per slot: empty_fits reads ~0u as full");
_Static_assert(CSET_N <= 32 && CSET_N < 255, "cmask and cidx (slot + 1) hold the set");
_Static_assert(_Alignof(struct tcache) <= RP_CACHELINE, "blob alignment suffices");

struct cls_info {
    uint32_t size;       /* object bytes */
    uint32_t cap;        /* objects per slab; 0: class not served by slabs */
    uint64_t divc;       /* see struct slab */
    size_t slab_bytes;   /* region bytes of one slab */
    uint32_t bm_off;     /* hardened: bitmap offset from the slab base */
    uint32_t batch;      /* slots linked per bump extension: 4 KiB's
                            worth, or up to 64 within 16 KiB, at least
                            MIN_OBJS */
    uint32_t rbmax;      /* remote frees per batch (1: never batched) */
    uint32_t spare;
};

/* Abandoned slabs of one class. */
struct ab_cls {
    ck_stack_t stack __attribute__((aligned(16)));
    uint64_t n;          /* slabs on the stack or held by a sweeper; relaxed */
    uint64_t net;        /* nets of detached shards (two's complement); relaxed */
} __attribute__((aligned(RP_CACHELINE)));

struct slab_pool {
    struct ab_cls ab[NCLS];
    struct cls_info cls[NCLS];
    uint64_t secret;     /* hardened link key; batch tag key */
    size_t heap_route;   /* largest size routed to the heap first (0: none) */
    size_t base_align;   /* every region base is aligned to this */
};

/* Accessors between the pool, descriptors, slabs and shards: O(1). */
static inline struct slab_pool *sp_of(const rp_pool *p)
{
    return (struct slab_pool *)p->slab;
}

static inline struct slab *slab_of(rp_rdesc *d)
{
    return (struct slab *)(void *)d->user.bytes;
}

static inline rp_rdesc *desc_of(struct slab *s)
{
    return (rp_rdesc *)(void *)((char *)s - offsetof(rp_rdesc, user));
}

static inline struct tcache *tc_of_ts(rp_tstate *ts)
{
    return (struct tcache *)(void *)ts->slab;
}

/* The tcache owning a slab, from its net pointer. O(1). */
static inline struct tcache *tc_of_slab(struct slab *s)
{
    return (struct tcache *)(void *)((char *)s->net - offsetof(struct tcache, bin) -
                                     (size_t)s->cls * sizeof(struct bin) -
                                     offsetof(struct bin, net));
}

/* --*u > 0 for an owner-only count: on x86-64 one `sub` to memory and the
 * branch on its flags (gcc keeps the old value in a register otherwise:
 * three more instructions on the fast free). O(1). */
#if RP_FAST
static inline bool dec_positive(int32_t *u)
{
#if defined(__x86_64__) && defined(__GCC_ASM_FLAG_OUTPUTS__)
    bool gt;
    __asm__("subl $1, %0" : "+m"(*u), "=@ccg"(gt));
    return gt;
#else
    return --*u > 0;
#endif
}
#endif

/* Update of a counter that only its owner thread writes and stats reads
 * with relaxed loads. TSan builds: a relaxed store. Other builds: a plain
 * read-modify-write, which gcc emits as one aligned `add` to memory (a
 * relaxed store through ck costs three instructions on the fast paths); a
 * single writer and an aligned 8-byte word make every value a reader can
 * load one the counter held. O(1). */
static inline void owner_add(uint64_t *c, uint64_t v)
{
#if RP_TSAN
    rp_store_relaxed_u64(c, rp_load_relaxed_u64(c) + v);
#else
    *c += v;
#endif
}

/* Counted set. A local fast free into a slab of its owner's counted set
 * updates that slab's line alone (free list, used), not bin[c].net on the
 * tcache's line: this thread's frees into s that net does not count yet
 * are ubase - used. Up to CSET_N current or partial slabs of a tcache that
 * is not slow are in the set (owner word token | OWNER_CSET, cidx = slot +
 * 1, cset[slot] = s); the others (owner word token) count every fast free
 * in net. Every other change of a set slab's used folds the gap into net
 * and sets ubase = used (used_add), so the gap holds only fast frees since
 * then, fewer than cap; a slab leaving the set (to
 * the full list, the empty cache, abandonment, release) first folds the
 * gap into net (cset_leave). Stats and checks add used - ubase of every
 * slab in the set to its class's count: exact at quiescence. Single writer
 * (the owner) for used, ubase, cset, as for net (owner_add). See
 * OBJECTS.md "Counted set" for why and what it measured. */

/* Owner: move a set slab's uncounted frees into net (used_add,
 * cset_leave). O(1). */
static inline void cset_fold(struct slab *s)
{
    owner_add(s->net, (uint64_t)(int64_t)(s->used - s->ubase));
    s->ubase = s->used;
}

/* Owner: used += d; a set slab's uncounted frees are folded into net
 * first. So they are only the fast frees since the slab's last used
 * change on a slow path: used only falls between two such changes and
 * stays positive, so there are fewer than cap of them (the bound cset_add
 * relies on; without the fold a slab that stays current would pile up
 * frees without bound and wrap ubase). O(1). */
static inline void used_add(struct slab *s, int32_t d)
{
    if (s->cidx) {
        cset_fold(s);
        s->used += d;
        s->ubase = s->used;
    } else {
        s->used += d;
    }
}

/* Owner: take s out of the counted set, its uncounted frees into net.
 * No-op for a slab not in the set. O(1). */
static void cset_leave(struct slab *s)
{
    if (!s->cidx)
        return;
    struct tcache *tc = tc_of_slab(s);
    unsigned i = s->cidx - 1u;
    cset_fold(s);
    /* After the fold: a reader that finds the slot empty reads the folded
     * net (cset_add's acquire load, then the nets): counted once or
     * twice, never zero times. */
    rp_store_release_ptr((void **)&tc->cset[i], NULL);
    tc->cmask &= ~(1u << i);
    s->cidx = 0;
}

/* Owner: s (owned, about to be current or partial) takes fast frees: into
 * the counted set if it is there or a slot is free, else counted per free
 * in net. O(1). */
static void owner_fast(struct tcache *tc, struct slab *s)
{
    if (!s->cidx && !tc->slow && tc->cmask != (uint32_t)((1ull << CSET_N) - 1)) {
        unsigned i = (unsigned)__builtin_ctz(~tc->cmask);
        tc->cmask |= 1u << i;
        s->cidx = (uint8_t)(i + 1);
        s->ubase = s->used;
        rp_store_relaxed_ptr((void **)&tc->cset[i], s);
    }
    rp_store_relaxed_u64(&s->owner, tc->token | (s->cidx ? OWNER_CSET : 0));
}

/* ======================================================================== */
/* Thread tokens and the fast-path cache.                                   */

static pthread_once_t slab_once_ctl = PTHREAD_ONCE_INIT;

/* 64 random bits for the hardened link key. O(1): one getentropy call. */
static uint64_t random64(void)
{
    uint64_t v = 0;
    if (getentropy(&v, sizeof v) != 0 || v == 0) {
        /* No entropy source: addresses and time, mixed (splitmix64). */
        v = (uint64_t)(uintptr_t)&v ^ (rpi_now_ms() << 17) ^ (uint64_t)getpid();
        v += 0x9e3779b97f4a7c15ull;
        v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
        v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
        v ^= v >> 31;
    }
    return v;
}

/* Process-wide set-up (pthread_once from rpi_slab_init). O(lut_fill). */
static void slab_once(void)
{
    lut_fill();
}

/* This thread's token: the thread pointer (the address of its control
 * block: unique among live threads, 64-byte aligned, never 0), one load of
 * %fs:0. No other user of a descriptor's user area can hold such a value
 * there (arena.c keeps a descriptor pointer or NULL at offset 0; region.c
 * zeroes the area when a region is handed out), and bit 0 clear keeps it
 * distinct from a slow owner word. O(1). */
static inline uint64_t thread_token(void)
{
    return (uint64_t)(uintptr_t)__builtin_thread_pointer();
}

#if RP_FAST
/* One-entry cache of the last pool used by rp_alloc on this thread, keyed
 * by the pool's id (unique in the process, never reused, never 0), so a new
 * pool created at a destroyed pool's address never matches. initial-exec:
 * no __tls_get_addr on the fast path (the library is loaded with the
 * program or preloaded). Reset by rpi_slab_thread_exit on this thread. */
struct tlc {
    uint64_t id;
    char *bins;          /* that pool's tcache bins (byte-addressed) */
};
static __thread struct tlc tlc __attribute__((tls_model("initial-exec")));

/* The tcache whose bins tlc names (the bins are its first member). O(1). */
static inline struct tcache *tlc_tcache(void)
{
    return (struct tcache *)(void *)(tlc.bins - offsetof(struct tcache, bin));
}
#endif

/* ======================================================================== */
/* Free-list links (the first word of a free object).                       */

/* Raw accessors: ASan does not check them (free objects are poisoned), TSan
 * does not see the reads (a link may have been written by a remote freer;
 * the object's rp_hb_acquire comes after it is unlinked). All link helpers
 * below are O(1). */
NOASAN static void *raw_load(const void *o)
{
    return *(void *const *)o;
}

NOASAN static void raw_store(void *o, void *v)
{
    *(void **)o = v;
}

/* Word 1 of a free object (every class holds at least two words): the tag
 * of a batched remote free (see "Remote-free batches"). Same rules as the
 * link accessors. may_alias: the object's memory was the user's. */
typedef uint64_t __attribute__((may_alias)) rp_word;

NOASAN static uint64_t word1_load(const void *o)
{
    return ((const rp_word *)o)[1];
}

NOASAN static void word1_store(void *o, uint64_t v)
{
    ((rp_word *)o)[1] = v;
}

static inline void *link_raw_get(const void *o)
{
    RP_HIDE_BEGIN();
    void *v = raw_load(o);
    RP_HIDE_END();
    return v;
}

/* Hardened links: next ^ secret ^ (address of the link >> 12). */
static inline uint64_t link_key(const rp_pool *p, const void *at)
{
    return sp_of(p)->secret ^ ((uint64_t)(uintptr_t)at >> 12);
}

static inline void *link_get(const rp_pool *p, const void *o)
{
    uint64_t v = (uint64_t)(uintptr_t)link_raw_get(o);
    if (p->cfg.hardened)
        v ^= link_key(p, o);
    return (void *)(uintptr_t)v;
}

static inline void link_set(const rp_pool *p, void *o, void *next)
{
    uint64_t v = (uint64_t)(uintptr_t)next;
    if (p->cfg.hardened)
        v ^= link_key(p, o);
    raw_store(o, (void *)(uintptr_t)v);
}

/* Index of the slot at byte offset n (n < 2^32) for multiplier divc. O(1). */
static inline uint32_t idx_of(uint64_t n, uint64_t divc)
{
    return (uint32_t)(((unsigned __int128)n * divc) >> 64);
}

/* Index of the slot of s at byte offset n (n < 2^32). O(1). */
static inline uint32_t slot_index(const struct slab *s, uint64_t n)
{
    return idx_of(n, s->divc);
}

/* The multiplier of a class: ceil(2^64 / size), + 1 for powers of two (so
 * that step = divc * size mod 2^64 is never 0; see struct slab). O(1). */
static inline uint64_t divc_of(uint32_t size)
{
    return UINT64_MAX / size + 1 + (rp_is_pow2(size) ? 1 : 0);
}

/* step of s: lim grows by it per slot handed out. O(1). */
static inline uint64_t step_of(const struct slab *s)
{
    return s->divc * s->size;
}

/* Slots handed out at least once (owner, or rp_check). O(1). */
static inline uint32_t bumped(const struct slab *s)
{
    return s->nbumped;
}

/* Address of slot i. O(1). */
static inline void *slot(const struct slab *s, uint32_t i)
{
    return s->first + (size_t)i * s->size;
}

/* Byte offset n (any value) is the start of a slot of s handed out at least
 * once. Below 2^32 the slot arithmetic of struct slab holds (k * step never
 * wraps, and a non-multiple gives at least divc > lim). O(1). */
static inline bool slot_ok(const struct slab *s, uint64_t n)
{
    return (n >> 32) == 0 && n * s->divc < rp_load_relaxed_u64(&s->lim);
}

/* A link read from slab s may point only at a handed-out slot of s. O(1). */
static inline bool link_ok(const struct slab *s, const void *next)
{
    return next == NULL || slot_ok(s, (uint64_t)((uintptr_t)next - (uintptr_t)s->first));
}

/* Read the link of o in slab s. A hardened pool validates it: a link out
 * of its slab is reported (RP_ERR_CORRUPT), the slab is quarantined (it is
 * never reused, so the damaged list is never followed again) and NULL is
 * returned. O(1). */
static void *link_next(rp_pool *p, struct slab *s, const void *o)
{
    void *next = link_get(p, o);
    if (RP_UNLIKELY(p->cfg.hardened && !link_ok(s, next))) {
        s->flags |= SLAB_QUARANTINE;
        rpi_report(p, RP_ERR_CORRUPT, o,
                   "free-list link of object %p in the %u-byte slab at %p decodes to %p, "
                   "outside its slab (overwritten after free?)",
                   o, s->size, (void *)s->first, next);
        return NULL;
    }
    return next;
}

/* ======================================================================== */
/* Hardened allocation bitmap (1 = handed to the user), at the slab's end.  */

/* The bitmap word of slot i. O(1). */
static inline uint64_t *bm_word(const struct slab *s, uint32_t i)
{
    return (uint64_t *)(void *)(s->first + s->bm_off) + (i >> 6);
}

/* Set (set = true) or clear bit i; returns the bit's previous value.
 * Relaxed CAS: the bitmap publishes nothing (objects change hands through
 * the free lists and their own TSan annotations). O(1) amortized. */
static bool bm_update(const struct slab *s, uint32_t i, bool set)
{
    uint64_t *w = bm_word(s, i), bit = (uint64_t)1 << (i & 63);
    uint64_t cur = rp_load_relaxed_u64(w), next;
    do {
        next = set ? cur | bit : cur & ~bit;
        /* CAS loop on one bitmap word; pairs with nothing. */
    } while (!rp_cas_relaxed_u64(w, &cur, next));
    return (cur & bit) != 0;
}

/* Bitmap bytes for cap slots. O(1). */
static inline size_t bm_bytes(uint32_t cap)
{
    return ((size_t)cap + 63) / 64 * 8;
}

/* ======================================================================== */
/* Owner lists (circular, doubly linked; owner only). Each operation O(1).  */

static void list_add(struct slab **head, struct slab *s)
{
    if (!*head) {
        s->u.l.next = s->u.l.prev = s;
        *head = s;
        return;
    }
    struct slab *h = *head;
    s->u.l.next = h;
    s->u.l.prev = h->u.l.prev;
    h->u.l.prev->u.l.next = s;
    h->u.l.prev = s;
}

static void list_del(struct slab **head, struct slab *s)
{
    if (s->u.l.next == s) {
        *head = NULL;
    } else {
        s->u.l.prev->u.l.next = s->u.l.next;
        s->u.l.next->u.l.prev = s->u.l.prev;
        if (*head == s)
            *head = s->u.l.next;
    }
    s->u.l.next = s->u.l.prev = NULL;
}

static struct slab *list_pop(struct slab **head)
{
    struct slab *s = *head;
    if (s)
        list_del(head, s);
    return s;
}

/* ======================================================================== */
/* Slab life cycle.                                                         */

/* TSan: every slot's last free happens-before the memory's next use. Only
 * when a TSan runtime is present. O(slots). */
static void acquire_slots(struct slab *s)
{
    if (!__tsan_acquire)
        return;
    uint32_t n = bumped(s);
    for (uint32_t i = 0; i < n; i++)
        rp_hb_acquire(slot(s, i));
}

/* Format the region of d as an empty slab of class c owned by tc.
 * O(1) (hardened: O(bitmap)). */
static struct slab *slab_format(rp_pool *p, struct tcache *tc, rp_rdesc *d, unsigned c)
{
    const struct cls_info *ci = &sp_of(p)->cls[c];
    struct slab *s = slab_of(d);
    char *base = rpi_desc_base(p, d);
    memset(s, 0, sizeof *s);
    s->first = base;
    s->size = ci->size;
    s->cap = ci->cap;
    s->divc = ci->divc;
    if (p->cfg.hardened) /* the word is ubase otherwise ("Counted set") */
        s->bm_off = ci->bm_off;
    s->cls = (uint8_t)c;
    s->net = &tc->bin[c].net;
    if (p->cfg.hardened) {
        rp_unpoison(base + ci->bm_off, bm_bytes(ci->cap));
        memset(base + ci->bm_off, 0, bm_bytes(ci->cap));
    }
    rp_poison(base, (size_t)ci->cap * ci->size);
    rp_store_relaxed_u64(&s->owner, tc->token);
    return s;
}

/* Give a completely free slab back to the region pool. The owner word is
 * cleared first: a released region's user area never matches a token (the
 * fast free relies on it). O(1), TSan: O(slots); may call madvise. */
static void slab_release(rp_pool *p, struct slab *s)
{
    cset_leave(s);
    acquire_slots(s);
    rp_store_relaxed_u64(&s->owner, 0);
    s->where = W_NONE;
    rpi_region_put(p, desc_of(s));
}

/* A new slab for class c from the region pool; NULL + errno on failure.
 * O(1) on region reuse; may call the OS. */
static struct slab *slab_new(rp_pool *p, struct tcache *tc, unsigned c)
{
    rp_rdesc *d = rpi_region_get(p, sp_of(p)->cls[c].slab_bytes, RK_SLAB);
    return d ? slab_format(p, tc, d, c) : NULL;
}

/* The local list of s (used == 0) starts like a list in address order
 * (slot 0, then slot 1), as the frees of a batch in reverse allocation
 * order leave it: a heuristic, either answer is correct. O(1). */
static inline bool in_order(rp_pool *p, struct slab *s)
{
    return s->free == s->first && s->nbumped > 1 &&
           link_get(p, s->first) == s->first + s->size;
}

/* Owner, state OWNED: take s's whole remote list; returns the word it
 * held (count 0: nothing taken). Exchanges only when something is there:
 * a locked instruction waits for the store buffer (the frees just before)
 * to drain, and a push after the load is no later than a push after an
 * exchange would be. The exchange pairs with the freers' CAS (remote_push,
 * rb_flush): their link writes are visible after it. O(1). */
static inline uint64_t remote_take(struct slab *s)
{
    RP_HIDE_BEGIN();
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    if (XW_COUNT(w) != 0)
        w = rp_swap_u64(&s->xword, XW_MAKE(0, 0, 0, XS_OWNED));
    RP_HIDE_END();
    return w;
}

/* Turn s (owned, used == 0: every handed-out slot is on its local list)
 * back into a never-used slab of its class: its slots are linked again in
 * address order, a batch at a time, as the bin runs dry (extend). A list
 * freed in random order would hand its objects out in that order, each
 * allocation's load of the next link a cache miss; the linking pass of
 * extend streams, and its lines are in L1 when the user writes them. Every
 * object came back (used == 0), so anything on the remote list is a double
 * free by another thread: dropped and reported, or it would be handed out
 * twice. O(1) (TSan: O(slots)). */
static void rewind_slab(rp_pool *p, struct slab *s)
{
    uint64_t w = remote_take(s);
    if (XW_COUNT(w)) {
        owner_add(s->net, XW_COUNT(w)); /* their frees were counted */
        rpi_report(p, RP_ERR_NOT_LIVE, slot(s, XW_HEAD(w) - 1),
                   "rp_free(%p): object is not live (double free?): freed by "
                   "another thread after its slab had no object out "
                   "(%u such frees dropped)",
                   slot(s, XW_HEAD(w) - 1), XW_COUNT(w));
    }
    acquire_slots(s); /* TSan: every free happens-before the slots' reuse */
    s->free = NULL;
    s->nbumped = 0;
    rp_store_relaxed_u64(&s->lim, 0);
}

/* Owner: take the slab of slot i, or NULL if a stealer took it first (then
 * the slot is only forgotten). The exchange pairs with the release store
 * that filled the slot and races with a stealer's CAS: one of them wins. */
static inline struct slab *empty_claim(struct tcache *tc, unsigned i)
{
    tc->emask &= ~(1u << i);
    return rp_swap_ptr((void **)&tc->eslot[i], NULL);
}

/* Owner: forget the slots stealers emptied. O(ESLOTS). */
static void empty_resync(struct tcache *tc)
{
    for (uint32_t m = tc->emask; m; m &= m - 1) {
        unsigned i = (unsigned)__builtin_ctz(m);
        if (!rp_load_relaxed_ptr((void *const *)&tc->eslot[i]))
            tc->emask &= ~(1u << i);
    }
}

/* Owner: may a slab of `bytes` join the cache? A free slot, and fewer than
 * EMPTY_MAX slabs kept or the kept bytes within cap (slots stolen but not
 * yet forgotten still count). O(ESLOTS). */
static bool empty_fits(const struct tcache *tc, uint32_t bytes, uint64_t cap)
{
    if (tc->emask == ~0u)
        return false;
    if (__builtin_popcount(tc->emask) < EMPTY_MAX)
        return true;
    uint64_t kept = bytes;
    for (uint32_t m = tc->emask; m; m &= m - 1)
        kept += tc->esize[__builtin_ctz(m)];
    return kept <= cap;
}

/* An empty slab of tc's cache for class c: one of class c (rewound unless
 * its list is already in address order), else one of the same region size
 * reformatted for c; NULL if none. O(ESLOTS) (reformat: O(1), TSan
 * O(slots)). */
static struct slab *empty_take(rp_pool *p, struct tcache *tc, unsigned c)
{
    size_t want = sp_of(p)->cls[c].slab_bytes;
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t m = tc->emask; m; m &= m - 1) {
            unsigned i = (unsigned)__builtin_ctz(m);
            if (pass == 0 ? tc->ecls[i] != c : tc->esize[i] != want)
                continue;
            struct slab *s = empty_claim(tc, i);
            if (!s)
                continue; /* stolen */
            if (s->cls == c) {
                if (!in_order(p, s))
                    rewind_slab(p, s);
                s->where = W_NONE; /* the caller makes it current, sets the owner */
                return s;
            }
            acquire_slots(s); /* the memory is cut into other objects */
            return slab_format(p, tc, desc_of(s), c);
        }
    }
    return NULL;
}

/* s (owned by tc, used == 0, on no list, not current) became empty: keep it
 * for reuse or give it back. Up to EMPTY_MAX slabs, or up to ecap bytes
 * while the pool has a purger that expires them (a fork child has none).
 * O(1); O(ESLOTS) when the cache looks full (resync); release: see
 * slab_release. */
static void slab_retire(rp_pool *p, struct tcache *tc, struct slab *s)
{
    cset_leave(s);
    if (s->flags & SLAB_QUARANTINE)
        return; /* damaged: never reused nor released (it stays allocated) */
    uint32_t bytes = (uint32_t)rpi_desc_bytes(p, desc_of(s));
    uint64_t cap = rp_load_relaxed_u32(&p->rc_on) ? tc->ecap : 0;
    if (!empty_fits(tc, bytes, cap)) {
        empty_resync(tc);
        if (!empty_fits(tc, bytes, cap)) {
            slab_release(p, s);
            return;
        }
    }
    unsigned i = (unsigned)__builtin_ctz(~tc->emask);
    /* Slow owner word: a stray free into an empty slab takes the general
     * path, which reports it. */
    rp_store_relaxed_u64(&s->owner, tc->token | OWNER_SLOW);
    s->where = W_EMPTY;
    tc->ecls[i] = (uint8_t)s->cls;
    tc->esize[i] = bytes;
    tc->emask |= 1u << i;
    rp_store_relaxed_u32(&tc->ekept[i], (uint32_t)rp_load_relaxed_u64(&p->rc_epoch));
    /* Publishes the slab's state to a stealer: pairs with its CAS. */
    rp_store_release_ptr((void **)&tc->eslot[i], s);
}

/* Take s's remote list into its local list (owner only, state OWNED).
 * Returns the number of objects taken. O(1) if s->free was empty, else
 * O(objects taken) to find the list's tail. */
static uint32_t collect(rp_pool *p, struct slab *s)
{
    uint64_t w = remote_take(s);
    uint32_t x = XW_COUNT(w);
    if (x == 0)
        return 0;
    void *chain = slot(s, XW_HEAD(w) - 1);
    if (s->free) {
        void *tail = chain;
        for (uint32_t i = 1; i < x && tail; i++)
            tail = link_next(p, s, tail);
        if (!tail) { /* damaged chain (reported): keep the local list */
            used_add(s, -(int32_t)x);
            return x;
        }
        link_set(p, tail, s->free);
    }
    s->free = chain;
    used_add(s, -(int32_t)x);
    return x;
}

/* Link up to `batch` never-used slots of s into a list; NULL if none are
 * left. The slots stay poisoned (they are free). O(batch). */
static void *extend(rp_pool *p, struct slab *s)
{
    const struct cls_info *ci = &sp_of(p)->cls[s->cls];
    uint32_t nb = s->nbumped;
    if (nb >= s->cap)
        return NULL;
    uint32_t k = s->cap - nb;
    if (k > ci->batch)
        k = ci->batch;
    char *o = slot(s, nb), *last = o + (size_t)(k - 1) * s->size;
    if (p->cfg.hardened) {
        for (char *q = o; q < last; q += s->size)
            link_set(p, q, q + s->size);
    } else {
        /* Plain links, four slots per round: under 2 instructions per
         * slot (gcc -O2 does not unroll). */
        size_t sz = s->size;
        char *q = o;
        for (; q + 3 * sz < last; q += 4 * sz) {
            raw_store(q, q + sz);
            raw_store(q + sz, q + 2 * sz);
            raw_store(q + 2 * sz, q + 3 * sz);
            raw_store(q + 3 * sz, q + 4 * sz);
        }
        for (; q < last; q += sz)
            raw_store(q, q + sz);
    }
    link_set(p, last, NULL);
    s->nbumped = nb + k;
    /* Freers of these slots read lim after the user's own hand-off of the
     * pointer; relaxed suffices (they only compare against it). */
    rp_store_relaxed_u64(&s->lim, (uint64_t)(nb + k) * step_of(s));
    used_add(s, (int32_t)k);
    return o;
}

/* The objects s can give now, as a list that leaves s (every slot not on
 * s->free counts as used); NULL if s has none. O(1) amortized. */
static void *take_list(rp_pool *p, struct slab *s)
{
    if (!s->free && !collect(p, s))
        return extend(p, s);
    if (s->used == 0 && !in_order(p, s)) {
        rewind_slab(p, s); /* every object came back: hand them out in order */
        return extend(p, s);
    }
    void *list = s->free;
    s->free = NULL;
    used_add(s, (int32_t)bumped(s) - s->used);
    return list;
}

/* ======================================================================== */
/* Abandonment and adoption.                                                */

/* The slab of an abandoned-stack entry. O(1). */
static inline struct slab *slab_of_alink(ck_stack_entry_t *e)
{
    return (struct slab *)(void *)((char *)e - offsetof(struct slab, u.alink));
}

/* Push s on an abandoned stack. O(1) (lock-free CAS loop). */
static void ab_push(struct ab_cls *ab, struct slab *s)
{
    rp_add_relaxed_u64(&ab->n, 1); /* before the push: n >= stack length */
    RP_HIDE_BEGIN();
    ck_stack_push_mpmc(&ab->stack, &s->u.alink);
    RP_HIDE_END();
}

/* State of s's word (relaxed, hidden). O(1). */
static uint32_t xstate(struct slab *s)
{
    RP_HIDE_BEGIN();
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    RP_HIDE_END();
    return XW_STATE(w);
}

/* Take a DEAD slab we hold (popped from the stack) and release it.
 * O(1) + slab_release. */
static void release_dead(rp_pool *p, struct slab *s)
{
    RP_HIDE_BEGIN();
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    /* CAS DEAD -> OWNED: we hold the popped node, DEAD is final for freers,
     * so this cannot fail; pairs with the freer's CAS that made it DEAD. */
    bool ok = XW_STATE(w) == XS_DEAD &&
              rp_cas_u64(&s->xword, &w, XW_MAKE(0, 0, 0, XS_OWNED));
    RP_HIDE_END();
    if (!ok) {
        rpi_report(p, RP_ERR_CORRUPT, s->first,
                   "abandoned slab %p changed state while held (word %#llx)",
                   (void *)s->first, (unsigned long long)w);
        return;
    }
    rp_hb_acquire(s); /* pairs with rp_hb_release(s) in slab_abandon */
    slab_release(p, s);
}

/* Release every DEAD slab of class c's abandoned stack. A slab can turn DEAD
 * while we hold the chain; we re-check each slab after pushing it back, and
 * go round again if one did (see OBJECTS.md: every DEAD slab is released by
 * whoever makes it DEAD, pushes it, or pops it). O(abandoned slabs of c). */
static void sweep(rp_pool *p, unsigned c)
{
    struct ab_cls *ab = &sp_of(p)->ab[c];
    bool again;
    do {
        again = false;
        RP_HIDE_BEGIN();
        ck_stack_entry_t *e = rpi_stack_batch_pop(&ab->stack);
        RP_HIDE_END();
        while (e) {
            RP_HIDE_BEGIN();
            ck_stack_entry_t *next = e->next;
            RP_HIDE_END();
            struct slab *s = slab_of_alink(e);
            if (xstate(s) == XS_DEAD) {
                rp_sub_relaxed_u64(&ab->n, 1);
                release_dead(p, s);
            } else {
                RP_HIDE_BEGIN();
                ck_stack_push_mpmc(&ab->stack, e);
                RP_HIDE_END();
                /* Pairs with the fence after the DEAD CAS in free_remote:
                 * either its sweep sees our push or we see DEAD. */
                rp_fence_seq_cst();
                if (xstate(s) == XS_DEAD)
                    again = true;
            }
            e = next;
        }
    } while (again);
}

/* Hand an owned slab (on no list, bin list already returned) over to the
 * pool: release it if it is completely free, else abandon it to ab[cls].
 * O(1) + collect. */
static void slab_abandon(rp_pool *p, struct slab *s)
{
    cset_leave(s);
    if (s->flags & SLAB_QUARANTINE) {
        /* A damaged slab is never handed over (its lists are not trusted);
         * it stays allocated. */
        rp_store_relaxed_u64(&s->owner, 0);
        s->net = NULL;
        return;
    }
    collect(p, s);
    if (s->used == 0) {
        slab_release(p, s);
        return;
    }
    unsigned c = s->cls;
    s->where = W_ABANDONED;
    s->net = NULL;
    rp_store_relaxed_u64(&s->owner, 0);
    rp_hb_release(s); /* the adopter sees our metadata and links; pairs with
                         rp_hb_acquire(s) in adopt/release_dead */
    bool all_back = false;
    RP_HIDE_BEGIN();
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    for (;;) {
        if (XW_COUNT(w) == (uint32_t)s->used) {
            all_back = true; /* the last objects came back meanwhile */
            break;
        }
        /* CAS OWNED -> ABANDONED recording the objects still out; pairs with
         * the freers' CAS (a freer that sees ABANDONED counts towards
         * aused) and with the adopter's CAS. */
        if (rp_cas_u64(&s->xword, &w,
                       XW_MAKE(XW_HEAD(w), XW_COUNT(w), (uint32_t)s->used, XS_ABANDONED)))
            break;
    }
    RP_HIDE_END();
    if (all_back) {
        collect(p, s); /* still OWNED by us */
        slab_release(p, s);
        return;
    }
    ab_push(&sp_of(p)->ab[c], s);
    /* Pairs with the fence after the DEAD CAS in free_remote. */
    rp_fence_seq_cst();
    if (xstate(s) == XS_DEAD)
        sweep(p, c);
}

/* Adopt an abandoned slab of class c for tc: exactly one party wins the
 * CAS on its word. DEAD slabs met on the way are released. Returns NULL if
 * none. O(1) per slab popped. */
static struct slab *adopt(rp_pool *p, struct tcache *tc, unsigned c)
{
    struct ab_cls *ab = &sp_of(p)->ab[c];
    while (rp_load_relaxed_u64(&ab->n) != 0) {
        RP_HIDE_BEGIN();
        ck_stack_entry_t *e = ck_stack_pop_mpmc(&ab->stack);
        RP_HIDE_END();
        if (!e)
            return NULL; /* a sweeper holds them */
        rp_sub_relaxed_u64(&ab->n, 1);
        struct slab *s = slab_of_alink(e);
        RP_HIDE_BEGIN();
        uint64_t w = rp_load_relaxed_u64(&s->xword);
        /* CAS ABANDONED -> OWNED, taking the remote list with it; pairs with
         * the abandoner's CAS and with the freers' CAS. */
        while (XW_STATE(w) == XS_ABANDONED &&
               !rp_cas_u64(&s->xword, &w, XW_MAKE(0, 0, 0, XS_OWNED)))
            ;
        RP_HIDE_END();
        if (XW_STATE(w) == XS_DEAD) {
            release_dead(p, s); /* we hold it: popped */
            continue;
        }
        if (XW_STATE(w) != XS_ABANDONED) {
            rpi_report(p, RP_ERR_CORRUPT, s->first,
                       "slab %p on the abandoned stack has word %#llx",
                       (void *)s->first, (unsigned long long)w);
            continue;
        }
        rp_hb_acquire(s); /* pairs with rp_hb_release(s) in slab_abandon */
        s->used = (int32_t)XW_AUSED(w);
        s->net = &tc->bin[c].net;
        s->where = W_NONE;
        rp_store_relaxed_u64(&s->owner, tc->token);
        uint32_t x = XW_COUNT(w);
        if (x) {
            /* Prepend the remote list taken by the CAS. */
            void *chain = slot(s, XW_HEAD(w) - 1), *tail = chain;
            for (uint32_t i = 1; i < x && tail; i++)
                tail = link_next(p, s, tail);
            if (tail) {
                link_set(p, tail, s->free);
                s->free = chain;
            }
            s->used -= (int32_t)x;
        }
        return s;
    }
    return NULL;
}

/* ======================================================================== */
/* The thread cache.                                                        */

/* The pool's batch tag key: word 1 of a batched object is tag_key ^ its
 * address (see "Remote-free batches"). Odd, so that no tag is 0 (objects
 * are 16-byte aligned): a cleared word never looks tagged. O(1). */
static inline uint64_t tag_key(const rp_pool *p)
{
    return (sp_of(p)->secret * 0x9e3779b97f4a7c15ull) | 1;
}

/* First use of a (zeroed) tcache. Out of line: tcache_get stays small
 * enough to inline into the general paths. O(1). */
__attribute__((noinline, cold)) static void tcache_init(rp_pool *p, struct tcache *tc)
{
    tc->slow = !RP_FAST || p->cfg.hardened || __tsan_acquire != NULL;
    tc->token = thread_token() | (tc->slow ? OWNER_SLOW : 0);
    tc->tagkey = tag_key(p);
    tc->gmask = ((uint64_t)1 << p->gshift) - 1;
    /* Without a purger nothing would age the kept slabs: EMPTY_MAX only. */
    tc->ecap = p->rc_cap ? (p->rc_cap < EMPTY_BYTES ? p->rc_cap : EMPTY_BYTES) : 0;
    tc->inited = 1;
}

/* The calling thread's tcache for p (created on first use), or NULL with
 * errno set. Refreshes the fast-path cache. O(1) (thread.c's TLS lookup). */
static struct tcache *tcache_get(rp_pool *p)
{
    rp_tstate *ts = rpi_tstate_get(p);
    if (!ts)
        return NULL;
    struct tcache *tc = tc_of_ts(ts);
    if (RP_UNLIKELY(!tc->inited))
        tcache_init(p, tc);
#if RP_FAST
    if (!tc->slow) {
        tlc.id = p->id;
        tlc.bins = (char *)tc->bin;
    }
#endif
    return tc;
}

/* The calling thread's tcache for p if it has one; never creates. O(1). */
static struct tcache *tcache_peek(rp_pool *p)
{
#if RP_FAST
    if (tlc.id == p->id)
        return tlc_tcache();
#endif
    rp_tstate *ts = rpi_tstate_peek(p);
    if (!ts)
        return NULL;
    struct tcache *tc = tc_of_ts(ts);
    return tc->inited ? tc : NULL;
}

/* Fill the bin of class c (empty) and return one object, or NULL with
 * errno = ENOMEM. Order: the current slab's local list, its remote list,
 * its never-used slots; then a partial slab, a full slab with remote frees
 * pending, an abandoned slab, an empty slab kept by this thread, a new
 * slab. O(1) amortized; may call the OS. */
static void *refill(rp_pool *p, struct tcache *tc, unsigned c)
{
    struct bin *b = &tc->bin[c];
    struct cold *k = &tc->cold[c];
    for (;;) {
        struct slab *s = k->cur;
        if (s) {
            void *list = (s->flags & SLAB_QUARANTINE) ? NULL : take_list(p, s);
            if (list) {
                b->free = link_next(p, s, list);
                return list;
            }
            k->cur = NULL;
            s->where = W_FULL;
            /* The first local free into a full slab must move it to the
             * partial list: keep it off the fast free path meanwhile. */
            cset_leave(s);
            rp_store_relaxed_u64(&s->owner, tc->token | OWNER_SLOW);
            list_add(&k->full, s);
        }
        s = list_pop(&k->partial);
        if (!s && k->full) {
            /* Poll a few full slabs for remote frees, rotating the list so
             * that every one is polled in turn. */
            struct slab *f = k->full;
            for (int i = 0; i < FULL_SCAN; i++) {
                if (!(f->flags & SLAB_QUARANTINE)) {
                    RP_HIDE_BEGIN();
                    uint64_t w = rp_load_relaxed_u64(&f->xword);
                    RP_HIDE_END();
                    if (XW_COUNT(w)) {
                        k->full = f->u.l.next;
                        list_del(&k->full, f);
                        s = f;
                        break;
                    }
                }
                f = f->u.l.next;
                if (f == k->full)
                    break;
            }
            if (!s && k->full)
                k->full = f; /* resume after the last one polled */
        }
        if (!s)
            s = adopt(p, tc, c);
        if (!s)
            s = empty_take(p, tc, c);
        if (!s)
            s = slab_new(p, tc, c);
        if (!s)
            return NULL;
        s->where = W_CUR;
        owner_fast(tc, s);
        k->cur = s;
    }
}

/* Return the bin list of class c to its current slab. O(list length). */
static void bin_flush(rp_pool *p, struct tcache *tc, unsigned c)
{
    struct bin *b = &tc->bin[c];
    struct slab *s = tc->cold[c].cur;
    void *list = b->free;
    b->free = NULL;
    if (!list || !s)
        return;
    uint32_t n = 1;
    void *tail = list, *next;
    while ((next = link_next(p, s, tail)) != NULL && n <= s->cap) {
        tail = next;
        n++;
    }
    if (s->flags & SLAB_QUARANTINE)
        return;
    link_set(p, tail, s->free);
    s->free = list;
    used_add(s, -(int32_t)n);
}

static void rb_flush(rp_pool *p, struct tcache *tc, struct rbuf *e);

/* Hand a shard's objects and slabs back (thread exit, rp_thread_detach,
 * pool destroy): bin lists to their slabs, completely free slabs and the
 * empty cache to the region pool, the others to the abandoned stacks, the
 * counts to the pool. Any thread (the owner, or the destroyer once the
 * owner no longer uses the pool). O(slabs of the shard + objects on its bin
 * lists and remote lists); may call madvise. */
void rpi_slab_thread_exit(rp_pool *p, rp_tstate *ts)
{
    struct slab_pool *sp = sp_of(p);
    struct tcache *tc = tc_of_ts(ts);
    if (!sp || !tc->inited)
        return;
#if RP_FAST
    if (tlc.bins == (char *)tc->bin) {
        tlc.id = 0;
        tlc.bins = NULL;
    }
#endif
    /* Open batches first: they may complete abandoned slabs, and pushes into
     * this thread's own slabs are collected below. */
    for (unsigned i = 0; i < RB_N; i++)
        if (tc->rb[i].s)
            rb_flush(p, tc, &tc->rb[i]);
    for (unsigned c = 0; c < NCLS; c++) {
        struct cold *k = &tc->cold[c];
        struct slab *s;
        if ((s = k->cur) != NULL) {
            bin_flush(p, tc, c);
            k->cur = NULL;
            s->where = W_NONE;
            slab_abandon(p, s);
        }
        while ((s = list_pop(&k->partial)) != NULL)
            slab_abandon(p, s);
        while ((s = list_pop(&k->full)) != NULL)
            slab_abandon(p, s);
        /* Hand the thread's count over before the shard leaves the list:
         * a concurrent snapshot may count it twice, never zero times. */
        uint64_t net = tc->bin[c].net;
        if (net) {
            rp_add_relaxed_u64(&sp->ab[c].net, net);
            rp_store_relaxed_u64(&tc->bin[c].net, 0);
        }
    }
    for (uint32_t m = tc->emask; m; m &= m - 1) {
        struct slab *s = empty_claim(tc, (unsigned)__builtin_ctz(m));
        if (s)
            slab_release(p, s);
    }
    tc->inited = 0;
}

/* ======================================================================== */
/* Allocation.                                                              */

static void *large_alloc(rp_pool *p, size_t size, size_t align);

/* One object of class c for the calling thread, from its tcache; NULL with
 * errno = ENOMEM. A thread that cannot get a shard is served by the large
 * path. O(1) amortized (see refill). */
static void *slab_alloc(rp_pool *p, unsigned c, size_t align)
{
    struct tcache *tc = tcache_get(p);
    if (RP_UNLIKELY(!tc))
        return large_alloc(p, cls_bytes[c], align);
    struct bin *b = &tc->bin[c];
    for (;;) {
        struct slab *s = tc->cold[c].cur;
        void *o = b->free;
        if (o)
            b->free = link_next(p, s, o);
        else if ((o = refill(p, tc, c)) == NULL)
            return NULL;
        s = tc->cold[c].cur;
        if (p->cfg.hardened) {
            uint32_t i = slot_index(s, (uint64_t)((char *)o - s->first));
            if (RP_UNLIKELY(bm_update(s, i, true))) {
                /* Marked live while on a free list: a list was damaged.
                 * Never hand it out twice. */
                s->flags |= SLAB_QUARANTINE;
                rpi_report(p, RP_ERR_CORRUPT, o,
                           "object %p of the %u-byte slab at %p is on a free list "
                           "but marked allocated",
                           o, s->size, (void *)s->first);
                b->free = NULL;
                continue;
            }
        }
        rp_hb_acquire(o); /* pairs with rp_hb_release(o) in the free of o */
        rp_unpoison(o, s->size);
        owner_add(&b->net, 1);
        return o;
    }
}

/* Requests that no slab serves (see OBJECTS.md "Routing"): with align <=
 * 16, sizes up to heap_route go to the heap first and, if it has no room,
 * to a region of their own; sizes above region_max_bytes only fit the
 * heap; the others (and every align > 16) take a region. NULL + errno
 * (ENOMEM) on failure, counted once, by the layer that finally refuses
 * (the heap's try entry does not count a refusal for lack of room). errno
 * is unchanged on success. O(1); may call the OS or take the heap lock. */
static void *large_alloc(rp_pool *p, size_t size, size_t align)
{
    struct slab_pool *sp = sp_of(p);
    size_t rmax = p->cfg.region_max_bytes;
    if (align <= 16) {
        if (size <= sp->heap_route) {
            int err = errno;
            void *o = rpi_heap_try_alloc(p, size);
            if (o)
                return o;
            /* The physical budget refused (counted, ENOMEM): a region
             * would be refused the same way. Anything else (ENOSPC, not
             * counted) falls back to a region, whose outcome is counted. */
            if (errno != ENOSPC)
                return NULL;
            errno = err;
        } else if (size > rmax) {
            return rpi_heap_alloc(p, size);
        }
    }
    size_t extra = align > sp->base_align ? align - sp->base_align : 0;
    if (size > rmax || extra > rmax - size)
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM);
    rp_rdesc *d = rpi_region_get(p, size + extra, RK_LARGE);
    if (!d)
        return NULL;
    char *base = rpi_desc_base(p, d);
    uint64_t off = (uint64_t)(rp_align_up((uintptr_t)base, align) - (uintptr_t)base);
    ((struct large *)(void *)d->user.bytes)->off = off;
    rp_poison(base, off);
    return base + off;
}

/* rp_alloc without the fast path. O(1) amortized; may call the OS.
 * Out of line so that rp_alloc's fast path needs no stack frame. */
__attribute__((noinline)) static void *alloc_general(rp_pool *p, size_t size)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    if (size <= RP_OBJECT_MAX) {
        unsigned c = class_of(size);
        if (sp_of(p)->cls[c].cap)
            return slab_alloc(p, c, 16);
    }
    if (size > SIZE_MAX / 2)
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM);
    return large_alloc(p, size, 16);
}

#if RP_FAST
/* rp_alloc when the bin b of the fast-path tcache (tlc) is empty: refill it
 * without the shard lookup (the tcache is the fast one: not hardened, no
 * sanitizer, so slab_alloc's checks and annotations are void). Out of
 * line, so that rp_alloc keeps no stack frame. O(1) amortized (refill). */
__attribute__((noinline)) static void *alloc_refill(rp_pool *p, size_t size, struct bin *b)
{
    struct tcache *tc = tlc_tcache();
    unsigned c = (unsigned)(b - tc->bin);
    if (RP_UNLIKELY(!sp_of(p)->cls[c].cap))
        return alloc_general(p, size); /* a class no slab serves */
    void *o = refill(p, tc, c);
    if (o)
        owner_add(&b->net, 1);
    return o;
}
#endif

/* Public API, see rpool.h. Fast path O(1) and no call; otherwise see
 * alloc_refill and alloc_general. */
RP_HOT_ALIGN void *rp_alloc(rp_pool *p, size_t size)
{
#if RP_FAST
    /* Fast path: pop the bin of the last pool this thread used. */
    if (RP_LIKELY(size <= RP_OBJECT_MAX && p != NULL && tlc.id == p->id)) {
        struct bin *b = (struct bin *)(void *)(tlc.bins + cls_lut[(size + 15) >> 4]);
        void *o = b->free;
        if (RP_LIKELY(o != NULL)) {
            b->free = *(void **)o;
            owner_add(&b->net, 1);
            return o;
        }
        return alloc_refill(p, size, b);
    }
#endif
    return alloc_general(p, size);
}

/* rp_alloc + zeroing. O(n * size). */
void *rp_calloc(rp_pool *p, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        if (!p) {
            errno = EINVAL;
            return NULL;
        }
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM);
    }
    void *o = rp_alloc(p, total);
    if (o)
        memset(o, 0, total);
    return o;
}

/* See the routing table in OBJECTS.md. O(classes) for the class search,
 * else as rp_alloc or large_alloc. */
void *rp_aligned_alloc(rp_pool *p, size_t align, size_t size)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    if (!rp_is_pow2(align))
        return rpi_fail_null(p, RP_FAIL_OTHER, EINVAL);
    if (align <= 16)
        return rp_alloc(p, size);
    if (size == 0)
        size = 1;
    struct slab_pool *sp = sp_of(p);
    size_t want = size > align ? size : align;
    if (want <= RP_OBJECT_MAX && align <= sp->base_align) {
        /* Objects sit at base + i * size: a class whose size is a multiple
         * of align, in slabs whose base is aligned, gives aligned objects.
         * Every power of two is a class, so the loop ends. */
        for (unsigned c = class_of(want); c < NCLS; c++)
            if (cls_bytes[c] % align == 0 && sp->cls[c].cap)
                return slab_alloc(p, c, align);
    }
    if (size > SIZE_MAX / 2)
        return rpi_fail_null(p, RP_FAIL_OTHER, ENOMEM);
    return large_alloc(p, size, align);
}

/* ======================================================================== */
/* Pointer lookup and validation.                                           */

enum { LOC_BAD = 0, LOC_SLAB, LOC_LARGE, LOC_HEAP };

struct loc {
    rp_rdesc *d;
    struct slab *s;
    uint32_t idx;
};

/* Name of a region kind for reports. O(1). */
static const char *kind_name(unsigned kind)
{
    switch (kind) {
    case RK_USER: return "a region from rp_region_acquire (use rp_region_release)";
    case RK_ARENA: return "arena memory (freed by rp_arena_reset/destroy)";
    default: return "memory of another allocator";
    }
}

/* Classify ptr for operation `api`; report and return LOC_BAD if it is not
 * the start of a live allocation of rp_alloc & co (as far as can be told
 * without the hardened bitmap). O(1). */
static int locate(rp_pool *p, const void *ptr, const char *api, struct loc *L)
{
    rp_rdesc *d = rpi_desc_lookup(p, ptr);
    if (!d) {
        if (rpi_heap_owns(p, ptr))
            return LOC_HEAP;
        rpi_report(p, RP_ERR_FOREIGN, ptr,
                   "%s(%p): not memory of pool %p (outside its regions and heap)",
                   api, ptr, (void *)p);
        return LOC_BAD;
    }
    uint32_t w = rp_load_relaxed_u32(&d->word);
    char *base = rpi_desc_base(p, d);
    if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) == RK_NONE) {
        rpi_report(p, RP_ERR_NOT_LIVE, ptr,
                   "%s(%p): inside a free region (never allocated, or already freed)",
                   api, ptr);
        return LOC_BAD;
    }
    if (RW_KIND(w) == RK_LARGE) {
        uint64_t off = ((struct large *)(void *)d->user.bytes)->off;
        if ((const char *)ptr != base + off) {
            rpi_report(p, RP_ERR_INTERIOR, ptr,
                       "%s(%p): interior pointer into the large object at %p",
                       api, ptr, (void *)(base + off));
            return LOC_BAD;
        }
        L->d = d;
        return LOC_LARGE;
    }
    if (RW_KIND(w) != RK_SLAB) {
        rpi_report(p, RP_ERR_WRONG_API, ptr, "%s(%p): the pointer is %s, not an object",
                   api, ptr, kind_name(RW_KIND(w)));
        return LOC_BAD;
    }
    struct slab *s = slab_of(d);
    uint64_t n = (uint64_t)((uintptr_t)ptr - (uintptr_t)base);
    uint32_t size = s->size;
    if (size == 0) { /* being formatted: no object was handed out yet */
        rpi_report(p, RP_ERR_NOT_LIVE, ptr, "%s(%p): no object was allocated there",
                   api, ptr);
        return LOC_BAD;
    }
    if (n >= (uint64_t)s->cap * size || n * s->divc >= s->divc) {
        uint64_t i = slot_index(s, n);
        if (i >= s->cap)
            rpi_report(p, RP_ERR_INTERIOR, ptr,
                       "%s(%p): inside the metadata/tail of the %u-byte slab at %p",
                       api, ptr, size, (void *)base);
        else
            rpi_report(p, RP_ERR_INTERIOR, ptr,
                       "%s(%p): interior pointer into the %u-byte object at %p",
                       api, ptr, size, slot(s, (uint32_t)i));
        return LOC_BAD;
    }
    if (n * s->divc >= rp_load_relaxed_u64(&s->lim)) {
        rpi_report(p, RP_ERR_NOT_LIVE, ptr,
                   "%s(%p): %u-byte object slot never allocated", api, ptr, size);
        return LOC_BAD;
    }
    L->d = d;
    L->s = s;
    L->idx = slot_index(s, n);
    return LOC_SLAB;
}

/* Report a free of something that is not live. O(1) + the error hook. */
static void report_double(rp_pool *p, const void *ptr, const char *api, const char *how)
{
    rpi_report(p, RP_ERR_NOT_LIVE, ptr, "%s(%p): object is not live (double free?): %s",
               api, ptr, how);
}

/* ======================================================================== */
/* Free.                                                                    */

/* Free o into s, owned by the calling thread. O(1). */
static void free_local(rp_pool *p, struct slab *s, void *o)
{
    void *h = s->free;
    if (RP_UNLIKELY(s->used <= 0 || h == o)) {
        report_double(p, o, "rp_free", s->used <= 0 ? "its slab has no object out"
                                                    : "it is the last object freed");
        return;
    }
    rp_hb_release(o); /* pairs with rp_hb_acquire(o) at its next allocation */
    rp_poison(o, s->size);
    link_set(p, o, h);
    s->free = o;
    owner_add(s->net, (uint64_t)-1);
    used_add(s, -1);
    if (s->where == W_CUR || s->where == W_EMPTY)
        return;
    struct tcache *tc = tc_of_slab(s);
    struct cold *k = &tc->cold[s->cls];
    if (s->used == 0) {
        list_del(s->where == W_FULL ? &k->full : &k->partial, s);
        slab_retire(p, tc, s);
    } else if (s->where == W_FULL) {
        list_del(&k->full, s);
        s->where = W_PARTIAL;
        owner_fast(tc, s);
        list_add(&k->partial, s);
    }
}

/* Count a free by this thread in its own shard (or the pool's detached
 * count if it has none). O(1). */
static void count_free(rp_pool *p, unsigned c)
{
    struct tcache *tc = tcache_peek(p);
    if (tc)
        owner_add(&tc->bin[c].net, (uint64_t)-1);
    else
        rp_sub_relaxed_u64(&sp_of(p)->ab[c].net, 1);
}

/* Verdicts of a remote push. */
enum { PUSHED, COMPLETED, DOUBLE_HEAD, DOUBLE_DEAD, DOUBLE_TAG };

/* What a double-free verdict found, for the report. O(1). */
static const char *double_why(int verdict)
{
    switch (verdict) {
    case DOUBLE_HEAD: return "it is the last object freed remotely";
    case DOUBLE_DEAD: return "its abandoned slab has no object out";
    default: return "it waits in a batch of remote frees";
    }
}

/* Push o (slot idx of s; released to TSan and poisoned by the caller) on
 * s's remote list. tag: o's batch tag, or 0 not to check it (o comes from
 * one of our batches). Returns PUSHED; COMPLETED when the push made an
 * abandoned slab DEAD (the caller sweeps and must not touch s again); or
 * DOUBLE_HEAD / DOUBLE_DEAD / DOUBLE_TAG when o was not pushed (a double
 * free). O(1) (CAS loop). */
static int remote_push(rp_pool *p, struct slab *s, void *o, uint32_t idx, uint64_t tag)
{
    int verdict;
    /* One hidden section per free: each begin/end advances TSan's epoch,
     * and a thread whose epochs run out forgets its earlier accesses (user
     * races would go unreported; see OBJECTS.md "Sanitizers"). */
    RP_HIDE_BEGIN();
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    for (;;) {
        if (tag && word1_load(o) == tag) {
            verdict = DOUBLE_TAG;
            break;
        }
        uint32_t head = XW_HEAD(w), x = XW_COUNT(w), a = XW_AUSED(w);
        unsigned st = XW_STATE(w);
        if (head == idx + 1) {
            verdict = DOUBLE_HEAD;
            break;
        }
        if (st == XS_DEAD || (st == XS_ABANDONED && x + 1 > a)) {
            verdict = DOUBLE_DEAD;
            break;
        }
        link_set(p, o, head ? slot(s, head - 1) : NULL);
        bool last = st == XS_ABANDONED && x + 1 == a;
        /* CAS push; release: our link write before the new head. Pairs with
         * the owner's exchange in collect, the adopter's CAS in adopt, and
         * (when this makes an abandoned slab DEAD) release_dead's CAS. */
        if (rp_cas_u64(&s->xword, &w,
                       XW_MAKE(idx + 1, x + 1, a, last ? XS_DEAD : st))) {
            verdict = last ? COMPLETED : PUSHED;
            break;
        }
    }
    RP_HIDE_END();
    return verdict;
}

/* After a push that made a slab of class c DEAD. Pairs with the fences in
 * sweep and slab_abandon (after a push): either our sweep finds the slab or
 * its pusher sees DEAD. O(abandoned slabs of c). */
static void completed(rp_pool *p, unsigned c)
{
    rp_fence_seq_cst();
    sweep(p, c);
}

/* Free o (slot idx) into s, owned by another thread or abandoned, at once:
 * push it on s's remote list (hardened pools, abandoned slabs, classes too
 * large to batch, threads without a shard). O(1) (CAS loop; a completing
 * free of an abandoned slab also sweeps its class). */
static void free_remote(rp_pool *p, struct slab *s, void *o, uint32_t idx)
{
    /* Read the format before the push: once our object is on the list, the
     * owner may collect it, empty the slab and reformat it. */
    unsigned c = s->cls;
    rp_hb_release(o); /* before o is linked anywhere; pairs with its next
                         allocation's rp_hb_acquire(o) */
    rp_poison(o, s->size);
    /* Hardened pools never tag (the bitmap decides). */
    uint64_t tag = p->cfg.hardened ? 0 : tag_key(p) ^ (uint64_t)(uintptr_t)o;
    int verdict = remote_push(p, s, o, idx, tag);
    if (verdict >= DOUBLE_HEAD) {
        report_double(p, o, "rp_free", double_why(verdict));
        return;
    }
    count_free(p, c);
    if (verdict == COMPLETED)
        completed(p, c);
}

/* ---- Remote-free batches --------------------------------------------------
 *
 * A thread that frees objects of slabs owned by other live threads (plain
 * pools) does not push each one with a CAS. It keeps up to RB_N open
 * batches, one per slab, direct-mapped by the slab's first granule index:
 * a chain of up to rbmax objects of that slab linked through their first
 * word. A batch is pushed on the slab's remote list with one CAS (rb_flush)
 * when it is full, when another slab needs its entry, and when the thread
 * exits or detaches (rpi_slab_thread_exit).
 *
 * Counting: the free is counted (net) when the user frees. The slab keeps
 * counting a batched object in `used` until the push, exactly as one in the
 * user's hands, so a slab is never released or reformatted while a batch
 * holds its objects: an open batch proves its slab is alive (the fast path
 * relies on it).
 *
 * Double frees: word 1 of a batch's head (the last object this thread
 * freed into the slab) holds tagkey ^ its address (tagkey is per pool and
 * random); the tag moves to each new head and is cleared when the batch is
 * pushed, so no live object carries one (tagging every batched object and
 * clearing them all at the push cost a walk of the chain: 10% of a remote
 * free). A non-owner's free that finds the tag is the immediate repeat of
 * a batched free, by any thread; every remote free also checks the head of
 * the slab's remote list, as before: together the two catch what the head
 * check alone caught without batches. A batch the push finds inconsistent with the slab (its head
 * already on the remote list, a DEAD slab, more frees than objects out) is
 * pushed one object at a time with the same checks as an unbatched free.
 */

/* Push batch e (open) of tc on its slab's remote list and close it. The
 * caller is tc's thread, or the destroyer of its shard
 * (rpi_slab_thread_exit). O(objects in the batch) (clearing the tags; a
 * completing push also sweeps). */
static __attribute__((noinline)) void rb_flush(rp_pool *p, struct tcache *tc,
                                               struct rbuf *e)
{
    struct slab *s = e->s;
    void *head = e->head, *tail = e->tail;
    unsigned c = e->cls;
    uint64_t *net = &tc->bin[c].net;
    uint32_t n = sp_of(p)->cls[c].rbmax - e->left;
    e->s = NULL;
    e->head = e->tail = NULL;
    e->left = 0;
    if (n == 0)
        return; /* never: an empty batch is closed at once */
    /* The format from the class and the pool's layout, not from s: our
     * accesses to s after the objects' releases run hidden (once they are
     * on the list the owner may collect them, empty the slab and reformat
     * it; TSan cannot see that hand-off). */
    const struct cls_info *ci = &sp_of(p)->cls[c];
    char *first = rpi_desc_base(p, desc_of(s));
    uint32_t cap = ci->cap, size = ci->size;
    uint64_t divc = ci->divc;
    uint32_t hidx = idx_of((uint64_t)((char *)head - first), divc);
    int verdict = DOUBLE_HEAD;
    RP_HIDE_BEGIN();
    word1_store(head, 0); /* only the head carries the tag */
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    for (;;) {
        uint32_t h = XW_HEAD(w), x = XW_COUNT(w), a = XW_AUSED(w);
        unsigned st = XW_STATE(w);
        if (h == hidx + 1 || st == XS_DEAD || x + n > cap ||
            (st == XS_ABANDONED && x + n > a))
            break; /* one at a time, below */
        link_set(p, tail, h ? first + (size_t)(h - 1) * size : NULL);
        bool last = st == XS_ABANDONED && x + n == a;
        /* CAS push of the whole chain; release: our link and tag writes
         * before the new head. Pairs with the owner's exchange in
         * collect, the adopter's CAS in adopt and (when this makes an
         * abandoned slab DEAD) release_dead's CAS. */
        if (rp_cas_u64(&s->xword, &w,
                       XW_MAKE(hidx + 1, x + n, a, last ? XS_DEAD : st))) {
            verdict = last ? COMPLETED : PUSHED;
            break;
        }
    }
    RP_HIDE_END();
    if (verdict == DOUBLE_HEAD) {
        /* Each object as a single remote free. After a push completes the
         * slab, s may be released: the rest are double frees. */
        verdict = PUSHED;
        void *o = head;
        for (uint32_t i = 0; i < n; i++) {
            RP_HIDE_BEGIN();
            void *next = raw_load(o); /* before the push rewrites it */
            RP_HIDE_END();
            int v = DOUBLE_DEAD;
            if (verdict != COMPLETED) {
                v = remote_push(p, s, o, idx_of((uint64_t)((char *)o - first), divc), 0);
            }
            if (v >= DOUBLE_HEAD) {
                report_double(p, o, "rp_free", double_why(v));
                owner_add(net, 1); /* it was counted as a free */
            } else if (v == COMPLETED) {
                verdict = COMPLETED;
            }
            o = next;
        }
    }
    if (verdict == COMPLETED)
        completed(p, c);
}

/* Free o (slot idx) of s, owned by another live thread, into tc's batch for
 * s (this thread's tcache). O(1), plus rb_flush when a batch is pushed. */
static void free_batched(rp_pool *p, struct tcache *tc, struct slab *s, void *o,
                         uint32_t idx)
{
    uint64_t tag = tc->tagkey ^ (uint64_t)(uintptr_t)o;
    /* Every plain read of s before the release: the slab's next format
     * happens after it (acquire_slots). */
    unsigned c = s->cls;
    uint32_t size = s->size;
    struct rbuf *e = &tc->rb[rpi_desc_index(p, desc_of(s)) & (RB_N - 1)];
    if (e->s != s) {
        if (e->s)
            rb_flush(p, tc, e);
        e->s = s; /* open, empty until an object joins */
        e->head = e->tail = NULL;
        e->cls = c;
        e->left = sp_of(p)->cls[c].rbmax;
    }
    rp_hb_release(o); /* before o is linked anywhere; pairs with its next
                         allocation's rp_hb_acquire(o) */
    rp_poison(o, size);
    /* One hidden section per free (see remote_push). */
    RP_HIDE_BEGIN();
    uint64_t t = word1_load(o);
    uint64_t w = rp_load_relaxed_u64(&s->xword);
    bool dbl = t == tag || XW_HEAD(w) == idx + 1;
    if (!dbl) {
        if (e->head)
            word1_store(e->head, 0); /* the tag moves to the new head */
        raw_store(o, e->head);
        word1_store(o, tag);
    }
    RP_HIDE_END();
    if (dbl) {
        if (!e->head)
            e->s = NULL; /* an empty batch proves nothing: close it */
        report_double(p, o, "rp_free", double_why(t == tag ? DOUBLE_TAG : DOUBLE_HEAD));
        return;
    }
    if (!e->tail)
        e->tail = o;
    e->head = o;
    owner_add(&tc->bin[c].net, (uint64_t)-1);
    if (--e->left == 0)
        rb_flush(p, tc, e);
}

/* Free a located slab object: bitmap (hardened), then local, batched or
 * remote. O(1) (see free_remote, free_batched). */
static void slab_free(rp_pool *p, struct loc *L, void *ptr)
{
    struct slab *s = L->s;
    if (p->cfg.hardened && !bm_update(s, L->idx, false)) {
        report_double(p, ptr, "rp_free", "the allocation bitmap has it free");
        return;
    }
    uint64_t own = rp_load_relaxed_u64(&s->owner);
    struct tcache *tc;
    if (own != 0 && (own & ~(OWNER_SLOW | OWNER_CSET)) == thread_token())
        free_local(p, s, ptr);
    else if (own != 0 && !p->cfg.hardened && sp_of(p)->cls[s->cls].rbmax > 1 &&
             (tc = tcache_peek(p)) != NULL)
        /* Hardened pools push every remote free at once: the bitmap
         * equation of rp_check counts remote frees on the slab's list. */
        free_batched(p, tc, s, ptr, L->idx);
    else
        free_remote(p, s, ptr, L->idx);
}

/* Free a large object: claim its region, give it back. O(1); may call
 * madvise. */
static void large_free(rp_pool *p, rp_rdesc *d, void *ptr)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    uint32_t live = RW_MAKE(RS_IN_USE, RW_CLS(w), RK_LARGE);
    /* CAS IN_USE|LARGE -> IN_USE|NONE claims the free: of two racing frees
     * exactly one wins (the other is a double free). Pairs with the CAS
     * that handed the region out. */
    if (w != live || !rp_cas_u32(&d->word, &live, RW_MAKE(RS_IN_USE, RW_CLS(w), RK_NONE))) {
        report_double(p, ptr, "rp_free", "its region was freed concurrently");
        return;
    }
    rpi_region_put(p, d);
}

/* rp_free without the fast path. O(1) (heap: takes its lock; a completing
 * free of an abandoned slab: O(abandoned slabs of the class)). Out of line
 * so that rp_free's fast path needs no stack frame. */
__attribute__((noinline)) static void free_general(rp_pool *p, void *ptr)
{
    if (!ptr)
        return;
    if (!p) {
        rpi_report(NULL, RP_ERR_MISUSE, ptr, "rp_free(%p): NULL pool", ptr);
        return;
    }
    struct loc L;
    switch (locate(p, ptr, "rp_free", &L)) {
    case LOC_SLAB: slab_free(p, &L, ptr); break;
    case LOC_LARGE: large_free(p, L.d, ptr); break;
    case LOC_HEAP: rpi_heap_free(p, ptr); break;
    default: break; /* reported */
    }
}

#if RP_FAST
/* rp_free's batched fast path: ptr is in a carved granule whose descriptor
 * is not owned by this thread, and this thread's tcache is the fast-path
 * one (tlc). off and g are rp_free's: ptr's offset in the reservation and
 * its granule (passing the slab too cost the local path an instruction:
 * gcc computed it before the branch). Out of line, so that the local fast
 * path keeps no stack frame and no extra register. O(1) (pushing a batch:
 * rb_flush). */
__attribute__((noinline)) static void free_batched_fast(rp_pool *p, void *ptr,
                                                        uint64_t off, uint64_t g)
{
    struct slab *s = slab_of(&p->desc[g]);
    struct tcache *tc = tlc_tcache();
    struct rbuf *e = &tc->rb[g & (RB_N - 1)];
    if (RP_LIKELY(e->s == s)) {
        /* s is alive and starts at granule g. */
        unsigned __int128 m = (unsigned __int128)(off & tc->gmask) * s->divc;
        uint64_t tag = tc->tagkey ^ (uint64_t)(uintptr_t)ptr;
        uint64_t w = rp_load_relaxed_u64(&s->xword);
        if (RP_LIKELY((uint64_t)m < rp_load_relaxed_u64(&s->lim) &&
                      ((rp_word *)ptr)[1] != tag &&
                      XW_HEAD(w) != (uint32_t)(m >> 64) + 1)) {
            void *h = e->head; /* never NULL: the batch is open */
            ((rp_word *)h)[1] = 0; /* the tag moves to the new head */
            ((rp_word *)ptr)[1] = tag;
            /* Two plain stores, not one vector store built from two
             * registers (gcc's SLP pass). */
            __asm__("" ::: "memory");
            ((rp_word *)ptr)[0] = (uint64_t)(uintptr_t)h;
            e->head = ptr;
            owner_add(&tc->bin[e->cls].net, (uint64_t)-1);
            if (RP_UNLIKELY(--e->left == 0))
                rb_flush(p, tc, e);
            return;
        }
    }
    free_general(p, ptr);
}
#endif

/* Public API, see rpool.h. Fast paths O(1) and no call; otherwise see
 * free_general. */
RP_HOT_ALIGN void rp_free(rp_pool *p, void *ptr)
{
#if RP_FAST
    /* Fast paths, for an object of the first granule of a slab (a pointer
     * past the carved area, NULL included, fails the granule check):
     *  - local: a slab this thread owns, current or partial (full and empty
     *    slabs carry the slow owner bit), not its last object out (that
     *    one, and a double free into an empty slab, go the general way). A
     *    released or foreign region's descriptor never holds a token. The
     *    owner word's bit 1 (OWNER_CSET) says the slab is in the counted
     *    set: the free is counted by used alone, not in net.
     *  - batched: a slab for which this thread has an open batch of remote
     *    frees (which proves the slab alive; see "Remote-free batches").
     * Both check that ptr is a handed-out slot of the slab and the
     * immediate-repeat double free the general path checks. */
    if (RP_LIKELY(p != NULL)) {
        /* Shared words first: ck's loads are compiler barriers. */
        uint64_t hwm = rp_load_relaxed_u64(&p->hwm);
        unsigned sh = p->gshift;
        uint64_t off = (uint64_t)((uintptr_t)ptr - (uintptr_t)p->rbase);
        uint64_t g = off >> sh;
        if (RP_LIKELY(g < hwm)) {
            struct slab *s = slab_of(&p->desc[g]);
            uint64_t own = rp_load_relaxed_u64(&s->owner);
            if (RP_LIKELY((own & ~OWNER_CSET) == thread_token())) {
                /* The slab starts at granule g (only a slab's first
                 * descriptor holds an owner token): n from off, not from
                 * s->first, keeps a load off the check's chain. */
                uint64_t n = off - (g << sh);
                void *h = s->free;
                /* lim: a plain read, we are its only writer. */
                if (RP_LIKELY(n * s->divc < s->lim && h != ptr)) {
                    if (RP_LIKELY(dec_positive(&s->used))) {
                        *(void **)ptr = h;
                        s->free = ptr;
                        /* In the counted set: ubase - used counts it. */
                        if (!(own & OWNER_CSET))
                            owner_add(s->net, (uint64_t)-1);
                        return;
                    }
                    s->used++; /* its last object out: the general path */
                }
            } else if (tlc.id == p->id) {
                free_batched_fast(p, ptr, off, g);
                return;
            }
        }
    }
#endif
    free_general(p, ptr);
}

/* ======================================================================== */
/* Sizes and realloc.                                                       */

/* Usable bytes of the live allocation at ptr, or 0 after a report. O(1)
 * (heap: takes its lock). */
static size_t usable(rp_pool *p, const void *ptr, const char *api, int *where)
{
    struct loc L;
    int k = locate(p, ptr, api, &L);
    if (where)
        *where = k;
    switch (k) {
    case LOC_SLAB:
        if (p->cfg.hardened && !(rp_load_relaxed_u64(bm_word(L.s, L.idx)) &
                                 ((uint64_t)1 << (L.idx & 63)))) {
            report_double(p, ptr, api, "the allocation bitmap has it free");
            return 0;
        }
        return L.s->size;
    case LOC_LARGE:
        return rpi_desc_bytes(p, L.d) - ((struct large *)(void *)L.d->user.bytes)->off;
    case LOC_HEAP:
        return rpi_heap_usable(p, ptr);
    default:
        return 0;
    }
}

/* Public API. O(1) (heap blocks: takes the heap lock). */
size_t rp_usable_size(rp_pool *p, const void *ptr)
{
    if (!p || !ptr)
        return 0;
    return usable(p, ptr, "rp_usable_size", NULL);
}

/* Public API. O(1) in place; else rp_alloc + a copy of min(old, size)
 * bytes + rp_free. */
void *rp_realloc(rp_pool *p, void *ptr, size_t size)
{
    if (!ptr)
        return rp_alloc(p, size);
    if (!p) {
        rpi_report(NULL, RP_ERR_MISUSE, ptr, "rp_realloc(%p): NULL pool", ptr);
        errno = EINVAL;
        return NULL;
    }
    if (size == 0) {
        rp_free(p, ptr);
        return NULL;
    }
    int where;
    size_t old = usable(p, ptr, "rp_realloc", &where);
    if (old == 0) {
        errno = EINVAL;
        return NULL;
    }
    /* Keep the block when it still fits with bounded waste: the same class
     * for objects, at least half used for heap blocks and regions. */
    if (size <= old) {
        if (where == LOC_SLAB ? class_of(size) == class_of(old) : size >= old / 2)
            return ptr;
    }
    void *n = rp_alloc(p, size);
    if (!n)
        return NULL;
    memcpy(n, ptr, old < size ? old : size);
    rp_free(p, ptr);
    return n;
}

/* ======================================================================== */
/* Pool set-up, stats, check.                                               */

/* Set up p->slab: class layouts for this pool's region classes, abandoned
 * stacks, the heap threshold, the hardened key. Before the pool is shared.
 * O(classes x region classes). 0 or -ENOMEM (metadata). */
int rpi_slab_init(rp_pool *p)
{
    pthread_once(&slab_once_ctl, slab_once);
    struct slab_pool *sp = rpi_meta_alloc(p, sizeof *sp, RP_CACHELINE);
    if (!sp)
        return -ENOMEM;
    size_t gran = (size_t)1 << p->gshift;
    for (unsigned c = 0; c < NCLS; c++) {
        ck_stack_init(&sp->ab[c].stack);
        /* ck_stack's ABA generation starts non-NULL (see reserve.c). */
        sp->ab[c].stack.generation = (char *)&sp->ab[c];
        struct cls_info *ci = &sp->cls[c];
        uint32_t size = cls_bytes[c];
        ci->size = size;
        ci->divc = divc_of(size);
        /* A page's worth, or 64 objects when they fit in 16 KiB (256 B: 64
         * instead of 16; each refill costs ~200 instructions), at least
         * MIN_OBJS: the linked lines stay in L1 for the user's writes. */
        ci->batch = 4096 / size;
        if (ci->batch < 64)
            ci->batch = 16384 / size < 64 ? 16384 / size : 64;
        if (ci->batch < MIN_OBJS)
            ci->batch = MIN_OBJS;
        ci->rbmax = RP_RB_BYTES / size < RP_RB_OBJS ? RP_RB_BYTES / size : RP_RB_OBJS;
        if (ci->rbmax < 1)
            ci->rbmax = 1;
        for (unsigned rc = 0; rc < p->nclasses; rc++) {
            size_t bytes = gran << rc;
            size_t cap = bytes / size;
            if (cap > CAP_MAX)
                cap = CAP_MAX;
            if (p->cfg.hardened)
                while (cap && cap * size + bm_bytes((uint32_t)cap) > bytes)
                    cap--;
            if (cap >= MIN_OBJS || (rc == p->nclasses - 1 && cap >= 1)) {
                ci->cap = (uint32_t)cap;
                ci->slab_bytes = bytes;
                ci->bm_off = (uint32_t)(bytes - bm_bytes((uint32_t)cap));
                break;
            }
        }
    }
    uintptr_t rb = (uintptr_t)p->rbase;
    sp->base_align = rb ? (size_t)(rb & -rb) : gran;
    if (sp->base_align > gran)
        sp->base_align = gran;
    /* heap_route = min(1 MiB, the largest request the heap can hold, its
     * capacity / 8); see OBJECTS.md "Why these thresholds". */
    sp->heap_route = 0;
    if (p->heap_bytes) {
        rp_stats hs;
        memset(&hs, 0, sizeof hs);
        rpi_heap_stats(p, &hs);
        size_t route = HEAP_ROUTE_MAX, hmax = rpi_heap_max_request(p);
        if (route > hmax)
            route = hmax;
        if (route > hs.heap_capacity_bytes / 8)
            route = hs.heap_capacity_bytes / 8;
        sp->heap_route = route;
    }
    sp->secret = random64();
    p->slab = sp;
    return 0;
}

struct stat_acc {
    uint64_t net[NCLS];
};

/* Add the frees that the counted set of tc holds and net does not count
 * (used - ubase of each slab in it) to net[class]. Any thread, hidden from
 * TSan by the caller; call it before reading tc's nets: a slab leaving the
 * set meanwhile folds into net before its slot empties (cset_leave), so
 * its frees are counted once or twice, never zero times. A slot read as
 * it changes may name a slab that left the set (or was reformatted): the
 * slot is re-read after the counts and a gap outside [-cap, 0] is
 * ignored. Reads stay inside the descriptor table. O(CSET_N). */
static void cset_add(struct tcache *tc, uint64_t *net)
{
    for (unsigned i = 0; i < CSET_N; i++) {
        struct slab *s = rp_load_acquire_ptr((void *const *)&tc->cset[i]);
        if (!s)
            continue;
        unsigned c = s->cls;
        int32_t used = (int32_t)rp_load_relaxed_u32((const uint32_t *)(const void *)&s->used);
        int32_t ubase = (int32_t)rp_load_relaxed_u32((const uint32_t *)(const void *)&s->ubase);
        int64_t gap = (int64_t)used - ubase;
        if (c < NCLS && gap <= 0 && gap >= -(int64_t)s->cap &&
            rp_load_relaxed_ptr((void *const *)&tc->cset[i]) == s)
            net[c] += (uint64_t)gap;
    }
}

/* Sum one shard's counters. Hidden from TSan: the counters publish nothing,
 * and thread.c zeroes a recycled shard with a plain memset before it is
 * published through the (hidden) RCU list, an edge TSan cannot see. */
static void stat_shard(rp_tstate *ts, void *arg) /* O(classes) */
{
    struct stat_acc *a = arg;
    struct tcache *tc = tc_of_ts(ts);
    RP_HIDE_BEGIN();
    cset_add(tc, a->net); /* first: see cset_add */
    for (unsigned c = 0; c < NCLS; c++)
        a->net[c] += rp_load_relaxed_u64(&tc->bin[c].net);
    RP_HIDE_END();
}

/* Fill st->slab_bytes (see OBJECTS.md "Statistics"). Any thread, lock-free
 * (RCU walk of the shards). O(threads x classes). */
void rpi_slab_stats(rp_pool *p, rp_stats *st)
{
    struct slab_pool *sp = sp_of(p);
    if (!sp)
        return;
    struct stat_acc a;
    for (unsigned c = 0; c < NCLS; c++)
        a.net[c] = rp_load_relaxed_u64(&sp->ab[c].net);
    rpi_threads_foreach(p, stat_shard, &a);
    size_t bytes = 0;
    for (unsigned c = 0; c < NCLS; c++)
        if ((int64_t)a.net[c] > 0) /* transiently negative in a snapshot */
            bytes += (size_t)a.net[c] * cls_bytes[c];
    st->slab_bytes = bytes;
}

/* ---- rp_check ------------------------------------------------------------ */

struct chk {
    rp_pool *p;
    int bad;
    const void *ptr;
    char msg[320];
    uint64_t net[NCLS];
    uint64_t limit;       /* bound on any walk: carved granules */
    uint32_t ncset;       /* slabs of the shard's lists in its counted set */
};

static void chk_fail(struct chk *k, const void *ptr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Record the first failure (reported after the walks). O(1). */
static void chk_fail(struct chk *k, const void *ptr, const char *fmt, ...)
{
    if (k->bad)
        return;
    k->bad = 1;
    k->ptr = ptr;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->msg, sizeof k->msg, fmt, ap);
    va_end(ap);
}

/* Length of a free list of s (bounded), checking every link. O(cap). */
static uint32_t chk_list(struct chk *k, struct slab *s, void *list, const char *what)
{
    uint32_t n = 0;
    for (void *o = list; o; o = link_get(k->p, o)) {
        if (!link_ok(s, o)) {
            chk_fail(k, o, "check: %s list of the %u-byte slab at %p links to %p, "
                     "outside its handed-out slots", what, s->size, (void *)s->first, o);
            return n;
        }
        if (++n > s->cap) {
            chk_fail(k, s->first, "check: %s list of the slab at %p is longer than "
                     "its %u slots (cycle)", what, (void *)s->first, s->cap);
            return n;
        }
    }
    return n;
}

/* Check one slab: descriptor, format, owner, and the equations. O(cap). */
static void chk_slab(struct chk *k, struct slab *s, unsigned c, uint64_t owner,
                     unsigned where, void *bin_list)
{
    rp_pool *p = k->p;
    const struct cls_info *ci = &sp_of(p)->cls[c];
    rp_rdesc *d = desc_of(s);
    uint32_t w = rp_load_relaxed_u32(&d->word);
    if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) != RK_SLAB) {
        chk_fail(k, s->first, "check: slab %p of class %u has region word %#x",
                 (void *)s->first, c, w);
        return;
    }
    if (s->cls != c || s->where != where || s->size != ci->size || s->cap != ci->cap ||
        s->first != rpi_desc_base(p, d) || rpi_desc_bytes(p, d) != ci->slab_bytes) {
        chk_fail(k, s->first, "check: slab %p: class %u/%u, place %u/%u, size %u, "
                 "cap %u, or base does not match its class",
                 (void *)s->first, s->cls, c, s->where, where, s->size, s->cap);
        return;
    }
    if (s->cidx) {
        if ((where != W_CUR && where != W_PARTIAL) || s->cidx > CSET_N) {
            chk_fail(k, s->first, "check: slab %p (place %u) has counted-set slot %u",
                     (void *)s->first, where, s->cidx);
            return;
        }
        owner |= OWNER_CSET;
        k->ncset++;
    }
    if (rp_load_relaxed_u64(&s->owner) != owner) {
        chk_fail(k, s->first, "check: slab %p has owner word %#llx, expected %#llx",
                 (void *)s->first, (unsigned long long)s->owner,
                 (unsigned long long)owner);
        return;
    }
    if (s->flags & SLAB_QUARANTINE)
        return; /* damaged (reported when found): its lists are not trusted */
    uint64_t lim = rp_load_relaxed_u64(&s->lim);
    uint32_t nb = bumped(s);
    if (s->divc != ci->divc || nb > s->cap || (uint64_t)nb * step_of(s) != lim) {
        chk_fail(k, s->first, "check: slab %p: %u slots handed out of %u, limit %llu "
                 "(divc %#llx)", (void *)s->first, nb, s->cap, (unsigned long long)lim,
                 (unsigned long long)s->divc);
        return;
    }
    uint32_t nfree = chk_list(k, s, s->free, "local");
    uint32_t nbin = chk_list(k, s, bin_list, "bin");
    uint64_t xw = rp_load_relaxed_u64(&s->xword);
    uint32_t x = XW_COUNT(xw);
    if (k->bad)
        return;
    if (s->used < 0 || (uint32_t)s->used != nb - nfree || (uint64_t)x + nbin > (uint32_t)s->used) {
        chk_fail(k, s->first, "check: slab %p: used %d != handed-out %u - local free %u, "
                 "or remote %u + bin %u > used", (void *)s->first, s->used, nb, nfree, x, nbin);
        return;
    }
    if (where == W_ABANDONED) {
        if (XW_STATE(xw) != XS_ABANDONED || XW_AUSED(xw) != (uint32_t)s->used ||
            x >= XW_AUSED(xw))
            chk_fail(k, s->first, "check: abandoned slab %p: word %#llx, used %d",
                     (void *)s->first, (unsigned long long)xw, s->used);
    } else if (XW_STATE(xw) != XS_OWNED) {
        chk_fail(k, s->first, "check: owned slab %p has state %u", (void *)s->first,
                 XW_STATE(xw));
    }
    if ((where == W_PARTIAL || where == W_FULL) && s->used == 0)
        chk_fail(k, s->first, "check: empty slab %p not retired", (void *)s->first);
    if (where == W_EMPTY && s->used != 0)
        chk_fail(k, s->first, "check: cached empty slab %p has %d objects out",
                 (void *)s->first, s->used);
    if (where == W_PARTIAL && !s->free && nb == s->cap)
        chk_fail(k, s->first, "check: partial slab %p has nothing to give",
                 (void *)s->first);
    if (p->cfg.hardened && !k->bad) {
        uint32_t live = 0;
        for (uint32_t i = 0; i < s->cap; i += 64) {
            uint64_t bits = rp_load_relaxed_u64(bm_word(s, i));
            if (nb < i + 64)
                bits &= nb > i ? ~(uint64_t)0 >> (64 - (nb - i)) : 0;
            if (bits != rp_load_relaxed_u64(bm_word(s, i)))
                chk_fail(k, s->first, "check: slab %p: bitmap marks slots never handed out",
                         (void *)s->first);
            live += (uint32_t)__builtin_popcountll(bits);
        }
        if (live != (uint32_t)s->used - nbin - x)
            chk_fail(k, s->first, "check: slab %p: bitmap has %u live, lists say %u",
                     (void *)s->first, live, (uint32_t)s->used - nbin - x);
    }
}

/* Check every slab of an owner list. O(slabs x cap). */
static void chk_owner_list(struct chk *k, struct slab *head, unsigned c, uint64_t owner,
                           unsigned where)
{
    uint64_t n = 0;
    struct slab *s = head;
    if (!s)
        return;
    do {
        if (s->u.l.next->u.l.prev != s) {
            chk_fail(k, s->first, "check: slab list broken at %p", (void *)s->first);
            return;
        }
        chk_slab(k, s, c, owner, where, NULL);
        s = s->u.l.next;
    } while (s != head && ++n < k->limit && !k->bad);
}

/* Check one open batch of remote frees of tc: its slab is a live slab of
 * its class, and the chain has exactly rbmax - left objects of handed-out
 * slots, ending at tail, the head tagged and no other. O(objects in the
 * batch). */
static void chk_batch(struct chk *k, struct tcache *tc, const struct rbuf *e)
{
    rp_pool *p = k->p;
    struct slab *s = e->s;
    rp_rdesc *d = desc_of(s);
    uint32_t w = rp_load_relaxed_u32(&d->word);
    if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) != RK_SLAB || e->cls >= NCLS ||
        s->cls != e->cls || e->left >= sp_of(p)->cls[e->cls].rbmax || p->cfg.hardened) {
        chk_fail(k, s->first, "check: batch of remote frees for slab %p: region word "
                 "%#x, class %u/%u, %u frees left", (void *)s->first, w, e->cls, s->cls,
                 e->left);
        return;
    }
    uint32_t n = sp_of(p)->cls[e->cls].rbmax - e->left, i = 0;
    const void *o = e->head, *last = NULL;
    for (; o && i < n; i++) {
        uint64_t tag = tc->tagkey ^ (uint64_t)(uintptr_t)o;
        if (!link_ok(s, o) || (word1_load(o) == tag) != (o == e->head)) {
            chk_fail(k, o, "check: batch of remote frees for slab %p holds %p: not a "
                     "handed-out slot, or the tag is not on the head alone",
                     (void *)s->first, o);
            return;
        }
        last = o;
        o = raw_load(o);
    }
    if (i != n || o != NULL || last != e->tail)
        chk_fail(k, e->head, "check: batch of remote frees for slab %p: %u objects, "
                 "count says %u, or it does not end at its tail", (void *)s->first, i, n);
}

/* The counted set of tc against the slabs its lists hold (k->ncset): each
 * slot in use is marked in cmask and holds a current or partial slab of tc
 * that names the slot, and the lists hold as many slabs in the set as the
 * slots. Adds the set's uncounted frees to k->net. O(CSET_N). */
static void chk_cset(struct chk *k, struct tcache *tc)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < CSET_N && !k->bad; i++) {
        struct slab *s = rp_load_relaxed_ptr((void *const *)&tc->cset[i]);
        bool marked = (tc->cmask >> i) & 1u;
        if (!s) {
            if (marked)
                chk_fail(k, NULL, "check: counted-set slot %u marked but empty", i);
            continue;
        }
        n++;
        if (!marked || s->cidx != i + 1 || s->cls >= NCLS ||
            (s->where != W_CUR && s->where != W_PARTIAL) || s->net != &tc->bin[s->cls].net)
            chk_fail(k, s, "check: counted-set slot %u holds %p: slot %u, class %u, "
                     "place %u, or another thread's", i, (void *)s, s->cidx, s->cls,
                     s->where);
    }
    if (!k->bad && n != k->ncset)
        chk_fail(k, NULL, "check: counted set holds %u slabs, the lists %u", n, k->ncset);
    if (!k->bad)
        cset_add(tc, k->net);
}

/* Check one shard's slabs and open batches. O(its slabs x objects per
 * slab). */
static void chk_shard(rp_tstate *ts, void *arg)
{
    struct chk *k = arg;
    struct tcache *tc = tc_of_ts(ts);
    RP_HIDE_BEGIN(); /* quiescent by contract; other threads' data */
    k->ncset = 0;
    for (unsigned c = 0; c < NCLS; c++)
        k->net[c] += rp_load_relaxed_u64(&tc->bin[c].net);
    if (tc->inited) {
        for (unsigned c = 0; c < NCLS && !k->bad; c++) {
            struct cold *cd = &tc->cold[c];
            if (cd->cur)
                chk_slab(k, cd->cur, c, tc->token, W_CUR, tc->bin[c].free);
            else if (tc->bin[c].free)
                chk_fail(k, tc->bin[c].free, "check: class %u bin holds objects "
                         "without a current slab", c);
            chk_owner_list(k, cd->partial, c, tc->token, W_PARTIAL);
            chk_owner_list(k, cd->full, c, tc->token | OWNER_SLOW, W_FULL);
        }
        chk_cset(k, tc);
        /* Stealers are held off (rpi_slab_check); a slot in emask may be
         * empty (stolen, not yet noticed by the owner), a full slot must be
         * in emask. */
        for (unsigned i = 0; i < ESLOTS && !k->bad; i++) {
            struct slab *s = rp_load_acquire_ptr((void *const *)&tc->eslot[i]);
            if (!s)
                continue;
            if (!(tc->emask & (1u << i)))
                chk_fail(k, s, "check: empty-slab slot %u holds %p, not marked", i, (void *)s);
            else if (s->cls != tc->ecls[i])
                chk_fail(k, s, "check: empty-slab slot %u: class %u, recorded %u", i,
                         (unsigned)s->cls, (unsigned)tc->ecls[i]);
            else
                chk_slab(k, s, s->cls, tc->token | OWNER_SLOW, W_EMPTY, NULL);
        }
        for (unsigned i = 0; i < RB_N && !k->bad; i++)
            if (tc->rb[i].s)
                chk_batch(k, tc, &tc->rb[i]);
    }
    RP_HIDE_END();
}

/* ---- stealing kept empty slabs ------------------------------------------ */

struct esteal_ctx {
    rp_pool *p;
    bool all;
    uint32_t epoch;
    size_t n;
};

/* The slots of one shard, under the RCU read lock (rpi_threads_foreach). A
 * shard's blob is zeroed before it is published, so an unused tcache has
 * only empty slots. */
static void steal_shard_empties(rp_tstate *ts, void *arg)
{
    struct esteal_ctx *c = arg;
    struct tcache *tc = tc_of_ts(ts);
    for (unsigned i = 0; i < ESLOTS; i++) {
        void **slot = (void **)&tc->eslot[i];
        void *s = rp_load_relaxed_ptr(slot);
        if (!s)
            continue;
        /* A stale tick (the slot refilled since the load) only makes the
         * steal early; the CAS below still takes the slab it names. */
        if (!c->all && c->epoch - rp_load_relaxed_u32(&tc->ekept[i]) < c->p->rc_ticks)
            continue;
        /* CAS s -> NULL: races with the owner's exchange in empty_claim,
         * exactly one of them empties the slot and owns the slab; pairs
         * with the owner's release store in slab_retire. */
        if (rp_cas_ptr(slot, &s, NULL)) {
            slab_release(c->p, s);
            c->n++;
        }
    }
}

size_t rpi_slab_steal(rp_pool *p, bool all)
{
    if (!sp_of(p))
        return 0;
    uint32_t idle = 0;
    /* CAS 0 -> 1 (acquire): one steal at a time and never during the slab
     * check; pairs with the release stores that clear the flag. */
    if (!rp_cas_u32(&p->esteal_busy, &idle, 1))
        return 0;
    struct esteal_ctx c = {p, all, (uint32_t)rp_load_relaxed_u64(&p->rc_epoch), 0};
    rpi_threads_foreach(p, steal_shard_empties, &c);
    rp_store_release_u32(&p->esteal_busy, 0);
    return c.n;
}

/* rpi_slab_check's walk, stealers held off. */
static int slab_check(rp_pool *p, struct slab_pool *sp)
{
    struct chk k;
    memset(&k, 0, sizeof k);
    k.p = p;
    k.limit = rp_load_relaxed_u64(&p->hwm) + 1;
    for (unsigned c = 0; c < NCLS; c++) {
        const struct cls_info *ci = &sp->cls[c];
        if (ci->cap && (ci->cap * (size_t)ci->size > ci->slab_bytes ||
                        (p->cfg.hardened && ci->bm_off < ci->cap * (size_t)ci->size)))
            chk_fail(&k, NULL, "check: class %u layout overlaps", c);
        k.net[c] = rp_load_relaxed_u64(&sp->ab[c].net);
    }
    rpi_threads_foreach(p, chk_shard, &k);
    for (unsigned c = 0; c < NCLS && !k.bad; c++) {
        uint64_t n = 0;
        RP_HIDE_BEGIN();
        for (ck_stack_entry_t *e = CK_STACK_FIRST(&sp->ab[c].stack); e && !k.bad;
             e = CK_STACK_NEXT(e)) {
            if (++n > k.limit) {
                chk_fail(&k, NULL, "check: abandoned stack of class %u loops", c);
                break;
            }
            chk_slab(&k, slab_of_alink(e), c, 0, W_ABANDONED, NULL);
        }
        RP_HIDE_END();
        if (!k.bad && n != rp_load_relaxed_u64(&sp->ab[c].n))
            chk_fail(&k, NULL, "check: abandoned stack of class %u holds %llu slabs, "
                     "count says %llu", c, (unsigned long long)n,
                     (unsigned long long)rp_load_relaxed_u64(&sp->ab[c].n));
        if (!k.bad && (int64_t)k.net[c] < 0)
            chk_fail(&k, NULL, "check: class %u has %lld objects in use", c,
                     (long long)(int64_t)k.net[c]);
    }
    if (k.bad) {
        rpi_report(p, RP_ERR_INVARIANT, k.ptr, "%s", k.msg);
        return -EFAULT;
    }
    return 0;
}

/* rp_check's slab part: every shard's slabs and every abandoned stack (see
 * OBJECTS.md "Statistics and checks"). Exact at quiescent points. 0, or
 * -EFAULT after one RP_ERR_INVARIANT report. O(slabs x objects per slab). */
int rpi_slab_check(rp_pool *p)
{
    struct slab_pool *sp = sp_of(p);
    if (!sp)
        return 0;
    /* Hold stealers off: a slab stolen mid-check would look damaged. A
     * steal is short and never blocks (CAS 0 -> 1, see rpi_slab_steal). */
    for (uint32_t idle = 0; !rp_cas_u32(&p->esteal_busy, &idle, 1); idle = 0)
        sched_yield();
    int rc = slab_check(p, sp);
    rp_store_release_u32(&p->esteal_busy, 0);
    return rc;
}
