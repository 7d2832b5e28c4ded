//! `cargo xtask <task>`: the project's automation, one module per task.
//!
//! Arguments are read by hand, without clap: `cargo xtask ci` on a fresh machine must
//! compile this crate and report a missing prerequisite within seconds.

mod bench;
mod ci;
mod deploy;
mod e2e;
mod layering;
mod msrv;
mod prereq;
mod vendor;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  ci              everything CI runs: prerequisites, format check, clippy (-D warnings),
                  docs, the whole test suite, the interop suite, the e2e matrix and a
                  benchmark smoke run
  e2e             Redis + 3 gateway containers (testcontainers) and the end-to-end matrix
  interop         the JS, Python and Rust Socket.IO clients and Chromium on the demo page
                  against a 3-node cluster (INTEROP_ONLY=js,python,rust,browser for a subset)
  abuse           attacks against Redis + 2 gateway processes: one row per attack with the
                  nodes' memory and a victim's latency; fails when a bound breaks
  fuzz [CASES]    the property-based fuzz targets (envelope JSON/MessagePack/legacy
                  decoding, room and scoped names, raw Engine.IO/Socket.IO frames into a
                  running node) with CASES cases each (default 20000; the test suite runs
                  a few hundred)
  bench [--quick] Roomcast against the reference stacks and the machine's ceiling
                  (../shared/peer-raw, or PEER_RAW_DIR, when present), side by side
                  (--quick: a smoke run on debug builds, part of ci; no speed verdict)
  bench --scale [--quick]
                  one node of each stack from 1 000 connections up to 100 000 (as far as
                  the open-files limit allows): memory, storm, CPU per delivery, latency,
                  SIGTERM drain; plots in docs/bench/scale-*.svg
  bench --recovery | --sharding | --tracing | --write-path | --polling | --compat
                  one study, release build, in one run: fan-out with connection state
                  recovery off/on; targeted load on one Redis vs a 3-shard Redis Cluster;
                  traces off/exported at 1 %; WebSocket write path queued vs direct;
                  long-polling clients through sticky vs round-robin nginx; the
                  fan-out published natively vs by python-socketio and Node's adapter
                  (docs/performance.md)
  image           the runtime image (deploy/image/Dockerfile) from a release build, as
                  roomcast/gateway:latest and :<version>
  lint-deploy     hadolint, yamllint, kubernetes-validate and docker-compose config on
                  everything under deploy/ (part of ci)
  cluster         Redis and three development nodes until Ctrl-C, with demo-page links
  doctor          what each suite needs from this machine, and whether it is here
  embed-check     build and run crates/embed-check, a project outside the workspace that
                  embeds two gateway nodes (no [patch] section)
  layering        no module cycle in the product crates, no file over 900 lines before
                  its tests
  msrv            every package states the workspace's rust-version, and no dependency
                  needs a newer one
  vendor check | apply | unpack | export | test
                  the carried engineioxide/socketioxide patch series (vendor/README.md):
                  check vendor/ is pristine + series, write it, edit the series with git,
                  run upstream's own tests on the patched crates";

fn main() {
    if let Err(e) = run() {
        // The message is the report: no backtrace, whatever RUST_BACKTRACE says.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    // Every task works from the workspace root, wherever `cargo xtask` was typed.
    // `cargo run` sets CARGO_MANIFEST_DIR for the process: read it at run time. The
    // compile-time value can name another checkout when several share one target
    // directory (cargo re-links `target/debug/xtask` only when it rebuilds).
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        Into::into,
    );
    let root = manifest_dir.join("..");
    std::env::set_current_dir(&root)
        .map_err(|e| anyhow::anyhow!("entering the workspace root: {e}"))?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ci"] => ci::run(),
        ["e2e"] => e2e::run(),
        ["interop"] => e2e::interop(),
        ["abuse"] => e2e::abuse(),
        ["fuzz"] => e2e::fuzz(20_000),
        ["fuzz", cases] => e2e::fuzz(
            cases
                .parse()
                .map_err(|_| anyhow::anyhow!("CASES must be a number, not {cases:?}"))?,
        ),
        ["bench"] => bench::run(false, None),
        ["bench", "--quick"] => bench::run(true, None),
        ["bench", "--scale"] => bench::run(false, Some("--scale")),
        ["bench", "--scale", "--quick"] | ["bench", "--quick", "--scale"] => {
            bench::run(true, Some("--scale"))
        }
        [
            "bench",
            study @ ("--recovery" | "--sharding" | "--tracing" | "--write-path" | "--polling"
            | "--compat"),
        ] => bench::run(false, Some(study)),
        ["cluster"] => e2e::cluster(),
        ["image"] => deploy::image(),
        ["lint-deploy"] => deploy::lint(),
        ["doctor"] => prereq::doctor(),
        ["vendor", command] => vendor::run(command),
        ["embed-check"] => ci::embed_check(),
        ["msrv"] => msrv::check(),
        ["layering"] => layering::check(),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
