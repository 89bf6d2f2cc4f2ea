//! The controller's commands. `fanoutctl` and the controller Lambda both build a
//! [`Request`] and call [`execute`]; the [`Report`] it returns is printed as text or JSON
//! (`fanoutctl`) or returned as the Lambda's answer. Every command is idempotent: asking for
//! the state the migration is already in does nothing and says so.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::guards::{self, GuardResult, ShardLag};
use super::machine::{
    decide, Action, Decision, Direction, Mode, RouteMode, Side, State, Transition,
};
use super::record::{
    ApprovalRequest, HistoryEntry, LogicalStream, Migration, Outcome, PendingFlip, Settings,
    StoredState,
};
use crate::capacity::{configured_routes, RouteCapacity};
use crate::model::{StoreError, StreamArn};
use crate::on_failure;
use crate::ports::control::{CapacityOptions, ControlStore, RoundTrip, Write};
use crate::routing::{RoutingDocument, StreamMode, StreamRouting};
use crate::time::{ago, now_ms, rfc3339_ms, rfc3339_secs as rfc3339};

/// What to do. As JSON (the controller Lambda's payload), e.g.
/// `{"command": "cutover", "migration": "orders", "reason": "planned", "dry_run": true}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Request {
    pub command: CommandName,
    pub migration: String,
    pub reason: Option<String>,
    /// Go through even if guards refuse; needs `reason`; recorded.
    pub force: bool,
    /// Show the plan and the guard results; change nothing.
    pub dry_run: bool,
    /// `history`: only the most recent entries.
    pub last: Option<usize>,
    /// `dlq_ack`: the dead-letter keys to acknowledge (or `all`).
    pub keys: Vec<String>,
    pub all: bool,
    /// `plan`: the action to plan.
    pub action: Option<Action>,
    /// `start`: the migration's streams and settings.
    pub streams: Vec<LogicalStream>,
    pub settings: Option<Settings>,
    /// `start`: where the routing document and dead letters are kept.
    pub bucket: Option<String>,
    pub dead_letter_prefix: Option<String>,
    /// Recorded with the caller's identity when a service calls on someone's behalf (the
    /// controller Lambda invoked by a chat-ops bot, say). The identity itself always comes
    /// from STS.
    pub on_behalf_of: Option<String>,
    /// `plan cutover` / `cutover`: for testing what-ifs, the capacity guard takes this round
    /// trip to the target (ms) instead of measuring it ("what if the target were 30 ms
    /// away"). A cutover that is not a dry run takes the larger of it and the measured one:
    /// an assumption can make the guard stricter, never more lenient.
    pub assume_rtt_ms: Option<u32>,
    /// `consumer_add`: the Lambda consumers to register.
    pub consumers: Vec<ConsumerSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandName {
    #[default]
    Status,
    Start,
    Plan,
    Cutover,
    Rollback,
    Commit,
    Pause,
    Resume,
    History,
    DlqAck,
    ConsumerAdd,
}

impl CommandName {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::Status => "status",
            CommandName::Start => "start",
            CommandName::Plan => "plan",
            CommandName::Cutover => "cutover",
            CommandName::Rollback => "rollback",
            CommandName::Commit => "commit",
            CommandName::Pause => "pause",
            CommandName::Resume => "resume",
            CommandName::History => "history",
            CommandName::DlqAck => "dlq_ack",
            CommandName::ConsumerAdd => "consumer_add",
        }
    }
}

/// What a command did or found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub migration: String,
    pub outcome: Outcome,
    pub dry_run: bool,
    /// One paragraph for a person: what happened and what to do next.
    pub message: String,
    pub state: Option<State>,
    pub version: Option<u64>,
    pub plan: Option<Transition>,
    pub guards: Vec<GuardResult>,
    pub status: Option<StatusView>,
    pub history: Vec<HistoryEntry>,
    /// A cutover's capacity check, route by route (what the `capacity` guard decided on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<RouteCapacity>,
    /// A flip's plan for each Lambda consumer (stays, or Disabled → Enabled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

impl Report {
    fn new(req: &Request, outcome: Outcome, message: impl Into<String>) -> Report {
        Report {
            command: req.command.as_str().to_owned(),
            migration: req.migration.clone(),
            outcome,
            dry_run: req.dry_run,
            message: message.into(),
            state: None,
            version: None,
            plan: None,
            guards: Vec::new(),
            status: None,
            history: Vec::new(),
            capacity: Vec::new(),
            consumers: Vec::new(),
        }
    }

