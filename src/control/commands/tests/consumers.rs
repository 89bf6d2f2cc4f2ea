//! Lambda consumers: registered, switched by the flips, guarded; those of the old streams
//! switched off at the commit and moved to the new streams.

use super::flips::{ctx, cut_over, rollback, settings, NEW, OLD};
use super::memory::{MemoryControl, Shard};
use crate::control::commands::{execute, CommandName, ConsumerSpec, Request};
use crate::control::machine::State;
use crate::control::record::Outcome;
use crate::ports::control::MappingFacts;

const FUNCTION: &str = "arn:aws:lambda:us-east-1:222222222222:function:billing";

fn mapping(uuid: &str, stream: &str, state: &str) -> MappingFacts {
    MappingFacts {
        uuid: uuid.into(),
        function_arn: FUNCTION.into(),
        stream: stream.into(),
        state: state.into(),
        last_modified_ms: None,
    }
}

fn add(stream: &str, from_start: bool) -> Request {
    Request {
        command: CommandName::ConsumerAdd,
        migration: "orders-move".into(),
        consumers: vec![ConsumerSpec {
            name: "billing".into(),
            function: "billing".into(),
            stream: stream.into(),
            mapping: None,
            from_start,
            ..ConsumerSpec::default()
        }],
        ..Request::default()
    }
}

fn store_with(mappings: &[MappingFacts]) -> MemoryControl {
    let store = MemoryControl::new(cut_over(settings()));
    *store.shard.lock().unwrap() = vec![Shard::Idle];
    for m in mappings {
        store
            .mappings
            .lock()
            .unwrap()
            .insert(m.uuid.clone(), m.clone());
    }
    store
}

fn state_of(ctx: &crate::control::commands::Context<MemoryControl>, uuid: &str) -> String {
    ctx.control.mappings.lock().unwrap()[uuid].state.clone()
}

/// Someone changes a mapping outside fanout.
fn set_state(ctx: &crate::control::commands::Context<MemoryControl>, uuid: &str, state: &str) {
    ctx.control
        .mappings
        .lock()
        .unwrap()
        .get_mut(uuid)
        .unwrap()
        .state = state.into();
}

