//! One proxied connection inside a worker: the handshake driven through `ServerHandshake`, the
//! outgoing connect or BIND listener, then the relay, and a short linger after a rejection.
//!
//! A connection owns up to three sockets, each registered with the worker's poller under the key
//! `slot * KEYS_PER_CONN + side`, and while it races a name's addresses (Happy Eyeballs) up to
//! [`MAX_RACING`] attempts' sockets under `slot * KEYS_PER_CONN + RACE_KEY + k`. Interest is one-shot: after each event the socket is disarmed,
//! and [`Conn::rearm`] re-registers exactly what the current state wants.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use polling::{Event, Poller};
use socket2::SockAddr;
use socks4_core::driver::Candidates;
use socks4_core::rules::Parent;
use socks4_core::{CloseReason, Failure, Fault, REPLY_LEN, Relay, ServerHandshake, Side as RelaySide};
use socks4_server::bandwidth::{ConnBandwidth, Direction};
use socks4_server::chain::{AnswerTo, Attempt, Io};
use socks4_server::egress::Outgoing;
use socks4_server::eyeballs::MAX_RACING;
use socks4_server::ident::IdentAnswer;
use socks4_server::limits::Admission;
use socks4_server::linger::{DRAIN_BYTES, DRAIN_TIME};
use socks4_server::log::ConnLine;
use socks4_server::metrics::{Close, ConnMeter, Phase};
use socks4_server::proxy::{HeaderEnd, HeaderReader, HeaderStep};
use socks4_server::reload::Snapshot;
use socks4_server::step::{Context, Decisions, Step};
use socks4_server::upstream::{Upstreams, Via};
use socks4_server::users::{self, AuthError, Verification};

use crate::race::{RaceEnd, Racing};
use crate::relay::{Caps, Dir, MAX_PENDING, Pipes, Progress, PumpError};
use crate::resolver::{Job, Task};
use crate::worker::Msg;

/// Poller keys per connection: its three sides, the race's attempts, and (the last) a worker's
/// listener.
pub(crate) const KEYS_PER_CONN: usize = 8;

/// The first of a connection's keys for its race's attempts (up to [`MAX_RACING`]).
pub(crate) const RACE_KEY: usize = 3;

const _: () = assert!(RACE_KEY + MAX_RACING < KEYS_PER_CONN, "the race's keys overlap the listener's");

/// Which of a connection's sockets an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The accepted client connection.
    Client = 0,
    /// The outgoing connection (CONNECT) or the accepted peer (BIND).
    Upstream = 1,
    /// The BIND listener.
    Listener = 2,
}

impl Side {
    /// The side a key's low bits name.
    pub(crate) fn from_key(key: usize) -> Option<Self> {
        match key % KEYS_PER_CONN {
            0 => Some(Self::Client),
            1 => Some(Self::Upstream),
            2 => Some(Self::Listener),
            _ => None,
        }
    }
}

/// Readiness wanted from one socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Interest {
    read: bool,
    write: bool,
}

impl Interest {
    fn is_none(self) -> bool {
        !self.read && !self.write
    }
}

/// What the worker lends a connection while it handles an event.
pub(crate) struct Ctx<'a> {
    /// The worker's poller.
    pub(crate) poller: &'a Arc<Poller>,
    /// The time the event is handled at.
    pub(crate) now: Instant,
    /// The worker's clock origin (`ServerHandshake` time is `now - epoch`).
    pub(crate) epoch: Instant,
    /// The worker's read buffer.
    pub(crate) scratch: &'a mut [u8],
    /// The worker's pipes for splicing.
    pub(crate) pipes: &'a mut Pipes,
    /// The resolver pool.
    pub(crate) resolver: &'a Sender<Job>,
    /// The worker's own channel (for resolver answers).
    pub(crate) inbox: &'a Sender<Msg>,
}

impl Ctx<'_> {
    fn clock(&self) -> Duration {
        self.now.saturating_duration_since(self.epoch)
    }
}

#[derive(Debug)]
enum Stage {
    /// Driving the handshake.
    Handshake,
    /// Relaying both ways (the bookkeeping is [`Conn::relay`]).
    Relay { up: Dir, down: Dir },
    /// A final reply is (being) sent; then read and discard until EOF or `until`.
    Linger { until: Instant, discarded: usize },
    /// Finished; the worker logs and removes it.
    Done,
}

/// An ident exchange on the poller: the query is written in one go on the fresh connection (it
/// is at most 13 bytes), then the answer read until its line ends or identd closes.
#[derive(Debug)]
struct Ident {
    answer: IdentAnswer,
    /// Whether the query was written.
    asked: bool,
}

impl Ident {
    /// Does what the socket allows: `None` while it waits (to write when not `asked`, else to
    /// read), `Some` once the exchange ended.
    fn exchange(&mut self, mut stream: &TcpStream) -> Option<Result<(), Failure>> {
        let would_block = |e: &io::Error| matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted);
        if !self.asked {
            match stream.write(self.answer.query()) {
                Ok(n) if n == self.answer.query().len() => self.asked = true,
                Ok(_) => return Some(Err(Failure::Other)),
                Err(e) if would_block(&e) => return None,
                Err(e) => return Some(Err(Failure::from(&e))),
            }
        }
        while self.answer.wants_more() {
            match stream.read(self.answer.unread()) {
                Ok(0) => break,
                Ok(n) => self.answer.fill(n),
                Err(e) if would_block(&e) => return None,
                Err(e) => return Some(Err(Failure::from(&e))),
            }
        }
        Some(Ok(()))
    }
}

/// A capped relay's bandwidth state (boxed in [`Conn`]: uncapped connections pay one word).
#[derive(Debug)]
struct Capped {
    bandwidth: ConnBandwidth,
    /// Per direction (up, down): reading paused by the caps until then.
    paused: [Option<Instant>; 2],
    /// The pause timer entry the worker holds for it (apart from the idle deadline's, so that
    /// pauses never make the worker queue idle-deadline entries again and again).
    timer: Option<Instant>,
}

impl Capped {
    fn paused(capped: Option<&Self>, from: RelaySide) -> bool {
        capped.is_some_and(|c| c.paused[from as usize].is_some())
    }
}

/// Up to two 8-byte replies not yet written to the client.
#[derive(Debug, Default)]
struct Outbox {
    buf: [u8; 2 * REPLY_LEN],
    start: usize,
    end: usize,
}

