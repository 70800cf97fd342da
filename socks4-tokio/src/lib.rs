//! socks4-tokio (work in progress).
