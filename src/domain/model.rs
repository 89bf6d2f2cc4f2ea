//! Plain data shared by the write path: routes, stream ARNs, source records, write results.
//!
//! Nothing here knows about the AWS SDK; `aws/` converts to and from these types.

use std::fmt;

use crate::seq::SequenceNumber;

/// A Kinesis stream ARN: `arn:<partition>:kinesis:<region>:<account>:stream/<name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamArn {
    arn: String,
    region: String,
    account: String,
    name: String,
}

impl StreamArn {
    /// Parses a stream ARN. A consumer ARN (`…/consumer/<name>:<ts>`, what enhanced fan-out
    /// event source mappings report) is reduced to its stream.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a Kinesis stream ARN; expected \
                 arn:aws:kinesis:<region>:<12-digit account>:stream/<name>"
            )
        };
        let parts: Vec<&str> = text.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "kinesis" {
            return Err(bad());
        }
        let (region, account, resource) = (parts[3], parts[4], parts[5]);
        if region.is_empty() || account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let name = resource.strip_prefix("stream/").ok_or_else(bad)?;
        let name = name.split("/consumer/").next().unwrap_or(name);
        if name.is_empty() || name.len() > 128 {
            return Err(bad());
        }
        Ok(StreamArn {
            arn: format!("arn:{}:kinesis:{region}:{account}:stream/{name}", parts[1]),
            region: region.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.arn
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    pub fn account(&self) -> &str {
        &self.account
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for StreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

impl fmt::Debug for StreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamArn({})", self.arn)
    }
}

/// The role assumed in the target account to write there.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WriterRole {
    pub role_arn: String,
    pub external_id: Option<String>,
}

/// One (source stream → target stream) replication path, with its own checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Stable, S3-key-safe name used in checkpoints, dead-letter keys and metrics.
    pub name: String,
    pub source: StreamArn,
    pub target: StreamArn,
    /// `None`: write with the function's own credentials (target has a resource policy).
    pub writer_role: Option<WriterRole>,
    /// What order the route promises its target's consumers, and so how it writes.
    pub order: OrderMode,
}

/// A route's order mode: the order promise made to the target's consumers, which decides how
/// records are packed into PutRecords requests (README, "Order modes").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OrderMode {
    /// Per-key order of first arrivals; at most one unconfirmed record per key.
    #[default]
    Strict,
    /// A key's consecutive records packed into KPL aggregated records, one unconfirmed
    /// aggregated record per key: strict order at shard speed, for deaggregating consumers.
    Aggregated,
    /// Runs of a key's records in one request; a failed entry inside a run has the accepted
    /// later entries written again after it, so the last copy of every record is in order.
    Runs,
}

impl OrderMode {
    pub const ALL: [OrderMode; 3] = [OrderMode::Strict, OrderMode::Aggregated, OrderMode::Runs];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderMode::Strict => "strict",
            OrderMode::Aggregated => "aggregated",
            OrderMode::Runs => "runs",
        }
    }

    pub fn parse(text: &str) -> Option<OrderMode> {
        OrderMode::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

impl fmt::Display for OrderMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Route {
    /// The default route name: `<source name>--<target account>--<target name>`.
    pub fn default_name(source: &StreamArn, target: &StreamArn) -> String {
        format!("{}--{}--{}", source.name(), target.account(), target.name())
    }
}

/// A shard as ListShards (or GetRecords' `ChildShards`) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub shard_id: String,
    pub parent: Option<String>,
    pub adjacent_parent: Option<String>,
    /// The shard has an ending sequence number: no new records will arrive.
    pub closed: bool,
}

/// Why a source record cannot be written anywhere, decided before any write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordDefect {
    /// The event record could not be read (bad JSON shape, bad base64); `data` holds its raw JSON.
    Malformed(String),
}

/// One record read from a source shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRecord {
    pub seq: SequenceNumber,
    /// `None` when the event carried no partition key (a malformed event).
    pub partition_key: Option<String>,
    pub data: Vec<u8>,
    /// Approximate arrival time in the source stream, milliseconds since the epoch.
    pub arrival_ms: Option<i64>,
    pub defect: Option<RecordDefect>,
}

/// One source shard's batch, in sequence order, as the event source mapping delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceBatch {
    pub source: StreamArn,
    pub shard_id: String,
    pub records: Vec<SourceRecord>,
}

/// What the target stream allows, read once from `DescribeStreamSummary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// Largest record (data + partition key) the target accepts.
    pub max_record_bytes: usize,
}

