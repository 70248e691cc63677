//! What a fan-out load run reports (one JSON line to the orchestrator, which parses it with the
//! same type) and its text form for a run by hand.

use serde::{Deserialize, Serialize};

use crate::fanout::wire::Kind;
use crate::harness::rounds::Noisy;
use crate::load::report::ReportCore;

/// The outcome of one fan-out run.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LoadReport {
    /// The server.
    pub kind: Kind,
    /// Subscribers asked for.
    pub subs: usize,
    /// Subscribers whose subscription was confirmed.
    pub subscribed: usize,
    /// Channels.
    pub channels: usize,
    /// Subscribers the server itself counts (Nchan channel info), when it tells.
    pub server_counted_subs: Option<u64>,
    /// Seconds to open and subscribe all connections.
    pub subscribe_s: f64,
    /// Target publications per second.
    pub rate: f64,
    /// What every load run reports (flattened: the same keys at the top level).
    #[serde(flatten)]
    pub core: ReportCore,
    /// Publications the server acknowledged by the end (switchboard replies, Nchan responses;
    /// Socket.IO does not acknowledge).
    pub publish_acked: Option<u64>,
    /// Most a publication was sent after its scheduled time, ms (publisher held back).
    pub publish_max_late_ms: f64,
    /// Deliveries per second in the window.
    pub deliveries_per_s: f64,
    /// Publications in the window × subscribers per channel ÷ window.
    pub offered_per_s: f64,
    /// Of the missing: holes, i.e. publications never received although a later one of the same
    /// channel was (lost on the way).
    pub gaps: u64,
    /// Of the missing: the publications after the last one received (still queued somewhere
    /// when the drain ended, or lost with a connection).
    pub undelivered: u64,
    /// switchboard: deliveries whose offset was not the previous one + 1.
    pub offset_gaps: u64,
    /// 99.9th percentile, µs.
    pub latency_p999_us: u64,
    /// The same latency measured when the load generator read the data (includes its own
    /// backlog): median, µs.
    pub read_latency_p50_us: u64,
    /// 99th percentile at read, µs.
    pub read_latency_p99_us: u64,
    /// Reads that carried a kernel receive timestamp (the others use the read time).
    pub stamped_reads: u64,
    /// Server CPU in the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Of it, system (kernel) time, % of one core.
    pub server_system_pct: Option<f64>,
    /// How busy the server's core (CPU 0) was, softirq included, %.
    pub server_core_busy_pct: f64,
    /// How busy the client's core (CPU 1) was, softirq included, %.
    pub client_core_busy_pct: f64,
    /// CPU of each of `--other-pids` in the window, % of one core.
    #[serde(default)]
    pub server_others_cpu_pct: Vec<f64>,
    /// Publish API calls (request written to the answer's arrival by the kernel's receive
    /// timestamp), median, µs (`--api-addr`).
    #[serde(default)]
    pub publish_call_p50_us: Option<u64>,
    /// Publish API calls, 99th percentile, µs.
    #[serde(default)]
    pub publish_call_p99_us: Option<u64>,
    /// Server RSS with every subscriber subscribed (after `--settle`), KiB.
    pub rss_subscribed_kib: Option<u64>,
    /// Server RSS after the drain, KiB.
    pub rss_end_kib: Option<u64>,
    /// (RSS subscribed − RSS before) ÷ subscribed, KiB.
    pub kib_per_sub: Option<f64>,
    /// Seconds the drain took.
    pub drain_s: f64,
}

impl Noisy for LoadReport {
    fn other_cpu_pct(&self) -> Option<f64> {
        self.core.other_cpu_pct
    }
}

/// Prints `r` for a person.
pub(super) fn print_text(r: &LoadReport) {
    println!(
        "{}: {}/{} subscribed to {} channel(s) in {:.1} s{}",
        r.kind.name(),
        r.subscribed,
        r.subs,
        r.channels,
        r.subscribe_s,
        r.server_counted_subs
            .map_or(String::new(), |n| format!(" (server counts {n})"))
    );
    println!(
        "published {} ({} in the {:.2} s window, max {:.1} ms late), {} errors{}",
        r.core.published,
        r.core.published_window,
        r.core.seconds,
        r.publish_max_late_ms,
        r.core.publish_errors,
        r.core
            .publish_first_error
            .as_ref()
            .map_or(String::new(), |e| format!(": {e}"))
    );
    println!(
        "deliveries/s {:.0} of {:.0} offered; latency µs p50 {} p99 {} p99.9 {} max {} ({} samples)",
        r.deliveries_per_s,
        r.offered_per_s,
        r.core.latency_p50_us,
        r.core.latency_p99_us,
        r.latency_p999_us,
        r.core.latency_max_us,
        r.core.latency_samples
    );
    println!(
        "delivered {} of {} due: missing {} ({} in gaps, {} after the last received), duplicates {}, \
         out of order {}, offset gaps {}; drain {:.1} s ({})",
        r.core.deliveries,
        r.core.expected,
        r.core.missing,
        r.gaps,
        r.undelivered,
        r.core.duplicates,
        r.core.out_of_order,
        r.offset_gaps,
        r.drain_s,
        if r.core.drained {
            "complete"
        } else {
            "incomplete"
        }
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} %"));
    println!(
        "CPU 0 busy {:.0} %, CPU 1 busy {:.0} % (softirq included)",
        r.server_core_busy_pct, r.client_core_busy_pct
    );
    println!(
        "CPU: server {} (system {}), client {:.0} %, other {}",
        pct(r.server_cpu_pct),
        pct(r.server_system_pct),
        r.core.client_cpu_pct,
        pct(r.core.other_cpu_pct)
    );
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    println!(
        "server RSS KiB: before {}, subscribed {}, window end {}, end {}; {} KiB per subscriber",
        kib(r.core.rss_before_kib),
        kib(r.rss_subscribed_kib),
        kib(r.core.rss_window_kib),
        kib(r.rss_end_kib),
        r.kib_per_sub.map_or("-".into(), |v| format!("{v:.1}"))
    );
    r.core.print_ended();
}
