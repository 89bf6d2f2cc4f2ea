//! The in-memory comparison the tests and the demo use.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// The in-memory comparison used by the tests and the demo

/// What [`compare`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub source_records: usize,
    pub target_records: usize,
    /// Source records absent from the target and not dead-lettered.
    pub missing: Vec<SequenceNumber>,
    /// Source records absent from the target because they were dead-lettered.
    pub dead_lettered: usize,
    /// Target records beyond the first copy of a source record.
    pub duplicates: usize,
    /// First arrivals that came after a later record of the same key.
    pub out_of_order: usize,
    /// Target records matching no source record.
    pub extra: usize,
    pub keys: usize,
}

impl Comparison {
    /// Nothing lost, nothing reordered, nothing foreign (duplicates are allowed: at-least-once).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.out_of_order == 0 && self.extra == 0
    }
}

/// Compares whole streams already read into memory (no window). `source` and `target` are
/// (shard id, record) pairs with each shard's records in stream order; `dead_lettered` holds
/// the source sequence numbers found in the dead-letter store.
pub fn compare(
    source: &[(String, SourceRecord)],
    target: &[(String, SourceRecord)],
    dead_lettered: &HashSet<SequenceNumber>,
) -> Comparison {
    let mut v = Verifier::new(Window::everything(), 0, 1, usize::MAX);
    for (shard, r) in source {
        let s = v.shard(shard);
        let key = r.partition_key.as_deref().unwrap_or_default();
        v.add_source(
            s,
            key,
            &r.data,
            &r.seq,
            None,
            dead_lettered.contains(&r.seq),
        );
    }
    for (shard, r) in target {
        let s = v.shard(shard);
        let key = r.partition_key.as_deref().unwrap_or_default();
        v.add_target(s, key, &r.data, &r.seq, None);
    }
    let f = v.finish();
    Comparison {
        source_records: source.len(),
        target_records: target.len(),
        missing: f
            .keys
            .iter()
            .flat_map(|k| &k.examples.missing)
            .filter_map(|r| SequenceNumber::parse(&r.sequence_number).ok())
            .collect(),
        dead_lettered: f.totals.dead_lettered as usize,
        duplicates: f.totals.duplicates as usize,
        out_of_order: f.totals.out_of_order as usize,
        extra: f.totals.extra as usize,
        keys: f.totals.keys as usize,
    }
}
