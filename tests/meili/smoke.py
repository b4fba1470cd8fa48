"""Smoke test of deriver's Meilisearch-compatible API with the real `meilisearch` Python client
(the version pinned in requirements.txt, in the venv scripts/dev-stack.sh makes under
.dev/meili-clients/py). tests/meili_clients.rs runs it with MEILI_HOST and MEILI_KEY and checks
the JSON it prints."""

import json
import os

import meilisearch
from meilisearch.errors import MeilisearchApiError

client = meilisearch.Client(os.environ["MEILI_HOST"], os.environ["MEILI_KEY"])
films = client.index("films")
out = {}

out["health"] = client.health()
out["indexes"] = [i.uid for i in client.get_indexes()["results"]]
res = films.search("dinosaur", {"filter": ["rating = PG", ["rate = 0.99", "rate = 2.99"]], "facets": ["category"], "limit": 3})
out["search"] = {"total": res["estimatedTotalHits"], "hits": [h["film_id"] for h in res["hits"]], "ratings": sorted({h["rating"] for h in res["hits"]}), "facets": res["facetDistribution"]}
out["document"] = films.get_document(1).title
out["settings"] = films.get_settings()["filterableAttributes"]
try:
    films.add_documents([{"film_id": 1}])
    out["write"] = "accepted"
except MeilisearchApiError as e:
    out["write"] = {"code": e.code, "status": e.status_code}
try:
    films.search("x", {"filter": "title = x"})
    out["bad_filter"] = "accepted"
except MeilisearchApiError as e:
    out["bad_filter"] = {"code": e.code, "status": e.status_code, "message": e.message}
print(json.dumps(out, default=str))
