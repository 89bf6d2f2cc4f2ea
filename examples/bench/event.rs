//! Events: the generated records, and the Lambda Kinesis event files that hold them.

use std::collections::HashMap;

use fanout::event::build_event;
use fanout::model::{SourceRecord, StreamArn};
use fanout::seq::SequenceNumber;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::{EventArgs, SHARD_ID, SOURCE_ARN};

/// Lambda's limit on a synchronous invocation payload ("6 MB"): 6,291,456 bytes.
const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// Sequence numbers of consecutive batches: batch I's records are numbered from I × this.
const BATCH_STRIDE: usize = 1_000_000;

pub fn seq(i: usize) -> SequenceNumber {
    // 56 digits, like real Kinesis sequence numbers, increasing with i.
    SequenceNumber::parse(&format!(
        "4959033827149025660855969253836157109592157598{i:010}"
    ))
    .expect("a valid sequence number")
}

/// How the records of an event are made.
#[derive(Clone, Copy)]
pub struct Shape {
    size: usize,
    /// Distinct keys (0: one per record).
    keys: usize,
    zipf: Option<f64>,
    seed: u64,
    /// Which consecutive batch: the same keys, new data, later sequence numbers.
    batch: usize,
}

impl Shape {
    pub fn plain(size: usize, keys: usize, seed: u64) -> Shape {
        Shape {
            size,
            keys,
            zipf: None,
            seed,
            batch: 0,
        }
    }
}

/// Cumulative Zipf(s) weights of keys 1..=n (key k has weight k^-s).
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (1..=n)
        .map(|k| {
            total += (k as f64).powf(-s);
            total
        })
        .collect()
}

pub fn records(n: usize, shape: Shape) -> Vec<SourceRecord> {
    let Shape {
        size,
        keys,
        zipf,
        seed,
        batch,
    } = shape;
    // The key pool depends on the seed only, so consecutive batches share their keys.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut key = || format!("{:032x}", rng.random::<u128>());
    let pool: Vec<String> = (0..keys).map(|_| key()).collect();
    let cdf = zipf.map(|s| zipf_cdf(keys.max(1), s));
    let stream = seed.wrapping_add(1).wrapping_add(batch as u64 * 1_000_003);
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream);
    let mut draw = rand::rngs::StdRng::seed_from_u64(stream ^ 0x5eed_2f1f_0000_0000);
    (0..n)
        .map(|i| {
            let partition_key = match (&cdf, pool.is_empty()) {
                (_, true) => format!("{:032x}", rng.random::<u128>()),
                (Some(cdf), false) => {
                    let u = draw.random::<f64>() * cdf[cdf.len() - 1];
                    pool[cdf.partition_point(|&c| c <= u).min(pool.len() - 1)].clone()
                }
                (None, false) => pool[i % pool.len()].clone(),
            };
            let mut data = vec![0u8; size];
            rng.fill(&mut data[..]);
            SourceRecord {
                seq: seq(batch * BATCH_STRIDE + i + 1),
                partition_key: Some(partition_key),
                data,
                arrival_ms: Some(1_700_000_000_000),
                defect: None,
            }
        })
        .collect()
}

fn event_bytes(records: &[SourceRecord]) -> Vec<u8> {
    let source = StreamArn::parse(SOURCE_ARN).expect("source ARN");
    serde_json::to_vec(&build_event(&source, SHARD_ID, "us-east-1", records)).expect("serialize")
}

/// Records per partition key, most first.
pub fn key_counts<'a>(records: impl IntoIterator<Item = &'a SourceRecord>) -> Vec<usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *counts
            .entry(r.partition_key.as_deref().unwrap_or_default())
            .or_default() += 1;
    }
    let mut counts: Vec<usize> = counts.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

pub fn write_event(a: &EventArgs) -> Result<Value, String> {
    if a.zipf.is_some() && a.keys == 0 {
        return Err("--zipf needs --keys N".into());
    }
    if a.batch >= 1000 {
        return Err("--batch must be below 1000".into());
    }
    let shape = Shape {
        size: a.size,
        keys: a.keys,
        zipf: a.zipf,
        seed: a.seed,
        batch: a.batch,
    };
    let n = match a.fit_bytes {
        None => a.records,
        Some(limit) => {
            // Every record serialises to the same size (fixed-width keys and sequence numbers).
            let one = event_bytes(&records(1, shape)).len();
            let two = event_bytes(&records(2, shape)).len();
            let per = two - one;
            let envelope = one - per;
            if limit < one {
                return Err(format!(
                    "not even one record of {} B fits in {limit} B",
                    a.size
                ));
            }
            (limit - envelope) / per
        }
    };
    if n >= BATCH_STRIDE {
        return Err(format!("at most {} records per event", BATCH_STRIDE - 1));
    }
    let mut n = n;
    let (bytes, made) = loop {
        let made = records(n, shape);
        let bytes = event_bytes(&made);
        match a.fit_bytes {
            Some(limit) if bytes.len() > limit && n > 1 => n -= 1,
            _ => break (bytes, made),
        }
    };
    std::fs::write(&a.out, &bytes).map_err(|e| format!("writing {}: {e}", a.out.display()))?;
    let counts = key_counts(&made);
    Ok(json!({
        "records": n,
        "size": a.size,
        "keys": counts.len(),
        "hottest_key_records": counts.first().copied().unwrap_or(0),
        "zipf": a.zipf,
        "batch": a.batch,
        "event_bytes": bytes.len(),
        "under_lambda_limit": bytes.len() <= LAMBDA_PAYLOAD_LIMIT,
    }))
}
