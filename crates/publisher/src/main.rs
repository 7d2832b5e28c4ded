//! `publisher`: publish one event to Roomcast from the command line.
//!
//! ```text
//! publisher --redis-url redis://127.0.0.1:6379 --to user:42 --event invoice.paid --data '{"id":7}'
//! publisher --redis-url redis://127.0.0.1:6379 --tenant acme --sockets-of user:ann --disconnect 'account suspended'
//! publisher --redis-url redis://127.0.0.1:6379 --tenant acme --sockets-of room:ops --join doc:Task:1
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// Publish one event to every Roomcast client in the target rooms.
#[derive(Debug, Parser)]
#[command(name = "publisher", version)]
struct Cli {
    /// Redis URL shared with the gateways (required unless --redis-sentinels)
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        required_unless_present = "redis_sentinels"
    )]
    redis_url: Option<String>,
    /// Redis Cluster seed nodes (comma-separated host:port or URLs): publish with SPUBLISH to each room's shard
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    redis_cluster_nodes: Option<String>,
    /// Redis Sentinels (comma-separated host:port): publish to the master they name; --redis-url then gives only credentials, database and TLS
    #[arg(long, env = "REDIS_SENTINELS")]
    redis_sentinels: Option<String>,
    /// The master's name in the Sentinels' configuration [default: mymaster]
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    redis_sentinel_master: String,
    /// PEM CA the Redis server's certificate must chain to (rediss:// with a private CA)
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    redis_tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for a Redis that verifies clients (with --redis-tls-key-file)
    #[arg(long, env = "REDIS_TLS_CERT_FILE", requires = "redis_tls_key_file")]
    redis_tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --redis-tls-cert-file
    #[arg(long, env = "REDIS_TLS_KEY_FILE", requires = "redis_tls_cert_file")]
    redis_tls_key_file: Option<std::path::PathBuf>,
    /// Channel prefix, as configured on the gateways [default: roomcast]
    #[arg(long, env = "REDIS_CHANNEL_PREFIX", default_value = "roomcast")]
    prefix: String,
    /// Target room (repeat for several); `*` = the whole namespace (of the tenant, with --tenant)
    #[arg(long, required_unless_present = "sockets_of")]
    to: Vec<String>,
    /// Instead of publishing, act on connected sockets (the server API): those of `user:{id}`, of a room (`kind:id`), or `sid:{socket id}`; lists them unless --disconnect, --join or --leave says what to do
    #[arg(long, conflicts_with = "to")]
    sockets_of: Option<String>,
    /// With --sockets-of: disconnect them, with this reason (they receive it)
    #[arg(long, requires = "sockets_of", conflicts_with_all = ["join", "leave"])]
    disconnect: Option<String>,
    /// With --sockets-of: make them join this room (repeatable)
    #[arg(long, requires = "sockets_of", conflicts_with = "leave")]
    join: Vec<String>,
    /// With --sockets-of: make them leave this room (repeatable)
    #[arg(long, requires = "sockets_of")]
    leave: Vec<String>,
    /// Tenant whose rooms are targeted [default: none, the shared scope]
    #[arg(long, env = "ROOMCAST_TENANT")]
    tenant: Option<String>,
    /// Room whose members must not receive the event (repeatable)
    #[arg(long)]
    except: Vec<String>,
    /// Namespace [default: /]
    #[arg(long, default_value = "/")]
    ns: String,
    /// Event name
    #[arg(long, required_unless_present = "sockets_of", default_value = "")]
    event: String,
    /// Event argument as JSON [default: null]
    #[arg(long, default_value = "null")]
    data: String,
    /// Origin recorded in the envelope [default: publisher-cli]
    #[arg(long, default_value = "publisher-cli")]
    origin: String,
    /// How long to keep retrying while Redis is unreachable, in ms [default: 5000]
    #[arg(long, default_value_t = 5000)]
    retry_ms: u64,
    /// The gateways' namespaces with connection state recovery (comma-separated): what is published there is recorded [default: none]
    #[arg(long, env = "RECOVERY_NAMESPACES", default_value = "")]
    recovery_namespaces: String,
    /// The gateways' recovery window, in ms [default: 120000]
    #[arg(long, env = "RECOVERY_WINDOW_MS", default_value_t = 120_000)]
    recovery_window_ms: u64,
    /// The gateways' history length per recovery namespace [default: 10000]
    #[arg(long, env = "RECOVERY_MAX_MESSAGES", default_value_t = 10_000)]
    recovery_max_messages: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let data: serde_json::Value =
        serde_json::from_str(&cli.data).context("--data is not valid JSON")?;
    // With Sentinels the URL gives only credentials, database and TLS.
    let url = cli
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://sentinel-master".to_owned());
    let mut redis =
        bus::RedisConfig::new(&url).with_publish_retry_budget(Duration::from_millis(cli.retry_ms));
    let client = cli
        .redis_tls_cert_file
        .as_deref()
        .zip(cli.redis_tls_key_file.as_deref());
    if let Some(sentinel) = bus::SentinelConfig::parse(
        cli.redis_sentinels.as_deref().unwrap_or_default(),
        &cli.redis_sentinel_master,
    )
    .map_err(|e| anyhow::anyhow!("--redis-sentinels: {e}"))?
    {
        redis = redis.with_sentinel(sentinel);
    }
    if cli.redis_tls_ca_file.is_some() || client.is_some() {
        redis = redis.with_tls(
            bus::RedisTls::from_files(cli.redis_tls_ca_file.as_deref(), client)
                .context("reading the Redis TLS files")?,
        );
    }
    let seeds =
        bus::RedisClusterConfig::seeds(cli.redis_cluster_nodes.as_deref().unwrap_or_default());
    let publisher = if seeds.is_empty() {
        publisher::Publisher::connect_with(redis)?
    } else {
        let mut cluster = bus::RedisClusterConfig::new(seeds)
            .with_publish_retry_budget(Duration::from_millis(cli.retry_ms));
        cluster.tls = redis.tls.clone();
        publisher::Publisher::connect_cluster(cluster)?
    }
    .with_channel_prefix(&cli.prefix)
    .with_origin(&cli.origin)
    .in_namespace(&cli.ns);
    let recovery: Vec<&str> = cli
        .recovery_namespaces
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let publisher = if recovery.is_empty() {
        publisher
    } else {
        publisher.with_recovery(
            &recovery,
            Duration::from_millis(cli.recovery_window_ms),
            cli.recovery_max_messages,
        )
    };
    let publisher = match &cli.tenant {
        Some(tenant) => publisher.in_tenant(tenant),
        None => publisher,
    };
    if let Some(of) = &cli.sockets_of {
        return act_on_sockets(&publisher, &cli, of).await;
    }
    let broadcast = cli.to.iter().any(|t| t == rooms::BROADCAST);
    if broadcast && cli.to.len() > 1 {
        anyhow::bail!("--to '*' (the whole namespace) cannot be combined with rooms");
    }
    let mut targets = cli.to.iter().filter(|_| !broadcast);
    let mut emit = match targets.next() {
        Some(first) => publisher.to_room(first),
        None => publisher.broadcast(),
    };
    for room in targets {
        emit = emit.and_room(room);
    }
    for room in &cli.except {
        emit = emit.except(room);
    }
    let id = emit
        .emit_value(&cli.event, data)
        .await
        .with_context(|| format!("publishing to {}", bus::mask_url(&url)))?;
    println!("{id}");
    Ok(())
}

