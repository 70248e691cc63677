//! What the console plots: the node's own counters read once a second, turned into rates, kept for
//! 15 minutes; and the cost of each transport per delivered message, from the same counters.
//!
//! The counters are the ones `/metrics` serves (read back from the node's Prometheus text, so that
//! the console and a scraper never disagree), plus HTTP requests per transport, which the client
//! listener counts only while the console is on ([`Traffic`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use switchboard_hub::Node;

/// Seconds of history kept and sent to a console that opens (15 minutes at one point a second).
pub const HISTORY_POINTS: usize = 900;

/// Seconds the cost view averages over: short enough to be "right now", long enough that one poll
/// more or less does not swing it.
pub const COST_WINDOW: usize = 10;

/// The transports that make requests, and the label of the fallbacks' shared uploads (`open`,
/// `send`, `close`), as in `switchboard_transport_bytes_total`.
const REQUEST_LABELS: [&str; 5] = ["websocket", "sse", "long-poll", "poll", "http"];

/// HTTP requests on the client listener, by transport: WebSocket upgrades, SSE streams, polls (long
/// or not), and the fallbacks' uploads (POSTs, shared by the three, labelled `http`).
///
/// It also adds up the bytes of the HTTP heads of those requests and their responses, which the
/// node's payload counters leave out and which are most of what a fallback costs per message.
#[derive(Debug, Default)]
pub struct Traffic {
    counts: [AtomicU64; 5],
    heads_in: [AtomicU64; 5],
    heads_out: [AtomicU64; 5],
    websocket_path: String,
    fallback_path: Option<String>,
}

/// A transport's index in [`Traffic`]'s counters, as [`Traffic::classify`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(usize);

/// Bytes of an HTTP/1.1 request head as it came: the request line, each header line, the blank line.
pub fn request_head_bytes(req: &http::request::Parts) -> u64 {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    (line + header_bytes(&req.headers)) as u64
}

/// Bytes of an HTTP/1.1 response head: the status line, each header line, the blank line, and the
/// `date` and length headers hyper adds on the way out (a `content-length` or
/// `transfer-encoding: chunked` line, about 20 bytes).
pub fn response_head_bytes(status: http::StatusCode, headers: &http::HeaderMap) -> u64 {
    let line = "HTTP/1.1 200 ".len() + status.canonical_reason().map_or(0, str::len) + 2;
    let added = "date: Thu, 03 Dec 2026 02:43:00 GMT\r\n".len() + 20;
    (line + header_bytes(headers) + added) as u64
}

fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum::<usize>()
        + 2
}

impl Traffic {
    /// Counts requests to the client endpoint at `websocket_path` and the fallbacks at
    /// `fallback_path` (`None`: the fallbacks are off, and requests there are nobody's).
    pub fn new(websocket_path: &str, fallback_path: Option<&str>) -> Self {
        Self {
            counts: Default::default(),
            heads_in: Default::default(),
            heads_out: Default::default(),
            websocket_path: websocket_path.to_owned(),
            fallback_path: fallback_path.map(|p| p.trim_end_matches('/').to_owned()),
        }
    }

    /// Counts one request of a transport (`slot` from [`Traffic::classify`]) with its head's bytes.
    pub fn count(&self, slot: Slot, head_bytes: u64) {
        self.counts[slot.0].fetch_add(1, Ordering::Relaxed);
        self.heads_in[slot.0].fetch_add(head_bytes, Ordering::Relaxed);
    }

    /// Counts the head of the answer to a request of `slot`.
    pub fn answered(&self, slot: Slot, head_bytes: u64) {
        self.heads_out[slot.0].fetch_add(head_bytes, Ordering::Relaxed);
    }

    /// The transport a request belongs to, if any.
    pub fn classify(&self, method: &http::Method, uri: &http::Uri) -> Option<Slot> {
        self.index(method, uri).map(Slot)
    }

    fn index(&self, method: &http::Method, uri: &http::Uri) -> Option<usize> {
        let path = uri.path();
        if *method == http::Method::GET && path == self.websocket_path {
            return Some(0);
        }
        let rest = path.strip_prefix(self.fallback_path.as_deref()?)?;
        match (method.as_str(), rest) {
            ("GET", "/sse") => Some(1),
            ("GET", "/poll") => {
                let ajax = uri
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "wait=0"));
                Some(if ajax { 3 } else { 2 })
            }
            ("POST", "" | "/send" | "/close") => Some(4),
            _ => None,
        }
    }

    /// Requests so far, by label.
    fn totals(&self) -> BTreeMap<String, f64> {
        Self::by_label(&self.counts)
    }

    fn by_label(counters: &[AtomicU64; 5]) -> BTreeMap<String, f64> {
        REQUEST_LABELS
            .iter()
            .zip(counters)
            .map(|(l, c)| ((*l).to_owned(), c.load(Ordering::Relaxed) as f64))
            .collect()
    }
}

