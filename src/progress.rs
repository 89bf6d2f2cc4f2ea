//! Live progress of long per-shard jobs (`fanoutctl redrive`, later `backfill`), on stderr.
//!
//! Three modes, picked once by [`Progress::new`]:
//! - **bars** when stderr is a terminal: one bar per shard with count, rate and ETA;
//! - **lines** otherwise (CI logs, `nohup`, a pipe): one plain line every few seconds naming
//!   every unfinished shard with its count, rate and ETA, and one line when a shard finishes;
//! - **off** (`--quiet`): nothing at all.
//!
//! ```no_run
//! use fanout::progress::Progress;
//! let progress = Progress::new(true);
//! let shard = progress.shard("shardId-000000000001", Some(500));
//! shard.inc(100);
//! shard.finish("400 replayed, 100 left in place");
//! ```
//!
//! Handles are cheap to clone and may be moved to other tasks. Stdout is never written, so a
//! command's `--output json` stays parseable.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

pub use crate::time::human_secs;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain-line mode prints.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One redrawn bar per shard (stderr is a terminal).
    Bars,
    /// A plain summary line every `interval` (stderr is not a terminal).
    Lines { interval: Duration },
    /// Nothing.
    Off,
}

/// The progress display of one command run.
#[derive(Clone)]
pub struct Progress {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Bars(MultiProgress),
    Lines(Arc<Mutex<LineState>>),
    Off,
}

/// A handle on one shard's progress.
#[derive(Clone)]
pub struct ShardProgress {
    inner: ShardInner,
}

#[derive(Clone)]
enum ShardInner {
    Bar(ProgressBar),
    Line {
        state: Arc<Mutex<LineState>>,
        index: usize,
    },
    Off,
}

struct LineShard {
    id: String,
    total: Option<u64>,
    position: u64,
    started: Instant,
    finished: bool,
    message: String,
}

struct LineState {
    shards: Vec<LineShard>,
}

impl Progress {
    /// Bars if `enabled` and stderr is a terminal, plain lines if `enabled` otherwise, and
    /// nothing if not `enabled` (`--quiet`).
    pub fn new(enabled: bool) -> Progress {
        let mode = match (enabled, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, true) => Mode::Bars,
            (true, false) => Mode::Lines {
                interval: LINE_INTERVAL,
            },
        };
        Progress::with_mode(mode)
    }

    /// A display in a chosen mode.
    pub fn with_mode(mode: Mode) -> Progress {
        let inner = match mode {
            Mode::Bars => {
                Inner::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            Mode::Lines { interval } => {
                let state = Arc::new(Mutex::new(LineState { shards: Vec::new() }));
                spawn_ticker(Arc::downgrade(&state), interval);
                Inner::Lines(state)
            }
            Mode::Off => Inner::Off,
        };
        Progress { inner }
    }

    /// Starts tracking a shard; `total` is the work expected, if known (no ETA without it).
    pub fn shard(&self, id: &str, total: Option<u64>) -> ShardProgress {
        let inner = match &self.inner {
            Inner::Bars(multi) => {
                let bar = match total {
                    Some(n) => ProgressBar::new(n).with_style(bar_style()),
                    None => ProgressBar::no_length().with_style(spinner_style()),
                };
                let bar = multi.add(bar.with_prefix(id.to_owned()));
                bar.enable_steady_tick(Duration::from_millis(250));
                ShardInner::Bar(bar)
            }
            Inner::Lines(state) => {
                let mut s = lock(state);
                s.shards.push(LineShard {
                    id: id.to_owned(),
                    total,
                    position: 0,
                    started: Instant::now(),
                    finished: false,
                    message: String::new(),
                });
                ShardInner::Line {
                    state: state.clone(),
                    index: s.shards.len() - 1,
                }
            }
            Inner::Off => ShardInner::Off,
        };
        ShardProgress { inner }
    }

    /// Prints a line on stderr without tearing the bars (a no-op when off).
    pub fn println(&self, line: &str) {
        match &self.inner {
            Inner::Bars(multi) => {
                let _ = multi.println(line);
            }
            Inner::Lines(_) => eprintln!("{line}"),
            Inner::Off => {}
        }
    }
}

impl ShardProgress {
    /// Replaces the free text shown after the figures (e.g. a time-based ETA).
    pub fn set_message(&self, message: &str) {
        match &self.inner {
            ShardInner::Bar(bar) => bar.set_message(message.to_owned()),
            ShardInner::Line { state, index } => {
                if let Some(s) = lock(state).shards.get_mut(*index) {
                    s.message = message.to_owned();
                }
            }
            ShardInner::Off => {}
        }
    }

    /// Adds `n` units of work done.
    pub fn inc(&self, n: u64) {
        match &self.inner {
            ShardInner::Bar(bar) => bar.inc(n),
            ShardInner::Line { state, index } => {
                if let Some(s) = lock(state).shards.get_mut(*index) {
                    s.position += n;
                }
            }
            ShardInner::Off => {}
        }
    }

    /// Sets the work done so far.
    pub fn set_position(&self, position: u64) {
        match &self.inner {
            ShardInner::Bar(bar) => bar.set_position(position),
            ShardInner::Line { state, index } => {
                if let Some(s) = lock(state).shards.get_mut(*index) {
                    s.position = position;
                }
            }
            ShardInner::Off => {}
        }
    }

