//! Redrive over in-memory fakes of its ports: order, removal only after a confirmed write,
//! markers, systemic stops, idempotence. The same behaviours run against the emulators in
//! `tests/redrive.rs`.

use std::collections::BTreeMap;

use super::*;
use crate::model::FailureClass;
use crate::progress::Mode;

const SRC: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/src";
const DST: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/dst";
const ROUTE: &str = "src--222222222222--dst";

fn route() -> Route {
    Route {
        name: ROUTE.to_owned(),
        source: StreamArn::parse(SRC).unwrap(),
        target: StreamArn::parse(DST).unwrap(),
        writer_role: None,
        order: Default::default(),
    }
}

fn limits() -> Limits {
    Limits {
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..Limits::default()
    }
}

/// Everything written, in arrival order: (partition key, data).
type Written = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Clone)]
struct FakeWriter {
    written: Written,
    /// Entries whose data contains this fail with AccessDeniedException (systemic).
    deny_containing: Option<&'static str>,
    missing_target: bool,
    max_record_bytes: usize,
}

impl FakeWriter {
    fn new() -> Self {
        FakeWriter {
            written: Arc::default(),
            deny_containing: None,
            missing_target: false,
            max_record_bytes: 1000,
        }
    }
    fn written(&self) -> Vec<(String, Vec<u8>)> {
        self.written.lock().unwrap().clone()
    }
}

impl TargetWriter for FakeWriter {
    async fn target_info(&self, route: &Route) -> Result<TargetInfo, RequestError> {
        if self.missing_target {
            return Err(RequestError {
                class: FailureClass::Systemic,
                ambiguous: false,
                code: "ResourceNotFoundException".to_owned(),
                message: format!("Stream {} not found", route.target),
            });
        }
        Ok(TargetInfo {
            max_record_bytes: self.max_record_bytes,
        })
    }

