use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const OLD: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/orders";
const NEW: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
const LOCATION: &str = "memory://routing/m1.json";

type Fetched = Result<Option<RoutingDocument>, StoreError>;

/// Answers fetches from a script, repeating the last answer once the script runs out.
struct Scripted {
    script: Mutex<VecDeque<Fetched>>,
    last: Mutex<Option<Fetched>>,
    fetches: AtomicUsize,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Fetched>) -> Self {
        Scripted {
            script: Mutex::new(script.into_iter().collect()),
            last: Mutex::new(None),
            fetches: AtomicUsize::new(0),
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl RoutingSource for Scripted {
    async fn fetch(&self) -> Fetched {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let next = lock(&self.script).pop_front();
        let mut last = lock(&self.last);
        if let Some(next) = next {
            *last = Some(next);
        }
        last.clone().unwrap_or(Ok(None))
    }

    fn location(&self) -> String {
        LOCATION.to_owned()
    }
}

fn doc(version: u64, mode: StreamMode, active: &str) -> RoutingDocument {
    RoutingDocument {
        migration: "m1".to_owned(),
        version,
        updated_at_ms: 1_700_000_000_000,
        streams: BTreeMap::from([(
            "orders".to_owned(),
            StreamRouting {
                active: active.to_owned(),
                mode,
                version,
                changed_at_ms: 1_700_000_000_000,
                changed_by: "alice".to_owned(),
                reason: "test".to_owned(),
            },
        )]),
    }
}

fn active(version: u64, stream: &str) -> Fetched {
    Ok(Some(doc(version, StreamMode::Active, stream)))
}

fn hold(version: u64, stream: &str) -> Fetched {
    Ok(Some(doc(version, StreamMode::Hold, stream)))
}

fn unavailable() -> Fetched {
    Err(StoreError {
        code: "NetworkError".to_owned(),
        message: "connection refused".to_owned(),
    })
}

fn client(script: impl IntoIterator<Item = Fetched>) -> RoutingClient<Scripted> {
    RoutingClient::new(Scripted::new(script), RoutingOptions::default())
}

fn resolved(stream: &str, version: u64) -> Result<Resolved, RoutingError> {
    Ok(Resolved {
        stream: stream.to_owned(),
        version,
    })
}

#[tokio::test(start_paused = true)]
async fn resolves_within_the_ttl_from_one_fetch() {
    let client = client([active(1, OLD), active(2, NEW)]);
    for _ in 0..5 {
        assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(client.source().fetches(), 1);
}

#[tokio::test(start_paused = true)]
async fn fetches_again_once_the_ttl_has_passed() {
    let client = client([active(1, OLD), active(2, NEW)]);
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(client.resolve("orders").await, resolved(NEW, 2));
    assert_eq!(client.source().fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_older_document_is_ignored_and_the_newer_one_kept_for_a_ttl() {
    let client = client([active(5, NEW), active(4, OLD), active(6, NEW)]);
    assert_eq!(client.resolve("orders").await, resolved(NEW, 5));
    tokio::time::advance(Duration::from_millis(1001)).await;
    // Version 4 arrives: version 5 stays, and counts as fresh for another ttl.
    assert_eq!(client.resolve("orders").await, resolved(NEW, 5));
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(client.resolve("orders").await, resolved(NEW, 5));
    assert_eq!(client.source().fetches(), 2);
    tokio::time::advance(Duration::from_millis(501)).await;
    assert_eq!(client.resolve("orders").await, resolved(NEW, 6));
    assert_eq!(client.source().fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hold_blocks_until_active_then_resolves_to_the_new_stream() {
    let client = client([active(1, OLD), hold(2, OLD), hold(2, OLD), active(3, NEW)]);
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    tokio::time::advance(Duration::from_millis(1001)).await;

    let started = Instant::now();
    assert_eq!(client.resolve("orders").await, resolved(NEW, 3));
    // Hold seen, polled twice at 100 ms (ignoring the 1 s ttl), active on the second poll.
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert_eq!(client.source().fetches(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_hold_longer_than_max_wait_fails_without_the_old_stream() {
    let options = RoutingOptions {
        max_hold_wait: Duration::from_secs(1),
        ..RoutingOptions::default()
    };
    let client = RoutingClient::new(Scripted::new([active(1, OLD), hold(2, OLD)]), options);
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    tokio::time::advance(Duration::from_millis(1001)).await;

    let started = Instant::now();
    let err = client.resolve("orders").await.unwrap_err();
    assert_eq!(
        err,
        RoutingError::HeldTooLong {
            stream: "orders".to_owned(),
            waited: Duration::from_secs(1),
        }
    );
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // The first fetch, then one every 100 ms for a second.
    assert_eq!(client.source().fetches(), 1 + 1 + 10);
    let text = err.to_string();
    assert!(
        text.contains("\"orders\" is still on hold after 1s"),
        "{text}"
    );
    assert!(text.contains("Buffer its records"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_error_uses_the_cached_document_with_one_warning() {
    let logs = CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());

    let client = client([active(1, OLD), unavailable(), active(2, NEW)]);
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    // The failed fetch is not retried on every call: once more after the ttl.
    assert_eq!(client.resolve("orders").await, resolved(OLD, 1));
    assert_eq!(client.source().fetches(), 2);
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(client.resolve("orders").await, resolved(NEW, 2));

    let text = logs.text();
    assert_eq!(text.matches("WARN").count(), 1, "{text}");
    assert!(text.contains("Cannot read the routing document"), "{text}");
    assert!(text.contains(LOCATION), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_fetch_error_without_a_cached_document_is_returned() {
    let client = client([unavailable()]);
    let err = client.resolve("orders").await.unwrap_err();
    assert!(matches!(&err, RoutingError::Fetch(e) if e.code == "NetworkError"));
    let text = err.to_string();
    assert!(
        text.contains("NetworkError: connection refused") && text.contains("Retry"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_stream_names_the_known_ones_and_the_location() {
    let client = client([active(1, OLD)]);
    let err = client.resolve("payments").await.unwrap_err();
    assert_eq!(
        err,
        RoutingError::UnknownStream {
            stream: "payments".to_owned(),
            known: vec!["orders".to_owned()],
            location: LOCATION.to_owned(),
        }
    );
    let text = err.to_string();
    assert!(text.contains("\"payments\""), "{text}");
    assert!(text.contains("(it routes: orders)"), "{text}");
    assert!(text.contains(LOCATION), "{text}");
}

#[tokio::test(start_paused = true)]
async fn no_document_names_the_location() {
    let client = client([Ok(None)]);
    let err = client.resolve("orders").await.unwrap_err();
    assert_eq!(
        err,
        RoutingError::NoDocument {
            location: LOCATION.to_owned()
        }
    );
    assert!(err.to_string().contains(LOCATION));
}

#[test]
fn the_json_form_round_trips_with_format_and_readable_time() {
    let original = doc(3, StreamMode::Hold, OLD);
    let json = original.to_json_pretty();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value["format"], 1);
    assert_eq!(value["migration"], "m1");
    assert_eq!(value["version"], 3);
    assert_eq!(value["updated_at_ms"], 1_700_000_000_000_i64);
    assert_eq!(value["updated_at"], "2023-11-14T22:13:20.000Z");
    let stream = &value["streams"]["orders"];
    assert_eq!(stream["mode"], "hold");
    assert_eq!(stream["active"], OLD);
    assert_eq!(stream["version"], 3);
    assert_eq!(stream["changed_at_ms"], 1_700_000_000_000_i64);
    assert_eq!(stream["changed_by"], "alice");
    assert_eq!(stream["reason"], "test");
    assert_eq!(
        RoutingDocument::from_json(&json, LOCATION).unwrap(),
        original
    );
}

#[test]
fn updated_at_is_ignored_on_read() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&doc(1, StreamMode::Active, OLD).to_json_pretty()).unwrap();
    value["updated_at"] = "not a time".into();
    let bytes = serde_json::to_vec(&value).unwrap();
    let read = RoutingDocument::from_json(&bytes, LOCATION).unwrap();
    assert_eq!(read.updated_at_ms, 1_700_000_000_000);
}

fn problem(bytes: &[u8]) -> String {
    let err = RoutingDocument::from_json(bytes, LOCATION).unwrap_err();
    assert!(matches!(&err, RoutingError::BadDocument { location, .. } if location == LOCATION));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("The routing document at {LOCATION} is unusable: ")),
        "{text}"
    );
    text
}

#[test]
fn bad_json_names_the_location_and_the_problem() {
    let text = problem(b"{\"format\": 1, \"migration\": ");
    assert!(text.contains("not a JSON object"), "{text}");
    assert!(text.contains("line 1"), "{text}");
}

#[test]
fn another_format_is_refused_with_what_to_do() {
    let text = problem(br#"{"format": 2, "routes": {}}"#);
    assert!(text.contains("\"format\" is 2"), "{text}");
    assert!(text.contains("upgrade the producer's fanout"), "{text}");
}

#[test]
fn a_missing_format_is_refused() {
    let text = problem(br#"{"migration": "m1", "version": 1}"#);
    assert!(text.contains("no \"format\" field"), "{text}");
}

#[test]
fn missing_fields_and_bad_modes_are_named() {
    let text = problem(br#"{"format": 1, "migration": "m1", "version": 1, "streams": {}}"#);
    assert!(text.contains("missing field `updated_at_ms`"), "{text}");

    let mut value: serde_json::Value =
        serde_json::from_slice(&doc(1, StreamMode::Active, OLD).to_json_pretty()).unwrap();
    value["streams"]["orders"]["mode"] = "paused".into();
    let text = problem(&serde_json::to_vec(&value).unwrap());
    assert!(text.contains("unknown variant `paused`"), "{text}");
}

#[test]
fn an_active_stream_without_a_target_is_refused() {
    let json = doc(1, StreamMode::Active, " ").to_json_pretty();
    let text = problem(&json);
    assert!(text.contains("stream \"orders\" is active but"), "{text}");
}

/// Log lines written while its subscriber is the default, as text.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || logs.clone())
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.0)).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
