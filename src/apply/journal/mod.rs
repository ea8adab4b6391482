//! The apply journal: an append-only, hash-chained JSONL file.
//!
//! Line 1 is a header (`{"format":"writeback-journal",…}`). Every later line is one event and carries `seq`
//! (1, 2, 3, …) and `prev`, which is `sha256:` followed by the SHA-256 (lowercase hex) of the previous line's
//! exact bytes, without its line feed. Editing, inserting or deleting a line breaks the chain at the next line.
//! The receipt records the head hash and `seq`, which anchors the tail as well.
//!
//! Events: `apply-started` (each run, first or resumed), `change-outcome` (one per change, written and fsynced
//! as results arrive), `apply-finished` (once per plan). A journal may hold several plans; events carry the plan
//! id.
//!
//! A crash can leave a last line without its line feed. [`verify_chain`] reports it as a torn tail (it is not
//! part of the chain), and [`Journal::open`] cuts it off before appending, saying so.
//!
//! This file is the chain itself, pure: the lines, their links, verification and what a chain says about a plan
//! ([`PlanProgress`]). The file on disk (open, append, fsync, cutting a torn tail) is the small [`file`] module.

pub mod file;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Applier, ChangeResult, FinishStatus, OutcomeCounts, RequestIds};
use crate::error::Error;

use crate::identity::ObjectId;
use crate::plan::precondition::sha256_hex;
use crate::plan::timestamp;
pub use file::{read, Journal, Opened};

/// The `format` marker of the header line.
pub const JOURNAL_FORMAT: &str = "writeback-journal";
/// The journal format version this build writes and reads.
pub const JOURNAL_VERSION: &str = "1.1";

/// The first line of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`JOURNAL_FORMAT`].
    pub format: String,
    /// Always [`JOURNAL_VERSION`].
    pub format_version: String,
    /// When the journal was created.
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// The writeback that created it.
    pub tool_version: String,
}

/// The Graph request whose answer settled a change, so that an auditor can find the write in Entra's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// The `client-request-id` writeback sent with the request.
    pub client_request_id: String,
    /// Graph's `request-id` for the write (the batch item's own, else the `$batch` request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// When Graph's answer arrived.
    #[serde(with = "timestamp_millis")]
    pub at: DateTime<Utc>,
}

impl WriteRecord {
    /// The record of a request's ids, answered at `at`.
    pub fn new(ids: &RequestIds, at: DateTime<Utc>) -> WriteRecord {
        WriteRecord { client_request_id: ids.client_request_id.clone(), request_id: ids.request_id.clone(), at }
    }
}

/// One journal event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// A run began (the first one for the plan, or a resume).
    ApplyStarted {
        /// The plan.
        plan_id: Uuid,
        /// SHA-256 (hex) of the plan file's bytes.
        plan_sha256: String,
        /// The tenant the token belongs to.
        tenant_id: Option<String>,
        /// Who ran apply.
        applier: Applier,
        /// Who wrote to Entra ID: the Graph token's person or application (absent when the token did not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entra_actor: Option<crate::identity::EntraActor>,
        /// True when earlier runs of this plan were interrupted and this one finishes them.
        resume: bool,
        /// How many changes still had no outcome when this run began.
        pending: u64,
    },
    /// The final result of one change.
    ChangeOutcome {
        /// The plan.
        plan_id: Uuid,
        /// The change and its result.
        #[serde(flatten)]
        result: ChangeResult,
        /// The Graph request that settled it (since format 1.1; absent for a change settled without a write).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<WriteRecord>,
    },
    /// Every change of the plan has an outcome.
    ApplyFinished {
        /// The plan.
        plan_id: Uuid,
        /// Complete or partial.
        status: FinishStatus,
        /// The outcomes of all the plan's changes.
        counts: OutcomeCounts,
    },
}

impl Event {
    /// The plan the event belongs to.
    pub fn plan_id(&self) -> Uuid {
        match self {
            Event::ApplyStarted { plan_id, .. }
            | Event::ChangeOutcome { plan_id, .. }
            | Event::ApplyFinished { plan_id, .. } => *plan_id,
        }
    }
}

