//! Ctrl-C. By default it ends the command at once with exit 130 ([`exit::INTERRUPTED`]): nothing a command does
//! before it sends writes needs cleaning up (files are written atomically). While `apply` is sending, it asks
//! to stop instead ([`defer`]): the requests in flight finish, their outcomes reach the journal, and the apply
//! ends with [`crate::Error::Interrupted`] (also 130); a second Ctrl-C ends the process at once (the journal is
//! synced after every batch, so a rerun still resumes correctly).
//!
//! The handler is the `ctrlc` crate's (a signal handler on Unix, a console control handler on Windows); it
//! runs on its own thread, never inside the signal handler itself.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::error::exit;

/// The stop signal of the apply in progress, while Ctrl-C should ask it to stop rather than end the process.
static DEFERRED: Mutex<Option<watch::Sender<bool>>> = Mutex::new(None);
/// How many Ctrl-Cs were pressed while deferred.
static PRESSED: AtomicU32 = AtomicU32::new(0);

/// What the person sees when Ctrl-C asks a running apply to stop.
pub const STOPPING: &str = "stopping: finishing the request in flight and recording it in the journal (Ctrl-C \
                            again to quit at once)…";

/// Installs the Ctrl-C handler for the whole process. Call once, first thing; a second call does nothing.
pub fn install() {
    // An error means a handler is installed already (tests that run the library twice); the first one stays.
    let _ = ctrlc::set_handler(on_interrupt);
}

fn on_interrupt() {
    let deferred = DEFERRED.lock().ok().and_then(|d| d.clone());
    match deferred {
        Some(stop) if PRESSED.fetch_add(1, Ordering::SeqCst) == 0 => {
            crate::eoutln!("\n{STOPPING}");
            let _ = stop.send(true);
        }
        _ => {
            crate::eoutln!("\ninterrupted");
            std::process::exit(exit::INTERRUPTED);
        }
    }
}

/// While the returned guard lives, Ctrl-C turns the receiver true instead of ending the process.
pub fn defer() -> (Deferred, watch::Receiver<bool>) {
    let (stop, stopped) = watch::channel(false);
    PRESSED.store(0, Ordering::SeqCst);
    if let Ok(mut deferred) = DEFERRED.lock() {
        *deferred = Some(stop);
    }
    (Deferred(()), stopped)
}

/// Keeps Ctrl-C deferred (see [`defer`]); dropping it makes Ctrl-C end the process again.
#[derive(Debug)]
pub struct Deferred(());

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Ok(mut deferred) = DEFERRED.lock() {
            *deferred = None;
        }
    }
}
