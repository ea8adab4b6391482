//! End-to-end tests of the command line's habits: closed pipes, shell completions and man pages, table widths,
//! `verify --json` on failure, words.

mod support;

use std::path::Path;
use std::process::Stdio;

use support::{sample_plan, text, workspace, writeback};

/// Runs the binary with a stdout whose reader has already gone away, so the first write meets a closed pipe.
fn run_into_closed_pipe(dir: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    support::command(dir).args(args).stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let dir = workspace();
    sample_plan(dir.path());
    let cases: [(&[&str], i32); 6] = [
        (&["show", "plan.json"], 0),
        (&["show", "plan.json", "--json"], 0),
        (&["show", "plan.json", "--allowed-signers", "keys/allowed_signers"], 0),
        (&["verify", "plan.json", "--allowed-signers", "keys/allowed_signers"], 0),
        (&["verify", "plan.json", "--allowed-signers", "keys/allowed_signers", "--json"], 0),
        (&["--help"], 0),
    ];
    for (args, code) in cases {
        // With a reader, the command says this much on stderr (notes, at most); a closed pipe adds nothing.
        let normal = writeback(dir.path(), args);
        assert_eq!(normal.status.code(), Some(code), "{args:?}: {}", text(&normal.stderr));
        // Each run meets the closed pipe at its first write; repeat to leave no room for luck.
        for _ in 0..10 {
            let run = run_into_closed_pipe(dir.path(), args);
            assert_eq!(run.status.code(), Some(code), "{args:?}: {}", text(&run.stderr));
            assert_eq!(text(&run.stderr), text(&normal.stderr), "{args:?} must stop quietly");
        }
    }
    // The verdict still comes through: a plan signed by nobody trusted fails the same with or without a reader.
    std::fs::write(dir.path().join("nobody"), "").unwrap();
    let run = run_into_closed_pipe(dir.path(), &["verify", "plan.json", "--allowed-signers", "nobody"]);
    assert_eq!(
        run.status.code(),
        writeback(dir.path(), &["verify", "plan.json", "--allowed-signers", "nobody"]).status.code()
    );
    assert!(!text(&run.stderr).contains("panicked"), "{}", text(&run.stderr));
}

#[test]
fn completions_for_every_shell_know_the_subcommands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef writeback"),
        ("fish", "complete -c writeback"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer"),
    ] {
        let run = writeback(dir.path(), &["completions", shell]);
        assert!(run.status.success(), "{shell}: {}", text(&run.stderr));
        let script = text(&run.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["apply", "verify", "allowed-signers", "max-removals"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let run = writeback(dir.path(), &["completions", "tcsh"]);
    assert_eq!(run.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let run = writeback(dir.path(), &["man", "--out", "man/man1"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let folder = dir.path().join("man/man1");
    for name in ["writeback", "writeback-plan", "writeback-apply", "writeback-verify", "writeback-completions"] {
        let page = std::fs::read_to_string(folder.join(format!("{name}.1"))).unwrap_or_default();
        assert!(page.starts_with(".ie \\n(.g") || page.contains(".TH"), "{name}.1: {page}");
        assert!(text(&run.stdout).contains(&format!("{name}.1")), "{}", text(&run.stdout));
    }
    let apply = std::fs::read_to_string(folder.join("writeback-apply.1")).unwrap();
    assert!(apply.contains("max\\-removals"), "the page documents the flags");
    assert!(!folder.join("writeback-help.1").exists());
}

fn plan_strings(dir: &Path, field: &str) -> Vec<String> {
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("plan.json")).unwrap()).unwrap();
    let mut found = Vec::new();
    for group in plan["groups"].as_array().unwrap() {
        for list in ["changes", "not_acted_on"] {
            for entry in group[list].as_array().unwrap() {
                if let Some(text) = entry[field].as_str() {
                    found.push(text.to_string());
                }
            }
        }
    }
    assert!(!found.is_empty(), "the sample plan has {field}s");
    found
}

#[test]
fn tables_fit_the_width_without_splitting_upns_and_are_whole_in_a_pipe() {
    let dir = workspace();
    sample_plan(dir.path());
    let upns = plan_strings(dir.path(), "upn");
    let details = plan_strings(dir.path(), "detail");
    let narrow = support::command(dir.path()).args(["show", "plan.json"]).env("COLUMNS", "100").output().unwrap();
    assert!(narrow.status.success(), "{}", text(&narrow.stderr));
    let shown = text(&narrow.stdout);
    for line in shown.lines() {
        assert!(line.chars().count() <= 100, "wider than COLUMNS: {line}");
    }
    for upn in &upns {
        assert!(shown.contains(upn.as_str()), "{upn} is split or cut:\n{shown}");
    }
    let longest = details.iter().max_by_key(|d| d.chars().count()).unwrap();
    assert!(!shown.contains(longest.as_str()), "the least important column gives way:\n{shown}");
    // Into a pipe (no COLUMNS, not a terminal): nothing is shortened or wrapped.
    let piped = writeback(dir.path(), &["show", "plan.json"]);
    let whole = text(&piped.stdout);
    for detail in &details {
        assert!(whole.contains(detail.as_str()), "{detail} is cut in a pipe");
    }
}

#[test]
fn show_and_plan_name_the_entries_not_acted_on_alike() {
    let dir = workspace();
    let planned = writeback(dir.path(), &["plan", "--config", "writeback.toml", "--out", "plan.json"]);
    assert!(planned.status.success(), "{}", text(&planned.stderr));
    let shown = text(&writeback(dir.path(), &["show", "plan.json"]).stdout);
    for words in ["not a user", "on the keep list"] {
        assert!(text(&planned.stdout).contains(words), "plan: {}", text(&planned.stdout));
        assert!(shown.contains(&format!("4 {words}")) || shown.contains(&format!("2 {words}")), "show: {shown}");
    }
    for code in ["non_user_member", "kept 2"] {
        assert!(!shown.contains(code), "show uses the plan's words, not {code}");
    }
}

#[test]
fn keygen_into_a_missing_folder_names_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let run = writeback(dir.path(), &["keygen", "--principal", "a@contoso.example", "--out", "no-such-folder/key"]);
    assert!(!run.status.success());
    let err = text(&run.stderr);
    assert!(err.contains("no-such-folder") && err.contains("does not exist"), "{err}");
    assert!(!err.contains(".tmp"), "no temporary file in the message: {err}");
}

#[test]
fn a_public_key_given_as_the_key_says_so() {
    let dir = workspace();
    let run = writeback(
        dir.path(),
        &["plan", "--config", "writeback.toml", "--out", "plan.json", "--key", "keys/demo-planner.pub"],
    );
    assert!(!run.status.success());
    let err = text(&run.stderr);
    assert!(err.contains("that is a public key") && err.contains("keys/demo-planner"), "{err}");
    assert!(!dir.path().join("plan.json").exists());
}
