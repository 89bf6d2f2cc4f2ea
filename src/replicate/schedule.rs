//! Which records go into the next PutRecords request: per-key queues, per-key backoff, the
//! route's order mode, and the target shards' pacing. Pure: no I/O, time is an argument.
//!
//! A key never has more than one request in flight. What that request carries depends on
//! the route's order mode:
//! - `strict`: the key's head record;
//! - `runs`: up to `run_length` consecutive records of the key, as separate entries. A key
//!   starts at `run_length`; a run that came back with a failure makes the key's next one at
//!   most half as long and no longer than what got through before the failure (at least
//!   one), and each answer without a failure doubles it back, up to `run_length`. Where a
//!   tenth of the entries fail, runs settle near ten records, about what gets through
//!   whole: every entry of a run after a failed one is written again (a repair), so under
//!   failures long runs mostly buy repairs.
//! - `aggregated`: the key's consecutive records packed into one KPL aggregated record (a
//!   single record, or a record that is itself KPL-aggregated, goes as it is).
//!
//! KPL-aggregated source records pass through unchanged when the target's shard map puts
//! every user record they hold on the shard their own partition key lands on. When it does
//! not (the target has other shards than the source), a consumer that deaggregates like the
//! KCL would drop the user records outside that shard's hash range. Then the batch is
//! scheduled per *target shard* instead of per key: each aggregated record is split into one
//! piece per target shard (its user records, in order, re-aggregated, addressed to that shard
//! by explicit hash key), and each target shard's queue keeps source order, so every user
//! key keeps its order too.

use tokio::time::Instant;

use crate::kpl;
use crate::model::{OrderMode, SourceRecord};
use crate::pacing::{Bucket, ShardLimits, ShardMap, GATHER};
use crate::plan;

const NONE: usize = usize::MAX;

/// What one PutRecords entry carries.
#[derive(Debug)]
pub enum Payload {
    /// A source record, as it is.
    Record(usize),
    /// A KPL aggregated record made of several consecutive records of one key.
    Aggregated(Vec<u8>),
    /// Part of a KPL-aggregated source record: its user records for one target shard.
    Piece(Piece),
}

/// The user records of an aggregated source record that belong to one target shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// A KPL aggregated record of those user records.
    pub data: Vec<u8>,
    /// The first user record's partition key (consumers see it as the outer key).
    pub partition_key: String,
    /// A hash key inside the target shard, so the piece lands there whatever its key says.
    pub explicit_hash_key: String,
}

/// One PutRecords entry and the source records it covers (in source order).
#[derive(Debug)]
pub struct Entry {
    pub slot: usize,
    /// The queue items it carries; `records[i]` is `items[i]`'s source record.
    pub items: Vec<usize>,
    pub records: Vec<usize>,
    pub payload: Payload,
}

/// What a key's queue holds: a whole source record, or one piece of one.
#[derive(Debug)]
struct Item {
    record: usize,
    piece: Option<Piece>,
}

#[derive(Clone, Debug)]
struct Key {
    /// First unwritten item, or `NONE`.
    head: usize,
    in_flight: bool,
    attempts: u32,
    not_before: Option<Instant>,
    /// Target shard (index into the shard map).
    shard: usize,
    /// Aggregation failed for this key: send its records one by one.
    plain: bool,
    /// `runs`: how many records the key's next request may carry.
    run: usize,
}

/// Limits that shape requests.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub mode: OrderMode,
    pub max_entries: usize,
    pub max_request_bytes: usize,
    pub max_record_bytes: usize,
    pub run_length: usize,
}

/// The per-key state of one route's share of a batch.
pub struct Schedule<'a> {
    records: &'a [SourceRecord],
    shape: Shape,
    items: Vec<Item>,
    /// Per record: items not yet written (a split record has one per piece).
    remaining: Vec<u32>,
    keys: Vec<Key>,
    /// Per item: the key's next item, or `NONE`.
    next: Vec<usize>,
    /// Records at or after this index are never sent (a systemic stop there).
    limit: usize,
    /// The slots that may still send, longest queue first (see [`Schedule::new`]); slots
    /// found finished are dropped as requests are built.
    active: Vec<usize>,
    /// The last [`Schedule::next_request`] left a ready key behind because its target shard
    /// had no tokens: it may go as soon as they come, without waiting for an answer.
    held: bool,
    /// The batch is scheduled per target shard (some aggregated record had to be split).
    by_shard: bool,
}

