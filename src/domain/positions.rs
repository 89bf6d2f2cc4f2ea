//! Positions across a route: which position on one side of a route a consumer resumes from
//! on the other side, with nothing missed, and which records it may see twice.
//!
//! What the replicator records, per (route, source shard):
//! - **marks**: for each target shard, the highest target sequence number this source shard's
//!   records were written at (cumulative; kept in the checkpoint item, so always current);
//! - **pairs**, at a bounded rate: the checkpoint before and after one batch (`from`, `to`),
//!   the marks before and after it, when the batch began and when its checkpoint was written.
//!
//! Two facts make every translation safe, without comparing clocks or sequence numbers
//! across shards:
//! 1. Every record of the source shard up to `to` is in the target, on each target shard `T`
//!    at or below `after[T]` (writes to one shard get increasing sequence numbers, and the
//!    marks are the highest written).
//! 2. Every record after `from` is written by this batch or a later one, so on each target
//!    shard `T` above `before[T]`, and after `started_ms`.
//!
//! A consumer of the **target** that has processed target shard `T` through `p(T)` has
//! therefore seen every source record up to `to` of any pair whose `after` marks it has
//! passed: it resumes on the source after that `to`. A consumer of the **source** that has
//! processed source shard `s` through `q` has seen nothing after `from` of the last pair with
//! `from <= q`: it resumes on each target shard after that pair's `before[T]`.

use std::collections::BTreeMap;

use crate::seq::SequenceNumber;

/// For each target shard, the highest target sequence number written there by one source
/// shard's records.
pub type Marks = BTreeMap<String, SequenceNumber>;

/// Folds `more` into `marks`, keeping the higher sequence number of each shard.
pub fn merge_marks(marks: &mut Marks, more: &Marks) {
    for (shard, seq) in more {
        raise_mark(marks, shard, seq);
    }
}

/// Raises `shard`'s mark to `seq` if that is higher (one written record).
pub fn raise_mark(marks: &mut Marks, shard: &str, seq: &SequenceNumber) {
    match marks.get_mut(shard) {
        Some(have) if &*have >= seq => {}
        Some(have) => *have = seq.clone(),
        None => {
            marks.insert(shard.to_owned(), seq.clone());
        }
    }
}

/// One batch's position pair (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionPair {
    pub route: String,
    /// The source shard.
    pub shard_id: String,
    /// The checkpoint when the batch began ("0": none yet).
    pub from: SequenceNumber,
    /// The checkpoint after it: every record up to here is handled.
    pub to: SequenceNumber,
    pub before: Marks,
    pub after: Marks,
    /// When the batch began writing (epoch ms, the replicator's clock).
    pub started_ms: i64,
    /// When its writes were all answered (epoch ms).
    pub at_ms: i64,
    /// Arrival time of the record at `to` in the source, when known.
    pub to_arrival_ms: Option<i64>,
}

/// What the position map knows of one source shard: its recorded pairs and its checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardPositions {
    pub shard_id: String,
    /// Oldest first (by `to`).
    pub pairs: Vec<PositionPair>,
    /// The checkpoint now: position, marks, when written.
    pub checkpoint: Option<(SequenceNumber, Marks, i64)>,
}

impl ShardPositions {
    /// The pairs and, last, the checkpoint as a pair whose batch is yet to come: everything
    /// after it will be written after its marks and after it was written.
    fn all(&self) -> Vec<PositionPair> {
        let mut pairs = self.pairs.clone();
        pairs.sort_by(|a, b| a.to.cmp(&b.to).then(a.at_ms.cmp(&b.at_ms)));
        if let Some((to, marks, at)) = &self.checkpoint {
            if pairs.last().is_none_or(|p| &p.to <= to) {
                pairs.push(PositionPair {
                    route: String::new(),
                    shard_id: self.shard_id.clone(),
                    from: to.clone(),
                    to: to.clone(),
                    before: marks.clone(),
                    after: marks.clone(),
                    started_ms: *at,
                    at_ms: *at,
                    to_arrival_ms: None,
                });
            }
        }
        pairs
    }
}

/// A shard of a stream as ListShards describes it, for placing a consumer on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamShard {
    pub shard_id: String,
    /// The parent and the adjacent parent, when the shard came from a split or a merge.
    pub parents: Vec<String>,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    /// A closed shard's last sequence number.
    pub ending: Option<SequenceNumber>,
}

