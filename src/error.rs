//! The error type every command returns, and the exit code each kind of failure maps to.
//!
//! Exit codes are part of writeback's interface: scripts branch on them. `docs/exit-codes.md` lists them; the
//! table there and [`Error::exit_code`] must agree (a test checks it).

use std::path::{Path, PathBuf};

/// Exit codes, one per kind of outcome.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// An unexpected failure (a bug, or the disk refused a write).
    pub const FAILURE: i32 = 1;
    /// The command line is wrong.
    pub const USAGE: i32 = 2;
    /// An input file, the config, a key or a keep list is missing or malformed.
    pub const INPUT: i32 = 3;
    /// Microsoft Graph, the sign-in endpoint or PoliteMail failed or refused a request.
    pub const SERVICE: i32 = 4;
    /// The signature is missing, malformed, or does not match the file.
    pub const BAD_SIGNATURE: i32 = 10;
    /// The signature is valid but its key is not allowed to sign plans (or was not at signing time).
    pub const UNTRUSTED_SIGNER: i32 = 11;
    /// The plan has expired.
    pub const EXPIRED: i32 = 12;
    /// The plan file is not a well-formed plan.
    pub const MALFORMED_PLAN: i32 = 13;
    /// The plan's format version is not one this writeback reads.
    pub const UNSUPPORTED_VERSION: i32 = 14;
    /// Fewer valid approvals than the policy requires.
    pub const APPROVALS: i32 = 15;
    /// The plan's times are not believable: created in the future, or it lives longer than `max_plan_lifetime`.
    pub const PLAN_TIMES: i32 = 16;
    /// The plan was made for another tenant.
    pub const TENANT_MISMATCH: i32 = 20;
    /// A group no longer exists or can no longer be changed through Graph.
    pub const GROUP_NOT_MANAGEABLE: i32 = 21;
    /// The plan was applied already.
    pub const REPLAY: i32 = 22;
    /// Membership changed since planning and `--strict` was given.
    pub const DRIFT: i32 = 23;
    /// The removals exceed `--max-removals` or `--max-removal-percent`.
    pub const THRESHOLD: i32 = 24;
    /// Apply finished but some changes failed; the receipt lists them.
    pub const PARTIAL: i32 = 25;
    /// The admin did not confirm (or there was no terminal to ask on, and no `--yes`).
    pub const NOT_CONFIRMED: i32 = 26;
    /// An object of the plan is not what the reviewer saw: not a user the admin can see, a user or UPN named
    /// twice, or a UPN or group name that differs from Graph's without the matching `--accept-…` flag.
    pub const PLAN_MISMATCH: i32 = 27;
    /// The plan was cancelled (`writeback cancel`).
    pub const CANCELLED: i32 = 28;
    /// Another apply of this plan is running (its lock names the owner).
    pub const LOCKED: i32 = 29;
    /// `check` found that the group is not where the plan said.
    pub const NOT_IN_EFFECT: i32 = 30;
    /// `audit` found a problem in the archive.
    pub const AUDIT_FINDINGS: i32 = 31;
    /// `doctor` found at least one check that fails.
    pub const DOCTOR_FAILED: i32 = 32;
    /// `plan --detailed-exitcode`: a plan with changes was written (0 then means: nothing to change, no plan).
    pub const CHANGES: i32 = 40;
    /// The command was interrupted (Ctrl-C); `apply` can be resumed by running the same command again.
    pub const INTERRUPTED: i32 = 130;
}

