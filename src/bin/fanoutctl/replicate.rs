//! `fanoutctl replicate`: feed a source stream's shards to the replicator.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout::aws::source::KinesisSource;
use fanout::aws::{build_handler, load_sdk_config};
use fanout::config::ReplicatorConfig;
use fanout::handler::MetricsOutput;
use fanout::model::StreamArn;
use fanout::runner::{self, HttpInvoker, InProcess, RunSummary, RunnerOptions};

use crate::{parse_start, Output};

#[derive(clap::Args, Debug)]
pub struct ReplicateArgs {
    /// Source stream ARN. Default: the source of the routes in FANOUT_ROUTES (there must be one).
    #[arg(long)]
    source: Option<String>,
    /// Where to start in each shard: trim-horizon, latest, or an RFC 3339 time
    /// (e.g. 2026-11-22T03:00:00Z).
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
    /// Most records per invocation (the event source mapping's BatchSize).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i32).range(1..=10000))]
    batch_size: i32,
    /// Time each invocation gets, in seconds (the function timeout).
    #[arg(long, default_value_t = 60)]
    function_timeout: u64,
    /// Stop a shard (nothing is skipped) after this many failed attempts at one batch.
    /// Default: retry forever, like the event source mapping.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Output format of the final summary.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

pub async fn replicate(args: ReplicateArgs) -> Result<ExitCode, String> {
    let start = parse_start(&args.from)?;
    let sdk = load_sdk_config().await;
    let config = if args.invoke.is_none() {
        Some(ReplicatorConfig::from_env().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let source = match (&args.source, &config) {
        (Some(s), _) => StreamArn::parse(s).map_err(|e| format!("--source: {e}"))?,
        (None, Some(c)) => {
            let mut sources: Vec<&StreamArn> = c.routes.iter().map(|r| &r.source).collect();
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
    let options = RunnerOptions {
        start,
        batch_size: args.batch_size,
        function_timeout: Duration::from_secs(args.function_timeout),
        until_caught_up: args.until_caught_up,
        progress: !args.quiet,
        region: source.region().to_owned(),
        max_attempts: args.max_attempts,
        ..RunnerOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nStopping: finishing the batches in flight (Ctrl-C again to abort)…");
                stop.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let reader = KinesisSource::new(&sdk);
    let summary = match (&args.invoke, config) {
        (Some(url), _) => {
            let invoker = Arc::new(HttpInvoker::new(url, &args.function_name));
            runner::run(&reader, &source, invoker, &options, stop).await
        }
        (None, Some(config)) => {
            let handler = Arc::new(build_handler(&config, &sdk, MetricsOutput::None).await);
            runner::run(
                &reader,
                &source,
                Arc::new(InProcess(handler)),
                &options,
                stop,
            )
            .await
        }
        (None, None) => unreachable!("config is read when not invoking over HTTP"),
    }
    .map_err(|e| format!("cannot read {source}: {e}"))?;
    print_summary(&summary, args.output);
    Ok(if summary.shards.values().any(|s| s.stopped.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(summary: &RunSummary, output: Output) {
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
                            "stopped": s.stopped,
                        }),
                    )
                })
                .collect();
            let doc = serde_json::json!({
                "records_delivered": summary.records_delivered(),
                "elapsed_seconds": summary.elapsed.as_secs_f64(),
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
            println!(
                "{:<24} {:>10} {:>11} {:>8}  state",
                "shard", "records", "invocations", "retries"
            );
            for (id, s) in &summary.shards {
                let state = match (&s.stopped, s.finished) {
                    (Some(why), _) => format!("STOPPED: {why}"),
                    (None, true) => "closed, read to its end".to_owned(),
                    (None, false) => format!("{} ms behind", s.millis_behind),
                };
                println!(
                    "{id:<24} {:>10} {:>11} {:>8}  {state}",
                    s.records_delivered, s.invocations, s.retried_invocations
                );
            }
        }
    }
}
