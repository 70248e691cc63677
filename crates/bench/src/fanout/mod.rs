//! `switchboard-bench fanout`: the fan-out benchmark. For every scenario (one channel with many
//! subscribers; many channels with a few each) and every server (switchboard, Nchan, Socket.IO),
//! it starts a fresh server pinned to CPU 0, runs the load generator (`fanout-load`) pinned to
//! CPU 1, and collects deliveries/s, publish-to-deliver latency, CPU, memory per subscriber and
//! losses. The results go to the terminal and, with `--out`, into the "Fan-out" section of a
//! markdown file (the rest of the file is kept).

pub mod load;
pub mod raw;
pub mod redis;
pub mod report;
pub mod servers;
pub mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;

use crate::harness::process;
use crate::harness::rounds::{Retries, rotated};
use crate::harness::{self, child};
use load::LoadReport;
use wire::Kind;

/// Arguments of `switchboard-bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// The switchboard binary [default: `switchboard` next to this executable].
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Short runs: 1,000 subscribers, 0.5 s warm-up, 2 s measured.
    #[arg(long)]
    pub quick: bool,
    /// Write the results into the "Fan-out" section of this markdown file (created if missing;
    /// the rest of the file is kept).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only these servers (comma-separated): switchboard, nchan, socketio, and switchboard-sio
    /// (switchboard with Socket.IO clients, asked for by name only).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub servers: Vec<Kind>,
    /// Only these scenarios (comma-separated): one (1,000 publishes/s on one channel), one-R
    /// (the same at a lower rate R from `--low-rates`), many (channels of 10 subscribers).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Subscribers per scenario [default: 10000, quick: 1000].
    #[arg(long)]
    pub subs: Option<usize>,
    /// Measured seconds [default: 10, quick: 2].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Warm-up seconds of publishing before the window [default: 2, quick: 0.5].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds the last publications may take to arrive after the window [default: 5, quick: 2].
    #[arg(long)]
    pub drain: Option<f64>,
    /// Publications per second of the lower-rate variants of the one-channel scenario.
    #[arg(long, value_delimiter = ',', default_values_t = [100.0, 10.0, 1.0])]
    pub low_rates: Vec<f64>,
    /// Record the latency of every K-th subscriber only.
    #[arg(long, default_value_t = 1)]
    pub sample_every: usize,
    /// A run is noisy when processes other than the server and the load generator use more than
    /// this % of a core during the window.
    #[arg(long, default_value_t = 15.0)]
    pub max_noise: f64,
    /// How often a noisy run is repeated (the least noisy is kept) [default: 1, quick: 0].
    #[arg(long)]
    pub noise_retries: Option<usize>,
    /// The CPUs the server runs on, as `taskset -c` takes them (`0`, `0,1`): `0,1` gives the
    /// server both cores of a 2-core machine, shared with the load generator (which stays on
    /// CPU 1), to see how one channel's fan-out spreads over the runtime's workers. With
    /// `--engine memory` only (the engine runs pin every server-side process to CPU 0).
    #[arg(long, default_value = "0")]
    pub server_cpus: String,
    /// Rounds (server order rotated each round); figures are medians over rounds, losses the
    /// worst round.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// `redis`: run switchboard alone, one node in memory side by side with two nodes sharing
    /// one Redis (started by the bench), both publishing through the server API, and write the
    /// "Fan-out with Redis" section instead of "Fan-out". `nats`: the same with two nodes sharing
    /// one `nats-server -js` as a third contender, into the "Fan-out with NATS" section.
    #[arg(long, value_enum, default_value = "memory")]
    pub engine: EngineChoice,
}

/// Which comparison `fanout` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// switchboard (in memory), Nchan and Socket.IO.
    Memory,
    /// switchboard in memory vs switchboard on two nodes with Redis.
    Redis,
    /// switchboard in memory vs two nodes with Redis vs two nodes with NATS (JetStream).
    Nats,
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name on the command line.
    pub key: String,
    /// Subscribers.
    pub subs: usize,
    /// Channels.
    pub channels: usize,
    /// Publications per second.
    pub rate: f64,
}

