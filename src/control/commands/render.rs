//! Reports as people read them: status screens, history lines, guard tables.

#[allow(unused_imports)]
use super::*;

pub(super) fn history_line(e: &HistoryEntry) -> String {
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
            if s.state == crate::control::machine::State::Committed {
                out.push_str(&format!(
                    "COMMITTED: {}\n",
                    crate::control::machine::COMMITTED
                ));
            }
            if let Some(f) = &s.flip {
                out.push_str(&format!(
                    "FLIP IN PROGRESS: {} by {} since {} (producers held)\n",
                    f.action,
                    f.actor,
                    rfc3339(f.started_at_ms)
                ));
                if f.abandoned(now) {
                    out.push_str(
                        "  ABANDONED: no sign of life from its process (it died?). The next \
                         command releases it first; producers stay held until then.\n",
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
            for u in &s.unavailable {
                out.push_str(&format!("NOT READ: {u}\n"));
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
                    v.forward_mode
                        .map_or_else(|| "(mode not read)".to_owned(), |m| m.to_string()),
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
            for l in s.shards.iter().filter(|l| l.stuck(s.heartbeat_stale_ms)) {
                out.push_str(&format!(
                    "STUCK: {} {}: {}, records waiting {} ms: its replicator is not running \
                     (runbook: a shard is stuck)\n",
                    l.route,
                    l.shard_id,
                    l.heartbeat_words(),
                    l.lag_ms
                ));
            }
            match (
                s.unacknowledged_dead_letters,
                s.unacknowledged_discarded_batches,
            ) {
                (Some(letters), Some(discarded)) => {
                    out.push_str(&format!("\nunacknowledged dead letters: {letters}\n"));
                    if discarded > 0 {
                        out.push_str(&format!(
                            "DISCARDED BATCHES: {discarded} on-failure record(s) at {}: batches \
                             the event source mapping gave up on, NOT replicated. See what can \
                             be recovered with `fanoutctl redrive --dry-run`\n",
                            s.discarded_batches_at
                        ));
                    } else {
                        out.push_str("discarded batches (on-failure records): 0\n");
                    }
                }
                _ => out.push_str("\ndead letters and discarded batches: NOT READ (above)\n"),
            }
            match &s.consumers {
                Some(cs) if !cs.is_empty() => {
                    out.push_str("\nLambda consumers\n");
                    for v in cs {
                        let want = if v.wanted { "Enabled" } else { "Disabled" };
                        let state = match &v.mapping {
                            None => "MAPPING NOT FOUND".to_owned(),
                            Some(m) if m.state == want => m.state.clone(),
                            Some(m) => format!("{} (EXPECTED {want} in this state)", m.state),
                        };
                        out.push_str(&format!(
                            "  {:<16} mapping {}  {}  {}{}\n",
                            v.consumer.name,
                            v.consumer.mapping,
                            v.consumer.function,
                            state,
                            if v.consumer.old {
                                "  (old account)"
                            } else {
                                ""
                            }
                        ));
                        if let Some(mv) = &v.consumer.moves_to {
                            let line = match v.moved.as_deref() {
                                None => format!(
                                    "moves at the commit to {} ({})",
                                    mv.stream, mv.function
                                ),
                                Some([]) => format!(
                                    "NOT MOVED: no mapping of {} on {}; the commit's answer in \
                                     `fanoutctl history` has the command that creates it",
                                    mv.function, mv.stream
                                ),
                                Some(ms) => format!(
                                    "moved to {}: {}",
                                    mv.stream,
                                    ms.iter()
                                        .map(|m| format!(
                                            "mapping {} of {} {}",
                                            m.uuid, m.function_arn, m.state
                                        ))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            };
                            out.push_str(&format!("  {:<16} {line}\n", ""));
                        }
                    }
                }
                Some(_) => {}
                None => out.push_str("\nLambda consumers: NOT READ (above)\n"),
            }
            out.push_str("\nlast flips\n");
            if s.last_flips.is_empty() {
                out.push_str("  (none)\n");
            }
            for e in &s.last_flips {
                out.push_str(&format!("  {}\n", history_line(e)));
            }
            out.push_str(&format!("\nas of {}\n", rfc3339(now)));
            if !self.message.is_empty() {
                out.push_str(&self.message);
                out.push('\n');
            }
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
        for c in &self.consumers {
            out.push_str(&format!("  {c}\n"));
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
