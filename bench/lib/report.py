#!/usr/bin/env python3
"""Aggregates a bench run (figures.tsv, machine.tsv, phases.tsv, notes.tsv) into results.md and
results.tsv: every figure as median/min/max over its repetitions, the ratios to the raw limits
measured in the same run, and one met / not met line per target. Usage: report.py RUN_DIR"""

import os
import statistics
import sys

run = sys.argv[1]


def read_tsv(name):
    path = os.path.join(run, name)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


machine = read_tsv("machine.tsv")
phases = read_tsv("phases.tsv")
notes = read_tsv("notes.tsv")

# (phase, name) -> {"unit": u, "values": [..]}, in first-seen order
figures = {}
for row in read_tsv("figures.tsv"):
    if len(row) < 5:
        continue
    phase, name, unit, rep, value = row[:5]
    try:
        v = float(value)
    except ValueError:
        continue
    if v != v:  # NaN
        continue
    figures.setdefault((phase, name), {"unit": unit, "values": []})["values"].append(v)


def stats(phase, name):
    f = figures.get((phase, name))
    if not f or not f["values"]:
        return None
    vs = f["values"]
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs), "unit": f["unit"], "values": vs}


def med(phase, name):
    s = stats(phase, name)
    return None if s is None else s["median"]


def fmt(v):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# ------------------------------------------------------------------------------------- ratios
ratios = []  # (name, median, min, max, definition)


def ratio(name, num_phase, num_name, den_value, den_text, invert=False):
    s = stats(num_phase, num_name)
    if s is None or not den_value:
        ratios.append((name, None, None, None, den_text))
        return None
    if invert:  # den / value (e.g. Postgres p99 over deriver p99)
        vals = [den_value / v for v in s["values"] if v > 0]
    else:
        vals = [v / den_value for v in s["values"]]
    if not vals:
        ratios.append((name, None, None, None, den_text))
        return None
    r = (statistics.median(vals), min(vals), max(vals))
    ratios.append((name, *r, den_text))
    return r[0]


decode = med("raw_decode", "decode_changes_per_s")
upsert = med("raw_tantivy", "upsert_docs_per_s")
bulk = med("raw_tantivy", "bulk_docs_per_s")
stream_limit = min(x for x in (decode, upsert) if x) if (decode or upsert) else None
which = "pgoutput decode" if stream_limit == decode else "tantivy upsert"

# The headline streaming figure (issue 25): the drain of a recorded backlog (phase catchup: deriver
# stopped, churn at full rate, deriver started, changes/s until caught up, start-up included). It
# is deriver's own speed, not bounded by what pgbench can commit while deriver runs.
r_drain = ratio("backlog drain / min(decode, tantivy upsert)", "catchup", "changes_per_s", stream_limit,
                f"backlog drain changes/s (phase catchup) ÷ {fmt(stream_limit)} ({which} limit)")
# The live stream (churn while deriver runs) cannot apply more than pgbench commits meanwhile on
# the same cores: informational. Old names kept in results.tsv (ALIASES).
r_stream = ratio("live stream / min(decode, tantivy upsert) (informational)", "stream", "applied_changes_per_s", stream_limit,
                 f"live-stream applied changes/s ÷ {fmt(stream_limit)} ({which} limit); bounded by what pgbench commits (see ceilings)")
s_app, s_off = stats("stream", "applied_changes_per_s"), stats("stream", "offered_changes_per_s")
if s_app and s_off and len(s_app["values"]) == len(s_off["values"]):
    vals = [a / o for a, o in zip(s_app["values"], s_off["values"]) if o]
    if vals:
        ratios.append(("live stream applied / offered by pgbench", statistics.median(vals), min(vals), max(vals),
                       "1.0 = deriver kept up with everything pgbench committed"))
if stats("catchup", "before_changes_per_s"):
    ratio("backlog drain BEFORE (BENCH_CATCHUP_BEFORE settings) / min(decode, tantivy upsert)", "catchup", "before_changes_per_s", stream_limit,
          f"drain changes/s with the settings in the catchup note, interleaved with the drains above ÷ {fmt(stream_limit)} ({which} limit)")
