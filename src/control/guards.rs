//! The guards checked before every flip, each a verdict from plain facts the controller
//! gathered (shard lag, dead letters, stream descriptions, the latest verification).

use serde::{Deserialize, Serialize};

use crate::capacity::RouteCapacity;
use crate::verify::VerificationRecord;

/// One guard's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardResult {
    /// `lag`, `dead_letters`, `streams`, `verification`, `capacity`.
    pub name: String,
    pub passed: bool,
    /// What the guard saw, and when it failed, what to do.
    pub detail: String,
}

impl GuardResult {
    fn new(name: &str, passed: bool, detail: String) -> Self {
        GuardResult {
            name: name.to_owned(),
            passed,
            detail,
        }
    }
}

/// How far one shard of a route is behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLag {
    pub route: String,
    pub shard_id: String,
    /// Age of the oldest record not yet replicated (0 when there is none).
    pub lag_ms: i64,
    /// Some record after the checkpoint is not replicated yet.
    pub pending: bool,
    /// Arrival time of the oldest record not yet replicated.
    pub first_pending_arrival_ms: Option<i64>,
    /// Age of the shard's last heartbeat, if it has one.
    pub heartbeat_age_ms: Option<i64>,
    /// The replication mode the last heartbeat met.
    pub heartbeat_mode: Option<String>,
    /// The checkpoint (last handled sequence number), if any.
    pub checkpoint: Option<String>,
}

impl ShardLag {
    /// `idle` (nothing to replicate), `held` / `stopped` (records wait because the route's
    /// mode says so), `replicating` (behind, but a heartbeat is recent), or `stuck` (behind
    /// with no recent heartbeat).
    pub fn condition(&self, stale_ms: i64) -> &'static str {
        let fresh = self.heartbeat_age_ms.is_some_and(|age| age <= stale_ms);
        match (self.pending, self.heartbeat_mode.as_deref(), fresh) {
            (false, _, _) => "idle",
            (true, Some("hold"), true) => "held",
            (true, Some("stopped"), true) => "stopped",
            (true, _, true) => "replicating",
            (true, _, false) => "stuck",
        }
    }
}

/// How long a shard with records waiting may go without a heartbeat before its replicator
/// counts as not running (`stuck`). A running replicator writes one at least every 5 s while
/// it has records to handle.
pub const HEARTBEAT_STALE_MS: i64 = 15_000;

impl ShardLag {
    /// Records wait and no replicator has reported on this shard within `stale_ms`.
    pub fn stuck(&self, stale_ms: i64) -> bool {
        self.condition(stale_ms) == "stuck"
    }

    /// `no heartbeat for 42 s` / `never had a heartbeat`.
    pub fn heartbeat_words(&self) -> String {
        match self.heartbeat_age_ms {
            Some(age) => format!("no heartbeat for {} s", age / 1000),
            None => "never had a heartbeat".to_owned(),
        }
    }
}

/// Every shard's lag is at most `max_lag_ms`, and every shard with records waiting has a
/// replicator that reported within `stale_ms`: a replicator that died a moment ago leaves a
/// small lag that would only grow while a flip waits for it.
pub fn lag(shards: &[ShardLag], max_lag_ms: i64, stale_ms: i64) -> GuardResult {
    let worst = shards.iter().max_by_key(|s| s.lag_ms);
    let over: Vec<String> = shards
        .iter()
        .filter_map(|s| {
            if s.stuck(stale_ms) {
                Some(format!(
                    "{} {} {} ({} ms waiting)",
                    s.route,
                    s.shard_id,
                    s.heartbeat_words(),
                    s.lag_ms
                ))
            } else if s.lag_ms > max_lag_ms {
                Some(format!("{} {} {} ms", s.route, s.shard_id, s.lag_ms))
            } else {
                None
            }
        })
        .collect();
    let detail = match (worst, over.is_empty()) {
        (None, _) => "no shards found".to_owned(),
        (Some(w), true) => format!(
            "{} shard(s), worst lag {} ms ({} {}), limit {max_lag_ms} ms",
            shards.len(),
            w.lag_ms,
            w.route,
            w.shard_id
        ),
        (Some(_), false) => format!(
            "{} of {} shard(s) over the {max_lag_ms} ms limit or with no replicator running \
             (no heartbeat within {} s): {}. See `fanoutctl status` (runbook: a shard is stuck)",
            over.len(),
            shards.len(),
            stale_ms / 1000,
            over.join(", ")
        ),
    };
    GuardResult::new("lag", !shards.is_empty() && over.is_empty(), detail)
}

