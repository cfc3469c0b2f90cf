#!/bin/sh
# Build and run every example, plus a short server + load generator smoke run
# on loopback (examples/Makefile `check`: about 6 seconds).
set -eu
cd "$(dirname "$0")/../.."
make -s -C examples check
