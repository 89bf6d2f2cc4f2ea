use super::*;

fn rec(seq: u64, key: &str, data: &str) -> (String, SourceRecord) {
    (
        "shardId-000000000000".into(),
        SourceRecord {
            seq: SequenceNumber::parse(&seq.to_string()).unwrap(),
            partition_key: Some(key.into()),
            data: data.as_bytes().to_vec(),
            arrival_ms: None,
            defect: None,
        },
    )
}

#[test]
fn catches_drops_swaps_duplicates_and_extras_and_passes_a_true_copy() {
    let src = vec![
        rec(1, "a", "a1"),
        rec(2, "b", "b1"),
        rec(3, "a", "a2"),
        rec(4, "a", "a3"),
    ];
    let none = HashSet::new();
    let copy = vec![
        rec(9, "b", "b1"),
        rec(10, "a", "a1"),
        rec(11, "a", "a2"),
        rec(12, "a", "a3"),
    ];
    assert!(compare(&src, &copy, &none).is_clean());

    let dropped = vec![rec(9, "a", "a1"), rec(10, "a", "a2"), rec(11, "a", "a3")];
    assert_eq!(compare(&src, &dropped, &none).missing.len(), 1);
    let dl: HashSet<SequenceNumber> = [SequenceNumber::parse("2").unwrap()].into();
    assert!(compare(&src, &dropped, &dl).is_clean());

    let swapped = vec![
        rec(9, "b", "b1"),
        rec(10, "a", "a2"),
        rec(11, "a", "a1"),
        rec(12, "a", "a3"),
    ];
    assert_eq!(compare(&src, &swapped, &none).out_of_order, 1);

    let duplicated = vec![
        rec(9, "b", "b1"),
        rec(10, "a", "a1"),
        rec(11, "a", "a1"),
        rec(12, "a", "a2"),
        rec(13, "a", "a3"),
    ];
    let c = compare(&src, &duplicated, &none);
    assert_eq!((c.duplicates, c.is_clean()), (1, true));

    let extra = vec![
        rec(9, "b", "b1"),
        rec(10, "a", "a1"),
        rec(11, "a", "a2"),
        rec(12, "a", "a3"),
        rec(13, "c", "zz"),
    ];
    assert_eq!(compare(&src, &extra, &none).extra, 1);
}

/// (key, data, arrival) → source; (key, data, arrival) → target.
fn run_engine(
    window: Window,
    src: &[(&str, &str, i64)],
    dst: &[(&str, &str, i64)],
    dead: &[u64],
) -> Findings {
    let mut v = Verifier::new(window, 0, 1, 20);
    let s = v.shard("shardId-000000000000");
    for (i, (k, d, t)) in src.iter().enumerate() {
        let seq = SequenceNumber::parse(&(i + 1).to_string()).unwrap();
        v.add_source(
            s,
            k,
            d.as_bytes(),
            &seq,
            Some(*t),
            dead.contains(&(i as u64 + 1)),
        );
    }
    let s = v.shard("shardId-000000000009");
    for (i, (k, d, t)) in dst.iter().enumerate() {
        let seq = SequenceNumber::parse(&(100 + i).to_string()).unwrap();
        v.add_target(s, k, d.as_bytes(), &seq, Some(*t));
    }
    v.finish()
}

const W: Window = Window {
    from_ms: Some(1000),
    until_ms: 2000,
    grace_ms: 500,
};

#[test]
fn the_window_separates_judged_records_from_context() {
    // s0 before the window (context), s1..s2 inside, s3 after (context).
    let src = [
        ("a", "s0", 700),
        ("a", "s1", 1000),
        ("a", "s2", 2000),
        ("a", "s3", 2300),
    ];
    // Copies of all four, lagging by 100 ms; plus a foreign record before the window
    // (not judged), one inside (extra) and one after until (not judged).
    let dst = [
        ("a", "s0", 800),
        ("a", "s1", 1100),
        ("a", "s2", 2100),
        ("a", "s3", 2400),
        ("x", "old", 900),
        ("x", "new", 1500),
        ("x", "late", 2050),
    ];
    let f = run_engine(W, &src, &dst, &[]);
    let t = &f.totals;
    assert_eq!((t.source_in_window, t.source_context), (2, 2));
    assert_eq!((t.matched, t.missing, t.extra), (2, 0, 1));
    assert_eq!(t.outside_window, 4);
    assert_eq!(t.target_read, 7);
    assert_eq!(f.keys.len(), 1);
    assert_eq!(f.keys[0].key, "x");
    assert_eq!(f.keys[0].examples.extra[0].sequence_number, "105");
    assert_eq!(f.keys[0].examples.extra[0].shard, "shardId-000000000009");

    // A context record with no copy is not missing; an in-window one is.
    let f = run_engine(W, &src, &dst[1..1], &[]);
    assert_eq!((f.totals.missing, f.totals.matched), (2, 0));
    let f = run_engine(W, &src, &[("a", "s1", 1100)], &[]);
    assert_eq!((f.totals.missing, f.totals.matched), (1, 1));
    assert_eq!(f.keys[0].examples.missing[0].sequence_number, "3");
}

