//! Rounds and noise: each round runs every item once, in an order rotated by the round (so none
//! always runs first), and a run during which other processes used more than `--max-noise` % of
//! a core is repeated; the quietest attempt is kept.

use std::time::Duration;

use anyhow::Result;
use tokio::time::sleep;

/// Pause before repeating a noisy run.
pub const NOISE_PAUSE: Duration = Duration::from_secs(10);

/// A load report that knows how busy the rest of the machine was during its window.
pub trait Noisy {
    /// User + system CPU of all other processes in the window, % of one core.
    fn other_cpu_pct(&self) -> Option<f64>;
}

/// Runs `run` on each of `items` once, starting at item `round` (mod their count).
pub async fn rotated<T>(items: &mut [T], round: usize, mut run: impl AsyncFnMut(&mut T)) {
    let count = items.len();
    for i in 0..count {
        run(&mut items[(i + round) % count]).await;
    }
}

/// How noisy runs are repeated.
pub struct Retries {
    /// Repetitions of a noisy run at most.
    pub retries: usize,
    /// Noise threshold, % of a core.
    pub max_noise: f64,
}

impl Retries {
    /// Round `round` (from 0) of one item: `once` runs it, repeated while noisy; the quietest
    /// run is returned. Each run is printed as `tag: describe(run)`; a failure is printed, noted
    /// in `notes` and ends the round.
    pub async fn quietest<R: Noisy>(
        &self,
        tag: &str,
        round: usize,
        notes: &mut Vec<String>,
        mut once: impl AsyncFnMut() -> Result<R>,
        describe: impl Fn(&R) -> String,
    ) -> Option<R> {
        let mut kept: Option<R> = None;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                eprintln!("{tag}: noisy run, retrying in {NOISE_PAUSE:?}");
                sleep(NOISE_PAUSE).await;
            }
            let r = match once().await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{tag}: failed: {e:#}");
                    notes.push(format!("round {} failed: {e:#}", round + 1));
                    break;
                }
            };
            let other = r.other_cpu_pct().unwrap_or(0.0);
            eprintln!("{tag}: {}", describe(&r));
            let quieter = kept
                .as_ref()
                .is_none_or(|k| other < k.other_cpu_pct().unwrap_or(0.0));
            if quieter {
                kept = Some(r);
            }
            if other <= self.max_noise {
                break;
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_starts_one_further() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut items = [0, 1, 2];
        let mut order = Vec::new();
        runtime.block_on(rotated(&mut items, 4, async |i: &mut i32| order.push(*i)));
        assert_eq!(order, [1, 2, 0]);
    }
}
