//! `cargo xtask bench [--quick | --scale | --recovery | --sharding | --tracing |
//! --write-path | --polling | --compat]`: build the stacks and run the benchmark, or one
//! of its studies.
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
    // The machine's ceiling, peer-raw, lives outside the repository (`../shared/peer-raw`
    // next to the clone, or PEER_RAW_DIR); built into the same target directory when
    // present, left out of the run when not.
    let peer_raw = std::env::var_os("PEER_RAW_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("../shared/peer-raw"))
        .join("Cargo.toml");
    let peer_raw = peer_raw.exists().then(|| peer_raw.display().to_string());
    if peer_raw.is_none() {
        eprintln!("bench: no ../shared/peer-raw (PEER_RAW_DIR): the ceiling stack is left out");
    }
    let mut builds: Vec<Vec<&str>> = vec![
        vec!["build", "--quiet", "-p", "bench", "-p", "gateway"],
        vec![
            "build",
            "--quiet",
            "--manifest-path",
            "bench/peers/socketioxide-redis/Cargo.toml",
        ],
    ];
    if let Some(manifest) = &peer_raw {
        builds.push(vec!["build", "--quiet", "--manifest-path", manifest]);
    }
    for args in &builds {
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
    let script = r#"ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; exec "$0" "$@""#;
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
