//! Verifying a replica: for a source stream, its target and a time window, which source
//! records are missing from the target, which are duplicated, which arrived out of per-key
//! order (first arrivals compared with source order), and which target records did not come
//! from the source. `fanoutctl verify` drives it; `docs/verify.md` explains the output.
//!
//! Records are matched by a 128-bit digest of (partition key, data): the source side keeps,
//! per record, the digest (in the index), its position within its key, its sequence number in
//! 24 bytes and a few flags; per partition key a little order state. Payloads are never kept,
//! so memory grows with the number of records, not their size; `partitions` > 1 splits the
//! keys into that many passes, each keeping only its share.
//!
//! Source records with the same key and data are matched to target copies in source order.
//!
//! Three layers:
//! - [`Verifier`]: the pure engine (feed source records, then target records, then `finish`).
//! - [`run`]: reads both streams over a [`Window`] with [`KinesisSource`] and runs the engine.
//! - [`Report`]: the result, its verdict, its text rendering and its stored form.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;
use serde::{Deserialize, Serialize};

use crate::aws::source::{KinesisSource, StartPosition};
use crate::model::{RequestError, SourceRecord, StreamArn};
use crate::seq::SequenceNumber;
use crate::time::{now_ms, rfc3339_ms as rfc3339};

// ---------------------------------------------------------------------------------------------
// Digests

static DIGEST_SEED_A: SharedSeed = SharedSeed::from_u64(0x6661_6e6f_7574_0001);
static DIGEST_SEED_B: SharedSeed = SharedSeed::from_u64(0x7665_7269_6679_0002);
static PARTITION_SEED: SharedSeed = SharedSeed::from_u64(0x7061_7274_6974_0003);

/// A 128-bit digest of (partition key, data): two 64-bit foldhash values with independent
/// seeds. Not cryptographic; accidental collisions are negligible (about n²/2¹²⁹ for n records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(pub u64, pub u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: the index hashes it with a pass-through hasher.
        state.write_u64(self.0);
    }
}

/// The user records of a KPL aggregated record; `None` for a plain record (or one that only
/// looks aggregated: a bad checksum or body is compared as it is).
fn user_records(data: &[u8]) -> Option<Vec<crate::kpl::SubRecord>> {
    if crate::kpl::is_aggregated(data) {
        crate::kpl::deaggregate(data).ok()
    } else {
        None
    }
}

/// The digest of one record.
pub fn digest(key: &str, data: &[u8]) -> Digest {
    let one = |seed: &'static SharedSeed, per: u64| {
        let mut h = SeedableRandomState::with_seed(per, seed).build_hasher();
        h.write_usize(key.len());
        h.write(key.as_bytes());
        h.write(data);
        h.finish()
    };
    Digest(one(&DIGEST_SEED_A, 1), one(&DIGEST_SEED_B, 2))
}

/// Which pass of `count` a partition key belongs to.
pub fn key_pass(key: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut h = SeedableRandomState::with_seed(3, &PARTITION_SEED).build_hasher();
    h.write(key.as_bytes());
    (h.finish() % u64::from(count)) as u32
}

#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
struct PassThroughState;

impl BuildHasher for PassThroughState {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Windows and passes

/// The time window verified, in milliseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `None`: from the trim horizon (everything the stream still holds).
    pub from_ms: Option<i64>,
    pub until_ms: i64,
    /// Margin read on both sides: target copies arrive later than their source (replication
    /// lag), so the target is read until `until + grace`; source records in the margins are
    /// "context" (matched copies of them are outside the window, not foreign).
    pub grace_ms: i64,
}

impl Window {
    /// Every record, whatever its arrival time.
    pub fn everything() -> Window {
        Window {
            from_ms: None,
            until_ms: i64::MAX,
            grace_ms: 0,
        }
    }

    /// Where reading starts: `None` is the trim horizon.
    pub fn read_from_ms(&self) -> Option<i64> {
        self.from_ms.map(|f| f.saturating_sub(self.grace_ms))
    }

    /// Records that arrived after this are not read.
    pub fn read_until_ms(&self) -> i64 {
        self.until_ms.saturating_add(self.grace_ms)
    }

