#!/bin/sh
# demo.sh -- the rpool demo: a loopback HTTP server under load, first with its
# memory on rpool under a physical budget, then on plain malloc.
#
#   sh demo.sh          the demo (about 40 s): 20 s on rpool, 10 s on malloc,
#                       a comparison table, RSS over time to build/demo/*.dat
#                       and, with gnuplot, a plot to build/demo/rss.png
#   sh demo.sh smoke    the quick check behind `make check`: 3 s on rpool and
#                       1 s on malloc; fails unless requests were served with
#                       no errors and no 503s
#
# Run from examples/ via make (`make demo` at the top or here), which builds
# the programs first. Everything runs on 127.0.0.1 with a port the kernel
# picks, and every process is bounded in time.
#
# The pool's configuration comes from RPOOL_CONF (rp_config_from_env):
#   RPOOL_CONF=physical_budget=48M make demo     # watch the budget shed load
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=$(cd "$here/.." && pwd)/build/demo
bin=$out/examples
mode=${1:-demo}

: "${RPOOL_CONF:=physical_budget=256M}"
export RPOOL_CONF

for p in server loadgen; do
    if [ ! -x "$bin/$p" ]; then
        echo "demo.sh: $bin/$p is missing; run 'make' in examples/ first" >&2
        exit 1
    fi
done

server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server TAG ARGS...: start the server in the background with its
# summary going to $out/server-TAG.out and its RSS samples to rss-TAG.dat;
# wait until it has written its port (port 0: the kernel picks a free one).
start_server() {
    st_tag=$1
    shift
    rm -f "$out/port-$st_tag"
    "$bin/server" --port 0 --port-file "$out/port-$st_tag" --rss-log "$out/rss-$st_tag.dat" "$@" \
        > "$out/server-$st_tag.out" &
    server_pid=$!
    tries=0
    while [ ! -s "$out/port-$st_tag" ]; do
        if ! kill -0 "$server_pid" 2>/dev/null || [ $tries -ge 50 ]; then
            echo "demo.sh: the server did not start" >&2
            exit 1
        fi
        tries=$((tries + 1))
        sleep 0.1
    done
    port=$(cat "$out/port-$st_tag")
}

# stop_server: SIGTERM, then wait for the stats and the summary.
stop_server() {
    kill -TERM "$server_pid"
    status=0
    wait "$server_pid" || status=$?
    server_pid=
    if [ "$status" -ne 0 ]; then
        echo "demo.sh: the server exited with status $status" >&2
        exit 1
    fi
}

# kv FILE PREFIX KEY: the value of KEY= on FILE's line starting with PREFIX.
kv() {
    sed -n "s/^$2.* $3=\([^ ]*\).*/\1/p" "$1" | tail -n 1
}

mib() {
    awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
}

# ensure_gnuplot: true if gnuplot is there or could be installed.
ensure_gnuplot() {
    command -v gnuplot > /dev/null 2>&1 && return 0
    echo "gnuplot is missing; installing gnuplot-nox with apt-get"
    if [ "$(id -u)" -eq 0 ]; then
        as_root=
    elif command -v sudo > /dev/null 2>&1; then
        # Without a terminal, never wait for a password that cannot come.
        if [ -t 0 ]; then as_root=sudo; else as_root="sudo -n"; fi
    else
        return 1
    fi
    log=$out/apt-gnuplot.log
    { $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox ||
      { $as_root apt-get update -qq &&
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox; }
    } > "$log" 2>&1 || return 1
    command -v gnuplot > /dev/null 2>&1
}

if [ "$mode" = smoke ]; then
    # A short run on each allocator: every request must succeed.
    for tag in rpool malloc; do
        if [ $tag = rpool ]; then secs=3; flag=; else secs=1; flag=--malloc; fi
        start_server "smoke-$tag" --seconds 30 --threads 2 $flag 2> "$out/server-smoke-$tag.err"
        lstatus=0
        "$bin/loadgen" --port "$port" --seconds $secs --threads 4 --blob-percent 10 \
            --max-kb 1024 > "$out/loadgen-smoke-$tag.out" 2>&1 || lstatus=$?
        stop_server
        f=$out/loadgen-smoke-$tag.out
        requests=$(kv "$f" loadgen: requests)
        errors=$(kv "$f" loadgen: errors)
        rejected=$(kv "$f" loadgen: rejected)
        if [ $lstatus -ne 0 ] || [ "${requests:-0}" -eq 0 ] || [ "${errors:-1}" -ne 0 ] ||
           [ "${rejected:-1}" -ne 0 ]; then
            echo "examples: smoke-$tag      FAIL" >&2
            cat "$f" "$out/server-smoke-$tag.out" "$out/server-smoke-$tag.err" >&2
            exit 1
        fi
        printf 'examples: smoke-%-8s ok   %s s: %s requests (%s req/s), 0 errors\n' \
            $tag $secs "$requests" "$(kv "$f" loadgen: req_per_s)"
    done
    exit 0
