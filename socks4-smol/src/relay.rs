//! Relaying bytes both ways between two streams: early data first, half-close propagated, an idle
//! timeout over both directions, byte counts for the log line.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::Runtime;

/// Bytes read per call, per direction (allocated when the relay starts).
const BUF_LEN: usize = 16 * 1024;

/// Byte counts of one relay, readable while it runs (for a log line written on cancellation).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Client → destination.
    pub(crate) up: Cell<u64>,
    /// Destination → client.
    pub(crate) down: Cell<u64>,
}

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions reached end of file.
    Done,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A read, write or shutdown failed.
    Error(io::Error),
}

/// Relays `client` ⇄ `dest` until both directions have ended, one fails, or both are idle for
/// `idle`. `early` (client bytes that arrived with the request) goes to `dest` first.
pub(crate) async fn relay<R: Runtime>(
    client: R::Stream,
    dest: R::Stream,
    early: &[u8],
    idle: Duration,
    counts: &Counts,
) -> RelayEnd {
    let last = Cell::new(Instant::now());
    let up = pump::<R>(client.clone(), dest.clone(), early, &counts.up, &last);
    let down = pump::<R>(dest, client, &[], &counts.down, &last);
    let both = async {
        match future::try_zip(up, down).await {
            Ok(_) => RelayEnd::Done,
            Err(e) => RelayEnd::Error(e),
        }
    };
    let watchdog = async {
        loop {
            let since = last.get().elapsed();
            if since >= idle {
                return RelayEnd::Idle;
            }
            R::sleep(idle - since).await;
        }
    };
    future::or(both, watchdog).await
}

/// Copies `from` → `to` (after `first`) until end of file, then half-closes `to`.
async fn pump<R: Runtime>(
    mut from: R::Stream,
    mut to: R::Stream,
    first: &[u8],
    count: &Cell<u64>,
    last: &Cell<Instant>,
) -> io::Result<()> {
    if !first.is_empty() {
        to.write_all(first).await?;
        count.set(count.get() + first.len() as u64);
        last.set(Instant::now());
    }
    let mut buf = vec![0u8; BUF_LEN];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.flush().await?;
            return R::shutdown_write(&to);
        }
        last.set(Instant::now());
        to.write_all(&buf[..n]).await?;
        count.set(count.get() + n as u64);
        last.set(Instant::now());
    }
}
