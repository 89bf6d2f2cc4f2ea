//! The capacity check against the local stack (kinesis-local for Kinesis; DynamoDB, S3 and STS
//! on the single-threaded moto): `fanoutctl capacity` over a source with one hot key, and the
//! cutover guard `capacity` refusing a route that cannot keep up in its order mode, unless
//! forced with a reason. Emulators answer in about a millisecond, so a strict route keeps up
//! with almost anything there; the tests ask "what if the target were 50 ms away" with
//! `--assume-rtt-ms` (and check once that the measured round trip is used without it).

mod support;

use std::time::Duration;

use fanout::aws::control::AwsControl;
use fanout::aws::source::KinesisSource;
use fanout::aws::verifications;
use fanout::control::commands::{execute, CommandName, Context, Request};
use fanout::control::record::{LogicalStream, Outcome, Settings};
use fanout::verify::{Totals, Verdict, VerificationRecord};
use serde_json::Value;
use support::stack::{unique, Backend, World};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs fanoutctl against the world, with `extra` variables; returns exit code and stdout.
fn fanoutctl(world: &World, extra: &[(&str, String)], args: &[&str]) -> (i32, String) {
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    support::fanoutctl(world, &extra, args)
}

/// `hot` records of one key ("hot-key") and `cold` records over 20 other keys, 100 bytes each.
fn traffic(hot: usize, cold: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..hot.max(cold) {
        if i < hot {
            out.push(("hot-key".to_owned(), vec![b'h'; 93]));
        }
        if i < cold {
            out.push((format!("cold-{}", i % 20), vec![b'c'; 94]));
        }
    }
    out
}

