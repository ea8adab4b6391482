//! A stateful fake of Microsoft Graph v1.0 and of the Entra ID token endpoint, for tests and for trying
//! writeback without a tenant (see `docs/fakes.md`).
//!
//! It keeps users, groups and group membership in memory and speaks the documented wire format: paging with
//! opaque `$skiptoken`s, `$top` limits, OData string literals, `$batch` (≤ 20 items, per-item status),
//! the Graph error envelope, `request-id` headers, 429 with `Retry-After`, write quotas, 5xx bursts, dropped
//! connections, slow answers and short-lived tokens. Every request is recorded so tests can count calls and
//! read the resulting membership back.
//!
//! Users that are deleted (`DELETE /users/{id}`, [`FakeGraph::delete_object`], or seeded as `deletedUsers`) move
//! to the deleted items, as in Entra ID: `GET /directory/deletedItems/{id}` returns them with their
//! `@odata.type`, and 404 for anything else. `$filter` takes at most 15 values in an `in (…)` list, as Graph.
//! [`FakeGraph::hold_requests`] makes Graph requests wait (the token endpoint still answers) until
//! [`FakeGraph::release_requests`], so a test can catch a client between two requests without sleeping.
//!
//! Sign-in: the token endpoint speaks the client-credentials grant (secret, certificate assertion, federated
//! assertion checked against [`Federated`]), the device authorization grant with its polling answers
//! ([`DevicePoll`]) and the refresh-token grant; an App Service style managed identity endpoint (`/msi/token`) and
//! an instance-metadata style one (`/metadata/identity/oauth2/token`) answer when [`ManagedIdentity`] is set.
//! Every token remembers its principal (an application with `roles`, or a [`Person`] with `scp` and `wids`), and
//! Graph enforces it: reads need a read permission, writes a write permission, and a person must also own the
//! group or hold a directory role that may change it.
//!
//! Self-contained on purpose: it does not use the `writeback` library, so it checks the real client
//! independently.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http_serve::{fmt_secs, parse_query, pct_decode, serve, Dropped};

/// The scope a client-credentials client asks for.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// The host real Graph uses in `@odata.id` / `members@odata.bind` references.
pub const GRAPH_ROOT: &str = "https://graph.microsoft.com/v1.0";
/// The message Graph gives when a reference added by PATCH or POST `$ref` is already a member.
pub const ALREADY_EXISTS: &str =
    "One or more added object references already exist for the following modified properties: 'members'.";
const JSON_CT: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

// ---------------------------------------------------------------------------------------------------------
// Seed: the directory the fake starts with.
// ---------------------------------------------------------------------------------------------------------

/// The directory the fake starts with; the same shape as `samples/fake-tenant.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seed {
    /// The tenant id (a GUID); `GET /organization` returns it and tokens carry it as `tid`.
    pub tenant_id: String,
    /// Users.
    #[serde(default)]
    pub users: Vec<SeedUser>,
    /// Groups with their direct members (object ids).
    #[serde(default)]
    pub groups: Vec<SeedGroup>,
    /// Other directory objects (devices, contacts, service principals) that can be members.
    #[serde(default, rename = "directoryObjects")]
    pub directory_objects: Vec<SeedObject>,
    /// Users deleted before the fake starts: only `GET /directory/deletedItems/{id}` finds them.
    #[serde(default, rename = "deletedUsers", skip_serializing_if = "Vec::is_empty")]
    pub deleted_users: Vec<SeedUser>,
}

/// A user in the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedUser {
    /// Object id (GUID).
    pub id: String,
    /// UPN.
    pub user_principal_name: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Primary SMTP address, if any.
    #[serde(default)]
    pub mail: Option<String>,
    /// `Member` or `Guest`.
    #[serde(default = "member_type")]
    pub user_type: Option<String>,
    /// Whether sign-in is allowed.
    #[serde(default = "yes")]
    pub account_enabled: bool,
    /// E-mail aliases, `SMTP:` for the primary, `smtp:` for the others.
    #[serde(default)]
    pub proxy_addresses: Vec<String>,
}

fn member_type() -> Option<String> {
    Some("Member".into())
}
fn yes() -> bool {
    true
}

impl SeedUser {
    /// A member user with mail = UPN and one primary proxy address.
    pub fn new(id: &str, upn: &str) -> SeedUser {
        SeedUser {
            id: id.to_ascii_lowercase(),
            user_principal_name: upn.into(),
            display_name: Some(upn.split('@').next().unwrap_or(upn).into()),
            mail: Some(upn.into()),
            user_type: member_type(),
            account_enabled: true,
            proxy_addresses: vec![format!("SMTP:{upn}")],
        }
    }
}

/// A group in the seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedGroup {
    /// Object id (GUID).
    pub id: String,
    /// Display name (not unique).
    pub display_name: String,
    /// `[]` for security groups, `["Unified"]`, `["DynamicMembership"]`…
    #[serde(default)]
    pub group_types: Vec<String>,
    /// Mail-enabled groups are read-only through Graph (unless Unified).
    #[serde(default)]
    pub mail_enabled: bool,
    /// Security group flag.
    #[serde(default = "yes")]
    pub security_enabled: bool,
    /// `true` when synced from on-premises AD (membership writes refused).
    #[serde(default)]
    pub on_premises_sync_enabled: Option<bool>,
    /// Role-assignable groups need RoleManagement rights to change membership.
    #[serde(default)]
    pub is_assignable_to_role: bool,
    /// The dynamic membership rule, if any.
    #[serde(default)]
    pub membership_rule: Option<String>,
    /// Group mail address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Direct member object ids.
    #[serde(default)]
    pub members: Vec<String>,
    /// Owner object ids (a person who owns a group may change its members with a delegated token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
}

impl SeedGroup {
    /// A plain cloud security group.
    pub fn security(id: &str, name: &str, members: Vec<String>) -> SeedGroup {
        SeedGroup {
            id: id.to_ascii_lowercase(),
            display_name: name.into(),
            group_types: vec![],
            mail_enabled: false,
            security_enabled: true,
            on_premises_sync_enabled: None,
            is_assignable_to_role: false,
            membership_rule: None,
            mail: None,
            members,
            owners: vec![],
        }
    }
}

/// Any other directory object (device, orgContact, servicePrincipal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedObject {
    /// Object id (GUID).
    pub id: String,
    /// e.g. `#microsoft.graph.device`.
    #[serde(rename = "@odata.type")]
    pub odata_type: String,
    /// Display name.
    #[serde(default, rename = "displayName")]
    pub display_name: Option<String>,
    /// Any further properties, returned as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A GUID-shaped id made from a kind digit and a number, e.g. `guid(1, 7)` = `00000001-0000-4000-8000-000000000007`.
pub fn guid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

impl Seed {
    /// An empty directory with a fixed tenant id.
    pub fn new() -> Seed {
        Seed {
            tenant_id: "7b3f1c52-0d0e-4a57-9a40-6f4a2f1e9c11".into(),
            users: vec![],
            groups: vec![],
            directory_objects: vec![],
            deleted_users: vec![],
        }
    }

    /// Reads a seed file (the `samples/fake-tenant.json` shape).
    pub fn from_file(path: &str) -> Result<Seed, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: line {}, column {}: {e}", e.line(), e.column()))
    }

    /// Adds `n` users `user{i}@contoso.example` (i = 1..=n, ids `guid(1, i)`) and returns their ids.
    pub fn add_users(&mut self, n: u64) -> Vec<String> {
        let start = self.users.len() as u64;
        (start + 1..=start + n)
            .map(|i| {
                let id = guid(1, i);
                self.users.push(SeedUser::new(&id, &format!("user{i}@contoso.example")));
                id
            })
            .collect()
    }

    /// Adds a security group with these members and returns its id (`guid(2, k)`).
    pub fn add_group(&mut self, name: &str, members: &[String]) -> String {
        let id = guid(2, self.groups.len() as u64 + 1);
        self.groups.push(SeedGroup::security(&id, name, members.to_vec()));
        id
    }

    /// `users` users, and one security group "Big Group" whose members are the first `members` of them.
    /// Fast enough for 100k members.
    pub fn generated(users: u64, members: u64) -> (Seed, String) {
        let mut seed = Seed::new();
        let ids = seed.add_users(users);
        let take = (members as usize).min(ids.len());
        let gid = seed.add_group("Big Group", ids.get(..take).unwrap_or(&[]));
        (seed, gid)
    }
}

impl Default for Seed {
    fn default() -> Self {
        Seed::new()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Configuration and faults.
// ---------------------------------------------------------------------------------------------------------

/// How the fake is set up: credentials, port, base path, token policy, and the starting faults.
#[derive(Debug, Clone)]
pub struct Config {
    /// 0 = any free port.
    pub port: u16,
    /// Where the Graph API is served, e.g. `/v1.0`.
    pub base_path: String,
    /// The app (client) id the token endpoint accepts.
    pub client_id: String,
    /// The client secret the token endpoint accepts.
    pub client_secret: String,
    /// If set, a certificate `client_assertion` must be an RS256 JWT signed by this key (DER: PKCS#1
    /// `RSAPublicKey` or SPKI). If unset, any well-formed, unexpired assertion for the client id is accepted.
    pub assertion_public_key: Option<Vec<u8>>,
    /// The application permissions (`roles`) of tokens issued to the app.
    pub app_roles: Vec<String>,
    /// The federated credential of the app registration (workload identity); `None` refuses every federated
    /// assertion.
    pub federated: Option<Federated>,
    /// The public-client app registration the device-code flow accepts.
    pub public_client_id: String,
    /// Who signs in at the device-code prompt; `None` refuses the device-code flow.
    pub device_user: Option<Person>,
    /// The answers to the device-code polls, in order; once used up, the sign-in succeeds.
    pub device_polls: Vec<DevicePoll>,
    /// The polling interval the device-code endpoint asks for, in seconds.
    pub device_interval: u64,
    /// The managed identity of the host; `None` answers "no identity" at the managed identity endpoints.
    pub managed_identity: Option<ManagedIdentity>,
    /// Graph's clock: answers carry a `Date` header this many seconds off the real time.
    pub date_offset: Option<i64>,
    /// How long issued tokens live.
    pub token_lifetime: Duration,
    /// If set, each issued token is good for this many Graph requests, then reports as expired.
    pub token_max_uses: Option<u64>,
    /// A bearer token accepted without the token endpoint (never expires).
    pub static_token: Option<String>,
    /// The order of `responses[]` in a `$batch` answer.
    pub batch_order: BatchOrder,
    /// Starting faults.
    pub faults: Faults,
    /// `false` plays an app granted GroupMember.Read.All but not User.Read.All: member users come back with only
    /// `@odata.type` and `id` (every other property `null`), and reading `/users` is refused with 403.
    pub user_read_all: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            base_path: "/v1.0".into(),
            client_id: "4a1c2b9e-5d6f-4e2a-8b7c-0f1e2d3c4b5a".into(),
            client_secret: "fake-graph-secret".into(),
            assertion_public_key: None,
            app_roles: vec!["GroupMember.ReadWrite.All".into(), "User.Read.All".into()],
            federated: None,
            public_client_id: "9d4a6c1e-2b7f-4e0a-8c3d-5f1e2a9b7c60".into(),
            device_user: None,
            device_polls: vec![],
            device_interval: 0,
            managed_identity: None,
            date_offset: None,
            token_lifetime: Duration::from_secs(3599),
            token_max_uses: None,
            static_token: None,
            batch_order: BatchOrder::Reversed,
            faults: Faults::default(),
            user_read_all: true,
        }
    }
}

/// The order of items in a `$batch` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrder {
    /// The order of the request.
    AsSent,
    /// Reversed.
    Reversed,
    /// Shuffled at random.
    Shuffled,
}

/// The trust an app registration's federated credential expresses: tokens from `issuer` about `subject` for
/// `audience`.
#[derive(Debug, Clone)]
pub struct Federated {
    /// e.g. `https://token.actions.githubusercontent.com`.
    pub issuer: String,
    /// e.g. `repo:contoso/writeback:ref:refs/heads/main`.
    pub subject: String,
    /// e.g. `api://AzureADTokenExchange`.
    pub audience: String,
}

impl Federated {
    /// A GitHub Actions style federated credential.
    pub fn github(repo: &str) -> Federated {
        Federated {
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: format!("repo:{repo}:ref:refs/heads/main"),
            audience: "api://AzureADTokenExchange".into(),
        }
    }

    /// A token this credential accepts (unsigned: the fake checks the claims, not the issuer's signature),
    /// valid for `lifetime` seconds.
    pub fn token(&self, lifetime: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake-issuer-key"});
        let claims = json!({
            "iss": self.issuer, "sub": self.subject, "aud": self.audience,
            "iat": now, "nbf": now, "exp": now + lifetime, "jti": uuid::Uuid::new_v4().to_string(),
        });
        format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes()),
            b64url(b"sig")
        )
    }
}

/// A person who signs in with a delegated token.
#[derive(Debug, Clone)]
pub struct Person {
    /// Object id.
    pub id: String,
    /// UPN.
    pub upn: String,
    /// The client app the token is for (the Azure CLI's, or the public client of the device-code flow).
    pub app_id: String,
    /// Delegated scopes (`scp`).
    pub scopes: Vec<String>,
    /// Directory role template ids active for the person (`wids`).
    pub wids: Vec<String>,
}

/// The Azure CLI's own app id (tokens from `az` are for it).
pub const AZURE_CLI_APP: &str = "04b07795-8ddb-461a-bbee-02f9e1bf7b46";
/// Directory role template id: Global Administrator.
pub const GLOBAL_ADMINISTRATOR: &str = "62e90394-69f5-4237-9190-012177145e10";
/// Directory role template id: Groups Administrator.
pub const GROUPS_ADMINISTRATOR: &str = "fdd7a751-b60b-444a-984c-02652fe8fa1c";
/// Directory role template id: User Administrator.
pub const USER_ADMINISTRATOR: &str = "fe930be7-5e62-47db-91af-98c3a49a38b1";
/// Directory role template id: Privileged Role Administrator.
pub const PRIVILEGED_ROLE_ADMINISTRATOR: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";

