//! The client cases: what a SOCKS4/4a client must send, and how it must take each kind of reply
//! and tunnel.
//!
//! Every case runs the client once. Cases named `request_*` judge the request's exact bytes; the
//! others read it leniently (anything after it is kept as tunnel data) and judge how the client
//! handles the proxy's answer. "Prints the page" means: exits 0 with the page's body (a line with
//! a token unique to the run and case) in its stdout; "fails" means: exits non-zero, and sends
//! nothing after the reply that refused it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::conn::{self, After, Conn};
use super::process::{Exit, Running};
use super::request::{self, Expected, Request};
use super::{Checker, Config, NAMED_USER, Vars, Verdict, host_addrs, show};
use crate::scenarios::Failure;
use crate::wire;

/// How long the checker watches a refused client for bytes or a close.
const WATCH: Duration = Duration::from_secs(2);
/// The port of BIND's first reply (nobody listens there: the checker plays the peer too).
const BIND_PORT: u16 = 45_520;
/// The address of BIND's first reply when it names one (distinct from the proxy's 127.0.0.1).
const BIND_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The user id a case tells the client to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The configured one ([`Config::user`]).
    Default,
    /// This one.
    Fixed(&'static str),
    /// `n` bytes of `u`.
    Long(usize),
}

/// One named client case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// A stable `snake_case` name.
    pub name: &'static str,
    /// The user id the client is told to send.
    pub user: User,
    /// Whether it is a BIND case (run with the BIND command).
    pub bind: bool,
    /// Whether the destination is [`long_host`] rather than the configured host.
    pub long_host: bool,
    /// Why the case cannot run with this configuration, if it cannot.
    pub needs: fn(&Config) -> Option<String>,
    /// Runs the case.
    pub run: fn(&mut Session<'_>) -> Result<Verdict, Failure>,
}

fn always(_: &Config) -> Option<String> {
    None
}

fn needs_4a(c: &Config) -> Option<String> {
    (!c.require_4a).then(|| "needs a SOCKS4a client (--4a): the long name does not resolve here".to_owned())
}

/// A 253-byte host name (the longest a DNS name can be), in the reserved `.test` domain: with a
/// 255-byte user id, a 518-byte request.
pub fn long_host() -> String {
    format!("{}.{}.{}.{}.test", "a".repeat(61), "b".repeat(61), "c".repeat(61), "d".repeat(62))
}

fn needs_timeout(c: &Config) -> Option<String> {
    c.client_timeout.is_none().then(|| "the client's timeout is unknown (--client-timeout)".to_owned())
}

const fn case(name: &'static str, run: fn(&mut Session<'_>) -> Result<Verdict, Failure>) -> Case {
    Case { name, user: User::Default, bind: false, long_host: false, needs: always, run }
}

static ALL: &[Case] = &[
    Case { user: User::Fixed(""), ..case("request_empty_user_id", request_exact) },
    Case { user: User::Fixed(NAMED_USER), ..case("request_user_id", request_exact) },
    Case { user: User::Long(255), ..case("request_user_id_255", request_exact) },
    Case { user: User::Long(255), long_host: true, needs: needs_4a, ..case("request_long_host", request_exact) },
    case("reply_split_every_byte", reply_split_every_byte),
    case("reply_with_payload", reply_with_payload),
    case("reply_rejected_91", |s| rejected(s, 91)),
    case("reply_rejected_92", |s| rejected(s, 92)),
    case("reply_rejected_93", |s| rejected(s, 93)),
    case("reply_version_4", reply_version_4),
    case("proxy_closes_before_reply", proxy_closes_before_reply),
    case("proxy_closes_after_4_bytes", proxy_closes_after_4_bytes),
    case("slow_reply", slow_reply),
    Case { needs: needs_timeout, ..case("slow_reply_past_timeout", slow_reply_past_timeout) },
    case("tunnel_large_page", tunnel_large_page),
    case("tunnel_half_close", tunnel_half_close),
    case("tunnel_reset", tunnel_reset),
    Case { bind: true, ..case("bind_two_replies", |s| bind(s, BIND_ADDR, 90)) },
    Case { bind: true, ..case("bind_unspecified_address", |s| bind(s, Ipv4Addr::UNSPECIFIED, 90)) },
    Case { bind: true, ..case("bind_second_reply_rejected", |s| bind(s, BIND_ADDR, 91)) },
];

