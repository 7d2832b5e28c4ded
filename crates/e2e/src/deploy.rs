//! Scenarios about how the gateway is deployed: the image users get (healthcheck,
//! non-root), a rolling restart of every node behind nginx with clients streaming, and
//! the Compose stack brought up from `deploy/compose`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::json;
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testkit::{SioClient, TEST_KEY, publish, token};
use tokio::sync::Mutex;

use crate::images::{self, repo_root};
use crate::{Env, LABEL, Outcome, docker, free_port};

/// Clients streaming through nginx during the rolling restart.
const ROLLING_CLIENTS: usize = 300;
/// Events per second published to their room.
const ROLLING_RATE: u64 = 10;

/// The gateway image as users get it: its healthcheck turns healthy, it runs as uid
/// 10001, it is small.
pub(crate) async fn image(env: &mut Env) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut states = Vec::new();
    for node in &env.nodes {
        let id = node.container.id();
        let user = docker(&["inspect", "--format", "{{.Config.User}}", id])?;
        ensure!(
            user.trim() == "10001:10001",
            "{} runs as {:?}, not the image's 10001:10001",
            node.id,
            user.trim()
        );
        // Docker runs the first check one interval (10 s) after start.
        let health = loop {
            let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", id])?;
            let health = health.trim().to_owned();
            if health == "healthy" || started.elapsed() > Duration::from_secs(45) {
                break health;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        ensure!(health == "healthy", "{} is {health} after 45 s", node.id);
        states.push(health);
    }
    let (name, tag) = images::GATEWAY_IMAGE;
    let size = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &format!("{name}:{tag}"),
    ])?;
    let mib = size.trim().parse::<f64>().unwrap_or(0.0) / 1_048_576.0;
    Ok(Outcome {
        figures: format!(
            "3 containers healthy by their own HEALTHCHECK ({:.1} s), user 10001:10001, image {mib:.1} MiB (debug binary)",
            started.elapsed().as_secs_f64()
        ),
        details: json!({"healthy_s": started.elapsed().as_secs_f64(), "image_mib": mib}),
    })
}