fn mode<'a>(route: &'a Value, name: &str) -> &'a Value {
    route["assessment"]["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mode"] == name)
        .unwrap_or_else(|| panic!("no mode {name} in {route}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_finds_the_hot_key_strict_cannot_move_and_the_modes_that_would() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    // 1,500 records of one key in the 30 s window: 50 records/s. At 50 ms strict moves 20.
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &traffic(1500, 200))
        .await
        .unwrap();

    let (code, out) = fanoutctl(
        &world,
        &[],
        &["capacity", "--assume-rtt-ms", "50", "--output", "json"],
    );
    assert_eq!(code, 1, "strict cannot keep up: exit 1");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["keeps_up"], false);
    let route = &report["routes"][0];
    assert_eq!(route["order"], "strict");
    assert_eq!(route["keeps_up"], false);
    assert_eq!(route["target_facts"]["rtt_ms"], 50.0);
    assert_eq!(route["target_facts"]["shards"], 1);
    assert_eq!(
        route["sampled"],
        serde_json::json!(["source (2 shards)", "target (1 shard)"])
    );
    let shards = route["assessment"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let hot = shards
        .iter()
        .find(|s| s["hottest_key"]["key"] == "hot-key")
        .expect("a shard's hottest key is hot-key");
    let rate = hot["hottest_key"]["records_per_sec"].as_f64().unwrap();
    assert!((45.0..=55.0).contains(&rate), "about 1,500 / 30 s: {rate}");
    let verdict = route["verdict"].as_str().unwrap();
    assert!(
        verdict.contains(&format!(
            "(strict): CANNOT KEEP UP on {}: key \"hot-key\" needs",
            hot["shard_id"].as_str().unwrap()
        )) && verdict.contains("strict moves 20 (one record per round trip at 50 ms)")
            && verdict.contains("runs (")
            && verdict.contains("aggregated (")
            && verdict.contains("would keep up: set \"order\""),
        "{verdict}"
    );
    assert_eq!(mode(route, "strict")["keeps_up"], false);
    assert_eq!(mode(route, "runs")["keeps_up"], true);
    assert_eq!(mode(route, "aggregated")["keeps_up"], true);

    // The same as a table, for a person.
    let (code, text) = fanoutctl(&world, &[], &["capacity", "--assume-rtt-ms", "50"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("strict keeps up to 20 rec/s per key at 50 ms: NO (0."),
        "{text}"
    );
    assert!(text.contains("1 of 1 route(s) cannot keep up"), "{text}");

    // The route in aggregated mode keeps up: exit 0.
    let aggregated = format!(
        r#"[{{"source":"{}","target":"{}","order":"aggregated"}}]"#,
        world.source, world.target
    );
    let (code, out) = fanoutctl(
        &world,
        &[("FANOUT_ROUTES", aggregated)],
        &["capacity", "--assume-rtt-ms", "50", "--output", "json"],
    );
    assert_eq!(code, 0, "aggregated keeps up");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["routes"][0]["verdict"]
        .as_str()
        .unwrap()
        .contains("(aggregated): keeps up"));

    // Measured, not assumed: the emulator answers fast, strict keeps up with 50 records/s.
    let (code, out) = fanoutctl(
        &world,
        &[],
        &["capacity", "--sample", "source", "--output", "json"],
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let route = &report["routes"][0];
    assert!(
        route["round_trip"]
            .as_str()
            .unwrap()
            .starts_with("median of 5 DescribeStreamSummary calls"),
        "{route}"
    );
    let rtt = route["target_facts"]["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    if rtt < 15.0 {
        assert_eq!(
            code, 0,
            "at {rtt} ms strict moves over 60 records/s per key"
        );
    }

    // Could not run: a route that is not there, and a target that does not exist.
    let (code, _) = fanoutctl(&world, &[], &["capacity", "--route", "nope"]);
    assert_eq!(code, 2);
    let missing = format!(
        r#"[{{"source":"{}","target":"arn:aws:kinesis:us-east-1:222222222222:stream/{}"}}]"#,
        world.source,
        unique("missing")
    );
    let (code, out) = fanoutctl(
        &world,
        &[("FANOUT_ROUTES", missing)],
        &["capacity", "--output", "json"],
    );
    assert_eq!(code, 2);
    let report: Value = serde_json::from_str(&out).unwrap();
    let error = report["failed"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("cannot describe the target") && error.contains("ResourceNotFound"),
        "{error}"
    );
}

/// A passing verification of the world's route, as `fanoutctl verify` stores it.
fn passing_verification(world: &World) -> VerificationRecord {
    let at = now_ms();
    VerificationRecord {
        route: world.route().name,
        source_arn: world.source.to_string(),
        target_arn: world.target.to_string(),
        window_from: "trim-horizon".into(),
        window_from_ms: None,
        window_until: "now".into(),
        window_until_ms: at,
        grace_ms: 30_000,
        totals: Totals {
            source_in_window: 10,
            matched: 10,
            keys: 3,
            ..Totals::default()
        },
        verdict: Verdict::Pass,
        dead_letters_checked: true,
        partitions: 1,
        started_at_ms: at - 1000,
        finished_at_ms: at,
        duration_ms: 1000,
        actor: "test".into(),
        host: "test".into(),
        keys_with_findings: 0,
    }
}

fn guard<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["guards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name} guard in {report}"))
}

