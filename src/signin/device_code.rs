//! The `device-code` kind: a person signs in in a browser with a code (RFC 8628, the device authorization grant).
//!
//! 1. `POST {login}/{tenant}/oauth2/v2.0/devicecode` with the public-client app's `client_id` and the scope
//!    `{resource}/.default offline_access` (the delegated permissions consented for that app, and a refresh
//!    token). The answer has a `device_code` (a secret), a `user_code`, a `verification_uri`, `expires_in` and
//!    `interval`.
//! 2. The prompt (the answer's `message`) goes to stderr, so it works without a terminal too.
//! 3. Poll the token endpoint with `grant_type=urn:ietf:params:oauth:grant-type:device_code` every `interval`
//!    seconds: `authorization_pending` keeps polling, `slow_down` adds 5 seconds, `authorization_declined`,
//!    `expired_token` and `bad_verification_code` stop.
//!
//! The refresh token stays in memory; when the access token is about to expire it buys a new one without asking
//! the person again.

use std::future::Future;
use std::time::Duration;

use reqwest::Url;

use super::client_credentials::{post_form, PostError, Tokens};
use super::{seconds_field, AuthKind, Secret, SignInError};
use crate::http::{Http, ServiceError};

/// The grant type of the polling requests.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// What `slow_down` adds to the polling interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The scope a device-code sign-in asks for: the app's consented delegated permissions on `resource`, and a
/// refresh token.
pub fn scope(resource: &str) -> String {
    format!("{resource}/.default offline_access")
}

/// The device authorization endpoint's answer.
#[derive(Debug)]
pub struct DeviceAuthorization {
    /// The code writeback polls with (a secret: never shown).
    pub device_code: Secret,
    /// The code the person types in.
    pub user_code: String,
    /// Where the person types it.
    pub verification_uri: String,
    /// How long the codes are valid.
    pub expires_in: Duration,
    /// How long to wait between polls.
    pub interval: Duration,
    /// The endpoint's own instructions, when it sent them.
    pub message: Option<String>,
}

impl DeviceAuthorization {
    /// What to show the person (escaped for the terminal).
    pub fn prompt(&self) -> String {
        let text = match &self.message {
            Some(message) => message.clone(),
            None => format!("To sign in, open {} and enter the code {}", self.verification_uri, self.user_code),
        };
        crate::terminal::escape(&text).into_owned()
    }
}

/// Step 1: asks for a device code.
pub(crate) async fn start(
    http: &Http,
    url: &Url,
    client_id: &str,
    scope: &str,
) -> Result<DeviceAuthorization, SignInError> {
    let method = reqwest::Method::POST;
    let form = [("client_id", client_id.to_string()), ("scope", scope.to_string())];
    let sent = http
        .send(&method, url, || std::future::ready(Ok(http.request(reqwest::Method::POST, url.clone()).form(&form))))
        .await?;
    if !sent.response.status().is_success() {
        let err = ServiceError::from_response(crate::http::SIGN_IN, &method, sent.response, &sent.client_request_id)
            .await
            .with_hint(
                "check AZURE_CLIENT_ID (a public-client app registration with \"Allow public client flows\" on) and \
                 AZURE_TENANT_ID",
            );
        return Err(SignInError::Refused(Box::new(err)));
    }
    let failed = |message: &str| SignInError::Failed { kind: AuthKind::DeviceCode, message: message.into() };
    let body = sent.response.bytes().await.map_err(|_| failed("reading the device code answer failed"))?;
    parse_authorization(&body)
        .ok_or_else(|| failed("the device code answer lacks device_code, user_code or verification_uri"))
}

fn parse_authorization(body: &[u8]) -> Option<DeviceAuthorization> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |name: &str| v.get(name).and_then(|x| x.as_str()).filter(|x| !x.is_empty()).map(str::to_string);
    let seconds =
        |name: &str, default: i64| Duration::from_secs(seconds_field(v.get(name)).unwrap_or(default).max(0) as u64);
    Some(DeviceAuthorization {
        device_code: Secret::new(text("device_code")?),
        user_code: text("user_code")?,
        verification_uri: text("verification_uri").or_else(|| text("verification_url"))?,
        expires_in: seconds("expires_in", 900),
        interval: seconds("interval", 5),
        message: text("message"),
    })
}

/// What one poll's refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollAnswer {
    /// `authorization_pending`: nobody signed in yet.
    Pending,
    /// `slow_down`: poll less often.
    SlowDown,
    /// Anything else: stop.
    Stop,
}

impl PollAnswer {
    /// Reads the `error` code of a polling answer.
    pub fn of(code: &str) -> PollAnswer {
        match code {
            "authorization_pending" => PollAnswer::Pending,
            "slow_down" => PollAnswer::SlowDown,
            _ => PollAnswer::Stop,
        }
    }
}

/// Step 3: polls until the person signed in, declined, or the code expired. `sleep` waits between polls (the
/// runtime's timer in production; a recorder in tests).
pub(crate) async fn poll<S, F>(
    http: &Http,
    token_url: &Url,
    client_id: &str,
    authorization: &DeviceAuthorization,
    mut sleep: S,
) -> Result<Tokens, SignInError>
where
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let form = [
        ("grant_type", DEVICE_CODE_GRANT.to_string()),
        ("client_id", client_id.to_string()),
        ("device_code", authorization.device_code.expose().to_string()),
    ];
    let failed = |message: String| SignInError::Failed { kind: AuthKind::DeviceCode, message };
    let mut interval = authorization.interval;
    let mut waited = Duration::ZERO;
    loop {
        if waited > authorization.expires_in {
            return Err(failed("the code expired before anyone signed in; run the command again".into()));
        }
        sleep(interval).await;
        waited += interval;
        match post_form(http, token_url, &form, AuthKind::DeviceCode).await {
            Ok(tokens) => return Ok(tokens),
            Err(PostError::Other(e)) => return Err(e),
            Err(PostError::Refused(refusal)) => match PollAnswer::of(&refusal.code) {
                PollAnswer::Pending => {}
                PollAnswer::SlowDown => interval += SLOW_DOWN_STEP,
                PollAnswer::Stop => {
                    let message = match refusal.code.as_str() {
                        "expired_token" => {
                            "the code expired before anyone signed in; run the command again".to_string()
                        }
                        "authorization_declined" => "the sign-in was declined in the browser".to_string(),
                        "bad_verification_code" => "the sign-in endpoint does not know the device code".to_string(),
                        _ => return Err(SignInError::Refused(Box::new(refusal.error))),
                    };
                    return Err(failed(message));
                }
            },
        }
    }
}

