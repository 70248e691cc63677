//! Turns the orchestrator's results into markdown: the comparison table (medians over rounds),
//! a table of run details (spread, CPU, noise, handshake rate), notes, and for `--out` a whole
//! document with the machine and the exact command.

use std::fmt::Write as _;

use super::results::{Results, Server, Settings};
use crate::harness::markdown::{machine, med, opt, thousands};
use crate::harness::process::stdout_line;
use crate::tput::TputReport;

/// `10000` → `10k`, `1500` → `1.5k`.
fn short_count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else if n >= 1000 {
        format!("{:.1}k", n as f64 / 1000.0)
    } else {
        n.to_string()
    }
}

/// Whether other processes used more than `--max-noise` % of a core during a throughput run.
fn is_noisy(t: &TputReport, s: &Settings) -> bool {
    t.other_cpu_pct.is_some_and(|o| o > s.max_noise)
}

/// The throughput runs the figures are taken from: the clean ones if there are any, otherwise
/// all of them (then the second value is true and the figures are marked noisy).
fn used_runs<'a>(r: &'a Results, s: &Settings) -> (Vec<&'a TputReport>, bool) {
    let clean: Vec<&TputReport> = r.tput.iter().filter(|t| !is_noisy(t, s)).collect();
    if clean.is_empty() {
        (r.tput.iter().collect(), !r.tput.is_empty())
    } else {
        (clean, false)
    }
}

