//! The handler: times Handler::handle on event files, then reads the target back.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use aws_config::SdkConfig;
use bytes::Bytes;
use fanout::aws::build_handler;
use fanout::aws::checkpoints::DynamoCheckpoints;
use fanout::cli::status_kb;
use fanout::config::ReplicatorConfig;
use fanout::event::{build_event, parse_event};
use fanout::handler::MetricsOutput;
use fanout::model::{CheckpointAdvance, SourceRecord, StreamArn};
use fanout::plan;
use fanout::ports::CheckpointStore;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::event::{key_counts, records, seq, Shape};
use crate::measure::{mb, ms, reset_peak_rss, Sample};
use crate::{sdk_config, shim, verify, RunArgs, World, SHARD_ID, SOURCE_ARN};

/// Settings `bench handler` passes from its own environment to the replicator's configuration.
const PASSED_THROUGH: &[&str] = &[
    "FANOUT_SHARD_RECORDS_PER_SEC",
    "FANOUT_SHARD_BYTES_PER_SEC",
    "FANOUT_SHARD_HEADROOM_PCT",
    "FANOUT_RUN_LENGTH",
    "FANOUT_MAX_CONCURRENT_REQUESTS",
    "FANOUT_MAX_REQUEST_ENTRIES",
    "FANOUT_MAX_REQUEST_BYTES",
    "FANOUT_BACKOFF_BASE_MS",
    "FANOUT_BACKOFF_MAX_MS",
    "FANOUT_DEADLINE_MARGIN_MS",
    "FANOUT_REQUEST_TIMEOUT_MS",
];

/// The records of each event file, in order (for checks after the measured calls).
fn read_batches(paths: &[PathBuf]) -> Result<Vec<Vec<SourceRecord>>, String> {
    paths
        .iter()
        .map(|p| {
            let payload = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            Ok(parse_event(&payload).map_err(|e| e.to_string())?.records)
        })
        .collect()
}

/// Sums of the route reports of the batches run.
#[derive(Default)]
struct Totals {
    received: usize,
    handled: usize,
    written: usize,
    skipped: usize,
    dead_lettered: usize,
    requests: usize,
    possible_duplicates: usize,
    repairs: usize,
    retries: BTreeMap<String, u64>,
    checkpoint_errors: Vec<String>,
    stops: Vec<String>,
    batches_run: usize,
    stopped_early: bool,
}

