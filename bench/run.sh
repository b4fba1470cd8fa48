#!/usr/bin/env bash
# bench/run.sh: deriver's benchmark (issue 9). One command on a fresh Debian machine: starts its own
# PostgreSQL 15 and Redis under bench/.cache/, obtains the 810k-document corpus once, builds deriver
# (release), then measures raw limits and deriver's figures in the same run and writes
# bench/results/<timestamp>/results.{md,tsv}. See bench/README.md for what each figure means.
set -euo pipefail

BENCH=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$BENCH/.." && pwd -P)
CACHE=$BENCH/.cache
SHARED=${DERIVER_SHARED_DIR:-$ROOT/../shared}

# scaling comes last: it runs deriver with 2 and 4 pipelines (it sets the single one back at its end).
ALL_PHASES=(raw_redis raw_tantivy raw_decode snapshot stream freshness reindex audit search catchup bigtxn scaling)

usage() {
  cat <<EOF
Usage: bench/run.sh [--quick] [--reps N] [--only P,P] [--skip P,P] [--worktree] [--patch FILE]...
                    [--no-perf] [--keep-servers]

Measures deriver against the raw limits of its parts, all in the same run, and writes
bench/results/<timestamp>/results.md and results.tsv (figures as median, min and max over the
repetitions, ratios to the raw limits, and one met / not met line per target).

  --quick         50k-document subset of the corpus, 1 repetition, short windows (a few minutes)
  --reps N        repetitions of each repeated figure (default 3; 1 with --quick)
  --only LIST     run only these phases (comma separated); --skip LIST: all but these
                  phases: ${ALL_PHASES[*]}
  --worktree      build the working tree as it is (default: a clean snapshot of git HEAD, so a
                  half-edited src/ never gets measured, plus this checkout's examples/)
  --patch FILE    apply this patch (git apply) to the build copy before building: measures a
                  candidate fix without touching src/ (bench/patches/); recorded in the results
  --no-perf       do not record perf profiles (default: a short profile of deriver during the
                  streaming, reindex and catch-up phases, saved under the results folder)
  --keep-servers  leave Postgres and Redis running at the end (they are stopped by default)
  -h, --help      this text

Needs: PostgreSQL 15 server binaries in /usr/lib/postgresql/15/bin (PG_BIN), psql, pgbench,
pg_recvlogical, redis-server, redis-benchmark, curl, jq, python3, cargo; root (apt-get for the
dictionary packages of the corpus, runuser for postgres). Shared data: ../shared
(DERIVER_SHARED_DIR).

Windows (seconds, override by environment): BENCH_DECODE_SECS, BENCH_STREAM_SECS,
BENCH_FRESH_SECS, BENCH_CATCHUP_SECS, BENCH_SCALING_SECS (the backlog of the scaling phase; default:
the catch-up window). BENCH_SCALING_REPS: repetitions per pipeline count in the scaling phase
(default 1, also without --quick). deriver's own settings can be tuned with its
DERIVER__<SECTION>__<KEY> variables (recorded in the results). BENCH_CATCHUP_BEFORE="VAR=value ..."
adds, to every catch-up repetition, a drain with those settings first (before/after in one run).
EOF
}

QUICK=0 REPS="" ONLY="" SKIP="" WORKTREE=0 PERF=1 KEEP=0 PATCHES=()
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --skip) SKIP=$2; shift ;;
    --worktree) WORKTREE=1 ;;
    --patch) PATCHES+=("$(cd -- "$(dirname -- "$2")" && pwd -P)/$(basename -- "$2")"); shift ;;
    --no-perf) PERF=0 ;;
    --keep-servers) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((QUICK)); then
  REPS=${REPS:-1}
  DECODE_SECS=${BENCH_DECODE_SECS:-10} STREAM_SECS=${BENCH_STREAM_SECS:-15} FRESH_SECS=${BENCH_FRESH_SECS:-15}
  CATCHUP_SECS=${BENCH_CATCHUP_SECS:-10} UPSERT_DOCS=20000 REDIS_N=200000 CORPUS=quick
else
  REPS=${REPS:-3}
  DECODE_SECS=${BENCH_DECODE_SECS:-30} STREAM_SECS=${BENCH_STREAM_SECS:-60} FRESH_SECS=${BENCH_FRESH_SECS:-60}
  CATCHUP_SECS=${BENCH_CATCHUP_SECS:-60} UPSERT_DOCS=200000 REDIS_N=1000000 CORPUS=full
