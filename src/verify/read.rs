//! Reading both streams over a window and running the engine.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// Reading the streams

/// Dead letters of the route, by source shard and sequence number.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterIndex {
    /// Where they were listed (`s3://bucket/prefix/route/`); `None`: no store configured.
    pub location: Option<String>,
    by_shard: HashMap<String, HashSet<SequenceNumber>>,
    count: usize,
}

impl DeadLetterIndex {
    /// No dead-letter store was checked.
    pub fn unchecked() -> Self {
        DeadLetterIndex::default()
    }

    /// The dead letters listed at `location`, as (source shard, sequence number).
    pub fn new(
        location: String,
        letters: impl IntoIterator<Item = (String, SequenceNumber)>,
    ) -> Self {
        let mut by_shard: HashMap<String, HashSet<SequenceNumber>> = HashMap::new();
        let mut count = 0;
        for (shard, seq) in letters {
            if by_shard.entry(shard).or_default().insert(seq) {
                count += 1;
            }
        }
        DeadLetterIndex {
            location: Some(location),
            by_shard,
            count,
        }
    }

    pub fn contains(&self, shard: &str, seq: &SequenceNumber) -> bool {
        self.by_shard.get(shard).is_some_and(|s| s.contains(seq))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Which stream a read failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Reading a stream failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the {side} stream {stream}: {error}. {}", fix_hint(&error.code, *side))]
pub struct VerifyError {
    pub side: Side,
    pub stream: String,
    pub error: RequestError,
}

/// What to do about a read error, by its kind.
pub fn fix_hint(code: &str, side: Side) -> &'static str {
    use crate::errors::Kind;
    match (crate::errors::kind(code), side) {
        (Kind::NotFound, _) => {
            "Check the ARN (region, account, stream name) and that the stream exists."
        }
        (Kind::AccessDenied, Side::Target) => {
            "The caller needs kinesis:ListShards, GetShardIterator and GetRecords on the target \
             (old account): use credentials of that account, or a stream resource policy that \
             grants them."
        }
        (Kind::AccessDenied, Side::Source) => {
            "The caller needs kinesis:ListShards, GetShardIterator and GetRecords on the source stream."
        }
        (Kind::Credentials, _) => {
            "Refresh the AWS credentials (aws sso login, or check AWS_PROFILE) and re-run."
        }
        (Kind::Network | Kind::Timeout, _) => {
            "Check the network and AWS_REGION / AWS_ENDPOINT_URL_KINESIS, then re-run."
        }
        (Kind::Throttled | Kind::ShardThrottled, _) => {
            "The stream's read limits were hit (other consumers?): re-run later or with \
             --read-concurrency 1."
        }
        _ => "Fix the cause above and re-run.",
    }
}

/// What to do after one GetRecords page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageStep {
    /// Keep the first `keep` records and read on.
    Continue { keep: usize },
    /// Keep the first `keep` records and stop this shard.
    Stop { keep: usize },
    /// At the tip before the window's end has passed: wait, then read on.
    Wait,
}

/// Decides, from a page's arrival times, whether a shard read is done: a record arrived after
/// `read_until_ms`, the shard is closed and read (`has_next` false), or the page is empty at
/// the tip (`millis_behind` 0 or unknown) and the clock (`now_ms`) is past `read_until_ms`.
pub fn page_step(
    arrivals: &[Option<i64>],
    has_next: bool,
    millis_behind: Option<i64>,
    read_until_ms: i64,
    now_ms: i64,
) -> PageStep {
    if let Some(cut) = arrivals
        .iter()
        .position(|a| a.is_some_and(|t| t > read_until_ms))
    {
        return PageStep::Stop { keep: cut };
    }
    let keep = arrivals.len();
    if !has_next {
        return PageStep::Stop { keep };
    }
    if keep == 0 && millis_behind.unwrap_or(0) == 0 {
        return if now_ms > read_until_ms {
            PageStep::Stop { keep: 0 }
        } else {
            PageStep::Wait
        };
    }
    PageStep::Continue { keep }
}

/// How a verification runs.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub source: StreamArn,
    pub target: StreamArn,
    /// Route name (keys the dead letters and the stored result).
    pub route: String,
    pub window: Window,
    /// Passes over the streams, each keeping 1/partitions of the keys.
    pub partitions: u32,
    /// Shards read at once.
    pub read_concurrency: usize,
    /// Example records listed per key and category.
    pub example_cap: usize,
    /// Print progress to stderr (when it is a terminal).
    pub progress: bool,
}

