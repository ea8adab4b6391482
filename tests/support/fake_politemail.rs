//! A stateful fake of the PoliteMail OData API (v5, base `/api/odata`), for tests and for trying writeback
//! without a PoliteMail server (see `docs/fakes.md`).
//!
//! Serves `GET Lists` (`$select`, `$filter=Name eq '…'`, `$top`, `$skip`), `GET Lists({id})` and
//! `GET Lists({id})/Contacts` in the OData v3 JSON shape (`odata.metadata`, `value`, `odata.nextLink` when a
//! server page size is set), behind HTTP Basic auth (user + password, or a personal access token), with the
//! same fault knobs as the Graph fake and a request log. Self-contained: it does not use the `writeback` library.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http_serve::{fmt_secs, parse_query, pct_decode, serve, Dropped};

/// The lists the fake starts with; the same shape as `samples/fake-politemail.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seed {
    /// Lists with their contacts.
    #[serde(default)]
    pub lists: Vec<SeedList>,
}

/// A list in the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedList {
    /// List id.
    #[serde(rename = "ID")]
    pub id: i64,
    /// List name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Contacts: objects with at least `ID` and `Email`; other fields (`FirstName`, `LastName`, `DisplayName`,
    /// `ActiveState`, `Custom1`…) are returned as given.
    #[serde(default)]
    pub contacts: Vec<Map<String, Value>>,
    /// Further list fields (`Description`, `Shared`…), returned as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A contact object for a seed.
pub fn contact(id: i64, email: &str, first: &str, last: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ID".into(), json!(id));
    m.insert("Email".into(), json!(email));
    m.insert("FirstName".into(), json!(first));
    m.insert("LastName".into(), json!(last));
    m.insert("DisplayName".into(), json!(format!("{first} {last}").trim().to_string()));
    m
}

impl Seed {
    /// Reads a seed file.
    pub fn from_file(path: &str) -> Result<Seed, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: line {}, column {}: {e}", e.line(), e.column()))
    }

    /// Adds a list with `n` contacts `user{i}@contoso.example` (contact ids `id * 100000 + i`).
    pub fn add_generated_list(&mut self, id: i64, name: &str, n: i64) {
        let contacts = (1..=n)
            .map(|i| contact(id * 100_000 + i, &format!("user{i}@contoso.example"), "User", &i.to_string()))
            .collect();
        self.lists.push(SeedList { id, name: name.into(), contacts, extra: Map::new() });
    }
}

/// Which placements of a personal access token in HTTP Basic auth are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatPlacements {
    /// The token as both user name and password (the connector README's advice).
    pub both: bool,
    /// An empty user name and the token as password.
    pub empty_user: bool,
}

/// Faults; changeable at runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Every Nth request gets a 429.
    pub throttle_every: Option<u64>,
    /// `Retry-After` seconds on those 429s (`None` = no header).
    pub retry_after: Option<f64>,
    /// The next requests get these statuses, one each, front first.
    pub server_errors: Vec<u16>,
    /// The next K requests: the connection is closed without an answer.
    pub drop_next: u32,
    /// Every request is answered after this delay.
    pub delay: Option<Duration>,
}

/// How the fake is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// 0 = any free port.
    pub port: u16,
    /// Basic auth user name.
    pub user: String,
    /// Basic auth password.
    pub password: String,
    /// A personal access token, if PATs are accepted.
    pub pat: Option<String>,
    /// Where the PAT may be placed.
    pub pat_placements: PatPlacements,
    /// Server-driven page size for `Lists({id})/Contacts` (`None` = everything in one answer).
    pub page_size: Option<usize>,
    /// Starting faults.
    pub faults: Faults,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            user: "writeback".into(),
            password: "fake-politemail-password".into(),
            pat: Some("pm-pat-0123456789abcdef".into()),
            pat_placements: PatPlacements { both: true, empty_user: true },
            page_size: None,
            faults: Faults { retry_after: Some(0.05), ..Faults::default() },
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival order.
    pub seq: u64,
    /// `GET`…
    pub method: String,
    /// Path and query, e.g. `/api/odata/Lists(12)/Contacts?$skip=100`.
    pub path: String,
    /// How the caller authenticated: `password`, `pat-both`, `pat-empty-user`, or `none`/`bad`.
    pub auth: String,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    /// When it arrived.
    pub at: SystemTime,
}

