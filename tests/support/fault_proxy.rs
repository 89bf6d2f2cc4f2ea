//! An HTTP/1.1 fault-injection proxy for Kinesis, placed between the AWS SDK and an emulator.
//!
//! No Kinesis emulator ever throttles, returns a partial PutRecords failure, or times out after
//! writing, so the order-safe retry path could never be exercised against one directly. This proxy
//! forwards every request to the emulator unchanged except `PutRecords`, which it treats according
//! to a [`FaultPlan`] that a test can change at any time.
//!
//! Partial failures are produced the way Kinesis produces them: the failed entries are really not
//! written (only the others are sent upstream) and the response is an HTTP 200 whose `Records`
//! array follows the original entry order, so a retry of exactly the failed entries is the only
//! way to get every record into the stream.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const PUT_RECORDS_TARGET: &str = "Kinesis_20131202.PutRecords";
const GET_RECORDS_TARGET: &str = "Kinesis_20131202.GetRecords";
const DESCRIBE_SUMMARY_TARGET: &str = "Kinesis_20131202.DescribeStreamSummary";
const AMZ_JSON: &str = "application/x-amz-json-1.1";
const THROTTLED: &str = "ProvisionedThroughputExceededException";
const INTERNAL_FAILURE: &str = "InternalFailure";
/// Used in error messages when neither the ARN nor the credentials name an account.
const DEFAULT_ACCOUNT: &str = "123456789012";

/// What a DescribeStreamSummary request meets (see [`FaultProxy::fault_next_summaries`]).
#[derive(Clone, Debug, PartialEq)]
pub enum SummaryFault {
    /// This whole-request error instead of the answer (e.g. 400 `LimitExceededException`).
    Error { status: u16, error_type: String },
    /// The answer, held back this long (a slow or stalled endpoint).
    Slow(Duration),
}

/// What the proxy does with each `PutRecords` request. Other operations pass through, except
/// the GetRecords and DescribeStreamSummary faults queued on the proxy.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultPlan {
    /// Forward unchanged.
    Pass,
    /// Fail each entry with probability `fraction` (at least one entry when a request has two
    /// or more and `fraction > 0`), write only the others, and answer HTTP 200 with per-entry
    /// `ErrorCode`s drawn from `error_codes` (empty means `ProvisionedThroughputExceededException`).
    /// The choice is a deterministic function of `seed` and the sequence of requests since the
    /// plan was set.
    PartialFailures {
        fraction: f64,
        seed: u64,
        error_codes: Vec<String>,
    },
    /// For the next `requests` PutRecords: forward (so the records are stored), then hold the
    /// response back for `hang`, so a client with a shorter timeout sees a timeout after a write
    /// that happened. Afterwards behave as [`FaultPlan::Pass`].
    AcceptThenHang { requests: usize, hang: Duration },
    /// For the next `requests` PutRecords: forward (so the records are stored), then answer
    /// with this whole-request error instead of the emulator's answer (e.g. 500
    /// `InternalFailure`, 503 `ServiceUnavailable`): a write that happened, reported as failed.
    /// Afterwards behave as [`FaultPlan::Pass`].
    AcceptThenError {
        requests: usize,
        status: u16,
        error_type: String,
    },
    /// Refuse, whole, every PutRecords holding an entry whose partition key or data contains
    /// `needle` (400 `InvalidArgumentException` naming that entry, as Kinesis does for a
    /// partition key or record over its limits); nothing of such a request is written. Others
    /// pass.
    RefuseHolding { needle: String },
    /// Enforce Kinesis's per-shard write limits: each target shard (found by hashing the
    /// partition key, or the explicit hash key, against the stream's hash ranges, read once
    /// with ListShards from the upstream) takes `records_per_sec` entries and `bytes_per_sec`
    /// bytes (data + partition key) a second, with one second of burst. Entries over it are
    /// failed with `ProvisionedThroughputExceededException` and really not written.
    ShardLimits {
        records_per_sec: f64,
        bytes_per_sec: f64,
    },
    /// Answer every PutRecords with this whole-request error without forwarding, e.g.
    /// 400 `AccessDeniedException`, `ExpiredTokenException`, `KMSAccessDeniedException`.
    RequestError {
        status: u16,
        error_type: String,
        message: String,
    },
}

