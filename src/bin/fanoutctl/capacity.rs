//! `fanoutctl capacity`: whether each route's order mode keeps up with its traffic.

use std::process::ExitCode;
use std::time::Duration;

use fanout::aws::capacity::{measure_route, CapacityOptions, RoundTrip};
use fanout::aws::load_sdk_config;
use fanout::capacity::{ConfiguredRoute, RouteCapacity, Sides};
use fanout::config::ReplicatorConfig;
use fanout::verify::parse_duration;
use serde::Serialize;

use crate::Output;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SampleSides {
    /// The route's source (the new stream).
    Source,
    /// The route's target (the old stream), through the writer role.
    Target,
    /// Both; per partition key the busier side counts.
    Both,
}

#[derive(clap::Args, Debug)]
pub struct CapacityArgs {
    /// How much of each shard's newest traffic to read: 30s, 2m, … (at most 10m).
    #[arg(long, default_value = "30s")]
    window: String,
    /// Only this route (its name as FANOUT_ROUTES gives it, or the default
    /// <source name>--<target account>--<target name>). Default: every route.
    #[arg(long)]
    route: Option<String>,
    /// Which streams to read. Before the first cutover producers write to the old streams
    /// (the targets) and the new ones carry only test traffic: `both` measures what the
    /// source will get after the cutover.
    #[arg(long, value_enum, default_value_t = SampleSides::Both)]
    sample: SampleSides,
    /// For testing what-ifs: use this round trip to the target (milliseconds) instead of
    /// measuring it, e.g. "what if the target were 30 ms away".
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    assume_rtt_ms: Option<u32>,
    /// Longest time spent reading each route; past it, rates are over what was read (the
    /// report says so).
    #[arg(long, default_value = "20s")]
    timeout: String,
    /// Output: a table for people (text) or the full report (json).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The whole report, as `--output json` prints it.
#[derive(Serialize)]
struct Report {
    /// Every checked route's configured order mode keeps up.
    keeps_up: bool,
    /// 0 all keep up, 1 one does not, 2 some route could not be checked.
    exit_code: u8,
    routes: Vec<RouteCapacity>,
    /// Routes that could not be checked: why, and the fix.
    failed: Vec<Failure>,
}

#[derive(Serialize)]
struct Failure {
    route: String,
    error: String,
}

/// FANOUT_ROUTES and the limits; the table and bucket are not needed here.
fn config() -> Result<ReplicatorConfig, String> {
    let get = |name: &str| std::env::var(name).ok();
    let Some(routes) = ReplicatorConfig::routes_var(get) else {
        return Err(
            "FANOUT_ROUTES is not set: set it to the replicator's routes (the same value the \
             replicator Lambda has; see the README's configuration reference)"
                .to_owned(),
        );
    };
    ReplicatorConfig::routes_and_limits(&routes, get).map_err(|e| e.to_string())
}

pub async fn capacity(args: CapacityArgs) -> Result<ExitCode, String> {
    let window = parse_duration(&args.window).map_err(|e| format!("--window: {e}"))?;
    if window < Duration::from_secs(1) || window > Duration::from_secs(600) {
        return Err(format!(
            "--window {}: give between 1s and 10m (a longer window takes long to read)",
            args.window
        ));
    }
    let timeout = parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?;
    if timeout < Duration::from_secs(1) {
        return Err(format!("--timeout {}: give at least 1s", args.timeout));
    }
    let config = config()?;
    let routes: Vec<ConfiguredRoute> = config
        .routes
        .iter()
        .filter(|r| args.route.as_ref().is_none_or(|name| &r.name == name))
        .map(|r| ConfiguredRoute {
            route: r.clone(),
            limits: config.limits.clone(),
            note: None,
        })
        .collect();
    if routes.is_empty() {
        return Err(format!(
            "no route named {:?} in FANOUT_ROUTES; its routes are: {}",
            args.route.unwrap_or_default(),
            config
                .routes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let opts = CapacityOptions {
        window,
        sides: match args.sample {
            SampleSides::Source => Sides::Source,
            SampleSides::Target => Sides::Target,
            SampleSides::Both => Sides::Both,
        },
        round_trip: match args.assume_rtt_ms {
            Some(ms) => RoundTrip::Assume(f64::from(ms)),
            None => RoundTrip::Measure,
        },
        read_time: timeout,
        ..CapacityOptions::default()
    };
    let sdk = load_sdk_config().await;
    let now = chrono::Utc::now().timestamp_millis();
    let results = futures::future::join_all(routes.iter().map(|r| async {
        (
            r.route.name.clone(),
            measure_route(&sdk, r, &opts, now).await,
        )
    }))
    .await;
    let mut report = Report {
        keeps_up: true,
        exit_code: 0,
        routes: Vec::new(),
        failed: Vec::new(),
    };
    for (route, result) in results {
        match result {
            Ok(c) => {
                report.keeps_up &= c.keeps_up;
                report.routes.push(c);
            }
            Err(error) => report.failed.push(Failure { route, error }),
        }
    }
    report.exit_code = if !report.failed.is_empty() {
        2
    } else if !report.keeps_up {
        1
    } else {
        0
    };
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        ),
        Output::Text => {
            for c in &report.routes {
                println!("{}", c.render_text());
            }
            for f in &report.failed {
                println!("{}: COULD NOT CHECK: {}\n", f.route, f.error);
            }
            let short: Vec<&str> = report
                .routes
                .iter()
                .filter(|c| !c.keeps_up)
                .map(|c| c.route.as_str())
                .collect();
            println!(
                "{}",
                match (report.failed.len(), short.len()) {
                    (0, 0) => format!(
                        "Every route keeps up in its order mode ({} checked).",
                        report.routes.len()
                    ),
                    (0, n) => format!(
                        "{n} of {} route(s) cannot keep up in their order mode: {}. The verdict \
                         above says what would.",
                        report.routes.len(),
                        short.join(", ")
                    ),
                    (f, _) => format!(
                        "{f} route(s) could not be checked (see above); {} cannot keep up.",
                        if short.is_empty() {
                            "none of the others".to_owned()
                        } else {
                            short.join(", ")
                        }
                    ),
                }
            );
        }
    }
    Ok(ExitCode::from(report.exit_code))
}
