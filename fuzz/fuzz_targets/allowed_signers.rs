//! The allowed_signers reader: parse any text, then ask it about a fixed key. Never a panic.
#![no_main]

use chrono::TimeZone;
use libfuzzer_sys::fuzz_target;
use writeback::trust::AllowedSigners;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBsUn5/jpLrRf1eArVAjrOTb/UUCvm8Ij8I6NL6bR1Ob";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(allowed) = AllowedSigners::parse(text, "fuzz") {
        let key = ssh_key::PublicKey::from_openssh(KEY).expect("the fixed key parses");
        let at = chrono::Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap();
        let _ = allowed.principals_of(&key);
        let _ = allowed.authorize_any_time(&key, "writeback-plan");
        let _ = allowed.authorize(&key, "writeback-approval", Some("planner@contoso.example"), at);
        let _ = allowed.authorize(&key, "writeback-plan", None, at);
    }
});
