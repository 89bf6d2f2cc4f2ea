//! Flips over the in-memory store with paused time: a drain that times out, a drain that
//! catches up, an abandoned flip, a flip in progress, the two-person rule, a lost race.

use std::time::Duration;

use super::memory::{MemoryControl, Shard};
use crate::control::commands::{execute, CommandName, Context, Request};
use crate::control::machine::{Action, Mode, State};
use crate::control::record::{
    LogicalStream, Migration, Outcome, PendingFlip, Settings, StoredState,
};
use crate::time::now_ms;

pub(super) const NEW: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/orders";
pub(super) const OLD: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

pub(super) fn settings() -> Settings {
    Settings {
        settle_ms: 7_000,
        drain_timeout_ms: 30_000,
        ..Settings::default()
    }
}

/// A migration cut over to the new streams (producers there; forward replication on).
pub(super) fn cut_over(settings: Settings) -> StoredState {
    StoredState {
        migration: Migration {
            name: "orders-move".into(),
            streams: vec![LogicalStream {
                name: "orders".into(),
                new: NEW.into(),
                old: OLD.into(),
                forward_route: "orders-forward".into(),
                reverse_route: None,
            }],
            settings,
            bucket: "state-bucket".into(),
            routing_key: "routing/orders-move.json".into(),
            dead_letter_prefix: "dead-letters".into(),
            consumers: Vec::new(),
        },
        state: State::Cutover,
        version: 7,
        paused: false,
        flip: None,
        request: None,
        forward_since_ms: None,
        reverse_since_ms: None,
        updated_at_ms: 0,
        updated_by: "alice".into(),
    }
}

pub(super) fn ctx(store: MemoryControl, actor: &str) -> Context<MemoryControl> {
    Context {
        control: store,
        actor: actor.into(),
        poll: Duration::from_millis(500),
        caller_known: true,
    }
}

