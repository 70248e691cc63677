//! A thread of its own for a remote engine's connection, so that a reply is read when it arrives.
//!
//! A caller waiting for a reply from Redis or NATS (a publish, a history read) waits until the
//! connection's task reads it. On the node's runtime that task is woken by the I/O driver together
//! with everything else that became readable in the same poll, and at saturation that goes badly: a
//! publish's reply reaches the connection at the moment the publication itself reaches subscriber
//! connections; the connection's task then goes to the back of a run queue holding the thousands of
//! session tasks a big fan-out wakes. The reply sat unread for a whole round of them (issue 16, Redis:
//! 0.1–0.5 s per publish, while the pub/sub copy of the same publication was handed to the node at
//! once). Since the server API publishes one request at a time per HTTP connection, and an engine
//! publishes one channel's publications one after the other, a channel got one publication per
//! round: a subscriber's socket write carried about 3 publications instead of about 19 (writev calls
//! counted against deliveries), and the CPU per delivery quadrupled (4.35 against 0.94 µs in memory).
//! NATS, whose one connection brings the acknowledgement and the publication to one task, fell the
//! same way once the machine was a little slower (one-100 with two nodes: 17 % of the offered rate).
//!
//! On a thread of their own, replies are read when they arrive, whatever the node's runtime is busy
//! with; the caller is then woken from outside, through the runtime's shared queue. A command costs
//! two cross-thread wake-ups more, which did not show in the many-channel case (1,000 publishes/s).
//! Redis keeps its subscriber connection on the node's runtime: its messages go to the node's
//! delivery task anyway, and moving it too measured slower (one-100: 0.8–1.4 µs per delivery,
//! against 0.4–0.7 with the command connections alone).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinError;

/// How long [`IoThread::stop_after`]'s last future may take before the thread stops anyway: a
/// connection saying goodbye to a server that no longer answers must not keep the thread alive.
pub const LAST_WORDS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the thread runs before it stops, if anything.
type LastWords = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A thread running a single-threaded runtime, stopped (with the tasks on it) when this is dropped.
pub struct IoThread {
    runtime: Handle,
    /// Sending on it, or dropping it, ends the thread's `block_on`, and the runtime with its tasks
    /// (the connections). `None` once [`IoThread::stop_after`] has used it.
    stop: Option<oneshot::Sender<LastWords>>,
}

impl IoThread {
    /// Starts the thread, named `name` (as `top -H` and `perf` show it).
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<LastWords>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Replies are read as they arrive, not after a busy worker's time slice.
                if let Err(e) = crate::thread_slice::shorten() {
                    tracing::debug!(error = %e, "no short scheduler slice for the engine's connection");
                }
                runtime.block_on(async {
                    // An error only says the sender is gone: time to stop either way.
                    if let Ok(last) = stopped.await {
                        let _ = tokio::time::timeout(LAST_WORDS_TIMEOUT, last).await;
                    }
                });
            })?;
        Ok(Self {
            runtime: handle,
            stop: Some(stop),
        })
    }

    /// Stops the thread once `last` has run on it (for at most [`LAST_WORDS_TIMEOUT`]), without
    /// waiting for it: a connection's goodbye (a NATS drain, which flushes what is still buffered
    /// and lets the server drop this client's subscriptions at once) from a `Drop`. The runtime
    /// and its other tasks are kept until then, since the goodbye needs the connection's task.
    pub fn stop_after<F>(&mut self, last: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(stop) = self.stop.take() {
            // An error says the thread is gone already, and `last` with it.
            let _ = stop.send(Box::pin(last));
        }
    }

    /// Runs `future` on the thread and waits for it. A client connected from such a future runs
    /// its connection task there: fred and async-nats spawn it on the current runtime.
    pub async fn run<F>(&self, future: F) -> Result<F::Output, JoinError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until the thread's runtime has shut down (nothing spawned on it runs any more), and
    /// fails the test if that takes longer than `limit`.
    async fn stops_within(runtime: &Handle, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match runtime.spawn(async {}).await {
                Err(e) if e.is_cancelled() => return,
                _ if std::time::Instant::now() > deadline => panic!("the thread did not stop"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    #[tokio::test]
    async fn runs_futures_on_its_own_thread_until_dropped() {
        let thread = IoThread::start("test-io").unwrap();
        let here = std::thread::current().id();
        let there = thread
            .run(async { std::thread::current().id() })
            .await
            .unwrap();
        assert_ne!(here, there);
        let runtime = thread.runtime.clone();
        drop(thread);
        stops_within(&runtime, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn runs_its_last_words_before_it_stops() {
        let mut thread = IoThread::start("test-io").unwrap();
        let runtime = thread.runtime.clone();
        // A task that the last words need: it must still run after `stop_after`.
        let (ask, asked) = oneshot::channel::<oneshot::Sender<&'static str>>();
        thread
            .run(async move {
                tokio::spawn(async move {
                    if let Ok(answer) = asked.await {
                        let _ = answer.send("goodbye");
                    }
                });
            })
            .await
            .unwrap();
        let (said, heard) = oneshot::channel();
        thread.stop_after(async move {
            let (answer, answered) = oneshot::channel();
            let _ = ask.send(answer);
            let _ = said.send(answered.await.unwrap_or("nothing"));
        });
        drop(thread);
        assert_eq!(heard.await.unwrap(), "goodbye");
        stops_within(&runtime, Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn last_words_that_never_end_do_not_keep_the_thread() {
        let mut thread = IoThread::start("test-io").unwrap();
        let runtime = thread.runtime.clone();
        thread.stop_after(std::future::pending());
        drop(thread);
        stops_within(&runtime, LAST_WORDS_TIMEOUT + Duration::from_secs(5)).await;
    }
}
