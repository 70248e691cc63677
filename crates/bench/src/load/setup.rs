//! Setting the receivers up: at most `--concurrency` at once, each within `--setup-timeout`,
//! counting those ready and those that failed (and the first failure).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};

/// The set-up of the receivers (one thread).
pub struct Setup {
    gate: Semaphore,
    limit: Duration,
    ready: Cell<usize>,
    failed: Cell<usize>,
    first_error: RefCell<Option<String>>,
}

impl Setup {
    /// `concurrency` set-ups at once, each within `limit_s` seconds.
    pub fn new(concurrency: usize, limit_s: f64) -> Self {
        Self {
            gate: Semaphore::new(concurrency),
            limit: Duration::from_secs_f64(limit_s),
            ready: Cell::new(0),
            failed: Cell::new(0),
            first_error: RefCell::new(None),
        }
    }

    /// Runs `opening` (connect and subscribe one receiver) when a place is free, within the
    /// time limit (the wait for a place does not count).
    pub async fn open<T>(&self, opening: impl Future<Output = Result<T>>) -> Result<T> {
        let _permit = self.gate.acquire().await?;
        timeout(self.limit, opening)
            .await
            .context("subscription not confirmed in time")?
    }

    /// One receiver is set up.
    pub fn ready(&self) {
        self.ready.set(self.ready.get() + 1);
    }

    /// One receiver could not be set up; `error` tells which and why, if it is the first.
    pub fn fail(&self, error: impl FnOnce() -> String) {
        self.failed.set(self.failed.get() + 1);
        self.first_error.borrow_mut().get_or_insert_with(error);
    }

    /// Receivers that could not be set up.
    pub fn failed(&self) -> usize {
        self.failed.get()
    }

    /// The first set-up failure.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.borrow().clone()
    }

    /// Waits until each of the `total` receivers is set up or failed (`what`: "clients",
    /// "subscriptions"); returns how many are ready, failing when none is (`who`: "client",
    /// "subscriber").
    pub async fn wait(&self, total: usize, what: &str, who: &str) -> Result<usize> {
        let setup_limit = self.limit;
        let deadline = Instant::now() + setup_limit + Duration::from_secs(5);
        while self.ready.get() + self.failed.get() < total {
            ensure!(
                Instant::now() < deadline,
                "{what} not set up after {setup_limit:?}: {} ready, {} failed",
                self.ready.get(),
                self.failed.get()
            );
            sleep(Duration::from_millis(20)).await;
        }
        let subscribed = self.ready.get();
        ensure!(
            subscribed > 0,
            "no {who} could subscribe: {}",
            self.first_error.borrow().as_deref().unwrap_or("-")
        );
        Ok(subscribed)
    }
}
