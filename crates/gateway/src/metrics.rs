//! The node's Prometheus metrics, kept by `metrics-exporter-prometheus`.
//!
//! Each node owns its recorder (never the process-global one), so several nodes in one
//! process — the tests — keep separate figures. Every series carries `server_id`.
//! Event counters are labelled by `event_type`; past [`Metrics::new`]'s `max_event_types`
//! distinct names, new names count as `other`, so a client cannot grow the series count.
//!
//! The names dashboards already use are kept as they are (`socketio_connections_total`
//! and `socketio_rooms_total` are gauges, `socketio_messages_published` and
//! `socketio_messages_delivered` counters, `socketio_redis_latency_ms` a histogram in
//! milliseconds), although Prometheus' naming lint objects to them; every other series
//! follows the lint. `docs/operations.md` lists them all with healthy values.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use metrics::{Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Published → received on a node, in milliseconds.
const LATENCY_MS_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];
/// HTTP request durations, in seconds.
const HTTP_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `event_type` of events past the cardinality cap.
pub const OTHER_EVENT: &str = "other";

/// Why something a client or caller asked for was refused: the `reason` label of
/// `roomcast_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A connection with a missing, bad or expired token.
    Auth,
    /// A connection over the per-node or per-user cap.
    ConnectionLimit,
    /// A join the token does not allow, of an invalid room or another tenant's room.
    JoinDenied,
    /// A join past the rooms-per-socket cap.
    RoomLimit,
    /// A client publish to a room its token does not allow publishing to.
    PublishDenied,
    /// A client event or join over the socket's rate.
    RateLimit,
    /// A client event no handler exists for.
    UnknownEvent,
    /// A publish that could not be accepted: malformed, oversize, invalid rooms.
    BadInput,
}

impl Refusal {
    const ALL: [Refusal; 8] = [
        Refusal::Auth,
        Refusal::ConnectionLimit,
        Refusal::JoinDenied,
        Refusal::RoomLimit,
        Refusal::PublishDenied,
        Refusal::RateLimit,
        Refusal::UnknownEvent,
        Refusal::BadInput,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Auth => "auth",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::JoinDenied => "join_denied",
            Refusal::RoomLimit => "room_limit",
            Refusal::PublishDenied => "publish_denied",
            Refusal::RateLimit => "rate_limit",
            Refusal::UnknownEvent => "unknown_event",
            Refusal::BadInput => "bad_input",
        }
    }
}

impl EventCounters {
    fn register(recorder: &PrometheusRecorder, event_type: SharedString) -> Self {
        let counter = |name: &'static str| {
            recorder.register_counter(
                &Key::from_parts(name, vec![Label::new("event_type", event_type.clone())]),
                &META,
            )
        };
        Self {
            published: counter("socketio_messages_published"),
            delivered: counter("socketio_messages_delivered"),
        }
    }
}

/// Point-in-time values read when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// `(name, help, value)` of gauges.
    pub gauges: Vec<(&'static str, &'static str, f64)>,
    /// `(name, help, value)` of counters kept elsewhere (monotonic).
    pub counters: Vec<(&'static str, &'static str, u64)>,
}

/// One node's metrics.
pub struct Metrics {
    /// Escaped for a label value.
    server_id: String,
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    max_event_types: usize,
    /// The published and delivered counters of each event name seen (at most
    /// `max_event_types`), and of `other`: registered once, then only incremented.
    event_counters: Mutex<HashMap<String, EventCounters>>,
    other: EventCounters,
}

