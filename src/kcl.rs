//! KCL lease tables: how far a Kinesis Client Library (2.x, 3.x) application got, read from
//! its lease table, and the rewrite that moves the application to another stream with its
//! positions translated ([`crate::positions`]). Plain values only; `aws::kcl` reads and
//! writes the table.
//!
//! A lease item holds one shard: `leaseKey` (the shard id, or `<account>:<stream>:<creation
//! epoch>:<shard id>` for a multi-stream application), `checkpoint` (a sequence number, or
//! `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`), `checkpointSubSequenceNumber`,
//! `leaseOwner` and `leaseCounter` (raised by the owner every few seconds while it holds the
//! lease), `parentShardId` (a string set), the shard's hash range (`startingHashKey`,
//! `endingHashKey`), and for a multi-stream application `streamName` (the stream identifier)
//! and `shardId`. KCL 3.x may tag leases `entityType = LEASE` and keep other items beside
//! them; only leases are read or written.

use std::collections::BTreeMap;

use crate::positions::{Resume, Seen, StreamShard, Translation};
use crate::seq::SequenceNumber;

/// One lease, as read from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KclLease {
    pub key: String,
    /// `<account>:<stream>:<creation epoch>` for a multi-stream application's lease.
    pub stream: Option<String>,
    pub shard_id: String,
    pub checkpoint: String,
    pub sub_sequence: i64,
    pub counter: i64,
    pub owner: Option<String>,
    /// Carries `entityType = LEASE` (KCL 3.x).
    pub tagged: bool,
    /// Written by `consumers move`: where the application came from (`fanoutMovedFrom`).
    pub moved: Option<MoveMarker>,
}

/// What `consumers move` writes into each lease it creates (attribute `fanoutMovedFrom`, JSON):
/// the stream the application came from and its leases there as they were, so that a move
/// stopped half-way is finished by running it again, and a finished one is not done twice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveMarker {
    /// The source stream's ARN.
    pub from: String,
    /// (lease key, checkpoint, sub-sequence number) of each of its leases before the move.
    pub leases: Vec<(String, String, i64)>,
}

impl MoveMarker {
    pub fn of(from: &str, leases: &[&KclLease]) -> MoveMarker {
        MoveMarker {
            from: from.to_owned(),
            leases: leases
                .iter()
                .map(|l| (l.key.clone(), l.checkpoint.clone(), l.sub_sequence))
                .collect(),
        }
    }
}

/// A move from `from` (ARN, stream `account`/`name`) as the table holds it: the source
/// stream's leases as they were before any part of the move (still in the table, or kept in
/// the markers of the leases already written), and the keys of the leases already written.
pub fn move_so_far(
    all: &[KclLease],
    from: &str,
    account: &str,
    name: &str,
) -> (Vec<KclLease>, Vec<String>) {
    let written: Vec<&KclLease> = all
        .iter()
        .filter(|l| l.moved.as_ref().is_some_and(|m| m.from == from))
        .collect();
    let left: Vec<&KclLease> = leases_of(all, account, name)
        .into_iter()
        .filter(|l| !written.iter().any(|w| w.key == l.key))
        .collect();
    let originals = match written.first().and_then(|w| w.moved.as_ref()) {
        Some(marker) => marker
            .leases
            .iter()
            .map(|(key, checkpoint, sub)| {
                let (stream, shard_id) = KclLease::split_key(key);
                let now = left.iter().find(|l| &l.key == key);
                KclLease {
                    key: key.clone(),
                    stream,
                    shard_id,
                    checkpoint: checkpoint.clone(),
                    sub_sequence: *sub,
                    counter: now.map_or(0, |l| l.counter),
                    owner: now.and_then(|l| l.owner.clone()),
                    tagged: now.is_some_and(|l| l.tagged),
                    moved: None,
                }
            })
            .collect(),
        None => left.into_iter().cloned().collect(),
    };
    (originals, written.iter().map(|w| w.key.clone()).collect())
}

impl KclLease {
    /// Splits a lease key into its stream identifier (multi-stream) and shard id.
    pub fn split_key(key: &str) -> (Option<String>, String) {
        match key.rsplit_once(':') {
            Some((stream, shard)) => (Some(stream.to_owned()), shard.to_owned()),
            None => (None, key.to_owned()),
        }
    }

    /// How far the application got on this lease's shard.
    pub fn seen(&self) -> Seen {
        match self.checkpoint.as_str() {
            "SHARD_END" => Seen::All,
            text => match SequenceNumber::parse(text) {
                // A sub-sequence number above 0: part of an aggregated record is processed,
                // so that record does not count as seen.
                Ok(seq) if self.sub_sequence > 0 => Seen::Through(seq.predecessor()),
                Ok(seq) => Seen::Through(seq),
                // TRIM_HORIZON, LATEST, AT_TIMESTAMP: nothing processed yet.
                Err(_) => Seen::Nothing,
            },
        }
    }
}

