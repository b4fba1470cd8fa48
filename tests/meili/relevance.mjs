// The relevance settings of a search target through the real `meilisearch` JS client: the
// settings it reads back, and searches with typos, a prefix, synonyms, stop words and
// `distinct`. tests/relevance.rs runs it (MEILI_CLIENTS, MEILI_HOST, MEILI_KEY) and checks the
// JSON it prints against SQL.
import { pathToFileURL } from "node:url";

const dir = process.env.MEILI_CLIENTS;
const { Meilisearch } = await import(pathToFileURL(`${dir}/node_modules/meilisearch/dist/index.js`).href);
const client = new Meilisearch({ host: process.env.MEILI_HOST, apiKey: process.env.MEILI_KEY });
const rel = client.index("rel");
const out = {};

async function call(name, f) {
  try {
    out[name] = await f();
  } catch (e) {
    out[name] = { error: { code: e.cause?.code ?? null, status: e.response?.status ?? null, message: e.message } };
  }
}

const total = (r) => r.estimatedTotalHits;
await call("settings", () => rel.getSettings());
await call("synonyms", () => rel.getSynonyms());
await call("typo", async () => total(await rel.search("dinosaor ", { limit: 0 })));
await call("exact", async () => total(await rel.search("dinosaur ", { limit: 0 })));
await call("prefix", async () => total(await rel.search("dino", { limit: 0 })));
await call("prefix_done", async () => total(await rel.search("dino ", { limit: 0 })));
await call("synonym", async () => total(await rel.search("reptile ", { limit: 0 })));
await call("stop_words", async () => total(await rel.search("the dinosaur ", { limit: 0 })));
await call("distinct", async () => {
  const r = await rel.search("", { distinct: "rating", facets: ["rating"], limit: 50 });
  return { total: total(r), ratings: r.hits.map((h) => h.rating), facets: r.facetDistribution };
});
await call("distinct_pages", async () => {
  const seen = [];
  for (let page = 1; page <= 10; page++) {
    const r = await rel.search("", { distinct: "rating", hitsPerPage: 2, page });
    seen.push(...r.hits.map((h) => h.rating));
    if (r.hits.length < 2) break;
  }
  return seen;
});
await call("distinct_bad", () => rel.search("", { distinct: "title" }));
console.log(JSON.stringify(out));
