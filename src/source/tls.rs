//! TLS for the query connections (`tokio-postgres` over OpenSSL, through `postgres-openssl`),
//! configured from [`TlsSettings`], and the one sentence that says why a connection failed.
//!
//! OpenSSL does every check (chain, host name, client certificate); deriver only observes the
//! verdict: a verify callback records the first error OpenSSL reports with the certificate it
//! concerns, so a failure names its cause by OpenSSL's error code, never by message text.

use std::sync::{Arc, Mutex};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContextRef, X509};
use postgres_openssl::MakeTlsConnector;

use super::conninfo::{RootCert, SslMode, TlsSettings, TlsVersion};
use crate::error::{Error, ErrorKind, Result};

/// What OpenSSL said about the server's certificate, when it refused it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// OpenSSL's `X509_V_ERR_*` code.
    pub code: i32,
    pub reason: &'static str,
    /// Names the refused certificate is for (its DNS and IP subject alternative names, else
    /// its common name), when the refusal concerns the server's own certificate.
    pub names: Vec<String>,
}

/// Filled by the verify callback of one connection attempt.
#[derive(Debug, Clone, Default)]
pub struct VerifyLog(Arc<Mutex<Option<Rejection>>>);

impl VerifyLog {
    fn record(&self, ctx: &X509StoreContextRef) {
        let Ok(mut slot) = self.0.lock() else { return };
        if slot.is_some() {
            return;
        }
        let err = ctx.error();
        let names = if ctx.error_depth() == 0 { ctx.current_cert().map(cert_names).unwrap_or_default() } else { Vec::new() };
        *slot = Some(Rejection { code: err.as_raw(), reason: err.error_string(), names });
    }

    pub fn rejection(&self) -> Option<Rejection> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

fn cert_names(cert: &openssl::x509::X509Ref) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Some(sans) = cert.subject_alt_names() {
        for n in &sans {
            if let Some(d) = n.dnsname() {
                names.push(d.to_string());
            } else if let Some(ip) = n.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).map(|a| std::net::IpAddr::from(a).to_string()).ok(),
                    16 => <[u8; 16]>::try_from(ip).map(|a| std::net::IpAddr::from(a).to_string()).ok(),
                    _ => None,
                };
                names.extend(ip);
            }
        }
    }
    if names.is_empty() {
        for e in cert.subject_name().entries_by_nid(openssl::nid::Nid::COMMONNAME) {
            if let Ok(cn) = e.data().to_string() {
                names.push(cn);
            }
        }
    }
    names
}

fn tls_error(what: String) -> impl FnOnce(openssl::error::ErrorStack) -> Error {
    move |e| Error::config(what).with_detail(e)
}

fn version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls1_0 => SslVersion::TLS1,
        TlsVersion::Tls1_1 => SslVersion::TLS1_1,
        TlsVersion::Tls1_2 => SslVersion::TLS1_2,
        TlsVersion::Tls1_3 => SslVersion::TLS1_3,
    }
}

/// A connector for one connection attempt, and the log its verify callback fills.
pub fn connector(tls: &TlsSettings) -> Result<(MakeTlsConnector, VerifyLog)> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error("cannot initialise OpenSSL".into()))?;
    // `SslConnector::builder` trusts the system store; a root file replaces it (libpq trusts
    // only the file's certificates).
    if let Some(RootCert::File(path)) = &tls.root {
        let pem = std::fs::read(path).map_err(|e| Error::config(format!("cannot read sslrootcert {}", path.display())).with_detail(e))?;
        let certs = X509::stack_from_pem(&pem).map_err(tls_error(format!("sslrootcert {} is not a PEM file of certificates", path.display())))?;
        if certs.is_empty() {
            return Err(Error::config(format!("sslrootcert {} holds no certificate", path.display())));
        }
        let mut store = X509StoreBuilder::new().map_err(tls_error("cannot initialise OpenSSL".into()))?;
        for cert in certs {
            store.add_cert(cert).map_err(tls_error(format!("cannot use a certificate of sslrootcert {}", path.display())))?;
        }
        builder.set_cert_store(store.build());
    }
    if let Some(client) = &tls.client {
        builder.set_certificate_chain_file(&client.cert).map_err(tls_error(format!("sslcert {} is not a PEM certificate", client.cert.display())))?;
        builder
            .set_private_key_file(&client.key, SslFiletype::PEM)
            .map_err(tls_error(format!("sslkey {} is not an unencrypted PEM private key", client.key.display())))?;
        builder.check_private_key().map_err(tls_error(format!("sslkey {} is not the key of sslcert {}", client.key.display(), client.cert.display())))?;
    }
    builder.set_min_proto_version(Some(version(tls.min_protocol))).map_err(tls_error("ssl_min_protocol_version is not supported by OpenSSL".into()))?;
    builder.set_max_proto_version(tls.max_protocol.map(version)).map_err(tls_error("ssl_max_protocol_version is not supported by OpenSSL".into()))?;
    let mut make = MakeTlsConnector::new(builder.build());
    let log = VerifyLog::default();
    let observed = log.clone();
    let (verify_chain, verify_host, sni) = (tls.verify_chain(), tls.verify_host(), tls.sni);
    make.set_callback(move |config, _domain| {
        config.set_use_server_name_indication(sni);
        config.set_verify_hostname(verify_host);
        if verify_chain {
            let log = observed.clone();
            config.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                if !ok {
                    log.record(ctx);
                }
                ok
            });
        } else {
            config.set_verify(SslVerifyMode::NONE);
        }
        Ok(())
    });
    Ok((make, log))
}

/// `tokio-postgres`'s mode for the first attempt. `allow` starts without TLS (libpq's order).
pub fn first_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as T;
    match mode {
        SslMode::Disable | SslMode::Allow => T::Disable,
        SslMode::Prefer => T::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
    }
}