/// The multi-stream identifier KCL gives a stream: `<account>:<name>:<creation epoch s>`.
pub fn stream_identifier(account: &str, name: &str, created_epoch_s: i64) -> String {
    format!("{account}:{name}:{created_epoch_s}")
}

/// The leases of one stream: multi-stream leases whose identifier names the stream
/// (`<account>:<name>:`), or every single-stream lease.
pub fn leases_of<'a>(leases: &'a [KclLease], account: &str, name: &str) -> Vec<&'a KclLease> {
    let prefix = format!("{account}:{name}:");
    let multi = leases.iter().any(|l| l.stream.is_some());
    leases
        .iter()
        .filter(|l| match &l.stream {
            Some(id) => format!("{id}:").starts_with(&prefix),
            None => !multi,
        })
        .collect()
}

/// What the application has seen of each shard, by shard id.
pub fn seen_by_shard(leases: &[&KclLease]) -> BTreeMap<String, Seen> {
    leases
        .iter()
        .map(|l| (l.shard_id.clone(), l.seen()))
        .collect()
}

/// Leases whose counter moved between two reads: someone still holds them.
pub fn still_held<'a>(first: &[KclLease], second: &'a [KclLease]) -> Vec<&'a KclLease> {
    second
        .iter()
        .filter(|l| {
            first
                .iter()
                .find(|f| f.key == l.key)
                .is_none_or(|f| f.counter != l.counter)
        })
        .filter(|l| l.owner.is_some())
        .collect()
}

/// A lease to write for the destination stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLease {
    pub key: String,
    pub shard_id: String,
    /// Multi-stream: the destination's stream identifier.
    pub stream: Option<String>,
    pub checkpoint: String,
    pub parents: Vec<String>,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    /// Why this checkpoint.
    pub because: String,
}

/// The rewrite of a lease table: the source stream's leases go, the destination's come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovePlan {
    pub remove: Vec<KclLease>,
    pub add: Vec<NewLease>,
    pub translation: Translation,
}