struct State {
    cfg: Config,
    origin: String,
    lists: Vec<SeedList>,
    faults: Faults,
    counter: u64,
    log: Vec<Recorded>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake PoliteMail. Dropping it stops the server.
pub struct FakePoliteMail {
    /// API base, e.g. `http://127.0.0.1:PORT/api/odata` (`POLITEMAIL_URL`).
    pub url: String,
    /// Server root, e.g. `http://127.0.0.1:PORT`.
    pub server_url: String,
    /// Basic auth user (`POLITEMAIL_USER`).
    pub user: String,
    /// Basic auth password (`POLITEMAIL_PASSWORD`).
    pub password: String,
    /// The accepted personal access token, if any.
    pub pat: Option<String>,
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePoliteMail {
    /// Starts a fake with these lists and the default [`Config`].
    pub fn start(seed: Seed) -> FakePoliteMail {
        Self::start_with(seed, Config::default())
    }

    /// Starts a fake; panics if the seed is invalid or the port is taken.
    pub fn start_with(seed: Seed, cfg: Config) -> FakePoliteMail {
        match Self::try_start(seed, cfg) {
            Ok(f) => f,
            Err(e) => panic!("fake PoliteMail: {e}"),
        }
    }

    /// Like [`FakePoliteMail::start_with`], returning errors instead of panicking.
    pub fn try_start(seed: Seed, cfg: Config) -> Result<FakePoliteMail, String> {
        for l in &seed.lists {
            for (i, c) in l.contacts.iter().enumerate() {
                if !c.get("ID").is_some_and(Value::is_i64) || !c.get("Email").is_some_and(Value::is_string) {
                    return Err(format!(
                        "list {} ({}): contact #{} needs a numeric ID and a string Email",
                        l.id,
                        l.name,
                        i + 1
                    ));
                }
            }
        }
        let listener = std::net::TcpListener::bind(("127.0.0.1", cfg.port)).map_err(|e| format!("bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let origin = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State {
            faults: cfg.faults.clone(),
            cfg: cfg.clone(),
            origin: origin.clone(),
            lists: seed.lists,
            counter: 0,
            log: vec![],
        }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-politemail".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("fake PoliteMail: runtime: {e}"),
                };
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => serve(l, rx, move |req| handle(st.clone(), req)).await,
                        Err(e) => eprintln!("fake PoliteMail: listener: {e}"),
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(FakePoliteMail {
            url: format!("{origin}/api/odata"),
            server_url: origin,
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            pat: cfg.pat.clone(),
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The environment variables that point writeback at this fake (user + password).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("POLITEMAIL_URL", self.url.clone()),
            ("POLITEMAIL_USER", self.user.clone()),
            ("POLITEMAIL_PASSWORD", self.password.clone()),
        ]
    }

    /// All recorded requests, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.st().log.clone()
    }

    /// How many recorded requests match.
    pub fn count(&self, f: impl Fn(&Recorded) -> bool) -> usize {
        self.st().log.iter().filter(|r| f(r)).count()
    }

    /// Replaces the faults (the throttle counter restarts).
    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.st();
        st.faults = faults;
        st.counter = 0;
    }

    /// Changes the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.st().faults);
    }

    /// Changes the server page size.
    pub fn set_page_size(&self, n: Option<usize>) {
        self.st().cfg.page_size = n;
    }

    /// Adds a contact to a list; false if the list does not exist.
    pub fn add_contact(&self, list_id: i64, c: Map<String, Value>) -> bool {
        let mut st = self.st();
        match st.lists.iter_mut().find(|l| l.id == list_id) {
            Some(l) => {
                l.contacts.push(c);
                true
            }
            None => false,
        }
    }

    /// Removes the contact with this e-mail (case-insensitive) from a list; false if absent.
    pub fn remove_contact(&self, list_id: i64, email: &str) -> bool {
        let mut st = self.st();
        let Some(l) = st.lists.iter_mut().find(|l| l.id == list_id) else { return false };
        let before = l.contacts.len();
        l.contacts.retain(|c| !c.get("Email").and_then(Value::as_str).is_some_and(|e| e.eq_ignore_ascii_case(email)));
        l.contacts.len() != before
    }

    /// Stops the server (also done on drop).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakePoliteMail {
    fn drop(&mut self) {
        self.stop();
    }
}

fn odata_error(status: u16, message: &str) -> (u16, Vec<(String, String)>, Value) {
    (status, vec![], json!({"odata.error": {"code": "", "message": {"lang": "en-US", "value": message}}}))
}

