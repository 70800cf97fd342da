//! The bookkeeping of a relay as a sans-IO value ([`Relay`], whose docs hold the overview).

use core::fmt;
use core::time::Duration;

/// One of the two connections of a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The accepted client connection.
    Client,
    /// The outgoing connection (CONNECT) or the accepted peer (BIND).
    Upstream,
}

impl Side {
    /// The other side: where bytes read from this side are written.
    ///
    /// ```
    /// use socks4_core::Side;
    /// assert_eq!(Side::Client.peer(), Side::Upstream);
    /// ```
    pub const fn peer(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// What kind of error a socket reported, as far as the relay cares.
///
/// With `std`, `Fault::from(&io_error)` classifies an `io::Error`: `ConnectionReset`,
/// `ConnectionAborted` and `BrokenPipe` are [`Fault::Reset`], everything else [`Fault::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The peer reset the connection (or it was reset on its behalf).
    Reset,
    /// Any other error (timed out, unreachable, …).
    Other,
}

#[cfg(feature = "std")]
impl From<&std::io::Error> for Fault {
    fn from(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Fault::Reset,
            _ => Fault::Other,
        }
    }
}

/// How a relay ended. Its `Display` is the result every adapter writes in the log line:
///
/// | variant | words |
/// |---|---|
/// | `Closed` | `ok` |
/// | `Idle` | `idle timeout` |
/// | `Reset(Client)` / `Reset(Upstream)` | `client reset` / `upstream reset` |
/// | `Error(Client)` / `Error(Upstream)` | `client error` / `upstream error` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelayEnd {
    /// Both directions reached end of file and each half-close was passed on.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// This side reset the connection; the other side was aborted.
    Reset(Side),
    /// This side failed otherwise; the other side was aborted.
    Error(Side),
}

impl fmt::Display for RelayEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayEnd::Closed => f.write_str("ok"),
            RelayEnd::Idle => f.write_str("idle timeout"),
            RelayEnd::Reset(side) => write!(f, "{side} reset"),
            RelayEnd::Error(side) => write!(f, "{side} error"),
        }
    }
}

/// What the relay wants done next; returned by [`Relay::poll_output`]. An output a driver does not
/// know (the enum may grow) is best treated as [`Done`](RelayOutput::Done): close both sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayOutput {
    /// Shut down the write side of this side's socket (`shutdown(Write)`): the other side reached
    /// end of file and everything it sent was written. Emitted once per direction; after the
    /// second, the next [`Relay::poll_output`] returns [`Done`](RelayOutput::Done)`(Closed)` (same
    /// drain, never a `Wait` in between). An error from the shutdown itself can be ignored (the
    /// peer may be gone); the direction is over.
    Shutdown(Side),
    /// Close this side's socket abortively, so its peer sees a reset (`SO_LINGER` 0, then close),
    /// because the other side reset or failed. [`RelayOutput::Done`] follows.
    Abort(Side),
    /// Nothing to do until I/O happens or the deadline passes; then call
    /// [`Relay::handle_timeout`]. `None`: no idle timeout.
    Wait {
        /// When the relay times out for idleness, on the caller's clock; always later than the
        /// last `now` given with progress (or with [`Relay::handle_timeout`]).
        deadline: Option<Duration>,
    },
    /// The relay is over: close both sockets (any abort was emitted before). Repeats. A driver with
    /// a thread blocked reading a socket can wake it with `shutdown(Read)`; `shutdown(Write)` or
    /// `Both` would send a FIN ahead of an abort's reset.
    Done(RelayEnd),
}

/// One direction's byte counters, named by the side it reads from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    read: u64,
    written: u64,
}

