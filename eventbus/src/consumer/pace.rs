//! The rate limit ([`ConsumerBuilder::rate_limit`](super::ConsumerBuilder::rate_limit)),
//! applied where it is promised: at handler starts, across every lane. Pacing
//! the fetches alone is not enough, because a lane that was busy starts its
//! queued messages back to back once it is free.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Spaces handler starts at least `interval` apart (per message).
#[derive(Debug)]
pub(super) struct Pacer {
    interval: Duration,
    /// When the next start may happen; the lock also queues the lanes, so
    /// starts are spaced from the moment each one actually went ahead.
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `per_second` handler starts per second.
    pub(super) fn new(per_second: u32) -> Self {
        Pacer {
            interval: Duration::from_secs_f64(1.0 / f64::from(per_second.max(1))),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the turn of `messages` messages handled together (a batch
    /// takes as many turns as it has messages), or until `stopping` fires:
    /// returns whether it is the turn.
    pub(super) async fn turn(
        &self,
        messages: usize,
        stopping: impl std::future::Future<Output = ()>,
    ) -> bool {
        let mut next = self.next.lock().await;
        tokio::select! {
            () = tokio::time::sleep_until(*next) => {}
            () = stopping => return false,
        }
        let turns = u32::try_from(messages.max(1)).unwrap_or(u32::MAX);
        // From now, not from the planned slot: a late start does not earn the
        // next ones a burst.
        *next = Instant::now() + self.interval.saturating_mul(turns);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_even_after_a_stall() {
        let pacer = Pacer::new(50);
        let begin = Instant::now();
        assert!(pacer.turn(1, std::future::pending()).await);
        // A stall: nobody asked for a turn for a second.
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut starts = Vec::new();
        for _ in 0..5 {
            assert!(pacer.turn(1, std::future::pending()).await);
            starts.push(Instant::now());
        }
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(20),
                "{:?}",
                pair[1] - pair[0]
            );
        }
        assert!(starts[0] - begin >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_one_turn_per_message_and_stopping_ends_the_wait() {
        let pacer = Pacer::new(10);
        assert!(pacer.turn(5, std::future::pending()).await);
        let before = Instant::now();
        assert!(pacer.turn(1, std::future::pending()).await);
        assert!(Instant::now() - before >= Duration::from_millis(500));
        assert!(!pacer.turn(1, std::future::ready(())).await);
    }
}