/// An event line as written: position, time and chain link, then the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// 1 for the first event after the header, then +1 per line.
    pub seq: u64,
    /// When the line was written.
    #[serde(with = "timestamp_millis")]
    pub ts: DateTime<Utc>,
    /// `sha256:<hex>` of the previous line's bytes.
    pub prev: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// A chain link value for a line: `sha256:<hex of its bytes>`.
pub fn link(line: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(line))
}

/// Serializes the header line (without the line feed).
pub fn header_line(header: &Header) -> Vec<u8> {
    serde_json::to_vec(header).unwrap_or_default()
}

/// Serializes an event line (without the line feed).
pub fn entry_line(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).unwrap_or_default()
}

/// The header a new journal starts with.
pub fn new_header(now: DateTime<Utc>) -> Header {
    Header {
        format: JOURNAL_FORMAT.into(),
        format_version: JOURNAL_VERSION.into(),
        created_at: now,
        tool_version: crate::tool_version(),
    }
}

/// The end of a chain: what the next line links to. Appending is pure: [`Tip::next_line`] makes the bytes, the
/// file only writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    /// The link to the last line (the `prev` the next line carries).
    pub head: String,
    /// The `seq` of the last event (0 right after the header).
    pub seq: u64,
}

impl Tip {
    /// The first line of a new journal (with its line feed) and the tip after it.
    pub fn start(header: &Header) -> (Tip, Vec<u8>) {
        let mut line = header_line(header);
        let tip = Tip { head: link(&line), seq: 0 };
        line.push(b'\n');
        (tip, line)
    }

    /// The line (with its line feed) that records `event` at `ts` after this tip; the tip moves past it.
    pub fn next_line(&mut self, ts: DateTime<Utc>, event: Event) -> Vec<u8> {
        let entry = Entry { seq: self.seq + 1, ts, prev: self.head.clone(), event };
        let mut line = entry_line(&entry);
        self.head = link(&line);
        self.seq = entry.seq;
        line.push(b'\n');
        line
    }
}

/// Where a journal's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ChainError {
    /// The first bad line (1-based; the header is line 1).
    pub line: u64,
    /// What is wrong there.
    pub message: String,
}

/// An incomplete last line (no line feed), left by a crash during a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The byte offset where the incomplete line starts (the file's length once it is cut off).
    pub offset: u64,
    /// How many bytes it has.
    pub len: u64,
    /// The line number it would have had.
    pub line: u64,
}

/// A journal whose chain verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The header.
    pub header: Header,
    /// Every event line, in order.
    pub entries: Vec<Entry>,
    /// The link to the last complete line (the `prev` the next line will carry).
    pub head: String,
    /// The `seq` of the last event (0 when there is none).
    pub seq: u64,
    /// The link of each event line, in the order of `entries` (the head after that line).
    pub links: Vec<String>,
    /// An incomplete last line, if there was one. It is not part of the chain.
    pub torn_tail: Option<TornTail>,
    /// The last line is complete and part of the chain, but the file lacks its final line feed (a crash between
    /// the line and its line feed, or an editor that strips it). The next append writes the line feed first.
    pub unterminated: bool,
}

impl Chain {
    /// Where the next line attaches.
    pub fn tip(&self) -> Tip {
        Tip { head: self.head.clone(), seq: self.seq }
    }

    /// An empty chain: a journal with only its header.
    pub fn empty(header: Header, tip: &Tip) -> Chain {
        Chain {
            header,
            entries: Vec::new(),
            head: tip.head.clone(),
            seq: tip.seq,
            links: Vec::new(),
            torn_tail: None,
            unterminated: false,
        }
    }
}