fi
BIGTXN_ROWS=${BENCH_BIGTXN_ROWS:-1000000}
# The scaling phase drains the same backlog as catch-up, with 1, 2 and 4 pipelines; one repetition
# per pipeline count by default (the full run is long already).
SCALING_SECS=${BENCH_SCALING_SECS:-$CATCHUP_SECS}
SCALING_REPS=${BENCH_SCALING_REPS:-1}
DB=bench

RUN=$BENCH/results/$(date +%Y%m%d-%H%M%S)$( ((QUICK)) && echo -quick || true)
STATE=$RUN/state
mkdir -p "$RUN/logs" "$RUN/tmp" "$STATE" "$CACHE"
touch "$RUN/figures.tsv" "$RUN/notes.tsv"
exec 3>&2 # the console, for progress lines from inside phases

# shellcheck source=lib/common.sh
source "$BENCH/lib/common.sh"
log() {
  local line
  printf -v line '[%(%H:%M:%S)T] %s' -1 "$*"
  printf '%s\n' "$line" >>"$RUN/run.log"
  printf '%s\n' "$line" >&3 2>/dev/null || true
  [[ ${IN_PHASE:-0} == 1 ]] && printf '%s\n' "$line" >&2
  return 0
}
for f in "$BENCH"/phases/*.sh; do
  # shellcheck source=/dev/null
  source "$f"
done

# ------------------------------------------------------------------------------------- cleanup

cleanup() {
  local rc=$?
  set +e
  watch_stop
  deriver_stop
  if ((KEEP)); then
    log "leaving Postgres (port $(state_get pgport)) and Redis (port $(state_get redisport)) running (--keep-servers)"
  else
    redis_down
    pg_down
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------- prepare

check_tools() {
  local missing=() t
  for t in psql pgbench curl jq python3 cargo redis-server redis-benchmark redis-cli runuser awk git; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  for t in initdb pg_ctl pg_recvlogical; do
    [[ -x $PG_BIN/$t ]] || missing+=("$PG_BIN/$t")
  done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} (PostgreSQL 15, redis-server/redis-tools, jq, curl, a Rust toolchain)"
  ((EUID == 0)) || die "run as root (apt-get for the corpus packages, runuser for the postgres user)"
  [[ -f $SHARED/tools/obtain_corpora.sh && -f $SHARED/workloads/pgbench_doc_churn.sql ]] ||
    die "shared data not found at $SHARED (the ../shared folder beside the repository; DERIVER_SHARED_DIR)"
}

dirty_note() {
  if ((WORKTREE)) && ! git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock; then echo ' (+ uncommitted changes)'; fi
}

machine_facts() {
  local f=$RUN/machine.tsv
  {
    printf 'date\t%s\n' "$(date -Is)"
    printf 'mode\t%s\n' "$( ((QUICK)) && echo "quick (50k docs, 1 rep)" || echo "full ($REPS reps)")"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'ram\t%s GiB\n' "$(awk '/^MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
    printf 'kernel\t%s\n' "$(uname -r)"
    printf 'os\t%s\n' "$(. /etc/os-release && echo "$PRETTY_NAME")"
    printf 'postgres\t%s\n' "$("$PG_BIN/postgres" --version)"
    printf 'redis\t%s\n' "$(redis-server --version | awk '{ print $3 }')"
    printf 'rustc\t%s\n' "$(rustc --version)"
    printf 'git_commit\t%s%s\n' "$(git -C "$ROOT" rev-parse HEAD)" "$(dirty_note)"
    printf 'built_from\t%s\n' "$( ((WORKTREE)) && echo "working tree" || echo "clean snapshot of HEAD (+ bench examples)")"
    if ((${#PATCHES[@]})); then
      printf 'PATCHED\t%s\n' "$(for p in "${PATCHES[@]}"; do printf '%s ' "bench/patches/$(basename "$p")"; done)(not the committed code: a candidate fix applied to the build copy)"
    fi
    printf 'windows\tdecode %ss, stream %ss, freshness %ss, catch-up %ss, scaling %ss × %s rep(s) per pipeline count; upsert docs %s; 1 txn of %s rows\n' \
      "$DECODE_SECS" "$STREAM_SECS" "$FRESH_SECS" "$CATCHUP_SECS" "$SCALING_SECS" "$SCALING_REPS" "$UPSERT_DOCS" "$BIGTXN_ROWS"
    printf 'deriver_env\t%s\n' "$(env | grep '^DERIVER__' | grep -v -i 'url\|token' | tr '\n' ' ' || true)"
  } >"$f"
}

# Copies a clean tree of HEAD (plus this checkout's bench examples) into $CACHE/build/src, touching
# only files whose content changed so cargo's incremental build stays valid, and builds there.
build() {
  local src=$CACHE/build/src target=$CACHE/build/target tmp
  if ((WORKTREE)); then
    ((${#PATCHES[@]} == 0)) || die "--patch needs the snapshot build (not --worktree)"
    src=$ROOT
    target=${CARGO_TARGET_DIR:-$ROOT/target}
  else
    tmp=$CACHE/build/export
    rm -rf "$tmp" && mkdir -p "$tmp" "$src"
    git -C "$ROOT" archive HEAD | tar -x -C "$tmp"
    rm -rf "$tmp/examples" && mkdir -p "$tmp/examples" && cp "$ROOT"/examples/bench_*.rs "$tmp/examples/"
    local p
    for p in "${PATCHES[@]}"; do
      log "applying $p to the build copy"
      # The copy lies inside this repository: without the ceiling, git apply would take the
      # repository's root as its base and skip every path outside the copy, silently.
      (cd "$tmp" && GIT_CEILING_DIRECTORIES=$(cd .. && pwd -P) git apply --unsafe-paths -p1 "$p") || die "the patch $p does not apply to HEAD"
    done
    (cd "$tmp" && find . -type f) | while read -r f; do
      if ! cmp -s "$tmp/$f" "$src/$f"; then
        # A plain copy (not -p): the file gets the current time, so cargo rebuilds it even when
        # git archive's commit time is older than the last build (a --patch, an older commit).
        mkdir -p "$(dirname "$src/$f")" && cp "$tmp/$f" "$src/$f"
      fi
    done
    (cd "$src" && find . -type f -not -path './target/*') | while read -r f; do
      [[ -e $tmp/$f ]] || rm -f "$src/$f"
    done
    rm -rf "$tmp"
  fi
  log "building deriver and the bench examples (cargo build --release, in $src)"
  (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release --bin deriver --example bench_raw_tantivy --example bench_client) \
    >"$RUN/logs/build.log" 2>&1 || { tail -30 "$RUN/logs/build.log" >&2; die "build failed (logs/build.log)"; }
  state_set deriver_bin "$target/release/deriver"
  state_set client_bin "$target/release/examples/bench_client"
  state_set raw_tantivy_bin "$target/release/examples/bench_raw_tantivy"
}

# The corpus TSV (cached), and a template database per corpus size (cached in the cluster).
prepare_corpus() {
  local tsv=$CACHE/corpus/corpus.tsv template=corpus_$CORPUS
  if [[ ! -s $tsv ]]; then
    log "corpus: building $tsv with ../shared/tools/obtain_corpora.sh (apt-get installs the dictionary packages)"
    rm -rf "$CACHE/corpus.tmp" && mkdir -p "$CACHE/corpus.tmp" "$CACHE/corpus"
    "$SHARED/tools/obtain_corpora.sh" "$CACHE/corpus.tmp" >"$RUN/logs/corpus.log" 2>&1 || die "obtaining the corpus failed (logs/corpus.log)"
    mv "$CACHE/corpus.tmp/corpus.tsv" "$tsv" && rm -rf "$CACHE/corpus.tmp"
  fi
  if [[ $(psqlq postgres -c "SELECT count(*) FROM pg_database WHERE datname = '$template'") != 1 ]]; then
    log "corpus: loading the $CORPUS corpus into template database $template"
    psqlq postgres -c "DROP DATABASE IF EXISTS ${template}_loading" -c "CREATE DATABASE ${template}_loading"
    psqlq "${template}_loading" -c "CREATE TABLE doc(id bigserial PRIMARY KEY, source text NOT NULL, source_key text NOT NULL,
      title text, body text, updated_at timestamptz DEFAULT now())"
    local src=$tsv
    if ((QUICK)); then
      src=$CACHE/corpus/corpus-50k.tsv
      [[ -s $src ]] || { awk 'NR % 16 == 1 && ++n <= 50000' "$tsv" >"$src.tmp" && mv "$src.tmp" "$src"; }
    fi
    # synchronous_commit=off for this load session only (never for the measured work)
    PGOPTIONS='-c synchronous_commit=off -c maintenance_work_mem=1GB' \
      psqlq "${template}_loading" -c "\\copy doc(source, source_key, title, body) FROM '$src'" -c "VACUUM ANALYZE doc"
    psqlq postgres -c "ALTER DATABASE ${template}_loading RENAME TO $template"
  fi
}

# A fresh measured database from the template (file copy), and the churn script for its id range.
prepare_db() {
  local template=corpus_$CORPUS maxid
  psqlq postgres -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$DB' AND active_pid IS NOT NULL" >/dev/null
  psqlq postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$DB'" >/dev/null
  psqlq postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB TEMPLATE $template STRATEGY FILE_COPY"
  maxid=$(psqlq "$DB" -c "SELECT max(id) FROM doc")
  state_set docs_loaded "$(psqlq "$DB" -c "SELECT count(*) FROM doc")"
  state_set maxid "$maxid"
  # The shared churn script picks ids in 1..810160 (the full corpus); the subset uses its own range.
  sed "s/810160/$maxid/g" "$SHARED/workloads/pgbench_doc_churn.sql" >"$STATE/churn.sql"
}

write_config() {
  local http
  http=127.0.0.1:$(free_port 17700)
  state_set http_listen "$http"
  rm -rf "$CACHE/run" && mkdir -p "$CACHE/run/index"
  cat >"$STATE/deriver.toml" <<EOF
# written by bench/run.sh
[postgres]
url = "postgres://postgres@127.0.0.1:$PGPORT/$DB"
slot = "deriver_bench"
publication = "deriver_bench"

[redis]
url = "redis://127.0.0.1:$REDIS_PORT/"
prefix = "bench"

[index]
dir = "$CACHE/run/index"

[http]
listen = "$http"

[pipelines]
dir = "$BENCH/pipelines"
EOF
}

# ------------------------------------------------------------------------------------------ main

phase_selected() {
  local p=$1
  if [[ -n $ONLY ]]; then [[ ",$ONLY," == *",$p,"* ]] || return 1; fi
  if [[ -n $SKIP ]]; then [[ ",$SKIP," == *",$p,"* ]] && return 1; fi
  return 0
}

run_phase() {
  local p=$1 t0 rc
  if ! phase_selected "$p"; then
    printf '%s\tskipped\t0\t\n' "$p" >>"$RUN/phases.tsv"
    return 0
  fi
  local load0
  load0=$(cut -d' ' -f1 /proc/loadavg)
  log "=== phase $p (load average $load0)"
  t0=$SECONDS
  set +e
  (
    set -euo pipefail
    IN_PHASE=1
    [[ -z ${BENCH_TRACE:-} ]] || set -x
    "phase_$p"
  ) >>"$RUN/logs/$p.log" 2>&1 3>&3
  rc=$?
  set -e
  watch_stop
  if ((rc == 0)); then
    printf '%s\tok\t%s\tload average %s at start, %s at end\n' "$p" $((SECONDS - t0)) "$load0" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RUN/phases.tsv"
    log "=== phase $p: ok ($((SECONDS - t0)) s)"
  else
    printf '%s\tFAILED (exit %s)\t%s\tlogs/%s.log: %s\n' "$p" "$rc" $((SECONDS - t0)) "$p" "$(tail -n 1 "$RUN/logs/$p.log" | tr '\t' ' ' | cut -c1-200)" >>"$RUN/phases.tsv"
    log "=== phase $p: FAILED (exit $rc), see $RUN/logs/$p.log; going on"
  fi
}

main() {
  check_tools
  log "results: $RUN"
  machine_facts
  build
  pg_up
  redis_up
  prepare_corpus
  prepare_db
  write_config
  state_set reps "$REPS"
  local p
  for p in "${ALL_PHASES[@]}"; do
    run_phase "$p"
  done
  deriver_stop
  log "perf reports"
  perf_reports
  python3 "$BENCH/lib/report.py" "$RUN" >"$RUN/logs/report.log" 2>&1 || log "the report failed: logs/report.log"
  log "done: $RUN/results.md"
  sed -n '/^## Targets/,/^## /p' "$RUN/results.md" 2>/dev/null | sed '$d' >&3 || true
}

main