/// The bookkeeping of one relay: byte counts per direction, half-close and reset propagation,
/// and the idle deadline. Small (no heap, a few words) and `no_std`.
///
/// A relay moves bytes both ways between the client and the upstream (the destination, or BIND's
/// peer) with the caller's own I/O (a copy through a buffer, or `splice(2)`). [`Relay`] is told
/// what happened (bytes read and written, end of file, errors, the time) and answers with what
/// to do ([`RelayOutput`]): propagate a half-close as a half-close ([`RelayOutput::Shutdown`]),
/// a reset as a reset ([`RelayOutput::Abort`]), wait with the idle deadline, or stop
/// ([`RelayOutput::Done`] with a [`RelayEnd`] whose `Display` is the log line's result).
///
/// A direction is named by the side it reads from: bytes read from [`Side::Client`] go up to the
/// upstream, bytes read from [`Side::Upstream`] go down to the client.
///
/// Drive it with the caller's I/O: report each read with [`handle_read`](Self::handle_read) and
/// each write with [`handle_written`](Self::handle_written) (early data: read from the client,
/// written upstream first), end of file with [`handle_eof`](Self::handle_eof), errors with
/// [`handle_error`](Self::handle_error), and drain [`poll_output`](Self::poll_output) after each
/// until it returns [`RelayOutput::Wait`] or [`RelayOutput::Done`] (or use
/// [`settle`](Self::settle), which runs that loop). Stop reading a side after its end of file.
/// Time is the caller's, as for the handshake: `now` is a reading of one monotonic clock as a
/// [`Duration`].
///
/// Guarantees a driver can build on:
///
/// - A read that returns 0 bytes is end of file: report it with
///   [`handle_eof`](Self::handle_eof). `handle_read` or `handle_written` with `n == 0` is ignored:
///   it is no progress, so it neither moves the idle deadline nor counts.
/// - The drain that hands out the second [`RelayOutput::Shutdown`] (both directions over) ends
///   with [`RelayOutput::Done`]`(`[`RelayEnd::Closed`]`)`: the very next `poll_output` returns it,
///   never a `Wait`, so a driver that loops until `Wait` or `Done` closes both sockets in the same
///   turn.
/// - An [`RelayOutput::Abort`] is handed out once, before the `Done` that follows it.
/// - With an idle timeout, the `Wait` deadline is always later than the last `now` given with
///   progress (or with [`handle_timeout`](Self::handle_timeout)), so a driver that sleeps until
///   it never spins on a deadline already past; without one (`idle` zero) it is `None`.
///
/// ## Example: a request, a half-close and an answer
///
/// ```
/// use core::time::Duration;
/// use socks4_core::{Relay, RelayEnd, RelayOutput, Side};
///
/// let (t0, idle) = (Duration::ZERO, Duration::from_secs(60));
/// let mut relay = Relay::new(t0, idle);
/// assert_eq!(relay.poll_output(), RelayOutput::Wait { deadline: Some(t0 + idle) });
///
/// // The client sends a request and half-closes; it reaches the upstream, then its FIN does.
/// let t1 = Duration::from_secs(1);
/// relay.handle_read(t1, Side::Client, 78);
/// relay.handle_eof(t1, Side::Client);
/// assert_eq!(relay.poll_output(), RelayOutput::Wait { deadline: Some(t1 + idle) }); // 78 in flight
/// relay.handle_written(t1, Side::Client, 78);
/// assert_eq!(relay.poll_output(), RelayOutput::Shutdown(Side::Upstream));
///
/// // The upstream answers and closes: its FIN goes on to the client, and the relay is done.
/// relay.handle_read(t1, Side::Upstream, 1256);
/// relay.handle_written(t1, Side::Upstream, 1256);
/// relay.handle_eof(t1, Side::Upstream);
/// assert_eq!(relay.poll_output(), RelayOutput::Shutdown(Side::Client));
/// assert_eq!(relay.poll_output(), RelayOutput::Done(RelayEnd::Closed));
/// assert_eq!((relay.bytes(Side::Client), relay.bytes(Side::Upstream)), (78, 1256));
/// ```
///
/// ## Example: a reset passed on as a reset
///
/// ```
/// use core::time::Duration;
/// use socks4_core::{Fault, Relay, RelayEnd, RelayOutput, Side};
///
/// let t = Duration::from_secs(1);
/// let mut relay = Relay::new(t, Duration::from_secs(300));
/// // Early data: read with the request, written upstream first.
/// relay.handle_read(t, Side::Client, 5);
/// relay.handle_written(t, Side::Client, 5);
/// // The upstream sends 100 bytes, then resets the connection.
/// relay.handle_read(t, Side::Upstream, 100);
/// relay.handle_written(t, Side::Upstream, 100);
/// relay.handle_error(t, Side::Upstream, Fault::Reset);
/// assert_eq!(relay.poll_output(), RelayOutput::Abort(Side::Client)); // reset the client too
/// assert_eq!(relay.poll_output(), RelayOutput::Done(RelayEnd::Reset(Side::Upstream)));
/// assert_eq!(RelayEnd::Reset(Side::Upstream).to_string(), "upstream reset");
/// assert_eq!((relay.bytes(Side::Client), relay.bytes(Side::Upstream)), (5, 100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Per direction, indexed by [`Side::index`] of the side read from.
    counts: [Counts; 2],
    /// Per direction: the source reached end of file.
    eof: [bool; 2],
    /// Per direction: the shutdown of the destination was emitted (the direction is over).
    shut: [bool; 2],
    /// The idle timeout in nanoseconds (0: none); nanoseconds keep the value small.
    idle: u64,
    /// Last progress plus `idle`, in nanoseconds on the caller's clock; unused without a timeout.
    deadline: u64,
    /// An abort to emit before `Done`.
    abort: Option<Side>,
    end: Option<RelayEnd>,
}

