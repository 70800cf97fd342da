//! When a relay direction splices and when it copies: one pure decision, taken before each chunk
//! from what the previous chunk moved.

use std::fmt;
use std::str::FromStr;

/// How a direction moves its next chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Read into a user-space buffer, then write it on.
    Copy,
    /// socket → pipe → socket with `splice(2)`: the bytes never enter user space. A caller that
    /// cannot get a pipe ([`PipePool::take`](crate::PipePool::take) fails) copies this chunk
    /// instead.
    Splice,
}

/// When a relay direction splices rather than copies.
///
/// The decision is [`decide`](Self::decide), a pure function of what the direction's previous
/// chunk moved: a direction keeps one `usize` (the bytes its last read or splice moved, 0 before
/// the first) and asks before each chunk. It costs a comparison, never a system call.
///
/// On platforms without `splice(2)` ([`SPLICE_SUPPORTED`](crate::SPLICE_SUPPORTED) false) every
/// policy copies.
///
/// ```
/// use socks4_sys::{Mode, SplicePolicy, sizes::COPY_BUF_LEN};
///
/// let policy = SplicePolicy::Streaming;
/// // A new direction copies: a request or a keystroke costs one read and one write.
/// assert_eq!(policy.decide(0, COPY_BUF_LEN), Mode::Copy);
/// // A read that filled the buffer: the direction streams, so it splices (on Linux).
/// let next = policy.decide(COPY_BUF_LEN, COPY_BUF_LEN);
/// assert_eq!(next == Mode::Splice, socks4_sys::SPLICE_SUPPORTED);
/// assert_eq!(SplicePolicy::Never.decide(COPY_BUF_LEN, COPY_BUF_LEN), Mode::Copy);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SplicePolicy {
    /// Always copy; no pipes are used.
    Never,
    /// Splice every chunk, from the first byte.
    Always,
    /// Copy until a read fills the copy buffer (the direction is streaming), then splice for as
    /// long as each splice moves at least a buffer's worth; a smaller chunk sends the direction
    /// back to copying.
    Streaming,
}

impl SplicePolicy {
    /// The policy the servers use unless told otherwise: [`Streaming`](Self::Streaming), chosen by
    /// measurement (`bench/compare.sh` on socks4-std, the three policies alternating; see the
    /// repository's `bench/splice-policy.md`): it moved bulk data fastest (pooled median of 8
    /// rounds 1386 MiB/s, against 1161 splicing every chunk and 946 copying), and handshakes as
    /// fast as copying (a request or a short reply is copied, with no pipe taken for it). On the
    /// async driver (`bench/splice-policy-async.md`, 3 rounds, [`SPLICE_POLICY_ENV`]): bulk
    /// tokio 1234 / 1555 / 1561 MiB/s and smol 1188 / 1498 / 1735 (never / always / streaming),
    /// handshakes within 3% of each other.
    pub const DEFAULT: SplicePolicy = SplicePolicy::Streaming;

    /// Every policy, in the order of their [names](Self::name).
    pub const ALL: [SplicePolicy; 3] = [SplicePolicy::Never, SplicePolicy::Always, SplicePolicy::Streaming];

    /// How to move the next chunk, given the bytes the direction's last read or splice moved
    /// (`last_moved`, 0 before the first) and the size of its copy buffer (`buffer_len`).
    #[must_use]
    pub const fn decide(self, last_moved: usize, buffer_len: usize) -> Mode {
        if !crate::SPLICE_SUPPORTED {
            return Mode::Copy;
        }
        match self {
            SplicePolicy::Never => Mode::Copy,
            SplicePolicy::Always => Mode::Splice,
            SplicePolicy::Streaming if last_moved >= buffer_len && buffer_len > 0 => Mode::Splice,
            SplicePolicy::Streaming => Mode::Copy,
        }
    }

    /// Whether this policy ever splices (here): whether a worker needs a pipe pool at all.
    #[must_use]
    pub const fn splices(self) -> bool {
        crate::SPLICE_SUPPORTED && !matches!(self, SplicePolicy::Never)
    }

    /// Its name: `never`, `always` or `streaming` (what [`FromStr`] takes).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SplicePolicy::Never => "never",
            SplicePolicy::Always => "always",
            SplicePolicy::Streaming => "streaming",
        }
    }
}

