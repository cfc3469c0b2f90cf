/* region.c -- region size classes, lock-free free stacks, CAS-claimed reuse,
 * splitting, and (delayed) purging.
 *
 * A region is a run of 2^cls granules. Its head descriptor's state word
 * (state | cls | kind) is changed only by CAS, so exactly one party wins any
 * transition:
 *
 *   carve -> IN_USE -> (release) -> FREE_DIRTY ---(purge)--> FREE_CLEAN
 *                 \-> PURGING -> FREE_CLEAN / FREE_LAZY        |
 *   FREE_* --(claim by the thread that popped it)--> IN_USE <--/
 *
 * Free regions of a class sit on one ck_stack (mpmc, generation-tagged
 * against ABA; descriptors are never freed, so a stale read of a popped
 * entry's link is harmless). Only the thread that popped a region may move
 * it out of a FREE state: the reuser and a delayed purge both pop before
 * they CAS, so they can never both own it, and the CAS double-checks.
 *
 * Counters per class (relaxed): nfree >= regions on the stack (incremented
 * before a push, decremented after a pop; a purger holds popped regions
 * without decrementing, so an acquirer that sees nfree > 0 and an empty stack
 * waits briefly instead of carving new address space).
 *
 * Runs: a thread that needs new address space for a slab region of a small
 * class carves RUN_BYTES of that class at once, takes the first region and
 * keeps the others as its run (state RESERVED: committed, never touched, not
 * counted physical), taken in address order by its next carves of the
 * class. The regions one thread works in are then adjacent instead of
 * interleaved with other threads' (see docs/DESIGN.md "Runs": two cores
 * writing adjacent regions slow each other down). A run is returned to the
 * free stacks (as FREE_CLEAN) when the thread carves a run of another class,
 * exits, or when an allocation would otherwise fail at a budget.
 *
 *   carve -> RESERVED --(owner takes it)--> IN_USE
 *                     --(run returned)----> FREE_CLEAN
 *
 * Accounting equations (quiescent):
 *   physical = metadata + heap_physical + sum(in_use + dirty) * class bytes
 *   virtual  = metadata + heap_committed + hwm * granule
 *   hwm * granule = sum(in_use + dirty + clean) * class bytes
 *
 * TSan: stack operations are hidden (RP_HIDE_*); the hand-off of a region is
 * shown as rp_hb_release(desc) before it is pushed and rp_hb_acquire(desc)
 * after it is claimed (see atomic.h).
 */
#include "internal.h"

#include <sched.h>
#include <signal.h>
#include <string.h>

#define FREE_STATE(s) ((s) == RS_FREE_DIRTY || (s) == RS_FREE_LAZY || (s) == RS_FREE_CLEAN)

int rpi_class_of(const rp_pool *p, size_t bytes)
{
    size_t gran = (size_t)1 << p->gshift;
    if (bytes <= gran)
        return 0;
    if (bytes > rpi_class_bytes(p, p->nclasses - 1))
        return -1;
    return (int)(rp_log2(bytes - 1) + 1 - p->gshift);
}

static inline rp_rdesc *desc_of_link(ck_stack_entry_t *e)
{
    return (rp_rdesc *)((char *)e - offsetof(rp_rdesc, link));
}

static void push_free(rp_pool *p, rp_rdesc *d, unsigned cls)
{
    rp_add_relaxed_u64(&p->cls[cls].nfree, 1);
    RP_HIDE_BEGIN();
    ck_stack_push_mpmc(&p->cls[cls].free, &d->link);
    RP_HIDE_END();
}

static rp_rdesc *pop_free(rp_pool *p, unsigned cls)
{
    RP_HIDE_BEGIN();
    ck_stack_entry_t *e = ck_stack_pop_mpmc(&p->cls[cls].free);
    RP_HIDE_END();
    if (!e)
        return NULL;
    rp_sub_relaxed_u64(&p->cls[cls].nfree, 1);
    return desc_of_link(e);
}

/* Gauge moves between states, per class. */
static uint64_t *gauge(rp_pool *p, unsigned cls, unsigned state)
{
    struct rp_class *c = &p->cls[cls];
    return state == RS_IN_USE ? &c->in_use
           : state == RS_FREE_CLEAN ? &c->clean
                                    : &c->dirty; /* DIRTY, LAZY, PURGING */
}

static void gauge_move(rp_pool *p, unsigned cls, unsigned from, unsigned to)
{
    rp_sub_relaxed_u64(gauge(p, cls, from), 1);
    rp_add_relaxed_u64(gauge(p, cls, to), 1);
}

/* Make region d (popped by us, state word w) IN_USE for `kind`.
 * Returns 0, or -ENOMEM (physical budget; d is pushed back untouched). */
static int claim(rp_pool *p, rp_rdesc *d, unsigned kind)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    unsigned cls = RW_CLS(w), st = RW_STATE(w);
    size_t bytes = rpi_class_bytes(p, cls);
    if (!FREE_STATE(st)) {
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p on free stack of class %u has state %u",
                   rpi_desc_base(p, d), cls, st);
        return -EFAULT;
    }
    if (st == RS_FREE_CLEAN && rpi_phys_charge(p, bytes)) {
        push_free(p, d, cls);
        return -ENOMEM;
    }
    /* CAS: FREE_* -> IN_USE. We popped d, so no one else may change it; a
     * failure means metadata damage, not a race. Pairs with the CAS that
     * made it free (release or purge). */
    if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_IN_USE, cls, kind))) {
        if (st == RS_FREE_CLEAN)
            rpi_phys_uncharge(p, bytes);
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p changed state while claimed", rpi_desc_base(p, d));
        return -EFAULT;
    }
    gauge_move(p, cls, st, RS_IN_USE);
    rp_add_relaxed_u64(&p->cls[cls].reuses, 1);
    return 0;
}

/* After a region becomes ours: TSan edge from its last releaser, fresh
 * generation, cleared owner state. zero_user = false only for a cached
 * user region handed out as a user region again: its user area is still all
 * zero (zeroed when it was handed out; nothing writes a user region's). */
static rp_rdesc *hand_out(rp_pool *p, rp_rdesc *d, bool zero_user)
{
    rp_hb_acquire(d); /* pairs with rp_hb_release in put_shared/cache_put */
    rp_store_relaxed_u32(&d->gen, rp_load_relaxed_u32(&d->gen) + 1);
    if (zero_user)
        memset(&d->user, 0, sizeof d->user);
    rp_unpoison(rpi_desc_base(p, d), rpi_desc_bytes(p, d));
    return d;
}

