//! `switchboard-bench fanout-load`: the fan-out load generator. It opens N WebSocket subscribers
//! spread over C channels (subscriber i on channel i mod C) and waits until each is subscribed;
//! then a publisher thread publishes R publications per second, round-robin over the channels,
//! each carrying its send time and its channel's sequence number. After a warm-up it measures a
//! window: deliveries received, publish-to-deliver latency, CPU of the server and of itself.
//! Then it stops publishing and waits (at most `--drain`) for every connected subscriber to have
//! everything, and counts what is missing, doubled or out of order per subscriber.
//!
//! The subscribers run as tasks on one thread (a current-thread runtime) that read into one shared
//! buffer and only keep what is left of a partial frame, so 10,000 connections cost little memory
//! and the core is spent on reading. The publisher runs on a second thread of the same process, so
//! a busy subscriber loop cannot hold it back more than the kernel's scheduler allows.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use hdrhistogram::Histogram;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{sleep, timeout};

use super::wire::{self, Delivery, Event, Kind};
use crate::load::control::{EXIT, MEASURE, STOP};
use crate::load::latency::{histogram, quantile, realtime_ns};
use crate::load::seq::{self, Seen};
use crate::load::setup::Setup;
use crate::load::{self, CpuWindow, control};
use crate::procfs;
use crate::tput::Snapshot;
use crate::ws::{
    self, Fragments, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_text, frames, mask, masked_frame,
    parse_server_frame, pong,
};

/// Highest sequence number accepted (a larger one is a parse error, not a publication).
const MAX_SEQ: u64 = 100_000_000;
/// Size of the shared read buffer.
const SCRATCH: usize = 256 * 1024;
/// Most publications written in one tick of the publisher (1 ms).
const MAX_BATCH: u64 = 1_000;

/// Arguments of `switchboard-bench fanout-load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Which server (and so which protocol).
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Subscribers (one WebSocket connection each).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub subs: usize,
    /// Channels; subscriber i subscribes to channel i mod C.
    #[arg(short, long, default_value_t = 1)]
    pub channels: usize,
    /// Publications per second, round-robin over the channels.
    #[arg(short, long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing before the measured window.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measured window, in seconds.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// After the window: at most this many seconds for the last publications to arrive.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds to wait after the last subscription before reading the server's RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Record the latency of every K-th subscriber only (all deliveries are still counted and
    /// checked).
    #[arg(long, default_value_t = 1)]
    pub sample_every: usize,
    /// Subscriptions being set up at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Connections per source address (127.0.0.x).
    #[arg(long, default_value_t = 1_000)]
    pub per_source: usize,
    /// Last byte of the first source address.
    #[arg(long, default_value_t = 2)]
    pub source_start: u8,
    /// Nchan: HTTP connections of the publisher (channel c goes through connection c mod P,
    /// requests pipelined, so each channel's order is kept).
    #[arg(long, default_value_t = 8)]
    pub http_conns: usize,
    /// Give up when the subscriptions are not all set up after this many seconds.
    #[arg(long, default_value_t = 180.0)]
    pub setup_timeout: f64,
    /// Server process id, for its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// More server-side processes (a second node, Redis) whose CPU is reported apart
    /// (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub other_pids: Vec<u32>,
    /// switchboard: spread the subscribers over these nodes (subscriber i on node i mod K)
    /// instead of all on `--addr` (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<SocketAddr>,
    /// switchboard: publish through the server API at this address (`POST /api/publish`,
    /// pipelined on `--http-conns` keep-alive connections) instead of a WebSocket client, and
    /// time every call.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// switchboard: the `[api] key` for `--api-addr`.
    #[arg(long, default_value = "switchboard-bench")]
    pub api_key: String,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one fan-out run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LoadReport {
    /// The server.
    pub kind: Kind,
    /// Subscribers asked for.
    pub subs: usize,
    /// Subscribers whose subscription was confirmed.
    pub subscribed: usize,
    /// Channels.
    pub channels: usize,
    /// Subscribers the server itself counts (Nchan channel info), when it tells.
    pub server_counted_subs: Option<u64>,
    /// Seconds to open and subscribe all connections.
    pub subscribe_s: f64,
    /// Target publications per second.
    pub rate: f64,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Publications sent, in all.
    pub published: u64,
    /// Publications sent in the window.
    pub published_window: u64,
    /// Publications that the server answered with an error (switchboard, Nchan).
    pub publish_errors: u64,
    /// Publications the server acknowledged by the end (switchboard replies, Nchan responses;
    /// Socket.IO does not acknowledge).
    pub publish_acked: Option<u64>,
    /// The first publish error.
    pub publish_first_error: Option<String>,
    /// Most a publication was sent after its scheduled time, ms (publisher held back).
    pub publish_max_late_ms: f64,
    /// Deliveries received in the window.
    pub deliveries_window: u64,
    /// Deliveries per second in the window.
    pub deliveries_per_s: f64,
    /// Publications in the window × subscribers per channel ÷ window.
    pub offered_per_s: f64,
    /// Deliveries received in all (warm-up, window, drain).
    pub deliveries: u64,
    /// Deliveries due to the subscribed connections: Σ publications of their channel.
    pub expected: u64,
    /// Due deliveries that never arrived (within the drain).
    pub missing: u64,
    /// Of the missing: holes, i.e. publications never received although a later one of the same
    /// channel was (lost on the way).
    pub gaps: u64,
    /// Of the missing: the publications after the last one received (still queued somewhere
    /// when the drain ended, or lost with a connection).
    pub undelivered: u64,
    /// Deliveries received twice or more.
    pub duplicates: u64,
    /// Deliveries older than one already received on the same connection.
    pub out_of_order: u64,
    /// switchboard: deliveries whose offset was not the previous one + 1.
    pub offset_gaps: u64,
    /// Latency samples in the window.
    pub latency_samples: u64,
    /// Publish-to-deliver latency percentiles, µs.
    pub latency_p50_us: u64,
    /// 99th percentile, µs.
    pub latency_p99_us: u64,
    /// 99.9th percentile, µs.
    pub latency_p999_us: u64,
    /// Largest, µs.
    pub latency_max_us: u64,
    /// The same latency measured when the load generator read the data (includes its own
    /// backlog): median, µs.
    pub read_latency_p50_us: u64,
    /// 99th percentile at read, µs.
    pub read_latency_p99_us: u64,
    /// Reads that carried a kernel receive timestamp (the others use the read time).
    pub stamped_reads: u64,
    /// Server CPU in the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Of it, system (kernel) time, % of one core.
    pub server_system_pct: Option<f64>,
    /// How busy the server's core (CPU 0) was, softirq included, %.
    pub server_core_busy_pct: f64,
    /// How busy the client's core (CPU 1) was, softirq included, %.
    pub client_core_busy_pct: f64,
    /// This process's CPU (subscribers and publisher) in the window, % of one core.
    pub client_cpu_pct: f64,
    /// User + system CPU of all other processes in the window, % of one core (noise).
    pub other_cpu_pct: Option<f64>,
    /// CPU of each of `--other-pids` in the window, % of one core.
    #[serde(default)]
    pub server_others_cpu_pct: Vec<f64>,
    /// Publish API calls (request written to response read), median, µs (`--api-addr`).
    #[serde(default)]
    pub publish_call_p50_us: Option<u64>,
    /// Publish API calls, 99th percentile, µs.
    #[serde(default)]
    pub publish_call_p99_us: Option<u64>,
    /// Server RSS before the first connection, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every subscriber subscribed (after `--settle`), KiB.
    pub rss_subscribed_kib: Option<u64>,
    /// Server RSS at the end of the window, KiB.
    pub rss_window_kib: Option<u64>,
    /// Server RSS after the drain, KiB.
    pub rss_end_kib: Option<u64>,
    /// (RSS subscribed − RSS before) ÷ subscribed, KiB.
    pub kib_per_sub: Option<f64>,
    /// Seconds the drain took.
    pub drain_s: f64,
    /// Whether every connected subscriber had everything at the end of the drain.
    pub drained: bool,
    /// Subscribers whose connection ended before the end (the server closed it, or an error).
    pub ended: usize,
    /// Why they ended, with counts.
    pub end_reasons: BTreeMap<String, usize>,
    /// Subscriptions that could not be set up.
    pub setup_failures: usize,
    /// The first setup failure.
    pub first_error: Option<String>,
}

