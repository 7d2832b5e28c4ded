//! The shipped nginx configurations (`deploy/nginx`) run by Debian's nginx on loopback in
//! front of gateways: the interop suite's clients and the benchmark's polling clients go
//! through the sites as users deploy them.
//!
//! The files are used as shipped; the harness only writes what a user edits — the
//! gateway list (`snippets/roomcast-servers.conf`), the certificate (`tls/`), the sites
//! enabled (`conf.d/`) — moves each site's `listen` to a free loopback port, and adds
//! one access log (`logs/upstreams.log`: session id, the gateways nginx sent the request
//! to) so that the suites can see which nodes served each session.
//!
//! nginx runs in the foreground as one process (`master_process off`), stopped with
//! SIGQUIT (its graceful stop) when [`Nginx::stop`] is called or it is dropped; `stop`
//! then checks that nothing listens on its ports any more.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail, ensure};
use tokio::process::{Child, Command};

/// A running nginx; stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    /// Base URL of each site, by its file name.
    pub sites: Vec<(String, String)>,
    /// The access log of session ids and upstreams.
    pub upstream_log: PathBuf,
    /// The gateways, as nginx names them in that log (`host:port`).
    pub gateways: Vec<String>,
    /// The loopback ports the sites listen on.
    ports: Vec<u16>,
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// Prepares `dir` from `deploy/nginx` for `gateways` (host:port each) with every shipped
/// site enabled (the TLS site serves `ca`'s certificate), checks it with `nginx -t`, and
/// starts nginx.
pub async fn start(
    deploy: &Path,
    dir: &Path,
    gateways: &[String],
    ca: &crate::TestCa,
) -> anyhow::Result<Nginx> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    crate::copy_dir(deploy, dir)?;
    for extra in ["conf.d", "tls", "logs"] {
        std::fs::create_dir_all(dir.join(extra))?;
    }
    std::fs::copy("/etc/nginx/mime.types", dir.join("mime.types"))
        .context("/etc/nginx/mime.types (Debian's nginx package)")?;
    std::fs::copy(ca.cert_file(), dir.join("tls/cert.pem"))?;
    std::fs::copy(ca.key_file(), dir.join("tls/key.pem"))?;
    let servers: String = gateways
        .iter()
        .map(|g| format!("server {g} max_fails=1 fail_timeout=5s;\n"))
        .collect();
    std::fs::write(dir.join("snippets/roomcast-servers.conf"), servers)?;
    std::fs::write(
        dir.join("conf.d/00-interop-upstreams.conf"),
        "log_format roomcast_upstreams '$arg_sid|$upstream_addr|$request_method|$status|$request_time|$uri|$arg_transport';\n\
         access_log logs/upstreams.log roomcast_upstreams;\n",
    )?;
    let mut sites = Vec::new();
    let mut ports = Vec::new();
    for site in [
        "roomcast.conf",
        "roomcast-tls.conf",
        "sticky-ip-hash.conf",
        "sticky-cookie.conf",
    ] {
        let text = std::fs::read_to_string(dir.join("sites").join(site))?;
        let port = crate::free_port()?;
        ports.push(port);
        let (from, to, url) = if text.contains("listen 443 ssl;") {
            (
                "listen 443 ssl;",
                format!("listen 127.0.0.1:{port} ssl;"),
                format!("https://localhost:{port}"),
            )
        } else {
            (
                "listen 80;",
                format!("listen 127.0.0.1:{port};"),
                format!("http://127.0.0.1:{port}"),
            )
        };
        ensure!(text.contains(from), "{site} has no `{from}`");
        std::fs::write(dir.join("conf.d").join(site), text.replace(from, &to))?;
        sites.push((site.to_owned(), url));
    }
    let conf = dir.join("nginx.conf");
    // One process, so that nothing can outlive it.
    let globals = format!(
        "user root; pid {}; master_process off;",
        dir.join("nginx.pid").display()
    );
    let test = Command::new(nginx_binary())
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", &globals])
        .output()
        .await
        .context("running nginx -t")?;
    if !test.status.success() {
        bail!("nginx -t: {}", String::from_utf8_lossy(&test.stderr));
    }
    let log = std::fs::File::create(dir.join("logs/nginx.log"))?;
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", &format!("daemon off; {globals}")])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting nginx")?;
    // Ready when the first site answers.
    let probe = format!("{}/health/live", sites[0].1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !reqwest::get(&probe)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "nginx did not answer within 10 s (see {})",
            dir.join("logs/nginx.log").display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(Nginx {
        child: Some(child),
        sites,
        upstream_log: dir.join("logs/upstreams.log"),
        gateways: gateways.to_vec(),
        ports,
    })
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

impl Nginx {
    /// nginx's process id (one process: `master_process off`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The base URL of the site enabled from `deploy/nginx/sites/{file}`.
    pub fn site(&self, file: &str) -> anyhow::Result<&str> {
        self.sites
            .iter()
            .find(|(name, _)| name == file)
            .map(|(_, url)| url.as_str())
            .with_context(|| format!("no site {file}"))
    }

    /// Stops nginx gracefully (SIGQUIT; SIGKILL after 10 s) and checks that nothing it
    /// started still listens on its ports.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid, "QUIT");
            }
            if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await.ok();
                bail!("nginx did not stop within 10 s of SIGQUIT");
            }
        }
        let listening: Vec<u16> = self
            .ports
            .iter()
            .copied()
            .filter(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            .collect();
        ensure!(
            listening.is_empty(),
            "after nginx stopped, something still listens on its ports {listening:?}"
        );
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Not stopped through `stop` (a failed run): the same graceful signal.
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            signal(pid, "QUIT");
        }
    }
}
