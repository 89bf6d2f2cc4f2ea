//! The local AWS stack as integration tests see it: endpoints from the environment
//! (`scripts/test.sh` starts the emulators and exports them), and one fresh "world" per test:
//! a source stream in the new account, a target stream in the old account, a table and a bucket.

use std::collections::HashMap;

use aws_config::SdkConfig;
use fanout::aws::LocalEndpoints;
use fanout::config::{Limits, ReplicatorConfig};
use fanout::model::{Route, StreamArn, WriterRole};

pub const NEW_ACCOUNT: &str = "123456789012";
pub const OLD_ACCOUNT: &str = "222222222222";
pub const WRITER_ROLE: &str = "arn:aws:iam::222222222222:role/fanout-writer";
pub const EXTERNAL_ID: &str = "fanout-demo-external-id";

/// Which Kinesis emulator a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    KinesisLocal,
    /// moto's Kinesis, single-threaded: the second backend.
    Moto,
}

/// Endpoints of the running emulators.
#[derive(Clone, Debug)]
pub struct Stack {
    pub kinesis_local: String,
    pub moto: String,
    pub moto_kinesis: Option<String>,
}

impl Stack {
    /// Reads the endpoints; fails the test with instructions when the stack is not running.
    pub fn from_env() -> Stack {
        let get = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        match (get("FANOUT_KINESIS_ENDPOINT"), get("FANOUT_MOTO_ENDPOINT")) {
            (Some(kinesis_local), Some(moto)) => Stack { kinesis_local, moto, moto_kinesis: get("FANOUT_MOTO_KINESIS_ENDPOINT") },
            _ => panic!(
                "The local AWS stack is not running (FANOUT_KINESIS_ENDPOINT / FANOUT_MOTO_ENDPOINT unset). \
                 Run the tests with scripts/test.sh, or start it: infra/local/start.sh && . .local/run/env"
            ),
        }
    }

    /// The Kinesis endpoint of `backend`, or `None` (with the reason printed) if not running.
    pub fn kinesis(&self, backend: Backend) -> Option<String> {
        match backend {
            Backend::KinesisLocal => Some(self.kinesis_local.clone()),
            Backend::Moto => {
                if self.moto_kinesis.is_none() {
                    not_running("FANOUT_MOTO_KINESIS_ENDPOINT is not set (infra/local/start.sh moto-kinesis)");
                }
                self.moto_kinesis.clone()
            }
        }
    }
}

/// An SDK configuration for `account` (kinesis-local picks the account from the access key).
pub async fn sdk_config(kinesis: &str, moto: &str, account: &str) -> SdkConfig {
    let endpoints = LocalEndpoints {
        kinesis: kinesis.to_owned(),
        other: moto.to_owned(),
    };
    fanout::aws::local_sdk_config(endpoints, account).await
}

/// A short random suffix for resource names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A test whose emulator is not running is skipped on a developer's machine (with the reason
/// printed), and fails under CI (`CI=true`), where `scripts/test.sh` starts every emulator: a
/// test that returned early there would count as passed without having run.
/// Says a test is skipped because an emulator is missing. Under CI that is a failure. Outside
/// it the test returns early, and libtest would count it as passed: so the test's name and the
/// reason also go to the file `FANOUT_SKIPPED_LOG` names (`scripts/test.sh` sets it and counts
/// those tests as skipped in its closing line).
pub fn not_running(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and an emulator is missing: {why}");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    eprintln!("skipped: {test}: {why}");
    if let Some(path) = std::env::var_os("FANOUT_SKIPPED_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}\t{why}");
        }
    }
}

/// One test's resources.
pub struct World {
    pub stack: Stack,
    pub backend: Backend,
    /// Where Kinesis calls go (an emulator, or a fault proxy in front of it).
    pub kinesis_endpoint: String,
    /// Where DynamoDB, S3 and STS calls go.
    pub state_endpoint: String,
    pub new_account: SdkConfig,
    pub source: StreamArn,
    pub target: StreamArn,
    pub table: String,
    pub bucket: String,
}

impl World {
    /// Creates a source stream (new account), a target stream (old account), a table and a bucket.
    /// Returns `None` when `backend` is not running.
    pub async fn create(backend: Backend, source_shards: i32, target_shards: i32) -> Option<World> {
        let stack = Stack::from_env();
        let state = stack.moto.clone();
        World::create_in(stack, state, backend, source_shards, target_shards).await
    }

    /// Like [`World::create`], with DynamoDB, S3 and STS on the single-threaded moto: for
    /// tests where processes race conditional writes on one item. Threaded moto checks a
    /// condition and applies the write without a lock, so two concurrent conditional writes
    /// can both succeed (seen: two runners both taking counter 1 of one lease); DynamoDB
    /// makes them atomic.
    pub async fn create_serialized(
        backend: Backend,
        source_shards: i32,
        target_shards: i32,
    ) -> Option<World> {
        let stack = Stack::from_env();
        let Some(state) = stack.moto_kinesis.clone() else {
            not_running("needs the single-threaded moto (infra/local/start.sh moto-kinesis)");
            return None;
        };
        World::create_in(stack, state, backend, source_shards, target_shards).await
    }

