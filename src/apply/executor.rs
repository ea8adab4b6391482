//! The executor: turns the work list into `$batch` requests, sends them at the pace Graph allows, and reads
//! every item's answer.
//!
//! - Adds go as `PATCH /groups/{id}` with `members@odata.bind`, at most 20 members each.
//! - Removes go as `DELETE /groups/{gid}/members/{uid}/$ref`, one user each. A DELETE without `/$ref` would
//!   delete the user object itself; [`Write`] is the only way to make a request, and it cannot spell one.
//! - A `$batch` holds at most 20 items, of which at most `patches_per_batch` are PATCHes; the rest of the
//!   batch is filled with DELETEs.
//! - Batches go out at the rate [`crate::pacing::Pace`] learns from Graph's answers (not limited until the first
//!   429), and several may be in flight at once, up to a limit that halves when Graph fails (5xx, no answer)
//!   and grows back by one after a run of clean batches.
//! - Waits come from [`crate::retry`]: a write is never sent again before every `Retry-After` it was given has
//!   ended, whatever failure (429, 5xx, a dropped connection) sends it again; and after a 429 with a
//!   `Retry-After`, nothing at all is sent until it ends.
//!
//! Each item's answer decides its fate:
//!
//! | answer | add (PATCH of n) | remove (DELETE `$ref`) |
//! |---|---|---|
//! | 2xx | applied | applied |
//! | 429 | sent again after its Retry-After (or a back-off); nothing is sent before that Retry-After ends | same |
//! | 5xx, 424, no answer | sent again after Retry-After or an exponential back-off | same |
//! | 400 "already exist", n > 1 | split into n single-member PATCHes | – |
//! | 400 "already exist", n = 1 | already-member | – |
//! | other 4xx, n > 1 | split (one bad member fails the whole PATCH) | – |
//! | 404 / 400 "do(es) not exist", n = 1 | failed: the user no longer exists | already-absent |
//! | anything else | failed, with Graph's code, message and request-id | failed |
//!
//! Every outcome carries the ids of the request that settled it (Graph's `request-id`, the `client-request-id`
//! writeback sent), for the journal.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::gates::GroupWork;
use super::{ChangeResult, GraphFailure, Outcome, RequestIds};
use crate::identity::ObjectId;
use crate::pacing::{Observation, Pace};
use crate::plan::Action;
use crate::retry::RetryPolicy;

/// The most requests Graph accepts in one `$batch`.
pub const MAX_BATCH_ITEMS: usize = 20;
/// The most members one `PATCH /groups/{id}` may add.
pub const MAX_MEMBERS_PER_PATCH: usize = 20;
/// The message Graph gives when a PATCH names a user that is already a member (matched as a substring).
pub const ALREADY_EXISTS: &str = "already exist";

/// The HTTP method of a write. There is no other kind: apply never deletes an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `PATCH /groups/{id}` (adds).
    Patch,
    /// `DELETE /groups/{gid}/members/{uid}/$ref` (removes).
    Delete,
}

impl Method {
    /// `PATCH` or `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One membership write. Built only through [`Write::add`] and [`Write::remove`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write(WriteKind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteKind {
    Add { group: ObjectId, users: Vec<ObjectId> },
    Remove { group: ObjectId, user: ObjectId },
}

impl Write {
    /// Adds 1 to 20 users to a group in one PATCH. `None` for an empty or oversized list.
    pub fn add(group: ObjectId, users: Vec<ObjectId>) -> Option<Write> {
        (!users.is_empty() && users.len() <= MAX_MEMBERS_PER_PATCH).then_some(Write(WriteKind::Add { group, users }))
    }

    /// Removes one user from a group (the membership reference only).
    pub fn remove(group: ObjectId, user: ObjectId) -> Write {
        Write(WriteKind::Remove { group, user })
    }

    /// The method this write uses.
    pub fn method(&self) -> Method {
        match &self.0 {
            WriteKind::Add { .. } => Method::Patch,
            WriteKind::Remove { .. } => Method::Delete,
        }
    }

    /// The users this write changes.
    pub fn users(&self) -> Vec<ObjectId> {
        match &self.0 {
            WriteKind::Add { users, .. } => users.clone(),
            WriteKind::Remove { user, .. } => vec![user.clone()],
        }
    }

    /// The group.
    pub fn group(&self) -> &ObjectId {
        match &self.0 {
            WriteKind::Add { group, .. } | WriteKind::Remove { group, .. } => group,
        }
    }

    /// The `$batch` item for this write. `bind_base` is the Graph base URL the member references point at,
    /// e.g. `https://graph.microsoft.com/v1.0`.
    pub fn request(&self, id: String, bind_base: &str) -> Request {
        let base = bind_base.trim_end_matches('/');
        match &self.0 {
            WriteKind::Add { group, users } => {
                let binds: Vec<String> = users.iter().map(|u| format!("{base}/directoryObjects/{u}")).collect();
                Request {
                    id,
                    method: Method::Patch,
                    url: format!("/groups/{group}"),
                    body: Some(json!({ "members@odata.bind": binds })),
                }
            }
            WriteKind::Remove { group, user } => {
                Request { id, method: Method::Delete, url: format!("/groups/{group}/members/{user}/$ref"), body: None }
            }
        }
    }
}

/// One item of a `$batch` request, made by [`Write::request`]. Its fields can be read, not set.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    id: String,
    method: Method,
    url: String,
    body: Option<serde_json::Value>,
}

impl Request {
    /// The item id, unique within its batch.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// PATCH or DELETE.
    pub fn method(&self) -> Method {
        self.method
    }
    /// The URL relative to the Graph version root, e.g. `/groups/{id}`.
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The JSON body (PATCHes only).
    pub fn body(&self) -> Option<&serde_json::Value> {
        self.body.as_ref()
    }
}

