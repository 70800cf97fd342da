//! A tiny DNS server for the tests of the servers' own resolver (`--resolver`) and of Happy
//! Eyeballs: on `127.0.0.1`, over UDP and TCP, it answers `A` and `AAAA` questions for the names
//! it was given, `NXDOMAIN` (with an SOA, so the answer may be cached) for the others, and counts
//! the questions it got per name. A name may answer late ([`Zone::slow`]) or, over UDP, only with
//! a truncated answer ([`Zone::truncated`], so the resolver asks again over TCP).
//!
//! Raw bytes, bounded: a question is read only from one datagram (or one TCP message of at most
//! 512 bytes), its name from at most 255 bytes; anything else is ignored.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

/// How one name answers.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    addrs: Vec<IpAddr>,
    delay: Duration,
    truncated: bool,
    ttl: u32,
}

impl Zone {
    /// A name with these addresses (`A` for IPv4, `AAAA` for IPv6, in this order), TTL 300 s.
    pub fn addrs(addrs: &[IpAddr]) -> Self {
        Self { addrs: addrs.to_vec(), ttl: 300, ..Self::default() }
    }

    /// Answers only after `delay`.
    #[must_use]
    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Over UDP, answers truncated (TC, no records): the full answer comes over TCP only.
    #[must_use]
    pub fn truncated(mut self) -> Self {
        self.truncated = true;
        self
    }
}

/// Questions seen, per name (lower case, without the final dot) and transport.
#[derive(Debug, Default)]
struct Seen {
    udp: HashMap<String, usize>,
    tcp: HashMap<String, usize>,
}

/// The running server (its threads end with the test process).
#[derive(Debug, Clone)]
pub struct TestDns {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

/// The negative TTL the SOA of an NXDOMAIN answer carries.
pub const NEGATIVE_TTL: u32 = 60;

impl TestDns {
    /// Starts serving `zones` (name → answer) on `127.0.0.1`, the same port over UDP and TCP.
    ///
    /// # Errors
    /// When no port could be bound for both.
    pub fn start(zones: &[(&str, Zone)]) -> io::Result<Self> {
        let zones: Arc<HashMap<String, Zone>> =
            Arc::new(zones.iter().map(|(name, zone)| (name.to_ascii_lowercase(), zone.clone())).collect());
        let (udp, tcp) = bind_pair()?;
        let addr = udp.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (z, s) = (Arc::clone(&zones), Arc::clone(&seen));
        thread::spawn(move || serve_udp(&udp, &z, &s));
        let (z, s) = (zones, Arc::clone(&seen));
        thread::spawn(move || serve_tcp(&tcp, &z, &s));
        Ok(Self { addr, seen })
    }

    /// Its address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Questions about `name` so far over UDP and over TCP.
    pub fn asked(&self, name: &str) -> (usize, usize) {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let name = name.to_ascii_lowercase();
        (seen.udp.get(&name).copied().unwrap_or(0), seen.tcp.get(&name).copied().unwrap_or(0))
    }
}

fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = io::Error::other("no port");
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn serve_udp(socket: &UdpSocket, zones: &Arc<HashMap<String, Zone>>, seen: &Arc<Mutex<Seen>>) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        let Some(question) = Question::parse(&buf[..n]) else { continue };
        count(seen, &question.name, false);
        let zone = zones.get(&question.name).cloned();
        let delay = zone.as_ref().map(|z| z.delay);
        let Ok(socket) = socket.try_clone() else { continue };
        let answer = move || {
            let truncated = zone.as_ref().is_some_and(|z| z.truncated);
            let _ = socket.send_to(&question.answer(zone.as_ref(), truncated), from);
        };
        match delay {
            Some(delay) if !delay.is_zero() => {
                thread::spawn(move || {
                    thread::sleep(delay);
                    answer();
                });
            }
            _ => answer(),
        }
    }
}

fn serve_tcp(listener: &TcpListener, zones: &Arc<HashMap<String, Zone>>, seen: &Arc<Mutex<Seen>>) {
    for stream in listener.incoming().map_while(Result::ok) {
        let (zones, seen) = (Arc::clone(zones), Arc::clone(seen));
        thread::spawn(move || {
            let _ = serve_tcp_conn(stream, &zones, &seen);
        });
    }
}

