//! The `managed-identity` kind: the identity of the Azure resource writeback runs on.
//!
//! - App Service, Functions, Container Apps: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…` with
//!   the header `X-IDENTITY-HEADER: {IDENTITY_HEADER}`.
//! - Virtual machines: the instance metadata service, `GET {base}/metadata/identity/oauth2/token?api-version=
//!   2018-02-01&resource=…` with `Metadata: true`; `base` is `http://169.254.169.254`, or `WRITEBACK_IMDS_URL`.
//!
//! `AZURE_CLIENT_ID` adds `client_id=…` (a user-assigned identity). The answer carries `access_token` and
//! `expires_on` (epoch seconds) or `expires_in`.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use reqwest::{Method, Url};

use super::{seconds_field, AccessToken, Attempt, Secret, SignInError};
use crate::http::{wall_clock, Http, HttpError, ServiceError};

/// Where a managed identity's tokens come from.
#[derive(Debug, Clone)]
pub enum MiEndpoint {
    /// `IDENTITY_ENDPOINT` and its header secret.
    AppService {
        /// The endpoint.
        url: Url,
        /// `IDENTITY_HEADER`.
        header: Secret,
    },
    /// The instance metadata service at `base`.
    Imds {
        /// `http://169.254.169.254`, or `WRITEBACK_IMDS_URL`.
        base: Url,
    },
}

/// The instance metadata service's fixed address.
pub const IMDS_BASE: &str = "http://169.254.169.254";

/// The metadata service at its fixed address.
pub fn default_imds() -> Result<Url, SignInError> {
    parse_url(IMDS_BASE, "the instance metadata service")
}

/// Parses a managed-identity endpoint: https, or plain http to this machine or to the metadata address (both
/// never leave the host).
pub fn parse_url(raw: &str, what: &str) -> Result<Url, SignInError> {
    let bad = |message: String| SignInError::Config { location: what.into(), message };
    let url = Url::parse(raw.trim()).map_err(|e| bad(format!("'{raw}' is not a URL ({e})")))?;
    let local = match url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']')) {
        Some(host) => match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip.to_string() == "169.254.169.254",
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        },
        None => return Err(bad(format!("'{raw}' has no host"))),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if local => Ok(url),
        _ => Err(bad(format!("'{raw}' must be https (plain http only to this machine or 169.254.169.254)"))),
    }
}

/// The URL a token is asked at (query included) and the header that proves the caller runs on the resource.
fn request_url(endpoint: &MiEndpoint, resource: &str, client_id: Option<&str>) -> Result<Url, SignInError> {
    let (mut url, version) = match endpoint {
        MiEndpoint::AppService { url, .. } => (url.clone(), "2019-08-01"),
        MiEndpoint::Imds { base } => {
            let joined = format!("{}/metadata/identity/oauth2/token", crate::http::base_str(base));
            let url = Url::parse(&joined)
                .map_err(|e| SignInError::Config { location: "WRITEBACK_IMDS_URL".into(), message: e.to_string() })?;
            (url, "2018-02-01")
        }
    };
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("api-version", version).append_pair("resource", resource);
        if let Some(id) = client_id {
            query.append_pair("client_id", id);
        }
    }
    Ok(url)
}

/// Asks the managed identity endpoint for a token for `resource`. No answer at all means no managed identity
/// here ([`Attempt::Unavailable`]); an error status is a failure.
pub(crate) async fn get_token(
    http: &Http,
    endpoint: &MiEndpoint,
    resource: &str,
    client_id: Option<&str>,
) -> Result<AccessToken, Attempt> {
    let url = request_url(endpoint, resource, client_id)?;
    let method = Method::GET;
    let sent = http
        .send(&method, &url, || {
            let request = http.request(Method::GET, url.clone());
            let request = match endpoint {
                MiEndpoint::AppService { header, .. } => request.header("X-IDENTITY-HEADER", header.expose()),
                MiEndpoint::Imds { .. } => request.header("Metadata", "true"),
            };
            std::future::ready(Ok(request))
        })
        .await;
    let sent = match sent {
        Ok(sent) => sent,
        Err(e @ HttpError::Transport { .. }) => {
            return Err(Attempt::Unavailable(format!(
                "no managed identity endpoint answered at {} ({e})",
                super::chain::show_url(&url)
            )))
        }
        Err(e) => return Err(Attempt::Failed(e.into())),
    };
    if !sent.response.status().is_success() {
        let err = ServiceError::from_response(
            "the managed identity endpoint",
            &method,
            sent.response,
            &sent.client_request_id,
        )
        .await
        .with_hint(
            "check that the resource has a managed identity (system-assigned, or the user-assigned one \
                 AZURE_CLIENT_ID names) and that it has the Graph permissions (see docs/permissions.md)",
        );
        return Err(Attempt::Failed(SignInError::Refused(Box::new(err))));
    }
    let body = sent
        .response
        .bytes()
        .await
        .map_err(|e| Attempt::Failed(protocol(format!("reading the answer failed: {e}"))))?;
    parse_answer(&body, wall_clock()).map_err(|m| Attempt::Failed(protocol(m)))
}

fn protocol(message: String) -> SignInError {
    SignInError::Failed { kind: super::AuthKind::ManagedIdentity, message }
}

/// Reads `{access_token, expires_on | expires_in}`.
fn parse_answer(body: &[u8], now: DateTime<Utc>) -> Result<AccessToken, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the managed identity endpoint's answer is not JSON".to_string())?;
    let token = value
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the managed identity endpoint's answer has no access_token")?;
    let expires_at = seconds_field(value.get("expires_on"))
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .or_else(|| seconds_field(value.get("expires_in")).map(|s| now + chrono::Duration::seconds(s)));
    Ok(AccessToken { token: Secret::new(token), expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls() {
        let app = MiEndpoint::AppService {
            url: parse_url("http://127.0.0.1:41741/MSI/token/", "IDENTITY_ENDPOINT").unwrap(),
            header: Secret::new("h"),
        };
        let url = request_url(&app, "https://graph.microsoft.com", Some("mi-client")).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:41741/MSI/token/?api-version=2019-08-01&resource=https%3A%2F%2Fgraph.microsoft.com&client_id=mi-client"
        );
        let vm = MiEndpoint::Imds { base: default_imds().unwrap() };
        let url = request_url(&vm, "https://graph.microsoft.us", None).unwrap();
        assert_eq!(
            url.as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.us"
        );
        assert!(parse_url("http://10.1.2.3/msi", "x").is_err());
        assert!(parse_url("https://10.1.2.3/msi", "x").is_ok());
    }

    #[test]
    fn answers_with_either_expiry() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t = parse_answer(br#"{"access_token":"a","expires_on":"1700003600","resource":"r"}"#, now).unwrap();
        assert_eq!(t.expires_at, DateTime::from_timestamp(1_700_003_600, 0));
        let t = parse_answer(br#"{"access_token":"a","expires_in":"86399"}"#, now).unwrap();
        assert_eq!(t.expires_at, Some(now + chrono::Duration::seconds(86399)));
        assert!(parse_answer(br#"{"error":"x"}"#, now).is_err());
    }
}