/// The answer to one item of a `$batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResponse {
    /// The item id.
    pub id: String,
    /// Its HTTP status.
    pub status: u16,
    /// Its Retry-After, already turned into a duration (seconds or HTTP-date).
    pub retry_after: Option<Duration>,
    /// The error body, when there is one.
    pub error: Option<GraphFailure>,
    /// Graph's `request-id` for this item, when it gave one of its own.
    pub request_id: Option<String>,
    /// Why Graph throttled it (`x-ms-throttle-information`, e.g. `WriteLimitExceeded`), when it said.
    pub throttle_information: Option<String>,
}

impl ItemResponse {
    /// An answer with just a status (no Retry-After, error body or ids).
    pub fn with_status(id: impl Into<String>, status: u16) -> ItemResponse {
        ItemResponse {
            id: id.into(),
            status,
            retry_after: None,
            error: None,
            request_id: None,
            throttle_information: None,
        }
    }
}

/// Graph's answer to one `$batch` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAnswer {
    /// The answers to the items, in any order.
    pub items: Vec<ItemResponse>,
    /// The `client-request-id` writeback sent with the `$batch`.
    pub client_request_id: String,
    /// Graph's `request-id` of the `$batch`.
    pub request_id: Option<String>,
}

/// A `$batch` request that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What went wrong.
    pub message: String,
    /// False when sending again cannot help (for example, the credentials were refused).
    pub retryable: bool,
    /// The HTTP status of the whole request, when an answer came (429, 503…).
    pub status: Option<u16>,
    /// The whole request's Retry-After, when it had one.
    pub retry_after: Option<Duration>,
}

impl TransportError {
    /// A request that got no answer at all (a dropped connection, a timeout).
    pub fn no_answer(message: impl Into<String>) -> TransportError {
        TransportError { message: message.into(), retryable: true, status: None, retry_after: None }
    }
}

/// Sends one `$batch`. Implemented for the Graph client, and by in-memory fakes in tests.
pub trait Transport: Send + Sync + 'static {
    /// Sends the items as one `$batch` request, once (the executor does the retrying), and returns the answers.
    fn send(&self, items: Vec<Request>) -> impl Future<Output = Result<BatchAnswer, TransportError>> + Send;
}

/// One change's outcome and the request that settled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The outcome.
    pub result: ChangeResult,
    /// The ids of the `$batch` request whose answer settled it (`None` for a change settled without a request).
    pub request: Option<RequestIds>,
}

/// Receives the outcomes as they arrive (the journal, the progress bar).
pub trait Sink {
    /// Records the outcomes of one batch. An error stops the run.
    fn record(&mut self, written: &[Written]) -> crate::Result<()>;
}

/// The executor's tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many PATCHes (20 members each) go into one `$batch` (1–20).
    pub patches_per_batch: usize,
    /// The most `$batch` requests in flight at once.
    pub max_concurrency: usize,
    /// The waits between attempts, and how often a write is sent after 5xx or no answer before it counts as
    /// failed (`max_attempts`).
    pub retry: RetryPolicy,
    /// How often a write may be throttled (429) before it counts as failed.
    pub max_throttles: u32,
    /// The Graph base URL for `members@odata.bind` references.
    pub bind_base: String,
    /// How long one `$batch` may take before it is abandoned and its items are sent again.
    pub request_timeout: Option<Duration>,
    /// How the sending rate is learned.
    pub pacing: crate::pacing::Settings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            patches_per_batch: MAX_BATCH_ITEMS,
            max_concurrency: 4,
            retry: RetryPolicy::default(),
            max_throttles: 500,
            bind_base: "https://graph.microsoft.com/v1.0".into(),
            request_timeout: None,
            pacing: crate::pacing::Settings::default(),
        }
    }
}

/// What the executor sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// `$batch` requests sent.
    pub requests: u64,
    /// PATCH items sent.
    pub patches: u64,
    /// DELETE items sent.
    pub deletes: u64,
    /// Items that came back 429.
    pub throttled: u64,
    /// Items sent again after 5xx or no answer.
    pub retried: u64,
    /// PATCHes split member by member.
    pub splits: u64,
}

impl Stats {
    /// Graph writes sent: PATCHes plus DELETEs.
    pub fn writes(&self) -> u64 {
        self.patches + self.deletes
    }
}

/// Why the executor stopped before every change had an outcome.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Graph gave no usable answer, even after retries.
    #[error("Microsoft Graph did not answer usefully: {0}")]
    Unreachable(String),
    /// The admin interrupted the run.
    #[error("interrupted")]
    Interrupted,
    /// The sink (the journal) failed.
    #[error(transparent)]
    Sink(#[from] crate::Error),
}

/// What the dry run prints: the requests and writes a run would send if Graph answered every item with
/// success the first time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Estimate {
    /// Users to add.
    pub adds: u64,
    /// Users to remove.
    pub removes: u64,
    /// PATCH items (20 members each at most).
    pub patches: u64,
    /// DELETE items.
    pub deletes: u64,
    /// `$batch` requests.
    pub requests: u64,
    /// Graph writes (PATCHes plus DELETEs).
    pub writes: u64,
}

/// The batching arithmetic for a work list.
pub fn estimate(works: &[GroupWork], patches_per_batch: usize) -> Estimate {
    let ppb = patches_per_batch.clamp(1, MAX_BATCH_ITEMS) as u64;
    let mut e = Estimate::default();
    for w in works {
        e.adds += w.adds.len() as u64;
        e.removes += w.removes.len() as u64;
        e.patches += (w.adds.len() as u64).div_ceil(MAX_MEMBERS_PER_PATCH as u64);
        e.deletes += w.removes.len() as u64;
    }
    e.writes = e.patches + e.deletes;
    e.requests = e.patches.div_ceil(ppb).max((e.patches + e.deletes).div_ceil(MAX_BATCH_ITEMS as u64));
    e
}