static rp_rdesc *handed_out(rp_pool *p, rp_rdesc *d)
{
    return hand_out(p, d, true);
}

/* The one report for a release whose state word moved under an owner that
 * held the region (metadata damage, not a race). */
static void changed_state(rp_pool *p, rp_rdesc *d)
{
    rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
               "region %p changed state while released", rpi_desc_base(p, d));
}

/* Purger period: a quarter of the delay, at least 5 ms. */
static uint64_t purge_step(const rp_pool *p)
{
    return p->cfg.purge_delay_ms / 4 > 5 ? p->cfg.purge_delay_ms / 4 : 5;
}

/* ---- runs (see the top of the file) -------------------------------------- */

#define RUN_BYTES ((size_t)1 << 20) /* address space one run carve takes */
#define RUN_MAKE(g, n, cls) ((uint64_t)(g) << 32 | (uint64_t)(n) << 8 | (uint64_t)(cls))
#define RUN_G(w) ((uint32_t)((w) >> 32))            /* next head granule */
#define RUN_N(w) ((uint32_t)((w) >> 8) & 0xffffffu) /* regions left */
#define RUN_CLS(w) ((unsigned)((w) & 0xffu))

/* Regions of class cls that one carve takes for a run (1: no run). O(1). */
static size_t run_count(const rp_pool *p, unsigned cls)
{
    size_t bytes = rpi_class_bytes(p, cls);
    return bytes >= RUN_BYTES ? 1 : RUN_BYTES / bytes;
}

/* The one report for a region of a run whose state word is not RESERVED
 * (metadata damage: nothing else moves a region of a run). */
static void run_damaged(rp_pool *p, rp_rdesc *d, uint32_t w)
{
    rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
               "region %p of a thread's run has word %#x", rpi_desc_base(p, d), w);
}

/* Take the next region of ts's run for the calling thread (ts is its own
 * shard) if the run is of class cls, as IN_USE for kind; NULL if the run is
 * empty, of another class or stolen meanwhile. The caller has charged the
 * physical bytes. O(1). */
static rp_rdesc *run_take(rp_pool *p, rp_tstate *ts, unsigned cls, unsigned kind)
{
    uint64_t w = rp_load_relaxed_u64(&ts->run);
    if (RUN_N(w) == 0 || RUN_CLS(w) != cls)
        return NULL;
    uint32_t g = RUN_G(w), n = RUN_N(w);
    uint64_t rest = n > 1 ? RUN_MAKE(g + (1u << cls), n - 1, cls) : 0;
    /* CAS: races with a stealer's CAS to 0 (exactly one of us owns region
     * g). The run's descriptors were written by this thread's carve. */
    if (!rp_cas_u64(&ts->run, &w, rest))
        return NULL; /* stolen: the owner is the only other writer */
    rp_rdesc *d = &p->desc[g];
    uint32_t dw = rp_load_relaxed_u32(&d->word);
    if (dw != RW_MAKE(RS_RESERVED, cls, RK_NONE)) {
        run_damaged(p, d, dw);
        return NULL;
    }
    /* We own d (we took it off the run): a release store suffices. */
    rp_store_release_u32(&d->word, RW_MAKE(RS_IN_USE, cls, kind));
    gauge_move(p, cls, RS_FREE_CLEAN, RS_IN_USE);
    return d;
}

/* Return what is left of ts's run to the free stacks as clean regions.
 * Any thread (the owner, or a stealer under the RCU read lock: atomics and
 * stack pushes only). Returns the regions moved. O(regions left). */
static uint64_t run_return(rp_pool *p, rp_tstate *ts)
{
    uint64_t w = rp_load_relaxed_u64(&ts->run);
    /* CAS to 0: races with the owner's take and other stealers; whoever
     * empties the word owns the regions it named. */
    do {
        if (RUN_N(w) == 0)
            return 0;
    } while (!rp_cas_u64(&ts->run, &w, 0));
    unsigned cls = RUN_CLS(w);
    for (uint32_t i = 0; i < RUN_N(w); i++) {
        rp_rdesc *d = &p->desc[RUN_G(w) + (i << cls)];
        uint32_t dw = RW_MAKE(RS_RESERVED, cls, RK_NONE);
        /* CAS as a check: nothing else may move a region of a run. */
        if (!rp_cas_u32(&d->word, &dw, RW_MAKE(RS_FREE_CLEAN, cls, RK_NONE))) {
            run_damaged(p, d, dw);
            continue;
        }
        /* It stays in the clean gauge. */
        rp_hb_release(d); /* pairs with rp_hb_acquire in hand_out */
        push_free(p, d, cls);
    }
    return RUN_N(w);
}

struct run_ctx {
    rp_pool *p;
    uint64_t moved;
};

/* rp_check: regions named by the shard's run, added to runs[class]. */
static void run_count_shard(rp_tstate *ts, void *arg)
{
    uint64_t *runs = arg, w = rp_load_relaxed_u64(&ts->run);
    runs[RUN_CLS(w)] += RUN_N(w);
}

static void run_return_shard(rp_tstate *ts, void *arg)
{
    struct run_ctx *c = arg;
    c->moved += run_return(c->p, ts);
}

/* Return every thread's run to the free stacks (an allocation is about to
 * fail at a budget). Returns the regions moved. O(shards). */
static uint64_t run_steal(rp_pool *p)
{
    struct run_ctx c = {p, 0};
    rpi_threads_foreach(p, run_return_shard, &c);
    return c.moved;
}

/* A region of class cls that was never used, as IN_USE for kind: with ts
 * (the caller's shard, for slabs) and a class small enough for runs, the
 * next region of ts's run, else a run carve; else (or when the run does not
 * fit the budget or the reservation) one carved region. The caller has
 * charged the region's physical bytes. NULL + *why on failure. */
