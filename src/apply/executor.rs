//! The executor: turns the work list into `$batch` requests and reads every item's answer.
//!
//! - Adds go as `PATCH /groups/{id}` with `members@odata.bind`, at most 20 members each.
//! - Removes go as `DELETE /groups/{gid}/members/{uid}/$ref`, one user each. A DELETE without `/$ref` would
//!   delete the user object itself; [`Write`] is the only way to make a request, and it cannot spell one.
//! - A `$batch` holds at most 20 items, of which at most `patches_per_batch` are PATCHes; the rest of the
//!   batch is filled with DELETEs.
//! - Several batches are in flight at once, up to a limit that halves when Graph throttles and grows back by one
//!   after a run of clean batches.
//!
//! Each item's answer decides its fate:
//!
//! | answer | add (PATCH of n) | remove (DELETE `$ref`) |
//! |---|---|---|
//! | 2xx | applied | applied |
//! | 429 | everything waits for the longest Retry-After, then the item is sent again | same |
//! | 5xx, 424, no answer | sent again after Retry-After or an exponential back-off | same |
//! | 400 "already exist", n > 1 | split into n single-member PATCHes | – |
//! | 400 "already exist", n = 1 | already-member | – |
//! | other 4xx, n > 1 | split (one bad member fails the whole PATCH) | – |
//! | 404 / 400 "do(es) not exist", n = 1 | failed: the user no longer exists | already-absent |
//! | anything else | failed, with Graph's code, message and request-id | failed |

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::gates::GroupWork;
use super::{ChangeResult, GraphFailure, Outcome};
use crate::identity::ObjectId;
use crate::plan::Action;

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
}

/// A `$batch` request that got no usable answer (after the client's own retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What went wrong.
    pub message: String,
    /// False when sending again cannot help (for example, the credentials were refused).
    pub retryable: bool,
}

/// Sends one `$batch`. Implemented for the Graph client, and by in-memory fakes in tests.
pub trait Transport: Send + Sync + 'static {
    /// Sends the items as one `$batch` request and returns the answers, in any order.
    fn send(&self, items: Vec<Request>) -> impl Future<Output = Result<Vec<ItemResponse>, TransportError>> + Send;
}

/// Receives the outcomes as they arrive (the journal, the progress bar).
pub trait Sink {
    /// Records the outcomes of one batch. An error stops the run.
    fn record(&mut self, results: &[ChangeResult]) -> crate::Result<()>;
}

/// The executor's tunables.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many PATCHes (20 members each) go into one `$batch` (1–20).
    pub patches_per_batch: usize,
    /// The most `$batch` requests in flight at once.
    pub max_concurrency: usize,
    /// How often an item is sent after 5xx or transport failures before it counts as failed.
    pub max_attempts: u32,
    /// How often an item may be throttled (429) before it counts as failed.
    pub max_throttles: u32,
    /// The Graph base URL for `members@odata.bind` references.
    pub bind_base: String,
    /// The first back-off when Graph gives no Retry-After; it doubles per attempt.
    pub backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// How long one `$batch` may take before it is abandoned and its items are sent again.
    pub request_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            patches_per_batch: MAX_BATCH_ITEMS,
            max_concurrency: 4,
            max_attempts: 8,
            max_throttles: 500,
            bind_base: "https://graph.microsoft.com/v1.0".into(),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: None,
        }
    }
}

/// What the executor sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// `$batch` requests sent (the client's own resends not counted).
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

#[derive(Debug, Clone)]
struct Task {
    write: Write,
    attempts: u32,
    throttles: u32,
    not_before: Option<Instant>,
    /// The PATCH this task was split from, for the outcome's detail.
    split_from: Option<usize>,
}

