//! Shared set-up of the programs: the command-line ones (`fanoutctl`, the demo, the
//! benchmark) and the Lambdas.

/// Logs to stderr, filtered by `FANOUT_LOG` (default `warn`), so stdout stays for results.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The Lambdas' logging: JSON lines (CloudWatch parses them) without timestamps (Lambda
/// adds its own), filtered by `FANOUT_LOG` (default `info`).
pub fn init_lambda_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(false)
        .without_time()
        .init();
}

/// A `/proc/self/status` field in kB (`VmRSS`, `VmHWM`), 0 where there is none: how the
/// benchmarks report memory.
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix(field)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}
