# shellcheck shell=bash
# First start: `deriver setup`, then `deriver run` creates its slot and derives every document into
# tantivy and Redis (the "full reindex" at first start), until every pipeline streams.
phase_snapshot() {
  local docs t0 secs peak mark
  deriver_cli setup
  docs=$(psqlq "$DB" -c "SELECT count(*) FROM doc")
  mark=$(cpu_mark)
  t0=$(now_s)
  deriver_start deriver
  rss_start "$(deriver_pid)" "$RUN/tmp/rss_snapshot.txt"
  wait_streaming 7200 || die "deriver did not finish its initial snapshot (logs/deriver.log)"
  secs=$(secs_since "$t0")
  peak=$(rss_stop "$RUN/tmp/rss_snapshot.txt")
  figure snapshot docs docs 1 "$docs"
  figure snapshot secs s 1 "$secs"
  figure snapshot docs_per_s docs/s 1 "$(calc "$docs / $secs")"
  figure snapshot peak_rss MiB 1 "$peak"
  cpu_figures snapshot 1 "$mark"
  figure snapshot index_size MiB 1 "$(du -sm "$CACHE/run/index" | cut -f1)"
  figure snapshot redis_used_memory MiB 1 "$(redis-cli -p "$(state_get redisport)" info memory | awk -F: '/^used_memory:/ { printf "%.1f", $2 / 1048576 }')"
}
