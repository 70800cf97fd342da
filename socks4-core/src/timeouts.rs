//! How long each phase of a handshake may take.

use core::time::Duration;

/// How long each phase of a [`ServerHandshake`](crate::ServerHandshake) may take.
///
/// Build it from [`Timeouts::default`] and the `with_*` methods:
///
/// ```
/// use core::time::Duration;
/// use socks4_core::Timeouts;
/// let t = Timeouts::default().with_handshake(Duration::from_secs(5)).with_bind(Duration::from_secs(30));
/// assert_eq!(t.handshake, Duration::from_secs(5));
/// assert_eq!(t.connect, Duration::from_secs(10)); // the default
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Timeouts {
    /// From accept until the whole request has arrived, and then until the caller decides on it
    /// (default 10 s).
    pub handshake: Duration,
    /// Resolving a SOCKS4a name, and separately connecting to the destination (default 10 s).
    pub connect: Duration,
    /// BIND: waiting for the peer after the first reply (default 2 min).
    pub bind: Duration,
    /// Asking the client's identd, for a request that needs it (default 10 s); see
    /// [`Output::Ident`](crate::Output::Ident).
    pub ident: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            bind: Duration::from_secs(120),
            ident: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// Sets the time for the request to arrive and be decided on.
    #[must_use]
    pub const fn with_handshake(mut self, d: Duration) -> Self {
        self.handshake = d;
        self
    }

    /// Sets the time to resolve a SOCKS4a name, and separately to connect.
    #[must_use]
    pub const fn with_connect(mut self, d: Duration) -> Self {
        self.connect = d;
        self
    }

    /// Sets the time a BIND waits for its peer.
    #[must_use]
    pub const fn with_bind(mut self, d: Duration) -> Self {
        self.bind = d;
        self
    }

    /// Sets the time to get an answer from the client's identd.
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::Timeouts;
    /// assert_eq!(Timeouts::default().ident, Duration::from_secs(10));
    /// assert_eq!(Timeouts::default().with_ident(Duration::from_secs(3)).ident, Duration::from_secs(3));
    /// ```
    #[must_use]
    pub const fn with_ident(mut self, d: Duration) -> Self {
        self.ident = d;
        self
    }
}