r_catchup = ratio("catch-up / decode", "catchup", "changes_per_s", decode, f"catch-up changes/s ÷ {fmt(decode)} (decode limit)")
r_reindex = ratio("reindex / tantivy bulk", "reindex", "docs_per_s", bulk, f"reindex docs/s ÷ {fmt(bulk)} (tantivy bulk limit)")
r_snapshot = ratio("first-start snapshot / tantivy bulk", "snapshot", "docs_per_s", bulk, f"snapshot docs/s ÷ {fmt(bulk)} (tantivy bulk limit)")
# Audit: measured against a plain bulk derivation of the same rows in the same phase, per
# repetition (audit_over_bulk = audit secs ÷ bulk derivation secs).
s_aob = stats("audit", "audit_over_bulk")
r_audit = s_aob and s_aob["median"]
if s_aob:
    ratios.append(("audit / plain bulk derivation", s_aob["median"], s_aob["min"], s_aob["max"],
                   "deriver audit docs secs ÷ secs of the bulk SQL read into records (same rows, same phase)"))
else:
    ratios.append(("audit / plain bulk derivation", None, None, None, "audit phase not run"))
reindex_secs = med("reindex", "secs")
ratio("audit / full reindex", "audit", "audit_secs", reindex_secs, f"audit secs ÷ {fmt(reindex_secs)} s (median reindex secs)")
# deriver_p99 is the words as typed with deriver's defaults (typos and a prefix on the last word
# on), which Postgres FTS does not do; the comparison with Postgres uses the exact (quoted) queries
# of the same words, like for like. As typed against Postgres is listed for reference only.
pg_p99 = med("search", "postgres_p99")
r_search = ratio("search p99: Postgres FTS / deriver exact", "search", "deriver_exact_p99", pg_p99,
                 f"{fmt(pg_p99)} ms (Postgres p99) ÷ deriver p99 of the same words exact (quoted: no typos, no prefix), like for like",
                 invert=True)
ratio("search p99: Postgres FTS / deriver as typed (reference)", "search", "deriver_p99", pg_p99,
      f"{fmt(pg_p99)} ms (Postgres p99) ÷ deriver p99 of the words as typed (defaults: typos and prefix on; Postgres does neither)",
      invert=True)
exact_p99 = med("search", "deriver_exact_p99")
exact_p50 = med("search", "deriver_exact_p50")
for v in ("prefix", "typo"):
    ratio(f"search p99: {v} queries / exact ones", "search", f"deriver_{v}_p99", exact_p99,
          f"deriver p99 of {v} queries ÷ {fmt(exact_p99)} ms (p99 of the same words exact, same run)")
for v in ("prefix", "typo"):
    # The medians move less than the tails on a shared machine.
    ratio(f"search p50: {v} queries / exact ones", "search", f"deriver_{v}_p50", exact_p50,
          f"deriver p50 of {v} queries ÷ {fmt(exact_p50)} ms (p50 of the same words exact, same run)")

# Scaling with pipelines (phase scaling): the same drain with N pipelines on the same table.
SCALING = []  # (n, drain stats, work stats)
for (p, name) in figures:
    if p == "scaling" and name.startswith("drain_changes_per_s_"):
        try:
            SCALING.append(int(name.rsplit("_", 1)[1]))
        except ValueError:
            pass
SCALING.sort()
drain1 = med("scaling", "drain_changes_per_s_1")
work1 = med("scaling", "pipeline_changes_per_s_1")
for n in SCALING:
    if n == 1:
        continue
    ratio(f"scaling: drain with {n} pipelines / with 1", "scaling", f"drain_changes_per_s_{n}", drain1,
          f"backlog drain changes/s until every one of {n} pipelines caught up ÷ {fmt(drain1)} (1 pipeline); 1.0 = no slower")
    ratio(f"scaling: work with {n} pipelines / with 1", "scaling", f"pipeline_changes_per_s_{n}", work1,
          f"{n} × drain changes/s (changes applied summed over pipelines) ÷ {fmt(work1)} (1 pipeline); {n}.0 = no slower")

