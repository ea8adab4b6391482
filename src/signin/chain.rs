//! Which credential kinds to try, decided from `--auth` and the environment before anything is sent.
//!
//! With `--auth KIND` the chain holds that one kind, or the command stops and names the variables it needs.
//! With `--auth auto` it holds, in order: `token` when `WRITEBACK_ACCESS_TOKEN` is set; `secret` or `certificate`
//! when their variables are set; `workload-identity` when `AZURE_FEDERATED_TOKEN_FILE` is set; `managed-identity`
//! when `IDENTITY_ENDPOINT` or `WRITEBACK_IMDS_URL` is set (never the metadata address by itself: a probe there
//! can hang off Azure); `azure-cli` when `az` is on `PATH`. `device-code` needs a person, so `auto` never starts
//! it. Every kind left out is recorded with the reason, so that when nothing works the message lists them all.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Url;

use super::certificate::{parse_certificate_pem, CertificateKey};
use super::cloud::check_tenant;
use super::managed_identity::{self, MiEndpoint};
use super::{AuthKind, Env, Secret, SignInError};

/// The variable that replaces the instance metadata service's base address (for tests).
pub const IMDS_URL_VAR: &str = "WRITEBACK_IMDS_URL";

/// A kind, set up and ready to ask for tokens.
#[derive(Debug, Clone)]
pub enum Method {
    /// A ready bearer token.
    Token(Secret),
    /// Client credentials with a secret.
    ClientSecret {
        /// `AZURE_TENANT_ID`.
        tenant: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_CLIENT_SECRET`.
        secret: Secret,
    },
    /// Client credentials with a certificate.
    Certificate {
        /// `AZURE_TENANT_ID`.
        tenant: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_CLIENT_CERTIFICATE_PATH`, for messages.
        path: PathBuf,
        /// The key and thumbprint.
        key: Arc<CertificateKey>,
    },
    /// Client credentials with a federated token read from a file.
    WorkloadIdentity {
        /// `AZURE_TENANT_ID`.
        tenant: String,
        /// `AZURE_CLIENT_ID`.
        client_id: String,
        /// `AZURE_FEDERATED_TOKEN_FILE`, re-read for each new token.
        token_file: PathBuf,
    },
    /// A managed identity.
    ManagedIdentity {
        /// Where to ask.
        endpoint: MiEndpoint,
        /// `AZURE_CLIENT_ID`: a user-assigned identity.
        client_id: Option<String>,
    },
    /// The Azure CLI.
    AzureCli {
        /// The `az` found on `PATH`.
        program: PathBuf,
        /// `AZURE_TENANT_ID`, passed as `--tenant`.
        tenant: Option<String>,
    },
    /// The device authorization grant.
    DeviceCode {
        /// `AZURE_TENANT_ID`, else `organizations`.
        tenant: String,
        /// `AZURE_CLIENT_ID` of a public-client app registration.
        client_id: String,
    },
}

impl Method {
    /// The tenant the method names, when it names one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Method::ClientSecret { tenant, .. }
            | Method::Certificate { tenant, .. }
            | Method::WorkloadIdentity { tenant, .. } => Some(tenant),
            Method::DeviceCode { tenant, .. } if tenant != "organizations" => Some(tenant),
            Method::AzureCli { tenant, .. } => tenant.as_deref(),
            _ => None,
        }
    }

    /// The app registration's client id, when the method names one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Method::ClientSecret { client_id, .. }
            | Method::Certificate { client_id, .. }
            | Method::WorkloadIdentity { client_id, .. }
            | Method::DeviceCode { client_id, .. } => Some(client_id),
            Method::ManagedIdentity { client_id, .. } => client_id.as_deref(),
            _ => None,
        }
    }
}

/// One kind of the chain, ready to try.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The kind.
    pub kind: AuthKind,
    /// How it signs in.
    pub method: Method,
    /// Why it is in the chain ("AZURE_CLIENT_SECRET is set"), for `doctor` and `-v`.
    pub reason: String,
}

/// A kind left out of the chain, or one that was tried and could not work here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The kind.
    pub kind: AuthKind,
    /// Why.
    pub reason: String,
}

