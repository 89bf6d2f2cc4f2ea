//! What the controller stores: the migration (its streams and settings), its state item
//! (state, version, any flip in progress), and one history entry per command attempt.

use serde::{Deserialize, Serialize};

use super::guards::GuardResult;
use super::machine::{Action, Side, State};

/// One logical stream of a migration: a stream in the new account and its counterpart in
/// the old one, and the route that replicates new → old.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalStream {
    /// The name producers ask the routing client for.
    pub name: String,
    pub new: String,
    pub old: String,
    /// The replicator route (FANOUT_ROUTES) that replicates `new` into `old`.
    pub forward_route: String,
    /// The route that replicates `old` into `new` while rolled back (reverse replication).
    #[serde(default)]
    pub reverse_route: Option<String>,
}

impl LogicalStream {
    /// The stream producers write to when they are on `side`.
    pub fn stream(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.old,
            Side::New => &self.new,
        }
    }
}

/// The thresholds and timings of a migration's flips.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Largest replication lag (age of the oldest record not yet replicated) on any shard.
    pub max_lag_ms: i64,
    /// How old the latest passing verification of each forward route may be.
    pub verification_max_age_ms: i64,
    /// How long a flip waits for replication to catch up while producers hold.
    pub drain_timeout_ms: i64,
    /// How long a flip waits after telling producers to hold before it measures catch-up:
    /// longer than producers' routing cache and the replicator's mode cache.
    pub settle_ms: i64,
    /// The replicator's mode cache (its `FANOUT_MODE_CACHE_MS`) as declared at `start`;
    /// `None`: its default, [`DEFAULT_MODE_CACHE_MS`]. `settle_ms` must be longer.
    pub mode_cache_ms: Option<i64>,
    /// One identity requests a flip, a different one approves it.
    pub two_person: bool,
    /// While rolled back, replicate old → new so the new side stays current for the next
    /// attempt (each stream then has a `reverse_route`).
    pub reverse: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_lag_ms: 60_000,
            verification_max_age_ms: 3_600_000,
            drain_timeout_ms: 120_000,
            settle_ms: 7_000,
            mode_cache_ms: None,
            two_person: false,
            reverse: false,
        }
    }
}

/// The replicator's mode cache when `FANOUT_MODE_CACHE_MS` is not set.
pub const DEFAULT_MODE_CACHE_MS: i64 = 5_000;

impl Settings {
    /// Why these settings cannot flip safely, if they cannot: a settle time not longer than
    /// the replicator's mode cache lets a flip measure the drain (or start the other
    /// direction) while a replicator still acts on the mode it cached before the hold.
    pub fn settle_problem(&self) -> Option<String> {
        let cache = self.mode_cache_ms.unwrap_or(DEFAULT_MODE_CACHE_MS);
        (self.settle_ms <= cache).then(|| {
            format!(
                "the settle time ({} ms) is not longer than the replicator's mode cache \
                 (FANOUT_MODE_CACHE_MS = {cache} ms): a flip would go on while replicators \
                 still act on the mode they cached. Use --settle {}s or more, or lower \
                 FANOUT_MODE_CACHE_MS on the replicator (and in this environment)",
                self.settle_ms,
                cache / 1000 + 1
            )
        })
    }
}

/// A migration: its name, streams and settings. Stored in the state item when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub name: String,
    pub streams: Vec<LogicalStream>,
    pub settings: Settings,
    /// S3 bucket of the routing document and of dead letters.
    pub bucket: String,
    /// Key of the routing document in `bucket`.
    pub routing_key: String,
    /// Prefix of dead letters in `bucket`.
    pub dead_letter_prefix: String,
    /// Lambda consumers of the streams (new and old), switched on and off by the flips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<Consumer>,
}

/// A Lambda function that consumes one of the migration's streams through an event source
/// mapping, switched by the flips.
///
/// - A consumer of a **new** stream (mapping in the new account): off while producers are on
///   the old streams (unless `from_start`), on from the cutover, off again at a rollback.
///   Disabled, a mapping keeps its position, so records that arrive meanwhile wait for it.
/// - A consumer of an **old** stream (`old`, mapping in the old account): on until the
///   commit, off from it. With `moves_to`, the commit also gives it a mapping on the new
///   stream that starts where the old one stopped (see [`MovesTo`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// A name for people (history, status).
    pub name: String,
    /// The mapping's UUID.
    pub mapping: String,
    /// The function it invokes, as the mapping names it.
    pub function: String,
    /// The stream it reads (one of the migration's new streams, or old ones with `old`).
    pub stream: String,
    /// On from the start (the new environment tests with replicated traffic), not only
    /// once producers are on the new streams.
    #[serde(default)]
    pub from_start: bool,
    /// Its mapping is in the old account and reads an old stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub old: bool,
    /// At the commit it moves to the new stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves_to: Option<MovesTo>,
}

