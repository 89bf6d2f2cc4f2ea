use super::*;

const KIB: u64 = 1024;

fn target(rtt_ms: f64, shards: u32) -> TargetFacts {
    TargetFacts {
        rtt_ms,
        shards,
        max_record_bytes: 1024 * 1024,
    }
}

/// `rate` records/s of `key` over `secs` seconds, each `bytes` long (data + key).
fn stream(key: &str, rate: u64, secs: u64, bytes: u64) -> Vec<SampledRecord> {
    (0..rate * secs)
        .map(|i| SampledRecord {
            key: key.to_owned(),
            bytes,
            arrival_ms: (i * 1000 / rate) as i64,
        })
        .collect()
}

fn sample(records: Vec<SampledRecord>, secs: i64) -> ShardSample {
    ShardSample {
        shard_id: "shardId-000000000000".into(),
        window_ms: secs * 1000,
        records,
    }
}

fn distinct(rate: u64, secs: u64, bytes: u64) -> Vec<SampledRecord> {
    (0..rate * secs)
        .map(|i| SampledRecord {
            key: format!("customer-{i}"),
            bytes,
            arrival_ms: (i * 1000 / rate) as i64,
        })
        .collect()
}

/// (strict, runs, aggregated): keeps up?
fn verdicts(s: &ShardCapacity) -> (bool, bool, bool) {
    (
        s.mode(OrderMode::Strict).keeps_up,
        s.mode(OrderMode::Runs).keeps_up,
        s.mode(OrderMode::Aggregated).keeps_up,
    )
}

#[test]
fn the_table() {
    let limits = ModelLimits::default();
    struct Case {
        name: &'static str,
        records: Vec<SampledRecord>,
        rtt_ms: f64,
        target_shards: u32,
        /// strict, runs, aggregated
        keeps_up: (bool, bool, bool),
        /// Which bound limits strict, and aggregated.
        strict_bound: Bound,
        aggregated_bound: Bound,
    }
    let cases = vec![
        Case {
            name: "idle shard",
            records: vec![],
            rtt_ms: 25.0,
            target_shards: 1,
            keeps_up: (true, true, true),
            strict_bound: Bound::Idle,
            aggregated_bound: Bound::Idle,
        },
        Case {
            name: "one hot key at 190 rec/s, 25 ms",
            records: stream("tenant-7", 190, 30, KIB),
            rtt_ms: 25.0,
            target_shards: 1,
            keeps_up: (false, true, true),
            strict_bound: Bound::KeyRoundTrips,
            aggregated_bound: Bound::KeyShardLimit,
        },
        Case {
            name: "one key at 30 rec/s, 25 ms: strict keeps up",
            records: stream("tenant-7", 30, 30, KIB),
            rtt_ms: 25.0,
            target_shards: 1,
            keeps_up: (true, true, true),
            strict_bound: Bound::KeyRoundTrips,
            aggregated_bound: Bound::TargetShards,
        },
        Case {
            name: "distinct keys at 900 rec/s, 25 ms",
            records: distinct(900, 30, KIB),
            rtt_ms: 25.0,
            target_shards: 1,
            keeps_up: (true, true, true),
            strict_bound: Bound::TargetShards,
            aggregated_bound: Bound::TargetShards,
        },
        Case {
            name: "distinct keys at 1000 rec/s over 2 target shards",
            records: distinct(1000, 30, KIB),
            rtt_ms: 25.0,
            target_shards: 2,
            keeps_up: (true, true, true),
            strict_bound: Bound::TargetShards,
            aggregated_bound: Bound::TargetShards,
        },
        Case {
            // Aggregation packs one key's records: distinct keys gain nothing from it.
            name: "distinct keys at 1000 rec/s into one target shard: over its 970 rec/s",
            records: distinct(1000, 30, 100),
            rtt_ms: 25.0,
            target_shards: 1,
            keeps_up: (false, false, false),
            strict_bound: Bound::TargetShards,
            aggregated_bound: Bound::TargetShards,
        },
        Case {
            name: "records of 100 KiB at 10 rec/s: one key over a target shard's 993 KiB/s",
            records: stream("big", 10, 30, 100 * KIB),
            rtt_ms: 25.0,
            target_shards: 4,
            keeps_up: (false, false, false),
            strict_bound: Bound::KeyShardLimit,
            aggregated_bound: Bound::KeyShardLimit,
        },
        Case {
            name: "records of 100 KiB at 9 rec/s: bytes limit every mode, aggregated too",
            records: stream("big", 9, 30, 100 * KIB),
            rtt_ms: 25.0,
            target_shards: 4,
            keeps_up: (true, true, true),
            strict_bound: Bound::KeyShardLimit,
            aggregated_bound: Bound::KeyShardLimit,
        },
        Case {
            name: "one key at 190 rec/s, 1 ms (an emulator): strict keeps up",
            records: stream("tenant-7", 190, 30, KIB),
            rtt_ms: 1.0,
            target_shards: 1,
            keeps_up: (true, true, true),
            strict_bound: Bound::KeyShardLimit,
            aggregated_bound: Bound::TargetShards,
        },
    ];
    for c in cases {
        let t = target(c.rtt_ms, c.target_shards);
        let s = assess_shard(&sample(c.records, 30), &t, &limits);
        assert_eq!(verdicts(&s), c.keeps_up, "{}: {}", c.name, s.line(&t));
        assert_eq!(
            s.mode(OrderMode::Strict).bound,
            c.strict_bound,
            "{}: {:?}",
            c.name,
            s.mode(OrderMode::Strict)
        );
        assert_eq!(
            s.mode(OrderMode::Aggregated).bound,
            c.aggregated_bound,
            "{}: {:?}",
            c.name,
            s.mode(OrderMode::Aggregated)
        );
    }
}