impl Person {
    /// A person with these scopes and directory roles, signed in through the Azure CLI.
    pub fn new(id: &str, upn: &str, scopes: &[&str], wids: &[&str]) -> Person {
        Person {
            id: id.to_ascii_lowercase(),
            upn: upn.into(),
            app_id: AZURE_CLI_APP.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            wids: wids.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Who a token was issued to.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An application acting as itself.
    App {
        /// Its client id.
        app_id: String,
        /// Its display name.
        name: String,
        /// Its application permissions.
        roles: Vec<String>,
    },
    /// A signed-in person.
    User(Person),
}

/// One answer of the device-code token poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`.
    SlowDown,
    /// `expired_token`.
    Expired,
    /// `authorization_declined`.
    Declined,
}

/// The managed identity of the host the fake plays.
#[derive(Debug, Clone)]
pub struct ManagedIdentity {
    /// Its client id (a user-assigned identity is asked for by it).
    pub client_id: String,
    /// The `IDENTITY_HEADER` secret the App Service style endpoint checks.
    pub identity_header: String,
    /// Its application permissions.
    pub roles: Vec<String>,
}

impl Default for ManagedIdentity {
    fn default() -> Self {
        ManagedIdentity {
            client_id: "3c5e7a91-4d2b-4f6e-9a8c-1b0d2e3f4a5b".into(),
            identity_header: "fake-identity-header-7Hq2".into(),
            roles: vec!["GroupMember.ReadWrite.All".into(), "User.Read.All".into()],
        }
    }
}

/// How a 429 states when to come back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`, fractional allowed (e.g. `0.05`, `2.128`).
    Seconds(f64),
    /// `Retry-After: <HTTP-date>`, this many whole seconds from now.
    HttpDate(u64),
    /// No `Retry-After` header at all (the client should back off on its own).
    Missing,
}

/// A token bucket of write operations (POST, PATCH, DELETE each cost one, also inside `$batch`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteQuota {
    /// Bucket size: this many writes per window.
    pub writes: u32,
    /// The time the bucket takes to refill completely.
    pub window: Duration,
}

/// Faults; changeable at runtime with [`FakeGraph::set_faults`] / [`FakeGraph::update_faults`].
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Every Nth Graph operation (a plain request or one `$batch` item) gets a 429.
    pub throttle_every: Option<u64>,
    /// The `Retry-After` on those 429s.
    pub retry_after: RetryAfter,
    /// Write quota (429 with `x-ms-throttle-information: WriteLimitExceeded` when exceeded).
    pub write_quota: Option<WriteQuota>,
    /// The next requests get these statuses, one each, front first (e.g. `[503, 503, 500]`).
    pub server_errors: Vec<u16>,
    /// Whether the 5xx answers carry `Retry-After` (in the `retry_after` form).
    pub server_error_retry_after: bool,
    /// The next K Graph requests: the connection is closed without an answer, before anything is done.
    pub drop_before: u32,
    /// The next K Graph requests are carried out, then the connection is closed without an answer.
    pub drop_after: u32,
    /// Every Graph request is answered after this delay.
    pub delay: Option<Duration>,
    /// A server-side page size cap below `$top` (pages are then shorter than asked, with a nextLink).
    pub max_page_size: Option<usize>,
    /// Once this many `$batch` requests were answered, every token issued so far expires (once; the fault then
    /// clears itself), as when a session is revoked in the middle of an apply.
    pub expire_tokens_after_batches: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            throttle_every: None,
            retry_after: RetryAfter::Seconds(0.05),
            write_quota: None,
            server_errors: vec![],
            server_error_retry_after: false,
            drop_before: 0,
            drop_after: 0,
            delay: None,
            max_page_size: None,
            expire_tokens_after_batches: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Request log.
// ---------------------------------------------------------------------------------------------------------

/// One request the fake received. `$batch` items are recorded too, with `batch_item` set.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival order.
    pub seq: u64,
    /// `GET`, `POST`…
    pub method: String,
    /// Path and query from the server root, e.g. `/v1.0/groups/…/members?$top=999` (batch items too).
    pub path: String,
    /// For a `$batch` item: (the `seq` of the `$batch` request, the item's `id`).
    pub batch_item: Option<(u64, String)>,
    /// A subset of request headers (lower-case names; the bearer token shortened).
    pub headers: Vec<(String, String)>,
    /// The body (JSON, or text; secrets in token requests redacted).
    pub body: Option<Value>,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    /// When it arrived.
    pub at: SystemTime,
    /// When it arrived, on the monotonic clock (for comparing waits).
    pub arrived: Instant,
    /// The `Retry-After` answered, as sent (a `$batch` item's from its `headers`).
    pub retry_after: Option<String>,
    /// The `request-id` the fake gave it (a `$batch` item has its own).
    pub request_id: String,
}

impl Recorded {
    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
    /// A query parameter (decoded), e.g. `q("$top")`.
    pub fn q(&self, name: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        parse_query(query).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    /// A recorded header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// A sign-in request: the token or device-code endpoint, or a managed identity endpoint.
    pub fn is_token(&self) -> bool {
        let p = self.path_only();
        p.ends_with("/oauth2/v2.0/token") || p.ends_with("/oauth2/v2.0/devicecode") || is_identity_path(p)
    }
    /// The `$batch` envelope itself.
    pub fn is_batch(&self) -> bool {
        self.batch_item.is_none() && self.path_only().ends_with("/$batch")
    }
    /// A write operation (POST/PATCH/PUT/DELETE to Graph, plain or inside a batch; not `$batch`, not token).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PATCH" | "PUT" | "DELETE") && !self.is_batch() && !self.is_token()
    }
    /// A request for one page of a group's members (`GET …/groups/{id}/members`, with or without a cast).
    pub fn is_member_page(&self, group_id: &str) -> bool {
        let p = self.path_only().to_ascii_lowercase();
        let needle = format!("/groups/{}/members", group_id.to_ascii_lowercase());
        self.method == "GET" && p.contains(&needle) && !p.ends_with("/$count")
    }
}

// ---------------------------------------------------------------------------------------------------------
// In-memory directory.
// ---------------------------------------------------------------------------------------------------------

struct Group {
    data: SeedGroup,
    members: BTreeMap<u64, String>,
    index: HashMap<String, u64>,
}

impl Group {
    fn add(&mut self, id: &str, seq: &mut u64) {
        *seq += 1;
        self.members.insert(*seq, id.to_string());
        self.index.insert(id.to_string(), *seq);
    }
    fn remove(&mut self, id: &str) -> bool {
        match self.index.remove(id) {
            Some(k) => {
                self.members.remove(&k);
                true
            }
            None => false,
        }
    }
    fn writable_error(&self) -> Option<(u16, &'static str, &'static str)> {
        let d = &self.data;
        let unified = d.group_types.iter().any(|t| t.eq_ignore_ascii_case("Unified"));
        if d.group_types.iter().any(|t| t.eq_ignore_ascii_case("DynamicMembership")) {
            return Some((
                400,
                "Request_BadRequest",
                "Insufficient privileges to complete the write operation: the group has dynamic membership.",
            ));
        }
        if d.on_premises_sync_enabled == Some(true) {
            return Some((
                400,
                "Request_BadRequest",
                "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
            ));
        }
        if d.mail_enabled && !unified {
            return Some((
                400,
                "Request_BadRequest",
                "Cannot Update a mail-enabled security groups and or distribution list.",
            ));
        }
        None
    }
}

#[derive(Default)]
struct Directory {
    users: HashMap<String, SeedUser>,
    /// Deleted users (the tenant's deleted items), by id.
    deleted: HashMap<String, SeedUser>,
    user_order: BTreeMap<u64, String>,
    user_seq: HashMap<String, u64>,
    groups: HashMap<String, Group>,
    group_order: BTreeMap<u64, String>,
    objects: HashMap<String, SeedObject>,
    seq: u64,
    /// Lower-cased id, UPN, mail and proxy addresses → user ids, so equality lookups need not scan every user.
    /// Never shrinks: a hit is only a candidate, checked against the filter and the user table.
    user_keys: HashMap<String, Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Group,
    Other,
}

impl Directory {
    fn load(seed: &Seed) -> Result<Directory, String> {
        let mut d = Directory::default();
        let mut seen = HashSet::new();
        for u in &seed.users {
            let id = checked_id(&u.id, "user")?;
            if !seen.insert(id.clone()) {
                return Err(format!("duplicate object id {id} (user {})", u.user_principal_name));
            }
            let mut u = u.clone();
            u.id = id.clone();
            d.insert_user(u);
        }
        for u in &seed.deleted_users {
            let id = checked_id(&u.id, "deleted user")?;
            if !seen.insert(id.clone()) {
                return Err(format!("duplicate object id {id} (deleted user {})", u.user_principal_name));
            }
            let mut u = u.clone();
            u.id = id.clone();
            d.deleted.insert(id, u);
        }
        for o in &seed.directory_objects {
            let id = checked_id(&o.id, "directory object")?;
            if !seen.insert(id.clone()) {
                return Err(format!("duplicate object id {id} (directory object)"));
            }
            let mut o = o.clone();
            o.id = id.clone();
            d.objects.insert(id, o);
        }
        for g in &seed.groups {
            let id = checked_id(&g.id, "group")?;
            if !seen.insert(id.clone()) {
                return Err(format!("duplicate object id {id} (group {})", g.display_name));
            }
            let mut data = g.clone();
            data.id = id.clone();
            data.members = vec![];
            d.seq += 1;
            d.group_order.insert(d.seq, id.clone());
            d.groups.insert(id, Group { data, members: BTreeMap::new(), index: HashMap::new() });
        }
        for g in &seed.groups {
            let gid = g.id.to_ascii_lowercase();
            for m in &g.members {
                let m = m.to_ascii_lowercase();
                if d.kind(&m).is_none() {
                    return Err(format!(
                        "group {} ({gid}): member {m} is not a user, group or directory object",
                        g.display_name
                    ));
                }
                let mut seq = d.seq;
                if let Some(group) = d.groups.get_mut(&gid) {
                    if group.index.contains_key(&m) {
                        return Err(format!("group {} ({gid}): member {m} listed twice", g.display_name));
                    }
                    group.add(&m, &mut seq);
                }
                d.seq = seq;
            }
        }
        Ok(d)
    }

    fn insert_user(&mut self, u: SeedUser) {
        let keys = [Some(&u.id), Some(&u.user_principal_name), u.mail.as_ref()]
            .into_iter()
            .flatten()
            .chain(u.proxy_addresses.iter())
            .map(|k| k.to_lowercase())
            .collect::<HashSet<_>>();
        for k in keys {
            self.user_keys.entry(k).or_default().push(u.id.clone());
        }
        self.seq += 1;
        self.user_order.insert(self.seq, u.id.clone());
        self.user_seq.insert(u.id.clone(), self.seq);
        self.users.insert(u.id.clone(), u);
    }

    fn kind(&self, id: &str) -> Option<Kind> {
        if self.users.contains_key(id) {
            Some(Kind::User)
        } else if self.groups.contains_key(id) {
            Some(Kind::Group)
        } else if self.objects.contains_key(id) {
            Some(Kind::Other)
        } else {
            None
        }
    }

    fn delete_object(&mut self, id: &str) -> bool {
        let found = if let Some(user) = self.users.remove(id) {
            if let Some(k) = self.user_seq.remove(id) {
                self.user_order.remove(&k);
            }
            self.deleted.insert(id.to_string(), user);
            true
        } else {
            self.objects.remove(id).is_some()
        };
        if found {
            for g in self.groups.values_mut() {
                g.remove(id);
            }
        }
        found
    }

    fn find_user(&self, key: &str) -> Option<&SeedUser> {
        let k = key.to_ascii_lowercase();
        self.users.get(&k).or_else(|| self.users.values().find(|u| u.user_principal_name.eq_ignore_ascii_case(key)))
    }

