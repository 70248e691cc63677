//! `switchboard-bench idle`: memory per idle connection. Opens N connections spread over the
//! source addresses 127.0.0.2, 127.0.0.3, … (a few handshakes in flight at a time), sends one
//! echo on each, then holds them open for a while. With the server's pid it reports the server's
//! RSS before, after the handshakes and after the echo, and the KiB per connection.
//!
//! With `--subscribe PREFIX` each connection speaks switchboard's JSON protocol instead
//! (`switchboard.json` on `--path /connection/websocket`): it connects and subscribes to channel
//! `PREFIX<i mod --channels>` where an echo connection echoes once. With `--churn N` it then closes
//! and reopens N connections, the oldest first (`--concurrency` at a time), and reports the server's
//! RSS after them: a leak or pages the allocator keeps show as RSS that does not come back.
//!
//! One process can only hold as many connections as its open-file limit allows, so the
//! orchestrator runs several of these side by side to go further; the report line is printed
//! (and flushed) *before* the hold, so the orchestrator can measure while they are all open.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use futures_util::{StreamExt as _, stream};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::echo::{Messages, Wire};
use crate::procfs;
use crate::ws;

/// File descriptors the process keeps for itself besides the connections.
const FD_RESERVE: u64 = 64;

/// Arguments of `switchboard-bench idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub addr: SocketAddr,
    /// Request path of the echo endpoint.
    #[arg(long, default_value = "/echo")]
    pub path: String,
    /// Plain TCP (for the rawtcp peer): no handshake, the frame bytes come back unchanged.
    #[arg(long)]
    pub raw: bool,
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub conns: usize,
    /// Last byte of the first source address (127.0.0.X).
    #[arg(long, default_value_t = 2)]
    pub source_start: u8,
    /// Connections per source address.
    #[arg(long, default_value_t = 1_000)]
    pub per_source: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Payload size of the one echo per connection, in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to wait after the echoes before reading the server's RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
    /// Seconds to hold the connections open after the report.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Timeout of each handshake and each echo, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Give up if opening and echoing has not finished after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub deadline: f64,
    /// Stop opening connections after this many failures (the server is full).
    #[arg(long, default_value_t = 64)]
    pub max_failures: usize,
    /// Subscribe instead of echo: speak switchboard's JSON protocol (use with
    /// `--path /connection/websocket`), connect, and subscribe to channel `PREFIX<i mod --channels>`.
    #[arg(long, value_name = "PREFIX")]
    pub subscribe: Option<String>,
    /// Channels the `--subscribe` connections spread over.
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// After the measurement, close and reopen this many connections (oldest first, each set up
    /// again), then `--settle` and measure again.
    #[arg(long, default_value_t = 0)]
    pub churn: usize,
    /// Server process id, to report its memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one `idle` run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections whose handshake succeeded.
    pub connected: usize,
    /// Connections that failed to open (timeouts included).
    pub failed: usize,
    /// Connections whose echo came back right.
    pub echoed: usize,
    /// Source addresses used, e.g. `127.0.0.2-127.0.0.11`.
    pub sources: String,
    /// Time to open all connections, in seconds.
    pub handshake_s: f64,
    /// Handshakes per second.
    pub handshakes_per_s: f64,
    /// Server RSS before the first connection, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS after the handshakes, KiB.
    pub rss_handshake_kib: Option<u64>,
    /// Server RSS after one echo per connection (and `--settle`), KiB.
    pub rss_echo_kib: Option<u64>,
    /// (RSS after handshakes − before) / connections, KiB.
    pub kib_per_conn_handshake: Option<f64>,
    /// (RSS after the echo − before) / connections, KiB.
    pub kib_per_conn_echo: Option<f64>,
    /// Connections closed and reopened by `--churn`.
    pub churned: usize,
    /// Time the churn took, in seconds.
    pub churn_s: f64,
    /// Server RSS after the churn (and `--settle`), KiB.
    pub rss_churn_kib: Option<u64>,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Runs the test, prints the report, then holds the connections for `--hold` seconds; fails
