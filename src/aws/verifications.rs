//! Verification results in the state table, so the controller can require a recent passing
//! verification before a flip. One item per verification:
//! `pk = "verification#<route>"`, `sk = <finished-at epoch milliseconds, 20 digits zero-padded>`,
//! so a descending Query with limit 1 returns the latest.
//!
//! Also: who is running (STS GetCallerIdentity), and credentials of a reader role in the
//! target account for reading the target stream.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store_error;
use super::table::{n, s, verification_pk};
use crate::model::StoreError;
use crate::time::rfc3339_ms as rfc3339;
pub use crate::verify::VerificationRecord;
use crate::verify::{Totals, Verdict};

/// The sort key: finished-at milliseconds, zero-padded so text order is time order.
pub fn verification_sk(finished_at_ms: i64) -> String {
    format!("{:020}", finished_at_ms.max(0))
}

/// The counts as (attribute name, value) pairs, in one place for writing and reading.
fn count_fields(t: &Totals) -> [(&'static str, u64); 11] {
    [
        ("source_in_window", t.source_in_window),
        ("source_context", t.source_context),
        ("target_read", t.target_read),
        ("matched", t.matched),
        ("missing", t.missing),
        ("dead_lettered", t.dead_lettered),
        ("duplicates", t.duplicates),
        ("out_of_order", t.out_of_order),
        ("extra", t.extra),
        ("outside_window", t.outside_window),
        ("keys", t.keys),
    ]
}

fn item(r: &VerificationRecord, finished_at_ms: i64) -> HashMap<String, AttributeValue> {
    let mut item: HashMap<String, AttributeValue> = HashMap::from([
        ("pk".to_owned(), s(verification_pk(&r.route))),
        ("sk".to_owned(), s(verification_sk(finished_at_ms))),
        ("kind".to_owned(), s("verification")),
        ("route".to_owned(), s(&r.route)),
        ("source_arn".to_owned(), s(&r.source_arn)),
        ("target_arn".to_owned(), s(&r.target_arn)),
        ("window_from".to_owned(), s(&r.window_from)),
        ("window_until".to_owned(), s(&r.window_until)),
        ("window_until_ms".to_owned(), n(r.window_until_ms)),
        ("grace_ms".to_owned(), n(r.grace_ms)),
        ("verdict".to_owned(), s(r.verdict.as_str())),
        (
            "dead_letters_checked".to_owned(),
            AttributeValue::Bool(r.dead_letters_checked),
        ),
        ("partitions".to_owned(), n(r.partitions)),
        ("started_at".to_owned(), s(rfc3339(r.started_at_ms))),
        ("started_at_ms".to_owned(), n(r.started_at_ms)),
        ("finished_at".to_owned(), s(rfc3339(finished_at_ms))),
        ("finished_at_ms".to_owned(), n(finished_at_ms)),
        ("duration_ms".to_owned(), n(r.duration_ms)),
        ("actor".to_owned(), s(&r.actor)),
        ("host".to_owned(), s(&r.host)),
        ("keys_with_findings".to_owned(), n(r.keys_with_findings)),
    ]);
    if let Some(ms) = r.window_from_ms {
        item.insert("window_from_ms".to_owned(), n(ms));
    }
    for (name, value) in count_fields(&r.totals) {
        item.insert(name.to_owned(), n(value));
    }
    item
}

fn corrupt(route: &str, what: &str) -> StoreError {
    StoreError {
        code: "CorruptVerification".to_owned(),
        message: format!("the latest verification of {route} has no readable {what}"),
    }
}

fn record_from(
    route: &str,
    item: &HashMap<String, AttributeValue>,
) -> Result<VerificationRecord, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| corrupt(route, name))
    };
    let num = |name: &str| -> Result<i64, StoreError> {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(route, name))
    };
    let count = |name: &str| -> Result<u64, StoreError> { num(name).map(|v| v.max(0) as u64) };
    let mut totals = Totals::default();
    {
        let t = &mut totals;
        let slots: [(&str, &mut u64); 11] = [
            ("source_in_window", &mut t.source_in_window),
            ("source_context", &mut t.source_context),
            ("target_read", &mut t.target_read),
            ("matched", &mut t.matched),
            ("missing", &mut t.missing),
            ("dead_lettered", &mut t.dead_lettered),
            ("duplicates", &mut t.duplicates),
            ("out_of_order", &mut t.out_of_order),
            ("extra", &mut t.extra),
            ("outside_window", &mut t.outside_window),
            ("keys", &mut t.keys),
        ];
        for (name, slot) in slots {
            *slot = count(name)?;
        }
    }
    let verdict = Verdict::parse(&text("verdict")?).ok_or_else(|| corrupt(route, "verdict"))?;
    Ok(VerificationRecord {
        route: text("route")?,
        source_arn: text("source_arn")?,
        target_arn: text("target_arn")?,
        window_from: text("window_from")?,
        window_from_ms: num("window_from_ms").ok(),
        window_until: text("window_until")?,
        window_until_ms: num("window_until_ms")?,
        grace_ms: num("grace_ms")?,
        totals,
        verdict,
        dead_letters_checked: item
            .get("dead_letters_checked")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        partitions: num("partitions")?.clamp(1, i64::from(u32::MAX)) as u32,
        started_at_ms: num("started_at_ms")?,
        finished_at_ms: num("finished_at_ms")?,
        duration_ms: count("duration_ms")?,
        actor: text("actor")?,
        host: text("host")?,
        keys_with_findings: count("keys_with_findings").unwrap_or(0),
    })
}