/// Every case, in order.
pub fn all() -> &'static [Case] {
    ALL
}

/// The case called `name`.
pub fn find(name: &str) -> Option<&'static Case> {
    ALL.iter().find(|c| c.name == name)
}

/// One case's run: the client (if a command drives it) and the values it was given.
#[derive(Debug)]
pub struct Session<'a> {
    checker: &'a Checker,
    /// The placeholders' values.
    pub vars: Vars,
    client: Option<Running>,
    exit: Option<Exit>,
}

impl<'a> Session<'a> {
    /// Starts the client with `command` filled in, or (no command) asks for one on stderr.
    pub(crate) fn start(checker: &'a Checker, vars: Vars, command: Option<&str>) -> Result<Self, Failure> {
        let client = match command {
            Some(template) => {
                let filled = vars.fill(template);
                Some(
                    Running::spawn(&filled, vars.case)
                        .map_err(|e| Failure::new(format!("starting {filled:?}: {e}")))?,
                )
            }
            None => {
                eprintln!(
                    "{}: connect a client to {} for {}:{} (page {}), user id {:?}",
                    vars.case, vars.proxy, vars.host, vars.port, vars.path, vars.user
                );
                None
            }
        };
        Ok(Session { checker, vars, client, exit: None })
    }

    fn config(&self) -> &Config {
        self.checker.config()
    }

    /// Accepts the client's connection and reads its request.
    fn connect(&mut self) -> Result<(Conn, Request), Failure> {
        let client = &mut self.client;
        let stream = self.checker.accept(|| client.as_mut().is_some_and(Running::exited))?;
        let mut conn = Conn::new(stream);
        let req = conn.request(self.config().client_limit)?;
        Ok((conn, req))
    }

    /// The client's exit (waiting for it up to the client limit); `None` in wait mode.
    fn exit(&mut self) -> Option<&Exit> {
        if self.exit.is_none() {
            let limit = self.config().client_limit;
            self.exit = self.client.take().map(|c| c.finish(limit));
        }
        self.exit.as_ref()
    }

    /// Ends the case: waits for the client, and adds how it ended to a failure.
    pub(crate) fn finish(&mut self, result: Result<Verdict, Failure>) -> Result<Verdict, Failure> {
        match (result, self.exit()) {
            (Err(f), Some(exit)) if !f.message().contains(&exit.describe()) => {
                Err(Failure::new(format!("{f} (the client {})", exit.describe())))
            }
            (r, _) => r,
        }
    }

    fn body(&self) -> Vec<u8> {
        format!("socks4-check page {}\n", self.vars.token).into_bytes()
    }

    /// Serves `body` through the tunnel: reads the client's HTTP request, sends the page, closes.
    fn serve(&self, conn: &mut Conn, body: &[u8], length: bool) -> Result<(), Failure> {
        conn.http_request(&self.vars.path)?;
        conn.send(&conn::page(body, length))
    }

    /// The client must have printed `body` and exited 0.
    fn expect_page(&mut self, body: &[u8]) -> Result<Verdict, Failure> {
        let Some(exit) = self.exit() else { return Ok(Verdict::Pass) };
        if exit.success() && contains(&exit.stdout, body) {
            return Ok(Verdict::Pass);
        }
        let printed = if contains(&exit.stdout, body) {
            "printed the page".to_owned()
        } else {
            format!("printed {} bytes without the page {}", exit.stdout.len(), show(&body[..body.len().min(60)]))
        };
        Err(Failure::new(format!("expected the page and exit 0; the client {printed} and {}", exit.describe())))
    }

    /// The client must have sent nothing after `what` and exited non-zero.
    fn expect_failure(&mut self, after: &After, what: &str) -> Result<Verdict, Failure> {
        if !after.bytes.is_empty() {
            return Err(Failure::new(format!(
                "the client sent {} bytes after {what}: {}",
                after.bytes.len(),
                show(&after.bytes)
            )));
        }
        let Some(exit) = self.exit() else { return Ok(Verdict::Pass) };
        match exit.status {
            Some(s) if !s.success() => Ok(Verdict::Pass),
            _ => Err(Failure::new(format!("expected an error after {what}; the client {}", exit.describe()))),
        }
    }