/// The work list as writes: adds in PATCHes of up to 20 members, removes one DELETE each.
pub fn writes_for(works: &[GroupWork]) -> Vec<Write> {
    let mut writes = Vec::new();
    for w in works {
        for chunk in w.adds.chunks(MAX_MEMBERS_PER_PATCH) {
            if let Some(write) = Write::add(w.group_id.clone(), chunk.to_vec()) {
                writes.push(write);
            }
        }
        for user in &w.removes {
            writes.push(Write::remove(w.group_id.clone(), user.clone()));
        }
    }
    writes
}

#[derive(Debug, Clone)]
struct Task {
    write: Write,
    /// Sends that ended in 5xx or no answer.
    attempts: u32,
    /// Sends that ended in 429.
    throttles: u32,
    /// Not before this: every Retry-After the write was given, and its back-off. It never moves earlier.
    not_before: Option<Instant>,
    /// The PATCH this task was split from, for the outcome's detail.
    split_from: Option<usize>,
}

impl Task {
    fn new(write: Write) -> Task {
        Task { write, attempts: 0, throttles: 0, not_before: None, split_from: None }
    }

    /// Holds the task until `at` at the earliest. A hold that ends sooner never shortens one that ends later.
    fn hold_until(&mut self, at: Instant) {
        self.not_before = Some(self.not_before.map_or(at, |n| n.max(at)));
    }
}

enum Fate {
    Done(Vec<ChangeResult>),
    Throttled(Option<Duration>),
    Transient(Option<Duration>, GraphFailure),
    Split,
}

fn result(
    write: &Write,
    user: ObjectId,
    outcome: Outcome,
    detail: Option<String>,
    error: Option<GraphFailure>,
) -> ChangeResult {
    ChangeResult {
        group_id: write.group().clone(),
        user_id: user,
        action: match write.method() {
            Method::Patch => Action::Add,
            Method::Delete => Action::Remove,
        },
        outcome,
        detail,
        error,
    }
}

/// Every user of `write` failed, with `detail` and Graph's error.
fn failed(write: &Write, detail: &str, failure: &GraphFailure) -> Vec<ChangeResult> {
    write
        .users()
        .into_iter()
        .map(|u| result(write, u, Outcome::Failed, Some(detail.into()), Some(failure.clone())))
        .collect()
}

fn failure_of(resp: &ItemResponse) -> GraphFailure {
    resp.error.clone().unwrap_or(GraphFailure { status: resp.status, code: None, message: None, request_id: None })
}

fn message_has(failure: &GraphFailure, needle: &str) -> bool {
    failure.message.as_deref().is_some_and(|m| m.to_ascii_lowercase().contains(needle))
}

fn classify(task: &Task, resp: &ItemResponse) -> Fate {
    let write = &task.write;
    let users = write.users();
    let failure = failure_of(resp);
    let status = resp.status;
    if (200..300).contains(&status) {
        let detail = task.split_from.map(|n| format!("added on its own after a PATCH of {n} was refused"));
        return Fate::Done(
            users.into_iter().map(|u| result(write, u, Outcome::Applied, detail.clone(), None)).collect(),
        );
    }
    match crate::retry::classify(status) {
        crate::retry::Verdict::Throttled => return Fate::Throttled(resp.retry_after),
        crate::retry::Verdict::Transient => return Fate::Transient(resp.retry_after, failure),
        crate::retry::Verdict::Final => {}
    }
    let not_exist = status == 404 || message_has(&failure, "do not exist") || message_has(&failure, "does not exist");
    match write.method() {
        Method::Patch if users.len() > 1 && (400..500).contains(&status) => Fate::Split,
        Method::Patch => {
            let user = users.into_iter().next();
            let Some(user) = user else { return Fate::Done(Vec::new()) };
            let (outcome, detail) = if status == 400 && message_has(&failure, ALREADY_EXISTS) {
                (Outcome::AlreadyMember, "Graph said the user is already a member")
            } else if not_exist {
                (Outcome::Failed, "the user no longer exists in the directory (deleted since planning?)")
            } else if status == 403 && message_has(&failure, "guest") {
                (Outcome::Failed, "the group does not allow guests")
            } else {
                (Outcome::Failed, "Graph refused the add")
            };
            Fate::Done(vec![result(write, user, outcome, Some(detail.into()), Some(failure))])
        }
        Method::Delete => {
            let (outcome, detail) = if not_exist {
                (Outcome::AlreadyAbsent, "Graph said the user is not a member")
            } else {
                (Outcome::Failed, "Graph refused the remove")
            };
            Fate::Done(
                users
                    .into_iter()
                    .map(|u| result(write, u, outcome, Some(detail.into()), Some(failure.clone())))
                    .collect(),
            )
        }
    }
}

struct Queues {
    patches: VecDeque<Task>,
    deletes: VecDeque<Task>,
    /// Tasks held until their `not_before`.
    delayed: Vec<Task>,
}

impl Queues {
    fn new(works: &[GroupWork]) -> Queues {
        let mut queues = Queues { patches: VecDeque::new(), deletes: VecDeque::new(), delayed: Vec::new() };
        for write in writes_for(works) {
            match write.method() {
                Method::Patch => queues.patches.push_back(Task::new(write)),
                Method::Delete => queues.deletes.push_back(Task::new(write)),
            }
        }
        queues
    }

    fn push_front(&mut self, task: Task) {
        match task.write.method() {
            Method::Patch => self.patches.push_front(task),
            Method::Delete => self.deletes.push_front(task),
        }
    }

    /// Moves the held tasks whose time has come to the front of their queue.
    fn promote(&mut self, now: Instant) {
        let (ready, waiting): (Vec<Task>, Vec<Task>) =
            std::mem::take(&mut self.delayed).into_iter().partition(|t| t.not_before.is_none_or(|at| at <= now));
        self.delayed = waiting;
        for task in ready.into_iter().rev() {
            self.push_front(task);
        }
    }

    fn ready(&self) -> bool {
        !self.patches.is_empty() || !self.deletes.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.ready() && self.delayed.is_empty()
    }