/// Wall-clock figures, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the source (summed over passes), including indexing its records.
    pub read_source_ms: u64,
    /// Reading the target (summed over passes), including matching its records.
    pub read_target_ms: u64,
    /// Time spent digesting, indexing and matching (inside the two reads) plus the final
    /// scan for missing records.
    pub compare_ms: u64,
    pub total_ms: u64,
}

/// PASS: nothing missing, nothing out of order, nothing foreign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "PASS" => Some(Verdict::Pass),
            "FAIL" => Some(Verdict::Fail),
            _ => None,
        }
    }
}

/// The window as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// RFC 3339, or "trim-horizon".
    pub from: String,
    pub from_ms: Option<i64>,
    pub until: String,
    pub until_ms: i64,
    pub grace_ms: i64,
}

/// Dead-letter store as checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReport {
    /// `false`: no bucket configured; dead-lettered records show as missing.
    pub checked: bool,
    pub location: Option<String>,
    /// Dead letters stored for the route (any time).
    pub stored_for_route: usize,
}

/// The full result of `fanoutctl verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub route: String,
    pub source: String,
    pub target: String,
    pub window: WindowReport,
    pub partitions: u32,
    pub source_shards: usize,
    pub target_shards: usize,
    pub totals: Totals,
    /// Keys with any finding (failures first, then dead letters and duplicates).
    pub keys_with_findings: usize,
    pub keys: Vec<KeyFindings>,
    /// Most example records listed per key and category.
    pub example_cap: usize,
    pub dead_letters: DeadLetterReport,
    pub timings: Timings,
    pub started_at: String,
    pub started_at_ms: i64,
    pub finished_at: String,
    pub finished_at_ms: i64,
    pub warnings: Vec<String>,
}

pub(super) struct ReadStats {
    shards: usize,
    records: u64,
}

/// Reads one stream over the window, parents before children, feeding each page's kept
/// records to `sink` (in shard order within each shard).
pub(super) async fn read_stream<R: ShardReader>(
    reader: &R,
    stream: &StreamArn,
    side: Side,
    window: &Window,
    concurrency: usize,
    progress: bool,
    mut sink: impl FnMut(&str, Vec<SourceRecord>),
) -> Result<ReadStats, VerifyError> {
    use futures::{StreamExt, TryStreamExt};
    let fail = |error: RequestError| VerifyError {
        side,
        stream: stream.to_string(),
        error,
    };
    let shards = reader.list_shards(stream).await.map_err(fail)?;
    let levels = crate::lineage::levels(&shards);
    let start = window.start_position();
    let until = window.read_until_ms();
    let mut stats = ReadStats {
        shards: shards.len(),
        records: 0,
    };
    // One line per side on the one progress display (a spinner on a terminal, a plain line
    // every few seconds otherwise, nothing with --quiet).
    let display = Progress::new(progress);
    let bar = display.shard(&format!("{side} {}", stream.name()), None);
    bar.set_message(&format!("records read from {} shard(s)", shards.len()));
    let mut waiting_said = false;
    for level in levels {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Msg, RequestError>>(4);
        let produce = {
            let start = start.clone();
            async move {
                let res = futures::stream::iter(level.into_iter().map(|shard| {
                    read_shard(
                        reader,
                        stream,
                        shard.shard_id,
                        start.clone(),
                        until,
                        tx.clone(),
                    )
                }))
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await;
                if let Err(e) = res {
                    let _ = tx.send(Err(e)).await;
                }
            }
        };
        let consume = async {
            while let Some(msg) = rx.recv().await {
                match msg? {
                    Msg::Page(shard, records) => {
                        stats.records += records.len() as u64;
                        bar.set_position(stats.records);
                        sink(&shard, records);
                    }
                    Msg::Waiting(ms) => {
                        if !waiting_said {
                            waiting_said = true;
                            display.println(&format!(
                                "fanoutctl verify: {side} is read to its tip; waiting {:.0} s until the window's end plus --grace has passed",
                                (ms as f64 / 1000.0).ceil()
                            ));
                        }
                    }
                }
            }
            Ok::<(), RequestError>(())
        };
        let ((), consumed) = tokio::join!(produce, consume);
        consumed.map_err(fail)?;
    }
    bar.finish(&format!("{} shard(s) read", stats.shards));
    Ok(stats)
}

