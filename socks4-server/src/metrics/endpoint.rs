//! The HTTP endpoint: `GET /metrics`, `/healthz` and `/readyz`.
//!
//! Deliberately small and bounded, since it may face the network, and built so that idle or slow
//! clients cannot take the probes down: one thread (`socks4-metrics`) watches every connection
//! with one `polling` poller (an idle connection costs a few hundred bytes, no thread), and
//! - holds at most [`MAX_CONNECTIONS`] connections at once, [`MAX_PER_CLIENT`] per client (address, IPv6 /64);
//!   a new connection over either cap takes the place of the oldest one that has sent nothing yet
//!   (of that client first), so a burst of idle sockets, re-opened as fast as they are closed,
//!   cannot keep a probe out; only when every held connection has sent bytes is a new one closed
//!   unanswered;
//! - closes a connection that sends nothing within [`FIRST_BYTE_TIMEOUT`], and one whose request
//!   head (at most [`MAX_HEAD`] bytes) is not whole within [`READ_TIMEOUT`];
//! - answers `/healthz`, `/readyz` and every error (400, 404, 405, 431) on that thread at once (a
//!   few hundred bytes, which a fresh socket's send buffer always takes), so probes never wait
//!   for a scrape; `/metrics` goes to a fixed pool of [`METRICS_THREADS`] threads (each write of
//!   the answer within [`WRITE_TIMEOUT`]), and is answered 503 when they and their short queue are
//!   busy.
//!
//! One request per connection (`Connection: close`). The head ends at its first empty line, CRLF
//! or bare LF, and is parsed by `httparse` (hyper's parser). Any method but GET and HEAD on a
//! known path is 405, any other path 404, a malformed head 400.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use polling::{Event, Events, Poller};

use super::Metrics;
use crate::limits::ClientKey;

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time for a client to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for a client to send its first byte (a probe sends its request at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_millis(500);
/// Time to write an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections held at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections held at once from one client (an IPv4 address or an IPv6 /64).
pub const MAX_PER_CLIENT: usize = 8;

/// Reads of 1 KiB per readiness event of one connection before the others get their turn.
const READS_PER_EVENT: usize = 16;
/// Threads that write `/metrics` answers.
pub const METRICS_THREADS: usize = 2;
/// `/metrics` requests waiting for one of those threads; more are answered 503.
const METRICS_QUEUE: usize = 4;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;
/// How long a connection answered on the event thread is read (and discarded) before the close,
/// so that unread input does not turn the close into a reset that destroys the answer.
const LINGER: Duration = Duration::from_millis(200);
/// Pause after an accept error such as EMFILE, so the thread does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// The listener's key in the poller (connections use their slot's index).
const LISTENER: usize = usize::MAX - 1;

/// The endpoint could not start.
#[derive(Debug)]
pub struct EndpointError {
    /// The address it was to listen on.
    pub addr: SocketAddr,
    /// Why not.
    pub error: io::Error,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot serve metrics on {}: {}", self.addr, self.error)
    }
}

impl std::error::Error for EndpointError {}