# ------------------------------------------------------------------------------------ ceilings
# What this machine allows, from figures of the same run: a target a ratio cannot reach here is
# shown with the measurement that bounds it.
ceilings = []  # (what, value, explanation)
cores = next((float(r[1]) for r in machine if r and r[0] == "cores" and len(r) > 1 and r[1].replace(".", "").isdigit()), None)
churn_max = med("raw_decode", "churn_max_changes_per_s")
if churn_max and stream_limit:
    ceilings.append(("live-stream ratio reachable with this workload (informational ratio)", churn_max / stream_limit,
                     f"pgbench alone (no deriver) commits at most {fmt(churn_max)} changes/s here; ÷ {fmt(stream_limit)} "
                     f"({which} limit). The live stream cannot apply more than is committed, so its ratio is bounded by this "
                     "whatever deriver does; `live stream applied / offered` says whether deriver kept up. The headline "
                     "backlog drain has no such bound: its backlog is recorded before deriver starts."))
def cpu_ceiling(what, phase, rate_name, unit, limit, limit_text, target):
    """The ratio `phase` could reach on this machine's cores at the CPU it spent per `unit`
    (deriver + Postgres + Redis; the bench's own clients not counted), whatever the scheduling."""
    used = [med(phase, k) for k in ("deriver_cpu_cores", "postgres_cpu_cores", "redis_cpu_cores")]
    rate = med(phase, rate_name)
    if not (cores and limit and rate) or any(v is None for v in used) or sum(used) <= 0:
        return
    per = sum(used) / rate  # CPU-seconds per unit
    ceiling = cores / per
    ceilings.append((f"{what} ratio reachable at the measured CPU cost per {unit}", ceiling / limit,
                     f"deriver + Postgres + Redis used {fmt(sum(used))} cores at {fmt(rate)} {unit}s/s = {per * 1e6:.0f} µs of "
                     f"CPU per {unit} (the bench's own clients not counted); {fmt(cores)} cores allow at most {fmt(ceiling)} "
                     f"{unit}s/s = {fmt(ceiling / limit)} × the {limit_text} ({fmt(limit)}, measured alone). Reaching {target} "
                     f"needs ≤ {cores / (target * limit) * 1e6:.0f} µs per {unit}."))


cpu_ceiling("reindex", "reindex", "docs_per_s", "document", bulk, "tantivy bulk limit", 0.8)
cpu_ceiling("backlog drain", "catchup", "changes_per_s", "change", stream_limit, f"{which} limit", 0.7)

# ------------------------------------------------------------------------------------ targets
targets = []  # (text, status, measured)


# phase -> (status, detail) from phases.tsv: a target that could not be measured says why.
phase_status = {row[0]: (row[1] if len(row) > 1 else "", row[3] if len(row) > 3 else "") for row in phases if row}
failed_phases = [(p, st, d) for p, (st, d) in phase_status.items() if st.startswith("FAILED")]


def target(text, value, ok, shown, needs=()):
    if value is None:
        why = [f"phase {p} {phase_status[p][0]}" if p in phase_status else f"phase {p} not run" for p in needs
               if phase_status.get(p, ("",))[0] != "ok"]
        targets.append((text, "NOT MEASURED", "; ".join(why) if why else "—"))
    else:
        targets.append((text, "met" if ok(value) else "NOT MET", shown))


drain_cps = med("catchup", "changes_per_s")
target("backlog drain ≥ 0.7 × min(pgoutput decode, tantivy upsert) (the streaming figure)", r_drain, lambda v: v >= 0.7,
       f"{fmt(r_drain)} ({fmt(drain_cps)} changes/s ÷ {fmt(stream_limit)}, the {which} limit)", ("catchup", "raw_decode", "raw_tantivy"))
f50, f99 = med("freshness", "p50"), med("freshness", "p99")
target("freshness p50 ≤ 30 ms (at half the sustained rate)", f50, lambda v: v <= 30, f"{fmt(f50)} ms", ("freshness",))
target("freshness p99 ≤ 150 ms (at half the sustained rate)", f99, lambda v: v <= 150, f"{fmt(f99)} ms", ("freshness",))
bi_rps, bd_rps = med("bigtxn", "insert_rows_per_s"), med("bigtxn", "delete_rows_per_s")
target("1M-row transaction applied at ≥ 50k rows/s (insert and delete)",
       None if bi_rps is None or bd_rps is None else min(bi_rps, bd_rps), lambda v: v >= 50000,
       f"insert {fmt(bi_rps)} rows/s, delete {fmt(bd_rps)} rows/s (medians)", ("bigtxn",))
