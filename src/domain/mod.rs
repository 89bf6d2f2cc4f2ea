//! The domain: plain types and pure rules every layer shares, with no AWS types and no I/O.
//! Re-exported at the crate root (`crate::seq`, `crate::model`, ...).
//!
//! - [`seq`]: sequence numbers (56-digit decimals compared numerically, stored padded).
//! - [`model`]: routes, stream ARNs, records, write results, checkpoints, the dead-letter
//!   envelope.
//! - [`errors`]: every AWS error code sorted once into a kind; classes and fixes follow.
//! - [`lineage`]: resharding: which shards may be read now (parents before children).
//! - [`positions`]: translating a consumer's positions between a route's two sides.
//! - [`time`]: epoch milliseconds, RFC 3339, short durations.

pub mod errors;
pub mod lineage;
pub mod model;
pub mod positions;
pub mod seq;
pub mod time;
