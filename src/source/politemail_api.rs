//! The PoliteMail OData API: lists and their contacts.
//!
//! The base URL is `POLITEMAIL_URL`: `https://SERVER/api/odata` on PoliteMail 5, `https://SERVER/ssv3/odata` on
//! 4.x. Sign-in is HTTP Basic, either `POLITEMAIL_USER` + `POLITEMAIL_PASSWORD`, or a personal access token in
//! `POLITEMAIL_TOKEN`. PoliteMail's connector README puts a token in both the user name and the password;
//! other documentation leaves the user name empty. writeback tries the first and, on 401, the second, and
//! keeps whichever works.
//!
//! Requests share the retry rules of [`crate::http`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use reqwest::{Method, Url};
use serde_json::Value;

use crate::http::{
    base_str, encode_query_value, odata_string, same_origin, Http, HttpConfig, HttpError, Sent, ServiceError,
};
use crate::plan::{InputRecord, InputRole};
use crate::signin::Secret;
use crate::source::{Contact, ContactList};
use sha2::{Digest, Sha256};

/// What can go wrong reading PoliteMail.
#[derive(Debug, thiserror::Error)]
pub enum PoliteMailError {
    /// The HTTP layer failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// PoliteMail answered with an error status.
    #[error("{0}")]
    Service(Box<ServiceError>),
    /// Settings are missing or malformed.
    #[error("{location}: {message}")]
    Config {
        /// The variable or flag.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// No list has that name or id.
    #[error("{0}")]
    ListNotFound(String),
    /// Several lists have that name.
    #[error("{0}")]
    AmbiguousList(String),
    /// PoliteMail answered, but not in the documented shape.
    #[error("PoliteMail: unexpected answer to {what}: {reason}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<PoliteMailError> for crate::Error {
    fn from(e: PoliteMailError) -> Self {
        match e {
            PoliteMailError::Http(h) => h.into(),
            PoliteMailError::Config { location, message } => crate::Error::Input { location, message },
            PoliteMailError::ListNotFound(message) => crate::Error::Input { location: "--list".into(), message },
            PoliteMailError::AmbiguousList(message) => crate::Error::Usage(message),
            other => crate::Error::Service(other.to_string()),
        }
    }
}

/// How to sign in to PoliteMail.
#[derive(Clone)]
pub enum PoliteMailAuth {
    /// `POLITEMAIL_USER` + `POLITEMAIL_PASSWORD`.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// A personal access token (`POLITEMAIL_TOKEN`).
    Token(Secret),
}

impl std::fmt::Debug for PoliteMailAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoliteMailAuth::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: redacted }}"),
            PoliteMailAuth::Token(_) => f.write_str("Token(redacted)"),
        }
    }
}

/// The settings of a [`PoliteMailClient`].
#[derive(Debug, Clone)]
pub struct PoliteMailConfig {
    /// The OData base, e.g. `https://pm.contoso.com/api/odata`.
    pub base_url: Url,
    /// Credentials.
    pub auth: PoliteMailAuth,
    /// Timeouts and retries.
    pub http: HttpConfig,
}

impl PoliteMailConfig {
    /// Reads `POLITEMAIL_URL` and the credentials (`POLITEMAIL_TOKEN`, which wins when set, else
    /// `POLITEMAIL_USER` + `POLITEMAIL_PASSWORD`) from the process environment.
    pub fn from_env() -> Result<PoliteMailConfig, PoliteMailError> {
        PoliteMailConfig::from_lookup(|name| std::env::var(name).ok(), HttpConfig::from_env()?)
    }

    /// As [`PoliteMailConfig::from_env`], reading variables through `get`.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        http: HttpConfig,
    ) -> Result<PoliteMailConfig, PoliteMailError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let raw = get("POLITEMAIL_URL").ok_or_else(|| PoliteMailError::Config {
            location: "POLITEMAIL_URL".into(),
            message: "not set; give the OData base, e.g. https://pm.contoso.com/api/odata (PoliteMail 5) or \
                      https://pm.contoso.com/ssv3/odata (4.x)"
                .into(),
        })?;
        let base_url = crate::http::parse_endpoint(&raw, "POLITEMAIL_URL")?;
        let auth = if let Some(token) = get("POLITEMAIL_TOKEN") {
            PoliteMailAuth::Token(Secret::new(token.trim()))
        } else {
            match (get("POLITEMAIL_USER"), get("POLITEMAIL_PASSWORD")) {
                (Some(user), Some(password)) => PoliteMailAuth::Basic { user, password: Secret::new(password) },
                _ => {
                    return Err(PoliteMailError::Config {
                        location: "environment".into(),
                        message: "no PoliteMail credentials: set POLITEMAIL_TOKEN (a personal access token), or \
                                  POLITEMAIL_USER and POLITEMAIL_PASSWORD"
                            .into(),
                    })
                }
            }
        };
        Ok(PoliteMailConfig { base_url, auth, http })
    }
}

