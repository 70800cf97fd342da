//! The client's request: types, incremental zero-copy parsing and encoding.

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

use crate::error::{EncodeError, ParseError};

/// The result of parsing a prefix of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole message was parsed.
    Complete(T),
    /// The bytes so far are a valid prefix; more are needed.
    Partial,
}

/// The request's version byte.
pub const SOCKS4_VERSION: u8 = 4;

/// Longest request any limits allow: header, 255-byte user id, NUL, 255-byte host, NUL.
pub const MAX_REQUEST_LEN: usize = 8 + 255 + 1 + 255 + 1;

/// What the client asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Open a TCP connection to the destination (CD = 1).
    Connect,
    /// Accept one inbound connection from the destination (CD = 2).
    Bind,
}

impl Command {
    /// The command's byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Connect => 1,
            Self::Bind => 2,
        }
    }

    /// The command for a wire byte, if it is one.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Connect),
            2 => Some(Self::Bind),
            _ => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "CONNECT",
            Self::Bind => "BIND",
        })
    }
}

/// The destination of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest<'a> {
    /// SOCKS4: an IPv4 address.
    Ip(Ipv4Addr),
    /// SOCKS4a: a host name for the server to resolve (validated: non-empty, printable ASCII).
    Domain(&'a str),
}

impl fmt::Display for Dest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Domain(host) => f.write_str(host),
        }
    }
}

/// Upper bounds on the variable-length fields a parser accepts.
///
/// The fields are `u8`, so no configuration can exceed the protocol-sized buffer
/// ([`MAX_REQUEST_LEN`]) the server handshake keeps.
///
/// ```
/// use socks4_core::Limits;
/// let limits = Limits::new(64, 255);
/// assert_eq!((limits.user_id, limits.host), (64, 255));
/// assert_eq!(Limits::default(), Limits::new(255, 255));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Limits {
    /// Longest user id in bytes, without its NUL (default 255).
    pub user_id: u8,
    /// Longest SOCKS4a host name in bytes, without its NUL (default 255).
    pub host: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(255, 255)
    }
}

impl Limits {
    /// The longest user id and SOCKS4a host name accepted, in bytes without their NULs.
    pub const fn new(user_id: u8, host: u8) -> Self {
        Self { user_id, host }
    }
}

/// A parsed SOCKS4 or SOCKS4a request, borrowing from the input.
///
/// The fields are public to read; build one with [`Request::new`] or the
/// [`connect`](Request::connect) / [`connect_host`](Request::connect_host) /
/// [`bind`](Request::bind) / [`bind_host`](Request::bind_host) constructors (the struct is
/// `#[non_exhaustive]`, so a field can be added without breaking callers).
///
/// ```
/// use socks4_core::{Command, Dest, Request};
/// let req = Request::new(Command::Bind, 21, Dest::Domain("ftp.example"), b"anon");
/// assert_eq!(req, Request::bind_host("ftp.example", 21, b"anon"));
/// assert_eq!((req.command, req.port), (Command::Bind, 21));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Request<'a> {
    /// CONNECT or BIND.
    pub command: Command,
    /// Destination port.
    pub port: u16,
    /// Destination address or host name.
    pub dest: Dest<'a>,
    /// The user id, without its NUL (any bytes but NUL).
    pub user_id: &'a [u8],
}

/// Is this DSTIP the SOCKS4a marker `0.0.0.x`, `x != 0`?
const fn is_4a_marker(ip: [u8; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] != 0
}

/// The IPv4 marker `0.0.0.1` that a SOCKS4a request sends in place of an address.
pub const SOCKS4A_MARKER: Ipv4Addr = Ipv4Addr::new(0, 0, 0, 1);

/// Is `b` allowed in a host name (printable ASCII, no space)?
const fn is_host_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// Finds the NUL ending a field that starts at `start`, allowing at most `limit` bytes before it.
///
/// `Ok(Some(i))`: the NUL is at `i`; `Ok(None)`: more bytes needed; `Err(())`: the field is too long.
fn find_nul(buf: &[u8], start: usize, limit: u8) -> Result<Option<usize>, ()> {
    let window_end = buf.len().min(start + limit as usize + 1);
    let window = buf.get(start..window_end).unwrap_or(&[]);
    match window.iter().position(|&b| b == 0) {
        Some(i) => Ok(Some(start + i)),
        None if window.len() == limit as usize + 1 => Err(()),
        None => Ok(None),
    }
}

