//! How a stored time is written for people and for the event stream: the store keeps times as
//! milliseconds since the Unix epoch (`u64`), shown as RFC 3339 UTC with milliseconds.
//!
//! Pure and panic-free for every `u64`: a stored value can come from a broken clock, and RFC 3339
//! has four-digit years only, so a time in year 10000 or later is written as the last instant
//! RFC 3339 can hold, `9999-12-31T23:59:59.999Z` (still parseable by every reader of the field).
//! This module does not parse times and does not read the clock.

use std::time::{Duration, UNIX_EPOCH};

/// 9999-12-31T23:59:59.999Z, in milliseconds since the Unix epoch: the last instant with a
/// four-digit year.
pub const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// `ms` (milliseconds since the Unix epoch) as RFC 3339 UTC with milliseconds, e.g.
/// `2026-06-01T12:00:00.250Z`; a time after [`MAX_RFC3339_MS`] is written as that one.
#[must_use]
pub fn rfc3339_ms(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.min(MAX_RFC3339_MS));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_times() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_780_315_200_250), "2026-06-01T12:00:00.250Z");
    }

    #[test]
    fn times_past_year_9999_are_clamped_not_a_panic() {
        assert_eq!(rfc3339_ms(MAX_RFC3339_MS), "9999-12-31T23:59:59.999Z");
        // 10000-01-01T00:00:00Z and later.
        for ms in [
            MAX_RFC3339_MS + 1,
            253_402_300_800_000 + 86_400_000,
            u64::MAX / 2,
            u64::MAX,
        ] {
            assert_eq!(rfc3339_ms(ms), "9999-12-31T23:59:59.999Z", "{ms}");
        }
    }

    #[test]
    fn the_clamp_is_the_last_instant_humantime_writes() {
        let last = UNIX_EPOCH + Duration::from_millis(MAX_RFC3339_MS);
        assert!(humantime::parse_rfc3339("9999-12-31T23:59:59.999Z").is_ok_and(|t| t == last));
    }
}
