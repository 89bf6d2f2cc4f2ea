//! `bench shim`: the "real conditions" proxy in front of kinesalite (its own process, so its CPU
//! and memory never count against the handler).
//!
//! - Rewrites `"StreamARN":"arn:…:stream/NAME"` into `"StreamName":"NAME"` in every request
//!   body: kinesalite rejects StreamARN parameters and the replicator always sends them.
//! - `--delay-ms N`: holds every PutRecords answer N ms (AWS answers in 10–30 ms, kinesalite in
//!   about 1 ms). Other operations are not delayed.
//! - `--shard-records-per-sec R --shard-bytes-per-sec B`: Kinesis's per-shard write limits,
//!   per target shard: a token bucket per shard (capacity one second of the rate, starting full,
//!   refilled continuously; bytes = decoded data + partition key). An entry whose shard is over
//!   its limit is failed with `ProvisionedThroughputExceededException` and is really not
//!   written: only accepted entries are forwarded upstream.
//! - `--fail-fraction F --seed S`: fails each PutRecords entry with probability F (seeded), the
//!   same way, also really not written.
//! - Counts what it did: `GET /stats` (or `GET /stats?stream=NAME`) answers JSON, and
//!   `--stats FILE` writes the same JSON when the shim is stopped (SIGTERM or SIGINT).
//!
//! The shard of an entry: the MD5 of the partition key's UTF-8 bytes as a big-endian 128-bit
//! integer, or the entry's `ExplicitHashKey`, against the open shards' hash ranges, learned from
//! the upstream with ListShards (DescribeStream if that fails) and cached per stream.

#[path = "shim_model.rs"]
mod model;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;

use model::{
    entry_hash, forward_body, merge_answer, rewrite_stream_arn, Entry, PutRecordsBody,
    ShardLimiter, Verdict,
};
pub use model::{key_hash, ShardMap};

const AMZ_JSON: &str = "application/x-amz-json-1.1";

#[derive(Args, Clone, Debug)]
pub struct ShimArgs {
    /// Address to listen on, e.g. 127.0.0.1:4869.
    #[arg(long)]
    pub listen: String,
    /// kinesalite's base URL, e.g. http://127.0.0.1:4868.
    #[arg(long)]
    pub upstream: String,
    /// Hold every PutRecords answer this many ms before returning it (other operations: none).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Per target shard, records per second accepted (0: no limit). Kinesis: 1000.
    #[arg(long, default_value_t = 0.0)]
    pub shard_records_per_sec: f64,
    /// Per target shard, bytes (data + partition key) per second accepted (0: no limit).
    /// Kinesis: 1048576.
    #[arg(long, default_value_t = 0.0)]
    pub shard_bytes_per_sec: f64,
    /// Fail each PutRecords entry with this probability (ProvisionedThroughputExceededException,
    /// not written).
    #[arg(long, default_value_t = 0.0)]
    pub fail_fraction: f64,
    /// Seed of --fail-fraction's random draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the counters (the JSON of GET /stats) to this file when stopped.
    #[arg(long)]
    pub stats: Option<PathBuf>,
}

impl ShimArgs {
    fn limits(&self) -> bool {
        self.shard_records_per_sec > 0.0 || self.shard_bytes_per_sec > 0.0
    }

    /// Whether PutRecords bodies must be read entry by entry.
    fn inspects_entries(&self) -> bool {
        self.limits() || self.fail_fraction > 0.0
    }

