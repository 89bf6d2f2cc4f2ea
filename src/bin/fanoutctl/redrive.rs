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
    /// Also recover the batches Lambda's event source mapping discarded (its on-failure
    /// records under aws/lambda/ in the bucket): the records each one holds are stored as
    /// dead letters of the stream's routes, the on-failure record is deleted, and they are
    /// replayed with the rest. Without it they are only listed.
    #[arg(long)]
    on_failure: bool,
}

/// One on-failure record found in the bucket, and what became of it.
#[derive(serde::Serialize)]
struct DiscardedView {
    location: String,
    /// What the record says (absent if it could not be read).
    batch: Option<fanout::on_failure::DiscardedBatch>,
    routes: Vec<String>,
    /// What can be recovered, and how.
    recovery: String,
    /// Records stored as dead letters by this run (per route).
    imported: usize,
    error: Option<String>,
}

impl DiscardedView {
    /// An object (or listing) that could not be read.
    fn unread(location: String, recovery: String, error: String) -> Self {
        DiscardedView {
            location,
            batch: None,
            routes: Vec::new(),
            recovery,
            imported: 0,
            error: Some(error),
        }
    }
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
    let discarded = discarded_batches(&archive, &routes, &args).await;
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
                exit_code: exit_code(&summary, &discarded),
                summary: &summary,
                discarded_batches: &discarded,
            };
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
            println!("{text}");
        }
        Output::Text => {
            print!("{}", render_discarded(&discarded, args.on_failure));
            print!("{}", render_text(&summary));
        }
    }
    Ok(ExitCode::from(exit_code(&summary, &discarded)))
}

/// The summary's exit code, and 1 (something left for a person) while a discarded batch is
/// still in the bucket after a run that was not a dry run; 2 if one could not be read or
/// imported.
fn exit_code(summary: &Summary, discarded: &[DiscardedView]) -> u8 {
    let code = summary.exit_code();
    if discarded.iter().any(|d| d.error.is_some()) {
        return 2;
    }
    if code == 0 && !summary.dry_run && discarded.iter().any(|d| d.imported == 0) {
        return 1;
    }
    code
}

/// Lists the on-failure records in the bucket and, with `--on-failure` (not a dry run),
/// stores the records each one holds as dead letters of the stream's routes and deletes it.
async fn discarded_batches(
    archive: &S3DeadLetters,
    routes: &[Route],
    args: &RedriveArgs,
) -> Vec<DiscardedView> {
    use fanout::ports::DeadLetterStore;
    let keys = match archive.list_on_failure().await {
        Ok(keys) => keys,
        Err(e) => {
            return vec![DiscardedView::unread(
                archive.location(fanout::on_failure::PREFIX),
                String::new(),
                format!("the on-failure records could not be listed: {e}"),
            )]
        }
    };
    let mut out = Vec::new();
    for (key, _) in keys {
        let location = archive.location(&key);
        let batch = match archive.read_on_failure(&key).await {
            Ok(b) => b,
            Err(e) => {
                out.push(DiscardedView::unread(
                    location,
                    "read it by hand: it is not an on-failure record of a Kinesis event source \
                     mapping"
                        .to_owned(),
                    e.to_string(),
                ));
                continue;
            }
        };
        if args.shard.as_ref().is_some_and(|s| *s != batch.shard_id) {
            continue;
        }
        let matching = fanout::on_failure::routes_for(&batch, routes);
        if matching.is_empty() && args.route.is_some() {
            continue;
        }
        let mut view = DiscardedView {
            location,
            routes: matching.iter().map(|r| r.name.clone()).collect(),
            recovery: if matching.is_empty() {
                format!(
                    "no route in FANOUT_ROUTES reads {}: run redrive with the routes of that \
                     stream",
                    batch.stream_arn
                )
            } else {
                fanout::on_failure::recovery(&batch)
            },
            imported: 0,
            error: None,
            batch: None,
        };
        if args.on_failure && !args.dry_run && batch.records_held > 0 && !matching.is_empty() {
            let reason = fanout::on_failure::reason(&batch);
            let mut stored = 0;
            'routes: for route in &matching {
                for record in &batch.records {
                    // A record that could never be written keeps its own code, so redrive
                    // names it instead of trying it.
                    let (error_code, reason) =
                        match fanout::plan::permanent_defect(record, usize::MAX) {
                            Some((code, why)) => (code.to_owned(), why),
                            None => (fanout::on_failure::ERROR_CODE.to_owned(), reason.clone()),
                        };
                    let letter = fanout::model::DeadLetter {
                        route: &route.name,
                        source_arn: &batch.stream_arn,
                        target_arn: &route.target.to_string(),
                        shard_id: &batch.shard_id,
                        record,
                        reason,
                        error_code,
                        attempts: 0,
                    };
                    if let Err(e) = archive.store(&letter).await {
                        view.error = Some(format!(
                            "storing record {} as a dead letter of route {} failed ({e}); \
                             nothing was deleted, run again",
                            record.seq, route.name
                        ));
                        break 'routes;
                    }
                    stored += 1;
                }
            }
            if view.error.is_none() {
                match archive.delete(&key).await {
                    Ok(()) => view.imported = stored,
                    Err(e) => {
                        view.error = Some(format!(
                            "its {stored} record(s) are stored as dead letters, but the \
                             on-failure record could not be deleted ({e}); delete it by hand"
                        ))
                    }
                }
            }
        }
        view.batch = Some(batch);
        out.push(view);
    }
    out
}

/// The text section on discarded batches (nothing when there are none).
fn render_discarded(discarded: &[DiscardedView], on_failure: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if discarded.is_empty() {
        return s;
    }
    let _ = writeln!(
        s,
        "Batches Lambda's event source mapping DISCARDED (on-failure records; not replicated): {}",
        discarded.len()
    );
    for d in discarded {
        let _ = writeln!(s, "  {}", d.location);
        if let Some(b) = &d.batch {
            let _ = writeln!(
                s,
                "    stream {}, shard {}, sequence numbers {} .. {}, {} record(s), {}",
                b.stream_arn,
                b.shard_id,
                b.start_sequence_number,
                b.end_sequence_number,
                b.batch_size
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                b.condition.as_deref().unwrap_or("no condition given")
            );
        }
        if let Some(e) = &d.error {
            let _ = writeln!(s, "    ERROR: {e}");
        }
        if d.imported > 0 {
            let _ = writeln!(
                s,
                "    imported: {} record(s) stored as dead letters of {} and replayed below; the on-failure record is deleted",
                d.imported,
                d.routes.join(", ")
            );
        } else {
            let _ = writeln!(s, "    What can be recovered: {}", d.recovery);
        }
    }
    if !on_failure
        && discarded
            .iter()
            .any(|d| d.batch.as_ref().is_some_and(|b| b.records_held > 0))
    {
        s.push_str("  Run with --on-failure to replay the records they hold.\n");
    }
    s
}

/// The `--output json` document: the exit code, then the summary's fields in order, then the
/// discarded batches found in the bucket.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    exit_code: u8,
    #[serde(flatten)]
    summary: &'a Summary,
    discarded_batches: &'a [DiscardedView],
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
