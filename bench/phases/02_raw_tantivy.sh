# shellcheck shell=bash
# Raw limit (b): deriver's own schema code writing the same records straight to a tantivy
# IndexWriter (examples/bench_raw_tantivy.rs): bulk (add all + one commit) and upsert
# (delete_term + add, a commit every 5000), with deriver's writer settings (1 thread, 128 MB),
# and once with 2 indexing threads for comparison.
phase_raw_tantivy() {
  local bin out dir url
  bin=$(state_get raw_tantivy_bin)
  dir=$CACHE/run/raw_tantivy
  url="postgres://postgres@127.0.0.1:$(state_get pgport)/$DB"
  out=$RUN/tmp/raw_tantivy.jsonl
  "$bin" --pipeline "$BENCH/pipelines/docs.yaml" --url "$url" --dir "$dir" --reps "$(state_get reps)" \
    --threads 1 --writer-mb 128 --upsert-docs "$UPSERT_DOCS" --commit-every 5000 | tee "$out"
  local line rep
  while read -r line; do
    rep=$(jq -r .rep <<<"$line")
    figure raw_tantivy bulk_docs_per_s docs/s "$rep" "$(jq -r .bulk_docs_per_s <<<"$line")"
    figure raw_tantivy upsert_docs_per_s docs/s "$rep" "$(jq -r .upsert_docs_per_s <<<"$line")"
    figure raw_tantivy index_size MiB "$rep" "$(jq -r '.index_bytes / 1048576' <<<"$line")"
    if ((rep == 1)); then
      figure raw_tantivy postgres_bulk_read_docs_per_s docs/s 1 "$(jq -r '.read_records / .read_secs' <<<"$line")"
    fi
  done <"$out"
  # Informational: the same bulk load with 2 indexing threads (deriver uses 1).
  "$bin" --pipeline "$BENCH/pipelines/docs.yaml" --url "$url" --dir "$dir" --reps 1 --threads 2 --writer-mb 256 \
    --upsert-docs 1 | tee "$RUN/tmp/raw_tantivy_2threads.jsonl"
  figure raw_tantivy bulk_2threads_docs_per_s docs/s 1 "$(jq -r .bulk_docs_per_s "$RUN/tmp/raw_tantivy_2threads.jsonl")"
  rm -rf "$dir"
}