#[test]
fn order_counts_first_arrivals_that_come_after_a_later_record() {
    let src = [
        ("a", "1", 1100),
        ("a", "2", 1200),
        ("a", "3", 1300),
        ("b", "1", 1150),
    ];
    let ok = [
        ("b", "1", 1500),
        ("a", "1", 1500),
        ("a", "2", 1500),
        ("a", "3", 1500),
    ];
    assert!(run_engine(W, &src, &ok, &[]).totals.is_clean());
    // A swapped pair: one record out of order.
    let swapped = [
        ("a", "2", 1500),
        ("a", "1", 1500),
        ("a", "3", 1500),
        ("b", "1", 1500),
    ];
    let f = run_engine(W, &src, &swapped, &[]);
    assert_eq!(f.totals.out_of_order, 1);
    assert_eq!(f.keys[0].examples.out_of_order[0].sequence_number, "1");
    // A duplicate after the fact does not count as out of order; the first copy counts.
    let dup = [
        ("a", "1", 1500),
        ("a", "2", 1500),
        ("a", "1", 1500),
        ("a", "3", 1500),
        ("b", "1", 1500),
    ];
    let f = run_engine(W, &src, &dup, &[]);
    assert_eq!((f.totals.duplicates, f.totals.out_of_order), (1, 0));
    assert!(f.totals.is_clean());
    assert_eq!(f.keys[0].examples.duplicates[0].sequence_number, "1");
    // A missing record does not make its successors out of order.
    let gap = [("a", "1", 1500), ("a", "3", 1500), ("b", "1", 1500)];
    let f = run_engine(W, &src, &gap, &[]);
    assert_eq!((f.totals.missing, f.totals.out_of_order), (1, 0));
}

#[test]
fn identical_payloads_are_matched_in_source_order() {
    let src = [
        ("a", "same", 1100),
        ("a", "same", 1200),
        ("a", "other", 1300),
    ];
    let dst = [
        ("a", "same", 1500),
        ("a", "same", 1500),
        ("a", "other", 1500),
    ];
    let f = run_engine(W, &src, &dst, &[]);
    assert_eq!((f.totals.matched, f.totals.duplicates), (3, 0));
    let dst = [("a", "same", 1500), ("a", "other", 1500)];
    let f = run_engine(W, &src, &dst, &[]);
    assert_eq!(f.totals.missing, 1);
    assert_eq!(f.totals.out_of_order, 0);
    let dst = [
        ("a", "same", 1500),
        ("a", "same", 1500),
        ("a", "same", 1500),
    ];
    let f = run_engine(W, &src, &dst, &[]);
    assert_eq!((f.totals.duplicates, f.totals.missing), (1, 1));
}

#[test]
fn dead_letters_are_not_missing_and_examples_are_capped() {
    let src: Vec<(String, String, i64)> = (0..30)
        .map(|i| ("k".to_owned(), format!("d{i}"), 1500))
        .collect();
    let src: Vec<(&str, &str, i64)> = src
        .iter()
        .map(|(k, d, t)| (k.as_str(), d.as_str(), *t))
        .collect();
    let f = run_engine(W, &src, &[], &[1, 2]);
    assert_eq!((f.totals.dead_lettered, f.totals.missing), (2, 28));
    let k = &f.keys[0];
    assert_eq!(k.examples.missing.len(), 20);
    assert!(k.examples_capped);
    assert_eq!(k.examples.dead_lettered.len(), 2);
}

