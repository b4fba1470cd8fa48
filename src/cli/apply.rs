//! `deriver apply [--prune]`: asks the running daemon to apply the edited pipeline files (what
//! `SIGHUP` does), after printing the plan (`deriver plan`'s text), then follows the background
//! builds it started. Files with errors change nothing: their problems are printed with
//! file:line:col and the exit code is 1.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::client::daemon_request;
use crate::runtime::reload::ReloadReport;

pub async fn run(cfg: &Config, prune: bool) -> Result<i32> {
    let defs = match crate::pipeline::load_dir(&cfg.pipelines.dir) {
        Ok(d) => d,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("error: {} problem(s) in the pipeline files; nothing was applied", diags.len());
            return Ok(1);
        }
    };
    super::plan::print(cfg, defs).await?;
    let token = cfg.http.token.as_deref();
    let Some((status, body)) = daemon_request(&cfg.http.listen, "POST", "/v1/admin/reload", token, Some("{}")).await else {
        return Err(Error::transient(format!("no daemon answers on {}; `deriver run` applies the pipeline files when it starts", cfg.http.listen)));
    };
    if status != 200 {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let message = v["error"]["message"].as_str().map(str::to_string).unwrap_or(body.clone());
        for p in v["error"]["problems"].as_array().into_iter().flatten() {
            eprintln!("{}", p.as_str().unwrap_or_default());
        }
        eprintln!("error: the daemon did not apply the files: {message}");
        return Ok(1);
    }
    let report: ReloadReport = serde_json::from_str(&body).map_err(|e| Error::fatal("unreadable answer from the daemon").with_detail(e))?;
    println!("{}", summary(&report));
    // Every pipeline that starts is followed until it streams (a build, then the swap), or
    // until it fails to start.
    let starting: Vec<String> = report.added.iter().chain(&report.changed).cloned().collect();
    let mut code = 0;
    if !starting.is_empty() {
        code = super::reindex::follow(cfg, &starting).await?;
    }
    if prune {
        // What no file declares any more, this reload's removals included (as `deriver prune --yes`).
        code = code.max(super::prune::run(cfg, false, true, Vec::new()).await?);
    } else if !report.removed.is_empty() {
        println!("the removed pipelines' views and indexes stay; `deriver prune` (or `deriver apply --prune`) removes them");
    }
    Ok(code)
}

/// One line saying what the daemon did.
fn summary(r: &ReloadReport) -> String {
    let mut parts = Vec::new();
    for (what, names) in [("added", &r.added), ("changed", &r.changed), ("removed", &r.removed)] {
        if !names.is_empty() {
            parts.push(format!("{what} {}", names.join(", ")));
        }
    }
    if parts.is_empty() {
        return "applied: nothing changed".into();
    }
    format!("applied: {}; {} unchanged", parts.join("; "), r.unchanged.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_what_changed() {
        let r = ReloadReport { added: vec!["a".into()], changed: vec!["b".into(), "c".into()], unchanged: vec!["d".into()], ..Default::default() };
        assert_eq!(summary(&r), "applied: added a; changed b, c; 1 unchanged");
        assert_eq!(summary(&ReloadReport { unchanged: vec!["d".into()], ..Default::default() }), "applied: nothing changed");
    }
}
