//! Replication obeying its mode: a held route writes nothing and loses nothing, and the
//! heartbeats tell an idle shard from a stuck one.

use std::sync::atomic::Ordering;

use fanout::control::machine::{Mode, RouteMode};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_route_writes_nothing_and_loses_nothing_and_heartbeats_tell_idle_from_stuck() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("pause");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    let source = KinesisSource::new(&world.new_account);
    source
        .put_all(&world.source, &records(10, 3, 20))
        .await
        .unwrap();
    assert_eq!(
        wait_for_target(&world, 10, Duration::from_secs(20)).await,
        10
    );

    let p = execute(&ctx, &req(&migration, CommandName::Pause)).await;
    assert_eq!(p.outcome, Outcome::Applied, "{}", p.message);
    assert_eq!(
        ctx.control.mode(&world.route().name).await.unwrap(),
        RouteMode {
            mode: Mode::Hold,
            since_ms: None
        }
    );
    assert_eq!(
        execute(&ctx, &req(&migration, CommandName::Pause))
            .await
            .outcome,
        Outcome::AlreadyThere
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the replicator's mode cache
    source
        .put_all(&world.source, &records(10, 3, 20))
        .await
        .unwrap();
    // Wait until the replicator has met the new records and held them (its heartbeat says
    // so), rather than for a fixed time that would pass even if it never ran.
    let started = std::time::Instant::now();
    let status = loop {
        let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
        let met = status.status.as_ref().is_some_and(|v| {
            v.shards
                .iter()
                .any(|s| s.heartbeat_mode.as_deref() == Some("hold"))
        });
        if met || started.elapsed() > Duration::from_secs(20) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        target_count(&world).await,
        10,
        "nothing is written while held"
    );
    let view = status.status.as_ref().unwrap();
    assert!(view.paused);
    let shard = &view.shards[0];
    assert!(shard.pending && shard.lag_ms > 0, "{shard:?}");
    assert_eq!(shard.heartbeat_mode.as_deref(), Some("hold"));
    assert_eq!(
        shard.condition(view.heartbeat_stale_ms),
        "held",
        "behind because held, and alive"
    );
    assert!(status.render_text().contains("REPLICATION PAUSED"));

    let r = execute(&ctx, &req(&migration, CommandName::Resume)).await;
    assert_eq!(r.outcome, Outcome::Applied);
    assert_eq!(
        wait_for_target(&world, 20, Duration::from_secs(20)).await,
        20,
        "held records follow on resume"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shard = &status.status.as_ref().unwrap().shards[0];
    assert!(!shard.pending && shard.lag_ms == 0, "{shard:?}");
    assert!(
        shard.heartbeat_age_ms.unwrap() < 3000,
        "an idle shard's runner keeps its heartbeat fresh: {shard:?}"
    );
    assert_eq!(shard.condition(60_000), "idle");
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();

    // With no replicator running, records wait and the heartbeat ages: stuck.
    source
        .put_all(&world.source, &records(5, 3, 20))
        .await
        .unwrap();
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shard = &status.status.as_ref().unwrap().shards[0];
    assert!(shard.pending);
    assert_eq!(shard.condition(0), "stuck");
}

/// A second migration over the same streams, after the first was committed, starts clean:
/// its modes replace the committed one's (issue 16, item 1) and its records are replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_migration_over_a_committed_ones_streams_replicates() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    let route = world.route().name;
    let first = unique("first");
    start(
        &world,
        &ctx,
        &first,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    // Through to commit (forced past the verification and capacity guards: nothing to test).
    for command in [CommandName::Cutover, CommandName::Commit] {
        let r = execute(&ctx, &flip(&first, command, Some("test"), true)).await;
        assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    }
    assert_eq!(ctx.control.mode(&route).await.unwrap().mode, Mode::Stopped);

    // Another migration over the same streams and route.
    let second = unique("second");
    start(
        &world,
        &ctx,
        &second,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    assert_eq!(
        ctx.control.mode(&route).await.unwrap().mode,
        Mode::Forward,
        "the new migration's modes replace the committed one's"
    );
    // The committed migration can no longer steer the route.
    let r = execute(&ctx, &req(&first, CommandName::Pause)).await;
    assert_eq!(r.outcome, Outcome::NotAllowed, "{}", r.message);
    assert_eq!(ctx.control.mode(&route).await.unwrap().mode, Mode::Forward);

    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(20, 4, 20))
        .await
        .unwrap();
    let have = wait_for_target(&world, 20, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    replicator.await.unwrap();
    assert_eq!(have, 20, "every record of the new migration is replicated");

    // And a third migration is refused while the second is live.
    let r = execute(
        &ctx,
        &Request {
            streams: vec![stream_of(&world)],
            settings: Some(fast_settings()),
            bucket: Some(world.bucket.clone()),
            ..req(&unique("third"), CommandName::Start)
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.message);
    assert!(
        r.message
            .contains(&format!("is replicated under migration {second}")),
        "{}",
        r.message
    );
}