#[test]
fn passes_split_keys_and_add_up_to_one_pass() {
    let src: Vec<(String, String)> = (0..500)
        .map(|i| (format!("key-{}", i % 37), format!("d{i}")))
        .collect();
    let mut dst: Vec<&(String, String)> = src.iter().collect();
    dst.remove(17); // one missing
    dst.push(&src[3]); // one duplicate
    dst.swap(100, 137); // same key (37 apart): one out of order
    let feed = |pass: u32, passes: u32| {
        let mut v = Verifier::new(Window::everything(), pass, passes, 20);
        let s = v.shard("s");
        for (i, (k, d)) in src.iter().enumerate() {
            let seq = SequenceNumber::parse(&(i + 1).to_string()).unwrap();
            v.add_source(s, k, d.as_bytes(), &seq, None, false);
        }
        for (i, (k, d)) in dst.iter().enumerate() {
            let seq = SequenceNumber::parse(&(i + 1).to_string()).unwrap();
            v.add_target(s, k, d.as_bytes(), &seq, None);
        }
        v.finish()
    };
    let one = feed(0, 1);
    assert_eq!(
        (
            one.totals.missing,
            one.totals.duplicates,
            one.totals.out_of_order
        ),
        (1, 1, 1)
    );
    let mut merged = Findings::default();
    for pass in 0..4 {
        let f = feed(pass, 4);
        assert!(f.totals.source_in_window < 500);
        merged.merge(f);
    }
    assert_eq!(merged.totals, one.totals);
    assert_eq!(merged.keys, one.keys);
}

#[test]
fn sequence_numbers_pack_into_24_bytes_and_back() {
    for s in [
        "0",
        "1",
        "9999999999999999999",
        "10000000000000000000",
        "49590338271490256608559692538361571095921575989136588898",
        "999999999999999999999999999999999999999999999999999999999",
    ] {
        let seq = SequenceNumber::parse(s).unwrap();
        assert_eq!(unpack_seq(&pack_seq(&seq).unwrap()), s);
    }
    let long = SequenceNumber::parse(&"7".repeat(60)).unwrap();
    assert!(pack_seq(&long).is_none());
    let mut v = Verifier::new(Window::everything(), 0, 1, 5);
    let s = v.shard("s");
    v.add_source(s, "k", b"d", &long, None, false);
    let f = v.finish();
    assert_eq!(
        f.keys[0].examples.missing[0].sequence_number,
        "7".repeat(60)
    );
    assert_eq!(std::mem::size_of::<Rec>(), 40);
}

#[test]
fn digests_differ_by_key_and_data() {
    assert_ne!(digest("ab", b"c"), digest("a", b"bc"));
    assert_ne!(digest("a", b"x"), digest("b", b"x"));
    assert_eq!(digest("a", b"x"), digest("a", b"x"));
    assert_ne!(digest("a", b"x").0, digest("a", b"x").1);
}

#[test]
fn page_steps_stop_at_the_window_end_the_shard_end_or_the_tip() {
    let end = 2000;
    assert_eq!(
        page_step(&[Some(1), Some(2001), Some(3)], true, Some(5), end, 0),
        PageStep::Stop { keep: 1 }
    );
    assert_eq!(
        page_step(&[Some(1), None], true, Some(5), end, 0),
        PageStep::Continue { keep: 2 }
    );
    assert_eq!(
        page_step(&[Some(1)], false, None, end, 0),
        PageStep::Stop { keep: 1 }
    );
    assert_eq!(
        page_step(&[], true, Some(0), end, 2001),
        PageStep::Stop { keep: 0 }
    );
    assert_eq!(
        page_step(&[], true, None, end, 2001),
        PageStep::Stop { keep: 0 }
    );
    assert_eq!(page_step(&[], true, Some(0), end, 1999), PageStep::Wait);
    // Empty but behind: keep reading (sparse shards on real Kinesis).
    assert_eq!(
        page_step(&[], true, Some(60_000), end, 5000),
        PageStep::Continue { keep: 0 }
    );
}

