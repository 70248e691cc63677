//! `switchboard-bench transports-load`: the load generator of the transports benchmark. It opens N
//! clients of one transport (WebSocket, SSE, long polling, ajax polling, or Socket.IO's
//! long-polling), subscribes them all to one room, then a publisher thread publishes R messages per
//! second into the room through the server's HTTP API, each carrying its send time and a sequence
//! number. After a warm-up it measures a window: the HTTP requests and the bytes (heads included)
//! the clients' sockets carried, the deliveries, their latency, and the server's CPU. Then it stops
//! publishing, waits for the last deliveries (a poll interval and more), and counts per client what
//! is missing, doubled or out of order.
//!
//! Every client runs as a task on one thread (a current-thread runtime) and does what a browser
//! client does for its transport (see `clients/js/switchboard.mjs`), with browser-like request
//! headers; the publisher runs on a second thread, so the clients' work cannot delay publications.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep, timeout};

use super::clients;
use super::http::{BROWSER_HEADERS, Counters, HttpConn};
pub use super::shared::Transport;
use super::shared::{ClientState, Control, Published, Shared, fail};
use crate::harness::rounds::Noisy;
use crate::load::control::{MEASURE, STOP};
use crate::load::latency::{histogram, quantile, realtime_ns};
use crate::load::report::{ReportCore, Tally};
use crate::load::setup::Setup;
use crate::load::{self, CpuWindow};
use crate::procfs;
use crate::tput::Snapshot;

/// Arguments of `switchboard-bench transports-load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// How the clients connect.
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// The server's client address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Where publications go: switchboard's server API (`POST /api/publish`), or the Socket.IO
    /// peer's `/publish` [default: --addr].
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// switchboard's `[api] key`.
    #[arg(long, default_value = "switchboard-bench")]
    pub api_key: String,
    /// The room every client joins.
    #[arg(long, default_value = "chat:bench")]
    pub channel: String,
    /// Clients.
    #[arg(short = 'n', long, default_value_t = 1_000)]
    pub clients: usize,
    /// Publications per second into the room.
    #[arg(short, long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds of publishing before the measured window.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Measured window, in seconds.
    #[arg(short, long, default_value_t = 30.0)]
    pub duration: f64,
    /// After the window: at most this many seconds for the last publications to arrive
    /// [default: 5 + 2 × --poll-interval].
    #[arg(long)]
    pub drain: Option<f64>,
    /// Ajax polling: seconds between the end of a poll and the next (the JS client's
    /// `pollInterval`).
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Seconds to wait after the last subscription before reading the server's RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Clients being set up at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Clients per source address (127.0.0.x).
    #[arg(long, default_value_t = 1_000)]
    pub per_source: usize,
    /// Give up when the clients are not all set up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,
    /// Send only the headers the protocol needs, not a browser's.
    #[arg(long)]
    pub bare_headers: bool,
    /// Server process id, for its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one transport's run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TransportReport {
    /// The transport.
    pub transport: Transport,
    /// Clients asked for.
    pub clients: usize,
    /// Clients whose subscription was confirmed.
    pub subscribed: usize,
    /// Publications per second.
    pub rate: f64,
    /// Ajax polling interval, seconds.
    pub poll_interval: f64,
    /// Whether requests carried browser-like headers.
    pub browser_headers: bool,
    /// Seconds to open and subscribe every client.
    pub setup_s: f64,
    /// HTTP requests of the set-up (opens, subscriptions, upgrades).
    pub setup_requests: u64,
    /// Bytes of the set-up, both ways.
    pub setup_bytes: u64,
    /// What every load run reports (flattened: the same keys at the top level).
    #[serde(flatten)]
    pub core: ReportCore,
    /// Publish API call (request to response), median, µs.
    pub publish_p50_us: u64,
    /// Publish API call, 99th percentile, µs.
    pub publish_p99_us: u64,
    /// HTTP requests the clients made in the window.
    pub requests_window: u64,
    /// Bytes the clients' sockets read in the window.
    pub bytes_down_window: u64,
    /// Bytes the clients' sockets wrote in the window.
    pub bytes_up_window: u64,
    /// TCP connections the clients opened in all.
    pub connections: u64,
    /// Requests per delivered message (window).
    pub requests_per_msg: f64,
    /// Bytes (both ways) per delivered message (window).
    pub bytes_per_msg: f64,
    /// Bytes read per delivered message.
    pub bytes_down_per_msg: f64,
    /// Bytes written per delivered message.
    pub bytes_up_per_msg: f64,
    /// Server CPU (user + system, from the scheduler's per-thread accounting) in the window,
    /// seconds.
    pub server_cpu_s: Option<f64>,
    /// Server CPU seconds per 1,000 deliveries.
    pub server_cpu_s_per_1k: Option<f64>,
    /// Server RSS with every client subscribed (after `--settle`), KiB.
    pub rss_ready_kib: Option<u64>,
    /// (RSS ready − RSS before) ÷ subscribed clients, KiB.
    pub kib_per_client: Option<f64>,
}

