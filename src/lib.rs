//! `fanout` replicates Kinesis streams from a new AWS account into an old one, losslessly and
//! in per-key order, so a live system can move between accounts without downtime.
//!
//! Layers (each uses only the ones before it; `tests/layering.rs` checks it):
//! 1. [`domain`]: plain types and pure rules ([`seq`], [`model`], [`errors`], [`lineage`],
//!    [`time`], re-exported here), depending on nothing else;
//! 2. [`ports`]: the narrow traits the core needs (write path, [`ports::reader`],
//!    [`ports::control`]; also [`lease::LeaseStore`], [`redrive::DeadLetterArchive`],
//!    [`redrive::ShardLister`]);
//! 3. the core capabilities, with no AWS types ([`replicate`], [`runner`], [`verify`],
//!    [`redrive`], [`capacity`], [`control`], [`routing`], ...);
//! 4. the adapters in [`aws`], which implement the ports;
//! 5. the composition roots ([`aws::build_handler`], `fanoutctl`, the Lambdas), which build
//!    the AWS-backed parts and hand them to the core.
//!
//! Map of the crate:
//! - [`domain`]: [`seq`] (sequence numbers), [`model`] (routes, stream ARNs, records, write
//!   results, checkpoints), [`errors`] (every AWS error code sorted once into a kind),
//!   [`lineage`] (resharding: parents before children), [`time`] (epoch ms, RFC 3339).
//! - [`control`]: the migration state machine, guards and on-call commands.
//! - [`config`]: every setting, from `FANOUT_*` environment variables, validated.
//! - [`plan`]: pure planning: per-key heads, request packing, defects, backoff.
//! - [`pacing`]: the target's shard map and per-target-shard write pacing.
//! - [`kpl`]: the KPL aggregated record format (aggregate, deaggregate, hash keys).
//! - [`ports`]: the traits between the core and AWS (write path, shard reader, controller).
//! - [`replicate`]: the write path (skip, dead-letter, write in rounds, checkpoint).
//! - [`event`]: Lambda Kinesis events in, `batchItemFailures` out.
//! - [`handler`]: the replicator Lambda's handler, shared by the Lambda and local runs.
//! - [`metrics`]: CloudWatch embedded-metric-format lines.
//! - [`cli`]: shared set-up of the command-line programs.
//! - [`aws`]: the SDK adapters (the only place SDK types appear).
//! - [`lease`]: shard leases with a fencing counter, and the reader's position.
//! - [`redrive`]: replaying dead letters into their target, in order, removing each once written.
//! - [`progress`]: the one progress display (bars on a terminal, plain lines otherwise).
//! - [`runner`]: a local event-source runner with the event source mapping's rules.
//! - [`capacity`]: whether each order mode keeps up with a route's traffic (a pure model).
//! - [`verify`]: comparing a source with its replica (missing, duplicated, out of order).
//! - [`routing`]: the routing document producers follow, and the client a producer embeds.
//! - [`on_failure`]: the batches Lambda's event source mapping discarded (`aws/lambda/`).

pub mod aws;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod consumers;
pub mod control;
pub mod domain;
pub mod event;
pub mod handler;
pub mod kcl;
pub mod kpl;
pub mod lease;
pub mod metrics;
pub mod on_failure;
pub mod pacing;
pub mod plan;
pub mod ports;
pub mod progress;
pub mod redrive;
pub mod replicate;
pub mod routing;
pub mod runner;
pub mod verify;

pub use domain::{errors, lineage, model, positions, seq, time};

/// Locks a mutex, recovering the data if a panicking thread poisoned it: what fanout keeps
/// behind its mutexes (counters, caches, token buckets, progress lines) stays usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