/// Plans the move of `leases` (the source stream's) to `shards` (the destination stream's),
/// placing each destination shard where `translation` says. `stream`: the destination's
/// multi-stream identifier, for a multi-stream application.
pub fn plan_move(
    leases: &[&KclLease],
    shards: &[StreamShard],
    translation: Translation,
    stream: Option<&str>,
) -> MovePlan {
    let add = shards
        .iter()
        .map(|sh| {
            let found = translation
                .resume
                .iter()
                .find(|r| r.shard_id == sh.shard_id);
            let (checkpoint, because) = match found.map(|t| (&t.resume, t.because.as_str())) {
                Some((Resume::After(seq), why)) => (seq.to_string(), why.to_owned()),
                Some((Resume::Nothing, why)) => ("SHARD_END".to_owned(), why.to_owned()),
                Some((Resume::TrimHorizon, why)) => ("TRIM_HORIZON".to_owned(), why.to_owned()),
                Some((Resume::AtTimestamp(ms), _)) => (
                    "TRIM_HORIZON".to_owned(),
                    format!(
                        "the translation says from {} on, and a KCL lease cannot start at a time: \
                         from the trim horizon",
                        crate::time::rfc3339_ms(*ms)
                    ),
                ),
                None => (
                    "TRIM_HORIZON".to_owned(),
                    "no translated position: from the trim horizon".to_owned(),
                ),
            };
            NewLease {
                key: match stream {
                    Some(id) => format!("{id}:{}", sh.shard_id),
                    None => sh.shard_id.clone(),
                },
                shard_id: sh.shard_id.clone(),
                stream: stream.map(str::to_owned),
                checkpoint,
                parents: sh.parents.clone(),
                starting_hash_key: sh.starting_hash_key.clone(),
                ending_hash_key: sh.ending_hash_key.clone(),
                because,
            }
        })
        .collect::<Vec<_>>();
    MovePlan {
        remove: leases
            .iter()
            .filter(|l| !add.iter().any(|a| a.key == l.key))
            .map(|l| (*l).clone())
            .collect(),
        add,
        translation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::positions::Translated;

    fn lease(key: &str, checkpoint: &str, sub: i64, counter: i64) -> KclLease {
        let (stream, shard_id) = KclLease::split_key(key);
        KclLease {
            key: key.to_owned(),
            stream,
            shard_id,
            checkpoint: checkpoint.to_owned(),
            sub_sequence: sub,
            counter,
            owner: Some("worker-1".to_owned()),
            tagged: false,
            moved: None,
        }
    }

    fn seq(t: &str) -> SequenceNumber {
        SequenceNumber::parse(t).unwrap()
    }

    #[test]
    fn checkpoints_say_how_far_the_application_got() {
        assert_eq!(
            lease("shardId-0", "TRIM_HORIZON", 0, 1).seen(),
            Seen::Nothing
        );
        assert_eq!(lease("shardId-0", "LATEST", 0, 1).seen(), Seen::Nothing);
        assert_eq!(lease("shardId-0", "SHARD_END", 0, 1).seen(), Seen::All);
        assert_eq!(
            lease("shardId-0", "1234", 0, 1).seen(),
            Seen::Through(seq("1234"))
        );
        // Part of an aggregated record: that record is not seen in full.
        assert_eq!(
            lease("shardId-0", "1234", 3, 1).seen(),
            Seen::Through(seq("1233"))
        );
    }

    #[test]
    fn multi_stream_keys_name_their_stream() {
        let leases = vec![
            lease(
                "111111111111:orders:1700000000:shardId-000000000000",
                "5",
                0,
                1,
            ),
            lease(
                "111111111111:orders-archive:1700000001:shardId-000000000000",
                "6",
                0,
                1,
            ),
        ];
        let mine = leases_of(&leases, "111111111111", "orders");
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].shard_id, "shardId-000000000000");
        assert_eq!(
            mine[0].stream.as_deref(),
            Some("111111111111:orders:1700000000")
        );
        // Single-stream tables: every lease is the stream's.
        let single = vec![lease("shardId-000000000000", "5", 0, 1)];
        assert_eq!(leases_of(&single, "111111111111", "orders").len(), 1);
    }

    #[test]
    fn a_lease_whose_counter_moves_is_still_held() {
        let first = vec![lease("a", "1", 0, 7), lease("b", "2", 0, 3)];
        let mut second = first.clone();
        second[0].counter = 8;
        let held = still_held(&first, &second);
        assert_eq!(
            held.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn the_plan_places_every_destination_shard_and_removes_the_old_leases() {
        let old = [lease("111:old:1:shardId-000000000000", "9", 0, 4)];
        let old: Vec<&KclLease> = old.iter().collect();
        let shard = |id: &str, parents: &[&str]| StreamShard {
            shard_id: id.to_owned(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            starting_hash_key: "0".into(),
            ending_hash_key: "1".into(),
            ending: None,
        };
        let translation = Translation {
            resume: vec![
                Translated {
                    shard_id: "shardId-000000000000".into(),
                    resume: Resume::After(seq("77")),
                    because: "passed".into(),
                },
                Translated {
                    shard_id: "shardId-000000000001".into(),
                    resume: Resume::AtTimestamp(0),
                    because: "t".into(),
                },
            ],
            duplicates: vec![],
        };
        let plan = plan_move(
            &old,
            &[
                shard("shardId-000000000000", &[]),
                shard("shardId-000000000001", &["shardId-000000000000"]),
            ],
            translation,
            Some("111:new:2"),
        );
        assert_eq!(plan.remove.len(), 1);
        assert_eq!(plan.add[0].key, "111:new:2:shardId-000000000000");
        assert_eq!(plan.add[0].checkpoint, "77");
        assert_eq!(plan.add[1].checkpoint, "TRIM_HORIZON");
        assert!(plan.add[1].because.contains("cannot start at a time"));
        assert_eq!(plan.add[1].parents, ["shardId-000000000000"]);
    }

    #[test]
    fn a_move_stopped_half_way_is_finished_from_the_leases_as_they_were() {
        let before = [
            lease("shardId-0", "100", 0, 4),
            lease("shardId-1", "200", 0, 6),
        ];
        let refs: Vec<&KclLease> = before.iter().collect();
        let marker = MoveMarker::of("arn:old", &refs);
        // Single-stream: the first lease was rewritten (new stream's position, marked); the
        // second is still the old stream's.
        let mut written = lease("shardId-0", "999", 0, 0);
        written.moved = Some(marker.clone());
        let table = vec![written.clone(), before[1].clone()];
        let (originals, done) = move_so_far(&table, "arn:old", "111", "old");
        assert_eq!(done, ["shardId-0"]);
        assert_eq!(
            originals
                .iter()
                .map(|l| (l.key.as_str(), l.checkpoint.as_str(), l.counter))
                .collect::<Vec<_>>(),
            [("shardId-0", "100", 0), ("shardId-1", "200", 6)],
            "the old positions, from the marker; the counter of the lease still there"
        );
        // Finished: every lease marked; the old positions are still known.
        let mut second = lease("shardId-1", "888", 0, 0);
        second.moved = Some(marker);
        let (originals, done) = move_so_far(&[written, second], "arn:old", "111", "old");
        assert_eq!(done.len(), 2);
        assert_eq!(originals.len(), 2);
        // Never moved: the table's leases as they are.
        let (originals, done) = move_so_far(&before, "arn:old", "111", "old");
        assert!(done.is_empty());
        assert_eq!(originals, before.to_vec());
    }
}
