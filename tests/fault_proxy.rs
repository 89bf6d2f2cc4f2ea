//! Self-test of the fault-injection proxy in `tests/support/fault_proxy/`.
//!
//! The first group runs against an in-process fake upstream, so the proxy's own mechanics
//! (what goes upstream, response shape, big bodies, concurrency) are checked everywhere. The
//! second group needs kinesis-local (`FANOUT_KINESIS_ENDPOINT`) and checks, through the real
//! AWS SDK, that what the proxy reports matches what actually landed in the stream.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::fault_proxy::{FaultPlan, FaultProxy, ProxyStats};
use tokio::net::TcpListener;

const PUT_RECORDS: &str = "Kinesis_20131202.PutRecords";
const THROTTLED: &str = "ProvisionedThroughputExceededException";

// ---------------------------------------------------------------------------------------------
// Fake upstream: answers PutRecords like Kinesis (one sequence number per entry) and anything
// else with the size of what it received, and remembers every PutRecords body it saw.

struct FakeUpstream {
    endpoint: String,
    put_bodies: Arc<Mutex<Vec<Value>>>,
}

async fn fake_upstream() -> FakeUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let put_bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = put_bodies.clone();
    let sequence = Arc::new(AtomicU64::new(1000));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            let sequence = sequence.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    let sequence = sequence.clone();
                    async move {
                        let is_put = req.headers().get("x-amz-target").unwrap().as_bytes()
                            == PUT_RECORDS.as_bytes();
                        let declared_len: usize = req.headers()["content-length"]
                            .to_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(
                            declared_len,
                            body.len(),
                            "proxy sent a wrong Content-Length"
                        );
                        let answer = if is_put {
                            let request: Value = serde_json::from_slice(&body).unwrap();
                            let records: Vec<Value> = request["Records"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|_| {
                                    let n = sequence.fetch_add(1, Ordering::SeqCst);
                                    json!({"SequenceNumber": n.to_string(), "ShardId": "shardId-000000000000"})
                                })
                                .collect();
                            seen.lock().unwrap().push(request);
                            json!({"EncryptionType": "NONE", "FailedRecordCount": 0, "Records": records})
                        } else {
                            json!({"received": body.len()})
                        };
                        let mut response =
                            Response::new(Full::new(Bytes::from(answer.to_string())));
                        response.headers_mut().insert(
                            "content-type",
                            "application/x-amz-json-1.1".parse().unwrap(),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeUpstream {
        endpoint,
        put_bodies,
    }
}

fn raw_client() -> HttpClient<HttpConnector, Full<Bytes>> {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

/// Sends one Kinesis-style JSON request; returns status, Content-Length header and JSON body.
async fn send(
    client: &HttpClient<HttpConnector, Full<Bytes>>,
    endpoint: &str,
    target: &str,
    body: Vec<u8>,
) -> (u16, usize, Value) {
    let request = Request::post(format!("{endpoint}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        length,
        body.len(),
        "proxy answered with a wrong Content-Length"
    );
    (status, length, serde_json::from_slice(&body).unwrap())
}

fn put_records_body(arn: &str, count: usize) -> Vec<u8> {
    let records: Vec<Value> = (0..count)
        .map(|i| json!({"Data": format!("ZW50cnk{i}"), "PartitionKey": format!("pk-{i}")}))
        .collect();
    json!({"StreamARN": arn, "Records": records})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn partial_failures_send_only_surviving_entries_upstream() {
    let upstream = fake_upstream().await;
    let proxy = FaultProxy::start(&upstream.endpoint);
    proxy.set_plan(FaultPlan::mixed_failures(0.3, 7));
    let client = raw_client();
    let arn = "arn:aws:kinesis:us-east-1:222222222222:stream/orders";

    let (status, _, answer) = send(
        &client,
        &proxy.endpoint(),
        PUT_RECORDS,
        put_records_body(arn, 100),
    )
    .await;

    assert_eq!(status, 200);
    let records = answer["Records"].as_array().unwrap();
    assert_eq!(records.len(), 100);
    let failed: Vec<usize> = (0..100)
        .filter(|&i| records[i].get("ErrorCode").is_some())
        .collect();
    assert_eq!(answer["FailedRecordCount"], json!(failed.len()));
    assert!((10..=50).contains(&failed.len()), "{} failed", failed.len());
    assert_eq!(answer["EncryptionType"], json!("NONE"));
    for &i in &failed {
        match records[i]["ErrorCode"].as_str().unwrap() {
            THROTTLED => assert_eq!(
                records[i]["ErrorMessage"],
                json!("Rate exceeded for shard shardId-000000000000 in stream orders under account 222222222222.")
            ),
            "InternalFailure" => {
                assert_eq!(records[i]["ErrorMessage"], json!("Internal service failure."))
            }
            other => panic!("unexpected error code {other}"),
        }
    }

    // Upstream got exactly the surviving entries, in order, with the same StreamARN; their
    // sequence numbers come back at the surviving entries' original positions.
    let seen = upstream.put_bodies.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["StreamARN"], json!(arn));
    let forwarded: Vec<String> = seen[0]["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["PartitionKey"].as_str().unwrap().to_string())
        .collect();
    let survivors: Vec<usize> = (0..100).filter(|i| !failed.contains(i)).collect();
    let expected: Vec<String> = survivors.iter().map(|i| format!("pk-{i}")).collect();
    assert_eq!(forwarded, expected);
    for (k, &i) in survivors.iter().enumerate() {
        assert_eq!(records[i]["SequenceNumber"], json!((1000 + k).to_string()));
    }
    assert_eq!(
        proxy.stats(),
        ProxyStats {
            put_records_requests: 1,
            entries_failed_injected: failed.len() as u64,
            entries_forwarded: survivors.len() as u64,
            hangs: 0,
        }
    );

    // The same seed replays the same choice.
    proxy.set_plan(FaultPlan::mixed_failures(0.3, 7));
    let (_, _, again) = send(
        &client,
        &proxy.endpoint(),
        PUT_RECORDS,
        put_records_body(arn, 100),
    )
    .await;
    let again_failed: Vec<usize> = (0..100)
        .filter(|&i| again["Records"][i].get("ErrorCode").is_some())
        .collect();
    assert_eq!(again_failed, failed);
}

#[tokio::test]
async fn fully_failed_requests_never_reach_upstream() {
    let upstream = fake_upstream().await;
    let proxy = FaultProxy::start(&upstream.endpoint);
    proxy.set_plan(FaultPlan::throttling(1.0, 1));
    let client = raw_client();

    let (status, _, answer) = send(
        &client,
        &proxy.endpoint(),
        PUT_RECORDS,
        json!({"StreamName": "s", "Records": [{"Data": "YQ==", "PartitionKey": "a"}, {"Data": "Yg==", "PartitionKey": "b"}]})
            .to_string()
            .into_bytes(),
    )
    .await;

    assert_eq!(status, 200);
    assert_eq!(answer["FailedRecordCount"], json!(2));
    assert_eq!(answer["Records"][1]["ErrorCode"], json!(THROTTLED));
    assert!(upstream.put_bodies.lock().unwrap().is_empty());
    assert_eq!(proxy.entries_forwarded(), 0);
    assert_eq!(proxy.entries_failed_injected(), 2);

    // A small fraction still fails at least one entry of a multi-entry request.
    proxy.set_plan(FaultPlan::throttling(0.000_001, 1));
    let (_, _, answer) = send(
        &client,
        &proxy.endpoint(),
        PUT_RECORDS,
        put_records_body("arn:aws:kinesis:us-east-1:1:stream/s", 2),
    )
    .await;
    assert_eq!(answer["FailedRecordCount"], json!(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_many_concurrent_keep_alive_requests() {
    let upstream = fake_upstream().await;
    let proxy = FaultProxy::start(&upstream.endpoint);
    let client = raw_client();

    // ~6 MB non-PutRecords body, and a ~6 MB PutRecords under a partial-failure plan.
    let big = vec![b'x'; 6 * 1024 * 1024];
    let body = json!({"Blob": String::from_utf8(big.clone()).unwrap()})
        .to_string()
        .into_bytes();
    let sent = body.len();
    let (status, _, answer) = send(
        &client,
        &proxy.endpoint(),
        "Kinesis_20131202.Whatever",
        body,
    )
    .await;
    assert_eq!(
        (status, answer["received"].as_u64()),
        (200, Some(sent as u64))
    );

    proxy.set_plan(FaultPlan::throttling(0.5, 3));
    let chunk = String::from_utf8(vec![b'y'; 1024 * 1024]).unwrap();
    let records: Vec<Value> = (0..6)
        .map(|i| json!({"Data": chunk, "PartitionKey": format!("k{i}")}))
        .collect();
    let body = json!({"StreamName": "s", "Records": records})
        .to_string()
        .into_bytes();
    let (status, _, answer) = send(&client, &proxy.endpoint(), PUT_RECORDS, body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["Records"].as_array().unwrap().len(), 6);

    // 400 concurrent requests over a pooled keep-alive client.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400 {
        let client = client.clone();
        let endpoint = proxy.endpoint();
        tasks.spawn(async move {
            let body = put_records_body("arn:aws:kinesis:us-east-1:1:stream/s", 1 + i % 5);
            send(&client, &endpoint, PUT_RECORDS, body).await
        });
    }
    let mut entries = 0;
    while let Some(done) = tasks.join_next().await {
        let (status, _, answer) = done.unwrap();
        assert_eq!(status, 200);
        entries += answer["Records"].as_array().unwrap().len() as u64;
    }
    let stats = proxy.stats();
    assert_eq!(stats.put_records_requests, 401);
    assert_eq!(
        stats.entries_forwarded + stats.entries_failed_injected,
        entries + 6
    );
    println!(
        "400 concurrent PutRecords through the proxy in {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Through the AWS SDK.

fn sdk_client(endpoint: &str, operation_timeout: Option<Duration>) -> aws_sdk_kinesis::Client {
    let mut timeouts = TimeoutConfig::builder();
    if let Some(timeout) = operation_timeout {
        timeouts = timeouts.operation_timeout(timeout);
    }
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        // kinesis-local takes a 12-digit access key id as the account.
        .credentials_provider(Credentials::new(
            "123456789012",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(endpoint)
        .timeout_config(timeouts.build())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

#[tokio::test]
async fn request_error_surfaces_as_typed_sdk_error() {
    // The proxy answers without forwarding, so the upstream never needs to exist.
    let upstream = fake_upstream().await;
    let proxy = FaultProxy::start(&upstream.endpoint);
    let client = sdk_client(&proxy.endpoint(), None);
    let entry = PutRecordsRequestEntry::builder()
        .data(Blob::new("x"))
        .partition_key("p")
        .build()
        .unwrap();

    proxy.set_plan(FaultPlan::request_error(
        "AccessDeniedException",
        "User is not authorized to perform: kinesis:PutRecords",
    ));
    let err = client
        .put_records()
        .stream_name("s")
        .records(entry.clone())
        .send()
        .await
        .expect_err("AccessDenied must be an error");
    let service_error = err.into_service_error();
    assert!(
        matches!(service_error, PutRecordsError::AccessDeniedException(_)),
        "{service_error:?}"
    );
    assert_eq!(
        aws_sdk_kinesis::error::ProvideErrorMetadata::code(&service_error),
        Some("AccessDeniedException")
    );

    proxy.set_plan(FaultPlan::request_error(
        "KMSAccessDeniedException",
        "denied",
    ));
    let err = client
        .put_records()
        .stream_name("s")
        .records(entry.clone())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, PutRecordsError::KmsAccessDeniedException(_)),
        "{err:?}"
    );

    proxy.set_plan(FaultPlan::request_error(
        "ExpiredTokenException",
        "The security token included in the request is expired",
    ));
    let err = client
        .put_records()
        .stream_name("s")
        .records(entry)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        aws_sdk_kinesis::error::ProvideErrorMetadata::code(&err),
        Some("ExpiredTokenException")
    );
    assert!(upstream.put_bodies.lock().unwrap().is_empty());
    assert_eq!(proxy.put_records_requests(), 3);
}

// ---------------------------------------------------------------------------------------------
// Against kinesis-local.

fn kinesis_endpoint() -> Option<String> {
    let endpoint = std::env::var("FANOUT_KINESIS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    if endpoint.is_none() {
        support::stack::not_running(
            "FANOUT_KINESIS_ENDPOINT not set (start the local stack with infra/local/start.sh)",
        );
    }
    endpoint
}

async fn create_stream(client: &aws_sdk_kinesis::Client, shards: i32) -> String {
    let name = format!("fault-proxy-{:016x}", rand::random::<u64>());
    client
        .create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .unwrap();
        if summary
            .stream_description_summary()
            .unwrap()
            .stream_status()
            == &StreamStatus::Active
        {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} never became ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record in the stream, keyed by data: (shard id, sequence number).
async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> BTreeMap<String, (String, String)> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut found = BTreeMap::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        loop {
            let page = client
                .get_records()
                .shard_iterator(&iterator)
                .send()
                .await
                .unwrap();
            for record in page.records() {
                let data = String::from_utf8(record.data().as_ref().to_vec()).unwrap();
                let previous = found.insert(
                    data.clone(),
                    (
                        shard.shard_id().to_string(),
                        record.sequence_number().to_string(),
                    ),
                );
                assert!(previous.is_none(), "{data} is in the stream twice");
            }
            match page.next_shard_iterator() {
                Some(next) if !page.records().is_empty() => iterator = next.to_string(),
                _ => break,
            }
        }
    }
    found
}

#[tokio::test]
async fn partial_failures_match_what_kinesis_local_stored() {
    let Some(upstream) = kinesis_endpoint() else {
        return;
    };
    let proxy = FaultProxy::start(&upstream);
    let client = sdk_client(&proxy.endpoint(), None);
    let stream = create_stream(&client, 2).await;

    proxy.set_plan(FaultPlan::PartialFailures {
        fraction: 0.3,
        seed: 42,
        error_codes: vec![THROTTLED.to_string(), "InternalFailure".to_string()],
    });
    let entries: Vec<PutRecordsRequestEntry> = (0..200)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(format!("rec-{i:03}")))
                .partition_key(format!("pk-{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let output = client
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    proxy.set_plan(FaultPlan::Pass);

    let results = output.records();
    assert_eq!(results.len(), 200);
    let failed: BTreeSet<usize> = (0..200)
        .filter(|&i| results[i].error_code().is_some())
        .collect();
    assert_eq!(output.failed_record_count(), Some(failed.len() as i32));
    assert!((30..=90).contains(&failed.len()), "{} failed", failed.len());

    // The stream holds exactly the entries reported as written, at the reported positions.
    let stored = read_stream(&client, &stream).await;
    let expected: BTreeMap<String, (String, String)> = (0..200)
        .filter(|i| !failed.contains(i))
        .map(|i| {
            (
                format!("rec-{i:03}"),
                (
                    results[i].shard_id().unwrap().to_string(),
                    results[i].sequence_number().unwrap().to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(stored, expected);
    let shards_used: BTreeSet<&String> = stored.values().map(|(shard, _)| shard).collect();
    assert_eq!(shards_used.len(), 2, "200 keys should reach both shards");
    assert_eq!(proxy.entries_failed_injected(), failed.len() as u64);
    assert_eq!(proxy.entries_forwarded(), (200 - failed.len()) as u64);
    println!(
        "{} of 200 entries failed by injection; {} stored on {} shards",
        failed.len(),
        stored.len(),
        shards_used.len()
    );
}

#[tokio::test]
async fn accept_then_hang_times_out_after_the_write() {
    let Some(upstream) = kinesis_endpoint() else {
        return;
    };
    let proxy = FaultProxy::start(&upstream);
    let client = sdk_client(&proxy.endpoint(), None);
    let impatient = sdk_client(&proxy.endpoint(), Some(Duration::from_millis(500)));
    let stream = create_stream(&client, 1).await;
    let entry = |data: &str| {
        PutRecordsRequestEntry::builder()
            .data(Blob::new(data.to_string()))
            .partition_key("p")
            .build()
            .unwrap()
    };

    proxy.set_plan(FaultPlan::AcceptThenHang {
        requests: 1,
        hang: Duration::from_secs(5),
    });
    let started = Instant::now();
    let err = impatient
        .put_records()
        .stream_name(&stream)
        .records(entry("hung"))
        .send()
        .await
        .expect_err("the response is held back past the operation timeout");
    let waited = started.elapsed();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(
        waited < Duration::from_secs(3),
        "timed out after {waited:?}"
    );
    assert_eq!(proxy.hangs(), 1);

    // The budget is spent: the next PutRecords passes straight through.
    let started = Instant::now();
    impatient
        .put_records()
        .stream_name(&stream)
        .records(entry("after"))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));

    let stored = read_stream(&client, &stream).await;
    let data: Vec<&String> = stored.keys().collect();
    assert_eq!(
        data,
        ["after", "hung"],
        "the timed-out write must be stored"
    );
    assert_eq!(proxy.hangs(), 1);
    assert_eq!(proxy.entries_forwarded(), 2);
    println!("SDK timed out after {waited:?}; the record was stored anyway");
}
