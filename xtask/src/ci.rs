//! `cargo xtask ci`: what CI runs, in the order that fails fastest: prerequisites, the vendor
//! series and MSRV checks, format, clippy, docs, the test suite, upstream's tests on the patched
//! Socket.IO crates, a project outside the workspace that embeds the gateway, the deploy/ linters, the interop suite (other people's clients and a browser), the
//! end-to-end matrix on containers, and a benchmark smoke run.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// One step: a name, cargo's arguments, extra environment.
type Step<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);

/// Runs every step; stops at the first failure.
pub(crate) fn run() -> anyhow::Result<()> {
    // Before compiling anything: a machine that lacks something fails in seconds (or, on
    // Debian as root, gets it installed). The guard stops a Docker engine started here.
    let _engine = crate::prereq::ensure()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    timed(
        "vendor series: vendor/ is the pinned crates.io sources + vendor/patches",
        crate::vendor::check,
    )?;
    timed(
        "layering: no module cycle, no file over 900 lines before its tests",
        crate::layering::check,
    )?;
    timed(
        "msrv: one rust-version, no dependency needing a newer one",
        crate::msrv::check,
    )?;
    let steps: &[Step<'_>] = &[
        // `--all` also checks path dependencies, the carried crates among them: the
        // series' code is rustfmt-clean, as upstream's CI requires (a fix goes into the
        // series, never straight into vendor/).
        ("format", &["fmt", "--all", "--check"], &[]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        ),
        (
            "docs",
            &["doc", "--workspace", "--no-deps", "--quiet"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        ),
        ("tests", &["test", "--workspace"], &[]),
    ];
    for (name, args, env) in steps {
        let started = Instant::now();
        eprintln!("==> {name}: cargo {}", args.join(" "));
        let status = Command::new(&cargo)
            .args(*args)
            .envs(env.iter().copied())
            .status()
            .with_context(|| format!("running cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("{name} failed ({status})");
        }
        eprintln!("==> {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
    }
    timed(
        "upstream tests: engineioxide's and socketioxide's own suites on the patched crates",
        crate::vendor::test,
    )?;
    timed(
        "embed-check: a project outside the workspace embeds gateway nodes",
        embed_check,
    )?;
    timed(
        "lint-deploy: Dockerfiles, YAML, Kubernetes schemas, Compose",
        crate::deploy::lint,
    )?;
    timed(
        "interop: JS, Python and Rust clients, Chromium and nginx on a 3-node cluster",
        crate::e2e::interop,
    )?;
    timed(
        "abuse: attacks against Redis + 2 gateway processes",
        crate::e2e::abuse,
    )?;
    timed(
        "e2e: Redis + 3 gateway containers, the scenario matrix",
        crate::e2e::run,
    )?;
    timed(
        "bench --quick: smoke run of the benchmark (no speed verdict)",
        || crate::bench::run(true, None),
    )?;
    timed(
        "bench --scale --quick: smoke run of the scale study (200 and 1000 connections)",
        || crate::bench::run(true, Some("--scale")),
    )?;
    eprintln!("==> ci: all steps passed");
    Ok(())
}

/// Runs one step, announcing it and its time; the step's name is the text before `:`.
fn timed(what: &str, step: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let name = what.split(':').next().unwrap_or(what);
    let started = Instant::now();
    eprintln!("==> {what}");
    step().with_context(|| format!("{name} failed"))?;
    eprintln!("==> {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Builds and runs `crates/embed-check`, a project with its own workspace that depends on
/// `gateway` by path and nothing else: the patched Socket.IO crates must come along.
pub(crate) fn embed_check() -> anyhow::Result<()> {
    let dir = std::path::Path::new("crates/embed-check");
    // Our lock file as its start: the same versions, so the shared target directory
    // already holds what it needs.
    std::fs::copy("Cargo.lock", dir.join("Cargo.lock")).context("copying Cargo.lock")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", crate::vendor::target_dir())
        .args(["run", "--quiet"])
        .status()
        .context("running cargo in crates/embed-check")?;
    if !status.success() {
        bail!("the embedding project failed ({status})");
    }
    Ok(())
}
