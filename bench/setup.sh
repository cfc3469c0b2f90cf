#!/bin/sh
# bench/setup.sh -- install what the benchmarks need, only when missing:
# the peer allocators, valgrind (instruction counts), gnuplot (plots), and
# the library's own build dependencies. Checks with dpkg-query; installs with
# apt-get install -y, through sudo when not root. Exits non-zero when
# something is still missing (the run goes on; missing peers read MISSING).
set -u

want="libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 valgrind gnuplot-nox \
python3 libck-dev liburcu-dev"
missing=""
for pkg in $want; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: missing:$missing (no apt-get here)" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    echo "bench/setup.sh: missing:$missing, and not root and no sudo" >&2
    exit 1
fi
echo "bench/setup.sh: installing$missing" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
# One at a time, so one unavailable package does not block the others.
rc=0
for pkg in $missing; do
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$pkg" >&2 || {
        echo "bench/setup.sh: could not install $pkg" >&2
        rc=1
    }
done
exit $rc
