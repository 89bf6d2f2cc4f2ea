//! The migration commands (`start`, `status`, `plan`, `cutover`, `rollback`, `commit`,
//! `pause`, `resume`, `history`, `dlq`): clap arguments turned into a
//! [`fanout::control::commands::Request`], run by the same code as the controller Lambda.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use fanout::aws::control::AwsControl;
use fanout::aws::load_sdk_config;
use fanout::aws::verifications::{caller_identity, old_account_config, old_lambda_config};
use fanout::config::ReplicatorConfig;
use fanout::control::commands::{
    execute, release_interrupted, specs_from_json, streams_from_routes, CommandName, Context,
    Request,
};
use fanout::control::machine::Action;
use fanout::control::record::Settings;
use fanout::verify::parse_duration;

use crate::Output;

/// Options every migration command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// The migration's name.
    #[arg(long, env = "FANOUT_MIGRATION")]
    pub migration: String,
    /// The state table.
    #[arg(long, env = "FANOUT_TABLE")]
    pub table: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct FlipArgs {
    #[command(flatten)]
    pub common: Common,
    /// Why (recorded in the history; required with --force).
    #[arg(long)]
    pub reason: Option<String>,
    /// Go through even though guards refuse. Needs --reason; recorded.
    #[arg(long)]
    pub force: bool,
    /// Print the plan and every guard's result; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// cutover: the capacity guard's round trip to the target, in ms. With --dry-run, for
    /// testing what-ifs: used instead of measuring it ("what if the target were 30 ms
    /// away"). Otherwise the larger of it and the measured one counts: it can make the guard
    /// stricter, never more lenient.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub assume_rtt_ms: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub common: Common,
    /// Largest replication lag allowed on any shard before a flip.
    #[arg(long, default_value = "60s")]
    pub max_lag: String,
    /// How old the latest passing verification of each route may be.
    #[arg(long, default_value = "1h")]
    pub verification_max_age: String,
    /// How long a flip waits, producers held, for replication to catch up.
    #[arg(long, default_value = "2m")]
    pub drain_timeout: String,
    /// How long a flip waits after telling producers to hold: longer than producers'
    /// routing cache and the replicator's FANOUT_MODE_CACHE_MS (read from this environment,
    /// default 5000 ms; `start` refuses a shorter settle).
    #[arg(long, default_value = "7s")]
    pub settle: String,
    /// One identity requests each flip, a different one approves it.
    #[arg(long)]
    pub two_person: bool,
    /// Replicate old → new while rolled back, so the new side stays current for the next
    /// attempt. Run a second replicator for it: its FANOUT_ROUTES swaps each route's source
    /// and target (route name <old name>--<new account>--<new name>).
    #[arg(long)]
    pub reverse: bool,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Refresh the screen every 2 seconds until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub common: Common,
    /// cutover, rollback or commit.
    #[arg(value_parser = parse_action)]
    pub action: Action,
    /// plan cutover, for testing what-ifs: the capacity guard uses this round trip to the
    /// target (ms) instead of measuring it ("what if the target were 30 ms away").
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub assume_rtt_ms: Option<u32>,
}

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Only the most recent N entries.
    #[arg(long)]
    pub last: Option<usize>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCommand {
    /// Record that the listed dead letters (or --all) were looked at, so they no longer
    /// block flips. Redriven dead letters need no acknowledgement.
    Ack {
        #[command(flatten)]
        common: Common,
        /// Dead-letter keys, as `fanoutctl status` / `redrive --dry-run` list them.
        keys: Vec<String>,
        #[arg(long, conflicts_with = "keys")]
        all: bool,
        /// What was looked at and decided (required; recorded).
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parse_action(s: &str) -> Result<Action, String> {
    match s {
        "cutover" => Ok(Action::Cutover),
        "rollback" => Ok(Action::Rollback),
        "commit" => Ok(Action::Commit),
        _ => Err(format!("{s:?}: expected cutover, rollback or commit")),
    }
}

fn ms(flag: &str, text: &str) -> Result<i64, String> {
    parse_duration(text)
        .map(|d| d.as_millis() as i64)
        .map_err(|e| format!("{flag}: {e}"))
}

async fn context(table: &str) -> Result<Context<AwsControl>, String> {
    let sdk = load_sdk_config().await;
    let old = old_account_config(&sdk).await;
    let actor = caller_identity(&sdk).await.map_err(|e| {
        format!(
            "cannot tell who you are (every change is recorded with the caller's identity): {}",
            e.message
        )
    })?;
    Ok(Context {
        control: AwsControl::new(&sdk, &old, table)
            .with_old_lambda(&old_lambda_config(&sdk, &old).await),
        actor,
        poll: Duration::from_millis(500),
        caller_known: true,
    })
}

pub(crate) fn request(common: &Common, command: CommandName) -> Request {
    Request {
        command,
        migration: common.migration.clone(),
        ..Request::default()
    }
}

/// Runs `req` and prints the report; the exit code says how it ended.
pub(crate) async fn run(common: &Common, req: Request) -> Result<ExitCode, String> {
    let ctx = context(&common.table).await?;
    let flips = matches!(
        req.command,
        CommandName::Cutover | CommandName::Rollback | CommandName::Commit
    ) && !req.dry_run;
    let (report, interrupted) = if flips {
        // A flip holds producers while it works: Ctrl-C or SIGTERM releases them (and
        // records it) before the process ends, instead of leaving them held.
        let since = fanout::time::now_ms() - 1_000;
        tokio::select! {
            report = execute(&ctx, &req) => (report, None),
            why = interrupted() => {
                eprintln!(
                    "\n{why}: stopping the {} and releasing producers (a few seconds; every \
                     call is bounded)…",
                    req.command.as_str()
                );
                (release_interrupted(&ctx, &req, since, why).await, Some(why))
            }
        }
    } else {
        (execute(&ctx, &req).await, None)
    };
    print_report(common, &report)?;
    Ok(match interrupted {
        Some(why) if why.starts_with("SIGTERM") => ExitCode::from(143),
        Some(_) => ExitCode::from(130),
        None => ExitCode::from(report.exit_code()),
    })
}

/// The first SIGINT (Ctrl-C) or SIGTERM.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT (Ctrl-C)",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT (Ctrl-C)"
}

fn print_report(common: &Common, report: &fanout::control::commands::Report) -> Result<(), String> {
    match common.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        ),
        Output::Text => print!("{}", report.render_text()),
    }
    Ok(())
}

