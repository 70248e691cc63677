//! The fan-out results as markdown: one table per scenario, a details table, automatic notes
//! (client-bound, server saturated, losses, noise), the check of the targets, and the "Fan-out"
//! section of docs/benchmarks.md between markers, so that it can be replaced on its own.

use std::fmt::Write as _;

pub use crate::harness::markdown::thousands;
use crate::harness::markdown::{FANOUT_BEGIN, machine, median};
use crate::harness::process::stdout_line;

use super::load::LoadReport;
use super::wire::Kind;
use super::{Outcome, Scenario, Settings};

/// First line of the generated section.
pub const BEGIN: &str = FANOUT_BEGIN;
/// Last line of the generated section.
pub const END: &str = "<!-- fanout:end -->";

/// CPU use at or above which a process counts as saturated, % of a core.
const SATURATED: f64 = 90.0;
/// Targets to check.
const TARGET_RATIO: f64 = 3.0;
const TARGET_P99_US: u64 = 10_000;

/// Microseconds as milliseconds with a precision that fits the size.
pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        thousands(v)
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.0}", k as f64 / 1024.0))
}

/// `10000` → `10k`.
fn short(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        thousands(n as f64)
    }
}

/// The heading of a scenario.
pub fn title(s: &Scenario) -> String {
    if s.channels == 1 {
        format!(
            "One channel, {} subscribers, {} publish{}/s (offered {} deliveries/s)",
            short(s.subs),
            thousands(s.rate),
            if s.rate == 1.0 { "" } else { "es" },
            thousands(s.offered())
        )
    } else {
        format!(
            "{} channels × {} subscribers ({} connections), {} publishes/s round-robin (offered {} deliveries/s)",
            short(s.channels),
            s.per_channel(),
            short(s.subs),
            thousands(s.rate),
            thousands(s.offered())
        )
    }
}

/// The raw reference's result in a scenario (see `fanout-raw`): the physical limit.
fn raw_report(outcomes: &[Outcome]) -> Option<&LoadReport> {
    outcomes
        .iter()
        .find(|o| o.kind == Kind::Raw)
        .and_then(|o| o.report.as_ref())
}

