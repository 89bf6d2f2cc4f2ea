//! `fanoutctl`: the on-call CLI of fanout.
//!
//! Configuration comes from the same `FANOUT_*` environment variables as the replicator
//! Lambda (see the README's configuration reference); AWS credentials and endpoints the usual
//! way (`AWS_PROFILE`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fanout::aws::source::StartPosition;
use fanout::control::commands::CommandName;

mod backfill;
mod capacity;
mod consumers;
mod control;
mod positions;
mod redrive;
mod replicate;
mod verify;

use backfill::BackfillArgs;
use capacity::CapacityArgs;
use redrive::RedriveArgs;
use replicate::ReplicateArgs;
use verify::VerifyArgs;

/// Replicate Kinesis streams between AWS accounts, losslessly and in per-key order.
#[derive(Parser, Debug)]
#[command(name = "fanoutctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a source stream's shards and feed them to the replicator, with the rules of
    /// Lambda's event source mapping. Runs until Ctrl-C, or until caught up with
    /// `--until-caught-up`.
    ///
    /// Example:
    ///   fanoutctl replicate --from trim-horizon --until-caught-up
    Replicate(ReplicateArgs),
    /// Replicate one time window of the source stream (records already in it, e.g. from
    /// before live replication started) into the target, then stop. Its positions are kept
    /// apart from the live route's; run the same command again to resume it.
    ///
    /// Example:
    ///   fanoutctl backfill --from 2026-11-22T03:00:00Z --until 2026-11-22T04:00:00Z
    Backfill(BackfillArgs),
    /// Replay dead letters into their target, in order, removing each once written.
    ///
    /// Dead letters are replayed in sequence order per shard (parent shards first) through
    /// the replicator's write path, so per-key order is kept. Each dead letter is removed
    /// (or, with --keep, marked) only after its record is confirmed written; what cannot be
    /// written stays in place and is listed with what to do.
    /// Exit code 0: all replayed; 1: some left in place for a person;
    /// 2: an error stopped a route or shard (what it had not replayed is left in place).
    ///
    /// Example:
    ///   fanoutctl redrive --dry-run
    ///   fanoutctl redrive --route orders--222222222222--orders
    #[command(verbatim_doc_comment)]
    Redrive(RedriveArgs),
    /// Compare a source stream with its replica over a time window: records missing from
    /// the target, duplicated, out of per-key order, or foreign. Exit code 0 only when clean
    /// (duplicates allowed), 1 when not, 2 on error. Stores the result in the state table.
    ///
    /// Example:
    ///   fanoutctl verify --from 2026-11-22T03:00:00Z --until 2026-11-22T04:00:00Z
    Verify(VerifyArgs),
    /// Whether each route's order mode keeps up with its traffic: reads the newest --window
    /// of every open shard (the source, and the target where producers write before the
    /// first cutover), measures the round trip to the target through the writer role, and
    /// says per shard and per mode (strict, runs, aggregated) what is needed, what the mode
    /// sustains, and the margin. Writes nothing.
    /// Exit code 0: every route keeps up in its configured mode; 1: one does not (the
    /// verdict names the shard, the key and the mode that would); 2: a route could not be
    /// checked (the reason and the fix).
    ///
    /// Example:
    ///   fanoutctl capacity
    ///   fanoutctl capacity --route orders--222222222222--orders --window 2m
    ///   fanoutctl capacity --assume-rtt-ms 30      # what if the target were 30 ms away
    #[command(verbatim_doc_comment)]
    Capacity(CapacityArgs),
    /// Start a migration: one logical stream per route of FANOUT_ROUTES, producers on the old
    /// streams, replication forward; publishes the routing document.
    ///
    /// Example:
    ///   fanoutctl start --migration orders-move --two-person
    #[command(verbatim_doc_comment)]
    Start(control::StartArgs),
    /// The migration at a glance: state, routing, per-shard lag and heartbeats, dead letters,
    /// last flips. `--watch` refreshes it every 2 seconds.
    Status(control::StatusArgs),
    /// What a flip would do and what every guard says now; changes nothing.
    ///
    /// Example:
    ///   fanoutctl plan cutover --migration orders-move
    #[command(verbatim_doc_comment)]
    Plan(control::PlanArgs),
    /// Move producers to the new streams: guards, hold producers, let replication catch up,
    /// switch routing, release. Exit 0 done (or already cut over), 2 failed or the drain timed
    /// out (producers released unswitched), 3 refused (guard or state), 4 lost a race,
    /// 5 waiting for a second person's approval.
    ///
    /// Example:
    ///   fanoutctl cutover --migration orders-move --reason "CHG-1234" --dry-run
    #[command(verbatim_doc_comment)]
    Cutover(control::FlipArgs),
    /// Move producers back to the old streams: hold them, let forward replication catch up,
    /// switch routing, stop forward replication, release. Exit codes as for cutover.
    Rollback(control::FlipArgs),
    /// Make the cutover final: forward replication stops; the old side is no longer fed.
    /// Exit codes as for cutover.
    Commit(control::FlipArgs),
    /// Hold replication: nothing is written, records wait in the source streams.
    Pause(control::PauseArgs),
    /// Undo `pause`.
    Resume(control::PauseArgs),
    /// Every command attempt, oldest first: who, when, why, from/to, outcome, guards.
    History(control::HistoryArgs),
    /// Dead letters and the migration: acknowledge them after looking.
    #[command(subcommand)]
    Dlq(control::DlqCommand),
    /// Translate a consumer's positions between a stream and its counterpart.
    #[command(subcommand)]
    Positions(positions::PositionsCommand),
    /// Move consumers between the old and new streams (KCL lease tables).
    #[command(subcommand)]
    Consumers(consumers::ConsumersCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    restore_default_sigpipe();
    fanout::cli::init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Replicate(args) => report("replicate", replicate::replicate(args).await),
        Command::Backfill(args) => report("backfill", backfill::backfill(args).await),
        Command::Redrive(args) => report("redrive", redrive::redrive(args).await),
        Command::Verify(args) => report("verify", verify::verify(args).await),
        Command::Capacity(args) => report("capacity", capacity::capacity(args).await),
        Command::Start(args) => report("start", control::start(args).await),
        Command::Status(args) => report("status", control::status(args).await),
        Command::Plan(args) => report("plan", control::plan(args).await),
        Command::Cutover(args) => {
            report("cutover", control::flip(args, CommandName::Cutover).await)
        }
        Command::Rollback(args) => {
            report("rollback", control::flip(args, CommandName::Rollback).await)
        }
        Command::Commit(args) => report("commit", control::flip(args, CommandName::Commit).await),
        Command::Pause(args) => report("pause", control::pause(args, CommandName::Pause).await),
        Command::Resume(args) => report("resume", control::pause(args, CommandName::Resume).await),
        Command::History(args) => report("history", control::history(args).await),
        Command::Dlq(cmd) => report("dlq", control::dlq(cmd).await),
        Command::Positions(cmd) => report("positions", positions::positions(cmd).await),
        Command::Consumers(cmd) => report("consumers", consumers::consumers(cmd).await),
    }
}