/// Stores a verification. Returns the sort key written: the finished-at time, moved forward
/// by a millisecond or more if another verification of the route finished in the same one.
pub async fn store(
    sdk: &SdkConfig,
    table: &str,
    record: &VerificationRecord,
) -> Result<String, StoreError> {
    let client = Client::new(sdk);
    let mut at = record.finished_at_ms;
    for _ in 0..10 {
        let result = client
            .put_item()
            .table_name(table)
            .set_item(Some(item(record, at)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => return Ok(verification_sk(at)),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
            {
                at += 1;
            }
            Err(e) => return Err(store_error(&e)),
        }
    }
    Err(StoreError {
        code: "SortKeyTaken".to_owned(),
        message: format!(
            "10 verifications of {} already end at {}..{} ms in {table}",
            record.route, record.finished_at_ms, at
        ),
    })
}

/// The most recent verification of `route`, if any (Query, descending, limit 1).
pub async fn latest(
    sdk: &SdkConfig,
    table: &str,
    route: &str,
) -> Result<Option<VerificationRecord>, StoreError> {
    let out = Client::new(sdk)
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s(verification_pk(route)))
        .scan_index_forward(false)
        .limit(1)
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_error(&e))?;
    out.items()
        .first()
        .map(|item| record_from(route, item))
        .transpose()
}

/// Who is calling: the ARN from STS GetCallerIdentity. The error says whether there are no
/// usable credentials, they were refused, or STS did not answer (named with its endpoint).
pub async fn caller_identity(sdk: &SdkConfig) -> Result<String, StoreError> {
    let client = aws_sdk_sts::Client::new(sdk);
    let out = client.get_caller_identity().send().await.map_err(|e| {
        let mut e = store_error(&e);
        let refused = matches!(
            e.code.as_str(),
            "InvalidClientTokenId" | "ExpiredToken" | "SignatureDoesNotMatch" | "AccessDenied"
        );
        if refused {
            e.message = format!(
                "STS refused these credentials ({}: {}); refresh them (`aws sso login`, or \
                 check AWS_PROFILE / AWS_ACCESS_KEY_ID)",
                e.code, e.message
            );
        } else if e.code != "CredentialsUnavailable" {
            e.message = format!(
                "{} [STS endpoint {}]",
                e.message,
                super::endpoint_of(sdk, "sts")
            );
        }
        e
    })?;
    out.arn().map(str::to_owned).ok_or_else(|| StoreError {
        code: "NoIdentity".to_owned(),
        message: "STS GetCallerIdentity answered without an ARN".to_owned(),
    })
}

