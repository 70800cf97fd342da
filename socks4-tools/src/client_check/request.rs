//! Reading a client's request off the wire and judging its bytes.
//!
//! The request is read by the protocol's grammar (`VN CD DSTPORT DSTIP USERID NUL [HOST NUL]`),
//! then the checker listens a little longer before replying: a correct client sends nothing
//! until the reply, so anything that arrives then (padding, a second NUL, early payload) is kept
//! as [`Request::trailing`].

use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use super::show;
use crate::scenarios::Failure;
use crate::wire::{self, Dest};

/// The longest user id or host name read before the request is called malformed.
pub const MAX_FIELD: usize = 1024;
/// How long the checker waits for more bytes after a complete request.
pub const QUIET: Duration = Duration::from_millis(150);
/// How long a request may stall (no new byte) before it is judged incomplete.
pub const STALL: Duration = Duration::from_secs(1);
/// The most trailing bytes kept.
const MAX_TRAILING: usize = 4096;

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request's bytes, up to its last NUL.
    pub bytes: Vec<u8>,
    /// CD.
    pub command: u8,
    /// DSTPORT.
    pub port: u16,
    /// DSTIP.
    pub ip: Ipv4Addr,
    /// USERID (without its NUL).
    pub user: Vec<u8>,
    /// The SOCKS4a host name (DSTIP `0.0.0.x`, x ≠ 0), without its NUL.
    pub host: Option<Vec<u8>>,
    /// Bytes the client sent after the request and before the reply.
    pub trailing: Vec<u8>,
}

/// Whether `ip` is SOCKS4a's marker `0.0.0.x` with x ≠ 0.
pub fn is_4a_marker(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..3] == [0, 0, 0] && o[3] != 0
}

enum Parse {
    Partial,
    Done(Request),
    Bad(String),
}

fn nul_in(buf: &[u8], from: usize, what: &str) -> Result<Option<usize>, String> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest.iter().position(|&b| b == 0) {
        Some(i) => Ok(Some(from + i)),
        None if rest.len() > MAX_FIELD => Err(format!("no NUL within {MAX_FIELD} bytes of the {what}")),
        None => Ok(None),
    }
}

fn parse(buf: &[u8]) -> Parse {
    let Some(head) = buf.get(..8) else { return Parse::Partial };
    if head[0] != wire::VERSION {
        return Parse::Bad(format!("version byte {}, expected 4", head[0]));
    }
    let ip = Ipv4Addr::new(head[4], head[5], head[6], head[7]);
    let user_end = match nul_in(buf, 8, "user id") {
        Ok(Some(i)) => i,
        Ok(None) => return Parse::Partial,
        Err(e) => return Parse::Bad(e),
    };
    let (host, end) = if is_4a_marker(ip) {
        match nul_in(buf, user_end + 1, "4a host name") {
            Ok(Some(i)) => (Some(buf[user_end + 1..i].to_vec()), i + 1),
            Ok(None) => return Parse::Partial,
            Err(e) => return Parse::Bad(e),
        }
    } else {
        (None, user_end + 1)
    };
    Parse::Done(Request {
        bytes: buf[..end].to_vec(),
        command: head[1],
        port: u16::from_be_bytes([head[2], head[3]]),
        ip,
        user: buf[8..user_end].to_vec(),
        host,
        trailing: buf[end..].to_vec(),
    })
}

