//! `start`: a new migration, its routing document and its routes' modes.

#[allow(unused_imports)]
use super::*;

pub(super) async fn start<C: ControlStore>(
    ctx: &Context<C>,
    req: &Request,
) -> Result<Report, StoreError> {
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
    if let Some(problem) = settings.settle_problem() {
        return Ok(Report::new(req, Outcome::Failed, problem));
    }
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
        routing_key: crate::routing::key_for("routing/", &req.migration),
        bucket,
        dead_letter_prefix: req
            .dead_letter_prefix
            .clone()
            .unwrap_or_else(|| "dead-letters".to_owned()),
        consumers: Vec::new(),
    };
    if let Some(existing) = ctx.control.load(&req.migration).await? {
        // Consumers are registered after the start: not part of what `start` compares.
        let same = Migration {
            consumers: Vec::new(),
            ..existing.migration.clone()
        } == migration;
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
    if let Some(refusal) = routes_held_elsewhere(ctx, &migration).await? {
        return Ok(Report::new(req, Outcome::Failed, refusal));
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
    ctx.control
        .publish_routing(
            &st.migration,
            &document(
                &st,
                Side::Old,
                StreamMode::Active,
                &ctx.actor,
                req.reason.as_deref().unwrap_or("start"),
            ),
        )
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

/// A route of `m` whose replication mode another migration still controls (one not
/// committed): two live migrations must not steer one replicator. A committed migration's
/// routes are free: the new migration's modes replace its last ones.
async fn routes_held_elsewhere<C: ControlStore>(
    ctx: &Context<C>,
    m: &Migration,
) -> Result<Option<String>, StoreError> {
    // Collected first: an iterator of closures held across an await is not `Send` for every
    // lifetime (the controller Lambda's future must be).
    let mut routes: Vec<&String> = Vec::new();
    for s in &m.streams {
        routes.push(&s.forward_route);
        routes.extend(s.reverse_route.as_ref());
    }
    for route in routes {
        let Some(owner) = ctx.control.mode_owner(route).await? else {
            continue;
        };
        if owner == m.name {
            continue;
        }
        if let Some(other) = ctx.control.load(&owner).await? {
            if other.state != State::Committed {
                return Ok(Some(format!(
                    "route {route} is replicated under migration {owner}, which is {} (not \
                     committed): two migrations cannot steer one route. Commit or roll back \
                     and commit {owner} first, or give this migration other routes",
                    other.state
                )));
            }
        }
    }
    Ok(None)
}