/// One line of Prometheus text: the metric's name, its labels and its value.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    /// The name as exposed (`switchboard_deliveries_total`).
    pub name: &'a str,
    /// `(label, value)` pairs, in order.
    pub labels: Vec<(&'a str, String)>,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of a Prometheus/OpenMetrics text exposition; comments and unreadable lines skipped.
pub fn parse(text: &str) -> Vec<Sample<'_>> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, rest) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, rest)
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `a="x",b="y\"z"} rest` → the pairs and `rest`.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(',');
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &rest[end + 1..];
    }
}

/// The counters one point is computed from, as read at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    clients: BTreeMap<String, f64>,
    bytes_in: BTreeMap<String, f64>,
    bytes_out: BTreeMap<String, f64>,
    requests: BTreeMap<String, f64>,
    messages: BTreeMap<String, f64>,
    publications: f64,
    deliveries: f64,
    commands: f64,
    slow_disconnects: f64,
    disconnects: f64,
    proxy_seconds: f64,
    proxy_calls: f64,
    proxy_errors: f64,
    queued_bytes: f64,
}

impl Totals {
    fn read(metrics: &str, traffic: &Traffic) -> Self {
        // Bytes start with the HTTP heads; the payload counters are added to them below.
        let mut t = Self {
            requests: traffic.totals(),
            bytes_in: Traffic::by_label(&traffic.heads_in),
            bytes_out: Traffic::by_label(&traffic.heads_out),
            ..Self::default()
        };
        for s in parse(metrics) {
            let transport = || s.label("transport").unwrap_or("?").to_owned();
            match s.name {
                "switchboard_client_connections" => {
                    t.clients.insert(transport(), s.value);
                }
                "switchboard_transport_bytes_total" => {
                    let map = if s.label("direction") == Some("in") {
                        &mut t.bytes_in
                    } else {
                        &mut t.bytes_out
                    };
                    *map.entry(transport()).or_default() += s.value;
                }
                "switchboard_client_messages_total" => {
                    *t.messages.entry(transport()).or_default() += s.value;
                }
                "switchboard_publications_total" => t.publications = s.value,
                "switchboard_deliveries_total" => t.deliveries = s.value,
                "switchboard_commands_total" => t.commands += s.value,
                "switchboard_disconnects_total" => {
                    t.disconnects += s.value;
                    if s.label("code") == Some("3008") {
                        t.slow_disconnects += s.value;
                    }
                }
                "switchboard_proxy_duration_seconds_sum" => t.proxy_seconds += s.value,
                "switchboard_proxy_duration_seconds_count" => t.proxy_calls += s.value,
                "switchboard_proxy_errors_total" => t.proxy_errors += s.value,
                "switchboard_client_queued_bytes" => t.queued_bytes = s.value,
                _ => {}
            }
        }
        t
    }
}

/// One second of this node, as the console plots it. Rates are per second over the interval since
/// the point before; counts of events (`slow_disconnects`...) are within that interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Point {
    /// Unix time, seconds.
    pub t: u64,
    /// Connected clients, by transport.
    pub clients: BTreeMap<String, f64>,
    /// Distinct users connected here.
    pub users: usize,
    /// Subscriptions here.
    pub subscriptions: usize,
    /// Channels with subscribers here.
    pub channels: usize,
    /// Resident memory of the process, bytes (0 where `/proc` is missing).
    pub memory: u64,
    /// Bytes waiting in client queues.
    pub queued_bytes: f64,
    /// Publications fanned out per second (messages in).
    pub publications: f64,
    /// Messages queued for subscribers per second (messages out).
    pub deliveries: f64,
    /// Client commands per second.
    pub commands: f64,
    /// Bytes received per second, by transport: payload and HTTP request heads.
    pub bytes_in: BTreeMap<String, f64>,
    /// Bytes sent per second, by transport: payload and HTTP response heads.
    pub bytes_out: BTreeMap<String, f64>,
    /// HTTP requests per second, by transport (see [`Traffic`]).
    pub requests: BTreeMap<String, f64>,
    /// Messages (replies and pushes) sent to clients per second, by transport.
    pub messages: BTreeMap<String, f64>,
    /// Clients disconnected as slow consumers (3008).
    pub slow_disconnects: f64,
    /// Clients disconnected by the server, whatever the code.
    pub disconnects: f64,
    /// Proxy calls per second.
    pub proxy_calls: f64,
    /// Mean proxy call time in the interval, milliseconds (`None`: no call).
    pub proxy_ms: Option<f64>,
    /// Proxy calls without a usable answer.
    pub proxy_errors: f64,
}

