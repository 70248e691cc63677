//! What the echo comparison measures and keeps: the settings of a run, the servers under test
//! and every server's results over all rounds. Both the orchestrator ([`super`]) and the report
//! ([`super::report`]) use them, so they live below both.

use std::path::PathBuf;

use crate::idle::IdleReport;
use crate::peers::Peer;
use crate::tput::TputReport;

/// The parameters of a run, after defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections of the throughput test.
    pub conns: usize,
    /// Message payload bytes.
    pub size: usize,
    /// Messages in flight per connection.
    pub in_flight: usize,
    /// Warm-up seconds.
    pub warmup: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Connections of the first idle step.
    pub idle_conns: usize,
    /// Connections aimed at in the second idle step.
    pub max_conns: usize,
    /// Most connections per idle client process (each is capped by its own open-file limit).
    pub per_process: usize,
    /// Rounds.
    pub rounds: usize,
    /// A throughput run is noisy when other processes use more than this % of a core.
    pub max_noise: f64,
    /// How often a noisy throughput run is repeated.
    pub noise_retries: usize,
}

/// A server under test.
#[derive(Debug, Clone)]
pub enum Server {
    /// switchboard itself, from this binary path.
    Switchboard(PathBuf),
    /// One of the bench peers.
    Peer(Peer),
}

impl Server {
    /// Name in reports.
    pub fn name(&self) -> &str {
        match self {
            Server::Switchboard(_) => "switchboard",
            Server::Peer(peer) => peer.name(),
        }
    }

    /// Whether this is a peer framed by a Rust WebSocket crate (the reference for ratios).
    pub fn is_rust_peer(&self) -> bool {
        matches!(self, Server::Peer(peer) if peer.is_rust_crate())
    }
}

/// The second idle step: as many connections as fit, from several client processes.
#[derive(Debug, Clone)]
pub struct MaxReport {
    /// Connections open at once.
    pub conns: usize,
    /// Client processes that held them.
    pub processes: usize,
    /// Server RSS with all of them open (after one echo each), KiB.
    pub rss_kib: u64,
    /// (RSS − RSS before the first connection) / connections, KiB.
    pub kib_per_conn: f64,
    /// The server's open-file limit.
    pub fd_limit: u64,
    /// Whether `--max-conns` was cut down to what that limit allows.
    pub capped: bool,
}

/// Everything measured for one server, over all rounds.
#[derive(Debug, Clone)]
pub struct Results {
    /// The server.
    pub server: Server,
    /// One report per successful throughput run.
    pub tput: Vec<TputReport>,
    /// One report per successful first idle step.
    pub idle: Vec<IdleReport>,
    /// One report per successful second idle step.
    pub max: Vec<MaxReport>,
    /// Failures and remarks, shown under the table.
    pub notes: Vec<String>,
}

impl Results {
    /// No runs yet.
    pub fn new(server: Server) -> Self {
        Self {
            server,
            tput: vec![],
            idle: vec![],
            max: vec![],
            notes: vec![],
        }
    }
}
