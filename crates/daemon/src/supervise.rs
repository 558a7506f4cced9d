//! Edge threads that die take the daemon with them.
//!
//! The data thread does not depend on the D-Bus, bridge or sync threads to
//! route, so if one of them panicked the hub would run on half alive: no
//! D-Bus, no bridge, channel logs never synced, and nothing but a line on
//! stderr to say so. Each such thread is started with [`spawn`] instead: a
//! panic is caught, logged at error level with the thread's name, and
//! reported to [`OnPanic`] (the daemon's
//! [`Shutdown::fail`](crate::daemon::Shutdown::fail)), which stops the data
//! thread with an error: every client gets its BYE and `ipchubd` exits
//! non-zero, so systemd (`Restart=on-failure`) starts a whole one again.

use std::any::Any;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Told, with a description, that a supervised thread panicked.
pub type OnPanic = Arc<dyn Fn(String) + Send + Sync>;

/// A sink for threads nobody supervises (tests, tools): it does nothing
/// beyond the log line [`spawn`] writes.
pub fn unsupervised() -> OnPanic {
    Arc::new(|_| {})
}

/// Start thread `name` running `body`; a panic in it is logged and
/// reported to `on_panic`, then the thread ends with it as it would have
/// (joining it still returns the panic).
pub fn spawn<F, T>(name: impl Into<String>, on_panic: OnPanic, body: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.into();
    let label = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        // The body owns everything it touches, and after a panic nothing
        // of it is used again but the payload: unwind safety holds.
        match std::panic::catch_unwind(AssertUnwindSafe(body)) {
            Ok(v) => v,
            Err(payload) => {
                let what = format!("thread {label} panicked: {}", message(&*payload));
                tracing::error!(thread = %label, "{what}; stopping the daemon");
                on_panic(what);
                std::panic::resume_unwind(payload)
            }
        }
    })
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::Shutdown;

    #[test]
    fn a_panic_is_reported_with_the_threads_name_and_stops_the_daemon() {
        let shutdown = Shutdown::new();
        let handle = spawn("ipchub-test-edge", shutdown.on_panic(), || {
            panic!("edge fell over");
        })
        .unwrap();
        assert!(
            handle.join().is_err(),
            "the thread still ends with its panic"
        );
        assert!(shutdown.is_requested());
        let why = shutdown.failure().expect("a failure is recorded");
        assert_eq!(why, "thread ipchub-test-edge panicked: edge fell over");
    }

    #[test]
    fn a_thread_that_returns_stops_nothing() {
        let shutdown = Shutdown::new();
        let handle = spawn("ipchub-test-edge", shutdown.on_panic(), || 42).unwrap();
        assert_eq!(handle.join().unwrap(), 42);
        assert!(!shutdown.is_requested());
        assert_eq!(shutdown.failure(), None);
    }

    #[test]
    fn formatted_panics_keep_their_text() {
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let on_panic: OnPanic = Arc::new(move |why| sink.lock().unwrap().push(why));
        let n = 7;
        let handle = spawn("ipchub-test-fmt", on_panic, move || {
            if n == 7 {
                panic!("slot {n} is gone");
            }
        })
        .unwrap();
        let _ = handle.join();
        assert_eq!(
            *got.lock().unwrap(),
            vec!["thread ipchub-test-fmt panicked: slot 7 is gone".to_string()]
        );
    }
}
