//! What a capacity check reads from AWS ([`crate::capacity`] is the model): the newest window
//! of every open shard of a route's source (and target), the source's hash ranges, and the
//! target's round trip, record limit and shard count through the writer role the replicator
//! uses. Nothing is written anywhere.
//!
//! Every read is bounded: at most 4 GetRecords a second per shard (Kinesis allows 5 across all
//! readers of a shard; one is left for the replicator), a throttled read waits a second, and a
//! shard's read stops at the window's end, when caught up, or at the deadline (the rates are
//! then over what was read, and the report says so). The whole check gives up 20 s after the
//! deadline whatever the network does.

use std::time::Duration;

use aws_config::SdkConfig;
use futures::StreamExt;
use tokio::time::Instant;

use super::classify_sdk_error;
use super::source::{KinesisSource, StartPosition};
use super::target::{list_open_shards, KinesisTarget};
use super::verifications::assumed_role_config;
use crate::capacity::{
    combine, ConfiguredRoute, RouteCapacity, SampledRecord, ShardRead, Sides, TargetFacts,
};
use crate::kpl::hash_key;
use crate::model::{RequestError, Route, StreamArn};
use crate::pacing::{ShardMap, TargetShard};
pub use crate::ports::control::{CapacityOptions, RoundTrip};
use crate::ports::reader::ShardReader;
use crate::ports::TargetWriter;

/// Records asked for per GetRecords (Kinesis's most).
const PAGE: i32 = 10_000;
/// Shards read at once.
const CONCURRENCY: usize = 8;
/// Time past the read deadline after which the whole check gives up.
const HARD_STOP_AFTER: Duration = Duration::from_secs(20);

/// Checks one route: reads, measures, runs the model. `Err` says why it could not, and the fix.
pub async fn measure_route(
    sdk: &SdkConfig,
    configured: &ConfiguredRoute,
    opts: &CapacityOptions,
    now_ms: i64,
) -> Result<RouteCapacity, String> {
    let limit = opts.read_time + HARD_STOP_AFTER;
    match tokio::time::timeout(limit, measure(sdk, configured, opts, now_ms)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "route {}: no answer from Kinesis within {} s; check the endpoints and the network, \
             then run `fanoutctl capacity --route {}` again",
            configured.route.name,
            limit.as_secs(),
            configured.route.name
        )),
    }
}

