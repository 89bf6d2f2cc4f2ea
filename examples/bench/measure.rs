//! Measurement: all from /proc, so no extra dependency.

use std::time::Duration;

use tokio::time::Instant;

/// CPU time of every live thread of this process, in nanoseconds (`/proc/self/task/*/schedstat`,
/// first field: time spent on a CPU). Nanosecond resolution, unlike the 10 ms ticks of
/// `/proc/self/stat`.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime + stime of the whole process (including exited threads) in clock ticks: a coarse
/// cross-check of [`cpu_ns`].
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is the peak since now.
pub fn reset_peak_rss() -> Result<(), String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak RSS via /proc/self/clear_refs: {e}"))
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub struct Sample {
    started: Instant,
    cpu_ns: u64,
    ticks: u64,
}

impl Sample {
    pub fn start() -> Sample {
        // CPU first, clock last: the clock brackets only the measured work.
        let cpu_ns = cpu_ns();
        let ticks = cpu_ticks();
        Sample {
            started: Instant::now(),
            cpu_ns,
            ticks,
        }
    }

    /// (wall ms, CPU ms from schedstat, CPU ms from ticks)
    pub fn stop(self) -> (f64, f64, f64) {
        let wall = ms(self.started.elapsed());
        let cpu = cpu_ns().saturating_sub(self.cpu_ns) as f64 / 1e6;
        // USER_HZ is 100 on Linux: one tick is 10 ms.
        let ticks = cpu_ticks().saturating_sub(self.ticks) as f64 * 10.0;
        (wall, cpu, ticks)
    }
}
