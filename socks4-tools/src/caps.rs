//! Checks of a server's bandwidth caps and BIND-wait cap, run through a proxy started with the
//! caps given here: by [`binary`](crate::binary) against each adapter's binary, and by adapters'
//! library tests against relays the binary does not select (the copy relay where splice is the
//! default, the async-std build).
//!
//! The bandwidth check moves bytes through connections whose total is known and asserts the time
//! taken: at least what the caps allow (a firm lower bound: a bucket starts full, with one second's
//! worth), and a generous upper bound (a capped relay must not stall either). Each group isolates
//! one cap: the others have room for its bytes.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::scenarios::{Failure, Outcome};
use crate::targets::{Report, SinkTarget, SourceTarget};
use crate::wire;

/// The per-connection cap the bandwidth check expects, bytes per second, each direction.
pub const CONN_RATE: u64 = 128 << 10;
/// The per-user cap the bandwidth check expects.
pub const USER_RATE: u64 = 256 << 10;
/// The per-client cap the bandwidth check expects.
pub const CLIENT_RATE: u64 = 256 << 10;

/// The command line that sets [`CONN_RATE`], [`USER_RATE`] and [`CLIENT_RATE`].
pub fn bandwidth_args() -> Vec<String> {
    let mut args = Vec::new();
    for (flag, rate) in [("conn", CONN_RATE), ("user", USER_RATE), ("client", CLIENT_RATE)] {
        args.push(format!("--rate-limit-{flag}"));
        args.push(rate.to_string());
    }
    args
}

/// The slack under the lower bound: GCRA rounds to the nanosecond, and a bucket is made a little
/// after the check's clock starts, so the true bound is never below the computed one; this only
/// absorbs clock granularity.
const LOWER_SLACK: Duration = Duration::from_millis(50);
/// The upper bound over the lower one: generous, for a loaded CI machine.
const UPPER_SLACK: Duration = Duration::from_secs(4);

/// One transfer: `bytes` up (to a sink) or down (from a source) through one connection from
/// `source` with `user`.
#[derive(Debug, Clone, Copy)]
struct Transfer {
    source: Ipv4Addr,
    user: &'static str,
    bytes: u64,
    up: bool,
}

/// A group of transfers run at once, and the least time the cap under test allows for it.
struct Group {
    name: &'static str,
    transfers: Vec<Transfer>,
    /// Bytes per direction through the one bucket under test, and its rate (= its burst).
    through: u64,
    rate: u64,
}

impl Group {
    fn least(&self) -> Duration {
        Duration::from_secs_f64(self.through.saturating_sub(self.rate) as f64 / self.rate as f64)
    }
}

/// Connects to `proxy` from `source` and sends a CONNECT to `target` with `user`; the stream once
/// granted.
pub(crate) fn connect_from(
    source: Ipv4Addr,
    proxy: SocketAddr,
    target: SocketAddrV4,
    user: &[u8],
) -> Result<(u8, TcpStream), Failure> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(&wire::connect(target, user))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    Ok((reply[1], s))
}

/// Runs one transfer to its end.
fn run(t: Transfer, proxy: SocketAddr, sink: SocketAddrV4, source: SocketAddrV4) -> Result<(), Failure> {
    let what = format!("{} {} KiB from {} as {}", if t.up { "up" } else { "down" }, t.bytes >> 10, t.source, t.user);
    let target = if t.up { sink } else { source };
    let (code, mut s) = connect_from(t.source, proxy, target, t.user.as_bytes())?;
    if code != wire::GRANTED {
        return Err(Failure::new(format!("{what}: reply {code}, not 90")));
    }
    if t.up {
        let chunk = vec![0x5au8; 16 * 1024];
        let mut left = t.bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).map_err(|e| Failure::new(format!("{what}: {e}")))?;
            left -= n as u64;
        }
        s.shutdown(Shutdown::Write)?;
        let mut reply = [0u8; Report::WIRE_LEN];
        s.read_exact(&mut reply).map_err(|e| Failure::new(format!("{what}: the sink's report: {e}")))?;
        let got = Report::from_bytes(&reply).bytes;
        if got != t.bytes {
            return Err(Failure::new(format!("{what}: the sink got {got} bytes")));
        }
    } else {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::new(format!("{what}: after {got} bytes: {e}"))),
            }
        }
        if got != t.bytes {
            return Err(Failure::new(format!("{what}: got {got} bytes")));
        }
    }
    Ok(())
}

