# shellcheck shell=bash
# Catch-up (the backlog drain, the headline streaming figure): deriver stopped, pgbench churn at
# full rate for CATCHUP_SECS, then deriver started again; the window's changes over the time from
# the start until the applied LSN reaches the window's last commit, and deriver's peak RSS
# meanwhile. The extra last repetition is profiled.
#
# BENCH_CATCHUP_BEFORE="VAR=value …" (deriver settings, e.g. the previous behaviour) adds a
# "before" drain to every repetition, run first on a backlog of its own, so before and after come
# from the same run, interleaved: its figures are `before_*`.

# One drain: record a backlog, start deriver (with the given VAR=value settings), time it. Sets
# CD_CHANGES CD_TXNS CD_SECS CD_PEAK CD_ANON, and CD_MARK (the CPU mark taken at the start).
catchup_drain() {
  local label=$1 rep=$2 profiled=$3
  shift 3
  local last t0 reached wfile
  record_backlog "$RUN/tmp/${label}_pgbench_$rep.txt" "$CATCHUP_SECS"
  CD_CHANGES=$BK_CHANGES CD_TXNS=$BK_TXNS last=$BK_LAST
  wfile=$RUN/tmp/watch_${label}_$rep.txt
  t0=$(now_s)
  (for kv in "$@"; do export "${kv?}"; done; deriver_start "deriver-$label")
  rss_start "$(deriver_pid)" "$RUN/tmp/rss_${label}_$rep.txt"
  CD_MARK=$(cpu_mark)
  watch_start "$wfile"
  ((profiled)) && perf_profile catchup 15
  reached=$(wait_watch "$wfile" "$(lsn_to_int "$last")" 3600) || die "deriver ($label) did not catch up to $last"
  CD_SECS=$(calc "$reached / 1000 - $t0")
  CD_PEAK=$(rss_stop "$RUN/tmp/rss_${label}_$rep.txt")
  CD_ANON=$(rss_anon_peak "$RUN/tmp/rss_${label}_$rep.txt")
  watch_stop
  perf_wait catchup
}

phase_catchup() {
  local reps rep before
  reps=$(state_get reps)
  read -r -a before <<<"${BENCH_CATCHUP_BEFORE:-}"
  ((${#before[@]})) && note catchup "before_* figures: each repetition first drains a backlog of its own with ${before[*]}"
  ensure_deriver
  for ((rep = 1; rep <= reps + 1; rep++)); do
    local profiled=0
    if ((rep == reps + 1)); then
      [[ $PERF == 1 ]] || break
      profiled=1
    fi
    if ((${#before[@]} && !profiled)); then
      catchup_drain catchup_before "$rep" 0 "${before[@]}"
      echo "rep $rep, before (${before[*]}): $CD_CHANGES changes, $CD_TXNS txns caught up in $CD_SECS s, peak RSS $CD_PEAK MiB"
      figure catchup before_changes_per_s changes/s "$rep" "$(calc "$CD_CHANGES / $CD_SECS")"
      figure catchup before_peak_rss MiB "$rep" "$CD_PEAK"
    fi
    catchup_drain catchup "$rep" "$profiled"
    echo "rep $rep: $CD_CHANGES changes, $CD_TXNS txns caught up in $CD_SECS s, peak RSS $CD_PEAK MiB"
    ((profiled)) && continue
    cpu_figures catchup "$rep" "$CD_MARK"
    batch_figures catchup "$rep" "0 0 0 0 0" "$(metrics_mark)" "$CD_SECS"
    figure catchup changes n "$rep" "$CD_CHANGES"
    figure catchup changes_per_s changes/s "$rep" "$(calc "$CD_CHANGES / $CD_SECS")"
    figure catchup txns_per_s txns/s "$rep" "$(calc "$CD_TXNS / $CD_SECS")"
    figure catchup peak_rss MiB "$rep" "$CD_PEAK"
    figure catchup peak_anon_rss MiB "$rep" "$CD_ANON"
  done
  wait_streaming 600
}
