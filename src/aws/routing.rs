//! The routing document in S3: one JSON object per migration at `<prefix><migration>.json`,
//! published with PutObject and read by producers as a [`RoutingSource`].

use aws_config::SdkConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use super::{endpoint_overridden, store_error};
use crate::model::StoreError;
use crate::routing::{RoutingDocument, RoutingSource};

/// One migration's routing document in S3.
pub struct S3Routing {
    client: Client,
    bucket: String,
    key: String,
}

impl S3Routing {
    /// The document at `s3://<bucket>/<key>` (see [`Self::key_for`]). Uses path-style
    /// addressing when an S3 endpoint override (a local emulator) is in force.
    pub fn new(sdk: &SdkConfig, bucket: &str, key: &str) -> Self {
        let conf = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(endpoint_overridden(sdk, "S3"))
            .build();
        S3Routing {
            client: Client::from_conf(conf),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        }
    }

    /// The object key of a migration's document: `<prefix><migration>.json`, the prefix taken
    /// as given (callers use `"routing/"`, so `routing/<migration>.json`).
    pub fn key_for(prefix: &str, migration: &str) -> String {
        crate::routing::key_for(prefix, migration)
    }

    /// Writes `doc` over the current document. Marked `no-cache`: a reader must never be served
    /// an older copy by a cache in between. Last writer wins: callers raise `version` on every
    /// change and publish from one place.
    pub async fn publish(&self, doc: &RoutingDocument) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .content_type("application/json")
            .cache_control("no-cache")
            .body(ByteStream::from(doc.to_json_pretty()))
            .send()
            .await
            .map_err(|e| self.located(store_error(&e)))?;
        Ok(())
    }

    /// Adds where to a store error (the SDK's message does not say which object).
    fn located(&self, e: StoreError) -> StoreError {
        StoreError {
            code: e.code,
            message: format!("{}: {}", self.location(), e.message),
        }
    }
}

impl RoutingSource for S3Routing {
    async fn fetch(&self) -> Result<Option<RoutingDocument>, StoreError> {
        let obj = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await
        {
            Ok(obj) => obj,
            Err(e) if e.as_service_error().is_some_and(|se| se.is_no_such_key()) => {
                return Ok(None)
            }
            Err(e) => return Err(self.located(store_error(&e))),
        };
        let body = obj.body.collect().await.map_err(|e| {
            self.located(StoreError {
                code: "ReadBody".into(),
                message: e.to_string(),
            })
        })?;
        RoutingDocument::from_json(&body.into_bytes(), &self.location())
            .map(Some)
            .map_err(|e| StoreError {
                code: "CorruptRoutingDocument".into(),
                message: e.to_string(),
            })
    }

    /// `s3://<bucket>/<key>`.
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}