static rp_rdesc *fresh_region(rp_pool *p, rp_tstate *ts, unsigned cls, unsigned kind,
                              enum rp_fail *why)
{
    size_t k = ts ? run_count(p, cls) : 1;
    rp_rdesc *d = NULL;
    if (k > 1) {
        d = run_take(p, ts, cls, kind);
        if (d)
            return d;
        run_return(p, ts); /* what is left of a run of another class */
        d = rpi_carve(p, cls, kind, k, why);
        if (d) {
            rp_add_relaxed_u64(&p->cls[cls].clean, k - 1);
            /* Publishes the run's descriptors to stealers: pairs with
             * their CAS (the word is 0, only we fill it). */
            rp_store_release_u64(&ts->run, RUN_MAKE(rpi_desc_index(p, d) + ((size_t)1 << cls),
                                                    k - 1, cls));
        }
    }
    if (!d) {
        k = 1;
        d = rpi_carve(p, cls, kind, 1, why);
    }
    if (d) {
        rp_add_relaxed_u64(&p->cls[cls].in_use, 1);
        rp_add_relaxed_u64(&p->cls[cls].carves, k);
    }
    return d;
}

/* ---- per-thread region cache ----------------------------------------------
 *
 * With a delayed purge and the background purger (p->rc_cap != 0), a region
 * released by a thread that has a shard goes into that shard's cache instead
 * of onto the shared free stack: state IN_USE -> CACHED by one CAS (the same
 * CAS that detects a double release), then a relaxed store into an empty
 * slot. The same thread's next acquire of that class empties the slot with
 * an exchange and stores IN_USE: no counter, no stack, no other atomic. The
 * reuse path of a churning thread thus costs one CAS and one exchange
 * instead of about a dozen read-modify-writes on shared lines.
 *
 * Ownership of a cached region goes to whoever empties its slot: the owner's
 * exchange, or a stealer's CAS slot d -> NULL (any thread: the purger for
 * regions past the purge delay, a purge or budget squeeze for all of them,
 * the detach of the shard). The two are atomic read-modify-writes of the
 * same slot, so exactly one succeeds; the loser sees NULL or another region
 * and leaves it. A stealer then moves the region CACHED -> FREE_DIRTY and
 * pushes it like a release would. A slot never names a region in two places
 * at once: only the region's owner fills a slot, and it owns the region
 * only after emptying the slot it came from.
 *
 * Accounting: a cached region stays in its class's in_use gauge (so the hot
 * path moves no gauge) and counted in physical_bytes; stats report it as
 * free_dirty by walking the shards (rpi_region_cache_stats), and a stealer
 * moves the gauge in_use -> dirty. Cache hits are counted per shard and
 * folded into the class's reuses when the shard detaches.
 *
 * A cache holds at most RP_RCACHE_WAYS regions per class and rc_cap bytes;
 * memory in caches is never stranded longer than the purge delay (the
 * purger steals expired entries) and never stands between an allocation and
 * its budget (rpi_purge_for steals everything before giving up). */

/* Calling thread's shard for p, or NULL; never creates one. O(1). */
static inline rp_tstate *cache_shard(rp_pool *p)
{
    return rp_load_relaxed_u32(&p->rc_on) ? rpi_tstate_fast(p) : NULL;
}

/* Take a cached region of class cls for kind from shard ts, or NULL; *prev
 * is the kind it had before it was cached. The caller hands it out. O(ways). */
static rp_rdesc *cache_take(rp_pool *p, rp_tstate *ts, unsigned cls, unsigned kind,
                            unsigned *prev)
{
    for (int i = 0; i < RP_RCACHE_WAYS; i++) {
        void **slot = (void **)&ts->rcache[cls][i];
        if (!rp_load_relaxed_ptr(slot))
            continue;
        /* Exchange: empties the slot; pairs with a stealer's CAS on the
         * slot (exactly one of us gets d). */
        rp_rdesc *d = rp_swap_ptr(slot, NULL);
        if (!d)
            continue; /* stolen meanwhile (rc_bytes is recounted later) */
        ts->rc_bytes -= rpi_class_bytes(p, cls);
        uint32_t w = rp_load_relaxed_u32(&d->word);
        if (RW_STATE(w) != RS_CACHED || RW_CLS(w) != cls) {
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p in a thread cache of class %u has word %#x",
                       rpi_desc_base(p, d), cls, w);
            continue;
        }
        /* We own d (we emptied its slot): a plain release store suffices;
         * a racing double release sees CACHED, not IN_USE, and fails. */
        *prev = RW_KIND(w);
        rp_store_release_u32(&d->word, RW_MAKE(RS_IN_USE, cls, kind));
        rp_store_relaxed_u64(&ts->rc_hits[cls], rp_load_relaxed_u64(&ts->rc_hits[cls]) + 1);
        return d;
    }
    return NULL;
}

/* Cache slots of class k in use in shard ts. Any thread (relaxed). O(ways). */
static unsigned slots_used(const rp_tstate *ts, unsigned k)
{
    unsigned n = 0;
    for (int i = 0; i < RP_RCACHE_WAYS; i++)
        n += rp_load_relaxed_ptr((void *const *)&ts->rcache[k][i]) != NULL;
    return n;
}

/* Park region d (class cls, state word *w as validated by the caller) in
 * the calling thread's cache. Returns 1 when cached; 0 when there is no
 * room or no cache (nothing changed); -1 when the CAS IN_USE -> CACHED
 * failed (a concurrent release: *w holds the word found). O(ways). */
static int cache_put(rp_pool *p, rp_rdesc *d, unsigned cls, uint32_t *w)
{
    rp_tstate *ts = cache_shard(p);
    if (!ts)
        return 0;
    size_t bytes = rpi_class_bytes(p, cls);
    if (ts->rc_bytes + bytes > p->rc_cap) {
        /* rc_bytes still counts entries stolen since: count again. */
        uint64_t regions, held;
        rpi_region_cache_shard(p, ts, &regions, &held);
        ts->rc_bytes = held;
        if (held + bytes > p->rc_cap)
            return 0;
    }
    for (int i = 0; i < RP_RCACHE_WAYS; i++) {
        void **slot = (void **)&ts->rcache[cls][i];
        if (rp_load_relaxed_ptr(slot))
            continue;
        rp_store_relaxed_u32(&d->epoch, (uint32_t)rp_load_relaxed_u64(&p->rc_epoch));
        rp_hb_release(d); /* pairs with rp_hb_acquire in hand_out */
        rp_poison(rpi_desc_base(p, d), bytes);
        /* CAS IN_USE -> CACHED: of two racing releasers exactly one wins.
         * Pairs with the CAS or store that made it IN_USE. */
        /* The cached word keeps the kind it had (see hand_out). */
        if (!rp_cas_u32(&d->word, w, RW_MAKE(RS_CACHED, cls, RW_KIND(*w)))) {
            rp_unpoison(rpi_desc_base(p, d), bytes);
            return -1;
        }
        ts->rc_bytes += bytes;
        /* Only we fill our slots, and this one was empty: a plain store.
         * A stealer that reads it and CASes it to NULL owns d from then. */
        rp_store_relaxed_ptr(slot, d);
        return 1;
    }
    return 0;
}

