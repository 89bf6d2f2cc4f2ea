//! `fanout::kpl`'s aggregated records, taken apart by AWS's own Python deaggregator
//! (aws_kinesis_agg, through tests/kpl_deagg.py in the local venv): every user record must come
//! back with its partition key, explicit hash key and bytes, in order, and plain records must
//! pass through unchanged. No emulator is needed.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use fanout::kpl::{self, Aggregator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// One user record as the consumer should see it.
#[derive(Clone, Debug, PartialEq)]
struct User {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Vec<u8>,
}

impl User {
    fn new(pk: &str, ehk: Option<&str>, data: Vec<u8>) -> User {
        User {
            partition_key: pk.to_owned(),
            explicit_hash_key: ehk.map(str::to_owned),
            data,
        }
    }
}

/// One Kinesis record written to the stream, and the user records it should yield.
struct Written {
    partition_key: String,
    data: Vec<u8>,
    users: Vec<User>,
}

fn aggregated(outer_key: &str, users: Vec<User>) -> Written {
    let mut agg = Aggregator::new();
    for u in &users {
        let before = agg.size_if_added(
            &u.partition_key,
            u.explicit_hash_key.as_deref(),
            u.data.len(),
        );
        agg.add(&u.partition_key, u.explicit_hash_key.as_deref(), &u.data);
        assert_eq!(agg.size(), before);
    }
    let data = agg.finish();
    assert!(kpl::is_aggregated(&data));
    Written {
        partition_key: outer_key.to_owned(),
        data,
        users,
    }
}

fn plain(key: &str, data: Vec<u8>) -> Written {
    assert!(!kpl::is_aggregated(&data));
    Written {
        partition_key: key.to_owned(),
        users: vec![User::new(key, None, data.clone())],
        data,
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

fn written_records() -> Vec<Written> {
    let mut rng = StdRng::seed_from_u64(0x4b504c);
    let max = u128::MAX.to_string();
    let mid = (1u128 << 127).to_string();

    let many_small: Vec<User> = (0..1000)
        .map(|i| {
            let len = rng.random_range(1..64);
            User::new(
                &format!("key-{}", i % 37),
                None,
                random_bytes(&mut rng, len),
            )
        })
        .collect();
    let with_ehks: Vec<User> = [
        ("a", "0"),
        ("b", &max),
        ("a", &mid),
        ("c", "0"),
        ("a", &max),
    ]
    .into_iter()
    .map(|(pk, ehk)| User::new(pk, Some(ehk), random_bytes(&mut rng, 10)))
    .collect();
    let mixed = vec![
        User::new("ключ", None, vec![]),
        User::new("🔑", Some("12345678901234567890"), vec![0]),
        User::new("日本語のキー", None, random_bytes(&mut rng, 100 * 1024)),
        User::new("ключ", Some(&mid), b"x".to_vec()),
        User::new("plain-ascii", None, "données".as_bytes().to_vec()),
        User::new("🔑", None, vec![0xF3, 0x89, 0x9A, 0xC2]),
    ];
    let mut bad_checksum = kpl::MAGIC.to_vec();
    bad_checksum.extend(random_bytes(&mut rng, 40));
    let nothing = Aggregator::new().finish();

    vec![
        plain("plain-first", b"not aggregated".to_vec()),
        aggregated("outer-1", many_small),
        aggregated("outer-2", with_ehks),
        plain("binary", random_bytes(&mut rng, 300)),
        aggregated("outer-3", mixed),
        aggregated("outer-4", vec![User::new("only", None, vec![])]),
        // Starts with the magic but fails the checksum: a plain record to every consumer.
        plain("magic-bad-checksum", bad_checksum),
        // An aggregate of nothing (20 bytes): consumers pass it through as a plain record.
        plain("empty-aggregate", nothing),
        plain("one-byte", vec![0xF3]),
    ]
}

#[derive(Deserialize)]
struct Line {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: String,
}

/// A missing deaggregator skips the test on a developer's machine, loudly, and fails it under
/// CI (`CI=true`), where a test that returned early would count as passed without having run
/// (the convention of tests/support/stack.rs `not_running`).
fn not_installed(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the KPL deaggregator is missing: {why}; run infra/local/install.sh");
    }
    eprintln!("SKIPPED: kpl deaggregator check: {why}; run infra/local/install.sh");
}

#[test]
fn aws_deaggregator_reads_our_aggregated_records() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".local/venv/bin/python");
    if !python.exists() {
        not_installed(&format!("{} is missing", python.display()));
        return;
    }
    let written = written_records();
    let mut input = String::new();
    for w in &written {
        let line =
            serde_json::json!({"data": B64.encode(&w.data), "partition_key": w.partition_key});
        input.push_str(&line.to_string());
        input.push('\n');
    }

    let mut child = Command::new(&python)
        .arg(root.join("tests/kpl_deagg.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the venv's python");
    let mut stdin = child.stdin.take().unwrap();
    // Written from another thread so a full stdout pipe cannot stall both sides.
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for kpl_deagg.py");
    // A failed write follows from the script's own failure, which says more: checked after it.
    let fed = feeder.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        not_installed(stderr.trim());
        return;
    }
    assert!(
        out.status.success(),
        "kpl_deagg.py failed ({}):\n{stderr}",
        out.status
    );
    fed.expect("write to kpl_deagg.py");
    // The deaggregator logs a sub-record it cannot read and carries on; that is a failure here.
    assert!(
        stderr.trim().is_empty(),
        "kpl_deagg.py wrote to stderr:\n{stderr}"
    );

    let got: Vec<User> = String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(|line| {
            let l: Line = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            User {
                partition_key: l.partition_key,
                explicit_hash_key: l.explicit_hash_key,
                data: B64.decode(&l.data).expect("base64 data"),
            }
        })
        .collect();
    let want: Vec<User> = written.into_iter().flat_map(|w| w.users).collect();

    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            (&g.partition_key, &g.explicit_hash_key, g.data.len()),
            (&w.partition_key, &w.explicit_hash_key, w.data.len()),
            "user record {i}: key, explicit hash key, length"
        );
        assert!(g.data == w.data, "user record {i}: data differs");
    }
    assert_eq!(got.len(), want.len(), "number of user records");
}
