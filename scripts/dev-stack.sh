#!/usr/bin/env bash
# dev-stack.sh: a project-local PostgreSQL (≥ 14, logical replication on) and Redis for developing
# deriver.
#
# Everything lives under .dev/ in the repository root; the system-wide PostgreSQL cluster and Redis
# service that the distribution's packages may start are never used or touched. Run with --help for
# usage.
set -euo pipefail

# mapfile, and "${empty_array[@]}" under set -u, need bash ≥ 4.4 (macOS ships 3.2 as /bin/bash).
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  printf 'dev-stack: error: needs bash >= 4.4, this is %s (macOS: brew install bash)\n' "$BASH_VERSION" >&2
  exit 1
fi

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
if command -v sha256sum >/dev/null 2>&1; then
  REPO_HASH=$(printf '%s' "$ROOT" | sha256sum | cut -c1-10)
else # macOS
  REPO_HASH=$(printf '%s' "$ROOT" | shasum -a 256 | cut -c1-10)
fi
SOCK_FALLBACK="/tmp/deriver-pg-$REPO_HASH"
PG_FALLBACK="/var/tmp/deriver-dev-$REPO_HASH"

# Oldest PostgreSQL major version deriver supports.
PG_MIN_MAJOR=14
# Where find_pg_bin looks for the server binaries after $PG_BIN and `pg_config --bindir`, in order;
# each glob is tried highest version first: Debian/Ubuntu, RHEL/Fedora from PGDG, Homebrew (Apple
# silicon, then Intel), and last /usr/bin, where Fedora's and Arch's own packages put them.
PG_SEARCH_DEFAULT='/usr/lib/postgresql/*/bin:/usr/pgsql-*/bin:/opt/homebrew/opt/postgresql@*/bin:/usr/local/opt/postgresql@*/bin:/opt/homebrew/bin:/usr/local/bin:/usr/bin'
# The caller's PG_BIN, kept apart: PG_BIN itself is the result of find_pg_bin.
PG_BIN_ENV=${PG_BIN:-}
PG_BIN=
PG_MAJOR=

# System packages per package manager. The PostgreSQL server ones (*_PG, apt_pg_packages) are
# installed only when find_pg_bin finds no server; the browser ones (*_BROWSER) only for
# `install --with-browser` (tests/browser.rs), never for `up`: the demo needs no 130 MB Chromium.
# The same flag (what CI runs) brings Debian's prometheus package for its promtool: tests/ops.rs
# checks the daemon's /metrics and deploy/prometheus/alerts.yml with it.
APT_BASE=(redis-server libpq-dev libssl-dev openssl pkg-config build-essential curl)
APT_BROWSER=(chromium chromium-driver prometheus)
# Also for `install --with-browser` (what scripts/test.sh runs): the tools tests/disk.rs mounts and
# breaks small file systems with (mount, findmnt, mkfs.ext4, e2fsck, chattr), and the locales
# that tests/hostile_session.rs sets as role defaults (see ensure_test_locales).
APT_TEST=(mount util-linux e2fsprogs locales)
DNF_BASE=(redis libpq-devel openssl-devel openssl pkg-config gcc)
DNF_PG=(postgresql-server postgresql-contrib)
DNF_BROWSER=(chromium chromedriver)
DNF_TEST=(util-linux e2fsprogs glibc-langpack-de)
# macOS brings curl, and a C compiler with Xcode's command line tools (not a Homebrew formula).
BREW_BASE=(redis libpq openssl@3 pkg-config)
BREW_PG=(postgresql@16)

