//! `fanoutctl consumers move`: a KCL application's lease table rewritten from one stream of a
//! migration to its counterpart, each shard's checkpoint translated (docs/runbook.md, "Consumers"; docs/controller.md).

use std::process::ExitCode;

use fanout::aws::control::AwsControl;
use fanout::aws::kcl::KclTable;
use fanout::aws::positions::stream_created_s;
use fanout::aws::verifications::{assumed_role_config, caller_identity};
use fanout::control::commands::{record_outside, CommandName, ConsumerSpec};
use fanout::kcl::{
    move_so_far, plan_move, seen_by_shard, still_held, stream_identifier, KclLease, MoveMarker,
    NewLease,
};
use fanout::verify::parse_duration;

use crate::positions::{
    clients, duplicate_lines, resolve_move, shards_of, translate, ConsumerAt, Where,
};

#[derive(clap::Subcommand, Debug)]
pub enum ConsumersCommand {
    /// Move a KCL 2.x/3.x application from one of the migration's streams to its
    /// counterpart: its lease table's leases of --from are replaced by leases of --to whose
    /// checkpoints are the translated positions (`positions translate`), so the application
    /// resumes there with nothing missed. The application must be stopped: the leases are
    /// read twice, --owner-wait apart, and nothing is changed if a lease counter moved.
    /// Exit 0: moved (or the dry run's plan); 2: error; 3: refused (a worker holds leases).
    ///
    /// Example:
    ///   fanoutctl consumers move --kcl-table billing-app --from orders-old --to orders --dry-run
    #[command(verbatim_doc_comment)]
    Move(MoveArgs),
    /// Register a Lambda consumer (its event source mapping) of one of the migration's
    /// streams. The flips then switch the mapping:
    ///   - on a new stream (mapping in the new account): off while producers are on the old
    ///     streams (unless --from-start), on from the cutover, off again at a rollback;
    ///   - on an old stream (mapping in the old account): on until the commit, off from it.
    ///     With --moves-to-function, the commit also creates a mapping of that function on
    ///     the new stream, starting (AT_TIMESTAMP) where the old mapping stopped.
    ///
    /// The mapping is set as the current state asks at once (see --dry-run).
    ///
    /// Examples:
    ///   fanoutctl consumers add --name billing --function billing-new --stream orders
    ///   fanoutctl consumers add --name audit --function audit --stream orders-old \
    ///     --moves-to-function audit-new --lag-allowance 5m
    #[command(verbatim_doc_comment)]
    Add(AddArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub common: crate::control::Common,
    /// A name for the consumer (status, history).
    #[arg(long)]
    pub name: String,
    /// The function its mapping invokes (name or ARN).
    #[arg(long)]
    pub function: String,
    /// The stream it reads (name or ARN): a new stream, or an old one.
    #[arg(long)]
    pub stream: String,
    /// The mapping's UUID, when the function has several on the stream.
    #[arg(long)]
    pub mapping: Option<String>,
    /// On from the start (the new environment tests with replicated traffic), not only
    /// once producers are on the new streams.
    #[arg(long)]
    pub from_start: bool,
    /// A consumer of an old stream: at the commit, move it to the new stream with a new
    /// mapping of this function (name or ARN, in the new account).
    #[arg(long)]
    pub moves_to_function: Option<String>,
    /// With --moves-to-function: how far behind the old mapping may be when the commit
    /// switches it off (its IteratorAge); the new mapping starts that much earlier, so
    /// records in between may be processed twice.
    #[arg(long, requires = "moves_to_function")]
    pub lag_allowance: Option<String>,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct MoveArgs {
    #[command(flatten)]
    pub at: Where,
    /// The application's lease table (KCL names it after the application).
    #[arg(long)]
    pub kcl_table: String,
    /// Role to assume for the lease table (when it is in another account).
    #[arg(long)]
    pub kcl_role_arn: Option<String>,
    /// How long to watch the lease counters for a live worker before changing anything
    /// (longer than the application's failover time, KCL's default 10 s).
    #[arg(long, default_value = "20s")]
    pub owner_wait: String,
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (the change ticket): recorded in the migration's history with the move.
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn consumers(command: ConsumersCommand) -> Result<ExitCode, String> {
    match command {
        ConsumersCommand::Move(args) => move_leases(args).await,
        ConsumersCommand::Add(args) => {
            let mut req = crate::control::request(&args.common, CommandName::ConsumerAdd);
            req.consumers = vec![ConsumerSpec {
                name: args.name,
                function: args.function,
                stream: args.stream,
                mapping: args.mapping,
                from_start: args.from_start,
                moves_to_function: args.moves_to_function,
                lag_allowance: args.lag_allowance,
            }];
            req.dry_run = args.dry_run;
            req.reason = args.reason;
            crate::control::run(&args.common, req).await
        }
    }
}

async fn move_leases(args: MoveArgs) -> Result<ExitCode, String> {
    let wait = parse_duration(&args.owner_wait).map_err(|e| format!("--owner-wait: {e}"))?;
    let clients = clients(&args.at).await;
    let mv = resolve_move(&clients, &args.at).await?;
    let kcl_sdk = match &args.kcl_role_arn {
        Some(role) => assumed_role_config(&clients.new, role, None).await,
        None => clients.new.clone(),
    };
    let table = KclTable::new(&kcl_sdk, &args.kcl_table);
    let read = || async {
        table
            .leases()
            .await
            .map_err(|e| format!("cannot read lease table {}: {e}", table.name()))
    };
    let from = mv.from.to_string();
    let (account, name) = (mv.from.account(), mv.from.name());
    let first = read().await?;
    let (originals, _) = move_so_far(&first, &from, account, name);
    if originals.is_empty() {
        return Err(format!(
            "lease table {} has no leases of {} ({} leases in all): check --kcl-table (a KCL \
             application's table is named after the application) and --from",
            table.name(),
            mv.from,
            first.len()
        ));
    }
    // Every lease the move touches: the source stream's, and any a stopped run already wrote.
    let involved = |all: &[KclLease]| -> Vec<KclLease> {
        all.iter()
            .filter(|l| {
                originals.iter().any(|o| o.key == l.key)
                    || l.moved.as_ref().is_some_and(|m| m.from == from)
            })
            .cloned()
            .collect()
    };
    let watched = involved(&first);
    eprintln!(
        "{} leases of {} in {}. Watching their counters for {} (a running worker raises them)…",
        watched.len(),
        name,
        table.name(),
        fanout::time::human_secs(wait.as_secs_f64())
    );
    tokio::time::sleep(wait).await;
    let second = read().await?;
    let now = involved(&second);
    let held = still_held(&watched, &now);
    if !held.is_empty() {
        println!(
            "REFUSED: the application is still running: {} of its leases were renewed in the last {}:",
            held.len(),
            fanout::time::human_secs(wait.as_secs_f64())
        );
        for l in &held {
            let before = watched
                .iter()
                .find(|m| m.key == l.key)
                .map_or(0, |m| m.counter);
            println!(
                "  {}  owner {}  leaseCounter {} → {}",
                l.key,
                l.owner.as_deref().unwrap_or("-"),
                before,
                l.counter
            );
        }
        println!(
            "Stop every worker of the application (all instances, on both sides), then run this \
             again. Nothing was changed."
        );
        return Ok(ExitCode::from(3));
    }
    let (originals, written) = move_so_far(&second, &from, account, name);
    let original_refs: Vec<&KclLease> = originals.iter().collect();
    let seen = seen_by_shard(&original_refs);
    let (translation, _) = translate(&clients, &args.at, &mv, &ConsumerAt::Shards(seen)).await?;
    let to_shards = shards_of(&clients, &mv.to, mv.to_old).await?;
    let identifier = if originals.iter().any(|l| l.stream.is_some()) {
        let sdk = if mv.to_old {
            &clients.old
        } else {
            &clients.new
        };
        let created = stream_created_s(sdk, &mv.to)
            .await
            .map_err(|e| format!("cannot describe {}: {}: {}", mv.to, e.code, e.message))?;
        if created <= 0 {
            return Err(format!(
                "{} has no creation time, which a multi-stream lease key needs",
                mv.to
            ));
        }
        Some(stream_identifier(mv.to.account(), mv.to.name(), created))
    } else {
        None
    };
    let plan = plan_move(
        &original_refs,
        &to_shards,
        translation,
        identifier.as_deref(),
    );
    // What is left to do: leases not yet written, source leases still there. A lease of the
    // destination that is neither a source lease nor one a move wrote is the application's
    // own (a child shard's, taken since): it is kept as it is.
    let theirs = |key: &str| {
        second.iter().any(|l| l.key == key)
            && !written.iter().any(|w| w == key)
            && !originals.iter().any(|o| o.key == key)
    };
    let to_write: Vec<&NewLease> = plan
        .add
        .iter()
        .filter(|a| !written.contains(&a.key) && !theirs(&a.key))
        .collect();
    let to_drop: Vec<&KclLease> = plan
        .remove
        .iter()
        .filter(|r| now.iter().any(|l| l.key == r.key && l.moved.is_none()))
        .collect();
    if to_write.is_empty() && to_drop.is_empty() {
        println!(
            "Already moved: the leases of {} in {} are {}'s, written by an earlier `consumers \
             move` from {}. Nothing to do; start the application on {}.",
            name,
            table.name(),
            mv.to.name(),
            name,
            mv.to
        );
        return Ok(ExitCode::SUCCESS);
    }

    println!(
        "{} {} → {} in lease table {}{}:",
        if args.dry_run { "Would move" } else { "Moving" },
        name,
        mv.to.name(),
        table.name(),
        if written.is_empty() {
            String::new()
        } else {
            format!(
                " (finishing a move stopped part-way: {} leases were written)",
                written.len()
            )
        }
    );
    for l in &originals {
        println!("  was   {}  checkpoint {}", l.key, l.checkpoint);
    }
    for a in &plan.add {
        let done = if written.contains(&a.key) {
            "  [written already]"
        } else if theirs(&a.key) {
            "  [kept: the application's own lease]"
        } else {
            ""
        };
        println!(
            "  new   {}  checkpoint {}  ({}){done}",
            a.key, a.checkpoint, a.because
        );
    }
    for r in &to_drop {
        println!("  drop  {}", r.key);
    }
    println!(
        "Records the application may process twice (sequence numbers of the original records):"
    );
    for line in duplicate_lines(&plan.translation) {
        println!("{line}");
    }
    if args.dry_run {
        println!("Dry run: nothing changed.");
        return Ok(ExitCode::SUCCESS);
    }
    let tagged = originals.iter().any(|l| l.tagged);
    let marker = MoveMarker::of(&from, &original_refs);
    for a in &to_write {
        let counter = second.iter().find(|l| l.key == a.key).map(|l| l.counter);
        table.put(a, counter, tagged, &marker).await.map_err(|e| {
            format!(
                "lease {} was not written ({e}); a worker may have started: stop it and run this \
                 again (it carries on where this one stopped)",
                a.key
            )
        })?;
    }
    for r in &to_drop {
        table.delete(r).await.map_err(|e| {
            format!(
                "lease {} of {} was not deleted ({e}): a worker may have started; stop it and \
                 run this again (it carries on where this one stopped)",
                r.key, name
            )
        })?;
    }
    let done = format!(
        "Moved: {} leases of {} written, {} of {} removed. Start the application on {}.",
        to_write.len(),
        mv.to.name(),
        to_drop.len(),
        name,
        mv.to
    );
    println!("{done}");
    // In the migration's history, with who did it: the move changed where an application
    // reads, as much as a flip does.
    let control = AwsControl::new(&clients.new, &clients.old, &args.at.table);
    let recorded = match caller_identity(&clients.new).await {
        Ok(actor) => record_outside(
            &control,
            &args.at.migration,
            &actor,
            "consumers_move",
            args.reason.clone(),
            format!(
                "KCL lease table {}: {} → {}: {} leases written, {} removed ({})",
                table.name(),
                mv.from,
                mv.to,
                to_write.len(),
                to_drop.len(),
                to_write
                    .iter()
                    .map(|a| format!("{} from {}", a.key, a.checkpoint))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    };
    if let Err(e) = recorded {
        eprintln!(
            "WARNING: the move is done, but it is NOT in the migration's history ({e}). Record \
             it in your change ticket."
        );
    }
    Ok(ExitCode::SUCCESS)
}
