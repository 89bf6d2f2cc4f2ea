//! Verifying a replica: for a source stream, its target and a time window, which source
//! records are missing from the target, which are duplicated, which arrived out of per-key
//! order (first arrivals compared with source order), and which target records did not come
//! from the source. `fanoutctl verify` drives it; `docs/verify.md` explains the output.
//!
//! Records are matched by a 128-bit digest of (partition key, data): the source side keeps,
//! per record, the digest (in the index), its position within its key, its sequence number in
//! 24 bytes and a few flags; per partition key a little order state. Payloads are never kept,
//! so memory grows with the number of records, not their size; `partitions` > 1 splits the
//! keys into that many passes, each keeping only its share.
//!
//! Source records with the same key and data are matched to target copies in source order.
//!
//! Three layers:
//! - [`Verifier`]: the pure engine (feed source records, then target records, then `finish`).
//! - [`run`]: reads both streams over a [`Window`] with a [`ShardReader`] and runs the engine.
//! - [`Report`]: the result, its verdict, its text rendering and its stored form.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use foldhash::quality::SeedableRandomState;
use foldhash::SharedSeed;
use serde::{Deserialize, Serialize};

use crate::model::{RequestError, SourceRecord, StreamArn};
use crate::ports::reader::{ShardReader, StartPosition};
use crate::progress::Progress;
use crate::seq::SequenceNumber;
use crate::time::{now_ms, rfc3339_ms as rfc3339};

mod compare;
mod digest;
mod engine;
mod read;
mod report;
mod window;

pub use compare::*;
pub use digest::*;
pub use engine::*;
pub use read::*;
pub use report::*;
pub use window::*;

#[cfg(test)]
mod tests;