impl Relay {
    /// A relay starting at `now` that ends after `idle` without progress either way
    /// ([`Duration::ZERO`]: never).
    pub fn new(now: Duration, idle: Duration) -> Self {
        Self {
            counts: [Counts::default(); 2],
            eof: [false; 2],
            shut: [false; 2],
            idle: nanos(idle),
            deadline: nanos(now).saturating_add(nanos(idle)),
            abort: None,
            end: None,
        }
    }

    // ---- inputs -------------------------------------------------------------------------------

    /// `n` bytes were read from `from` (to be written to `from.peer()`). Ignored after `from`'s
    /// end of file or the end of the relay, and with `n == 0`: zero bytes is no progress (the idle
    /// deadline stays), and a read that returned 0 is end of file ([`handle_eof`](Self::handle_eof)).
    pub fn handle_read(&mut self, now: Duration, from: Side, n: usize) {
        if self.end.is_some() || self.eof[from.index()] || n == 0 {
            return;
        }
        let dir = &mut self.counts[from.index()];
        dir.read = dir.read.saturating_add(n as u64);
        self.progress(now);
    }

    /// `n` of the bytes read from `from` were written to `from.peer()`. At most the bytes read
    /// and not yet written count (more would be a caller bug); ignored after the relay ended, and
    /// with `n == 0` (no progress: the idle deadline stays).
    pub fn handle_written(&mut self, now: Duration, from: Side, n: usize) {
        if self.end.is_some() || n == 0 {
            return;
        }
        let dir = &mut self.counts[from.index()];
        dir.written += (n as u64).min(dir.read - dir.written);
        self.progress(now);
    }

    /// Reading `from` returned end of file: once everything read from it is written, its peer's
    /// write side is to be shut down ([`RelayOutput::Shutdown`]).
    pub fn handle_eof(&mut self, now: Duration, from: Side) {
        if self.end.is_some() || self.eof[from.index()] {
            return;
        }
        self.eof[from.index()] = true;
        self.progress(now);
    }

