//! `pause`, `resume`, `dlq ack`, `history` and `status`.

#[allow(unused_imports)]
use super::*;

pub(super) async fn pause<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    paused: bool,
) -> Result<Report, StoreError> {
    let st = load(ctx, req).await?;
    if st.state == State::Committed {
        let msg = format!(
            "migration {} is committed: replication is stopped for good and its routes may \
             belong to a newer migration; nothing to {}",
            st.migration.name,
            if paused { "pause" } else { "resume" }
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

pub(super) async fn status<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
    let st = load(ctx, req).await?;
    let now = now_ms();
    let mut shards = Vec::new();
    let mut streams = Vec::new();
    let doc = ctx.control.fetch_routing(&st.migration).await?;
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
