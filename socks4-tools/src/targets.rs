//! Destination servers for the scenarios: echo, sink and source, and a source that
//! resets ([`ResetSource`]) and a target that reports how each connection ended ([`EndWatcher`]).
//!
//! Each target binds `127.0.0.1:0`, accepts on a background thread, serves every connection on its
//! own thread (blocking std sockets with read and write timeouts) and stops on drop: the accept
//! loop is woken and joined, and the live connections are shut down so their threads end.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::checksum::{Fnv1a, pattern};

mod faults;
mod stalled;
pub use faults::{EndWatcher, Ending, ResetSource, reset};
pub use stalled::StalledTarget;

/// How long a target's connection may sit idle (no bytes either way) before the target gives up.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const STACK_SIZE: usize = 256 * 1024;
const BUF_SIZE: usize = 64 * 1024;

/// A `127.0.0.1` address with nothing listening on it (bound, then closed), for "connection
/// refused" cases. Another process could take the port in between; that is unlikely enough.
pub fn closed_port() -> io::Result<SocketAddrV4> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = v4(listener.local_addr()?)?;
    drop(listener);
    Ok(addr)
}

/// A one-request HTTP server on 127.0.0.1 answering `body` (HTTP/1.0 200, `Content-Length`,
/// `Connection: close`), for an HTTP client through the proxy (curl, hyper). Its thread waits for
/// one connection, gives its request 10 s, answers and ends.
pub fn http_once(body: &'static str) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let _ = s.write_all(reply.as_bytes());
    });
    Ok(addr)
}

fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(io::Error::other("expected an IPv4 address")),
    }
}

type Handler = Arc<dyn Fn(TcpStream) + Send + Sync + 'static>;
/// Clones of the open connections, so drop can shut them down; each is removed (and so really
/// closed) when its handler returns.
type Live = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// The shared accept loop behind every target.
#[derive(Debug)]
struct Acceptor {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    live: Live,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(name: &str, handler: Handler) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = v4(listener.local_addr()?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let live: Live = Arc::default();
        let thread = {
            let stop = Arc::clone(&stop);
            let live = Arc::clone(&live);
            let name = name.to_owned();
            thread::Builder::new()
                .name(format!("{name}-accept"))
                .stack_size(STACK_SIZE)
                .spawn(move || accept_loop(&name, &listener, &stop, &live, &handler))?
        };
        Ok(Acceptor { addr, stop, live, thread: Some(thread) })
    }
}

fn accept_loop(name: &str, listener: &TcpListener, stop: &AtomicBool, live: &Live, handler: &Handler) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else {
            // Transient accept errors (e.g. EMFILE): back off a little and keep going.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IDLE_TIMEOUT));
        next_id += 1;
        let id = next_id;
        if let Ok(clone) = conn.try_clone() {
            live.lock().unwrap_or_else(PoisonError::into_inner).insert(id, clone);
        }
        let handler = Arc::clone(handler);
        let live_for_conn = Arc::clone(live);
        let spawned = thread::Builder::new().name(format!("{name}-conn")).stack_size(STACK_SIZE).spawn(move || {
            handler(conn);
            live_for_conn.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        });
        if spawned.is_err() {
            // Out of threads: the connection is closed; the scenario will notice.
            live.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&SocketAddr::V4(self.addr), Duration::from_secs(1));
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(PoisonError::into_inner));
        for s in live.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a sink or source target saw arriving on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Bytes received.
    pub bytes: u64,
    /// FNV-1a 64 of the bytes received.
    pub checksum: u64,
    /// Whether the connection ended with a clean EOF (rather than an error or timeout).
    pub eof: bool,
}

impl Report {
    /// Length of [`Report::to_bytes`].
    pub const WIRE_LEN: usize = 16;

    fn from_hash(h: &Fnv1a, eof: bool) -> Self {
        Report { bytes: h.count(), checksum: h.value(), eof }
    }

    /// The reply a [`SinkTarget::replying`] sends after EOF: byte count then checksum, both
    /// big-endian `u64`.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.bytes.to_be_bytes());
        out[8..].copy_from_slice(&self.checksum.to_be_bytes());
        out
    }

    /// Decodes [`Report::to_bytes`] (the `eof` flag is not on the wire and reads as `true`).
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let mut count = [0u8; 8];
        let mut sum = [0u8; 8];
        count.copy_from_slice(&b[..8]);
        sum.copy_from_slice(&b[8..]);
        Report { bytes: u64::from_be_bytes(count), checksum: u64::from_be_bytes(sum), eof: true }
    }
}

