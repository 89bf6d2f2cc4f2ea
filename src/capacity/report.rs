//! What the model concludes, in words: a shard's line, a route's verdict, the whole check and its report.

#[allow(unused_imports)]
use super::*;

impl ShardCapacity {
    pub fn mode(&self, mode: OrderMode) -> &ModeCapacity {
        let i = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        &self.modes[i]
    }

    /// The shard in one line: `hottest key "tenant-7" 190 rec/s; strict keeps up to 40 rec/s
    /// per key at 25 ms: NO (0.21×); runs (100 per request): yes, 5.1× [key "tenant-7": one
    /// target shard's records/s]; aggregated: yes, 5.2× [...]`: each mode's margin and, when
    /// under 10× and not the key's round trips, what limits it.
    pub fn line(&self, target: &TargetFacts) -> String {
        let Some(hot) = &self.hottest_key else {
            return format!("idle: no records in the {} s window", self.window_ms / 1000);
        };
        let verdict = |m: &ModeCapacity| {
            let mut s = if m.keeps_up {
                format!("yes, {}", fmt_margin(m.margin))
            } else {
                format!("NO ({})", fmt_margin(m.margin))
            };
            // What limits a mode matters when the margin is thin; the key's round trips are
            // already in the line.
            let thin = m.margin.is_some_and(|x| x < 10.0);
            if thin && m.bound != Bound::KeyRoundTrips && m.bound != Bound::Idle {
                s.push_str(&format!(" [{}]", m.limited_by));
            }
            s
        };
        let strict = self.mode(OrderMode::Strict);
        let runs = self.mode(OrderMode::Runs);
        let aggregated = self.mode(OrderMode::Aggregated);
        format!(
            "hottest key {:?} {} rec/s; strict keeps up to {} rec/s per key at {}: {}; runs ({} per request): {}; aggregated: {}",
            hot.key,
            fmt_rate(hot.records_per_sec),
            fmt_rate(strict.hottest_key_ceiling.unwrap_or(0.0)),
            fmt_ms(target.rtt_ms),
            verdict(strict),
            fmt_rate(runs.per_round_trip),
            verdict(runs),
            verdict(aggregated),
        )
    }
}

impl RouteAssessment {
    pub fn mode(&self, mode: OrderMode) -> &ModeCapacity {
        let i = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        &self.modes[i]
    }

    /// The verdict for the route's configured `order`, in one sentence that names the shard,
    /// the key, and the fix (or the other modes that would keep up).
    pub fn verdict(&self, route: &str, order: OrderMode, target: &TargetFacts) -> String {
        let m = self.mode(order);
        let shard = |m: &ModeCapacity| {
            m.shard_id
                .as_deref()
                .map(|s| format!(" on {s}"))
                .unwrap_or_default()
        };
        if m.margin.is_none() {
            return format!(
                "{route} ({order}): keeps up (idle: no records in the window, nothing to measure)"
            );
        }
        let hottest = self
            .shards
            .iter()
            .filter_map(|s| s.hottest_key.as_ref().map(|k| (s, k)))
            .max_by(|a, b| a.1.records_per_sec.total_cmp(&b.1.records_per_sec));
        let hot = hottest
            .map(|(s, k)| {
                format!(
                    "hottest key {:?} {} rec/s on {}; {order} moves up to {} rec/s per key at {}",
                    k.key,
                    fmt_rate(k.records_per_sec),
                    s.shard_id,
                    fmt_rate(s.mode(order).hottest_key_ceiling.unwrap_or(0.0)),
                    fmt_ms(target.rtt_ms)
                )
            })
            .unwrap_or_default();
        if m.keeps_up {
            return format!(
                "{route} ({order}): keeps up, {} margin ({hot})",
                fmt_margin(m.margin)
            );
        }
        let others: Vec<String> = MODES
            .iter()
            .filter(|o| **o != order && self.mode(**o).keeps_up)
            .map(|o| format!("{o} ({})", fmt_margin(self.mode(*o).margin)))
            .collect();
        let fix = match m.bound {
            Bound::KeyRoundTrips if !others.is_empty() => format!(
                "{} would keep up: set \"order\" for this route in FANOUT_ROUTES (and the \
                 Terraform route object); see the README's Order modes for what each promises \
                 consumers",
                others.join(" or ")
            ),
            Bound::KeyRoundTrips => "no order mode keeps up at this round trip: run the \
                 replicator closer to the target (same region), or spread the key's records \
                 over more keys"
                .to_owned(),
            Bound::KeyShardLimit => "one key needs more than a target shard takes, in every \
                 mode: producers must spread it over more partition keys"
                .to_owned(),
            Bound::TargetShards if !others.is_empty() => format!(
                "{} would keep up; otherwise add shards to the target stream (UpdateShardCount)",
                others.join(" or ")
            ),
            Bound::TargetShards => "add shards to the target stream (UpdateShardCount), or raise \
                 FANOUT_SHARD_*_PER_SEC if the target's limits are higher"
                .to_owned(),
            Bound::RequestsInFlight => "raise FANOUT_MAX_CONCURRENT_REQUESTS".to_owned(),
            Bound::Idle => String::new(),
        };
        format!(
            "{route} ({order}): CANNOT KEEP UP{}: {} needs {} {} and {order} moves {} ({}): {} \
             margin. {fix}",
            shard(m),
            m.subject,
            fmt_rate(m.needed),
            m.unit,
            fmt_rate(m.sustainable),
            m.limit,
            fmt_margin(m.margin)
        )
    }
}