usage() {
  local search entries=()
  IFS=: read -ra entries <<<"$PG_SEARCH_DEFAULT"
  search=$(printf '                        %s\n' "pg_config --bindir" "${entries[@]}")
  cat <<EOF
Usage: scripts/dev-stack.sh COMMAND [ARGS...]

A project-local PostgreSQL (≥ $PG_MIN_MAJOR) and Redis for deriver, kept under .dev/ in the repository root.

Commands:
  install [--with-browser]
            install whatever is missing of the system packages deriver needs: a PostgreSQL
            server (only when pg-bin finds none), Redis, the libpq and OpenSSL headers, the
            openssl tool, pkg-config, a C compiler and curl; --with-browser adds Chromium and
            chromedriver (for tests/browser.rs; scripts/test.sh asks for them), with apt the
            prometheus package for promtool (tests/ops.rs), what the other tests need: mount,
            e2fsprogs, and the de_DE.UTF-8 locale, and the real Meilisearch clients that
            tests/meili_clients.rs drives, pinned in tests/meili/ (npm ci of its
            package-lock.json, and a Python venv with requirements.txt) into
            .dev/meili-clients, and schemathesis (tests/openapi/requirements.txt, a venv in
            .dev/schemathesis) for tests/openapi.rs (Node.js with npm, and python3 with
            venv, are installed when missing). Uses apt-get
            (Debian/Ubuntu), dnf (Fedora/RHEL) or brew (macOS), through sudo when not root; as
            root, also creates the 'postgres' OS user if no package did.
  pg-bin    print the directory of the PostgreSQL ≥ $PG_MIN_MAJOR server binaries (see PG_BIN below)
  up        install (without the browser), then create (once) and start the PostgreSQL cluster
            (.dev/pg) and Redis (.dev/redis) on free loopback ports, load the pagila sample
            database (once) and write .dev/env. Idempotent: a second run is a quick no-op.
  down      stop both (idempotent)
  status    show whether each is running, their ports and the env file; exit 0 only if both run
  reset     down, then delete .dev entirely (the cluster, Redis data, remembered ports)
  psql      run psql on the dev database; extra arguments are passed to psql
  help      show this help

After 'up':  source .dev/env   # DERIVER__POSTGRES__URL, DERIVER__REDIS__URL, PGHOST, PGPORT,
                               # PGUSER, PGDATABASE, REDIS_PORT

Environment:
  DERIVER_SHARED_DIR  sample data folder (default: <repo>/../shared)
  PG_BIN              PostgreSQL server binaries: a directory with postgres, pg_ctl and initdb
                      of version ≥ $PG_MIN_MAJOR. Default: the first such directory of
$search
                      (each glob highest version first). An existing .dev cluster needs the
                      major version that created it.
  DERIVER_PG_SEARCH_PATHS
                      colon-separated directories (globs allowed) searched instead of that
                      default list, pg_config included; for trying the discovery on other
                      layouts, e.g. DERIVER_PG_SEARCH_PATHS='/tmp/x/usr/pgsql-*/bin' dev-stack.sh pg-bin
EOF
}

