#!/bin/sh
# Install the Debian packages rpool needs to build and test, only when missing.
# Usage: ci/deps.sh [extra-package ...]
# Runs apt-get through sudo when not root. Exits non-zero if a package cannot be had.
set -eu

want="libck-dev liburcu-dev libcmocka-dev clang libclang-rt-14-dev pkg-config python3 xz-utils binutils $*"
missing=""
for pkg in $want; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    echo "ci/deps.sh: missing packages:$missing, and not root and no sudo" >&2
    exit 1
fi
echo "ci/deps.sh: installing$missing" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
