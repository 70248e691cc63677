//! The publish round trip benchmark of the remote engines' examples: how many publications per
//! second one node, and two nodes, get through the engine's store and back out to a subscribed
//! node, and the latency of one.
//!
//! "One node": the publishing engine is also the subscriber. "Two nodes": one engine publishes,
//! another receives. Latency is measured one publication at a time (publish, then wait for its
//! delivery); throughput with `concurrency` publishers at once, all on one channel and then spread
//! over `concurrency` channels. Every delivery is checked: offsets follow each other per channel,
//! none lost or doubled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_protocol::{ClientInfo, Payload, Publication};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::{Engine, EngineHandler, PresenceEvent, StreamOptions};

/// Publications timed one at a time, for the latency.
const LATENCY_SAMPLES: usize = 1_000;

/// What to run: `total` publications (split over `concurrency` publishers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Publications per measurement.
    pub total: u64,
    /// Publishers at once.
    pub concurrency: u64,
}

impl Load {
    /// `[PUBLICATIONS [CONCURRENCY]]` from the command line; 10,000 publications and 32
    /// publishers by default.
    pub fn from_args() -> Self {
        let mut args = std::env::args().skip(1);
        let total = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
        let concurrency = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
        Self {
            total,
            concurrency: u64::max(concurrency, 1),
        }
    }
}

/// Sends each delivery's channel and offset to the measuring task.
struct Probe(UnboundedSender<(String, u64)>);

impl EngineHandler for Probe {
    fn on_publication(&self, channel: &str, p: Arc<Publication>, _: &str) {
        let _ = self.0.send((channel.to_owned(), p.offset));
    }
    fn on_presence(&self, _: &str, _: PresenceEvent, _: Arc<ClientInfo>) {}
    fn on_stream_gap(&self, channel: &str) {
        eprintln!("gap reported in {channel}");
    }
}

/// About a hundred bytes, as a chat line or a price update would be.
fn payload() -> Publication {
    Publication::new(Payload::Json(Bytes::from_static(
        br#"{"text":"a message of about a hundred bytes, as a chat line or a price update would be"}"#,
    )))
}

/// Deliveries as they arrive, checked: per channel, each offset follows the one before.
struct Deliveries {
    rx: UnboundedReceiver<(String, u64)>,
    last: HashMap<String, u64>,
}

impl Deliveries {
    async fn next(&mut self) {
        let (channel, offset) = self
            .rx
            .recv()
            .await
            .unwrap_or_else(|| panic!("the engine stopped delivering"));
        let before = self.last.entry(channel.clone()).or_insert(0);
        assert_eq!(
            offset,
            *before + 1,
            "offsets of {channel} in order, none lost or doubled"
        );
        *before = offset;
    }
}

/// Runs the benchmark on engines made by `connect` (two: a publisher, and a subscriber on another
/// node), printing a Markdown table: `store` says what was measured ("Redis", "NATS (file
/// storage)"). Panics (an example's helper) on any failure.
pub async fn run<F, Fut>(store: &str, load: Load, mut connect: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn Engine>>,
{
    let opts = StreamOptions {
        history_size: 100,
        history_ttl: Duration::from_secs(60),
        history_meta_ttl: Duration::from_secs(600),
    };
    let Load { total, concurrency } = load;
    println!("{store}: {total} publications of ~100 bytes, history on, {concurrency} publishers");
    println!("| setup | channels | publications/s | round trip p50 µs | p99 µs |");
    println!("|---|--:|--:|--:|--:|");
    for nodes in [1, 2] {
        let publisher = connect().await;
        let subscriber = if nodes == 1 {
            Arc::clone(&publisher)
        } else {
            connect().await
        };
        let (tx, rx) = unbounded_channel();
        subscriber.set_handler(Arc::new(Probe(tx)));
        let mut deliveries = Deliveries {
            rx,
            last: HashMap::new(),
        };
        let mut spreads = vec![1];
        if concurrency > 1 {
            spreads.push(concurrency);
        }
        for channels in spreads {
            let names: Vec<String> = (0..channels)
                .map(|c| format!("bench{nodes}-{channels}-{c}"))
                .collect();
            for c in &names {
                subscriber
                    .subscribe(c)
                    .await
                    .unwrap_or_else(|e| panic!("subscribe: {e}"));
            }
            let (p50, p99) = latency(&*publisher, &names[0], &opts, &mut deliveries).await;
            let rate = throughput(&publisher, &names, &opts, load, &mut deliveries).await;
            let label = if nodes == 1 {
                "one node (publisher subscribes)"
            } else {
                "two nodes (A publishes, B receives)"
            };
            println!(
                "| {label} | {channels} | {rate:.0} | {} | {} |",
                p50.as_micros(),
                p99.as_micros()
            );
        }
    }
}

/// One publication at a time, each waited for: the median and 99th percentile round trip.
async fn latency(
    publisher: &dyn Engine,
    channel: &str,
    opts: &StreamOptions,
    deliveries: &mut Deliveries,
) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let t = Instant::now();
        publisher
            .publish(channel, payload(), opts)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        deliveries.next().await;
        lat.push(t.elapsed());
    }
    lat.sort();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// `load.concurrency` publishers at once, publisher `i` on channel `i % channels`, until the last
/// delivery: publications per second.
async fn throughput(
    publisher: &Arc<dyn Engine>,
    channels: &[String],
    opts: &StreamOptions,
    load: Load,
    deliveries: &mut Deliveries,
) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..load.concurrency {
        let e = Arc::clone(publisher);
        let channel = channels[(i as usize) % channels.len()].clone();
        let opts = opts.clone();
        let n = load.total / load.concurrency + u64::from(i < load.total % load.concurrency);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n {
                e.publish(&channel, payload(), &opts)
                    .await
                    .unwrap_or_else(|e| panic!("publish: {e}"));
            }
        }));
    }
    for _ in 0..load.total {
        deliveries.next().await;
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("a publisher: {e}"));
    }
    load.total as f64 / t.elapsed().as_secs_f64()
}
