//! The recent past of each pipeline for the status page: lag in seconds and changes applied per
//! second, sampled at a fixed interval into a ring buffer of bounded length (15 minutes at one
//! sample a second). Pure: the sampler passes the time and the values.

use std::collections::VecDeque;

use serde::Serialize;

/// One sample a second ...
pub const INTERVAL_MS: u64 = 1_000;
/// ... for the last 15 minutes.
pub const WINDOW_MS: u64 = 15 * 60 * 1_000;

/// Samples of one pipeline, oldest first, at most `capacity`.
#[derive(Debug, Clone)]
pub struct Trend {
    capacity: usize,
    points: VecDeque<Point>,
    /// (time, changes applied total) of the previous sample, for the rate.
    last: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix time in milliseconds.
    pub t: u64,
    pub lag_seconds: f64,
    pub changes_per_second: f64,
}

impl Default for Trend {
    fn default() -> Self {
        Trend::new((WINDOW_MS / INTERVAL_MS) as usize)
    }
}

impl Trend {
    pub fn new(capacity: usize) -> Trend {
        Trend { capacity: capacity.max(1), points: VecDeque::new(), last: None }
    }

    /// Adds the sample taken at `t_ms` (Unix milliseconds): the lag then, and the pipeline's
    /// running total of applied changes. The rate is the total's growth since the previous
    /// sample; a total that went down (the daemon took the slot over again and counts afresh)
    /// or a clock that went back gives no rate for that sample, not a negative one.
    pub fn sample(&mut self, t_ms: u64, lag_seconds: f64, changes_total: u64) {
        let rate = match self.last {
            Some((t0, c0)) if t_ms > t0 && changes_total >= c0 => (changes_total - c0) as f64 * 1_000.0 / (t_ms - t0) as f64,
            _ => 0.0,
        };
        self.last = Some((t_ms, changes_total));
        if self.points.len() == self.capacity {
            self.points.pop_front();
        }
        self.points.push_back(Point { t: t_ms, lag_seconds: lag_seconds.max(0.0), changes_per_second: rate });
    }

    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// The JSON the page reads: columns rather than rows (smaller, and ready to draw).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Columns {
    pub t: Vec<u64>,
    pub lag_seconds: Vec<f64>,
    pub changes_per_second: Vec<f64>,
}

impl From<&Trend> for Columns {
    fn from(trend: &Trend) -> Columns {
        Columns {
            t: trend.points().map(|p| p.t).collect(),
            lag_seconds: trend.points().map(|p| p.lag_seconds).collect(),
            changes_per_second: trend.points().map(|p| p.changes_per_second).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_growth_of_the_total_per_second() {
        let mut tr = Trend::new(10);
        tr.sample(1_000, 0.0, 100);
        tr.sample(2_000, 0.5, 150);
        tr.sample(2_500, 1.0, 200);
        let c = Columns::from(&tr);
        assert_eq!(c.t, vec![1_000, 2_000, 2_500]);
        assert_eq!(c.changes_per_second, vec![0.0, 50.0, 100.0]);
        assert_eq!(c.lag_seconds, vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn a_reset_total_or_a_clock_step_back_gives_no_negative_rate() {
        let mut tr = Trend::new(10);
        tr.sample(1_000, 0.0, 100);
        tr.sample(2_000, 0.0, 5);
        tr.sample(1_500, -3.0, 50);
        tr.sample(2_500, 0.0, 60);
        let c = Columns::from(&tr);
        assert_eq!(c.changes_per_second, vec![0.0, 0.0, 0.0, 10.0]);
        assert!(c.lag_seconds.iter().all(|l| *l >= 0.0));
    }

    #[test]
    fn the_buffer_keeps_the_newest_samples_only() {
        let mut tr = Trend::new(3);
        for i in 0..10u64 {
            tr.sample(i * 1_000, i as f64, i * 10);
        }
        assert_eq!(tr.len(), 3);
        assert_eq!(Columns::from(&tr).t, vec![7_000, 8_000, 9_000]);
        let default = Trend::default();
        assert!(default.is_empty());
        let mut d = default;
        for i in 0..2_000u64 {
            d.sample(i * INTERVAL_MS, 0.0, 0);
        }
        assert_eq!(d.len() as u64, WINDOW_MS / INTERVAL_MS, "15 minutes of samples");
    }
}
