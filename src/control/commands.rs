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
use crate::aws::capacity::{measure_route, CapacityOptions, RoundTrip};
use crate::aws::control::{AwsControl, Write};
use crate::aws::dead_letters::S3DeadLetters;
use crate::aws::routing::S3Routing;
use crate::aws::verifications;
use crate::capacity::{configured_routes, RouteCapacity};
use crate::model::{StoreError, StreamArn};
use crate::on_failure;
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
    pub unacknowledged_dead_letters: usize,
    /// On-failure records (batches the event source mapping discarded) not acknowledged.
    pub unacknowledged_discarded_batches: usize,
    /// Where those are: `s3://<bucket>/aws/lambda/`.
    pub discarded_batches_at: String,
    pub last_flips: Vec<HistoryEntry>,
    pub heartbeat_stale_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StreamView {
    pub name: String,
    pub active: String,
    pub routing_mode: String,
    pub routing_version: u64,
    pub forward_route: String,
    pub forward_mode: Mode,
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
pub struct Context {
    pub control: AwsControl,
    /// The caller, from STS GetCallerIdentity.
    pub actor: String,
    /// Timings are scaled for tests through the migration's settings; this is how often a
    /// drain looks at the shards again.
    pub poll: Duration,
}

/// Kept between a direction's start time and releasing producers (clock differences).
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// Seconds a heartbeat may be old before a shard with records waiting is called stuck.
const HEARTBEAT_STALE_MS: i64 = 60_000;

fn attempt_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs one command.
pub async fn execute(ctx: &Context, req: &Request) -> Report {
    if req.migration.trim().is_empty() {
        return Report::new(
            req,
            Outcome::Failed,
            "no migration named: pass --migration NAME (or set FANOUT_MIGRATION)",
        );
    }
    let result = match req.command {
        CommandName::Start => start(ctx, req).await,
        CommandName::Status => status(ctx, req).await,
        CommandName::History => history(ctx, req).await,
        CommandName::Plan => match req.action {
            Some(a) => {
                let mut dry = req.clone();
                dry.dry_run = true;
                flip(ctx, &dry, a).await
            }
            None => Ok(Report::new(
                req,
                Outcome::Failed,
                "plan needs an action: cutover, rollback or commit",
            )),
        },
        CommandName::Cutover => flip(ctx, req, Action::Cutover).await,
        CommandName::Rollback => flip(ctx, req, Action::Rollback).await,
        CommandName::Commit => flip(ctx, req, Action::Commit).await,
        CommandName::Pause => pause(ctx, req, true).await,
        CommandName::Resume => pause(ctx, req, false).await,
        CommandName::DlqAck => dlq_ack(ctx, req).await,
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
        Report::new(
            req,
            Outcome::Failed,
            format!("{}: {e}.{next}", req.command.as_str()),
        )
    })
}

async fn load(ctx: &Context, req: &Request) -> Result<StoredState, StoreError> {
    ctx.control
        .load(&req.migration)
        .await?
        .ok_or_else(|| StoreError {
            code: "NoSuchMigration".to_owned(),
            message: format!(
            "migration {:?} has not been started in table {}: run `fanoutctl start --migration {}`",
            req.migration,
            ctx.control.table(),
            req.migration
        ),
        })
}