/* Region d, just stolen from a cache slot: CACHED -> FREE_DIRTY onto its
 * free stack. O(1). */
static void cache_evict(rp_pool *p, rp_rdesc *d)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    unsigned cls = RW_CLS(w);
    /* CAS CACHED -> FREE_DIRTY: we own d (we emptied its slot), so this
     * fails only on damage. Pairs with the CAS in cache_put. */
    if (RW_STATE(w) != RS_CACHED ||
        !rp_cas_u32(&d->word, &w, RW_MAKE(RS_FREE_DIRTY, cls, RK_NONE))) {
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p taken from a thread cache has word %#x",
                   rpi_desc_base(p, d), w);
        return;
    }
    gauge_move(p, cls, RS_IN_USE, RS_FREE_DIRTY);
    push_free(p, d, cls);
}

struct steal_ctx {
    rp_pool *p;
    bool all;          /* steal every entry, else only expired ones */
    uint32_t epoch;    /* expired: put at least rc_ticks ticks before this */
    uint64_t release_ms; /* release time given to stolen regions */
    uint64_t stolen;   /* regions moved to the free stacks */
};

/* Steal the entries of one shard released at or before the cutoff. Runs
 * under the RCU read lock: atomics and a stack push only. O(classes * ways). */
static void steal_shard(rp_tstate *ts, void *arg)
{
    struct steal_ctx *c = arg;
    for (unsigned k = 0; k < c->p->nclasses; k++)
        for (int i = 0; i < RP_RCACHE_WAYS; i++) {
            void **slot = (void **)&ts->rcache[k][i];
            void *d = rp_load_relaxed_ptr(slot);
            if (!d)
                continue;
            uint32_t age = c->epoch - rp_load_relaxed_u32(&((rp_rdesc *)d)->epoch);
            if (!c->all && age < c->p->rc_ticks)
                continue;
            /* CAS d -> NULL: pairs with the owner's exchange in cache_take;
             * exactly one of us empties the slot and owns d. */
            if (rp_cas_ptr(slot, &d, NULL)) {
                rp_store_relaxed_u64(&((rp_rdesc *)d)->release_ms, c->release_ms);
                cache_evict(c->p, d);
                c->stolen++;
            }
        }
}

/* Move cached regions to the free stacks: all of them, or those that sat
 * in a cache for rc_ticks purger ticks (they go with release time 0, so the
 * purge that follows takes them). Returns how many moved.
 * O(shards * classes). */
static uint64_t cache_steal(rp_pool *p, bool all)
{
    if (!p->rc_cap)
        return 0;
    struct steal_ctx c = {p, all, (uint32_t)rp_load_relaxed_u64(&p->rc_epoch),
                          all ? rpi_now_ms() : 0, 0};
    rpi_threads_foreach(p, steal_shard, &c);
    return c.stolen;
}

void rpi_region_thread_exit(rp_pool *p, rp_tstate *ts)
{
    struct steal_ctx c = {p, true, 0, rpi_now_ms(), 0};
    steal_shard(ts, &c);
    run_return(p, ts);
    ts->rc_bytes = 0;
    /* Fold the shard's hits into the shared counters before it goes. */
    for (unsigned k = 0; k < p->nclasses; k++) {
        uint64_t h = rp_load_relaxed_u64(&ts->rc_hits[k]);
        if (h) {
            rp_store_relaxed_u64(&ts->rc_hits[k], 0);
            rp_add_relaxed_u64(&p->cls[k].reuses, h);
        }
    }
}

struct cstat_ctx {
    unsigned n;
    uint64_t *cached, *hits;
};

static void cstat_shard(rp_tstate *ts, void *arg)
{
    struct cstat_ctx *c = arg;
    for (unsigned k = 0; k < c->n; k++) {
        c->hits[k] += rp_load_relaxed_u64(&ts->rc_hits[k]);
        c->cached[k] += slots_used(ts, k);
    }
}

void rpi_region_cache_shard(const rp_pool *p, rp_tstate *ts, uint64_t *regions,
                            uint64_t *bytes)
{
    *regions = *bytes = 0;
    for (unsigned k = 0; k < p->nclasses; k++) {
        unsigned n = slots_used(ts, k);
        *regions += n;
        *bytes += n * rpi_class_bytes(p, k);
    }
}

void rpi_region_cache_stats(rp_pool *p, uint64_t *cached, uint64_t *hits)
{
    if (!p->rc_cap)
        return;
    struct cstat_ctx c = {p->nclasses, cached, hits};
    rpi_threads_foreach(p, cstat_shard, &c);
}

/* Try the free stack of class cls; wait briefly while a purger holds some. */
static rp_rdesc *reuse(rp_pool *p, unsigned cls, unsigned kind, int *err)
{
    for (int spin = 0; spin < 64; spin++) {
        rp_rdesc *d = pop_free(p, cls);
        if (d) {
            int rc = claim(p, d, kind);
            if (rc == 0)
                return d;
            *err = rc;
            if (rc == -ENOMEM)
                return NULL;
            continue; /* corrupt entry dropped; try the next */
        }
        if (rp_load_relaxed_u64(&p->cls[cls].nfree) == 0)
            return NULL;
        sched_yield(); /* a purger or pusher is mid-operation */
    }
    return NULL;
}

/* Split a free region of a larger class: keep the first 2^cls granules and
 * push the rest as free regions of classes cls .. k-1 in the same state. */
