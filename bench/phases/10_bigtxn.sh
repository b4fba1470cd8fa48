# shellcheck shell=bash
# Memory under one huge transaction: INSERT of BIGTXN_ROWS small rows in one statement, then a
# DELETE of them in one statement; for each, deriver's peak RSS and the time from the COMMIT until
# deriver applied it (POST /v1/wait on the LSN read right after the COMMIT).
phase_bigtxn() {
  local reps rep t0 tc lsn wait_s peak what sql
  reps=$(state_get reps)
  ensure_deriver
  for ((rep = 1; rep <= reps; rep++)); do
    for what in insert delete; do
      if [[ $what == insert ]]; then
        sql="INSERT INTO doc(source, source_key, title, body) SELECT 'bulk', g::text, 'bulk row ' || g, 'small body of row ' || g FROM generate_series(1, $BIGTXN_ROWS) g"
      else
        sql="DELETE FROM doc WHERE source = 'bulk'"
      fi
      rss_start "$(deriver_pid)" "$RUN/tmp/rss_bigtxn_${what}_$rep.txt"
      t0=$(now_s)
      lsn=$(psqlq "$DB" -c "$sql" -c "SELECT pg_current_wal_insert_lsn()" | tail -1)
      tc=$(secs_since "$t0")
      wait_s=$(wait_applied "$lsn" 1800) || die "deriver did not apply the $what of $BIGTXN_ROWS rows"
      peak=$(rss_stop "$RUN/tmp/rss_bigtxn_${what}_$rep.txt")
      figure bigtxn "${what}_peak_anon_rss" MiB "$rep" "$(rss_anon_peak "$RUN/tmp/rss_bigtxn_${what}_$rep.txt")"
      echo "rep $rep $what: statement+commit $tc s, applied $wait_s s after the commit, peak RSS $peak MiB"
      figure bigtxn "${what}_peak_rss" MiB "$rep" "$peak"
      figure bigtxn "${what}_rss_after" MiB "$rep" "$(rss_now "$(deriver_pid)")"
      figure bigtxn "${what}_apply_secs" s "$rep" "$wait_s"
      figure bigtxn "${what}_rows_per_s" rows/s "$rep" "$(calc "$BIGTXN_ROWS / $wait_s")"
    done
  done
}