/// Both directions of `n` connections of `bytes` each, from `source(i)` as `user(i)`.
fn both_ways(n: u8, bytes: u64, source: impl Fn(u8) -> Ipv4Addr, user: impl Fn(u8) -> &'static str) -> Vec<Transfer> {
    (0..n).flat_map(|i| [true, false].map(|up| Transfer { source: source(i), user: user(i), bytes, up })).collect()
}

/// Bandwidth caps through `proxy`, a server started with [`bandwidth_args`] (or the same caps in its
/// config): three groups at once, each from its own loopback addresses, both directions each.
///
/// - per connection: one connection moves 256 KiB each way: at least 1 s at 128 KiB/s (its user
///   and client have room for it);
/// - per user: four connections of one user from four addresses move 128 KiB each way each
///   (within each connection's burst): 512 KiB at 256 KiB/s, at least 1 s;
/// - per client: four connections of four users from one address, likewise.
///
/// Each group must take at least that, and not more than 4 s longer.
///
/// # Errors
/// What went wrong.
pub fn bandwidth(proxy: SocketAddr) -> Result<Outcome, Failure> {
    let sink = SinkTarget::replying().map_err(|e| Failure::new(format!("starting the sink: {e}")))?;
    let source = SourceTarget::start(CONN_RATE, 7).map_err(|e| Failure::new(format!("starting the source: {e}")))?;
    let conn_source = SourceTarget::start(2 * CONN_RATE, 8).map_err(|e| Failure::new(format!("source: {e}")))?;
    const USERS: [&str; 4] = ["bw-client-a", "bw-client-b", "bw-client-c", "bw-client-d"];
    let groups = [
        Group {
            name: "per connection",
            transfers: both_ways(1, 2 * CONN_RATE, |_| Ipv4Addr::new(127, 0, 0, 30), |_| "bw-conn"),
            through: 2 * CONN_RATE,
            rate: CONN_RATE,
        },
        Group {
            name: "per user",
            transfers: both_ways(4, CONN_RATE, |i| Ipv4Addr::new(127, 0, 0, 31 + i), |_| "bw-user"),
            through: 4 * CONN_RATE,
            rate: USER_RATE,
        },
        Group {
            name: "per client",
            transfers: both_ways(4, CONN_RATE, |_| Ipv4Addr::new(127, 0, 0, 35), |i| USERS[usize::from(i)]),
            through: 4 * CONN_RATE,
            rate: CLIENT_RATE,
        },
    ];
    let start = Instant::now();
    let results: Vec<Result<Duration, Failure>> = thread::scope(|scope| {
        let groups: Vec<_> = groups
            .iter()
            .map(|g| {
                let (sink, source, conn_source) = (sink.addr(), source.addr(), conn_source.addr());
                scope.spawn(move || {
                    let handles: Vec<_> = g
                        .transfers
                        .iter()
                        .map(|&t| {
                            let from = if t.bytes == CONN_RATE { source } else { conn_source };
                            thread::spawn(move || run(t, proxy, sink, from))
                        })
                        .collect();
                    for h in handles {
                        h.join().map_err(|_| Failure::new("a transfer thread panicked"))??;
                    }
                    Ok(start.elapsed())
                })
            })
            .collect();
        groups.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Failure::new("a group panicked")))).collect()
    });
    for (group, result) in groups.iter().zip(results) {
        let took = result.map_err(|f| Failure::new(format!("{}: {f}", group.name)))?;
        let least = group.least();
        println!(
            "bandwidth {}: {} KiB each way in {took:.2?} (cap allows {least:.2?})",
            group.name,
            group.through >> 10
        );
        if took + LOWER_SLACK < least {
            return Err(Failure::new(format!(
                "{}: {} KiB each way took {took:?}; the cap of {} KiB/s allows no less than {least:?}",
                group.name,
                group.through >> 10,
                group.rate >> 10
            )));
        }
        if took > least + UPPER_SLACK {
            return Err(Failure::new(format!(
                "{}: {} KiB each way took {took:?}, over {:?} (the cap allows it in {least:?})",
                group.name,
                group.through >> 10,
                least + UPPER_SLACK
            )));
        }
    }
    Ok(Outcome::Pass)
}

