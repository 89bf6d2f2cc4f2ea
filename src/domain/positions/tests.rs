//! Translations checked against a simulated replication: source shards replicated batch by
//! batch to target shards that other producers also write, records of a batch written in any
//! order, pairs recorded for some batches only. Every answer is checked record by record:
//! nothing the consumer had not seen is skipped, and every record it sees twice is inside the
//! window the translation states.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::*;

fn sn(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&n.to_string()).unwrap()
}

/// A source record's copy: (source shard, source seq) → (target shard, target seq, written at).
#[derive(Clone, Debug)]
struct Copy {
    source: usize,
    seq: u64,
    target: usize,
    tseq: u64,
}

struct World {
    sources: usize,
    targets: usize,
    copies: Vec<Copy>,
    /// Per target shard: every record on it, (seq, written at, copy index if a copy).
    on_target: Vec<Vec<(u64, i64, Option<usize>)>>,
    /// Per source shard: its records' seqs.
    on_source: Vec<Vec<u64>>,
    /// Per source shard: its records' arrival times (as `on_source`).
    arrivals: Vec<Vec<i64>>,
    positions: Vec<ShardPositions>,
}

fn target_ids(n: usize) -> Vec<String> {
    (0..n).map(|t| format!("t{t}")).collect()
}

fn simulate(rng: &mut StdRng) -> World {
    let (sources, targets) = (rng.random_range(1..=3), rng.random_range(1..=3));
    let mut clock = 1_000i64;
    let mut next_tseq = vec![1u64; targets];
    let mut next_seq = vec![1u64; sources];
    let mut w = World {
        sources,
        targets,
        copies: Vec::new(),
        on_target: vec![Vec::new(); targets],
        on_source: vec![Vec::new(); sources],
        arrivals: vec![Vec::new(); sources],
        positions: (0..sources)
            .map(|s| ShardPositions {
                shard_id: format!("s{s}"),
                ..ShardPositions::default()
            })
            .collect(),
    };
    let mut marks: Vec<Marks> = vec![Marks::new(); sources];
    let mut checkpoint: Vec<u64> = vec![0; sources];
    for _ in 0..rng.random_range(1..40) {
        // Another producer writes the target directly now and then.
        if rng.random_bool(0.3) {
            let t = rng.random_range(0..targets);
            clock += 1;
            w.on_target[t].push((next_tseq[t], clock, None));
            next_tseq[t] += 1;
        }
        let s = rng.random_range(0..sources);
        let n = rng.random_range(1..8);
        let seqs: Vec<u64> = (0..n).map(|i| next_seq[s] + i as u64 * 2).collect();
        next_seq[s] += n as u64 * 2;
        w.on_source[s].extend(&seqs);
        // They arrived a while before the batch that copies them began.
        clock += 1;
        w.arrivals[s].extend(seqs.iter().map(|_| clock - rng.random_range(0..3)));
        clock += 1;
        let started = clock;
        let before = marks[s].clone();
        let mut order = seqs.clone();
        order.shuffle(rng);
        for seq in order {
            let t = rng.random_range(0..targets);
            clock += 1;
            let tseq = next_tseq[t];
            next_tseq[t] += 1;
            w.on_target[t].push((tseq, clock, Some(w.copies.len())));
            w.copies.push(Copy {
                source: s,
                seq,
                target: t,
                tseq,
            });
            raise_mark(&mut marks[s], &format!("t{t}"), &sn(tseq));
        }
        clock += 1;
        let from = checkpoint[s];
        checkpoint[s] = *seqs.last().unwrap();
        // Pairs at a bounded rate: some batches only.
        if rng.random_bool(0.4) {
            w.positions[s].pairs.push(PositionPair {
                route: "r".into(),
                shard_id: format!("s{s}"),
                from: sn(from),
                to: sn(checkpoint[s]),
                before,
                after: marks[s].clone(),
                started_ms: started,
                at_ms: clock,
                to_arrival_ms: w.arrivals[s].last().copied(),
            });
        }
    }
    for s in 0..sources {
        if checkpoint[s] > 0 && rng.random_bool(0.8) {
            w.positions[s].checkpoint = Some((sn(checkpoint[s]), marks[s].clone(), clock));
        }
    }
    w
}

fn window_holds(windows: &[Window], shard: &str, seq: u64) -> bool {
    windows.iter().any(|w| {
        w.shard_id == shard
            && w.after.as_ref().is_none_or(|a| &sn(seq) > a)
            && w.through.as_ref().is_none_or(|t| &sn(seq) <= t)
    })
}

