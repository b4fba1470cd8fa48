#!/usr/bin/env bash
# memory-bounds.sh: deriver's peak RSS with slow consumers, measured for longer than CI does.
# Redis behind a proxy throttled to 256 KiB/s under write load with large transactions, stalled
# change-feed (SSE) and search clients; then 50 change-feed clients that read nothing while
# thousands of notices go by. Prints the figures (VmRSS / VmHWM of the daemon, in MiB).
# Usage: scripts/memory-bounds.sh [SLOW_SECS] [BOUND_MIB]   (defaults 300 and 512)
set -euo pipefail
ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,6p' "$0"
  exit 0
fi
scripts/dev-stack.sh install
export DERIVER_SHARED_DIR=${DERIVER_SHARED_DIR:-$(cd "$ROOT/../shared" && pwd -P)}
export DERIVER_MEMORY_SECS=${1:-300}
export DERIVER_MEMORY_BOUND_MIB=${2:-512}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --test memory -- --test-threads=1 --nocapture >"$out" 2>&1 || status=$?
grep -o 'memory: .*\|test result.*' "$out" || true
if ((status != 0)); then
  grep -A8 'panicked at' "$out" | head -40
  echo "memory-bounds: FAILED (exit $status)" >&2
fi
exit "$status"
