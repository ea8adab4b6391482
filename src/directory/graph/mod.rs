//! Microsoft Graph: authentication, retries, paging, `$batch`, groups and users.
//!
//! [`GraphClient`] is the only way writeback talks to Graph. It returns the directory types of
//! [`crate::directory`] (and [`GraphGroup`], [`BatchItemResponse`]); raw JSON never leaves this module.
//! All calls are async; the command layer drives them with [`crate::http::runtime`].
//!
//! Requests go through [`crate::http::Http`] (retries, `client-request-id`) and carry a bearer token from
//! [`TokenSource`] (the credential chain of [`crate::signin`]); a 401 makes the client fetch a new token and try
//! once more. Reads (member pages, user lookups, everything but the write `$batch`) share one [`Pacer`]: once
//! Graph throttles them, they go out at the rate it accepts. The write `$batch` is sent once per call: `apply`'s
//! executor paces and retries its items.

mod batch;
mod by_id;
mod groups;
mod users;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::{Method, Url};
use serde_json::Value;

use crate::http::{base_str, same_origin, Http, HttpConfig, HttpError, Paced, Sent, ServiceError};
use crate::pacing::Pacer;
use crate::plan::precondition::sha256_hex;
use crate::plan::{InputRecord, InputRole};

use crate::signin::{Chain, Endpoints, Need, SignInError, SignInSettings, TokenClaims};
pub use crate::signin::{Secret, TokenSource};
pub use batch::{BatchItem, BatchItemResponse, BatchReply, GraphErrorBody, MAX_BATCH_ITEMS};
pub use by_id::{DeletedItem, IDS_PER_FILTER};
pub use groups::GraphGroup;
pub use users::{scan_is_cheaper, USER_SELECT};

/// What can go wrong talking to Graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The HTTP layer failed (no answer, bad endpoint), or Graph answered with an error status.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Graph answered with an error status.
    #[error("{0}")]
    Service(Box<ServiceError>),
    /// Signing in failed.
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// Endpoints are missing or malformed.
    #[error("{location}: {message}")]
    Config {
        /// The variable, flag or file.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Graph answered, but not as documented.
    #[error("Microsoft Graph: unexpected answer to {what}: {reason}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// No group has that id or name.
    #[error("{0}")]
    GroupNotFound(String),
    /// Several groups have that name.
    #[error("{0}")]
    AmbiguousGroup(String),
    /// The app lacks a permission it needs.
    #[error("{0}")]
    MissingPermission(String),
    /// A caller passed something the API cannot take (more than 20 batch items, duplicate ids…).
    #[error("{0}")]
    InvalidRequest(String),
}

impl From<GraphError> for crate::Error {
    fn from(e: GraphError) -> Self {
        match e {
            GraphError::Http(h) => h.into(),
            GraphError::SignIn(e) => e.into(),
            GraphError::Config { location, message } => crate::Error::Input { location, message },
            GraphError::GroupNotFound(message) => crate::Error::GroupNotManageable(message),
            GraphError::AmbiguousGroup(message) => crate::Error::Usage(message),
            GraphError::InvalidRequest(message) => crate::Error::Internal(message),
            other => crate::Error::Service(other.to_string()),
        }
    }
}

/// Where Graph and the sign-in endpoint are, and how to talk to them.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Graph's base URL, the sign-in host and the resource tokens are asked for.
    pub endpoints: Endpoints,
    /// Timeouts and retries.
    pub http: HttpConfig,
}

impl GraphConfig {
    /// The endpoints of `settings` ([`Endpoints::resolve`], reading the process environment); retries from the
    /// environment ([`HttpConfig::from_env`]).
    pub fn resolve(settings: &SignInSettings) -> Result<GraphConfig, GraphError> {
        Ok(GraphConfig {
            endpoints: Endpoints::resolve(settings, &crate::signin::ProcessEnv)?,
            http: HttpConfig::from_env()?,
        })
    }
}

