//! `deriver validate`: every problem of every pipeline file, with file:line:col.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipeline;
use crate::runtime::{load_pipelines, replica_identity_problem};
use crate::source::postgres as pg;

/// Returns the process exit code.
pub async fn run(config: Option<&std::path::Path>, no_environment: bool) -> Result<i32> {
    let cfg_result = Config::load(config);
    let dir = match &cfg_result {
        Ok(cfg) => cfg.pipelines.dir.clone(),
        Err(_) if no_environment => std::env::var("DERIVER__PIPELINES__DIR").map(Into::into).unwrap_or_else(|_| "pipelines".into()),
        Err(e) => return Err(Error::config(e.message.clone()).with_detail(e.detail.clone().unwrap_or_default())),
    };
    let pipelines = match pipeline::load_dir(&dir) {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{} problem(s) found", diags.len());
            return Ok(1);
        }
    };
    if no_environment {
        println!("{} pipeline(s) valid (files only)", pipelines.len());
        return Ok(0);
    }
    let cfg = cfg_result?;
    let client = pg::connect(cfg.postgres_url()?).await?;
    let loaded = match load_pipelines(&cfg, &client).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let mut problems = 0;
    let published = pg::publication_tables(&client, &cfg.postgres.publication).await?;
    for (def, info, sql) in &loaded {
        if let Err(e) = client.prepare(&sql.keyed).await {
            problems += 1;
            eprintln!("{}: error: the pipeline's SQL does not compile: {}", def.file.display(), Error::from(e).message);
        }
        if let Some(p) = replica_identity_problem(def, info) {
            problems += 1;
            eprintln!("{}: error: {p}", def.file.display());
        }
        match &published {
            None => {
                problems += 1;
                eprintln!("{}: error: publication `{}` does not exist (run `deriver setup`)", def.file.display(), cfg.postgres.publication);
            }
            Some(tables) if !tables.iter().any(|(t, _)| *t == def.source.table) => {
                problems += 1;
                eprintln!(
                    "{}: error: publication `{}` does not cover {} (run `deriver setup`)",
                    def.file.display(),
                    cfg.postgres.publication,
                    def.source.table
                );
            }
            _ => {}
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) found");
        return Ok(1);
    }
    println!("{} pipeline(s) valid", loaded.len());
    Ok(0)
}