/// `--sockets-of`: the server API's action, printed as JSON (one socket per line).
async fn act_on_sockets(
    publisher: &publisher::Publisher,
    cli: &Cli,
    of: &str,
) -> anyhow::Result<()> {
    use publisher::{SocketAction, SocketTarget};
    let target = match of.split_once(':') {
        Some(("user", user)) => SocketTarget::User(user.to_owned()),
        Some(("sid", sid)) => SocketTarget::Socket(sid.to_owned()),
        _ => SocketTarget::Room(of.to_owned()),
    };
    let action = match (&cli.disconnect, cli.join.is_empty(), cli.leave.is_empty()) {
        (Some(reason), ..) => SocketAction::Disconnect {
            reason: reason.clone(),
        },
        (None, false, _) => SocketAction::Join {
            rooms: cli.join.clone(),
        },
        (None, true, false) => SocketAction::Leave {
            rooms: cli.leave.clone(),
        },
        (None, true, true) => SocketAction::List,
    };
    let answer = publisher.act_on_sockets(target, action).await?;
    for socket in &answer.sockets {
        println!("{}", serde_json::to_string(socket)?);
    }
    eprintln!(
        "{} sockets; {} of {} nodes answered",
        answer.sockets.len(),
        answer.nodes_answered,
        answer.nodes_expected
    );
    Ok(())
}