    /// The exit code of `fanoutctl` (see [`Outcome::exit_code`]); a dry run that would be
    /// refused exits as refused.
    pub fn exit_code(&self) -> u8 {
        self.outcome.exit_code()
    }
}

/// Everything `status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub state: State,
    pub version: u64,
    pub paused: bool,
    pub producers: Side,
    pub flip: Option<PendingFlip>,
    pub request: Option<ApprovalRequest>,
    pub streams: Vec<StreamView>,
    pub shards: Vec<ShardLag>,
    /// `None`: the dead letters could not be listed (see `unavailable`).
    pub unacknowledged_dead_letters: Option<usize>,
    /// On-failure records (batches the event source mapping discarded) not acknowledged.
    pub unacknowledged_discarded_batches: Option<usize>,
    /// Where those are: `s3://<bucket>/aws/lambda/`.
    pub discarded_batches_at: String,
    pub last_flips: Vec<HistoryEntry>,
    pub heartbeat_stale_ms: i64,
    /// The parts that could not be read, each with why (a service that did not answer,
    /// named with its endpoint). Everything else was read.
    pub unavailable: Vec<String>,
    /// The registered Lambda consumers and their mappings (`None`: not read, see
    /// `unavailable`).
    pub consumers: Option<Vec<ConsumerView>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamView {
    pub name: String,
    pub active: String,
    pub routing_mode: String,
    pub routing_version: u64,
    pub forward_route: String,
    /// `None`: the modes could not be read (see `unavailable`).
    pub forward_mode: Option<Mode>,
    pub reverse_route: Option<String>,
    pub reverse_mode: Option<Mode>,
}

/// One logical stream per route (named after its source stream): what `start` uses when
/// the caller gives no streams.
pub fn streams_from_routes(config: &crate::config::ReplicatorConfig) -> Vec<LogicalStream> {
    config
        .routes
        .iter()
        .map(|r| LogicalStream {
            name: r.source.name().to_owned(),
            new: r.source.to_string(),
            old: r.target.to_string(),
            forward_route: r.name.clone(),
            reverse_route: None,
        })
        .collect()
}

/// The clients a command needs.
pub struct Context<C> {
    /// The state table, the streams and the bucket (`aws::control::AwsControl` in AWS).
    pub control: C,
    /// The caller, from STS GetCallerIdentity.
    pub actor: String,
    /// Timings are scaled for tests through the migration's settings; this is how often a
    /// drain looks at the shards again.
    pub poll: Duration,
    /// `actor` is the person calling (their credentials, or a function URL's IAM caller);
    /// false when it is a service's own identity (the controller Lambda invoked directly),
    /// which can neither request nor approve a two-person flip.
    pub caller_known: bool,
}

/// Kept between a direction's start time and releasing producers (clock differences).
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

use super::guards::HEARTBEAT_STALE_MS;

fn attempt_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs one command.
pub async fn execute<C: ControlStore>(ctx: &Context<C>, req: &Request) -> Report {
    if req.migration.trim().is_empty() {
        return Report::new(
            req,
            Outcome::Failed,
            "no migration named: pass --migration NAME (or set FANOUT_MIGRATION)",
        );
    }
    // Each command's future is boxed: some are large (a flip holds its steps, status reads
    // six parts at once), and callers may run many, on small stacks.
    let result = match req.command {
        CommandName::Start => match Box::pin(start(ctx, req)).await {
            // Consumers given with the start (FANOUT_CONSUMERS) are registered after it.
            Ok(r) if !req.consumers.is_empty() && r.exit_code() == 0 => {
                let mut add = req.clone();
                add.command = CommandName::ConsumerAdd;
                Box::pin(consumers::add(ctx, &add)).await.map(|mut a| {
                    a.message = format!("{}\n{}", r.message, a.message);
                    a.command = r.command;
                    a
                })
            }
            other => other,
        },
        CommandName::Status => Box::pin(status(ctx, req)).await,
        CommandName::History => history(ctx, req).await,
        CommandName::Plan => match req.action {
            Some(a) => {
                let mut dry = req.clone();
                dry.dry_run = true;
                Box::pin(flip(ctx, &dry, a)).await
            }
            None => Ok(Report::new(
                req,
                Outcome::Failed,
                "plan needs an action: cutover, rollback or commit",
            )),
        },
        CommandName::Cutover => Box::pin(flip(ctx, req, Action::Cutover)).await,
        CommandName::Rollback => Box::pin(flip(ctx, req, Action::Rollback)).await,
        CommandName::Commit => Box::pin(flip(ctx, req, Action::Commit)).await,
        CommandName::Pause => Box::pin(pause(ctx, req, true)).await,
        CommandName::Resume => Box::pin(pause(ctx, req, false)).await,
        CommandName::DlqAck => dlq_ack(ctx, req).await,
        CommandName::ConsumerAdd => Box::pin(consumers::add(ctx, req)).await,
    };
    result.unwrap_or_else(|e| {
        let read_only = matches!(req.command, CommandName::Status | CommandName::History)
            || req.dry_run
            || req.command == CommandName::Plan;
        let next = if read_only {
            ""
        } else {
            " Nothing was changed past the last step reported; run the command again once the \
             cause is fixed (it is idempotent)."
        };
        let e = ctx.control.locate(e);
        Report::new(
            req,
            Outcome::Failed,
            format!("{}: {e}.{next}", req.command.as_str()),
        )
    })
}