/// The environment variable that picks the servers' splice policy (`never`, `always`,
/// `streaming`), for benchmarks (`bench/compare.sh`): see [`SplicePolicy::from_env`].
pub const SPLICE_POLICY_ENV: &str = "SOCKS4_SPLICE_POLICY";

impl SplicePolicy {
    /// The policy [`SPLICE_POLICY_ENV`] names, or [`DEFAULT`](Self::DEFAULT) when it is unset or
    /// names none (the servers refuse to start on that: see [`try_from_env`](Self::try_from_env)),
    /// so that one binary can be measured under each candidate. socks4-std reads it when a server is
    /// bound, the async driver at the first relay of the process (then keeps it).
    ///
    /// ```
    /// use socks4_sys::SplicePolicy;
    /// // Unset here: the default.
    /// # if std::env::var_os(socks4_sys::SPLICE_POLICY_ENV).is_none() {
    /// assert_eq!(SplicePolicy::from_env(), SplicePolicy::DEFAULT);
    /// # }
    /// ```
    #[must_use]
    pub fn from_env() -> Self {
        Self::try_from_env().ok().flatten().unwrap_or_default()
    }

    /// The policy [`SPLICE_POLICY_ENV`] names: `Ok(None)` when it is unset. The servers call it
    /// at start and refuse a name that is none, so that a misspelt policy is not measured as the
    /// default.
    ///
    /// ```
    /// # if std::env::var_os(socks4_sys::SPLICE_POLICY_ENV).is_none() {
    /// assert_eq!(socks4_sys::SplicePolicy::try_from_env(), Ok(None));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`PolicyError::Unknown`] when it is set to anything else than a policy's name (or is not
    /// Unicode).
    pub fn try_from_env() -> Result<Option<Self>, PolicyError> {
        match std::env::var(SPLICE_POLICY_ENV) {
            Ok(name) => name.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(PolicyError::Unknown),
        }
    }
}

impl Default for SplicePolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for SplicePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`SplicePolicy`] name that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not `never`, `always` or `streaming`.
    Unknown,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Unknown => f.write_str("unknown splice policy (expected never, always or streaming)"),
        }
    }
}

impl std::error::Error for PolicyError {}

impl FromStr for SplicePolicy {
    type Err = PolicyError;

    /// Parses a [name](SplicePolicy::name).
    ///
    /// ```
    /// use socks4_sys::SplicePolicy;
    /// assert_eq!("streaming".parse(), Ok(SplicePolicy::Streaming));
    /// assert!("sometimes".parse::<SplicePolicy>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SplicePolicy::ALL.into_iter().find(|p| p.name() == s).ok_or(PolicyError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes::COPY_BUF_LEN;

    const B: usize = COPY_BUF_LEN;

    fn splice_if_supported() -> Mode {
        if crate::SPLICE_SUPPORTED { Mode::Splice } else { Mode::Copy }
    }

    #[test]
    fn never_copies() {
        for last in [0, 1, B - 1, B, 10 * B] {
            assert_eq!(SplicePolicy::Never.decide(last, B), Mode::Copy);
        }
        assert!(!SplicePolicy::Never.splices());
    }

    #[test]
    fn always_splices_from_the_first_byte() {
        for last in [0, 1, B, 10 * B] {
            assert_eq!(SplicePolicy::Always.decide(last, B), splice_if_supported());
        }
    }

    #[test]
    fn streaming_splices_once_a_read_fills_the_buffer_and_returns_to_copying_on_a_small_chunk() {
        let p = SplicePolicy::Streaming;
        assert_eq!(p.decide(0, B), Mode::Copy, "a new direction copies");
        assert_eq!(p.decide(B - 1, B), Mode::Copy, "a read short of the buffer keeps copying");
        assert_eq!(p.decide(B, B), splice_if_supported(), "a full read: streaming");
        assert_eq!(p.decide(4 * B, B), splice_if_supported(), "a big splice keeps splicing");
        assert_eq!(p.decide(100, B), Mode::Copy, "a small splice goes back to copying");
        assert_eq!(p.decide(0, 0), Mode::Copy, "no buffer: never streaming");
    }

    #[test]
    fn names_round_trip() {
        for p in SplicePolicy::ALL {
            assert_eq!(p.name().parse::<SplicePolicy>(), Ok(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("Always".parse::<SplicePolicy>(), Err(PolicyError::Unknown));
        assert_eq!("".parse::<SplicePolicy>(), Err(PolicyError::Unknown));
    }
}
