//! [`SmolLocal`]: the server pool's default runtime, a reactor per worker thread.
//!
//! # Why
//! [`Smol`](crate::Smol) runs every worker on async-io, whose reactor is one per process: whichever
//! thread holds it polls epoll for all of them and wakes the other workers' tasks across threads,
//! and it re-arms each socket's interest with an `epoll_ctl` per wait (oneshot mode). With the same
//! connection driver as socks4-tokio, the smol server reached 0.77× tokio's handshake rate; `perf
//! stat` during `socks4-load rate` (`--workers 2`) counted 1.7–2.9 context switches and 0.25–0.31
//! ms of CPU per handshake against tokio's 1.4–1.5 and 0.22–0.23 ms, and `perf record` showed the
//! cross-thread wake-ups and async-io's `Ready::poll`/`insert_io`/`remove_io`.
//!
//! Here each worker thread owns one epoll instance (Linux; through rustix's safe calls) and a
//! thread-local registry of its sockets, as tokio's current-thread runtimes and mio do:
//! - A socket is added once, edge-triggered, for both directions, and deleted when it is dropped:
//!   no `epoll_ctl` per wait. Each source caches its readiness (a bit per direction, set by an
//!   event, cleared by an operation that returns `WouldBlock`), with the wakers of the tasks waiting
//!   on each direction, so a read and a write (or a `peek`) may wait on one stream at once.
//! - [`BlockOn::block_on`] polls its future (the worker's `LocalExecutor`) until it has nothing
//!   left to run, then waits on the poller until the next event or the earliest timer of the
//!   thread's wheel (`crate::timers`, with no `async_io::Timer` at all), wakes the tasks the events
//!   and due timers name, and polls again. Events are only ever delivered to their own thread.
//! - A wake from another thread (the acceptor's channel, a `blocking::unblock` completion, the
//!   resolver) writes the worker's eventfd only when the worker is asleep in `epoll_pwait`.
//!
//! # Measured
//! Release builds, `--workers 2`, `perf stat -e task-clock,context-switches -p SERVER` during a 4 s
//! `socks4-load rate --concurrency 64`, alternating rounds on a shared 2-core VM, medians; CPU and
//! context switches per handshake. "main" is the binary before this runtime (commit 67cc439),
//! "async-io" this build with `SOCKS4_SMOL_RUNTIME=async-io` (`spawn_on::<Smol>()`):
//!
//! | pool | quiet machine, 4 rounds: handshakes/s | CPU ms | switches | busy machine, 6 rounds: handshakes/s | CPU ms | switches |
//! |---|---:|---:|---:|---:|---:|---:|
//! | socks4-tokio | 6,927 | 0.144 | 1.69 | 4,941 | 0.202 | 1.52 |
//! | smol, main | 6,038 (0.87×) | 0.172 | 2.27 | – | – | – |
//! | smol, async-io | 6,300 (0.91×) | 0.166 | 2.22 | 4,231 (0.86×) | 0.234 | 2.52 |
//! | `SmolLocal` | 6,577 (0.95×) | 0.151 | 1.72 | 4,990 (1.01×) | 0.197 | 1.58 |
//!
//! `bench/compare.sh` (`ROUNDS=3 RATE_SECS=2 BULK_MIB=32 HOLD_K=2000`; rates spread up to ±20%
//! between rounds on that machine): on the quiet machine (`SERVERS="tokio smol%old smol"`)
//! `SmolLocal` made 8,128 handshakes/s against tokio's 7,925 (1.03×) and main's 7,391 (0.93×), bulk
//! 2,372 MiB/s (tokio 2,529, main 2,312), and held a relayed connection in 2.68 KiB of RSS (tokio
//! 4.31, main 4.10); two busier runs gave 0.92× and 1.10× tokio's handshakes and 2.7 KiB. A
//! registered socket is a descriptor, a slab key and an `Rc`, with no `Arc<Source>` and its mutex
//! and waker slabs.
//!
//! The first version of this runtime waited through the `polling` crate, whose every wait is five
//! system calls (`timerfd_settime` and an `epoll_ctl` for its timer, `epoll_pwait`, a read and an
//! `epoll_ctl` for its notifier). It now calls epoll itself, as mio does: one `epoll_pwait` per
//! wait, its timeout in milliseconds rounded up (a timer never fires early), and a read of the
//! eventfd only after another thread woke it; sockets are watched for `EPOLLRDHUP` too. Measured
//! against the `polling` version, `ROUNDS=3 RATE_SECS=3 BULK_MIB=64 HOLD_K=5000
//! SERVERS="tokio smol%old smol" bench/compare.sh` on a quiet machine: tokio 8,270 handshakes/s,
//! `polling` 8,301, epoll 8,413 (ahead of tokio in each round); bulk 2,400 / 2,515 / 2,408 MiB/s;
//! 4.24 / 2.64 / 2.63 KiB per held connection. A read that does not fill its buffer forgets the
//! read readiness (as tokio's streams do), so the next read waits for an event instead of trying a
//! read that returns `WouldBlock`; an end of file seen stays readable. Against the build
//! before it, `ROUNDS=3 RATE_SECS=3 BULK_MIB=64 HOLD_K=2000 SERVERS="tokio smol%old smol"
//! bench/compare.sh` (`bench/smol-short-read.md`): 8,616 handshakes/s against 8,443 (ahead in each
//! round, +1–4%; tokio 8,404), bulk 1,773 against 1,457 MiB/s (ahead in 2 of 3 rounds), 2.68 KiB
//! per held connection either way.
//!
//! Sources are `!Send` (they hold the thread's reactor), so a stream cannot leave its thread; one
//! registered outside `SmolLocal::block_on` (or polled while none runs on its thread) fails its
//! waits with an error instead of hanging. Nesting another runtime's `block_on` inside this one and
//! awaiting these streams there would hang: the outer loop is blocked.
//!
//! # No unsafe
//! rustix's `epoll::add` is safe (the kernel forgets a descriptor that closes; a stale event would
//! name a slab key that is gone or reused, and costs a spurious wake at most), so the crate is
//! `#![forbid(unsafe_code)]`. A socket is still deleted from its epoll in `Registered`'s `Drop`,
//! before the descriptor closes.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};
use slab::Slab;
use socks4_async::{Interest, Runtime};

