//! The engine: source records in, target records in, findings out. Pure, no I/O.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// The engine

/// A sequence number in 24 bytes: three base-10¹⁹ limbs (57 digits; Kinesis uses 56). Longer
/// numbers go to a side table.
pub(super) type PackedSeq = [u64; 3];
pub(super) const LONG_SEQ: u64 = u64::MAX;

pub(super) fn pack_seq(seq: &SequenceNumber) -> Option<PackedSeq> {
    let s = seq.as_str().as_bytes();
    if s.len() > 57 {
        return None;
    }
    let mut limbs = [0u64; 3];
    let mut end = s.len();
    for limb in limbs.iter_mut().rev() {
        let start = end.saturating_sub(19);
        let mut v = 0u64;
        for &b in &s[start..end] {
            v = v * 10 + u64::from(b - b'0');
        }
        *limb = v;
        end = start;
    }
    Some(limbs)
}

pub(super) fn unpack_seq(p: &PackedSeq) -> String {
    let mut out = String::new();
    for &limb in p {
        if out.is_empty() {
            if limb != 0 {
                out = limb.to_string();
            }
        } else {
            let _ = write!(out, "{limb:019}");
        }
    }
    if out.is_empty() {
        out.push('0');
    }
    out
}

pub(super) const NONE: u32 = u32::MAX;
pub(super) const IN_WINDOW: u8 = 1;
pub(super) const MATCHED: u8 = 2;
pub(super) const DEAD_LETTERED: u8 = 4;

/// One source record (40 bytes); its digest is the index key.
pub(super) struct Rec {
    seq: PackedSeq,
    key: u32,
    /// Position among the records of its key, in source order.
    pos: u32,
    /// Next source record with the same digest.
    next_same: u32,
    shard: u16,
    flags: u8,
}

/// Source records sharing one digest: the next one without a target copy, and the last one.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    next_unmatched: u32,
    last: u32,
}

/// Per partition key: the order state of first arrivals.
#[derive(Clone, Copy)]
pub(super) struct KeyState {
    next_pos: u32,
    /// Highest source position seen among first arrivals so far (`NONE`: none yet).
    high: u32,
    high_in_window: bool,
}

/// A record, by shard and sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub shard: String,
    pub sequence_number: String,
}

/// Example records of one key, per category (the first `example_cap` of each).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Examples {
    /// Source records.
    pub missing: Vec<RecordRef>,
    /// Source records.
    pub dead_lettered: Vec<RecordRef>,
    /// Source records copied more than once.
    pub duplicates: Vec<RecordRef>,
    /// Source records whose first copy arrived after the copy of a later record of the key.
    pub out_of_order: Vec<RecordRef>,
    /// Target records.
    pub extra: Vec<RecordRef>,
}

/// What went wrong for one partition key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFindings {
    pub key: String,
    pub missing: u64,
    pub dead_lettered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub extra: u64,
    pub examples: Examples,
    /// Some category has more records than examples listed.
    pub examples_capped: bool,
}

impl KeyFindings {
    /// Breaks the verdict (missing, out of order, extra).
    pub fn is_failure(&self) -> bool {
        self.missing > 0 || self.out_of_order > 0 || self.extra > 0
    }
}

/// Counts over the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Source records that arrived within [from, until].
    pub source_in_window: u64,
    /// Source records read in the grace margins (before `from`, after `until`).
    pub source_context: u64,
    /// Target records read (from − grace to until + grace).
    pub target_read: u64,
    /// In-window source records with a copy in the target.
    pub matched: u64,
    /// In-window source records with no copy and no dead letter.
    pub missing: u64,
    /// In-window source records with no copy, found in the dead-letter store.
    pub dead_lettered: u64,
    /// Target copies beyond the first of an in-window source record.
    pub duplicates: u64,
    /// First copies that arrived after the copy of a later record of the same key.
    pub out_of_order: u64,
    /// Target records that arrived within the window and match no source record.
    pub extra: u64,
    /// Target records matching only context records, or matching nothing but arrived in the
    /// margins: not judged.
    pub outside_window: u64,
    /// Distinct partition keys seen.
    pub keys: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.source_in_window += o.source_in_window;
        self.source_context += o.source_context;
        self.target_read += o.target_read;
        self.matched += o.matched;
        self.missing += o.missing;
        self.dead_lettered += o.dead_lettered;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.extra += o.extra;
        self.outside_window += o.outside_window;
        self.keys += o.keys;
    }

    /// Nothing lost, nothing reordered, nothing foreign (duplicates are allowed: at-least-once).
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.out_of_order == 0 && self.extra == 0
    }
}

/// What one engine run (one pass) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub totals: Totals,
    /// Keys with anything to report, sorted by key.
    pub keys: Vec<KeyFindings>,
}