impl Scenario {
    /// Subscribers per channel.
    pub fn per_channel(&self) -> usize {
        self.subs / self.channels
    }

    /// Deliveries per second asked of the server.
    pub fn offered(&self) -> f64 {
        self.rate * self.per_channel() as f64
    }
}

/// The parameters of a run, after defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Measured seconds.
    pub duration: f64,
    /// Warm-up seconds.
    pub warmup: f64,
    /// Drain seconds.
    pub drain: f64,
    /// Latency sampling.
    pub sample_every: usize,
    /// Noise threshold, % of a core.
    pub max_noise: f64,
    /// Retries of noisy runs.
    pub noise_retries: usize,
    /// The server's CPUs (`taskset -c` list).
    pub server_cpus: String,
    /// Whether this is a `--quick` run.
    pub quick: bool,
    /// Rounds.
    pub rounds: usize,
}

/// The scenarios for `subs` subscribers: one channel at 1,000 publishes/s, the same at each
/// of `low_rates`, then channels of 10 subscribers at 1,000 publishes/s.
pub fn scenarios(subs: usize, low_rates: &[f64]) -> Vec<Scenario> {
    let one = |key: String, rate: f64| Scenario {
        key,
        subs,
        channels: 1,
        rate,
    };
    let mut all = vec![one("one".into(), 1000.0)];
    all.extend(
        low_rates
            .iter()
            .filter(|r| **r > 0.0)
            .map(|&r| one(format!("one-{r}"), r)),
    );
    all.push(Scenario {
        key: "many".into(),
        subs,
        channels: (subs / 10).max(1),
        rate: 1000.0,
    });
    all
}

/// The keys of `scenarios`, comma-separated.
fn keys(scenarios: &[Scenario]) -> String {
    harness::names(scenarios, |s| s.key.as_str())
}

/// What noisy runs are repeated by.
fn retries(s: &Settings) -> Retries {
    Retries {
        retries: s.noise_retries,
        max_noise: s.max_noise,
    }
}

/// The load generator's command line for `scenario` against `kind` at `addr` (the server
/// measured is `server_pid`); callers add their own options.
fn load_args(
    s: &Settings,
    scenario: &Scenario,
    kind: Kind,
    addr: SocketAddr,
    setup_timeout: f64,
    server_pid: u32,
) -> Vec<String> {
    child::strings(&[
        "fanout-load",
        "--json",
        "--kind",
        kind.name(),
        "--addr",
        &addr.to_string(),
        "--subs",
        &scenario.subs.to_string(),
        "--channels",
        &scenario.channels.to_string(),
        "--rate",
        &scenario.rate.to_string(),
        "--warmup",
        &s.warmup.to_string(),
        "--duration",
        &s.duration.to_string(),
        "--drain",
        &s.drain.to_string(),
        "--sample-every",
        &s.sample_every.to_string(),
        "--setup-timeout",
        &setup_timeout.to_string(),
        "--server-pid",
        &server_pid.to_string(),
    ])
}

/// One server in one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The server.
    pub kind: Kind,
    /// The kept run of every round that succeeded.
    pub runs: Vec<LoadReport>,
    /// Their summary (medians; losses and disconnects: the worst round).
    pub report: Option<LoadReport>,
    /// Failures and remarks.
    pub notes: Vec<String>,
}

