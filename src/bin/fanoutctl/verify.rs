//! `fanoutctl verify`: compare a source stream with its replica over a time window.

use std::process::ExitCode;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::load_sdk_config;
use fanout::aws::source::KinesisSource;
use fanout::aws::verifications;
use fanout::config::ReplicatorConfig;
use fanout::model::{Route, StreamArn};
use fanout::seq::SequenceNumber;
use fanout::verify::{self, DeadLetterIndex, VerifyOptions, Window};

use crate::Output;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Source stream ARN. Default: from FANOUT_ROUTES (when it has one route, or one route
    /// with the given --target).
    #[arg(long)]
    source: Option<String>,
    /// Target stream ARN. Default: from FANOUT_ROUTES, like --source.
    #[arg(long)]
    target: Option<String>,
    /// Start of the window: an RFC 3339 time (2026-11-22T03:00:00Z) or trim-horizon
    /// (everything the source still holds).
    #[arg(long)]
    from: String,
    /// End of the window (RFC 3339). Default: now. A window ending less than --grace ago
    /// waits until --grace has passed, so late copies are not reported missing.
    #[arg(long)]
    until: Option<String>,
    /// Longest replication lag to allow for: both streams are read from `from - grace` to
    /// `until + grace`. 30s, 5m, 1h, 500ms, or a number of seconds.
    #[arg(long, default_value = "30s")]
    grace: String,
    /// Split the partition keys into N passes (each re-reads both streams and keeps 1/N of
    /// the records in memory): for windows too large for one pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
    /// DynamoDB state table that receives the result.
    #[arg(long, env = "FANOUT_TABLE")]
    table: Option<String>,
    /// Do not store the result in the table.
    #[arg(long)]
    no_store: bool,
    /// Route name (keys the dead letters and the stored result). Default: the name in
    /// FANOUT_ROUTES, else <source name>--<target account>--<target name>.
    #[arg(long)]
    route: Option<String>,
    /// Role in the target account to assume for reading the target stream (Terraform's
    /// `reader_role_arn` output). Default: the caller's own credentials.
    #[arg(long, env = "FANOUT_READER_ROLE_ARN")]
    target_role_arn: Option<String>,
    /// External id for --target-role-arn.
    #[arg(long, requires = "target_role_arn")]
    target_external_id: Option<String>,
    /// Shards read at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    read_concurrency: u32,
    /// Example records listed per key and category.
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// Output: a summary for people (text) or the full report (json).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// No progress messages on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Parses `--from`: `None` is the trim horizon.
pub fn parse_from(text: &str) -> Result<Option<i64>, String> {
    match text {
        "trim-horizon" | "TRIM_HORIZON" => Ok(None),
        t => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.timestamp_millis()))
            .map_err(|_| {
                format!(
                    "--from {t:?}: expected trim-horizon or an RFC 3339 time like 2026-11-22T03:00:00Z"
                )
            }),
    }
}

/// The window from the arguments, checked against the clock.
pub fn window(from: &str, until: Option<&str>, grace: &str, now_ms: i64) -> Result<Window, String> {
    let from_ms = parse_from(from)?;
    let until_ms = match until {
        None => now_ms,
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_millis())
            .map_err(|_| {
                format!("--until {t:?}: expected an RFC 3339 time like 2026-11-22T04:00:00Z")
            })?,
    };
    let grace_ms = verify::parse_duration(grace)
        .map_err(|e| format!("--grace: {e}"))?
        .as_millis() as i64;
    if until_ms > now_ms + 1000 {
        return Err(format!(
            "--until {} is in the future; records that have not arrived cannot be verified",
            until.unwrap_or_default()
        ));
    }
    if from_ms.is_some_and(|f| f >= until_ms) {
        return Err(format!(
            "--from {from} is not before --until {}",
            until.unwrap_or("(now)")
        ));
    }
    Ok(Window {
        from_ms,
        until_ms,
        grace_ms,
    })
}

/// FANOUT_ROUTES only (verify needs no writer role, table or bucket to be set for this).
fn routes_from_env() -> Result<Option<Vec<Route>>, String> {
    if std::env::var("FANOUT_ROUTES").map_or(true, |v| v.trim().is_empty()) {
        return Ok(None);
    }
    let config = ReplicatorConfig::from_lookup(|name| match name {
        "FANOUT_ROUTES" => std::env::var(name).ok(),
        // Required by the replicator's parser, not used here: read separately below.
        "FANOUT_TABLE" | "FANOUT_DEAD_LETTER_BUCKET" => Some("unused".to_owned()),
        _ => None,
    })
    .map_err(|e| e.to_string())?;
    Ok(Some(config.routes))
}

