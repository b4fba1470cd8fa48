//! Which keys an audit pass looks at: a window of the key-hash space (`Sample`), or a set of
//! named keys (`KeyFilter`, for re-checks).

use std::collections::HashSet;
use std::sync::Arc;

use crate::sink::content_hash;

/// Buckets of the key hash space a sample is drawn from.
const BUCKETS: u64 = 10_000;

/// Which keys a pass looks at: a window of the key-hash buckets. `--sample P` is the first
/// `P`% of the buckets (stable from run to run); continuous rounds move the window along, so
/// consecutive rounds see different keys and cover every key in turn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    start: u64,
    width: u64,
}

impl Sample {
    pub(crate) fn all() -> Sample {
        Sample { start: 0, width: BUCKETS }
    }

    pub(super) fn none() -> Sample {
        Sample { start: 0, width: 0 }
    }

    fn width_of(pct: f64) -> u64 {
        ((pct * BUCKETS as f64 / 100.0).ceil() as u64).clamp(1, BUCKETS)
    }

    pub(crate) fn percent(pct: Option<f64>) -> Sample {
        match pct {
            None => Sample::all(),
            Some(p) => Sample { start: 0, width: Sample::width_of(p) },
        }
    }

    /// The `round`-th window of `pct`% of the buckets.
    pub(crate) fn window(round: u64, pct: f64) -> Sample {
        let width = Sample::width_of(pct);
        Sample { start: round.wrapping_mul(width) % BUCKETS, width }
    }

    pub(crate) fn is_all(&self) -> bool {
        self.width >= BUCKETS
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        if self.is_all() {
            return true;
        }
        if self.width == 0 {
            return false;
        }
        let b = content_hash(key) % BUCKETS;
        (b + BUCKETS - self.start) % BUCKETS < self.width
    }
}

/// Which search documents to load.
#[derive(Clone)]
pub(super) enum KeyFilter {
    Sample(Sample),
    Keys(Arc<HashSet<String>>),
}

impl KeyFilter {
    pub(super) fn contains(&self, key: &str) -> bool {
        match self {
            KeyFilter::Sample(s) => s.contains(key),
            KeyFilter::Keys(k) => k.contains(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_stable() {
        let keys: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let ten = Sample::percent(Some(10.0));
        let n = keys.iter().filter(|k| ten.contains(k)).count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(keys.iter().all(|k| Sample::percent(None).contains(k)));
        assert_eq!(keys.iter().filter(|k| ten.contains(k)).count(), n);
        // The same keys as the percentage of buckets (the sample of earlier versions).
        assert!(keys.iter().all(|k| ten.contains(k) == ((content_hash(k) % 10_000) as f64 / 100.0 < 10.0)));
    }

    #[test]
    fn windows_walk_through_every_key() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
        let mut seen = vec![0u32; keys.len()];
        for round in 0..4 {
            let w = Sample::window(round, 25.0);
            for (i, k) in keys.iter().enumerate() {
                if w.contains(k) {
                    seen[i] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "four windows of 25% see every key exactly once");
        let tiny = Sample::window(7, 0.001);
        assert_eq!(tiny.width, 1);
        assert_eq!(Sample::window(3, 100.0), Sample::all());
    }
}