fn auth_kind(cfg: &Config, h: &HeaderMap) -> &'static str {
    let Some(v) = h.get("authorization").and_then(|v| v.to_str().ok()) else { return "none" };
    let Some(b64) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else { return "bad" };
    let Some((user, pass)) = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
    else {
        return "bad";
    };
    if user == cfg.user && pass == cfg.password {
        return "password";
    }
    if let Some(pat) = &cfg.pat {
        if cfg.pat_placements.both && user == *pat && pass == *pat {
            return "pat-both";
        }
        if cfg.pat_placements.empty_user && user.is_empty() && pass == *pat {
            return "pat-empty-user";
        }
    }
    "bad"
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Body>) -> Result<Response<Body>, Dropped> {
    let (parts, _body) = req.into_parts();
    let path_q = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let delay = lock(&state).faults.delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut st = lock(&state);
    let seq = st.log.len() as u64 + 1;
    let auth = auth_kind(&st.cfg, &parts.headers);
    let mut rec = Recorded {
        seq,
        method: parts.method.to_string(),
        path: path_q.clone(),
        auth: auth.into(),
        status: 0,
        at: SystemTime::now(),
    };
    if st.faults.drop_next > 0 {
        st.faults.drop_next -= 1;
        st.log.push(rec);
        return Err(Dropped);
    }
    st.counter += 1;
    let (status, headers, body) = if !st.faults.server_errors.is_empty() {
        let s = st.faults.server_errors.remove(0);
        odata_error(s, "The service is temporarily unavailable.")
    } else if st.faults.throttle_every.is_some_and(|n| n > 0 && st.counter.is_multiple_of(n)) {
        let (s, mut h, b) = odata_error(429, "Too many requests.");
        if let Some(r) = st.faults.retry_after {
            h.push(("Retry-After".into(), fmt_secs(r)));
        }
        (s, h, b)
    } else if auth == "none" || auth == "bad" {
        (
            401,
            vec![("WWW-Authenticate".into(), "Basic realm=\"PoliteMail\"".into())],
            json!({"Message": "Authorization has been denied for this request."}),
        )
    } else if parts.method != Method::GET {
        odata_error(405, "The requested resource does not support this HTTP method.")
    } else {
        route(&st, &path_q)
    };
    rec.status = status;
    st.log.push(rec);
    drop(st);
    let mut b = Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            b = b.header(k, v);
        }
    }
    b = b.header("Content-Type", "application/json; odata=minimalmetadata; streaming=true; charset=utf-8");
    b = b.header("DataServiceVersion", "3.0");
    Ok(b.body(Body::from(body.to_string())).unwrap_or_else(|_| Response::new(Body::empty())))
}