use crate::runtime::BlockOn;

/// The readiness bit of each direction.
const READ: u8 = 1;
const WRITE: u8 = 2;
/// The peer closed or the socket failed (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`): readable from then
/// on. Kept apart from [`READ`] so that a short read may forget [`READ`] (the data is drained)
/// without forgetting an end of file that came with the data: no second event would announce it.
const READ_CLOSED: u8 = 4;
/// TCP urgent data came (`EPOLLPRI`): readable until a read would block, even after a short read.
/// A read stops short at urgent data's mark with bytes still behind it, and no new event comes
/// for bytes already there, so forgetting [`READ`] then would stall the stream.
const URGENT: u8 = 8;

/// Events taken per wait.
const EVENTS: usize = 1024;

/// The notifier's key (no slab key reaches it).
const NOTIFY: u64 = u64::MAX;

/// smol's executor on a reactor of the worker's own: one epoll instance per thread (Linux),
/// edge-triggered sockets with cached readiness, the thread's timer wheel driven by the poller's
/// timeout (see [the module](self)). Resolution is async-net's, blocking work runs on smol's
/// thread pool, as with [`Smol`](crate::Smol). The server's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolLocal;

/// A connected TCP stream registered with its thread's reactor ([`SmolLocal`]'s stream).
#[derive(Debug)]
pub struct LocalStream(Registered<TcpStream>);

/// A TCP listener registered with its thread's reactor ([`SmolLocal`]'s listener: BIND's, and the
/// server's accept loops').
#[derive(Debug)]
pub struct LocalListener(Registered<TcpListener>);

impl LocalStream {
    /// The std stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.0.io
    }
}

impl LocalListener {
    /// The std listener.
    pub fn get_ref(&self) -> &TcpListener {
        &self.0.io
    }
}

/// One thread's poller and the readiness of its sources.
struct Reactor {
    poller: Arc<Epoll>,
    sources: RefCell<Slab<Source>>,
    events: RefCell<Vec<epoll::Event>>,
    /// Wakers taken from the sources, woken once no borrow is held.
    due: RefCell<Vec<Waker>>,
    /// How many `SmolLocal::block_on` calls are driving it (nested calls count).
    driving: Cell<usize>,
}

thread_local! {
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor").field("sources", &self.sources.borrow().len()).finish_non_exhaustive()
    }
}

