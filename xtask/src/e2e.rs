//! `cargo xtask e2e`: build the gateway and the e2e runner (debug, sharing the test
//! build), then run the matrix. The runner builds its container images itself.

use std::process::Command;

use anyhow::{Context, bail};

pub(crate) fn run() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "gateway", "-p", "e2e"])
        .status()
        .context("building the gateway and the e2e runner")?;
    if !status.success() {
        bail!("build failed");
    }
    let status = Command::new(&cargo)
        .args(["run", "--quiet", "-p", "e2e"])
        .status()
        .context("running the e2e matrix")?;
    if !status.success() {
        bail!("e2e matrix failed ({status})");
    }
    Ok(())
}
