//! Lambda consumers: registered with a migration (`consumer_add`), switched by each flip
//! (those of the new streams on from the cutover and off at a rollback, those of the old
//! streams off at the commit, where a moving one gets a mapping on the new stream), checked
//! by the `consumers` guard, listed by `status`.

#[allow(unused_imports)]
use super::*;

use crate::consumers::{lambda_start, resolve, Direction};
use crate::control::record::{Consumer, MovesTo};
use crate::ports::control::MappingFacts;

/// Clock allowance of a moved consumer's start (the replicator's clock against Kinesis's
/// arrival times).
const MOVE_MARGIN_MS: i64 = 1_000;

/// How far behind a moving consumer's old mapping is assumed to be at most, by default.
pub const LAG_ALLOWANCE: &str = "5m";

/// One Lambda consumer to register: its mapping on one of the migration's streams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSpec {
    pub name: String,
    /// The function (name or ARN).
    pub function: String,
    /// The stream it reads (name or ARN): a new stream, or an old one (its mapping then in
    /// the old account, switched off at the commit).
    pub stream: String,
    /// The mapping's UUID; found from the function and the stream when not given.
    pub mapping: Option<String>,
    /// On from the start, not only from the cutover (consumers of new streams).
    pub from_start: bool,
    /// A consumer of an old stream that moves at the commit: the function in the new account
    /// that a new mapping on the new stream invokes.
    pub moves_to_function: Option<String>,
    /// How far behind the old mapping may be when it is switched off (default 5m).
    pub lag_allowance: Option<String>,
}

/// The consumers in FANOUT_CONSUMERS (a JSON list of [`ConsumerSpec`]s; what Terraform's
/// `consumers` input sets), which `start` registers.
pub fn specs_from_json(text: &str) -> Result<Vec<ConsumerSpec>, String> {
    serde_json::from_str(text).map_err(|e| {
        format!(
            "FANOUT_CONSUMERS is not a JSON list of consumers ({e}); expected e.g. \
             [{{\"name\": \"billing\", \"function\": \"billing-new\", \"stream\": \"orders\"}}]"
        )
    })
}

/// A registered consumer and its mapping now, for `status`.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerView {
    pub consumer: Consumer,
    /// Enabled in the migration's current state.
    pub wanted: bool,
    /// As Lambda describes it (`None`: not found).
    pub mapping: Option<MappingFacts>,
    /// A consumer that moves, once committed: its mappings on the new stream (none: not
    /// moved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<Vec<MappingFacts>>,
}

fn word(on: bool) -> &'static str {
    if on {
        "Enabled"
    } else {
        "Disabled"
    }
}

/// A consumer's mapping as found, with its side: `old` when it reads an old stream, and that
/// stream's new counterpart.
struct Found {
    mapping: MappingFacts,
    old: bool,
    counterpart: String,
}

