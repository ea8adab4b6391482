//! Signing in to Microsoft Graph with application credentials (the client-credentials grant).
//!
//! Credentials come from the environment, with the names azure-identity's `EnvironmentCredential` uses:
//! - `WRITEBACK_ACCESS_TOKEN`: a ready bearer token (wins when set; it cannot be refreshed);
//! - `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`: a client secret;
//! - `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_CERTIFICATE_PATH`: a PEM file holding the
//!   certificate and its unencrypted RSA private key; writeback signs a client assertion (RS256 JWT) with it.
//!
//! Secrets live in [`Secret`], whose `Debug` prints nothing, and never reach a message or the log.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::{Method, Url};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde::Deserialize;
use sha1::{Digest, Sha1};

use super::GraphError;
use crate::http::{base_str, wall_clock, Http, ServiceError};

/// Tokens are refreshed this long before they expire.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The default Graph endpoint.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
/// The default sign-in endpoint.
pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";

/// A secret string (client secret, token). `Debug` and `Display` never show it.
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

/// How writeback proves who it is to the sign-in endpoint.
#[derive(Clone)]
pub enum Credential {
    /// A client secret.
    ClientSecret {
        /// Tenant id or domain (`AZURE_TENANT_ID`).
        tenant: String,
        /// Application (client) id (`AZURE_CLIENT_ID`).
        client_id: String,
        /// `AZURE_CLIENT_SECRET`.
        secret: Secret,
    },
    /// A certificate and its private key.
    ClientCertificate {
        /// Tenant id or domain.
        tenant: String,
        /// Application (client) id.
        client_id: String,
        /// The PEM file it came from (for messages).
        path: PathBuf,
        /// The RSA private key.
        key: Box<RsaPrivateKey>,
        /// base64url SHA-1 of the certificate's DER bytes (the JWT `x5t` header).
        x5t: String,
    },
    /// A ready bearer token (`WRITEBACK_ACCESS_TOKEN`).
    AccessToken(Secret),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientSecret { tenant, client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("tenant", tenant)
                .field("client_id", client_id)
                .field("secret", &"redacted")
                .finish(),
            Credential::ClientCertificate { tenant, client_id, path, x5t, .. } => f
                .debug_struct("ClientCertificate")
                .field("tenant", tenant)
                .field("client_id", client_id)
                .field("path", path)
                .field("x5t", x5t)
                .field("key", &"redacted")
                .finish(),
            Credential::AccessToken(_) => f.write_str("AccessToken(redacted)"),
        }
    }
}

const CREDENTIAL_HELP: &str = "set WRITEBACK_ACCESS_TOKEN, or AZURE_TENANT_ID + AZURE_CLIENT_ID with \
AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH (see docs/permissions.md)";

impl Credential {
    /// Reads the credential from the process environment (see the module documentation).
    pub fn from_env() -> Result<Credential, GraphError> {
        Credential::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the credential through `get` (an environment lookup), so tests need not touch the process
    /// environment. Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Credential, GraphError> {
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if let Some(token) = get("WRITEBACK_ACCESS_TOKEN") {
            return Ok(Credential::AccessToken(Secret::new(token.trim_start_matches("Bearer ").trim())));
        }
        let config = |message: String| GraphError::Config { location: "environment".into(), message };
        let (Some(tenant), Some(client_id)) = (get("AZURE_TENANT_ID"), get("AZURE_CLIENT_ID")) else {
            return Err(config(format!("no Microsoft Graph credentials: {CREDENTIAL_HELP}")));
        };
        if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
            return Err(config("AZURE_TENANT_ID must be a tenant id (GUID) or domain name".into()));
        }
        if let Some(secret) = get("AZURE_CLIENT_SECRET") {
            return Ok(Credential::ClientSecret { tenant, client_id, secret: Secret::new(secret) });
        }
        if let Some(path) = get("AZURE_CLIENT_CERTIFICATE_PATH") {
            let path = PathBuf::from(path);
            let pem = std::fs::read_to_string(&path).map_err(|e| GraphError::Config {
                location: path.display().to_string(),
                message: format!("cannot read the certificate named by AZURE_CLIENT_CERTIFICATE_PATH: {e}"),
            })?;
            let (key, x5t) = parse_certificate_pem(&pem)
                .map_err(|message| GraphError::Config { location: path.display().to_string(), message })?;
            return Ok(Credential::ClientCertificate { tenant, client_id, path, key: Box::new(key), x5t });
        }
        Err(config(format!(
            "AZURE_TENANT_ID and AZURE_CLIENT_ID are set but no secret or certificate: {CREDENTIAL_HELP}"
        )))
    }

    /// The tenant named in the credential, when there is one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Credential::ClientSecret { tenant, .. } | Credential::ClientCertificate { tenant, .. } => Some(tenant),
            Credential::AccessToken(_) => None,
        }
    }

    /// False for a ready token, which writeback cannot renew.
    pub fn can_refresh(&self) -> bool {
        !matches!(self, Credential::AccessToken(_))
    }
}

