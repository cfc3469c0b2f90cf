/* stress_transfer -- threads exchange objects, explicit arenas and regions
 * through shared slots. Every block carries a cookie (live magic, serial,
 * size, checksum); it is checked whenever a block changes hands and before
 * every free, and overwritten with a dead magic just before the free. A
 * block whose memory still holds a live magic when it is handed out was
 * handed out twice: that is reported. At the end every counter must be back
 * to its baseline and rp_check must pass. It runs twice: on a plain pool
 * (remote frees batched per thread, fast paths) and on a hardened one. */
#include "stress_common.h"

#define LIVE 0x4c495645u /* "LIVE" */
#define DEAD 0x44454144u /* "DEAD" */
#define NSLOTS 64

enum kind { K_OBJ = 1, K_REGION, K_ARENA };

struct cookie {          /* at offset 16 of blocks of at least 64 bytes (links
                            may live in the first 16 bytes of a free object) */
    uint32_t magic;
    uint32_t kind;
    uint64_t serial;
    uint64_t size;
    uint64_t sum;
};

struct slot {
    void *ptr;           /* exchanged atomically */
};

static rp_pool *pool;
static struct slot slots[NSLOTS];
static uint64_t serials;
static double deadline;
static size_t obj_sizes[] = {64, 80, 96, 200, 256, 1000, 4096, 9000, 32768, 70000};

static struct cookie *ck(void *p) { return (struct cookie *)((char *)p + 16); }

/* payload: also fill and later check the bytes after the cookie (not for
 * the arena package, whose bytes after the cookie are its block table). */
static void stamp_ex(void *p, enum kind k, size_t size, int payload)
{
    struct cookie *c = ck(p);
    if (c->magic == LIVE)
        stress_fail("block %p (kind %d) handed out while live (serial %llu)", p, k,
                    (unsigned long long)c->serial);
    c->kind = k;
    c->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
    c->size = size;
    c->sum = c->serial * 31 + size * 7 + k;
    c->magic = LIVE;
    if (payload)
        memset((char *)p + sizeof(struct cookie) + 16, (int)(c->serial & 0xff),
               size > 256 ? 128 : size - sizeof(struct cookie) - 16);
}

static void stamp(void *p, enum kind k, size_t size) { stamp_ex(p, k, size, 1); }

static void verify_ex(void *p, enum kind k, int payload)
{
    struct cookie *c = ck(p);
    if (c->magic != LIVE || c->kind != (uint32_t)k || c->sum != c->serial * 31 + c->size * 7 + k)
        stress_fail("block %p: bad cookie (magic %#x kind %u/%d)", p, c->magic, c->kind, k);
    if (!payload)
        return;
    size_t n = c->size > 256 ? 128 : c->size - sizeof(struct cookie) - 16;
    const unsigned char *b = (const unsigned char *)p + sizeof(struct cookie) + 16;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(c->serial & 0xff)) {
            stress_fail("block %p: payload damaged at %zu", p, i);
            break;
        }
}

static void verify(void *p, enum kind k) { verify_ex(p, k, 1); }

/* A handed-over explicit arena: header in the arena itself. */
struct arena_pkg {
    struct cookie c0, c1; /* c1 sits at offset 16: the cookie slot */
    rp_arena *arena;
    void *blocks[8];
    size_t sizes[8];
};

static void *make(uint64_t *rng)
{
    uint64_t r = stress_rand(rng);
    switch (r % 3) {
    case 0: {
        size_t sz = obj_sizes[(r >> 8) % (sizeof obj_sizes / sizeof obj_sizes[0])];
        void *p = rp_alloc(pool, sz);
        if (p)
            stamp(p, K_OBJ, sz);
        return p;
    }
    case 1: {
        size_t sz = (size_t)64 * KiB << ((r >> 8) % 3);
        void *p = rp_region_acquire(pool, sz);
        if (p)
            stamp(p, K_REGION, sz);
        return p;
    }
    default: {
        rp_arena *a = rp_arena_create(pool, 0);
        if (!a)
            return NULL;
        struct arena_pkg *pk = rp_arena_alloc(a, sizeof *pk, 64);
        if (!pk) {
            rp_arena_destroy(a);
            return NULL;
        }
        memset(pk, 0, sizeof *pk);
        pk->arena = a;
        for (int i = 0; i < 8; i++) {
            pk->sizes[i] = 64 + (size_t)((r >> (i * 4)) & 0xf) * 100;
            pk->blocks[i] = rp_arena_alloc(a, pk->sizes[i], 16);
            if (pk->blocks[i])
                stamp(pk->blocks[i], K_ARENA, pk->sizes[i]);
        }
        stamp_ex(pk, K_ARENA, sizeof *pk, 0);
        return pk;
    }
    }
}