    /// All properties of an object as Graph names them; `default` = the ones returned without `$select`.
    fn props(&self, id: &str) -> Option<(Kind, Map<String, Value>, &'static [&'static str])> {
        if let Some(u) = self.users.get(id) {
            let mut m = Map::new();
            m.insert("id".into(), json!(u.id));
            m.insert("businessPhones".into(), json!([]));
            m.insert("displayName".into(), json!(u.display_name));
            m.insert("givenName".into(), Value::Null);
            m.insert("jobTitle".into(), Value::Null);
            m.insert("mail".into(), json!(u.mail));
            m.insert("mobilePhone".into(), Value::Null);
            m.insert("officeLocation".into(), Value::Null);
            m.insert("preferredLanguage".into(), Value::Null);
            m.insert("surname".into(), Value::Null);
            m.insert("userPrincipalName".into(), json!(u.user_principal_name));
            m.insert("accountEnabled".into(), json!(u.account_enabled));
            m.insert("userType".into(), json!(u.user_type));
            m.insert("proxyAddresses".into(), json!(u.proxy_addresses));
            m.insert("otherMails".into(), json!([]));
            m.insert("externalUserState".into(), Value::Null);
            const DEFAULT: &[&str] = &[
                "id",
                "businessPhones",
                "displayName",
                "givenName",
                "jobTitle",
                "mail",
                "mobilePhone",
                "officeLocation",
                "preferredLanguage",
                "surname",
                "userPrincipalName",
            ];
            return Some((Kind::User, m, DEFAULT));
        }
        if let Some(g) = self.groups.get(id) {
            let d = &g.data;
            let dynamic = d.group_types.iter().any(|t| t.eq_ignore_ascii_case("DynamicMembership"));
            let mut m = Map::new();
            m.insert("id".into(), json!(d.id));
            m.insert("createdDateTime".into(), json!("2024-01-01T00:00:00Z"));
            m.insert("description".into(), Value::Null);
            m.insert("displayName".into(), json!(d.display_name));
            m.insert("groupTypes".into(), json!(d.group_types));
            m.insert("isAssignableToRole".into(), json!(d.is_assignable_to_role));
            m.insert("mail".into(), json!(d.mail));
            m.insert("mailEnabled".into(), json!(d.mail_enabled));
            m.insert("mailNickname".into(), json!(d.display_name.replace(' ', "")));
            m.insert("membershipRule".into(), json!(d.membership_rule));
            m.insert("membershipRuleProcessingState".into(), if dynamic { json!("On") } else { Value::Null });
            m.insert("onPremisesSyncEnabled".into(), json!(d.on_premises_sync_enabled));
            m.insert("proxyAddresses".into(), json!([]));
            m.insert("securityEnabled".into(), json!(d.security_enabled));
            m.insert("visibility".into(), Value::Null);
            const ALL: &[&str] = &[
                "id",
                "createdDateTime",
                "description",
                "displayName",
                "groupTypes",
                "isAssignableToRole",
                "mail",
                "mailEnabled",
                "mailNickname",
                "membershipRule",
                "membershipRuleProcessingState",
                "onPremisesSyncEnabled",
                "proxyAddresses",
                "securityEnabled",
                "visibility",
            ];
            return Some((Kind::Group, m, ALL));
        }
        if let Some(o) = self.objects.get(id) {
            let mut m = Map::new();
            m.insert("id".into(), json!(o.id));
            m.insert("displayName".into(), json!(o.display_name));
            for (k, v) in &o.extra {
                m.insert(k.clone(), v.clone());
            }
            return Some((Kind::Other, m, &[]));
        }
        None
    }

    fn odata_type(&self, id: &str) -> String {
        match self.kind(id) {
            Some(Kind::User) => "#microsoft.graph.user".into(),
            Some(Kind::Group) => "#microsoft.graph.group".into(),
            _ => self
                .objects
                .get(id)
                .map(|o| o.odata_type.clone())
                .unwrap_or_else(|| "#microsoft.graph.directoryObject".into()),
        }
    }
}

fn checked_id(id: &str, what: &str) -> Result<String, String> {
    let id = id.to_ascii_lowercase();
    if is_guid(&id) {
        Ok(id)
    } else {
        Err(format!("{what} id {id:?} is not a GUID"))
    }
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

// ---------------------------------------------------------------------------------------------------------
// Shared state.
// ---------------------------------------------------------------------------------------------------------

struct Token {
    expires: Instant,
    uses: u64,
    principal: Principal,
}

/// A device code handed out and not yet used.
struct DeviceCode {
    client_id: String,
    polls: Vec<DevicePoll>,
}

struct State {
    cfg: Config,
    tenant_id: String,
    origin: String,
    dir: Directory,
    faults: Faults,
    op_counter: u64,
    bucket: Option<(f64, Instant)>,
    /// How far the write quota's clock is ahead of the real one ([`FakeGraph::advance_clock`]).
    skew: Duration,
    tokens: HashMap<String, Token>,
    device_codes: HashMap<String, DeviceCode>,
    refresh_tokens: HashMap<String, Principal>,
    /// The principal of the request being answered.
    current: Option<Principal>,
    page_tokens: HashMap<String, (String, u64)>,
    log: Vec<Recorded>,
    seq: u64,
    misuses: Vec<String>,
    hold: Arc<Hold>,
}

/// Holds Graph requests on demand (see [`FakeGraph::hold_requests`]).
#[derive(Default)]
struct Hold {
    /// Requests arriving now wait.
    on: std::sync::atomic::AtomicBool,
    /// Which requests wait: [`HOLD_ALL`], [`HOLD_WRITES`] or [`HOLD_USER_READS`].
    mode: std::sync::atomic::AtomicU8,
    /// How many requests that would be held are still let through first.
    pass: std::sync::atomic::AtomicU64,
    /// How many requests arrived while holding.
    arrived: Mutex<u64>,
    arrivals: std::sync::Condvar,
    release: tokio::sync::Notify,
}

/// What [`Hold`] holds: every Graph request, writes only, or reads of users only.
const HOLD_ALL: u8 = 0;
const HOLD_WRITES: u8 = 1;
const HOLD_USER_READS: u8 = 2;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn base_url(&self) -> String {
        format!("{}{}", self.origin, self.cfg.base_path)
    }
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

// ---------------------------------------------------------------------------------------------------------
// The handle tests use.
// ---------------------------------------------------------------------------------------------------------

/// A running fake Graph. Dropping it stops the server.
pub struct FakeGraph {
    /// Graph base URL, e.g. `http://127.0.0.1:PORT/v1.0` (`WRITEBACK_GRAPH_URL`).
    pub base_url: String,
    /// Authority root, e.g. `http://127.0.0.1:PORT` (`WRITEBACK_LOGIN_URL`); the token endpoint is
    /// `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub login_url: String,
    /// Tenant id (`AZURE_TENANT_ID`).
    pub tenant_id: String,
    /// Client id (`AZURE_CLIENT_ID`).
    pub client_id: String,
    /// Client secret (`AZURE_CLIENT_SECRET`).
    pub client_secret: String,
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeGraph {
    /// Starts a fake with this directory and the default [`Config`]. Panics if the seed is invalid.
    pub fn start(seed: Seed) -> FakeGraph {
        Self::start_with(seed, Config::default())
    }

    /// Starts a fake with this directory and configuration. Panics if the seed is invalid or the port is taken.
    pub fn start_with(seed: Seed, cfg: Config) -> FakeGraph {
        match Self::try_start(seed, cfg) {
            Ok(f) => f,
            Err(e) => panic!("fake Graph: {e}"),
        }
    }

    /// Like [`FakeGraph::start_with`], returning errors instead of panicking.
    pub fn try_start(seed: Seed, cfg: Config) -> Result<FakeGraph, String> {
        let dir = Directory::load(&seed)?;
        let tenant_id = checked_id(&seed.tenant_id, "tenant")?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", cfg.port)).map_err(|e| format!("bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let origin = format!("http://{addr}");
        let state = Arc::new(Mutex::new(State {
            faults: cfg.faults.clone(),
            cfg: cfg.clone(),
            tenant_id: tenant_id.clone(),
            origin: origin.clone(),
            dir,
            op_counter: 0,
            bucket: None,
            skew: Duration::ZERO,
            tokens: HashMap::new(),
            device_codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            current: None,
            page_tokens: HashMap::new(),
            log: vec![],
            seq: 0,
            misuses: vec![],
            hold: Arc::new(Hold::default()),
        }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-graph".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return eprintln!("fake Graph: runtime: {e}"),
                };
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => serve(l, rx, move |req| handle(st.clone(), req)).await,
                        Err(e) => eprintln!("fake Graph: listener: {e}"),
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(FakeGraph {
            base_url: format!("{origin}{}", cfg.base_path),
            login_url: origin,
            tenant_id,
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The environment variables that point writeback at this fake.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WRITEBACK_GRAPH_URL", self.base_url.clone()),
            ("WRITEBACK_LOGIN_URL", self.login_url.clone()),
            ("AZURE_TENANT_ID", self.tenant_id.clone()),
            ("AZURE_CLIENT_ID", self.client_id.clone()),
            ("AZURE_CLIENT_SECRET", self.client_secret.clone()),
        ]
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.login_url, self.tenant_id)
    }

    /// A fresh valid access token for the app (as if the token endpoint had been called).
    pub fn issue_token(&self) -> String {
        let mut st = self.st();
        let principal = app_principal(&st);
        issue(&mut st, principal)
    }

    /// A fresh valid delegated token for `person` (what `az account get-access-token` would print).
    pub fn issue_user_token(&self, person: &Person) -> String {
        issue(&mut self.st(), Principal::User(person.clone()))
    }

    /// The variables that point writeback at this fake without any credential.
    pub fn endpoints_env(&self) -> Vec<(&'static str, String)> {
        vec![("WRITEBACK_GRAPH_URL", self.base_url.clone()), ("WRITEBACK_LOGIN_URL", self.login_url.clone())]
    }

    /// The App Service style managed identity variables (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
    pub fn managed_identity_env(&self) -> Vec<(&'static str, String)> {
        let header = self.st().cfg.managed_identity.clone().unwrap_or_default().identity_header;
        vec![("IDENTITY_ENDPOINT", format!("{}/msi/token", self.login_url)), ("IDENTITY_HEADER", header)]
    }

    /// The principals of the tokens the fake issued, in no particular order.
    pub fn principals(&self) -> Vec<Principal> {
        self.st().tokens.values().map(|t| t.principal.clone()).collect()
    }

    /// The direct members of a group (object ids), in membership order. Empty if the group does not exist.
    pub fn members(&self, group_id: &str) -> Vec<String> {
        let st = self.st();
        st.dir
            .groups
            .get(&group_id.to_ascii_lowercase())
            .map(|g| g.members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether `object_id` is a direct member of the group.
    pub fn is_member(&self, group_id: &str, object_id: &str) -> bool {
        let st = self.st();
        st.dir
            .groups
            .get(&group_id.to_ascii_lowercase())
            .is_some_and(|g| g.index.contains_key(&object_id.to_ascii_lowercase()))
    }

    /// Adds a member directly (drift made behind the tool's back). Returns false if already a member.
    pub fn add_member(&self, group_id: &str, object_id: &str) -> bool {
        let mut st = self.st();
        let mut seq = st.dir.seq;
        let r = match st.dir.groups.get_mut(&group_id.to_ascii_lowercase()) {
            Some(g) if !g.index.contains_key(&object_id.to_ascii_lowercase()) => {
                g.add(&object_id.to_ascii_lowercase(), &mut seq);
                true
            }
            _ => false,
        };
        st.dir.seq = seq;
        r
    }

    /// Removes a member directly. Returns false if it was not a member.
    pub fn remove_member(&self, group_id: &str, object_id: &str) -> bool {
        let mut st = self.st();
        st.dir.groups.get_mut(&group_id.to_ascii_lowercase()).is_some_and(|g| g.remove(&object_id.to_ascii_lowercase()))
    }

    /// Adds a user directly.
    pub fn add_user(&self, user: SeedUser) {
        let mut u = user;
        u.id = u.id.to_ascii_lowercase();
        self.st().dir.insert_user(u);
    }

    /// Deletes a user (or other object) directly, also from every group.
    pub fn delete_object(&self, object_id: &str) -> bool {
        self.st().dir.delete_object(&object_id.to_ascii_lowercase())
    }

    /// From now on, Graph requests (not the token endpoint) wait before they are handled, until
    /// [`FakeGraph::release_requests`]. Each is counted as it arrives ([`FakeGraph::wait_for_held`]).
    pub fn hold_requests(&self) {
        self.hold(HOLD_ALL, 0);
    }

    /// Like [`FakeGraph::hold_requests`], for reads of users only (`/users…` and every `$batch`): a test changes
    /// the directory between a client's read of a group's members and its read of the users.
    pub fn hold_user_reads(&self) {
        self.hold(HOLD_USER_READS, 0);
    }

    /// Like [`FakeGraph::hold_requests`], for writes only (a `$batch` with a write among its items, a PATCH, a
    /// DELETE): reads, also a `$batch` of GETs, are answered; the first write waits.
    pub fn hold_writes(&self) {
        self.hold(HOLD_WRITES, 0);
    }

    /// Like [`FakeGraph::hold_writes`], after letting the next `n` writes through: a test catches a client in the
    /// middle of its writes, after exactly `n` of them were answered.
    pub fn hold_writes_after(&self, n: u64) {
        self.hold(HOLD_WRITES, n);
    }

    fn hold(&self, mode: u8, pass: u64) {
        let hold = self.st().hold.clone();
        *hold.arrived.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        hold.pass.store(pass, std::sync::atomic::Ordering::SeqCst);
        hold.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
        hold.on.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Blocks until `n` requests are waiting (or were held) since [`FakeGraph::hold_requests`]. Panics after a
    /// minute, so a client that never comes fails the test instead of hanging it.
    pub fn wait_for_held(&self, n: u64) {
        let hold = self.st().hold.clone();
        let guard = hold.arrived.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, timeout) = hold
            .arrivals
            .wait_timeout_while(guard, Duration::from_secs(60), |arrived| *arrived < n)
            .unwrap_or_else(|e| e.into_inner());
        assert!(!timeout.timed_out(), "fake Graph: {} of {n} held requests arrived", *guard);
    }

    /// Lets the held requests (and every later one) through.
    pub fn release_requests(&self) {
        let hold = self.st().hold.clone();
        hold.on.store(false, std::sync::atomic::Ordering::SeqCst);
        hold.release.notify_waiters();
    }

    /// Whether a user with this id is in the deleted items.
    pub fn is_deleted(&self, id: &str) -> bool {
        self.st().dir.deleted.contains_key(&id.to_ascii_lowercase())
    }

    /// Whether a user with this id exists.
    pub fn user_exists(&self, id: &str) -> bool {
        self.st().dir.users.contains_key(&id.to_ascii_lowercase())
    }

    /// All recorded requests, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        let mut v = self.st().log.clone();
        v.sort_by_key(|r| r.seq);
        v
    }

    /// How many recorded requests match.
    pub fn count(&self, f: impl Fn(&Recorded) -> bool) -> usize {
        self.st().log.iter().filter(|r| f(r)).count()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.st().log.clear();
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.st().faults.clone()
    }

    /// Replaces the faults (the throttle counter and the write bucket restart).
    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.st();
        st.faults = faults;
        st.op_counter = 0;
        st.bucket = None;
    }

    /// Changes the faults in place (counters keep running).
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        let mut st = self.st();
        let before = st.faults.write_quota;
        f(&mut st.faults);
        if st.faults.write_quota != before {
            st.bucket = None;
        }
    }

    /// Moves the write quota's clock forward by `by`, so a test sees the bucket refill without waiting for it.
    pub fn advance_clock(&self, by: Duration) {
        self.st().skew += by;
    }

    /// Makes every token issued so far expired (the next Graph call with one gets 401).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for t in self.st().tokens.values_mut() {
            t.expires = now;
        }
    }

    /// How many tokens the token endpoint has issued.
    pub fn tokens_issued(&self) -> usize {
        self.st().tokens.len()
    }

    /// Fatal misuses seen, e.g. a member DELETE without `/$ref` (which deletes the object itself).
    pub fn misuses(&self) -> Vec<String> {
        self.st().misuses.clone()
    }

    /// Panics if any fatal misuse was seen.
    pub fn assert_no_misuse(&self) {
        let m = self.misuses();
        assert!(m.is_empty(), "fake Graph saw fatal misuse: {m:#?}");
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

impl Drop for FakeGraph {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------------------
// HTTP serving (hyper, so a request can be answered by closing the connection).
// ---------------------------------------------------------------------------------------------------------

/// What an operation answers, before it becomes an HTTP response or a `$batch` item.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    text: bool,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer { status, headers: vec![], body: Some(body), text: false }
    }
    fn empty(status: u16) -> Answer {
        Answer { status, headers: vec![], body: None, text: false }
    }
    fn text(status: u16, s: String) -> Answer {
        Answer { status, headers: vec![], body: Some(Value::String(s)), text: true }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.into(), v.into()));
        self
    }
}

