//! The counters every adapter's server handle reports, under one name: `ServerHandle::stats()`.

/// Counters of a running server (`ServerHandle::stats()` on every adapter).
///
/// ```
/// let stats = socks4_server::Stats::default();
/// assert_eq!((stats.active, stats.accepted, stats.over_limit), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Connections being served now.
    pub active: usize,
    /// Connections admitted since the start.
    pub accepted: u64,
    /// Connections closed at once because `max_connections` were being served.
    pub over_limit: u64,
}

impl Stats {
    /// Counters with these values.
    pub fn new(active: usize, accepted: u64, over_limit: u64) -> Self {
        Stats { active, accepted, over_limit }
    }
}
