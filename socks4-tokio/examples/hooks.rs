//! Runs the project's connection driver on an accept loop of your own, with hooks of your own: a
//! policy check (no SMTP: CONNECT to port 25 gets 91) and your own record of each connection (a
//! numbered audit line on stdout instead of the servers' log line). Everything else (rules, users
//! file, ident, BIND, chaining, relay, drain, metrics) is the driver's, as in `socks4-tokio`.
//!
//! ```text
//! cargo run -p socks4-tokio --example hooks -- 127.0.0.1:1080
//! curl --socks4a 127.0.0.1:1080 http://example.com/
//! ```
//!
//! What it uses: [`socks4_tokio::Tokio`] (the driver's runtime for tokio),
//! [`socks4_tokio::serve_connection`] and [`socks4_tokio::Hooks`]; a configuration snapshot and
//! an admission from `socks4-server`. The connection future is not `Send` (one thread owns each
//! connection): spawn it on a `LocalSet`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use socks4_core::ReplyCode;
use socks4_core::rules::AccessRequest;
use socks4_server::ServerConfig;
use socks4_server::log::ConnLine;
use socks4_server::reload::LiveConfig;
use socks4_tokio::{Hooks, Tokio, serve_connection};
use tokio::net::TcpListener;

/// The embedder's hooks: a port policy and an audit trail.
#[derive(Default)]
struct Audit {
    /// Connections recorded so far.
    served: Cell<u64>,
}

impl Hooks for Audit {
    fn check(&self, client: SocketAddr, request: &AccessRequest<'_>) -> Result<(), ReplyCode> {
        if request.port == 25 {
            println!("audit: {client} refused: port 25");
            return Err(ReplyCode::Rejected);
        }
        Ok(())
    }

    fn closed(&self, line: &ConnLine<'_>) {
        let n = self.served.get() + 1;
        self.served.set(n);
        println!("audit #{n}: {line}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:1080").parse()?;
    // The servers' defaults (clients from loopback only); a real embedder fills in rules, timeouts,
    // a users file... or loads the config file with `socks4_server::config`.
    let live = LiveConfig::new(ServerConfig::default())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        // socks4-server's listener: non-blocking, and its accepted sockets keep TCP urgent data
        // in the stream (`SO_OOBINLINE`), so the relay passes that byte on too.
        let listener = TcpListener::from_std(socks4_server::listen::listen(addr, false)?)?;
        println!("listening on {}", listener.local_addr()?);
        let hooks = Rc::new(Audit::default());
        loop {
            let (stream, peer) = listener.accept().await?;
            // The config as it is now (a reload swaps it for later connections), and this
            // client's claim on the per-client limits (refused: close at once).
            let snapshot = live.snapshot();
            let Ok(admission) = snapshot.limiter.admit(peer.ip(), Instant::now()) else { continue };
            let hooks = Rc::clone(&hooks);
            tokio::task::spawn_local(async move {
                serve_connection::<Tokio, _>(stream, peer, &snapshot, admission, &*hooks).await;
            });
        }
    })
}
