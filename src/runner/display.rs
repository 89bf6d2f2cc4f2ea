//! The plain progress line of a run (`RunnerOptions::progress`).

#[allow(unused_imports)]
use super::*;

pub(super) async fn print_progress(shared: Arc<Shared>, stop: Arc<AtomicBool>, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = shared.delivered();
        let rate = (now - last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
        last = (now, Instant::now());
        let behind: Vec<String> = shared
            .snapshot()
            .iter()
            .map(|(id, s)| {
                let short = id.trim_start_matches("shardId-").trim_start_matches('0');
                let state = if s.stopped.is_some() {
                    "STOPPED".to_owned()
                } else if s.held.is_some() {
                    "HELD".to_owned()
                } else if s.lease_lost {
                    "moved".to_owned()
                } else if s.finished {
                    "done".to_owned()
                } else {
                    format!("{}ms", s.millis_behind)
                };
                format!("{}:{state}", if short.is_empty() { "0" } else { short })
            })
            .collect();
        let line = format!(
            "{:>6.1}s  {now} records  {rate:.0} rec/s  behind per shard: {}",
            started.elapsed().as_secs_f64(),
            behind.join(" ")
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
