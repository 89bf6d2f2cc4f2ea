//! `fanoutctl verify` against the local emulators over HTTP (kinesis-local for Kinesis, moto
//! for DynamoDB and S3). Each test writes a source stream and builds the target copy itself
//! (a correct copy, or one with a dropped, swapped, duplicated or foreign record), then checks
//! what verify reports, what it stores in the state table and, for the binary, its exit code.

mod support;

use std::process::Command;
use std::time::Duration;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::source::KinesisSource;
use fanout::aws::verifications;
use fanout::model::{DeadLetter, Route, SourceRecord, StreamArn};
use fanout::ports::DeadLetterStore;
use fanout::seq::SequenceNumber;
use fanout::verify::{self, DeadLetterIndex, Report, Verdict, VerifyOptions, Window};
use support::stack::{records, Backend, World};

type Records = Vec<(String, Vec<u8>)>;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A world with `n` records written to the source; returns them and when writing started.
async fn world_with_source(n: usize, keys: usize) -> (World, Records, Vec<(String, String)>, i64) {
    let world = World::create(Backend::KinesisLocal, 2, 2)
        .await
        .expect("kinesis-local is running");
    let from = now_ms() - 1;
    let recs = records(n, keys, 60);
    let positions = put(&world, &world.source, &recs).await;
    (world, recs, positions, from)
}

async fn put(
    world: &World,
    stream: &StreamArn,
    recs: &[(String, Vec<u8>)],
) -> Vec<(String, String)> {
    KinesisSource::new(&world.new_account)
        .put_all(stream, recs)
        .await
        .expect("put records")
}

fn options(world: &World, window: Window) -> VerifyOptions {
    VerifyOptions {
        source: world.source.clone(),
        target: world.target.clone(),
        route: Route::default_name(&world.source, &world.target),
        window,
        partitions: 1,
        read_concurrency: 4,
        example_cap: 20,
        progress: false,
    }
}

/// Verifies [from, now] with a 1 s grace (waiting that second), dead letters from the world's bucket.
async fn verify_since(world: &World, from: i64, partitions: u32) -> Report {
    let window = Window {
        from_ms: Some(from),
        until_ms: now_ms(),
        grace_ms: 1000,
    };
    let mut opts = options(world, window);
    opts.partitions = partitions;
    let dead = dead_letters(world, &opts.route).await;
    let reader = KinesisSource::new(&world.new_account);
    verify::run(&reader, &reader, &opts, &dead)
        .await
        .expect("verify runs")
}

async fn dead_letters(world: &World, route: &str) -> DeadLetterIndex {
    let letters = S3DeadLetters::new(&world.new_account, &world.bucket, "dead-letters")
        .list(Some(route))
        .await
        .expect("list dead letters");
    DeadLetterIndex::new(
        format!("s3://{}/dead-letters/{route}/", world.bucket),
        letters.into_iter().map(|(_, e)| {
            (
                e.shard_id,
                SequenceNumber::parse(&e.sequence_number).unwrap(),
            )
        }),
    )
}

/// Two positions of one key, `a` before `b`.
fn pair_of_one_key(recs: &Records) -> (usize, usize) {
    let key = &recs[0].0;
    let b = recs.iter().skip(1).position(|(k, _)| k == key).unwrap() + 1;
    (0, b)
}