/// Buys a new access token with the refresh token, without asking the person.
pub(crate) async fn refresh(
    http: &Http,
    token_url: &Url,
    client_id: &str,
    refresh_token: &Secret,
    scope: &str,
) -> Result<Tokens, SignInError> {
    let form = [
        ("grant_type", "refresh_token".to_string()),
        ("client_id", client_id.to_string()),
        ("refresh_token", refresh_token.expose().to_string()),
        ("scope", scope.to_string()),
    ];
    post_form(http, token_url, &form, AuthKind::DeviceCode).await.map_err(SignInError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpConfig;
    use axum::extract::Form;
    use axum::routing::post;
    use axum::Json;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[test]
    fn answers_and_prompt() {
        let a = parse_authorization(
            br#"{"device_code":"dc-secret","user_code":"ABCD-EFGH","verification_uri":"https://microsoft.com/devicelogin","expires_in":"900","interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate."}"#,
        )
        .unwrap();
        assert_eq!(a.interval, Duration::from_secs(5));
        assert_eq!(a.expires_in, Duration::from_secs(900));
        assert!(a.prompt().contains("ABCD-EFGH") && !a.prompt().contains("dc-secret"));
        assert!(!format!("{a:?}").contains("dc-secret"));
        let bare =
            parse_authorization(br#"{"device_code":"d","user_code":"U","verification_uri":"https://x"}"#).unwrap();
        assert_eq!(bare.prompt(), "To sign in, open https://x and enter the code U");
        assert!(parse_authorization(br#"{"user_code":"U"}"#).is_none());
        assert_eq!(PollAnswer::of("authorization_pending"), PollAnswer::Pending);
        assert_eq!(PollAnswer::of("slow_down"), PollAnswer::SlowDown);
        assert_eq!(PollAnswer::of("expired_token"), PollAnswer::Stop);
    }

    /// A token endpoint answering the polls with `script`, then with a token.
    async fn endpoint(script: Vec<&'static str>) -> (Url, Arc<Mutex<Vec<HashMap<String, String>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let script = Arc::new(Mutex::new(script));
        let router = axum::Router::new().route(
            "/t/oauth2/v2.0/token",
            post(move |Form(form): Form<HashMap<String, String>>| {
                let (s, script) = (s.clone(), script.clone());
                async move {
                    s.lock().unwrap().push(form);
                    let next = {
                        if script.lock().unwrap().is_empty() {
                            None
                        } else {
                            Some(script.lock().unwrap().remove(0))
                        }
                    };
                    match next {
                        Some(code) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            Json(serde_json::json!({"error": code, "error_description": format!("AADSTS: {code}")})),
                        ),
                        None => (
                            axum::http::StatusCode::OK,
                            Json(serde_json::json!({"access_token": "at", "refresh_token": "rt", "expires_in": 3599})),
                        ),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (Url::parse(&format!("http://{addr}/t/oauth2/v2.0/token")).unwrap(), seen)
    }

    fn authorization() -> DeviceAuthorization {
        DeviceAuthorization {
            device_code: Secret::new("dc"),
            user_code: "U".into(),
            verification_uri: "https://x".into(),
            expires_in: Duration::from_secs(900),
            interval: Duration::from_secs(5),
            message: None,
        }
    }

    #[tokio::test]
    async fn polling_waits_the_interval_and_slows_down_when_told() {
        let (url, seen) = endpoint(vec!["authorization_pending", "slow_down", "authorization_pending"]).await;
        let http = Http::new("test", &HttpConfig::for_tests()).unwrap();
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let tokens = poll(&http, &url, "app", &authorization(), move |d| {
            w.lock().unwrap().push(d);
            std::future::ready(())
        })
        .await
        .unwrap();
        assert_eq!(tokens.access.token.expose(), "at");
        assert_eq!(tokens.refresh.unwrap().expose(), "rt");
        let s = Duration::from_secs;
        assert_eq!(*waits.lock().unwrap(), [s(5), s(5), s(10), s(10)]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0]["grant_type"], DEVICE_CODE_GRANT);
        assert_eq!(seen[0]["device_code"], "dc");
        assert_eq!(seen[0]["client_id"], "app");
    }

    #[tokio::test]
    async fn polling_stops_on_expiry_and_refusal() {
        let http = Http::new("test", &HttpConfig::for_tests()).unwrap();
        for (code, says) in [("expired_token", "expired"), ("authorization_declined", "declined")] {
            let (url, _) = endpoint(vec!["authorization_pending", code]).await;
            let err = poll(&http, &url, "app", &authorization(), |_| std::future::ready(())).await.unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        // The client gives up by itself once the code's lifetime has passed.
        let (url, seen) = endpoint(vec!["authorization_pending"; 10]).await;
        let short = DeviceAuthorization { expires_in: Duration::from_secs(12), ..authorization() };
        let err = poll(&http, &url, "app", &short, |_| std::future::ready(())).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }
}
