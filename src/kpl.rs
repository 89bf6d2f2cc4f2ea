//! The Kinesis Producer Library's aggregated record format, and the hash that maps a partition
//! key to a shard.
//!
//! An aggregated record is one Kinesis record holding many user records ("sub-records"):
//! [`MAGIC`], then a protobuf `AggregatedRecord`, then the MD5 digest of the protobuf bytes.
//!
//! ```text
//! message AggregatedRecord {                      message Record {
//!   repeated string partition_key_table     = 1;    required uint64 partition_key_index     = 1;
//!   repeated string explicit_hash_key_table = 2;    optional uint64 explicit_hash_key_index = 2;
//!   repeated Record records                 = 3;    required bytes  data                    = 3;
//! }                                                 repeated Tag    tags                    = 4;
//! message Tag { required string key = 1; optional string value = 2; }       }
//! ```
//!
//! This module owns building one aggregated record ([`Aggregator`]), recognising one
//! ([`is_aggregated`]) and taking one apart ([`deaggregate`]), with the protobuf encoding
//! written out by hand: three message types do not justify a code generator. It knows nothing
//! of requests, shards or the SDK; the write path decides what goes into which record.
//!
//! Kinesis routes an aggregated record by its own (outer) partition key or explicit hash key,
//! not by its sub-records' keys. The KCL drops every sub-record of an aggregated record whose
//! sub-records' hash keys ([`hash_key`]) do not all fall in the shard it was read from, so a
//! writer must only aggregate sub-records that map to one target shard.

use std::collections::HashMap;

use md5::{Digest, Md5};

/// The four bytes an aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that ends an aggregated record.
pub const DIGEST_LEN: usize = 16;

/// Bytes an aggregated record has besides its protobuf message: magic and digest.
pub const OVERHEAD: usize = MAGIC.len() + DIGEST_LEN;

// Protobuf keys (field number << 3 | wire type) of the fields the encoder writes; every one
// fits in one byte.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;
const KEY_PK_TABLE: u8 = (1 << 3) | WIRE_LEN;
const KEY_EHK_TABLE: u8 = (2 << 3) | WIRE_LEN;
const KEY_RECORD: u8 = (3 << 3) | WIRE_LEN;
const KEY_PK_INDEX: u8 = (1 << 3) | WIRE_VARINT;
const KEY_EHK_INDEX: u8 = (2 << 3) | WIRE_VARINT;
const KEY_DATA: u8 = (3 << 3) | WIRE_LEN;

/// The 128-bit hash Kinesis maps a partition key to a shard with: the MD5 digest of the key's
/// UTF-8 bytes read as a big-endian unsigned integer. A shard owns an inclusive range of it.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Reads an explicit hash key: a decimal integer in `0..=2^128-1`, digits only (no sign, no
/// blanks). Leading zeros are accepted, as the KCL reads them (`new BigInteger(text)`); the
/// PutRecords API refuses them, so send `value.to_string()` rather than the text read here.
pub fn parse_explicit_hash_key(text: &str) -> Option<u128> {
    // `u128::from_str` alone would also take a leading '+'.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `data` is an aggregated record, decided as the KPL and KCL decide it: it starts with
/// [`MAGIC`], is longer than magic and digest together, and its last 16 bytes are the MD5 of
/// the bytes between. Anything else, including a record that starts with the magic but fails
/// the checksum, is a plain record and passes through consumers unchanged.
///
/// A record of exactly 20 bytes (an aggregate of nothing) is plain: the KCL and the Python
/// deaggregators require more than 16 bytes after the magic.
pub fn is_aggregated(data: &[u8]) -> bool {
    message_of(data).is_ok()
}

/// The protobuf message inside an aggregated record, after checking magic, length and digest.
fn message_of(data: &[u8]) -> Result<&[u8], KplError> {
    if data.len() <= OVERHEAD {
        return Err(KplError::TooShort { len: data.len() });
    }
    let (head, rest) = data.split_at(MAGIC.len());
    if head != MAGIC {
        return Err(KplError::NoMagic);
    }
    let (message, digest) = rest.split_at(rest.len() - DIGEST_LEN);
    if Md5::digest(message).as_slice() != digest {
        return Err(KplError::BadChecksum);
    }
    Ok(message)
}

/// Builds one aggregated record, sub-record by sub-record, knowing its exact encoded size at
/// every step so a caller can stop before a limit without encoding twice.
///
/// Partition keys and explicit hash keys are stored once each in their tables, in first-use
/// order. The protobuf fields are kept in three buffers (partition-key table, explicit-hash-key
/// table, records) because a conventional encoder writes fields in number order, tables first,
/// and the tables grow as records arrive; [`finish`](Aggregator::finish) joins them once.
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    pk_index: HashMap<Box<str>, u64, foldhash::fast::RandomState>,
    ehk_index: HashMap<Box<str>, u64, foldhash::fast::RandomState>,
    pk_table: Vec<u8>,
    ehk_table: Vec<u8>,
    records: Vec<u8>,
    count: usize,
}

