//! Reconnect delays: exponential backoff with full jitter.

use std::time::Duration;

/// How long to wait before each reconnect attempt.
///
/// Attempt `n` (1 for the first reconnect) waits a uniformly random time between `min` and the
/// ceiling `min · 2^n`, capped at `max`. The randomness ("full jitter") is what matters: when a server
/// restarts, all its clients lose their connection at once, and fixed delays would bring them back at
/// once too. The floor `min` keeps a client that is refused at once from spinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(20))
    }
}

impl Backoff {
    /// Delays between `min` and `max` (`max` below `min` counts as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
        }
    }

    /// The shortest delay.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The longest delay of attempt `attempt`: `min · 2^attempt`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 times any useful `min` is past any useful `max` already.
        let factor = 1u32 << attempt.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay of attempt `attempt` for a uniform sample `unit` in `[0, 1]`.
    pub fn delay_for(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let span = self.ceiling(attempt).saturating_sub(self.min);
        self.min + span.mul_f64(unit)
    }

    /// A random delay for attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_for(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_between_min_and_the_capped_ceiling() {
        let b = Backoff::new(100 * MS, 5_000 * MS);
        for attempt in 0..100 {
            let ceiling = b.ceiling(attempt);
            assert!(
                ceiling >= b.min() && ceiling <= b.max(),
                "{attempt}: {ceiling:?}"
            );
            for unit in [0.0, 0.25, 0.5, 0.999, 1.0, -1.0, 2.0, f64::NAN] {
                let d = b.delay_for(attempt, unit);
                assert!(d >= b.min() && d <= ceiling, "{attempt} {unit}: {d:?}");
            }
            for _ in 0..50 {
                let d = b.delay(attempt);
                assert!(d >= b.min() && d <= ceiling, "{attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let b = Backoff::new(100 * MS, 1_000 * MS);
        let ceilings: Vec<_> = (0..6).map(|a| b.ceiling(a)).collect();
        assert_eq!(
            ceilings,
            [
                100 * MS,
                200 * MS,
                400 * MS,
                800 * MS,
                1_000 * MS,
                1_000 * MS
            ]
        );
        assert_eq!(b.ceiling(u32::MAX), 1_000 * MS);
        assert_eq!(b.delay_for(3, 0.5), 450 * MS);
    }

    #[test]
    fn jitter_spreads_delays() {
        // Full jitter: clients dropped together must not come back together.
        let b = Backoff::new(100 * MS, 10_000 * MS);
        let delays: std::collections::HashSet<_> = (0..100).map(|_| b.delay(5)).collect();
        assert!(delays.len() > 50, "{} distinct delays", delays.len());
        let low = (0..1000).filter(|_| b.delay(5) < 1_650 * MS).count();
        assert!(
            (300..=700).contains(&low),
            "{low} of 1000 in the lower half"
        );
    }

    #[test]
    fn max_below_min_is_min() {
        let b = Backoff::new(300 * MS, 100 * MS);
        assert_eq!((b.min(), b.max()), (300 * MS, 300 * MS));
        assert_eq!(b.delay(7), 300 * MS);
    }
}
