# shellcheck shell=bash
# Helpers shared by bench/run.sh and the phase scripts: logging, figures, servers, deriver.
#
# Conventions
#   $ROOT   repository root          $BENCH  $ROOT/bench          $CACHE  $BENCH/.cache
#   $RUN    this run's result folder (bench/results/<timestamp>)
#   $STATE  $RUN/state: small files phases hand to each other (ports, pids, measured limits)
#   Figures go to $RUN/figures.tsv: phase<TAB>figure<TAB>unit<TAB>rep<TAB>value (report.py
#   aggregates them into median/min/max); notes to $RUN/notes.tsv: phase<TAB>text.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# figure PHASE NAME UNIT REP VALUE
figure() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RUN/figures.tsv"
  log "figure $1/$2 rep $4: $5 $3"
}

# note PHASE TEXT...
note() {
  local phase=$1
  shift
  printf '%s\t%s\n' "$phase" "$*" >>"$RUN/notes.tsv"
}

state_set() { printf '%s\n' "$2" >"$STATE/$1"; }
state_get() { [[ -r $STATE/$1 ]] && cat "$STATE/$1"; }

now_s() { date +%s.%N; }
# secs_since START
secs_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }'; }
# calc EXPR (awk arithmetic, printed with 3 decimals)
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

# Something listens on, or a socket is bound to, 127.0.0.1:PORT.
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
  ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .
}
free_port() {
  local port=$1
  while port_busy "$port"; do port=$((port + 1)); done
  printf '%s\n' "$port"
}

as_pg() { (cd / && runuser -u postgres -- "$@"); }

# ------------------------------------------------------------------------------------ postgres

PGDIR=$CACHE/pg
PGDATA=$PGDIR/data
PG_SOCK=$PGDIR/sock