impl Findings {
    /// Adds another pass's findings (passes have disjoint keys).
    pub fn merge(&mut self, other: Findings) {
        self.totals.add(&other.totals);
        self.keys.extend(other.keys);
        self.keys.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

/// The comparison engine: feed every source record (each shard in order, parent shards
/// before their children), then every target record likewise, then call [`Verifier::finish`].
pub struct Verifier {
    window: Window,
    pass: u32,
    passes: u32,
    example_cap: usize,
    index: HashMap<Digest, Slot, PassThroughState>,
    recs: Vec<Rec>,
    long_seqs: HashMap<u32, SequenceNumber>,
    key_ids: HashMap<Box<str>, u32>,
    key_names: Vec<Box<str>>,
    key_state: Vec<KeyState>,
    problems: HashMap<u32, KeyFindings>,
    shard_ids: HashMap<String, u16>,
    shard_names: Vec<String>,
    totals: Totals,
}

/// A shard registered with [`Verifier::shard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardIdx(u16);

impl Verifier {
    /// An engine for pass `pass` of `passes` (keys with `key_pass(key, passes) == pass`),
    /// listing at most `example_cap` example records per key and category.
    pub fn new(window: Window, pass: u32, passes: u32, example_cap: usize) -> Verifier {
        Verifier {
            window,
            pass,
            passes: passes.max(1),
            example_cap,
            index: HashMap::with_hasher(PassThroughState),
            recs: Vec::new(),
            long_seqs: HashMap::new(),
            key_ids: HashMap::new(),
            key_names: Vec::new(),
            key_state: Vec::new(),
            problems: HashMap::new(),
            shard_ids: HashMap::new(),
            shard_names: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Whether this pass handles `key`.
    pub fn wants(&self, key: &str) -> bool {
        key_pass(key, self.passes) == self.pass
    }

    /// Registers a shard id (at most 65,535 per pass).
    pub fn shard(&mut self, shard_id: &str) -> ShardIdx {
        if let Some(&i) = self.shard_ids.get(shard_id) {
            return ShardIdx(i);
        }
        let i = u16::try_from(self.shard_names.len()).unwrap_or(u16::MAX);
        self.shard_ids.insert(shard_id.to_owned(), i);
        self.shard_names.push(shard_id.to_owned());
        ShardIdx(i)
    }

    fn key_id(&mut self, key: &str) -> u32 {
        if let Some(&k) = self.key_ids.get(key) {
            return k;
        }
        let k = self.key_names.len() as u32;
        let name: Box<str> = key.into();
        self.key_ids.insert(name.clone(), k);
        self.key_names.push(name);
        self.key_state.push(KeyState {
            next_pos: 0,
            high: NONE,
            high_in_window: false,
        });
        k
    }

    /// Source records held (this pass).
    pub fn records_held(&self) -> usize {
        self.recs.len()
    }

    /// Adds one source record. Records of other passes are ignored.
    /// A KPL aggregated record counts as the user records it holds, on both sides: an
    /// `aggregated` route packs records that a deaggregating consumer reads one by one.
    pub fn add_source(
        &mut self,
        shard: ShardIdx,
        key: &str,
        data: &[u8],
        seq: &SequenceNumber,
        arrival_ms: Option<i64>,
        dead_lettered: bool,
    ) {
        if let Some(users) = user_records(data) {
            for u in users {
                self.add_source_one(
                    shard,
                    &u.partition_key,
                    &u.data,
                    seq,
                    arrival_ms,
                    dead_lettered,
                );
            }
        } else {
            self.add_source_one(shard, key, data, seq, arrival_ms, dead_lettered);
        }
    }

    fn add_source_one(
        &mut self,
        shard: ShardIdx,
        key: &str,
        data: &[u8],
        seq: &SequenceNumber,
        arrival_ms: Option<i64>,
        dead_lettered: bool,
    ) {
        if !self.wants(key) {
            return;
        }
        let d = digest(key, data);
        let k = self.key_id(key);
        let ks = &mut self.key_state[k as usize];
        let pos = ks.next_pos;
        ks.next_pos += 1;
        let idx = self.recs.len() as u32;
        let in_window = self.window.contains(arrival_ms);
        if in_window {
            self.totals.source_in_window += 1;
        } else {
            self.totals.source_context += 1;
        }
        let packed = pack_seq(seq).unwrap_or_else(|| {
            self.long_seqs.insert(idx, seq.clone());
            [LONG_SEQ; 3]
        });
        self.recs.push(Rec {
            seq: packed,
            key: k,
            pos,
            next_same: NONE,
            shard: shard.0,
            flags: (if in_window { IN_WINDOW } else { 0 })
                | (if dead_lettered { DEAD_LETTERED } else { 0 }),
        });
        match self.index.get_mut(&d) {
            Some(slot) => {
                self.recs[slot.last as usize].next_same = idx;
                slot.last = idx;
                if slot.next_unmatched == NONE {
                    slot.next_unmatched = idx;
                }
            }
            None => {
                self.index.insert(
                    d,
                    Slot {
                        next_unmatched: idx,
                        last: idx,
                    },
                );
            }
        }
    }

    fn source_ref(&self, idx: u32) -> RecordRef {
        let r = &self.recs[idx as usize];
        let seq = if r.seq[0] == LONG_SEQ {
            self.long_seqs
                .get(&idx)
                .map(|s| s.to_string())
                .unwrap_or_default()
        } else {
            unpack_seq(&r.seq)
        };
        RecordRef {
            shard: self.shard_names[r.shard as usize].clone(),
            sequence_number: seq,
        }
    }

    fn problem(&mut self, key: u32) -> &mut KeyFindings {
        let name = &self.key_names[key as usize];
        self.problems.entry(key).or_insert_with(|| KeyFindings {
            key: name.to_string(),
            ..KeyFindings::default()
        })
    }

    fn note(&mut self, key: u32, what: Category, example: impl FnOnce(&Self) -> RecordRef) {
        let cap = self.example_cap;
        let has_room = {
            let p = self.problem(key);
            let (count, list) = p.slot(what);
            *count += 1;
            list.len() < cap
        };
        if has_room {
            let r = example(self);
            self.problem(key).slot(what).1.push(r);
        } else {
            self.problem(key).examples_capped = true;
        }
    }

    /// Adds one target record (each shard in order, parents before children); an aggregated
    /// one as the user records it holds.
    pub fn add_target(
        &mut self,
        shard: ShardIdx,
        key: &str,
        data: &[u8],
        seq: &SequenceNumber,
        arrival_ms: Option<i64>,
    ) {
        if let Some(users) = user_records(data) {
            for u in users {
                self.add_target_one(shard, &u.partition_key, &u.data, seq, arrival_ms);
            }
        } else {
            self.add_target_one(shard, key, data, seq, arrival_ms);
        }
    }

    fn add_target_one(
        &mut self,
        shard: ShardIdx,
        key: &str,
        data: &[u8],
        seq: &SequenceNumber,
        arrival_ms: Option<i64>,
    ) {
        if !self.wants(key) {
            return;
        }
        self.totals.target_read += 1;
        let d = digest(key, data);
        let Some(slot) = self.index.get(&d).copied() else {
            if self.window.contains(arrival_ms) {
                self.totals.extra += 1;
                let k = self.key_id(key);
                let r = RecordRef {
                    shard: self.shard_names[shard.0 as usize].clone(),
                    sequence_number: seq.to_string(),
                };
                self.note(k, Category::Extra, |_| r);
            } else {
                self.totals.outside_window += 1;
            }
            return;
        };
        if slot.next_unmatched == NONE {
            // Every source record with this content already has a copy: a duplicate.
            let last = &self.recs[slot.last as usize];
            if last.flags & IN_WINDOW != 0 {
                self.totals.duplicates += 1;
                let k = last.key;
                self.note(k, Category::Duplicate, |v| v.source_ref(slot.last));
            } else {
                self.totals.outside_window += 1;
            }
            return;
        }
        let idx = slot.next_unmatched;
        let (next, key_id, pos, in_window) = {
            let r = &mut self.recs[idx as usize];
            r.flags |= MATCHED;
            (r.next_same, r.key, r.pos, r.flags & IN_WINDOW != 0)
        };
        if let Some(s) = self.index.get_mut(&d) {
            s.next_unmatched = next;
        }
        if in_window {
            self.totals.matched += 1;
        } else {
            self.totals.outside_window += 1;
        }
        let ks = &mut self.key_state[key_id as usize];
        if ks.high != NONE && pos < ks.high {
            if in_window || ks.high_in_window {
                self.totals.out_of_order += 1;
                self.note(key_id, Category::OutOfOrder, |v| v.source_ref(idx));
            }
        } else {
            ks.high = pos;
            ks.high_in_window = in_window;
        }
    }

    /// Ends the pass: in-window source records without a copy are missing (or dead-lettered).
    pub fn finish(mut self) -> Findings {
        for idx in 0..self.recs.len() as u32 {
            let r = &self.recs[idx as usize];
            if r.flags & IN_WINDOW == 0 || r.flags & MATCHED != 0 {
                continue;
            }
            let key = r.key;
            if r.flags & DEAD_LETTERED != 0 {
                self.totals.dead_lettered += 1;
                self.note(key, Category::DeadLettered, |v| v.source_ref(idx));
            } else {
                self.totals.missing += 1;
                self.note(key, Category::Missing, |v| v.source_ref(idx));
            }
        }
        self.totals.keys = self.key_names.len() as u64;
        let mut keys: Vec<KeyFindings> = self.problems.into_values().collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Findings {
            totals: self.totals,
            keys,
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Category {
    Missing,
    DeadLettered,
    Duplicate,
    OutOfOrder,
    Extra,
}

impl KeyFindings {
    fn slot(&mut self, c: Category) -> (&mut u64, &mut Vec<RecordRef>) {
        match c {
            Category::Missing => (&mut self.missing, &mut self.examples.missing),
            Category::DeadLettered => (&mut self.dead_lettered, &mut self.examples.dead_lettered),
            Category::Duplicate => (&mut self.duplicates, &mut self.examples.duplicates),
            Category::OutOfOrder => (&mut self.out_of_order, &mut self.examples.out_of_order),
            Category::Extra => (&mut self.extra, &mut self.examples.extra),
        }
    }
}