/// Runs the benchmark and prints (and optionally writes) the results.
pub fn main(args: &FanoutArgs) -> Result<()> {
    let quick = args.quick;
    let settings = Settings {
        duration: args.duration.unwrap_or(if quick { 2.0 } else { 10.0 }),
        warmup: args.warmup.unwrap_or(if quick { 0.5 } else { 2.0 }),
        drain: args.drain.unwrap_or(if quick { 2.0 } else { 5.0 }),
        sample_every: args.sample_every.max(1),
        max_noise: args.max_noise,
        noise_retries: args.noise_retries.unwrap_or(if quick { 0 } else { 1 }),
        server_cpus: args.server_cpus.clone(),
        rounds: args.rounds.max(1),
        quick,
    };
    let subs = args.subs.unwrap_or(if quick { 1_000 } else { 10_000 });
    let mut chosen = scenarios(subs, &args.low_rates);
    if !args.scenarios.is_empty() {
        for key in &args.scenarios {
            ensure!(
                chosen.iter().any(|s| &s.key == key),
                "unknown scenario `{key}` (one of: {})",
                keys(&chosen)
            );
        }
        chosen.retain(|s| args.scenarios.contains(&s.key));
    }
    if args.engine != EngineChoice::Memory {
        ensure!(
            args.server_cpus == process::SERVER_CPU,
            "--server-cpus is for --engine memory only"
        );
        return main_redis(args, settings, &chosen);
    }
    let kinds: Vec<Kind> = if args.servers.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.servers.clone()
    };
    let self_exe = std::env::current_exe().context("locating this executable")?;
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
    ensure!(
        std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok(),
        "`taskset` (util-linux) is needed to pin the server and the load generator"
    );
    for kind in &kinds {
        servers::ensure_installed(*kind)?;
    }
    let work = std::env::temp_dir().join("switchboard-bench");
    std::fs::create_dir_all(&work)?;
    if kinds.contains(&Kind::Switchboard) || kinds.contains(&Kind::SwitchboardSio) {
        check_switchboard_config(switchboard.as_deref(), &work)?;
    }
    eprintln!(
        "fan-out: servers {}; scenarios {}; logs in {}",
        harness::names(&kinds, |k| k.name()),
        keys(&chosen),
        work.display()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ctx = Ctx {
        settings: settings.clone(),
        self_exe,
        switchboard: switchboard.clone(),
        work,
    };
    let mut results: Vec<(Scenario, Vec<Outcome>)> = chosen
        .iter()
        .map(|scenario| {
            let outcomes = kinds
                .iter()
                .map(|&kind| Outcome {
                    kind,
                    runs: vec![],
                    report: None,
                    notes: vec![],
                })
                .collect();
            (scenario.clone(), outcomes)
        })
        .collect();
    runtime.block_on(async {
        for round in 0..settings.rounds {
            for (scenario, outcomes) in &mut results {
                // Rotate the order each round, so no server always runs first.
                rotated(outcomes, round, async |outcome| {
                    ctx.scenario(scenario, outcome, round).await;
                })
                .await;
            }
        }
    });
    for (_, outcomes) in &mut results {
        for outcome in outcomes {
            outcome.report = report::summary(&outcome.runs);
        }
    }

    let versions = servers::versions(&kinds, switchboard.as_deref());
    let text = report::tables(&results, &settings);
    println!("{text}");
    if let Some(out) = &args.out {
        let section = report::section(
            &results,
            &settings,
            &versions,
            &crate::harness::markdown::command_line(),
        );
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let doc = report::replace_section(&old, &section);
        std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote the Fan-out section of {}", out.display());
    }
    Ok(())
}