/// How far a consumer got on one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing processed (no checkpoint, or one at the trim horizon or latest).
    Nothing,
    /// Every record up to and including this sequence number.
    Through(SequenceNumber),
    /// The whole shard (a closed shard read to its end: KCL's `SHARD_END`).
    All,
}

/// Where a consumer resumes on one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// From the oldest record the stream still holds.
    TrimHorizon,
    /// After this sequence number (Kinesis `AFTER_SEQUENCE_NUMBER`).
    After(SequenceNumber),
    /// From the first record that arrived at or after this time (epoch ms, `AT_TIMESTAMP`).
    AtTimestamp(i64),
    /// Nothing on this shard is needed.
    Nothing,
}

/// The records of one shard a consumer may see twice after resuming: those with sequence
/// numbers above `after` (all, when `None`) and at most `through` (no end, when `None`:
/// up to the last record replicated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The stream of `shard_id` (set by the caller; the translation knows shards only).
    pub stream: String,
    pub shard_id: String,
    pub after: Option<SequenceNumber>,
    pub through: Option<SequenceNumber>,
}

/// One shard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    pub shard_id: String,
    pub resume: Resume,
    /// Why this answer, in words (which pair it rests on, or why it is conservative).
    pub because: String,
}

/// A whole translation: where to resume on each shard of the other side, and which records
/// of which source shards may come twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    pub resume: Vec<Translated>,
    pub duplicates: Vec<Window>,
}

/// The last pair all of whose records (up to its `to`) are passed: `passed(target shard,
/// mark, pair)` says a target position is. Marks only grow, so once a pair's are not all
/// passed no later pair's are.
fn last_passed(
    pairs: &[PositionPair],
    passed: impl Fn(&str, &SequenceNumber, &PositionPair) -> bool,
) -> Option<&PositionPair> {
    let mut marks = Marks::new();
    let mut found = None;
    for pair in pairs {
        merge_marks(&mut marks, &pair.after);
        if !marks.iter().all(|(t, m)| passed(t, m, pair)) {
            break;
        }
        found = Some(pair);
    }
    found
}

fn passed(seen: Option<&Seen>, mark: &SequenceNumber) -> bool {
    match seen {
        Some(Seen::All) => true,
        Some(Seen::Through(p)) => p >= mark,
        Some(Seen::Nothing) | None => false,
    }
}

/// A consumer of the route's **target**, at `seen` on its shards (a shard not listed: nothing
/// seen), moves to the route's **source**: for each source shard, where to resume.
/// `ends`: the last sequence number of each closed source shard.
pub fn target_to_source(
    shards: &[ShardPositions],
    seen: &BTreeMap<String, Seen>,
    ends: &BTreeMap<String, SequenceNumber>,
) -> Translation {
    let mut out = Translation::default();
    for shard in shards {
        let pairs = shard.all();
        let id = shard.shard_id.clone();
        if pairs.is_empty() {
            out.resume.push(Translated {
                shard_id: id.clone(),
                resume: Resume::TrimHorizon,
                because: "nothing of this shard was replicated yet".to_owned(),
            });
            out.duplicates.push(Window {
                stream: String::new(),
                shard_id: id,
                after: None,
                through: None,
            });
            continue;
        }
        let found = last_passed(&pairs, |t, m, _| passed(seen.get(t), m));
        let (resume, because, after) = match found {
            Some(pair) => {
                let resume = match ends.get(&id) {
                    Some(end) if &pair.to >= end => Resume::Nothing,
                    _ => Resume::After(pair.to.clone()),
                };
                let because = format!(
                    "the consumer has passed every target position of this shard's records up to {} (recorded {})",
                    pair.to,
                    crate::time::rfc3339_ms(pair.at_ms)
                );
                (resume, because, Some(pair.to.clone()))
            }
            None => (
                Resume::TrimHorizon,
                format!(
                    "the consumer has not passed the oldest recorded position of this shard ({}, recorded {}): \
                     it resumes from the trim horizon",
                    pairs[0].to,
                    crate::time::rfc3339_ms(pairs[0].at_ms)
                ),
                None,
            ),
        };
        // Records from a pair's batch on are above its `before` marks: a consumer below all
        // of them (or on a shard this source shard has not written to since) saw none.
        let unseen_from = pairs.iter().find(|k| {
            after.as_ref().is_some_and(|a| &k.from >= a)
                && seen.iter().all(|(t, s)| match (s, k.before.get(t)) {
                    (Seen::Nothing, _) => true,
                    (Seen::Through(p), Some(b)) => p <= b,
                    // A shard read to its end, or one this source shard had not written to
                    // before the batch: the batch's records may be there.
                    (Seen::All, _) | (Seen::Through(_), None) => false,
                })
        });
        out.duplicates.push(Window {
            stream: String::new(),
            shard_id: id.clone(),
            through: unseen_from.map(|k| k.from.clone()),
            after,
        });
        out.resume.push(Translated {
            shard_id: id,
            resume,
            because,
        });
    }
    out
}

