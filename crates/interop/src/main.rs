//! `cargo xtask interop`: Roomcast against clients nobody here wrote.
//!
//! Starts a `redis-server` and three `gateway` processes, then runs, one after the
//! other, the official JavaScript `socket.io-client` (`js/suite.mjs`), the
//! `python-socketio` client (`python/suite.py`), the `rust_socketio` crate (in this
//! process) and headless Chromium on the demo page (`js/browser.mjs`). Each case prints
//! one result; the table goes to stdout and `target/interop/summary.json`, with node
//! logs, script logs and the browser screenshots next to it. Exits non-zero if any cell
//! failed.
//!
//! Set-up is done here, from lockfiles, and skipped when already current: `npm ci` for
//! the JS packages, a virtualenv under `target/interop/venv` for the Python ones.
//! Chromium comes from the system (`/usr/bin/chromium`, or `$CHROMIUM`).
//!
//! With `--cluster` (what `cargo xtask cluster` runs) it only starts Redis and the three
//! nodes, on ports 3001–3003 when free, prints demo-page links and runs until Ctrl-C.

mod cluster;
mod report;
mod rust_client;
mod sdk;
mod service;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::Mutex;

use cluster::{Cluster, EXTRA_NAMESPACE, RECOVERY_NAMESPACE, RECOVERY_WINDOW_MS, Secrets};
use report::Outcome;

/// Longest a client suite may run before it is stopped and marked failed.
const SUITE_LIMIT: Duration = Duration::from_secs(240);