    fn describe(&self) -> Value {
        json!({
            "delay_ms": self.delay_ms,
            "shard_records_per_sec": self.shard_records_per_sec,
            "shard_bytes_per_sec": self.shard_bytes_per_sec,
            "fail_fraction": self.fail_fraction,
            "seed": self.seed,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Counters.

#[derive(Clone, Debug, Default, Serialize)]
struct Counters {
    /// Requests the shim answered: every operation in the total, the PutRecords per stream.
    requests: u64,
    put_records_requests: u64,
    /// PutRecords entries received.
    entries: u64,
    /// Entries forwarded upstream (accepted by the shim).
    forwarded: u64,
    /// Entries failed because their shard was over its limit.
    throttled: u64,
    /// Entries failed by --fail-fraction.
    failed_by_fraction: u64,
    /// Entries the upstream itself failed.
    upstream_failed: u64,
    /// PutRecords requests in which every entry failed (nothing sent upstream).
    all_failed_requests: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
struct ShardCounters {
    accepted: u64,
    accepted_bytes: u64,
    throttled: u64,
    failed_by_fraction: u64,
}

#[derive(Default)]
struct StreamState {
    map: Option<ShardMap>,
    limiters: Vec<ShardLimiter>,
    counters: Counters,
    shards: BTreeMap<String, ShardCounters>,
}

struct State {
    total: Counters,
    streams: HashMap<String, StreamState>,
    rng: StdRng,
}

struct Shim {
    args: ShimArgs,
    upstream_base: String,
    upstream_authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
    epoch: Instant,
}

impl Shim {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn stats(&self, stream: Option<&str>) -> Value {
        let state = self.state.lock().expect("shim state");
        let one = |s: &StreamState| {
            json!({
                "counters": s.counters,
                "shards": s.shards,
                "shard_count": s.map.as_ref().map(ShardMap::len),
            })
        };
        let streams: serde_json::Map<String, Value> = state
            .streams
            .iter()
            .filter(|(name, _)| stream.is_none_or(|s| s == name.as_str()))
            .map(|(name, s)| (name.clone(), one(s)))
            .collect();
        json!({
            "options": self.args.describe(),
            "total": state.total,
            "streams": streams,
        })
    }
}

pub async fn run_shim(args: ShimArgs) -> Result<(), String> {
    let upstream = args.upstream.trim_end_matches('/').to_owned();
    let uri: Uri = upstream
        .parse()
        .map_err(|e| format!("bad upstream {upstream:?}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("upstream {upstream:?} has no host:port"))?
        .to_string();
    if !(0.0..=1.0).contains(&args.fail_fraction) {
        return Err("--fail-fraction must be within 0..=1".into());
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let listen = args.listen.clone();
    let shim = Arc::new(Shim {
        upstream_base: upstream.clone(),
        upstream_authority: authority,
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .pool_timer(TokioTimer::new())
            .build(connector),
        state: Mutex::new(State {
            total: Counters::default(),
            streams: HashMap::new(),
            rng: StdRng::seed_from_u64(args.seed),
        }),
        epoch: Instant::now(),
        args,
    });
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    eprintln!(
        "shim: http://{listen} -> {upstream} {}",
        shim.args.describe()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM handler: {e}"))?;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shim = shim.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| proxy(shim.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    if let Some(path) = &shim.args.stats {
        let text = serde_json::to_string_pretty(&shim.stats(None)).expect("serialize");
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("serialize");
    let mut r = plain(status, bytes.clone());
    r.headers_mut()
        .insert(CONTENT_TYPE, AMZ_JSON.parse().expect("header"));
    r.headers_mut().insert(CONTENT_LENGTH, bytes.len().into());
    r
}

async fn proxy(
    shim: Arc<Shim>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/stats" {
        let stream = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("stream=")))
            .map(str::to_owned);
        return Ok(json_response(
            StatusCode::OK,
            &shim.stats(stream.as_deref()),
        ));
    }
    shim.state.lock().expect("shim state").total.requests += 1;
    let is_put_records = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.ends_with(".PutRecords"));
    let result = if is_put_records && shim.args.inspects_entries() {
        put_records(&shim, req).await
    } else {
        forward(&shim, req).await
    };
    let response = result.unwrap_or_else(|e| plain(StatusCode::BAD_GATEWAY, e));
    if is_put_records && shim.args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(shim.args.delay_ms)).await;
    }
    Ok(response)
}

/// Sends one request upstream; answers (status, headers, body).
async fn upstream_call(
    shim: &Shim,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), String> {
    let uri: Uri = format!("{}{path}", shim.upstream_base)
        .parse()
        .map_err(|e| format!("upstream URI: {e}"))?;
    let mut upstream = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let out = upstream.headers_mut();
    for (name, value) in headers {
        if name != HOST && name != CONTENT_LENGTH && name != "connection" {
            out.append(name.clone(), value.clone());
        }
    }
    // kinesalite does not verify signatures, so a rewritten body is accepted.
    out.insert(
        HOST,
        shim.upstream_authority
            .parse()
            .map_err(|_| "bad upstream authority".to_owned())?,
    );
    out.insert(CONTENT_LENGTH, body.len().into());
    let response = shim
        .client
        .request(upstream)
        .await
        .map_err(|e| format!("upstream: {e:?}"))?;
    let (head, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading response: {e}"))?
        .to_bytes();
    Ok((head.status, head.headers, body))
}

fn rebuild(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<Full<Bytes>> {
    let len = body.len();
    let mut response = plain(status, body);
    for (name, value) in headers {
        if name != CONTENT_LENGTH && name != "connection" && name != "transfer-encoding" {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response.headers_mut().insert(CONTENT_LENGTH, len.into());
    response
}

async fn forward(shim: &Shim, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading request: {e}"))?
        .to_bytes();
    let body = match rewrite_stream_arn(&body) {
        Some(rewritten) => Bytes::from(rewritten),
        None => body,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (status, headers, body) =
        upstream_call(shim, parts.method, path, &parts.headers, body).await?;
    Ok(rebuild(status, &headers, body))
}

/// The stream's shard map, from the cache or the upstream (ListShards, else DescribeStream),
/// signed with the headers of the request being served (kinesalite checks only their form).
async fn shard_map(shim: &Shim, stream: &str, headers: &HeaderMap) -> Result<ShardMap, String> {
    if let Some(map) = shim
        .state
        .lock()
        .expect("shim state")
        .streams
        .get(stream)
        .and_then(|s| s.map.clone())
    {
        return Ok(map);
    }
    let mut errors = Vec::new();
    let mut found = None;
    for (operation, pointer) in [
        ("ListShards", "/Shards"),
        ("DescribeStream", "/StreamDescription/Shards"),
    ] {
        let mut h = headers.clone();
        h.insert(
            "x-amz-target",
            format!("Kinesis_20131202.{operation}")
                .parse()
                .expect("header"),
        );
        h.insert(CONTENT_TYPE, AMZ_JSON.parse().expect("header"));
        let body = Bytes::from(serde_json::to_vec(&json!({ "StreamName": stream })).expect("json"));
        match upstream_call(shim, Method::POST, "/", &h, body).await {
            Ok((status, _, body)) if status.is_success() => {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("{operation} answer: {e}"))?;
                match v
                    .pointer(pointer)
                    .and_then(Value::as_array)
                    .and_then(|s| ShardMap::from_shards_json(s))
                {
                    Some(map) => {
                        found = Some(map);
                        break;
                    }
                    None => errors.push(format!("{operation}: no open shard in {v}")),
                }
            }
            Ok((status, _, body)) => errors.push(format!(
                "{operation}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) => errors.push(format!("{operation}: {e}")),
        }
    }
    let map = found
        .ok_or_else(|| format!("cannot learn the shards of {stream}: {}", errors.join("; ")))?;
    let now = shim.now();
    let mut state = shim.state.lock().expect("shim state");
    let s = state.streams.entry(stream.to_owned()).or_default();
    if s.map.is_none() {
        s.limiters = (0..map.len())
            .map(|_| {
                ShardLimiter::new(
                    shim.args.shard_records_per_sec,
                    shim.args.shard_bytes_per_sec,
                    now,
                )
            })
            .collect();
        s.map = Some(map.clone());
    }
    Ok(map)
}

/// PutRecords under the shard limits and the failure fraction.
async fn put_records(shim: &Shim, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = req.into_parts();
    let raw = body
        .collect()
        .await
        .map_err(|e| format!("reading request: {e}"))?
        .to_bytes();
    let request: PutRecordsBody = match serde_json::from_slice(&raw) {
        Ok(r) => r,
        // Not a body we understand: let the upstream answer it.
        Err(_) => {
            let body = rewrite_stream_arn(&raw).map_or(raw.clone(), Bytes::from);
            let (status, headers, body) =
                upstream_call(shim, parts.method, "/", &parts.headers, body).await?;
            return Ok(rebuild(status, &headers, body));
        }
    };
    let (stream, account) = request
        .stream()
        .ok_or("PutRecords names no stream (StreamName or StreamARN)")?;
    let map = match shard_map(shim, &stream, &parts.headers).await {
        Ok(map) => Some(map),
        // Without limits, the map only names the shard in error messages.
        Err(e) if shim.args.limits() => return Err(e),
        Err(_) => None,
    };
    let shards: Vec<Option<usize>> = request
        .records
        .iter()
        .map(|e| {
            let hash = entry_hash(&e.partition_key, e.explicit_hash_key.as_deref())?;
            map.as_ref()?.shard_of(hash)
        })
        .collect();
    let shard_ids: Vec<&str> = shards
        .iter()
        .map(|s| match (s, &map) {
            (Some(i), Some(m)) => m.id(*i),
            _ => "shardId-unknown",
        })
        .collect();
    let verdicts: Vec<Verdict> = {
        let now = shim.now();
        let mut guard = shim.state.lock().expect("shim state");
        let state = &mut *guard;
        let fraction = shim.args.fail_fraction;
        let s = state.streams.entry(stream.clone()).or_default();
        let mut verdicts = Vec::with_capacity(request.records.len());
        for ((entry, shard), id) in request.records.iter().zip(&shards).zip(&shard_ids) {
            let bytes = entry.limit_bytes();
            let drawn = fraction > 0.0 && state.rng.random::<f64>() < fraction;
            let verdict = if drawn {
                Verdict::Failed
            } else {
                let allowed = shard
                    .and_then(|i| s.limiters.get_mut(i))
                    .is_none_or(|limiter| limiter.try_take(now, bytes as f64));
                if allowed {
                    Verdict::Accept
                } else {
                    Verdict::Throttled
                }
            };
            let c = s.shards.entry((*id).to_owned()).or_default();
            match verdict {
                Verdict::Accept => {
                    c.accepted += 1;
                    c.accepted_bytes += bytes as u64;
                }
                Verdict::Throttled => c.throttled += 1,
                Verdict::Failed => c.failed_by_fraction += 1,
            }
            verdicts.push(verdict);
        }
        let accepted = verdicts.iter().filter(|v| **v == Verdict::Accept).count() as u64;
        let throttled = verdicts
            .iter()
            .filter(|v| **v == Verdict::Throttled)
            .count() as u64;
        let failed = verdicts.len() as u64 - accepted - throttled;
        s.counters.requests += 1;
        for c in [&mut state.total, &mut s.counters] {
            c.put_records_requests += 1;
            c.entries += verdicts.len() as u64;
            c.forwarded += accepted;
            c.throttled += throttled;
            c.failed_by_fraction += failed;
            c.all_failed_requests += u64::from(accepted == 0 && !verdicts.is_empty());
        }
        verdicts
    };
    let accepted: Vec<&Entry> = request
        .records
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v == Verdict::Accept)
        .map(|(e, _)| e)
        .collect();
    let upstream = if accepted.is_empty() {
        None
    } else {
        let body = Bytes::from(forward_body(&accepted, &stream));
        let (status, headers, body) =
            upstream_call(shim, parts.method, "/", &parts.headers, body).await?;
        if !status.is_success() {
            // An error for the whole request: the caller sees it as the upstream gave it.
            return Ok(rebuild(status, &headers, body));
        }
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("upstream PutRecords answer: {e}"))?;
        Some(v)
    };
    let answer = merge_answer(&verdicts, &shard_ids, &stream, &account, upstream.as_ref())?;
    let upstream_failed = upstream
        .as_ref()
        .and_then(|v| v.get("FailedRecordCount"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if upstream_failed > 0 {
        let mut state = shim.state.lock().expect("shim state");
        state.total.upstream_failed += upstream_failed;
        if let Some(s) = state.streams.get_mut(&stream) {
            s.counters.upstream_failed += upstream_failed;
        }
    }
    Ok(json_response(StatusCode::OK, &answer))
}
