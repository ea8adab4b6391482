//! Ed25519 signing keys in OpenSSH's private key format (what `ssh-keygen -t ed25519` and `writeback keygen`
//! write): loading, with ssh's permission check and passphrase handling, making new ones, and signing.
//!
//! Nothing in this module prints key material or passphrases.

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, SshSig};

/// The environment variable that holds the passphrase of an encrypted key.
pub const PASSPHRASE_ENV: &str = "WRITEBACK_KEY_PASSPHRASE";

/// A key file that could not be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct KeyError {
    /// The key file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: KeyProblem,
}

/// What is wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    /// The file cannot be read.
    #[error("cannot read the key file: {0}")]
    Read(std::io::Error),
    /// Group or others may read the file.
    #[error("the private key file can be read by other users (mode {mode:03o}); ssh refuses such keys and so does writeback: run `chmod 600 {path}`")]
    Permissions {
        /// The file's permission bits.
        mode: u32,
        /// The path, for the command to run.
        path: String,
    },
    /// The file is an OpenSSH public key (a `.pub`), where a private key was needed.
    #[error("that is a public key (the `.pub` half of a key pair); give the private key file{0}")]
    PublicKey(String),
    /// The file is not an OpenSSH private key.
    #[error("not an OpenSSH private key ({0}); make one with `writeback keygen` or `ssh-keygen -t ed25519`")]
    Malformed(String),
    /// The key is not Ed25519.
    #[error("this is a {0} key; writeback signs only with Ed25519 keys (make one with `writeback keygen` or `ssh-keygen -t ed25519`)")]
    NotEd25519(String),
    /// The key is encrypted and there is no way to ask for its passphrase.
    #[error("the key is protected by a passphrase and there is no terminal to ask for it; set {PASSPHRASE_ENV}")]
    PassphraseNeeded,
    /// The passphrase variable is set but is not UTF-8 text.
    #[error("{PASSPHRASE_ENV} is set but is not valid UTF-8 text")]
    PassphraseNotText,
    /// The passphrase does not open the key.
    #[error("the passphrase is wrong (check {PASSPHRASE_ENV}, or what you typed)")]
    WrongPassphrase,
    /// Signing or encoding failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

impl From<KeyError> for crate::Error {
    fn from(e: KeyError) -> crate::Error {
        crate::Error::input(&e.path, e.problem.to_string())
    }
}

