//! Shard leases: one owner per (reader, shard) at a time, and the reader's own position.
//!
//! A lease has an owner, an expiry and a counter. Taking a lease (free, released, or expired)
//! increments the counter; the counter is the fencing token: every checkpoint write is
//! conditional on `owner = me AND counter = mine`, so a runner that lost its lease (paused,
//! partitioned) can no longer move the position. Each take starts an "epoch" recorded in an
//! append-only history (owner, where it started, how far it got, when), which is how tests
//! and people check that no shard was ever read by two owners at once.
//!
//! What fencing cannot do: stop a paused runner's in-flight PutRecords once it wakes up. Both
//! owners then write the same records in source order, so first arrivals stay in order; the
//! only effect is duplicates, counted like any other replay.
//!
//! Expiry uses wall-clock milliseconds written by the owner; runners sharing a table are
//! assumed to have clocks within a small fraction of the lease time of each other.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use crate::model::StoreError;
use crate::seq::SequenceNumber;

/// How far a reader got in a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// Nothing handled yet: start where the run says (TRIM_HORIZON, a time, …).
    Start,
    /// Every record up to and including this one is handled.
    After(SequenceNumber),
    /// The shard is closed and read to its end (or, for a bounded window, past its end).
    End,
}

impl Position {
    /// The stored form: "" | 64-digit padded sequence number | "SHARD_END".
    pub fn to_stored(&self) -> String {
        match self {
            Position::Start => String::new(),
            Position::After(s) => s.to_padded(),
            Position::End => "SHARD_END".to_owned(),
        }
    }

    pub fn from_stored(text: &str) -> Result<Position, String> {
        match text {
            "" => Ok(Position::Start),
            "SHARD_END" => Ok(Position::End),
            t => SequenceNumber::parse(t)
                .map(Position::After)
                .map_err(|e| format!("bad stored position {t:?}: {e}")),
        }
    }
}

/// A lease this process holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub shard_id: String,
    pub owner: String,
    /// The fencing token.
    pub counter: u64,
}

/// A lease as stored, whoever holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub shard_id: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub expires_at_ms: i64,
    pub position: Position,
    /// The owner's last heartbeat, and what it said.
    pub heartbeat_ms: i64,
    pub millis_behind: Option<i64>,
    pub caught_up: bool,
}

impl LeaseRecord {
    /// May `owner` take this lease at `now_ms`?
    pub fn claimable(&self, now_ms: i64) -> bool {
        self.position != Position::End && (self.owner.is_none() || self.expires_at_ms < now_ms)
    }

    /// Held by someone else whose lease has not expired.
    pub fn held_by_other(&self, me: &str, now_ms: i64) -> bool {
        self.owner.as_deref().is_some_and(|o| o != me) && self.expires_at_ms >= now_ms
    }
}

/// One owner's tenure of a lease, from the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub shard_id: String,
    pub counter: u64,
    pub owner: String,
    pub acquired_at_ms: i64,
    /// The position the owner started from.
    pub from: Position,
    /// The last position it wrote (equal to `from` if it wrote none).
    pub last: Position,
    pub checkpoints: u64,
    pub last_checkpoint_ms: Option<i64>,
    pub released_at_ms: Option<i64>,
}

/// What a heartbeat reports about a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub millis_behind: Option<i64>,
    pub caught_up: bool,
}

/// Where leases live. Every write that involves a held lease is fenced by its counter.
pub trait LeaseStore: Send + Sync {
    /// Every lease of `name`.
    fn list(&self, name: &str)
        -> impl Future<Output = Result<Vec<LeaseRecord>, StoreError>> + Send;

