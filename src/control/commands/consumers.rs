//! Lambda consumers of the new streams: registered with a migration (`consumer_add`),
//! switched by each flip (on from the cutover, off at a rollback), checked by the
//! `consumers` guard, listed by `status`.

#[allow(unused_imports)]
use super::*;

use crate::control::record::Consumer;
use crate::ports::control::MappingFacts;

/// One Lambda consumer to register: its mapping on one of the migration's new streams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSpec {
    pub name: String,
    /// The function (name or ARN).
    pub function: String,
    /// The new stream it reads (name or ARN).
    pub stream: String,
    /// The mapping's UUID; found from the function and the stream when not given.
    pub mapping: Option<String>,
    /// On from the start, not only from the cutover.
    pub from_start: bool,
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
}

fn word(on: bool) -> &'static str {
    if on {
        "Enabled"
    } else {
        "Disabled"
    }
}

/// Finds the mapping of `spec` and checks it reads one of the migration's new streams.
async fn mapping_of<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    spec: &ConsumerSpec,
) -> Result<Result<MappingFacts, String>, StoreError> {
    let named = |given: &str, arn: &str| {
        given == arn || StreamArn::parse(arn).is_ok_and(|a| a.name() == given)
    };
    let Some(stream) = st
        .migration
        .streams
        .iter()
        .find(|l| named(&spec.stream, &l.new))
    else {
        let old = st
            .migration
            .streams
            .iter()
            .any(|l| named(&spec.stream, &l.old));
        let news: Vec<&str> = st
            .migration
            .streams
            .iter()
            .map(|l| l.new.as_str())
            .collect();
        return Ok(Err(if old {
            format!(
                "{} is an old stream: only consumers of the new streams (in the new account) are \
                 switched by the flips; give one of {}",
                spec.stream,
                news.join(", ")
            )
        } else {
            format!(
                "{} is not one of migration {}'s new streams: {}",
                spec.stream,
                st.migration.name,
                news.join(", ")
            )
        }));
    };
    let found = match &spec.mapping {
        Some(uuid) => ctx
            .control
            .mapping(uuid)
            .await?
            .into_iter()
            .collect::<Vec<_>>(),
        None => ctx.control.mappings(&spec.function, &stream.new).await?,
    };
    Ok(match found.as_slice() {
        [m] if m.stream == stream.new => Ok(m.clone()),
        [m] => Err(format!(
            "mapping {} reads {}, not {}",
            m.uuid, m.stream, stream.new
        )),
        [] => Err(format!(
            "no event source mapping of {} on {}{}: create it disabled (its own Terraform, with \
             `enabled` left to fanout), then register it",
            spec.function,
            stream.new,
            spec.mapping
                .as_ref()
                .map(|u| format!(" with UUID {u}"))
                .unwrap_or_default()
        )),
        many => Err(format!(
            "{} mappings of {} on {} ({}): give --mapping UUID",
            many.len(),
            spec.function,
            stream.new,
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
        let m = match mapping_of(ctx, &st, spec).await? {
            Ok(m) => m,
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
            "{} (mapping {}, {} on {}): {change}",
            consumer.name, consumer.mapping, consumer.function, consumer.stream
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
            .mapping(&c.mapping)
            .await
            .map_err(|e| e.to_string());
        seen.push((c, m));
    }
    guards::consumers(&seen, st.state)
}

/// What a flip from `from` to `to` does to each consumer, for the plan.
pub(super) fn planned(st: &StoredState, from: State, to: State) -> Vec<String> {
    st.migration
        .consumers
        .iter()
        .map(|c| {
            let (was, will) = (c.enabled_in(from), c.enabled_in(to));
            if was == will {
                format!(
                    "consumer {} (mapping {}): stays {}",
                    c.name,
                    c.mapping,
                    word(will)
                )
            } else {
                format!(
                    "consumer {} (mapping {}): {} → {}",
                    c.name,
                    c.mapping,
                    word(was),
                    word(will)
                )
            }
        })
        .collect()
}

/// Sets each consumer's mapping as state `to` wants, where it is not so already; returns
/// what was done, for the report and the history. A mapping that cannot be set does not undo
/// the flip: it is named with the command that sets it by hand.
pub(super) async fn switch<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
    to: State,
) -> String {
    let mut done = Vec::new();
    for c in &st.migration.consumers {
        let want = c.enabled_in(to);
        let now = ctx.control.mapping(&c.mapping).await;
        if matches!(&now, Ok(Some(m)) if m.enabled() == Some(want)) {
            continue;
        }
        done.push(match ctx.control.enable_mapping(&c.mapping, want).await {
            Ok(m) => format!(
                "consumer {} {} ({})",
                c.name,
                word(want).to_lowercase(),
                m.state
            ),
            Err(e) => format!(
                "consumer {} NOT {}: {e}; run `aws lambda update-event-source-mapping --uuid {} \
                 --{}enabled`",
                c.name,
                word(want).to_lowercase(),
                c.mapping,
                if want { "" } else { "no-" }
            ),
        });
    }
    if done.is_empty() {
        String::new()
    } else {
        format!("{}; ", done.join("; "))
    }
}

/// Every registered consumer with its mapping now, for `status`.
pub(super) async fn views<C: ControlStore>(
    ctx: &Context<C>,
    st: &StoredState,
) -> Result<Vec<ConsumerView>, StoreError> {
    let mut out = Vec::new();
    for c in &st.migration.consumers {
        out.push(ConsumerView {
            consumer: c.clone(),
            wanted: c.enabled_in(st.state),
            mapping: ctx.control.mapping(&c.mapping).await?,
        });
    }
    Ok(out)
}
