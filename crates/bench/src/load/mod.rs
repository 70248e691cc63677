//! What the two load generators, `fanout-load` ([`crate::fanout::load`]) and `transports-load`
//! ([`crate::transports::load`]), share: both set many receivers up on one thread, run a publisher
//! on a thread of its own through the phases warm-up, window, stop and exit, check every
//! delivery's sequence number and report one JSON line (or text).
//!
//! - [`control`]: the phases, and what the publisher thread shares with the receiving side;
//! - [`setup`]: opening the receivers, a bounded number at once, and waiting for them all;
//! - [`seq`]: per receiver, which sequence numbers arrived (duplicates, out of order);
//! - [`latency`]: the wall clock publications are stamped with, and histogram helpers;
//! - [`report`]: the core of both reports, and the delivery tallies it is made of.

pub mod control;
pub mod latency;
pub mod report;
pub mod seq;
pub mod setup;

use std::future::Future;
use std::io::Write as _;

use anyhow::{Result, ensure};
use serde::Serialize;

use crate::procfs;
use crate::tput::Snapshot;

/// Prints `report` as one JSON line (what the orchestrators parse) or, without `json`, with
/// `print_text`; flushes, so a parent reading the pipe gets it at once.
pub fn print_report<R: Serialize>(report: &R, json: bool, print_text: fn(&R)) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print_text(report);
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// Fails unless `count` receivers holding `fds_each` sockets each (and some spare) fit in this
/// process's open-file limit.
pub fn ensure_open_files(count: usize, fds_each: u64, noun: &str) -> Result<()> {
    let limit = procfs::nofile_limit("self")?;
    ensure!(
        fds_each * count as u64 + 64 <= limit,
        "{count} {noun} need more than this process's open-file limit of {limit}"
    );
    Ok(())
}

/// Runs `measure` on a current-thread runtime: every receiver is a local task of this thread.
pub fn run_local<T>(measure: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, measure)
}

/// The CPU figures of the measured window, from the snapshots at its start and end.
pub struct CpuWindow {
    /// Length of the window, seconds.
    pub seconds: f64,
    /// This process's CPU ticks in the window.
    pub own: u64,
    /// The server's CPU ticks in the window, when its pid is known.
    pub server: Option<u64>,
}

impl CpuWindow {
    /// The window between `start` and `end`.
    pub fn new(start: &Snapshot, end: &Snapshot) -> Self {
        Self {
            seconds: end.at.duration_since(start.at).as_secs_f64(),
            own: end.own - start.own,
            server: start.server.zip(end.server).map(|(a, b)| b - a),
        }
    }

    /// `ticks` of CPU time in the window, as % of one core.
    pub fn pct(&self, ticks: u64) -> f64 {
        ticks as f64 / procfs::TICKS_PER_SEC / self.seconds * 100.0
    }
}