    /// Takes the lease if it is free, released or expired (creating it if absent). Returns the
    /// lease and the position to resume from, or `None` if someone else holds it or the
    /// shard is finished.
    fn acquire(
        &self,
        name: &str,
        shard_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<Option<(Lease, Position)>, StoreError>> + Send;

    /// Extends the lease and records a heartbeat. `false`: the lease is lost.
    fn renew(
        &self,
        lease: &Lease,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Moves the position (fenced) and extends the lease. `false`: the lease is lost and
    /// nothing was written.
    fn checkpoint(
        &self,
        lease: &Lease,
        position: &Position,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives the lease up (position kept). `false`: it was already lost.
    fn release(
        &self,
        lease: &Lease,
        now_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The epochs of `name`, per shard in counter order.
    fn history(&self, name: &str) -> impl Future<Output = Result<Vec<Epoch>, StoreError>> + Send;
}

/// Leases in this process's memory: for runs without a table (positions are then lost when
/// the process ends) and for unit tests.
/// (lease name, shard id) → the lease and its epochs.
type MemoryTable = HashMap<(String, String), (LeaseRecord, Vec<Epoch>)>;

#[derive(Default)]
pub struct MemoryLeases {
    inner: Mutex<MemoryTable>,
}

impl MemoryLeases {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryTable) -> T) -> Result<T, StoreError> {
        self.inner
            .lock()
            .map(|mut g| f(&mut g))
            .map_err(|_| StoreError {
                code: "Poisoned".to_owned(),
                message: "lease store lock poisoned".to_owned(),
            })
    }
}

/// A renewal: the lease runs `ttl_ms` from now, with what the heartbeat reports.
fn beat(r: &mut LeaseRecord, heartbeat: Heartbeat, ttl_ms: i64, now_ms: i64) {
    r.expires_at_ms = now_ms + ttl_ms;
    r.heartbeat_ms = now_ms;
    r.millis_behind = heartbeat.millis_behind;
    r.caught_up = heartbeat.caught_up;
}

fn holds(r: &LeaseRecord, lease: &Lease) -> bool {
    r.owner.as_deref() == Some(lease.owner.as_str()) && r.counter == lease.counter
}

impl LeaseStore for MemoryLeases {
    async fn list(&self, name: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        self.with(|m| {
            let mut v: Vec<LeaseRecord> = m
                .iter()
                .filter(|((n, _), _)| n == name)
                .map(|(_, (r, _))| r.clone())
                .collect();
            v.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
            v
        })
    }

    async fn acquire(
        &self,
        name: &str,
        shard_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(Lease, Position)>, StoreError> {
        self.with(|m| {
            let (r, epochs) = m
                .entry((name.to_owned(), shard_id.to_owned()))
                .or_insert_with(|| {
                    (
                        LeaseRecord {
                            shard_id: shard_id.to_owned(),
                            owner: None,
                            counter: 0,
                            expires_at_ms: 0,
                            position: Position::Start,
                            heartbeat_ms: 0,
                            millis_behind: None,
                            caught_up: false,
                        },
                        Vec::new(),
                    )
                });
            if !r.claimable(now_ms) {
                return None;
            }
            r.owner = Some(owner.to_owned());
            r.counter += 1;
            r.expires_at_ms = now_ms + ttl_ms;
            r.heartbeat_ms = now_ms;
            epochs.push(Epoch {
                shard_id: shard_id.to_owned(),
                counter: r.counter,
                owner: owner.to_owned(),
                acquired_at_ms: now_ms,
                from: r.position.clone(),
                last: r.position.clone(),
                checkpoints: 0,
                last_checkpoint_ms: None,
                released_at_ms: None,
            });
            Some((
                Lease {
                    name: name.to_owned(),
                    shard_id: shard_id.to_owned(),
                    owner: owner.to_owned(),
                    counter: r.counter,
                },
                r.position.clone(),
            ))
        })
    }

    async fn renew(
        &self,
        lease: &Lease,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with(
            |m| match m.get_mut(&(lease.name.clone(), lease.shard_id.clone())) {
                Some((r, _)) if holds(r, lease) => {
                    beat(r, heartbeat, ttl_ms, now_ms);
                    true
                }
                _ => false,
            },
        )
    }

    async fn checkpoint(
        &self,
        lease: &Lease,
        position: &Position,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.with(
            |m| match m.get_mut(&(lease.name.clone(), lease.shard_id.clone())) {
                Some((r, epochs)) if holds(r, lease) => {
                    r.position = position.clone();
                    beat(r, heartbeat, ttl_ms, now_ms);
                    if let Some(e) = epochs.iter_mut().find(|e| e.counter == lease.counter) {
                        e.last = position.clone();
                        e.checkpoints += 1;
                        e.last_checkpoint_ms = Some(now_ms);
                    }
                    true
                }
                _ => false,
            },
        )
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        self.with(
            |m| match m.get_mut(&(lease.name.clone(), lease.shard_id.clone())) {
                Some((r, epochs)) if holds(r, lease) => {
                    r.owner = None;
                    r.expires_at_ms = 0;
                    if let Some(e) = epochs.iter_mut().find(|e| e.counter == lease.counter) {
                        e.released_at_ms = Some(now_ms);
                    }
                    true
                }
                _ => false,
            },
        )
    }

    async fn history(&self, name: &str) -> Result<Vec<Epoch>, StoreError> {
        self.with(|m| {
            let mut v: Vec<Epoch> = m
                .iter()
                .filter(|((n, _), _)| n == name)
                .flat_map(|(_, (_, e))| e.iter().cloned())
                .collect();
            v.sort_by(|a, b| (&a.shard_id, a.counter).cmp(&(&b.shard_id, b.counter)));
            v
        })
    }
}

/// Checks a shard's history for overlapping tenures: returns one message per problem.
/// Epoch n+1 must start from where epoch n left off, and must begin after epoch n's last
/// write (its release, or its last checkpoint if it never released: it died or lost the lease).
pub fn check_history(epochs: &[Epoch]) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in epochs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.shard_id != b.shard_id {
            continue;
        }
        if b.counter <= a.counter {
            problems.push(format!(
                "{}: counters not increasing ({} then {})",
                a.shard_id, a.counter, b.counter
            ));
        }
        if b.from != a.last {
            problems.push(format!(
                "{}: epoch {} started at {:?} but epoch {} ended at {:?}",
                a.shard_id, b.counter, b.from, a.counter, a.last
            ));
        }
        let a_end = a
            .released_at_ms
            .or(a.last_checkpoint_ms)
            .unwrap_or(a.acquired_at_ms);
        if b.acquired_at_ms < a_end {
            problems.push(format!(
                "{}: epoch {} ({}) acquired at {} while epoch {} ({}) was still writing until {}",
                a.shard_id, b.counter, b.owner, b.acquired_at_ms, a.counter, a.owner, a_end
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> Position {
        Position::After(SequenceNumber::parse(&n.to_string()).unwrap())
    }

    #[tokio::test]
    async fn one_owner_at_a_time_and_the_counter_fences_a_lost_lease() {
        let store = MemoryLeases::default();
        let hb = Heartbeat::default();
        let (a, pos) = store
            .acquire("r", "s0", "A", 1000, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((a.counter, pos), (1, Position::Start));
        // B cannot take it while A's lease runs.
        assert!(store
            .acquire("r", "s0", "B", 1000, 500)
            .await
            .unwrap()
            .is_none());
        assert!(store.checkpoint(&a, &seq(10), hb, 1000, 600).await.unwrap());
        // A stops renewing; after expiry B takes over from A's position.
        let (b, pos) = store
            .acquire("r", "s0", "B", 1000, 1700)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.counter, pos), (2, seq(10)));
        // A wakes up: its writes are refused and change nothing.
        assert!(!store
            .checkpoint(&a, &seq(20), hb, 1000, 1800)
            .await
            .unwrap());
        assert!(!store.renew(&a, hb, 1000, 1800).await.unwrap());
        assert!(!store.release(&a, 1800).await.unwrap());
        assert!(store
            .checkpoint(&b, &seq(15), hb, 1000, 1900)
            .await
            .unwrap());
        assert!(store.release(&b, 2000).await.unwrap());
        // Released: anyone may take it at once, from the position.
        let (c, pos) = store
            .acquire("r", "s0", "C", 1000, 2001)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((c.counter, pos), (3, seq(15)));
        assert!(store
            .checkpoint(&c, &Position::End, hb, 1000, 2100)
            .await
            .unwrap());
        assert!(store.release(&c, 2100).await.unwrap());
        // Finished shards are never taken again.
        assert!(store
            .acquire("r", "s0", "D", 1000, 9999)
            .await
            .unwrap()
            .is_none());
        let history = store.history("r").await.unwrap();
        assert_eq!(history.len(), 3);
        assert!(
            check_history(&history).is_empty(),
            "{:?}",
            check_history(&history)
        );
    }

    #[test]
    fn history_check_catches_overlap_and_gaps() {
        let epoch = |counter, owner: &str, at, from, last, last_ms| Epoch {
            shard_id: "s".into(),
            counter,
            owner: owner.into(),
            acquired_at_ms: at,
            from,
            last,
            checkpoints: 1,
            last_checkpoint_ms: Some(last_ms),
            released_at_ms: None,
        };
        let good = [
            epoch(1, "A", 0, Position::Start, seq(5), 100),
            epoch(2, "B", 200, seq(5), seq(9), 300),
        ];
        assert!(check_history(&good).is_empty());
        let overlap = [
            epoch(1, "A", 0, Position::Start, seq(5), 250),
            epoch(2, "B", 200, seq(5), seq(9), 300),
        ];
        assert_eq!(check_history(&overlap).len(), 1);
        let gap = [
            epoch(1, "A", 0, Position::Start, seq(5), 100),
            epoch(2, "B", 200, seq(7), seq(9), 300),
        ];
        assert_eq!(check_history(&gap).len(), 1);
    }

    #[test]
    fn positions_round_trip_through_their_stored_form() {
        for p in [Position::Start, Position::End, seq(42)] {
            assert_eq!(Position::from_stored(&p.to_stored()).unwrap(), p);
        }
        assert!(Position::from_stored("x1").is_err());
    }
}
