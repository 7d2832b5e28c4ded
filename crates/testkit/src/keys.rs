//! Real signing keys for token tests, made by the `openssl` command.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// A key pair in PEM form (PKCS#8 private key, SubjectPublicKeyInfo public key).
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key, to sign tokens.
    pub private_pem: Vec<u8>,
    /// The public key, to verify them.
    pub public_pem: Vec<u8>,
}

/// Which kind of key to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048 (RS256).
    Rsa,
    /// EC P-256 (ES256).
    EcP256,
}

/// Makes a fresh key pair with `openssl genpkey`.
pub fn keypair(kind: KeyKind) -> anyhow::Result<KeyPair> {
    let opts: &[&str] = match kind {
        KeyKind::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        KeyKind::EcP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    let private_pem = openssl(&[&["genpkey"][..], opts].concat(), None)?;
    let public_pem = openssl(&["pkey", "-pubout"], Some(&private_pem))?;
    Ok(KeyPair {
        private_pem,
        public_pem,
    })
}

pub(crate) fn openssl(args: &[&str], input: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run openssl to make a test key")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
