/* heap.c -- the constant-time fallback heap: half-fit (the o1heap design),
 * one per pool, behind one spinlock that is never held across a system call.
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
 * first FREE_META bytes). The charged part of a free fragment's interior is
 * its "dirty" part. Handing out a block charges the clean pages it takes
 * back (budget-checked: a refusal is an OOM).
 *
 * Purge policy. A free fragment whose dirty part reaches PURGE_MIN is either
 *   - purged (eager: the pool's purge_delay_ms is 0), or
 *   - kept resident as a LAZY fragment (purge_delay_ms > 0): it stays in its
 *     bin, is recorded in one of LAZY_SLOTS slots, linked oldest first, with
 *     the time it was freed, and the dirty bytes of all lazy fragments are
 *     capped at lazy_max (capacity >> LAZY_SHIFT). A lazy fragment is purged
 *     when it is the oldest and the slots or the cap need room, when it is
 *     older than purge_delay_ms (checked whenever another fragment turns
 *     lazy, on every 64th free, and by rpi_heap_purge_lazy), or when the
 *     heap's own physical charge is refused.
 *     Reusing it costs no system call and no page fault.
 * Below PURGE_MIN the dirty pages stay resident, to be reused first.
 *
 * No system call under the lock. A purge is decided under the lock, on a
 * fragment that is then HELD: out of its bin, flagged in its header so that
 * neither an allocation nor a neighbour's merge can take it. The lock is
 * dropped, madvise runs, the lock is taken again and the fragment is
 * completed: its purged pages become clean, it merges with whatever
 * neighbours were freed meanwhile, and it goes back to its bin. A growth step
 * works the same way: under the lock one thread marks the heap `growing` and
 * charges the new header page; mprotect runs outside; under the lock again it
 * checks that nothing else moved the end of the heap and installs the new
 * fragment. A physical charge the account refuses is retried outside the
 * lock (rpi_phys_charge, which may purge free regions), its result kept as a
 * credit for the retried allocation. The only system calls left under the
 * lock are the error path of a bad free (re-purging a zero page the check
 * read, see diagnose) and, while a fork is being prepared, the jobs of
 * operations already under way (see rpi_heap_prefork).
 *
 * Threads. Any thread may call every function here. All heap state (bins,
 * mask, headers, counters, the lazy slots) is read and written only under
 * h->lock, except: the st_* statistics, written under the lock with relaxed
 * stores and read lock-free by rpi_heap_stats; and nheld, growing,
 * jobs_done, lazy_count and fork_pending, written under the lock with
 * relaxed stores and polled lock-free by waiters (a hint; every decision is
 * taken again under the lock). A held fragment's pages are touched outside
 * the lock only by the madvise of the thread that holds it. The critical
 * sections are hidden from ThreadSanitizer (RP_HIDE_BEGIN/END); what TSan
 * sees instead is the user contract "a free of memory happens-before the next
 * allocation of that memory": release on every page the freed block overlaps
 * (before it becomes allocatable), acquire on every page the new block
 * overlaps (after it is handed out). Page granules rather than the block
 * address, because a split or merge hands the same bytes out again at a
 * different block address.
 *
 * Invariants (all under h->lock; rpi_heap_check verifies each):
 *   base + committed == end of the last fragment (h->top); fragments tile
 *     [base, base + committed) with next(f) = f + size(f) and
 *     prev_size(next(f)) == size(f)
 *   committed in {0} u {min(STEP0 * 2^k, capacity)}, committed <= capacity
 *   every fragment is USED, FREE (in its bin) or HELD (neither); no two
 *     physically adjacent fragments are both FREE (a HELD fragment may
 *     neighbour a FREE one until its holder completes it)
 *   bin i holds exactly the FREE fragments with floor(log2(size/64)) == i;
 *     bit i of mask == (bin i not empty)
 *   allocated == sum of sizes of used fragments; nused, nfree, nheld counts
 *   clean_bytes == sum over FREE f of |clean(f)| + held_clean
 *   heap physical == committed - clean_bytes == what the heap has charged
 *     to the pool (p->acct.heap_physical_bytes at quiescent points)
 *   lazy: f is lazy iff f is FREE and f->req == slot + 1 with lazy[slot] == f;
 *     lazy_bytes == sum of dirty(f) over lazy f <= lazy_max; lazy_count ==
 *     their number; eager heaps (lazy_max == 0) have none
 *   resident(heap range) <= heap physical
 *     <= allocated + 2 page * (nused + nfree) + PURGE_MIN * nfree + lazy_max
 *        (+ the dirty part of held fragments while their purge runs),
 *   nfree <= nused + 1
 *   check(f) == seal(f, size, prev_size, req) for every fragment header
 *
 * Lock order: h->lock is a leaf. While holding it the heap calls only the
 * account's lock-free counters (a CAS charge that never purges, and
 * rpi_phys_force when a purge failed) and, on the error path, rpi_os_purge;
 * rpi_heap_commit, rpi_phys_charge and madvise run after it is dropped. It
 * never calls the error hook or the watermark hook while holding it: reports
 * are formatted under the lock and delivered after the unlock.
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
/* A free fragment's resident interior is purged (or turns lazy) once it
 * reaches this size. */
#ifndef RP_HEAP_PURGE_BYTES
#define RP_HEAP_PURGE_BYTES ((size_t)64 << 10)
#endif
/* Lazy purging (pools with purge_delay_ms > 0): at most capacity >> SHIFT
 * bytes of dirty lazy fragments, in at most SLOTS fragments. */
#ifndef RP_HEAP_LAZY_SHIFT
#define RP_HEAP_LAZY_SHIFT 3
#endif
#ifndef RP_HEAP_LAZY_SLOTS
#define RP_HEAP_LAZY_SLOTS 64
#endif
/* Purge jobs one operation may chain (a completed purge merges with
 * fragments freed meanwhile, which may call for another), and retries of
 * one allocation (waiting for a growth step or a held fragment, charging
 * outside the lock). Both bound an operation's work by a constant. */
#ifndef RP_HEAP_ROUNDS
#define RP_HEAP_ROUNDS 4
#endif
#ifndef RP_HEAP_RETRIES
#define RP_HEAP_RETRIES 16
#endif
/* Lock flavour (for measurements, see docs/HEAP.md):
 *   0 test-and-test-and-set on ck_spinlock_fas, yielding the CPU after
 *     SPINS failed polls (default); 1 ck_spinlock_fas_lock (pure spinning);
 *   2 ck_spinlock_ticket; 3 ck_spinlock_mcs; 4 pthread mutex (adaptive:
 *     spins briefly, then sleeps in the kernel). */
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
#define HELD_BIT ((uint64_t)2)  /* free, out of the bins: a purge runs */
#define FLAG_BITS ((uint64_t)FRAG_MIN - 1)
#define NBINS 64

#define PURGE_MIN RP_HEAP_PURGE_BYTES
#define STEP0 RP_HEAP_STEP0_BYTES
#define LAZY_SLOTS RP_HEAP_LAZY_SLOTS

_Static_assert((STEP0 & (STEP0 - 1)) == 0, "step0 is a power of two");
_Static_assert(PURGE_MIN >= FRAG_MIN, "purge threshold");
_Static_assert(LAZY_SLOTS >= 2 && LAZY_SLOTS < 65536, "lazy slots");