impl<'a> Schedule<'a> {
    /// `pending`: the indices to write, ascending.
    pub fn new(
        records: &'a [SourceRecord],
        pending: impl IntoIterator<Item = usize>,
        shape: Shape,
        map: &ShardMap,
    ) -> Self {
        let pending: Vec<usize> = pending.into_iter().collect();
        let (items, by_shard) = plan_items(records, &pending, map);
        let mut remaining = vec![0u32; records.len()];
        for item in &items {
            remaining[item.record] += 1;
        }
        // Slots: one per partition key, or one per target shard.
        let mut by_key: std::collections::HashMap<&str, usize, foldhash::fast::RandomState> =
            Default::default();
        let mut by_target: Vec<usize> = vec![NONE; map.len().max(1)];
        let mut keys: Vec<Key> = Vec::new();
        let mut tail: Vec<usize> = Vec::new();
        let mut next = vec![NONE; items.len()];
        let mut count: Vec<u32> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let key = records[item.record]
                .partition_key
                .as_deref()
                .unwrap_or_default();
            // The target shard: a piece says it; otherwise the key's hash (once per key).
            let shard_of = || match &item.piece {
                Some(p) => kpl::parse_explicit_hash_key(&p.explicit_hash_key)
                    .map_or(0, |h| map.shard_for(h)),
                None if map.is_known() => map.shard_for(kpl::hash_key(key)),
                None => 0,
            };
            let new_key = |keys: &mut Vec<Key>, tail: &mut Vec<usize>, shard: usize| {
                keys.push(Key {
                    head: index,
                    in_flight: false,
                    attempts: 0,
                    not_before: None,
                    shard,
                    plain: false,
                    run: shape.run_length.max(1),
                });
                tail.push(index);
                keys.len() - 1
            };
            let slot = if by_shard {
                let shard = shard_of();
                match by_target[shard] {
                    NONE => {
                        let slot = new_key(&mut keys, &mut tail, shard);
                        by_target[shard] = slot;
                        slot
                    }
                    slot => slot,
                }
            } else {
                *by_key
                    .entry(key)
                    .or_insert_with(|| new_key(&mut keys, &mut tail, shard_of()))
            };
            if tail[slot] != index {
                next[tail[slot]] = index;
                tail[slot] = index;
            }
            if slot == count.len() {
                count.push(0);
            }
            count[slot] += 1;
        }
        // Longest queue first: a batch is done when its longest queue is, so when a shard's
        // tokens or a request's entries run short, the keys with the most records left go
        // first (ties in source order). A key moves about one step per round in strict mode, so the order
        // at the start stays close to the order by records left.
        let mut active: Vec<usize> = (0..keys.len()).collect();
        active.sort_by_key(|&slot| std::cmp::Reverse(count[slot]));
        Schedule {
            records,
            shape,
            items,
            remaining,
            keys,
            next,
            limit: records.len(),
            active,
            held: false,
            by_shard,
        }
    }

    /// Source records split into per-target-shard pieces (0 unless the batch had to be).
    pub fn split_records(&self) -> usize {
        if !self.by_shard {
            return 0;
        }
        let mut split: Vec<usize> = self
            .items
            .iter()
            .filter(|i| i.piece.is_some())
            .map(|i| i.record)
            .collect();
        split.dedup();
        split.len()
    }

    /// Whether `item` exists and its record is before the stop point.
    fn live(&self, item: usize) -> bool {
        item != NONE && self.items[item].record < self.limit
    }

    /// Some record is neither written nor given up (at or past the stop point).
    pub fn has_pending(&self) -> bool {
        self.active
            .iter()
            .any(|&slot| self.live(self.keys[slot].head))
    }

    /// Keys that could send now if their target shard has room, counted up to `most`.
    pub fn ready_keys(&self, now: Instant, most: usize) -> usize {
        self.active
            .iter()
            .filter(|&&slot| self.ready(&self.keys[slot], now))
            .take(most)
            .count()
    }

    /// The last request left a ready key behind for its target shard's tokens (see `held`).
    pub fn awaits_tokens(&self) -> bool {
        self.held
    }

    /// Never send records at or after `limit` again.
    pub fn truncate_at(&mut self, limit: usize) {
        self.limit = self.limit.min(limit);
    }

    pub fn shard_of(&self, slot: usize) -> usize {
        self.keys[slot].shard
    }

    fn ready(&self, key: &Key, now: Instant) -> bool {
        !key.in_flight && self.live(key.head) && key.not_before.is_none_or(|t| t <= now)
    }

    /// Bytes an item counts for against request and shard limits.
    fn item_bytes(&self, item: usize) -> usize {
        let it = &self.items[item];
        match &it.piece {
            Some(p) => p.data.len() + p.partition_key.len(),
            None => plan::record_bytes(&self.records[it.record]),
        }
    }

    /// The next request: entries of keys that are ready, not in flight, and whose target shard
    /// has room, longest queue first; `None` when nothing may be sent now. Marks the keys in
    /// flight. `buckets`: one per target shard, or empty when pacing is off.
    pub fn next_request(
        &mut self,
        now: Instant,
        buckets: &mut [Bucket],
        limits: &ShardLimits,
    ) -> Option<Vec<Entry>> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        self.held = false;
        let mut active = std::mem::take(&mut self.active);
        let mut kept = 0;
        for at in 0..active.len() {
            let slot = active[at];
            let key = &self.keys[slot];
            // Finished for good: its head only moves forward and the stop point only back.
            if !key.in_flight && !self.live(key.head) {
                continue;
            }
            active[kept] = slot;
            kept += 1;
            if entries.len() >= self.shape.max_entries || !self.ready(key, now) {
                continue;
            }
            let before = entries.len();
            if self.take_key(slot, now, buckets, limits, &mut entries, &mut bytes) {
                self.held = true;
            }
            if entries.len() > before {
                self.keys[slot].in_flight = true;
            }
        }
        active.truncate(kept);
        self.active = active;
        (!entries.is_empty()).then_some(entries)
    }

    /// Adds what key `slot` may send now to `entries`. Returns whether its target shard's
    /// tokens held back a record that the request had room for.
    fn take_key(
        &self,
        slot: usize,
        now: Instant,
        buckets: &mut [Bucket],
        limits: &ShardLimits,
        entries: &mut Vec<Entry>,
        bytes: &mut usize,
    ) -> bool {
        let shape = self.shape;
        let key = &self.keys[slot];
        // An aggregate is no bigger than the shard's bucket has room for now, or the key would
        // wait for tokens the bucket may never hold at once.
        let room = buckets
            .get_mut(key.shard)
            .map_or(usize::MAX, |b| b.room(limits, now));
        let mut bucket = buckets.get_mut(key.shard);
        let mut held = false;
        let mut admit = |size: usize| {
            let taken = match bucket.as_deref_mut() {
                Some(b) => b.take_paced(limits, size, now),
                None => true,
            };
            held |= !taken;
            taken
        };
        let fits = |entries: &Vec<Entry>, total: usize, size: usize| {
            entries.len() < shape.max_entries
                && (entries.is_empty() || total + size <= shape.max_request_bytes)
        };
        let head = key.head;
        let plain_item = |i: usize| {
            self.items[i].piece.is_none()
                && !kpl::is_aggregated(&self.records[self.items[i].record].data)
        };
        let aggregate =
            shape.mode == OrderMode::Aggregated && !key.plain && !self.by_shard && plain_item(head);
        if aggregate {
            let record = &self.records[self.items[head].record];
            let key_text = record.partition_key.as_deref().unwrap_or_default();
            let mut size = AggregateSize::new(key_text.len());
            let mut members = Vec::new();
            let mut i = head;
            while self.live(i) && plain_item(i) {
                let data = &self.records[self.items[i].record].data;
                let grown = size.with(data.len());
                if !members.is_empty()
                    && (grown + key_text.len() > shape.max_record_bytes.min(room)
                        || !fits(entries, *bytes, grown + key_text.len()))
                {
                    break;
                }
                size.add(data.len());
                members.push(i);
                i = self.next[i];
            }
            if members.len() > 1 {
                let total = size.total() + key_text.len();
                if !fits(entries, *bytes, total) || !admit(total) {
                    return held;
                }
                let mut agg = kpl::Aggregator::new();
                for &m in &members {
                    agg.add(key_text, None, &self.records[self.items[m].record].data);
                }
                *bytes += total;
                entries.push(Entry {
                    slot,
                    records: members.iter().map(|&m| self.items[m].record).collect(),
                    items: members,
                    payload: Payload::Aggregated(agg.finish()),
                });
                return held;
            }
        }
        let run = match shape.mode {
            OrderMode::Runs => key.run,
            _ => 1,
        };
        let mut i = head;
        let mut taken = 0;
        while taken < run && self.live(i) {
            let size = self.item_bytes(i);
            if !fits(entries, *bytes, size) || !admit(size) {
                break;
            }
            *bytes += size;
            let item = &self.items[i];
            entries.push(Entry {
                slot,
                items: vec![i],
                records: vec![item.record],
                payload: match &item.piece {
                    Some(p) => Payload::Piece(p.clone()),
                    None => Payload::Record(item.record),
                },
            });
            taken += 1;
            i = self.next[i];
        }
        held
    }

    /// The earliest time something that waits (a key's backoff, a shard's tokens) may go;
    /// `None` when nothing waits.
    pub fn next_wake(
        &self,
        now: Instant,
        buckets: &mut [Bucket],
        limits: &ShardLimits,
    ) -> Option<Instant> {
        let waiting = |key: &Key| !key.in_flight && self.live(key.head);
        // Per target shard, the smallest head that could go now but for tokens: one token
        // computation per shard. (A key still backing off wakes at its own time and is
        // counted then.)
        let mut smallest: Vec<usize> = vec![usize::MAX; buckets.len()];
        for &slot in &self.active {
            let key = &self.keys[slot];
            if self.ready(key, now) && key.shard < smallest.len() {
                smallest[key.shard] = smallest[key.shard].min(self.item_bytes(key.head));
            }
        }
        // Tokens trickle in: gather a tick's worth rather than a request per token (no longer
        // than a full request's entries take at the configured rate).
        let tick = GATHER.min(Bucket::time_to_gather(limits, self.shape.max_entries));
        let tokens_at: Vec<Instant> = smallest
            .iter()
            .zip(buckets.iter_mut())
            .map(|(&bytes, b)| {
                if bytes == usize::MAX {
                    return now;
                }
                let wait = b.wait_for(limits, bytes, now);
                if wait.is_zero() {
                    now
                } else {
                    now + wait.max(tick)
                }
            })
            .collect();
        self.active
            .iter()
            .map(|&slot| &self.keys[slot])
            .filter(|key| waiting(key))
            .map(|key| {
                let at = key.not_before.unwrap_or(now).max(now);
                tokens_at.get(key.shard).map_or(at, |&t| at.max(t))
            })
            .min()
    }

    /// Item `item`, the head of key `slot`, is written. Returns whether its source record is
    /// now wholly written (a split record: its last piece).
    pub fn written(&mut self, slot: usize, item: usize) -> bool {
        self.pop(slot, item);
        let record = self.items[item].record;
        self.remaining[record] = self.remaining[record].saturating_sub(1);
        self.remaining[record] == 0
    }

    /// Item `item`, the head of key `slot`, is done without being written (dead-lettered).
    pub fn pop(&mut self, slot: usize, item: usize) {
        let key = &mut self.keys[slot];
        if key.head == item {
            key.head = self.next[item];
            key.attempts = 0;
        }
    }

    /// `runs`: key `slot`'s run came back with a failure after `written` of its entries got
    /// through: its next run is at most half as long, and no longer than what got through
    /// (at least one record).
    pub fn run_failed(&mut self, slot: usize, written: usize) {
        let key = &mut self.keys[slot];
        key.run = (key.run / 2).min(written).max(1);
    }

    /// Key `slot`'s request came back. `failed_at`: its head was not written, at that time;
    /// the key then waits `backoff(its attempt count)`, and only this key waits.
    pub fn settle(
        &mut self,
        slot: usize,
        failed_at: Option<Instant>,
        backoff: impl Fn(u32) -> std::time::Duration,
    ) {
        let most = self.shape.run_length.max(1);
        let key = &mut self.keys[slot];
        key.in_flight = false;
        if let Some(now) = failed_at {
            key.attempts += 1;
            key.not_before = Some(now + backoff(key.attempts));
        } else {
            key.not_before = None;
            key.run = key.run.saturating_mul(2).min(most);
        }
    }

    /// Aggregation was refused for this key: send its records one by one from now on.
    pub fn send_plain(&mut self, slot: usize) {
        self.keys[slot].plain = true;
    }
}