/// nginx in a container on the run's network with the shipped WebSocket site, the
/// gateways' fixed addresses as its upstreams; returns it and its base URL.
async fn nginx(env: &Env, dir: &Path) -> anyhow::Result<(ContainerAsync<GenericImage>, String)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    testkit::copy_dir(&repo_root().join("deploy/nginx"), dir)?;
    let servers: String = env
        .nodes
        .iter()
        .map(|n| format!("server {}:3000 max_fails=1 fail_timeout=5s;\n", n.ip))
        .collect();
    std::fs::write(dir.join("snippets/roomcast-servers.conf"), servers)?;
    let mount = |path: &str| {
        Mount::bind_mount(
            dir.join(path).to_string_lossy().into_owned(),
            format!("/etc/nginx/{path}"),
        )
    };
    let (name, tag) = images::NGINX_IMAGE;
    let container = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::Nothing)
        .with_exposed_port(80.tcp())
        .with_container_name(format!("roomcast-e2e-{}-nginx", env.run))
        .with_label(LABEL, &env.run)
        .with_mount(mount("nginx.conf"))
        .with_mount(mount("snippets"))
        .with_mount(Mount::bind_mount(
            dir.join("sites/roomcast.conf")
                .to_string_lossy()
                .into_owned(),
            "/etc/nginx/conf.d/default.conf",
        ))
        .start()
        .await
        .context("starting nginx")?;
    docker(&["network", "connect", &env.network, container.id()])?;
    let url = format!(
        "http://127.0.0.1:{}",
        container.get_host_port_ipv4(80.tcp()).await?
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(format!("{url}/health/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(Instant::now() < deadline, "nginx did not proxy within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((container, url))
}

/// Starts the stopped (or killed) node `i` again and waits until it is ready; its
/// published port changes, so `env` learns the new URL.
pub(crate) async fn start_again(env: &mut Env, i: usize) -> anyhow::Result<()> {
    docker(&["start", env.nodes[i].container.id()])?;
    let port = env.nodes[i]
        .container
        .get_host_port_ipv4(3000.tcp())
        .await?;
    env.nodes[i].url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{}/health/ready", env.nodes[i].url))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(
            Instant::now() < deadline,
            "{} not ready 30 s after its restart",
            env.nodes[i].id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// What one streaming client saw.
#[derive(Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    reconnects: u32,
    /// Reconnects that recovered the session (recovering clients only).
    recovered: u32,
    connected: bool,
}

/// Connects through `url`, joins the room, records every tick; reconnects (through
/// nginx, to whichever node it picks) whenever the connection goes, like a Socket.IO
/// client with reconnection on. A `recovering` client streams in the recovery namespace
/// and reconnects with its session id and last offset, as the official client does.
async fn stream_client(
    url: String,
    user: String,
    recovering: bool,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let ns = if recovering {
        crate::recovery::NAMESPACE
    } else {
        "/"
    };
    let mut first = true;
    let mut pid: Option<String> = None;
    let mut offset: Option<String> = None;
    loop {
        let mut auth =
            json!({"token": token(json!({"sub": user, "tenant_id": "e2e", "rooms": ["room:*"]}))});
        if let (Some(p), Some(o)) = (&pid, &offset) {
            auth["pid"] = json!(p);
            auth["offset"] = json!(o);
        }
        let attempt = async {
            let mut c = SioClient::connect(&url, ns, Some(auth))
                .await
                .map_err(|e| anyhow!("{e}"))?;
            let (connected, before) = c.expect("connected").await?;
            let recovered = connected
                .args
                .first()
                .is_some_and(|a| a["recovered"] == true);
            if !recovered {
                ensure!(c.join("room:rolling").await?["ok"] == true, "join refused");
            }
            anyhow::Ok((c, recovered, before))
        };
        let (mut client, recovered, before) = match attempt.await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        pid = client.pid.clone().filter(|_| recovering);
        {
            let mut s = seen.lock().await;
            s.connected = true;
            if !first {
                s.reconnects += 1;
                s.recovered += u32::from(recovered);
            }
            for event in before.iter().filter(|e| e.name == "tick") {
                s.tick(event, &mut offset);
            }
        }
        first = false;
        loop {
            tokio::select! {
                () = stop.notified() => {
                    client.close().await;
                    return;
                }
                tick = client.expect("tick") => match tick {
                    Ok((event, _)) => seen.lock().await.tick(&event, &mut offset),
                    Err(_) => break,
                },
            }
        }
        seen.lock().await.connected = false;
        // Socket.IO's default reconnection delay, roughly.
        tokio::time::sleep(Duration::from_millis(100 + rand_ms(400))).await;
    }
}

impl Seen {
    /// Counts a tick and remembers its offset (the last argument, in a recovery
    /// namespace), as the client library does.
    fn tick(&mut self, event: &testkit::Event, offset: &mut Option<String>) {
        if let Some(seq) = event.args.first().and_then(|d| d["seq"].as_u64()) {
            self.seqs.insert(seq);
        }
        if let Some(o) = event.args.get(1).and_then(serde_json::Value::as_str) {
            *offset = Some(o.to_owned());
        }
    }
}

fn rand_ms(max: u64) -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0),
    ) % max
}