    /// Arrived within [from, until]. A record without an arrival time counts as inside.
    pub fn contains(&self, arrival_ms: Option<i64>) -> bool {
        match arrival_ms {
            None => true,
            Some(t) => self.from_ms.is_none_or(|f| t >= f) && t <= self.until_ms,
        }
    }

    pub fn start_position(&self) -> StartPosition {
        match self.read_from_ms() {
            None => StartPosition::TrimHorizon,
            Some(ms) => StartPosition::AtTimestamp(ms.max(0)),
        }
    }
}

/// Parses a grace period: `90` (seconds), `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a duration; expected e.g. 30s, 5m, 1h, 500ms or a number of seconds"
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "s" | "sec" | "secs" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" | "min" | "mins" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

// ---------------------------------------------------------------------------------------------
// The engine

/// A sequence number in 24 bytes: three base-10¹⁹ limbs (57 digits; Kinesis uses 56). Longer
/// numbers go to a side table.
type PackedSeq = [u64; 3];
const LONG_SEQ: u64 = u64::MAX;

fn pack_seq(seq: &SequenceNumber) -> Option<PackedSeq> {
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

fn unpack_seq(p: &PackedSeq) -> String {
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

const NONE: u32 = u32::MAX;
const IN_WINDOW: u8 = 1;
const MATCHED: u8 = 2;
const DEAD_LETTERED: u8 = 4;

/// One source record (40 bytes); its digest is the index key.
struct Rec {
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
struct Slot {
    next_unmatched: u32,
    last: u32,
}

/// Per partition key: the order state of first arrivals.
#[derive(Clone, Copy)]
struct KeyState {
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
enum Category {
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

// ---------------------------------------------------------------------------------------------
// Reading the streams

/// Dead letters of the route, by source shard and sequence number.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterIndex {
    /// Where they were listed (`s3://bucket/prefix/route/`); `None`: no store configured.
    pub location: Option<String>,
    by_shard: HashMap<String, HashSet<SequenceNumber>>,
    count: usize,
}

impl DeadLetterIndex {
    /// No dead-letter store was checked.
    pub fn unchecked() -> Self {
        DeadLetterIndex::default()
    }

    /// The dead letters listed at `location`, as (source shard, sequence number).
    pub fn new(
        location: String,
        letters: impl IntoIterator<Item = (String, SequenceNumber)>,
    ) -> Self {
        let mut by_shard: HashMap<String, HashSet<SequenceNumber>> = HashMap::new();
        let mut count = 0;
        for (shard, seq) in letters {
            if by_shard.entry(shard).or_default().insert(seq) {
                count += 1;
            }
        }
        DeadLetterIndex {
            location: Some(location),
            by_shard,
            count,
        }
    }

    pub fn contains(&self, shard: &str, seq: &SequenceNumber) -> bool {
        self.by_shard.get(shard).is_some_and(|s| s.contains(seq))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Which stream a read failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// Reading a stream failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the {side} stream {stream}: {error}. {}", fix_hint(&error.code, *side))]
pub struct VerifyError {
    pub side: Side,
    pub stream: String,
    pub error: RequestError,
}

/// What to do about a read error, by its kind.
pub fn fix_hint(code: &str, side: Side) -> &'static str {
    use crate::errors::Kind;
    match (crate::errors::kind(code), side) {
        (Kind::NotFound, _) => {
            "Check the ARN (region, account, stream name) and that the stream exists."
        }
        (Kind::AccessDenied, Side::Target) => {
            "The caller needs kinesis:ListShards, GetShardIterator and GetRecords on the target \
             (old account): use credentials of that account, or a stream resource policy that \
             grants them."
        }
        (Kind::AccessDenied, Side::Source) => {
            "The caller needs kinesis:ListShards, GetShardIterator and GetRecords on the source stream."
        }
        (Kind::Credentials, _) => {
            "Refresh the AWS credentials (aws sso login, or check AWS_PROFILE) and re-run."
        }
        (Kind::Network | Kind::Timeout, _) => {
            "Check the network and AWS_REGION / AWS_ENDPOINT_URL_KINESIS, then re-run."
        }
        (Kind::Throttled | Kind::ShardThrottled, _) => {
            "The stream's read limits were hit (other consumers?): re-run later or with \
             --read-concurrency 1."
        }
        _ => "Fix the cause above and re-run.",
    }
}

/// What to do after one GetRecords page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageStep {
    /// Keep the first `keep` records and read on.
    Continue { keep: usize },
    /// Keep the first `keep` records and stop this shard.
    Stop { keep: usize },
    /// At the tip before the window's end has passed: wait, then read on.
    Wait,
}

/// Decides, from a page's arrival times, whether a shard read is done: a record arrived after
/// `read_until_ms`, the shard is closed and read (`has_next` false), or the page is empty at
/// the tip (`millis_behind` 0 or unknown) and the clock (`now_ms`) is past `read_until_ms`.
pub fn page_step(
    arrivals: &[Option<i64>],
    has_next: bool,
    millis_behind: Option<i64>,
    read_until_ms: i64,
    now_ms: i64,
) -> PageStep {
    if let Some(cut) = arrivals
        .iter()
        .position(|a| a.is_some_and(|t| t > read_until_ms))
    {
        return PageStep::Stop { keep: cut };
    }
    let keep = arrivals.len();
    if !has_next {
        return PageStep::Stop { keep };
    }
    if keep == 0 && millis_behind.unwrap_or(0) == 0 {
        return if now_ms > read_until_ms {
            PageStep::Stop { keep: 0 }
        } else {
            PageStep::Wait
        };
    }
    PageStep::Continue { keep }
}

/// How a verification runs.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub source: StreamArn,
    pub target: StreamArn,
    /// Route name (keys the dead letters and the stored result).
    pub route: String,
    pub window: Window,
    /// Passes over the streams, each keeping 1/partitions of the keys.
    pub partitions: u32,
    /// Shards read at once.
    pub read_concurrency: usize,
    /// Example records listed per key and category.
    pub example_cap: usize,
    /// Print progress to stderr (when it is a terminal).
    pub progress: bool,
}

/// Wall-clock figures, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the source (summed over passes), including indexing its records.
    pub read_source_ms: u64,
    /// Reading the target (summed over passes), including matching its records.
    pub read_target_ms: u64,
    /// Time spent digesting, indexing and matching (inside the two reads) plus the final
    /// scan for missing records.
    pub compare_ms: u64,
    pub total_ms: u64,
}

/// PASS: nothing missing, nothing out of order, nothing foreign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "FAIL")]
    Fail,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        }
    }
    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "PASS" => Some(Verdict::Pass),
            "FAIL" => Some(Verdict::Fail),
            _ => None,
        }
    }
}

