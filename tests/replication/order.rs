//! Each order mode (strict, aggregated, runs) keeping its promise under failures and shard
//! limits, as consumers read the target; KPL aggregated source records and a target with
//! other shards.

use super::*;

/// The world's configuration with one route in `order` mode and extra settings.
fn config_in(world: &World, order: &str, extra: &[(&'static str, &str)]) -> ReplicatorConfig {
    let mut vars = world.vars();
    vars.insert(
        "FANOUT_ROUTES",
        format!(
            r#"[{{"source":"{}","target":"{}","order":"{order}"}}]"#,
            world.source, world.target
        ),
    );
    for (k, v) in extra {
        vars.insert(k, (*v).to_owned());
    }
    ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()).expect("test configuration")
}

/// The target as its consumers read it: each shard in order, KPL aggregated records
/// deaggregated by AWS's own deaggregator (plain records pass through it unchanged).
/// Payloads are `key|i|…`: returns (key, i) per user record. `None`: no deaggregator here.
async fn target_as_consumers_read_it(world: &World) -> Option<Vec<(String, usize)>> {
    let reader = KinesisSource::new(&world.new_account);
    let stored: Vec<(String, Vec<u8>)> = reader
        .read_all(&world.target)
        .await
        .expect("read target")
        .into_iter()
        .map(|(_, r)| (r.partition_key.unwrap_or_default(), r.data))
        .collect();
    let users = support::deagg::user_records(&stored)?;
    Some(
        users
            .into_iter()
            .map(|(key, data)| {
                let text = String::from_utf8_lossy(&data).into_owned();
                let mut parts = text.split('|');
                let (k, i) = (parts.next().unwrap(), parts.next().unwrap());
                assert_eq!(k, key, "a user record under its own key");
                (key, i.parse().unwrap())
            })
            .collect(),
    )
}

/// Checks the target against `n` source records numbered 0..n: every one present, per key in
/// order of first arrivals (strict, aggregated) or of last arrivals (runs). Returns the copies
/// beyond one per record.
fn check_order(users: &[(String, usize)], n: usize, last_arrivals: bool) -> usize {
    use std::collections::HashMap;
    let mut position: HashMap<usize, usize> = HashMap::new();
    for (at, (_, i)) in users.iter().enumerate() {
        if last_arrivals {
            position.insert(*i, at);
        } else {
            position.entry(*i).or_insert(at);
        }
    }
    let mut present: Vec<usize> = position.keys().copied().collect();
    present.sort_unstable();
    assert_eq!(present, (0..n).collect::<Vec<_>>(), "every record arrived");
    let mut per_key: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, at) in &position {
        per_key.entry(&users[*at].0).or_default().push((*at, *i));
    }
    for (key, mut v) in per_key {
        v.sort_unstable();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "key {key}: {} arrivals out of order",
            if last_arrivals { "last" } else { "first" }
        );
    }
    users.len() - n
}

/// Every order mode under partial failures and under enforced shard limits, on kinesis-local:
/// nothing lost, order as the mode promises, every extra copy counted.
async fn each_order_mode_keeps_its_promise(order: &str) {
    let runs = order == "runs";
    // (name, what the proxy does, extra settings)
    type Case = (
        &'static str,
        FaultPlan,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        ("10%", FaultPlan::mixed_failures(0.1, 31), &[]),
        ("30%", FaultPlan::mixed_failures(0.3, 32), &[]),
        ("50%", FaultPlan::mixed_failures(0.5, 33), &[]),
        (
            "limits",
            FaultPlan::ShardLimits {
                records_per_sec: 300.0,
                bytes_per_sec: 48.0 * 1024.0,
            },
            &[
                ("FANOUT_SHARD_RECORDS_PER_SEC", "300"),
                ("FANOUT_SHARD_BYTES_PER_SEC", "49152"),
            ],
        ),
    ];
    for (name, plan, extra) in cases {
        let Some(world) = World::create(Backend::KinesisLocal, 2, 2).await else {
            return;
        };
        let config = config_in(&world, order, extra);
        write_source(&world, &records(1500, 40, 120)).await;
        let proxy = FaultProxy::start(&world.kinesis_endpoint);
        proxy.set_plan(plan);
        let handler = handler_for(&world, &config, &proxy.endpoint()).await;
        let started = Instant::now();
        let reports = invoke_per_shard(&world, &handler).await;
        let took = started.elapsed();
        assert!(
            reports.iter().all(|r| r.first_unhandled.is_none()),
            "{order} {name}: {reports:?}"
        );
        let Some(users) = target_as_consumers_read_it(&world).await else {
            return;
        };
        let extra_copies = check_order(&users, 1500, runs);
        let duplicates = total(&reports, |r| r.possible_duplicates);
        let repairs = total(&reports, |r| r.repairs);
        let requests = total(&reports, |r| r.requests);
        eprintln!(
            "{order} {name}: {} entries failed by the proxy, {requests} requests, {} user records read, \
             {extra_copies} extra copies, {duplicates} counted as possible duplicates, {repairs} repairs, {:.2} s",
            proxy.entries_failed_injected(),
            users.len(),
            took.as_secs_f64()
        );
        assert_eq!(
            extra_copies, duplicates,
            "{order} {name}: every extra copy is counted"
        );
        if runs {
            assert_eq!(
                repairs, duplicates,
                "{order} {name}: runs' copies are repairs"
            );
        } else {
            assert_eq!(
                extra_copies, 0,
                "{order} {name}: failed entries are not written"
            );
            assert_eq!(repairs, 0);
        }
        if name != "limits" {
            assert!(proxy.entries_failed_injected() > 0, "{order} {name}");
        }
        let c = compare(&world, &config).await;
        assert!(
            c.missing.is_empty() && c.extra == 0,
            "{order} {name}: {c:?}"
        );
        if !runs {
            assert!(c.is_clean(), "{order} {name}: verify agrees: {c:?}");
        }
    }
}