/// Rolling restart of all three nodes behind nginx (SIGTERM, the node's drain, start,
/// ready, next) while 300 clients receive 10 events/s: every client ends connected and
/// receiving; the time and the events each client missed while reconnecting are printed.
pub(crate) async fn rolling_restart(env: &mut Env) -> anyhow::Result<Outcome> {
    let out = out_dir();
    let (proxy, url) = nginx(env, &out.join("nginx")).await?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..ROLLING_CLIENTS {
        let s = Arc::new(Mutex::new(Seen::default()));
        seen.push(s.clone());
        tasks.push(tokio::spawn(stream_client(
            url.clone(),
            format!("roller{i}"),
            i % 2 == 0,
            s,
            stop.clone(),
        )));
    }
    // Everyone in before the stream starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = 0;
        for s in &seen {
            up += usize::from(s.lock().await.connected);
        }
        if up == ROLLING_CLIENTS {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {up} of {ROLLING_CLIENTS} clients connected through nginx"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream, into both namespaces: published through nginx too (the API is open to
    // private networks). `unaccepted` holds the seqs a namespace's publish never got a
    // 202 for (after retries): nobody can be expected to receive those.
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let unaccepted: Arc<std::sync::Mutex<[BTreeSet<u64>; 2]>> = Arc::default();
    let publishing = {
        let (url, published, stop) = (url.clone(), published.clone(), stop.clone());
        let unaccepted = unaccepted.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / ROLLING_RATE));
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    () = stop.notified() => return,
                    _ = tick.tick() => {}
                }
                for (k, ns) in ["/", crate::recovery::NAMESPACE].into_iter().enumerate() {
                    let body = json!({"tenant": "e2e", "ns": ns, "event": "tick", "to": ["room:rolling"], "data": {"seq": seq}});
                    // A publish that meets a stopping node is retried, as the SDK does.
                    let mut accepted = false;
                    for _ in 0..5 {
                        if publish(&url, TEST_KEY, &body.to_string())
                            .await
                            .is_ok_and(|(s, _)| s == 202)
                        {
                            accepted = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if !accepted {
                        unaccepted
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)[k]
                            .insert(seq);
                    }
                }
                seq += 1;
                published.store(seq, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rolling = Instant::now();
    let mut per_node = Vec::new();
    for i in 0..env.nodes.len() {
        let node_started = Instant::now();
        let id = env.nodes[i].container.id().to_owned();
        // What an orchestrator does: SIGTERM, then SIGKILL after the grace period.
        docker(&["stop", "-t", "15", &id])?;
        start_again(env, i).await?;
        per_node.push(node_started.elapsed().as_secs_f64());
    }
    let rolled = rolling.elapsed();
    // After the last restart: every client is connected again and receiving.
    let settle_from = published.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    let last_seen = loop {
        let now = published.load(std::sync::atomic::Ordering::Relaxed);
        let mut behind = 0;
        for s in &seen {
            let s = s.lock().await;
            if !(s.connected && s.seqs.range(settle_from + 20..).next().is_some()) {
                behind += 1;
            }
        }
        if behind == 0 {
            break now;
        }
        if Instant::now() > deadline {
            stop.notify_waiters();
            bail!(
                "{behind} of {ROLLING_CLIENTS} clients were not connected and receiving 30 s after the rolling restart"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.notify_waiters();
    // Not awaited: a notification that comes while it publishes is not seen.
    publishing.abort();
    for t in tasks {
        t.abort();
    }
    // Misses: events accepted between the first and the last one the client could have
    // seen (it joined before the stream began) that it never received; counted apart for
    // the clients that recover (which must miss none) and those that do not.
    let unaccepted = unaccepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut losses = [Losses::default(), Losses::default()];
    for (i, s) in seen.iter().enumerate() {
        let s = s.lock().await;
        let k = usize::from(i % 2 == 0);
        let lost = (0..last_seen.min(s.seqs.last().map_or(0, |l| l + 1)))
            .filter(|q| !s.seqs.contains(q) && !unaccepted[k].contains(q))
            .count() as u64;
        losses[k].add(lost, s.reconnects, s.recovered);
        losses[k].expected += last_seen - unaccepted[k].len() as u64;
    }
    drop(proxy);
    let [plain, recovering] = losses;
    ensure!(
        recovering.lost == 0,
        "clients with connection state recovery missed {} deliveries ({} clients, at most {} each)",
        recovering.lost,
        recovering.clients_with_losses,
        recovering.max
    );
    Ok(Outcome {
        figures: format!(
            "{ROLLING_CLIENTS} clients via nginx, {ROLLING_RATE} events/s: 3 nodes restarted in {:.1} s ({}); all connected and receiving after; with recovery ({} clients): missed 0 of {}, {} of {} reconnects recovered; without ({} clients, namespace /): missed {} of {} ({:.2} %), {} clients missed any, at most {} each",
            rolled.as_secs_f64(),
            per_node
                .iter()
                .map(|s| format!("{s:.1} s"))
                .collect::<Vec<_>>()
                .join(" / "),
            ROLLING_CLIENTS / 2,
            recovering.expected,
            recovering.recovered,
            recovering.reconnects,
            ROLLING_CLIENTS / 2,
            plain.lost,
            plain.expected,
            100.0 * plain.lost as f64 / plain.expected.max(1) as f64,
            plain.clients_with_losses,
            plain.max,
        ),
        details: json!({
            "clients": ROLLING_CLIENTS, "rate": ROLLING_RATE, "rolling_s": rolled.as_secs_f64(),
            "per_node_s": per_node, "published": last_seen,
            "unaccepted": [unaccepted[0].len(), unaccepted[1].len()],
            "without_recovery": plain.json(), "with_recovery": recovering.json(),
        }),
    })
}

/// The deliveries a group of streaming clients missed.
#[derive(Default)]
struct Losses {
    expected: u64,
    lost: u64,
    max: u64,
    clients_with_losses: usize,
    reconnects: u32,
    recovered: u32,
}

impl Losses {
    fn add(&mut self, lost: u64, reconnects: u32, recovered: u32) {
        self.lost += lost;
        self.max = self.max.max(lost);
        self.clients_with_losses += usize::from(lost > 0);
        self.reconnects += reconnects;
        self.recovered += recovered;
    }

    fn json(&self) -> serde_json::Value {
        json!({"expected": self.expected, "missed": self.lost, "max_missed": self.max,
               "clients_with_misses": self.clients_with_losses,
               "reconnects": self.reconnects, "recovered": self.recovered})
    }
}

/// `deploy/compose`: `docker-compose up` with the locally built images, then the
/// official JS client connects through nginx and receives a publish.
pub(crate) async fn compose(env: &mut Env) -> anyhow::Result<Outcome> {
    let out = out_dir();
    let file = repo_root().join("deploy/compose/docker-compose.yml");
    let project = format!("roomcast-e2e-compose-{}", env.run);
    let port = free_port()?;
    // The test secrets, so that testkit's tokens are valid here.
    let (jwt, key) = (testkit::TEST_SECRET.to_owned(), TEST_KEY.to_owned());
    let image = |(name, tag): (&str, &str)| format!("{name}:{tag}");
    let vars = [
        ("ROOMCAST_IMAGE", image(images::GATEWAY_IMAGE)),
        ("ROOMCAST_REDIS_IMAGE", image(images::REDIS_IMAGE)),
        ("ROOMCAST_NGINX_IMAGE", image(images::NGINX_IMAGE)),
        ("ROOMCAST_HTTP_PORT", port.to_string()),
        ("JWT_SECRET", jwt.clone()),
        ("PUBLISH_API_KEY", key.clone()),
    ];
    let compose = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("docker-compose")
            .arg("-f")
            .arg(&file)
            .args(["-p", &project])
            .args(args)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .context("running docker-compose (apt-get install docker-compose)")?;
        ensure!(
            out.status.success(),
            "docker-compose {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> anyhow::Result<String>);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down", "-v", "--timeout", "5"]);
        }
    }
    let started = Instant::now();
    let _down = Down(&compose);
    compose(&["up", "-d"])?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reqwest::get(format!("{url}/health/ready"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        ensure!(
            Instant::now() < deadline,
            "the Compose stack was not ready through nginx within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let up = started.elapsed();
    // The official JS client (the interop suite's packages) through nginx.
    let js = repo_root().join("crates/interop/js");
    if !js.join("node_modules/socket.io-client").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()?;
        ensure!(status.success(), "npm ci in {} failed", js.display());
    }
    let user_token = token(json!({"sub": "compose-user", "tenant_id": "acme"}));
    let log = out.join("compose-client.log");
    let output = tokio::process::Command::new("node")
        .arg("compose.mjs")
        .current_dir(&js)
        .env("COMPOSE_URL", &url)
        .env("COMPOSE_TOKEN", &user_token)
        .env("COMPOSE_KEY", &key)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .context("the JS client did not finish within 30 s")??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::write(&log, &text);
    ensure!(
        output.status.success(),
        "JS client through Compose's nginx: {}",
        text.trim()
    );
    let ps = compose(&["ps", "--services", "--filter", "status=running"])?;
    let running: Vec<&str> = ps.split_whitespace().collect();
    Ok(Outcome {
        figures: format!(
            "docker-compose up: {} running, ready through nginx in {:.1} s; {}",
            running.join(", "),
            up.as_secs_f64(),
            text.trim()
        ),
        details: json!({"up_s": up.as_secs_f64(), "services": running}),
    })
}

/// Where the e2e runner keeps its files.
pub(crate) fn out_dir() -> PathBuf {
    crate::target_dir().join("e2e")
}
