//! A private certificate authority made for one test, with the `openssl` command: a CA
//! certificate, and a server certificate it signed for `localhost` and `127.0.0.1` —
//! what a company's internal PKI hands a service.

use std::path::{Path, PathBuf};

use crate::keys::openssl;

/// A CA and one server certificate it issued, as PEM files in a fresh directory.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Makes the CA and the server certificate (EC P-256, valid one day).
    pub fn new() -> anyhow::Result<Self> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("roomcast-ca-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let at = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=Roomcast Test CA",
                ][..],
                &ec,
                &["-keyout", &at("ca.key"), "-out", &at("ca.pem")],
            ]
            .concat(),
            None,
        )?;
        issue(
            &dir,
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        // A client certificate, for servers that verify their clients (Redis with
        // `tls-auth-clients yes`).
        issue(
            &dir,
            "client",
            "/CN=roomcast-client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )?;
        Ok(Self { dir })
    }

    /// A client certificate the CA signed (PEM), and its key.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client-key.pem"))
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM) for `localhost` and `127.0.0.1`.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `{name}-key.pem` and `{name}.pem` in `dir`: an EC P-256 key and a certificate
/// for `subject` with the extensions `ext`, signed by the CA in `dir` (valid one day).
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) -> anyhow::Result<()> {
    let at = |file: String| dir.join(file).to_string_lossy().into_owned();
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        &[
            "req",
            "-nodes",
            "-subj",
            subject,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &at(format!("{name}-key.pem")),
            "-out",
            &at(format!("{name}.csr")),
        ],
        None,
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &at(format!("{name}.csr")),
            "-CA",
            &at("ca.pem".into()),
            "-CAkey",
            &at("ca.key".into()),
            "-CAcreateserial",
            "-extfile",
            &at(format!("{name}.ext")),
            "-out",
            &at(format!("{name}.pem")),
        ],
        None,
    )?;
    Ok(())
}