pg_up() {
  mkdir -p "$PGDIR"
  chown postgres:postgres "$PGDIR"
  chmod 700 "$PGDIR"
  mkdir -p "$PG_SOCK" && chown postgres:postgres "$PG_SOCK"
  if [[ ${#PG_SOCK} -gt 90 ]]; then die "socket path $PG_SOCK is too long"; fi
  if [[ ! -f $PGDATA/PG_VERSION ]]; then
    log "postgres: initdb $PGDATA"
    rm -rf "$PGDATA.tmp"
    as_pg "$PG_BIN/initdb" -D "$PGDATA.tmp" -U postgres --auth-local=trust --auth-host=trust -E UTF8 \
      --locale=C.UTF-8 --no-instructions >"$PGDIR/initdb.log" 2>&1 || die "initdb failed: $PGDIR/initdb.log"
    echo "include_if_exists = 'bench.conf'" >>"$PGDATA.tmp/postgresql.conf"
    mv "$PGDATA.tmp" "$PGDATA"
  fi
  if [[ -f $PGDATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
    PGPORT=$(sed -n 4p "$PGDATA/postmaster.pid")
    log "postgres: already running on port $PGPORT"
  else
    rm -f "$PGDATA/postmaster.pid" "$PG_SOCK"/.s.PGSQL.*
    PGPORT=$(free_port 15432)
    cat >"$PGDATA/bench.conf" <<EOF
# written by bench/run.sh
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PG_SOCK'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 15min
wal_sender_timeout = 300s
max_connections = 100
EOF
    chown postgres:postgres "$PGDATA/bench.conf"
    log "postgres: starting on 127.0.0.1:$PGPORT"
    as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA" -l "$PGDIR/log" -w -t 120 -s || die "postgres did not start: $PGDIR/log"
  fi
  state_set pgport "$PGPORT"
  export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
}

pg_down() {
  if [[ -f $PGDATA/postmaster.pid ]]; then
    log "postgres: stopping"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 120 -s || true
  fi
}

# psqlq DB SQL... : one value per line, no headers, stop on error
psqlq() {
  local db=$1
  shift
  psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"
}

# ---------------------------------------------------------------------------------------- redis

REDIS_DIR=$CACHE/redis

redis_up() {
  mkdir -p "$REDIS_DIR"
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]; then
    REDIS_PORT=$(cat "$REDIS_DIR/port")
    log "redis: already running on port $REDIS_PORT"
  else
    REDIS_PORT=$(free_port 16379)
    echo "$REDIS_PORT" >"$REDIS_DIR/port"
    rm -f "$REDIS_DIR"/appendonlydir/* 2>/dev/null || true
    log "redis: starting on 127.0.0.1:$REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --appendonly yes --appendfsync everysec \
      --save '' --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" >/dev/null
    local i
    for ((i = 0; i < 100; i++)); do
      redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis did not start: $REDIS_DIR/redis.log"
  fi
  redis-cli -p "$REDIS_PORT" flushall >/dev/null
  state_set redisport "$REDIS_PORT"
}

redis_down() {
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]; then
    log "redis: stopping (pid $pid)"
    redis-cli -p "$(cat "$REDIS_DIR/port")" shutdown nosave >/dev/null 2>&1 || kill "$pid"
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
}

# ------------------------------------------------------------------------------------- deriver

DERIVER_BIN() { state_get deriver_bin; }
CLIENT_BIN() { state_get client_bin; }
HTTP_URL() { printf 'http://%s\n' "$(state_get http_listen)"; }

# A live (not zombie) process.
alive() { [[ -n $1 && -r /proc/$1/stat ]] && ! awk '{ exit !($3 == "Z" || $3 == "X") }' "/proc/$1/stat" 2>/dev/null; }

deriver_pid() {
  local pid
  pid=$(state_get deriver_pid) || return 1
  alive "$pid" || return 1
  printf '%s\n' "$pid"
}

# deriver_start LOGNAME: starts `deriver run` in the background, records its pid.
deriver_start() {
  local logname=${1:-deriver} listen port
  deriver_pid >/dev/null && die "deriver already runs (pid $(deriver_pid))"
  # Something else may have taken the HTTP port since (an outgoing connection, another test).
  listen=$(state_get http_listen)
  if port_busy "${listen##*:}"; then
    port=$(free_port 17700)
    sed -i "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$STATE/deriver.toml"
    state_set http_listen "127.0.0.1:$port"
    log "deriver: port ${listen##*:} is taken, using $port"
  fi
  (cd "$ROOT" && exec env NO_COLOR=1 DERIVER_LOG=${DERIVER_LOG:-info} "$(DERIVER_BIN)" --config "$STATE/deriver.toml" run) \
    >>"$RUN/logs/$logname.log" 2>&1 3>&- &
  state_set deriver_pid $!
  state_set deriver_log "$RUN/logs/$logname.log"
  log "deriver: started (pid $!, log logs/$logname.log)"
}

deriver_stop() {
  local pid i
  pid=$(deriver_pid) || return 0
  log "deriver: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    log "deriver: still running after 60 s, killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  rm -f "$STATE/deriver_pid"
}

deriver_cli() { (cd "$ROOT" && "$(DERIVER_BIN)" --config "$STATE/deriver.toml" "$@"); }

# status_field JQ : from GET /v1/status
status_field() { curl -sf --max-time 5 "$(HTTP_URL)/v1/status" | jq -r "$1" 2>/dev/null; }

# wait_streaming TIMEOUT_S : until every pipeline's state is "streaming" with an applied LSN
wait_streaming() {
  local deadline=$((SECONDS + $1)) st
  while ((SECONDS < deadline)); do
    deriver_pid >/dev/null || return 1
    st=$(status_field '(.pipelines | length) as $n | [.pipelines[] | select(.state == "streaming" and .applied_lsn != null)] | length == $n and $n > 0')
    [[ $st == true ]] && return 0
    sleep 0.05
  done
  return 1
}

# lsn_to_int X/Y
lsn_to_int() { local hi=${1%/*} lo=${1#*/}; printf '%d\n' $(((16#$hi << 32) | 16#$lo)); }

# retries_since LINES : batch retries deriver logged after the first LINES lines of its log
retries_since() {
  local f
  f=$(state_get deriver_log) || { echo 0; return; }
  tail -n +"$(($1 + 1))" "$f" 2>/dev/null | grep -c 'applying a batch failed' || true
}
log_lines() { local f; f=$(state_get deriver_log) && wc -l <"$f" || echo 0; }
last_retry_error() {
  local f
  f=$(state_get deriver_log) && grep -A1 'applying a batch failed' "$f" | tail -2 | sed 's/\x1b\[[0-9;]*m//g' | tr -s ' \n' ' ' | cut -c1-300
}

# wait_applied LSN TIMEOUT_S : POST /v1/wait until the pipelines applied LSN; prints seconds waited.
# Gives up early when deriver keeps retrying a batch (5 retries).
wait_applied() {
  local lsn=$1 deadline=$((SECONDS + $2)) t0 code lines
  t0=$(now_s)
  lines=$(log_lines)
  while ((SECONDS < deadline)); do
    if (($(retries_since "$lines") >= 5)); then
      log "deriver retried the batch 5 times: $(last_retry_error)"
      return 1
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'content-type: application/json' \
      -d "{\"lsn\":\"$lsn\",\"timeout_ms\":20000}" "$(HTTP_URL)/v1/wait" || true)
    if [[ $code == 200 ]]; then
      secs_since "$t0"
      return 0
    fi
    deriver_pid >/dev/null || return 1
    [[ $code == 504 ]] || sleep 0.2
  done
  return 1
}

# --------------------------------------------------------------------------------- watch & rss

# watch_start FILE : background poller of the applied LSN (bench_client watch)
watch_start() {
  : >"$1"
  "$(CLIENT_BIN)" watch --http "$(HTTP_URL)" --pipeline docs --out "$1" --interval-ms 20 2>>"$RUN/logs/watch.log" 3>&- &
  state_set watch_pid $!
}
watch_stop() {
  local pid
  pid=$(state_get watch_pid) || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$STATE/watch_pid"
}
# watch_reached FILE LSN_INT : prints the unix ms of the first poll that saw applied >= LSN
watch_reached() { awk -v t="$2" '$2 >= t { print $1; exit }' "$1"; }

# wait_watch FILE LSN_INT TIMEOUT_S : waits until the watcher saw LSN; prints the unix ms of the
# watcher's first poll that saw it
wait_watch() {
  local deadline=$((SECONDS + $3)) ms lines
  lines=$(log_lines)
  while ((SECONDS < deadline)); do
    if (($(retries_since "$lines") >= 5)); then
      log "deriver retried the batch 5 times: $(last_retry_error)"
      return 1
    fi
    ms=$(watch_reached "$1" "$2")
    if [[ -n $ms ]]; then
      printf '%s\n' "$ms"
      return 0
    fi
    deriver_pid >/dev/null || return 1
    # The time measured is the watcher's (its own 20 ms polls, in the file); this loop only
    # notices it, so it polls slowly: its forks would take CPU from what is measured.
    sleep 0.5
  done
  return 1
}

# rss_start PID FILE : resets the peak (VmHWM) and samples every 100 ms into FILE one line
# "VmRSS RssAnon RssFile" (KiB). RssFile is mostly the memory-mapped index: clean page cache the
# kernel can take back, which a merge reading whole segments raises for its duration.
rss_start() {
  local pid=$1 file=$2
  echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
  : >"$file"
  (
    while alive "$pid"; do
      awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { if (r != "") print r, a, f }' "/proc/$pid/status" 2>/dev/null >>"$file"
      sleep 0.1
    done
  ) 3>&- &
  state_set rss_pid $!
  state_set rss_target "$pid"
}
# rss_stop FILE : stops sampling, prints the peak in MiB (max of sampled VmRSS and VmHWM)
rss_stop() {
  local file=$1 spid tpid hwm
  spid=$(state_get rss_pid) && { kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; }
  tpid=$(state_get rss_target)
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$tpid/status" 2>/dev/null || true)
  { awk '{ print $1 }' "$file"; [[ -n $hwm ]] && echo "$hwm"; } | sort -n | tail -1 | awk '{ printf "%.1f\n", $1 / 1024 }'
  rm -f "$STATE/rss_pid"
}
# rss_anon_peak FILE : the largest sampled RssAnon in MiB (anonymous memory: heap, stacks,
# tantivy's indexing arena; no file pages), after rss_stop
rss_anon_peak() { awk 'NF >= 2 && $2 > m { m = $2 } END { printf "%.1f\n", m / 1024 }' "$1"; }

# rss_now PID : current VmRSS in MiB
rss_now() { awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# cpu_ticks PID : utime+stime in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# pg_cpu_ticks : CPU of our cluster in clock ticks: the postmaster's own and reaped children's
# (utime+stime+cutime+cstime) plus the live children's utime+stime
pg_cpu_ticks() {
  local ppid total p t
  ppid=$(head -1 "$PGDATA/postmaster.pid")
  total=$(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$ppid/stat" 2>/dev/null || echo 0)
  for p in $(pgrep -P "$ppid"); do
    t=$(cpu_ticks "$p")
    total=$((total + t))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------- workloads

# churn SECONDS [extra pgbench args...] : the shared churn script on $DB, 4 clients, 2 threads
churn() {
  local secs=$1
  shift
  pgbench -n -f "$STATE/churn.sql" -c 4 -j 2 -T "$secs" "$@" "$DB"
}

# count_changes SLOT UPTO_LSN : "changes txns last_commit_lsn" decoded by test_decoding up to LSN
# (consumes the slot up to there)
count_changes() {
  psqlq "$DB" -F ' ' -c "SELECT count(*) FILTER (WHERE data ~ '^table public\\.doc: (INSERT|UPDATE|DELETE)'),
         count(*) FILTER (WHERE data ~ '^COMMIT'), coalesce(max(lsn) FILTER (WHERE data ~ '^COMMIT'), '0/0')
       FROM pg_logical_slot_get_changes('$1', '$2', NULL, 'skip-empty-xacts', '1', 'include-xids', '0')"
}

drop_slot() { psqlq "$DB" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$1'" >/dev/null; }

current_lsn() { psqlq "$DB" -c "SELECT pg_current_wal_lsn()"; }

redis_cpu_ticks() {
  local pid
  pid=$(cat "$REDIS_DIR/redis.pid" 2>/dev/null) && cpu_ticks "$pid" || echo 0
}
# machine_busy_ticks : busy (non-idle, non-iowait) ticks of all CPUs since boot, steal included
machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# machine_steal_ticks : ticks the hypervisor gave this machine's CPUs to other guests, since boot
machine_steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }

# cpu_mark : "<now> <deriver> <postgres> <redis> <machine busy> <steal>" (ticks) for cpu_figures
cpu_mark() {
  local d=0 pid
  pid=$(deriver_pid) && d=$(cpu_ticks "$pid")
  printf '%s %s %s %s %s %s\n' "$(now_s)" "$d" "$(pg_cpu_ticks)" "$(redis_cpu_ticks)" "$(machine_busy_ticks)" "$(machine_steal_ticks)"
}
# cpu_figures PHASE REP MARK : CPU cores deriver and Postgres used since MARK (a deriver restarted in
# between counts from zero)
cpu_figures() {
  local phase=$1 rep=$2 t0 d0 p0 r0 m0 s0 t1 d1 p1 r1 m1 s1
  read -r t0 d0 p0 r0 m0 s0 <<<"$3"
  read -r t1 d1 p1 r1 m1 s1 <<<"$(cpu_mark)"
  ((d1 >= d0)) || d0=0
  figure "$phase" deriver_cpu_cores cores "$rep" "$(calc "($d1 - $d0) / $CLK_TCK / ($t1 - $t0)")"
  figure "$phase" postgres_cpu_cores cores "$rep" "$(calc "($p1 - $p0) / $CLK_TCK / ($t1 - $t0)")"
  figure "$phase" redis_cpu_cores cores "$rep" "$(calc "($r1 - $r0) / $CLK_TCK / ($t1 - $t0)")"
  # Everything else on the machine (pgbench, the bench's own clients, other users' work).
  figure "$phase" other_cpu_cores cores "$rep" "$(calc "(($m1 - $m0) - ($s1 - $s0) - ($d1 - $d0) - ($p1 - $p0) - ($r1 - $r0)) / $CLK_TCK / ($t1 - $t0)")"
  # CPU time the hypervisor gave to other guests: on a shared host, the cores this run did not get.
  figure "$phase" steal_cpu_cores cores "$rep" "$(calc "($s1 - $s0) / $CLK_TCK / ($t1 - $t0)")"
}

# ensure_deriver : starts deriver (streaming from its checkpoints) unless it runs
ensure_deriver() {
  deriver_pid >/dev/null && return 0
  deriver_cli setup >/dev/null # idempotent; a run with --only may skip the snapshot phase
  deriver_start deriver-restart
  wait_streaming 3600 || die "deriver did not reach streaming"
}

# perf_profile NAME SECONDS : records the whole machine (call graphs) for SECONDS in the background
# into perf/NAME.data; perf_reports turns the recordings into text at the end of the run (so no
# report competes with a measurement): where the CPU went by process, then deriver by thread and
# by symbol. Skipped with --no-perf.
perf_profile() {
  [[ ${PERF:-0} == 1 ]] && command -v perf >/dev/null || return 0
  local name=$1 secs=$2 pid
  pid=$(deriver_pid) || return 0
  mkdir -p "$RUN/perf"
  echo "$pid $secs" >"$RUN/perf/$name.info"
  (
    set +e
    timeout -s INT "$secs" perf record -a -F 99 --call-graph dwarf,16384 -o "$RUN/perf/$name.data"
    echo "perf record exited with $?"
  ) >"$RUN/perf/$name.record.log" 2>&1 3>&- &
  state_set "perf_$name" $!
}
perf_wait() {
  local pid
  pid=$(state_get "perf_$1") || return 0
  wait "$pid" 2>/dev/null || true
}
perf_reports() {
  local data name pid secs
  for data in "$RUN"/perf/*.data; do
    [[ -e $data ]] || continue
    name=$(basename "$data" .data)
    read -r pid secs <"$RUN/perf/$name.info" || true
    {
      echo "# perf profile of the whole machine, $secs s at 99 Hz, during $name; deriver is pid $pid"
      echo "## whole machine, by process"
      perf report -i "$data" --stdio --no-children --sort comm -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 25' || true
      echo "## deriver by thread (% of deriver's samples)"
      perf report -i "$data" --pid "$pid" --percentage relative --stdio --no-children --sort comm -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 20' || true
      echo "## deriver by symbol (self)"
      perf report -i "$data" --pid "$pid" --percentage relative --stdio --no-children --sort comm,sym -g none --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 70' || true
      echo "## deriver by symbol (self + callees)"
      perf report -i "$data" --pid "$pid" --percentage relative --stdio --children --sort sym -g none --percent-limit 2.5 2>/dev/null | grep -v '^#' | grep -v '^$' | awk 'NR <= 80' || true
    } >"$RUN/perf/$name.txt"
    rm -f "$data"
  done
}

# metric NAME : the sum over all series of a metric in GET /metrics
metric() {
  curl -sf --max-time 5 "$(HTTP_URL)/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.6f\n", s }'
}
# metrics_mark : "<changes applied> <sink commits> <commit secs> <batches> <batch latency secs>"
metrics_mark() {
  local m
  m=$(curl -sf --max-time 5 "$(HTTP_URL)/metrics" || true)
  awk '
    function v(name) { return (name in s) ? s[name] : 0 }
    { n = $1; sub(/\{.*/, "", n); s[n] += $NF }
    END { printf "%d %d %.6f %d %.6f\n", v("deriver_changes_applied_total"), v("deriver_commit_latency_seconds_count"),
          v("deriver_commit_latency_seconds_sum"), v("deriver_batch_latency_seconds_count"), v("deriver_batch_latency_seconds_sum") }' <<<"$m"
}
# batch_figures PHASE REP MARK0 MARK1 WINDOW_SECS : batches, changes per batch, time in sink commits
batch_figures() {
  local phase=$1 rep=$2 secs=$5 c0 k0 ks0 b0 bs0 c1 k1 ks1 b1 bs1
  read -r c0 k0 ks0 b0 bs0 <<<"$3"
  read -r c1 k1 ks1 b1 bs1 <<<"$4"
  ((b1 > b0)) || return 0
  figure "$phase" batches_per_s batches/s "$rep" "$(calc "($b1 - $b0) / $secs")"
  figure "$phase" changes_per_batch changes "$rep" "$(calc "($c1 - $c0) / ($b1 - $b0)")"
  figure "$phase" batch_latency_mean ms "$rep" "$(calc "1000 * ($bs1 - $bs0) / ($b1 - $b0)")"
  ((k1 > k0)) || return 0
  figure "$phase" sink_commit_mean ms "$rep" "$(calc "1000 * ($ks1 - $ks0) / ($k1 - $k0)")"
  figure "$phase" wall_share_in_sink_commits % "$rep" "$(calc "100 * ($ks1 - $ks0) / $secs")"
}

# record_backlog FILE SECS : with deriver stopped, churn at full rate for SECS (pgbench's output to
# FILE) and count what a test_decoding slot saw: sets BK_CHANGES, BK_TXNS and BK_LAST (the LSN of
# the window's last commit).
record_backlog() {
  local end
  deriver_stop
  drop_slot bench_count
  psqlq "$DB" -c "SELECT pg_create_logical_replication_slot('bench_count', 'test_decoding')" >/dev/null
  churn "$2" >"$1" 2>&1
  end=$(current_lsn)
  read -r BK_CHANGES BK_TXNS BK_LAST <<<"$(count_changes bench_count "$end")"
  drop_slot bench_count
}