impl Aggregator {
    /// An empty aggregated record.
    pub fn new() -> Aggregator {
        Aggregator::default()
    }

    /// An empty aggregated record whose record buffer holds `data_bytes` without growing: pass
    /// the size limit the record is filled up to.
    pub fn with_capacity(data_bytes: usize) -> Aggregator {
        Aggregator {
            records: Vec::with_capacity(data_bytes),
            ..Aggregator::default()
        }
    }

    /// Number of sub-records added.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no sub-record was added. Do not [`finish`](Aggregator::finish) an empty
    /// aggregator: its 20 bytes would reach consumers as a plain record of junk.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Exact length of the finished record (magic, protobuf, digest) with what was added so far.
    pub fn size(&self) -> usize {
        OVERHEAD + self.pk_table.len() + self.ehk_table.len() + self.records.len()
    }

    /// Exact length of the finished record if this sub-record were added next.
    pub fn size_if_added(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        let (pk_index, pk_entry) = table_lookup(&self.pk_index, partition_key);
        let (ehk_index, ehk_entry) = match explicit_hash_key {
            Some(ehk) => {
                let (index, entry) = table_lookup(&self.ehk_index, ehk);
                (Some(index), entry)
            }
            None => (None, 0),
        };
        let body = record_body_len(pk_index, ehk_index, data_len);
        self.size() + pk_entry + ehk_entry + 1 + varint_len(body as u64) + body
    }

    /// Adds one sub-record after the others.
    pub fn add(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) {
        let pk_index = table_insert(
            &mut self.pk_index,
            &mut self.pk_table,
            KEY_PK_TABLE,
            partition_key,
        );
        let ehk_index = explicit_hash_key
            .map(|ehk| table_insert(&mut self.ehk_index, &mut self.ehk_table, KEY_EHK_TABLE, ehk));
        let body = record_body_len(pk_index, ehk_index, data.len());
        let out = &mut self.records;
        out.reserve(1 + varint_len(body as u64) + body);
        out.push(KEY_RECORD);
        put_varint(out, body as u64);
        out.push(KEY_PK_INDEX);
        put_varint(out, pk_index);
        if let Some(index) = ehk_index {
            out.push(KEY_EHK_INDEX);
            put_varint(out, index);
        }
        out.push(KEY_DATA);
        put_varint(out, data.len() as u64);
        out.extend_from_slice(data);
        self.count += 1;
    }

    /// The complete aggregated record: magic, protobuf message, MD5 of the message.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.pk_table);
        out.extend_from_slice(&self.ehk_table);
        out.extend_from_slice(&self.records);
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest);
        out
    }
}

/// A key's index in a table, and the bytes a new table entry would take (0 if already there).
fn table_lookup(
    index: &HashMap<Box<str>, u64, foldhash::fast::RandomState>,
    key: &str,
) -> (u64, usize) {
    match index.get(key) {
        Some(&i) => (i, 0),
        None => (
            index.len() as u64,
            1 + varint_len(key.len() as u64) + key.len(),
        ),
    }
}

