//! The core of every load generator's report: what `fanout-load` and `transports-load` both
//! measure the same way (the window, publications, deliveries and what was missing, latency,
//! server memory, CPU noise, receivers that ended early). Each report flattens it into its own
//! JSON line (`#[serde(flatten)]`), so the line keeps one flat object with the same keys.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::latency::quantile;
use super::seq::Seen;

/// What every load run reports, whatever the protocol.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ReportCore {
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Publications sent (or accepted), in all.
    pub published: u64,
    /// Of them, in the window.
    pub published_window: u64,
    /// Publications the server refused or failed.
    pub publish_errors: u64,
    /// The first publish error.
    pub publish_first_error: Option<String>,
    /// Deliveries received in the window.
    pub deliveries_window: u64,
    /// Deliveries received in all (warm-up, window, drain).
    pub deliveries: u64,
    /// Deliveries due to the subscribed receivers: Σ publications of their channel.
    pub expected: u64,
    /// Due deliveries that never arrived (within the drain).
    pub missing: u64,
    /// Deliveries received twice or more.
    pub duplicates: u64,
    /// Deliveries older than one already received by the same receiver.
    pub out_of_order: u64,
    /// Latency samples in the window.
    pub latency_samples: u64,
    /// Publish-to-deliver latency, median, µs.
    pub latency_p50_us: u64,
    /// 99th percentile, µs.
    pub latency_p99_us: u64,
    /// Largest, µs.
    pub latency_max_us: u64,
    /// Server RSS before the first connection, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server RSS at the end of the window, KiB.
    pub rss_window_kib: Option<u64>,
    /// This process's CPU (receivers and publisher) in the window, % of one core.
    pub client_cpu_pct: f64,
    /// User + system CPU of all other processes in the window, % of one core (noise).
    pub other_cpu_pct: Option<f64>,
    /// Whether every live receiver had everything at the end of the drain.
    pub drained: bool,
    /// Receivers whose connection or session ended before the end.
    pub ended: usize,
    /// Why they ended, with counts.
    pub end_reasons: BTreeMap<String, usize>,
    /// Receivers that could not be set up.
    pub setup_failures: usize,
    /// The first set-up failure.
    pub first_error: Option<String>,
}

impl ReportCore {
    /// A core with what the receivers got: the delivery counts of `tally` and the latency
    /// figures of `latency_us` (the window's samples, µs); the rest is filled in by the caller.
    pub fn received(tally: &Tally, latency_us: &Histogram<u64>) -> Self {
        Self {
            expected: tally.expected,
            missing: tally.missing(),
            duplicates: tally.duplicates,
            out_of_order: tally.out_of_order,
            latency_samples: latency_us.len(),
            latency_p50_us: quantile(latency_us, 0.5),
            latency_p99_us: quantile(latency_us, 0.99),
            latency_max_us: latency_us.max(),
            ..Self::default()
        }
    }

    /// Prints the receivers that ended early or failed to set up, if any (the last line of the
    /// text reports).
    pub fn print_ended(&self) {
        if self.ended > 0 || self.setup_failures > 0 {
            println!(
                "ended early: {} {:?}; setup failures: {} ({})",
                self.ended,
                self.end_reasons,
                self.setup_failures,
                self.first_error.as_deref().unwrap_or("-")
            );
        }
    }
}

/// The delivery counts over all subscribed receivers, added up one receiver at a time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Σ publications due.
    pub expected: u64,
    /// Σ distinct publications received.
    pub distinct: u64,
    /// Σ deliveries received twice or more.
    pub duplicates: u64,
    /// Σ deliveries older than one already received.
    pub out_of_order: u64,
}

impl Tally {
    /// Adds a receiver that was due `due` publications and got `seen`.
    pub fn add(&mut self, due: u64, seen: &Seen) {
        self.expected += due;
        self.distinct += seen.distinct;
        self.duplicates += seen.duplicates;
        self.out_of_order += seen.out_of_order;
    }

    /// Due deliveries that never arrived.
    pub fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.distinct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_receivers_and_counts_what_is_missing() {
        let mut a = Seen::default();
        for seq in [1, 2, 2, 4, 3] {
            a.record(seq);
        }
        let mut b = Seen::default();
        b.record(1);
        let mut tally = Tally::default();
        tally.add(5, &a);
        tally.add(5, &b);
        assert_eq!(
            tally,
            Tally {
                expected: 10,
                distinct: 5,
                duplicates: 1,
                out_of_order: 1
            }
        );
        assert_eq!(tally.missing(), 5);

        let mut hist = crate::load::latency::histogram().expect("histogram");
        for us in 1..=100 {
            hist.record(us).expect("in range");
        }
        let core = ReportCore::received(&tally, &hist);
        assert_eq!(
            (
                core.expected,
                core.missing,
                core.duplicates,
                core.out_of_order
            ),
            (10, 5, 1, 1)
        );
        assert_eq!(core.latency_samples, 100);
        assert_eq!((core.latency_p50_us, core.latency_max_us), (50, 100));
        assert_eq!(core.latency_p99_us, 99);
    }

    #[test]
    fn flattened_core_keeps_one_flat_json_object() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Report {
            name: String,
            #[serde(flatten)]
            core: ReportCore,
        }
        let report = Report {
            name: "x".into(),
            core: ReportCore {
                seconds: 2.5,
                missing: 3,
                rss_before_kib: Some(7),
                ..ReportCore::default()
            },
        };
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["missing"], 3);
        assert_eq!(json["seconds"], 2.5);
        assert!(json.get("core").is_none());
        let back: Report = serde_json::from_value(json).expect("parses");
        assert_eq!(back, report);
    }
}