    async fn put_records(
        &self,
        _route: &Route,
        entries: &[OutEntry<'_>],
    ) -> Result<Vec<EntryResult>, RequestError> {
        let mut written = self.written.lock().unwrap();
        Ok(entries
            .iter()
            .map(|e| {
                let denied = self
                    .deny_containing
                    .is_some_and(|d| String::from_utf8_lossy(e.data).contains(d));
                if denied {
                    EntryResult::Failed {
                        code: "AccessDeniedException".to_owned(),
                        message: "denied".to_owned(),
                        class: FailureClass::Systemic,
                    }
                } else {
                    written.push((e.partition_key.to_owned(), e.data.to_vec()));
                    EntryResult::Written {
                        shard_id: "shardId-000000000000".to_owned(),
                        seq: written.len().to_string(),
                    }
                }
            })
            .collect())
    }
}

#[derive(Default)]
struct FakeArchive {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    fail_cleanup: bool,
}

impl FakeArchive {
    fn prefix() -> String {
        format!("dl/{ROUTE}/")
    }
    fn put(&self, shard: &str, seq: u64, key: Option<&str>, data: &[u8], code: &str) {
        let seq = SequenceNumber::parse(&seq.to_string()).unwrap();
        let envelope = Envelope {
            version: 1,
            route: ROUTE.to_owned(),
            source_stream_arn: SRC.to_owned(),
            target_stream_arn: DST.to_owned(),
            shard_id: shard.to_owned(),
            sequence_number: seq.to_string(),
            partition_key: key.map(str::to_owned),
            data_base64: base64::engine::general_purpose::STANDARD.encode(data),
            approximate_arrival_timestamp: None,
            reason: "test".to_owned(),
            error_code: code.to_owned(),
            attempts: 1,
            dead_lettered_at: "2026-01-01T00:00:00Z".to_owned(),
        };
        self.objects.lock().unwrap().insert(
            format!("{}{shard}/{}.json", Self::prefix(), seq.to_padded()),
            serde_json::to_vec(&envelope).unwrap(),
        );
    }
    fn keys(&self) -> Vec<String> {
        self.objects.lock().unwrap().keys().cloned().collect()
    }
    fn listing(&self) -> Vec<(String, u64)> {
        let objects = self.objects.lock().unwrap();
        objects
            .iter()
            .map(|(k, v)| (k.clone(), v.len() as u64))
            .collect()
    }
}

impl DeadLetterArchive for FakeArchive {
    async fn letters(&self, _route: &str) -> Result<Vec<LetterRef>, StoreError> {
        Ok(parse_listing(&Self::prefix(), &self.listing()).0)
    }
    async fn read(&self, key: &str) -> Result<Envelope, StoreError> {
        let body = self.objects.lock().unwrap().get(key).cloned();
        let body = body.ok_or_else(|| StoreError {
            code: "NoSuchKey".to_owned(),
            message: key.to_owned(),
        })?;
        serde_json::from_slice(&body).map_err(|e| StoreError {
            code: "CorruptDeadLetter".to_owned(),
            message: e.to_string(),
        })
    }
    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        if self.fail_cleanup {
            return Err(StoreError {
                code: "AccessDenied".to_owned(),
                message: "no".to_owned(),
            });
        }
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
    async fn mark(&self, key: &str, marker: &Marker) -> Result<(), StoreError> {
        self.objects.lock().unwrap().insert(
            format!("{key}{MARKER_SUFFIX}"),
            serde_json::to_vec(marker).unwrap(),
        );
        Ok(())
    }
    fn location(&self, key: &str) -> String {
        format!("mem://{key}")
    }
}

/// A stream whose shard 2 is the child of shards 0 and 1 (a merge).
struct FakeLister(Option<Vec<ShardInfo>>);

impl ShardLister for FakeLister {
    async fn list_shards(&self, stream: &StreamArn) -> Result<Vec<ShardInfo>, RequestError> {
        self.0.clone().ok_or_else(|| RequestError {
            class: FailureClass::Systemic,
            ambiguous: false,
            code: "AccessDeniedException".to_owned(),
            message: format!("no ListShards on {stream}"),
        })
    }
}

fn info(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> ShardInfo {
    ShardInfo {
        shard_id: id.to_owned(),
        parent: parent.map(str::to_owned),
        adjacent_parent: adjacent.map(str::to_owned),
        closed: false,
    }
}

fn shard(n: u32) -> String {
    format!("shardId-{n:012}")
}

async fn run(
    writer: &FakeWriter,
    archive: &FakeArchive,
    lister: &FakeLister,
    options: RedriveOptions,
) -> Summary {
    redrive_routes(
        &[route()],
        &limits(),
        writer,
        archive,
        lister,
        &options,
        &Progress::with_mode(Mode::Off),
    )
    .await
}

/// Two parent shards with interleaved keys, letters stored out of order.
fn two_shards() -> (FakeArchive, FakeLister) {
    let archive = FakeArchive::default();
    for seq in (1..=12u64).rev() {
        let key = format!("k{}", seq % 3);
        archive.put(
            &shard((seq % 2) as u32),
            seq * 100,
            Some(&key),
            format!("{key}|{seq}").as_bytes(),
            "TargetRejected",
        );
    }
    (
        archive,
        FakeLister(Some(vec![
            info(&shard(0), None, None),
            info(&shard(1), None, None),
        ])),
    )
}

// ---------------------------------------------------------------------------------------------
// Pure parts

#[test]
fn listing_pairs_letters_with_markers_and_sets_aside_strangers() {
    let p = "dl/r/";
    let keys: Vec<(String, u64)> = [
        "dl/r/shardId-1/0002.json",
        "dl/r/shardId-1/0001.json",
        "dl/r/shardId-1/0001.json.redriven",
        "dl/r/shardId-0/0009.json",
        "dl/r/shardId-0/notes.txt",
        "dl/r/shardId-0/x/0001.json",
        "dl/r/shardId-3/0004.json.redriven",
    ]
    .iter()
    .map(|s| (s.to_string(), 10))
    .collect();
    let (letters, unknown) = parse_listing(p, &keys);
    let got: Vec<(&str, &str, bool)> = letters
        .iter()
        .map(|l| (l.shard_id.as_str(), l.padded_seq.as_str(), l.marked))
        .collect();
    assert_eq!(
        got,
        [
            ("shardId-0", "0009", false),
            ("shardId-1", "0001", true),
            ("shardId-1", "0002", false)
        ]
    );
    assert_eq!(
        unknown,
        ["dl/r/shardId-0/notes.txt", "dl/r/shardId-0/x/0001.json"]
    );
}

#[test]
fn batches_are_bounded_by_count_and_by_bytes() {
    let letter = |size: u64| LetterRef {
        key: String::new(),
        shard_id: String::new(),
        padded_seq: size.to_string(),
        size,
        marked: false,
    };
    let cases: Vec<(Vec<u64>, usize, u64, Vec<usize>)> = vec![
        (vec![1, 1, 1, 1, 1], 2, 100, vec![2, 2, 1]),
        (vec![40, 40, 40, 10], 10, 100, vec![2, 2]),
        // A letter larger than the byte bound goes alone.
        (vec![10, 500, 10], 10, 100, vec![1, 1, 1]),
        (vec![], 10, 100, vec![]),
    ];
    for (sizes, count, bytes, want) in cases {
        let letters: Vec<LetterRef> = sizes.iter().map(|&s| letter(s)).collect();
        let refs: Vec<&LetterRef> = letters.iter().collect();
        let chunks = chunk_letters(&refs, count, bytes);
        let got: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(got, want, "{sizes:?}");
        let flat: Vec<&LetterRef> = chunks.into_iter().flatten().collect();
        assert_eq!(flat, refs, "order kept");
    }
}

#[test]
fn shards_go_parents_before_children() {
    let s = |ids: &[u32]| ids.iter().map(|&n| shard(n)).collect::<Vec<_>>();
    // 0 and 1 merge into 5; 5 splits into 3 (reused low id: lineage wins over id order) and 6.
    let listing = vec![
        info(&shard(0), None, None),
        info(&shard(1), None, None),
        info(&shard(5), Some(&shard(0)), Some(&shard(1))),
        info(&shard(3), Some(&shard(5)), None),
        info(&shard(6), Some(&shard(5)), None),
    ];
    let cases: Vec<(Vec<String>, &[ShardInfo], Vec<String>)> = vec![
        (s(&[6, 3, 5, 1, 0]), &listing, s(&[0, 1, 5, 3, 6])),
        (s(&[3, 1]), &listing, s(&[1, 3])),
        // A shard the listing no longer has (expired) still comes out, in id order.
        (s(&[9, 6, 2]), &listing, s(&[2, 6, 9])),
        (s(&[2, 1]), &[], s(&[1, 2])),
    ];
    for (shards, listing, want) in cases {
        assert_eq!(lineage_order(&shards, listing), want, "{shards:?}");
    }
    // A child whose only parent expired from the listing but still has letters.
    let listing = vec![info(&shard(1), Some(&shard(7)), None)];
    assert_eq!(lineage_order(&s(&[1, 7]), &listing), s(&[7, 1]));
}

#[test]
fn envelopes_become_records_or_say_why_not() {
    let archive = FakeArchive::default();
    archive.put("s", 42, Some("k"), b"data", "RecordTooLarge");
    archive.put("s", 43, None, b"data", "MissingPartitionKey");
    archive.put("s", 44, Some("k"), b"{}", "MalformedRecord");
    let letters = parse_listing(&FakeArchive::prefix(), &archive.listing()).0;
    let objects = archive.objects.lock().unwrap().clone();
    let env = |l: &LetterRef| serde_json::from_slice::<Envelope>(&objects[&l.key]).unwrap();

    let record = to_record(&env(&letters[0]), &letters[0]).unwrap();
    assert_eq!(record.seq.as_str(), "42");
    assert_eq!(record.partition_key.as_deref(), Some("k"));
    assert_eq!(record.data, b"data");
    assert_eq!(
        to_record(&env(&letters[1]), &letters[1]).unwrap_err().code,
        "MissingPartitionKey"
    );
    assert_eq!(
        to_record(&env(&letters[2]), &letters[2]).unwrap_err().code,
        "MalformedRecord"
    );
    let mut moved = env(&letters[0]);
    moved.sequence_number = "41".to_owned();
    assert_eq!(
        to_record(&moved, &letters[0]).unwrap_err().code,
        "CorruptDeadLetter"
    );
    let mut garbled = env(&letters[0]);
    garbled.data_base64 = "not base64!".to_owned();
    assert_eq!(
        to_record(&garbled, &letters[0]).unwrap_err().code,
        "CorruptDeadLetter"
    );
}

// ---------------------------------------------------------------------------------------------
// Orchestration

#[tokio::test]
async fn replays_in_sequence_order_per_key_and_removes_each_letter() {
    for batch_size in [500, 2] {
        let (archive, lister) = two_shards();
        let writer = FakeWriter::new();
        let options = RedriveOptions {
            batch_size,
            ..RedriveOptions::default()
        };
        let summary = run(&writer, &archive, &lister, options).await;
        assert_eq!(summary.replayed(), 12, "batch size {batch_size}");
        assert_eq!(summary.exit_code(), 0);
        assert!(archive.keys().is_empty(), "{:?}", archive.keys());
        let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (key, data) in writer.written() {
            let seq = String::from_utf8(data).unwrap();
            let seq: u64 = seq.split('|').nth(1).unwrap().parse().unwrap();
            per_key.entry(key).or_default().push(seq);
        }
        for (key, seqs) in &per_key {
            // Within a shard, sequence order; shard 0 (even) goes before shard 1 (odd).
            let mut want = seqs.clone();
            want.sort_by_key(|s| (s % 2, *s));
            assert_eq!(seqs, &want, "key {key}, batch size {batch_size}");
        }
        let again = run(&writer, &archive, &lister, RedriveOptions::default()).await;
        assert_eq!(again.replayed(), 0);
        assert_eq!(again.exit_code(), 0);
    }
}

#[tokio::test]
async fn what_fails_again_or_cannot_be_replayed_stays_and_is_named() {
    let (archive, lister) = two_shards();
    archive.put(&shard(0), 150, Some("k1"), &[b'x'; 2000], "RecordTooLarge");
    archive.put(&shard(0), 250, None, b"no key", "MissingPartitionKey");
    let writer = FakeWriter::new();
    let summary = run(&writer, &archive, &lister, RedriveOptions::default()).await;
    assert_eq!(summary.replayed(), 12);
    assert_eq!(summary.exit_code(), 1);
    let left: Vec<(&str, &str)> = summary
        .left_behind()
        .iter()
        .map(|l| (l.sequence_number.as_str(), l.error_code.as_str()))
        .collect();
    assert_eq!(
        left,
        [("150", "RecordTooLarge"), ("250", "MissingPartitionKey")]
    );
    assert!(summary.left_behind()[0]
        .action
        .contains("Raise the record size limit"));
    assert_eq!(archive.keys().len(), 2);
    // Nothing new the second time, and the same two are named again.
    let again = run(&writer, &archive, &lister, RedriveOptions::default()).await;
    assert_eq!(again.replayed(), 0);
    assert_eq!(again.left_behind().len(), 2);
    assert_eq!(writer.written().len(), 12);
}

#[tokio::test]
async fn keep_marks_instead_of_removing_and_a_second_run_skips_marked_letters() {
    let (archive, lister) = two_shards();
    let writer = FakeWriter::new();
    let options = RedriveOptions {
        keep: true,
        ..RedriveOptions::default()
    };
    let summary = run(&writer, &archive, &lister, options.clone()).await;
    assert_eq!(summary.replayed(), 12);
    let marked: usize = summary.routes[0].shards.iter().map(|s| s.marked).sum();
    assert_eq!(marked, 12);
    let keys = archive.keys();
    assert_eq!(keys.len(), 24);
    let marker_key = keys.iter().find(|k| k.ends_with(MARKER_SUFFIX)).unwrap();
    let marker: serde_json::Value =
        serde_json::from_slice(&archive.objects.lock().unwrap()[marker_key]).unwrap();
    assert_eq!(marker["target_stream_arn"], DST);
    assert_eq!(marker["target_shard_id"], "shardId-000000000000");

    let again = run(&writer, &archive, &lister, options).await;
    assert_eq!(again.replayed(), 0);
    let already: usize = again.routes[0]
        .shards
        .iter()
        .map(|s| s.already_redriven)
        .sum();
    assert_eq!(already, 12);
    assert_eq!(writer.written().len(), 12);
    assert_eq!(again.exit_code(), 0);
}

#[tokio::test]
async fn a_missing_target_leaves_every_letter_and_names_the_stream() {
    let (archive, lister) = two_shards();
    let writer = FakeWriter {
        missing_target: true,
        ..FakeWriter::new()
    };
    let summary = run(&writer, &archive, &lister, RedriveOptions::default()).await;
    assert_eq!(summary.replayed(), 0);
    assert_eq!(summary.exit_code(), 2);
    assert_eq!(archive.keys().len(), 12);
    for s in &summary.routes[0].shards {
        let why = s.stopped.as_deref().unwrap();
        assert!(
            why.contains(DST) && why.contains("Create the target stream"),
            "{why}"
        );
        assert_eq!(s.not_attempted, 6);
    }
}

#[tokio::test]
async fn a_systemic_refusal_stops_its_shard_only_and_removes_only_what_was_written() {
    let (archive, lister) = two_shards();
    // Record 5 (shard 1, key k2) is refused: shard 1 stops there; shard 0 is untouched by it.
    let writer = FakeWriter {
        deny_containing: Some("|5"),
        ..FakeWriter::new()
    };
    let summary = run(&writer, &archive, &lister, RedriveOptions::default()).await;
    let shards = &summary.routes[0].shards;
    assert_eq!(shards[0].replayed, 6);
    assert!(shards[0].stopped.is_none());
    let stopped = shards[1].stopped.as_deref().unwrap();
    assert!(
        stopped.contains("AccessDeniedException") && stopped.contains(DST),
        "{stopped}"
    );
    assert_eq!(summary.exit_code(), 2);
    // Everything left is exactly what was not written; records 1 and 3 (before 5) are gone.
    let written: BTreeSet<String> = writer
        .written()
        .iter()
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    let left: Vec<u64> = archive
        .keys()
        .iter()
        .filter(|k| k.contains(&shard(1)))
        .map(|k| {
            k.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".json")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(left.contains(&500), "{left:?}");
    assert!(!left.contains(&100) && !left.contains(&300), "{left:?}");
    for seq in &left {
        let n = seq / 100;
        assert!(
            !written.contains(&format!("k{}|{n}", n % 3)),
            "{n} written but kept"
        );
    }
    assert_eq!(shards[1].replayed + shards[1].not_attempted, 6);
}

#[tokio::test]
async fn a_letter_that_cannot_be_removed_stops_the_shard_and_is_named() {
    let (archive, lister) = two_shards();
    let archive = FakeArchive {
        fail_cleanup: true,
        objects: Mutex::new(archive.objects.into_inner().unwrap()),
    };
    let writer = FakeWriter::new();
    let options = RedriveOptions {
        batch_size: 2,
        ..RedriveOptions::default()
    };
    let summary = run(&writer, &archive, &lister, options).await;
    let s = &summary.routes[0].shards[0];
    assert_eq!(s.replayed, 2);
    assert_eq!(s.not_cleaned_up.len(), 2);
    assert!(s.not_cleaned_up[0].action.contains("aws s3 rm"));
    assert!(s.stopped.is_some());
    assert_eq!(summary.exit_code(), 2);
}

#[tokio::test]
async fn a_dry_run_lists_and_changes_nothing() {
    let (archive, lister) = two_shards();
    archive.put(&shard(1), 1, None, b"?", "MissingPartitionKey");
    let writer = FakeWriter::new();
    let options = RedriveOptions {
        dry_run: true,
        ..RedriveOptions::default()
    };
    let summary = run(&writer, &archive, &lister, options).await;
    assert!(writer.written().is_empty());
    assert_eq!(archive.keys().len(), 13);
    let s1 = &summary.routes[0].shards[1];
    assert_eq!(s1.pending, 7);
    assert_eq!(s1.first_sequence_number.as_deref(), Some("1"));
    assert_eq!(s1.last_sequence_number.as_deref(), Some("1100"));
    assert_eq!(s1.reasons["TargetRejected"], 6);
    assert_eq!(s1.reasons["MissingPartitionKey"], 1);
    assert_eq!(s1.cannot_redrive.len(), 1);
    assert_eq!(summary.exit_code(), 0);
}

#[tokio::test]
async fn without_a_lineage_shards_go_in_id_order_with_a_warning() {
    let (archive, _) = two_shards();
    let writer = FakeWriter::new();
    let summary = run(
        &writer,
        &archive,
        &FakeLister(None),
        RedriveOptions::default(),
    )
    .await;
    assert_eq!(summary.replayed(), 12);
    let warning = summary.routes[0].lineage_warning.as_deref().unwrap();
    assert!(warning.contains(SRC), "{warning}");
    let ids: Vec<&str> = summary.routes[0]
        .shards
        .iter()
        .map(|s| s.shard_id.as_str())
        .collect();
    assert_eq!(ids, [shard(0), shard(1)]);
}

#[tokio::test]
async fn only_the_named_shard_is_redriven() {
    let (archive, lister) = two_shards();
    let writer = FakeWriter::new();
    let options = RedriveOptions {
        shard: Some(shard(1)),
        ..RedriveOptions::default()
    };
    let summary = run(&writer, &archive, &lister, options).await;
    assert_eq!(summary.replayed(), 6);
    assert_eq!(archive.keys().len(), 6);
    assert!(archive.keys().iter().all(|k| k.contains(&shard(0))));
}
