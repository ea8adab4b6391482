//! Where `plan` may write its plan and signature: `--out` placeholders, and the rules that keep a new plan from
//! silently replacing anything that matters.
//!
//! - A path that does not exist is fine.
//! - A plan with no receipt, journal or approval beside it may be replaced (its `.sig` goes with it): that is a
//!   plan nobody acted on yet, such as the one the README's first command made a minute ago.
//! - Nothing replaces, even with `--force`: the plan's own inputs, the config, the signing key (or its `.pub`),
//!   a private key, an allowed_signers file, or a plan that has a receipt, a journal or an approval beside it
//!   (it was applied or approved; replacing it would hand its trail to the new plan).
//! - Any other existing file needs `--force`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// The `--out` placeholder for the plan's creation time in UTC, as `YYYYMMDD-HHMMSS`.
pub const DATE_PLACEHOLDER: &str = "{date}";
/// The `--out` placeholder for the plan's id.
pub const PLAN_ID_PLACEHOLDER: &str = "{plan_id}";

/// `template` with `{date}` (the creation time, `20261127-132000`) and `{plan_id}` filled in, so that a scheduled
/// planner writes a new file each run.
pub fn expand(template: &Path, created_at: DateTime<Utc>, plan_id: uuid::Uuid) -> PathBuf {
    let text = template.to_string_lossy();
    if !text.contains(DATE_PLACEHOLDER) && !text.contains(PLAN_ID_PLACEHOLDER) {
        return template.to_path_buf();
    }
    PathBuf::from(
        text.replace(DATE_PLACEHOLDER, &created_at.format("%Y%m%d-%H%M%S").to_string())
            .replace(PLAN_ID_PLACEHOLDER, &plan_id.to_string()),
    )
}

/// What `plan` must never replace, and whether `--force` was given.
#[derive(Debug, Clone, Default)]
pub struct OutputPolicy {
    /// `--force`: replace an existing file that is not protected.
    pub force: bool,
    /// Files never replaced: the plan's inputs, the config, the signing key, allowed_signers files.
    pub protected: Vec<PathBuf>,
}

impl OutputPolicy {
    /// The policy for a plan of `mappings`: their input files, the config file, the signing key and its `.pub`,
    /// and the allowed_signers files named anywhere are protected.
    pub fn new(
        force: bool,
        mappings: &[super::mapping::Mapping],
        config: Option<&crate::config::Config>,
        key: &Path,
        allowed_signers: &[PathBuf],
    ) -> OutputPolicy {
        use super::mapping::{ContactsSource, DirectorySource};
        let mut protected = vec![key.to_path_buf(), crate::archive::beside(key, ".pub")];
        protected.extend(allowed_signers.iter().cloned());
        if let Some(config) = config {
            protected.push(config.path.clone());
            protected.extend(config.defaults.allowed_signers.iter().cloned());
        }
        for mapping in mappings {
            if let ContactsSource::Csv(path) = &mapping.contacts {
                protected.push(path.clone());
            }
            for source in [&mapping.members, &mapping.users] {
                if let DirectorySource::Csv(path) = source {
                    protected.push(path.clone());
                }
            }
            protected.extend(mapping.keep.iter().cloned());
        }
        OutputPolicy { force, protected }
    }
}