/* ASan: every byte of the heap except live payloads is poisoned, so the
 * functions that read or write fragment headers and free links opt out of
 * ASan instrumentation. */
#if RP_ASAN
#define NOASAN __attribute__((no_sanitize("address")))
#else
#define NOASAN
#endif

void (*rpi_heap_job_hook)(rp_pool *p, int what);

/* ------------------------------------------------------------------------ */
/* Fragments.                                                                */

typedef struct frag {
    uint64_t size_used;  /* bytes incl. header, multiple of FRAG_MIN; bit 0:
                            used, bit 1: held */
    uint64_t prev_size;  /* bytes of the fragment just below; 0 for the first */
    uint64_t req;        /* used: bytes requested; free: lazy slot + 1 or 0;
                            held: 0 */
    uint64_t check;      /* seal() of the fields above and the address */
    /* Free and held fragments only (the first payload bytes): */
    struct frag *next_free, *prev_free; /* bin list, NULL-terminated */
    uintptr_t clean_lo, clean_hi;       /* purged pages, lo == hi if none;
                                           held: the range once purged */
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
    HF_PHYS,      /* physical budget refused (counted by the caller) */
    HF_COMMIT,    /* rpi_heap_commit refused (counted by reserve.c) */
    HF_CORRUPT    /* damaged metadata met on the way (reported) */
};

/* Work set up under the lock and done outside it. */
enum jkind { J_PURGE = 1, J_GROW = 2 };

typedef struct job {
    enum jkind kind;
    bool ok;              /* the system calls succeeded */
    unsigned calls;       /* system calls made */
    /* J_PURGE: the held fragment, the dirty gaps to purge, the clean ranges
     * it already had (kept when a purge fails) and their total. */
    frag *m;
    range gap[4];
    int ngap;
    range part[3];
    int npart;
    size_t before;
    /* J_GROW: commit [at, at + bytes), then committed = at - base + bytes;
     * why: the refusal's kind when the commit failed. */
    uintptr_t at;
    size_t bytes;
    enum rp_fail why;
} job;

/* One operation's state across its lock sections. */
typedef struct op {
    size_t uncharge;      /* physical bytes released by purges: after unlock */
    size_t credit;        /* charged outside the lock, not used yet */
    size_t need;          /* allocation: charge this much outside, retry */
    bool again;           /* allocation: retry after the step outside */
    bool wait;            /* allocation: wait for a job in flight, retry */
    bool charged;         /* charged under the lock: watermark after */
    int rounds;           /* purge jobs run */
    int held_waits;       /* waits for held fragments */
    uint64_t seen;        /* jobs_done when the wait was decided */
    int njobs;
    job jobs[2];
    enum hfail fail;
    enum rp_fail commit_why; /* HF_COMMIT: which limit refused */
    rp_error err;         /* 0: nothing to report */
    const void *err_ptr;
    char msg[200];
} op;

static inline void op_init(op *o)
{
    o->uncharge = o->credit = o->need = 0;
    o->again = o->wait = o->charged = false;
    o->rounds = o->held_waits = 0;
    o->seen = 0;
    o->njobs = 0;
    o->fail = HF_NONE;
    o->commit_why = RP_FAIL_OTHER;
    o->err = 0;
    o->err_ptr = NULL;
}

/* The lazy set: LAZY_SLOTS slots, the used ones linked oldest first (a FIFO
 * list through prev/next), the others on a free stack (through next). */
#define NO_SLOT ((uint32_t)LAZY_SLOTS)

typedef struct lazy_slot {
    frag *f;              /* the lazy fragment; NULL on the free stack */
    uint64_t ms;          /* rpi_now_ms() when it turned lazy */
    uint32_t prev, next;  /* FIFO neighbours, NO_SLOT at the ends */
} lazy_slot;

/* OS calls the heap made, by whether it held its lock (white-box counters). */
enum { OS_LOCKED, OS_UNLOCKED };

typedef struct rp_heap {
#if RP_HEAP_LOCK == 2
    ck_spinlock_ticket_t lock;
#elif RP_HEAP_LOCK == 3
    ck_spinlock_mcs_t lock;
    ck_spinlock_mcs_context_t fork_node;   /* held from prefork to postfork */
#elif RP_HEAP_LOCK == 4
    pthread_mutex_t lock;
#else
    ck_spinlock_fas_t lock;
#endif
    /* Under lock. The fields every operation touches are packed into two
     * cache lines (the lock's line is the third): under contention on few
     * CPUs each line a critical section touches crosses to the other CPU. */
    char *base __attribute__((aligned(RP_CACHELINE)));
    size_t committed;      /* bytes committed, a prefix of the range */
    size_t page;
    frag *top;             /* the highest fragment; NULL iff committed == 0 */
    uint64_t mask;         /* bit i: bins[i] not empty */
    uint64_t secret;       /* per-heap key of the header seal */
    size_t allocated;      /* sum of used fragment sizes */
    uint64_t st_allocated; /* statistic: written here, read lock-free */
    size_t nused __attribute__((aligned(RP_CACHELINE)));
    size_t nfree;
    size_t clean_bytes;    /* free fragments' clean ranges + held_clean */
    size_t lazy_max;       /* cap on lazy_bytes; 0: eager */
    size_t lazy_bytes;     /* dirty bytes of the lazy fragments */
    uint64_t lazy_count;   /* lazy fragments; polled */
    uint32_t nheld;        /* held fragments; polled */
    uint32_t growing;      /* 1 while a growth step commits; polled */
    uint32_t lazy_tick;    /* frees since the last expiry check, mod 64 */
    uint32_t lazy_first;   /* lazy FIFO list: oldest */
    /* Colder: growth, jobs, the lazy list, fork. */
    size_t capacity __attribute__((aligned(RP_CACHELINE)));
    size_t step0;          /* first commit step: min(STEP0, capacity) */
    size_t held_clean;     /* clean bytes the held fragments brought along */
    uint64_t jobs_done;    /* jobs completed; polled */
    uint64_t fork_pending; /* set by prefork: run jobs without unlocking */
    uint64_t purge_failures;
    uint64_t os_calls[2];  /* OS calls made [OS_LOCKED], [OS_UNLOCKED] */
    uint32_t lazy_delay_ms;/* pool's purge_delay_ms */
    uint32_t lazy_last;    /* lazy FIFO list: newest */
    uint32_t lazy_free;    /* free slot stack */
    lazy_slot lazy[LAZY_SLOTS];
    frag *bins[NBINS];
    /* Statistics that change rarely: written under lock when they change
     * (relaxed stores), read lock-free. */
    uint64_t st_peak __attribute__((aligned(RP_CACHELINE)));
    uint64_t st_largest, st_oom, st_committed, st_physical;
} rp_heap;

/* ------------------------------------------------------------------------ */
/* Small helpers. Each O(1).                                                 */