fn serve_tcp_conn(mut stream: TcpStream, zones: &HashMap<String, Zone>, seen: &Mutex<Seen>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > 512 {
            return Ok(());
        }
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf)?;
        let Some(question) = Question::parse(&buf) else { return Ok(()) };
        count(seen, &question.name, true);
        let zone = zones.get(&question.name);
        if let Some(delay) = zone.map(|z| z.delay).filter(|d| !d.is_zero()) {
            thread::sleep(delay);
        }
        let answer = question.answer(zone, false);
        let mut out = u16::try_from(answer.len()).unwrap_or(u16::MAX).to_be_bytes().to_vec();
        out.extend_from_slice(&answer);
        stream.write_all(&out)?;
    }
}

fn count(seen: &Mutex<Seen>, name: &str, tcp: bool) {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    let map = if tcp { &mut seen.tcp } else { &mut seen.udp };
    *map.entry(name.to_owned()).or_default() += 1;
}

/// One question of a query.
#[derive(Debug)]
struct Question {
    id: [u8; 2],
    recursion_desired: bool,
    /// The question section as sent (name, type, class).
    raw: Vec<u8>,
    /// Lower case, without the final dot.
    name: String,
    qtype: u16,
}

/// `A` and `AAAA`.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;

impl Question {
    /// The first question of a query, if it is one (no compression in the question's name).
    fn parse(msg: &[u8]) -> Option<Self> {
        let header = msg.get(..12)?;
        let is_query = header[2] & 0x80 == 0;
        let questions = u16::from_be_bytes([header[4], header[5]]);
        if !is_query || questions == 0 {
            return None;
        }
        let mut at = 12;
        let mut labels = Vec::new();
        loop {
            let len = usize::from(*msg.get(at)?);
            at += 1;
            if len == 0 {
                break;
            }
            if len > 63 || at + len > msg.len() || at - 12 > 255 {
                return None;
            }
            labels.push(String::from_utf8_lossy(&msg[at..at + len]).to_ascii_lowercase());
            at += len;
        }
        let fixed = msg.get(at..at + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        Some(Self {
            id: [header[0], header[1]],
            recursion_desired: header[2] & 0x01 != 0,
            raw: msg[12..at + 4].to_vec(),
            name: labels.join("."),
            qtype,
        })
    }

    /// The answer: the zone's records of the question's type, or NXDOMAIN (with an SOA) for a
    /// name it does not know; `truncated`: TC set and no records.
    fn answer(&self, zone: Option<&Zone>, truncated: bool) -> Vec<u8> {
        let records: Vec<Vec<u8>> = match zone {
            Some(zone) if !truncated => zone
                .addrs
                .iter()
                .filter_map(|ip| match (ip, self.qtype) {
                    (IpAddr::V4(v4), TYPE_A) => Some(v4.octets().to_vec()),
                    (IpAddr::V6(v6), TYPE_AAAA) => Some(v6.octets().to_vec()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let nxdomain = zone.is_none();
        let mut flags: u16 = 0x8000 | 0x0400 | 0x0080; // QR, AA, RA
        if self.recursion_desired {
            flags |= 0x0100;
        }
        if truncated {
            flags |= 0x0200;
        }
        if nxdomain {
            flags |= 3;
        }
        let ancount = u16::try_from(records.len()).unwrap_or(0);
        let nscount = u16::from(nxdomain);
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&flags.to_be_bytes());
        for n in [1, ancount, nscount, 0] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.raw);
        let ttl = zone.map_or(NEGATIVE_TTL, |z| z.ttl);
        for rdata in &records {
            out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
            out.extend_from_slice(&self.qtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes()); // IN
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(rdata);
        }
        if nxdomain {
            // SOA of the root: mname ".", rname ".", serial, refresh, retry, expire, minimum.
            out.push(0);
            out.extend_from_slice(&TYPE_SOA.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&NEGATIVE_TTL.to_be_bytes());
            out.extend_from_slice(&22u16.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            for n in [1u32, 3600, 600, 86400, NEGATIVE_TTL] {
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        out
    }
}
