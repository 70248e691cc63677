//! `switchboard-bench run`: the orchestrator. For every server (switchboard and the peers) and
//! every test it starts a fresh server process pinned to CPU 0, runs the load generator pinned to
//! CPU 1 as a child process, collects its JSON report, and kills the server; then it prints the
//! comparison table (and writes it with the machine and command to `--out`).
//!
//! Tests per server and round: `tput` (pipelined echo throughput) and `idle` (N connections from
//! one client process, then as many more as the server's open-file limit allows, from several
//! client processes since each is capped by its own limit).

mod report;
mod results;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use tokio::time::sleep;

use crate::harness::markdown::{self, FANOUT_BEGIN};
use crate::harness::process::{LoadChild, Running, free_addr, start_client, start_pinned};
use crate::idle::IdleReport;
use crate::peers::{Peer, node};
use crate::procfs;
use crate::tput::TputReport;
pub use results::{MaxReport, Results, Server, Settings};

/// The WebSocket path of the echo endpoint (the peers answer on any path).
const ECHO_PATH: &str = "/echo";
/// How long an idle client may take to open its connections and report.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long idle clients hold their connections at most (the orchestrator ends them sooner).
const IDLE_HOLD_S: u32 = 900;
/// File descriptors left free in the server when working out how many connections fit.
const SERVER_FD_MARGIN: u64 = 16;
/// Pause before repeating a noisy run.
const NOISE_PAUSE: Duration = Duration::from_secs(10);
/// Connections per source address (127.0.0.x) of the idle clients.
const PER_SOURCE: usize = 1_000;

/// Arguments of `switchboard-bench run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The switchboard binary [default: `switchboard` next to this executable, if it exists].
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Short runs for CI smoke tests: 2 s throughput, 1,000 then 2,000 idle connections.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results, the machine and the command to this markdown file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rounds; every figure is the median over them.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Only these servers (comma-separated): switchboard, tungstenite, tungstenite-batch,
    /// fastwebsockets, node-ws, rawtcp.
    #[arg(long, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Measured seconds of the throughput test [default: 10, quick: 2].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Idle connections of the first idle step [default: 10000, quick: 1000].
    #[arg(long)]
    pub idle_conns: Option<usize>,
    /// Idle connections to reach in the second step, capped by what the server's open-file
    /// limit allows [default: 50000, quick: 2000].
    #[arg(long)]
    pub max_conns: Option<usize>,
    /// Skip the throughput test.
    #[arg(long)]
    pub skip_tput: bool,
    /// Skip the idle-connection tests.
    #[arg(long)]
    pub skip_idle: bool,
    /// A throughput run is noisy (and marked `*`) when processes other than the server and the
    /// load generator use more than this % of a core during it.
    #[arg(long, default_value_t = 15.0)]
    pub max_noise: f64,
    /// How often a noisy throughput run is repeated before it is kept anyway [default: 2,
    /// quick: 0].
    #[arg(long)]
    pub noise_retries: Option<usize>,
}

impl Settings {
    fn new(args: &RunArgs) -> Self {
        let quick = args.quick;
        Self {
            conns: 100,
            size: 64,
            in_flight: 32,
            warmup: 1.0,
            duration: args.duration.unwrap_or(if quick { 2.0 } else { 10.0 }),
            idle_conns: args
                .idle_conns
                .unwrap_or(if quick { 1_000 } else { 10_000 }),
            max_conns: args.max_conns.unwrap_or(if quick { 2_000 } else { 50_000 }),
            per_process: if quick { 1_000 } else { 15_000 },
            rounds: args.rounds.max(1),
            max_noise: args.max_noise,
            noise_retries: args.noise_retries.unwrap_or(if quick { 0 } else { 2 }),
        }
    }
}

impl Server {
    fn raw(&self) -> bool {
        matches!(self, Server::Peer(Peer::Rawtcp))
    }