/// The kinds to try, in order, and those left out.
#[derive(Debug, Clone)]
pub struct Chain {
    /// What `--auth` asked for.
    pub requested: AuthKind,
    /// The kinds to try, in order.
    pub candidates: Vec<Candidate>,
    /// The kinds left out, and why.
    pub skipped: Vec<Skipped>,
}

/// What looking at one kind found.
enum Found {
    Ready(Candidate),
    NotSetUp(String),
}

impl Chain {
    /// The chain for `requested`, from the process environment and `PATH`.
    pub fn from_env(requested: AuthKind) -> Result<Chain, SignInError> {
        let az = find_program("az", std::env::var_os("PATH").as_deref(), cfg!(windows));
        Chain::build(requested, &super::ProcessEnv, az)
    }

    /// The chain for `requested`, reading variables through `env`; `az` is the Azure CLI found on `PATH`.
    pub fn build(requested: AuthKind, env: &dyn Env, az: Option<PathBuf>) -> Result<Chain, SignInError> {
        let mut chain = Chain { requested, candidates: Vec::new(), skipped: Vec::new() };
        if requested != AuthKind::Auto {
            return match look(requested, env, az, true)? {
                Found::Ready(candidate) => {
                    chain.candidates.push(candidate);
                    Ok(chain)
                }
                Found::NotSetUp(reason) => Err(SignInError::Config {
                    location: format!("--auth {requested}"),
                    message: format!("{reason}; {}", needs(requested)),
                }),
            };
        }
        for kind in AuthKind::CHAIN {
            if kind == AuthKind::DeviceCode {
                chain.skipped.push(Skipped {
                    kind,
                    reason: "never started by auto: a person must sign in in a browser; pass --auth device-code".into(),
                });
                continue;
            }
            match look(kind, env, az.clone(), false)? {
                Found::Ready(candidate) => chain.candidates.push(candidate),
                Found::NotSetUp(reason) => chain.skipped.push(Skipped { kind, reason }),
            }
        }
        Ok(chain)
    }

    /// A chain of one ready method (tests, library callers).
    pub fn single(kind: AuthKind, method: Method) -> Chain {
        Chain {
            requested: kind,
            candidates: vec![Candidate { kind, method, reason: "given".into() }],
            skipped: Vec::new(),
        }
    }

    /// The message when no kind worked: each kind tried or left out, and why.
    pub fn nothing_worked(&self, failed: &[Skipped]) -> String {
        let mut reasons: Vec<&Skipped> = self.skipped.iter().chain(failed).collect();
        reasons.sort_by_key(|s| AuthKind::CHAIN.iter().position(|k| *k == s.kind));
        let mut out = format!(
            "no way to sign in to Microsoft Graph worked (--auth {} looked at each kind in order):",
            self.requested
        );
        for s in reasons {
            out.push_str(&format!("\n  {}: {}", s.kind, s.reason));
        }
        out.push_str(
            "\nSet up one of them, or pass --auth KIND (see docs/permissions.md; `writeback doctor` checks the result)",
        );
        out
    }
}

/// What `--auth KIND` needs, for messages.
pub fn needs(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Auto => "set up one of the kinds (see docs/permissions.md)",
        AuthKind::Token => "set WRITEBACK_ACCESS_TOKEN to a bearer token for Microsoft Graph",
        AuthKind::Secret => "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET",
        AuthKind::Certificate => {
            "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH (a PEM file with the certificate \
             and its unencrypted RSA key)"
        }
        AuthKind::WorkloadIdentity => {
            "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE (a file holding the federated token)"
        }
        AuthKind::ManagedIdentity => {
            "run on an Azure resource with a managed identity (IDENTITY_ENDPOINT and IDENTITY_HEADER, or the VM's \
             metadata service); AZURE_CLIENT_ID picks a user-assigned identity"
        }
        AuthKind::AzureCli => "install the Azure CLI, put `az` on PATH and run `az login`",
        AuthKind::DeviceCode => {
            "set AZURE_CLIENT_ID to a public-client app registration (\"Allow public client flows\") and \
             AZURE_TENANT_ID to your tenant"
        }
    }
}

