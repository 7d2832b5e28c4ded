//! Reading client events that gateways append to a namespace's Redis Stream
//! (`UPSTREAM_ROUTES=…=stream`), as one member of a consumer group.

use std::time::Duration;

pub use envelope::ClientEvent;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};

/// A stream entry handed to this consumer; [`Consumer::ack`] it once handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stream entry id.
    pub entry: String,
    /// The event, or why the entry could not be read (ack it anyway to drop it).
    pub event: Result<ClientEvent, String>,
}

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
#[error("Redis stream: {0}")]
pub struct ConsumeError(String);

/// Limit of one command (besides a read's blocking time).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// `fut`, or a [`ConsumeError`] after `limit`.
async fn timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ConsumeError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ConsumeError(format!("no answer from Redis within {limit:?}")))
}

impl From<redis::RedisError> for ConsumeError {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// One consumer of a group on one namespace's stream. Entries are delivered at least
/// once: an entry read but never acked (the consumer crashed) stays pending until a
/// consumer of the group [`reclaims`](Consumer::reclaim) it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let publisher = publisher::Publisher::connect("redis://127.0.0.1", Duration::from_secs(3))?;
/// let mut consumer =
///     publisher::Consumer::connect("redis://127.0.0.1", "roomcast", "/", "notifications", "worker-1")
///         .await?;
/// loop {
///     // Entries a crashed worker left behind for 30 s, then new ones.
///     let mut batch = consumer.reclaim(Duration::from_secs(30), 100).await?;
///     batch.extend(consumer.next(Duration::from_secs(5), 100).await?);
///     for d in batch {
///         if let Ok(ev) = &d.event {
///             if ev.event == "notification_read" {
///                 // … mark it read in the database, then confirm to that user:
///                 publisher.reply_to_user(ev).emit("notification_read_confirmed", &ev.args[0]).await?;
///             }
///         }
///         consumer.ack(&d).await?;
///     }
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct Consumer {
    conn: Conn,
    stream: String,
    group: String,
    name: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Joins group `group` as consumer `name` on namespace `ns`'s stream (channel prefix
    /// `prefix`, the gateways' `REDIS_CHANNEL_PREFIX`). Creates the stream and the group
    /// if needed; a new group starts with the entries still in the stream.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        ns: &str,
        group: &str,
        name: &str,
    ) -> Result<Self, ConsumeError> {
        Self::connect_with(&bus::RedisConfig::new(redis_url), prefix, ns, group, name).await
    }

    /// [`Consumer::connect`] with a whole Redis configuration: `rediss://` with a private
    /// CA or a client certificate ([`bus::RedisConfig::with_tls`]), or the master of a
    /// Sentinel set ([`bus::RedisConfig::with_sentinel`]; after a failover, connect again).
    pub async fn connect_with(
        redis: &bus::RedisConfig,
        prefix: &str,
        ns: &str,
        group: &str,
        name: &str,
    ) -> Result<Self, ConsumeError> {
        let client = bus::resolve_client(redis)
            .await
            .map_err(|e| ConsumeError(e.to_string()))?;
        // Its own connection: a blocking read must not hold up other commands. No
        // client-side response timeout (the library's default is 500 ms, shorter than a
        // blocking read, and an XREADGROUP given up on the client would leave its
        // entries pending); each call has its own limit instead.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let conn = timeout(
            COMMAND_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await??;
        Self::join(Conn::One(conn), prefix, ns, group, name).await
    }

    /// [`Consumer::connect`] on Redis Cluster (the gateways' `REDIS_CLUSTER_NODES`): the
    /// stream lives on the shard that owns its key; a failover is followed by the cluster
    /// connection (a read in flight fails; call again).
    pub async fn connect_cluster(
        redis: &bus::RedisClusterConfig,
        prefix: &str,
        ns: &str,
        group: &str,
        name: &str,
    ) -> Result<Self, ConsumeError> {
        let client = redis
            .client_builder()
            // No client-side response timeout under a blocking read (see connect_with);
            // each call has its own limit.
            .response_timeout(Duration::from_secs(24 * 3600))
            .build()?;
        let conn = timeout(COMMAND_TIMEOUT, client.get_async_connection()).await??;
        Self::join(Conn::Cluster(conn), prefix, ns, group, name).await
    }

    /// Joins (creating if needed) the group on namespace `ns`'s stream over `conn`.
    async fn join(
        mut conn: Conn,
        prefix: &str,
        ns: &str,
        group: &str,
        name: &str,
    ) -> Result<Self, ConsumeError> {
        let stream = rooms::Channels::new(prefix).upstream(ns);
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        Ok(Self {
            conn,
            stream,
            group: group.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The stream this consumer reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Up to `count` entries no consumer of the group has read, waiting up to `block`
    /// for the first one.
    pub async fn next(
        &mut self,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        let options = StreamReadOptions::default()
            .group(&self.group, &self.name)
            .count(count)
            .block(block.as_millis().try_into().unwrap_or(usize::MAX));
        let reply: Option<StreamReadReply> = timeout(
            block + COMMAND_TIMEOUT,
            self.conn.xread_options(&[&self.stream], &[">"], &options),
        )
        .await??;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| delivery(e.id, &e.map))
            .collect())
    }

    /// Takes over up to `count` entries that other consumers of the group read but did
    /// not ack for at least `min_idle` (`XAUTOCLAIM`): the work of a crashed consumer.
    pub async fn reclaim(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, ConsumeError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply: StreamAutoClaimReply =
            timeout(COMMAND_TIMEOUT, cmd.query_async(&mut self.conn)).await??;
        Ok(reply
            .claimed
            .into_iter()
            .map(|e| delivery(e.id, &e.map))
            .collect())
    }

    /// Marks `d` handled: it is not delivered again.
    pub async fn ack(&mut self, d: &Delivery) -> Result<(), ConsumeError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.stream).arg(&self.group).arg(&d.entry);
        let _: i64 = timeout(COMMAND_TIMEOUT, cmd.query_async(&mut self.conn)).await??;
        Ok(())
    }
}

fn delivery(entry: String, fields: &std::collections::HashMap<String, redis::Value>) -> Delivery {
    let event = match fields.get("event") {
        Some(v) => redis::from_redis_value::<Vec<u8>>(v.clone())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())),
        None => Err("the entry has no \"event\" field".to_owned()),
    };
    Delivery { entry, event }
}

/// The consumer's connection: to one Redis, or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    One(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
