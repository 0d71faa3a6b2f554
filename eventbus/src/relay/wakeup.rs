//! In-process wake-ups: a relay running in the process that writes its outbox
//! hears of each write at once, instead of at its next poll.
//!
//! [`Outbox`](crate::Outbox) signals a write when its rows are inserted, which
//! is before the writer's transaction commits: sqlx offers no portable way to
//! see a commit happen. So a signal is only a hint. The relay claims at once
//! and then a few more times over a short window ([`RECHECK`]), which catches
//! the commit that follows; a transaction that commits later still, or a
//! signal that is missed, waits for the poll as before. Nothing depends on a
//! signal arriving: it only makes a claim come sooner.
//!
//! Signals are keyed by the outbox table's name, not by database: a relay
//! is also woken by writes to a table of the same name in another database
//! of the process. That costs a claim that finds nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::table::TableName;

/// Relays in this process that listen for writes: while none does, a write
/// costs one relaxed load.
static LISTENING: AtomicUsize = AtomicUsize::new(0);

/// The listening relays, by outbox table.
static LISTENERS: Mutex<Vec<(TableName, Arc<Notify>)>> = Mutex::new(Vec::new());

fn listeners() -> MutexGuard<'static, Vec<(TableName, Arc<Notify>)>> {
    // The list stays consistent whatever panicked while it was held.
    LISTENERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the relays of this process that listen on `table` that rows were
/// written to it, in a transaction that has not committed yet.
pub(crate) fn written(table: &TableName) {
    if LISTENING.load(Ordering::Relaxed) == 0 {
        return;
    }
    for (listened, notify) in listeners().iter() {
        if listened == table {
            // Stores a permit: a write while the relay is busy is not lost.
            notify.notify_one();
        }
    }
}

/// A relay's registration for the writes to one outbox table; withdrawn
/// when dropped.
#[derive(Debug)]
pub(crate) struct Writes {
    notify: Arc<Notify>,
}

impl Writes {
    /// Starts listening for writes to `table` in this process.
    pub(crate) fn on(table: TableName) -> Self {
        let notify = Arc::new(Notify::new());
        listeners().push((table, Arc::clone(&notify)));
        LISTENING.fetch_add(1, Ordering::Relaxed);
        Writes { notify }
    }

    /// Completes at the next write (at once if one came since the last call).
    async fn next(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        listeners().retain(|(_, notify)| !Arc::ptr_eq(notify, &self.notify));
        LISTENING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After a write, when the relay looks again: the pauses between its looks,
/// at 0, 2, 5, 10, 25, 50, 100, 150, 200 and 250 ms after it. Writers commit
/// right after they publish as a rule, so most commits are caught by the
/// first looks; the later ones cover a writer that does more work first, or
/// a busy machine.
const RECHECK: [Duration; 9] = [
    Duration::from_millis(2),
    Duration::from_millis(3),
    Duration::from_millis(5),
    Duration::from_millis(15),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(50),
    Duration::from_millis(50),
    Duration::from_millis(50),
];

/// Wakes the relay through `wake` after a write that `writes` hears of: at
/// once, then over the [`RECHECK`] window, which ends early at
/// `poll_interval`, where the poll takes over. Writes during a window add no
/// looks (so a steady stream of writes costs at most ten claims every 250
/// ms); the next window starts when it ends if any came. The relay heeds
/// `wake` only while idle: after a claim that found rows it looks again
/// within 20 ms anyway.
pub(crate) async fn follow(writes: Writes, wake: Arc<Notify>, poll_interval: Duration) {
    loop {
        writes.next().await;
        wake.notify_one();
        let mut waited = Duration::ZERO;
        for pause in RECHECK {
            waited += pause;
            if waited >= poll_interval {
                break;
            }
            tokio::time::sleep(pause).await;
            wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> TableName {
        TableName::parse(name).expect("valid")
    }

    #[tokio::test]
    async fn a_write_reaches_the_listeners_of_its_table_only() {
        let orders = Writes::on(table("wakeup_test_orders"));
        let other = Writes::on(table("wakeup_test_other"));
        written(&table("wakeup_test_orders"));
        tokio::time::timeout(Duration::from_secs(1), orders.next())
            .await
            .expect("the write to its table woke it");
        let quiet = tokio::time::timeout(Duration::from_millis(50), other.next()).await;
        assert!(quiet.is_err(), "a write to another table did not");
    }

    #[tokio::test]
    async fn a_dropped_listener_is_withdrawn() {
        let name = table("wakeup_test_dropped");
        let on_it = || listeners().iter().filter(|(t, _)| *t == name).count();
        let writes = Writes::on(name.clone());
        assert_eq!(on_it(), 1);
        drop(writes);
        assert_eq!(on_it(), 0);
        written(&name); // nobody left to wake, and no panic
    }

    /// Starts a follower of table `name` with `poll`, writes once, and
    /// returns when (ms after the write) it woke the relay, calling
    /// `at_look` at each look; stops after 5 s without a look.
    async fn looks(name: &str, poll: Duration, mut at_look: impl FnMut(u128)) -> Vec<u128> {
        let name = table(name);
        let writes = Writes::on(name.clone());
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(follow(writes, Arc::clone(&wake), poll));
        tokio::task::yield_now().await;
        written(&name);
        let started = tokio::time::Instant::now();
        let mut looks = Vec::new();
        while let Ok(()) = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await {
            let at = started.elapsed().as_millis();
            looks.push(at);
            at_look(at);
        }
        task.abort();
        looks
    }

    #[tokio::test(start_paused = true)]
    async fn one_write_wakes_the_relay_at_once_then_over_the_window_then_stops() {
        let looks = looks("wakeup_test_window", Duration::from_secs(1), |_| {}).await;
        assert_eq!(looks, [0, 2, 5, 10, 25, 50, 100, 150, 200, 250]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_ends_at_the_poll_interval() {
        let looks = looks("wakeup_test_short_poll", Duration::from_millis(20), |_| {}).await;
        assert_eq!(looks, [0, 2, 5, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_during_a_window_add_no_looks_and_start_the_next_one_when_it_ends() {
        let name = "wakeup_test_busy";
        let looks = looks(name, Duration::from_millis(60), |at| {
            if at == 5 {
                written(&table(name));
                written(&table(name));
            }
        })
        .await;
        assert_eq!(looks, [0, 2, 5, 10, 25, 50, 50, 52, 55, 60, 75, 100]);
    }
}
