//! Deterministic payloads and a streaming checksum (FNV-1a, 64 bit).
//!
//! Both ends of a transfer can compute the same value without exchanging the data: the sender
//! generates [`pattern`] bytes, the receiver hashes what arrives with [`Fnv1a`], and the two
//! `(count, checksum)` pairs are compared.

use std::sync::OnceLock;

/// A streaming FNV-1a 64-bit hash that also counts the bytes it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a {
    hash: u64,
    count: u64,
}

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hash of the empty input.
    pub const fn new() -> Self {
        Fnv1a { hash: Self::OFFSET, count: 0 }
    }

    /// Feeds `bytes` into the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.hash;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.hash = h;
        self.count += bytes.len() as u64;
    }

    /// The hash of everything fed so far.
    pub const fn value(&self) -> u64 {
        self.hash
    }

    /// How many bytes were fed so far.
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// The hash and count of `bytes` in one call.
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Self::new();
        h.update(bytes);
        h
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

/// Period of the deterministic byte stream: a prime, so it does not line up with buffer sizes.
pub const PATTERN_PERIOD: usize = 65_521;

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // xorshift64*: cheap, good enough to make reordered chunks visible.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..PATTERN_PERIOD)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    })
}

/// The byte at position `index` of the deterministic stream identified by `seed`.
///
/// Not cryptographic; different seeds give differently shifted streams with period
/// [`PATTERN_PERIOD`].
pub fn pattern_byte(seed: u64, index: u64) -> u8 {
    let start = seed.wrapping_mul(7919).wrapping_add(index) % PATTERN_PERIOD as u64;
    table()[start as usize]
}

/// Fills `buf` with the bytes at positions `offset..offset + buf.len()` of stream `seed`.
///
/// Copies slices of a precomputed table, so it is fast even in unoptimised test builds.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let table = table();
    let mut pos = (seed.wrapping_mul(7919).wrapping_add(offset) % PATTERN_PERIOD as u64) as usize;
    let mut rest = buf;
    while !rest.is_empty() {
        let n = rest.len().min(PATTERN_PERIOD - pos);
        let (head, tail) = rest.split_at_mut(n);
        head.copy_from_slice(&table[pos..pos + n]);
        rest = tail;
        pos = 0;
    }
}

/// The [`Fnv1a`] of the first `len` bytes of stream `seed`.
pub fn pattern_checksum(seed: u64, len: u64) -> Fnv1a {
    let mut h = Fnv1a::new();
    let mut buf = [0u8; 16 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        pattern(seed, off, chunk);
        h.update(chunk);
        off += n as u64;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(Fnv1a::new().value(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv1a::of(b"a").value(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv1a::of(b"foobar").value(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn incremental_equals_whole() {
        let mut buf = vec![0u8; 100_000];
        pattern(7, 0, &mut buf);
        let mut h = Fnv1a::new();
        for c in buf.chunks(997) {
            h.update(c);
        }
        assert_eq!(h, Fnv1a::of(&buf));
        assert_eq!(h, pattern_checksum(7, 100_000));
        let mut tail = vec![0u8; 1000];
        pattern(7, 5000, &mut tail);
        assert_eq!(&tail[..], &buf[5000..6000]);
        assert_ne!(pattern_checksum(8, 1000), pattern_checksum(7, 1000));
    }
}
