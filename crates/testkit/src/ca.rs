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
        openssl(
            &[
                &["req", "-nodes", "-subj", "/CN=localhost"][..],
                &ec,
                &["-keyout", &at("key.pem"), "-out", &at("server.csr")],
            ]
            .concat(),
            None,
        )?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &at("server.csr"),
                "-CA",
                &at("ca.pem"),
                "-CAkey",
                &at("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &at("server.ext"),
                "-out",
                &at("cert.pem"),
            ],
            None,
        )?;
        // A client certificate, for servers that verify their clients (Redis with
        // `tls-auth-clients yes`).
        openssl(
            &[
                &["req", "-nodes", "-subj", "/CN=roomcast-client"][..],
                &ec,
                &["-keyout", &at("client.key"), "-out", &at("client.csr")],
            ]
            .concat(),
            None,
        )?;
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &at("client.csr"),
                "-CA",
                &at("ca.pem"),
                "-CAkey",
                &at("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &at("client.ext"),
                "-out",
                &at("client.pem"),
            ],
            None,
        )?;
        Ok(Self { dir })
    }

    /// A client certificate the CA signed (PEM), and its key.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM) for `localhost` and `127.0.0.1`.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The server certificate's private key (PEM, PKCS#8).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("key.pem")
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
