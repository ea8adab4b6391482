//! `apply`: gates, the batching executor, the journal and the receipt.
//!
//! The flow of one `writeback apply`:
//!
//! ```text
//! verified plan ─► gates (tenant, groups, replay, drift, thresholds) ─► work list
//!   ─► executor ($batch of PATCH/DELETE $ref, retries) ─► journal (one fsynced line per outcome) ─► receipt
//! ```
//!
//! The pure parts ([`journal`] chain, [`gates`] drift and thresholds, [`receipt`], the batching arithmetic in
//! [`executor`]) do no I/O. The executor talks to Graph through the small [`executor::Transport`] trait and reads
//! through [`gates::DirectoryReads`], so both can be replaced by in-memory fakes in tests.

pub mod backend;
pub mod executor;
pub mod gates;
pub mod graph;
pub mod journal;
pub mod once;
pub mod receipt;
pub mod run;
pub mod session;

use serde::{Deserialize, Serialize};

use crate::identity::ObjectId;
use crate::plan::Action;

/// What became of one planned change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Graph accepted the write.
    Applied,
    /// The user was already a member, so nothing needed to be added.
    AlreadyMember,
    /// The user was already not a member, so nothing needed to be removed.
    AlreadyAbsent,
    /// The change could not be made; the record carries Graph's reason.
    Failed,
    /// An add whose user was deleted since planning (found in the deleted items before any write): nothing was
    /// sent, and it is not a failure.
    DeletedSincePlanning,
}

impl Outcome {
    /// The name used in the journal, the receipt and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyMember => "already-member",
            Outcome::AlreadyAbsent => "already-absent",
            Outcome::Failed => "failed",
            Outcome::DeletedSincePlanning => "deleted-since-planning",
        }
    }

    /// True for every outcome except [`Outcome::Failed`]: the group is as the plan wants for this user.
    pub fn is_success(self) -> bool {
        self != Outcome::Failed
    }
}

/// An error Graph returned for one request, as recorded in the journal and the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphFailure {
    /// The HTTP status of the item (0 when no answer came back).
    pub status: u16,
    /// Graph's `error.code`, e.g. `Request_ResourceNotFound`.
    pub code: Option<String>,
    /// Graph's `error.message`.
    pub message: Option<String>,
    /// Graph's `innerError.request-id`, to quote to Microsoft support.
    pub request_id: Option<String>,
}

impl std::fmt::Display for GraphFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id})")?;
        }
        Ok(())
    }
}

/// The ids of the Graph request that carried a write, so that the write can be found in Entra's audit log and
/// quoted to Microsoft support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestIds {
    /// The `client-request-id` writeback sent with the request (a fresh UUID for every request).
    pub client_request_id: String,
    /// Graph's `request-id`: the batch item's own when Graph gave one, else the `$batch` request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The final result for one change of the plan: which change, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeResult {
    /// The group.
    pub group_id: ObjectId,
    /// The user.
    pub user_id: ObjectId,
    /// Add or remove.
    pub action: Action,
    /// What happened.
    pub outcome: Outcome,
    /// A short explanation for people, e.g. "already a member when apply began".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Graph's error, for failures (and for the answer that showed a change was not needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<GraphFailure>,
}

/// How many changes ended in each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// [`Outcome::Applied`].
    pub applied: u64,
    /// [`Outcome::AlreadyMember`].
    pub already_member: u64,
    /// [`Outcome::AlreadyAbsent`].
    pub already_absent: u64,
    /// [`Outcome::Failed`].
    pub failed: u64,
    /// [`Outcome::DeletedSincePlanning`] (absent from receipts written before it existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted_since_planning: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OutcomeCounts {
    /// Counts one more outcome.
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::AlreadyMember => self.already_member += 1,
            Outcome::AlreadyAbsent => self.already_absent += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::DeletedSincePlanning => self.deleted_since_planning += 1,
        }
    }

    /// Counts a list of outcomes.
    pub fn tally<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for outcome in outcomes {
            counts.add(*outcome);
        }
        counts
    }

    /// All outcomes together.
    pub fn total(&self) -> u64 {
        self.applied + self.already_member + self.already_absent + self.failed + self.deleted_since_planning
    }
}

/// How a plan's apply ended. It lives with the ledger, which records it too and sits below `apply`.
pub use crate::ledger::FinishStatus;

/// Who ran the apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applier {
    /// The operating-system account that ran writeback.
    pub os_user: Option<String>,
    /// The principal of the `--key` that signs the receipt, when given.
    pub key_principal: Option<String>,
    /// The SHA256 fingerprint of that key.
    pub key_fingerprint: Option<String>,
    /// The writeback that applied the plan.
    pub tool_version: String,
}

impl Applier {
    /// This process's applier: the operating-system account (`USER`, `USERNAME` or `LOGNAME`) and, when a key
    /// signs the receipt, its principal and fingerprint.
    pub fn current(key: Option<&crate::trust::SigningKey>) -> Applier {
        let os_user =
            ["USER", "USERNAME", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        Applier {
            os_user,
            key_principal: key.map(|k| k.comment().to_string()).filter(|c| !c.is_empty()),
            key_fingerprint: key.map(crate::trust::SigningKey::fingerprint),
            tool_version: crate::tool_version(),
        }
    }

    /// One line for the journal: `os_user` and, when known, the key.
    pub fn label(&self) -> String {
        let user = self.os_user.clone().unwrap_or_else(|| "unknown user".into());
        match (&self.key_principal, &self.key_fingerprint) {
            (Some(p), Some(f)) => format!("{user} (key {p} {f})"),
            (None, Some(f)) => format!("{user} (key {f})"),
            _ => user,
        }
    }
}
