//! The routing document producers follow during a migration, and the client a Rust producer
//! embeds to follow it.
//!
//! One document per migration says, for each logical stream, which stream ARN producers write
//! to now and whether they must hold (stop writing, buffer) while a cutover is under way. The
//! document only moves forward: every change raises its `version`, and [`RoutingClient`] never
//! goes back to an older one. Where the document lives is a [`RoutingSource`]
//! (`crate::aws::routing::S3Routing` in S3); this module has no SDK types.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::lock;
use crate::model::StoreError;

/// The only document format this client reads and writes.
pub const FORMAT: u64 = 1;

/// Whether producers of a logical stream write now or wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    /// Write to the stream named by [`StreamRouting::active`].
    Active,
    /// Write nowhere: buffer until the mode is active again (a cutover is switching streams).
    Hold,
}

/// Where one logical stream's producers write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRouting {
    /// ARN of the stream producers write to while the mode is active.
    pub active: String,
    pub mode: StreamMode,
    /// Raised on every change of this stream's routing.
    pub version: u64,
    /// When this stream's routing last changed (Unix milliseconds).
    pub changed_at_ms: i64,
    /// Who changed it (a person or a tool), for whoever reads the document next.
    pub changed_by: String,
    /// Why it changed.
    pub reason: String,
}

/// The routing of every logical stream of one migration (JSON format 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingDocument {
    /// The migration's name.
    pub migration: String,
    /// Raised on every change to the document; readers ignore a document older than one seen.
    pub version: u64,
    /// When the document was last changed (Unix milliseconds).
    pub updated_at_ms: i64,
    /// Routing per logical stream name.
    pub streams: BTreeMap<String, StreamRouting>,
}

/// The JSON form written: `format` first, and `updated_at` for people reading the object.
#[derive(Serialize)]
struct WireOut<'a> {
    format: u64,
    migration: &'a str,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    updated_at_ms: i64,
    streams: &'a BTreeMap<String, StreamRouting>,
}

/// The JSON form read (`format` checked before, `updated_at` ignored).
#[derive(Deserialize)]
struct WireIn {
    migration: String,
    version: u64,
    updated_at_ms: i64,
    streams: BTreeMap<String, StreamRouting>,
}

/// Just the `format` field, read first so a document of another format is reported as such
/// rather than as a field this version does not know.
#[derive(Deserialize)]
struct FormatProbe {
    format: Option<serde_json::Value>,
}

impl RoutingDocument {
    /// The document as indented JSON, with `"format": 1` and a human-readable `updated_at`.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let wire = WireOut {
            format: FORMAT,
            migration: &self.migration,
            version: self.version,
            updated_at: chrono::DateTime::from_timestamp_millis(self.updated_at_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            updated_at_ms: self.updated_at_ms,
            streams: &self.streams,
        };
        // Cannot fail: string map keys and derived impls only.
        serde_json::to_vec_pretty(&wire).expect("a routing document serialises to JSON")
    }

    /// Parses a document read from `location` (named in the error, with what is wrong).
    pub fn from_json(bytes: &[u8], location: &str) -> Result<Self, RoutingError> {
        let bad = |problem: String| RoutingError::BadDocument {
            location: location.to_owned(),
            problem,
        };
        let probe: FormatProbe =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON object ({e})")))?;
        match probe.format {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT) => {}
            Some(other) => {
                return Err(bad(format!(
                    "\"format\" is {other}, but this client reads format {FORMAT} only \
                     (a newer fanout wrote it: upgrade the producer's fanout)"
                )))
            }
            None => {
                return Err(bad(format!(
                    "no \"format\" field: not a fanout routing document \
                     (expected \"format\": {FORMAT})"
                )))
            }
        }
        let wire: WireIn =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("format {FORMAT}: {e}")))?;
        for (name, routing) in &wire.streams {
            if routing.mode == StreamMode::Active && routing.active.trim().is_empty() {
                return Err(bad(format!(
                    "stream {name:?} is active but its \"active\" stream ARN is empty"
                )));
            }
        }
        Ok(RoutingDocument {
            migration: wire.migration,
            version: wire.version,
            updated_at_ms: wire.updated_at_ms,
            streams: wire.streams,
        })
    }
}

