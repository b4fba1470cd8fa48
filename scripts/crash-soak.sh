#!/usr/bin/env bash
# crash-soak.sh: the long crash test. KILLS cycles (default 100) of SIGKILL at a random moment under
# a mixed write load on pagila (film and every table the films pipeline depends on), a restart under
# load, and a convergence check after each cycle; prints "converged N/KILLS" and fails unless all did.
# Usage: scripts/crash-soak.sh [KILLS]   (runs tests/crash_soak.rs; it loads the machine: nice it)
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,5p' "$0"
  exit 0
fi
scripts/dev-stack.sh install
export DERIVER_SHARED_DIR=${DERIVER_SHARED_DIR:-$(cd "$ROOT/../shared" && pwd -P)}
PG_BIN=$(scripts/dev-stack.sh pg-bin)
export PG_BIN
export DERIVER_SOAK_KILLS=${1:-100}
exec cargo test --test crash_soak -- --ignored --nocapture
