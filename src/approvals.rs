//! Approvals: the two-person rule.
//!
//! An approval is a detached SSH signature (namespace [`APPROVAL_NAMESPACE`]) over the plan's exact bytes, made
//! by someone other than the planner. It lives beside the plan so that several can coexist:
//!
//! ```text
//! plan.json                                   the plan
//! plan.json.sig                               the planner's signature
//! plan.json.approval-approver@contoso.example.sig   one approval per approver
//! ```
//!
//! The part after `.approval-` is the approver's principal (from allowed_signers) with every character other
//! than `A-Z a-z 0-9 . _ @ -` replaced by `_` (see [`file_label`]). The name is only a convenience: who approved
//! is always taken from the signature's key and the allowed_signers file, never from the file name.
//!
//! [`check`] is the gate `apply` and `export` run: it needs `required` valid approvals from distinct people, none
//! of them the plan's signer, each allowed to sign `writeback-approval`.
//!
//! **Two people means two people.** An approval counts only when its key differs from the plan's key and none of
//! the principals allowed_signers lists for the approval key could name the plan's signer: no name of one is
//! matched by a principal pattern the file lists for the other's key (case-insensitively, with the file's `*`,
//! `?` and `!` rules; see [`crate::trust::allowed_signers::principals_overlap`]). So a planner whose key is
//! listed as `planner@x,pl@x` cannot sign as `pl@x` and approve with a second key listed as `planner@x`. Among
//! the approvals, each person counts once by the same rule.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::trust::allowed_signers::principals_overlap;
use crate::trust::{verify_detached, AllowedSigners, SshSignature, VerifyError, APPROVAL_NAMESPACE};

/// The longest label kept in an approval file name.
const MAX_LABEL: usize = 80;

/// Who signed the plan: approvals by the same key, or by a key that allowed_signers lists under one of the same
/// names, do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSigner {
    /// The plan signer's principal.
    pub principal: String,
    /// The plan signing key's `SHA256:…` fingerprint.
    pub fingerprint: String,
    /// Every principal pattern allowed_signers lists for the plan's signing key.
    pub names: Vec<String>,
}

impl PlanSigner {
    /// The signer of a verified plan.
    pub fn of(verified: &crate::trust::VerifiedPlan) -> PlanSigner {
        PlanSigner {
            principal: verified.principal.clone(),
            fingerprint: verified.fingerprint.clone(),
            names: verified.signer_names.clone(),
        }
    }

    /// Every name the signer goes by: the plan's `signer` and the patterns listed for the key.
    fn all_names(&self) -> Vec<String> {
        let mut names = vec![self.principal.clone()];
        names.extend(self.names.iter().cloned());
        names
    }
}

/// Why an approval key with these allowed_signers `names` (its principal first) may not approve the plan of
/// `signer`: the pair of names that could be one person. `None` when it may.
pub fn same_person(signer: &PlanSigner, names: &[String]) -> Option<(String, String)> {
    principals_overlap(names, &signer.all_names())
}

/// An approval that counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approver {
    /// The approver's principal, from allowed_signers.
    pub principal: String,
    /// The approving key's fingerprint.
    pub fingerprint: String,
    /// The approval file.
    pub file: PathBuf,
}

/// An approval file that does not count, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The approval file.
    pub file: PathBuf,
    /// The principal, when the key is known to allowed_signers.
    pub principal: Option<String>,
    /// The key's fingerprint, when the file could be parsed.
    pub fingerprint: Option<String>,
    /// Why it does not count.
    pub reason: String,
}

/// The approvals of a plan, judged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApprovalReport {
    /// The approvals that count, in file-name order.
    pub valid: Vec<Approver>,
    /// The files that do not count.
    pub rejected: Vec<Rejection>,
}

