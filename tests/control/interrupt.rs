//! A flip interrupted by Ctrl-C (SIGINT) releases the producers it held before the process
//! ends, and says so in the history.

use super::*;
use fanout::control::machine::State;
use fanout::routing::StreamMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_flip_releases_producers_and_records_it() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("sigint");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    let settings = Settings {
        settle_ms: 5_000,
        ..fast_settings()
    };
    start(&world, &ctx, &migration, vec![stream_of(&world)], settings).await;

    let args = [
        "cutover",
        "--migration",
        &migration,
        "--force",
        "--reason",
        "interrupt drill",
    ];
    let child = support::spawn_fanoutctl(&world, &[], &args);
    // Wait until the flip holds producers, then press Ctrl-C.
    let started = Instant::now();
    loop {
        let st = ctx.control.load(&migration).await.unwrap().unwrap();
        if st.flip.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cutover never began"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = ctx
        .control
        .fetch_routing(
            &ctx.control
                .load(&migration)
                .await
                .unwrap()
                .unwrap()
                .migration,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        held.streams.values().all(|s| s.mode == StreamMode::Hold),
        "{held:?}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let (code, out, err) = support::finish_within(child, "cutover", Duration::from_secs(60));
    assert_eq!(code, 130, "{out}{err}");
    assert!(out.contains("interrupted by SIGINT"), "{out}");

    let st = ctx.control.load(&migration).await.unwrap().unwrap();
    assert_eq!((st.state, st.flip.is_none()), (State::Replicating, true));
    let doc = ctx
        .control
        .fetch_routing(&st.migration)
        .await
        .unwrap()
        .unwrap();
    let routed = doc.streams.values().next().unwrap();
    assert_eq!(
        (routed.mode, routed.active.as_str()),
        (StreamMode::Active, world.target.to_string().as_str()),
        "producers released on the old streams"
    );
    let history = ctx.control.history(&migration, Some(1)).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.command, "release");
    assert!(last.detail.contains("interrupted by SIGINT"), "{last:?}");
}
