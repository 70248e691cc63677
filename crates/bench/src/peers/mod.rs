//! Bench-only echo servers that switchboard is compared with: the same hyper 1.x HTTP/1.1
//! upgrade path that switchboard uses, with the framing done by a well-known crate, plus a raw TCP
//! echo (the upper bound of this machine) and Node's `ws` (a common non-Rust reference).
//!
//! All of them echo every text/binary message back, answer on any path, set `TCP_NODELAY`, and
//! (except Node) run on a tokio runtime with `--threads` workers (1 by default, so one core
//! is measured).

mod fastws;
pub mod node;
mod rawtcp;
mod tungstenite;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog. std and tokio use 128, which overflows (SYN dropped, 1 s retransmit) when a
/// load generator opens connections faster than one core accepts them.
const BACKLOG: u32 = 1024;

/// The peer implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// tokio-tungstenite 0.30, one flush per message, `read_buffer_size(4096)`.
    Tungstenite,
    /// tokio-tungstenite 0.30, already-decoded messages fed and flushed once.
    TungsteniteBatch,
    /// fastwebsockets 0.10 with `FragmentCollector`, one write per message.
    Fastwebsockets,
    /// Node's `ws` package (runs `node peers/node-ws/echo.js`).
    NodeWs,
    /// Plain TCP echo with a 4 KiB buffer: no HTTP, no framing.
    Rawtcp,
}

impl Peer {
    /// All peers, in the order the orchestrator runs them.
    pub const ALL: [Peer; 5] = [
        Peer::Tungstenite,
        Peer::TungsteniteBatch,
        Peer::Fastwebsockets,
        Peer::NodeWs,
        Peer::Rawtcp,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tungstenite => "tungstenite",
            Peer::TungsteniteBatch => "tungstenite-batch",
            Peer::Fastwebsockets => "fastwebsockets",
            Peer::NodeWs => "node-ws",
            Peer::Rawtcp => "rawtcp",
        }
    }

    /// Whether this peer frames with a Rust WebSocket crate (the reference for ratios).
    pub fn is_rust_crate(self) -> bool {
        matches!(
            self,
            Peer::Tungstenite | Peer::TungsteniteBatch | Peer::Fastwebsockets
        )
    }
}

/// Arguments of `switchboard-bench peer`.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Which echo server to run.
    #[arg(value_enum)]
    pub peer: Peer,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Tokio worker threads (ignored by node-ws, which is single-threaded).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Folder of the Node peer (with package.json); defaults to this crate's peers/node-ws.
    #[arg(long)]
    pub node_dir: Option<PathBuf>,
}

/// Runs the chosen peer until the process is killed.
pub fn run(args: &PeerArgs) -> Result<()> {
    if args.peer == Peer::NodeWs {
        let dir = args.node_dir.clone().unwrap_or_else(node::default_dir);
        return node::exec(args.listen, &dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(serve(args.peer, args.listen))
}

/// Accepts connections forever and hands each one to the peer's handler.
async fn serve(peer: Peer, listen: SocketAddr) -> Result<()> {
    let listener = bind(listen).with_context(|| format!("binding {listen}"))?;
    eprintln!("{} echo server listening on {listen}", peer.name());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically EMFILE when the open-file limit is reached: back off, keep serving.
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if stream.set_nodelay(true).is_err() {
            continue;
        }
        if peer == Peer::Rawtcp {
            tokio::spawn(rawtcp::echo(stream));
        } else {
            tokio::spawn(http(stream, peer));
        }
    }
}

/// Binds `listen` with `SO_REUSEADDR` and a listen backlog of [`BACKLOG`].
fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(BACKLOG)
}

/// Serves one HTTP/1.1 connection whose requests are WebSocket upgrades.
async fn http(stream: TcpStream, peer: Peer) {
    let service = service_fn(move |req| async move { Ok::<_, Infallible>(upgrade(req, peer)) });
    // Errors here are connections the load generator reset on purpose: nothing to report.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// Answers one upgrade request with the peer's WebSocket crate.
fn upgrade(req: Request<Incoming>, peer: Peer) -> Response<Empty<Bytes>> {
    match peer {
        Peer::Tungstenite => tungstenite::upgrade(req, false),
        Peer::TungsteniteBatch => tungstenite::upgrade(req, true),
        Peer::Fastwebsockets => fastws::upgrade(req),
        Peer::NodeWs | Peer::Rawtcp => bad_request(),
    }
}

/// A plain `400 Bad Request` for requests that are not WebSocket upgrades.
fn bad_request() -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}
