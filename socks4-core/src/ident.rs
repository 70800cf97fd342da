//! Ident (RFC 1413): the query a SOCKS4 server sends to the client host's identd, and a zero-copy
//! parser for the answer.
//!
//! SOCKS4 defines its own authentication through ident: the server connects to port [`PORT`] (113)
//! of the client's host, asks who owns the client's connection, and refuses the request with 92
//! when identd cannot be reached or gives no valid answer, and with 93 when it names another user
//! than the request's user id (or answers `ERROR`). The [`ServerHandshake`](crate::ServerHandshake)
//! asks for this with [`Output::Ident`](crate::Output::Ident) (for a rule with `ident`, see
//! [`rules`](crate::rules)); this module is the wire format for whoever performs it.
//!
//! The exchange, on a connection from the proxy to `client_ip:113`:
//!
//! ```text
//! → 6191, 1080\r\n                             the client's port, then the port it connected to
//! ← 6191, 1080 : USERID : UNIX : alice\r\n      or  6191, 1080 : ERROR : NO-USER\r\n
//! ```
//!
//! Both ports are those of the client's connection to the proxy *as the client's host sees it*:
//! first the port on identd's host (the client's own port, the peer port of the accepted socket),
//! then the port on the querying host (the proxy's, the local port of the accepted socket).
//!
//! A driver connects with a timeout, writes [`Query::as_bytes`], reads into a
//! [`MAX_REPLY_LEN`]-byte buffer until [`parse_reply`] is no longer [`Status::Partial`] (or identd
//! closes), and hands the result to
//! [`ServerHandshake::handle_ident`](crate::ServerHandshake::handle_ident):
//!
//! ```
//! use std::io::Read;
//! use socks4_core::ident::{self, IdentReply, Query};
//! use socks4_core::{Failure, Status};
//!
//! /// `identd` stands for the TCP connection to client_ip:113 (set its read timeout).
//! fn ask(identd: &mut impl Read, query: &Query, buf: &mut [u8; ident::MAX_REPLY_LEN]) -> Result<usize, Failure> {
//!     // (write `query.as_bytes()` to the connection first)
//!     let mut n = 0;
//!     while matches!(ident::parse_reply(&buf[..n], query), Ok(Status::Partial)) {
//!         match identd.read(&mut buf[n..]) {
//!             Ok(0) => break, // closed before the end of the line
//!             Ok(read) => n += read,
//!             Err(_) => return Err(Failure::Other), // with feature `std`: `Failure::from(&e)`
//!         }
//!     }
//!     Ok(n)
//! }
//!
//! let query = Query::new(6191, 1080); // (peer port, local port) of the accepted connection
//! assert_eq!(query.as_bytes(), b"6191, 1080\r\n");
//! let mut identd: &[u8] = b"6191 , 1080 : USERID : UNIX : alice\r\n";
//! let mut buf = [0u8; ident::MAX_REPLY_LEN];
//! let answer = ask(&mut identd, &query, &mut buf).and_then(|n| match ident::parse_reply(&buf[..n], &query) {
//!     Ok(Status::Complete((reply, _))) => Ok(reply),
//!     Ok(Status::Partial) => Err(Failure::BadAnswer), // identd closed mid-line
//!     Err(e) => Err(e.into()),
//! });
//! assert_eq!(answer, Ok(IdentReply::User { os: "UNIX", charset: None, user: b"alice" }));
//! // …then `handshake.handle_ident(now, answer)`.
//! ```
//!
//! RFC 1413's own caution applies: ident is only as trustworthy as the client's host. It proves
//! something only where the proxy's operator also runs (or trusts) the client hosts' identd.

use core::fmt;

use crate::request::Status;
use crate::server::Failure;

/// The TCP port identd listens on.
pub const PORT: u16 = 113;

/// Longest query: `65535, 65535\r\n`.
pub const MAX_QUERY_LEN: usize = 14;