#[test]
fn hot_key_numbers_match_the_physics() {
    // 190 rec/s of 1 KiB on one key, 25 ms: strict moves 40/s (0.21×); runs 100 per round
    // trip = 4,000/s, but one key lands on one target shard, which takes 970 records/s
    // (1,000 less 3%): 5.1×; aggregated fits 1,021 records in an aggregated record, so
    // only the shard's 993 KiB/s binds: 5.2×.
    let t = target(25.0, 1);
    let s = assess_shard(
        &sample(stream("tenant-7", 190, 30, KIB), 30),
        &t,
        &ModelLimits::default(),
    );
    let hot = s.hottest_key.as_ref().unwrap();
    assert_eq!(hot.key, "tenant-7");
    assert!((hot.records_per_sec - 190.0).abs() < 0.01);
    let strict = s.mode(OrderMode::Strict);
    assert_eq!(strict.hottest_key_ceiling, Some(40.0));
    assert_eq!(fmt_margin(strict.margin), "0.21×");
    let runs = s.mode(OrderMode::Runs);
    assert_eq!(runs.per_round_trip, 100.0);
    assert_eq!(runs.bound, Bound::KeyShardLimit, "{runs:?}");
    assert_eq!(fmt_margin(runs.margin), "5.1×");
    let agg = s.mode(OrderMode::Aggregated);
    assert_eq!(agg.per_round_trip, 1021.0, "{agg:?}");
    assert_eq!(agg.unit, "bytes/s");
    assert_eq!(fmt_margin(agg.margin), "5.2×");
    assert_eq!(
        s.line(&t),
        "hottest key \"tenant-7\" 190 rec/s; strict keeps up to 40 rec/s per key at 25 ms: \
         NO (0.21×); runs (100 per request): yes, 5.1× [key \"tenant-7\": one target \
         shard's records/s]; aggregated: yes, 5.2× [key \"tenant-7\": one target shard's \
         bytes/s]"
    );
}

