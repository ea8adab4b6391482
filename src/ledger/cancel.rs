//! Signed cancellations: `writeback cancel PLAN --key K` records in the ledger that a plan must not be applied.
//!
//! A cancellation is a small JSON document naming the plan (id and SHA-256 of its file), who cancelled it and
//! when, signed with SSHSIG in its own namespace, [`CANCEL_NAMESPACE`]. Its own namespace means a cancellation
//! signature can never be taken for a plan, an approval or a receipt, nor one of those for a cancellation.
//! Who may cancel: any key that allowed_signers trusts for one of writeback's roles (planner `writeback-plan`,
//! approver `writeback-approval`, admin `writeback-receipt`), or for `writeback-cancel` itself. Stopping a plan can
//! only prevent writes, so every trusted role may do it; docs/trust.md gives the reasoning.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoredCancellation;
use crate::plan::timestamp;
use crate::trust::{self, AllowedSigners, SshSignature};

/// The SSHSIG namespace of cancellation signatures.
pub const CANCEL_NAMESPACE: &str = "writeback-cancel";
/// The `format` marker of a cancellation.
pub const CANCEL_FORMAT: &str = "writeback-cancellation";
/// The cancellation format version this build writes.
pub const CANCEL_VERSION: &str = "1.0";

/// The namespaces whose holders may cancel a plan.
pub const CANCEL_ROLES: [&str; 4] =
    [trust::PLAN_NAMESPACE, trust::APPROVAL_NAMESPACE, trust::RECEIPT_NAMESPACE, CANCEL_NAMESPACE];

/// A cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    /// Always [`CANCEL_FORMAT`].
    pub format: String,
    /// `MAJOR.MINOR`.
    pub format_version: String,
    /// The plan's id.
    pub plan_id: Uuid,
    /// SHA-256 (hex) of the plan file.
    pub plan_sha256: String,
    /// When it was cancelled.
    #[serde(with = "timestamp")]
    pub cancelled_at: DateTime<Utc>,
    /// The principal of the key that signed it (its allowed_signers name).
    pub cancelled_by: String,
    /// Why, in the canceller's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Cancellation {
    /// A cancellation of the plan `plan_id` with file hash `plan_sha256`.
    pub fn new(plan_id: Uuid, plan_sha256: &str, by: &str, at: DateTime<Utc>, reason: Option<String>) -> Cancellation {
        Cancellation {
            format: CANCEL_FORMAT.into(),
            format_version: CANCEL_VERSION.into(),
            plan_id,
            plan_sha256: plan_sha256.to_string(),
            cancelled_at: at,
            cancelled_by: by.to_string(),
            reason,
        }
    }

    /// The bytes written and signed: pretty JSON and a final line feed.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a cancellation (without checking its signature).
    pub fn decode(bytes: &[u8]) -> Result<Cancellation, String> {
        let c: Cancellation =
            serde_json::from_slice(bytes).map_err(|e| format!("not a writeback cancellation ({e})"))?;
        if c.format != CANCEL_FORMAT {
            return Err(format!("not a writeback cancellation (format '{}')", c.format));
        }
        Ok(c)
    }
}