fn routing(ctx: &Context, m: &Migration) -> S3Routing {
    S3Routing::new(ctx.control.sdk(), &m.bucket, &m.routing_key)
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
async fn lags(
    ctx: &Context,
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
async fn set_direction(
    ctx: &Context,
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
async fn set_modes(ctx: &Context, st: &StoredState) -> Result<(), StoreError> {
    let modes = st.state.modes(st.migration.settings.reverse, st.paused);
    set_direction(ctx, st, Direction::Forward, modes.forward, st.version).await?;
    set_direction(ctx, st, Direction::Reverse, modes.reverse, st.version).await
}

fn entry(
    ctx: &Context,
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

/// Records `e` in the history and returns a report of it.
async fn finish(
    ctx: &Context,
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

async fn start(ctx: &Context, req: &Request) -> Result<Report, StoreError> {
    if req.streams.is_empty() {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            "start needs the migration's streams (fanoutctl takes them from FANOUT_ROUTES)",
        ));
    }
    let Some(bucket) = req.bucket.clone() else {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            "start needs the bucket of the routing document (FANOUT_DEAD_LETTER_BUCKET)",
        ));
    };
    let settings = req.settings.clone().unwrap_or_default();
    let mut streams = req.streams.clone();
    if settings.reverse {
        // The reverse replicator's route: old → new, named the way FANOUT_ROUTES names it.
        for s in streams.iter_mut().filter(|s| s.reverse_route.is_none()) {
            let (new, old) = match (StreamArn::parse(&s.new), StreamArn::parse(&s.old)) {
                (Ok(n), Ok(o)) => (n, o),
                (Err(e), _) | (_, Err(e)) => {
                    return Ok(Report::new(
                        req,
                        Outcome::Failed,
                        format!("stream {}: {e}", s.name),
                    ))
                }
            };
            s.reverse_route = Some(crate::model::Route::default_name(&old, &new));
        }
    }
    let migration = Migration {
        name: req.migration.clone(),
        streams,
        settings,
        routing_key: S3Routing::key_for("routing/", &req.migration),
        bucket,
        dead_letter_prefix: req
            .dead_letter_prefix
            .clone()
            .unwrap_or_else(|| "dead-letters".to_owned()),
    };
    if let Some(existing) = ctx.control.load(&req.migration).await? {
        let same = existing.migration == migration;
        let mut r = Report::new(
            req,
            if same {
                Outcome::AlreadyThere
            } else {
                Outcome::Failed
            },
            if same {
                format!(
                    "migration {} is already started (state {}): nothing to do",
                    req.migration, existing.state
                )
            } else {
                format!(
                    "migration {} exists with other streams or settings; choose another name \
                     (its state is {})",
                    req.migration, existing.state
                )
            },
        );
        r.state = Some(existing.state);
        r.version = Some(existing.version);
        return Ok(r);
    }
    let st = StoredState {
        migration,
        state: State::Replicating,
        version: 1,
        paused: false,
        flip: None,
        request: None,
        forward_since_ms: None,
        reverse_since_ms: None,
        updated_at_ms: now_ms(),
        updated_by: ctx.actor.clone(),
    };
    let before = StoredState {
        version: 0,
        ..st.clone()
    };
    if ctx.control.write_state(None, &st).await? == Write::Lost {
        let e = entry(
            ctx,
            req,
            &before,
            Some(State::Replicating),
            Outcome::LostRace,
            &[],
            "another start won".into(),
        );
        return finish(
            ctx,
            req,
            e,
            format!(
                "migration {} was started by someone else at the same moment",
                req.migration
            ),
        )
        .await;
    }
    set_modes(ctx, &st).await?;
    routing(ctx, &st.migration)
        .publish(&document(
            &st,
            Side::Old,
            StreamMode::Active,
            &ctx.actor,
            req.reason.as_deref().unwrap_or("start"),
        ))
        .await?;
    let e = after(
        entry(
            ctx,
            req,
            &before,
            Some(State::Replicating),
            Outcome::Applied,
            &[],
            format!(
                "{} stream(s); routing document s3://{}/{}",
                st.migration.streams.len(),
                st.migration.bucket,
                st.migration.routing_key
            ),
        ),
        1,
    );
    finish(
        ctx,
        req,
        e,
        format!(
            "migration {} started: producers on the old streams, replication forward. Routing \
             document: s3://{}/{}",
            req.migration, st.migration.bucket, st.migration.routing_key
        ),
    )
    .await
}

/// What [`evaluate_guards`] found: each guard's verdict, and the facts some were drawn from.
struct Evaluated {
    guards: Vec<GuardResult>,
    capacity: Vec<RouteCapacity>,
}

/// The guards an action needs. A rollback is what an engineer reaches for when something
/// looks wrong, so it is not held back by dead letters or a missing verification; it still
/// needs replication to be able to catch up and the streams to be usable. A cutover also
/// needs forward replication to keep up with the traffic producers bring (`capacity`).
async fn evaluate_guards(
    ctx: &Context,
    req: &Request,
    st: &StoredState,
    action: Action,
    t: &Transition,
) -> Result<Evaluated, StoreError> {
    let now = now_ms();
    let s = &st.migration.settings;
    // The lag that matters is the direction that must catch up.
    let lags = lags(ctx, st, t.drain.unwrap_or(Direction::Forward), now).await?;
    let mut out = vec![guards::lag(&lags, s.max_lag_ms)];
    let mut pairs = Vec::new();
    for stream in &st.migration.streams {
        pairs.push((
            ctx.control.stream_facts(&stream.new, false).await,
            ctx.control.stream_facts(&stream.old, true).await,
        ));
    }
    out.push(guards::streams(&pairs));
    if action != Action::Rollback {
        out.push(guards::dead_letters(&unacknowledged(ctx, st).await?));
        let mut latest = Vec::new();
        for stream in &st.migration.streams {
            let v = verifications::latest(
                ctx.control.sdk(),
                ctx.control.table(),
                &stream.forward_route,
            )
            .await?;
            latest.push((stream.forward_route.clone(), v));
        }
        out.push(guards::verification(
            &latest,
            now,
            s.verification_max_age_ms,
        ));
    }
    let mut capacity = Vec::new();
    if action == Action::Cutover {
        let (guard, checked) = capacity_guard(ctx, req, st).await;
        out.push(guard);
        capacity = checked;
    }
    Ok(Evaluated {
        guards: out,
        capacity,
    })
}

/// [`measure_route`], with the route's name (an `async fn`, not a closure's `async` block,
/// so the future stays `Send` for every lifetime).
async fn measure_named(
    sdk: &aws_config::SdkConfig,
    r: &crate::capacity::ConfiguredRoute,
    opts: &CapacityOptions,
    now: i64,
) -> (String, Result<RouteCapacity, String>) {
    (r.route.name.clone(), measure_route(sdk, r, opts, now).await)
}

/// The `capacity` guard: each forward route, as the replicator runs it (FANOUT_ROUTES and the
/// limits, from this process's environment), against the newest 30 s of its streams. After
/// the cutover the new streams take what producers write now: before the first cutover that
/// is the old streams (the routes' targets, read with the writer role), so both are read and,
/// per key, the busier side counts.
async fn capacity_guard(
    ctx: &Context,
    req: &Request,
    st: &StoredState,
) -> (GuardResult, Vec<RouteCapacity>) {
    let routes = match configured_routes(&st.migration.streams, |k| std::env::var(k).ok()) {
        Ok(r) => r,
        Err(e) => {
            let failed: Vec<(String, Result<RouteCapacity, String>)> = st
                .migration
                .streams
                .iter()
                .map(|s| (s.forward_route.clone(), Err(e.clone())))
                .collect();
            return (guards::capacity(&failed), Vec::new());
        }
    };
    let opts = CapacityOptions {
        round_trip: match req.assume_rtt_ms {
            None => RoundTrip::Measure,
            Some(ms) if req.dry_run => RoundTrip::Assume(f64::from(ms)),
            Some(ms) => RoundTrip::AtLeast(f64::from(ms)),
        },
        ..CapacityOptions::default()
    };
    let now = now_ms();
    let mut measuring = Vec::with_capacity(routes.len());
    for r in &routes {
        measuring.push(measure_named(ctx.control.sdk(), r, &opts, now));
    }
    let results: Vec<(String, Result<RouteCapacity, String>)> =
        futures::future::join_all(measuring).await;
    let guard = guards::capacity(&results);
    let checked = results.into_iter().filter_map(|(_, r)| r.ok()).collect();
    (guard, checked)
}

/// Dead-letter keys of the migration's routes not yet acknowledged (nor redriven), then the
/// keys of on-failure records in the state bucket (batches Lambda's event source mapping
/// discarded, under `aws/lambda/`) not yet acknowledged. Both block a cutover and a commit.
async fn unacknowledged(ctx: &Context, st: &StoredState) -> Result<Vec<String>, StoreError> {
    let acked = ctx.control.acknowledged(&st.migration.name).await?;
    let letters = S3DeadLetters::new(
        ctx.control.sdk(),
        &st.migration.bucket,
        &st.migration.dead_letter_prefix,
    );
    let mut out = Vec::new();
    for stream in &st.migration.streams {
        let keys = letters.list_keys(Some(&stream.forward_route)).await?;
        let redriven: std::collections::HashSet<&str> = keys
            .iter()
            .filter_map(|k| k.strip_suffix(".redriven"))
            .collect();
        out.extend(
            keys.iter()
                .filter(|k| {
                    k.ends_with(".json") && !redriven.contains(k.as_str()) && !acked.contains(*k)
                })
                .cloned(),
        );
    }
    out.extend(
        letters
            .list_on_failure()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|k| !acked.contains(k)),
    );
    Ok(out)
}

