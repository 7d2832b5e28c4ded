//! A real `redis-server` on a free port, owned by the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::{Context, bail};

/// A `redis-server` process on `127.0.0.1:<port>`, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// With TLS: its certificates and how it checks clients.
    tls: Option<Tls>,
    /// More `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
}

/// How a TLS server is set up.
#[derive(Debug)]
struct Tls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    /// Clients must present a certificate the CA signed: this one (and its key), which
    /// `redis-cli` then uses.
    verify_clients: bool,
    client: Option<(PathBuf, PathBuf)>,
    /// A directory of its own, removed with the server.
    owned_dir: Option<PathBuf>,
    /// A CA clients can verify (not a self-signed certificate they must skip checking).
    trusted: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut server = Self {
            port,
            child: None,
            tls: None,
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS, with a fresh self-signed certificate (made
    /// by the `openssl` command) for `127.0.0.1`. [`RedisServer::url`] is then a
    /// `rediss://` URL that skips certificate verification (`#insecure`).
    pub fn start_tls() -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("roomcast-redis-tls-{port}"));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run openssl to make a test certificate")?;
        if !status.success() {
            bail!("openssl could not make a test certificate");
        }
        let mut server = Self {
            port,
            child: None,
            tls: Some(Tls {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
                ca: dir.join("cert.pem"),
                verify_clients: false,
                client: None,
                owned_dir: Some(dir),
                trusted: false,
            }),
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS with `ca`'s server certificate (a private
    /// CA, as inside a company); with `verify_clients` it also asks clients for a
    /// certificate `ca` signed. [`RedisServer::url`] is then a plain `rediss://` URL:
    /// clients must trust `ca`.
    pub fn start_with_ca(ca: &crate::TestCa, verify_clients: bool) -> anyhow::Result<Self> {
        let mut server = Self {
            port: free_port()?,
            child: None,
            tls: Some(Tls {
                cert: ca.cert_file(),
                key: ca.key_file(),
                ca: ca.ca_file(),
                verify_clients,
                client: Some(ca.client_files()),
                owned_dir: None,
                trusted: true,
            }),
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a server with more `redis-server` arguments.
    pub fn start_with_args(extra: Vec<String>) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, extra)
    }

    /// [`RedisServer::start_with_args`] on a given port.
    pub fn start_on(port: u16, extra: Vec<String>) -> anyhow::Result<Self> {
        let mut server = Self {
            port,
            child: None,
            tls: None,
            extra,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a replica of the server on `127.0.0.1:<master>` (`--replicaof`).
    pub fn start_replica_of(master: u16) -> anyhow::Result<Self> {
        Self::start_with_args(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.to_string(),
        ])
    }

    fn port_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        match &self.tls {
            None => vec!["--port".into(), port],
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                tls.cert.display().to_string(),
                "--tls-key-file".into(),
                tls.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                tls.ca.display().to_string(),
                "--tls-auth-clients".into(),
                if tls.verify_clients { "yes" } else { "no" }.into(),
            ],
        }
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(self.port_args())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot run redis-server: install it (apt-get install redis-server; .ci/run does)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        )
    }

    fn ping(&self) -> bool {
        if self.tls.is_some() {
            return self.cli(&["PING"]).is_ok_and(|out| out.trim() == "PONG");
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:<port>`; with TLS `rediss://127.0.0.1:<port>`, which skips
    /// certificate checks (`/#insecure`) for a self-signed server.
    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(tls) if tls.trusted => format!("rediss://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}/#insecure", self.port),
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (like a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut tls: Vec<String> = Vec::new();
        if let Some(t) = &self.tls {
            tls.push("--tls".into());
            if t.trusted {
                tls.extend(["--cacert".into(), t.ca.display().to_string()]);
            } else {
                tls.push("--insecure".into());
            }
            if let Some((cert, key)) = &t.client {
                tls.extend([
                    "--cert".into(),
                    cert.display().to_string(),
                    "--key".into(),
                    key.display().to_string(),
                ]);
            }
        }
        redis_cli(self.port, &tls, args)
    }

    /// `PUBSUB CHANNELS <pattern>`, sorted.
    pub fn pubsub_channels(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut channels: Vec<String> = self
            .cli(&["PUBSUB", "CHANNELS", pattern])?
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect();
        channels.sort();
        Ok(channels)
    }
}

/// Runs `redis-cli -h 127.0.0.1 -p <port> <options> <args>` and returns its output.
pub(crate) fn redis_cli(port: u16, options: &[String], args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(options)
        .args(args)
        .output()
        .context("cannot run redis-cli")?;
    if !out.status.success() {
        bail!(
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TCP port on `127.0.0.1` that was free a moment ago (the OS picked it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.tls.as_ref().and_then(|t| t.owned_dir.as_ref()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