#[test]
fn a_target_consumer_moved_to_the_source_misses_nothing_and_its_duplicates_are_in_the_window() {
    for seed in 0..3000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = simulate(&mut rng);
        // The consumer processed each target shard through some record (or nothing, or all).
        let mut seen = BTreeMap::new();
        let mut through = vec![0u64; w.targets];
        for (t, recs) in w.on_target.iter().enumerate() {
            let pick = rng.random_range(0..=recs.len() + 1);
            match pick {
                0 => {}
                p if p <= recs.len() => {
                    through[t] = recs[p - 1].0;
                    seen.insert(format!("t{t}"), Seen::Through(sn(through[t])));
                }
                _ => {
                    through[t] = u64::MAX;
                    seen.insert(format!("t{t}"), Seen::All);
                }
            }
        }
        let answer = target_to_source(&w.positions, &seen, &BTreeMap::new());
        for s in 0..w.sources {
            let id = format!("s{s}");
            let resume = &answer
                .resume
                .iter()
                .find(|r| r.shard_id == id)
                .unwrap()
                .resume;
            let skips = |seq: u64| match resume {
                Resume::After(x) => &sn(seq) <= x,
                Resume::Nothing => true,
                _ => false,
            };
            for c in w.copies.iter().filter(|c| c.source == s) {
                let was_seen = c.tseq <= through[c.target];
                assert!(
                    !skips(c.seq) || was_seen,
                    "seed {seed}: {id} record {} skipped but never seen ({resume:?})",
                    c.seq
                );
                if was_seen && !skips(c.seq) {
                    assert!(
                        window_holds(&answer.duplicates, &id, c.seq),
                        "seed {seed}: {id} record {} seen twice outside {:?}",
                        c.seq,
                        answer.duplicates
                    );
                }
            }
        }
    }
}

#[test]
fn a_source_consumer_moved_to_the_target_misses_nothing_and_its_duplicates_are_in_the_window() {
    for seed in 0..3000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let w = simulate(&mut rng);
        let mut seen = BTreeMap::new();
        let mut through = vec![0u64; w.sources];
        for (s, recs) in w.on_source.iter().enumerate() {
            let pick = rng.random_range(0..=recs.len());
            if pick > 0 {
                through[s] = recs[pick - 1];
                seen.insert(format!("s{s}"), Seen::Through(sn(through[s])));
            }
        }
        let targets = target_ids(w.targets);
        let answer = source_to_target(&w.positions, &seen, &targets, 0);
        for t in 0..w.targets {
            let resume = &answer.resume[t].resume;
            let reads = |tseq: u64, at: i64| match resume {
                Resume::TrimHorizon => true,
                Resume::After(x) => &sn(tseq) > x,
                Resume::AtTimestamp(ts) => at >= *ts,
                Resume::Nothing => false,
            };
            for &(tseq, at, copy) in &w.on_target[t] {
                let Some(c) = copy.map(|i| &w.copies[i]) else {
                    continue;
                };
                let needed = c.seq > through[c.source];
                assert!(
                    !needed || reads(tseq, at),
                    "seed {seed}: s{} record {} (t{t} {tseq}) not read after resuming {resume:?}",
                    c.source,
                    c.seq
                );
                if !needed && reads(tseq, at) {
                    assert!(
                        window_holds(&answer.duplicates, &format!("s{}", c.source), c.seq),
                        "seed {seed}: s{} record {} seen twice outside {:?}",
                        c.source,
                        c.seq,
                        answer.duplicates
                    );
                }
            }
        }
    }
}

#[test]
fn a_consumer_past_everything_resumes_after_the_checkpoint_with_no_duplicates() {
    let marks = Marks::from([("t0".to_owned(), sn(40)), ("t1".to_owned(), sn(41))]);
    let shard = ShardPositions {
        shard_id: "s0".into(),
        pairs: Vec::new(),
        checkpoint: Some((sn(9), marks, 5_000)),
    };
    let seen = BTreeMap::from([
        ("t0".to_owned(), Seen::Through(sn(40))),
        ("t1".to_owned(), Seen::Through(sn(45))),
    ]);
    let answer = target_to_source(std::slice::from_ref(&shard), &seen, &BTreeMap::new());
    assert_eq!(answer.resume[0].resume, Resume::After(sn(9)));
    // One mark not passed: the consumer may not have seen everything up to 9.
    let behind = BTreeMap::from([
        ("t0".to_owned(), Seen::Through(sn(39))),
        ("t1".to_owned(), Seen::Through(sn(45))),
    ]);
    let answer = target_to_source(std::slice::from_ref(&shard), &behind, &BTreeMap::new());
    assert_eq!(answer.resume[0].resume, Resume::TrimHorizon);
    // A closed shard read to its end needs nothing more.
    let ends = BTreeMap::from([("s0".to_owned(), sn(9))]);
    let answer = target_to_source(&[shard], &seen, &ends);
    assert_eq!(answer.resume[0].resume, Resume::Nothing);
}

