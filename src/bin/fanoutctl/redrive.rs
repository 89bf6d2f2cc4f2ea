//! `fanoutctl redrive`: replay dead letters into their target, in order.

use std::process::ExitCode;
use std::time::Duration;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::load_sdk_config;
use fanout::aws::source::KinesisSource;
use fanout::aws::target::KinesisTarget;
use fanout::config::ReplicatorConfig;
use fanout::model::Route;
use fanout::progress::Progress;
use fanout::redrive::{self, RedriveOptions, ShardOutcome, Summary};

use crate::Output;

#[derive(clap::Args, Debug)]
pub struct RedriveArgs {
    /// Only this route (its name from FANOUT_ROUTES, by default
    /// <source name>--<target account>--<target name>). Default: every route.
    #[arg(long)]
    route: Option<String>,
    /// Only this source shard (e.g. shardId-000000000003).
    #[arg(long)]
    shard: Option<String>,
    /// Show what would be replayed (per shard: count, first and last sequence number,
    /// reasons) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep each replayed dead letter and write `<key>.redriven` beside it (when, and where
    /// in the target it landed) instead of deleting it. Marked letters are skipped next time.
    #[arg(long)]
    keep: bool,
    /// Most dead letters per write batch.
    #[arg(long, default_value_t = redrive::DEFAULT_BATCH_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10000))]
    batch_size: usize,
    /// Time one batch may take, retries included, in seconds; a batch that writes nothing in
    /// three such attempts stops its shard.
    #[arg(long, default_value_t = 120)]
    batch_timeout: u64,
    /// Output format of the summary (stdout). Progress and logs go to stderr.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

pub async fn redrive(args: RedriveArgs) -> Result<ExitCode, String> {
    let config = ReplicatorConfig::from_env().map_err(|e| e.to_string())?;
    let routes: Vec<Route> = match &args.route {
        None => config.routes.clone(),
        Some(name) => {
            let found: Vec<Route> = config
                .routes
                .iter()
                .filter(|r| r.name == *name)
                .cloned()
                .collect();
            if found.is_empty() {
                let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
                return Err(format!(
                    "--route {name:?} is not in FANOUT_ROUTES; its routes are: {}",
                    names.join(", ")
                ));
            }
            found
        }
    };
    let sdk = load_sdk_config().await;
    let writer = KinesisTarget::new(&sdk, &routes, &config.limits).await;
    let archive = S3DeadLetters::new(&sdk, &config.dead_letter_bucket, &config.dead_letter_prefix);
    let lister = KinesisSource::new(&sdk);
    let options = RedriveOptions {
        shard: args.shard.clone(),
        dry_run: args.dry_run,
        keep: args.keep,
        batch_size: args.batch_size,
        attempt_timeout: Duration::from_secs(args.batch_timeout.max(1)),
        ..RedriveOptions::default()
    };
    let progress = Progress::new(!args.quiet && !args.dry_run);
    let summary = redrive::redrive_routes(
        &routes,
        &config.limits,
        &writer,
        &archive,
        &lister,
        &options,
        &progress,
    )
    .await;
    drop(progress);
    match args.output {
        Output::Json => {
            let doc = JsonSummary {
                exit_code: summary.exit_code(),
                summary: &summary,
            };
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
            println!("{text}");
        }
        Output::Text => print!("{}", render_text(&summary)),
    }
    Ok(ExitCode::from(summary.exit_code()))
}

/// The `--output json` document: the exit code, then the summary's fields in order.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    exit_code: u8,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// The text summary: a table per route, then every dead letter left for a person.
pub fn render_text(summary: &Summary) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if summary.dry_run {
        s.push_str("Dry run: nothing is written, removed or marked.\n");
    }
    for route in &summary.routes {
        let _ = writeln!(s, "Route {} -> {}", route.route, route.target);
        if let Some(e) = &route.error {
            let _ = writeln!(s, "  ERROR: {e}");
            continue;
        }
        if let Some(w) = &route.lineage_warning {
            let _ = writeln!(s, "  warning: {w}");
        }
        if route.shards.is_empty() {
            s.push_str("  no dead letters\n");
            continue;
        }
        if summary.dry_run {
            for sh in &route.shards {
                dry_run_line(&mut s, sh);
            }
            continue;
        }
        let _ = writeln!(
            s,
            "  {:<24} {:>8} {:>8} {:>8} {:>10} {:>11} {:>9}",
            "shard",
            "pending",
            "replayed",
            if summary.keep { "marked" } else { "removed" },
            "failing",
            "cannot",
            "untried"
        );
        for sh in &route.shards {
            let _ = writeln!(
                s,
                "  {:<24} {:>8} {:>8} {:>8} {:>10} {:>11} {:>9}",
                sh.shard_id,
                sh.pending,
                sh.replayed,
                if summary.keep { sh.marked } else { sh.removed },
                sh.still_failing.len(),
                sh.cannot_redrive.len(),
                sh.not_attempted,
            );
            if sh.already_redriven > 0 {
                let _ = writeln!(
                    s,
                    "    {} already redriven by an earlier --keep run (marked), not replayed again",
                    sh.already_redriven
                );
            }
            if sh.possible_duplicates > 0 {
                let _ = writeln!(
                    s,
                    "    {} record(s) may be in the target twice (a write timed out after landing)",
                    sh.possible_duplicates
                );
            }
            if let Some(why) = &sh.stopped {
                let _ = writeln!(s, "    STOPPED: {why}");
            }
        }
    }
    let not_cleaned: Vec<_> = summary
        .routes
        .iter()
        .flat_map(|r| &r.shards)
        .flat_map(|sh| &sh.not_cleaned_up)
        .collect();
    let left = summary.left_behind();
    if !summary.dry_run && !left.is_empty() {
        let _ = writeln!(s, "Left in place ({}):", left.len());
        for l in &left {
            let _ =
                writeln!(
                s,
                "  route {}, shard {}, sequence number {}\n    {}\n    {}: {}\n    What to do: {}",
                l.route, l.shard_id, l.sequence_number, l.location, l.error_code, l.reason, l.action
            );
        }
    }
    if !not_cleaned.is_empty() {
        let _ = writeln!(
            s,
            "Written to the target but not {} ({}):",
            if summary.keep { "marked" } else { "removed" },
            not_cleaned.len()
        );
        for l in not_cleaned {
            let _ = writeln!(
                s,
                "  sequence number {}: {}: {}\n    What to do: {}",
                l.sequence_number, l.location, l.reason, l.action
            );
        }
    }
    if !summary.dry_run {
        let untried: usize = summary
            .routes
            .iter()
            .flat_map(|r| &r.shards)
            .map(|sh| sh.not_attempted)
            .sum();
        let _ = write!(
            s,
            "Replayed {} dead letter(s); {} left for a person",
            summary.replayed(),
            left.len()
        );
        if untried > 0 {
            let _ = write!(
                s,
                "; {untried} not tried (a shard stopped: fix it and run again)"
            );
        }
        s.push_str(".\n");
    }
    s
}

fn dry_run_line(s: &mut String, sh: &ShardOutcome) {
    use std::fmt::Write;
    let reasons: Vec<String> = sh
        .reasons
        .iter()
        .map(|(code, n)| format!("{code} x{n}"))
        .collect();
    let _ = write!(s, "  {}: {} to replay", sh.shard_id, sh.pending);
    if let (Some(first), Some(last)) = (&sh.first_sequence_number, &sh.last_sequence_number) {
        let _ = write!(s, " (sequence numbers {first} .. {last})");
    }
    if sh.already_redriven > 0 {
        let _ = write!(s, ", {} already redriven (marked)", sh.already_redriven);
    }
    if !reasons.is_empty() {
        let _ = write!(s, "; reasons: {}", reasons.join(", "));
    }
    s.push('\n');
    for l in &sh.cannot_redrive {
        let _ = writeln!(
            s,
            "    cannot be redriven automatically: {} ({}: {})\n      What to do: {}",
            l.location, l.error_code, l.reason, l.action
        );
    }
}