/// afterwards if any connection could not be opened or echoed.
pub fn main(args: &IdleArgs) -> Result<()> {
    ensure!(
        args.conns > 0 && args.per_source > 0 && args.concurrency > 0 && args.channels > 0,
        "counts must be at least 1"
    );
    let sources = args.conns.div_ceil(args.per_source);
    let last = usize::from(args.source_start) + sources - 1;
    ensure!(
        args.source_start >= 2 && last <= 254,
        "sources 127.0.0.{}..127.0.0.{last} are out of range (2..254): raise --per-source",
        args.source_start
    );
    let limit = procfs::nofile_limit("self")?;
    ensure!(
        args.conns as u64 + FD_RESERVE <= limit,
        "{} connections need more than this process's open-file limit of {limit}: raise `ulimit -n` \
         or split them over several processes (at most {} each)",
        args.conns,
        limit.saturating_sub(FD_RESERVE)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sources = format!("127.0.0.{}-127.0.0.{last}", args.source_start);
    runtime.block_on(async {
        let deadline = Duration::from_secs_f64(args.deadline);
        let (report, connections) = timeout(deadline, open_and_echo(args, sources))
            .await
            .with_context(|| format!("not done after the {deadline:?} deadline"))??;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_text(&report);
            println!(
                "holding {} connections for {} s",
                connections.len(),
                args.hold
            );
        }
        std::io::stdout().flush()?;
        tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
        drop(connections);
        ensure!(
            report.connected == report.requested
                && report.echoed == report.connected
                && report.churned == args.churn,
            "{} of {} connections opened, {} echoed, {} of {} reopened",
            report.connected,
            report.requested,
            report.echoed,
            report.churned,
            args.churn
        );
        Ok(())
    })
}

