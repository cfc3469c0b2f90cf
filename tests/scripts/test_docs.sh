#!/bin/sh
# docs/API.md and docs/rpool.3 are generated from include/rpool.h: fail when
# they are stale, so the reference can never drift from the contract.
set -eu
cd "$(dirname "$0")/../.."
python3 tools/gen_api.py --check
