//! The routing document in S3 on moto over HTTP: publishing it, a producer's client resolving
//! through it, and a producer following a cutover (active, hold, active on a new stream).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use fanout::aws::routing::S3Routing;
use fanout::model::StoreError;
use fanout::routing::{
    Resolved, RoutingClient, RoutingDocument, RoutingError, RoutingOptions, RoutingSource,
    StreamMode, StreamRouting,
};
use support::stack::{sdk_config, unique, Stack, NEW_ACCOUNT};
use tokio::time::Instant;

/// An SDK configuration for the new account and a fresh, empty bucket on moto.
async fn bucket() -> (SdkConfig, String) {
    let stack = Stack::from_env();
    let sdk = sdk_config(&stack.kinesis_local, &stack.moto, NEW_ACCOUNT).await;
    let bucket = unique("fanout-routing");
    s3(&sdk)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    (sdk, bucket)
}

fn s3(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

fn stream_arn(name: &str) -> String {
    format!("arn:aws:kinesis:us-east-1:{NEW_ACCOUNT}:stream/{name}")
}

/// A document routing the logical stream `orders`, at `version`.
fn document(version: u64, mode: StreamMode, active: &str) -> RoutingDocument {
    let now = chrono::Utc::now().timestamp_millis();
    RoutingDocument {
        migration: "orders-migration".to_owned(),
        version,
        updated_at_ms: now,
        streams: BTreeMap::from([(
            "orders".to_owned(),
            StreamRouting {
                active: active.to_owned(),
                mode,
                version,
                changed_at_ms: now,
                changed_by: "routing-test".to_owned(),
                reason: format!("step {version}"),
            },
        )]),
    }
}

#[tokio::test]
async fn publish_then_resolve_returns_the_active_stream() {
    let (sdk, bucket) = bucket().await;
    let key = S3Routing::key_for("routing/", &unique("migration"));
    let orders = stream_arn(&unique("orders"));
    S3Routing::new(&sdk, &bucket, &key)
        .publish(&document(1, StreamMode::Active, &orders))
        .await
        .expect("publish");

    let client = RoutingClient::new(
        S3Routing::new(&sdk, &bucket, &key),
        RoutingOptions::default(),
    );
    assert_eq!(
        client.resolve("orders").await,
        Ok(Resolved {
            stream: orders.clone(),
            version: 1
        })
    );

    let head = s3(&sdk)
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .expect("head the document");
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(head.cache_control(), Some("no-cache"));
    assert_eq!(client.source().location(), format!("s3://{bucket}/{key}"));
}

/// An S3 routing source that notes when it first read the `orders` stream on hold.
struct Watched {
    inner: S3Routing,
    hold_read_at: Mutex<Option<Instant>>,
}

impl RoutingSource for Watched {
    async fn fetch(&self) -> Result<Option<RoutingDocument>, StoreError> {
        let fetched = self.inner.fetch().await;
        if let Ok(Some(doc)) = &fetched {
            if doc.streams["orders"].mode == StreamMode::Hold {
                self.hold_read_at
                    .lock()
                    .unwrap()
                    .get_or_insert_with(Instant::now);
            }
        }
        fetched
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}

/// One resolve of the producer loop.
struct Call {
    ended: Instant,
    took: Duration,
    result: Result<Resolved, RoutingError>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_waits_out_a_hold_and_then_writes_to_the_new_stream() {
    let (sdk, bucket) = bucket().await;
    let key = S3Routing::key_for("routing/", &unique("migration"));
    let old = stream_arn(&unique("orders-old"));
    let new = stream_arn(&unique("orders-new"));
    let publisher = S3Routing::new(&sdk, &bucket, &key);
    publisher
        .publish(&document(1, StreamMode::Active, &old))
        .await
        .expect("publish active (old)");

    let client = Arc::new(RoutingClient::new(
        Watched {
            inner: S3Routing::new(&sdk, &bucket, &key),
            hold_read_at: Mutex::new(None),
        },
        RoutingOptions {
            cache_ttl: Duration::from_millis(50),
            hold_poll: Duration::from_millis(20),
            max_hold_wait: Duration::from_secs(10),
        },
    ));

    // The producer: resolves before every "write" until it has written to the new stream a few times.
    let producer = tokio::spawn({
        let client = client.clone();
        let new = new.clone();
        async move {
            let mut calls: Vec<Call> = Vec::new();
            let give_up = Instant::now() + Duration::from_secs(30);
            let on_new = |c: &Call| c.result.as_ref().is_ok_and(|r| r.stream == new);
            while calls.iter().filter(|c| on_new(c)).count() < 3 {
                assert!(
                    Instant::now() < give_up,
                    "the producer never reached the new stream"
                );
                let started = Instant::now();
                let result = client.resolve("orders").await;
                calls.push(Call {
                    ended: Instant::now(),
                    took: started.elapsed(),
                    result,
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls
        }
    });

    // The cutover: hold, and 500 ms later the new stream.
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher
        .publish(&document(2, StreamMode::Hold, &old))
        .await
        .expect("publish hold");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let active_published = Instant::now();
    publisher
        .publish(&document(3, StreamMode::Active, &new))
        .await
        .expect("publish active (new)");

    let calls = producer.await.expect("producer task");
    let hold_read_at = client
        .source()
        .hold_read_at
        .lock()
        .unwrap()
        .expect("the producer read the hold");

    let before: Vec<&Call> = calls.iter().filter(|c| c.ended < hold_read_at).collect();
    let after: Vec<&Call> = calls.iter().filter(|c| c.ended >= hold_read_at).collect();
    assert!(
        !before.is_empty()
            && before
                .iter()
                .all(|c| c.result.as_ref().is_ok_and(|r| r.stream == old)),
        "before the hold every resolve returned the old stream"
    );
    let expected = Ok(Resolved {
        stream: new.clone(),
        version: 3,
    });
    for call in &after {
        assert_eq!(
            call.result, expected,
            "a resolve ending after the hold was read"
        );
    }
    // The resolve that read the hold returned only once the new stream was published.
    let blocked = after[0];
    assert!(
        blocked.ended >= active_published,
        "the resolve that read the hold returned {:?} before the new stream was published",
        blocked.result
    );
    assert!(
        blocked.took >= Duration::from_millis(250),
        "blocked only {:?}",
        blocked.took
    );
    eprintln!(
        "{} resolves before the hold, {} after; the one that read it blocked {:?}",
        before.len(),
        after.len(),
        blocked.took
    );
}

#[tokio::test]
async fn no_document_is_reported_with_its_location() {
    let (sdk, bucket) = bucket().await;
    let key = S3Routing::key_for("routing/", &unique("migration"));
    let client = RoutingClient::new(
        S3Routing::new(&sdk, &bucket, &key),
        RoutingOptions::default(),
    );

    let err = client.resolve("orders").await.unwrap_err();
    let location = format!("s3://{bucket}/{key}");
    assert_eq!(
        err,
        RoutingError::NoDocument {
            location: location.clone()
        }
    );
    assert!(err.to_string().contains(&location), "{err}");
}

#[tokio::test]
async fn an_object_that_is_not_a_routing_document_is_reported_with_its_location() {
    let (sdk, bucket) = bucket().await;
    let key = S3Routing::key_for("routing/", &unique("migration"));
    s3(&sdk)
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(b"{\"streams\": {}}".to_vec().into())
        .send()
        .await
        .expect("put a foreign object");
    let client = RoutingClient::new(
        S3Routing::new(&sdk, &bucket, &key),
        RoutingOptions::default(),
    );

    let err = client.resolve("orders").await.unwrap_err();
    let RoutingError::Fetch(store) = &err else {
        panic!("expected a fetch error, got {err:?}");
    };
    assert_eq!(store.code, "CorruptRoutingDocument");
    let text = err.to_string();
    assert!(text.contains(&format!("s3://{bucket}/{key}")), "{text}");
    assert!(text.contains("no \"format\" field"), "{text}");
}