pub async fn start(args: StartArgs) -> Result<ExitCode, String> {
    let config = ReplicatorConfig::from_env().map_err(|e| e.to_string())?;
    let mut req = request(&args.common, CommandName::Start);
    req.streams = streams_from_routes(&config);
    req.settings = Some(Settings {
        max_lag_ms: ms("--max-lag", &args.max_lag)?,
        verification_max_age_ms: ms("--verification-max-age", &args.verification_max_age)?,
        drain_timeout_ms: ms("--drain-timeout", &args.drain_timeout)?,
        settle_ms: ms("--settle", &args.settle)?,
        mode_cache_ms: Some(config.mode_cache.as_millis() as i64),
        two_person: args.two_person,
        reverse: args.reverse,
    });
    req.bucket = Some(config.dead_letter_bucket.clone());
    req.dead_letter_prefix = Some(config.dead_letter_prefix.clone());
    req.reason = args.reason;
    if let Ok(json) = std::env::var("FANOUT_CONSUMERS") {
        req.consumers = specs_from_json(&json)?;
    }
    run(&args.common, req).await
}

pub async fn flip(args: FlipArgs, command: CommandName) -> Result<ExitCode, String> {
    if args.assume_rtt_ms.is_some() && command != CommandName::Cutover {
        return Err(format!(
            "--assume-rtt-ms is for cutover (its capacity guard); {} has no capacity guard",
            command.as_str()
        ));
    }
    let mut req = request(&args.common, command);
    req.assume_rtt_ms = args.assume_rtt_ms;
    req.reason = args.reason;
    req.force = args.force;
    req.dry_run = args.dry_run;
    run(&args.common, req).await
}

pub async fn plan(args: PlanArgs) -> Result<ExitCode, String> {
    if args.assume_rtt_ms.is_some() && args.action != Action::Cutover {
        return Err("--assume-rtt-ms is for plan cutover (its capacity guard)".to_owned());
    }
    let mut req = request(&args.common, CommandName::Plan);
    req.assume_rtt_ms = args.assume_rtt_ms;
    req.action = Some(args.action);
    run(&args.common, req).await
}

pub async fn pause(args: PauseArgs, command: CommandName) -> Result<ExitCode, String> {
    let mut req = request(&args.common, command);
    req.reason = args.reason;
    run(&args.common, req).await
}

pub async fn history(args: HistoryArgs) -> Result<ExitCode, String> {
    let mut req = request(&args.common, CommandName::History);
    req.last = args.last;
    run(&args.common, req).await
}

pub async fn dlq(command: DlqCommand) -> Result<ExitCode, String> {
    match command {
        DlqCommand::Ack {
            common,
            keys,
            all,
            reason,
        } => {
            let mut req = request(&common, CommandName::DlqAck);
            req.keys = keys;
            req.all = all;
            req.reason = reason;
            run(&common, req).await
        }
    }
}

pub async fn status(args: StatusArgs) -> Result<ExitCode, String> {
    let req = request(&args.common, CommandName::Status);
    if !args.watch {
        return run(&args.common, req).await;
    }
    let ctx = context(&args.common.table).await?;
    let terminal = std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let report = execute(&ctx, &req).await;
        if first
            && report.outcome == fanout::control::record::Outcome::Failed
            && report.status.is_none()
        {
            // Nothing to watch (no such migration, no access): say so and stop. A status
            // that could read only some parts is shown and watched.
            print!("{}", report.render_text());
            return Ok(ExitCode::from(report.exit_code()));
        }
        first = false;
        let text = match args.common.output {
            Output::Json => serde_json::to_string(&report).map_err(|e| e.to_string())? + "\n",
            Output::Text => report.render_text(),
        };
        let mut out = std::io::stdout().lock();
        if terminal && args.common.output == Output::Text {
            // Clear the screen and go home, then draw.
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = write!(out, "{text}");
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