#[test]
fn big_records_bound_aggregated_by_bytes_not_round_trips() {
    // 9 records/s of 100 KiB: 900 KiB/s of the key's 993 KiB/s shard budget (1 MiB less
    // 3%). Aggregated packs 10 per aggregated record (400 records/s at 25 ms); the bytes
    // decide: 9.93 records/s.
    let t = target(25.0, 4);
    let s = assess_shard(
        &sample(stream("big", 9, 30, 100 * KIB), 30),
        &t,
        &ModelLimits::default(),
    );
    let agg = s.mode(OrderMode::Aggregated);
    assert_eq!(agg.per_round_trip, 10.0);
    assert_eq!(agg.unit, "bytes/s");
    assert_eq!(agg.limit, "one target shard's bytes/s");
    let ceiling = agg.hottest_key_ceiling.unwrap();
    assert!((ceiling - 9.93).abs() < 0.01, "{ceiling}");
    assert!(agg.keeps_up);
    assert_eq!(fmt_margin(agg.margin), "1.1×");
}

#[test]
fn a_route_is_as_good_as_its_worst_shard_and_its_total() {
    let limits = ModelLimits::default();
    let t = target(25.0, 1);
    let hot = ShardSample {
        shard_id: "shardId-000000000001".into(),
        ..sample(stream("tenant-7", 190, 30, KIB), 30)
    };
    let cold = sample(distinct(10, 30, KIB), 30);
    let r = assess_route(&[cold, hot], &t, &limits);
    let strict = r.mode(OrderMode::Strict);
    assert!(!strict.keeps_up);
    assert_eq!(strict.shard_id.as_deref(), Some("shardId-000000000001"));
    let v = r.verdict("orders", OrderMode::Strict, &t);
    assert_eq!(
        v,
        "orders (strict): CANNOT KEEP UP on shardId-000000000001: key \"tenant-7\" needs \
         190 records/s and strict moves 40 (one record per round trip at 25 ms): 0.21× \
         margin. runs (4.8×) or aggregated (5.0×) would keep up: set \"order\" for this \
         route in FANOUT_ROUTES (and the Terraform route object); see the README's Order \
         modes for what each promises consumers"
    );
    assert_eq!(
        r.verdict("orders", OrderMode::Aggregated, &t),
        "orders (aggregated): keeps up, 5.0× margin (hottest key \"tenant-7\" 190 rec/s on \
         shardId-000000000001; aggregated moves up to 993 rec/s per key at 25 ms)"
    );

    // Two shards of 600 distinct keys/s each: each fits one target shard, the route does
    // not, in any mode (aggregation packs one key's records; these keys have one each).
    let a = sample(distinct(600, 10, 100), 10);
    let b = ShardSample {
        shard_id: "shardId-000000000001".into(),
        ..a.clone()
    };
    let r = assess_route(&[a, b], &t, &limits);
    assert!(r.shards.iter().all(|s| s.mode(OrderMode::Strict).keeps_up));
    for m in &r.modes {
        assert!(!m.keeps_up, "{m:?}");
        assert_eq!(m.bound, Bound::TargetShards);
        assert_eq!(m.shard_id, None);
    }
    let v = r.verdict("orders", OrderMode::Strict, &t);
    assert!(
        v.starts_with(
            "orders (strict): CANNOT KEEP UP: the route (2 source shards) needs 1,200 \
             records/s and strict moves 970 (the records/s of 1 target shard): 0.81× margin."
        ),
        "{v}"
    );
    assert!(v.contains("add shards to the target stream"), "{v}");

    // Idle everywhere.
    let r = assess_route(&[sample(vec![], 30)], &t, &limits);
    assert!(r.modes.iter().all(|m| m.keeps_up && m.margin.is_none()));
    assert!(r.verdict("orders", OrderMode::Strict, &t).contains("idle"));
    assert_eq!(r.shards[0].line(&t), "idle: no records in the 30 s window");
}

#[test]
fn runs_are_cut_by_the_request_limits() {
    let limits = ModelLimits {
        run_length: 500,
        max_request_entries: 200,
        ..ModelLimits::default()
    };
    assert_eq!(run_of(&limits, 1024.0), 200.0);
    // 5 MiB per request holds 51 records of 100 KiB.
    assert_eq!(run_of(&limits, 100.0 * 1024.0), 51.0);
    assert_eq!(run_of(&limits, 10.0 * 1024.0 * 1024.0), 1.0);
}