/// The per-client BIND-wait cap the BIND check expects (`--max-bind-waits-per-client`).
pub const BIND_WAITS_PER_CLIENT: u32 = 2;

/// Sends a BIND from `source` through `proxy`; the first reply's code, the port it listens on, and
/// the stream.
fn bind_from(source: Ipv4Addr, proxy: SocketAddr) -> Result<(u8, u16, TcpStream), Failure> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&proxy.into(), Duration::from_secs(5))?;
    let mut s = TcpStream::from(socket);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&wire::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), b"binder"))?;
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply)?;
    Ok((reply[1], u16::from_be_bytes([reply[2], reply[3]]), s))
}

/// A BIND from `source` that gets 90 within a second (the server may take a moment to see a wait
/// end); the port and the stream.
fn bind_granted(source: Ipv4Addr, proxy: SocketAddr, what: &str) -> Result<(u16, TcpStream), Failure> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (code, port, s) = bind_from(source, proxy)?;
        if code == wire::GRANTED {
            return Ok((port, s));
        }
        if Instant::now() > deadline {
            return Err(Failure::new(format!("{what}: first reply {code}, not 90")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The BIND-wait cap through `proxy`, a server started with `--max-bind-waits-per-client 2`: two
/// BINDs from one address wait; a third gets 91 while another address still gets 90; once a wait
/// ends because its client left, a new BIND is granted; once a wait ends because its peer arrived
/// (the relay does not count), another is; and the next over the cap gets 91 again.
///
/// # Errors
/// What went wrong.
pub fn bind_waits(proxy: SocketAddr) -> Result<Outcome, Failure> {
    let one = Ipv4Addr::new(127, 0, 0, 40);
    let (_, first) = bind_granted(one, proxy, "1st BIND")?;
    let (second_port, mut second) = bind_granted(one, proxy, "2nd BIND")?;
    let (code, _, _third) = bind_from(one, proxy)?;
    if code != 91 {
        return Err(Failure::new(format!("a 3rd BIND waiting from one address (cap 2): first reply {code}, not 91")));
    }
    let _other = bind_granted(Ipv4Addr::new(127, 0, 0, 41), proxy, "a BIND from another address")?;
    // The first client leaves: its wait ends.
    drop(first);
    let (_, _fourth) = bind_granted(one, proxy, "a BIND after a waiting client left")?;
    // The second's peer arrives: its wait ends.
    let _peer =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, second_port)), Duration::from_secs(5))?;
    let mut reply = [0u8; 8];
    second.read_exact(&mut reply)?;
    if reply[1] != wire::GRANTED {
        return Err(Failure::new(format!("the 2nd BIND's peer arrived: second reply {}, not 90", reply[1])));
    }
    let (_, _fifth) = bind_granted(one, proxy, "a BIND after a peer arrived")?;
    let (code, _, _sixth) = bind_from(one, proxy)?;
    if code != 91 {
        return Err(Failure::new(format!("again 3 BINDs waiting from one address: first reply {code}, not 91")));
    }
    Ok(Outcome::Pass)
}