impl Task {
    fn new(write: Write) -> Task {
        Task { write, attempts: 0, throttles: 0, not_before: None, split_from: None }
    }
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

fn failure_of(resp: &ItemResponse) -> GraphFailure {
    resp.error.clone().unwrap_or(GraphFailure { status: resp.status, code: None, message: None, request_id: None })
}

fn message_has(failure: &GraphFailure, needle: &str) -> bool {
    failure.message.as_deref().is_some_and(|m| m.to_ascii_lowercase().contains(needle))
}

fn is_transient(status: u16) -> bool {
    matches!(status, 0 | 424 | 500 | 502 | 503 | 504)
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
    if status == 429 {
        return Fate::Throttled(resp.retry_after);
    }
    if is_transient(status) {
        return Fate::Transient(resp.retry_after, failure);
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

fn backoff(cfg: &Config, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    cfg.backoff.saturating_mul(factor).min(cfg.max_backoff)
}

struct Queues {
    patches: VecDeque<Task>,
    deletes: VecDeque<Task>,
    delayed: Vec<Task>,
}

impl Queues {
    fn push_front(&mut self, task: Task) {
        match task.write.method() {
            Method::Patch => self.patches.push_front(task),
            Method::Delete => self.deletes.push_front(task),
        }
    }

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

    fn next_due(&self) -> Option<Instant> {
        self.delayed.iter().filter_map(|t| t.not_before).min()
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

type Flight = (Vec<Task>, Result<Vec<ItemResponse>, TransportError>);

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
    let mut queues = Queues { patches: VecDeque::new(), deletes: VecDeque::new(), delayed: Vec::new() };
    for write in writes_for(works) {
        match write.method() {
            Method::Patch => queues.patches.push_back(Task::new(write)),
            Method::Delete => queues.deletes.push_back(Task::new(write)),
        }
    }
    let max_concurrency = cfg.max_concurrency.max(1);
    let mut limit = max_concurrency;
    let mut ppb = cfg.patches_per_batch.clamp(1, MAX_BATCH_ITEMS);
    let ppb_floor = ppb.min(5);
    let mut clean_streak = 0usize;
    let mut pause_until: Option<Instant> = None;
    let mut stats = Stats::default();
    let mut in_flight: JoinSet<Flight> = JoinSet::new();
    let mut abort: Option<ExecError> = None;

    loop {
        let now = Instant::now();
        if pause_until.is_some_and(|p| p <= now) {
            pause_until = None;
        }
        if stop.as_ref().is_some_and(|s| *s.borrow()) && abort.is_none() {
            abort = Some(ExecError::Interrupted);
        }
        queues.promote(now);
        while abort.is_none() && pause_until.is_none() && in_flight.len() < limit && queues.ready() {
            let tasks = queues.take_batch(ppb);
            let requests: Vec<Request> =
                tasks.iter().enumerate().map(|(i, t)| t.write.request((i + 1).to_string(), &cfg.bind_base)).collect();
            stats.requests += 1;
            for t in &tasks {
                match t.write.method() {
                    Method::Patch => stats.patches += 1,
                    Method::Delete => stats.deletes += 1,
                }
            }
            let transport = Arc::clone(&transport);
            let timeout = cfg.request_timeout;
            in_flight.spawn(async move {
                let answer = match timeout {
                    Some(limit) => tokio::time::timeout(limit, transport.send(requests)).await.unwrap_or_else(|_| {
                        Err(TransportError {
                            message: format!("no answer to a $batch within {:.1} s", limit.as_secs_f64()),
                            retryable: true,
                        })
                    }),
                    None => transport.send(requests).await,
                };
                (tasks, answer)
            });
        }
        if in_flight.is_empty() {
            if let Some(err) = abort.take() {
                return Err(err);
            }
            if !queues.ready() && queues.delayed.is_empty() {
                return Ok(stats);
            }
        }
        // Wake for the next answer, or when a pause ends or a delayed item falls due (if there is room to send).
        let wake = if abort.is_none() && in_flight.len() < limit {
            match (pause_until, queues.next_due()) {
                (Some(p), _) => Some(p),
                (None, due) => due,
            }
        } else {
            None
        };
        let joined = tokio::select! {
            joined = in_flight.join_next(), if !in_flight.is_empty() => joined,
            _ = sleep_until(wake), if wake.is_some() => None,
            _ = stopped(&mut stop), if abort.is_none() && stop.is_some() => {
                abort = Some(ExecError::Interrupted);
                None
            }
        };
        let Some(joined) = joined else { continue };
        let (tasks, answer) = match joined {
            Ok(flight) => flight,
            Err(e) => return Err(ExecError::Unreachable(format!("a request task failed: {e}"))),
        };
        let now = Instant::now();
        match answer {
            Err(err) => {
                limit = (limit / 2).max(1);
                clean_streak = 0;
                for mut task in tasks {
                    task.attempts += 1;
                    stats.retried += 1;
                    if !err.retryable || task.attempts >= cfg.max_attempts {
                        if abort.is_none() {
                            abort = Some(ExecError::Unreachable(err.message.clone()));
                        }
                        // The change keeps no outcome: a rerun sends it again.
                        continue;
                    }
                    task.not_before = Some(now + backoff(cfg, task.attempts));
                    queues.delayed.push(task);
                }
            }
            Ok(responses) => {
                let mut by_id: BTreeMap<String, ItemResponse> =
                    responses.into_iter().map(|r| (r.id.clone(), r)).collect();
                let mut results = Vec::new();
                let mut throttled: Vec<Task> = Vec::new();
                let mut longest: Option<Duration> = None;
                let mut troubled = false;
                let mut unavailable_patch = false;
                for (i, mut task) in tasks.into_iter().enumerate() {
                    let resp = by_id.remove(&(i + 1).to_string()).unwrap_or(ItemResponse {
                        id: (i + 1).to_string(),
                        status: 0,
                        retry_after: None,
                        error: Some(GraphFailure {
                            status: 0,
                            code: None,
                            message: Some("the $batch answer had no response for this item".into()),
                            request_id: None,
                        }),
                    });
                    match classify(&task, &resp) {
                        Fate::Done(done) => results.extend(done),
                        Fate::Throttled(after) => {
                            stats.throttled += 1;
                            troubled = true;
                            task.throttles += 1;
                            if let Some(after) = after {
                                longest = Some(longest.map_or(after, |l| l.max(after)));
                            }
                            if task.throttles > cfg.max_throttles {
                                let failure = failure_of(&resp);
                                for u in task.write.users() {
                                    results.push(result(
                                        &task.write,
                                        u,
                                        Outcome::Failed,
                                        Some("still throttled after many retries".into()),
                                        Some(failure.clone()),
                                    ));
                                }
                            } else {
                                throttled.push(task);
                            }
                        }
                        Fate::Transient(after, failure) => {
                            troubled = true;
                            if task.write.method() == Method::Patch && matches!(failure.status, 503 | 504) {
                                unavailable_patch = true;
                            }
                            task.attempts += 1;
                            if task.attempts >= cfg.max_attempts {
                                for u in task.write.users() {
                                    results.push(result(
                                        &task.write,
                                        u,
                                        Outcome::Failed,
                                        Some(format!("Graph kept failing after {} attempts", task.attempts)),
                                        Some(failure.clone()),
                                    ));
                                }
                            } else {
                                stats.retried += 1;
                                task.not_before = Some(now + after.unwrap_or_else(|| backoff(cfg, task.attempts)));
                                queues.delayed.push(task);
                            }
                        }
                        Fate::Split => {
                            stats.splits += 1;
                            let users = task.write.users();
                            let n = users.len();
                            for user in users.into_iter().rev() {
                                if let Some(write) = Write::add(task.write.group().clone(), vec![user]) {
                                    let mut single = Task::new(write);
                                    single.split_from = Some(n);
                                    queues.push_front(single);
                                }
                            }
                        }
                    }
                }
                if !throttled.is_empty() {
                    // Graph: retry throttled items after the longest Retry-After; without one, back off.
                    let worst = throttled.iter().map(|t| t.throttles).max().unwrap_or(1);
                    let wait = longest.unwrap_or_else(|| backoff(cfg, worst));
                    let until = now + wait;
                    pause_until = Some(pause_until.map_or(until, |p| p.max(until)));
                    for task in throttled.into_iter().rev() {
                        queues.push_front(task);
                    }
                }
                if troubled {
                    limit = (limit / 2).max(1);
                    clean_streak = 0;
                    if unavailable_patch {
                        ppb = (ppb / 2).max(ppb_floor);
                    }
                } else {
                    clean_streak += 1;
                    if clean_streak >= limit {
                        limit = (limit + 1).min(max_concurrency);
                        clean_streak = 0;
                    }
                }
                if !results.is_empty() {
                    if let Err(e) = sink.record(&results) {
                        // Nothing more is sent; answers already in flight are lost to the journal, and a rerun
                        // settles those changes from the membership it reads.
                        return Err(ExecError::Sink(e));
                    }
                }
            }
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
        ObjectId::parse(&format!("00000000-0000-0000-0000-00000000{n:04x}")).unwrap()
    }

    const GROUP: u16 = 0xffff;

    fn work(adds: std::ops::Range<u16>, removes: std::ops::Range<u16>, members: u64) -> GroupWork {
        GroupWork {
            group_id: id(GROUP),
            label: "g".into(),
            drift: Drift::default(),
            strict_drift: Drift::default(),
            member_count: members,
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
        async fn send(&self, items: Vec<Request>) -> Result<Vec<ItemResponse>, TransportError> {
            let mut s = self.0.lock().unwrap();
            s.requests += 1;
            assert!(items.len() <= MAX_BATCH_ITEMS);
            if s.fail_requests > 0 {
                s.fail_requests -= 1;
                return Err(TransportError { message: "connection reset".into(), retryable: true });
            }
            let mut out = Vec::new();
            for item in items.iter().rev() {
                s.items.push((item.method(), item.url().to_string()));
                if let Some(Some((status, retry_after))) = s.script.pop_front() {
                    out.push(ItemResponse {
                        id: item.id().into(),
                        status,
                        retry_after,
                        error: err(status, "scripted"),
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
                out.push(ItemResponse { id: item.id().into(), status: resp.0, retry_after: None, error: resp.1 });
            }
            Ok(out)
        }
    }

    #[derive(Default)]
    struct Collect(Vec<ChangeResult>);
    impl Sink for Collect {
        fn record(&mut self, results: &[ChangeResult]) -> crate::Result<()> {
            self.0.extend_from_slice(results);
            Ok(())
        }
    }

    fn cfg() -> Config {
        Config {
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            bind_base: "http://127.0.0.1:1/v1.0".into(),
            ..Config::default()
        }
    }

    fn run(fake: &Arc<Fake>, works: &[GroupWork], cfg: &Config) -> (Result<Stats, ExecError>, Vec<ChangeResult>) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let mut sink = Collect::default();
        let stats = rt.block_on(execute(Arc::clone(fake), works, cfg, &mut sink, None));
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
        let started = std::time::Instant::now();
        let (stats, results) = run(&fake, &works, &cfg());
        let stats = stats.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30), "waited for the longest Retry-After");
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
        let (stats, results) = run(&fake, &works, &Config { max_attempts: 3, ..cfg() });
        assert!(matches!(stats, Err(ExecError::Unreachable(_))));
        assert!(results.is_empty());
    }

    #[test]
    fn persistent_5xx_fails_the_item_with_its_error() {
        let fake = Arc::new(Fake::default());
        fake.0.lock().unwrap().script = std::iter::repeat_n(Some((503, None)), 3).collect();
        let works = [work(0..0, 0..0, 0), work(0..1, 0..0, 0)];
        let (stats, results) = run(&fake, &works, &Config { max_attempts: 3, ..cfg() });
        stats.unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Failed);
        assert_eq!(results[0].error.as_ref().unwrap().status, 503);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = Config { backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(10), ..Config::default() };
        assert_eq!(backoff(&c, 1), Duration::from_secs(1));
        assert_eq!(backoff(&c, 3), Duration::from_secs(4));
        assert_eq!(backoff(&c, 30), Duration::from_secs(10));
    }
}
