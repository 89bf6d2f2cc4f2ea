//! `fanoutctl replicate` (and the reader set-up `backfill` shares): feed a source stream's
//! shards to the replicator, with leases so two runners never read one shard at once.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout::aws::leases::{DynamoLeases, Leases};
use fanout::aws::source::{KinesisSource, StartPosition};
use fanout::aws::{build_handler_in, load_sdk_config};
use fanout::config::ReplicatorConfig;
use fanout::handler::MetricsOutput;
use fanout::lease::MemoryLeases;
use fanout::model::StreamArn;
use fanout::runner::{self, HttpInvoker, InProcess, RunSummary, RunnerOptions, Shared};

use crate::{parse_start, Output};

/// Options every shard-reading command shares.
#[derive(clap::Args, Debug)]
pub struct ReaderArgs {
    /// Source stream ARN. Default: the source of the routes in FANOUT_ROUTES (there must be one).
    #[arg(long)]
    pub source: Option<String>,
    /// Most records per invocation (the event source mapping's BatchSize).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=10000))]
    pub batch_size: i32,
    /// Time each invocation gets, in seconds (the function timeout).
    #[arg(long, default_value_t = 60)]
    pub function_timeout: u64,
    /// Stop a shard (nothing is skipped) after this many failed attempts at one batch.
    /// Default: retry forever, like the event source mapping.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// DynamoDB table for leases and positions. Default: FANOUT_TABLE. Without one,
    /// positions live in memory only and a restart begins again at --from.
    #[arg(long)]
    pub table: Option<String>,
    /// Name the leases are kept under. Default: the names of the source's routes.
    #[arg(long)]
    pub lease_name: Option<String>,
    /// Seconds a lease lasts without renewal; a stopped runner's shards are taken over after it.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl: u64,
    /// Read with enhanced fan-out (SubscribeToShard) through this consumer, registered on the
    /// source stream if it does not exist. Default: GetRecords polling.
    #[arg(long, value_name = "CONSUMER_NAME")]
    pub fan_out_consumer: Option<String>,
    /// Output format of the final summary.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Write the EMF metric lines the Lambda writes (one per route and batch) to this file
    /// (appended), or to stdout with `-`. Not with `--invoke` (the function writes its own).
    #[arg(long, value_name = "FILE|-")]
    pub metrics: Option<String>,
    /// No live progress display.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    #[command(flatten)]
    reader: ReaderArgs,
    /// Where to start a shard that has no saved position: trim-horizon, latest, or an
    /// RFC 3339 time (e.g. 2026-11-22T03:00:00Z).
    #[arg(long, default_value = "trim-horizon")]
    from: String,
    /// Stop once every shard has been read to its current end.
    #[arg(long)]
    until_caught_up: bool,
    /// Invoke a function over HTTP (e.g. `cargo lambda watch` at http://127.0.0.1:9000)
    /// instead of running the handler in this process.
    #[arg(long, value_name = "URL")]
    invoke: Option<String>,
    /// Function name used with --invoke.
    #[arg(long, default_value = "replicator")]
    function_name: String,
}

/// What a reading command asks of [`read`].
pub struct ReadPlan {
    pub start: StartPosition,
    pub until_ms: Option<i64>,
    pub until_caught_up: bool,
    /// Kept apart from the live route: appended to lease and checkpoint names.
    pub namespace: String,
    /// Invoke over HTTP: (url, function name).
    pub invoke: Option<(String, String)>,
    /// Live figures for a caller that renders progress itself (the runner's own line is off).
    pub shared: Option<Arc<Shared>>,
}

pub async fn replicate(args: ReplicateArgs) -> Result<ExitCode, String> {
    let plan = ReadPlan {
        start: parse_start(&args.from)?,
        until_ms: None,
        until_caught_up: args.until_caught_up,
        namespace: String::new(),
        invoke: args.invoke.map(|u| (u, args.function_name)),
        shared: None,
    };
    let summary = read(&args.reader, plan).await?;
    print_summary(&summary, args.reader.output);
    Ok(exit_code(&summary))
}