    /// A read from or a write to `on`'s socket failed. The relay ends: the other side is
    /// aborted ([`RelayOutput::Abort`]), so a reset reaches it as a reset and an error is never
    /// passed on as a clean end of file. Only the first error after the start counts.
    pub fn handle_error(&mut self, _now: Duration, on: Side, fault: Fault) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(match fault {
            Fault::Reset => RelayEnd::Reset(on),
            Fault::Other => RelayEnd::Error(on),
        });
        self.abort = Some(on.peer());
    }

    /// The deadline from [`RelayOutput::Wait`] may have passed: at or after it the relay ends
    /// with [`RelayEnd::Idle`]; earlier calls change nothing.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.end.is_none() && self.idle != 0 && nanos(now) >= self.deadline {
            self.end = Some(RelayEnd::Idle);
        }
    }

    // ---- outputs ------------------------------------------------------------------------------

    /// What to do next; call after every input until it returns `Wait` or `Done`.
    pub fn poll_output(&mut self) -> RelayOutput {
        if let Some(side) = self.abort.take() {
            return RelayOutput::Abort(side);
        }
        if let Some(end) = self.end {
            return RelayOutput::Done(end);
        }
        for from in [Side::Client, Side::Upstream] {
            let i = from.index();
            if self.eof[i] && !self.shut[i] && self.counts[i].written == self.counts[i].read {
                self.shut[i] = true;
                if self.shut == [true; 2] {
                    self.end = Some(RelayEnd::Closed);
                }
                return RelayOutput::Shutdown(from.peer());
            }
        }
        RelayOutput::Wait { deadline: self.deadline() }
    }

    /// Drains [`poll_output`](Self::poll_output), the loop every driver runs after each input:
    /// performs each [`Shutdown`](RelayOutput::Shutdown) with `shutdown` and each
    /// [`Abort`](RelayOutput::Abort) with `abort`, until the relay waits (`None`: go on with I/O
    /// and the [`deadline`](Self::deadline)) or is over (`Some(end)`: close both sockets).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Relay, RelayEnd, Side};
    /// let t = Duration::ZERO;
    /// let mut relay = Relay::new(t, Duration::from_secs(60));
    /// relay.handle_eof(t, Side::Upstream);
    /// let mut shut = None;
    /// assert_eq!(relay.settle(|side| shut = Some(side), |_| unreachable!()), None);
    /// assert_eq!(shut, Some(Side::Client), "the upstream's EOF: half-close the client");
    /// relay.handle_eof(t, Side::Client);
    /// assert_eq!(relay.settle(|_| {}, |_| {}), Some(RelayEnd::Closed));
    /// ```
    pub fn settle(&mut self, mut shutdown: impl FnMut(Side), mut abort: impl FnMut(Side)) -> Option<RelayEnd> {
        loop {
            match self.poll_output() {
                RelayOutput::Shutdown(side) => shutdown(side),
                RelayOutput::Abort(side) => abort(side),
                RelayOutput::Wait { .. } => return None,
                RelayOutput::Done(end) => return Some(end),
            }
        }
    }

    /// Bytes read from `from` and written to its peer so far (early data included): the log
    /// line's `up` is `bytes(Side::Client)`, its `down` is `bytes(Side::Upstream)`.
    pub fn bytes(&self, from: Side) -> u64 {
        self.counts[from.index()].written
    }

    /// The idle deadline, `None` without an idle timeout or once the relay has ended.
    pub fn deadline(&self) -> Option<Duration> {
        (self.end.is_none() && self.idle != 0).then_some(Duration::from_nanos(self.deadline))
    }

    /// Whether reading `from` is still wanted: not after its end of file or the relay's end.
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Relay, Side};
    /// let mut relay = Relay::new(Duration::ZERO, Duration::from_secs(1));
    /// relay.handle_eof(Duration::ZERO, Side::Client);
    /// assert!(!relay.wants_read(Side::Client));
    /// assert!(relay.wants_read(Side::Upstream));
    /// ```
    pub fn wants_read(&self, from: Side) -> bool {
        self.end.is_none() && !self.eof[from.index()]
    }

    /// How the relay ended, once it has: the value [`RelayOutput::Done`] carries. It can be `Some`
    /// before `poll_output` has handed out a pending [`RelayOutput::Abort`], so drain that first;
    /// `None` while the relay goes on. For drivers that must know whether to keep moving bytes
    /// (a thread per direction, a pump with bytes still buffered).
    ///
    /// ```
    /// use core::time::Duration;
    /// use socks4_core::{Fault, Relay, RelayEnd, RelayOutput, Side};
    /// let mut relay = Relay::new(Duration::ZERO, Duration::ZERO);
    /// assert_eq!(relay.end(), None);
    /// relay.handle_error(Duration::ZERO, Side::Upstream, Fault::Reset);
    /// assert_eq!(relay.end(), Some(RelayEnd::Reset(Side::Upstream)));
    /// assert_eq!(relay.poll_output(), RelayOutput::Abort(Side::Client));
    /// ```
    pub fn end(&self) -> Option<RelayEnd> {
        self.end
    }

    fn progress(&mut self, now: Duration) {
        self.deadline = self.deadline.max(nanos(now).saturating_add(self.idle));
    }
}

