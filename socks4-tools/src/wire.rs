//! Hand-written SOCKS4/4a encoding and decoding for the scenarios.
//!
//! Deliberately independent of `socks4-core`: the checker is a black box that only knows the
//! bytes described in the protocol.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The version byte of a request.
pub const VERSION: u8 = 4;
/// The command byte of a CONNECT request.
pub const CMD_CONNECT: u8 = 1;
/// The command byte of a BIND request.
pub const CMD_BIND: u8 = 2;
/// Reply code: request granted.
pub const GRANTED: u8 = 90;
/// Reply code: request rejected or failed.
pub const REJECTED: u8 = 91;
/// Reply code: rejected because the client's identd is unreachable.
pub const IDENTD_UNREACHABLE: u8 = 92;
/// Reply code: rejected because identd reported a different user id.
pub const IDENTD_MISMATCH: u8 = 93;
/// Length of every reply.
pub const REPLY_LEN: usize = 8;

/// The destination of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// SOCKS4: an IPv4 address.
    Ip(Ipv4Addr),
    /// SOCKS4a: a host name for the server to resolve (DSTIP is sent as 0.0.0.1).
    Host(String),
}

/// Encodes a request: `VN CD DSTPORT DSTIP USERID NUL [HOST NUL]`.
///
/// `user_id` and a host name must not contain NUL bytes if the request is to be well-formed;
/// this function does not check, so scenarios can also build malformed requests.
pub fn request(command: u8, dest: &Dest, port: u16, user_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + user_id.len() + 32);
    out.push(VERSION);
    out.push(command);
    out.extend_from_slice(&port.to_be_bytes());
    match dest {
        Dest::Ip(ip) => out.extend_from_slice(&ip.octets()),
        Dest::Host(_) => out.extend_from_slice(&[0, 0, 0, 1]),
    }
    out.extend_from_slice(user_id);
    out.push(0);
    if let Dest::Host(host) = dest {
        out.extend_from_slice(host.as_bytes());
        out.push(0);
    }
    out
}

/// Encodes a SOCKS4 CONNECT to `addr`.
pub fn connect(addr: SocketAddrV4, user_id: &[u8]) -> Vec<u8> {
    request(CMD_CONNECT, &Dest::Ip(*addr.ip()), addr.port(), user_id)
}

/// Encodes a SOCKS4a CONNECT to `host:port`.
pub fn connect_host(host: &str, port: u16, user_id: &[u8]) -> Vec<u8> {
    request(CMD_CONNECT, &Dest::Host(host.to_owned()), port, user_id)
}

/// Encodes a SOCKS4 BIND expecting a peer from `expected_peer` (the port is informational).
pub fn bind(expected_peer: SocketAddrV4, user_id: &[u8]) -> Vec<u8> {
    request(CMD_BIND, &Dest::Ip(*expected_peer.ip()), expected_peer.port(), user_id)
}

/// Encodes a SOCKS4a BIND expecting a peer from the host `host` (the port is informational).
pub fn bind_host(host: &str, port: u16, user_id: &[u8]) -> Vec<u8> {
    request(CMD_BIND, &Dest::Host(host.to_owned()), port, user_id)
}

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The reply code, 90..=93.
    pub code: u8,
    /// DSTPORT and DSTIP of the reply.
    pub addr: SocketAddrV4,
}

impl Reply {
    /// Whether the code is 90 (granted).
    pub fn granted(&self) -> bool {
        self.code == GRANTED
    }
}

/// Why a reply could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Fewer than 8 bytes.
    Short(usize),
    /// The version byte is not 0.
    Version(u8),
    /// The code is outside 90..=93.
    Code(u8),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Short(n) => write!(f, "reply too short: {n} of 8 bytes"),
            ReplyError::Version(v) => write!(f, "reply version byte is {v}, expected 0"),
            ReplyError::Code(c) => write!(f, "reply code {c} is not in 90..=93"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Decodes the first 8 bytes of `buf` as a reply.
pub fn parse_reply(buf: &[u8]) -> Result<Reply, ReplyError> {
    let b: &[u8; REPLY_LEN] =
        buf.get(..REPLY_LEN).and_then(|s| s.try_into().ok()).ok_or(ReplyError::Short(buf.len()))?;
    if b[0] != 0 {
        return Err(ReplyError::Version(b[0]));
    }
    if !(GRANTED..=IDENTD_MISMATCH).contains(&b[1]) {
        return Err(ReplyError::Code(b[1]));
    }
    let port = u16::from_be_bytes([b[2], b[3]]);
    let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    Ok(Reply { code: b[1], addr: SocketAddrV4::new(ip, port) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 0x1f90);
        assert_eq!(connect(a, b"u"), [4, 1, 0x1f, 0x90, 127, 0, 0, 1, b'u', 0]);
        assert_eq!(bind(a, b""), [4, 2, 0x1f, 0x90, 127, 0, 0, 1, 0]);
        assert_eq!(connect_host("ab", 80, b""), [4, 1, 0, 80, 0, 0, 0, 1, 0, b'a', b'b', 0]);
    }

    #[test]
    fn decodes_replies() {
        let r = parse_reply(&[0, 90, 0, 80, 10, 0, 0, 1]).expect("valid reply");
        assert!(r.granted());
        assert_eq!(r.addr, "10.0.0.1:80".parse().expect("addr"));
        assert_eq!(parse_reply(&[0, 90, 0]), Err(ReplyError::Short(3)));
        assert_eq!(parse_reply(&[4, 90, 0, 0, 0, 0, 0, 0]), Err(ReplyError::Version(4)));
        assert_eq!(parse_reply(&[0, 89, 0, 0, 0, 0, 0, 0]), Err(ReplyError::Code(89)));
    }
}