fn look(kind: AuthKind, env: &dyn Env, az: Option<PathBuf>, explicit: bool) -> Result<Found, SignInError> {
    let ready = |method: Method, reason: String| Ok(Found::Ready(Candidate { kind, method, reason }));
    let app = |var: &str| -> Result<Result<(String, String), String>, SignInError> {
        match (env.get("AZURE_TENANT_ID"), env.get("AZURE_CLIENT_ID")) {
            (Some(tenant), Some(client_id)) => {
                check_tenant(&tenant, "AZURE_TENANT_ID")?;
                Ok(Ok((tenant, client_id)))
            }
            (None, _) => Ok(Err(format!("{var} is set but AZURE_TENANT_ID is not"))),
            (_, None) => Ok(Err(format!("{var} is set but AZURE_CLIENT_ID is not"))),
        }
    };
    match kind {
        AuthKind::Auto => Ok(Found::NotSetUp("auto is not a kind".into())),
        AuthKind::Token => match env.get("WRITEBACK_ACCESS_TOKEN") {
            Some(token) => {
                let token = token.strip_prefix("Bearer ").unwrap_or(&token).trim().to_string();
                ready(Method::Token(Secret::new(token)), "WRITEBACK_ACCESS_TOKEN is set".into())
            }
            None => Ok(Found::NotSetUp("WRITEBACK_ACCESS_TOKEN is not set".into())),
        },
        AuthKind::Secret => {
            let Some(secret) = env.get("AZURE_CLIENT_SECRET") else {
                return Ok(Found::NotSetUp("AZURE_CLIENT_SECRET is not set".into()));
            };
            match app("AZURE_CLIENT_SECRET")? {
                Ok((tenant, client_id)) => ready(
                    Method::ClientSecret { tenant, client_id, secret: Secret::new(secret) },
                    "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET are set".into(),
                ),
                Err(reason) => Ok(Found::NotSetUp(reason)),
            }
        }
        AuthKind::Certificate => {
            let Some(path) = env.get("AZURE_CLIENT_CERTIFICATE_PATH") else {
                return Ok(Found::NotSetUp("AZURE_CLIENT_CERTIFICATE_PATH is not set".into()));
            };
            let (tenant, client_id) = match app("AZURE_CLIENT_CERTIFICATE_PATH")? {
                Ok(ids) => ids,
                Err(reason) => return Ok(Found::NotSetUp(reason)),
            };
            let path = PathBuf::from(path);
            let pem = std::fs::read_to_string(&path).map_err(|e| SignInError::Config {
                location: path.display().to_string(),
                message: format!("cannot read the certificate named by AZURE_CLIENT_CERTIFICATE_PATH: {e}"),
            })?;
            let key = parse_certificate_pem(&pem)
                .map_err(|message| SignInError::Config { location: path.display().to_string(), message })?;
            ready(
                Method::Certificate { tenant, client_id, path, key: Arc::new(key) },
                "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH are set".into(),
            )
        }
        AuthKind::WorkloadIdentity => {
            let Some(file) = env.get("AZURE_FEDERATED_TOKEN_FILE") else {
                return Ok(Found::NotSetUp("AZURE_FEDERATED_TOKEN_FILE is not set".into()));
            };
            match app("AZURE_FEDERATED_TOKEN_FILE")? {
                Ok((tenant, client_id)) => ready(
                    Method::WorkloadIdentity { tenant, client_id, token_file: PathBuf::from(file) },
                    "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE are set".into(),
                ),
                Err(reason) => Ok(Found::NotSetUp(reason)),
            }
        }
        AuthKind::ManagedIdentity => {
            let client_id = env.get("AZURE_CLIENT_ID");
            if let Some(endpoint) = env.get("IDENTITY_ENDPOINT") {
                let url = managed_identity::parse_url(&endpoint, "IDENTITY_ENDPOINT")?;
                let Some(header) = env.get("IDENTITY_HEADER") else {
                    return Err(SignInError::Config {
                        location: "IDENTITY_HEADER".into(),
                        message: "IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not (Azure Arc's challenge flow is \
                                  not supported; use another kind there)"
                            .into(),
                    });
                };
                let endpoint = MiEndpoint::AppService { url, header: Secret::new(header) };
                return ready(Method::ManagedIdentity { endpoint, client_id }, "IDENTITY_ENDPOINT is set".into());
            }
            let base = match env.get(IMDS_URL_VAR) {
                Some(base) => managed_identity::parse_url(&base, IMDS_URL_VAR)?,
                None if explicit => managed_identity::default_imds()?,
                None => {
                    return Ok(Found::NotSetUp(
                        "neither IDENTITY_ENDPOINT nor WRITEBACK_IMDS_URL is set (on an Azure VM, pass --auth \
                         managed-identity)"
                            .into(),
                    ))
                }
            };
            let reason = if explicit && env.get(IMDS_URL_VAR).is_none() {
                "--auth managed-identity: the VM's instance metadata service".to_string()
            } else {
                format!("{IMDS_URL_VAR} is set")
            };
            ready(Method::ManagedIdentity { endpoint: MiEndpoint::Imds { base }, client_id }, reason)
        }
        AuthKind::AzureCli => match az {
            Some(program) => {
                let tenant = env.get("AZURE_TENANT_ID");
                if let Some(t) = &tenant {
                    check_tenant(t, "AZURE_TENANT_ID")?;
                }
                let reason = format!("`az` is on PATH ({})", program.display());
                ready(Method::AzureCli { program, tenant }, reason)
            }
            None => Ok(Found::NotSetUp("`az` is not on PATH".into())),
        },
        AuthKind::DeviceCode => {
            let Some(client_id) = env.get("AZURE_CLIENT_ID") else {
                return Ok(Found::NotSetUp("AZURE_CLIENT_ID is not set".into()));
            };
            let tenant = env.get("AZURE_TENANT_ID").unwrap_or_else(|| "organizations".into());
            check_tenant(&tenant, "AZURE_TENANT_ID")?;
            ready(Method::DeviceCode { tenant, client_id }, "--auth device-code".into())
        }
    }
}

