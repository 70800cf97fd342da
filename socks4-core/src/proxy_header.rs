//! The PROXY protocol header (HAProxy's, versions 1 and 2), as a load balancer sends it first on
//! a connection: sans-IO, incremental, allocation-free.
//!
//! [`HeaderParser`] takes the connection's first bytes in pieces of any size and says when the
//! header is complete and how many bytes of the last piece it used: the rest (usually the SOCKS
//! request, sent at once behind the header) belongs to the next protocol. It holds at most
//! [`HEADER_BUF`] bytes: a v1 line is at most [`V1_MAX_LEN`] bytes, and of a v2 header only the
//! 16-byte head and the TCP address block are kept; what follows (a Unix address, TLVs) is
//! skipped, up to [`V2_MAX_BLOCK`] bytes in all.
//!
//! ```
//! use socks4_core::proxy_header::{HeaderParser, HeaderStatus, ProxyHeader};
//! let mut parser = HeaderParser::new();
//! let input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 1080\r\n\x04\x01\x00\x50";
//! assert_eq!(parser.handle_input(&input[..10]), Ok(HeaderStatus::Partial));
//! let HeaderStatus::Done { header, used } = parser.handle_input(&input[10..])? else { panic!() };
//! assert_eq!(header, ProxyHeader::Proxy {
//!     source: "192.0.2.7:40000".parse().unwrap(),
//!     destination: "198.51.100.1:1080".parse().unwrap(),
//! });
//! assert_eq!(&input[10 + used..], b"\x04\x01\x00\x50"); // the SOCKS request
//! # Ok::<(), socks4_core::proxy_header::HeaderError>(())
//! ```

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes a v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 address block accepted (the length field allows 65535): the largest address
/// block (216 bytes, Unix sockets) plus 1 KiB of TLVs. Balancers send far less (HAProxy's TLVs
/// are tens of bytes, a cloud balancer's an id or two), and a connection that announces more is
/// refused rather than read on: the bytes would be skipped unseen while the connection holds a
/// handshake slot.
pub const V2_MAX_BLOCK: usize = 216 + 1024;
/// Bytes a [`HeaderParser`] keeps: a whole v1 line, or a v2 head with an IPv6 address block.
pub const HEADER_BUF: usize = V1_MAX_LEN;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_HEAD: usize = 16;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// A relayed TCP connection: the original client, and the address it connected to.
    Proxy {
        /// The original client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's front end).
        destination: SocketAddr,
    },
    /// v2 `LOCAL`: the balancer's own connection, such as a health check; no client behind it.
    Local,
    /// v1 `UNKNOWN`, or v2 `PROXY` for something other than TCP over IPv4/IPv6 (unspecified, Unix
    /// sockets, UDP): the header names no client address.
    Unknown,
}

