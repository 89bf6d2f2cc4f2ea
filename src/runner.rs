//! A local event-source runner: reads every shard of a source stream and invokes the
//! replicator the way Lambda's Kinesis event source mapping does.
//!
//! Rules kept from the event source mapping:
//! - one shard's records per invocation, in order, at most `batch_size` of them;
//! - a `batchItemFailures` answer resumes the shard at the reported sequence number;
//! - a handler error retries the whole batch;
//! - the runner's own position moves only after a successful answer;
//! - a closed shard is read to its end (`NextShardIterator` null), never skipped.
//!
//! Its position lives in memory only; leases and resharding lineage come later.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::streams::KinesisEventResponse;
use tokio::time::Instant;

use crate::aws::source::{KinesisSource, StartPosition};
use crate::event;
use crate::handler::Handler;
use crate::model::{FailureClass, RequestError, StreamArn};
use crate::plan;
use crate::ports::{CheckpointStore, DeadLetterStore, TargetWriter};
use crate::seq::SequenceNumber;

/// Calls the replicator with one event.
pub trait Invoker: Send + Sync {
    /// Returns the handler's JSON answer, or an error message (the whole batch is retried).
    fn invoke(
        &self,
        event: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// Invokes the handler in this process.
pub struct InProcess<W, C, D>(pub Arc<Handler<W, C, D>>);

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Invoker for InProcess<W, C, D> {
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
        match self.0.handle(&event, Instant::now() + timeout).await {
            Ok((response, _)) => serde_json::to_vec(&response).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Invokes a function over HTTP through the Lambda Invoke API, e.g. at `cargo lambda watch`.
pub struct HttpInvoker {
    url: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl HttpInvoker {
    /// `base` like `http://127.0.0.1:9000`; `function` the function's name.
    pub fn new(base: &str, function: &str) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        HttpInvoker {
            url: format!(
                "{}/2015-03-31/functions/{function}/invocations",
                base.trim_end_matches('/')
            ),
            client,
        }
    }
}

impl Invoker for HttpInvoker {
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let req = hyper::Request::post(&self.url)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(event)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("invoke {}: {e}", self.url))?;
            let status = resp.status();
            let function_error = resp.headers().contains_key("x-amz-function-error");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() || function_error {
                return Err(format!(
                    "function error (HTTP {status}): {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(body.to_vec())
        };
        tokio::time::timeout(timeout + Duration::from_secs(5), call)
            .await
            .map_err(|_| format!("invoke {} timed out", self.url))?
    }
}

/// How the runner reads and when it stops.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    pub start: StartPosition,
    /// Most records per invocation (the mapping's BatchSize).
    pub batch_size: i32,
    /// The function timeout given to each invocation.
    pub function_timeout: Duration,
    /// Stop once every shard has been read to its current end.
    pub until_caught_up: bool,
    /// Wait between reads of a shard that returned nothing.
    pub idle_poll: Duration,
    /// Print a live progress line to stderr.
    pub progress: bool,
    pub region: String,
    /// Give up on a shard (it stops, nothing skipped) after this many failed invocations of
    /// one batch. `None`: retry forever, like an event source mapping with no retry limit.
    pub max_attempts: Option<u32>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            start: StartPosition::TrimHorizon,
            batch_size: 1000,
            function_timeout: Duration::from_secs(60),
            until_caught_up: false,
            idle_poll: Duration::from_millis(250),
            progress: false,
            region: "us-east-1".to_owned(),
            max_attempts: None,
        }
    }
}

/// Per-shard figures, as the progress line and the final summary show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardProgress {
    pub records_delivered: u64,
    pub invocations: u64,
    /// Invocations answered with a failure or an error, then retried.
    pub retried_invocations: u64,
    pub millis_behind: i64,
    pub finished: bool,
    pub caught_up: bool,
    pub stopped: Option<String>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    pub shards: BTreeMap<String, ShardProgress>,
    pub elapsed: Duration,
}

impl RunSummary {
    pub fn records_delivered(&self) -> u64 {
        self.shards.values().map(|s| s.records_delivered).sum()
    }
}