/// How many requests a [`GraphClient`] sent, by kind. Every attempt counts (a retried request counts twice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Every request to Graph (not counting the sign-in endpoint).
    pub total: u64,
    /// `POST /$batch` requests (of any purpose).
    pub batch: u64,
    /// Pages of `GET /groups/{id}/members`.
    pub member_pages: u64,
    /// Requests made to resolve addresses to users: lookup batches, `/users` pages and `/users/$count`.
    pub lookups: u64,
    /// Requests to the sign-in endpoint.
    pub tokens: u64,
}

#[derive(Debug, Default)]
struct Counters {
    total: AtomicU64,
    batch: AtomicU64,
    member_pages: AtomicU64,
    lookups: AtomicU64,
}

/// What a request is for, for [`RequestCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    Batch,
    LookupBatch,
    MemberPage,
    Lookup,
}

/// What a 403 to a request means: a permission writeback knows ([`Need`]), or a hint in words.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hint403 {
    Need(Need),
    Text(&'static str),
}

impl From<Need> for Hint403 {
    fn from(need: Need) -> Self {
        Hint403::Need(need)
    }
}

impl From<&'static str> for Hint403 {
    fn from(text: &'static str) -> Self {
        Hint403::Text(text)
    }
}

/// A Microsoft Graph client. Cheap to clone; clones share the token cache and the request counters.
#[derive(Debug, Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: Http,
    base: Url,
    tokens: TokenSource,
    counters: Counters,
    tenant: tokio::sync::OnceCell<String>,
    reads: Pacer,
    clock: std::sync::Mutex<Option<ClockReading>>,
}

/// Graph's clock against ours: the `Date` header of Graph's latest answer, and our clock when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// Graph's `Date` (whole seconds).
    pub graph: chrono::DateTime<chrono::Utc>,
    /// Our clock when the answer arrived.
    pub local: chrono::DateTime<chrono::Utc>,
}

/// How far our clock may be from Graph's before `apply` and `doctor` warn.
pub const CLOCK_TOLERANCE: chrono::Duration = chrono::Duration::minutes(2);

impl ClockReading {
    /// How far our clock is ahead of Graph's (negative: behind), give or take the second `Date` rounds to.
    pub fn skew(&self) -> chrono::Duration {
        self.local - self.graph
    }

    /// "this machine's clock is 75s ahead of Microsoft Graph's".
    pub fn describe(&self) -> String {
        let seconds = self.skew().num_seconds();
        let how = if seconds >= 0 { "ahead of" } else { "behind" };
        format!("this machine's clock is {}s {how} Microsoft Graph's", seconds.abs())
    }

    /// True when the clocks are more than [`CLOCK_TOLERANCE`] apart.
    pub fn is_off(&self) -> bool {
        self.skew().abs() > CLOCK_TOLERANCE
    }

    /// The warning when the clocks are more than [`CLOCK_TOLERANCE`] apart: plan expiry, plan times and key
    /// validity are judged by this machine's clock.
    pub fn warning(&self) -> Option<String> {
        self.is_off().then(|| {
            format!(
                "warning: {}: plan expiry and key validity are judged by this clock. Set it right (turn on time                  synchronisation, NTP)",
                self.describe()
            )
        })
    }
}

