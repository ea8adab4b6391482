//! HTTP plumbing shared by the Graph and PoliteMail clients: endpoint checks, timeouts, retries, and the
//! errors a remote service gives back.
//!
//! Every request goes through [`Http::send`] (or [`Http::send_paced`]), which
//! - sends a fresh `client-request-id` (a UUID v4) on each attempt,
//! - retries what [`crate::retry`] says to retry (429, 5xx, connection failures, resets and timeouts), after the
//!   wait it says (the server's `Retry-After`, else exponential backoff with jitter),
//! - stops after [`RetryPolicy::max_attempts`] attempts or when the next wait would pass
//!   [`RetryPolicy::max_total`], and then hands the last response back to the caller,
//! - with a [`Pacer`], waits for its turn before each attempt and tells the pacer what came back, so that reads
//!   slow down to the rate the service allows once it throttles.
//!
//! With `-v` each retry is logged (method, path, status, wait, request-id). Headers are never logged, so tokens
//! and passwords cannot leak through the log.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Response, Url};

use crate::pacing::{Observation, Pacer};
use crate::retry::{classify, Verdict};
pub use crate::retry::{parse_retry_after, retry_after, RetryPolicy};

/// The header carrying the id the client gives each request.
pub const CLIENT_REQUEST_ID: &str = "client-request-id";

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// An endpoint URL is malformed or not allowed.
    #[error("{0}")]
    Endpoint(String),
    /// The request never got an HTTP answer (connection refused or reset, TLS failure, timeout).
    #[error("{service}: {method} {path} failed after {attempts} attempt(s): {reason} (client-request-id {client_request_id})")]
    Transport {
        /// "Microsoft Graph", "PoliteMail", "the sign-in endpoint".
        service: &'static str,
        /// The HTTP method.
        method: String,
        /// The URL path (never the query, which can hold addresses).
        path: String,
        /// How many attempts were made.
        attempts: u32,
        /// What went wrong.
        reason: String,
        /// The id sent with the last attempt.
        client_request_id: String,
    },
    /// The service answered with an error status.
    #[error("{0}")]
    Status(Box<ServiceError>),
    /// The service answered 2xx but the body is not what its documentation describes.
    #[error("{service}: unexpected answer to {method} {path}: {reason}")]
    Body {
        /// The service.
        service: &'static str,
        /// The HTTP method.
        method: String,
        /// The URL path.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Setting up the HTTP client failed.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl HttpError {
    /// The service error, when the failure was an HTTP error status.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            HttpError::Status(e) => Some(e),
            _ => None,
        }
    }

    /// The HTTP status, when the failure was an HTTP error status.
    pub fn status(&self) -> Option<u16> {
        self.service_error().map(|e| e.status)
    }
}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Endpoint(m) => crate::Error::Usage(m),
            HttpError::Setup(m) => crate::Error::Internal(format!("cannot set up the HTTP client: {m}")),
            other => crate::Error::Service(other.to_string()),
        }
    }
}

/// An error status from Graph, the sign-in endpoint or PoliteMail, with everything support will ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The service.
    pub service: &'static str,
    /// The HTTP method.
    pub method: String,
    /// The URL path (no query string).
    pub path: String,
    /// The HTTP status.
    pub status: u16,
    /// `error.code` (Graph, OData) or `error` (sign-in endpoint).
    pub code: Option<String>,
    /// `error.message` (Graph, OData) or `error_description` (sign-in endpoint).
    pub message: Option<String>,
    /// Graph's `request-id` (response header, or `innerError.request-id`), or the sign-in endpoint's trace id.
    pub request_id: Option<String>,
    /// The `client-request-id` writeback sent.
    pub client_request_id: String,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// What to check or do, added by the caller (e.g. a missing permission).
    pub hint: Option<String>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {} returned {}", self.service, self.method, self.path, self.status)?;
        match (&self.code, &self.message) {
            (Some(c), Some(m)) => write!(f, " {c}: {m}")?,
            (Some(c), None) => write!(f, " {c}")?,
            (None, Some(m)) => write!(f, ": {m}")?,
            (None, None) => {}
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request-id {id}, client-request-id {})", self.client_request_id)?;
        } else {
            write!(f, " (client-request-id {})", self.client_request_id)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, ". {hint}")?;
        }
        Ok(())
    }
}