fn rates(
    now: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (k.clone(), (d / secs).max(0.0))
        })
        .collect()
}

impl Point {
    fn between(now: &Totals, before: &Totals, secs: f64) -> Self {
        let rate = |a: f64, b: f64| ((a - b) / secs).max(0.0);
        let calls = now.proxy_calls - before.proxy_calls;
        Self {
            clients: now.clients.clone(),
            queued_bytes: now.queued_bytes,
            publications: rate(now.publications, before.publications),
            deliveries: rate(now.deliveries, before.deliveries),
            commands: rate(now.commands, before.commands),
            bytes_in: rates(&now.bytes_in, &before.bytes_in, secs),
            bytes_out: rates(&now.bytes_out, &before.bytes_out, secs),
            requests: rates(&now.requests, &before.requests, secs),
            messages: rates(&now.messages, &before.messages, secs),
            slow_disconnects: (now.slow_disconnects - before.slow_disconnects).max(0.0),
            disconnects: (now.disconnects - before.disconnects).max(0.0),
            proxy_calls: rate(now.proxy_calls, before.proxy_calls),
            proxy_ms: (calls > 0.0)
                .then(|| (now.proxy_seconds - before.proxy_seconds) / calls * 1000.0),
            proxy_errors: (now.proxy_errors - before.proxy_errors).max(0.0),
            ..Self::default()
        }
    }
}

/// One transport's cost per delivered message over the last [`COST_WINDOW`] seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cost {
    /// `websocket`, `sse`, `long-poll`, `poll`; `http` for the fallbacks' shared uploads.
    pub transport: String,
    /// Clients on it now.
    pub clients: f64,
    /// Messages (replies and pushes) sent to its clients per second, counted per transport by the
    /// clients' drivers (`switchboard_client_messages_total`).
    pub deliveries: f64,
    /// HTTP requests per delivered message (`None` also for a transport whose requests the console
    /// does not count).
    pub requests_per_msg: Option<f64>,
    /// Bytes sent per delivered message.
    pub bytes_down_per_msg: Option<f64>,
    /// Bytes received per delivered message.
    pub bytes_up_per_msg: Option<f64>,
}

/// The cost of each transport over `window` (oldest first), from the node's own counters. `None`
/// per message where the transport delivered nothing in the window.
pub fn cost(window: &[Point]) -> Vec<Cost> {
    let Some(last) = window.last() else {
        return Vec::new();
    };
    let n = window.len() as f64;
    let mean = |f: &dyn Fn(&Point) -> f64| window.iter().map(f).sum::<f64>() / n;
    // A fold from 0.0: the sum of no floats is -0.0, which the page would show as "-0".
    let all_clients = last.clients.values().fold(0.0, |a, b| a + b);
    let per = |x: f64, d: f64| (d > 0.0).then(|| x / d);
    let mut rows = Vec::new();
    let mut fallback_deliveries = 0.0;
    for transport in ["websocket", "sse", "long-poll", "poll"]
        .into_iter()
        .map(str::to_owned)
        .chain(last.clients.keys().cloned())
    {
        if rows.iter().any(|r: &Cost| r.transport == transport) {
            continue;
        }
        let clients = last.clients.get(&transport).copied().unwrap_or(0.0);
        let key = transport.clone();
        let d = mean(&|p| p.messages.get(&key).copied().unwrap_or(0.0));
        if transport != "websocket" {
            fallback_deliveries += d;
        }
        let requests = mean(&|p| p.requests.get(&key).copied().unwrap_or(0.0));
        let down = mean(&|p| p.bytes_out.get(&key).copied().unwrap_or(0.0));
        let up = mean(&|p| p.bytes_in.get(&key).copied().unwrap_or(0.0));
        rows.push(Cost {
            transport,
            clients,
            deliveries: d,
            // A transport the console does not count requests of (one added later) shows none
            // rather than a false 0.
            requests_per_msg: if REQUEST_LABELS.contains(&key.as_str()) {
                per(requests, d)
            } else {
                None
            },
            bytes_down_per_msg: per(down, d),
            bytes_up_per_msg: per(up, d),
        });
    }
    let uploads = mean(&|p| p.requests.get("http").copied().unwrap_or(0.0));
    let up = mean(&|p| p.bytes_in.get("http").copied().unwrap_or(0.0));
    rows.push(Cost {
        transport: "http".into(),
        clients: all_clients - last.clients.get("websocket").copied().unwrap_or(0.0),
        deliveries: fallback_deliveries,
        requests_per_msg: per(uploads, fallback_deliveries),
        bytes_down_per_msg: None,
        bytes_up_per_msg: per(up, fallback_deliveries),
    });
    rows
}