impl Reactor {
    /// This thread's reactor, made on first use.
    fn current() -> io::Result<Rc<Reactor>> {
        REACTOR.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(r) = r.as_ref() {
                return Ok(Rc::clone(r));
            }
            let reactor = Rc::new(Reactor {
                poller: Arc::new(Epoll::new()?),
                sources: RefCell::new(Slab::new()),
                events: RefCell::new(Vec::with_capacity(EVENTS)),
                due: RefCell::new(Vec::new()),
                driving: Cell::new(0),
            });
            *r = Some(Rc::clone(&reactor));
            Ok(reactor)
        })
    }

    /// Adds `io` to the poller under `key`, edge-triggered for both directions.
    fn register(&self, io: &impl AsFd, key: usize) -> io::Result<()> {
        self.poller.add(io, key)
    }

    /// Waits for events (at most `timeout`; `None`: until one comes or a notification).
    fn wait(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.poller.wait(&mut self.events.borrow_mut(), timeout)
    }

    /// Records the events of the last [`wait`](Self::wait) in their sources and wakes their tasks.
    fn dispatch(&self) {
        let mut due = std::mem::take(&mut *self.due.borrow_mut());
        {
            let events = self.events.borrow();
            let mut sources = self.sources.borrow_mut();
            for event in events.iter() {
                let (key, flags) = (event.data.u64(), event.flags);
                if key == NOTIFY {
                    self.poller.drain_notifications();
                    continue;
                }
                let Some(source) = usize::try_from(key).ok().and_then(|k| sources.get_mut(k)) else { continue };
                // A closed or failed socket is ready both ways: the operation then says what.
                let hangup = flags.intersects(EventFlags::HUP | EventFlags::ERR);
                if hangup || flags.contains(EventFlags::RDHUP) {
                    source.ready |= READ_CLOSED;
                }
                if flags.contains(EventFlags::PRI) {
                    source.ready |= URGENT;
                }
                if hangup || flags.intersects(EventFlags::IN | EventFlags::RDHUP | EventFlags::PRI) {
                    source.ready |= READ;
                    source.wakers[0].take_into(&mut due);
                }
                if hangup || flags.contains(EventFlags::OUT) {
                    source.ready |= WRITE;
                    source.wakers[1].take_into(&mut due);
                }
            }
        }
        for waker in due.drain(..) {
            waker.wake();
        }
        *self.due.borrow_mut() = due;
    }
}

/// One thread's epoll instance, and the eventfd other threads wake it with: one `epoll_pwait`
/// per wait (with its timeout in it), one `epoll_ctl` per socket's life, all through rustix's safe
/// calls (epoll forgets a descriptor that closes, so nothing is unsound if one closed first).
struct Epoll {
    epoll: OwnedFd,
    notify: OwnedFd,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let notify = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        // Edge-triggered: every write is an event, whether or not the counter was read.
        epoll::add(&epoll, &notify, EventData::new_u64(NOTIFY), EventFlags::IN | EventFlags::ET)?;
        Ok(Epoll { epoll, notify })
    }

    /// Watches `io` for both directions, its hang-up and urgent data, edge-triggered, under `key`.
    fn add(&self, io: &impl AsFd, key: usize) -> io::Result<()> {
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::PRI | EventFlags::ET;
        Ok(epoll::add(&self.epoll, io, EventData::new_u64(key as u64), flags)?)
    }

    fn delete(&self, io: &impl AsFd) -> io::Result<()> {
        Ok(epoll::delete(&self.epoll, io)?)
    }

    /// Wakes the thread waiting in [`wait`](Self::wait) (or its next wait).
    fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.notify, &1u64.to_ne_bytes()) {
            // The counter is full: a wake is pending already.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Resets the eventfd's counter (its events came).
    fn drain_notifications(&self) {
        let _ = rustix::io::read(&self.notify, &mut [0u8; 8]);
    }

    /// Waits for events into `events` (at most `timeout`; `None`: until one comes). An interrupted
    /// wait returns no events.
    fn wait(&self, events: &mut Vec<epoll::Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        // Past what a Timespec holds: the longest one (never reached: the wheel's idle wait is an hour).
        let timeout = timeout.map(|d| Timespec::try_from(d).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 }));
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(events), timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The readiness bits that let `bit`'s direction go ahead: a closed socket is readable, and one
/// with urgent data not yet read past.
const fn readiness(bit: u8) -> u8 {
    if bit == READ { READ | READ_CLOSED | URGENT } else { bit }
}

