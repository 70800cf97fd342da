//! The token bucket under both limiters, as GCRA (the generic cell rate algorithm): a bucket is one
//! number, its *theoretical arrival time* `tat` in nanoseconds since an epoch. Taking `n` tokens moves
//! `tat` forward by `n` emission intervals; the bucket is full when `tat <= now`, and it may run at
//! most `window` (the time to earn `burst` tokens) ahead of `now`. All integer arithmetic, exact
//! up to one nanosecond per operation, rounded against the client, so over any window of time
//! `[a, b]` the tokens taken are at most `rate × (b − a + 1 ns) + burst`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `count` tokens per `per_nanos` nanoseconds, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    count: u64,
    per_nanos: u64,
    burst: u64,
    /// The time to earn `burst` tokens, rounded up (so a full bucket does hold `burst`).
    window: u64,
}

/// Saturating `u128 → u64`.
fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

impl Gcra {
    /// All three at least 1 (callers check).
    pub(crate) fn new(count: u64, per: Duration, burst: u64) -> Self {
        let count = count.max(1);
        let per_nanos = sat(per.as_nanos()).max(1);
        let burst = burst.max(1);
        let mut g = Self { count, per_nanos, burst, window: 0 };
        g.window = g.cost(burst);
        g
    }

    /// The time `n` tokens take to earn, rounded up (charged when taking).
    pub(crate) fn cost(&self, n: u64) -> u64 {
        sat((u128::from(n) * u128::from(self.per_nanos)).div_ceil(u128::from(self.count)))
    }

    /// The time `n` tokens take to earn, rounded down (credited on a refund, and the window).
    pub(crate) fn credit(&self, n: u64) -> u64 {
        sat(u128::from(n) * u128::from(self.per_nanos) / u128::from(self.count))
    }

    /// Tokens available at `now` for a bucket at `tat` (at most `burst`).
    pub(crate) fn available(&self, tat: u64, now: u64) -> u64 {
        let slack = now.saturating_add(self.window).saturating_sub(tat.max(now));
        sat(u128::from(slack) * u128::from(self.count) / u128::from(self.per_nanos)).min(self.burst)
    }

    /// Takes up to `max` tokens if at least `low` (clamped to `1..=min(max, burst)`) are available:
    /// `Ok((taken, new_tat))`, or `Err(nanos)` until `low` will be.
    pub(crate) fn take(&self, tat: u64, now: u64, max: u64, low: u64) -> Result<(u64, u64), u64> {
        let low = low.clamp(1, max.clamp(1, self.burst));
        let avail = self.available(tat, now);
        if avail >= low {
            let n = avail.min(max);
            Ok((n, tat.max(now).saturating_add(self.cost(n))))
        } else {
            // Not yet: `low` tokens are there once `now + window − tat ≥ cost(low)`.
            let ready = tat.max(now).saturating_add(self.cost(low)).saturating_sub(self.window);
            Err(ready.saturating_sub(now).max(1))
        }
    }
}

/// Nanoseconds from `epoch` to `now` (0 if `now` is earlier).
pub(crate) fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    sat(now.saturating_duration_since(epoch).as_nanos())
}

/// A GCRA bucket that several threads may take from at once (one atomic word, compare-and-swap).
#[derive(Debug)]
pub(crate) struct AtomicBucket {
    tat: AtomicU64,
}

impl AtomicBucket {
    /// A full bucket (`tat` 0 is full for any `now` since the epoch).
    pub(crate) const fn new() -> Self {
        Self { tat: AtomicU64::new(0) }
    }