/// `socketio_messages_published` and `socketio_messages_delivered` of one `event_type`.
#[derive(Clone)]
struct EventCounters {
    published: metrics::Counter,
    delivered: metrics::Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("max_event_types", &self.max_event_types)
            .finish_non_exhaustive()
    }
}

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Metrics {
    /// Metrics labelled `server_id = server_id`, with at most `max_event_types` distinct
    /// `event_type` values (besides `other`).
    pub fn new(server_id: &str, max_event_types: usize) -> Self {
        let builder = PrometheusBuilder::new()
            .add_global_label("server_id", server_id)
            .set_buckets_for_metric(
                Matcher::Full("socketio_redis_latency_ms".into()),
                LATENCY_MS_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("roomcast_http_request_duration_seconds".into()),
                    HTTP_SECONDS_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("roomcast_forward_duration_seconds".into()),
                    HTTP_SECONDS_BUCKETS,
                )
            });
        // The bucket lists are constants and not empty, the only way this fails.
        let recorder = builder
            .unwrap_or_else(|_| PrometheusBuilder::new().add_global_label("server_id", server_id))
            .build_recorder();
        let handle = recorder.handle();
        let other = EventCounters::register(&recorder, SharedString::const_str(OTHER_EVENT));
        let m = Self {
            other,
            server_id: server_id
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n"),
            recorder,
            handle,
            max_event_types,
            event_counters: Mutex::new(HashMap::new()),
        };
        m.describe();
        // The latency histogram exists before the first message, for dashboards.
        let _ = m
            .recorder
            .register_histogram(&Key::from_name("socketio_redis_latency_ms"), &META);
        // Refusals exist (at 0) from the start, so a rate() over them is defined.
        for r in Refusal::ALL {
            m.refusal_counter(r).increment(0);
        }
        m.counter("roomcast_presence_events_dropped_total", Vec::new())
            .increment(0);
        for result in ["accepted", "refused"] {
            m.counter(
                "roomcast_forwarded_received_total",
                vec![Label::new("result", result)],
            )
            .increment(0);
        }
        m
    }

    fn describe(&self) {
        let r = &self.recorder;
        let c = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, SharedString::const_str(help));
        };
        c(
            "socketio_messages_published",
            "Messages published by this node (HTTP API, SDK through the bus excluded: counted where they are published), by event.",
        );
        c(
            "socketio_messages_delivered",
            "Messages written to this node's sockets, one per socket, by event.",
        );
        c(
            "roomcast_refusals_total",
            "Requests refused, by reason: auth, connection_limit, join_denied, room_limit, publish_denied, rate_limit, unknown_event, bad_input.",
        );
        c(
            "roomcast_http_requests_total",
            "HTTP API requests, by route and status.",
        );
        c(
            "roomcast_recoveries_total",
            "Reconnecting clients that asked for connection state recovery, by result: recovered, or fresh (session expired, unknown, another user's, or the offset left the history).",
        );
        c(
            "roomcast_replayed_messages_total",
            "Messages replayed to recovered sockets.",
        );
        c(
            "roomcast_presence_events_dropped_total",
            "Join/leave events (PRESENCE_EVENTS) dropped because their queue was full.",
        );
        r.describe_histogram(
            "socketio_redis_latency_ms".into(),
            Some(Unit::Milliseconds),
            SharedString::const_str(
                "From a message's publication (its envelope timestamp) to its receipt from the bus on this node.",
            ),
        );
        c(
            "roomcast_forwarded_requests_total",
            "Engine.IO requests of sessions held by another node, handed to that node, by kind (polling, websocket) and result: ok, owner_gone (answered as an unknown session), busy (over FORWARD_MAX_*), timeout, error.",
        );
        c(
            "roomcast_compat_messages_total",
            "Messages read from another Socket.IO implementation's Redis format (COMPAT_SOURCES), by source (python, node) and result: delivered, ignored (a method or flag with no meaning here, see docs/migration.md), own (Roomcast's own outbound copy), refused_room (a room name that maps to no Roomcast room), malformed, unsafe (a pickle naming a class or function), unsupported, too_large; and Roomcast deliveries published in the Node adapter's format (source node_out, result published or failed).",
        );
        c(
            "roomcast_forwarded_received_total",
            "Engine.IO requests handed to this node by another node, by result: accepted, or refused (missing, stale or wrong node credentials).",
        );
        r.describe_histogram(
            "roomcast_forward_duration_seconds".into(),
            Some(Unit::Seconds),
            SharedString::const_str(
                "Time from receiving a request for another node's session to that node's answer (its response head; a long-poll GET waits for messages), by kind.",
            ),
        );
        r.describe_histogram(
            "roomcast_http_request_duration_seconds".into(),
            Some(Unit::Seconds),
            SharedString::const_str("HTTP API request durations, by route."),
        );
    }

    /// The counters of `event`: its own while fewer than the cap are known, else `other`.
    fn event_counters(&self, event: &str) -> EventCounters {
        let mut known = self
            .event_counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = known.get(event) {
            return c.clone();
        }
        if known.len() < self.max_event_types && event != OTHER_EVENT {
            let c = EventCounters::register(&self.recorder, SharedString::from(event.to_owned()));
            known.insert(event.to_owned(), c.clone());
            return c;
        }
        self.other.clone()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    fn refusal_counter(&self, reason: Refusal) -> metrics::Counter {
        self.counter(
            "roomcast_refusals_total",
            vec![Label::new("reason", reason.as_str())],
        )
    }

    /// A recovery request and whether it recovered.
    pub fn recovery(&self, recovered: bool) {
        let result = if recovered { "recovered" } else { "fresh" };
        self.counter(
            "roomcast_recoveries_total",
            vec![Label::new("result", result)],
        )
        .increment(1);
    }

    /// Messages replayed to a recovered socket.
    pub fn delivered_replay(&self, messages: u64) {
        self.counter("roomcast_replayed_messages_total", Vec::new())
            .increment(messages);
    }

    /// A join/leave event dropped at a full queue.
    pub fn presence_event_dropped(&self) {
        self.counter("roomcast_presence_events_dropped_total", Vec::new())
            .increment(1);
    }

    /// A message published by this node.
    pub fn published(&self, event: &str) {
        self.event_counters(event).published.increment(1);
    }

    /// A message written to `sockets` local sockets.
    pub fn delivered(&self, event: &str, sockets: u64) {
        if sockets == 0 {
            return;
        }
        self.event_counters(event).delivered.increment(sockets);
    }

    /// A message received from the bus `ms` after it was published.
    pub fn bus_latency(&self, ms: f64) {
        self.recorder
            .register_histogram(&Key::from_name("socketio_redis_latency_ms"), &META)
            .record(ms);
    }

    /// A refusal.
    pub fn refused(&self, reason: Refusal) {
        self.refusal_counter(reason).increment(1);
    }

    /// An HTTP API request on `route` answered `status` after `seconds`.
    pub fn http(&self, route: &str, status: u16, seconds: f64) {
        let route = SharedString::from(route.to_owned());
        self.counter(
            "roomcast_http_requests_total",
            vec![
                Label::new("route", route.clone()),
                Label::new("status", status.to_string()),
            ],
        )
        .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "roomcast_http_request_duration_seconds",
                    vec![Label::new("route", route)],
                ),
                &META,
            )
            .record(seconds);
    }

    /// A request for another node's session of `kind` (`polling`, `websocket`), handed
    /// on with `result`; `seconds` until that node's answer, when there was one.
    pub fn forwarded(&self, kind: &'static str, result: &'static str, seconds: Option<f64>) {
        self.counter(
            "roomcast_forwarded_requests_total",
            vec![Label::new("kind", kind), Label::new("result", result)],
        )
        .increment(1);
        if let Some(seconds) = seconds {
            self.recorder
                .register_histogram(
                    &Key::from_parts(
                        "roomcast_forward_duration_seconds",
                        vec![Label::new("kind", kind)],
                    ),
                    &META,
                )
                .record(seconds);
        }
    }

    /// A message of another Socket.IO implementation from `source`, handled with `result`.
    pub fn compat(&self, source: &'static str, result: &'static str) {
        self.counter(
            "roomcast_compat_messages_total",
            vec![Label::new("source", source), Label::new("result", result)],
        )
        .increment(1);
    }

    /// A request handed to this node by another, accepted or refused.
    pub fn forwarded_in(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.counter(
            "roomcast_forwarded_received_total",
            vec![Label::new("result", result)],
        )
        .increment(1);
    }

    /// The exposition: `snapshot`'s values and the process's, then every series kept here.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let r = &self.recorder;
        for (name, help, value) in &snapshot.gauges {
            r.describe_gauge((*name).into(), None, SharedString::const_str(help));
            r.register_gauge(&Key::from_name(*name), &META).set(*value);
        }
        for (name, help, value) in &snapshot.counters {
            r.describe_counter((*name).into(), None, SharedString::const_str(help));
            r.register_counter(&Key::from_name(*name), &META)
                .absolute(*value);
        }
        let mut out = self.handle.render();
        self.process(&mut out);
        out
    }

    /// `process_*` series, from `/proc/self` (Linux; elsewhere none), in the standard
    /// client libraries' names. Written here rather than through the recorder, whose
    /// counters hold integers only (CPU seconds are fractional).
    fn process(&self, out: &mut String) {
        use std::fmt::Write as _;
        let Some(p) = ProcessStats::read() else {
            return;
        };
        let id = &self.server_id;
        let series: [(&str, &str, &str, f64); 7] = [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                p.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.vsize_bytes,
            ),
            (
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "gauge",
                "Limit of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "gauge",
                "OS threads of the process.",
                p.threads,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{server_id=\"{id}\"}} {value}\n"
            );
        }
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Default)]
struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time_seconds: f64,
    threads: f64,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `man 5 proc`: utime 14, stime 15, num_threads 20, starttime 22, vsize 23,
        // rss 24 (1-based over the whole line; here shifted by the two fields removed).
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = 100.0; // USER_HZ on every Linux the gateway targets
        let page = 4096.0;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            threads: num(20)?,
            start_time_seconds: boot + num(22)? / ticks,
            vsize_bytes: num(23)?,
            rss_bytes: num(24)? * page,
            open_fds,
            max_fds,
        })
    }
}
