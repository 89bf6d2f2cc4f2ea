//! Unit tests of the shard reader over a scripted shard reader and in-memory leases, with
//! paused time: caught-up detection, parents before children, lease hand-over.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::lease::MemoryLeases;
use crate::model::SourceBatch;
use crate::ports::reader::Page;
use crate::replicate::{BatchReport, RouteReport};

/// One scripted stream: its shards and their records. Iterators are `<shard>#<index>`.
#[derive(Default)]
struct Script {
    shards: Vec<ShardInfo>,
    records: HashMap<String, Vec<SourceRecord>>,
}

#[derive(Clone, Default)]
struct FakeReader(Arc<Mutex<Script>>);

fn seq(shard: usize, i: usize) -> SequenceNumber {
    SequenceNumber::parse(&format!("4960{:04}{:040}", shard, i + 1)).unwrap()
}

fn shard(id: usize, parent: Option<usize>, closed: bool) -> ShardInfo {
    ShardInfo {
        shard_id: format!("shardId-{id:012}"),
        parent: parent.map(|p| format!("shardId-{p:012}")),
        adjacent_parent: None,
        closed,
    }
}

impl FakeReader {
    /// `n` records on shard `id` (keys `k0`..`k2`, data `<id>:<i>`).
    fn with(self, info: ShardInfo, n: usize) -> Self {
        let id: usize = info.shard_id["shardId-".len()..].parse().unwrap();
        let records = (0..n)
            .map(|i| SourceRecord {
                seq: seq(id, i),
                partition_key: Some(format!("k{}", i % 3)),
                data: format!("{id}:{i}").into_bytes(),
                arrival_ms: Some(1_000 + i as i64),
                defect: None,
            })
            .collect();
        {
            let mut s = self.0.lock().unwrap();
            s.records.insert(info.shard_id.clone(), records);
            s.shards.push(info);
        }
        self
    }
}

/// A subscription that ends at once (enhanced fan-out is not scripted here).
struct Ended;

impl crate::ports::reader::Subscription for Ended {
    async fn next(&mut self) -> Result<Option<crate::ports::reader::FanOutEvent>, RequestError> {
        Ok(None)
    }
}

fn not_scripted(what: &str) -> RequestError {
    RequestError {
        class: FailureClass::Systemic,
        ambiguous: false,
        code: "NotScripted".into(),
        message: what.into(),
    }
}

impl ShardReader for FakeReader {
    type Subscription = Ended;

    async fn list_shards(&self, _stream: &StreamArn) -> Result<Vec<ShardInfo>, RequestError> {
        Ok(self.0.lock().unwrap().shards.clone())
    }

    async fn shard_iterator(
        &self,
        _stream: &StreamArn,
        shard_id: &str,
        start: &StartPosition,
    ) -> Result<String, RequestError> {
        let s = self.0.lock().unwrap();
        let records = &s.records[shard_id];
        let index = match start {
            StartPosition::TrimHorizon => 0,
            StartPosition::Latest => records.len(),
            StartPosition::AtTimestamp(ms) => records
                .iter()
                .position(|r| r.arrival_ms.unwrap() >= *ms)
                .unwrap_or(records.len()),
            StartPosition::AtSequence(q) => records
                .iter()
                .position(|r| r.seq >= *q)
                .unwrap_or(records.len()),
            StartPosition::AfterSequence(q) => records
                .iter()
                .position(|r| r.seq > *q)
                .unwrap_or(records.len()),
        };
        Ok(format!("{shard_id}#{index}"))
    }

