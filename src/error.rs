//! One error type for the whole daemon. Its [`ErrorKind`] decides what the runtime does:
//! `Transient` errors are retried with backoff, everything else stops the daemon (or the command)
//! with a clear message. Where a caller must tell one failure from another (an SQL error from a
//! lost connection, a locked index, a Redis error code), [`Cause`] says which, structurally:
//! nothing decides on the text of a message.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A dependency hiccup (connection reset, timeout): retry with backoff.
    Transient,
    /// Bad configuration or pipeline files: fix and restart.
    Config,
    /// The source is in a state deriver must not paper over (lost slot, missing publication, …).
    Fatal,
    /// A single record could not be derived or written; the rest goes on.
    Record,
    /// This process lost ownership of its slot (another process took over): stop writing now
    /// and stand by.
    Fenced,
}

/// Where an error came from, for the few decisions that depend on more than its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Postgres answered an SQL error (the connection itself is fine), with its SQLSTATE.
    Postgres { sqlstate: String },
    /// Redis answered an error reply with this code (`READONLY`, `FENCED`, …).
    Redis { code: String },
    /// Another writer holds the search index's directory lock.
    IndexLocked,
    /// Another process has the dead-letter store open (a command reading it, for a moment).
    StoreLocked,
    /// A table has no primary key (and the pipeline names no key).
    NoPrimaryKey,
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    /// One clear sentence.
    pub message: String,
    /// Optional detail (the underlying error, a hint).
    pub detail: Option<String>,
    /// What produced it, when a caller needs to know.
    pub cause: Option<Cause>,
    /// The library error it came from, kept whole (`std::error::Error::source`).
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), detail: None, cause: None, source: None }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    pub fn record(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Record, message)
    }
    /// Keeps the library error this one was made from.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }
    pub fn with_cause(mut self, cause: Cause) -> Self {
        self.cause = Some(cause);
        self
    }
    /// An SQL error Postgres answered (not a connection failure).
    pub fn is_postgres_answer(&self) -> bool {
        matches!(self.cause, Some(Cause::Postgres { .. }))
    }
    /// Redis answered an error reply with `code`.
    pub fn is_redis_reply(&self, code: &str) -> bool {
        matches!(&self.cause, Some(Cause::Redis { code: c }) if c == code)
    }
    pub fn with_detail(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(crate::redact::redact(&detail.to_string()));
        self
    }
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Postgres errors: connection-level failures are transient, SQL errors are not.
impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            // Class 08 (connection), 57P01..03 (admin shutdown / cannot connect now), 40001/40P01.
            let transient = code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300");
            let mut msg = format!("Postgres error {code}: {}", db.message());
            if let Some(h) = db.hint() {
                msg.push_str(&format!(" (hint: {h})"));
            }
            Error::new(if transient { ErrorKind::Transient } else { ErrorKind::Fatal }, msg)
                .with_cause(Cause::Postgres { sqlstate: code.to_string() })
                .with_source(e)
        } else {
            Error::transient("lost the connection to Postgres").with_detail(&e).with_source(e)
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        let transient = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading) | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain))
            // Only a Redis Cluster answers these: a slot moved or is moving, or the cluster is
            // failing over. The batch is retried on a new connection to the slot's master.
            || matches!(
                e.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask | redis::ServerErrorKind::ClusterDown | redis::ServerErrorKind::MasterDown
                )
            );
        let kind = if transient { ErrorKind::Transient } else { ErrorKind::Fatal };
        let error = Error::new(kind, "Redis error").with_detail(&e);
        let error = match e.code() {
            Some(code) => error.with_cause(Cause::Redis { code: code.to_string() }),
            None => error,
        };
        error.with_source(e)
    }
}

impl From<tantivy::TantivyError> for Error {
    fn from(e: tantivy::TantivyError) -> Self {
        Error::fatal("search index error").with_detail(&e).with_source(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::transient("I/O error").with_detail(&e).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_converted_error_keeps_its_kind_from_the_library_error_and_the_error_itself() {
        let e = Error::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset"));
        assert_eq!(e.kind, ErrorKind::Transient);
        let source = std::error::Error::source(&e).expect("the io::Error is kept");
        assert_eq!(source.downcast_ref::<std::io::Error>().map(|s| s.kind()), Some(std::io::ErrorKind::ConnectionReset));
        assert!(std::error::Error::source(&Error::fatal("plain")).is_none());
    }
}
