# shellcheck shell=bash
# Streaming throughput: pgbench churn at full rate for STREAM_SECS while deriver runs; the changes
# committed in the window (counted by a test_decoding slot) over the time from the window's start
# until deriver's applied LSN (polled every 20 ms) reaches the window's last commit.
phase_stream() {
  local reps rep t0 t1 end changes txns last reached secs tps mark wfile m0
  reps=$(state_get reps)
  ensure_deriver
  for ((rep = 1; rep <= reps + 1; rep++)); do
    # The extra last repetition is the profiled one (perf), not counted.
    local profiled=0
    if ((rep == reps + 1)); then
      [[ $PERF == 1 ]] || break
      profiled=1
    fi
    drop_slot bench_count
    psqlq "$DB" -c "SELECT pg_create_logical_replication_slot('bench_count', 'test_decoding')" >/dev/null
    wfile=$RUN/tmp/watch_stream_$rep.txt
    watch_start "$wfile"
    sleep 0.5
    mark=$(cpu_mark)
    m0=$(metrics_mark)
    t0=$(now_s)
    ((profiled)) && perf_profile stream "$((STREAM_SECS / 2 > 20 ? 20 : STREAM_SECS / 2))"
    churn "$STREAM_SECS" >"$RUN/tmp/stream_pgbench_$rep.txt" 2>&1
    t1=$(now_s)
    end=$(current_lsn)
    # Wait on the end LSN first (no counting competes with deriver while it catches up) ...
    wait_applied "$end" 3600 >/dev/null || die "deriver did not reach $end"
    ((profiled)) || cpu_figures stream "$rep" "$mark"
    # ... then find when it passed the window's last commit.
    read -r changes txns last <<<"$(count_changes bench_count "$end")"
    drop_slot bench_count
    reached=$(wait_watch "$wfile" "$(lsn_to_int "$last")" 60) || die "the watcher never saw $last"
    watch_stop
    perf_wait stream
    secs=$(calc "$reached / 1000 - $t0")
    tps=$(awk '/^tps = / { print $3 }' "$RUN/tmp/stream_pgbench_$rep.txt" | tail -1)
    echo "rep $rep: $changes changes, $txns txns; pgbench ran $(calc "$t1 - $t0") s at $tps tps; applied after $secs s"
    ((profiled)) && continue
    figure stream applied_changes_per_s changes/s "$rep" "$(calc "$changes / $secs")"
    figure stream applied_txns_per_s txns/s "$rep" "$(calc "$txns / $secs")"
    figure stream offered_changes_per_s changes/s "$rep" "$(calc "$changes / ($t1 - $t0)")"
    figure stream lag_at_end s "$rep" "$(calc "$reached / 1000 - $t1")"
    batch_figures stream "$rep" "$m0" "$(metrics_mark)" "$secs"
  done
}
