//! Moving consumers between a migration's two sides: which route's position map answers
//! "where does a consumer of stream X resume on stream Y", and how the answers of a forward
//! and a reverse route combine.

use std::collections::BTreeMap;

use crate::control::record::{LogicalStream, Migration};
use crate::model::StreamArn;
use crate::positions::{
    target_time_to_source_start, Resume, ShardPositions, StreamShard, Translated, Translation,
};

/// Which way a route's positions are translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The consumer read the route's target and moves to its source.
    TargetToSource,
    /// The consumer read the route's source and moves to its target.
    SourceToTarget,
}

/// One route whose copies connect the two streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub route: String,
    pub direction: Direction,
}

/// A consumer's move from one stream of a migration to its counterpart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub stream: LogicalStream,
    pub from: StreamArn,
    pub to: StreamArn,
    /// `to` is the old account's stream.
    pub to_old: bool,
    pub legs: Vec<Leg>,
}

fn same(stream: &str, given: &str) -> bool {
    stream == given || StreamArn::parse(stream).is_ok_and(|a| a.name() == given)
}

/// Finds the logical stream whose new and old streams are `from` and `to` (ARNs or names,
/// either way round) and the routes that connect them.
pub fn resolve(migration: &Migration, from: &str, to: &str) -> Result<Move, String> {
    let found = migration.streams.iter().find_map(|l| {
        if same(&l.new, from) && same(&l.old, to) {
            Some((l, false))
        } else if same(&l.old, from) && same(&l.new, to) {
            Some((l, true))
        } else {
            None
        }
    });
    let Some((stream, from_old)) = found else {
        let pairs: Vec<String> = migration
            .streams
            .iter()
            .map(|l| format!("{} ↔ {}", l.new, l.old))
            .collect();
        return Err(format!(
            "migration {} has no stream pair {from} ↔ {to}. Its pairs (new ↔ old): {}. \
             Give --from and --to as one of them, by name or ARN",
            migration.name,
            pairs.join("; ")
        ));
    };
    let arn = |t: &str| StreamArn::parse(t).map_err(|e| format!("stream {t}: {e}"));
    // The forward route copies new → old; the reverse route, when there is one, old → new.
    let mut legs = vec![Leg {
        route: stream.forward_route.clone(),
        direction: if from_old {
            Direction::TargetToSource
        } else {
            Direction::SourceToTarget
        },
    }];
    if let Some(reverse) = &stream.reverse_route {
        legs.push(Leg {
            route: reverse.clone(),
            direction: if from_old {
                Direction::SourceToTarget
            } else {
                Direction::TargetToSource
            },
        });
    }
    let (from, to) = if from_old {
        (arn(&stream.old)?, arn(&stream.new)?)
    } else {
        (arn(&stream.new)?, arn(&stream.old)?)
    };
    Ok(Move {
        stream: stream.clone(),
        from,
        to,
        to_old: !from_old,
        legs,
    })
}

/// One start for every shard of `mv.to` (a Lambda mapping's `AT_TIMESTAMP`) for a consumer
/// that has processed everything that arrived in `mv.from` before `at_ms`: the earliest over
/// the routes. `positions`: the position map of each route read target → source (the others
/// need none: a copy arrives in its target after its original arrived in the source).
pub fn lambda_start(
    mv: &Move,
    positions: &BTreeMap<String, Vec<ShardPositions>>,
    to_shards: &[StreamShard],
    at_ms: i64,
    margin_ms: i64,
) -> Result<i64, String> {
    let mut start: Option<i64> = None;
    for leg in &mv.legs {
        let one = match leg.direction {
            Direction::TargetToSource => {
                let shards = positions.get(&leg.route).map(Vec::as_slice).unwrap_or(&[]);
                target_time_to_source_start(shards, to_shards, at_ms, margin_ms)
                    .map_err(|e| format!("route {}: {e}", leg.route))?
            }
            Direction::SourceToTarget => at_ms - margin_ms,
        };
        start = Some(start.map_or(one, |s| s.min(one)));
    }
    start.ok_or_else(|| format!("no route copies {} to {}", mv.from, mv.to))
}

/// Two routes' answers for the same shards: each shard resumes at the earlier of the two
/// (a sequence number and a time cannot be compared: then from the trim horizon).
pub fn combine(a: Translation, b: Translation) -> Translation {
    let mut out = a;
    for t in b.resume {
        match out.resume.iter_mut().find(|r| r.shard_id == t.shard_id) {
            None => out.resume.push(t),
            Some(r) => {
                let (resume, because) = earlier(&r.resume, &t.resume, &r.because, &t.because);
                *r = Translated {
                    shard_id: t.shard_id,
                    resume,
                    because,
                };
            }
        }
    }
    out.duplicates.extend(b.duplicates);
    out
}

