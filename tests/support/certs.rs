//! A private PKI for the TLS tests, made with the `openssl` command line as an administrator
//! would: a CA, a server certificate for `localhost` and `127.0.0.1`, client certificates, and a
//! second CA that nothing trusts.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signs the server's and the clients' certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing the servers present.
    pub other_ca: PathBuf,
    /// The server's certificate (SAN `localhost`, `127.0.0.1`) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("the openssl command runs (scripts/dev-stack.sh install)");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn key_and_csr(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
}

fn self_signed_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN=deriver test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn sign(dir: &Path, ca: &str, name: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "3",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn restrict(path: &Path, owner: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if let (Some(owner), true) = (owner, super::is_root()) {
        assert!(Command::new("chown").arg(owner).arg(path).status().unwrap().success());
    }
}

impl Pki {
    /// Makes the CA, the other CA and the server certificate. The server's key belongs to the
    /// `postgres` user when the tests run as root (Postgres refuses a key others can read).
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("deriver-pki-").tempdir().unwrap().keep();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        self_signed_ca(&dir, "ca");
        self_signed_ca(&dir, "other-ca");
        key_and_csr(&dir, "server", "localhost");
        sign(
            &dir,
            "ca",
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        let server_key = dir.join("server.key");
        restrict(&server_key, Some("postgres"));
        Pki { ca: dir.join("ca.pem"), other_ca: dir.join("other-ca.pem"), server_cert: dir.join("server.pem"), server_key, dir }
    }

    /// A client certificate for user `cn`, signed by `ca` (`"ca"` or `"other-ca"`): (cert, key).
    pub fn client(&self, ca: &str, cn: &str) -> (PathBuf, PathBuf) {
        let name = format!("client-{ca}-{cn}");
        key_and_csr(&self.dir, &name, cn);
        sign(&self.dir, ca, &name, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n");
        let key = self.dir.join(format!("{name}.key"));
        restrict(&key, None);
        (self.dir.join(format!("{name}.pem")), key)
    }

    /// A copy of the server's key owned by the test's own user (redis-server runs as that user).
    pub fn server_key_for_current_user(&self) -> PathBuf {
        let copy = self.dir.join("server-own.key");
        std::fs::copy(&self.server_key, &copy).unwrap();
        restrict(&copy, None);
        copy
    }
}
