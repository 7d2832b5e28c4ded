//! `cargo xtask bench [--quick | --recovery | --sharding | --tracing | --write-path |
//! --polling | --compat]`: build the stacks
//! and run the benchmark, or one of its studies.
//!
//! The full run uses release builds (what people deploy); `--quick` is a smoke run on the
//! debug build CI already has. The runner lifts the open-files limit for itself and the
//! servers it starts.

use std::process::Command;

use anyhow::{Context, bail};

pub(crate) fn run(quick: bool, study: Option<&str>) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let profile: &[&str] = if quick { &[] } else { &["--release"] };
    // The socketioxide reference stack is a workspace of its own (upstream socketioxide,
    // not Roomcast's patched copy), built into the same target directory.
    for args in [
        &["build", "--quiet", "-p", "bench"][..],
        &[
            "build",
            "--quiet",
            "--manifest-path",
            "bench/peers/socketioxide-redis/Cargo.toml",
        ][..],
    ] {
        let mut cmd = Command::new(&cargo);
        cmd.args(args).args(profile);
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            cmd.env("CARGO_TARGET_DIR", "target");
        }
        let status = cmd.status().context("building the benchmark")?;
        if !status.success() {
            bail!("build failed: cargo {}", args.join(" "));
        }
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let dir = if quick { "debug" } else { "release" };
    let bench = format!("{target}/{dir}/bench");
    let script =
        r#"ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true; exec "$0" "$@""#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script, &bench]);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(study);
    let status = cmd.status().context("running the benchmark")?;
    if !status.success() {
        bail!("benchmark failed ({status})");
    }
    Ok(())
}