async fn measure(
    sdk: &SdkConfig,
    configured: &ConfiguredRoute,
    opts: &CapacityOptions,
    now_ms: i64,
) -> Result<RouteCapacity, String> {
    let route = &configured.route;
    let limits = &configured.limits;
    let from_ms = now_ms - opts.window.as_millis() as i64;
    let deadline = Instant::now() + opts.read_time;
    let role = route
        .writer_role
        .as_ref()
        .map(|r| format!("writer role {}", r.role_arn))
        .unwrap_or_else(|| "the caller's own credentials (no writer role)".to_owned());
    // The target through the replicator's own writer client.
    let writer = KinesisTarget::new(sdk, std::slice::from_ref(route), limits).await;
    let (facts, round_trip) = target_facts(&writer, route, limits, opts)
        .await
        .map_err(|e| {
            format!(
            "route {}: cannot describe the target {} through {role}: {e}. The replicator writes \
             through the same role: check FANOUT_WRITER_ROLE_ARN (or the route's \
             writer_role_arn), its trust policy and external id, and that it may call \
             kinesis:DescribeStreamSummary and kinesis:ListShards",
            route.name, route.target
        )
        })?;
    let target_config = match &route.writer_role {
        Some(r) => assumed_role_config(sdk, &r.role_arn, r.external_id.as_deref()).await,
        None => sdk.clone(),
    };
    let facts = match facts.shards {
        0 => TargetFacts {
            shards: open_shard_count(&target_config, &route.target)
                .await
                .map_err(|e| {
                    format!(
                        "route {}: cannot count the target {}'s shards through {role}: {e}; \
                         grant it kinesis:ListShards",
                        route.name, route.target
                    )
                })?,
            ..facts
        },
        _ => facts,
    };

    let source_kinesis = aws_sdk_kinesis::Client::new(sdk);
    let source_shards = open_shards(&source_kinesis, &route.source)
        .await
        .map_err(|e| read_error(route, &route.source, "source", &e))?;
    if source_shards.is_empty() {
        return Err(format!(
            "route {}: the source {} has no open shards (is it being deleted?)",
            route.name, route.source
        ));
    }
    let map = ShardMap::new(source_shards.clone());
    let source_reader = KinesisSource::new(sdk);
    let read_source = async {
        match opts.sides {
            Sides::Target => Ok(source_shards
                .iter()
                .map(|s| ShardRead {
                    shard_id: s.shard_id.clone(),
                    records: Vec::new(),
                    complete: true,
                    read_until_ms: now_ms,
                })
                .collect()),
            Sides::Source | Sides::Both => {
                read_stream(
                    &source_reader,
                    &route.source,
                    &source_shards,
                    (from_ms, now_ms),
                    deadline,
                    opts.read_interval,
                )
                .await
            }
        }
    };
    let target_reader = KinesisSource::new(&target_config);
    let target_kinesis = aws_sdk_kinesis::Client::new(&target_config);
    let read_target = async {
        if opts.sides == Sides::Source {
            return Ok(None);
        }
        let shards = open_shards(&target_kinesis, &route.target).await?;
        read_stream(
            &target_reader,
            &route.target,
            &shards,
            (from_ms, now_ms),
            deadline,
            opts.read_interval,
        )
        .await
        .map(Some)
    };
    let (source, target) = tokio::join!(read_source, read_target);
    let source: Vec<ShardRead> =
        source.map_err(|e| read_error(route, &route.source, "source", &e))?;
    let mut notes: Vec<String> = configured.note.iter().cloned().collect();
    let target: Vec<ShardRead> = match (target, opts.sides) {
        (Ok(t), _) => t.unwrap_or_default(),
        (Err(e), Sides::Target) => return Err(read_error(route, &route.target, "target", &e)),
        (Err(e), _) => {
            notes.push(format!(
                "the target {} could not be read through {role} ({}: {}): only the source was \
                 sampled. Before the first cutover producers write to the target, so its traffic \
                 is what the source will get: grant the role kinesis:GetShardIterator and \
                 kinesis:GetRecords on it (terraform/modules/writer-access with reverse_replication = true \
                 grants them) to measure it",
                route.target, e.code, e.message
            ));
            Vec::new()
        }
    };
    let mut sampled = Vec::new();
    if opts.sides != Sides::Target {
        sampled.push(format!(
            "source ({} shard{})",
            source.len(),
            if source.len() == 1 { "" } else { "s" }
        ));
    }
    if !target.is_empty() {
        sampled.push(format!(
            "target ({} shard{})",
            target.len(),
            if target.len() == 1 { "" } else { "s" }
        ));
    }
    let cut: Vec<&str> = source
        .iter()
        .chain(&target)
        .filter(|r| !r.complete)
        .map(|r| r.shard_id.as_str())
        .collect();
    let (samples, window_ms) = combine(from_ms, now_ms, &source, &target, |key| {
        map.shard_for(hash_key(key))
    });
    if !cut.is_empty() {
        if window_ms < 1000 {
            return Err(format!(
                "route {}: read less than a second of {} within {} s (busy shards, or reads \
                 throttled by other readers): run `fanoutctl capacity --route {} --timeout 60s`, \
                 or a shorter --window",
                route.name,
                cut.join(", "),
                opts.read_time.as_secs(),
                route.name
            ));
        }
        notes.push(format!(
            "{} could not be read to the window's end within {} s: rates are over the first {} \
             s of the window",
            cut.join(", "),
            opts.read_time.as_secs(),
            window_ms / 1000
        ));
    }
    Ok(RouteCapacity::new(
        route, limits, &samples, from_ms, window_ms, facts, round_trip, sampled, notes,
    ))
}

fn read_error(route: &Route, stream: &StreamArn, side: &str, e: &RequestError) -> String {
    format!(
        "route {}: cannot read the {side} {stream} ({}: {}). The check needs kinesis:ListShards, \
         kinesis:GetShardIterator and kinesis:GetRecords on it",
        route.name, e.code, e.message
    )
}