/// The window as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// RFC 3339, or "trim-horizon".
    pub from: String,
    pub from_ms: Option<i64>,
    pub until: String,
    pub until_ms: i64,
    pub grace_ms: i64,
}

/// Dead-letter store as checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterReport {
    /// `false`: no bucket configured; dead-lettered records show as missing.
    pub checked: bool,
    pub location: Option<String>,
    /// Dead letters stored for the route (any time).
    pub stored_for_route: usize,
}

/// The full result of `fanoutctl verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub route: String,
    pub source: String,
    pub target: String,
    pub window: WindowReport,
    pub partitions: u32,
    pub source_shards: usize,
    pub target_shards: usize,
    pub totals: Totals,
    /// Keys with any finding (failures first, then dead letters and duplicates).
    pub keys_with_findings: usize,
    pub keys: Vec<KeyFindings>,
    /// Most example records listed per key and category.
    pub example_cap: usize,
    pub dead_letters: DeadLetterReport,
    pub timings: Timings,
    pub started_at: String,
    pub started_at_ms: i64,
    pub finished_at: String,
    pub finished_at_ms: i64,
    pub warnings: Vec<String>,
}

struct ReadStats {
    shards: usize,
    records: u64,
}

/// Reads one stream over the window, parents before children, feeding each page's kept
/// records to `sink` (in shard order within each shard).
async fn read_stream(
    reader: &KinesisSource,
    stream: &StreamArn,
    side: Side,
    window: &Window,
    concurrency: usize,
    progress: bool,
    mut sink: impl FnMut(&str, Vec<SourceRecord>),
) -> Result<ReadStats, VerifyError> {
    use futures::{StreamExt, TryStreamExt};
    let fail = |error: RequestError| VerifyError {
        side,
        stream: stream.to_string(),
        error,
    };
    let shards = reader.list_shards(stream).await.map_err(fail)?;
    let levels = crate::lineage::levels(&shards);
    let start = window.start_position();
    let until = window.read_until_ms();
    let mut stats = ReadStats {
        shards: shards.len(),
        records: 0,
    };
    let tty = progress && std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut waiting_said = false;
    for level in levels {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Msg, RequestError>>(4);
        let produce = {
            let start = start.clone();
            async move {
                let res = futures::stream::iter(level.into_iter().map(|shard| {
                    read_shard(
                        reader,
                        stream,
                        shard.shard_id,
                        start.clone(),
                        until,
                        tx.clone(),
                    )
                }))
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await;
                if let Err(e) = res {
                    let _ = tx.send(Err(e)).await;
                }
            }
        };
        let consume = async {
            while let Some(msg) = rx.recv().await {
                match msg? {
                    Msg::Page(shard, records) => {
                        stats.records += records.len() as u64;
                        sink(&shard, records);
                    }
                    Msg::Waiting(ms) => {
                        if progress && !waiting_said {
                            waiting_said = true;
                            eprintln!(
                                "fanoutctl verify: {side} is read to its tip; waiting {:.0} s until the window's end plus --grace has passed",
                                (ms as f64 / 1000.0).ceil()
                            );
                        }
                    }
                }
                if tty && last_progress.elapsed() > Duration::from_secs(2) {
                    last_progress = Instant::now();
                    eprint!("\r{side}: {} records read   ", stats.records);
                }
            }
            Ok::<(), RequestError>(())
        };
        let ((), consumed) = tokio::join!(produce, consume);
        consumed.map_err(fail)?;
    }
    if tty {
        eprint!("\r{side}: {} records read   \n", stats.records);
    }
    Ok(stats)
}

