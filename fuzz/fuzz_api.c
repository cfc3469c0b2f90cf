/* fuzz_api.c -- libFuzzer target: bytes become a stream of API operations
 * across every allocator of one budgeted pool (objects, realloc, regions,
 * heap, an explicit arena with mark/rewind/reset). A shadow table remembers
 * every live block with its size and fill byte; contents are verified before
 * every free, counters are compared with the shadow tally, and rp_check runs
 * periodically and at the end. Misuse is never generated, so any report from
 * the error hook is a bug.
 *
 * Build and run: make fuzz (clang -fsanitize=fuzzer,address,undefined). */
#include "rpool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 64

enum kind { NONE, OBJ, REGION, HEAP, ARENA };

struct blk {
    unsigned char *p;
    size_t size;
    unsigned char fill;
    enum kind kind;
};

static void on_error(void *o, rp_pool *p, rp_error code, const void *ptr, const char *msg)
{
    (void)o;
    (void)p;
    fprintf(stderr, "rpool error %d on %p: %s\n", (int)code, ptr, msg);
    abort();
}

static rp_pool *pool;

static void check(const struct blk *b)
{
    size_t n = b->size < 64 ? b->size : 64;
    for (size_t i = 0; i < n; i++)
        if (b->p[i] != b->fill)
            abort();
    if (b->size > 64 && b->p[b->size - 1] != b->fill)
        abort();
}

static void fill(struct blk *b, unsigned char f)
{
    b->fill = f;
    memset(b->p, f, b->size < 64 ? b->size : 64);
    if (b->size > 64)
        b->p[b->size - 1] = f;
}

static void release(struct blk *b)
{
    check(b);
    switch (b->kind) {
    case OBJ: rp_free(pool, b->p); break;
    case REGION: rp_region_release(pool, b->p); break;
    case HEAP: rp_heap_free(pool, b->p); break;
    default: break; /* arena blocks die with rewind/reset */
    }
    b->kind = NONE;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
    if (!pool) {
        rp_config c;
        rp_config_init(&c);
        c.reserve_bytes = (size_t)1 << 30;
        c.region_max_bytes = (size_t)4 << 20;
        c.heap_bytes = (size_t)32 << 20;
        c.virtual_budget = (size_t)192 << 20;
        c.physical_budget = (size_t)96 << 20;
        c.purge_delay_ms = 0;
        c.purge_thread = 0;
        c.hardened = 1;
        c.error_hook = on_error;
        pool = rp_pool_create(&c);
        if (!pool)
            abort();
    }
    struct blk b[SLOTS] = {{0}};
    rp_arena *arena = rp_arena_create(pool, (size_t)8 << 20);
    rp_arena_pos mark = rp_arena_mark(arena);
    int marked = 0;
    for (size_t i = 0; i + 3 < len; i += 4) {
        uint8_t op = data[i] % 10, s = data[i + 1] % SLOTS;
        size_t arg = (size_t)data[i + 2] | (size_t)data[i + 3] << 8;
        struct blk *x = &b[s];
        if (x->kind != NONE && op < 7)
            release(x);
        switch (op) {
        case 0: case 1: x->size = 1 + arg % 4096; x->p = rp_alloc(pool, x->size); x->kind = OBJ; break;
        case 2: x->size = 1 + arg * 16; x->p = rp_alloc(pool, x->size); x->kind = OBJ; break;
        case 3: x->size = 1 + arg * 64; x->p = rp_region_acquire(pool, x->size); x->kind = REGION; break;
        case 4: x->size = 1 + arg * 8; x->p = rp_heap_alloc(pool, x->size); x->kind = HEAP; break;
        case 5: {
            if (marked) { /* blocks from after the mark die with the rewind */
                for (int k = 0; k < SLOTS; k++)
                    if (b[k].kind == ARENA && b[k].fill >= 0x80)
                        b[k].kind = NONE;
                rp_arena_rewind(arena, mark);
            }
            mark = rp_arena_mark(arena);
            marked = 1;
            x->kind = NONE;
            break;
        }
        case 6:
            x->size = 1 + arg % 20000;
            x->p = rp_arena_alloc(arena, x->size, (size_t)1 << (data[i + 1] % 8));
            x->kind = ARENA;
            if (x->p)
                fill(x, (unsigned char)(marked ? 0x80 | (arg & 0x7f) : arg & 0x7f));
            if (!x->p) x->kind = NONE;
            continue;
        case 7: /* realloc an object in place of its slot */
            if (x->kind == OBJ) {
                size_t ns = 1 + arg % 70000;
                check(x);
                unsigned char *q = rp_realloc(pool, x->p, ns);
                if (q) {
                    size_t keep = x->size < ns ? x->size : ns;
                    for (size_t k = 0; k < (keep < 64 ? keep : 64); k++)
                        if (q[k] != x->fill)
                            abort();
                    x->p = q;
                    x->size = ns;
                    fill(x, (unsigned char)arg);
                }
            }
            continue;
        case 8:
            for (int k = 0; k < SLOTS; k++)
                if (b[k].kind == ARENA)
                    b[k].kind = NONE;
            rp_arena_reset(arena);
            marked = 0;
            mark = rp_arena_mark(arena);
            continue;
        default:
            if (rp_check(pool) != 0)
                abort();
            continue;
        }
        if (x->kind != NONE && !x->p)
            x->kind = NONE; /* a budget refused it: allowed */
        else if (x->kind != NONE)
            fill(x, (unsigned char)(arg ^ s));
    }
    for (int k = 0; k < SLOTS; k++)
        if (b[k].kind != NONE && b[k].kind != ARENA)
            release(&b[k]);
    rp_arena_destroy(arena);
    rp_stats st;
    rp_stats_get(pool, &st);
    /* The shadow says nothing is live. (region_in_use_bytes may stay above
     * zero: empty slabs cached by this thread are regions in use.) */
    if (st.slab_bytes || st.heap_allocated_bytes || st.arena_bytes) {
        fprintf(stderr, "live after freeing all: slab %zu heap %zu arena %zu\n",
                st.slab_bytes, st.heap_allocated_bytes, st.arena_bytes);
        abort();
    }
    if (rp_check(pool) != 0)
        abort();
    return 0;
}
