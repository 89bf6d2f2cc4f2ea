//! `fanoutctl positions translate`: where a consumer of one stream of a migration resumes on
//! its counterpart, from the position map the replicator records (docs/runbook.md, "Consumers"; docs/controller.md).

use std::collections::BTreeMap;
use std::process::ExitCode;

use aws_config::SdkConfig;
use fanout::aws::control::AwsControl;
use fanout::aws::load_sdk_config;
use fanout::aws::positions::{stream_shards, PositionMap};
use fanout::aws::verifications::{assumed_role_config, old_account_config};
use fanout::consumers::{combine, lambda_start, resolve, Direction, Move};
use fanout::control::commands::load_migration;
use fanout::model::StreamArn;
use fanout::positions::{
    source_time_to_target, source_to_target, target_time_to_source, target_to_source, Resume, Seen,
    ShardPositions, StreamShard, Translation,
};
use fanout::seq::SequenceNumber;
use fanout::verify::parse_duration;

use crate::Output;

#[derive(clap::Subcommand, Debug)]
pub enum PositionsCommand {
    /// Where a consumer of one of the migration's streams resumes on its counterpart with
    /// nothing missed, and which records it may see twice. Give the consumer's positions
    /// (--position, one per shard it has read) or a time it has processed everything before
    /// (--at). Shards not given count as not read at all.
    ///
    /// Example:
    ///   fanoutctl positions translate --from orders-old --to orders \
    ///     --position shardId-000000000000=49590338271490256608559692538361571095921575989136588898
    #[command(verbatim_doc_comment)]
    Translate(TranslateArgs),
}

/// Where the migration is and how to reach both accounts' streams.
#[derive(clap::Args, Debug, Clone)]
pub struct Where {
    /// The migration's name.
    #[arg(long, env = "FANOUT_MIGRATION")]
    pub migration: String,
    /// The state table (where the replicator records positions).
    #[arg(long, env = "FANOUT_TABLE")]
    pub table: String,
    /// The stream the consumer reads now (name or ARN; one of the migration's streams).
    #[arg(long)]
    pub from: String,
    /// The stream it moves to (the counterpart of --from).
    #[arg(long)]
    pub to: String,
    /// Role in the old account for listing its stream's shards (Terraform's
    /// `reader_role_arn` output). Default: FANOUT_WRITER_ROLE_ARN, else your credentials.
    #[arg(long, env = "FANOUT_READER_ROLE_ARN")]
    pub old_role_arn: Option<String>,
    /// Clock allowance for answers given as a time (the replicator's clock against
    /// Kinesis's arrival times).
    #[arg(long, default_value = "1s")]
    pub margin: String,
}

#[derive(clap::Args, Debug)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub at: Where,
    /// The consumer's position on one shard of --from: SHARD=SEQUENCE_NUMBER (the last
    /// record it processed), SHARD=SHARD_END (read to its end) or SHARD=TRIM_HORIZON
    /// (nothing yet). Repeat per shard.
    #[arg(long = "position", value_parser = parse_position, conflicts_with = "time")]
    pub positions: Vec<(String, Seen)>,
    /// Instead of positions: the consumer processed everything that arrived in --from
    /// before this time (RFC 3339).
    #[arg(long = "at", id = "time")]
    pub time: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

fn parse_position(text: &str) -> Result<(String, Seen), String> {
    let (shard, at) = text.split_once('=').ok_or_else(|| {
        format!(
            "--position {text:?}: expected SHARD=SEQUENCE_NUMBER, e.g. shardId-000000000000=4959…"
        )
    })?;
    let seen = match at {
        "SHARD_END" => Seen::All,
        "TRIM_HORIZON" | "LATEST" => Seen::Nothing,
        seq => Seen::Through(SequenceNumber::parse(seq).map_err(|e| {
            format!(
                "--position {text:?}: {e}; expected a sequence number, SHARD_END or TRIM_HORIZON"
            )
        })?),
    };
    Ok((shard.to_owned(), seen))
}

/// How far the consumer got.
pub enum ConsumerAt {
    Shards(BTreeMap<String, Seen>),
    Time(i64),
}

/// The clients a translation needs: the new account's (state table, new streams) and the
/// old account's streams'.
pub struct Clients {
    pub new: SdkConfig,
    pub old: SdkConfig,
}

pub async fn clients(at: &Where) -> Clients {
    let new = load_sdk_config().await;
    let old = match &at.old_role_arn {
        Some(role) if !role.is_empty() => assumed_role_config(&new, role, None).await,
        _ => old_account_config(&new).await,
    };
    Clients { new, old }
}

