/* fuzz_heap.c -- libFuzzer target for the fallback heap (src/heap.c).
 *
 * Bytes become a stream of heap operations on a small pool (4 MiB heap, so
 * that exhaustion and every growth step are reached; inputs of even length
 * use a pool whose heap purges eagerly, odd ones a pool whose heap keeps
 * freed fragments lazily, with a 1 ms purge delay): allocations of
 * log-scaled sizes, frees, and deliberately bad frees (double free, interior
 * and stale pointers, pointers into free space or beyond the committed part,
 * foreign pointers). A shadow table holds every live block with its size and
 * fill byte: contents are verified before every free, the heap's allocated
 * counter is compared with the shadow tally and rpi_heap_check runs after
 * every operation, rp_check and a mincore() comparison at the end of each
 * input. A bad free must be reported with exactly the error code the shadow
 * predicts and change nothing; any other report aborts.
 *
 * Build and run: make VARIANT=fuzz fuzz-build, then
 *   build/fuzz/fuzz/fuzz_heap -max_total_time=60 CORPUS_DIR
 * (clang -fsanitize=fuzzer,address,undefined; see docs/HEAP.md). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SLOTS 64
#define HDR 32
#define STALE 16

struct blk {
    unsigned char *p;
    size_t size;    /* requested */
    size_t usable;  /* rpi_heap_usable at allocation */
    unsigned char fill;
};

static rp_pool *pools[2]; /* [0] eager purging, [1] lazy purging */
static rp_pool *pool;      /* the one this input runs on */
static struct blk live[SLOTS];
static void *stale[STALE]; /* recently freed block addresses */
static size_t tally;       /* sum of live fragment sizes (usable + header) */

/* Error hook: records; the caller decides whether a report was expected. */
static int nerr;
static rp_error last_code;
static void on_error(void *o, rp_pool *p, rp_error code, const void *ptr, const char *msg)
{
    (void)o;
    (void)p;
    (void)ptr;
    (void)msg;
    nerr++;
    last_code = code;
}

static void die(const char *what)
{
    fprintf(stderr, "fuzz_heap: %s\n", what);
    abort();
}

static void setup(void)
{
    for (int k = 0; k < 2; k++) {
        rp_config c;
        rp_config_init(&c);
        c.reserve_bytes = 256 << 20;
        c.region_min_bytes = 64 << 10;
        c.region_max_bytes = 1 << 20;
        c.heap_bytes = 4 << 20;
        c.purge_delay_ms = (uint32_t)k;
        c.purge_thread = 0;
        c.error_hook = on_error;
        pools[k] = rp_pool_create(&c);
        if (!pools[k])
            die("rp_pool_create");
    }
    nerr = 0; /* the creation-time fragmentation warning */
}

/* Pattern: the whole block for small ones, else both ends and every page. */
static void fill(struct blk *b)
{
    if (b->size <= 8192) {
        memset(b->p, b->fill, b->size);
        return;
    }
    memset(b->p, b->fill, 64);
    memset(b->p + b->size - 64, b->fill, 64);
    for (size_t i = 4096; i < b->size; i += 4096)
        b->p[i] = b->fill;
}

static void verify(const struct blk *b)
{
    size_t n = b->size <= 8192 ? b->size : 64;
    for (size_t i = 0; i < n; i++)
        if (b->p[i] != b->fill)
            die("block contents changed");
    if (b->size > 8192) {
        for (size_t i = b->size - 64; i < b->size; i++)
            if (b->p[i] != b->fill)
                die("block tail changed");
        for (size_t i = 4096; i < b->size; i += 4096)
            if (b->p[i] != b->fill)
                die("block page changed");
    }
}

static void check_state(void)
{
    rp_stats s;
    if (rp_stats_get(pool, &s) != 0)
        die("rp_stats_get");
    if (s.heap_allocated_bytes != tally)
        die("heap_allocated_bytes differs from the shadow tally");
    if (rpi_heap_check(pool) != 0)
        die("rpi_heap_check");
}

/* The code a bad free of x must be reported with, from the shadow. */
static rp_error expected_code(const unsigned char *x)
{
    uintptr_t a = (uintptr_t)x;
    if (a - (uintptr_t)pool->base >= pool->reserve_bytes)
        return RP_ERR_FOREIGN;
    if (!rpi_heap_owns(pool, x))
        return RP_ERR_WRONG_API;
    for (int i = 0; i < SLOTS; i++) {
        const struct blk *b = &live[i];
        if (b->p && a >= (uintptr_t)b->p - HDR && a < (uintptr_t)b->p + b->usable)
            return RP_ERR_INTERIOR;
    }
    return RP_ERR_NOT_LIVE;
}

