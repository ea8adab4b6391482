//! How fast to send: a rate learned from the service's answers, so that writeback sends at the rate Graph allows
//! instead of sending until it is told to stop.
//!
//! [`Pace`] is a token bucket whose rate is learned (the pure part: it never reads the clock; times come in):
//!
//! - Until the first 429 the rate is not limited.
//! - Answers are counted in windows (at least [`Settings::min_window`], three requests' worth at the current rate,
//!   and [`Settings::min_units`] operations; a window with a request's worth of 429s closes early). At the end of
//!   a window with 429s the rate becomes the rate the service *accepted* during the window, less 1%:
//!   when a service's quota is exhausted, what it accepts per second is its quota, however fast the client sends.
//!   A window without 429s raises the rate by [`Settings::increase`], so that a larger quota is found again.
//! - A 429 that says why (`x-ms-throttle-information`, e.g. `WriteLimitExceeded`) always counts as a quota signal.
//!   429s that do not say why count only while slowing down helps: when their share stays the same after the rate
//!   was lowered, they are taken as background noise (Graph may answer 429 below its limits), the rate is put back,
//!   and only a share above that noise lowers it again.
//! - `Retry-After` blocks every send until it ends ([`Pace::block_until`]).
//!
//! [`Pacer`] wraps a `Pace` for callers that send one request at a time from several tasks (the Graph reads).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The pacing constants.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The shortest window over which the accepted rate is measured.
    pub min_window: Duration,
    /// The fewest operations a window holds before it is judged.
    pub min_units: u64,
    /// How far under the measured rate to send after 429s (0.01 = 1%).
    pub margin: f64,
    /// How much to raise the rate after a window without 429s (0.03 = 3%).
    pub increase: f64,
    /// The bucket's size: how many operations may go at once (one full `$batch` is 20).
    pub burst: f64,
    /// The lowest rate, in operations per second.
    pub min_rate: f64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            min_window: Duration::from_millis(200),
            min_units: 60,
            margin: 0.01,
            increase: 0.03,
            burst: 20.0,
            min_rate: 0.05,
        }
    }
}

/// What one answer said, for [`Pace::observe`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// Operations sent in the request (1 for a plain request, the items of a `$batch`).
    pub sent: u32,
    /// Of those, how many came back 429 saying why (`x-ms-throttle-information`).
    pub throttled_quota: u32,
    /// Of those, how many came back 429 without saying why.
    pub throttled_other: u32,
    /// The longest `Retry-After` among them.
    pub retry_after: Option<Duration>,
    /// How long the request took.
    pub round_trip: Duration,
}

impl Observation {
    /// All the 429s.
    pub fn throttled(&self) -> u32 {
        self.throttled_quota + self.throttled_other
    }
}

/// What [`Pace::observe`] changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The rate went down to this many operations per second.
    Slower(f64),
    /// The rate went up to this.
    Faster(f64),
    /// 429s that do not follow the rate were taken as background noise (this share); the rate went back to this.
    Noise(f64, Option<f64>),
}

#[derive(Debug, Clone, Default)]
struct Window {
    started: Option<Instant>,
    sent: u64,
    quota: u64,
    other: u64,
}

#[derive(Debug, Clone, Copy)]
struct Judged {
    other_share: f64,
    lowered: bool,
    rate_before: Option<f64>,
}

/// A token bucket whose rate is learned from the answers. See the module documentation.
#[derive(Debug, Clone)]
pub struct Pace {
    settings: Settings,
    rate: Option<f64>,
    tokens: f64,
    refilled: Option<Instant>,
    blocked_until: Option<Instant>,
    window: Window,
    round_trip: Option<Duration>,
    noise: f64,
    last: Option<Judged>,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace::new(Settings::default())
    }
}

impl Pace {
    /// A pace that does not limit until the first 429.
    pub fn new(settings: Settings) -> Pace {
        let tokens = settings.burst;
        Pace {
            settings,
            rate: None,
            tokens,
            refilled: None,
            blocked_until: None,
            window: Window::default(),
            round_trip: None,
            noise: 0.0,
            last: None,
        }
    }