#[test]
fn aggregates_hold_what_fits_in_the_target_record_limit() {
    let mib = 1024 * 1024;
    // 1 KiB records with an 8-byte key: (1 MiB - 34) / (1016 + 10) = 1021.
    assert_eq!(per_aggregate(1024.0, 8, mib), 1021.0);
    assert_eq!(per_aggregate(2.0 * mib as f64, 8, mib), 1.0);
    assert_eq!(per_aggregate(1024.0, 8, 0), 1.0);
}

#[test]
fn keys_are_shown_cut_to_32_characters() {
    assert_eq!(shown_key("short"), "short");
    let long = "k".repeat(40);
    assert_eq!(shown_key(&long), format!("{}…", "k".repeat(32)));
    let accents = "é".repeat(33);
    assert_eq!(shown_key(&accents), format!("{}…", "é".repeat(32)));
}

#[test]
fn numbers_print_the_way_people_read_them() {
    assert_eq!(fmt_margin(Some(0.2105)), "0.21×");
    assert_eq!(fmt_margin(Some(4.12)), "4.1×");
    assert_eq!(fmt_margin(Some(21.05)), "21×");
    assert_eq!(fmt_margin(None), "idle");
    assert_eq!(fmt_rate(190.0), "190");
    assert_eq!(fmt_rate(12_400.4), "12,400");
    assert_eq!(fmt_rate(0.5), "0.5");
    assert_eq!(fmt_ms(25.0), "25 ms");
    assert_eq!(fmt_ms(1.24), "1.2 ms");
    assert_eq!(fmt_ms(0.4), "0.40 ms");
    assert_eq!(fmt_bytes_rate(19.4 * 1024.0), "19.4 KiB/s");
}

fn rec(key: &str, arrival_ms: i64) -> SampledRecord {
    SampledRecord {
        key: key.into(),
        bytes: 100,
        arrival_ms,
    }
}

fn read(shard: &str, records: Vec<SampledRecord>) -> ShardRead {
    ShardRead {
        shard_id: shard.into(),
        read_until_ms: records.last().map_or(0, |r| r.arrival_ms),
        records,
        complete: true,
    }
}

#[test]
fn combining_takes_the_busier_side_per_key_and_never_both() {
    // The source has test traffic on "t" (2 records) and a copy of producers' "p" is in the
    // target (5 records, producers write there), plus "t"'s 2 copies.
    let source = vec![
        read("shardId-a", vec![rec("t", 10), rec("t", 20)]),
        read("shardId-b", vec![]),
    ];
    let target = vec![read(
        "shardId-old",
        vec![
            rec("p", 1),
            rec("t", 11),
            rec("p", 2),
            rec("t", 21),
            rec("p", 3),
            rec("p", 4),
            rec("p", 5),
        ],
    )];
    let (samples, window) = combine(0, 30_000, &source, &target, |k| usize::from(k == "p"));
    assert_eq!(window, 30_000);
    let keys = |s: &ShardSample| s.records.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&samples[0]), ["t", "t"], "the tie goes to the source");
    assert_eq!(
        keys(&samples[1]),
        ["p"; 5],
        "p lands on the shard its hash says"
    );

    // An incomplete read shortens the window for every side; records past it are left out.
    let mut short = read("shardId-old", vec![rec("p", 1), rec("p", 15_000)]);
    short.complete = false;
    let source = vec![read("shardId-a", vec![rec("t", 10), rec("t", 20_000)])];
    let (samples, window) = combine(0, 30_000, &source, &[short], |_| 0);
    assert_eq!(window, 15_000);
    let arrivals: Vec<i64> = samples[0].records.iter().map(|r| r.arrival_ms).collect();
    assert_eq!(arrivals, [1, 10, 15_000], "{samples:?}");
    assert!(samples.iter().all(|s| s.window_ms == 15_000));
}