/// `r`'s latency p50 / p99 and server CPU as multiples of the raw reference's (1.00: at the
/// physical limit).
fn versus_raw(r: &LoadReport, raw: Option<&LoadReport>) -> String {
    let Some(raw) = raw else {
        return "–".into();
    };
    let ratio = |a: f64, b: f64| {
        if b > 0.0 && a.is_finite() {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    format!(
        "{} / {} / {}",
        ratio(r.core.latency_p50_us as f64, raw.core.latency_p50_us as f64),
        ratio(r.core.latency_p99_us as f64, raw.core.latency_p99_us as f64),
        match (r.server_cpu_pct, raw.server_cpu_pct) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "–".into(),
        }
    )
}

fn nchan_rate(outcomes: &[Outcome]) -> Option<f64> {
    outcomes
        .iter()
        .find(|o| o.kind == Kind::Nchan)
        .and_then(|o| o.report.as_ref())
        .map(|r| r.deliveries_per_s)
        .filter(|r| *r > 0.0)
}

/// The summary of a server's rounds in one scenario: medians of the measured figures, the worst
/// round for losses, disconnects and failures; `None` without any run.
pub fn summary(runs: &[LoadReport]) -> Option<LoadReport> {
    let mut out = runs.first()?.clone();
    let med =
        |f: &dyn Fn(&LoadReport) -> f64| median(runs.iter().map(f).collect()).unwrap_or(f64::NAN);
    let med_opt =
        |f: &dyn Fn(&LoadReport) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let med_u = |f: &dyn Fn(&LoadReport) -> u64| med(&|r| f(r) as f64).round() as u64;
    let max_u = |f: &dyn Fn(&LoadReport) -> u64| runs.iter().map(f).max().unwrap_or(0);
    out.subscribe_s = med(&|r| r.subscribe_s);
    out.core.seconds = med(&|r| r.core.seconds);
    out.core.published = med_u(&|r| r.core.published);
    out.core.published_window = med_u(&|r| r.core.published_window);
    out.publish_max_late_ms = med(&|r| r.publish_max_late_ms);
    out.core.deliveries_window = med_u(&|r| r.core.deliveries_window);
    out.deliveries_per_s = med(&|r| r.deliveries_per_s);
    out.offered_per_s = med(&|r| r.offered_per_s);
    out.core.latency_p50_us = med_u(&|r| r.core.latency_p50_us);
    out.core.latency_p99_us = med_u(&|r| r.core.latency_p99_us);
    out.latency_p999_us = med_u(&|r| r.latency_p999_us);
    out.core.latency_max_us = med_u(&|r| r.core.latency_max_us);
    out.read_latency_p50_us = med_u(&|r| r.read_latency_p50_us);
    out.read_latency_p99_us = med_u(&|r| r.read_latency_p99_us);
    out.server_cpu_pct = med_opt(&|r| r.server_cpu_pct);
    out.server_system_pct = med_opt(&|r| r.server_system_pct);
    out.server_core_busy_pct = med(&|r| r.server_core_busy_pct);
    out.core.client_cpu_pct = med(&|r| r.core.client_cpu_pct);
    out.client_core_busy_pct = med(&|r| r.client_core_busy_pct);
    out.core.other_cpu_pct = med_opt(&|r| r.core.other_cpu_pct);
    let med_kib = |f: &dyn Fn(&LoadReport) -> Option<u64>| {
        med_opt(&|r| f(r).map(|k| k as f64)).map(|k| k.round() as u64)
    };
    out.core.rss_before_kib = med_kib(&|r| r.core.rss_before_kib);
    out.rss_subscribed_kib = med_kib(&|r| r.rss_subscribed_kib);
    out.core.rss_window_kib = med_kib(&|r| r.core.rss_window_kib);
    out.rss_end_kib = med_kib(&|r| r.rss_end_kib);
    out.kib_per_sub = med_opt(&|r| r.kib_per_sub);
    out.drain_s = med(&|r| r.drain_s);
    out.publish_acked = med_opt(&|r| r.publish_acked.map(|a| a as f64)).map(|a| a.round() as u64);
    out.core.drained = runs.iter().all(|r| r.core.drained);
    // The worst round for what went wrong.
    let worst = runs
        .iter()
        .max_by_key(|r| {
            (
                r.core.ended,
                r.core.missing,
                r.core.duplicates + r.core.out_of_order,
            )
        })
        .unwrap_or(&out)
        .clone();
    let r = &worst;
    out.subscribed = r.subscribed;
    out.server_counted_subs = r.server_counted_subs;
    out.core.expected = r.core.expected;
    out.core.deliveries = r.core.deliveries;
    out.core.missing = r.core.missing;
    out.gaps = r.gaps;
    out.undelivered = r.undelivered;
    out.core.ended = r.core.ended;
    out.core.end_reasons = r.core.end_reasons.clone();
    out.core.duplicates = max_u(&|r| r.core.duplicates);
    out.core.out_of_order = max_u(&|r| r.core.out_of_order);
    out.offset_gaps = max_u(&|r| r.offset_gaps);
    out.core.publish_errors = max_u(&|r| r.core.publish_errors);
    out.core.publish_first_error = runs.iter().find_map(|r| r.core.publish_first_error.clone());
    out.core.setup_failures = max_u(&|r| r.core.setup_failures as u64) as usize;
    out.core.first_error = runs.iter().find_map(|r| r.core.first_error.clone());
    Some(out)
}

/// Remarks on one run that a reader needs to read its numbers right.
fn remarks(r: &LoadReport, s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let share = if r.offered_per_s > 0.0 {
        r.deliveries_per_s / r.offered_per_s
    } else {
        1.0
    };
    if share < 0.98 {
        out.push(format!(
            "did not keep up: delivered {:.0} % of the offered rate",
            share * 100.0
        ));
    }
    if r.server_cpu_pct.is_some_and(|c| c >= SATURATED) {
        out.push(format!(
            "server CPU saturated ({:.0} % of its core, {} % of it in the kernel)",
            r.server_cpu_pct.unwrap_or(0.0),
            pct(r.server_system_pct)
        ));
    } else if r.server_core_busy_pct >= SATURATED {
        out.push(format!(
            "server core saturated: {:.0} % busy counting softirq, {} % in the server process",
            r.server_core_busy_pct,
            pct(r.server_cpu_pct)
        ));
    }
    if r.core.client_cpu_pct >= SATURATED || r.client_core_busy_pct >= SATURATED {
        out.push(format!(
            "client-bound: the load generator used {:.0} % of its core ({:.0} % busy counting \
             softirq), so deliveries/s and latency are limits of this box, not only of the server",
            r.core.client_cpu_pct, r.client_core_busy_pct
        ));
    }
    if r.core.other_cpu_pct.is_some_and(|o| o > s.max_noise) {
        out.push(format!(
            "noisy: other processes used {:.0} % of a core",
            r.core.other_cpu_pct.unwrap_or(0.0)
        ));
    }
    if r.core.published_window as f64 / r.core.seconds < 0.95 * r.rate {
        out.push(format!(
            "the publisher was held back: {:.0} publishes/s sent of {:.0} (max {:.0} ms late)",
            r.core.published_window as f64 / r.core.seconds,
            r.rate,
            r.publish_max_late_ms
        ));
    }
    if r.core.latency_samples > 0 && r.stamped_reads == 0 {
        out.push("no kernel receive timestamps: latency taken when the load generator read".into());
    }
    if r.core.publish_errors > 0 {
        out.push(format!(
            "{} publish error(s): {}",
            r.core.publish_errors,
            r.core.publish_first_error.as_deref().unwrap_or("-")
        ));
    } else if let Some(e) = &r.core.publish_first_error {
        out.push(format!("publisher: {e}"));
    }
    if r.core.setup_failures > 0 {
        out.push(format!(
            "{} of {} subscriptions failed: {}",
            r.core.setup_failures,
            r.subs,
            r.core.first_error.as_deref().unwrap_or("-")
        ));
    }
    if let Some(n) = r.server_counted_subs
        && n != r.subscribed as u64
    {
        out.push(format!(
            "the server counts {n} subscribers, {} confirmed",
            r.subscribed
        ));
    }
    if r.core.ended > 0 {
        let reasons: Vec<String> = r
            .core
            .end_reasons
            .iter()
            .map(|(reason, n)| format!("{n} × `{reason}`"))
            .collect();
        out.push(format!(
            "{} subscriber connection(s) ended during the run: {}",
            r.core.ended,
            reasons.join(", ")
        ));
    }
    if r.gaps > 0 {
        out.push(format!(
            "{} deliveries lost: never received although later ones of the same channel were",
            thousands(r.gaps as f64)
        ));
    }
    if r.undelivered > 0 || !r.core.drained {
        out.push(format!(
            "{} of {} due deliveries had not arrived after a {:.1} s drain{}",
            thousands(r.undelivered as f64),
            thousands(r.core.expected as f64),
            r.drain_s,
            if r.core.drained {
                ""
            } else {
                " (connected subscribers still behind at its end)"
            }
        ));
    }
    out
}

/// `N: [lo–hi], [lo–hi]`: the rounds' deliveries/s and p99 ranges.
fn spread(runs: &[LoadReport]) -> String {
    let range = |values: Vec<f64>, f: &dyn Fn(f64) -> String| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if values.len() < 2 {
            f(lo)
        } else {
            format!("[{}–{}]", f(lo), f(hi))
        }
    };
    format!(
        "{}: {}, {}",
        runs.len(),
        range(
            runs.iter().map(|r| r.deliveries_per_s).collect(),
            &thousands
        ),
        range(
            runs.iter().map(|r| r.core.latency_p99_us as f64).collect(),
            &|v| ms(v as u64)
        )
    )
}

