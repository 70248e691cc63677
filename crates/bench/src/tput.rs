//! `switchboard-bench tput`: pipelined echo throughput. C connections each keep K messages of S
//! bytes in flight; after a warm-up, it counts the echoes of a fixed window and records every
//! round-trip time in an HDR histogram. Every echo is checked byte for byte.
//!
//! It runs on one thread (a current-thread runtime), so it can be pinned to one core and the
//! other core left to the server. It also reads the server's and its own CPU time from `/proc`,
//! and how busy the rest of the machine was (noise from other processes).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::{Buf as _, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::echo::{Messages, Wire};
use crate::procfs;
use crate::ws;

/// How long all connections may take to open before the run is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `switchboard-bench tput`.
#[derive(Args, Debug, Clone)]
pub struct TputArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: SocketAddr,
    /// Request path of the echo endpoint.
    #[arg(long, default_value = "/echo")]
    pub path: String,
    /// Plain TCP (for the rawtcp peer): no handshake, the frame bytes come back unchanged.
    #[arg(long)]
    pub raw: bool,
    /// Connections.
    #[arg(short, long, default_value_t = 100)]
    pub conns: usize,
    /// Payload size of each text message, in bytes.
    #[arg(short, long, default_value_t = 64)]
    pub size: usize,
    /// Messages in flight per connection.
    #[arg(short = 'k', long, default_value_t = 32)]
    pub in_flight: usize,
    /// Warm-up before measuring, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measured window, in seconds.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Server process id, to report its CPU time per message.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one `tput` run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TputReport {
    /// Connections.
    pub conns: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub in_flight: usize,
    /// Length of the measured window, in seconds.
    pub seconds: f64,
    /// Echoes received in the window.
    pub messages: u64,
    /// Echoes per second.
    pub msgs_per_s: f64,
    /// Median round-trip time, µs.
    pub rtt_p50_us: u64,
    /// 99th percentile round-trip time, µs.
    pub rtt_p99_us: u64,
    /// 99.9th percentile round-trip time, µs.
    pub rtt_p999_us: u64,
    /// Largest round-trip time, µs.
    pub rtt_max_us: u64,
    /// Server CPU seconds (user + system) in the window.
    pub server_cpu_s: Option<f64>,
    /// Server CPU µs per echoed message.
    pub server_us_per_msg: Option<f64>,
    /// This client's CPU use in the window, % of one core.
    pub client_cpu_pct: f64,
    /// User + system CPU of every other process in the window, % of one core (noise).
    pub other_cpu_pct: Option<f64>,
    /// Connections that failed (any failure is also a wrong or missing echo).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Which part of the run the connections are in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Stop,
}

/// State shared by the connection tasks (all on one thread).
struct Shared {
    messages: Messages,
    phase: Cell<Phase>,
    connected: Cell<usize>,
    echoed: Cell<u64>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    rtt_us: RefCell<Histogram<u64>>,
}

/// CPU counters at one instant.
pub(crate) struct Snapshot {
    /// When.
    pub at: Instant,
    /// This process's CPU ticks.
    pub own: u64,
    /// The server's CPU ticks.
    pub server: Option<u64>,
    /// Of those, the ticks in the kernel (system time).
    pub server_system: Option<u64>,
    /// User + system ticks of the whole machine.
    pub machine: u64,
    /// Busy ticks (softirq included) of CPU 0 and CPU 1, the server's and the client's cores.
    pub cores: [u64; 2],
}

impl Snapshot {
    /// Reads the counters now.
    pub fn take(server_pid: Option<u32>) -> Result<Self> {
        let split = server_pid.map(procfs::cpu_ticks_split).transpose()?;
        Ok(Self {
            at: Instant::now(),
            own: procfs::cpu_ticks(std::process::id())?,
            server: split.map(|(user, system)| user + system),
            server_system: split.map(|(_, system)| system),
            machine: procfs::machine_process_ticks()?,
            cores: [procfs::cpu_busy_ticks(0)?, procfs::cpu_busy_ticks(1)?],
        })
    }
}

/// Runs the test and prints the report; fails if any echo was wrong or missing.
pub fn main(args: &TputArgs) -> Result<()> {
    let report = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    if let Some(e) = &report.first_error {
        bail!("{} connection(s) failed; first: {e}", report.errors);
    }
    Ok(())
}

/// Runs the test on a current-thread runtime.
pub fn run(args: &TputArgs) -> Result<TputReport> {
    ensure!(
        args.conns > 0 && args.in_flight > 0,
        "--conns and --in-flight must be at least 1"
    );
    ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, measure(args))
}

