//! [`SecretString`]: a string from the config that must never be printed, such as the
//! PostgreSQL connection URL of `[store]` (it may hold a password). Its `Debug` is redacted
//! and it has no `Display`; the value is reached only through [`SecretString::expose`], at
//! the one place that hands it to a client library. This module does not read, check or
//! resolve anything: that is done where the key is validated.

use std::fmt;

/// A secret string value with a redacted `Debug` and no `Display`.
///
/// `PartialEq` compares the values, so that a reload can tell that a secret changed (and
/// needs a restart); the comparison is not constant-time, which is fine for config values
/// that no request can probe.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The value itself: hand it to the client that needs it, never to a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_expose_gives_the_value() {
        let secret = SecretString::new("postgres://u:TOPSECRET@h/db");
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(secret.expose(), "postgres://u:TOPSECRET@h/db");
        assert_eq!(secret, SecretString::new("postgres://u:TOPSECRET@h/db"));
        assert_ne!(secret, SecretString::new("postgres://u:other@h/db"));
    }
}