async fn load<C: ControlStore>(ctx: &Context<C>, req: &Request) -> Result<StoredState, StoreError> {
    load_migration(&ctx.control, &req.migration).await
}

/// The migration's state item; a migration never started is an error that lists the ones
/// that were (closest spellings first).
pub async fn load_migration<C: ControlStore>(
    control: &C,
    migration: &str,
) -> Result<StoredState, StoreError> {
    if let Some(st) = control.load(migration).await? {
        return Ok(st);
    }
    let known = control.migrations().await.unwrap_or_default();
    Err(StoreError {
        code: "NoSuchMigration".to_owned(),
        message: no_such_migration(migration, control.table(), &known),
    })
}

/// Records in the migration's history a change made outside the controller's commands (a KCL
/// application's lease table moved by `fanoutctl consumers move`): `command`, by `actor`, in
/// the migration's current state, applied, with `detail`.
pub async fn record_outside<C: ControlStore>(
    control: &C,
    migration: &str,
    actor: &str,
    command: &str,
    reason: Option<String>,
    detail: String,
) -> Result<(), StoreError> {
    let st = load_migration(control, migration).await?;
    let entry = HistoryEntry {
        at_ms: now_ms(),
        id: attempt_id(),
        actor: actor.to_owned(),
        command: command.to_owned(),
        from: st.state,
        to: Some(st.state),
        outcome: Outcome::Applied,
        reason,
        forced: false,
        guards: Vec::new(),
        version_before: st.version,
        version_after: None,
        detail,
    };
    control.append_history(&st.migration.name, &entry).await
}

/// Says that `name` was not started in `table`, listing the migrations that were (the
/// closest spellings first), and how to start it if it is new.
fn no_such_migration(name: &str, table: &str, known: &[String]) -> String {
    let mut ranked: Vec<&String> = known.iter().collect();
    ranked.sort_by_key(|k| (strsim::damerau_levenshtein(name, k), k.as_str()));
    let start = format!("to begin a new migration, `fanoutctl start --migration {name}`");
    if ranked.is_empty() {
        return format!(
            "no migration named {name:?} in table {table}, and no migration was started in \
             it: check --table (FANOUT_TABLE) and the region; {start}"
        );
    }
    let shown: Vec<&str> = ranked.iter().take(10).map(|k| k.as_str()).collect();
    format!(
        "no migration named {name:?} in table {table}. Migrations there{}: {}. Use \
         --migration with one of them (or set FANOUT_MIGRATION); {start}",
        if ranked.len() > shown.len() {
            format!(" ({} in all, closest first)", ranked.len())
        } else {
            " (closest first)".to_owned()
        },
        shown.join(", ")
    )
}

