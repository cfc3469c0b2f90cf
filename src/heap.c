/* heap.c -- the constant-time fallback heap: half-fit (the o1heap design),
 * one per pool, behind one spinlock.
 *
 * Written from the published algorithm (Ogasawara's half-fit, as refined by
 * o1heap); see docs/HEAP.md for the design, the accounting and the
 * worst-case fragmentation bound.
 *
 * Concept. The heap owns the sub-range [p->heap_base, +p->heap_bytes) of the
 * reservation. It is set up once, at pool creation, over that whole range
 * (bins empty, nothing committed); afterwards it only ever grows its
 * committed prefix [base, base + committed) in doubling steps
 * (STEP0, 2*STEP0, 4*STEP0, ... capped at the capacity) and never starts over.
 * The committed prefix is tiled by fragments. Every fragment starts with a
 * 32-byte header and its size is a multiple of FRAG_MIN (64); a block handed
 * out is a whole fragment whose size is the request plus the header rounded
 * up to a power of two, so that any free fragment in bin
 * floor(log2(size / FRAG_MIN)) >= ceil-bin(request) fits it: allocation is one
 * find-first-set on the bin mask, no search. Free merges the fragment with
 * its free neighbours (both found in O(1) from the header) and puts the
 * result at the head of its bin.
 *
 * Physical memory. Every committed page of the heap is either CHARGED
 * (counted in the pool's physical account; maybe resident) or CLEAN (not
 * counted and provably not resident: never touched since commit, or purged
 * with MADV_DONTNEED and not touched since). Clean pages exist only inside
 * free fragments, as one page range [clean_lo, clean_hi) per free fragment
 * that lies in the fragment's interior
 *   I(f) = [pg_up(f + FREE_META), pg_dn(f + size(f)))
 * (the heap never writes or reads there; headers and free links live in the
 * first FREE_META bytes). Once the charged ("dirty") part of a free
 * fragment's interior reaches PURGE_MIN bytes, it is purged and uncharged;
 * below that it stays resident, to be reused first without a page fault.
 * Handing out a block charges the clean pages it takes back (budget-checked:
 * a refusal is an OOM).
 *
 * Threads. Any thread may call every function here. All heap state (bins,
 * mask, headers, counters) is read and written only under h->lock, except
 * the st_* statistics, which are written under the lock with relaxed stores
 * and read lock-free by rpi_heap_stats. The critical sections are hidden from
 * ThreadSanitizer (RP_HIDE_BEGIN/END); what TSan sees instead is the user
 * contract "a free of memory happens-before the next allocation of that
 * memory": release on every page the freed block overlaps (before it becomes
 * allocatable), acquire on every page the new block overlaps (after it is
 * handed out). Page granules rather than the block address, because a split
 * or merge hands the same bytes out again at a different block address.
 *
 * Invariants (all under h->lock; rpi_heap_check verifies each):
 *   base + committed == end of the last fragment (h->top); fragments tile
 *     [base, base + committed) with next(f) = f + size(f) and
 *     prev_size(next(f)) == size(f)
 *   committed in {0} u {min(STEP0 * 2^k, capacity)}, committed <= capacity
 *   no two physically adjacent fragments are both free
 *   bin i holds exactly the free fragments with floor(log2(size/64)) == i;
 *     bit i of mask == (bin i not empty)
 *   allocated == sum of sizes of used fragments; nused, nfree their counts
 *   clean_bytes == sum over free f of (clean_hi - clean_lo)
 *   heap physical == committed - clean_bytes == what the heap has charged
 *     to the pool (p->acct.heap_physical_bytes at quiescent points)
 *   resident(heap range) <= heap physical
 *     <= allocated + 2 page * (nused + nfree) + PURGE_MIN * nfree,
 *   nfree <= nused + 1
 *     (over-count: untouched pages of live blocks, and the < PURGE_MIN of
 *     charged interior plus boundary pages a free fragment may keep)
 *   check(f) == seal(f, size, prev_size, req) for every fragment header
 *
 * Lock order: h->lock is a leaf with respect to the rest of the heap; while
 * holding it the heap calls the account (lock-free counters; a refused
 * charge may purge free regions), rpi_heap_commit (reserve.c; mprotect) and
 * rpi_os_purge (madvise). It never calls the error hook while holding it:
 * reports are formatted under the lock and delivered after the unlock.
 */
#include "internal.h"

#include <ck_spinlock.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Knobs.                                                                    */

/* First commit step; later steps double the committed size. */
#ifndef RP_HEAP_STEP0_BYTES
#define RP_HEAP_STEP0_BYTES ((size_t)1 << 20)
#endif
/* A free fragment's resident interior is purged once it reaches this size. */
#ifndef RP_HEAP_PURGE_BYTES
#define RP_HEAP_PURGE_BYTES ((size_t)64 << 10)
#endif
/* Lock flavour (for measurements, see docs/HEAP.md):
 *   0 test-and-test-and-set on ck_spinlock_fas, yielding the CPU after
 *     SPINS failed polls (default); 1 ck_spinlock_fas_lock (pure spinning);
 *   2 ck_spinlock_ticket; 3 ck_spinlock_mcs. */
#ifndef RP_HEAP_LOCK
#define RP_HEAP_LOCK 0
#endif
#ifndef RP_HEAP_SPINS
#define RP_HEAP_SPINS 128
#endif

#define HDR_BYTES ((size_t)32)  /* fragment header; payload offset */
#define FRAG_MIN ((size_t)64)   /* every fragment size is a multiple */
#define FREE_META ((size_t)64)  /* bytes of a free fragment the heap uses */
#define USED_BIT ((uint64_t)1)
#define NBINS 64

#define PURGE_MIN RP_HEAP_PURGE_BYTES
#define STEP0 RP_HEAP_STEP0_BYTES

_Static_assert((STEP0 & (STEP0 - 1)) == 0, "step0 is a power of two");
_Static_assert(PURGE_MIN >= FRAG_MIN, "purge threshold");

/* ASan: every byte of the heap except live payloads is poisoned, so the
 * functions that read or write fragment headers and free links opt out of
 * ASan instrumentation. */