NOASAN static inline size_t fsize(const frag *f)
{
    return (size_t)(f->size_used & ~FLAG_BITS);
}
NOASAN static inline bool fused(const frag *f) { return (f->size_used & USED_BIT) != 0; }
NOASAN static inline bool fheld(const frag *f) { return (f->size_used & HELD_BIT) != 0; }
/* Free and in its bin (neither used nor held). */
NOASAN static inline bool ffree(const frag *f)
{
    return (f->size_used & (USED_BIT | HELD_BIT)) == 0;
}
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

/* Charged bytes of a free fragment's interior. */
NOASAN static inline size_t dirty_of(const rp_heap *h, const frag *f)
{
    return rlen(interior(h, (uintptr_t)f, fsize(f))) - rlen(rclean(f));
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

/* Header at f is intact: f is a fragment position inside the committed
 * heap (checked before anything is read from it) and its check value
 * matches its fields. The heap seals only headers it built, so a matching
 * seal also vouches for the geometry frag_sound checks; the hot paths (free,
 * merge, the bin head an allocation takes) rely on that, and the walks that
 * step from header to header use frag_sound. */
NOASAN static bool frag_ok(const rp_heap *h, const frag *f)
{
    uintptr_t a = (uintptr_t)f, base = (uintptr_t)h->base;
    if (a < base || a >= heap_end(h) || (a - base) % FRAG_MIN)
        return false;
    return f->check == seal(h, f);
}

/* frag_ok, plus every field consistent with the heap's geometry (a wrong
 * seal vouched for by a heap bug, or a lucky forgery, is still caught where
 * a walk would follow it). For rpi_heap_check and the error path. */
NOASAN static bool frag_sound(const rp_heap *h, const frag *f)
{
    if (!frag_ok(h, f))
        return false;
    uintptr_t a = (uintptr_t)f, base = (uintptr_t)h->base;
    size_t s = fsize(f);
    if (s < FRAG_MIN || s % FRAG_MIN || s > heap_end(h) - a)
        return false;
    if (f->prev_size % FRAG_MIN || f->prev_size > a - base)
        return false;
    return !(f->size_used & FLAG_BITS & ~(USED_BIT | HELD_BIT)) &&
           !(fused(f) && fheld(f));
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

/* Under lock. Only the allocated bytes change on every operation; the
 * other figures (and the pool's account line) are written when they change,
 * so that a critical section does not drag those lines across CPUs. */
static void publish_stats(rp_pool *p, rp_heap *h)
{
    size_t phys = h->committed - h->clean_bytes;
    rp_store_relaxed_u64(&h->st_allocated, h->allocated);
    if (h->allocated > rp_load_relaxed_u64(&h->st_peak))
        rp_store_relaxed_u64(&h->st_peak, h->allocated);
    if (phys != rp_load_relaxed_u64(&h->st_physical)) {
        rp_store_relaxed_u64(&h->st_physical, phys);
        rp_store_relaxed_u64(&p->acct.heap_physical_bytes, phys);
    }
    if (h->committed != rp_load_relaxed_u64(&h->st_committed))
        rp_store_relaxed_u64(&h->st_committed, h->committed);
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
/* The physical account, under the lock.                                     */

/* Charge bytes for the operation: from its credit first, then with the
 * account's CAS charge (rpi_phys_try_charge: no purge of free regions and no
 * hook under the lock; rpi_phys_charge, which does both, runs outside it in
 * step_outside, and finish() makes the watermark check). False (nothing
 * charged) when the budget refuses: o->need says how much to charge outside
 * the lock before the operation retries. */
static bool charge_locked(rp_pool *p, op *o, size_t bytes)
{
    if (bytes <= o->credit) {
        o->credit -= bytes;
        return true;
    }
    size_t rest = bytes - o->credit;
    if (!rpi_phys_try_charge(p, rest)) {
        o->need = rest;
        return false;
    }
    o->credit = 0;
    o->charged = true;
    return true;
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
#elif RP_HEAP_LOCK == 3
    ck_spinlock_mcs_lock(&h->lock, &c->node);
#else
    pthread_mutex_lock(&h->lock);
#endif
}

static void heap_unlock(rp_heap *h, lockctx *c)
{
    (void)c;
#if RP_HEAP_LOCK == 0 || RP_HEAP_LOCK == 1
    ck_spinlock_fas_unlock(&h->lock);
#elif RP_HEAP_LOCK == 2
    ck_spinlock_ticket_unlock(&h->lock);
#elif RP_HEAP_LOCK == 3
    ck_spinlock_mcs_unlock(&h->lock, &c->node);
#else
    pthread_mutex_unlock(&h->lock);
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
/* The lazy set. Under lock; O(1) each.                                      */

static inline bool lazy_mode(const rp_heap *h) { return h->lazy_max != 0; }

static void lazy_init(rp_heap *h)
{
    h->lazy_first = h->lazy_last = NO_SLOT;
    for (uint32_t s = 0; s < LAZY_SLOTS; s++)
        h->lazy[s].next = s + 1 < LAZY_SLOTS ? s + 1 : NO_SLOT;
    h->lazy_free = 0;
}

/* The oldest lazy fragment's slot, or NULL. */
static lazy_slot *lazy_oldest(rp_heap *h)
{
    return h->lazy_first != NO_SLOT ? &h->lazy[h->lazy_first] : NULL;
}

static inline bool lazy_full(const rp_heap *h) { return h->lazy_free == NO_SLOT; }

/* The fragment in slot e has been lazy for purge_delay_ms at time now. A
 * time before the slot's counts as expired: never keep a fragment lazy on a
 * clock that went back. */
static inline bool lazy_expired(const rp_heap *h, const lazy_slot *e, uint64_t now)
{
    return now < e->ms || now - e->ms >= h->lazy_delay_ms;
}

/* Slot s leaves the FIFO list for the free stack. */
static void lazy_unlink(rp_heap *h, uint32_t s)
{
    lazy_slot *e = &h->lazy[s];
    if (e->prev != NO_SLOT)
        h->lazy[e->prev].next = e->next;
    else
        h->lazy_first = e->next;
    if (e->next != NO_SLOT)
        h->lazy[e->next].prev = e->prev;
    else
        h->lazy_last = e->prev;
    e->f = NULL;
    e->next = h->lazy_free;
    h->lazy_free = s;
    rp_store_relaxed_u64(&h->lazy_count, h->lazy_count - 1);
}

/* f (FREE, lazy) leaves the lazy set: it is taken, merged or held. Its header
 * is not resealed here: the caller rewrites it. */
NOASAN static void lazy_forget(rp_heap *h, frag *f)
{
    h->lazy_bytes -= dirty_of(h, f);
    lazy_unlink(h, (uint32_t)f->req - 1);
    f->req = 0;
}

/* f (FREE, settled, dirty_of(f) bytes) turns lazy at time now. The caller
 * made sure a slot is free and the cap allows it. */
NOASAN static void lazy_add(rp_heap *h, frag *f, uint64_t now)
{
    uint32_t s = h->lazy_free;
    lazy_slot *e = &h->lazy[s];
    h->lazy_free = e->next;
    e->f = f;
    e->ms = now;
    e->prev = h->lazy_last;
    e->next = NO_SLOT;
    if (h->lazy_last != NO_SLOT)
        h->lazy[h->lazy_last].next = s;
    else
        h->lazy_first = s;
    h->lazy_last = s;
    h->lazy_bytes += dirty_of(h, f);
    rp_store_relaxed_u64(&h->lazy_count, h->lazy_count + 1);
    f->req = (uint64_t)s + 1;
    reseal(h, f);
}

/* f (FREE) leaves its bin and, if lazy, the lazy set: it is merged, grown or
 * held. Its header is not resealed here: the caller rewrites it. */
NOASAN static void unbin(rp_heap *h, frag *f)
{
    if (f->req)
        lazy_forget(h, f);
    bin_remove(h, f);
    h->nfree--;
}

/* ------------------------------------------------------------------------ */
/* Settling a free fragment: bin it as it is, turn it lazy, or hold it for a
 * purge outside the lock. Under lock.                                       */

/* Give m its clean range c, clear its flags and put it in its bin. */
NOASAN static void finalize(rp_heap *h, frag *m, range c)
{
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

/* Hold m (size final, not in a bin) for a purge of `gaps` outside the lock;
 * `c` is the clean range it will have, parts[] the clean ranges it has. */
NOASAN static void hold(rp_heap *h, frag *m, range c, const range *gaps, int ngap,
                        const range *parts, int np, size_t before, op *o)
{
    m->clean_lo = c.lo;
    m->clean_hi = c.hi;
    m->size_used = fsize(m) | HELD_BIT;
    m->req = 0;
    m->next_free = m->prev_free = NULL;
    reseal(h, m);
    rp_store_relaxed_u32(&h->nheld, h->nheld + 1);
    h->held_clean += before;
    job *j = &o->jobs[o->njobs++];
    j->kind = J_PURGE;
    j->ok = false;
    j->calls = 0;
    j->m = m;
    j->ngap = ngap;
    memcpy(j->gap, gaps, (size_t)ngap * sizeof *gaps);
    j->npart = np;
    memcpy(j->part, parts, (size_t)np * sizeof *parts);
    j->before = before;
}

/* The dirty parts of the interior I around its clean ranges parts[0..np)
 * (sorted, disjoint, inside I), in address order, into gaps[] (room for
 * np + 1). Returns their number. O(np). */
static int dirty_gaps(range I, const range *parts, int np, range *gaps)
{
    int ng = 0;
    uintptr_t cur = I.lo;
    for (int k = 0; k < np; k++) {
        if (parts[k].lo > cur)
            gaps[ng++] = (range){cur, parts[k].lo};
        cur = parts[k].hi;
    }
    if (I.hi > cur)
        gaps[ng++] = (range){cur, I.hi};
    return ng;
}

/* Evict the oldest lazy fragment: hold it for a purge of its dirty part
 * (never empty: a lazy fragment keeps at least PURGE_MIN dirty bytes). */
NOASAN static void evict_oldest(rp_heap *h, op *o)
{
    frag *f = lazy_oldest(h)->f;
    unbin(h, f); /* lazy: f->req != 0 */
    range I = interior(h, (uintptr_t)f, fsize(f)), c = rclean(f);
    int np = rlen(c) ? 1 : 0;
    range gaps[2];
    int ng = dirty_gaps(I, &c, np, gaps);
    hold(h, f, I, gaps, ng, &c, np, rlen(c), o);
}

/* Expiry when nothing turns lazy for a while: every 64th free looks at the
 * oldest lazy fragment (one clock read) and evicts it once it is older than
 * purge_delay_ms. */
NOASAN static void lazy_tick(rp_heap *h, op *o)
{
    if (!h->lazy_count || o->njobs || (++h->lazy_tick & 63))
        return;
    lazy_slot *old = lazy_oldest(h);
    uint64_t now = rpi_now_ms();
    if (lazy_expired(h, old, now))
        evict_oldest(h, o);
}

/* Keep only the largest of the clean ranges m brought along (the clean set
 * of a fragment is one range) and count the others as charged again
 * (over-count, never under-count: they are not resident). Returns it. */
static range keep_largest(rp_pool *p, rp_heap *h, const range *parts, int np,
                          size_t before)
{
    int best = -1;
    for (int k = 0; k < np; k++)
        if (best < 0 || rlen(parts[k]) > rlen(parts[best]))
            best = k;
    range c = best >= 0 ? parts[best] : (range){0, 0};
    size_t back = before - rlen(c);
    if (back) {
        rpi_phys_force(p, back);
        h->clean_bytes -= back;
    }
    return c;
}

#define S_EVICT 1  /* may evict the oldest lazy fragment (once per op) */
#define S_PURGE 2  /* may hold m for a purge */
#define S_CHECKED 4 /* coalesce: the caller verified both neighbours' headers */

/* Settle the free fragment m (size final, header fields other than size
 * stale, not in a bin). `parts` are the clean ranges m inherited, sorted,
 * disjoint, inside I(m), already counted in h->clean_bytes; the rest of
 * I(m) is dirty (charged).
 *   dirty >= PURGE_MIN: turn lazy if the heap is lazy, m has at most one
 *     clean range, and the cap and the slots allow (making room by evicting
 *     the oldest lazy fragment, once; an expired oldest one is evicted too);
 *     otherwise purge it all: hold m for a purge of the dirty gaps;
 *   two or three clean ranges: join them by purging the gaps between (the
 *     clean set of a fragment is one range);
 *   otherwise bin m as it is.
 * Without S_PURGE (a failed purge, or the op's rounds used up) m keeps its
 * largest clean range instead of a purge. Cost: O(1); no system call. */
NOASAN static void settle(rp_pool *p, rp_heap *h, frag *m, const range *parts,
                          int np, op *o, int flags)
{
    range I = interior(h, (uintptr_t)m, fsize(m));
    size_t before = 0;
    for (int k = 0; k < np; k++)
        before += rlen(parts[k]);
    size_t dirty = rlen(I) - before;
    range gaps[4];
    int ng = 0;
    range c = {0, 0};

    if (dirty >= PURGE_MIN) {
        if (lazy_mode(h) && np <= 1 && dirty <= h->lazy_max) {
            uint64_t now = rpi_now_ms();
            lazy_slot *old = lazy_oldest(h);
            bool full = lazy_full(h);
            bool over = h->lazy_bytes + dirty > h->lazy_max;
            bool expired = old && lazy_expired(h, old, now);
            if (old && (flags & S_EVICT) && o->njobs == 0 &&
                (full || over || expired)) {
                evict_oldest(h, o);
                full = lazy_full(h);
                over = h->lazy_bytes + dirty > h->lazy_max;
            }
            if (!full && !over) {
                finalize(h, m, np ? parts[0] : (range){0, 0});
                lazy_add(h, m, now);
                return;
            }
        }
        ng = dirty_gaps(I, parts, np, gaps);
        c = I;
    } else if (np >= 1) {
        for (int k = 1; k < np; k++)
            if (parts[k].lo > parts[k - 1].hi)
                gaps[ng++] = (range){parts[k - 1].hi, parts[k].lo};
        c = (range){parts[0].lo, parts[np - 1].hi};
    }

    if (ng && (flags & S_PURGE) && o->rounds < RP_HEAP_ROUNDS && o->njobs < 2) {
        hold(h, m, c, gaps, ng, parts, np, before, o);
        return;
    }
    if (ng)
        c = keep_largest(p, h, parts, np, before);
    finalize(h, m, c);
}

/* Merge the free fragment m (not in a bin, not held; its clean range, if
 * any, in m->clean_lo/hi) with its FREE neighbours and settle the result.
 * A neighbour whose header fails its check is not merged (reported); with
 * S_CHECKED the caller has just checked both under the same lock hold (the
 * free path), and they are not checked twice. O(1). */
NOASAN static void coalesce(rp_pool *p, rp_heap *h, frag *m, op *o, int flags)
{
    frag *pv = fprev(m), *nx = fnext(h, m), *lo = m;
    range parts[3];
    int np = 0;
    size_t ms = fsize(m);
    range own = rclean(m);
    if (!(flags & S_CHECKED)) {
        if (pv && (!frag_ok(h, pv) || fsize(pv) != m->prev_size)) {
            set_error(o, RP_ERR_CORRUPT, pv, "heap: fragment %p below %p is "
                      "damaged; not merged", (void *)pv, (void *)m);
            pv = NULL;
        }
        if (nx && (!frag_ok(h, nx) || nx->prev_size != ms)) {
            set_error(o, RP_ERR_CORRUPT, nx, "heap: fragment %p above %p is "
                      "damaged; not merged", (void *)nx, (void *)m);
            nx = NULL;
        }
    }
    if (pv && ffree(pv)) {
        unbin(h, pv);
        if (rlen(rclean(pv)))
            parts[np++] = rclean(pv);
        lo = pv;
        ms += fsize(pv);
    }
    if (rlen(own))
        parts[np++] = own;
    if (nx && ffree(nx)) {
        unbin(h, nx);
        if (rlen(rclean(nx)))
            parts[np++] = rclean(nx);
        ms += fsize(nx);
        if (h->top == nx)
            h->top = lo;
        wipe(nx);
    }
    if (h->top == m)
        h->top = lo;
    if (lo != m)
        wipe(m);
    lo->size_used = ms;
    link_next(h, lo);
    settle(p, h, lo, parts, np, o, flags);
}

/* ------------------------------------------------------------------------ */
/* Jobs: set up under the lock, run outside it, completed under it.          */

/* The system calls of one job. Runs without the lock (unless a fork is
 * being prepared): touches nothing but the job and the held pages. */
static void exec_job(rp_pool *p, job *j, bool unlocked)
{
    /* A test sets the hook before starting threads; relaxed is enough. */
    void (*hook)(rp_pool *, int) = __atomic_load_n(&rpi_heap_job_hook, __ATOMIC_RELAXED);
    if (hook && unlocked)
        hook(p, (int)j->kind);
    if (j->kind == J_PURGE) {
        j->ok = true;
        for (int k = 0; k < j->ngap && j->ok; k++) {
            j->calls++;
            j->ok = rpi_os_purge((void *)j->gap[k].lo, rlen(j->gap[k]),
                                 RP_PURGE_DONTNEED) == 0;
        }
    } else {
        j->calls = 1;
        j->ok = rpi_heap_commit(p, (void *)j->at, j->bytes, &j->why) == 0;
        if (j->ok)
            rp_poison((void *)j->at, j->bytes); /* nobody else sees it yet */
    }
}

/* A purge done: the purged gaps are clean (uncharged after the unlock), or,
 * when madvise failed, m keeps its largest clean range. Then m merges with
 * whatever was freed next to it meanwhile. */
NOASAN static void purge_done(rp_pool *p, rp_heap *h, const job *j, op *o)
{
    frag *m = j->m;
    rp_store_relaxed_u32(&h->nheld, h->nheld - 1);
    h->held_clean -= j->before;
    range c;
    if (j->ok) {
        c = rclean(m);
        size_t add = rlen(c) - j->before;
        h->clean_bytes += add;
        o->uncharge += add;
    } else {
        h->purge_failures++;
        c = keep_largest(p, h, j->part, j->npart, j->before);
    }
    /* The set-up free_locked gives a freed block: coalesce reads m's size,
     * prev_size and clean range only, and settle rewrites req (0 since
     * hold), the clean range and the seal on every exit (or m is wiped). */
    m->clean_lo = c.lo;
    m->clean_hi = c.hi;
    m->size_used = fsize(m); /* no longer held */
    coalesce(p, h, m, o, j->ok ? S_PURGE : 0);
}

/* A growth step committed (or refused): extend the top fragment when it is
 * free, else add a new free fragment above it. */
NOASAN static void grow_done(rp_pool *p, rp_heap *h, const job *j, op *o)
{
    rp_store_relaxed_u32(&h->growing, 0);
    if (!j->ok) {
        o->credit += h->page; /* the header page charged for it */
        o->fail = HF_COMMIT;
        o->commit_why = j->why;
        return;
    }
    rp_assert(1, j->at == heap_end(h)); /* only the grower moves the end */
    uintptr_t old_end = j->at;
    size_t g = j->bytes;
    h->committed += g;
    frag *t = h->top;
    if (t && ffree(t)) {
        range parts[2];
        int np = 0;
        o->credit += h->page; /* no new header */
        unbin(h, t);
        if (rlen(rclean(t)))
            parts[np++] = rclean(t);
        parts[np++] = (range){old_end, old_end + g}; /* never touched */
        h->clean_bytes += g;
        t->size_used = fsize(t) + g;
        settle(p, h, t, parts, np, o, S_PURGE);
    } else {
        /* The header page was charged when the step started; this write is
         * the one page fault the heap takes under its lock (once per step). */
        frag *n = (frag *)old_end;
        range fresh = {old_end + h->page, old_end + g};
        n->size_used = g;
        n->prev_size = t ? fsize(t) : 0;
        n->req = 0;
        h->clean_bytes += rlen(fresh);
        h->top = n;
        settle(p, h, n, &fresh, rlen(fresh) ? 1 : 0, o, S_PURGE);
    }
}

/* Run the jobs o holds: drop the lock, make their system calls, take the
 * lock again and complete them; a completion may set up one more (bounded by
 * RP_HEAP_ROUNDS). While a fork is being prepared the jobs run under the
 * lock: rpi_heap_prefork waits for jobs in flight and must not wait forever.
 * Called and returns with the lock held. */
static void run_jobs(rp_pool *p, rp_heap *h, op *o, lockctx *lc)
{
    while (o->njobs) {
        int n = o->njobs;
        job done[2];
        memcpy(done, o->jobs, (size_t)n * sizeof *done);
        o->njobs = 0;
        bool out = !rp_load_relaxed_u64(&h->fork_pending);
        if (out) {
            publish_stats(p, h); /* consistent for readers meanwhile */
            CS_LEAVE(h, lc);
        }
        for (int k = 0; k < n; k++)
            exec_job(p, &done[k], out);
        if (out)
            CS_ENTER(h, lc);
        for (int k = 0; k < n; k++) {
            h->os_calls[out ? OS_UNLOCKED : OS_LOCKED] += done[k].calls;
            rp_store_relaxed_u64(&h->jobs_done, h->jobs_done + 1);
            if (done[k].kind == J_PURGE) {
                o->rounds++;
                purge_done(p, h, &done[k], o);
            } else {
                grow_done(p, h, &done[k], o);
            }
        }
    }
}

/* Wait, without the lock, until a job completes or none is in flight. */
static void wait_jobs(rp_heap *h, uint64_t seen)
{
    for (unsigned i = 0;; i++) {
        if (rp_load_relaxed_u64(&h->jobs_done) != seen)
            return;
        if (!rp_load_relaxed_u32(&h->nheld) && !rp_load_relaxed_u32(&h->growing))
            return;
        if (i < RP_HEAP_SPINS)
            ck_pr_stall();
        else
            sched_yield();
    }
}

/* ------------------------------------------------------------------------ */
/* Growth. Under lock: decide the next doubling step large enough that the
 * top free fragment (extended, or new) holds fsz bytes, charge its header
 * page, mark the heap growing and leave the commit to run_jobs. O(1).       */

NOASAN static void start_growth(rp_pool *p, rp_heap *h, size_t fsz, op *o)
{
    frag *t = h->top;
    size_t have = t && ffree(t) ? fsize(t) : 0;
    size_t want = h->committed + (fsz - have); /* have < fsz, else a bin fits */
    size_t c = h->committed ? h->committed : h->step0;
    while (c < want && c < h->capacity)
        c *= 2;
    if (c > h->capacity)
        c = h->capacity;
    if (c < want || c <= h->committed) {
        /* Full. A fragment held by a purge may fit once it is back. */
        if (h->nheld && o->held_waits < RP_HEAP_ROUNDS) {
            o->held_waits++;
            o->wait = o->again = true;
            o->seen = h->jobs_done;
            return;
        }
        o->fail = HF_FULL;
        return;
    }
    /* A new top fragment writes its header into the first new page: charged
     * now, given back at completion if the top is extended instead. */
    if (!charge_locked(p, o, h->page)) {
        o->again = true;
        return;
    }
    rp_store_relaxed_u32(&h->growing, 1);
    job *j = &o->jobs[o->njobs++];
    j->kind = J_GROW;
    j->ok = false;
    j->calls = 0;
    j->at = heap_end(h);
    j->bytes = c - h->committed;
    o->again = true;
}

/* ------------------------------------------------------------------------ */
/* Allocation. Under lock. Cost: O(1) (find-first-set on the mask).          */

/* Hand out fsz bytes from the free fragment f; split off the rest. NULL with
 * o->again when the account refused the charge (retried outside). */
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
    if (charge && !charge_locked(p, o, charge)) {
        o->again = true;
        return NULL;
    }
    size_t slot = (size_t)f->req; /* lazy slot + 1, or 0 */
    if (slot)
        h->lazy_bytes -= dirty_of(h, f);
    bin_remove(h, f);
    h->nfree--;
    h->clean_bytes -= charge;
    f->size_used = fsz | USED_BIT;
    f->req = req;
    reseal(h, f);
    frag *r = NULL;
    if (rs) {
        r = (frag *)(a + fsz);
        r->size_used = rs;
        r->prev_size = fsz;
        r->req = 0;
        r->clean_lo = cr.lo;
        r->clean_hi = cr.hi;
        /* A lazy fragment's remainder keeps its slot (and age) while
         * it still holds PURGE_MIN of dirty pages. */
        if (slot && dirty_of(h, r) >= PURGE_MIN) {
            r->req = slot;
            h->lazy[slot - 1].f = r;
            h->lazy_bytes += dirty_of(h, r);
            slot = 0;
        }
        reseal(h, r);
        link_next(h, r);
        if (h->top == f)
            h->top = r;
        bin_push(h, r);
        h->nfree++;
    }
    if (slot)
        lazy_unlink(h, (uint32_t)slot - 1); /* its bytes are subtracted */
    h->nused++;
    h->allocated += fsz;
    return (void *)(a + HDR_BYTES);
}

/* One attempt. NULL with o->again: retry after run_jobs (a growth step) or
 * the step outside the lock (o->need: charge; o->wait: wait for a job). */
NOASAN static void *alloc_locked(rp_pool *p, rp_heap *h, size_t req,
                                 size_t fsz, op *o)
{
    o->again = o->wait = false;
    o->need = 0;
    unsigned i = bin_of(fsz);
    uint64_t cand = h->mask & (~(uint64_t)0 << i);
    if (cand) {
        unsigned j = (unsigned)__builtin_ctzll(cand);
        frag *f = h->bins[j];
        if (!frag_ok(h, f) || !ffree(f) || bin_of(fsize(f)) != j ||
            fsize(f) < fsz) {
            set_error(o, RP_ERR_CORRUPT, f,
                      "heap: free fragment %p at the head of bin %u is "
                      "damaged", (void *)f, j);
            o->fail = HF_CORRUPT;
            return NULL;
        }
        return take(p, h, f, req, fsz, o);
    }
    /* Nothing fits. Growth is serialised: wait for a step in flight. A
     * fragment held by a purge may fit once it is back: wait once for it
     * before growing past it. */
    if (h->growing || (h->nheld && o->held_waits == 0)) {
        if (!h->growing)
            o->held_waits++;
        o->wait = o->again = true;
        o->seen = h->jobs_done;
        return NULL;
    }
    start_growth(p, h, fsz, o);
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
        if (!frag_sound(h, f) || f->prev_size != prev) {
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
             * a purged page (or, for a held fragment, one being purged),
             * that read mapped the zero page, which mincore() counts as
             * resident: purge the page again. Error path only: the one
             * system call the heap makes under its lock. */
            if (hp % FRAG_MIN == 0 && hp >= f->clean_lo && hp < f->clean_hi) {
                h->os_calls[OS_LOCKED]++;
                (void)rpi_os_purge((void *)pg_dn(h, hp), h->page,
                                   RP_PURGE_DONTNEED);
            }
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
/* Free. Under lock. Cost: O(1); a purge it calls for runs after the unlock
 * (run_jobs).                                                               */

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
    b->size_used = bs;          /* free, not in a bin yet */
    b->clean_lo = b->clean_hi = 0;
    coalesce(p, h, b, o, S_EVICT | S_PURGE | S_CHECKED);
    lazy_tick(h, o);
}

/* ------------------------------------------------------------------------ */
/* Entry points.                                                             */

static inline rp_heap *heap_of(const rp_pool *p) { return (rp_heap *)p->heap; }

/* Deliver what an operation left for after the unlock. */
static void finish(rp_pool *p, op *o)
{
    size_t back = o->uncharge + o->credit;
    if (back)
        rpi_phys_uncharge(p, back);
    else if (o->charged && p->cfg.watermark_hook && p->cfg.physical_soft_limit)
        rpi_phys_force(p, 0); /* the watermark check the CAS charge skipped */
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
#elif RP_HEAP_LOCK == 4
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&h->lock, &ma);
    pthread_mutexattr_destroy(&ma);
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
    lazy_init(h);
    h->lazy_delay_ms = p->cfg.purge_delay_ms;
    if (p->cfg.purge_delay_ms) {
        h->lazy_max = cap >> RP_HEAP_LAZY_SHIFT;
        if (h->lazy_max < PURGE_MIN)
            h->lazy_max = PURGE_MIN;
    }
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

/* The work an allocation does outside the lock between attempts: charge
 * what the account refused under the lock (purging the heap's own lazy
 * fragments first, then rpi_phys_charge, which may purge free regions), or
 * wait for a job in flight. Called and returns with the lock held. */
static void step_outside(rp_pool *p, rp_heap *h, op *o, lockctx *lc)
{
    CS_LEAVE(h, lc);
    if (o->need) {
        size_t need = o->need;
        o->need = 0;
        (void)rpi_heap_purge_lazy(p, need, UINT64_MAX); /* 0 if eager */
        if (rpi_phys_charge(p, need) == 0)
            o->credit += need;
        else
            o->fail = HF_PHYS;
    } else if (o->wait) {
        wait_jobs(h, o->seen);
    }
    CS_ENTER(h, lc);
}

/* A refusal's end. count (rpi_heap_alloc): every refusal is the caller's
 * failure: count it under `why`, ENOMEM. !count (try_alloc): a refusal that
 * another allocator could still satisfy -- no room in the heap, a growth
 * step the virtual budget or the OS refused, damaged metadata (reported
 * already) -- is not counted and gives ENOSPC; the fallback's own outcome is
 * then the one counted, once. A physical refusal comes after every
 * purgeable byte was purged, so any other allocator would be refused too:
 * counted, ENOMEM, in both modes. */
static void *refused(rp_pool *p, bool count, bool phys, enum rp_fail why)
{
    if (phys || count) {
        rpi_count_fail(p, phys ? RP_FAIL_PHYSICAL : why);
        errno = ENOMEM;
    } else {
        errno = ENOSPC;
    }
    return NULL;
}

/* Allocation shared by the entry points; count: see refused(). */
static void *heap_alloc(rp_pool *p, size_t size, bool count)
{
    rp_heap *h = heap_of(p);
    if (RP_UNLIKELY(!size))
        return refused(p, count, false, RP_FAIL_OTHER);
    if (h)
        rp_max_relaxed_u64(&h->st_largest, size);
    size_t fsz = h ? frag_for(size, h->capacity) : 0;
    if (RP_UNLIKELY(!fsz)) {
        if (h)
            rp_add_relaxed_u64(&h->st_oom, 1);
        return refused(p, count, false, RP_FAIL_OTHER);
    }

    op o;
    op_init(&o);
    lockctx lc;
    void *blk = NULL;
    CS_ENTER(h, &lc);
    for (int round = 0;; round++) {
        blk = alloc_locked(p, h, size, fsz, &o);
        run_jobs(p, h, &o, &lc);
        if (blk || !o.again || o.fail)
            break;
        if (round == RP_HEAP_RETRIES) {
            o.fail = o.need ? HF_PHYS : HF_FULL;
            break;
        }
        if (o.need || o.wait) {
            step_outside(p, h, &o, &lc);
            if (o.fail)
                break;
        }
    }
    publish_stats(p, h);
    CS_LEAVE(h, &lc);

    finish(p, &o);
    if (RP_UNLIKELY(!blk)) {
        rp_add_relaxed_u64(&h->st_oom, 1);
        return refused(p, count, o.fail == HF_PHYS,
                       o.fail == HF_COMMIT ? o.commit_why : RP_FAIL_OTHER);
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
 * Any thread. Cost: O(1); takes the heap lock; may call the OS (growth,
 * a refused charge) with the lock released. */
void *rpi_heap_alloc(rp_pool *p, size_t size) { return heap_alloc(p, size, true); }

/* As rpi_heap_alloc, for callers that fall back to another allocator: a
 * refusal another allocator could still satisfy (no room, a refused growth
 * step, damaged metadata) gives NULL + ENOSPC and is not counted in the
 * pool's failure counters; a physical-budget refusal gives NULL + ENOMEM and
 * is counted. heap_oom_count counts both. */
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
 * Any thread. Cost: O(1) plus at most RP_HEAP_ROUNDS + 1 purges (up to 4
 * madvise calls each) made after dropping the heap lock; takes the lock
 * once, plus once per purge. The error path (a pointer that is not a live
 * block) walks the fragments to name the error: O(fragments). */
void rpi_heap_free(rp_pool *p, void *ptr)
{
    if (!ptr || !in_heap_or_report(p, ptr, "free of"))
        return;
    rp_heap *h = heap_of(p);
    /* The block's header: a cache (and often TLB) miss taken now rather
     * than with the lock held. A hint, not an access. */
    __builtin_prefetch((const char *)ptr - HDR_BYTES, 1, 3);
    op o;
    op_init(&o);
    lockctx lc;
    CS_ENTER(h, &lc);
    free_locked(p, h, ptr, &o);
    run_jobs(p, h, &o, &lc);
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
    op o;
    op_init(&o);
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

/* Purge lazy fragments that turned lazy at or before cutoff_ms (UINT64_MAX:
 * all), oldest first, until `bytes` are released; for the pool's purger
 * (expired: cutoff = now - purge_delay_ms), for rp_purge and for physical
 * budget pressure. Returns the bytes released. Any thread. Cost: O(1) per
 * fragment purged, each with its own short lock section; madvise runs with
 * the lock released. */
size_t rpi_heap_purge_lazy(rp_pool *p, size_t bytes, uint64_t cutoff_ms)
{
    rp_heap *h = heap_of(p);
    if (!h || !lazy_mode(h))
        return 0;
    size_t got = 0;
    /* At most as many rounds as there were lazy fragments: one that comes
     * back lazy (its purge failed) is not taken twice. */
    for (uint64_t n = rp_load_relaxed_u64(&h->lazy_count); n && got < bytes; n--) {
        op o;
        op_init(&o);
        lockctx lc;
        CS_ENTER(h, &lc);
        lazy_slot *old = lazy_oldest(h);
        bool go = old && old->ms <= cutoff_ms;
        if (go)
            evict_oldest(h, &o);
        run_jobs(p, h, &o, &lc);
        publish_stats(p, h);
        CS_LEAVE(h, &lc);
        got += o.uncharge;
        finish(p, &o);
        if (!go)
            break;
    }
    return got;
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
 * inherits it held by a thread that does not exist there; and no job may be
 * in flight (a half-committed growth step or a held fragment would have no
 * owner in the child). So prefork sets fork_pending (jobs started from now
 * on run under the lock) and, dropping the lock between polls, waits until
 * the jobs in flight are completed. They need no lock the forking thread
 * holds: a purge is madvise, a growth step is the account's CAS and
 * mprotect. */
static void fork_lock(rp_heap *h)
{
#if RP_HEAP_LOCK == 3
    ck_spinlock_mcs_lock(&h->lock, &h->fork_node);
#else
    heap_lock(h, NULL);
#endif
}

static void fork_unlock(rp_heap *h)
{
#if RP_HEAP_LOCK == 3
    ck_spinlock_mcs_unlock(&h->lock, &h->fork_node);
#else
    heap_unlock(h, NULL);
#endif
}

void rpi_heap_prefork(rp_pool *p)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return;
    RP_HIDE_BEGIN();
    for (;;) {
        fork_lock(h);
        rp_store_relaxed_u64(&h->fork_pending, 1);
        if (!h->nheld && !h->growing)
            break;
        fork_unlock(h);
        sched_yield();
    }
    RP_HIDE_END();
}

void rpi_heap_postfork(rp_pool *p)
{
    rp_heap *h = heap_of(p);
    if (!h)
        return;
    RP_HIDE_BEGIN();
    rp_store_relaxed_u64(&h->fork_pending, 0);
    fork_unlock(h);
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

/* White-box counters for tests and benchmarks, under the lock:
 * out[0] OS calls made holding the lock, out[1] OS calls made without it,
 * out[2] held fragments, out[3] growing, out[4] lazy fragments,
 * out[5] their dirty bytes, out[6] the cap on those, out[7] jobs completed,
 * out[8] failed purges. */
void rpi_heap_counters(rp_pool *p, uint64_t *out)
{
    rp_heap *h = heap_of(p);
    memset(out, 0, 9 * sizeof *out);
    if (!h)
        return;
    lockctx lc;
    CS_ENTER(h, &lc);
    out[0] = h->os_calls[OS_LOCKED];
    out[1] = h->os_calls[OS_UNLOCKED];
    out[2] = h->nheld;
    out[3] = h->growing;
    out[4] = h->lazy_count;
    out[5] = h->lazy_bytes;
    out[6] = h->lazy_max;
    out[7] = h->jobs_done;
    out[8] = h->purge_failures;
    CS_LEAVE(h, &lc);
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
/* Invariant checker. Walks every fragment, every bin and the lazy list under
 * the lock and reports the first broken invariant (RP_ERR_INVARIANT).
 * Returns 0 or -EFAULT. Cost: O(fragments). Exact: the lock makes it a
 * quiescent point for the structure (held fragments and a growth step in
 * flight are part of the state it checks). */

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
    size_t nused = 0, nfree = 0, nheld = 0, allocated = 0, clean = 0, prev = 0;
    size_t nlazy = 0, lazy_bytes = 0;
    bool prev_free = false;
    frag *last = NULL;
    for (frag *f = (frag *)h->base; (uintptr_t)f < heap_end(h);
         f = (frag *)((uintptr_t)f + fsize(f))) {
        if (!frag_sound(h, f))
            FAIL(f, "heap: fragment header at %p is damaged", (void *)f);
        if (f->prev_size != prev)
            FAIL(f, "heap: fragment %p records a lower neighbour of %zu bytes, "
                 "which has %zu", (void *)f, (size_t)f->prev_size, prev);
        range I = interior(h, (uintptr_t)f, fsize(f)), c = rclean(f);
        if (fused(f)) {
            nused++;
            allocated += fsize(f);
            if (f->req == 0 || f->req + HDR_BYTES > fsize(f) ||
                frag_for(f->req, SIZE_MAX / 4) != fsize(f))
                FAIL(f, "heap: live block %p: request %zu does not match "
                     "fragment size %zu", (void *)f, (size_t)f->req, fsize(f));
            prev_free = false;
            prev = fsize(f);
            last = f;
            continue;
        }
        if (rlen(c) && (c.lo < I.lo || c.hi > I.hi || c.lo % h->page ||
                        c.hi % h->page))
            FAIL(f, "heap: free fragment %p: purged range [%p, %p) outside "
                 "its interior", (void *)f, (void *)c.lo, (void *)c.hi);
        if (!rlen(c) && (c.lo || c.hi))
            FAIL(f, "heap: free fragment %p: malformed purged range", (void *)f);
        if (fheld(f)) {
            nheld++;
            if (f->req)
                FAIL(f, "heap: held fragment %p is marked lazy", (void *)f);
            prev_free = false;
        } else {
            if (prev_free)
                FAIL(f, "heap: free fragments %p and %p are adjacent (not "
                     "coalesced)", (void *)last, (void *)f);
            nfree++;
            clean += rlen(c);
            if (f->req) {
                size_t slot = (size_t)f->req - 1;
                if (slot >= LAZY_SLOTS || h->lazy[slot].f != f)
                    FAIL(f, "heap: lazy fragment %p is not in its slot "
                         "%zu", (void *)f, slot);
                nlazy++;
                lazy_bytes += dirty_of(h, f);
            }
            prev_free = true;
        }
        prev = fsize(f);
        last = f;
    }
    if (last != h->top)
        FAIL(last, "heap: top fragment is %p, the walk ends at %p",
             (void *)h->top, (void *)last);
    if (nused != h->nused || nfree != h->nfree || nheld != h->nheld)
        FAIL(h->base, "heap: %zu used / %zu free / %zu held fragments counted, "
             "%zu / %zu / %zu found", h->nused, h->nfree, (size_t)h->nheld,
             nused, nfree, nheld);
    if (allocated != h->allocated)
        FAIL(h->base, "heap: allocated counter %zu, live fragments sum to %zu",
             h->allocated, allocated);
    if (clean + h->held_clean != h->clean_bytes)
        FAIL(h->base, "heap: purged counter %zu, purged ranges sum to %zu + "
             "%zu held", h->clean_bytes, clean, h->held_clean);
    size_t inlist = 0, nslots = 0;
    uint64_t prev_ms = 0;
    uint32_t back_slot = NO_SLOT;
    for (uint32_t s = h->lazy_first; s != NO_SLOT; s = h->lazy[s].next) {
        frag *f = h->lazy[s].f;
        if (++inlist > LAZY_SLOTS)
            FAIL(h->base, "heap: lazy list longer than %d (a cycle)", LAZY_SLOTS);
        if (h->lazy[s].prev != back_slot)
            FAIL(f, "heap: lazy slot %u: back link broken", (unsigned)s);
        if (!f || !frag_sound(h, f) || !ffree(f) || f->req != (uint64_t)s + 1)
            FAIL(f, "heap: lazy slot %u holds %p, which is not a lazy free "
                 "fragment", (unsigned)s, (void *)f);
        if (h->lazy[s].ms < prev_ms)
            FAIL(f, "heap: lazy list out of order at slot %u", (unsigned)s);
        prev_ms = h->lazy[s].ms;
        back_slot = s;
    }
    if (back_slot != h->lazy_last)
        FAIL(h->base, "heap: lazy list ends at slot %u, last is %u",
             (unsigned)back_slot, (unsigned)h->lazy_last);
    for (uint32_t s = h->lazy_free; s != NO_SLOT; s = h->lazy[s].next) {
        if (++nslots > LAZY_SLOTS || h->lazy[s].f)
            FAIL(h->base, "heap: lazy free slot stack is broken at %u",
                 (unsigned)s);
    }
    if (inlist + nslots != LAZY_SLOTS)
        FAIL(h->base, "heap: %zu lazy slots used + %zu free != %d", inlist,
             nslots, LAZY_SLOTS);
    if (inlist != nlazy || nlazy != h->lazy_count || lazy_bytes != h->lazy_bytes)
        FAIL(h->base, "heap: %zu lazy fragments with %zu bytes found, %zu in "
             "the list, %llu with %zu bytes counted", nlazy, lazy_bytes, inlist,
             (unsigned long long)h->lazy_count, h->lazy_bytes);
    if (h->lazy_bytes > h->lazy_max)
        FAIL(h->base, "heap: %zu lazy bytes above the cap %zu", h->lazy_bytes,
             h->lazy_max);
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
            if (!frag_sound(h, f) || !ffree(f))
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
    op o;
    op_init(&o);
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
