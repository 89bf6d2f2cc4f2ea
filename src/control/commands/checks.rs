//! The guards a flip meets: lag, streams, dead letters (and discarded batches), verification, capacity.

#[allow(unused_imports)]
use super::*;

/// What [`evaluate_guards`] found: each guard's verdict, and the facts some were drawn from.
pub(super) struct Evaluated {
    pub(super) guards: Vec<GuardResult>,
    pub(super) capacity: Vec<RouteCapacity>,
}

/// The guards an action needs. A rollback is what an engineer reaches for when something
/// looks wrong, so it is not held back by dead letters or a missing verification; it still
/// needs replication to be able to catch up and the streams to be usable. A cutover also
/// needs forward replication to keep up with the traffic producers bring (`capacity`).
pub(super) async fn evaluate_guards<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
    st: &StoredState,
    action: Action,
    t: &Transition,
) -> Result<Evaluated, StoreError> {
    let now = now_ms();
    let s = &st.migration.settings;
    // The lag that matters is the direction that must catch up.
    let lags = lags(ctx, st, t.drain.unwrap_or(Direction::Forward), now).await?;
    let mut out = vec![guards::lag(&lags, s.max_lag_ms, HEARTBEAT_STALE_MS)];
    let mut pairs = Vec::new();
    for stream in &st.migration.streams {
        pairs.push((
            ctx.control.stream_facts(&stream.new, false).await,
            ctx.control.stream_facts(&stream.old, true).await,
        ));
    }
    out.push(guards::streams(&pairs));
    // A rollback is the way out: a consumer's mapping does not hold it up (it is set as the
    // rolled-back state wants, whatever it is now).
    if action != Action::Rollback {
        out.push(consumers::guard(ctx, st).await);
        out.push(guards::dead_letters(&unacknowledged(ctx, st).await?));
        let mut latest = Vec::new();
        for stream in &st.migration.streams {
            let v = ctx
                .control
                .latest_verification(&stream.forward_route)
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

/// [`ControlStore::measure_capacity`], with the route's name (an `async fn`, not a
/// closure's `async` block, so the future stays `Send` for every lifetime).
pub(super) async fn measure_named<C: ControlStore>(
    control: &C,
    r: &crate::capacity::ConfiguredRoute,
    opts: &CapacityOptions,
    now: i64,
) -> (String, Result<RouteCapacity, String>) {
    (
        r.route.name.clone(),
        control.measure_capacity(r, opts, now).await,
    )
}

/// The `capacity` guard: each forward route, as the replicator runs it (FANOUT_ROUTES and the
/// limits, from this process's environment), against the newest 30 s of its streams. After
/// the cutover the new streams take what producers write now: before the first cutover that
/// is the old streams (the routes' targets, read with the writer role), so both are read and,
/// per key, the busier side counts.
pub(super) async fn capacity_guard<C: ControlStore>(
    ctx: &Context<C>,
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
        measuring.push(measure_named(&ctx.control, r, &opts, now));
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
pub(super) async fn unacknowledged<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
) -> Result<Vec<String>, StoreError> {
    let acked = ctx.control.acknowledged(&st.migration.name).await?;
    let mut out = Vec::new();
    for stream in &st.migration.streams {
        let keys = ctx
            .control
            .dead_letter_keys(&st.migration, &stream.forward_route)
            .await?;
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
        ctx.control
            .discarded_batch_keys(&st.migration)
            .await?
            .into_iter()
            .filter(|k| !acked.contains(k)),
    );
    Ok(out)
}
