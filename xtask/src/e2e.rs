//! `cargo xtask e2e`, `interop` and `cluster`: build the gateway and the runner (debug,
//! sharing the test build), then run the runner.
//! The e2e runner builds its container images itself; the interop runner installs its
//! client packages from lockfiles.

use std::process::Command;

use anyhow::{Context, bail};

/// The end-to-end matrix on containers.
pub(crate) fn run() -> anyhow::Result<()> {
    build_and_run("e2e", &[], "the e2e matrix")
}

/// Clients nobody here wrote against a 3-node cluster.
pub(crate) fn interop() -> anyhow::Result<()> {
    build_and_run("interop", &[], "the interop suite")
}

/// Attacks against Redis + 2 gateway processes.
pub(crate) fn abuse() -> anyhow::Result<()> {
    build_and_run("abuse", &[], "the abuse suite")
}

/// The fuzz targets (tests named `fuzz_*`), `cases` cases each.
pub(crate) fn fuzz(cases: u64) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args([
            "test", "-p", "envelope", "-p", "rooms", "-p", "gateway", "fuzz_",
        ])
        .env("PROPTEST_CASES", cases.to_string())
        .status()
        .context("running the fuzz targets")?;
    if !status.success() {
        bail!("a fuzz target failed ({status}); proptest printed the minimal failing input");
    }
    Ok(())
}

/// Redis and three development nodes until Ctrl-C (the interop runner's cluster).
pub(crate) fn cluster() -> anyhow::Result<()> {
    build_and_run("interop", &["--cluster"], "the development cluster")
}

fn build_and_run(runner: &str, args: &[&str], what: &str) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "gateway", "-p", runner])
        .status()
        .with_context(|| format!("building the gateway and {what}"))?;
    if !status.success() {
        bail!("build failed");
    }
    let status = Command::new(&cargo)
        .args(["run", "--quiet", "-p", runner, "--"])
        .args(args)
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