static rp_rdesc *split(rp_pool *p, unsigned cls, unsigned kind, int *err)
{
    for (unsigned k = cls + 1; k < p->nclasses; k++) {
        rp_rdesc *d = pop_free(p, k);
        if (!d)
            continue;
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        if (!FREE_STATE(st) || RW_CLS(w) != k) {
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p on free stack of class %u has word %#x",
                       rpi_desc_base(p, d), k, w);
            continue;
        }
        size_t mine = rpi_class_bytes(p, cls);
        if (st == RS_FREE_CLEAN && rpi_phys_charge(p, mine)) {
            push_free(p, d, k);
            *err = -ENOMEM;
            return NULL;
        }
        /* CAS FREE_* -> PURGING marks it ours while we rewrite descriptors;
         * pairs with the CAS that freed it. */
        if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, k, RK_NONE))) {
            if (st == RS_FREE_CLEAN)
                rpi_phys_uncharge(p, mine);
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p changed state while split", rpi_desc_base(p, d));
            continue;
        }
        rp_sub_relaxed_u64(gauge(p, k, st), 1);
        size_t head = rpi_desc_index(p, d);
        uint64_t rel = rp_load_relaxed_u64(&d->release_ms);
        for (unsigned j = cls; j < k; j++) {
            size_t ph = head + ((size_t)1 << j);   /* piece of class j */
            size_t n = (size_t)1 << j;
            rp_rdesc *pd = &p->desc[ph];
            for (size_t g = 1; g < n; g++)
                rp_store_relaxed_u32(&pd[g].head, (uint32_t)ph);
            rp_store_relaxed_u32(&pd->head, (uint32_t)ph);
            rp_store_relaxed_u64(&pd->release_ms, rel);
            rp_store_relaxed_u32(&pd->word, RW_MAKE(st, j, RK_NONE));
            rp_add_relaxed_u64(gauge(p, j, st), 1);
            rp_add_relaxed_u64(&p->cls[j].splits, 1);
            rp_hb_release(pd); /* the next claimer sees our descriptor writes */
            push_free(p, pd, j);
        }
        for (size_t g = 1; g < ((size_t)1 << cls); g++)
            rp_store_relaxed_u32(&d[g].head, (uint32_t)head);
        rp_store_relaxed_u32(&d->word, RW_MAKE(RS_IN_USE, cls, kind));
        rp_add_relaxed_u64(&p->cls[cls].in_use, 1);
        rp_add_relaxed_u64(&p->cls[cls].splits, 1);
        return d;
    }
    return NULL;
}

static rp_rdesc *region_get_shared(rp_pool *p, unsigned cls, unsigned kind);

rp_rdesc *rpi_region_get(rp_pool *p, size_t bytes, unsigned kind)
{
    int c = rpi_class_of(p, bytes);
    if (bytes == 0 || c < 0)
        return rpi_fail_null(p, RP_FAIL_OTHER, EINVAL);
    unsigned cls = (unsigned)c;
    rp_tstate *ts = cache_shard(p);
    unsigned prev;
    rp_rdesc *d = ts ? cache_take(p, ts, cls, kind, &prev) : NULL;
    if (d)
        return handed_out(p, d);
    return region_get_shared(p, cls, kind);
}

/* rpi_region_get past the thread cache: the class's free stack, new
 * address space, a split, and at a budget what the caches hold. */
static rp_rdesc *region_get_shared(rp_pool *p, unsigned cls, unsigned kind)
{
    int err = 0;
    rp_rdesc *d = reuse(p, cls, kind, &err);
    if (d)
        return handed_out(p, d);
    if (err == -ENOMEM)
        return rpi_fail_null(p, RP_FAIL_PHYSICAL, ENOMEM);

    /* Nothing free in this class: the thread's run (slabs), else new
     * address space. */
    size_t size = rpi_class_bytes(p, cls);
    enum rp_fail why = RP_FAIL_PHYSICAL;
    if (rpi_phys_charge(p, size) == 0) {
        d = fresh_region(p, kind == RK_SLAB ? rpi_tstate_fast(p) : NULL, cls, kind, &why);
        if (d)
            return handed_out(p, d);
        rpi_phys_uncharge(p, size);
    }
    /* At a budget or out of reservation: split a larger free region; failing
     * that, take back what thread caches and runs hold and try again. */
    for (int round = 0; round < 2; round++) {
        err = 0;
        d = split(p, cls, kind, &err);
        if (d)
            return handed_out(p, d);
        if (round || !(cache_steal(p, true) + run_steal(p)))
            break;
        d = reuse(p, cls, kind, &err);
        if (d)
            return handed_out(p, d);
        if (err == -ENOMEM)
            break;
    }
    return rpi_fail_null(p, err == -ENOMEM ? RP_FAIL_PHYSICAL : why, ENOMEM);
}

/* Purge region d (state PURGING, ours) with advice; returns its new free
 * state. Accounts the physical release. */
static unsigned purge_one(rp_pool *p, rp_rdesc *d, unsigned cls, int advice)
{
    size_t bytes = rpi_class_bytes(p, cls);
    rp_poison(rpi_desc_base(p, d), bytes);
    if (rpi_os_purge(rpi_desc_base(p, d), bytes, advice) != 0) {
        rpi_count_fail(p, RP_FAIL_OS);
        return RS_FREE_DIRTY; /* nothing changed: still resident, counted */
    }
    rp_add_relaxed_u64(&p->cls[cls].purges, 1);
    if (advice == RP_PURGE_FREE)
        return RS_FREE_LAZY; /* the kernel may keep the pages: stay counted */
    rpi_phys_uncharge(p, bytes);
    return RS_FREE_CLEAN;
}

/* Release region d (ours, IN_USE, state word w) to its class's free stack:
 * purged now (purge_delay_ms = 0) or dirty for a delayed purge. */
static void put_shared(rp_pool *p, rp_rdesc *d, uint32_t w)
{
    unsigned cls = RW_CLS(w);
    rp_hb_release(d); /* pairs with rp_hb_acquire in hand_out */
    if (p->cfg.purge_delay_ms == 0) {
        /* CAS IN_USE -> PURGING; we own it, so it cannot fail except on
         * damage. */
        if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, cls, RK_NONE))) {
            changed_state(p, d);
            return;
        }
        unsigned st = purge_one(p, d, cls, p->cfg.purge_advice);
        rp_store_relaxed_u32(&d->word, RW_MAKE(st, cls, RK_NONE));
        gauge_move(p, cls, RS_IN_USE, st);
        push_free(p, d, cls);
        return;
    }
    uint64_t now = rpi_now_ms();
    rp_store_relaxed_u64(&d->release_ms, now);
    rp_poison(rpi_desc_base(p, d), rpi_class_bytes(p, cls));
    /* CAS IN_USE -> FREE_DIRTY; pairs with the claim CAS of the next user. */
    if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_FREE_DIRTY, cls, RK_NONE))) {
        changed_state(p, d);
        return;
    }
    gauge_move(p, cls, RS_IN_USE, RS_FREE_DIRTY);
    push_free(p, d, cls);
    if (now >= rp_load_relaxed_u64(&p->next_purge_ms))
        rpi_purge_expired(p);
}