/// `fanout --engine redis`: switchboard in memory vs two nodes and Redis (see [`redis`]);
/// `--engine nats` adds two nodes and NATS.
fn main_redis(args: &FanoutArgs, settings: Settings, chosen: &[Scenario]) -> Result<()> {
    let nats = args.engine == EngineChoice::Nats;
    if nats {
        ensure!(
            std::process::Command::new(redis::nats_server_binary())
                .arg("--version")
                .output()
                .is_ok(),
            "`nats-server` is needed for --engine nats (apt-get install nats-server, or set NATS_SERVER)"
        );
    }
    let self_exe = std::env::current_exe().context("locating this executable")?;
    let switchboard = harness::switchboard_binary(args.switchboard.as_deref(), &self_exe)?;
    ensure!(
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "`redis-server` is needed for --engine redis (apt-get install redis-server)"
    );
    let work = std::env::temp_dir().join("switchboard-bench");
    std::fs::create_dir_all(&work)?;
    check_switchboard_config(Some(&switchboard), &work)?;
    eprintln!(
        "fan-out with Redis: scenarios {}; logs in {}",
        keys(chosen),
        work.display()
    );
    let ctx = redis::Ctx {
        settings: settings.clone(),
        self_exe,
        switchboard,
        work,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load_before = crate::transports::report::load_average();
    let engines: &[redis::Engine] = if nats {
        &[
            redis::Engine::Memory,
            redis::Engine::Redis,
            redis::Engine::Nats,
        ]
    } else {
        &[redis::Engine::Memory, redis::Engine::Redis]
    };
    let results = runtime.block_on(redis::run_all(&ctx, chosen, engines));
    let load_after = crate::transports::report::load_average();
    println!("{}", redis::tables(&results));
    if let Some(out) = &args.out {
        let command = crate::harness::markdown::command_line();
        let load = (load_before.as_str(), load_after.as_str());
        let (section, begin, end, name) = if nats {
            let s = redis::nats_section(&results, &settings, &command, load);
            (s, redis::NATS_BEGIN, redis::NATS_END, "NATS")
        } else {
            let s = redis::section(&results, &settings, &command, load);
            (s, redis::BEGIN, redis::END, "Redis")
        };
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let doc = crate::transports::report::replace_between(&old, begin, end, &section);
        std::fs::write(out, doc).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote the Fan-out with {name} section of {}", out.display());
    }
    Ok(())
}

/// Runs `switchboard checkconfig` on the bench configuration, so a renamed key fails early.
fn check_switchboard_config(binary: Option<&Path>, work: &Path) -> Result<()> {
    let argv = servers::argv(Kind::Switchboard, binary, "127.0.0.1:1".parse()?, work)?;
    let config = &argv[3];
    let output = std::process::Command::new(&argv[0])
        .arg("checkconfig")
        .arg(config)
        .output()
        .context("running switchboard checkconfig")?;
    ensure!(
        output.status.success(),
        "switchboard refuses the bench configuration: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// What every run needs.
struct Ctx {
    settings: Settings,
    self_exe: PathBuf,
    switchboard: Option<PathBuf>,
    work: PathBuf,
}

impl Ctx {
    /// One round of `outcome`'s server in `scenario`, repeated while noisy; the least noisy run
    /// is kept.
    async fn scenario(&self, scenario: &Scenario, outcome: &mut Outcome, round: usize) {
        let kind = outcome.kind;
        let tag = format!(
            "[{}/{}] [{}] {}",
            round + 1,
            self.settings.rounds,
            scenario.key,
            kind.name()
        );
        let once = async || self.once(scenario, kind).await;
        let kept = retries(&self.settings)
            .quietest(&tag, round, &mut outcome.notes, once, |r| {
                let other = r.core.other_cpu_pct.unwrap_or(0.0);
                format!(
                    "{:.0} deliveries/s of {:.0} offered, p50 {} µs, p99 {} µs, server CPU {:.0} %, \
                     client CPU {:.0} %, missing {}, ended {}, other processes {other:.0} %",
                    r.deliveries_per_s,
                    r.offered_per_s,
                    r.core.latency_p50_us,
                    r.core.latency_p99_us,
                    r.server_cpu_pct.unwrap_or(f64::NAN),
                    r.core.client_cpu_pct,
                    r.core.missing,
                    r.core.ended,
                )
            })
            .await;
        outcome.runs.extend(kept);
    }

    /// One run against a fresh server.
    async fn once(&self, scenario: &Scenario, kind: Kind) -> Result<LoadReport> {
        let s = &self.settings;
        let addr = process::free_addr()?;
        let argv = servers::argv(kind, self.switchboard.as_deref(), addr, &self.work)?;
        let log = self
            .work
            .join(format!("fanout-{}-{}.log", kind.name(), scenario.key));
        let mut server =
            process::start_pinned_on(&s.server_cpus, kind.name(), &argv, addr, log).await?;
        let setup_timeout = 180.0;
        let args = load_args(s, scenario, kind, addr, setup_timeout, server.pid);
        let limit = child::report_limit(setup_timeout, s.warmup, s.duration, s.drain);
        let servers = std::slice::from_mut(&mut server);
        let result = child::load_report(&self.self_exe, args, limit, servers).await;
        server.stop().await;
        result
    }
}
