//! Lambda event source mappings of the migration's consumers: find, describe, enable,
//! disable and create them (the flips switch them, [`crate::control`]).

use aws_config::SdkConfig;
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::operation::get_event_source_mapping::GetEventSourceMappingError;
use aws_sdk_lambda::Client;

use super::store_error;
use crate::model::StoreError;
use crate::ports::control::MappingFacts;

/// One account's event source mappings.
#[derive(Clone)]
pub struct Mappings {
    client: Client,
}

/// A mapping as Lambda describes it: the same four fields in every answer type (Get, Update,
/// the entries of List).
macro_rules! facts {
    ($m:expr) => {
        MappingFacts {
            uuid: $m.uuid().unwrap_or_default().to_owned(),
            function_arn: $m.function_arn().unwrap_or_default().to_owned(),
            stream: $m.event_source_arn().unwrap_or_default().to_owned(),
            state: $m.state().unwrap_or("Unknown").to_owned(),
            last_modified_ms: $m.last_modified().and_then(|d| d.to_millis().ok()),
        }
    };
}

impl Mappings {
    pub fn new(sdk: &SdkConfig) -> Self {
        Mappings {
            client: Client::new(sdk),
        }
    }

    /// Every mapping of `function` (name or ARN) on `stream`. Listed by the stream and matched
    /// here, so that a name finds mappings created with the ARN and the other way round.
    pub async fn list(
        &self,
        function: &str,
        stream: &str,
    ) -> Result<Vec<MappingFacts>, StoreError> {
        let name = function.rsplit(":function:").next().unwrap_or(function);
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_event_source_mappings()
                .event_source_arn(stream)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            out.extend(
                page.event_source_mappings()
                    .iter()
                    .map(|m| facts!(m))
                    .filter(|m| m.stream == stream)
                    .filter(|m| {
                        m.function_arn == function
                            || m.function_arn.ends_with(&format!(":function:{name}"))
                    }),
            );
            match page.next_marker() {
                Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// One mapping; `None` when Lambda has none with this UUID.
    pub async fn get(&self, uuid: &str) -> Result<Option<MappingFacts>, StoreError> {
        match self
            .client
            .get_event_source_mapping()
            .uuid(uuid)
            .send()
            .await
        {
            Ok(m) => Ok(Some(facts!(m))),
            Err(SdkError::ServiceError(e))
                if matches!(
                    e.err(),
                    GetEventSourceMappingError::ResourceNotFoundException(_)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(store_error(&e)),
        }
    }

    /// Creates an enabled mapping of `function` on `stream`, from `start_ms` (`AT_TIMESTAMP`)
    /// or the trim horizon.
    pub async fn create(
        &self,
        function: &str,
        stream: &str,
        start_ms: Option<i64>,
    ) -> Result<MappingFacts, StoreError> {
        use aws_sdk_lambda::primitives::DateTime;
        use aws_sdk_lambda::types::EventSourcePosition;
        let req = self
            .client
            .create_event_source_mapping()
            .function_name(function)
            .event_source_arn(stream)
            .enabled(true);
        let req = match start_ms {
            Some(ms) => req
                .starting_position(EventSourcePosition::AtTimestamp)
                .starting_position_timestamp(DateTime::from_millis(ms)),
            None => req.starting_position(EventSourcePosition::TrimHorizon),
        };
        let m = req.send().await.map_err(|e| store_error(&e))?;
        Ok(facts!(m))
    }

    /// Enables or disables a mapping.
    pub async fn enable(&self, uuid: &str, enabled: bool) -> Result<MappingFacts, StoreError> {
        let m = self
            .client
            .update_event_source_mapping()
            .uuid(uuid)
            .enabled(enabled)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(facts!(m))
    }
}