#if RP_ASAN
#define NOASAN __attribute__((no_sanitize("address")))
#else
#define NOASAN
#endif

/* ------------------------------------------------------------------------ */
/* Fragments.                                                                */

typedef struct frag {
    uint64_t size_used;  /* bytes incl. header, multiple of FRAG_MIN; bit 0: used */
    uint64_t prev_size;  /* bytes of the fragment just below; 0 for the first */
    uint64_t req;        /* used: bytes requested; free: 0 */
    uint64_t check;      /* seal() of the fields above and the address */
    /* Free fragments only (the first payload bytes): */
    struct frag *next_free, *prev_free; /* bin list, NULL-terminated */
    uintptr_t clean_lo, clean_hi;       /* purged pages, lo == hi if none */
} frag;

_Static_assert(offsetof(frag, next_free) == HDR_BYTES, "header is 32 bytes");
_Static_assert(sizeof(frag) == FREE_META, "free metadata fits the minimum fragment");
_Static_assert(HDR_BYTES % 16 == 0, "payload stays 16-byte aligned");

typedef struct range {
    uintptr_t lo, hi;
} range;

/* Failure kinds an operation can end with; counted after the unlock. */
enum hfail {
    HF_NONE = 0,
    HF_FULL,      /* no fragment large enough and no room to grow */
    HF_PHYS,      /* physical budget refused (counted by the account) */
    HF_COMMIT,    /* rpi_heap_commit refused (counted by reserve.c) */
    HF_CORRUPT    /* damaged metadata met on the way (reported) */
};

/* What an operation leaves for after the unlock: the hook must not run
 * under the lock, and uncharging late keeps the account >= resident. */
typedef struct op {
    size_t uncharge;      /* physical bytes released by purges */
    enum hfail fail;
    rp_error err;         /* 0: nothing to report */
    const void *err_ptr;
    char msg[200];
} op;

typedef struct rp_heap {
#if RP_HEAP_LOCK == 2
    ck_spinlock_ticket_t lock;
#elif RP_HEAP_LOCK == 3
    ck_spinlock_mcs_t lock;
    ck_spinlock_mcs_context_t fork_node;   /* held from prefork to postfork */
#else
    ck_spinlock_fas_t lock;
#endif
    /* Under lock. */
    char *base __attribute__((aligned(RP_CACHELINE)));
    size_t capacity;       /* bytes the heap may ever commit (page multiple) */
    size_t committed;      /* bytes committed, a prefix of the range */
    size_t step0;          /* first commit step: min(STEP0, capacity) */
    size_t page;
    frag *top;             /* the highest fragment; NULL iff committed == 0 */
    uint64_t mask;         /* bit i: bins[i] not empty */
    uint64_t secret;       /* per-heap key of the header seal */
    size_t clean_bytes;    /* sum of free fragments' clean ranges */
    size_t allocated;      /* sum of used fragment sizes */
    size_t nused, nfree;
    uint64_t purge_failures;
    frag *bins[NBINS];
    /* Statistics: written under lock (relaxed stores), read lock-free. */
    uint64_t st_allocated __attribute__((aligned(RP_CACHELINE)));
    uint64_t st_peak, st_largest, st_oom, st_committed, st_physical;
} rp_heap;

/* ------------------------------------------------------------------------ */
/* Small helpers. Each O(1).                                                 */

NOASAN static inline size_t fsize(const frag *f)
{
    return (size_t)(f->size_used & ~USED_BIT);
}
NOASAN static inline bool fused(const frag *f) { return (f->size_used & USED_BIT) != 0; }
NOASAN static inline range rclean(const frag *f)
{
    return (range){f->clean_lo, f->clean_hi};
}
static inline unsigned bin_of(size_t bytes) { return rp_log2(bytes / FRAG_MIN); }
static inline size_t rlen(range r) { return r.hi > r.lo ? (size_t)(r.hi - r.lo) : 0; }
static inline uintptr_t pg_up(const rp_heap *h, uintptr_t x)
{
    return (x + h->page - 1) & ~(uintptr_t)(h->page - 1);
}
static inline uintptr_t pg_dn(const rp_heap *h, uintptr_t x)
{
    return x & ~(uintptr_t)(h->page - 1);
}
static inline uintptr_t heap_end(const rp_heap *h)
{
    return (uintptr_t)h->base + h->committed;
}

static inline range intersect(range a, range b)
{
    range r = {a.lo > b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi};
    if (r.lo >= r.hi)
        r.lo = r.hi = 0;
    return r;
}

/* Interior pages of a fragment at a of `bytes`: the heap never touches them
 * while the fragment is free. Empty range as {0, 0}. */
static inline range interior(const rp_heap *h, uintptr_t a, size_t bytes)
{
    range r = {pg_up(h, a + FREE_META), pg_dn(h, a + bytes)};
    if (r.lo >= r.hi)
        r.lo = r.hi = 0;
    return r;
}

/* Fragment size serving a request: a power of two >= req + header, at least
 * FRAG_MIN; 0 if that exceeds `limit`. */
