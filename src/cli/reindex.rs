//! `deriver reindex PIPELINE… | --all [--rollback]`: full reprocess into a new index generation,
//! then an atomic swap. When a daemon runs, it is asked over its admin endpoint (it owns the
//! index writers) and the CLI follows its progress; otherwise the CLI does the work itself.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::status::{daemon_get, daemon_request};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::status::{Shared, StatusDoc};
use crate::runtime::Daemon;

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} rows  {per_sec}  ETA {eta}")
        .expect("a valid template")
        .progress_chars("=> ")
}

/// Shows progress as bars on a terminal, else as a log line every few seconds.
struct Display {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    last_line: Instant,
}

impl Display {
    fn new() -> Display {
        let bars = std::io::stderr().is_terminal().then(|| (MultiProgress::new(), BTreeMap::new()));
        Display { bars, last_line: Instant::now() - Duration::from_secs(60) }
    }

    fn update(&mut self, name: &str, done: u64, total: u64) {
        match &mut self.bars {
            Some((multi, bars)) => {
                let bar = bars.entry(name.to_string()).or_insert_with(|| {
                    let b = multi.add(ProgressBar::new(total));
                    b.set_style(bar_style());
                    b.set_prefix(name.to_string());
                    b
                });
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
            None => {
                if self.last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!("reindex {name}: {done}/{total} rows");
                    self.last_line = Instant::now();
                }
            }
        }
    }

    fn finish(&mut self, name: &str, message: &str) {
        match &mut self.bars {
            Some((_, bars)) => {
                if let Some(b) = bars.get(name) {
                    b.finish_with_message(message.to_string());
                }
            }
            None => eprintln!("reindex {name}: {message}"),
        }
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
                Some((200, body)) => println!("{name}: rolled back ({body})"),
                Some((_, body)) => {
                    eprintln!("error: the daemon refused to roll back {name}: {}", error_message(&body));
                    code = 1;
                }
                None => {
                    let gens = Daemon::rollback_offline(cfg, name)?;
                    println!("{name}: generation {gens:?} is live again; the next `deriver run` brings it up to date");
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

fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// Follows a reindex the daemon runs, through `/v1/status`.
async fn follow(cfg: &Config, names: &[String]) -> Result<i32> {
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
            match &p.reindex {
                Some(r) => {
                    display.update(name, r.rows_done, r.rows_total);
                    true
                }
                None => {
                    match &p.error {
                        Some(e) => {
                            failed = true;
                            display.finish(name, &format!("failed: {e}"));
                        }
                        None => display.finish(name, &format!("done: generation {} is live", p.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()))),
                    }
                    false
                }
            }
        });
    }
    Ok(if failed { 1 } else { 0 })
}

/// No daemon: build the new generations here, at the slot's confirmed position.
async fn offline(cfg: &Config, names: &[String]) -> Result<i32> {
    let shared = Arc::new(Shared::default());
    let daemon = Daemon::prepare(cfg.clone(), shared, tokio_util::sync::CancellationToken::new(), false).await.map_err(|e| {
        if e.message.contains("locked by another process") {
            Error::fatal(format!(
                "a deriver daemon holds the index but does not answer at http://{} (http.listen); is it still starting?",
                cfg.http.listen
            ))
        } else {
            e
        }
    })?;
    let mut display = Display::new();
    daemon
        .reindex_offline(names, |name, p| {
            display.update(name, p.rows_done.load(Ordering::Relaxed), p.rows_total.load(Ordering::Relaxed));
        })
        .await?;
    for n in names {
        display.finish(n, "done");
    }
    println!("reindexed {}", names.join(", "));
    Ok(0)
}
