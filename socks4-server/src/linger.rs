//! What every adapter does after a handshake ends with a reply and a close (a rejection, a failed
//! connect, a BIND's failed second reply): the same drain on all three, so that closing with
//! unread client input (which makes the kernel send a reset that can destroy the reply in flight)
//! does not cost the client its reply.
//!
//! After the last reply is written: shut down the write side (the client sees the reply, then end
//! of file), then read and discard the client's input until it closes, for at most [`DRAIN_TIME`]
//! and [`DRAIN_BYTES`], then close. A client that already left is closed at once.
//!
//! ```
//! use socks4_server::linger::{DRAIN_BYTES, DRAIN_TIME};
//! assert!(DRAIN_BYTES >= 200 * 1024 && DRAIN_TIME.as_secs() == 2);
//! ```

use std::time::Duration;

/// The longest a rejected connection is drained before it is closed anyway.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The most client input discarded while draining before the connection is closed anyway.
pub const DRAIN_BYTES: usize = 256 * 1024;
