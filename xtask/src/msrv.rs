//! `cargo xtask msrv`: the minimum supported Rust version is one number, and true.
//!
//! Every package of the workspace and the carried crates in vendor/ must state the
//! workspace's `rust-version`, and no package in the dependency graph may need a newer
//! one. Only one toolchain is installed here, so this checks the declarations cargo
//! itself enforces (`cargo` refuses a package whose `rust-version` is newer than it),
//! rather than building with the old compiler.

use std::process::Command;

use anyhow::{Context, bail};

/// Compares every package's `rust-version` with the workspace's.
pub(crate) fn check() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .context("workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"].as_array().context("packages")?;
    let ours = packages
        .iter()
        .find(|p| p["name"] == "gateway")
        .and_then(|p| p["rust_version"].as_str())
        .context("the gateway package states no rust-version")?;
    let ours_v = parse(ours)?;
    let mut problems = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        let id = p["id"].as_str().unwrap_or("");
        let local = members.contains(&id) || name.starts_with("roomcast-");
        match p["rust_version"].as_str() {
            Some(v) if local && parse(v)? != ours_v => problems.push(format!(
                "{name} states rust-version {v}, the workspace {ours}"
            )),
            Some(v) if parse(v)? > ours_v => problems.push(format!(
                "dependency {name} {} needs Rust {v}, newer than our {ours}",
                p["version"].as_str().unwrap_or("?")
            )),
            None if local => problems.push(format!("{name} states no rust-version")),
            _ => {}
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "rust-version is not consistent ({} problems)",
            problems.len()
        );
    }
    eprintln!("rust-version {ours}: {} packages checked", packages.len());
    Ok(())
}

/// `1.94` or `1.94.0` as (major, minor, patch).
fn parse(v: &str) -> anyhow::Result<(u32, u32, u32)> {
    let mut parts = v.split('.').map(str::parse::<u32>);
    let mut next = || parts.next().transpose().map(Option::unwrap_or_default);
    let parsed = (next(), next(), next());
    match parsed {
        (Ok(a), Ok(b), Ok(c)) => Ok((a, b, c)),
        _ => bail!("unreadable rust-version {v:?}"),
    }
}
