# shellcheck shell=bash
# Search: 200 keyword queries from the corpus vocabulary (100 distinct title words, 100 body words
# picked by position, so frequent words are well represented), through deriver's search API and
# through Postgres full-text search on the same rows (a tsvector copy of doc with a GIN index,
# plainto_tsquery('simple', w), ts_rank, top 10), alternating, after one warm-up pass. The words
# go as typed (deriver's defaults: the word is a prefix, typos from 5 letters), and before that,
# in the same run, as exact, prefix and typo variants, each with its own p50/p99.
phase_search() {
  local t0 words=$RUN/tmp/search_words.txt
  ensure_deriver
  psqlq "$DB" -c "SELECT setseed(0.42)" -c "
    (SELECT w FROM (SELECT DISTINCT w FROM (SELECT regexp_split_to_table(lower(title), '[^a-z]+') AS w
                                            FROM doc TABLESAMPLE BERNOULLI (2) REPEATABLE (7)) t
                    WHERE length(w) BETWEEN 4 AND 20) d ORDER BY md5(w) LIMIT 100)
    UNION
    (SELECT w FROM (SELECT regexp_split_to_table(lower(body), '[^a-z]+') AS w
                    FROM doc TABLESAMPLE BERNOULLI (0.2) REPEATABLE (11)) b
     WHERE length(w) BETWEEN 3 AND 20 ORDER BY random() LIMIT 150)" | awk 'NF && ++n <= 200' >"$words" # NF: not setseed's empty line
  figure search queries n 1 "$(wc -l <"$words")"
  # Postgres FTS on the same rows: an unlogged copy (no WAL, nothing for deriver to decode).
  t0=$(now_s)
  PGOPTIONS='-c maintenance_work_mem=1GB' psqlq "$DB" -c "DROP TABLE IF EXISTS doc_fts" \
    -c "CREATE UNLOGGED TABLE doc_fts AS SELECT id, title, to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(body, '')) AS tsv FROM doc" \
    -c "CREATE INDEX doc_fts_tsv ON doc_fts USING gin (tsv)" -c "VACUUM ANALYZE doc_fts"
  figure search postgres_fts_build_secs s 1 "$(secs_since "$t0")"
  local out line rep
  out=$RUN/tmp/search.jsonl
  "$(CLIENT_BIN)" search --http "$(HTTP_URL)" --pg "postgres://postgres@127.0.0.1:$PGPORT/$DB" --index docs \
    --words "$words" --reps "$(state_get reps)" --limit 10 --fts-table doc_fts | tee "$out"
  while read -r line; do
    rep=$(jq -r .rep <<<"$line")
    figure search deriver_p50 ms "$rep" "$(jq -r .deriver.p50 <<<"$line")"
    figure search deriver_p99 ms "$rep" "$(jq -r .deriver.p99 <<<"$line")"
    # Relevance variants of the same words, same run (the client's `variants`): exact (quoted),
    # prefix (the first half typed), one typo (words of 5+ letters, a space after).
    for v in exact prefix typo; do
      figure search "deriver_${v}_p50" ms "$rep" "$(jq -r ".deriver_$v.p50" <<<"$line")"
      figure search "deriver_${v}_p99" ms "$rep" "$(jq -r ".deriver_$v.p99" <<<"$line")"
      figure search "deriver_${v}_queries" n "$rep" "$(jq -r ".deriver_$v.n" <<<"$line")"
      # A variant that failed or matched nothing would be fast for the wrong reason.
      figure search "deriver_${v}_errors" n "$rep" "$(jq -r ".deriver_$v.errors" <<<"$line")"
      figure search "deriver_${v}_zero_hit_queries" n "$rep" "$(jq -r ".deriver_$v.zero_hits" <<<"$line")"
    done
    figure search postgres_p50 ms "$rep" "$(jq -r .postgres.p50 <<<"$line")"
    figure search postgres_p99 ms "$rep" "$(jq -r .postgres.p99 <<<"$line")"
    figure search deriver_errors n "$rep" "$(jq -r .deriver_errors <<<"$line")"
    figure search deriver_zero_hit_queries n "$rep" "$(jq -r .deriver_zero_hits <<<"$line")"
    figure search postgres_zero_row_queries n "$rep" "$(jq -r .postgres_zero_rows <<<"$line")"
  done <"$out"
  psqlq "$DB" -c "DROP TABLE IF EXISTS doc_fts"
}
