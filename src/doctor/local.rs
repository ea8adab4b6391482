//! The checks that need no network: the config file, the signing key, the allowed_signers file and the apply
//! ledger folder.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ssh_key::{Algorithm, PrivateKey, PublicKey};

use super::{Check, DoctorRequest};
use crate::config::{self, Config, Scope};
use crate::signin::Role;
use crate::trust::{AllowedSigners, ALL_NAMESPACES, APPROVAL_NAMESPACE, PLAN_NAMESPACE, RECEIPT_NAMESPACE};

/// The SSHSIG namespace the role signs in.
pub fn namespace(role: Role) -> &'static str {
    match role {
        Role::Planner => PLAN_NAMESPACE,
        Role::Approver => APPROVAL_NAMESPACE,
        Role::Admin => RECEIPT_NAMESPACE,
    }
}

/// Which config file is in use (and which `writeback.toml` files were seen and ignored); the config, when one
/// was read.
pub fn config(request: &DoctorRequest, checks: &mut Vec<Check>) -> Option<Config> {
    let scope = if request.role == Role::Planner { Scope::Planner } else { Scope::Other };
    let found = match config::discover(scope, request.config.as_deref(), None) {
        Ok(found) => found,
        Err(e) => {
            checks.push(Check::fail(
                "config",
                e.to_string(),
                "fix the file at the line named (see docs/configuration.md), or point --config at another",
            ));
            return None;
        }
    };
    match &found.source {
        Some(source) => {
            checks.push(Check::pass("config", format!("{} ({})", source.path().display(), source.describe())))
        }
        None => checks.push(Check::warn(
            "config",
            "no config file: only flags and environment variables are used, and no group can be checked",
            format!(
                "write the settings and [[sync]] mappings into {} or pass --config FILE (see docs/configuration.md)",
                crate::folders::user_config_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/writeback/writeback.toml".into())
            ),
        )),
    }
    if !found.ignored.is_empty() {
        let names: Vec<String> = found.ignored.iter().map(|p| p.display().to_string()).collect();
        checks.push(Check::warn(
            "ignored config",
            format!(
                "{} seen and not read: only `writeback plan` reads a writeback.toml in the working folder",
                names.join(", ")
            ),
            "if its settings are meant for this role, pass it with --config FILE or move them into the file in use",
        ));
    }
    found.config
}

/// The allowed_signers file: from the flag or environment, else the config. `Ok(None)` when none is set;
/// `Err` is the failed check when it cannot be read or parsed.
pub fn load_allowed_signers(
    request: &DoctorRequest,
    config: Option<&Config>,
) -> Result<Option<(PathBuf, AllowedSigners)>, Check> {
    let Some(path) =
        request.allowed_signers.clone().or_else(|| config.and_then(|c| c.defaults.allowed_signers.clone()))
    else {
        return Ok(None);
    };
    match AllowedSigners::load(&path) {
        Ok(allowed) => Ok(Some((path, allowed))),
        Err(e) => Err(Check::fail(
            "allowed_signers",
            e.to_string(),
            "fix the line named: each line is `principal namespaces=\"…\" ssh-ed25519 KEY` (see docs/trust.md)",
        )),
    }
}

/// The check when no allowed_signers file is set: the approver and the admin cannot work without one; a planner
/// only cannot check that its key is trusted.
pub fn no_allowed_signers(role: Role) -> Check {
    let fix = "pass --allowed-signers FILE, set WRITEBACK_ALLOWED_SIGNERS or allowed_signers in the config";
    match role {
        Role::Planner => Check::warn("allowed_signers", "none set: cannot check that your key is trusted", fix),
        role => Check::fail("allowed_signers", format!("none set: the {} must verify signatures", role.as_str()), fix),
    }
}

