//! Releasing producers a flip holds: a flip's sign of life while it runs, an abandoned flip
//! (its process died) released by the next command, and a flip interrupted by a signal.

#[allow(unused_imports)]
use super::*;

use std::sync::atomic::{AtomicBool, Ordering};

use crate::control::record::FLIP_STALE_MS;

/// How often a flip refreshes its sign of life while it holds producers.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// Keeps `begun`'s sign of life fresh (same version, `alive_ms` now) every [`KEEP_ALIVE`]
/// until the flip's final write begins (`finishing`). Ends only if someone else changed the
/// state item meanwhile (released the flip as abandoned): the flip must then stop.
pub(super) async fn keep_alive<C: ControlStore>(
    ctx: &Context<C>,
    begun: &StoredState,
    finishing: &AtomicBool,
) -> StoreError {
    loop {
        tokio::time::sleep(KEEP_ALIVE).await;
        if finishing.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        let mut alive = begun.clone();
        if let Some(f) = alive.flip.as_mut() {
            f.alive_ms = Some(now_ms());
        }
        match ctx.control.write_state(Some(begun.version), &alive).await {
            Ok(Write::Done) => {}
            // Our own final write won: the flip is over, not taken.
            Ok(Write::Lost) if finishing.load(Ordering::SeqCst) => {
                return std::future::pending().await
            }
            Ok(Write::Lost) => {
                let now = ctx.control.load(&begun.migration.name).await;
                let who = who_wrote(now.ok().flatten().as_ref());
                return StoreError {
                    code: "FlipTakenOver".to_owned(),
                    message: format!(
                        "this flip stopped: {who} changed the migration while it ran (released \
                         it as abandoned?). Look at `fanoutctl status` and `fanoutctl history \
                         --last 5`"
                    ),
                };
            }
            // A missed beat is not fatal; the flip has FLIP_STALE_MS to get the next one in.
            Err(e) => tracing::warn!("could not refresh the flip's sign of life: {e}"),
        }
    }
}

pub(super) fn abandoned_words(f: &PendingFlip) -> String {
    format!(
        "released abandoned flip {} ({} by {}, started {}, last sign of life {}; no sign of \
         life for {} s counts as abandoned)",
        f.id,
        f.action,
        f.actor,
        rfc3339(f.started_at_ms),
        f.alive_ms
            .map(rfc3339)
            .unwrap_or_else(|| "never".to_owned()),
        FLIP_STALE_MS / 1000
    )
}

/// Releases the flip `f` of `st`: replication modes and routing put back as the state says,
/// the flip cleared, recorded as `release` with `detail`. Returns the state as it is now.
pub(super) async fn release_flip<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: StoredState,
    f: &PendingFlip,
    detail: &str,
) -> Result<StoredState, StoreError> {
    let mut next = st.clone();
    next.version += 1;
    next.flip = None;
    next.updated_at_ms = now_ms();
    next.updated_by = ctx.actor.clone();
    if ctx.control.write_state(Some(st.version), &next).await? == Write::Done {
        set_modes(ctx, &next).await?;
        ctx.control
            .publish_routing(
                &next.migration,
                &document(
                    &next,
                    next.state.producers(),
                    StreamMode::Active,
                    &ctx.actor,
                    &format!("flip {} released", f.id),
                ),
            )
            .await?;
        let mut e = after(
            entry(
                ctx,
                req,
                &st,
                Some(st.state),
                Outcome::Applied,
                &[],
                detail.to_owned(),
            ),
            next.version,
        );
        e.command = "release".to_owned();
        ctx.control.append_history(&req.migration, &e).await?;
    }
    load(ctx, req).await
}

/// Releases an abandoned flip, if `st` has one (any command that reads the state may).
pub(super) async fn release_if_abandoned<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: StoredState,
) -> Result<StoredState, StoreError> {
    match st.flip.clone() {
        Some(f) if f.abandoned(now_ms()) => {
            release_flip(ctx, req, st, &f, &abandoned_words(&f)).await
        }
        _ => Ok(st),
    }
}

/// After `req` (a flip started at `since_ms` or later by this caller) was interrupted by
/// `why` (a signal): releases its producers. Its flip, if still there, is released; if the
/// flip had already written its new state but not yet the routing, the routing is written.
/// Someone else's flip is left alone.
pub async fn release_interrupted<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    since_ms: i64,
    why: &str,
) -> Report {
    let result: Result<Report, StoreError> = async {
        let st = load(ctx, req).await?;
        let mut r = match st.flip.clone() {
            Some(f) if f.actor == ctx.actor && f.started_at_ms >= since_ms => {
                let now = release_flip(
                    ctx,
                    req,
                    st,
                    &f,
                    &format!(
                        "{} interrupted by {why}: producers released, state unchanged",
                        f.action
                    ),
                )
                .await?;
                let mut r = Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "{} interrupted by {why}: NOT done. Producers were released on the {} \
                         streams; the state is still {} (version {}). Recorded in the history.",
                        f.action,
                        now.state.producers().as_str(),
                        now.state,
                        now.version
                    ),
                );
                r.state = Some(now.state);
                r.version = Some(now.version);
                r
            }
            Some(f) => Report::new(
                req,
                Outcome::Failed,
                format!(
                    "interrupted by {why} before this command took the flip; {} by {} (flip {}) \
                     is in progress and was left alone",
                    f.action, f.actor, f.id
                ),
            ),
            None => {
                // Finished, or never begun: make sure producers are not left on hold.
                let held = ctx
                    .control
                    .fetch_routing(&st.migration)
                    .await?
                    .is_some_and(|d| d.streams.values().any(|s| s.mode == StreamMode::Hold));
                if held {
                    ctx.control
                        .publish_routing(
                            &st.migration,
                            &document(
                                &st,
                                st.state.producers(),
                                StreamMode::Active,
                                &ctx.actor,
                                &format!("released after {why}"),
                            ),
                        )
                        .await?;
                }
                let mut r = Report::new(
                    req,
                    Outcome::Failed,
                    format!(
                        "interrupted by {why}; the migration is {} (version {}), producers on the \
                         {} streams{}. See `fanoutctl status` and `fanoutctl history --last 5`",
                        st.state,
                        st.version,
                        st.state.producers().as_str(),
                        if held { " (released from hold)" } else { "" }
                    ),
                );
                r.state = Some(st.state);
                r.version = Some(st.version);
                r
            }
        };
        r.dry_run = false;
        Ok(r)
    }
    .await;
    result.unwrap_or_else(|e| {
        Report::new(
            req,
            Outcome::Failed,
            format!(
                "interrupted by {why}, and releasing the producers failed: {}. Producers may \
                 still be held: run `fanoutctl status`; the next command releases a flip with \
                 no sign of life for {} s",
                ctx.control.locate(e),
                FLIP_STALE_MS / 1000
            ),
        )
    })
}
