//! What the source task watches besides the stream: the publication, the schema of the tables
//! pipelines read (`schema.rs` decides what a change means), the outcome of each worker (a
//! pipeline that fails stops alone; the others go on), the server's position for status.

use std::time::Duration;

use tracing::{error, info, warn};

use super::error_policy::{self, Action};
use super::schema::{self, Effect};
use super::source_task::SourceTask;
use super::status::SlotStatus;
use super::worker::{Admin, Input};
use crate::error::{Error, ErrorKind, Result};
use crate::source::postgres as pg;
use crate::source::TableName;

impl SourceTask {
    /// Says (in the log and status) whether the replication connection is encrypted, as the
    /// server sees the slot's walsender.
    pub(super) async fn report_replication_encryption(&self, slot: &str) {
        let Ok(tls) = self.cfg.postgres_url().and_then(pg::tls_settings) else { return };
        let encryption = pg::replication_encryption(&self.pg, slot, &tls).await;
        crate::health::report_encryption("replication", &encryption);
    }

    pub(super) async fn reconnect_pg(&mut self) -> Result<()> {
        if !self.pg.is_closed() {
            return Ok(());
        }
        self.pg = pg::connect(self.cfg.postgres_url()?).await?;
        Ok(())
    }

    /// Fails when the publication stopped covering a table a pipeline reads (or gained a row
    /// filter): changes would be lost silently otherwise.
    pub(super) async fn check_publication(&mut self) -> Result<()> {
        // A connection that died while nothing needed it is reconnected here, so the check runs
        // again as soon as Postgres is back (and says so while it is not).
        if let Err(e) = self.reconnect_pg().await {
            warn!(error = %e, "cannot check the publication: Postgres is unreachable; retrying");
            return Ok(());
        }
        let published = match pg::publication_tables(&self.pg, &self.cfg.postgres.publication).await {
            Ok(p) => p,
            Err(e) if error_policy::action(&e) == Action::Retry => {
                warn!(error = %e, "checking the publication failed; retrying");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(published) = published else {
            return Err(Error::fatal(format!("publication `{}` was dropped while deriver was running", self.cfg.postgres.publication)));
        };
        let filtered = pg::publication_row_filters(&self.pg, &self.cfg.postgres.publication).await.unwrap_or_default();
        for t in self.routes.keys() {
            if !published.iter().any(|(p, _)| p == t) {
                return Err(Error::fatal(format!(
                    "table {t} was removed from publication `{}` while deriver was running; its changes would be lost (add it back with `deriver setup`)",
                    self.cfg.postgres.publication
                )));
            }
            if let Some((_, f)) = filtered.iter().find(|(p, _)| p == t) {
                return Err(Error::fatal(format!(
                    "publication `{}` now filters the rows of {t} ({f}); deriver needs every change",
                    self.cfg.postgres.publication
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn refresh_server_status(&self) {
        let limit = Duration::from_secs(2);
        let server = tokio::time::timeout(limit, pg::current_wal_lsn(&self.pg)).await.ok().and_then(|r| r.ok());
        let slot = tokio::time::timeout(limit, pg::slot_info(&self.pg, &self.cfg.postgres.slot)).await.ok().and_then(|r| r.ok()).flatten();
        let name = self.cfg.postgres.slot.clone();
        self.shared.update(|doc| {
            if server.is_some() {
                doc.server_lsn = server;
            }
            if let Some(s) = slot {
                doc.slot = Some(SlotStatus { name, confirmed_flush_lsn: s.confirmed_flush_lsn, wal_status: s.wal_status });
            }
        });
    }

    /// A worker ended with an error: its pipeline stops alone (`state: failed`, the error in
    /// status and the log). Its place stays, so the slot is held at what its sinks made durable
    /// (the next reload or restart resumes it from there). Losing the slot's ownership stops
    /// the daemon.
    pub(super) fn worker_failed(&mut self, slot: usize, e: Error) -> Result<()> {
        if e.kind == ErrorKind::Fenced || self.cancel.is_cancelled() {
            return Err(e);
        }
        let Some(h) = self.workers.get_mut(slot).and_then(Option::as_mut) else { return Ok(()) };
        h.gone = true;
        let name = h.name.clone();
        error!(pipeline = %name, error = %e, "the pipeline stopped; the other pipelines go on. Fix the cause, then `deriver apply` (or restart) resumes it from its last checkpoint");
        metrics::gauge!(crate::telemetry::PIPELINE_FAILED, "pipeline" => name.clone()).set(1.0);
        let message = e.to_string();
        self.shared.update(|doc| {
            if let Some(p) = doc.pipelines.iter_mut().find(|p| p.name == name) {
                p.state = "failed".into();
                p.error = Some(message.clone());
            }
        });
        Ok(())
    }

    /// The stream says a table lost columns some pipelines extract: those pipelines stop, in
    /// stream order (before any change of the table under its new shape reaches them).
    pub(super) async fn columns_lost(&mut self, table: &TableName, present: &[String]) {
        let mut failing = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let Some(w) = w.as_ref().filter(|w| !w.gone) else { continue };
            let wal: Vec<String> = w.reads.iter().filter(|(t, _)| t == table).flat_map(|(_, c)| c.iter().cloned()).collect();
            let gone = schema::lost(&wal, present);
            if !gone.is_empty() {
                failing.push((i, Effect::Stop { table: table.clone(), columns: gone }.message(&w.name)));
            }
        }
        for (i, message) in failing {
            let _ = self.send(i, Input::Fail { error: Error::fatal(message) }, 16).await;
            if let Some(w) = self.workers[i].as_mut() {
                w.gone = true;
            }
        }
    }

    /// Compares the columns of every table pipelines read with what was seen last: a pipeline
    /// whose columns are gone stops; one whose columns changed type re-derives in the
    /// background. Runs every few seconds, so a change is noticed even when no row of the table
    /// changes afterwards.
    pub(super) async fn check_schema(&mut self) {
        let tables: Vec<TableName> = self.routes.keys().cloned().collect();
        let mut now = schema::Columns::new();
        for t in tables {
            match tokio::time::timeout(Duration::from_secs(2), pg::column_types(&self.pg, &t)).await {
                Ok(Ok(cols)) => {
                    now.insert(t, cols.into_iter().collect());
                }
                // A table dropped: its changes cannot arrive either; the publication check says so.
                Ok(Err(e)) if e.kind == ErrorKind::Config => {
                    now.insert(t, Default::default());
                }
                _ => return,
            }
        }
        let before = std::mem::replace(&mut self.columns, now);
        if before.is_empty() {
            return;
        }
        let mut effects = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            let Some(w) = w.as_ref().filter(|w| !w.gone) else { continue };
            for (table, now_cols) in &self.columns {
                let Some(before_cols) = before.get(table) else { continue };
                if !w.routes.iter().any(|(t, _)| t == table) {
                    continue;
                }
                let wal: Vec<String> = w.reads.iter().filter(|(t, _)| t == table).flat_map(|(_, c)| c.iter().cloned()).collect();
                if let Some(effect) = schema::effect(table, before_cols, now_cols, &w.sql, &wal) {
                    effects.push((i, w.name.clone(), effect));
                }
            }
        }
        for (i, name, effect) in effects {
            match &effect {
                Effect::Stop { .. } => {
                    let _ = self.send(i, Input::Fail { error: Error::fatal(effect.message(&name)) }, 16).await;
                    if let Some(w) = self.workers[i].as_mut() {
                        w.gone = true;
                    }
                }
                Effect::Rederive { .. } => {
                    info!(pipeline = %name, "{}", effect.message(&name));
                    let Some(tx) = self.workers[i].as_ref().map(|w| w.admin.clone()) else { continue };
                    tokio::spawn(async move {
                        let (reply, rx) = tokio::sync::oneshot::channel();
                        if tx.send(Admin::Reindex { reply }).await.is_ok() {
                            if let Ok(Err(e)) = rx.await {
                                warn!(pipeline = %name, error = %e, "the re-derivation after a type change did not start");
                            }
                        }
                    });
                }
            }
        }
    }
}
