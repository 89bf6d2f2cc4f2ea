//! The migration state machine (DESIGN.md §6), as plain values and one decision function.
//!
//! ```text
//!   replicating ──cutover──▶ cutover ──commit──▶ committed (final)
//!                            │    ▲
//!                    rollback│    │cutover
//!                            ▼    │
//!                          rolled_back
//! ```
//!
//! Each state says where producers write and which replication direction runs; a transition
//! says which direction must catch up (the drain) before routing switches, and which
//! direction's checkpoints are seeded from the other's last writes so that nothing echoes
//! back. The table in `docs/controller.md` is this module's `decide`, tested below.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where the migration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Producers write to the old streams; new→old replication runs (and carries whatever
    /// test traffic the new streams get).
    Replicating,
    /// Producers write to the new streams; the old environment is fed by replication.
    Cutover,
    /// Producers write to the old streams again; forward replication was drained and
    /// stopped; reverse replication (old→new) runs if the migration enables it.
    RolledBack,
    /// Final: the new side has taken over; replication is stopped.
    Committed,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Replicating,
        State::Cutover,
        State::RolledBack,
        State::Committed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Replicating => "replicating",
            State::Cutover => "cutover",
            State::RolledBack => "rolled_back",
            State::Committed => "committed",
        }
    }

    /// Which side's streams producers write to in this state.
    pub fn producers(self) -> Side {
        match self {
            State::Replicating | State::RolledBack => Side::Old,
            State::Cutover | State::Committed => Side::New,
        }
    }

    /// The replication modes this state asks for. `paused` turns every running direction
    /// into [`Mode::Hold`] (records wait in their source stream).
    pub fn modes(self, reverse_enabled: bool, paused: bool) -> Modes {
        let (forward, reverse) = match self {
            State::Replicating | State::Cutover => (Mode::Forward, Mode::Stopped),
            State::RolledBack if reverse_enabled => (Mode::Stopped, Mode::Forward),
            State::RolledBack | State::Committed => (Mode::Stopped, Mode::Stopped),
        };
        let hold = |m: Mode| {
            if paused && m == Mode::Forward {
                Mode::Hold
            } else {
                m
            }
        };
        Modes {
            forward: hold(forward),
            reverse: hold(reverse),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a migration state (replicating, cutover, rolled_back, committed)"
                )
            })
    }
}

/// One side of the migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

/// What the replicator does with a route's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Replicate.
    Forward,
    /// Write nothing and report the batch's first record as failed: the event source mapping
    /// (or the local runner) retries it later, so records wait in the source stream.
    Hold,
    /// Replication is off in this state. Like hold, nothing is written and nothing is
    /// acknowledged; the replicator logs that the route is stopped.
    Stopped,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::Hold => "hold",
            Mode::Stopped => "stopped",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "forward" => Ok(Mode::Forward),
            "hold" => Ok(Mode::Hold),
            "stopped" => Ok(Mode::Stopped),
            _ => Err(format!(
                "{s:?} is not a replication mode (forward, hold, stopped)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the replicator reads for a route: its mode and, for a direction that was started
/// after the other one ran, the time before which records are not its to replicate (they
/// are the other direction's copies; replicating them would echo them back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMode {
    pub mode: Mode,
    /// Records that arrived in the source before this (ms since the epoch) are skipped.
    pub since_ms: Option<i64>,
}

impl RouteMode {
    /// A route the controller never set: replicate everything.
    pub const FORWARD: RouteMode = RouteMode {
        mode: Mode::Forward,
        since_ms: None,
    };
}

/// The modes of both replication directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modes {
    /// new → old.
    pub forward: Mode,
    /// old → new (only with reverse replication enabled).
    pub reverse: Mode,
}

