//! Armored SSH signatures (SSHSIG, OpenSSH's `PROTOCOL.sshsig`): strict parsing and verification over bytes.
//!
//! The armor is read strictly: the `BEGIN`/`END` lines, base64 lines in between, and nothing else but line
//! endings. Any change to a signature file, even to a line ending inside it, makes it fail to parse or to verify.
//! Only Ed25519 signatures are accepted.

use base64::Engine;
use ssh_key::{Algorithm, HashAlg, LineEnding, PublicKey, SshSig};

/// The first line of an armored SSH signature.
pub const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
/// The last line of an armored SSH signature.
pub const END: &str = "-----END SSH SIGNATURE-----";
/// The SSHSIG format version this module reads.
pub const SUPPORTED_VERSION: u32 = 1;

/// Why a signature could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The text is not a well-formed armored SSH signature.
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    /// The signature was made for another purpose.
    #[error(
        "the signature was made for namespace '{found}', not '{expected}'; it is not a signature of this kind of file"
    )]
    NamespaceMismatch {
        /// The namespace the verifier needs.
        expected: String,
        /// The namespace inside the signature.
        found: String,
    },
    /// The signature is well formed but does not match the bytes: the file (or the signature) was changed.
    #[error("the signature does not match the file: the file was changed after signing, or the signature belongs to another file")]
    Mismatch,
}

/// A parsed, not yet verified, SSH signature.
#[derive(Debug, Clone)]
pub struct SshSignature {
    sig: SshSig,
    key: PublicKey,
}

impl SshSignature {
    /// Parses an armored (`-----BEGIN SSH SIGNATURE-----`) signature.
    pub fn parse(armored: &[u8]) -> Result<SshSignature, SigError> {
        let blob = dearmor(armored)?;
        check_blob_header(&blob)?;
        let pem = rearmor(&blob);
        let sig = SshSig::from_pem(pem.as_bytes()).map_err(|e| SigError::Malformed(format!("cannot decode: {e}")))?;
        if sig.public_key().algorithm() != Algorithm::Ed25519 || sig.algorithm() != Algorithm::Ed25519 {
            return Err(SigError::Malformed(format!(
                "it was made with a {} key; writeback accepts only Ed25519 (ssh-ed25519) signatures",
                sig.algorithm()
            )));
        }
        if !matches!(sig.hash_alg(), HashAlg::Sha256 | HashAlg::Sha512) {
            return Err(SigError::Malformed("unknown hash algorithm".into()));
        }
        // ssh-key is lenient with some length prefixes; insist that the blob is exactly the canonical encoding
        // of what was decoded, so that no two different signature files verify as the same signature.
        let canonical = sig.to_pem(LineEnding::LF).map_err(|e| SigError::Malformed(format!("cannot encode: {e}")))?;
        if dearmor(canonical.as_bytes())? != blob {
            return Err(SigError::Malformed(
                "its binary encoding is not canonical (a length field was altered?)".into(),
            ));
        }
        let key = PublicKey::new(sig.public_key().clone(), "");
        Ok(SshSignature { sig, key })
    }

    /// The namespace the signature was made for.
    pub fn namespace(&self) -> &str {
        self.sig.namespace()
    }

    /// The signer's public key (taken from the signature; it proves nothing until checked against
    /// allowed_signers).
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// The signer's key fingerprint, `SHA256:…` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// The signer's public key in OpenSSH form (`ssh-ed25519 AAAA…`).
    pub fn public_key_openssh(&self) -> String {
        self.key.to_openssh().unwrap_or_default()
    }

    /// Checks that the signature was made for `namespace` and over exactly `message`.
    pub fn verify(&self, namespace: &str, message: &[u8]) -> Result<(), SigError> {
        if self.sig.namespace() != namespace {
            return Err(SigError::NamespaceMismatch {
                expected: namespace.to_string(),
                found: self.sig.namespace().to_string(),
            });
        }
        self.key.verify(namespace, message, &self.sig).map_err(|_| SigError::Mismatch)
    }

    /// The signature re-armored in the canonical form (LF line endings, 70 columns), as `ssh-keygen` writes it.
    pub fn to_armored(&self) -> String {
        self.sig.to_pem(LineEnding::LF).unwrap_or_default()
    }
}