    async fn get_records(
        &self,
        _stream: &StreamArn,
        iterator: &str,
        limit: i32,
    ) -> Result<Page, RequestError> {
        let (shard_id, index) = iterator.split_once('#').unwrap();
        let index: usize = index.parse().unwrap();
        let s = self.0.lock().unwrap();
        let all = &s.records[shard_id];
        let end = (index + limit as usize).min(all.len());
        let closed = s.shards.iter().any(|i| i.shard_id == shard_id && i.closed);
        let at_end = end == all.len();
        Ok(Page {
            records: all[index..end].to_vec(),
            next_iterator: (!(closed && at_end)).then(|| format!("{shard_id}#{end}")),
            millis_behind_latest: Some(if at_end { 0 } else { 5_000 }),
            child_shards: if closed && at_end {
                s.shards
                    .iter()
                    .filter(|c| c.parent.as_deref() == Some(shard_id))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    async fn ensure_consumer(&self, _: &StreamArn, _: &str) -> Result<String, RequestError> {
        Err(not_scripted("ensure_consumer"))
    }

    async fn subscribe(
        &self,
        _: &StreamArn,
        _: &str,
        _: &str,
        _: &StartPosition,
    ) -> Result<Ended, RequestError> {
        Err(not_scripted("subscribe"))
    }
}

/// Takes every batch whole and remembers each record's (shard, data), in invocation order;
/// reports each record as written.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String)>>,
}

impl Recorder {
    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }

    fn of(&self, shard_id: &str) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter(|(s, _)| s == shard_id)
            .map(|(_, d)| d)
            .collect()
    }
}

impl Invoker for Recorder {
    async fn invoke(&self, event: Vec<u8>, _timeout: Duration) -> Result<Invoked, String> {
        let batch: SourceBatch = event::parse_event(&event).map_err(|e| e.to_string())?;
        let mut seen = self.seen.lock().unwrap();
        for r in &batch.records {
            seen.push((
                batch.shard_id.clone(),
                String::from_utf8(r.data.clone()).unwrap(),
            ));
        }
        let report = BatchReport {
            source: batch.source.to_string(),
            shard_id: batch.shard_id.clone(),
            routes: vec![RouteReport {
                route: "r".into(),
                shard_id: batch.shard_id.clone(),
                received: batch.records.len(),
                written: batch.records.len(),
                ..RouteReport::default()
            }],
            ..BatchReport::default()
        };
        Ok(Invoked {
            body: serde_json::to_vec(&event::response(None)).unwrap(),
            report: Some(report),
        })
    }
}

fn stream() -> StreamArn {
    StreamArn::parse("arn:aws:kinesis:us-east-1:111111111111:stream/orders").unwrap()
}

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 2,
        until_caught_up: true,
        owner: "this-runner".into(),
        ..RunnerOptions::default()
    }
}

fn data(id: usize, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{id}:{i}")).collect()
}

async fn run_fake(
    reader: &FakeReader,
    leases: Arc<MemoryLeases>,
    options: &RunnerOptions,
) -> (Arc<Recorder>, RunSummary) {
    let invoker = Arc::new(Recorder::default());
    let summary = tokio::time::timeout(
        Duration::from_secs(600),
        run(
            reader,
            &stream(),
            invoker.clone(),
            leases,
            options,
            Arc::new(AtomicBool::new(false)),
        ),
    )
    .await
    .expect("the run ends by itself once caught up")
    .expect("the run succeeds");
    (invoker, summary)
}

#[tokio::test(start_paused = true)]
async fn every_open_shard_is_read_to_its_tip_in_order_and_the_run_ends_caught_up() {
    let reader = FakeReader::default()
        .with(shard(0, None, false), 5)
        .with(shard(1, None, false), 3);
    let leases = Arc::new(MemoryLeases::default());
    let (seen, summary) = run_fake(&reader, leases.clone(), &options()).await;

    assert_eq!(seen.of("shardId-000000000000"), data(0, 0..5));
    assert_eq!(seen.of("shardId-000000000001"), data(1, 0..3));
    assert_eq!(summary.records_delivered(), 8);
    assert_eq!(summary.handled().written, 8);
    for (id, p) in &summary.shards {
        assert!(p.caught_up && !p.finished, "{id}: {p:?}");
        assert_eq!(p.retried_invocations, 0, "{id}");
    }
    // Positions are saved and the leases given back for the next run.
    let records = leases.list("fanout").await.unwrap();
    assert_eq!(records.len(), 2);
    for r in records {
        let last = if r.shard_id.ends_with('0') { 4 } else { 2 };
        let id: usize = r.shard_id[8..].parse().unwrap();
        assert_eq!(r.position, Position::After(seq(id, last)), "{}", r.shard_id);
        assert_eq!(r.owner, None, "{} released", r.shard_id);
    }
}