/// Finds the mapping of `spec` and checks it reads one of the migration's streams.
async fn mapping_of<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    spec: &ConsumerSpec,
) -> Result<Result<Found, String>, StoreError> {
    let named = |given: &str, arn: &str| {
        given == arn || StreamArn::parse(arn).is_ok_and(|a| a.name() == given)
    };
    let streams = &st.migration.streams;
    let (stream, counterpart, old) =
        if let Some(l) = streams.iter().find(|l| named(&spec.stream, &l.new)) {
            (l.new.clone(), l.old.clone(), false)
        } else if let Some(l) = streams.iter().find(|l| named(&spec.stream, &l.old)) {
            (l.old.clone(), l.new.clone(), true)
        } else {
            let all: Vec<String> = streams
                .iter()
                .map(|l| format!("{} (new), {} (old)", l.new, l.old))
                .collect();
            return Ok(Err(format!(
                "{} is not one of migration {}'s streams: {}",
                spec.stream,
                st.migration.name,
                all.join(", ")
            )));
        };
    if spec.moves_to_function.is_some() && !old {
        return Ok(Err(format!(
            "{} is a new stream: only a consumer of an old stream moves (to its new stream, \
             at the commit); leave out --moves-to-function",
            spec.stream
        )));
    }
    if spec.from_start && old {
        return Ok(Err(format!(
            "{} is an old stream, whose consumers are on until the commit anyway: leave out \
             --from-start",
            spec.stream
        )));
    }
    let account = if old { "old" } else { "new" };
    let found = match &spec.mapping {
        Some(uuid) => ctx
            .control
            .mapping(old, uuid)
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        None => ctx.control.mappings(old, &spec.function, &stream).await?,
    };
    Ok(match found.as_slice() {
        [m] if m.stream == stream => Ok(Found {
            mapping: m.clone(),
            old,
            counterpart,
        }),
        [m] => Err(format!(
            "mapping {} reads {}, not {stream}",
            m.uuid, m.stream
        )),
        [] => Err(format!(
            "no event source mapping of {} on {stream}{} in the {account} account: create it \
             {}(its own Terraform, with `enabled` left to fanout), then register it",
            spec.function,
            spec.mapping
                .as_ref()
                .map(|u| format!(" with UUID {u}"))
                .unwrap_or_default(),
            if old { "" } else { "disabled " }
        )),
        many => Err(format!(
            "{} mappings of {} on {stream} ({}): give --mapping UUID",
            many.len(),
            spec.function,
            many.iter()
                .map(|m| m.uuid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    })
}

/// `consumer_add`: registers each consumer and sets its mapping as the current state asks.
pub(super) async fn add<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
    let st = release_if_abandoned(ctx, req, load(ctx, req).await?).await?;
    if st.state == State::Committed {
        return Ok(Report::new(
            req,
            Outcome::NotAllowed,
            crate::control::machine::COMMITTED,
        ));
    }
    // A registration changes the state item: during a flip it would make the flip lose.
    if let Some(f) = &st.flip {
        return Ok(Report::new(
            req,
            Outcome::LostRace,
            format!(
                "a {} by {} is in progress (flip {}); register the consumer after it \
                 (`fanoutctl status --watch`). Nothing was changed",
                f.action, f.actor, f.id
            ),
        ));
    }
    if req.consumers.is_empty() {
        return Ok(Report::new(req, Outcome::Failed, "no consumer given"));
    }
    let mut next = st.clone();
    let mut changes = Vec::new();
    for spec in &req.consumers {
        if spec.name.trim().is_empty() {
            return Ok(Report::new(
                req,
                Outcome::Failed,
                "a consumer needs a --name",
            ));
        }
        let lag_allowance_ms = match crate::verify::parse_duration(
            spec.lag_allowance.as_deref().unwrap_or(LAG_ALLOWANCE),
        ) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => {
                return Ok(Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "consumer {}: --lag-allowance: {e}. Nothing was changed",
                        spec.name
                    ),
                ))
            }
        };
        let Found {
            mapping: m,
            old,
            counterpart,
        } = match mapping_of(ctx, &st, spec).await? {
            Ok(f) => f,
            Err(why) => {
                return Ok(Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "consumer {} not registered: {why}. Nothing was changed",
                        spec.name
                    ),
                ))
            }
        };
        let consumer = Consumer {
            name: spec.name.clone(),
            mapping: m.uuid.clone(),
            function: m.function_arn.clone(),
            stream: m.stream.clone(),
            from_start: spec.from_start,
            old,
            moves_to: spec.moves_to_function.as_ref().map(|f| MovesTo {
                function: f.clone(),
                stream: counterpart.clone(),
                lag_allowance_ms,
            }),
        };
        match next
            .migration
            .consumers
            .iter()
            .find(|c| c.name == spec.name)
        {
            Some(c) if *c == consumer => {
                changes.push(format!("{}: already registered", c.name));
                continue;
            }
            Some(c) => {
                return Ok(Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "a consumer named {} is registered already, with mapping {}: choose \
                         another name. Nothing was changed",
                        c.name, c.mapping
                    ),
                ))
            }
            None => {}
        }
        let want = consumer.enabled_in(st.state);
        let change = match m.enabled() {
            Some(on) if on == want => format!("stays {}", m.state),
            Some(_) => format!("{} → {}", m.state, word(want)),
            None => {
                return Ok(Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "mapping {} is {}: wait until Lambda has finished changing it, then run \
                         this again. Nothing was changed",
                        m.uuid, m.state
                    ),
                ))
            }
        };
        changes.push(format!(
            "{} (mapping {}, {} on {}{}): {change}{}",
            consumer.name,
            consumer.mapping,
            consumer.function,
            consumer.stream,
            if old { ", old account" } else { "" },
            consumer
                .moves_to
                .as_ref()
                .map(|mv| format!("; {}", moves_words(mv)))
                .unwrap_or_default()
        ));
        next.migration.consumers.push(consumer);
    }
    if next.migration.consumers == st.migration.consumers {
        // Registered already; a mapping not as the state wants (a run that stopped after the
        // registration, a change by hand) is set now.
        let set = if req.dry_run {
            String::new()
        } else {
            switch(ctx, &st, st.state).await
        };
        if set.is_empty() {
            let mut r = Report::new(req, Outcome::AlreadyThere, changes.join("; "));
            r.state = Some(st.state);
            return Ok(r);
        }
        let msg = format!("{}; {set}", changes.join("; "));
        let e = entry(
            ctx,
            req,
            &st,
            Some(st.state),
            Outcome::Applied,
            &[],
            msg.clone(),
        );
        return finish(ctx, req, e, msg).await;
    }
    let why = format!("state {}", st.state);
    if req.dry_run {
        let mut r = Report::new(
            req,
            Outcome::Applied,
            format!("dry run: would register {} ({why})", changes.join("; ")),
        );
        r.state = Some(st.state);
        return Ok(r);
    }
    next.version += 1;
    next.updated_at_ms = now_ms();
    next.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &next).await? == Write::Lost {
        return lost(ctx, req, &st, st.state, &[]).await;
    }
    // Registered first, then set: a mapping that could not be set is named with the command
    // that sets it; the guard and `status` show it, and this command, run again, sets it.
    let set = switch(ctx, &next, st.state).await;
    let msg = format!("registered {} ({why}); {set}", changes.join("; "));
    applied_in_place(ctx, req, &st, next.version, msg).await
}