/// Parses a request from the start of `buf`.
///
/// Returns `Complete((request, used))` where `used` counts the request's bytes: anything after them
/// is payload the client sent early. Returns `Partial` while `buf` is a valid prefix, and an error as
/// soon as the bytes seen cannot begin a valid request (so a hostile client is rejected early).
/// Parsing never allocates and never reads past `limits` worth of variable fields.
///
/// ```
/// use socks4_core::{parse_request, Command, Dest, Limits, Status};
/// let bytes = b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\0payload";
/// let Status::Complete((req, used)) = parse_request(bytes, &Limits::default())? else { panic!() };
/// assert_eq!(req.command, Command::Connect);
/// assert_eq!(req.port, 80);
/// assert_eq!(req.dest, Dest::Ip([127, 0, 0, 1].into()));
/// assert_eq!(req.user_id, b"alice");
/// assert_eq!(&bytes[used..], b"payload");
/// assert_eq!(parse_request(&bytes[..5], &Limits::default())?, Status::Partial);
/// # Ok::<(), socks4_core::ParseError>(())
/// ```
///
/// # Errors
///
/// A [`ParseError`] as soon as the bytes seen cannot begin a valid request: a version other than 4
/// ([`ParseError::BadVersion`]), a command other than 1 or 2 ([`ParseError::BadCommand`]), a user
/// id or host name over its limit, an empty host name, or a host byte that is not printable ASCII.
/// Every error is final.
pub fn parse_request<'a>(buf: &'a [u8], limits: &Limits) -> Result<Status<(Request<'a>, usize)>, ParseError> {
    let Some(&version) = buf.first() else {
        return Ok(Status::Partial);
    };
    if version != SOCKS4_VERSION {
        return Err(ParseError::BadVersion(version));
    }
    let Some(&cd) = buf.get(1) else {
        return Ok(Status::Partial);
    };
    let command = Command::from_code(cd).ok_or(ParseError::BadCommand(cd))?;
    let Some(header) = buf.get(..8) else {
        return Ok(Status::Partial);
    };
    let port = u16::from_be_bytes([header[2], header[3]]);
    let ip = [header[4], header[5], header[6], header[7]];

    let Some(user_end) = find_nul(buf, 8, limits.user_id).map_err(|()| ParseError::UserIdTooLong)? else {
        return Ok(Status::Partial);
    };
    let user_id = &buf[8..user_end];
    if !is_4a_marker(ip) {
        let request = Request { command, port, dest: Dest::Ip(Ipv4Addr::from(ip)), user_id };
        return Ok(Status::Complete((request, user_end + 1)));
    }

    let host_start = user_end + 1;
    let found = find_nul(buf, host_start, limits.host);
    let host_end = match found {
        Ok(Some(end)) => end,
        Ok(None) | Err(()) => {
            // Reject bad bytes as soon as they arrive, before the length verdict.
            let seen = buf.get(host_start..).unwrap_or(&[]);
            if let Some(&bad) = seen.iter().take(limits.host as usize).find(|&&b| !is_host_byte(b)) {
                return Err(ParseError::BadHostByte(bad));
            }
            return match found {
                Err(()) => Err(ParseError::HostTooLong),
                _ => Ok(Status::Partial),
            };
        }
    };
    let host = &buf[host_start..host_end];
    if host.is_empty() {
        return Err(ParseError::EmptyHost);
    }
    if let Some(&bad) = host.iter().find(|&&b| !is_host_byte(b)) {
        return Err(ParseError::BadHostByte(bad));
    }
    let host = core::str::from_utf8(host).map_err(|_| ParseError::BadHostByte(host[0]))?;
    let request = Request { command, port, dest: Dest::Domain(host), user_id };
    Ok(Status::Complete((request, host_end + 1)))
}

impl<'a> Request<'a> {
    /// A request from its parts (SOCKS4 for [`Dest::Ip`], SOCKS4a for [`Dest::Domain`]). Nothing is
    /// checked here: [`validate`](Self::validate) and [`encode`](Self::encode) do.
    pub const fn new(command: Command, port: u16, dest: Dest<'a>, user_id: &'a [u8]) -> Self {
        Self { command, port, dest, user_id }
    }

    /// A SOCKS4 CONNECT request to an IPv4 socket address.
    pub const fn connect(addr: SocketAddrV4, user_id: &'a [u8]) -> Self {
        Self { command: Command::Connect, port: addr.port(), dest: Dest::Ip(*addr.ip()), user_id }
    }

