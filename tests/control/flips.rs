//! Concurrent conflicting flips (one wins, history holds every attempt), and the two-person
//! rule, a drain that times out and an abandoned flip.

use std::collections::HashMap;

use fanout::aws::routing::S3Routing;
use fanout::control::machine::State;
use fanout::routing::{RoutingClient, RoutingOptions};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_conflicting_flips_one_wins_and_history_holds_every_attempt() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let migration = unique("race");
    let ctx = Arc::new(context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/setup",
    ));
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    // Producers on the new side first (forced: no verification exists yet).
    let r = execute(
        &ctx,
        &flip(&migration, CommandName::Cutover, Some("race set-up"), true),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let version = r.version.unwrap();

    // 25 engineers roll back and 25 commit, all at once, each from the same version.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let world_ctx = Context {
            control: ctx.control.clone(),
            actor: format!("arn:aws:sts::123456789012:assumed-role/oncall/engineer-{i}"),
            poll: Duration::from_millis(100),
            caller_known: true,
        };
        let command = if i % 2 == 0 {
            CommandName::Rollback
        } else {
            CommandName::Commit
        };
        let r = flip(&migration, command, Some(&format!("engineer {i}")), true);
        tasks.push(tokio::spawn(
            async move { (i, execute(&world_ctx, &r).await) },
        ));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let applied: Vec<&(usize, Report)> = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Applied)
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "exactly one wins: {:?}",
        reports
            .iter()
            .map(|(i, r)| (i, r.outcome))
            .collect::<Vec<_>>()
    );
    let (winner, won) = applied[0];
    let lost = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::LostRace)
        .count();
    let refused = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::NotAllowed)
        .count();
    eprintln!(
        "50 concurrent attempts: 1 applied (engineer {winner}), {lost} lost the race, {refused} found the state moved on"
    );
    assert_eq!(
        lost + refused,
        49,
        "every other attempt lost the race or found the state moved on"
    );
    assert!(lost >= 1);
    for (_, r) in &reports {
        if r.outcome == Outcome::LostRace {
            assert_eq!(r.exit_code(), 4);
            assert!(r.message.contains("lost a race"), "{}", r.message);
        }
    }
    // The winner moved the state two versions (begin, finish) past the one everyone read.
    let st = ctx.control.load(&migration).await.unwrap().unwrap();
    assert_eq!(st.version, version + 2);
    assert_eq!(st.state, won.state.unwrap());
    assert!(st.updated_by.ends_with(&format!("engineer-{winner}")));

    // History: one entry per attempt, with the same outcome the engineer was told.
    let history = ctx.control.history(&migration, None).await.unwrap();
    let attempts: Vec<_> = history
        .iter()
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("engineer "))
        })
        .collect();
    assert_eq!(attempts.len(), 50, "{history:#?}");
    let mut told: HashMap<String, Outcome> = HashMap::new();
    for (i, r) in &reports {
        told.insert(format!("engineer {i}"), r.outcome);
    }
    for e in &attempts {
        assert_eq!(
            Some(&e.outcome),
            told.get(e.reason.as_deref().unwrap()),
            "{e:?}"
        );
    }
    assert_eq!(
        attempts
            .iter()
            .filter(|e| e.outcome == Outcome::Applied)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_a_drain_that_times_out_and_an_abandoned_flip() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("two-person");
    let alice = context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/alice",
    );
    let bob = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    let settings = Settings {
        two_person: true,
        drain_timeout_ms: 1_000,
        settle_ms: 300,
        ..fast_settings()
    };
    start(
        &world,
        &alice,
        &migration,
        vec![stream_of(&world)],
        settings,
    )
    .await;
    let routing = S3Routing::new(
        &world.new_account,
        &world.bucket,
        &S3Routing::key_for("routing/", &migration),
    );
    let producers = RoutingClient::new(
        routing,
        RoutingOptions {
            cache_ttl: Duration::ZERO,
            ..RoutingOptions::default()
        },
    );
    let logical = world.source.name().to_owned();

    // Records wait in the source and the replicator reports but writes nothing (throttled,
    // say): the drain cannot finish. (A replicator that does not report at all fails the lag
    // guard, and a forced flip does not wait for it: see the unit tests.)
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(5, 2, 20))
        .await
        .unwrap();
    fanout::aws::table::write_heartbeat(
        &aws_sdk_dynamodb::Client::new(&world.new_account),
        &world.table,
        &fanout::ports::ShardHeartbeat {
            route: world.route().name,
            shard_id: "shardId-000000000000".into(),
            last_seq: None,
            millis_behind: None,
            newest_arrival_ms: None,
            records: 0,
            mode: fanout::control::machine::Mode::Forward,
            by: "a replicator that is throttled".into(),
            now_ms: now_ms(),
        },
    )
    .await
    .unwrap();
    let cutover = flip(
        &migration,
        CommandName::Cutover,
        Some("CHG-7: replicator is down, test the drain"),
        true,
    );
    let r = execute(&alice, &cutover).await;
    assert_eq!(
        (r.outcome, r.exit_code()),
        (Outcome::AwaitingApproval, 5),
        "{}",
        r.message
    );
    let r = execute(&alice, &cutover).await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval);
    assert!(
        r.message.contains("a different person must approve"),
        "{}",
        r.message
    );
    assert_eq!(
        alice.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating
    );

    let r = execute(&bob, &cutover).await;
    assert_eq!(
        (r.outcome, r.exit_code()),
        (Outcome::DrainTimedOut, 2),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("did not catch up within 1000 ms")
            && r.message.contains("released on the old streams"),
        "{}",
        r.message
    );
    let st = alice.control.load(&migration).await.unwrap().unwrap();
    assert_eq!((st.state, st.flip.is_none()), (State::Replicating, true));
    assert_eq!(
        producers.resolve(&logical).await.unwrap().stream,
        world.target.to_string(),
        "producers released where they were"
    );
    let history = alice.control.history(&migration, None).await.unwrap();
    let outcomes: Vec<(&str, Outcome)> = history
        .iter()
        .map(|e| (e.actor.rsplit('/').next().unwrap(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("alice", Outcome::Applied),
            ("alice", Outcome::AwaitingApproval),
            ("alice", Outcome::AwaitingApproval),
            ("bob", Outcome::DrainTimedOut)
        ]
    );
    assert!(
        history[3].detail.contains("still behind"),
        "{}",
        history[3].detail
    );

    // A flip whose process died: its deadline passes, and the next flip releases it first.
    let mut stale = alice.control.load(&migration).await.unwrap().unwrap();
    let expected = stale.version;
    stale.version += 1;
    stale.flip = Some(fanout::control::record::PendingFlip {
        id: "dead".into(),
        action: fanout::control::machine::Action::Cutover,
        actor: "arn:aws:sts::123456789012:assumed-role/oncall/carol".into(),
        started_at_ms: now_ms() - 600_000,
        deadline_ms: now_ms() - 1,
        alive_ms: None,
    });
    assert_eq!(
        alice
            .control
            .write_state(Some(expected), &stale)
            .await
            .unwrap(),
        fanout::aws::control::Write::Done
    );
    // A dry run says so and changes nothing.
    let mut dry = flip(&migration, CommandName::Cutover, Some("after carol"), true);
    dry.dry_run = true;
    let r = execute(&bob, &dry).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(r.message.contains("the abandoned cutover by arn:aws:sts::123456789012:assumed-role/oncall/carol (flip dead) would be released first"), "{}", r.message);
    assert!(alice
        .control
        .load(&migration)
        .await
        .unwrap()
        .unwrap()
        .flip
        .is_some());
    // The real command releases it, then goes on (here: a new request for approval).
    let r = execute(
        &bob,
        &flip(&migration, CommandName::Cutover, Some("after carol"), true),
    )
    .await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval, "{}", r.message);
    let history = alice.control.history(&migration, None).await.unwrap();
    let release = &history[history.len() - 2];
    assert_eq!(release.command, "release");
    assert!(release.detail.contains("released abandoned flip dead (cutover by arn:aws:sts::123456789012:assumed-role/oncall/carol"), "{}", release.detail);
    assert!(alice
        .control
        .load(&migration)
        .await
        .unwrap()
        .unwrap()
        .flip
        .is_none());
}
