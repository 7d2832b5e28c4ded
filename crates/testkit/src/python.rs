//! Python virtualenvs for suites that run real Python packages (the interop suite's
//! clients and publishers, the benchmark's python-socketio publishers).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::process::Command;

/// A virtualenv at `venv` with `requirements` (a pinned requirements file) installed,
/// made with the system's `python3`; skipped when one made from the same file is there.
/// Returns its interpreter.
pub async fn python_venv(requirements: &Path, venv: &Path) -> anyhow::Result<PathBuf> {
    let wanted = std::fs::read(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let python = venv.join("bin/python");
    let stamp = venv.join(".roomcast-requirements");
    if python.exists() && std::fs::read(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!(
        "==> creating {} and installing {}",
        venv.display(),
        requirements.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .await
        .context("running python3 (install python3 and python3-venv; .ci/run does)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements)
        .status()
        .await?;
    if !status.success() {
        bail!("pip install failed ({status})");
    }
    std::fs::write(stamp, wanted)?;
    Ok(python)
}
