//! How long to wait before trying a failed dependency again: one policy for every retry loop
//! (the replication stream, a batch's commit, the ownership lock), built on `backon`'s
//! exponential backoff. The loops decide *whether* to retry by the error's kind; this decides
//! *when*.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Doubling waits from `first` up to `max`, for as long as the caller keeps trying; back to
/// `first` after a success.
#[derive(Debug)]
pub struct Retry {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
    waits: u32,
}

impl Retry {
    pub fn new(first: Duration, max: Duration) -> Retry {
        let builder = ExponentialBuilder::new().with_min_delay(first).with_max_delay(max).with_factor(2.0).without_max_times();
        Retry { delays: builder.build(), builder, max, waits: 0 }
    }

    /// The replication stream and batch commits: from half a second up to 30 s.
    pub fn outage() -> Retry {
        Retry::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.waits = self.waits.saturating_add(1);
        self.delays.next().unwrap_or(self.max)
    }

    /// Waits handed out since the last success (0: the first attempt worked).
    pub fn waits(&self) -> u32 {
        self.waits
    }

    /// After a success: the next outage starts from the shortest wait.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.waits = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut r = Retry::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6).map(|_| r.next_delay().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(r.waits(), 6);
        r.reset();
        assert_eq!(r.waits(), 0);
        assert_eq!(r.next_delay(), Duration::from_millis(200));
    }

    proptest::proptest! {
        #[test]
        fn never_shorter_than_first_nor_longer_than_max(first in 1u64..5_000, extra in 0u64..60_000, n in 1usize..40) {
            let (first, max) = (Duration::from_millis(first), Duration::from_millis(first + extra));
            let mut r = Retry::new(first, max);
            let mut last = Duration::ZERO;
            for _ in 0..n {
                let d = r.next_delay();
                proptest::prop_assert!(d >= first && d <= max && d >= last, "{d:?} after {last:?} in [{first:?}, {max:?}]");
                last = d;
            }
        }
    }
}