/// A running metrics endpoint; dropping it stops it.
///
/// ```
/// use std::io::{Read, Write};
/// let metrics = socks4_server::metrics::Metrics::new(1, true);
/// let endpoint = socks4_server::metrics::Endpoint::start("127.0.0.1:0".parse()?, metrics)?;
/// let mut s = std::net::TcpStream::connect(endpoint.local_addr())?;
/// s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
/// let mut answer = String::new();
/// s.read_to_string(&mut answer)?;
/// assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    poller: Arc<Poller>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` and serves `metrics` from a thread named `socks4-metrics` (and
    /// [`METRICS_THREADS`] named `socks4-metrics-scrape`). An address beyond loopback is served,
    /// with a warning: the metrics carry no client address or user, but they tell anyone who can
    /// reach them how busy the proxy is.
    ///
    /// # Errors
    ///
    /// [`EndpointError`] (with the address) when `addr` cannot be bound or the serving thread
    /// cannot be started.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Endpoint, EndpointError> {
        let fail = |error| EndpointError { addr, error };
        let listener = TcpListener::bind(addr).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        if !bound.ip().to_canonical().is_loopback() {
            tracing::warn!(
                "metrics on {bound} are open to whoever can reach that address (counts of connections, requests and \
                 bytes; no client address or user); keep it behind a firewall or listen on 127.0.0.1"
            );
        }
        let poller = Arc::new(Poller::new().map_err(fail)?);
        let (scrapes, queue) = mpsc::sync_channel::<(TcpStream, Vec<u8>)>(METRICS_QUEUE);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..METRICS_THREADS {
            let (queue, metrics) = (Arc::clone(&queue), Arc::clone(&metrics));
            std::thread::Builder::new()
                .name("socks4-metrics-scrape".into())
                .spawn(move || scrape_thread(&queue, &metrics))
                .map_err(fail)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("socks4-metrics".into())
            .spawn({
                let (stop, poller) = (Arc::clone(&stop), Arc::clone(&poller));
                move || {
                    let mut events = EventLoop { poller: &poller, conns: Vec::new(), scrapes, metrics: &metrics };
                    if let Err(e) = events.run(&listener, &stop) {
                        tracing::warn!("metrics endpoint stopped: {e}");
                    }
                }
            })
            .map_err(fail)?;
        Ok(Endpoint { addr: bound, stop, poller, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.poller.notify();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes the `/metrics` answers handed over by the event thread, until it is gone.
fn scrape_thread(queue: &std::sync::Mutex<Receiver<(TcpStream, Vec<u8>)>>, metrics: &Arc<Metrics>) {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((mut stream, head)) = next else { return };
        let answered = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
            .and_then(|()| stream.write_all(respond(&head, metrics).as_bytes()));
        if let Err(e) = answered {
            tracing::debug!("metrics endpoint: {e}");
            continue;
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Let the client read the answer before the close (unread input would reset it).
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = stream.read(&mut [0u8; 512]);
    }
}

/// One connection the event thread holds.
struct Conn {
    stream: TcpStream,
    /// Its client as the limits count clients (an IPv4 address or an IPv6 /64).
    client: ClientKey,
    accepted: Instant,
    head: Vec<u8>,
    /// Answered: reading and discarding until this instant, then closed.
    closing: Option<Instant>,
}

impl Conn {
    fn deadline(&self) -> Instant {
        match (self.closing, self.head.is_empty()) {
            (Some(until), _) => until,
            (None, true) => self.accepted + FIRST_BYTE_TIMEOUT,
            (None, false) => self.accepted + READ_TIMEOUT,
        }
    }

    /// Has it sent nothing yet (the first to give its place to a new connection)?
    fn is_silent(&self) -> bool {
        self.closing.is_none() && self.head.is_empty()
    }
}

/// The event thread's state: its poller, the connections (slot `i` is key `i`), and the way to
/// the scrape threads.
struct EventLoop<'a> {
    poller: &'a Poller,
    conns: Vec<Option<Conn>>,
    scrapes: SyncSender<(TcpStream, Vec<u8>)>,
    metrics: &'a Arc<Metrics>,
}

impl EventLoop<'_> {
    fn run(&mut self, listener: &TcpListener, stop: &AtomicBool) -> io::Result<()> {
        // SAFETY: the listener outlives the loop and is deleted from the poller before it returns.
        unsafe { self.poller.add(listener, Event::readable(LISTENER))? };
        let mut events = Events::new();
        let result = loop {
            let now = Instant::now();
            let next = self.conns.iter().flatten().map(Conn::deadline).min();
            events.clear();
            if let Err(e) = self.poller.wait(&mut events, next.map(|d| d.saturating_duration_since(now))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break Err(e);
                }
            }
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let keys: Vec<usize> = events.iter().map(|ev| ev.key).collect();
            for key in keys {
                if key == LISTENER {
                    self.accept_all(listener);
                    self.poller.modify(listener, Event::readable(LISTENER))?;
                } else {
                    self.on_readable(key);
                }
            }
            let now = Instant::now();
            for slot in 0..self.conns.len() {
                if self.conns[slot].as_ref().is_some_and(|c| c.deadline() <= now) {
                    self.close(slot);
                }
            }
        };
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
        let _ = self.poller.delete(listener);
        result
    }

    fn accept_all(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer.ip().to_canonical()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if crate::accept::is_per_connection(&e) => {}
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    std::thread::sleep(ACCEPT_ERROR_PAUSE);
                    return;
                }
            }
        }
    }

    /// Holds a new connection, in the place of the oldest silent one over a cap; or closes it.
    fn admit(&mut self, stream: TcpStream, client: IpAddr) {
        // Per client as the limits count them: one IPv6 host has a whole /64 to connect from.
        let client = ClientKey::from(client);
        let held = |c: &Conn| c.client == client;
        if self.conns.iter().flatten().filter(|c| held(c)).count() >= MAX_PER_CLIENT && !self.evict(Some(client)) {
            return; // closed unanswered
        }
        if self.conns.iter().flatten().count() >= MAX_CONNECTIONS && !self.evict(None) {
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        // SAFETY: every connection is deleted from the poller in `close` or `take` before it is
        // dropped, and the loop closes them all before it returns.
        if unsafe { self.poller.add(&stream, Event::readable(slot)) }.is_err() {
            return;
        }
        self.conns[slot] = Some(Conn { stream, client, accepted: Instant::now(), head: Vec::new(), closing: None });
        // The request may have arrived with the connection.
        self.on_readable(slot);
    }

    /// Closes the oldest silent connection (of `client`, when given); false if there is none.
    /// The candidates are read first: a probe whose request arrived after its accept is answered
    /// then, not taken for an idle socket in a burst of new connections.
    fn evict(&mut self, client: Option<ClientKey>) -> bool {
        let candidates: Vec<usize> = (self.conns.iter().enumerate())
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.is_silent() && client.is_none_or(|ip| c.client == ip)))
            .map(|(i, _)| i)
            .collect();
        for slot in candidates {
            self.on_readable(slot);
        }
        let oldest = (self.conns.iter().enumerate())
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.is_silent() && client.is_none_or(|ip| c.client == ip))
            .min_by_key(|(_, c)| c.accepted)
            .map(|(i, _)| i);
        oldest.inspect(|&slot| self.close(slot)).is_some()
    }

    /// Takes connection `slot` out of the poller and the table.
    fn take(&mut self, slot: usize) -> Option<Conn> {
        let conn = self.conns.get_mut(slot)?.take()?;
        let _ = self.poller.delete(&conn.stream);
        Some(conn)
    }

    fn close(&mut self, slot: usize) {
        drop(self.take(slot));
    }

    fn on_readable(&mut self, slot: usize) {
        let mut buf = [0u8; 1024];
        // At most this many reads per readiness event: a sender faster than the reads cannot keep
        // the one event thread (and every probe) to itself.
        for _ in 0..READS_PER_EVENT {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
            if conn.closing.is_some_and(|until| until <= Instant::now()) {
                return self.close(slot); // the discard after an answer is over
            }
            let want = if conn.closing.is_some() { buf.len() } else { buf.len().min(MAX_HEAD - conn.head.len()) };
            match conn.stream.read(&mut buf[..want]) {
                Ok(0) => return self.close(slot),
                Ok(_) if conn.closing.is_some() => {}
                Ok(n) => {
                    conn.head.extend_from_slice(&buf[..n]);
                    if head_end(&conn.head).is_some() || conn.head.len() >= MAX_HEAD {
                        self.answer(slot);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.poller.modify(&conn.stream, Event::readable(slot)).is_err() {
                        self.close(slot);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(slot),
            }
        }
        // More may be waiting: back to the poller (level of readiness kept), after the others.
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            if self.poller.modify(&conn.stream, Event::readable(slot)).is_err() {
                self.close(slot);
            }
        }
    }

    /// Answers connection `slot`, whose head is whole (or too long): here, or `/metrics` on a
    /// scrape thread.
    fn answer(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        let text = if scrapes_metrics(&conn.head) {
            let Some(conn) = self.take(slot) else { return };
            match self.scrapes.try_send((conn.stream, conn.head)) {
                Ok(()) => return,
                Err(TrySendError::Full((stream, head)) | TrySendError::Disconnected((stream, head))) => {
                    // SAFETY: as in `admit`.
                    if unsafe { self.poller.add(&stream, Event::readable(slot)) }.is_err() {
                        return;
                    }
                    self.conns[slot] =
                        Some(Conn { stream, client: conn.client, accepted: conn.accepted, head, closing: None });
                    busy()
                }
            }
        } else {
            respond(&conn.head, self.metrics)
        };
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        // A few hundred bytes: a fresh socket's send buffer takes them whole.
        if conn.stream.write_all(text.as_bytes()).is_err() {
            return self.close(slot);
        }
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        conn.closing = Some(Instant::now() + LINGER);
    }
}

/// The answer when every scrape thread and their queue are busy.
fn busy() -> String {
    let body = "busy: try again\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\nRetry-After: 1\r\n\r\n{body}",
        body.len()
    )
}