/// A key's index in a table, appending the key to the table first if it is new.
fn table_insert(
    index: &mut HashMap<Box<str>, u64, foldhash::fast::RandomState>,
    table: &mut Vec<u8>,
    field_key: u8,
    key: &str,
) -> u64 {
    if let Some(&i) = index.get(key) {
        return i;
    }
    let i = index.len() as u64;
    index.insert(key.into(), i);
    table.push(field_key);
    put_varint(table, key.len() as u64);
    table.extend_from_slice(key.as_bytes());
    i
}

/// Length of an encoded `Record` message (without its own key and length prefix).
fn record_body_len(pk_index: u64, ehk_index: Option<u64>, data_len: usize) -> usize {
    1 + varint_len(pk_index)
        + ehk_index.map_or(0, |i| 1 + varint_len(i))
        + 1
        + varint_len(data_len as u64)
        + data_len
}

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One user record taken out of an aggregated record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

/// Why bytes could not be taken apart as an aggregated record. Offsets count from the start of
/// the protobuf message (just after the magic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    #[error("not an aggregated record: {len} bytes, an aggregated record has more than {OVERHEAD} (magic and MD5 digest)")]
    TooShort { len: usize },
    #[error("not an aggregated record: it does not start with the KPL magic bytes F3 89 9A C2")]
    NoMagic,
    #[error(
        "not an aggregated record: the MD5 digest in its last 16 bytes does not match its contents"
    )]
    BadChecksum,
    #[error("corrupt aggregated record: varint at byte {offset} runs past the end of its message")]
    TruncatedVarint { offset: usize },
    #[error("corrupt aggregated record: varint at byte {offset} is longer than 64 bits")]
    VarintOverflow { offset: usize },
    #[error("corrupt aggregated record: field at byte {offset} needs {needed} bytes, {available} remain")]
    Truncated {
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("corrupt aggregated record: field number 0 at byte {offset}")]
    FieldNumberZero { offset: usize },
    #[error("corrupt aggregated record: wire type {wire_type} at byte {offset} (groups and types 6, 7 are not used by this format)")]
    UnsupportedWireType { wire_type: u8, offset: usize },
    #[error("corrupt aggregated record: {table} entry {index} is not UTF-8")]
    NotUtf8 { table: &'static str, index: usize },
    #[error("corrupt aggregated record: sub-record {record} has no {field}")]
    MissingField { record: usize, field: &'static str },
    #[error("corrupt aggregated record: sub-record {record} points at {table} entry {index}, the table has {table_len}")]
    IndexOutOfTable {
        record: usize,
        table: &'static str,
        index: u64,
        table_len: usize,
    },
}

/// Takes an aggregated record apart into its sub-records, in order. Errs (never panics) on
/// anything that is not a well-formed aggregated record; unknown fields, such as tags, are
/// skipped. A plain record errs with [`KplError::TooShort`], [`KplError::NoMagic`] or
/// [`KplError::BadChecksum`] (the cases where [`is_aggregated`] is false).
///
/// Note: the KCL passes a record whose checksum matches but whose protobuf does not parse
/// through as a plain record; here that is an error, so the caller can tell.
pub fn deaggregate(data: &[u8]) -> Result<Vec<SubRecord>, KplError> {
    let message = message_of(data)?;
    let mut pks: Vec<&[u8]> = Vec::new();
    let mut ehks: Vec<&[u8]> = Vec::new();
    let mut raw: Vec<RawRecord> = Vec::new();
    let mut r = Reader::new(message, 0);
    while !r.done() {
        let (field, wire_type, key_at) = r.key()?;
        match (field, wire_type) {
            (1, WIRE_LEN) => pks.push(r.bytes()?),
            (2, WIRE_LEN) => ehks.push(r.bytes()?),
            (3, WIRE_LEN) => {
                let at = r.absolute();
                let body = r.bytes()?;
                raw.push(RawRecord::parse(body, at, raw.len())?);
            }
            _ => r.skip(wire_type, key_at)?,
        }
    }
    // Tables may follow the records that use them (protobuf merges repeated fields in any
    // order), so indices are resolved only once the whole message is read.
    let pks = utf8_table(&pks, "partition key table")?;
    let ehks = utf8_table(&ehks, "explicit hash key table")?;
    raw.into_iter()
        .enumerate()
        .map(|(n, rec)| {
            let partition_key = lookup(&pks, rec.pk_index, n, "partition key table")?.to_owned();
            let explicit_hash_key = match rec.ehk_index {
                Some(i) => Some(lookup(&ehks, i, n, "explicit hash key table")?.to_owned()),
                None => None,
            };
            Ok(SubRecord {
                partition_key,
                explicit_hash_key,
                data: rec.data.to_vec(),
            })
        })
        .collect()
}

fn utf8_table<'a>(entries: &[&'a [u8]], table: &'static str) -> Result<Vec<&'a str>, KplError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, e)| std::str::from_utf8(e).map_err(|_| KplError::NotUtf8 { table, index }))
        .collect()
}

