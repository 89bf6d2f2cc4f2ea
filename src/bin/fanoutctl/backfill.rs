//! `fanoutctl backfill`: replicate one time window of the source into the target, then stop.

use std::process::ExitCode;

use fanout::aws::source::StartPosition;

use crate::parse_start;
use crate::replicate::{exit_code, print_summary, read, ReadPlan, ReaderArgs};

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    reader: ReaderArgs,
    /// Start of the window: trim-horizon, or an RFC 3339 time (e.g. 2026-11-22T03:00:00Z).
    #[arg(long)]
    from: String,
    /// End of the window (RFC 3339). Default: now. Records that arrived after it are left alone.
    #[arg(long)]
    until: Option<String>,
}

/// The namespace a window's leases and checkpoints live under, so that a backfill neither
/// skips records the live route already passed nor disturbs the live route's positions. The
/// same window gives the same namespace: running the command again resumes it.
pub fn window_namespace(from: &str, until_ms: i64) -> String {
    let until = chrono::DateTime::from_timestamp_millis(until_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!("@backfill:{from}..{until}")
}

pub async fn backfill(args: BackfillArgs) -> Result<ExitCode, String> {
    let start = parse_start(&args.from)?;
    if start == StartPosition::Latest {
        return Err("--from latest makes an empty window; give trim-horizon or a time".to_owned());
    }
    let until_ms = match &args.until {
        None => chrono::Utc::now().timestamp_millis(),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| d.timestamp_millis())
            .map_err(|_| {
                format!("--until {t:?}: expected an RFC 3339 time like 2026-11-22T04:00:00Z")
            })?,
    };
    if let StartPosition::AtTimestamp(from_ms) = start {
        if from_ms > until_ms {
            return Err(format!("--from {} is after --until; swap them", args.from));
        }
    }
    let from_label = match &start {
        StartPosition::AtTimestamp(ms) => chrono::DateTime::from_timestamp_millis(*ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        _ => "trim-horizon".to_owned(),
    };
    let namespace = window_namespace(&from_label, until_ms);
    let until_label = chrono::DateTime::from_timestamp_millis(until_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if args.reader.output == crate::Output::Text {
        eprintln!(
            "Backfilling records that arrived from {from_label} to {until_label} \
             (to resume after an interruption, run: fanoutctl backfill --from {from_label} --until {until_label})"
        );
    }
    let plan = ReadPlan {
        start,
        until_ms: Some(until_ms),
        until_caught_up: true,
        namespace,
        invoke: None,
    };
    let summary = read(&args.reader, plan).await?;
    print_summary(&summary, args.reader.output);
    Ok(exit_code(&summary))
}