impl Noisy for TransportReport {
    fn other_cpu_pct(&self) -> Option<f64> {
        self.core.other_cpu_pct
    }
}

/// Runs the load and prints the report.
pub fn main(args: &LoadArgs) -> Result<()> {
    load::print_report(&run(args)?, args.json, print_text)
}

/// Runs the load on a current-thread runtime (the publisher on a thread of its own).
pub fn run(args: &LoadArgs) -> Result<TransportReport> {
    ensure!(args.clients > 0, "need at least one client");
    ensure!(
        args.rate > 0.0 && args.duration > 0.0 && args.poll_interval > 0.0,
        "--rate, --duration and --poll-interval must be positive"
    );
    ensure!(
        args.per_source > 0 && args.concurrency > 0,
        "counts must be at least 1"
    );
    let last = 2 + args.clients.div_ceil(args.per_source) - 1;
    ensure!(last <= 254, "too many source addresses: raise --per-source");
    // SSE clients hold two connections each (the stream and the one for acks).
    load::ensure_open_files(args.clients, 2, "clients")?;
    load::run_local(measure(args))
}

async fn measure(args: &LoadArgs) -> Result<TransportReport> {
    let control = Arc::new(Control::new(Published {
        published: AtomicU64::new(0),
        published_window: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        publish_us: Mutex::new(histogram()?),
    }));
    let shared = Rc::new(Shared {
        transport: args.transport,
        addr: args.addr,
        channel: args.channel.clone(),
        poll_interval: Duration::from_secs_f64(args.poll_interval),
        headers: if args.bare_headers {
            ""
        } else {
            BROWSER_HEADERS
        },
        counters: Rc::new(Counters::default()),
        control: Arc::clone(&control),
        clients: RefCell::new((0..args.clients).map(|_| ClientState::default()).collect()),
        setup: Setup::new(args.concurrency, args.setup_timeout),
        deliveries: Cell::new(0),
        deliveries_window: Cell::new(0),
        latency_us: RefCell::new(histogram()?),
        end_reasons: RefCell::new(BTreeMap::new()),
    });
    let rss = || args.server_pid.map(procfs::rss_kib).transpose();

    // Set every client up.
    let rss_before = rss()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            let shared = Rc::clone(&shared);
            let source = Ipv4Addr::new(127, 0, 0, 2 + (id / args.per_source) as u8);
            tokio::task::spawn_local(async move {
                let opening = clients::open(&shared, id, source);
                let Some(client) = shared
                    .setup
                    .open_or_fail("client", id, source, opening)
                    .await
                else {
                    return;
                };
                shared.clients.borrow_mut()[id].subscribed = true;
                shared.setup.ready();
                if let Err(e) = client.run(&shared, id).await {
                    shared.ended(id, &format!("{e:#}"));
                }
            })
        })
        .collect();
    let subscribed = shared.setup.wait(args.clients, "clients", "client").await?;
    let setup_s = started.elapsed().as_secs_f64();
    let (setup_down, setup_up, setup_requests) = shared.counters.snapshot();
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_ready = rss()?;

    // Publish: warm-up, window, stop.
    let publisher = spawn_publisher(args, &control)?;
    control.publisher_started().await?;
    sleep(Duration::from_secs_f64(args.warmup)).await;
    let start = Snapshot::take(args.server_pid)?;
    let server_ns_before = args.server_pid.map(procfs::cpu_ns).transpose()?;
    let counted_before = shared.counters.snapshot();
    let delivered_before = shared.deliveries_window.get();
    control.measure(args.duration).await;
    let end = Snapshot::take(args.server_pid)?;
    let server_ns_after = args.server_pid.map(procfs::cpu_ns).transpose()?;
    let counted_after = shared.counters.snapshot();
    let deliveries_window = shared.deliveries_window.get() - delivered_before;
    let rss_window = rss()?;

    // Drain: wait until the publisher stopped and every live client has everything.
    let drain_limit = Duration::from_secs_f64(args.drain.unwrap_or(5.0 + 2.0 * args.poll_interval));
    let (drained, _) = control
        .drain(drain_limit, || {
            let published = control.counts.published.load(Ordering::Acquire);
            shared
                .clients
                .borrow()
                .iter()
                .filter(|c| c.subscribed && !c.ended)
                .all(|c| c.seen.distinct >= published)
        })
        .await;
    control.finish(&tasks, publisher).await;

    let cpu = CpuWindow::new(&start, &end);
    let (seconds, own, server) = (cpu.seconds, cpu.own, cpu.server);
    // The scheduler's ns rather than /proc's 10 ms ticks: a WebSocket window is a few ticks only.
    let server_cpu_s = server_ns_before
        .zip(server_ns_after)
        .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9);
    let published = control.counts.published.load(Ordering::Acquire);
    let clients = shared.clients.borrow();
    let mut tally = Tally::default();
    for c in clients.iter().filter(|c| c.subscribed) {
        tally.add(published, &c.seen);
    }
    let ended = clients.iter().filter(|c| c.ended).count();
    let requests_window = counted_after.2 - counted_before.2;
    let bytes_down_window = counted_after.0 - counted_before.0;
    let bytes_up_window = counted_after.1 - counted_before.1;
    let per_msg = |v: u64| {
        if deliveries_window == 0 {
            f64::NAN
        } else {
            v as f64 / deliveries_window as f64
        }
    };
    let hist = shared.latency_us.borrow();
    let publish_hist = control
        .counts
        .publish_us
        .lock()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    Ok(TransportReport {
        transport: args.transport,
        clients: args.clients,
        subscribed,
        rate: args.rate,
        poll_interval: args.poll_interval,
        browser_headers: !args.bare_headers,
        setup_s,
        setup_requests,
        setup_bytes: setup_down + setup_up,
        core: ReportCore {
            seconds,
            published,
            published_window: control.counts.published_window.load(Ordering::Acquire),
            publish_errors: control.counts.errors.load(Ordering::Acquire),
            publish_first_error: control.error(),
            deliveries_window,
            deliveries: shared.deliveries.get(),
            rss_before_kib: rss_before,
            rss_window_kib: rss_window,
            client_cpu_pct: cpu.pct(own),
            other_cpu_pct: server
                .map(|s| cpu.pct((end.machine - start.machine).saturating_sub(own + s))),
            drained,
            ended,
            end_reasons: shared.end_reasons.borrow().clone(),
            setup_failures: shared.setup.failed(),
            first_error: shared.setup.first_error(),
            ..ReportCore::received(&tally, &hist)
        },
        publish_p50_us: quantile(&publish_hist, 0.5),
        publish_p99_us: quantile(&publish_hist, 0.99),
        requests_window,
        bytes_down_window,
        bytes_up_window,
        connections: shared.counters.connections.get(),
        requests_per_msg: per_msg(requests_window),
        bytes_per_msg: per_msg(bytes_down_window + bytes_up_window),
        bytes_down_per_msg: per_msg(bytes_down_window),
        bytes_up_per_msg: per_msg(bytes_up_window),
        server_cpu_s,
        server_cpu_s_per_1k: server_cpu_s
            .filter(|_| deliveries_window > 0)
            .map(|s| s / deliveries_window as f64 * 1000.0),
        rss_ready_kib: rss_ready,
        kib_per_client: rss_before
            .zip(rss_ready)
            .map(|(b, a)| (a as f64 - b as f64) / subscribed as f64),
    })
}