void rpi_region_put(rp_pool *p, rp_rdesc *d)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    int c = cache_put(p, d, RW_CLS(w), &w);
    if (c < 0)
        changed_state(p, d);
    else if (c == 0)
        put_shared(p, d, w);
}

/* ---- public region API --------------------------------------------------- */

void *rp_region_acquire(rp_pool *p, size_t bytes)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    if (rp_load_relaxed_u32(&p->rc_on)) {
        /* Fast path: this thread's cache. */
        rp_tstate *ts = rpi_tstate_fast(p);
        int c = rpi_class_of(p, bytes);
        if (RP_LIKELY(ts && bytes && c >= 0)) {
            unsigned prev;
            rp_rdesc *d = cache_take(p, ts, (unsigned)c, RK_USER, &prev);
            if (d)
                return rpi_desc_base(p, hand_out(p, d, prev != RK_USER));
            d = region_get_shared(p, (unsigned)c, RK_USER);
            return d ? rpi_desc_base(p, d) : NULL;
        }
        if (!ts)
            (void)rpi_tstate_get(p); /* a shard to cache releases in; optional */
    }
    rp_rdesc *d = rpi_region_get(p, bytes, RK_USER);
    return d ? rpi_desc_base(p, d) : NULL;
}

/* Validate ptr as the base of a live region of kind `kind`; report and
 * return NULL otherwise, else store the state word it checked in *wout.
 * Shared by release and size queries. */
static rp_rdesc *live_region(const rp_pool *p, const void *ptr, unsigned kind,
                             const char *what, bool report, uint32_t *wout)
{
    rp_rdesc *d = rpi_desc_lookup(p, ptr);
    rp_pool *mp = (rp_pool *)p;
    if (!d) {
        if (report)
            rpi_report(mp, RP_ERR_FOREIGN, ptr,
                       "%s(%p): not a region of pool %p (outside its region area)",
                       what, ptr, (void *)p);
        return NULL;
    }
    if (rpi_desc_base(p, d) != ptr) {
        if (report)
            rpi_report(mp, RP_ERR_INTERIOR, ptr,
                       "%s(%p): interior pointer into the region at %p",
                       what, ptr, rpi_desc_base(p, d));
        return NULL;
    }
    uint32_t w = rp_load_relaxed_u32(&d->word);
    /* IN_USE with no kind: another thread has just claimed its release. */
    if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) == RK_NONE) {
        if (report)
            rpi_report(mp, RP_ERR_NOT_LIVE, ptr,
                       "%s(%p): region is not live (already released or never acquired)",
                       what, ptr);
        return NULL;
    }
    if (RW_KIND(w) != kind) {
        if (report)
            rpi_report(mp, RP_ERR_WRONG_API, ptr,
                       "%s(%p): region belongs to the %s allocator, not rp_region_acquire",
                       what, ptr,
                       RW_KIND(w) == RK_SLAB    ? "object (slab)"
                       : RW_KIND(w) == RK_LARGE ? "object (large)"
                                                : "arena");
        return NULL;
    }
    *wout = w;
    return d;
}

void rp_region_release(rp_pool *p, void *region)
{
    if (!p || !region)
        return;
    uint32_t w;
    rp_rdesc *d = live_region(p, region, RK_USER, "rp_region_release", true, &w);
    if (!d)
        return;
    /* Park it in this thread's cache (CAS IN_USE|USER -> CACHED), or claim
     * the release (CAS IN_USE|USER -> IN_USE with no kind). Either way, of
     * two racing releasers exactly one wins; the loser is a double release.
     * Pairs with the CAS or store in claim/carve/cache_take that made it
     * IN_USE. */
    int c = cache_put(p, d, RW_CLS(w), &w);
    if (c > 0)
        return;
    uint32_t claimed = RW_MAKE(RS_IN_USE, RW_CLS(w), RK_NONE);
    if (c < 0 || !rp_cas_u32(&d->word, &w, claimed)) {
        rpi_report(p, RP_ERR_NOT_LIVE, region,
                   "rp_region_release(%p): region is not live (released concurrently)",
                   region);
        return;
    }
    put_shared(p, d, claimed);
}

size_t rp_region_size(const rp_pool *p, const void *region)
{
    if (!p || !region)
        return 0;
    uint32_t w;
    rp_rdesc *d = live_region(p, region, RK_USER, "rp_region_size", false, &w);
    return d ? rpi_desc_bytes(p, d) : 0;
}

/* ---- purging --------------------------------------------------------------- */

/* Purge regions of class cls: all of them (force, DONTNEED, LAZY included)
 * or those released before `cutoff` (configured advice). Stops once `want`
 * bytes of physical were released. Returns bytes released. */