impl ServiceError {
    /// Reads an error response: status, request ids, and the documented error envelopes
    /// (`{"error":{"code","message","innerError":{"request-id"}}}`, OData v3 `{"odata.error":…}`, and the sign-in
    /// endpoint's `{"error","error_description","trace_id"}`). The body is consumed.
    pub async fn from_response(
        service: &'static str,
        method: &Method,
        response: Response,
        client_request_id: &str,
    ) -> ServiceError {
        let status = response.status().as_u16();
        let path = response.url().path().to_string();
        let header_id = request_id_from_headers(response.headers());
        let retry_after = retry_after(response.headers(), wall_clock().into());
        let body = response.bytes().await.unwrap_or_default();
        let parsed = if service == SIGN_IN { parse_sign_in_error(&body) } else { parse_error_body(&body) };
        ServiceError {
            service,
            method: method.to_string(),
            path,
            status,
            code: parsed.code,
            message: parsed.message,
            request_id: header_id.or(parsed.request_id),
            client_request_id: client_request_id.to_string(),
            retry_after,
            hint: None,
        }
    }

    /// Adds a hint (what to check) to the message.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The fields of an error body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// `error.code`.
    pub code: Option<String>,
    /// `error.message`.
    pub message: Option<String>,
    /// `error.innerError.request-id`.
    pub request_id: Option<String>,
}

/// The service name of the Entra sign-in (token) endpoint, whose errors are read by [`parse_sign_in_error`].
pub const SIGN_IN: &str = "the sign-in endpoint";

/// The most characters of the sign-in endpoint's `error` and `error_description` shown together.
pub const SIGN_IN_ERROR_MAX: usize = 300;

/// Reads the sign-in endpoint's error answer as its `error` and `error_description` only (OAuth 2.0, RFC 6749
/// section 5.2), at most [`SIGN_IN_ERROR_MAX`] characters together, plus its `trace_id`. Nothing else of the body
/// is ever shown: the request carried the client secret or assertion, and an endpoint that echoes the request
/// must not get it printed. A body that is not such a JSON object gives no message.
pub fn parse_sign_in_error(body: &[u8]) -> ErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return ErrorBody::default() };
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty());
    let code: Option<String> = field("error").map(|c| c.chars().take(SIGN_IN_ERROR_MAX / 3).collect());
    let room = SIGN_IN_ERROR_MAX - code.as_ref().map_or(0, |c| c.chars().count());
    let message = field("error_description").map(|d| {
        let first = d.lines().next().unwrap_or("");
        let mut cut: String = first.chars().take(room).collect();
        if first.chars().count() > room {
            cut.pop();
            cut.push('…');
        }
        cut
    });
    ErrorBody { code, message, request_id: field("trace_id").map(|t| t.chars().take(64).collect()) }
}

/// Reads the error envelopes Graph, OData services and the sign-in endpoint use. Anything else gives the first
/// line of the body (at most 200 characters) as the message.
pub fn parse_error_body(body: &[u8]) -> ErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body);
        let line: String =
            text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(200).collect();
        return ErrorBody { message: (!line.is_empty()).then_some(line), ..ErrorBody::default() };
    };
    parse_error_value(&value)
}

/// Like [`parse_error_body`], for an already parsed body (a `$batch` item's `body`).
pub fn parse_error_value(value: &serde_json::Value) -> ErrorBody {
    let text = |v: Option<&serde_json::Value>| -> Option<String> {
        match v? {
            serde_json::Value::String(s) => Some(s.clone()),
            // OData v3: "message": {"lang": "en-US", "value": "…"}
            serde_json::Value::Object(o) => o.get("value").and_then(|v| v.as_str()).map(str::to_string),
            _ => None,
        }
    };
    let envelope = value.get("error").or_else(|| value.get("odata.error"));
    match envelope {
        Some(serde_json::Value::Object(err)) => {
            let inner = err.get("innerError").or_else(|| err.get("innererror"));
            ErrorBody {
                code: text(err.get("code")).filter(|c| !c.is_empty()),
                message: text(err.get("message")).filter(|m| !m.is_empty()),
                request_id: inner.and_then(|i| text(i.get("request-id"))),
            }
        }
        // The sign-in endpoint: {"error": "invalid_client", "error_description": "AADSTS…", "trace_id": …}
        Some(serde_json::Value::String(code)) => ErrorBody {
            code: Some(code.clone()),
            message: text(value.get("error_description")).map(|d| d.lines().next().unwrap_or("").to_string()),
            request_id: text(value.get("trace_id")),
        },
        _ => ErrorBody::default(),
    }
}