pub async fn run_handler(a: &RunArgs) -> Result<Value, String> {
    let promise = match a.order.as_str() {
        "strict" | "aggregated" => verify::Promise::FirstArrival,
        "runs" => verify::Promise::LastArrival,
        other => return Err(format!("--order {other:?}: use strict, aggregated or runs")),
    };
    let world = World::create(&a.endpoints, true).await?;
    // "order" only when not the default, so strict runs need no config support for the field.
    let order = if a.order == "strict" {
        String::new()
    } else {
        format!(r#","order":"{}""#, a.order)
    };
    let mut vars: HashMap<&str, String> = HashMap::from([
        (
            "FANOUT_ROUTES",
            format!(
                r#"[{{"source":"{SOURCE_ARN}","target":"{}"{order}}}]"#,
                world.arn()
            ),
        ),
        ("FANOUT_TABLE", world.name.clone()),
        ("FANOUT_DEAD_LETTER_BUCKET", world.name.clone()),
    ]);
    let mut settings = serde_json::Map::new();
    for name in PASSED_THROUGH {
        if let Ok(v) = std::env::var(name) {
            settings.insert((*name).to_owned(), json!(v));
            vars.insert(name, v);
        }
    }
    let config = match ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()) {
        Ok(c) => c,
        Err(e) => {
            world.delete().await;
            return Err(e.to_string());
        }
    };
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let handler = build_handler(&config, &sdk, MetricsOutput::None).await;
    let warm_deadline = || Instant::now() + Duration::from_secs(300);

    // Warm-up, as in a warm Lambda container: the event source mapping hands a shard's
    // batches one at a time, usually to the same container, so the warm-up is the shard's
    // previous batch: one record just before the event's first. It opens the connections,
    // fills the target-info and shard-map caches, writes the shard's checkpoint and
    // heartbeat. Not measured.
    let source = StreamArn::parse(SOURCE_ARN).expect("source ARN");
    let mut previous = records(1, Shape::plain(10, 0, 99));
    previous[0].seq = seq(0);
    let warm = build_event(&source, SHARD_ID, "us-east-1", &previous);
    let warm = serde_json::to_vec(&warm).expect("serialize");
    let (_, report) = handler
        .handle(&warm, warm_deadline())
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    if report.first_unhandled.is_some() || report.routes.first().map(|r| r.written) != Some(1) {
        return Err(format!("warm-up did not write its record: {report:?}"));
    }
    drop(warm);

    // The measured calls: one per event file, back to back on the same handler, under one
    // deadline. Each payload is read just before its call (as the runtime would hold it) and
    // dropped after; reading the file is not timed.
    let rss_before_kb = status_kb("VmRSS");
    let peak_before_kb = status_kb("VmHWM");
    reset_peak_rss()?;
    let (mut wall_ms, mut cpu_ms, mut cpu_ticks_ms) = (0.0, 0.0, 0.0);
    let mut reports = Vec::new();
    let mut event_bytes = 0;
    for path in &a.event {
        let payload =
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        event_bytes += payload.len();
        // Each invocation has its own deadline, as in Lambda.
        let deadline = Instant::now() + Duration::from_millis(a.budget_ms);
        let sample = Sample::start();
        let result = handler.handle(&payload, deadline).await;
        let (w, c, t) = sample.stop();
        wall_ms += w;
        cpu_ms += c;
        cpu_ticks_ms += t;
        let (_, report) = result.map_err(|e| e.to_string())?;
        let stop = report.first_unhandled.is_some();
        reports.push(report);
        if stop {
            break;
        }
    }
    let peak_handle_kb = status_kb("VmHWM");

    let batches = read_batches(&a.event)?;
    let mut t = Totals::default();
    for (report, records) in reports.iter().zip(&batches) {
        let route = report.routes.first().ok_or("no route report")?;
        t.batches_run += 1;
        t.received += route.received;
        t.written += route.written;
        t.skipped += route.skipped;
        t.dead_lettered += route.dead_lettered;
        t.requests += route.requests;
        t.possible_duplicates += route.possible_duplicates;
        t.repairs += route.repairs;
        for (code, n) in &route.retries {
            *t.retries.entry(code.clone()).or_default() += n;
        }
        if let Some(e) = &route.checkpoint_error {
            t.checkpoint_errors.push(e.clone());
        }
        if let Some(stop) = &route.stop {
            t.stops.push(format!("{stop:?}"));
        }
        t.handled += match &report.first_unhandled {
            Some(first) => {
                t.stopped_early = true;
                records.iter().take_while(|r| r.seq < *first).count()
            }
            None => records.len(),
        };
    }
    let total_records: usize = batches.iter().map(Vec::len).sum();
    let run: Vec<&SourceRecord> = batches[..t.batches_run].iter().flatten().collect();
    let handled = &run[..t.handled.min(run.len())];
    let hot = key_counts(handled.iter().copied());

    // For the breakdown only, after the measurement: what reading the (first) event alone
    // costs, and the two checkpoint calls.
    let first = std::fs::read(&a.event[0]).map_err(|e| e.to_string())?;
    let sample = Sample::start();
    let batch = parse_event(&first).map_err(|e| e.to_string())?;
    let (parse_wall_ms, parse_cpu_ms, _) = sample.stop();
    drop((batch, first));
    let checkpoint_ms = checkpoint_round_trips(&sdk, &world, &config.routes[0].name).await?;

    // What the shim did for this stream, and the limits it enforced.
    let shim_stats = shim_stats(&a.kinesis, &world.name).await;
    let stream_stats = shim_stats
        .as_ref()
        .and_then(|s| s.pointer(&format!("/streams/{}", world.name)))
        .cloned();
    let limit_of = |k: &str| {
        shim_stats
            .as_ref()
            .and_then(|s| s.pointer(&format!("/options/{k}")))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let (limit_records, limit_bytes) = (
        limit_of("shard_records_per_sec"),
        limit_of("shard_bytes_per_sec"),
    );

    // Per target shard, the handled records and bytes: what the shard limits allow at best.
    let setup = aws_sdk_kinesis::Client::new(&world.setup);
    let map = verify::shard_map(&setup, &world.name).await?;
    let mut loads = vec![(0usize, 0usize); map.len()];
    for r in handled {
        let key = r.partition_key.as_deref().unwrap_or_default();
        if let Some(i) = map.shard_of(shim::key_hash(key)) {
            loads[i].0 += 1;
            loads[i].1 += plan::record_bytes(r);
        }
    }
    // The shortest time the enforced limits allow for these loads: each bucket starts full
    // (one second of its rate) and refills at its rate.
    let limit_bound_ms = (limit_records > 0.0 || limit_bytes > 0.0).then(|| {
        loads
            .iter()
            .map(|&(n, b)| {
                let by = |amount: f64, rate: f64| {
                    if rate > 0.0 {
                        ((amount - rate) / rate).max(0.0)
                    } else {
                        0.0
                    }
                };
                by(n as f64, limit_records).max(by(b as f64, limit_bytes))
            })
            .fold(0.0, f64::max)
            * 1000.0
    });

    let check = if a.no_verify {
        None
    } else {
        let shards = verify::read_target(&setup, &world.name, Duration::from_secs(120)).await?;
        Some(verify::check(&run, t.handled, &shards, promise))
    };

    let mut failed = Vec::new();
    if let Some(c) = &check {
        if c.lost > 0 {
            failed.push(format!("{} handled records lost", c.lost));
        }
        if c.reordered > 0 {
            failed.push(format!(
                "{} records out of per-key order ({} arrival), e.g. {}",
                c.reordered,
                if promise == verify::Promise::FirstArrival {
                    "first"
                } else {
                    "last"
                },
                c.reorder_examples.join("; ")
            ));
        }
        if c.misplaced > 0 {
            failed.push(format!(
                "{} sub-records on a shard whose range excludes their key (the KCL drops them)",
                c.misplaced
            ));
        }
        if c.undecodable > 0 {
            failed.push(format!(
                "{} records start with the KPL magic but are not valid aggregated records",
                c.undecodable
            ));
        }
    }
    if t.dead_lettered > 0 {
        failed.push(format!("{} records dead-lettered", t.dead_lettered));
    }
    if !t.checkpoint_errors.is_empty() {
        failed.push(format!("checkpoint errors: {:?}", t.checkpoint_errors));
    }
    if t.skipped > 0 {
        failed.push(format!(
            "{} records skipped (below a checkpoint of a fresh table)",
            t.skipped
        ));
    }
    if a.expect_clean && (t.stopped_early || !t.retries.is_empty() || t.written != t.received) {
        failed.push(format!(
            "not written cleanly: {} of {} written, retries {:?}, stopped early {}, stops {:?}",
            t.written, t.received, t.retries, t.stopped_early, t.stops
        ));
    }

    let wall_s = wall_ms / 1000.0;
    let line = json!({
        "mode": "handler",
        "label": a.label,
        "order": a.order,
        "settings": settings,
        "batches": a.event.len(),
        "batches_run": t.batches_run,
        "records": total_records,
        "received": t.received,
        "handled": t.handled,
        "written": t.written,
        "stopped_early": t.stopped_early,
        "stops": t.stops,
        // Progress: the records the source shard moves past (handled), per second of the
        // measured calls. Records written past the first unhandled one are sent again by the
        // next invocation, so they are reported apart (written_per_sec).
        "records_per_sec": if wall_s > 0.0 { t.handled as f64 / wall_s } else { 0.0 },
        "written_per_sec": if wall_s > 0.0 { t.written as f64 / wall_s } else { 0.0 },
        "hottest_key_handled": hot.first().copied().unwrap_or(0),
        "keys_handled": hot.len(),
        "event_bytes": event_bytes,
        "requests": t.requests,
        "retries": t.retries,
        "possible_duplicates": t.possible_duplicates,
        "repairs": t.repairs,
        "dead_lettered": t.dead_lettered,
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "cpu_ticks_ms": cpu_ticks_ms,
        "peak_rss_mb": mb(peak_handle_kb.max(peak_before_kb)),
        "peak_rss_handle_mb": mb(peak_handle_kb),
        "rss_before_mb": mb(rss_before_kb),
        "parse_wall_ms": parse_wall_ms,
        "parse_cpu_ms": parse_cpu_ms,
        "checkpoint_ms": checkpoint_ms,
        "target_shards": map.len(),
        "shard_loads": loads.iter().map(|(n, b)| json!([n, b])).collect::<Vec<_>>(),
        "limit_bound_ms": limit_bound_ms,
        "shim": stream_stats,
        "verify": check.as_ref().map(verify::Outcome::to_json),
        "failed": if failed.is_empty() { Value::Null } else { json!(failed.join("; ")) },
    });
    drop(handler);
    world.delete().await;
    Ok(line)
}

/// The shim's counters for one stream (`GET /stats?stream=NAME`); None when `kinesis` is not
/// a shim or does not answer.
async fn shim_stats(kinesis: &str, stream: &str) -> Option<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri = format!("{}/stats?stream={stream}", kinesis.trim_end_matches('/'))
        .parse()
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// For the breakdown only: the wall time of the two checkpoint calls every batch makes (a
/// consistent GetItem, then the conditional UpdateItem) on moto, on a warm connection.
async fn checkpoint_round_trips(
    sdk: &SdkConfig,
    world: &World,
    route: &str,
) -> Result<f64, String> {
    let store = DynamoCheckpoints::new(sdk, &world.name);
    let err = |e: fanout::model::StoreError| format!("checkpoint on moto: {e}");
    store
        .load(route, "shardId-000000000998")
        .await
        .map_err(err)?;
    let started = Instant::now();
    store.load(route, SHARD_ID).await.map_err(err)?;
    let advance = CheckpointAdvance {
        route: route.to_owned(),
        shard_id: SHARD_ID.to_owned(),
        source_arn: SOURCE_ARN.to_owned(),
        target_arn: world.arn(),
        last_seq: seq(9_000_000_000),
        marks: [(SHARD_ID.to_owned(), seq(1))].into(),
        written: 1,
        dead_lettered: 0,
        now_ms: chrono::Utc::now().timestamp_millis(),
        beyond: None,
    };
    store.advance(&advance).await.map_err(err)?;
    Ok(ms(started.elapsed()))
}