/// Runs the load and prints the report.
pub fn main(args: &LoadArgs) -> Result<()> {
    load::print_report(&run(args)?, args.json, print_text)
}

/// Runs the load on a current-thread runtime (the publisher on a thread of its own).
pub fn run(args: &LoadArgs) -> Result<LoadReport> {
    ensure!(
        args.subs > 0 && args.channels > 0 && args.channels <= args.subs,
        "need at least one subscriber per channel"
    );
    ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    ensure!(
        args.sample_every > 0 && args.per_source > 0 && args.concurrency > 0,
        "counts must be at least 1"
    );
    let last = usize::from(args.source_start) + args.subs.div_ceil(args.per_source) - 1;
    ensure!(
        args.source_start >= 2 && last <= 254,
        "sources 127.0.0.{}..127.0.0.{last} are out of range: raise --per-source",
        args.source_start
    );
    load::ensure_open_files(args.subs, 1, "subscribers")?;
    load::run_local(measure(args))
}

/// What the publisher thread counts.
struct Published {
    /// Publications per channel.
    published: Vec<AtomicU64>,
    sent: AtomicU64,
    sent_window: AtomicU64,
    reply_errors: AtomicU64,
    acked: AtomicU64,
    max_late_us: AtomicU64,
    /// Publish API call times, µs.
    call_us: Mutex<Histogram<u64>>,
}

/// What the publisher thread and the subscriber loop share.
type Control = control::Control<Published>;

/// What one subscriber saw.
#[derive(Default)]
struct SubState {
    channel: usize,
    subscribed: bool,
    last_offset: Option<u64>,
    received: u64,
    seen: Seen,
    offset_gaps: u64,
    ended: bool,
}

