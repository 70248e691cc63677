//! The command line of `switchboard-bench fanout-load`.

use std::net::SocketAddr;

use clap::Args;

use crate::fanout::wire::Kind;

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
