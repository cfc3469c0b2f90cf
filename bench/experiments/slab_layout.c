/* slab_layout.c -- does the address layout of two threads' slabs matter?
 *
 * Two threads each run ITERS x (BATCH x rp_alloc(64), then rp_free in
 * reverse order) on a pool; the program prints wall ns per pair over both
 * threads (so 2 threads ideally take half the 1-thread time). The modes set
 * up where each thread's 4 slabs sit before the timed part:
 *   0  both threads warm up at the same time (as bench/wl_small.c does)
 *   1  one pool per thread (nothing shared at all)
 *   2  thread 0 warms up, then thread 1 (each thread's slabs together)
 *   6  the threads take turns slab by slab (A B A B ...: alternating)
 *   7  as 6, with an unused 64 KiB region after every slab (A - B - ...)
 * Before runs (docs/DESIGN.md "Runs"), mode 6 was 10% slower than 7 and 2;
 * with runs every mode packs each thread's slabs, and all take the same time.
 *
 * Not part of the benchmark suite (no peers); run it by hand:
 *   make lib && cc -O2 -Iinclude bench/experiments/slab_layout.c \
 *      build/release/librpool.a -lck -lurcu-bp -lpthread -o /tmp/slab_layout
 *   for i in 1 2 3 4 5 6 7 8 9 10 11; do for m in 0 1 2 6 7; do
 *      /tmp/slab_layout $m; done; done       (then take medians per mode)
 */
#define _GNU_SOURCE
#include <rpool.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BATCH 4096          /* objects per thread: 4 slabs of 64 KiB */
#define ITERS 10000
#define SLAB_OBJS 1024

static rp_pool *pools[2];
static int mode;
static pthread_barrier_t start, step;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void need(void *p)
{
    if (!p) {
        perror("slab_layout: allocation failed");
        exit(1);
    }
}

static void batch(rp_pool *p, void **s)
{
    for (int i = 0; i < BATCH; i++) {
        uint64_t *o = rp_alloc(p, 64);
        need(o);
        o[0] = (uint64_t)i;
        s[i] = o;
    }
    for (int i = BATCH; i > 0; i--)
        rp_free(p, s[i - 1]);
}

static void *run(void *arg)
{
    long id = (long)arg;
    rp_pool *p = pools[mode == 1 ? id : 0];
    void **s = malloc(BATCH * sizeof *s);
    need(s);
    if (mode == 0 || mode == 1) {
        batch(p, s);
    } else if (mode == 2) {
        for (long k = 0; k < 2; k++) {
            if (k == id)
                batch(p, s);
            pthread_barrier_wait(&step);
        }
    } else {
        for (int k = 0; k < 8; k++) {
            if ((k & 1) == id) {
                for (int i = (k >> 1) * SLAB_OBJS; i < ((k >> 1) + 1) * SLAB_OBJS; i++)
                    need(s[i] = rp_alloc(p, 64));
                if (mode == 7)
                    need(rp_region_acquire(p, 64 << 10));
            }
            pthread_barrier_wait(&step);
        }
        for (int i = BATCH; i > 0; i--)
            rp_free(p, s[i - 1]);
    }
    pthread_barrier_wait(&start);
    for (int it = 0; it < ITERS; it++)
        batch(p, s);
    free(s);
    return NULL;
}

int main(int argc, char **argv)
{
    mode = argc > 1 ? atoi(argv[1]) : 0;
    for (int i = 0; i < 2; i++) {
        rp_config c;
        rp_config_init(&c);
        c.reserve_bytes = (size_t)4 << 30;
        need(pools[i] = rp_pool_create(&c));
    }
    pthread_barrier_init(&start, NULL, 3);
    pthread_barrier_init(&step, NULL, 2);
    pthread_t t[2];
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, run, (void *)i);
    pthread_barrier_wait(&start);
    double t0 = now();
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    double dt = now() - t0;
    printf("mode=%d ns_per_pair=%.3f\n", mode, dt * 1e9 / ((double)ITERS * BATCH * 2));
    return 0;
}