/// Reads `conn` to EOF (or error), hashing everything.
fn drain(conn: &mut TcpStream) -> Report {
    let mut h = Fnv1a::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Report::from_hash(&h, true),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Report::from_hash(&h, false),
        }
    }
}

/// Echoes every byte back; on EOF it shuts down its write side (propagating the half-close) and
/// closes.
#[derive(Debug)]
pub struct EchoTarget {
    acceptor: Acceptor,
}

impl EchoTarget {
    /// Starts an echo target on `127.0.0.1:0`.
    pub fn start() -> io::Result<Self> {
        let acceptor = Acceptor::start("echo", Arc::new(echo))?;
        Ok(EchoTarget { acceptor })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.acceptor.addr
    }
}

/// Echoes one accepted connection with the targets' idle timeouts (for a listener of one's own,
/// e.g. on `[::1]`).
pub(crate) fn echo_with_timeouts(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IDLE_TIMEOUT));
    echo(conn);
}

fn echo(mut conn: TcpStream) {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads everything, counting bytes and hashing them; reports a [`Report`] per connection when it
/// ends. In "replying" mode it also writes [`Report::to_bytes`] back after reading EOF, then
/// closes (for half-close tests).
#[derive(Debug)]
pub struct SinkTarget {
    acceptor: Acceptor,
    reports: Mutex<Receiver<Report>>,
}

impl SinkTarget {
    /// Starts a sink that only reports through [`SinkTarget::recv_report`].
    pub fn start() -> io::Result<Self> {
        Self::with_reply(false)
    }

    /// Starts a sink that, after EOF, writes the 16-byte [`Report`] back to the client.
    pub fn replying() -> io::Result<Self> {
        Self::with_reply(true)
    }

    fn with_reply(reply: bool) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let handler = move |mut conn: TcpStream| {
            let report = drain(&mut conn);
            if reply && report.eof {
                let _ = conn.write_all(&report.to_bytes());
                let _ = conn.shutdown(Shutdown::Write);
            }
            send(&tx, report);
        };
        let acceptor = Acceptor::start("sink", Arc::new(handler))?;
        Ok(SinkTarget { acceptor, reports: Mutex::new(rx) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.acceptor.addr
    }

    /// The next connection's report, waiting at most `timeout`.
    pub fn recv_report(&self, timeout: Duration) -> Option<Report> {
        let rx = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        rx.recv_timeout(timeout).ok()
    }
}

fn send(tx: &Mutex<Sender<Report>>, report: Report) {
    let tx = tx.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = tx.send(report);
}

/// Writes `len` deterministic bytes ([`crate::checksum::pattern`] with `seed`), shuts down its
/// write side, then keeps reading until EOF so the other direction can still flow; reports what
/// it received as a [`Report`] (it cannot answer in-band: its write side is closed).
#[derive(Debug)]
pub struct SourceTarget {
    acceptor: Acceptor,
    reports: Mutex<Receiver<Report>>,
}

impl SourceTarget {
    /// Starts a source target sending `len` bytes of stream `seed` on every connection.
    pub fn start(len: u64, seed: u64) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let handler = move |mut conn: TcpStream| {
            let mut buf = vec![0u8; BUF_SIZE];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                let chunk = &mut buf[..n];
                pattern(seed, off, chunk);
                if conn.write_all(chunk).is_err() {
                    send(&tx, Report { bytes: 0, checksum: Fnv1a::new().value(), eof: false });
                    return;
                }
                off += n as u64;
            }
            let _ = conn.shutdown(Shutdown::Write);
            send(&tx, drain(&mut conn));
        };
        let acceptor = Acceptor::start("source", Arc::new(handler))?;
        Ok(SourceTarget { acceptor, reports: Mutex::new(rx) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.acceptor.addr
    }

    /// The next connection's report of the bytes it received, waiting at most `timeout`.
    pub fn recv_report(&self, timeout: Duration) -> Option<Report> {
        let rx = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        rx.recv_timeout(timeout).ok()
    }
}
