//! End-to-end tests of the command line's habits: closed pipes, shell completions and man pages, table widths,
//! `verify --json` on failure, words.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{sample_plan, text, workspace, writeback};

/// Runs the binary with a stdout whose reader has already gone away, so the first write meets a closed pipe.
fn run_into_closed_pipe(dir: &Path, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    common::command(dir).args(args).stdin(Stdio::null()).stdout(writer).stderr(Stdio::piped()).output().unwrap()
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