/// The tables (one per scenario, then the details), the notes and the targets.
pub fn tables(results: &[(Scenario, Vec<Outcome>)], s: &Settings) -> String {
    let mut out = String::new();
    let mut notes = Vec::new();
    for (scenario, outcomes) in results {
        let nchan = nchan_rate(outcomes);
        let raw = raw_report(outcomes);
        let _ = writeln!(out, "### {}\n", title(scenario));
        let _ = writeln!(
            out,
            "| server | deliveries/s | % of offered | × Nchan | latency p50 / p99 / p99.9 ms | \
             server CPU % | × raw: p50 / p99 / CPU | KiB/sub | client CPU % | lost in gaps / undelivered at end / dup / reordered | ended early |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for o in outcomes {
            let Some(r) = &o.report else {
                let _ = writeln!(out, "| {} | failed | | | | | | | | | |", o.kind.name());
                for n in &o.notes {
                    notes.push(format!("{} / {}: {n}", scenario.key, o.kind.name()));
                }
                continue;
            };
            let marks = remarks(r, s);
            let mark = if marks.is_empty() {
                String::new()
            } else {
                notes.push(format!(
                    "{} / {}: {}.",
                    scenario.key,
                    o.kind.name(),
                    marks.join("; ")
                ));
                format!(" ({})", notes.len())
            };
            let _ = writeln!(
                out,
                "| {}{mark} | {} | {:.0} | {} | {} / {} / {} | {} | {} | {} | {:.0} | {} / {} / {} / {} | {} |",
                o.kind.name(),
                thousands(r.deliveries_per_s),
                if r.offered_per_s > 0.0 {
                    r.deliveries_per_s / r.offered_per_s * 100.0
                } else {
                    0.0
                },
                nchan.map_or_else(|| "–".into(), |n| format!("{:.2}", r.deliveries_per_s / n)),
                ms(r.core.latency_p50_us),
                ms(r.core.latency_p99_us),
                ms(r.latency_p999_us),
                pct(r.server_cpu_pct),
                versus_raw(r, raw),
                r.kib_per_sub
                    .map_or_else(|| "–".into(), |k| format!("{k:.1}")),
                r.core.client_cpu_pct,
                thousands(r.gaps as f64),
                thousands(r.undelivered as f64),
                thousands(r.core.duplicates as f64),
                thousands(r.core.out_of_order as f64),
                r.core.ended,
            );
        }
        out.push('\n');
    }

    let _ = writeln!(
        out,
        "| scenario | server | rounds: deliveries/s, p99 ms [min–max] | publishes/s sent (max late ms) | subscribe s | RSS before / subscribed / \
         window end MiB | server CPU % in kernel | CPU 0 / CPU 1 busy % | publishes acked at end | latency max ms | \
         latency at read p50 / p99 ms | other CPU % | drained | switchboard offset gaps |"
    );
    let _ = writeln!(
        out,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (scenario, outcomes) in results {
        for o in outcomes {
            let Some(r) = &o.report else { continue };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} ({:.1}) | {:.1} | {} / {} / {} | {} | {:.0} / {:.0} | {} | {} | {} / {} | {} | {} | {} |",
                scenario.key,
                o.kind.name(),
                spread(&o.runs),
                thousands(r.core.published_window as f64 / r.core.seconds),
                r.publish_max_late_ms,
                r.subscribe_s,
                mib(r.core.rss_before_kib),
                mib(r.rss_subscribed_kib),
                mib(r.core.rss_window_kib),
                pct(r.server_system_pct),
                r.server_core_busy_pct,
                r.client_core_busy_pct,
                r.publish_acked.map_or_else(
                    || "–".into(),
                    |a| format!(
                        "{} of {}",
                        thousands(a as f64),
                        thousands(r.core.published as f64)
                    )
                ),
                ms(r.core.latency_max_us),
                ms(r.read_latency_p50_us),
                ms(r.read_latency_p99_us),
                pct(r.core.other_cpu_pct),
                if r.core.drained {
                    format!("yes, {:.1} s", r.drain_s)
                } else {
                    "no".into()
                },
                if o.kind == Kind::Switchboard {
                    thousands(r.offset_gaps as f64)
                } else {
                    "–".into()
                },
            );
        }
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for (i, n) in notes.iter().enumerate() {
            let _ = writeln!(out, "{}. {n}", i + 1);
        }
    }
    out.push_str("\n### Targets\n\n");
    out.push_str(&targets(results));
    out
}

