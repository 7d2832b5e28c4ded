//! Container images assembled from local binaries: no registry is needed.
//!
//! Each image is a root filesystem holding one executable and the shared libraries `ldd`
//! lists for it, under a fixed local tag (rebuilding replaces the tag, so repeated runs
//! do not pile up images that matter). The gateway's is built by `docker build` with the
//! Dockerfile users get (`deploy/image/Dockerfile`); Redis and nginx (Debian's binaries)
//! are imported with `docker import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// Local tag of the Redis image.
pub(crate) const REDIS_IMAGE: (&str, &str) = ("roomcast-e2e-redis", "local");
/// Local tag of the gateway image.
pub(crate) const GATEWAY_IMAGE: (&str, &str) = ("roomcast-e2e-gateway", "local");
/// Local tag of the nginx image.
pub(crate) const NGINX_IMAGE: (&str, &str) = ("roomcast-e2e-nginx", "local");

/// The repository's root (this crate is `crates/e2e`).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// Builds the three images; `gateway` is the gateway binary to package.
pub(crate) fn build_all(work: &Path, gateway: &Path) -> anyhow::Result<()> {
    let redis = which("redis-server")?;
    let root = work.join("redis-rootfs");
    stage(&root, &[(redis.as_path(), "/usr/bin/redis-server")])?;
    // `redis-server` as the command, like the official image, so Compose's `command:`
    // works with either.
    import(
        &root,
        REDIS_IMAGE,
        &[
            r#"CMD ["redis-server","--bind","0.0.0.0","--protected-mode","no","--save","","--appendonly","no"]"#,
        ],
    )?;
    let nginx = which("nginx").or_else(|_| {
        let debian = PathBuf::from("/usr/sbin/nginx");
        if debian.exists() {
            Ok(debian)
        } else {
            bail!("nginx not found: apt-get install nginx")
        }
    })?;
    let root = work.join("nginx-rootfs");
    stage(&root, &[(nginx.as_path(), "/usr/sbin/nginx")])?;
    for dir in ["etc/nginx/conf.d", "var/lib/nginx", "var/log/nginx", "run"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/etc/nginx/mime.types", root.join("etc/nginx/mime.types"))?;
    // Workers run as nginx's compiled-in default user.
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    import(&root, NGINX_IMAGE, &[r#"CMD ["nginx","-g","daemon off;"]"#])?;
    gateway_image(work, gateway, GATEWAY_IMAGE)
}

/// Builds the gateway image from `binary` with `deploy/image/Dockerfile`, as `cargo
/// xtask image` does for users.
pub(crate) fn gateway_image(
    work: &Path,
    binary: &Path,
    (name, tag): (&str, &str),
) -> anyhow::Result<()> {
    let context = work.join("gateway-context");
    let root = context.join("rootfs");
    stage(&root, &[(binary, "/usr/local/bin/gateway")])?;
    std::fs::write(
        root.join("etc/passwd"),
        "roomcast:x:10001:10001:roomcast:/nonexistent:/sbin/nologin\n",
    )?;
    std::fs::write(root.join("etc/group"), "roomcast:x:10001:\n")?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let image = format!("{name}:{tag}");
    let out = Command::new("docker")
        .args(["build", "--quiet", "-t", &image, "-f"])
        .arg(repo_root().join("deploy/image/Dockerfile"))
        .arg(&context)
        // The classic builder: no buildx plugin needed, and FROM scratch pulls nothing.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .context("running docker build")?;
    ensure!(
        out.status.success(),
        "docker build of {image} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
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

/// A root filesystem at `root` with `files` (source, path in the image) and the shared
/// libraries each needs, plus /tmp, /etc/hosts and a root-only /etc/passwd.
fn stage(root: &Path, files: &[(&Path, &str)]) -> anyhow::Result<()> {
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
    Ok(())
}

/// `docker import` of `root` as `name:tag` with Dockerfile-style `changes`.
fn import(root: &Path, (name, tag): (&str, &str), changes: &[&str]) -> anyhow::Result<()> {
    let image = format!("{name}:{tag}");
    let changes: String = changes.iter().map(|c| format!(" --change '{c}'")).collect();
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "tar -C '{}' -c . | docker import{changes} - {image} >/dev/null",
                root.display()
            ),
        ])
        .status()?;
    ensure!(status.success(), "docker import of {image} failed");
    Ok(())
}