#[tokio::test]
async fn strict_mode_keeps_first_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("strict").await;
}

#[tokio::test]
async fn aggregated_mode_keeps_first_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("aggregated").await;
}

#[tokio::test]
async fn runs_mode_keeps_last_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("runs").await;
}

/// Each open shard of `stream` with its hash range (start, end, shard id).
async fn hash_ranges(sdk: &aws_config::SdkConfig, stream: &StreamArn) -> Vec<(u128, u128, String)> {
    let out = aws_sdk_kinesis::Client::new(sdk)
        .list_shards()
        .stream_arn(stream.as_str())
        .send()
        .await
        .expect("list shards");
    out.shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .map(|s| {
            let r = s.hash_key_range().expect("hash range");
            (
                r.starting_hash_key().parse().unwrap(),
                r.ending_hash_key().parse().unwrap(),
                s.shard_id().to_owned(),
            )
        })
        .collect()
}

/// A producer that uses the KPL writes 4 source shards; the target has 3. The KPL packs the
/// user records of one source shard into each aggregated record, so many of them hold user
/// records of two target shards. A consumer that deaggregates like the KCL keeps only the user
/// records inside the hash range of the shard it reads: none may be lost, per-key order kept.
#[tokio::test]
async fn kpl_aggregated_source_records_survive_a_target_with_other_shards() {
    use fanout::kpl::{hash_key, Aggregator};
    let Some(world) = World::create(Backend::KinesisLocal, 4, 3).await else {
        return;
    };
    let config = world.config();
    let source_ranges = hash_ranges(&world.new_account, &world.source).await;
    // 1,200 user records over 150 keys, aggregated per source shard, 20 per record, in order.
    let mut pending: Vec<Vec<(String, String)>> = vec![Vec::new(); source_ranges.len()];
    let mut aggregated: Vec<(String, Vec<u8>)> = Vec::new();
    let flush = |users: &mut Vec<(String, String)>, out: &mut Vec<(String, Vec<u8>)>| {
        if users.is_empty() {
            return;
        }
        let mut agg = Aggregator::new();
        for (k, d) in users.iter() {
            agg.add(k, None, d.as_bytes());
        }
        out.push((users[0].0.clone(), agg.finish()));
        users.clear();
    };
    for i in 0..1200 {
        let key = format!("user-{}", (i * 7919) % 150);
        let h = hash_key(&key);
        let s = source_ranges
            .iter()
            .position(|(a, b, _)| *a <= h && h <= *b)
            .unwrap();
        pending[s].push((key.clone(), format!("{key}|{i}|")));
        if pending[s].len() == 20 {
            flush(&mut pending[s], &mut aggregated);
        }
    }
    for users in &mut pending {
        flush(users, &mut aggregated);
    }
    write_source(&world, &aggregated).await;

    let handler = handler_for(&world, &config, &world.kinesis_endpoint).await;
    let reports = invoke_per_shard(&world, &handler).await;
    assert!(
        reports.iter().all(|r| r.first_unhandled.is_none()),
        "{reports:?}"
    );
    let split = total(&reports, |r| r.split_records);
    assert!(split > 0, "some aggregated records straddle target shards");

    // Read the target like the KCL: deaggregate, keep what the shard's range holds.
    let target_ranges = hash_ranges(&world.new_account, &world.target).await;
    let reader = KinesisSource::new(&world.new_account);
    let mut kept: Vec<(String, usize)> = Vec::new();
    let mut dropped = 0;
    for (shard, r) in reader.read_all(&world.target).await.expect("read target") {
        let (start, end, _) = target_ranges
            .iter()
            .find(|(_, _, id)| *id == shard)
            .expect("a target shard");
        let stored = [(r.partition_key.clone().unwrap_or_default(), r.data.clone())];
        let Some(users) = support::deagg::user_records_with_hash_keys(&stored) else {
            return;
        };
        for (key, ehk, data) in users {
            let h = ehk.map_or_else(|| hash_key(&key), |e| e.parse().unwrap());
            if h < *start || h > *end {
                dropped += 1;
                continue;
            }
            let text = String::from_utf8(data).unwrap();
            let i: usize = text.split('|').nth(1).unwrap().parse().unwrap();
            kept.push((key, i));
        }
    }
    eprintln!(
        "{} aggregated source records, {split} split by target shard, {} user records kept by a KCL-like reader, {dropped} dropped",
        aggregated.len(),
        kept.len()
    );
    assert_eq!(dropped, 0, "a KCL-like reader drops nothing");
    assert_eq!(check_order(&kept, 1200, false), 0, "no duplicates");
}
