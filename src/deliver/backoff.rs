//! Back-off for sink deliveries; pure (randomness passed in).
//!
//! Exponential back-off with full jitter: before attempt n+1 wait a uniformly random time in
//! `[0, min(max_backoff, initial_backoff * 2^(n-1))]`. A wait the sink asked for (HTTP's
//! `Retry-After`) replaces the random wait (capped at `max_backoff`). Which answers are worth
//! retrying is not decided here: each sink kind says so in its [`crate::sinks::SinkError`]
//! (the HTTP table is [`crate::sinks::http::classify`]).

use std::time::Duration;

use crate::config::RetryPolicy;

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
    }
}