static size_t purge_class(rp_pool *p, unsigned cls, bool force, uint64_t cutoff,
                          size_t want)
{
    struct rp_class *c = &p->cls[cls];
    size_t bytes = rpi_class_bytes(p, cls), released = 0;
    if (rp_load_relaxed_u64(&c->dirty) == 0)
        return 0;
    RP_HIDE_BEGIN();
    ck_stack_entry_t *e = rpi_stack_batch_pop(&c->free);
    RP_HIDE_END();
    /* We hold the whole chain; nfree still counts it, so acquirers wait
     * instead of carving. Keep entries we do not purge in `keep`. */
    ck_stack_entry_t *keep = NULL, *todo = NULL;
    while (e) {
        RP_HIDE_BEGIN(); /* link written by ck's push under hiding */
        ck_stack_entry_t *next = e->next;
        RP_HIDE_END();
        rp_rdesc *d = desc_of_link(e);
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        bool old = rp_load_relaxed_u64(&d->release_ms) <= cutoff;
        bool take = (st == RS_FREE_DIRTY && (force || old)) ||
                    (st == RS_FREE_LAZY && force);
        ck_stack_entry_t **list = take ? &todo : &keep;
        RP_HIDE_BEGIN();
        e->next = *list;
        RP_HIDE_END();
        *list = e;
        e = next;
    }
    /* Give the untouched ones back first so acquirers can use them. */
    for (e = keep; e;) {
        RP_HIDE_BEGIN();
        ck_stack_entry_t *next = e->next;
        ck_stack_push_mpmc(&c->free, e);
        RP_HIDE_END();
        e = next;
    }
    int advice = force ? RP_PURGE_DONTNEED : p->cfg.purge_advice;
    for (e = todo; e;) {
        RP_HIDE_BEGIN();
        ck_stack_entry_t *next = e->next;
        RP_HIDE_END();
        rp_rdesc *d = desc_of_link(e);
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        if (released < want &&
            rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, cls, RK_NONE))) {
            /* CAS FREE -> PURGING: we popped it, so this cannot race a
             * claimer; pairs with the CAS that freed it. */
            unsigned ns = purge_one(p, d, cls, advice);
            if (ns == RS_FREE_CLEAN) {
                released += bytes;
                gauge_move(p, cls, st, RS_FREE_CLEAN);
            }
            rp_store_relaxed_u32(&d->word, RW_MAKE(ns, cls, RK_NONE));
        }
        RP_HIDE_BEGIN();
        ck_stack_push_mpmc(&c->free, e);
        RP_HIDE_END();
        e = next;
    }
    return released;
}

size_t rpi_purge_for(rp_pool *p, size_t bytes)
{
    size_t got = 0;
    for (int round = 0; round < 2; round++) {
        for (int c = (int)p->nclasses - 1; c >= 0 && got < bytes; c--)
            got += purge_class(p, (unsigned)c, true, UINT64_MAX, bytes - got);
        /* Then what threads keep: their empty slabs (released into the
         * region layer, possibly into this thread's region cache), then
         * the region caches, and purge again. */
        if (got >= bytes || round)
            break;
        size_t slabs = rpi_slab_steal(p, true);
        if (!cache_steal(p, true) && !slabs)
            break;
    }
    if (got < bytes) /* lazily kept free heap fragments last */
        got += rpi_heap_purge_lazy(p, bytes - got, UINT64_MAX);
    return got;
}

bool rpi_dirty_any(rp_pool *p)
{
    for (unsigned c = 0; c < p->nclasses; c++)
        if (rp_load_relaxed_u64(&p->cls[c].dirty))
            return true;
    return false;
}

size_t rp_purge(rp_pool *p)
{
    if (!p)
        return 0;
    return rpi_purge_for(p, SIZE_MAX);
}

void rpi_purge_expired(rp_pool *p)
{
    uint32_t idle = 0;
    /* CAS 0 -> 1: one purger at a time; pairs with the release store below. */
    if (!rp_cas_u32(&p->purge_busy, &idle, 1))
        return;
    uint64_t now = rpi_now_ms();
    uint64_t delay = p->cfg.purge_delay_ms;
    uint64_t cutoff = now >= delay ? now - delay : 0;
    rpi_slab_steal(p, false); /* empty slabs kept a purge delay unused */
    cache_steal(p, false);    /* expired thread-cache entries first */
    for (unsigned c = 0; c < p->nclasses; c++)
        purge_class(p, c, false, cutoff, SIZE_MAX);
    rpi_heap_purge_lazy(p, SIZE_MAX, cutoff); /* expired free heap fragments */
    rp_store_relaxed_u64(&p->next_purge_ms, now + purge_step(p));
    rp_store_release_u32(&p->purge_busy, 0);
}

/* ---- background purger ----------------------------------------------------- */

static void *purger_main(void *arg)
{
    rp_pool *p = arg;
    uint64_t step = purge_step(p);
    pthread_mutex_lock(&p->purger_lock);
    while (!p->purger_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(step % 1000) * 1000000L;
        ts.tv_sec += (time_t)(step / 1000) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->purger_cond, &p->purger_lock, &ts);
        if (p->purger_stop)
            break;
        pthread_mutex_unlock(&p->purger_lock);
        rp_store_relaxed_u64(&p->rc_epoch, rp_load_relaxed_u64(&p->rc_epoch) + 1);
        rpi_purge_expired(p);
        pthread_mutex_lock(&p->purger_lock);
    }
    pthread_mutex_unlock(&p->purger_lock);
    return NULL;
}

int rpi_purger_start(rp_pool *p)
{
    pthread_mutex_init(&p->purger_lock, NULL);
    pthread_cond_init(&p->purger_cond, NULL);
    if (!p->cfg.purge_thread || p->cfg.purge_delay_ms == 0)
        return 0;
    p->purger_stop = 0;
    uint64_t step = purge_step(p);
    /* Thread caches only with a purger to take back expired entries: a
     * region cached at some point of tick e is taken back at tick
     * e + ceil(delay / step) + 1, i.e. after delay .. delay + step. Set
     * before the purger starts (it reads them); constant afterwards. */
    p->rc_ticks = (p->cfg.purge_delay_ms + step - 1) / step + 1;
    p->rc_cap = p->cfg.region_cache_bytes;
    p->rc_on = p->rc_cap != 0;
    /* The purger must never receive the application's signals (a server
     * that blocks SIGTERM for signalfd would otherwise be killed through
     * this thread): create it with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->purger, NULL, purger_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        p->rc_cap = 0; /* no purger: no caches */
        p->rc_on = 0;
        return -EAGAIN;
    }
    p->purger_running = 1;
    return 0;
}

void rpi_purger_stop(rp_pool *p)
{
    if (p->purger_running) {
        pthread_mutex_lock(&p->purger_lock);
        p->purger_stop = 1;
        pthread_cond_signal(&p->purger_cond);
        pthread_mutex_unlock(&p->purger_lock);
        pthread_join(p->purger, NULL);
        p->purger_running = 0;
    }
    pthread_cond_destroy(&p->purger_cond);
    pthread_mutex_destroy(&p->purger_lock);
}

/* ---- invariant check ---------------------------------------------------------- */

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            rpi_report(p, RP_ERR_INVARIANT, NULL, __VA_ARGS__);               \
            return -EFAULT;                                                   \
        }                                                                     \
    } while (0)

