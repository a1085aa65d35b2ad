//! How the NATS sink reads a failed JetStream publish: which failures pause the sink
//! (unreachable), which are worth a retry and which can never succeed. Pure; the sink turns
//! the verdict into a [`crate::sinks::SinkError`].

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::ErrorCode;

/// How a failed publish is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The broker (or its JetStream) is not there: pause and probe, no attempt counted.
    Unreachable,
    /// Try again later (no ack in time, a full or busy stream).
    Retry,
    /// The message can never be stored: dead-letter at once.
    Permanent,
}

/// Classifies a publish error of `kind`, with the JetStream API error code when the server
/// answered with one.
///
/// No responders (no stream listens on the subject, or JetStream is down or electing a
/// leader) counts as unreachable, not permanent: the server cannot tell those apart, and a
/// stream created or restored later then receives every event instead of dead-lettering them.
pub fn classify(kind: PublishErrorKind, code: Option<ErrorCode>) -> Verdict {
    match kind {
        PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe => Verdict::Unreachable,
        PublishErrorKind::TimedOut | PublishErrorKind::MaxAckPending => Verdict::Retry,
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => Verdict::Permanent,
        _ => match code {
            Some(code) => classify_code(code),
            None => Verdict::Retry,
        },
    }
}

/// Classifies a JetStream API error code of a publish ack.
fn classify_code(code: ErrorCode) -> Verdict {
    match code {
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
        | ErrorCode::STREAM_NOT_MATCH
        | ErrorCode::STREAM_NOT_FOUND
        | ErrorCode::BAD_REQUEST => Verdict::Permanent,
        ErrorCode::JETSTREAM_NOT_ENABLED
        | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
        | ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_ACTIVE
        | ErrorCode::CLUSTER_NO_PEERS
        | ErrorCode::CLUSTER_NOT_LEADER => Verdict::Unreachable,
        // Storage full, limits reached, store failures, anything new: maybe later.
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_errors_are_classified() {
        use PublishErrorKind as K;
        assert_eq!(classify(K::StreamNotFound, None), Verdict::Unreachable);
        assert_eq!(classify(K::BrokenPipe, None), Verdict::Unreachable);
        assert_eq!(classify(K::TimedOut, None), Verdict::Retry);
        assert_eq!(classify(K::MaxAckPending, None), Verdict::Retry);
        assert_eq!(classify(K::MaxPayloadExceeded, None), Verdict::Permanent);
        assert_eq!(classify(K::Other, None), Verdict::Retry);
        assert_eq!(
            classify(K::Other, Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)),
            Verdict::Permanent
        );
        assert_eq!(
            classify(K::Other, Some(ErrorCode::JETSTREAM_NOT_ENABLED)),
            Verdict::Unreachable
        );
        assert_eq!(
            classify(K::Other, Some(ErrorCode::STORAGE_RESOURCES_EXCEEDED)),
            Verdict::Retry
        );
    }
}
