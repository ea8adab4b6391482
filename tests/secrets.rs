//! No command, at any verbosity, prints or writes the client secret, the access token or the key passphrase.

mod support;

use std::path::Path;

use support::fake_graph::{Config, FakeGraph, Seed};
use support::*;

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
            if args[0] == "plan" {
                // An approved plan is never replaced: start each round from an unapproved one.
                for approval in writeback::archive::approval_files(&d.join("plan.json")) {
                    std::fs::remove_file(approval).unwrap();
                }
            }
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

/// The sign-in kinds' own secrets: a federated token, the managed identity header, a device code and its refresh
/// token, and a token printed by `az`. None reaches any output (at `-vv`) or any file, whichever kind signs in.
#[cfg(unix)]
#[test]
fn no_sign_in_secret_reaches_any_output_or_file() {
    use support::fake_az::FakeAz;
    use support::fake_graph::{DevicePoll, Federated, ManagedIdentity, Person, GROUPS_ADMINISTRATOR};

    let dir = workspace();
    let d = dir.path();
    std::fs::remove_file(d.join("writeback.toml")).unwrap();
    let federated = Federated::github("contoso/writeback");
    let federated_token = federated.token(600);
    std::fs::write(d.join("federated-token"), &federated_token).unwrap();
    let identity_header = "fake-identity-header-Lk3Jw9Rt";
    let person = Person::new(
        "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        "ada@contoso.example",
        &["Directory.AccessAsUser.All"],
        &[GROUPS_ADMINISTRATOR],
    );
    let seed = Seed::from_file(&d.join("fake-tenant.json").to_string_lossy()).unwrap();
    let cfg = Config {
        federated: Some(federated),
        managed_identity: Some(ManagedIdentity {
            identity_header: identity_header.into(),
            ..ManagedIdentity::default()
        }),
        device_user: Some(person.clone()),
        device_polls: vec![DevicePoll::Pending],
        ..Config::default()
    };
    let public_client = cfg.public_client_id.clone();
    let graph = FakeGraph::start_with(seed, cfg);
    let az_token = graph.issue_user_token(&person);
    let az = FakeAz::new(&az_token);
    let az_path = az.path_with(&path_without_az());
    let tenant = graph.tenant_id.clone();
    let kinds: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "workload-identity",
            vec![
                ("AZURE_FEDERATED_TOKEN_FILE", d.join("federated-token").display().to_string()),
                ("AZURE_CLIENT_ID", graph.client_id.clone()),
                ("AZURE_TENANT_ID", tenant.clone()),
            ],
        ),
        ("managed-identity", graph.managed_identity_env()),
        ("device-code", vec![("AZURE_CLIENT_ID", public_client), ("AZURE_TENANT_ID", tenant.clone())]),
        ("azure-cli", vec![]),
    ];
    let secrets = [federated_token.as_str(), identity_header, az_token.as_str(), "fake-device-code", "fake-refresh"];
    let group = "b53a97e9-e214-49f9-9d7e-4e4a23c5c243";
    for (kind, env) in kinds {
        let plan = format!("plan-{kind}.json");
        let runs: Vec<Vec<String>> = vec![
            ["-vv", "plan", "--contacts", "politemail-all-staff.csv", "--group", group, "--key", "keys/demo-planner"]
                .iter()
                .map(|s| s.to_string())
                .chain(["--out".to_string(), plan.clone()])
                .collect(),
            ["-vv", "apply", &plan, "--allowed-signers", "keys/allowed_signers", "--yes"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ["-vv", "check", &plan, "--allowed-signers", "keys/allowed_signers"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ["-vv", "doctor", "--role", "admin", "--allowed-signers", "keys/allowed_signers"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ];
        for args in runs {
            let out = command(d)
                .args(&args)
                .envs(graph.endpoints_env())
                .envs(env.iter().cloned())
                .env("WRITEBACK_AUTH", kind)
                .env("PATH", &az_path)
                .output()
                .unwrap();
            let label = format!("{kind}: writeback {}", args.join(" "));
            assert!(out.status.success(), "{label}: {}", text(&out.stderr));
            for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                let shown = String::from_utf8_lossy(bytes);
                for secret in secrets {
                    assert!(!shown.contains(secret), "{what} of {label} holds a secret ({}…)", &secret[..10]);
                }
                assert!(!shown.contains("eyJ"), "{what} of {label} holds something that looks like a token");
            }
            for file in files(d) {
                let content = String::from_utf8_lossy(&std::fs::read(d.join(&file)).unwrap()).into_owned();
                for secret in secrets {
                    if file != "federated-token" {
                        assert!(
                            !content.contains(secret),
                            "{file} (after {label}) holds a secret ({}…)",
                            &secret[..10]
                        );
                    }
                }
            }
        }
    }
}
