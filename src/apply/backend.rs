//! What `apply` needs from Microsoft Graph, as one trait: the gates' reads and the `$batch` transport, plus the
//! two facts the executor needs from the client. [`super::graph::GraphBackend`] is the real one; tests use
//! in-memory fakes.

use std::time::Duration;

use super::executor::Transport;
use super::gates::DirectoryReads;

/// Everything `apply` needs from Graph: the gates' reads and the `$batch` transport.
pub trait Backend: DirectoryReads + Transport {
    /// The Graph base URL that `members@odata.bind` references point at.
    fn bind_base(&self) -> String;

    /// The first and the longest back-off for items Graph asks to send again without saying when.
    fn backoff(&self) -> (Duration, Duration) {
        (Duration::from_secs(1), Duration::from_secs(60))
    }
}