fn failed(report: &Value) -> Vec<String> {
    report["guards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["passed"] == false)
        .map(|g| g["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cutover_guard_refuses_a_route_that_cannot_keep_up_and_force_with_a_reason_passes_it() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("capacity");
    let env = [("FANOUT_MIGRATION", migration.clone())];
    let (code, _) = fanoutctl(
        &world,
        &env,
        &[
            "start",
            "--settle",
            "500ms",
            "--drain-timeout",
            "20s",
            "--reason",
            "capacity test",
        ],
    );
    assert_eq!(code, 0);
    verifications::store(
        &world.new_account,
        &world.table,
        &passing_verification(&world),
    )
    .await
    .unwrap();
    // Before the cutover producers write to the old stream: a hot key there is what the new
    // stream gets after it.
    KinesisSource::new(&world.new_account)
        .put_all(&world.target, &traffic(1500, 100))
        .await
        .unwrap();

    // plan cutover shows the verdict: only the capacity guard refuses.
    let (code, out) = fanoutctl(
        &world,
        &env,
        &[
            "plan",
            "cutover",
            "--assume-rtt-ms",
            "50",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 3, "refused");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(failed(&plan), ["capacity"], "{plan}");
    let detail = guard(&plan, "capacity")["detail"].as_str().unwrap();
    assert!(
        detail.contains("(strict): CANNOT KEEP UP on shardId-000000000000: key \"hot-key\"")
            && detail.contains("--force --reason"),
        "{detail}"
    );
    assert_eq!(plan["capacity"][0]["keeps_up"], false);
    let (code, text) = fanoutctl(&world, &env, &["plan", "cutover", "--assume-rtt-ms", "50"]);
    assert_eq!(code, 3);
    assert!(text.contains("  FAIL capacity"), "{text}");
    assert!(
        text.contains("hottest key \"hot-key\" 50 rec/s; strict keeps up to 20 rec/s per key at 50 ms: NO (0.40×)"),
        "{text}"
    );

    // The cutover is refused, and recorded with the guard.
    let (code, out) = fanoutctl(
        &world,
        &env,
        &[
            "cutover",
            "--reason",
            "try",
            "--assume-rtt-ms",
            "50",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 3);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("refused by: capacity"),
        "{r}"
    );
    assert_eq!(r["state"], "replicating");

    // Forced with a reason: done, and the history says what was overridden.
    let (code, out) = fanoutctl(
        &world,
        &env,
        &[
            "cutover",
            "--force",
            "--reason",
            "CHG-7: the hot key's lag is accepted",
            "--assume-rtt-ms",
            "50",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["state"], "cutover");
    let (code, out) = fanoutctl(&world, &env, &["history", "--output", "json"]);
    assert_eq!(code, 0);
    let history: Value = serde_json::from_str(&out).unwrap();
    let entries = history["history"].as_array().unwrap();
    let refused = entries
        .iter()
        .find(|e| e["outcome"] == "refused_by_guard")
        .expect("the refused cutover is recorded");
    assert_eq!(failed(refused), ["capacity"]);
    let forced = entries
        .iter()
        .find(|e| e["forced"] == true && e["outcome"] == "applied")
        .expect("the forced cutover is recorded");
    assert_eq!(forced["reason"], "CHG-7: the hot key's lag is accepted");
    assert!(
        forced["detail"]
            .as_str()
            .unwrap()
            .contains("forced past: capacity"),
        "{forced}"
    );
    assert!(
        guard(forced, "capacity")["detail"]
            .as_str()
            .unwrap()
            .contains("CANNOT KEEP UP"),
        "{forced}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_guard_fails_closed_when_it_cannot_check() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    // In process, without FANOUT_ROUTES: the route is checked as strict, and says so. Its
    // old stream does not exist: the round trip cannot be measured, so the guard refuses.
    let ctx = Context {
        control: AwsControl::new(&world.new_account, &world.new_account, &world.table),
        actor: "arn:aws:sts::123456789012:assumed-role/oncall/carol".to_owned(),
        poll: Duration::from_millis(100),
        caller_known: true,
    };
    let migration = unique("capacity-closed");
    let stream = LogicalStream {
        name: world.source.name().to_owned(),
        new: world.source.to_string(),
        old: format!(
            "arn:aws:kinesis:us-east-1:222222222222:stream/{}",
            unique("missing")
        ),
        forward_route: world.route().name,
        reverse_route: None,
    };
    let start = Request {
        command: CommandName::Start,
        migration: migration.clone(),
        streams: vec![stream],
        settings: Some(Settings::default()),
        bucket: Some(world.bucket.clone()),
        ..Request::default()
    };
    assert_eq!(execute(&ctx, &start).await.outcome, Outcome::Applied);
    let plan = Request {
        command: CommandName::Plan,
        migration: migration.clone(),
        action: Some(fanout::control::machine::Action::Cutover),
        ..Request::default()
    };
    let r = execute(&ctx, &plan).await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    let g = r.guards.iter().find(|g| g.name == "capacity").unwrap();
    assert!(!g.passed);
    assert!(
        g.detail
            .contains("could not be checked, so the guard refuses")
            && g.detail.contains("cannot describe the target")
            && g.detail.contains("--force --reason"),
        "{}",
        g.detail
    );
}
