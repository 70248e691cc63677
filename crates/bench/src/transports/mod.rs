//! `switchboard-bench transports`: "why WebSocket, measured". The same chat workload (N clients in
//! one room, R messages per second published into it through the server API, every client
//! receiving every message) over each way a client can connect: switchboard's WebSocket, SSE, long
//! polling and ajax polling, and Socket.IO forced to its HTTP long-polling. For each, a fresh
//! server pinned to CPU 0 and the load generator (`transports-load`) pinned to CPU 1; the results
//! are HTTP requests and bytes on the wire per delivered message, server CPU per 1,000 deliveries,
//! delivery latency and server memory per client, as a table and an SVG plot.
//!
//! ```text
//! switchboard-bench transports --docs      # docs/benchmarks.md, docs/transports.svg, README.md
//! switchboard-bench transports --quick     # a smoke run, printed only
//! ```

pub mod clients;
pub mod http;
pub mod load;
pub mod report;
pub mod shared;
pub mod svg;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;

use crate::fanout::servers::peer_dir;
use crate::harness::process;
use crate::harness::rounds::{Retries, rotated};
use crate::harness::{self, child};
use load::{Transport, TransportReport};

/// The room of the benchmark.
pub const CHANNEL: &str = "chat:bench";
/// The API key of the bench server (it listens on 127.0.0.1 only, for the run's length).
const API_KEY: &str = "switchboard-bench";

/// Arguments of `switchboard-bench transports`.
#[derive(Args, Debug)]
pub struct TransportsArgs {
    /// The switchboard binary [default: `switchboard` next to this executable].
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Only these transports (comma-separated): websocket, sse, long-poll, poll, socketio-polling.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub transports: Vec<Transport>,
    /// Clients in the room [default: 1000, quick: 100].
    #[arg(short = 'n', long)]
    pub clients: Option<usize>,
    /// Messages published into the room per second.
    #[arg(short, long, default_value_t = 1.0)]
    pub rate: f64,
    /// Measured seconds [default: 30, quick: 5].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Warm-up seconds of publishing before the window [default: 5, quick: 2].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Ajax polling: seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    pub poll_interval: f64,
    /// Send only the headers each protocol needs instead of a browser's.
    #[arg(long)]
    pub bare_headers: bool,
    /// Short runs: 100 clients, 2 s warm-up, 5 s measured.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (transport order rotated each round); figures are medians over rounds, losses the
    /// worst round.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// A run is noisy when processes other than the server and the load generator use more than
    /// this % of a core during the window; it is repeated (once by default).
    #[arg(long, default_value_t = 15.0)]
    pub max_noise: f64,
    /// How often a noisy run is repeated (the least noisy is kept).
    #[arg(long, default_value_t = 1)]
    pub noise_retries: usize,
    /// Write the results where the repository keeps them: the "Transports" section of
    /// docs/benchmarks.md, docs/transports.svg and the table in README.md's "Why WebSocket,
    /// measured" (paths from the workspace root).
    #[arg(long)]
    pub docs: bool,
    /// Write the "Transports" section into this markdown file (the rest is kept).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the SVG plot here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Replace the generated table of this README (between its transports markers).
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

/// The parameters of a run, after defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Clients.
    pub clients: usize,
    /// Publications per second.
    pub rate: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Warm-up seconds.
    pub warmup: f64,
    /// Ajax polling interval.
    pub poll_interval: f64,
    /// Browser-like headers.
    pub browser_headers: bool,
    /// Rounds.
    pub rounds: usize,
    /// Noise threshold, % of a core.
    pub max_noise: f64,
    /// Whether this is a `--quick` run.
    pub quick: bool,
}

/// One transport's runs.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The transport.
    pub transport: Transport,
    /// The kept run of every round that succeeded.
    pub runs: Vec<TransportReport>,
    /// Failures.
    pub notes: Vec<String>,
}

