//! What each suite needs from the machine, checked before anything is compiled.
//!
//! `cargo xtask doctor` reports it; `cargo xtask ci` checks it first and, on Debian as
//! root, installs what is missing (and starts a Docker engine that it stops at the end);
//! anywhere else it prints the one command to run and stops, in seconds.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One thing a suite needs.
struct Need {
    /// What it is, for people.
    what: &'static str,
    /// The Debian package that provides it.
    package: &'static str,
    /// The suites that need it.
    suites: &'static str,
    /// Whether this machine has it.
    present: fn() -> bool,
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const NEEDS: &[Need] = &[
    Need {
        what: "redis-server",
        package: "redis-server",
        suites: "tests, interop, bench",
        present: || runs("redis-server", &["--version"]),
    },
    Need {
        what: "openssl (test keys and certificates)",
        package: "openssl",
        suites: "tests",
        present: || runs("openssl", &["version"]),
    },
    Need {
        what: "Node.js",
        package: "nodejs",
        suites: "tests (JS quick start), interop, bench",
        present: || runs("node", &["--version"]),
    },
    Need {
        what: "npm",
        package: "npm",
        suites: "tests (JS quick start), interop, bench",
        present: || runs("npm", &["--version"]),
    },
    Need {
        what: "pkg-config and OpenSSL headers (rust_socketio)",
        package: "pkg-config libssl-dev",
        suites: "clippy, tests, interop",
        present: || runs("pkg-config", &["--exists", "openssl"]),
    },
    Need {
        what: "Python 3 with venv",
        package: "python3-venv",
        suites: "interop",
        present: || runs("python3", &["-c", "import venv, ensurepip"]),
    },
    Need {
        what: "Chromium",
        package: "chromium",
        suites: "interop (browser)",
        present: || {
            std::env::var_os("CHROMIUM").is_some_and(|p| Path::new(&p).exists())
                || Path::new("/usr/bin/chromium").exists()
        },
    },
    Need {
        what: "promtool (Prometheus: metrics lint, alert rule tests)",
        package: "prometheus",
        suites: "tests",
        present: || runs("promtool", &["--version"]),
    },
    Need {
        what: "nginx (the deploy/nginx configurations)",
        package: "nginx",
        suites: "interop (nginx)",
        present: || runs("nginx", &["-v"]) || runs("/usr/sbin/nginx", &["-v"]),
    },
    Need {
        what: "docker-compose (deploy/compose)",
        package: "docker-compose",
        suites: "e2e (Compose)",
        present: || runs("docker-compose", &["version"]),
    },
    Need {
        what: "Docker engine (dockerd)",
        package: "docker.io",
        suites: "e2e",
        present: || runs("docker", &["info"]) || runs("dockerd", &["--version"]),
    },
];

/// `cargo xtask doctor`: what each suite needs and whether this machine has it.
pub(crate) fn doctor() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    println!("{:<50} {:<8} needed by", "requirement", "status");
    for need in NEEDS {
        let ok = (need.present)();
        println!(
            "{:<50} {:<8} {}",
            need.what,
            if ok { "ok" } else { "MISSING" },
            need.suites
        );
        if !ok {
            missing.push(need.package);
        }
    }
    let engine = runs("docker", &["info"]);
    println!(
        "{:<50} {:<8} e2e (cargo xtask ci starts one when it can)",
        "Docker engine answering",
        if engine { "ok" } else { "no" }
    );
    if missing.is_empty() {
        println!("\nEverything `cargo xtask ci` needs is here.");
    } else {
        println!("\nInstall the rest with:\n  {}", install_command(&missing));
    }
    Ok(())
}

fn install_command(packages: &[&str]) -> String {
    format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        packages.join(" ")
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A Docker engine this run started, stopped when dropped.
pub(crate) struct Engine(Option<Child>);

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            eprintln!("==> stopping the Docker engine this run started");
            // Only the engine we started, by its PID.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Makes sure every suite can run: installs what is missing on Debian as root, and
/// starts a Docker engine if none answers; elsewhere fails at once with the command to
/// run. The returned guard stops the engine it started.
pub(crate) fn ensure() -> anyhow::Result<Engine> {
    let missing: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !(n.present)())
        .map(|n| n.package)
        .collect();
    if !missing.is_empty() {
        let debian = Path::new("/etc/debian_version").exists();
        if !(debian && is_root()) {
            bail!(
                "cargo xtask ci needs what this machine lacks; install it first:\n  {}\n(`cargo xtask doctor` lists what each suite needs)",
                install_command(&missing)
            );
        }
        let packages: Vec<&str> = missing.iter().flat_map(|p| p.split(' ')).collect();
        eprintln!("==> installing: {}", packages.join(" "));
        let update = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .context("apt-get update")?;
        if !update.success() {
            bail!("apt-get update failed");
        }
        let install = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .context("apt-get install")?;
        if !install.success() {
            bail!("apt-get install {} failed", packages.join(" "));
        }
    }
    if runs("docker", &["info"]) {
        return Ok(Engine(None));
    }
    if !is_root() {
        bail!("no Docker engine answers; start one (e.g. `sudo dockerd &`) and run again");
    }
    eprintln!("==> starting a Docker engine (log: /var/log/dockerd.log)");
    let log = std::fs::File::create("/var/log/dockerd.log").context("creating the dockerd log")?;
    let child = Command::new("dockerd")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dockerd")?;
    let engine = Engine(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !runs("docker", &["info"]) {
        if Instant::now() > deadline {
            bail!("dockerd did not answer within 60 s; see /var/log/dockerd.log");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(engine)
}
