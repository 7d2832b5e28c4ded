//! `cargo xtask image` and `cargo xtask lint-deploy`: the runtime image users run, and
//! the checks on everything under `deploy/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn target_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned()))
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Builds the gateway in release mode and packages it with `deploy/image/Dockerfile` as
/// `roomcast/gateway:latest` and `roomcast/gateway:<version>`.
pub(crate) fn image() -> anyhow::Result<()> {
    run(
        Command::new(cargo()).args(["build", "--release", "--locked", "-p", "gateway"]),
        "cargo build --release -p gateway",
    )?;
    run(
        Command::new(cargo()).args(["build", "--quiet", "-p", "e2e"]),
        "building the image tool",
    )?;
    let target = target_dir();
    let binary = target.join("release/gateway");
    run(
        Command::new(target.join("debug/e2e"))
            .arg("--image")
            .arg(&binary)
            .arg("roomcast/gateway:latest"),
        "the image build",
    )?;
    let version = format!("roomcast/gateway:{}", env!("CARGO_PKG_VERSION"));
    run(
        Command::new("docker").args(["tag", "roomcast/gateway:latest", &version]),
        "docker tag",
    )?;
    println!("also tagged {version}");
    Ok(())
}

/// The linters, from `deploy/lint-requirements.txt`, in a virtualenv under the target
/// directory (made once).
fn linters() -> anyhow::Result<PathBuf> {
    let venv = target_dir().join("lint-venv");
    let requirements = Path::new("deploy/lint-requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(requirements).context("deploy/lint-requirements.txt")?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(venv.join("bin"));
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(requirements),
        "pip install -r deploy/lint-requirements.txt",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(venv.join("bin"))
}

/// The resources `kustomization.yaml` lists (its `resources:` block).
fn kustomize_resources(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml"))?;
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            inside = line.trim_end() == "resources:";
            continue;
        }
        if inside && let Some(item) = line.trim().strip_prefix("- ") {
            out.push(dir.join(item.trim()));
        }
    }
    Ok(out)
}

/// Lints every Dockerfile (hadolint), every YAML file (yamllint), the Kubernetes
/// manifests against the API schemas (kubernetes-validate, strict), the Compose file
/// (`docker-compose config`), and checks that the kustomization lists every manifest.
/// The nginx files are checked by `nginx -t` in the interop suite, which runs them.
pub(crate) fn lint() -> anyhow::Result<()> {
    let bin = linters()?;
    run(
        Command::new(bin.join("hadolint")).args(["deploy/Dockerfile", "deploy/image/Dockerfile"]),
        "hadolint",
    )?;
    eprintln!("hadolint: deploy/Dockerfile, deploy/image/Dockerfile ok");
    run(
        Command::new(bin.join("yamllint")).args([
            "--strict",
            "-c",
            "deploy/.yamllint",
            "deploy",
            ".github",
        ]),
        "yamllint",
    )?;
    eprintln!("yamllint: deploy/, .github/ ok");
    let base = Path::new("deploy/k8s/base");
    let resources = kustomize_resources(base)?;
    for entry in std::fs::read_dir(base)? {
        let path = entry?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        ensure!(
            !yaml || name == "kustomization.yaml" || resources.contains(&path),
            "{} is not listed in {}/kustomization.yaml",
            path.display(),
            base.display()
        );
    }
    run(
        Command::new(bin.join("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", "1.31.0"])
            .args(&resources),
        "kubernetes-validate",
    )?;
    eprintln!(
        "kubernetes-validate (1.31, strict): {} manifests ok",
        resources.len()
    );
    run(
        Command::new("docker-compose")
            .args([
                "-f",
                "deploy/compose/docker-compose.yml",
                "config",
                "--quiet",
            ])
            .env("JWT_SECRET", "lint")
            .env("PUBLISH_API_KEY", "lint"),
        "docker-compose config",
    )?;
    eprintln!("docker-compose config: deploy/compose ok");
    Ok(())
}
