//! `deriver reindex PIPELINE… | --all [--rollback]`: full reprocess into a new index generation,
//! then an atomic swap. When a daemon runs, it is asked over its admin endpoint (it owns the
//! index writers) and the CLI follows its progress; otherwise the CLI does the work itself.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{HumanCount, MultiProgress, ProgressBar, ProgressState, ProgressStyle};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::client::{daemon_get, daemon_request};
use crate::runtime::status::{Shared, StatusDoc};
use crate::runtime::Daemon;

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} {msg:<11} [{bar:32}] {human_pos}/{human_len} rows  {rate}  ETA {eta}")
        .expect("a valid template")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/s", HumanCount(state.per_sec().round() as u64));
        })
        .progress_chars("=> ")
}

/// What one line of progress says, on a terminal or not.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    phase: String,
    done: u64,
    total: u64,
}

/// Shows progress as bars on a terminal, else as a log line every few seconds (and at each
/// phase change); always ends with one line per pipeline.
struct Display {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    last_line: Instant,
    last: BTreeMap<String, Step>,
    started: Instant,
}

impl Display {
    fn new() -> Display {
        let bars = std::io::stderr().is_terminal().then(|| (MultiProgress::new(), BTreeMap::new()));
        Display { bars, last_line: Instant::now() - Duration::from_secs(60), last: BTreeMap::new(), started: Instant::now() }
    }

    fn update(&mut self, name: &str, phase: &str, done: u64, total: u64) {
        let step = Step { phase: phase.to_string(), done, total: total.max(done) };
        let phase_changed = self.last.get(name).is_none_or(|s| s.phase != step.phase);
        match &mut self.bars {
            Some((multi, bars)) => {
                let bar = bars.entry(name.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(step.total));
                    b.set_style(bar_style());
                    b.set_prefix(name.to_string());
                    b
                });
                bar.set_length(step.total);
                bar.set_position(done);
                bar.set_message(step.phase.clone());
            }
            None => {
                if phase_changed || self.last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!("reindex {name}: {} {}/{} rows", step.phase, HumanCount(done), HumanCount(step.total));
                    self.last_line = Instant::now();
                }
            }
        }
        self.last.insert(name.to_string(), step);
    }

    /// The last line of a pipeline's reindex, on a terminal too.
    fn finish(&mut self, name: &str, message: &str) {
        if let Some((_, bars)) = &mut self.bars {
            if let Some(b) = bars.remove(name) {
                b.finish_and_clear();
            }
        }
        let rows = self.last.get(name).map(|s| format!(", {} rows", HumanCount(s.total))).unwrap_or_default();
        eprintln!("reindex {name}: {message}{rows} in {:.1} s", self.started.elapsed().as_secs_f64());
    }
}

pub async fn run(cfg: &Config, pipelines: Vec<String>, all: bool, rollback: bool) -> Result<i32> {
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).map_err(|d| {
        Error::config("the pipeline files have problems (run `deriver validate`)").with_detail(d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\n"))
    })?;
    let names: Vec<String> = if all { defs.iter().map(|d| d.name.clone()).collect() } else { pipelines };
    if names.is_empty() {
        return Err(Error::config("name the pipelines to reindex, or pass --all"));
    }
    for n in &names {
        if !defs.iter().any(|d| &d.name == n) {
            return Err(Error::config(format!("no pipeline named `{n}`")));
        }
    }
    let token = cfg.http.token.as_deref();
    if rollback {
        let mut code = 0;
        for name in &names {
            let body = serde_json::json!({ "pipeline": name }).to_string();
            match daemon_request(&cfg.http.listen, "POST", "/v1/admin/rollback", token, Some(&body)).await {
                Some((200, body)) => {
                    let gens = serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| generations(&v["generations"])).unwrap_or(body);
                    println!("{name}: rolled back; generation {gens} is live again");
                }
                Some((_, body)) => {
                    eprintln!("error: the daemon refused to roll back {name}: {}", error_message(&body));
                    code = 1;
                }
                None => {
                    let _owner = crate::runtime::lease::hold_for_command(cfg, "reindex --rollback").await?;
                    let gens = Daemon::rollback_offline(cfg, name)?;
                    let gens = gens.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                    println!("{name}: generation {gens} is live again; the next `deriver run` brings it up to date");
                }
            }
        }
        return Ok(code);
    }
    let body = serde_json::json!({ "pipelines": names }).to_string();
    match daemon_request(&cfg.http.listen, "POST", "/v1/admin/reindex", token, Some(&body)).await {
        Some((202, _)) => follow(cfg, &names).await,
        Some((_, body)) => {
            eprintln!("error: the daemon refused the reindex: {}", error_message(&body));
            Ok(1)
        }
        None => offline(cfg, &names).await,
    }
}