/// Source, target and route name from the arguments and FANOUT_ROUTES.
pub fn resolve_route(
    source: Option<&str>,
    target: Option<&str>,
    route: Option<&str>,
    routes: Option<&[Route]>,
) -> Result<(StreamArn, StreamArn, String), String> {
    let source = source
        .map(|s| StreamArn::parse(s).map_err(|e| format!("--source: {e}")))
        .transpose()?;
    let target = target
        .map(|s| StreamArn::parse(s).map_err(|e| format!("--target: {e}")))
        .transpose()?;
    let candidates: Vec<&Route> = routes
        .unwrap_or_default()
        .iter()
        .filter(|r| source.as_ref().is_none_or(|s| &r.source == s))
        .filter(|r| target.as_ref().is_none_or(|t| &r.target == t))
        .collect();
    let (source, target, configured) = match (source, target) {
        (Some(s), Some(t)) => {
            let name = candidates.first().map(|r| r.name.clone());
            (s, t, name)
        }
        (s, t) => match candidates.as_slice() {
            [one] => (
                one.source.clone(),
                one.target.clone(),
                Some(one.name.clone()),
            ),
            [] if routes.is_none() => {
                return Err("give --source and --target, or set FANOUT_ROUTES".to_owned())
            }
            [] => {
                return Err(format!(
                    "no route in FANOUT_ROUTES matches{}{}; give --source and --target",
                    s.map(|s| format!(" source {s}")).unwrap_or_default(),
                    t.map(|t| format!(" target {t}")).unwrap_or_default()
                ))
            }
            many => {
                return Err(format!(
                    "FANOUT_ROUTES has {} matching routes; pick one with --source and --target",
                    many.len()
                ))
            }
        },
    };
    let name = route
        .map(str::to_owned)
        .or(configured)
        .unwrap_or_else(|| Route::default_name(&source, &target));
    Ok((source, target, name))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub async fn verify(args: VerifyArgs) -> Result<ExitCode, String> {
    let now = chrono::Utc::now().timestamp_millis();
    let window = window(&args.from, args.until.as_deref(), &args.grace, now)?;
    let routes = if args.source.is_some() && args.target.is_some() && args.route.is_some() {
        None
    } else {
        routes_from_env()?
    };
    let (source, target, route) = resolve_route(
        args.source.as_deref(),
        args.target.as_deref(),
        args.route.as_deref(),
        routes.as_deref(),
    )?;
    let table = args.table.as_deref().filter(|t| !t.trim().is_empty());
    if !args.no_store && table.is_none() {
        return Err(
            "no state table to store the result in: set FANOUT_TABLE or --table, or pass --no-store"
                .to_owned(),
        );
    }

    let sdk = load_sdk_config().await;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let dead = match env("FANOUT_DEAD_LETTER_BUCKET") {
        None => DeadLetterIndex::unchecked(),
        Some(bucket) => {
            let prefix = env("FANOUT_DEAD_LETTER_PREFIX")
                .unwrap_or_else(|| "dead-letters".to_owned())
                .trim_matches('/')
                .to_owned();
            let location = if prefix.is_empty() {
                format!("s3://{bucket}/{route}/")
            } else {
                format!("s3://{bucket}/{prefix}/{route}/")
            };
            let letters = S3DeadLetters::new(&sdk, &bucket, &prefix)
                .list(Some(&route))
                .await
                .map_err(|e| {
                    format!(
                        "cannot list the dead letters in {location}: {e}. The caller needs \
                         s3:ListBucket and s3:GetObject there; or unset FANOUT_DEAD_LETTER_BUCKET \
                         to verify without them (dead-lettered records then count as missing)."
                    )
                })?;
            DeadLetterIndex::new(
                location,
                letters.into_iter().filter_map(|(_, e)| {
                    SequenceNumber::parse(&e.sequence_number)
                        .ok()
                        .map(|s| (e.shard_id, s))
                }),
            )
        }
    };

    let source_reader = KinesisSource::new(&sdk);
    let target_reader = match &args.target_role_arn {
        Some(role) => KinesisSource::new(
            &verifications::assumed_role_config(&sdk, role, args.target_external_id.as_deref())
                .await,
        ),
        None => source_reader.clone(),
    };
    let options = VerifyOptions {
        source,
        target,
        route,
        window,
        partitions: args.partitions,
        read_concurrency: args.read_concurrency as usize,
        example_cap: args.examples,
        progress: !args.quiet,
    };
    let report = verify::run(&source_reader, &target_reader, &options, &dead)
        .await
        .map_err(|e| e.to_string())?;

    let mut stored: Result<Option<(String, String, String)>, String> = Ok(None);
    if let (false, Some(table)) = (args.no_store, table) {
        let actor = match verifications::caller_identity(&sdk).await {
            Ok(arn) => arn,
            Err(_) => std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()),
        };
        let record = report.to_record(&actor, &host());
        stored = verifications::store(&sdk, table, &record)
            .await
            .map(|sk| {
                Some((
                    table.to_owned(),
                    fanout::aws::table::verification_pk(&report.route),
                    sk,
                ))
            })
            .map_err(|e| {
                format!(
                    "the verification ran ({}) but its result could not be stored in table \
                     {table}: {e}. The caller needs dynamodb:PutItem on it; or re-run with \
                     --no-store.",
                    report.verdict.as_str()
                )
            });
    }

    match args.output {
        Output::Json => {
            let mut doc = serde_json::to_value(&report).map_err(|e| e.to_string())?;
            doc["stored"] = match &stored {
                Ok(Some((table, pk, sk))) => {
                    serde_json::json!({ "table": table, "pk": pk, "sk": sk })
                }
                _ => serde_json::Value::Null,
            };
            println!("{doc:#}");
        }
        Output::Text => {
            print!("{}", report.render_text(20));
            match &stored {
                Ok(Some((table, pk, sk))) => println!("Stored in {table}: pk={pk} sk={sk}."),
                Ok(None) => println!("Not stored (--no-store)."),
                Err(_) => {}
            }
        }
    }
    stored?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/orders";
    const DST: &str = "arn:aws:kinesis:us-east-1:222222222222:stream/orders-old";

    #[test]
    fn windows_parse_and_bad_ones_say_why() {
        let now = 1_800_003_600_000; // 2027-01-15T09:00:00Z
        let w = window("2027-01-15T08:00:00Z", None, "5m", now).unwrap();
        assert_eq!(w.from_ms, Some(1_800_000_000_000));
        assert_eq!(w.until_ms, now);
        assert_eq!(w.grace_ms, 300_000);
        let th = window("trim-horizon", Some("2027-01-15T08:00:00Z"), "90", now).unwrap();
        assert_eq!((th.from_ms, th.grace_ms), (None, 90_000));
        assert!(window("yesterday", None, "5m", now)
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(
            window("trim-horizon", Some("2099-01-01T00:00:00Z"), "5m", now)
                .unwrap_err()
                .contains("future")
        );
        assert!(window(
            "2027-01-15T08:00:00Z",
            Some("2027-01-15T07:00:00Z"),
            "5m",
            now
        )
        .unwrap_err()
        .contains("not before"));
        assert!(window("trim-horizon", None, "soon", now)
            .unwrap_err()
            .contains("--grace"));
    }

    #[test]
    fn routes_come_from_arguments_or_the_one_configured_route() {
        let route = Route {
            name: "orders-custom".into(),
            source: StreamArn::parse(SRC).unwrap(),
            target: StreamArn::parse(DST).unwrap(),
            writer_role: None,
            order: Default::default(),
        };
        let routes = [route.clone()];
        let (s, t, n) = resolve_route(None, None, None, Some(&routes)).unwrap();
        assert_eq!(
            (s.as_str(), t.as_str(), n.as_str()),
            (SRC, DST, "orders-custom")
        );
        let (_, _, n) = resolve_route(Some(SRC), Some(DST), None, None).unwrap();
        assert_eq!(n, "orders--222222222222--orders-old");
        let (_, _, n) = resolve_route(Some(SRC), Some(DST), None, Some(&routes)).unwrap();
        assert_eq!(n, "orders-custom");
        let (_, _, n) = resolve_route(Some(SRC), Some(DST), Some("x"), Some(&routes)).unwrap();
        assert_eq!(n, "x");
        assert!(resolve_route(None, None, None, None)
            .unwrap_err()
            .contains("--source and --target"));
        let two = [route.clone(), {
            let mut r = route.clone();
            r.name = "second".into();
            r.target = StreamArn::parse("arn:aws:kinesis:us-east-1:222222222222:stream/b").unwrap();
            r
        }];
        assert!(resolve_route(None, None, None, Some(&two))
            .unwrap_err()
            .contains("2 matching routes"));
        let (_, t, n) = resolve_route(None, Some(DST), None, Some(&two)).unwrap();
        assert_eq!((t.as_str(), n.as_str()), (DST, "orders-custom"));
        assert!(resolve_route(Some("orders"), Some(DST), None, None)
            .unwrap_err()
            .starts_with("--source"));
    }
}