/// The label used in an approval file name: the principal with unsafe characters replaced by `_`, or the key
/// fingerprint (likewise sanitized) when the principal leaves nothing usable.
pub fn file_label(principal: Option<&str>, fingerprint: &str) -> String {
    let clean = |raw: &str| -> String {
        let mut out: String = raw
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-') { c } else { '_' })
            .take(MAX_LABEL)
            .collect();
        // No hidden files, no `..`.
        while out.starts_with('.') {
            out.replace_range(0..1, "_");
        }
        out
    };
    match principal.map(clean) {
        Some(label) if label.chars().any(|c| c.is_ascii_alphanumeric()) => label,
        _ => clean(fingerprint),
    }
}

/// Judges each approval file against the plan's bytes without a requirement: which count and which do not.
/// Reading a file that fails is a rejection, not an error. `at` is the time the allowed_signers validity
/// windows are checked at (approvals carry no signing time, so this is the time of the check).
pub fn evaluate(
    plan_bytes: &[u8],
    signer: &PlanSigner,
    files: &[PathBuf],
    allowed: &AllowedSigners,
    at: DateTime<Utc>,
) -> ApprovalReport {
    let mut report = ApprovalReport::default();
    // The names of each counted approver, in the order of `report.valid`.
    let mut counted: Vec<Vec<String>> = Vec::new();
    for file in files {
        let reject = |principal: Option<String>, fingerprint: Option<String>, reason: String| Rejection {
            file: file.clone(),
            principal,
            fingerprint,
            reason,
        };
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                report.rejected.push(reject(None, None, format!("cannot read it: {e}")));
                continue;
            }
        };
        let parsed_fp = SshSignature::parse(&bytes).ok().map(|s| s.fingerprint());
        let known_principal = SshSignature::parse(&bytes)
            .ok()
            .and_then(|s| allowed.principals_of(s.public_key()).into_iter().find(|p| !p.starts_with('!')));
        let verified = match verify_detached(plan_bytes, &bytes, APPROVAL_NAMESPACE, allowed, None, at) {
            Ok(v) => v,
            Err(e) => {
                let reason = match e {
                    VerifyError::BadSignature(crate::trust::SigError::Mismatch) => {
                        "the signature does not match this plan's bytes (it approves another file or another version of it)".to_string()
                    }
                    e => e.to_string(),
                };
                report.rejected.push(reject(known_principal, parsed_fp, reason));
                continue;
            }
        };
        let principal = verified.principal.clone();
        let fingerprint = verified.fingerprint.clone();
        if fingerprint == signer.fingerprint {
            report.rejected.push(reject(
                Some(principal),
                Some(fingerprint),
                "made with the plan's own signing key; the planner cannot approve their own plan".into(),
            ));
            continue;
        }
        // The approval key's names: the principal it verified as, and every pattern listed for the key.
        let mut names = vec![principal.clone()];
        names.extend(SshSignature::parse(&bytes).map(|s| allowed.principals_of(s.public_key())).unwrap_or_default());
        if let Some((theirs, planners)) = same_person(signer, &names) {
            report.rejected.push(reject(
                Some(principal),
                Some(fingerprint),
                format!(
                    "the approving key is listed in allowed_signers as '{theirs}', a name of the plan's signer \
                     ('{planners}' is listed for the plan's key, {}); the planner cannot approve their own plan. \
                     Approvers need their own key under their own name",
                    signer.fingerprint
                ),
            ));
            continue;
        }
        if let Some(first) = report.valid.iter().find(|a| a.fingerprint == fingerprint) {
            let reason = format!("the same key already approved in {}; it counts once", first.file.display());
            report.rejected.push(reject(Some(principal), Some(fingerprint), reason));
            continue;
        }
        if let Some((first, (theirs, _))) =
            report.valid.iter().zip(&counted).find_map(|(a, n)| principals_overlap(&names, n).map(|pair| (a, pair)))
        {
            let reason = format!(
                "{theirs} already approved as {} in {}; a person counts once",
                first.principal,
                first.file.display()
            );
            report.rejected.push(reject(Some(principal), Some(fingerprint), reason));
            continue;
        }
        counted.push(names);
        report.valid.push(Approver { principal, fingerprint, file: file.clone() });
    }
    report
}

