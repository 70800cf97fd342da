//! systemd integration, through the `sd-notify` crate: socket activation (listeners passed in
//! `LISTEN_FDS`) and service notifications on `NOTIFY_SOCKET` (`READY=1`, `RELOADING=1` with
//! `MONOTONIC_USEC`, `STOPPING=1`). Without those variables (not started by systemd) every function
//! here does nothing.
//!
//! ```no_run
//! use socks4_server::systemd;
//! let activated = systemd::listeners()?; // None unless started by systemd with sockets
//! // ... bind or take the activated listeners, start serving ...
//! systemd::notify(systemd::State::Ready);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};

/// A state change told to the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Listening and serving (`READY=1`); also the end of a reload.
    Ready,
    /// Reloading the configuration (`RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload`
    /// wants); send [`Ready`](Self::Ready) when done, whether the reload worked or not.
    Reloading,
    /// Draining connections before exit (`STOPPING=1`).
    Stopping,
}

/// Tells the service manager about a state change, if there is one (`NOTIFY_SOCKET` is set).
/// A failure is logged at debug level and otherwise ignored: the service goes on either way.
pub fn notify(state: State) {
    #[cfg(unix)]
    {
        use sd_notify::NotifyState;
        let sent = match state {
            State::Ready => sd_notify::notify(&[NotifyState::Ready]),
            State::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
            State::Reloading => {
                NotifyState::monotonic_usec_now().and_then(|now| sd_notify::notify(&[NotifyState::Reloading, now]))
            }
        };
        if let Err(e) = sent {
            tracing::debug!("cannot notify the service manager ({state:?}): {e}");
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Whether [`listeners`] has already run: the descriptors are taken once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The listening TCP sockets passed by socket activation (`LISTEN_PID` is this process,
/// `LISTEN_FDS` counts them from descriptor 3, as `sd_listen_fds(3)` reads them), made
/// non-blocking and close-on-exec; `None` when there are none. A passed descriptor that is not a
/// listening TCP socket is an error (the unit's `.socket` is wrong: refuse to start). Call it once,
/// early in `main`; a second call is an error.
///
/// # Errors
///
/// An I/O error when a passed descriptor is not a listening TCP socket or cannot be set up, or when
/// called a second time.
pub fn listeners() -> io::Result<Option<Vec<TcpListener>>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("the socket-activation descriptors were already taken"));
    }
    take()
}

#[cfg(unix)]
fn take() -> io::Result<Option<Vec<TcpListener>>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds = sd_notify::listen_fds()?;
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: by the socket-activation protocol (checked by `listen_fds`: LISTEN_PID is this
        // process) the descriptors from 3 to 3 + LISTEN_FDS are open and passed to this process
        // to own; `TAKEN` makes sure they are taken once, so each gets exactly one owner.
        let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
        listeners.push(
            check_listener(socket).map_err(|e| io::Error::new(e.kind(), format!("LISTEN_FDS descriptor {fd}: {e}")))?,
        );
    }
    Ok(Some(listeners))
}

#[cfg(not(unix))]
fn take() -> io::Result<Option<Vec<TcpListener>>> {
    Ok(None)
}

/// Accepts `socket` as a listener if it is a listening TCP socket on IPv4 or IPv6 (what a
/// `ListenStream=` with an address or port gives), and makes it non-blocking.
#[cfg(unix)]
fn check_listener(socket: socket2::Socket) -> io::Result<TcpListener> {
    let unsupported = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("not {what}"));
    if socket.r#type()? != socket2::Type::STREAM {
        return Err(unsupported("a stream socket (ListenStream=)"));
    }
    if socket.local_addr()?.as_socket().is_none() {
        return Err(unsupported("an IPv4 or IPv6 socket"));
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    if !socket.is_listener()? {
        return Err(unsupported("listening (Accept=no)"));
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

/// The addresses `listeners` are bound to, in order.
///
/// # Errors
///
/// The I/O error of the first listener whose address cannot be read.
pub fn local_addrs(listeners: &[TcpListener]) -> io::Result<Vec<SocketAddr>> {
    listeners.iter().map(TcpListener::local_addr).collect()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_listening_tcp_sockets_are_taken() {
        use socket2::{Domain, Socket, Type};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let checked = check_listener(Socket::from(std::os::fd::OwnedFd::from(listener))).unwrap();
        assert!(checked.local_addr().unwrap().ip().is_loopback());
        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        unbound.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        assert!(check_listener(unbound).unwrap_err().to_string().contains("listening"));
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert!(check_listener(udp).unwrap_err().to_string().contains("stream"));
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_listener(Socket::from(std::os::fd::OwnedFd::from(unix))).is_err());
    }
}