/// Checks that writing a plan to `out` and its signature beside it replaces nothing it must not
/// ([`Error::WouldOverwrite`], exit 3, naming the file, what it is and what to do).
pub fn check(out: &Path, policy: &OutputPolicy) -> Result<()> {
    let sig = crate::archive::signature_path(out);
    let out_state = state_of(out, policy)?;
    let sig_state = state_of(&sig, policy)?;
    let refuse = |path: &Path, message: String| Err(Error::WouldOverwrite { path: path.to_path_buf(), message });
    for (path, state) in [(out, &out_state), (sig.as_path(), &sig_state)] {
        if let State::Protected(what) = state {
            return refuse(
                path,
                format!(
                    "this is {what}; a plan never replaces it, even with --force. Give --out another file, e.g. \
                     --out plan-{{date}}.json"
                ),
            );
        }
    }
    match out_state {
        State::Missing | State::Replaceable => {}
        State::TrailedPlan(trail) => {
            return refuse(
                out,
                format!(
                    "this plan has {trail} beside it: it was applied or approved, and a new plan never replaces it, \
                     even with --force (its trail would seem to belong to the new plan). Give --out another file, e.g. --out \
                     plan-{{date}}.json"
                ),
            )
        }
        State::Other if policy.force => {}
        State::Other => {
            return refuse(
                out,
                "exists and is not a writeback plan; give --out another file, or pass --force to replace it".into(),
            )
        }
        State::Protected(_) => {}
    }
    // The signature goes with its plan; a signature file without a replaceable plan needs --force.
    if sig_state == State::Other && out_state == State::Missing && !policy.force {
        return refuse(
            &sig,
            "exists without the plan it signs; give --out another file, or pass --force to replace it".into(),
        );
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Missing,
    /// Never replaced: what it is.
    Protected(String),
    /// A plan with a receipt, journal or approval beside it: which.
    TrailedPlan(String),
    /// A plan nobody acted on.
    Replaceable,
    /// Any other file: replaced only with `--force`.
    Other,
}

fn state_of(path: &Path, policy: &OutputPolicy) -> Result<State> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::Missing),
        Err(e) => return Err(Error::read(path, e)),
    };
    if meta.is_dir() {
        return Ok(State::Protected("a folder".into()));
    }
    let real = path.canonicalize().ok();
    for protected in &policy.protected {
        let same = match (&real, protected.canonicalize().ok()) {
            (Some(a), Some(b)) => *a == b,
            _ => path == protected,
        };
        if same {
            return Ok(State::Protected(format!("{}, which this plan reads or signs with", protected.display())));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    if let Some(what) = sensitive(&bytes) {
        return Ok(State::Protected(what.into()));
    }
    if crate::plan::decode(&bytes).is_err() {
        return Ok(State::Other);
    }
    let mut trail = Vec::new();
    for file in [crate::archive::receipt_path(path), crate::archive::journal_path(path)] {
        if file.exists() {
            trail.push(file.display().to_string());
        }
    }
    trail.extend(crate::archive::approval_files(path).iter().map(|p| p.display().to_string()));
    Ok(if trail.is_empty() { State::Replaceable } else { State::TrailedPlan(trail.join(", ")) })
}

/// What a file's content says it is, when that is something a plan must never replace: a private key or an
/// allowed_signers file.
fn sensitive(bytes: &[u8]) -> Option<&'static str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.trim_start();
    if start.starts_with("-----BEGIN") && start.contains("PRIVATE KEY-----") {
        return Some("a private key");
    }
    let signers = crate::trust::AllowedSigners::parse(text, "").ok()?;
    (!signers.entries().is_empty()).then_some("an allowed_signers file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn plan_bytes() -> Vec<u8> {
        crate::plan::json::encode(&crate::fixtures::sample_plan())
    }

    fn refused(result: Result<()>, needle: &str) {
        match result {
            Err(e @ Error::WouldOverwrite { .. }) => {
                assert_eq!(e.exit_code(), crate::error::exit::INPUT);
                assert!(e.to_string().contains(needle), "{e}");
            }
            other => panic!("expected a refusal with {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn placeholders_make_a_new_name_each_run() {
        let at = crate::plan::timestamp::parse("2026-11-27T13:20:05Z").unwrap();
        let id = uuid::Uuid::from_u128(7);
        assert_eq!(
            expand(Path::new("plans/{date}-{plan_id}.json"), at, id),
            Path::new("plans/20261127-132005-00000000-0000-0000-0000-000000000007.json")
        );
        assert_eq!(expand(Path::new("plan.json"), at, id), Path::new("plan.json"));
    }

    #[test]
    fn a_plan_nobody_acted_on_is_replaced_and_one_with_a_trail_never() {
        let dir = tempfile::tempdir().unwrap();
        let out = write(dir.path(), "plan.json", &plan_bytes());
        write(dir.path(), "plan.json.sig", b"sig");
        let policy = OutputPolicy::default();
        check(&out, &policy).unwrap();
        for trail in ["plan.json.receipt.json", "plan.json.journal.jsonl", "plan.json.approval-a@x.sig"] {
            let path = write(dir.path(), trail, b"x");
            refused(check(&out, &policy), trail);
            refused(check(&out, &OutputPolicy { force: true, ..OutputPolicy::default() }), "even with --force");
            std::fs::remove_file(path).unwrap();
        }
        check(&out, &policy).unwrap();
    }

    #[test]
    fn other_files_need_force_and_keys_inputs_and_signers_never_go() {
        let dir = tempfile::tempdir().unwrap();
        let notes = write(dir.path(), "notes.txt", b"my notes");
        refused(check(&notes, &OutputPolicy::default()), "--force");
        check(&notes, &OutputPolicy { force: true, ..OutputPolicy::default() }).unwrap();

        let key = crate::trust::SigningKey::generate("p@x").unwrap();
        let key_file = write(dir.path(), "key", &key.to_openssh_bytes(None).unwrap());
        let signers = format!("p@x namespaces=\"writeback-plan\" {}\n", key.public_key_openssh());
        let signers_file = write(dir.path(), "trusted", signers.as_bytes());
        let contacts = write(dir.path(), "contacts.csv", b"Email\na@x\n");
        let force = OutputPolicy { force: true, protected: vec![contacts.clone()] };
        refused(check(&key_file, &force), "a private key");
        refused(check(&signers_file, &force), "an allowed_signers file");
        refused(check(&contacts, &force), "which this plan reads");
        refused(check(&dir.path().join("./contacts.csv"), &force), "which this plan reads");
        refused(check(dir.path(), &force), "a folder");

        // A stray signature without its plan needs --force too; a protected one never goes.
        let fresh = dir.path().join("fresh.json");
        write(dir.path(), "fresh.json.sig", b"old");
        refused(check(&fresh, &OutputPolicy::default()), "without the plan");
        check(&fresh, &OutputPolicy { force: true, ..OutputPolicy::default() }).unwrap();
        let over_key = dir.path().join("key.json");
        std::fs::copy(&key_file, dir.path().join("key.json.sig")).unwrap();
        refused(check(&over_key, &force), "a private key");
    }
}