#[test]
fn by_time_a_target_consumer_resumes_after_the_last_pair_written_before_then() {
    let pair = |from: u64, to: u64, started: i64, at: i64| PositionPair {
        route: "r".into(),
        shard_id: "s0".into(),
        from: sn(from),
        to: sn(to),
        before: Marks::new(),
        after: Marks::new(),
        started_ms: started,
        at_ms: at,
        to_arrival_ms: None,
    };
    let shard = ShardPositions {
        shard_id: "s0".into(),
        pairs: vec![
            pair(0, 10, 100, 200),
            pair(10, 20, 300, 400),
            pair(20, 30, 500, 600),
        ],
        checkpoint: None,
    };
    let answer = target_time_to_source(&[shard], 450, 10);
    assert_eq!(answer.resume[0].resume, Resume::After(sn(20)));
    assert_eq!(answer.duplicates[0].after, Some(sn(20)));
    assert_eq!(answer.duplicates[0].through, Some(sn(20)));
    let answer = source_time_to_target(&["t0".to_owned()], 450, 1_000);
    assert_eq!(answer.resume[0].resume, Resume::AtTimestamp(-550));
}

#[test]
fn by_time_one_start_for_every_source_shard_misses_nothing() {
    let mut starts = 0;
    for seed in 0..3000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = simulate(&mut rng);
        // Arrival times never go back within a shard.
        for a in &mut w.arrivals {
            for i in 1..a.len() {
                a[i] = a[i].max(a[i - 1]);
            }
        }
        for (s, p) in w.positions.iter_mut().enumerate() {
            for pair in &mut p.pairs {
                let i = w.on_source[s]
                    .iter()
                    .position(|q| sn(*q) == pair.to)
                    .unwrap();
                pair.to_arrival_ms = Some(w.arrivals[s][i]);
            }
        }
        let end = w.on_target.iter().flatten().map(|r| r.1).max().unwrap_or(0);
        let at = rng.random_range(1_000..=end + 2);
        let margin = rng.random_range(0..3);
        let ids: Vec<StreamShard> = (0..w.sources)
            .map(|s| StreamShard {
                shard_id: format!("s{s}"),
                ..StreamShard::default()
            })
            .collect();
        let Ok(start) = target_time_to_source_start(&w.positions, &ids, at, margin) else {
            continue;
        };
        starts += 1;
        // The consumer saw every copy written before `at`; whatever it did not see arrived
        // in the source at or after `start`.
        for c in &w.copies {
            let written = w.on_target[c.target]
                .iter()
                .find(|r| {
                    r.2.is_some_and(|i| w.copies[i].seq == c.seq && w.copies[i].source == c.source)
                })
                .unwrap()
                .1;
            if written < at {
                continue;
            }
            let i = w.on_source[c.source]
                .iter()
                .position(|q| *q == c.seq)
                .unwrap();
            assert!(
                w.arrivals[c.source][i] >= start,
                "seed {seed}: s{} record {} arrived at {} before the start {start} and was \
                 not seen (copied at {written}, consumer through {at})",
                c.source,
                c.seq,
                w.arrivals[c.source][i]
            );
        }
    }
    assert!(starts > 150, "only {starts} seeds had a start");
}

#[test]
fn by_time_a_closed_shard_read_to_its_end_does_not_hold_the_start_back() {
    let pair = |shard: &str, to: u64, at: i64, arrival: i64| PositionPair {
        route: "r".into(),
        shard_id: shard.into(),
        from: sn(to - 1),
        to: sn(to),
        before: Marks::new(),
        after: Marks::new(),
        started_ms: at - 5,
        at_ms: at,
        to_arrival_ms: Some(arrival),
    };
    let shards = vec![
        ShardPositions {
            shard_id: "parent".into(),
            pairs: vec![pair("parent", 9, 100, 90)],
            checkpoint: None,
        },
        ShardPositions {
            shard_id: "child".into(),
            pairs: vec![pair("child", 3, 200, 180), pair("child", 7, 900, 850)],
            checkpoint: None,
        },
    ];
    let stream = |parent_end: u64| {
        vec![
            StreamShard {
                shard_id: "parent".into(),
                ending: Some(sn(parent_end)),
                ..StreamShard::default()
            },
            StreamShard {
                shard_id: "child".into(),
                ..StreamShard::default()
            },
        ]
    };
    // The parent was copied to its end (9) long before: only the child's pair counts.
    assert_eq!(
        target_time_to_source_start(&shards, &stream(9), 1_000, 10),
        Ok(840)
    );
    // Not to its end: its last copied record's arrival holds the start back.
    assert_eq!(
        target_time_to_source_start(&shards, &stream(12), 1_000, 10),
        Ok(80)
    );
    // A shard with nothing recorded that old: the trim horizon, naming it.
    let err = target_time_to_source_start(&shards, &stream(9), 150, 10).unwrap_err();
    assert!(
        err.contains("shard child has no recorded position"),
        "{err}"
    );
}