/// One socket's cached readiness and waiting tasks.
#[derive(Default)]
struct Source {
    ready: u8,
    /// Readers, writers.
    wakers: [Wakers; 2],
}

/// The tasks waiting for one direction of a source: usually one, so no allocation for it. A
/// waiting future that is dropped leaves its waker until the next event (a spurious wake).
#[derive(Default)]
struct Wakers {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Wakers {
    /// Adds `waker` unless it is there.
    fn register(&mut self, waker: &Waker) {
        match &self.first {
            None => self.first = Some(waker.clone()),
            Some(first) if first.will_wake(waker) => {}
            Some(_) if self.more.iter().any(|w| w.will_wake(waker)) => {}
            Some(_) => self.more.push(waker.clone()),
        }
    }

    fn take_into(&mut self, due: &mut Vec<Waker>) {
        due.extend(self.first.take());
        due.append(&mut self.more);
    }
}

/// A socket registered with its thread's reactor; deleted from it when dropped.
struct Registered<T: AsFd> {
    io: T,
    key: usize,
    reactor: Rc<Reactor>,
}

impl<T: AsFd> std::fmt::Debug for Registered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("fd", &self.io.as_fd()).field("key", &self.key).finish()
    }
}

fn not_driven() -> io::Error {
    io::Error::other("a SmolLocal socket was polled outside SmolLocal::block_on on its thread")
}

impl<T: AsFd> Registered<T> {
    /// Registers `io` (non-blocking already) with this thread's reactor, with `ready` as its
    /// readiness until the first event.
    fn new(io: T, ready: u8) -> io::Result<Self> {
        let reactor = Reactor::current()?;
        let key = reactor.sources.borrow_mut().insert(Source { ready, ..Source::default() });
        if let Err(e) = reactor.register(&io, key) {
            drop(reactor.sources.borrow_mut().try_remove(key));
            return Err(e);
        }
        Ok(Registered { io, key, reactor })
    }
}

impl<T: AsFd> Registered<T> {
    /// Ready when `bit`'s direction is (or may be) ready; else registers the task to wake.
    fn poll_ready(&self, bit: u8, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reactor.driving.get() == 0 {
            return Poll::Ready(Err(not_driven()));
        }
        let mut sources = self.reactor.sources.borrow_mut();
        let source = &mut sources[self.key];
        if source.ready & readiness(bit) != 0 {
            return Poll::Ready(Ok(()));
        }
        source.wakers[usize::from(bit == WRITE)].register(cx.waker());
        Poll::Pending
    }

    /// Forgets `bit`'s readiness (an operation returned `WouldBlock`): the next wait is for an event.
    fn clear(&self, bit: u8) {
        self.forget(readiness(bit));
    }

    /// Clears `bits` of the cached readiness.
    fn forget(&self, bits: u8) {
        if let Some(source) = self.reactor.sources.borrow_mut().get_mut(self.key) {
            source.ready &= !bits;
        }
    }

    /// Runs `op` (non-blocking) once `bit`'s direction is ready, again after each `WouldBlock`
    /// and the event that follows.
    fn io<R>(&self, bit: u8, mut op: impl FnMut(&T) -> io::Result<R>) -> impl Future<Output = io::Result<R>> {
        poll_fn(move |cx| {
            loop {
                if let Err(e) = std::task::ready!(self.poll_ready(bit, cx)) {
                    return Poll::Ready(Err(e));
                }
                match op(&self.io) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.clear(bit),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    done => return Poll::Ready(done),
                }
            }
        })
    }

    /// Runs `op` (after the caller awaited `bit`'s readiness), forgetting it on `WouldBlock`.
    fn try_io<R>(&self, bit: u8, op: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        let done = op();
        if matches!(&done, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.clear(bit);
        }
        done
    }
}

impl<T: AsFd> Drop for Registered<T> {
    fn drop(&mut self) {
        // Before `io` closes: see `Reactor::register`.
        let _ = self.reactor.poller.delete(&self.io);
        let source = self.reactor.sources.borrow_mut().try_remove(self.key);
        // Its wakers are dropped with no borrow held.
        drop(source);
    }
}