    /// The learned rate in operations per second; `None` while nothing was throttled.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// When the last `Retry-After` ends, if it has not yet.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        self.blocked_until.filter(|b| *b > now)
    }

    fn refill(&mut self, now: Instant) {
        let cap = self.settings.burst;
        self.tokens = match (self.rate, self.refilled) {
            (None, _) => cap,
            (Some(rate), Some(last)) => {
                (self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(cap)
            }
            (Some(_), None) => self.tokens,
        };
        self.refilled = Some(now);
    }

    /// The earliest time `cost` operations may be sent: after every `Retry-After` and once the bucket holds them.
    pub fn ready_at(&mut self, now: Instant, cost: u32) -> Instant {
        self.refill(now);
        let cost = f64::from(cost).min(self.settings.burst);
        let by_rate = match self.rate {
            Some(rate) if self.tokens < cost => now + Duration::from_secs_f64((cost - self.tokens) / rate),
            _ => now,
        };
        by_rate.max(self.blocked_until.unwrap_or(now))
    }

    /// Takes `cost` operations from the bucket (call when sending, at or after [`Pace::ready_at`]).
    pub fn take(&mut self, now: Instant, cost: u32) {
        self.refill(now);
        self.tokens -= f64::from(cost).min(self.settings.burst);
        self.window.started.get_or_insert(now);
    }

    /// Nothing may be sent before `until` (a `Retry-After`). A later block never shortens an earlier one.
    pub fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Learns from one answer received at `now`.
    pub fn observe(&mut self, now: Instant, seen: Observation) -> Option<Change> {
        if let Some(after) = seen.retry_after.filter(|_| seen.throttled() > 0) {
            self.block_until(now + after);
        }
        let rtt = self.round_trip.map_or(seen.round_trip, |r| r.mul_f64(0.8) + seen.round_trip.mul_f64(0.2));
        self.round_trip = Some(rtt);
        let w = &mut self.window;
        let started = *w.started.get_or_insert(now);
        w.sent += u64::from(seen.sent);
        w.quota += u64::from(seen.throttled_quota);
        w.other += u64::from(seen.throttled_other);
        let elapsed = now.saturating_duration_since(started);
        let mut needed = self.settings.min_window;
        if let Some(rate) = self.rate {
            needed = needed.max(Duration::from_secs_f64(3.0 * self.settings.burst / rate));
        }
        let full = elapsed >= needed && w.sent >= self.settings.min_units;
        let early = w.quota + w.other >= self.settings.burst as u64 && elapsed >= rtt * 2;
        if (full || early) && w.sent > 0 && !elapsed.is_zero() {
            Some(self.judge(now, elapsed)).flatten()
        } else {
            None
        }
    }

    /// Ends a window: lowers, raises or keeps the rate.
    fn judge(&mut self, now: Instant, elapsed: Duration) -> Option<Change> {
        let w = std::mem::take(&mut self.window);
        self.window.started = Some(now);
        let sent = w.sent as f64;
        let sent_rate = sent / elapsed.as_secs_f64();
        let quota_share = w.quota as f64 / sent;
        let other_share = w.other as f64 / sent;
        let mut change = None;
        // Unexplained 429s at the same share after the rate went down: noise, not the quota.
        if let Some(last) = self.last {
            let similar = other_share >= 0.6 * last.other_share && other_share <= 1.6 * last.other_share;
            if last.lowered && w.quota == 0 && last.other_share > 0.0 && other_share > 0.0 && similar {
                self.noise = self.noise.max(other_share);
                self.rate = last.rate_before;
                change = Some(Change::Noise(other_share, self.rate));
            }
        }
        let excess = quota_share + (other_share - 1.5 * self.noise).max(0.0);
        let rate_before = self.rate;
        let lowered = excess > 0.0 && change.is_none();
        if lowered {
            let measured = (sent_rate * (1.0 - excess) * (1.0 - self.settings.margin)).max(self.settings.min_rate);
            let rate = self.rate.map_or(measured, |r| r.min(measured));
            self.rate = Some(rate);
            change = Some(Change::Slower(rate));
        } else if excess == 0.0 && change.is_none() {
            self.noise *= 0.9;
            if let Some(rate) = self.rate {
                let rate = rate * (1.0 + self.settings.increase);
                self.rate = Some(rate);
                change = change.or(Some(Change::Faster(rate)));
            }
        }
        self.last = Some(Judged { other_share, lowered, rate_before });
        change
    }
}

