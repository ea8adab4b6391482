//! When to send a request again, and how long to wait first: the one retry policy of every HTTP caller (the
//! Graph client, the sign-in calls, the PoliteMail client, and the apply executor's `$batch` items).
//!
//! - Which answers are sent again ([`classify`]): 429 (throttled); 500, 502, 503 and 504; 424 inside a
//!   `$batch` (a request it depended on failed); and no answer at all (a dropped connection, a timeout).
//!   Everything else is final.
//! - How long to wait ([`RetryPolicy::wait`]): the server's `Retry-After` when it gave one, never less (seconds,
//!   fractional seconds as Graph sends them, or an HTTP date: [`parse_retry_after`]); otherwise an exponential
//!   backoff with jitter ([`RetryPolicy::backoff`]): retry n waits between half and all of
//!   `min(max_delay, base_delay × 2ⁿ)`.
//! - When to give up ([`RetryPolicy::next_wait`]): after `max_attempts` attempts, or when the next wait would end
//!   past `max_total` from the first attempt.
//!
//! How fast to send when nothing failed is [`crate::pacing`]'s business.

use std::time::{Duration, SystemTime};

use rand_core::{OsRng, RngCore};
use reqwest::header::HeaderMap;

/// What an answer means for sending the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 429: the service asks the client to slow down; send again after its `Retry-After`.
    Throttled,
    /// A passing failure (5xx, a failed dependency, no answer): send again after a wait.
    Transient,
    /// Anything else: sending the same request again cannot help.
    Final,
}

/// Classifies an HTTP status; `0` stands for "no answer came" (a dropped connection, a timeout).
pub fn classify(status: u16) -> Verdict {
    match status {
        429 => Verdict::Throttled,
        0 | 424 | 500 | 502 | 503 | 504 => Verdict::Transient,
        _ => Verdict::Final,
    }
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The most attempts for one request, the first included (at least 1).
    pub max_attempts: u32,
    /// The most time from the first attempt to the start of the last one: no retry waits past it.
    pub max_total: Duration,
    /// The first backoff ceiling; it doubles with each retry.
    pub base_delay: Duration,
    /// The highest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_total: Duration::from_secs(300),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// A bad retry setting in the environment: the variable and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}='{value}' is not a non-negative number")]
pub struct BadSetting {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
}

impl RetryPolicy {
    /// The default policy, changed by `WRITEBACK_RETRY_MAX_ATTEMPTS`, `WRITEBACK_RETRY_MAX_SECONDS` (total time)
    /// and `WRITEBACK_RETRY_BASE_MS` (first backoff ceiling) when set.
    pub fn from_env() -> Result<RetryPolicy, BadSetting> {
        let mut policy = RetryPolicy::default();
        let read = |name: &'static str| -> Result<Option<f64>, BadSetting> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .map(Some)
                    .ok_or(BadSetting { name, value: v }),
                _ => Ok(None),
            }
        };
        if let Some(n) = read("WRITEBACK_RETRY_MAX_ATTEMPTS")? {
            policy.max_attempts = (n as u32).max(1);
        }
        if let Some(n) = read("WRITEBACK_RETRY_MAX_SECONDS")? {
            policy.max_total = Duration::from_secs_f64(n);
        }
        if let Some(n) = read("WRITEBACK_RETRY_BASE_MS")? {
            policy.base_delay = Duration::from_secs_f64(n / 1000.0);
        }
        Ok(policy)
    }

    /// A policy with tiny delays, for tests.
    pub fn for_tests() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            max_total: Duration::from_secs(5),
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        }
    }

    /// The backoff ceiling of retry number `retry` (0 for the first retry): `min(max_delay, base_delay × 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base_delay.saturating_mul(1u32 << retry.min(20)).min(self.max_delay)
    }

    /// The backoff before retry number `retry` when the server named no wait: uniformly random between half the
    /// [`RetryPolicy::ceiling`] and all of it, so that clients that failed together do not come back together,
    /// and the wait still grows with each retry.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        if spread == 0 {
            return ceiling;
        }
        half + Duration::from_nanos(OsRng.next_u64() % (spread + 1))
    }

    /// The wait before retry number `retry`: the server's `Retry-After` when it sent one (never less), else
    /// [`RetryPolicy::backoff`].
    pub fn wait(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_else(|| self.backoff(retry))
    }

    /// The wait before the next attempt of one request after `attempts` attempts (the first included) that
    /// started `elapsed` ago, or `None` to give up: no attempts left, or the wait would end past `max_total`.
    pub fn next_wait(&self, attempts: u32, elapsed: Duration, retry_after: Option<Duration>) -> Option<Duration> {
        if attempts >= self.max_attempts.max(1) {
            return None;
        }
        let wait = self.wait(attempts.saturating_sub(1), retry_after);
        (elapsed + wait <= self.max_total).then_some(wait)
    }
}