impl SubState {
    fn record(&mut self, d: Delivery) -> Result<()> {
        seq::check(d.seq, MAX_SEQ)?;
        self.received += 1;
        if !self.seen.record(d.seq) {
            return Ok(());
        }
        if let Some(offset) = d.offset {
            if self.last_offset.is_some_and(|last| offset != last + 1) {
                self.offset_gaps += 1;
            }
            self.last_offset = Some(offset);
        }
        Ok(())
    }
}

/// The subscriber side's state (one thread).
struct Shared {
    kind: Kind,
    control: Arc<Control>,
    sample_every: usize,
    subs: RefCell<Vec<SubState>>,
    setup: Setup,
    deliveries: Cell<u64>,
    deliveries_window: Cell<u64>,
    latency_us: RefCell<Histogram<u64>>,
    read_latency_us: RefCell<Histogram<u64>>,
    stamped: Cell<u64>,
    scratch: RefCell<Vec<u8>>,
    cmsg: RefCell<Vec<u8>>,
    end_reasons: RefCell<BTreeMap<String, usize>>,
}

impl Shared {
    fn phase(&self) -> u8 {
        self.control.phase.load(Ordering::Relaxed)
    }

    /// Records why subscriber `id` ended, unless the run is over anyway.
    fn ended(&self, id: usize, reason: String) {
        if self.phase() == EXIT {
            return;
        }
        if let Some(s) = self.subs.borrow_mut().get_mut(id) {
            s.ended = true;
        }
        let mut key: String = reason.chars().take(100).collect();
        key = key.replace('|', "/");
        *self.end_reasons.borrow_mut().entry(key).or_default() += 1;
    }
}