fn logical(route: &str) -> LogicalStream {
    LogicalStream {
        name: "orders".into(),
        new: "arn:aws:kinesis:us-east-1:123456789012:stream/orders".into(),
        old: "arn:aws:kinesis:us-east-1:222222222222:stream/orders".into(),
        forward_route: route.into(),
        reverse_route: None,
    }
}

#[test]
fn routes_come_from_fanout_routes_and_a_missing_one_is_checked_as_strict() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    };
    let routes = r#"[{"source":"arn:aws:kinesis:us-east-1:123456789012:stream/orders",
        "target":"arn:aws:kinesis:us-east-1:222222222222:stream/orders","order":"runs",
        "name":"orders-route"}]"#;
    let env = vars(&[
        ("FANOUT_ROUTES", routes),
        ("FANOUT_RUN_LENGTH", "7"),
        (
            "FANOUT_WRITER_ROLE_ARN",
            "arn:aws:iam::222222222222:role/writer",
        ),
    ]);
    let got = configured_routes(&[logical("orders-route"), logical("other")], env).unwrap();
    assert_eq!(got[0].route.order, OrderMode::Runs);
    assert_eq!(got[0].limits.run_length, 7);
    assert_eq!(got[0].note, None);
    assert_eq!(
        got[0].route.writer_role.as_ref().unwrap().role_arn,
        "arn:aws:iam::222222222222:role/writer"
    );
    assert_eq!(got[1].route.order, OrderMode::Strict);
    assert_eq!(got[1].route.name, "other");
    assert_eq!(got[1].limits.run_length, 7);
    assert!(got[1]
        .note
        .as_deref()
        .unwrap()
        .starts_with("route other is not in FANOUT_ROUTES: checked as strict"));

    let got = configured_routes(&[logical("orders-route")], vars(&[])).unwrap();
    assert_eq!(got[0].route.order, OrderMode::Strict);
    assert_eq!(got[0].route.writer_role, None);
    assert!(got[0]
        .note
        .as_deref()
        .unwrap()
        .starts_with("FANOUT_ROUTES is not set: checked as strict"));

    let e = configured_routes(&[logical("r")], vars(&[("FANOUT_ROUTES", "orders")])).unwrap_err();
    assert!(
        e.contains("FANOUT_ROUTES") && e.contains("replicator's value"),
        "{e}"
    );
    let e = configured_routes(&[logical("r")], vars(&[("FANOUT_RUN_LENGTH", "0")])).unwrap_err();
    assert!(e.contains("FANOUT_RUN_LENGTH"), "{e}");
}

#[test]
fn a_route_report_renders_for_people() {
    let route = Route {
        name: "orders".into(),
        source: crate::model::StreamArn::parse(
            "arn:aws:kinesis:us-east-1:123456789012:stream/orders",
        )
        .unwrap(),
        target: crate::model::StreamArn::parse(
            "arn:aws:kinesis:us-east-1:222222222222:stream/orders",
        )
        .unwrap(),
        writer_role: None,
        order: OrderMode::Strict,
    };
    let c = RouteCapacity::new(
        &route,
        &Limits::default(),
        &[
            sample(stream("tenant-7", 190, 30, KIB), 30),
            ShardSample {
                shard_id: "shardId-000000000001".into(),
                ..sample(vec![], 30)
            },
        ],
        0,
        30_000,
        target(25.0, 2),
        "median of 5 DescribeStreamSummary calls".into(),
        vec!["source (2 shards)".into()],
        vec!["a note".into()],
    );
    assert!(!c.keeps_up);
    let text = c.render_text();
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("  shardId-000000000000 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "shardId-000000000000",
            "190",
            "190.0",
            "KiB/s",
            "1",
            "\"tenant-7\"",
            "190",
            "NO",
            "0.21×",
            "yes",
            "5.1×",
            "yes",
            "5.2×"
        ]
    );
    assert!(text.contains("NO 0.21×"), "{text}");
    assert!(text.contains("  note: a note\n"), "{text}");
    assert!(
        text.contains("orders (strict): CANNOT KEEP UP on shardId-000000000000"),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l == l.trim_end()),
        "no trailing blanks"
    );
}
