//! The runbook's forced rollback with a shard whose replicator died: the lag guard refuses
//! (however small the lag), and `--force` goes through without waiting for that shard's
//! drain, saying what it skipped and how to make up for it.

use fanout::control::machine::{Mode, State};
use fanout::ports::ShardHeartbeat;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_rollback_does_not_wait_for_a_shard_whose_replicator_died() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("forced");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    let settings = Settings {
        // Long enough that waiting for the drain would show.
        drain_timeout_ms: 60_000,
        ..fast_settings()
    };
    start(&world, &ctx, &migration, vec![stream_of(&world)], settings).await;
    let r = execute(
        &ctx,
        &flip(
            &migration,
            CommandName::Cutover,
            Some("INC-1: cut over"),
            true,
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);

    // Records wait, and the shard's replicator last reported 40 s ago: it died.
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(5, 2, 20))
        .await
        .unwrap();
    fanout::aws::table::write_heartbeat(
        &aws_sdk_dynamodb::Client::new(&world.new_account),
        &world.table,
        &ShardHeartbeat {
            route: world.route().name,
            shard_id: "shardId-000000000000".into(),
            last_seq: None,
            millis_behind: None,
            newest_arrival_ms: None,
            records: 3,
            mode: Mode::Forward,
            by: "lambda".into(),
            now_ms: now_ms() - 40_000,
        },
    )
    .await
    .unwrap();

    // The heartbeat is 40 s old when written: 40 s, or a little more on a busy machine.
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let text = status.render_text();
    assert!(
        text.contains("STUCK:") && text.contains("no heartbeat for 4"),
        "{text}"
    );
    let r = execute(
        &ctx,
        &flip(
            &migration,
            CommandName::Rollback,
            Some("INC-1: errors"),
            false,
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    let lag = r.guards.iter().find(|g| g.name == "lag").unwrap();
    assert!(lag.detail.contains("no heartbeat for 4"), "{}", lag.detail);

    let started = Instant::now();
    let r = execute(
        &ctx,
        &flip(
            &migration,
            CommandName::Rollback,
            Some("INC-1: roll back regardless"),
            true,
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the dead shard: {:?}",
        started.elapsed()
    );
    assert!(
        r.message.contains("NOT DRAINED")
            && r.message.contains("shardId-000000000000")
            && r.message.contains("fanoutctl backfill --from"),
        "{}",
        r.message
    );
    let st = ctx.control.load(&migration).await.unwrap().unwrap();
    assert_eq!(st.state, State::RolledBack);
    let last = ctx.control.history(&migration, Some(1)).await.unwrap();
    assert!(last[0].detail.contains("NOT DRAINED"), "{:?}", last[0]);
}