enum Msg {
    Page(String, Vec<SourceRecord>),
    /// At the tip; this many milliseconds until the window's end has passed.
    Waiting(i64),
}

async fn read_shard(
    reader: &KinesisSource,
    stream: &StreamArn,
    shard_id: String,
    start: StartPosition,
    until: i64,
    tx: tokio::sync::mpsc::Sender<Result<Msg, RequestError>>,
) -> Result<(), RequestError> {
    let mut it = reader.shard_iterator(stream, &shard_id, &start).await?;
    loop {
        let page = reader.get_records(stream, &it, 10_000).await?;
        let arrivals: Vec<Option<i64>> = page.records.iter().map(|r| r.arrival_ms).collect();
        let step = page_step(
            &arrivals,
            page.next_iterator.is_some(),
            page.millis_behind_latest,
            until,
            now_ms(),
        );
        let mut records = page.records;
        match step {
            PageStep::Continue { keep } | PageStep::Stop { keep } => {
                records.truncate(keep);
                if !records.is_empty()
                    && tx
                        .send(Ok(Msg::Page(shard_id.clone(), records)))
                        .await
                        .is_err()
                {
                    return Ok(()); // the reader side stopped (an error elsewhere)
                }
                if matches!(step, PageStep::Stop { .. }) {
                    return Ok(());
                }
            }
            PageStep::Wait => {
                let left = until - now_ms() + 1;
                let _ = tx.send(Ok(Msg::Waiting(left))).await;
                tokio::time::sleep(Duration::from_millis(left.clamp(50, 1000) as u64)).await;
            }
        }
        match page.next_iterator {
            Some(next) => it = next,
            None => return Ok(()),
        }
    }
}

