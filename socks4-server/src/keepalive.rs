//! TCP keepalive on relayed sockets (`--keepalive IDLE[,INTERVAL,COUNT]`, config key `keepalive`),
//! off by default: after IDLE without traffic the kernel probes the peer every INTERVAL, and gives
//! the connection up after COUNT unanswered probes, so a NAT box keeps a long idle relay's mapping
//! and a vanished peer is noticed (the relay then sees an error and ends). Applied to both sockets
//! of a relay, the client's and the destination's (or parent's, or BIND peer's), when the relay
//! starts; a reload applies a new setting to relays that start after it.
//!
//! ```
//! use std::time::Duration;
//! use socks4_server::keepalive::Keepalive;
//! let k: Keepalive = "60s,10s,5".parse()?;
//! assert_eq!((k.idle, k.interval, k.count), (Duration::from_secs(60), Some(Duration::from_secs(10)), Some(5)));
//! assert_eq!(k.to_string(), "60s,10s,5");
//! let short: Keepalive = "2m".parse()?;
//! assert_eq!((short.idle.as_secs(), short.interval, short.count), (120, None, None));
//! assert!("0s".parse::<Keepalive>().is_err() && "60s,10s".parse::<Keepalive>().is_err());
//! # Ok::<(), socks4_server::keepalive::BadKeepalive>(())
//! ```

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::{format_duration, parse_duration};

/// The longest idle time or interval Linux takes (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`): 32,767 s.
pub const MAX_SECONDS: u64 = 32_767;
/// The most probes Linux takes (`TCP_KEEPCNT`).
pub const MAX_COUNT: u32 = 127;

/// When to probe an idle relayed connection, and how often and how many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe (whole seconds, 1 to [`MAX_SECONDS`]).
    pub idle: Duration,
    /// Time between probes; `None`: the system's (Linux: 75 s).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped; `None`: the system's (Linux: 9).
    pub count: Option<u32>,
}

impl Keepalive {
    /// Probes after `idle`, with the system's interval and count.
    ///
    /// # Errors
    /// [`BadKeepalive`] for an idle time that is not 1 to [`MAX_SECONDS`] whole seconds.
    pub fn after(idle: Duration) -> Result<Self, BadKeepalive> {
        Ok(Self { idle: seconds(idle, &format_duration(idle))?, interval: None, count: None })
    }

    /// Turns keepalive on for `socket` with these times (`SO_KEEPALIVE`, `TCP_KEEPIDLE`,
    /// `TCP_KEEPINTVL`, `TCP_KEEPCNT`).
    ///
    /// # Errors
    /// The system's, from `setsockopt`.
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        let mut params = TcpKeepalive::new().with_time(self.idle);
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd", windows))]
        if let Some(interval) = self.interval {
            params = params.with_interval(interval);
        }
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
        if let Some(count) = self.count {
            params = params.with_retries(count);
        }
        socket.set_tcp_keepalive(&params)
    }
}

/// Checks a time is 1 to [`MAX_SECONDS`] whole seconds.
fn seconds(d: Duration, text: &str) -> Result<Duration, BadKeepalive> {
    if d.subsec_nanos() != 0 || !(1..=MAX_SECONDS).contains(&d.as_secs()) {
        return Err(BadKeepalive(text.to_string()));
    }
    Ok(d)
}

impl FromStr for Keepalive {
    type Err = BadKeepalive;

    /// `IDLE` or `IDLE,INTERVAL,COUNT`: durations like `60s` or `2m` (whole seconds), a count 1 to
    /// [`MAX_COUNT`].
    fn from_str(s: &str) -> Result<Self, BadKeepalive> {
        let bad = || BadKeepalive(s.to_string());
        let time = |t: &str| parse_duration(t).map_err(|_| bad()).and_then(|d| seconds(d, s));
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        match parts[..] {
            [idle] => Ok(Self { idle: time(idle)?, interval: None, count: None }),
            [idle, interval, count] => {
                let count: u32 = count.parse().ok().filter(|c| (1..=MAX_COUNT).contains(c)).ok_or_else(bad)?;
                Ok(Self { idle: time(idle)?, interval: Some(time(interval)?), count: Some(count) })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.idle))?;
        match (self.interval, self.count) {
            (Some(interval), Some(count)) => write!(f, ",{},{count}", format_duration(interval)),
            (Some(interval), None) => write!(f, ",{},9", format_duration(interval)),
            (None, Some(count)) => write!(f, ",75s,{count}"),
            (None, None) => Ok(()),
        }
    }
}

/// Not a keepalive setting like `60s` or `60s,10s,5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadKeepalive(pub String);

impl fmt::Display for BadKeepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a keepalive like 60s or 60s,10s,5 (IDLE[,INTERVAL,COUNT]: 1 to {MAX_SECONDS} whole seconds, \
             1 to {MAX_COUNT} probes)",
            self.0
        )
    }
}

impl std::error::Error for BadKeepalive {}

impl serde::Serialize for Keepalive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Keepalive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounds_and_applies() {
        for bad in
            ["", "0", "0.5s", "1.5s", "32768s", "10s,1s", "10s,1s,0", "10s,1s,128", "10s,0s,3", "x", "10s,1s,3,4"]
        {
            assert!(bad.parse::<Keepalive>().is_err(), "{bad}");
        }
        let k: Keepalive = "1h, 30s, 3".parse().unwrap();
        assert_eq!(k.to_string(), "3600s,30s,3");
        assert_eq!(k.to_string().parse::<Keepalive>().unwrap(), k);
        assert!(BadKeepalive("x".into()).to_string().contains("60s,10s,5"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        k.apply(SockRef::from(&stream)).unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(
            (
                sock.tcp_keepalive_time().unwrap(),
                sock.tcp_keepalive_interval().unwrap(),
                sock.tcp_keepalive_retries().unwrap()
            ),
            (Duration::from_secs(3600), Duration::from_secs(30), 3)
        );
        assert_eq!(Keepalive::after(Duration::from_secs(5)).unwrap().to_string(), "5s");
    }
}