/// The approvals gate: at least `required` valid approvals from distinct allowed signers, none of them the plan's
/// signer. With `required == 0` it always passes (and still reports what it found).
///
/// Fails with [`Error::Approvals`] (exit 15), naming who approved, which files were rejected and why.
pub fn check(
    plan_bytes: &[u8],
    signer: &PlanSigner,
    files: &[PathBuf],
    allowed: &AllowedSigners,
    required: u32,
    at: DateTime<Utc>,
) -> Result<ApprovalReport> {
    let report = evaluate(plan_bytes, signer, files, allowed, at);
    if (report.valid.len() as u64) < u64::from(required) {
        return Err(Error::Approvals(shortfall_message(&report, required)));
    }
    Ok(report)
}

/// The approvals gate of `apply` and `export` for a plan that already passed [`crate::trust::verify_plan_files`]:
/// reads the plan again (refusing it if it changed since it was verified), finds the approvals beside it, and
/// requires `required` of them ([`check`]). With `required == 0` the approvals are still evaluated, for the record.
pub fn require_for(
    plan_path: &Path,
    verified: &crate::trust::VerifiedPlan,
    allowed_path: &Path,
    required: u32,
    at: DateTime<Utc>,
) -> Result<ApprovalReport> {
    let bytes = std::fs::read(plan_path).map_err(|e| Error::read(plan_path, e))?;
    if crate::plan::precondition::sha256_hex(&bytes) != verified.sha256 {
        return Err(Error::input(plan_path, "the file changed while it was being checked; run the command again"));
    }
    let allowed = AllowedSigners::load(allowed_path)?;
    let signer = PlanSigner::of(verified);
    check(&bytes, &signer, &crate::archive::approval_files(plan_path), &allowed, required, at)
}

/// The message of a failed gate: the count, then one line per approval and per rejection.
fn shortfall_message(report: &ApprovalReport, required: u32) -> String {
    let mut text = format!(
        "the plan needs {required} approval{} from allowed signers other than its signer, and has {} valid",
        if required == 1 { "" } else { "s" },
        report.valid.len()
    );
    if report.valid.is_empty() && report.rejected.is_empty() {
        text.push_str(
            " (no approval files were found beside the plan; an approver runs `writeback approve PLAN --key KEY`)",
        );
    }
    for line in render(report).lines() {
        text.push_str("\n  ");
        text.push_str(line.trim_start());
    }
    text
}

/// One line per approval: principal, fingerprint and whether it counts (or why not). Empty when there are none.
pub fn render(report: &ApprovalReport) -> String {
    let mut out = String::new();
    use crate::terminal::escape;
    for a in &report.valid {
        out.push_str(&format!(
            "  {}  {}  valid ({})\n",
            escape(&a.principal),
            a.fingerprint,
            escape(&file_name(&a.file))
        ));
    }
    for r in &report.rejected {
        out.push_str(&format!(
            "  {}  {}  NOT COUNTED ({}): {}\n",
            escape(r.principal.as_deref().unwrap_or("unknown signer")),
            r.fingerprint.as_deref().unwrap_or("unknown key"),
            escape(&file_name(&r.file)),
            escape(&r.reason)
        ));
    }
    out
}