    /// Marks the shard done, with a short closing message ("400 replayed").
    pub fn finish(&self, message: &str) {
        match &self.inner {
            ShardInner::Bar(bar) => bar.finish_with_message(message.to_owned()),
            ShardInner::Line { state, index } => {
                let mut s = lock(state);
                if let Some(shard) = s.shards.get_mut(*index) {
                    if !shard.finished {
                        shard.finished = true;
                        let line = format!(
                            "{}: done, {} in {:.1}s: {message}",
                            shard.id,
                            count(shard.position, shard.total),
                            shard.started.elapsed().as_secs_f64()
                        );
                        drop(s);
                        let _ = writeln!(std::io::stderr(), "{line}");
                    }
                }
            }
            ShardInner::Off => {}
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {rate} ETA {eta_or} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", rate_key)
        .with_key(
            "eta_or",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = if state.pos() == 0 {
                    write!(w, "{:>6}", "?")
                } else {
                    write!(w, "{:>6}", human_secs(state.eta().as_secs_f64()))
                };
            },
        )
        .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>24} {spinner} {pos} {rate} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("rate", rate_key)
}

fn rate_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:>9}", format!("{:.1}/s", state.per_sec()));
}

/// Prints the plain progress line every `interval` until the display is dropped.
fn spawn_ticker(state: Weak<Mutex<LineState>>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("fanout-progress".to_owned())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(state) = state.upgrade() else {
                return;
            };
            let line = progress_line(&lock(&state), Instant::now());
            drop(state);
            if let Some(line) = line {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "Could not start the progress printer; no progress lines will be shown.");
    }
}

/// The plain progress line, or `None` when no shard is unfinished.
fn progress_line(state: &LineState, now: Instant) -> Option<String> {
    let parts: Vec<String> = state
        .shards
        .iter()
        .filter(|s| !s.finished)
        .map(|s| {
            let elapsed = now.saturating_duration_since(s.started).as_secs_f64();
            let rate = if elapsed > 0.0 {
                s.position as f64 / elapsed
            } else {
                0.0
            };
            let eta = match s.total {
                Some(total) if rate > 0.0 => {
                    format!(
                        ", ETA {}",
                        human_secs(total.saturating_sub(s.position) as f64 / rate)
                    )
                }
                Some(_) => ", ETA unknown".to_owned(),
                None => String::new(),
            };
            let message = if s.message.is_empty() {
                String::new()
            } else {
                format!(" {}", s.message)
            };
            format!(
                "{} {} ({rate:.1}/s{eta}){message}",
                s.id,
                count(s.position, s.total)
            )
        })
        .collect();
    (!parts.is_empty()).then(|| format!("progress: {}", parts.join("; ")))
}

fn count(position: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{position}/{t}"),
        None => position.to_string(),
    }
}

/// A poisoned lock only means another thread panicked while printing; the counts are fine.
fn lock(state: &Mutex<LineState>) -> std::sync::MutexGuard<'_, LineState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, total: Option<u64>, position: u64, secs_ago: u64) -> LineShard {
        LineShard {
            id: id.to_owned(),
            total,
            position,
            started: Instant::now() - Duration::from_secs(secs_ago),
            finished: false,
            message: String::new(),
        }
    }

    #[test]
    fn the_plain_line_names_each_unfinished_shard_with_count_rate_and_eta() {
        let mut done = shard("shardId-2", Some(10), 10, 1);
        done.finished = true;
        let state = LineState {
            shards: vec![
                shard("shardId-0", Some(1000), 100, 10),
                shard("shardId-1", None, 50, 10),
                done,
            ],
        };
        let line = progress_line(&state, Instant::now()).unwrap();
        assert!(
            line.starts_with("progress: shardId-0 100/1000 (10.0/s, ETA 1m30s)"),
            "{line}"
        );
        assert!(line.contains("; shardId-1 50 (5.0/s)"), "{line}");
        assert!(!line.contains("shardId-2"), "{line}");
    }

    #[test]
    fn no_line_once_every_shard_is_finished() {
        let mut s = shard("a", Some(1), 1, 1);
        s.finished = true;
        assert_eq!(
            progress_line(&LineState { shards: vec![s] }, Instant::now()),
            None
        );
    }

    #[test]
    fn a_stalled_shard_has_an_unknown_eta() {
        let state = LineState {
            shards: vec![shard("a", Some(5), 0, 3)],
        };
        let line = progress_line(&state, Instant::now()).unwrap();
        assert!(line.contains("0/5 (0.0/s, ETA unknown)"), "{line}");
    }

    #[test]
    fn handles_count_in_every_mode() {
        for mode in [
            Mode::Off,
            Mode::Bars,
            Mode::Lines {
                interval: Duration::from_secs(3600),
            },
        ] {
            let p = Progress::with_mode(mode);
            let s = p.shard("a", Some(10));
            s.inc(3);
            s.set_position(7);
            s.finish("ok");
            s.finish("twice is harmless");
        }
        let p = Progress::with_mode(Mode::Lines {
            interval: Duration::from_secs(3600),
        });
        let s = p.shard("a", Some(10));
        s.inc(3);
        s.inc(4);
        if let Inner::Lines(state) = &p.inner {
            assert_eq!(lock(state).shards[0].position, 7);
        }
    }
}
