# shellcheck shell=bash
# Full reindex: `deriver reindex docs` asks the running daemon to build a new generation (and
# rewrite the Redis views) from a snapshot, follows it until the new generation is live; docs/s,
# and deriver's peak RSS meanwhile. The extra last repetition is profiled (perf), not counted.
phase_reindex() {
  local reps rep docs t0 secs peak mark
  reps=$(state_get reps)
  ensure_deriver
  for ((rep = 1; rep <= reps + 1; rep++)); do
    local profiled=0
    if ((rep == reps + 1)); then
      [[ $PERF == 1 ]] || break
      profiled=1
    fi
    docs=$(psqlq "$DB" -c "SELECT count(*) FROM doc")
    rss_start "$(deriver_pid)" "$RUN/tmp/rss_reindex_$rep.txt"
    mark=$(cpu_mark)
    ((profiled)) && perf_profile reindex 20
    t0=$(now_s)
    deriver_cli reindex docs
    secs=$(secs_since "$t0")
    peak=$(rss_stop "$RUN/tmp/rss_reindex_$rep.txt")
    anon=$(rss_anon_peak "$RUN/tmp/rss_reindex_$rep.txt")
    perf_wait reindex
    echo "rep $rep: $docs docs in $secs s, peak RSS $peak MiB"
    ((profiled)) && continue
    cpu_figures reindex "$rep" "$mark"
    figure reindex docs_per_s docs/s "$rep" "$(calc "$docs / $secs")"
    figure reindex secs s "$rep" "$secs"
    figure reindex peak_rss MiB "$rep" "$peak"
    figure reindex peak_anon_rss MiB "$rep" "$anon"
    figure reindex rss_after MiB "$rep" "$(rss_now "$(deriver_pid)")"
  done
}
