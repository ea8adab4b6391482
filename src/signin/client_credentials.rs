//! The token endpoint (`{login}/{tenant}/oauth2/v2.0/token`): the client-credentials grant of the `secret`,
//! `certificate` and `workload-identity` kinds, and the form posts the device-code flow shares.

use chrono::{DateTime, Utc};
use reqwest::{Method, Url};

use super::certificate::{client_assertion, CertificateKey};
use super::{seconds_field, AccessToken, AuthKind, Secret, SignInError};
use crate::http::{wall_clock, Http, ServiceError};

/// `client_assertion_type` of a signed or federated client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How an app proves who it is in the client-credentials grant.
pub(crate) enum Proof<'a> {
    Secret(&'a Secret),
    Certificate(&'a CertificateKey),
    FederatedFile(&'a std::path::Path),
}

/// A token endpoint's answer: the access token, and a refresh token when one came.
#[derive(Debug)]
pub(crate) struct Tokens {
    pub access: AccessToken,
    pub refresh: Option<Secret>,
}

/// An error answer of the token endpoint: `error` and the first line of `error_description`.
pub(crate) struct Refusal {
    pub code: String,
    pub error: ServiceError,
}

/// The client-credentials grant for `scope`.
pub(crate) async fn client_credentials(
    http: &Http,
    token_url: &Url,
    client_id: &str,
    scope: &str,
    proof: Proof<'_>,
) -> Result<Tokens, SignInError> {
    let mut form: Vec<(&str, String)> =
        vec![("client_id", client_id.into()), ("scope", scope.into()), ("grant_type", "client_credentials".into())];
    let (kind, hint) = match proof {
        Proof::Secret(secret) => {
            form.push(("client_secret", secret.expose().into()));
            (
                AuthKind::Secret,
                "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, and that the app registration's \
                 secret has not expired",
            )
        }
        Proof::Certificate(key) => {
            let assertion = client_assertion(client_id, token_url.as_str(), key, wall_clock())
                .map_err(|message| SignInError::Config { location: "AZURE_CLIENT_CERTIFICATE_PATH".into(), message })?;
            form.push(("client_assertion_type", JWT_BEARER.into()));
            form.push(("client_assertion", assertion));
            (
                AuthKind::Certificate,
                "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH, and that this certificate \
                 is uploaded to the app registration and has not expired",
            )
        }
        Proof::FederatedFile(path) => {
            // Re-read for every token: the issuer rotates the file.
            let token = std::fs::read_to_string(path).map_err(|e| SignInError::Config {
                location: path.display().to_string(),
                message: format!("cannot read the federated token named by AZURE_FEDERATED_TOKEN_FILE: {e}"),
            })?;
            let token = token.trim();
            if token.is_empty() {
                return Err(SignInError::Config {
                    location: path.display().to_string(),
                    message: "the federated token file (AZURE_FEDERATED_TOKEN_FILE) is empty".into(),
                });
            }
            form.push(("client_assertion_type", JWT_BEARER.into()));
            form.push(("client_assertion", token.into()));
            (
                AuthKind::WorkloadIdentity,
                "check that the app registration AZURE_CLIENT_ID names has a federated credential whose issuer, \
                 subject and audience match the token in AZURE_FEDERATED_TOKEN_FILE, and that the token has not \
                 expired",
            )
        }
    };
    post_form(http, token_url, &form, kind).await.map_err(|e| match e {
        PostError::Refused(r) => SignInError::Refused(Box::new(r.error.with_hint(hint))),
        PostError::Other(e) => e,
    })
}

/// A refusal, or an error that is not one.
pub(crate) enum PostError {
    Refused(Refusal),
    Other(SignInError),
}

impl From<PostError> for SignInError {
    fn from(e: PostError) -> Self {
        match e {
            PostError::Refused(r) => SignInError::Refused(Box::new(r.error)),
            PostError::Other(e) => e,
        }
    }
}

/// POSTs `form` to a sign-in endpoint and reads the token answer.
pub(crate) async fn post_form(
    http: &Http,
    url: &Url,
    form: &[(&str, String)],
    kind: AuthKind,
) -> Result<Tokens, PostError> {
    let method = Method::POST;
    let sent = http
        .send(&method, url, || std::future::ready(Ok(http.request(Method::POST, url.clone()).form(form))))
        .await
        .map_err(|e| PostError::Other(e.into()))?;
    if !sent.response.status().is_success() {
        let error =
            ServiceError::from_response(crate::http::SIGN_IN, &method, sent.response, &sent.client_request_id).await;
        return Err(PostError::Refused(Refusal { code: error.code.clone().unwrap_or_default(), error }));
    }
    let body = sent.response.bytes().await.map_err(|e| {
        PostError::Other(SignInError::Failed {
            kind,
            message: format!("reading the sign-in endpoint's answer failed: {e}"),
        })
    })?;
    parse_tokens(&body, wall_clock()).ok_or_else(|| {
        PostError::Other(SignInError::Failed {
            kind,
            message: "the sign-in endpoint's answer has no access_token".into(),
        })
    })
}

/// Reads `{access_token, expires_in, refresh_token?}`.
fn parse_tokens(body: &[u8], now: DateTime<Utc>) -> Option<Tokens> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let access = value.get("access_token")?.as_str().filter(|t| !t.is_empty())?;
    let expires_in = seconds_field(value.get("expires_in")).unwrap_or(3599);
    let refresh = value.get("refresh_token").and_then(|t| t.as_str()).filter(|t| !t.is_empty()).map(Secret::new);
    Some(Tokens {
        access: AccessToken {
            token: Secret::new(access),
            expires_at: Some(now + chrono::Duration::seconds(expires_in)),
        },
        refresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t =
            parse_tokens(br#"{"token_type":"Bearer","expires_in":"3599","access_token":"a","refresh_token":"r"}"#, now)
                .unwrap();
        assert_eq!(t.access.token.expose(), "a");
        assert_eq!(t.access.expires_at, Some(now + chrono::Duration::seconds(3599)));
        assert_eq!(t.refresh.unwrap().expose(), "r");
        assert!(parse_tokens(br#"{"access_token":""}"#, now).is_none());
        assert!(parse_tokens(b"<html>", now).is_none());
    }
}