/// A consumer of the route's **source**, at `seen` on its shards (a shard not listed: nothing
/// seen), moves to the route's **target**: where to resume on each of `targets` (the target
/// stream's shards). `margin_ms` covers clock differences for timestamp answers.
pub fn source_to_target(
    shards: &[ShardPositions],
    seen: &BTreeMap<String, Seen>,
    targets: &[String],
    margin_ms: i64,
) -> Translation {
    let mut out = Translation::default();
    // Per target shard: the lowest `before` mark over the source shards, whether some source
    // shard has no mark there (a timestamp is then needed), and the earliest batch start.
    let mut lowest: BTreeMap<&str, SequenceNumber> = BTreeMap::new();
    let mut unmarked: BTreeMap<&str, bool> = BTreeMap::new();
    let mut earliest: Option<i64> = None;
    let mut horizon: Vec<String> = Vec::new();
    let mut moved: Vec<(&ShardPositions, &SequenceNumber)> = Vec::new();
    for shard in shards {
        let id = &shard.shard_id;
        let q = match seen.get(id) {
            Some(Seen::All) => continue,
            Some(Seen::Through(q)) => q,
            Some(Seen::Nothing) | None => {
                horizon.push(format!("{id}: nothing processed"));
                out.duplicates.push(Window {
                    stream: String::new(),
                    shard_id: id.clone(),
                    after: None,
                    through: None,
                });
                continue;
            }
        };
        let pairs = shard.all();
        let Some(k) = pairs.iter().rev().find(|p| &p.from <= q) else {
            horizon.push(format!(
                "{id}: {q} is older than the oldest recorded position ({})",
                pairs
                    .first()
                    .map(|p| p.from.to_string())
                    .unwrap_or_default()
            ));
            out.duplicates.push(Window {
                stream: String::new(),
                shard_id: id.clone(),
                after: None,
                through: Some(q.clone()),
            });
            continue;
        };
        for t in targets {
            match k.before.get(t) {
                Some(b) => {
                    let low = lowest.entry(t).or_insert_with(|| b.clone());
                    if b < low {
                        *low = b.clone();
                    }
                }
                None => {
                    unmarked.insert(t, true);
                }
            }
        }
        earliest = Some(earliest.map_or(k.started_ms, |e| e.min(k.started_ms)));
        moved.push((shard, q));
    }
    for t in targets {
        let (resume, because) = if !horizon.is_empty() {
            (
                Resume::TrimHorizon,
                format!("no recorded position covers {}", horizon.join("; ")),
            )
        } else if let (true, Some(at)) =
            (unmarked.get(t.as_str()).copied().unwrap_or(false), earliest)
        {
            (
                Resume::AtTimestamp(at - margin_ms),
                "a source shard had written nothing to this shard before the consumer's position: \
                 from the earliest batch start, less the clock margin"
                    .to_owned(),
            )
        } else if let Some(low) = lowest.get(t.as_str()) {
            (
                Resume::After(low.clone()),
                "after the lowest target position written before the consumer's positions"
                    .to_owned(),
            )
        } else {
            (
                Resume::Nothing,
                "the consumer has processed every source shard to its end".to_owned(),
            )
        };
        out.resume.push(Translated {
            shard_id: t.clone(),
            resume,
            because,
        });
    }
    // What the consumer reads again of a source shard: its records through `q` not below
    // every resume point, i.e. after the last pair whose records all are.
    for (shard, q) in moved {
        let pairs = shard.all();
        let below = last_passed(&pairs, |t, m, pair| {
            match out
                .resume
                .iter()
                .find(|r| r.shard_id == t)
                .map(|r| &r.resume)
            {
                Some(Resume::After(r)) => m <= r,
                Some(Resume::AtTimestamp(ts)) => pair.at_ms < *ts,
                Some(Resume::TrimHorizon) => false,
                Some(Resume::Nothing) | None => true,
            }
        });
        out.duplicates.push(Window {
            stream: String::new(),
            shard_id: shard.shard_id.clone(),
            after: below.map(|p| p.to.clone().min(q.clone())),
            through: Some(q.clone()),
        });
    }
    out
}