/// Longest reply line, end of line included. RFC 1413 lets a client give up after 1000 bytes
/// without an end of line; [`parse_reply`] fails with [`IdentError::LineTooLong`] there, so a
/// buffer of this size always reaches a verdict.
pub const MAX_REPLY_LEN: usize = 1000;

/// Longest user id accepted, in octets (RFC 1413: a server should not send more, a client must
/// accept this many).
pub const MAX_USER_LEN: usize = 512;

/// Longest token (operating system, character set, error type), RFC 1413's limit.
pub const MAX_TOKEN_LEN: usize = 64;

/// The question for identd: who owns the connection between these two ports?
///
/// ```
/// use socks4_core::ident::Query;
/// let q = Query::new(65535, 1080);
/// assert_eq!(q.as_bytes(), b"65535, 1080\r\n");
/// assert_eq!((q.client_port(), q.server_port()), (65535, 1080));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Query {
    client_port: u16,
    server_port: u16,
    len: u8,
    bytes: [u8; MAX_QUERY_LEN],
}

impl Query {
    /// The query about the connection from the client's `client_port` (the peer port of the
    /// accepted socket) to the proxy's `server_port` (its local port). This order is the one
    /// identd on the client's host expects: its own port first.
    pub fn new(client_port: u16, server_port: u16) -> Self {
        let mut bytes = [0u8; MAX_QUERY_LEN];
        let mut len = write_port(&mut bytes, 0, client_port);
        bytes[len..len + 2].copy_from_slice(b", ");
        len = write_port(&mut bytes, len + 2, server_port);
        bytes[len..len + 2].copy_from_slice(b"\r\n");
        Self { client_port, server_port, len: (len + 2) as u8, bytes }
    }

    /// The query line to write to identd, `\r\n` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The client's port: first in the query.
    pub const fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The proxy's port: second in the query.
    pub const fn server_port(&self) -> u16 {
        self.server_port
    }
}

impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query").field("client_port", &self.client_port).field("server_port", &self.server_port).finish()
    }
}

/// Writes `port` in decimal at `at`; returns the end.
fn write_port(out: &mut [u8; MAX_QUERY_LEN], at: usize, port: u16) -> usize {
    let mut digits = [0u8; 5];
    let mut n = 0;
    let mut rest = port;
    loop {
        digits[n] = b'0' + (rest % 10) as u8;
        n += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        out[at + i] = *d;
    }
    at + n
}

/// A valid answer from identd, borrowing from the bytes read.
///
/// Both kinds are complete answers: identd was reached and spoke the protocol. An `Error` means it
/// would not or could not vouch for the connection, which the server handshake refuses with 93.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentReply<'a> {
    /// `USERID`: the connection's owner.
    User {
        /// The operating system token, e.g. `UNIX` or `OTHER`.
        os: &'a str,
        /// The character set of `user` if identd named one (the default is `US-ASCII`).
        charset: Option<&'a str>,
        /// The user id: every octet after the colon that follows the operating system (colons
        /// included) up to the end of the line, without the spaces and tabs around it. 1 to
        /// [`MAX_USER_LEN`] octets, never NUL, CR or LF.
        ///
        /// (RFC 1413 counts spaces after that colon as part of the id, yet its own example and
        /// the common identds write `: UNIX : alice`; a SOCKS user id never starts or ends with a
        /// space that identd could confirm, so they are dropped.)
        user: &'a [u8],
    },
    /// `ERROR`: identd could not or would not say.
    Error {
        /// The error type.
        kind: ErrorKind,
        /// The error type's token as identd sent it (for [`ErrorKind::Other`], an `X…` token).
        token: &'a str,
    },
}

/// The error types of an identd `ERROR` answer.
///
/// ```
/// use socks4_core::ident::ErrorKind;
/// assert_eq!(ErrorKind::NoUser.to_string(), "NO-USER");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `INVALID-PORT`: identd did not understand the ports.
    InvalidPort,
    /// `NO-USER`: no such connection, or no identifiable owner.
    NoUser,
    /// `HIDDEN-USER`: the owner asked not to be named.
    HiddenUser,
    /// `UNKNOWN-ERROR`: anything else.
    UnknownError,
    /// A non-standard type (RFC 1413 has them start with `X`).
    Other,
}