/// Reads the source, then the target, over the window (once per pass) and compares them.
/// The target reader may use other credentials (the old account). `dead` holds the route's dead letters (or [`DeadLetterIndex::unchecked`]).
pub async fn run(
    source_reader: &KinesisSource,
    target_reader: &KinesisSource,
    opts: &VerifyOptions,
    dead: &DeadLetterIndex,
) -> Result<Report, VerifyError> {
    let started_at_ms = now_ms();
    let started = Instant::now();
    let passes = opts.partitions.max(1);
    let mut findings = Findings::default();
    let mut timings = Timings::default();
    let mut compare = Duration::ZERO;
    let (mut source_shards, mut target_shards) = (0, 0);
    for pass in 0..passes {
        if opts.progress && passes > 1 {
            eprintln!("fanoutctl verify: pass {} of {passes}", pass + 1);
        }
        let mut v = Verifier::new(opts.window, pass, passes, opts.example_cap);
        let t = Instant::now();
        let stats = read_stream(
            source_reader,
            &opts.source,
            Side::Source,
            &opts.window,
            opts.read_concurrency,
            opts.progress,
            |shard, records| {
                let c = Instant::now();
                let s = v.shard(shard);
                for r in &records {
                    let key = r.partition_key.as_deref().unwrap_or_default();
                    let dl = !dead.is_empty() && dead.contains(shard, &r.seq);
                    v.add_source(s, key, &r.data, &r.seq, r.arrival_ms, dl);
                }
                drop(records);
                compare += c.elapsed();
            },
        )
        .await?;
        source_shards = stats.shards;
        timings.read_source_ms += t.elapsed().as_millis() as u64;
        let t = Instant::now();
        let stats = read_stream(
            target_reader,
            &opts.target,
            Side::Target,
            &opts.window,
            opts.read_concurrency,
            opts.progress,
            |shard, records| {
                let c = Instant::now();
                let s = v.shard(shard);
                for r in &records {
                    let key = r.partition_key.as_deref().unwrap_or_default();
                    v.add_target(s, key, &r.data, &r.seq, r.arrival_ms);
                }
                drop(records);
                compare += c.elapsed();
            },
        )
        .await?;
        target_shards = stats.shards;
        timings.read_target_ms += t.elapsed().as_millis() as u64;
        let c = Instant::now();
        let f = v.finish();
        compare += c.elapsed();
        findings.merge(f);
    }
    timings.compare_ms = compare.as_millis() as u64;
    timings.total_ms = started.elapsed().as_millis() as u64;
    let finished_at_ms = now_ms();
    Ok(Report::new(
        opts,
        findings,
        dead,
        timings,
        (source_shards, target_shards),
        started_at_ms,
        finished_at_ms,
    ))
}

// ---------------------------------------------------------------------------------------------
// The report

