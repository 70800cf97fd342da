//! `rules::numeric_host` (a SOCKS4a name written as a number, which a server must take as that
//! address and never pass on as a name) against the C library's own `inet_aton`, which resolvers
//! (and so parent proxies) use to read a numeric name: on any text without a NUL, the two agree on
//! whether it is an IPv4 address and which (after one trailing dot, as for host patterns); an IPv6
//! literal is an address too. And the server handshake never asks to resolve, nor forwards, such a
//! name: it is authorized with that address.
#![no_main]

use std::ffi::{CString, c_char, c_int};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use socks4_core::rules::numeric_host;
use socks4_core::{Limits, Names, Output, ServerHandshake, Timeouts};

unsafe extern "C" {
    /// glibc's `inet_aton(const char *cp, struct in_addr *inp)`; `in_addr` is one `u32` in network order.
    fn inet_aton(cp: *const c_char, inp: *mut u32) -> c_int;
}

fn libc_inet_aton(text: &str) -> Option<Ipv4Addr> {
    let c = CString::new(text).ok()?;
    let mut addr = 0u32;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `addr` is a valid `in_addr`.
    let ok = unsafe { inet_aton(c.as_ptr(), &mut addr) } != 0;
    ok.then(|| Ipv4Addr::from(u32::from_be(addr)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(host) = std::str::from_utf8(data) else { return };
    if host.contains('\0') {
        return;
    }
    let ours = numeric_host(host);
    let stripped = host.strip_suffix('.').unwrap_or(host);
    let v6 = stripped.split_once('%').map_or(stripped, |(a, _)| a).parse::<Ipv6Addr>().ok();
    match v6 {
        Some(v6) => assert_eq!(ours, Some(IpAddr::V6(v6).to_canonical()), "{host:?}"),
        None => assert_eq!(ours, libc_inet_aton(stripped).map(IpAddr::V4), "{host:?}"),
    }
    // The handshake: a request by this name (when it fits one).
    if host.is_empty() || host.len() > 255 {
        return;
    }
    for names in [Names::Resolve, Names::Forward] {
        let now = Duration::ZERO;
        let mut hs = ServerHandshake::new(now, Limits::default(), Timeouts::default()).with_names(names);
        let mut req = b"\x04\x01\x00\x50\x00\x00\x00\x01\0".to_vec();
        req.extend_from_slice(host.as_bytes());
        req.push(0);
        hs.handle_input(now, &req);
        match (ours, hs.poll_output()) {
            (Some(ip), Output::Authorize(access)) => assert_eq!(access.addr, Some(ip), "{host:?}"),
            (Some(_), Output::Send(_)) => {} // a never-real destination, refused
            (Some(_), other) => panic!("{host:?} (an address) gave {other:?}"),
            (None, _) => {}
        }
    }
});
