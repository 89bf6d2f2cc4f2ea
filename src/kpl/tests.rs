use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn md5_hex_to_u128(hex: &str) -> u128 {
    u128::from_str_radix(hex, 16).unwrap()
}

#[test]
fn hash_key_is_md5_read_big_endian() {
    // Digests from RFC 1321's test suite, independent of the md-5 crate.
    let cases = [
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
        ("a", "0cc175b9c0f1b6a831c399e269772661"),
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    ];
    for (key, hex) in cases {
        assert_eq!(hash_key(key), md5_hex_to_u128(hex), "key {key:?}");
    }
    // Big-endian: the first digest byte is the most significant.
    assert_eq!(hash_key("") >> 120, 0xd4);
}

#[test]
fn explicit_hash_keys_are_decimal_u128() {
    let max = u128::MAX.to_string();
    let cases: [(&str, Option<u128>); 12] = [
        ("0", Some(0)),
        ("1", Some(1)),
        ("0042", Some(42)),
        (&max, Some(u128::MAX)),
        ("340282366920938463463374607431768211456", None), // 2^128
        ("", None),
        ("+1", None),
        ("-1", None),
        (" 1", None),
        ("1 ", None),
        ("1e3", None),
        ("١", None), // Arabic-Indic digit one: not ASCII
    ];
    for (text, want) in cases {
        assert_eq!(parse_explicit_hash_key(text), want, "{text:?}");
    }
}

#[test]
fn varint_len_matches_encoding() {
    for v in [
        0,
        1,
        127,
        128,
        16_383,
        16_384,
        u32::MAX as u64,
        u64::MAX >> 1,
        u64::MAX,
    ] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "{v}");
        let mut r = Reader::new(&out, 0);
        assert_eq!(r.varint(), Ok(v));
        assert!(r.done());
    }
}

#[test]
fn encoding_matches_a_hand_written_message() {
    let mut agg = Aggregator::new();
    agg.add("k", None, b"x");
    agg.add("k", Some("7"), b"");
    let rec = agg.finish();
    let message: &[u8] = &[
        0x0A, 1, b'k', // partition_key_table[0] = "k"
        0x12, 1, b'7', // explicit_hash_key_table[0] = "7"
        0x1A, 5, 0x08, 0, 0x1A, 1, b'x', // records[0]: pk 0, data "x"
        0x1A, 6, 0x08, 0, 0x10, 0, 0x1A, 0, // records[1]: pk 0, ehk 0, data ""
    ];
    assert_eq!(&rec[..4], &MAGIC);
    assert_eq!(&rec[4..rec.len() - 16], message);
    assert_eq!(&rec[rec.len() - 16..], Md5::digest(message).as_slice());
}

