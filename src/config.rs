//! Configuration: every limit and setting in one place, read from environment variables
//! and validated at start-up with an error that names the variable and the fix.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{OrderMode, Route, StreamArn, WriterRole};

/// Limits of the write path. Kinesis's own limits are the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most entries in one PutRecords request (Kinesis: 500).
    pub max_request_entries: usize,
    /// Most bytes (data + partition keys) in one PutRecords request (Kinesis: 5 MiB).
    pub max_request_bytes: usize,
    /// Per-record limit used when the target stream does not report one (Kinesis: 1 MiB).
    pub default_max_record_bytes: usize,
    /// Overrides the target stream's reported per-record limit when set.
    pub max_record_bytes_override: Option<usize>,
    /// PutRecords requests in flight at once for one shard batch (different keys only).
    pub max_concurrent_requests: usize,
    /// First backoff step; the n-th retry sleeps a random time in [0, base·2ⁿ] (full jitter).
    pub backoff_base: Duration,
    /// Cap of one backoff sleep.
    pub backoff_max: Duration,
    /// Time kept free before the invocation deadline to write the checkpoint and answer.
    pub deadline_margin: Duration,
    /// Longest one PutRecords request may take before it is treated as ambiguous.
    pub request_timeout: Duration,
    /// A target shard's write limit in records per second (Kinesis: 1,000). Pacing keeps
    /// each target shard under it; emulators never throttle, so benchmarks set what they enforce.
    pub shard_records_per_sec: u32,
    /// A target shard's write limit in bytes (data + partition key) per second (Kinesis: 1 MiB).
    pub shard_bytes_per_sec: u32,
    /// Percent of each shard limit left unused, for writers the replicator does not see.
    pub shard_headroom_pct: u32,
    /// `runs` mode: most records of one key in one PutRecords request.
    pub run_length: usize,
    /// How long the target's limits (DescribeStreamSummary) are kept before they are read
    /// again (5 minutes). Not read from the environment; tests shorten it.
    pub target_info_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_entries: 500,
            max_request_bytes: 5 * 1024 * 1024,
            default_max_record_bytes: 1024 * 1024,
            max_record_bytes_override: None,
            max_concurrent_requests: 4,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            deadline_margin: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            shard_records_per_sec: 1000,
            shard_bytes_per_sec: 1024 * 1024,
            shard_headroom_pct: 3,
            run_length: 100,
            target_info_ttl: Duration::from_secs(300),
        }
    }
}

/// Everything the replicator needs, from `FANOUT_*` environment variables.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicatorConfig {
    pub routes: Vec<Route>,
    /// DynamoDB table for checkpoints (and, later, control state and audit).
    pub table: String,
    /// S3 bucket for dead letters.
    pub dead_letter_bucket: String,
    pub dead_letter_prefix: String,
    pub limits: Limits,
    /// CloudWatch namespace of the embedded-metric-format lines.
    pub metrics_namespace: String,
    /// How long the replicator keeps a route's replication mode (forward, hold, stopped, set
    /// by the controller) before reading it again. `FANOUT_MODE_CACHE_MS`, default 5000.
    pub mode_cache: Duration,
    /// How often each (route, shard) records a position pair beside its checkpoint
    /// ([`crate::positions`]). `FANOUT_POSITION_EVERY_MS`, default 10000; 0: every batch.
    pub position_every: Duration,
}

/// How often a (route, shard) records a position pair beside its checkpoint: the pairs
/// `fanoutctl positions translate` reads, one small write per 10 s per shard.
pub const POSITION_EVERY: Duration = Duration::from_secs(10);

/// A configuration value is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn err(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// One element of `FANOUT_ROUTES`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    source: String,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    writer_role_arn: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    order: Option<String>,
}

pub const ROUTES_HELP: &str = "a JSON array such as \
[{\"source\":\"arn:aws:kinesis:us-east-1:123456789012:stream/orders\",\
\"target\":\"arn:aws:kinesis:us-east-1:222222222222:stream/orders\"}] \
(optional per route: \"targets\" (a list), \"name\", \"writer_role_arn\", \"external_id\", \
\"order\": \"strict\" (default), \"aggregated\" or \"runs\")";

