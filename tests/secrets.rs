//! No command, at any verbosity, prints or writes the client secret, the access token or the key passphrase.

mod common;

use std::path::Path;

use common::*;

const CLIENT_SECRET: &str = "fake-client-secret-Qx7vT2pLm9";
const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.fake-token-8KfW3zR";
const PASSPHRASE: &str = "fake-passphrase-Zq4Nw8Hs";

/// The secrets and a few forms a leak could take.
fn needles() -> Vec<String> {
    let mut out = Vec::new();
    for secret in [CLIENT_SECRET, TOKEN, PASSPHRASE] {
        out.push(secret.to_string());
        out.push(base64_of(secret));
    }
    out
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn scan(label: &str, haystack: &[u8]) {
    let text = String::from_utf8_lossy(haystack);
    for needle in needles() {
        assert!(!text.contains(&needle), "{label} contains a secret ({}…)", &needle[..8]);
    }
}

fn scan_files(dir: &Path, after: &str) {
    for file in files(dir) {
        let bytes = std::fs::read(dir.join(&file)).unwrap();
        scan(&format!("{file} (after {after})"), &bytes);
    }
}

fn not_available(out: &std::process::Output) -> bool {
    let err = text(&out.stderr);
    err.contains("is not available in this build yet")
        || (out.status.code() == Some(2) && err.contains("unexpected argument"))
}

#[test]
fn no_secret_reaches_any_output_or_file() {
    let dir = workspace();
    let d = dir.path();
    let (_, planner_pub) = ssh_keygen(d, "planner-enc", "planner@contoso.example", PASSPHRASE);
    let (_, approver_pub) = ssh_keygen(d, "approver-enc", "approver@contoso.example", PASSPHRASE);
    std::fs::write(
        d.join("allowed_enc"),
        format!(
            "planner@contoso.example namespaces=\"writeback-plan\" {planner_pub}\napprover@contoso.example namespaces=\"writeback-approval\" {approver_pub}\n"
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(d.join("writeback.toml"))
        .unwrap()
        .replace("key = \"keys/demo-planner\"", "key = \"planner-enc\"")
        .replace("allowed_signers = \"keys/allowed_signers\"", "allowed_signers = \"allowed_enc\"");
    std::fs::write(d.join("writeback.toml"), config).unwrap();

    let commands: Vec<Vec<&str>> = vec![
        vec!["plan", "--config", "writeback.toml", "--out", "plan.json"],
        vec!["show", "plan.json", "--config", "writeback.toml"],
        vec!["show", "plan.json", "--config", "writeback.toml", "--json"],
        vec!["verify", "plan.json", "--allowed-signers", "allowed_enc"],
        vec!["keygen", "--out", "new-key", "--principal", "someone@contoso.example"],
        vec!["approve", "plan.json", "--key", "approver-enc", "--config", "writeback.toml", "--force"],
        vec!["export", "plan.json", "--config", "writeback.toml", "--to", "entra-bulk-add", "--require-approvals", "1"],
        vec!["export", "plan.json", "--config", "writeback.toml", "--to", "entra-bulk-remove"],
        vec!["export", "plan.json", "--config", "writeback.toml", "--to", "powershell"],
        vec!["report", "plan.json", "--config", "writeback.toml", "--out", "report.html"],
        vec!["apply", "plan.json", "--config", "writeback.toml", "--dry-run"],
        vec!["check", "plan.json", "--config", "writeback.toml"],
    ];
    let mut ran = Vec::new();
    for verbosity in [None, Some("-v"), Some("-vv")] {
        for args in &commands {
            let mut cmd = command(d);
            cmd.args(verbosity).args(args);
            cmd.env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
                .env("WRITEBACK_ACCESS_TOKEN", TOKEN)
                .env("WRITEBACK_KEY_PASSPHRASE", PASSPHRASE)
                // Anything that reaches for the network goes to a closed local port.
                .env("WRITEBACK_GRAPH_URL", "http://127.0.0.1:9")
                .env("WRITEBACK_LOGIN_URL", "http://127.0.0.1:9");
            let out = cmd.output().unwrap();
            let label = format!("writeback {} {}", verbosity.unwrap_or(""), args.join(" "));
            scan(&format!("stdout of {label}"), &out.stdout);
            scan(&format!("stderr of {label}"), &out.stderr);
            scan_files(d, &label);
            if not_available(&out) {
                continue;
            }
            if ["plan", "approve", "export", "report"].contains(&args[0]) {
                assert!(out.status.success(), "{label}: {}", text(&out.stderr));
            }
            ran.push(args[0]);
        }
    }
    for needed in ["plan", "show", "approve", "export", "report"] {
        assert!(ran.contains(&needed), "{needed} did not run");
    }
    assert!(d.join("report.html").exists() && d.join("plan.ps1").exists());
}
