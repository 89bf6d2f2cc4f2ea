//! Shared set-up of the command-line programs (`fanoutctl`, the demo, the benchmark).

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
