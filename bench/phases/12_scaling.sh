# shellcheck shell=bash
# Scaling with pipelines (issue 25): the catch-up drain of the `catchup` phase with 1, 2 and 4
# pipelines on the same table. The pipelines are copies of bench/pipelines/docs.yaml (`docs`,
# `docs_2`, … with their own index and Redis key prefix `doc_<i>:`), generated into
# $STATE/pipelines-<N>/; deriver.toml's [pipelines] dir is pointed there for the phase and set back
# at its end. For each N: deriver started with the N pipelines builds the new ones (snapshot) and
# reaches streaming; stopped; churn at full rate for SCALING_SECS (a recorded backlog, counted by a
# test_decoding slot); deriver started; timed until EVERY pipeline's applied LSN (one watcher per
# pipeline, 20 ms) passes the window's last commit, start-up included.
# Figures per N: drain_changes_per_s_<N> (window changes ÷ time), pipeline_changes_per_s_<N>
# (N × that: the work done), deriver_cpu_cores_<N>, postgres_cpu_cores_<N>, peak_rss_<N>,
# peak_anon_rss_<N>, drain_secs_<N>, spread_secs_<N> (first to last pipeline past the commit);
# redis_/other_/steal_cpu_cores_<N> and iowait_cores_<N> say how busy the rest of the machine was.
SCALING_NS=(1 2 4)

# scaling_pipelines DIR N : docs.yaml and its copies docs_2 … docs_N in DIR
scaling_pipelines() {
  local dir=$1 n=$2 i src=$BENCH/pipelines/docs.yaml
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$src" "$dir/docs.yaml"
  for ((i = 2; i <= n; i++)); do
    awk -v i="$i" '
      /^pipeline: docs$/ { print "pipeline: docs_" i; next }
      /^  - search:$/ { print; print "      index: docs_" i; next }
      /key: "doc:\{id\}"/ { sub(/key: "doc:\{id\}"/, "key: \"doc_" i ":{id}\"") }
      { print }' "$src" >"$dir/docs_$i.yaml"
    grep -q "^pipeline: docs_$i\$" "$dir/docs_$i.yaml" && grep -q "index: docs_$i\$" "$dir/docs_$i.yaml" &&
      grep -q "key: \"doc_$i:{id}\"" "$dir/docs_$i.yaml" || die "could not derive $dir/docs_$i.yaml from $src (its layout changed?)"
  done
}

