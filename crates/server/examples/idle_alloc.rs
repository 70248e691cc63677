//! Where an idle client's heap goes: live bytes per connected and subscribed WebSocket client,
//! counted by a global allocator, itemised by allocation size and, for one probe client, by the
//! call site of every allocation it still holds.
//!
//! ```sh
//! cargo run --release -p switchboard --example idle_alloc -- 2000          # JSON clients
//! cargo run --release -p switchboard --example idle_alloc -- 2000 echo     # echo connections
//! cargo run --release -p switchboard --example idle_alloc -- 2000 sio      # Socket.IO clients
//! SITES=1 cargo run --release -p switchboard --example idle_alloc -- 2000  # and the probe's sites
//! ```
//!
//! The server runs in-process on its own runtime (2 workers, as on the benchmark machine); the
//! clients run on the main thread, whose allocations are not counted. N clients connect (handshake,
//! `connect`, `subscribe` to `bench:<i mod 100>`, as `switchboard-bench idle --subscribe`; a
//! Socket.IO client joins `/` and emits `subscribe`, as `switchboard-bench fanout`), then N
//! more: the difference in live heap between the two, divided by N, is what one more client costs,
//! free of what the first ones grew once (tables, the runtime). The allocator's own rounding and
//! fragmentation are not in it: RSS from outside (docs/benchmarks.md) is the figure that counts.

#![allow(unsafe_code, clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sizes above this are counted together.
const MAX_SIZE: usize = 16384;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BY_SIZE: [AtomicIsize; MAX_SIZE + 1] = [const { AtomicIsize::new(0) }; MAX_SIZE + 1];
/// Record the call site of every allocation made meanwhile.
static TRACING: AtomicBool = AtomicBool::new(false);
static SITES: Mutex<Option<HashMap<usize, (usize, Backtrace)>>> = Mutex::new(None);

thread_local! {
    /// The clients' thread: not counted.
    static SKIP: Cell<bool> = const { Cell::new(false) };
    /// Inside the allocator's own bookkeeping.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    !SKIP.with(Cell::get) && !BUSY.with(Cell::get)
}

fn on_alloc(ptr: *mut u8, size: usize) {
    LIVE.fetch_add(size as isize, Ordering::Relaxed);
    BY_SIZE[size.min(MAX_SIZE)].fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        BUSY.with(|b| b.set(true));
        let bt = Backtrace::force_capture();
        if let Some(map) = SITES.lock().unwrap().as_mut() {
            map.insert(ptr as usize, (size, bt));
        }
        BUSY.with(|b| b.set(false));
    }
}