async fn flip(ctx: &Context, req: &Request, action: Action) -> Result<Report, StoreError> {
    if req.force && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            "--force needs --reason: say why the guards may be overridden (it is recorded)",
        ));
    }
    let mut st = load(ctx, req).await?;
    let mut abandoned = String::new();
    if let Some(f) = st.flip.clone() {
        if now_ms() <= f.deadline_ms {
            let e = entry(
                ctx,
                req,
                &st,
                Some(action.target()),
                Outcome::LostRace,
                &[],
                format!("flip {} ({}) by {} is in progress", f.id, f.action, f.actor),
            );
            let msg = format!(
                "a {} by {} is in progress since {} (flip {}); wait for it (`fanoutctl status --watch`)",
                f.action, f.actor, rfc3339(f.started_at_ms), f.id
            );
            return if req.dry_run {
                Ok(Report::new(req, Outcome::LostRace, msg))
            } else {
                finish(ctx, req, e, msg).await
            };
        }
        if req.dry_run {
            abandoned = format!(
                "the abandoned {} by {} (flip {}) would be released first; ",
                f.action, f.actor, f.id
            );
        } else {
            st = release_abandoned(ctx, req, st, &f).await?;
        }
    }
    let t = match decide(st.state, action, st.migration.settings.reverse) {
        Decision::AlreadyThere(s) => {
            let msg = format!("the migration is already {s}: nothing to do");
            if req.dry_run {
                let mut r = Report::new(req, Outcome::AlreadyThere, msg);
                r.state = Some(s);
                return Ok(r);
            }
            let e = entry(
                ctx,
                req,
                &st,
                Some(s),
                Outcome::AlreadyThere,
                &[],
                String::new(),
            );
            return finish(ctx, req, e, msg).await;
        }
        Decision::NotAllowed(why) => {
            if req.dry_run {
                return Ok(Report::new(req, Outcome::NotAllowed, why));
            }
            let e = entry(
                ctx,
                req,
                &st,
                Some(action.target()),
                Outcome::NotAllowed,
                &[],
                why.clone(),
            );
            return finish(ctx, req, e, why).await;
        }
        Decision::Go(t) => t,
    };
    let Evaluated { guards, capacity } = evaluate_guards(ctx, req, &st, action, &t).await?;
    let refused: Vec<&GuardResult> = guards.iter().filter(|g| !g.passed).collect();
    let refused_names = refused
        .iter()
        .map(|g| g.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if req.dry_run {
        let (outcome, msg) = if refused.is_empty() {
            (
                Outcome::Applied,
                format!(
                    "dry run: {} would go {} → {}; every guard passes",
                    action, t.from, t.to
                ),
            )
        } else if req.force {
            (
                Outcome::Applied,
                format!(
                    "dry run: {} would go {} → {} forced past: {refused_names}",
                    action, t.from, t.to
                ),
            )
        } else {
            (
                Outcome::RefusedByGuard,
                format!("dry run: {} would be refused by: {refused_names}", action),
            )
        };
        let mut r = Report::new(req, outcome, format!("{abandoned}{msg}"));
        r.plan = Some(t);
        r.guards = guards;
        r.capacity = capacity;
        r.state = Some(st.state);
        r.version = Some(st.version);
        return Ok(r);
    }
    if !refused.is_empty() && !req.force {
        let msg = format!(
            "{action} refused by: {refused_names}. Fix what they say, or override with --force \
             --reason \"...\" (recorded)."
        );
        let e = entry(
            ctx,
            req,
            &st,
            Some(t.to),
            Outcome::RefusedByGuard,
            &guards,
            msg.clone(),
        );
        let mut r = finish(ctx, req, e, msg).await?;
        r.capacity = capacity;
        return Ok(r);
    }
    // The two-person rule: a request, then a different identity's approval.
    if st.migration.settings.two_person {
        match &st.request {
            Some(r) if r.action == action && r.requested_by != ctx.actor => {}
            Some(r) if r.action == action => {
                let msg = format!("you requested this {action} already; a different identity must approve it by running the same command");
                let e = entry(
                    ctx,
                    req,
                    &st,
                    Some(t.to),
                    Outcome::AwaitingApproval,
                    &guards,
                    msg.clone(),
                );
                return finish(ctx, req, e, msg).await;
            }
            _ => {
                let mut next = st.clone();
                next.version += 1;
                next.request = Some(ApprovalRequest {
                    action,
                    requested_by: ctx.actor.clone(),
                    reason: req.reason.clone().unwrap_or_default(),
                    forced: req.force,
                    at_ms: now_ms(),
                });
                next.updated_at_ms = now_ms();
                next.updated_by = ctx.actor.clone();
                if ctx.control.write_state(Some(st.version), &next).await? == Write::Lost {
                    return lost(ctx, req, &st, t.to, &guards).await;
                }
                let msg = format!("{action} requested; a different identity must approve it by running `fanoutctl {action} --migration {}`", st.migration.name);
                let e = after(
                    entry(
                        ctx,
                        req,
                        &st,
                        Some(t.to),
                        Outcome::AwaitingApproval,
                        &guards,
                        msg.clone(),
                    ),
                    next.version,
                );
                return finish(ctx, req, e, msg).await;
            }
        }
    }
    let approval = st
        .request
        .as_ref()
        .map(|r| {
            format!(
                "requested by {}, approved by {}; ",
                r.requested_by, ctx.actor
            )
        })
        .unwrap_or_default();
    // Begin: take the flip (exactly one caller wins this version).
    let s = st.migration.settings.clone();
    let started = now_ms();
    let id = attempt_id();
    let mut begun = st.clone();
    begun.version += 1;
    begun.request = None;
    begun.flip = Some(PendingFlip {
        id: id.clone(),
        action,
        actor: ctx.actor.clone(),
        started_at_ms: started,
        deadline_ms: started + s.settle_ms + s.drain_timeout_ms + 60_000,
    });
    begun.updated_at_ms = started;
    begun.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &begun).await? == Write::Lost {
        return lost(ctx, req, &st, t.to, &guards).await;
    }
    let reason = req
        .reason
        .clone()
        .unwrap_or_else(|| action.as_str().to_owned());
    let from_side = st.state.producers();
    let mut detail = approval;
    if t.switches_routing {
        routing(ctx, &st.migration)
            .publish(&document(
                &begun,
                from_side,
                StreamMode::Hold,
                &ctx.actor,
                &reason,
            ))
            .await?;
        tokio::time::sleep(Duration::from_millis(s.settle_ms.max(0) as u64)).await;
    }
    if let Some(direction) = t.drain {
        // The hold point: producers that honour the hold wrote nothing after it.
        let point = now_ms();
        let drained = drain(
            ctx,
            &begun,
            direction,
            point,
            Duration::from_millis(s.drain_timeout_ms.max(0) as u64),
        )
        .await?;
        match drained {
            Ok(waited) => detail.push_str(&format!("drained in {} ms; ", waited.as_millis())),
            Err(behind) => {
                // Release producers where they were; the state does not change.
                let mut released = begun.clone();
                released.version += 1;
                released.flip = None;
                released.updated_at_ms = now_ms();
                if ctx
                    .control
                    .write_state(Some(begun.version), &released)
                    .await?
                    == Write::Lost
                {
                    return lost(ctx, req, &begun, t.to, &guards).await;
                }
                routing(ctx, &st.migration)
                    .publish(&document(
                        &released,
                        from_side,
                        StreamMode::Active,
                        &ctx.actor,
                        "drain timed out; released without switching",
                    ))
                    .await?;
                let msg = format!(
                    "{action} not done: replication did not catch up within {} ms ({}). Producers \
                     were released on the {} streams; the state is still {}. See `fanoutctl \
                     status` and the runbook (a shard is stuck), then try again.",
                    s.drain_timeout_ms,
                    behind,
                    from_side.as_str(),
                    st.state
                );
                let e = after(
                    entry(
                        ctx,
                        req,
                        &st,
                        Some(t.to),
                        Outcome::DrainTimedOut,
                        &guards,
                        msg.clone(),
                    ),
                    released.version,
                );
                return finish(ctx, req, e, msg).await;
            }
        }
    }
    // Finish: replication modes, state, then routing.
    let mut done = begun.clone();
    done.version += 1;
    done.state = t.to;
    done.flip = None;
    if let (Some(seeded), Some(drained)) = (t.seed, t.drain) {
        // The other direction starts exactly where this one stopped: stop the drained
        // direction, let every replicator notice (the settle time covers their mode cache),
        // and start the seeded one with what arrives from now on; everything before is the
        // drained direction's copies (or older) and is skipped, so nothing echoes back.
        set_direction(ctx, &begun, drained, Mode::Stopped, begun.version).await?;
        tokio::time::sleep(Duration::from_millis(s.settle_ms.max(0) as u64)).await;
        let from = now_ms();
        match seeded {
            Direction::Forward => done.forward_since_ms = Some(from),
            Direction::Reverse => done.reverse_since_ms = Some(from),
        }
        detail.push_str(&format!(
            "{} replication stopped; {} replication takes records from {}; ",
            drained.as_str(),
            seeded.as_str(),
            rfc3339_ms(from)
        ));
        // Producers are released only after a margin, so their first records arrive after
        // `from` even if the stream's clock is a little behind this one.
        tokio::time::sleep(CLOCK_MARGIN).await;
    }
    done.updated_at_ms = now_ms();
    set_modes(ctx, &done).await?;
    if ctx.control.write_state(Some(begun.version), &done).await? == Write::Lost {
        return lost(ctx, req, &begun, t.to, &guards).await;
    }
    routing(ctx, &st.migration)
        .publish(&document(
            &done,
            t.to.producers(),
            StreamMode::Active,
            &ctx.actor,
            &reason,
        ))
        .await?;
    if !refused.is_empty() {
        detail.push_str(&format!("forced past: {refused_names}; "));
    }
    detail.push_str(&format!(
        "producers on {} streams",
        t.to.producers().as_str()
    ));
    let e = after(
        entry(
            ctx,
            req,
            &st,
            Some(t.to),
            Outcome::Applied,
            &guards,
            detail.clone(),
        ),
        done.version,
    );
    let mut r = finish(
        ctx,
        req,
        e,
        format!(
            "{action} done: {} → {} (version {}); {detail}",
            t.from, t.to, done.version
        ),
    )
    .await?;
    r.plan = Some(t);
    r.capacity = capacity;
    Ok(r)
}

