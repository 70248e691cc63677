//! Latency measurement: publications carry their send time on the wall clock (so the kernel's
//! receive timestamps compare with it), and the load generators keep latencies in histograms.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hdrhistogram::Histogram;

/// Now, in ns since the Unix epoch (the clock publications are stamped with, and the clock of
/// the kernel's receive timestamps).
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An empty histogram of µs, from 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// The value at quantile `q`, 0 when there is none.
pub fn quantile(hist: &Histogram<u64>, q: f64) -> u64 {
    if hist.is_empty() {
        0
    } else {
        hist.value_at_quantile(q)
    }
}