    fn next_due(&self) -> Option<Instant> {
        self.delayed.iter().filter_map(|t| t.not_before).min()
    }

    /// How many items [`Queues::take_batch`] would take.
    fn batch_len(&self, ppb: usize) -> usize {
        let patches = self.patches.len().min(ppb.min(MAX_BATCH_ITEMS));
        (patches + self.deletes.len()).min(MAX_BATCH_ITEMS)
    }

    fn take_batch(&mut self, ppb: usize) -> Vec<Task> {
        let mut batch = Vec::with_capacity(MAX_BATCH_ITEMS);
        while batch.len() < ppb.min(MAX_BATCH_ITEMS) {
            match self.patches.pop_front() {
                Some(t) => batch.push(t),
                None => break,
            }
        }
        while batch.len() < MAX_BATCH_ITEMS {
            match self.deletes.pop_front() {
                Some(t) => batch.push(t),
                None => break,
            }
        }
        batch
    }
}

/// A `$batch` on its way: its tasks, when it left, and the answer.
type Flight = (Vec<Task>, Instant, Result<BatchAnswer, TransportError>);

/// What one batch's answers did, besides outcomes.
#[derive(Default)]
struct Tally {
    seen: Observation,
    /// Some item failed with 5xx or no answer.
    troubled: bool,
    /// A PATCH came back 503 or 504 (too many PATCHes in one batch for Graph).
    unavailable_patch: bool,
}

/// One run of the executor: the queues, the pace, the requests in flight.
struct Run<'a, T: Transport> {
    transport: Arc<T>,
    cfg: &'a Config,
    queues: Queues,
    pace: Pace,
    stats: Stats,
    in_flight: JoinSet<Flight>,
    abort: Option<ExecError>,
    limit: usize,
    clean_streak: usize,
    ppb: usize,
    ppb_floor: usize,
}

impl<'a, T: Transport> Run<'a, T> {
    fn new(transport: Arc<T>, works: &[GroupWork], cfg: &'a Config) -> Run<'a, T> {
        let ppb = cfg.patches_per_batch.clamp(1, MAX_BATCH_ITEMS);
        Run {
            transport,
            cfg,
            queues: Queues::new(works),
            pace: Pace::new(cfg.pacing.clone()),
            stats: Stats::default(),
            in_flight: JoinSet::new(),
            abort: None,
            limit: cfg.max_concurrency.max(1),
            clean_streak: 0,
            ppb,
            ppb_floor: ppb.min(5),
        }
    }

    fn interrupt(&mut self) {
        self.abort.get_or_insert(ExecError::Interrupted);
    }

    /// Sends every batch the pace and the concurrency limit allow now. Returns when to look again (the pace's
    /// next turn, or the next held task), or `None` to wait for an answer.
    fn launch(&mut self, now: Instant) -> Option<Instant> {
        while self.abort.is_none() && self.in_flight.len() < self.limit && self.queues.ready() {
            let cost = self.queues.batch_len(self.ppb) as u32;
            let at = self.pace.ready_at(now, cost);
            if at > now {
                return Some(at);
            }
            self.pace.take(now, cost);
            let tasks = self.queues.take_batch(self.ppb);
            self.send(tasks, now);
        }
        if self.abort.is_none() && self.in_flight.len() < self.limit {
            self.queues.next_due()
        } else {
            None
        }
    }

    fn send(&mut self, tasks: Vec<Task>, now: Instant) {
        let requests: Vec<Request> =
            tasks.iter().enumerate().map(|(i, t)| t.write.request((i + 1).to_string(), &self.cfg.bind_base)).collect();
        self.stats.requests += 1;
        for t in &tasks {
            match t.write.method() {
                Method::Patch => self.stats.patches += 1,
                Method::Delete => self.stats.deletes += 1,
            }
        }
        let transport = Arc::clone(&self.transport);
        let timeout = self.cfg.request_timeout;
        self.in_flight.spawn(async move {
            let answer = match timeout {
                Some(limit) => tokio::time::timeout(limit, transport.send(requests)).await.unwrap_or_else(|_| {
                    Err(TransportError::no_answer(format!("no answer to a $batch within {:.1} s", limit.as_secs_f64())))
                }),
                None => transport.send(requests).await,
            };
            (tasks, now, answer)
        });
    }

    /// Reads one batch's answer at `now`; returns the outcomes it settled.
    fn settle(&mut self, (tasks, sent_at, answer): Flight, now: Instant) -> Vec<Written> {
        match answer {
            Err(err) => {
                self.failed_request(tasks, &err, sent_at, now);
                Vec::new()
            }
            Ok(answer) => self.answered(tasks, answer, sent_at, now),
        }
    }

    /// The whole `$batch` failed (no answer, or an error status for the request): every task is sent again
    /// after the request's Retry-After (or a back-off), or the run stops when that cannot help.
    fn failed_request(&mut self, tasks: Vec<Task>, err: &TransportError, sent_at: Instant, now: Instant) {
        let throttled = err.status == Some(429);
        let n = tasks.len() as u32;
        let mut seen =
            Observation { sent: n, retry_after: err.retry_after, round_trip: now - sent_at, ..Default::default() };
        if throttled {
            seen.throttled_other = n;
            self.stats.throttled += u64::from(n);
        } else {
            self.slow_down(false);
        }
        self.pace.observe(now, seen);
        for mut task in tasks {
            if throttled {
                task.throttles += 1;
            } else {
                task.attempts += 1;
            }
            self.stats.retried += 1;
            let spent = if throttled {
                task.throttles > self.cfg.max_throttles
            } else {
                task.attempts >= self.cfg.retry.max_attempts.max(1)
            };
            if !err.retryable || spent {
                // The change keeps no outcome: a rerun sends it again.
                self.abort.get_or_insert_with(|| ExecError::Unreachable(err.message.clone()));
                continue;
            }
            let retry = if throttled { task.throttles } else { task.attempts };
            task.hold_until(now + self.cfg.retry.wait(retry - 1, err.retry_after));
            self.queues.delayed.push(task);
        }
    }

    /// Graph answered the `$batch`: settle each item.
    fn answered(&mut self, tasks: Vec<Task>, answer: BatchAnswer, sent_at: Instant, now: Instant) -> Vec<Written> {
        let mut by_id: BTreeMap<String, ItemResponse> = answer.items.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut tally = Tally::default();
        tally.seen.sent = tasks.len() as u32;
        tally.seen.round_trip = now - sent_at;
        let mut written = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let id = (i + 1).to_string();
            let resp = by_id.remove(&id).unwrap_or_else(|| ItemResponse {
                error: Some(GraphFailure {
                    status: 0,
                    code: None,
                    message: Some("the $batch answer had no response for this item".into()),
                    request_id: None,
                }),
                ..ItemResponse::with_status(id, 0)
            });
            let ids = RequestIds {
                client_request_id: answer.client_request_id.clone(),
                request_id: resp
                    .request_id
                    .clone()
                    .or_else(|| resp.error.as_ref().and_then(|e| e.request_id.clone()))
                    .or_else(|| answer.request_id.clone()),
            };
            let results = self.settle_item(task, &resp, now, &mut tally);
            written.extend(results.into_iter().map(|result| Written { result, request: Some(ids.clone()) }));
        }
        if let Some(change) = self.pace.observe(now, tally.seen) {
            tracing::info!("pacing writes: {change:?}");
        }
        if tally.troubled {
            self.slow_down(tally.unavailable_patch);
        } else {
            self.clean_streak += 1;
            if self.clean_streak >= self.limit {
                self.limit = (self.limit + 1).min(self.cfg.max_concurrency.max(1));
                self.clean_streak = 0;
            }
        }
        written
    }