/// The process's resident memory in bytes, from `/proc/self/status` (0 where it cannot be read).
fn memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Where each node's console shares its own figures with the others: the engine's presence of a
/// channel no client can name (its namespace starts with a NUL byte, which no configuration has),
/// one entry per node, its `info` a [`NodeFigures`]. Presence is what the engine already shares
/// between nodes (and expires in Redis when a node stops refreshing it).
pub const FIGURES_CHANNEL: &str = "\0switchboard:console-nodes";

/// What a node's console tells the others about its node, beyond what nodes announce anyway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct NodeFigures {
    /// Connected clients, by transport.
    pub clients: BTreeMap<String, f64>,
    /// Resident memory, bytes.
    pub memory: u64,
    /// Publications fanned out per second.
    pub publications: f64,
    /// Deliveries per second.
    pub deliveries: f64,
}

impl From<&Point> for NodeFigures {
    fn from(p: &Point) -> Self {
        Self {
            clients: p.clients.clone(),
            memory: p.memory,
            publications: p.publications,
            deliveries: p.deliveries,
        }
    }
}

/// The last [`HISTORY_POINTS`] points of this node, and the other nodes' figures.
#[derive(Debug, Default)]
pub struct Stats {
    points: Mutex<VecDeque<Point>>,
    figures: Mutex<BTreeMap<String, NodeFigures>>,
}

impl Stats {
    /// Every node's figures by node id, as last read (nodes without a console on are missing).
    pub fn figures(&self) -> BTreeMap<String, NodeFigures> {
        self.figures.lock().clone()
    }

    /// Every point kept, oldest first.
    pub fn history(&self) -> Vec<Point> {
        self.points.lock().iter().cloned().collect()
    }

    /// The last point and the cost view over the last [`COST_WINDOW`] points.
    pub fn latest(&self) -> Option<(Point, Vec<Cost>)> {
        let points = self.points.lock();
        let last = points.back()?.clone();
        let from = points.len().saturating_sub(COST_WINDOW);
        let window: Vec<Point> = points.range(from..).cloned().collect();
        Some((last, cost(&window)))
    }

    fn push(&self, point: Point) {
        let mut points = self.points.lock();
        if points.len() == HISTORY_POINTS {
            points.pop_front();
        }
        points.push_back(point);
    }
}

/// Reads the node's counters every second until `stop`, keeping a point each time in `stats` and
/// calling `tick` after it (the console's live stream wakes on it).
pub async fn sample(
    node: Arc<Node>,
    traffic: Arc<Traffic>,
    stats: Arc<Stats>,
    tick: impl Fn(),
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = (Instant::now(), Totals::read(&node.metrics_text(), &traffic));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let now = Instant::now();
        let secs = now.duration_since(before.0).as_secs_f64();
        if secs < 0.5 {
            continue;
        }
        let totals = Totals::read(&node.metrics_text(), &traffic);
        let info = node.info();
        let mut point = Point::between(&totals, &before.1, secs);
        point.t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        point.users = info.num_users;
        point.subscriptions = info.num_subscriptions;
        point.channels = info.num_channels;
        point.memory = memory();
        share(&node, &stats, &point).await;
        stats.push(point);
        tick();
        before = (now, totals);
    }
    if let Err(e) = node
        .engine()
        .remove_presence(FIGURES_CHANNEL, node.node_id())
        .await
    {
        tracing::debug!(error = %e, "console: cannot withdraw this node's figures");
    }
}