/// Where the head (the bytes up to its first empty line) ends, after that line: CRLF or bare LF.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let lf = bytes.iter().enumerate().filter(|&(_, &b)| b == b'\n').map(|(i, _)| i);
    let mut previous: Option<usize> = None;
    for i in lf {
        if let Some(p) = previous {
            let between = &bytes[p + 1..i];
            if between.is_empty() || between == b"\r" {
                return Some(i + 1);
            }
        }
        previous = Some(i);
    }
    None
}

/// Does this whole head ask for `/metrics` with GET or HEAD (an answer worth a scrape thread)?
fn scrapes_metrics(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(end) = head_end(head) else { return false };
    matches!(req.parse(&head[..end]), Ok(httparse::Status::Complete(_)))
        && matches!(req.method, Some("GET" | "HEAD"))
        && req.path.is_some_and(|p| p.split('?').next() == Some("/metrics"))
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
}

/// The answer to a request head: status line, content type, body; `head_only` for HEAD.
fn answer(head: &[u8], metrics: &Arc<Metrics>) -> (&'static str, &'static str, String, bool) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        _ => return ("400 Bad Request", TEXT, "bad request\n".into(), false),
    };
    let route = match path.split('?').next().unwrap_or("") {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return ("404 Not Found", TEXT, "not found: /metrics, /healthz, /readyz\n".into(), false),
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return ("405 Method Not Allowed", TEXT, "method not allowed: GET or HEAD\n".into(), false),
    };
    match route {
        Route::Metrics => {
            ("200 OK", prometheus_client::encoding::prometheus_text::CONTENT_TYPE, metrics.encode(), head_only)
        }
        Route::Healthz => ("200 OK", TEXT, "ok\n".into(), head_only),
        Route::Readyz if metrics.is_ready() => ("200 OK", TEXT, "ready\n".into(), head_only),
        Route::Readyz => ("503 Service Unavailable", TEXT, "draining\n".into(), head_only),
    }
}

