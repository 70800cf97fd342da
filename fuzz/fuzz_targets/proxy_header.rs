//! `proxy_header::HeaderParser` on arbitrary bytes, fed in arbitrary chunks.
//!
//! Checks: no panic; the verdict (header and where it ends, or the error) does not depend on how
//! the input is split; a header ends within the input, within its version's bound (v1: 107
//! bytes; v2: 16 + `V2_MAX_BLOCK`), and `Partial` is only returned below that bound; after a
//! verdict the parser takes nothing more; a v2 `PROXY` header re-encoded with `encode_v2` parses
//! back to the same header.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::proxy_header::{
    HeaderError, HeaderParser, HeaderStatus, ProxyHeader, V1_MAX_LEN, V2_MAX_BLOCK, encode_v2,
};

#[derive(Arbitrary, Debug)]
struct Case {
    /// Chunk sizes: the input is fed in pieces of these lengths (then the rest at once).
    chunks: Vec<u8>,
    bytes: Vec<u8>,
}

/// Feeds `pieces` in turn; the verdict and its end offset in the whole input.
fn feed<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Option<(Result<ProxyHeader, HeaderError>, usize)> {
    let mut parser = HeaderParser::new();
    let mut offset = 0;
    for piece in pieces {
        match parser.handle_input(piece) {
            Ok(HeaderStatus::Partial) => offset += piece.len(),
            Ok(HeaderStatus::Done { header, used }) => {
                assert!(used <= piece.len(), "used {used} of {}", piece.len());
                assert!(parser.handle_input(b"x").is_err(), "took input after Done");
                return Some((Ok(header), offset + used));
            }
            Ok(other) => panic!("a status this target does not know: {other:?}"),
            Err(e) => {
                assert_eq!(parser.handle_input(b"x"), Err(e), "an error is final");
                return Some((Err(e), offset));
            }
        }
    }
    None
}

fuzz_target!(|case: Case| {
    let bytes = &case.bytes;
    let whole = feed(std::iter::once(&bytes[..]));
    let mut pieces = Vec::new();
    let mut rest = &bytes[..];
    for &c in &case.chunks {
        let n = usize::from(c).min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces.push(rest);
    let chunked = feed(pieces.into_iter());
    let bound = if bytes.first() == Some(&b'P') { V1_MAX_LEN } else { 16 + V2_MAX_BLOCK };
    match (&whole, &chunked) {
        (Some((Ok(h1), end1)), Some((Ok(h2), end2))) => {
            assert_eq!((h1, end1), (h2, end2), "depends on the split");
            assert!(*end1 <= bytes.len() && *end1 <= bound);
            // Exactly its bytes give the same header.
            assert_eq!(feed(std::iter::once(&bytes[..*end1])).map(|(h, e)| (h.ok(), e)), Some((Some(*h1), *end1)));
            if let ProxyHeader::Proxy { source, destination } = h1 {
                if bytes[0] == b'\r' && source.is_ipv4() == destination.is_ipv4() {
                    let mut out = [0u8; 52];
                    let n = encode_v2(*source, *destination, &mut out);
                    assert_eq!(feed(std::iter::once(&out[..n])).map(|(h, _)| h.ok()), Some(Some(*h1)));
                }
            }
        }
        (Some((Err(e1), _)), Some((Err(e2), _))) => assert_eq!(e1, e2, "depends on the split"),
        (None, None) => assert!(bytes.len() < bound, "Partial after {} bytes", bytes.len()),
        _ => panic!("whole {whole:?} vs chunked {chunked:?}"),
    }
});