/// The `SHA256:…` fingerprint of a public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Strips the armor: exactly the BEGIN line, base64 lines and the END line, with LF or CRLF line endings and
/// optional blank lines after the END line. Returns the decoded blob.
fn dearmor(armored: &[u8]) -> Result<Vec<u8>, SigError> {
    let text = std::str::from_utf8(armored)
        .map_err(|_| SigError::Malformed("the file is not text (it holds bytes that are not UTF-8)".into()))?;
    if text.trim().is_empty() {
        return Err(SigError::Malformed("the signature file is empty".into()));
    }
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or_default();
    if first != BEGIN {
        return Err(SigError::Malformed(format!(
            "the first line is not '{BEGIN}' (this is not an SSH signature file)"
        )));
    }
    let mut body = String::new();
    let mut ended = false;
    for (index, line) in lines.by_ref().enumerate() {
        if line == END {
            ended = true;
            break;
        }
        if line.is_empty() || !line.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
            return Err(SigError::Malformed(format!("line {} is not base64", index + 2)));
        }
        body.push_str(line);
    }
    if !ended {
        return Err(SigError::Malformed(format!("the '{END}' line is missing (the file is truncated?)")));
    }
    if lines.any(|l| !l.is_empty()) {
        return Err(SigError::Malformed(format!("there is text after the '{END}' line")));
    }
    // A lone '\r' at the very end survives the split above; refuse it so that every byte of the file counts.
    if text.ends_with('\r') {
        return Err(SigError::Malformed("the file ends with a stray carriage return".into()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| SigError::Malformed(format!("the base64 text does not decode: {e}")))
}

/// Checks the magic preamble, the version and the key type before handing the blob to `ssh-key`, so that
/// each of these gets its own message.
fn check_blob_header(blob: &[u8]) -> Result<(), SigError> {
    if blob.get(..6) != Some(b"SSHSIG".as_slice()) {
        return Err(SigError::Malformed("it does not start with the SSHSIG preamble".into()));
    }
    let version = read_u32(blob, 6).ok_or_else(|| SigError::Malformed("it is truncated".into()))?;
    if version != SUPPORTED_VERSION {
        return Err(SigError::Malformed(format!(
            "SSHSIG version {version} is not supported (writeback reads version {SUPPORTED_VERSION})"
        )));
    }
    // string publickey = string keytype || key data
    let key_len = read_u32(blob, 10).ok_or_else(|| SigError::Malformed("it is truncated".into()))?;
    let type_len = read_u32(blob, 14).ok_or_else(|| SigError::Malformed("it is truncated".into()))?;
    if type_len > key_len {
        return Err(SigError::Malformed("its public key is malformed".into()));
    }
    let start = 18usize;
    let end = start.saturating_add(type_len as usize);
    let key_type = blob.get(start..end).ok_or_else(|| SigError::Malformed("it is truncated".into()))?;
    if key_type != b"ssh-ed25519" {
        return Err(SigError::Malformed(format!(
            "it was made with a {} key; writeback accepts only Ed25519 (ssh-ed25519) signatures",
            String::from_utf8_lossy(key_type)
        )));
    }
    Ok(())
}

fn read_u32(blob: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = blob.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Armors a blob the way `ssh-keygen` does (base64 at 70 columns), the one form `ssh-key` decodes.
fn rearmor(blob: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let mut out = String::with_capacity(b64.len() + 80);
    out.push_str(BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(70) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, String) {
        let key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let msg = b"hello\n".to_vec();
        let sig = key.sign("writeback-plan", HashAlg::Sha512, &msg).unwrap().to_pem(LineEnding::LF).unwrap();
        (msg, sig)
    }

    #[test]
    fn round_trip_and_canonical_armor() {
        let (msg, armored) = sample();
        let sig = SshSignature::parse(armored.as_bytes()).unwrap();
        sig.verify("writeback-plan", &msg).unwrap();
        assert_eq!(sig.to_armored(), armored);
        assert!(sig.fingerprint().starts_with("SHA256:"));
    }

    #[test]
    fn crlf_is_accepted() {
        let (msg, armored) = sample();
        let crlf = armored.replace('\n', "\r\n");
        SshSignature::parse(crlf.as_bytes()).unwrap().verify("writeback-plan", &msg).unwrap();
    }

    #[test]
    fn distinguishes_namespace_and_mismatch() {
        let (msg, armored) = sample();
        let sig = SshSignature::parse(armored.as_bytes()).unwrap();
        assert!(matches!(sig.verify("writeback-approval", &msg), Err(SigError::NamespaceMismatch { .. })));
        assert_eq!(sig.verify("writeback-plan", b"hello"), Err(SigError::Mismatch));
    }

    #[test]
    fn garbage_and_truncation_are_malformed() {
        let (_, armored) = sample();
        for bad in [
            "".to_string(),
            "hello".to_string(),
            "-----BEGIN PGP SIGNATURE-----\nAAAA\n-----END PGP SIGNATURE-----\n".to_string(),
            armored[..armored.len() / 2].to_string(),
            armored.replace(END, ""),
            format!("{armored}trailing"),
            format!("{BEGIN}\nQUJD\n{END}\n"),
        ] {
            assert!(matches!(SshSignature::parse(bad.as_bytes()), Err(SigError::Malformed(_))), "{bad:?}");
        }
        assert!(matches!(SshSignature::parse(&[0xff, 0xfe]), Err(SigError::Malformed(_))));
    }

    #[test]
    fn unknown_version_is_named() {
        let mut blob = b"SSHSIG".to_vec();
        blob.extend_from_slice(&2u32.to_be_bytes());
        blob.extend_from_slice(&[0; 16]);
        let err = SshSignature::parse(rearmor(&blob).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn non_ed25519_is_named() {
        let mut blob = b"SSHSIG".to_vec();
        blob.extend_from_slice(&1u32.to_be_bytes());
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(&7u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-rsa");
        let err = SshSignature::parse(rearmor(&blob).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("ssh-rsa key"), "{err}");
    }
}