fi

if [ "$mode" != demo ]; then
    echo "usage: $0 [demo|smoke]" >&2
    exit 2
fi

# The workload: 32 keep-alive connections. 16 are fast clients (95% GET
# /hello, 5% GET /blob of 1 KiB .. 8 MiB); 16 are slow downloaders that only
# fetch blobs and read them at about 16 MiB/s, so the server holds their
# responses in write buffers -- the classic way a server's memory grows.
LOAD="--threads 32 --slow 16 --blob-percent 5 --max-kb 8192"

plot_ok=0
if ensure_gnuplot; then plot_ok=1; fi

echo "== 1/2: memory from rpool (RPOOL_CONF=$RPOOL_CONF), 20 s under load, then 3 s idle"
echo "   (progress: requests/s; physical = resident bytes by rpool's account, vs the budget)"
start_server rpool --seconds 60
"$bin/loadgen" --port "$port" --seconds 20 $LOAD | tee "$out/loadgen-rpool.out"
sleep 3 # idle: released regions are purged after purge_delay_ms (1 s)
stop_server
cat "$out/server-rpool.out"

echo
echo "== 2/2: the same server on plain malloc (--malloc), 10 s under load, then 3 s idle"
start_server malloc --seconds 60 --malloc
"$bin/loadgen" --port "$port" --seconds 10 $LOAD | tee "$out/loadgen-malloc.out"
sleep 3
stop_server
cat "$out/server-malloc.out"

echo
echo "== comparison (loadgen's view of throughput; the server's RSS)"
printf '%-8s %12s %8s %8s %13s %15s %15s\n' allocator "requests/s" errors 503s "peak RSS" \
    "RSS after load" "peak physical"
for tag in rpool malloc; do
    l=$out/loadgen-$tag.out
    s=$out/server-$tag.out
    if [ $tag = rpool ]; then
        phys="$(mib "$(kv "$s" summary: peak_physical_bytes)")"
    else
        phys="-"
    fi
    printf '%-8s %12s %8s %8s %13s %15s %15s\n' $tag "$(kv "$l" loadgen: req_per_s)" \
        "$(kv "$l" loadgen: errors)" "$(kv "$l" loadgen: rejected)" \
        "$(mib "$(kv "$s" summary: peak_rss_bytes)")" \
        "$(mib "$(kv "$s" summary: rss_at_stop_bytes)")" "$phys"
done
echo "physical budget: $(mib "$(kv "$out/server-rpool.out" summary: physical_budget_bytes)")" \
    "(peak physical is rpool's own account: whole regions, touched or not, so it"
echo "runs above RSS; the budget applies to it)"
echo "RSS over time: $out/rss-rpool.dat, $out/rss-malloc.dat (seconds rss budget physical)"

if [ $plot_ok -eq 0 ]; then
    echo "no plot: gnuplot is not installed and could not be installed (see above);"
    echo "  install gnuplot-nox and run 'make demo' again for $out/rss.png"
    exit 0
fi
gnuplot <<EOF
set terminal pngcairo size 1000,560 font "sans,10"
set output "$out/rss.png"
set title "loopback HTTP server under load: memory over time"
set xlabel "seconds since server start"
set ylabel "MiB"
set key top right
set grid
M = 1048576.0
plot "$out/rss-rpool.dat"  using 1:(\$3/M) with lines lw 2 dt 2 lc rgb "#c00000" title "rpool physical budget", \
     "$out/rss-rpool.dat"  using 1:(\$4/M) with lines lw 1 lc rgb "#e08000" title "rpool: physical (rpool's account)", \
     "$out/rss-rpool.dat"  using 1:(\$2/M) with lines lw 2 lc rgb "#0050c0" title "rpool: RSS", \
     "$out/rss-malloc.dat" using 1:(\$2/M) with lines lw 2 lc rgb "#208020" title "malloc: RSS"
EOF
echo "plot: $out/rss.png"