#[tokio::test(start_paused = true)]
async fn children_are_read_only_after_their_parent_has_been_read_to_its_end() {
    // A split: shard 0 closed with 6 records, its children 1 and 2; shard 3 unrelated.
    let reader = FakeReader::default()
        .with(shard(0, None, true), 6)
        .with(shard(1, Some(0), false), 3)
        .with(shard(2, Some(0), false), 2)
        .with(shard(3, None, false), 4);
    let leases = Arc::new(MemoryLeases::default());
    let (recorder, summary) = run_fake(&reader, leases.clone(), &options()).await;
    let seen = recorder.seen();

    let parent_last = seen
        .iter()
        .rposition(|(s, _)| s == "shardId-000000000000")
        .unwrap();
    for child in ["shardId-000000000001", "shardId-000000000002"] {
        let first = seen.iter().position(|(s, _)| s == child).unwrap();
        assert!(
            first > parent_last,
            "{child} was read before its parent ended: {seen:?}"
        );
    }
    assert_eq!(recorder.of("shardId-000000000000"), data(0, 0..6));
    assert_eq!(recorder.of("shardId-000000000001"), data(1, 0..3));
    assert_eq!(recorder.of("shardId-000000000002"), data(2, 0..2));
    assert_eq!(recorder.of("shardId-000000000003"), data(3, 0..4));
    assert!(summary.shards["shardId-000000000000"].finished);
    let parent = leases
        .list("fanout")
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.shard_id == "shardId-000000000000")
        .unwrap();
    assert_eq!(
        parent.position,
        Position::End,
        "the parent is recorded as read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_child_starts_at_its_beginning_even_when_the_run_starts_at_latest() {
    // Starting at LATEST skips what is in an open shard, but a child of a shard read to its
    // end starts at its beginning: nothing written after the parent ended is missed.
    let reader = FakeReader::default()
        .with(shard(0, None, true), 2)
        .with(shard(1, Some(0), false), 3);
    let opts = RunnerOptions {
        start: StartPosition::Latest,
        ..options()
    };
    let (recorder, _) = run_fake(&reader, Arc::new(MemoryLeases::default()), &opts).await;
    assert_eq!(recorder.of("shardId-000000000001"), data(1, 0..3));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_at_its_saved_position_and_the_first_batch_counted_as_possible_duplicates(
) {
    let reader = FakeReader::default().with(shard(0, None, false), 6);
    let leases = Arc::new(MemoryLeases::default());
    // Another runner read records 0..=2, saved its position, and stopped renewing a minute ago.
    let then = now_ms() - 60_000;
    let (dead, _) = leases
        .acquire(
            "fanout",
            "shardId-000000000000",
            "dead-runner",
            10_000,
            then,
        )
        .await
        .unwrap()
        .unwrap();
    let hb = crate::lease::Heartbeat {
        millis_behind: Some(0),
        caught_up: false,
    };
    assert!(leases
        .checkpoint(&dead, &Position::After(seq(0, 2)), hb, 10_000, then)
        .await
        .unwrap());

    let (recorder, summary) = run_fake(&reader, leases.clone(), &options()).await;

    assert_eq!(
        recorder.of("shardId-000000000000"),
        data(0, 3..6),
        "resumed after the saved position"
    );
    let p = &summary.shards["shardId-000000000000"];
    assert_eq!(p.leases_taken, 1);
    // The dead owner may have written the batch after its last checkpoint: the first batch
    // written after the take-over (batch size 2) is counted, the rest is not.
    assert_eq!(p.handled.possible_duplicates, 2);
    assert_eq!(p.handled.written, 3);
    let epochs = leases.history("fanout").await.unwrap();
    assert_eq!(
        epochs.iter().map(|e| e.owner.as_str()).collect::<Vec<_>>(),
        ["dead-runner", "this-runner"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_held_by_a_live_runner_is_left_to_it_and_counts_as_caught_up_once_it_says_so() {
    let reader = FakeReader::default()
        .with(shard(0, None, false), 2)
        .with(shard(1, None, false), 2);
    let leases = Arc::new(MemoryLeases::default());
    let (other, _) = leases
        .acquire(
            "fanout",
            "shardId-000000000001",
            "other-runner",
            600_000,
            now_ms(),
        )
        .await
        .unwrap()
        .unwrap();
    let invoker = Arc::new(Recorder::default());
    let opts = options();
    let stop = Arc::new(AtomicBool::new(false));
    let arn = stream();
    let mut running = Box::pin(run(
        &reader,
        &arn,
        invoker.clone(),
        leases.clone(),
        &opts,
        stop,
    ));
    // Not caught up while the other runner has not said so since this run started.
    let early = tokio::time::timeout(Duration::from_secs(30), &mut running).await;
    assert!(
        early.is_err(),
        "the run ended without the other runner's word"
    );
    assert_eq!(invoker.of("shardId-000000000000"), data(0, 0..2));
    assert!(invoker.of("shardId-000000000001").is_empty());

    let hb = crate::lease::Heartbeat {
        millis_behind: Some(0),
        caught_up: true,
    };
    assert!(leases.renew(&other, hb, 600_000, now_ms()).await.unwrap());
    let summary = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("caught up once the other runner reports its shard caught up")
        .unwrap();
    assert!(
        invoker.of("shardId-000000000001").is_empty(),
        "a live runner's shard is never read here"
    );
    assert!(!summary.shards.contains_key("shardId-000000000001"));
}