/// Wakes a `SmolLocal::block_on` loop, with a notification of its poller if it sleeps there.
struct Signal {
    woken: AtomicBool,
    sleeping: AtomicBool,
    poller: Arc<Epoll>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The loop sets `sleeping` and then reads `woken`; a wake sets `woken` and then reads
        // `sleeping` (all SeqCst): either the loop sees the wake and does not sleep, or the wake
        // sees the loop asleep and notifies.
        if !self.woken.swap(true, Ordering::SeqCst) && self.sleeping.load(Ordering::SeqCst) {
            let _ = self.poller.notify();
        }
    }
}

/// Counts a driving `SmolLocal::block_on` for as long as it runs.
struct Driving(Rc<Reactor>);

impl Drop for Driving {
    fn drop(&mut self) {
        self.0.driving.set(self.0.driving.get() - 1);
    }
}

impl BlockOn for SmolLocal {
    /// Runs `future` on this thread's reactor: polls it until it waits, then waits on the poller
    /// for events, a wake from another thread or the earliest timer.
    ///
    /// # Panics
    /// If the thread's poller cannot be made (no file descriptor left) or waited on.
    fn block_on<T>(future: impl Future<Output = T>) -> T {
        let reactor = Reactor::current().unwrap_or_else(|e| panic!("SmolLocal: cannot make the thread's poller: {e}"));
        let _wheel = crate::timers::install_untimed();
        reactor.driving.set(reactor.driving.get() + 1);
        let _driving = Driving(Rc::clone(&reactor));
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            poller: Arc::clone(&reactor.poller),
        });
        let waker = Waker::from(Arc::clone(&signal));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            // Wakes from here on (during the poll, or from other threads) mean: poll again.
            signal.woken.store(false, Ordering::SeqCst);
            if let Poll::Ready(done) = future.as_mut().poll(&mut cx) {
                return done;
            }
            let timeout = if signal.woken.load(Ordering::SeqCst) {
                // More to run (the executor yielded): take the events there are, without waiting.
                Some(Duration::ZERO)
            } else {
                signal.sleeping.store(true, Ordering::SeqCst);
                if signal.woken.load(Ordering::SeqCst) {
                    Some(Duration::ZERO)
                } else {
                    crate::timers::next_deadline().map(|d| d.saturating_duration_since(Instant::now()))
                }
            };
            let waited = reactor.wait(timeout);
            // The wakes `dispatch` makes are this thread's own: no notification for them.
            signal.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = waited {
                panic!("SmolLocal: waiting on the thread's poller failed: {e}");
            }
            reactor.dispatch();
            crate::timers::fire_due(Instant::now());
        }
    }

    type AcceptListener = LocalListener;

    fn init_thread() -> io::Result<()> {
        Reactor::current().map(drop)
    }

    fn accept_listener(listener: TcpListener) -> io::Result<LocalListener> {
        listener.set_nonblocking(true)?;
        Ok(LocalListener(Registered::new(listener, READ)?))
    }

    fn try_accept(listener: &LocalListener) -> io::Result<(TcpStream, SocketAddr)> {
        listener.0.try_io(READ, || socks4_sys::accept_nonblocking(&listener.0.io))
    }

    fn accept_readable(listener: &LocalListener) -> impl Future<Output = io::Result<()>> + '_ {
        poll_fn(|cx| listener.0.poll_ready(READ, cx))
    }
}

impl Runtime for SmolLocal {
    type Stream = LocalStream;
    type Listener = LocalListener;

    fn from_std(stream: TcpStream) -> io::Result<LocalStream> {
        // Accepted non-blocking (accept4 with SOCK_NONBLOCK). Taken as ready both ways: the first
        // read tries the socket at once (a client's request is usually there already).
        Ok(LocalStream(Registered::new(stream, READ | WRITE)?))
    }

    async fn connect_socket(socket: socket2::Socket, addr: SocketAddr, timeout: Duration) -> io::Result<LocalStream> {
        let connect = async {
            socks4_sys::socket::connect_started(&socket, addr)?;
            // Not ready until the connect's event (an edge-triggered add of a socket that is
            // connected already reports it at once).
            let stream = Registered::new(TcpStream::from(socket), 0)?;
            poll_fn(|cx| stream.poll_ready(WRITE, cx)).await?;
            match stream.io.take_error()? {
                None => Ok(LocalStream(stream)),
                Some(e) => Err(e),
            }
        };
        crate::runtime::within::<Self, _>(timeout, connect).await
    }

