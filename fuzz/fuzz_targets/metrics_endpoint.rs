//! The metrics endpoint's answer (`metrics::endpoint_answer`) to arbitrary request bytes, with
//! metrics on. Checks: no panic; always one well-formed HTTP/1.1 answer whose Content-Length is
//! the body's length (no body for a HEAD) and whose status is one the endpoint knows;
//! a 200 only for GET or HEAD of /metrics, /healthz or /readyz.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use socks4_server::metrics::{Metrics, endpoint_answer};

fn metrics() -> &'static Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(2, true))
}

fuzz_target!(|request: &[u8]| {
    let answer = endpoint_answer(request, metrics());
    let (head, body) = answer.split_once("\r\n\r\n").expect("a blank line ends the head");
    let status = head.strip_prefix("HTTP/1.1 ").expect("a status line").get(..3).expect("a code");
    assert!(["200", "400", "404", "405", "431", "503"].contains(&status), "{status}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .expect("a number");
    // The request line: the first line with anything on it (a parser may skip empty ones).
    let line = request.split(|&b| b == b'\n').find(|l| !l.iter().all(|b| b.is_ascii_whitespace())).unwrap_or_default();
    let line = line.trim_ascii_start();
    assert!(body.len() == length || (line.starts_with(b"HEAD ") && body.is_empty()), "{answer}");
    if status == "200" {
        assert!(line.starts_with(b"GET /") || line.starts_with(b"HEAD /"), "{request:?}");
    }
});