/// Recomputes the chain of a journal's bytes. Returns the first broken line, if any.
pub fn verify_chain(bytes: &[u8]) -> Result<Chain, ChainError> {
    let (complete, torn) = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) => (&bytes[..=last], &bytes[last + 1..]),
        None => (&bytes[..0], bytes),
    };
    let body = complete.strip_suffix(b"\n").unwrap_or(complete);
    let mut lines = body.split(|b| *b == b'\n');
    let header_bytes = match lines.next() {
        Some(line) if !line.is_empty() => line,
        _ => return Err(ChainError { line: 1, message: "the journal has no header line".into() }),
    };
    let header: Header = serde_json::from_slice(header_bytes)
        .map_err(|e| ChainError { line: 1, message: format!("the header is not valid: {e}") })?;
    if header.format != JOURNAL_FORMAT {
        return Err(ChainError { line: 1, message: format!("not a writeback journal (format '{}')", header.format) });
    }
    if header.format_version.split('.').next() != JOURNAL_VERSION.split('.').next() {
        return Err(ChainError {
            line: 1,
            message: format!("journal format version {} is not supported; upgrade writeback", header.format_version),
        });
    }
    let mut head = link(header_bytes);
    let mut seq = 0u64;
    let mut entries = Vec::new();
    let mut links = Vec::new();
    let mut line_no = 1u64;
    for line in lines {
        line_no += 1;
        if line.is_empty() {
            return Err(ChainError { line: line_no, message: "blank line".into() });
        }
        let entry: Entry = serde_json::from_slice(line)
            .map_err(|e| ChainError { line: line_no, message: format!("not a journal entry: {e}") })?;
        check_link(&entry, &head, seq, line_no)?;
        seq = entry.seq;
        head = link(line);
        links.push(head.clone());
        entries.push(entry);
    }
    // A last line without its line feed: a crash in the middle of the write leaves a line that does not parse,
    // which is torn off. One that parses as an entry is complete (only its line feed is missing) and is part of
    // the chain, checked like every other line.
    let mut unterminated = false;
    let mut torn_tail = None;
    if !torn.is_empty() {
        match serde_json::from_slice::<Entry>(torn) {
            Ok(entry) => {
                line_no += 1;
                check_link(&entry, &head, seq, line_no)?;
                seq = entry.seq;
                head = link(torn);
                links.push(head.clone());
                entries.push(entry);
                unterminated = true;
            }
            Err(_) => {
                torn_tail = Some(TornTail { offset: complete.len() as u64, len: torn.len() as u64, line: line_no + 1 });
            }
        }
    }
    Ok(Chain { header, entries, head, seq, links, torn_tail, unterminated })
}

/// Checks that `entry` (line `line_no`) follows the line whose link is `head` and whose `seq` is `seq`.
fn check_link(entry: &Entry, head: &str, seq: u64, line_no: u64) -> Result<(), ChainError> {
    if entry.prev != head {
        return Err(ChainError {
            line: line_no,
            message: format!(
                "the chain is broken: prev is {} but the line before hashes to {head} (an earlier line was \
                 changed, inserted or deleted)",
                entry.prev
            ),
        });
    }
    if entry.seq != seq + 1 {
        return Err(ChainError {
            line: line_no,
            message: format!("seq is {} but {} was expected", entry.seq, seq + 1),
        });
    }
    Ok(())
}

/// What one journal says about one plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanProgress {
    /// The plan file's SHA-256 recorded by the first run, if any run started.
    pub plan_sha256: Option<String>,
    /// How many runs started.
    pub runs: u64,
    /// When the first run started.
    pub first_started: Option<DateTime<Utc>>,
    /// The finish event, if the plan finished.
    pub finished: Option<(DateTime<Utc>, FinishStatus)>,
    /// The outcome recorded for each change, by (group, user).
    pub outcomes: BTreeMap<(ObjectId, ObjectId), ChangeResult>,
}