/// The configuration for the old account's streams: `sdk` with the writer role's credentials
/// when `FANOUT_WRITER_ROLE_ARN` is set (with `FANOUT_WRITER_EXTERNAL_ID`), else `sdk`.
pub async fn old_account_config(sdk: &SdkConfig) -> SdkConfig {
    match std::env::var("FANOUT_WRITER_ROLE_ARN") {
        Ok(role) if !role.is_empty() => {
            let external = std::env::var("FANOUT_WRITER_EXTERNAL_ID").ok();
            assumed_role_config(sdk, &role, external.as_deref()).await
        }
        _ => sdk.clone(),
    }
}

/// The configuration for the old account's event source mappings (Lambda consumers of the
/// old streams): `FANOUT_OLD_CONSUMERS_ROLE_ARN` assumed (with `FANOUT_WRITER_EXTERNAL_ID`)
/// when set (Terraform's writer-access `consumers_role_arn`), else `old` (the configuration
/// that reads the old streams).
pub async fn old_lambda_config(sdk: &SdkConfig, old: &SdkConfig) -> SdkConfig {
    match std::env::var("FANOUT_OLD_CONSUMERS_ROLE_ARN") {
        Ok(role) if !role.is_empty() => {
            let external = std::env::var("FANOUT_WRITER_EXTERNAL_ID").ok();
            assumed_role_config(sdk, &role, external.as_deref()).await
        }
        _ => old.clone(),
    }
}

/// `sdk` with credentials of `role_arn` (assumed with `external_id`): for reading the target
/// stream in the old account.
pub async fn assumed_role_config(
    sdk: &SdkConfig,
    role_arn: &str,
    external_id: Option<&str>,
) -> SdkConfig {
    let mut provider = aws_config::sts::AssumeRoleProvider::builder(role_arn)
        .session_name("fanout-verify")
        .configure(sdk);
    if let Some(id) = external_id {
        provider = provider.external_id(id);
    }
    sdk.to_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider.build().await))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_back_into_the_same_record() {
        let record = VerificationRecord {
            route: "r".into(),
            source_arn: "arn:aws:kinesis:us-east-1:123456789012:stream/a".into(),
            target_arn: "arn:aws:kinesis:us-east-1:222222222222:stream/b".into(),
            window_from: "trim-horizon".into(),
            window_from_ms: None,
            window_until: "2026-01-01T00:00:00.000Z".into(),
            window_until_ms: 1_767_225_600_000,
            grace_ms: 30_000,
            totals: Totals {
                source_in_window: 10,
                missing: 1,
                keys: 3,
                ..Totals::default()
            },
            verdict: Verdict::Fail,
            dead_letters_checked: true,
            partitions: 2,
            started_at_ms: 1_767_225_700_000,
            finished_at_ms: 1_767_225_710_000,
            duration_ms: 10_000,
            actor: "arn:aws:sts::123456789012:assumed-role/oncall/me".into(),
            host: "laptop".into(),
            keys_with_findings: 1,
        };
        let it = item(&record, record.finished_at_ms);
        assert_eq!(it["pk"].as_s().unwrap(), "verification#r");
        assert_eq!(it["sk"].as_s().unwrap(), "00000001767225710000");
        assert!(!it.contains_key("window_from_ms"));
        assert_eq!(record_from("r", &it).unwrap(), record);
        let mut from = record.clone();
        from.window_from_ms = Some(5);
        assert_eq!(
            record_from("r", &item(&from, from.finished_at_ms)).unwrap(),
            from
        );
        let mut broken = it.clone();
        broken.remove("verdict");
        assert!(record_from("r", &broken)
            .unwrap_err()
            .message
            .contains("verdict"));
    }
}
