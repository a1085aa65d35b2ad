//! How the redis_stream sink reads a failure of the client or the server: which errors mean
//! Redis cannot be reached (pause and probe, no attempt counted), which are worth a retry and
//! which can never succeed (dead-letter at once). Pure; the message is bounded and never holds
//! the URL (the client's errors do not quote it).

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::sinks::SinkError;
use crate::store::model::ERROR_EXCERPT_BYTES;

/// Classifies `error`:
/// - unreachable: connection refused, dropped or failing (I/O), authentication refused
///   (`NOAUTH`, `WRONGPASS`: the sink's config is to blame, not the event), and a server that
///   is up but cannot serve (`LOADING`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`,
///   too many clients);
/// - retryable: a timeout, `OOM` (memory may be freed by consumers trimming the stream),
///   `BUSY` (another script), `MISCONF` (a failing snapshot), `NOSCRIPT`, and anything
///   unknown;
/// - permanent: `WRONGTYPE` (the stream's key holds something else), `NOPERM` (the ACL user
///   may not run the script or write the key), and any other `ERR` (a command or script
///   Redis refuses as such).
pub fn classify(error: &RedisError) -> SinkError {
    let message = describe(error);
    if error.is_timeout() {
        return SinkError::Retryable {
            message,
            retry_after: None,
        };
    }
    let unreachable = SinkError::Unreachable {
        message: message.clone(),
    };
    if error.is_io_error() || error.is_connection_refusal() || error.is_connection_dropped() {
        return unreachable;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ReadOnly,
        ) => unreachable,
        ErrorKind::Server(ServerErrorKind::NoPerm) => SinkError::permanent(message),
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            if error
                .detail()
                .is_some_and(|d| d.contains("max number of clients"))
            {
                unreachable
            } else {
                SinkError::permanent(message)
            }
        }
        ErrorKind::Extension => match error.code() {
            Some("WRONGTYPE") => SinkError::permanent(message),
            Some("NOAUTH" | "WRONGPASS") => unreachable,
            _ => SinkError::retryable(message),
        },
        _ => SinkError::retryable(message),
    }
}

/// The error's text, cut to [`ERROR_EXCERPT_BYTES`] at a character boundary.
fn describe(error: &RedisError) -> String {
    let mut text = format!("redis: {error}");
    if text.len() > ERROR_EXCERPT_BYTES {
        let mut end = ERROR_EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io;

    use redis::make_extension_error;

    use super::*;

    fn server(kind: ServerErrorKind, detail: &str) -> RedisError {
        RedisError::from((ErrorKind::Server(kind), "server", detail.to_owned()))
    }

    fn extension(code: &str) -> RedisError {
        make_extension_error(code.to_owned(), Some("details".to_owned()))
    }

    #[test]
    fn unreachable() {
        for error in [
            RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused)),
            RedisError::from(io::Error::from(io::ErrorKind::ConnectionReset)),
            RedisError::from(io::Error::from(io::ErrorKind::BrokenPipe)),
            server(ServerErrorKind::BusyLoading, "Redis is loading the dataset"),
            server(ServerErrorKind::MasterDown, "x"),
            server(
                ServerErrorKind::ReadOnly,
                "You can't write against a replica",
            ),
            server(
                ServerErrorKind::ResponseError,
                "max number of clients reached",
            ),
            RedisError::from((ErrorKind::AuthenticationFailed, "auth")),
            extension("NOAUTH"),
            extension("WRONGPASS"),
        ] {
            assert!(
                matches!(classify(&error), SinkError::Unreachable { .. }),
                "{error}: {:?}",
                classify(&error)
            );
        }
    }

    #[test]
    fn retryable() {
        for error in [
            RedisError::from(io::Error::from(io::ErrorKind::TimedOut)),
            extension("OOM"),
            extension("BUSY"),
            extension("MISCONF"),
            extension("SOMETHINGNEW"),
            server(ServerErrorKind::NoScript, "No matching script"),
        ] {
            assert!(
                matches!(classify(&error), SinkError::Retryable { .. }),
                "{error}: {:?}",
                classify(&error)
            );
        }
    }

    #[test]
    fn permanent() {
        for error in [
            extension("WRONGTYPE"),
            server(ServerErrorKind::NoPerm, "this user has no permissions"),
            server(ServerErrorKind::ResponseError, "Error running script"),
        ] {
            assert!(
                matches!(classify(&error), SinkError::Permanent { .. }),
                "{error}: {:?}",
                classify(&error)
            );
        }
    }

    #[test]
    fn messages_are_bounded() {
        let long = "é".repeat(ERROR_EXCERPT_BYTES);
        let error = make_extension_error("OOM".to_owned(), Some(long));
        let message = classify(&error).to_string();
        assert!(message.len() <= ERROR_EXCERPT_BYTES, "{}", message.len());
        assert!(message.starts_with("redis: "), "{message}");
    }
}
