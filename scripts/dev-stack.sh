#!/usr/bin/env bash
# dev-stack.sh: a project-local PostgreSQL 15 (logical replication on) and Redis for developing deriver.
#
# Everything lives under .dev/ in the repository root; the system-wide PostgreSQL cluster and Redis
# service that Debian's packages may start are never used or touched. Run with --help for usage.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
DEV="$ROOT/.dev"
PG_LINK="$DEV/pg"
REDIS_DIR="$DEV/redis"
ENV_FILE="$DEV/env"
DB_NAME=pagila
PG_PORT_START=54329
REDIS_PORT_START=63790
# Stable per-checkout suffix for the few things that may have to live outside .dev (see pg_prepare_dirs).
REPO_HASH=$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)
SOCK_FALLBACK="/tmp/deriver-pg-$REPO_HASH"
PG_FALLBACK="/var/tmp/deriver-dev-$REPO_HASH"

APT_PACKAGES=(postgresql-15 postgresql-contrib-15 redis-server libpq-dev pkg-config build-essential curl chromium chromium-driver)

usage() {
  cat <<EOF
Usage: scripts/dev-stack.sh COMMAND [ARGS...]

A project-local PostgreSQL 15 and Redis for deriver, kept under .dev/ in the repository root.

Commands:
  install   apt-get install whatever is missing of: ${APT_PACKAGES[*]}
  up        install, then create (once) and start the PostgreSQL cluster (.dev/pg) and Redis
            (.dev/redis) on free loopback ports, load the pagila sample database (once) and
            write .dev/env. Idempotent: a second run is a quick no-op.
  down      stop both (idempotent)
  status    show whether each is running, their ports and the env file; exit 0 only if both run
  reset     down, then delete .dev entirely (the cluster, Redis data, remembered ports)
  psql      run psql on the dev database; extra arguments are passed to psql
  help      show this help

After 'up':  source .dev/env   # DERIVER__POSTGRES__URL, DERIVER__REDIS__URL, PGHOST, PGPORT,
                               # PGUSER, PGDATABASE, REDIS_PORT

Environment:
  DERIVER_SHARED_DIR  sample data folder (default: <repo>/../shared)
  PG_BIN              PostgreSQL server binaries (default: /usr/lib/postgresql/15/bin)
EOF
}

