//! No command, at any verbosity, prints or writes the client secret, the access token or the key passphrase.

mod common;
mod support;

use std::path::Path;

use common::*;
use support::fake_graph::{Config, FakeGraph, Seed};

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

/// Printed output must not hold any JWT either (the fake Graph issues real-looking ones: `eyJ…` is `{"`).
fn scan_output(label: &str, haystack: &[u8]) {
    scan(label, haystack);
    assert!(!String::from_utf8_lossy(haystack).contains("eyJ"), "{label} contains something that looks like a token");
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
    // apply and check talk to a fake Graph that only accepts CLIENT_SECRET, so the secret and the tokens it
    // buys travel the real paths.
    let seed = Seed::from_file(&d.join("fake-tenant.json").to_string_lossy()).unwrap();
    let graph = FakeGraph::start_with(seed, Config { client_secret: CLIENT_SECRET.into(), ..Config::default() });
    let mut ran = Vec::new();
    for verbosity in [None, Some("-v"), Some("-vv")] {
        for args in &commands {
            let mut cmd = command(d);
            cmd.args(verbosity).args(args);
            cmd.envs(graph.env()).env("WRITEBACK_KEY_PASSPHRASE", PASSPHRASE);
            if !["apply", "check"].contains(&args[0]) {
                // Everything else gets a ready token too: none of them may print it.
                cmd.env("WRITEBACK_ACCESS_TOKEN", TOKEN);
            }
            let out = cmd.output().unwrap();
            let label = format!("writeback {} {}", verbosity.unwrap_or(""), args.join(" "));
            scan_output(&format!("stdout of {label}"), &out.stdout);
            scan_output(&format!("stderr of {label}"), &out.stderr);
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
    // Finally a real apply (the writes go through the fake) and a check of its outcome, at full verbosity.
    for args in [
        vec!["-vv", "apply", "plan.json", "--config", "writeback.toml", "--yes"],
        vec!["-vv", "check", "plan.json", "--config", "writeback.toml", "--receipt-out", "checked.json"],
    ] {
        let out =
            command(d).args(&args).envs(graph.env()).env("WRITEBACK_KEY_PASSPHRASE", PASSPHRASE).output().unwrap();
        let label = args.join(" ");
        assert!(out.status.success(), "{label}: {}", text(&out.stderr));
        scan_output(&format!("stdout of {label}"), &out.stdout);
        scan_output(&format!("stderr of {label}"), &out.stderr);
        scan_files(d, &label);
    }
    assert!(graph.tokens_issued() > 0, "the fake Graph was used");
    for needed in ["plan", "show", "verify", "keygen", "approve", "export", "report", "apply", "check"] {
        assert!(ran.contains(&needed), "{needed} did not run");
    }
    assert!(d.join("report.html").exists() && d.join("plan.ps1").exists());
}