/// Reads a PEM file holding a certificate and an RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`, unencrypted). Returns the key and the certificate's `x5t` thumbprint.
pub fn parse_certificate_pem(pem: &str) -> Result<(RsaPrivateKey, String), String> {
    let cert = pem_block(pem, "CERTIFICATE").ok_or("the file holds no '-----BEGIN CERTIFICATE-----' block")?;
    let der = STANDARD
        .decode(cert.lines().filter(|l| !l.starts_with("-----")).collect::<String>().trim())
        .map_err(|_| "the certificate block is not valid base64".to_string())?;
    let x5t = URL_SAFE_NO_PAD.encode(Sha1::digest(&der));
    let key = if let Some(block) = pem_block(pem, "PRIVATE KEY") {
        RsaPrivateKey::from_pkcs8_pem(&block).map_err(|e| format!("the private key is not an RSA key: {e}"))?
    } else if let Some(block) = pem_block(pem, "RSA PRIVATE KEY") {
        RsaPrivateKey::from_pkcs1_pem(&block).map_err(|e| format!("the RSA private key is unreadable: {e}"))?
    } else if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("the private key is encrypted; export it without a password (e.g. `openssl pkey`)".into());
    } else {
        return Err("the file holds no '-----BEGIN PRIVATE KEY-----' block (the certificate's RSA key)".into());
    };
    Ok((key, x5t))
}

fn pem_block(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    pem.get(start..stop).map(str::to_string)
}

/// Builds the client assertion: a JWT signed RS256 with header `x5t`, `aud` = the token endpoint,
/// `iss` = `sub` = the client id, a random `jti`, and `nbf`/`iat`/`exp` around `now` (valid 10 minutes).
pub fn client_assertion(
    client_id: &str,
    token_url: &str,
    key: &RsaPrivateKey,
    x5t: &str,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": x5t });
    let now_s = now.timestamp();
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now_s,
        "iat": now_s,
        "exp": now_s + 600,
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let signature = signer.try_sign(signing_input.as_bytes()).map_err(|e| format!("cannot sign the assertion: {e}"))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes())))
}