/// Whether switchboard delivers ≥ 3× Nchan's deliveries/s and has p99 ≤ 10 ms, per scenario.
pub fn targets(results: &[(Scenario, Vec<Outcome>)]) -> String {
    let mut out = String::new();
    let find = |outcomes: &[Outcome], kind: Kind| {
        outcomes
            .iter()
            .find(|o| o.kind == kind)
            .and_then(|o| o.report.clone())
    };
    for (scenario, outcomes) in results {
        let Some(sb) = find(outcomes, Kind::Switchboard) else {
            continue;
        };
        let mut line = format!("- **{}** ({}): ", scenario.key, title(scenario));
        match find(outcomes, Kind::Nchan) {
            Some(n) if n.deliveries_per_s > 0.0 => {
                let ratio = sb.deliveries_per_s / n.deliveries_per_s;
                let nchan_full = n.deliveries_per_s >= 0.98 * n.offered_per_s;
                let verdict = if ratio >= TARGET_RATIO {
                    "met".to_string()
                } else if nchan_full {
                    "not measurable here: Nchan delivers all that is offered, so no server can \
                     reach 3× it"
                        .to_string()
                } else {
                    format!(
                        "**not met**, {:.0} % short of 3×",
                        (1.0 - ratio / TARGET_RATIO) * 100.0
                    )
                };
                let _ = write!(
                    line,
                    "deliveries/s {} vs Nchan {} = {ratio:.2}× (target ≥ {TARGET_RATIO}×): {verdict}. ",
                    thousands(sb.deliveries_per_s),
                    thousands(n.deliveries_per_s)
                );
            }
            _ => line.push_str("no Nchan result to compare with. "),
        }
        let p99 = sb.core.latency_p99_us;
        let verdict = if sb.core.latency_samples == 0 {
            "no latency samples".to_string()
        } else if p99 <= TARGET_P99_US {
            "met".to_string()
        } else {
            format!(
                "**not met**, {:.1}× the target",
                p99 as f64 / TARGET_P99_US as f64
            )
        };
        let _ = writeln!(
            line,
            "p99 {} ms at {} subscribers (target ≤ {} ms): {verdict}.",
            ms(p99),
            thousands(sb.subscribed as f64),
            ms(TARGET_P99_US)
        );
        out.push_str(&line);
    }
    out
}