    pub(crate) fn take(&self, g: &Gcra, now: u64, max: u64, low: u64) -> Result<u64, u64> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let (n, next) = g.take(tat, now, max, low)?;
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(n),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Gives back `n` unused tokens (credited rounded down).
    pub(crate) fn refund(&self, g: &Gcra, n: u64) {
        if n > 0 {
            let credit = g.credit(n);
            let _ = self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(credit)));
        }
    }

    /// Full at `now`: as good as a new bucket, so it may be forgotten.
    pub(crate) fn is_full(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn exact_rates() {
        let g = Gcra::new(3, Duration::from_secs(1), 3);
        assert_eq!(g.cost(1), 333_333_334);
        assert_eq!(g.credit(1), 333_333_333);
        assert_eq!(g.available(0, 0), 3);
        let (n, tat) = g.take(0, 0, 10, 1).unwrap();
        assert_eq!((n, tat), (3, S));
        // Empty; one token in a third of a second.
        assert_eq!(g.take(tat, 0, 10, 1), Err(333_333_334));
        assert_eq!(g.take(tat, 333_333_334, 10, 1).map(|(n, _)| n), Ok(1));
        // `low` is clamped to the burst: never a wait for more than the bucket holds.
        assert!(g.take(tat, 0, 10, 100).unwrap_err() <= S);
        // A full bucket holds the whole burst whatever the rounding (found by the property below).
        let odd = Gcra::new(3, Duration::from_millis(2506), 232);
        assert_eq!(odd.take(0, 0, 232, 232).map(|(n, _)| n), Ok(232));
        // Huge numbers saturate instead of overflowing.
        let big = Gcra::new(1, Duration::MAX, u64::MAX);
        assert_eq!(big.cost(u64::MAX), u64::MAX);
        assert!(big.take(u64::MAX, u64::MAX, u64::MAX, 1).is_ok() || big.take(u64::MAX, 0, 1, 1).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Take { max: u64, low: u64 },
        RefundLast(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..2 * S).prop_map(Op::Advance),
            (1u64..5_000, 0u64..5_000).prop_map(|(max, low)| Op::Take { max, low }),
            any::<u8>().prop_map(Op::RefundLast),
        ]
    }

    proptest! {
        /// Over any window `[a, b]` of a run, the tokens taken (less what was refunded, counted at the
        /// take) are at most `rate × (b − a + 1 ns) + burst`; and a wait is never zero and always enough.
        #[test]
        fn never_more_than_rate_times_time_plus_burst(
            count in 1u64..10_000, per_ms in 1u64..5_000, burst in 1u64..10_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let g = Gcra::new(count, Duration::from_millis(per_ms), burst);
            let bucket = AtomicBucket::new();
            let mut now = 0u64;
            let mut taken: Vec<(u64, u64)> = Vec::new(); // (time, net tokens)
            for op in ops {
                match op {
                    Op::Advance(d) => now += d,
                    Op::Take { max, low } => match bucket.take(&g, now, max, low) {
                        Ok(n) => {
                            prop_assert!(n >= 1 && n <= max && n <= burst);
                            taken.push((now, n));
                        }
                        Err(wait) => {
                            prop_assert!(wait >= 1);
                            let low = low.clamp(1, max.min(burst));
                            let tat = bucket.tat.load(Ordering::Relaxed);
                            prop_assert!(g.take(tat, now + wait, max, low).is_ok(), "the wait suffices");
                            if wait > 1 {
                                prop_assert!(g.take(tat, now + wait - 1, max, low).is_err(), "and is not longer than needed");
                            }
                        }
                    },
                    Op::RefundLast(frac) => {
                        if let Some((_, n)) = taken.last_mut() {
                            let back = *n * u64::from(frac) / 255;
                            bucket.refund(&g, back);
                            *n -= back;
                        }
                    }
                }
            }
            for (i, &(a, _)) in taken.iter().enumerate() {
                let mut sum = 0u128;
                for &(b, n) in &taken[i..] {
                    sum += u128::from(n);
                    let allowed = u128::from(b - a + 1) * u128::from(count) / u128::from(per_ms * 1_000_000) + u128::from(burst);
                    prop_assert!(sum <= allowed, "{sum} tokens in [{a}, {b}] > {allowed}");
                }
            }
        }
    }
}