impl Report {
    /// Builds the report from merged findings.
    pub fn new(
        opts: &VerifyOptions,
        mut findings: Findings,
        dead: &DeadLetterIndex,
        timings: Timings,
        (source_shards, target_shards): (usize, usize),
        started_at_ms: i64,
        finished_at_ms: i64,
    ) -> Report {
        let t = &findings.totals;
        let mut warnings = Vec::new();
        if t.source_in_window == 0 {
            warnings.push(
                "The source has no records in the window: nothing was verified. Check --from, \
                 --until and --source."
                    .to_owned(),
            );
        }
        if dead.location.is_none() {
            warnings.push(
                "The dead-letter store was not checked (no FANOUT_DEAD_LETTER_BUCKET): records \
                 the replicator dead-lettered are counted as missing."
                    .to_owned(),
            );
        }
        // Failures first, then by key.
        findings
            .keys
            .sort_by(|a, b| b.is_failure().cmp(&a.is_failure()).then(a.key.cmp(&b.key)));
        let w = &opts.window;
        Report {
            verdict: if t.is_clean() {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            route: opts.route.clone(),
            source: opts.source.to_string(),
            target: opts.target.to_string(),
            window: WindowReport {
                from: w
                    .from_ms
                    .map(rfc3339)
                    .unwrap_or_else(|| "trim-horizon".to_owned()),
                from_ms: w.from_ms,
                until: rfc3339(w.until_ms),
                until_ms: w.until_ms,
                grace_ms: w.grace_ms,
            },
            partitions: opts.partitions.max(1),
            source_shards,
            target_shards,
            keys_with_findings: findings.keys.len(),
            totals: findings.totals,
            keys: findings.keys,
            example_cap: opts.example_cap,
            dead_letters: DeadLetterReport {
                checked: dead.location.is_some(),
                location: dead.location.clone(),
                stored_for_route: dead.len(),
            },
            timings,
            started_at: rfc3339(started_at_ms),
            started_at_ms,
            finished_at: rfc3339(finished_at_ms),
            finished_at_ms,
            warnings,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The summary an on-call engineer reads: what failed, which keys, what to do next.
    /// Lists at most `max_keys` keys.
    pub fn render_text(&self, max_keys: usize) -> String {
        let t = &self.totals;
        let mut o = String::new();
        let secs = |ms: u64| ms as f64 / 1000.0;
        let _ = writeln!(
            o,
            "{}: {} (route {})",
            self.verdict.as_str(),
            match self.verdict {
                Verdict::Pass if t.duplicates > 0 =>
                    "every record in the window is in the target, in per-key order (duplicates allowed)",
                Verdict::Pass => "every record in the window is in the target, in per-key order",
                Verdict::Fail => "the target is NOT a faithful copy of the source in this window",
            },
            self.route
        );
        let _ = writeln!(
            o,
            "  source  {} ({} shards)",
            self.source, self.source_shards
        );
        let _ = writeln!(
            o,
            "  target  {} ({} shards)",
            self.target, self.target_shards
        );
        let _ = writeln!(
            o,
            "  window  {} .. {}  (grace {} s{})",
            self.window.from,
            self.window.until,
            self.window.grace_ms as f64 / 1000.0,
            if self.partitions > 1 {
                format!(", {} passes", self.partitions)
            } else {
                String::new()
            }
        );
        let _ = writeln!(o);
        let row = |o: &mut String, label: &str, n: u64, note: &str| {
            let line = format!("  {label:<28}{n:>10}  {note}");
            let _ = writeln!(o, "{}", line.trim_end());
        };
        row(&mut o, "source records in window", t.source_in_window, "");
        row(
            &mut o,
            "  context (grace margins)",
            t.source_context,
            "read, not judged",
        );
        row(&mut o, "target records read", t.target_read, "");
        row(&mut o, "matched", t.matched, "");
        row(
            &mut o,
            "missing",
            t.missing,
            if t.missing > 0 { "<- FAIL" } else { "" },
        );
        let dl_note = match &self.dead_letters.location {
            Some(loc) => format!("in {loc}"),
            None => "NOT CHECKED: no dead-letter bucket configured".to_owned(),
        };
        row(&mut o, "dead-lettered", t.dead_lettered, &dl_note);
        row(
            &mut o,
            "duplicates",
            t.duplicates,
            if t.duplicates > 0 {
                "allowed (at-least-once)"
            } else {
                ""
            },
        );
        row(
            &mut o,
            "out of order (per key)",
            t.out_of_order,
            if t.out_of_order > 0 { "<- FAIL" } else { "" },
        );
        row(
            &mut o,
            "extra (not from the source)",
            t.extra,
            if t.extra > 0 { "<- FAIL" } else { "" },
        );
        row(
            &mut o,
            "outside window",
            t.outside_window,
            "target records of the margins, not judged",
        );
        row(&mut o, "partition keys", t.keys, "");

        if !self.keys.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Keys with findings ({} of {}{}):",
                self.keys.len().min(max_keys),
                self.keys_with_findings,
                if self.keys.len() > max_keys {
                    "; --output json lists them all"
                } else {
                    ""
                }
            );
            for k in self.keys.iter().take(max_keys) {
                let mut parts = Vec::new();
                let mut list = |n: u64, what: &str, ex: &[RecordRef]| {
                    if n > 0 {
                        let shown: Vec<String> = ex
                            .iter()
                            .take(3)
                            .map(|r| format!("{} {}", r.shard, r.sequence_number))
                            .collect();
                        let more = if n as usize > shown.len() {
                            ", …"
                        } else {
                            ""
                        };
                        parts.push(format!("{n} {what} [{}{more}]", shown.join(", ")));
                    }
                };
                list(k.missing, "missing", &k.examples.missing);
                list(k.out_of_order, "out of order", &k.examples.out_of_order);
                list(k.extra, "extra (target)", &k.examples.extra);
                list(k.duplicates, "duplicated", &k.examples.duplicates);
                list(k.dead_lettered, "dead-lettered", &k.examples.dead_lettered);
                let _ = writeln!(o, "  {:?}: {}", k.key, parts.join("; "));
            }
        }

        let mut next = Vec::new();
        if t.missing > 0 {
            next.push(format!(
                "{} in-window source record(s) have no copy in the target and no dead letter. Check that the \
                 replicator is running and caught up (MillisBehindNewest; ERROR lines naming a \
                 stopped shard). If replication lag can exceed the grace ({} s), re-run with a \
                 larger --grace or an earlier --until. Do not flip producers until this passes.",
                t.missing,
                self.window.grace_ms / 1000
            ));
        }
        if t.out_of_order > 0 {
            next.push(
                "Per-key order is broken: the replication path has a bug, or something else \
                 writes to the target. Do not flip; keep this report (--output json) and escalate."
                    .to_owned(),
            );
        }
        if t.extra > 0 {
            next.push(
                "The target holds records that did not come from the source in this window: a \
                 producer still writes to the target directly (not yet re-pointed?), or the \
                 route points at the wrong target. Find the producer before flipping."
                    .to_owned(),
            );
        }
        if t.dead_lettered > 0 {
            next.push(format!(
                "{} records were dead-lettered (not failures): review them in {} and redrive \
                 once the cause is fixed.",
                t.dead_lettered,
                self.dead_letters
                    .location
                    .as_deref()
                    .unwrap_or("the dead-letter bucket")
            ));
        }
        if !next.is_empty() || !self.warnings.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "What to do next:");
            for n in self.warnings.iter().chain(&next) {
                o.push_str(&wrap(n, "  - ", "    ", 96));
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Timings: read source {:.1} s, read target {:.1} s, compare {:.1} s (within the reads); total {:.1} s.",
            secs(self.timings.read_source_ms),
            secs(self.timings.read_target_ms),
            secs(self.timings.compare_ms),
            secs(self.timings.total_ms),
        );
        o
    }

