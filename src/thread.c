/* thread.c -- per-(thread, pool) shards on an RCU-protected registry.
 *
 * Each thread that uses a pool gets one rp_tstate ("shard") holding its
 * thread arena and object caches. Shards of a pool are on an RCU list
 * (liburcu-bp: readers need no registration, which suits a library whose
 * stats may be read from any thread), so stats walk every thread without
 * stopping anyone. Writers (shard creation, detach) take threads_lock.
 *
 * Thread exit: a pthread key destructor detaches every shard the thread
 * holds, for pools still alive (the process-wide pool registry in pool.c is
 * consulted by id, so a pool destroyed earlier is skipped). A detached shard
 * returns its memory at once, leaves the list, and is recycled after a grace
 * period (call_rcu); rp_pool_destroy waits for pending callbacks (rcu_barrier).
 *
 * Lookup: a per-thread array of (pool, id, shard) slots; slot 0 caches the
 * last pool used, so the common case is two loads and two compares. The id
 * guards against a new pool mapped at a destroyed pool's address.
 *
 * TSan: the list and free-shard manipulation is hidden (RP_HIDE_*); shard
 * memory changes hands through rp_hb_release/acquire on the shard, and RCU
 * readers release p->rcu_token, which the reclaimer acquires after the grace
 * period (the DESIGN.md recipe), so recycling never looks like a race.
 */
#include "internal.h"

#include <string.h>
#include <urcu-bp.h>
#include <urcu/rculist.h>

#define TLS_SLOTS 16

struct tls_slot {
    rp_pool *pool;
    uint64_t id;
    rp_tstate *ts;
};

static __thread struct tls_slot slots[TLS_SLOTS];
/* Copy of the most recently used slot, initial-exec (no __tls_get_addr on
 * the hot paths; 16 bytes of static TLS). Keyed by pool id (never reused,
 * never 0), so a destroyed pool never matches. */
__thread struct rpi_tfast rpi_tfast __attribute__((tls_model("initial-exec")));
static pthread_key_t exit_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static int rcu_token; /* address used as the grace-period sync object */

static void thread_exit(void *arg);

static void make_key(void)
{
    pthread_key_create(&exit_key, thread_exit);
}

int rpi_threads_init(rp_pool *p)
{
    pthread_once(&key_once, make_key);
    pthread_mutex_init(&p->threads_lock, NULL);
    CDS_INIT_LIST_HEAD(&p->threads);
    return 0;
}

static void reclaim(struct rcu_head *head)
{
    rp_tstate *ts = (rp_tstate *)((char *)head - offsetof(rp_tstate, rcu_space));
    rp_hb_acquire(ts);         /* pairs with rp_hb_release(ts) in detach */
    rp_hb_acquire(&rcu_token); /* pairs with readers' release before unlock */
    rp_pool *p = ts->pool;
    rp_hb_release(ts); /* the next owner (create) sees our reads and writes */
    rp_mutex_lock(&p->threads_lock);
    RP_HIDE_BEGIN();
    ts->next_free = p->free_ts;
    p->free_ts = ts;
    RP_HIDE_END();
    rp_mutex_unlock(&p->threads_lock);
    /* Pairs with the acquire after rcu_barrier in rpi_threads_destroy:
     * liburcu's barrier orders this callback before the pool's teardown,
     * but TSan cannot see inside liburcu. */
    rp_hb_release(&p->free_ts);
}

_Static_assert(sizeof(((rp_tstate *)0)->rcu_space) >= sizeof(struct rcu_head),
               "rcu_head fits the shard's space");

/* Detach shard ts of pool p: return its memory, unlink, recycle later. */
static void detach(rp_pool *p, rp_tstate *ts)
{
    rpi_arena_thread_exit(p, ts);
    rpi_slab_thread_exit(p, ts);
    rpi_region_thread_exit(p, ts); /* last: the two above release regions */
    rp_mutex_lock(&p->threads_lock);
    RP_HIDE_BEGIN();
    cds_list_del_rcu(&ts->node);
    RP_HIDE_END();
    rp_store_relaxed_u32(&ts->live, 0);
    rp_sub_relaxed_u64(&p->nthreads, 1);
    rp_mutex_unlock(&p->threads_lock);
    rp_hb_release(ts); /* the next owner of this shard memory */
    call_rcu((struct rcu_head *)(void *)ts->rcu_space, reclaim);
}

/* Drop every thread-local slot that names shard ts (slot 0 may cache it). */
static void forget(const rp_tstate *ts)
{
    for (int i = 0; i < TLS_SLOTS; i++)
        if (slots[i].ts == ts)
            slots[i] = (struct tls_slot){NULL, 0, NULL};
    if (rpi_tfast.ts == ts)
        rpi_tfast = (struct rpi_tfast){0, NULL};
}

static void thread_exit(void *arg)
{
    (void)arg;
    for (int i = 0; i < TLS_SLOTS; i++) {
        struct tls_slot s = slots[i];
        if (!s.pool)
            continue;
        forget(s.ts);
        rp_pool *p = rpi_registry_lock(s.id);
        if (p == s.pool)
            detach(p, s.ts);
        rpi_registry_unlock();
    }
}

rp_tstate *rpi_tstate_peek(rp_pool *p)
{
    for (int i = 0; i < TLS_SLOTS; i++)
        if (slots[i].pool == p && slots[i].id == p->id) {
            rpi_tfast = (struct rpi_tfast){p->id, slots[i].ts};
            return slots[i].ts;
        }
    return NULL;
}