    /// Fewer batches in flight after failures (and fewer PATCHes per batch after 503s on PATCHes).
    fn slow_down(&mut self, unavailable_patch: bool) {
        self.limit = (self.limit / 2).max(1);
        self.clean_streak = 0;
        if unavailable_patch {
            self.ppb = (self.ppb / 2).max(self.ppb_floor);
        }
    }

    /// One item's answer: the outcomes it settles, or the task goes back to wait for its next send.
    fn settle_item(
        &mut self,
        mut task: Task,
        resp: &ItemResponse,
        now: Instant,
        tally: &mut Tally,
    ) -> Vec<ChangeResult> {
        match classify(&task, resp) {
            Fate::Done(done) => done,
            Fate::Throttled(after) => {
                self.stats.throttled += 1;
                if resp.throttle_information.is_some() {
                    tally.seen.throttled_quota += 1;
                } else {
                    tally.seen.throttled_other += 1;
                }
                if let Some(after) = after {
                    tally.seen.retry_after = Some(tally.seen.retry_after.map_or(after, |l| l.max(after)));
                }
                task.throttles += 1;
                if task.throttles > self.cfg.max_throttles {
                    return failed(&task.write, "still throttled after many retries", &failure_of(resp));
                }
                task.hold_until(now + self.cfg.retry.wait(task.throttles - 1, after));
                self.queues.delayed.push(task);
                Vec::new()
            }
            Fate::Transient(after, failure) => {
                tally.troubled = true;
                tally.unavailable_patch |= task.write.method() == Method::Patch && matches!(failure.status, 503 | 504);
                task.attempts += 1;
                if task.attempts >= self.cfg.retry.max_attempts.max(1) {
                    let detail = format!("Graph kept failing after {} attempts", task.attempts);
                    return failed(&task.write, &detail, &failure);
                }
                self.stats.retried += 1;
                task.hold_until(now + self.cfg.retry.wait(task.attempts - 1, after));
                self.queues.delayed.push(task);
                Vec::new()
            }
            Fate::Split => {
                self.stats.splits += 1;
                let users = task.write.users();
                let n = users.len();
                for user in users.into_iter().rev() {
                    if let Some(write) = Write::add(task.write.group().clone(), vec![user]) {
                        let mut single = Task::new(write);
                        single.split_from = Some(n);
                        self.queues.push_front(single);
                    }
                }
                Vec::new()
            }
        }
    }
}