/// Why [`RoutingClient::resolve`] (or parsing a document) gave no stream to write to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Nothing is published where the producer looks.
    #[error(
        "No routing document at {location}: nothing has been published there yet. Publish the \
         migration's routing document there, or point the producer at the bucket and key it \
         was published to."
    )]
    NoDocument { location: String },
    /// The document does not route this logical stream.
    #[error(
        "Logical stream {stream:?} is not in the routing document at {location} (it routes: \
         {}). Check the producer's stream name, or publish a document that routes it.",
        if known.is_empty() { "nothing".to_owned() } else { known.join(", ") }
    )]
    UnknownStream {
        stream: String,
        known: Vec<String>,
        location: String,
    },
    /// The stream stayed on hold for the whole `max_hold_wait`.
    #[error(
        "Logical stream {stream:?} is still on hold after {waited:?}: a cutover is under way. \
         Buffer its records and resolve again later; if the hold lasts, ask whoever ran the \
         cutover (the document's changed_by and reason say who and why)."
    )]
    HeldTooLong { stream: String, waited: Duration },
    /// The document could not be read, and no earlier copy is cached.
    #[error(
        "Cannot read the routing document ({0}) and no earlier copy is cached, so there is no \
         stream to write to. Retry; if it persists, check the producer's read access to the \
         document and its network path to the store."
    )]
    Fetch(StoreError),
    /// The document is not one this client can follow.
    #[error(
        "The routing document at {location} is unusable: {problem}. Republish a valid \
         document there."
    )]
    BadDocument { location: String, problem: String },
}

/// The object key of a migration's document: `<prefix><migration>.json`, the prefix taken
/// as given (callers use `"routing/"`, so `routing/<migration>.json`).
pub fn key_for(prefix: &str, migration: &str) -> String {
    format!("{prefix}{migration}.json")
}

/// Where the routing document is read from.
pub trait RoutingSource: Send + Sync {
    /// Reads the current document; `None` when none has been published yet.
    fn fetch(&self) -> impl Future<Output = Result<Option<RoutingDocument>, StoreError>> + Send;

    /// Where the document lives (for messages), such as `s3://bucket/routing/m1.json`.
    fn location(&self) -> String;
}

/// How a [`RoutingClient`] caches and waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingOptions {
    /// How long a fetched document is used without fetching again (default 1 s).
    pub cache_ttl: Duration,
    /// How often the document is fetched while a stream is on hold (default 100 ms).
    pub hold_poll: Duration,
    /// How long one [`RoutingClient::resolve`] waits for a hold to end (default 10 s).
    pub max_hold_wait: Duration,
}

impl Default for RoutingOptions {
    fn default() -> Self {
        RoutingOptions {
            cache_ttl: Duration::from_secs(1),
            hold_poll: Duration::from_millis(100),
            max_hold_wait: Duration::from_secs(10),
        }
    }
}

/// The stream to write to now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The stream ARN.
    pub stream: String,
    /// The logical stream's routing version ([`StreamRouting::version`]): a change means its
    /// producers were moved.
    pub version: u64,
}

/// A document and when it was last confirmed current.
struct Cached {
    doc: Arc<RoutingDocument>,
    fresh_at: Instant,
}

/// Tells a producer which stream to write each logical stream to, following a
/// [`RoutingSource`] with a short cache. Share one per process: it is `Sync`.
pub struct RoutingClient<S: RoutingSource> {
    source: S,
    options: RoutingOptions,
    cache: Mutex<Option<Cached>>,
}

