//! `switchboard-bench fanout-load`: the fan-out load generator. It opens N WebSocket subscribers
//! spread over C channels (subscriber i on channel i mod C) and waits until each is subscribed;
//! then a publisher thread publishes R publications per second, round-robin over the channels,
//! each carrying its send time and its channel's sequence number. After a warm-up it measures a
//! window: deliveries received, publish-to-deliver latency, CPU of the server and of itself.
//! Then it stops publishing and waits (at most `--drain`) for every connected subscriber to have
//! everything, and counts what is missing, doubled or out of order per subscriber.
//!
//! The subscribers run as tasks on one thread (a current-thread runtime) that read into one shared
//! buffer and only keep what is left of a partial frame, so 10,000 connections cost little memory
//! and the core is spent on reading. The publisher runs on a second thread of the same process, so
//! a busy subscriber loop cannot hold it back more than the kernel's scheduler allows.

//! The parts, each above the ones it uses: [`args`] (the command line), [`state`] (what the
//! subscribers, the publisher and the measurement share), [`subscriber`] (a subscriber's
//! connection and hot loop), [`publisher`], [`nchan`] (Nchan's channel-info client),
//! [`measure`] (a run from set-up to drain, into a [`LoadReport`]) and [`report`] (the report and
//! its text form).

mod args;
mod measure;
mod nchan;
mod publisher;
mod report;
mod state;
mod subscriber;

use anyhow::{Result, ensure};

use crate::load;
pub use args::LoadArgs;
pub use report::LoadReport;

/// Runs the load and prints the report.
pub fn main(args: &LoadArgs) -> Result<()> {
    load::print_report(&run(args)?, args.json, report::print_text)
}

/// Runs the load on a current-thread runtime (the publisher on a thread of its own).
pub fn run(args: &LoadArgs) -> Result<LoadReport> {
    ensure!(
        args.subs > 0 && args.channels > 0 && args.channels <= args.subs,
        "need at least one subscriber per channel"
    );
    ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    ensure!(
        args.sample_every > 0 && args.per_source > 0 && args.concurrency > 0,
        "counts must be at least 1"
    );
    let last = usize::from(args.source_start) + args.subs.div_ceil(args.per_source) - 1;
    ensure!(
        args.source_start >= 2 && last <= 254,
        "sources 127.0.0.{}..127.0.0.{last} are out of range: raise --per-source",
        args.source_start
    );
    load::ensure_open_files(args.subs, 1, "subscribers")?;
    load::run_local(measure::measure(args))
}
