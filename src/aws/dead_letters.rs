//! Dead letters in S3: one object per record at
//! `<prefix>/<route>/<source shard>/<zero-padded sequence number>.json` (padding makes a
//! listing come back in sequence order, which redrive relies on), holding a JSON envelope with
//! the full payload and the reason.

use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use base64::Engine;

use super::{endpoint_overridden, store_error};
use crate::model::{DeadLetter, StoreError};
use crate::ports::DeadLetterStore;

pub use crate::model::Envelope;

pub struct S3DeadLetters {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3DeadLetters {
    pub fn new(sdk: &SdkConfig, bucket: &str, prefix: &str) -> Self {
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(endpoint_overridden(sdk, "S3"))
            .build();
        S3DeadLetters {
            client: Client::from_conf(conf),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Every dead letter of a route (all routes if `None`), in key order (= sequence order
    /// within each shard), with its location. Only envelopes (`.json`) are read: the
    /// `.json.redriven` markers `fanoutctl redrive --keep` leaves beside them are not letters.
    pub async fn list(&self, route: Option<&str>) -> Result<Vec<(String, Envelope)>, StoreError> {
        let keys = self.list_keys(route).await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys.into_iter().filter(|k| k.ends_with(".json")) {
            let envelope = self.read(&key).await?;
            out.push((self.location(&key), envelope));
        }
        Ok(out)
    }

    /// The key prefix of a route's dead letters (all routes if `None`), ending in `/`.
    pub fn route_prefix(&self, route: Option<&str>) -> String {
        match route {
            Some(r) if self.prefix.is_empty() => format!("{r}/"),
            Some(r) => format!("{}/{r}/", self.prefix),
            None if self.prefix.is_empty() => String::new(),
            None => format!("{}/", self.prefix),
        }
    }

    /// Every object key under a route's prefix (all routes if `None`), in key order:
    /// envelopes and redrive markers alike.
    pub async fn list_keys(&self, route: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_objects(route)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// Like [`Self::list_keys`], with each object's size in bytes.
    pub async fn list_objects(
        &self,
        route: Option<&str>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.list_prefix(&self.route_prefix(route)).await
    }

    /// The on-failure objects Lambda's event source mappings wrote to the bucket
    /// (`aws/lambda/...`, see [`crate::on_failure`]), in key order, with their sizes.
    pub async fn list_on_failure(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.list_prefix(crate::on_failure::PREFIX).await
    }

    /// Reads one on-failure object: what Lambda discarded, and the records if it holds them.
    pub async fn read_on_failure(
        &self,
        key: &str,
    ) -> Result<crate::on_failure::DiscardedBatch, StoreError> {
        let body = self.get_bytes(key).await?;
        crate::on_failure::parse(&self.location(key), &body).map_err(|message| StoreError {
            code: "NotAnOnFailureRecord".into(),
            message,
        })
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut objects = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| store_error(&e))?;
            objects.extend(page.contents().iter().filter_map(|o| {
                o.key()
                    .map(|k| (k.to_owned(), o.size().unwrap_or(0).max(0) as u64))
            }));
        }
        Ok(objects)
    }

    /// Reads and parses one envelope.
    pub async fn read(&self, key: &str) -> Result<Envelope, StoreError> {
        let body = self.get_bytes(key).await?;
        serde_json::from_slice(&body).map_err(|e| StoreError {
            code: "CorruptDeadLetter".into(),
            message: format!("{}: {e}", self.location(key)),
        })
    }

    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let obj = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let body = obj.body.collect().await.map_err(|e| StoreError {
            code: "ReadBody".into(),
            message: e.to_string(),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Deletes one object (a redriven dead letter, or its marker).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// Writes a small JSON object at `key` (a redrive marker).
    pub async fn put_json(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// `s3://<bucket>/<key>`.
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The object key of a dead letter.
    pub fn key(prefix: &str, route: &str, shard_id: &str, padded_seq: &str) -> String {
        if prefix.is_empty() {
            format!("{route}/{shard_id}/{padded_seq}.json")
        } else {
            format!("{prefix}/{route}/{shard_id}/{padded_seq}.json")
        }
    }
}

impl DeadLetterStore for S3DeadLetters {
    async fn store(&self, letter: &DeadLetter<'_>) -> Result<String, StoreError> {
        let r = letter.record;
        let envelope = Envelope {
            version: 1,
            route: letter.route.to_owned(),
            source_stream_arn: letter.source_arn.to_owned(),
            target_stream_arn: letter.target_arn.to_owned(),
            shard_id: letter.shard_id.to_owned(),
            sequence_number: r.seq.to_string(),
            partition_key: r.partition_key.clone(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&r.data),
            approximate_arrival_timestamp: r
                .arrival_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339()),
            reason: letter.reason.clone(),
            error_code: letter.error_code.clone(),
            attempts: letter.attempts,
            dead_lettered_at: chrono::Utc::now().to_rfc3339(),
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| StoreError {
            code: "Serialize".into(),
            message: e.to_string(),
        })?;
        let key = Self::key(
            &self.prefix,
            letter.route,
            letter.shard_id,
            &r.seq.to_padded(),
        );
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(format!("s3://{}/{key}", self.bucket))
    }
}

impl crate::redrive::DeadLetterArchive for S3DeadLetters {
    async fn letters(&self, route: &str) -> Result<Vec<crate::redrive::LetterRef>, StoreError> {
        let objects = self.list_objects(Some(route)).await?;
        let (letters, unknown) =
            crate::redrive::parse_listing(&self.route_prefix(Some(route)), &objects);
        for key in unknown {
            tracing::warn!(
                object = %self.location(&key),
                "Object under the dead-letter prefix is neither a dead letter nor a redrive marker; ignored."
            );
        }
        Ok(letters)
    }

    async fn read(&self, key: &str) -> Result<Envelope, StoreError> {
        S3DeadLetters::read(self, key).await
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.delete(key).await
    }

    async fn mark(&self, key: &str, marker: &crate::redrive::Marker) -> Result<(), StoreError> {
        let body = serde_json::to_vec(marker).map_err(|e| StoreError {
            code: "Serialize".into(),
            message: e.to_string(),
        })?;
        self.put_json(&format!("{key}{}", crate::redrive::MARKER_SUFFIX), body)
            .await
    }

    fn location(&self, key: &str) -> String {
        S3DeadLetters::location(self, key)
    }
}
