//! The local event-source runner keeps the event source mapping's rules, checked against
//! kinesis-local with a scripted invoker: a reported failure resumes at that record, a
//! handler error retries the whole batch, and start positions pick the right records.

mod support;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::aws::source::{KinesisSource, StartPosition};
use fanout::event;
use fanout::runner::{self, Invoked, Invoker, RunnerOptions};
use support::stack::{records, Backend, World};

/// Answers from a script, one per invocation, then success; records every event's records.
#[derive(Default)]
struct Scripted {
    answers: Mutex<Vec<Answer>>,
    /// Per invocation: the data of each record, as text.
    seen: Mutex<Vec<Vec<String>>>,
}

enum Answer {
    Error,
    FailAt(usize),
}

impl Invoker for Scripted {
    async fn invoke(&self, payload: Vec<u8>, _timeout: Duration) -> Result<Invoked, String> {
        let batch = event::parse_event(&payload).map_err(|e| e.to_string())?;
        self.seen.lock().unwrap().push(
            batch
                .records
                .iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                .collect(),
        );
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                None
            } else {
                Some(answers.remove(0))
            }
        };
        let body = match answer {
            None => br#"{"batchItemFailures":[]}"#.to_vec(),
            Some(Answer::Error) => return Err("function error: boom".to_owned()),
            Some(Answer::FailAt(i)) => {
                // Pages can be shorter than the batch size: fail at the last record if need be.
                let seq = &batch.records[i.min(batch.records.len() - 1)].seq;
                format!(r#"{{"batchItemFailures":[{{"itemIdentifier":"{seq}"}}]}}"#).into_bytes()
            }
        };
        Ok(Invoked { body, report: None })
    }
}

fn options() -> RunnerOptions {
    RunnerOptions {
        until_caught_up: true,
        batch_size: 10,
        idle_poll: Duration::from_millis(50),
        ..RunnerOptions::default()
    }
}

#[tokio::test]
async fn a_reported_failure_resumes_there_and_an_error_retries_the_whole_batch() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(25, 3, 20))
        .await
        .unwrap();
    let invoker = Arc::new(Scripted {
        answers: Mutex::new(vec![Answer::Error, Answer::FailAt(4)]),
        ..Default::default()
    });
    let summary = runner::run(
        &reader,
        &world.source,
        invoker.clone(),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &options(),
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let seen = invoker.seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(seen[1], seen[0], "a handler error retries the whole batch");
    let k = 4.min(seen[1].len() - 1);
    assert_eq!(
        seen[2],
        seen[1][k..].to_vec(),
        "a reported failure resumes at that record"
    );
    assert_eq!(summary.records_delivered(), 25);
    let shard = summary.shards.values().next().unwrap();
    assert_eq!(shard.retried_invocations, 2);
    let delivered: Vec<String> = {
        let mut all: Vec<String> = Vec::new();
        for batch in &seen {
            for d in batch {
                if !all.contains(d) {
                    all.push(d.clone());
                }
            }
        }
        all
    };
    assert_eq!(delivered.len(), 25, "every record reached the handler");
}

#[tokio::test]
async fn a_shard_that_keeps_failing_stops_after_max_attempts_without_skipping() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(5, 1, 20))
        .await
        .unwrap();
    let invoker = Arc::new(Scripted {
        // Fail at the third record, then keep failing at the first: the same record each time.
        answers: Mutex::new(
            std::iter::once(Answer::FailAt(2))
                .chain((0..10).map(|_| Answer::FailAt(0)))
                .collect(),
        ),
        ..Default::default()
    });
    let opts = RunnerOptions {
        max_attempts: Some(3),
        ..options()
    };
    let summary = runner::run(
        &reader,
        &world.source,
        invoker.clone(),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &opts,
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let shard = summary.shards.values().next().unwrap();
    let why = shard.stopped.as_deref().expect("the shard stopped");
    assert!(why.contains("after 3 attempts"), "{why}");
    let seen = invoker.seen.lock().unwrap().clone();
    let stuck = &seen[seen.len() - 1][0];
    assert!(
        seen[1..].iter().all(|b| &b[0] == stuck),
        "every retry starts at the failing record: {seen:?}"
    );
    let before: u64 = seen[0].iter().take_while(|d| *d != stuck).count() as u64;
    assert_eq!(
        summary.records_delivered(),
        before,
        "records after the failing one were not passed over"
    );
    assert!(before < 5);
}

#[tokio::test]
async fn latest_and_at_timestamp_start_where_asked() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(6, 2, 20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reader
        .put_all(
            &world.source,
            &records(4, 2, 20)
                .into_iter()
                .map(|(k, d)| (k, [b"late-".as_slice(), &d].concat()))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();

    let from_time = Arc::new(Scripted::default());
    let opts = RunnerOptions {
        start: StartPosition::AtTimestamp(cut),
        ..options()
    };
    runner::run(
        &reader,
        &world.source,
        from_time.clone(),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &opts,
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    let got: Vec<String> = from_time.seen.lock().unwrap().concat();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got.iter().all(|d| d.starts_with("late-")));

    let latest = Arc::new(Scripted::default());
    let opts = RunnerOptions {
        start: StartPosition::Latest,
        ..options()
    };
    runner::run(
        &reader,
        &world.source,
        latest.clone(),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &opts,
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .unwrap();
    assert!(
        latest.seen.lock().unwrap().is_empty(),
        "LATEST starts after everything already there"
    );
}
