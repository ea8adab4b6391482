//! Signatures and trust: SSHSIG signing and verification, the allowed_signers file, keys.
//!
//! A signed file is checked in a fixed order, and each failure has its own exit code:
//! 1. the signature over the file's exact bytes, before anything reads the file (exit 10);
//! 2. the file decodes as a plan in a format version this writeback reads (exit 13, or 14 for a version it does
//!    not read, once the key is known to be one allowed to sign plans);
//! 3. the signing key is allowed, in allowed_signers, to sign plans at the time of the check (the current time,
//!    as `ssh-keygen -Y verify` checks by default; never the plan's own `created_at`, which the signer writes),
//!    and the plan's `signer` is one of the key's principals (exit 11);
//! 4. the plan's times are believable: not made more than [`MAX_CLOCK_AHEAD`] after the time of the check, and
//!    living no longer than `max_plan_lifetime` ([`VerifiedPlan::check_times`], exit 16);
//! 5. the plan has not expired (exit 12), reported separately so that `show` and `verify` can still describe
//!    an expired plan.

pub mod allowed_signers;
pub mod keys;
pub mod sshsig;

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::plan::{self, Plan, PlanError};

pub use allowed_signers::{AllowedSigners, TrustError, ALLOWED_SIGNERS_ENV};
pub use keys::{SigningKey, PASSPHRASE_ENV};
pub use sshsig::{SigError, SshSignature};

/// The namespace of plan signatures.
pub const PLAN_NAMESPACE: &str = "writeback-plan";
/// The namespace of approval signatures.
pub const APPROVAL_NAMESPACE: &str = "writeback-approval";
/// The namespace of apply-receipt signatures.
pub const RECEIPT_NAMESPACE: &str = "writeback-receipt";
/// Every namespace writeback uses, in the order `keygen` lists them.
pub const ALL_NAMESPACES: [&str; 3] = [PLAN_NAMESPACE, APPROVAL_NAMESPACE, RECEIPT_NAMESPACE];

/// How far in the future a plan's `created_at` may lie (clocks differ a little; more is not believable).
pub const MAX_CLOCK_AHEAD: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// The longest a plan may live (`expires_at - created_at`) unless the config's `max_plan_lifetime` says otherwise.
pub const DEFAULT_MAX_PLAN_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// Why a signed file failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature is malformed, for another namespace, or does not match the bytes (exit 10).
    #[error("{0}")]
    BadSignature(#[from] SigError),
    /// The signature is good but the key may not sign this (exit 11).
    #[error("{0}")]
    Untrusted(#[from] TrustError),
    /// The signed bytes are not a well-formed plan (exit 13).
    #[error("{0}")]
    Malformed(String),
    /// The plan's format version is not read by this build (exit 14).
    #[error("{0}")]
    UnsupportedVersion(String),
    /// Two changes of one group name the same user or the same UPN (exit 27).
    #[error("{0}; the plan hides which object each change is about. Ask for a new plan")]
    Repeated(String),
    /// The plan has expired (exit 12).
    #[error("the plan expired at {expires_at} (it is now {now}); make a new plan")]
    Expired {
        /// The plan's expiry.
        expires_at: String,
        /// The time of the check.
        now: String,
    },
}

impl VerifyError {
    /// The [`crate::Error`] for this failure of the file at `path`.
    pub fn into_error(self, path: &Path) -> crate::Error {
        let path = path.to_path_buf();
        let message = self.to_string();
        match self {
            VerifyError::BadSignature(_) => crate::Error::BadSignature { path, message },
            VerifyError::Untrusted(_) => crate::Error::UntrustedSigner { path, message },
            VerifyError::Malformed(message) => crate::Error::MalformedPlan { path, message },
            VerifyError::UnsupportedVersion(_) => crate::Error::UnsupportedVersion { path, message },
            VerifyError::Expired { .. } => crate::Error::Expired { path, message },
            VerifyError::Repeated(_) => crate::Error::PlanMismatch(format!("{}: {message}", path.display())),
        }
    }
}

/// A signature that verified and whose key is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The principal the key is allowed as.
    pub principal: String,
    /// The key's `SHA256:…` fingerprint.
    pub fingerprint: String,
    /// The key, as an OpenSSH public key line.
    pub public_key: String,
}

