//! The report: its verdict, its text rendering and its stored form.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// The report

impl Report {
    /// Builds the report from merged findings.
    pub fn new(
        opts: &VerifyOptions,
        mut findings: Findings,
        dead: &DeadLetterIndex,
        timings: Timings,
        (source_shards, target_shards): (usize, usize),
        started_at_ms: i64,
        finished_at_ms: i64,
    ) -> Report {
        let t = &findings.totals;
        let mut warnings = Vec::new();
        if t.source_in_window == 0 {
            warnings.push(
                "The source has no records in the window: nothing was verified. Check --from, \
                 --until and --source."
                    .to_owned(),
            );
        }
        if dead.location.is_none() {
            warnings.push(
                "The dead-letter store was not checked (no FANOUT_DEAD_LETTER_BUCKET): records \
                 the replicator dead-lettered are counted as missing."
                    .to_owned(),
            );
        }
        // Failures first, then by key.
        findings
            .keys
            .sort_by(|a, b| b.is_failure().cmp(&a.is_failure()).then(a.key.cmp(&b.key)));
        let w = &opts.window;
        Report {
            verdict: if t.is_clean() {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            route: opts.route.clone(),
            source: opts.source.to_string(),
            target: opts.target.to_string(),
            window: WindowReport {
                from: w
                    .from_ms
                    .map(rfc3339)
                    .unwrap_or_else(|| "trim-horizon".to_owned()),
                from_ms: w.from_ms,
                until: rfc3339(w.until_ms),
                until_ms: w.until_ms,
                grace_ms: w.grace_ms,
            },
            partitions: opts.partitions.max(1),
            source_shards,
            target_shards,
            keys_with_findings: findings.keys.len(),
            totals: findings.totals,
            keys: findings.keys,
            example_cap: opts.example_cap,
            dead_letters: DeadLetterReport {
                checked: dead.location.is_some(),
                location: dead.location.clone(),
                stored_for_route: dead.len(),
            },
            timings,
            started_at: rfc3339(started_at_ms),
            started_at_ms,
            finished_at: rfc3339(finished_at_ms),
            finished_at_ms,
            warnings,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The summary an on-call engineer reads: what failed, which keys, what to do next.
    /// Lists at most `max_keys` keys.
    pub fn render_text(&self, max_keys: usize) -> String {
        let t = &self.totals;
        let mut o = String::new();
        let secs = |ms: u64| ms as f64 / 1000.0;
        let _ = writeln!(
            o,
            "{}: {} (route {})",
            self.verdict.as_str(),
            match self.verdict {
                Verdict::Pass if t.duplicates > 0 =>
                    "every record in the window is in the target, in per-key order (duplicates allowed)",
                Verdict::Pass => "every record in the window is in the target, in per-key order",
                Verdict::Fail => "the target is NOT a faithful copy of the source in this window",
            },
            self.route
        );
        let _ = writeln!(
            o,
            "  source  {} ({} shards)",
            self.source, self.source_shards
        );
        let _ = writeln!(
            o,
            "  target  {} ({} shards)",
            self.target, self.target_shards
        );
        let _ = writeln!(
            o,
            "  window  {} .. {}  (grace {} s{})",
            self.window.from,
            self.window.until,
            self.window.grace_ms as f64 / 1000.0,
            if self.partitions > 1 {
                format!(", {} passes", self.partitions)
            } else {
                String::new()
            }
        );
        let _ = writeln!(o);
        let row = |o: &mut String, label: &str, n: u64, note: &str| {
            let line = format!("  {label:<28}{n:>10}  {note}");
            let _ = writeln!(o, "{}", line.trim_end());
        };
        row(&mut o, "source records in window", t.source_in_window, "");
        row(
            &mut o,
            "  context (grace margins)",
            t.source_context,
            "read, not judged",
        );
        row(&mut o, "target records read", t.target_read, "");
        row(&mut o, "matched", t.matched, "");
        row(
            &mut o,
            "missing",
            t.missing,
            if t.missing > 0 { "<- FAIL" } else { "" },
        );
        let dl_note = match &self.dead_letters.location {
            Some(loc) => format!("in {loc}"),
            None => "NOT CHECKED: no dead-letter bucket configured".to_owned(),
        };
        row(&mut o, "dead-lettered", t.dead_lettered, &dl_note);
        row(
            &mut o,
            "duplicates",
            t.duplicates,
            if t.duplicates > 0 {
                "allowed (at-least-once)"
            } else {
                ""
            },
        );
        row(
            &mut o,
            "out of order (per key)",
            t.out_of_order,
            if t.out_of_order > 0 { "<- FAIL" } else { "" },
        );
        row(
            &mut o,
            "extra (not from the source)",
            t.extra,
            if t.extra > 0 { "<- FAIL" } else { "" },
        );
        row(
            &mut o,
            "outside window",
            t.outside_window,
            "target records of the margins, not judged",
        );
        row(&mut o, "partition keys", t.keys, "");

        if !self.keys.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "Keys with findings ({} of {}{}):",
                self.keys.len().min(max_keys),
                self.keys_with_findings,
                if self.keys.len() > max_keys {
                    "; --output json lists them all"
                } else {
                    ""
                }
            );
            for k in self.keys.iter().take(max_keys) {
                let mut parts = Vec::new();
                let mut list = |n: u64, what: &str, ex: &[RecordRef]| {
                    if n > 0 {
                        let shown: Vec<String> = ex
                            .iter()
                            .take(3)
                            .map(|r| format!("{} {}", r.shard, r.sequence_number))
                            .collect();
                        let more = if n as usize > shown.len() {
                            ", …"
                        } else {
                            ""
                        };
                        parts.push(format!("{n} {what} [{}{more}]", shown.join(", ")));
                    }
                };
                list(k.missing, "missing", &k.examples.missing);
                list(k.out_of_order, "out of order", &k.examples.out_of_order);
                list(k.extra, "extra (target)", &k.examples.extra);
                list(k.duplicates, "duplicated", &k.examples.duplicates);
                list(k.dead_lettered, "dead-lettered", &k.examples.dead_lettered);
                let _ = writeln!(o, "  {:?}: {}", k.key, parts.join("; "));
            }
        }

        let mut next = Vec::new();
        if t.missing > 0 {
            next.push(format!(
                "{} in-window source record(s) have no copy in the target and no dead letter. Check that the \
                 replicator is running and caught up (MillisBehindNewest; ERROR lines naming a \
                 stopped shard). If replication lag can exceed the grace ({} s), re-run with a \
                 larger --grace or an earlier --until. Do not flip producers until this passes.",
                t.missing,
                self.window.grace_ms / 1000
            ));
        }
        if t.out_of_order > 0 {
            next.push(
                "Per-key order is broken: the replication path has a bug, or something else \
                 writes to the target. Do not flip; keep this report (--output json) and escalate."
                    .to_owned(),
            );
        }
        if t.extra > 0 {
            next.push(
                "The target holds records that did not come from the source in this window: a \
                 producer still writes to the target directly (not yet re-pointed?), or the \
                 route points at the wrong target. Find the producer before flipping."
                    .to_owned(),
            );
        }
        if t.dead_lettered > 0 {
            next.push(format!(
                "{} records were dead-lettered (not failures): review them in {} and redrive \
                 once the cause is fixed.",
                t.dead_lettered,
                self.dead_letters
                    .location
                    .as_deref()
                    .unwrap_or("the dead-letter bucket")
            ));
        }
        if !next.is_empty() || !self.warnings.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "What to do next:");
            for n in self.warnings.iter().chain(&next) {
                o.push_str(&wrap(n, "  - ", "    ", 96));
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Timings: read source {:.1} s, read target {:.1} s, compare {:.1} s (within the reads); total {:.1} s.",
            secs(self.timings.read_source_ms),
            secs(self.timings.read_target_ms),
            secs(self.timings.compare_ms),
            secs(self.timings.total_ms),
        );
        o
    }