async fn measure(args: &LoadArgs) -> Result<LoadReport> {
    let control = Arc::new(Control::new(Published {
        published: (0..args.channels).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        sent_window: AtomicU64::new(0),
        reply_errors: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        max_late_us: AtomicU64::new(0),
        call_us: Mutex::new(histogram()?),
    }));
    let shared = Rc::new(Shared {
        kind: args.kind,
        control: Arc::clone(&control),
        sample_every: args.sample_every,
        subs: RefCell::new(
            (0..args.subs)
                .map(|i| SubState {
                    channel: i % args.channels,
                    ..SubState::default()
                })
                .collect(),
        ),
        setup: Setup::new(args.concurrency, args.setup_timeout),
        deliveries: Cell::new(0),
        deliveries_window: Cell::new(0),
        latency_us: RefCell::new(histogram()?),
        read_latency_us: RefCell::new(histogram()?),
        stamped: Cell::new(0),
        scratch: RefCell::new(vec![0; SCRATCH]),
        cmsg: RefCell::new(nix::cmsg_space!(TimeSpec)),
        end_reasons: RefCell::new(BTreeMap::new()),
    });
    let rss = || args.server_pid.map(procfs::rss_kib).transpose();

    // Subscribe everyone.
    let rss_before = rss()?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.subs)
        .map(|id| {
            let shared = Rc::clone(&shared);
            let source = Ipv4Addr::new(127, 0, 0, args.source_start + (id / args.per_source) as u8);
            let addr = match args.nodes.len() {
                0 => args.addr,
                k => args.nodes[id % k],
            };
            let channel = id % args.channels;
            tokio::task::spawn_local(async move {
                let opening = open_subscriber(shared.kind, addr, source, id, channel);
                let (conn, offset) = match shared.setup.open(opening).await {
                    Ok(ok) => ok,
                    Err(e) => {
                        let error = || format!("subscriber {id} from {source}: {e:#}");
                        shared.setup.fail(error);
                        return;
                    }
                };
                {
                    let mut subs = shared.subs.borrow_mut();
                    subs[id].subscribed = true;
                    subs[id].last_offset = offset;
                }
                shared.setup.ready();
                if let Err(e) = receive(id, conn, &shared).await {
                    shared.ended(id, format!("{e:#}"));
                }
            })
        })
        .collect();
    let subscribed = (shared.setup)
        .wait(args.subs, "subscriptions", "subscriber")
        .await?;
    let subscribe_s = started.elapsed().as_secs_f64();
    let server_counted_subs = match args.kind {
        Kind::Nchan => Some(nchan_subscribers(args.addr, args.channels).await?),
        _ => None,
    };
    sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_subscribed = rss()?;

    // Publish: warm-up, window, stop.
    let publisher = {
        let (kind, addr) = (args.kind, args.addr);
        let (channels, rate, http_conns) = (args.channels, args.rate, args.http_conns);
        let api = args.api_addr.map(|a| (a, args.api_key.clone()));
        control.spawn_publisher(
            move |control| async move {
                publish(kind, addr, api, channels, rate, http_conns, &control).await
            },
            Control::fail,
        )?
    };
    control.publisher_started().await?;
    sleep(Duration::from_secs_f64(args.warmup)).await;
    let start = Snapshot::take(args.server_pid)?;
    let others_before = others_ticks(&args.other_pids)?;
    let delivered_before = shared.deliveries_window.get();
    control.measure(args.duration).await;
    let end = Snapshot::take(args.server_pid)?;
    let others_after = others_ticks(&args.other_pids)?;
    let deliveries_window = shared.deliveries_window.get() - delivered_before;
    let rss_window = rss()?;

    // Drain: wait until the publisher stopped and every connected subscriber has everything.
    let drain_limit = Duration::from_secs_f64(args.drain);
    let (drained, drain_start) = control
        .drain(drain_limit, || {
            let subs = shared.subs.borrow();
            let published = published(&control);
            subs.iter()
                .filter(|s| s.subscribed && !s.ended)
                .all(|s| s.seen.distinct >= published[s.channel])
        })
        .await;
    let drain_s = drain_start.elapsed().as_secs_f64();
    let rss_end = rss()?;
    control.finish(&tasks, publisher).await;

    let cpu = CpuWindow::new(&start, &end);
    let (seconds, own, server) = (cpu.seconds, cpu.own, cpu.server);
    let others: Vec<u64> = others_before
        .iter()
        .zip(&others_after)
        .map(|(a, b)| b.saturating_sub(*a))
        .collect();
    let others_sum: u64 = others.iter().sum();
    let call_hist = control
        .counts
        .call_us
        .lock()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?
        .clone();
    let call_quantile = |q: f64| {
        (args.api_addr.is_some() && !call_hist.is_empty()).then(|| call_hist.value_at_quantile(q))
    };
    let published = published(&control);
    let subs = shared.subs.borrow();
    let (mut expected, mut distinct, mut duplicates, mut out_of_order, mut offset_gaps) =
        (0, 0, 0, 0, 0);
    let (mut gaps, mut undelivered) = (0, 0);
    for s in subs.iter().filter(|s| s.subscribed) {
        expected += published[s.channel];
        distinct += s.seen.distinct;
        gaps += s.seen.max_seq.saturating_sub(s.seen.distinct);
        undelivered += published[s.channel].saturating_sub(s.seen.max_seq);
        duplicates += s.seen.duplicates;
        out_of_order += s.seen.out_of_order;
        offset_gaps += s.offset_gaps;
    }
    let ended = subs.iter().filter(|s| s.ended).count();
    let subs_per_channel = args.subs as f64 / args.channels as f64;
    let published_window = control.counts.sent_window.load(Ordering::Acquire);
    let hist = shared.latency_us.borrow();
    let read_hist = shared.read_latency_us.borrow();
    Ok(LoadReport {
        kind: args.kind,
        subs: args.subs,
        subscribed,
        channels: args.channels,
        server_counted_subs,
        subscribe_s,
        rate: args.rate,
        seconds,
        published: control.counts.sent.load(Ordering::Acquire),
        published_window,
        publish_errors: control.counts.reply_errors.load(Ordering::Acquire),
        publish_acked: (args.kind != Kind::Socketio)
            .then(|| control.counts.acked.load(Ordering::Acquire)),
        publish_first_error: control.error(),
        publish_max_late_ms: control.counts.max_late_us.load(Ordering::Acquire) as f64 / 1000.0,
        deliveries_window,
        deliveries_per_s: deliveries_window as f64 / seconds,
        offered_per_s: published_window as f64 * subs_per_channel / seconds,
        deliveries: shared.deliveries.get(),
        expected,
        missing: expected.saturating_sub(distinct),
        gaps,
        undelivered,
        duplicates,
        out_of_order,
        offset_gaps,
        latency_samples: hist.len(),
        latency_p50_us: quantile(&hist, 0.50),
        latency_p99_us: quantile(&hist, 0.99),
        latency_p999_us: quantile(&hist, 0.999),
        latency_max_us: hist.max(),
        read_latency_p50_us: quantile(&read_hist, 0.50),
        read_latency_p99_us: quantile(&read_hist, 0.99),
        stamped_reads: shared.stamped.get(),
        server_cpu_pct: server.map(|t| cpu.pct(t)),
        server_core_busy_pct: cpu.pct(end.cores[0] - start.cores[0]),
        client_core_busy_pct: cpu.pct(end.cores[1] - start.cores[1]),
        server_system_pct: start
            .server_system
            .zip(end.server_system)
            .map(|(a, b)| cpu.pct(b - a)),
        client_cpu_pct: cpu.pct(own),
        other_cpu_pct: server
            .map(|s| cpu.pct((end.machine - start.machine).saturating_sub(own + s + others_sum))),
        server_others_cpu_pct: others.iter().map(|&t| cpu.pct(t)).collect(),
        publish_call_p50_us: call_quantile(0.5),
        publish_call_p99_us: call_quantile(0.99),
        rss_before_kib: rss_before,
        rss_subscribed_kib: rss_subscribed,
        rss_window_kib: rss_window,
        rss_end_kib: rss_end,
        kib_per_sub: rss_before
            .zip(rss_subscribed)
            .map(|(b, a)| (a as f64 - b as f64) / subscribed as f64),
        drain_s,
        drained,
        ended,
        end_reasons: shared.end_reasons.borrow().clone(),
        setup_failures: shared.setup.failed(),
        first_error: shared.setup.first_error(),
    })
}

/// Publications so far, per channel.
fn published(control: &Control) -> Vec<u64> {
    control
        .counts
        .published
        .iter()
        .map(|p| p.load(Ordering::Acquire))
        .collect()
}