pub fn exit_code(summary: &RunSummary) -> ExitCode {
    if summary.shards.values().any(|s| s.stopped.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Sets the stop flag on Ctrl-C or SIGTERM: in-flight batches finish, positions are saved,
/// leases released. A second signal exits at once.
pub fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        for round in 0..2 {
            match term.as_mut() {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = t.recv() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            if round == 0 {
                eprintln!("\nStopping: finishing the batches in flight, saving positions, releasing leases (again to abort)…");
                flag.store(true, Ordering::Relaxed);
            }
        }
        std::process::exit(130);
    });
    stop
}

/// Resolves the source, the leases and the invoker, then runs the shard reader.
pub async fn read(args: &ReaderArgs, plan: ReadPlan) -> Result<RunSummary, String> {
    if plan.invoke.is_some() && args.metrics.is_some() {
        return Err(
            "--metrics is for runs in this process; a function invoked with --invoke writes its own metrics"
                .to_owned(),
        );
    }
    let sdk = load_sdk_config().await;
    let config = if plan.invoke.is_none() {
        Some(ReplicatorConfig::from_env().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let source = match (&args.source, &config) {
        (Some(s), _) => StreamArn::parse(s).map_err(|e| format!("--source: {e}"))?,
        (None, Some(c)) => {
            let mut sources: Vec<&StreamArn> = c.routes.iter().map(|r| &r.source).collect();
            sources.sort();
            sources.dedup();
            match sources.as_slice() {
                [one] => (*one).clone(),
                _ => {
                    return Err(format!(
                        "FANOUT_ROUTES has {} sources; pick one with --source",
                        sources.len()
                    ))
                }
            }
        }
        (None, None) => return Err("--source is required with --invoke".to_owned()),
    };
    let lease_name = match (&args.lease_name, &config) {
        (Some(n), _) => n.clone(),
        (None, Some(c)) => {
            let mut names: Vec<&str> = c
                .routes
                .iter()
                .filter(|r| r.source == source)
                .map(|r| r.name.as_str())
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(format!(
                    "no route in FANOUT_ROUTES reads from {source}; add one or pick its --source"
                ));
            }
            names.join("+")
        }
        (None, None) => source.name().to_owned(),
    } + &plan.namespace;
    let table = args
        .table
        .clone()
        .or_else(|| config.as_ref().map(|c| c.table.clone()))
        .or_else(|| std::env::var("FANOUT_TABLE").ok().filter(|t| !t.is_empty()));
    let leases = Arc::new(match &table {
        Some(t) => Leases::Dynamo(DynamoLeases::new(&sdk, t)),
        None => {
            tracing::warn!("No state table (--table or FANOUT_TABLE): positions are kept in memory only and no other runner is kept off these shards.");
            Leases::Memory(MemoryLeases::default())
        }
    });
    let options = RunnerOptions {
        start: plan.start,
        batch_size: args.batch_size,
        function_timeout: Duration::from_secs(args.function_timeout),
        until_caught_up: plan.until_caught_up,
        progress: !args.quiet && plan.shared.is_none(),
        region: source.region().to_owned(),
        max_attempts: args.max_attempts,
        lease_name,
        lease_ttl: Duration::from_secs(args.lease_ttl),
        until_ms: plan.until_ms,
        fan_out_consumer: args.fan_out_consumer.clone(),
        ..RunnerOptions::default()
    };
    let stop = stop_on_signals();
    let reader = KinesisSource::new(&sdk);
    let shared = plan.shared.clone().unwrap_or_default();
    match (&plan.invoke, config) {
        (Some((url, function)), _) => {
            let invoker = Arc::new(HttpInvoker::new(url, function));
            runner::run_with(&reader, &source, invoker, leases, &options, stop, shared).await
        }
        (None, Some(config)) => {
            let handler = Arc::new(
                build_handler_in(&config, &sdk, metrics_output(args)?, &plan.namespace).await,
            );
            let invoker = Arc::new(InProcess(handler));
            runner::run_with(&reader, &source, invoker, leases, &options, stop, shared).await
        }
        (None, None) => unreachable!("config is read when not invoking over HTTP"),
    }
    .map_err(|e| format!("cannot read {source}: {e}"))
}

/// Where `--metrics` sends the handler's EMF lines.
fn metrics_output(args: &ReaderArgs) -> Result<MetricsOutput, String> {
    match args.metrics.as_deref() {
        None => Ok(MetricsOutput::None),
        Some("-") if args.output == Output::Json => Err(
            "--metrics - and --output json both write to stdout; give --metrics a file".to_owned(),
        ),
        Some("-") => Ok(MetricsOutput::Stdout),
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| MetricsOutput::File(std::sync::Mutex::new(f)))
            .map_err(|e| format!("cannot open the metrics file {path}: {e}")),
    }
}