/// Runs until caught up (if asked), until `stop` is set, or until every shard stops.
pub async fn run<I: Invoker + 'static>(
    source: &KinesisSource,
    stream: &StreamArn,
    invoker: Arc<I>,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, RequestError> {
    let started = Instant::now();
    let shards = source.list_shards(stream).await?;
    let progress: Arc<Mutex<BTreeMap<String, ShardProgress>>> = Arc::new(Mutex::new(
        shards
            .iter()
            .map(|s| (s.shard_id.clone(), ShardProgress::default()))
            .collect(),
    ));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for shard in shards {
        let ctx = ShardCtx {
            source: source.clone(),
            stream: stream.clone(),
            shard_id: shard.shard_id.clone(),
            invoker: invoker.clone(),
            options: options.clone(),
            stop: stop.clone(),
            progress: progress.clone(),
            delivered: delivered.clone(),
        };
        tasks.spawn(async move { ctx.run().await });
    }
    let printer = options.progress.then(|| {
        let progress = progress.clone();
        let delivered = delivered.clone();
        let stop = stop.clone();
        tokio::spawn(async move { print_progress(progress, delivered, stop, started).await })
    });
    while tasks.join_next().await.is_some() {}
    if let Some(p) = printer {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    let shards = progress.lock().map(|p| p.clone()).unwrap_or_default();
    Ok(RunSummary {
        shards,
        elapsed: started.elapsed(),
    })
}

async fn print_progress(
    progress: Arc<Mutex<BTreeMap<String, ShardProgress>>>,
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = delivered.load(Ordering::Relaxed);
        let rate = (now - last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
        last = (now, Instant::now());
        let behind: Vec<String> = progress
            .lock()
            .map(|p| {
                p.iter()
                    .map(|(id, s)| {
                        let short = id.trim_start_matches("shardId-").trim_start_matches('0');
                        let state = if s.stopped.is_some() {
                            "STOPPED".to_owned()
                        } else if s.finished {
                            "done".to_owned()
                        } else {
                            format!("{}ms", s.millis_behind)
                        };
                        format!("{}:{state}", if short.is_empty() { "0" } else { short })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = format!(
            "{:>6.1}s  {now} records  {rate:.0} rec/s  behind per shard: {}",
            started.elapsed().as_secs_f64(),
            behind.join(" ")
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

struct ShardCtx<I> {
    source: KinesisSource,
    stream: StreamArn,
    shard_id: String,
    invoker: Arc<I>,
    options: RunnerOptions,
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<BTreeMap<String, ShardProgress>>>,
    delivered: Arc<AtomicU64>,
}

impl<I: Invoker> ShardCtx<I> {
    fn update(&self, f: impl FnOnce(&mut ShardProgress)) {
        if let Ok(mut p) = self.progress.lock() {
            if let Some(s) = p.get_mut(&self.shard_id) {
                f(s);
            }
        }
    }

    async fn run(&self) {
        if let Err(e) = self.read_shard().await {
            tracing::error!(
                stream = %self.stream,
                shard = %self.shard_id,
                error_code = %e.code,
                "Reading shard {} of {} stopped: {e}. Check the stream and the reader's credentials; other shards continue.",
                self.shard_id,
                self.stream
            );
            self.update(|s| s.stopped = Some(e.to_string()));
        }
    }

    /// Reads with retries for transient errors; an expired iterator is replaced from `position`.
    async fn read_shard(&self) -> Result<(), RequestError> {
        // The last sequence number handed off successfully: where to resume from.
        let mut position: Option<SequenceNumber> = None;
        let mut iterator = self
            .source
            .shard_iterator(&self.stream, &self.shard_id, &self.options.start)
            .await?;
        let mut read_failures = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let page = match self
                .source
                .get_records(&self.stream, &iterator, self.options.batch_size)
                .await
            {
                Ok(p) => {
                    read_failures = 0;
                    p
                }
                Err(e)
                    if e.class == FailureClass::Transient
                        || e.code == "ExpiredIteratorException" =>
                {
                    read_failures += 1;
                    tracing::debug!(shard = %self.shard_id, error = %e, "GetRecords failed; retrying.");
                    tokio::time::sleep(plan::backoff(
                        read_failures,
                        Duration::from_millis(200),
                        Duration::from_secs(5),
                        rand::random(),
                    ))
                    .await;
                    let start = match &position {
                        Some(seq) => StartPosition::AfterSequence(seq.clone()),
                        None => self.options.start.clone(),
                    };
                    iterator = self
                        .source
                        .shard_iterator(&self.stream, &self.shard_id, &start)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let behind = page.millis_behind_latest.unwrap_or(0);
            // MillisBehindLatest is time-based: records written a moment ago read as 0 behind
            // although more follow. Only an empty page at the tip means caught up.
            let at_tip = page.records.is_empty() && behind == 0;
            if !page.records.is_empty() {
                let last = page.records[page.records.len() - 1].seq.clone();
                if !self.deliver(page.records).await {
                    return Ok(()); // stopped while retrying; position not advanced
                }
                position = Some(last);
            }
            self.update(|s| s.millis_behind = behind);
            match page.next_iterator {
                None => {
                    self.update(|s| {
                        s.finished = true;
                        s.caught_up = true;
                    });
                    return Ok(());
                }
                Some(next) => iterator = next,
            }
            if at_tip {
                self.update(|s| s.caught_up = true);
                if self.options.until_caught_up && self.all_caught_up() {
                    return Ok(());
                }
                tokio::time::sleep(self.options.idle_poll).await;
            }
        }
        Ok(())
    }

    fn all_caught_up(&self) -> bool {
        self.progress
            .lock()
            .map(|p| p.values().all(|s| s.caught_up || s.stopped.is_some()))
            .unwrap_or(false)
    }

    /// Invokes until the whole page is handled. Returns false if stopped first.
    async fn deliver(&self, mut records: Vec<crate::model::SourceRecord>) -> bool {
        let mut attempt = 0u32;
        while !records.is_empty() {
            let event =
                event::build_event(&self.stream, &self.shard_id, &self.options.region, &records);
            let payload = match serde_json::to_vec(&event) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(shard = %self.shard_id, error = %e, "Cannot serialise the event.");
                    return false;
                }
            };
            self.update(|s| s.invocations += 1);
            let outcome = self
                .invoker
                .invoke(payload, self.options.function_timeout)
                .await;
            let failed_at: Result<Option<String>, String> = outcome.and_then(|body| {
                serde_json::from_slice::<KinesisEventResponse>(&body)
                    .map(|r| {
                        r.batch_item_failures
                            .into_iter()
                            .filter_map(|f| f.item_identifier)
                            .next()
                    })
                    .map_err(|e| {
                        format!(
                            "unreadable answer ({e}): {}",
                            String::from_utf8_lossy(&body)
                        )
                    })
            });
            let handled = match &failed_at {
                Ok(None) => records.len(),
                Ok(Some(id)) => match SequenceNumber::parse(id) {
                    Ok(seq) => records
                        .iter()
                        .position(|r| r.seq >= seq)
                        .unwrap_or(records.len()),
                    Err(_) => 0, // an unknown identifier: Lambda retries the whole batch
                },
                Err(_) => 0,
            };
            self.delivered.fetch_add(handled as u64, Ordering::Relaxed);
            self.update(|s| s.records_delivered += handled as u64);
            records.drain(..handled);
            if records.is_empty() {
                return true;
            }
            attempt += 1;
            self.update(|s| s.retried_invocations += 1);
            match &failed_at {
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "Invocation failed; retrying the whole batch.")
                }
                Ok(Some(id)) => {
                    tracing::debug!(shard = %self.shard_id, sequence_number = %id, "Batch partially handled; resuming at the reported record.")
                }
                Ok(None) => {}
            }
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            if self.options.max_attempts.is_some_and(|max| attempt >= max) {
                let at = records[0].seq.clone();
                let why = match &failed_at {
                    Err(e) => e.clone(),
                    _ => "the handler kept reporting it as failed".to_owned(),
                };
                tracing::error!(
                    shard = %self.shard_id,
                    sequence_number = %at,
                    "Shard {} stopped at record {at} after {attempt} attempts: {why}. The record stays in the stream; fix the cause and run again.",
                    self.shard_id
                );
                self.update(|s| {
                    s.stopped = Some(format!(
                        "stopped at record {at} after {attempt} attempts: {why}"
                    ))
                });
                return false;
            }
            tokio::time::sleep(plan::backoff(
                attempt,
                Duration::from_millis(100),
                Duration::from_secs(5),
                rand::random(),
            ))
            .await;
        }
        true
    }
}