/// The queue items of a batch, and whether it must be scheduled per target shard: each
/// pending record as it is, unless some KPL-aggregated record holds user records that the
/// target's shard map puts elsewhere than the record itself; then every aggregated record is
/// split into per-target-shard pieces.
fn plan_items(records: &[SourceRecord], pending: &[usize], map: &ShardMap) -> (Vec<Item>, bool) {
    let whole = || {
        pending
            .iter()
            .map(|&record| Item {
                record,
                piece: None,
            })
            .collect()
    };
    if !map.is_known() || map.len() < 2 {
        return (whole(), false);
    }
    // The user records of each aggregated record and their target shards.
    let mut split: Vec<(usize, Vec<(usize, kpl::SubRecord)>)> = Vec::new();
    let mut needed = false;
    for &i in pending {
        let data = &records[i].data;
        if !kpl::is_aggregated(data) {
            continue;
        }
        let Ok(users) = kpl::deaggregate(data) else {
            continue;
        };
        let outer = map.shard_for(kpl::hash_key(
            records[i].partition_key.as_deref().unwrap_or_default(),
        ));
        let users: Vec<(usize, kpl::SubRecord)> = users
            .into_iter()
            .map(|u| (map.shard_for(user_hash(&u)), u))
            .collect();
        needed |= users.iter().any(|(s, _)| *s != outer);
        split.push((i, users));
    }
    if !needed {
        return (whole(), false);
    }
    let mut users_of: std::collections::HashMap<usize, Vec<(usize, kpl::SubRecord)>> =
        split.into_iter().collect();
    let mut items = Vec::new();
    for &record in pending {
        let Some(users) = users_of.remove(&record) else {
            items.push(Item {
                record,
                piece: None,
            });
            continue;
        };
        // One piece per target shard, in the order the shards first appear.
        let mut shards: Vec<usize> = Vec::new();
        for (s, _) in &users {
            if !shards.contains(s) {
                shards.push(*s);
            }
        }
        for shard in shards {
            let mut agg = kpl::Aggregator::new();
            let mut first: Option<&kpl::SubRecord> = None;
            for (_, u) in users.iter().filter(|(s, _)| *s == shard) {
                first.get_or_insert(u);
                agg.add(&u.partition_key, u.explicit_hash_key.as_deref(), &u.data);
            }
            let Some(first) = first else { continue };
            items.push(Item {
                record,
                piece: Some(Piece {
                    data: agg.finish(),
                    partition_key: first.partition_key.clone(),
                    explicit_hash_key: user_hash(first).to_string(),
                }),
            });
        }
    }
    (items, true)
}

