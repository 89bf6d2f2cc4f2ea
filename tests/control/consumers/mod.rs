//! Consumers through a migration: a KCL-style application (its positions in a lease table,
//! KCL's schema) reads the old stream while producers follow the routing document through
//! cutover → rollback → cutover → commit; `fanoutctl positions translate` is checked against
//! the streams mid-way, and at commit `fanoutctl consumers move` moves the application to
//! the new stream, where it carries on. Two Lambda consumers, run the way Lambda runs a
//! mapping held by moto: one of the new stream, switched on and off by the flips, and one of
//! the old stream (its mapping in the old account), which the commit switches off and moves
//! to the new stream with a new mapping at the translated time. Every record is processed,
//! none out of order, and the ones processed twice are inside the window the translation
//! stated.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use fanout::aws::source::StartPosition;
use fanout::seq::SequenceNumber;

use super::drill::{fanoutctl, spawn_producer, verify, Produced};
use super::*;

mod apps;
mod multi_stream;
pub(crate) mod reverse;
use apps::*;

/// `fanoutctl positions translate` of the application's checkpoints on the old stream,
/// checked against the new stream: every record the answer skips was processed, and every
/// record the application would process again is inside the stated window.
async fn translation_holds(
    world: &World,
    migration: &str,
    table: &str,
    processed: &Mutex<Vec<Processed>>,
) {
    let now = leases(&world.new_account, table).await;
    // Read after the checkpoints: the worker records what it processed before it checkpoints,
    // so this holds every record up to them.
    let processed = processed.lock().unwrap().clone();
    let answer = translate_to_new(
        world,
        migration,
        now.iter()
            .map(|(shard, (checkpoint, _))| (shard, checkpoint.clone())),
    );
    // What the checkpoints say was processed: on each old shard, up to its checkpoint.
    let seen: HashSet<(String, u64)> = processed
        .iter()
        .filter(|p| {
            now.get(&p.shard)
                .and_then(|(c, _)| SequenceNumber::parse(c).ok())
                .is_some_and(|c| p.seq <= c)
        })
        .map(|p| (p.key.clone(), p.n))
        .collect();
    let new = drill_records(world, &world.source).await;
    let (mut skipped, mut again) = (0, 0);
    for r in answer["resume"].as_array().unwrap() {
        let shard = r["shard_id"].as_str().unwrap();
        let after = match r["type"].as_str().unwrap() {
            "AFTER_SEQUENCE_NUMBER" => {
                Some(SequenceNumber::parse(r["sequence_number"].as_str().unwrap()).unwrap())
            }
            "TRIM_HORIZON" => None,
            other => panic!("unexpected {other} in {answer}"),
        };
        let window = answer["may_repeat"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["shard_id"] == shard && w["stream"] == world.source.name())
            .unwrap_or_else(|| panic!("no window for {shard}: {answer}"));
        let bound = |w: &serde_json::Value| w.as_str().map(|t| SequenceNumber::parse(t).unwrap());
        let (w_after, w_through) = (bound(&window["after"]), bound(&window["through"]));
        for (_, seq, key, n) in new.iter().filter(|(s, ..)| s == shard) {
            let skips = after.as_ref().is_some_and(|a| seq <= a);
            let was_seen = seen.contains(&(key.clone(), *n));
            assert!(
                !skips || was_seen,
                "{shard} {seq} ({key} {n}) is skipped but was never processed: {answer}"
            );
            if skips {
                skipped += 1;
            } else if was_seen {
                again += 1;
                assert!(
                    w_after.as_ref().is_none_or(|a| seq > a)
                        && w_through.as_ref().is_none_or(|t| seq <= t),
                    "{shard} {seq} ({key} {n}) is read again outside the stated window: {answer}"
                );
            }
        }
    }
    eprintln!(
        "translation mid-drill: {skipped} records of the new stream skipped (all processed), \
         {again} read again (all inside the stated window)"
    );
    assert!(skipped > 0, "the translation skipped nothing: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kcl_application_follows_the_migration_and_moves_to_the_new_stream_at_commit() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let migration = unique("consumers");
    let lease_table = unique("kcl-billing");
    create_lease_table(&world, &lease_table).await;
    let ctl = |args: &[&str]| fanoutctl(&world, &migration, args);
    let (code, _) = ctl(&[
        "start",
        "--settle",
        "1s",
        "--drain-timeout",
        "30s",
        "--reason",
        "consumers drill",
    ]);
    assert_eq!(code, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());

    // The new environment's Lambda consumer: its mapping on the new stream, registered with
    // the migration; off until producers are on the new streams.
    let Some((mapping, function)) = lambda_consumer(&world, &unique("billing")) else {
        return;
    };
    let (code, out) = ctl(&[
        "consumers",
        "add",
        "--name",
        "billing-lambda",
        "--function",
        &function,
        "--stream",
        world.source.name(),
        "--reason",
        "consumers drill",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("billing-lambda (mapping") && out.contains("stays Disabled"),
        "{out}"
    );
    let lambda = aws_sdk_lambda::Client::new(&world.new_account);
    let mapping_state = || {
        let (lambda, mapping) = (lambda.clone(), mapping.clone());
        async move {
            lambda
                .get_event_source_mapping()
                .uuid(&mapping)
                .send()
                .await
                .unwrap()
                .state()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let invoked: Arc<Mutex<Vec<Processed>>> = Arc::default();
    let lambda_runner = spawn_mapping(&world, &mapping, invoked.clone(), stop.clone());

    // The old environment's Lambda consumer: its mapping on the old stream, in the old
    // account, on until the commit, which moves it to the new stream with a new mapping of
    // the new environment's function.
    let audit = unique("audit");
    let audit_new = format!("{audit}-new");
    let Some(old_fn) = lambda_function(
        &world,
        &world.target,
        &audit,
        &["--role", support::stack::WRITER_ROLE, "--enabled"],
    ) else {
        return;
    };
    let audit_mapping = old_fn["mapping"].as_str().unwrap().to_owned();
    lambda_function(&world, &world.source, &audit_new, &["--no-mapping"]).unwrap();
    let (code, out) = ctl(&[
        "consumers",
        "add",
        "--name",
        "audit-lambda",
        "--function",
        &audit,
        "--stream",
        world.target.name(),
        "--moves-to-function",
        &audit_new,
        "--lag-allowance",
        "5s",
        "--reason",
        "consumers drill",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("audit-lambda (mapping {audit_mapping}"))
            && out.contains("old account): stays Enabled; at the commit moves to"),
        "{out}"
    );
    let old_lambda = fanout::aws::verifications::assumed_role_config(
        &world.new_account,
        support::stack::WRITER_ROLE,
        None,
    )
    .await;
    let audited: Arc<Mutex<Vec<Processed>>> = Arc::default();
    let audit_old_stop = Arc::new(AtomicBool::new(false));
    let audit_old = spawn_mapping_on(
        old_lambda.clone(),
        &world,
        &world.target,
        &audit_mapping,
        StartPosition::TrimHorizon,
        audited.clone(),
        audit_old_stop.clone(),
    );
    // The test traffic the first cutover's verification needs.
    let traffic_began = now_ms();
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(30, 5, 20))
        .await
        .unwrap();
    assert_eq!(
        wait_for_target(&world, 30, Duration::from_secs(30)).await,
        30
    );

    // The old environment's application reads the old stream from the start.
    let processed: Arc<Mutex<Vec<Processed>>> = Arc::default();
    let old_app_stop = Arc::new(AtomicBool::new(false));
    let old_app = spawn_worker(
        &world,
        &lease_table,
        world.target.clone(),
        "old-app-1",
        processed.clone(),
        old_app_stop.clone(),
    );
    let (produced, producing, producer) = spawn_producer(&world, &migration);
    let started = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verify(&world, &migration, started - 60_000, now_ms() - 1_000);
    assert_eq!(v["totals"]["missing"], 0, "{v}");
    let after_flip = |n: usize| {
        let produced = produced.clone();
        async move {
            let from = now_ms();
            let deadline = Instant::now() + Duration::from_secs(60);
            while produced
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.at_ms > from)
                .count()
                < n
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // The plan names the consumer's change (whatever the other guards say on a busy machine).
    let (_, plan) = ctl(&["plan", "cutover"]);
    assert!(
        plan.contains(&format!(
            "consumer billing-lambda (mapping {mapping}): Disabled → Enabled"
        )) && plan.contains("pass consumers"),
        "{plan}"
    );
    assert_eq!(
        ctl(&["cutover", "--reason", "consumers drill: first cutover"]).0,
        0
    );
    assert_eq!(
        mapping_state().await,
        "Enabled",
        "the cutover switches the new side's consumer on"
    );
    after_flip(40).await;
    // Mid-drill: the application's checkpoints translated to the new stream.
    translation_holds(&world, &migration, &lease_table, &processed).await;
    assert_eq!(
        ctl(&["rollback", "--reason", "consumers drill: it looks wrong"]).0,
        0
    );
    assert_eq!(
        mapping_state().await,
        "Disabled",
        "a rollback switches it off again"
    );
    after_flip(40).await;
    assert_eq!(
        ctl(&["cutover", "--reason", "consumers drill: try again"]).0,
        0
    );
    assert_eq!(mapping_state().await, "Enabled");
    after_flip(40).await;
    let (code, committed) = ctl(&["commit", "--reason", "consumers drill: done"]);
    assert_eq!(code, 0, "{committed}");
    assert_eq!(
        mapping_state().await,
        "Enabled",
        "after the commit the new side keeps it"
    );
    // The old stream's consumer: switched off, and moved to the new stream.
    assert!(
        committed.contains("consumer audit-lambda disabled")
            && committed.contains(&format!("consumer audit-lambda moved to {}", world.source))
            && committed.contains("from AT_TIMESTAMP "),
        "{committed}"
    );
    let old_state = aws_sdk_lambda::Client::new(&old_lambda)
        .get_event_source_mapping()
        .uuid(&audit_mapping)
        .send()
        .await
        .unwrap();
    assert_eq!(old_state.state(), Some("Disabled"));
    let time_after = |marker: &str| {
        let text = committed.split(marker).nth(1).unwrap();
        let text = text.split([' ', ',', ')']).next().unwrap();
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    };
    let (start, off) = (
        time_after("from AT_TIMESTAMP "),
        time_after("switched off at "),
    );
    let moved: Vec<String> = lambda
        .list_event_source_mappings()
        .event_source_arn(world.source.as_str())
        .send()
        .await
        .unwrap()
        .event_source_mappings()
        .iter()
        .filter(|m| {
            m.function_arn()
                .is_some_and(|f| f.ends_with(&format!(":{audit_new}")))
        })
        .map(|m| m.uuid().unwrap().to_owned())
        .collect();
    assert_eq!(moved.len(), 1, "one new mapping of {audit_new}: {moved:?}");
    // By hand, the same start: `positions translate --at` (what the runbook gives on-call
    // when fanout cannot move a consumer itself) for the time the old mapping had processed.
    let (code, by_hand) = ctl(&[
        "positions",
        "translate",
        "--from",
        world.target.name(),
        "--to",
        world.source.name(),
        "--at",
        &fanout::time::rfc3339_ms(off - 5_000),
    ]);
    assert_eq!(code, 0, "{by_hand}");
    assert!(
        by_hand.contains(&format!(
            "--starting-position AT_TIMESTAMP --starting-position-timestamp {}",
            fanout::time::rfc3339_ms(start)
        )),
        "{by_hand}"
    );
    // What the old mapping had processed when it was switched off (it finishes the page it
    // was on, as Lambda finishes a batch in flight).
    audit_old_stop.store(true, Ordering::SeqCst);
    audit_old.await.unwrap();
    let audited_before_move = audited.lock().unwrap().len();
    let audit_moved = spawn_mapping_on(
        world.new_account.clone(),
        &world,
        &world.source,
        &moved[0],
        StartPosition::AtTimestamp(start),
        audited.clone(),
        stop.clone(),
    );
    let (code, status) = ctl(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("Lambda consumers")
            && status.contains(&format!(
                "billing-lambda   mapping {mapping}  {function}  Enabled"
            ))
            && status.contains(&format!("audit-lambda     mapping {audit_mapping}"))
            && status.contains("Disabled  (old account)")
            && status.contains(&format!("moved to {}: mapping {}", world.source, moved[0]))
            && !status.contains("EXPECTED"),
        "{status}"
    );
    let (_, history) = ctl(&["history"]);
    assert_eq!(
        history.matches("consumer billing-lambda enabled").count(),
        2,
        "both cutovers record it: {history}"
    );
    assert_eq!(
        history.matches("consumer billing-lambda disabled").count(),
        1,
        "{history}"
    );
    after_flip(20).await;

    // The old application finishes the old stream (nothing more comes to it after commit).
    let old_count = drill_records(&world, &world.target).await.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed.lock().unwrap().len() < old_count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still running: the move refuses and changes nothing.
    let before = leases(&world.new_account, &lease_table).await;
    let (old_name, new_name) = (
        world.target.name().to_owned(),
        world.source.name().to_owned(),
    );
    let mv = |extra: &[&str]| {
        let mut args = vec![
            "consumers",
            "move",
            "--kcl-table",
            &lease_table,
            "--from",
            &old_name,
            "--to",
            &new_name,
            "--owner-wait",
            "3s",
            "--reason",
            "consumers drill: move",
        ];
        args.extend_from_slice(extra);
        ctl(&args)
    };
    let (code, out) = mv(&[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("REFUSED: the application is still running") && out.contains("old-app-1"),
        "{out}"
    );
    let still: BTreeMap<String, String> = leases(&world.new_account, &lease_table)
        .await
        .into_iter()
        .map(|(k, (c, _))| (k, c))
        .collect();
    assert_eq!(
        still.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    old_app_stop.store(true, Ordering::SeqCst);
    old_app.await.unwrap();

    let (code, out) = mv(&["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Dry run: nothing changed"), "{out}");
    let (code, out) = mv(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Moved: 2 leases"), "{out}");
    let moved = leases(&world.new_account, &lease_table).await;
    // Run again (someone unsure it went through): nothing is done twice.
    let (code, again) = mv(&[]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("Already moved"), "{again}");
    assert_eq!(leases(&world.new_account, &lease_table).await, moved);
    assert_eq!(moved.len(), 2, "{moved:?}");
    // The move is in the migration's history, once.
    let (_, history) = ctl(&["history"]);
    assert_eq!(history.matches("consumers_move").count(), 1, "{history}");
    assert!(
        history.contains(&format!("KCL lease table {lease_table}")),
        "{history}"
    );

    // The application, now on the new stream, carries on from the translated positions.
    let new_app_stop = Arc::new(AtomicBool::new(false));
    let before_move = processed.lock().unwrap().len();
    let new_app = spawn_worker(
        &world,
        &lease_table,
        world.source.clone(),
        "new-app-1",
        processed.clone(),
        new_app_stop.clone(),
    );
    after_flip(40).await;
    producing.store(false, Ordering::SeqCst);
    producer.await.unwrap();
    let produced: Vec<Produced> = produced.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted: HashSet<(String, u64)> = produced.iter().map(|p| (p.key.clone(), p.n)).collect();
    loop {
        let have: HashSet<(String, u64)> = processed
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.key.clone(), p.n))
            .collect();
        if wanted.is_subset(&have) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Lambda consumer too has read everything producers wrote to the new stream.
    let to_new: HashSet<(String, u64)> = produced
        .iter()
        .filter(|p| p.stream == world.source.to_string())
        .map(|p| (p.key.clone(), p.n))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let have: HashSet<(String, u64)> = invoked
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.key.clone(), p.n))
            .collect();
        if to_new.is_subset(&have) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the moved Lambda consumer has everything producers wrote, on one stream or other.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let have: HashSet<(String, u64)> = audited
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.key.clone(), p.n))
            .collect();
        if wanted.is_subset(&have) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    new_app_stop.store(true, Ordering::SeqCst);
    new_app.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();
    lambda_runner.await.unwrap();
    audit_moved.await.unwrap();
    let audited = audited.lock().unwrap().clone();
    let (missed, duplicates, out_of_order) = judge_consumer(&audited, &wanted);
    eprintln!(
        "Lambda consumer moved at commit: {} records produced, {} processed ({} by the old \
         mapping, {} by the new one from {}), missed {missed}, duplicates {duplicates}, out of \
         order {out_of_order}",
        wanted.len(),
        audited.len(),
        audited_before_move,
        audited.len() - audited_before_move,
        fanout::time::rfc3339_ms(start)
    );
    assert_eq!((missed, out_of_order), (0, 0));
    // The start is at most the switch-off less the lag allowance (5 s) and the margin (1 s):
    // earlier by the quietest shard's last copy before then (here the test traffic, for a
    // shard that got nothing since), never before the first record was written.
    assert!(
        start <= off - 6_000 && start >= traffic_began - 1_000,
        "start {} for a switch-off at {} (traffic began {})",
        fanout::time::rfc3339_ms(start),
        fanout::time::rfc3339_ms(off),
        fanout::time::rfc3339_ms(traffic_began)
    );
    let invoked = invoked.lock().unwrap().clone();
    let (missed, duplicates, out_of_order) = judge_consumer(&invoked, &to_new);
    eprintln!(
        "Lambda consumer: {} records written to the new stream, {} processed, missed {missed}, \
         duplicates {duplicates}, out of order {out_of_order}",
        to_new.len(),
        invoked.len()
    );
    assert_eq!((missed, duplicates, out_of_order), (0, 0, 0));
    assert!(
        to_new.len() > 100,
        "{} records on the new stream",
        to_new.len()
    );

    let processed = processed.lock().unwrap().clone();
    let (missed, duplicates, out_of_order) = judge_consumer(&processed, &wanted);
    let on_new = processed[before_move..]
        .iter()
        .filter(|p| p.stream == world.source.to_string())
        .count();
    eprintln!(
        "KCL-style consumer: {} records produced, {} processed ({} on the old stream, {} on the \
         new after the move), missed {missed}, duplicates {duplicates}, out of order {out_of_order}",
        produced.len(),
        processed.len(),
        processed.len() - on_new,
        on_new
    );
    assert_eq!((missed, out_of_order), (0, 0));
    assert!(
        on_new >= 40,
        "the moved application read {on_new} records on the new stream"
    );
    // Moved after it had read the old stream to its end and replication had stopped: the
    // translation resumes right after the last replicated record, so nothing comes twice.
    assert_eq!(duplicates, 0, "processed twice: {duplicates}");
}