static rp_tstate *create(rp_pool *p)
{
    int free_slot = -1;
    for (int i = 1; i < TLS_SLOTS && free_slot < 0; i++) {
        if (!slots[i].pool) {
            free_slot = i;
            continue;
        }
        /* A pool destroyed since took its shard with it: reuse the slot.
         * Never dereference slots[i].pool here: it may be unmapped. */
        bool alive = rpi_registry_lock(slots[i].id) == slots[i].pool;
        rpi_registry_unlock();
        if (!alive)
            free_slot = i;
    }
    if (free_slot < 0) {
        errno = EMFILE; /* more than TLS_SLOTS - 1 pools in one thread */
        return NULL;
    }
    rp_mutex_lock(&p->threads_lock);
    RP_HIDE_BEGIN();
    rp_tstate *ts = p->free_ts;
    if (ts)
        p->free_ts = ts->next_free;
    RP_HIDE_END();
    rp_mutex_unlock(&p->threads_lock);
    if (ts) {
        rp_hb_acquire(ts); /* pairs with rp_hb_release in reclaim */
        RP_HIDE_BEGIN(); /* stats readers may still reach this memory via RCU */
        memset(ts, 0, sizeof *ts);
        RP_HIDE_END();
    } else {
        ts = rpi_meta_alloc(p, sizeof *ts, RP_CACHELINE);
        if (!ts)
            return NULL;
    }
    ts->pool = p;
    ts->live = 1;
    rp_mutex_lock(&p->threads_lock);
    ts->tid = rp_add_relaxed_u64(&p->next_tid, 1) + 1;
    /* Publication: the list add is a release (rcu_assign_pointer) that TSan
     * cannot see (hidden). Pairs with the acquire in rpi_threads_foreach, so
     * readers see the zeroed, initialized shard. */
    rp_hb_release(ts);
    RP_HIDE_BEGIN();
    cds_list_add_rcu(&ts->node, &p->threads);
    RP_HIDE_END();
    rp_add_relaxed_u64(&p->nthreads, 1);
    rp_mutex_unlock(&p->threads_lock);

    pthread_setspecific(exit_key, (void *)1); /* arms thread_exit */
    slots[free_slot] = (struct tls_slot){p, p->id, ts};
    return ts;
}

rp_tstate *rpi_tstate_get(rp_pool *p)
{
    if (RP_LIKELY(slots[0].pool == p && slots[0].id == p->id))
        return slots[0].ts;
    rp_tstate *ts = rpi_tstate_peek(p);
    if (!ts)
        ts = create(p);
    if (ts) {
        slots[0] = (struct tls_slot){p, p->id, ts};
        rpi_tfast = (struct rpi_tfast){p->id, ts};
    }
    return ts;
}

int rp_thread_detach(rp_pool *p)
{
    if (!p)
        return -EINVAL;
    rp_tstate *ts = rpi_tstate_peek(p);
    if (!ts)
        return 0;
    forget(ts);
    detach(p, ts);
    return 0;
}

void rpi_threads_foreach(rp_pool *p, void (*fn)(rp_tstate *, void *), void *arg)
{
    rcu_read_lock();
    /* Walk list links and convert only real entries: forming an rp_tstate
     * pointer from the list head itself (as cds_list_for_each_entry_rcu
     * does) is a misaligned pointer to a 64-byte-aligned type. */
    struct cds_list_head *head = &p->threads, *n;
    RP_HIDE_BEGIN();
    n = rcu_dereference(head->next);
    RP_HIDE_END();
    while (n != head) {
        rp_tstate *ts = caa_container_of(n, rp_tstate, node);
        rp_hb_acquire(ts); /* pairs with the release before the list add */
        fn(ts, arg);       /* reads shard fields with atomics only */
        RP_HIDE_BEGIN();
        n = rcu_dereference(n->next);
        RP_HIDE_END();
    }
    rp_hb_release(&rcu_token); /* pairs with the acquire in reclaim */
    rcu_read_unlock();
}

void rpi_threads_destroy(rp_pool *p)
{
    /* Detach every shard still linked (their threads may still be running,
     * but the contract says none of them uses p any more). */
    for (;;) {
        rp_mutex_lock(&p->threads_lock);
        rp_tstate *ts = NULL;
        RP_HIDE_BEGIN();
        if (!cds_list_empty(&p->threads))
            ts = cds_list_entry(p->threads.next, rp_tstate, node);
        RP_HIDE_END();
        rp_mutex_unlock(&p->threads_lock);
        if (!ts)
            break;
        detach(p, ts);
    }
    if (p == slots[0].pool)
        slots[0].pool = NULL;
    rcu_barrier(); /* no reclaim callback may touch p after it is unmapped */
    rp_hb_acquire(&p->free_ts); /* pairs with the release ending reclaim */
    pthread_mutex_destroy(&p->threads_lock);
}

void rpi_rcu_ready(void) { urcu_bp_register_thread(); }

void rpi_threads_prefork(void)
{
    call_rcu_before_fork();
    urcu_bp_before_fork();
}

void rpi_threads_postfork(int child)
{
    if (child) {
        urcu_bp_after_fork_child();
        call_rcu_after_fork_child();
    } else {
        urcu_bp_after_fork_parent();
        call_rcu_after_fork_parent();
    }
}
