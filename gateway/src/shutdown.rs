//! Graceful shutdown: a process-wide flag set from the signal thread, and a per-shard
//! signal that every accept loop and session awaits alongside its I/O.
//!
//! Signals arrive on a plain thread (signal-hook). Each shard polls the process flag on a
//! coarse timer ([`WATCH_INTERVAL`]) and then wakes its own tasks; nothing on the hot path
//! touches the flag.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often a shard looks at the process-wide flag.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// Set once, from any thread, when the process should stop.
#[derive(Debug, Clone, Default)]
pub struct ShutdownFlag(Arc<AtomicBool>);

impl ShutdownFlag {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A shard-local, one-shot broadcast: `wait()` resolves once `trigger()` was called.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: Cell<bool>,
    /// One entry per live waiter, removed when the waiter is dropped, so finished sessions
    /// leave nothing behind.
    wakers: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

impl Shutdown {
    pub fn trigger(&self) {
        self.inner.triggered.set(true);
        for (_, waker) in self.inner.wakers.take() {
            waker.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// A waiter; create one per task and poll it by `&mut` across iterations.
    pub fn wait(&self) -> Wait {
        let id = self.inner.next_waiter.get();
        self.inner.next_waiter.set(id.wrapping_add(1));
        Wait {
            inner: self.inner.clone(),
            id,
        }
    }

    /// Trigger this shard's signal once the process flag is set.
    pub async fn watch(self, flag: ShutdownFlag) {
        while !flag.is_set() && !self.is_triggered() {
            glommio::timer::sleep(WATCH_INTERVAL).await;
        }
        self.trigger();
    }
}

/// Resolves when the shard shuts down.
#[derive(Debug)]
pub struct Wait {
    inner: Rc<Inner>,
    id: u64,
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.inner.wakers.borrow_mut().remove(&self.id);
    }
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.triggered.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.inner.wakers.borrow_mut();
        match wakers.get_mut(&self.id) {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            Some(waker) => waker.clone_from(cx.waker()),
            None => {
                wakers.insert(self.id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_resolves_after_trigger() {
        let shutdown = Shutdown::default();
        let waiter = shutdown.wait();
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        futures_lite::future::block_on(waiter);
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn dropped_waiters_leave_nothing() {
        let shutdown = Shutdown::default();
        let mut waiter = Box::pin(shutdown.wait());
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert_eq!(shutdown.inner.wakers.borrow().len(), 1);
        drop(waiter);
        assert!(shutdown.inner.wakers.borrow().is_empty());
    }
}
