# shellcheck shell=bash
# Raw limit (a): how fast the walsender decodes the churn workload with pgoutput. A pgoutput slot
# and a test_decoding slot (for counting) are created, pgbench churn runs DECODE_SECS at full rate
# (also the most this machine can generate), then pg_recvlogical drains the pgoutput slot up to the
# end LSN (--endpos) and is timed.
phase_raw_decode() {
  local reps rep t0 secs end changes txns last tps
  reps=$(state_get reps)
  psqlq "$DB" -c "DROP PUBLICATION IF EXISTS bench_raw" -c "CREATE PUBLICATION bench_raw FOR TABLE doc"
  for ((rep = 1; rep <= reps; rep++)); do
    drop_slot bench_decode
    drop_slot bench_count
    psqlq "$DB" -c "SELECT pg_create_logical_replication_slot('bench_decode', 'pgoutput')" \
      -c "SELECT pg_create_logical_replication_slot('bench_count', 'test_decoding')" >/dev/null
    churn "$DECODE_SECS" >"$RUN/tmp/decode_pgbench_$rep.txt" 2>&1
    tps=$(awk '/^tps = / { print $3 }' "$RUN/tmp/decode_pgbench_$rep.txt" | tail -1)
    end=$(current_lsn)
    t0=$(now_s)
    timeout 1800 "$PG_BIN/pg_recvlogical" -d "host=127.0.0.1 port=$PGPORT user=postgres dbname=$DB" --slot bench_decode \
      --start -o proto_version=1 -o publication_names=bench_raw -E "$end" -F 0 -s 10 --no-loop -f /dev/null
    secs=$(secs_since "$t0")
    read -r changes txns last <<<"$(count_changes bench_count "$end")"
    drop_slot bench_decode
    drop_slot bench_count
    echo "rep $rep: $changes changes in $txns transactions, drained in $secs s (pgbench $tps tps)"
    figure raw_decode decode_changes_per_s changes/s "$rep" "$(calc "$changes / $secs")"
    figure raw_decode decode_txns_per_s txns/s "$rep" "$(calc "$txns / $secs")"
    figure raw_decode churn_max_changes_per_s changes/s "$rep" "$(calc "$changes / $DECODE_SECS")"
    figure raw_decode churn_max_tps txns/s "$rep" "$tps"
    state_set changes_per_txn "$(calc "$changes / $txns")"
  done
  psqlq "$DB" -c "DROP PUBLICATION IF EXISTS bench_raw"
}
