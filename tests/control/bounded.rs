//! No command waits forever: with a service that accepts connections and never answers,
//! `status` ends within its bound, shows what it could read, and names the service and the
//! endpoint that did not answer (not "check your credentials").

use super::*;

/// Every call may take 2 s here (20 s in production); status must end well within 30 s.
const CALL_TIMEOUT: &str = "2s";
const LIMIT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_a_service_that_never_answers_ends_and_names_it() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("hang");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    let hole = support::black_hole();
    let args = ["status", "--migration", &migration];
    // status with the endpoint `variable` names pointed at the listener that never answers.
    let status_with = |variable: &str| {
        support::fanoutctl_within(
            &world,
            &[("FANOUT_AWS_TIMEOUT", CALL_TIMEOUT), (variable, &hole)],
            &args,
            LIMIT,
        )
    };

    // Kinesis hangs: the state and the routing (DynamoDB, S3) are still shown.
    let (code, out, _) = status_with("AWS_ENDPOINT_URL_KINESIS");
    assert_eq!(code, 2, "an incomplete status exits 2:\n{out}");
    assert!(out.contains("state REPLICATING"), "{out}");
    assert!(
        out.contains("routing active"),
        "the routing was read:\n{out}"
    );
    assert!(
        out.contains("NOT READ: shard lags: Kinesis did not answer") && out.contains(&hole),
        "names Kinesis and its endpoint:\n{out}"
    );
    assert!(out.contains("status is INCOMPLETE"), "{out}");
    assert!(!out.contains("credentials"), "{out}");

    // DynamoDB (every service but Kinesis, here) hangs: nothing can be shown, and the message
    // says which service at which endpoint, not to check credentials.
    let (code, out, err) = status_with("AWS_ENDPOINT_URL_DYNAMODB");
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(
        all.contains("DynamoDB did not answer") && all.contains(&hole),
        "names DynamoDB and its endpoint:\n{all}"
    );
    assert!(!all.contains("credentials"), "{all}");

    // STS hangs too (every endpoint but Kinesis's): who is calling cannot be known, and the
    // message says STS did not answer, where.
    let (code, out, err) = status_with("AWS_ENDPOINT_URL");
    let all = format!("{out}{err}");
    assert_ne!(code, 0, "{all}");
    assert!(
        all.contains("STS did not answer") && all.contains(&hole),
        "names STS and its endpoint:\n{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_table_or_migration_is_named_with_what_exists() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("orders");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    // A misspelt migration: the ones that exist are listed, the closest first.
    let typo = format!("{}x", &migration[..migration.len() - 1]);
    let (code, out, err) =
        support::fanoutctl_within(&world, &[], &["status", "--migration", &typo], LIMIT);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    let listed = all
        .split("closest first): ")
        .nth(1)
        .unwrap_or_else(|| panic!("no list of migrations:\n{all}"));
    assert!(listed.starts_with(&migration), "closest first:\n{all}");

    // A table that does not exist: named, with the region and endpoint.
    let (code, out, err) = support::fanoutctl_within(
        &world,
        &[],
        &[
            "status",
            "--migration",
            &migration,
            "--table",
            "no-such-table",
        ],
        LIMIT,
    );
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(
        all.contains("DynamoDB table no-such-table was not found at")
            && all.contains("region us-east-1"),
        "{all}"
    );
}
