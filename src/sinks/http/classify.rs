//! How the HTTP sink reads its target's answer: which statuses are success, worth a retry or
//! permanent, and the `Retry-After` a target may ask for. Pure; the sink turns the verdict into
//! a [`crate::sinks::SinkError`] and records the status as the attempt's code.

use std::time::Duration;

/// How a target's answer is treated.
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

/// Parses a `Retry-After` value given in seconds (HTTP dates are rare from services and are
/// ignored, falling back to the normal back-off).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn retry_after_is_whole_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
