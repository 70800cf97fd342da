//! Targets for the fault scenarios: one that resets after sending, one that reports how each
//! connection ended (end of file or reset).

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Acceptor, BUF_SIZE};
use crate::checksum::pattern;

/// Closes `conn` abortively: `SO_LINGER` 0, then close, which sends a reset.
pub fn reset(conn: TcpStream) {
    let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
    drop(conn);
}

/// Sends `len` deterministic bytes ([`pattern`] with `seed`), waits for one byte back (the client
/// saying it read them all, so none is in flight), then resets the connection.
#[derive(Debug)]
pub struct ResetSource {
    acceptor: Acceptor,
}

impl ResetSource {
    /// Starts a reset source on `127.0.0.1:0`.
    pub fn start(len: u64, seed: u64) -> io::Result<Self> {
        let handler = move |mut conn: TcpStream| {
            let mut buf = vec![0u8; BUF_SIZE];
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(buf.len() as u64) as usize;
                pattern(seed, off, &mut buf[..n]);
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
                off += n as u64;
            }
            let mut ack = [0u8; 1];
            let _ = conn.read(&mut ack);
            reset(conn);
        };
        Ok(ResetSource { acceptor: Acceptor::start("reset-source", Arc::new(handler))? })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.acceptor.addr
    }
}

/// How a connection ended, as the target's reads saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A clean end of file.
    Eof,
    /// `ECONNRESET` (or `ECONNABORTED`).
    Reset,
    /// Any other error (the text), e.g. a timeout.
    Other(String),
}

/// Echoes everything back and reports how each connection ended.
#[derive(Debug)]
pub struct EndWatcher {
    acceptor: Acceptor,
    endings: Mutex<Receiver<Ending>>,
}

impl EndWatcher {
    /// Starts an end watcher on `127.0.0.1:0`.
    pub fn start() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let handler = move |mut conn: TcpStream| {
            let mut buf = vec![0u8; BUF_SIZE];
            let ending = loop {
                match conn.read(&mut buf) {
                    Ok(0) => break Ending::Eof,
                    Ok(n) => {
                        if let Err(e) = conn.write_all(&buf[..n]) {
                            break classify(&e);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break classify(&e),
                }
            };
            let _ = tx.lock().unwrap_or_else(PoisonError::into_inner).send(ending);
        };
        Ok(EndWatcher { acceptor: Acceptor::start("end-watcher", Arc::new(handler))?, endings: Mutex::new(rx) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.acceptor.addr
    }

    /// How the next connection ended, waiting at most `timeout`.
    pub fn recv_ending(&self, timeout: Duration) -> Option<Ending> {
        self.endings.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(timeout).ok()
    }
}

fn classify(e: &io::Error) -> Ending {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Ending::Reset,
        _ => Ending::Other(e.to_string()),
    }
}