impl ErrorKind {
    fn from_token(token: &str) -> Self {
        [Self::InvalidPort, Self::NoUser, Self::HiddenUser, Self::UnknownError]
            .into_iter()
            .find(|k| k.token().eq_ignore_ascii_case(token))
            .unwrap_or(Self::Other)
    }

    const fn token(self) -> &'static str {
        match self {
            Self::InvalidPort => "INVALID-PORT",
            Self::NoUser => "NO-USER",
            Self::HiddenUser => "HIDDEN-USER",
            Self::UnknownError => "UNKNOWN-ERROR",
            Self::Other => "non-standard error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Why identd's answer is not a valid reply to the query. Every variant is final: more bytes
/// cannot fix it. The server handshake treats all of them as "no answer" (92), through
/// `From<IdentError> for Failure` ([`Failure::BadAnswer`]).
///
/// ```
/// use socks4_core::ident::{parse_reply, IdentError, Query};
/// let err = parse_reply(b"6191, 23 : USERID : UNIX : root\r\n", &Query::new(6191, 1080));
/// assert_eq!(err, Err(IdentError::WrongPorts { client_port: 6191, server_port: 23 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentError {
    /// No end of line within the first [`MAX_REPLY_LEN`] bytes.
    LineTooLong,
    /// The line holds a NUL, or a CR that does not end it.
    BadByte(u8),
    /// The line does not start with two decimal ports, a comma between them, and a colon.
    BadPorts,
    /// The answer is about other ports than the query's (these).
    WrongPorts {
        /// The first port of the answer.
        client_port: u16,
        /// The second port of the answer.
        server_port: u16,
    },
    /// The response type is neither `USERID` nor `ERROR`.
    BadType,
    /// The operating system, character set or error type is missing or not a token (1 to
    /// [`MAX_TOKEN_LEN`] printable ASCII characters, no colon).
    BadToken,
    /// A `USERID` answer with no user id: no colon after the operating system, or nothing but
    /// white space after it.
    EmptyUser,
    /// A user id longer than [`MAX_USER_LEN`] octets.
    UserTooLong,
}

impl fmt::Display for IdentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "ident reply longer than {MAX_REPLY_LEN} bytes"),
            Self::BadByte(b) => write!(f, "ident reply holds byte 0x{b:02x}"),
            Self::BadPorts => f.write_str("ident reply does not start with a port pair"),
            Self::WrongPorts { client_port, server_port } => {
                write!(f, "ident reply is about ports {client_port}, {server_port}, not the query's")
            }
            Self::BadType => f.write_str("ident reply type is neither USERID nor ERROR"),
            Self::BadToken => f.write_str("ident reply has a missing or invalid token"),
            Self::EmptyUser => f.write_str("ident reply has an empty user id"),
            Self::UserTooLong => write!(f, "ident user id longer than {MAX_USER_LEN} octets"),
        }
    }
}

impl core::error::Error for IdentError {}

/// Any invalid answer is [`Failure::BadAnswer`]: for the handshake, identd gave no answer (92).
impl From<IdentError> for Failure {
    fn from(_: IdentError) -> Self {
        Failure::BadAnswer
    }
}

