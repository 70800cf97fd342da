//! The scenarios against a deliberately tiny thread-per-connection SOCKS4/4a server written here
//! (independent of the project's adapters). It proves the scenarios pass against a correct server
//! and that `scenario_tests!` works from an integration test.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socks4_tools::scenarios::Profile;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const USER_ID_LIMIT: usize = 255;
const HOST_LIMIT: usize = 255;
const IDLE: Duration = Duration::from_secs(60);
const STACK: usize = 128 * 1024;

/// A running reference server; stops accepting on drop.
struct RefServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for RefServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Each test gets its own server: the guard is the server, dropped when the scenario ends.
fn start() -> (SocketAddr, Profile, RefServer) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let _ = thread::Builder::new().stack_size(STACK).spawn(move || {
                let _ = handle(conn);
            });
        }
    });
    let server = RefServer { addr, stop, thread: Some(thread) };
    (addr, Profile::test_server(), server)
}

socks4_tools::scenario_tests!(start);

struct Request {
    command: u8,
    port: u16,
    ip: Ipv4Addr,
    user: Vec<u8>,
    host: Option<String>,
}

enum Parse {
    Done(Request, usize),
    More,
    Bad,
}

fn find_nul(buf: &[u8], from: usize, limit: usize) -> Result<Option<usize>, ()> {
    match buf[from.min(buf.len())..].iter().position(|&b| b == 0) {
        Some(i) if i > limit => Err(()),
        Some(i) => Ok(Some(from + i)),
        None if buf.len().saturating_sub(from) > limit => Err(()),
        None => Ok(None),
    }
}

fn parse(buf: &[u8]) -> Parse {
    if buf.first().is_some_and(|&v| v != 4) {
        return Parse::Bad;
    }
    if buf.len() < 8 {
        return Parse::More;
    }
    let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
    let user_end = match find_nul(buf, 8, USER_ID_LIMIT) {
        Err(()) => return Parse::Bad,
        Ok(None) => return Parse::More,
        Ok(Some(i)) => i,
    };
    let o = ip.octets();
    let is_4a = o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0;
    let (host, end) = if is_4a {
        match find_nul(buf, user_end + 1, HOST_LIMIT) {
            Err(()) => return Parse::Bad,
            Ok(None) => return Parse::More,
            Ok(Some(i)) => match std::str::from_utf8(&buf[user_end + 1..i]) {
                Ok(h) => (Some(h.to_owned()), i + 1),
                Err(_) => return Parse::Bad,
            },
        }
    } else {
        (None, user_end + 1)
    };
    let req = Request {
        command: buf[1],
        port: u16::from_be_bytes([buf[2], buf[3]]),
        ip,
        user: buf[8..user_end].to_vec(),
        host,
    };
    Parse::Done(req, end)
}

fn reply(s: &mut TcpStream, code: u8, addr: SocketAddrV4) -> io::Result<()> {
    let mut r = [0u8, code, 0, 0, 0, 0, 0, 0];
    r[2..4].copy_from_slice(&addr.port().to_be_bytes());
    r[4..8].copy_from_slice(&addr.ip().octets());
    s.write_all(&r)
}

/// Replies 91, then drains like the servers (`socks4_server::linger`): write side shut, the client's
/// input read and discarded until it closes (at most 256 KiB / 2 s), so unread input does not turn
/// the close into a reset.
fn reject(s: &mut TcpStream) -> io::Result<()> {
    reply(s, 91, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    s.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut left, mut buf) = (256 * 1024usize, [0u8; 4096]);
    while left > 0 {
        let Some(wait) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
        s.set_read_timeout(Some(wait))?;
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    }
}

fn handle(mut client: TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (req, used) = loop {
        match parse(&buf) {
            Parse::Done(r, n) => break (r, n),
            Parse::Bad => return reject(&mut client),
            Parse::More => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        client.set_read_timeout(Some(left))?;
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let early = buf[used..].to_vec();
    client.set_read_timeout(Some(IDLE))?;
    client.set_write_timeout(Some(IDLE))?;
    if req.user == b"denied" {
        return reject(&mut client);
    }
    let ip: IpAddr = match &req.host {
        None => req.ip.into(),
        Some(h) => {
            let found = (h.as_str(), req.port).to_socket_addrs().ok().and_then(|mut it| it.next());
            match found {
                Some(a) => a.ip().to_canonical(),
                None => return reject(&mut client),
            }
        }
    };
    // Never a real destination: 0.0.0.0/8 (Linux connects it to this host), ::, broadcast, multicast.
    let never = match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 0 || v4.is_broadcast() || v4.is_multicast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if req.command == 1 && never {
        return reject(&mut client);
    }
    match req.command {
        1 => {
            let dest = SocketAddr::from((ip, req.port));
            let Ok(mut upstream) = TcpStream::connect_timeout(&dest, Duration::from_secs(5)) else {
                return reject(&mut client);
            };
            upstream.set_read_timeout(Some(IDLE))?;
            upstream.set_write_timeout(Some(IDLE))?;
            reply(&mut client, 90, v4(upstream.local_addr()?))?;
            upstream.write_all(&early)?;
            relay(client, upstream)
        }
        2 => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            reply(&mut client, 90, v4(listener.local_addr()?))?;
            listener.set_nonblocking(true)?;
            let until = Instant::now() + Duration::from_secs(30);
            let (mut peer, from) = loop {
                match listener.accept() {
                    Ok(p) => break p,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < until => {
                        // The client leaving (end of file or an error) ends the wait at once.
                        client.set_nonblocking(true)?;
                        let gone = match client.peek(&mut [0u8; 1]) {
                            Ok(n) => n == 0,
                            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                        };
                        client.set_nonblocking(false)?;
                        if gone {
                            return Ok(());
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return reject(&mut client),
                }
            };
            peer.set_nonblocking(false)?;
            if from.ip().to_canonical() != ip {
                let _ = peer.shutdown(Shutdown::Both);
                return reject(&mut client);
            }
            peer.set_read_timeout(Some(IDLE))?;
            peer.set_write_timeout(Some(IDLE))?;
            reply(&mut client, 90, v4(from))?;
            peer.write_all(&early)?;
            relay(client, peer)
        }
        _ => reject(&mut client),
    }
}

/// Copies both ways, propagating each EOF as `shutdown(Write)` and a failure as a reset.
fn relay(a: TcpStream, b: TcpStream) -> io::Result<()> {
    // Urgent data stays in the stream (a read would skip the urgent byte otherwise).
    socket2::SockRef::from(&a).set_out_of_band_inline(true)?;
    socket2::SockRef::from(&b).set_out_of_band_inline(true)?;
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let t = thread::Builder::new().stack_size(STACK).spawn(move || copy(a2, b2))?;
    copy(b, a);
    let _ = t.join();
    Ok(())
}

/// Makes the last close of `s` send a reset (`SO_LINGER` 0).
fn set_abortive(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    set_abortive(&from);
                    return;
                }
            }
            Err(_) => {
                // Reset `to` once both threads let go of it; wake the other thread's read of it.
                set_abortive(&to);
                let _ = to.shutdown(Shutdown::Read);
                return;
            }
        }
    }
}
