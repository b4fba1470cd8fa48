"""The relevance settings through the real `meilisearch` Python client: settings read back and a
search with `distinct`. tests/relevance.rs runs it with MEILI_HOST and MEILI_KEY and checks the
JSON it prints."""

import json
import os

import meilisearch

client = meilisearch.Client(os.environ["MEILI_HOST"], os.environ["MEILI_KEY"])
rel = client.index("rel")
out = {}
out["distinct_attribute"] = rel.get_distinct_attribute()
out["stop_words"] = rel.get_stop_words()
typo = rel.get_typo_tolerance()
out["typo"] = {"enabled": typo.enabled, "one": typo.min_word_size_for_typos.one_typo, "two": typo.min_word_size_for_typos.two_typos}
res = rel.search("dinosaor ", {"distinct": "rating", "limit": 50})
out["distinct_typo"] = {"total": res["estimatedTotalHits"], "ratings": [h["rating"] for h in res["hits"]]}
print(json.dumps(out, default=str))
