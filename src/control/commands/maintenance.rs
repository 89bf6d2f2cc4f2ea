//! `pause`, `resume`, `dlq ack`, `history` and `status`.

#[allow(unused_imports)]
use super::*;

pub(super) async fn pause<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    paused: bool,
) -> Result<Report, StoreError> {
    let st = release_if_abandoned(ctx, req, load(ctx, req).await?).await?;
    if st.state == State::Committed {
        let msg = format!(
            "nothing to {}: {}",
            if paused { "pause" } else { "resume" },
            crate::control::machine::COMMITTED
        );
        let e = entry(
            ctx,
            req,
            &st,
            Some(st.state),
            Outcome::NotAllowed,
            &[],
            msg.clone(),
        );
        return finish(ctx, req, e, msg).await;
    }
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
    applied_in_place(ctx, req, &st, next.version, msg).await
}

pub(super) async fn dlq_ack<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
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

pub(super) async fn history<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
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

/// How long `status` waits for any one part of its screen (the lags, the routing document,
/// …) before showing the rest without it. Each AWS call has its own, shorter, timeout.
const STATUS_PART_BUDGET: Duration = Duration::from_secs(25);

/// One part of the status screen: its value, or why it could not be read (named for a person).
async fn part<C: ControlStore, T>(
    ctx: &Context<C>,
    what: &str,
    read: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(STATUS_PART_BUDGET, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let e = ctx.control.locate(e);
            Err(format!("{what}: {} ({})", e.message, e.code))
        }
        Err(_) => Err(format!(
            "{what}: not read within {} s (see the endpoints in FANOUT_LOG=debug output)",
            STATUS_PART_BUDGET.as_secs()
        )),
    }
}

/// Each stream's (forward mode, reverse mode).
async fn route_modes<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
) -> Result<Vec<(Mode, Option<Mode>)>, StoreError> {
    let mut out = Vec::new();
    for s in &st.migration.streams {
        let reverse = match &s.reverse_route {
            Some(r) => Some(ctx.control.mode(r).await?.mode),
            None => None,
        };
        out.push((ctx.control.mode(&s.forward_route).await?.mode, reverse));
    }
    Ok(out)
}

/// Everything there is to see about a migration. Only the state item must be read; every
/// other part is read at the same time as the rest, and one that cannot be read (a service
/// that does not answer) is listed as such while the others are shown.
pub(super) async fn status<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
    // A flip whose process died is released here too: `status --watch` is what people run.
    let st = release_if_abandoned(ctx, req, load(ctx, req).await?).await?;
    let now = now_ms();
    // The reverse direction's shards only while it runs: otherwise the old streams' records
    // are not its to replicate, and their "lag" would mean nothing.
    let reverse_runs = st
        .state
        .modes(st.migration.settings.reverse, st.paused)
        .reverse
        != Mode::Stopped;
    let (doc, forward, reverse, modes, pending, history, consumers) = tokio::join!(
        part(
            ctx,
            "routing document",
            ctx.control.fetch_routing(&st.migration)
        ),
        part(ctx, "shard lags", lags(ctx, &st, Direction::Forward, now)),
        part(ctx, "reverse shard lags", async {
            if reverse_runs {
                lags(ctx, &st, Direction::Reverse, now).await
            } else {
                Ok(Vec::new())
            }
        }),
        part(ctx, "replication modes", route_modes(ctx, &st)),
        part(ctx, "dead letters", unacknowledged(ctx, &st)),
        part(
            ctx,
            "history",
            ctx.control.history(&req.migration, Some(20))
        ),
        part(ctx, "Lambda consumers", consumers::views(ctx, &st)),
    );
    let mut unavailable = Vec::new();
    let mut keep = |e: String| unavailable.push(e);
    let doc = doc.unwrap_or_else(|e| {
        keep(e);
        None
    });
    let mut shards = forward.unwrap_or_else(|e| {
        keep(e);
        Vec::new()
    });
    shards.extend(reverse.unwrap_or_else(|e| {
        keep(e);
        Vec::new()
    }));
    let modes = modes.map_err(&mut keep).ok();
    let pending = pending.map_err(&mut keep).ok();
    let consumers = consumers.map_err(&mut keep).ok();
    let history = history.unwrap_or_else(|e| {
        keep(e);
        Vec::new()
    });
    let streams = st
        .migration
        .streams
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let routed = doc.as_ref().and_then(|d| d.streams.get(&s.name));
            let mode = modes.as_ref().map(|m| m[i]);
            StreamView {
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
                forward_mode: mode.map(|m| m.0),
                reverse_route: s.reverse_route.clone(),
                reverse_mode: mode.and_then(|m| m.1),
            }
        })
        .collect();
    let (discarded, unacked): (Option<usize>, Option<usize>) = match &pending {
        Some(keys) => {
            let discarded = keys
                .iter()
                .filter(|k| k.starts_with(on_failure::PREFIX))
                .count();
            (Some(discarded), Some(keys.len() - discarded))
        }
        None => (None, None),
    };
    let mut last_flips: Vec<HistoryEntry> = history
        .into_iter()
        .filter(|e| e.outcome != Outcome::AlreadyThere && e.command != "dlq_ack")
        .collect();
    last_flips.drain(..last_flips.len().saturating_sub(5));
    let (outcome, message) = if unavailable.is_empty() {
        (Outcome::Applied, String::new())
    } else {
        (
            Outcome::Failed,
            format!(
                "status is INCOMPLETE: {} part(s) could not be read (listed above); what is \
                 shown was read now",
                unavailable.len()
            ),
        )
    };
    let mut r = Report::new(req, outcome, message);
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
        unacknowledged_dead_letters: unacked,
        unacknowledged_discarded_batches: discarded,
        discarded_batches_at: format!("s3://{}/{}", st.migration.bucket, on_failure::PREFIX),
        last_flips,
        heartbeat_stale_ms: HEARTBEAT_STALE_MS,
        unavailable,
        consumers,
    });
    Ok(r)
}