impl FaultPlan {
    /// Throttling only: `PartialFailures` with `ProvisionedThroughputExceededException`.
    pub fn throttling(fraction: f64, seed: u64) -> Self {
        FaultPlan::PartialFailures {
            fraction,
            seed,
            error_codes: vec![THROTTLED.to_string()],
        }
    }

    /// Both per-record error codes Kinesis can return, mixed.
    pub fn mixed_failures(fraction: f64, seed: u64) -> Self {
        FaultPlan::PartialFailures {
            fraction,
            seed,
            error_codes: vec![THROTTLED.to_string(), INTERNAL_FAILURE.to_string()],
        }
    }

    /// A whole-request error with HTTP status 400.
    pub fn request_error(error_type: &str, message: &str) -> Self {
        FaultPlan::RequestError {
            status: 400,
            error_type: error_type.to_string(),
            message: message.to_string(),
        }
    }
}

/// A snapshot of the proxy's counters (cumulative since start, not reset by `set_plan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// PutRecords requests received, whatever the plan did with them.
    pub put_records_requests: u64,
    /// Entries the proxy answered with an injected `ErrorCode` (never sent upstream).
    pub entries_failed_injected: u64,
    /// PutRecords entries sent upstream.
    pub entries_forwarded: u64,
    /// PutRecords responses held back by `AcceptThenHang` or replaced by `AcceptThenError`.
    pub hangs: u64,
}

/// One target shard's budget under `ShardLimits`: a token bucket per limit, one second deep.
struct ShardBudget {
    records: f64,
    bytes: f64,
    at: std::time::Instant,
}

