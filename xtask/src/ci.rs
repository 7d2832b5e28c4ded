//! `cargo xtask ci`: what CI runs, in the order that fails fastest: prerequisites, format, clippy,
//! docs, the test suite, the deploy/ linters, the interop suite (other people's clients and a browser), the
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
    let steps: &[Step<'_>] = &[
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
        // The carried engineioxide patches' own tests (vendor/README.md).
        (
            "vendor tests",
            &["test", "--quiet", "-p", "engineioxide", "--lib"],
            &[],
        ),
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
    let started = Instant::now();
    eprintln!("==> lint-deploy: Dockerfiles, YAML, Kubernetes schemas, Compose");
    crate::deploy::lint()?;
    eprintln!(
        "==> lint-deploy: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    eprintln!("==> interop: JS, Python and Rust clients, Chromium and nginx on a 3-node cluster");
    crate::e2e::interop()?;
    eprintln!("==> interop: ok in {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    eprintln!("==> abuse: attacks against Redis + 2 gateway processes");
    crate::e2e::abuse()?;
    eprintln!("==> abuse: ok in {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    eprintln!("==> e2e: Redis + 3 gateway containers, the scenario matrix");
    crate::e2e::run()?;
    eprintln!("==> e2e: ok in {:.1}s", started.elapsed().as_secs_f64());
    let started = Instant::now();
    eprintln!("==> bench --quick: smoke run of the benchmark (no speed verdict)");
    crate::bench::run(true, None)?;
    eprintln!(
        "==> bench --quick: ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    eprintln!("==> ci: all steps passed");
    Ok(())
}