/// Everything that can make a writeback command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or the combination of options is wrong.
    #[error("{0}")]
    Usage(String),

    /// An input file is missing or malformed. `location` is `file`, `file:line` or `file:line: column 'X'`.
    #[error("{location}: {message}")]
    Input {
        /// Where: the file, and the line and column when known.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },

    /// Reading or writing a file failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What writeback was doing ("read", "write", "create the folder for").
        action: &'static str,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The signature does not verify.
    #[error("{}: {message}", path.display())]
    BadSignature {
        /// The plan (or receipt) whose signature failed.
        path: PathBuf,
        /// What failed.
        message: String,
    },

    /// The signing key is not trusted for this purpose.
    #[error("{}: {message}", path.display())]
    UntrustedSigner {
        /// The signed file.
        path: PathBuf,
        /// Who signed, and why they are not trusted.
        message: String,
    },

    /// The plan has expired.
    #[error("{}: {message}", path.display())]
    Expired {
        /// The plan.
        path: PathBuf,
        /// When it expired and what to do.
        message: String,
    },

    /// The plan file's content is malformed.
    #[error("{}: not a valid plan: {message}", path.display())]
    MalformedPlan {
        /// The plan.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The plan's format version is unknown.
    #[error("{}: {message}", path.display())]
    UnsupportedVersion {
        /// The plan.
        path: PathBuf,
        /// Which version, and what to do.
        message: String,
    },

    /// `plan --out` would replace a file it must not (an input, a key, an allowed_signers file, a plan that was
    /// applied or approved), or another existing file without `--force`.
    #[error("{}: {message}", path.display())]
    WouldOverwrite {
        /// The file that would have been replaced.
        path: PathBuf,
        /// What the file is and what to do.
        message: String,
    },

    /// The receipt beside a plan records another plan's SHA-256: it is not this plan's receipt.
    #[error("{}: {message}", path.display())]
    ForeignReceipt {
        /// The receipt.
        path: PathBuf,
        /// Which plan it belongs to and what to do.
        message: String,
    },

    /// A signed receipt would be replaced by an unsigned one.
    #[error("{}: {message}", path.display())]
    SignedReceipt {
        /// The receipt.
        path: PathBuf,
        /// What to do.
        message: String,
    },

    /// `plan`: a list has no contacts, and `--allow-empty` was not given.
    #[error("{location}: {message}")]
    EmptyList {
        /// The list: a file, or the PoliteMail list.
        location: String,
        /// What it means and what to do.
        message: String,
    },

    /// The plan's times are not believable (created in the future, or too long a lifetime).
    #[error("{}: {message}", path.display())]
    PlanTimes {
        /// The plan.
        path: PathBuf,
        /// Which time is wrong and what to do.
        message: String,
    },

    /// Not enough approvals.
    #[error("{0}")]
    Approvals(String),

    /// A remote service failed or refused.
    #[error("{0}")]
    Service(String),

    /// The plan was made for another tenant than the one the credentials sign in to.
    #[error("{0}")]
    TenantMismatch(String),

    /// A group is gone, or Graph cannot change its membership.
    #[error("{0}")]
    GroupNotManageable(String),

    /// The plan was applied already (or its id was used for other contents).
    #[error("{0}")]
    Replay(String),

    /// Membership changed since planning by more than the drift limit (or at all, with `--strict`).
    #[error("{0}")]
    Drift(String),

    /// The removals exceed the removal limits.
    #[error("{0}")]
    Threshold(String),

    /// Apply finished but some changes failed; the receipt lists them (already reported on stdout).
    #[error("{0}")]
    Partial(String),

    /// The admin did not confirm.
    #[error("{0}")]
    NotConfirmed(String),

    /// An object of the plan is not what the reviewer saw (see [`exit::PLAN_MISMATCH`]).
    #[error("{0}")]
    PlanMismatch(String),

    /// The plan was cancelled.
    #[error("{0}")]
    Cancelled(String),

    /// Another apply of this plan holds its lock.
    #[error("{0}")]
    Locked(String),

    /// `check`: changes of the plan are not in effect (already reported on stdout).
    #[error("{0}")]
    NotInEffect(String),

    /// `audit`: the archive has findings (already reported on stdout).
    #[error("{0}")]
    AuditFindings(String),

    /// `doctor`: at least one check failed (already reported on stdout).
    #[error("{0}")]
    DoctorFailed(String),

    /// The command was interrupted by Ctrl-C; the message says how to resume.
    #[error("{0}")]
    Interrupted(String),

    /// A bug or an unexpected condition.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Input { .. } => exit::INPUT,
            Error::Io { .. } => exit::INPUT,
            Error::BadSignature { .. } => exit::BAD_SIGNATURE,
            Error::UntrustedSigner { .. } => exit::UNTRUSTED_SIGNER,
            Error::Expired { .. } => exit::EXPIRED,
            Error::MalformedPlan { .. } => exit::MALFORMED_PLAN,
            Error::UnsupportedVersion { .. } => exit::UNSUPPORTED_VERSION,
            Error::PlanTimes { .. } => exit::PLAN_TIMES,
            Error::WouldOverwrite { .. } => exit::INPUT,
            Error::ForeignReceipt { .. } => exit::INPUT,
            Error::SignedReceipt { .. } => exit::INPUT,
            Error::EmptyList { .. } => exit::INPUT,
            Error::Approvals(_) => exit::APPROVALS,
            Error::Service(_) => exit::SERVICE,
            Error::TenantMismatch(_) => exit::TENANT_MISMATCH,
            Error::GroupNotManageable(_) => exit::GROUP_NOT_MANAGEABLE,
            Error::Replay(_) => exit::REPLAY,
            Error::Drift(_) => exit::DRIFT,
            Error::Threshold(_) => exit::THRESHOLD,
            Error::Partial(_) => exit::PARTIAL,
            Error::NotConfirmed(_) => exit::NOT_CONFIRMED,
            Error::PlanMismatch(_) => exit::PLAN_MISMATCH,
            Error::Cancelled(_) => exit::CANCELLED,
            Error::Locked(_) => exit::LOCKED,
            Error::NotInEffect(_) => exit::NOT_IN_EFFECT,
            Error::AuditFindings(_) => exit::AUDIT_FINDINGS,
            Error::DoctorFailed(_) => exit::DOCTOR_FAILED,
            Error::Interrupted(_) => exit::INTERRUPTED,
            Error::Internal(_) => exit::FAILURE,
        }
    }

    /// An input error for a whole file.
    pub fn input(path: &Path, message: impl Into<String>) -> Error {
        Error::Input { location: path.display().to_string(), message: message.into() }
    }

    /// An input error at a line (1-based) of a file.
    pub fn input_at(path: &Path, line: u64, message: impl Into<String>) -> Error {
        Error::Input { location: format!("{}:{line}", path.display()), message: message.into() }
    }

    /// A read failure.
    pub fn read(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), action: "read", source }
    }

    /// A write failure.
    pub fn write(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), action: "write", source }
    }

    /// Maps a plan decoding error to the matching variant for `path`.
    pub fn plan(path: &Path, err: crate::plan::PlanError) -> Error {
        match err {
            crate::plan::PlanError::Malformed(message) => Error::MalformedPlan { path: path.to_path_buf(), message },
            e @ (crate::plan::PlanError::UnsupportedVersion(_) | crate::plan::PlanError::UnknownVersion(_)) => {
                Error::UnsupportedVersion { path: path.to_path_buf(), message: e.to_string() }
            }
        }
    }
}

