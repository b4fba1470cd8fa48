# shellcheck shell=bash
# Raw limit (c): pipelined HSET of deriver-shaped hashes (3 fields), redis-benchmark, 4 clients,
# pipeline depth 64, random keys, into a scratch database (--dbnum 9) of the same AOF-everysec Redis.
phase_raw_redis() {
  local reps rep out rps port
  reps=$(state_get reps)
  port=$(state_get redisport)
  for ((rep = 1; rep <= reps; rep++)); do
    out=$(redis-benchmark -h 127.0.0.1 -p "$port" --dbnum 9 -c 4 -P 64 -n "$REDIS_N" -r 1000000 --csv \
      HSET 'doc:__rand_int__' title 'abacus: a frame with beads sliding on wires, for calculating' \
      source gcide updated_at '2025-01-01T00:00:00.000000+00:00')
    echo "$out"
    rps=$(printf '%s\n' "$out" | awk -F'","' 'NR == 2 { print $2 }')
    [[ -n $rps ]] || die "could not read redis-benchmark's output"
    figure raw_redis hset_per_s ops/s "$rep" "$rps"
    redis-cli -p "$port" -n 9 flushdb >/dev/null
  done
}