/// Graph's `request-id` header, or `x-ms-request-id` (the sign-in endpoint).
pub fn request_id_from_headers(headers: &HeaderMap) -> Option<String> {
    ["request-id", "x-ms-request-id"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).map(str::to_string))
}

/// The wall clock, read in one place only (for `Retry-After` dates and token times).
pub fn wall_clock() -> DateTime<Utc> {
    Utc::now()
}

/// Connection settings shared by the Graph and PoliteMail clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for one whole request and its response.
    pub request_timeout: Duration,
    /// Retries.
    pub retry: RetryPolicy,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(100),
            retry: RetryPolicy::default(),
        }
    }
}

impl HttpConfig {
    /// The defaults, with the retry policy from the environment ([`RetryPolicy::from_env`]).
    pub fn from_env() -> Result<HttpConfig, HttpError> {
        let retry = RetryPolicy::from_env().map_err(|e| HttpError::Endpoint(e.to_string()))?;
        Ok(HttpConfig { retry, ..HttpConfig::default() })
    }

    /// Short timeouts and tiny retry delays, for tests.
    pub fn for_tests() -> HttpConfig {
        HttpConfig {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::for_tests(),
        }
    }
}

/// Parses a service base URL given by flag or environment variable (`what` names it in messages).
///
/// `https://` is required, except that `http://` is allowed to loopback addresses (127.0.0.0/8, `::1`,
/// `localhost`) for local test servers. User names and passwords inside the URL are refused (they belong in
/// the environment variables), as are query strings and fragments. A trailing `/` is removed.
pub fn parse_endpoint(raw: &str, what: &str) -> Result<Url, HttpError> {
    let raw = raw.trim();
    let url = Url::parse(raw).map_err(|e| HttpError::Endpoint(format!("{what}: '{raw}' is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(HttpError::Endpoint(format!(
                "{what}: '{raw}' uses plain http; use https:// (plain http is allowed only to localhost)"
            )))
        }
        other => return Err(HttpError::Endpoint(format!("{what}: '{raw}': scheme '{other}' is not https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(HttpError::Endpoint(format!("{what}: '{raw}' has no host name")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(HttpError::Endpoint(format!(
            "{what}: put credentials in their environment variables, not in the URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(HttpError::Endpoint(format!("{what}: '{raw}' must not have a query string or fragment")));
    }
    let mut url = url;
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else { return false };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The base URL as a string without a trailing `/`, for joining paths: `{base}/groups/…`.
pub fn base_str(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// True when `link` (an `@odata.nextLink`) points at the same scheme, host and port as `base`, so a token is
/// never sent to another server.
pub fn same_origin(link: &Url, base: &Url) -> bool {
    link.scheme() == base.scheme()
        && link.host_str().map(str::to_ascii_lowercase) == base.host_str().map(str::to_ascii_lowercase)
        && link.port_or_known_default() == base.port_or_known_default()
}

/// RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`) stay; everything else is percent-encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters, for a value inside a query string (an OData
/// `$filter` literal, say).
pub fn encode_query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, QUERY_VALUE).to_string()
}

/// Writes an OData string literal: single quotes around, inner single quotes doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A reqwest client and a retry policy: the sending half of every client.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    retry: RetryPolicy,
    service: &'static str,
}

/// A response together with the `client-request-id` the request carried.
#[derive(Debug)]
pub struct Sent {
    /// The response (any status: callers decide what a 404 or 401 means).
    pub response: Response,
    /// The `client-request-id` of the attempt that produced it.
    pub client_request_id: String,
    /// How many attempts it took.
    pub attempts: u32,
}

impl Http {
    /// Builds the client for `service` ("Microsoft Graph", "PoliteMail"): rustls, the given timeouts, no
    /// redirects to other hosts, a `writeback/<version>` user agent.
    pub fn new(service: &'static str, config: &HttpConfig) -> Result<Http, HttpError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(format!("writeback/{}", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Http { client, retry: config.retry.clone(), service })
    }

