//! Every AWS error code fanout reacts to, sorted once into a [`Kind`]: what sort of trouble it
//! is. How the write path handles an error ([`FailureClass`]) and what a person is told to do
//! (the replicator's and verify's fix texts) are decided from the kind, never from the code
//! text again. The raw code stays on each error, for logs and metrics.

use crate::model::FailureClass;

/// What sort of trouble an error code means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A shard over its throughput (`ProvisionedThroughputExceededException`): the target's
    /// pacing slows down for it.
    ShardThrottled,
    /// An API rate limit (`LimitExceededException`, `ThrottlingException`,
    /// `KMSThrottlingException`, ...): passes by itself.
    Throttled,
    /// The service failed the call (`InternalFailure`, `ServiceUnavailable`, ...): passes by
    /// itself; a write may still have been applied.
    ServerError,
    /// No answer in time (fanout's `Timeout`).
    Timeout,
    /// The connection failed (fanout's `NetworkError`) or the answer could not be read
    /// (`UnreadableResponse`).
    Network,
    /// The request's contents were refused (`InvalidArgumentException`,
    /// `ValidationException`): for a PutRecords, a record or key the target does not accept.
    ContentsRefused,
    /// Not allowed (`AccessDeniedException`, `AccessDenied`, `UnauthorizedOperation`).
    AccessDenied,
    /// The stream, table or bucket does not exist (`ResourceNotFoundException`, `NoSuchBucket`).
    NotFound,
    /// No usable credentials: expired, unknown, badly signed, or none could be obtained
    /// (`ExpiredTokenException`, `RequestExpired`, `UnrecognizedClientException`,
    /// `InvalidSignatureException`, fanout's `CredentialsUnavailable`, ...).
    Credentials,
    /// The stream's KMS key cannot be used (`KMSDisabledException`, `KMSAccessDeniedException`,
    /// ... every `KMS*` code but `KMSThrottlingException`).
    Kms,
    /// A code fanout does not know.
    Unknown,
}

/// The kind of an AWS error code (or of fanout's own codes for transport trouble).
pub fn kind(code: &str) -> Kind {
    match code {
        "ProvisionedThroughputExceededException" => Kind::ShardThrottled,
        "LimitExceededException"
        | "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "SlowDown"
        | "ProvisionedThroughputExceeded"
        | "KMSThrottlingException" => Kind::Throttled,
        "InternalFailure" | "ServiceUnavailable" | "InternalServerError" | "InternalError" => {
            Kind::ServerError
        }
        "Timeout" => Kind::Timeout,
        "NetworkError" | "UnreadableResponse" => Kind::Network,
        "InvalidArgumentException" | "ValidationException" => Kind::ContentsRefused,
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => Kind::AccessDenied,
        "ResourceNotFoundException" | "NoSuchBucket" => Kind::NotFound,
        "ExpiredTokenException"
        | "ExpiredToken"
        | "RequestExpired"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "SignatureDoesNotMatch"
        | "CredentialsUnavailable"
        | "AssumeRoleFailed" => Kind::Credentials,
        c if c.starts_with("KMS") => Kind::Kms,
        _ => Kind::Unknown,
    }
}

impl Kind {
    /// Passes by itself: worth retrying.
    pub fn passes(self) -> bool {
        matches!(
            self,
            Kind::ShardThrottled
                | Kind::Throttled
                | Kind::ServerError
                | Kind::Timeout
                | Kind::Network
        )
    }

    /// Needs a person: nothing on the route succeeds until someone acts.
    pub fn needs_a_person(self) -> bool {
        matches!(
            self,
            Kind::ContentsRefused
                | Kind::AccessDenied
                | Kind::NotFound
                | Kind::Credentials
                | Kind::Kms
        )
    }
}

/// How the write path handles a failed PutRecords **entry** with this code. An unknown code
/// is retried: bounded by the deadline, and the record is never lost.
pub fn entry_class(code: &str) -> FailureClass {
    if kind(code).needs_a_person() {
        FailureClass::Systemic
    } else {
        FailureClass::Transient
    }
}

/// How a failed **call** with this code and HTTP status is handled. An unknown code is
/// retried when the service answered 5xx, and needs a person otherwise.
pub fn call_class(code: &str, server_error: bool) -> FailureClass {
    let k = kind(code);
    if k.passes() || (k == Kind::Unknown && server_error) {
        FailureClass::Transient
    } else {
        FailureClass::Systemic
    }
}

/// How a failed **PutRecords request** with this code is handled: one refused for its
/// contents is `Permanent` (the write path sends fewer records at a time until the ones at
/// fault are alone); otherwise as [`call_class`].
pub fn request_class(code: &str, class: FailureClass) -> FailureClass {
    if kind(code) == Kind::ContentsRefused {
        FailureClass::Permanent
    } else {
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_kind_and_the_classes_follow_from_it() {
        // (code, kind, entry class, call class at 400, call class at 500)
        use FailureClass::{Permanent as P, Systemic as S, Transient as T};
        let cases = [
            (
                "ProvisionedThroughputExceededException",
                Kind::ShardThrottled,
                T,
                T,
                T,
            ),
            ("KMSThrottlingException", Kind::Throttled, T, T, T),
            ("LimitExceededException", Kind::Throttled, T, T, T),
            ("ThrottlingException", Kind::Throttled, T, T, T),
            ("SlowDown", Kind::Throttled, T, T, T),
            ("InternalFailure", Kind::ServerError, T, T, T),
            ("ServiceUnavailable", Kind::ServerError, T, T, T),
            ("Timeout", Kind::Timeout, T, T, T),
            ("NetworkError", Kind::Network, T, T, T),
            ("InvalidArgumentException", Kind::ContentsRefused, S, S, S),
            ("ValidationException", Kind::ContentsRefused, S, S, S),
            ("AccessDeniedException", Kind::AccessDenied, S, S, S),
            ("AccessDenied", Kind::AccessDenied, S, S, S),
            ("ResourceNotFoundException", Kind::NotFound, S, S, S),
            ("NoSuchBucket", Kind::NotFound, S, S, S),
            ("ExpiredTokenException", Kind::Credentials, S, S, S),
            ("RequestExpired", Kind::Credentials, S, S, S),
            ("UnrecognizedClientException", Kind::Credentials, S, S, S),
            ("CredentialsUnavailable", Kind::Credentials, S, S, S),
            ("KMSDisabledException", Kind::Kms, S, S, S),
            ("KMSAccessDeniedException", Kind::Kms, S, S, S),
            ("SomethingNew", Kind::Unknown, T, S, T),
        ];
        for (code, k, entry, at_400, at_500) in cases {
            assert_eq!(kind(code), k, "{code}");
            assert_eq!(entry_class(code), entry, "{code} per entry");
            assert_eq!(call_class(code, false), at_400, "{code} at 400");
            assert_eq!(call_class(code, true), at_500, "{code} at 500");
        }
        assert_eq!(request_class("InvalidArgumentException", S), P);
        assert_eq!(request_class("ValidationException", S), P);
        assert_eq!(request_class("AccessDeniedException", S), S);
        assert_eq!(request_class("InternalFailure", T), T);
    }
}
