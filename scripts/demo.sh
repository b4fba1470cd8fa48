#!/usr/bin/env bash
# demo.sh: from a fresh clone to a running deriver on the pagila sample database, in one command.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

usage() {
  cat <<'USAGE'
Usage: scripts/demo.sh [--no-run]

Starts the project-local PostgreSQL (≥ 14: the one installed, else the distribution's) with
pagila loaded, and Redis, with scripts/dev-stack.sh up (which installs missing system packages,
never the browser), creates the indexes the sample pipelines join on
(migrations/003_demo_indexes.sql), installs Rust with rustup only if cargo is missing, builds deriver
(cargo build --release), runs `deriver setup`, then replaces itself with `deriver run` (stop it
with Ctrl-C).

Configuration: ./deriver.toml, overridden by the DERIVER__* variables of .dev/env.

Options:
  --no-run   stop after `deriver setup`
  -h, --help show this help
USAGE
}

log() { printf 'demo: %s\n' "$*" >&2; }
die() {
  printf 'demo: error: %s\n' "$*" >&2
  exit 1
}

run=1
while (($#)); do
  case $1 in
    --no-run) run=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      printf 'demo: unknown argument: %s\n\n' "$1" >&2
      usage >&2
      exit 2
      ;;
  esac
  shift
done

cd "$ROOT"

scripts/dev-stack.sh up
# shellcheck source=/dev/null
source .dev/env
# The indexes the sample pipelines join on, so that `deriver validate` is clean (idempotent).
log "indexes for the sample pipelines (migrations/003_demo_indexes.sql)"
PGOPTIONS='-c client_min_messages=warning' scripts/dev-stack.sh psql -X -q -v ON_ERROR_STOP=1 -f migrations/003_demo_indexes.sql

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  else
    command -v curl >/dev/null 2>&1 || die "cargo is missing and so is curl (run: scripts/dev-stack.sh install)"
    log "cargo not found: installing Rust with rustup (non-interactive)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  fi
  export PATH
fi

log "building (cargo build --release)"
cargo build --release

log "deriver setup"
./target/release/deriver setup

if ((!run)); then
  log "setup done (--no-run): start the daemon with ./target/release/deriver run"
  exit 0
fi

cat >&2 <<'TRY'

deriver is starting (Ctrl-C stops it). In another terminal, try:

  source .dev/env && redis-cli -p $REDIS_PORT GET deriver:film:1
  ./target/release/deriver status
  curl -s localhost:7700/v1/status

TRY
exec ./target/release/deriver run
