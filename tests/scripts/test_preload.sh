#!/bin/sh
# librpool-malloc.so under real programs: identical output with and without
# the preload (python3 allocating heavily, sort on a large file, gcc
# compiling a file, xz -T2 multithreaded), a budget test (malloc returns NULL
# with ENOMEM at the budget and the program exits cleanly), fork and
# thread-exit tests. Uses build/release.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
so="$top/build/release/librpool-malloc.so"
[ -f "$so" ] || { echo "missing $so"; exit 1; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
export RPOOL_CONF="physical_budget=2G,purge_delay_ms=100"
pre() { LD_PRELOAD="$so" "$@"; }
same() { # name, command...
    name=$1; shift
    "$@" >"$d/plain.out" 2>&1 || { echo "$name: failed without the preload"; exit 1; }
    pre "$@" >"$d/pre.out" 2>&1 || { echo "$name: failed under the preload"; cat "$d/pre.out" | tail -20; exit 1; }
    cmp -s "$d/plain.out" "$d/pre.out" || { echo "$name: output differs"; diff "$d/plain.out" "$d/pre.out" | head; exit 1; }
    echo "$name: identical"
}

# The preload really is the allocator: the stats at exit come from rpool.
RPOOL_STATS=1 LD_PRELOAD="$so" python3 -c "x = [0] * 100000" 2>"$d/stats"  # (coreutils close stderr at exit)
grep -q "reconciliation" "$d/stats" || { echo "RPOOL_STATS printed nothing"; exit 1; }

same python3 python3 -c '
import random
random.seed(7)
d = {}
for i in range(300000):
    d[i] = [str(i) * (i % 13), {"k": i}]
    if i % 3 == 0: del d[i // 2]
s = sorted(d.items(), key=lambda kv: str(kv[1][0])[:8])
print(len(d), sum(len(v[0]) for k, v in s[:50000]))
b = [bytes(random.getrandbits(8) for _ in range(64)) for _ in range(20000)]
print(len(set(b)))'

python3 -c '
import random
random.seed(3)
with open("'"$d"'/big.txt", "w") as f:
    for i in range(400000):
        f.write("%08x %s\n" % (random.getrandbits(32), "x" * random.randint(0, 40)))'
same sort sort -S 64M "$d/big.txt"

cat >"$d/prog.c" <<'CEOF'
#include <stdio.h>
struct p { int x, y; };
static int sq(int v) { return v * v; }
int main(void) { struct p a = {3, 4}; printf("%d\n", sq(a.x) + sq(a.y)); return 0; }
CEOF
same gcc sh -c "gcc -O2 -c '$d/prog.c' -o '$d/prog.o' && gcc '$d/prog.o' -o '$d/prog' && '$d/prog'"

head -c 20000000 "$d/big.txt" >"$d/xz.in"
same xz sh -c "xz -T2 -6 -c '$d/xz.in' | xz -d -T2 | md5sum"

# Budget: a program allocating in a loop gets NULL with ENOMEM at the budget.
cat >"$d/budget.c" <<'CEOF'
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    size_t total = 0;
    for (int i = 0; i < 1000000; i++) {
        void *p = malloc(1 << 20);
        if (!p) {
            if (errno != ENOMEM) { printf("errno %d\n", errno); return 2; }
            printf("NULL after %zu MiB\n", total >> 20);
            return total > (20u << 20) && total <= (64u << 20) ? 0 : 3;
        }
        memset(p, 1, 1 << 20);
        total += 1 << 20;
    }
    return 1;
}
CEOF
cc -O1 -o "$d/budget" "$d/budget.c"
RPOOL_CONF="physical_budget=64M" LD_PRELOAD="$so" "$d/budget" || { echo "budget test failed ($?)"; exit 1; }

# fork + thread exit: threads allocate and exit with live blocks; a child
# frees the parent's blocks and keeps allocating; thread-local destructors
# free memory after rpool detached the thread.
cat >"$d/forky.c" <<'CEOF'
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static pthread_key_t key;
static void dtor(void *p) { free(p); free(malloc(100)); }
static void *worker(void *arg) {
    void **out = arg;
    pthread_setspecific(key, malloc(1000));
    for (int i = 0; i < 1000; i++) free(malloc((size_t)(i % 500) + 1));
    *out = malloc(4096); memset(*out, 7, 4096);
    return NULL;
}
int main(void) {
    pthread_key_create(&key, dtor);
    for (int round = 0; round < 50; round++) {
        pthread_t t[4]; void *left[4];
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, &left[i]);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 4; i++) { if (((char *)left[i])[4095] != 7) _exit(5); free(left[i]); }
            for (int i = 0; i < 10000; i++) free(malloc((size_t)i % 3000 + 1));
            _exit(0);
        }
        int st; waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("child failed\n"); return 1; }
        for (int i = 0; i < 4; i++) free(left[i]);
    }
    puts("ok");
    return 0;
}
CEOF
cc -O1 -pthread -o "$d/forky" "$d/forky.c"
same fork-and-thread-exit "$d/forky"
echo "preload: python3, sort, gcc, xz -T2 identical; budget, fork, thread exit ok"