/// An unlocked Ed25519 signing key.
#[derive(Clone)]
pub struct SigningKey {
    key: PrivateKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a key file. An encrypted key is opened with the passphrase from [`PASSPHRASE_ENV`], or else one
    /// asked for on the terminal.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        SigningKey::load_with(path, passphrase_from_env_or_terminal)
    }

    /// Loads a key file, getting the passphrase of an encrypted key from `passphrase` (called only when the
    /// key is encrypted).
    pub fn load_with(
        path: &Path,
        passphrase: impl FnOnce(&Path) -> Result<String, KeyProblem>,
    ) -> Result<SigningKey, KeyError> {
        let fail = |problem| KeyError { path: path.to_path_buf(), problem };
        let text = std::fs::read(path).map_err(|e| fail(KeyProblem::Read(e)))?;
        // A public key is readable by everyone on purpose: say what it is before the permission check would.
        if ssh_key::PublicKey::from_openssh(String::from_utf8_lossy(&text).trim()).is_ok() {
            let private = path.to_string_lossy().strip_suffix(".pub").map(str::to_string);
            let hint = private.filter(|p| Path::new(p).exists()).map(|p| format!(", {p}")).unwrap_or_default();
            return Err(fail(KeyProblem::PublicKey(hint)));
        }
        check_permissions(path).map_err(fail)?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| match other_key_type(&text) {
            Some(kind) => fail(KeyProblem::NotEd25519(kind)),
            None => fail(KeyProblem::Malformed(e.to_string())),
        })?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(fail(KeyProblem::NotEd25519(key.algorithm().to_string())));
        }
        let key = if key.is_encrypted() {
            let pass = passphrase(path).map_err(fail)?;
            key.decrypt(pass.as_bytes()).map_err(|_| fail(KeyProblem::WrongPassphrase))?
        } else {
            key
        };
        Ok(SigningKey { key })
    }

    /// Makes a new random key with `comment` (the principal, by convention).
    pub fn generate(comment: &str) -> Result<SigningKey, KeyProblem> {
        let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| KeyProblem::Sign(format!("cannot make a key: {e}")))?;
        key.set_comment(comment);
        Ok(SigningKey { key })
    }

    /// The key's comment (usually the owner's principal).
    pub fn comment(&self) -> &str {
        self.key.comment()
    }

    /// The public key's fingerprint, `SHA256:…` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The public key as one OpenSSH line, `ssh-ed25519 AAAA… comment` (what a `.pub` file holds).
    pub fn public_key_openssh(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    /// The public key.
    pub fn public_key(&self) -> &ssh_key::PublicKey {
        self.key.public_key()
    }

    /// Like signing the message itself with `hash`, for a message of which only that digest is at hand (a plan
    /// hashed as it is written to disk): the same signature, byte for byte. A plan is signed over its SHA-256,
    /// which writeback computes anyway (it names the plan in receipts and the ledger); `ssh-keygen -Y verify`
    /// checks SHA-256 and SHA-512 signatures alike.
    pub fn sign_digest(&self, namespace: &str, hash: HashAlg, digest: &[u8]) -> Result<String, KeyProblem> {
        if namespace.is_empty() {
            return Err(KeyProblem::Sign("the signature needs a namespace".into()));
        }
        if digest.len() != hash.digest_size() {
            return Err(KeyProblem::Sign(format!(
                "a {} digest has {} bytes, not {}",
                hash.as_str(),
                hash.digest_size(),
                digest.len()
            )));
        }
        // What SSHSIG signs: the magic preamble, then the namespace, reserved, hash algorithm and message digest
        // as SSH strings (PROTOCOL.sshsig).
        let mut signed = b"SSHSIG".to_vec();
        for field in [namespace.as_bytes(), b"", hash.as_str().as_bytes(), digest] {
            signed.extend_from_slice(&(field.len() as u32).to_be_bytes());
            signed.extend_from_slice(field);
        }
        let signature = try_sign(&self.key, &signed).map_err(KeyProblem::Sign)?;
        let sig = SshSig::new(self.key.public_key().key_data().clone(), namespace, hash, signature)
            .map_err(|e| KeyProblem::Sign(e.to_string()))?;
        sig.to_pem(LineEnding::LF).map_err(|e| KeyProblem::Sign(e.to_string()))
    }

    /// Signs `message` for `namespace` with SHA-512 (as `ssh-keygen -Y sign` does) and returns the armored
    /// `-----BEGIN SSH SIGNATURE-----` text.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> Result<String, KeyProblem> {
        let sig = self.key.sign(namespace, HashAlg::Sha512, message).map_err(|e| KeyProblem::Sign(e.to_string()))?;
        sig.to_pem(LineEnding::LF).map_err(|e| KeyProblem::Sign(e.to_string()))
    }

    /// The private key in OpenSSH form, encrypted with `passphrase` when one is given (bcrypt-pbkdf and
    /// AES-256-CTR, like `ssh-keygen`). The bytes are secret: write them only to a 0600 file.
    pub fn to_openssh_bytes(&self, passphrase: Option<&str>) -> Result<Vec<u8>, KeyProblem> {
        let encode = |key: &PrivateKey| {
            key.to_openssh(LineEnding::LF)
                .map(|pem| pem.as_bytes().to_vec())
                .map_err(|e| KeyProblem::Sign(format!("cannot encode the key: {e}")))
        };
        match passphrase {
            Some(pass) if !pass.is_empty() => {
                let encrypted = self
                    .key
                    .encrypt(&mut rand_core::OsRng, pass.as_bytes())
                    .map_err(|e| KeyProblem::Sign(format!("cannot encrypt the key: {e}")))?;
                encode(&encrypted)
            }
            _ => encode(&self.key),
        }
    }
}

/// Signs `data` as it is (the signer's trait comes with ssh-key's `SigningKey`).
fn try_sign<K: ssh_key::SigningKey>(key: &K, data: &[u8]) -> Result<ssh_key::Signature, String> {
    key.try_sign(data).map_err(|e| e.to_string())
}