impl ReplicatorConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// FANOUT_ROUTES as `get` has it, `None` when unset or blank.
    pub fn routes_var(get: impl Fn(&str) -> Option<String>) -> Option<String> {
        get("FANOUT_ROUTES").filter(|v| !v.trim().is_empty())
    }

    /// The routes and limits only, for a check that writes nothing (the capacity check):
    /// `routes` stands for FANOUT_ROUTES, every other variable is read through `get`, and
    /// FANOUT_TABLE and FANOUT_DEAD_LETTER_BUCKET are not required (their placeholders are
    /// never used).
    pub fn routes_and_limits(
        routes: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| match name {
            "FANOUT_ROUTES" => Some(routes.to_owned()),
            "FANOUT_TABLE" | "FANOUT_DEAD_LETTER_BUCKET" => {
                get(name).or_else(|| Some("unused".to_owned()))
            }
            _ => get(name),
        })
    }

    /// Reads configuration through `get` (a map in tests, the environment otherwise).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str, what: &str| {
            get(name).ok_or_else(|| err(name, format!("not set; set it to {what}")))
        };

        let default_role = match get("FANOUT_WRITER_ROLE_ARN") {
            Some(role_arn) => {
                check_role_arn("FANOUT_WRITER_ROLE_ARN", &role_arn)?;
                Some(WriterRole {
                    role_arn,
                    external_id: get("FANOUT_WRITER_EXTERNAL_ID"),
                })
            }
            None => {
                if get("FANOUT_WRITER_EXTERNAL_ID").is_some() {
                    return Err(err(
                        "FANOUT_WRITER_EXTERNAL_ID",
                        "set without FANOUT_WRITER_ROLE_ARN; set the role to assume, or unset the external id",
                    ));
                }
                None
            }
        };

        let routes_text = required("FANOUT_ROUTES", ROUTES_HELP)?;
        let routes = parse_routes(&routes_text, default_role.as_ref())?;

        let mut limits = Limits::default();
        let num = |name: &'static str| -> Result<Option<u64>, ConfigError> {
            get(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| err(name, format!("{v:?} is not a whole non-negative number")))
                })
                .transpose()
        };
        if let Some(v) = num("FANOUT_MAX_REQUEST_ENTRIES")? {
            if !(1..=500).contains(&v) {
                return Err(err("FANOUT_MAX_REQUEST_ENTRIES", format!("{v} is outside 1..=500 (Kinesis accepts at most 500 entries per PutRecords)")));
            }
            limits.max_request_entries = v as usize;
        }
        if let Some(v) = num("FANOUT_MAX_REQUEST_BYTES")? {
            if !(1024..=5 * 1024 * 1024).contains(&v) {
                return Err(err("FANOUT_MAX_REQUEST_BYTES", format!("{v} is outside 1024..=5242880 (Kinesis accepts at most 5 MiB per PutRecords)")));
            }
            limits.max_request_bytes = v as usize;
        }
        if let Some(v) = num("FANOUT_MAX_RECORD_BYTES")? {
            if !(1..=10 * 1024 * 1024).contains(&v) {
                return Err(err(
                    "FANOUT_MAX_RECORD_BYTES",
                    format!("{v} is outside 1..=10485760"),
                ));
            }
            limits.max_record_bytes_override = Some(v as usize);
        }
        if let Some(v) = num("FANOUT_MAX_CONCURRENT_REQUESTS")? {
            if !(1..=64).contains(&v) {
                return Err(err(
                    "FANOUT_MAX_CONCURRENT_REQUESTS",
                    format!("{v} is outside 1..=64"),
                ));
            }
            limits.max_concurrent_requests = v as usize;
        }
        let ms = |name: &'static str, target: &mut Duration| -> Result<(), ConfigError> {
            if let Some(v) = num(name)? {
                *target = Duration::from_millis(v);
            }
            Ok(())
        };
        ms("FANOUT_BACKOFF_BASE_MS", &mut limits.backoff_base)?;
        ms("FANOUT_BACKOFF_MAX_MS", &mut limits.backoff_max)?;
        ms("FANOUT_DEADLINE_MARGIN_MS", &mut limits.deadline_margin)?;
        ms("FANOUT_REQUEST_TIMEOUT_MS", &mut limits.request_timeout)?;
        if limits.request_timeout.is_zero() {
            return Err(err("FANOUT_REQUEST_TIMEOUT_MS", "must be above 0"));
        }
        if let Some(v) = num("FANOUT_SHARD_RECORDS_PER_SEC")? {
            if !(1..=1_000_000).contains(&v) {
                return Err(err(
                    "FANOUT_SHARD_RECORDS_PER_SEC",
                    format!("{v} is outside 1..=1000000 (a Kinesis shard takes 1000 records/s)"),
                ));
            }
            limits.shard_records_per_sec = v as u32;
        }
        if let Some(v) = num("FANOUT_SHARD_BYTES_PER_SEC")? {
            if !(1024..=1024 * 1024 * 1024).contains(&v) {
                return Err(err(
                    "FANOUT_SHARD_BYTES_PER_SEC",
                    format!(
                        "{v} is outside 1024..=1073741824 (a Kinesis shard takes 1048576 bytes/s)"
                    ),
                ));
            }
            limits.shard_bytes_per_sec = v as u32;
        }
        if let Some(v) = num("FANOUT_SHARD_HEADROOM_PCT")? {
            if v > 90 {
                return Err(err("FANOUT_SHARD_HEADROOM_PCT", format!("{v} is above 90: the replicator would use under a tenth of each target shard")));
            }
            limits.shard_headroom_pct = v as u32;
        }
        if let Some(v) = num("FANOUT_RUN_LENGTH")? {
            if !(1..=500).contains(&v) {
                return Err(err(
                    "FANOUT_RUN_LENGTH",
                    format!(
                        "{v} is outside 1..=500 (records of one key in one PutRecords request)"
                    ),
                ));
            }
            limits.run_length = v as usize;
        }
        let mut mode_cache = Duration::from_secs(5);
        ms("FANOUT_MODE_CACHE_MS", &mut mode_cache)?;
        if mode_cache > Duration::from_secs(60) {
            return Err(err(
                "FANOUT_MODE_CACHE_MS",
                "above 60000: a flip would wait that long for the replicator to notice; use 5000",
            ));
        }

        let mut position_every = POSITION_EVERY;
        ms("FANOUT_POSITION_EVERY_MS", &mut position_every)?;
        if position_every > Duration::from_secs(600) {
            return Err(err(
                "FANOUT_POSITION_EVERY_MS",
                "above 600000: translations would rest on positions up to 10 minutes apart; use 10000",
            ));
        }

        Ok(ReplicatorConfig {
            routes,
            table: required("FANOUT_TABLE", "the DynamoDB table that holds checkpoints")?,
            dead_letter_bucket: required(
                "FANOUT_DEAD_LETTER_BUCKET",
                "the S3 bucket that receives records that cannot be replicated",
            )?,
            dead_letter_prefix: get("FANOUT_DEAD_LETTER_PREFIX")
                .unwrap_or_else(|| "dead-letters".to_owned())
                .trim_matches('/')
                .to_owned(),
            limits,
            metrics_namespace: get("FANOUT_METRICS_NAMESPACE")
                .unwrap_or_else(|| "fanout".to_owned()),
            mode_cache,
            position_every,
        })
    }

    /// The routes whose source is `source`.
    pub fn routes_for<'a>(&'a self, source: &'a StreamArn) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| &r.source == source)
    }
}

