//! Where a run's time goes: wall time per phase, logged at debug level (`-vv`, or `WRITEBACK_LOG=debug`) when the
//! run ends. Diagnostics only: nothing the program decides depends on these figures.

use std::time::{Duration, Instant};

/// The phases of one run, in the order they ended.
#[derive(Debug)]
pub struct Phases {
    started: Instant,
    last: Instant,
    laps: Vec<(String, Duration)>,
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
        self.laps.push((name.into(), now - self.last));
        self.last = now;
    }

    /// Records work that overlapped the phases (a second thread's busy time), without moving the clock.
    pub fn note(&mut self, name: impl Into<String>, took: Duration) {
        self.laps.push((name.into(), took));
    }

    /// Logs every phase and the total at debug level.
    pub fn log(&self) {
        for (name, took) in &self.laps {
            tracing::debug!("phase {name}: {:.1} ms", took.as_secs_f64() * 1e3);
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
        let laps: Duration = phases.laps[..2].iter().map(|(_, d)| *d).sum();
        assert!(laps <= phases.started.elapsed());
    }
}