/// Reads `Retry-After` from response headers. See [`parse_retry_after`]. An HTTP date is measured from the
/// response's `Date` header when there is one (the server's clock), else from `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let raw = headers.get("retry-after")?.to_str().ok()?;
    let date = headers.get("date").and_then(|d| d.to_str().ok());
    parse_retry_after(raw, server_now(date, now))
}

/// The server's time from its `Date` header, else `now`.
pub fn server_now(date_header: Option<&str>, now: SystemTime) -> SystemTime {
    date_header.and_then(|d| httpdate::parse_http_date(d.trim()).ok()).unwrap_or(now)
}

/// Parses a `Retry-After` value: seconds (`2`, or fractional as Graph sends them, `2.128`) or an HTTP date in
/// any of the three forms HTTP allows (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 850, asctime), measured from `now`.
/// A date in the past gives zero. Negative, non-finite or unreadable values give `None`.
pub fn parse_retry_after(raw: &str, now: SystemTime) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(seconds) = raw.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Duration::try_from_secs_f64(seconds).ok();
        }
        return None;
    }
    let date = httpdate::parse_http_date(raw).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn which_statuses_retry() {
        assert_eq!(classify(429), Verdict::Throttled);
        for s in [0, 424, 500, 502, 503, 504] {
            assert_eq!(classify(s), Verdict::Transient, "{s}");
        }
        for s in [200, 204, 400, 401, 403, 404, 409, 501, 505] {
            assert_eq!(classify(s), Verdict::Final, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds_and_all_three_date_forms() {
        // 2015-10-21T07:27:00Z
        let now = at(1_445_412_420);
        assert_eq!(parse_retry_after("2.128", now), Some(Duration::from_millis(2128)));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:00 2015", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:20:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_date_is_measured_from_the_servers_clock() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        headers.insert("date", "Wed, 21 Oct 2015 07:27:58 GMT".parse().unwrap());
        // The client's clock is an hour off; the server's Date decides.
        assert_eq!(retry_after(&headers, at(1_445_412_420 + 3600)), Some(Duration::from_secs(2)));
        headers.remove("date");
        assert_eq!(retry_after(&headers, at(1_445_412_420)), Some(Duration::from_secs(60)));
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for retry in 0..40 {
            let ceiling = Duration::from_millis(100 * (1u64 << retry.min(20))).min(Duration::from_secs(1));
            assert_eq!(p.ceiling(retry), ceiling);
            for _ in 0..50 {
                let wait = p.backoff(retry);
                assert!(wait <= ceiling, "retry {retry}: {wait:?} over {ceiling:?}");
                assert!(wait >= ceiling / 2, "retry {retry}: {wait:?} under the floor {:?}", ceiling / 2);
            }
        }
        // The jitter spreads the waits: fifty draws are not all the same.
        let draws: std::collections::BTreeSet<Duration> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn the_servers_wait_wins_and_the_budget_ends_retries() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_total: Duration::from_secs(10),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.wait(0, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(p.next_wait(1, Duration::ZERO, Some(Duration::from_secs(7))), Some(Duration::from_secs(7)));
        assert_eq!(p.next_wait(1, Duration::from_secs(4), Some(Duration::from_secs(7))), None, "past max_total");
        assert_eq!(p.next_wait(3, Duration::ZERO, None), None, "no attempts left");
        let w = p.next_wait(2, Duration::ZERO, None).unwrap();
        assert!(w >= Duration::from_millis(100) && w <= Duration::from_millis(200), "{w:?}");
    }
}