/// A duration in nanoseconds, saturating (at about 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    const T0: Duration = Duration::from_secs(100);
    const SEC: Duration = Duration::from_secs(1);
    const IDLE: Duration = Duration::from_secs(10);

    fn relay() -> Relay {
        Relay::new(T0, IDLE)
    }

    fn wait(at: Duration) -> RelayOutput {
        RelayOutput::Wait { deadline: Some(at) }
    }

    #[test]
    fn counts_are_bytes_written() {
        let mut r = relay();
        r.handle_read(T0, Side::Client, 10);
        r.handle_written(T0, Side::Client, 4);
        assert_eq!(r.bytes(Side::Client), 4);
        r.handle_written(T0, Side::Client, 6);
        r.handle_read(T0, Side::Upstream, 7);
        r.handle_written(T0, Side::Upstream, 7);
        assert_eq!((r.bytes(Side::Client), r.bytes(Side::Upstream)), (10, 7));
        assert_eq!(r.poll_output(), wait(T0 + IDLE));
    }

    #[test]
    fn writing_more_than_was_read_is_capped() {
        let mut r = relay();
        r.handle_read(T0, Side::Client, 3);
        r.handle_written(T0, Side::Client, 5);
        assert_eq!(r.bytes(Side::Client), 3);
        r.handle_written(T0, Side::Upstream, 5);
        assert_eq!(r.bytes(Side::Upstream), 0);
    }

    #[test]
    fn half_close_waits_for_bytes_in_flight_and_is_emitted_once() {
        let mut r = relay();
        r.handle_read(T0, Side::Upstream, 5);
        r.handle_eof(T0 + SEC, Side::Upstream);
        assert_eq!(r.poll_output(), wait(T0 + SEC + IDLE));
        assert!(!r.wants_read(Side::Upstream));
        r.handle_written(T0 + SEC, Side::Upstream, 5);
        assert_eq!(r.poll_output(), RelayOutput::Shutdown(Side::Client));
        assert_eq!(r.poll_output(), wait(T0 + SEC + IDLE));
        r.handle_eof(T0 + SEC, Side::Upstream);
        r.handle_read(T0 + SEC, Side::Upstream, 9);
        assert_eq!(r.poll_output(), wait(T0 + SEC + IDLE), "nothing after the EOF counts");
        assert_eq!(r.bytes(Side::Upstream), 5);
        // The other direction goes on, then ends: done.
        r.handle_read(T0 + SEC * 2, Side::Client, 1);
        r.handle_written(T0 + SEC * 2, Side::Client, 1);
        r.handle_eof(T0 + SEC * 2, Side::Client);
        assert_eq!(r.poll_output(), RelayOutput::Shutdown(Side::Upstream));
        assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Closed));
        assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Closed), "repeats");
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn both_eofs_at_once_give_two_shutdowns_then_done() {
        let mut r = relay();
        r.handle_eof(T0, Side::Client);
        r.handle_eof(T0, Side::Upstream);
        assert_eq!(r.poll_output(), RelayOutput::Shutdown(Side::Upstream));
        assert_eq!(r.poll_output(), RelayOutput::Shutdown(Side::Client));
        assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Closed));
    }

    #[test]
    fn a_reset_aborts_the_other_side() {
        for side in [Side::Client, Side::Upstream] {
            let mut r = relay();
            r.handle_read(T0, side.peer(), 4);
            r.handle_error(T0, side, Fault::Reset);
            assert_eq!(r.poll_output(), RelayOutput::Abort(side.peer()));
            assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Reset(side)));
            assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Reset(side)));
            r.handle_error(T0, side.peer(), Fault::Other);
            r.handle_written(T0, side.peer(), 4);
            assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Reset(side)), "the first error counts");
            assert_eq!(r.bytes(side.peer()), 0);
            assert!(!r.wants_read(Side::Client) && !r.wants_read(Side::Upstream));
        }
    }

    #[test]
    fn other_errors_abort_too_and_beat_a_pending_half_close() {
        let mut r = relay();
        r.handle_eof(T0, Side::Client);
        r.handle_error(T0, Side::Upstream, Fault::Other);
        assert_eq!(r.poll_output(), RelayOutput::Abort(Side::Client));
        assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Error(Side::Upstream)));
    }

    #[test]
    fn idle_deadline_moves_with_progress_only() {
        let mut r = relay();
        r.handle_timeout(T0 + IDLE - SEC);
        assert_eq!(r.poll_output(), wait(T0 + IDLE), "early timer: no change");
        r.handle_read(T0 + SEC * 3, Side::Client, 1);
        assert_eq!(r.poll_output(), wait(T0 + SEC * 3 + IDLE));
        r.handle_read(T0 + SEC, Side::Client, 1);
        assert_eq!(r.poll_output(), wait(T0 + SEC * 3 + IDLE), "an older clock reading never moves it back");
        r.handle_read(T0 + SEC * 4, Side::Client, 0);
        assert_eq!(r.poll_output(), wait(T0 + SEC * 3 + IDLE), "zero bytes is no progress");
        r.handle_timeout(T0 + SEC * 3 + IDLE);
        assert_eq!(r.poll_output(), RelayOutput::Done(RelayEnd::Idle));
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn zero_idle_means_no_timeout() {
        let mut r = Relay::new(T0, Duration::ZERO);
        r.handle_timeout(T0 + SEC * 1_000_000);
        assert_eq!(r.poll_output(), RelayOutput::Wait { deadline: None });
    }

    #[test]
    fn end_words() {
        let words = [
            (RelayEnd::Closed, "ok"),
            (RelayEnd::Idle, "idle timeout"),
            (RelayEnd::Reset(Side::Client), "client reset"),
            (RelayEnd::Reset(Side::Upstream), "upstream reset"),
            (RelayEnd::Error(Side::Client), "client error"),
            (RelayEnd::Error(Side::Upstream), "upstream error"),
        ];
        for (end, text) in words {
            assert_eq!(end.to_string(), text);
        }
    }

    #[test]
    fn the_value_is_small() {
        assert!(core::mem::size_of::<Relay>() <= 56, "{}", core::mem::size_of::<Relay>());
    }

    #[cfg(feature = "std")]
    #[test]
    fn io_errors_classify() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::ConnectionReset, ErrorKind::ConnectionAborted, ErrorKind::BrokenPipe] {
            assert_eq!(Fault::from(&Error::from(kind)), Fault::Reset);
        }
        assert_eq!(Fault::from(&Error::from(ErrorKind::TimedOut)), Fault::Other);
        #[cfg(target_os = "linux")]
        assert_eq!(Fault::from(&Error::from_raw_os_error(104)), Fault::Reset, "ECONNRESET");
    }
}