/// What an incomplete request still lacks.
fn hint(buf: &[u8]) -> &'static str {
    match buf.get(4..8) {
        Some([0, 0, 0, x]) if *x != 0 && buf[8..].contains(&0) => {
            " (DSTIP 0.0.0.x announces a host name and its NUL after the user id's NUL)"
        }
        Some(_) => " (no NUL after the user id)",
        None => "",
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads one request from `conn`: waits up to `first_byte` for it to start, fails if it stalls
/// for [`STALL`] or is malformed, then collects what follows for [`QUIET`].
pub fn read(conn: &mut TcpStream, first_byte: Duration) -> Result<Request, Failure> {
    let started = Instant::now();
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 2048];
    let mut last_byte = started;
    let mut req = loop {
        match parse(&buf) {
            Parse::Done(r) => break r,
            Parse::Bad(why) => return Err(Failure::new(format!("not a SOCKS4 request ({why}): sent {}", show(&buf)))),
            Parse::Partial => {}
        }
        let limit = if buf.is_empty() { first_byte.saturating_sub(started.elapsed()) } else { STALL };
        conn.set_read_timeout(Some(limit.max(Duration::from_millis(1))))?;
        match conn.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Failure::new("the client closed without sending a request")),
            Ok(0) => {
                return Err(Failure::new(format!(
                    "the client closed after an incomplete request: sent {}",
                    show(&buf)
                )));
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_byte = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) && buf.is_empty() => {
                return Err(Failure::new(format!("the client connected but sent nothing within {first_byte:?}")));
            }
            Err(e) if timed_out(&e) => {
                return Err(Failure::new(format!(
                    "incomplete request, nothing more for {:?}{}: sent {}",
                    last_byte.elapsed(),
                    hint(&buf),
                    show(&buf)
                )));
            }
            Err(e) => return Err(Failure::new(format!("reading the request: {e}"))),
        }
    };
    conn.set_read_timeout(Some(QUIET))?;
    while req.trailing.len() < MAX_TRAILING {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => req.trailing.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Ok(req)
}

/// What the request should be.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// CD.
    pub command: u8,
    /// The destination host as given to the client.
    pub host: &'a str,
    /// The IPv4 addresses a client resolving `host` itself may send.
    pub addrs: &'a [Ipv4Addr],
    /// The destination port.
    pub port: u16,
    /// The user id.
    pub user: &'a [u8],
    /// Whether a host name must go to the proxy (SOCKS4a) rather than be resolved by the client.
    pub require_4a: bool,
}

/// Names the field at byte `i` of a well-formed request laid out like `expected`.
fn field_at(i: usize, user_len: usize, host_len: Option<usize>) -> String {
    let user_nul = 8 + user_len;
    match i {
        0 => "VN".into(),
        1 => "CD".into(),
        2 | 3 => "DSTPORT".into(),
        4..=7 => "DSTIP".into(),
        _ if i < user_nul => "the user id".into(),
        _ if i == user_nul => "the NUL after the user id".into(),
        _ => match host_len {
            Some(h) if i < user_nul + 1 + h => "the 4a host name".into(),
            Some(h) if i == user_nul + 1 + h => "the NUL after the host name".into(),
            _ => "past the end of the request".into(),
        },
    }
}

