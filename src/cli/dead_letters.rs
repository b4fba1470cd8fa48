//! `deriver dead-letters [PIPELINE…] [--retry] [--json]`: the records a target could not take,
//! with their reasons; `--retry` re-derives them now (through the daemon when one runs).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::runtime::dead_letters::DeadLetter;

pub async fn run(cfg: &Config, pipelines: Vec<String>, retry: bool, json: bool) -> Result<i32> {
    let doc = super::status::collect(cfg).await?;
    let chosen: Vec<_> = doc.pipelines.iter().filter(|p| pipelines.is_empty() || pipelines.contains(&p.name)).collect();
    for name in &pipelines {
        if !doc.pipelines.iter().any(|p| &p.name == name) {
            return Err(Error::config(format!("no pipeline named `{name}`")));
        }
    }
    if json {
        let out: serde_json::Map<String, serde_json::Value> =
            chosen.iter().map(|p| (p.name.clone(), serde_json::to_value(&p.dead_letter_list).unwrap_or_default())).collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("serializes"));
    } else {
        for p in &chosen {
            println!("{}: {} dead letter(s)", p.name, p.dead_letters);
            for d in &p.dead_letter_list {
                println!("    key {}: {} (attempts {})", d.key, d.reason, d.attempts);
            }
        }
    }
    if !retry {
        return Ok(0);
    }
    let mut code = 0;
    for p in chosen {
        let keys: Vec<String> = p.dead_letter_list.iter().map(|d: &DeadLetter| d.key.clone()).collect();
        if keys.is_empty() {
            continue;
        }
        let body = serde_json::json!({ "pipeline": p.name, "keys": keys }).to_string();
        match crate::http::client::daemon_request(&cfg.http.listen, "POST", "/v1/admin/repair", cfg.http.token.as_deref(), Some(&body)).await {
            Some((200, _)) => println!("{}: retried {} key(s)", p.name, keys.len()),
            Some((_, body)) => {
                eprintln!("error: the daemon refused the retry of {}: {body}", p.name);
                code = 1;
            }
            None => {
                let _owner = crate::runtime::lease::hold_for_command(cfg, "dead-letters --retry").await?;
                let shared = std::sync::Arc::new(crate::runtime::status::Shared::default());
                let mut d = crate::runtime::Daemon::prepare(cfg.clone(), shared, tokio_util::sync::CancellationToken::new(), false).await?;
                d.repair(&p.name, &keys).await?;
                println!("{}: retried {} key(s)", p.name, keys.len());
            }
        }
    }
    Ok(code)
}
