//! Lambda consumers of the new streams: registered, switched by the flips, guarded.

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
async fn only_consumers_of_the_new_streams_are_registered_and_nothing_is_written_otherwise() {
    let ctx = ctx(
        store_with(&[
            mapping("m-1", OLD, "Enabled"),
            mapping("m-2", NEW, "Enabled"),
            mapping("m-3", NEW, "Enabled"),
        ]),
        "alice",
    );
    let r = execute(&ctx, &add(OLD, false)).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(r.message.contains("is an old stream"), "{}", r.message);
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
