//! The one log line every adapter writes per connection, in one format:
//!
//! ```text
//! conn client=127.0.0.1:50522 cmd=CONNECT dest=example.com:80 user=alice result=ok up=78 down=1256 ms=41 worker=2 reply=90 out=203.0.113.7
//! ```
//!
//! `out` is the source address the outgoing connection (to the destination, or to the parent
//! proxy) left from: the one `--outgoing` or the rule's `out` chose, else the system's.
//!
//! A missing field prints as `-` (`reply=-`: no reply was sent, e.g. the client left first). With
//! `--log-format json` ([`LogFormat::Json`]) every log event is one JSON object, and the connection's
//! has the same fields (a missing one is left out; numbers are numbers):
//!
//! ```text
//! {"timestamp":"…","level":"INFO","message":"conn","client":"127.0.0.1:50522","cmd":"CONNECT","dest":"example.com:80","user":"alice","result":"ok","up":78,"down":1256,"ms":41,"worker":2,"reply":90,"out":"203.0.113.7","target":"socks4_server::log"}
//! ```
//! The user id is the only peer-chosen free text, so bytes outside
//! printable ASCII, spaces, `\` and `=` are escaped as `\xNN`: a client cannot forge fields or lines.
//! A user id `NAME:SECRET` (the [`users`](crate::users) token form; the rules are in [`user_id`](crate::user_id), and what clients put there for
//! `user:password`) prints as `NAME:***`: secrets stay out of logs.

use std::fmt::{self, Display};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socks4_core::{Dest, Limits, ReplyCode, Request, ServerHandshake, Status, parse_request};

pub use crate::user_id::UserId;

/// How log events are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per event; a connection's has one field per field of the text line.
    Json,
}

/// Whether [`ConnLine::log`] writes structured fields (JSON) rather than the text line.
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets how [`ConnLine::log`] writes, for the whole process (the subscriber must match: see
/// [`cli::main`](crate::cli::main)).
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// The result of a connection still open when the shutdown grace period ended, on every adapter.
/// (A relay's own end is a [`RelayEnd`](socks4_core::RelayEnd), a handshake's a
/// [`CloseReason`](socks4_core::CloseReason).)
pub const SHUTDOWN: &str = "server shutdown";

/// One connection's log line; format it with `Display` (only when the log level wants it).
///
/// ```
/// use core::time::Duration;
/// use socks4_core::{parse_request, Limits, Status};
/// use socks4_server::log::ConnLine;
/// let Status::Complete((req, _)) = parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01bob\0example.com\0", &Limits::default())? else { panic!() };
/// let line = ConnLine {
///     client: "127.0.0.1:50522".parse().unwrap(),
///     request: Some(req),
///     result: &"ok",
///     up: 78,
///     down: 1256,
///     elapsed: Duration::from_millis(41),
///     worker: Some(2),
///     reply: Some(socks4_core::ReplyCode::Granted),
///     users_file: false,
///     out: Some([203, 0, 113, 7].into()),
/// };
/// assert_eq!(line.to_string(), "conn client=127.0.0.1:50522 cmd=CONNECT dest=example.com:80 user=bob result=ok up=78 down=1256 ms=41 worker=2 reply=90 out=203.0.113.7");
/// # Ok::<(), socks4_core::ParseError>(())
/// ```
pub struct ConnLine<'a> {
    /// The client's address.
    pub client: SocketAddr,
    /// The request, if one arrived whole.
    pub request: Option<Request<'a>>,
    /// How the connection ended: a relay's [`RelayEnd`](socks4_core::RelayEnd) (`ok`, `idle timeout`,
    /// `client reset`, …), a handshake's [`CloseReason`](socks4_core::CloseReason), [`SHUTDOWN`], or
    /// an error.
    pub result: &'a dyn Display,
    /// Bytes relayed client → destination.
    pub up: u64,
    /// Bytes relayed destination → client.
    pub down: u64,
    /// Time since accept.
    pub elapsed: Duration,
    /// The worker that served it.
    pub worker: Option<usize>,
    /// The last reply sent, if any.
    pub reply: Option<ReplyCode>,
    /// The server checks user ids against a users file: a malformed user id (perhaps a bare
    /// token) is then shown as its length only, `user=malformed(len=N)`.
    pub users_file: bool,
    /// The source address of the outgoing connection (CONNECT, directly or to the parent), once
    /// connected.
    pub out: Option<IpAddr>,
}

/// Prints an optional value, or `-`.
struct OrDash<T>(Option<T>);

impl<T: Display> Display for OrDash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A request's destination, `host:port`.
struct DestText<'a>(&'a Request<'a>);

impl Display for DestText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.dest {
            Dest::Ip(ip) => write!(f, "{ip}:{}", self.0.port),
            Dest::Domain(host) => write!(f, "{host}:{}", self.0.port),
        }
    }
}

/// A request's user for the log: the name escaped, `:***` for a secret after a colon. Under a
/// users file (the `bool`), a malformed user id (perhaps a bare token) shows only its length.
struct UserText<'a>(&'a [u8], bool);