/// The signing key: readable, mode 600, Ed25519, its principal trusted in allowed_signers for the role's
/// namespace; a warning when the same key may sign both plans and approvals.
pub fn signing_key(
    request: &DoctorRequest,
    config: Option<&Config>,
    allowed: Option<&AllowedSigners>,
    checks: &mut Vec<Check>,
) {
    let defaults = config.map(|c| &c.defaults);
    let Some(path) = request.key.clone().or_else(|| defaults.and_then(|d| d.key.clone())) else {
        let fix = "pass --key FILE, set WRITEBACK_KEY or key in the config; `writeback keygen` makes a key";
        checks.push(match request.role {
            Role::Admin => Check::warn("signing key", "no key: apply's receipts will not be signed", fix),
            role => Check::fail("signing key", format!("no key: the {} cannot sign", role.as_str()), fix),
        });
        return;
    };
    let public = match read_key(&path) {
        Ok((public, detail)) => {
            checks.push(Check::pass("signing key", detail));
            public
        }
        Err(check) => {
            checks.push(check);
            return;
        }
    };
    let Some(allowed) = allowed else { return };
    let claimed = match request.role {
        Role::Planner => request.signer.clone().or_else(|| defaults.and_then(|d| d.signer.clone())),
        _ => None,
    };
    let ns = namespace(request.role);
    match allowed.authorize(&public, ns, claimed.as_deref(), request.now) {
        Ok(principal) => checks.push(Check::pass(
            "signer trusted",
            format!("{principal} may sign '{ns}' files ({})", allowed.source_name()),
        )),
        Err(e) => checks.push(Check::fail(
            "signer trusted",
            e.to_string(),
            format!(
                "add the key's line for the {} with namespaces=\"{ns}\" to allowed_signers (`writeback keygen` \
                 prints it), or use the key that is listed",
                request.role.as_str()
            ),
        )),
    }
    let plans = allowed.authorize_any_time(&public, PLAN_NAMESPACE).is_ok();
    if plans && allowed.authorize_any_time(&public, APPROVAL_NAMESPACE).is_ok() {
        checks.push(Check::warn(
            "key separation",
            "this key may sign both plans and approvals: one person could plan and approve alone",
            "give the planner and the approver each their own key, each listed with one namespace",
        ));
    }
}