/// No dead letter, and no batch the event source mapping discarded (an on-failure record
/// under `aws/lambda/`), is waiting for acknowledgement.
pub fn dead_letters(unacknowledged: &[String]) -> GuardResult {
    if unacknowledged.is_empty() {
        return GuardResult::new(
            "dead_letters",
            true,
            "none unacknowledged, no discarded batch".to_owned(),
        );
    }
    let (discarded, letters): (Vec<&String>, Vec<&String>) = unacknowledged
        .iter()
        .partition(|k| k.starts_with(crate::on_failure::PREFIX));
    let mut parts = Vec::new();
    if !letters.is_empty() {
        let shown: Vec<&str> = letters.iter().take(3).map(|k| k.as_str()).collect();
        parts.push(format!(
            "{} dead letter(s) unacknowledged (e.g. {})",
            letters.len(),
            shown.join(", ")
        ));
    }
    if !discarded.is_empty() {
        parts.push(format!(
            "{} batch(es) discarded by the event source mapping and NOT replicated (on-failure \
             records, e.g. {})",
            discarded.len(),
            discarded[0]
        ));
    }
    GuardResult::new(
        "dead_letters",
        false,
        format!(
            "{}. Look at them (`fanoutctl redrive --dry-run`), redrive them (`fanoutctl \
             redrive{}`) or acknowledge them (`fanoutctl dlq ack --all --reason ...`)",
            parts.join("; "),
            if discarded.is_empty() {
                ""
            } else {
                " --on-failure"
            }
        ),
    )
}

/// What DescribeStreamSummary says about a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFacts {
    pub arn: String,
    /// `ACTIVE`, `UPDATING`, `CREATING`, `DELETING`, or `MISSING`/an error code.
    pub status: String,
    pub max_record_kib: Option<i32>,
    /// `NONE` or `KMS`.
    pub encryption: String,
    pub retention_hours: i32,
    /// `ON_DEMAND` or `PROVISIONED`.
    pub capacity_mode: String,
}

/// Each (source, target) pair: both streams usable, and the target accepts what the source
/// holds: records as large, encryption at rest if the source has it, retention as long.
/// Partition keys need no check: the replicator writes each record with its own key.
pub fn streams(pairs: &[(StreamFacts, StreamFacts)]) -> GuardResult {
    let mut problems = Vec::new();
    for (source, target) in pairs {
        for s in [source, target] {
            if s.status != "ACTIVE" && s.status != "UPDATING" {
                problems.push(format!("{} is {}", s.arn, s.status));
            }
        }
        if source.status != "ACTIVE" && source.status != "UPDATING"
            || target.status != "ACTIVE" && target.status != "UPDATING"
        {
            continue;
        }
        let kib = |f: &StreamFacts| f.max_record_kib.unwrap_or(1024);
        if kib(target) < kib(source) {
            problems.push(format!(
                "{} accepts records up to {} KiB but {} allows {} KiB: raise the target's \
                 MaxRecordSizeInKiB",
                target.arn,
                kib(target),
                source.arn,
                kib(source)
            ));
        }
        if source.encryption != "NONE" && target.encryption == "NONE" {
            problems.push(format!(
                "{} is encrypted but {} is not: enable server-side encryption on the target",
                source.arn, target.arn
            ));
        }
        if target.retention_hours < source.retention_hours {
            problems.push(format!(
                "{} keeps records {} h, less than {} ({} h): raise the target's retention",
                target.arn, target.retention_hours, source.arn, source.retention_hours
            ));
        }
    }
    if problems.is_empty() {
        GuardResult::new(
            "streams",
            true,
            format!("{} stream pair(s) active and compatible", pairs.len()),
        )
    } else {
        GuardResult::new("streams", false, problems.join("; "))
    }
}

/// The verification proves the replica holds every source record of its window, in per-key
/// order, and is recent. Target records that match no source record do not count against
/// it: while producers write to the old streams (before the first cutover, after a
/// rollback) the old streams hold records the new ones never had.
pub fn replica_complete(r: &VerificationRecord, now_ms: i64, max_age_ms: i64) -> bool {
    r.totals.source_in_window > 0
        && r.totals.missing == 0
        && r.totals.out_of_order == 0
        && now_ms.saturating_sub(r.finished_at_ms) <= max_age_ms
}