/// The `consumers` guard for `st` as it is now.
pub(super) async fn guard<C: ControlStore>(ctx: &Context<C>, st: &StoredState) -> GuardResult {
    let mut seen = Vec::new();
    for c in &st.migration.consumers {
        let m = ctx
            .control
            .mapping(c.old, &c.mapping)
            .await
            .map_err(|e| e.to_string());
        seen.push((c, m));
    }
    let mut moves = Vec::new();
    for c in &st.migration.consumers {
        if let Some(mv) = &c.moves_to {
            let taken = ctx
                .control
                .mappings(false, &mv.function, &mv.stream)
                .await
                .map_err(|e| e.to_string());
            moves.push((c, taken));
        }
    }
    guards::consumers(&seen, &moves, st.state)
}

/// A move in words: where the consumer goes at the commit.
fn moves_words(mv: &MovesTo) -> String {
    format!(
        "at the commit moves to {}: a new mapping of {} from the time its old mapping is \
         switched off less {} (translated to the new stream)",
        mv.stream,
        mv.function,
        crate::time::human_secs(mv.lag_allowance_ms as f64 / 1000.0)
    )
}

/// What a flip from `from` to `to` does to each consumer, for the plan.
pub(super) fn planned(st: &StoredState, from: State, to: State) -> Vec<String> {
    st.migration
        .consumers
        .iter()
        .map(|c| {
            let (was, will) = (c.enabled_in(from), c.enabled_in(to));
            let side = if c.old { ", old account" } else { "" };
            let change = if was == will {
                format!("stays {}", word(will))
            } else {
                format!("{} → {}", word(was), word(will))
            };
            let moves = match &c.moves_to {
                Some(mv) if to == State::Committed => format!("; then {}", moves_words(mv)),
                _ => String::new(),
            };
            format!(
                "consumer {} (mapping {}{side}): {change}{moves}",
                c.name, c.mapping
            )
        })
        .collect()
}