/// A running proxy. Dropping it stops the listener and every open connection.
pub struct FaultProxy {
    endpoint: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1 on a free port and serves in a spawned task; the plan starts as `Pass`.
    /// `upstream` is a base URL such as `http://127.0.0.1:4567` (plain HTTP only).
    ///
    /// Panics outside a Tokio runtime, on a malformed upstream URL or if binding fails: this is
    /// test support, where failing loudly is the useful behaviour.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: Uri = upstream
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("fault proxy: bad upstream URL {upstream:?}: {e}"));
        assert!(
            upstream.scheme_str() == Some("http") && upstream.authority().is_some(),
            "fault proxy: upstream must be http://host:port, got {upstream}"
        );

        // Bind synchronously so the port is listening before `start` returns.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("fault proxy: bind 127.0.0.1:0: {e}"));
        std_listener
            .set_nonblocking(true)
            .expect("fault proxy: set_nonblocking");
        let port = std_listener.local_addr().expect("local_addr").port();
        let listener = TcpListener::from_std(std_listener)
            .expect("fault proxy: FaultProxy::start must run inside a Tokio runtime");

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Drop idle upstream connections well before a server's keep-alive timeout would,
            // so a reused connection is never one the emulator is closing (that request would
            // fail rather than be retried).
            .pool_idle_timeout(Duration::from_secs(2))
            .pool_timer(TokioTimer::new())
            .build(connector);

        let shared = Arc::new(Shared {
            upstream_base: upstream.to_string().trim_end_matches('/').to_string(),
            upstream_authority: upstream.authority().expect("checked above").to_string(),
            client,
            plan: Mutex::new(PlanState::new(FaultPlan::Pass)),
            put_records_requests: AtomicU64::new(0),
            entries_failed_injected: AtomicU64::new(0),
            entries_forwarded: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            request_ids: AtomicU64::new(0),
            read_faults: Mutex::new(Default::default()),
            summary_faults: Mutex::new(Default::default()),
            summary_requests: AtomicU64::new(0),
            get_records_requests: AtomicU64::new(0),
            shard_maps: Default::default(),
            budgets: Default::default(),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Replaces the plan; applies to PutRecords requests that arrive from now on. Resets the
    /// seeded RNG and the `AcceptThenHang` budget.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.shared.plan.lock().expect("plan lock") = PlanState::new(plan);
    }

    /// The plan as last set (an exhausted `AcceptThenHang` still reads as set).
    pub fn plan(&self) -> FaultPlan {
        self.shared.plan.lock().expect("plan lock").plan.clone()
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            put_records_requests: self.put_records_requests(),
            entries_failed_injected: self.entries_failed_injected(),
            entries_forwarded: self.entries_forwarded(),
            hangs: self.hangs(),
        }
    }

    pub fn put_records_requests(&self) -> u64 {
        self.shared.put_records_requests.load(Ordering::SeqCst)
    }

    pub fn entries_failed_injected(&self) -> u64 {
        self.shared.entries_failed_injected.load(Ordering::SeqCst)
    }

    pub fn entries_forwarded(&self) -> u64 {
        self.shared.entries_forwarded.load(Ordering::SeqCst)
    }

    pub fn hangs(&self) -> u64 {
        self.shared.hangs.load(Ordering::SeqCst)
    }

    /// PutRecords requests refused whole by [`FaultPlan::RefuseHolding`].
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Answers the next `n` GetRecords requests (any shard) with `status` and `error_type`
    /// (e.g. 400 `ExpiredIteratorException`, 400 `ProvisionedThroughputExceededException`,
    /// 400 `AccessDeniedException`) instead of forwarding them.
    pub fn fail_next_reads(&self, n: usize, status: u16, error_type: &str) {
        let mut q = self.shared.read_faults.lock().expect("read faults lock");
        q.extend(std::iter::repeat_n((status, error_type.to_owned()), n));
    }

    /// What the next `n` DescribeStreamSummary requests meet instead of a prompt answer.
    pub fn fault_next_summaries(&self, n: usize, fault: SummaryFault) {
        let mut q = self
            .shared
            .summary_faults
            .lock()
            .expect("summary faults lock");
        q.extend(std::iter::repeat_n(fault, n));
    }

    /// DescribeStreamSummary requests seen (faulted or not).
    pub fn summary_requests(&self) -> u64 {
        self.shared.summary_requests.load(Ordering::SeqCst)
    }

    /// Read faults not yet used.
    pub fn read_faults_left(&self) -> usize {
        self.shared
            .read_faults
            .lock()
            .expect("read faults lock")
            .len()
    }

    /// GetRecords requests received (failed or forwarded).
    pub fn get_records_requests(&self) -> u64 {
        self.shared.get_records_requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by the server task, so this ends them too
        // (including any response still hanging).
        self.server.abort();
    }
}

struct Shared {
    upstream_base: String,
    upstream_authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
    plan: Mutex<PlanState>,
    put_records_requests: AtomicU64,
    entries_failed_injected: AtomicU64,
    entries_forwarded: AtomicU64,
    hangs: AtomicU64,
    /// PutRecords refused whole by `RefuseHolding`.
    refused: AtomicU64,
    request_ids: AtomicU64,
    /// Errors to answer the next GetRecords requests with, first first: (status, error type).
    read_faults: Mutex<std::collections::VecDeque<(u16, String)>>,
    summary_faults: Mutex<std::collections::VecDeque<SummaryFault>>,
    summary_requests: AtomicU64,
    get_records_requests: AtomicU64,
    /// Per stream name: the open shards' hash ranges (start, end), for `ShardLimits`.
    shard_maps: tokio::sync::Mutex<std::collections::HashMap<String, Vec<(u128, u128)>>>,
    /// Per (stream, shard index): what `ShardLimits` has left.
    budgets: Mutex<std::collections::HashMap<(String, usize), ShardBudget>>,
}

