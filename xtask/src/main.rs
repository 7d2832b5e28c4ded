//! `cargo xtask <task>`: the project's automation, one module per task.

mod bench;
mod ci;
mod e2e;
mod prereq;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Roomcast project automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI runs: format check, clippy (-D warnings), docs, the whole test suite,
    /// the interop suite, the e2e matrix and a benchmark smoke run.
    Ci,
    /// Redis + 3 gateway containers (testcontainers) and the end-to-end matrix.
    E2e,
    /// The JS, Python and Rust Socket.IO clients and Chromium on the demo page against a
    /// 3-node cluster (`INTEROP_ONLY=js,python,rust,browser` for a subset).
    Interop,
    /// Roomcast against the reference stacks, side by side (`--quick`: one-minute smoke run).
    Bench {
        /// A short smoke run on debug builds (part of ci); no speed verdict.
        #[arg(long)]
        quick: bool,
    },
    /// Redis and three development nodes on this machine until Ctrl-C, with demo-page
    /// links for each node.
    Cluster,
    /// What each suite needs from this machine, and whether it is here.
    Doctor,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::E2e => e2e::run(),
        Task::Interop => e2e::interop(),
        Task::Bench { quick } => bench::run(quick),
        Task::Cluster => e2e::cluster(),
        Task::Doctor => prereq::doctor(),
    }
}
