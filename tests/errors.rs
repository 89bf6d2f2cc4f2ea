//! Error classification against the SDK's real error shapes: a Kinesis client talks to a small
//! HTTP server on 127.0.0.1 that answers with canned AWS errors (or never answers, or is not
//! there), and to no credentials at all. Each error goes through `classify_sdk_error` as in
//! production; the table says what the write path must do with it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use fanout::aws::classify_sdk_error;
use fanout::errors::{kind, request_class, Kind};
use fanout::model::{FailureClass, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does with every request.
#[derive(Clone)]
enum Answer {
    /// This status and AWS error type (header and body, as Kinesis sends them).
    Error(u16, &'static str),
    /// Reads the request and never answers.
    Silence,
}

/// Serves `answer` on 127.0.0.1; returns the endpoint.
async fn server(answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                match answer {
                    Answer::Silence => tokio::time::sleep(Duration::from_secs(60)).await,
                    Answer::Error(status, error_type) => {
                        let body = format!(
                            r#"{{"__type":"{error_type}","message":"canned {error_type}"}}"#
                        );
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\n\
                             x-amzn-errortype: {error_type}\r\nx-amzn-requestid: r-1\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    }
                }
            });
        }
    });
    endpoint
}

/// A Kinesis client for `endpoint`: no retries, a 1 s operation timeout, and credentials
/// unless `credentials` is false.
fn client(endpoint: &str, credentials: bool) -> aws_sdk_kinesis::Client {
    let mut conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_secs(1))
                .build(),
        );
    if credentials {
        conf = conf.credentials_provider(Credentials::for_tests());
    }
    aws_sdk_kinesis::Client::from_conf(conf.build())
}

async fn put_records_error(client: &aws_sdk_kinesis::Client) -> RequestError {
    let entry = aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
        .partition_key("k")
        .data(aws_sdk_kinesis::primitives::Blob::new("d"))
        .build()
        .unwrap();
    let err = client
        .put_records()
        .stream_arn("arn:aws:kinesis:us-east-1:123456789012:stream/s")
        .records(entry)
        .send()
        .await
        .expect_err("the call fails");
    classify_sdk_error(&err)
}

#[tokio::test]
async fn service_errors_are_classified_by_their_code_and_status() {
    use FailureClass::{Permanent as P, Systemic as S, Transient as T};
    // (status, AWS error type, kind, class of the call, class of a PutRecords, ambiguous)
    let cases = [
        (
            400,
            "ProvisionedThroughputExceededException",
            Kind::ShardThrottled,
            T,
            T,
            false,
        ),
        (400, "LimitExceededException", Kind::Throttled, T, T, false),
        (400, "KMSThrottlingException", Kind::Throttled, T, T, false),
        (500, "InternalFailure", Kind::ServerError, T, T, true),
        (503, "ServiceUnavailable", Kind::ServerError, T, T, true),
        (
            400,
            "InvalidArgumentException",
            Kind::ContentsRefused,
            S,
            P,
            false,
        ),
        (
            400,
            "ValidationException",
            Kind::ContentsRefused,
            S,
            P,
            false,
        ),
        (
            400,
            "AccessDeniedException",
            Kind::AccessDenied,
            S,
            S,
            false,
        ),
        (
            400,
            "ResourceNotFoundException",
            Kind::NotFound,
            S,
            S,
            false,
        ),
        (400, "ExpiredTokenException", Kind::Credentials, S, S, false),
        (
            400,
            "UnrecognizedClientException",
            Kind::Credentials,
            S,
            S,
            false,
        ),
        (400, "KMSDisabledException", Kind::Kms, S, S, false),
        (400, "SomethingNewException", Kind::Unknown, S, S, false),
        (502, "SomethingNewException", Kind::Unknown, T, T, true),
    ];
    for (status, code, k, call, put, ambiguous) in cases {
        let endpoint = server(Answer::Error(status, code)).await;
        let e = put_records_error(&client(&endpoint, true)).await;
        assert_eq!(e.code, code, "{status} {code}: {e:?}");
        assert_eq!(kind(&e.code), k, "{status} {code}");
        assert_eq!(e.class, call, "{status} {code}: {e:?}");
        assert_eq!(request_class(&e.code, e.class), put, "{status} {code}");
        assert_eq!(e.ambiguous, ambiguous, "{status} {code}: {e:?}");
        assert!(e.message.contains("canned"), "{status} {code}: {e:?}");
    }
}

#[tokio::test]
async fn no_answer_no_server_and_no_credentials_have_their_own_codes() {
    // Sent, never answered: may have been applied.
    let silent = server(Answer::Silence).await;
    let e = put_records_error(&client(&silent, true)).await;
    assert_eq!(
        (e.code.as_str(), e.class, e.ambiguous),
        ("Timeout", FailureClass::Transient, true),
        "{e:?}"
    );
    assert_eq!(kind(&e.code), Kind::Timeout);

    // Nothing listens: a network error that passes by itself; nothing was sent, so the
    // records are not possible duplicates.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let e = put_records_error(&client(&closed, true)).await;
    assert_eq!(
        (e.code.as_str(), e.class),
        ("NetworkError", FailureClass::Transient),
        "{e:?}"
    );
    assert!(!e.ambiguous, "a refused connection sent nothing: {e:?}");
    assert_eq!(kind(&e.code), Kind::Network);

    // No credentials at all: a person must act, and nothing was sent.
    let e = put_records_error(&client(&silent, false)).await;
    assert_eq!(
        (e.code.as_str(), e.class, e.ambiguous),
        ("CredentialsUnavailable", FailureClass::Systemic, false),
        "{e:?}"
    );
    assert_eq!(kind(&e.code), Kind::Credentials);
}
