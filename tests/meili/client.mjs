// Drives every route of deriver's Meilisearch-compatible API with the real `meilisearch` JS client
// (the version pinned in package.json, installed by scripts/dev-stack.sh into .dev/meili-clients).
// tests/meili_clients.rs runs it against a daemon on real Postgres and checks what it prints: one
// JSON object, each call's answer (or its error: code, type, status, message) under a name.
//
// Environment: MEILI_CLIENTS (the install directory), MEILI_HOST, MEILI_KEY, and for
// read-your-writes MIN_LSN with RYW_ID (a film committed at that LSN just before this started).
import { pathToFileURL } from "node:url";

const dir = process.env.MEILI_CLIENTS;
const { Meilisearch } = await import(pathToFileURL(`${dir}/node_modules/meilisearch/dist/index.js`).href);
const { generateTenantToken } = await import(pathToFileURL(`${dir}/node_modules/meilisearch/dist/token.js`).href);

const host = process.env.MEILI_HOST;
const apiKey = process.env.MEILI_KEY;
const client = new Meilisearch({ host, apiKey });
const films = client.index("films");
const out = {};

async function call(name, f) {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: { code: e.cause?.code ?? null, type: e.cause?.type ?? null, link: e.cause?.link ?? null, status: e.response?.status ?? null, message: e.message } };
  }
}

const count = (filter) => films.search("", { filter, limit: 0 }).then((r) => r.estimatedTotalHits);

// Read-your-writes first, before anything else gave the daemon time: the parameter, then the header.
await call("ryw_param", () => films.search("quokka", { minLsn: process.env.MIN_LSN, timeoutMs: 10000 }));
const withHeader = new Meilisearch({ host, apiKey, requestInit: { headers: { "X-Deriver-Min-Lsn": process.env.MIN_LSN } } });
await call("ryw_header", () => withHeader.index("films").getDocument(process.env.RYW_ID));

await call("health", () => client.health());
await call("version", () => client.getVersion());
await call("indexes", async () => (await client.getIndexes()).results.map((i) => ({ uid: i.uid, primaryKey: i.primaryKey })));
await call("index", async () => {
  const i = await client.getIndex("films");
  return { uid: i.uid, primaryKey: i.primaryKey };
});
await call("raw_index", async () => {
  const raw = await client.getRawIndex("films");
  return { ...raw, dates: !isNaN(Date.parse(raw.createdAt)) && !isNaN(Date.parse(raw.updatedAt)) };
});
await call("stats", () => films.getStats());
await call("global_stats", () => client.getStats());
await call("settings", () => films.getSettings());
await call("filterable", () => films.getFilterableAttributes());
await call("keys", () => client.getKeys());
await call("tasks", () => client.tasks.getTasks());

await call("search", () =>
  films.search("dinosaur", {
    filter: "rating = PG AND rate >= 2.99",
    facets: ["rating", "category", "rate"],
    limit: 5,
    attributesToRetrieve: ["film_id", "title", "description", "rating", "rate"],
    attributesToHighlight: ["title", "description"],
    highlightPreTag: "<b>",
    highlightPostTag: "</b>",
    attributesToCrop: ["description"],
    cropLength: 5,
    showMatchesPosition: true,
    showRankingScore: true,
  }),
);
await call("search_get", () => films.searchGet("academy", { filter: "rating = PG", limit: 3, attributesToRetrieve: ["film_id", "title"] }));
await call("sorted", () => films.search("", { sort: ["rate:desc", "release_year:asc"], limit: 30, attributesToRetrieve: ["film_id", "rate", "release_year"] }));
await call("paged", () => films.search("", { filter: "rating = G", hitsPerPage: 7, page: 3, attributesToRetrieve: ["film_id"] }));
await call("counts", async () => ({
  eq: await count("rating = 'NC-17'"),
  ne: await count("rating != G"),
  gt: await count("rate > 2.99"),
  lte: await count("rate <= 0.99"),
  to: await count("release_year 2006 TO 2010"),
  in: await count("category IN [Action, 'Sci-Fi', Documentary]"),
  not_in: await count("category NOT IN [Action]"),
  exists: await count("category EXISTS"),
  not_exists: await count("category NOT EXISTS"),
  is_null: await count("category IS NULL"),
  or_and: await count("(rating = G OR rating = PG) AND NOT rate = 4.99"),
  array: await count([["rating = G", "rating = PG"], "copies > 5"]),
}));
await call("multi", () =>
  client.multiSearch({ queries: [{ indexUid: "films", q: "dinosaur", limit: 2 }, { indexUid: "films", q: "", filter: "rating = R", limit: 0 }] }),
);
await call("federated", () =>
  client.multiSearch({ federation: { limit: 6 }, queries: [{ indexUid: "films", q: "dinosaur" }, { indexUid: "films", q: "academy", federationOptions: { weight: 2 } }] }),
);
await call("facet_search", () => films.searchForFacetValues({ facetName: "category", facetQuery: "doc" }));
await call("facet_search_filtered", () => films.searchForFacetValues({ facetName: "rating", facetQuery: "", filter: "category = Documentary" }));
await call("document", () => films.getDocument(1, { fields: ["film_id", "title"] }));
await call("documents", () => films.getDocuments({ offset: 10, limit: 3, fields: ["film_id", "title"] }));
await call("documents_filtered", () => films.getDocuments({ filter: "rating = G", limit: 2, fields: ["film_id", "rating"] }));

// Errors, with Meilisearch's codes.
await call("err_index", () => client.index("nope").search("x"));
await call("err_filter", () => films.search("x", { filter: "title = x" }));
await call("err_filter_syntax", () => films.search("x", { filter: "rating = " }));
await call("err_sort", () => films.search("x", { sort: ["title:asc"] }));
await call("err_document", () => films.getDocument(987654));
await call("err_add", () => films.addDocuments([{ film_id: 1, title: "x" }]));
await call("err_settings", () => films.updateSettings({ stopWords: ["the"] }));
await call("err_delete", () => films.deleteDocument(1));
await call("err_create", () => client.createIndex("other"));
await call("err_no_key", () => new Meilisearch({ host }).getIndexes());
await call("err_bad_key", () => new Meilisearch({ host, apiKey: "wrong" }).getIndexes());

// Tenant tokens, signed with the key, whose filter holds on every search.
const uid = out.keys.results?.[0]?.uid;
const tenant = async (searchRules, expiresAt) => new Meilisearch({ host, apiKey: await generateTenantToken({ apiKey, apiKeyUid: uid, searchRules, expiresAt }) });
const g = await tenant({ films: { filter: "rating = G" } }, new Date(Date.now() + 3600_000));
await call("tenant_search", () => g.index("films").search("", { limit: 50, attributesToRetrieve: ["rating"] }));
await call("tenant_widen", () => g.index("films").search("", { filter: "rating = PG", limit: 0 }));
await call("tenant_multi", () => g.multiSearch({ queries: [{ indexUid: "films", limit: 0 }] }));
await call("tenant_documents", () => g.index("films").getDocuments({ limit: 1 }));
await call("tenant_other_index", async () => (await tenant(["actors"])).index("films").search(""));
await call("tenant_expired", async () => (await tenant(["*"], Math.floor(Date.now() / 1000) - 10)).index("films").search(""));
await call("tenant_forged", async () => {
  const token = await generateTenantToken({ apiKey: "not-the-key", apiKeyUid: uid, searchRules: ["*"] });
  return new Meilisearch({ host, apiKey: token }).index("films").search("");
});

process.stdout.write(JSON.stringify(out));
