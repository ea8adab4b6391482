//! `writeback doctor`: every check a new installation needs, in order, each with its status, what was found
//! and what to do about it.
//!
//! The checks, for the role asked about (`planner`, `approver` or `admin`):
//! 1. the config file in use, and the `writeback.toml` files seen and ignored ([`local::config`]);
//! 2. signing in: the credential kind chosen and why, a token, its tenant, app or person; the token's
//!    permissions against the role's needs; a person's active directory roles; each configured group found,
//!    manageable and its members readable ([`graph`]);
//! 3. PoliteMail, for a planner whose mappings read a list through its API ([`graph::politemail`]);
//! 4. the signing key and the allowed_signers file ([`local`]);
//! 5. our clock against the `Date` of Graph's answers;
//! 6. for an admin, the apply ledger folder.
//!
//! Nothing here fails as a whole: every problem becomes a [`Check`] with [`Status::Fail`] or [`Status::Warn`]
//! and its fix. Nothing is written anywhere, and no token or secret is ever put in a check's text.

pub mod graph;
pub mod local;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::signin::{AuthKind, Cloud, Role, SignInSettings};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All is well.
    Pass,
    /// It works, but something deserves attention.
    Warn,
    /// It will not work until fixed.
    Fail,
}

impl Status {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One row of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked ("config", "sign-in", "group All Staff", …).
    pub check: String,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when nothing needs doing).
    pub fix: String,
}

impl Check {
    /// A check that passed.
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Pass, detail: detail.into(), fix: String::new() }
    }

    /// A check that passed with a caveat, and what to do about it.
    pub fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Warn, detail: detail.into(), fix: fix.into() }
    }

    /// A check that failed, and the fix.
    pub fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check: check.into(), status: Status::Fail, detail: detail.into(), fix: fix.into() }
    }
}

/// What `doctor` was asked: the role, and the flags that say where the config, the key, the allowed_signers file
/// and Graph are (each `None` when not given: the environment and the config decide, as for the other commands).
#[derive(Debug, Clone, Default)]
pub struct DoctorRequest {
    /// Whose needs to check.
    pub role: Role,
    /// `--config` / `WRITEBACK_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--key` / `WRITEBACK_KEY`.
    pub key: Option<PathBuf>,
    /// `--signer` / `WRITEBACK_SIGNER`.
    pub signer: Option<String>,
    /// `--allowed-signers` / `WRITEBACK_ALLOWED_SIGNERS`.
    pub allowed_signers: Option<PathBuf>,
    /// `--auth` / `WRITEBACK_AUTH`.
    pub auth: Option<AuthKind>,
    /// `--cloud`.
    pub cloud: Option<Cloud>,
    /// `--graph-url` / `WRITEBACK_GRAPH_URL`.
    pub graph_url: Option<String>,
    /// `--login-url` / `WRITEBACK_LOGIN_URL`.
    pub login_url: Option<String>,
    /// The time the command started.
    pub now: DateTime<Utc>,
}

impl DoctorRequest {
    /// The sign-in settings: the flags, else the config, else the defaults (as every command resolves them).
    pub fn sign_in(&self, config: Option<&Config>) -> SignInSettings {
        let d = config.map(|c| &c.defaults);
        SignInSettings {
            auth: self.auth.or_else(|| d.and_then(|d| d.auth)).unwrap_or_default(),
            cloud: self.cloud.or_else(|| d.and_then(|d| d.cloud)).unwrap_or_default(),
            graph_url: self.graph_url.clone().or_else(|| d.and_then(|d| d.graph_url.clone())),
            login_url: self.login_url.clone().or_else(|| d.and_then(|d| d.login_url.clone())),
        }
    }
}

/// The doctor's findings, in the order the checks ran.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// How many checks failed.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.status == Status::Fail).count()
    }

    /// How many checks warn.
    pub fn warnings(&self) -> usize {
        self.checks.iter().filter(|c| c.status == Status::Warn).count()
    }
}

/// Runs every check for `request.role`, in order.
pub fn run(request: &DoctorRequest) -> Report {
    let mut checks = Vec::new();
    let config = local::config(request, &mut checks);
    let mut clock = None;
    let uses_graph = uses_graph(request.role, config.as_ref());
    if uses_graph {
        clock = graph::checks(request, config.as_ref(), &mut checks);
    } else if request.role == Role::Planner {
        checks.push(Check::pass(
            "sign-in",
            "not needed: every mapping reads its members and users from Entra exports (files), not from Graph",
        ));
    }
    if request.role == Role::Planner {
        graph::politemail(config.as_ref(), &mut checks);
    }
    let allowed = local::load_allowed_signers(request, config.as_ref());
    let trusted = allowed.as_ref().ok().and_then(|a| a.as_ref()).map(|(_, a)| a);
    local::signing_key(request, config.as_ref(), trusted, &mut checks);
    match allowed {
        Ok(Some((path, allowed))) => local::allowed_signers_content(&path, &allowed, request.now, &mut checks),
        Ok(None) => checks.push(local::no_allowed_signers(request.role)),
        Err(check) => checks.push(check),
    }
    checks.push(graph::clock(clock, uses_graph));
    if request.role == Role::Admin {
        checks.push(local::ledger(config.as_ref()));
    }
    Report { checks }
}

/// Whether the role talks to Graph: the admin always, the approver never, the planner unless every mapping of
/// the config reads both its members and its users from files.
pub fn uses_graph(role: Role, config: Option<&Config>) -> bool {
    match (role, config) {
        (Role::Admin, _) => true,
        (Role::Approver, _) => false,
        (Role::Planner, Some(c)) if !c.sync.is_empty() => {
            c.sync.iter().any(|s| s.members.is_none() || (s.users.is_none() && c.defaults.users.is_none()))
        }
        (Role::Planner, _) => true,
    }
}
