//! libpq connection strings, in both of libpq's forms (`postgres://…?k=v` and `k=v k='v w'`),
//! and the TLS parameters deriver resolves itself with libpq's meaning.
//!
//! The two client libraries read a connection string differently: the replication stream goes
//! through libpq (which knows every parameter), the query connections through `tokio-postgres`
//! (which knows `sslmode` only as disable/prefer/require and refuses `sslrootcert`, `sslcert`,
//! `sslkey`). So deriver parses the string once, resolves the TLS settings as libpq would
//! (URL, then `PGSSL*` environment variables, then the files under `~/.postgresql/`), and hands
//! each library a string it reads the same way: the query side gets the string without the TLS
//! parameters plus a TLS connector built from [`TlsSettings`]; libpq gets the resolved values
//! written out, so that both sides always agree.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    const ALL: [(&'static str, SslMode); 6] = [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    pub fn parse(text: &str) -> Result<SslMode> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, m)| *m)
            .ok_or_else(|| Error::config(format!("postgres.url: sslmode `{text}` is not one of disable, allow, prefer, require, verify-ca, verify-full")))
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, m)| *m == self).map(|(n, _)| *n).expect("every mode is named")
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the certificates that may sign the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates (only these are trusted, as in libpq).
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

impl fmt::Display for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(p) => write!(f, "sslrootcert {}", p.display()),
            RootCert::System => f.write_str("the system trust store (sslrootcert=system)"),
        }
    }
}

/// A client certificate and its key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS settings of a connection, resolved with libpq's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root: Option<RootCert>,
    pub client: Option<ClientCert>,
    /// Send the host name in the handshake (`sslsni`, default on).
    pub sni: bool,
    /// `ssl_min_protocol_version` (libpq's default: TLSv1.2).
    pub min_protocol: TlsVersion,
    /// `ssl_max_protocol_version` (none: the newest the library has).
    pub max_protocol: Option<TlsVersion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

impl TlsVersion {
    fn parse(key: &str, text: &str) -> Result<TlsVersion> {
        match text {
            "TLSv1" => Ok(TlsVersion::Tls1_0),
            "TLSv1.1" => Ok(TlsVersion::Tls1_1),
            "TLSv1.2" => Ok(TlsVersion::Tls1_2),
            "TLSv1.3" => Ok(TlsVersion::Tls1_3),
            _ => Err(Error::config(format!("postgres.url: {key} `{text}` is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"))),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1",
            TlsVersion::Tls1_1 => "TLSv1.1",
            TlsVersion::Tls1_2 => "TLSv1.2",
            TlsVersion::Tls1_3 => "TLSv1.3",
        }
    }
}

impl TlsSettings {
    /// The server's certificate chain is checked against the root certificates: always for
    /// `verify-ca`/`verify-full`, and (as libpq does) in the weaker modes too when a root
    /// certificate file is there.
    pub fn verify_chain(&self) -> bool {
        self.mode >= SslMode::VerifyCa || (self.mode > SslMode::Disable && self.root.is_some())
    }

    /// The certificate must name the host deriver connects to.
    pub fn verify_host(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }

    /// What the logs and `deriver status` say about the connection's protection.
    pub fn describe(&self) -> String {
        let check = if self.verify_host() {
            "certificate and host name verified"
        } else if self.verify_chain() {
            "certificate verified, host name not checked"
        } else {
            "certificate not verified"
        };
        format!("sslmode={}, {check}", self.mode)
    }
}

/// The TLS parameters deriver takes out of a connection string; everything else is passed on.
const TLS_KEYS: [&str; 9] =
    ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version", "sslpassword", "gssencmode"];

/// Parameters of libpq that deriver cannot honour on its query connections: refused loudly
/// rather than ignored.
const UNSUPPORTED: [(&str, &str); 4] = [
    ("sslcrl", "certificate revocation lists (sslcrl) are not supported"),
    ("sslcrldir", "certificate revocation lists (sslcrldir) are not supported"),
    ("sslcertmode", "sslcertmode is not supported (a client certificate is sent whenever sslcert is set)"),
    ("requirepeer", "requirepeer is not supported"),
];

