//! The replicator Lambda binary, run as Lambda runs it: against a Lambda Runtime API (a small
//! fake here, on 127.0.0.1) with the local stack behind it, its logs captured as CloudWatch
//! would get them. A batch goes in as Lambda's Kinesis event and lands in the target; an event
//! the function cannot read is one invocation error of type `InvalidEvent` and one ERROR line;
//! an event without records is a success.

#[path = "../../../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use fanout::aws::source::KinesisSource;
use fanout::event::build_event;
use runtime_api::{Answer, Runtime};
use serde_json::json;
use stack::{records, unique, Backend, World};

const BIN: &str = env!("CARGO_BIN_EXE_replicator");

struct Function(Child);

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Lines of the function's log (stdout and stderr, as Lambda sends both to CloudWatch) that
/// are ERROR lines, once the log has been quiet for a moment.
fn error_lines(log: &std::path::Path, since: usize) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .skip(since)
        .filter(|l| l.contains("ERROR"))
        .map(str::to_owned)
        .collect()
}

fn log_len(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicator_lambda_replicates_a_batch_and_names_a_bad_event_once() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let source = KinesisSource::new(&world.new_account);
    source
        .put_all(&world.source, &records(30, 5, 50))
        .await
        .expect("write source");
    let batch: Vec<fanout::model::SourceRecord> = source
        .read_all(&world.source)
        .await
        .expect("read source")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let shard = "shardId-000000000000";

    let runtime = Runtime::start("replicator").await;
    let log = std::env::temp_dir().join(format!("{}.log", unique("replicator-lambda")));
    let out = std::fs::File::create(&log).unwrap();
    let _function = Function(
        Command::new(BIN)
            .envs(world.process_env())
            .env_remove("AWS_PROFILE")
            .env("FANOUT_LOG", "info")
            .env("AWS_LAMBDA_RUNTIME_API", &runtime.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "replicator")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/replicator")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the replicator binary"),
    );

    // A real batch: every record written, nothing reported failed.
    let event =
        serde_json::to_value(build_event(&world.source, shard, "us-east-1", &batch)).unwrap();
    match runtime.invoke(event).await {
        Answer::Response(r) => assert_eq!(r, json!({"batchItemFailures": []})),
        Answer::Error(e) => panic!("the batch failed: {e}"),
    }
    let started = Instant::now();
    let written = loop {
        let n = source.read_all(&world.target).await.unwrap().len();
        if n >= batch.len() || started.elapsed() > Duration::from_secs(20) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(written, batch.len(), "records in the target");

    // An event it cannot read: one invocation error, typed, and one ERROR line.
    let before = log_len(&log);
    match runtime.invoke(json!({"Records": "not a list"})).await {
        Answer::Error(e) => {
            assert_eq!(e["errorType"], "InvalidEvent", "{e}");
            assert!(
                e["errorMessage"].as_str().unwrap_or_default().len() > 10,
                "{e}"
            );
        }
        Answer::Response(r) => panic!("expected an invocation error, got {r}"),
    }
    let errors = error_lines(&log, before);
    assert_eq!(errors.len(), 1, "one ERROR line per bad event: {errors:#?}");

    // Two records with one sequence number: named, not collapsed.
    let before = log_len(&log);
    let twice = vec![batch[0].clone(), batch[0].clone()];
    let event =
        serde_json::to_value(build_event(&world.source, shard, "us-east-1", &twice)).unwrap();
    match runtime.invoke(event).await {
        Answer::Error(e) => {
            assert_eq!(e["errorType"], "InvalidEvent", "{e}");
            assert!(
                e["errorMessage"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&batch[0].seq.to_string()),
                "{e}"
            );
        }
        Answer::Response(r) => panic!("expected an invocation error, got {r}"),
    }
    assert_eq!(error_lines(&log, before).len(), 1);

    // No records: nothing to do, and nothing for Lambda to retry.
    let before = log_len(&log);
    match runtime.invoke(json!({"Records": []})).await {
        Answer::Response(r) => assert_eq!(r, json!({"batchItemFailures": []}), "{r}"),
        Answer::Error(e) => panic!("an empty event failed: {e}"),
    }
    assert!(error_lines(&log, before).is_empty());
}