/// A consumer of the route's target that has processed everything that arrived there before
/// `at_ms` moves to the source: each source shard resumes after the last pair written before
/// then (less the clock margin).
pub fn target_time_to_source(shards: &[ShardPositions], at_ms: i64, margin_ms: i64) -> Translation {
    let mut out = Translation::default();
    for shard in shards {
        let pairs = shard.all();
        let id = shard.shard_id.clone();
        let found = pairs.iter().rev().find(|p| p.at_ms <= at_ms - margin_ms);
        let unseen = pairs.iter().find(|p| p.started_ms >= at_ms + margin_ms);
        out.duplicates.push(Window {
            stream: String::new(),
            shard_id: id.clone(),
            after: found.map(|p| p.to.clone()),
            through: unseen.map(|p| p.from.clone()),
        });
        out.resume.push(match found {
            Some(p) => Translated {
                shard_id: id,
                resume: Resume::After(p.to.clone()),
                because: format!(
                    "every record up to {} was in the target by {}",
                    p.to,
                    crate::time::rfc3339_ms(p.at_ms)
                ),
            },
            None => Translated {
                shard_id: id,
                resume: Resume::TrimHorizon,
                because: "no recorded position is that old: from the trim horizon".to_owned(),
            },
        });
    }
    out
}

/// Like [`target_time_to_source`], with one starting time for every shard of the source (a
/// Lambda mapping's `AT_TIMESTAMP`). On each of `source_shards`: the last pair written before
/// `at_ms` less the margin whose `to` has a known arrival time. Every record up to that `to`
/// was in the target before then, so seen; an `AT_TIMESTAMP` iterator starts at the first
/// record (in sequence order) that arrived at or after its time, which for any time up to the
/// arrival of the record at `to` is at or before `to`: every later record is read. (Arrival
/// times need not increase along a shard for this.) A closed shard whose pairs before then
/// reach its end needs nothing. The earliest of these arrival times less the margin, or `Err`
/// naming a shard with no such pair (start from the trim horizon).
pub fn target_time_to_source_start(
    shards: &[ShardPositions],
    source_shards: &[StreamShard],
    at_ms: i64,
    margin_ms: i64,
) -> Result<i64, String> {
    let mut start: Option<i64> = None;
    for shard in source_shards {
        let pairs: Vec<PositionPair> = shards
            .iter()
            .find(|s| s.shard_id == shard.shard_id)
            .map(ShardPositions::all)
            .unwrap_or_default();
        let before: Vec<&PositionPair> = pairs
            .iter()
            .filter(|p| p.at_ms <= at_ms - margin_ms)
            .collect();
        if let Some(end) = &shard.ending {
            if before.iter().any(|p| &p.to >= end) {
                continue;
            }
        }
        let found = before
            .iter()
            .rev()
            .find_map(|p| p.to_arrival_ms)
            .ok_or_else(|| {
                format!(
                    "shard {} has no recorded position from before {}",
                    shard.shard_id,
                    crate::time::rfc3339_ms(at_ms - margin_ms)
                )
            })?;
        start = Some(start.map_or(found, |s| s.min(found)));
    }
    // Every shard was read to its end: nothing is left to read, from any time.
    Ok(start.unwrap_or(at_ms) - margin_ms)
}

/// A consumer of the route's source that has processed everything that arrived there before
/// `at_ms` moves to the target: every target shard resumes at that time less the margin
/// (a copy arrives in the target after its original arrived in the source).
pub fn source_time_to_target(targets: &[String], at_ms: i64, margin_ms: i64) -> Translation {
    Translation {
        resume: targets
            .iter()
            .map(|t| Translated {
                shard_id: t.clone(),
                resume: Resume::AtTimestamp(at_ms - margin_ms),
                because: "copies arrive in the target after their originals arrived in the source"
                    .to_owned(),
            })
            .collect(),
        duplicates: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
