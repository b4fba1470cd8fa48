# shellcheck shell=bash
# Catch-up: deriver stopped, pgbench churn at full rate for CATCHUP_SECS, then deriver started
# again; the window's changes over the time from the start until the applied LSN reaches the
# window's last commit, and deriver's peak RSS meanwhile. The extra last repetition is profiled.
phase_catchup() {
  local reps rep end changes txns last t0 reached secs peak mark wfile m0
  reps=$(state_get reps)
  ensure_deriver
  for ((rep = 1; rep <= reps + 1; rep++)); do
    local profiled=0
    if ((rep == reps + 1)); then
      [[ $PERF == 1 ]] || break
      profiled=1
    fi
    deriver_stop
    drop_slot bench_count
    psqlq "$DB" -c "SELECT pg_create_logical_replication_slot('bench_count', 'test_decoding')" >/dev/null
    churn "$CATCHUP_SECS" >"$RUN/tmp/catchup_pgbench_$rep.txt" 2>&1
    end=$(current_lsn)
    read -r changes txns last <<<"$(count_changes bench_count "$end")"
    drop_slot bench_count
    wfile=$RUN/tmp/watch_catchup_$rep.txt
    t0=$(now_s)
    deriver_start deriver-catchup
    rss_start "$(deriver_pid)" "$RUN/tmp/rss_catchup_$rep.txt"
    mark=$(cpu_mark)
    watch_start "$wfile"
    ((profiled)) && perf_profile catchup 15
    reached=$(wait_watch "$wfile" "$(lsn_to_int "$last")" 3600) || die "deriver did not catch up to $last"
    secs=$(calc "$reached / 1000 - $t0")
    peak=$(rss_stop "$RUN/tmp/rss_catchup_$rep.txt")
    anon=$(rss_anon_peak "$RUN/tmp/rss_catchup_$rep.txt")
    watch_stop
    perf_wait catchup
    echo "rep $rep: $changes changes, $txns txns caught up in $secs s, peak RSS $peak MiB"
    ((profiled)) && continue
    cpu_figures catchup "$rep" "$mark"
    batch_figures catchup "$rep" "0 0 0 0 0" "$(metrics_mark)" "$secs"
    figure catchup changes n "$rep" "$changes"
    figure catchup changes_per_s changes/s "$rep" "$(calc "$changes / $secs")"
    figure catchup txns_per_s txns/s "$rep" "$(calc "$txns / $secs")"
    figure catchup peak_rss MiB "$rep" "$peak"
    figure catchup peak_anon_rss MiB "$rep" "$anon"
  done
  wait_streaming 600
}