/// The migration's move from --from to --to.
pub async fn resolve_move(clients: &Clients, at: &Where) -> Result<Move, String> {
    let control = AwsControl::new(&clients.new, &clients.old, &at.table);
    let st = load_migration(&control, &at.migration)
        .await
        .map_err(|e| fanout::ports::control::ControlStore::locate(&control, e).to_string())?;
    resolve(&st.migration, &at.from, &at.to)
}

/// The shards of `stream` (in the old account when `old`).
pub async fn shards_of(
    clients: &Clients,
    stream: &StreamArn,
    old: bool,
) -> Result<Vec<StreamShard>, String> {
    let sdk = if old { &clients.old } else { &clients.new };
    stream_shards(sdk, stream).await.map_err(|e| {
        format!(
            "cannot list the shards of {stream}: {}: {}{}",
            e.code,
            e.message,
            if old {
                " (the old account's stream: give --old-role-arn, FANOUT_READER_ROLE_ARN)"
            } else {
                ""
            }
        )
    })
}

/// Translates the consumer's position on `mv.from` to `mv.to`, over every route that copies
/// between them. For a consumer at a time, also the one `AT_TIMESTAMP` for every shard of
/// `mv.to` a Lambda event source mapping needs (`Err`: why it is the trim horizon instead),
/// from the same positions.
pub async fn translate(
    clients: &Clients,
    at: &Where,
    mv: &Move,
    consumer: &ConsumerAt,
) -> Result<(Translation, Option<Result<i64, String>>), String> {
    let margin = parse_duration(&at.margin)
        .map_err(|e| format!("--margin: {e}"))?
        .as_millis() as i64;
    let map = PositionMap::new(&clients.new, &at.table);
    let to_shards = shards_of(clients, &mv.to, mv.to_old).await?;
    let to_ids: Vec<String> = to_shards.iter().map(|s| s.shard_id.clone()).collect();
    let now = fanout::time::now_ms();
    let mut answer: Option<Translation> = None;
    let mut read_back = BTreeMap::new();
    for leg in &mv.legs {
        let mut shards = map
            .shard_positions(&leg.route, now)
            .await
            .map_err(|e| format!("cannot read the positions of route {}: {e}", leg.route))?;
        let one = match leg.direction {
            Direction::TargetToSource => {
                // The route's source is `to`: every shard of it gets an answer.
                for sh in &to_shards {
                    if !shards.iter().any(|p| p.shard_id == sh.shard_id) {
                        shards.push(ShardPositions {
                            shard_id: sh.shard_id.clone(),
                            ..ShardPositions::default()
                        });
                    }
                }
                let ends: BTreeMap<String, SequenceNumber> = to_shards
                    .iter()
                    .filter_map(|s| Some((s.shard_id.clone(), s.ending.clone()?)))
                    .collect();
                let one = match consumer {
                    ConsumerAt::Shards(seen) => target_to_source(&shards, seen, &ends),
                    ConsumerAt::Time(t) => target_time_to_source(&shards, *t, margin),
                };
                read_back.insert(leg.route.clone(), shards.clone());
                one
            }
            Direction::SourceToTarget => match consumer {
                ConsumerAt::Shards(seen) => source_to_target(&shards, seen, &to_ids, margin),
                ConsumerAt::Time(t) => source_time_to_target(&to_ids, *t, margin),
            },
        };
        let mut one = one;
        let on = match leg.direction {
            Direction::TargetToSource => mv.to.name(),
            Direction::SourceToTarget => mv.from.name(),
        };
        for w in &mut one.duplicates {
            w.stream = on.to_owned();
        }
        answer = Some(match answer {
            None => one,
            Some(a) => combine(a, one),
        });
    }
    let lambda = match consumer {
        ConsumerAt::Time(t) => Some(lambda_start(mv, &read_back, &to_shards, *t, margin)),
        ConsumerAt::Shards(_) => None,
    };
    Ok((answer.unwrap_or_default(), lambda))
}

pub fn resume_words(r: &Resume) -> String {
    match r {
        Resume::TrimHorizon => "TRIM_HORIZON".to_owned(),
        Resume::After(seq) => format!("AFTER_SEQUENCE_NUMBER {seq}"),
        Resume::AtTimestamp(ms) => format!("AT_TIMESTAMP {}", fanout::time::rfc3339_ms(*ms)),
        Resume::Nothing => "nothing to read (SHARD_END)".to_owned(),
    }
}

