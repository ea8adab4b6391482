//! `writeback keygen`: make an Ed25519 signing key pair and print the allowed_signers line for it.

use std::path::{Path, PathBuf};

use crate::cli::Context;
use crate::error::{Error, Result};
use crate::trust::allowed_signers::{check_principal, line_for};
use crate::trust::{SigningKey, APPROVAL_NAMESPACE, PASSPHRASE_ENV, PLAN_NAMESPACE, RECEIPT_NAMESPACE};

/// Arguments of `writeback keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600); the public key goes to PATH.pub.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,

    /// Who the key belongs to, as it will appear in allowed_signers and in plans' `signer` (default:
    /// $USER@hostname). Also the key's comment.
    #[arg(long, value_name = "NAME")]
    pub principal: Option<String>,

    /// What the key is for; the printed allowed_signers line grants only that role's namespace: planner
    /// (writeback-plan), approver (writeback-approval) or admin (writeback-receipt). One key per role.
    #[arg(long, value_enum, default_value_t = Role::Planner)]
    pub role: Role,

    /// Replace PATH and PATH.pub if they exist.
    #[arg(long)]
    pub force: bool,

    /// Ask for a passphrase on the terminal (twice) and encrypt the key with it. Without this flag the key is
    /// encrypted with WRITEBACK_KEY_PASSPHRASE when that is set, and left unencrypted otherwise.
    #[arg(long)]
    pub passphrase_prompt: bool,
}

/// Who a key belongs to, and so what it may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Signs plans (`writeback-plan`).
    Planner,
    /// Signs approvals (`writeback-approval`).
    Approver,
    /// Signs apply receipts (`writeback-receipt`).
    Admin,
}

impl Role {
    /// The one namespace the role signs.
    pub fn namespace(self) -> &'static str {
        match self {
            Role::Planner => PLAN_NAMESPACE,
            Role::Approver => APPROVAL_NAMESPACE,
            Role::Admin => RECEIPT_NAMESPACE,
        }
    }
}

/// Runs `writeback keygen`.
pub fn run(args: KeygenArgs, _ctx: &Context) -> Result<()> {
    let principal = match args.principal {
        Some(p) => p,
        None => default_principal(),
    };
    check_principal(&principal).map_err(|m| Error::Usage(format!("{m} (give --principal)")))?;
    let pub_path = public_key_path(&args.out);
    if let Some(folder) = args.out.parent().filter(|f| !f.as_os_str().is_empty() && !f.is_dir()) {
        return Err(Error::Usage(format!(
            "the folder {} does not exist; create it first (mkdir -p {0}) or give --out a path in an existing folder",
            folder.display()
        )));
    }
    if !args.force {
        for path in [&args.out, &pub_path] {
            if path.exists() {
                return Err(Error::Usage(format!(
                    "{} exists already; give --force to replace it (the old key stops working for new signatures)",
                    path.display()
                )));
            }
        }
    }
    let passphrase =
        if args.passphrase_prompt { Some(prompt_new_passphrase()?) } else { std::env::var(PASSPHRASE_ENV).ok() };
    let passphrase = passphrase.filter(|p| !p.is_empty());

    let key = SigningKey::generate(&principal).map_err(|e| Error::Internal(e.to_string()))?;
    let private = key.to_openssh_bytes(passphrase.as_deref()).map_err(|e| Error::Internal(e.to_string()))?;
    let public = format!("{}\n", key.public_key_openssh());
    // The temporary files atomic_write stages are created with mode 0600, so the private key is never
    // readable by others, not even for a moment.
    crate::atomic_write::write_together(&[(&args.out, &private), (&pub_path, public.as_bytes())])?;
    set_mode(&args.out, 0o600)?;
    set_mode(&pub_path, 0o644)?;

    crate::eoutln!(
        "Wrote the private key to {} ({}) and the public key to {}.",
        args.out.display(),
        if passphrase.is_some() { "encrypted with the passphrase" } else { "not encrypted" },
        pub_path.display()
    );
    crate::eoutln!("Key fingerprint: {}", key.fingerprint());
    crate::eoutln!(
        "Add this line to the allowed_signers file that verifiers use (it lets the key sign {} only; a person with \
         another role needs another key):",
        args.role.namespace()
    );
    crate::outln!("{}", line_for(&principal, key.public_key(), &[args.role.namespace()]));
    Ok(())
}

/// `PATH.pub`.
fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn prompt_new_passphrase() -> Result<String> {
    let no_tty = |_| Error::Usage(format!("there is no terminal to ask for a passphrase on; set {PASSPHRASE_ENV}"));
    let first = rpassword::prompt_password("Passphrase for the new key (empty for none): ").map_err(no_tty)?;
    let second = rpassword::prompt_password("The same passphrase again: ").map_err(no_tty)?;
    if first != second {
        return Err(Error::Usage("the two passphrases differ; nothing was written".into()));
    }
    Ok(first)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::write(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// `$USER@hostname`, with fallbacks.
fn default_principal() -> String {
    let user = ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "writeback".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| ["HOSTNAME", "COMPUTERNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty())))
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}