struct PlanState {
    plan: FaultPlan,
    rng: StdRng,
    hangs_left: usize,
}

impl PlanState {
    fn new(plan: FaultPlan) -> Self {
        let (seed, hangs_left) = match &plan {
            FaultPlan::PartialFailures { seed, .. } => (*seed, 0),
            FaultPlan::AcceptThenHang { requests, .. }
            | FaultPlan::AcceptThenError { requests, .. } => (0, *requests),
            _ => (0, 0),
        };
        PlanState {
            plan,
            rng: StdRng::seed_from_u64(seed),
            hangs_left,
        }
    }
}

/// What to do with one PutRecords request, decided under the plan lock.
enum Action {
    Forward,
    /// One entry per request entry: `Some(code)` fails it.
    Fail(Vec<Option<String>>),
    Hang(Duration),
    /// Forward, then answer with this error.
    ForwardThenReject {
        status: u16,
        error_type: String,
    },
    Reject {
        status: u16,
        error_type: String,
        message: String,
    },
}

impl PlanState {
    fn decide(&mut self, entries: Option<usize>) -> Action {
        match &self.plan {
            FaultPlan::Pass => Action::Forward,
            FaultPlan::PartialFailures {
                fraction,
                error_codes,
                ..
            } => {
                // A body we cannot parse, or an empty one, goes upstream untouched, to get the
                // emulator's own answer.
                let Some(n) = entries.filter(|&n| n > 0) else {
                    return Action::Forward;
                };
                let fraction = fraction.clamp(0.0, 1.0);
                let mut fail: Vec<bool> = (0..n).map(|_| self.rng.random_bool(fraction)).collect();
                if n >= 2 && fraction > 0.0 && !fail.contains(&true) {
                    let i = self.rng.random_range(0..n);
                    fail[i] = true;
                }
                let codes = fail
                    .into_iter()
                    .map(|f| {
                        f.then(|| match error_codes.len() {
                            0 => THROTTLED.to_string(),
                            len => error_codes[self.rng.random_range(0..len)].clone(),
                        })
                    })
                    .collect();
                Action::Fail(codes)
            }
            FaultPlan::AcceptThenHang { hang, .. } => {
                if self.hangs_left == 0 {
                    Action::Forward
                } else {
                    self.hangs_left -= 1;
                    Action::Hang(*hang)
                }
            }
            FaultPlan::AcceptThenError {
                status, error_type, ..
            } => {
                if self.hangs_left == 0 {
                    Action::Forward
                } else {
                    self.hangs_left -= 1;
                    Action::ForwardThenReject {
                        status: *status,
                        error_type: error_type.clone(),
                    }
                }
            }
            // Needs the shard map, which is read outside the plan lock.
            FaultPlan::ShardLimits { .. } => Action::Forward,
            // Needs the entries, decided in `put_records`.
            FaultPlan::RefuseHolding { .. } => Action::Forward,
            FaultPlan::RequestError {
                status,
                error_type,
                message,
            } => Action::Reject {
                status: *status,
                error_type: error_type.clone(),
                message: message.clone(),
            },
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // An error here is a client going away, e.g. an SDK that timed out
                        // during a hang: expected, nothing to report.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Typically EMFILE under load: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// A whole-request error answered instead of forwarding (a queued read or summary fault).
fn injected_error(shared: &Shared, status: u16, error_type: &str) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({ "__type": error_type, "message": "injected by the fault proxy" });
    let mut response = json_response(status, &body, HeaderMap::new());
    if let Ok(v) = HeaderValue::from_str(error_type) {
        response.headers_mut().insert("x-amzn-errortype", v);
    }
    shared.add_request_id(response.headers_mut());
    response
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(proxy_error(
                StatusCode::BAD_REQUEST,
                &format!("reading request body: {e}"),
            ))
        }
    };
    let is_put_records = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|v| v.as_bytes() == PUT_RECORDS_TARGET.as_bytes());
    let is_get_records = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|v| v.as_bytes() == GET_RECORDS_TARGET.as_bytes());
    if is_get_records {
        shared.get_records_requests.fetch_add(1, Ordering::SeqCst);
        let fault = shared
            .read_faults
            .lock()
            .expect("read faults lock")
            .pop_front();
        if let Some((status, error_type)) = fault {
            return Ok(injected_error(&shared, status, &error_type));
        }
    }
    let is_summary = parts
        .headers
        .get("x-amz-target")
        .is_some_and(|v| v.as_bytes() == DESCRIBE_SUMMARY_TARGET.as_bytes());
    if is_summary {
        shared.summary_requests.fetch_add(1, Ordering::SeqCst);
        let fault = shared
            .summary_faults
            .lock()
            .expect("summary faults lock")
            .pop_front();
        match fault {
            Some(SummaryFault::Error { status, error_type }) => {
                return Ok(injected_error(&shared, status, &error_type));
            }
            Some(SummaryFault::Slow(wait)) => tokio::time::sleep(wait).await,
            None => {}
        }
    }
    let response = if is_put_records {
        put_records(&shared, &parts, body).await
    } else {
        forward(&shared, &parts, body).await
    };
    Ok(response.unwrap_or_else(|e| proxy_error(StatusCode::BAD_GATEWAY, &e)))
}