/// Sets each consumer's mapping as state `to` wants, where it is not so already, and at the
/// commit moves the consumers that move; returns what was done, for the report and the
/// history. A mapping that cannot be set does not undo the flip: it is named with the command
/// that sets it by hand.
pub(super) async fn switch<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    to: State,
) -> String {
    let mut done = Vec::new();
    for c in &st.migration.consumers {
        if let (Some(mv), State::Committed) = (&c.moves_to, to) {
            done.extend(move_consumer(ctx, st, c, mv).await);
            continue;
        }
        let want = c.enabled_in(to);
        let now = ctx.control.mapping(c.old, &c.mapping).await;
        if matches!(&now, Ok(Some(m)) if m.enabled() == Some(want)) {
            continue;
        }
        done.push(
            match ctx.control.enable_mapping(c.old, &c.mapping, want).await {
                Ok(m) => format!(
                    "consumer {} {} ({})",
                    c.name,
                    word(want).to_lowercase(),
                    m.state
                ),
                Err(e) => format!(
                    "consumer {} NOT {}: {e}; run `aws lambda update-event-source-mapping --uuid \
                     {} --{}enabled` in the {} account",
                    c.name,
                    word(want).to_lowercase(),
                    c.mapping,
                    if want { "" } else { "no-" },
                    c.account()
                ),
            },
        );
    }
    if done.is_empty() {
        String::new()
    } else {
        format!("{}; ", done.join("; "))
    }
}

/// How long the commit waits for a moving consumer's old mapping to be Disabled before it
/// creates the new one (two mappings invoking at once would only repeat records, but a
/// mapping that will not settle needs a person).
const DISABLE_WAIT: Duration = Duration::from_secs(60);