    /// The stored form (no per-key detail).
    pub fn to_record(&self, actor: &str, host: &str) -> VerificationRecord {
        VerificationRecord {
            route: self.route.clone(),
            source_arn: self.source.clone(),
            target_arn: self.target.clone(),
            window_from: self.window.from.clone(),
            window_from_ms: self.window.from_ms,
            window_until: self.window.until.clone(),
            window_until_ms: self.window.until_ms,
            grace_ms: self.window.grace_ms,
            totals: self.totals.clone(),
            verdict: self.verdict,
            dead_letters_checked: self.dead_letters.checked,
            partitions: self.partitions,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            duration_ms: self.timings.total_ms,
            actor: actor.to_owned(),
            host: host.to_owned(),
            keys_with_findings: self.keys_with_findings as u64,
        }
    }
}

/// Word-wraps `text` to `width` columns, the first line after `first`, the others after `rest`.
fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// One stored verification (what the controller reads before a flip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub route: String,
    pub source_arn: String,
    pub target_arn: String,
    /// RFC 3339, or "trim-horizon".
    pub window_from: String,
    pub window_from_ms: Option<i64>,
    pub window_until: String,
    pub window_until_ms: i64,
    pub grace_ms: i64,
    pub totals: Totals,
    pub verdict: Verdict,
    pub dead_letters_checked: bool,
    pub partitions: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub duration_ms: u64,
    /// Who ran it: the caller's ARN (STS GetCallerIdentity) or `$USER`.
    pub actor: String,
    pub host: String,
    pub keys_with_findings: u64,
}

impl VerificationRecord {
    /// Passed, and finished no earlier than `now_ms - max_age_ms`: what a flip can require.
    pub fn is_recent_pass(&self, now_ms: i64, max_age_ms: i64) -> bool {
        self.verdict == Verdict::Pass
            && self.totals.source_in_window > 0
            && now_ms.saturating_sub(self.finished_at_ms) <= max_age_ms
    }
}

#[cfg(test)]
mod tests {
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
            source: StreamArn::parse("arn:aws:kinesis:us-east-1:123456789012:stream/orders")
                .unwrap(),
            target: StreamArn::parse("arn:aws:kinesis:us-east-1:222222222222:stream/orders")
                .unwrap(),
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
}
