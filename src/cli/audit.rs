//! `deriver audit PIPELINE… | --all [--repair] [--sample PCT] [--json]`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::audit::{audit_pipeline, PipelineReport};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::load_pipelines;
use crate::source::postgres as pg;

pub async fn run(cfg: &Config, pipelines: Vec<String>, all: bool, repair: bool, sample: Option<f64>, json: bool) -> Result<i32> {
    if let Some(p) = sample {
        if !(p > 0.0 && p <= 100.0) {
            return Err(Error::config("--sample is a percentage in (0, 100]"));
        }
    }
    let client = pg::connect(cfg.postgres_url()?).await?;
    let loaded = load_pipelines(cfg, &client).await?;
    let names: Vec<String> = if all { loaded.iter().map(|(d, _, _)| d.name.clone()).collect() } else { pipelines };
    if names.is_empty() {
        return Err(Error::config("name the pipelines to audit, or pass --all"));
    }
    let mut reports: Vec<PipelineReport> = Vec::new();
    for name in &names {
        let Some((def, info, sql)) = loaded.iter().find(|(d, _, _)| &d.name == name) else {
            return Err(Error::config(format!("no pipeline named `{name}`")));
        };
        let total = crate::runtime::reindex::estimate_rows(&client, &def.source.table).await;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} rows  ETA {eta}").expect("template").progress_chars("=> "));
            b.set_prefix(name.clone());
            b
        });
        let report = audit_pipeline(cfg, &client, def, info, sql, sample, repair, |rows| {
            if let Some(b) = &bar {
                b.set_position(rows);
            }
        })
        .await?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "pipelines": reports })).expect("serializes"));
    } else {
        println!(
            "{:<20} {:>9} {:>8} {:>8} {:>10} {:>8} {:>9} {:>8}",
            "PIPELINE", "RECORDS", "MISSING", "EXTRA", "DIFFERENT", "REPAIRED", "REMAINING", "SECONDS"
        );
        for r in &reports {
            let sum = |f: fn(&crate::audit::TargetReport) -> usize| r.targets.iter().map(f).sum::<usize>();
            println!(
                "{:<20} {:>9} {:>8} {:>8} {:>10} {:>8} {:>9} {:>8.1}",
                r.pipeline,
                r.records,
                sum(|t| t.missing.len()),
                sum(|t| t.extra.len()),
                sum(|t| t.different.len()),
                r.repaired,
                r.remaining,
                r.seconds
            );
            for t in &r.targets {
                for (what, keys) in [("missing", &t.missing), ("extra", &t.extra), ("different", &t.different)] {
                    if !keys.is_empty() {
                        let shown: Vec<&str> = keys.iter().take(10).map(String::as_str).collect();
                        println!(
                            "    {:<28} {what}: {}{}",
                            t.target,
                            shown.join(", "),
                            if keys.len() > 10 { format!(" … ({} in all)", keys.len()) } else { String::new() }
                        );
                    }
                }
            }
            for d in &r.diffs {
                println!("    {} key {} {}: expected {}, found {}", d.target, d.key, d.field, d.expected, d.actual);
            }
            if r.unverified > 0 {
                println!(
                    "    {} of these keys could not be re-checked: the daemon had not applied the changes committed meanwhile in time (it lags); audit again later",
                    r.unverified
                );
            }
        }
    }
    Ok(if reports.iter().all(|r| r.remaining == 0) { 0 } else { 1 })
}