    /// The command line that starts it listening on `listen`.
    fn argv(&self, self_exe: &Path, listen: SocketAddr) -> Vec<OsString> {
        let listen = listen.to_string();
        match self {
            Server::Switchboard(path) => {
                vec![
                    path.into(),
                    "serve".into(),
                    "--listen".into(),
                    listen.into(),
                    "--echo".into(),
                ]
            }
            Server::Peer(peer) => {
                vec![
                    self_exe.into(),
                    "peer".into(),
                    peer.name().into(),
                    "--listen".into(),
                    listen.into(),
                ]
            }
        }
    }
}

/// Runs the whole comparison and prints (and optionally writes) the report.
pub fn main(args: &RunArgs) -> Result<()> {
    let settings = Settings::new(args);
    let self_exe = std::env::current_exe().context("locating this executable")?;
    let servers = select_servers(args, &self_exe)?;
    ensure!(
        std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok(),
        "`taskset` (util-linux) is needed to pin the server and the load generator"
    );
    if servers
        .iter()
        .any(|s| matches!(s, Server::Peer(Peer::NodeWs)))
    {
        node::ensure_installed(&node::default_dir())?;
    }
    let log_dir = std::env::temp_dir().join("switchboard-bench");
    std::fs::create_dir_all(&log_dir)?;
    eprintln!(
        "servers: {}; logs in {}",
        servers
            .iter()
            .map(Server::name)
            .collect::<Vec<_>>()
            .join(", "),
        log_dir.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<Results> = servers.into_iter().map(Results::new).collect();
    let ctx = Ctx {
        settings: settings.clone(),
        self_exe,
        log_dir,
    };
    runtime.block_on(async {
        for round in 0..settings.rounds {
            // Rotate the order each round, so no server always runs first.
            let count = results.len();
            for i in 0..count {
                let r = &mut results[(i + round) % count];
                if !args.skip_tput {
                    ctx.tput_round(r, round).await;
                }
                if !args.skip_idle {
                    ctx.idle_round(r, round).await;
                }
            }
        }
    });

    let table = report::tables(&results, &settings);
    println!("{table}");
    if let Some(out) = &args.out {
        let mut doc = report::document(&results, &settings, &markdown::command_line());
        // This run owns the document's head; everything from the first section another command
        // generates (fan-out, transports, Redis) to the hand-written reading at the end is kept.
        let old = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(start) = old.find(FANOUT_BEGIN) {
            doc = format!("{}\n\n{}", doc.trim_end(), &old[start..]);
        }
        std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

/// The servers to run, switchboard first when its binary is there.
fn select_servers(args: &RunArgs, self_exe: &Path) -> Result<Vec<Server>> {
    let switchboard = match &args.switchboard {
        Some(path) => {
            ensure!(
                path.is_file(),
                "no switchboard binary at {}",
                path.display()
            );
            Some(path.clone())
        }
        None => self_exe
            .parent()
            .map(|dir| dir.join("switchboard"))
            .filter(|p| p.is_file()),
    };
    let mut all: Vec<Server> = switchboard.map(Server::Switchboard).into_iter().collect();
    if all.is_empty() {
        eprintln!(
            "note: no switchboard binary found (build it or pass --switchboard PATH); running the peers only"
        );
    }
    all.extend(Peer::ALL.into_iter().map(Server::Peer));
    if args.servers.is_empty() {
        return Ok(all);
    }
    args.servers
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| s.name() == name)
                .cloned()
                .with_context(|| format!("unknown or unavailable server `{name}`"))
        })
        .collect()
}

/// What every test needs.
struct Ctx {
    settings: Settings,
    self_exe: PathBuf,
    log_dir: PathBuf,
}