impl PlanProgress {
    /// Reads the events of `plan_id` from a verified chain. A change with two outcomes is an error.
    pub fn of(chain: &Chain, plan_id: Uuid) -> Result<PlanProgress, ChainError> {
        let mut progress = PlanProgress::default();
        for (index, entry) in chain.entries.iter().enumerate() {
            if entry.event.plan_id() != plan_id {
                continue;
            }
            let line = index as u64 + 2;
            if progress.finished.is_some() {
                return Err(ChainError { line, message: format!("plan {plan_id} has an event after apply-finished") });
            }
            match &entry.event {
                Event::ApplyStarted { plan_sha256, .. } => {
                    if let Some(first) = &progress.plan_sha256 {
                        if first != plan_sha256 {
                            return Err(ChainError {
                                line,
                                message: format!("plan {plan_id} was started with different file contents before"),
                            });
                        }
                    }
                    progress.plan_sha256 = Some(plan_sha256.clone());
                    progress.runs += 1;
                    progress.first_started.get_or_insert(entry.ts);
                }
                Event::ChangeOutcome { result, .. } => {
                    if progress.runs == 0 {
                        return Err(ChainError { line, message: "a change outcome before apply-started".into() });
                    }
                    let key = (result.group_id.clone(), result.user_id.clone());
                    if progress.outcomes.insert(key, result.clone()).is_some() {
                        return Err(ChainError {
                            line,
                            message: format!(
                                "user {} in group {} has a second outcome",
                                result.user_id, result.group_id
                            ),
                        });
                    }
                }
                Event::ApplyFinished { status, .. } => {
                    if progress.runs == 0 {
                        return Err(ChainError { line, message: "apply-finished before apply-started".into() });
                    }
                    progress.finished = Some((entry.ts, *status));
                }
            }
        }
        Ok(progress)
    }
}

/// The user-facing error for a broken journal.
pub fn chain_error(path: &Path, e: ChainError) -> Error {
    Error::input_at(
        path,
        e.line,
        format!("{}; the journal does not verify, so writeback will not append to it. Keep it for the audit and ask for a new plan, or point --journal at the right file", e.message),
    )
}

