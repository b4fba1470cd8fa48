//! deriver: derive search indexes and Redis views from Postgres logical replication.
//!
//! The binary (`src/main.rs`) is a thin CLI over these modules; integration tests use them to
//! read what the daemon wrote.

pub mod audit;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod pipeline;
pub mod redact;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
