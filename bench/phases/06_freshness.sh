# shellcheck shell=bash
# Freshness: commit-to-visible latency (examples/bench_client.rs probe: UPDATE, COMMIT,
# pg_current_wal_insert_lsn(), POST /v1/wait) every 50 ms while pgbench churns at half the rate
# deriver sustained in the streaming phase; and once with no churn at all.
phase_freshness() {
  local reps rep rate out applied
  reps=$(state_get reps)
  ensure_deriver
  applied=$(awk -F'\t' '$1 == "stream" && $2 == "applied_txns_per_s" { print $5 }' "$RUN/figures.tsv" | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')
  local basis="half the sustained rate"
  if [[ -z $applied ]]; then
    applied=$(awk -F'\t' '$1 == "raw_decode" && $2 == "churn_max_tps" { print $5 }' "$RUN/figures.tsv" | sort -n | awk 'NR == 1')
    note freshness "no streaming figure: half of pgbench's maximum rate instead"
    basis="half of pgbench's maximum rate, not of the sustained one: the stream phase did not run"
  fi
  rate=$(awk -v a="${applied:-200}" 'BEGIN { r = int(a / 2); print (r < 1 ? 1 : r) }')
  if [[ -n ${BENCH_FRESH_RATE:-} ]]; then
    rate=$BENCH_FRESH_RATE
    note freshness "churn at $rate txns/s (BENCH_FRESH_RATE) during the probes"
  else
    note freshness "churn at $rate txns/s ($basis) during the probes"
  fi
  figure freshness churn_rate txns/s 1 "$rate"
  for ((rep = 1; rep <= reps; rep++)); do
    churn "$FRESH_SECS" -R "$rate" >"$RUN/tmp/fresh_pgbench_$rep.txt" 2>&1 &
    local churn_pid=$!
    sleep 2
    out=$("$(CLIENT_BIN)" probe --http "$(HTTP_URL)" --pg "postgres://postgres@127.0.0.1:$PGPORT/$DB" --index docs \
      --duration-s "$((FRESH_SECS - 4))" --interval-ms 50 --timeout-ms 5000 --out "$RUN/tmp/fresh_samples_$rep.tsv")
    wait "$churn_pid" || true
    echo "rep $rep: $out"
    figure freshness p50 ms "$rep" "$(jq -r .p50 <<<"$out")"
    figure freshness p99 ms "$rep" "$(jq -r .p99 <<<"$out")"
    figure freshness max ms "$rep" "$(jq -r .max <<<"$out")"
    figure freshness samples n "$rep" "$(jq -r .n <<<"$out")"
    figure freshness timeouts n "$rep" "$(jq -r .timeouts <<<"$out")"
    figure freshness stale_after_wait n "$rep" "$(jq -r .stale_after_wait <<<"$out")"
  done
  # No churn: the same probe on a quiet database.
  out=$("$(CLIENT_BIN)" probe --http "$(HTTP_URL)" --pg "postgres://postgres@127.0.0.1:$PGPORT/$DB" --index docs \
    --samples 200 --interval-ms 50 --timeout-ms 5000 --out "$RUN/tmp/fresh_samples_idle.tsv")
  echo "idle: $out"
  figure freshness idle_p50 ms 1 "$(jq -r .p50 <<<"$out")"
  figure freshness idle_p99 ms 1 "$(jq -r .p99 <<<"$out")"
  figure freshness idle_max ms 1 "$(jq -r .max <<<"$out")"
}
