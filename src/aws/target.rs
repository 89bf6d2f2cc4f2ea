//! PutRecords to a route's target stream, always addressed by StreamARN, with credentials of
//! the writer role in the target account (assumed with its external id, refreshed by the SDK).

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::{classify_sdk_error, CONNECT_TIMEOUT};
use crate::config::Limits;
use crate::model::{
    EntryResult, FailureClass, RequestError, Route, StreamArn, TargetInfo, WriterRole,
};
use crate::pacing::TargetShard;
use crate::ports::{OutEntry, TargetWriter};

/// The writer client's settings: the SDK's own retries off (the write path retries with
/// per-key order rules the SDK does not know), a short connect timeout, and the request
/// timeout from `limits`.
pub fn writer_config(sdk: &SdkConfig, limits: &Limits) -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(limits.request_timeout)
                .build(),
        )
}

/// Writes to target streams; one client per writer role.
pub struct KinesisTarget {
    clients: HashMap<Option<WriterRole>, Client>,
    default_max_record_bytes: usize,
}

impl KinesisTarget {
    /// Builds one client per distinct writer role of `routes`, with [`writer_config`].
    pub async fn new(sdk: &SdkConfig, routes: &[Route], limits: &Limits) -> Self {
        let mut clients = HashMap::new();
        for route in routes {
            if clients.contains_key(&route.writer_role) {
                continue;
            }
            let mut conf = writer_config(sdk, limits);
            if let Some(role) = &route.writer_role {
                let mut provider =
                    aws_config::sts::AssumeRoleProvider::builder(role.role_arn.clone())
                        .session_name("fanout-replicator")
                        .configure(sdk);
                if let Some(external_id) = &role.external_id {
                    provider = provider.external_id(external_id.clone());
                }
                conf = conf.credentials_provider(provider.build().await);
            }
            clients.insert(route.writer_role.clone(), Client::from_conf(conf.build()));
        }
        KinesisTarget {
            clients,
            default_max_record_bytes: limits.default_max_record_bytes,
        }
    }

    fn client(&self, route: &Route) -> Result<&Client, RequestError> {
        self.clients
            .get(&route.writer_role)
            .ok_or_else(|| RequestError {
                class: FailureClass::Systemic,
                ambiguous: false,
                code: "NoClient".to_owned(),
                message: format!("no client was built for route {}", route.name),
            })
    }
}

impl TargetWriter for KinesisTarget {
    async fn target_info(&self, route: &Route) -> Result<TargetInfo, RequestError> {
        let out = self
            .client(route)?
            .describe_stream_summary()
            .stream_arn(route.target.as_str())
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e))?;
        let summary = out.stream_description_summary();
        if let Some(s) = summary {
            if *s.stream_status() == StreamStatus::Deleting {
                return Err(RequestError {
                    class: FailureClass::Systemic,
                    ambiguous: false,
                    code: "ResourceNotFoundException".to_owned(),
                    message: format!("target stream {} is being deleted", route.target),
                });
            }
        }
        let max_record_bytes = summary
            .and_then(|s| s.max_record_size_in_kib())
            .filter(|kib| *kib > 0)
            .map(|kib| kib as usize * 1024)
            .unwrap_or(self.default_max_record_bytes);
        Ok(TargetInfo { max_record_bytes })
    }

    async fn target_shards(&self, route: &Route) -> Result<Vec<TargetShard>, RequestError> {
        list_open_shards(self.client(route)?, &route.target).await
    }

    async fn put_records(
        &self,
        route: &Route,
        entries: &[OutEntry<'_>],
    ) -> Result<Vec<EntryResult>, RequestError> {
        let records: Vec<PutRecordsRequestEntry> = entries
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(e.partition_key)
                    .set_explicit_hash_key(e.explicit_hash_key.map(str::to_owned))
                    .data(Blob::new(e.data.to_vec()))
                    .build()
                    .map_err(|err| RequestError {
                        class: FailureClass::Systemic,
                        ambiguous: false,
                        code: "RequestNotBuilt".to_owned(),
                        message: err.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let out = self
            .client(route)?
            .put_records()
            .stream_arn(route.target.as_str())
            .set_records(Some(records))
            .send()
            .await
            .map_err(|e| put_records_error(&classify_sdk_error(&e)))?;
        // Consumes the output: its strings move into the results instead of being copied.
        Ok(out
            .records
            .into_iter()
            .map(|r| match r.error_code {
                Some(code) => EntryResult::Failed {
                    class: crate::errors::entry_class(&code),
                    code,
                    message: r.error_message.unwrap_or_default(),
                },
                None => EntryResult::Written {
                    shard_id: r.shard_id.unwrap_or_default(),
                    seq: r.sequence_number.unwrap_or_default(),
                },
            })
            .collect())
    }
}

/// A whole PutRecords refused for what it holds (a partition key or record the target will
/// not take: Kinesis says `InvalidArgumentException` or `ValidationException`, naming the
/// member) is `Permanent`: the write path then sends fewer records at a time until the ones
/// at fault are alone. Everything else keeps its class; a missing stream, denied access or
/// KMS trouble have their own codes and stay systemic.
fn put_records_error(e: &RequestError) -> RequestError {
    let mut e = e.clone();
    e.class = crate::errors::request_class(&e.code, e.class);
    e
}

/// The stream's open shards and their hash ranges (ListShards, every page), in the order
/// Kinesis lists them.
pub(crate) async fn list_open_shards(
    client: &Client,
    stream: &StreamArn,
) -> Result<Vec<TargetShard>, RequestError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    // Bounded: a stream has at most a few thousand shards, 1,000 a page.
    for _ in 0..100 {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_arn(stream.as_str()),
        };
        let out = req.send().await.map_err(|e| classify_sdk_error(&e))?;
        for s in out.shards() {
            let open = s
                .sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none());
            let range = s.hash_key_range();
            let start = range.and_then(|r| r.starting_hash_key().parse::<u128>().ok());
            let end = range.and_then(|r| r.ending_hash_key().parse::<u128>().ok());
            if let (true, Some(start), Some(end)) = (open, start, end) {
                shards.push(TargetShard {
                    shard_id: s.shard_id().to_owned(),
                    start,
                    end,
                });
            }
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_refused_for_its_contents_is_permanent_and_access_stays_systemic() {
        let error = |code: &str| RequestError {
            class: FailureClass::Systemic,
            ambiguous: false,
            code: code.to_owned(),
            message: String::new(),
        };
        let cases = [
            ("InvalidArgumentException", FailureClass::Permanent),
            ("ValidationException", FailureClass::Permanent),
            ("AccessDeniedException", FailureClass::Systemic),
            ("ResourceNotFoundException", FailureClass::Systemic),
            ("KMSAccessDeniedException", FailureClass::Systemic),
            ("ExpiredTokenException", FailureClass::Systemic),
        ];
        for (code, class) in cases {
            assert_eq!(put_records_error(&error(code)).class, class, "{code}");
        }
    }
}