/// Each route has a verification within `max_age_ms` that proves its replica complete.
pub fn verification(
    latest: &[(String, Option<VerificationRecord>)],
    now_ms: i64,
    max_age_ms: i64,
) -> GuardResult {
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    for (route, record) in latest {
        match record {
            None => problems.push(format!("{route}: never verified")),
            Some(r) if replica_complete(r, now_ms, max_age_ms) => ok.push(format!(
                "{route}: {} records, 0 missing, 0 out of order, {} s ago{}",
                r.totals.source_in_window,
                (now_ms - r.finished_at_ms) / 1000,
                if r.totals.extra > 0 {
                    format!(
                        " ({} target records not from the source: producers writing to the \
                         old stream directly)",
                        r.totals.extra
                    )
                } else {
                    String::new()
                }
            )),
            Some(r) => problems.push(format!(
                "{route}: latest verification {} s ago: {} records, {} missing, {} out of order",
                (now_ms - r.finished_at_ms) / 1000,
                r.totals.source_in_window,
                r.totals.missing,
                r.totals.out_of_order
            )),
        }
    }
    if problems.is_empty() {
        GuardResult::new("verification", true, ok.join("; "))
    } else {
        GuardResult::new(
            "verification",
            false,
            format!(
                "{} (need a pass newer than {} s: run `fanoutctl verify --from <time>`)",
                problems.join("; "),
                max_age_ms / 1000
            ),
        )
    }
}

/// Each route's configured order mode keeps up with its traffic ([`crate::capacity`]): the
/// newest window of the streams, the target's round trip and shards, the replicator's limits.
/// A route that could not be checked fails the guard: it fails closed, saying why.
pub fn capacity(routes: &[(String, Result<RouteCapacity, String>)]) -> GuardResult {
    let mut problems = Vec::new();
    let mut ok = Vec::new();
    for (route, result) in routes {
        match result {
            Ok(c) => {
                let mut line = c.verdict.clone();
                for n in &c.notes {
                    line.push_str(&format!(" [note: {n}]"));
                }
                if c.keeps_up {
                    ok.push(line);
                } else {
                    problems.push(line);
                }
            }
            Err(e) => problems.push(format!(
                "{route}: could not be checked, so the guard refuses: {e}"
            )),
        }
    }
    if routes.is_empty() {
        return GuardResult::new("capacity", false, "no routes to check".to_owned());
    }
    if problems.is_empty() {
        GuardResult::new("capacity", true, ok.join("; "))
    } else {
        GuardResult::new(
            "capacity",
            false,
            format!(
                "{}. See `fanoutctl capacity` for every shard and mode; or override with --force \
                 --reason \"...\" (recorded)",
                problems.join("; ")
            ),
        )
    }
}

/// An event source mapping as Lambda describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MappingFacts {
    pub uuid: String,
    pub function_arn: String,
    /// The stream it reads.
    pub stream: String,
    /// `Enabled`, `Disabled`, or on the way (`Creating`, `Enabling`, `Disabling`,
    /// `Updating`, `Deleting`).
    pub state: String,
    /// When it was last changed (epoch ms; Lambda gives whole seconds).
    pub last_modified_ms: Option<i64>,
}

impl MappingFacts {
    /// `Some(enabled)` once settled; `None` while Lambda is still changing it.
    pub fn enabled(&self) -> Option<bool> {
        match self.state.as_str() {
            "Enabled" => Some(true),
            "Disabled" => Some(false),
            _ => None,
        }
    }
}
/// A consumer with what Lambda said of its mapping (`Ok(None)`: not found), or why it could
/// not be read.
pub type ConsumerMapping<'a> = (
    &'a crate::control::record::Consumer,
    Result<Option<MappingFacts>, String>,
);

/// A moving consumer with the mappings its new function has on the new stream already, or
/// why they could not be listed.
pub type MoveTarget<'a> = (
    &'a crate::control::record::Consumer,
    Result<Vec<MappingFacts>, String>,
);