static int region_check(rp_pool *p);

/* Exclude the delayed purger (it holds regions in PURGING while it works),
 * so that a check at a quiescent point of the program is exact. */
int rpi_region_check(rp_pool *p)
{
    uint32_t idle = 0;
    /* CAS 0 -> 1 as in rpi_purge_expired; pairs with its release store. */
    while (!rp_cas_u32(&p->purge_busy, &idle, 1)) {
        idle = 0;
        sched_yield();
    }
    int rc = region_check(p);
    rp_store_release_u32(&p->purge_busy, 0);
    return rc;
}

static int region_check(rp_pool *p)
{
    uint64_t in_use[RP_MAX_CLASSES] = {0}, dirty[RP_MAX_CLASSES] = {0},
             clean[RP_MAX_CLASSES] = {0}, cached[RP_MAX_CLASSES] = {0},
             slots[RP_MAX_CLASSES] = {0}, hits[RP_MAX_CLASSES] = {0},
             reserved[RP_MAX_CLASSES] = {0}, runs[RP_MAX_CLASSES] = {0};
    size_t hwm = rp_load_acquire_u64(&p->hwm);
    size_t used_bytes = 0;
    for (size_t g = 0; g < hwm;) {
        rp_rdesc *d = &p->desc[g];
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w), cls = RW_CLS(w);
        CHECK(st != RS_TAIL && st != RS_UNUSED && st != RS_PURGING,
              "check: granule %zu is a region head with state %u", g, st);
        CHECK(cls < p->nclasses, "check: region %zu has class %u", g, cls);
        CHECK(rp_load_relaxed_u32(&d->head) == g,
              "check: head %zu names head %u", g, rp_load_relaxed_u32(&d->head));
        size_t n = (size_t)1 << cls;
        CHECK(g + n <= hwm, "check: region %zu of class %u passes the hwm %zu", g, cls, hwm);
        for (size_t t = 1; t < n; t++) {
            uint32_t tw = rp_load_relaxed_u32(&d[t].word);
            CHECK(RW_STATE(tw) == RS_TAIL && rp_load_relaxed_u32(&d[t].head) == g,
                  "check: granule %zu of region %zu is not its tail", g + t, g);
        }
        if (st == RS_CACHED)
            cached[cls]++;
        if (st == RS_RESERVED)
            reserved[cls]++;
        if (st == RS_IN_USE || st == RS_CACHED)
            in_use[cls]++;
        else if (st == RS_FREE_CLEAN || st == RS_RESERVED)
            clean[cls]++;
        else
            dirty[cls]++;
        if (st != RS_FREE_CLEAN && st != RS_RESERVED)
            used_bytes += n << p->gshift;
        g += n;
    }
    /* Quiescent: every RS_CACHED region sits in exactly one cache slot,
     * every RS_RESERVED one in exactly one run. */
    rpi_region_cache_stats(p, slots, hits);
    rpi_threads_foreach(p, run_count_shard, runs);
    for (unsigned c = 0; c < p->nclasses; c++) {
        struct rp_class *k = &p->cls[c];
        CHECK(cached[c] == slots[c],
              "check: class %u has %lu regions in state CACHED but %lu thread-cache slots",
              c, (unsigned long)cached[c], (unsigned long)slots[c]);
        CHECK(reserved[c] == runs[c],
              "check: class %u has %lu regions in state RESERVED but %lu in runs",
              c, (unsigned long)reserved[c], (unsigned long)runs[c]);
        CHECK(in_use[c] == rp_load_relaxed_u64(&k->in_use) &&
                  dirty[c] == rp_load_relaxed_u64(&k->dirty) &&
                  clean[c] == rp_load_relaxed_u64(&k->clean),
              "check: class %u gauges in_use/dirty/clean %lu/%lu/%lu, table says %lu/%lu/%lu",
              c, (unsigned long)k->in_use, (unsigned long)k->dirty,
              (unsigned long)k->clean, (unsigned long)in_use[c],
              (unsigned long)dirty[c], (unsigned long)clean[c]);
        /* Walk the stack (quiescent): every entry a free head of class c. */
        uint64_t n = 0;
        RP_HIDE_BEGIN();
        for (ck_stack_entry_t *e = CK_STACK_FIRST(&k->free); e && n <= hwm;
             e = CK_STACK_NEXT(e)) {
            rp_rdesc *d = desc_of_link(e);
            uint32_t w = rp_load_relaxed_u32(&d->word);
            if (!FREE_STATE(RW_STATE(w)) || RW_CLS(w) != c)
                n = UINT64_MAX - 1;
            else
                n++;
        }
        RP_HIDE_END();
        CHECK(n == dirty[c] + clean[c] - reserved[c] && n == rp_load_relaxed_u64(&k->nfree),
              "check: class %u free stack holds %lu entries, expected %lu (nfree %lu)",
              c, (unsigned long)n, (unsigned long)(dirty[c] + clean[c] - reserved[c]),
              (unsigned long)rp_load_relaxed_u64(&k->nfree));
    }
    rp_account *a = &p->acct;
    uint64_t meta = rp_load_relaxed_u64(&a->metadata_bytes);
    uint64_t hc = rp_load_relaxed_u64(&a->heap_committed_bytes);
    uint64_t hp = rp_load_relaxed_u64(&a->heap_physical_bytes);
    uint64_t virt = rp_load_relaxed_u64(&a->virtual_bytes);
    uint64_t phys = rp_load_relaxed_u64(&a->physical_bytes);
    CHECK(virt == meta + hc + (hwm << p->gshift),
          "check: virtual_bytes %lu != metadata %lu + heap %lu + carved %lu",
          (unsigned long)virt, (unsigned long)meta, (unsigned long)hc,
          (unsigned long)(hwm << p->gshift));
    CHECK(phys == meta + hp + used_bytes,
          "check: physical_bytes %lu != metadata %lu + heap %lu + regions %lu",
          (unsigned long)phys, (unsigned long)meta, (unsigned long)hp,
          (unsigned long)used_bytes);
    CHECK(phys <= virt && virt <= p->reserve_bytes,
          "check: physical %lu <= virtual %lu <= reserved %zu fails",
          (unsigned long)phys, (unsigned long)virt, p->reserve_bytes);
    return 0;
}
