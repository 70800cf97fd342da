//! Error types shared by the codec and the state machines.

use core::fmt;

/// Why bytes could not be parsed as a SOCKS4 request or reply.
///
/// Every variant is final: feeding more bytes cannot fix the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// A request's version byte was not 4.
    BadVersion(u8),
    /// A request's command byte was neither 1 (CONNECT) nor 2 (BIND).
    BadCommand(u8),
    /// The user id is longer than the configured limit.
    UserIdTooLong,
    /// The SOCKS4a host name is longer than the configured limit.
    HostTooLong,
    /// The SOCKS4a host name is empty.
    EmptyHost,
    /// The SOCKS4a host name holds a byte that is not printable ASCII (the byte is given).
    BadHostByte(u8),
    /// A reply's version byte was not 0.
    BadReplyVersion(u8),
    /// A reply's code was not one of 90, 91, 92, 93.
    BadReplyCode(u8),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // 'P' and CR start PROXY protocol headers (v1, v2): say so, for a balancer whose
            // address is not trusted with them.
            Self::BadVersion(v @ (b'P' | b'\r')) => {
                write!(f, "request version {v} is not 4 (a PROXY protocol header from an untrusted source?)")
            }
            Self::BadVersion(v) => write!(f, "request version {v} is not 4"),
            Self::BadCommand(c) => write!(f, "request command {c} is neither CONNECT (1) nor BIND (2)"),
            Self::UserIdTooLong => f.write_str("user id longer than the limit"),
            Self::HostTooLong => f.write_str("host name longer than the limit"),
            Self::EmptyHost => f.write_str("empty host name"),
            Self::BadHostByte(b) => write!(f, "host name byte 0x{b:02x} is not printable ASCII"),
            Self::BadReplyVersion(v) => write!(f, "reply version {v} is not 0"),
            Self::BadReplyCode(c) => write!(f, "reply code {c} is not 90..=93"),
        }
    }
}

impl core::error::Error for ParseError {}

/// A request could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than [`Request::encoded_len`](crate::Request::encoded_len).
    BufferTooSmall {
        /// Bytes the encoding needs.
        needed: usize,
    },
    /// The user id holds a NUL byte or is longer than 255 bytes.
    BadUserId,
    /// The host name is empty, longer than 255 bytes, or not printable ASCII.
    BadHost,
    /// An IPv4 destination `0.0.0.x` with `x != 0`: on the wire it would read as a SOCKS4a marker.
    MarkerAddress,
    /// An IPv6 destination address: a SOCKS4 request carries IPv4 only.
    NotIpv4,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "output buffer too small: {needed} bytes needed"),
            Self::BadUserId => f.write_str("user id has a NUL byte or is longer than 255 bytes"),
            Self::BadHost => f.write_str("host name is empty, longer than 255 bytes or not printable ASCII"),
            Self::MarkerAddress => f.write_str("addresses 0.0.0.1 to 0.0.0.255 mean SOCKS4a on the wire"),
            Self::NotIpv4 => f.write_str("SOCKS4 carries IPv4 destinations only: send the host name (SOCKS4a)"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// A state machine method was called in a state that does not accept it.
///
/// This is a bug in the caller, never something a peer can cause; the state is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Misuse {
    /// The method that was called.
    pub call: &'static str,
}

impl Misuse {
    /// A misuse of the method named `call` (for a driver's own state machines built on the core's).
    ///
    /// ```
    /// let m = socks4_core::Misuse::new("accept");
    /// assert_eq!(m.call, "accept");
    /// assert_eq!(m.to_string(), "`accept` called in a state that does not expect it");
    /// ```
    pub const fn new(call: &'static str) -> Self {
        Self { call }
    }
}

impl fmt::Display for Misuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` called in a state that does not expect it", self.call)
    }
}

impl core::error::Error for Misuse {}

/// A misuse becomes an [`std::io::ErrorKind::Other`] error, so a driver returning `io::Result` can
/// use `?` on every state-machine call. Only with `std`.
#[cfg(feature = "std")]
impl From<Misuse> for std::io::Error {
    fn from(m: Misuse) -> Self {
        std::io::Error::other(m)
    }
}
