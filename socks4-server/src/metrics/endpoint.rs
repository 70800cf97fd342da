//! The HTTP endpoint: `GET /metrics`, `/healthz` and `/readyz`, on one thread of its own.
//!
//! Deliberately small and bounded, since it may face the network: one request per connection
//! (`Connection: close`), each on a thread of its own, at most [`MAX_CLIENTS`] at once (more are
//! closed at once); the request head is at most [`MAX_HEAD`] bytes and must arrive within
//! [`READ_TIMEOUT`], each write of the answer within [`WRITE_TIMEOUT`], so a slow or silent client
//! holds one slot for a few seconds, and a probe or scrape beside it is served at once.
//! The head is parsed by `httparse` (hyper's parser). Any method but GET and HEAD on a known path
//! is 405, any other path 404, a malformed head 400.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Metrics;

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Time for a client to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Time to write an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once (a thread each); a connection beyond them is closed unanswered.
pub const MAX_CLIENTS: usize = 8;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;
/// Pause after an accept error such as EMFILE, so the thread does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Listens on `addr` and serves `metrics` from a thread named `socks4-metrics`. An address
    /// beyond loopback is served, with a warning: the metrics carry no client address or user,
    /// but they tell anyone who can reach them how busy the proxy is.
    ///
    /// # Errors
    ///
    /// [`EndpointError`] (with the address) when `addr` cannot be bound or the serving thread
    /// cannot be started.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Endpoint, EndpointError> {
        let fail = |error| EndpointError { addr, error };
        let listener = TcpListener::bind(addr).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        if !bound.ip().to_canonical().is_loopback() {
            tracing::warn!(
                "metrics on {bound} are open to whoever can reach that address (counts of connections, requests and \
                 bytes; no client address or user); keep it behind a firewall or listen on 127.0.0.1"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("socks4-metrics".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || serve(&listener, &metrics, &stop)
            })
            .map_err(fail)?;
        Ok(Endpoint { addr: bound, stop, thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; the thread sees the flag and ends.
        let wake = SocketAddr::new(self.addr.ip().to_canonical(), self.addr.port());
        let wake = if wake.ip().is_unspecified() {
            SocketAddr::new(
                if wake.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() },
                wake.port(),
            )
        } else {
            wake
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, metrics: &Arc<Metrics>, stop: &AtomicBool) {
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed unanswered
                }
                let (metrics, done) = (Arc::clone(metrics), Arc::clone(&busy));
                let spawned = std::thread::Builder::new().name("socks4-metrics-req".into()).spawn(move || {
                    if let Err(e) = handle(stream, &metrics) {
                        tracing::debug!("metrics endpoint: {e}");
                    }
                    done.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(e) = spawned {
                    tracing::debug!("metrics endpoint: no thread for a request: {e}");
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if crate::accept::is_per_connection(&e) => {}
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                std::thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
    }
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
/// complete head (up to its blank line; anything after it is ignored), else 431 if it is
/// [`MAX_HEAD`] bytes or more, else 400.
///
/// ```
/// let metrics = socks4_server::metrics::Metrics::new(1, false);
/// let answer = socks4_server::metrics::endpoint_answer(b"DELETE /metrics HTTP/1.1\r\n\r\n", &metrics);
/// assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
/// ```
pub fn respond(request: &[u8], metrics: &Arc<Metrics>) -> String {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n");
    let (status, content_type, body, head_only) = match end {
        Some(end) => answer(&request[..end + 4], metrics),
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

/// Reads one request head (bounded in size and time) and answers it.
fn handle(mut stream: TcpStream, metrics: &Arc<Metrics>) -> io::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() >= MAX_HEAD {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request head not sent in time"));
        }
        stream.set_read_timeout(Some(left))?;
        let want = buf.len().min(MAX_HEAD - head.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    debug_assert!(complete || head.len() >= MAX_HEAD);
    stream.write_all(respond(&head, metrics).as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the close (unread input would reset it).
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.read(&mut buf);
    Ok(())
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
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        let mut s = TcpStream::connect(endpoint.local_addr()).unwrap();
        let _ = s.write_all(&huge);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // Silent clients hold a slot each for READ_TIMEOUT at most; a probe beside them is served
        // at once, and beyond MAX_CLIENTS a connection is closed unanswered (never queued).
        let silent: Vec<_> = (0..MAX_CLIENTS - 1).map(|_| TcpStream::connect(endpoint.local_addr()).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert!(ask(&endpoint, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
        assert!(started.elapsed() < Duration::from_secs(1), "served beside the silent ones");
        let more: Vec<_> = (0..2).map(|_| TcpStream::connect(endpoint.local_addr()).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut over = TcpStream::connect(endpoint.local_addr()).unwrap();
        over.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut answer = String::new();
        let _ = over.read_to_string(&mut answer);
        assert!(answer.is_empty(), "over the limit: closed unanswered, not queued ({answer})");
        drop((silent, more));
        // Their requests end as their threads see the close; until then a new one may find no slot.
        let freed = Instant::now() + Duration::from_secs(3);
        while TcpStream::connect(endpoint.local_addr())
            .and_then(|mut s| s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").map(|()| s))
            .and_then(|mut s| {
                let mut answer = String::new();
                s.read_to_string(&mut answer).map(|_| answer)
            })
            .map_or(true, |answer| !answer.starts_with("HTTP/1.1 200 "))
        {
            assert!(Instant::now() < freed, "the slots were not freed when their clients left");
            std::thread::sleep(Duration::from_millis(20));
        }
        metrics.set_draining();
        assert!(ask(&endpoint, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 503 "));
        assert!(ask(&endpoint, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 "));
    }
}
