//! Where a run's time goes: wall time per phase, and the memory in use (resident set) at the end of each phase and
//! at its peak so far (on Linux), logged at debug level (`-vv`, or `WRITEBACK_LOG=debug`) when the run ends.
//! Diagnostics only: nothing the program decides depends on these figures.

use std::time::{Duration, Instant};

/// The phases of one run, in the order they ended.
#[derive(Debug)]
pub struct Phases {
    started: Instant,
    last: Instant,
    laps: Vec<(String, Duration, Option<Memory>)>,
}

/// The resident set and its peak so far, in MiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    now: u64,
    peak: u64,
}

impl Memory {
    /// Reads `VmRSS` and `VmHWM` from `/proc/self/status` (Linux); `None` elsewhere.
    fn read() -> Option<Memory> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line[name.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb / 1024)
        };
        Some(Memory { now: field("VmRSS:")?, peak: field("VmHWM:")? })
    }
}

impl Default for Phases {
    fn default() -> Self {
        Phases::start()
    }
}

impl Phases {
    /// Starts the clock.
    pub fn start() -> Phases {
        let now = Instant::now();
        Phases { started: now, last: now, laps: Vec::new() }
    }

    /// Ends the current phase, named `name`, and starts the next one.
    pub fn lap(&mut self, name: impl Into<String>) {
        let now = Instant::now();
        self.laps.push((name.into(), now - self.last, Memory::read()));
        self.last = now;
    }

    /// Records work that overlapped the phases (a second thread's busy time), without moving the clock.
    pub fn note(&mut self, name: impl Into<String>, took: Duration) {
        self.laps.push((name.into(), took, None));
    }

    /// Logs every phase and the total at debug level.
    pub fn log(&self) {
        for (name, took, memory) in &self.laps {
            let ms = took.as_secs_f64() * 1e3;
            match memory {
                Some(m) => tracing::debug!("phase {name}: {ms:.1} ms (memory {} MiB, peak {} MiB)", m.now, m.peak),
                None => tracing::debug!("phase {name}: {ms:.1} ms"),
            }
        }
        tracing::debug!("phase total: {:.1} ms", self.started.elapsed().as_secs_f64() * 1e3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_to_at_most_the_total() {
        let mut phases = Phases::start();
        phases.lap("one");
        phases.lap("two");
        phases.note("beside", Duration::from_secs(1));
        assert_eq!(phases.laps.len(), 3);
        let laps: Duration = phases.laps[..2].iter().map(|(_, d, _)| *d).sum();
        if cfg!(target_os = "linux") {
            assert!(phases.laps[0].2.is_some_and(|m| m.peak >= m.now));
        }
        assert!(laps <= phases.started.elapsed());
    }
}