/// Reads a private key file without opening it (an encrypted key's public half is in the clear): its public
/// key and a description, or the failed check.
fn read_key(path: &Path) -> Result<(PublicKey, String), Check> {
    let fail = |detail: String, fix: &str| Check::fail("signing key", detail, fix);
    let shown = path.display();
    let bytes = std::fs::read(path)
        .map_err(|e| fail(format!("{shown}: cannot read it: {e}"), "check the path and that you may read the file"))?;
    let mode = file_mode(path);
    if mode.is_some_and(|m| m & 0o077 != 0) {
        return Err(fail(
            format!(
                "{shown}: other users may read it (mode {:03o}); ssh and writeback refuse such keys",
                mode.unwrap_or(0)
            ),
            &format!("chmod 600 {shown}"),
        ));
    }
    let key = PrivateKey::from_openssh(&bytes).map_err(|e| {
        fail(
            format!("{shown}: not an OpenSSH private key ({e})"),
            "make an Ed25519 key with `writeback keygen` or `ssh-keygen -t ed25519`",
        )
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(fail(
            format!("{shown}: a {} key; writeback signs only with Ed25519", key.algorithm()),
            "make an Ed25519 key with `writeback keygen` or `ssh-keygen -t ed25519`",
        ));
    }
    let public = key.public_key().clone();
    let fingerprint = crate::trust::sshsig::fingerprint(&public);
    let mode = mode.map(|m| format!(", mode {m:03o}")).unwrap_or_default();
    let locked = if key.is_encrypted() { ", protected by a passphrase" } else { "" };
    Ok((public, format!("{shown}: Ed25519 {fingerprint}{mode}{locked}")))
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn file_mode(_path: &Path) -> Option<u32> {
    None
}

/// The allowed_signers file's lines: no expired key without a note saying why it stays, no key trusted for
/// every namespace.
pub fn allowed_signers_content(path: &Path, allowed: &AllowedSigners, now: DateTime<Utc>, checks: &mut Vec<Check>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.split('\n').collect();
    let entries = allowed.entries();
    checks.push(Check::pass("allowed_signers", format!("{}: {} key line(s)", path.display(), entries.len())));
    let expired: Vec<String> = entries
        .iter()
        .filter(|e| e.valid_before.is_some_and(|before| before < now))
        .filter(|e| !has_note(&lines, e.line))
        .map(|e| format!("line {} ({})", e.line, e.principals.join(",")))
        .collect();
    if !expired.is_empty() {
        checks.push(Check::warn(
            "allowed_signers expiry",
            format!("expired (valid-before is past) without a note: {}", expired.join("; ")),
            "keep an expired line only to verify old files, with a # comment above it saying so; else remove it",
        ));
    }
    let everything: Vec<String> = entries
        .iter()
        .filter(|e| !e.cert_authority && ALL_NAMESPACES.iter().all(|ns| e.allows_namespace(ns)))
        .map(|e| format!("line {} ({})", e.line, e.principals.join(",")))
        .collect();
    if !everything.is_empty() {
        checks.push(Check::fail(
            "allowed_signers namespaces",
            format!("trusted to sign plans, approvals and receipts alike: {}", everything.join("; ")),
            "add namespaces=\"writeback-plan\", \"writeback-approval\" or \"writeback-receipt\" to each line, one \
             role per key (see docs/trust.md)",
        ));
    }
}

/// True when line `line` (1-based) of the file has a note: a `#` comment on the line before, or a comment after
/// the key on the line itself.
fn has_note(lines: &[&str], line: u64) -> bool {
    let index = usize::try_from(line).unwrap_or(usize::MAX).saturating_sub(1);
    let above = index.checked_sub(1).and_then(|i| lines.get(i)).is_some_and(|l| l.trim_start().starts_with('#'));
    let own = lines.get(index).is_some_and(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let key_at = fields.iter().position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-"));
        key_at.is_some_and(|at| fields.len() > at + 2)
    });
    above || own
}

/// The apply ledger folder: new or empty is a warning (a CI runner whose state folder starts empty needs a
/// persistent `ledger`).
pub fn ledger(config: Option<&Config>) -> Check {
    let dir = match crate::ledger::resolve_dir(None, config) {
        Ok(dir) => dir,
        Err(e) => return Check::fail("ledger", e.to_string(), "set ledger = \"DIR\" in the config"),
    };
    let fix = "if plans are also applied from another machine, account or CI runner, point `ledger` in the config \
               at one persistent folder they all share (see docs/apply.md)";
    if !dir.is_dir() {
        return Check::warn(
            "ledger",
            format!("{} does not exist yet: no plan was applied with this ledger", dir.display()),
            fix,
        );
    }
    match crate::ledger::Ledger::open_existing(&dir) {
        Ok(ledger) if ledger.is_fresh() => Check::warn(
            "ledger",
            format!("{} is empty: it has no record of any plan applied before", dir.display()),
            fix,
        ),
        Ok(ledger) => {
            let n = ledger.plan_ids().map(|ids| ids.len()).unwrap_or(0);
            Check::pass("ledger", format!("{}: {n} plan(s) recorded", dir.display()))
        }
        Err(e) => Check::fail("ledger", e.to_string(), "check that you may read the ledger folder"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_a_comment_above_or_after_the_key() {
        let text = "# kept to verify 2025 plans\nold@x valid-before=\"20250101\" ssh-ed25519 AAAA\n\
                    new@x ssh-ed25519 AAAA\nother@x ssh-ed25519 AAAA left in 2025\n";
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(has_note(&lines, 2));
        assert!(!has_note(&lines, 3));
        assert!(has_note(&lines, 4));
        assert!(!has_note(&lines, 1_000));
    }
}