/// How a failure should be handled. Decided once, in `aws/`, from typed SDK errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Throttling, internal failure: retry the same record later.
    Transient,
    /// This record can never be written to this target: dead-letter it and go on. For a whole
    /// request: the target refused what the request holds (a partition key, a record), so
    /// the records at fault are found by sending fewer at a time.
    Permanent,
    /// Nothing on this route can be written until someone acts (access, missing stream, KMS):
    /// stop the shard at its first unwritten record.
    Systemic,
}

/// The result of one PutRecords entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryResult {
    Written {
        shard_id: String,
        seq: String,
    },
    Failed {
        code: String,
        message: String,
        class: FailureClass,
    },
}

/// A whole PutRecords request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub class: FailureClass,
    /// The request may have been applied (a timeout after sending): retrying may duplicate.
    pub ambiguous: bool,
    pub code: String,
    pub message: String,
}

/// A checkpoint store or dead-letter store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StoreError {
    pub code: String,
    pub message: String,
}

/// The checkpoint of one (route, source shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record at or below this sequence number has been handled.
    pub last_seq: SequenceNumber,
    pub updated_at_ms: i64,
    /// Records handled after the first unhandled one, when the last batch stopped.
    pub beyond: Option<HandledBeyond>,
    /// Per target shard, the highest target sequence number this shard's records were
    /// written at ([`crate::positions`]).
    pub marks: crate::positions::Marks,
}

/// Which records past a stopped batch's first unhandled record were handled anyway (written
/// or dead-lettered), so that the retry, which starts at that record, skips them instead of
/// writing them again. Positions count the shard's records from `anchor` (position 0, never
/// handled) on: an event source mapping retries with the shard's consecutive records from
/// there, so position i is the same record in both batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandledBeyond {
    /// The first unhandled record.
    pub anchor: SequenceNumber,
    /// The last handled record (at position `len - 1`).
    pub end: SequenceNumber,
    /// Positions covered.
    pub len: u32,
    /// Bit i (of byte i / 8, least significant first): position i was handled.
    pub bits: Vec<u8>,
}

impl HandledBeyond {
    /// From per-position flags (position 0 first); `None` when nothing is handled.
    pub fn from_flags(
        anchor: &SequenceNumber,
        records: &[(bool, &SequenceNumber)],
    ) -> Option<Self> {
        let last = records.iter().rposition(|(handled, _)| *handled)?;
        let mut bits = vec![0u8; last / 8 + 1];
        for (i, (handled, _)) in records[..=last].iter().enumerate() {
            if *handled {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        Some(HandledBeyond {
            anchor: anchor.clone(),
            end: records[last].1.clone(),
            len: last as u32 + 1,
            bits,
        })
    }

    pub fn handled(&self, position: usize) -> bool {
        position < self.len as usize
            && self
                .bits
                .get(position / 8)
                .is_some_and(|b| b & (1 << (position % 8)) != 0)
    }

    /// Records marked handled.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Where position 0 is in `records` (a batch, in order), if the batch holds the anchor
    /// and, where it reaches that far, the last handled record at its position.
    pub fn align(&self, records: &[SourceRecord]) -> Option<usize> {
        let at = records.iter().position(|r| r.seq == self.anchor)?;
        match records.get(at + self.len as usize - 1) {
            Some(end) if end.seq != self.end => None,
            _ => Some(at),
        }
    }
}

/// What a batch adds to a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointAdvance {
    pub route: String,
    pub shard_id: String,
    pub source_arn: String,
    pub target_arn: String,
    pub last_seq: SequenceNumber,
    /// Per target shard, the highest target sequence number this source shard's records were
    /// written at, this batch included ([`crate::positions`]).
    pub marks: crate::positions::Marks,
    pub written: u64,
    pub dead_lettered: u64,
    pub now_ms: i64,
    /// Records handled past the first unhandled one (`None`: the batch finished, or none).
    pub beyond: Option<HandledBeyond>,
}

/// Result of a conditional checkpoint write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvanceOutcome {
    Moved,
    /// The stored checkpoint was already at or past this point (a concurrent or older retry).
    AlreadyFurther,
}

/// One dead letter: a record that could not be written, with everything needed to redrive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    pub route: &'a str,
    pub source_arn: &'a str,
    pub target_arn: &'a str,
    pub shard_id: &'a str,
    pub record: &'a SourceRecord,
    pub reason: String,
    pub error_code: String,
    pub attempts: u32,
}

/// The stored form of a dead letter (version 1): one JSON object per record, with its full
/// payload and the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub route: String,
    pub source_stream_arn: String,
    pub target_stream_arn: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: Option<String>,
    pub data_base64: String,
    pub approximate_arrival_timestamp: Option<String>,
    pub reason: String,
    pub error_code: String,
    pub attempts: u32,
    pub dead_lettered_at: String,
}