async fn measure(args: &TputArgs) -> Result<TputReport> {
    let wire = if args.raw { Wire::Raw } else { Wire::WebSocket };
    let shared = Rc::new(Shared {
        messages: Messages::new(wire, args.size, args.in_flight),
        phase: Cell::new(Phase::Warmup),
        connected: Cell::new(0),
        echoed: Cell::new(0),
        errors: Cell::new(0),
        first_error: RefCell::new(None),
        rtt_us: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });

    let tasks: Vec<_> = (0..args.conns)
        .map(|id| {
            let (shared, path) = (Rc::clone(&shared), args.path.clone());
            let addr = args.addr;
            tokio::task::spawn_local(async move {
                let result = connection(id, addr, &path, wire, &shared).await;
                // Errors after the stop are the run ending, not failures.
                if let (Err(e), false) = (result, shared.phase.get() == Phase::Stop) {
                    shared.errors.set(shared.errors.get() + 1);
                    shared
                        .first_error
                        .borrow_mut()
                        .get_or_insert_with(|| format!("{e:#}"));
                }
            })
        })
        .collect();

    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while shared.connected.get() < args.conns {
        if let Some(e) = shared.first_error.borrow().as_ref() {
            bail!("opening connections to {} failed: {e}", args.addr);
        }
        ensure!(
            Instant::now() < deadline,
            "connections not open after {CONNECT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let start = Snapshot::take(args.server_pid)?;
    shared.phase.set(Phase::Measure);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    shared.phase.set(Phase::Stop);
    let end = Snapshot::take(args.server_pid)?;
    for task in &tasks {
        task.abort();
    }

    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let messages = shared.echoed.get();
    let hist = shared.rtt_us.borrow();
    let ticks_to_pct = |ticks: u64| ticks as f64 / procfs::TICKS_PER_SEC / seconds * 100.0;
    let own = end.own - start.own;
    let server = start.server.zip(end.server).map(|(a, b)| b - a);
    let server_cpu_s = server.map(|t| t as f64 / procfs::TICKS_PER_SEC);
    Ok(TputReport {
        conns: args.conns,
        size: args.size,
        in_flight: args.in_flight,
        seconds,
        messages,
        msgs_per_s: messages as f64 / seconds,
        rtt_p50_us: hist.value_at_quantile(0.50),
        rtt_p99_us: hist.value_at_quantile(0.99),
        rtt_p999_us: hist.value_at_quantile(0.999),
        rtt_max_us: hist.max(),
        server_cpu_s,
        server_us_per_msg: server_cpu_s
            .filter(|_| messages > 0)
            .map(|s| s * 1e6 / messages as f64),
        client_cpu_pct: ticks_to_pct(own),
        other_cpu_pct: server
            .map(|s| ticks_to_pct((end.machine - start.machine).saturating_sub(own + s))),
        errors: shared.errors.get(),
        first_error: shared.first_error.borrow().clone(),
    })
}

/// One connection: open it, send K frames, then send one new frame for every echo checked.
async fn connection(
    id: usize,
    addr: SocketAddr,
    path: &str,
    wire: Wire,
    shared: &Shared,
) -> Result<()> {
    let mut stream = ws::connect(None, addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    if wire == Wire::WebSocket {
        buf.extend_from_slice(&ws::handshake(&mut stream, addr, path, id as u64).await?);
    }
    shared.connected.set(shared.connected.get() + 1);

    let messages = &shared.messages;
    let slots = messages.slots();
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(slots);
    let (mut next_send, mut next_echo) = (0, 0);
    sent_at.extend(std::iter::repeat_n(Instant::now(), slots));
    stream.write_all(messages.frames(0, slots)).await?;

    loop {
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        ensure!(n > 0, "server closed the connection");
        let now = Instant::now();
        let phase = shared.phase.get();
        let mut echoed = 0;
        while let Some(used) = messages.take_echo(&buf, next_echo)? {
            buf.advance(used);
            next_echo = (next_echo + 1) % slots;
            echoed += 1;
            let sent = sent_at
                .pop_front()
                .context("more echoes than messages sent")?;
            if phase == Phase::Measure {
                let rtt = now.duration_since(sent).as_micros() as u64;
                shared.rtt_us.borrow_mut().saturating_record(rtt.max(1));
            }
        }
        match phase {
            Phase::Stop => return Ok(()),
            Phase::Measure => shared.echoed.set(shared.echoed.get() + echoed),
            Phase::Warmup => {}
        }
        if echoed > 0 {
            let count = echoed as usize;
            sent_at.extend(std::iter::repeat_n(Instant::now(), count));
            stream.write_all(messages.frames(next_send, count)).await?;
            next_send = (next_send + count) % slots;
        }
    }
}

fn print_text(r: &TputReport) {
    println!(
        "{} conns × {} in flight, {} B: {:.0} msgs/s ({} echoes in {:.2} s)",
        r.conns, r.in_flight, r.size, r.msgs_per_s, r.messages, r.seconds
    );
    println!(
        "RTT µs: p50 {}  p99 {}  p99.9 {}  max {}",
        r.rtt_p50_us, r.rtt_p99_us, r.rtt_p999_us, r.rtt_max_us
    );
    if let (Some(cpu), Some(per)) = (r.server_cpu_s, r.server_us_per_msg) {
        println!("server CPU: {cpu:.2} s = {per:.2} µs/msg");
    }
    print!("client CPU: {:.0} %", r.client_cpu_pct);
    match r.other_cpu_pct {
        Some(other) => println!("   other processes: {other:.0} % of a core"),
        None => println!(),
    }
}