impl Display for UserText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 && crate::user_id::split_user_id(self.0).is_none() {
            return crate::users::LoggedUser(self.0).fmt(f);
        }
        let name = crate::user_id::user_name(self.0);
        UserId(name).fmt(f)?;
        if name.len() < self.0.len() {
            f.write_str(":***")?;
        }
        Ok(())
    }
}

impl ConnLine<'_> {
    /// Writes the line at info level: as text (its `Display`), or, after
    /// [`set_format(LogFormat::Json)`](set_format), as an event with one field per field.
    pub fn log(&self) {
        if !JSON.load(Ordering::Relaxed) {
            return tracing::info!("{self}");
        }
        let req = self.request.as_ref();
        tracing::info!(
            client = %self.client,
            cmd = req.map(|r| tracing::field::display(r.command)),
            dest = req.map(|r| tracing::field::display(DestText(r))),
            user = req.filter(|r| !r.user_id.is_empty()).map(|r| tracing::field::display(UserText(r.user_id, self.users_file))),
            result = %self.result,
            up = self.up,
            down = self.down,
            ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            worker = self.worker.map(|w| w as u64),
            reply = self.reply.map(|r| u64::from(r.code())),
            out = self.out.map(tracing::field::display),
            "conn"
        );
    }
}

impl Display for ConnLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn client={} ", self.client)?;
        match &self.request {
            Some(req) => {
                write!(f, "cmd={} dest={} user={}", req.command, DestText(req), UserText(req.user_id, self.users_file))?
            }
            None => f.write_str("cmd=- dest=- user=-")?,
        }
        write!(f, " result={} up={} down={} ms={}", self.result, self.up, self.down, self.elapsed.as_millis())?;
        write!(f, " worker={} reply={}", OrDash(self.worker), OrDash(self.reply.map(ReplyCode::code)))?;
        write!(f, " out={}", OrDash(self.out))
    }
}

/// A copy of a request's bytes, to log the request after its handshake is gone.
///
/// ```
/// use core::time::Duration;
/// use socks4_core::{Limits, ServerHandshake, Timeouts};
/// use socks4_server::log::RequestCopy;
/// let mut hs = ServerHandshake::new(Duration::ZERO, Limits::default(), Timeouts::default());
/// let mut copy = RequestCopy::default();
/// copy.note(&hs); // nothing yet
/// hs.handle_input(Duration::ZERO, b"\x04\x01\x00\x50\x7f\x00\x00\x01bob\0");
/// copy.note(&hs);
/// drop(hs);
/// assert_eq!(copy.request().map(|r| r.user_id), Some(&b"bob"[..]));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestCopy(Vec<u8>);

impl RequestCopy {
    /// Copies the handshake's request once it is complete; later calls change nothing.
    pub fn note(&mut self, hs: &ServerHandshake) {
        if self.0.is_empty() {
            self.0.extend_from_slice(hs.request_bytes());
        }
    }

    /// The noted request, if any.
    pub fn request(&self) -> Option<Request<'_>> {
        match parse_request(&self.0, &Limits::default()) {
            Ok(Status::Complete((req, _))) => Some(req),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_without_request_and_escaped_user() {
        let line = ConnLine {
            client: "[::1]:9".parse().unwrap(),
            request: None,
            result: &"handshake timed out",
            up: 0,
            down: 0,
            elapsed: Duration::from_secs(1),
            worker: None,
            reply: None,
            users_file: false,
            out: None,
        };
        assert_eq!(
            line.to_string(),
            "conn client=[::1]:9 cmd=- dest=- user=- result=handshake timed out up=0 down=0 ms=1000 worker=- reply=- out=-"
        );
        assert_eq!(UserId(b"\\\xff").to_string(), "\\x5c\\xff");
    }

    #[test]
    fn secrets_after_a_colon_are_not_logged() {
        let Ok(Status::Complete((req, _))) =
            parse_request(b"\x04\x01\x00\x50\x7f\x00\x00\x01alice:s3cret\0", &Limits::default())
        else {
            panic!()
        };
        let line = ConnLine {
            client: "127.0.0.1:9".parse().unwrap(),
            request: Some(req),
            result: &"ok",
            up: 0,
            down: 0,
            elapsed: Duration::ZERO,
            worker: Some(0),
            reply: Some(ReplyCode::Rejected),
            users_file: false,
            out: None,
        };
        let text = line.to_string();
        assert!(text.contains(" user=alice:*** ") && !text.contains("s3cret"), "{text}");
        // Under a users file, a user id that is not NAME:TOKEN shows only its length.
        for (id, shown) in
            [(&b"s3cret-bare-token"[..], "user=malformed(len=17) "), (b"s3cret:", "user=malformed(len=7) ")]
        {
            let mut bytes = b"\x04\x01\x00\x50\x7f\x00\x00\x01".to_vec();
            bytes.extend_from_slice(id);
            bytes.push(0);
            let Ok(Status::Complete((req, _))) = parse_request(&bytes, &Limits::default()) else { panic!() };
            let users = ConnLine { request: Some(req), users_file: true, ..line };
            let text = users.to_string();
            assert!(text.contains(shown) && !text.contains("s3cret"), "{text}");
            let plain = ConnLine { request: Some(req), users_file: false, ..users };
            assert!(plain.to_string().contains("s3cret"), "without a users file the user id is a name");
        }
    }
}