impl Outbox {
    fn push(&mut self, bytes: [u8; REPLY_LEN]) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        // The handshake never emits more than two replies, and the first is flushed before the second.
        let room = self.buf.len() - self.end;
        let n = room.min(REPLY_LEN);
        self.buf[self.end..self.end + n].copy_from_slice(&bytes[..n]);
        self.end += n;
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Writes what the client takes; `Ok(true)` once empty.
    fn flush(&mut self, client: &TcpStream) -> io::Result<bool> {
        while self.start < self.end {
            match (&*client).write(&self.buf[self.start..self.end]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => self.start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn take(&mut self) -> Vec<u8> {
        let v = self.buf[self.start..self.end].to_vec();
        self.start = 0;
        self.end = 0;
        v
    }
}

/// Where a connection stands with the PROXY protocol (`--proxy-protocol`).
#[derive(Debug)]
enum Proxy {
    /// Not from a trusted balancer: the peer is the client.
    Off,
    /// From a trusted balancer, reading its header.
    Reading(Box<HeaderReader>),
    /// The header named the client (`client_addr`).
    Proxied,
    /// Closed before the request: logged as the header's end (or not at all, when the per-client
    /// limits refused the header's client: their summary tells).
    Ended(Option<HeaderEnd>),
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    slot: usize,
    client: TcpStream,
    client_addr: SocketAddr,
    upstream: Option<TcpStream>,
    connecting: bool,
    listener: Option<TcpListener>,
    hs: ServerHandshake,
    stage: Stage,
    reading_request: bool,
    /// While the handshake waits (resolve, user check, ident, connect, BIND peer): watch the client
    /// for EOF or an error, without reading. Cleared for the rest of a phase once data is seen.
    watch: bool,
    /// The users-file check and the route: what [`Decisions::next`] decided so far.
    decisions: Decisions,
    /// The user id's check while it is pending (dropping it withdraws the check); boxed: one word.
    verifying: Option<Box<Verification>>,
    /// Its share of the admission limits, released when the connection is dropped.
    admission: Admission,
    /// The config it runs with (rules, timeouts, users file's verifier), taken at accept.
    snapshot: Arc<Snapshot>,
    /// Client bytes past the request, read during the handshake.
    early: Vec<u8>,
    /// Happy Eyeballs: a name's addresses being raced (boxed: one word when not racing).
    racing: Option<Box<Racing>>,
    out: Outbox,
    hs_deadline: Option<Instant>,
    registered: [bool; 3],
    armed: [Interest; 3],
    /// When it was accepted: also the origin of the relay's clock.
    started: Instant,
    /// The relay's bookkeeping (counts for the log line), started with the relay.
    relay: Relay,
    /// The relay's bandwidth caps, if any.
    bandwidth: Option<Box<Capped>>,
    result: Option<String>,
    /// Its phases, reply and end in the metrics.
    meter: ConnMeter,
    /// A connect or BIND through a route's parents under way (its socket is `upstream`).
    attempt: Option<Box<Attempt>>,
    /// What the attempt waits for on the parent's socket (besides a connect in progress).
    parent_io: Interest,
    /// The ident exchange under way (its socket is `upstream`); boxed: one word.
    ident: Option<Box<Ident>>,
    /// The parent proxy the connection went through (or tried last), for the log line.
    via: Option<Box<Parent>>,
    /// The outgoing connection's source address, for the log line.
    source: Option<IpAddr>,
    /// The deadline of this connection's live timer entry, if any.
    pub(crate) scheduled: Option<Instant>,
    proxy: Proxy,
}

impl Conn {
    /// A connection just accepted (already non-blocking), in `slot`. The request has usually
    /// arrived by the time the worker sees the connection, so it is read at once; the socket is
    /// then registered for what the state wants.
    pub(crate) fn new(
        id: u64,
        slot: usize,
        (client, client_addr, admission, snapshot): (TcpStream, SocketAddr, Admission, Arc<Snapshot>),
        ctx: &mut Ctx<'_>,
    ) -> Self {
        let _ = client.set_nodelay(true);
        let hs = snapshot.config.handshake(ctx.clock());
        let proxy = match snapshot.config.proxy_protocol.contains(client_addr.ip()) {
            true => Proxy::Reading(Box::new(HeaderReader::new(client_addr).trusting(&snapshot.config.proxy_protocol))),
            false => Proxy::Off,
        };
        let hs_deadline = hs.deadline().map(|d| ctx.epoch + d);
        let mut conn = Self {
            id,
            slot,
            client,
            client_addr,
            upstream: None,
            connecting: false,
            listener: None,
            hs,
            stage: Stage::Handshake,
            reading_request: true,
            watch: false,
            decisions: Decisions::default(),
            verifying: None,
            admission,
            snapshot,
            early: Vec::new(),
            racing: None,
            out: Outbox::default(),
            hs_deadline,
            registered: [false; 3],
            armed: [Interest::default(); 3],
            started: ctx.now,
            relay: Relay::new(Duration::ZERO, Duration::ZERO),
            bandwidth: None,
            result: None,
            // A balancer's connection is counted once its PROXY header names the client.
            meter: if matches!(proxy, Proxy::Off) { ConnMeter::start() } else { ConnMeter::idle() },
            attempt: None,
            parent_io: Interest::default(),
            ident: None,
            via: None,
            source: None,
            scheduled: None,
            proxy,
        };
        conn.read_request(ctx);
        conn.rearm(ctx.poller);
        conn
    }

    /// The connection's id (unique within its worker).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether it is finished and should be removed.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// When it next needs [`on_timer`](Self::on_timer).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Handshake => {
                let parent = self.attempt.as_ref().and_then(|a| a.deadline());
                let race = self.racing.as_ref().and_then(|r| r.deadline());
                [self.hs_deadline, parent, race].into_iter().flatten().min()
            }
            Stage::Relay { .. } => self.relay.deadline().map(|d| self.started + d),
            Stage::Linger { until, .. } => Some(*until),
            Stage::Done => None,
        }
    }

    /// With caps: when a paused direction may read again, if that needs a timer entry the worker
    /// does not hold yet (it is then counted as held).
    pub(crate) fn pause_timer(&mut self) -> Option<Instant> {
        let capped = self.bandwidth.as_deref_mut()?;
        let at = capped.paused.iter().flatten().min().copied()?;
        if capped.timer.is_some_and(|t| t <= at) {
            return None;
        }
        capped.timer = Some(at);
        Some(at)
    }

    /// A timer entry at `at` came up: whether it is the pause timer this connection relies on.
    pub(crate) fn pause_timer_fired(&mut self, at: Instant) -> bool {
        match self.bandwidth.as_deref_mut() {
            Some(capped) if capped.timer == Some(at) => {
                capped.timer = None;
                true
            }
            _ => false,
        }
    }

