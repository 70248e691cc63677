//! The phases of a load run and what the publisher thread shares with the receiving side. The
//! publisher runs on a thread of its own (a current-thread runtime), so the receivers' work on
//! their thread cannot delay publications more than the kernel's scheduler allows.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use tokio::task::JoinHandle as TaskHandle;
use tokio::time::sleep;

/// Publishing before the measured window.
pub const WARMUP: u8 = 0;
/// The measured window.
pub const MEASURE: u8 = 1;
/// Publishing stopped; the last deliveries drain.
pub const STOP: u8 = 2;
/// The run is over; connections may end.
pub const EXIT: u8 = 3;

/// What the publisher thread and the receivers share: the phase, whether the publisher started
/// and stopped, the first error, and the load generator's own counters (`counts`).
pub struct Control<T> {
    /// The phase (`WARMUP` … `EXIT`).
    pub phase: AtomicU8,
    started: AtomicBool,
    stopped: AtomicBool,
    error: Mutex<Option<String>>,
    /// What the load generator counts besides.
    pub counts: T,
}

impl<T: Send + Sync + 'static> Control<T> {
    /// In the warm-up, nothing started, no error.
    pub fn new(counts: T) -> Self {
        Self {
            phase: AtomicU8::new(WARMUP),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            error: Mutex::new(None),
            counts,
        }
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Release);
    }

    /// Keeps `message` if it is the first error.
    pub fn fail(&self, message: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(message);
        }
    }

    /// The first error.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// The publisher is connected and publishes from now on.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The publisher stopped publishing (it may keep its connections open until `EXIT`).
    pub fn mark_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Starts the publisher thread running `publish`; when it returns, an error goes to
    /// `fail` (as "publisher: …") and the publisher counts as stopped.
    pub fn spawn_publisher<F, Fut>(
        self: &Arc<Self>,
        publish: F,
        fail: fn(&Self, String),
    ) -> Result<JoinHandle<()>>
    where
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>>,
    {
        let control = Arc::clone(self);
        Ok(std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        let local = tokio::task::LocalSet::new();
                        local.block_on(&rt, publish(Arc::clone(&control)))
                    });
                if let Err(e) = result {
                    fail(&control, format!("publisher: {e:#}"));
                }
                control.mark_stopped();
            })?)
    }

    /// Waits (at most 30 s) until the publisher started; fails, and ends the run, if it failed.
    pub async fn publisher_started(&self) -> Result<()> {
        let publisher_ready = Instant::now() + Duration::from_secs(30);
        while !self.started.load(Ordering::Acquire) {
            if let Some(e) = self.error() {
                self.set_phase(EXIT);
                bail!("{e}");
            }
            ensure!(
                Instant::now() < publisher_ready,
                "publisher not connected after 30 s"
            );
            sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The measured window: `MEASURE` for `seconds`, then `STOP`.
    pub async fn measure(&self, seconds: f64) {
        self.set_phase(MEASURE);
        sleep(Duration::from_secs_f64(seconds)).await;
        self.set_phase(STOP);
    }

    /// After `STOP`: waits (at most `limit`) until the publisher stopped and `all_have()` says
    /// every live receiver has everything. Returns whether it came to that, and when.
    pub async fn drain(&self, limit: Duration, all_have: impl Fn() -> bool) -> (bool, Instant) {
        let drain_start = Instant::now();
        let mut drained = false;
        while drain_start.elapsed() < limit {
            if self.stopped.load(Ordering::Acquire) {
                drained = all_have();
                if drained {
                    break;
                }
            }
            sleep(Duration::from_millis(20)).await;
        }
        (drained, drain_start)
    }

    /// Ends the run: `EXIT`, the receivers' `tasks` aborted, the publisher thread joined.
    pub async fn finish(&self, tasks: &[TaskHandle<()>], publisher: JoinHandle<()>) {
        self.set_phase(EXIT);
        for task in tasks {
            task.abort();
        }
        let _ = tokio::task::spawn_blocking(move || publisher.join()).await;
    }
}