static bool is_live_start(const void *x)
{
    for (int i = 0; i < SLOTS; i++)
        if (live[i].p == x)
            return true;
    return false;
}

static void bad_free(const unsigned char *x)
{
    if (!x || is_live_start(x))
        return; /* that would be a valid free */
    rp_error want = expected_code(x);
    nerr = 0;
    rp_heap_free(pool, (void *)x);
    if (nerr != 1 || last_code != want) {
        fprintf(stderr, "bad free of %p: %d reports, code %d, expected %d\n",
                (const void *)x, nerr, (int)last_code, (int)want);
        abort();
    }
    nerr = 0;
}

static void release(struct blk *b)
{
    verify(b);
    rp_heap_free(pool, b->p);
    tally -= b->usable + HDR;
    memmove(stale + 1, stale, sizeof stale - sizeof *stale);
    stale[0] = b->p;
    b->p = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!pools[0])
        setup();
    pool = pools[size & 1];
    memset(stale, 0, sizeof stale);
    size_t i = 0;
    unsigned char fillc = 1;
    while (i + 4 <= size) {
        uint8_t op = data[i], a = data[i + 1], b = data[i + 2], c = data[i + 3];
        i += 4;
        struct blk *s = &live[a % SLOTS];
        switch (op % 8) {
        case 0: case 1: case 2: case 3: { /* allocate, log-scaled size */
            if (s->p)
                release(s);
            unsigned bits = 1 + b % 22; /* up to 4 MiB */
            size_t n = ((size_t)1 << (bits - 1)) + (((size_t)c << 16 | (size_t)a << 8 | op) &
                                                     (((size_t)1 << (bits - 1)) - 1));
            if (op & 4)
                n = ((size_t)1 << bits) - HDR + (c % 3) - 1; /* rounding edges */
            if (n == 0)
                n = 1;
            unsigned char *p = rp_heap_alloc(pool, n);
            if (!p)
                break; /* exhaustion is fine; the tally says nothing changed */
            if ((uintptr_t)p % 16)
                die("misaligned block");
            s->p = p;
            s->size = n;
            s->usable = rpi_heap_usable(pool, p);
            if (s->usable < n)
                die("usable below the request");
            s->fill = fillc++;
            fill(s);
            tally += s->usable + HDR;
            break;
        }
        case 4: case 5:
            if (s->p)
                release(s);
            break;
        case 6: { /* bad free */
            const unsigned char *x = NULL;
            switch (b % 6) {
            case 0: x = stale[c % STALE]; break;                        /* double free */
            case 1: if (s->p) x = s->p + 1 + c % (s->usable); break;    /* interior */
            case 2: if (s->p) x = s->p + 64 * (1 + c % 8); break;       /* aligned interior */
            case 3: x = (unsigned char *)pool->heap_base + HDR +
                        64 * (((size_t)c << 8 | a) % (pool->heap_bytes / 64)); break;
            case 4: x = (unsigned char *)&size; break;                   /* foreign */
            case 5: x = (unsigned char *)pool->heap_base + pool->heap_bytes + 64; break;
            }
            bad_free(x);
            break;
        }
        case 7:
            if (rp_check(pool) != 0)
                die("rp_check");
            break;
        }
        check_state();
        if (nerr)
            die("unexpected error report");
    }
    for (int k = 0; k < SLOTS; k++)
        if (live[k].p)
            release(&live[k]);
    check_state();
    if (rp_check(pool) != 0)
        die("rp_check at the end");
    /* The heap's account covers what the kernel finds resident. */
    rp_stats s;
    rp_stats_get(pool, &s);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), res = 0;
    unsigned char vec[1024];
    size_t pages = pool->heap_bytes / pg;
    for (size_t off = 0; off < pages; off += sizeof vec) {
        size_t m = pages - off < sizeof vec ? pages - off : sizeof vec;
        if (mincore(pool->heap_base + off * pg, m * pg, vec) == 0)
            for (size_t j = 0; j < m; j++)
                res += (vec[j] & 1) ? pg : 0;
    }
    if (s.heap_physical_bytes < res)
        die("heap_physical_bytes below the resident count");
    if (nerr)
        die("unexpected error report");
    return 0;
}