/// Checks that `key` may cancel plans: allowed_signers trusts it, at `at`, for one of [`CANCEL_ROLES`]. Returns
/// its principal.
pub fn authorize(allowed: &AllowedSigners, key: &ssh_key::PublicKey, at: DateTime<Utc>) -> Result<String, String> {
    let mut last = String::new();
    for namespace in CANCEL_ROLES {
        match allowed.authorize(key, namespace, None, at) {
            Ok(principal) => return Ok(principal),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("the key may not cancel plans: allowed_signers trusts it for none of writeback's roles ({last})"))
}

/// Verifies a cancellation found in the ledger for `plan_id`: its signature (namespace [`CANCEL_NAMESPACE`]),
/// that its key may cancel at `now`, that it names that key's principal and this plan. Returns the cancellation,
/// or what is wrong with it.
pub fn verify_stored(
    stored: &StoredCancellation,
    plan_id: Uuid,
    allowed: &AllowedSigners,
    now: DateTime<Utc>,
) -> Result<Cancellation, String> {
    let Some(signature) = &stored.signature else {
        return Err(format!("{} has no signature beside it", stored.path.display()));
    };
    let sig = SshSignature::parse(signature).map_err(|e| format!("{}: {e}", stored.path.display()))?;
    sig.verify(CANCEL_NAMESPACE, &stored.bytes).map_err(|e| format!("{}: {e}", stored.path.display()))?;
    let principal = authorize(allowed, sig.public_key(), now).map_err(|e| format!("{}: {e}", stored.path.display()))?;
    let c = Cancellation::decode(&stored.bytes).map_err(|e| format!("{}: {e}", stored.path.display()))?;
    if c.plan_id != plan_id {
        return Err(format!("{} names plan {}, not plan {plan_id}", stored.path.display(), c.plan_id));
    }
    if !c.cancelled_by.eq_ignore_ascii_case(&principal) {
        return Err(format!(
            "{} says it was cancelled by {}, but its key is allowed as {principal}",
            stored.path.display(),
            crate::terminal::escape(&c.cancelled_by)
        ));
    }
    Ok(c)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The cancellation was written to this file.
    Written(std::path::PathBuf, Cancellation),
    /// The plan was already cancelled (this cancellation verifies); nothing was written.
    Already(std::path::PathBuf, Cancellation),
}

/// `writeback cancel`: records in `ledger` a cancellation of the verified plan, signed with `key` (which must
/// be trusted for a writeback role). Refuses a plan the ledger has as finished (22: a cancellation cannot undo
/// it), and one whose apply is running now (29).
pub fn cancel(
    ledger: &super::Ledger,
    plan: &crate::trust::VerifiedPlan,
    key: &crate::trust::SigningKey,
    key_path: &std::path::Path,
    allowed: &AllowedSigners,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> crate::Result<Cancelled> {
    use crate::Error;
    let plan_id = plan.plan.plan_id;
    let principal = authorize(allowed, key.public_key(), now).map_err(|message| Error::UntrustedSigner {
        path: key_path.to_path_buf(),
        message: format!("{message}; use a planner, approver or admin key listed in allowed_signers"),
    })?;
    if let Some(finished) = ledger.record(plan_id)?.and_then(|r| r.finished) {
        return Err(Error::Replay(format!(
            "plan {plan_id} was already applied (finished {} at {}); a cancellation cannot undo it. Make a new plan \
             that reverses the changes if they are wrong",
            finished.status.as_str(),
            timestamp::format(&finished.at)
        )));
    }
    if let Some(stored) = ledger.cancellation(plan_id)? {
        if let Ok(existing) = verify_stored(&stored, plan_id, allowed, now) {
            return Ok(Cancelled::Already(stored.path, existing));
        }
    }
    // Not while an apply of the plan runs: it checked the ledger before it started, and would carry on.
    let _lock = ledger.lock(plan_id, super::lock::Owner::this_process(now)).map_err(|e| match e {
        Error::Locked(m) => Error::Locked(format!("{m}. Cancel the plan once that apply has ended")),
        other => other,
    })?;
    let c = Cancellation::new(plan_id, &plan.sha256, &principal, now, reason);
    let bytes = c.encode();
    let signature = key
        .sign(CANCEL_NAMESPACE, &bytes)
        .map_err(|e| Error::Internal(format!("signing with {} failed: {e}", key_path.display())))?;
    let path = ledger.save_cancellation(plan_id, &bytes, signature.as_bytes())?;
    Ok(Cancelled::Written(path, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::SigningKey;

    fn setup(namespaces: &str) -> (SigningKey, AllowedSigners) {
        let key = SigningKey::generate("admin@contoso.example").unwrap();
        let line = format!("admin@contoso.example namespaces=\"{namespaces}\" {}\n", key.public_key_openssh());
        (key, AllowedSigners::parse(&line, "allowed_signers").unwrap())
    }

    fn stored(key: &SigningKey, c: &Cancellation, namespace: &str) -> StoredCancellation {
        let bytes = c.encode();
        let signature = key.sign(namespace, &bytes).unwrap().into_bytes();
        StoredCancellation { path: "x.cancel.json".into(), bytes, signature: Some(signature) }
    }

    #[test]
    fn any_trusted_role_may_cancel_and_the_signature_is_bound_to_its_namespace_and_plan() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let id = Uuid::new_v4();
        let c = Cancellation::new(id, "ab", "admin@contoso.example", now, Some("wrong list".into()));
        for role in ["writeback-plan", "writeback-approval", "writeback-receipt"] {
            let (key, allowed) = setup(role);
            assert_eq!(verify_stored(&stored(&key, &c, CANCEL_NAMESPACE), id, &allowed, now).unwrap(), c);
            // A signature made for another purpose is not a cancellation.
            assert!(verify_stored(&stored(&key, &c, role), id, &allowed, now).is_err());
            // Nor is this cancellation one of another plan.
            assert!(verify_stored(&stored(&key, &c, CANCEL_NAMESPACE), Uuid::new_v4(), &allowed, now).is_err());
        }
        let (key, allowed) = setup("something-else");
        assert!(verify_stored(&stored(&key, &c, CANCEL_NAMESPACE), id, &allowed, now).unwrap_err().contains("may not"));
        let (key, allowed) = setup("writeback-plan");
        let unsigned = StoredCancellation { signature: None, ..stored(&key, &c, CANCEL_NAMESPACE) };
        assert!(verify_stored(&unsigned, id, &allowed, now).unwrap_err().contains("no signature"));
    }
}