/// RFC 3339 timestamps with milliseconds, for journal lines.
mod timestamp_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(deserializer)?;
        crate::plan::timestamp::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Outcome;
    use crate::plan::Action;

    use crate::fixtures::id;

    pub(super) fn t(s: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + i64::from(s), 0).unwrap()
    }

    fn plan() -> Uuid {
        Uuid::from_u128(7)
    }

    pub(super) fn outcome(user: u32, outcome: Outcome) -> Event {
        Event::ChangeOutcome {
            plan_id: plan(),
            request: None,
            result: ChangeResult {
                group_id: id(100),
                user_id: id(user),
                action: Action::Add,
                outcome,
                detail: None,
                error: None,
            },
        }
    }

    fn started() -> Event {
        Event::ApplyStarted {
            plan_id: plan(),
            plan_sha256: "ab".repeat(32),
            tenant_id: Some("t".into()),
            applier: Applier {
                os_user: Some("admin".into()),
                key_principal: None,
                key_fingerprint: None,
                tool_version: "t".into(),
            },
            entra_actor: None,
            resume: false,
            pending: 2,
        }
    }

    /// The sample's events: a start and two outcomes, at t(1) to t(3).
    pub(super) fn sample_events() -> Vec<(DateTime<Utc>, Event)> {
        vec![(t(1), started()), (t(2), outcome(1, Outcome::Applied)), (t(3), outcome(2, Outcome::AlreadyMember))]
    }

    /// A journal's bytes, made without a file: the header, then `events`.
    pub(super) fn bytes_of(events: Vec<(DateTime<Utc>, Event)>) -> Vec<u8> {
        let (mut tip, mut bytes) = Tip::start(&new_header(t(0)));
        for (ts, event) in events {
            bytes.extend(tip.next_line(ts, event));
        }
        bytes
    }

    fn sample() -> Vec<u8> {
        bytes_of(sample_events())
    }

    fn finished() -> Event {
        Event::ApplyFinished {
            plan_id: plan(),
            status: FinishStatus::Complete,
            counts: OutcomeCounts { applied: 1, already_member: 1, ..Default::default() },
        }
    }

    #[test]
    fn chain_round_trips_and_links_each_line() {
        let bytes = sample();
        let chain = verify_chain(&bytes).unwrap();
        assert_eq!(chain.seq, 3);
        assert_eq!(chain.entries.len(), 3);
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(chain.entries[0].prev, link(lines[0]));
        assert_eq!(chain.entries[2].prev, link(lines[2]));
        assert_eq!(chain.head, link(lines[3]));
        assert_eq!(chain.links, vec![link(lines[1]), link(lines[2]), link(lines[3])]);
        assert_eq!(chain.tip(), Tip { head: link(lines[3]), seq: 3 });
        assert!(chain.torn_tail.is_none());
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with(r#"{"seq":1,"ts":"#), "{text}");
        assert!(text.contains(r#""kind":"change-outcome""#));
        assert!(text.contains(r#""outcome":"already-member""#));
    }

    #[test]
    fn the_tip_of_a_verified_chain_continues_it() {
        let mut bytes = sample();
        let mut tip = verify_chain(&bytes).unwrap().tip();
        bytes.extend(tip.next_line(t(4), finished()));
        let chain = verify_chain(&bytes).unwrap();
        assert_eq!((chain.seq, chain.head.clone()), (4, tip.head));
    }

    #[test]
    fn an_edited_line_breaks_the_chain_at_the_next_line() {
        let text = String::from_utf8(sample()).unwrap();
        let edited = text.replacen(r#""outcome":"applied""#, r#""outcome":"failed""#, 1);
        assert_ne!(text, edited);
        let err = verify_chain(edited.as_bytes()).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("chain is broken"));
    }

    #[test]
    fn a_deleted_line_is_detected() {
        let text = String::from_utf8(sample()).unwrap();
        let kept: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| l).collect();
        let err = verify_chain(format!("{}\n", kept.join("\n")).as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn a_blank_line_in_the_middle_is_an_error() {
        let text = String::from_utf8(sample()).unwrap().replacen('\n', "\n\n", 1);
        assert_eq!(verify_chain(text.as_bytes()).unwrap_err().line, 2);
    }

    #[test]
    fn a_complete_last_line_without_its_line_feed_is_kept() {
        let mut bytes = sample();
        let full = verify_chain(&bytes).unwrap();
        assert_eq!(bytes.pop(), Some(b'\n'));
        let chain = verify_chain(&bytes).unwrap();
        assert!(chain.unterminated && chain.torn_tail.is_none());
        assert_eq!((chain.seq, &chain.head, chain.entries.len()), (full.seq, &full.head, full.entries.len()));
        // Complete but not chained: that is a changed line, not a crash.
        let mut changed = sample();
        changed.pop();
        let at = changed.iter().rposition(|b| *b == b'\n').unwrap();
        let last = String::from_utf8(changed[at + 1..].to_vec()).unwrap().replace("\"seq\":3", "\"seq\":7");
        changed.truncate(at + 1);
        changed.extend_from_slice(last.as_bytes());
        assert!(verify_chain(&changed).unwrap_err().message.contains("seq is 7"));
    }

    #[test]
    fn a_torn_tail_is_reported_and_not_part_of_the_chain() {
        let mut bytes = sample();
        let good_len = bytes.len() as u64;
        bytes.extend_from_slice(br#"{"seq":4,"ts":"2023-"#);
        let chain = verify_chain(&bytes).unwrap();
        assert_eq!(chain.torn_tail, Some(TornTail { offset: good_len, len: 20, line: 5 }));
        assert_eq!(chain.seq, 3);
    }

    #[test]
    fn progress_collects_outcomes_and_finish() {
        let mut events = sample_events();
        events.push((t(6), finished()));
        let chain = verify_chain(&bytes_of(events)).unwrap();
        let progress = PlanProgress::of(&chain, plan()).unwrap();
        assert_eq!(progress.runs, 1);
        assert_eq!(progress.outcomes.len(), 2);
        assert_eq!(progress.finished, Some((t(6), FinishStatus::Complete)));
        assert_eq!(progress.first_started, Some(t(1)));
        let other = PlanProgress::of(&chain, Uuid::from_u128(8)).unwrap();
        assert_eq!(other, PlanProgress::default());
    }

    #[test]
    fn a_second_outcome_for_a_change_is_an_error() {
        let mut events = sample_events();
        events.push((t(6), outcome(1, Outcome::Failed)));
        let chain = verify_chain(&bytes_of(events)).unwrap();
        let err = PlanProgress::of(&chain, plan()).unwrap_err();
        assert_eq!(err.line, 5);
    }

    #[test]
    fn not_a_journal() {
        assert_eq!(verify_chain(b"{\"format\":\"other\",\"format_version\":\"1.0\",\"created_at\":\"2024-01-01T00:00:00Z\",\"tool_version\":\"x\"}\n").unwrap_err().line, 1);
        assert_eq!(verify_chain(b"hello\n").unwrap_err().line, 1);
    }
}