/// CPU ticks so far of each of `pids`.
fn others_ticks(pids: &[u32]) -> Result<Vec<u64>> {
    pids.iter().map(|&pid| procfs::cpu_ticks(pid)).collect()
}

/// Appends a pipelined `POST /api/publish` of publication `seq` of `channel` to `out`.
fn push_api_publish(out: &mut Vec<u8>, key: &str, channel: &str, t_ns: u64, seq: u64) {
    let body = format!(
        "{{\"channel\":\"{channel}\",\"data\":{}}}",
        wire::payload(t_ns, seq)
    );
    out.extend_from_slice(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: bench\r\nAuthorization: apikey {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// One non-blocking `recvmsg` into `buf`: the bytes read and the kernel's receive timestamp of
/// the last of them (`SCM_TIMESTAMPNS`, ns since the Unix epoch), if it gave one.
fn recv_stamped(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> std::io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                stamp = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
            }
        }
    }
    Ok((msg.bytes, stamp))
}

/// The connection ended with a close frame.
#[derive(Debug)]
struct Closed(String);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Closed {}

/// A WebSocket client connection during set-up.
struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    frag: Fragments,
    sent: u64,
}

impl Ws {
    async fn open(
        kind: Kind,
        source: Option<Ipv4Addr>,
        addr: SocketAddr,
        path: &str,
        seed: u64,
    ) -> Result<Self> {
        let mut stream = ws::connect(source, addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // Kernel receive timestamps on every read (SO_TIMESTAMPNS): the latency is taken at the
        // data's arrival, not when this single-threaded loop gets to it.
        setsockopt(&stream, sockopt::ReceiveTimestampns, &true)
            .context("setting SO_TIMESTAMPNS")?;
        let buf = ws::handshake_with(&mut stream, addr, path, seed, kind.ws_headers()).await?;
        Ok(Self {
            stream,
            buf,
            frag: Fragments::default(),
            sent: 0,
        })
    }

    async fn send_text(&mut self, text: &str) -> Result<()> {
        self.sent += 1;
        let frame = masked_frame(OP_TEXT, text.as_bytes(), mask(self.sent));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// The next data message; answers pings, fails on close.
    async fn next_message(&mut self) -> Result<Vec<u8>> {
        loop {
            let mut message = None;
            let mut reply = Vec::new();
            // One frame at a time, so what follows stays in the buffer.
            let used = match parse_server_frame(&self.buf)? {
                Some((_, used)) => {
                    let data = self.buf[..used].to_vec();
                    frames(&data, &mut self.frag, |op, payload| {
                        match op {
                            OP_CLOSE => return Err(Closed(close_text(payload)).into()),
                            OP_PING => reply = pong(payload),
                            OP_PONG => {}
                            _ => message = Some(payload.to_vec()),
                        }
                        Ok(())
                    })?
                }
                None => 0,
            };
            if used > 0 {
                self.buf.drain(..used);
                if !reply.is_empty() {
                    self.stream.write_all(&reply).await?;
                }
                if let Some(m) = message {
                    return Ok(m);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            ensure!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The events of the next data message.
    async fn next_events(&mut self, kind: Kind) -> Result<Vec<Event>> {
        let message = self.next_message().await?;
        let mut out = vec![];
        wire::events(kind, &message, |e| out.push(e))?;
        Ok(out)
    }

    /// Socket.IO: waits for `Opened` (Engine.IO open, or the namespace connect answer).
    async fn socketio_opened(&mut self) -> Result<()> {
        loop {
            for event in self.next_events(Kind::Socketio).await? {
                match event {
                    Event::Opened => return Ok(()),
                    Event::EnginePing => self.send_text("3").await?,
                    Event::Disconnect { text, .. } => bail!("Socket.IO refused: {text}"),
                    _ => {}
                }
            }
        }
    }

    /// switchboard: waits for the reply to command `id`; returns its offset.
    async fn switchboard_reply(&mut self, id: u64) -> Result<Option<u64>> {
        loop {
            for event in self.next_events(Kind::Switchboard).await? {
                match event {
                    Event::Reply {
                        id: got,
                        ok,
                        offset,
                        text,
                    } if got == id => {
                        ensure!(ok, "command {id} failed: {text}");
                        return Ok(offset);
                    }
                    Event::Reply {
                        ok: false, text, ..
                    } => bail!("error reply: {text}"),
                    Event::Disconnect { text, .. } => bail!("disconnected: {text}"),
                    _ => {}
                }
            }
        }
    }
}

/// Opens a subscriber of channel `c` and subscribes it; returns the connection and the channel's
/// offset at subscription (switchboard).
async fn open_subscriber(
    kind: Kind,
    addr: SocketAddr,
    source: Ipv4Addr,
    id: usize,
    c: usize,
) -> Result<(Ws, Option<u64>)> {
    let mut ws = Ws::open(kind, Some(source), addr, &kind.ws_path(c), id as u64).await?;
    let channel = kind.channel(c);
    let offset = match kind {
        // The upgrade's 101 is sent once the subscriber is registered.
        Kind::Nchan => None,
        Kind::Switchboard => {
            for m in wire::subscribe_messages(kind, &channel) {
                ws.send_text(&m).await?;
            }
            ws.switchboard_reply(1).await?;
            ws.switchboard_reply(2).await?
        }
        Kind::Socketio => {
            ws.socketio_opened().await?;
            ws.send_text("40").await?;
            ws.socketio_opened().await?;
            for m in wire::subscribe_messages(kind, &channel) {
                ws.send_text(&m).await?;
            }
            'ack: loop {
                for event in ws.next_events(kind).await? {
                    match event {
                        Event::Reply { id: 0, .. } => break 'ack,
                        Event::EnginePing => ws.send_text("3").await?,
                        Event::Disconnect { text, .. } => bail!("disconnected: {text}"),
                        _ => {}
                    }
                }
            }
            None
        }
    };
    Ok((ws, offset))
}

/// The hot loop of subscriber `id`: read into the shared buffer, count and check every delivery,
/// answer pings. Returns (with the reason as error) when the connection ends.
async fn receive(id: usize, ws: Ws, shared: &Shared) -> Result<()> {
    let Ws {
        mut stream,
        buf: mut pending,
        mut frag,
        ..
    } = ws;
    let kind = shared.kind;
    let sampled = id.is_multiple_of(shared.sample_every);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        if !first {
            stream.readable().await?;
        }
        let mut closed = None;
        {
            let mut scratch = shared.scratch.borrow_mut();
            let (n, stamp) = if first {
                (0, None)
            } else {
                let fd = stream.as_raw_fd();
                let read = stream.try_io(Interest::READABLE, || {
                    recv_stamped(fd, &mut scratch, &mut shared.cmsg.borrow_mut())
                });
                match read {
                    Ok((0, _)) => bail!("server closed the connection (EOF)"),
                    Ok(read) => read,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e).context("read"),
                }
            };
            first = false;
            let now_ns = realtime_ns();
            // When the kernel queued the last bytes of this read on the socket: the arrival of
            // the data, whatever this loop's own backlog.
            let arrived_ns = stamp.unwrap_or(now_ns);
            if stamp.is_some() {
                shared.stamped.set(shared.stamped.get() + 1);
            }
            let phase = shared.phase();
            let mut subs = shared.subs.borrow_mut();
            let state = &mut subs[id];
            let mut hist = shared.latency_us.borrow_mut();
            let mut read_hist = shared.read_latency_us.borrow_mut();
            let mut delivered = 0u64;
            let mut on_frame = |op: u8, payload: &[u8]| -> Result<()> {
                match op {
                    OP_CLOSE => {
                        closed.get_or_insert_with(|| close_text(payload));
                        Ok(())
                    }
                    OP_PING => {
                        out.extend_from_slice(&pong(payload));
                        Ok(())
                    }
                    OP_PONG => Ok(()),
                    _ => wire::events(kind, payload, |event| match event {
                        Event::Delivery(d) => {
                            delivered += 1;
                            if phase == MEASURE && sampled {
                                let us = arrived_ns.saturating_sub(d.t_ns) / 1000;
                                hist.saturating_record(us.max(1));
                                let us = now_ns.saturating_sub(d.t_ns) / 1000;
                                read_hist.saturating_record(us.max(1));
                            }
                            if let Err(e) = state.record(d) {
                                closed.get_or_insert_with(|| format!("{e:#}"));
                            }
                        }
                        Event::EnginePing => {
                            out.extend_from_slice(&masked_frame(OP_TEXT, b"3", mask(now_ns)))
                        }
                        Event::Disconnect { text, .. } => {
                            closed.get_or_insert(text);
                        }
                        _ => {}
                    }),
                }
            };
            if pending.is_empty() {
                let used = frames(&scratch[..n], &mut frag, &mut on_frame)?;
                pending.extend_from_slice(&scratch[used..n]);
            } else {
                pending.extend_from_slice(&scratch[..n]);
                let used = frames(&pending, &mut frag, &mut on_frame)?;
                pending.drain(..used);
            }
            shared.deliveries.set(shared.deliveries.get() + delivered);
            if phase == MEASURE {
                shared
                    .deliveries_window
                    .set(shared.deliveries_window.get() + delivered);
            }
        }
        if pending.capacity() > 64 * 1024 && pending.len() < 1024 {
            pending.shrink_to(4096);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if let Some(reason) = closed {
            bail!(Closed(reason));
        }
    }
}

/// Nchan: the subscribers its channel-info answers count, over all channels.
async fn nchan_subscribers(addr: SocketAddr, channels: usize) -> Result<u64> {
    let mut stream = ws::connect(None, addr).await?;
    let mut total = 0;
    for chunk in (0..channels).collect::<Vec<_>>().chunks(100) {
        let mut request = Vec::new();
        for &c in chunk {
            wire::push_http_request(
                &mut request,
                "GET",
                &format!("/pub/{}", Kind::Nchan.channel(c)),
                "",
            );
        }
        stream.write_all(&request).await?;
        let mut buf = Vec::new();
        let mut answered = 0;
        while answered < chunk.len() {
            let mut tmp = [0u8; 16 * 1024];
            let n = timeout(Duration::from_secs(10), stream.read(&mut tmp))
                .await
                .context("Nchan channel info timed out")??;
            ensure!(n > 0, "Nchan closed the channel-info connection");
            buf.extend_from_slice(&tmp[..n]);
            while let Some((response, used)) = wire::parse_http_response(&buf)? {
                ensure!(
                    response.status == 200,
                    "channel info: status {}",
                    response.status
                );
                total += wire::num_after(response.body, b"\"subscribers\": ")
                    .or_else(|| wire::num_after(response.body, b"\"subscribers\":"))
                    .with_context(|| {
                        format!(
                            "no subscriber count in {}",
                            String::from_utf8_lossy(response.body)
                        )
                    })?;
                answered += 1;
                buf.drain(..used);
            }
        }
    }
    Ok(total)
}

/// The publisher: connects, then publishes `rate` publications per second round-robin over the
/// channels until the phase is `STOP`; keeps its connections open (and answers pings) until
/// `EXIT`, so nothing it sent is dropped with the connection.
async fn publish(
    kind: Kind,
    addr: SocketAddr,
    api: Option<(SocketAddr, String)>,
    channels: usize,
    rate: f64,
    http_conns: usize,
    control: &Arc<Control>,
) -> Result<()> {
    let pongs: Rc<RefCell<Vec<u8>>> = Rc::default();
    let mut writers: Vec<OwnedWriteHalf> = Vec::new();
    // HTTP publishers (Nchan, switchboard's API) answer in order on each connection: the send
    // times queued here pair up with the responses.
    let http = kind == Kind::Nchan || api.is_some();
    let mut in_flight: Vec<Rc<RefCell<VecDeque<Instant>>>> = Vec::new();
    let conns = if http {
        http_conns.clamp(1, channels)
    } else {
        1
    };
    for _ in 0..conns {
        let (reader, writer) = match kind {
            _ if api.is_some() => {
                let (api_addr, _) = api.as_ref().context("no API address")?;
                ws::connect(None, *api_addr).await?.into_split()
            }
            Kind::Nchan => ws::connect(None, addr).await?.into_split(),
            Kind::Switchboard => {
                let mut ws = Ws::open(kind, None, addr, &kind.ws_path(0), u64::MAX).await?;
                ws.send_text("{\"id\":1,\"connect\":{}}").await?;
                ws.switchboard_reply(1).await?;
                ensure!(ws.buf.is_empty(), "unexpected data after the connect reply");
                ws.stream.into_split()
            }
            Kind::Socketio => {
                let mut ws = Ws::open(kind, None, addr, &kind.ws_path(0), u64::MAX).await?;
                ws.socketio_opened().await?;
                ws.send_text("40").await?;
                ws.socketio_opened().await?;
                ensure!(
                    ws.buf.is_empty(),
                    "unexpected data after the namespace connect"
                );
                ws.stream.into_split()
            }
        };
        let (control, pongs) = (Arc::clone(control), Rc::clone(&pongs));
        let sent_at: Rc<RefCell<VecDeque<Instant>>> = Rc::default();
        in_flight.push(Rc::clone(&sent_at));
        tokio::task::spawn_local(async move {
            if let Err(e) = publisher_replies(kind, http, reader, &control, &pongs, &sent_at).await
                && control.phase.load(Ordering::Relaxed) < EXIT
            {
                control.fail(format!("publisher connection: {e:#}"));
            }
        });
        writers.push(writer);
    }

    let names: Vec<String> = (0..channels).map(|c| kind.channel(c)).collect();
    let mut seq = vec![0u64; channels];
    let mut bufs = vec![Vec::<u8>::new(); conns];
    let start = Instant::now();
    let mut sent = 0u64;
    let tick = Duration::from_millis(1);
    let mut next = tokio::time::Instant::now();
    control.mark_started();
    loop {
        let phase = control.phase.load(Ordering::Acquire);
        if phase >= STOP {
            break;
        }
        if let Some(e) = control.error() {
            bail!("{e}");
        }
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        let mut batch = 0;
        while sent < due && batch < MAX_BATCH {
            let c = (sent % channels as u64) as usize;
            seq[c] += 1;
            let scheduled = Duration::from_secs_f64(sent as f64 / rate);
            let late = start.elapsed().saturating_sub(scheduled).as_micros() as u64;
            control
                .counts
                .max_late_us
                .fetch_max(late, Ordering::Relaxed);
            let t_ns = realtime_ns();
            let out = &mut bufs[c % conns];
            if http {
                in_flight[c % conns].borrow_mut().push_back(Instant::now());
            }
            match kind {
                _ if api.is_some() => {
                    let key = api.as_ref().map_or("", |(_, k)| k.as_str());
                    push_api_publish(out, key, &names[c], t_ns, seq[c]);
                }
                Kind::Nchan => wire::push_http_request(
                    out,
                    "POST",
                    &format!("/pub/{}", names[c]),
                    &wire::payload(t_ns, seq[c]),
                ),
                _ => wire::push_ws_publish(out, kind, sent + 2, &names[c], t_ns, seq[c]),
            }
            control.counts.published[c].fetch_add(1, Ordering::AcqRel);
            control.counts.sent.fetch_add(1, Ordering::Relaxed);
            if phase == MEASURE {
                control.counts.sent_window.fetch_add(1, Ordering::Relaxed);
            }
            sent += 1;
            batch += 1;
        }
        bufs[0].append(&mut pongs.borrow_mut());
        for (writer, out) in writers.iter_mut().zip(&mut bufs) {
            if !out.is_empty() {
                writer.write_all(out).await?;
                out.clear();
            }
        }
        next += tick;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
    control.mark_stopped();
    while control.phase.load(Ordering::Acquire) < EXIT {
        let pending = std::mem::take(&mut *pongs.borrow_mut());
        if !pending.is_empty() {
            writers[0].write_all(&pending).await?;
        }
        sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads what the server answers the publisher: switchboard replies, Socket.IO pings, Nchan HTTP
/// responses. Counts errors; queues pongs for the writer.
async fn publisher_replies(
    kind: Kind,
    http: bool,
    mut reader: OwnedReadHalf,
    control: &Control,
    pongs: &RefCell<Vec<u8>>,
    sent_at: &RefCell<VecDeque<Instant>>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut frag = Fragments::default();
    loop {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = reader.read(&mut chunk).await?;
        ensure!(n > 0, "server closed the publisher's connection");
        buf.extend_from_slice(&chunk[..n]);
        if http {
            let mut at = 0;
            while let Some((response, used)) = wire::parse_http_response(&buf[at..])? {
                if let Some(sent) = sent_at.borrow_mut().pop_front()
                    && let Ok(mut h) = control.counts.call_us.lock()
                {
                    h.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                }
                if matches!(response.status, 200..=202) {
                    control.counts.acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    control.counts.reply_errors.fetch_add(1, Ordering::Relaxed);
                    control.fail(format!(
                        "publish answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(response.body)
                    ));
                }
                at += used;
            }
            buf.drain(..at);
            continue;
        }
        let used = frames(&buf, &mut frag, |op, payload| {
            match op {
                OP_CLOSE => bail!(Closed(close_text(payload))),
                OP_PING => pongs.borrow_mut().extend_from_slice(&pong(payload)),
                OP_PONG => {}
                _ => wire::events(kind, payload, |event| match event {
                    Event::Reply { ok: true, .. } => {
                        control.counts.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Reply {
                        ok: false, text, ..
                    } => {
                        control.counts.reply_errors.fetch_add(1, Ordering::Relaxed);
                        control.fail(format!("publish error: {text}"));
                    }
                    Event::EnginePing => {
                        pongs
                            .borrow_mut()
                            .extend_from_slice(&masked_frame(OP_TEXT, b"3", mask(0)))
                    }
                    Event::Disconnect { text, .. } => {
                        control.fail(format!("publisher disconnected: {text}"));
                    }
                    _ => {}
                })?,
            }
            Ok(())
        })?;
        buf.drain(..used);
    }
}

fn print_text(r: &LoadReport) {
    println!(
        "{}: {}/{} subscribed to {} channel(s) in {:.1} s{}",
        r.kind.name(),
        r.subscribed,
        r.subs,
        r.channels,
        r.subscribe_s,
        r.server_counted_subs
            .map_or(String::new(), |n| format!(" (server counts {n})"))
    );
    println!(
        "published {} ({} in the {:.2} s window, max {:.1} ms late), {} errors{}",
        r.published,
        r.published_window,
        r.seconds,
        r.publish_max_late_ms,
        r.publish_errors,
        r.publish_first_error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"))
    );
    println!(
        "deliveries/s {:.0} of {:.0} offered; latency µs p50 {} p99 {} p99.9 {} max {} ({} samples)",
        r.deliveries_per_s,
        r.offered_per_s,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_p999_us,
        r.latency_max_us,
        r.latency_samples
    );
    println!(
        "delivered {} of {} due: missing {} ({} in gaps, {} after the last received), duplicates {}, \
         out of order {}, offset gaps {}; drain {:.1} s ({})",
        r.deliveries,
        r.expected,
        r.missing,
        r.gaps,
        r.undelivered,
        r.duplicates,
        r.out_of_order,
        r.offset_gaps,
        r.drain_s,
        if r.drained { "complete" } else { "incomplete" }
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} %"));
    println!(
        "CPU 0 busy {:.0} %, CPU 1 busy {:.0} % (softirq included)",
        r.server_core_busy_pct, r.client_core_busy_pct
    );
    println!(
        "CPU: server {} (system {}), client {:.0} %, other {}",
        pct(r.server_cpu_pct),
        pct(r.server_system_pct),
        r.client_cpu_pct,
        pct(r.other_cpu_pct)
    );
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "server RSS KiB: before {}, subscribed {}, window end {}, end {}; {} KiB per subscriber",
        kib(r.rss_before_kib),
        kib(r.rss_subscribed_kib),
        kib(r.rss_window_kib),
        kib(r.rss_end_kib),
        r.kib_per_sub.map_or("-".into(), |v| format!("{v:.1}"))
    );
    load::print_ended(
        r.ended,
        &r.end_reasons,
        r.setup_failures,
        r.first_error.as_deref(),
    );
}