fn lookup<'a>(
    table: &[&'a str],
    index: u64,
    record: usize,
    name: &'static str,
) -> Result<&'a str, KplError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or(KplError::IndexOutOfTable {
            record,
            table: name,
            index,
            table_len: table.len(),
        })
}

/// A `Record` message before its indices are checked against the tables.
struct RawRecord<'a> {
    pk_index: u64,
    ehk_index: Option<u64>,
    data: &'a [u8],
}

impl<'a> RawRecord<'a> {
    fn parse(body: &'a [u8], base: usize, record: usize) -> Result<RawRecord<'a>, KplError> {
        let mut pk_index = None;
        let mut ehk_index = None;
        let mut data = None;
        let mut r = Reader::new(body, base);
        while !r.done() {
            let (field, wire_type, key_at) = r.key()?;
            // A repeated occurrence of a singular field replaces the earlier one (protobuf).
            match (field, wire_type) {
                (1, WIRE_VARINT) => pk_index = Some(r.varint()?),
                (2, WIRE_VARINT) => ehk_index = Some(r.varint()?),
                (3, WIRE_LEN) => data = Some(r.bytes()?),
                _ => r.skip(wire_type, key_at)?,
            }
        }
        let missing = |field| KplError::MissingField { record, field };
        Ok(RawRecord {
            pk_index: pk_index.ok_or_else(|| missing("partition_key_index"))?,
            ehk_index,
            data: data.ok_or_else(|| missing("data"))?,
        })
    }
}

/// A cursor over one protobuf message; `base` is the message's offset in the outermost one,
/// for error messages.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn absolute(&self) -> usize {
        self.base + self.pos
    }

    fn varint(&mut self) -> Result<u64, KplError> {
        let offset = self.absolute();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(KplError::TruncatedVarint { offset });
            };
            self.pos += 1;
            // The tenth byte carries bit 63 only.
            if i == 9 && b > 1 {
                return Err(KplError::VarintOverflow { offset });
            }
            value |= u64::from(b & 0x7F) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(KplError::VarintOverflow { offset })
    }

    /// Field number, wire type, and where the key started.
    fn key(&mut self) -> Result<(u64, u8, usize), KplError> {
        let offset = self.absolute();
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(KplError::FieldNumberZero { offset });
        }
        Ok((field, (key & 7) as u8, offset))
    }

    fn take(&mut self, needed: u64, offset: usize) -> Result<&'a [u8], KplError> {
        let available = self.buf.len().saturating_sub(self.pos);
        let out = usize::try_from(needed)
            .ok()
            .and_then(|n| self.buf.get(self.pos..self.pos.checked_add(n)?))
            .ok_or(KplError::Truncated {
                offset,
                needed,
                available,
            })?;
        self.pos += out.len();
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], KplError> {
        let offset = self.absolute();
        let len = self.varint()?;
        self.take(len, offset)
    }

    fn skip(&mut self, wire_type: u8, key_at: usize) -> Result<(), KplError> {
        match wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8, key_at).map(drop),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_FIXED32 => self.take(4, key_at).map(drop),
            _ => Err(KplError::UnsupportedWireType {
                wire_type,
                offset: key_at,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
