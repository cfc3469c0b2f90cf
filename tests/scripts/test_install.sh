#!/bin/sh
# Install into a temporary DESTDIR, build examples/hello.c against it using
# only `pkg-config --cflags --libs rpool` (shared and static), run it, check
# that only rp_-prefixed symbols are exported, then uninstall cleanly.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
make -s -C "$top" install DESTDIR="$d/root" PREFIX=/usr/local B=build/release >/dev/null
lib="$d/root/usr/local/lib"
for f in librpool.a librpool.so librpool.so.0 librpool.so.0.1.0 pkgconfig/rpool.pc; do
    [ -e "$lib/$f" ] || { echo "missing $lib/$f"; exit 1; }
done
[ -e "$d/root/usr/local/include/rpool.h" ] || { echo "missing header"; exit 1; }
[ -e "$d/root/usr/local/share/man/man3/rpool.3" ] || echo "note: no man page installed"
export PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$d/root"
cflags=$(pkg-config --cflags rpool)
libs=$(pkg-config --libs rpool)
cc -std=c11 -Wall -Werror $cflags -o "$d/hello" "$top/examples/hello.c" $libs
LD_LIBRARY_PATH="$lib" "$d/hello" | grep -q "hello from a 1 MiB region / hello from a 64-byte object"
cc -std=c11 -Wall -Werror $cflags -o "$d/hello-static" "$top/examples/hello.c" \
    "$lib/librpool.a" $(pkg-config --libs-only-l --static rpool | sed 's/-lrpool//')
"$d/hello-static" | grep -q "rpool 0.1.0"
# Only rp_ symbols are exported from the shared library.
bad=$(nm -D --defined-only "$lib/librpool.so" | awk '{print $3}' | grep -v '^rp_' || true)
[ -z "$bad" ] || { echo "non-rp_ exports: $bad"; exit 1; }
soname=$(objdump -p "$lib/librpool.so.0.1.0" | awk '/SONAME/ {print $2}')
[ "$soname" = "librpool.so.0" ] || { echo "SONAME is $soname"; exit 1; }
make -s -C "$top" uninstall DESTDIR="$d/root" PREFIX=/usr/local B=build/release >/dev/null
left=$(find "$d/root" -type f | wc -l)
[ "$left" -eq 0 ] || { echo "uninstall left $left files"; exit 1; }
echo "install, pkg-config build (shared + static), exports and uninstall ok"