/// Opens the connections, echoes once on each, and measures.
async fn open_and_echo(
    args: &IdleArgs,
    sources: String,
) -> Result<(IdleReport, Vec<(TcpStream, Vec<u8>)>)> {
    let wire = if args.raw { Wire::Raw } else { Wire::WebSocket };
    let limit = Duration::from_secs_f64(args.timeout);
    let rss = || args.server_pid.map(procfs::rss_kib).transpose();
    let failures = Cell::new(0usize);
    let first_error: RefCell<Option<String>> = RefCell::new(None);
    let fail = |e: anyhow::Error| {
        failures.set(failures.get() + 1);
        first_error
            .borrow_mut()
            .get_or_insert_with(|| format!("{e:#}"));
    };

    let messages = &Messages::new(wire, args.size, 1);
    let mode = &match &args.subscribe {
        Some(prefix) => Mode::Subscribe {
            prefix: prefix.clone(),
            channels: args.channels,
        },
        None => Mode::Echo(messages),
    };
    let rss_before = rss()?;
    let started = Instant::now();
    let mut connections: Vec<_> = stream::iter(0..args.conns)
        .map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, args.source_start + (i / args.per_source) as u8);
            let fail = &fail;
            let failures = &failures;
            async move {
                if failures.get() >= args.max_failures {
                    return None;
                }
                match timeout(limit, open(source, args.addr, &args.path, mode, i)).await {
                    Ok(Ok(conn)) => Some(conn),
                    Ok(Err(e)) => {
                        fail(e.context(format!("connection from {source}")));
                        None
                    }
                    Err(_) => {
                        fail(anyhow::anyhow!(
                            "handshake from {source} timed out after {limit:?}"
                        ));
                        None
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .filter_map(|c| async move { c })
        .collect()
        .await;
    let handshake_s = started.elapsed().as_secs_f64();
    let rss_handshake = rss()?;

    let echoed = stream::iter(connections.iter_mut().enumerate())
        .map(|(i, (stream, buf))| async move { timeout(limit, mode.set_up(stream, buf, i)).await })
        .buffer_unordered(args.concurrency * 4)
        .fold(0usize, |ok, result| {
            let ok = match result {
                Ok(Ok(())) => ok + 1,
                Ok(Err(e)) => {
                    first_error
                        .borrow_mut()
                        .get_or_insert_with(|| format!("echo: {e:#}"));
                    ok
                }
                Err(_) => {
                    first_error
                        .borrow_mut()
                        .get_or_insert_with(|| format!("echo timed out after {limit:?}"));
                    ok
                }
            };
            async move { ok }
        })
        .await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_echo = rss()?;

    let connected = connections.len();
    let churn_started = Instant::now();
    let mut churned = 0;
    if connected > 0 {
        let mut next = args.conns;
        while churned < args.churn {
            let batch = (args.churn - churned).min(args.concurrency).min(connected);
            // The oldest close (the server sees them go), then as many open again.
            drop(connections.drain(..batch));
            let reopened: Vec<_> = stream::iter(next..next + batch)
                .map(|i| {
                    let at = i % args.conns;
                    let source =
                        Ipv4Addr::new(127, 0, 0, args.source_start + (at / args.per_source) as u8);
                    async move {
                        let conn = timeout(limit, async {
                            let (mut stream, mut buf) =
                                open(source, args.addr, &args.path, mode, i).await?;
                            mode.set_up(&mut stream, &mut buf, i).await?;
                            anyhow::Ok((stream, buf))
                        })
                        .await;
                        match conn {
                            Ok(Ok(conn)) => Ok(conn),
                            Ok(Err(e)) => Err(e.context(format!("reconnection from {source}"))),
                            Err(_) => Err(anyhow::anyhow!(
                                "reconnection from {source} timed out after {limit:?}"
                            )),
                        }
                    }
                })
                .buffer_unordered(args.concurrency)
                .collect()
                .await;
            next += batch;
            for conn in reopened {
                match conn {
                    Ok(conn) => {
                        connections.push(conn);
                        churned += 1;
                    }
                    Err(e) => fail(e),
                }
            }
            if failures.get() >= args.max_failures {
                break;
            }
        }
    }
    let churn_s = churn_started.elapsed().as_secs_f64();
    let rss_churn = if args.churn > 0 {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        rss()?
    } else {
        None
    };

    let per_conn = |after: Option<u64>| {
        rss_before
            .zip(after)
            .filter(|_| connected > 0)
            .map(|(b, a)| (a as f64 - b as f64) / connected as f64)
    };
    let report = IdleReport {
        requested: args.conns,
        connected,
        failed: args.conns - connected,
        echoed,
        sources,
        handshake_s,
        handshakes_per_s: connected as f64 / handshake_s.max(1e-9),
        rss_before_kib: rss_before,
        rss_handshake_kib: rss_handshake,
        rss_echo_kib: rss_echo,
        kib_per_conn_handshake: per_conn(rss_handshake),
        kib_per_conn_echo: per_conn(rss_echo),
        churned,
        churn_s,
        rss_churn_kib: rss_churn,
        first_error: first_error.into_inner(),
    };
    Ok((report, connections))
}

/// Opens one connection from `source` and upgrades it. Returns the stream and any bytes that
/// arrived after the handshake. A raw connection counts as open after one echo instead: on
/// loopback the kernel completes `connect` without the server running, so without a round trip
/// the in-flight cap would not hold back the client and the server's accept queue would overflow.
async fn open(
    source: Ipv4Addr,
    addr: SocketAddr,
    path: &str,
    mode: &Mode<'_>,
    id: usize,
) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = ws::connect(Some(source), addr).await.context("connect")?;
    let mut rest = Vec::new();
    match mode {
        Mode::Subscribe { .. } => {
            rest = ws::handshake_with(
                &mut stream,
                addr,
                path,
                id as u64,
                "Sec-WebSocket-Protocol: switchboard.json\r\n",
            )
            .await?;
        }
        Mode::Echo(messages) => match messages.wire() {
            Wire::WebSocket => rest = ws::handshake(&mut stream, addr, path, id as u64).await?,
            Wire::Raw => echo_once(&mut stream, &mut rest, messages).await?,
        },
    }
    Ok((stream, rest))
}

/// What each connection does once open: echo one message, or connect and subscribe.
enum Mode<'a> {
    Echo(&'a Messages),
    Subscribe { prefix: String, channels: usize },
}

impl Mode<'_> {
    /// Sets connection `i` up: one echo, or `connect` and `subscribe` with their replies checked.
    async fn set_up(&self, stream: &mut TcpStream, buf: &mut Vec<u8>, i: usize) -> Result<()> {
        match self {
            Mode::Echo(messages) => echo_once(stream, buf, messages).await,
            Mode::Subscribe { prefix, channels } => {
                let channel = format!("{prefix}{}", i % channels);
                subscribe_once(stream, buf, &channel, i as u64).await
            }
        }
    }
}

