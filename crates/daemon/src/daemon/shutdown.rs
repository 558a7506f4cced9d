//! [`Shutdown`]: how another thread stops the data thread.
//!
//! The loop sleeps in epoll; a flag alone would be seen only at its next
//! wake-up, so triggering also wakes it through its [`mio::Waker`]. A
//! trigger before the loop exists is remembered and acted on at its start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A handle that ends [`run`](super::run) from any thread: cloned freely,
/// all clones stop the same loop.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Default)]
struct Inner {
    requested: AtomicBool,
    /// Why the daemon must stop in error (an edge thread panicked), if so.
    failure: Mutex<Option<String>>,
    waker: Mutex<Option<Arc<mio::Waker>>>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.is_requested())
            .field("failure", &self.failure())
            .finish()
    }
}

impl Shutdown {
    /// A handle not triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Ask the loop to stop as on SIGTERM: every client gets BYE "hub
    /// shutting down", and `run` returns `Ok`.
    pub fn trigger(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Ask the loop to stop because the daemon can no longer do its job
    /// (an edge thread died): clients get their BYE as on SIGTERM, and
    /// `run` returns an error naming `why`, so the process exits non-zero
    /// and its supervisor restarts it. The first failure is kept.
    pub fn fail(&self, why: impl Into<String>) {
        {
            let mut failure = self.0.failure.lock().unwrap_or_else(|e| e.into_inner());
            failure.get_or_insert_with(|| why.into());
        }
        self.trigger();
    }

    /// A sink for [`crate::supervise::spawn`]: a panicking edge thread
    /// [`fail`](Self::fail)s the daemon.
    pub fn on_panic(&self) -> crate::supervise::OnPanic {
        let this = self.clone();
        std::sync::Arc::new(move |why| this.fail(why))
    }

    /// Has a stop been asked for?
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Why the daemon was stopped in error, if it was.
    pub fn failure(&self) -> Option<String> {
        self.0
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The loop's waker: triggering wakes it from now on (at once if a
    /// stop was asked for already).
    pub(crate) fn attach(&self, waker: Arc<mio::Waker>) {
        *self.0.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
        if self.is_requested() {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(w) = self
            .0
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = w.wake();
        }
    }
}