/// Tells the other nodes' consoles this node's figures, and reads theirs.
async fn share(node: &Node, stats: &Stats, point: &Point) {
    let info = serde_json::value::to_raw_value(&NodeFigures::from(point)).ok();
    let entry = switchboard_protocol::ClientInfo {
        client: node.node_id().to_owned(),
        user: String::new(),
        info,
    };
    let engine = node.engine();
    if let Err(e) = engine.add_presence(FIGURES_CHANNEL, Arc::new(entry)).await {
        tracing::debug!(error = %e, "console: cannot share this node's figures");
    }
    match engine.presence(FIGURES_CHANNEL).await {
        Ok(all) => {
            let figures = all
                .into_iter()
                .filter_map(|(id, c)| {
                    let f = serde_json::from_str(c.info.as_ref()?.get()).ok()?;
                    Some((id, f))
                })
                .collect();
            *stats.figures.lock() = figures;
        }
        Err(e) => tracing::debug!(error = %e, "console: cannot read the nodes' figures"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = r#"# HELP switchboard_client_connections Connected clients, by transport.
# TYPE switchboard_client_connections gauge
switchboard_client_connections{transport="websocket"} 3
switchboard_client_connections{transport="sse"} 1
switchboard_deliveries_total 100
switchboard_publications_total 10
switchboard_transport_bytes_total{transport="websocket",direction="out"} 9000
switchboard_transport_bytes_total{transport="http",direction="in"} 400
switchboard_disconnects_total{code="3008"} 2
switchboard_disconnects_total{code="3503"} 1
switchboard_proxy_duration_seconds_sum{event="connect"} 0.5
switchboard_proxy_duration_seconds_count{event="connect"} 5
switchboard_proxy_duration_seconds_bucket{le="0.001",event="connect"} 0
switchboard_engine_shard_ready{shard="a\"b"} 1
# EOF
"#;

    #[test]
    fn parses_prometheus_text() {
        let s = parse(TEXT);
        assert_eq!(
            s[0],
            Sample {
                name: "switchboard_client_connections",
                labels: vec![("transport", "websocket".into())],
                value: 3.0
            }
        );
        assert_eq!(s[2].name, "switchboard_deliveries_total");
        assert!(s[2].labels.is_empty());
        assert_eq!(s.last().unwrap().labels, vec![("shard", "a\"b".into())]);
        assert_eq!(s.len(), 12, "comments skipped");
        assert!(parse("garbage{oops").is_empty());
        assert!(parse("name{a=\"x\"} notanumber").is_empty());
    }

    #[test]
    fn points_are_rates_over_the_interval() {
        let traffic = Traffic::new("/connection/websocket", Some("/connection/http"));
        let before = Totals::read("", &traffic);
        let ws = traffic
            .classify(
                &http::Method::GET,
                &"/connection/websocket".parse().unwrap(),
            )
            .unwrap();
        traffic.count(ws, 100);
        traffic.answered(ws, 50);
        let now = Totals::read(TEXT, &traffic);
        let p = Point::between(&now, &before, 2.0);
        assert_eq!(p.deliveries, 50.0);
        assert_eq!(p.publications, 5.0);
        assert_eq!(
            p.bytes_out["websocket"], 4525.0,
            "payload and the upgrade's answer"
        );
        assert_eq!(p.bytes_in["websocket"], 50.0, "the upgrade request");
        assert_eq!(p.bytes_in["http"], 200.0);
        assert_eq!(p.requests["websocket"], 0.5);
        assert_eq!(p.requests["sse"], 0.0);
        assert_eq!(p.clients["websocket"], 3.0);
        assert_eq!(p.slow_disconnects, 2.0);
        assert_eq!(p.disconnects, 3.0);
        assert_eq!(p.proxy_ms, Some(100.0));
        let still = Point::between(&now, &now, 1.0);
        assert_eq!(still.proxy_ms, None);
        assert_eq!(still.deliveries, 0.0);
    }

    #[test]
    fn requests_are_counted_by_transport() {
        let off = Traffic::new("/ws", None);
        assert!(
            off.classify(&http::Method::GET, &"/connection/http/sse".parse().unwrap())
                .is_none()
        );
        let t = Traffic::new("/ws", Some("/connection/http/"));
        let get = http::Method::GET;
        let post = http::Method::POST;
        for (m, uri) in [
            (&get, "/ws"),
            (&get, "/connection/http/sse?session=1"),
            (&get, "/connection/http/poll?session=1&ack=3"),
            (&get, "/connection/http/poll?session=1&wait=0"),
            (&post, "/connection/http"),
            (&post, "/connection/http/send?session=1"),
            (&post, "/connection/http/close"),
            (&get, "/"),
            (&post, "/ws"),
            (&get, "/connection/http/other"),
        ] {
            if let Some(slot) = t.classify(m, &uri.parse().unwrap()) {
                t.count(slot, 1);
            }
        }
        let totals = t.totals();
        assert_eq!(
            totals.values().copied().collect::<Vec<_>>(),
            [3.0, 1.0, 1.0, 1.0, 1.0],
            "{totals:?}"
        );
        assert_eq!(totals["poll"], 1.0);
        assert_eq!(totals["http"], 3.0);
    }

    #[test]
    fn head_sizes_are_what_goes_on_the_wire() {
        let req = http::Request::get("/connection/http/poll?session=ab&ack=3")
            .header("host", "127.0.0.1:8080")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let wire = "GET /connection/http/poll?session=ab&ack=3 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\naccept: */*\r\n\r\n";
        assert_eq!(request_head_bytes(&req.into_parts().0), wire.len() as u64);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        let wire = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: Thu, 03 Dec 2026 02:43:00 GMT\r\ncontent-length: 123\r\n\r\n";
        let ours = response_head_bytes(http::StatusCode::OK, &headers);
        assert!(
            ours.abs_diff(wire.len() as u64) <= 2,
            "{ours} vs {}",
            wire.len()
        );
    }

    fn point(
        clients: &[(&str, f64)],
        messages: &[(&str, f64)],
        out: &[(&str, f64)],
        req: &[(&str, f64)],
    ) -> Point {
        let map = |v: &[(&str, f64)]| v.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        Point {
            clients: map(clients),
            messages: map(messages),
            bytes_out: map(out),
            requests: map(req),
            ..Point::default()
        }
    }

    #[test]
    fn cost_per_delivered_message() {
        // 10 WebSocket and 10 long-polling clients, 10 messages/s each (counted per transport).
        let p = point(
            &[("websocket", 10.0), ("long-poll", 10.0)],
            &[("websocket", 10.0), ("long-poll", 10.0)],
            &[("websocket", 880.0), ("long-poll", 2580.0)],
            &[("long-poll", 10.0), ("http", 0.0)],
        );
        let rows = cost(&[p.clone(), p]);
        let row = |t: &str| rows.iter().find(|r| r.transport == t).unwrap();
        assert_eq!(row("websocket").deliveries, 10.0);
        assert_eq!(row("websocket").requests_per_msg, Some(0.0));
        assert_eq!(row("websocket").bytes_down_per_msg, Some(88.0));
        assert_eq!(row("long-poll").requests_per_msg, Some(1.0));
        assert_eq!(row("long-poll").bytes_down_per_msg, Some(258.0));
        assert_eq!(row("sse").deliveries, 0.0);
        assert_eq!(
            row("sse").requests_per_msg,
            None,
            "nothing delivered: no ratio"
        );
        assert_eq!(row("http").clients, 10.0);
        assert_eq!(row("http").requests_per_msg, Some(0.0));
        // Messages are the transport's own, not a share of the clients: 1 poll client that got
        // 4 messages/s beside 3 idle WebSocket clients.
        let apart = point(
            &[("websocket", 3.0), ("poll", 1.0)],
            &[("poll", 4.0)],
            &[("poll", 2000.0)],
            &[("poll", 1.0)],
        );
        let rows = cost(&[apart]);
        let row = |t: &str| rows.iter().find(|r| r.transport == t).unwrap();
        assert_eq!(row("poll").deliveries, 4.0);
        assert_eq!(row("poll").bytes_down_per_msg, Some(500.0));
        assert_eq!(row("poll").requests_per_msg, Some(0.25));
        assert_eq!(row("websocket").deliveries, 0.0);
        assert!(cost(&[]).is_empty());
        let idle = cost(&[Point::default()]);
        assert!(
            idle.iter().all(|r| r.clients.is_sign_positive()),
            "{idle:?}"
        );
        // A transport whose requests are not counted here shows no ratio rather than 0.
        let other = point(
            &[("socketio", 1.0)],
            &[("socketio", 5.0)],
            &[("socketio", 500.0)],
            &[],
        );
        let rows = cost(&[other]);
        let row = rows.iter().find(|r| r.transport == "socketio").unwrap();
        assert_eq!(row.requests_per_msg, None);
        assert_eq!(row.bytes_down_per_msg, Some(100.0));
    }
}
