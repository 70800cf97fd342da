//! A hash map split into shards, each behind its own mutex on its own cache line, so threads that
//! touch different keys rarely wait for each other. A key is hashed once, with a keyed hash
//! (SipHash, random per process, so a client can neither aim all its keys at one shard nor make
//! them collide inside one); that hash picks the shard and is reused by the shard's map.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

/// Number of shards: a power of two, well above the worker count of a small server, small enough
/// that a sweep of one shard stays short.
pub(crate) const SHARDS: usize = 64;

/// Keeps a value on its own cache line(s) (128 bytes: adjacent-line prefetch on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A key with its keyed hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hashed<K> {
    hash: u64,
    pub(crate) key: K,
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

impl<K> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hands the precomputed hash of a [`Hashed`] key to the map.
#[derive(Debug, Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; fold anything else in, to stay a correct hasher.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type Map<K, V> = HashMap<Hashed<K>, V, BuildHasherDefault<PassThrough>>;

type Shard<K, V> = Padded<Mutex<Map<K, V>>>;

#[derive(Debug)]
pub(crate) struct Shards<K, V> {
    hasher: RandomState,
    shards: Box<[Shard<K, V>]>,
    /// Most entries one shard holds.
    pub(crate) cap_per_shard: usize,
}

impl<K: Hash + Eq, V> Shards<K, V> {
    /// Room for about `cap` entries in all (at least one per shard).
    pub(crate) fn new(cap: usize) -> Self {
        let cap_per_shard = cap.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS).map(|_| Padded(Mutex::new(Map::default()))).collect();
        Self { hasher: RandomState::new(), shards, cap_per_shard }
    }

    /// The key with its hash.
    pub(crate) fn hashed(&self, key: K) -> Hashed<K> {
        Hashed { hash: self.hasher.hash_one(&key), key }
    }

    /// The locked shard that holds `key`. A poisoned lock is taken over: entries are plain counters
    /// that stay consistent even if a holder panicked.
    pub(crate) fn lock(&self, key: &Hashed<K>) -> MutexGuard<'_, Map<K, V>> {
        // Middle bits: the map inside uses the low bits (bucket) and the top 7 (tag) of the same hash.
        let i = (key.hash >> 32) as usize % SHARDS;
        self.shards[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries in all shards (locks each in turn: for tests and metrics, not the hot path).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}
