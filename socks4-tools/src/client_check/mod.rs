//! `socks4-check --client`: judges a SOCKS4/4a *client* by playing its proxy and its destination.
//!
//! The checker listens as a SOCKS4 server on loopback and, for every [case](cases), runs the
//! client once (a shell command with placeholders filled in, see [`Vars`]) or waits for one to
//! connect. It reads the request, answers as the case scripts it (split replies, rejections,
//! early closes, slow replies, BIND's two replies) and then serves a page of its own through the
//! fake tunnel, with no real destination: it knows the exact bytes the client should print.
//! A case is judged on the wire (the request's bytes, anything sent after a rejection, whether
//! the client gave up) and, with a command, on the client's exit status and what it printed.
//!
//! - [`request`]: reading and strictly judging the request bytes.
//! - [`conn`]: the proxy's side of one client connection (replies, the page, closes).
//! - [`process`]: running the client command with a time limit, capturing its output.
//! - [`cases`]: the named cases.
//! - [`fixture`]: a reference client with the known bugs of real clients as modes, for the
//!   checker's own self-test (`socks4-bad-client`).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Summary;
use crate::scenarios::Failure;

pub mod cases;
pub mod conn;
pub mod fixture;
pub mod process;
pub mod request;

pub use cases::{Case, all, find};

/// The user id the `request_user_id` case tells the client to send.
pub const NAMED_USER: &str = "socks4check";

/// How the checker is set up for one client.
#[derive(Debug, Clone)]
pub struct Config {
    /// The client command (run with `sh -c` once per case, placeholders filled in); `None`: wait
    /// for a client to connect for every case and judge only what is seen on the wire.
    pub command: Option<String>,
    /// The command for the BIND cases (its `{host}:{port}` is the peer to expect); `None`: skip them.
    pub bind_command: Option<String>,
    /// The destination host given to the client (`{host}`); a name or an IPv4 address.
    pub host: String,
    /// Require the SOCKS4a form (the host name sent to the proxy) when `host` is a name.
    pub require_4a: bool,
    /// The user id for the cases that do not test user ids (`{user}`).
    pub user: String,
    /// How long the client waits for the proxy's reply before giving up, if known: enables the
    /// case of a reply later than that.
    pub client_timeout: Option<Duration>,
    /// How long a client may take to connect, and to exit after the checker's last step.
    pub client_limit: Duration,
    /// Where the checker listens as the proxy (port 0: any free port).
    pub listen: SocketAddr,
}

impl Default for Config {
    /// Wait mode, host `localhost`, empty user id, 10 s client limit, `127.0.0.1:0`.
    fn default() -> Self {
        Config {
            command: None,
            bind_command: None,
            host: "localhost".to_owned(),
            require_4a: false,
            user: String::new(),
            client_timeout: None,
            client_limit: Duration::from_secs(10),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

/// The values of a case's placeholders.
///
/// In a command, `{proxy}` is the checker's `host:port`, `{proxy_host}` and `{proxy_port}` its
/// parts, `{host}` and `{port}` the destination, `{path}` the page to fetch there, `{url}`
/// `http://{host}:{port}{path}`, `{user}` the user id to send and `{case}` the case's name.
/// The values hold no characters a shell treats specially, except that `{user}` may be empty.
#[derive(Debug, Clone)]
pub struct Vars {
    /// The checker's listening address.
    pub proxy: SocketAddr,
    /// The destination host.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The path of the page.
    pub path: String,
    /// The user id the client must send.
    pub user: String,
    /// The case's name.
    pub case: &'static str,
    /// A token unique to this run and case, in the page body.
    pub token: String,
}

impl Vars {
    /// `template` with every placeholder replaced.
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{proxy}", &self.proxy.to_string())
            .replace("{proxy_host}", &self.proxy.ip().to_string())
            .replace("{proxy_port}", &self.proxy.port().to_string())
            .replace("{url}", &format!("http://{}:{}{}", self.host, self.port, self.path))
            .replace("{host}", &self.host)
            .replace("{port}", &self.port.to_string())
            .replace("{path}", &self.path)
            .replace("{user}", &self.user)
            .replace("{case}", self.case)
    }
}

/// The destination's addresses as a SOCKS4 client may send them: the IPv4 address itself, or
/// the IPv4 addresses `host` resolves to here.
pub fn host_addrs(host: &str) -> Vec<Ipv4Addr> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return vec![ip];
    }
    let mut out: Vec<Ipv4Addr> = (host, 0)
        .to_socket_addrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    out.dedup();
    out
}

/// How a case ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything held.
    Pass,
    /// An informational case (clients differ, no behaviour is wrong): what this one did.
    Info(String),
    /// Not run, and why.
    Skip(String),
}