/// The hash key that places a user record: its explicit hash key, else its key's MD5.
fn user_hash(u: &kpl::SubRecord) -> u128 {
    u.explicit_hash_key
        .as_deref()
        .and_then(kpl::parse_explicit_hash_key)
        .unwrap_or_else(|| kpl::hash_key(&u.partition_key))
}

/// The exact size of a KPL aggregated record of one partition key (index 0, no explicit hash
/// key), grown record by record: magic, the key table, one `Record` message per record, MD5.
#[derive(Clone, Copy, Debug)]
pub struct AggregateSize {
    bytes: usize,
}

fn varint_len(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

impl AggregateSize {
    pub fn new(key_len: usize) -> Self {
        AggregateSize {
            bytes: kpl::MAGIC.len() + 1 + varint_len(key_len) + key_len + 16,
        }
    }

    fn record(data_len: usize) -> usize {
        // partition_key_index = 0 (tag + varint), data (tag + length + bytes).
        let inner = 2 + 1 + varint_len(data_len) + data_len;
        1 + varint_len(inner) + inner
    }

    pub fn with(&self, data_len: usize) -> usize {
        self.bytes + Self::record(data_len)
    }

    pub fn add(&mut self, data_len: usize) {
        self.bytes += Self::record(data_len);
    }

    pub fn total(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests;