/// A route's capacity check: what was read, the target's facts, each shard and mode, and
/// the verdict for the route's configured order mode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteCapacity {
    pub route: String,
    pub source: String,
    pub target: String,
    /// The route's configured order mode (the verdict's).
    pub order: &'static str,
    /// The window read: `[from_ms, from_ms + window_ms]`.
    pub from_ms: i64,
    pub window_ms: i64,
    /// What was read: `source (2 shards)`, `target (1 shard)`.
    pub sampled: Vec<String>,
    pub target_facts: TargetFacts,
    /// How the round trip was found: measured (median of N), or assumed.
    pub round_trip: String,
    pub limits: ModelLimits,
    pub assessment: RouteAssessment,
    /// The configured mode keeps up.
    pub keeps_up: bool,
    pub verdict: String,
    /// Anything the reader should know: an assumed order mode, a side that could not be read,
    /// a window cut short.
    pub notes: Vec<String>,
}

impl RouteCapacity {
    /// Runs the model over `samples` and states the verdict for `route`'s order mode.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: &Route,
        limits: &Limits,
        samples: &[ShardSample],
        from_ms: i64,
        window_ms: i64,
        target: TargetFacts,
        round_trip: String,
        sampled: Vec<String>,
        notes: Vec<String>,
    ) -> RouteCapacity {
        let model_limits = ModelLimits::from_limits(limits);
        let assessment = assess_route(samples, &target, &model_limits);
        let verdict = assessment.verdict(&route.name, route.order, &target);
        RouteCapacity {
            route: route.name.clone(),
            source: route.source.to_string(),
            target: route.target.to_string(),
            order: route.order.as_str(),
            from_ms,
            window_ms,
            sampled,
            target_facts: target,
            round_trip,
            limits: model_limits,
            keeps_up: assessment.mode(route.order).keeps_up,
            assessment,
            verdict,
            notes,
        }
    }

    /// The report for a person: the route, a table of its shards, one line per busy shard,
    /// the notes, and the verdict.
    pub fn render_text(&self) -> String {
        let t = &self.target_facts;
        let mut out = format!(
            "route {}   order {}\n  source {}\n  target {} ({} shard{}, round trip {}: {})\n  \
             read the newest {} s of: {}\n\n",
            self.route,
            self.order,
            self.source,
            self.target,
            t.shards,
            plural(t.shards),
            fmt_ms(t.rtt_ms),
            self.round_trip,
            self.window_ms / 1000,
            self.sampled.join(", ")
        );
        out.push_str(&format!(
            "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n",
            "shard",
            "rec/s",
            "bytes/s",
            "keys",
            "hottest key",
            "rec/s",
            "strict",
            "runs",
            "aggregated"
        ));
        let cell = |m: &ModeCapacity| match m.margin {
            None => "idle".to_owned(),
            Some(_) if m.keeps_up => format!("yes {}", fmt_margin(m.margin)),
            Some(_) => format!("NO {}", fmt_margin(m.margin)),
        };
        for s in &self.assessment.shards {
            let (key, rate) = match &s.hottest_key {
                Some(k) => (format!("{:?}", k.key), fmt_rate(k.records_per_sec)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            out.push_str(&format!(
                "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n",
                s.shard_id,
                fmt_rate(s.records_per_sec),
                fmt_bytes_rate(s.bytes_per_sec),
                s.keys,
                key,
                rate,
                cell(s.mode(OrderMode::Strict)),
                cell(s.mode(OrderMode::Runs)),
                cell(s.mode(OrderMode::Aggregated)),
            ));
        }
        let a = &self.assessment;
        out.push_str(&format!(
            "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n\n",
            "route",
            fmt_rate(a.records_per_sec),
            fmt_bytes_rate(a.bytes_per_sec),
            "",
            "",
            "",
            cell(a.mode(OrderMode::Strict)),
            cell(a.mode(OrderMode::Runs)),
            cell(a.mode(OrderMode::Aggregated)),
        ));
        for s in a.shards.iter().filter(|s| s.hottest_key.is_some()) {
            out.push_str(&format!("  {}: {}\n", s.shard_id, s.line(t)));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out.push_str(&format!("  {}\n", self.verdict));
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }
}