static void consume(void *p)
{
    enum kind k = (enum kind)ck(p)->kind;
    verify_ex(p, k, k != K_ARENA);
    if (k == K_ARENA) {
        struct arena_pkg *pk = p;
        for (int i = 0; i < 8; i++)
            if (pk->blocks[i]) {
                verify(pk->blocks[i], K_ARENA);
                ck(pk->blocks[i])->magic = DEAD;
            }
        ck(pk)->magic = DEAD;
        rp_arena_destroy(pk->arena); /* the receiver owns it now */
    } else if (k == K_OBJ) {
        ck(p)->magic = DEAD;
        rp_free(pool, p);
    } else if (k == K_REGION) {
        ck(p)->magic = DEAD;
        rp_region_release(pool, p);
    } else {
        stress_fail("block %p: unknown kind %d", p, k);
    }
}

static void *worker(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg;
    long ops = 0;
    while (stress_now() < deadline) {
        for (int i = 0; i < 64; i++, ops++) {
            int s = (int)(stress_rand(&rng) % NSLOTS);
            void *mine = (stress_rand(&rng) & 1) ? make(&rng) : NULL;
            /* Exchange: the acq_rel swap is the hand-off edge between the
             * threads, as a user program would have. */
            void *got = __atomic_exchange_n(&slots[s].ptr, mine, __ATOMIC_ACQ_REL);
            if (got)
                consume(got);
        }
    }
    rp_thread_detach(pool);
    return (void *)ops;
}

/* One phase on a fresh pool: hardened (every remote free pushed at once,
 * bitmaps) or plain (remote frees batched per thread, fast paths). */
static long run_phase(const struct stress_args *a, int hardened, double seconds)
{
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)4 << 30;
    c.heap_bytes = 256 * MiB;
    c.purge_delay_ms = 20;
    c.hardened = hardened;
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    if (!pool)
        return stress_fail("pool"), 0;
    deadline = stress_now() + seconds;
    pthread_t t[64];
    long total = 0;
    for (int i = 0; i < a->threads && i < 64; i++)
        pthread_create(&t[i], NULL, worker,
                       (void *)(uintptr_t)(a->seed + (uint64_t)i * 7919 + (uint64_t)hardened));
    for (int i = 0; i < a->threads && i < 64; i++) {
        void *ops;
        pthread_join(t[i], &ops);
        total += (long)ops;
    }
    for (int s = 0; s < NSLOTS; s++) {
        void *p = slots[s].ptr;
        slots[s].ptr = NULL;
        if (p)
            consume(p);
    }
    rp_thread_detach(pool);
    rp_stats st;
    rp_stats_get(pool, &st);
    const char *mode = hardened ? "hardened" : "plain";
    STRESS_CHECK(st.slab_bytes == 0, "%s: slab_bytes %zu after draining", mode, st.slab_bytes);
    STRESS_CHECK(st.arena_bytes == 0, "%s: arena_bytes %zu after draining", mode,
                 st.arena_bytes);
    STRESS_CHECK(st.heap_allocated_bytes == 0, "%s: heap %zu after draining", mode,
                 st.heap_allocated_bytes);
    STRESS_CHECK(st.region_in_use_bytes == 0, "%s: regions in use %zu", mode,
                 st.region_in_use_bytes);
    STRESS_CHECK(st.errors == 0, "%s: %llu errors reported", mode,
                 (unsigned long long)st.errors);
    STRESS_CHECK(rp_check(pool) == 0, "%s: rp_check", mode);
    rp_purge(pool);
    rp_stats_get(pool, &st);
    STRESS_CHECK(st.physical_bytes == st.metadata_bytes + st.heap_physical_bytes,
                 "%s: physical %zu != metadata %zu + heap %zu after purge", mode,
                 st.physical_bytes, st.metadata_bytes, st.heap_physical_bytes);
    rp_pool_destroy(pool);
    pool = NULL;
    return total;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_transfer", 4,
                                        STRESS_TSAN ? 1.0 : 2.0, 0);
    /* Half the time each: the plain pool batches remote frees, the
     * hardened one does not. */
    long plain = run_phase(&a, 0, a.seconds / 2);
    long hard = run_phase(&a, 1, a.seconds / 2);
    char sum[160];
    snprintf(sum, sizeof sum, "%ld exchanges plain, %ld hardened, %llu blocks", plain, hard,
             (unsigned long long)serials);
    return stress_finish("stress_transfer", sum);
}
