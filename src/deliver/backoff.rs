//! Back-off and retry classification for sink deliveries; pure (randomness passed in).
//!
//! Exponential back-off with full jitter: before attempt n+1 wait a uniformly random time in
//! `[0, min(max_backoff, initial_backoff * 2^(n-1))]`. A `Retry-After` from the sink replaces
//! the random wait (capped at `max_backoff`). Which answers are worth retrying is decided here
//! too, so the HTTP sink and the tests agree on one table.

use std::time::Duration;

use crate::config::RetryPolicy;

/// How a sink's answer is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Success,
    /// Try again later.
    Retry,
    /// Trying again cannot help: dead-letter at once.
    Permanent,
}

/// Classifies an HTTP status: 2xx success; 408, 429 and 5xx retried; 3xx and other 4xx (and
/// anything else) permanent.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        408 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

/// The wait before the attempt after `attempts` failed ones (`attempts >= 1`). `unit` is a
/// uniform random number in `[0, 1)`.
pub fn backoff(
    policy: &RetryPolicy,
    attempts: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(policy.max_backoff);
    }
    let exponent = attempts.saturating_sub(1).min(32);
    let ceiling = policy
        .initial_backoff
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Parses a `Retry-After` value given in seconds (HTTP dates are rare from services and are
/// ignored, falling back to the normal back-off).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_secs(600),
            max_attempts: 20,
        }
    }

    #[test]
    fn statuses_are_classified_like_kirim_does() {
        for s in [200, 201, 204, 299] {
            assert_eq!(classify_status(s), Verdict::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(s), Verdict::Retry, "{s}");
        }
        for s in [100, 301, 302, 304, 400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(classify_status(s), Verdict::Permanent, "{s}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_spans_zero_to_ceiling() {
        let p = policy();
        let almost = backoff(&p, 1, None, 0.999_999);
        assert!(almost > Duration::from_millis(999) && almost < Duration::from_millis(1000));
        assert_eq!(backoff(&p, 2, None, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff(&p, 4, None, 0.5), Duration::from_millis(4000));
        assert_eq!(backoff(&p, 1, None, 0.0), Duration::ZERO);
        // 2^19 s is far above the cap.
        assert_eq!(backoff(&p, 20, None, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(&p, u32::MAX, None, 0.5), Duration::from_secs(300));
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = policy();
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(7200)), 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