    /// A SOCKS4a CONNECT request to a host name the server resolves.
    pub const fn connect_host(host: &'a str, port: u16, user_id: &'a [u8]) -> Self {
        Self { command: Command::Connect, port, dest: Dest::Domain(host), user_id }
    }

    /// A SOCKS4 BIND request: accept one connection from `expected_peer` (its port is
    /// informative).
    pub const fn bind(expected_peer: SocketAddrV4, user_id: &'a [u8]) -> Self {
        Self { command: Command::Bind, port: expected_peer.port(), dest: Dest::Ip(*expected_peer.ip()), user_id }
    }

    /// A SOCKS4a BIND request: accept one connection from the address the server resolves `host`
    /// to.
    pub const fn bind_host(host: &'a str, port: u16, user_id: &'a [u8]) -> Self {
        Self { command: Command::Bind, port, dest: Dest::Domain(host), user_id }
    }

    /// Where a CONNECT goes (for BIND: the expected peer): the IPv4 address, or the SOCKS4a name.
    ///
    /// ```
    /// use socks4_core::{Request, Target};
    /// assert_eq!(Request::connect_host("example.com", 80, b"").target(), Target::Host("example.com", 80));
    /// ```
    pub fn target(&self) -> crate::Target<'a> {
        match self.dest {
            Dest::Ip(ip) => (ip, self.port).into(),
            Dest::Domain(host) => crate::Target::Host(host, self.port),
        }
    }

    /// Parses a request with the given limits; see [`parse_request`].
    ///
    /// # Errors
    ///
    /// The [`ParseError`]s of [`parse_request`].
    pub fn parse(buf: &'a [u8], limits: &Limits) -> Result<Status<(Self, usize)>, ParseError> {
        parse_request(buf, limits)
    }

    /// Checks that the request can be encoded: user id without NUL and at most 255 bytes, host
    /// name non-empty, printable ASCII and at most 255 bytes, and no IPv4 destination in
    /// `0.0.0.1..=0.0.0.255` (those mean SOCKS4a on the wire).
    ///
    /// # Errors
    ///
    /// [`EncodeError::BadUserId`], [`EncodeError::BadHost`] or [`EncodeError::MarkerAddress`] for
    /// the first check that fails.
    pub fn validate(&self) -> Result<(), EncodeError> {
        if self.user_id.len() > 255 || self.user_id.contains(&0) {
            return Err(EncodeError::BadUserId);
        }
        if let Dest::Ip(ip) = self.dest {
            if is_4a_marker(ip.octets()) {
                return Err(EncodeError::MarkerAddress);
            }
        }
        if let Dest::Domain(host) = self.dest {
            let bytes = host.as_bytes();
            if bytes.is_empty() || bytes.len() > 255 || !bytes.iter().all(|&b| is_host_byte(b)) {
                return Err(EncodeError::BadHost);
            }
        }
        Ok(())
    }

    /// The number of bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        let host = match self.dest {
            Dest::Ip(_) => 0,
            Dest::Domain(host) => host.len() + 1,
        };
        8 + self.user_id.len() + 1 + host
    }

    /// Encodes the request into `out`, returning the number of bytes written.
    ///
    /// A SOCKS4a request always carries the marker `0.0.0.1` ([`SOCKS4A_MARKER`]); a parsed request
    /// that used another `0.0.0.x` marker re-encodes with that byte normalised.
    ///
    /// ```
    /// use socks4_core::Request;
    /// let req = Request::connect_host("example.com", 443, b"");
    /// let mut buf = [0u8; 64];
    /// let n = req.encode(&mut buf)?;
    /// assert_eq!(&buf[..n], b"\x04\x01\x01\xbb\x00\x00\x00\x01\0example.com\0");
    /// # Ok::<(), socks4_core::EncodeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The errors of [`validate`](Self::validate), and [`EncodeError::BufferTooSmall`] when `out`
    /// is shorter than [`encoded_len`](Self::encoded_len) (nothing is written then).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate()?;
        let needed = self.encoded_len();
        let Some(out) = out.get_mut(..needed) else {
            return Err(EncodeError::BufferTooSmall { needed });
        };
        let ip = match self.dest {
            Dest::Ip(ip) => ip,
            Dest::Domain(_) => SOCKS4A_MARKER,
        };
        out[0] = SOCKS4_VERSION;
        out[1] = self.command.code();
        out[2..4].copy_from_slice(&self.port.to_be_bytes());
        out[4..8].copy_from_slice(&ip.octets());
        let user_end = 8 + self.user_id.len();
        out[8..user_end].copy_from_slice(self.user_id);
        out[user_end] = 0;
        if let Dest::Domain(host) = self.dest {
            out[user_end + 1..needed - 1].copy_from_slice(host.as_bytes());
            out[needed - 1] = 0;
        }
        Ok(needed)
    }

    /// Appends the encoded request to a [`bytes::BufMut`] (for example a `BytesMut` or a `Vec<u8>`).
    /// Feature `bytes`.
    ///
    /// ```
    /// use core::net::SocketAddrV4;
    /// use socks4_core::Request;
    /// let mut out = Vec::new();
    /// Request::connect(SocketAddrV4::new([10, 0, 0, 1].into(), 80), b"bob").encode_to(&mut out)?;
    /// assert_eq!(out, b"\x04\x01\x00\x50\x0a\x00\x00\x01bob\0");
    /// # Ok::<(), socks4_core::EncodeError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The errors of [`validate`](Self::validate), and [`EncodeError::BufferTooSmall`] when `out`
    /// cannot grow by [`encoded_len`](Self::encoded_len) bytes (nothing is written then).
    #[cfg(feature = "bytes")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bytes")))]
    pub fn encode_to<B: bytes::BufMut>(&self, out: &mut B) -> Result<(), EncodeError> {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let n = self.encode(&mut buf)?;
        if out.remaining_mut() < n {
            return Err(EncodeError::BufferTooSmall { needed: n });
        }
        out.put_slice(&buf[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::new(255, 255);

    fn complete<'a>(buf: &'a [u8], limits: &Limits) -> (Request<'a>, usize) {
        match parse_request(buf, limits) {
            Ok(Status::Complete(c)) => c,
            other => panic!("expected complete, got {other:?}"),
        }
    }

    #[test]
    fn connect_request_and_early_data() {
        let bytes = b"\x04\x01\x1f\x90\xc0\xa8\x01\x02bob\0extra";
        let (req, used) = complete(bytes, &L);
        assert_eq!(req, Request::connect(SocketAddrV4::new([192, 168, 1, 2].into(), 8080), b"bob"));
        assert_eq!(used, 12);
    }

    #[test]
    fn socks4a_request() {
        let bytes = b"\x04\x02\x00\x15\x00\x00\x00\x07\0ftp.example.org\0";
        let (req, used) = complete(bytes, &L);
        assert_eq!(req.command, Command::Bind);
        assert_eq!(req.dest, Dest::Domain("ftp.example.org"));
        assert_eq!(req.user_id, b"");
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn zero_address_is_not_4a() {
        let (req, used) = complete(b"\x04\x01\x00\x50\x00\x00\x00\x00\0host\0", &L);
        assert_eq!(req.dest, Dest::Ip(Ipv4Addr::UNSPECIFIED));
        assert_eq!(used, 9);
    }

    #[test]
    fn every_prefix_is_partial() {
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x01alice\0example.com\0";
        for end in 0..bytes.len() {
            assert_eq!(parse_request(&bytes[..end], &L), Ok(Status::Partial), "prefix {end}");
        }
        assert!(matches!(parse_request(bytes, &L), Ok(Status::Complete(_))));
    }

    #[test]
    fn bad_version_and_command_fail_early() {
        assert_eq!(parse_request(b"G", &L), Err(ParseError::BadVersion(b'G')));
        assert_eq!(parse_request(b"\x05\x01", &L), Err(ParseError::BadVersion(5)));
        assert_eq!(parse_request(b"\x04\x03", &L), Err(ParseError::BadCommand(3)));
        assert_eq!(parse_request(b"\x04\x00\x00", &L), Err(ParseError::BadCommand(0)));
    }

    #[test]
    fn user_id_limit() {
        let mut at = b"\x04\x01\x00\x50\x7f\x00\x00\x01".to_vec();
        at.extend(core::iter::repeat_n(b'u', 255));
        let mut over = at.clone();
        at.push(0);
        assert_eq!(complete(&at, &L).0.user_id.len(), 255);
        over.push(b'u');
        assert_eq!(parse_request(&over, &L), Err(ParseError::UserIdTooLong));
        // Too long is detected without waiting for the NUL, and a smaller limit applies.
        let small = Limits::new(3, 255);
        assert_eq!(parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01abc", &small), Ok(Status::Partial));
        assert_eq!(parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01abcd", &small), Err(ParseError::UserIdTooLong));
        assert!(matches!(parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01abc\0", &small), Ok(Status::Complete(_))));
        let zero = Limits::new(0, 255);
        assert!(matches!(parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01\0", &zero), Ok(Status::Complete(_))));
        assert_eq!(parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01a", &zero), Err(ParseError::UserIdTooLong));
    }

    #[test]
    fn host_limits_and_bytes() {
        let head = b"\x04\x01\x00\x50\x00\x00\x00\x01\0";
        let with = |host: &[u8], nul: bool| {
            let mut v = head.to_vec();
            v.extend_from_slice(host);
            if nul {
                v.push(0);
            }
            v
        };
        let small = Limits::new(255, 4);
        assert!(matches!(parse_request(&with(b"abcd", true), &small), Ok(Status::Complete(_))));
        assert_eq!(parse_request(&with(b"abcde", false), &small), Err(ParseError::HostTooLong));
        assert_eq!(parse_request(&with(b"", true), &L), Err(ParseError::EmptyHost));
        assert_eq!(parse_request(&with(b"a b", true), &L), Err(ParseError::BadHostByte(b' ')));
        assert_eq!(parse_request(&with(b"a\x7f", false), &L), Err(ParseError::BadHostByte(0x7f)));
        assert_eq!(parse_request(&with(b"\xc3\xa9", false), &L), Err(ParseError::BadHostByte(0xc3)));
        // A bad byte beyond the limit is reported as too long, not as a bad byte.
        assert_eq!(parse_request(&with(b"abcd ", false), &small), Err(ParseError::HostTooLong));
    }

    #[test]
    fn encode_round_trips_and_validates() {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let req = Request::connect_host("example.com", 443, b"me");
        let n = req.encode(&mut buf).unwrap();
        assert_eq!(n, req.encoded_len());
        assert_eq!(complete(&buf[..n], &L), (req, n));
        assert_eq!(req.encode(&mut buf[..n - 1]), Err(EncodeError::BufferTooSmall { needed: n }));
        assert_eq!(Request::connect_host("", 1, b"").encode(&mut buf), Err(EncodeError::BadHost));
        assert_eq!(Request::connect_host("a b", 1, b"").encode(&mut buf), Err(EncodeError::BadHost));
        let long: std::string::String = core::iter::repeat_n('h', 256).collect();
        assert_eq!(Request::connect_host(&long, 1, b"").encode(&mut buf), Err(EncodeError::BadHost));
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        assert_eq!(Request::connect(addr, b"a\0b").encode(&mut buf), Err(EncodeError::BadUserId));
        assert_eq!(Request::connect(addr, &[b'u'; 256]).encode(&mut buf), Err(EncodeError::BadUserId));
        let marker = SocketAddrV4::new([0, 0, 0, 5].into(), 80);
        assert_eq!(Request::connect(marker, b"").encode(&mut buf), Err(EncodeError::MarkerAddress));
        assert!(Request::connect(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), b"").encode(&mut buf).is_ok());
    }

    #[cfg(feature = "bytes")]
    #[test]
    fn encode_to_buf_mut() {
        use std::vec::Vec;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1);
        let mut out = Vec::new();
        Request::connect(addr, b"x").encode_to(&mut out).unwrap();
        assert_eq!(out, b"\x04\x01\x00\x01\x7f\x00\x00\x01x\0");
        let mut tiny = [0u8; 3];
        assert_eq!(
            Request::connect(addr, b"").encode_to(&mut &mut tiny[..]),
            Err(EncodeError::BufferTooSmall { needed: 9 })
        );
    }

    #[test]
    fn commands_and_display() {
        for c in [Command::Connect, Command::Bind] {
            assert_eq!(Command::from_code(c.code()), Some(c));
        }
        assert_eq!(Command::from_code(0), None);
        assert_eq!(std::format!("{} {}", Command::Connect, Command::Bind), "CONNECT BIND");
        assert_eq!(std::format!("{} {}", Dest::Ip(Ipv4Addr::LOCALHOST), Dest::Domain("h")), "127.0.0.1 h");
        assert_eq!(Limits::default(), L);
    }
}
