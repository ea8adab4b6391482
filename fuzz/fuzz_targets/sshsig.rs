//! The armored SSH signature reader: parse, then verify against a fixed message. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writeback::trust::SshSignature;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = SshSignature::parse(data) {
        let _ = sig.fingerprint();
        let _ = sig.public_key_openssh();
        let _ = sig.verify(sig.namespace(), b"{}");
        let _ = sig.verify("writeback-plan", data);
        // What parses, re-armors to something that parses to the same key.
        let again = SshSignature::parse(sig.to_armored().as_bytes()).expect("re-armored signature parses");
        assert_eq!(again.fingerprint(), sig.fingerprint());
    }
});