    fn expected<'r>(&'r self, command: u8, addrs: &'r [Ipv4Addr]) -> Expected<'r> {
        Expected {
            command,
            host: &self.vars.host,
            addrs,
            port: self.vars.port,
            user: self.vars.user.as_bytes(),
            require_4a: self.config().require_4a,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The request's exact bytes (user id, one NUL, the 4a form, nothing after it); then the page.
fn request_exact(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let (mut conn, req) = s.connect()?;
    let addrs = host_addrs(&s.vars.host);
    let judged = request::judge(&req, &s.expected(wire::CMD_CONNECT, &addrs));
    conn.send(&conn::granted())?;
    let body = s.body();
    let served = s.serve(&mut conn, &body, true);
    conn.close_after(s.config().client_limit);
    judged?;
    served?;
    s.expect_page(&body)
}

/// Lenient request reading for the reply and tunnel cases: only the command is checked.
fn connect_cmd(s: &mut Session<'_>, command: u8) -> Result<Conn, Failure> {
    let (conn, req) = s.connect()?;
    if req.command != command {
        return Err(Failure::new(format!("expected CD {command}, the client sent {}", show(&req.bytes))));
    }
    Ok(conn)
}

fn fetch_with(s: &mut Session<'_>, answer: impl FnOnce(&mut Conn) -> Result<(), Failure>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    answer(&mut conn)?;
    let body = s.body();
    let served = s.serve(&mut conn, &body, true);
    conn.close_after(s.config().client_limit);
    served?;
    s.expect_page(&body)
}

/// The reply in 8 segments, 30 ms apart: the client must reassemble it.
fn reply_split_every_byte(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    fetch_with(s, |c| c.send_bytewise(&conn::granted(), Duration::from_millis(30)))
}

/// The reply and the whole page in one segment, before the client's own request: the client must
/// keep the bytes that came with the reply.
fn reply_with_payload(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    let body = s.body();
    let mut both = conn::granted().to_vec();
    both.extend_from_slice(&conn::page(&body, true));
    conn.send(&both)?;
    // The client may still send its request; read it so that closing does not reset.
    let _ = conn.http_request(&s.vars.path);
    conn.close_after(s.config().client_limit);
    s.expect_page(&body)
}

/// A refusal: the client must fail and send nothing more.
fn rejected(s: &mut Session<'_>, code: u8) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::reply(0, code, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
    let after = conn.watch(WATCH);
    conn.close();
    s.expect_failure(&after, &format!("reply {code}"))
}

/// A reply whose version byte is 4 (some servers send it): clients differ; reported, not judged.
fn reply_version_4(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::reply(4, 90, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
    let body = s.body();
    let served = s.serve(&mut conn, &body, true);
    conn.close_after(WATCH);
    let what = match (served, s.exit()) {
        (Ok(()), Some(e)) if e.success() && contains(&e.stdout, &body) => "accepted (printed the page)".to_owned(),
        (Ok(()), Some(e)) => format!("went on to send its request, but {}", e.describe()),
        (Ok(()), None) => "accepted (went on to send its request)".to_owned(),
        (Err(_), Some(e)) => format!("refused (sent no request; it {})", e.describe()),
        (Err(_), None) => "refused (sent no request)".to_owned(),
    };
    Ok(Verdict::Info(what))
}

/// The proxy closes without replying: the client must fail.
fn proxy_closes_before_reply(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.close();
    s.expect_failure(&After::default(), "the proxy closed before replying")
}

/// Half a reply, then a close: the client must fail (4 bytes are not a reply).
fn proxy_closes_after_4_bytes(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::granted()[..4])?;
    let after = conn.close_after(WATCH);
    s.expect_failure(&after, "4 bytes of a reply and a close")
}

/// The reply comes late (1 s, or a third of the client's timeout if that is shorter, leaving room
/// for the client's start and the checker's listening for trailing bytes): the client must wait for it.
fn slow_reply(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let delay = s.config().client_timeout.map_or(Duration::from_secs(1), |t| (t / 3).min(Duration::from_secs(1)));
    fetch_with(s, |c| {
        std::thread::sleep(delay);
        c.send(&conn::granted())
    })
}

/// No reply within the client's timeout: the client must give up (close and fail) by then.
fn slow_reply_past_timeout(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let timeout = s.config().client_timeout.unwrap_or(Duration::from_secs(1));
    let grace = (timeout / 2).max(Duration::from_millis(500));
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    let after = conn.watch(timeout + grace);
    conn.close();
    if !after.closed {
        return Err(Failure::new(format!(
            "the client still waited for the reply {:?} after its request (its timeout: {timeout:?})",
            timeout + grace
        )));
    }
    s.expect_failure(&after, "no reply")
}

/// A 1 MiB page: every byte must arrive, in order.
fn tunnel_large_page(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::granted())?;
    let mut body = Vec::with_capacity(1 << 20);
    let mut line = 0u32;
    while body.len() < (1 << 20) {
        body.extend_from_slice(format!("socks4-check {} line {line:06}\n", s.vars.token).as_bytes());
        line += 1;
    }
    let served = s.serve(&mut conn, &body, true);
    conn.close_after(s.config().client_limit);
    served?;
    s.expect_page(&body)
}

/// A page with no length, ended by the proxy's FIN while it still reads: the client must take
/// the end of the stream as the end of the page and exit 0.
fn tunnel_half_close(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::granted())?;
    let body = s.body();
    let served = s.serve(&mut conn, &body, false);
    conn.close_after(s.config().client_limit);
    served?;
    s.expect_page(&body)
}

/// Part of a page with no length, then a reset: the client must report an error, not a page.
fn tunnel_reset(s: &mut Session<'_>) -> Result<Verdict, Failure> {
    let mut conn = connect_cmd(s, wire::CMD_CONNECT)?;
    conn.send(&conn::granted())?;
    conn.http_request(&s.vars.path)?;
    let head = conn::page(&s.body(), false);
    conn.send(&head)?;
    std::thread::sleep(Duration::from_millis(50));
    conn.reset();
    let Some(exit) = s.exit() else { return Ok(Verdict::Pass) };
    if exit.success() {
        return Err(Failure::new(format!(
            "expected an error after the tunnel was reset; the client {} (stdout {} bytes)",
            exit.describe(),
            exit.stdout.len()
        )));
    }
    Ok(Verdict::Pass)
}

/// BIND: a first reply listening on `listen` (`0.0.0.0`: "the proxy's address"), then a second
/// reply `second` naming the peer and (if 90) data from the peer. The BIND command must print the
/// address the peer should connect to, then the peer's data.
fn bind(s: &mut Session<'_>, listen: Ipv4Addr, second: u8) -> Result<Verdict, Failure> {
    let (mut conn, req) = s.connect()?;
    let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, s.vars.port);
    let addrs = [Ipv4Addr::LOCALHOST];
    let judged = request::judge(&req, &s.expected(wire::CMD_BIND, &addrs));
    conn.send(&conn::reply(0, 90, SocketAddrV4::new(listen, BIND_PORT)))?;
    std::thread::sleep(Duration::from_millis(100));
    conn.send(&conn::reply(0, second, peer))?;
    let body = s.body();
    if second == 90 {
        conn.send(&body)?;
    }
    let after = conn.close_after(s.config().client_limit);
    judged?;
    if second != 90 {
        return s.expect_failure(&after, &format!("a second reply {second}"));
    }
    let listen_shown = if listen.is_unspecified() { s.vars.proxy.ip().to_string() } else { listen.to_string() };
    let want = format!("{listen_shown}:{BIND_PORT}");
    let verdict = s.expect_page(&body)?;
    if let Some(exit) = s.exit() {
        if !contains(&exit.stdout, want.as_bytes()) {
            return Err(Failure::new(format!(
                "the client did not print the peer's address to use, {want} (its stdout: {})",
                show(&exit.stdout)
            )));
        }
    }
    Ok(verdict)
}
