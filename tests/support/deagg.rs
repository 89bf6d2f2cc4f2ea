//! The independent check of KPL aggregated records: AWS's own Python deaggregator
//! (`tests/kpl_deagg.py`, installed by infra/local/install.sh) reads what the replicator wrote.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The user records in `records` ((partition key, data) as Kinesis stored them), in order, as
/// AWS's deaggregator sees them; `None` (after `not_running`) when it is not installed.
pub fn user_records(records: &[(String, Vec<u8>)]) -> Option<Vec<(String, Vec<u8>)>> {
    Some(
        user_records_with_hash_keys(records)?
            .into_iter()
            .map(|(k, _, d)| (k, d))
            .collect(),
    )
}

/// A user record: partition key, explicit hash key (if it has one), data.
pub type UserRecord = (String, Option<String>, Vec<u8>);

/// Like [`user_records`], with each user record's explicit hash key when it has one.
pub fn user_records_with_hash_keys(records: &[(String, Vec<u8>)]) -> Option<Vec<UserRecord>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".local/venv/bin/python");
    if !python.exists() {
        super::stack::not_running(&format!(
            "{} is missing (run infra/local/install.sh)",
            python.display()
        ));
        return None;
    }
    let mut input = String::new();
    for (key, data) in records {
        let line = serde_json::json!({"data": B64.encode(data), "partition_key": key});
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut child = Command::new(&python)
        .arg(root.join("tests/kpl_deagg.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the deaggregator");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("feed the deaggregator");
    let out = child.wait_with_output().expect("deaggregator output");
    if out.status.code() == Some(3) {
        super::stack::not_running(&String::from_utf8_lossy(&out.stderr));
        return None;
    }
    assert!(
        out.status.success(),
        "deaggregator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                (
                    v["partition_key"].as_str().expect("key").to_owned(),
                    v["explicit_hash_key"].as_str().map(str::to_owned),
                    B64.decode(v["data"].as_str().expect("data"))
                        .expect("base64"),
                )
            })
            .collect(),
    )
}