/// Runs the benchmark and prints (and optionally writes) the results.
pub fn main(args: &TransportsArgs) -> Result<()> {
    let quick = args.quick;
    let settings = Settings {
        clients: args.clients.unwrap_or(if quick { 100 } else { 1_000 }),
        rate: args.rate,
        duration: args.duration.unwrap_or(if quick { 5.0 } else { 30.0 }),
        warmup: args.warmup.unwrap_or(if quick { 2.0 } else { 5.0 }),
        poll_interval: args.poll_interval,
        browser_headers: !args.bare_headers,
        rounds: args.rounds.max(1),
        max_noise: args.max_noise,
        quick,
    };
    let transports: Vec<Transport> = if args.transports.is_empty() {
        Transport::ALL.to_vec()
    } else {
        args.transports.clone()
    };
    let self_exe = std::env::current_exe().context("locating this executable")?;
    let switchboard = harness::switchboard_binary(args.switchboard.as_deref(), &self_exe)?;
    if transports.iter().any(|t| t.is_socketio()) {
        crate::peers::node::ensure_package(&peer_dir("socketio"), "socket.io")?;
    }
    let work = std::env::temp_dir().join("switchboard-bench");
    std::fs::create_dir_all(&work)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = args
        .out
        .clone()
        .or_else(|| args.docs.then(|| root.join("docs/benchmarks.md")));
    let svg_path = args
        .svg
        .clone()
        .or_else(|| args.docs.then(|| root.join("docs/transports.svg")));
    let readme = args
        .readme
        .clone()
        .or_else(|| args.docs.then(|| root.join("README.md")));
    eprintln!(
        "transports: {}; {} clients, {} msg/s, {} s measured; logs in {}",
        harness::names(&transports, |t| t.name()),
        settings.clients,
        settings.rate,
        settings.duration,
        work.display()
    );
    let ctx = Ctx {
        settings: settings.clone(),
        self_exe,
        switchboard: switchboard.clone(),
        work,
        retries: Retries {
            retries: args.noise_retries,
            max_noise: settings.max_noise,
        },
    };
    let mut outcomes: Vec<Outcome> = transports
        .iter()
        .map(|&transport| Outcome {
            transport,
            runs: vec![],
            notes: vec![],
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load_before = report::load_average();
    runtime.block_on(async {
        for round in 0..settings.rounds {
            // Rotate the order each round, so no transport always runs first.
            rotated(&mut outcomes, round, async |outcome| {
                ctx.transport(outcome, round).await;
            })
            .await;
        }
    });
    let load_after = report::load_average();

    let versions = report::versions(&switchboard, &transports);
    let text = report::tables(&outcomes, &settings);
    println!("{text}");
    let summaries = report::summaries(&outcomes);
    if let Some(path) = &svg_path {
        std::fs::write(path, svg::plot(&summaries, &settings))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &out {
        let section = report::section(
            &outcomes,
            &settings,
            &versions,
            &crate::harness::markdown::command_line(),
            (&load_before, &load_after),
        );
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let doc = report::replace_between(&old, report::BEGIN, report::END, &section);
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the Transports section of {}", path.display());
    }
    if let Some(path) = &readme {
        let old =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            old.contains(report::README_BEGIN),
            "{} has no `{}` marker: add the section by hand first",
            path.display(),
            report::README_BEGIN
        );
        let table = report::readme_table(&summaries, &settings);
        let doc = report::replace_between(&old, report::README_BEGIN, report::README_END, &table);
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the transports table of {}", path.display());
    }
    Ok(())
}

/// What every run needs.
struct Ctx {
    settings: Settings,
    self_exe: PathBuf,
    switchboard: PathBuf,
    work: PathBuf,
    retries: Retries,
}

/// switchboard's configuration for the benchmark: the server API on `api`, and a `chat` namespace
/// like the demo's (history with recovery, client publications) but without presence and
/// join/leave, whose pushes while 1,000 clients join would swamp the set-up, not the window.
fn switchboard_toml(api: SocketAddr) -> String {
    format!(
        "# Written by switchboard-bench transports.
[log]
level = \"warn\"

[api]
listen = \"{api}\"
key = \"{API_KEY}\"

[channels.namespaces.chat]
history_size = 100
history_ttl = \"600s\"
recover = true
allow_publish = true
"
    )
}

impl Ctx {
    /// One round of `outcome`'s transport, repeated while noisy; the least noisy run is kept.
    async fn transport(&self, outcome: &mut Outcome, round: usize) {
        let t = outcome.transport;
        let tag = format!("[{}/{}] {}", round + 1, self.settings.rounds, t.name());
        let kept = (self.retries)
            .quietest(
                &tag,
                round,
                &mut outcome.notes,
                async || self.once(t).await,
                describe,
            )
            .await;
        outcome.runs.extend(kept);
    }

    /// One run against a fresh server.
    async fn once(&self, transport: Transport) -> Result<TransportReport> {
        let s = &self.settings;
        let addr = process::free_addr()?;
        let api = process::free_addr()?;
        let argv: Vec<OsString> = if transport.is_socketio() {
            vec![
                "node".into(),
                peer_dir("socketio").join("server.js").into(),
                "--listen".into(),
                addr.to_string().into(),
                "--transports".into(),
                "polling".into(),
            ]
        } else {
            let config = self.work.join("switchboard-transports.toml");
            harness::switchboard_serve(&self.switchboard, &config, &switchboard_toml(api), addr)?
        };
        let log = self
            .work
            .join(format!("transports-{}.log", transport.name()));
        let mut server = process::start_pinned(transport.name(), &argv, addr, log).await?;
        let api_addr = if transport.is_socketio() { addr } else { api };
        let setup_timeout = 120.0;
        let mut args = child::strings(&[
            "transports-load",
            "--json",
            "--transport",
            transport.name(),
            "--addr",
            &addr.to_string(),
            "--api-addr",
            &api_addr.to_string(),
            "--api-key",
            API_KEY,
            "--channel",
            CHANNEL,
            "--clients",
            &s.clients.to_string(),
            "--rate",
            &s.rate.to_string(),
            "--warmup",
            &s.warmup.to_string(),
            "--duration",
            &s.duration.to_string(),
            "--poll-interval",
            &s.poll_interval.to_string(),
            "--setup-timeout",
            &setup_timeout.to_string(),
            "--server-pid",
            &server.pid.to_string(),
        ]);
        if !s.browser_headers {
            args.push("--bare-headers".into());
        }
        let drain = 5.0 + 2.0 * s.poll_interval;
        let limit = child::report_limit(setup_timeout, s.warmup, s.duration, drain);
        let servers = std::slice::from_mut(&mut server);
        let result = child::load_report(&self.self_exe, args, limit, servers).await;
        server.stop().await;
        result
    }
}

/// One run's line on the terminal.
fn describe(r: &TransportReport) -> String {
    let other = r.core.other_cpu_pct.unwrap_or(0.0);
    format!(
        "{} deliveries, {:.3} requests/msg, {:.0} B/msg, server CPU {} s/1k msgs, \
         p50 {:.1} ms, p99 {:.1} ms, missing {}, dup {}, reordered {}, other processes {other:.0} %",
        r.core.deliveries_window,
        r.requests_per_msg,
        r.bytes_per_msg,
        r.server_cpu_s_per_1k
            .map_or("-".into(), |v| format!("{v:.4}")),
        r.core.latency_p50_us as f64 / 1000.0,
        r.core.latency_p99_us as f64 / 1000.0,
        r.core.missing,
        r.core.duplicates,
        r.core.out_of_order,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_api_and_the_room_namespace() {
        let toml = switchboard_toml("127.0.0.1:9999".parse().unwrap());
        assert!(toml.contains("listen = \"127.0.0.1:9999\""));
        assert!(toml.contains("[channels.namespaces.chat]"));
        assert!(CHANNEL.starts_with("chat:"));
    }
}