fn report(command: &str, result: Result<ExitCode, String>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanoutctl {command}: {e}");
            ExitCode::from(2)
        }
    }
}

pub fn parse_start(from: &str) -> Result<StartPosition, String> {
    match from {
        "trim-horizon" | "TRIM_HORIZON" => Ok(StartPosition::TrimHorizon),
        "latest" | "LATEST" => Ok(StartPosition::Latest),
        t => chrono::DateTime::parse_from_rfc3339(t)
            .map(|d| StartPosition::AtTimestamp(d.timestamp_millis()))
            .map_err(|_| format!("--from {t:?}: expected trim-horizon, latest, or an RFC 3339 time like 2026-11-22T03:00:00Z")),
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`fanoutctl history | head`) panics
/// with "failed printing to stdout". A command-line tool should end quietly instead, as
/// `grep` or `cat` do: put the default action back.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: signal() only sets the process-wide disposition of SIGPIPE to a valid value;
    // it touches no memory Rust manages, and nothing in fanoutctl installs its own handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(
            parse_start("trim-horizon").unwrap(),
            StartPosition::TrimHorizon
        );
        assert_eq!(parse_start("latest").unwrap(), StartPosition::Latest);
        assert_eq!(
            parse_start("1970-01-01T00:00:01Z").unwrap(),
            StartPosition::AtTimestamp(1000)
        );
        assert!(parse_start("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