    // ---- events -------------------------------------------------------------------------------

    /// A readiness event for one of its sockets.
    pub(crate) fn on_event(&mut self, ctx: &mut Ctx<'_>, side: Side, ev: Event) {
        let i = side as usize;
        let wanted = self.armed[i];
        // One-shot: the socket is disarmed now.
        self.armed[i] = Interest::default();
        let readable = ev.readable && wanted.read;
        let writable = ev.writable && wanted.write;
        match self.stage {
            Stage::Handshake if side == Side::Client && (ev.is_err() == Some(true) || ev.is_interrupt()) => {
                self.client_failed(ctx);
            }
            Stage::Handshake => self.handshake_event(ctx, side, readable, writable),
            Stage::Relay { .. } => self.relay_event(ctx, side, readable, writable),
            Stage::Linger { .. } => self.linger_event(ctx, side, readable, writable),
            Stage::Done => {}
        }
        self.rearm(ctx.poller);
    }

    /// Its deadline may have passed.
    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        match &self.stage {
            Stage::Handshake => {
                if let Some(attempt) = self.attempt.as_deref_mut() {
                    attempt.handle_timeout(ctx.now);
                }
                // The race's stagger: start the next attempt (or end the race at its deadline).
                self.pump_race(ctx);
                // A chained connect is bounded by its own timeout per parent, not the handshake's.
                if !self.reaching_parent() {
                    self.handshake_timeout(ctx);
                }
                self.drive(ctx);
            }
            Stage::Relay { .. } => {
                self.relay.handle_timeout(self.relay_clock(ctx));
                self.settle_relay();
                // A direction the caps paused may read again.
                let mut resumed = [false; 2];
                if let Some(capped) = &mut self.bandwidth {
                    for (paused, resumed) in capped.paused.iter_mut().zip(&mut resumed) {
                        if paused.is_some_and(|t| ctx.now >= t) {
                            (*paused, *resumed) = (None, true);
                        }
                    }
                }
                if resumed.contains(&true) {
                    self.pump_both(ctx, resumed[0], resumed[1]);
                }
            }
            Stage::Linger { until, .. } => {
                if ctx.now >= *until {
                    self.stage = Stage::Done;
                }
            }
            Stage::Done => {}
        }
        self.rearm(ctx.poller);
    }

    /// The handshake's deadline came: a lookup that did not answer in time counts as failed (its
    /// late answer is dropped).
    fn handshake_timeout(&mut self, ctx: &Ctx<'_>) {
        if self.meter.phase() == Phase::Resolving {
            self.meter.resolved(false);
        }
        self.hs.handle_timeout(ctx.clock());
    }

    /// A connect (or BIND's first reply) through a parent is under way.
    fn reaching_parent(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.is_reaching())
    }

    /// The answer to its SOCKS4a lookup.
    pub(crate) fn on_resolved(&mut self, ctx: &mut Ctx<'_>, lookup: io::Result<Vec<SocketAddr>>) {
        if !matches!(self.stage, Stage::Handshake) {
            return;
        }
        let cx = context(&self.snapshot, self.client_addr, &self.proxy, ctx);
        // Fails only if the handshake stopped waiting for it (it timed out meanwhile).
        let Ok(found) = self.decisions.resolved(&mut self.hs, &cx, lookup) else { return };
        if self.meter.phase() == Phase::Resolving {
            self.meter.resolved(found);
        }
        self.drive(ctx);
        self.rearm(ctx.poller);
    }

    /// Readiness of one of its race's attempts (`k`: which race key).
    pub(crate) fn on_race_event(&mut self, ctx: &mut Ctx<'_>, k: usize) {
        let Some(racing) = self.racing.as_deref_mut() else { return };
        if !matches!(self.stage, Stage::Handshake) || !(RACE_KEY..RACE_KEY + MAX_RACING).contains(&k) {
            return;
        }
        racing.on_event(ctx.poller, k - RACE_KEY, ctx.now);
        if self.pump_race(ctx) {
            self.drive(ctx);
        }
        self.rearm(ctx.poller);
    }

    /// Drives the race, if one runs; true once it answered the handshake (drive it next).
    fn pump_race(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(racing) = self.racing.as_deref_mut() else { return false };
        let (base, now) = (self.slot * KEYS_PER_CONN, ctx.clock());
        let outgoing = self.decisions.outgoing(&self.snapshot.egress, || self.client.local_addr().ok().map(|a| a.ip()));
        let result = match racing.pump(ctx.poller, base, ctx.now, &outgoing) {
            RaceEnd::Pending => return false,
            RaceEnd::Won(stream) => {
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().map_err(|e| Failure::from(&e));
                if let Ok(local) = local {
                    outgoing.connected(local);
                }
                // `rearm` registers it as the upstream side.
                self.drop_socket(ctx.poller, Side::Upstream);
                self.upstream = Some(stream);
                local
            }
            RaceEnd::Failed(failure) => Err(failure),
        };
        self.racing = None;
        self.connect_done(now, result);
        true
    }

    /// The answer to the lookup of a parent proxy's name (the attempt's `parent`-th).
    pub(crate) fn on_parent_resolved(&mut self, ctx: &mut Ctx<'_>, parent: usize, candidates: Candidates) {
        let Some(attempt) = self.attempt.as_deref_mut() else { return };
        attempt.handle_resolved(ctx.now, parent, candidates);
        self.drive(ctx);
        self.rearm(ctx.poller);
    }

    /// The users file's verdict on its user id.
    pub(crate) fn on_user_checked(&mut self, ctx: &mut Ctx<'_>, verdict: Result<(), AuthError>) {
        if !matches!(self.stage, Stage::Handshake) || !self.decisions.user_pending() {
            return;
        }
        self.verifying = None;
        // Fails only if the handshake timed out meanwhile.
        let _ = self.decisions.user_checked(&mut self.hs, verdict, self.client_addr);
        self.drive(ctx);
        self.rearm(ctx.poller);
    }

    /// The shutdown grace period is over.
    pub(crate) fn on_shutdown(&mut self, poller: &Poller) {
        if matches!(self.stage, Stage::Relay { .. }) {
            // A relay cut before its end: both sides see a reset, never a clean end of file, so a
            // cut transfer cannot pass for a complete one.
            for socket in std::iter::once(&self.client).chain(&self.upstream) {
                drop(socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO)));
            }
        }
        if !self.is_done() {
            self.meter.close(Close::Shutdown);
            self.finish(socks4_server::log::SHUTDOWN);
        }
        self.rearm(poller);
    }

    // ---- handshake ----------------------------------------------------------------------------

    fn handshake_event(&mut self, ctx: &mut Ctx<'_>, side: Side, readable: bool, writable: bool) {
        match side {
            Side::Client => {
                if writable {
                    self.flush_out();
                }
                if readable && self.reading_request {
                    self.read_request(ctx);
                } else if readable && self.watch {
                    self.peek_client(ctx);
                }
            }
            Side::Upstream if writable && self.connecting => self.connect_progress(ctx),
            // identd's socket is ready for the query or the answer.
            Side::Upstream if (readable || writable) && self.ident.is_some() => {
                let ended = self.ident_io(ctx);
                ended.then(|| self.drive(ctx));
            }
            // The chained attempt's socket is ready for what it waits for.
            Side::Upstream if (readable || writable) && self.attempt.is_some() => self.drive(ctx),
            Side::Listener if readable => self.accept_peer(ctx),
            _ => {}
        }
    }

    fn read_request(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.proxy, Proxy::Reading(_)) {
            return self.read_header(ctx);
        }
        let now = ctx.clock();
        let len = MAX_PENDING.min(ctx.scratch.len());
        let buf = &mut ctx.scratch[..len];
        match (&self.client).read(buf) {
            Ok(0) => self.hs.handle_eof(now),
            Ok(n) => self.feed(now, &buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return,
            Err(e) => return self.finish(&format!("client read: {e}")),
        }
        self.drive(ctx);
    }

    /// Feeds bytes read from the client to the handshake; bytes past the request are early data.
    fn feed(&mut self, now: Duration, bytes: &[u8]) {
        let used = self.hs.handle_input(now, bytes);
        if !self.hs.wants_input() {
            self.reading_request = false;
            if used < bytes.len() {
                self.early = bytes[used..].to_vec();
            }
        }
    }

    /// Reads the PROXY header of a connection from a trusted balancer (within the handshake
    /// timeout, the deadline set at accept); once it names the client, admits that client
    /// against the per-client limits and gives the request its own handshake timeout.
    fn read_header(&mut self, ctx: &mut Ctx<'_>) {
        let Proxy::Reading(reader) = &mut self.proxy else { return };
        let (now, clock) = (ctx.now, ctx.clock());
        let len = MAX_PENDING.min(ctx.scratch.len());
        let buf = &mut ctx.scratch[..len];
        let step = match (&self.client).read(buf) {
            Ok(0) => HeaderStep::Close(reader.handle_eof()),
            Ok(n) => reader.handle_input(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return,
            // A reset counts as a close (health checks often end with one).
            Err(_) => HeaderStep::Close(reader.handle_eof()),
        };
        match step {
            HeaderStep::More => {}
            HeaderStep::Close(end) => self.header_ended(Some(end)),
            HeaderStep::Client { client, rest } => match self.admission.claim(client.ip(), now) {
                // Counted and summarised by the limiter, like a refusal at accept.
                Err(_) => self.header_ended(None),
                Ok(()) => {
                    self.client_addr = client;
                    self.proxy = Proxy::Proxied;
                    self.meter = ConnMeter::start();
                    self.hs = self.snapshot.config.handshake(clock);
                    self.hs_deadline = self.hs.deadline().map(|d| ctx.epoch + d);
                    if !rest.is_empty() {
                        self.feed(clock, rest);
                    }
                    self.drive(ctx);
                }
            },
        }
    }

    /// The connection ends before its request (see [`Proxy::Ended`]).
    fn header_ended(&mut self, end: Option<HeaderEnd>) {
        self.proxy = Proxy::Ended(end);
        self.reading_request = false;
        self.stage = Stage::Done;
    }

    /// The client is readable while the handshake waits: EOF, an error, or early data (left for
    /// the relay, and no longer watched in this phase: the phase's deadline bounds it).
    fn peek_client(&mut self, ctx: &mut Ctx<'_>) {
        match self.client.peek(&mut [0u8]) {
            Ok(0) => {
                // Ends a BIND wait; a half-close otherwise, which the relay passes on.
                self.watch = false;
                self.hs.handle_eof(ctx.clock());
                self.drive(ctx);
            }
            Ok(_) => self.watch = false,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => self.client_failed(ctx),
        }
    }

    /// The client's connection failed before the relay: the handshake ends, and what was started
    /// for it (connect attempt, BIND listener) is dropped at once.
    fn client_failed(&mut self, ctx: &mut Ctx<'_>) {
        self.hs.handle_client_error(ctx.clock());
        self.drive(ctx);
    }

    /// Performs the steps the decisions ([`Decisions::next`]) hand out until it waits, relays or
    /// closes.
    fn drive(&mut self, ctx: &mut Ctx<'_>) {
        // Whether this call started something to wait for: a new phase, with the client watched.
        let mut started = false;
        loop {
            let cx = context(&self.snapshot, self.client_addr, &self.proxy, ctx);
            let step = match self.decisions.next(&mut self.hs, &mut self.admission, &cx) {
                Ok(step) => step,
                Err(e) => return self.finish(&e.to_string()),
            };
            let now = ctx.clock();
            match step {
                Step::Send(reply) => {
                    self.out.push(reply.to_bytes());
                    self.meter.replied(reply.code);
                }
                Step::Ident => {
                    started = true;
                    self.start_ident(ctx);
                }
                Step::Resolve { host, port } => {
                    started = true;
                    self.meter.enter(Phase::Resolving);
                    if !self.ask_name(ctx, host, port) {
                        let _ = self.hs.handle_resolved(now, Err(Failure::Other));
                    }
                }
                Step::VerifyUser { verifier, user_id } => {
                    // On the verifier's own threads and places (busy at once past them).
                    let mut check = verifier.verify(self.client_addr.ip(), &user_id);
                    if let Some(verdict) = check.ready_verdict() {
                        let _ = self.decisions.user_checked(&mut self.hs, verdict, self.client_addr);
                        continue;
                    }
                    started = true;
                    let (reply, poller, slot, id) = (ctx.inbox.clone(), Arc::clone(ctx.poller), self.slot, self.id);
                    check.notify(move |verdict| {
                        if reply.send(Msg::UserChecked { slot, id, verdict }).is_ok() {
                            let _ = poller.notify();
                        }
                    });
                    self.verifying = Some(Box::new(check));
                }
                Step::Connect(addr) => {
                    self.meter.enter(Phase::Connecting);
                    if let Some(result) = self.start_connect(addr, false) {
                        self.connect_done(now, result);
                    }
                    started = true;
                }
                Step::Race(race) => {
                    self.meter.enter(Phase::Connecting);
                    self.racing = Some(Racing::new(*race));
                    self.pump_race(ctx);
                    started = true;
                }
                Step::Chain(attempt) => {
                    started = true;
                    if !attempt.is_bind() {
                        self.meter.enter(Phase::Connecting);
                    }
                    self.attempt = Some(attempt);
                }
                Step::Listen => {
                    let result = self.start_listen();
                    if result.is_ok() {
                        self.meter.enter(Phase::BindWait);
                    }
                    let _ = self.hs.handle_listening(now, result);
                    started = true;
                }
                Step::Relay => return self.start_relay(ctx),
                Step::Wait { deadline } => {
                    // A chained attempt's I/O, until it waits too (or answers the handshake).
                    if self.pump_attempt(ctx) {
                        continue;
                    }
                    // A chained connect ends by itself, within its timeout per parent.
                    self.hs_deadline = match self.reaching_parent() {
                        true => None,
                        false => deadline.map(|d| ctx.epoch + d),
                    };
                    self.watch |= started;
                    self.flush_out();
                    return;
                }
                Step::Closed(reason) => {
                    self.meter.close(Close::from(&reason));
                    if reason == CloseReason::ClientGone {
                        self.out = Outbox::default(); // nobody to linger for
                    }
                    // Dropping the attempt closes the connection to the parent (`upstream`), and
                    // dropping a users-file check still queued withdraws it (its place is freed).
                    self.attempt = None;
                    self.verifying = None;
                    self.ident = None;
                    self.result.get_or_insert(reason.to_string()); // unless why was said before
                    self.drop_upstream(ctx.poller);
                    if self.out.is_empty() {
                        self.stage = Stage::Done;
                    } else {
                        self.stage = Stage::Linger { until: ctx.now + DRAIN_TIME, discarded: 0 };
                        self.flush_out();
                    }
                    return;
                }
                other => return self.finish(&format!("unexpected step {other:?}")),
            }
        }
    }

    /// Performs the chained attempt's I/O on the parent's socket (`upstream`) until it waits;
    /// true once it answered the handshake (drive it next).
    fn pump_attempt(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(mut attempt) = self.attempt.take() else { return false };
        self.parent_io = Interest::default();
        let mut answered = false;
        let mut buf = [0u8; REPLY_LEN];
        loop {
            match attempt.poll() {
                Io::Resolve { host, port, parent } => {
                    let task = Task::ResolveParent(host.to_owned(), port, parent);
                    if !ask(ctx, self.slot, self.id, task) {
                        attempt.handle_resolved(ctx.now, parent, Candidates::failed(Failure::Other));
                    }
                }
                Io::Connect(addr) => {
                    self.drop_socket(ctx.poller, Side::Upstream);
                    match self.start_connect(addr, false) {
                        Some(result) => attempt.handle_connected(ctx.now, result.map(drop)),
                        None => break, // `connecting`: writable when done
                    }
                }
                Io::Write(bytes) => match self.upstream.as_ref().map(|mut s| s.write(bytes)) {
                    Some(Ok(0)) => attempt.handle_error(ctx.now, Failure::Other),
                    Some(Ok(n)) => attempt.handle_written(n),
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.parent_io.write = true;
                        break;
                    }
                    Some(Err(e)) => attempt.handle_error(ctx.now, Failure::from(&e)),
                    None => attempt.handle_error(ctx.now, Failure::Other),
                },
                Io::Read(want) => match self.upstream.as_ref().map(|mut s| s.read(&mut buf[..want.min(REPLY_LEN)])) {
                    Some(Ok(0)) => attempt.handle_eof(ctx.now),
                    Some(Ok(n)) => drop(attempt.handle_input(ctx.now, &buf[..n])),
                    Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.parent_io.read = true;
                        break;
                    }
                    Some(Err(e)) => attempt.handle_error(ctx.now, Failure::from(&e)),
                    None => attempt.handle_error(ctx.now, Failure::Other),
                },
                Io::Answer(answer) => {
                    self.via = attempt.via().cloned().map(Box::new);
                    match (answer.to, answer.result.is_ok()) {
                        (_, false) => self.drop_socket(ctx.poller, Side::Upstream),
                        (AnswerTo::Connect, true) => {
                            self.meter.connected();
                            self.source = self.upstream.as_ref().and_then(|u| u.local_addr().ok()).map(|a| a.ip());
                        }
                        (AnswerTo::Listen, true) => {
                            // A new phase: the client is watched again (leaving ends the wait).
                            self.meter.enter(Phase::BindWait);
                            self.watch = true;
                        }
                        (AnswerTo::BindPeer, true) => {}
                    }
                    if answer.to == AnswerTo::BindPeer {
                        self.admission.end_bind_wait();
                    }
                    // Fails only if the handshake ended meanwhile.
                    let _ = answer.apply(&mut self.hs, ctx.clock());
                    if answer.to != AnswerTo::Listen || answer.result.is_err() {
                        return true; // the attempt is over
                    }
                    answered = true;
                    break;
                }
                Io::Wait => break,
                Io::Done => return answered,
            }
        }
        self.attempt = Some(attempt);
        answered
    }

    /// Connects to the client's identd (on `upstream`) and starts the exchange; the handshake is
    /// answered at once if it cannot start, else when [`ident_io`](Self::ident_io) ends it.
    fn start_ident(&mut self, ctx: &mut Ctx<'_>) {
        let local = match self.client.local_addr() {
            Ok(local) => local,
            Err(e) => {
                let _ = self.hs.handle_ident(ctx.clock(), Err(Failure::from(&e)));
                return;
            }
        };
        self.ident = Some(Box::new(Ident { answer: IdentAnswer::new(self.client_addr, local), asked: false }));
        match self.start_connect(socks4_server::ident::identd(self.client_addr), true) {
            None => {} // `connecting`: writable when done
            Some(Ok(_)) => {
                self.ident_io(ctx);
            }
            Some(Err(e)) => self.ident_ended(ctx, Err(e)),
        }
    }

    /// Writes the ident query and reads the answer as far as the socket allows; true once the
    /// exchange ended (the handshake has identd's answer: drive it next).
    fn ident_io(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(mut ident) = self.ident.take() else { return false };
        self.parent_io = Interest::default();
        let result = match self.upstream.as_ref() {
            Some(stream) => ident.exchange(stream),
            None => Some(Err(Failure::Other)),
        };
        match result {
            None => {
                (self.parent_io.read, self.parent_io.write) = (ident.asked, !ident.asked);
                self.ident = Some(ident);
                false
            }
            Some(result) => {
                self.ident = Some(ident);
                self.ident_ended(ctx, result);
                true
            }
        }
    }

    /// The ident exchange ended (`Ok` when identd answered or closed): its socket is closed and
    /// the handshake has the answer.
    fn ident_ended(&mut self, ctx: &mut Ctx<'_>, result: Result<(), Failure>) {
        self.drop_socket(ctx.poller, Side::Upstream);
        self.parent_io = Interest::default();
        let Some(ident) = self.ident.take() else { return };
        let reply = result.and_then(|()| ident.answer.reply());
        // Fails only if the handshake ended meanwhile.
        let _ = self.hs.handle_ident(ctx.clock(), reply);
    }

    /// Looks its SOCKS4a name up (our own resolver, or the pool's `getaddrinfo`).
    fn ask_name(&self, ctx: &Ctx<'_>, host: String, port: u16) -> bool {
        let task = Task::Resolve(host, port);
        let job = Job { task, slot: self.slot, id: self.id, reply: ctx.inbox.clone(), poller: Arc::clone(ctx.poller) };
        crate::resolver::submit_name(&self.snapshot.config.names, ctx.resolver, job)
    }

    /// Writes pending replies; in the linger stage, shuts the client's write side once done.
    fn flush_out(&mut self) {
        match self.out.flush(&self.client) {
            Ok(true) => {
                if matches!(self.stage, Stage::Linger { .. }) {
                    let _ = self.client.shutdown(Shutdown::Write);
                }
            }
            Ok(false) => {}
            Err(e) => {
                if matches!(self.stage, Stage::Linger { .. }) {
                    self.stage = Stage::Done;
                } else {
                    // The same words as the other adapters: the client is gone.
                    tracing::debug!("writing reply: {e}");
                    self.finish(&CloseReason::ClientGone.to_string());
                }
            }
        }
    }

    /// Answers the handshake's connect: the connection (its local address), or the failure.
    fn connect_done(&mut self, now: Duration, result: Result<SocketAddr, Failure>) {
        if let Ok(local) = result {
            self.meter.connected();
            self.source = Some(local.ip());
        }
        // Fails only if the handshake ended meanwhile.
        let _ = self.hs.handle_connected(now, result);
    }

    /// Starts a non-blocking connect; `Some(result)` if it finished (or failed) at once.
    /// The socket is made by the connection's [`Outgoing`](socks4_server::egress::Outgoing): from
    /// the source the rule's `out` or `--outgoing` names; identd's (`to_identd`) by the system's
    /// choice, as the async driver's (the `out` is for the destinations a rule allows).
    fn start_connect(&mut self, addr: SocketAddr, to_identd: bool) -> Option<Result<SocketAddr, Failure>> {
        let outgoing = if to_identd {
            Outgoing::any()
        } else {
            self.decisions.outgoing(&self.snapshot.egress, || self.client.local_addr().ok().map(|a| a.ip()))
        };
        match start_connect(&outgoing, addr) {
            Ok((stream, true)) => {
                let local = stream.local_addr().map_err(|e| Failure::from(&e));
                if let (Ok(local), false) = (local, to_identd) {
                    outgoing.connected(local);
                }
                self.upstream = Some(stream);
                Some(local)
            }
            Ok((stream, false)) => {
                self.upstream = Some(stream);
                // `rearm` registers it for writability.
                self.connecting = true;
                None
            }
            Err(failure) => Some(Err(failure)),
        }
    }

    fn connect_progress(&mut self, ctx: &mut Ctx<'_>) {
        let Some(stream) = &self.upstream else { return };
        // Writable with no pending error: the connect completed (the poller reports a connecting
        // socket writable only once it has succeeded or failed).
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(Failure::from(&e)),
            Ok(None) => stream.local_addr().map_err(|e| Failure::from(&e)),
        };
        if let (Ok(local), None) = (result, &self.ident) {
            self.decisions.outgoing(&self.snapshot.egress, || None).connected(local);
        }
        self.connecting = false;
        if self.ident.is_some() {
            let ended = match result {
                Ok(_) => self.ident_io(ctx),
                Err(e) => {
                    self.ident_ended(ctx, Err(e));
                    true
                }
            };
            // Still waiting for identd: nothing for the handshake yet.
            ended.then(|| self.drive(ctx));
            return;
        }
        if let Some(attempt) = self.attempt.as_deref_mut() {
            attempt.handle_connected(ctx.now, result.map(drop));
            return self.drive(ctx);
        }
        if result.is_err() {
            self.drop_upstream(ctx.poller);
        }
        self.connect_done(ctx.clock(), result);
        self.drive(ctx);
    }

    /// BIND: listens on the address the client reached us on, port 0 (the decisions took the
    /// BIND-wait slot, held in the admission while the listener lives).
    fn start_listen(&mut self) -> Result<SocketAddr, Failure> {
        let local = self.client.local_addr().map_err(|e| Failure::from(&e))?;
        let ip = local.ip().to_canonical();
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(|e| Failure::from(&e))?;
        listener.set_nonblocking(true).map_err(|e| Failure::from(&e))?;
        let port = listener.local_addr().map_err(|e| Failure::from(&e))?.port();
        self.listener = Some(listener);
        // An IPv6 listener is reported as 0.0.0.0: the client uses the proxy's own address.
        Ok(SocketAddr::new(ip, port))
    }

    fn accept_peer(&mut self, ctx: &mut Ctx<'_>) {
        let Some(listener) = &self.listener else { return };
        let result = match listener.accept() {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                if let Err(e) = stream.set_nonblocking(true) {
                    Err(Failure::from(&e))
                } else {
                    self.upstream = Some(stream);
                    Ok(addr)
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => return,
            Err(e) => Err(Failure::from(&e)),
        };
        // One accept only: the listener closes now.
        self.drop_socket(ctx.poller, Side::Listener);
        let _ = self.hs.handle_bind_peer(ctx.clock(), result);
        self.drive(ctx);
    }

    // ---- relay --------------------------------------------------------------------------------

    fn start_relay(&mut self, ctx: &mut Ctx<'_>) {
        if self.upstream.is_none() {
            return self.finish("relay without an upstream connection");
        }
        let now = self.relay_clock(ctx);
        self.meter.enter(Phase::Relaying);
        if let Some(upstream) = &self.upstream {
            self.snapshot.config.relay_sockets(socket2::SockRef::from(&self.client), socket2::SockRef::from(upstream));
        }
        self.relay = Relay::new(now, self.snapshot.config.timeouts.idle);
        self.bandwidth = self.snapshot.bandwidth.as_deref().map(|b| {
            let user = self.hs.request().map(|r| users::user_name(r.user_id));
            let bandwidth = b.connection(self.client_addr.ip(), user, ctx.now);
            Box::new(Capped { bandwidth, paused: [None; 2], timer: None })
        });
        let early = std::mem::take(&mut self.early);
        self.relay.handle_read(now, RelaySide::Client, early.len());
        let up = Dir::with_pending(early);
        let down = Dir::with_unreported(self.out.take());
        self.stage = Stage::Relay { up, down };
        self.pump_both(ctx, true, true);
    }

    fn relay_event(&mut self, ctx: &mut Ctx<'_>, side: Side, readable: bool, writable: bool) {
        match side {
            // Client readable or upstream writable: the up direction; the reverse: down.
            Side::Client => self.pump_both(ctx, readable, writable),
            Side::Upstream => self.pump_both(ctx, writable, readable),
            Side::Listener => {}
        }
    }

    fn pump_both(&mut self, ctx: &mut Ctx<'_>, do_up: bool, do_down: bool) {
        let now = self.relay_clock(ctx);
        let Stage::Relay { up, down } = &mut self.stage else { return };
        let Some(upstream) = &self.upstream else { return };
        let relay = &mut self.relay;
        let mut capped = self.bandwidth.as_deref_mut();
        let mut failed = false;
        if do_up {
            let sockets = (&self.client, upstream);
            failed = pump_one(up, relay, sockets, RelaySide::Client, capped.as_deref_mut(), ctx, now);
        }
        if do_down && !failed {
            pump_one(down, relay, (upstream, &self.client), RelaySide::Upstream, capped, ctx, now);
        }
        self.settle_relay();
    }

    /// The relay's clock: time since accept.
    fn relay_clock(&self, ctx: &Ctx<'_>) -> Duration {
        ctx.now.saturating_duration_since(self.started)
    }

    /// Performs what the relay asks after its inputs: half-closes, aborts, the end.
    fn settle_relay(&mut self) {
        if !matches!(self.stage, Stage::Relay { .. }) {
            return;
        }
        let Some(upstream) = &self.upstream else { return };
        let relay = &mut self.relay;
        let socket = |side| match side {
            RelaySide::Client => &self.client,
            RelaySide::Upstream => upstream,
        };
        let end = relay.settle(
            // The peer may already be gone; the direction is over either way.
            |side| drop(socket(side).shutdown(Shutdown::Write)),
            // Closing the socket when the connection is dropped then sends a reset.
            |side| drop(socket2::SockRef::from(socket(side)).set_linger(Some(Duration::ZERO))),
        );
        if let Some(end) = end {
            self.meter.close(end.into());
            self.finish(&end.to_string());
        }
    }

    // ---- linger -------------------------------------------------------------------------------

    fn linger_event(&mut self, _ctx: &mut Ctx<'_>, side: Side, readable: bool, writable: bool) {
        if side != Side::Client {
            return;
        }
        if writable {
            self.flush_out();
        }
        if !readable {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match (&self.client).read(&mut buf) {
                Ok(0) => break self.stage = Stage::Done,
                Ok(n) => {
                    if let Stage::Linger { discarded, .. } = &mut self.stage {
                        *discarded += n;
                        if *discarded > DRAIN_BYTES {
                            break self.stage = Stage::Done;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => break self.stage = Stage::Done,
            }
        }
    }

    // ---- bookkeeping --------------------------------------------------------------------------

    /// Ends the connection with `result` (unless a result was already recorded).
    fn finish(&mut self, result: &str) {
        if self.result.is_none() {
            self.result = Some(result.to_owned());
        }
        self.stage = Stage::Done;
    }

    fn interest(&self, side: Side) -> Interest {
        match (&self.stage, side) {
            (Stage::Done, _) => Interest::default(),
            (Stage::Handshake, Side::Client) => {
                Interest { read: self.reading_request || self.watch, write: !self.out.is_empty() }
            }
            (Stage::Handshake, Side::Upstream) => {
                Interest { read: self.parent_io.read, write: self.connecting || self.parent_io.write }
            }
            (Stage::Handshake, Side::Listener) => Interest { read: self.listener.is_some(), write: false },
            (Stage::Relay { up, down }, Side::Client) => {
                let paused = Capped::paused(self.bandwidth.as_deref(), RelaySide::Client);
                Interest { read: up.wants_read() && !paused, write: down.wants_write() }
            }
            (Stage::Relay { up, down }, Side::Upstream) => {
                let paused = Capped::paused(self.bandwidth.as_deref(), RelaySide::Upstream);
                Interest { read: down.wants_read() && !paused, write: up.wants_write() }
            }
            (Stage::Linger { .. }, Side::Client) => Interest { read: true, write: !self.out.is_empty() },
            _ => Interest::default(),
        }
    }

    /// Brings each socket's registration in line with what the state wants.
    fn rearm(&mut self, poller: &Poller) {
        for side in [Side::Client, Side::Upstream, Side::Listener] {
            let want = self.interest(side);
            let i = side as usize;
            if want == self.armed[i] && (self.registered[i] || want.is_none()) {
                continue;
            }
            let key = self.slot * KEYS_PER_CONN + i;
            let event = Event::new(key, want.read, want.write);
            let result = match side {
                Side::Client => arm(poller, &self.client, &mut self.registered[i], event),
                Side::Upstream => match &self.upstream {
                    Some(s) => arm(poller, s, &mut self.registered[i], event),
                    None => continue,
                },
                Side::Listener => match &self.listener {
                    Some(l) => arm(poller, l, &mut self.registered[i], event),
                    None => continue,
                },
            };
            match result {
                Ok(()) => self.armed[i] = want,
                Err(e) => {
                    self.finish(&format!("poller: {e}"));
                    // Done wants nothing: the loop's later sides are skipped by their own check.
                }
            }
        }
    }

    fn drop_socket(&mut self, poller: &Poller, side: Side) {
        let i = side as usize;
        let registered = std::mem::take(&mut self.registered[i]);
        self.armed[i] = Interest::default();
        match side {
            Side::Client => {}
            Side::Upstream => {
                if let Some(s) = self.upstream.take() {
                    if registered {
                        let _ = poller.delete(&s);
                    }
                }
                self.connecting = false;
            }
            Side::Listener => {
                if let Some(l) = self.listener.take() {
                    if registered {
                        let _ = poller.delete(&l);
                    }
                }
                self.admission.end_bind_wait();
            }
        }
    }

    fn drop_upstream(&mut self, poller: &Poller) {
        if let Some(mut racing) = self.racing.take() {
            racing.close(poller);
        }
        self.drop_socket(poller, Side::Upstream);
        self.drop_socket(poller, Side::Listener);
    }

    /// Deregisters every socket; dropping the connection then closes them.
    pub(crate) fn deregister(&mut self, poller: &Poller) {
        self.drop_upstream(poller);
        if std::mem::take(&mut self.registered[Side::Client as usize]) {
            let _ = poller.delete(&self.client);
        }
    }

    /// Writes the connection's one log line.
    pub(crate) fn log(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        match self.proxy {
            Proxy::Ended(Some(end)) => return end.log(self.client_addr, elapsed),
            Proxy::Ended(None) => return,
            Proxy::Reading(_) if self.result.as_deref() == Some(socks4_server::log::SHUTDOWN) => {}
            // Ended by the handshake's deadline (set at accept) or a client error.
            Proxy::Reading(ref reader) => {
                let end = match self.hs_deadline {
                    Some(d) if now >= d => HeaderEnd::TimedOut,
                    _ => reader.handle_eof(),
                };
                return end.log(self.client_addr, elapsed);
            }
            Proxy::Off | Proxy::Proxied => {}
        }
        let request = self.hs.request();
        let (up, down) = (self.relay.bytes(RelaySide::Client), self.relay.bytes(RelaySide::Upstream));
        self.meter.finish(request.as_ref().map(|r| r.command), up, down, self.result.is_some());
        let line = ConnLine {
            client: self.client_addr,
            request,
            result: &Via(&self.result.as_deref().unwrap_or("ok"), self.via.as_deref()),
            up,
            down,
            elapsed: now.saturating_duration_since(self.started),
            worker: self.meter.worker(),
            reply: self.meter.reply(),
            users_file: self.snapshot.verifier.is_some(),
            out: self.source,
        };
        line.log();
    }
}

/// Sends `task` to the resolver pool for the connection in `slot` with `id`; false if the pool is
/// gone.
fn ask(ctx: &Ctx<'_>, slot: usize, id: u64, task: Task) -> bool {
    let job = Job { task, slot, id, reply: ctx.inbox.clone(), poller: Arc::clone(ctx.poller) };
    crate::resolver::submit(ctx.resolver, job)
}

/// Registers (first time) or re-arms a socket.
fn arm<S>(poller: &Poller, source: &S, registered: &mut bool, event: Event) -> io::Result<()>
where
    S: polling::AsSource,
    for<'a> &'a S: polling::AsRawSource,
{
    if *registered {
        poller.modify(source, event)
    } else {
        // SAFETY: every registered socket is deleted from the poller before it is dropped:
        // `drop_socket` and `deregister` do so, and the worker calls `deregister` on every
        // connection before dropping it.
        unsafe { poller.add(source, event)? };
        *registered = true;
        Ok(())
    }
}

/// Pumps one direction and reports what it did to the relay; returns whether a socket failed.
/// With caps, a pump they stopped pauses the direction's reading.
fn pump_one(
    dir: &mut Dir,
    relay: &mut Relay,
    (src, dst): (&TcpStream, &TcpStream),
    from: RelaySide,
    capped: Option<&mut Capped>,
    ctx: &mut Ctx<'_>,
    now: Duration,
) -> bool {
    let mut progress = Progress::default();
    let (direction, at) = (Direction::from(from), ctx.now);
    let caps = capped.as_deref().map(|c| Caps { bandwidth: &c.bandwidth, direction, now: at });
    let result = dir.pump(src, dst, ctx.scratch, ctx.pipes, caps, &mut progress);
    if let Some(capped) = capped {
        capped.paused[from as usize] = progress.wait.map(|wait| at + wait);
    }
    relay.handle_read(now, from, progress.read);
    relay.handle_written(now, from, progress.written);
    if progress.eof {
        relay.handle_eof(now, from);
    }
    let (on, e) = match result {
        Ok(()) => return false,
        Err(PumpError::Read(e)) => (from, e),
        Err(PumpError::Write(e)) => (from.peer(), e),
    };
    tracing::debug!("relay: {on}: {e}");
    relay.handle_error(now, on, Fault::from(&e));
    true
}

/// Starts a non-blocking connect to `addr` from `outgoing`'s next source (no source port bound
/// first): the socket, and whether it connected at once (else it is in progress: writable when done).
pub(crate) fn start_connect(outgoing: &Outgoing<'_>, addr: SocketAddr) -> Result<(TcpStream, bool), Failure> {
    let socket = outgoing.socket(addr).map_err(|e| Failure::from(&e))?;
    let result = socket.connect(&SockAddr::from(addr));
    let stream = TcpStream::from(socket);
    let _ = stream.set_nodelay(true);
    match result {
        Ok(()) => Ok((stream, true)),
        Err(e) if is_in_progress(&e) => Ok((stream, false)),
        Err(e) => Err(Failure::from(&e)),
    }
}

/// A TCP socket for an outgoing connection, non-blocking from the start (one syscall on Linux).
fn is_in_progress(e: &io::Error) -> bool {
    socks4_server::egress::is_in_progress(e)
}

/// What the decisions see of a connection (its snapshot, client and the loop's clocks). A free
/// function, not a method: the caller holds `&mut` of the connection's other fields meanwhile.
fn context<'a>(snapshot: &'a Snapshot, client: SocketAddr, proxy: &Proxy, ctx: &Ctx<'_>) -> Context<'a> {
    Context {
        config: &snapshot.config,
        verifier: snapshot.verifier.as_ref(),
        client,
        proxied: matches!(proxy, Proxy::Proxied),
        upstreams: Upstreams::global(),
        now: ctx.clock(),
        at: ctx.now,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// What one held connection costs the worker's slab, apart from kernel buffers and the
    /// pending bytes of a busy relay. Bandwidth caps add one word (a box, only when capped); the
    /// BIND-wait slot adds nothing (a flag in the admission); the decisions 16 (the route, a box
    /// only when routed, and the users-file check); a chained attempt and the parent it went
    /// through one word each (boxes, only when routed); the live config snapshot one word; the
    /// metrics meter about 64 bytes (its clock readings; inert without `--metrics`) and the PROXY
    /// header state 16; a pending users-file check (its `Verification`, boxed) one word; an ident
    /// exchange on the poller one word (a box, only while identd is asked). 1,120 bytes before
    /// those (at b7064a8), 1,264 with them.
    #[test]
    fn conn_is_small() {
        let size = size_of::<Conn>();
        println!("Conn: {size} bytes");
        assert!(size <= 1264, "Conn is {size} bytes");
    }
}