/// Someone else changed the state first: record it and say who.
async fn lost(
    ctx: &Context,
    req: &Request,
    st: &StoredState,
    to: State,
    guards: &[GuardResult],
) -> Result<Report, StoreError> {
    let now = ctx.control.load(&st.migration.name).await?;
    let who = now
        .as_ref()
        .map(|n| {
            format!(
                "{} (version {}, state {})",
                n.updated_by, n.version, n.state
            )
        })
        .unwrap_or_else(|| "someone".to_owned());
    let msg = format!(
        "lost a race: {who} changed the migration first; nothing was done. Look at \
         `fanoutctl status` before trying again."
    );
    let e = entry(
        ctx,
        req,
        st,
        Some(to),
        Outcome::LostRace,
        guards,
        msg.clone(),
    );
    finish(ctx, req, e, msg).await
}

/// Waits until every record that arrived in the migration's new streams before `point` has
/// been replicated (no shard's oldest waiting record is older). `Err` says which shards were
/// still behind when `timeout` passed.
async fn drain(
    ctx: &Context,
    st: &StoredState,
    direction: Direction,
    point: i64,
    timeout: Duration,
) -> Result<Result<Duration, String>, StoreError> {
    let started = tokio::time::Instant::now();
    loop {
        let now = now_ms();
        let mut behind = Vec::new();
        for lag in lags(ctx, st, direction, now).await? {
            if lag.first_pending_arrival_ms.is_some_and(|a| a < point) {
                behind.push(format!("{} {} {} ms", lag.route, lag.shard_id, lag.lag_ms));
            }
        }
        if behind.is_empty() {
            return Ok(Ok(started.elapsed()));
        }
        if started.elapsed() >= timeout {
            return Ok(Err(format!("still behind: {}", behind.join(", "))));
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

/// A flip whose process died (past its deadline): put replication modes and routing back as
/// the state says, clear it, record it.
async fn release_abandoned(
    ctx: &Context,
    req: &Request,
    st: StoredState,
    f: &PendingFlip,
) -> Result<StoredState, StoreError> {
    let mut next = st.clone();
    next.version += 1;
    next.flip = None;
    next.updated_at_ms = now_ms();
    next.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &next).await? == Write::Done {
        set_modes(ctx, &next).await?;
        routing(ctx, &next.migration)
            .publish(&document(
                &next,
                next.state.producers(),
                StreamMode::Active,
                &ctx.actor,
                "abandoned flip released",
            ))
            .await?;
        let mut e = after(
            entry(
                ctx,
                req,
                &st,
                Some(st.state),
                Outcome::Applied,
                &[],
                format!(
                    "released abandoned flip {} ({} by {}, started {})",
                    f.id,
                    f.action,
                    f.actor,
                    rfc3339(f.started_at_ms)
                ),
            ),
            next.version,
        );
        e.command = "release".to_owned();
        ctx.control.append_history(&req.migration, &e).await?;
    }
    load(ctx, req).await
}

async fn pause(ctx: &Context, req: &Request, paused: bool) -> Result<Report, StoreError> {
    let st = load(ctx, req).await?;
    if st.paused == paused {
        let msg = format!(
            "replication is already {}: nothing to do",
            if paused { "paused" } else { "running" }
        );
        let e = entry(
            ctx,
            req,
            &st,
            Some(st.state),
            Outcome::AlreadyThere,
            &[],
            String::new(),
        );
        return finish(ctx, req, e, msg).await;
    }
    if st.flip.is_some() {
        let msg = "a flip is in progress; pause or resume after it".to_owned();
        let e = entry(
            ctx,
            req,
            &st,
            Some(st.state),
            Outcome::LostRace,
            &[],
            msg.clone(),
        );
        return finish(ctx, req, e, msg).await;
    }
    let mut next = st.clone();
    next.version += 1;
    next.paused = paused;
    next.updated_at_ms = now_ms();
    next.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &next).await? == Write::Lost {
        return lost(ctx, req, &st, st.state, &[]).await;
    }
    set_modes(ctx, &next).await?;
    let modes = next.state.modes(false, paused);
    let msg = format!(
        "replication {} (forward mode {}); records wait in the source streams while held",
        if paused { "paused" } else { "resumed" },
        modes.forward
    );
    let e = after(
        entry(
            ctx,
            req,
            &st,
            Some(st.state),
            Outcome::Applied,
            &[],
            msg.clone(),
        ),
        next.version,
    );
    finish(ctx, req, e, msg).await
}

async fn dlq_ack(ctx: &Context, req: &Request) -> Result<Report, StoreError> {
    let Some(reason) = req.reason.clone().filter(|r| !r.trim().is_empty()) else {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            "dlq ack needs --reason: what was looked at and decided (it is recorded)",
        ));
    };
    let st = load(ctx, req).await?;
    let pending = unacknowledged(ctx, &st).await?;
    let keys: Vec<String> = if req.all {
        pending.clone()
    } else {
        let unknown: Vec<&String> = req.keys.iter().filter(|k| !pending.contains(k)).collect();
        if req.keys.is_empty() || !unknown.is_empty() {
            return Ok(Report::new(
                req,
                Outcome::Failed,
                format!(
                    "nothing acknowledged: {} — give dead-letter or on-failure keys as `fanoutctl redrive --dry-run` lists them, or --all ({} unacknowledged)",
                    if req.keys.is_empty() { "no keys given".to_owned() } else { format!("not an unacknowledged dead letter: {}", unknown.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")) },
                    pending.len()
                ),
            ));
        }
        req.keys.clone()
    };
    ctx.control
        .acknowledge(&st.migration.name, &keys, &ctx.actor, &reason, now_ms())
        .await?;
    let outcome = if keys.is_empty() {
        Outcome::AlreadyThere
    } else {
        Outcome::Applied
    };
    let msg = format!(
        "{} dead letter(s) acknowledged; {} left unacknowledged",
        keys.len(),
        pending.len() - keys.len()
    );
    let e = entry(
        ctx,
        req,
        &st,
        Some(st.state),
        outcome,
        &[],
        format!("{}: {}", msg, keys.join(", ")),
    );
    finish(ctx, req, e, msg).await
}

async fn history(ctx: &Context, req: &Request) -> Result<Report, StoreError> {
    let st = load(ctx, req).await?;
    let entries = ctx.control.history(&req.migration, req.last).await?;
    let mut r = Report::new(
        req,
        Outcome::Applied,
        format!(
            "{} entr{}",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" }
        ),
    );
    r.state = Some(st.state);
    r.version = Some(st.version);
    r.history = entries;
    Ok(r)
}

async fn status(ctx: &Context, req: &Request) -> Result<Report, StoreError> {
    let st = load(ctx, req).await?;
    let now = now_ms();
    let mut shards = Vec::new();
    let mut streams = Vec::new();
    let doc = {
        use crate::routing::RoutingSource;
        routing(ctx, &st.migration).fetch().await?
    };
    shards.extend(lags(ctx, &st, Direction::Forward, now).await?);
    // The reverse direction's shards only while it runs: otherwise the old streams' records
    // are not its to replicate, and their "lag" would mean nothing.
    if st
        .state
        .modes(st.migration.settings.reverse, st.paused)
        .reverse
        != Mode::Stopped
    {
        shards.extend(lags(ctx, &st, Direction::Reverse, now).await?);
    }
    for s in &st.migration.streams {
        let routed = doc.as_ref().and_then(|d| d.streams.get(&s.name));
        streams.push(StreamView {
            name: s.name.clone(),
            active: routed
                .map(|r| r.active.clone())
                .unwrap_or_else(|| "(no routing document)".to_owned()),
            routing_mode: routed
                .map(|r| {
                    match r.mode {
                        StreamMode::Active => "active",
                        StreamMode::Hold => "hold",
                    }
                    .to_owned()
                })
                .unwrap_or_default(),
            routing_version: routed.map(|r| r.version).unwrap_or(0),
            forward_route: s.forward_route.clone(),
            forward_mode: ctx.control.mode(&s.forward_route).await?.mode,
            reverse_route: s.reverse_route.clone(),
            reverse_mode: match &s.reverse_route {
                Some(r) => Some(ctx.control.mode(r).await?.mode),
                None => None,
            },
        });
    }
    let (discarded, unacked): (Vec<String>, Vec<String>) = unacknowledged(ctx, &st)
        .await?
        .into_iter()
        .partition(|k| k.starts_with(on_failure::PREFIX));
    let mut last_flips: Vec<HistoryEntry> = ctx
        .control
        .history(&req.migration, Some(20))
        .await?
        .into_iter()
        .filter(|e| e.outcome != Outcome::AlreadyThere && e.command != "dlq_ack")
        .collect();
    last_flips.drain(..last_flips.len().saturating_sub(5));
    let mut r = Report::new(req, Outcome::Applied, String::new());
    r.state = Some(st.state);
    r.version = Some(st.version);
    r.status = Some(StatusView {
        state: st.state,
        version: st.version,
        paused: st.paused,
        producers: st.state.producers(),
        flip: st.flip.clone(),
        request: st.request.clone(),
        streams,
        shards,
        unacknowledged_dead_letters: unacked.len(),
        unacknowledged_discarded_batches: discarded.len(),
        discarded_batches_at: format!("s3://{}/{}", st.migration.bucket, on_failure::PREFIX),
        last_flips,
        heartbeat_stale_ms: HEARTBEAT_STALE_MS,
    });
    Ok(r)
}

fn history_line(e: &HistoryEntry) -> String {
    let from = if e.command == "start" {
        String::new()
    } else {
        format!("{} ", e.from)
    };
    let to = e.to.map(|t| format!("→ {t}")).unwrap_or_default();
    let reason = e
        .reason
        .as_deref()
        .map(|r| format!(" \"{r}\""))
        .unwrap_or_default();
    let forced = if e.forced { " FORCED" } else { "" };
    let failed: Vec<&str> = e
        .guards
        .iter()
        .filter(|g| !g.passed)
        .map(|g| g.name.as_str())
        .collect();
    let guards = if e.guards.is_empty() {
        String::new()
    } else if failed.is_empty() {
        format!(" guards: {} passed", e.guards.len())
    } else {
        format!(" guards failed: {}", failed.join(","))
    };
    format!(
        "{}  v{}  {:<9} {}{}  {}{}  by {}{}{}",
        rfc3339(e.at_ms),
        e.version_after.unwrap_or(e.version_before),
        e.command,
        from,
        to,
        e.outcome.as_str(),
        forced,
        e.actor,
        reason,
        guards
    )
}

impl Report {
    /// The report for a person.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.status {
            let now = now_ms();
            out.push_str(&format!(
                "migration {}   state {}   version {}   producers → {} streams{}\n",
                self.migration,
                s.state.as_str().to_uppercase(),
                s.version,
                s.producers.as_str(),
                if s.paused {
                    "   REPLICATION PAUSED"
                } else {
                    ""
                }
            ));
            if let Some(f) = &s.flip {
                out.push_str(&format!(
                    "FLIP IN PROGRESS: {} by {} since {} (producers held)\n",
                    f.action,
                    f.actor,
                    rfc3339(f.started_at_ms)
                ));
                if now > f.deadline_ms {
                    out.push_str(
                        "  ABANDONED: its deadline has passed (its process died?). The next \
                         cutover/rollback/commit releases it first; producers stay held until then.\n",
                    );
                }
            }
            if let Some(r) = &s.request {
                out.push_str(&format!(
                    "AWAITING APPROVAL: {} requested by {} at {}: \"{}\"\n",
                    r.action,
                    r.requested_by,
                    rfc3339(r.at_ms),
                    r.reason
                ));
            }
            out.push_str("\nstreams\n");
            for v in &s.streams {
                out.push_str(&format!(
                    "  {:<16} routing {} (v{}) → {}\n  {:<16} new → old {} on route {}\n",
                    v.name,
                    v.routing_mode,
                    v.routing_version,
                    v.active,
                    "",
                    v.forward_mode,
                    v.forward_route
                ));
                if let (Some(route), Some(mode)) = (&v.reverse_route, v.reverse_mode) {
                    out.push_str(&format!("  {:<16} old → new {mode} on route {route}\n", ""));
                }
            }
            out.push_str(&format!(
                "\n{:<24} {:<22} {:>10} {:>11} {:<12} {:<8}\n",
                "route", "shard", "lag", "heartbeat", "condition", "mode"
            ));
            for l in &s.shards {
                let route = if l.route.len() > 23 {
                    format!("{}…", &l.route[..22])
                } else {
                    l.route.clone()
                };
                out.push_str(&format!(
                    "{:<24} {:<22} {:>10} {:>11} {:<12} {:<8}\n",
                    route,
                    l.shard_id,
                    format!("{} ms", l.lag_ms),
                    l.heartbeat_age_ms
                        .map(|a| format!("{} ago", ago(a)))
                        .unwrap_or_else(|| "never".into()),
                    l.condition(s.heartbeat_stale_ms),
                    l.heartbeat_mode.as_deref().unwrap_or("-"),
                ));
            }
            out.push_str(&format!(
                "\nunacknowledged dead letters: {}\n",
                s.unacknowledged_dead_letters
            ));
            if s.unacknowledged_discarded_batches > 0 {
                out.push_str(&format!(
                    "DISCARDED BATCHES: {} on-failure record(s) at {}: batches the event source \
                     mapping gave up on, NOT replicated. See what can be recovered with \
                     `fanoutctl redrive --dry-run`\n",
                    s.unacknowledged_discarded_batches, s.discarded_batches_at
                ));
            } else {
                out.push_str("discarded batches (on-failure records): 0\n");
            }
            out.push_str("\nlast flips\n");
            if s.last_flips.is_empty() {
                out.push_str("  (none)\n");
            }
            for e in &s.last_flips {
                out.push_str(&format!("  {}\n", history_line(e)));
            }
            out.push_str(&format!("\nas of {}\n", rfc3339(now)));
            return out;
        }
        if !self.history.is_empty() {
            for e in &self.history {
                out.push_str(&history_line(e));
                out.push('\n');
                for g in &e.guards {
                    out.push_str(&format!(
                        "      {} {:<13} {}\n",
                        if g.passed { "pass" } else { "FAIL" },
                        g.name,
                        g.detail
                    ));
                }
                if !e.detail.is_empty() {
                    out.push_str(&format!("      {}\n", e.detail));
                }
            }
            return out;
        }
        if let Some(t) = &self.plan {
            let drain = match (t.drain, t.switches_routing) {
                (None, _) => "no drain".to_owned(),
                (Some(d), true) => {
                    format!("{} replication catches up while producers hold", d.as_str())
                }
                (Some(d), false) => format!(
                    "{} replication catches up with what arrived before the flip began",
                    d.as_str()
                ),
            };
            let producers = if t.switches_routing {
                format!(
                    "held, then moved to the {} streams",
                    t.to.producers().as_str()
                )
            } else {
                "stay where they are".to_owned()
            };
            out.push_str(&format!(
                "plan: {} {} → {}; producers {producers}; {drain}; then replication new → old is {}\n",
                t.action, t.from, t.to, t.modes_after.forward,
            ));
        }
        for g in &self.guards {
            out.push_str(&format!(
                "  {} {:<13} {}\n",
                if g.passed { "pass" } else { "FAIL" },
                g.name,
                g.detail
            ));
        }
        for c in &self.capacity {
            out.push_str(&format!(
                "  capacity of {} ({}): read the newest {} s of {}; target {} shard(s), round \
                 trip {} ({})\n",
                c.route,
                c.order,
                c.window_ms / 1000,
                c.sampled.join(", "),
                c.target_facts.shards,
                crate::capacity::fmt_ms(c.target_facts.rtt_ms),
                c.round_trip
            ));
            for s in c
                .assessment
                .shards
                .iter()
                .filter(|s| s.hottest_key.is_some())
            {
                out.push_str(&format!(
                    "      {}: {}\n",
                    s.shard_id,
                    s.line(&c.target_facts)
                ));
            }
        }
        out.push_str(&self.message);
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lambda_payload_is_the_request_and_unknown_fields_are_refused() {
        let r: Request = serde_json::from_str(
            r#"{"command": "cutover", "migration": "orders-move", "reason": "CHG-1234", "dry_run": true}"#,
        )
        .unwrap();
        assert_eq!(r.command, CommandName::Cutover);
        assert_eq!(
            (r.migration.as_str(), r.dry_run, r.force),
            ("orders-move", true, false)
        );
        let ack: Request = serde_json::from_str(
            r#"{"command": "dlq_ack", "migration": "m", "all": true, "reason": "looked"}"#,
        )
        .unwrap();
        assert_eq!(ack.command, CommandName::DlqAck);
        let err = serde_json::from_str::<Request>(r#"{"command": "cutover", "forse": true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `forse`"), "{err}");
        let err = serde_json::from_str::<Request>(r#"{"command": "flip"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `flip`"), "{err}");
    }

    #[test]
    fn exit_codes_tell_refused_lost_and_failed_apart() {
        let codes: Vec<u8> = [
            Outcome::Applied,
            Outcome::AlreadyThere,
            Outcome::Failed,
            Outcome::DrainTimedOut,
            Outcome::RefusedByGuard,
            Outcome::NotAllowed,
            Outcome::LostRace,
            Outcome::AwaitingApproval,
        ]
        .map(Outcome::exit_code)
        .to_vec();
        assert_eq!(codes, [0, 0, 2, 2, 3, 3, 4, 5]);
    }
}