/// Finds `name` on `path` (a `PATH` value) as a shell would: the first folder holding an executable file of that
/// name. On Windows (`windows`), `az` is `az.cmd` (or `az.exe`/`az.bat`).
pub fn find_program(name: &str, path: Option<&OsStr>, windows: bool) -> Option<PathBuf> {
    let path = path?;
    let names: Vec<String> = if windows {
        ["cmd", "exe", "bat"].iter().map(|ext| format!("{name}.{ext}")).collect()
    } else {
        vec![name.into()]
    };
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|candidate| is_executable(candidate, windows))
}

fn is_executable(path: &Path, windows: bool) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if !meta.is_file() {
        return false;
    }
    if windows {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// A URL for messages, without its query.
pub(crate) fn show_url(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| map.get(name).cloned()
    }

    fn kinds(chain: &Chain) -> Vec<AuthKind> {
        chain.candidates.iter().map(|c| c.kind).collect()
    }

    const TENANT: (&str, &str) = ("AZURE_TENANT_ID", "contoso.example");
    const CLIENT: (&str, &str) = ("AZURE_CLIENT_ID", "app");

    #[test]
    fn auto_takes_what_is_set_in_order() {
        let all = env(&[
            ("WRITEBACK_ACCESS_TOKEN", "Bearer t"),
            TENANT,
            CLIENT,
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        let chain = Chain::build(AuthKind::Auto, &all, Some("/usr/bin/az".into())).unwrap();
        use AuthKind::*;
        assert_eq!(kinds(&chain), [Token, Secret, WorkloadIdentity, ManagedIdentity, AzureCli]);
        let skipped: Vec<AuthKind> = chain.skipped.iter().map(|s| s.kind).collect();
        assert_eq!(skipped, [Certificate, DeviceCode]);
        match &chain.candidates[0].method {
            Method::Token(t) => assert_eq!(t.expose(), "t"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{chain:?}").contains("\"s\""));
    }

    #[test]
    fn auto_never_probes_the_metadata_address_or_asks_a_person() {
        let chain = Chain::build(AuthKind::Auto, &env(&[CLIENT]), None).unwrap();
        assert!(chain.candidates.is_empty());
        let message = chain.nothing_worked(&[]);
        for kind in AuthKind::CHAIN {
            assert!(message.contains(&format!("\n  {kind}: ")), "{kind} missing from: {message}");
        }
        assert!(message.contains("on an Azure VM, pass --auth managed-identity"), "{message}");
        assert!(message.contains("`az` is not on PATH"), "{message}");
        // Only when asked: the VM's metadata service at its fixed address.
        let chain = Chain::build(AuthKind::ManagedIdentity, &env(&[]), None).unwrap();
        match &chain.candidates[0].method {
            Method::ManagedIdentity { endpoint: MiEndpoint::Imds { base }, client_id: None } => {
                assert_eq!(base.as_str(), "http://169.254.169.254/")
            }
            other => panic!("{other:?}"),
        }
        let chain = Chain::build(AuthKind::Auto, &env(&[(IMDS_URL_VAR, "http://127.0.0.1:9")]), None).unwrap();
        assert_eq!(kinds(&chain), [AuthKind::ManagedIdentity]);
    }

    #[test]
    fn an_explicit_kind_names_what_it_needs() {
        let err = Chain::build(AuthKind::Secret, &env(&[("AZURE_CLIENT_SECRET", "s"), CLIENT]), None).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("--auth secret: AZURE_CLIENT_SECRET is set but AZURE_TENANT_ID is not"), "{text}");
        let err = Chain::build(AuthKind::AzureCli, &env(&[]), None).unwrap_err().to_string();
        assert!(err.contains("`az` is not on PATH") && err.contains("az login"), "{err}");
        let err = Chain::build(AuthKind::DeviceCode, &env(&[]), None).unwrap_err().to_string();
        assert!(err.contains("AZURE_CLIENT_ID"), "{err}");
        let chain = Chain::build(AuthKind::DeviceCode, &env(&[CLIENT]), None).unwrap();
        assert_eq!(chain.candidates[0].method.tenant(), None, "organizations is not a tenant");
        let chain =
            Chain::build(AuthKind::Secret, &env(&[("AZURE_CLIENT_SECRET", "s"), CLIENT, TENANT]), Some("/az".into()))
                .unwrap();
        assert_eq!(kinds(&chain), [AuthKind::Secret]);
    }

    #[test]
    fn set_but_broken_settings_stop_at_once() {
        let bad_tenant = env(&[("AZURE_TENANT_ID", "../x"), CLIENT, ("AZURE_CLIENT_SECRET", "s")]);
        assert!(Chain::build(AuthKind::Auto, &bad_tenant, None).is_err());
        let missing = env(&[TENANT, CLIENT, ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/cert.pem")]);
        let err = Chain::build(AuthKind::Auto, &missing, None).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem") && err.contains("cannot read"), "{err}");
        let arc = env(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:40342/metadata/identity/oauth2/token")]);
        assert!(Chain::build(AuthKind::Auto, &arc, None).unwrap_err().to_string().contains("IDENTITY_HEADER"));
        let remote = env(&[("IDENTITY_ENDPOINT", "http://10.0.0.1/msi"), ("IDENTITY_HEADER", "h")]);
        assert!(Chain::build(AuthKind::Auto, &remote, None).is_err(), "plain http only to this machine");
    }

    #[test]
    fn az_is_found_on_path_as_each_platform_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (unix_dir, win_dir, empty) = (dir.path().join("u"), dir.path().join("w"), dir.path().join("e"));
        for d in [&unix_dir, &win_dir, &empty] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(unix_dir.join("az"), "#!/bin/sh\n").unwrap();
        std::fs::write(win_dir.join("az.cmd"), "@echo off\r\n").unwrap();
        let path = std::env::join_paths([&empty, &win_dir, &unix_dir]).unwrap();
        assert_eq!(find_program("az", Some(&path), true), Some(win_dir.join("az.cmd")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(find_program("az", Some(&path), false), None, "not executable yet");
            std::fs::set_permissions(unix_dir.join("az"), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(find_program("az", Some(&path), false), Some(unix_dir.join("az")));
        }
        assert_eq!(find_program("az", None, false), None);
    }
}
