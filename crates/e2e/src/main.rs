//! `cargo xtask e2e`: Redis and three gateway nodes in containers (testcontainers), on a
//! private Docker network, driven from the host by real Socket.IO clients through the
//! scenario matrix. Prints a table, writes `<target>/e2e/summary.json` and each
//! container's log, and exits non-zero when any scenario fails.
//!
//! Images are assembled locally from the gateway binary and Debian's `redis-server`
//! (see `images.rs`); nothing is pulled.

mod deploy;
mod images;
mod recovery;
mod scenarios;
mod sharded;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use testcontainers::core::{ContainerPort, Host, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Label put on every container and network of a run, to clean up after crashed runs.
pub(crate) const LABEL: &str = "roomcast-e2e";

/// One running cluster.
pub(crate) struct Env {
    pub(crate) network: String,
    pub(crate) run: String,
    pub(crate) prefix: String,
    pub(crate) redis: ContainerAsync<GenericImage>,
    pub(crate) redis_port: u16,
    pub(crate) nodes: Vec<Node>,
    /// Where the gateways export their traces.
    pub(crate) traces: testkit::OtlpReceiver,
}

/// One gateway container.
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) container: ContainerAsync<GenericImage>,
    pub(crate) url: String,
    /// Fixed address on the run's network.
    pub(crate) ip: String,
}

impl Env {
    pub(crate) fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }
}

/// What a scenario reports.
pub(crate) struct Outcome {
    pub(crate) figures: String,
    pub(crate) details: Value,
}

pub(crate) fn target_dir() -> PathBuf {
    // <target>/debug/e2e → <target>
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

pub(crate) fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes every container and network a previous run of this tool left behind.
fn remove_leftovers(filter: &str) {
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", filter]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker(&args);
        }
    }
    if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", filter]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["network", "rm", id]);
        }
    }
}

/// Removes this run's containers and network however the run ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_leftovers(&format!("label={LABEL}={}", self.0));
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Creates the run's network with a subnet of its own, so that nodes keep fixed addresses
/// across restarts (nginx resolves its upstreams once); returns the subnet's first three
/// octets.
fn create_network(run: &str, network: &str) -> anyhow::Result<String> {
    let seed = u32::from_str_radix(run, 16).unwrap_or(0);
    let mut last = None;
    for attempt in 0..8 {
        let base = format!("10.{}.{}", 200 + (seed + attempt) % 50, (seed >> 8) % 250);
        match docker(&[
            "network",
            "create",
            "--subnet",
            &format!("{base}.0/24"),
            "--label",
            &format!("{LABEL}={run}"),
            network,
        ]) {
            Ok(_) => return Ok(base),
            // Another network holds that range: try the next.
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no free subnet")))
}

async fn start(run: &str) -> anyhow::Result<Env> {
    let network = format!("roomcast-e2e-{run}");
    let subnet = create_network(run, &network)?;
    let redis_name = format!("roomcast-e2e-{run}-redis");
    let redis_port = free_port()?;
    let (name, tag) = images::REDIS_IMAGE;
    let redis = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_exposed_port(6379.tcp())
        .with_network(&network)
        .with_container_name(&redis_name)
        .with_label(LABEL, run)
        // Fixed, so the port survives a restart of the container.
        .with_mapped_port(redis_port, ContainerPort::Tcp(6379))
        .start()
        .await
        .context("starting the Redis container")?;

    let prefix = format!("e2e{run}");
    // On every interface: the containers reach it through the host gateway.
    let traces = testkit::OtlpReceiver::start("0.0.0.0").await?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let id = format!("node-{}", i + 1);
        // Created on the default bridge, which carries the published port, then attached
        // to the private network that reaches Redis: detaching it later partitions the
        // node from Redis while the test still reaches the node.
        let container = gateway(run, &id)
            .with_env_var("REDIS_URL", format!("redis://{redis_name}:6379"))
            .with_env_var("REDIS_CHANNEL_PREFIX", &prefix)
            .with_env_var("NODE_TTL_SECS", "6")
            .with_env_var("NAMESPACES", format!("/,{}", recovery::NAMESPACE))
            .with_env_var("RECOVERY_NAMESPACES", recovery::NAMESPACE)
            .with_host("host.docker.internal", Host::HostGateway)
            .with_env_var(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://host.docker.internal:{}", traces.port),
            )
            .with_env_var("OTEL_BSP_SCHEDULE_DELAY", "200")
            .start()
            .await
            .with_context(|| format!("starting gateway {id}"))?;
        let ip = format!("{subnet}.{}", 10 + i);
        docker(&["network", "connect", "--ip", &ip, &network, container.id()])?;
        let port = container.get_host_port_ipv4(3000.tcp()).await?;
        nodes.push(Node {
            id,
            container,
            url: format!("http://127.0.0.1:{port}"),
            ip,
        });
    }
    let env = Env {
        network,
        run: run.to_owned(),
        prefix,
        redis,
        redis_port,
        nodes,
        traces,
    };
    for node in &env.nodes {
        scenarios::wait_health(node, "ok", Duration::from_secs(30)).await?;
    }
    Ok(env)
}

/// A gateway container of run `run` named `id`, in production mode with the test
/// secrets, JSON logs and its port 3000 published; callers add how it reaches Redis.
pub(crate) fn gateway(run: &str, id: &str) -> testcontainers::core::ContainerRequest<GenericImage> {
    let (name, tag) = images::GATEWAY_IMAGE;
    GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout("listening on"))
        .with_exposed_port(3000.tcp())
        .with_container_name(format!("roomcast-e2e-{run}-{id}"))
        .with_label(LABEL, run)
        .with_env_var("GATEWAY_MODE", "production")
        .with_env_var("GATEWAY_NODE_ID", id)
        .with_env_var("PORT", "3000")
        .with_env_var("JWT_SECRET", testkit::TEST_SECRET)
        .with_env_var("PUBLISH_API_KEY", testkit::TEST_KEY)
        .with_env_var("LOG_FORMAT", "json")
        .with_env_var("RUST_LOG", "info")
}