/// A plan whose signature, signer and format version checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPlan {
    /// The decoded plan.
    pub plan: Plan,
    /// SHA-256 (hex) of the plan's bytes.
    pub sha256: String,
    /// The signer's principal (the plan's `signer`).
    pub principal: String,
    /// The signing key's `SHA256:…` fingerprint.
    pub fingerprint: String,
    /// Every principal pattern allowed_signers lists for the signing key (on any line that holds it): the names
    /// of the person who signed, which no approval of theirs may carry.
    pub signer_names: Vec<String>,
    /// True when the plan had expired at the time of the check.
    pub expired: bool,
}

impl VerifiedPlan {
    /// Fails with [`VerifyError::Expired`] when the plan had expired at the time of the check.
    pub fn check_unexpired(&self, now: DateTime<Utc>) -> Result<(), VerifyError> {
        if self.plan.is_expired(now) {
            return Err(VerifyError::Expired {
                expires_at: plan::timestamp::format(&self.plan.expires_at),
                now: plan::timestamp::format(&now),
            });
        }
        Ok(())
    }

    /// Like [`VerifiedPlan::check_unexpired`], as the command-level error for the plan at `path` (exit 12).
    pub fn ensure_unexpired(&self, path: &Path, now: DateTime<Utc>) -> crate::Result<()> {
        self.check_unexpired(now).map_err(|e| e.into_error(path))
    }

    /// Refuses a plan whose times are not believable ([`crate::Error::PlanTimes`], exit 16): made more than
    /// [`MAX_CLOCK_AHEAD`] after `at`, or living (`expires_at - created_at`) longer than `max_lifetime`.
    pub fn check_times(&self, path: &Path, at: DateTime<Utc>, max_lifetime: chrono::TimeDelta) -> crate::Result<()> {
        check_plan_times(&self.plan, at, max_lifetime)
            .map_err(|message| crate::Error::PlanTimes { path: path.to_path_buf(), message })
    }
}

/// The plan-times rule of [`VerifiedPlan::check_times`]; the message says which time is wrong and what to do.
pub fn check_plan_times(plan: &Plan, at: DateTime<Utc>, max_lifetime: chrono::TimeDelta) -> Result<(), String> {
    let created = plan::timestamp::format(&plan.created_at);
    if plan.created_at > at + MAX_CLOCK_AHEAD {
        return Err(format!(
            "the plan says it was made at {created}, {} after {} (the time of this check); a plan from the future \
             is not believable. Check the planner's clock and this one, then ask for a new plan",
            crate::plan::human_duration(plan.created_at - at),
            plan::timestamp::format(&at)
        ));
    }
    let lifetime = plan.expires_at - plan.created_at;
    if lifetime > max_lifetime {
        return Err(format!(
            "the plan lives {} (from {created} to {}), longer than max_plan_lifetime ({}); ask for a plan with a \
             shorter --expires-in, or raise max_plan_lifetime in your config file",
            crate::plan::human_duration(lifetime),
            plan::timestamp::format(&plan.expires_at),
            crate::plan::human_duration(max_lifetime)
        ));
    }
    Ok(())
}