/// A [`Pace`] shared by tasks that each wait for their turn (the Graph client's reads).
#[derive(Debug, Default)]
pub struct Pacer {
    pace: Mutex<Pace>,
}

impl Pacer {
    /// A pacer with the default settings.
    pub fn new() -> Pacer {
        Pacer::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Pace) -> R) -> R {
        let mut pace = self.pace.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut pace)
    }

    /// Waits until `cost` operations may be sent, and takes them.
    pub async fn turn(&self, cost: u32) {
        loop {
            let now = Instant::now();
            let at = self.with(|p| {
                let at = p.ready_at(now, cost);
                if at <= now {
                    p.take(now, cost);
                }
                at
            });
            if at <= now {
                return;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    /// Learns from one answer.
    pub fn observe(&self, seen: Observation) -> Option<Change> {
        let now = Instant::now();
        self.with(|p| p.observe(now, seen))
    }

    /// The learned rate, if any.
    pub fn rate(&self) -> Option<f64> {
        self.with(|p| p.rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service with a write quota: a bucket of `cap` refilled at `rate` per second.
    struct Quota {
        cap: f64,
        rate: f64,
        tokens: f64,
        last: Instant,
    }

    impl Quota {
        fn take(&mut self, now: Instant) -> bool {
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.cap);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// Sends `total` operations in requests of 20, one at a time with a 5 ms round trip, paced; returns the 429s
    /// and the (virtual) time it took.
    fn drive(total: u64, quota: &mut Quota, other_every: Option<u64>) -> (u64, Duration, Pace) {
        let start = quota.last;
        let mut pace = Pace::default();
        let mut now = start;
        let (mut done, mut throttled, mut n) = (0u64, 0u64, 0u64);
        while done < total {
            let cost = (total - done).min(20) as u32;
            now = pace.ready_at(now, cost);
            pace.take(now, cost);
            let mut seen = Observation { sent: cost, round_trip: Duration::from_millis(5), ..Default::default() };
            for _ in 0..cost {
                n += 1;
                if other_every.is_some_and(|k| n % k == 0) {
                    seen.throttled_other += 1;
                } else if quota.take(now + Duration::from_micros(2500)) {
                    done += 1;
                } else {
                    seen.throttled_quota += 1;
                }
            }
            throttled += u64::from(seen.throttled());
            now += Duration::from_millis(5);
            pace.observe(now, seen);
        }
        (throttled, now - start, pace)
    }

    #[test]
    fn learns_a_quota_and_keeps_to_it() {
        let t0 = Instant::now();
        let mut quota = Quota { cap: 200.0, rate: 200.0, tokens: 200.0, last: t0 };
        let (throttled, took, pace) = drive(4000, &mut quota, None);
        let minimum = (4000.0 - 200.0) / 200.0;
        assert!(throttled * 10 <= 4000, "{throttled} 429s for 4000 operations");
        assert!(took.as_secs_f64() <= minimum * 1.10, "{took:?} against a minimum of {minimum} s");
        let rate = pace.rate().unwrap();
        assert!((150.0..=240.0).contains(&rate), "{rate}");
    }

    #[test]
    fn unexplained_429s_at_a_steady_share_do_not_drag_the_rate_down() {
        let t0 = Instant::now();
        // No quota to speak of; every 20th operation is refused anyway.
        let mut quota = Quota { cap: 1e9, rate: 1e9, tokens: 1e9, last: t0 };
        let (_, took, _) = drive(4000, &mut quota, Some(20));
        // Unpaced, 4000 operations in requests of 20 with a 5 ms round trip take about 1.05 s.
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn retry_after_blocks_every_send_and_never_shortens() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.ready_at(t0, 20), t0);
        let seen = Observation {
            sent: 20,
            throttled_quota: 1,
            retry_after: Some(Duration::from_secs(2)),
            round_trip: Duration::from_millis(5),
            ..Default::default()
        };
        pace.observe(t0, seen);
        pace.observe(t0, Observation { retry_after: Some(Duration::from_millis(10)), ..seen });
        assert!(pace.ready_at(t0, 1) >= t0 + Duration::from_secs(2));
        assert_eq!(pace.blocked_until(t0 + Duration::from_secs(3)), None);
    }
}
