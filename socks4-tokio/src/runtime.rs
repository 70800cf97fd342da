//! The tokio implementation of [`socks4_async::Runtime`]: the driver's connections run on tokio's
//! current-thread runtimes (one per worker, see `pool`).
//!
//! Reads and writes are readiness-level: wait for `readable`/`writable`, then one non-blocking
//! `try_read`/`try_write`. tokio caches a socket's readiness; every `WouldBlock` goes through
//! tokio's `try_*`/`try_io`, which clears it, so a stale readiness costs one call and then a real
//! wait, never a spin.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socks4_async::{Interest, Runtime};
use tokio::net::{TcpListener, TcpStream};

/// The tokio runtime, for [`socks4_async`]'s driver (`serve_connection`, with the `server` feature): run it inside a tokio runtime with
/// the `net` and `time` drivers (a current-thread one with a `LocalSet`, like the server's
/// workers, or any other).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokio;

impl Runtime for Tokio {
    type Stream = TcpStream;
    type Listener = TcpListener;

    fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(stream)
    }

    async fn connect_socket(socket: socket2::Socket, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        // Non-blocking already, and not connected: tokio's connect starts it and waits.
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(connected) => connected,
            Err(_elapsed) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        tokio::task::spawn_blocking(work).await.ok()
    }

    async fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
        listener.accept().await
    }

    fn listener_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn sleep(duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }

    fn socket(stream: &TcpStream) -> socket2::SockRef<'_> {
        socket2::SockRef::from(stream)
    }

    async fn read<'a>(stream: &'a TcpStream, buf: &'a mut [u8]) -> io::Result<usize> {
        loop {
            stream.readable().await?;
            match stream.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    }

    async fn write<'a>(stream: &'a TcpStream, buf: &'a [u8]) -> io::Result<usize> {
        loop {
            stream.writable().await?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    }

    fn readable(stream: &TcpStream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(stream.readable())
    }

    fn writable(stream: &TcpStream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(stream.writable())
    }

    fn peek(stream: &TcpStream) -> Option<impl Future<Output = io::Result<usize>>> {
        Some(async move { stream.peek(&mut [0]).await })
    }

    fn try_io<T>(stream: &TcpStream, interest: Interest, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let interest = match interest {
            Interest::Readable => tokio::io::Interest::READABLE,
            Interest::Writable => tokio::io::Interest::WRITABLE,
        };
        stream.try_io(interest, op)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn fd(stream: &TcpStream) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(stream.as_fd())
    }
}
