# shellcheck shell=bash
# Audit speed (issue 7): `deriver audit docs` (every document and Redis view compared with a fresh
# derivation, the daemon running) against a plain bulk derivation of the same rows: the
# pipeline's own bulk SQL read and turned into records by deriver's `row_to_record`, nothing
# compared or written (`bench_raw_tantivy --reps 0`, the first step of the raw tantivy limit).
# Both are whole processes timed from start to exit. The extra last repetition is profiled.
phase_audit() {
  local reps rep docs t0 secs bulk bin url out peak drifted
  reps=$(state_get reps)
  ensure_deriver
  bin=$(state_get raw_tantivy_bin)
  url="postgres://postgres@127.0.0.1:$(state_get pgport)/$DB"
  # Nothing in flight: the audit should find nothing to re-check.
  wait_applied "$(current_lsn)" 600 >/dev/null || die "deriver did not catch up before the audit"
  # Warm-up (untimed): both measurements read the same rows; neither should pay a cold cache.
  "$bin" --pipeline "$BENCH/pipelines/docs.yaml" --url "$url" --dir "$CACHE/run/raw_audit" --reps 0 2>&1 | tail -1
  for ((rep = 1; rep <= reps + 1; rep++)); do
    local profiled=0
    if ((rep == reps + 1)); then
      [[ $PERF == 1 ]] || break
      profiled=1
    fi
    docs=$(psqlq "$DB" -c "SELECT count(*) FROM doc")
    t0=$(now_s)
    "$bin" --pipeline "$BENCH/pipelines/docs.yaml" --url "$url" --dir "$CACHE/run/raw_audit" --reps 0 2>&1 | tail -1
    bulk=$(secs_since "$t0")
    out=$RUN/tmp/audit_$rep.json
    ((profiled)) && perf_profile audit "$(awk -v b="$bulk" 'BEGIN { s = int(b * 3) + 2; print (s > 60 ? 60 : s) }')"
    t0=$(now_s)
    (cd "$ROOT" && exec /usr/bin/time -f '%M %e %U %S' -o "$RUN/tmp/audit_time_$rep.txt" "$(DERIVER_BIN)" --config "$STATE/deriver.toml" audit docs --json) >"$out" &
    local pid=$!
    # perf's per-process reports follow the audit process, not the daemon.
    ((profiled)) && [[ -e $RUN/perf/audit.info ]] && sleep 0.2 && echo "$(pgrep -P "$pid" -x deriver || echo "$pid") $(cut -d' ' -f2 "$RUN/perf/audit.info")" >"$RUN/perf/audit.info"
    wait "$pid" || die "deriver audit failed or found drift (exit $?): $(head -c 2000 "$out")"
    secs=$(secs_since "$t0")
    perf_wait audit
    drifted=$(jq -r '.pipelines[0].drifted' "$out")
    peak=$(awk '{ printf "%.1f", $1 / 1024 }' "$RUN/tmp/audit_time_$rep.txt")
    echo "rep $rep: $docs docs; bulk derivation $bulk s, audit $secs s ($(jq -r '.pipelines[0].seconds' "$out") s inside), drifted $drifted, audit peak RSS $peak MiB"
    ((profiled)) && continue
    figure audit docs docs "$rep" "$docs"
    figure audit bulk_derivation_secs s "$rep" "$bulk"
    figure audit audit_secs s "$rep" "$secs"
    figure audit audit_docs_per_s docs/s "$rep" "$(calc "$docs / $secs")"
    figure audit audit_over_bulk ratio "$rep" "$(calc "$secs / $bulk")"
    figure audit audit_peak_rss MiB "$rep" "$peak"
    figure audit audit_cpu_secs s "$rep" "$(awk '{ printf "%.3f", $3 + $4 }' "$RUN/tmp/audit_time_$rep.txt")"
    figure audit drifted keys "$rep" "$drifted"
  done
  rm -rf "$CACHE/run/raw_audit"
}