/// At the commit: switches off consumer `c`'s mapping on the old stream and gives it a mapping
/// of `mv.function` on the new stream. The old mapping has processed everything that arrived
/// in the old stream before it was switched off less the lag allowance; the position map
/// turns that into the earliest arrival time in the new stream of a record it may not have
/// seen. Only the commit's flip calls this, once (a registration is refused during a flip
/// and once committed), so no two calls race to create two mappings. Nothing is created when
/// the time it stopped is not known, or while it may still take records.
async fn move_consumer<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    c: &Consumer,
    mv: &MovesTo,
) -> Vec<String> {
    let translate_by_hand = format!(
        "`fanoutctl positions translate --from {} --to {} --at <that time less its lag>` gives \
         the start (its Lambda line)",
        c.stream, mv.stream
    );
    let m = match ctx.control.mapping(true, &c.mapping).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return vec![format!(
                "consumer {} NOT moved: its mapping {} is not in the old account (deleted?); \
                 nothing was created. Find when it stopped (CloudTrail: \
                 DeleteEventSourceMapping), then {translate_by_hand}",
                c.name, c.mapping
            )]
        }
        Err(e) => {
            return vec![format!(
                "consumer {} NOT moved: its mapping {} could not be read ({e}); nothing was \
                 changed or created. Switch it off (`aws lambda update-event-source-mapping \
                 --uuid {} --no-enabled` in the old account), then {translate_by_hand}",
                c.name, c.mapping, c.mapping
            )]
        }
    };
    if m.state != "Enabled" {
        return vec![format!(
            "consumer {} NOT moved: its mapping {} was {} before the commit switched it off, so \
             fanout cannot tell when it stopped taking records; nothing was created. Find when \
             (CloudTrail: UpdateEventSourceMapping), then {translate_by_hand}",
            c.name, c.mapping, m.state
        )];
    }
    let asked = now_ms();
    let mut lines = Vec::new();
    // Lambda's time of the change bounds a fast local clock (fanoutctl runs on laptops).
    let off = match ctx.control.enable_mapping(true, &c.mapping, false).await {
        Ok(m) => {
            lines.push(format!("consumer {} disabled ({})", c.name, m.state));
            m.last_modified_ms.map_or(asked, |at| at.min(asked))
        }
        Err(e) => {
            return vec![format!(
                "consumer {} NOT disabled: {e}; nothing was created (both mappings would run). \
                 Run `aws lambda update-event-source-mapping --uuid {} --no-enabled` in the old \
                 account; then, with the time you ran it, {translate_by_hand}",
                c.name, c.mapping
            )];
        }
    };
    let seen_until = off - mv.lag_allowance_ms;
    let (start, why) = match move_start(ctx, st, c, mv, seen_until).await {
        Ok(ms) => (
            Some(ms),
            format!("AT_TIMESTAMP {}", crate::time::rfc3339_ms(ms)),
        ),
        Err(e) => (None, format!("TRIM_HORIZON ({e})")),
    };
    let by_hand = format!(
        "run `aws lambda create-event-source-mapping --function-name {} --event-source-arn {} \
         --starting-position {}` in the new account",
        mv.function,
        mv.stream,
        match start {
            Some(ms) => format!(
                "AT_TIMESTAMP --starting-position-timestamp {}",
                crate::time::rfc3339_ms(ms)
            ),
            None => "TRIM_HORIZON".to_owned(),
        }
    );
    // Not two mappings invoking at once: the old one finishes its batch in flight first.
    let waited = tokio::time::Instant::now();
    loop {
        match ctx.control.mapping(true, &c.mapping).await {
            Ok(Some(m)) if m.state == "Disabled" => break,
            now if waited.elapsed() >= DISABLE_WAIT => {
                let state = match now {
                    Ok(Some(m)) => m.state,
                    Ok(None) => "gone".to_owned(),
                    Err(e) => format!("unreadable ({e})"),
                };
                lines.push(format!(
                    "consumer {} NOT moved yet: its mapping {} is still {state} after {} s; \
                     once it is Disabled, {by_hand}",
                    c.name,
                    c.mapping,
                    DISABLE_WAIT.as_secs()
                ));
                return lines;
            }
            _ => tokio::time::sleep(ctx.poll).await,
        }
    }
    lines.push(
        match ctx.control.mappings(false, &mv.function, &mv.stream).await {
            Ok(found) if !found.is_empty() => format!(
                "consumer {} NOT moved: {} has a mapping on {} already ({}); none was created. \
                 Make sure it is Enabled and started no later than {why}; otherwise delete it \
                 and {by_hand}",
                c.name,
                mv.function,
                mv.stream,
                found
                    .iter()
                    .map(|m| format!("{} {}", m.uuid, m.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => format!(
                "consumer {} NOT moved: the mappings of {} on {} could not be listed ({e}); if \
                 it has none, {by_hand}",
                c.name, mv.function, mv.stream
            ),
            Ok(_) => match ctx
                .control
                .create_mapping(&mv.function, &mv.stream, start)
                .await
            {
                Ok(m) => format!(
                    "consumer {} moved to {}: mapping {} of {} from {why} ({}); its old mapping \
                     had processed everything that arrived before {} (switched off at {}, at \
                     most {} behind); records from the new start that it had processed come \
                     again",
                    c.name,
                    mv.stream,
                    m.uuid,
                    m.function_arn,
                    m.state,
                    crate::time::rfc3339_ms(seen_until),
                    crate::time::rfc3339_ms(off),
                    crate::time::human_secs(mv.lag_allowance_ms as f64 / 1000.0)
                ),
                Err(e) => format!(
                    "consumer {} NOT moved to {}: {e}; {by_hand}",
                    c.name, mv.stream
                ),
            },
        },
    );
    lines
}

/// The start on the new stream of a consumer of `c.stream` that has processed everything
/// that arrived there before `seen_until`: the earliest over every route between the two.
async fn move_start<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    c: &Consumer,
    mv: &MovesTo,
    seen_until: i64,
) -> Result<i64, String> {
    let route = resolve(&st.migration, &c.stream, &mv.stream)?;
    let shards = ctx
        .control
        .stream_shards(&mv.stream)
        .await
        .map_err(|e| format!("cannot list the shards of {}: {e}", mv.stream))?;
    let mut positions = BTreeMap::new();
    for leg in route
        .legs
        .iter()
        .filter(|l| l.direction == Direction::TargetToSource)
    {
        let p = ctx
            .control
            .route_positions(&leg.route)
            .await
            .map_err(|e| format!("cannot read the positions of route {}: {e}", leg.route))?;
        positions.insert(leg.route.clone(), p);
    }
    lambda_start(&route, &positions, &shards, seen_until, MOVE_MARGIN_MS)
}

/// Every registered consumer with its mapping now, for `status`.
pub(super) async fn views<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
) -> Result<Vec<ConsumerView>, StoreError> {
    let mut out = Vec::new();
    for c in &st.migration.consumers {
        let moved = match &c.moves_to {
            Some(mv) if st.state == State::Committed => Some(
                ctx.control
                    .mappings(false, &mv.function, &mv.stream)
                    .await?,
            ),
            _ => None,
        };
        out.push(ConsumerView {
            consumer: c.clone(),
            wanted: c.enabled_in(st.state),
            mapping: ctx.control.mapping(c.old, &c.mapping).await?,
            moved,
        });
    }
    Ok(out)
}
