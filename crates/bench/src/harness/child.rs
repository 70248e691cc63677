//! The load generator as a child process: this executable with a `*-load` subcommand and
//! `--json`, pinned to the client core; its one JSON line is the run's report.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::de::DeserializeOwned;

use super::process::{self, Running};

/// How long to wait for a load generator's report: its set-up, warm-up, window and drain
/// (seconds each), and a minute more.
pub fn report_limit(setup_timeout: f64, warmup: f64, duration: f64, drain: f64) -> Duration {
    Duration::from_secs_f64(setup_timeout + warmup + duration + drain + 60.0)
}

/// Runs the load generator `args` (from its subcommand on), waits at most `limit` for its
/// report and stops it; then fails if one of `servers` died meanwhile (a crash would otherwise
/// look like a slow run), else returns the report.
pub async fn load_report<R: DeserializeOwned>(
    self_exe: &Path,
    args: Vec<String>,
    limit: Duration,
    servers: &mut [Running],
) -> Result<R> {
    let mut client = process::start_client(self_exe, args)?;
    let report = client.report::<R>(limit).await;
    client.stop().await;
    for server in servers.iter_mut() {
        server.check_alive()?;
    }
    report
}

/// `args` as owned strings (the load generator's command line).
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}