struct Ctx {
    request_id: String,
    client_request_id: String,
}

fn graph_error(ctx: &Ctx, status: u16, code: &str, message: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
            "request-id": ctx.request_id,
            "client-request-id": ctx.client_request_id,
        }}}),
    )
}

fn not_found(ctx: &Ctx, id: &str) -> Answer {
    graph_error(
        ctx,
        404,
        "Request_ResourceNotFound",
        &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
    )
}

fn bad(ctx: &Ctx, message: &str) -> Answer {
    graph_error(ctx, 400, "Request_BadRequest", message)
}

/// A request that changes something: not a GET, and not a `$batch` whose items are all GETs.
fn is_write(method: &Method, body: &[u8]) -> bool {
    if method == Method::GET {
        return false;
    }
    let items = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("requests").cloned());
    match items.as_ref().and_then(Value::as_array) {
        Some(items) => items.iter().any(|i| i.get("method").and_then(Value::as_str) != Some("GET")),
        None => true,
    }
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Body>) -> Result<Response<Body>, Dropped> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let method = parts.method.clone();
    let path_q = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let (path, query) = match path_q.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (path_q.clone(), String::new()),
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = header_str(&parts.headers, "client-request-id").unwrap_or(&request_id).to_string();
    let ctx = Ctx { request_id, client_request_id };
    let at = SystemTime::now();
    let arrived = Instant::now();

    // Sign-in: `/{tenant}/oauth2/v2.0/token` and `/devicecode`, and the managed identity endpoints.
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let sign_in = segs.len() == 4 && segs[1..3] == ["oauth2", "v2.0"] && ["token", "devicecode"].contains(&segs[3]);
    if sign_in || is_identity_path(&path) {
        let mut st = lock(&state);
        let seq = st.next_seq();
        let (ans, redacted) = match (method.as_str(), segs.last().copied()) {
            ("POST", _) if sign_in && segs[3] == "token" => {
                token_endpoint(&mut st, &ctx, segs[0], &parts.headers, &bytes)
            }
            ("POST", _) if sign_in => device_code_endpoint(&mut st, segs[0], &bytes),
            ("GET", _) if !sign_in => identity_endpoint(&mut st, &path, &query, &parts.headers),
            _ => (Answer::empty(405), None),
        };
        st.log.push(Recorded {
            seq,
            method: method.to_string(),
            path: path_q,
            batch_item: None,
            headers: header_subset(&parts.headers),
            body: redacted,
            status: ans.status,
            at,
            arrived,
            retry_after: None,
            request_id: ctx.request_id.clone(),
        });
        return Ok(to_response(ans, &ctx, false));
    }

    let (base, delay, hold) = {
        let st = lock(&state);
        (st.cfg.base_path.clone(), st.faults.delay, st.hold.clone())
    };
    let holds_this = match hold.mode.load(std::sync::atomic::Ordering::SeqCst) {
        HOLD_WRITES => is_write(&method, &bytes),
        HOLD_USER_READS => {
            let rel = strip_base(&path, &base).unwrap_or_default().to_ascii_lowercase();
            rel.starts_with("/users") || rel.starts_with("/$batch")
        }
        _ => true,
    };
    let passes = || {
        hold.pass
            .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                n.checked_sub(1)
            })
            .is_ok()
    };
    if holds_this && hold.on.load(std::sync::atomic::Ordering::SeqCst) && !passes() {
        let released = hold.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        {
            let mut arrived = hold.arrived.lock().unwrap_or_else(|e| e.into_inner());
            *arrived += 1;
            hold.arrivals.notify_all();
        }
        if hold.on.load(std::sync::atomic::Ordering::SeqCst) {
            released.await;
        }
    }
    let Some(rel) = strip_base(&path, &base) else {
        let ans = graph_error(&ctx, 404, "NotFound", &format!("No service at '{path}'."));
        return Ok(to_response(ans, &ctx, false));
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }

    let body_json: Option<Value> = if bytes.is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        )
    };

    let mut st = lock(&state);
    let seq = st.next_seq();
    let mut record = Recorded {
        seq,
        method: method.to_string(),
        path: path_q.clone(),
        batch_item: None,
        headers: header_subset(&parts.headers),
        body: body_json.clone(),
        status: 0,
        at,
        arrived,
        retry_after: None,
        request_id: ctx.request_id.clone(),
    };
    if st.faults.drop_before > 0 {
        st.faults.drop_before -= 1;
        st.log.push(record);
        return Err(Dropped);
    }
    let mut ans = if !st.faults.server_errors.is_empty() {
        let code = st.faults.server_errors.remove(0);
        let (c, m) = match code {
            500 => ("InternalServerError", "An internal server error occurred."),
            502 => ("BadGateway", "Bad gateway."),
            504 => (
                "GatewayTimeout",
                "The server, while acting as a proxy, did not receive a timely response from the upstream server.",
            ),
            _ => ("ServiceUnavailable", "The service is temporarily unavailable for maintenance or is overloaded."),
        };
        let a = graph_error(&ctx, code, c, m);
        if st.faults.server_error_retry_after {
            retry_after_header(a, st.faults.retry_after)
        } else {
            a
        }
    } else if let Err(a) = check_bearer(&mut st, &ctx, &parts.headers).map(|p| st.current = Some(p)) {
        a
    } else if rel.eq_ignore_ascii_case("/$batch") {
        if method == Method::POST {
            let answer = batch(&mut st, &ctx, seq, &base, body_json.as_ref());
            if let Some(n) = st.faults.expire_tokens_after_batches {
                st.faults.expire_tokens_after_batches = n.checked_sub(1).filter(|left| *left > 0);
                if n <= 1 {
                    let now = Instant::now();
                    st.tokens.values_mut().for_each(|t| t.expires = now);
                }
            }
            answer
        } else {
            graph_error(&ctx, 405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        }
    } else {
        let hdrs: Vec<(String, String)> =
            parts.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        operation(&mut st, &ctx, method.as_str(), &rel, &query, &hdrs, body_json.as_ref())
    };
    ans.headers.push(("x-ms-resource-unit".into(), "1".into()));
    if let Some(offset) = st.cfg.date_offset {
        let date = chrono::Utc::now() + chrono::Duration::seconds(offset);
        ans.headers.push(("Date".into(), date.format("%a, %d %b %Y %H:%M:%S GMT").to_string()));
    }
    record.status = ans.status;
    record.retry_after = header_value(&ans.headers, "Retry-After");
    if st.faults.drop_after > 0 {
        st.faults.drop_after -= 1;
        record.status = 0;
        st.log.push(record);
        return Err(Dropped);
    }
    st.log.push(record);
    drop(st);
    Ok(to_response(ans, &ctx, true))
}

fn strip_base(path: &str, base: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return Some(path.to_string());
    }
    let rest = path.get(..base.len()).filter(|p| p.eq_ignore_ascii_case(base)).and_then(|_| path.get(base.len()..))?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(if rest.is_empty() { "/".into() } else { rest.to_string() })
    } else {
        None
    }
}

fn to_response(ans: Answer, ctx: &Ctx, graph: bool) -> Response<Body> {
    let mut b =
        Response::builder().status(StatusCode::from_u16(ans.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if graph {
        b = b.header("request-id", &ctx.request_id).header("client-request-id", &ctx.client_request_id);
        b = b.header("Cache-Control", "no-cache");
    } else {
        b = b.header("x-ms-request-id", &ctx.request_id);
    }
    for (k, v) in &ans.headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            b = b.header(k.as_str(), v);
        }
    }
    let body = match ans.body {
        None => Body::empty(),
        Some(Value::String(s)) if ans.text => {
            b = b.header("Content-Type", "text/plain");
            Body::from(s)
        }
        Some(v) => {
            b = b.header("Content-Type", if graph { JSON_CT } else { "application/json; charset=utf-8" });
            Body::from(v.to_string())
        }
    };
    b.body(body).unwrap_or_else(|_| Response::new(Body::empty()))
}

fn header_value(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_subset(h: &HeaderMap) -> Vec<(String, String)> {
    const KEEP: &[&str] =
        &["authorization", "consistencylevel", "client-request-id", "content-type", "prefer", "user-agent", "accept"];
    h.iter()
        .filter(|(k, _)| KEEP.contains(&k.as_str()))
        .map(|(k, v)| {
            let v = v.to_str().unwrap_or("").to_string();
            let v = if k.as_str() == "authorization" { shorten_auth(&v) } else { v };
            (k.as_str().to_string(), v)
        })
        .collect()
}

fn shorten_auth(v: &str) -> String {
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let tail: String = rest.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{scheme} …{tail}")
}

// ---------------------------------------------------------------------------------------------------------
// Auth.
// ---------------------------------------------------------------------------------------------------------

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn app_principal(st: &State) -> Principal {
    let mut roles = st.cfg.app_roles.clone();
    if !st.cfg.user_read_all {
        roles.retain(|r| !r.eq_ignore_ascii_case("User.Read.All"));
    }
    Principal::App { app_id: st.cfg.client_id.clone(), name: "writeback (fake app)".into(), roles }
}

fn issue(st: &mut State, principal: Principal) -> String {
    let now = chrono::Utc::now().timestamp();
    let life = st.cfg.token_lifetime.as_secs().max(1) as i64;
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": "fake", "kid": "fake"});
    let mut payload = json!({
        "aud": "https://graph.microsoft.com",
        "iss": format!("https://sts.windows.net/{}/", st.tenant_id),
        "iat": now, "nbf": now, "exp": now + life,
        "sub": uuid::Uuid::new_v4().to_string(), "tid": st.tenant_id, "ver": "1.0",
    });
    let claims = match &principal {
        Principal::App { app_id, name, roles } => json!({
            "appid": app_id, "app_displayname": name, "idtyp": "app", "oid": uuid::Uuid::new_v4().to_string(),
            "roles": roles,
        }),
        Principal::User(p) => json!({
            "appid": p.app_id, "idtyp": "user", "oid": p.id, "upn": p.upn, "name": p.upn,
            "scp": p.scopes.join(" "), "wids": p.wids,
        }),
    };
    if let (Some(out), Some(extra)) = (payload.as_object_mut(), claims.as_object()) {
        out.extend(extra.clone());
    }
    let sig = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
    let tok = format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes()),
        b64url(&sig)
    );
    st.tokens.insert(tok.clone(), Token { expires: Instant::now() + st.cfg.token_lifetime, uses: 0, principal });
    tok
}

/// A token answer of the token endpoint for `principal`, with a refresh token when `refresh`.
fn token_answer(st: &mut State, principal: Principal, refresh: bool) -> Answer {
    let life = st.cfg.token_lifetime.as_secs();
    let tok = issue(st, principal.clone());
    let mut body = json!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": tok});
    if refresh {
        let rt = format!("fake-refresh-{}", uuid::Uuid::new_v4().simple());
        st.refresh_tokens.insert(rt.clone(), principal);
        body["refresh_token"] = json!(rt);
        body["scope"] = json!("https://graph.microsoft.com/.default");
    }
    Answer::json(200, body)
}

fn aad_error(status: u16, error: &str, code: u32, message: &str) -> Answer {
    let trace = uuid::Uuid::new_v4().to_string();
    let corr = uuid::Uuid::new_v4().to_string();
    let ts = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    Answer::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": "https://login.microsoftonline.com/error?code={code}",
        }),
    )
}

