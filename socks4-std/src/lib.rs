//! socks4-std (work in progress).
