//! Running a handler so that it cannot take the consumer down: a panic is
//! caught and an optional time limit enforced; either ends the attempt as a
//! failure, retried per the policy like an `Err`.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;

use super::handler::Failure;

/// Runs the handler call `start` (which builds its future: decoding and
/// upcasting run there, user code too) and awaits the future, within
/// `timeout` if one is set.
///
/// A panic anywhere in it, or the time running out, is a
/// [`Failure::Transient`] whose reason says so; the future is dropped before
/// this returns, so the guards of the handler's transaction it held are
/// released and the caller can roll the transaction back.
pub(super) async fn supervised<F>(
    timeout: Option<Duration>,
    start: impl FnOnce() -> F,
) -> Result<(), Failure>
where
    F: Future<Output = Result<(), Failure>>,
{
    // Unwind safety: after a panic the handler's state (its future, its
    // context) is dropped, never used again; the transaction it may have
    // left half-written is rolled back by the caller.
    let future = match std::panic::catch_unwind(AssertUnwindSafe(start)) {
        Ok(future) => future,
        Err(panic) => return Err(panicked(panic.as_ref())),
    };
    let caught = AssertUnwindSafe(future).catch_unwind();
    let outcome = match timeout {
        None => caught.await,
        Some(limit) => match tokio::time::timeout(limit, caught).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(Failure::Transient(format!(
                    "handler timed out after {limit:?} (cancelled)"
                )))
            }
        },
    };
    outcome.unwrap_or_else(|panic| Err(panicked(panic.as_ref())))
}

/// The failure a caught panic stands for, with its message when it has one
/// (`panic!` with a literal or a format string).
fn panicked(panic: &(dyn Any + Send)) -> Failure {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    Failure::Transient(format!("handler panicked: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<(), Failure>) -> String {
        match result {
            Err(Failure::Transient(r)) => r,
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_future_is_a_failure_with_its_message() {
        let r = supervised(None, || async {
            tokio::task::yield_now().await;
            panic!("boom {}", 42);
        })
        .await;
        assert_eq!(reason(r), "handler panicked: boom 42");
    }

    #[tokio::test]
    async fn a_panic_while_building_the_future_is_caught_too() {
        let r = supervised(None, || -> std::future::Ready<Result<(), Failure>> {
            panic!("in the decoder")
        })
        .await;
        assert_eq!(reason(r), "handler panicked: in the decoder");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_past_its_limit_is_cancelled() {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct OnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let held = OnDrop(std::sync::Arc::clone(&dropped));
        let r = supervised(Some(Duration::from_millis(100)), move || async move {
            let _held = held;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .await;
        assert!(reason(r).contains("timed out after 100ms"));
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the handler's state is dropped"
        );
        let ok = supervised(Some(Duration::from_secs(1)), || async { Ok(()) }).await;
        assert!(ok.is_ok());
    }
}