/// Compares what was sent (request and trailing bytes) with the exact bytes `expected` calls for:
/// `Ok` if they are equal, otherwise a failure saying where they differ, with both.
pub fn judge(req: &Request, expected: &Expected<'_>) -> Result<(), Failure> {
    let name_given = expected.host.parse::<Ipv4Addr>().is_err();
    let dest = if is_4a_marker(req.ip) || (name_given && expected.require_4a) {
        Dest::Host(expected.host.to_owned())
    } else {
        let ip =
            if expected.addrs.contains(&req.ip) { req.ip } else { expected.addrs.first().copied().unwrap_or(req.ip) };
        Dest::Ip(ip)
    };
    let mut want = wire::request(expected.command, &dest, expected.port, expected.user);
    if is_4a_marker(req.ip) {
        want[7] = req.ip.octets()[3]; // any x ≠ 0 marks SOCKS4a
    }
    let mut sent = req.bytes.clone();
    sent.extend_from_slice(&req.trailing);
    if sent == want {
        return Ok(());
    }
    let host_len = matches!(dest, Dest::Host(_)).then_some(expected.host.len());
    let why = match sent.iter().zip(&want).position(|(a, b)| a != b) {
        Some(i) if (4..8).contains(&i) && name_given && expected.require_4a && !is_4a_marker(req.ip) => {
            format!("DSTIP is {} (resolved by the client); a host name for the proxy was required", req.ip)
        }
        Some(i) => format!(
            "byte {i} ({}) is {:#04x}, expected {:#04x}",
            field_at(i, expected.user.len(), host_len),
            sent[i],
            want[i]
        ),
        None if sent.len() > want.len() => {
            format!("{} bytes after the end of the request, before the reply", sent.len() - want.len())
        }
        None => format!("the request ends after {} of {} bytes", sent.len(), want.len()),
    };
    Err(Failure::new(format!("{why}: sent {}, expected {}", show(&sent), show(&want))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_of(bytes: &[u8]) -> Request {
        match parse(bytes) {
            Parse::Done(r) => r,
            Parse::Partial => panic!("partial"),
            Parse::Bad(e) => panic!("bad: {e}"),
        }
    }

    fn expect<'a>(host: &'a str, addrs: &'a [Ipv4Addr], user: &'a [u8]) -> Expected<'a> {
        Expected { command: 1, host, addrs, port: 80, user, require_4a: false }
    }

    #[test]
    fn exact_requests_pass() {
        let lo = [Ipv4Addr::LOCALHOST];
        judge(&request_of(&wire::connect_host("localhost", 80, b"")), &expect("localhost", &lo, b"")).expect("4a");
        judge(&request_of(&[4, 1, 0, 80, 127, 0, 0, 1, b'a', 0]), &expect("localhost", &lo, b"a")).expect("4");
        let mut marker = wire::connect_host("localhost", 80, b"");
        marker[7] = 0xff;
        judge(&request_of(&marker), &expect("localhost", &lo, b"")).expect("0.0.0.255 is a 4a marker too");
    }

    #[test]
    fn flaws_are_named() {
        let lo = [Ipv4Addr::LOCALHOST];
        let e = expect("localhost", &lo, b"");
        // hyper-util: a second NUL after an empty user id.
        let mut extra = vec![4, 1, 0, 80, 0, 0, 0, 1, 0, 0];
        extra.extend_from_slice(b"localhost\0");
        let f = judge(&request_of(&extra), &e).expect_err("extra NUL");
        assert!(f.message().contains("byte 9 (the 4a host name) is 0x00"), "{f}");
        // fast-socks5: the host in the user-id slot.
        let mut slot = vec![4, 1, 0, 80, 0, 0, 0, 1];
        slot.extend_from_slice(b"localhost\0\0");
        let f = judge(&request_of(&slot), &e).expect_err("host in user id");
        assert!(f.message().contains("(the NUL after the user id)"), "{f}");
        // Padding.
        let mut padded = request_of(&wire::connect_host("localhost", 80, b""));
        padded.trailing = vec![0; 240];
        let f = judge(&padded, &e).expect_err("padding");
        assert!(f.message().starts_with("240 bytes after the end"), "{f}");
        // Resolved locally where a name was required.
        let req = request_of(&[4, 1, 0, 80, 127, 0, 0, 1, 0]);
        judge(&req, &e).expect("resolving locally is allowed by default");
        let f = judge(&req, &Expected { require_4a: true, ..e }).expect_err("4a required");
        assert!(f.message().contains("resolved by the client"), "{f}");
    }

    #[test]
    fn parse_is_bounded() {
        assert!(matches!(parse(&[4, 1, 0, 80, 127, 0, 0]), Parse::Partial));
        assert!(matches!(parse(&[5, 1, 0, 80, 127, 0, 0, 1, 0]), Parse::Bad(_)));
        let mut long = vec![4, 1, 0, 80, 127, 0, 0, 1];
        long.resize(8 + MAX_FIELD + 1, b'u');
        assert!(matches!(parse(&long), Parse::Bad(_)));
    }

    #[test]
    fn any_bytes_parse_and_judge_without_panic() {
        // Bytes biased towards the grammar's own (VN, NUL, the 4a marker) so that every branch runs.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lo = [Ipv4Addr::LOCALHOST];
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| [0, 1, 4, b'a', 0xff][(next() % 5) as usize]).collect();
            if next() % 2 == 0 && buf.len() > 8 {
                buf[0] = 4;
            }
            if let Parse::Done(req) = parse(&buf) {
                assert!(req.bytes.len() + req.trailing.len() == buf.len());
                let _ = judge(&req, &expect("a", &lo, b"a"));
            }
        }
    }
}
