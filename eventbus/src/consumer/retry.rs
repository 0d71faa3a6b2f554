//! [`RetryPolicy`]: how often and how long a failing message is retried before
//! it is dead-lettered.

use std::time::Duration;

/// Immediate retries, then delayed retries with exponential backoff, then the
/// dead-letter destination. Retries hold only the failing message's lane; other
/// lanes keep flowing.
///
/// Every pause is jittered ("equal jitter"): drawn at random from the upper
/// half of its nominal length, so that consumers failing together (a database
/// outage) do not all retry in step, while each pause stays at least half as
/// long as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries right after a failure (a short pause of `immediate_delay`).
    pub immediate: u32,
    /// Pause before each immediate retry (jittered into `[d/2, d]`).
    pub immediate_delay: Duration,
    /// Retries after growing delays, starting at `delayed_initial`.
    pub delayed: u32,
    /// First delayed-retry pause; doubles each time (each jittered into
    /// `[d/2, d]`).
    pub delayed_initial: Duration,
    /// Longest delayed-retry pause: no draw exceeds it.
    pub delayed_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            immediate: 2,
            immediate_delay: Duration::from_millis(50),
            delayed: 3,
            delayed_initial: Duration::from_secs(1),
            delayed_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: the first failure dead-letters.
    pub fn none() -> Self {
        RetryPolicy {
            immediate: 0,
            delayed: 0,
            ..RetryPolicy::default()
        }
    }

    /// The pause before attempt `next` (2 = the first retry), jittered, or
    /// `None` when the attempts are used up.
    pub fn delay_before(&self, next: u32) -> Option<Duration> {
        let retry = next.checked_sub(1)?;
        if retry == 0 {
            return None;
        }
        if retry <= self.immediate {
            return Some(crate::backoff::equal_jitter(
                self.immediate_delay,
                crate::backoff::unit_random(),
            ));
        }
        let delayed = retry - self.immediate;
        (delayed <= self.delayed).then(|| {
            crate::backoff::exponential(self.delayed_initial, self.delayed_max, delayed - 1)
        })
    }

    /// Total attempts a message gets, the first included.
    pub fn max_attempts(&self) -> u32 {
        1 + self.immediate + self.delayed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_growing_then_exhausted() {
        let p = RetryPolicy {
            immediate: 2,
            immediate_delay: Duration::from_millis(10),
            delayed: 3,
            delayed_initial: Duration::from_millis(100),
            delayed_max: Duration::from_millis(300),
        };
        // The nominal pauses; each draw lies in the upper half of its own.
        let nominal = [10, 10, 100, 200, 300].map(Duration::from_millis);
        for _ in 0..200 {
            for (next, ceiling) in (2..).zip(nominal) {
                let d = p.delay_before(next).expect("a retry left");
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {next}: {d:?}");
            }
            assert_eq!(p.delay_before(7), None);
        }
        // Not in step: two consumers' pauses differ.
        let draws: std::collections::HashSet<_> = (0..100).map(|_| p.delay_before(5)).collect();
        assert!(draws.len() > 50, "{draws:?}");
        assert_eq!(p.max_attempts(), 6);
        assert_eq!(RetryPolicy::none().delay_before(2), None);
    }
}