/// Verifies a detached signature over `bytes` for `namespace`, and checks in `allowed` that its key may sign
/// for `namespace` at time `at` (as `claimed_principal`, when the signed file names one). Pure: no I/O.
pub fn verify_detached(
    bytes: &[u8],
    signature: &[u8],
    namespace: &str,
    allowed: &AllowedSigners,
    claimed_principal: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Verified, VerifyError> {
    let sig = check_signature(bytes, signature, namespace)?;
    let principal = allowed.authorize(sig.public_key(), namespace, claimed_principal, at)?;
    Ok(Verified { principal, fingerprint: sig.fingerprint(), public_key: sig.public_key_openssh() })
}

fn check_signature(bytes: &[u8], signature: &[u8], namespace: &str) -> Result<SshSignature, SigError> {
    let sig = SshSignature::parse(signature)?;
    sig.verify(namespace, bytes)?;
    Ok(sig)
}

/// Verifies a plan: the signature over the raw bytes first, then decoding, then the signer (allowed for
/// `writeback-plan` at `at`, the time of the check, as the plan's `signer`), then the format version. Expiry at
/// `at` is reported in [`VerifiedPlan::expired`], not as an error; the plan's times are checked separately
/// ([`VerifiedPlan::check_times`]). Pure: no I/O.
pub fn verify_plan(
    plan_bytes: &[u8],
    signature: &[u8],
    allowed: &AllowedSigners,
    at: DateTime<Utc>,
) -> Result<VerifiedPlan, VerifyError> {
    // (a) The signature, over the exact bytes, before anything parses them.
    let sig = check_signature(plan_bytes, signature, PLAN_NAMESPACE)?;
    // (b) The plan. An unknown major version cannot be decoded; the key must still be one allowed to sign
    // plans, so that an outsider's file is reported as untrusted rather than as too new.
    let plan = match plan::decode(plan_bytes) {
        Ok(plan) => plan,
        Err(PlanError::Malformed(message)) => return Err(VerifyError::Malformed(message)),
        Err(e) => {
            allowed.authorize_any_time(sig.public_key(), PLAN_NAMESPACE)?;
            return Err(VerifyError::UnsupportedVersion(e.to_string()));
        }
    };
    // (c) The signer, trusted at the time of the check, as the principal the plan names. Never at the plan's own
    // `created_at`: the signer writes it, so a revoked key could sign a plan dated before its revocation.
    let principal = allowed.authorize(sig.public_key(), PLAN_NAMESPACE, Some(&plan.signer), at)?;
    // (d) The format version (decode checks it; checked again here so the order never depends on a decoder).
    plan::check_version(&plan.format_version).map_err(|e| match e {
        PlanError::Malformed(m) => VerifyError::Malformed(m),
        e => VerifyError::UnsupportedVersion(e.to_string()),
    })?;
    // (e) Every change of a group names its own user, under its own UPN.
    if let Some(repeat) = plan.repeated_change() {
        return Err(VerifyError::Repeated(crate::terminal::escape(&repeat).into_owned()));
    }
    // (e) Expiry: reported, not refused.
    let expired = plan.is_expired(at);
    Ok(VerifiedPlan {
        sha256: plan::precondition::sha256_hex(plan_bytes),
        principal,
        fingerprint: sig.fingerprint(),
        signer_names: allowed.principals_of(sig.public_key()),
        expired,
        plan,
    })
}

/// Reads a plan, its signature (`sig_path`, default `<plan>.sig`) and the allowed_signers file, and runs
/// [`verify_plan`] at time `at`. A missing signature file is a bad signature (exit 10).
pub fn verify_plan_files(
    plan_path: &Path,
    sig_path: Option<&Path>,
    allowed_path: &Path,
    at: DateTime<Utc>,
) -> crate::Result<VerifiedPlan> {
    let bytes = std::fs::read(plan_path).map_err(|e| crate::Error::read(plan_path, e))?;
    let sig_path = sig_path.map(Path::to_path_buf).unwrap_or_else(|| crate::archive::signature_path(plan_path));
    let signature = match std::fs::read(&sig_path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::Error::BadSignature {
                path: plan_path.to_path_buf(),
                message: format!(
                    "the signature file {} does not exist; an unsigned plan is never trusted (give --signature if it is elsewhere)",
                    sig_path.display()
                ),
            })
        }
        Err(e) => return Err(crate::Error::read(&sig_path, e)),
    };
    let allowed = AllowedSigners::load(allowed_path)?;
    verify_plan(&bytes, &signature, &allowed, at).map_err(|e| match e {
        VerifyError::BadSignature(e) => crate::Error::BadSignature {
            path: plan_path.to_path_buf(),
            message: format!("{e} (signature file {})", sig_path.display()),
        },
        e => e.into_error(plan_path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Change, Counts, GroupPlan, PlanOptions, Precondition};
    use chrono::TimeZone;
    use proptest::prelude::*;

    use crate::fixtures::id;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 9, 0, 0).unwrap()
    }

    fn sample_plan(signer: &str) -> Plan {
        let changes = vec![Change {
            action: plan::Action::Add,
            user_id: id(3),
            upn: "carol@contoso.com".into(),
            mail: None,
            display_name: Some("Carol".into()),
            source_line: Some(2),
            reason: "on the list".into(),
            flags: vec![],
        }];
        Plan {
            format: plan::FORMAT_NAME.into(),
            format_version: plan::FORMAT_VERSION.into(),
            plan_id: uuid::Uuid::from_u128(7),
            created_at: t(2025, 3, 1),
            expires_at: t(2025, 3, 8),
            signer: signer.into(),
            tool_version: "writeback test".into(),
            tenant_id: None,
            entra_actor: None,
            groups: vec![GroupPlan {
                group_id: id(1),
                display_name: Some("All staff".into()),
                options: PlanOptions::default(),
                inputs: vec![],
                precondition: Precondition::from_members(&[id(2)]),
                counts: Counts::tally(&changes, &[]),
                changes,
                not_acted_on: vec![],
            }],
        }
    }

    struct Fixture {
        key: SigningKey,
        allowed: AllowedSigners,
        bytes: Vec<u8>,
        sig: String,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate("alice@contoso.com").unwrap();
        let allowed = AllowedSigners::parse(
            &format!("alice@contoso.com namespaces=\"writeback-plan\" {}\n", key.public_key_openssh()),
            "allowed_signers",
        )
        .unwrap();
        let bytes = plan::encode(&sample_plan("alice@contoso.com"), plan::PlanFormat::Json);
        let sig = key.sign(PLAN_NAMESPACE, &bytes).unwrap();
        Fixture { key, allowed, bytes, sig }
    }

    #[test]
    fn good_plan_verifies_and_reports_expiry() {
        let f = fixture();
        let v = verify_plan(&f.bytes, f.sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap();
        assert_eq!(v.principal, "alice@contoso.com");
        assert_eq!(v.fingerprint, f.key.fingerprint());
        assert_eq!(v.sha256, plan::precondition::sha256_hex(&f.bytes));
        assert!(!v.expired);
        v.check_unexpired(t(2025, 3, 2)).unwrap();
        let late = verify_plan(&f.bytes, f.sig.as_bytes(), &f.allowed, t(2025, 4, 1)).unwrap();
        assert!(late.expired);
        assert!(matches!(late.check_unexpired(t(2025, 4, 1)), Err(VerifyError::Expired { .. })));
    }

    #[test]
    fn wrong_namespace_is_a_bad_signature() {
        let f = fixture();
        let sig = f.key.sign(APPROVAL_NAMESPACE, &f.bytes).unwrap();
        let err = verify_plan(&f.bytes, sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature(SigError::NamespaceMismatch { .. })), "{err}");
    }

    #[test]
    fn untrusted_key_and_wrong_signer_field() {
        let f = fixture();
        let stranger = SigningKey::generate("mallory").unwrap();
        let sig = stranger.sign(PLAN_NAMESPACE, &f.bytes).unwrap();
        let err = verify_plan(&f.bytes, sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(TrustError::KeyUnknown { .. })), "{err}");

        let bytes = plan::encode(&sample_plan("bob@contoso.com"), plan::PlanFormat::Json);
        let sig = f.key.sign(PLAN_NAMESPACE, &bytes).unwrap();
        let err = verify_plan(&bytes, sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(TrustError::PrincipalNotListed { .. })), "{err}");
    }

    #[test]
    fn validity_is_judged_at_the_time_of_the_check_not_at_created_at() {
        let f = fixture();
        let line = |opts: &str| {
            AllowedSigners::parse(&format!("alice@contoso.com {opts} {}", f.key.public_key_openssh()), "as").unwrap()
        };
        // The plan says it was made 2025-03-01, when the key was valid; checked on 2030-01-01 it is not.
        let until = line("valid-before=20250302Z");
        verify_plan(&f.bytes, f.sig.as_bytes(), &until, t(2025, 3, 1)).unwrap();
        let err = verify_plan(&f.bytes, f.sig.as_bytes(), &until, t(2030, 1, 1)).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(TrustError::NoLongerValid { .. })), "{err}");
        assert!(err.to_string().contains("stopped being valid at 2025-03-02T00:00:00Z"), "{err}");
        // A key valid only later does not make an earlier-dated plan valid before that.
        let late = line("valid-after=20250302Z");
        let err = verify_plan(&f.bytes, f.sig.as_bytes(), &late, t(2025, 3, 1)).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(TrustError::NotYetValid { .. })), "{err}");
        assert!(err.to_string().contains("starts being valid at 2025-03-02T00:00:00Z"), "{err}");
        verify_plan(&f.bytes, f.sig.as_bytes(), &late, t(2025, 3, 3)).unwrap();
    }

    #[test]
    fn plan_times_must_be_believable() {
        let plan = sample_plan("alice@contoso.com");
        let month = DEFAULT_MAX_PLAN_LIFETIME;
        check_plan_times(&plan, t(2025, 3, 2), month).unwrap();
        // Created at 09:00; checked at 08:56 is within the 5 minutes, 08:54 is not.
        let early = |m: u32| Utc.with_ymd_and_hms(2025, 3, 1, 8, m, 0).unwrap();
        check_plan_times(&plan, early(56), month).unwrap();
        let err = check_plan_times(&plan, early(54), month).unwrap_err();
        assert!(err.contains("6 minutes after") && err.contains("clock"), "{err}");
        let err = check_plan_times(&plan, t(2025, 3, 2), chrono::TimeDelta::days(6)).unwrap_err();
        assert!(err.contains("lives 7 days") && err.contains("max_plan_lifetime (6 days)"), "{err}");
        let f = fixture();
        let v = verify_plan(&f.bytes, f.sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap();
        let e = v.check_times(Path::new("p"), early(0), month).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::PLAN_TIMES);
    }

    #[test]
    fn malformed_plan_with_valid_signature_is_malformed() {
        let f = fixture();
        let bytes = b"{\"format\": \"writeback-plan\"}".to_vec();
        let sig = f.key.sign(PLAN_NAMESPACE, &bytes).unwrap();
        let err = verify_plan(&bytes, sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::Malformed(_)), "{err}");
        assert_eq!(err.into_error(Path::new("p")).exit_code(), crate::error::exit::MALFORMED_PLAN);
    }

    #[test]
    fn future_version_is_unsupported_but_only_for_allowed_keys() {
        let f = fixture();
        let text = String::from_utf8(f.bytes.clone()).unwrap().replace("\"1.1\"", "\"2.0\"");
        let sig = f.key.sign(PLAN_NAMESPACE, text.as_bytes()).unwrap();
        let err = verify_plan(text.as_bytes(), sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::UnsupportedVersion(_)), "{err}");
        let stranger = SigningKey::generate("mallory").unwrap();
        let sig = stranger.sign(PLAN_NAMESPACE, text.as_bytes()).unwrap();
        let err = verify_plan(text.as_bytes(), sig.as_bytes(), &f.allowed, t(2025, 3, 2)).unwrap_err();
        assert!(matches!(err, VerifyError::Untrusted(_)), "{err}");
    }

    #[test]
    fn exit_codes() {
        use crate::error::exit;
        let p = Path::new("p");
        assert_eq!(VerifyError::BadSignature(SigError::Mismatch).into_error(p).exit_code(), exit::BAD_SIGNATURE);
        let e = VerifyError::Untrusted(TrustError::KeyUnknown { fingerprint: "x".into(), source_name: "y".into() });
        assert_eq!(e.into_error(p).exit_code(), exit::UNTRUSTED_SIGNER);
        assert_eq!(VerifyError::UnsupportedVersion("2".into()).into_error(p).exit_code(), exit::UNSUPPORTED_VERSION);
        let e = VerifyError::Expired { expires_at: "a".into(), now: "b".into() };
        assert_eq!(e.into_error(p).exit_code(), exit::EXPIRED);
    }

    #[test]
    fn verify_detached_for_other_namespaces() {
        let f = fixture();
        let allowed = AllowedSigners::parse(
            &format!("alice@contoso.com namespaces=\"writeback-*\" {}", f.key.public_key_openssh()),
            "as",
        )
        .unwrap();
        let sig = f.key.sign(RECEIPT_NAMESPACE, b"receipt").unwrap();
        let v = verify_detached(b"receipt", sig.as_bytes(), RECEIPT_NAMESPACE, &allowed, None, t(2025, 1, 1)).unwrap();
        assert_eq!(v.principal, "alice@contoso.com");
        let err = verify_detached(b"receipt", sig.as_bytes(), RECEIPT_NAMESPACE, &f.allowed, None, t(2025, 1, 1));
        assert!(matches!(err, Err(VerifyError::Untrusted(TrustError::NamespaceNotAllowed { .. }))));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any single-byte change to the plan or to its armored signature fails verification.
        #[test]
        fn any_single_byte_change_fails(in_sig in any::<bool>(), pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
            let f = FIXTURE.with(|f| (f.allowed.clone(), f.bytes.clone(), f.sig.clone()));
            let (allowed, mut bytes, sig) = f;
            let mut sig = sig.into_bytes();
            let target = if in_sig { &mut sig } else { &mut bytes };
            let i = pos.index(target.len());
            target[i] = target[i].wrapping_add(delta);
            let result = verify_plan(&bytes, &sig, &allowed, t(2025, 3, 2));
            prop_assert!(matches!(result, Err(VerifyError::BadSignature(_))), "{:?}", result.map(|v| v.sha256));
        }
    }

    /// Exhaustive over the signature file: every position, every other byte value.
    #[test]
    fn every_single_byte_change_to_the_signature_fails() {
        let f = fixture();
        let sig = f.sig.as_bytes();
        for i in 0..sig.len() {
            for delta in 1..=255u8 {
                let mut changed = sig.to_vec();
                changed[i] = changed[i].wrapping_add(delta);
                let result = verify_plan(&f.bytes, &changed, &f.allowed, t(2025, 3, 2));
                assert!(matches!(result, Err(VerifyError::BadSignature(_))), "byte {i} + {delta} verified");
            }
        }
    }

    thread_local! {
        static FIXTURE: Fixture = fixture();
    }
}