log() { printf 'dev-stack: %s\n' "$*" >&2; }
die() {
  printf 'dev-stack: error: %s\n' "$*" >&2
  exit 1
}
usage_error() {
  printf 'dev-stack: %s\n\n' "$*" >&2
  usage >&2
  exit 2
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to the 'postgres' system user
# (created by Debian's and Fedora's server packages, else by ensure_pg_user); otherwise to the
# current user.
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

# --------------------------------------------------------------------------- postgres discovery

# Prints the major version of the PostgreSQL server in directory $1; fails (silently) unless it
# has executable postgres, pg_ctl and initdb and `postgres --version` can be parsed.
pg_bin_major() {
  local dir=$1 tool out
  for tool in postgres pg_ctl initdb; do
    [[ -f $dir/$tool && -x $dir/$tool ]] || return 1
  done
  # --version is answered before the server's refusal to run as root.
  out=$("$dir/postgres" --version 2>/dev/null) || return 1
  [[ $out =~ \(PostgreSQL\)\ ([0-9]+) ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# Prints the candidate directories for find_pg_bin, in order, each once.
pg_bin_candidates() {
  local paths=${DERIVER_PG_SEARCH_PATHS:-} entry entries=()
  if [[ -z $paths ]]; then
    if command -v pg_config >/dev/null 2>&1; then pg_config --bindir 2>/dev/null || true; fi
    paths=$PG_SEARCH_DEFAULT
  fi
  IFS=: read -ra entries <<<"$paths"
  for entry in "${entries[@]}"; do
    if [[ $entry == *[*?[]* ]]; then
      compgen -G "$entry" | sort -rV || true
    elif [[ -n $entry ]]; then
      printf '%s\n' "$entry"
    fi
  done | awk '!seen[$0]++'
}

pg_search_desc() {
  if [[ -n ${DERIVER_PG_SEARCH_PATHS:-} ]]; then
    printf 'DERIVER_PG_SEARCH_PATHS=%s' "$DERIVER_PG_SEARCH_PATHS"
  else
    printf 'pg_config --bindir, %s' "${PG_SEARCH_DEFAULT//:/, }"
  fi
}

# find_pg_bin [MAJOR]: the one place that decides which PostgreSQL server these scripts use.
# Sets PG_BIN (and PG_MAJOR) to the caller's $PG_BIN when set (it must hold a server ≥ 14, else
# this dies), otherwise to the first candidate of pg_bin_candidates whose postgres is ≥ 14. With
# MAJOR (an existing cluster's version) only that major version qualifies: a data directory cannot
# be run by another one. Returns 1, printing nothing, when no candidate qualifies, so that
# `install` can install one.
find_pg_bin() {
  local want=${1:-} dir major tool lacking=() lacking_list
  if [[ -n $PG_BIN && (-z $want || $want == "$PG_MAJOR") ]]; then return 0; fi
  if [[ -n $PG_BIN_ENV ]]; then
    [[ $PG_BIN_ENV == /* ]] || PG_BIN_ENV=$PWD/$PG_BIN_ENV # as_pg runs commands from /
    if [[ ! -d $PG_BIN_ENV ]]; then
      die "PG_BIN=$PG_BIN_ENV: no such directory (set PG_BIN to the directory holding postgres, pg_ctl and initdb, or unset it to search $(pg_search_desc))"
    fi
    if ! major=$(pg_bin_major "$PG_BIN_ENV"); then
      for tool in postgres pg_ctl initdb; do
        [[ -f $PG_BIN_ENV/$tool && -x $PG_BIN_ENV/$tool ]] || lacking+=("$tool")
      done
      if ((${#lacking[@]})); then
        lacking_list=$(printf ', %s' "${lacking[@]}")
        die "PG_BIN=$PG_BIN_ENV is not a PostgreSQL server directory: it has no ${lacking_list#, } (set PG_BIN to the directory holding postgres, pg_ctl and initdb, or unset it to search $(pg_search_desc))"
      fi
      die "PG_BIN=$PG_BIN_ENV: '$PG_BIN_ENV/postgres --version' does not print a PostgreSQL version"
    fi
    if ((major < PG_MIN_MAJOR)); then
      die "PG_BIN=$PG_BIN_ENV is PostgreSQL $major; deriver needs PostgreSQL ≥ $PG_MIN_MAJOR"
    fi
    if [[ -n $want && $major != "$want" ]]; then
      die "PG_BIN=$PG_BIN_ENV is PostgreSQL $major, but the cluster in $PGDATA_DIR was created by PostgreSQL $want (point PG_BIN at a $want server, or recreate the cluster: scripts/dev-stack.sh reset)"
    fi
    PG_BIN=$PG_BIN_ENV
    PG_MAJOR=$major
    return 0
  fi
  while IFS= read -r dir; do
    major=$(pg_bin_major "$dir") || continue
    if ((major < PG_MIN_MAJOR)); then
      log "postgres: skipping $dir: PostgreSQL $major is older than $PG_MIN_MAJOR"
      continue
    fi
    if [[ -n $want && $major != "$want" ]]; then continue; fi
    PG_BIN=$dir
    PG_MAJOR=$major
    return 0
  done < <(pg_bin_candidates)
  return 1
}

# find_pg_bin, or die saying what was searched and what to do.
require_pg_bin() {
  local want=${1:-}
  if find_pg_bin "$want"; then return 0; fi
  if [[ -n $want ]]; then
    die "the cluster in $PGDATA_DIR was created by PostgreSQL $want, and no PostgreSQL $want server was found (searched $(pg_search_desc)); install it, set PG_BIN, or recreate the cluster: scripts/dev-stack.sh reset (deletes .dev)"
  fi
  die "no PostgreSQL ≥ $PG_MIN_MAJOR server found (searched $(pg_search_desc)); run scripts/dev-stack.sh install, or set PG_BIN to the directory holding postgres, pg_ctl and initdb"
}

cmd_pg_bin() {
  require_pg_bin
  printf '%s\n' "$PG_BIN"
}

# ---------------------------------------------------------------------------------------- install

detect_pkg_mgr() {
  local b
  PKG_MGR=
  BREW=
  if [[ $(uname -s) == Darwin ]]; then
    # A non-login shell may not have Homebrew on PATH yet.
    BREW=$(command -v brew 2>/dev/null || true)
    for b in /opt/homebrew/bin/brew /usr/local/bin/brew; do
      if [[ -z $BREW && -x $b ]]; then BREW=$b; fi
    done
    if [[ -n $BREW ]]; then PKG_MGR=brew; fi
  elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    PKG_MGR=apt
  elif command -v dnf >/dev/null 2>&1; then
    PKG_MGR=dnf
  fi
}

pkg_missing() {
  # Prints the packages of "$@" that are not installed, as $PKG_MGR sees it.
  local pkg status
  for pkg in "$@"; do
    case $PKG_MGR in
      apt)
        if [[ $pkg == postgresql-contrib-15 ]]; then
          # On Debian 12 this is a virtual package provided by postgresql-15 itself.
          if [[ -e /usr/share/postgresql/15/extension/pg_trgm.control ]]; then continue; fi
        fi
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || printf '%s\n' "$pkg"
        ;;
      # --whatprovides: Fedora's pkg-config is the package pkgconf-pkg-config, which provides it.
      dnf) rpm -q --whatprovides "$pkg" >/dev/null 2>&1 || printf '%s\n' "$pkg" ;;
      brew) "$BREW" list --versions "$pkg" >/dev/null 2>&1 || printf '%s\n' "$pkg" ;;
    esac
  done
}

# Dies, naming the packages "$@" to install by hand, when there is neither root nor sudo.
need_root_for() {
  if ((IS_ROOT)) || command -v sudo >/dev/null 2>&1; then return 0; fi
  die "installing packages needs root, and sudo is not available; install these by hand: $*"
}

as_root() {
  if ((IS_ROOT)); then
    "$@"
  else
    sudo "$@"
  fi
}

apt_lists_empty() {
  ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

# Prints the version apt would install for package $1; nothing for a virtual or unknown package.
apt_candidate() {
  local line
  line=$(apt-cache policy "$1" 2>/dev/null | grep -m1 'Candidate:' || true)
  line=${line#*Candidate: }
  if [[ -n $line && $line != *'(none)'* ]]; then printf '%s\n' "$line"; fi
}

# The PostgreSQL server packages for apt: Debian 12's postgresql-15 (what the project has always
# used, and CI runs) when the archive has it, else the distribution's default version.
apt_pg_packages() {
  if [[ -n $(apt_candidate postgresql-15) ]]; then
    printf '%s\n' postgresql-15 postgresql-contrib-15
  else
    printf '%s\n' postgresql
    # A real (meta)package on Debian and Ubuntu today; skipped should it become virtual.
    if [[ -n $(apt_candidate postgresql-contrib) ]]; then printf '%s\n' postgresql-contrib; fi
  fi
}

install_apt() {
  local need_pg=$1 with_browser=$2 wanted=() missing=() pg=()
  if ((need_pg)); then
    # Which server package to pick depends on what the archive offers.
    if apt_lists_empty; then
      need_root_for postgresql "${APT_BASE[@]}"
      log "apt package lists are empty: running apt-get update"
      as_root apt-get update -q >&2
    fi
    mapfile -t pg < <(apt_pg_packages)
  fi
  wanted=("${pg[@]}" "${APT_BASE[@]}")
  if ((with_browser)); then
    wanted+=("${APT_BROWSER[@]}" "${APT_TEST[@]}")
    # The Meilisearch clients' runtimes (install_meili_clients); a Node.js from elsewhere
    # (NodeSource ships npm inside its nodejs) is used as it is.
    command -v npm >/dev/null 2>&1 || wanted+=(nodejs npm)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || wanted+=(python3-venv)
  fi
  mapfile -t missing < <(pkg_missing "${wanted[@]}")
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  need_root_for "${missing[@]}"
  log "installing missing packages: ${missing[*]}"
  local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}")
  if apt_lists_empty; then
    log "apt package lists are empty: running apt-get update"
    as_root apt-get update -q >&2
  fi
  if ! as_root "${install[@]}" >&2; then
    log "apt-get install failed: running apt-get update and retrying"
    as_root apt-get update -q >&2
    as_root "${install[@]}" >&2 || die "apt-get install failed for: ${missing[*]}"
  fi
}

install_dnf() {
  local need_pg=$1 with_browser=$2 wanted=() missing=() owner
  if ((need_pg)); then
    wanted+=("${DNF_PG[@]}")
  else
    # Fedora's server comes without the contrib extensions (the tests use hstore and citext): add
    # the contrib package matching the server found (postgresql-server, postgresql16-server...).
    owner=$(rpm -qf --qf '%{NAME}\n' "$PG_BIN/postgres" 2>/dev/null | head -n 1 || true)
    if [[ $owner == *-server ]]; then wanted+=("${owner%-server}-contrib"); fi
  fi
  wanted+=("${DNF_BASE[@]}")
  # Fedora ships curl-minimal, which conflicts with the full curl package: any curl will do.
  command -v curl >/dev/null 2>&1 || wanted+=(curl)
  if ((with_browser)); then wanted+=("${DNF_BROWSER[@]}" "${DNF_TEST[@]}"); fi
  mapfile -t missing < <(pkg_missing "${wanted[@]}")
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  need_root_for "${missing[@]}"
  log "installing missing packages: ${missing[*]}"
  as_root dnf install -y "${missing[@]}" >&2 || die "dnf install failed for: ${missing[*]}"
}

install_brew() {
  local need_pg=$1 with_browser=$2 wanted=() missing=()
  command -v cc >/dev/null 2>&1 || die "no C compiler: install Xcode's command line tools (xcode-select --install)"
  if ((need_pg)); then wanted+=("${BREW_PG[@]}"); fi
  wanted+=("${BREW_BASE[@]}")
  if ((with_browser)); then
    log "--with-browser: nothing installed on macOS (tests/browser.rs expects Debian's /usr/bin/chromium and /usr/bin/chromedriver)"
  fi
  mapfile -t missing < <(pkg_missing "${wanted[@]}")
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if ((IS_ROOT)); then
    die "Homebrew does not run as root: run this as your own user, or install by hand: brew install ${missing[*]}"
  fi
  log "installing missing packages: ${missing[*]}"
  "$BREW" install "${missing[@]}" >&2 || die "brew install failed for: ${missing[*]}"
}

# Without a known package manager, check for the programs and libraries themselves, and name
# whatever is missing.
install_unknown() {
  local need_pg=$1 with_browser=$2 missing=() lib
  if ((need_pg)); then missing+=("a PostgreSQL ≥ $PG_MIN_MAJOR server with its contrib extensions (then set PG_BIN if it is not found)"); fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    missing+=("Redis (redis-server and redis-cli)")
  fi
  command -v openssl >/dev/null 2>&1 || missing+=("the openssl command-line tool")
  command -v cc >/dev/null 2>&1 || missing+=("a C compiler (cc)")
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if command -v pkg-config >/dev/null 2>&1; then
    for lib in libpq openssl; do
      pkg-config --exists "$lib" || missing+=("the $lib development headers (pkg-config $lib)")
    done
  else
    missing+=("pkg-config" "the libpq and OpenSSL development headers")
  fi
  if ((with_browser)) && [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    missing+=("Chromium and chromedriver as /usr/bin/chromium and /usr/bin/chromedriver")
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  local list
  list=$(printf '; %s' "${missing[@]}")
  die "no supported package manager found (apt-get, dnf, or Homebrew on macOS); install these by hand: ${list#; }"
}

# The real Meilisearch clients tests/meili_clients.rs drives, pinned in tests/meili/: the npm
# packages exactly as package-lock.json has them, and the Python client in a venv. Reinstalled
# only when those files change (a stamp of their hash).
MEILI_CLIENTS="$DEV/meili-clients"
install_meili_clients() {
  local src="$ROOT/tests/meili" want have=""
  command -v npm >/dev/null 2>&1 || die "npm not found: the Meilisearch client tests need Node.js >= 20.19 with npm"
  command -v python3 >/dev/null 2>&1 || die "python3 not found: the Meilisearch client tests need it (with venv)"
  if command -v sha256sum >/dev/null 2>&1; then
    want=$(cat "$src/package.json" "$src/package-lock.json" "$src/requirements.txt" | sha256sum | cut -c1-16)
  else # macOS
    want=$(cat "$src/package.json" "$src/package-lock.json" "$src/requirements.txt" | shasum -a 256 | cut -c1-16)
  fi
  if [[ -r $MEILI_CLIENTS/.stamp ]]; then read -r have <"$MEILI_CLIENTS/.stamp" || true; fi
  if [[ $have == "$want" && -d $MEILI_CLIENTS/node_modules && -x $MEILI_CLIENTS/py/bin/python ]]; then return 0; fi
  mkdir -p "$MEILI_CLIENTS"
  cp "$src/package.json" "$src/package-lock.json" "$MEILI_CLIENTS/"
  log "meilisearch clients: npm ci in $MEILI_CLIENTS (tests/meili/package-lock.json)"
  (cd "$MEILI_CLIENTS" && npm ci --no-audit --no-fund >&2) || die "npm ci failed in $MEILI_CLIENTS"
  log "meilisearch clients: python venv $MEILI_CLIENTS/py ($(tr '\n' ' ' <"$src/requirements.txt"))"
  rm -rf -- "$MEILI_CLIENTS/py"
  python3 -m venv "$MEILI_CLIENTS/py" >&2 || die "python3 -m venv failed (install python3-venv)"
  "$MEILI_CLIENTS/py/bin/python" -m pip install -q --disable-pip-version-check -r "$src/requirements.txt" >&2 ||
    die "pip install -r tests/meili/requirements.txt failed"
  printf '%s\n' "$want" >"$MEILI_CLIENTS/.stamp"
}

# schemathesis, the OpenAPI fuzzer tests/openapi.rs runs against the daemon's /openapi.json,
# pinned in tests/openapi/requirements.txt, in its own venv (.dev/schemathesis). Reinstalled only
# when that file changes (a stamp of its hash).
SCHEMATHESIS="$DEV/schemathesis"
install_schemathesis() {
  local req="$ROOT/tests/openapi/requirements.txt" want have=""
  command -v python3 >/dev/null 2>&1 || die "python3 not found: tests/openapi.rs needs it (with venv) for schemathesis"
  if command -v sha256sum >/dev/null 2>&1; then
    want=$(sha256sum <"$req" | cut -c1-16)
  else # macOS
    want=$(shasum -a 256 <"$req" | cut -c1-16)
  fi
  if [[ -r $SCHEMATHESIS/.stamp ]]; then read -r have <"$SCHEMATHESIS/.stamp" || true; fi
  if [[ $have == "$want" && -x $SCHEMATHESIS/bin/schemathesis ]]; then return 0; fi
  log "schemathesis: python venv $SCHEMATHESIS ($(tr '\n' ' ' <"$req"))"
  rm -rf -- "$SCHEMATHESIS"
  python3 -m venv "$SCHEMATHESIS" >&2 || die "python3 -m venv failed (install python3-venv)"
  "$SCHEMATHESIS/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2 ||
    die "pip install -r tests/openapi/requirements.txt failed"
  printf '%s\n' "$want" >"$SCHEMATHESIS/.stamp"
}

# As root the cluster runs as the 'postgres' OS user (see as_pg). The distributions' server
# packages create it; a server from elsewhere (PG_BIN, built from source...) may come without.
ensure_pg_user() {
  ((IS_ROOT)) || return 0
  if id -u postgres >/dev/null 2>&1; then return 0; fi
  if [[ $(uname -s) != Linux ]] || ! command -v useradd >/dev/null 2>&1; then
    die "as root, the PostgreSQL cluster must belong to a 'postgres' OS user, which does not exist; create it, or run scripts/dev-stack.sh as a normal user"
  fi
  log "creating the system user 'postgres' to own the cluster (PostgreSQL refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell "$(command -v nologin || echo /bin/false)" postgres ||
    die "useradd postgres failed; create a 'postgres' user by hand, or run as a normal user"
}

# The locale tests/hostile_session.rs gives a role as its default lc_monetary/lc_time (deriver
# must pin them): Debian's `locales` package has the definitions but generates none by itself;
# Fedora's glibc-langpack-de brings it compiled.
TEST_LOCALE=de_DE.UTF-8
ensure_test_locales() {
  [[ $(uname -s) == Linux ]] || return 0
  if locale -a 2>/dev/null | grep -qix 'de_DE.utf-\?8'; then return 0; fi
  command -v localedef >/dev/null 2>&1 || die "the $TEST_LOCALE locale is missing and localedef is not installed"
  need_root_for "the $TEST_LOCALE locale"
  log "generating the $TEST_LOCALE locale (for tests/hostile_session.rs)"
  as_root localedef -i de_DE -f UTF-8 "$TEST_LOCALE" || die "localedef failed for $TEST_LOCALE"
}

cmd_install() {
  local with_browser=0 need_pg=0
  while (($#)); do
    case $1 in
      --with-browser) with_browser=1 ;;
      *) usage_error "install: unknown argument: $1" ;;
    esac
    shift
  done
  # A server that is already there (any of the places find_pg_bin searches) is used as it is.
  find_pg_bin || need_pg=1
  detect_pkg_mgr
  case $PKG_MGR in
    apt) install_apt "$need_pg" "$with_browser" ;;
    dnf) install_dnf "$need_pg" "$with_browser" ;;
    brew) install_brew "$need_pg" "$with_browser" ;;
    *) install_unknown "$need_pg" "$with_browser" ;;
  esac
  if ((with_browser)); then
    ensure_test_locales
    install_meili_clients
    install_schemathesis
  fi
  if ((need_pg)); then
    if ! find_pg_bin; then
      case $PKG_MGR in
        apt) die "no PostgreSQL ≥ $PG_MIN_MAJOR server found even with the distribution's installed (searched $(pg_search_desc)): its version is too old; add the PostgreSQL apt repository (https://wiki.postgresql.org/wiki/Apt), install postgresql-16, and run this again" ;;
        dnf) die "no PostgreSQL ≥ $PG_MIN_MAJOR server found even with the distribution's installed (searched $(pg_search_desc)): its version is too old; on RHEL and its clones run 'dnf module enable postgresql:16' (or add the PGDG repository, https://www.postgresql.org/download/linux/redhat/), remove the old server, and run this again" ;;
        *) die "no PostgreSQL ≥ $PG_MIN_MAJOR server found after installing one (searched $(pg_search_desc)); set PG_BIN to its bin directory" ;;
      esac
    fi
    log "postgres: using $PG_BIN (PostgreSQL $PG_MAJOR)"
  fi
  ensure_pg_user
}

# ------------------------------------------------------------------------------------- utilities

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

# Prints the major version that created the cluster (its PG_VERSION); nothing when there is none.
pg_cluster_major() {
  local v=""
  if [[ -r $PGDATA_DIR/PG_VERSION ]]; then read -r v <"$PGDATA_DIR/PG_VERSION" || true; fi
  printf '%s\n' "$v"
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
  pg_paths
  require_pg_bin "$(pg_cluster_major)"
  [[ -x $PG_BIN/psql && -x $PG_BIN/pg_isready ]] ||
    die "$PG_BIN has no psql or pg_isready: install the PostgreSQL client programs of the same version"
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
    require_pg_bin "$(pg_cluster_major)"
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
  pg_paths
  require_pg_bin "$(pg_cluster_major)"
  pg_pid >/dev/null || die "postgres is not running; run: scripts/dev-stack.sh up"
  PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=$DB_NAME exec "$PG_BIN/psql" "$@"
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    install) cmd_install "$@" ;;
    pg-bin) cmd_pg_bin ;;
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
    *) usage_error "unknown command: $cmd" ;;
  esac
}

main "$@"