/// `[4, 5]` as `4, 5`.
fn generations(v: &serde_json::Value) -> String {
    v.as_array().map(|a| a.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")).unwrap_or_else(|| v.to_string())
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["error"]["message"].as_str().map(str::to_string)).unwrap_or_else(|| body.to_string())
}

/// Follows a reindex the daemon runs, through `/v1/status`.
pub(super) async fn follow(cfg: &Config, names: &[String]) -> Result<i32> {
    let mut display = Display::new();
    let mut pending: Vec<String> = names.to_vec();
    let mut failed = false;
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some((200, body)) = daemon_get(&cfg.http.listen, "/v1/status", cfg.http.token.as_deref()).await else {
            return Err(Error::transient("lost the daemon while following the reindex; `deriver status` shows where it is"));
        };
        let doc: StatusDoc = serde_json::from_str(&body).map_err(|e| Error::fatal("unreadable status from the daemon").with_detail(e))?;
        pending.retain(|name| {
            let Some(p) = doc.pipelines.iter().find(|p| &p.name == name) else { return false };
            if p.reindex.is_none() && (p.state == "rebuilding" || p.state == "starting") && p.error.is_none() {
                // Started by a reload, its worker or its build not yet under way.
                return true;
            }
            match &p.reindex {
                Some(r) => {
                    display.update(name, r.phase.as_deref().unwrap_or("deriving"), r.rows_done, r.rows_total);
                    true
                }
                None => {
                    match &p.error {
                        Some(e) => {
                            failed = true;
                            display.finish(name, &format!("failed: {e}"));
                        }
                        None => {
                            display.finish(name, &format!("done: generation {} is live", p.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into())))
                        }
                    }
                    false
                }
            }
        });
    }
    Ok(if failed { 1 } else { 0 })
}

/// "generation N is live" for the pipeline's search indexes, or what was rewritten.
fn cfg_generation(cfg: &Config, pipeline: &str) -> String {
    let defs = crate::pipeline::load_dir(&cfg.pipelines.dir).unwrap_or_default();
    let gens: Vec<String> = defs
        .iter()
        .filter(|d| d.name == pipeline)
        .flat_map(|d| d.search.iter())
        .filter_map(|t| crate::sink::tantivy::current_generation(&cfg.index.dir, &t.index))
        .map(|g| g.to_string())
        .collect();
    if gens.is_empty() {
        "the Redis views were rewritten".into()
    } else {
        format!("generation {} is live", gens.join(", "))
    }
}

/// No daemon: build the new generations here, at the slot's confirmed position.
async fn offline(cfg: &Config, names: &[String]) -> Result<i32> {
    let _owner = crate::runtime::lease::hold_for_command(cfg, "reindex").await?;
    let shared = Arc::new(Shared::default());
    let daemon = Daemon::prepare(cfg.clone(), shared, tokio_util::sync::CancellationToken::new(), false).await.map_err(|e| {
        if e.cause == Some(crate::error::Cause::IndexLocked) {
            Error::fatal(format!("a deriver daemon holds the index but does not answer at http://{} (http.listen); is it still starting?", cfg.http.listen))
        } else {
            e
        }
    })?;
    let mut display = Display::new();
    daemon
        .reindex_offline(names, |name, p| {
            display.update(name, p.phase().as_str(), p.rows_done.load(Ordering::Relaxed), p.rows_total.load(Ordering::Relaxed));
        })
        .await?;
    for n in names {
        let generation = cfg_generation(cfg, n);
        display.finish(n, &format!("done: {generation}"));
    }
    println!("reindexed {}", names.join(", "));
    Ok(0)
}