    /// The stored form (no per-key detail).
    pub fn to_record(&self, actor: &str, host: &str) -> VerificationRecord {
        VerificationRecord {
            route: self.route.clone(),
            source_arn: self.source.clone(),
            target_arn: self.target.clone(),
            window_from: self.window.from.clone(),
            window_from_ms: self.window.from_ms,
            window_until: self.window.until.clone(),
            window_until_ms: self.window.until_ms,
            grace_ms: self.window.grace_ms,
            totals: self.totals.clone(),
            verdict: self.verdict,
            dead_letters_checked: self.dead_letters.checked,
            partitions: self.partitions,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            duration_ms: self.timings.total_ms,
            actor: actor.to_owned(),
            host: host.to_owned(),
            keys_with_findings: self.keys_with_findings as u64,
        }
    }
}

/// Word-wraps `text` to `width` columns, the first line after `first`, the others after `rest`.
pub(super) fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// One stored verification (what the controller reads before a flip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub route: String,
    pub source_arn: String,
    pub target_arn: String,
    /// RFC 3339, or "trim-horizon".
    pub window_from: String,
    pub window_from_ms: Option<i64>,
    pub window_until: String,
    pub window_until_ms: i64,
    pub grace_ms: i64,
    pub totals: Totals,
    pub verdict: Verdict,
    pub dead_letters_checked: bool,
    pub partitions: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub duration_ms: u64,
    /// Who ran it: the caller's ARN (STS GetCallerIdentity) or `$USER`.
    pub actor: String,
    pub host: String,
    pub keys_with_findings: u64,
}

impl VerificationRecord {
    /// Passed, and finished no earlier than `now_ms - max_age_ms`: what a flip can require.
    pub fn is_recent_pass(&self, now_ms: i64, max_age_ms: i64) -> bool {
        self.verdict == Verdict::Pass
            && self.totals.source_in_window > 0
            && now_ms.saturating_sub(self.finished_at_ms) <= max_age_ms
    }
}
