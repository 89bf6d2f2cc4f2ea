//! The run's live figures on the one progress display ([`crate::progress`]): a line per
//! shard (records delivered, rate, and how far behind, held or stopped) redrawn on a
//! terminal, a plain summary line every few seconds otherwise (`RunnerOptions::progress`).

#[allow(unused_imports)]
use super::*;
use crate::progress::{Progress, ShardProgress as Bar};

/// What a shard is doing, in a few words.
fn state_of(s: &ShardProgress) -> String {
    if let Some(why) = &s.stopped {
        format!("STOPPED: {why}")
    } else if let Some(why) = &s.held {
        format!("HELD: {why}")
    } else if s.lease_lost {
        "moved to another runner".to_owned()
    } else {
        format!("{} ms behind", s.millis_behind)
    }
}

pub(super) async fn print_progress(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let display = Progress::new(true);
    let mut bars: BTreeMap<String, (Bar, bool)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        for (id, s) in shared.snapshot() {
            let (bar, done) = bars
                .entry(id.clone())
                .or_insert_with(|| (display.shard(&id, None), false));
            if *done {
                continue;
            }
            bar.set_position(s.records_delivered);
            if s.finished {
                bar.finish("read to its end");
                *done = true;
            } else {
                bar.set_message(&state_of(&s));
            }
        }
    }
}
