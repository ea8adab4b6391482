//! Long work made visible on stderr. At a terminal, a bar (or a counter) redrawn in place; without one (a log, a
//! pipeline), a plain line at most every five seconds, so a record is kept without a flood.
//!
//! `apply` shows its changes through [`Changes`]. Live plan reads (Graph and PoliteMail pages) report through
//! [`page`], which says nothing until the command line turns it on with [`show_reads`]: a library caller's reads
//! stay quiet.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a line is printed when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// A gate that opens at most once per period: the first call, then the first one a full period after the last
/// opening. Time is passed in, so it is tested without waiting.
#[derive(Debug, Clone)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// A gate that opens at most once per `period`.
    pub fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// True when a line is due at `now` (and then the period starts again).
    pub fn due(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.period => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

/// `apply`'s changes: a bar at a terminal, else a line like `apply: 1200 of 5000 changes done, 40 s` at most
/// every five seconds.
pub struct Changes {
    bar: Option<indicatif::ProgressBar>,
    every: Every,
    started: Instant,
    total: u64,
    done: u64,
}

impl Changes {
    /// Starts showing `total` changes.
    pub fn start(total: u64) -> Changes {
        let bar = std::io::stderr().is_terminal().then(|| {
            crate::terminal::progress_bar(
                total,
                "{spinner} applying [{bar:40}] {pos}/{len} changes, {elapsed} ({eta} left)",
            )
        });
        let mut every = Every::new(LINE_EVERY);
        let started = Instant::now();
        every.due(started);
        Changes { bar, every, started, total, done: 0 }
    }

    /// `n` more changes have an outcome.
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let now = Instant::now();
                if self.every.due(now) {
                    crate::eoutln!(
                        "apply: {} of {} changes done, {} s",
                        self.done,
                        self.total,
                        now.duration_since(self.started).as_secs()
                    );
                }
            }
        }
    }

    /// Sending ended: the bar goes (the summary follows).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The live reads so far, when the command line shows them.
struct Reads {
    terminal: bool,
    every: Every,
    pages: u64,
    items: u64,
}

static READS: Mutex<Option<Reads>> = Mutex::new(None);

/// Turns on the progress of live reads (`plan` with `--list` or Graph): each [`page`] is counted on stderr.
pub fn show_reads() {
    let terminal = std::io::stderr().is_terminal();
    if let Ok(mut reads) = READS.lock() {
        *reads = Some(Reads { terminal, every: Every::new(LINE_EVERY), pages: 0, items: 0 });
    }
}

/// Turns the progress of live reads off again, ending its line at a terminal.
pub fn end_reads() {
    if let Ok(mut reads) = READS.lock() {
        if reads.take().is_some_and(|r| r.terminal && r.pages > 0) {
            crate::eoutln!();
        }
    }
}

/// A page of `items` objects (users, members, contacts) was read from `service`.
pub fn page(service: &str, items: usize) {
    let Ok(mut guard) = READS.lock() else { return };
    let Some(reads) = guard.as_mut() else { return };
    reads.pages += 1;
    reads.items += items as u64;
    let pages = if reads.pages == 1 { "1 page".to_string() } else { format!("{} pages", reads.pages) };
    let line = format!("reading: {pages}, {} objects scanned (last from {service})", reads.items);
    if reads.terminal {
        crate::eout!("\r{line}");
    } else if reads.every.due(Instant::now()) {
        crate::eoutln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_at_most_once_per_period() {
        let t0 = Instant::now();
        let mut every = Every::new(Duration::from_secs(5));
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert!(every.due(at(0)), "the first is due");
        assert!(!every.due(at(1_000)));
        assert!(!every.due(at(4_999)));
        assert!(every.due(at(5_000)));
        assert!(!every.due(at(9_000)));
        assert!(every.due(at(12_000)));
    }
}