/// Why the bytes are not a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The bytes start like neither version (v1 `PROXY `, v2's signature).
    NotAHeader,
    /// A v1 line longer than [`V1_MAX_LEN`] bytes without its CRLF.
    V1TooLong,
    /// A v1 line that does not follow the format (protocol, addresses, ports, single spaces, CRLF).
    BadV1,
    /// A v2 header whose version is not 2.
    BadV2Version(u8),
    /// A v2 command other than `LOCAL` (0) and `PROXY` (1).
    BadV2Command(u8),
    /// A v2 address family or transport the specification does not define.
    BadV2Family(u8),
    /// A v2 address block shorter than its family's addresses.
    V2BlockTooShort(u16),
    /// A v2 address block longer than [`V2_MAX_BLOCK`].
    V2BlockTooLong(u16),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAHeader => f.write_str("no PROXY protocol header"),
            Self::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX_LEN} bytes"),
            Self::BadV1 => f.write_str("malformed PROXY v1 line"),
            Self::BadV2Version(v) => write!(f, "PROXY v2 header with version {v}"),
            Self::BadV2Command(c) => write!(f, "PROXY v2 header with command {c}"),
            Self::BadV2Family(b) => write!(f, "PROXY v2 header with family/transport byte {b:#04x}"),
            Self::V2BlockTooShort(n) => write!(f, "PROXY v2 address block of {n} bytes is too short"),
            Self::V2BlockTooLong(n) => write!(f, "PROXY v2 address block of {n} bytes (limit {V2_MAX_BLOCK})"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// The result of feeding bytes to a [`HeaderParser`]. An outcome a caller does not know (the enum
/// may grow) is best treated as a header it cannot use: close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderStatus {
    /// The header is not complete: every byte was used; feed more.
    Partial,
    /// The header is complete; it ended after `used` bytes of the last input (the rest belongs to
    /// what follows it).
    Done {
        /// What it says.
        header: ProxyHeader,
        /// Bytes of the last input that were part of the header.
        used: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the v1 line, or the v2 head and TCP addresses, in `buf`.
    Collect,
    /// v2: skipping `left` bytes of the address block, then done with `header`.
    Skip { left: usize, header: ProxyHeader },
    /// A header was returned (`Done`) or an error: no more input is taken.
    Over(Option<HeaderError>),
}

/// An incremental PROXY protocol v1/v2 parser; see the [module docs](self). One flat,
/// allocation-free value of about [`HEADER_BUF`] bytes.
#[derive(Debug, Clone)]
pub struct HeaderParser {
    buf: [u8; HEADER_BUF],
    len: usize,
    /// v2: the bytes to collect before the rest of the block is skipped (head + addresses).
    want: usize,
    state: State,
}

impl Default for HeaderParser {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderParser {
    /// A parser expecting the connection's first byte.
    pub const fn new() -> Self {
        Self { buf: [0; HEADER_BUF], len: 0, want: V2_HEAD, state: State::Collect }
    }

    /// Whether any byte was fed yet (a connection that closes before its first byte is often a
    /// plain TCP health check).
    pub fn started(&self) -> bool {
        self.len > 0
    }

    /// Feeds the next bytes of the connection. After `Done` or an error the parser takes nothing
    /// more: it returns the error again, or [`HeaderError::NotAHeader`] after `Done`.
    ///
    /// # Errors
    ///
    /// A [`HeaderError`] as soon as the bytes cannot be a valid header ([`HeaderError::NotAHeader`]
    /// when they do not start like one, and after `Done`); the error is final: every later call
    /// returns it again.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<HeaderStatus, HeaderError> {
        let mut used = 0;
        loop {
            match self.state {
                State::Over(Some(e)) => return Err(e),
                State::Over(None) => return Err(HeaderError::NotAHeader),
                State::Skip { left, header } => {
                    let n = left.min(input.len() - used);
                    used += n;
                    if n == left {
                        self.state = State::Over(None);
                        return Ok(HeaderStatus::Done { header, used });
                    }
                    self.state = State::Skip { left: left - n, header };
                    return Ok(HeaderStatus::Partial);
                }
                State::Collect => {
                    let Some(&byte) = input.get(used) else { return Ok(HeaderStatus::Partial) };
                    used += 1;
                    match self.collect(byte) {
                        Ok(None) => {}
                        Ok(Some(next)) => {
                            self.state = next;
                            if let State::Over(None) = next {
                                // Only a v1 line ends in `Collect` directly.
                                return self.v1_done(used);
                            }
                        }
                        Err(e) => {
                            self.state = State::Over(Some(e));
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Takes one byte while collecting; `Some(state)` when collecting ends.
    fn collect(&mut self, byte: u8) -> Result<Option<State>, HeaderError> {
        let i = self.len;
        let v2 = self.buf[0] == V2_SIGNATURE[0] || (i == 0 && byte == V2_SIGNATURE[0]);
        if v2 {
            if i < V2_SIGNATURE.len() && byte != V2_SIGNATURE[i] {
                return Err(HeaderError::NotAHeader);
            }
            self.buf[i] = byte;
            self.len += 1;
            if self.len == V2_HEAD {
                return self.v2_head();
            }
            if self.len == self.want {
                return Ok(Some(self.v2_addresses()));
            }
            return Ok(None);
        }
        if i < V1_PREFIX.len() && byte != V1_PREFIX[i] {
            return Err(HeaderError::NotAHeader);
        }
        self.buf[i] = byte;
        self.len += 1;
        if byte == b'\n' {
            return Ok(Some(State::Over(None)));
        }
        if self.len == V1_MAX_LEN {
            return Err(HeaderError::V1TooLong);
        }
        Ok(None)
    }

    /// The 16-byte v2 head is in: check it and decide what to collect and skip.
    fn v2_head(&mut self) -> Result<Option<State>, HeaderError> {
        let ver_cmd = self.buf[12];
        let (version, command) = (ver_cmd >> 4, ver_cmd & 0x0f);
        if version != 2 {
            return Err(HeaderError::BadV2Version(version));
        }
        let fam = self.buf[13];
        let (family, transport) = (fam >> 4, fam & 0x0f);
        if family > 3 || transport > 2 {
            return Err(HeaderError::BadV2Family(fam));
        }
        let block = u16::from_be_bytes([self.buf[14], self.buf[15]]);
        if usize::from(block) > V2_MAX_BLOCK {
            return Err(HeaderError::V2BlockTooLong(block));
        }
        let addresses = match (command, fam) {
            (0, _) => 0,
            (1, 0x11) => 12,
            (1, 0x21) => 36,
            (1, _) => 0,
            (c, _) => return Err(HeaderError::BadV2Command(c)),
        };
        if usize::from(block) < addresses {
            return Err(HeaderError::V2BlockTooShort(block));
        }
        self.want = V2_HEAD + addresses;
        if addresses == 0 {
            let header = if command == 0 { ProxyHeader::Local } else { ProxyHeader::Unknown };
            return Ok(Some(State::Skip { left: usize::from(block), header }));
        }
        Ok(None)
    }

    /// The v2 TCP addresses are in: the header, and the rest of the block to skip.
    fn v2_addresses(&self) -> State {
        let block = usize::from(u16::from_be_bytes([self.buf[14], self.buf[15]]));
        let a = &self.buf[V2_HEAD..self.len];
        let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
        let (source, destination) = if a.len() == 12 {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
            (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
        } else {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
        };
        State::Skip { left: block - a.len(), header: ProxyHeader::Proxy { source, destination } }
    }

    /// The v1 line (CRLF included) is in `buf`.
    fn v1_done(&mut self, used: usize) -> Result<HeaderStatus, HeaderError> {
        match parse_v1(&self.buf[..self.len]) {
            Ok(header) => Ok(HeaderStatus::Done { header, used }),
            Err(e) => {
                self.state = State::Over(Some(e));
                Err(e)
            }
        }
    }
}

/// Parses a whole v1 line, `PROXY TCP4 src dst sport dport\r\n` (or `TCP6`, or `UNKNOWN` and
/// anything up to the CRLF).
fn parse_v1(line: &[u8]) -> Result<ProxyHeader, HeaderError> {
    let bad = HeaderError::BadV1;
    let body = line.strip_prefix(V1_PREFIX).and_then(|l| l.strip_suffix(b"\r\n")).ok_or(bad)?;
    let body = core::str::from_utf8(body).map_err(|_| bad)?;
    if body == "UNKNOWN" || body.starts_with("UNKNOWN ") {
        return Ok(ProxyHeader::Unknown);
    }
    let mut fields = body.split(' ');
    let mut next = || fields.next().ok_or(bad);
    let (proto, src, dst, sport, dport) = (next()?, next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(bad);
    }
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (IpAddr::V4(src.parse().map_err(|_| bad)?), IpAddr::V4(dst.parse().map_err(|_| bad)?)),
        "TCP6" => (IpAddr::V6(src.parse().map_err(|_| bad)?), IpAddr::V6(dst.parse().map_err(|_| bad)?)),
        _ => return Err(bad),
    };
    Ok(ProxyHeader::Proxy {
        source: SocketAddr::new(src, v1_port(sport).ok_or(bad)?),
        destination: SocketAddr::new(dst, v1_port(dport).ok_or(bad)?),
    })
}

/// A v1 port: 1 to 5 digits without a leading zero (or `0`), at most 65535.
fn v1_port(text: &str) -> Option<u16> {
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    if !digits || text.is_empty() || text.len() > 5 || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// Whether `first_bytes` (at least one byte) could be the start of a PROXY header: for telling
/// an operator that a connection from a source not trusted with PROXY headers sent one.
///
/// ```
/// use socks4_core::proxy_header::looks_like_header;
/// assert!(looks_like_header(b"PROXY TCP4 "));
/// assert!(looks_like_header(b"\r\n\r\n\0"));
/// assert!(!looks_like_header(b"\x04\x01\x00\x50"));
/// ```
pub fn looks_like_header(first_bytes: &[u8]) -> bool {
    let n = first_bytes.len();
    n > 0 && (V1_PREFIX.starts_with(&first_bytes[..n.min(6)]) || V2_SIGNATURE.starts_with(&first_bytes[..n.min(12)]))
}

/// Writes a v2 `PROXY` header for a TCP connection from `source` to `destination` (both of the
/// same family; an IPv4 and an IPv6 address are sent as IPv6, the IPv4 one mapped) into `out`;
/// returns its length (28 or 52 bytes). For tests and for clients of a server that expects one.
///
/// ```
/// use socks4_core::proxy_header::{encode_v2, HeaderParser, HeaderStatus, ProxyHeader};
/// let (source, destination) = ("192.0.2.7:40000".parse()?, "198.51.100.1:1080".parse()?);
/// let mut out = [0u8; 52];
/// let n = encode_v2(source, destination, &mut out);
/// let status = HeaderParser::new().handle_input(&out[..n]);
/// assert_eq!(status, Ok(HeaderStatus::Done { header: ProxyHeader::Proxy { source, destination }, used: n }));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, out: &mut [u8; 52]) -> usize {
    out[..12].copy_from_slice(&V2_SIGNATURE);
    out[12] = 0x21;
    let n = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[13] = 0x11;
            out[16..20].copy_from_slice(&s.octets());
            out[20..24].copy_from_slice(&d.octets());
            out[24..26].copy_from_slice(&source.port().to_be_bytes());
            out[26..28].copy_from_slice(&destination.port().to_be_bytes());
            28
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out[13] = 0x21;
            out[16..32].copy_from_slice(&v6(s).octets());
            out[32..48].copy_from_slice(&v6(d).octets());
            out[48..50].copy_from_slice(&source.port().to_be_bytes());
            out[50..52].copy_from_slice(&destination.port().to_be_bytes());
            52
        }
    };
    out[14..16].copy_from_slice(&((n - V2_HEAD) as u16).to_be_bytes());
    n
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    const REQUEST: &[u8] = b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\0";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn v1_tcp4() -> (&'static [u8], ProxyHeader) {
        (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 1080\r\n",
            ProxyHeader::Proxy { source: addr("192.0.2.7:40000"), destination: addr("198.51.100.1:1080") },
        )
    }

    fn v2_tcp6_with_tlvs() -> (Vec<u8>, ProxyHeader) {
        let (source, destination) = (addr("[2001:db8::7]:40000"), addr("[2001:db8::1]:1080"));
        let mut out = [0u8; 52];
        let n = encode_v2(source, destination, &mut out);
        let mut header = out[..n].to_vec();
        // Two TLVs: a NOOP of 5 bytes and an AUTHORITY.
        let tlvs = b"\x04\x00\x05abcde\x02\x00\x0bexample.com";
        header.extend_from_slice(tlvs);
        let block = (n - V2_HEAD + tlvs.len()) as u16;
        header[14..16].copy_from_slice(&block.to_be_bytes());
        (header, ProxyHeader::Proxy { source, destination })
    }

    /// Feeds `input` split at `at`; returns the header and the bytes after it.
    fn split_feed(input: &[u8], at: usize) -> Result<(ProxyHeader, Vec<u8>), HeaderError> {
        let mut p = HeaderParser::new();
        let mut offset = 0;
        for piece in [&input[..at], &input[at..]] {
            match p.handle_input(piece)? {
                HeaderStatus::Partial => offset += piece.len(),
                HeaderStatus::Done { header, used } => {
                    assert!(used <= piece.len());
                    return Ok((header, input[offset + used..].to_vec()));
                }
            }
        }
        panic!("incomplete after all input");
    }

    /// Every split point of header + request, and the two in one piece, give the same header and
    /// leave the whole request.
    fn every_split(header_bytes: &[u8], expected: ProxyHeader) {
        let mut input = header_bytes.to_vec();
        input.extend_from_slice(REQUEST);
        for at in 0..=input.len() {
            let (header, rest) = split_feed(&input, at).unwrap_or_else(|e| panic!("split at {at}: {e}"));
            assert_eq!(header, expected, "split at {at}");
            assert_eq!(rest, REQUEST, "split at {at}");
        }
        // One byte at a time.
        let mut p = HeaderParser::new();
        for (i, b) in input.iter().enumerate() {
            match p.handle_input(core::slice::from_ref(b)).unwrap() {
                HeaderStatus::Partial => assert!(i + 1 < header_bytes.len()),
                HeaderStatus::Done { header, used } => {
                    assert_eq!((header, used, i + 1), (expected, 1, header_bytes.len()));
                    break;
                }
            }
        }
    }

    #[test]
    fn v1_every_split() {
        let (bytes, header) = v1_tcp4();
        every_split(bytes, header);
        every_split(
            b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n",
            ProxyHeader::Proxy { source: addr("[2001:db8::7]:65535"), destination: addr("[2001:db8::1]:0") },
        );
        every_split(b"PROXY UNKNOWN\r\n", ProxyHeader::Unknown);
        every_split(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader::Unknown);
    }

    #[test]
    fn v2_every_split() {
        let mut out = [0u8; 52];
        let (s, d) = (addr("10.1.2.3:5555"), addr("10.0.0.1:1080"));
        let n = encode_v2(s, d, &mut out);
        every_split(&out[..n], ProxyHeader::Proxy { source: s, destination: d });
        let (bytes, header) = v2_tcp6_with_tlvs();
        every_split(&bytes, header);
        // LOCAL with an (ignored) address block, as HAProxy's health checks send it.
        let mut local = out[..n].to_vec();
        local[12] = 0x20;
        every_split(&local, ProxyHeader::Local);
        // LOCAL, UNSPEC, no block.
        let mut bare = V2_SIGNATURE.to_vec();
        bare.extend_from_slice(&[0x20, 0x00, 0, 0]);
        every_split(&bare, ProxyHeader::Local);
        // PROXY over a Unix socket (216 bytes of addresses): names no IP client.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[b'/'; 216]);
        every_split(&unix, ProxyHeader::Unknown);
    }

    #[test]
    fn bad_headers_fail_early_and_stay_failed() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b"\x04\x01", HeaderError::NotAHeader),
            (b"PROXZ", HeaderError::NotAHeader),
            (b"\r\n\r\n\0\r\nQUIX", HeaderError::NotAHeader),
            (b"GET / HTTP/1.1\r\n", HeaderError::NotAHeader),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", HeaderError::BadV1),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", HeaderError::BadV1),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", HeaderError::BadV1),
            (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", HeaderError::BadV1),
            (b"PROXY TCP4 ::1 ::2 1 2\r\n", HeaderError::BadV1),
            (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", HeaderError::BadV1),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", HeaderError::BadV1),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", HeaderError::BadV1),
            (b"\r\n\r\n\0\r\nQUIT\n\x11\x11\0\x0c", HeaderError::BadV2Version(1)),
            (b"\r\n\r\n\0\r\nQUIT\n\x22\x11\0\x0c", HeaderError::BadV2Command(2)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x41\0\x0c", HeaderError::BadV2Family(0x41)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x13\0\x0c", HeaderError::BadV2Family(0x13)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0b", HeaderError::V2BlockTooShort(11)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x21\0\x0c", HeaderError::V2BlockTooShort(12)),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", HeaderError::V2BlockTooLong(0xffff)),
        ];
        for (input, expected) in cases {
            let mut p = HeaderParser::new();
            assert_eq!(p.handle_input(input), Err(*expected), "{:?}", input);
            assert_eq!(p.handle_input(b"more"), Err(*expected));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN - 1, b'x');
        assert_eq!(HeaderParser::new().handle_input(&long), Ok(HeaderStatus::Partial));
        long.push(b'\r');
        assert_eq!(HeaderParser::new().handle_input(&long), Err(HeaderError::V1TooLong));
        // The longest allowed line passes.
        long.truncate(V1_MAX_LEN - 2);
        long.extend_from_slice(b"\r\n");
        assert!(matches!(HeaderParser::new().handle_input(&long), Ok(HeaderStatus::Done { used: V1_MAX_LEN, .. })));
    }

    #[test]
    fn v2_block_limit_is_exact() {
        for (block, ok) in [(V2_MAX_BLOCK, true), (V2_MAX_BLOCK + 1, false)] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, 0x11]);
            h.extend_from_slice(&(block as u16).to_be_bytes());
            h.extend_from_slice(&[0u8; 12]);
            h.resize(V2_HEAD + block, 0);
            let got = HeaderParser::new().handle_input(&h);
            assert_eq!(got.is_ok(), ok, "{block}: {got:?}");
        }
    }

    #[test]
    fn started_and_after_done() {
        let mut p = HeaderParser::new();
        assert!(!p.started());
        assert_eq!(p.handle_input(b""), Ok(HeaderStatus::Partial));
        assert!(!p.started());
        let (bytes, _) = v1_tcp4();
        assert!(matches!(p.handle_input(bytes), Ok(HeaderStatus::Done { .. })));
        assert!(p.started());
        assert!(p.handle_input(b"x").is_err());
    }
}