/// The two forms of a libpq connection string.
#[derive(Debug, Clone, PartialEq)]
enum Form {
    /// `postgres://…`: everything up to `?`, then the parameters (decoded).
    Uri { base: String },
    /// `key=value …`.
    KeyValue,
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnInfo {
    form: Form,
    params: Vec<(String, String)>,
}

impl ConnInfo {
    pub fn parse(text: &str) -> Result<ConnInfo> {
        let text = text.trim();
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (base, query) = text.split_once('?').unwrap_or((text, ""));
            let mut params = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| Error::config(format!("postgres.url: the parameter `{}` has no value (write key=value)", decode(pair))))?;
                params.push((decode(k), decode(v)));
            }
            Ok(ConnInfo { form: Form::Uri { base: base.to_string() }, params })
        } else {
            Ok(ConnInfo { form: Form::KeyValue, params: parse_key_values(text)? })
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        // libpq: a later value of the same key wins.
        self.params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.params.retain(|(k, _)| k != key);
        self.params.push((key.to_string(), value.to_string()));
    }

    fn without(&self, keys: &[&str]) -> ConnInfo {
        ConnInfo { form: self.form.clone(), params: self.params.iter().filter(|(k, _)| !keys.contains(&k.as_str())).cloned().collect() }
    }

    /// Resolves the TLS settings as libpq does: the string's parameters, else the `PGSSL*`
    /// environment variables, else the files under `~/.postgresql/` that exist.
    pub fn tls(&self, env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<TlsSettings> {
        for (key, why) in UNSUPPORTED {
            if self.get(key).is_some() {
                return Err(Error::config(format!("postgres.url: {why}")));
            }
        }
        if self.get("sslpassword").is_some_and(|p| !p.is_empty()) {
            return Err(Error::config(
                "postgres.url: encrypted client keys (sslpassword) are not supported; store the key unencrypted with permissions 0600 (openssl pkey -in key.pem -out plain.pem)",
            ));
        }
        if self.get("gssencmode") == Some("require") {
            return Err(Error::config("postgres.url: gssencmode=require is not supported (deriver encrypts with TLS; use sslmode)"));
        }
        let param = |key: &str, var: &str| self.get(key).map(str::to_string).or_else(|| env(var)).filter(|v| !v.is_empty());
        let default_file = |name: &str| home.map(|h| h.join(".postgresql").join(name)).filter(|p| p.exists());

        let explicit_mode = param("sslmode", "PGSSLMODE").map(|m| SslMode::parse(&m)).transpose()?;
        let root = match param("sslrootcert", "PGSSLROOTCERT") {
            Some(r) if r == "system" => Some(RootCert::System),
            Some(r) => {
                let path = PathBuf::from(&r);
                if !path.exists() {
                    return Err(Error::config(format!(
                        "postgres.url: the sslrootcert file {r} does not exist (a PEM file of the CA certificates that sign the server's certificate, or `system`)"
                    )));
                }
                Some(RootCert::File(path))
            }
            None => default_file("root.crt").map(RootCert::File),
        };
        let mode = match (explicit_mode, &root) {
            // libpq 16: the system store is only safe with the host name checked.
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull && m != SslMode::Disable => {
                return Err(Error::config(format!(
                    "postgres.url: sslmode={m} may not be used with sslrootcert=system (any certificate a public CA signed would do); use sslmode=verify-full"
                )));
            }
            (Some(m), _) => m,
            (None, _) => SslMode::Prefer,
        };
        if mode >= SslMode::VerifyCa && root.is_none() {
            return Err(Error::config(format!(
                "postgres.url: sslmode={mode} needs the CA certificate that signs the server's certificate: set sslrootcert to a PEM file with it, or sslrootcert=system to use the operating system's trust store"
            )));
        }
        let cert = param("sslcert", "PGSSLCERT").map(PathBuf::from);
        let key = param("sslkey", "PGSSLKEY").map(PathBuf::from);
        let client = match (cert, key) {
            (Some(cert), key) => {
                let key = key.unwrap_or_else(|| cert.with_extension("key"));
                for (what, p) in [("sslcert", &cert), ("sslkey", &key)] {
                    if !p.exists() {
                        return Err(Error::config(format!("postgres.url: the {what} file {} does not exist", p.display())));
                    }
                }
                check_key_permissions(&key)?;
                Some(ClientCert { cert, key })
            }
            (None, Some(key)) => {
                return Err(Error::config(format!("postgres.url: sslkey {} is set but sslcert is not (set both)", key.display())));
            }
            (None, None) => match (default_file("postgresql.crt"), default_file("postgresql.key")) {
                (Some(cert), Some(key)) => {
                    check_key_permissions(&key)?;
                    Some(ClientCert { cert, key })
                }
                _ => None,
            },
        };
        let sni = match self.get("sslsni") {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => return Err(Error::config(format!("postgres.url: sslsni `{other}` is not 0 or 1"))),
        };
        let min_protocol = self.get("ssl_min_protocol_version").map(|v| TlsVersion::parse("ssl_min_protocol_version", v)).transpose()?;
        let max_protocol = self.get("ssl_max_protocol_version").map(|v| TlsVersion::parse("ssl_max_protocol_version", v)).transpose()?;
        Ok(TlsSettings { mode, root, client, sni, min_protocol: min_protocol.unwrap_or(TlsVersion::Tls1_2), max_protocol })
    }

    /// The string for `tokio-postgres`: without the TLS parameters (its TLS comes from the
    /// connector; `sslmode` is set on its config).
    pub fn for_query(&self) -> String {
        self.without(&TLS_KEYS).render()
    }

    /// The string for libpq's replication connection: the resolved TLS settings written out
    /// (so libpq and the query connections agree whatever libpq's version), plus `extra`.
    pub fn for_libpq(&self, tls: &TlsSettings, system_roots: Option<&Path>, extra: &[(&str, &str)]) -> Result<String> {
        let mut out = self.without(&TLS_KEYS);
        out.set("sslmode", tls.mode.as_str());
        match &tls.root {
            Some(RootCert::File(p)) => out.set("sslrootcert", &p.to_string_lossy()),
            // libpq before 16 reads `system` as a file name: name the store's file instead.
            Some(RootCert::System) => match system_roots {
                Some(p) => out.set("sslrootcert", &p.to_string_lossy()),
                None => {
                    return Err(Error::config(
                        "postgres.url: sslrootcert=system, but the operating system's CA bundle was not found (install the ca-certificates package, or set sslrootcert to a PEM file)",
                    ))
                }
            },
            None => {}
        }
        if let Some(c) = &tls.client {
            out.set("sslcert", &c.cert.to_string_lossy());
            out.set("sslkey", &c.key.to_string_lossy());
        }
        if !tls.sni {
            out.set("sslsni", "0");
        }
        out.set("ssl_min_protocol_version", tls.min_protocol.as_str());
        if let Some(max) = tls.max_protocol {
            out.set("ssl_max_protocol_version", max.as_str());
        }
        for (k, v) in extra {
            out.set(k, v);
        }
        Ok(out.render())
    }

    fn render(&self) -> String {
        match &self.form {
            Form::Uri { base } => {
                if self.params.is_empty() {
                    return base.clone();
                }
                let query: Vec<String> = self.params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
                format!("{base}?{}", query.join("&"))
            }
            Form::KeyValue => self.params.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join(" "),
        }
    }
}