# scaling_set_dir DIR : points [pipelines] dir of deriver.toml at DIR
scaling_set_dir() {
  awk -v d="$1" '
    /^\[/ { sect = $0 }
    sect == "[pipelines]" && /^dir = / { print "dir = \"" d "\""; next }
    { print }' "$STATE/deriver.toml" >"$STATE/deriver.toml.tmp" && mv "$STATE/deriver.toml.tmp" "$STATE/deriver.toml"
  grep -qxF "dir = \"$1\"" "$STATE/deriver.toml" || die "could not set the pipelines dir in $STATE/deriver.toml"
}

# iowait_ticks : ticks all CPUs spent idle with I/O outstanding, since boot
iowait_ticks() { awk '/^cpu / { print $6 }' /proc/stat; }

scaling_watch_stop() {
  local pid
  for pid in $(cat "$STATE/scaling_watch_pids" 2>/dev/null); do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$STATE/scaling_watch_pids"
}

# On any exit of the phase (a failure included): no watcher left polling, and the single-pipeline
# configuration back in place for whatever runs next.
scaling_cleanup() {
  local rc=$? step err
  step=$(state_get scaling_step) || step=
  scaling_watch_stop
  if [[ $(state_get scaling_restore) == 1 ]]; then
    deriver_stop
    scaling_set_dir "$BENCH/pipelines" || true
    rm -f "$STATE/scaling_restore"
    log "scaling: the single pipeline set back in deriver.toml (bench/pipelines); deriver stopped"
  fi
  # The last line of the phase's log is what the results show for a failed phase.
  if ((rc != 0)); then
    err=$(grep -o 'error: .*' "$RUN/logs/scaling.log" 2>/dev/null | tail -1) || err=
    log "scaling: FAILED (exit $rc) while: $step${err:+ — $err}"
  fi
}

scaling_step() { state_set scaling_step "$*"; }

phase_scaling() {
  local reps rep n i changes txns last t0 tm t1 reached first ms secs peak anon d0 p0 r0 m0 s0 w0 d1 p1 r1 m1 s1 w1 dir wfile name
  reps=${SCALING_REPS:-1}
  ensure_deriver
  trap scaling_cleanup EXIT
  state_set scaling_restore 1
  note scaling "backlog of ${SCALING_SECS} s of full-rate churn per measurement; $reps repetition(s) per pipeline count"
  for n in "${SCALING_NS[@]}"; do
    # Build: deriver with N pipelines derives the new ones from a snapshot, then streams.
    dir=$STATE/pipelines-$n
    scaling_step "$n pipelines: building them (snapshot) until streaming"
    scaling_pipelines "$dir" "$n"
    deriver_stop
    scaling_set_dir "$dir"
    deriver_cli validate >/dev/null || die "deriver validate refused the $n pipeline files in $dir"
    t0=$(now_s)
    deriver_start "deriver-scaling-$n"
    wait_streaming 7200 || die "deriver did not reach streaming with $n pipelines (logs/deriver-scaling-$n.log)"
    wait_applied "$(current_lsn)" 3600 >/dev/null || die "deriver with $n pipelines did not catch up before the measurement"
    echo "$n pipelines: built and streaming after $(secs_since "$t0") s"
    figure scaling "build_secs_$n" s 1 "$(secs_since "$t0")"
    for ((rep = 1; rep <= reps; rep++)); do
      scaling_step "$n pipelines, rep $rep: recording a backlog of $SCALING_SECS s of churn (deriver stopped)"
      record_backlog "$RUN/tmp/scaling_pgbench_${n}_$rep.txt" "$SCALING_SECS"
      changes=$BK_CHANGES txns=$BK_TXNS last=$BK_LAST
      ((changes > 0)) || die "the churn window recorded no changes"
      scaling_step "$n pipelines, rep $rep: draining $changes changes (every pipeline past $last)"
      t0=$(now_s)
      deriver_start "deriver-scaling-$n"
      rss_start "$(deriver_pid)" "$RUN/tmp/rss_scaling_${n}_$rep.txt"
      read -r tm d0 p0 r0 m0 s0 <<<"$(cpu_mark)"
      w0=$(iowait_ticks)
      : >"$STATE/scaling_watch_pids"
      for ((i = 1; i <= n; i++)); do
        name=docs
        ((i == 1)) || name=docs_$i
        wfile=$RUN/tmp/watch_scaling_${n}_${rep}_$name.txt
        : >"$wfile"
        "$(CLIENT_BIN)" watch --http "$(HTTP_URL)" --pipeline "$name" --out "$wfile" --interval-ms 20 2>>"$RUN/logs/watch.log" 3>&- &
        echo $! >>"$STATE/scaling_watch_pids"
      done
      # Every pipeline past the window's last commit: the latest of the pipelines' first polls
      # that saw it.
      reached=0 first=0
      for ((i = 1; i <= n; i++)); do
        name=docs
        ((i == 1)) || name=docs_$i
        ms=$(wait_watch "$RUN/tmp/watch_scaling_${n}_${rep}_$name.txt" "$(lsn_to_int "$last")" 3600) ||
          die "pipeline $name (of $n) did not catch up to $last"
        if ((ms > reached)); then reached=$ms; fi
        if ((first == 0 || ms < first)); then first=$ms; fi
      done
      read -r t1 d1 p1 r1 m1 s1 <<<"$(cpu_mark)"
      w1=$(iowait_ticks)
      peak=$(rss_stop "$RUN/tmp/rss_scaling_${n}_$rep.txt")
      anon=$(rss_anon_peak "$RUN/tmp/rss_scaling_${n}_$rep.txt")
      scaling_watch_stop
      secs=$(calc "$reached / 1000 - $t0")
      echo "$n pipelines, rep $rep: $changes changes, $txns txns; every pipeline past $last after $secs s" \
        "(first $(calc "$first / 1000 - $t0") s), peak RSS $peak MiB"
      figure scaling "changes_$n" n "$rep" "$changes"
      figure scaling "drain_secs_$n" s "$rep" "$secs"
      figure scaling "drain_changes_per_s_$n" changes/s "$rep" "$(calc "$changes / $secs")"
      figure scaling "pipeline_changes_per_s_$n" changes/s "$rep" "$(calc "$n * $changes / $secs")"
      figure scaling "spread_secs_$n" s "$rep" "$(calc "($reached - $first) / 1000")"
      figure scaling "deriver_cpu_cores_$n" cores "$rep" "$(calc "($d1 - $d0) / $CLK_TCK / ($t1 - $tm)")"
      figure scaling "postgres_cpu_cores_$n" cores "$rep" "$(calc "($p1 - $p0) / $CLK_TCK / ($t1 - $tm)")"
      figure scaling "redis_cpu_cores_$n" cores "$rep" "$(calc "($r1 - $r0) / $CLK_TCK / ($t1 - $tm)")"
      # Everything else on the machine (pgbench is idle here: the bench's watchers, other work),
      # the hypervisor's steal, and the CPUs' time idle waiting for I/O (commits and fsyncs).
      figure scaling "other_cpu_cores_$n" cores "$rep" "$(calc "(($m1 - $m0) - ($s1 - $s0) - ($d1 - $d0) - ($p1 - $p0) - ($r1 - $r0)) / $CLK_TCK / ($t1 - $tm)")"
      figure scaling "steal_cpu_cores_$n" cores "$rep" "$(calc "($s1 - $s0) / $CLK_TCK / ($t1 - $tm)")"
      figure scaling "iowait_cores_$n" cores "$rep" "$(calc "($w1 - $w0) / $CLK_TCK / ($t1 - $tm)")"
      figure scaling "peak_rss_$n" MiB "$rep" "$peak"
      figure scaling "peak_anon_rss_$n" MiB "$rep" "$anon"
    done
  done
  # Back to the single pipeline: the copies' index folders and Redis views pruned, deriver
  # streaming again with bench/pipelines as before the phase.
  scaling_step "setting the single pipeline back"
  deriver_stop
  scaling_set_dir "$BENCH/pipelines"
  rm -f "$STATE/scaling_restore"
  deriver_cli prune --yes || note scaling "deriver prune --yes failed after the phase: the copies' state was left behind (logs/scaling.log)"
  ensure_deriver
  trap - EXIT
}