/// The machine, the servers and the command.
fn preamble(versions: &[(String, String)], command: &str) -> String {
    let mut out = String::new();
    let first_line = |program: &str, args: &[&str]| stdout_line(program, args).unwrap_or_default();
    let _ = writeln!(
        out,
        "- date: {}",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(
        out,
        "- git revision: {}",
        first_line("git", &["describe", "--always", "--dirty"])
    );
    for (label, value) in machine() {
        if matches!(label, "CPUs (nproc)" | "CPU model" | "kernel") {
            let _ = writeln!(out, "- {label}: {value}");
        }
    }
    for (server, version) in versions {
        let _ = writeln!(out, "- {server}: {version}");
    }
    let _ = writeln!(out, "\n```\n{command}\n```\n");
    out
}

/// The method, as bullets.
fn method(s: &Settings) -> String {
    format!(
        "- Each run starts a fresh server pinned to {} and one load-generator process pinned to \
CPU 1 (its subscribers on one thread, the publisher on a second). Subscribers connect from \
127.0.0.2… (1,000 per address, 64 handshakes in flight) and each subscribes to one channel \
(subscriber i to channel i mod C); the run starts when every subscription is confirmed \
(switchboard: the `subscribe` reply; Socket.IO: the `sub` ack; Nchan: the 101, then the \
server's own subscriber count is checked).\n\
- switchboard: JSON protocol over WebSocket (`switchboard.json`), publisher = one more WebSocket \
client sending `publish` commands, namespace `bench` with `history_size = 100`, `history_ttl = \
\"60s\"`, `queue_bytes = 1048576`. Nchan: nginx 1 process (`master_process off`), WebSocket \
subscribers, HTTP POST publisher on 8 keep-alive connections (channel c on connection c mod 8, \
pipelined, so each channel keeps its order), `nchan_message_buffer_length 100`, \
`nchan_message_timeout 60s`. Socket.IO: one Node process, WebSocket transport only, rooms, \
`io.to(room).emit(\"pub\", data)` on the publisher's `pub` event; the load generator speaks \
Engine.IO v4 / Socket.IO v5 itself and answers pings. raw (`switchboard-bench fanout-raw`, the \
physical limit): one thread writes each publication's bytes (the WebSocket frame of switchboard's \
`pub` push, built once) to every subscriber's plain TCP socket with non-blocking write(2); no \
WebSocket state, queue or task per subscriber; spoken to as Nchan is (handshake answered once, \
HTTP POST publisher). \"× raw\" = a server's latency p50 / p99 and server CPU ÷ raw's.\n\
- Publications `{{\"t\":NANOS,\"seq\":N}}` are sent at a fixed rate, round-robin over the \
channels; {} s warm-up, then {} s measured. Deliveries/s = publications received by all \
subscribers in the window ÷ its length; offered = publications sent in the window × subscribers \
per channel ÷ its length. Latency = the kernel's receive timestamp (`SO_TIMESTAMPNS`) of the \
read that carried the publication − `t` (both the system clock), for every {} subscriber, in the \
window: when the data reached the subscriber's socket, so the load generator's own backlog is \
left out unless it made the server wait (a full TCP window); the details table gives the same \
latency taken when the load generator read it.\n\
- Every delivery is counted and checked per subscriber against its channel's sequence numbers \
(missing, duplicated, out of order) and, for switchboard, the channel offsets (each must be the \
previous + 1). Missing = due − received once publishing stopped and up to {} s of drain.\n\
- Server CPU and client CPU: user + system time from /proc in the window, % of one core (the \
details table gives the server's system time, i.e. in the kernel, apart). KiB/sub = (server RSS with every subscriber subscribed, 1 s after \
the last − RSS before the first connection) ÷ subscribers. Other CPU % (noise): processes other \
than the two; above {:.0} % the run is repeated (up to {} time(s)).\n\
- {} round(s), the server order rotated each round: the tables give medians over rounds, and for \
losses and disconnects the worst round.\n",
        if s.server_cpus == "0" {
            "CPU 0".to_string()
        } else {
            format!(
                "CPUs {} (sharing CPU 1 with the load generator: server and client figures \
                 of such a run are not those of a 1-core run)",
                s.server_cpus
            )
        },
        s.warmup,
        s.duration,
        if s.sample_every == 1 {
            String::new()
        } else {
            format!("{}th", s.sample_every)
        },
        s.drain,
        s.max_noise,
        s.noise_retries,
        s.rounds
    )
    .replace("every  subscriber", "every subscriber")
}

/// The whole generated section, between [`BEGIN`] and [`END`].
pub fn section(
    results: &[(Scenario, Vec<Outcome>)],
    s: &Settings,
    versions: &[(String, String)],
    command: &str,
) -> String {
    let mut out = format!("{BEGIN}\n## Fan-out\n\n");
    if s.quick {
        out.push_str("**Quick run** (`--quick`): small numbers, a smoke test only.\n\n");
    }
    out.push_str(&preamble(versions, command));
    out.push_str("Method:\n\n");
    out.push_str(&method(s));
    out.push('\n');
    out.push_str(&tables(results, s));
    out.push_str(
        "\nRun it: `cargo build --release -p switchboard -p switchboard-bench`, then \
`target/release/switchboard-bench fanout --rounds 3 --out docs/benchmarks.md` (about 10 minutes \
per round; `--quick` for a smoke run, `--servers`, `--scenarios one,one-100,one-10,one-1,many` to pick). Nchan needs Debian's \
`nginx` and `libnginx-mod-nchan` (the tool runs `crates/bench/peers/nchan/install.sh`, i.e. \
apt-get, when missing); Socket.IO needs Node.js and npm (`npm ci` in \
`crates/bench/peers/socketio` when `node_modules` is missing). One run by hand: start a server, \
then `switchboard-bench fanout-load --kind switchboard --addr 127.0.0.1:PORT -n 10000 -c 1 \
--rate 1000 --server-pid PID`.\n",
    );
    let _ = writeln!(out, "{END}");
    out
}

/// The generated section in `doc`, markers included.
pub fn find_section(doc: &str) -> Option<&str> {
    let start = doc.find(BEGIN)?;
    let end = doc[start..].find(END)? + start + END.len();
    let end = if doc[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    Some(&doc[start..end])
}

/// `doc` with its generated section replaced by `section` (appended when it has none; a new
/// document when `doc` is empty).
pub fn replace_section(doc: &str, section: &str) -> String {
    if doc.trim().is_empty() {
        return format!("# Benchmarks\n\n{section}");
    }
    match find_section(doc) {
        Some(old) => doc.replacen(old, section, 1),
        None => {
            let mut out = doc.trim_end().to_string();
            out.push_str("\n\n");
            out.push_str(section);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::ReportCore;

    fn report(kind: Kind, per_s: f64, offered: f64, p99: u64) -> LoadReport {
        LoadReport {
            kind,
            subs: 10_000,
            subscribed: 10_000,
            channels: 1,
            server_counted_subs: None,
            subscribe_s: 1.0,
            rate: 1000.0,
            publish_acked: Some(12_000),
            publish_max_late_ms: 1.0,
            deliveries_per_s: per_s,
            offered_per_s: offered,
            gaps: 0,
            undelivered: 0,
            offset_gaps: 0,
            latency_p999_us: p99,
            read_latency_p50_us: 600,
            read_latency_p99_us: p99,
            stamped_reads: 100,
            server_cpu_pct: Some(50.0),
            server_system_pct: Some(30.0),
            server_core_busy_pct: 60.0,
            client_core_busy_pct: 60.0,
            server_others_cpu_pct: vec![],
            publish_call_p50_us: None,
            publish_call_p99_us: None,
            rss_subscribed_kib: Some(2048),
            rss_end_kib: Some(2048),
            kib_per_sub: Some(0.1),
            drain_s: 0.1,
            core: ReportCore {
                seconds: 10.0,
                published: 12_000,
                published_window: 10_000,
                publish_errors: 0,
                publish_first_error: None,
                deliveries_window: (per_s * 10.0) as u64,
                deliveries: 1,
                expected: 1,
                missing: 0,
                duplicates: 0,
                out_of_order: 0,
                latency_samples: 100,
                latency_p50_us: 500,
                latency_p99_us: p99,
                latency_max_us: p99,
                client_cpu_pct: 50.0,
                other_cpu_pct: Some(1.0),
                rss_before_kib: Some(1024),
                rss_window_kib: Some(2048),
                drained: true,
                ended: 0,
                end_reasons: Default::default(),
                setup_failures: 0,
                first_error: None,
            },
        }
    }

    fn settings() -> Settings {
        Settings {
            duration: 10.0,
            warmup: 2.0,
            drain: 5.0,
            sample_every: 1,
            max_noise: 15.0,
            noise_retries: 1,
            server_cpus: "0".into(),
            quick: false,
            rounds: 1,
        }
    }

    fn outcome(r: LoadReport) -> Outcome {
        Outcome {
            kind: r.kind,
            runs: vec![r.clone()],
            report: Some(r),
            notes: vec![],
        }
    }

    #[test]
    fn targets_say_met_or_not() {
        let scenario = Scenario {
            key: "one".into(),
            subs: 10_000,
            channels: 1,
            rate: 1000.0,
        };
        let results = vec![(
            scenario,
            vec![
                outcome(report(Kind::Switchboard, 2_000_000.0, 10_000_000.0, 20_000)),
                outcome(report(Kind::Nchan, 1_000_000.0, 10_000_000.0, 5_000)),
            ],
        )];
        let text = targets(&results);
        assert!(text.contains("2.00×"), "{text}");
        assert!(text.contains("**not met**, 33 % short of 3×"), "{text}");
        assert!(text.contains("p99 20.0 ms"), "{text}");
        assert!(text.contains("2.0× the target"), "{text}");
        let table = tables(&results, &settings());
        assert!(
            table.contains("| switchboard (1) | 2,000,000 | 20 | 2.00 |"),
            "{table}"
        );
        assert!(table.contains("did not keep up"), "{table}");
    }

    #[test]
    fn summary_takes_medians_and_the_worst_losses() {
        let mut a = report(Kind::Switchboard, 100.0, 100.0, 1_000);
        let mut b = report(Kind::Switchboard, 300.0, 100.0, 3_000);
        let c = report(Kind::Switchboard, 200.0, 100.0, 2_000);
        a.core.missing = 5;
        a.core.ended = 2;
        b.core.duplicates = 7;
        let s = summary(&[a, b, c.clone()]).expect("runs");
        assert_eq!((s.deliveries_per_s, s.core.latency_p99_us), (200.0, 2_000));
        assert_eq!((s.core.missing, s.core.ended, s.core.duplicates), (5, 2, 7));
        assert!(summary(&[]).is_none());
        assert_eq!(spread(&[c]), "1: 200, 2.00");
    }

    #[test]
    fn section_is_replaced_in_place() {
        let doc = "# Benchmarks\n\n## Results\n\nold\n";
        let first = replace_section(doc, &format!("{BEGIN}\nA\n{END}\n"));
        assert!(first.starts_with(doc.trim_end()));
        assert!(first.ends_with(&format!("{BEGIN}\nA\n{END}\n")));
        let second = replace_section(
            &format!("{first}\n## After\n"),
            &format!("{BEGIN}\nB\n{END}\n"),
        );
        assert!(
            second.contains("\nB\n") && !second.contains("\nA\n"),
            "{second}"
        );
        assert!(second.ends_with("## After\n"));
        assert_eq!(
            find_section(&second),
            Some(format!("{BEGIN}\nB\n{END}\n").as_str())
        );
        assert!(replace_section("", "S").starts_with("# Benchmarks"));
    }

    #[test]
    fn formats_latency() {
        assert_eq!(ms(1_234), "1.23");
        assert_eq!(ms(12_345), "12.3");
        assert_eq!(ms(1_234_567), "1,235");
    }
}