/// Parses identd's answer to `query` from the start of `buf`: the reply and the bytes its line
/// used (end of line included), or [`Status::Partial`] until the line ends.
///
/// The line ends with CRLF or a bare LF. A verdict comes only with the end of the line, or with
/// [`IdentError::LineTooLong`] once [`MAX_REPLY_LEN`] bytes hold none; every longer input keeps it.
/// Following RFC 1413, spaces and tabs are accepted around every field (not inside a token), the
/// keywords `USERID` and `ERROR` and the standard error types in any case, a charset after the
/// operating system (`UNIX , UTF-8`), and colons inside the user id. The ports must be the
/// query's, in its order. Nothing is allocated or copied.
///
/// ```
/// use socks4_core::ident::{parse_reply, ErrorKind, IdentReply, Query};
/// use socks4_core::Status;
/// let q = Query::new(6193, 23);
/// let Status::Complete((reply, used)) = parse_reply(b"6193, 23 : USERID : UNIX : stjohns\r\n", &q)? else { panic!() };
/// assert_eq!(reply, IdentReply::User { os: "UNIX", charset: None, user: b"stjohns" });
/// assert_eq!(used, 36);
/// let Status::Complete((reply, _)) = parse_reply(b"6193,23:USERID:OTHER,UTF-8:a:b:c\n", &q)? else { panic!() };
/// assert_eq!(reply, IdentReply::User { os: "OTHER", charset: Some("UTF-8"), user: b"a:b:c" });
/// let Status::Complete((reply, _)) = parse_reply(b"6193, 23 : ERROR : NO-USER\r\n", &q)? else { panic!() };
/// assert_eq!(reply, IdentReply::Error { kind: ErrorKind::NoUser, token: "NO-USER" });
/// assert_eq!(parse_reply(b"6193, 23 : USERID : UNIX : stjo", &q)?, Status::Partial);
/// # Ok::<(), socks4_core::ident::IdentError>(())
/// ```
///
/// # Errors
///
/// An [`IdentError`] as soon as the bytes cannot become a valid answer to `query`: no end of line
/// within [`MAX_REPLY_LEN`] bytes, a NUL or a stray CR, ports that are malformed or not the
/// query's, an unknown response type, a bad token or a missing user id. `Failure::from` turns it
/// into the handshake's [`Failure::BadAnswer`].
pub fn parse_reply<'a>(buf: &'a [u8], query: &Query) -> Result<Status<(IdentReply<'a>, usize)>, IdentError> {
    let window = &buf[..buf.len().min(MAX_REPLY_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_REPLY_LEN { Err(IdentError::LineTooLong) } else { Ok(Status::Partial) };
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(&b) = line.iter().find(|&&b| b == 0 || b == b'\r') {
        return Err(IdentError::BadByte(b));
    }
    parse_line(line, query).map(|reply| Status::Complete((reply, lf + 1)))
}

/// One line without its end: `ports : type : info`.
fn parse_line<'a>(line: &'a [u8], query: &Query) -> Result<IdentReply<'a>, IdentError> {
    let (ports, rest) = split_once(line, b':').ok_or(IdentError::BadPorts)?;
    let (client, server) = split_once(ports, b',').ok_or(IdentError::BadPorts)?;
    let (client_port, server_port) = (parse_port(client)?, parse_port(server)?);
    if (client_port, server_port) != (query.client_port, query.server_port) {
        return Err(IdentError::WrongPorts { client_port, server_port });
    }
    let (kind, info) = match split_once(rest, b':') {
        Some((kind, info)) => (trim(kind), Some(info)),
        None => (trim(rest), None),
    };
    if kind.eq_ignore_ascii_case(b"ERROR") {
        let token = token(info.ok_or(IdentError::BadToken)?)?;
        return Ok(IdentReply::Error { kind: ErrorKind::from_token(token), token });
    }
    if !kind.eq_ignore_ascii_case(b"USERID") {
        return Err(IdentError::BadType);
    }
    let (opsys, user) = split_once(info.ok_or(IdentError::BadToken)?, b':').ok_or(IdentError::EmptyUser)?;
    let (os, charset) = match split_once(opsys, b',') {
        Some((os, charset)) => (token(os)?, Some(token(charset)?)),
        None => (token(opsys)?, None),
    };
    let user = trim(user);
    if user.is_empty() {
        return Err(IdentError::EmptyUser);
    }
    if user.len() > MAX_USER_LEN {
        return Err(IdentError::UserTooLong);
    }
    Ok(IdentReply::User { os, charset, user })
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|&b| b == sep)?;
    Some((&s[..at], &s[at + 1..]))
}

