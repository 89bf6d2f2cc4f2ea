//! Digests: what a record is matched by (a 128-bit digest of key and data) and the key passes.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// Digests

pub(super) static DIGEST_SEED_A: SharedSeed = SharedSeed::from_u64(0x6661_6e6f_7574_0001);
pub(super) static DIGEST_SEED_B: SharedSeed = SharedSeed::from_u64(0x7665_7269_6679_0002);
pub(super) static PARTITION_SEED: SharedSeed = SharedSeed::from_u64(0x7061_7274_6974_0003);

/// A 128-bit digest of (partition key, data): two 64-bit foldhash values with independent
/// seeds. Not cryptographic; accidental collisions are negligible (about n²/2¹²⁹ for n records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(pub u64, pub u64);

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: the index hashes it with a pass-through hasher.
        state.write_u64(self.0);
    }
}

/// The user records of a KPL aggregated record; `None` for a plain record (or one that only
/// looks aggregated: a bad checksum or body is compared as it is).
pub(super) fn user_records(data: &[u8]) -> Option<Vec<crate::kpl::SubRecord>> {
    if crate::kpl::is_aggregated(data) {
        crate::kpl::deaggregate(data).ok()
    } else {
        None
    }
}

/// The digest of one record.
pub fn digest(key: &str, data: &[u8]) -> Digest {
    let one = |seed: &'static SharedSeed, per: u64| {
        let mut h = SeedableRandomState::with_seed(per, seed).build_hasher();
        h.write_usize(key.len());
        h.write(key.as_bytes());
        h.write(data);
        h.finish()
    };
    Digest(one(&DIGEST_SEED_A, 1), one(&DIGEST_SEED_B, 2))
}

/// Which pass of `count` a partition key belongs to.
pub fn key_pass(key: &str, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut h = SeedableRandomState::with_seed(3, &PARTITION_SEED).build_hasher();
    h.write(key.as_bytes());
    (h.finish() % u64::from(count)) as u32
}

#[derive(Default, Clone, Copy)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default, Clone, Copy)]
pub(super) struct PassThroughState;

impl BuildHasher for PassThroughState {
    type Hasher = PassThrough;
    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}
