#!/bin/sh
# Run every test program of the given build directories and print a final
# "N passed, N failed" line; exit non-zero if anything failed.
#
#   tests/run.sh [--stress-only] BUILD_DIR...
#
# cmocka programs (BUILD/tests/test_*): every "[ RUN      ]" case counts; a
# case passes only with its "[       OK ]" line, so a crash counts as failed.
# Stress programs (BUILD/stress/stress_*) are run with short defaults (long
# ones with RP_STRESS_LONG=1) and count as one case each, by exit status.
# TSan/ASan reports make the sanitizer abort the program (halt_on_error), so
# they fail the case.
set -u
stress_only=0; fuzz_only=0
if [ "${1:-}" = "--stress-only" ]; then stress_only=1; shift; fi
if [ "${1:-}" = "--fuzz-only" ]; then fuzz_only=1; stress_only=1; shift; fi
pass=0; fail=0; failed_names=""
# die_after_fork=0: liburcu recreates its call_rcu worker in a fork child,
# which TSan refuses by default after a multithreaded fork (not a race).
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 die_after_fork=0}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0 abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1 print_stacktrace=1}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run_cmocka() { # $1 binary
    out="$tmp/out"
    start=$(date +%s)
    timeout 600 "$1" >"$out" 2>&1
    rc=$?
    runs=$(grep -c '^\[ RUN      \]' "$out")
    oks=$(grep -c '^\[       OK \]' "$out")
    # cmocka lists each skip twice (inline and in the summary): use the count.
    skips=$(sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) test(s).*/\1/p' "$out" | tail -1)
    skips=${skips:-0}
    bad=$((runs - oks - skips))
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    pass=$((pass + oks)); fail=$((fail + bad))
    echo "$1: $oks passed, $bad failed, $skips skipped ($(( $(date +%s) - start ))s)"
    if [ "$bad" -ne 0 ]; then
        failed_names="$failed_names $1"
        grep -v '^\[       OK \]\|^\[ RUN      \]' "$out" | tail -40
    fi
}

run_plain() { # $1 binary, then its arguments
    out="$tmp/out"
    start=$(date +%s)
    timeout 900 "$@" >"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        pass=$((pass + 1)); echo "$1: passed ($(( $(date +%s) - start ))s) $(tail -1 "$out")"
    else
        fail=$((fail + 1)); failed_names="$failed_names $1"
        echo "$1: FAILED (exit $rc)"; tail -40 "$out"
    fi
}

for b in "$@"; do
    if [ "$stress_only" -eq 0 ]; then
        for t in "$b"/tests/test_*; do
            [ -x "$t" ] && run_cmocka "$t"
        done
    fi
    if [ "$fuzz_only" -eq 0 ]; then
        for s in "$b"/stress/stress_*; do
            [ -x "$s" ] && run_plain "$s"
        done
    fi
    # Fuzz targets: a bounded campaign each, corpus kept under build/.
    for f in "$b"/fuzz/fuzz_*; do
        [ -x "$f" ] || continue
        corpus="$b/corpus/$(basename "$f")"; mkdir -p "$corpus"
        run_plain "$f" -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=4096 \
            -timeout=30 -print_final_stats=1 "$corpus"
    done
done
# Scripted checks (install, packaging): once per run, not per build.
if [ "$stress_only" -eq 0 ]; then
    for s in "$(dirname "$0")"/scripts/test_*.sh; do
        [ -x "$s" ] && run_plain "$s"
    done
fi
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