    async fn create_in(
        stack: Stack,
        state: String,
        backend: Backend,
        source_shards: i32,
        target_shards: i32,
    ) -> Option<World> {
        let kinesis = stack.kinesis(backend)?;
        let new_account = sdk_config(&kinesis, &state, NEW_ACCOUNT).await;
        // moto's Kinesis keeps all streams in its default account: the target then lives there.
        let old_account_id = if backend == Backend::Moto {
            NEW_ACCOUNT
        } else {
            OLD_ACCOUNT
        };
        let old_account = sdk_config(&kinesis, &state, old_account_id).await;
        let source = create_stream(&new_account, &unique("src"), source_shards).await;
        let target = create_stream(&old_account, &unique("dst"), target_shards).await;
        let table = unique("fanout-state");
        create_table(&new_account, &table).await;
        let bucket = unique("fanout-dlq");
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&new_account)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("create bucket");
        Some(World {
            stack,
            backend,
            kinesis_endpoint: kinesis,
            state_endpoint: state,
            new_account,
            source,
            target,
            table,
            bucket,
        })
    }

    /// The SDK configuration of the new account with Kinesis calls sent to `kinesis`.
    pub async fn sdk_via(&self, kinesis: &str) -> SdkConfig {
        sdk_config(kinesis, &self.state_endpoint, NEW_ACCOUNT).await
    }

    pub fn route(&self) -> Route {
        Route {
            name: Route::default_name(&self.source, &self.target),
            source: self.source.clone(),
            target: self.target.clone(),
            writer_role: Some(WriterRole {
                role_arn: WRITER_ROLE.to_owned(),
                external_id: Some(EXTERNAL_ID.to_owned()),
            }),
            order: Default::default(),
        }
    }

    /// The replicator configuration for this world, with fast backoff for tests.
    pub fn config(&self) -> ReplicatorConfig {
        let vars = self.vars();
        let config =
            ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()).expect("test configuration");
        assert_eq!(
            config.limits.max_request_entries,
            Limits::default().max_request_entries
        );
        config
    }

    /// The environment a `fanoutctl` process needs to act on this world: the `FANOUT_*`
    /// configuration, and the endpoints and credentials of the new account.
    pub fn process_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .vars()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        for (k, v) in [
            ("AWS_ENDPOINT_URL", self.state_endpoint.as_str()),
            ("AWS_ENDPOINT_URL_KINESIS", self.kinesis_endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", NEW_ACCOUNT),
            ("AWS_SECRET_ACCESS_KEY", "local"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        env
    }

    /// The `FANOUT_*` variables of this world.
    pub fn vars(&self) -> HashMap<&'static str, String> {
        HashMap::from([
            (
                "FANOUT_ROUTES",
                format!(
                    r#"[{{"source":"{}","target":"{}"}}]"#,
                    self.source, self.target
                ),
            ),
            ("FANOUT_TABLE", self.table.clone()),
            ("FANOUT_DEAD_LETTER_BUCKET", self.bucket.clone()),
            ("FANOUT_WRITER_ROLE_ARN", WRITER_ROLE.to_owned()),
            ("FANOUT_WRITER_EXTERNAL_ID", EXTERNAL_ID.to_owned()),
            ("FANOUT_BACKOFF_BASE_MS", "10".to_owned()),
            ("FANOUT_BACKOFF_MAX_MS", "200".to_owned()),
            ("FANOUT_DEADLINE_MARGIN_MS", "1000".to_owned()),
            ("FANOUT_REQUEST_TIMEOUT_MS", "2000".to_owned()),
            // Test replicators see a mode change within 200 ms, so a flip's settle of a
            // few hundred ms is longer than their mode cache, as `start` requires.
            ("FANOUT_MODE_CACHE_MS", "200".to_owned()),
        ])
    }
}

pub async fn create_stream(sdk: &SdkConfig, name: &str, shards: i32) -> StreamArn {
    fanout::aws::source::KinesisSource::new(sdk)
        .create_stream(name, shards)
        .await
        .unwrap_or_else(|e| panic!("create stream {name}: {e}"))
}

pub async fn create_table(sdk: &SdkConfig, table: &str) {
    fanout::aws::table::create_table(sdk, table)
        .await
        .expect("create table");
}

/// Test records: unique payloads "key|n|padding" over `keys` partition keys.
pub fn records(n: usize, keys: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let key = format!("key-{}", (i * 7919) % keys);
            let mut data = format!("{key}|{i}|").into_bytes();
            data.resize(size.max(data.len()), b'.');
            (key, data)
        })
        .collect()
}
