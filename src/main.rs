//! deriver: derive search indexes and Redis views from Postgres logical replication.

use deriver::{audit, cli, config, error, http, runtime, source, telemetry};

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};
use config::Config;
use error::{ErrorKind, Result};

/// mimalloc instead of glibc's malloc: deriver allocates many small, short-lived values per row
/// (records, documents, Redis commands) across threads. On the 810k-document benchmark it was
/// measured to take `deriver audit` from 9.7 s to 7.5 s and its peak RSS from 408 to 300 MiB
/// (bench/README.md; with it, run I in docs/operations.md measured 7.7 s and 291 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `DERIVER_LOG_FORMAT=json`: every line on stderr is one JSON object.
fn json_logs() -> bool {
    std::env::var("DERIVER_LOG_FORMAT").as_deref() == Ok("json")
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("DERIVER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,tantivy=warn,pg_walstream=warn"));
    // Colour only for a person at a terminal: not in files, pipes or journals, nor with NO_COLOR.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if json_logs() {
        // `timestamp`, `level`, `target`, `message` and the event's fields (`pipeline`, `error`, …)
        // at the top level of each line.
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
        // A panic is a log line too (the default hook would write plain text).
        std::panic::set_hook(Box::new(|info| {
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let what = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned());
            tracing::error!(panic.location = %at, "panic: {}", deriver::redact::redact(&what.unwrap_or_default()));
        }));
    } else {
        builder.init();
    }
}

fn shutdown_signal(cancel: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: finishing the current batch");
        cancel.cancel();
    });
}

/// `SIGHUP` re-reads the pipeline files and applies them (as `deriver apply`); the outcome is logged.
fn reload_signal(shared: Arc<runtime::status::Shared>, cancel: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = hup.recv() => {}
            }
            tracing::info!("SIGHUP: re-reading the pipeline files");
            let tx = shared.admin.lock().expect("admin lock").clone();
            let Some(tx) = tx else {
                tracing::warn!("SIGHUP: this process does not run the pipelines now (it starts or stands by); it reads the files when it does");
                continue;
            };
            let (reply, rx) = tokio::sync::oneshot::channel();
            if tx.send(runtime::status::AdminRequest::Reload { reply }).await.is_err() {
                continue;
            }
            match rx.await {
                Ok(Ok(report)) => tracing::info!(
                    added = ?report.added, changed = ?report.changed, removed = ?report.removed,
                    rebuilding = ?report.rebuilding,
                    "SIGHUP: the pipeline files were applied"
                ),
                Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: the pipeline files were not applied"),
                Err(_) => {}
            }
        }
    });
}

async fn run_daemon(cfg: Config, resnapshot: bool) -> Result<()> {
    let cancel = CancellationToken::new();
    shutdown_signal(cancel.clone());
    let handle = telemetry::install().map_err(|e| error::Error::fatal("cannot install the metrics recorder").with_detail(e))?;
    let shared = Arc::new(runtime::status::Shared { ready_max_lag: cfg.runtime.ready_max_lag(), ..Default::default() });
    runtime::status::spawn_trends(shared.clone(), cancel.clone());
    reload_signal(shared.clone(), cancel.clone());
    // The API answers from the start: a standby reports itself in /v1/status and /readyz.
    http::serve(&cfg.http.listen, http::router(shared.clone(), handle, cfg.http.token.clone()), cancel.clone()).await?;
    let mut resnapshot = resnapshot;
    let mut first = true;
    loop {
        // Only the process holding the slot's advisory lock runs the pipelines.
        let Some(lease) = runtime::lease::acquire(&cfg, &shared, &cancel, first).await? else { return Ok(()) };
        first = false;
        let daemon_cancel = cancel.child_token();
        let lost = lease.lost.clone();
        let stop_on_loss = daemon_cancel.clone();
        tokio::spawn(async move {
            lost.cancelled().await;
            stop_on_loss.cancel();
        });
        let result = own_slot(&cfg, &shared, daemon_cancel.clone(), lease.lost.clone(), resnapshot).await;
        daemon_cancel.cancel();
        resnapshot = false;
        match result {
            Err(e) if e.kind == ErrorKind::Fenced || (lease.lost.is_cancelled() && !cancel.is_cancelled()) => {
                if e.kind == ErrorKind::Fenced {
                    metrics::counter!(telemetry::FENCED_WRITES).increment(1);
                }
                tracing::warn!(error = %e, "lost ownership of the slot; standing by again");
                drop(lease);
                // Give the sinks' writer threads a moment to release their locks.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Ok(()) if lease.lost.is_cancelled() && !cancel.is_cancelled() => {
                tracing::warn!("lost ownership of the slot; standing by again");
                drop(lease);
            }
            other => {
                lease.release(&cfg.postgres.slot).await;
                cancel.cancel();
                return other;
            }
        }
    }
}