impl Ctx {
    /// One throughput measurement of `r`'s server, repeated (up to `noise_retries` times) while
    /// other processes use more than `max_noise` % of a core; the least noisy attempt is kept.
    async fn tput_round(&self, r: &mut Results, round: usize) {
        let tag = format!(
            "[{}/{}] {}",
            round + 1,
            self.settings.rounds,
            r.server.name()
        );
        let mut kept: Option<TputReport> = None;
        for attempt in 0..=self.settings.noise_retries {
            if attempt > 0 {
                eprintln!("{tag} noisy run: retrying in {NOISE_PAUSE:?}");
                sleep(NOISE_PAUSE).await;
            }
            let t = match self.tput(&r.server).await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{tag} tput failed: {e:#}");
                    r.notes
                        .push(format!("tput round {} failed: {e:#}", round + 1));
                    break;
                }
            };
            let other = t.other_cpu_pct.unwrap_or(0.0);
            eprintln!(
                "{tag} tput: {:.0} msgs/s, RTT p50 {} / p99 {} µs, other processes {other:.0} % of a core",
                t.msgs_per_s, t.rtt_p50_us, t.rtt_p99_us
            );
            if let Some(e) = &t.first_error {
                let errors = t.errors;
                r.notes.push(format!(
                    "tput round {}: {errors} connection(s) failed: {e}",
                    round + 1
                ));
            }
            let quieter = kept
                .as_ref()
                .is_none_or(|k| other < k.other_cpu_pct.unwrap_or(0.0));
            if quieter {
                kept = Some(t);
            }
            if other <= self.settings.max_noise {
                break;
            }
        }
        r.tput.extend(kept);
    }

    /// One idle measurement (both steps) of `r`'s server.
    async fn idle_round(&self, r: &mut Results, round: usize) {
        let tag = format!(
            "[{}/{}] {}",
            round + 1,
            self.settings.rounds,
            r.server.name()
        );
        let (idle, max) = match self.idle(&r.server).await {
            Ok(result) => result,
            Err(e) => {
                eprintln!("{tag} idle failed: {e:#}");
                r.notes
                    .push(format!("idle round {} failed: {e:#}", round + 1));
                return;
            }
        };
        let max_text = max.as_ref().map_or("-".into(), |m| {
            format!("{} conns, {:.1} KiB/conn", m.conns, m.kib_per_conn)
        });
        eprintln!(
            "{tag} idle: {} conns, {:.1} KiB/conn; max step: {max_text}",
            idle.connected,
            idle.kib_per_conn_echo.unwrap_or(f64::NAN),
        );
        if idle.connected < idle.requested || idle.echoed < idle.connected {
            r.notes.push(format!(
                "idle round {}: {}/{} connected, {} echoed; first error: {}",
                round + 1,
                idle.connected,
                idle.requested,
                idle.echoed,
                idle.first_error.as_deref().unwrap_or("-")
            ));
        }
        r.idle.push(idle);
        r.max.extend(max);
    }

    /// Starts a fresh `server` pinned to the server core and waits until it accepts.
    async fn start(&self, server: &Server, test: &str) -> Result<Running> {
        let addr = free_addr()?;
        let log = self.log_dir.join(format!("{}-{test}.log", server.name()));
        start_pinned(server.name(), &server.argv(&self.self_exe, addr), addr, log).await
    }

    /// Starts a load-generator subcommand pinned to the client core.
    fn client(&self, args: Vec<String>) -> Result<LoadChild> {
        start_client(&self.self_exe, args)
    }

    /// The common client arguments for `server` at `addr`.
    fn target_args(server: &Server, addr: SocketAddr) -> Vec<String> {
        let mut args = vec![
            "--addr".into(),
            addr.to_string(),
            "--path".into(),
            ECHO_PATH.into(),
            "--json".into(),
        ];
        if server.raw() {
            args.push("--raw".into());
        }
        args
    }

    /// One throughput run against a fresh server.
    async fn tput(&self, server: &Server) -> Result<TputReport> {
        let s = &self.settings;
        let mut running = self.start(server, "tput").await?;
        let mut args: Vec<String> = vec!["tput".into()];
        args.extend(Self::target_args(server, running.addr));
        for (flag, value) in [
            ("--conns", s.conns.to_string()),
            ("--size", s.size.to_string()),
            ("--in-flight", s.in_flight.to_string()),
            ("--warmup", s.warmup.to_string()),
            ("--duration", s.duration.to_string()),
            ("--server-pid", running.pid.to_string()),
        ] {
            args.extend([flag.to_string(), value]);
        }
        let result = async {
            let mut client = self.client(args)?;
            let limit = Duration::from_secs_f64(s.warmup + s.duration + 60.0);
            let report = client.report::<TputReport>(limit).await;
            client.stop().await;
            running.check_alive()?;
            report
        }
        .await;
        running.stop().await;
        result
    }

    /// The idle test against a fresh server: first `idle_conns` from one client, then more
    /// clients until `max_conns` or the server's open-file limit.
    async fn idle(&self, server: &Server) -> Result<(IdleReport, Option<MaxReport>)> {
        let mut running = self.start(server, "idle").await?;
        let mut clients = Vec::new();
        let result = self.idle_steps(server, &mut running, &mut clients).await;
        for client in clients {
            client.stop().await;
        }
        running.stop().await;
        result
    }

    async fn idle_steps(
        &self,
        server: &Server,
        running: &mut Running,
        clients: &mut Vec<LoadChild>,
    ) -> Result<(IdleReport, Option<MaxReport>)> {
        let s = &self.settings;
        let (pid, addr) = (running.pid, running.addr);
        let idle_args = |conns: usize, source_start: usize, server_pid: bool| {
            let mut args: Vec<String> = vec!["idle".into()];
            args.extend(Self::target_args(server, addr));
            args.extend([
                "--conns".into(),
                conns.to_string(),
                "--source-start".into(),
                source_start.to_string(),
                "--per-source".into(),
                PER_SOURCE.to_string(),
                "--hold".into(),
                IDLE_HOLD_S.to_string(),
            ]);
            if server_pid {
                args.extend(["--server-pid".into(), pid.to_string()]);
            }
            args
        };

        let mut source = 2;
        clients.push(self.client(idle_args(s.idle_conns, source, true))?);
        source += s.idle_conns.div_ceil(PER_SOURCE);
        let first: IdleReport = clients[0].report(IDLE_TIMEOUT).await?;
        running.check_alive()?;
        let Some(before) = first.rss_before_kib else {
            bail!("idle client reported no server RSS");
        };
        if s.max_conns <= first.connected || first.connected < first.requested {
            return Ok((first, None));
        }

        let fd_limit = procfs::nofile_limit(&running.pid.to_string())?;
        let free =
            fd_limit.saturating_sub(procfs::open_fds(running.pid)? + SERVER_FD_MARGIN) as usize;
        let wanted = s.max_conns - first.connected;
        let extra = wanted.min(free);
        let mut remaining = extra;
        let started = clients.len();
        while remaining > 0 {
            let n = remaining.min(s.per_process);
            ensure!(
                source + n.div_ceil(PER_SOURCE) <= 255,
                "out of 127.0.0.x source addresses"
            );
            clients.push(self.client(idle_args(n, source, false))?);
            source += n.div_ceil(PER_SOURCE);
            remaining -= n;
        }
        let mut conns = first.connected;
        for client in &mut clients[started..] {
            let report: IdleReport = client.report(IDLE_TIMEOUT).await?;
            conns += report.connected;
        }
        sleep(Duration::from_secs(1)).await;
        running.check_alive()?;
        let rss_kib = procfs::rss_kib(running.pid)?;
        let max = MaxReport {
            conns,
            processes: clients.len(),
            rss_kib,
            kib_per_conn: (rss_kib as f64 - before as f64) / conns as f64,
            fd_limit,
            capped: extra < wanted,
        };
        Ok((first, Some(max)))
    }
}
