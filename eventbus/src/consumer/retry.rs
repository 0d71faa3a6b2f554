//! [`RetryPolicy`]: how often and how long a failing message is retried before
//! it is dead-lettered.

use std::time::Duration;

/// Immediate retries, then delayed retries with exponential backoff, then the
/// dead-letter destination. Retries hold only the failing message's lane; other
/// lanes keep flowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries right after a failure (a short pause of `immediate_delay`).
    pub immediate: u32,
    /// Pause before each immediate retry.
    pub immediate_delay: Duration,
    /// Retries after growing delays, starting at `delayed_initial`.
    pub delayed: u32,
    /// First delayed-retry pause; doubles each time.
    pub delayed_initial: Duration,
    /// Longest delayed-retry pause.
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

    /// The pause before attempt `next` (2 = the first retry), or `None` when the
    /// attempts are used up.
    pub fn delay_before(&self, next: u32) -> Option<Duration> {
        let retry = next.checked_sub(1)?;
        if retry == 0 {
            return None;
        }
        if retry <= self.immediate {
            return Some(self.immediate_delay);
        }
        let delayed = retry - self.immediate;
        (delayed <= self.delayed)
            .then(|| crate::relay::exponential(self.delayed_initial, self.delayed_max, delayed - 1))
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
        let delays: Vec<_> = (2..=7).map(|n| p.delay_before(n)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::from_millis(10)),
                Some(Duration::from_millis(10)),
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(300)),
                None,
            ]
        );
        assert_eq!(p.max_attempts(), 6);
        assert_eq!(RetryPolicy::none().delay_before(2), None);
    }
}
