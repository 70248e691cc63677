//! The node's metrics, in Prometheus' text format (served at `/metrics` on the API listener).
//!
//! One registry per node (not a process-global one), so that two nodes in one process, as in tests,
//! count apart. Hot paths touch one atomic per event batch: a broadcast adds its whole delivery count
//! at once, and transports add bytes per write batch, not per message. Values that are cheaper to read
//! than to track (queued bytes, channels, history) are computed at scrape time, by [`Metrics::encode`]'s
//! caller through [`crate::Node::metrics_text`].

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels: a small fixed set of `(name, value)` pairs, all static strings.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Labels whose values come from the configuration (a Redis shard's address).
pub type OwnedLabels = Vec<(&'static str, String)>;

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connected clients by transport.
    pub connections: Family<Labels, Gauge>,
    /// Commands received, by method.
    pub commands: Family<Labels, Counter>,
    /// Publications handed to this node's hub for fan-out.
    pub publications: Counter,
    /// Messages queued for subscribers by fan-out (one per subscriber per publication).
    pub deliveries: Counter,
    /// Payload bytes received from and sent to clients, by transport and direction.
    pub bytes: Family<Labels, Counter>,
    /// Messages (replies and pushes) handed to clients' wires, by transport: what the bytes and
    /// requests of a transport are per message (the console's cost view), counted per drain.
    pub messages: Family<Labels, Counter>,
    /// Clients disconnected, by code (3008 is a slow consumer).
    pub disconnects: Family<Labels, Counter>,
    /// Duration of proxy calls, by event.
    pub proxy_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Proxy calls that gave no usable answer, by event and kind (timeout, overloaded, failed,
    /// bad_reply).
    pub proxy_errors: Family<Labels, Counter>,
    /// Bytes waiting in client queues (sum), at scrape time.
    pub queued_bytes: Gauge,
    /// The longest client queue in bytes, at scrape time.
    pub queued_bytes_max: Gauge,
    /// Channels with subscribers on this node, at scrape time.
    pub channels: Gauge,
    /// Publications kept in history (engines that know), at scrape time.
    pub history_publications: Gauge,
    /// Streams with history (engines that know), at scrape time.
    pub history_streams: Gauge,
    /// 1 while the engine is connected and serving.
    pub engine_ready: Gauge<i64, AtomicI64>,
    /// 1 while a part of the engine's backing store (a Redis shard, label `shard`) answers, at
    /// scrape time.
    pub engine_shard_ready: Family<OwnedLabels, Gauge<i64, AtomicI64>>,
}

fn proxy_histogram() -> Histogram {
    // 1 ms to ~4 s: a proxy's timeout is 3 s by default.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 13,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Family::<Labels, Gauge>::default();
        let commands = Family::<Labels, Counter>::default();
        let publications = Counter::<u64, AtomicU64>::default();
        let deliveries = Counter::<u64, AtomicU64>::default();
        let bytes = Family::<Labels, Counter>::default();
        let messages = Family::<Labels, Counter>::default();
        let disconnects = Family::<Labels, Counter>::default();
        let proxy_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(proxy_histogram);
        let proxy_errors = Family::<Labels, Counter>::default();
        let queued_bytes = Gauge::default();
        let queued_bytes_max = Gauge::default();
        let channels = Gauge::default();
        let history_publications = Gauge::default();
        let history_streams = Gauge::default();
        let engine_ready = Gauge::<i64, AtomicI64>::default();
        let engine_shard_ready = Family::<OwnedLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "client_connections",
            "Connected clients, by transport",
            connections.clone(),
        );
        registry.register(
            "commands",
            "Client commands received, by method",
            commands.clone(),
        );
        registry.register(
            "publications",
            "Publications fanned out by this node",
            publications.clone(),
        );
        registry.register(
            "deliveries",
            "Messages queued for subscribers by fan-out",
            deliveries.clone(),
        );
        registry.register(
            "transport_bytes",
            "Payload bytes exchanged with clients, by transport and direction",
            bytes.clone(),
        );
        registry.register(
            "client_messages",
            "Messages (replies and pushes) sent to clients, by transport",
            messages.clone(),
        );
        registry.register(
            "disconnects",
            "Clients disconnected, by disconnect code (3008: slow consumer)",
            disconnects.clone(),
        );
        registry.register(
            "proxy_duration_seconds",
            "Duration of calls to the application's handlers, by event",
            proxy_duration.clone(),
        );
        registry.register(
            "proxy_errors",
            "Proxy calls without a usable answer, by event and kind",
            proxy_errors.clone(),
        );
        registry.register(
            "client_queued_bytes",
            "Bytes waiting in client queues",
            queued_bytes.clone(),
        );
        registry.register(
            "client_queued_bytes_max",
            "The longest client queue, in bytes",
            queued_bytes_max.clone(),
        );
        registry.register(
            "channels",
            "Channels with subscribers on this node",
            channels.clone(),
        );
        registry.register(
            "history_publications",
            "Publications kept in history",
            history_publications.clone(),
        );
        registry.register(
            "history_streams",
            "Channel streams with history",
            history_streams.clone(),
        );
        registry.register(
            "engine_ready",
            "1 while the engine (broker, history, presence) is serving",
            engine_ready.clone(),
        );
        registry.register(
            "engine_shard_ready",
            "1 while this Redis shard answers (its channels work), by shard address",
            engine_shard_ready.clone(),
        );
        Self {
            registry,
            connections,
            commands,
            publications,
            deliveries,
            bytes,
            messages,
            disconnects,
            proxy_duration,
            proxy_errors,
            queued_bytes,
            queued_bytes_max,
            channels,
            history_publications,
            history_streams,
            engine_ready,
            engine_shard_ready,
        }
    }
}

impl Metrics {
    /// The counter of payload bytes for `transport` in `direction` (`in` or `out`). Transports fetch
    /// it once per connection and add to it per batch.
    pub fn bytes(&self, transport: &'static str, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create_owned(&vec![("transport", transport), ("direction", direction)])
    }

    /// The messages sent to clients of `transport` (see [`Metrics::messages`]).
    pub fn messages_out(&self, transport: &'static str) -> Counter {
        self.messages
            .get_or_create_owned(&vec![("transport", transport)])
    }

    /// Counts a proxy call.
    pub fn proxy_call(&self, event: &'static str, took: Duration, error: Option<&'static str>) {
        self.proxy_duration
            .get_or_create(&vec![("event", event)])
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.proxy_errors
                .get_or_create(&vec![("event", event), ("kind", kind)])
                .inc();
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_the_prefix_and_labels() {
        let m = Metrics::default();
        m.connections
            .get_or_create(&vec![("transport", "websocket")])
            .inc();
        m.bytes("sse", "out").inc_by(10);
        m.proxy_call("rpc", Duration::from_millis(3), Some("timeout"));
        let text = m.encode();
        assert!(
            text.contains("switchboard_client_connections{transport=\"websocket\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "switchboard_transport_bytes_total{transport=\"sse\",direction=\"out\"} 10"
            )
        );
        assert!(text.contains("switchboard_proxy_errors_total{event=\"rpc\",kind=\"timeout\"} 1"));
        assert!(text.contains("switchboard_proxy_duration_seconds_count{event=\"rpc\"} 1"));
    }
}