    /// The service name used in messages.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Starts a request; pass it back through [`Http::send`].
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends the request `build` makes (called once per attempt, so it can add a fresh token), retrying as the
    /// module documentation says. Returns the last response, whatever its status; an error only when no
    /// response came at all.
    pub async fn send<F>(&self, method: &Method, url: &Url, build: F) -> Result<Sent, HttpError>
    where
        F: FnMut() -> BuildFuture,
    {
        self.send_with(method, url, build).await
    }

    /// [`Http::send`] for a builder that needs async work per attempt (a token refresh).
    pub async fn send_with<F, Fut>(&self, method: &Method, url: &Url, build: F) -> Result<Sent, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<RequestBuilder, HttpError>>,
    {
        self.attempts(&self.retry, None, method, url, build).await
    }

    /// [`Http::send_with`], each attempt waiting for its turn with `paced` and telling it what came back.
    pub async fn send_paced<F, Fut>(
        &self,
        paced: Paced<'_>,
        method: &Method,
        url: &Url,
        build: F,
    ) -> Result<Sent, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<RequestBuilder, HttpError>>,
    {
        self.attempts(&self.retry, Some(paced), method, url, build).await
    }

    /// One attempt, no retries: for a caller that retries by itself with the same policy (the apply executor,
    /// which must know every `Retry-After` each of its writes was given).
    pub async fn send_once<F, Fut>(&self, method: &Method, url: &Url, build: F) -> Result<Sent, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<RequestBuilder, HttpError>>,
    {
        let once = RetryPolicy { max_attempts: 1, ..self.retry.clone() };
        self.attempts(&once, None, method, url, build).await
    }

    async fn attempts<F, Fut>(
        &self,
        policy: &RetryPolicy,
        paced: Option<Paced<'_>>,
        method: &Method,
        url: &Url,
        mut build: F,
    ) -> Result<Sent, HttpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<RequestBuilder, HttpError>>,
    {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if let Some(p) = &paced {
                p.pacer.turn(p.cost).await;
            }
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let request = build().await?.header(CLIENT_REQUEST_ID, &client_request_id);
            let sent_at = Instant::now();
            let outcome = request.send().await;
            log_request(self.service, method, url, &outcome, sent_at.elapsed());
            let (wait, why, request_id) = match outcome {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let after = retry_after(response.headers(), wall_clock().into());
                    if let Some(p) = &paced {
                        p.observe(status, response.headers(), after, sent_at.elapsed());
                    }
                    let wait = match classify(status) {
                        Verdict::Final => None,
                        _ => policy.next_wait(attempt, started.elapsed(), after),
                    };
                    let Some(wait) = wait else {
                        return Ok(Sent { response, client_request_id, attempts: attempt });
                    };
                    let request_id = request_id_from_headers(response.headers());
                    // Drain the body so the connection can be reused.
                    let _ = response.bytes().await;
                    (wait, status.to_string(), request_id)
                }
                Err(e) => {
                    let retryable = e.is_timeout() || e.is_connect() || e.is_request();
                    let reason = transport_reason(&e);
                    let wait = policy.next_wait(attempt, started.elapsed(), None).filter(|_| retryable);
                    let Some(wait) = wait else {
                        return Err(HttpError::Transport {
                            service: self.service,
                            method: method.to_string(),
                            path: url.path().to_string(),
                            attempts: attempt,
                            reason,
                            client_request_id,
                        });
                    };
                    (wait, reason, None)
                }
            };
            tracing::info!(
                "{}: {} {} got {}; retrying in {:.3}s (attempt {} of at most {}, request-id {}, client-request-id {})",
                self.service,
                method,
                url.path(),
                why,
                wait.as_secs_f64(),
                attempt + 1,
                policy.max_attempts,
                request_id.as_deref().unwrap_or("-"),
                client_request_id,
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// `-v`: one line per request, `Microsoft Graph: GET /v1.0/groups/… 200 in 41 ms`. Only the path is shown: a
/// query string can carry values (a `$filter` of addresses, a token in a redirect) that do not belong in a log.
fn log_request(service: &str, method: &Method, url: &Url, outcome: &Result<Response, reqwest::Error>, took: Duration) {
    let path = crate::terminal::Escaped(url.path());
    let ms = took.as_millis();
    match outcome {
        Ok(response) => tracing::info!("{service}: {method} {path} {} in {ms} ms", response.status().as_u16()),
        Err(e) => tracing::info!("{service}: {method} {path} no answer ({}) after {ms} ms", transport_reason(e)),
    }
}

/// A pacer for [`Http::send_paced`], and what one request costs it.
#[derive(Debug, Clone, Copy)]
pub struct Paced<'a> {
    /// The pacer.
    pub pacer: &'a Pacer,
    /// Operations one request counts for (1, or the items of a `$batch`).
    pub cost: u32,
    /// True for a `$batch` whose items the caller reports to the pacer itself: then only a refusal of the whole
    /// request is reported here.
    pub items_reported_by_caller: bool,
}

impl Paced<'_> {
    fn observe(&self, status: u16, headers: &HeaderMap, after: Option<Duration>, round_trip: Duration) {
        if self.items_reported_by_caller && (200..300).contains(&status) {
            return;
        }
        let mut seen = Observation { sent: self.cost, retry_after: after, round_trip, ..Observation::default() };
        if status == 429 {
            if headers.contains_key(THROTTLE_INFORMATION) {
                seen.throttled_quota = self.cost;
            } else {
                seen.throttled_other = self.cost;
            }
        }
        if let Some(change) = self.pacer.observe(seen) {
            tracing::info!("pacing reads: {change:?}");
        }
    }
}