/// Runs the writes of a work list. Every change of `works` (adds, removes) ends with exactly one outcome in
/// `sink`, unless the run stops early with an error, in which case the changes without an outcome are the ones
/// a rerun will send.
pub async fn execute<T: Transport>(
    transport: Arc<T>,
    works: &[GroupWork],
    cfg: &Config,
    sink: &mut dyn Sink,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Stats, ExecError> {
    let mut run = Run::new(transport, works, cfg);
    loop {
        let now = Instant::now();
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            run.interrupt();
        }
        run.queues.promote(now);
        let wake = run.launch(now);
        if run.in_flight.is_empty() {
            if let Some(err) = run.abort.take() {
                return Err(err);
            }
            if run.queues.is_empty() {
                if let Some(rate) = run.pace.rate() {
                    tracing::info!("Graph allowed about {rate:.1} writes per second");
                }
                return Ok(run.stats);
            }
        }
        let joined = tokio::select! {
            joined = run.in_flight.join_next(), if !run.in_flight.is_empty() => joined,
            _ = sleep_until(wake), if wake.is_some() => None,
            _ = stopped(&mut stop), if run.abort.is_none() && stop.is_some() => {
                run.interrupt();
                None
            }
        };
        let Some(joined) = joined else { continue };
        let flight = joined.map_err(|e| ExecError::Unreachable(format!("a request task failed: {e}")))?;
        let written = run.settle(flight, Instant::now());
        if !written.is_empty() {
            // On an error nothing more is sent; answers already in flight are lost to the journal, and a rerun
            // settles those changes from the membership it reads.
            sink.record(&written).map_err(ExecError::Sink)?;
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn stopped(stop: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            while !*rx.borrow() {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::gates::Drift;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    fn id(n: u16) -> ObjectId {
        crate::fixtures::id(n.into())
    }

    const GROUP: u16 = 0xffff;

    fn work(adds: std::ops::Range<u16>, removes: std::ops::Range<u16>, members: u64) -> GroupWork {
        GroupWork {
            group_id: id(GROUP),
            label: "g".into(),
            drift: Drift::default(),
            strict_drift: Drift::default(),
            member_count: members,
            planned_count: members,
            live_name: None,
            names: Default::default(),
            adds: adds.map(id).collect(),
            removes: removes.map(id).collect(),
            settled: vec![],
            recorded: 0,
        }
    }

    /// An in-memory group with scripted faults.
    #[derive(Default)]
    struct FakeState {
        members: BTreeSet<ObjectId>,
        deleted_users: BTreeSet<ObjectId>,
        /// Answers to force, in order, one per item sent (None = behave normally).
        script: VecDeque<Option<(u16, Option<Duration>)>>,
        requests: u64,
        items: Vec<(Method, String)>,
        fail_requests: u32,
        /// Whole-request answers to force, in order, one per request (None = answer the items).
        request_script: VecDeque<Option<TransportError>>,
        /// Every item sent: its key (method, url, body) and when.
        sends: Vec<(String, Instant)>,
        /// Every Retry-After given: the item's key, the send it answered and when it ends.
        holds: Vec<(String, Instant, Instant)>,
    }

    fn key(item: &Request) -> String {
        format!("{} {} {}", item.method().as_str(), item.url(), item.body().map(|b| b.to_string()).unwrap_or_default())
    }

    #[derive(Default)]
    struct Fake(Mutex<FakeState>);

    fn err(status: u16, message: &str) -> Option<GraphFailure> {
        Some(GraphFailure {
            status,
            code: Some("Code".into()),
            message: Some(message.into()),
            request_id: Some("rid".into()),
        })
    }

    impl Transport for Fake {
        async fn send(&self, items: Vec<Request>) -> Result<BatchAnswer, TransportError> {
            let mut s = self.0.lock().unwrap();
            s.requests += 1;
            assert!(items.len() <= MAX_BATCH_ITEMS);
            let now = Instant::now();
            for item in &items {
                s.sends.push((key(item), now));
            }
            if let Some(Some(e)) = s.request_script.pop_front() {
                if let Some(after) = e.retry_after {
                    let holds: Vec<_> = items.iter().map(|i| (key(i), now, now + after)).collect();
                    s.holds.extend(holds);
                }
                return Err(e);
            }
            if s.fail_requests > 0 {
                s.fail_requests -= 1;
                return Err(TransportError::no_answer("connection reset"));
            }
            let mut out = Vec::new();
            for item in items.iter().rev() {
                s.items.push((item.method(), item.url().to_string()));
                if let Some(Some((status, retry_after))) = s.script.pop_front() {
                    if let Some(after) = retry_after {
                        s.holds.push((key(item), now, now + after));
                    }
                    out.push(ItemResponse {
                        retry_after,
                        error: err(status, "scripted"),
                        ..ItemResponse::with_status(item.id(), status)
                    });
                    continue;
                }
                let resp = match item.method() {
                    Method::Patch => {
                        let binds = item.body().unwrap()["members@odata.bind"].as_array().unwrap().clone();
                        assert!(!binds.is_empty() && binds.len() <= 20);
                        let users: Vec<ObjectId> = binds
                            .iter()
                            .map(|b| ObjectId::parse(b.as_str().unwrap().rsplit('/').next().unwrap()).unwrap())
                            .collect();
                        if users.iter().any(|u| s.deleted_users.contains(u)) {
                            (404, err(404, "Resource 'x' does not exist or one of its queried reference-property objects are not present."))
                        } else if users.iter().any(|u| s.members.contains(u)) {
                            (400, err(400, "One or more added object references already exist for the following modified properties: 'members'."))
                        } else {
                            s.members.extend(users);
                            (204, None)
                        }
                    }
                    Method::Delete => {
                        assert!(item.url().ends_with("/$ref"));
                        let user = ObjectId::parse(item.url().split('/').nth(4).unwrap()).unwrap();
                        if s.members.remove(&user) {
                            (204, None)
                        } else {
                            (404, err(404, "Resource does not exist"))
                        }
                    }
                };
                out.push(ItemResponse { error: resp.1, ..ItemResponse::with_status(item.id(), resp.0) });
            }
            Ok(BatchAnswer { items: out, client_request_id: format!("crid-{}", s.requests), request_id: None })
        }
    }

    #[derive(Default)]
    struct Collect(Vec<ChangeResult>, Vec<Option<RequestIds>>);
    impl Sink for Collect {
        fn record(&mut self, written: &[Written]) -> crate::Result<()> {
            self.0.extend(written.iter().map(|w| w.result.clone()));
            self.1.extend(written.iter().map(|w| w.request.clone()));
            Ok(())
        }
    }

    fn cfg() -> Config {
        Config {
            retry: RetryPolicy {
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                ..RetryPolicy::default()
            },
            bind_base: "http://127.0.0.1:1/v1.0".into(),
            ..Config::default()
        }
    }

    /// A runtime whose clock is paused: sleeps end at once, in order, so waits are checked without waiting.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
    }

    fn run(fake: &Arc<Fake>, works: &[GroupWork], cfg: &Config) -> (Result<Stats, ExecError>, Vec<ChangeResult>) {
        let mut sink = Collect::default();
        let stats = paused().block_on(execute(Arc::clone(fake), works, cfg, &mut sink, None));
        (stats, sink.0)
    }

    fn count(results: &[ChangeResult], outcome: Outcome) -> usize {
        results.iter().filter(|r| r.outcome == outcome).count()
    }

    fn assert_each_once(results: &[ChangeResult], works: &[GroupWork]) {
        let mut seen = BTreeSet::new();
        for r in results {
            assert!(seen.insert(r.user_id.clone()), "two outcomes for {}", r.user_id);
        }
        let expected: usize = works.iter().map(|w| w.adds.len() + w.removes.len()).sum();
        assert_eq!(seen.len(), expected);
    }

    #[test]
    fn writes_are_patch_or_delete_ref_only() {
        let add = Write::add(id(1), vec![id(2), id(3)]).unwrap();
        let req = add.request("1".into(), "https://graph.microsoft.com/v1.0/");
        assert_eq!(req.method(), Method::Patch);
        assert_eq!(req.url(), format!("/groups/{}", id(1)));
        assert_eq!(
            req.body().unwrap()["members@odata.bind"][1],
            format!("https://graph.microsoft.com/v1.0/directoryObjects/{}", id(3))
        );
        let rm = Write::remove(id(1), id(2)).request("2".into(), "x");
        assert_eq!(rm.method(), Method::Delete);
        assert_eq!(rm.url(), format!("/groups/{}/members/{}/$ref", id(1), id(2)));
        assert!(rm.body().is_none());
        assert!(Write::add(id(1), vec![]).is_none());
        assert!(Write::add(id(1), (0..21).map(id).collect()).is_none());
        // Every DELETE any work list can produce ends in /$ref.
        for w in writes_for(&[work(0..45, 100..160, 200)]) {
            let r = w.request("1".into(), "b");
            if r.method() == Method::Delete {
                assert!(r.url().ends_with("/$ref") && r.url().contains("/members/"), "{}", r.url());
            }
        }
    }

    #[test]
    fn estimate_meets_the_floor() {
        let e = estimate(&[work(0..10_000, 20_000..30_000, 20_000)], 20);
        assert_eq!(e.patches, 500);
        assert_eq!(e.deletes, 10_000);
        assert_eq!(e.writes, 10_500);
        assert_eq!(e.requests, 525);
        assert!(e.requests <= 10_000u64.div_ceil(400) + 10_000u64.div_ceil(20));
        let e = estimate(&[work(0..10_000, 20_000..30_000, 20_000)], 5);
        assert_eq!(e.requests, 525, "DELETEs fill the rest of each batch");
        let e = estimate(&[work(0..10_000, 0..0, 0)], 5);
        assert_eq!(e.requests, 100);
    }

    #[test]
    fn happy_path_batches_at_the_floor() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().members = (1000..1100).map(id).collect();
        let works = [work(0..1000, 1000..1100, 100)];
        let (stats, results) = run(&fake, &works, &cfg());
        let stats = stats.unwrap();
        assert_each_once(&results, &works);
        assert_eq!(count(&results, Outcome::Applied), 1100);
        assert_eq!(stats.patches, 50);
        assert_eq!(stats.deletes, 100);
        assert_eq!(stats.requests, estimate(&works, 20).requests);
        let s = fake.0.lock().unwrap();
        assert_eq!(s.members, (0..1000).map(id).collect());
        assert!(s.items.iter().all(|(m, u)| *m == Method::Patch || u.ends_with("/$ref")));
    }

    #[test]
    fn already_member_inside_a_patch_splits_member_by_member() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().members = [id(7)].into_iter().collect();
        let works = [work(0..20, 0..0, 1)];
        let (stats, results) = run(&fake, &works, &cfg());
        let stats = stats.unwrap();
        assert_each_once(&results, &works);
        assert_eq!(count(&results, Outcome::Applied), 19);
        assert_eq!(count(&results, Outcome::AlreadyMember), 1);
        assert_eq!(stats.splits, 1);
        assert_eq!(stats.patches, 21);
        let r = results.iter().find(|r| r.user_id == id(7)).unwrap();
        assert_eq!(r.error.as_ref().unwrap().request_id.as_deref(), Some("rid"));
    }

    #[test]
    fn deleted_user_fails_and_non_member_remove_is_already_absent() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().deleted_users = [id(3)].into_iter().collect();
        let works = [work(0..5, 100..102, 10)];
        let (stats, results) = run(&fake, &works, &cfg());
        stats.unwrap();
        assert_each_once(&results, &works);
        let deleted = results.iter().find(|r| r.user_id == id(3)).unwrap();
        assert_eq!(deleted.outcome, Outcome::Failed);
        assert!(deleted.detail.as_deref().unwrap().contains("no longer exists"));
        assert_eq!(deleted.error.as_ref().unwrap().status, 404);
        assert_eq!(count(&results, Outcome::AlreadyAbsent), 2);
        assert_eq!(count(&results, Outcome::Applied), 4);
    }

    #[test]
    fn throttled_and_unavailable_items_are_retried() {
        let fake = Arc::new(Fake::default());
        {
            let mut s = fake.0.lock().unwrap();
            s.members = (100..140).map(id).collect();
            // Items are answered last-first; mix 429, 503 and successes in the first batch.
            s.script = [
                Some((429, Some(Duration::from_millis(30)))),
                None,
                Some((503, None)),
                Some((429, Some(Duration::from_millis(10)))),
                None,
                Some((500, Some(Duration::from_millis(1)))),
            ]
            .into_iter()
            .collect();
        }
        let works = [work(0..60, 100..140, 40)];
        let rt = paused();
        let started = rt.block_on(async { Instant::now() });
        let mut sink = Collect::default();
        let stats = rt.block_on(execute(Arc::clone(&fake), &works, &cfg(), &mut sink, None)).unwrap();
        let took = rt.block_on(async { Instant::now() }) - started;
        let results = sink.0;
        assert!(took >= Duration::from_millis(30), "waited for the longest Retry-After ({took:?} on the paused clock)");
        assert_each_once(&results, &works);
        assert_eq!(count(&results, Outcome::Applied), 100);
        assert_eq!(stats.throttled, 2);
        assert_eq!(stats.retried, 2);
        assert_eq!(fake.0.lock().unwrap().members, (0..60).map(id).collect());
    }

    #[test]
    fn dropped_requests_are_resent() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().fail_requests = 2;
        let works = [work(0..30, 0..0, 0)];
        let (stats, results) = run(&fake, &works, &cfg());
        stats.unwrap();
        assert_each_once(&results, &works);
        assert_eq!(count(&results, Outcome::Applied), 30);
    }

    #[test]
    fn graph_down_stops_the_run_without_inventing_outcomes() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().fail_requests = 1000;
        let works = [work(0..30, 0..0, 0)];
        let three = Config { retry: RetryPolicy { max_attempts: 3, ..cfg().retry }, ..cfg() };
        let (stats, results) = run(&fake, &works, &three);
        assert!(matches!(stats, Err(ExecError::Unreachable(_))));
        assert!(results.is_empty());
    }

    #[test]
    fn persistent_5xx_fails_the_item_with_its_error() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().script = std::iter::repeat_n(Some((503, None)), 3).collect();
        let works = [work(0..0, 0..0, 0), work(0..1, 0..0, 0)];
        let three = Config { retry: RetryPolicy { max_attempts: 3, ..cfg().retry }, ..cfg() };
        let (stats, results) = run(&fake, &works, &three);
        stats.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Failed);
        assert_eq!(results[0].error.as_ref().unwrap().status, 503);
    }

    /// Fails when an item was sent before a Retry-After it had been given ended.
    fn assert_no_early_resend(s: &FakeState) {
        for (key, answered, until) in &s.holds {
            for (_, at) in s.sends.iter().filter(|(k, t)| k == key && t > answered) {
                assert!(at >= until, "{key} was sent again {:?} before its Retry-After ended", *until - *at);
            }
        }
    }

    #[test]
    fn a_resend_after_a_5xx_or_a_dropped_request_still_waits_for_every_retry_after() {
        let fake = Arc::new(Fake::default());
        {
            let mut s = fake.0.lock().unwrap();
            s.members = (100..102).map(id).collect();
            // Request 1: the last item (answered first) is throttled for a second, another gets a 503.
            s.script = [Some((429, Some(Duration::from_secs(1)))), Some((503, None))].into_iter().collect();
            s.request_script = [
                None,
                // Request 2 (the 503's item, after its back-off): the whole $batch gets a 503 with Retry-After 0.5 s.
                Some(TransportError {
                    message: "503".into(),
                    retryable: true,
                    status: Some(503),
                    retry_after: Some(Duration::from_millis(500)),
                }),
                // Request 3: the connection drops.
                Some(TransportError::no_answer("connection reset")),
                // Request 4: the whole $batch is throttled for 2 s.
                Some(TransportError {
                    message: "429".into(),
                    retryable: true,
                    status: Some(429),
                    retry_after: Some(Duration::from_secs(2)),
                }),
            ]
            .into_iter()
            .collect();
        }
        let works = [work(0..3, 100..102, 2)];
        let (stats, results) = run(&fake, &works, &Config { max_concurrency: 1, ..cfg() });
        let stats = stats.unwrap();
        assert_each_once(&results, &works);
        assert!(results.iter().all(|r| r.outcome == Outcome::Applied));
        let s = fake.0.lock().unwrap();
        assert_eq!(s.request_script.len(), 0, "every scripted fault fired");
        assert!(stats.throttled >= 2 && stats.retried >= 2, "{stats:?}");
        assert!(!s.holds.is_empty());
        assert_no_early_resend(&s);
    }

    /// Graph with a write quota: a bucket of `cap` writes refilled at `rate` a second, 429 with
    /// `WriteLimitExceeded` and the time to the next token when it is empty, 5 ms per request.
    struct Quota(Mutex<(f64, Instant, u64, u64)>, f64, f64);

    impl Transport for Quota {
        async fn send(&self, items: Vec<Request>) -> Result<BatchAnswer, TransportError> {
            tokio::time::sleep(Duration::from_micros(2500)).await;
            let out = {
                let mut s = self.0.lock().unwrap();
                let now = Instant::now();
                let (cap, rate) = (self.1, self.2);
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(cap);
                s.1 = now;
                let mut out = Vec::new();
                for item in &items {
                    if s.0 >= 1.0 {
                        s.0 -= 1.0;
                        s.2 += 1;
                        out.push(ItemResponse::with_status(item.id(), 204));
                    } else {
                        s.3 += 1;
                        out.push(ItemResponse {
                            retry_after: Some(Duration::from_secs_f64((1.0 - s.0) / rate)),
                            throttle_information: Some("WriteLimitExceeded".into()),
                            ..ItemResponse::with_status(item.id(), 429)
                        });
                    }
                }
                out
            };
            tokio::time::sleep(Duration::from_micros(2500)).await;
            Ok(BatchAnswer { items: out, client_request_id: "c".into(), request_id: None })
        }
    }

    #[test]
    fn writes_keep_to_the_rate_graph_allows() {
        let rt = paused();
        let (cap, rate) = (200.0, 200.0);
        let quota = Arc::new(Quota(Mutex::new((cap, rt.block_on(async { Instant::now() }), 0, 0)), cap, rate));
        let works = [work(0..0, 0..3000, 3000)];
        let started = rt.block_on(async { Instant::now() });
        let mut sink = Collect::default();
        let stats = rt.block_on(execute(Arc::clone(&quota), &works, &cfg(), &mut sink, None)).unwrap();
        let took = (rt.block_on(async { Instant::now() }) - started).as_secs_f64();
        assert_each_once(&sink.0, &works);
        let (_, _, accepted, throttled) = *quota.0.lock().unwrap();
        assert_eq!(accepted, 3000);
        let minimum = (3000.0 - cap) / rate;
        assert!(throttled * 10 <= 3000, "{throttled} answers of 429 for 3000 writes");
        assert!(took <= minimum * 1.10, "{took:.2} s on the paused clock against a minimum of {minimum:.2} s");
        assert_eq!(stats.throttled, throttled);
        // Every outcome names the request that settled it.
        assert!(sink.1.iter().all(|r| r.as_ref().is_some_and(|ids| ids.client_request_id == "c")));
    }
}
