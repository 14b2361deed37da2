//! Log lines about a peer, rate-limited.
//!
//! A buggy or hostile peer can make either side log once per record, or once per id in a
//! record (4 096 lines for one ADOPTED of unknown ids). Each such line goes through a
//! [`LogLimit`]: the first few in a window are written, the rest are counted and summed up in
//! the next line written ("… and 12 344 more like it"). The exact number of events is always in
//! a metric, which the caller increments itself; the log only has to say that it happens.

use std::time::{Duration, Instant};

/// Lines one [`LogLimit`] writes per window by default.
pub(crate) const DEFAULT_BURST: u32 = 5;
/// The default window.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// Admits a few log lines per window and counts the rest.
#[derive(Debug)]
pub(crate) struct LogLimit {
    burst: u32,
    window: Duration,
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(DEFAULT_BURST, DEFAULT_WINDOW)
    }
}

impl LogLimit {
    /// `burst` lines per `window`.
    pub(crate) const fn new(burst: u32, window: Duration) -> LogLimit {
        LogLimit { burst, window, started: None, written: 0, suppressed: 0 }
    }

    /// Whether a line may be written now; if so, how many were suppressed since the last one
    /// written (to append to it). A refused line is counted.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.started.is_none_or(|s| now.duration_since(s) >= self.window) {
            self.started = Some(now);
            self.written = 0;
        }
        if self.written >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Writes a log line through a [`LogLimit`]: `limited!(limit, Level::Warn, "format", args..)`.
/// Suppressed lines are counted and reported with the next line written.
macro_rules! limited {
    ($limit:expr, $level:expr, $($arg:tt)+) => {
        if let Some(more) = $limit.admit(std::time::Instant::now()) {
            if more == 0 {
                log::log!($level, $($arg)+);
            } else {
                log::log!($level, "{} (and {} more like it, not logged)", format_args!($($arg)+), more);
            }
        }
    };
}
pub(crate) use limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_per_window_and_counts_the_rest() {
        let mut l = LogLimit::new(2, Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.admit(t), Some(0));
        assert_eq!(l.admit(t), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.admit(t), None);
        }
        // The next window's first line reports what the last one held back.
        assert_eq!(l.admit(t + Duration::from_secs(1)), Some(1000));
        assert_eq!(l.admit(t + Duration::from_secs(1)), Some(0));
    }
}
