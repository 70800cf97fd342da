//! A reference SOCKS4/4a client (blocking std sockets, [`crate::wire`] encoding) whose
//! [`Mode`]s reproduce bugs found in real clients: the checker's own self-test runs each mode
//! (through the `socks4-bad-client` binary) and expects the cases of [`Mode::caught_by`] to fail,
//! and [`Mode::Good`] to pass everything.
//!
//! Command line (the same as the connectors' `client` examples):
//! `socks4-bad-client MODE connect PROXY HOST PORT USER PATH TIMEOUT_SECS` fetches
//! `http://HOST:PORT/PATH` and prints the response; `socks4-bad-client MODE bind PROXY PEER_IP
//! PEER_PORT USER TIMEOUT_SECS` prints `listening ADDR`, `peer ADDR`, then what the peer sent.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use crate::wire::{self, Dest};

/// A client behaviour, correct or with one known bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Correct.
    Good,
    /// A second NUL after an empty user id (hyper-util's SOCKS4 connector, behind reqwest).
    ExtraNul,
    /// The 4a host name written into the user-id slot, padded to 260 bytes (fast-socks5).
    HostInUserId,
    /// The request padded with zeros to 260 bytes (fast-socks5).
    Pad260,
    /// The request's last NUL left out (socksify-ruby).
    MissingNul,
    /// A NUL inside the user id, `USER\0x` (tokio-socks).
    SmuggledNul,
    /// The request built in a 513-byte buffer: a panic on a longer, legal request (tokio-socks 0.5.3).
    ShortBuffer,
    /// The first read taken as the whole reply (hyper-util).
    SingleReadReply,
    /// Bytes that arrive with the reply thrown away (hyper-util).
    DropAfterReply,
    /// Any reply code taken as "granted".
    IgnoreRejection,
    /// No timeout on the reply.
    NoTimeout,
    /// A reset of the tunnel taken as its normal end.
    ResetIsEof,
    /// BIND's `0.0.0.0` reported as the address to use, not replaced by the proxy's.
    BindUnspecified,
}

impl Mode {
    /// Every mode.
    pub const ALL: &'static [Mode] = &[
        Mode::Good,
        Mode::ExtraNul,
        Mode::HostInUserId,
        Mode::Pad260,
        Mode::MissingNul,
        Mode::SmuggledNul,
        Mode::ShortBuffer,
        Mode::SingleReadReply,
        Mode::DropAfterReply,
        Mode::IgnoreRejection,
        Mode::NoTimeout,
        Mode::ResetIsEof,
        Mode::BindUnspecified,
    ];

    /// The mode's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Good => "good",
            Mode::ExtraNul => "extra-nul",
            Mode::HostInUserId => "host-in-user-id",
            Mode::Pad260 => "pad-260",
            Mode::MissingNul => "missing-nul",
            Mode::SmuggledNul => "smuggled-nul",
            Mode::ShortBuffer => "short-buffer",
            Mode::SingleReadReply => "single-read-reply",
            Mode::DropAfterReply => "drop-after-reply",
            Mode::IgnoreRejection => "ignore-rejection",
            Mode::NoTimeout => "no-timeout",
            Mode::ResetIsEof => "reset-is-eof",
            Mode::BindUnspecified => "bind-unspecified",
        }
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// The cases that must fail for this mode (with host `localhost`, `--4a`, a client timeout and
    /// a BIND command).
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Mode::Good => &[],
            Mode::ExtraNul => &["request_empty_user_id"],
            Mode::HostInUserId | Mode::MissingNul | Mode::SmuggledNul => {
                &["request_empty_user_id", "request_user_id", "request_user_id_255"]
            }
            Mode::Pad260 => &["request_empty_user_id", "request_user_id"],
            Mode::ShortBuffer => &["request_long_host"],
            Mode::SingleReadReply => &["reply_split_every_byte", "proxy_closes_after_4_bytes"],
            Mode::DropAfterReply => &["reply_with_payload"],
            Mode::IgnoreRejection => &["reply_rejected_91", "reply_rejected_92", "reply_rejected_93"],
            Mode::NoTimeout => &["slow_reply_past_timeout"],
            Mode::ResetIsEof => &["tunnel_reset"],
            Mode::BindUnspecified => &["bind_unspecified_address"],
        }
    }
}

/// What the client is asked to do.
#[derive(Debug, Clone)]
pub enum Job {
    /// CONNECT to `host:port` and fetch `path` over HTTP/1.0.
    Connect {
        /// A host name (sent as SOCKS4a) or an IPv4 address.
        host: String,
        /// The destination port.
        port: u16,
        /// The path to fetch.
        path: String,
    },
    /// BIND, expecting the peer `peer`.
    Bind {
        /// The expected peer.
        peer: SocketAddrV4,
    },
}

