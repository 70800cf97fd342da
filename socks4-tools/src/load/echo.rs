//! An event-loop echo target that can hold tens of thousands of connections.
//!
//! A few threads, each blocking in its own [`polling::Poller`] (level-triggered), each owning some
//! of the listeners (one listener per loopback address) and every connection it accepted. A
//! connection costs a socket and a small struct: reads go into one buffer per thread, and only
//! bytes the peer is not ready to take back are kept per connection. On EOF the target flushes,
//! shuts down its write side (propagating the half-close) and closes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use polling::{Event, Events, PollMode, Poller};

const BUF_SIZE: usize = 64 * 1024;
const ACCEPT_BATCH: usize = 64;

/// A running echo target; stops on drop (the loops are woken, joined, and close everything).
#[derive(Debug)]
pub struct EchoServer {
    addrs: Vec<SocketAddrV4>,
    stop: Arc<AtomicBool>,
    pollers: Vec<Arc<Poller>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on port 0 of every address in `ips` and serves them from `threads` event loops
    /// (at least one; listener `i` belongs to loop `i % threads`).
    pub fn start(ips: &[Ipv4Addr], threads: usize) -> io::Result<Self> {
        if ips.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no target addresses"));
        }
        let threads = threads.clamp(1, ips.len());
        let mut listeners = Vec::with_capacity(ips.len());
        let mut addrs = Vec::with_capacity(ips.len());
        for &ip in ips {
            let l = TcpListener::bind((ip, 0))?;
            l.set_nonblocking(true)?;
            match l.local_addr()? {
                SocketAddr::V4(a) => addrs.push(a),
                SocketAddr::V6(_) => return Err(io::Error::other("expected an IPv4 listener")),
            }
            listeners.push(l);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut groups: Vec<Vec<TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, l) in listeners.into_iter().enumerate() {
            groups[i % threads].push(l);
        }
        let mut server = EchoServer { addrs, stop, pollers: Vec::new(), threads: Vec::new() };
        for (t, group) in groups.into_iter().enumerate() {
            let poller = Arc::new(Poller::new()?);
            let mut event_loop = Loop::new(Arc::clone(&poller), group)?;
            let stop = Arc::clone(&server.stop);
            let handle = thread::Builder::new()
                .name(format!("echo-loop-{t}"))
                .stack_size(256 * 1024)
                .spawn(move || event_loop.run(&stop))?;
            server.pollers.push(poller);
            server.threads.push(handle);
        }
        Ok(server)
    }

    /// The addresses it listens on, one per requested IP, in order.
    pub fn addrs(&self) -> &[SocketAddrV4] {
        &self.addrs
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in &self.pollers {
            let _ = p.notify();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back; while non-empty the connection waits for writability
    /// instead of reading more.
    pending: Vec<u8>,
    /// The peer sent EOF: shut down and close once `pending` is flushed.
    eof: bool,
}

struct Loop {
    poller: Arc<Poller>,
    listeners: Vec<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    buf: Vec<u8>,
}

impl Loop {
    fn new(poller: Arc<Poller>, listeners: Vec<TcpListener>) -> io::Result<Self> {
        for (key, l) in listeners.iter().enumerate() {
            // SAFETY: the listener stays in `self.listeners` (registered) until the loop is
            // dropped, and `Drop for Loop` deletes it from the poller first.
            unsafe { poller.add_with_mode(l, Event::readable(key), PollMode::Level)? };
        }
        Ok(Loop { poller, listeners, conns: Vec::new(), free: Vec::new(), buf: vec![0u8; BUF_SIZE] })
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN));
        while !stop.load(Ordering::SeqCst) {
            events.clear();
            if self.poller.wait(&mut events, Some(Duration::from_secs(1))).is_err() {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            for ev in events.iter() {
                if ev.key < self.listeners.len() {
                    self.accept(ev.key);
                } else {
                    self.serve(ev.key - self.listeners.len(), ev.readable, ev.writable);
                }
            }
        }
    }

    fn accept(&mut self, l: usize) {
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listeners[l].accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Out of descriptors or similar: back off so level-triggering does not spin.
                    thread::sleep(Duration::from_millis(5));
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let key = slot + self.listeners.len();
            // SAFETY: the stream is stored in `self.conns[slot]` and deleted from the poller in
            // `close` (or `Drop for Loop`) before it is dropped.
            let added = unsafe { self.poller.add_with_mode(&stream, Event::readable(key), PollMode::Level) };
            if added.is_err() {
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn { stream, pending: Vec::new(), eof: false });
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(conn) = self.conns[slot].take() {
            let _ = self.poller.delete(&conn.stream);
            self.free.push(slot);
        }
    }

    fn serve(&mut self, slot: usize, readable: bool, writable: bool) {
        let key = slot + self.listeners.len();
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        if writable && !conn.pending.is_empty() {
            match write_some(&mut conn.stream, &conn.pending) {
                Ok(n) => {
                    conn.pending.drain(..n);
                }
                Err(_) => return self.close(slot),
            }
        }
        if readable && conn.pending.is_empty() && !conn.eof {
            match conn.stream.read(&mut self.buf) {
                Ok(0) => conn.eof = true,
                Ok(n) => match write_some(&mut conn.stream, &self.buf[..n]) {
                    Ok(w) => conn.pending.extend_from_slice(&self.buf[w..n]),
                    Err(_) => return self.close(slot),
                },
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(_) => return self.close(slot),
            }
        }
        if conn.pending.is_empty() {
            if conn.eof {
                let _ = conn.stream.shutdown(Shutdown::Write);
                return self.close(slot);
            }
            if writable {
                let _ = self.poller.modify_with_mode(&conn.stream, Event::readable(key), PollMode::Level);
            }
        } else {
            let _ = self.poller.modify_with_mode(&conn.stream, Event::writable(key), PollMode::Level);
        }
    }
}

/// Writes what the socket takes now; `Ok(0)` when it would block.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Drop for Loop {
    fn drop(&mut self) {
        for l in &self.listeners {
            let _ = self.poller.delete(l);
        }
        for conn in self.conns.iter().flatten() {
            let _ = self.poller.delete(&conn.stream);
        }
    }
}