bi = stats("bigtxn", "insert_peak_rss")
bd = stats("bigtxn", "delete_peak_rss")
big = max([s["max"] for s in (bi, bd) if s], default=None)
# The targets are judged on VmRSS (what `ps` shows); the anonymous part (RssAnon, without the
# pages of the memory-mapped index, which the kernel can reclaim) is shown beside it.
def anon_max(*names):
    vals = [s["max"] for s in (stats(*n) for n in names) if s]
    return f"; anonymous memory {fmt(max(vals))} MiB (max)" if vals else ""


target("peak RSS ≤ 512 MiB during a 1M-row transaction (insert and delete)", big, lambda v: v <= 512,
       f"{fmt(big)} MiB (max)" + anon_max(("bigtxn", "insert_peak_anon_rss"), ("bigtxn", "delete_peak_anon_rss")), ("bigtxn",))
target("full reindex ≥ 0.8 × tantivy bulk", r_reindex, lambda v: v >= 0.8, fmt(r_reindex), ("reindex", "raw_tantivy"))
rr = stats("reindex", "peak_rss")
target("reindex peak RSS ≤ 1 GiB", rr and rr["max"], lambda v: v <= 1024, f"{fmt(rr and rr['max'])} MiB (max over reps)", ("reindex",))
sp99 = med("search", "deriver_p99")
target("search p99 ≤ 20 ms (words as typed: deriver's defaults, typos and prefix on)", sp99, lambda v: v <= 20, f"{fmt(sp99)} ms", ("search",))
target("search p99 ≥ 30× better than Postgres FTS (exact queries against Postgres, like for like)", r_search, lambda v: v >= 30,
       f"{fmt(r_search)}× (deriver exact p99 {fmt(med('search', 'deriver_exact_p99'))} ms)", ("search",))
target("audit ≤ 2× plain bulk derivation", r_audit, lambda v: v <= 2.0, f"{fmt(r_audit)}×", ("audit",))
cu = stats("catchup", "peak_rss")
target("peak RSS ≤ 512 MiB during catch-up after stopped churn", cu and cu["max"], lambda v: v <= 512,
       f"{fmt(cu and cu['max'])} MiB (max)" + anon_max(("catchup", "peak_anon_rss")), ("catchup",))

# ------------------------------------------------------------------------------------ results.md
PHASE_TITLES = {
    "raw_redis": "Raw limit: Redis pipelined HSET",
    "raw_tantivy": "Raw limit: tantivy (deriver's schema, no deriver)",
    "raw_decode": "Raw limit: pgoutput decoding (pg_recvlogical)",
    "snapshot": "First start (snapshot of every document)",
    "stream": "Live stream under full-rate churn (informational; the streaming figure is the backlog drain)",
    "freshness": "Freshness (commit → visible, POST /v1/wait)",
    "reindex": "Full reindex (deriver reindex docs)",
    "audit": "Audit (deriver audit docs vs a plain bulk derivation)",
    "search": "Search (deriver as typed, exact, prefix, typo; Postgres FTS)",
    "catchup": "Backlog drain: catch-up after a stopped period of churn (the streaming figure)",
    "bigtxn": "One huge transaction",
    "scaling": "Scaling with pipelines (the backlog drain with N pipelines on one table)",
}

# A line under a phase's title for figures whose names alone could mislead.
PHASE_NOTES = {
    "search": "`deriver_p50`/`deriver_p99`: the words **as typed**, with deriver's defaults (typo tolerance on, the last "
              "word a prefix). `deriver_exact_*`: the same words quoted (no typos, no prefix), which is what Postgres FTS "
              "does: the Postgres comparison uses these. `deriver_prefix_*`: the first half of each word as a prefix; "
              "`deriver_typo_*`: words of 5+ letters with two letters swapped, a complete word (one typo). All in the same run.",
}

