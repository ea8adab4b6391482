//! Signing in to Microsoft Graph: one credential chain for every command that talks to Graph.
//!
//! `--auth KIND` (env `WRITEBACK_AUTH`, config `auth`) picks how writeback gets its access token. The kinds and
//! the variables they read follow azure-identity's conventions, so nothing here is new to an Entra admin:
//!
//! | kind | uses |
//! |---|---|
//! | `token` | `WRITEBACK_ACCESS_TOKEN`, a ready bearer token (cannot be renewed) |
//! | `secret` | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` (client-credentials grant) |
//! | `certificate` | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH` (signed client assertion) |
//! | `workload-identity` | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` (re-read for each token) |
//! | `managed-identity` | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, else the instance metadata service |
//! | `azure-cli` | `az account get-access-token` of the `az` found on `PATH` |
//! | `device-code` | a person signs in in a browser with a code (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`) |
//!
//! `auto` (the default) tries them in that order, skipping the ones whose variables are not set, and never
//! starts a sign-in that needs a person ([`chain`]). The cloud (`--cloud`) fixes the sign-in host, Graph's URL and
//! the resource tokens are asked for ([`cloud`]). [`TokenSource`] fetches, caches and renews tokens; their claims
//! ([`claims`]) say whether the token is an application's or a person's, and what it may do.
//!
//! Tokens, secrets, refresh tokens and device codes live in [`Secret`], whose `Debug` prints nothing; they are
//! never written to disk, printed or logged.

pub mod azure_cli;
pub mod certificate;
pub mod chain;
pub mod claims;
mod client_credentials;
pub mod cloud;
pub mod device_code;
pub mod managed_identity;
mod tokens;

use chrono::{DateTime, Utc};

use crate::http::{HttpError, ServiceError};

pub use chain::{Candidate, Chain, Method, Skipped};
pub use claims::{Need, Role, TokenClaims, TokenType};
pub use cloud::{Cloud, Endpoints};
pub use tokens::{TokenSource, REFRESH_MARGIN};

/// How writeback signs in (`--auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    /// Try token, secret, certificate, workload-identity, managed-identity and azure-cli in order and use the
    /// first that is set up; never asks a person.
    #[default]
    Auto,
    /// A ready bearer token in `WRITEBACK_ACCESS_TOKEN`.
    Token,
    /// An app registration's client secret.
    Secret,
    /// An app registration's certificate.
    Certificate,
    /// A federated token from another identity provider (GitHub Actions, Kubernetes).
    WorkloadIdentity,
    /// The managed identity of the Azure resource writeback runs on.
    ManagedIdentity,
    /// The person signed in to the Azure CLI (`az login`).
    AzureCli,
    /// A person signs in in a browser with a code.
    DeviceCode,
}

impl AuthKind {
    /// Every kind `auto` may try, in its order, then `device-code` (never tried by `auto`).
    pub const CHAIN: [AuthKind; 7] = [
        AuthKind::Token,
        AuthKind::Secret,
        AuthKind::Certificate,
        AuthKind::WorkloadIdentity,
        AuthKind::ManagedIdentity,
        AuthKind::AzureCli,
        AuthKind::DeviceCode,
    ];

    /// The name on the command line, in the config and in receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Auto => "auto",
            AuthKind::Token => "token",
            AuthKind::Secret => "secret",
            AuthKind::Certificate => "certificate",
            AuthKind::WorkloadIdentity => "workload-identity",
            AuthKind::ManagedIdentity => "managed-identity",
            AuthKind::AzureCli => "azure-cli",
            AuthKind::DeviceCode => "device-code",
        }
    }
}

impl std::fmt::Display for AuthKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the flags, the environment and the config say about signing in, before the cloud's defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignInSettings {
    /// `--auth` / `WRITEBACK_AUTH` / config `auth`.
    pub auth: AuthKind,
    /// `--cloud` / config `cloud`.
    pub cloud: Cloud,
    /// `--graph-url` / `WRITEBACK_GRAPH_URL` / config `graph_url`, when given.
    pub graph_url: Option<String>,
    /// `--login-url` / `WRITEBACK_LOGIN_URL` / config `login_url`, when given.
    pub login_url: Option<String>,
}

/// A secret string (client secret, token, refresh token, device code). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// An access token and when it expires (when known).
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub token: Secret,
    /// When it stops being accepted, by the wall clock.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Reads environment variables. The process environment in production ([`ProcessEnv`]); a map in tests.
pub trait Env {
    /// The variable's value, `None` when unset.
    fn var(&self, name: &str) -> Option<String>;

    /// The value trimmed, `None` when unset or blank.
    fn get(&self, name: &str) -> Option<String> {
        self.var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// What can go wrong signing in.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// A variable, flag or file is missing or malformed.
    #[error("{location}: {message}")]
    Config {
        /// The variable, flag or file.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// `--auth auto` found no kind that works; the message lists each kind and why it was skipped.
    #[error("{0}")]
    NoCredential(String),
    /// The sign-in endpoint (or the managed identity endpoint) refused.
    #[error("cannot sign in to Microsoft Graph: {0}")]
    Refused(Box<ServiceError>),
    /// The HTTP layer failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A kind failed in its own way (the Azure CLI refused, a device code expired, an answer made no sense).
    #[error("cannot sign in to Microsoft Graph with {kind}: {message}")]
    Failed {
        /// The kind.
        kind: AuthKind,
        /// What happened and what to do.
        message: String,
    },
}

impl From<SignInError> for crate::Error {
    fn from(e: SignInError) -> Self {
        match e {
            SignInError::Config { location, message } => crate::Error::Input { location, message },
            SignInError::NoCredential(message) => crate::Error::Input { location: "sign-in".into(), message },
            SignInError::Http(h) => h.into(),
            other => crate::Error::Service(other.to_string()),
        }
    }
}

/// How one attempt to get a token ended, when it did not give one: `Unavailable` lets `auto` go on to the next
/// kind (the Azure CLI is not signed in, no managed identity answers); `Failed` stops (a secret was refused).
#[derive(Debug)]
pub(crate) enum Attempt {
    /// This kind cannot work here; the reason is listed if nothing else works.
    Unavailable(String),
    /// This kind is set up but failed.
    Failed(SignInError),
}

impl From<SignInError> for Attempt {
    fn from(e: SignInError) -> Self {
        Attempt::Failed(e)
    }
}

/// Reads `expires_in` / `expires_on` values, which services send as numbers or as strings of digits.
pub(crate) fn seconds_field(value: Option<&serde_json::Value>) -> Option<i64> {
    match value? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