/// Where a consumer of an old stream goes at the commit: a new mapping in the new account, of
/// `function` on `stream`, created enabled at `AT_TIMESTAMP` translated (through the position
/// map) from the time the old mapping was switched off less `lag_allowance_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesTo {
    /// The function in the new account (name or ARN).
    pub function: String,
    /// The new stream (ARN): the old stream's counterpart.
    pub stream: String,
    /// How far behind the old mapping may be when it is switched off (its `IteratorAge`):
    /// it has processed everything that arrived in the old stream before then.
    pub lag_allowance_ms: i64,
}

impl Consumer {
    /// Whether its mapping is enabled while the migration is in `state`.
    pub fn enabled_in(&self, state: State) -> bool {
        if self.old {
            state != State::Committed
        } else {
            self.from_start || matches!(state, State::Cutover | State::Committed)
        }
    }

    /// Which account's Lambda holds its mapping, in words.
    pub fn account(&self) -> &'static str {
        if self.old {
            "old"
        } else {
            "new"
        }
    }
}

/// A flip under way: producers are held while replication catches up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFlip {
    pub id: String,
    pub action: Action,
    pub actor: String,
    pub started_at_ms: i64,
    /// After this a flip is abandoned (its process died); the next command releases it.
    pub deadline_ms: i64,
    /// The flip's last sign of life: its process rewrites it every few seconds while it
    /// waits. One older than [`FLIP_STALE_MS`] means the process died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive_ms: Option<i64>,
}

/// How long a flip may go without a sign of life before the next command (`status`
/// included) counts it abandoned and releases its producers.
pub const FLIP_STALE_MS: i64 = 15_000;

impl PendingFlip {
    /// Its process died: the deadline passed, or no sign of life for [`FLIP_STALE_MS`].
    pub fn abandoned(&self, now_ms: i64) -> bool {
        now_ms > self.deadline_ms || self.alive_ms.is_some_and(|a| now_ms - a > FLIP_STALE_MS)
    }
}

/// A flip asked for under the two-person rule, waiting for a second identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub action: Action,
    pub requested_by: String,
    pub reason: String,
    pub forced: bool,
    pub at_ms: i64,
}

/// The state item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    pub migration: Migration,
    pub state: State,
    /// Every change is conditional on this and increments it.
    pub version: u64,
    /// Replication held by `pause` (records wait in their source streams).
    pub paused: bool,
    pub flip: Option<PendingFlip>,
    pub request: Option<ApprovalRequest>,
    /// When forward replication last started after reverse replication ran: records in the
    /// new streams from before then are reverse copies, skipped.
    #[serde(default)]
    pub forward_since_ms: Option<i64>,
    /// When reverse replication last started: records in the old streams from before then
    /// are forward copies or older, skipped.
    #[serde(default)]
    pub reverse_since_ms: Option<i64>,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// How a command attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The change was made.
    Applied,
    /// The migration was already there: nothing to do.
    AlreadyThere,
    /// Recorded a request; a second identity must approve it (two-person rule).
    AwaitingApproval,
    /// A guard said no (and it was not forced).
    RefusedByGuard,
    /// The state machine does not allow it from the current state.
    NotAllowed,
    /// Someone else changed the state first.
    LostRace,
    /// Replication did not catch up in time; producers were released without switching.
    DrainTimedOut,
    /// An error stopped it; the message says what and what to do.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyThere => "already_there",
            Outcome::AwaitingApproval => "awaiting_approval",
            Outcome::RefusedByGuard => "refused_by_guard",
            Outcome::NotAllowed => "not_allowed",
            Outcome::LostRace => "lost_race",
            Outcome::DrainTimedOut => "drain_timed_out",
            Outcome::Failed => "failed",
        }
    }

    /// The process exit code `fanoutctl` uses: 0 done, 2 failed, 3 refused (a guard or the
    /// state machine), 4 lost a race, 5 waiting for approval.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Applied | Outcome::AlreadyThere => 0,
            Outcome::Failed | Outcome::DrainTimedOut => 2,
            Outcome::RefusedByGuard | Outcome::NotAllowed => 3,
            Outcome::LostRace => 4,
            Outcome::AwaitingApproval => 5,
        }
    }
}

/// One line of the append-only history: every attempt, whatever its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    /// Unique per attempt.
    pub id: String,
    /// The caller's identity (STS GetCallerIdentity ARN).
    pub actor: String,
    pub command: String,
    pub from: State,
    /// The state it led (or would have led) to.
    pub to: Option<State>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub forced: bool,
    pub guards: Vec<GuardResult>,
    pub version_before: u64,
    pub version_after: Option<u64>,
    pub detail: String,
}
