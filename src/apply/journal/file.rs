//! The journal file: open (creating it with its header, or cutting off a torn last line), append one line per
//! event, and fsync. What the lines say and how they chain is the parent module's (pure) business.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{chain_error, new_header, verify_chain, Chain, Event, Tip};
use crate::error::{Error, Result};

/// A journal file opened for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    tip: Tip,
}

/// What [`Journal::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The journal, ready to append.
    pub journal: Journal,
    /// The verified chain as it was on disk.
    pub chain: Chain,
    /// True when the file did not exist (or was empty) and was created.
    pub created: bool,
}

/// Reads and verifies a journal file. A missing file is `Ok(None)`. The torn tail is reported, not removed.
pub fn read(path: &Path) -> Result<Option<Chain>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::read(path, e)),
    };
    if bytes.is_empty() || !bytes.contains(&b'\n') {
        // Empty, or a header torn before its line feed: nothing was ever recorded.
        return Ok(None);
    }
    verify_chain(&bytes).map(Some).map_err(|e| chain_error(path, e))
}

impl Journal {
    /// Opens (or creates, with a header) a journal for appending. A torn last line is cut off first; the
    /// returned chain's `torn_tail` says whether that happened, so the caller can tell the admin.
    pub fn open(path: &Path, now: DateTime<Utc>) -> Result<Opened> {
        let existing = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::read(path, e)),
        };
        match existing.as_ref().filter(|b| b.contains(&b'\n')) {
            Some(bytes) => {
                let chain = verify_chain(bytes).map_err(|e| chain_error(path, e))?;
                if let Some(torn) = &chain.torn_tail {
                    let file = OpenOptions::new().write(true).open(path).map_err(|e| Error::write(path, e))?;
                    file.set_len(torn.offset).map_err(|e| Error::write(path, e))?;
                    file.sync_all().map_err(|e| Error::write(path, e))?;
                }
                if chain.unterminated {
                    // The last line is complete: keep it, and end it before anything is appended.
                    let mut file = OpenOptions::new().append(true).open(path).map_err(|e| Error::write(path, e))?;
                    file.write_all(b"\n").map_err(|e| Error::write(path, e))?;
                    file.sync_all().map_err(|e| Error::write(path, e))?;
                }
                let journal = Journal::append_to(path, chain.tip())?;
                Ok(Opened { journal, chain, created: false })
            }
            None => {
                // Nothing there, an empty file or a torn header: nothing was recorded; start afresh.
                let header = new_header(now);
                let (tip, line) = Tip::start(&header);
                let mut file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| Error::write(path, e))?;
                file.write_all(&line).map_err(|e| Error::write(path, e))?;
                file.sync_all().map_err(|e| Error::write(path, e))?;
                sync_parent(path);
                let chain = Chain::empty(header, &tip);
                Ok(Opened { journal: Journal::append_to(path, tip)?, chain, created: true })
            }
        }
    }

    fn append_to(path: &Path, tip: Tip) -> Result<Journal> {
        let file = OpenOptions::new().append(true).open(path).map_err(|e| Error::write(path, e))?;
        Ok(Journal { path: path.to_path_buf(), file, tip })
    }

    /// Appends one event as one `write` of the line and its line feed. Call [`Journal::sync`] to make it
    /// durable.
    pub fn append(&mut self, ts: DateTime<Utc>, event: Event) -> Result<()> {
        let mut tip = self.tip.clone();
        let line = tip.next_line(ts, event);
        self.file.write_all(&line).map_err(|e| Error::write(&self.path, e))?;
        self.tip = tip;
        Ok(())
    }

    /// Flushes everything appended so far to disk (fsync).
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::write(&self.path, e))
    }

    /// The link to the last line written.
    pub fn head(&self) -> &str {
        &self.tip.head
    }

    /// The `seq` of the last line written.
    pub fn seq(&self) -> u64 {
        self.tip.seq
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes a newly created file's directory entry durable.
fn sync_parent(path: &Path) {
    // Windows has no directory handle to flush; a rename there is durable once it returns.
    #[cfg(not(unix))]
    let _ = path;
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        let dir = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if let Ok(handle) = File::open(dir) {
            let _ = handle.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bytes_of, outcome, sample_events, t};
    use super::*;
    use crate::apply::Outcome;

    fn write_sample(path: &Path) {
        let mut j = Journal::open(path, t(0)).unwrap().journal;
        for (ts, event) in sample_events() {
            j.append(ts, event).unwrap();
        }
        j.sync().unwrap();
    }

    #[test]
    fn the_file_holds_exactly_the_chain_s_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        write_sample(&path);
        assert_eq!(std::fs::read(&path).unwrap(), bytes_of(sample_events()));
        let chain = read(&path).unwrap().unwrap();
        let reopened = Journal::open(&path, t(9)).unwrap();
        assert!(!reopened.created);
        assert_eq!((reopened.journal.head(), reopened.journal.seq()), (chain.head.as_str(), 3));
    }

    #[test]
    fn a_missing_journal_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("none.jsonl")).unwrap().is_none());
    }

    #[test]
    fn a_last_line_without_its_line_feed_is_ended_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        write_sample(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let opened = Journal::open(&path, t(9)).unwrap();
        assert_eq!(opened.chain.seq, 3);
        let mut j = opened.journal;
        j.append(t(10), outcome(3, Outcome::Applied)).unwrap();
        let chain = verify_chain(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(chain.seq, 4);
        assert!(!chain.unterminated && chain.torn_tail.is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        write_sample(&path);
        let good_len = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"seq":4,"ts":"2023-"#).unwrap();
        drop(f);
        assert!(read(&path).unwrap().unwrap().torn_tail.is_some());
        let opened = Journal::open(&path, t(9)).unwrap();
        assert!(opened.chain.torn_tail.is_some());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        let mut j = opened.journal;
        j.append(t(10), outcome(3, Outcome::Applied)).unwrap();
        let chain = verify_chain(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(chain.seq, 4);
        assert!(chain.torn_tail.is_none());
    }

    #[test]
    fn a_torn_header_starts_a_fresh_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, br#"{"format":"writeback-jou"#).unwrap();
        assert!(read(&path).unwrap().is_none());
        let opened = Journal::open(&path, t(0)).unwrap();
        assert!(opened.created);
        assert_eq!(verify_chain(&std::fs::read(&path).unwrap()).unwrap().seq, 0);
    }
}
