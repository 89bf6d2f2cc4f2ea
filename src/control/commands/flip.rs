//! `cutover`, `rollback`, `commit`: a flip, step by step, with its drain, its races and its release.

#[allow(unused_imports)]
use super::*;

use std::sync::atomic::{AtomicBool, Ordering};

pub(super) async fn flip<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    action: Action,
) -> Result<Report, StoreError> {
    if req.force && req.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            "--force needs --reason: say why the guards may be overridden (it is recorded)",
        ));
    }
    let mut st = load(ctx, req).await?;
    if let Some(problem) = st.migration.settings.settle_problem() {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            format!("{problem}; the migration's settings are fixed at start: start a new one"),
        ));
    }
    let mut abandoned = String::new();
    if let Some(f) = st.flip.clone() {
        if !f.abandoned(now_ms()) {
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
            st = release_flip(ctx, req, st, &f, &abandoned_words(&f)).await?;
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
            return not_done(ctx, req, &st, action.target(), Outcome::NotAllowed, why).await;
        }
        Decision::Go(t) => t,
    };
    // A flip that moves producers is what people look for afterwards: it says why.
    if t.switches_routing
        && !req.dry_run
        && req.reason.as_deref().is_none_or(|r| r.trim().is_empty())
    {
        return Ok(Report::new(
            req,
            Outcome::Failed,
            format!(
                "{action} moves producers, so it needs --reason: say why (a ticket, an incident), \
                 e.g. `fanoutctl {action} --migration {} --reason \"INC-123: errors on the new \
                 side\"`; it is recorded. Nothing was changed",
                st.migration.name
            ),
        ));
    }
    // The two-person rule: a request, then a different person's approval. Both need to know
    // who is calling: a caller that cannot say (the controller Lambda invoked directly, where
    // every call has the function's identity) is sent to a path that can.
    if st.migration.settings.two_person && !ctx.caller_known {
        let msg = format!(
            "{action} not done: migration {} needs two people (a request and an approval), and \
             this path cannot tell who is calling (a direct invoke of the controller Lambda has \
             the function's identity). Run `fanoutctl {action} --migration {} --reason \
             \"...\"` with your own credentials, or call the controller's function URL (IAM \
             auth) with the same JSON",
            st.migration.name, st.migration.name
        );
        return not_done(ctx, req, &st, t.to, Outcome::NotAllowed, msg).await;
    }
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
        r.consumers = consumers::planned(&st, t.from, t.to);
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
    if st.migration.settings.two_person {
        match &st.request {
            Some(r) if r.action == action && person(&r.requested_by) != person(&ctx.actor) => {}
            Some(r) if r.action == action => {
                let msg = format!(
                    "you ({}) requested this {action} already (as {}); a different person must \
                     approve it by running the same command",
                    person(&ctx.actor),
                    r.requested_by
                );
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
                let msg = format!("{action} requested; a different person must approve it by running `fanoutctl {action} --migration {}`", st.migration.name);
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
        alive_ms: Some(started),
    });
    begun.updated_at_ms = started;
    begun.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &begun).await? == Write::Lost {
        return lost(ctx, req, &st, t.to, &guards).await;
    }
    // From here on the flip holds producers: its sign of life is kept fresh while it works,
    // so that a flip whose process died is released quickly (by the next command).
    let finishing = AtomicBool::new(false);
    // Boxed: the steps are a large future, and a caller may run many flips at once.
    let steps = Box::pin(async {
        let reason = req
            .reason
            .clone()
            .unwrap_or_else(|| action.as_str().to_owned());
        let from_side = st.state.producers();
        let mut detail = approval;
        if t.switches_routing {
            ctx.control
                .publish_routing(
                    &st.migration,
                    &document(&begun, from_side, StreamMode::Hold, &ctx.actor, &reason),
                )
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
                req.force,
            )
            .await?;
            match drained {
                Ok((waited, skipped)) => {
                    detail.push_str(&format!("drained in {} ms; ", waited.as_millis()));
                    detail.push_str(&skipped_words(&skipped, point));
                }
                Err(behind) => {
                    // Release producers where they were; the state does not change.
                    finishing.store(true, Ordering::SeqCst);
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
                    ctx.control
                        .publish_routing(
                            &st.migration,
                            &document(
                                &released,
                                from_side,
                                StreamMode::Active,
                                &ctx.actor,
                                "drain timed out; released without switching",
                            ),
                        )
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
        finishing.store(true, Ordering::SeqCst);
        if ctx.control.write_state(Some(begun.version), &done).await? == Write::Lost {
            return lost(ctx, req, &begun, t.to, &guards).await;
        }
        ctx.control
            .publish_routing(
                &st.migration,
                &document(
                    &done,
                    t.to.producers(),
                    StreamMode::Active,
                    &ctx.actor,
                    &reason,
                ),
            )
            .await?;
        // Lambda consumers follow producers (and those of the old streams move at the commit).
        detail.push_str(&consumers::switch(ctx, &done, t.to).await);
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
    });
    tokio::select! {
        r = steps => r,
        e = keep_alive(ctx, &begun, &finishing) => Err(e),
    }
}

/// A flip that does not go ahead (`outcome`, towards `to`): recorded, unless a dry run.
async fn not_done<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: &StoredState,
    to: State,
    outcome: Outcome,
    msg: String,
) -> Result<Report, StoreError> {
    if req.dry_run {
        return Ok(Report::new(req, outcome, msg));
    }
    let e = entry(ctx, req, st, Some(to), outcome, &[], msg.clone());
    finish(ctx, req, e, msg).await
}