/// Starts the publisher thread: `rate` publications per second into the room, through
/// switchboard's server API or the Socket.IO peer's `/publish`, until the phase is `STOP`.
fn spawn_publisher(args: &LoadArgs, control: &Arc<Control>) -> Result<std::thread::JoinHandle<()>> {
    let api = args.api_addr.unwrap_or(args.addr);
    let (socketio, rate) = (args.transport.is_socketio(), args.rate);
    let (key, channel) = (args.api_key.clone(), args.channel.clone());
    control.spawn_publisher(
        move |control| async move { publish(api, socketio, &key, &channel, rate, &control).await },
        fail,
    )
}

/// The publisher's loop: one request per publication on a keep-alive connection (not counted:
/// it is the application's backend, the same for every transport).
async fn publish(
    api: SocketAddr,
    socketio: bool,
    key: &str,
    channel: &str,
    rate: f64,
    control: &Control,
) -> Result<()> {
    let counters = Rc::new(Counters::default());
    let mut conn = HttpConn::new(Ipv4Addr::LOCALHOST, api, &counters, "");
    let auth = format!("Authorization: apikey {key}\r\n");
    let target = if socketio {
        format!("/publish?room={channel}")
    } else {
        "/api/publish".to_string()
    };
    control.mark_started();
    let start = tokio::time::Instant::now();
    let mut seq = 0u64;
    loop {
        let phase = control.phase.load(Ordering::Acquire);
        if phase >= STOP {
            return Ok(());
        }
        seq += 1;
        let data = crate::fanout::wire::payload(realtime_ns(), seq);
        let body = if socketio {
            data
        } else {
            format!("{{\"channel\":\"{channel}\",\"data\":{data}}}")
        };
        let sent = Instant::now();
        let response = timeout(
            Duration::from_secs(10),
            conn.request("POST", &target, body.as_bytes(), &auth),
        )
        .await
        .context("publish timed out")??;
        let us = sent.elapsed().as_micros() as u64;
        if response.status == 200 && (socketio || response.body.starts_with(b"{\"result\"")) {
            control.counts.published.fetch_add(1, Ordering::AcqRel);
            if phase == MEASURE {
                control
                    .counts
                    .published_window
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut h) = control.counts.publish_us.lock() {
                h.saturating_record(us.max(1));
            }
        } else {
            // A refused publication is not due to anyone; its number is skipped for good, so
            // clients see a hole they are not blamed for only if the server delivered it anyway.
            fail(
                control,
                format!(
                    "publish answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ),
            );
            bail!("publish refused");
        }
        tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
    }
}

fn print_text(r: &TransportReport) {
    println!(
        "{}: {}/{} clients subscribed in {:.1} s ({} requests, {} bytes)",
        r.transport.name(),
        r.subscribed,
        r.clients,
        r.setup_s,
        r.setup_requests,
        r.setup_bytes
    );
    println!(
        "published {} ({} in the {:.1} s window, {} errors), publish call p50 {} µs p99 {} µs",
        r.core.published,
        r.core.published_window,
        r.core.seconds,
        r.core.publish_errors,
        r.publish_p50_us,
        r.publish_p99_us
    );
    println!(
        "window: {} deliveries, {} requests, {} B down, {} B up: {:.3} requests/msg, {:.0} B/msg \
         ({:.0} down, {:.0} up)",
        r.core.deliveries_window,
        r.requests_window,
        r.bytes_down_window,
        r.bytes_up_window,
        r.requests_per_msg,
        r.bytes_per_msg,
        r.bytes_down_per_msg,
        r.bytes_up_per_msg
    );
    println!(
        "latency ms p50 {:.1} p99 {:.1} max {:.1}; server CPU {} s ({} s per 1k msgs); client CPU {:.0} %, other {}",
        r.core.latency_p50_us as f64 / 1000.0,
        r.core.latency_p99_us as f64 / 1000.0,
        r.core.latency_max_us as f64 / 1000.0,
        r.server_cpu_s.map_or("-".into(), |v| format!("{v:.2}")),
        r.server_cpu_s_per_1k
            .map_or("-".into(), |v| format!("{v:.4}")),
        r.core.client_cpu_pct,
        r.core
            .other_cpu_pct
            .map_or("-".into(), |v| format!("{v:.0} %"))
    );
    println!(
        "delivered {} of {} due: missing {}, duplicates {}, out of order {}; drained: {}; \
         RSS KiB before {:?} ready {:?}: {} KiB per client",
        r.core.deliveries,
        r.core.expected,
        r.core.missing,
        r.core.duplicates,
        r.core.out_of_order,
        r.core.drained,
        r.core.rss_before_kib,
        r.rss_ready_kib,
        r.kib_per_client.map_or("-".into(), |v| format!("{v:.1}"))
    );
    r.core.print_ended();
}
