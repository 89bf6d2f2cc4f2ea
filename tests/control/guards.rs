//! Every guard refusing when its condition is false, and being forced with a reason.

use std::sync::atomic::Ordering;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::verifications;
use fanout::control::machine::State;
use fanout::verify::{Totals, Verdict, VerificationRecord};

use super::*;

/// A verification record of the world's route as `fanoutctl verify` stores it.
fn verification(world: &World, missing: u64, finished_at_ms: i64) -> VerificationRecord {
    VerificationRecord {
        route: world.route().name,
        source_arn: world.source.to_string(),
        target_arn: world.target.to_string(),
        window_from: "trim-horizon".into(),
        window_from_ms: None,
        window_until: "now".into(),
        window_until_ms: finished_at_ms,
        grace_ms: 30_000,
        totals: Totals {
            source_in_window: 10,
            matched: 10 - missing,
            missing,
            keys: 3,
            ..Totals::default()
        },
        verdict: if missing == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        dead_letters_checked: true,
        partitions: 1,
        started_at_ms: finished_at_ms - 1000,
        finished_at_ms,
        duration_ms: 1000,
        actor: "test".into(),
        host: "test".into(),
        keys_with_findings: 0,
    }
}

fn guard<'a>(report: &'a Report, name: &str) -> &'a fanout::control::guards::GuardResult {
    report
        .guards
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no {name} guard in {:?}", report.guards))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guard_refuses_when_its_condition_is_false_and_force_with_a_reason_is_recorded() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let migration = unique("guards");
    let ctx = context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/alice",
    );
    let settings = Settings {
        max_lag_ms: 300,
        ..fast_settings()
    };
    start(&world, &ctx, &migration, vec![stream_of(&world)], settings).await;

    // Records nobody replicated, a dead letter nobody looked at, no verification.
    let source = KinesisSource::new(&world.new_account);
    source
        .put_all(&world.source, &records(20, 5, 30))
        .await
        .unwrap();
    let letters = S3DeadLetters::new(&world.new_account, &world.bucket, "dead-letters");
    let route = world.route().name;
    let letter_key = S3DeadLetters::key(
        "dead-letters",
        &route,
        "shardId-000000000000",
        "00000000000000000000000000000000000000000000000000000001",
    );
    letters
        .put_json(&letter_key, br#"{"reason":"test"}"#.to_vec())
        .await
        .unwrap();
    // And a batch Lambda's event source mapping gave up on (its on-failure record).
    let discarded_key = "aws/lambda/8e2f6c1a/shardId-000000000000/2026/12/06/2026-12-06T19.00.00-1";
    letters
        .put_json(
            discarded_key,
            br#"{"KinesisBatchInfo":{"shardId":"shardId-000000000000","startSequenceNumber":"1","streamArn":"x"}}"#.to_vec(),
        )
        .await
        .unwrap();
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shown = status.render_text();
    assert!(
        shown.contains("unacknowledged dead letters: 1\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "DISCARDED BATCHES: 1 on-failure record(s) at s3://{}/aws/lambda/",
            world.bucket
        )),
        "{shown}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;

    let r = execute(
        &ctx,
        &flip(&migration, CommandName::Cutover, Some("try"), false),
    )
    .await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    assert_eq!(r.exit_code(), 3);
    assert!(
        !guard(&r, "lag").passed && guard(&r, "lag").detail.contains("over the 300 ms limit"),
        "{:?}",
        guard(&r, "lag")
    );
    let dl = guard(&r, "dead_letters");
    assert!(!dl.passed && dl.detail.contains(&letter_key), "{dl:?}");
    assert!(
        dl.detail.contains("1 batch(es) discarded") && dl.detail.contains(discarded_key),
        "{dl:?}"
    );
    assert!(
        !guard(&r, "verification").passed
            && guard(&r, "verification").detail.contains("never verified")
    );
    assert!(guard(&r, "streams").passed, "{:?}", guard(&r, "streams"));
    assert_eq!(
        ctx.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating
    );

    // Replicate: lag passes.
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    assert_eq!(
        wait_for_target(&world, 20, Duration::from_secs(30)).await,
        20
    );
    // A failing verification does not count; a passing one does.
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 2, now_ms()),
    )
    .await
    .unwrap();
    let mut plan = flip(&migration, CommandName::Cutover, None, false);
    plan.dry_run = true;
    let r = execute(&ctx, &plan).await;
    assert!(guard(&r, "lag").passed, "{:?}", guard(&r, "lag"));
    assert!(
        !guard(&r, "verification").passed && guard(&r, "verification").detail.contains("2 missing")
    );
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 0, now_ms()),
    )
    .await
    .unwrap();
    // Acknowledge the dead letter.
    let mut ack = req(&migration, CommandName::DlqAck);
    ack.all = true;
    assert_eq!(
        execute(&ctx, &ack).await.outcome,
        Outcome::Failed,
        "an acknowledgement needs a reason"
    );
    ack.reason = Some("looked at it: test payload".into());
    let a = execute(&ctx, &ack).await;
    assert_eq!(a.outcome, Outcome::Applied, "{}", a.message);
    assert!(a.message.starts_with("2 "), "{}", a.message);
    let r = execute(&ctx, &plan).await;
    assert_eq!(
        r.outcome,
        Outcome::Applied,
        "dry run passes: {}",
        r.render_text()
    );
    assert!(r.guards.iter().all(|g| g.passed));
    assert_eq!(
        ctx.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating,
        "a dry run changes nothing"
    );
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();

    // The first migration is done with the world's route: through to commit, so that a
    // second one may steer it (`start` refuses a route a live migration steers).
    for command in [CommandName::Cutover, CommandName::Commit] {
        let r = execute(&ctx, &flip(&migration, command, Some("done"), true)).await;
        assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    }

    // The streams guard: a second migration whose old stream does not exist.
    let broken = unique("guards-streams");
    let mut stream = stream_of(&world);
    stream.old = format!(
        "arn:aws:kinesis:us-east-1:222222222222:stream/{}",
        unique("missing")
    );
    start(&world, &ctx, &broken, vec![stream], fast_settings()).await;
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 0, now_ms()),
    )
    .await
    .unwrap();
    let r = execute(
        &ctx,
        &flip(&broken, CommandName::Cutover, Some("try"), false),
    )
    .await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard);
    assert!(
        !guard(&r, "streams").passed && guard(&r, "streams").detail.contains("ResourceNotFound"),
        "{:?}",
        guard(&r, "streams")
    );
    let r = execute(&ctx, &flip(&broken, CommandName::Cutover, None, true)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.message.contains("--force needs --reason"));
    let r = execute(
        &ctx,
        &flip(
            &broken,
            CommandName::Cutover,
            Some("old stream is being recreated; CHG-42"),
            true,
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let history = ctx.control.history(&broken, None).await.unwrap();
    let forced = history
        .iter()
        .find(|e| e.forced && e.outcome == Outcome::Applied)
        .expect("the forced flip is in the history");
    assert_eq!(
        forced.reason.as_deref(),
        Some("old stream is being recreated; CHG-42")
    );
    assert!(forced.actor.ends_with("oncall/alice"));
    assert!(forced
        .guards
        .iter()
        .any(|g| g.name == "streams" && !g.passed));
    assert!(
        forced.detail.contains("forced past: streams"),
        "{}",
        forced.detail
    );
    assert_eq!(
        history
            .iter()
            .filter(|e| e.outcome == Outcome::RefusedByGuard)
            .count(),
        1
    );
}