impl<S: RoutingSource> RoutingClient<S> {
    /// A client reading `source`; nothing is fetched until the first [`Self::resolve`].
    pub fn new(source: S, options: RoutingOptions) -> Self {
        RoutingClient {
            source,
            options,
            cache: Mutex::new(None),
        }
    }

    /// The source this client reads.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The stream to write `logical_stream` to now.
    ///
    /// Serves a document younger than `cache_ttl` from the cache. While the stream is on hold,
    /// fetches every `hold_poll` until it is active again, or fails with
    /// [`RoutingError::HeldTooLong`] after `max_hold_wait`: it never answers with the stream
    /// used before the hold. When a fetch fails, the last document fetched is used (whatever
    /// its age, with a warning) and fetched again after `cache_ttl`.
    pub async fn resolve(&self, logical_stream: &str) -> Result<Resolved, RoutingError> {
        let started = Instant::now();
        let mut refetch = false;
        loop {
            let doc = self.document(refetch).await?;
            let Some(routing) = doc.streams.get(logical_stream) else {
                return Err(RoutingError::UnknownStream {
                    stream: logical_stream.to_owned(),
                    known: doc.streams.keys().cloned().collect(),
                    location: self.source.location(),
                });
            };
            match routing.mode {
                StreamMode::Active => {
                    return Ok(Resolved {
                        stream: routing.active.clone(),
                        version: routing.version,
                    })
                }
                StreamMode::Hold => {
                    let waited = started.elapsed();
                    if waited >= self.options.max_hold_wait {
                        return Err(RoutingError::HeldTooLong {
                            stream: logical_stream.to_owned(),
                            waited,
                        });
                    }
                    // The last poll lands on max_hold_wait, so a hold ending just then is seen.
                    let pause = self
                        .options
                        .hold_poll
                        .min(self.options.max_hold_wait - waited);
                    tokio::time::sleep(pause).await;
                    refetch = true;
                }
            }
        }
    }

    /// The current document: the cached one while fresh (unless `refetch`), else fetched.
    async fn document(&self, refetch: bool) -> Result<Arc<RoutingDocument>, RoutingError> {
        if !refetch {
            if let Some(cached) = lock(&self.cache).as_ref() {
                if cached.fresh_at.elapsed() < self.options.cache_ttl {
                    return Ok(cached.doc.clone());
                }
            }
        }
        let fetched = self.source.fetch().await;
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        match (fetched, cache.as_mut()) {
            (Ok(Some(doc)), Some(cached)) if doc.version < cached.doc.version => {
                // An older document (a stale publisher): keep the newer one, as if confirmed.
                tracing::debug!(
                    location = %self.source.location(),
                    fetched_version = doc.version,
                    cached_version = cached.doc.version,
                    "Ignored a routing document older than the one already seen."
                );
                cached.fresh_at = now;
                Ok(cached.doc.clone())
            }
            (Ok(Some(doc)), _) => {
                let doc = Arc::new(doc);
                *cache = Some(Cached {
                    doc: doc.clone(),
                    fresh_at: now,
                });
                Ok(doc)
            }
            (Ok(None), None) => Err(RoutingError::NoDocument {
                location: self.source.location(),
            }),
            (Ok(None), Some(cached)) => {
                tracing::warn!(
                    location = %self.source.location(),
                    cached_version = cached.doc.version,
                    "Routing document has disappeared; using the last one fetched."
                );
                cached.fresh_at = now;
                Ok(cached.doc.clone())
            }
            (Err(e), None) => Err(RoutingError::Fetch(e)),
            (Err(e), Some(cached)) => {
                tracing::warn!(
                    location = %self.source.location(),
                    error = %e,
                    cached_version = cached.doc.version,
                    age_ms = now.duration_since(cached.fresh_at).as_millis() as u64,
                    "Cannot read the routing document; using the last one fetched."
                );
                // Retried after the ttl, not on every resolve while the store is down.
                cached.fresh_at = now;
                Ok(cached.doc.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests;