/// A PoliteMail list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoliteMailList {
    /// `ID`.
    pub id: i64,
    /// `Name`.
    pub name: String,
}

/// A client of PoliteMail's OData API.
#[derive(Debug)]
pub struct PoliteMailClient {
    http: Http,
    base: Url,
    auth: PoliteMailAuth,
    /// For a token: 0 = in both user name and password, 1 = as the password with an empty user name.
    placement: AtomicU8,
    requests: AtomicU64,
}

impl PoliteMailClient {
    /// A client for `config`.
    pub fn new(config: PoliteMailConfig) -> Result<PoliteMailClient, PoliteMailError> {
        Ok(PoliteMailClient {
            http: Http::new("PoliteMail", &config.http)?,
            base: config.base_url,
            auth: config.auth,
            placement: AtomicU8::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// A client from the environment ([`PoliteMailConfig::from_env`]).
    pub fn from_env() -> Result<PoliteMailClient, PoliteMailError> {
        PoliteMailClient::new(PoliteMailConfig::from_env()?)
    }

    /// The OData base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// How many HTTP requests were sent (every attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Finds a list: a number is taken as the list's `ID` (`Lists(ID)`), anything else as its exact `Name`
    /// (`Lists?$filter=Name eq '…'`). An unknown name gives an error suggesting the nearest names.
    pub async fn find_list(&self, name_or_id: &str) -> Result<PoliteMailList, PoliteMailError> {
        let wanted = name_or_id.trim();
        if wanted.is_empty() {
            return Err(PoliteMailError::ListNotFound("the list name is empty".into()));
        }
        if let Ok(id) = wanted.parse::<i64>() {
            let url = self.url(&format!("/Lists({id})"))?;
            let sent = self.execute(&url).await?;
            if sent.response.status() == 404 {
                return Err(PoliteMailError::ListNotFound(format!(
                    "PoliteMail has no list with ID {id}{}",
                    self.suggestions(wanted).await
                )));
            }
            let body = self.json(sent, &url).await?;
            // OData v3 returns the entity itself; tolerate a one-item `value` wrapper too.
            let entity = match body.get("value").and_then(Value::as_array) {
                Some(items) if items.len() == 1 => items.first().cloned().unwrap_or(Value::Null),
                _ => body,
            };
            return list_from_json(&entity).ok_or_else(|| PoliteMailError::Protocol {
                what: format!("GET {}", url.path()),
                reason: "the answer has no ID and Name".into(),
            });
        }
        let filter = format!("Name eq {}", odata_string(wanted));
        let url = self.url(&format!("/Lists?$filter={}", encode_query_value(&filter)))?;
        let lists = self.collect(url).await?;
        let mut matches: Vec<PoliteMailList> = lists.iter().filter_map(list_from_json).collect();
        match matches.len() {
            1 => Ok(matches.remove(0)),
            0 => Err(PoliteMailError::ListNotFound(format!(
                "PoliteMail has no list named '{wanted}'{}",
                self.suggestions(wanted).await
            ))),
            n => {
                let ids = matches.iter().map(|l| l.id.to_string()).collect::<Vec<_>>().join(", ");
                Err(PoliteMailError::AmbiguousList(format!(
                    "{n} PoliteMail lists are named '{wanted}' (IDs {ids}); give --list the ID of the one you mean"
                )))
            }
        }
    }

    /// The list's contacts (`GET Lists(ID)/Contacts`, following `odata.nextLink` / `@odata.nextLink` when the
    /// server pages), in the order PoliteMail gives them; `line` is the 1-based position.
    pub async fn contacts(&self, list: &PoliteMailList) -> Result<ContactList, PoliteMailError> {
        let mut contacts = Vec::new();
        let input = self.contacts_into(list, &mut contacts).await?;
        Ok(ContactList { contacts, input })
    }

    /// [`PoliteMailClient::contacts`], each contact kept in `into` as its page is read (a large list then takes
    /// the room of its answer and of `into`, never of one [`Contact`] per contact as well). Gives the list's input
    /// record.
    pub async fn contacts_into(
        &self,
        list: &PoliteMailList,
        into: &mut dyn KeepContacts,
    ) -> Result<InputRecord, PoliteMailError> {
        let url = self.url(&format!("/Lists({})/Contacts", list.id))?;
        let mut read = ContactsRead::new(into);
        let mut next = Some(url);
        while let Some(url) = next {
            let sent = self.execute(&url).await?;
            let before = read.count;
            let link = self.contacts_page(sent, &url, &mut read).await?;
            crate::progress::page("PoliteMail", (read.count - before) as usize);
            next = self.next_page(link.as_deref(), &url)?;
        }
        Ok(InputRecord {
            role: InputRole::Contacts,
            description: format!("PoliteMail API {} list '{}' (id {})", base_str(&self.base), list.name, list.id),
            sha256: hex::encode(read.hasher.finalize()),
        })
    }

    /// A URL under the base: `path` starts with `/` and is already encoded.
    fn url(&self, path: &str) -> Result<Url, PoliteMailError> {
        Url::parse(&format!("{}{path}", base_str(&self.base)))
            .map_err(|e| PoliteMailError::Protocol { what: path.to_string(), reason: format!("bad URL: {e}") })
    }

    /// GETs `url` with credentials; with a token, tries the second placement after a 401.
    async fn execute(&self, url: &Url) -> Result<Sent, PoliteMailError> {
        loop {
            let placement = self.placement.load(Ordering::Relaxed);
            let sent = self
                .http
                .send(&Method::GET, url, || {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    let request = self.http.request(Method::GET, url.clone()).header("Accept", "application/json");
                    let request = match &self.auth {
                        PoliteMailAuth::Basic { user, password } => request.basic_auth(user, Some(password.expose())),
                        PoliteMailAuth::Token(token) if placement == 0 => {
                            request.basic_auth(token.expose(), Some(token.expose()))
                        }
                        PoliteMailAuth::Token(token) => request.basic_auth("", Some(token.expose())),
                    };
                    std::future::ready(Ok(request))
                })
                .await?;
            if sent.response.status() == 401 && matches!(self.auth, PoliteMailAuth::Token(_)) && placement == 0 {
                tracing::info!(
                    "PoliteMail refused the token as user name and password; trying it as the password only"
                );
                self.placement.store(1, Ordering::Relaxed);
                continue;
            }
            return Ok(sent);
        }
    }

    async fn json(&self, sent: Sent, url: &Url) -> Result<Value, PoliteMailError> {
        let bytes = self.body(sent, url).await?;
        parse_json(&bytes, url)
    }

    /// The body of an answer; an error answer is refused, with what to do about it.
    ///
    /// A list's contacts usually come in one answer, as large as the list: its pieces are appended to one buffer
    /// as they arrive (sized from `Content-Length` when given), so the answer is held once, not as its pieces and
    /// then as a copy of them.
    async fn body(&self, sent: Sent, url: &Url) -> Result<Vec<u8>, PoliteMailError> {
        if !sent.response.status().is_success() {
            return Err(self.refusal(sent).await);
        }
        let mut response = sent.response;
        let failed = |e: reqwest::Error| PoliteMailError::Protocol {
            what: format!("GET {}", url.path()),
            reason: format!("reading the answer failed: {e}"),
        };
        // Trusted only so far: a wrong length costs a larger buffer, never a wrong read.
        const MOST_RESERVED: u64 = 256 << 20;
        let reserve = response.content_length().unwrap_or(0).min(MOST_RESERVED);
        let mut bytes = Vec::new();
        // A reservation the system refuses (an address-space limit) is no error: the buffer then grows as it fills.
        let _ = bytes.try_reserve(usize::try_from(reserve).unwrap_or(0));
        while let Some(piece) = response.chunk().await.map_err(failed)? {
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// The error for an answer that is not a success, with a hint for the statuses a person can act on.
    async fn refusal(&self, sent: Sent) -> PoliteMailError {
        let err = ServiceError::from_response("PoliteMail", &Method::GET, sent.response, &sent.client_request_id).await;
        let err = match err.status {
            401 => match self.auth {
                PoliteMailAuth::Basic { .. } => err.with_hint(
                    "Check POLITEMAIL_USER and POLITEMAIL_PASSWORD; if PoliteMail signs in through Entra ID, SAML \
                     or Windows, create a personal access token and set POLITEMAIL_TOKEN instead",
                ),
                PoliteMailAuth::Token(_) => err.with_hint(
                    "PoliteMail refused POLITEMAIL_TOKEN both as user name + password and as password alone; \
                     check that the token has not expired or been revoked",
                ),
            },
            403 => err.with_hint("the PoliteMail account cannot read this list; ask a PoliteMail admin"),
            404 => err.with_hint("check POLITEMAIL_URL (…/api/odata on PoliteMail 5, …/ssv3/odata on 4.x)"),
            _ => err,
        };
        PoliteMailError::Service(Box::new(err))
    }

    /// Reads one page of a list's contacts into `contacts` and gives its next link. The page is read compactly
    /// ([`ContactsPage`]); anything that reading does not take (a repeated page field, an item that is not an
    /// object, …) is read as any JSON instead, as it always was, so that every answer gives what it gave before.
    async fn contacts_page(
        &self,
        sent: Sent,
        url: &Url,
        read: &mut ContactsRead<'_>,
    ) -> Result<Option<String>, PoliteMailError> {
        let bytes = self.body(sent, url).await?;
        page_contacts(&bytes, url, read)
    }

    /// GETs a collection and every further page.
    async fn collect(&self, first: Url) -> Result<Vec<Value>, PoliteMailError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next {
            let sent = self.execute(&url).await?;
            let page = self.json(sent, &url).await?;
            let value = page.get("value").and_then(Value::as_array).ok_or_else(|| no_value_array(&url))?;
            crate::progress::page("PoliteMail", value.len());
            items.extend(value.iter().cloned());
            next = self.next_page(next_link_of(&page), &url)?;
        }
        Ok(items)
    }

    /// The next page's URL from a page's next link (OData v3 may give it relative to the service root); it must
    /// be on the same server.
    fn next_page(&self, link: Option<&str>, url: &Url) -> Result<Option<Url>, PoliteMailError> {
        let Some(link) = link else { return Ok(None) };
        let root = Url::parse(&format!("{}/", base_str(&self.base)))
            .map_err(|e| PoliteMailError::Protocol { what: "nextLink".into(), reason: e.to_string() })?;
        let link = root.join(link).map_err(|e| PoliteMailError::Protocol {
            what: format!("GET {}", url.path()),
            reason: format!("the next-page link is not a URL ({e})"),
        })?;
        if !same_origin(&link, &self.base) {
            return Err(PoliteMailError::Protocol {
                what: format!("GET {}", url.path()),
                reason: "the next-page link points at another server".into(),
            });
        }
        Ok(Some(link))
    }

    /// "; did you mean …" with up to five near names, or "" when none are near or listing fails.
    async fn suggestions(&self, wanted: &str) -> String {
        let Ok(url) = self.url("/Lists?$select=ID,Name") else { return String::new() };
        let lists = match self.collect(url).await {
            Ok(items) => items.iter().filter_map(list_from_json).collect::<Vec<_>>(),
            Err(e) => {
                tracing::info!("PoliteMail: cannot list the lists for suggestions: {e}");
                return String::new();
            }
        };
        let near = nearest(wanted, &lists);
        if near.is_empty() {
            return "; `Lists?$select=ID,Name` shows every list".to_string();
        }
        let names = near.iter().map(|l| format!("'{}' (ID {})", l.name, l.id)).collect::<Vec<_>>().join(", ");
        format!("; did you mean {names}?")
    }
}

fn list_from_json(value: &Value) -> Option<PoliteMailList> {
    let id = match value.get("ID")? {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    let name = value.get("Name").and_then(Value::as_str).unwrap_or_default().to_string();
    Some(PoliteMailList { id, name })
}

/// The bytes the contacts' SHA-256 is taken over: one JSON array `[Email, FirstName, LastName, DisplayName]`
/// per contact (null for a missing field), in source order, each followed by `\n`.
pub fn canonical_contacts(contacts: &[Contact]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in contacts {
        canonical_contact_row(&mut out, c);
    }
    out
}

/// Appends one contact's line of [`canonical_contacts`]: the JSON array `[email, first, last, display]` and `\n`.
fn canonical_contact_row(out: &mut Vec<u8>, c: &Contact) {
    let row = (&c.email, &c.first_name, &c.last_name, &c.display_name);
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &row);
    out.push(b'\n');
}

/// Where [`PoliteMailClient::contacts_into`] keeps a list's contacts: whole ([`Vec`] of [`Contact`]) or compactly
/// ([`crate::source::ContactBuffer`]).
pub trait KeepContacts {
    /// Keeps the next contact.
    fn keep(&mut self, contact: Contact);
    /// Forgets every contact after the first `len` (a page that is read again).
    fn truncate(&mut self, len: usize);
    /// How many contacts are kept.
    fn kept(&self) -> usize;
}

impl KeepContacts for Vec<Contact> {
    fn keep(&mut self, contact: Contact) {
        self.push(contact);
    }

    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }

    fn kept(&self) -> usize {
        self.len()
    }
}

impl KeepContacts for crate::source::ContactBuffer {
    fn keep(&mut self, contact: Contact) {
        self.push(contact.as_ref());
    }

    fn truncate(&mut self, len: usize) {
        crate::source::ContactBuffer::truncate(self, len);
    }

    fn kept(&self) -> usize {
        self.len()
    }
}

/// A list being read: each contact numbered (its 1-based position), hashed into [`canonical_contacts`]'s SHA-256
/// and kept; a page read again starts from the mark made before it.
struct ContactsRead<'k> {
    keep: &'k mut dyn KeepContacts,
    hasher: Sha256,
    count: u64,
    row: Vec<u8>,
}

impl<'k> ContactsRead<'k> {
    fn new(keep: &'k mut dyn KeepContacts) -> ContactsRead<'k> {
        ContactsRead { keep, hasher: Sha256::new(), count: 0, row: Vec::new() }
    }

    fn push(&mut self, mut contact: Contact) {
        self.count += 1;
        contact.line = self.count;
        self.row.clear();
        canonical_contact_row(&mut self.row, &contact);
        self.hasher.update(&self.row);
        self.keep.keep(contact);
    }

    /// Where the read is now, to come back to with [`ContactsRead::back_to`].
    fn mark(&self) -> ReadMark {
        ReadMark { kept: self.keep.kept(), count: self.count, hasher: self.hasher.clone() }
    }

    fn back_to(&mut self, mark: ReadMark) {
        self.keep.truncate(mark.kept);
        self.count = mark.count;
        self.hasher = mark.hasher;
    }
}

/// A point of a [`ContactsRead`]: how many contacts its keeper held (it may have held some before the read), how
/// many the read had numbered, and the hash so far.
struct ReadMark {
    kept: usize,
    count: u64,
    hasher: Sha256,
}

/// [`PoliteMailClient::contacts_page`] once the answer's bytes are in.
fn page_contacts(bytes: &[u8], url: &Url, read: &mut ContactsRead<'_>) -> Result<Option<String>, PoliteMailError> {
    let before = read.mark();
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let page = serde::de::DeserializeSeed::deserialize(ContactsPage { read: &mut *read }, &mut reader)
        .and_then(|page| reader.end().map(|()| page));
    match page {
        Ok((true, next_link)) => Ok(next_link),
        Ok((false, _)) => {
            read.back_to(before);
            Err(no_value_array(url))
        }
        Err(_) => {
            read.back_to(before);
            page_contacts_as_json(bytes, url, read)
        }
    }
}

/// [`page_contacts`] by way of a JSON value for the whole page.
fn page_contacts_as_json(
    bytes: &[u8],
    url: &Url,
    read: &mut ContactsRead<'_>,
) -> Result<Option<String>, PoliteMailError> {
    let page: Value = parse_json(bytes, url)?;
    let items = page.get("value").and_then(Value::as_array).ok_or_else(|| no_value_array(url))?;
    items.iter().map(contact_from_json).for_each(|contact| read.push(contact));
    Ok(next_link_of(&page).map(str::to_string))
}

/// The refusal of an answer without its `value` array.
fn no_value_array(url: &Url) -> PoliteMailError {
    PoliteMailError::Protocol { what: format!("GET {}", url.path()), reason: "the answer has no 'value' array".into() }
}

/// The bytes of an answer as JSON.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], url: &Url) -> Result<T, PoliteMailError> {
    serde_json::from_slice(bytes).map_err(|e| PoliteMailError::Protocol {
        what: format!("GET {}", url.path()),
        reason: format!("the answer is not JSON ({e}); check POLITEMAIL_URL"),
    })
}

/// A page's next link: `@odata.nextLink`, else `odata.nextLink` (OData v3); `None` when the first present is not
/// a string.
fn next_link_of(page: &Value) -> Option<&str> {
    page.get("@odata.nextLink").or_else(|| page.get("odata.nextLink")).and_then(Value::as_str)
}

/// A contact from one item of a list's answer: its `Email`, `FirstName`, `LastName` and `DisplayName` when they are
/// strings (the line is set by the caller).
fn contact_from_json(item: &Value) -> Contact {
    let field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
    Contact {
        email: field("Email").unwrap_or_default(),
        first_name: field("FirstName"),
        last_name: field("LastName"),
        display_name: field("DisplayName"),
        line: 0,
    }
}

/// A page of a list's contacts, read without building a JSON value per contact: each item goes straight into
/// `contacts` with only the four fields a contact has, and every other field is skipped as it is parsed. A list's
/// contacts usually come in one answer, and as JSON values a million of them took several GB. The page must be an
/// object and each item an object; a repeated page field fails the reading (the caller then reads the page as any
/// JSON). Gives whether the page had its `value` array, and its next link.
struct ContactsPage<'a, 'k> {
    read: &'a mut ContactsRead<'k>,
}

/// The `value` array of a [`ContactsPage`] (or `null`), each item pushed as it is read; gives whether it was an
/// array.
struct ContactItems<'a, 'k> {
    read: &'a mut ContactsRead<'k>,
}

/// One contact item of a [`ContactsPage`]: the four fields, each as the JSON it was (the last one when repeated,
/// as a JSON object keeps it).
#[derive(Default)]
struct ContactItem {
    email: Option<Value>,
    first_name: Option<Value>,
    last_name: Option<Value>,
    display_name: Option<Value>,
}

impl ContactItem {
    fn into_contact(self) -> Contact {
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Contact {
            email: text(self.email).unwrap_or_default(),
            first_name: text(self.first_name),
            last_name: text(self.last_name),
            display_name: text(self.display_name),
            line: 0,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ContactsPage<'_, '_> {
    type Value = (bool, Option<String>);

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ContactsPage<'_, '_> {
    type Value = (bool, Option<String>);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a page of contacts (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut value, mut at_link, mut v3_link) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            let seen = match key {
                Key::Value => {
                    let had = value.is_some();
                    value = Some(map.next_value_seed(ContactItems { read: &mut *self.read })?);
                    had
                }
                Key::AtNextLink => at_link.replace(map.next_value::<Value>()?).is_some(),
                Key::NextLink => v3_link.replace(map.next_value::<Value>()?).is_some(),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    false
                }
            };
            if seen {
                return Err(serde::de::Error::custom("a page field given twice"));
            }
        }
        // As `next_link_of`: the first link present counts, and only when it is a string.
        let next_link = match (at_link, v3_link) {
            (Some(link), _) | (None, Some(link)) => link.as_str().map(str::to_string),
            (None, None) => None,
        };
        Ok((value == Some(true), next_link))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ContactItems<'_, '_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ContactItems<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of contacts")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while let Some(item) = seq.next_element::<ContactItem>()? {
            self.read.push(item.into_contact());
        }
        Ok(true)
    }
}

/// The field names a [`ContactsPage`] and a [`ContactItem`] look at, read without allocating.
enum Key {
    Value,
    AtNextLink,
    NextLink,
    Email,
    FirstName,
    LastName,
    DisplayName,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(match name {
                    "value" => Key::Value,
                    "@odata.nextLink" => Key::AtNextLink,
                    "odata.nextLink" => Key::NextLink,
                    "Email" => Key::Email,
                    "FirstName" => Key::FirstName,
                    "LastName" => Key::LastName,
                    "DisplayName" => Key::DisplayName,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> serde::Deserialize<'de> for ContactItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> serde::de::Visitor<'de> for ItemVisitor {
            type Value = ContactItem;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a contact (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ContactItem, A::Error> {
                let mut item = ContactItem::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::Email => &mut item.email,
                        Key::FirstName => &mut item.first_name,
                        Key::LastName => &mut item.last_name,
                        Key::DisplayName => &mut item.display_name,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<Value>()?);
                }
                Ok(item)
            }
        }
        deserializer.deserialize_map(ItemVisitor)
    }
}

/// Up to five lists whose names are near `wanted`: those containing it (or contained in it) first, then by
/// edit distance (case-insensitive), keeping distances up to a third of the name's length.
pub fn nearest<'a>(wanted: &str, lists: &'a [PoliteMailList]) -> Vec<&'a PoliteMailList> {
    let w = wanted.to_lowercase();
    let limit = (w.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, usize, &PoliteMailList)> = lists
        .iter()
        .filter_map(|l| {
            let n = l.name.to_lowercase();
            let contains = !n.is_empty() && (n.contains(&w) || w.contains(&n));
            let d = edit_distance(&w, &n);
            (contains || d <= limit).then_some((usize::from(!contains), d, l))
        })
        .collect();
    scored.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    scored.into_iter().take(5).map(|(_, _, l)| l).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let delete = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let insert = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, Query};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;
    use base64::Engine;
    use std::collections::HashMap;

    fn lists() -> Vec<PoliteMailList> {
        ["All Staff", "All Staff - EMEA", "Managers", "Newsletter", "O'Brien's team"]
            .iter()
            .enumerate()
            .map(|(i, n)| PoliteMailList { id: i as i64 + 1, name: n.to_string() })
            .collect()
    }

    #[test]
    fn near_names() {
        let l = lists();
        let near: Vec<&str> = nearest("all staf", &l).iter().map(|l| l.name.as_str()).collect();
        assert_eq!(near, ["All Staff", "All Staff - EMEA"]);
        let near: Vec<&str> = nearest("Managres", &l).iter().map(|l| l.name.as_str()).collect();
        assert_eq!(near, ["Managers"]);
        assert!(nearest("zzzzzzzzzz", &l).is_empty());
    }

    #[test]
    fn canonical_form_is_stable() {
        let c = vec![Contact {
            email: "a@x.com".into(),
            first_name: Some("Ada".into()),
            last_name: None,
            display_name: Some("Ada \"L\"".into()),
            line: 1,
        }];
        assert_eq!(
            String::from_utf8(canonical_contacts(&c)).unwrap(),
            "[\"a@x.com\",\"Ada\",null,\"Ada \\\"L\\\"\"]\n"
        );
    }

    fn basic(headers: &axum::http::HeaderMap) -> String {
        let raw = headers.get("authorization").and_then(|h| h.to_str().ok()).unwrap_or("");
        let b = raw.strip_prefix("Basic ").unwrap_or("");
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default()).unwrap()
    }

    async fn fake(accept: &'static str) -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}/api/odata");
        let contacts = move |Path(list): Path<String>,
                             Query(q): Query<HashMap<String, String>>,
                             headers: axum::http::HeaderMap| async move {
            if basic(&headers) != accept {
                return (axum::http::StatusCode::UNAUTHORIZED, "").into_response();
            }
            assert_eq!(list, "Lists(7)");
            let page: usize = q.get("page").map(|p| p.parse().unwrap()).unwrap_or(0);
            let value: Vec<Value> = (page * 3..(page * 3 + 3).min(7))
                .map(|i| {
                    serde_json::json!({"ID": 100 + i, "Email": format!("p{i}@contoso.com"), "FirstName": "P",
                    "LastName": format!("{i}"), "DisplayName": null})
                })
                .collect();
            let mut body = serde_json::json!({"odata.metadata": "x", "value": value});
            if page < 2 {
                // Relative, as OData v3 may write it.
                body["odata.nextLink"] = Value::String(format!("Lists(7)/Contacts?page={}", page + 1));
            }
            Json(body).into_response()
        };
        let router = axum::Router::new()
            .route("/api/odata/{entity}/Contacts", get(contacts))
            .route(
                "/api/odata/Lists",
                get(move |Query(q): Query<HashMap<String, String>>, headers: axum::http::HeaderMap| async move {
                    if basic(&headers) != accept {
                        return (axum::http::StatusCode::UNAUTHORIZED, "").into_response();
                    }
                    let all = vec![
                        serde_json::json!({"ID": 7, "Name": "All Staff"}),
                        serde_json::json!({"ID": 8, "Name": "O'Brien's team"}),
                        serde_json::json!({"ID": 9, "Name": "Twin"}),
                        serde_json::json!({"ID": 10, "Name": "Twin"}),
                    ];
                    let value: Vec<Value> = match q.get("$filter") {
                        Some(f) => all
                            .into_iter()
                            .filter(|l| *f == format!("Name eq {}", odata_string(l["Name"].as_str().unwrap())))
                            .collect(),
                        None => all,
                    };
                    Json(serde_json::json!({"odata.metadata": "x", "value": value})).into_response()
                }),
            )
            .route(
                "/api/odata/{entity}",
                get(|Path(entity): Path<String>| async move {
                    if entity == "Lists(7)" {
                        Json(serde_json::json!({"odata.metadata": "x", "ID": 7, "Name": "All Staff"})).into_response()
                    } else {
                        (
                            axum::http::StatusCode::NOT_FOUND,
                            Json(serde_json::json!({"odata.error": {"code": "",
                            "message": {"lang": "en-US", "value": "No list"}}})),
                        )
                            .into_response()
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Url::parse(&base).unwrap()
    }

    fn client(base: Url, auth: PoliteMailAuth) -> PoliteMailClient {
        PoliteMailClient::new(PoliteMailConfig { base_url: base, auth, http: HttpConfig::for_tests() }).unwrap()
    }

    #[tokio::test]
    async fn reads_a_paged_list_by_name_and_id() {
        let c = client(fake("me:pw").await, PoliteMailAuth::Basic { user: "me".into(), password: Secret::new("pw") });
        let list = c.find_list("All Staff").await.unwrap();
        assert_eq!(list, PoliteMailList { id: 7, name: "All Staff".into() });
        assert_eq!(c.find_list("7").await.unwrap(), list);
        assert_eq!(c.find_list("O'Brien's team").await.unwrap().id, 8);
        let got = c.contacts(&list).await.unwrap();
        assert_eq!(got.contacts.len(), 7);
        assert_eq!(got.contacts[6].line, 7);
        assert_eq!(got.contacts[6].email, "p6@contoso.com");
        assert!(got.input.description.contains("list 'All Staff' (id 7)"), "{}", got.input.description);
        assert_eq!(got.input.sha256, crate::plan::precondition::sha256_hex(&canonical_contacts(&got.contacts)));
        let err = c.find_list("All Staf").await.unwrap_err().to_string();
        assert!(err.contains("did you mean 'All Staff' (ID 7)"), "{err}");
        assert!(matches!(c.find_list("Twin").await.unwrap_err(), PoliteMailError::AmbiguousList(_)));
        assert!(matches!(c.find_list("99").await.unwrap_err(), PoliteMailError::ListNotFound(_)));
    }

    #[tokio::test]
    async fn token_tries_both_documented_placements() {
        let both = client(fake("tok:tok").await, PoliteMailAuth::Token(Secret::new("tok")));
        assert_eq!(both.find_list("All Staff").await.unwrap().id, 7);
        assert_eq!(both.requests(), 1);

        let password_only = client(fake(":tok").await, PoliteMailAuth::Token(Secret::new("tok")));
        assert_eq!(password_only.find_list("All Staff").await.unwrap().id, 7);
        assert_eq!(password_only.requests(), 2);
        password_only.find_list("All Staff").await.unwrap();
        assert_eq!(password_only.requests(), 3, "the working placement is remembered");

        let refused = client(fake("nobody").await, PoliteMailAuth::Token(Secret::new("tok")));
        let err = refused.find_list("All Staff").await.unwrap_err().to_string();
        assert!(err.contains("POLITEMAIL_TOKEN") && !err.contains("tok:"), "{err}");
        let refused =
            client(fake("nobody").await, PoliteMailAuth::Basic { user: "u".into(), password: Secret::new("p") });
        let err = refused.find_list("All Staff").await.unwrap_err().to_string();
        assert!(err.contains("POLITEMAIL_USER and POLITEMAIL_PASSWORD"), "{err}");
    }

    #[test]
    fn config_from_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let c = PoliteMailConfig::from_lookup(
            env(&[("POLITEMAIL_URL", "https://pm.contoso.com/api/odata/"), ("POLITEMAIL_TOKEN", "secret-pat")]),
            HttpConfig::default(),
        )
        .unwrap();
        assert_eq!(c.base_url.as_str(), "https://pm.contoso.com/api/odata");
        assert!(!format!("{c:?}").contains("secret-pat"));
        assert!(PoliteMailConfig::from_lookup(
            env(&[("POLITEMAIL_URL", "http://pm.contoso.com/api/odata"), ("POLITEMAIL_TOKEN", "t")]),
            HttpConfig::default()
        )
        .is_err());
        assert!(PoliteMailConfig::from_lookup(
            env(&[("POLITEMAIL_URL", "https://pm/api/odata")]),
            HttpConfig::default()
        )
        .is_err());
    }

    /// Reads with `read` into `keep`; gives its result and the hash of what it kept.
    fn read_with(
        keep: &mut dyn KeepContacts,
        read: impl FnOnce(&mut ContactsRead<'_>) -> Result<Option<String>, PoliteMailError>,
    ) -> (Result<Option<String>, String>, String) {
        let mut reading = ContactsRead::new(keep);
        let result = read(&mut reading).map_err(|e| e.to_string());
        (result, hex::encode(reading.hasher.finalize()))
    }

    /// A page read again takes back only what it kept itself, also from a keeper that held contacts before.
    #[test]
    fn a_page_read_again_leaves_earlier_contacts_alone() {
        let url = Url::parse("https://pm.example/api/odata/Lists(1)/Contacts").unwrap();
        let earlier = Contact { email: "e@x.com".into(), line: 9, ..Contact::default() };
        let mut kept = vec![earlier.clone(), earlier.clone()];
        let page = r#"{"value":[{"Email":"f@x.com"}],"value":[{"Email":"g@x.com"}]}"#;
        let (read, _) = read_with(&mut kept, |read| page_contacts(page.as_bytes(), &url, read));
        assert_eq!(read, Ok(None));
        let emails: Vec<&str> = kept.iter().map(|c| c.email.as_str()).collect();
        assert_eq!(emails, ["e@x.com", "e@x.com", "g@x.com"]);
    }

    /// The compact reading of a page of contacts gives what reading it as a JSON value gives, on ordinary and odd
    /// answers alike.
    #[test]
    fn contacts_pages_read_compactly_as_any_json() {
        let url = Url::parse("https://pm.example/api/odata/Lists(1)/Contacts").unwrap();
        let pages = [
            r#"{"odata.metadata":"x","value":[{"ID":1,"Email":"a@x.com","FirstName":"A","Extra":{"n":[1,{"q":2}]}},{"Email":5,"LastName":null}],"odata.nextLink":"Lists(1)/Contacts?$skip=2"}"#,
            r#"{"value":[{"Em\u0061il":"b@x.com","Email":"c@x.com","DisplayName":"C \"D\""}],"@odata.nextLink":5,"odata.nextLink":"y"}"#,
            r#"{"value":[{"Email":"d@x.com"},7,"e",[1]],"@odata.nextLink":"Lists(1)/Contacts?$skip=9"}"#,
            r#"{"value":[{"Email":"f@x.com"}],"value":[]}"#,
            r#"{"value":null}"#,
            r#"{"value":{"Email":"g@x.com"}}"#,
            r#"[{"value":[]}]"#,
            r#"{"nothing":1}"#,
            r#"{"value":[]"#,
        ];
        for page in pages {
            let (mut compact, mut json) = (Vec::new(), Vec::new());
            let (mut buffer, mut in_buffer) =
                (crate::source::ContactBuffer::new(), crate::source::ContactBuffer::new());
            let (a, a_hash) = read_with(&mut compact, |read| page_contacts(page.as_bytes(), &url, read));
            let (b, b_hash) = read_with(&mut json, |read| page_contacts_as_json(page.as_bytes(), &url, read));
            let (c, c_hash) = read_with(&mut buffer, |read| page_contacts(page.as_bytes(), &url, read));
            json.iter().for_each(|contact| in_buffer.push(contact.as_ref()));
            assert_eq!(a, b, "{page}");
            assert_eq!(compact, json, "{page}");
            assert_eq!(a_hash, b_hash, "{page}");
            // Kept compactly, the page gives the same contacts, lines and hash.
            assert_eq!((&c, &c_hash), (&a, &a_hash), "{page}");
            assert_eq!(buffer, in_buffer, "{page}");
            if a.is_ok() {
                let rows = canonical_contacts(&json);
                assert_eq!(b_hash, hex::encode(Sha256::digest(&rows)), "{page}");
            }
        }
    }
}