/// The whole answer (status line, headers, body) to `request`, the bytes a client sent: a
/// complete head (up to its first empty line, CRLF or bare LF; anything after it is ignored), else 431 if it is
/// [`MAX_HEAD`] bytes or more, else 400.
///
/// ```
/// let metrics = socks4_server::metrics::Metrics::new(1, false);
/// let answer = socks4_server::metrics::endpoint_answer(b"DELETE /metrics HTTP/1.1\r\n\r\n", &metrics);
/// assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
/// ```
pub fn respond(request: &[u8], metrics: &Arc<Metrics>) -> String {
    let (status, content_type, body, head_only) = match head_end(request) {
        Some(end) => answer(&request[..end], metrics),
        None if request.len() >= MAX_HEAD => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n".into(),
            false,
        ),
        None => ("400 Bad Request", "text/plain; charset=utf-8", "bad request\n".into(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(endpoint: &Endpoint, request: &[u8]) -> String {
        let mut s = TcpStream::connect(endpoint.local_addr()).unwrap();
        s.write_all(request).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn routes_methods_and_bounds() {
        let metrics = Metrics::new(1, true);
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics)).unwrap();
        let m = ask(&endpoint, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("\r\n\r\n# HELP socks4_"), "{m}");
        let head = ask(&endpoint, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(ask(&endpoint, b"GET /readyz?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200 "));
        assert!(ask(&endpoint, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        let post = ask(&endpoint, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"), "{post}");
        assert!(ask(&endpoint, b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // Bare LF line ends (`printf 'GET /healthz HTTP/1.0\n\n' | nc`) are answered too.
        assert!(ask(&endpoint, b"GET /healthz HTTP/1.0\n\n").starts_with("HTTP/1.1 200 "));
        assert!(ask(&endpoint, b"GET /metrics HTTP/1.1\nHost: a\n\n").starts_with("HTTP/1.1 200 "));
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        let mut s = TcpStream::connect(endpoint.local_addr()).unwrap();
        let _ = s.write_all(&huge);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        metrics.set_draining();
        assert!(ask(&endpoint, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 "));
        assert!(ask(&endpoint, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), Some(26));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn a_silent_connection_is_closed_after_its_first_byte_deadline() {
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap(), Metrics::new(1, true)).unwrap();
        let mut silent = TcpStream::connect(endpoint.local_addr()).unwrap();
        silent.set_read_timeout(Some(FIRST_BYTE_TIMEOUT * 4)).unwrap();
        let started = Instant::now();
        let mut b = [0u8; 1];
        assert!(matches!(silent.read(&mut b), Ok(0) | Err(_)));
        assert!(started.elapsed() < FIRST_BYTE_TIMEOUT * 3, "closed after {:?}", started.elapsed());
    }

    /// 50 idle sockets, held open and re-opened as soon as the endpoint closes them, from two
    /// addresses other than the probes': every probe is answered at once.
    #[test]
    fn idle_sockets_do_not_take_the_probes_down() {
        let endpoint = Endpoint::start("127.0.0.1:0".parse().unwrap(), Metrics::new(1, true)).unwrap();
        let addr = endpoint.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let flood = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let open = |i: usize| {
                    let source: std::net::IpAddr =
                        if i % 2 == 0 { [127, 0, 0, 4].into() } else { [127, 0, 0, 3].into() };
                    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
                    socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
                    socket.connect(&addr.into()).ok()?;
                    let s = TcpStream::from(socket);
                    s.set_nonblocking(true).ok()?;
                    Some(s)
                };
                let mut idle: Vec<Option<TcpStream>> = (0..50).map(open).collect();
                while !stop.load(Ordering::SeqCst) {
                    for (i, s) in idle.iter_mut().enumerate() {
                        let closed = s.as_mut().is_none_or(|s| match s.read(&mut [0u8; 1]) {
                            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                            Ok(_) => true,
                        });
                        if closed {
                            *s = open(i);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..20 {
            let started = Instant::now();
            let answer = ask(
                &endpoint,
                if i % 2 == 0 { b"GET /healthz HTTP/1.1\r\n\r\n" } else { b"GET /readyz HTTP/1.1\r\n\r\n" },
            );
            assert!(answer.starts_with("HTTP/1.1 200 "), "probe {i}: {answer:?}");
            assert!(started.elapsed() < Duration::from_secs(1), "probe {i} took {:?}", started.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        flood.join().unwrap();
    }
}