fn list_json(l: &SeedList) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ID".into(), json!(l.id));
    m.insert("Name".into(), json!(l.name));
    m.insert("Description".into(), Value::Null);
    m.insert("IsNewsletter".into(), json!(0));
    m.insert("Shared".into(), json!(true));
    m.insert("CreationDate".into(), json!("2024-01-01T00:00:00"));
    m.insert("ActiveState".into(), json!(1));
    m.insert("IsAnonymous".into(), json!(false));
    m.insert("GUID".into(), json!(format!("00000000-0000-4000-8000-{:012x}", l.id)));
    m.insert("BusinessID".into(), json!(0));
    m.insert("RegionID".into(), json!(0));
    for (k, v) in &l.extra {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn contact_json(c: &Map<String, Value>, list_id: i64) -> Map<String, Value> {
    let mut m = Map::new();
    for k in ["ID", "DisplayName", "FirstName", "LastName", "Email"] {
        m.insert(k.into(), c.get(k).cloned().unwrap_or(Value::Null));
    }
    m.insert("ActiveState".into(), json!(1));
    m.insert("CreationDate".into(), json!("2024-01-01T00:00:00"));
    m.insert("Shared".into(), json!(true));
    m.insert("OwnerID".into(), json!(0));
    m.insert("Company".into(), Value::Null);
    m.insert("Title".into(), Value::Null);
    m.insert("BusinessID".into(), json!(0));
    m.insert("RegionID".into(), json!(0));
    m.insert("ListID".into(), json!(list_id));
    for (k, v) in c {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn select(m: Map<String, Value>, sel: Option<&str>) -> Map<String, Value> {
    match sel {
        None => m,
        Some(s) => {
            let names: Vec<&str> = s.split(',').map(str::trim).collect();
            m.into_iter().filter(|(k, _)| names.iter().any(|n| n.eq_ignore_ascii_case(k) || *n == "*")).collect()
        }
    }
}

/// `Name eq 'O''Brien'` or `ID eq 12` (case-insensitive on names).
fn filter_matches(filter: &str, list: &Map<String, Value>) -> Result<bool, String> {
    let ors: Vec<&str> = filter.split(" or ").collect();
    for clause in ors {
        let (prop, lit) = clause
            .trim()
            .split_once(" eq ")
            .ok_or_else(|| format!("The query specified in the URI is not valid: '{filter}'."))?;
        let prop = prop.trim();
        let lit = lit.trim();
        let value = list.iter().find(|(k, _)| k.eq_ignore_ascii_case(prop)).map(|(_, v)| v);
        let Some(value) = value else {
            return Err(format!("Could not find a property named '{prop}' on type 'PoliteMail.List'."));
        };
        let hit = if let Some(inner) = lit.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            let s = inner.replace("''", "'");
            value.as_str().is_some_and(|v| v.eq_ignore_ascii_case(&s))
        } else {
            lit.parse::<i64>().ok().is_some_and(|n| value.as_i64() == Some(n))
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

fn route(st: &State, path_q: &str) -> (u16, Vec<(String, String)>, Value) {
    let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
    let q: HashMap<String, String> = parse_query(query).into_iter().collect();
    let base = format!("{}/api/odata", st.origin);
    let lower = path.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("/api/odata/").map(|r| &path[path.len() - r.len()..]) else {
        return odata_error(
            404,
            &format!("No HTTP resource was found that matches the request URI '{}{path}'.", st.origin),
        );
    };
    let top = q.get("$top").and_then(|t| t.parse::<usize>().ok());
    let skip = q.get("$skip").and_then(|t| t.parse::<usize>().ok()).unwrap_or(0);
    if rest.eq_ignore_ascii_case("Lists") {
        let mut out = vec![];
        for l in &st.lists {
            let m = list_json(l);
            if let Some(f) = q.get("$filter") {
                match filter_matches(f, &m) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => return odata_error(400, &e),
                }
            }
            out.push(Value::Object(select(m, q.get("$select").map(String::as_str))));
        }
        let out: Vec<Value> = out.into_iter().skip(skip).take(top.unwrap_or(usize::MAX)).collect();
        return (200, vec![], json!({"odata.metadata": format!("{base}/$metadata#Lists"), "value": out}));
    }
    // Lists(12) or Lists(12)/Contacts
    let Some(after) = rest.get(..6).filter(|p| p.eq_ignore_ascii_case("Lists(")).and_then(|_| rest.get(6..)) else {
        return odata_error(
            404,
            &format!("No HTTP resource was found that matches the request URI '{}{path}'.", st.origin),
        );
    };
    let Some((id_text, tail)) = after.split_once(')') else {
        return odata_error(400, "The URI is not valid: missing ')'.");
    };
    let Ok(id) = id_text.trim().parse::<i64>() else {
        return odata_error(400, &format!("The key value '{id_text}' is not a valid Int32."));
    };
    let Some(list) = st.lists.iter().find(|l| l.id == id) else {
        return odata_error(404, &format!("List with ID {id} was not found."));
    };
    if tail.is_empty() {
        let mut m = Map::new();
        m.insert("odata.metadata".into(), json!(format!("{base}/$metadata#Lists/@Element")));
        m.extend(select(list_json(list), q.get("$select").map(String::as_str)));
        return (200, vec![], Value::Object(m));
    }
    if !tail.eq_ignore_ascii_case("/Contacts") {
        return odata_error(
            404,
            &format!("No HTTP resource was found that matches the request URI '{}{path}'.", st.origin),
        );
    }
    let all: Vec<&Map<String, Value>> = list.contacts.iter().skip(skip).collect();
    let wanted = top.map_or(all.len(), |t| t.min(all.len()));
    let page = st.cfg.page_size.map_or(wanted, |p| p.max(1).min(wanted));
    let value: Vec<Value> = all
        .iter()
        .take(page)
        .map(|c| Value::Object(select(contact_json(c, id), q.get("$select").map(String::as_str))))
        .collect();
    let mut m = Map::new();
    m.insert("odata.metadata".into(), json!(format!("{base}/$metadata#Contacts")));
    m.insert("value".into(), Value::Array(value));
    if page < wanted {
        let mut parts: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let k = pct_decode(p.split('=').next().unwrap_or(""));
                k != "$skip" && k != "$top"
            })
            .map(str::to_string)
            .collect();
        if let Some(t) = top {
            parts.push(format!("$top={}", t - page));
        }
        parts.push(format!("$skip={}", skip + page));
        m.insert("odata.nextLink".into(), json!(format!("{}{path}?{}", st.origin, parts.join("&"))));
    }
    (200, vec![], Value::Object(m))
}
