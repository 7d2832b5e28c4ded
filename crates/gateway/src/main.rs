//! `gateway` binary: parse configuration, set up logging, bind, run.

use std::net::SocketAddr;

use clap::Parser;
use gateway::{Config, Mode};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // `gateway healthcheck`: for container HEALTHCHECKs, with no shell or curl in the image.
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck().await;
    }
    let args = gateway::Args::parse();
    let config = match gateway::Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = match gateway::Telemetry::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(config.log_json, &telemetry);
    if telemetry.is_active() {
        tracing::info!("exporting traces over OTLP (OTEL_* variables)");
    }

    // Everything that can fail on configuration (keys, TLS files, the Redis client) fails
    // here, before a port is bound: a load balancer never sees a node that cannot start.
    let node = match gateway::Node::start(&config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind((config.host, config.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return std::process::ExitCode::from(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("{}", banner(&config, addr));
    tracing::info!(node_id = %config.node_id, %addr, bus = %bus_description(&config), "listening");

    let result = node
        .serve_until_exit(listener, shutdown_signal(), config.shutdown_grace)
        .await;
    // Off the runtime's worker: the exporter's final send blocks.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// `GET /health/live` on `127.0.0.1:$PORT` (3000): exit 0 when it answers 200 within 3 s.
async fn healthcheck() -> std::process::ExitCode {
    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(3000);
    // With native TLS the node is asked over TLS; it checks itself on loopback, so the
    // certificate (issued for a public name) is not verified.
    let tls = std::env::var_os("TLS_CERT_FILE").is_some_and(|f| !f.is_empty());
    let url = format!(
        "{}://127.0.0.1:{port}/health/live",
        if tls { "https" } else { "http" }
    );
    let client = match reqwest::Client::builder()
        .danger_accept_invalid_certs(tls)
        .timeout(std::time::Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => std::process::ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

/// Libraries that log what crosses the wire — frames, CONNECT payloads, request heads,
/// hence tokens and keys — at debug and trace level. They are held at `info` whatever
/// `RUST_LOG` says, so no credential reaches a log at any level.
const WIRE_LOGGERS: [&str; 6] = [
    "tungstenite",
    "tokio_tungstenite",
    "engineioxide",
    "socketioxide",
    "hyper",
    "h2",
];

/// Installs the process's log subscriber: `RUST_LOG` (default `info`) to stderr, as text
/// or JSON, with the wire-level loggers capped at `info` (see `docs/security.md`).
fn init_logging(json: bool, telemetry: &gateway::Telemetry) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let floor = tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !WIRE_LOGGERS.iter().any(|t| {
                meta.target()
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(floor)
        .with(telemetry.layer());
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
}

/// How the banner and logs describe the bus, with any password masked.
fn bus_description(config: &Config) -> String {
    match &config.redis_url {
        Some(url) => format!(
            "Redis bus at {} (channel prefix {:?})",
            bus::mask_url(url),
            config.channel_prefix
        ),
        None => "in-memory bus: single node, no Redis configured".to_owned(),
    }
}

/// The text printed at start-up: where to connect and, in development, a token, the
/// publish key and a `curl` line to try.
fn banner(config: &Config, addr: SocketAddr) -> String {
    let bus_kind = bus_description(config);
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{host}:{}", addr.port());
    let mut out = format!(
        "Roomcast gateway {} listening on {base} ({} mode, {bus_kind})\n  Socket.IO path: {}  namespaces: {}\n",
        config.node_id,
        config.mode.as_str(),
        config.socketio_path,
        config.namespaces.join(", "),
    );
    if config.mode == Mode::Development {
        out.push_str(&format!("  Demo page: {base}/\n"));
    }
    let Some(dev) = &config.dev else { return out };
    let token = match dev.token() {
        Ok(t) => t,
        Err(e) => return format!("{out}  (could not sign a dev token: {e})\n"),
    };
    let key = config.publish_api_key.as_deref().unwrap_or("");
    out.push_str(&format!(
        "\nDevelopment mode: a JWT secret was generated for this run.\n  \
         Dev token (user dev, tenant dev, may join any room, valid 24 hours):\n    {token}\n  \
         Publish key: {key}\n  \
         Connect:  io(\"{base}\", {{ path: \"{path}\", auth: {{ token: \"<dev token>\" }} }})\n  \
         Publish to user dev:\n    \
         curl -sS -X POST {base}/v1/publish -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"tenant\":\"dev\",\"event\":\"hello\",\"to\":[\"user:dev\"],\"data\":{{\"text\":\"hi from curl\"}}}}'\n",
        path = config.socketio_path,
    ));
    out
}
