//! The pure parts of a redrive: listings, lineage order, batches, records rebuilt from letters, the action a person takes.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// Pure parts

/// Splits a route's listing ((key, size) under `<prefix>/<route>/`) into dead letters, each
/// with its marker state, in shard then sequence order. Returns the keys that are neither a
/// dead letter nor a marker as the second value.
pub fn parse_listing(
    route_prefix: &str,
    objects: &[(String, u64)],
) -> (Vec<LetterRef>, Vec<String>) {
    let mut letters: Vec<LetterRef> = Vec::new();
    let mut markers: BTreeSet<(String, String)> = BTreeSet::new();
    let mut unknown = Vec::new();
    for (key, size) in objects {
        let parsed = key.strip_prefix(route_prefix).and_then(|rel| {
            let (shard, file) = rel.split_once('/')?;
            if shard.is_empty() || file.contains('/') {
                return None;
            }
            let (seq, marker) = match file.strip_suffix(MARKER_SUFFIX) {
                Some(f) => (f.strip_suffix(".json")?, true),
                None => (file.strip_suffix(".json")?, false),
            };
            (!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (shard.to_owned(), seq.to_owned(), marker))
        });
        match parsed {
            Some((shard, seq, true)) => {
                markers.insert((shard, seq));
            }
            Some((shard_id, padded_seq, false)) => letters.push(LetterRef {
                key: key.clone(),
                shard_id,
                padded_seq,
                size: *size,
                marked: false,
            }),
            None => unknown.push(key.clone()),
        }
    }
    for l in &mut letters {
        l.marked = markers.contains(&(l.shard_id.clone(), l.padded_seq.clone()));
    }
    letters.sort_by(|a, b| (&a.shard_id, &a.padded_seq).cmp(&(&b.shard_id, &b.padded_seq)));
    (letters, unknown)
}

/// Orders `shards` parents before children, using the stream's lineage; ties go in shard-id
/// order, which is creation order.
///
/// Unlike [`crate::lineage::levels`] (which orders a listing), this also places shards
/// the listing does not show: a parent trimmed away by retention whose dead letters are still
/// in the bucket, or a child ListShards does not show yet. Such a shard is taken when it is
/// the smallest ready id, so it lands where its creation order puts it: before the children
/// that name it as a parent, and after the shards created before it.
pub fn lineage_order(shards: &[String], listing: &[ShardInfo]) -> Vec<String> {
    let mut nodes: BTreeSet<&str> = shards.iter().map(String::as_str).collect();
    nodes.extend(listing.iter().map(|s| s.shard_id.as_str()));
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in listing {
        for p in [&s.parent, &s.adjacent_parent].into_iter().flatten() {
            nodes.insert(p.as_str());
            parents
                .entry(s.shard_id.as_str())
                .or_default()
                .push(p.as_str());
        }
    }
    // Kahn's algorithm, always taking the smallest ready shard id: deterministic.
    let mut waiting: HashMap<&str, usize> = nodes
        .iter()
        .map(|&n| (n, parents.get(n).map_or(0, Vec::len)))
        .collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for (&child, ps) in &parents {
        for &p in ps {
            children.entry(p).or_default().push(child);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(&s, _)| s)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &c in children.get(next).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(c);
                }
            }
        }
    }
    // A cycle cannot come from Kinesis; if a listing had one, keep its shards rather than drop them.
    let placed: BTreeSet<&str> = order.iter().copied().collect();
    order.extend(nodes.iter().filter(|n| !placed.contains(*n)));
    let wanted: BTreeSet<&str> = shards.iter().map(String::as_str).collect();
    order
        .into_iter()
        .filter(|s| wanted.contains(s))
        .map(str::to_owned)
        .collect()
}

/// Cuts letters into consecutive batches of at most `max_count` letters and, unless a single
/// letter is larger, at most `max_bytes` stored bytes.
pub fn chunk_letters<'l>(
    letters: &[&'l LetterRef],
    max_count: usize,
    max_bytes: u64,
) -> Vec<Vec<&'l LetterRef>> {
    let mut chunks: Vec<Vec<&LetterRef>> = Vec::new();
    let mut bytes = 0u64;
    for &l in letters {
        match chunks.last_mut() {
            Some(c) if c.len() < max_count.max(1) && bytes + l.size <= max_bytes => {
                bytes += l.size;
                c.push(l);
            }
            _ => {
                bytes = l.size;
                chunks.push(vec![l]);
            }
        }
    }
    chunks
}

/// Why a dead letter cannot be replayed as stored: (error code, reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unredrivable {
    pub code: String,
    pub reason: String,
}

/// Rebuilds the source record a dead letter holds, or says why it cannot be replayed as-is.
pub fn to_record(envelope: &Envelope, letter: &LetterRef) -> Result<SourceRecord, Unredrivable> {
    let corrupt = |why: String| Unredrivable {
        code: "CorruptDeadLetter".to_owned(),
        reason: why,
    };
    let seq = SequenceNumber::parse(&envelope.sequence_number)
        .map_err(|e| corrupt(format!("the envelope's sequence number is unusable ({e})")))?;
    if seq.to_padded() != letter.padded_seq {
        return Err(corrupt(format!(
            "the envelope holds record {seq} but its key names {}",
            letter.padded_seq.trim_start_matches('0')
        )));
    }
    if envelope.error_code == "MalformedRecord" {
        return Err(Unredrivable {
            code: "MalformedRecord".to_owned(),
            reason: "the original event record could not be read, so the stored data is the raw \
                     event JSON, not the record"
                .to_owned(),
        });
    }
    let partition_key = match envelope.partition_key.as_deref() {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => {
            return Err(Unredrivable {
                code: "MissingPartitionKey".to_owned(),
                reason: "the record has no partition key, and Kinesis needs one to write it"
                    .to_owned(),
            })
        }
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(&envelope.data_base64)
        .map_err(|e| corrupt(format!("its data is not valid base64 ({e})")))?;
    Ok(SourceRecord {
        seq,
        partition_key: Some(partition_key),
        data,
        arrival_ms: envelope
            .approximate_arrival_timestamp
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis()),
        defect: None,
    })
}

/// What an on-call engineer should do about a dead letter left in place.
pub fn action_for(code: &str, location: &str, target: &StreamArn) -> String {
    match code {
        "RecordTooLarge" => format!(
            "Raise the record size limit of {target} (MaxRecordSizeInKiB), then run fanoutctl redrive \
             again; or write a smaller version of the record by hand and delete {location}."
        ),
        "PartitionKeyTooLong" => format!(
            "Write the record by hand with a partition key of at most 256 characters, then delete {location}."
        ),
        "MissingPartitionKey" => format!(
            "Write the record to {target} by hand with the partition key its producer meant \
             (aws kinesis put-record --stream-arn {target} --partition-key KEY --data ...), then delete {location}."
        ),
        "MalformedRecord" => format!(
            "Recover the record from the raw event JSON in {location} (field data_base64), write it \
             to {target} by hand, then delete the dead letter."
        ),
        "CorruptDeadLetter" => format!(
            "Inspect it (aws s3 cp {location} -); if the record can be recovered, write it to {target} by hand, then delete it."
        ),
        _ => format!(
            "Fix what the reason says about {target}, then run fanoutctl redrive again; \
             the dead letter stays at {location} until then."
        ),
    }
}
