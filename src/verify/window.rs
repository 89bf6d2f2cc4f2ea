//! Windows and passes: what part of the streams a verification reads.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// Windows and passes

/// The time window verified, in milliseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `None`: from the trim horizon (everything the stream still holds).
    pub from_ms: Option<i64>,
    pub until_ms: i64,
    /// Margin read on both sides: target copies arrive later than their source (replication
    /// lag), so the target is read until `until + grace`; source records in the margins are
    /// "context" (matched copies of them are outside the window, not foreign).
    pub grace_ms: i64,
}

impl Window {
    /// Every record, whatever its arrival time.
    pub fn everything() -> Window {
        Window {
            from_ms: None,
            until_ms: i64::MAX,
            grace_ms: 0,
        }
    }

    /// Where reading starts: `None` is the trim horizon.
    pub fn read_from_ms(&self) -> Option<i64> {
        self.from_ms.map(|f| f.saturating_sub(self.grace_ms))
    }

    /// Records that arrived after this are not read.
    pub fn read_until_ms(&self) -> i64 {
        self.until_ms.saturating_add(self.grace_ms)
    }

    /// Arrived within [from, until]. A record without an arrival time counts as inside.
    pub fn contains(&self, arrival_ms: Option<i64>) -> bool {
        match arrival_ms {
            None => true,
            Some(t) => self.from_ms.is_none_or(|f| t >= f) && t <= self.until_ms,
        }
    }

    pub fn start_position(&self) -> StartPosition {
        match self.read_from_ms() {
            None => StartPosition::TrimHorizon,
            Some(ms) => StartPosition::AtTimestamp(ms.max(0)),
        }
    }
}

/// Parses a grace period: `90` (seconds), `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a duration; expected e.g. 30s, 5m, 1h, 500ms or a number of seconds"
        )
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "" | "s" | "sec" | "secs" => n.checked_mul(1000),
        "ms" => Some(n),
        "m" | "min" | "mins" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}