/// Runs the pipelines while this process owns the slot.
async fn own_slot(cfg: &Config, shared: &Arc<runtime::status::Shared>, cancel: CancellationToken, fence: CancellationToken, resnapshot: bool) -> Result<()> {
    if resnapshot {
        let client = source::postgres::connect(cfg.postgres_url()?).await?;
        if source::postgres::slot_info(&client, &cfg.postgres.slot).await?.is_some() {
            tracing::warn!(slot = %cfg.postgres.slot, "dropping the replication slot to re-derive everything");
            client.execute("SELECT pg_drop_replication_slot($1)", &[&cfg.postgres.slot]).await?;
        }
    }
    // A previous owner on this host may still hold the index writer (it lets go once it notices
    // it lost the lock): wait for it, saying so every 10 s, for as long as this process owns the slot.
    let mut attempts = 0u64;
    let mut daemon = loop {
        match runtime::Daemon::prepare(cfg.clone(), shared.clone(), cancel.clone(), resnapshot).await {
            Ok(d) => break d,
            Err(e) if e.cause == Some(error::Cause::IndexLocked) && !cancel.is_cancelled() => {
                if attempts.is_multiple_of(10) {
                    tracing::warn!(error = %e, "cannot open the search index yet; waiting for the other writer to let go");
                }
                attempts += 1;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    daemon.own(fence).await?;
    // Background audits ([audit] continuous) and audit results in status and /metrics, once the
    // pipelines stream.
    let (audit_cfg, audit_shared, audit_cancel) = (cfg.clone(), shared.clone(), cancel.clone());
    daemon.run(move || audit::continuous::spawn(audit_cfg, audit_shared, audit_cancel)).await
}

async fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Validate(args) => cli::validate::run(cli.config.as_deref(), args.no_environment).await,
        Command::Setup(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::setup::run(&cfg, args.grant_to.as_deref()).await
        }
        Command::Status(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            let doc = cli::status::collect(&cfg).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&doc).expect("status serializes"));
            } else {
                cli::status::print_table(&doc);
            }
            Ok(0)
        }
        Command::Test(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::pipeline_test::run(&cfg, &args.pipelines).await
        }
        Command::Preview(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::preview::run(&cfg, &args.pipeline, &args.keys).await
        }
        Command::Reindex(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::reindex::run(&cfg, args.pipelines, args.all, args.rollback).await
        }
        Command::Audit(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::audit::run(&cfg, args.pipelines, args.all, args.repair, args.sample, args.json).await
        }
        Command::DeadLetters(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::dead_letters::run(&cfg, args.pipelines, args.retry, args.json).await
        }
        Command::Plan => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::plan::run(&cfg).await
        }
        Command::Apply(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::apply::run(&cfg, args.prune).await
        }
        Command::Prune(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            cli::prune::run(&cfg, args.dry_run, args.yes, args.redis_pipelines).await
        }
        Command::Run(args) => {
            let cfg = Config::load(cli.config.as_deref())?;
            run_daemon(cfg, args.resnapshot).await?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A command whose output is cut short (`deriver status | head -3`) ends quietly, as Unix
        // tools do, instead of panicking on a closed stdout. Sockets are unaffected (they write
        // with MSG_NOSIGNAL); the daemon keeps ignoring SIGPIPE.
        // SAFETY: called before any other thread exists; resetting a signal to its default.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) if json_logs() => {
            tracing::error!(kind = ?e.kind, "{}", e);
            ExitCode::from(match e.kind {
                ErrorKind::Config => 2,
                _ => 1,
            })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e.kind {
                ErrorKind::Config => 2,
                _ => 1,
            })
        }
    }
}