async fn put_records(
    shared: &Shared,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, String> {
    shared.put_records_requests.fetch_add(1, Ordering::SeqCst);
    let request: Option<Map<String, Value>> = serde_json::from_slice(&body).ok();
    let entries = request
        .as_ref()
        .and_then(|r| r.get("Records"))
        .and_then(Value::as_array)
        .map(Vec::len);

    let plan = shared.plan.lock().expect("plan lock").plan.clone();
    if let (
        FaultPlan::ShardLimits {
            records_per_sec,
            bytes_per_sec,
        },
        Some(request),
    ) = (&plan, request.as_ref())
    {
        let codes = over_limit(shared, parts, request, *records_per_sec, *bytes_per_sec).await?;
        if codes.iter().all(Option::is_none) {
            shared.count_forwarded(codes.len());
            return forward(shared, parts, body).await;
        }
        return partial_failure(shared, parts, request.clone(), codes).await;
    }
    if let (FaultPlan::RefuseHolding { needle }, Some(request)) = (&plan, request.as_ref()) {
        use base64::Engine;
        let holds = |e: &Value| {
            let key = e.get("PartitionKey").and_then(Value::as_str).unwrap_or("");
            let data = e
                .get("Data")
                .and_then(Value::as_str)
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                .unwrap_or_default();
            key.contains(needle.as_str())
                || data
                    .windows(needle.len().max(1))
                    .any(|w| w == needle.as_bytes())
        };
        let at = request
            .get("Records")
            .and_then(Value::as_array)
            .and_then(|r| r.iter().position(holds));
        if let Some(at) = at {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let message = format!(
                "1 validation error detected: Value at 'records.{}.member.partitionKey' failed to satisfy constraint: injected by the fault proxy",
                at + 1
            );
            return reject(shared, 400, "InvalidArgumentException", &message);
        }
    }
    let action = shared.plan.lock().expect("plan lock").decide(entries);
    match action {
        Action::Forward => {
            shared.count_forwarded(entries.unwrap_or(0));
            forward(shared, parts, body).await
        }
        Action::Hang(hang) => {
            shared.count_forwarded(entries.unwrap_or(0));
            let response = forward(shared, parts, body).await?;
            shared.hangs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(hang).await;
            Ok(response)
        }
        Action::ForwardThenReject { status, error_type } => {
            shared.count_forwarded(entries.unwrap_or(0));
            forward(shared, parts, body).await?;
            shared.hangs.fetch_add(1, Ordering::SeqCst);
            reject(
                shared,
                status,
                &error_type,
                "injected after the write by the fault proxy",
            )
        }
        Action::Reject {
            status,
            error_type,
            message,
        } => reject(shared, status, &error_type, &message),
        Action::Fail(codes) => {
            let request = request.expect("Fail is only decided for a parsed request");
            partial_failure(shared, parts, request, codes).await
        }
    }
}

/// A whole-request error answer, as Kinesis sends one.
fn reject(
    shared: &Shared,
    status: u16,
    error_type: &str,
    message: &str,
) -> Result<Response<Full<Bytes>>, String> {
    let status = StatusCode::from_u16(status)
        .map_err(|e| format!("fault plan has a bad status {status}: {e}"))?;
    let body = json!({ "__type": error_type, "message": message });
    let mut response = json_response(status, &body, HeaderMap::new());
    if let Ok(v) = HeaderValue::from_str(error_type) {
        response.headers_mut().insert("x-amzn-errortype", v);
    }
    shared.add_request_id(response.headers_mut());
    Ok(response)
}

async fn partial_failure(
    shared: &Shared,
    parts: &Parts,
    mut request: Map<String, Value>,
    codes: Vec<Option<String>>,
) -> Result<Response<Full<Bytes>>, String> {
    let Some(Value::Array(entries)) = request.remove("Records") else {
        unreachable!("entries were counted from this array");
    };
    let kept: Vec<Value> = entries
        .into_iter()
        .zip(&codes)
        .filter(|(_, code)| code.is_none())
        .map(|(entry, _)| entry)
        .collect();
    let injected = codes.len() - kept.len();
    shared
        .entries_failed_injected
        .fetch_add(injected as u64, Ordering::SeqCst);

    let stream = stream_name(&request);
    let account = account_id(&request, &parts.headers);

    // Real Kinesis rejects an empty PutRecords, so when every entry fails nothing goes upstream.
    let (mut written, encryption, headers) = if kept.is_empty() {
        (Vec::new().into_iter(), None, HeaderMap::new())
    } else {
        let kept_count = kept.len();
        shared.count_forwarded(kept_count);
        request.insert("Records".to_string(), Value::Array(kept));
        let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let response = forward(shared, parts, Bytes::from(body)).await?;
        if response.status() != StatusCode::OK {
            // A whole-request error from upstream (e.g. ResourceNotFoundException) is what the
            // client should see: the injected failures would never have been reported.
            return Ok(response);
        }
        let (head, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let mut answer: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| format!("upstream PutRecords response is not a JSON object: {e}"))?;
        let records = match answer.remove("Records") {
            Some(Value::Array(records)) if records.len() == kept_count => records,
            other => {
                return Err(format!(
                    "upstream PutRecords answered {other:?} for {kept_count} entries"
                ))
            }
        };
        (
            records.into_iter(),
            answer.remove("EncryptionType"),
            head.headers,
        )
    };

    let records: Vec<Value> = codes
        .iter()
        .map(|code| match code {
            Some(code) => json!({
                "ErrorCode": code,
                "ErrorMessage": error_message(code, &stream, &account),
            }),
            None => written.next().expect("one upstream record per kept entry"),
        })
        .collect();
    // Counted from the merged array so upstream's own per-entry failures are included too.
    let failed = records
        .iter()
        .filter(|r| r.get("ErrorCode").is_some_and(|c| !c.is_null()))
        .count();
    let mut answer = Map::new();
    answer.insert("FailedRecordCount".to_string(), json!(failed));
    answer.insert("Records".to_string(), Value::Array(records));
    if let Some(encryption) = encryption {
        answer.insert("EncryptionType".to_string(), encryption);
    }
    let mut response = json_response(StatusCode::OK, &Value::Object(answer), headers);
    if !response.headers().contains_key("x-amzn-requestid") {
        shared.add_request_id(response.headers_mut());
    }
    Ok(response)
}

/// Under `ShardLimits`: which entries of `request` go over their shard's budget (those get
/// `ProvisionedThroughputExceededException`); the others are charged to it.
async fn over_limit(
    shared: &Shared,
    parts: &Parts,
    request: &Map<String, Value>,
    records_per_sec: f64,
    bytes_per_sec: f64,
) -> Result<Vec<Option<String>>, String> {
    use base64::Engine;
    use md5::Digest;
    let stream = stream_name(request);
    let ranges = shard_map(shared, parts, request, &stream).await?;
    let entries = request
        .get("Records")
        .and_then(Value::as_array)
        .ok_or("PutRecords without Records")?;
    let now = std::time::Instant::now();
    let mut budgets = shared.budgets.lock().expect("budgets lock");
    let mut codes = Vec::with_capacity(entries.len());
    for entry in entries {
        let key = entry
            .get("PartitionKey")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let hash = match entry.get("ExplicitHashKey").and_then(Value::as_str) {
            Some(h) => h.parse::<u128>().map_err(|e| e.to_string())?,
            None => u128::from_be_bytes(md5::Md5::digest(key.as_bytes()).into()),
        };
        let shard = ranges
            .iter()
            .position(|(start, end)| *start <= hash && hash <= *end)
            .ok_or_else(|| format!("no open shard of {stream} owns hash {hash}"))?;
        let data = entry
            .get("Data")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())?
            .len()
            + key.len();
        let b = budgets
            .entry((stream.clone(), shard))
            .or_insert(ShardBudget {
                records: records_per_sec,
                bytes: bytes_per_sec,
                at: now,
            });
        let dt = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.records = (b.records + dt * records_per_sec).min(records_per_sec);
        b.bytes = (b.bytes + dt * bytes_per_sec).min(bytes_per_sec);
        if b.records >= 1.0 && b.bytes >= bytes as f64 {
            b.records -= 1.0;
            b.bytes -= bytes as f64;
            codes.push(None);
        } else {
            codes.push(Some(THROTTLED.to_string()));
        }
    }
    Ok(codes)
}