fn on_dealloc(ptr: *mut u8, size: usize) {
    LIVE.fetch_sub(size as isize, Ordering::Relaxed);
    BY_SIZE[size.min(MAX_SIZE)].fetch_sub(1, Ordering::Relaxed);
    BUSY.with(|b| b.set(true));
    if let Some(map) = SITES.lock().unwrap().as_mut() {
        map.remove(&(ptr as usize));
    }
    BUSY.with(|b| b.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && counted() {
            on_alloc(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            on_dealloc(ptr, layout.size());
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && counted() {
            on_dealloc(ptr, layout.size());
            on_alloc(p, new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> (isize, Vec<isize>) {
    (
        LIVE.load(Ordering::Relaxed),
        BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
    )
}

const CONFIG: &str = r#"
[log]
level = "warn"
[client]
queue_bytes = 1048576
[websocket]
ping_interval = "25s"
[channels.namespaces.bench]
allow_publish = true
history_size = 100
history_ttl = "60s"
"#;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(2000, |a| a.parse().unwrap());
    let mode = match args.next().as_deref() {
        None | Some("json") => Mode::Json,
        Some("echo") => Mode::Echo,
        Some("sio") => Mode::Sio,
        Some(other) => panic!("unknown mode {other}: json, echo or sio"),
    };
    let sites = std::env::var_os("SITES").is_some();
    SKIP.with(|s| s.set(true));

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    server_rt.spawn(async move {
        let mut config = switchboard::Config::from_toml(CONFIG).unwrap();
        config.listen.0 = "127.0.0.1:0".parse().unwrap();
        config.api.listen = "127.0.0.1:0".parse().unwrap();
        config.echo.enabled = true;
        config.socketio.enabled = mode == Mode::Sio;
        let server = switchboard::Server::bind(config).await.unwrap();
        tx.send(server.local_addr()).unwrap();
        server.run().await;
    });
    let addr = rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut held = Vec::new();
        let settle = || tokio::time::sleep(Duration::from_millis(1500));
        for _ in 0..n {
            held.push(open(addr, held.len(), mode).await);
        }
        settle().await;
        let (a, by_a) = snapshot();
        for _ in 0..n {
            held.push(open(addr, held.len(), mode).await);
        }
        settle().await;
        let (b, by_b) = snapshot();
        println!(
            "{mode:?} {n} → {} clients: live heap {} → {} bytes, {:.1} bytes per client",
            2 * n,
            a,
            b,
            (b - a) as f64 / n as f64
        );
        println!("per client, by requested size (allocations per client ≥ 0.05):");
        let mut rows: Vec<(usize, f64)> = (0..=MAX_SIZE)
            .map(|s| (s, (by_b[s] - by_a[s]) as f64 / n as f64))
            .filter(|(_, c)| c.abs() >= 0.05)
            .collect();
        rows.sort_by(|x, y| (y.1 * y.0 as f64).total_cmp(&(x.1 * x.0 as f64)));
        let mut total = 0.0;
        for (size, per) in &rows {
            total += per * *size as f64;
            let more = if *size == MAX_SIZE { "+" } else { "" };
            println!(
                "  {size:>6}{more} B × {per:>5.2} = {:>7.1} B",
                per * *size as f64
            );
        }
        println!("  sum of the rows: {total:.1} B");

        if sites {
            *SITES.lock().unwrap() = Some(HashMap::new());
            TRACING.store(true, Ordering::Relaxed);
            held.push(open(addr, held.len(), mode).await);
            settle().await;
            TRACING.store(false, Ordering::Relaxed);
            let map = SITES.lock().unwrap().take().unwrap();
            let mut live: Vec<_> = map.into_values().collect();
            live.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
            println!("the probe client's allocations still live after it settled:");
            for (size, bt) in live {
                println!("== {size} B");
                let text = bt.to_string();
                // The frames of this workspace and its async runtime, not the allocator's.
                let frames: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("at "))
                    .map(str::trim)
                    .filter(|l| !l.contains("idle_alloc::") && !l.contains("alloc::alloc::"))
                    .take(14)
                    .collect();
                for f in frames {
                    println!("     {f}");
                }
            }
        }
        drop(held);
    });
}

/// The kind of idle client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// switchboard's JSON protocol, connected and subscribed.
    Json,
    /// An echo connection that echoed once.
    Echo,
    /// A Socket.IO client on the WebSocket transport, in namespace `/` and in one room.
    Sio,
}

/// One idle client: the handshake, then `connect` and `subscribe` (JSON protocol), one echo, or the
/// Socket.IO namespace connect and a `subscribe` event with an ack.
async fn open(addr: std::net::SocketAddr, i: usize, mode: Mode) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (path, proto) = match mode {
        Mode::Json => (
            "/connection/websocket",
            "Sec-WebSocket-Protocol: switchboard.json\r\n",
        ),
        Mode::Echo => ("/echo", ""),
        Mode::Sio => ("/socket.io/?EIO=4&transport=websocket", ""),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let got = s.read(&mut chunk).await.unwrap();
        assert!(got > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..got]);
    }
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // Each step: a message, then the number of frames the client has seen from the server when
    // it is answered.
    let steps: Vec<(String, usize)> = match mode {
        Mode::Echo => vec![("x".repeat(64), 1)],
        Mode::Json => vec![
            (r#"{"id":1,"connect":{}}"#.into(), 1),
            (
                format!(
                    r#"{{"id":2,"subscribe":{{"channel":"bench:{}"}}}}"#,
                    i % 100
                ),
                2,
            ),
        ],
        // The open packet and the namespace's answer, then the ack. Events go only after the
        // answer, as socket.io-client sends them (before it, the reference server closes too).
        Mode::Sio => vec![
            ("40".into(), 2),
            (format!(r#"420["subscribe","bench:{}"]"#, i % 100), 3),
        ],
    };
    // Each reply is one small unmasked text frame (2-byte header when under 126 bytes).
    let mut seen = 0;
    // What came after the 101's head (a Socket.IO server's open packet may share its read).
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut pending = buf.split_off(head);
    for (text, replies) in steps {
        s.write_all(&masked(text.as_bytes())).await.unwrap();
        seen = read_frames(&mut s, &mut pending, seen, replies).await;
    }
    s
}

/// Reads server frames until `replies` were seen in all (`seen` so far), checking that none is an
/// error; gives the new count.
async fn read_frames(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
    mut seen: usize,
    replies: usize,
) -> usize {
    loop {
        while pending.len() >= 2 {
            let len = match pending[1] & 0x7f {
                126 if pending.len() >= 4 => {
                    4 + usize::from(u16::from_be_bytes([pending[2], pending[3]]))
                }
                126 => break,
                l => 2 + usize::from(l),
            };
            if pending.len() < len {
                break;
            }
            let body = &pending[2..len];
            assert!(
                !body.windows(8).any(|w| w == b"\"error\":"),
                "{}",
                String::from_utf8_lossy(body)
            );
            pending.drain(..len);
            seen += 1;
        }
        if seen >= replies {
            return seen;
        }
        let mut chunk = [0u8; 4096];
        let got = s.read(&mut chunk).await.unwrap();
        assert!(got > 0, "closed before the replies");
        pending.extend_from_slice(&chunk[..got]);
    }
}

fn masked(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![0x81];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
