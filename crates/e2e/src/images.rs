//! Container images assembled from local binaries: no registry is needed.
//!
//! Each image is a root filesystem holding one executable and the shared libraries `ldd`
//! lists for it, imported with `docker import` under a fixed local tag (re-importing
//! replaces the tag, so repeated runs do not pile up images that matter).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// Local tag of the Redis image.
pub(crate) const REDIS_IMAGE: (&str, &str) = ("roomcast-e2e-redis", "local");
/// Local tag of the gateway image.
pub(crate) const GATEWAY_IMAGE: (&str, &str) = ("roomcast-e2e-gateway", "local");

/// Fails with what to do when no Docker engine answers.
pub(crate) fn check_docker() -> anyhow::Result<()> {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "no Docker engine is reachable. Install and start one, e.g. on Debian:\n  \
             apt-get install -y docker.io && (dockerd >/var/log/dockerd.log 2>&1 &)\n\
             (.ci/run does this when docker is missing)"
        );
    }
    Ok(())
}

/// Imports both images; `gateway` is the gateway binary to package.
pub(crate) fn build_all(work: &Path, gateway: &Path) -> anyhow::Result<()> {
    let redis = which("redis-server")?;
    build(
        &work.join("redis-rootfs"),
        &[(redis.as_path(), "/usr/bin/redis-server")],
        REDIS_IMAGE,
        r#"ENTRYPOINT ["/usr/bin/redis-server"]"#,
        r#"CMD ["--bind","0.0.0.0","--protected-mode","no","--save","","--appendonly","no"]"#,
    )?;
    build(
        &work.join("gateway-rootfs"),
        &[(gateway, "/usr/local/bin/gateway")],
        GATEWAY_IMAGE,
        r#"ENTRYPOINT ["/usr/local/bin/gateway"]"#,
        r#"CMD []"#,
    )
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        !path.is_empty(),
        "{program} not found: install it (apt-get install redis-server)"
    );
    Ok(PathBuf::from(path))
}

/// The absolute paths of the shared libraries `binary` needs (and the loader).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(out.status.success(), "ldd {} failed", binary.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

fn build(
    root: &Path,
    files: &[(&Path, &str)],
    (name, tag): (&str, &str),
    entrypoint: &str,
    cmd: &str,
) -> anyhow::Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    for dir in ["tmp", "data", "etc"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    // Some libraries look up the local host name and users.
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/sbin/nologin\n")?;
    let mut copies: Vec<(PathBuf, String)> = Vec::new();
    for (src, dest) in files {
        copies.push((src.to_path_buf(), (*dest).to_owned()));
        for lib in shared_libraries(src)? {
            let dest = lib.to_string_lossy().into_owned();
            copies.push((lib, dest));
        }
    }
    for (src, dest) in copies {
        let target = root.join(dest.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Follows symlinks: the file lands under the name the program is started by.
        std::fs::copy(&src, &target).with_context(|| format!("copying {}", src.display()))?;
    }
    let image = format!("{name}:{tag}");
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "tar -C '{}' -c . | docker import --change '{entrypoint}' --change '{cmd}' - {image} >/dev/null",
                root.display()
            ),
        ])
        .status()?;
    ensure!(status.success(), "docker import of {image} failed");
    Ok(())
}