#[test]
fn round_trip_keeps_keys_data_and_order() {
    let big = vec![0xAB; 100 * 1024];
    let inputs: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("a", None, b"one"),
        ("b", None, b""),
        ("a", None, b"\x00"),
        ("a", Some("0"), b"ehk zero"),
        ("c", Some("340282366920938463463374607431768211455"), b"max"),
        ("b", Some("0"), b"same ehk again"),
        ("ключ", None, "данные".as_bytes()),
        ("🔑", Some("12345"), &big),
        ("a", None, b"last"),
    ];
    let mut agg = Aggregator::new();
    for (pk, ehk, data) in &inputs {
        agg.add(pk, *ehk, data);
    }
    assert_eq!(agg.len(), inputs.len());
    let rec = agg.finish();
    assert!(is_aggregated(&rec));
    let got = deaggregate(&rec).unwrap();
    let want: Vec<SubRecord> = inputs
        .iter()
        .map(|(pk, ehk, data)| SubRecord {
            partition_key: pk.to_string(),
            explicit_hash_key: ehk.map(str::to_owned),
            data: data.to_vec(),
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn tables_hold_each_key_once() {
    let mut agg = Aggregator::new();
    for i in 0..300 {
        agg.add(&format!("key-{}", i % 3), Some(&format!("{}", i % 2)), b"d");
    }
    assert_eq!(agg.pk_index.len(), 3);
    assert_eq!(agg.ehk_index.len(), 2);
    assert_eq!(agg.pk_table.len(), 3 * (2 + "key-0".len()));
    assert_eq!(agg.ehk_table.len(), 2 * (2 + 1));
}

fn random_key(rng: &mut StdRng, choices: usize) -> String {
    let n = rng.random_range(0..choices);
    // Some keys long enough for two-byte length prefixes, some not ASCII.
    match n % 3 {
        0 => format!("k{n}"),
        1 => format!("{n}-{}", "x".repeat(130)),
        _ => format!("ключ-{n}"),
    }
}

#[test]
fn size_if_added_is_the_finished_length_at_every_step() {
    let mut rng = StdRng::seed_from_u64(0x6b706c);
    // Over 127 distinct keys so table indices need two-byte varints.
    let mut agg = Aggregator::with_capacity(1 << 16);
    let mut want = Vec::new();
    assert_eq!(agg.size(), OVERHEAD);
    for step in 0..400 {
        let pk = random_key(&mut rng, 200);
        let ehk = rng
            .random_bool(0.3)
            .then(|| rng.random_range(0..150u128 * 3).to_string());
        let len = match rng.random_range(0..10) {
            0 => 0,
            1 => rng.random_range(128..20_000),
            _ => rng.random_range(1..200),
        };
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let predicted = agg.size_if_added(&pk, ehk.as_deref(), data.len());
        agg.add(&pk, ehk.as_deref(), &data);
        assert_eq!(agg.size(), predicted, "step {step}");
        want.push(SubRecord {
            partition_key: pk,
            explicit_hash_key: ehk,
            data,
        });
        if step % 50 == 0 {
            assert_eq!(agg.clone().finish().len(), predicted, "step {step}");
        }
    }
    assert!(agg.pk_index.len() > 127);
    let size = agg.size();
    let rec = agg.finish();
    assert_eq!(rec.len(), size);
    assert_eq!(deaggregate(&rec).unwrap(), want);
}

#[test]
fn size_if_added_is_exact_for_every_finish() {
    // The same property checked against finish() itself after every add.
    let mut rng = StdRng::seed_from_u64(7);
    let mut added: Vec<(String, Option<String>, Vec<u8>)> = Vec::new();
    for step in 0..300 {
        let pk = random_key(&mut rng, 20);
        let ehk = rng
            .random_bool(0.5)
            .then(|| rng.random::<u128>().to_string());
        let data = vec![7u8; rng.random_range(0..300)];
        let mut agg = Aggregator::new();
        for (p, e, d) in &added {
            agg.add(p, e.as_deref(), d);
        }
        let predicted = agg.size_if_added(&pk, ehk.as_deref(), data.len());
        agg.add(&pk, ehk.as_deref(), &data);
        assert_eq!(agg.finish().len(), predicted, "step {step}");
        added.push((pk, ehk, data));
        if added.len() > 40 {
            added.clear();
        }
    }
}

#[test]
fn plain_records_are_not_aggregated() {
    let mut agg = Aggregator::new();
    agg.add("k", None, b"payload");
    let good = agg.finish();

    let mut bad_digest = good.clone();
    *bad_digest.last_mut().unwrap() ^= 1;
    let mut bad_body = good.clone();
    bad_body[6] ^= 0x40;
    let mut bad_magic = good.clone();
    bad_magic[0] = 0xF2;
    let mut empty_aggregate = MAGIC.to_vec();
    empty_aggregate.extend_from_slice(&Md5::digest(b""));

    let cases: [(&str, &[u8], KplError); 8] = [
        ("empty", b"", KplError::TooShort { len: 0 }),
        ("magic only", &MAGIC, KplError::TooShort { len: 4 }),
        (
            "aggregate of nothing",
            &empty_aggregate,
            KplError::TooShort { len: 20 },
        ),
        (
            "plain text",
            b"{\"order\": 17, \"total\": 3}",
            KplError::NoMagic,
        ),
        ("magic, bad digest", &bad_digest, KplError::BadChecksum),
        ("magic, changed body", &bad_body, KplError::BadChecksum),
        ("changed magic", &bad_magic, KplError::NoMagic),
        (
            "magic then junk",
            &[&MAGIC[..], &[0u8; 40]].concat(),
            KplError::BadChecksum,
        ),
    ];
    for (name, data, err) in cases {
        assert!(!is_aggregated(data), "{name}");
        assert_eq!(deaggregate(data), Err(err), "{name}");
    }
    assert!(is_aggregated(&good));
}

/// Wraps a hand-made protobuf message in magic and digest.
fn wrap(message: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(message);
    out.extend_from_slice(&Md5::digest(message));
    out
}

#[test]
fn malformed_messages_are_errors() {
    let cases: [(&str, Vec<u8>, KplError); 10] = [
        (
            "varint cut off",
            vec![0x0A, 0x80],
            KplError::TruncatedVarint { offset: 1 },
        ),
        (
            "varint of 11 bytes",
            [&[0x08][..], &[0xFF; 10]].concat(),
            KplError::VarintOverflow { offset: 1 },
        ),
        (
            "string longer than the message",
            vec![0x0A, 5, b'a'],
            KplError::Truncated {
                offset: 1,
                needed: 5,
                available: 1,
            },
        ),
        (
            "field number 0",
            vec![0x02, 0],
            KplError::FieldNumberZero { offset: 0 },
        ),
        (
            "group",
            vec![0x0B, 0x0C],
            KplError::UnsupportedWireType {
                wire_type: 3,
                offset: 0,
            },
        ),
        (
            "partition key index past the table",
            vec![0x0A, 1, b'k', 0x1A, 5, 0x08, 1, 0x1A, 1, b'x'],
            KplError::IndexOutOfTable {
                record: 0,
                table: "partition key table",
                index: 1,
                table_len: 1,
            },
        ),
        (
            "explicit hash key index with no table",
            vec![0x0A, 1, b'k', 0x1A, 7, 0x08, 0, 0x10, 0, 0x1A, 1, b'x'],
            KplError::IndexOutOfTable {
                record: 0,
                table: "explicit hash key table",
                index: 0,
                table_len: 0,
            },
        ),
        (
            "record without data",
            vec![0x0A, 1, b'k', 0x1A, 2, 0x08, 0],
            KplError::MissingField {
                record: 0,
                field: "data",
            },
        ),
        (
            "record without partition key index",
            vec![0x0A, 1, b'k', 0x1A, 3, 0x1A, 1, b'x'],
            KplError::MissingField {
                record: 0,
                field: "partition_key_index",
            },
        ),
        (
            "partition key not UTF-8",
            vec![0x0A, 1, 0xFF, 0x1A, 5, 0x08, 0, 0x1A, 1, b'x'],
            KplError::NotUtf8 {
                table: "partition key table",
                index: 0,
            },
        ),
    ];
    for (name, message, err) in cases {
        let rec = wrap(&message);
        assert!(is_aggregated(&rec), "{name}: checksum is valid");
        assert_eq!(deaggregate(&rec), Err(err), "{name}");
    }
}

#[test]
fn unknown_fields_tags_and_table_order_are_accepted() {
    let message = [
        // A record before the table it points into.
        &[0x1A, 13, 0x08, 0, 0x1A, 1, b'x'][..],
        // ... with a tag {key "t", value "v"} in field 4.
        &[0x22, 6, 0x0A, 1, b't', 0x12, 1, b'v'],
        &[0x0A, 1, b'k'],
        // Unknown fields of every skippable wire type.
        &[0x78, 0x96, 0x01],                   // 15: varint
        &[0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8], // 16: fixed64
        &[0x8A, 0x01, 2, b'?', b'?'],          // 17: bytes
        &[0x95, 0x01, 1, 2, 3, 4],             // 18: fixed32
    ]
    .concat();
    let got = deaggregate(&wrap(&message)).unwrap();
    assert_eq!(
        got,
        [SubRecord {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: b"x".to_vec(),
        }]
    );
}

#[test]
fn corrupted_records_err_and_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xF3899AC2);
    let mut agg = Aggregator::new();
    for i in 0..40 {
        let ehk = (i % 4 == 0).then(|| (i * 1000).to_string());
        agg.add(
            &format!("key-{}", i % 7),
            ehk.as_deref(),
            &vec![i as u8; i * 3],
        );
    }
    let good = agg.finish();
    let message = &good[4..good.len() - 16];
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let mut m = message.to_vec();
        match rng.random_range(0..4) {
            0 => m.truncate(rng.random_range(0..m.len())),
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..m.len());
                    m[i] = rng.random();
                }
            }
            2 => {
                let i = rng.random_range(0..m.len());
                m.insert(i, rng.random());
            }
            _ => {
                let i = rng.random_range(0..m.len());
                m.remove(i);
            }
        }
        // Re-digested so the mutation reaches the protobuf decoder, not just the checksum.
        match deaggregate(&wrap(&m)) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
        // And the raw mutation, with the old digest: a plain record.
        let mut raw = good.clone();
        let i = rng.random_range(0..raw.len());
        raw[i] ^= rng.random_range(1..=255u8);
        assert!(!is_aggregated(&raw));
        assert!(deaggregate(&raw).is_err());
    }
    assert!(
        err > 1000,
        "most mutations must be caught: {ok} ok, {err} err"
    );
    // Random bytes behind the magic, with a valid digest.
    for _ in 0..2000 {
        let m: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let _ = deaggregate(&wrap(&m));
    }
}

#[test]
fn aggregating_six_megabytes_of_small_records_is_fast() {
    let data = vec![0x5A; 1024];
    let keys: Vec<String> = (0..500).map(|i| format!("customer-{i}")).collect();
    let start = std::time::Instant::now();
    let mut total = 0;
    let mut agg = Aggregator::with_capacity(1 << 20);
    for i in 0..6 * 1024 {
        let pk = &keys[i % keys.len()];
        if agg.size_if_added(pk, None, data.len()) > 1 << 20 {
            total += std::mem::take(&mut agg).finish().len();
        }
        agg.add(pk, None, &data);
    }
    total += agg.finish().len();
    let took = start.elapsed();
    assert!(total > 6 << 20);
    // Generous for a debug build on a busy machine; release takes a few milliseconds.
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}