log() { printf 'dev-stack: %s\n' "$*" >&2; }
die() {
  printf 'dev-stack: error: %s\n' "$*" >&2
  exit 1
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to the 'postgres' system user
# (created by the postgresql-15 package); otherwise to the current user.
if [[ $EUID -eq 0 ]]; then IS_ROOT=1; else IS_ROOT=0; fi

# Runs a command as the OS user that owns the cluster, from / so that its working directory is
# always readable by that user.
as_pg() {
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# ---------------------------------------------------------------------------------------- install

pkg_missing() {
  # Prints the packages of "$@" that are not installed.
  local pkg status
  for pkg in "$@"; do
    if [[ $pkg == postgresql-contrib-15 ]]; then
      # On Debian 12 this is a virtual package provided by postgresql-15 itself.
      if [[ -e /usr/share/postgresql/15/extension/pg_trgm.control ]]; then continue; fi
    fi
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || printf '%s\n' "$pkg"
  done
}

apt_as_root() {
  if ((IS_ROOT)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "installing packages needs root, and sudo is not available; install them by hand: $*"
  fi
}

apt_lists_empty() {
  ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

cmd_install() {
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"
  local missing=()
  mapfile -t missing < <(pkg_missing "${APT_PACKAGES[@]}")
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  log "installing missing packages: ${missing[*]}"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
  if apt_lists_empty; then
    log "apt package lists are empty: running apt-get update"
    apt_as_root apt-get update -q >&2
  fi
  if ! apt_as_root "${install[@]}" >&2; then
    log "apt-get install failed: running apt-get update and retrying"
    apt_as_root apt-get update -q >&2
    apt_as_root "${install[@]}" >&2 || die "apt-get install failed for: ${missing[*]}"
  fi
}

# ------------------------------------------------------------------------------------- utilities

find_pg_bin() {
  if [[ -n ${PG_BIN:-} ]]; then
    [[ -x $PG_BIN/pg_ctl ]] || die "PG_BIN=$PG_BIN has no pg_ctl"
    return 0
  fi
  if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
    PG_BIN=/usr/lib/postgresql/15/bin
    return 0
  fi
  die "PostgreSQL 15 server binaries not found in /usr/lib/postgresql/15/bin (run: scripts/dev-stack.sh install)"
}

shared_dir() {
  local dir=${DERIVER_SHARED_DIR:-$ROOT/../shared}
  if [[ ! -f $dir/data/pagila/pagila-schema.sql || ! -f $dir/data/pagila/pagila-data.sql ]]; then
    die "sample data not found: expected $dir/data/pagila/pagila-schema.sql and pagila-data.sql (the shared/ folder beside the repository, i.e. ../shared from the repo root; set DERIVER_SHARED_DIR to point elsewhere)"
  fi
  (cd -- "$dir" && pwd -P)
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints the first port from $1 upward (at most 500 tried) that nothing listens on.
free_port() {
  local port=$1 last=$(($1 + 500))
  while ((port <= last)); do
    if ! port_busy "$port"; then
      printf '%s\n' "$port"
      return 0
    fi
    port=$((port + 1))
  done
  die "no free loopback port in $1..$last"
}

read_port_file() {
  local file=$1 port=""
  if [[ -r $file ]]; then read -r port <"$file" || true; fi
  if [[ $port =~ ^[0-9]+$ ]]; then printf '%s\n' "$port"; fi
}

# True when $1 is the pid of a live (not zombie) process whose executable name is $2.
pid_is() {
  local pid=$1 name=$2 stat="" comm state
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
  read -r stat <"/proc/$pid/stat" 2>/dev/null || return 1
  # /proc/PID/stat: "PID (COMM) STATE ..."
  comm=${stat#*(}
  comm=${comm%)*}
  state=${stat##*) }
  state=${state%% *}
  [[ $comm == "$name" && $state != Z && $state != X ]]
}

write_if_changed() {
  # write_if_changed FILE: stdin becomes FILE's content, replaced atomically, only if it differs.
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
  chmod 644 "$tmp"
  mv -f "$tmp" "$file"
}

take_lock() {
  mkdir -p "$DEV"
  exec 9>"$DEV/.lock"
  flock -w 120 9 || die "another dev-stack.sh is still running (lock $DEV/.lock)"
}

# -------------------------------------------------------------------------------------- postgres

# Resolves the cluster's paths without creating anything.
pg_paths() {
  if [[ -e $PG_LINK ]]; then
    PG_DIR=$(readlink -f -- "$PG_LINK")
  else
    PG_DIR=$PG_LINK
  fi
  PGDATA_DIR="$PG_DIR/data"
  PG_LOG="$PG_DIR/log"
  PG_PORT_FILE="$PG_DIR/port"
  # A Unix socket path must fit in 107 bytes, "/.s.PGSQL.NNNNN" included.
  PG_SOCK_DIR="$PG_DIR/sock"
  if ((${#PG_SOCK_DIR} > 90)); then
    PG_SOCK_DIR=$SOCK_FALLBACK
  fi
  PG_PORT=$(read_port_file "$PG_PORT_FILE")
}

pg_prepare_dirs() {
  mkdir -p "$DEV"
  if [[ ! -e $PG_LINK ]]; then
    mkdir -p "$PG_LINK"
    if ((IS_ROOT)); then
      chown postgres:postgres "$PG_LINK"
      chmod 700 "$PG_LINK"
      if ! as_pg test -w "$PG_LINK"; then
        # The postgres user cannot reach the checkout (e.g. it is under /root): keep the cluster in
        # a stable directory it can reach, and point .dev/pg at it.
        rmdir "$PG_LINK"
        mkdir -p "$PG_FALLBACK/pg"
        chown postgres:postgres "$PG_FALLBACK/pg"
        chmod 700 "$PG_FALLBACK/pg"
        ln -s "$PG_FALLBACK/pg" "$PG_LINK"
        log "postgres cannot access $ROOT; cluster kept in $PG_FALLBACK/pg (.dev/pg links to it)"
      fi
    fi
  fi
  pg_paths
  mkdir -p "$PG_SOCK_DIR"
  if ((IS_ROOT)); then chown postgres:postgres "$PG_SOCK_DIR"; fi
  chmod 700 "$PG_SOCK_DIR"
}

# Prints the postmaster's pid when the cluster is running.
pg_pid() {
  local pid=""
  [[ -r $PGDATA_DIR/postmaster.pid ]] || return 1
  read -r pid <"$PGDATA_DIR/postmaster.pid" || return 1
  pid_is "$pid" postgres || return 1
  printf '%s\n' "$pid"
}

pg_locale() {
  if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then echo C.UTF-8; else echo C; fi
}

pg_init() {
  if [[ -f $PGDATA_DIR/PG_VERSION ]]; then return 0; fi
  if [[ -e $PGDATA_DIR ]]; then
    die "$PGDATA_DIR exists but is not a PostgreSQL cluster; run: scripts/dev-stack.sh reset"
  fi
  local tmp="$PG_DIR/data.initdb"
  rm -rf -- "$tmp"
  log "postgres: initdb $PGDATA_DIR"
  if ! as_pg "$PG_BIN/initdb" -D "$tmp" -U postgres --auth-local=trust --auth-host=trust \
    -E UTF8 --locale="$(pg_locale)" --no-instructions >"$PG_DIR/initdb.log" 2>&1; then
    tail -n 20 "$PG_DIR/initdb.log" >&2 || true
    die "initdb failed (full log: $PG_DIR/initdb.log)"
  fi
  printf "\n# deriver dev stack: settings regenerated by scripts/dev-stack.sh on each start\ninclude_if_exists = 'deriver-dev.conf'\n" \
    >>"$tmp/postgresql.conf"
  mv -- "$tmp" "$PGDATA_DIR" # only a complete cluster ever appears under the final name
}

pg_write_conf() {
  local conf="$PGDATA_DIR/deriver-dev.conf"
  write_if_changed "$conf" <<EOF || true
# Written by scripts/dev-stack.sh; edits are overwritten on the next 'up'.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK_DIR'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
EOF
  if ((IS_ROOT)); then chown postgres:postgres "$conf"; fi
}

pg_start() {
  local pid
  local i
  if pid=$(pg_pid); then
    # It may still be starting up (or recovering): wait up to 60 s for it to accept connections.
    for ((i = 0; i < 600; i++)); do
      if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 5; then return 0; fi
      if ! pid_is "$pid" postgres; then break; fi
      sleep 0.1
    done
    die "postgres (pid $pid) is running but not accepting connections on 127.0.0.1:$PG_PORT; see $PG_LOG"
  fi
  if [[ -e $PGDATA_DIR/postmaster.pid ]]; then
    log "postgres: removing stale postmaster.pid"
    rm -f -- "$PGDATA_DIR/postmaster.pid"
  fi
  # Stale socket lock files from an unclean stop would make the new postmaster refuse to start.
  rm -f -- "$PG_SOCK_DIR"/.s.PGSQL.*
  if [[ -z $PG_PORT ]]; then
    PG_PORT=$(free_port "$PG_PORT_START")
  elif port_busy "$PG_PORT"; then
    local old=$PG_PORT
    PG_PORT=$(free_port "$PG_PORT_START")
    log "postgres: remembered port $old is taken by another program; using $PG_PORT"
  fi
  printf '%s\n' "$PG_PORT" >"$PG_PORT_FILE"
  pg_write_conf
  log "postgres: starting on 127.0.0.1:$PG_PORT (log $PG_LOG)"
  # 9>&-: the daemon must not inherit (and hold forever) the lock taken by take_lock.
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 -s 9>&-; then
    tail -n 20 "$PG_LOG" >&2 || true
    die "postgres failed to start (log: $PG_LOG)"
  fi
}

pg_stop() {
  local pid
  if pid=$(pg_pid); then
    log "postgres: stopping (pid $pid)"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 60 -s
  else
    log "postgres: not running"
  fi
}

pg_sql() {
  PGOPTIONS='-c client_min_messages=warning' \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

pg_load_pagila() {
  local exists
  exists=$(pg_sql -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")
  if [[ $exists == 1 ]]; then return 0; fi
  local shared tmpdb="${DB_NAME}_loading"
  shared=$(shared_dir)
  log "postgres: loading pagila from $shared/data/pagila"
  pg_sql -d postgres -c "DROP DATABASE IF EXISTS $tmpdb" -c "CREATE DATABASE $tmpdb"
  pg_sql -d "$tmpdb" -f "$shared/data/pagila/pagila-schema.sql" >/dev/null
  pg_sql -d "$tmpdb" -f "$shared/data/pagila/pagila-data.sql" >/dev/null
  # Only a complete load ever appears under the final name.
  pg_sql -d postgres -c "ALTER DATABASE $tmpdb RENAME TO $DB_NAME"
}

# ----------------------------------------------------------------------------------------- redis

redis_paths() {
  REDIS_PORT_FILE="$REDIS_DIR/port"
  REDIS_PID_FILE="$REDIS_DIR/redis.pid"
  REDIS_LOG="$REDIS_DIR/redis.log"
  REDIS_PORT=$(read_port_file "$REDIS_PORT_FILE")
}

redis_pid() {
  local pid=""
  [[ -r $REDIS_PID_FILE ]] || return 1
  read -r pid <"$REDIS_PID_FILE" || return 1
  pid_is "$pid" redis-server || return 1
  printf '%s\n' "$pid"
}

redis_ping() {
  [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
}

redis_start() {
  local pid i
  if pid=$(redis_pid); then
    redis_ping || die "redis (pid $pid) is running but does not answer on 127.0.0.1:$REDIS_PORT; see $REDIS_LOG"
    return 0
  fi
  mkdir -p "$REDIS_DIR"
  rm -f -- "$REDIS_PID_FILE"
  if [[ -z $REDIS_PORT ]]; then
    REDIS_PORT=$(free_port "$REDIS_PORT_START")
  elif port_busy "$REDIS_PORT"; then
    local old=$REDIS_PORT
    REDIS_PORT=$(free_port "$REDIS_PORT_START")
    log "redis: remembered port $old is taken by another program; using $REDIS_PORT"
  fi
  printf '%s\n' "$REDIS_PORT" >"$REDIS_PORT_FILE"
  log "redis: starting on 127.0.0.1:$REDIS_PORT (log $REDIS_LOG)"
  (cd "$REDIS_DIR" && redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
    --dir "$REDIS_DIR" --appendonly yes --appendfsync everysec \
    --pidfile "$REDIS_PID_FILE" --logfile "$REDIS_LOG") 9>&- ||
    die "redis-server failed to start (log: $REDIS_LOG)"
  for ((i = 0; i < 100; i++)); do
    if redis_ping; then return 0; fi
    sleep 0.1
  done
  tail -n 20 "$REDIS_LOG" >&2 || true
  die "redis did not answer on 127.0.0.1:$REDIS_PORT within 10 s (log: $REDIS_LOG)"
}

redis_stop() {
  local pid i
  if ! pid=$(redis_pid); then
    log "redis: not running"
    return 0
  fi
  log "redis: stopping (pid $pid)"
  if [[ -n $REDIS_PORT ]]; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  fi
  for ((i = 0; i < 100; i++)); do
    pid_is "$pid" redis-server || return 0
    if ((i == 50)); then kill -TERM "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
  die "redis (pid $pid) did not stop"
}

# -------------------------------------------------------------------------------------- commands

write_env() {
  if write_if_changed "$ENV_FILE" <<EOF; then log "wrote $ENV_FILE"; fi
# Written by scripts/dev-stack.sh up. Use: source .dev/env
export DERIVER__POSTGRES__URL=postgres://postgres@127.0.0.1:$PG_PORT/$DB_NAME
export DERIVER__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/
export PGHOST=127.0.0.1
export PGPORT=$PG_PORT
export PGUSER=postgres
export PGDATABASE=$DB_NAME
export REDIS_PORT=$REDIS_PORT
EOF
}

cmd_up() {
  shared_dir >/dev/null # fail early and clearly when the sample data is missing
  cmd_install
  find_pg_bin
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found (run: scripts/dev-stack.sh install)"
  take_lock
  pg_prepare_dirs
  pg_init
  pg_start
  pg_load_pagila
  redis_paths
  redis_start
  write_env
  log "ready: postgres 127.0.0.1:$PG_PORT (database $DB_NAME), redis 127.0.0.1:$REDIS_PORT; run: source .dev/env"
}

cmd_down() {
  [[ -d $DEV ]] || {
    log "nothing to stop (no .dev)"
    return 0
  }
  take_lock
  pg_paths
  if [[ -d $PGDATA_DIR ]]; then
    find_pg_bin
    pg_stop
  else
    log "postgres: no cluster"
  fi
  redis_paths
  redis_stop
}

cmd_status() {
  local pid ok=0
  pg_paths
  redis_paths
  if pid=$(pg_pid); then
    printf 'postgres: running (pid %s) on 127.0.0.1:%s, data %s, sockets %s\n' "$pid" "$PG_PORT" "$PGDATA_DIR" "$PG_SOCK_DIR"
  elif [[ -f $PGDATA_DIR/PG_VERSION ]]; then
    printf 'postgres: stopped (port %s, data %s)\n' "${PG_PORT:-?}" "$PGDATA_DIR"
    ok=1
  else
    printf 'postgres: not created\n'
    ok=1
  fi
  if pid=$(redis_pid); then
    printf 'redis:    running (pid %s) on 127.0.0.1:%s, dir %s\n' "$pid" "$REDIS_PORT" "$REDIS_DIR"
  elif [[ -n $REDIS_PORT ]]; then
    printf 'redis:    stopped (port %s, dir %s)\n' "$REDIS_PORT" "$REDIS_DIR"
    ok=1
  else
    printf 'redis:    not created\n'
    ok=1
  fi
  if [[ -f $ENV_FILE ]]; then
    printf 'env file: %s (source .dev/env)\n' "$ENV_FILE"
  else
    printf 'env file: none yet (run: scripts/dev-stack.sh up)\n'
  fi
  return "$ok"
}

cmd_reset() {
  cmd_down
  log "deleting $DEV"
  rm -rf -- "$DEV" "$PG_FALLBACK" "$SOCK_FALLBACK"
}

cmd_psql() {
  find_pg_bin
  pg_paths
  pg_pid >/dev/null || die "postgres is not running; run: scripts/dev-stack.sh up"
  PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=$DB_NAME exec "$PG_BIN/psql" "$@"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    psql) cmd_psql "$@" ;;
    help | -h | --help) usage ;;
    "")
      usage >&2
      exit 2
      ;;
    *)
      printf 'dev-stack: unknown command: %s\n\n' "$cmd" >&2
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
