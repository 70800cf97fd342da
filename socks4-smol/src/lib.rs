//! socks4-smol (work in progress).