/// The approvals section `show` and `verify` print: a heading and [`render`]'s lines, or a line saying there are
/// none. With `report == None` (no allowed_signers to check against) it lists the files as not checked.
pub fn render_section(files: &[PathBuf], report: Option<&ApprovalReport>) -> String {
    let mut out = String::from("Approvals\n");
    match report {
        _ if files.is_empty() => {
            out.push_str("  none (an approver adds one with `writeback approve PLAN --key KEY`)\n")
        }
        Some(report) => out.push_str(&render(report)),
        None => {
            for file in files {
                out.push_str(&format!(
                    "  {}  not checked (give --allowed-signers)\n",
                    crate::terminal::escape(&file_name(file))
                ));
            }
        }
    }
    out
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{SigningKey, PLAN_NAMESPACE};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 2, 9, 0, 0).unwrap()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        plan: PathBuf,
        bytes: Vec<u8>,
        planner: SigningKey,
        keys: Vec<SigningKey>,
        allowed: AllowedSigners,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.json");
        let bytes = b"{\"plan\": 1}\n".to_vec();
        std::fs::write(&plan, &bytes).unwrap();
        let planner = SigningKey::generate("planner@x").unwrap();
        let keys: Vec<SigningKey> = (0..4).map(|i| SigningKey::generate(&format!("k{i}")).unwrap()).collect();
        let mut text =
            format!("planner@x namespaces=\"writeback-plan,writeback-approval\" {}\n", planner.public_key_openssh());
        // k0 and k1: two approvers; k2: a second key of approver a; k3: only allowed to plan.
        text.push_str(&format!("a@x namespaces=\"writeback-approval\" {}\n", keys[0].public_key_openssh()));
        text.push_str(&format!("b@x namespaces=\"writeback-approval\" {}\n", keys[1].public_key_openssh()));
        text.push_str(&format!("A@x namespaces=\"writeback-approval\" {}\n", keys[2].public_key_openssh()));
        text.push_str(&format!("c@x namespaces=\"writeback-plan\" {}\n", keys[3].public_key_openssh()));
        let allowed = AllowedSigners::parse(&text, "allowed_signers").unwrap();
        Fixture { dir, plan, bytes, planner, keys, allowed }
    }

    impl Fixture {
        fn signer(&self) -> PlanSigner {
            PlanSigner {
                principal: "planner@x".into(),
                fingerprint: self.planner.fingerprint(),
                names: vec!["planner@x".into()],
            }
        }
        fn approve(&self, key: &SigningKey, label: &str, bytes: &[u8], namespace: &str) -> PathBuf {
            let path = crate::archive::approval_path(&self.plan, label);
            std::fs::write(&path, key.sign(namespace, bytes).unwrap()).unwrap();
            path
        }
    }

    #[test]
    fn labels_are_safe_file_name_parts() {
        assert_eq!(file_label(Some("approver@contoso.example"), "SHA256:x"), "approver@contoso.example");
        assert_eq!(file_label(Some("../evil/x y"), "fp"), "_._evil_x_y");
        assert_eq!(file_label(Some("*"), "SHA256:ab+/="), "SHA256_ab___");
        assert_eq!(file_label(None, "SHA256:ab"), "SHA256_ab");
        assert!(file_label(Some(&"x".repeat(500)), "fp").len() <= MAX_LABEL);
    }

    #[test]
    fn find_lists_only_this_plans_approvals() {
        let f = fixture();
        let a = f.approve(&f.keys[0], "a@x", &f.bytes, APPROVAL_NAMESPACE);
        std::fs::write(f.dir.path().join("plan.json.sig"), "x").unwrap();
        std::fs::write(f.dir.path().join("other.json.approval-a@x.sig"), "x").unwrap();
        std::fs::write(f.dir.path().join("plan.json.approval-.sig"), "x").unwrap();
        assert_eq!(crate::archive::approval_files(&f.plan), vec![a]);
    }

    #[test]
    fn two_distinct_approvers_pass_and_everything_else_is_rejected_with_a_reason() {
        let f = fixture();
        let a = f.approve(&f.keys[0], "a@x", &f.bytes, APPROVAL_NAMESPACE);
        let b = f.approve(&f.keys[1], "b@x", &f.bytes, APPROVAL_NAMESPACE);
        f.approve(&f.keys[0], "z-again", &f.bytes, APPROVAL_NAMESPACE); // same key twice
        f.approve(&f.keys[2], "z-other-key", &f.bytes, APPROVAL_NAMESPACE); // same person, another key
        f.approve(&f.planner, "planner", &f.bytes, APPROVAL_NAMESPACE); // self-approval
        f.approve(&f.keys[3], "c", &f.bytes, APPROVAL_NAMESPACE); // not allowed to approve
        f.approve(&f.keys[1], "b-old", b"another plan", APPROVAL_NAMESPACE); // other bytes
        f.approve(&f.keys[1], "b-ns", &f.bytes, PLAN_NAMESPACE); // wrong namespace
        std::fs::write(crate::archive::approval_path(&f.plan, "junk"), "not a signature").unwrap();
        let files = crate::archive::approval_files(&f.plan);
        let report = check(&f.bytes, &f.signer(), &files, &f.allowed, 2, now()).unwrap();
        let valid: Vec<_> = report.valid.iter().map(|a| (a.principal.as_str(), a.file.clone())).collect();
        assert_eq!(valid, vec![("a@x", a), ("b@x", b)]);
        assert_eq!(report.rejected.len(), 7, "{report:#?}");
        let reasons = render(&report);
        for needle in [
            "same key already approved",
            "a person counts once",
            "cannot approve their own plan",
            "not allowed to sign 'writeback-approval'",
            "does not match this plan",
            "namespace 'writeback-plan'",
            "malformed",
        ] {
            assert!(reasons.contains(needle), "missing {needle:?} in\n{reasons}");
        }
        let err = check(&f.bytes, &f.signer(), &files, &f.allowed, 3, now()).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::APPROVALS);
        let text = err.to_string();
        assert!(text.contains("needs 3 approvals") && text.contains("has 2 valid"), "{text}");
        assert!(text.contains("a@x") && text.contains("NOT COUNTED"), "{text}");
    }

    #[test]
    fn a_second_key_of_the_planner_does_not_count() {
        let f = fixture();
        let text = format!("{}planner@x namespaces=\"writeback-approval\" {}\n", "", f.keys[0].public_key_openssh());
        let allowed = AllowedSigners::parse(&text, "as").unwrap();
        f.approve(&f.keys[0], "p2", &f.bytes, APPROVAL_NAMESPACE);
        let err =
            check(&f.bytes, &f.signer(), &crate::archive::approval_files(&f.plan), &allowed, 1, now()).unwrap_err();
        assert!(err.to_string().contains("plan's signer"), "{err}");
    }

    #[test]
    fn zero_required_always_passes_and_none_found_says_how_to_approve() {
        let f = fixture();
        let report = check(&f.bytes, &f.signer(), &[], &f.allowed, 0, now()).unwrap();
        assert!(report.valid.is_empty());
        let err = check(&f.bytes, &f.signer(), &[], &f.allowed, 1, now()).unwrap_err();
        assert!(err.to_string().contains("writeback approve"), "{err}");
        assert!(render_section(&[], None).contains("none"));
    }

    #[test]
    fn a_planner_listed_under_an_alias_cannot_approve_with_a_second_key() {
        let f = fixture();
        // The plan's key is listed as planner@x and pl@x; the plan says pl@x. A second key, listed as
        // planner@x for approvals only, is the same person.
        let text = format!(
            "planner@x,PL@x namespaces=\"writeback-plan\" {}\nplanner@x namespaces=\"writeback-approval\" {}\n\
             b@x namespaces=\"writeback-approval\" {}\n",
            f.planner.public_key_openssh(),
            f.keys[0].public_key_openssh(),
            f.keys[1].public_key_openssh()
        );
        let allowed = AllowedSigners::parse(&text, "as").unwrap();
        let signer = PlanSigner {
            principal: "pl@x".into(),
            fingerprint: f.planner.fingerprint(),
            names: vec!["planner@x".into(), "PL@x".into()],
        };
        f.approve(&f.keys[0], "planner-again", &f.bytes, APPROVAL_NAMESPACE);
        let files = crate::archive::approval_files(&f.plan);
        let err = check(&f.bytes, &signer, &files, &allowed, 1, now()).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::APPROVALS);
        assert!(err.to_string().contains("'planner@x', a name of the plan's signer"), "{err}");
        f.approve(&f.keys[1], "b@x", &f.bytes, APPROVAL_NAMESPACE);
        let files = crate::archive::approval_files(&f.plan);
        let report = check(&f.bytes, &signer, &files, &allowed, 1, now()).unwrap();
        assert_eq!(report.valid.iter().map(|a| a.principal.as_str()).collect::<Vec<_>>(), ["b@x"]);
    }
}