pub fn translation_json(mv: &Move, t: &Translation) -> serde_json::Value {
    serde_json::json!({
        "from": mv.from.to_string(),
        "to": mv.to.to_string(),
        "routes": mv.legs.iter().map(|l| l.route.clone()).collect::<Vec<_>>(),
        "resume": t.resume.iter().map(|r| {
            let (kind, seq, ts) = match &r.resume {
                Resume::TrimHorizon => ("TRIM_HORIZON", None, None),
                Resume::After(s) => ("AFTER_SEQUENCE_NUMBER", Some(s.to_string()), None),
                Resume::AtTimestamp(ms) => ("AT_TIMESTAMP", None, Some(fanout::time::rfc3339_ms(*ms))),
                Resume::Nothing => ("SHARD_END", None, None),
            };
            serde_json::json!({
                "shard_id": r.shard_id,
                "type": kind,
                "sequence_number": seq,
                "timestamp": ts,
                "because": r.because,
            })
        }).collect::<Vec<_>>(),
        "may_repeat": t.duplicates.iter().map(|w| serde_json::json!({
            "stream": w.stream,
            "shard_id": w.shard_id,
            "after": w.after.as_ref().map(|s| s.to_string()),
            "through": w.through.as_ref().map(|s| s.to_string()),
        })).collect::<Vec<_>>(),
    })
}

/// The duplicates part of a translation, in words.
pub fn duplicate_lines(t: &Translation) -> Vec<String> {
    t.duplicates
        .iter()
        .map(|w| {
            let range = match (&w.after, &w.through) {
                (Some(a), Some(b)) if a >= b => {
                    return format!("  {} {}: none", w.stream, w.shard_id)
                }
                (Some(a), Some(b)) => format!("after {a} through {b}"),
                (Some(a), None) => format!("after {a} (to the last record replicated)"),
                (None, Some(b)) => format!("through {b}"),
                (None, None) => "any (no recorded position bounds it)".to_owned(),
            };
            format!("  {} {}: records {range}", w.stream, w.shard_id)
        })
        .collect()
}

pub async fn positions(command: PositionsCommand) -> Result<ExitCode, String> {
    let PositionsCommand::Translate(args) = command;
    let consumer = match &args.time {
        Some(t) => ConsumerAt::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| {
                    format!("--at {t:?}: expected an RFC 3339 time like 2026-11-22T03:00:00Z")
                })?
                .timestamp_millis(),
        ),
        None => ConsumerAt::Shards(args.positions.iter().cloned().collect()),
    };
    let clients = clients(&args.at).await;
    let mv = resolve_move(&clients, &args.at).await?;
    let (t, lambda) = translate(&clients, &args.at, &mv, &consumer).await?;
    match args.output {
        Output::Json => {
            let mut v = translation_json(&mv, &t);
            if let Some(l) = &lambda {
                v["lambda_start"] = match l {
                    Ok(ms) => serde_json::json!({
                        "type": "AT_TIMESTAMP",
                        "timestamp": fanout::time::rfc3339_ms(*ms),
                    }),
                    Err(why) => serde_json::json!({"type": "TRIM_HORIZON", "because": why}),
                };
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
            )
        }
        Output::Text => {
            let routes: Vec<&str> = mv.legs.iter().map(|l| l.route.as_str()).collect();
            println!("{} → {} (routes: {})", mv.from, mv.to, routes.join(", "));
            println!("Resume on {}:", mv.to.name());
            for r in &t.resume {
                println!(
                    "  {}  {}  ({})",
                    r.shard_id,
                    resume_words(&r.resume),
                    r.because
                );
            }
            println!("May be seen twice (sequence numbers of the original records):");
            for line in duplicate_lines(&t) {
                println!("{line}");
            }
            match &lambda {
                Some(Ok(ms)) => println!(
                    "Lambda mapping on {} (one start for every shard): --starting-position \
                     AT_TIMESTAMP --starting-position-timestamp {}",
                    mv.to.name(),
                    fanout::time::rfc3339_ms(*ms)
                ),
                Some(Err(why)) => println!(
                    "Lambda mapping on {} (one start for every shard): --starting-position \
                     TRIM_HORIZON ({why})",
                    mv.to.name()
                ),
                None => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_bad_ones_say_what_is_expected() {
        let (shard, seen) = parse_position("shardId-000000000001=4959").unwrap();
        assert_eq!(shard, "shardId-000000000001");
        assert_eq!(seen, Seen::Through(SequenceNumber::parse("4959").unwrap()));
        assert_eq!(parse_position("s=SHARD_END").unwrap().1, Seen::All);
        assert_eq!(parse_position("s=TRIM_HORIZON").unwrap().1, Seen::Nothing);
        let err = parse_position("shardId-000000000001").unwrap_err();
        assert!(err.contains("expected SHARD=SEQUENCE_NUMBER"), "{err}");
        let err = parse_position("s=49x").unwrap_err();
        assert!(
            err.contains("\"s=49x\"") && err.contains("SHARD_END or TRIM_HORIZON"),
            "{err}"
        );
    }
}