/// Without the spaces and tabs around it (RFC 1413's white space).
fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// 1 to 5 decimal digits with white space around, at most 65535.
fn parse_port(s: &[u8]) -> Result<u16, IdentError> {
    let digits = trim(s);
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(IdentError::BadPorts);
    }
    let value = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| IdentError::BadPorts)
}

/// A token with white space around: 1 to 64 printable ASCII characters, no colon (split off
/// already) and no white space inside.
fn token(s: &[u8]) -> Result<&str, IdentError> {
    let t = trim(s);
    if t.is_empty() || t.len() > MAX_TOKEN_LEN || !t.iter().all(|&b| b.is_ascii_graphic() && b != b':') {
        return Err(IdentError::BadToken);
    }
    core::str::from_utf8(t).map_err(|_| IdentError::BadToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn parse(s: &[u8]) -> Result<Status<(IdentReply<'_>, usize)>, IdentError> {
        parse_reply(s, &Query::new(6191, 23))
    }

    fn user(s: &[u8]) -> Result<(&str, Option<&str>, &[u8]), IdentError> {
        match parse(s)? {
            Status::Complete((IdentReply::User { os, charset, user }, used)) => {
                assert_eq!(used, s.len(), "the whole line is used");
                Ok((os, charset, user))
            }
            other => panic!("not a user reply: {other:?}"),
        }
    }

    #[test]
    fn query_bytes_and_port_order() {
        assert_eq!(Query::new(6191, 23).as_bytes(), b"6191, 23\r\n");
        assert_eq!(Query::new(0, 0).as_bytes(), b"0, 0\r\n");
        assert_eq!(Query::new(65535, 65535).as_bytes(), b"65535, 65535\r\n");
        assert_eq!(Query::new(65535, 65535).as_bytes().len(), MAX_QUERY_LEN);
        assert_eq!(Query::new(10, 1080).as_bytes(), b"10, 1080\r\n");
        assert_eq!(format!("{:?}", Query::new(1, 2)), "Query { client_port: 1, server_port: 2 }");
        // The query's own ports parse back.
        for (c, s) in [(1, 65535), (40000, 1080), (9, 99)] {
            let q = Query::new(c, s);
            let line = q.as_bytes().strip_suffix(b"\r\n").unwrap();
            let mut reply = line.to_vec();
            reply.extend_from_slice(b":USERID:UNIX:u\r\n");
            assert!(matches!(parse_reply(&reply, &q), Ok(Status::Complete(_))));
        }
    }

    #[test]
    fn rfc_examples() {
        assert_eq!(user(b"6191, 23 : USERID : UNIX : stjohns\r\n"), Ok(("UNIX", None, &b"stjohns"[..])));
        assert_eq!(
            parse(b"6191, 23 : ERROR : NO-USER\r\n"),
            Ok(Status::Complete((IdentReply::Error { kind: ErrorKind::NoUser, token: "NO-USER" }, 28)))
        );
    }

    #[test]
    fn error_types() {
        for (token, kind) in [
            ("INVALID-PORT", ErrorKind::InvalidPort),
            ("NO-USER", ErrorKind::NoUser),
            ("HIDDEN-USER", ErrorKind::HiddenUser),
            ("UNKNOWN-ERROR", ErrorKind::UnknownError),
            ("unknown-error", ErrorKind::UnknownError),
            ("X-LOCAL-POLICY", ErrorKind::Other),
        ] {
            let line = format!("6191,23:ERROR:{token}\r\n");
            let Ok(Status::Complete((reply, _))) = parse(line.as_bytes()) else { panic!("{line}") };
            assert_eq!(reply, IdentReply::Error { kind, token });
        }
        assert_eq!(parse(b"6191,23:error: \tNO-USER \t\r\n").map(|s| matches!(s, Status::Complete(_))), Ok(true));
        assert_eq!(parse(b"6191,23:ERROR\r\n"), Err(IdentError::BadToken), "no error type");
        assert_eq!(parse(b"6191,23:ERROR:\r\n"), Err(IdentError::BadToken));
        assert_eq!(parse(b"6191,23:ERROR:NO USER\r\n"), Err(IdentError::BadToken), "space inside a token");
        assert_eq!(parse(b"6191,23:ERROR:NO-USER:more\r\n"), Err(IdentError::BadToken), "colon in a token");
        let long = format!("6191,23:ERROR:X{}\r\n", "Y".repeat(64));
        assert_eq!(parse(long.as_bytes()), Err(IdentError::BadToken), "65-character token");
        let max = format!("6191,23:ERROR:X{}\r\n", "Y".repeat(63));
        assert!(matches!(parse(max.as_bytes()), Ok(Status::Complete(_))), "64-character token");
    }

    #[test]
    fn white_space_case_and_line_ends() {
        let expect = Ok(("UNIX", None, &b"alice"[..]));
        assert_eq!(user(b"6191,23:USERID:UNIX:alice\r\n"), expect);
        assert_eq!(user(b"6191,23:USERID:UNIX:alice\n"), expect, "LF alone ends the line");
        assert_eq!(user(b" \t6191 \t, \t23 \t: \tUSERID \t: \tUNIX \t: \talice \t\r\n"), expect);
        assert_eq!(user(b"6191, 23 : userid : UNIX : alice  \r\n"), expect, "trailing spaces are not the user's");
        assert_eq!(user(b"06191, 0023 : USERID : UNIX : alice\r\n"), expect, "leading zeros");
        assert_eq!(user(b"6191,23:USERID:UNIX , UTF-8 :alice\r\n"), Ok(("UNIX", Some("UTF-8"), &b"alice"[..])));
        assert_eq!(user(b"6191,23:USERID:OTHER:a b\tc\r\n"), Ok(("OTHER", None, &b"a b\tc"[..])), "inner space");
    }

    #[test]
    fn user_id_contents() {
        assert_eq!(user(b"6191,23:USERID:UNIX:dom:ain:user\r\n"), Ok(("UNIX", None, &b"dom:ain:user"[..])));
        assert_eq!(user(b"6191,23:USERID:UNIX:::\r\n"), Ok(("UNIX", None, &b"::"[..])));
        assert_eq!(user(b"6191,23:USERID:OTHER:\xff\xfe\x01\r\n"), Ok(("OTHER", None, &b"\xff\xfe\x01"[..])));
        assert_eq!(parse(b"6191,23:USERID:UNIX:\r\n"), Err(IdentError::EmptyUser));
        assert_eq!(parse(b"6191,23:USERID:UNIX:  \t\r\n"), Err(IdentError::EmptyUser));
        assert_eq!(parse(b"6191,23:USERID:UNIX\r\n"), Err(IdentError::EmptyUser), "no third colon");
        assert_eq!(parse(b"6191,23:USERID\r\n"), Err(IdentError::BadToken), "no operating system");
        assert_eq!(parse(b"6191,23:USERID::alice\r\n"), Err(IdentError::BadToken), "empty operating system");
        assert_eq!(parse(b"6191,23:USERID:UNIX,:alice\r\n"), Err(IdentError::BadToken), "empty charset");
        assert_eq!(parse(b"6191,23:USERID:UN IX:alice\r\n"), Err(IdentError::BadToken));
        let max = [b'u'; MAX_USER_LEN];
        let mut line = b"6191,23:USERID:UNIX:".to_vec();
        line.extend_from_slice(&max);
        line.extend_from_slice(b"\r\n");
        assert_eq!(user(&line), Ok(("UNIX", None, &max[..])));
        line.insert(22, b'u');
        assert_eq!(parse(&line), Err(IdentError::UserTooLong));
    }

    #[test]
    fn ports_are_checked() {
        let wrong = |c, s| Err(IdentError::WrongPorts { client_port: c, server_port: s });
        assert_eq!(parse(b"23, 6191 : USERID : UNIX : root\r\n"), wrong(23, 6191), "swapped");
        assert_eq!(parse(b"6191, 24 : USERID : UNIX : root\r\n"), wrong(6191, 24));
        assert_eq!(parse(b"6192, 23 : ERROR : NO-USER\r\n"), wrong(6192, 23));
        for bad in [
            &b"6191 23 : USERID : UNIX : root\r\n"[..],
            b"6191, : USERID : UNIX : root\r\n",
            b", 23 : USERID : UNIX : root\r\n",
            b"6191, 23, 5 : USERID : UNIX : root\r\n",
            b"6191, 65536 : USERID : UNIX : root\r\n",
            b"6191, 000023 : USERID : UNIX : root\r\n",
            b"6191, 2 3 : USERID : UNIX : root\r\n",
            b"-6191, 23 : USERID : UNIX : root\r\n",
            b"6191, 23\r\n",
            b"\r\n",
            b"HTTP/1.1 400 Bad Request\r\n",
        ] {
            assert_eq!(parse(bad), Err(IdentError::BadPorts), "{:?}", std::string::String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn types_bytes_and_lengths() {
        assert_eq!(parse(b"6191, 23 : USER : UNIX : root\r\n"), Err(IdentError::BadType));
        assert_eq!(parse(b"6191, 23 : \r\n"), Err(IdentError::BadType));
        assert_eq!(parse(b"6191, 23 :\r\n"), Err(IdentError::BadType));
        assert_eq!(parse(b"6191, 23 : USERID : UNIX : ro\0ot\r\n"), Err(IdentError::BadByte(0)));
        assert_eq!(parse(b"6191, 23 : USERID : UNIX : ro\rot\r\n"), Err(IdentError::BadByte(b'\r')));
        assert_eq!(parse(b"6191, 23 : USERID : UNIX : root\r\r\n"), Err(IdentError::BadByte(b'\r')));
        // Partial until the end of line, for any prefix.
        let line = b"6191, 23 : USERID : UNIX : root\r\n";
        for end in 0..line.len() {
            assert_eq!(parse(&line[..end]), Ok(Status::Partial), "prefix {end}");
        }
        // Bytes after the line are not consumed.
        let Ok(Status::Complete((_, used))) = parse(b"6191,23:ERROR:NO-USER\r\nnext") else { panic!() };
        assert_eq!(used, 23);
        // The cap: an end of line as the 1000th byte still counts; none in 1000 bytes is an error.
        let mut long = b"6191,23:USERID:OTHER:".to_vec();
        long.resize(MAX_REPLY_LEN - 1, b' ');
        long[30] = b'x';
        assert_eq!(parse(&long), Ok(Status::Partial));
        long.push(b'\n');
        assert_eq!(user(&long), Ok(("OTHER", None, &b"x"[..])));
        long.pop();
        long.push(b' ');
        assert_eq!(parse(&long), Err(IdentError::LineTooLong));
        long.push(b'\n');
        assert_eq!(parse(&long), Err(IdentError::LineTooLong), "longer inputs keep the verdict");
        assert_eq!(parse(&[b'x'; 5000]), Err(IdentError::LineTooLong));
    }

    #[test]
    fn displays_and_failure() {
        let errors = [
            IdentError::LineTooLong,
            IdentError::BadByte(0),
            IdentError::BadPorts,
            IdentError::WrongPorts { client_port: 1, server_port: 2 },
            IdentError::BadType,
            IdentError::BadToken,
            IdentError::EmptyUser,
            IdentError::UserTooLong,
        ];
        let texts: Vec<_> = errors.iter().map(|e| format!("{e}")).collect();
        assert!(texts.iter().all(|t| t.starts_with("ident ")), "{texts:?}");
        assert_eq!(texts[3], "ident reply is about ports 1, 2, not the query's");
        assert!(errors.iter().all(|&e| Failure::from(e) == Failure::BadAnswer));
        assert_eq!(format!("{}", ErrorKind::HiddenUser), "HIDDEN-USER");
        assert_eq!(format!("{}", ErrorKind::Other), "non-standard error");
    }
}
