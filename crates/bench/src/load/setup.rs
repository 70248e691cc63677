//! Setting the receivers up: at most `--concurrency` at once, each within `--setup-timeout`,
//! counting those ready and those that failed (and the first failure).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::Ipv4Addr;
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

    /// Opens receiver `id` from `source` as [`Setup::open`] does; when that fails, counts the
    /// failure (the first one kept, naming the `who` that failed, its id and source) and answers
    /// `None`, so that the receiver's task just ends.
    pub async fn open_or_fail<T>(
        &self,
        who: &str,
        id: usize,
        source: Ipv4Addr,
        opening: impl Future<Output = Result<T>>,
    ) -> Option<T> {
        match self.open(opening).await {
            Ok(opened) => Some(opened),
            Err(e) => {
                self.fail(|| format!("{who} {id} from {source}: {e:#}"));
                None
            }
        }
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

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[tokio::test]
    async fn a_failed_opening_is_counted_and_the_first_one_named() {
        let setup = Setup::new(2, 1.0);
        let source = Ipv4Addr::new(127, 0, 0, 2);
        let opened = setup
            .open_or_fail("client", 0, source, async { Ok(7) })
            .await;
        assert_eq!(opened, Some(7));
        setup.ready();
        for id in [1, 2] {
            let refused = async { Err::<u8, _>(anyhow!("refused")) };
            assert_eq!(
                setup.open_or_fail("client", id, source, refused).await,
                None
            );
        }
        assert_eq!(setup.failed(), 2);
        assert_eq!(
            setup.first_error().as_deref(),
            Some("client 1 from 127.0.0.2: refused")
        );
        assert_eq!(setup.wait(3, "clients", "client").await.unwrap(), 1);
    }
}
