//! Inbox retention in the background ([`ConsumerBuilder::inbox_retention`](super::ConsumerBuilder::inbox_retention)):
//! a task that lives as long as [`Consumer::run`](super::Consumer::run) and
//! deletes the group's inbox rows older than the window, batch after batch
//! while there are any, then sleeps a jittered period.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::inbox::InboxDatabase;
use crate::table::TableName;

/// Rows deleted per statement: each statement holds its locks briefly, so the
/// handlers' inbox inserts never wait long behind it.
pub(crate) const DELETE_BATCH: i64 = 1_000;

/// The shortest window accepted: anything shorter is below the time a message
/// can spend in retries, and is far more likely a unit mistake than a choice.
pub(crate) const MIN_WINDOW: Duration = Duration::from_secs(60);

/// The longest random delay before the first sweep, so that the members of a
/// group started together do not all sweep at the same moment.
const START_SPREAD: Duration = Duration::from_secs(2);

/// The pause between sweeps for `window`: rows expire continuously, so look
/// again well within the window, but never more often than once a minute
/// (nothing is gained by deleting sooner) and at least hourly.
pub(crate) fn period(window: Duration) -> Duration {
    (window / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// A running clean-up task; [`stop`](Self::stop) ends it. Dropping it (when
/// `Consumer::run` is dropped) also ends it, after its current statement.
#[derive(Debug)]
pub(super) struct Sweeper {
    /// Dropped to stop the task: its receiver then reports closed.
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl Sweeper {
    /// Starts deleting `group`'s rows of `table` older than `window`.
    pub(super) fn start<DB: InboxDatabase>(
        pool: sqlx::Pool<DB>,
        table: TableName,
        group: String,
        window: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(sweep(pool, table, group, window, stopped));
        Sweeper { stop, task }
    }

    /// Stops the task and waits for it: a statement in flight completes
    /// rather than being cut off on its connection.
    pub(super) async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

async fn sweep<DB: InboxDatabase>(
    pool: sqlx::Pool<DB>,
    table: TableName,
    group: String,
    window: Duration,
    mut stopped: watch::Receiver<()>,
) {
    let first = START_SPREAD.mul_f64(crate::backoff::unit_random());
    tokio::select! {
        () = tokio::time::sleep(first) => {}
        _ = stopped.changed() => return,
    }
    loop {
        let mut deleted = 0u64;
        // Back to back while there is work; a stop is honoured between batches.
        while stopped.has_changed().is_ok() {
            match DB::delete_older_than(&pool, &table, &group, window, DELETE_BATCH).await {
                Ok(n) => {
                    deleted += n;
                    if n < DELETE_BATCH.unsigned_abs() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(%group, error = %e, "inbox retention clean-up failed; retrying later");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(%group, deleted, window_secs = window.as_secs(), "inbox rows past retention deleted");
        }
        let pause = crate::backoff::equal_jitter(period(window), crate::backoff::unit_random());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_a_24th_of_the_window_between_a_minute_and_an_hour() {
        assert_eq!(period(MIN_WINDOW), Duration::from_secs(60));
        assert_eq!(
            period(Duration::from_secs(48 * 60)),
            Duration::from_secs(120)
        );
        assert_eq!(
            period(Duration::from_secs(14 * 24 * 3600)),
            Duration::from_secs(3600)
        );
    }
}
