//! What `apply` needs from Microsoft Graph, as one trait: the gates' reads and the `$batch` transport, plus the
//! two facts the executor needs from the client (where member references point, and the retry policy).
//! [`super::graph::GraphBackend`] is the real one; tests use in-memory fakes.

use super::executor::Transport;
use super::gates::DirectoryReads;

/// Everything `apply` needs from Graph: the gates' reads and the `$batch` transport.
pub trait Backend: DirectoryReads + Transport {
    /// The Graph base URL that `members@odata.bind` references point at.
    fn bind_base(&self) -> String;

    /// The retry policy for the writes: the client's, from the environment ([`crate::retry`]).
    fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy::default()
    }

    /// Why Graph would refuse a write with 403, from the token's claims: the missing permission or role.
    fn explain_forbidden(&self) -> Option<String> {
        None
    }

    /// Graph's clock against ours, from the `Date` of Graph's latest answer (once the gates read Graph).
    fn clock(&self) -> Option<crate::directory::graph::ClockReading> {
        None
    }

    /// Who writes to Entra ID: the person or application behind the Graph token (once the gates got one).
    fn entra_actor(&self) -> Option<crate::identity::EntraActor> {
        None
    }
}