/// The result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::exit;

    /// docs/exit-codes.md and the constants must agree.
    #[test]
    fn documented_exit_codes_match() {
        let doc = include_str!("../docs/exit-codes.md");
        let documented: Vec<(i32, String)> = doc
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse().ok()?;
                Some((code, cells.get(2)?.to_string()))
            })
            .collect();
        let constants = [
            (exit::OK, "OK"),
            (exit::FAILURE, "FAILURE"),
            (exit::USAGE, "USAGE"),
            (exit::INPUT, "INPUT"),
            (exit::SERVICE, "SERVICE"),
            (exit::BAD_SIGNATURE, "BAD_SIGNATURE"),
            (exit::UNTRUSTED_SIGNER, "UNTRUSTED_SIGNER"),
            (exit::EXPIRED, "EXPIRED"),
            (exit::MALFORMED_PLAN, "MALFORMED_PLAN"),
            (exit::UNSUPPORTED_VERSION, "UNSUPPORTED_VERSION"),
            (exit::APPROVALS, "APPROVALS"),
            (exit::PLAN_TIMES, "PLAN_TIMES"),
            (exit::TENANT_MISMATCH, "TENANT_MISMATCH"),
            (exit::GROUP_NOT_MANAGEABLE, "GROUP_NOT_MANAGEABLE"),
            (exit::REPLAY, "REPLAY"),
            (exit::DRIFT, "DRIFT"),
            (exit::THRESHOLD, "THRESHOLD"),
            (exit::PARTIAL, "PARTIAL"),
            (exit::NOT_CONFIRMED, "NOT_CONFIRMED"),
            (exit::PLAN_MISMATCH, "PLAN_MISMATCH"),
            (exit::CANCELLED, "CANCELLED"),
            (exit::LOCKED, "LOCKED"),
            (exit::NOT_IN_EFFECT, "NOT_IN_EFFECT"),
            (exit::AUDIT_FINDINGS, "AUDIT_FINDINGS"),
            (exit::DOCTOR_FAILED, "DOCTOR_FAILED"),
            (exit::CHANGES, "CHANGES"),
            (exit::INTERRUPTED, "INTERRUPTED"),
        ];
        let expected: Vec<(i32, String)> = constants.iter().map(|(c, n)| (*c, n.to_string())).collect();
        assert_eq!(documented, expected);
    }
}
