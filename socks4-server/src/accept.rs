//! Accept-loop policy shared by the adapters.

/// Does this `accept` error concern only the connection being accepted (retry at once), rather than
/// the listener or the process (e.g. EMFILE: log and back off)?
///
/// ```
/// use std::io::{Error, ErrorKind};
/// use socks4_server::accept::is_per_connection;
/// assert!(is_per_connection(&Error::from(ErrorKind::ConnectionAborted)));
/// assert!(!is_per_connection(&Error::from_raw_os_error(24))); // EMFILE
/// ```
pub fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e.kind(), K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock)
}
