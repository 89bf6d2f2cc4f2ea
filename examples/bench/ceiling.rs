//! The ceiling: a bare PutRecords loop; and the round trip of one PutRecords.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use fanout::aws::target::writer_config;
use fanout::cli::status_kb;
use fanout::config::Limits;
use fanout::event::parse_event;
use fanout::model::SourceRecord;
use fanout::plan;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::event::{records, Shape};
use crate::measure::{mb, ms, Sample};
use crate::{sdk_config, CeilingArgs, RttArgs, World};

fn entry(r: &SourceRecord) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .partition_key(r.partition_key.clone().unwrap_or_default())
        .data(Blob::new(r.data.clone()))
        .build()
        .expect("entry")
}

pub async fn run_ceiling(a: &CeilingArgs) -> Result<Value, String> {
    let batch = {
        let payload =
            std::fs::read(&a.event).map_err(|e| format!("reading {}: {e}", a.event.display()))?;
        parse_event(&payload).map_err(|e| e.to_string())?
    };
    let world = World::create(&a.endpoints, false).await?;
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let limits = Limits::default();
    // The replicator's own client settings (no SDK retries, same timeouts).
    let client = aws_sdk_kinesis::Client::from_conf(writer_config(&sdk, &limits).build());
    let arn = world.arn();
    let put = |entries: Vec<PutRecordsRequestEntry>| {
        let request = client.put_records().set_records(Some(entries));
        let request = if a.by_arn {
            request.stream_arn(&arn)
        } else {
            request.stream_name(&world.name)
        };
        async move {
            let out = request
                .send()
                .await
                .map_err(|e| format!("PutRecords: {e:?}"))?;
            match out.failed_record_count() {
                Some(n) if n > 0 => Err(format!("{n} entries failed")),
                _ => Ok(out.records().len()),
            }
        }
    };
    // Warm-up: one record, so the connection is open as in the handler's measured call.
    put(vec![entry(&batch.records[0])]).await?;

    let items: Vec<(usize, usize)> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (i, plan::record_bytes(r)))
        .collect();
    let requests =
        plan::pack_requests(&items, limits.max_request_entries, limits.max_request_bytes);
    let request_count = requests.len();
    let sample = Sample::start();
    let written: Vec<Result<usize, String>> = stream::iter(requests)
        .map(|indices| put(indices.iter().map(|&i| entry(&batch.records[i])).collect()))
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let (wall_ms, cpu_ms, cpu_ticks_ms) = sample.stop();
    let mut total = 0;
    for w in written {
        total += w?;
    }
    if total != batch.records.len() {
        return Err(format!("wrote {total} of {} records", batch.records.len()));
    }
    world.delete().await;
    Ok(json!({
        "mode": "ceiling",
        "label": a.label,
        "records": total,
        "requests": request_count,
        "by_arn": a.by_arn,
        "concurrency": a.concurrency.max(1),
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "cpu_ticks_ms": cpu_ticks_ms,
        "peak_rss_mb": mb(status_kb("VmHWM")),
    }))
}

/// The median round trip of a single-entry PutRecords by StreamARN (the handler's path): what
/// one strict round costs on this path.
pub async fn run_rtt(a: &RttArgs) -> Result<Value, String> {
    let world = World::create(&a.endpoints, false).await?;
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let client =
        aws_sdk_kinesis::Client::from_conf(writer_config(&sdk, &Limits::default()).build());
    let sample = records(a.samples.clamp(1, 1000) + 1, Shape::plain(a.size, 0, 7));
    let mut times = Vec::with_capacity(sample.len());
    for (i, r) in sample.iter().enumerate() {
        let started = Instant::now();
        let out = client
            .put_records()
            .stream_arn(world.arn())
            .records(entry(r))
            .send()
            .await
            .map_err(|e| format!("PutRecords: {e:?}"))?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err(format!("PutRecords failed its entry: {out:?}"));
        }
        // The first is the warm-up (connection set-up).
        if i > 0 {
            times.push(ms(started.elapsed()));
        }
    }
    world.delete().await;
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "mode": "rtt",
        "label": a.label,
        "samples": times.len(),
        "rtt_ms": times[times.len() / 2],
        "min_ms": times[0],
        "max_ms": times[times.len() - 1],
    }))
}