#[tokio::test]
async fn a_correct_copy_is_clean_and_the_result_is_stored() {
    let (world, recs, _, from) = world_with_source(300, 20).await;
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.render_text(20));
    assert_eq!(
        (t.source_in_window, t.target_read, t.matched),
        (300, 300, 300)
    );
    assert_eq!(
        (
            t.missing,
            t.duplicates,
            t.out_of_order,
            t.extra,
            t.outside_window
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(t.keys, 20);
    assert!(report.keys.is_empty());
    assert!(report.dead_letters.checked);
    assert_eq!((report.source_shards, report.target_shards), (2, 2));

    // Stored, and read back as the latest.
    let record = report.to_record("tester", "test-host");
    let sk = verifications::store(&world.new_account, &world.table, &record)
        .await
        .expect("store");
    assert_eq!(sk, format!("{:020}", report.finished_at_ms));
    let latest = verifications::latest(&world.new_account, &world.table, &report.route)
        .await
        .expect("latest")
        .expect("one verification");
    assert_eq!(latest, record);
    assert!(latest.is_recent_pass(now_ms(), 60_000));

    // The raw item: string keys, counts as numbers, verdict and window as text.
    let item = aws_sdk_dynamodb::Client::new(&world.new_account)
        .get_item()
        .table_name(&world.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("verification#{}", report.route)),
        )
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(sk.clone()))
        .send()
        .await
        .expect("get item")
        .item
        .expect("stored item");
    assert_eq!(item["verdict"].as_s().unwrap(), "PASS");
    assert_eq!(item["matched"].as_n().unwrap(), "300");
    assert_eq!(item["source_arn"].as_s().unwrap(), world.source.as_str());
    assert_eq!(item["window_from"].as_s().unwrap(), &rfc3339(from));
    assert_eq!(item["actor"].as_s().unwrap(), "tester");

    // A later verification becomes the latest; one finishing in the same millisecond does
    // not overwrite it.
    let mut later = record.clone();
    later.verdict = Verdict::Fail;
    later.totals.missing = 1;
    let sk2 = verifications::store(&world.new_account, &world.table, &later)
        .await
        .expect("store again");
    assert!(sk2 > sk);
    let latest = verifications::latest(&world.new_account, &world.table, &report.route)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.verdict, Verdict::Fail);
    assert!(!latest.is_recent_pass(now_ms(), 60_000));
    assert_eq!(
        verifications::latest(&world.new_account, &world.table, "no-such-route")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_dropped_record_is_missing_and_named_by_key() {
    let (world, mut recs, positions, from) = world_with_source(300, 20).await;
    let dropped = recs.remove(123);
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!(report.totals.missing, 1);
    assert_eq!(report.keys.len(), 1);
    let k = &report.keys[0];
    assert_eq!((k.key.as_str(), k.missing), (dropped.0.as_str(), 1));
    assert_eq!(k.examples.missing[0].shard, positions[123].0);
    assert_eq!(k.examples.missing[0].sequence_number, positions[123].1);
    let text = report.render_text(20);
    assert!(
        text.contains(&format!("{:?}: 1 missing [", dropped.0)),
        "{text}"
    );
}

#[tokio::test]
async fn a_swapped_pair_within_a_key_is_out_of_order() {
    let (world, mut recs, _, from) = world_with_source(300, 20).await;
    let (a, b) = pair_of_one_key(&recs);
    recs.swap(a, b);
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    assert_eq!(report.verdict, Verdict::Fail);
    let t = &report.totals;
    assert_eq!(
        (t.out_of_order, t.missing, t.extra, t.matched),
        (1, 0, 0, 300)
    );
    assert_eq!(report.keys[0].key, recs[a].0);
}

#[tokio::test]
async fn a_duplicate_is_counted_and_still_clean() {
    let (world, mut recs, _, from) = world_with_source(300, 20).await;
    let again = recs[40].clone();
    recs.insert(41, again);
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.render_text(20));
    assert_eq!((t.duplicates, t.target_read, t.matched), (1, 301, 300));
    assert_eq!(report.keys[0].duplicates, 1);
    assert!(report.render_text(20).starts_with("PASS: "));
}

#[tokio::test]
async fn a_foreign_record_is_extra_and_three_passes_agree_with_one() {
    let (world, mut recs, _, from) = world_with_source(300, 20).await;
    recs.insert(
        77,
        (
            "key-intruder".to_owned(),
            b"written to the target directly".to_vec(),
        ),
    );
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    assert_eq!(report.verdict, Verdict::Fail);
    assert_eq!((report.totals.extra, report.totals.missing), (1, 0));
    assert_eq!(report.keys[0].key, "key-intruder");
    assert_eq!(report.keys[0].examples.extra.len(), 1);

    let split = verify_since(&world, from, 3).await;
    assert_eq!(split.partitions, 3);
    assert_eq!(split.totals, report.totals);
    assert_eq!(split.keys, report.keys);
}

#[tokio::test]
async fn records_before_the_window_are_context_not_extra() {
    let world = World::create(Backend::KinesisLocal, 2, 2).await.unwrap();
    let all = records(200, 10, 60);
    let (before, inside) = all.split_at(80);
    put(&world, &world.source, before).await;
    // A record written to the target before the window that matches nothing: not judged.
    put(
        &world,
        &world.target,
        &[("key-old".to_owned(), b"older".to_vec())],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let from = now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    put(&world, &world.source, inside).await;
    // The copies of the earlier records arrive inside the window (replication lag).
    put(&world, &world.target, &all).await;
    let window = Window {
        from_ms: Some(from),
        until_ms: now_ms(),
        grace_ms: 4000,
    };
    let opts = options(&world, window);
    let reader = KinesisSource::new(&world.new_account);
    let report = verify::run(&reader, &reader, &opts, &DeadLetterIndex::unchecked())
        .await
        .unwrap();
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.render_text(20));
    assert_eq!((t.source_in_window, t.source_context), (120, 80));
    assert_eq!((t.matched, t.extra, t.outside_window), (120, 0, 81));
    assert!(!report.dead_letters.checked);
    assert!(report.render_text(20).contains("NOT CHECKED"));
}