impl GraphClient {
    /// A client for `config`, signing in with the first kind of `chain` that works.
    pub fn new(config: GraphConfig, chain: Chain) -> Result<GraphClient, GraphError> {
        let http = Http::new("Microsoft Graph", &config.http)?;
        let login_http = Http::new(crate::http::SIGN_IN, &config.http)?;
        let base = config.endpoints.graph_url.clone();
        let tokens = TokenSource::new(login_http, chain, config.endpoints);
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                base,
                tokens,
                counters: Counters::default(),
                tenant: tokio::sync::OnceCell::new(),
                clock: std::sync::Mutex::new(None),
                reads: Pacer::new(),
            }),
        })
    }

    /// A client for the settings of the flags, environment and config: endpoints as [`GraphConfig::resolve`], the
    /// credential chain as [`Chain::from_env`]. Nothing is sent yet.
    pub fn connect(settings: &SignInSettings) -> Result<GraphClient, GraphError> {
        GraphClient::new(GraphConfig::resolve(settings)?, Chain::from_env(settings.auth)?)
    }

    /// The token source (the kind in use, the token's claims).
    pub fn tokens(&self) -> &TokenSource {
        &self.inner.tokens
    }

    /// The claims of the token in use, once one was obtained (`None` before, or for an opaque token).
    pub fn claims(&self) -> Option<TokenClaims> {
        self.inner.tokens.current().and_then(|c| c.claims)
    }

    /// Who the token in use stands for, once one was obtained (see [`TokenClaims::actor`]).
    pub fn entra_actor(&self) -> Option<crate::identity::EntraActor> {
        let current = self.inner.tokens.current()?;
        current.claims?.actor(current.kind)
    }

    /// Why Graph refused `need` with 403, naming the missing permission or directory role.
    pub fn explain_forbidden(&self, need: Need) -> String {
        crate::signin::claims::explain_forbidden(self.claims().as_ref(), need)
    }

    /// Graph's base URL.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The retry policy, for callers that retry `$batch` items themselves.
    pub fn retry_policy(&self) -> &crate::http::RetryPolicy {
        self.inner.http.retry_policy()
    }

    /// The pacer of the reads (member pages, user lookups).
    pub fn read_pacer(&self) -> &Pacer {
        &self.inner.reads
    }

    /// Graph's clock against ours, from the `Date` header of Graph's latest answer (`None` before the first).
    pub fn clock(&self) -> Option<ClockReading> {
        self.inner.clock.lock().ok().and_then(|c| *c)
    }

    /// Sends one small read (`GET /organization?$select=id`) whatever its answer, so that [`GraphClient::clock`]
    /// has a reading; for `doctor`, when nothing else was read. An error only when no answer came.
    pub async fn read_clock(&self) -> Result<Option<ClockReading>, GraphError> {
        let url = self.url("/organization?$select=id")?;
        self.execute(Method::GET, &url, Kind::Other, &[], None).await?;
        Ok(self.clock())
    }

    fn note_clock(&self, response: &reqwest::Response) {
        let date = response.headers().get("date").and_then(|d| d.to_str().ok());
        let Some(graph) = date.and_then(|d| httpdate::parse_http_date(d.trim()).ok()) else { return };
        let reading = ClockReading { graph: graph.into(), local: crate::http::wall_clock() };
        if let Ok(mut clock) = self.inner.clock.lock() {
            *clock = Some(reading);
        }
    }

    /// The requests sent so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.inner.counters;
        RequestCounts {
            total: c.total.load(Ordering::Relaxed),
            batch: c.batch.load(Ordering::Relaxed),
            member_pages: c.member_pages.load(Ordering::Relaxed),
            lookups: c.lookups.load(Ordering::Relaxed),
            tokens: self.inner.tokens.requests(),
        }
    }

    /// The tenant id (a GUID): the access token's `tid` claim, else `AZURE_TENANT_ID` when it is a GUID, else
    /// `GET /organization`. Asked once, then cached.
    pub async fn tenant_id(&self) -> Result<String, GraphError> {
        self.inner
            .tenant
            .get_or_try_init(|| async {
                let token = self.inner.tokens.token().await?;
                if let Some(tid) = TokenClaims::parse(token.expose()).and_then(|c| c.tenant_id) {
                    return Ok(tid);
                }
                if let Some(t) = self.inner.tokens.configured_tenant() {
                    if let Ok(id) = crate::identity::ObjectId::parse(&t) {
                        return Ok(id.to_string());
                    }
                }
                let url = self.url("/organization?$select=id")?;
                let body = self
                    .get_json(url, Kind::Other, &[], "needs Organization.Read.All or a token with a 'tid' claim")
                    .await?;
                body.get("value")
                    .and_then(Value::as_array)
                    .and_then(|v| v.first())
                    .and_then(|o| o.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| GraphError::Protocol {
                        what: "GET /organization".into(),
                        reason: "no organization id in the answer".into(),
                    })
            })
            .await
            .cloned()
    }

    /// `{base}{path_and_query}` as a URL. `path_and_query` starts with `/` and is already encoded.
    fn url(&self, path_and_query: &str) -> Result<Url, GraphError> {
        Url::parse(&format!("{}{path_and_query}", base_str(&self.inner.base))).map_err(|e| GraphError::Protocol {
            what: path_and_query.to_string(),
            reason: format!("cannot build the URL: {e}"),
        })
    }

    /// A `@odata.nextLink`, taken whole, after checking it points at Graph (a token never goes elsewhere).
    fn next_link(&self, page: &Value, what: &str) -> Result<Option<Url>, GraphError> {
        let Some(link) = page.get("@odata.nextLink").and_then(Value::as_str) else { return Ok(None) };
        let url = Url::parse(link).map_err(|e| GraphError::Protocol {
            what: what.to_string(),
            reason: format!("@odata.nextLink is not a URL ({e})"),
        })?;
        if !same_origin(&url, &self.inner.base) {
            return Err(GraphError::Protocol {
                what: what.to_string(),
                reason: format!("@odata.nextLink points at another server ({})", url.origin().ascii_serialization()),
            });
        }
        Ok(Some(url))
    }

    fn count(&self, kind: Kind) {
        let c = &self.inner.counters;
        c.total.fetch_add(1, Ordering::Relaxed);
        match kind {
            Kind::Batch => {
                c.batch.fetch_add(1, Ordering::Relaxed);
            }
            Kind::LookupBatch => {
                c.batch.fetch_add(1, Ordering::Relaxed);
                c.lookups.fetch_add(1, Ordering::Relaxed);
            }
            Kind::MemberPage => {
                c.member_pages.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Lookup => {
                c.lookups.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Other => {}
        }
    }

    /// Sends a request with a bearer token; after a 401 gets a new token and tries once more. Returns the
    /// response whatever its status. Reads are retried as [`Http::send`] does and paced by the read pacer (a
    /// lookup `$batch` counts one per item; its items' 429s are reported by the caller); the write `$batch`
    /// (`Kind::Batch`) is sent once, for the executor retries its items itself.
    async fn execute(
        &self,
        method: Method,
        url: &Url,
        kind: Kind,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Sent, GraphError> {
        let mut refreshed = false;
        let items = body.and_then(|b| b.get("requests")).and_then(Value::as_array).map_or(1, |r| r.len().max(1));
        loop {
            let token = self.inner.tokens.token().await?;
            let build = || {
                self.count(kind);
                let mut request = self.inner.http.request(method.clone(), url.clone()).bearer_auth(token.expose());
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                if let Some(body) = body {
                    request = request.json(body);
                }
                std::future::ready(Ok(request))
            };
            let http = &self.inner.http;
            let sent = match kind {
                Kind::Batch => http.send_once(&method, url, build).await?,
                _ => {
                    let paced = Paced {
                        pacer: &self.inner.reads,
                        cost: u32::try_from(items).unwrap_or(u32::MAX),
                        items_reported_by_caller: kind == Kind::LookupBatch,
                    };
                    http.send_paced(paced, &method, url, build).await?
                }
            };
            self.note_clock(&sent.response);
            if sent.response.status() == 401 && !refreshed && self.inner.tokens.invalidate().await {
                refreshed = true;
                tracing::info!("Microsoft Graph: {method} {} got 401; getting a new token", url.path());
                continue;
            }
            return Ok(sent);
        }
    }

    /// Turns an error response into a [`GraphError`], with `hint_403` for 403 and a 401 hint.
    async fn fail(&self, method: &Method, sent: Sent, hint_403: impl Into<Hint403>) -> GraphError {
        let err = ServiceError::from_response("Microsoft Graph", method, sent.response, &sent.client_request_id).await;
        let err = match err.status {
            401 if !self.inner.tokens.can_refresh() => {
                err.with_hint("WRITEBACK_ACCESS_TOKEN was refused; get a new token for Microsoft Graph")
            }
            401 => err.with_hint("the token was refused twice; check the app registration and the tenant"),
            403 => match hint_403.into() {
                Hint403::Need(need) => {
                    let hint = self.explain_forbidden(need);
                    err.with_hint(hint)
                }
                Hint403::Text(text) => err.with_hint(format!("The token {text} (see docs/permissions.md)")),
            },
            _ => err,
        };
        GraphError::Service(Box::new(err))
    }

    /// GETs `url` and parses the JSON body; error statuses become [`GraphError::Service`].
    async fn get_json(
        &self,
        url: Url,
        kind: Kind,
        headers: &[(&str, &str)],
        hint_403: impl Into<Hint403>,
    ) -> Result<Value, GraphError> {
        let sent = self.execute(Method::GET, &url, kind, headers, None).await?;
        if !sent.response.status().is_success() {
            return Err(self.fail(&Method::GET, sent, hint_403).await);
        }
        read_json(sent, &url).await
    }
}

impl GraphClient {
    /// The plan's record of a member list read from Graph: `Microsoft Graph <url> group '<name>' (<id>)`, and
    /// the SHA-256 of [`canonical_members`].
    pub fn members_input(&self, group: &GraphGroup, members: &[crate::directory::GroupMember]) -> InputRecord {
        self.members_input_of(group, members.len(), sha256_hex(&canonical_members(members)))
    }

    /// [`GraphClient::members_input`] for `count` members whose [`canonical_members`] bytes hash to `sha256` (hex).
    pub fn members_input_of(&self, group: &GraphGroup, count: usize, sha256: String) -> InputRecord {
        InputRecord {
            role: InputRole::Members,
            description: format!(
                "Microsoft Graph {} group '{}' ({}): {count} direct members",
                base_str(&self.inner.base),
                group.display_name,
                group.id,
            ),
            sha256,
        }
    }

    /// The plan's record of the users resolved from Graph for `addresses` addresses, and the SHA-256 of
    /// [`canonical_users`].
    pub fn users_input(&self, addresses: usize, users: &[crate::directory::DirectoryUser]) -> InputRecord {
        self.users_input_of(addresses, users.len(), sha256_hex(&canonical_users(users)))
    }

    /// [`GraphClient::users_input`] for `count` users whose [`canonical_users`] bytes hash to `sha256` (hex).
    pub fn users_input_of(&self, addresses: usize, count: usize, sha256: String) -> InputRecord {
        InputRecord {
            role: InputRole::Users,
            description: format!(
                "Microsoft Graph {}: {count} users matching {addresses} list addresses",
                base_str(&self.inner.base),
            ),
            sha256,
        }
    }
}

/// The bytes a Graph member list's SHA-256 is taken over: per member, sorted by object id, the JSON array
/// `[id, kind, userPrincipalName, displayName, mail]` and `\n` ([`canonical_member_row`]).
pub fn canonical_members(members: &[crate::directory::GroupMember]) -> Vec<u8> {
    let mut sorted: Vec<&crate::directory::GroupMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::new();
    for m in sorted {
        canonical_member_row(&mut out, &m.as_ref());
    }
    out
}

/// Appends one member's line of [`canonical_members`] to `out`.
pub fn canonical_member_row(out: &mut Vec<u8>, m: &crate::directory::MemberRef<'_>) {
    let row = (&m.id, m.kind.label(), m.upn, m.display_name, m.mail);
    // Writing JSON into a Vec cannot fail: every field is a string, null or a plain value.
    let _ = serde_json::to_writer(&mut *out, &row);
    out.push(b'\n');
}

/// The bytes a resolved user set's SHA-256 is taken over: per user, sorted by object id, the JSON array
/// `[id, userPrincipalName, displayName, mail, userType, accountEnabled, proxyAddresses]` and `\n`
/// ([`canonical_user_row`]).
pub fn canonical_users(users: &[crate::directory::DirectoryUser]) -> Vec<u8> {
    let mut sorted: Vec<&crate::directory::DirectoryUser> = users.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = Vec::new();
    for u in sorted {
        let mut proxies = Vec::new();
        let _ = serde_json::to_writer(&mut proxies, &u.proxy_addresses);
        let fields = CanonicalUser {
            id: &u.id,
            upn: &u.upn,
            display_name: u.display_name.as_deref(),
            mail: u.mail.as_deref(),
            user_type: u.user_type,
            account_enabled: u.account_enabled,
        };
        canonical_user_row(&mut out, &fields, &proxies);
    }
    out
}

/// One user's fields for [`canonical_user_row`], borrowed.
pub struct CanonicalUser<'a> {
    /// Object id.
    pub id: &'a crate::identity::ObjectId,
    /// userPrincipalName.
    pub upn: &'a str,
    /// displayName.
    pub display_name: Option<&'a str>,
    /// mail.
    pub mail: Option<&'a str>,
    /// userType.
    pub user_type: crate::directory::UserType,
    /// accountEnabled.
    pub account_enabled: Option<bool>,
}

/// Appends one user's line of [`canonical_users`] to `out`, with `proxies_json` the user's proxy addresses as
/// written by `serde_json::to_writer` (a compact JSON array).
pub fn canonical_user_row(out: &mut Vec<u8>, u: &CanonicalUser<'_>, proxies_json: &[u8]) {
    let head = (u.id, u.upn, u.display_name, u.mail, u.user_type, u.account_enabled);
    let _ = serde_json::to_writer(&mut *out, &head);
    // The six fields' array without its `]`, then the seventh: the same bytes as a seven-element array.
    out.pop();
    out.push(b',');
    out.extend_from_slice(proxies_json);
    out.extend_from_slice(b"]\n");
}

async fn read_json(sent: Sent, url: &Url) -> Result<Value, GraphError> {
    let bytes = sent.response.bytes().await.map_err(|e| GraphError::Protocol {
        what: format!("GET {}", url.path()),
        reason: format!("reading the answer failed: {e}"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| GraphError::Protocol {
        what: format!("GET {}", url.path()),
        reason: format!("the answer is not JSON ({e})"),
    })
}

/// A string property of a Graph object, `None` when absent or null.
fn str_field(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A tiny in-test Graph: just enough routes, on 127.0.0.1:0, to exercise the client.
    use super::*;
    use crate::signin::Method;

    pub async fn bind() -> (tokio::net::TcpListener, Url) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, Url::parse(&format!("http://{addr}/v1.0")).unwrap())
    }

    pub fn spawn(listener: tokio::net::TcpListener, router: axum::Router) {
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    }

    pub async fn serve(router: axum::Router) -> Url {
        let (listener, base) = bind().await;
        spawn(listener, router);
        base
    }

    pub fn config(base: &Url) -> GraphConfig {
        let login = Url::parse(&base.origin().ascii_serialization()).unwrap();
        let endpoints = Endpoints {
            cloud: crate::signin::Cloud::Public,
            login_url: login,
            graph_url: base.clone(),
            resource: "https://graph.microsoft.com".into(),
        };
        GraphConfig { endpoints, http: HttpConfig::for_tests() }
    }

    pub fn client(base: &Url) -> GraphClient {
        let chain = Chain::single(crate::signin::AuthKind::Token, Method::Token(Secret::new("test-token")));
        GraphClient::new(config(base), chain).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{bind, config, spawn};
    use super::*;
    use crate::signin::{AuthKind, Method};
    use axum::extract::Form;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Json;
    use base64::Engine;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// The canonical rows, written field by field, are the bytes of the JSON arrays they stand for (the plan's
    /// input hashes from Graph were, and must stay, taken over those).
    #[test]
    fn canonical_rows_are_the_json_arrays() {
        use crate::directory::{DirectoryUser, GroupMember, MemberKind, UserType};
        let id = crate::identity::ObjectId::parse("1b4e28ba-2fa1-11d2-883f-0016d3cca427").unwrap();
        let members = [
            GroupMember {
                id: id.clone(),
                kind: MemberKind::User,
                upn: Some("a\"b@x.com".into()),
                display_name: Some("Åsa \\ Ö\u{1}".into()),
                mail: None,
                source_line: None,
            },
            GroupMember {
                id: id.clone(),
                kind: MemberKind::Other("device".into()),
                upn: None,
                display_name: None,
                mail: Some("m@x.com".into()),
                source_line: None,
            },
        ];
        let mut expected = Vec::new();
        for m in &members {
            let row = serde_json::json!([m.id, m.kind.label(), m.upn, m.display_name, m.mail]);
            expected.extend_from_slice(row.to_string().as_bytes());
            expected.push(b'\n');
        }
        assert_eq!(canonical_members(&members), expected);

        let users = [
            DirectoryUser {
                id: id.clone(),
                upn: "u\"1@x.com".into(),
                display_name: None,
                mail: Some("m@x.com".into()),
                user_type: UserType::Guest,
                account_enabled: Some(false),
                proxy_addresses: vec!["SMTP:u@x.com".into(), "x500:/o=\"q\"".into()],
            },
            DirectoryUser {
                id,
                upn: "v@x.com".into(),
                display_name: Some("V \u{7f}".into()),
                mail: None,
                user_type: UserType::Unknown,
                account_enabled: None,
                proxy_addresses: vec![],
            },
        ];
        let mut expected = Vec::new();
        for u in &users {
            let row = serde_json::json!([
                u.id,
                u.upn,
                u.display_name,
                u.mail,
                u.user_type,
                u.account_enabled,
                u.proxy_addresses
            ]);
            expected.extend_from_slice(row.to_string().as_bytes());
            expected.push(b'\n');
        }
        assert_eq!(canonical_users(&users), expected);
    }

    fn jwt(tid: &str, n: u32) -> String {
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig{n}", b64(r#"{"alg":"RS256"}"#.into()), b64(format!(r#"{{"tid":"{tid}","n":{n}}}"#)))
    }

    #[tokio::test]
    async fn client_secret_sign_in_refresh_after_401_and_tenant_from_token() {
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let forms = Arc::new(Mutex::new(Vec::<HashMap<String, String>>::new()));
        let f = forms.clone();
        let (listener, base) = bind().await;
        let router = axum::Router::new()
            .route(
                "/contoso.example/oauth2/v2.0/token",
                post(move |Form(form): Form<HashMap<String, String>>| {
                    let f = f.clone();
                    async move {
                        let n = {
                            let mut f = f.lock().unwrap();
                            f.push(form);
                            f.len() as u32
                        };
                        Json(serde_json::json!({"token_type": "Bearer", "expires_in": 3599, "access_token": jwt(tid, n)}))
                    }
                }),
            )
            .route(
                "/v1.0/users/{id}",
                get(move |headers: axum::http::HeaderMap| async move {
                    let auth = headers.get("authorization").unwrap().to_str().unwrap().to_string();
                    if auth.ends_with(".sig1") {
                        // The first token is refused, as an expired or revoked one would be.
                        return (axum::http::StatusCode::UNAUTHORIZED, "{}").into_response();
                    }
                    (axum::http::StatusCode::NOT_FOUND, "{}").into_response()
                }),
            );
        spawn(listener, router);
        let credential = Method::ClientSecret {
            tenant: "contoso.example".into(),
            client_id: "app-id".into(),
            secret: Secret::new("very-secret"),
        };
        let client = GraphClient::new(config(&base), Chain::single(AuthKind::Secret, credential)).unwrap();
        assert!(!format!("{client:?}").contains("very-secret"));
        let id = crate::identity::ObjectId::parse("11111111-2222-3333-4444-555555555555").unwrap();
        assert_eq!(client.get_user(&id).await.unwrap(), None);
        assert_eq!(client.counts().tokens, 2, "one new token after the 401");
        assert_eq!(client.counts().total, 2);
        assert_eq!(client.tenant_id().await.unwrap(), tid);
        let forms = forms.lock().unwrap();
        assert_eq!(forms[0]["grant_type"], "client_credentials");
        assert_eq!(forms[0]["client_id"], "app-id");
        assert_eq!(forms[0]["client_secret"], "very-secret");
        assert_eq!(forms[0]["scope"], "https://graph.microsoft.com/.default", "the resource, not the test URL");
    }

    #[tokio::test]
    async fn sign_in_errors_name_the_variables() {
        let (listener, base) = bind().await;
        let router = axum::Router::new().route(
            "/t/oauth2/v2.0/token",
            post(|| async {
                (
                    axum::http::StatusCode::UNAUTHORIZED,
                    Json(serde_json::json!({"error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.", "trace_id": "tr-1"})),
                )
            }),
        );
        spawn(listener, router);
        let credential =
            Method::ClientSecret { tenant: "t".into(), client_id: "a".into(), secret: Secret::new("wrong-secret") };
        let client = GraphClient::new(config(&base), Chain::single(AuthKind::Secret, credential)).unwrap();
        let err = client.tenant_id().await.unwrap_err().to_string();
        assert!(err.contains("AADSTS7000215") && err.contains("AZURE_CLIENT_ID") && err.contains("tr-1"), "{err}");
        assert!(!err.contains("wrong-secret"));
    }

    #[tokio::test]
    async fn a_read_waits_for_the_retry_after_another_read_was_given() {
        // The first read is throttled for 0.3 s; the client gives up on it at once (one attempt). The next read,
        // a different request, must still not reach Graph before those 0.3 s are over.
        let arrivals = Arc::new(Mutex::new(Vec::<std::time::Instant>::new()));
        let a = arrivals.clone();
        let (listener, base) = bind().await;
        let router = axum::Router::new().route(
            "/v1.0/users/{id}",
            get(move || {
                let a = a.clone();
                async move {
                    let first = {
                        let mut a = a.lock().unwrap();
                        a.push(std::time::Instant::now());
                        a.len() == 1
                    };
                    if first {
                        let headers =
                            [("Retry-After", "0.3"), ("x-ms-throttle-information", "ResourceUnitLimitExceeded")];
                        return (axum::http::StatusCode::TOO_MANY_REQUESTS, headers, "{}").into_response();
                    }
                    (axum::http::StatusCode::NOT_FOUND, "{}").into_response()
                }
            }),
        );
        spawn(listener, router);
        let mut config = config(&base);
        config.http.retry.max_attempts = 1;
        let chain = Chain::single(AuthKind::Token, Method::Token(Secret::new("t")));
        let client = GraphClient::new(config, chain).unwrap();
        let id = crate::identity::ObjectId::parse("11111111-2222-3333-4444-555555555555").unwrap();
        assert!(client.get_user(&id).await.is_err(), "the throttled read is not retried (one attempt)");
        assert_eq!(client.get_user(&id).await.unwrap(), None);
        let arrivals = arrivals.lock().unwrap();
        assert_eq!(arrivals.len(), 2);
        let gap = arrivals[1] - arrivals[0];
        assert!(gap >= Duration::from_millis(300), "the second read came {gap:?} after the first");
    }
}
