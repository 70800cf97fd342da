//! The async-std implementation of [`Runtime`] (feature `async-std`).
//!
//! async-std is deprecated upstream in favour of smol; this exists so the server can run inside
//! programs that still use it. It cannot wait for readability without a read: the relay copies
//! (with its buffer held while it waits) and never splices; its `peek` waits by itself, so the
//! handshake still watches its client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream, ToSocketAddrs};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use socks4_async::Runtime;

use crate::runtime::BlockOn;

/// The async-std runtime: its reactor, timers, sockets and resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl BlockOn for AsyncStd {
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }

    // async-std runs on async-io's reactor.
    crate::runtime::async_io_accept!();
}

impl Runtime for AsyncStd {
    type Stream = TcpStream;
    type Listener = TcpListener;

    fn from_std(stream: std::net::TcpStream) -> io::Result<Self::Stream> {
        // async-std's conversion panics if the reactor cannot register the socket; turn that into
        // an error rather than losing the worker.
        stream.set_nonblocking(true)?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| TcpStream::from(stream)))
            .map_err(|_| io::Error::other("could not register the socket with the reactor"))
    }

    async fn connect_socket(socket: socket2::Socket, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        // async-std cannot wait for writability: the connect is waited for with async-io (the
        // reactor async-std runs on), then the socket is handed to async-std.
        let connect = async {
            let stream = crate::runtime::connect_async_io(socket, addr).await?;
            Self::from_std(stream.into_inner()?)
        };
        crate::runtime::within::<Self, _>(timeout, connect).await
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs().await?.collect())
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        Some(async_std::task::spawn_blocking(work).await)
    }

    async fn listen(addr: SocketAddr) -> io::Result<Self::Listener> {
        TcpListener::bind(addr).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        listener.accept().await
    }

    fn listener_addr(listener: &Self::Listener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn sleep(duration: Duration) {
        async_std::task::sleep(duration).await;
    }

    fn socket(stream: &Self::Stream) -> socket2::SockRef<'_> {
        socket2::SockRef::from(stream)
    }

    async fn read<'a>(stream: &'a Self::Stream, buf: &'a mut [u8]) -> io::Result<usize> {
        let mut stream = stream;
        stream.read(buf).await
    }

    async fn write<'a>(stream: &'a Self::Stream, buf: &'a [u8]) -> io::Result<usize> {
        let mut stream = stream;
        stream.write(buf).await
    }

    fn peek(stream: &Self::Stream) -> Option<impl Future<Output = io::Result<usize>>> {
        Some(async move { stream.peek(&mut [0]).await })
    }
}
