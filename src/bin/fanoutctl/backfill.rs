//! `fanoutctl backfill`: replicate one time window of the source into the target, then stop.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::aws::source::StartPosition;
use fanout::progress::{human_secs, Progress, ShardProgress as Bar};
use fanout::runner::Shared;

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
    let shared = Arc::new(Shared::default());
    let from_ms = match start {
        StartPosition::AtTimestamp(ms) => Some(ms),
        _ => None,
    };
    let done = Arc::new(AtomicBool::new(false));
    let render = tokio::spawn(render(
        shared.clone(),
        Progress::new(!args.reader.quiet),
        from_ms,
        until_ms,
        done.clone(),
    ));
    let plan = ReadPlan {
        start,
        until_ms: Some(until_ms),
        until_caught_up: true,
        namespace,
        invoke: None,
        shared: Some(shared),
    };
    let summary = read(&args.reader, plan).await;
    done.store(true, Ordering::Relaxed);
    let _ = render.await; // one last refresh, so every shard's final state is shown
    let summary = summary?;
    print_summary(&summary, args.reader.output);
    Ok(exit_code(&summary))
}

/// One bar (or plain line) per shard: records delivered, their rate, how much of the window
/// the shard has covered (by arrival time) and the ETA that coverage implies.
async fn render(
    shared: Arc<Shared>,
    progress: Progress,
    from_ms: Option<i64>,
    until_ms: i64,
    done: Arc<AtomicBool>,
) {
    let mut bars: HashMap<String, (Bar, Instant, Option<i64>, bool)> = HashMap::new();
    loop {
        let last = done.load(Ordering::Relaxed);
        for (id, s) in shared.snapshot() {
            let (bar, started, first, done) = bars
                .entry(id.clone())
                .or_insert_with(|| (progress.shard(&id, None), Instant::now(), None, false));
            if *done {
                continue;
            }
            bar.set_position(s.records_delivered);
            if first.is_none() {
                *first = from_ms.or(s.last_arrival_ms);
            }
            if let Some(why) = &s.stopped {
                bar.finish(&format!("STOPPED: {why}"));
                *done = true;
            } else if s.lease_lost {
                bar.finish("taken over by another runner");
                *done = true;
            } else if s.finished {
                bar.finish("window done");
                *done = true;
            } else if let (Some(start), Some(at)) = (*first, s.last_arrival_ms) {
                let span = (until_ms - start).max(1) as f64;
                let covered = ((at - start) as f64 / span).clamp(0.0, 1.0);
                let eta = if covered > 0.0 {
                    let secs = started.elapsed().as_secs_f64() * (1.0 - covered) / covered;
                    format!(", ETA {}", human_secs(secs))
                } else {
                    String::new()
                };
                bar.set_message(&format!("window {:.0}%{eta}", covered * 100.0));
            }
        }
        if last {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
