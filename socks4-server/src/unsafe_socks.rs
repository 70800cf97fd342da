//! `--warn-unsafe-socks` (config key `warn_unsafe_socks`), the warn-only sibling of
//! `--safe-socks`: a CONNECT that carries only an IP address (SOCKS4, not a SOCKS4a name) is let
//! through, and logged at warn level, like Tor's "your application is giving Tor only an IP
//! address": the application resolved the name itself, so its DNS query may have leaked. The
//! metrics count every request by protocol either way
//! (`socks4_protocol_requests_total{protocol="socks4"|"socks4a"}`).
//!
//! The warnings are bounded, whatever clients do:
//! - once per client (an IPv4 address, or an IPv6 /64) per [`WARN_INTERVAL`], remembered in a
//!   fixed table of [`SLOTS`] entries (32 KiB, lock-free): a client sending by address all day
//!   costs one line a minute;
//! - at most [`MAX_WARNINGS_PER_SECOND`] lines a second for the whole server: an attacker
//!   rotating source addresses (each new one would be worth a line, and evicts others from the
//!   table) costs at most that many lines; the lines it pushed out are counted and the next line
//!   says how many were held back.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use socks4_server::unsafe_socks::Warnings;
//! let (warnings, at) = (Warnings::new(), Instant::now());
//! let client = [192, 0, 2, 1].into();
//! assert!(warnings.should_warn(client, at).is_some(), "the first request by address is logged");
//! assert!(warnings.should_warn(client, at + Duration::from_secs(1)).is_none(), "the next one is not");
//! assert!(warnings.should_warn([192, 0, 2, 2].into(), at).is_some(), "another client's is");
//! assert!(warnings.should_warn(client, at + Duration::from_secs(61)).is_some(), "a minute later, again");
//! ```

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long a client's warning holds back its next one.
pub const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Clients remembered (a fixed table; a collision at worst repeats or skips a warning).
pub const SLOTS: usize = 4096;
/// The most warnings logged in one second, whole server.
pub const MAX_WARNINGS_PER_SECOND: u32 = 10;

/// The warn-only mode's memory: when each client was last warned about, and this second's budget.
#[derive(Debug)]
pub struct Warnings {
    /// Per slot: the client's 32-bit tag and the second (since `epoch`, plus one) it was warned.
    slots: Box<[AtomicU64]>,
    /// This second (high half) and the warnings logged in it (low half).
    window: AtomicU64,
    /// Warnings held back by the budget since the last line.
    held: AtomicU64,
    hasher: RandomState,
    epoch: Instant,
}

impl Default for Warnings {
    fn default() -> Self {
        Self::new()
    }
}

impl Warnings {
    /// An empty table (the process's is [`Warnings::global`]).
    pub fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            window: AtomicU64::new(0),
            held: AtomicU64::new(0),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// The process's table.
    pub fn global() -> &'static Warnings {
        static GLOBAL: OnceLock<Warnings> = OnceLock::new();
        GLOBAL.get_or_init(Warnings::new)
    }

    /// Whether a request by address from `client` at `at` is to be logged: `Some(held)` (with the
    /// count of warnings the per-second budget held back since the last line), or `None` when
    /// this client was warned about within [`WARN_INTERVAL`], or the second's budget is spent.
    pub fn should_warn(&self, client: IpAddr, at: Instant) -> Option<u64> {
        let key: u64 = match client.to_canonical() {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            // A /64 is one client (one host's privacy addresses; what the limits count).
            IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64 | 1 << 63,
        };
        let hash = self.hasher.hash_one(key);
        let slot = &self.slots[(hash as usize) % SLOTS];
        let tag = hash >> 32;
        let second = at.saturating_duration_since(self.epoch).as_secs().min(u64::from(u32::MAX - 1)) + 1;
        let seen = slot.load(Relaxed);
        if seen >> 32 == tag && second.saturating_sub(seen & 0xffff_ffff) < WARN_INTERVAL.as_secs() && seen != 0 {
            return None;
        }
        slot.store(tag << 32 | second, Relaxed);
        let window = self.window.load(Relaxed);
        let count = if window >> 32 == second { window & 0xffff_ffff } else { 0 };
        if count >= u64::from(MAX_WARNINGS_PER_SECOND) {
            self.held.fetch_add(1, Relaxed);
            return None;
        }
        self.window.store(second << 32 | (count + 1), Relaxed);
        Some(self.held.swap(0, Relaxed))
    }
}

/// At a request, under `--warn-unsafe-socks`: logs (at warn level, bounded: see the
/// [module docs](self)) a CONNECT from `client` by address `dest`.
pub fn warn(client: IpAddr, dest: SocketAddrV4, at: Instant) {
    let Some(held) = Warnings::global().should_warn(client, at) else { return };
    let more = match held {
        0 => String::new(),
        n => format!("; {n} more such warnings were held back (at most {MAX_WARNINGS_PER_SECOND} a second)"),
    };
    tracing::warn!(
        "unsafe socks: client {client} sent CONNECT {dest} by IP address, not a host name (SOCKS4a): the \
         application resolved the name itself, and its DNS query may have leaked; logged once per client per {}s{more}",
        WARN_INTERVAL.as_secs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_rotating_client_costs_the_budget_only() {
        let (w, at) = (Warnings::new(), Instant::now());
        let logged =
            (0..10_000u32).filter(|i| w.should_warn(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), at).is_some());
        assert_eq!(logged.count(), MAX_WARNINGS_PER_SECOND as usize, "one second's budget");
        let next = w.should_warn([198, 51, 100, 1].into(), at + Duration::from_secs(1));
        assert_eq!(next, Some(10_000 - u64::from(MAX_WARNINGS_PER_SECOND)), "the next line tells what was held back");
        assert_eq!(w.should_warn([198, 51, 100, 2].into(), at + Duration::from_secs(1)), Some(0));
        // One /64 is one client.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff".parse().unwrap();
        let later = at + Duration::from_secs(5);
        assert!(w.should_warn(a, later).is_some() && w.should_warn(b, later).is_none());
    }
}