/// Sends `connect` (id 1) and `subscribe` (id 2) to `channel` and waits for both replies.
async fn subscribe_once(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    channel: &str,
    seed: u64,
) -> Result<()> {
    let mut out = ws::masked_frame(ws::OP_TEXT, br#"{"id":1,"connect":{}}"#, ws::mask(seed));
    let subscribe = format!(r#"{{"id":2,"subscribe":{{"channel":"{channel}"}}}}"#);
    out.extend_from_slice(&ws::masked_frame(
        ws::OP_TEXT,
        subscribe.as_bytes(),
        ws::mask(seed + 1),
    ));
    stream.write_all(&out).await?;
    let mut replied = 0;
    loop {
        while let Some((frame, used)) = ws::parse_server_frame(buf)? {
            if frame.opcode == ws::OP_TEXT {
                for line in frame.payload.split(|&b| b == b'\n') {
                    if line.starts_with(br#"{"id":"#) {
                        ensure!(
                            ws::find(line, br#""error":"#).is_none(),
                            "refused: {}",
                            String::from_utf8_lossy(line)
                        );
                        replied += 1;
                    }
                }
            } else if frame.opcode == ws::OP_CLOSE {
                bail!("server closed: {}", ws::close_text(frame.payload));
            }
            buf.drain(..used);
        }
        if replied >= 2 {
            buf.shrink_to_fit();
            return Ok(());
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends one message and checks its echo.
async fn echo_once(stream: &mut TcpStream, buf: &mut Vec<u8>, messages: &Messages) -> Result<()> {
    stream.write_all(messages.frames(0, 1)).await?;
    loop {
        if let Some(used) = messages.take_echo(buf, 0)? {
            buf.drain(..used);
            buf.shrink_to_fit();
            return Ok(());
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn print_text(r: &IdleReport) {
    println!(
        "{} of {} connections open from {} in {:.2} s ({:.0} handshakes/s), {} echoed",
        r.connected, r.requested, r.sources, r.handshake_s, r.handshakes_per_s, r.echoed
    );
    if let (Some(before), Some(hs), Some(echo)) =
        (r.rss_before_kib, r.rss_handshake_kib, r.rss_echo_kib)
    {
        println!("server RSS KiB: before {before}, after handshakes {hs}, after echo {echo}");
    }
    if let (Some(hs), Some(echo)) = (r.kib_per_conn_handshake, r.kib_per_conn_echo) {
        println!("KiB per connection: {hs:.1} after handshake, {echo:.1} after one echo");
    }
    if let Some(churn) = r.rss_churn_kib {
        println!(
            "after closing and reopening {} connections in {:.2} s: server RSS {churn} KiB",
            r.churned, r.churn_s
        );
    }
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}