pub(super) enum Msg {
    Page(String, Vec<SourceRecord>),
    /// At the tip; this many milliseconds until the window's end has passed.
    Waiting(i64),
}

pub(super) async fn read_shard<R: ShardReader>(
    reader: &R,
    stream: &StreamArn,
    shard_id: String,
    start: StartPosition,
    until: i64,
    tx: tokio::sync::mpsc::Sender<Result<Msg, RequestError>>,
) -> Result<(), RequestError> {
    let mut it = reader.shard_iterator(stream, &shard_id, &start).await?;
    loop {
        let page = reader.get_records(stream, &it, 10_000).await?;
        let arrivals: Vec<Option<i64>> = page.records.iter().map(|r| r.arrival_ms).collect();
        let step = page_step(
            &arrivals,
            page.next_iterator.is_some(),
            page.millis_behind_latest,
            until,
            now_ms(),
        );
        let mut records = page.records;
        match step {
            PageStep::Continue { keep } | PageStep::Stop { keep } => {
                records.truncate(keep);
                if !records.is_empty()
                    && tx
                        .send(Ok(Msg::Page(shard_id.clone(), records)))
                        .await
                        .is_err()
                {
                    return Ok(()); // the reader side stopped (an error elsewhere)
                }
                if matches!(step, PageStep::Stop { .. }) {
                    return Ok(());
                }
            }
            PageStep::Wait => {
                let left = until - now_ms() + 1;
                let _ = tx.send(Ok(Msg::Waiting(left))).await;
                tokio::time::sleep(Duration::from_millis(left.clamp(50, 1000) as u64)).await;
            }
        }
        match page.next_iterator {
            Some(next) => it = next,
            None => return Ok(()),
        }
    }
}

/// Reads the source, then the target, over the window (once per pass) and compares them.
/// The target reader may use other credentials (the old account). `dead` holds the route's dead letters (or [`DeadLetterIndex::unchecked`]).
pub async fn run<R: ShardReader>(
    source_reader: &R,
    target_reader: &R,
    opts: &VerifyOptions,
    dead: &DeadLetterIndex,
) -> Result<Report, VerifyError> {
    let started_at_ms = now_ms();
    let started = Instant::now();
    let passes = opts.partitions.max(1);
    let mut findings = Findings::default();
    let mut timings = Timings::default();
    let mut compare = Duration::ZERO;
    let (mut source_shards, mut target_shards) = (0, 0);
    for pass in 0..passes {
        if opts.progress && passes > 1 {
            eprintln!("fanoutctl verify: pass {} of {passes}", pass + 1);
        }
        let mut v = Verifier::new(opts.window, pass, passes, opts.example_cap);
        let t = Instant::now();
        let stats = read_stream(
            source_reader,
            &opts.source,
            Side::Source,
            &opts.window,
            opts.read_concurrency,
            opts.progress,
            |shard, records| {
                let c = Instant::now();
                let s = v.shard(shard);
                for r in &records {
                    let key = r.partition_key.as_deref().unwrap_or_default();
                    let dl = !dead.is_empty() && dead.contains(shard, &r.seq);
                    v.add_source(s, key, &r.data, &r.seq, r.arrival_ms, dl);
                }
                drop(records);
                compare += c.elapsed();
            },
        )
        .await?;
        source_shards = stats.shards;
        timings.read_source_ms += t.elapsed().as_millis() as u64;
        let t = Instant::now();
        let stats = read_stream(
            target_reader,
            &opts.target,
            Side::Target,
            &opts.window,
            opts.read_concurrency,
            opts.progress,
            |shard, records| {
                let c = Instant::now();
                let s = v.shard(shard);
                for r in &records {
                    let key = r.partition_key.as_deref().unwrap_or_default();
                    v.add_target(s, key, &r.data, &r.seq, r.arrival_ms);
                }
                drop(records);
                compare += c.elapsed();
            },
        )
        .await?;
        target_shards = stats.shards;
        timings.read_target_ms += t.elapsed().as_millis() as u64;
        let c = Instant::now();
        let f = v.finish();
        compare += c.elapsed();
        findings.merge(f);
    }
    timings.compare_ms = compare.as_millis() as u64;
    timings.total_ms = started.elapsed().as_millis() as u64;
    let finished_at_ms = now_ms();
    Ok(Report::new(
        opts,
        findings,
        dead,
        timings,
        (source_shards, target_shards),
        started_at_ms,
        finished_at_ms,
    ))
}
