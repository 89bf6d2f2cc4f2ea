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

mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use server::serve;

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