    async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        async_net::resolve((host, port)).await
    }

    async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        Some(blocking::unblock(work).await)
    }

    async fn listen(addr: SocketAddr) -> io::Result<LocalListener> {
        Self::accept_listener(TcpListener::bind(addr)?)
    }

    async fn accept(listener: &LocalListener) -> io::Result<(LocalStream, SocketAddr)> {
        let (stream, peer) = listener.0.io(READ, socks4_sys::accept_nonblocking).await?;
        Ok((Self::from_std(stream)?, peer))
    }

    fn listener_addr(listener: &LocalListener) -> io::Result<SocketAddr> {
        listener.0.io.local_addr()
    }

    async fn sleep(duration: Duration) {
        crate::timers::Sleep::after(duration).await;
    }

    fn socket(stream: &LocalStream) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&stream.0.io)
    }

    fn read<'a>(stream: &'a LocalStream, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + 'a {
        let len = buf.len();
        async move {
            let n = stream.0.io(READ, move |mut s| s.read(buf)).await?;
            // A read that did not fill the buffer drained the socket (as tokio assumes too): the
            // next read waits for an event instead of trying a read that would block. An end of
            // file already seen stays ([`READ_CLOSED`]), and urgent data ([`URGENT`]); data or a
            // FIN that comes later is a new edge.
            if n > 0 && n < len {
                stream.0.forget(READ);
            }
            Ok(n)
        }
    }

    fn write<'a>(stream: &'a LocalStream, buf: &'a [u8]) -> impl Future<Output = io::Result<usize>> + 'a {
        stream.0.io(WRITE, move |mut s| s.write(buf))
    }

    fn readable(stream: &LocalStream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(poll_fn(|cx| stream.0.poll_ready(READ, cx)))
    }

    fn writable(stream: &LocalStream) -> Option<impl Future<Output = io::Result<()>>> {
        Some(poll_fn(|cx| stream.0.poll_ready(WRITE, cx)))
    }

    fn peek(stream: &LocalStream) -> Option<impl Future<Output = io::Result<usize>>> {
        // A readiness without bytes (`WouldBlock`) is forgotten: the next try is after an event.
        Some(stream.0.io(READ, |s| s.peek(&mut [0])))
    }

    fn try_io<T>(stream: &LocalStream, interest: Interest, op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let bit = match interest {
            Interest::Readable => READ,
            Interest::Writable => WRITE,
        };
        stream.0.try_io(bit, op)
    }

    #[cfg(target_os = "linux")]
    fn fd(stream: &LocalStream) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(stream.0.io.as_fd())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed setup should panic

    use std::time::{Duration, Instant};

    use futures_lite::future;
    use socks4_async::Runtime;

    use super::{BlockOn, Reactor, SmolLocal};

    fn sources() -> usize {
        Reactor::current().unwrap().sources.borrow().len()
    }

    /// A connected pair: the connecting side and the accepted one.
    async fn pair() -> (super::LocalStream, super::LocalStream) {
        let listener = SmolLocal::listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = SmolLocal::listener_addr(&listener).unwrap();
        let (client, accepted) =
            future::zip(SmolLocal::connect(addr, Duration::from_secs(5)), SmolLocal::accept(&listener)).await;
        (client.unwrap(), accepted.unwrap().0)
    }

    #[test]
    fn read_and_write_wait_on_one_stream_at_once_and_drop_deregisters() {
        SmolLocal::block_on(async {
            let before = sources();
            let (a, b) = pair().await;
            assert_eq!(sources(), before + 2);
            // `a` waits to read while it writes; `b` echoes.
            let mut got = [0; 4];
            let reading = SmolLocal::read(&a, &mut got);
            let writing = async {
                SmolLocal::sleep(Duration::from_millis(20)).await;
                assert_eq!(SmolLocal::write(&a, b"ping").await.unwrap(), 4);
                let mut buf = [0; 4];
                assert_eq!(SmolLocal::peek(&b).unwrap().await.unwrap(), 1);
                SmolLocal::readable(&b).unwrap().await.unwrap();
                assert_eq!(SmolLocal::read(&b, &mut buf).await.unwrap(), 4);
                SmolLocal::writable(&b).unwrap().await.unwrap();
                SmolLocal::write(&b, &buf).await.unwrap()
            };
            let (n, m) = future::zip(reading, writing).await;
            assert_eq!((n.unwrap(), m), (4, 4));
            assert_eq!(&got, b"ping");
            drop(b);
            // End of file: the read waits for the event, then sees 0.
            assert_eq!(SmolLocal::read(&a, &mut got).await.unwrap(), 0);
            drop(a);
            assert_eq!(sources(), before);
        });
    }

    /// `read`, or a failure after 2 s (a read that would hang).
    async fn read_within(stream: &super::LocalStream, buf: &mut [u8]) -> usize {
        let read = async { Some(SmolLocal::read(stream, buf).await.unwrap()) };
        let late = async {
            SmolLocal::sleep(Duration::from_secs(2)).await;
            None
        };
        future::or(read, late).await.expect("the read waited for an event that had come already")
    }

    #[test]
    fn a_short_read_forgets_readiness_but_not_an_end_of_file() {
        SmolLocal::block_on(async {
            // Data and a FIN in one go: the short read drains the data, the FIN's edge came with it.
            let (a, b) = pair().await;
            assert_eq!(SmolLocal::write(&b, b"data").await.unwrap(), 4);
            b.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
            SmolLocal::sleep(Duration::from_millis(20)).await;
            let mut buf = [0; 64];
            assert_eq!(read_within(&a, &mut buf).await, 4);
            assert_eq!(read_within(&a, &mut buf).await, 0);
            // A short read without a FIN: readiness forgotten (no read that would block next), and
            // the next data is a new event.
            let (c, d) = pair().await;
            assert_eq!(SmolLocal::write(&d, b"x").await.unwrap(), 1);
            assert_eq!(read_within(&c, &mut buf).await, 1);
            let ready = Reactor::current().unwrap().sources.borrow()[c.0.key].ready;
            assert_eq!(ready & super::READ, 0, "readiness kept after a short read");
            let later = async {
                SmolLocal::sleep(Duration::from_millis(20)).await;
                SmolLocal::write(&d, b"y").await.unwrap()
            };
            let (n, m) = future::zip(read_within(&c, &mut buf), later).await;
            assert_eq!((n, m, buf[0]), (1, 1, b'y'));
        });
    }

    #[test]
    fn a_short_read_at_urgent_data_keeps_readiness() {
        SmolLocal::block_on(async {
            let (a, b) = pair().await;
            socks4_sys::socket::urgent_inline(&SmolLocal::socket(&a)).unwrap();
            let sender = socket2::SockRef::from(b.get_ref());
            assert_eq!(SmolLocal::write(&b, b"ab").await.unwrap(), 2);
            assert_eq!(sender.send_out_of_band(b"U").unwrap(), 1);
            assert_eq!(SmolLocal::write(&b, b"cd").await.unwrap(), 2);
            SmolLocal::sleep(Duration::from_millis(20)).await;
            // The read stops at the mark; what follows it is there already, with no event to come.
            let mut buf = [0; 64];
            assert_eq!(read_within(&a, &mut buf).await, 2);
            let n = read_within(&a, &mut buf).await;
            assert_eq!(&buf[..n], b"Ucd", "the urgent byte in its place");
        });
    }

    #[test]
    fn timers_and_wakes_from_other_threads_end_the_wait() {
        SmolLocal::block_on(async {
            let start = Instant::now();
            SmolLocal::sleep(Duration::from_millis(30)).await;
            assert!(start.elapsed() >= Duration::from_millis(30));
            // Woken from smol's blocking pool: the poller is notified.
            let start = Instant::now();
            let v = SmolLocal::unblock(|| {
                std::thread::sleep(Duration::from_millis(30));
                7
            })
            .await;
            assert_eq!(v, Some(7));
            assert!(start.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn connect_refused() {
        SmolLocal::block_on(async {
            // A port nobody listens on (bound, then closed).
            let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let err = SmolLocal::connect(addr, Duration::from_secs(5)).await.err().unwrap();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        });
    }

    #[test]
    fn outside_block_on_a_wait_fails_instead_of_hanging() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let stream = SmolLocal::from_std(client).unwrap();
        let mut buf = [0; 1];
        // The readiness is taken as there: the first try is a read (WouldBlock), then the wait fails.
        let err = future::block_on(SmolLocal::read(&stream, &mut buf)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Other);
    }
}