/// Who wrote the state item as it is now, for a person: `<identity> (version 8, state cutover)`.
pub(super) fn who_wrote(now: Option<&StoredState>) -> String {
    now.map(|n| {
        format!(
            "{} (version {}, state {})",
            n.updated_by, n.version, n.state
        )
    })
    .unwrap_or_else(|| "someone".to_owned())
}

/// Someone else changed the state first: record it and say who.
pub(super) async fn lost<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: &StoredState,
    to: State,
    guards: &[GuardResult],
) -> Result<Report, StoreError> {
    let who = who_wrote(ctx.control.load(&st.migration.name).await?.as_ref());
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
/// still behind when `timeout` passed. With `skip_stuck` (a forced flip), a shard with no
/// replicator running (records waiting, no recent heartbeat) is not waited for: it is
/// returned, to be reported.
pub(super) async fn drain<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    direction: Direction,
    point: i64,
    timeout: Duration,
    skip_stuck: bool,
) -> Result<Result<(Duration, Vec<ShardLag>), String>, StoreError> {
    let started = tokio::time::Instant::now();
    let mut skipped: Vec<ShardLag> = Vec::new();
    loop {
        let now = now_ms();
        let mut behind = Vec::new();
        for lag in lags(ctx, st, direction, now).await? {
            if lag.first_pending_arrival_ms.is_none_or(|a| a >= point) {
                continue;
            }
            if skip_stuck {
                let known = |s: &ShardLag| s.route == lag.route && s.shard_id == lag.shard_id;
                if skipped.iter().any(known) {
                    continue;
                }
                if lag.stuck(HEARTBEAT_STALE_MS) {
                    skipped.push(lag);
                    continue;
                }
            }
            behind.push(format!("{} {} {} ms", lag.route, lag.shard_id, lag.lag_ms));
        }
        if behind.is_empty() {
            return Ok(Ok((started.elapsed(), skipped)));
        }
        if started.elapsed() >= timeout {
            return Ok(Err(format!("still behind: {}", behind.join(", "))));
        }
        tokio::time::sleep(ctx.poll).await;
    }
}

/// What a forced flip did not wait for, and how to make up for it.
fn skipped_words(skipped: &[ShardLag], point: i64) -> String {
    let Some(first) = skipped
        .iter()
        .filter_map(|s| s.first_pending_arrival_ms)
        .min()
    else {
        return String::new();
    };
    let shards: Vec<String> = skipped
        .iter()
        .map(|s| {
            format!(
                "{} {} ({}, {} ms waiting)",
                s.route,
                s.shard_id,
                s.heartbeat_words(),
                s.lag_ms
            )
        })
        .collect();
    format!(
        "NOT DRAINED (forced; no replicator running): {}. Their records from {} to {} are in \
         their source streams and NOT in the other side: once the cause is fixed, replay them \
         with `fanoutctl backfill --from {} --until {}` and check with `fanoutctl verify --from \
         {} --until {}`; ",
        shards.join(", "),
        rfc3339_ms(first),
        rfc3339_ms(point),
        rfc3339_ms(first),
        rfc3339_ms(point),
        rfc3339_ms(first),
        rfc3339_ms(point)
    )
}

/// The person an identity stands for: an assumed role's session name (which the on-call
/// role's trust policy makes the IAM user's name, and IAM Identity Center sets to the user),
/// an IAM user's name, or the whole identity. One person through two sessions, or as a user
/// and through a role, is one person.
pub(super) fn person(identity: &str) -> &str {
    let resource = identity.splitn(6, ':').nth(5).unwrap_or(identity);
    if let Some(rest) = resource.strip_prefix("assumed-role/") {
        return rest.split_once('/').map_or(rest, |(_, session)| session);
    }
    if resource.starts_with("user/") {
        return resource.rsplit('/').next().unwrap_or(resource);
    }
    identity
}
