//! Signatures and trust: SSHSIG signing and verification, allowed_signers, keys.
