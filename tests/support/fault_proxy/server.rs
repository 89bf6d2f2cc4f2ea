//! The proxy's HTTP side: the accept loop, and what it does with each request (PutRecords
//! under the plan, GetRecords and DescribeStreamSummary faults, everything else forwarded).

use std::convert::Infallible;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;

use super::*;

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