/// The open shards' hash ranges of `stream`, read once from the upstream with ListShards
/// (the emulator does not check signatures, so the PutRecords request's headers serve).
async fn shard_map(
    shared: &Shared,
    parts: &Parts,
    request: &Map<String, Value>,
    stream: &str,
) -> Result<Vec<(u128, u128)>, String> {
    let mut maps = shared.shard_maps.lock().await;
    if let Some(ranges) = maps.get(stream) {
        return Ok(ranges.clone());
    }
    let mut list = Map::new();
    match request.get("StreamARN") {
        Some(arn) => list.insert("StreamARN".to_string(), arn.clone()),
        None => list.insert("StreamName".to_string(), json!(stream)),
    };
    let mut list_parts = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(())
        .map_err(|e| e.to_string())?
        .into_parts()
        .0;
    list_parts.headers = parts.headers.clone();
    list_parts.headers.insert(
        "x-amz-target",
        HeaderValue::from_static("Kinesis_20131202.ListShards"),
    );
    let body = serde_json::to_vec(&Value::Object(list)).map_err(|e| e.to_string())?;
    let response = forward(shared, &list_parts, Bytes::from(body)).await?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut ranges: Vec<(u128, u128)> = answer["Shards"]
        .as_array()
        .ok_or_else(|| format!("ListShards on {stream} answered {answer}"))?
        .iter()
        .filter(|s| s["SequenceNumberRange"]["EndingSequenceNumber"].is_null())
        .filter_map(|s| {
            let r = &s["HashKeyRange"];
            Some((
                r["StartingHashKey"].as_str()?.parse().ok()?,
                r["EndingHashKey"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    ranges.sort_unstable();
    maps.insert(stream.to_string(), ranges.clone());
    Ok(ranges)
}

/// Sends the request upstream and returns the whole response, with hop-by-hop headers removed
/// and Content-Length matching the body.
async fn forward(
    shared: &Shared,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, String> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{}", shared.upstream_base, path)
        .parse()
        .map_err(|e| format!("building upstream URI: {e}"))?;
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    copy_end_to_end(&parts.headers, headers);
    // kinesis-local does not verify signatures, so rewriting Host (and the body, for partial
    // failures) is harmless; the upstream sees the address it actually listens on.
    headers.insert(
        HOST,
        HeaderValue::from_str(&shared.upstream_authority).map_err(|e| e.to_string())?,
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));

    let response = shared
        .client
        .request(request)
        .await
        .map_err(|e| format!("upstream request failed: {e:?}"))?;
    let (head, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading upstream response: {e}"))?
        .to_bytes();
    let mut response = Response::new(Full::new(body.clone()));
    *response.status_mut() = head.status;
    copy_end_to_end(&head.headers, response.headers_mut());
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(response)
}

/// Copies all headers except hop-by-hop ones and those the proxy sets itself.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    const SKIP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    ];
    for (name, value) in from {
        if !SKIP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn json_response(status: StatusCode, body: &Value, headers: HeaderMap) -> Response<Full<Bytes>> {
    let body = Bytes::from(serde_json::to_vec(body).expect("JSON values always serialize"));
    let mut response = Response::new(Full::new(body.clone()));
    *response.status_mut() = status;
    let out = response.headers_mut();
    copy_end_to_end(&headers, out);
    out.insert(CONTENT_TYPE, HeaderValue::from_static(AMZ_JSON));
    out.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// A failure of the proxy itself, shaped like an AWS error so the SDK can parse it.
fn proxy_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "__type": "FaultProxyError", "message": format!("fault proxy: {message}") });
    json_response(status, &body, HeaderMap::new())
}

impl Shared {
    fn count_forwarded(&self, entries: usize) {
        self.entries_forwarded
            .fetch_add(entries as u64, Ordering::SeqCst);
    }

    fn add_request_id(&self, headers: &mut HeaderMap) {
        let n = self.request_ids.fetch_add(1, Ordering::SeqCst);
        let id = format!("fa017000-0000-4000-8000-{n:012x}");
        headers.insert(
            HeaderName::from_static("x-amzn-requestid"),
            HeaderValue::from_str(&id).expect("hex is a valid header value"),
        );
    }
}

/// The messages Kinesis uses for its two per-record error codes.
fn error_message(code: &str, stream: &str, account: &str) -> String {
    match code {
        // The shard is not known without hashing the partition key against the shard map;
        // nothing parses this text, so a fixed shard keeps it realistic enough.
        THROTTLED => format!(
            "Rate exceeded for shard shardId-000000000000 in stream {stream} under account {account}."
        ),
        INTERNAL_FAILURE => "Internal service failure.".to_string(),
        other => format!("Injected {other} by the fault proxy."),
    }
}

fn stream_name(request: &Map<String, Value>) -> String {
    if let Some(name) = request.get("StreamName").and_then(Value::as_str) {
        return name.to_string();
    }
    request
        .get("StreamARN")
        .and_then(Value::as_str)
        .and_then(|arn| arn.split_once(":stream/"))
        .map_or_else(|| "unknown".to_string(), |(_, name)| name.to_string())
}

/// The account from the StreamARN, else from the access key (kinesis-local uses a 12-digit
/// access key id as the account).
fn account_id(request: &Map<String, Value>, headers: &HeaderMap) -> String {
    let from_arn = request
        .get("StreamARN")
        .and_then(Value::as_str)
        .and_then(|arn| arn.split(':').nth(4))
        .filter(|a| !a.is_empty());
    let from_key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split_once("Credential="))
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|key| key.len() == 12 && key.bytes().all(|b| b.is_ascii_digit()));
    from_arn.or(from_key).unwrap_or(DEFAULT_ACCOUNT).to_string()
}