/// A replication direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// new → old.
    Forward,
    /// old → new.
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// A flip an engineer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Cutover,
    Rollback,
    Commit,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Cutover, Action::Rollback, Action::Commit];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cutover => "cutover",
            Action::Rollback => "rollback",
            Action::Commit => "commit",
        }
    }

    /// The state this action leads to.
    pub fn target(self) -> State {
        match self {
            Action::Cutover => State::Cutover,
            Action::Rollback => State::RolledBack,
            Action::Commit => State::Committed,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An allowed change of state and what it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub action: Action,
    pub from: State,
    pub to: State,
    /// Producers are held and this direction must catch up before routing switches.
    pub drain: Option<Direction>,
    /// Producers change sides.
    pub switches_routing: bool,
    /// This direction's checkpoints are seeded from the other direction's last writes, so it
    /// starts exactly where the other stopped and nothing echoes back.
    pub seed: Option<Direction>,
    /// The replication modes once the transition is done.
    pub modes_after: Modes,
}

/// What [`decide`] says about an action in a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: run it (guards permitting).
    Go(Transition),
    /// The migration is already where the action leads: nothing to do (commands are
    /// idempotent).
    AlreadyThere(State),
    /// Not allowed from this state; the text says why and what to do instead.
    NotAllowed(String),
}

/// What every command says about a committed migration.
pub const COMMITTED: &str = "the migration is committed, which is final: replication is \
    stopped for good, the old streams are no longer fed and producers stay on the new streams. \
    Its streams are free for a new migration (`fanoutctl start --migration <new name>`).";