/// The key type of a private key that `ssh-key` (built for Ed25519 only) cannot decode: read from the
/// public-key part of an OpenSSH key, or from the label of an old PEM key.
fn other_key_type(text: &[u8]) -> Option<String> {
    use base64::Engine;
    let text = std::str::from_utf8(text).ok()?.trim();
    for (label, kind) in [("RSA", "RSA"), ("EC", "ECDSA"), ("DSA", "DSA")] {
        if text.starts_with(&format!("-----BEGIN {label} PRIVATE KEY-----")) {
            return Some(format!("{kind} (PEM)"));
        }
    }
    let body: String = text
        .strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----")?
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let blob = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    // "openssh-key-v1\0", string cipher, string kdf, string kdf options, uint32 count, string public key
    let mut at = b"openssh-key-v1\0".len();
    if !blob.starts_with(b"openssh-key-v1\0") {
        return None;
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = blob.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes) as usize)
    };
    for _ in 0..3 {
        at = at.checked_add(4)?.checked_add(read_u32(at)?)?;
    }
    at = at.checked_add(4 + 4)?; // key count, public key length
    let type_len = read_u32(at)?;
    let kind = blob.get(at + 4..at.checked_add(4)?.checked_add(type_len)?)?;
    let kind = String::from_utf8_lossy(kind).into_owned();
    (kind != "ssh-ed25519").then_some(kind)
}

/// Refuses a key file that group or others may access, as ssh does.
fn check_permissions(path: &Path) -> Result<(), KeyProblem> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(KeyProblem::Read)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyProblem::Permissions { mode, path: path.display().to_string() });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The passphrase from [`PASSPHRASE_ENV`], else asked on the terminal (`/dev/tty`), else an error saying to set
/// the variable.
pub fn passphrase_from_env_or_terminal(path: &Path) -> Result<String, KeyProblem> {
    if let Some(pass) = std::env::var_os(PASSPHRASE_ENV) {
        return pass.into_string().map_err(|_| KeyProblem::PassphraseNotText);
    }
    rpassword::prompt_password(format!("Passphrase for {}: ", path.display())).map_err(|_| KeyProblem::PassphraseNeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, key: &SigningKey, pass: Option<&str>, mode: u32) -> PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, key.to_openssh_bytes(pass).unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    #[test]
    fn plain_key_loads_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("alice@contoso.com").unwrap();
        let path = write_key(dir.path(), &key, None, 0o600);
        let loaded = SigningKey::load_with(&path, |_| panic!("no passphrase needed")).unwrap();
        assert_eq!(loaded.comment(), "alice@contoso.com");
        assert_eq!(loaded.fingerprint(), key.fingerprint());
        assert!(loaded.public_key_openssh().starts_with("ssh-ed25519 AAAA"));
        let sig = loaded.sign("writeback-plan", b"x").unwrap();
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert!(!format!("{loaded:?}").contains("PRIVATE"));
    }

    #[test]
    fn signing_a_digest_is_signing_the_message() {
        use sha2::Digest;
        let key = SigningKey::generate("alice@contoso.com").unwrap();
        for message in [&b""[..], b"x", &[7u8; 100_000]] {
            for hash in [HashAlg::Sha256, HashAlg::Sha512] {
                let digest = match hash {
                    HashAlg::Sha256 => sha2::Sha256::digest(message).to_vec(),
                    _ => sha2::Sha512::digest(message).to_vec(),
                };
                let signed = key.sign_digest("writeback-plan", hash, &digest).unwrap();
                // Ed25519 signatures are deterministic: the two ways give the same bytes.
                let whole = key.key.sign("writeback-plan", hash, message).unwrap().to_pem(LineEnding::LF).unwrap();
                assert_eq!(signed, whole);
            }
        }
        assert!(key.sign_digest("", HashAlg::Sha256, &[0; 32]).is_err());
        assert!(key.sign_digest("writeback-plan", HashAlg::Sha256, &[0; 64]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("a").unwrap();
        let path = write_key(dir.path(), &key, None, 0o644);
        let err = SigningKey::load_with(&path, |_| Ok(String::new())).unwrap_err();
        assert!(err.to_string().contains(&format!("chmod 600 {}", path.display())), "{err}");
    }

    #[test]
    fn encrypted_key_needs_the_right_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("a").unwrap();
        let path = write_key(dir.path(), &key, Some("correct horse"), 0o600);
        let ok = SigningKey::load_with(&path, |_| Ok("correct horse".into())).unwrap();
        assert_eq!(ok.fingerprint(), key.fingerprint());
        let wrong = SigningKey::load_with(&path, |_| Ok("nope".into())).unwrap_err();
        assert!(matches!(wrong.problem, KeyProblem::WrongPassphrase));
        let none = SigningKey::load_with(&path, |_| Err(KeyProblem::PassphraseNeeded)).unwrap_err();
        assert!(none.to_string().contains(PASSPHRASE_ENV));
    }

    #[test]
    fn garbage_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "not a key").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = SigningKey::load_with(&path, |_| Ok(String::new())).unwrap_err();
        assert!(matches!(err.problem, KeyProblem::Malformed(_)));
    }
}
