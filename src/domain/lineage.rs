//! Resharding lineage: which shards may be read now.
//!
//! A split closes one parent and opens two children; a merge closes two parents and opens one
//! child. Per-key order across a reshard holds only if a child is read after every parent has
//! been read to its end, because a key's earlier records sit in the parent. So:
//! - a shard is ready when it is not finished and each of its parents is finished, or no
//!   longer listed (trimmed away by retention: nothing left to read there);
//! - shards that appear while running (splits, merges, UpdateShardCount) join the listing and
//!   follow the same rule.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::ShardInfo;

/// The shards of `listing` that may be read now, in listing order: not `finished`, not
/// `running`, and every listed parent finished.
pub fn ready<'a>(
    listing: &'a [ShardInfo],
    finished: &HashSet<String>,
    running: &HashSet<String>,
) -> Vec<&'a ShardInfo> {
    let listed: HashSet<&str> = listing.iter().map(|s| s.shard_id.as_str()).collect();
    let parent_done = |p: &Option<String>| {
        p.as_deref()
            .is_none_or(|p| finished.contains(p) || !listed.contains(p))
    };
    listing
        .iter()
        .filter(|s| !finished.contains(&s.shard_id) && !running.contains(&s.shard_id))
        .filter(|s| parent_done(&s.parent) && parent_done(&s.adjacent_parent))
        .collect()
}

/// Adds shards learnt from GetRecords' `ChildShards` that ListShards does not show yet (its
/// answer can lag a reshard), keeping one entry per shard id.
pub fn merge(listing: Vec<ShardInfo>, hints: &[ShardInfo]) -> Vec<ShardInfo> {
    let mut by_id: BTreeMap<String, ShardInfo> = listing
        .into_iter()
        .map(|s| (s.shard_id.clone(), s))
        .collect();
    for h in hints {
        by_id.entry(h.shard_id.clone()).or_insert_with(|| h.clone());
    }
    by_id.into_values().collect()
}

/// Groups shards by lineage depth, each group in shard-id order: every shard comes after its
/// listed parents, and the shards of one group can be read at once (verification does).
pub fn levels(shards: &[ShardInfo]) -> Vec<Vec<ShardInfo>> {
    let by_id: HashMap<&str, usize> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| (s.shard_id.as_str(), i))
        .collect();
    let mut level: Vec<Option<usize>> = vec![None; shards.len()];
    fn level_of(
        i: usize,
        shards: &[ShardInfo],
        by_id: &HashMap<&str, usize>,
        level: &mut Vec<Option<usize>>,
        depth: usize,
    ) -> usize {
        if let Some(l) = level[i] {
            return l;
        }
        if depth > shards.len() {
            return 0; // a cycle cannot happen in Kinesis; do not loop if a listing says so
        }
        let s = &shards[i];
        let l = [&s.parent, &s.adjacent_parent]
            .into_iter()
            .flatten()
            .filter_map(|p| by_id.get(p.as_str()))
            .map(|&p| level_of(p, shards, by_id, level, depth + 1) + 1)
            .max()
            .unwrap_or(0);
        level[i] = Some(l);
        l
    }
    let mut levels: Vec<Vec<ShardInfo>> = Vec::new();
    for i in 0..shards.len() {
        let l = level_of(i, shards, &by_id, &mut level, 0);
        if levels.len() <= l {
            levels.resize(l + 1, Vec::new());
        }
        levels[l].push(shards[i].clone());
    }
    for l in &mut levels {
        l.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_owned(),
            parent: parent.map(str::to_owned),
            adjacent_parent: adjacent.map(str::to_owned),
            closed: false,
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ids(v: Vec<&ShardInfo>) -> Vec<&str> {
        v.into_iter().map(|s| s.shard_id.as_str()).collect()
    }

    #[test]
    fn children_wait_for_every_parent() {
        // 0 and 1 roots; 0 split into 2 and 3; 2 and 1 merged into 4.
        let listing = vec![
            shard("0", None, None),
            shard("1", None, None),
            shard("2", Some("0"), None),
            shard("3", Some("0"), None),
            shard("4", Some("2"), Some("1")),
        ];
        let none = set(&[]);
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            // (finished, running, expected ready)
            (&[], &[], &["0", "1"]),
            (&[], &["0"], &["1"]),
            (&["0"], &["1"], &["2", "3"]),
            (&["0", "2"], &["1"], &["3"]), // merge child waits for parent 1
            (&["0", "1"], &[], &["2", "3"]), // and for parent 2
            (&["0", "1", "2"], &["3"], &["4"]),
            (&["0", "1", "2", "3", "4"], &[], &[]),
        ];
        for (finished, running, want) in cases {
            let got = ids(ready(&listing, &set(finished), &set(running)));
            assert_eq!(&got, want, "finished {finished:?}, running {running:?}");
        }
        assert_eq!(ids(ready(&listing, &none, &none)), vec!["0", "1"]);
    }

    #[test]
    fn a_parent_trimmed_away_does_not_block_its_child() {
        let listing = vec![shard("5", Some("gone"), Some("also-gone"))];
        assert_eq!(ids(ready(&listing, &set(&[]), &set(&[]))), vec!["5"]);
    }

    #[test]
    fn child_shard_hints_fill_a_lagging_listing() {
        let listing = vec![shard("0", None, None)];
        let hints = vec![shard("1", Some("0"), None), shard("0", None, None)];
        let merged = merge(listing, &hints);
        assert_eq!(merged.len(), 2);
        assert_eq!(ids(ready(&merged, &set(&["0"]), &set(&[]))), vec!["1"]);
    }

    #[test]
    fn parents_come_first() {
        let listing = vec![
            shard("4", Some("2"), Some("1")),
            shard("3", Some("0"), None),
            shard("2", Some("0"), None),
            shard("1", None, None),
            shard("0", None, None),
        ];
        let order: Vec<String> = levels(&listing)
            .into_iter()
            .flatten()
            .map(|s| s.shard_id)
            .collect();
        assert_eq!(order, vec!["0", "1", "2", "3", "4"]);
    }
}