#[tokio::main]
async fn main() -> ExitCode {
    let result = if std::env::args().any(|a| a == "--cluster") {
        dev_cluster().await.map(|()| true)
    } else {
        run().await
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("interop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where things are.
struct Paths {
    /// This crate's directory (the scripts).
    krate: PathBuf,
    /// The `gateway` binary built next to this one.
    gateway: PathBuf,
    /// `target/interop`: logs, screenshots, the summary, the Python virtualenv.
    out: PathBuf,
}

impl Paths {
    fn discover() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().context("executable has no directory")?;
        let target = bin_dir.parent().context("no target directory")?;
        let gateway = bin_dir.join("gateway");
        if !gateway.exists() {
            bail!(
                "{} not found: build it first (cargo xtask interop does)",
                gateway.display()
            );
        }
        let out = target.join("interop");
        std::fs::create_dir_all(&out)?;
        Ok(Self {
            krate: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            gateway,
            out,
        })
    }
}

async fn run() -> anyhow::Result<bool> {
    let paths = Paths::discover()?;
    let redis = testkit::RedisServer::start()?;
    let hook_secret = random_hex()?;
    let (hook, hook_calls) = service::webhook(hook_secret.clone()).await?;
    service::consumer(redis.url()).await?;
    let admin_password = random_hex()?;
    let secrets = Secrets {
        jwt: random_hex()?,
        publish_key: random_hex()?,
        upstream: Some((hook, hook_secret.clone())),
        admin: Some(cluster::AdminLogin {
            // The lowest cost: the login is checked on debug builds.
            hash: bcrypt::hash(&admin_password, 4)?,
            password: admin_password,
            static_dir: paths
                .krate
                .join("js/node_modules/@socket.io/admin-ui/ui/dist"),
        }),
    };
    eprintln!(
        "==> interop: Redis on {}, starting 3 gateway nodes",
        redis.port()
    );
    let cluster = Cluster::start(
        &paths.gateway,
        &redis.url(),
        secrets.clone(),
        &paths.out,
        3,
        None,
    )
    .await?;
    let (urls, ids) = (cluster.urls(), cluster.ids());
    let cluster = Arc::new(Mutex::new(cluster));
    let control = serve_control(cluster.clone()).await?;
    let config = |prefix: &str| client_config(prefix, &urls, &ids, &secrets, &control);

    // INTEROP_ONLY=js,python,rust,browser runs a subset (for working on one client).
    let only = std::env::var("INTEROP_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows: Vec<(String, Outcome)> = Vec::new();
    let mut record = |client: &str, outcomes: Vec<Outcome>| {
        rows.extend(outcomes.into_iter().map(|o| (client.to_owned(), o)));
    };

    let js = paths.krate.join("js");
    let npm = if [
        "js", "browser", "nginx", "nosticky", "compat", "sdk", "admin",
    ]
    .into_iter()
    .any(&wanted)
    {
        npm_ci(&js).await
    } else {
        Ok(())
    };
    if wanted("js") {
        eprintln!("==> socket.io-client (JavaScript)");
        let outcomes = match &npm {
            Ok(()) => run_script("js", node_cmd(&js, "suite.mjs"), &config("js")?, &paths).await,
            Err(e) => vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
        };
        record("socket.io-client 4 (JS)", outcomes);
    }
    if wanted("python") {
        eprintln!("==> python-socketio");
        let outcomes = match python_env(&paths).await {
            Ok(python) => {
                let mut cmd = Command::new(python);
                cmd.arg("suite.py").current_dir(paths.krate.join("python"));
                run_script("python", cmd, &config("py")?, &paths).await
            }
            Err(e) => vec![Outcome::failed("(virtualenv)", format!("{e:#}"))],
        };
        record("python-socketio 5", outcomes);
    }
    if wanted("compat") {
        eprintln!(
            "==> compat: python-socketio, Flask-SocketIO and Node's emitter and adapter, unchanged"
        );
        let venvs = tokio::try_join!(
            python_env(&paths),
            python_venv(&paths, "requirements-5.13.txt", "venv-5.13")
        );
        let outcomes = match (&npm, venvs) {
            (Ok(()), Ok((python, python_513))) => {
                let mut suite = config(cluster::COMPAT_PREFIX)?;
                extend(
                    &mut suite,
                    json!({
                        "other": config("compat-other")?,
                        "redis": redis.url(),
                        "python": python,
                        "python_513": python_513,
                        "python_dir": paths.krate.join("python"),
                    }),
                );
                run_script("compat", node_cmd(&js, "compat.mjs"), &suite, &paths).await
            }
            (Err(e), _) => vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
            (_, Err(e)) => vec![Outcome::failed("(virtualenv)", format!("{e:#}"))],
        };
        record("compat: existing publishers", outcomes);
    }
    if wanted("sdk") {
        eprintln!("==> the Python SDK (sdk/python): lint, types, wheel, pytest on this cluster");
        let mut suite = config("sdk")?;
        extend(
            &mut suite,
            json!({
                "other": config("sdk-other")?,
                "redis": redis.url(),
                "prefix": "roomcast",
                "hook_secret": hook_secret,
                "hook_last": hook_calls,
                "js_dir": js,
            }),
        );
        let outcomes = match &npm {
            Ok(()) => sdk::run(&paths, suite).await,
            Err(e) => vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
        };
        record("Python SDK (roomcast)", outcomes);
    }
    if wanted("rust") {
        eprintln!("==> rust_socketio");
        let outcomes = rust_client::run(&config("rs")?).await;
        outcomes.iter().for_each(Outcome::progress);
        record("rust_socketio 0.6", outcomes);
    }
    if wanted("nginx") || wanted("nosticky") {
        eprintln!("==> nginx (deploy/nginx) and native TLS, socket.io-client");
        match (&npm, behind_nginx(&paths, &cluster, &urls).await) {
            (Ok(()), Ok((nginx, native, ca, other))) => {
                let mut suite = config("ngx")?;
                extend(
                    &mut suite,
                    nginx_config(&nginx, &native, &ca.ca_file(), &other.ca_file()),
                );
                if wanted("nginx") {
                    let mut cmd = node_cmd(&js, "nginx.mjs");
                    // Trusted like a company CA installed on the client machine.
                    cmd.env("NODE_EXTRA_CA_CERTS", ca.ca_file());
                    let outcomes = run_script("nginx", cmd, &suite, &paths).await;
                    record("nginx + socket.io-client", outcomes);
                }
                if wanted("nosticky") {
                    no_sticky(&paths, &js, &nginx, &config)
                        .await?
                        .into_iter()
                        .for_each(|(client, outcomes)| record(client, outcomes));
                }
                let stopped = match nginx.stop().await {
                    Ok(()) => Outcome::passed("nginx stopped: nothing left listening", ""),
                    Err(e) => {
                        Outcome::failed("nginx stopped: nothing left listening", format!("{e:#}"))
                    }
                };
                stopped.progress();
                record("nginx + socket.io-client", vec![stopped]);
            }
            (Err(e), _) => record(
                "nginx + socket.io-client",
                vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
            ),
            (_, Err(e)) => record(
                "nginx + socket.io-client",
                vec![Outcome::failed("(nginx set-up)", format!("{e:#}"))],
            ),
        }
    }
    if wanted("admin") {
        eprintln!("==> the Socket.IO Admin UI (npm's @socket.io/admin-ui) in Chromium");
        let outcomes = match (&npm, chromium(), &secrets.admin) {
            (Ok(()), Ok(path), Some(admin)) => {
                let mut suite = config("admin")?;
                extend(
                    &mut suite,
                    json!({"admin": {"username": cluster::ADMIN_USER, "password": admin.password}}),
                );
                let mut cmd = node_cmd(&js, "admin-ui.mjs");
                cmd.env("CHROMIUM", path);
                run_script("admin-ui", cmd, &suite, &paths).await
            }
            (Err(e), ..) => vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
            (_, Err(e), _) => vec![Outcome::failed("(chromium)", format!("{e:#}"))],
            (.., None) => vec![Outcome::failed("(admin login)", "not configured")],
        };
        record("Admin UI + Chromium", outcomes);
    }
    if !wanted("browser") {
        return finish(&paths, &rows);
    }
    eprintln!("==> Chromium on the demo page");
    let outcomes = match (&npm, chromium()) {
        (Ok(()), Ok(path)) => {
            let mut cmd = node_cmd(&js, "browser.mjs");
            cmd.env("CHROMIUM", path);
            run_script("browser", cmd, &config("web")?, &paths).await
        }
        (Err(e), _) => vec![Outcome::failed("(npm ci)", format!("{e:#}"))],
        (_, Err(e)) => vec![Outcome::failed("(chromium)", format!("{e:#}"))],
    };
    record("Chromium + demo page", outcomes);
    finish(&paths, &rows)
}

/// How long each no-sticky client holds its session.
const HOLD_MS: u64 = 60_000;

/// Adds `extra`'s fields to the suite configuration `suite`.
fn extend(suite: &mut Value, extra: Value) {
    if let (Some(suite), Value::Object(extra)) = (suite.as_object_mut(), extra) {
        suite.extend(extra);
    }
}

/// No sticky sessions, through nginx's default site: the JS client (polling only and
/// default options), python-socketio (polling only) and the demo page in Chromium hold
/// their sessions for [`HOLD_MS`] at the same time; then a node is killed under polling
/// clients. The outcomes, by client.
async fn no_sticky(
    paths: &Paths,
    js: &Path,
    nginx: &testkit::Nginx,
    config: &impl Fn(&str) -> anyhow::Result<Value>,
) -> anyhow::Result<Vec<(&'static str, Vec<Outcome>)>> {
    eprintln!(
        "==> no sticky sessions: three clients through nginx without affinity, {} s",
        HOLD_MS / 1000
    );
    let site = nginx.site("roomcast.conf")?.to_owned();
    let suite = |prefix: &str| -> anyhow::Result<Value> {
        let mut suite = config(prefix)?;
        extend(
            &mut suite,
            nginx_config(nginx, "", Path::new(""), Path::new("")),
        );
        extend(&mut suite, json!({"site": site, "hold_ms": HOLD_MS}));
        Ok(suite)
    };
    let js_suite = suite("ns-js")?;
    let py_suite = suite("ns-py")?;
    let web_suite = suite("ns-web")?;
    let python = python_env(paths).await;
    let js_run = run_script(
        "nosticky-js",
        node_cmd(js, "nosticky.mjs"),
        &js_suite,
        paths,
    );
    let py_run = async {
        match &python {
            Ok(python) => {
                let mut cmd = Command::new(python);
                cmd.arg("suite.py").current_dir(paths.krate.join("python"));
                run_script("nosticky-python", cmd, &py_suite, paths).await
            }
            Err(e) => vec![Outcome::failed("(virtualenv)", format!("{e:#}"))],
        }
    };
    let web_run = async {
        match chromium() {
            Ok(path) => {
                let mut cmd = node_cmd(js, "browser-nosticky.mjs");
                cmd.env("CHROMIUM", path);
                run_script("nosticky-browser", cmd, &web_suite, paths).await
            }
            Err(e) => vec![Outcome::failed("(chromium)", format!("{e:#}"))],
        }
    };
    let (js_out, py_out, web_out) = tokio::join!(js_run, py_run, web_run);
    let mut kill = node_cmd(js, "nosticky.mjs");
    kill.env("INTEROP_MODE", "kill");
    let kill_out = run_script("nosticky-kill", kill, &suite("ns-kill")?, paths).await;
    Ok(vec![
        ("no sticky: socket.io-client", js_out),
        ("no sticky: python-socketio", py_out),
        ("no sticky: Chromium + demo page", web_out),
        ("no sticky: socket.io-client", kill_out),
    ])
}

/// What `js/nginx.mjs` is told about nginx besides the suite configuration.
fn nginx_config(nginx: &testkit::Nginx, native_tls: &str, ca: &Path, other_ca: &Path) -> Value {
    let sites: serde_json::Map<String, Value> = nginx
        .sites
        .iter()
        .map(|(name, url)| (name.trim_end_matches(".conf").to_owned(), json!(url)))
        .collect();
    json!({
        "sites": sites,
        "upstream_log": nginx.upstream_log,
        "gateways": nginx.gateways,
        "native_tls": native_tls,
        "ca_file": ca,
        "other_ca_file": other_ca,
    })
}

/// nginx in front of the three nodes, a fourth node with native TLS, and the CA that
/// issued both certificates (plus another CA, which must be refused).
async fn behind_nginx(
    paths: &Paths,
    cluster: &Mutex<Cluster>,
    urls: &[String],
) -> anyhow::Result<(testkit::Nginx, String, testkit::TestCa, testkit::TestCa)> {
    let (ca, other) = (testkit::TestCa::new()?, testkit::TestCa::new()?);
    let native = cluster
        .lock()
        .await
        .add_tls_node(&ca.cert_file(), &ca.key_file())
        .await?;
    let gateways: Vec<String> = urls
        .iter()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .collect();
    let deploy = paths.krate.join("../../deploy/nginx");
    let nginx = testkit::nginx::start(&deploy, &paths.out.join("nginx"), &gateways, &ca).await?;
    Ok((nginx, native, ca, other))
}

/// Prints the table, writes the summary; true when every cell passed.
fn finish(paths: &Paths, rows: &[(String, Outcome)]) -> anyhow::Result<bool> {
    report::print_table(rows);
    report::write_summary(&paths.out, rows)?;
    println!(
        "summary, node logs, script logs and screenshots: {}",
        paths.out.display()
    );
    Ok(rows.iter().all(|r| r.1.acceptable()))
}

/// `cargo xtask cluster`: Redis and three development-mode nodes on this machine until
/// Ctrl-C, with links to each node's demo page (credentials in the link's fragment).
async fn dev_cluster() -> anyhow::Result<()> {
    let paths = Paths::discover()?;
    let logs = paths.out.with_file_name("cluster");
    std::fs::create_dir_all(&logs)?;
    let redis = testkit::RedisServer::start()?;
    let secrets = Secrets {
        jwt: random_hex()?,
        publish_key: random_hex()?,
        upstream: None,
        admin: None,
    };
    let cluster = Cluster::start(
        &paths.gateway,
        &redis.url(),
        secrets.clone(),
        &logs,
        3,
        Some(3001),
    )
    .await?;
    let claims = json!({
        "sub": "dev", "tenant_id": "dev", "rooms": ["*"], "exp": gateway::unix_now() + 24 * 3600,
    });
    let token = gateway::sign_hs256(&secrets.jwt, &claims)?;
    let key = &secrets.publish_key;
    println!(
        "Roomcast development cluster: Redis at {}, 3 nodes",
        redis.url()
    );
    for (id, url) in cluster.ids().iter().zip(cluster.urls()) {
        println!("  {id}: {url}   demo page: {url}/#token={token}&key={key}");
    }
    let first = cluster.urls().into_iter().next().unwrap_or_default();
    println!(
        "\nToken (user dev, tenant dev, any room, 24 hours): {token}\nPublish key: {key}\n\
         Open two demo pages on different nodes, join the same room, publish from one.\n\
         From a shell:\n  curl -sS -X POST {first}/v1/publish -H 'Authorization: Bearer {key}' \
         -H 'Content-Type: application/json' -d '{{\"tenant\":\"dev\",\"event\":\"hello\",\"to\":[\"user:dev\"],\"data\":{{\"text\":\"hi\"}}}}'\n\
         Node logs: {}\nCtrl-C stops everything.",
        logs.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    drop(cluster);
    drop(redis);
    Ok(())
}

/// What a client suite is told: where the nodes are, its users and their tokens (user
/// names are unique per client so suites never see each other's events).
fn client_config(
    prefix: &str,
    urls: &[String],
    ids: &[String],
    secrets: &Secrets,
    control: &str,
) -> anyhow::Result<Value> {
    let (alice, bob, tenant) = (
        format!("{prefix}-alice"),
        format!("{prefix}-bob"),
        format!("{prefix}-acme"),
    );
    let now = gateway::unix_now();
    let sign = |secret: &str, claims: Value| gateway::sign_hs256(secret, &claims);
    let claims = |user: &str, exp: u64| json!({"sub": user, "tenant_id": tenant, "rooms": ["doc:*", "room:*"], "publish": ["room:chat-*"], "exp": exp});
    Ok(json!({
        "nodes": urls,
        "node_ids": ids,
        "key": secrets.publish_key,
        "control": control,
        "path": "/socket.io/",
        "namespace": EXTRA_NAMESPACE,
        "recovery_namespace": RECOVERY_NAMESPACE,
        "recovery_window_ms": RECOVERY_WINDOW_MS,
        "tenant": tenant,
        "users": {"alice": alice, "bob": bob},
        "tokens": {
            alice.as_str(): sign(&secrets.jwt, claims(&alice, now + 3600))?,
            bob.as_str(): sign(&secrets.jwt, claims(&bob, now + 3600))?,
            // Past the verifier's leeway.
            "expired": sign(&secrets.jwt, claims(&alice, now.saturating_sub(3600)))?,
            "wrong_secret": sign("not-the-cluster-secret", claims(&alice, now + 3600))?,
        },
    }))
}

/// Serves `POST /restart/{i}` (SIGTERM) and `POST /kill/{i}` (SIGKILL) so that a client
/// suite can have a node stopped and started again; returns the base URL.
async fn serve_control(cluster: Arc<Mutex<Cluster>>) -> anyhow::Result<String> {
    async fn restart(
        State(cluster): State<Arc<Mutex<Cluster>>>,
        UrlPath(i): UrlPath<usize>,
    ) -> (StatusCode, String) {
        match cluster.lock().await.restart(i).await {
            Ok(()) => (StatusCode::OK, format!("node {i} restarted")),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
    async fn kill(
        State(cluster): State<Arc<Mutex<Cluster>>>,
        UrlPath(i): UrlPath<usize>,
    ) -> (StatusCode, String) {
        match cluster.lock().await.kill_and_start(i).await {
            Ok(()) => (StatusCode::OK, format!("node {i} killed and started again")),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
    let app = axum::Router::new()
        .route("/restart/{i}", post(restart))
        .route("/kill/{i}", post(kill))
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// Runs a client script, which prints one JSON result per case; everything it writes
/// is kept in `<out>/<name>.log`.
async fn run_script(name: &str, mut cmd: Command, config: &Value, paths: &Paths) -> Vec<Outcome> {
    let log_path = paths.out.join(format!("{name}.log"));
    let result = async {
        let mut child = cmd
            .env("INTEROP", config.to_string())
            .env("INTEROP_OUT", &paths.out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name} suite"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut log = tokio::fs::File::create(&log_path).await?;
        let mut outcomes = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        let mut errors = BufReader::new(stderr).lines();
        let mut tail = Vec::new();
        let read = async {
            loop {
                tokio::select! {
                    line = lines.next_line() => match line? {
                        Some(line) => {
                            log.write_all(format!("{line}\n").as_bytes()).await?;
                            if let Some(o) = Outcome::from_line(&line) {
                                o.progress();
                                outcomes.push(o);
                            }
                        }
                        None => break,
                    },
                    line = errors.next_line() => if let Some(line) = line? {
                        log.write_all(format!("stderr: {line}\n").as_bytes()).await?;
                        tail.push(line);
                    },
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(SUITE_LIMIT, read)
            .await
            .map_err(|_| anyhow::anyhow!("suite ran longer than {SUITE_LIMIT:?}"))??;
        let status = child.wait().await?;
        if outcomes.is_empty() {
            let last = tail.iter().rev().take(5).rev().cloned().collect::<Vec<_>>();
            bail!("no results ({status}); stderr: {}", last.join(" | "));
        }
        Ok(outcomes)
    }
    .await;
    result.unwrap_or_else(|e: anyhow::Error| {
        vec![Outcome::failed(
            "(suite)",
            format!("{e:#}; log: {}", log_path.display()),
        )]
    })
}

fn node_cmd(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(script).current_dir(dir);
    cmd
}

/// `npm ci` from the lockfile, unless `node_modules` is already current.
async fn npm_ci(dir: &Path) -> anyhow::Result<()> {
    let lock = std::fs::read(dir.join("package-lock.json")).context("package-lock.json")?;
    let stamp = dir.join("node_modules/.roomcast-lock");
    if std::fs::read(&stamp).is_ok_and(|s| s == lock) {
        return Ok(());
    }
    eprintln!("==> npm ci in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .await
        .context("running npm (install Node.js and npm; .ci/run does)")?;
    if !status.success() {
        bail!("npm ci failed ({status})");
    }
    std::fs::write(stamp, lock)?;
    Ok(())
}

/// A virtualenv with the pinned Python packages; returns its interpreter.
async fn python_env(paths: &Paths) -> anyhow::Result<PathBuf> {
    python_venv(paths, "requirements.txt", "venv").await
}

/// A virtualenv `target/interop/{dir}` with `python/{requirements}` installed (skipped
/// when it is current); its interpreter.
async fn python_venv(paths: &Paths, requirements: &str, dir: &str) -> anyhow::Result<PathBuf> {
    testkit::python_venv(
        &paths.krate.join("python").join(requirements),
        &paths.out.join(dir),
    )
    .await
}

/// The Chromium binary: `$CHROMIUM` or Debian's `/usr/bin/chromium`.
fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !path.exists() {
        bail!(
            "{} not found: install Chromium (apt-get install chromium; .ci/run does) or set CHROMIUM",
            path.display()
        );
    }
    Ok(path)
}

fn random_hex() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