md = []
md.append(f"# deriver benchmark — {os.path.basename(run)}\n")
for row in machine:
    if row[0] == "PATCHED" and len(row) > 1:
        md.append(f"> **Built with patches**: {row[1]}\n")
md.append("Every figure is the median over its repetitions, with min and max; `n` is the number of repetitions.")
md.append("Ratios compare deriver to the raw limits measured in this same run. See bench/README.md.\n")
md.append("## Targets\n")
if failed_phases:
    md.append("> **Phases that FAILED** (their figures are missing or partial): "
              + "; ".join(f"`{p}` {st}: {d}" for p, st, d in failed_phases) + "\n")
for text, status, shown in targets:
    md.append(f"- **{status}** — {text}: {shown}")
md.append("")
md.append("## Streaming\n")
md.append("The streaming figure is the **backlog drain** (phase `catchup`): deriver stopped, churn at full rate for the "
          "catch-up window, deriver started, the window's changes ÷ the time until its applied LSN passes the window's "
          "last commit (start-up included). The live stream (phase `stream`) is listed for information: while deriver "
          "runs beside pgbench it cannot apply more than pgbench commits on the same cores.\n")
md.append("| figure | changes/s (median) | ÷ min(decode, upsert) | note |")
md.append("| --- | ---: | ---: | --- |")
md.append(f"| **backlog drain** (headline) | {fmt(drain_cps)} | {fmt(r_drain)} | target ≥ 0.7 |")
offered = med("stream", "offered_changes_per_s")
st_stream = phase_status.get("stream", ("not run",))[0]
md.append(f"| live stream, applied (informational) | {fmt(med('stream', 'applied_changes_per_s'))} | {fmt(r_stream)} | "
          + (f"pgbench offered {fmt(offered)} changes/s |" if offered is not None else f"phase stream {st_stream} |"))
md.append(f"| limit: pgoutput decode | {fmt(decode)} | | `raw_decode/decode_changes_per_s` |")
md.append(f"| limit: tantivy upsert | {fmt(upsert)} | | `raw_tantivy/upsert_docs_per_s` (docs/s) |")
md.append("")
if SCALING or "scaling" in phase_status:
    md.append("## Scaling with pipelines\n")
    md.append("The backlog drain with N pipelines on the same table (copies of `docs` with their own index and Redis "
              "keys), timed until **every** pipeline passed the window's last commit. Work = N × drain changes/s "
              "(changes applied summed over the pipelines). Medians over the repetitions (`n`); cores over the drain: "
              "other = everything but deriver, Postgres and Redis (the bench's watchers, other work on the machine), "
              "iowait = CPU time idle waiting for I/O.\n")
    st = phase_status.get("scaling")
    if st and st[0] != "ok":
        md.append(f"> phase `scaling`: **{st[0]}** {st[1]}\n")
    if SCALING:
        md.append("| pipelines | drain changes/s | ÷ 1 pipeline | work changes/s | ÷ 1 pipeline | drain s | first → last pipeline s "
                  "| deriver cores | Postgres cores | other cores | iowait | peak RSS MiB | n |")
        md.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for n in SCALING:
            d, w = med("scaling", f"drain_changes_per_s_{n}"), med("scaling", f"pipeline_changes_per_s_{n}")
            rss = stats("scaling", f"peak_rss_{n}")
            md.append(f"| {n} | {fmt(d)} | {fmt(d / drain1 if d and drain1 else None)} | {fmt(w)} | "
                      f"{fmt(w / work1 if w and work1 else None)} | {fmt(med('scaling', f'drain_secs_{n}'))} | "
                      f"{fmt(med('scaling', f'spread_secs_{n}'))} | {fmt(med('scaling', f'deriver_cpu_cores_{n}'))} | "
                      f"{fmt(med('scaling', f'postgres_cpu_cores_{n}'))} | {fmt(med('scaling', f'other_cpu_cores_{n}'))} | "
                      f"{fmt(med('scaling', f'iowait_cores_{n}'))} | {fmt(rss and rss['max'])} (max) | "
                      f"{stats('scaling', f'drain_changes_per_s_{n}')['n']} |")
    md.append("")
