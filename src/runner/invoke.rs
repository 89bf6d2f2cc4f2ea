//! Calling the replicator: in this process, or a function over the Lambda invoke API.

#[allow(unused_imports)]
use super::*;

/// What an invocation answered.
pub struct Invoked {
    /// The handler's JSON answer (`batchItemFailures`).
    pub body: Vec<u8>,
    /// What the handler did, when it ran in this process (a function invoked over HTTP keeps
    /// its figures in its own logs and metrics).
    pub report: Option<crate::replicate::BatchReport>,
}

/// Calls the replicator with one event.
pub trait Invoker: Send + Sync {
    /// Returns the handler's answer, or an error message (the whole batch is retried).
    fn invoke(
        &self,
        event: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Invoked, String>> + Send;
}

/// Invokes the handler in this process.
pub struct InProcess<W, C, D>(pub Arc<Handler<W, C, D>>);

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Invoker for InProcess<W, C, D> {
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Invoked, String> {
        match self.0.handle(&event, Instant::now() + timeout).await {
            Ok((response, report)) => Ok(Invoked {
                body: serde_json::to_vec(&response).map_err(|e| e.to_string())?,
                report: Some(report),
            }),
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
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Invoked, String> {
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
            Ok(Invoked {
                body: body.to_vec(),
                report: None,
            })
        };
        tokio::time::timeout(timeout + Duration::from_secs(5), call)
            .await
            .map_err(|_| format!("invoke {} timed out", self.url))?
    }
}