/// The header in which Graph says why it throttled (e.g. `WriteLimitExceeded`).
pub const THROTTLE_INFORMATION: &str = "x-ms-throttle-information";

/// The future [`Http::send`]'s builder returns.
pub type BuildFuture = std::future::Ready<Result<RequestBuilder, HttpError>>;

fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // The innermost cause says the most (e.g. "Connection reset by peer"); it never holds headers.
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    format!("{kind}: {source}")
}

/// A tokio runtime on the calling thread alone, for reads that go one request at a time (a plan's): every
/// answer is received, parsed and dropped on the one thread, so its memory is reused rather than held by the
/// allocator for other threads.
pub fn runtime_on_this_thread() -> Result<tokio::runtime::Runtime, HttpError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HttpError::Setup(format!("cannot start the async runtime: {e}")))
}

/// A tokio runtime for the synchronous command layer to drive the async clients.
pub fn runtime() -> Result<tokio::runtime::Runtime, HttpError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| HttpError::Setup(format!("cannot start the async runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::http::HeaderMap as AxumHeaders;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use reqwest::StatusCode;

    #[test]
    fn endpoints_need_https_except_loopback() {
        assert!(parse_endpoint("https://graph.microsoft.com/v1.0/", "--graph-url").is_ok());
        assert_eq!(
            parse_endpoint("https://graph.microsoft.com/v1.0/", "x").unwrap().as_str(),
            "https://graph.microsoft.com/v1.0"
        );
        for ok in ["http://127.0.0.1:8080/v1.0", "http://127.3.4.5/", "http://[::1]:99/", "http://localhost:1/api"] {
            assert!(parse_endpoint(ok, "x").is_ok(), "{ok}");
        }
        for bad in [
            "http://graph.microsoft.com/v1.0",
            "http://10.0.0.1/",
            "http://localhost.evil.com/",
            "ftp://x.com/",
            "https://user:pw@x.com/",
            "https://x.com/?a=b",
            "not a url",
        ] {
            assert!(parse_endpoint(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn error_envelopes() {
        let graph = br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.",
            "innerError":{"request-id":"94fb3b52-452a-4535-a601-69e0a90e3aa2"}}}"#;
        let e = parse_error_body(graph);
        assert_eq!(e.code.as_deref(), Some("TooManyRequests"));
        assert_eq!(e.request_id.as_deref(), Some("94fb3b52-452a-4535-a601-69e0a90e3aa2"));
        let odata = br#"{"odata.error":{"code":"","message":{"lang":"en-US","value":"No list"}}}"#;
        assert_eq!(parse_error_body(odata).message.as_deref(), Some("No list"));
        let login = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret.\r\nTrace ID: x","trace_id":"t1"}"#;
        let e = parse_error_body(login);
        assert_eq!(e.code.as_deref(), Some("invalid_client"));
        assert_eq!(e.message.as_deref(), Some("AADSTS7000215: Invalid client secret."));
        assert_eq!(parse_error_body(b"<html>\n Bad gateway").message.as_deref(), Some("<html>"));
    }

    #[test]
    fn odata_literals_cannot_break_out() {
        assert_eq!(odata_string("o'brien@x.com"), "'o''brien@x.com'");
        assert_eq!(encode_query_value("a+b&c='x' #"), "a%2Bb%26c%3D%27x%27%20%23");
    }

    async fn serve(router: axum::Router) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[tokio::test]
    async fn retries_throttling_and_server_errors_then_succeeds() {
        let hits = Arc::new(AtomicU32::new(0));
        let ids = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (h, i) = (hits.clone(), ids.clone());
        let router = axum::Router::new().route(
            "/r",
            get(move |headers: AxumHeaders| {
                let (h, i) = (h.clone(), i.clone());
                async move {
                    let id = headers.get(CLIENT_REQUEST_ID).unwrap().to_str().unwrap().to_string();
                    i.lock().unwrap().push(id);
                    match h.fetch_add(1, Ordering::SeqCst) {
                        0 => (StatusCode::TOO_MANY_REQUESTS, [("Retry-After", "0.05")], "{}").into_response(),
                        1 => (StatusCode::SERVICE_UNAVAILABLE, "").into_response(),
                        2 => (StatusCode::BAD_GATEWAY, "").into_response(),
                        _ => (StatusCode::OK, "done").into_response(),
                    }
                }
            }),
        );
        let base = serve(router).await;
        let http = Http::new("Test", &HttpConfig::for_tests()).unwrap();
        let url = base.join("r").unwrap();
        let started = Instant::now();
        let sent = http
            .send(&Method::GET, &url, || std::future::ready(Ok(http.request(Method::GET, url.clone()))))
            .await
            .unwrap();
        assert_eq!(sent.response.status(), 200);
        assert_eq!(sent.attempts, 4);
        assert!(started.elapsed() >= Duration::from_millis(50), "Retry-After was honoured");
        let ids = ids.lock().unwrap();
        assert_eq!(ids.len(), 4);
        assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).unwrap().get_version_num() == 4));
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_reports_the_error() {
        let router = axum::Router::new().route(
            "/r",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("Retry-After", "0.01"), ("request-id", "rid-1")],
                    r#"{"error":{"code":"TooManyRequests","message":"Please retry again later."}}"#,
                )
            }),
        );
        let base = serve(router).await;
        let http = Http::new("Test", &HttpConfig::for_tests()).unwrap();
        let url = base.join("r").unwrap();
        let sent = http
            .send(&Method::GET, &url, || std::future::ready(Ok(http.request(Method::GET, url.clone()))))
            .await
            .unwrap();
        assert_eq!(sent.attempts, 4);
        let err = ServiceError::from_response("Test", &Method::GET, sent.response, &sent.client_request_id).await;
        let text = err.to_string();
        assert!(text.contains("429 TooManyRequests: Please retry again later."), "{text}");
        assert!(text.contains("request-id rid-1"), "{text}");
        assert_eq!(err.retry_after, Some(Duration::from_millis(10)));
    }

    #[tokio::test]
    async fn connection_failures_are_retried_then_reported() {
        // A port nobody listens on: bind, note the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        let http = Http::new("Test", &HttpConfig::for_tests()).unwrap();
        let err = http
            .send(&Method::GET, &url, || std::future::ready(Ok(http.request(Method::GET, url.clone()))))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("after 4 attempt(s)"), "{text}");
        assert!(text.contains("GET /x"), "{text}");
    }

    #[test]
    fn the_sign_in_endpoints_error_is_its_error_and_description_only() {
        let echoed = b"client_id=abc&client_secret=s3cret&grant_type=client_credentials";
        assert_eq!(parse_sign_in_error(echoed), ErrorBody::default());
        let long = "AADSTS7000215: Invalid client secret provided. ".repeat(20);
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("{long}\r\nTrace ID: x"),
            "trace_id": "t-1",
            "request": "client_secret=s3cret",
        });
        let parsed = parse_sign_in_error(body.to_string().as_bytes());
        assert_eq!(parsed.code.as_deref(), Some("invalid_client"));
        let message = parsed.message.unwrap();
        assert!(message.starts_with("AADSTS7000215") && message.ends_with('…'), "{message}");
        assert_eq!("invalid_client".chars().count() + message.chars().count(), SIGN_IN_ERROR_MAX);
        assert_eq!(parsed.request_id.as_deref(), Some("t-1"));
    }
}
