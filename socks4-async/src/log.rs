//! The connection's one log record: filled in as the connection goes, written (and its metrics
//! closed) exactly once, when the connection ends or its task is dropped (shutdown after the grace
//! period).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use socks4_core::ServerHandshake;
use socks4_core::rules::Parent;
use socks4_server::bandwidth::{Bandwidth, ConnBandwidth};
use socks4_server::log::{ConnLine, RequestCopy};
use socks4_server::metrics::ConnMeter;
use socks4_server::upstream::Via;
use socks4_server::users;

use crate::Hooks;
use crate::relay::Counts;

/// The per-connection record behind the log line.
pub(crate) struct ConnLog<'h, H: Hooks> {
    pub(crate) client: SocketAddr,
    pub(crate) start: Instant,
    request: RequestCopy,
    result: Option<String>,
    pub(crate) counts: Counts,
    /// Its phases, reply and end in the metrics.
    pub(crate) meter: ConnMeter,
    /// The parent proxy the connection went through (or tried last).
    pub(crate) via: Option<Parent>,
    /// User ids are checked against a users file (see [`ConnLine::users_file`]).
    pub(crate) users_file: bool,
    /// The outgoing connection's source address, once connected.
    pub(crate) out: Option<IpAddr>,
    /// Where the line goes.
    hooks: &'h H,
}

impl<'h, H: Hooks> ConnLog<'h, H> {
    pub(crate) fn new(client: SocketAddr, start: Instant, hooks: &'h H) -> Self {
        ConnLog {
            client,
            start,
            request: RequestCopy::default(),
            result: None,
            counts: Counts::default(),
            meter: ConnMeter::start(),
            via: None,
            users_file: false,
            out: None,
            hooks,
        }
    }

    /// Sets the result, unless one was set before (e.g. why a request was denied).
    pub(crate) fn finish(&mut self, result: impl fmt::Display) {
        self.result.get_or_insert_with(|| result.to_string());
    }

    /// This connection's bandwidth caps under `bandwidth`, with its client's and its user's shares.
    pub(crate) fn bandwidth(&self, bandwidth: &Bandwidth) -> Box<ConnBandwidth> {
        let user = self.request.request().map(|r| users::user_name(r.user_id));
        Box::new(bandwidth.connection(self.client.ip(), user, Instant::now()))
    }

    /// Records the request for the log line.
    pub(crate) fn note_request(&mut self, hs: &ServerHandshake) {
        self.request.note(hs);
    }
}

impl<H: Hooks> Drop for ConnLog<'_, H> {
    fn drop(&mut self) {
        let request = self.request.request();
        let (up, down) = (self.counts.up.get(), self.counts.down.get());
        self.meter.finish(request.as_ref().map(|r| r.command), up, down, self.result.is_some());
        let line = ConnLine {
            client: self.client,
            request,
            result: &Via(&self.result.as_deref().unwrap_or(socks4_server::log::SHUTDOWN), self.via.as_ref()),
            up,
            down,
            elapsed: self.start.elapsed(),
            worker: self.meter.worker(),
            reply: self.meter.reply(),
            users_file: self.users_file,
            out: self.out,
        };
        self.hooks.closed(&line);
    }
}