#[tokio::test(start_paused = true)]
async fn a_consumer_is_registered_set_as_the_state_wants_and_switched_off_by_a_rollback() {
    // Cut over: a consumer of the new stream must be on; its mapping was left disabled.
    let ctx = ctx(store_with(&[mapping("m-1", NEW, "Disabled")]), "alice");
    let r = execute(&ctx, &add("orders", false)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.message.contains("billing (mapping m-1") && r.message.contains("Disabled → Enabled"),
        "{}",
        r.message
    );
    assert_eq!(state_of(&ctx, "m-1"), "Enabled");
    assert_eq!(ctx.control.stored().migration.consumers.len(), 1);
    // Again: nothing to do.
    let again = execute(&ctx, &add("orders", false)).await;
    assert_eq!(again.outcome, Outcome::AlreadyThere, "{}", again.message);

    // The plan says what the rollback does to it; the rollback does it and records it.
    let mut plan = rollback();
    plan.dry_run = true;
    let p = execute(&ctx, &plan).await;
    assert_eq!(
        p.consumers,
        ["consumer billing (mapping m-1): Enabled → Disabled"],
        "{p:?}"
    );
    assert_eq!(
        state_of(&ctx, "m-1"),
        "Enabled",
        "a dry run changes nothing"
    );
    let r = execute(&ctx, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(state_of(&ctx, "m-1"), "Disabled");
    assert!(
        r.message.contains("consumer billing disabled"),
        "{}",
        r.message
    );
    let h = ctx.control.history();
    assert!(
        h.last()
            .unwrap()
            .detail
            .contains("consumer billing disabled"),
        "{h:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_on_from_the_start_stays_on_through_a_rollback() {
    let ctx = ctx(store_with(&[mapping("m-1", NEW, "Enabled")]), "alice");
    assert_eq!(
        execute(&ctx, &add(NEW, true)).await.outcome,
        Outcome::Applied
    );
    let r = execute(&ctx, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(ctx.control.stored().state, State::RolledBack);
    assert_eq!(state_of(&ctx, "m-1"), "Enabled");
}

fn commit() -> Request {
    Request {
        command: CommandName::Commit,
        ..rollback()
    }
}

#[tokio::test(start_paused = true)]
async fn a_mapping_changed_by_hand_stops_a_commit_at_the_consumers_guard() {
    let ctx = ctx(store_with(&[mapping("m-1", NEW, "Enabled")]), "alice");
    assert_eq!(
        execute(&ctx, &add(NEW, false)).await.outcome,
        Outcome::Applied
    );
    let mut plan = commit();
    plan.dry_run = true;
    let g = execute(&ctx, &plan).await;
    assert!(
        g.guards.iter().any(|g| g.name == "consumers" && g.passed),
        "{:?}",
        g.guards
    );
    // Someone disables it while producers are on the new streams.
    set_state(&ctx, "m-1", "Disabled");
    let r = execute(&ctx, &commit()).await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    let g = r.guards.iter().find(|g| g.name == "consumers").unwrap();
    assert!(
        !g.passed
            && g.detail
                .contains("mapping m-1 is Disabled, but Enabled in state cutover")
            && g.detail
                .contains("aws lambda update-event-source-mapping --uuid m-1 --enabled"),
        "{}",
        g.detail
    );
    assert_eq!(ctx.control.stored().state, State::Cutover);
    // Gone altogether: named too.
    ctx.control.mappings.lock().unwrap().clear();
    let r = execute(&ctx, &commit()).await;
    let g = r.guards.iter().find(|g| g.name == "consumers").unwrap();
    assert!(
        g.detail.contains("mapping m-1 does not exist"),
        "{}",
        g.detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollback_is_not_held_up_by_a_consumer_and_sets_it_as_the_rolled_back_state_wants() {
    // On from the start, so Enabled in every state; someone disabled it.
    let ctx = ctx(store_with(&[mapping("m-1", NEW, "Enabled")]), "alice");
    assert_eq!(
        execute(&ctx, &add(NEW, true)).await.outcome,
        Outcome::Applied
    );
    set_state(&ctx, "m-1", "Disabled");
    let r = execute(&ctx, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.guards.iter().all(|g| g.name != "consumers"),
        "{:?}",
        r.guards
    );
    assert_eq!(state_of(&ctx, "m-1"), "Enabled");
    assert!(
        r.message.contains("consumer billing enabled"),
        "{}",
        r.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_is_not_registered_while_a_flip_is_in_progress() {
    let store = store_with(&[mapping("m-1", NEW, "Disabled")]);
    store
        .states
        .lock()
        .unwrap()
        .get_mut("orders-move")
        .unwrap()
        .flip = Some(crate::control::record::PendingFlip {
        id: "f-1".into(),
        action: crate::control::machine::Action::Rollback,
        actor: "bob".into(),
        started_at_ms: crate::time::now_ms(),
        deadline_ms: crate::time::now_ms() + 600_000,
        alive_ms: Some(crate::time::now_ms()),
    });
    let ctx = ctx(store, "alice");
    let r = execute(&ctx, &add(NEW, false)).await;
    assert_eq!(r.outcome, Outcome::LostRace, "{}", r.message);
    assert!(
        r.message.contains("a rollback by bob is in progress"),
        "{}",
        r.message
    );
    assert!(ctx.control.stored().migration.consumers.is_empty());
    assert_eq!(state_of(&ctx, "m-1"), "Disabled");
}

#[tokio::test(start_paused = true)]
async fn a_registration_that_does_not_fit_the_stream_is_refused_and_nothing_is_written() {
    let ctx = ctx(
        store_with(&[
            mapping("m-1", OLD, "Enabled"),
            mapping("m-2", NEW, "Enabled"),
            mapping("m-3", NEW, "Enabled"),
        ]),
        "alice",
    );
    // A consumer of an old stream is looked for in the old account (m-1 is in the new one).
    let r = execute(&ctx, &add(OLD, false)).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message.contains(&format!(
            "no event source mapping of billing on {OLD} in the old account"
        )),
        "{}",
        r.message
    );
    ctx.control
        .old_mappings
        .lock()
        .unwrap()
        .insert("m-old".into(), mapping("m-old", OLD, "Enabled"));
    let r = execute(&ctx, &add(OLD, true)).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message.contains("leave out --from-start"),
        "{}",
        r.message
    );
    let mut moving_new = add(NEW, false);
    moving_new.consumers[0].moves_to_function = Some("billing-new".into());
    let r = execute(&ctx, &moving_new).await;
    assert!(
        r.message
            .contains("is a new stream: only a consumer of an old stream moves"),
        "{}",
        r.message
    );
    let mut bad_lag = add(OLD, false);
    bad_lag.consumers[0].moves_to_function = Some("billing-new".into());
    bad_lag.consumers[0].lag_allowance = Some("five minutes".into());
    let r = execute(&ctx, &bad_lag).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(r.message.contains("--lag-allowance"), "{}", r.message);
    let r = execute(&ctx, &add(NEW, false)).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message.contains("2 mappings of billing") && r.message.contains("give --mapping UUID"),
        "{}",
        r.message
    );
    assert!(ctx.control.stored().migration.consumers.is_empty());
    assert!(ctx.control.history().is_empty());
}

/// A commit past the guards (no verification in these tests).
fn forced_commit() -> Request {
    Request {
        force: true,
        ..commit()
    }
}

/// A pair of the forward route's shard `shard`: every record up to `to` was in the old stream
/// at `at_ms`; the record at `to` arrived in the new stream at `arrival_ms`.
fn pair(shard: &str, to: u64, at_ms: i64, arrival_ms: i64) -> crate::positions::PositionPair {
    let seq = |n: u64| crate::seq::SequenceNumber::parse(&n.to_string()).unwrap();
    crate::positions::PositionPair {
        route: "orders-forward".into(),
        shard_id: shard.into(),
        from: seq(to - 10),
        to: seq(to),
        before: Default::default(),
        after: Default::default(),
        started_ms: at_ms - 50,
        at_ms,
        to_arrival_ms: Some(arrival_ms),
    }
}

/// A consumer of the old stream, moving to the new one at the commit (old mapping m-old,
/// enabled), with the position map of two shards of the forward route.
fn moving_consumer(
    now: i64,
    shards: &[&str],
) -> (crate::control::commands::Context<MemoryControl>, Request) {
    let store = store_with(&[]);
    store
        .old_mappings
        .lock()
        .unwrap()
        .insert("m-old".into(), mapping("m-old", OLD, "Enabled"));
    store.positions.lock().unwrap().insert(
        "orders-forward".into(),
        vec![
            crate::positions::ShardPositions {
                shard_id: "shardId-0".into(),
                pairs: vec![
                    pair("shardId-0", 20, now - 400_000, now - 401_000),
                    pair("shardId-0", 40, now - 200_000, now - 210_000),
                    pair("shardId-0", 60, now - 100_000, now - 101_000),
                ],
                checkpoint: None,
            },
            crate::positions::ShardPositions {
                shard_id: "shardId-1".into(),
                pairs: vec![pair("shardId-1", 30, now - 300_000, now - 305_000)],
                checkpoint: None,
            },
        ],
    );
    *store.stream_shards.lock().unwrap() = shards
        .iter()
        .map(|s| crate::positions::StreamShard {
            shard_id: s.to_string(),
            ..Default::default()
        })
        .collect();
    let ctx = ctx(store, "alice");
    let mut req = add(OLD, false);
    req.consumers[0].moves_to_function = Some("billing-new".into());
    req.consumers[0].lag_allowance = Some("150s".into());
    (ctx, req)
}

#[tokio::test(start_paused = true)]
async fn a_consumer_of_an_old_stream_is_switched_off_at_the_commit_and_moved_from_the_translated_time(
) {
    let now = crate::time::now_ms();
    let (ctx, req) = moving_consumer(now, &["shardId-0", "shardId-1"]);
    let r = execute(&ctx, &req).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.message
            .contains("old account): stays Enabled; at the commit moves to"),
        "{}",
        r.message
    );
    // On through a rollback and a cutover: only the commit switches it off.
    assert_eq!(execute(&ctx, &rollback()).await.outcome, Outcome::Applied);
    assert_eq!(
        ctx.control.old_mappings.lock().unwrap()["m-old"].state,
        "Enabled"
    );
    // (No verification here: past that guard.)
    let cutover = Request {
        command: CommandName::Cutover,
        force: true,
        ..rollback()
    };
    let r = execute(&ctx, &cutover).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let mut plan = commit();
    plan.dry_run = true;
    let p = execute(&ctx, &plan).await;
    assert!(
        p.consumers[0].starts_with(
            "consumer billing (mapping m-old, old account): Enabled → Disabled; then at the \
             commit moves to"
        ),
        "{:?}",
        p.consumers
    );
    assert!(ctx.control.created.lock().unwrap().is_empty());

    let r = execute(&ctx, &forced_commit()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(
        ctx.control.old_mappings.lock().unwrap()["m-old"].state,
        "Disabled"
    );
    // Switched off at about `now`, at most 150 s behind: it had seen everything in the old
    // stream before now - 150 s. Shard 0's last pair before then (less the 1 s margin) is the
    // one at now - 200 s, whose last record arrived at now - 210 s; shard 1's arrived at
    // now - 305 s. The earliest, less the margin:
    let created = ctx.control.created.lock().unwrap().clone();
    assert_eq!(
        created,
        [(
            "billing-new".to_owned(),
            NEW.to_owned(),
            Some(now - 306_000)
        )]
    );
    assert!(
        r.message.contains(&format!(
            "consumer billing moved to {NEW}: mapping created-1"
        )) && r.message.contains("at most 2m30s behind"),
        "{}",
        r.message
    );
    assert!(
        ctx.control
            .history()
            .last()
            .unwrap()
            .detail
            .contains("consumer billing moved"),
        "{:?}",
        ctx.control.history()
    );
    // `status` shows where it went.
    let status = Request {
        command: CommandName::Status,
        ..rollback()
    };
    let view = execute(&ctx, &status)
        .await
        .status
        .unwrap()
        .consumers
        .unwrap();
    let moved = view[0].moved.clone().unwrap();
    assert_eq!(
        (
            moved.len(),
            moved[0].uuid.as_str(),
            view[0].mapping.as_ref().unwrap().state.as_str()
        ),
        (1, "created-1", "Disabled")
    );
}

#[tokio::test(start_paused = true)]
async fn a_moving_consumer_starts_from_the_trim_horizon_when_a_shard_has_no_position_that_old() {
    let now = crate::time::now_ms();
    let (ctx, req) = moving_consumer(now, &["shardId-0", "shardId-1", "shardId-2"]);
    assert_eq!(execute(&ctx, &req).await.outcome, Outcome::Applied);
    let r = execute(&ctx, &forced_commit()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(
        ctx.control.created.lock().unwrap().clone(),
        [("billing-new".to_owned(), NEW.to_owned(), None)]
    );
    assert!(
        r.message.contains(
            "from TRIM_HORIZON (route orders-forward: shard shardId-2 has no recorded position"
        ),
        "{}",
        r.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_moving_consumer_is_not_moved_when_when_it_stopped_is_unknown_or_it_may_still_run() {
    let now = crate::time::now_ms();
    // Deleted by hand before the commit (forced past the guard that says so).
    let (ctx, req) = moving_consumer(now, &["shardId-0"]);
    assert_eq!(execute(&ctx, &req).await.outcome, Outcome::Applied);
    ctx.control.old_mappings.lock().unwrap().clear();
    let r = execute(&ctx, &forced_commit()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.message
            .contains("consumer billing NOT moved: its mapping m-old is not in the old account")
            && r.message.contains("nothing was created")
            && r.message.contains("fanoutctl positions translate --from"),
        "{}",
        r.message
    );
    assert!(ctx.control.created.lock().unwrap().is_empty());

    // Switched off by hand before the commit: when it stopped taking records is unknown.
    let (ctx, req) = moving_consumer(now, &["shardId-0"]);
    assert_eq!(execute(&ctx, &req).await.outcome, Outcome::Applied);
    set_old_state(&ctx, "m-old", "Disabled");
    let r = execute(&ctx, &forced_commit()).await;
    assert!(
        r.message
            .contains("its mapping m-old was Disabled before the commit switched it off")
            && r.message.contains("nothing was created"),
        "{}",
        r.message
    );
    assert!(ctx.control.created.lock().unwrap().is_empty());

    // Lambda does not finish disabling it: no second mapping while it may still invoke; the
    // answer gives the command, with the start, for when it is Disabled.
    let (ctx, req) = moving_consumer(now, &["shardId-0"]);
    assert_eq!(execute(&ctx, &req).await.outcome, Outcome::Applied);
    *ctx.control.disabling_sticks.lock().unwrap() = true;
    let r = execute(&ctx, &forced_commit()).await;
    assert!(
        r.message.contains(
            "consumer billing NOT moved yet: its mapping m-old is still Disabling after 60 s"
        ) && r.message.contains(&format!(
            "--starting-position AT_TIMESTAMP --starting-position-timestamp {}",
            crate::time::rfc3339_ms(now - 211_000)
        )),
        "{}",
        r.message
    );
    assert!(ctx.control.created.lock().unwrap().is_empty());

    // The new function has a mapping on the new stream already (made by someone): not a
    // second one, and the answer says what it must be.
    let (ctx, req) = moving_consumer(now, &["shardId-0"]);
    assert_eq!(execute(&ctx, &req).await.outcome, Outcome::Applied);
    ctx.control.mappings.lock().unwrap().insert(
        "m-theirs".into(),
        MappingFacts {
            function_arn: "arn:aws:lambda:us-east-1:123456789012:function:billing-new".into(),
            ..mapping("m-theirs", NEW, "Disabled")
        },
    );
    // The guard says so before the commit...
    let r = execute(&ctx, &commit()).await;
    let g = r.guards.iter().find(|g| g.name == "consumers").unwrap();
    assert!(
        !g.passed
            && g.detail.contains("billing-new has a mapping on")
            && g.detail.contains("m-theirs Disabled"),
        "{}",
        g.detail
    );
    // ...and a commit forced past it does not make a second one.
    let r = execute(&ctx, &forced_commit()).await;
    assert!(
        r.message.contains("billing-new has a mapping on")
            && r.message.contains("(m-theirs Disabled); none was created")
            && r.message.contains("started no later than AT_TIMESTAMP"),
        "{}",
        r.message
    );
    assert!(ctx.control.created.lock().unwrap().is_empty());
}

fn set_old_state(ctx: &crate::control::commands::Context<MemoryControl>, uuid: &str, state: &str) {
    ctx.control
        .old_mappings
        .lock()
        .unwrap()
        .get_mut(uuid)
        .unwrap()
        .state = state.into();
}