/// Why the client failed.
#[derive(Debug)]
pub enum ClientError {
    /// A socket error.
    Io(io::Error),
    /// The proxy refused (the reply code).
    Rejected(u8),
    /// The reply was malformed or cut short.
    BadReply(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
            ClientError::Rejected(c) => write!(f, "the proxy refused the request (reply {c})"),
            ClientError::BadReply(why) => write!(f, "bad reply: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn encode(mode: Mode, command: u8, dest: &Dest, port: u16, user: &[u8]) -> Vec<u8> {
    let mut user = user.to_vec();
    if mode == Mode::SmuggledNul {
        user.extend_from_slice(b"\0x");
    }
    let mut req = match (mode, dest) {
        (Mode::HostInUserId, Dest::Host(h)) => {
            wire::request(command, &Dest::Ip(Ipv4Addr::new(0, 0, 0, 1)), port, h.as_bytes())
        }
        _ => wire::request(command, dest, port, &user),
    };
    match mode {
        Mode::ExtraNul if user.is_empty() => req.insert(8, 0),
        Mode::Pad260 | Mode::HostInUserId if req.len() < 260 => req.resize(260, 0),
        Mode::MissingNul => {
            req.pop();
        }
        Mode::ShortBuffer => {
            let mut buf = [0u8; 513];
            // Panics past 513 bytes, as the bug did.
            buf[..req.len()].copy_from_slice(&req);
            req = buf[..req.len()].to_vec();
        }
        _ => {}
    }
    req
}

/// Reads one reply as `mode` does; returns it and the bytes read past it that the mode keeps.
fn read_reply(mode: Mode, s: &mut TcpStream) -> Result<([u8; 8], Vec<u8>), ClientError> {
    let mut reply = [0u8; 8];
    match mode {
        Mode::SingleReadReply => {
            let n = s.read(&mut reply)?;
            if n < 2 {
                return Err(ClientError::BadReply(format!("{n} bytes")));
            }
            Ok((reply, Vec::new()))
        }
        Mode::DropAfterReply => {
            let mut buf = [0u8; 512];
            let mut have = 0;
            while have < 8 {
                let n = s.read(&mut buf[have..])?;
                if n == 0 {
                    return Err(ClientError::BadReply("closed".into()));
                }
                have += n;
            }
            reply.copy_from_slice(&buf[..8]);
            Ok((reply, Vec::new()))
        }
        _ => {
            s.read_exact(&mut reply).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ClientError::BadReply("the proxy closed mid-reply".into()),
                _ => ClientError::Io(e),
            })?;
            if reply[0] != 0 {
                return Err(ClientError::BadReply(format!("version byte {}", reply[0])));
            }
            Ok((reply, Vec::new()))
        }
    }
}

fn granted(mode: Mode, reply: &[u8; 8]) -> Result<(), ClientError> {
    if reply[1] == wire::GRANTED || mode == Mode::IgnoreRejection {
        Ok(())
    } else {
        Err(ClientError::Rejected(reply[1]))
    }
}

fn reply_addr(reply: &[u8; 8]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(reply[4], reply[5], reply[6], reply[7]), u16::from_be_bytes([reply[2], reply[3]]))
}

/// Reads to the end of the stream into `out`.
fn read_to_end(mode: Mode, s: &mut TcpStream, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if mode == Mode::ResetIsEof && e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `job` through the proxy at `proxy` as `mode` does, writing what it prints to `out`.
pub fn run(
    mode: Mode,
    job: &Job,
    proxy: SocketAddr,
    user: &[u8],
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let mut s = TcpStream::connect_timeout(&proxy, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(if mode == Mode::NoTimeout { None } else { Some(timeout) })?;
    match job {
        Job::Connect { host, port, path } => {
            let dest = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Dest::Ip(ip),
                Err(_) => Dest::Host(host.clone()),
            };
            s.write_all(&encode(mode, wire::CMD_CONNECT, &dest, *port, user))?;
            let (reply, mut page) = read_reply(mode, &mut s)?;
            granted(mode, &reply)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
            read_to_end(mode, &mut s, &mut page)?;
            out.write_all(&page)?;
        }
        Job::Bind { peer } => {
            s.write_all(&encode(mode, wire::CMD_BIND, &Dest::Ip(*peer.ip()), peer.port(), user))?;
            let (first, _) = read_reply(mode, &mut s)?;
            granted(mode, &first)?;
            let listen = reply_addr(&first);
            let ip = match proxy {
                SocketAddr::V4(p) if listen.ip().is_unspecified() && mode != Mode::BindUnspecified => *p.ip(),
                _ => *listen.ip(),
            };
            writeln!(out, "listening {}", SocketAddrV4::new(ip, listen.port()))?;
            out.flush()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let (second, _) = read_reply(mode, &mut s)?;
            granted(mode, &second)?;
            writeln!(out, "peer {}", reply_addr(&second))?;
            let mut data = Vec::new();
            read_to_end(mode, &mut s, &mut data)?;
            out.write_all(&data)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_encode_their_bugs() {
        let host = Dest::Host("localhost".into());
        let good = encode(Mode::Good, 1, &host, 80, b"");
        assert_eq!(good, wire::connect_host("localhost", 80, b""));
        assert_eq!(encode(Mode::ExtraNul, 1, &host, 80, b"")[8..10], [0, 0]);
        assert_eq!(encode(Mode::Pad260, 1, &host, 80, b"").len(), 260);
        assert_eq!(&encode(Mode::HostInUserId, 1, &host, 80, b"")[8..17], b"localhost");
        assert_eq!(encode(Mode::MissingNul, 1, &host, 80, b"").len(), good.len() - 1);
        let long = "u".repeat(255);
        assert_eq!(encode(Mode::ShortBuffer, 1, &host, 80, long.as_bytes()).len(), 274);
        let long_host = Dest::Host(crate::client_check::cases::long_host());
        assert!(std::panic::catch_unwind(|| encode(Mode::ShortBuffer, 1, &long_host, 80, long.as_bytes())).is_err());
        for m in Mode::ALL {
            assert_eq!(Mode::from_name(m.name()), Some(*m));
        }
    }
}