/// The routing document for `st`, with every stream in `mode`.
fn document(
    st: &StoredState,
    side: Side,
    mode: StreamMode,
    actor: &str,
    reason: &str,
) -> RoutingDocument {
    let at = now_ms();
    RoutingDocument {
        migration: st.migration.name.clone(),
        version: st.version,
        updated_at_ms: at,
        streams: st
            .migration
            .streams
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    StreamRouting {
                        active: s.stream(side).to_owned(),
                        mode,
                        version: st.version,
                        changed_at_ms: at,
                        changed_by: actor.to_owned(),
                        reason: reason.to_owned(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// One replication route of a migration, as the controller sees it.
struct RouteRef {
    route: String,
    source: String,
    /// The source is in the old account.
    old_side: bool,
    since_ms: Option<i64>,
}

/// The routes of one direction.
fn routes_of(st: &StoredState, direction: Direction) -> Vec<RouteRef> {
    st.migration
        .streams
        .iter()
        .filter_map(|s| match direction {
            Direction::Forward => Some(RouteRef {
                route: s.forward_route.clone(),
                source: s.new.clone(),
                old_side: false,
                since_ms: st.forward_since_ms,
            }),
            Direction::Reverse => s.reverse_route.clone().map(|route| RouteRef {
                route,
                source: s.old.clone(),
                old_side: true,
                since_ms: st.reverse_since_ms,
            }),
        })
        .collect()
}

/// Every shard's lag on the routes of `direction`.
async fn lags<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    direction: Direction,
    now: i64,
) -> Result<Vec<ShardLag>, StoreError> {
    let mut out = Vec::new();
    for r in routes_of(st, direction) {
        let source = StreamArn::parse(&r.source).map_err(|e| StoreError {
            code: "BadStream".into(),
            message: e,
        })?;
        out.extend(
            ctx.control
                .lag(&r.route, &source, r.since_ms, r.old_side, now)
                .await?,
        );
    }
    Ok(out)
}

/// Sets every route of `direction` to `mode` (with the direction's start time), as of
/// `version`.
async fn set_direction<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    direction: Direction,
    mode: Mode,
    version: u64,
) -> Result<(), StoreError> {
    for r in routes_of(st, direction) {
        let m = RouteMode {
            mode,
            since_ms: r.since_ms,
        };
        ctx.control
            .set_mode(
                &r.route,
                m,
                version,
                &st.migration.name,
                &ctx.actor,
                now_ms(),
            )
            .await?;
    }
    Ok(())
}

/// Sets the replication modes `st` asks for.
async fn set_modes<C: ControlStore>(ctx: &Context<C>, st: &StoredState) -> Result<(), StoreError> {
    let modes = st.state.modes(st.migration.settings.reverse, st.paused);
    set_direction(ctx, st, Direction::Forward, modes.forward, st.version).await?;
    set_direction(ctx, st, Direction::Reverse, modes.reverse, st.version).await
}

fn entry<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: &StoredState,
    to: Option<State>,
    outcome: Outcome,
    guards: &[GuardResult],
    detail: String,
) -> HistoryEntry {
    let detail = match &req.on_behalf_of {
        Some(who) => format!("{detail} (on behalf of {who})"),
        None => detail,
    };
    HistoryEntry {
        at_ms: now_ms(),
        id: attempt_id(),
        actor: ctx.actor.clone(),
        command: req.command.as_str().to_owned(),
        from: st.state,
        to,
        outcome,
        reason: req.reason.clone(),
        forced: req.force,
        guards: guards.to_vec(),
        version_before: st.version,
        version_after: None,
        detail,
    }
}

/// `e`, recorded as having moved the state item to `version`.
fn after(mut e: HistoryEntry, version: u64) -> HistoryEntry {
    e.version_after = Some(version);
    e
}

/// Records a command that changed the state item (now at `version`) but not the state, and
/// reports it.
async fn applied_in_place<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: &StoredState,
    version: u64,
    msg: String,
) -> Result<Report, StoreError> {
    let e = after(
        entry(
            ctx,
            req,
            st,
            Some(st.state),
            Outcome::Applied,
            &[],
            msg.clone(),
        ),
        version,
    );
    finish(ctx, req, e, msg).await
}

/// Records `e` in the history and returns a report of it.
async fn finish<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    e: HistoryEntry,
    message: String,
) -> Result<Report, StoreError> {
    ctx.control.append_history(&req.migration, &e).await?;
    let mut r = Report::new(req, e.outcome, message);
    r.state = Some(
        e.to.filter(|_| e.outcome == Outcome::Applied)
            .unwrap_or(e.from),
    );
    r.version = Some(e.version_after.unwrap_or(e.version_before));
    r.guards = e.guards;
    Ok(r)
}

mod checks;
mod consumers;
mod flip;
mod maintenance;
mod release;
mod render;
mod start;

use checks::*;
pub use consumers::{specs_from_json, ConsumerSpec, ConsumerView};
use flip::*;
use maintenance::*;
pub use release::release_interrupted;
use release::*;
use start::*;

#[cfg(test)]
mod tests;