fn earlier(a: &Resume, b: &Resume, why_a: &str, why_b: &str) -> (Resume, String) {
    use Resume::*;
    match (a, b) {
        (Nothing, x) => (x.clone(), why_b.to_owned()),
        (x, Nothing) => (x.clone(), why_a.to_owned()),
        (TrimHorizon, _) => (TrimHorizon, why_a.to_owned()),
        (_, TrimHorizon) => (TrimHorizon, why_b.to_owned()),
        (After(x), After(y)) => {
            if x <= y {
                (a.clone(), why_a.to_owned())
            } else {
                (b.clone(), why_b.to_owned())
            }
        }
        (AtTimestamp(x), AtTimestamp(y)) => {
            if x <= y {
                (a.clone(), why_a.to_owned())
            } else {
                (b.clone(), why_b.to_owned())
            }
        }
        _ => (
            TrimHorizon,
            format!(
                "two routes give a position and a time ({why_a}; {why_b}): from the trim horizon"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::record::Settings;
    use crate::positions::Window;
    use crate::seq::SequenceNumber;

    const NEW: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";
    const OLD: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/orders-old";

    fn migration(reverse: bool) -> Migration {
        Migration {
            name: "orders-move".into(),
            streams: vec![LogicalStream {
                name: "orders".into(),
                new: NEW.into(),
                old: OLD.into(),
                forward_route: "fwd".into(),
                reverse_route: reverse.then(|| "rev".to_owned()),
            }],
            settings: Settings::default(),
            bucket: "b".into(),
            routing_key: "routing/orders-move.json".into(),
            dead_letter_prefix: "dead-letters".into(),
            consumers: Vec::new(),
        }
    }

    #[test]
    fn a_move_names_the_routes_between_the_two_streams_and_which_way_they_are_read() {
        let mv = resolve(&migration(true), "orders-old", "orders").unwrap();
        assert_eq!(
            (mv.from.to_string(), mv.to.to_string(), mv.to_old),
            (OLD.into(), NEW.into(), false)
        );
        assert_eq!(
            mv.legs,
            [
                Leg {
                    route: "fwd".into(),
                    direction: Direction::TargetToSource
                },
                Leg {
                    route: "rev".into(),
                    direction: Direction::SourceToTarget
                },
            ]
        );
        let back = resolve(&migration(false), NEW, OLD).unwrap();
        assert!(back.to_old);
        assert_eq!(
            back.legs,
            [Leg {
                route: "fwd".into(),
                direction: Direction::SourceToTarget
            }]
        );
    }

    #[test]
    fn streams_that_are_not_a_pair_of_the_migration_are_refused_with_the_pairs_it_has() {
        let err = resolve(&migration(false), "orders-old", "payments").unwrap_err();
        assert!(
            err.contains("no stream pair orders-old ↔ payments")
                && err.contains(&format!("{NEW} ↔ {OLD}")),
            "{err}"
        );
    }

    #[test]
    fn two_routes_answers_combine_to_the_earlier_position() {
        let seq = |n: &str| SequenceNumber::parse(n).unwrap();
        let one = |resume: Resume| Translation {
            resume: vec![Translated {
                shard_id: "s0".into(),
                resume,
                because: "x".into(),
            }],
            duplicates: vec![Window {
                stream: "orders".into(),
                shard_id: "s0".into(),
                after: None,
                through: None,
            }],
        };
        let r = |a, b| combine(one(a), one(b)).resume[0].resume.clone();
        assert_eq!(
            r(Resume::After(seq("5")), Resume::After(seq("3"))),
            Resume::After(seq("3"))
        );
        assert_eq!(
            r(Resume::Nothing, Resume::After(seq("3"))),
            Resume::After(seq("3"))
        );
        assert_eq!(
            r(Resume::AtTimestamp(7), Resume::AtTimestamp(4)),
            Resume::AtTimestamp(4)
        );
        assert_eq!(
            r(Resume::After(seq("5")), Resume::AtTimestamp(4)),
            Resume::TrimHorizon
        );
        assert_eq!(
            r(Resume::TrimHorizon, Resume::After(seq("3"))),
            Resume::TrimHorizon
        );
        assert_eq!(
            combine(one(Resume::Nothing), one(Resume::Nothing))
                .duplicates
                .len(),
            2
        );
    }
}