static inline size_t frag_for(size_t req, size_t limit)
{
    if (req > limit || req + HDR_BYTES > limit)
        return 0;
    size_t need = req + HDR_BYTES;
    size_t f = need <= FRAG_MIN ? FRAG_MIN : (size_t)1 << (rp_log2(need - 1) + 1);
    return f <= limit ? f : 0;
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* Check value of a header: the fields enter through independent odd
 * multipliers (so a change of any one field changes the sum), then one
 * bijective mix. Cost: 3 independent multiplies + one mix64. */
NOASAN static uint64_t seal(const rp_heap *h, const frag *f)
{
    uint64_t x = ((uint64_t)(uintptr_t)f ^ h->secret) +
                 f->size_used * 0x9e3779b97f4a7c15ull +
                 f->prev_size * 0xc2b2ae3d27d4eb4full +
                 f->req * 0x165667b19e3779f9ull;
    return mix64(x) | 1; /* never 0: a wiped header never verifies */
}

NOASAN static void reseal(const rp_heap *h, frag *f) { f->check = seal(h, f); }

/* A wiped header (absorbed by a merge) can never pass frag_ok. */
NOASAN static void wipe(frag *f)
{
    f->size_used = 0;
    f->prev_size = 0;
    f->req = 0;
    f->check = 0;
}

/* Header at f is intact and consistent with the heap's geometry. */
NOASAN static bool frag_ok(const rp_heap *h, const frag *f)
{
    uintptr_t a = (uintptr_t)f, base = (uintptr_t)h->base;
    if (a < base || a >= heap_end(h) || (a - base) % FRAG_MIN)
        return false;
    size_t s = fsize(f);
    if (s < FRAG_MIN || s % FRAG_MIN || s > heap_end(h) - a)
        return false;
    if (f->prev_size % FRAG_MIN || f->prev_size > a - base)
        return false;
    return f->check == seal(h, f);
}

NOASAN static frag *fnext(const rp_heap *h, const frag *f)
{
    uintptr_t n = (uintptr_t)f + fsize(f);
    return n < heap_end(h) ? (frag *)n : NULL;
}

NOASAN static frag *fprev(const frag *f)
{
    return f->prev_size ? (frag *)((uintptr_t)f - f->prev_size) : NULL;
}

/* Bins: doubly linked, newest first. O(1). */
NOASAN static void bin_push(rp_heap *h, frag *f)
{
    unsigned i = bin_of(fsize(f));
    f->prev_free = NULL;
    f->next_free = h->bins[i];
    if (f->next_free)
        f->next_free->prev_free = f;
    h->bins[i] = f;
    h->mask |= (uint64_t)1 << i;
}

NOASAN static void bin_remove(rp_heap *h, frag *f)
{
    unsigned i = bin_of(fsize(f));
    if (f->prev_free)
        f->prev_free->next_free = f->next_free;
    else
        h->bins[i] = f->next_free;
    if (f->next_free)
        f->next_free->prev_free = f->prev_free;
    if (!h->bins[i])
        h->mask &= ~((uint64_t)1 << i);
    f->next_free = f->prev_free = NULL;
}

/* After f changed size, the fragment above records the new size. O(1). */
NOASAN static void link_next(rp_heap *h, frag *f)
{
    frag *n = fnext(h, f);
    if (n) {
        n->prev_size = fsize(f);
        reseal(h, n);
    }
}

static void publish_stats(rp_pool *p, rp_heap *h)
{
    size_t phys = h->committed - h->clean_bytes;
    rp_store_relaxed_u64(&h->st_allocated, h->allocated);
    rp_max_relaxed_u64(&h->st_peak, h->allocated);
    rp_store_relaxed_u64(&h->st_committed, h->committed);
    rp_store_relaxed_u64(&h->st_physical, phys);
    rp_store_relaxed_u64(&p->acct.heap_physical_bytes, phys);
}

static void set_error(op *o, rp_error code, const void *ptr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void set_error(op *o, rp_error code, const void *ptr, const char *fmt, ...)
{
    if (o->err)
        return; /* keep the first */
    o->err = code;
    o->err_ptr = ptr;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->msg, sizeof o->msg, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------ */
/* The lock. Uncontended: one atomic swap. Contended (flavour 0): spin on a
 * plain load with a pause, then yield the CPU so that a preempted holder can
 * run (2 cores, 8 threads: pure spinning burns whole time slices). The fence
 * in trylock (ck_pr_fence_lock) pairs with the one in unlock. */

typedef struct lockctx {
#if RP_HEAP_LOCK == 3
    ck_spinlock_mcs_context_t node;
#else
    int unused;
#endif
} lockctx;

static void heap_lock(rp_heap *h, lockctx *c)
{
    (void)c;
#if RP_HEAP_LOCK == 0
    if (RP_LIKELY(ck_spinlock_fas_trylock(&h->lock)))
        return;
    for (;;) {
        for (unsigned i = 0; ck_spinlock_fas_locked(&h->lock); i++) {
            if (i < RP_HEAP_SPINS)
                ck_pr_stall();
            else
                sched_yield();
        }
        if (ck_spinlock_fas_trylock(&h->lock))
            return;
    }
#elif RP_HEAP_LOCK == 1
    ck_spinlock_fas_lock(&h->lock);
#elif RP_HEAP_LOCK == 2
    ck_spinlock_ticket_lock(&h->lock);
#else
    ck_spinlock_mcs_lock(&h->lock, &c->node);
#endif
}

static void heap_unlock(rp_heap *h, lockctx *c)
{
    (void)c;
#if RP_HEAP_LOCK == 0 || RP_HEAP_LOCK == 1
    ck_spinlock_fas_unlock(&h->lock);
#elif RP_HEAP_LOCK == 2
    ck_spinlock_ticket_unlock(&h->lock);
#else
    ck_spinlock_mcs_unlock(&h->lock, &c->node);
#endif
}

/* Enter/leave a critical section: lock and every metadata access inside are
 * invisible to TSan. */
#define CS_ENTER(h, c)                                                        \
    do {                                                                      \
        RP_HIDE_BEGIN();                                                      \
        heap_lock((h), (c));                                                  \
    } while (0)
#define CS_LEAVE(h, c)                                                        \
    do {                                                                      \
        heap_unlock((h), (c));                                                \
        RP_HIDE_END();                                                        \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Happens-before for TSan: one sync object per page the block overlaps
 * (page address + 1, so that it never coincides with a user's own sync
 * object placed at a page boundary). No-op unless the TSan runtime is
 * linked. Cost: O(bytes / page) under TSan, one branch otherwise. */

static void hb_pages(const rp_heap *h, const void *blk, size_t bytes, bool release)
{
    if (!__tsan_release || !bytes)
        return;
    uintptr_t a = pg_dn(h, (uintptr_t)blk), e = (uintptr_t)blk + bytes;
    for (; a < e; a += h->page) {
        if (release)
            rp_hb_release((const void *)(a + 1));
        else
            rp_hb_acquire((const void *)(a + 1));
    }
}

/* ------------------------------------------------------------------------ */
/* Purging. Under lock.                                                      */

/* madvise [lo, hi); true on success (or nothing to do). Cost: one syscall. */
static bool purge(rp_heap *h, uintptr_t lo, uintptr_t hi)
{
    if (lo >= hi)
        return true;
    if (rpi_os_purge((void *)lo, (size_t)(hi - lo), RP_PURGE_DONTNEED) == 0)
        return true;
    h->purge_failures++;
    return false;
}

/* Give the free fragment m (size final, not in a bin) its clean range, seal
 * it and put it in its bin. `parts` are the clean ranges m inherited, sorted,
 * disjoint, inside I(m), already counted in h->clean_bytes (not charged);
 * the rest of I(m) ("dirty") is charged.
 * Policy: once the dirty part of the interior reaches PURGE_MIN, purge it
 * all (c = I(m)). Below that, keep the one inherited range, or join two by
 * purging the gap between them (the clean set of a fragment is one range).
 * So a free fragment never holds PURGE_MIN or more of resident interior, and
 * small frees next to a large purged fragment make no system call: their
 * pages are reused first, from the fragment's low end. When a purge fails, m
 * keeps the largest inherited range and the other inherited pages are
 * charged back (over-count, never under-count).
 * Cost: O(1) with up to 3 madvise calls. */
NOASAN static void settle(rp_pool *p, rp_heap *h, frag *m, const range *parts,
                          int np, op *o)
{
    range I = interior(h, (uintptr_t)m, fsize(m));
    size_t before = 0;
    for (int k = 0; k < np; k++)
        before += rlen(parts[k]);

    range c = {0, 0};
    bool ok = true;
    if (rlen(I) - before >= PURGE_MIN) {
        uintptr_t cur = I.lo;
        for (int k = 0; k < np && ok; k++) {
            ok = purge(h, cur, parts[k].lo);
            cur = parts[k].hi;
        }
        ok = ok && purge(h, cur, I.hi);
        c = I;
    } else if (np == 1) {
        c = parts[0];
    } else if (np == 2) {
        ok = purge(h, parts[0].hi, parts[1].lo);
        c = (range){parts[0].lo, parts[1].hi};
    }

    if (ok) {
        /* Every inherited part lies inside c; the rest of c was charged. */
        o->uncharge += rlen(c) - before;
        h->clean_bytes += rlen(c) - before;
    } else {
        int best = -1;
        for (int k = 0; k < np; k++)
            if (best < 0 || rlen(parts[k]) > rlen(parts[best]))
                best = k;
        c = best >= 0 ? parts[best] : (range){0, 0};
        size_t back = before - rlen(c);
        if (back) {
            rpi_phys_force(p, back);
            h->clean_bytes -= back;
        }
    }
    if (!rlen(c))
        c.lo = c.hi = 0;
    m->clean_lo = c.lo;
    m->clean_hi = c.hi;
    m->size_used = fsize(m);
    m->req = 0;
    reseal(h, m);
    bin_push(h, m);
    h->nfree++;
}

/* ------------------------------------------------------------------------ */
/* Growth. Under lock. Commits the next doubling step large enough that the
 * top free fragment (extended, or new) holds fsz bytes.
 * Cost: O(1) plus one mprotect (rpi_heap_commit) and at most 3 madvise. */

NOASAN static bool grow(rp_pool *p, rp_heap *h, size_t fsz, op *o)
{
    frag *t = h->top;
    bool extend = t && !fused(t);
    size_t have = extend ? fsize(t) : 0;
    size_t want = h->committed + (fsz - have); /* have < fsz, else a bin fits */
    size_t c = h->committed ? h->committed : h->step0;
    while (c < want && c < h->capacity)
        c *= 2;
    if (c > h->capacity)
        c = h->capacity;
    if (c < want || c <= h->committed) {
        o->fail = HF_FULL;
        return false;
    }
    size_t g = c - h->committed;
    uintptr_t old_end = heap_end(h);

    /* A new top fragment writes its header into the first new page. */
    if (!extend && rpi_phys_charge(p, h->page) != 0) {
        o->fail = HF_PHYS;
        return false;
    }
    if (rpi_heap_commit(p, (void *)old_end, g) != 0) {
        if (!extend)
            rpi_phys_uncharge(p, h->page);
        o->fail = HF_COMMIT;
        return false;
    }
    rp_poison((void *)old_end, g);
    h->committed = c;

    if (extend) {
        range parts[2];
        int np = 0;
        bin_remove(h, t);
        h->nfree--;
        if (rlen(rclean(t)))
            parts[np++] = rclean(t);
        parts[np++] = (range){old_end, old_end + g}; /* never touched */
        h->clean_bytes += g;
        t->size_used = fsize(t) + g;
        settle(p, h, t, parts, np, o);
    } else {
        frag *n = (frag *)old_end;
        range fresh = {old_end + h->page, old_end + g};
        n->size_used = g;
        n->prev_size = t ? fsize(t) : 0;
        n->req = 0;
        h->clean_bytes += rlen(fresh);
        settle(p, h, n, &fresh, rlen(fresh) ? 1 : 0, o);
        h->top = n;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Allocation. Under lock. Cost: O(1) (find-first-set on the mask), plus a
 * growth step when no bin fits. */

/* Hand out fsz bytes from the free fragment f; split off the rest. */
NOASAN static void *take(rp_pool *p, rp_heap *h, frag *f, size_t req,
                         size_t fsz, op *o)
{
    uintptr_t a = (uintptr_t)f;
    size_t s = fsize(f), rs = s - fsz;
    range c = rclean(f), cr = {0, 0};
    if (rs)
        cr = intersect(c, interior(h, a + fsz, rs));
    /* Clean pages leaving the clean set: the block's, and the remainder's
     * header page. They are charged before anything is written. */
    size_t charge = rlen(c) - rlen(cr);
    if (charge && rpi_phys_charge(p, charge) != 0) {
        o->fail = HF_PHYS;
        return NULL;
    }
    bin_remove(h, f);
    h->nfree--;
    h->clean_bytes -= charge;
    f->size_used = fsz | USED_BIT;
    f->req = req;
    reseal(h, f);
    if (rs) {
        frag *r = (frag *)(a + fsz);
        r->size_used = rs;
        r->prev_size = fsz;
        r->req = 0;
        r->clean_lo = cr.lo;
        r->clean_hi = cr.hi;
        reseal(h, r);
        link_next(h, r);
        if (h->top == f)
            h->top = r;
        bin_push(h, r);
        h->nfree++;
    }
    h->nused++;
    h->allocated += fsz;
    return (void *)(a + HDR_BYTES);
}

NOASAN static void *alloc_locked(rp_pool *p, rp_heap *h, size_t req,
                                 size_t fsz, op *o)
{
    unsigned i = bin_of(fsz);
    for (int round = 0; round < 2; round++) {
        uint64_t cand = h->mask & (~(uint64_t)0 << i);
        if (cand) {
            unsigned j = (unsigned)__builtin_ctzll(cand);
            frag *f = h->bins[j];
            if (!frag_ok(h, f) || fused(f) || bin_of(fsize(f)) != j ||
                fsize(f) < fsz) {
                set_error(o, RP_ERR_CORRUPT, f,
                          "heap: free fragment %p at the head of bin %u is "
                          "damaged", (void *)f, j);
                o->fail = HF_CORRUPT;
                return NULL;
            }
            return take(p, h, f, req, fsz, o);
        }
        if (round == 0 && !grow(p, h, fsz, o))
            return NULL;
    }
    /* Unreachable: growth leaves a free fragment >= fsz in a bin >= i. */
    set_error(o, RP_ERR_CORRUPT, NULL, "heap: no fit after growing");
    o->fail = HF_CORRUPT;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Pointer validation. Under lock.                                           */

/* Name the error for a pointer that is not a live block's payload, by
 * walking the fragments from the base to the one containing it. Runs only on
 * the error path. Cost: O(fragments below ptr). */
NOASAN static void diagnose(rp_pool *p, rp_heap *h, const void *ptr,
                            const char *what, op *o)
{
    (void)p;
    uintptr_t x = (uintptr_t)ptr, hp = x - HDR_BYTES;
    size_t prev = 0;
    for (frag *f = (frag *)h->base; (uintptr_t)f < heap_end(h);
         f = (frag *)((uintptr_t)f + fsize(f))) {
        if (!frag_ok(h, f) || f->prev_size != prev) {
            if ((uintptr_t)f == hp)
                set_error(o, RP_ERR_CORRUPT, ptr,
                          "heap: %s %p: its fragment header is damaged",
                          what, ptr);
            else
                set_error(o, RP_ERR_CORRUPT, ptr,
                          "heap: %s %p: the fragment header at %p is damaged",
                          what, ptr, (void *)f);
            return;
        }
        prev = fsize(f);
        if (x >= (uintptr_t)f + fsize(f))
            continue;
        if (fused(f)) {
            set_error(o, RP_ERR_INTERIOR, ptr,
                      "heap: %s %p: points inside the live block %p "
                      "(%zu usable bytes), not at its start", what, ptr,
                      (void *)((uintptr_t)f + HDR_BYTES), fsize(f) - HDR_BYTES);
        } else {
            set_error(o, RP_ERR_NOT_LIVE, ptr,
                      "heap: %s %p: points into free heap space (never "
                      "allocated, or already freed)", what, ptr);
            /* The quick check read the would-be header at hp. If hp lies in
             * a purged page, that read mapped the zero page, which mincore()
             * counts as resident: purge the page again. */
            if (hp % FRAG_MIN == 0 && hp >= f->clean_lo && hp < f->clean_hi)
                (void)rpi_os_purge((void *)pg_dn(h, hp), h->page,
                                   RP_PURGE_DONTNEED);
        }
        return;
    }
    set_error(o, RP_ERR_CORRUPT, ptr, "heap: %s %p: fragments do not reach it",
              what, ptr);
}

/* The header of the live block whose payload starts at ptr, or NULL with the
 * error recorded in o. The caller has checked ptr lies in the heap range. */
NOASAN static frag *live_block(rp_pool *p, rp_heap *h, const void *ptr,
                               const char *what, op *o)
{
    uintptr_t x = (uintptr_t)ptr, off = x - (uintptr_t)h->base;
    if (off >= h->committed) {
        set_error(o, RP_ERR_NOT_LIVE, ptr,
                  "heap: %s %p: beyond the heap's committed part (never "
                  "allocated)", what, ptr);
        return NULL;
    }
    if (off % FRAG_MIN != HDR_BYTES) {
        diagnose(p, h, ptr, what, o);
        return NULL;
    }
    frag *f = (frag *)(x - HDR_BYTES);
    if (!frag_ok(h, f)) {
        diagnose(p, h, ptr, what, o);
        return NULL;
    }
    if (!fused(f)) {
        set_error(o, RP_ERR_NOT_LIVE, ptr,
                  "heap: %s %p: block is free (double free, or never "
                  "allocated)", what, ptr);
        return NULL;
    }
    return f;
}

/* ------------------------------------------------------------------------ */
/* Free. Under lock. Cost: O(1) plus up to 3 madvise calls when the merged
 * fragment's resident interior reaches PURGE_MIN. */

NOASAN static void free_locked(rp_pool *p, rp_heap *h, void *ptr, op *o)
{
    frag *b = live_block(p, h, ptr, "free of", o);
    if (!b)
        return;
    frag *pv = fprev(b), *nx = fnext(h, b);
    if (pv && (!frag_ok(h, pv) || fsize(pv) != b->prev_size)) {
        set_error(o, RP_ERR_CORRUPT, ptr,
                  "heap: free of %p: header of the fragment below (%p) is "
                  "damaged; block not freed", ptr, (void *)pv);
        return;
    }
    if (nx && (!frag_ok(h, nx) || nx->prev_size != fsize(b))) {
        set_error(o, RP_ERR_CORRUPT, ptr,
                  "heap: free of %p: header of the fragment above (%p) is "
                  "damaged; block not freed", ptr, (void *)nx);
        return;
    }

    size_t bs = fsize(b);
    /* TSan: the caller's accesses to the block happen-before whoever gets
     * these bytes next; that thread acquires the same pages (alloc). The
     * release must be visible, so it steps out of the hidden section. */
    RP_HIDE_END();
    hb_pages(h, ptr, bs - HDR_BYTES, true);
    RP_HIDE_BEGIN();
    rp_poison(ptr, bs - HDR_BYTES);

    h->nused--;
    h->allocated -= bs;
    range parts[2];
    int np = 0;
    frag *m = b;
    size_t ms = bs;
    if (pv && !fused(pv)) {
        bin_remove(h, pv);
        h->nfree--;
        if (rlen(rclean(pv)))
            parts[np++] = rclean(pv);
        m = pv;
        ms += fsize(pv);
    }
    if (nx && !fused(nx)) {
        bin_remove(h, nx);
        h->nfree--;
        if (rlen(rclean(nx)))
            parts[np++] = rclean(nx);
        ms += fsize(nx);
        if (h->top == nx)
            h->top = m;
        wipe(nx);
    }
    if (h->top == b)
        h->top = m;
    if (m != b)
        wipe(b);
    m->size_used = ms;
    link_next(h, m);
    settle(p, h, m, parts, np, o);
}

/* ------------------------------------------------------------------------ */
/* Entry points.                                                             */

static inline rp_heap *heap_of(const rp_pool *p) { return (rp_heap *)p->heap; }

/* Deliver what an operation left for after the unlock. */
static void finish(rp_pool *p, op *o)
{
    if (o->uncharge)
        rpi_phys_uncharge(p, o->uncharge);
    if (o->err)
        rpi_report(p, o->err, o->err_ptr, "%s", o->msg);
}

/* Set up the heap state over [p->heap_base, +p->heap_bytes). Nothing is
 * committed until the first allocation. Called once, before the pool is
 * shared. Returns 0 or -ENOMEM (metadata). Cost: O(1). */
int rpi_heap_init(rp_pool *p)
{
    rp_heap *h = rpi_meta_alloc(p, sizeof(rp_heap), RP_CACHELINE);
    if (!h)
        return -ENOMEM;
    size_t page = p->page ? p->page : rpi_os_page_size();
    uintptr_t b = ((uintptr_t)p->heap_base + page - 1) & ~(uintptr_t)(page - 1);
    size_t cap = 0;
    if (p->heap_base && p->heap_bytes > b - (uintptr_t)p->heap_base)
        cap = (p->heap_bytes - (size_t)(b - (uintptr_t)p->heap_base)) &
              ~(page - 1);
#if RP_HEAP_LOCK == 2
    ck_spinlock_ticket_init(&h->lock);
#elif RP_HEAP_LOCK == 3
    ck_spinlock_mcs_init(&h->lock);
#else
    ck_spinlock_fas_init(&h->lock);
#endif
    h->base = (char *)b;
    h->capacity = cap;
    h->page = page;
    h->step0 = cap < STEP0 ? cap : STEP0;
    if (h->step0 < page)
        h->step0 = cap;
    h->secret = mix64((uint64_t)(uintptr_t)h ^ p->id ^ (rpi_now_ms() << 20));
    /* The pool is not shared yet; the first lock acquisition publishes. */
    p->heap = h;
    return 0;
}

/* Largest request the heap can ever serve (0: no heap). O(1), any thread. */
size_t rpi_heap_max_request(const rp_pool *p)
{
    const rp_heap *h = heap_of(p);
    if (!h || h->capacity < FRAG_MIN)
        return 0;
    return ((size_t)1 << rp_log2(h->capacity)) - HDR_BYTES;
}

/* Allocation shared by the entry points. count: count a refusal for lack of
 * space in the pool's fail_other (rpi_heap_alloc) or not (try_alloc). */
static void *heap_alloc(rp_pool *p, size_t size, bool count)
{
    rp_heap *h = heap_of(p);
    if (RP_UNLIKELY(!size)) {
        if (count)
            rpi_count_fail(p, RP_FAIL_OTHER);
        errno = ENOMEM;
        return NULL;
    }
    if (h)
        rp_max_relaxed_u64(&h->st_largest, size);
    size_t fsz = h ? frag_for(size, h->capacity) : 0;
    if (RP_UNLIKELY(!fsz)) {
        if (h)
            rp_add_relaxed_u64(&h->st_oom, 1);
        if (count)
            rpi_count_fail(p, RP_FAIL_OTHER);
        errno = ENOMEM;
        return NULL;
    }

    op o = {0};
    lockctx lc;
    CS_ENTER(h, &lc);
    void *blk = alloc_locked(p, h, size, fsz, &o);
    publish_stats(p, h);
    CS_LEAVE(h, &lc);

    finish(p, &o);
    if (RP_UNLIKELY(!blk)) {
        rp_add_relaxed_u64(&h->st_oom, 1);
        /* rpi_heap_commit counts its own refusals; the account leaves the
         * physical ones to the caller. */
        if (o.fail == HF_PHYS)
            rpi_count_fail(p, RP_FAIL_PHYSICAL);
        else if (count && (o.fail == HF_FULL || o.fail == HF_CORRUPT))
            rpi_count_fail(p, RP_FAIL_OTHER);
        errno = ENOMEM;
        return NULL;
    }
    rp_unpoison(blk, fsz - HDR_BYTES);
    /* TSan: pairs with the page releases in free_locked. */
    hb_pages(h, blk, fsz - HDR_BYTES, false);
    return blk;
}

/* Allocate size bytes from the heap. NULL + ENOMEM iff there is no heap,
 * size is 0 or larger than rpi_heap_max_request, no fragment fits and the
 * heap cannot grow, or a budget / the OS refuses; each refusal of a nonzero
 * request is counted in heap_oom_count and in the pool's failure counters.
 * Any thread. Cost: O(1); takes the heap lock; may call the OS (growth). */
void *rpi_heap_alloc(rp_pool *p, size_t size) { return heap_alloc(p, size, true); }

/* As rpi_heap_alloc, but a refusal for lack of heap space is not counted in
 * the pool's fail_other (for callers that fall back to another allocator);
 * heap_oom_count still counts it. */
void *rpi_heap_try_alloc(rp_pool *p, size_t size) { return heap_alloc(p, size, false); }

bool rpi_heap_owns(const rp_pool *p, const void *ptr)
{
    return p->heap_bytes &&
           (uintptr_t)ptr - (uintptr_t)p->heap_base < p->heap_bytes;
}

/* Outside-the-range errors: no lock needed (the range is constant).
 * Returns true if ptr is in the heap range. */
static bool in_heap_or_report(rp_pool *p, const void *ptr, const char *what)
{
    if (heap_of(p) && rpi_heap_owns(p, ptr) &&
        (uintptr_t)ptr >= (uintptr_t)heap_of(p)->base)
        return true;
    if ((uintptr_t)ptr - (uintptr_t)p->base < p->reserve_bytes)
        rpi_report(p, RP_ERR_WRONG_API, ptr,
                   "heap: %s %p: not heap memory (it belongs to another part "
                   "of the pool)", what, ptr);
    else
        rpi_report(p, RP_ERR_FOREIGN, ptr,
                   "heap: %s %p: not inside this pool", what, ptr);
    return false;
}

/* Free a block of this heap. Bad pointers are reported and change nothing.
 * Any thread. Cost: O(1) plus up to 3 madvise calls; takes the heap lock.
 * The error path (a pointer that is not a live block) walks the fragments to
 * name the error: O(fragments). */
void rpi_heap_free(rp_pool *p, void *ptr)
{
    if (!ptr || !in_heap_or_report(p, ptr, "free of"))
        return;
    rp_heap *h = heap_of(p);
    op o = {0};
    lockctx lc;
    CS_ENTER(h, &lc);
    free_locked(p, h, ptr, &o);
    publish_stats(p, h);
    CS_LEAVE(h, &lc);
    finish(p, &o);
}

/* Usable bytes of the live block at ptr (the whole fragment after its
 * header), or 0 after reporting if ptr is not one. Any thread. Cost: O(1)
 * under the heap lock (a neighbour's merge may rewrite this header). */
size_t rpi_heap_usable(rp_pool *p, const void *ptr)
{
    if (!ptr || !in_heap_or_report(p, ptr, "size of"))
        return 0;
    rp_heap *h = heap_of(p);
    op o = {0};
    lockctx lc;
    size_t n = 0;
    CS_ENTER(h, &lc);
    frag *f = live_block(p, h, ptr, "size of", &o);
    if (f)
        n = fsize(f) - HDR_BYTES;
    CS_LEAVE(h, &lc);
    finish(p, &o);
    return n;
}

RP_API void *rp_heap_alloc(rp_pool *p, size_t size)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    return rpi_heap_alloc(p, size);
}

RP_API void rp_heap_free(rp_pool *p, void *ptr)
{
    if (!p) {
        if (ptr)
            rpi_report(NULL, RP_ERR_MISUSE, ptr, "heap: free of %p: NULL pool", ptr);
        return;
    }
    rpi_heap_free(p, ptr);
}

/* Fork: the forking thread holds the lock across fork() so the child never
 * inherits it held by a thread that does not exist there. */
void rpi_heap_prefork(rp_pool *p)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return;
    RP_HIDE_BEGIN();
#if RP_HEAP_LOCK == 3
    ck_spinlock_mcs_lock(&h->lock, &h->fork_node);
#else
    heap_lock(h, NULL);
#endif
    RP_HIDE_END();
}

void rpi_heap_postfork(rp_pool *p)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return;
    RP_HIDE_BEGIN();
#if RP_HEAP_LOCK == 3
    ck_spinlock_mcs_unlock(&h->lock, &h->fork_node);
#else
    heap_unlock(h, NULL);
#endif
    RP_HIDE_END();
}

/* Lock-free snapshot of the heap's counters. O(1). */
void rpi_heap_stats(rp_pool *p, rp_stats *st)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return;
    st->heap_capacity_bytes = h->capacity;
    st->heap_allocated_bytes = rp_load_relaxed_u64(&h->st_allocated);
    st->heap_peak_allocated_bytes = rp_load_relaxed_u64(&h->st_peak);
    st->heap_largest_request = rp_load_relaxed_u64(&h->st_largest);
    st->heap_oom_count = rp_load_relaxed_u64(&h->st_oom);
    st->heap_committed_bytes = rp_load_relaxed_u64(&h->st_committed);
    st->heap_physical_bytes = rp_load_relaxed_u64(&h->st_physical);
}

/* ------------------------------------------------------------------------ */
/* Worst-case fragmentation (see docs/HEAP.md for the derivation).
 * Half-fit's published bound: a heap of H bytes never fails for lack of a
 * fitting fragment while at most M bytes of fragments are live and every
 * fragment is at most n bytes, if H >= 2 M (1 + ceil(log2(n / FRAG_MIN)))
 * (sizes in units of the minimum fragment). Fragment sizes are the requests
 * plus the 32-byte header rounded up to powers of two. */

static size_t log2_units(size_t max_request)
{
    size_t n = frag_for(max_request ? max_request : 1, SIZE_MAX / 4);
    return rp_log2(n / FRAG_MIN);
}

/* Capacity that guarantees `live_bytes` of live fragments with requests of at
 * most max_request bytes. SIZE_MAX on overflow. O(1), pure. */
size_t rpi_heap_required_capacity(size_t live_bytes, size_t max_request)
{
    size_t k = 2 * (1 + log2_units(max_request)), r;
    size_t units = (live_bytes + FRAG_MIN - 1) / FRAG_MIN;
    if (__builtin_mul_overflow(units, k, &r) ||
        __builtin_mul_overflow(r, FRAG_MIN, &r))
        return SIZE_MAX;
    return r;
}

/* Largest M (sum of live fragment sizes, bytes) that the heap's capacity
 * guarantees when every request is at most max_request bytes (0: the largest
 * request the heap serves). 0 if there is no heap. O(1), any thread. */
size_t rpi_heap_guaranteed_live(const rp_pool *p, size_t max_request)
{
    const rp_heap *h = heap_of(p);
    size_t maxr = rpi_heap_max_request(p);
    if (!h || !maxr)
        return 0;
    if (!max_request || max_request > maxr)
        max_request = maxr;
    size_t k = 2 * (1 + log2_units(max_request));
    return h->capacity / FRAG_MIN / k * FRAG_MIN;
}

/* ------------------------------------------------------------------------ */
/* Invariant checker. Walks every fragment and every bin under the lock and
 * reports the first broken invariant (RP_ERR_INVARIANT). Returns 0 or
 * -EFAULT. Cost: O(fragments). Exact: the lock makes it a quiescent point. */

NOASAN static void check_locked(rp_heap *h, op *o)
{
#define FAIL(ptr, ...)                                                        \
    do {                                                                      \
        set_error(o, RP_ERR_INVARIANT, (ptr), __VA_ARGS__);                   \
        return;                                                               \
    } while (0)
    if (h->committed > h->capacity || h->committed % h->page)
        FAIL(h->base, "heap: committed %zu bytes exceeds capacity %zu",
             h->committed, h->capacity);
    if (h->committed) {
        size_t c = h->step0;
        while (c < h->committed && c < h->capacity)
            c *= 2;
        if (c > h->capacity)
            c = h->capacity;
        if (c != h->committed)
            FAIL(h->base, "heap: committed %zu bytes is not a growth step",
                 h->committed);
    }
    size_t nused = 0, nfree = 0, allocated = 0, clean = 0, prev = 0;
    bool prev_free = false;
    frag *last = NULL;
    for (frag *f = (frag *)h->base; (uintptr_t)f < heap_end(h);
         f = (frag *)((uintptr_t)f + fsize(f))) {
        if (!frag_ok(h, f))
            FAIL(f, "heap: fragment header at %p is damaged", (void *)f);
        if (f->prev_size != prev)
            FAIL(f, "heap: fragment %p records a lower neighbour of %zu bytes, "
                 "which has %zu", (void *)f, (size_t)f->prev_size, prev);
        if (fused(f)) {
            nused++;
            allocated += fsize(f);
            if (f->req == 0 || f->req + HDR_BYTES > fsize(f) ||
                frag_for(f->req, SIZE_MAX / 4) != fsize(f))
                FAIL(f, "heap: live block %p: request %zu does not match "
                     "fragment size %zu", (void *)f, (size_t)f->req, fsize(f));
            prev_free = false;
        } else {
            if (prev_free)
                FAIL(f, "heap: free fragments %p and %p are adjacent (not "
                     "coalesced)", (void *)last, (void *)f);
            nfree++;
            range c = rclean(f);
            if (rlen(c)) {
                range I = interior(h, (uintptr_t)f, fsize(f));
                if (c.lo < I.lo || c.hi > I.hi || c.lo % h->page || c.hi % h->page)
                    FAIL(f, "heap: free fragment %p: purged range [%p, %p) "
                         "outside its interior", (void *)f, (void *)c.lo,
                         (void *)c.hi);
                clean += rlen(c);
            } else if (c.lo || c.hi) {
                FAIL(f, "heap: free fragment %p: malformed purged range",
                     (void *)f);
            }
            prev_free = true;
        }
        prev = fsize(f);
        last = f;
    }
    if (last != h->top)
        FAIL(last, "heap: top fragment is %p, the walk ends at %p",
             (void *)h->top, (void *)last);
    if (nused != h->nused || nfree != h->nfree)
        FAIL(h->base, "heap: %zu used / %zu free fragments counted, %zu / %zu "
             "found", h->nused, h->nfree, nused, nfree);
    if (allocated != h->allocated)
        FAIL(h->base, "heap: allocated counter %zu, live fragments sum to %zu",
             h->allocated, allocated);
    if (clean != h->clean_bytes)
        FAIL(h->base, "heap: purged counter %zu, purged ranges sum to %zu",
             h->clean_bytes, clean);
    size_t inbins = 0;
    for (unsigned i = 0; i < NBINS; i++) {
        bool bit = (h->mask >> i) & 1;
        if (bit != (h->bins[i] != NULL))
            FAIL(h->base, "heap: mask bit %u is %d but bin %u is %s", i, bit, i,
                 h->bins[i] ? "not empty" : "empty");
        frag *back = NULL;
        for (frag *f = h->bins[i]; f; back = f, f = f->next_free) {
            if (++inbins > nfree)
                FAIL(f, "heap: bins hold more entries than the %zu free "
                     "fragments (or a cycle)", nfree);
            if (!frag_ok(h, f) || fused(f))
                FAIL(f, "heap: bin %u holds %p, which is not a free fragment",
                     i, (void *)f);
            if (bin_of(fsize(f)) != i)
                FAIL(f, "heap: fragment %p of %zu bytes is in bin %u", (void *)f,
                     fsize(f), i);
            if (f->prev_free != back)
                FAIL(f, "heap: bin %u: back link of %p is broken", i, (void *)f);
        }
    }
    if (inbins != nfree)
        FAIL(h->base, "heap: bins hold %zu fragments, %zu are free", inbins,
             nfree);
    if (rp_load_relaxed_u64(&h->st_physical) != h->committed - h->clean_bytes)
        FAIL(h->base, "heap: physical stat %llu != committed %zu - purged %zu",
             (unsigned long long)rp_load_relaxed_u64(&h->st_physical),
             h->committed, h->clean_bytes);
#undef FAIL
}

int rpi_heap_check(rp_pool *p)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return 0;
    op o = {0};
    lockctx lc;
    CS_ENTER(h, &lc);
    check_locked(h, &o);
    CS_LEAVE(h, &lc);
    if (o.err == RP_ERR_INVARIANT) {
        rpi_report(p, RP_ERR_INVARIANT, o.err_ptr, "%s", o.msg);
        return -EFAULT;
    }
    return 0;
}