/// The `tid` claim of a JWT access token, read without checking the signature (writeback only uses it to
/// record which tenant it talked to; Graph checks the token).
pub fn token_tenant_id(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tid")?.as_str().map(str::to_string)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Gets and caches access tokens for Graph; refreshes them [`REFRESH_MARGIN`] before they expire, or when
/// [`TokenSource::invalidate`] is called after a 401.
pub struct TokenSource {
    http: Http,
    credential: Credential,
    token_url: Option<Url>,
    scope: String,
    cache: tokio::sync::Mutex<Option<Cached>>,
    requests: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("credential", &self.credential)
            .field("token_url", &self.token_url.as_ref().map(Url::as_str))
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenSource {
    /// A token source for `credential`, signing in at `{login_url}/{tenant}/oauth2/v2.0/token` with scope
    /// `<graph origin>/.default`.
    pub fn new(http: Http, credential: Credential, login_url: &Url, graph_url: &Url) -> Result<Self, GraphError> {
        let token_url = match credential.tenant() {
            Some(tenant) => Some(
                Url::parse(&format!("{}/{tenant}/oauth2/v2.0/token", base_str(login_url)))
                    .map_err(|e| GraphError::Config { location: "--login-url".into(), message: e.to_string() })?,
            ),
            None => None,
        };
        let scope = format!("{}/.default", graph_url.origin().ascii_serialization());
        Ok(TokenSource {
            http,
            credential,
            token_url,
            scope,
            cache: tokio::sync::Mutex::new(None),
            requests: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The credential.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The scope requested (`https://graph.microsoft.com/.default`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// How many token requests were sent.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token, from the cache or freshly obtained.
    pub async fn token(&self) -> Result<Secret, GraphError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await?;
        let refresh_in = if lifetime > REFRESH_MARGIN * 2 { lifetime - REFRESH_MARGIN } else { lifetime / 2 };
        *cache = Some(Cached { token: token.clone(), refresh_at: Instant::now() + refresh_in });
        Ok(token)
    }

    /// Forgets the cached token (after a 401). Returns false when the credential cannot be refreshed.
    pub async fn invalidate(&self) -> bool {
        if !self.credential.can_refresh() {
            return false;
        }
        *self.cache.lock().await = None;
        true
    }

    async fn fetch(&self) -> Result<(Secret, Duration), GraphError> {
        let (client_id, token_url) = match (&self.credential, &self.token_url) {
            (Credential::AccessToken(token), _) => return Ok((token.clone(), Duration::from_secs(3600 * 24))),
            (Credential::ClientSecret { client_id, .. }, Some(url))
            | (Credential::ClientCertificate { client_id, .. }, Some(url)) => (client_id, url),
            _ => return Err(GraphError::Config { location: "environment".into(), message: CREDENTIAL_HELP.into() }),
        };
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", client_id.clone()),
            ("scope", self.scope.clone()),
            ("grant_type", "client_credentials".into()),
        ];
        match &self.credential {
            Credential::ClientSecret { secret, .. } => form.push(("client_secret", secret.expose().to_string())),
            Credential::ClientCertificate { key, x5t, .. } => {
                let assertion = client_assertion(client_id, token_url.as_str(), key, x5t, wall_clock())
                    .map_err(|message| GraphError::Config { location: "certificate".into(), message })?;
                form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push(("client_assertion", assertion));
            }
            Credential::AccessToken(_) => {}
        }
        let method = Method::POST;
        let sent = self
            .http
            .send(&method, token_url, || {
                self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::future::ready(Ok(self.http.request(Method::POST, token_url.clone()).form(&form)))
            })
            .await?;
        let status = sent.response.status();
        if !status.is_success() {
            let err =
                ServiceError::from_response("the sign-in endpoint", &method, sent.response, &sent.client_request_id)
                    .await
                    .with_hint(
                        "check AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or certificate, and that the app \
                     registration's credential has not expired",
                    );
            return Err(GraphError::Auth(Box::new(err)));
        }
        let body = sent.response.bytes().await.map_err(|e| GraphError::Auth(Box::new(body_error(token_url, e))))?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|_| GraphError::Protocol {
            what: format!("POST {}", token_url.path()),
            reason: "the sign-in endpoint's answer has no access_token".into(),
        })?;
        let seconds = match parsed.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3599);
        Ok((Secret::new(parsed.access_token), Duration::from_secs(seconds)))
    }
}

fn body_error(url: &Url, e: reqwest::Error) -> ServiceError {
    ServiceError {
        service: "the sign-in endpoint",
        method: "POST".into(),
        path: url.path().into(),
        status: 0,
        code: None,
        message: Some(format!("reading the answer failed: {e}")),
        request_id: None,
        client_request_id: String::new(),
        retry_after: None,
        hint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::signature::Verifier;

    const PEM: &str = include_str!("testdata/test-cert-and-key.pem");

    #[test]
    fn certificate_thumbprint_and_key() {
        let (_key, x5t) = parse_certificate_pem(PEM).unwrap();
        // openssl x509 -outform DER | openssl dgst -sha1 -binary | basenc --base64url
        assert_eq!(x5t, "zc8jobrOOD9Wddy6crRPS4RJFaA");
    }

    #[test]
    fn client_assertion_is_a_valid_rs256_jwt() {
        let (key, x5t) = parse_certificate_pem(PEM).unwrap();
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let url = "https://login.example/t/oauth2/v2.0/token";
        let jwt = client_assertion("app-1", url, &key, &x5t, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], "zc8jobrOOD9Wddy6crRPS4RJFaA");
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "app-1");
        assert_eq!(claims["sub"], "app-1");
        assert_eq!(claims["nbf"], now.timestamp());
        assert_eq!(claims["exp"], now.timestamp() + 600);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let verifying = VerifyingKey::<sha2::Sha256>::new(key.to_public_key());
        let sig = Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
        verifying.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    }

    #[test]
    fn credentials_from_environment_names() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let c = Credential::from_lookup(env(&[
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_CLIENT_ID", "app"),
            ("AZURE_CLIENT_SECRET", "s3cr3t-value"),
        ]))
        .unwrap();
        assert!(matches!(c, Credential::ClientSecret { .. }));
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let c = Credential::from_lookup(env(&[("WRITEBACK_ACCESS_TOKEN", "Bearer tok-123"), ("AZURE_TENANT_ID", "x")]))
            .unwrap();
        match &c {
            Credential::AccessToken(t) => assert_eq!(t.expose(), "tok-123"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("tok-123"));
        assert!(Credential::from_lookup(env(&[])).is_err());
        assert!(Credential::from_lookup(env(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "a")])).is_err());
        assert!(Credential::from_lookup(env(&[
            ("AZURE_TENANT_ID", "../evil"),
            ("AZURE_CLIENT_ID", "a"),
            ("AZURE_CLIENT_SECRET", "s")
        ]))
        .is_err());
    }

    #[test]
    fn tenant_claim() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47","aud":"x"}"#);
        assert_eq!(
            token_tenant_id(&format!("eyJhbGciOiJub25lIn0.{payload}.sig")).as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(token_tenant_id("opaque-token"), None);
    }
}