/// The results table, the details table and the notes, as markdown.
pub fn tables(results: &[Results], s: &Settings) -> String {
    let msgs = |r: &Results| med(&used_runs(r, s).0, |t| Some(t.msgs_per_s));
    let best_rust = results
        .iter()
        .filter(|r| r.server.is_rust_peer())
        .filter_map(|r| msgs(r).map(|m| (r.server.name(), m)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let rawtcp = results
        .iter()
        .find(|r| r.server.name() == "rawtcp")
        .and_then(msgs);
    let idle = short_count(s.idle_conns);
    let one = |x: f64| format!("{x:.1}");
    let none = |x: f64| format!("{x:.0}");

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| server | msgs/s | × best Rust peer | × rawtcp | RTT p50 / p99 µs | server CPU µs/msg | \
         KiB/conn @{idle} | RSS @{idle} MiB | max conns | KiB/conn @max | RSS @max MiB |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut any_noisy = false;
    for r in results {
        let (runs, noisy) = used_runs(r, s);
        any_noisy |= noisy;
        let m = msgs(r);
        let ratio = |base: Option<f64>| opt(m.zip(base).map(|(m, b)| m / b), |x| format!("{x:.2}"));
        let p50 = med(&runs, |t| Some(t.rtt_p50_us as f64));
        let p99 = med(&runs, |t| Some(t.rtt_p99_us as f64));
        let rtt = match (p50, p99) {
            (Some(a), Some(b)) => format!("{} / {}", thousands(a), thousands(b)),
            _ => "–".into(),
        };
        let capped = r.max.iter().any(|x| x.capped);
        let _ = writeln!(
            out,
            "| {} | {}{} | {} | {} | {rtt} | {} | {} | {} | {}{} | {} | {} |",
            r.server.name(),
            opt(m, thousands),
            if noisy { " *" } else { "" },
            ratio(best_rust.map(|b| b.1)),
            ratio(rawtcp),
            opt(med(&runs, |t| t.server_us_per_msg), |x| format!("{x:.2}")),
            opt(med(&r.idle, |i| i.kib_per_conn_echo), one),
            opt(
                med(&r.idle, |i| i.rss_echo_kib.map(|k| k as f64 / 1024.0)),
                none
            ),
            opt(med(&r.max, |x| Some(x.conns as f64)), thousands),
            if capped { " ¹" } else { "" },
            opt(med(&r.max, |x| Some(x.kib_per_conn)), one),
            opt(med(&r.max, |x| Some(x.rss_kib as f64 / 1024.0)), none),
        );
    }
    out.push('\n');
    if let Some((name, m)) = best_rust {
        let _ = writeln!(
            out,
            "× best Rust peer: msgs/s ÷ {name} ({} msgs/s).",
            thousands(m)
        );
    }
    if any_noisy {
        let _ = writeln!(
            out,
            "\\* noisy: other processes used more than {:.0} % of a core in every run of this \
             server (otherwise only clean runs are used).",
            s.max_noise
        );
    }
    if let Some(limit) = results
        .iter()
        .flat_map(|r| &r.max)
        .filter(|x| x.capped)
        .map(|x| x.fd_limit)
        .max()
    {
        let _ = writeln!(
            out,
            "¹ capped by the server process's open-file limit ({}): one process cannot hold more \
             connections on this machine.",
            thousands(limit as f64)
        );
    }

    let _ = writeln!(
        out,
        "\n| server | tput runs used/made | msgs/s [min–max] of used | RTT p99.9 µs | client CPU % | \
         other CPU % (noise) | handshakes/s | idle client processes @max |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in results {
        let (runs, _) = used_runs(r, s);
        let rates = runs.iter().map(|t| t.msgs_per_s);
        let range = match (rates.clone().reduce(f64::min), rates.reduce(f64::max)) {
            (Some(lo), Some(hi)) => format!("[{}–{}]", thousands(lo), thousands(hi)),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {}/{} | {range} | {} | {} | {} | {} | {} |",
            r.server.name(),
            runs.len(),
            r.tput.len(),
            opt(med(&runs, |t| Some(t.rtt_p999_us as f64)), thousands),
            opt(med(&runs, |t| Some(t.client_cpu_pct)), none),
            opt(med(&runs, |t| t.other_cpu_pct), none),
            opt(med(&r.idle, |i| Some(i.handshakes_per_s)), thousands),
            opt(med(&r.max, |x| Some(x.processes as f64)), none),
        );
    }
    let notes: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.notes
                .iter()
                .map(move |n| format!("- {}: {n}", r.server.name()))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n{}", notes.join("\n"));
    }
    out
}

/// What was measured: the date, the source revision and the switchboard binary.
fn subject(results: &[Results]) -> Vec<(&'static str, String)> {
    let mut lines = vec![(
        "date",
        stdout_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
    )];
    if let Some(rev) = stdout_line("git", &["describe", "--always", "--dirty"]) {
        lines.push(("git revision", rev));
    }
    for r in results {
        if let Server::Switchboard(path) = &r.server {
            let path_text = path.display().to_string();
            let version = stdout_line(&path_text, &["--version"]).unwrap_or_default();
            let built = stdout_line("date", &["-u", "-r", &path_text, "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_default();
            lines.push((
                "switchboard binary",
                format!("{path_text} ({version}, built {built})"),
            ));
        }
    }
    lines
}

/// The part of the document that explains how to run the tool.
const HOW_TO_RUN: &str = "
## How to run

```sh
cargo build --release -p switchboard -p switchboard-bench
# every server and test, medians over 3 rounds, written here:
target/release/switchboard-bench run --rounds 3 --out docs/benchmarks.md
# CI smoke run (2 s throughput, 1,000 + 1,000 idle connections):
target/release/switchboard-bench run --quick
# one server or one test by hand:
target/release/switchboard-bench peer tungstenite --listen 127.0.0.1:9001 &
target/release/switchboard-bench tput --addr 127.0.0.1:9001 --path /echo --server-pid $!
target/release/switchboard-bench idle --addr 127.0.0.1:9001 -n 10000 --server-pid $! --hold 5
```

`run` needs `taskset` (util-linux) and two cores; `node-ws` needs Node.js and npm (the tool runs
`npm ci --prefix crates/bench/peers/node-ws` when `node_modules` is missing). The switchboard
binary is taken from next to `switchboard-bench` (`target/release/switchboard`) or `--switchboard
PATH`, and started as `switchboard serve --listen 127.0.0.1:PORT --echo`. Server logs go to
`$TMPDIR/switchboard-bench/`. On a shared machine, watch the *other CPU %* column: runs where
other processes were busy are retried (`--noise-retries`) and marked `*` when they stay noisy.
";

/// The whole markdown document written by `run --out`.
pub fn document(results: &[Results], s: &Settings, command: &str) -> String {
    let mut out = String::from("# Benchmarks\n\n");
    out.push_str(
        "Generated by `switchboard-bench run` (crates/bench); rerun it rather than editing the numbers.\n\n",
    );
    out.push_str("## Machine\n\n");
    for (label, value) in subject(results).into_iter().chain(machine()) {
        let _ = writeln!(out, "- {label}: {value}");
    }
    let _ = writeln!(out, "\n## Command\n\n```\n{command}\n```\n");
    let _ = writeln!(
        out,
        "## Method\n\n\
         - Every test starts a fresh server process pinned to CPU 0 (`taskset -c 0`, open-file limit \
           raised to the hard limit); the load generator runs pinned to CPU 1. The Rust peers run \
           tokio with one worker thread behind a hyper 1.x upgrade; Node is single-threaded.\n\
         - Throughput: {} connections, {} B text messages, {} in flight per connection, {} s warm-up, \
           {} s measured; every echo is checked byte for byte. RTT under this load is mostly queueing.\n\
         - Server CPU µs/msg: the server's user + system time (from /proc) in the window ÷ echoes; \
           the kernel accounts softirq time (much of the loopback work) apart, so it is not in it. \
           When the client CPU (details table) is near 100 %, msgs/s is what this two-core box does \
           end to end rather than the server's ceiling: compare servers by CPU µs/msg then.\n\
         - Idle: {} connections (64 handshakes in flight, sources 127.0.0.2…), one echo each, 1 s \
           settle, then the server's RSS; KiB/conn = (RSS − RSS before) ÷ connections. Then more \
           client processes (each holds ≤ {}) add connections up to {} or as many as the server's \
           open-file limit allows.\n\
         - {} round(s) in rotating server order; figures are medians over rounds. Other CPU % is \
           the user + system CPU of processes other than the server and the load generator during \
           the throughput window: a run above {:.0} % of a core is noisy, is repeated up to {} \
           time(s) (the least noisy attempt is kept), and throughput figures use clean runs only \
           when there are any.\n",
        s.conns,
        s.size,
        s.in_flight,
        s.warmup,
        s.duration,
        thousands(s.idle_conns as f64),
        thousands(s.per_process as f64),
        thousands(s.max_conns as f64),
        s.rounds,
        s.max_noise,
        s.noise_retries,
    );
    let _ = writeln!(out, "## Results\n\n{}", tables(results, s));
    out.push_str(HOW_TO_RUN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msgs_per_s: f64, other_cpu_pct: f64) -> TputReport {
        TputReport {
            conns: 100,
            size: 64,
            in_flight: 32,
            seconds: 10.0,
            messages: (msgs_per_s * 10.0) as u64,
            msgs_per_s,
            rtt_p50_us: 1_000,
            rtt_p99_us: 2_000,
            rtt_p999_us: 3_000,
            rtt_max_us: 4_000,
            server_cpu_s: Some(9.0),
            server_us_per_msg: Some(1.0),
            client_cpu_pct: 90.0,
            other_cpu_pct: Some(other_cpu_pct),
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn figures_come_from_clean_runs_when_there_are_any() {
        let settings = Settings {
            conns: 100,
            size: 64,
            in_flight: 32,
            warmup: 1.0,
            duration: 10.0,
            idle_conns: 10_000,
            max_conns: 50_000,
            per_process: 15_000,
            rounds: 3,
            max_noise: 15.0,
            noise_retries: 2,
        };
        let mut results = Results::new(Server::Peer(crate::peers::Peer::Rawtcp));
        results.tput = vec![run(100.0, 90.0), run(300.0, 2.0), run(200.0, 5.0)];
        let (used, noisy) = used_runs(&results, &settings);
        assert!(!noisy);
        assert_eq!(
            used.iter().map(|t| t.msgs_per_s).collect::<Vec<_>>(),
            [300.0, 200.0]
        );
        let table = tables(std::slice::from_ref(&results), &settings);
        assert!(table.contains("| rawtcp | 250 | – | 1.00 |"), "{table}");

        results.tput = vec![run(100.0, 90.0)];
        assert!(used_runs(&results, &settings).1, "only noisy runs: marked");
        assert!(tables(&[results], &settings).contains("| 100 * |"));
    }

    #[test]
    fn formats_short_counts() {
        assert_eq!(short_count(10_000), "10k");
        assert_eq!(short_count(1_500), "1.5k");
    }
}
