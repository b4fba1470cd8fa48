#!/usr/bin/env bash
# test.sh: build and run every test. The integration tests start their own throwaway PostgreSQL
# and Redis on free loopback ports, so this only makes sure the packages are installed.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

usage() {
  cat <<'USAGE'
Usage: scripts/test.sh [CARGO_TEST_ARGS...] [-- TEST_BINARY_ARGS...]

Installs missing system packages (scripts/dev-stack.sh install --with-browser: the base packages
plus Chromium and chromedriver for tests/browser.rs), then runs
  cargo fmt --check
  cargo clippy --all-targets -- -D warnings
  cargo build --all-targets
  cargo test --all-targets [CARGO_TEST_ARGS...] -- --test-threads=2 [TEST_BINARY_ARGS...]
and exits with cargo test's exit code. --all-targets is left out when CARGO_TEST_ARGS select
targets themselves (--test NAME, --lib, ...); --test-threads=2 when TEST_BINARY_ARGS set it.

Examples:
  scripts/test.sh                       # everything
  scripts/test.sh --test e2e            # one integration test file
  scripts/test.sh snapshot -- --nocapture

Exports for the tests:
  DERIVER_SHARED_DIR  absolute path of the shared sample data (<repo>/../shared unless already set)
  PG_BIN              PostgreSQL ≥ 14 server binaries: scripts/dev-stack.sh pg-bin, which checks
                      PG_BIN when already set and otherwise searches the usual install locations
USAGE
}

log() { printf 'test: %s\n' "$*" >&2; }
die() {
  printf 'test: error: %s\n' "$*" >&2
  exit 1
}

cargo_args=()
test_args=()
seen_sep=0
for arg in "$@"; do
  if ((seen_sep)); then
    test_args+=("$arg")
  elif [[ $arg == -- ]]; then
    seen_sep=1
  elif [[ $arg == -h || $arg == --help ]]; then
    usage
    exit 0
  else
    cargo_args+=("$arg")
  fi
done
# --all-targets unless the caller picked targets (e.g. --test e2e), which it would otherwise widen.
targets=(--all-targets)
for arg in "${cargo_args[@]}"; do
  case $arg in
    --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | --bench=* | \
      --examples | --example | --example=* | --doc | --all-targets) targets=() ;;
  esac
done
threads=(--test-threads=2)
for arg in "${test_args[@]}"; do
  if [[ $arg == --test-threads* ]]; then threads=(); fi
done

cd "$ROOT"

# The browser packages only here: tests/browser.rs needs them, the dev stack and the demo do not.
scripts/dev-stack.sh install --with-browser

shared=${DERIVER_SHARED_DIR:-$ROOT/../shared}
[[ -d $shared/data ]] ||
  die "shared sample data not found at $shared (expected the shared/ folder beside the repository, i.e. ../shared from the repo root; or set DERIVER_SHARED_DIR)"
DERIVER_SHARED_DIR=$(cd -- "$shared" && pwd -P)
export DERIVER_SHARED_DIR

# The same discovery as the dev stack (one copy, in dev-stack.sh's find_pg_bin): a PG_BIN set by
# the caller is validated, otherwise the first PostgreSQL ≥ 14 of the usual locations is used.
PG_BIN=$(scripts/dev-stack.sh pg-bin) || die "no usable PostgreSQL server (see the message above)"
export PG_BIN

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
  else
    die "cargo not found: install Rust (https://rustup.rs) or run scripts/demo.sh once"
  fi
fi

log "DERIVER_SHARED_DIR=$DERIVER_SHARED_DIR PG_BIN=$PG_BIN"
# The habits first, so that a formatting slip or a lint fails in seconds, not after the tests.
for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 ||
    die "cargo $tool is missing: install it with \`rustup component add ${tool/fmt/rustfmt}\`"
done
log "cargo fmt --check"
cargo fmt --check || die "the code is not formatted: run \`cargo fmt\` (rustfmt.toml holds the settings)"
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
log "cargo build --all-targets"
cargo build --all-targets

cmd=(cargo test "${targets[@]}" "${cargo_args[@]}" -- "${threads[@]}" "${test_args[@]}")
log "${cmd[*]}"
status=0
"${cmd[@]}" || status=$?
exit "$status"