#[test]
fn shards_are_read_parents_first() {
    let s = |id: &str, p: Option<&str>, a: Option<&str>| crate::model::ShardInfo {
        shard_id: id.into(),
        parent: p.map(Into::into),
        adjacent_parent: a.map(Into::into),
        closed: false,
    };
    let shards = [
        s("c", Some("a"), Some("b")),
        s("d", Some("c"), None),
        s("a", None, None),
        s("b", Some("gone"), None),
    ];
    let levels: Vec<Vec<String>> = crate::lineage::levels(&shards)
        .into_iter()
        .map(|l| l.into_iter().map(|s| s.shard_id).collect())
        .collect();
    assert_eq!(levels, vec![vec!["a", "b"], vec!["c"], vec!["d"]]);
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("5 days").unwrap_err().contains("30s"));
    assert!(parse_duration("").is_err());
}

fn sample_report(totals: Totals, keys: Vec<KeyFindings>, dead: &DeadLetterIndex) -> Report {
    let opts = VerifyOptions {
        source: StreamArn::parse("arn:aws:kinesis:us-east-1:123456789012:stream/orders").unwrap(),
        target: StreamArn::parse("arn:aws:kinesis:us-east-1:222222222222:stream/orders").unwrap(),
        route: "orders--222222222222--orders".into(),
        window: Window {
            from_ms: Some(1_700_000_000_000),
            until_ms: 1_700_003_600_000,
            grace_ms: 30_000,
        },
        partitions: 1,
        read_concurrency: 4,
        example_cap: 20,
        progress: false,
    };
    Report::new(
        &opts,
        Findings { totals, keys },
        dead,
        Timings::default(),
        (4, 3),
        1_700_003_700_000,
        1_700_003_710_000,
    )
}

#[test]
fn text_says_what_failed_which_keys_and_what_to_do() {
    let f = run_engine(
        W,
        &[("a", "1", 1100), ("a", "2", 1200), ("b", "1", 1300)],
        &[("a", "2", 1500), ("a", "1", 1500), ("z", "?", 1500)],
        &[],
    );
    let dead = DeadLetterIndex::new("s3://dlq/dead-letters/r/".into(), []);
    let r = sample_report(f.totals, f.keys, &dead);
    assert_eq!(r.verdict, Verdict::Fail);
    assert_eq!(r.keys[0].key, "a"); // failures first, by key
    let text = r.render_text(20);
    assert!(text.starts_with("FAIL: "), "{text}");
    for words in [
        "\"a\": 1 out of order [shardId-000000000000 1]",
        "\"b\": 1 missing [shardId-000000000000 3]",
        "\"z\": 1 extra (target) [shardId-000000000009 102]",
        "Do not flip",
        "2023-11-14T22:13:20.000Z .. 2023-11-14T23:13:20.000Z",
    ] {
        assert!(text.contains(words), "{words:?} not in:\n{text}");
    }
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("a producer still writes to the target directly"));
    assert!(text
        .lines()
        .filter(|l| l.starts_with("  - "))
        .all(|l| l.chars().count() <= 96));
    let one_key = r.render_text(1);
    assert!(
        one_key.contains("(1 of 3; --output json lists them all)"),
        "{one_key}"
    );

    let clean = sample_report(
        Totals {
            source_in_window: 10,
            matched: 10,
            target_read: 11,
            duplicates: 1,
            ..Totals::default()
        },
        vec![],
        &DeadLetterIndex::unchecked(),
    );
    assert!(clean.is_clean());
    let text = clean.render_text(20);
    assert!(text.starts_with("PASS: "), "{text}");
    assert!(text.contains("NOT CHECKED"), "{text}");
    let json = serde_json::to_value(&clean).unwrap();
    assert_eq!(json["verdict"], "PASS");
    assert_eq!(json["totals"]["duplicates"], 1);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, clean);
}

#[test]
fn an_empty_window_passes_with_a_warning_but_is_no_recent_pass() {
    let r = sample_report(Totals::default(), vec![], &DeadLetterIndex::unchecked());
    assert!(r.is_clean());
    assert!(r.warnings[0].contains("nothing was verified"));
    let rec = r.to_record("me", "host");
    assert!(!rec.is_recent_pass(rec.finished_at_ms, 60_000));
    let mut ok = rec.clone();
    ok.totals.source_in_window = 5;
    assert!(ok.is_recent_pass(ok.finished_at_ms + 1000, 60_000));
    assert!(!ok.is_recent_pass(ok.finished_at_ms + 61_000, 60_000));
}