fn token_endpoint(st: &mut State, _ctx: &Ctx, tenant: &str, h: &HeaderMap, body: &[u8]) -> (Answer, Option<Value>) {
    let form: HashMap<String, String> = parse_query(&String::from_utf8_lossy(body)).into_iter().collect();
    let mut redacted = Map::new();
    for (k, v) in &form {
        let secret = ["client_secret", "client_assertion", "device_code", "refresh_token"].contains(&k.as_str());
        let v = if secret { "<redacted>".into() } else { v.clone() };
        redacted.insert(k.clone(), Value::String(v));
    }
    let redacted = Some(Value::Object(redacted));
    let a = |x: Answer| (x, redacted.clone());
    if !tenant.eq_ignore_ascii_case(&st.tenant_id) {
        return a(aad_error(
            400,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    // RFC 6749 Basic client authentication is also accepted.
    let mut client_id = form.get("client_id").cloned();
    let mut secret = form.get("client_secret").cloned();
    if let Some(basic) = header_str(h, "authorization").and_then(|v| v.strip_prefix("Basic ")) {
        if let Some((id, pw)) = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (pct_decode(a), pct_decode(b))))
        {
            client_id.get_or_insert(id);
            secret.get_or_insert(pw);
        }
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("urn:ietf:params:oauth:grant-type:device_code") => return a(device_code_poll(st, &form)),
        Some("refresh_token") => {
            let principal = form.get("refresh_token").and_then(|t| st.refresh_tokens.get(t)).cloned();
            return a(match principal {
                Some(p) => token_answer(st, p, true),
                None => aad_error(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."),
            });
        }
        Some(g) => {
            return a(aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{g}'."),
            ));
        }
        None => {
            return a(aad_error(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            ));
        }
    }
    let Some(client_id) = client_id else {
        return a(aad_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    if !client_id.eq_ignore_ascii_case(&st.cfg.client_id) {
        return a(aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", st.tenant_id),
        ));
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let own_scope = format!("{}/.default", st.origin);
    if scope != GRAPH_SCOPE && scope != own_scope {
        return a(aad_error(
            400,
            "invalid_scope",
            1002012,
            &format!("The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
        ));
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return a(aad_error(
                400,
                "invalid_request",
                50027,
                "Invalid JWT token. The client_assertion_type is not supported.",
            ));
        }
        let federated = assertion_issuer(assertion).is_some_and(|iss| !iss.eq_ignore_ascii_case(&client_id));
        let checked =
            if federated { check_federated(st, assertion) } else { check_assertion(st, tenant, &client_id, assertion) };
        if let Err((code, m)) = checked {
            return a(aad_error(401, "invalid_client", code, &m));
        }
    } else if let Some(secret) = secret {
        if secret != st.cfg.client_secret {
            return a(aad_error(
                401,
                "invalid_client",
                7000215,
                &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            ));
        }
    } else {
        return a(aad_error(
            400,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let principal = app_principal(st);
    a(token_answer(st, principal, false))
}

/// The `iss` claim of an assertion, when it is a readable JWT.
fn assertion_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// A federated assertion (workload identity): its issuer, subject and audience must match the app's federated
/// credential, and it must be unexpired.
fn check_federated(st: &State, jwt: &str) -> Result<(), (u32, String)> {
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or((50027, "Invalid JWT token. The token is malformed.".to_string()))?;
    let claim = |name: &str| payload.get(name).and_then(Value::as_str).unwrap_or("").to_string();
    let Some(f) = &st.cfg.federated else {
        return Err((70021, "No matching federated identity record found for presented assertion.".into()));
    };
    let audience_ok = match payload.get("aud") {
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(&f.audience)),
        Some(Value::String(x)) => *x == f.audience,
        _ => false,
    };
    if claim("iss") != f.issuer || claim("sub") != f.subject || !audience_ok {
        return Err((
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'.",
                claim("iss"),
                claim("sub"),
                f.audience
            ),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    if payload.get("exp").and_then(Value::as_i64).is_none_or(|exp| exp <= now) {
        return Err((700024, "Client assertion is not within its valid time range.".into()));
    }
    Ok(())
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
fn device_code_endpoint(st: &mut State, tenant: &str, body: &[u8]) -> (Answer, Option<Value>) {
    let form: HashMap<String, String> = parse_query(&String::from_utf8_lossy(body)).into_iter().collect();
    let redacted = Some(json!(form.clone()));
    let a = |x: Answer| (x, redacted.clone());
    if !tenant.eq_ignore_ascii_case(&st.tenant_id) && tenant != "organizations" {
        return a(aad_error(400, "invalid_request", 90002, &format!("Tenant '{tenant}' not found.")));
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    if !client_id.eq_ignore_ascii_case(&st.cfg.public_client_id) {
        return a(aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    if !scope.split_whitespace().any(|s| s == GRAPH_SCOPE) {
        return a(aad_error(
            400,
            "invalid_scope",
            70011,
            &format!("The provided value for scope {scope} is not valid."),
        ));
    }
    if st.cfg.device_user.is_none() {
        return a(aad_error(
            400,
            "invalid_client",
            7000218,
            "The app is not a public client (\"Allow public client flows\" is off).",
        ));
    }
    let device_code = format!("fake-device-code-{}", uuid::Uuid::new_v4().simple());
    let user_code = format!("{:08X}", uuid::Uuid::new_v4().as_u128() as u32);
    st.device_codes.insert(device_code.clone(), DeviceCode { client_id, polls: st.cfg.device_polls.clone() });
    a(Answer::json(
        200,
        json!({
            "device_code": device_code, "user_code": user_code,
            "verification_uri": "https://microsoft.com/devicelogin", "expires_in": 900,
            "interval": st.cfg.device_interval,
            "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {user_code} to authenticate."),
        }),
    ))
}

/// The device-code grant: the next scripted answer, then a delegated token for the configured person.
fn device_code_poll(st: &mut State, form: &HashMap<String, String>) -> Answer {
    let code = form.get("device_code").cloned().unwrap_or_default();
    let Some(entry) = st.device_codes.get_mut(&code) else {
        return aad_error(400, "bad_verification_code", 70019, "Verification code expired or unknown.");
    };
    if !form.get("client_id").is_some_and(|c| c.eq_ignore_ascii_case(&entry.client_id)) {
        return aad_error(400, "invalid_client", 700016, "The client id does not match the device code.");
    }
    if !entry.polls.is_empty() {
        return match entry.polls.remove(0) {
            DevicePoll::Pending => {
                aad_error(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending.")
            }
            DevicePoll::SlowDown => aad_error(400, "slow_down", 70016, "Polling too fast; slow down."),
            DevicePoll::Expired => {
                st.device_codes.remove(&code);
                aad_error(400, "expired_token", 70020, "The provided value for the input parameter 'device_code' is not valid. This device code has expired.")
            }
            DevicePoll::Declined => {
                st.device_codes.remove(&code);
                aad_error(400, "authorization_declined", 70000, "The user declined the sign-in.")
            }
        };
    }
    st.device_codes.remove(&code);
    match st.cfg.device_user.clone() {
        Some(mut person) => {
            person.app_id = st.cfg.public_client_id.clone();
            token_answer(st, Principal::User(person), true)
        }
        None => aad_error(400, "invalid_grant", 70000, "Nobody signed in."),
    }
}

/// The managed identity endpoints.
fn is_identity_path(path: &str) -> bool {
    let p = path.trim_end_matches('/').to_ascii_lowercase();
    p == "/msi/token" || p == "/metadata/identity/oauth2/token"
}

/// `GET /msi/token` (App Service: `X-IDENTITY-HEADER`, api-version 2019-08-01) and
/// `GET /metadata/identity/oauth2/token` (VM metadata service: `Metadata: true`, api-version 2018-02-01).
fn identity_endpoint(st: &mut State, path: &str, query: &str, h: &HeaderMap) -> (Answer, Option<Value>) {
    let q: HashMap<String, String> = parse_query(query).into_iter().collect();
    let app_service = path.to_ascii_lowercase().starts_with("/msi/");
    let mi_error = |status: u16, error: &str, description: &str| {
        Answer::json(status, json!({"error": error, "error_description": description}))
    };
    let Some(mi) = st.cfg.managed_identity.clone() else {
        return (mi_error(400, "invalid_request", "Identity not found"), None);
    };
    if app_service {
        if header_str(h, "x-identity-header") != Some(mi.identity_header.as_str()) {
            return (mi_error(401, "unauthorized", "X-IDENTITY-HEADER is missing or wrong"), None);
        }
        if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
            return (mi_error(400, "invalid_request", "api-version must be 2019-08-01"), None);
        }
    } else {
        if header_str(h, "metadata") != Some("true") {
            return (mi_error(400, "invalid_request", "Required metadata header not specified"), None);
        }
        if q.get("api-version").map(String::as_str) != Some("2018-02-01") {
            return (mi_error(400, "invalid_request", "api-version must be 2018-02-01"), None);
        }
    }
    if q.get("resource").map(String::as_str) != Some("https://graph.microsoft.com") {
        return (mi_error(400, "invalid_resource", "AADSTS500011: The resource principal was not found."), None);
    }
    if q.get("client_id").is_some_and(|c| !c.eq_ignore_ascii_case(&mi.client_id)) {
        return (mi_error(400, "invalid_request", "Identity not found"), None);
    }
    let principal = Principal::App {
        app_id: mi.client_id.clone(),
        name: "writeback host (managed identity)".into(),
        roles: mi.roles,
    };
    let tok = issue(st, principal);
    let life = st.cfg.token_lifetime.as_secs();
    let expires_on = (chrono::Utc::now().timestamp() + life as i64).to_string();
    let mut body = json!({
        "access_token": tok, "expires_on": expires_on, "resource": "https://graph.microsoft.com",
        "token_type": "Bearer", "client_id": mi.client_id,
    });
    if !app_service {
        body["expires_in"] = json!(life.to_string());
    }
    (Answer::json(200, body), None)
}

fn check_assertion(st: &State, tenant: &str, client_id: &str, jwt: &str) -> Result<(), (u32, String)> {
    check_certificate_assertion(st, tenant, client_id, jwt).map_err(|m| (700027, m))
}

fn check_certificate_assertion(st: &State, tenant: &str, client_id: &str, jwt: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, p, s] = parts[..] else { return Err("Client assertion is not a well-formed JWT.".into()) };
    let dec = |x: &str| -> Result<Value, String> {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| "Client assertion is not base64url.".to_string())?;
        serde_json::from_slice(&b).map_err(|_| "Client assertion part is not JSON.".to_string())
    };
    let header = dec(h)?;
    let payload = dec(p)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256")
        && header.get("alg").and_then(Value::as_str) != Some("PS256")
    {
        return Err("Client assertion must be signed with RS256 or PS256.".into());
    }
    if header.get("x5t").is_none() && header.get("x5t#S256").is_none() && header.get("kid").is_none() {
        return Err("Client assertion header has no x5t, x5t#S256 or kid.".into());
    }
    let iss = payload.get("iss").and_then(Value::as_str).unwrap_or("");
    let sub = payload.get("sub").and_then(Value::as_str).unwrap_or("");
    if !iss.eq_ignore_ascii_case(client_id) || !sub.eq_ignore_ascii_case(client_id) {
        return Err("Client assertion iss and sub must be the client id.".into());
    }
    let aud = payload.get("aud").and_then(Value::as_str).unwrap_or("");
    if !aud.to_ascii_lowercase().ends_with(&format!("/{}/oauth2/v2.0/token", tenant.to_ascii_lowercase())) {
        return Err(format!("Client assertion audience '{aud}' is not the token endpoint."));
    }
    let now = chrono::Utc::now().timestamp();
    let exp = payload.get("exp").and_then(Value::as_i64).unwrap_or(0);
    let nbf = payload.get("nbf").and_then(Value::as_i64).unwrap_or(now);
    if exp <= now || nbf > now + 300 {
        return Err("Client assertion is not within its valid time range.".into());
    }
    if s.is_empty() {
        return Err("Client assertion failed signature validation.".into());
    }
    if let Some(der) = &st.cfg.assertion_public_key {
        use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "Client assertion signature is not base64url.")?;
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .map_err(|_| "Client assertion failed signature validation.")?;
    }
    Ok(())
}

fn check_bearer(st: &mut State, ctx: &Ctx, h: &HeaderMap) -> Result<Principal, Answer> {
    let fail = |m: &str| {
        graph_error(ctx, 401, "InvalidAuthenticationToken", m).header(
            "WWW-Authenticate",
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"",
        )
    };
    let Some(tok) =
        header_str(h, "authorization").and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
    else {
        return Err(fail("Access token is empty."));
    };
    if st.cfg.static_token.as_deref() == Some(tok) {
        return Ok(app_principal(st));
    }
    let max_uses = st.cfg.token_max_uses;
    match st.tokens.get_mut(tok) {
        Some(t) => {
            t.uses += 1;
            if Instant::now() >= t.expires || max_uses.is_some_and(|m| t.uses > m) {
                Err(fail("Lifetime validation failed, the token is expired."))
            } else {
                Ok(t.principal.clone())
            }
        }
        None if !tok.contains('.') => Err(fail("IDX14100: JWT is not well formed, there are no dots (.).")),
        None => Err(fail("Access token validation failure. Invalid audience.")),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Permissions: what the principal of the request may do.
// ---------------------------------------------------------------------------------------------------------

fn holds(principal: Option<&Principal>, app: &[&str], delegated: &[&str]) -> bool {
    let (have, allowed): (&[String], &[&str]) = match principal {
        None => return true,
        Some(Principal::App { roles, .. }) => (roles, app),
        Some(Principal::User(p)) => (&p.scopes, delegated),
    };
    have.iter().any(|h| allowed.iter().any(|a| a.eq_ignore_ascii_case(h)))
}

const READ_GROUPS: &[&str] = &[
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const READ_USERS: &[&str] = &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"];
const WRITE_MEMBERS: &[&str] = &["GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All"];

fn with_user_impersonation(list: &[&'static str]) -> Vec<&'static str> {
    let mut out = list.to_vec();
    out.push("Directory.AccessAsUser.All");
    out
}

fn can_read_groups(st: &State) -> bool {
    holds(st.current.as_ref(), READ_GROUPS, &with_user_impersonation(READ_GROUPS))
}

fn can_read_users(st: &State) -> bool {
    st.cfg.user_read_all && holds(st.current.as_ref(), READ_USERS, &with_user_impersonation(READ_USERS))
}

/// Why the principal may not change this group's members, as Graph answers it.
fn write_refused(st: &State, ctx: &Ctx, g: &Group) -> Option<Answer> {
    let denied = || {
        Some(graph_error(ctx, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."))
    };
    let principal = st.current.as_ref();
    if !holds(principal, WRITE_MEMBERS, &with_user_impersonation(WRITE_MEMBERS)) {
        return denied();
    }
    let role_assignable = g.data.is_assignable_to_role;
    if role_assignable
        && !holds(principal, &["RoleManagement.ReadWrite.Directory"], &["RoleManagement.ReadWrite.Directory"])
    {
        return denied();
    }
    if let Some(Principal::User(p)) = principal {
        let has = |role: &str| p.wids.iter().any(|w| w.eq_ignore_ascii_case(role));
        let allowed = if role_assignable {
            has(GLOBAL_ADMINISTRATOR) || has(PRIVILEGED_ROLE_ADMINISTRATOR)
        } else {
            has(GLOBAL_ADMINISTRATOR)
                || has(GROUPS_ADMINISTRATOR)
                || has(USER_ADMINISTRATOR)
                || g.data.owners.iter().any(|o| o.eq_ignore_ascii_case(&p.id))
        };
        if !allowed {
            return denied();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------------------
// Throttling.
// ---------------------------------------------------------------------------------------------------------

fn retry_after_header(a: Answer, form: RetryAfter) -> Answer {
    match form {
        RetryAfter::Seconds(s) => a.header("Retry-After", fmt_secs(s)),
        RetryAfter::HttpDate(s) => {
            // Whole seconds, rounded up: the date never ends before the wait it stands for.
            let t = std::time::SystemTime::now() + Duration::from_secs(s) + Duration::from_millis(999);
            a.header("Retry-After", httpdate::fmt_http_date(t))
        }
        RetryAfter::Missing => a,
    }
}

fn too_many(ctx: &Ctx) -> Answer {
    let mut a = graph_error(ctx, 429, "TooManyRequests", "Please retry again later.");
    if let Some(inner) = a.body.as_mut().and_then(|b| b.pointer_mut("/error/innerError")).and_then(Value::as_object_mut)
    {
        inner.insert("code".into(), json!("429"));
        inner.insert("message".into(), json!("Please retry after"));
        inner.insert("status".into(), json!("429"));
    }
    a
}

/// Throttle and write-quota checks for one operation. `Some(answer)` = refused.
fn throttle(st: &mut State, ctx: &Ctx, method: &str) -> Option<Answer> {
    st.op_counter += 1;
    if let Some(n) = st.faults.throttle_every.filter(|n| *n > 0) {
        if st.op_counter.is_multiple_of(n) {
            let a = too_many(ctx).header(
                "x-ms-throttle-scope",
                format!("Tenant_Application/ReadWrite/{}/{}", st.tenant_id, st.cfg.client_id),
            );
            return Some(retry_after_header(a, st.faults.retry_after));
        }
    }
    let write = matches!(method, "POST" | "PATCH" | "PUT" | "DELETE");
    if let (true, Some(q)) = (write, st.faults.write_quota) {
        let cap = f64::from(q.writes.max(1));
        let rate = cap / q.window.as_secs_f64().max(1e-6);
        let now = Instant::now() + st.skew;
        let (mut tokens, last) = st.bucket.unwrap_or((cap, now));
        tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(cap);
        if tokens >= 1.0 {
            st.bucket = Some((tokens - 1.0, now));
        } else {
            st.bucket = Some((tokens, now));
            let wait = ((1.0 - tokens) / rate).max(0.001);
            let a = too_many(ctx)
                .header("Retry-After", fmt_secs(wait))
                .header("x-ms-throttle-information", "WriteLimitExceeded")
                .header(
                    "x-ms-throttle-scope",
                    format!("Tenant_Application/ReadWrite/{}/{}", st.tenant_id, st.cfg.client_id),
                );
            return Some(a);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------------------
// Operations (shared by plain requests and `$batch` items).
// ---------------------------------------------------------------------------------------------------------

fn operation(
    st: &mut State,
    ctx: &Ctx,
    method: &str,
    rel: &str,
    query: &str,
    headers: &[(String, String)],
    body: Option<&Value>,
) -> Answer {
    if let Some(a) = throttle(st, ctx, method) {
        return a;
    }
    let segs: Vec<String> = rel.trim_matches('/').split('/').filter(|s| !s.is_empty()).map(pct_decode).collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let q = Query::parse(query);
    let eventual = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("consistencylevel") && v.trim().eq_ignore_ascii_case("eventual"));
    let not_allowed =
        || graph_error(ctx, 405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.");
    let path_for_links = format!("/{}", segs.iter().map(|s| pct_encode_segment(s)).collect::<Vec<_>>().join("/"));
    if !can_read_users(st) && l.first() == Some(&"users") {
        return graph_error(
            ctx,
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    if method == "GET" && l.first() == Some(&"groups") && !can_read_groups(st) {
        return graph_error(
            ctx,
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    match (method, l.as_slice()) {
        ("GET", ["organization"]) => {
            let base = st.base_url();
            Answer::json(
                200,
                json!({"@odata.context": format!("{base}/$metadata#organization"), "value": [{
                    "id": st.tenant_id, "displayName": "Contoso (fake)",
                    "verifiedDomains": [{"name": "contoso.example", "isDefault": true, "isInitial": true, "type": "Managed"}]
                }]}),
            )
        }
        ("GET", ["users"]) => list_users(st, ctx, &q, eventual, &path_for_links, query),
        ("GET", ["users", "$count"]) => count(st, ctx, eventual, st.dir.users.len()),
        ("GET", ["users", _]) => match st.dir.find_user(&segs[1]).map(|u| u.id.clone()) {
            Some(id) => entity(st, ctx, &id, &q, "users"),
            None => not_found(ctx, &segs[1]),
        },
        ("DELETE", ["users", _]) => match st.dir.find_user(&segs[1]).map(|u| u.id.clone()) {
            Some(id) => {
                st.dir.delete_object(&id);
                Answer::empty(204)
            }
            None => not_found(ctx, &segs[1]),
        },
        ("GET", ["directory", "deleteditems", id]) => deleted_item(st, ctx, id, &q),
        ("GET", ["directoryobjects", id]) => match st.dir.kind(id) {
            Some(_) => entity(st, ctx, id, &q, "directoryObjects"),
            None => not_found(ctx, id),
        },
        ("GET", ["groups"]) => list_groups(st, ctx, &q, &path_for_links, query),
        ("GET", ["groups", id]) => match st.dir.groups.contains_key(*id) {
            true => entity(st, ctx, id, &q, "groups"),
            false => not_found(ctx, id),
        },
        ("PATCH", ["groups", id]) => patch_group(st, ctx, id, body),
        ("GET", ["groups", id, "members"]) => list_members(st, ctx, id, &q, eventual, &path_for_links, query, false),
        ("GET", ["groups", id, "members", "microsoft.graph.user"]) => {
            list_members(st, ctx, id, &q, eventual, &path_for_links, query, true)
        }
        ("GET", ["groups", id, "owners"]) => match st.dir.groups.get(*id) {
            Some(g) => {
                let owners: Vec<Value> =
                    g.data.owners.iter().map(|o| json!({"@odata.type": st.dir.odata_type(o), "id": o})).collect();
                Answer::json(200, json!({"value": owners}))
            }
            None => not_found(ctx, id),
        },
        ("GET", ["groups", id, "members", "$count"]) => match st.dir.groups.get(*id).map(|g| g.members.len()) {
            Some(n) => count(st, ctx, eventual, n),
            None => not_found(ctx, id),
        },
        ("POST", ["groups", id, "members", "$ref"]) => post_ref(st, ctx, id, body),
        ("DELETE", ["groups", gid, "members", mid, "$ref"]) => delete_ref(st, ctx, gid, mid),
        ("DELETE", ["groups", gid, "members", mid]) => {
            st.misuses.push(format!(
                "DELETE {rel} without /$ref: deletes object {mid} itself, not only its membership in group {gid}"
            ));
            if st.dir.groups.contains_key(*gid) && st.dir.kind(mid).is_some() {
                st.dir.delete_object(mid);
                Answer::empty(204)
            } else {
                not_found(ctx, gid)
            }
        }
        (_, ["organization"] | ["users"] | ["users", _] | ["groups"] | ["groups", _] | ["groups", _, "members"])
        | (_, ["directory", "deleteditems", _])
        | (_, ["groups", _, "members", "$ref"] | ["groups", _, "members", _, "$ref"]) => not_allowed(),
        (_, [first, ..]) => graph_error(
            ctx,
            400,
            "BadRequest",
            &format!("Resource not found for the segment '{}'.", segs.first().map(String::as_str).unwrap_or(first)),
        ),
        (_, []) => graph_error(ctx, 400, "BadRequest", "Invalid request."),
    }
}

/// `GET /directory/deletedItems/{id}`: a deleted user (User.Read.All suffices), else 404 as Graph answers for an
/// id that is not in the deleted items.
fn deleted_item(st: &State, ctx: &Ctx, id: &str, q: &Query) -> Answer {
    if !st.cfg.user_read_all {
        return graph_error(
            ctx,
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let Some(u) = st.dir.deleted.get(id) else { return not_found(ctx, id) };
    let mut all = Map::new();
    all.insert("id".into(), json!(u.id));
    all.insert("displayName".into(), json!(u.display_name));
    all.insert("mail".into(), json!(u.mail));
    all.insert("userPrincipalName".into(), json!(u.user_principal_name));
    all.insert("accountEnabled".into(), json!(u.account_enabled));
    all.insert("userType".into(), json!(u.user_type));
    all.insert("deletedDateTime".into(), json!("2024-06-01T00:00:00Z"));
    let default = &["id", "displayName", "mail", "userPrincipalName", "deletedDateTime"];
    match project(ctx, &all, default, q.select.as_deref(), "user", true) {
        Ok(m) => {
            let mut o = Map::new();
            o.insert("@odata.context".into(), json!(format!("{}/$metadata#directoryObjects/$entity", st.base_url())));
            o.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            o.extend(m);
            Answer::json(200, Value::Object(o))
        }
        Err(a) => a,
    }
}

fn count(_st: &State, ctx: &Ctx, eventual: bool, n: usize) -> Answer {
    if eventual {
        Answer::text(200, n.to_string())
    } else {
        bad(ctx, "$count is not currently supported.")
    }
}

/// Parsed system query options.
struct Query {
    select: Option<Vec<String>>,
    top: Option<String>,
    filter: Option<String>,
    skiptoken: Option<String>,
    count: bool,
}

impl Query {
    fn parse(q: &str) -> Query {
        let mut out = Query { select: None, top: None, filter: None, skiptoken: None, count: false };
        for (k, v) in parse_query(q) {
            match k.as_str() {
                "$select" => {
                    out.select = Some(v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                }
                "$top" => out.top = Some(v),
                "$filter" => out.filter = Some(v),
                "$skiptoken" => out.skiptoken = Some(v),
                "$count" => out.count = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        out
    }

    fn page_size(&self, ctx: &Ctx, cap: Option<usize>) -> Result<usize, Answer> {
        let n = match &self.top {
            None => 100,
            Some(t) => match t.trim().parse::<i64>() {
                Ok(n) if (1..=999).contains(&n) => n as usize,
                _ => {
                    return Err(bad(
                        ctx,
                        &format!("Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."),
                    ));
                }
            },
        };
        Ok(cap.map_or(n, |c| n.min(c.max(1))))
    }
}

/// Projects an object's properties: `$select` (case-insensitive names) or the default set. `strict` = unknown
/// names are an error (single-type collections); otherwise they are left out (directoryObject collections).
fn project(
    ctx: &Ctx,
    all: &Map<String, Value>,
    default: &[&str],
    select: Option<&[String]>,
    type_name: &str,
    strict: bool,
) -> Result<Map<String, Value>, Answer> {
    let mut out = Map::new();
    match select {
        Some(sel) => {
            for s in sel {
                if s == "*" {
                    for (k, v) in all {
                        out.insert(k.clone(), v.clone());
                    }
                    continue;
                }
                match all.iter().find(|(k, _)| k.eq_ignore_ascii_case(s)) {
                    Some((k, v)) => {
                        out.insert(k.clone(), v.clone());
                    }
                    None if strict => {
                        return Err(bad(
                            ctx,
                            &format!("Could not find a property named '{s}' on type 'microsoft.graph.{type_name}'."),
                        ));
                    }
                    None => {}
                }
            }
        }
        None if default.is_empty() => out = all.clone(),
        None => {
            for d in default {
                if let Some(v) = all.get(*d) {
                    out.insert((*d).to_string(), v.clone());
                }
            }
        }
    }
    Ok(out)
}

fn entity(st: &State, ctx: &Ctx, id: &str, q: &Query, set: &str) -> Answer {
    let Some((kind, all, default)) = st.dir.props(id) else { return not_found(ctx, id) };
    let type_name = match kind {
        Kind::User => "user",
        Kind::Group => "group",
        Kind::Other => "directoryObject",
    };
    match project(ctx, &all, default, q.select.as_deref(), type_name, kind != Kind::Other) {
        Ok(m) => {
            let mut o = Map::new();
            o.insert("@odata.context".into(), json!(format!("{}/$metadata#{set}/$entity", st.base_url())));
            if set == "directoryObjects" {
                o.insert("@odata.type".into(), json!(st.dir.odata_type(id)));
            }
            o.extend(m);
            Answer::json(200, Value::Object(o))
        }
        Err(a) => a,
    }
}

/// Renders one collection item (or refuses the request).
type ItemFn<'a> = dyn Fn(&State, &str) -> Result<Map<String, Value>, Answer> + 'a;

/// The page size (`$top`, capped by the server-side fault) and the cursor: the sequence number the previous page
/// ended at (0 on the first page). A token that is unknown or was issued for another collection has expired.
fn cursor(st: &State, ctx: &Ctx, q: &Query, collection: &str) -> Result<(usize, u64), Answer> {
    let size = q.page_size(ctx, st.faults.max_page_size)?;
    let after = match &q.skiptoken {
        None => 0,
        Some(t) => match st.page_tokens.get(t) {
            Some((c, after)) if c == collection => *after,
            _ => {
                return Err(graph_error(
                    ctx,
                    400,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                ));
            }
        },
    };
    Ok((size, after))
}

/// The sequence numbers after the cursor `after`, for a `BTreeMap::range`.
fn after_cursor(after: u64) -> (Bound<u64>, Bound<u64>) {
    (Bound::Excluded(after), Bound::Unbounded)
}

/// Whether the object `id` passes `filter` (no filter passes everything).
fn passes(dir: &Directory, filter: Option<&Filter>, id: &str) -> bool {
    filter.is_none_or(|f| dir.props(id).is_some_and(|(_, all, _)| f.eval(&all).unwrap_or(false)))
}

/// Answers one page. `ids` = the items after the cursor, ordered by sequence, at most `size + 1` of them (one more
/// than the page says there is a next page); `count` = the `@odata.count` to report, if any. The callers read
/// only these from a range after the cursor, so a page costs its own size (and what a filter skips), not the
/// collection's.
#[allow(clippy::too_many_arguments)]
fn page(
    st: &mut State,
    collection: &str,
    size: usize,
    ids: Vec<(u64, String)>,
    count: Option<usize>,
    item: &ItemFn<'_>,
    context: &str,
    path: &str,
    raw_query: &str,
) -> Answer {
    let mut value = Vec::with_capacity(size.min(ids.len()));
    for (_, id) in ids.iter().take(size) {
        match item(st, id) {
            Ok(m) => value.push(Value::Object(m)),
            Err(a) => return a,
        }
    }
    let mut o = Map::new();
    o.insert("@odata.context".into(), json!(context));
    if let Some(total) = count {
        o.insert("@odata.count".into(), json!(total));
    }
    if ids.len() > size {
        if let Some((last, _)) = ids.get(size - 1) {
            let token = format!("RFNwdAIAAQAAA{}", uuid::Uuid::new_v4().simple());
            st.page_tokens.insert(token.clone(), (collection.to_string(), *last));
            let kept: Vec<&str> = raw_query
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let k = p.split('=').next().unwrap_or("");
                    pct_decode(k) != "$skiptoken"
                })
                .collect();
            let mut qs = kept.join("&");
            if !qs.is_empty() {
                qs.push('&');
            }
            qs.push_str("$skiptoken=");
            qs.push_str(&token);
            o.insert("@odata.nextLink".into(), json!(format!("{}{path}?{qs}", st.base_url())));
        }
    }
    o.insert("value".into(), Value::Array(value));
    Answer::json(200, Value::Object(o))
}

#[allow(clippy::too_many_arguments)]
fn list_members(
    st: &mut State,
    ctx: &Ctx,
    gid: &str,
    q: &Query,
    eventual: bool,
    path: &str,
    raw_query: &str,
    users_only: bool,
) -> Answer {
    let Some(g) = st.dir.groups.get(gid) else { return not_found(ctx, gid) };
    if q.filter.is_some() && !eventual {
        return graph_error(ctx, 400, "Request_UnsupportedQuery", "Unsupported Query.");
    }
    let filter = match q.filter.as_deref().map(parse_filter).transpose() {
        Ok(f) => f,
        Err(m) => return graph_error(ctx, 400, "Request_UnsupportedQuery", &m),
    };
    let key = format!("members:{gid}:{users_only}");
    let (size, after) = match cursor(st, ctx, q, &key) {
        Ok(c) => c,
        Err(a) => return a,
    };
    let dir = &st.dir;
    let wanted = |id: &str| (!users_only || dir.users.contains_key(id)) && passes(dir, filter.as_ref(), id);
    let ids: Vec<(u64, String)> = g
        .members
        .range(after_cursor(after))
        .filter(|(_, id)| wanted(id))
        .take(size.saturating_add(1))
        .map(|(s, id)| (*s, id.clone()))
        .collect();
    let count =
        (q.count && eventual && q.skiptoken.is_none()).then(|| g.members.values().filter(|id| wanted(id)).count());
    let sel = q.select.clone();
    let item = move |st: &State, id: &str| -> Result<Map<String, Value>, Answer> {
        let mut m = Map::new();
        m.insert("@odata.type".into(), json!(st.dir.odata_type(id)));
        if let Some((kind, all, default)) = st.dir.props(id) {
            let p = project(
                ctx,
                &all,
                if kind == Kind::Other { &["id", "displayName"] } else { default },
                sel.as_deref(),
                "",
                false,
            )?;
            m.extend(p);
            if kind == Kind::User && !can_read_users(st) {
                // Limited information: only the type and the id (the Graph docs' "returned as null").
                for (k, v) in m.iter_mut() {
                    if k != "id" && k != "@odata.type" {
                        *v = Value::Null;
                    }
                }
            }
        }
        Ok(m)
    };
    let context = format!("{}/$metadata#{}", st.base_url(), if users_only { "users" } else { "directoryObjects" });
    page(st, &key, size, ids, count, &item, &context, path, raw_query)
}

fn list_users(st: &mut State, ctx: &Ctx, q: &Query, eventual: bool, path: &str, raw_query: &str) -> Answer {
    let filter = match q.filter.as_deref().map(parse_filter).transpose() {
        Ok(f) => f,
        Err(m) => return graph_error(ctx, 400, "Request_UnsupportedQuery", &m),
    };
    if let Some(f) = &filter {
        if let Err(m) = f.check_props(USER_FILTERABLE, "User") {
            return graph_error(ctx, 400, "Request_UnsupportedQuery", &m);
        }
    }
    let dir = &st.dir;
    let wanted = |id: &str| passes(dir, filter.as_ref(), id);
    // Only equality on indexed properties: the index gives every possible match (and perhaps more), so the whole
    // filtered collection is small. Otherwise pages are read from the sequence order after the cursor.
    let indexed: Option<Vec<(u64, String)>> = filter.as_ref().and_then(Filter::indexed_literals).map(|keys| {
        let mut ids: Vec<(u64, String)> = keys
            .iter()
            .flat_map(|k| dir.user_keys.get(k).into_iter().flatten())
            .filter_map(|id| dir.user_seq.get(id).map(|s| (*s, id.clone())))
            .collect();
        ids.sort();
        ids.dedup();
        ids.retain(|(_, id)| wanted(id));
        ids
    });
    if let Some(sel) = &q.select {
        // `$select` is checked against the collection's first (filtered) user, whichever page is asked for.
        let first = match &indexed {
            Some(ids) => ids.first().map(|(_, id)| id.as_str()),
            None => dir.user_order.values().map(String::as_str).find(|id| wanted(id)),
        };
        if let Some((_, all, _)) = first.and_then(|id| dir.props(id)) {
            if let Err(a) = project(ctx, &all, &[], Some(sel), "user", true) {
                return a;
            }
        }
    }
    let (size, after) = match cursor(st, ctx, q, "users") {
        Ok(c) => c,
        Err(a) => return a,
    };
    let with_count = q.count && eventual && q.skiptoken.is_none();
    let (ids, count): (Vec<(u64, String)>, Option<usize>) = match indexed {
        Some(ids) => {
            let count = with_count.then_some(ids.len());
            (ids.into_iter().filter(|(s, _)| *s > after).take(size.saturating_add(1)).collect(), count)
        }
        None => (
            dir.user_order
                .range(after_cursor(after))
                .filter(|(_, id)| wanted(id))
                .take(size.saturating_add(1))
                .map(|(s, id)| (*s, id.clone()))
                .collect(),
            with_count.then(|| dir.user_order.values().filter(|id| wanted(id)).count()),
        ),
    };
    let sel = q.select.clone();
    let item = move |st: &State, id: &str| -> Result<Map<String, Value>, Answer> {
        let (_, all, default) = st.dir.props(id).ok_or_else(|| not_found(ctx, id))?;
        project(ctx, &all, default, sel.as_deref(), "user", true)
    };
    let context = format!("{}/$metadata#users", st.base_url());
    page(st, "users", size, ids, count, &item, &context, path, raw_query)
}

fn list_groups(st: &mut State, ctx: &Ctx, q: &Query, path: &str, raw_query: &str) -> Answer {
    let filter = match q.filter.as_deref().map(parse_filter).transpose() {
        Ok(f) => f,
        Err(m) => return graph_error(ctx, 400, "Request_UnsupportedQuery", &m),
    };
    if let Some(f) = &filter {
        if let Err(m) = f.check_props(GROUP_FILTERABLE, "Group") {
            return graph_error(ctx, 400, "Request_UnsupportedQuery", &m);
        }
    }
    let (size, after) = match cursor(st, ctx, q, "groups") {
        Ok(c) => c,
        Err(a) => return a,
    };
    let ids: Vec<(u64, String)> = st
        .dir
        .group_order
        .range(after_cursor(after))
        .filter(|(_, id)| passes(&st.dir, filter.as_ref(), id))
        .take(size.saturating_add(1))
        .map(|(s, id)| (*s, id.clone()))
        .collect();
    let sel = q.select.clone();
    let item = move |st: &State, id: &str| -> Result<Map<String, Value>, Answer> {
        let (_, all, default) = st.dir.props(id).ok_or_else(|| not_found(ctx, id))?;
        project(ctx, &all, default, sel.as_deref(), "group", true)
    };
    let context = format!("{}/$metadata#groups", st.base_url());
    page(st, "groups", size, ids, None, &item, &context, path, raw_query)
}

/// The object id in a `https://graph.microsoft.com/v1.0/directoryObjects/{id}` reference.
fn ref_id(st: &State, url: &str) -> Option<String> {
    let own = st.base_url();
    let rest = [GRAPH_ROOT, own.as_str()].iter().find_map(|root| {
        url.get(..root.len()).filter(|p| p.eq_ignore_ascii_case(root)).and_then(|_| url.get(root.len()..))
    })?;
    let mut it = rest.trim_start_matches('/').split('/');
    let set = it.next()?.to_ascii_lowercase();
    let id = it.next()?.to_ascii_lowercase();
    if it.next().is_some()
        || !matches!(set.as_str(), "directoryobjects" | "users" | "groups" | "devices" | "contacts")
        || !is_guid(&id)
    {
        return None;
    }
    Some(id)
}

fn member_type_error(st: &State, ctx: &Ctx, g: &Group, id: &str) -> Option<Answer> {
    let unified = g.data.group_types.iter().any(|t| t.eq_ignore_ascii_case("Unified"));
    let kind = st.dir.kind(id)?;
    if id == g.data.id {
        return Some(bad(ctx, "A group cannot be a member of itself."));
    }
    if unified && kind != Kind::User {
        return Some(bad(ctx, "Only users can be members of a Microsoft 365 group."));
    }
    if kind == Kind::Group {
        if let Some(inner) = st.dir.groups.get(id) {
            if inner.data.group_types.iter().any(|t| t.eq_ignore_ascii_case("Unified")) {
                return Some(bad(ctx, "A Microsoft 365 group cannot be a member of another group."));
            }
        }
    }
    None
}

fn post_ref(st: &mut State, ctx: &Ctx, gid: &str, body: Option<&Value>) -> Answer {
    let Some(g) = st.dir.groups.get(gid) else { return not_found(ctx, gid) };
    if let Some(a) = write_refused(st, ctx, g) {
        return a;
    }
    if let Some((s, c, m)) = g.writable_error() {
        return graph_error(ctx, s, c, m);
    }
    let Some(url) = body.and_then(|b| b.get("@odata.id")).and_then(Value::as_str) else {
        return bad(ctx, "The request body must contain '@odata.id'.");
    };
    let Some(id) = ref_id(st, url) else {
        return bad(ctx, &format!("Invalid object identifier '{url}'."));
    };
    if st.dir.kind(&id).is_none() {
        return not_found(ctx, &id);
    }
    if g.index.contains_key(&id) {
        return bad(ctx, ALREADY_EXISTS);
    }
    if let Some(a) = member_type_error(st, ctx, g, &id) {
        return a;
    }
    let mut seq = st.dir.seq;
    if let Some(g) = st.dir.groups.get_mut(gid) {
        g.add(&id, &mut seq);
    }
    st.dir.seq = seq;
    Answer::empty(204)
}

fn patch_group(st: &mut State, ctx: &Ctx, gid: &str, body: Option<&Value>) -> Answer {
    let Some(g) = st.dir.groups.get(gid) else { return not_found(ctx, gid) };
    let Some(obj) = body.and_then(Value::as_object) else {
        return bad(ctx, "The request body is missing or is not a JSON object.");
    };
    let mut adds: Vec<String> = vec![];
    let mut new_name = None;
    let mut new_description = None;
    for (k, v) in obj {
        match k.as_str() {
            "members@odata.bind" => {
                let Some(arr) = v.as_array() else { return bad(ctx, "'members@odata.bind' must be an array.") };
                if arr.len() > 20 {
                    return bad(
                        ctx,
                        "Too many references to add in one request: at most 20 members can be added at a time.",
                    );
                }
                for r in arr {
                    let Some(id) = r.as_str().and_then(|u| ref_id(st, u)) else {
                        return bad(ctx, "Invalid URL format specified in @odata.bind for members");
                    };
                    adds.push(id);
                }
            }
            "displayName" => new_name = v.as_str().map(str::to_string),
            "description" => new_description = Some(v.clone()),
            other => {
                return bad(
                    ctx,
                    &format!("Property '{other}' does not exist or cannot be updated on type 'microsoft.graph.group'."),
                )
            }
        }
    }
    if let Some(a) = write_refused(st, ctx, g) {
        return a;
    }
    if !adds.is_empty() {
        if let Some((s, c, m)) = g.writable_error() {
            return graph_error(ctx, s, c, m);
        }
        for id in &adds {
            if st.dir.kind(id).is_none() {
                return not_found(ctx, id);
            }
        }
        let mut seen = HashSet::new();
        for id in &adds {
            if g.index.contains_key(id) || !seen.insert(id.clone()) {
                return bad(ctx, ALREADY_EXISTS);
            }
            if let Some(a) = member_type_error(st, ctx, g, id) {
                return a;
            }
        }
    }
    let _ = new_description;
    let mut seq = st.dir.seq;
    if let Some(g) = st.dir.groups.get_mut(gid) {
        for id in &adds {
            g.add(id, &mut seq);
        }
        if let Some(n) = new_name {
            g.data.display_name = n;
        }
    }
    st.dir.seq = seq;
    Answer::empty(204)
}

fn delete_ref(st: &mut State, ctx: &Ctx, gid: &str, mid: &str) -> Answer {
    let Some(g) = st.dir.groups.get(gid) else { return not_found(ctx, gid) };
    if let Some(a) = write_refused(st, ctx, g) {
        return a;
    }
    if let Some((s, c, m)) = g.writable_error() {
        return graph_error(ctx, s, c, m);
    }
    if !g.index.contains_key(mid) {
        return not_found(ctx, gid);
    }
    if let Some(g) = st.dir.groups.get_mut(gid) {
        g.remove(mid);
    }
    Answer::empty(204)
}

// ---------------------------------------------------------------------------------------------------------
// $batch.
// ---------------------------------------------------------------------------------------------------------

fn batch(st: &mut State, ctx: &Ctx, batch_seq: u64, base: &str, body: Option<&Value>) -> Answer {
    let Some(reqs) = body.and_then(|b| b.get("requests")).and_then(Value::as_array) else {
        return graph_error(ctx, 400, "BadRequest", "Invalid batch payload format.");
    };
    if reqs.is_empty() {
        return graph_error(ctx, 400, "BadRequest", "Invalid batch payload format.");
    }
    if reqs.len() > 20 {
        return graph_error(ctx, 400, "BadRequest", "The number of batch requests exceeds the limit of 20.");
    }
    let mut ids = HashSet::new();
    for r in reqs {
        let id = r.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        let Some(id) = id else { return graph_error(ctx, 400, "BadRequest", "Each batch request must have an id.") };
        if !ids.insert(id.clone()) {
            return graph_error(ctx, 400, "BadRequest", &format!("Batch request contains duplicate id '{id}'."));
        }
        if r.get("method").and_then(Value::as_str).is_none() || r.get("url").and_then(Value::as_str).is_none() {
            return graph_error(ctx, 400, "BadRequest", &format!("Batch request '{id}' must have a method and a url."));
        }
        let has_ct = r
            .get("headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type")));
        if r.get("body").is_some_and(|b| !b.is_null()) && !has_ct {
            return graph_error(
                ctx,
                400,
                "BadRequest",
                &format!("Write request id : {id} does not contain Content-Type header or body."),
            );
        }
        if let Some(deps) = r.get("dependsOn").and_then(Value::as_array) {
            for d in deps {
                if !d.as_str().is_some_and(|d| ids.contains(d) && d != id) {
                    return graph_error(
                        ctx,
                        400,
                        "BadRequest",
                        &format!("Batch request '{id}' depends on an unknown or later request."),
                    );
                }
            }
        }
    }
    let mut statuses: HashMap<String, u16> = HashMap::new();
    let mut out = vec![];
    for r in reqs {
        let id =
            r.get("id").map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).unwrap_or_default();
        let method = r.get("method").and_then(Value::as_str).unwrap_or("").to_ascii_uppercase();
        let url = r.get("url").and_then(Value::as_str).unwrap_or("").to_string();
        let headers: Vec<(String, String)> = r
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default();
        let item_body = r.get("body").filter(|b| !b.is_null());
        let item_ctx =
            Ctx { request_id: uuid::Uuid::new_v4().to_string(), client_request_id: ctx.client_request_id.clone() };
        let rel = if url.starts_with('/') { url.clone() } else { format!("/{url}") };
        let (p, qs) =
            rel.split_once('?').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or((rel.clone(), String::new()));
        let failed_dep = r
            .get("dependsOn")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|d| d.as_str().and_then(|d| statuses.get(d)).is_some_and(|s| *s >= 400)));
        let ans = if failed_dep {
            graph_error(
                &item_ctx,
                424,
                "FailedDependency",
                "The request failed because a request it depends on failed.",
            )
        } else if url.contains("://") {
            graph_error(&item_ctx, 400, "BadRequest", "Batch request URLs must be relative.")
        } else if p.eq_ignore_ascii_case("/$batch") {
            graph_error(&item_ctx, 400, "BadRequest", "Nested batch requests are not supported.")
        } else {
            operation(st, &item_ctx, &method, &p, &qs, &headers, item_body)
        };
        let seq = st.next_seq();
        st.log.push(Recorded {
            seq,
            method: method.clone(),
            path: format!("{base}{rel}"),
            batch_item: Some((batch_seq, id.clone())),
            headers: headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect(),
            body: item_body.cloned(),
            status: ans.status,
            at: SystemTime::now(),
            arrived: Instant::now(),
            retry_after: header_value(&ans.headers, "Retry-After"),
            request_id: item_ctx.request_id.clone(),
        });
        statuses.insert(id.clone(), ans.status);
        let mut h = Map::new();
        h.insert("Cache-Control".into(), json!("no-cache"));
        if ans.body.is_some() {
            h.insert("Content-Type".into(), json!(if ans.text { "text/plain" } else { JSON_CT }));
        }
        for (k, v) in &ans.headers {
            h.insert(k.clone(), json!(v));
        }
        let mut item = Map::new();
        item.insert("id".into(), json!(id));
        item.insert("status".into(), json!(ans.status));
        item.insert("headers".into(), Value::Object(h));
        if let Some(b) = ans.body {
            item.insert("body".into(), b);
        }
        out.push(Value::Object(item));
    }
    match st.cfg.batch_order {
        BatchOrder::AsSent => {}
        BatchOrder::Reversed => out.reverse(),
        BatchOrder::Shuffled => {
            for i in (1..out.len()).rev() {
                let r = uuid::Uuid::new_v4().as_u128() as usize % (i + 1);
                out.swap(i, r);
            }
        }
    }
    Answer::json(200, json!({ "responses": out }))
}

// ---------------------------------------------------------------------------------------------------------
// OData $filter: `prop eq 'x'`, `prop in ('a','b')`, `coll/any(x:x eq 'y')`, `startswith(prop,'x')`,
// `and`, `or`, parentheses. String comparisons ignore case.
// ---------------------------------------------------------------------------------------------------------

const USER_FILTERABLE: &[&str] = &[
    "id",
    "userPrincipalName",
    "mail",
    "displayName",
    "proxyAddresses",
    "otherMails",
    "accountEnabled",
    "userType",
    "givenName",
    "surname",
];
const GROUP_FILTERABLE: &[&str] =
    &["id", "displayName", "mail", "mailEnabled", "securityEnabled", "groupTypes", "mailNickname"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone)]
enum Filter {
    Or(Vec<Filter>),
    And(Vec<Filter>),
    Eq(String, Lit),
    In(String, Vec<Lit>),
    Any(String, Lit),
    StartsWith(String, String),
}

/// Reads an OData string literal body: `''` is one quote.
fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = vec![];
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("Unterminated string literal in $filter.".into()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while chars.get(i).is_some_and(|c| !matches!(c, ' ' | '\t' | '(' | ')' | ',' | '\'')) {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, i: 0 };
    let f = p.or()?;
    if p.i != p.toks.len() {
        return Err("Invalid filter clause: unexpected text after the expression.".into());
    }
    if let Some(n) = f.longest_in().filter(|n| *n > MAX_IN_VALUES) {
        return Err(format!(
            "Too many child clauses specified in search filter expression containing 'OR' operators: {n}. Max allowed: {MAX_IN_VALUES}."
        ));
    }
    Ok(f)
}

/// The most values Graph takes in one `in (…)` list.
const MAX_IN_VALUES: usize = 15;

struct Parser {
    toks: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.i).cloned();
        self.i += 1;
        t
    }
    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(k)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: Tok) -> Result<(), String> {
        if self.next() == Some(t.clone()) {
            Ok(())
        } else {
            Err(format!("Invalid filter clause: expected {t:?}."))
        }
    }
    fn or(&mut self) -> Result<Filter, String> {
        let mut v = vec![self.and()?];
        while self.keyword("or") {
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Filter::Or(v) })
    }
    fn and(&mut self) -> Result<Filter, String> {
        let mut v = vec![self.term()?];
        while self.keyword("and") {
            v.push(self.term()?);
        }
        Ok(if v.len() == 1 { v.remove(0) } else { Filter::And(v) })
    }
    fn lit(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Ident(w)) if w == "true" => Ok(Lit::Bool(true)),
            Some(Tok::Ident(w)) if w == "false" => Ok(Lit::Bool(false)),
            Some(Tok::Ident(w)) if w == "null" => Ok(Lit::Null),
            other => Err(format!("Invalid filter clause: expected a literal, found {other:?}.")),
        }
    }
    fn term(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Tok::LParen) => {
                let f = self.or()?;
                self.expect(Tok::RParen)?;
                Ok(f)
            }
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("startswith") => {
                self.expect(Tok::LParen)?;
                let Some(Tok::Ident(prop)) = self.next() else {
                    return Err("Invalid filter clause: startswith needs a property.".into());
                };
                self.expect(Tok::Comma)?;
                let Lit::Str(v) = self.lit()? else {
                    return Err("Invalid filter clause: startswith needs a string.".into());
                };
                self.expect(Tok::RParen)?;
                Ok(Filter::StartsWith(prop, v))
            }
            Some(Tok::Ident(w)) if w.to_ascii_lowercase().ends_with("/any") => {
                let prop = w[..w.len() - 4].to_string();
                self.expect(Tok::LParen)?;
                let Some(Tok::Ident(lambda)) = self.next() else {
                    return Err("Invalid filter clause: any() needs a lambda.".into());
                };
                let Some((var, lhs)) = lambda.split_once(':') else {
                    return Err("Invalid filter clause: any() needs 'x:x'.".into());
                };
                if var != lhs || var.is_empty() {
                    return Err(format!("Invalid filter clause: lambda variable '{lhs}' is not defined."));
                }
                if !self.keyword("eq") {
                    return Err("Invalid filter clause: only 'eq' is supported inside any().".into());
                }
                let v = self.lit()?;
                self.expect(Tok::RParen)?;
                Ok(Filter::Any(prop, v))
            }
            Some(Tok::Ident(prop)) => {
                if self.keyword("eq") {
                    Ok(Filter::Eq(prop, self.lit()?))
                } else if self.keyword("in") {
                    self.expect(Tok::LParen)?;
                    let mut v = vec![self.lit()?];
                    while self.peek() == Some(&Tok::Comma) {
                        self.i += 1;
                        v.push(self.lit()?);
                    }
                    self.expect(Tok::RParen)?;
                    Ok(Filter::In(prop, v))
                } else {
                    Err(format!("Unsupported or invalid query filter clause specified for property '{prop}'."))
                }
            }
            other => Err(format!("Invalid filter clause: unexpected {other:?}.")),
        }
    }
}

fn lit_matches(v: Option<&Value>, l: &Lit) -> bool {
    match (v, l) {
        (Some(Value::String(a)), Lit::Str(b)) => a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase(),
        (Some(Value::Bool(a)), Lit::Bool(b)) => a == b,
        (None | Some(Value::Null), Lit::Null) => true,
        _ => false,
    }
}

fn get_ci<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    m.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v)
}

impl Filter {
    /// For a filter made only of `eq` / `in` / `any(x:x eq …)` on a user's id, UPN, mail or proxy addresses,
    /// joined by `or`: the lower-cased literals (every match has one of them as a key). `None` otherwise.
    fn indexed_literals(&self) -> Option<Vec<String>> {
        const INDEXED: &[&str] = &["id", "userPrincipalName", "mail", "proxyAddresses"];
        let indexed = |p: &str| INDEXED.iter().any(|i| i.eq_ignore_ascii_case(p));
        let text = |l: &Lit| match l {
            Lit::Str(s) => Some(s.to_lowercase()),
            _ => None,
        };
        match self {
            Filter::Or(v) => {
                let mut out = vec![];
                for f in v {
                    out.extend(f.indexed_literals()?);
                }
                Some(out)
            }
            Filter::Eq(p, l) | Filter::Any(p, l) if indexed(p) => Some(vec![text(l)?]),
            Filter::In(p, ls) if indexed(p) => ls.iter().map(text).collect(),
            _ => None,
        }
    }

    fn longest_in(&self) -> Option<usize> {
        match self {
            Filter::Or(v) | Filter::And(v) => v.iter().filter_map(Filter::longest_in).max(),
            Filter::In(_, ls) => Some(ls.len()),
            _ => None,
        }
    }

    fn props(&self, out: &mut Vec<String>) {
        match self {
            Filter::Or(v) | Filter::And(v) => v.iter().for_each(|f| f.props(out)),
            Filter::Eq(p, _) | Filter::In(p, _) | Filter::Any(p, _) | Filter::StartsWith(p, _) => out.push(p.clone()),
        }
    }
    fn check_props(&self, allowed: &[&str], resource: &str) -> Result<(), String> {
        let mut v = vec![];
        self.props(&mut v);
        for p in v {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&p)) {
                return Err(format!(
                    "Unsupported or invalid query filter clause specified for property '{p}' of resource '{resource}'."
                ));
            }
        }
        Ok(())
    }
    fn eval(&self, m: &Map<String, Value>) -> Result<bool, String> {
        Ok(match self {
            Filter::Or(v) => {
                for f in v {
                    if f.eval(m)? {
                        return Ok(true);
                    }
                }
                false
            }
            Filter::And(v) => {
                for f in v {
                    if !f.eval(m)? {
                        return Ok(false);
                    }
                }
                true
            }
            Filter::Eq(p, l) => lit_matches(get_ci(m, p), l),
            Filter::In(p, ls) => ls.iter().any(|l| lit_matches(get_ci(m, p), l)),
            Filter::Any(p, l) => match get_ci(m, p) {
                Some(Value::Array(items)) => items.iter().any(|i| lit_matches(Some(i), l)),
                _ => false,
            },
            Filter::StartsWith(p, s) => match get_ci(m, p) {
                Some(Value::String(v)) => v.to_lowercase().starts_with(&s.to_lowercase()),
                _ => false,
            },
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// URL helpers.
// ---------------------------------------------------------------------------------------------------------

fn pct_encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@$:!*'(),;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