/// The round trip (measured or assumed), the target's record limit, and its open shard count
/// (0 when the writer role may not list shards).
async fn target_facts(
    writer: &KinesisTarget,
    route: &Route,
    limits: &crate::config::Limits,
    opts: &CapacityOptions,
) -> Result<(TargetFacts, String), String> {
    let probes = match opts.round_trip {
        RoundTrip::Assume(_) => 1,
        _ => opts.probes.max(1),
    };
    let mut times = Vec::with_capacity(probes);
    let mut max_record_bytes = limits.default_max_record_bytes;
    for _ in 0..probes {
        let started = Instant::now();
        let info = writer
            .target_info(route)
            .await
            .map_err(|e| format!("{}: {}", e.code, e.message))?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        max_record_bytes = info.max_record_bytes;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (rtt_ms, how) = match opts.round_trip {
        RoundTrip::Measure => (
            median,
            format!("median of {probes} DescribeStreamSummary calls"),
        ),
        RoundTrip::Assume(ms) => (ms, "assumed with --assume-rtt-ms, not measured".to_owned()),
        RoundTrip::AtLeast(ms) if ms > median => (
            ms,
            format!(
                "assumed with --assume-rtt-ms; measured {}, the larger counts",
                crate::capacity::fmt_ms(median)
            ),
        ),
        RoundTrip::AtLeast(_) => (
            median,
            format!("median of {probes} DescribeStreamSummary calls (larger than --assume-rtt-ms)"),
        ),
    };
    let shards = writer
        .target_shards(route)
        .await
        .map(|s| s.len() as u32)
        .unwrap_or(0);
    Ok((
        TargetFacts {
            rtt_ms,
            shards,
            max_record_bytes: limits.max_record_bytes_override.unwrap_or(max_record_bytes),
        },
        how,
    ))
}

/// The stream's open shard count from DescribeStreamSummary.
async fn open_shard_count(config: &SdkConfig, stream: &StreamArn) -> Result<u32, String> {
    let out = aws_sdk_kinesis::Client::new(config)
        .describe_stream_summary()
        .stream_arn(stream.as_str())
        .send()
        .await
        .map_err(|e| {
            let e = classify_sdk_error(&e);
            format!("{}: {}", e.code, e.message)
        })?;
    Ok(out
        .stream_description_summary()
        .map(|s| s.open_shard_count())
        .unwrap_or(0)
        .max(0) as u32)
}

/// The stream's open shards and their hash ranges, by shard id.
async fn open_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &StreamArn,
) -> Result<Vec<TargetShard>, RequestError> {
    let mut shards = list_open_shards(client, stream).await?;
    shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    Ok(shards)
}

/// Reads `[from_ms, until_ms]` of every shard in `shards`, a few at a time.
async fn read_stream(
    reader: &KinesisSource,
    stream: &StreamArn,
    shards: &[TargetShard],
    (from_ms, until_ms): (i64, i64),
    deadline: Instant,
    interval: Duration,
) -> Result<Vec<ShardRead>, RequestError> {
    // The futures are made first: a stream that maps with a closure would make the caller's
    // future `Send` for one lifetime only (rust-lang/rust#102211).
    let mut reading = Vec::with_capacity(shards.len());
    for s in shards {
        reading.push(read_shard(
            reader,
            stream,
            &s.shard_id,
            (from_ms, until_ms),
            deadline,
            interval,
        ));
    }
    let mut reads: Vec<ShardRead> = futures::stream::iter(reading)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    reads.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    Ok(reads)
}

/// Reads one shard from `from_ms` until the window's end, the shard's newest record, or the
/// deadline, at most one GetRecords per `interval`.
async fn read_shard(
    reader: &KinesisSource,
    stream: &StreamArn,
    shard_id: &str,
    (from_ms, until_ms): (i64, i64),
    deadline: Instant,
    interval: Duration,
) -> Result<ShardRead, RequestError> {
    let mut iterator = reader
        .shard_iterator(stream, shard_id, &StartPosition::AtTimestamp(from_ms))
        .await?;
    let mut records = Vec::new();
    let mut read_until_ms = from_ms;
    let mut next_call = Instant::now();
    let done = |records: Vec<SampledRecord>, complete: bool, read_until_ms: i64| ShardRead {
        shard_id: shard_id.to_owned(),
        records,
        complete,
        read_until_ms,
    };
    loop {
        if Instant::now() >= deadline {
            return Ok(done(records, false, read_until_ms));
        }
        tokio::time::sleep_until(next_call).await;
        next_call = Instant::now() + interval;
        let page = match reader.get_records(stream, &iterator, PAGE).await {
            Ok(page) => page,
            Err(e) if e.code.contains("ProvisionedThroughputExceeded") => {
                // Another reader (the replicator) used the shard's reads: wait a second.
                next_call = Instant::now() + Duration::from_secs(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut past_end = false;
        for r in &page.records {
            let arrival = r.arrival_ms.unwrap_or(until_ms);
            if arrival > until_ms {
                past_end = true;
                break;
            }
            read_until_ms = read_until_ms.max(arrival);
            // A record without a key is dead-lettered, never written: it needs no capacity.
            if let Some(key) = &r.partition_key {
                records.push(SampledRecord {
                    bytes: (r.data.len() + key.len()) as u64,
                    key: key.clone(),
                    arrival_ms: arrival,
                });
            }
        }
        let behind = page.millis_behind_latest.unwrap_or(0);
        let caught_up = behind == 0 && (page.records.len() as i32) < PAGE;
        match page.next_iterator {
            _ if past_end || caught_up => return Ok(done(records, true, until_ms)),
            // The shard was closed (resharded) and is read to its end.
            None => return Ok(done(records, true, until_ms)),
            Some(next) => iterator = next,
        }
    }
}
