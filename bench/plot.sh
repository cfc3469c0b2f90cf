#!/bin/sh
# bench/plot.sh -- turn results/latest.txt into PNG plots with gnuplot.
#
#   sh plot.sh [RESULTS_DIR]         (default: results)
#
# Writes, next to latest.txt:
#   tput-<case>.png   throughput (M ops/s = 1000 / median ns per op) against
#                     threads, one line per allocator, min..max as error bars
#                     (small objects, cross-thread free, request-scoped);
#                     log scale: the bump reference is 10x the others
#   rss-<case>.png    large buffers: RSS growth at peak, right after free and
#                     after the wait, per allocator
# Every plotted number comes from the RESULT lines of that file; cells that
# were MISSING / not available are simply absent from the plot (the table
# names them).
set -eu

dir=${1:-results}
in="$dir/latest.txt"
[ -f "$in" ] || { echo "plot.sh: no $in; run 'make -C bench' first" >&2; exit 1; }
command -v gnuplot >/dev/null 2>&1 || { echo "plot.sh: gnuplot not installed (bench/setup.sh installs gnuplot-nox)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
title=$(sed -n '1s/^# //p' "$in" | cut -d';' -f1 | tr -d '"\\')

# field NAME LINE -> value of NAME=... in a RESULT line
extract() {
    awk -v want_case="$1" -v want_metric="$2" '
    /^RESULT / {
        delete kv
        for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        if (kv["case"] != want_case || kv["metric"] != want_metric) next
        if (!("median_ns" in kv)) next
        printf "%s %s %s %s %s\n", kv["alloc"], kv["threads"], kv["median_ns"], kv["min_ns"], kv["max_ns"]
    }' "$in"
}

n=0
for case in small-64-lifo small-64-random small-256-lifo small-256-random xthread-64 xthread-64-split xthread-64-pair request-200; do
    metric=ns_per_pair
    case $case in xthread-*|request-*) metric=ns_per_object ;; esac
    extract "$case" "$metric" >"$tmp/$case.all"
    [ -s "$tmp/$case.all" ] || continue
    plots=""
    for a in glibc jemalloc mimalloc tcmalloc rpool rpool-malloc bump; do
        # threads, Mops/s median, Mops/s low (from max ns), Mops/s high
        awk -v a="$a" '$1 == a { printf "%s %.6g %.6g %.6g\n", $2, 1000/$3, 1000/$5, 1000/$4 }' \
            "$tmp/$case.all" | sort -n >"$tmp/$case.$a"
        if [ -s "$tmp/$case.$a" ]; then
            label=$a
            [ "$a" = bump ] && label="bump/ref (no allocator)"
            plots="$plots${plots:+, }'$tmp/$case.$a' using 1:2:3:4 with yerrorlines lw 2 title '$label'"
        fi
    done
    gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set output '$dir/tput-$case.png'
set title "$case: throughput vs threads\n$title" font ",10"
set xlabel 'threads'
set ylabel 'M ops/s (1000 / median ns per op), bars = min..max'
set logscale y
set logscale x 2
set xtics (1, 2, 4, 8)
set xrange [0.8:10]
set key outside right
set grid
plot $plots
EOF
    n=$((n + 1))
done

for case in large-64k large-1024k large-4096k; do
    awk -v want_case="$case" '
    /^RESULT / {
        delete kv
        for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
        if (kv["case"] != want_case || !("median_mib" in kv)) next
        v[kv["alloc"], kv["metric"]] = kv["median_mib"]; seen[kv["alloc"]] = 1
    }
    END {
        split("glibc jemalloc mimalloc tcmalloc rpool rpool-malloc", order, " ")
        for (i = 1; i <= 6; i++) {
            a = order[i]
            if (!(a in seen)) continue
            printf "%s %s %s %s\n", a, v[a, "peak_rss_mib"], v[a, "rss_after_free_mib"], v[a, "rss_after_wait_mib"]
        }
    }' "$in" >"$tmp/$case.rss"
    [ -s "$tmp/$case.rss" ] || continue
    gnuplot <<EOF
set terminal pngcairo size 900,520 noenhanced
set output '$dir/rss-$case.png'
set title "$case: RSS growth over the baseline (median MiB)\n$title" font ",10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set ylabel 'MiB'
set yrange [0:*]
set key outside right
set grid ytics
plot '$tmp/$case.rss' using 2:xtic(1) title 'peak', '' using 3 title 'right after free', '' using 4 title 'after the wait'
EOF
    n=$((n + 1))
done
echo "plot.sh: $n plots in $dir/"