md.append("## Ratios\n")
md.append("| ratio | median | min | max | definition |")
md.append("| --- | ---: | ---: | ---: | --- |")
for name, m, lo, hi, d in ratios:
    md.append(f"| {name} | {fmt(m)} | {fmt(lo)} | {fmt(hi)} | {d} |")
md.append("")
if ceilings:
    md.append("## Ceilings on this machine\n")
    md.append("| ceiling | value | from |")
    md.append("| --- | ---: | --- |")
    for what, v, why in ceilings:
        md.append(f"| {what} | {fmt(v)} | {why} |")
    md.append("")
md.append("## Machine\n")
md.append("| | |")
md.append("| --- | --- |")
for row in machine:
    if len(row) >= 2:
        md.append(f"| {row[0]} | {row[1]} |")
md.append("")
md.append("## Figures\n")
seen_phases = []
for (phase, _name) in figures:
    if phase not in seen_phases:
        seen_phases.append(phase)
for phase in seen_phases:
    md.append(f"### {PHASE_TITLES.get(phase, phase)}\n")
    if phase in PHASE_NOTES:
        md.append(PHASE_NOTES[phase] + "\n")
    md.append("| figure | unit | median | min | max | n |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: |")
    for (p, name), f in figures.items():
        if p != phase:
            continue
        s = stats(p, name)
        md.append(f"| {name} | {s['unit']} | {fmt(s['median'])} | {fmt(s['min'])} | {fmt(s['max'])} | {s['n']} |")
    md.append("")
md.append("## Phases\n")
md.append("The load average at a phase's start shows other work on the machine (this bench's own load comes after).\n")
md.append("| phase | status | seconds | detail |")
md.append("| --- | --- | ---: | --- |")
for row in phases:
    row = (row + ["", "", "", ""])[:4]
    md.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} |")
md.append("")
if notes:
    md.append("## Notes\n")
    for row in notes:
        md.append(f"- {row[0]}: {row[1] if len(row) > 1 else ''}")
    md.append("")
perf_dir = os.path.join(run, "perf")
if os.path.isdir(perf_dir):
    md.append("## Profiles\n")
    for name in sorted(os.listdir(perf_dir)):
        if name.endswith(".txt"):
            md.append(f"- [perf/{name}](perf/{name})")
    md.append("")

with open(os.path.join(run, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(md))

# ----------------------------------------------------------------------------------- results.tsv
# Ratios renamed by issue 25 (the live stream is no longer the headline): results.tsv also carries
# them under their old names.
RATIO_ALIASES = {
    "live stream / min(decode, tantivy upsert) (informational)": "streaming / min(decode, tantivy upsert)",
    "live stream applied / offered by pgbench": "streaming applied / offered by pgbench",
}
with open(os.path.join(run, "results.tsv"), "w", encoding="utf-8") as f:
    f.write("kind\tphase\tname\tunit\tmedian\tmin\tmax\tn\n")
    for row in machine:
        if len(row) >= 2:
            f.write(f"machine\t\t{row[0]}\t\t{row[1]}\t\t\t\n")
    for (p, name) in figures:
        s = stats(p, name)
        f.write(f"figure\t{p}\t{name}\t{s['unit']}\t{s['median']:.6g}\t{s['min']:.6g}\t{s['max']:.6g}\t{s['n']}\n")
    g = lambda v: "" if v is None else f"{v:.4g}"
    for name, m, lo, hi, d in ratios:
        f.write(f"ratio\t\t{name}\t{d}\t{g(m)}\t{g(lo)}\t{g(hi)}\t\n")
        if name in RATIO_ALIASES:  # the name earlier runs used, for tooling that reads it
            f.write(f"ratio\t\t{RATIO_ALIASES[name]}\t{d}\t{g(m)}\t{g(lo)}\t{g(hi)}\t\n")
    for text, status, shown in targets:
        f.write(f"target\t\t{text}\t\t{status}\t{shown}\t\t\n")
    for row in phases:
        row = (row + ["", "", "", ""])[:4]
        f.write(f"phase\t{row[0]}\t{row[1]}\ts\t{row[2]}\t\t\t{row[3]}\n")
print(os.path.join(run, "results.md"))