/// The transition table. `reverse` is the migration's reverse-replication setting.
pub fn decide(state: State, action: Action, reverse: bool) -> Decision {
    use Action as A;
    use State as S;
    let go = |drain: Option<Direction>, seed: Option<Direction>| {
        let to = action.target();
        Decision::Go(Transition {
            action,
            from: state,
            to,
            drain,
            switches_routing: state.producers() != to.producers(),
            seed,
            modes_after: to.modes(reverse, false),
        })
    };
    match (state, action) {
        (s, a) if s == a.target() => Decision::AlreadyThere(s),
        (S::Committed, _) => Decision::NotAllowed(COMMITTED.to_owned()),
        // Producers move old → new. Forward replication catches up first so that what test
        // traffic the new streams had is in the old streams before producers' records follow.
        (S::Replicating, A::Cutover) => go(Some(Direction::Forward), None),
        (S::Replicating, A::Rollback) => Decision::NotAllowed(
            "producers are on the old streams already (state replicating): there is nothing \
             to roll back."
                .to_owned(),
        ),
        (S::Replicating, A::Commit) | (S::RolledBack, A::Commit) => Decision::NotAllowed(format!(
            "commit needs producers on the new streams (state cutover); the state is {state}. \
             Run `fanoutctl cutover` first."
        )),
        // Producers move new → old: every record of the new streams must be in the old ones
        // before producers write there directly. Reverse replication then starts exactly after
        // the forward direction's last write.
        (S::Cutover, A::Rollback) => go(
            Some(Direction::Forward),
            reverse.then_some(Direction::Reverse),
        ),
        // Commit: producers stay on the new streams; forward replication catches up with
        // what arrived before the commit began, then stops.
        (S::Cutover, A::Commit) => go(Some(Direction::Forward), None),
        // Producers move old → new again: reverse replication (if on) catches up, then forward
        // replication starts after the reverse direction's last write into the new streams.
        (S::RolledBack, A::Cutover) => go(
            reverse.then_some(Direction::Reverse),
            reverse.then_some(Direction::Forward),
        ),
        (s, a) => Decision::NotAllowed(format!("{a} is not defined from {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (state, action) pair, with reverse replication off and on.
    #[test]
    fn the_transition_table() {
        use Action as A;
        use Direction as D;
        use State as S;
        // (state, action, reverse) -> expected: Ok((to, drain, switches, seed)) or Err(kind)
        type Expect = Result<(S, Option<D>, bool, Option<D>), &'static str>;
        let cases: Vec<(S, A, bool, Expect)> = vec![
            (
                S::Replicating,
                A::Cutover,
                false,
                Ok((S::Cutover, Some(D::Forward), true, None)),
            ),
            (
                S::Replicating,
                A::Cutover,
                true,
                Ok((S::Cutover, Some(D::Forward), true, None)),
            ),
            (S::Replicating, A::Rollback, false, Err("not allowed")),
            (S::Replicating, A::Rollback, true, Err("not allowed")),
            (S::Replicating, A::Commit, false, Err("not allowed")),
            (S::Replicating, A::Commit, true, Err("not allowed")),
            (S::Cutover, A::Cutover, false, Err("already")),
            (S::Cutover, A::Cutover, true, Err("already")),
            (
                S::Cutover,
                A::Rollback,
                false,
                Ok((S::RolledBack, Some(D::Forward), true, None)),
            ),
            (
                S::Cutover,
                A::Rollback,
                true,
                Ok((S::RolledBack, Some(D::Forward), true, Some(D::Reverse))),
            ),
            (
                S::Cutover,
                A::Commit,
                false,
                Ok((S::Committed, Some(D::Forward), false, None)),
            ),
            (
                S::Cutover,
                A::Commit,
                true,
                Ok((S::Committed, Some(D::Forward), false, None)),
            ),
            (
                S::RolledBack,
                A::Cutover,
                false,
                Ok((S::Cutover, None, true, None)),
            ),
            (
                S::RolledBack,
                A::Cutover,
                true,
                Ok((S::Cutover, Some(D::Reverse), true, Some(D::Forward))),
            ),
            (S::RolledBack, A::Rollback, false, Err("already")),
            (S::RolledBack, A::Rollback, true, Err("already")),
            (S::RolledBack, A::Commit, false, Err("not allowed")),
            (S::RolledBack, A::Commit, true, Err("not allowed")),
            (S::Committed, A::Cutover, false, Err("not allowed")),
            (S::Committed, A::Cutover, true, Err("not allowed")),
            (S::Committed, A::Rollback, false, Err("not allowed")),
            (S::Committed, A::Rollback, true, Err("not allowed")),
            (S::Committed, A::Commit, false, Err("already")),
            (S::Committed, A::Commit, true, Err("already")),
        ];
        assert_eq!(cases.len(), 24, "every (state, action, reverse)");
        let mut seen = std::collections::HashSet::new();
        for (state, action, reverse, _) in &cases {
            assert!(
                seen.insert((*state, *action, *reverse)),
                "listed twice: {state} {action} {reverse}"
            );
        }
        for (state, action, reverse, expect) in cases {
            let got = decide(state, action, reverse);
            let label = format!("{state} --{action}--> (reverse={reverse})");
            match (expect, got) {
                (Ok((to, drain, switches, seed)), Decision::Go(t)) => {
                    assert_eq!((t.from, t.to, t.action), (state, to, action), "{label}");
                    assert_eq!(t.drain, drain, "{label}: drain");
                    assert_eq!(t.switches_routing, switches, "{label}: routing");
                    assert_eq!(t.seed, seed, "{label}: seed");
                    assert_eq!(t.modes_after, to.modes(reverse, false), "{label}");
                }
                (Err("already"), Decision::AlreadyThere(s)) => assert_eq!(s, state, "{label}"),
                (Err("not allowed"), Decision::NotAllowed(why)) => {
                    assert!(why.len() > 20, "{label}: {why}")
                }
                (e, g) => panic!("{label}: expected {e:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn both_directions_never_run_at_once() {
        for state in State::ALL {
            for reverse in [false, true] {
                for paused in [false, true] {
                    let m = state.modes(reverse, paused);
                    assert!(
                        !(m.forward != Mode::Stopped && m.reverse != Mode::Stopped),
                        "{state} reverse={reverse} paused={paused}: {m:?}"
                    );
                }
            }
        }
        assert_eq!(
            State::RolledBack.modes(true, false),
            Modes {
                forward: Mode::Stopped,
                reverse: Mode::Forward
            }
        );
        assert_eq!(State::Cutover.modes(false, true).forward, Mode::Hold);
        assert_eq!(State::Committed.modes(true, true).forward, Mode::Stopped);
    }

    #[test]
    fn a_seeded_direction_is_the_one_that_runs_next_and_the_drained_one_stops() {
        for state in State::ALL {
            for action in Action::ALL {
                for reverse in [false, true] {
                    if let Decision::Go(t) = decide(state, action, reverse) {
                        if let Some(seed) = t.seed {
                            let running = match seed {
                                Direction::Forward => t.modes_after.forward,
                                Direction::Reverse => t.modes_after.reverse,
                            };
                            assert_eq!(running, Mode::Forward, "{t:?}");
                        }
                        if let (Some(drain), true) =
                            (t.drain, t.switches_routing && t.seed.is_some())
                        {
                            let after = match drain {
                                Direction::Forward => t.modes_after.forward,
                                Direction::Reverse => t.modes_after.reverse,
                            };
                            assert_eq!(after, Mode::Stopped, "{t:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
        }
        for m in [Mode::Forward, Mode::Hold, Mode::Stopped] {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        assert!("paused"
            .parse::<State>()
            .unwrap_err()
            .contains("replicating"));
    }
}