#[tokio::test]
async fn a_dead_lettered_record_is_not_missing() {
    let (world, mut recs, positions, from) = world_with_source(100, 10).await;
    let (key, data) = recs.remove(10);
    let (shard, seq) = &positions[10];
    let route = Route::default_name(&world.source, &world.target);
    let record = SourceRecord {
        seq: SequenceNumber::parse(seq).unwrap(),
        partition_key: Some(key.clone()),
        data,
        arrival_ms: None,
        defect: None,
    };
    S3DeadLetters::new(&world.new_account, &world.bucket, "dead-letters")
        .store(&DeadLetter {
            route: &route,
            source_arn: world.source.as_str(),
            target_arn: world.target.as_str(),
            shard_id: shard,
            record: &record,
            reason: "too large".to_owned(),
            error_code: "RecordTooLarge".to_owned(),
            attempts: 1,
        })
        .await
        .expect("store dead letter");
    put(&world, &world.target, &recs).await;
    let report = verify_since(&world, from, 1).await;
    let t = &report.totals;
    assert_eq!(report.verdict, Verdict::Pass, "{}", report.render_text(20));
    assert_eq!((t.dead_lettered, t.missing, t.matched), (1, 0, 99));
    assert_eq!(report.dead_letters.stored_for_route, 1);
    assert_eq!(
        report.keys[0].examples.dead_lettered[0].sequence_number,
        *seq
    );
}

/// Runs the real binary against the world, with the environment an on-call engineer has.
fn fanoutctl(world: &World, args: &[&str]) -> (i32, String, String) {
    let routes = format!(
        r#"[{{"source":"{}","target":"{}"}}]"#,
        world.source, world.target
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fanoutctl"))
        .arg("verify")
        .args(args)
        .env("AWS_ENDPOINT_URL", &world.stack.moto)
        .env("AWS_ENDPOINT_URL_KINESIS", &world.kinesis_endpoint)
        .env("AWS_ACCESS_KEY_ID", "123456789012")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("FANOUT_ROUTES", routes)
        .env("FANOUT_TABLE", &world.table)
        .env("FANOUT_DEAD_LETTER_BUCKET", &world.bucket)
        .env_remove("FANOUT_DEAD_LETTER_PREFIX")
        .output()
        .expect("run fanoutctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_exits_0_when_clean_1_when_not_and_2_on_errors() {
    let (world, recs, _, from) = world_with_source(200, 10).await;
    put(&world, &world.target, &recs).await;
    let from = rfc3339(from);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let until = rfc3339(now_ms() - 1000);

    // Clean: exit 0, the text summary, stored. The target is read with the old account's
    // role (moto's STS), as on AWS without a resource policy.
    let (code, out, err) = fanoutctl(
        &world,
        &[
            "--from",
            &from,
            "--until",
            &until,
            "--grace",
            "1s",
            "--target-role-arn",
            support::stack::WRITER_ROLE,
            "--target-external-id",
            support::stack::EXTERNAL_ID,
        ],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.starts_with("PASS: "), "{out}");
    assert!(out.contains("Stored in "), "{out}");
    assert!(
        out.contains("matched                            200"),
        "{out}"
    );

    // A foreign record in the target: exit 1, the full JSON report, stored as FAIL.
    put(
        &world,
        &world.target,
        &[("key-x".to_owned(), b"foreign".to_vec())],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let until = rfc3339(now_ms());
    let (code, out, err) = fanoutctl(
        &world,
        &[
            "--from", &from, "--until", &until, "--grace", "1s", "--output", "json",
        ],
    );
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(doc["verdict"], "FAIL");
    assert_eq!(doc["totals"]["extra"], 1);
    assert_eq!(doc["totals"]["matched"], 200);
    assert_eq!(doc["keys"][0]["key"], "key-x");
    assert_eq!(
        doc["route"],
        Route::default_name(&world.source, &world.target)
    );
    assert_eq!(doc["dead_letters"]["checked"], true);
    let sk = doc["stored"]["sk"].as_str().expect("stored");
    let latest = verifications::latest(
        &world.new_account,
        &world.table,
        doc["route"].as_str().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(latest.verdict, Verdict::Fail);
    assert_eq!(format!("{:020}", latest.finished_at_ms), sk);
    assert!(!latest.actor.is_empty() && !latest.host.is_empty());

    // A stream that does not exist: exit 2, one message naming the stream and the fix.
    let missing = format!(
        "arn:aws:kinesis:us-east-1:123456789012:stream/{}",
        support::stack::unique("nope")
    );
    let (code, out, err) = fanoutctl(
        &world,
        &[
            "--source",
            &missing,
            "--target",
            world.target.as_str(),
            "--from",
            &from,
            "--grace",
            "0s",
            "--no-store",
        ],
    );
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&missing), "{err}");
    assert!(err.contains("Check the ARN"), "{err}");
    assert!(out.is_empty(), "{out}");
}