pub(super) fn rollback() -> Request {
    Request {
        command: CommandName::Rollback,
        migration: "orders-move".into(),
        reason: Some("errors on the new side".into()),
        ..Request::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_rollback_holds_producers_drains_then_moves_them_and_stops_forward_replication() {
    let store = MemoryControl::new(cut_over(settings()));
    // Behind for the guard and two drain polls, then caught up.
    let since = now_ms() - 5_000;
    *store.shard.lock().unwrap() = vec![
        Shard::Behind { since_ms: since },
        Shard::Behind { since_ms: since },
        Shard::Behind { since_ms: since },
        Shard::Idle,
    ];
    let ctx = ctx(store, "alice");
    let started = tokio::time::Instant::now();
    let r = execute(&ctx, &rollback()).await;

    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(r.state, Some(State::RolledBack));
    let st = ctx.control.stored();
    assert_eq!(
        (st.state, st.version, st.flip),
        (State::RolledBack, 9, None)
    );
    // Producers: held on the new streams, then active on the old ones.
    assert_eq!(
        ctx.control.routing(),
        [
            (NEW.to_owned(), "hold".to_owned()),
            (OLD.to_owned(), "active".to_owned())
        ]
    );
    assert_eq!(
        ctx.control.mode_of("orders-forward").map(|m| m.mode),
        Some(Mode::Stopped)
    );
    // The settle time, then two polls of the drain.
    assert!(started.elapsed() >= Duration::from_millis(7_000 + 2 * 500));
    assert!(r.message.contains("drained in"), "{}", r.message);
    let h = ctx.control.history();
    assert_eq!(h.len(), 1);
    assert_eq!(
        (h[0].outcome, h[0].version_after, h[0].actor.as_str()),
        (Outcome::Applied, Some(9), "alice")
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_times_out_releases_producers_where_they_were_and_changes_no_state() {
    let store = MemoryControl::new(cut_over(settings()));
    *store.shard.lock().unwrap() = vec![Shard::Behind {
        since_ms: now_ms() - 5_000,
    }];
    let ctx = ctx(store, "alice");
    let started = tokio::time::Instant::now();
    let r = execute(&ctx, &rollback()).await;

    assert_eq!(r.outcome, Outcome::DrainTimedOut, "{}", r.message);
    assert_eq!(r.exit_code(), 2);
    assert!(
        r.message.contains("did not catch up within 30000 ms")
            && r.message.contains("orders-forward shardId-000000000000"),
        "{}",
        r.message
    );
    assert!(started.elapsed() >= Duration::from_millis(7_000 + 30_000));
    let st = ctx.control.stored();
    assert_eq!(st.state, State::Cutover, "the state does not change");
    assert_eq!(st.flip, None, "the flip is cleared");
    assert_eq!(st.version, 9);
    assert_eq!(
        ctx.control.routing(),
        [
            (NEW.to_owned(), "hold".to_owned()),
            (NEW.to_owned(), "active".to_owned())
        ],
        "producers released on the streams they were on"
    );
    assert_eq!(
        ctx.control.mode_of("orders-forward"),
        None,
        "modes untouched"
    );
    let h = ctx.control.history();
    assert_eq!(h.last().unwrap().outcome, Outcome::DrainTimedOut);
}

#[tokio::test(start_paused = true)]
async fn a_forced_rollback_does_not_wait_for_a_shard_with_no_replicator_and_says_how_to_make_up() {
    let store = MemoryControl::new(cut_over(settings()));
    *store.shard.lock().unwrap() = vec![Shard::Stuck {
        since_ms: now_ms() - 20_000,
    }];
    let ctx = ctx(store, "alice");
    // Without --force the lag guard refuses: the replicator stopped reporting.
    let r = execute(&ctx, &rollback()).await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    let lag = r.guards.iter().find(|g| g.name == "lag").unwrap();
    assert!(
        lag.detail.contains("no heartbeat for 60 s"),
        "{}",
        lag.detail
    );

    let started = tokio::time::Instant::now();
    let mut forced = rollback();
    forced.force = true;
    let r = execute(&ctx, &forced).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(ctx.control.stored().state, State::RolledBack);
    // The settle and the clock margin; not the 30 s drain timeout.
    assert!(
        started.elapsed() < Duration::from_millis(7_000 + 5_000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.message.contains("NOT DRAINED")
            && r.message.contains("orders-forward shardId-000000000000")
            && r.message.contains("fanoutctl backfill --from")
            && r.message.contains("fanoutctl verify --from"),
        "{}",
        r.message
    );
    assert_eq!(
        ctx.control.routing().last().unwrap(),
        &(OLD.to_owned(), "active".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_flip_is_released_first_and_recorded() {
    let mut st = cut_over(settings());
    st.flip = Some(PendingFlip {
        id: "dead-flip".into(),
        action: Action::Rollback,
        actor: "bob".into(),
        started_at_ms: now_ms() - 600_000,
        deadline_ms: now_ms() - 1_000,
        alive_ms: None,
    });
    let ctx = ctx(MemoryControl::new(st), "alice");
    let r = execute(&ctx, &rollback()).await;

    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let h = ctx.control.history();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].command, "release");
    assert!(h[0]
        .detail
        .contains("released abandoned flip dead-flip (rollback by bob"));
    assert_eq!(h[1].outcome, Outcome::Applied);
    // Released as the state was (producers active on the new streams), then the rollback.
    assert_eq!(
        ctx.control.routing(),
        [
            (NEW.to_owned(), "active".to_owned()),
            (NEW.to_owned(), "hold".to_owned()),
            (OLD.to_owned(), "active".to_owned())
        ]
    );
    assert_eq!(ctx.control.stored().state, State::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn a_flip_with_no_sign_of_life_is_released_by_the_next_status() {
    let mut st = cut_over(settings());
    st.flip = Some(PendingFlip {
        id: "dead-flip".into(),
        action: Action::Rollback,
        actor: "bob".into(),
        started_at_ms: now_ms() - 30_000,
        // Its deadline is minutes away, but its process stopped beating 20 s ago.
        deadline_ms: now_ms() + 600_000,
        alive_ms: Some(now_ms() - 20_000),
    });
    let ctx = ctx(MemoryControl::new(st), "alice");
    let mut status = rollback();
    status.command = CommandName::Status;
    let r = execute(&ctx, &status).await;

    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let st = ctx.control.stored();
    assert_eq!((st.state, st.flip, st.version), (State::Cutover, None, 8));
    assert_eq!(
        ctx.control.routing(),
        [(NEW.to_owned(), "active".to_owned())],
        "producers released where the state says"
    );
    let h = ctx.control.history();
    assert_eq!(h[0].command, "release");
    assert!(
        h[0].detail.contains("no sign of life for 15 s"),
        "{}",
        h[0].detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_flip_keeps_its_sign_of_life_fresh_and_an_interrupted_one_releases_producers() {
    let store = MemoryControl::new(cut_over(settings()));
    *store.shard.lock().unwrap() = vec![Shard::Behind {
        since_ms: now_ms() - 5_000,
    }];
    let ctx = ctx(store, "alice");
    let since = now_ms() - 1_000;
    let req = rollback();
    // Interrupted 12 s in: past the 7 s settle, in the drain.
    let interrupted = tokio::select! {
        r = execute(&ctx, &req) => panic!("the rollback ended: {}", r.message),
        _ = tokio::time::sleep(Duration::from_secs(12)) => true,
    };
    assert!(interrupted);
    let st = ctx.control.stored();
    let flip = st.flip.clone().expect("the flip is still recorded");
    assert!(flip.alive_ms.is_some());
    // The flip's own write, then a sign of life every 3 s.
    assert!(
        *ctx.control.writes.lock().unwrap() > 3,
        "writes: {}",
        ctx.control.writes.lock().unwrap()
    );

    let r = crate::control::commands::release_interrupted(&ctx, &req, since, "SIGINT").await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message
            .contains("rollback interrupted by SIGINT: NOT done")
            && r.message.contains("released on the new streams"),
        "{}",
        r.message
    );
    let st = ctx.control.stored();
    assert_eq!((st.state, st.flip), (State::Cutover, None));
    assert_eq!(
        ctx.control.routing(),
        [
            (NEW.to_owned(), "hold".to_owned()),
            (NEW.to_owned(), "active".to_owned())
        ]
    );
    let h = ctx.control.history();
    assert_eq!(h.last().unwrap().command, "release");
    assert!(h.last().unwrap().detail.contains("interrupted by SIGINT"));
}

#[tokio::test(start_paused = true)]
async fn a_flip_in_progress_is_not_disturbed() {
    let mut st = cut_over(settings());
    let flip = PendingFlip {
        id: "live-flip".into(),
        action: Action::Commit,
        actor: "bob".into(),
        started_at_ms: now_ms() - 1_000,
        deadline_ms: now_ms() + 600_000,
        alive_ms: None,
    };
    st.flip = Some(flip.clone());
    let ctx = ctx(MemoryControl::new(st), "alice");
    let r = execute(&ctx, &rollback()).await;

    assert_eq!(r.outcome, Outcome::LostRace, "{}", r.message);
    assert!(
        r.message.contains("a commit by bob is in progress"),
        "{}",
        r.message
    );
    let st = ctx.control.stored();
    assert_eq!((st.version, st.flip), (7, Some(flip)), "nothing written");
    assert!(ctx.control.routing().is_empty());
}

#[tokio::test(start_paused = true)]
async fn two_person_rule_the_requester_cannot_approve_a_second_identity_can() {
    let st = cut_over(Settings {
        two_person: true,
        ..settings()
    });
    let alice = ctx(MemoryControl::new(st), "alice");
    let r = execute(&alice, &rollback()).await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval, "{}", r.message);
    assert_eq!(r.exit_code(), 5);
    let r = execute(&alice, &rollback()).await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval);
    assert!(
        r.message.contains("requested this rollback already"),
        "{}",
        r.message
    );
    assert!(alice.control.routing().is_empty(), "producers not touched");
    assert_eq!(alice.control.stored().state, State::Cutover);

    let bob = Context {
        actor: "bob".into(),
        ..alice
    };
    let r = execute(&bob, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.message.contains("requested by alice, approved by bob"),
        "{}",
        r.message
    );
    let st = bob.control.stored();
    assert_eq!((st.state, st.request), (State::RolledBack, None));
}

#[tokio::test(start_paused = true)]
async fn two_person_rule_one_person_through_two_sessions_is_one_person() {
    let st = cut_over(Settings {
        two_person: true,
        ..settings()
    });
    let role = ctx(
        MemoryControl::new(st),
        "arn:aws:sts::111111111111:assumed-role/oncall/alice",
    );
    let r = execute(&role, &rollback()).await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval, "{}", r.message);
    // Alice again: as her IAM user, and through another role's session.
    for again in [
        "arn:aws:iam::111111111111:user/alice",
        "arn:aws:sts::111111111111:assumed-role/admin/alice",
    ] {
        let alice = Context {
            actor: again.into(),
            control: MemoryControl::new(role.control.stored()),
            ..ctx(MemoryControl::default(), "")
        };
        let r = execute(&alice, &rollback()).await;
        assert_eq!(
            r.outcome,
            Outcome::AwaitingApproval,
            "{again}: {}",
            r.message
        );
        assert!(r.message.contains("you (alice) requested"), "{}", r.message);
        assert_eq!(alice.control.stored().state, State::Cutover);
    }
    let bob = Context {
        actor: "arn:aws:sts::111111111111:assumed-role/oncall/bob".into(),
        ..role
    };
    let r = execute(&bob, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
}

#[tokio::test(start_paused = true)]
async fn two_person_flips_are_refused_where_the_caller_is_not_known() {
    let st = cut_over(Settings {
        two_person: true,
        ..settings()
    });
    let lambda = Context {
        caller_known: false,
        ..ctx(
            MemoryControl::new(st),
            "arn:aws:sts::1:assumed-role/controller/fn",
        )
    };
    let r = execute(&lambda, &rollback()).await;
    assert_eq!(r.outcome, Outcome::NotAllowed, "{}", r.message);
    assert!(
        r.message
            .contains("Run `fanoutctl rollback --migration orders-move --reason")
            && r.message.contains("function URL"),
        "{}",
        r.message
    );
    let st = lambda.control.stored();
    assert_eq!(
        (st.state, st.request, st.version),
        (State::Cutover, None, 7)
    );
}

#[tokio::test(start_paused = true)]
async fn a_flip_that_moves_producers_needs_a_reason_and_a_committed_migration_says_so() {
    let ctx = ctx(MemoryControl::new(cut_over(settings())), "alice");
    let mut bare = rollback();
    bare.reason = None;
    let r = execute(&ctx, &bare).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(r.message.contains("needs --reason"), "{}", r.message);
    assert_eq!(ctx.control.stored().version, 7, "nothing written");
    assert!(ctx.control.routing().is_empty());
    // A dry run needs none.
    bare.dry_run = true;
    assert_eq!(execute(&ctx, &bare).await.outcome, Outcome::Applied);

    // After a commit, every command that would change something says the same thing.
    let mut committed = cut_over(settings());
    committed.state = State::Committed;
    let ctx = super::flips::ctx(MemoryControl::new(committed), "alice");
    for command in [
        CommandName::Cutover,
        CommandName::Rollback,
        CommandName::Pause,
        CommandName::Resume,
    ] {
        let r = execute(
            &ctx,
            &Request {
                command,
                ..rollback()
            },
        )
        .await;
        assert_eq!(r.outcome, Outcome::NotAllowed, "{command:?}: {}", r.message);
        assert!(
            r.message.contains(crate::control::machine::COMMITTED),
            "{command:?}: {}",
            r.message
        );
    }
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_to_take_the_flip_changes_nothing_and_names_the_winner() {
    let store = MemoryControl::new(cut_over(settings()));
    *store.race_before_write.lock().unwrap() = Some(1);
    let ctx = ctx(store, "alice");
    let r = execute(&ctx, &rollback()).await;

    assert_eq!(r.outcome, Outcome::LostRace, "{}", r.message);
    assert_eq!(r.exit_code(), 4);
    assert!(
        r.message
            .contains("someone-else (version 8, state cutover)"),
        "{}",
        r.message
    );
    assert!(ctx.control.routing().is_empty(), "producers not touched");
    assert_eq!(ctx.control.mode_of("orders-forward"), None);
    assert_eq!(
        ctx.control.history().last().unwrap().outcome,
        Outcome::LostRace
    );
}

#[tokio::test(start_paused = true)]
async fn a_forced_flip_needs_a_reason_and_a_dry_run_writes_nothing() {
    let ctx = ctx(MemoryControl::new(cut_over(settings())), "alice");
    let forced = Request {
        force: true,
        reason: None,
        ..rollback()
    };
    let r = execute(&ctx, &forced).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.message.contains("--force needs --reason"),
        "{}",
        r.message
    );

    let dry = Request {
        dry_run: true,
        ..rollback()
    };
    let r = execute(&ctx, &dry).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        r.message
            .starts_with("dry run: rollback would go cutover → rolled_back"),
        "{}",
        r.message
    );
    assert_eq!(ctx.control.stored().version, 7);
    assert!(ctx.control.routing().is_empty() && ctx.control.history().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_settle_not_longer_than_the_replicators_mode_cache_is_refused_at_start_and_at_a_flip() {
    let template = cut_over(settings());
    let start = |settings: Settings| Request {
        command: CommandName::Start,
        migration: "orders-move".into(),
        streams: template.migration.streams.clone(),
        settings: Some(settings),
        bucket: Some("state-bucket".into()),
        ..Request::default()
    };
    let ctx = ctx(MemoryControl::default(), "alice");
    let short = Settings {
        settle_ms: 1_000,
        ..settings()
    };
    let r = execute(&ctx, &start(short.clone())).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message.contains("(FANOUT_MODE_CACHE_MS = 5000 ms)") && r.message.contains("--settle 6s"),
        "{}",
        r.message
    );
    assert!(
        ctx.control.states.lock().unwrap().is_empty(),
        "nothing stored"
    );
    // Replicators declared with a 500 ms mode cache: a 1 s settle is long enough.
    let declared = Settings {
        mode_cache_ms: Some(500),
        ..short.clone()
    };
    let r = execute(&ctx, &start(declared)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);

    // A migration stored with a settle too short (before the rule) cannot flip.
    let ctx = self::ctx(MemoryControl::new(cut_over(short)), "alice");
    let r = execute(&ctx, &rollback()).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(r.message.contains("start a new one"), "{}", r.message);
    assert!(ctx.control.routing().is_empty() && ctx.control.history().is_empty());
}

/// `start` of a migration named `name` over the tests' streams and routes.
fn start_of(name: &str) -> Request {
    let template = cut_over(settings());
    Request {
        command: CommandName::Start,
        migration: name.into(),
        streams: template.migration.streams,
        settings: Some(settings()),
        bucket: Some("state-bucket".into()),
        ..Request::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_migration_over_a_committed_ones_routes_replicates_and_the_old_one_cannot_steer_them()
{
    // orders-move was committed: its last step (version 9) stopped the forward route.
    let mut st = cut_over(settings());
    st.state = State::Committed;
    st.version = 9;
    let store = MemoryControl::new(st.clone());
    store.modes.lock().unwrap().insert(
        "orders-forward".into(),
        (
            crate::control::machine::RouteMode {
                mode: Mode::Stopped,
                since_ms: None,
            },
            9,
            "orders-move".into(),
        ),
    );
    let ctx = ctx(store, "alice");

    let r = execute(&ctx, &start_of("orders-move-2")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert_eq!(
        ctx.control.mode_of("orders-forward").map(|m| m.mode),
        Some(Mode::Forward),
        "the new migration's first step (version 1) replaces the committed one's last (9)"
    );

    // The committed migration's pause and resume change nothing and say why.
    for command in [CommandName::Pause, CommandName::Resume] {
        let r = execute(
            &ctx,
            &Request {
                command,
                migration: "orders-move".into(),
                ..Request::default()
            },
        )
        .await;
        assert_eq!(r.outcome, Outcome::NotAllowed, "{}", r.message);
        assert!(r.message.contains("is committed"), "{}", r.message);
    }
    assert_eq!(
        ctx.control.mode_of("orders-forward").map(|m| m.mode),
        Some(Mode::Forward)
    );
}

#[tokio::test(start_paused = true)]
async fn a_migration_cannot_start_over_routes_a_live_migration_steers() {
    let ctx = ctx(MemoryControl::default(), "alice");
    let r = execute(&ctx, &start_of("orders-move")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);

    let r = execute(&ctx, &start_of("orders-move-2")).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message.contains(
            "route orders-forward is replicated under migration orders-move, which is replicating"
        ),
        "{}",
        r.message
    );
    assert!(
        ctx.control.stored_of("orders-move-2").is_none(),
        "nothing stored"
    );
}
