//! Test support shared by Roomcast's test suites: gateway nodes started in-process on
//! `127.0.0.1:0`, a small raw Socket.IO v5 client over WebSocket, token minting and HTTP
//! helpers. Unpublished; compiled once for every crate's tests.
//!
//! The client speaks Engine.IO v4 / Socket.IO v5 frames itself so tests see exactly what
//! crosses the wire, and so nothing here depends on another Socket.IO implementation.

mod ca;
mod client;
mod keys;
pub mod nginx;
mod node;
mod otlp;
mod python;
mod redis;
mod redis_cluster;
mod sentinel;

pub use ca::TestCa;
pub use client::{ConnectError, DEFAULT_WAIT, Event, SioClient};
pub use keys::{KeyKind, KeyPair, keypair};
pub use nginx::Nginx;
pub use node::{
    TEST_KEY, TEST_SECRET, TestNode, http_client, metric_sum, publish, spawn_memory_cluster,
    spawn_node, spawn_redis_cluster, token,
};
pub use otlp::{OtlpReceiver, ReceivedSpan, check_publish_trace};
pub use python::python_venv;
pub use redis::{RedisServer, free_port};
pub use redis_cluster::{RedisClusterSet, master_owning};
pub use sentinel::{SENTINEL_MASTER, SentinelSet};

/// Copies the directory `from` (recursively) to `to`, e.g. a shipped configuration
/// into a test's own directory.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