/// `allow`: a server that refused the plaintext attempt (`pg_hba.conf` has only `hostssl`) is
/// tried again with TLS.
pub fn retry_with_tls(mode: SslMode, e: &tokio_postgres::Error) -> bool {
    mode == SslMode::Allow && e.code() == Some(&tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

// OpenSSL's X509_V_ERR_* codes deriver explains in its own words.
const HOSTNAME_MISMATCH: i32 = openssl_sys::X509_V_ERR_HOSTNAME_MISMATCH;
const IP_ADDRESS_MISMATCH: i32 = openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH;
const CERT_HAS_EXPIRED: i32 = openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED;
const CERT_NOT_YET_VALID: i32 = openssl_sys::X509_V_ERR_CERT_NOT_YET_VALID;

/// TLS alerts (OpenSSL reports an alert `n` from the peer as reason code 1000 + n) by which a
/// server refuses the client's certificate.
const CLIENT_CERT_ALERTS: [(i32, &str); 7] = [
    (42, "bad certificate"),
    (43, "unsupported certificate"),
    (44, "certificate revoked"),
    (45, "certificate expired"),
    (46, "certificate unknown"),
    (48, "unknown CA"),
    (116, "certificate required"),
];

/// The one sentence for a failed connection, with the kind that decides retry vs stop.
/// `what`: the connection, as the sentence names it (`Postgres`, `Postgres for the ownership lock`).
pub fn explain(e: &tokio_postgres::Error, log: &VerifyLog, tls: &TlsSettings, host: &str, what: &str, target: &str) -> Error {
    if let Some(r) = log.rejection() {
        let cause = match r.code {
            HOSTNAME_MISMATCH | IP_ADDRESS_MISMATCH => format!(
                "the server's certificate is not valid for the host name `{host}`{}; sslmode=verify-full checks the name: connect to a name the certificate lists, or use sslmode=verify-ca",
                if r.names.is_empty() { String::new() } else { format!(" (it is for {})", r.names.join(", ")) }
            ),
            CERT_HAS_EXPIRED => "the server's certificate has expired".to_string(),
            CERT_NOT_YET_VALID => "the server's certificate is not valid yet (check the clocks)".to_string(),
            _ => format!(
                "the server's certificate does not verify against {} ({}){}",
                tls.root.as_ref().map_or_else(|| "the trusted certificates".to_string(), |r| r.to_string()),
                r.reason,
                if tls.mode < SslMode::VerifyCa { format!("; sslmode={} verifies it because a root certificate is configured", tls.mode) } else { String::new() }
            ),
        };
        return Error::config(format!("cannot connect to {what} at {target}: {cause}"));
    }
    if let Some(db) = e.as_db_error() {
        use tokio_postgres::error::SqlState;
        let code = db.code();
        let transient = code.code().starts_with("08")
            || [SqlState::CANNOT_CONNECT_NOW, SqlState::TOO_MANY_CONNECTIONS, SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN].contains(code);
        let mut text = format!("cannot connect to {what} at {target}: the server said: {} {}: {}", db.severity(), code.code(), db.message());
        if let Some(d) = db.detail() {
            text.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            text.push_str(&format!(" (hint: {h})"));
        }
        if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION && tls.mode == SslMode::Disable {
            text.push_str("; with sslmode=disable deriver does not use TLS, which this server may require");
        }
        return Error::new(if transient { ErrorKind::Transient } else { ErrorKind::Config }, text);
    }
    if let Some(alert) = peer_alert(e) {
        let hint = if tls.client.is_some() { "" } else { " (set sslcert and sslkey to send one)" };
        return Error::config(format!("cannot connect to {what} at {target}: the server refused deriver's client certificate (TLS alert: {alert}){hint}"));
    }
    // A server that checks client certificates under TLS 1.3 may close the connection right
    // after the handshake, its alert lost to the reset.
    if tls.client.is_some() && tls.mode > SslMode::Prefer && io_kind(e) == Some(std::io::ErrorKind::ConnectionReset) {
        return Error::config(format!(
            "cannot connect to {what} at {target}: the server closed the connection after the TLS handshake; it may have refused deriver's client certificate (check that the server trusts the CA that signed sslcert)"
        ));
    }
    // Network trouble (refused, timed out, reset) and anything else: worth retrying, with the
    // library's own words.
    Error::transient(format!("cannot connect to {what} at {target}: {}", chain(e)))
}

/// `e` and every error behind it, outermost first.
fn causes<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| err.source())
}

/// The kind of the I/O error behind `e`, if one is.
fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    causes(e).find_map(|err| err.downcast_ref::<std::io::Error>()).map(std::io::Error::kind)
}

/// The TLS alert the server sent about the client's certificate, if that is why it failed.
fn peer_alert(e: &tokio_postgres::Error) -> Option<&'static str> {
    // OpenSSL's errors: in the chain, or inside an I/O error (which hides its inner error from
    // `source()`).
    let stacks = causes(e).filter_map(|err| {
        err.downcast_ref::<openssl::ssl::Error>().and_then(|s| s.ssl_error()).or_else(|| err.downcast_ref::<openssl::error::ErrorStack>()).or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<openssl::ssl::Error>())
                .and_then(|s| s.ssl_error())
        })
    });
    stacks.flat_map(|stack| stack.errors()).find_map(|e| CLIENT_CERT_ALERTS.iter().find(|(n, _)| *n == e.reason_code() - 1000).map(|(_, name)| *name))
}

/// An error and its causes on one line (`tokio-postgres` keeps the cause out of its `Display`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for part in causes(e).map(|c| c.to_string()) {
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    crate::redact::redact(&text)
}
