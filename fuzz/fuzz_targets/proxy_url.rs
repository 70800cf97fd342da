//! `socks4_tokio::hyper::SocksConnector::from_url` (a proxy URL from a config file or an
//! environment variable such as `ALL_PROXY`) on any text: it never panics; a URL it takes has a
//! user id of at most 255 bytes without a NUL, the scheme's DNS mode and an `http://HOST:PORT/`
//! proxy; and an error never shows the user part: the input is also tried with a marker token
//! as its user part (`PREFIX<token>@REST`), which no error message may contain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_tokio::hyper::SocksConnector;

/// Stands for a secret in the user part (no fuzzed text contains it: see below).
const TOKEN: &str = "Tq7zSECRETk3";

fn check(url: &str) {
    match SocksConnector::from_url(url) {
        Ok(c) => {
            let user = c.user_id_bytes();
            assert!(user.len() <= 255 && !user.contains(&0), "{url:?}: user id {user:?}");
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            assert_eq!(c.is_remote_dns(), scheme.as_deref() == Some("socks4a"), "{url:?}");
            let uri = c.proxy_uri();
            assert_eq!(uri.scheme_str(), Some("http"), "{url:?}: {uri}");
            assert!(uri.port_u16().is_some_and(|p| p != 0), "{url:?}: {uri}");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.contains(TOKEN), "{url:?}: the user part in an error: {shown}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.contains(TOKEN) {
        return;
    }
    check(text);
    // The same text with a secret in its user part: before its last `@` (or with one added).
    let (prefix, rest) = text.rsplit_once('@').unwrap_or(("", text));
    let (scheme, user) = match prefix.split_once("://") {
        Some((scheme, user)) => (format!("{scheme}://"), user),
        None => (String::new(), prefix),
    };
    check(&format!("{scheme}{user}{TOKEN}@{rest}"));
});