fn check_role_arn(variable: &'static str, role_arn: &str) -> Result<(), ConfigError> {
    let ok = role_arn.starts_with("arn:")
        && role_arn.split(':').nth(2) == Some("iam")
        && role_arn
            .split(':')
            .nth(5)
            .is_some_and(|r| r.starts_with("role/"));
    if ok {
        Ok(())
    } else {
        Err(err(
            variable,
            format!(
                "{role_arn:?} is not an IAM role ARN; expected arn:aws:iam::<account>:role/<name>"
            ),
        ))
    }
}

fn parse_routes(text: &str, default_role: Option<&WriterRole>) -> Result<Vec<Route>, ConfigError> {
    const VAR: &str = "FANOUT_ROUTES";
    let specs: Vec<RouteSpec> = serde_json::from_str(text)
        .map_err(|e| err(VAR, format!("cannot be read ({e}); expected {ROUTES_HELP}")))?;
    if specs.is_empty() {
        return Err(err(
            VAR,
            format!("is an empty list; expected {ROUTES_HELP}"),
        ));
    }
    let mut routes = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let source = StreamArn::parse(&spec.source)
            .map_err(|e| err(VAR, format!("route {i}: source: {e}")))?;
        let mut targets = spec.targets;
        targets.extend(spec.target);
        if targets.is_empty() {
            return Err(err(VAR, format!("route {i} ({source}) has no \"target\"")));
        }
        if spec.name.is_some() && targets.len() > 1 {
            return Err(err(VAR, format!("route {i}: \"name\" cannot be shared by {} targets; split it into one route per target", targets.len())));
        }
        let order = match spec.order.as_deref() {
            None => OrderMode::Strict,
            Some(text) => OrderMode::parse(text).ok_or_else(|| {
                err(
                    VAR,
                    format!(
                        "route {i} ({source}): \"order\": {text:?} is not an order mode; use \"strict\" (per-key order, one record per key per round trip), \"aggregated\" (KPL aggregated records, for consumers that deaggregate) or \"runs\" (last-arrival order)"
                    ),
                )
            })?,
        };
        let writer_role = match spec.writer_role_arn {
            Some(role_arn) => {
                check_role_arn(VAR, &role_arn)?;
                Some(WriterRole {
                    role_arn,
                    external_id: spec.external_id,
                })
            }
            None => default_role.cloned(),
        };
        for target_text in targets {
            let target = StreamArn::parse(&target_text)
                .map_err(|e| err(VAR, format!("route {i}: target: {e}")))?;
            if target == source {
                return Err(err(
                    VAR,
                    format!("route {i} replicates {source} into itself"),
                ));
            }
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| Route::default_name(&source, &target));
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(err(
                    VAR,
                    format!(
                        "route {i}: name {name:?} may only use letters, digits, '-', '_' and '.'"
                    ),
                ));
            }
            if let Some(other) = names.insert(name.clone(), i) {
                return Err(err(VAR, format!("routes {other} and {i} are both named {name:?}; route names key checkpoints and must be unique")));
            }
            routes.push(Route {
                name,
                source: source.clone(),
                target,
                writer_role: writer_role.clone(),
                order,
            });
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
    const DST: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/orders-old";

    fn with(vars: &[(&str, &str)]) -> Result<ReplicatorConfig, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ReplicatorConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn base() -> Vec<(&'static str, String)> {
        vec![
            (
                "FANOUT_ROUTES",
                format!(r#"[{{"source":"{SRC}","target":"{DST}"}}]"#),
            ),
            ("FANOUT_TABLE", "fanout-state".into()),
            ("FANOUT_DEAD_LETTER_BUCKET", "dlq".into()),
        ]
    }

    fn with_base(extra: &[(&'static str, &str)]) -> Result<ReplicatorConfig, ConfigError> {
        let mut v: Vec<(&str, String)> = base();
        for (k, val) in extra {
            v.retain(|(bk, _)| bk != k);
            v.push((k, val.to_string()));
        }
        let refs: Vec<(&str, &str)> = v.iter().map(|(k, s)| (*k, s.as_str())).collect();
        with(&refs)
    }

    #[test]
    fn minimal_configuration_gets_kinesis_defaults() {
        let cfg = with_base(&[]).unwrap();
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.routes[0].name, "orders--222222222222--orders-old");
        assert_eq!(cfg.routes[0].writer_role, None);
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.dead_letter_prefix, "dead-letters");
        assert_eq!(cfg.position_every, Duration::from_secs(10));
    }

    #[test]
    fn position_pairs_every_so_often_within_ten_minutes() {
        let cfg = with_base(&[("FANOUT_POSITION_EVERY_MS", "0")]).unwrap();
        assert_eq!(cfg.position_every, Duration::ZERO);
        let err = with_base(&[("FANOUT_POSITION_EVERY_MS", "900000")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FANOUT_POSITION_EVERY_MS") && err.contains("above 600000"),
            "{err}"
        );
    }

    #[test]
    fn one_source_with_two_targets_gives_two_routes_sharing_the_default_role() {
        let routes = format!(
            r#"[{{"source":"{SRC}","targets":["{DST}","arn:aws:kinesis:eu-west-1:333333333333:stream/x"]}}]"#
        );
        let cfg = with_base(&[
            ("FANOUT_ROUTES", &routes),
            (
                "FANOUT_WRITER_ROLE_ARN",
                "arn:aws:iam::222222222222:role/fanout-writer",
            ),
            ("FANOUT_WRITER_EXTERNAL_ID", "xid"),
        ])
        .unwrap();
        assert_eq!(cfg.routes.len(), 2);
        assert_ne!(cfg.routes[0].name, cfg.routes[1].name);
        for r in &cfg.routes {
            let role = r.writer_role.as_ref().unwrap();
            assert_eq!(role.external_id.as_deref(), Some("xid"));
        }
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        type Case = (
            Vec<(&'static str, &'static str)>,
            &'static str,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (vec![("FANOUT_ROUTES", "")], "FANOUT_ROUTES", "not set"),
            (
                vec![("FANOUT_ROUTES", "orders")],
                "FANOUT_ROUTES",
                "cannot be read",
            ),
            (vec![("FANOUT_ROUTES", "[]")], "FANOUT_ROUTES", "empty list"),
            (
                vec![("FANOUT_ROUTES", r#"[{"source":"orders","target":"x"}]"#)],
                "FANOUT_ROUTES",
                "not a Kinesis stream ARN",
            ),
            (vec![("FANOUT_TABLE", "")], "FANOUT_TABLE", "not set"),
            (
                vec![("FANOUT_DEAD_LETTER_BUCKET", "")],
                "FANOUT_DEAD_LETTER_BUCKET",
                "not set",
            ),
            (
                vec![("FANOUT_MAX_REQUEST_ENTRIES", "501")],
                "FANOUT_MAX_REQUEST_ENTRIES",
                "at most 500",
            ),
            (
                vec![("FANOUT_MAX_REQUEST_BYTES", "lots")],
                "FANOUT_MAX_REQUEST_BYTES",
                "not a whole",
            ),
            (
                vec![("FANOUT_WRITER_ROLE_ARN", "fanout-writer")],
                "FANOUT_WRITER_ROLE_ARN",
                "not an IAM role ARN",
            ),
            (
                vec![("FANOUT_WRITER_EXTERNAL_ID", "x")],
                "FANOUT_WRITER_EXTERNAL_ID",
                "without FANOUT_WRITER_ROLE_ARN",
            ),
            (
                vec![(
                    "FANOUT_ROUTES",
                    r#"[{"source":"arn:aws:kinesis:us-east-1:123456789012:stream/a","target":"arn:aws:kinesis:us-east-1:222222222222:stream/b","order":"fifo"}]"#,
                )],
                "FANOUT_ROUTES",
                "\"fifo\" is not an order mode; use \"strict\"",
            ),
            (
                vec![("FANOUT_SHARD_RECORDS_PER_SEC", "0")],
                "FANOUT_SHARD_RECORDS_PER_SEC",
                "outside 1..=1000000",
            ),
            (
                vec![("FANOUT_SHARD_HEADROOM_PCT", "95")],
                "FANOUT_SHARD_HEADROOM_PCT",
                "above 90",
            ),
            (
                vec![("FANOUT_RUN_LENGTH", "501")],
                "FANOUT_RUN_LENGTH",
                "outside 1..=500",
            ),
            (
                vec![("FANOUT_REQUEST_TIMEOUT_MS", "0")],
                "FANOUT_REQUEST_TIMEOUT_MS",
                "above 0",
            ),
        ];
        for (vars, variable, words) in cases {
            let e = with_base(&vars).unwrap_err();
            assert_eq!(e.variable, variable, "{vars:?}");
            assert!(e.to_string().contains(words), "{e} should say {words:?}");
        }
    }

    #[test]
    fn each_route_has_its_own_order_mode_strict_by_default() {
        let routes = format!(
            r#"[{{"source":"{SRC}","target":"{DST}","order":"aggregated"}},
                {{"source":"{SRC}","target":"arn:aws:kinesis:us-east-1:222222222222:stream/b","order":"runs"}},
                {{"source":"{SRC}","target":"arn:aws:kinesis:us-east-1:222222222222:stream/c"}}]"#
        );
        let cfg = with_base(&[("FANOUT_ROUTES", &routes)]).unwrap();
        let modes: Vec<OrderMode> = cfg.routes.iter().map(|r| r.order).collect();
        assert_eq!(
            modes,
            [OrderMode::Aggregated, OrderMode::Runs, OrderMode::Strict]
        );
    }

    #[test]
    fn a_route_into_itself_and_duplicate_names_are_refused() {
        let same = format!(r#"[{{"source":"{SRC}","target":"{SRC}"}}]"#);
        assert!(with_base(&[("FANOUT_ROUTES", &same)])
            .unwrap_err()
            .problem
            .contains("into itself"));
        let dup = format!(
            r#"[{{"source":"{SRC}","target":"{DST}","name":"a"}},{{"source":"{SRC}","target":"arn:aws:kinesis:us-east-1:222222222222:stream/b","name":"a"}}]"#
        );
        assert!(with_base(&[("FANOUT_ROUTES", &dup)])
            .unwrap_err()
            .problem
            .contains("must be unique"));
    }
}
