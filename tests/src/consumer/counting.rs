//! Gauges and a subscriber wrapper that counts unsettled messages: the bound a
//! consumer promises, measured from outside it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use eventbus::transport::{Received, Settle, Subscriber};

/// A current and a highest value.
#[derive(Debug, Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    /// One more.
    pub fn up(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    /// One less.
    pub fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// The current value.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The highest value so far.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// A subscriber that counts the messages it handed out and has not seen
/// settled: the bound the consumer promises.
#[derive(Debug)]
pub struct Counting {
    /// The real subscriber.
    pub inner: Box<dyn Subscriber>,
    /// Messages handed out and not settled.
    pub unsettled: Arc<Gauge>,
}

#[derive(Debug)]
struct CountedSettle {
    inner: Box<dyn Settle>,
    unsettled: Arc<Gauge>,
}

// The traits are `#[async_trait]`; this crate implements them by hand, as the
// macro would, to need no further dependency.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Subscriber for Counting {
    fn next<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> Boxed<'async_trait, Option<eventbus::Result<Received>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut message = match self.inner.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            self.unsettled.up();
            let inner = std::mem::replace(&mut message.settle, Box::new(Nothing));
            message.settle = Box::new(CountedSettle {
                inner,
                unsettled: Arc::clone(&self.unsettled),
            });
            Some(Ok(message))
        })
    }

    fn close<'life0, 'async_trait>(&'life0 mut self) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move { self.inner.close().await })
    }
}

// Counted as settled once the settlement is on its way: the inner handle frees
// the subscriber's slot before it returns, and the broker may hand out the
// next message before this one's count would otherwise go down.
impl Settle for CountedSettle {
    fn ack<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.ack().await
        })
    }

    fn ack_durably<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.ack_durably().await
        })
    }

    fn release<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.unsettled.down();
            self.inner.release().await
        })
    }
}

/// A placeholder while a settle handle is being wrapped.
#[derive(Debug)]
pub(super) struct Nothing;

impl Settle for Nothing {
    fn ack<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }

    fn release<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, eventbus::Result<()>>
    where
        Self: 'async_trait,
    {
        Box::pin(async { Ok(()) })
    }
}