/// Watches the destination's port for clients that bypass the proxy: it listens on `{port}` of
/// `127.0.0.1` and counts connections (each closed at once). Stops on drop.
#[derive(Debug)]
pub struct DirectWatch {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl DirectWatch {
    /// Listens on `127.0.0.1:0`.
    pub fn start() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (counter, stopped) = (Arc::clone(&hits), Arc::clone(&stop));
        let thread = thread::Builder::new().name("direct-watch".into()).spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        })?;
        Ok(DirectWatch { port, hits, stop, thread: Some(thread) })
    }

    /// The watched port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for DirectWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accept loop; if that fails the thread is left to end with the process.
        if std::net::TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_secs(1),
        )
        .is_ok()
        {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// What one run of the checker holds: the configuration, the proxy listener and the watched
/// destination port.
#[derive(Debug)]
pub struct Checker {
    config: Config,
    listener: TcpListener,
    direct: DirectWatch,
    run_id: String,
}

impl Checker {
    /// Binds the proxy listener and the destination watch.
    pub fn new(config: Config) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen)?;
        let direct = DirectWatch::start()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let run_id = format!("{:x}{:x}", std::process::id(), nanos);
        Ok(Checker { config, listener, direct, run_id })
    }

    /// The checker's proxy address.
    pub fn proxy_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs `case` once.
    pub fn run_case(&self, case: &Case) -> Result<Verdict, Failure> {
        let command = if case.bind { self.config.bind_command.as_deref() } else { self.config.command.as_deref() };
        if case.bind && command.is_none() {
            return Ok(Verdict::Skip("no --bind-run command (a BIND client)".into()));
        }
        let user = match case.user {
            cases::User::Default => self.config.user.clone(),
            cases::User::Fixed(u) => u.to_owned(),
            cases::User::Long(n) => "u".repeat(n),
        };
        if case.user != cases::User::Default && !user.is_empty() && command.is_some_and(|c| !c.contains("{user}")) {
            return Ok(Verdict::Skip("the command has no {user}".into()));
        }
        if let Some(reason) = (case.needs)(&self.config) {
            return Ok(Verdict::Skip(reason));
        }
        let proxy = self.proxy_addr()?;
        let host = if case.bind {
            Ipv4Addr::LOCALHOST.to_string()
        } else if case.long_host {
            cases::long_host()
        } else {
            self.config.host.clone()
        };
        let token = format!("{}-{}", self.run_id, case.name);
        let vars = Vars {
            proxy,
            host,
            port: self.direct.port(),
            path: format!("/socks4-check/{token}"),
            user,
            case: case.name,
            token,
        };
        self.drain_strays()?;
        let direct_before = self.direct.hits();
        let mut session = cases::Session::start(self, vars, command)?;
        let result = (case.run)(&mut session);
        let result = session.finish(result);
        if self.direct.hits() > direct_before {
            return Err(Failure::new(format!(
                "the client connected to the destination {}:{} directly, bypassing the proxy",
                session.vars.host, session.vars.port
            )));
        }
        result
    }

    /// Accepts and closes connections left from an earlier case (a client's retry).
    fn drain_strays(&self) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        while let Ok((conn, _)) = self.listener.accept() {
            drop(conn);
        }
        self.listener.set_nonblocking(false)
    }

    /// Accepts the client's connection within the client limit, giving up early if `gone` says
    /// the client exited.
    pub(crate) fn accept(&self, mut gone: impl FnMut() -> bool) -> Result<std::net::TcpStream, Failure> {
        let deadline = Instant::now() + self.config.client_limit;
        self.listener.set_nonblocking(true)?;
        let result = loop {
            match self.listener.accept() {
                Ok((conn, _)) => break Ok(conn),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if gone() {
                        break Err(Failure::new("the client exited without connecting to the proxy"));
                    }
                    if Instant::now() >= deadline {
                        break Err(Failure::new(format!(
                            "no client connected to the proxy within {:?}",
                            self.config.client_limit
                        )));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => break Err(Failure::new(format!("accepting the client: {e}"))),
            }
        };
        self.listener.set_nonblocking(false)?;
        let conn = result?;
        conn.set_nonblocking(false)?;
        conn.set_nodelay(true)?;
        Ok(conn)
    }
}

/// Runs `selected` one after another, writing one line per case as it ends (`PASS name`,
/// `INFO name: what the client did` (counted as passed), `FAIL name: reason`, `SKIP name:
/// reason`) and the summary line `N passed, N failed, N skipped`.
pub fn run(checker: &Checker, selected: &[&Case], out: &mut dyn Write) -> io::Result<Summary> {
    let mut summary = Summary::default();
    for case in selected {
        match checker.run_case(case) {
            Ok(Verdict::Pass) => {
                summary.passed += 1;
                writeln!(out, "PASS {}", case.name)?;
            }
            Ok(Verdict::Info(what)) => {
                summary.passed += 1;
                writeln!(out, "INFO {}: {what}", case.name)?;
            }
            Ok(Verdict::Skip(reason)) => {
                summary.skipped += 1;
                writeln!(out, "SKIP {}: {reason}", case.name)?;
            }
            Err(f) => {
                summary.failed += 1;
                writeln!(out, "FAIL {}: {f}", case.name)?;
            }
        }
        out.flush()?;
    }
    writeln!(out, "{} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped)?;
    Ok(summary)
}

/// `bytes` for a message: escaped, at most 120 bytes shown.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 120;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut s = format!("\"{}\"", shown.escape_ascii());
    if bytes.len() > MAX {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let vars = Vars {
            proxy: SocketAddr::from((Ipv4Addr::LOCALHOST, 1080)),
            host: "localhost".into(),
            port: 8080,
            path: "/p".into(),
            user: String::new(),
            case: "c",
            token: "t".into(),
        };
        assert_eq!(
            vars.fill("x {proxy} {proxy_host}:{proxy_port} {url} {host}:{port}{path} '{user}' {case}"),
            "x 127.0.0.1:1080 127.0.0.1:1080 http://localhost:8080/p localhost:8080/p '' c"
        );
    }

    #[test]
    fn long_bytes_are_cut() {
        assert_eq!(show(b"a\0"), "\"a\\x00\"");
        assert!(show(&[0; 300]).ends_with("... (300 bytes)"));
    }
}