fn save_logs(env: &Env, dir: &std::path::Path) {
    let mut all: Vec<(&str, &str)> = vec![("redis", env.redis.id())];
    all.extend(env.nodes.iter().map(|n| (n.id.as_str(), n.container.id())));
    for (name, id) in all {
        let out = Command::new("docker").args(["logs", id]).output();
        if let Ok(out) = out {
            let mut text = out.stdout;
            text.extend(out.stderr);
            let _ = std::fs::write(dir.join(format!("{name}.log")), text);
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("e2e: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e2e --image BINARY NAME:TAG`: only builds the gateway image (`cargo xtask image`).
fn image_only(args: &[String]) -> anyhow::Result<bool> {
    let [binary, image] = args else {
        bail!("usage: e2e --image BINARY NAME:TAG");
    };
    let (name, tag) = image.split_once(':').unwrap_or((image.as_str(), "latest"));
    images::check_docker()?;
    let work = target_dir().join("image");
    images::gateway_image(&work, std::path::Path::new(binary), (name, tag))?;
    println!("built {name}:{tag} from {binary}");
    Ok(true)
}

async fn run() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--image") {
        return image_only(&args[1..]);
    }
    images::check_docker()?;
    let out_dir = target_dir().join("e2e");
    std::fs::create_dir_all(&out_dir)?;
    let gateway = target_dir().join("debug").join("gateway");
    if !gateway.exists() {
        bail!(
            "{} not found: run `cargo build -p gateway` (cargo xtask e2e does)",
            gateway.display()
        );
    }
    remove_leftovers(&format!("label={LABEL}"));
    // Compose stacks of crashed runs (their project names start with this).
    remove_leftovers("name=roomcast-e2e-compose-");
    let started = Instant::now();
    eprintln!("e2e: building images from local binaries");
    images::build_all(&out_dir.join("images"), &gateway)?;
    let run = format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    let _cleanup = Cleanup(run.clone());
    eprintln!("e2e: starting Redis and 3 gateways (run {run})");
    let mut env = start(&run).await?;
    eprintln!("e2e: cluster up in {:.1}s", started.elapsed().as_secs_f64());

    let results = scenarios::run_all(&mut env).await;
    save_logs(&env, &out_dir);

    let ok = results.iter().all(|r| r.1.is_ok());
    println!("\n{:<22} {:<6} figures", "scenario", "result");
    println!("{}", "-".repeat(96));
    let mut summary = Vec::new();
    for (name, result) in &results {
        let (status, figures, details) = match result {
            Ok(o) => ("pass", o.figures.clone(), o.details.clone()),
            Err(e) => ("FAIL", format!("{e:#}"), Value::Null),
        };
        println!("{name:<22} {status:<6} {figures}");
        summary.push(
            json!({"scenario": name, "result": status, "figures": figures, "details": details}),
        );
    }
    let summary = json!({
        "run": run,
        "network": env.network,
        "passed": ok,
        "seconds": started.elapsed().as_secs_f64(),
        "scenarios": summary,
    });
    let path = out_dir.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    println!("\nsummary: {}  logs: {}", path.display(), out_dir.display());
    Ok(ok)
}