/// The `consumers` guard: every registered Lambda consumer's mapping exists, reads its
/// stream, and is settled in the state the migration's current state asks for; and no
/// consumer that moves at the commit finds its new function with a mapping on the new stream
/// already (the commit would then not create its own, which starts where the old one stops).
pub fn consumers(
    mappings: &[ConsumerMapping<'_>],
    moves: &[MoveTarget<'_>],
    state: super::machine::State,
) -> GuardResult {
    let mut problems = Vec::new();
    for (c, found) in moves {
        let Some(mv) = &c.moves_to else { continue };
        match found {
            Err(e) => problems.push(format!(
                "consumer {}: the mappings of {} on {} could not be listed: {e}",
                c.name, mv.function, mv.stream
            )),
            Ok(taken) if !taken.is_empty() => problems.push(format!(
                "consumer {}: {} has a mapping on {} already ({}), so the commit would not \
                 create the one that starts where the old mapping stops: delete it (`aws lambda \
                 delete-event-source-mapping --uuid …` in the new account)",
                c.name,
                mv.function,
                mv.stream,
                taken
                    .iter()
                    .map(|m| format!("{} {}", m.uuid, m.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Ok(_) => {}
        }
    }
    for (c, found) in mappings {
        let want = c.enabled_in(state);
        let word = |on: bool| if on { "Enabled" } else { "Disabled" };
        match found {
            Err(e) => problems.push(format!("consumer {}: mapping {} could not be read: {e}", c.name, c.mapping)),
            Ok(None) => problems.push(format!(
                "consumer {}: mapping {} does not exist: register the consumer's new mapping                  (fanoutctl consumers add) or remove it",
                c.name, c.mapping
            )),
            Ok(Some(m)) if m.stream != c.stream => problems.push(format!(
                "consumer {}: mapping {} reads {}, not {}",
                c.name, c.mapping, m.stream, c.stream
            )),
            Ok(Some(m)) => match m.enabled() {
                None => problems.push(format!(
                    "consumer {}: mapping {} is {}: wait until Lambda has finished changing it",
                    c.name, c.mapping, m.state
                )),
                Some(on) if on != want => problems.push(format!(
                    "consumer {}: mapping {} is {}, but {} in state {state}: someone changed it \
                     by hand; put it back with `aws lambda update-event-source-mapping --uuid {} \
                     --{}enabled` (in the {} account), or flip with --force",
                    c.name,
                    c.mapping,
                    m.state,
                    word(want),
                    c.mapping,
                    if want { "" } else { "no-" },
                    c.account()
                )),
                Some(_) => {}
            },
        }
    }
    let n = mappings.len();
    if problems.is_empty() {
        GuardResult::new(
            "consumers",
            true,
            if n == 0 {
                "no Lambda consumers registered".to_owned()
            } else {
                format!("{n} Lambda consumer mappings as state {state} wants them")
            },
        )
    } else {
        GuardResult::new("consumers", false, problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(lag_ms: i64) -> ShardLag {
        ShardLag {
            route: "r".into(),
            shard_id: format!("shardId-{lag_ms}"),
            lag_ms,
            pending: lag_ms > 0,
            first_pending_arrival_ms: None,
            heartbeat_age_ms: Some(1000),
            heartbeat_mode: Some("forward".into()),
            checkpoint: None,
        }
    }

    fn facts(arn: &str) -> StreamFacts {
        StreamFacts {
            arn: arn.into(),
            status: "ACTIVE".into(),
            max_record_kib: Some(1024),
            encryption: "NONE".into(),
            retention_hours: 24,
            capacity_mode: "PROVISIONED".into(),
        }
    }

    #[test]
    fn lag_passes_at_the_limit_and_fails_above_it_naming_the_shard() {
        assert!(lag(&[shard(0), shard(500)], 500, 15_000).passed);
        let r = lag(&[shard(0), shard(501)], 500, 15_000);
        assert!(!r.passed);
        assert!(r.detail.contains("shardId-501 501 ms"), "{}", r.detail);
        assert!(!lag(&[], 500, 15_000).passed, "no shards proves nothing");
    }

    #[test]
    fn a_shard_whose_replicator_stopped_reporting_fails_the_lag_guard_however_small_its_lag() {
        let mut dead = shard(300);
        dead.heartbeat_age_ms = Some(20_000);
        let r = lag(&[shard(0), dead.clone()], 60_000, 15_000);
        assert!(!r.passed, "{}", r.detail);
        assert!(
            r.detail.contains("shardId-300 no heartbeat for 20 s"),
            "{}",
            r.detail
        );
        // Idle shards need no heartbeat: nothing waits for a replicator.
        let mut idle = shard(0);
        idle.heartbeat_age_ms = None;
        assert!(lag(&[idle, shard(10)], 60_000, 15_000).passed);
        dead.heartbeat_age_ms = None;
        let r = lag(&[dead], 60_000, 15_000);
        assert!(r.detail.contains("never had a heartbeat"), "{}", r.detail);
    }

    #[test]
    fn idle_replicating_and_stuck_shards_are_told_apart() {
        let mut s = shard(0);
        assert_eq!(s.condition(30_000), "idle");
        s.pending = true;
        assert_eq!(s.condition(30_000), "replicating");
        s.heartbeat_mode = Some("hold".into());
        assert_eq!(s.condition(30_000), "held");
        s.heartbeat_mode = Some("stopped".into());
        assert_eq!(s.condition(30_000), "stopped");
        s.heartbeat_age_ms = Some(31_000);
        assert_eq!(s.condition(30_000), "stuck");
        s.heartbeat_age_ms = None;
        assert_eq!(s.condition(30_000), "stuck");
    }

    #[test]
    fn dead_letters_name_some_and_the_fix() {
        assert!(dead_letters(&[]).passed);
        let r = dead_letters(&["a".into(), "b".into()]);
        assert!(!r.passed && r.detail.contains("2 dead letter(s)") && r.detail.contains("dlq ack"));
        assert!(!r.detail.contains("discarded"), "{}", r.detail);
        let r = dead_letters(&["a".into(), "aws/lambda/u/shardId-0/x".into()]);
        assert!(!r.passed, "{}", r.detail);
        assert!(r.detail.contains("1 dead letter(s)"), "{}", r.detail);
        assert!(
            r.detail.contains("1 batch(es) discarded")
                && r.detail.contains("aws/lambda/u/shardId-0/x"),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("--on-failure"), "{}", r.detail);
    }

    #[test]
    fn stream_pairs_must_be_active_and_the_target_at_least_as_capable() {
        let (s, t) = (facts("src"), facts("dst"));
        assert!(streams(&[(s.clone(), t.clone())]).passed);
        type Change = Box<dyn Fn(&mut StreamFacts, &mut StreamFacts)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|_, t| t.status = "CREATING".into()),
                "dst is CREATING",
            ),
            (
                Box::new(|_, t| t.status = "ResourceNotFoundException".into()),
                "dst is ResourceNotFound",
            ),
            (
                Box::new(|s, _| s.max_record_kib = Some(10240)),
                "MaxRecordSizeInKiB",
            ),
            (
                Box::new(|s, _| s.encryption = "KMS".into()),
                "enable server-side encryption",
            ),
            (
                Box::new(|s, _| s.retention_hours = 168),
                "raise the target's retention",
            ),
        ];
        for (change, expect) in cases {
            let (mut s, mut t) = (s.clone(), t.clone());
            change(&mut s, &mut t);
            let r = streams(&[(s, t)]);
            assert!(
                !r.passed && r.detail.contains(expect),
                "{expect}: {}",
                r.detail
            );
        }
    }

    fn route_capacity(rate: u64) -> crate::capacity::RouteCapacity {
        use crate::capacity::{RouteCapacity, SampledRecord, ShardSample, TargetFacts};
        use crate::model::{OrderMode, Route, StreamArn};
        let route = Route {
            name: "orders".into(),
            source: StreamArn::parse("arn:aws:kinesis:us-east-1:123456789012:stream/a").unwrap(),
            target: StreamArn::parse("arn:aws:kinesis:us-east-1:222222222222:stream/b").unwrap(),
            writer_role: None,
            order: OrderMode::Strict,
        };
        let records = (0..rate * 30)
            .map(|i| SampledRecord {
                key: "hot".into(),
                bytes: 100,
                arrival_ms: (i * 1000 / rate) as i64,
            })
            .collect();
        RouteCapacity::new(
            &route,
            &crate::config::Limits::default(),
            &[ShardSample {
                shard_id: "shardId-000000000000".into(),
                window_ms: 30_000,
                records,
            }],
            0,
            30_000,
            TargetFacts {
                rtt_ms: 25.0,
                shards: 1,
                max_record_bytes: 1 << 20,
            },
            "assumed".into(),
            vec![],
            vec!["checked as strict".into()],
        )
    }

    #[test]
    fn capacity_refuses_a_route_that_cannot_keep_up_or_could_not_be_checked() {
        let ok = capacity(&[("orders".into(), Ok(route_capacity(30)))]);
        assert!(ok.passed, "{}", ok.detail);
        assert!(
            ok.detail
                .starts_with("orders (strict): keeps up, 1.3× margin")
                && ok.detail.ends_with("[note: checked as strict]"),
            "{}",
            ok.detail
        );
        let slow = capacity(&[
            ("orders".into(), Ok(route_capacity(30))),
            ("hot".into(), Ok(route_capacity(190))),
        ]);
        assert!(!slow.passed);
        assert!(
            slow.detail
                .starts_with("orders (strict): CANNOT KEEP UP on shardId-000000000000")
                && slow.detail.contains("--force --reason"),
            "{}",
            slow.detail
        );
        let unknown = capacity(&[("orders".into(), Err("cannot read the source".into()))]);
        assert!(!unknown.passed);
        assert!(
            unknown.detail.starts_with(
                "orders: could not be checked, so the guard refuses: cannot read the source"
            ),
            "{}",
            unknown.detail
        );
        assert!(!capacity(&[]).passed, "no routes proves nothing");
    }
}