/// libpq refuses a private key that others may read; so does deriver, with the same rule.
fn check_key_permissions(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| Error::config(format!("postgres.url: cannot read the sslkey file {}", key.display())).with_detail(e))?;
    let mode = meta.mode() & 0o777;
    let (limit, rule) = if meta.uid() == 0 { (0o640, "u=rw,g=r (0640) or less when owned by root") } else { (0o600, "u=rw (0600) or less") };
    if mode & !limit != 0 {
        return Err(Error::config(format!(
            "postgres.url: the private key {} has permissions {mode:04o}; it must have {rule} (chmod 600 {})",
            key.display(),
            key.display()
        )));
    }
    Ok(())
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Percent-encodes all but unreserved characters. libpq decodes `%XX` in URIs but does not
/// read `+` as a space, so form encoding would be wrong.
fn encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A key=value value, quoted when it needs to be.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// libpq's key=value syntax: `key = value` pairs separated by white space; a value is a run of
/// non-space characters or a single-quoted string in which `\'` and `\\` escape.
fn parse_key_values(text: &str) -> Result<Vec<(String, String)>> {
    let bad = |why: &str| Error::config(format!("postgres.url is not a valid connection string: {why} (write postgres://… or key=value pairs)"));
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("`{key}` is not followed by `=`")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| bad("a quoted value ends in a backslash"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad(&format!("the value of `{key}` has no closing quote"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| bad("a value ends in a backslash"))?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn both_forms_round_trip_and_drop_the_tls_keys_for_tokio_postgres() {
        let c = ConnInfo::parse("postgres://u:p%40ss@h:5432/db?sslmode=verify-full&sslrootcert=/x/ca.pem&application_name=a+b%20c").unwrap();
        assert_eq!(c.get("sslmode"), Some("verify-full"));
        assert_eq!(c.get("application_name"), Some("a+b c"));
        assert_eq!(c.for_query(), "postgres://u:p%40ss@h:5432/db?application_name=a%2Bb%20c");
        let kv = ConnInfo::parse("host=h  dbname = 'my db' password='it\\'s' sslmode=require").unwrap();
        assert_eq!(kv.get("dbname"), Some("my db"));
        assert_eq!(kv.get("password"), Some("it's"));
        assert_eq!(kv.for_query(), "host=h dbname='my db' password='it\\'s'");
        assert_eq!(ConnInfo::parse(&kv.for_query()).unwrap().get("password"), Some("it's"));
        for bad in ["host", "host=h dbname='x", "postgres://h/db?sslmode"] {
            assert_eq!(ConnInfo::parse(bad).unwrap_err().kind, crate::error::ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn sslmode_follows_libpq() {
        let tls = |url: &str, env: &dyn Fn(&str) -> Option<String>| ConnInfo::parse(url).unwrap().tls(env, None);
        assert_eq!(tls("postgres://h/db", &no_env).unwrap().mode, SslMode::Prefer);
        let pg_env = |k: &str| (k == "PGSSLMODE").then(|| "require".to_string());
        assert_eq!(tls("postgres://h/db", &pg_env).unwrap().mode, SslMode::Require);
        // The URL wins over the environment.
        assert_eq!(tls("postgres://h/db?sslmode=disable", &pg_env).unwrap().mode, SslMode::Disable);
        let e = tls("postgres://h/db?sslmode=maybe", &no_env).unwrap_err();
        assert!(e.message.contains("sslmode `maybe` is not one of"), "{}", e.message);
        // Verification needs a root certificate.
        let e = tls("postgres://h/db?sslmode=verify-full", &no_env).unwrap_err();
        assert!(e.message.contains("set sslrootcert"), "{}", e.message);
        // `system` implies verify-full and refuses weaker modes.
        let s = tls("postgres://h/db?sslrootcert=system", &no_env).unwrap();
        assert_eq!((s.mode, s.root), (SslMode::VerifyFull, Some(RootCert::System)));
        assert!(tls("postgres://h/db?sslrootcert=system&sslmode=require", &no_env).unwrap_err().message.contains("use sslmode=verify-full"));
        let e = tls("postgres://h/db?sslrootcert=/nonexistent/ca.pem", &no_env).unwrap_err();
        assert!(e.message.contains("/nonexistent/ca.pem does not exist"), "{}", e.message);
        for bad in ["sslcrl=/x", "sslpassword=x", "gssencmode=require", "sslsni=2", "ssl_min_protocol_version=SSLv3"] {
            assert!(tls(&format!("postgres://h/db?{bad}"), &no_env).is_err(), "{bad}");
        }
        assert!(tls("postgres://h/db?gssencmode=disable", &no_env).is_ok());
    }

    #[test]
    fn root_and_client_files_resolve_like_libpq() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".postgresql");
        std::fs::create_dir(&dir).unwrap();
        let url = ConnInfo::parse("postgres://h/db?sslmode=require").unwrap();
        // No root.crt: require encrypts without verifying.
        let s = url.tls(&no_env, Some(home.path())).unwrap();
        assert!(!s.verify_chain() && !s.verify_host());
        // A root.crt makes require verify the chain (libpq's verify-ca behaviour).
        std::fs::write(dir.join("root.crt"), "x").unwrap();
        let s = url.tls(&no_env, Some(home.path())).unwrap();
        assert_eq!(s.root, Some(RootCert::File(dir.join("root.crt"))));
        assert!(s.verify_chain() && !s.verify_host());
        // Default client certificate, with libpq's key permission rule.
        std::fs::write(dir.join("postgresql.crt"), "c").unwrap();
        std::fs::write(dir.join("postgresql.key"), "k").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("postgresql.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = url.tls(&no_env, Some(home.path())).unwrap_err();
        if unsafe { libc::geteuid() } != 0 {
            assert!(e.message.contains("chmod 600"), "{}", e.message);
        } else {
            // Owned by root: 0640 is the limit, so 0644 is still too open.
            assert!(e.message.contains("0640"), "{}", e.message);
        }
        std::fs::set_permissions(dir.join("postgresql.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = url.tls(&no_env, Some(home.path())).unwrap();
        assert_eq!(s.client, Some(ClientCert { cert: dir.join("postgresql.crt"), key: dir.join("postgresql.key") }));
        // sslkey without sslcert is refused.
        let e = ConnInfo::parse("postgres://h/db?sslkey=/x").unwrap().tls(&no_env, None).unwrap_err();
        assert!(e.message.contains("sslcert is not"), "{}", e.message);
    }

    #[test]
    fn libpq_gets_the_resolved_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let url = format!("postgres://u:p@h/db?sslmode=verify-ca&sslrootcert={}&replication=x", ca.display());
        let c = ConnInfo::parse(&url).unwrap();
        let tls = c.tls(&no_env, None).unwrap();
        let s = c.for_libpq(&tls, None, &[("replication", "database"), ("options", "-c a=b")]).unwrap();
        let back = ConnInfo::parse(&s).unwrap();
        assert_eq!(back.get("sslmode"), Some("verify-ca"));
        assert_eq!(back.get("sslrootcert").map(PathBuf::from), Some(ca.clone()));
        assert_eq!(back.get("replication"), Some("database"));
        assert_eq!(back.get("options"), Some("-c a=b"));
        assert!(!s.contains('+'));
        // `system` becomes the bundle's file; without one, a clear error.
        let c = ConnInfo::parse("host=h sslrootcert=system").unwrap();
        let tls = c.tls(&no_env, None).unwrap();
        let s = c.for_libpq(&tls, Some(Path::new("/etc/ssl/certs/ca-certificates.crt")), &[]).unwrap();
        assert!(s.contains("sslmode=verify-full") && s.contains("sslrootcert=/etc/ssl/certs/ca-certificates.crt"), "{s}");
        assert!(c.for_libpq(&tls, None, &[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_value_survives_both_forms(value in "[ -~\\t]{0,20}") {
            for base in ["postgres://h/db?", "host=h "] {
                let mut c = ConnInfo::parse(base).unwrap();
                c.set("application_name", &value);
                let back = ConnInfo::parse(&c.render()).unwrap();
                proptest::prop_assert_eq!(back.get("application_name"), Some(value.as_str()));
            }
        }
    }
}
