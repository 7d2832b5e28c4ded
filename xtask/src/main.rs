//! `cargo xtask <task>`: the project's automation, one module per task.

mod ci;
mod e2e;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Roomcast project automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI runs: format check, clippy (-D warnings), docs, the whole test suite.
    Ci,
    /// Redis + 3 gateway containers (testcontainers) and the end-to-end matrix.
    E2e,
    /// Load generator and report against the reference stacks (not built yet).
    Bench,
    /// A local development cluster (not built yet).
    Cluster,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::E2e => e2e::run(),
        Task::Bench | Task::Cluster => anyhow::bail!(
            "this task is not built yet; see the open issues (`cargo xtask ci` is the test suite)"
        ),
    }
}
