#!/usr/bin/env bash
# crash-soak.sh: the long crash test. Hundreds of SIGKILLs at random moments and aborts at random
# failpoints under write load on pagila; every 25 kills, all views must equal a fresh derivation.
# Usage: scripts/crash-soak.sh [KILLS]   (default 200; prints the tally at the end)
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,4p' "$0"
  exit 0
fi
scripts/dev-stack.sh install
export DERIVER_SHARED_DIR=${DERIVER_SHARED_DIR:-$(cd "$ROOT/../shared" && pwd -P)}
export DERIVER_SOAK_KILLS=${1:-200}
exec cargo test --test crash_matrix soak -- --ignored --nocapture