pub fn print_summary(summary: &RunSummary, output: Output) {
    match output {
        Output::Json => {
            let shards: serde_json::Map<String, serde_json::Value> = summary
                .shards
                .iter()
                .map(|(id, s)| {
                    (
                        id.clone(),
                        serde_json::json!({
                            "records_delivered": s.records_delivered,
                            "invocations": s.invocations,
                            "retried_invocations": s.retried_invocations,
                            "millis_behind": s.millis_behind,
                            "finished": s.finished,
                            "lease_lost": s.lease_lost,
                            "leases_taken": s.leases_taken,
                            "stopped": s.stopped,
                            "held": s.held,
                            "handled": s.handled,
                        }),
                    )
                })
                .collect();
            let doc = serde_json::json!({
                "records_delivered": summary.records_delivered(),
                "elapsed_seconds": summary.elapsed.as_secs_f64(),
                "handled": summary.handled(),
                "shards": shards,
            });
            println!("{doc:#}");
        }
        Output::Text => {
            println!(
                "Delivered {} records in {:.1}s.",
                summary.records_delivered(),
                summary.elapsed.as_secs_f64()
            );
            let total = summary.handled();
            if total.reports > 0 {
                println!(
                    "Written {}, dead-lettered {}, skipped as already handled {}, possible duplicates {}, entries retried {}{}.",
                    total.written,
                    total.dead_lettered,
                    total.skipped,
                    total.possible_duplicates,
                    total.retries,
                    if total.repairs > 0 { format!(", runs repaired {}", total.repairs) } else { String::new() }
                );
            } else {
                println!("What the function wrote, dead-lettered and retried is in its own logs and metrics.");
            }
            println!(
                "{:<24} {:>10} {:>11} {:>8} {:>8} {:>6} {:>6}  state",
                "shard", "records", "invocations", "retries", "written", "dead", "dups"
            );
            for (id, s) in &summary.shards {
                let state = match (&s.stopped, s.finished, s.lease_lost) {
                    (Some(why), _, _) => format!("STOPPED: {why}"),
                    (None, _, _) if s.held.is_some() => {
                        format!("HELD: {}", s.held.as_deref().unwrap_or_default())
                    }
                    (None, _, true) => "taken over by another runner".to_owned(),
                    (None, true, _) => {
                        "finished (closed and read to its end, or past the window)".to_owned()
                    }
                    (None, false, _) => format!("{} ms behind", s.millis_behind),
                };
                println!(
                    "{id:<24} {:>10} {:>11} {:>8} {:>8} {:>6} {:>6}  {state}",
                    s.records_delivered,
                    s.invocations,
                    s.retried_invocations,
                    s.handled.written,
                    s.handled.dead_lettered,
                    s.handled.possible_duplicates
                );
            }
        }
    }
}
