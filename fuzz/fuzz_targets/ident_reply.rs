//! `ident::parse_reply` on arbitrary bytes, fed in arbitrary chunks.
//!
//! The query's ports are the input's own when it names some (so the fuzzer reaches past the port
//! check without guessing them), or fixed ones. Checks: no panic; fed chunk by chunk, the results
//! are `Partial` until one verdict, which equals the whole input's and every longer prefix keeps
//! (so the result does not depend on the split); a complete reply uses at most the input, ends at
//! its first LF, every strict prefix of it is `Partial` and exactly its bytes parse the same; its
//! fields respect the protocol (tokens, user id length and bytes) and re-encoded canonically they
//! parse back to the same reply; `Partial` only below `MAX_REPLY_LEN` bytes without a LF.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use socks4_core::Status;
use socks4_core::ident::{self, ErrorKind, IdentError, IdentReply, Query};

#[derive(Arbitrary, Debug)]
struct Case {
    /// Use the ports the reply names (if it names two) instead of fixed ones.
    echo_ports: bool,
    /// Chunk sizes: the input is fed in pieces of these lengths (then the rest at once).
    chunks: Vec<u8>,
    bytes: Vec<u8>,
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= ident::MAX_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The reply written the plain way; it must parse back to itself.
fn canonical(q: &Query, reply: &IdentReply<'_>) -> Vec<u8> {
    let mut out = format!("{}, {} : ", q.client_port(), q.server_port()).into_bytes();
    match reply {
        IdentReply::User { os, charset, user } => {
            out.extend_from_slice(b"USERID : ");
            out.extend_from_slice(os.as_bytes());
            if let Some(cs) = charset {
                out.push(b',');
                out.extend_from_slice(cs.as_bytes());
            }
            out.extend_from_slice(b" : ");
            out.extend_from_slice(user);
        }
        IdentReply::Error { token, .. } => {
            out.extend_from_slice(b"ERROR : ");
            out.extend_from_slice(token.as_bytes());
        }
        other => panic!("unknown reply {other:?}"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn check_fields(reply: &IdentReply<'_>) {
    match reply {
        IdentReply::User { os, charset, user } => {
            assert!(is_token(os) && !os.contains(','), "os {os:?}");
            assert!(charset.is_none_or(is_token), "charset {charset:?}");
            assert!(!user.is_empty() && user.len() <= ident::MAX_USER_LEN, "user length {}", user.len());
            assert!(!user.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')), "user bytes {user:?}");
            assert!(!matches!(user.first(), Some(b' ' | b'\t')) && !matches!(user.last(), Some(b' ' | b'\t')));
        }
        IdentReply::Error { kind, token } => {
            assert!(is_token(token), "error token {token:?}");
            let known = [ErrorKind::InvalidPort, ErrorKind::NoUser, ErrorKind::HiddenUser, ErrorKind::UnknownError]
                .into_iter()
                .find(|k| k.to_string().eq_ignore_ascii_case(token));
            assert_eq!(*kind, known.unwrap_or(ErrorKind::Other));
        }
        other => panic!("unknown reply {other:?}"),
    }
}

fuzz_target!(|case: Case| {
    let bytes = &case.bytes[..];
    let mut q = Query::new(6191, 23);
    if let (true, Err(IdentError::WrongPorts { client_port, server_port })) =
        (case.echo_ports, ident::parse_reply(bytes, &q))
    {
        q = Query::new(client_port, server_port);
    }
    let whole = ident::parse_reply(bytes, &q);
    let first_lf = bytes.iter().position(|&b| b == b'\n');

    match &whole {
        Ok(Status::Partial) => assert!(bytes.len() < ident::MAX_REPLY_LEN && first_lf.is_none()),
        Ok(Status::Complete((reply, used))) => {
            let used = *used;
            assert!(used <= bytes.len() && used <= ident::MAX_REPLY_LEN);
            assert_eq!(Some(used - 1), first_lf, "a reply ends at the first LF");
            assert_eq!(ident::parse_reply(&bytes[..used], &q), whole, "exactly the used bytes");
            for k in 0..used {
                assert_eq!(ident::parse_reply(&bytes[..k], &q), Ok(Status::Partial), "strict prefix {k}");
            }
            check_fields(reply);
            let again = canonical(&q, reply);
            assert_eq!(ident::parse_reply(&again, &q), Ok(Status::Complete((*reply, again.len()))), "re-encoded");
        }
        Err(IdentError::LineTooLong) => {
            assert!(bytes.len() >= ident::MAX_REPLY_LEN && first_lf.is_none_or(|i| i >= ident::MAX_REPLY_LEN));
        }
        Err(_) => assert!(first_lf.is_some_and(|i| i < ident::MAX_REPLY_LEN), "an error before the line ended"),
    }

    // Fed in chunks: Partial until the verdict, then the whole input's verdict for good.
    let mut fed = 0;
    let mut decided = false;
    let sizes = case.chunks.iter().map(|&c| usize::from(c)).chain(core::iter::once(bytes.len()));
    for size in sizes {
        fed = (fed + size).min(bytes.len());
        let r = ident::parse_reply(&bytes[..fed], &q);
        if r == Ok(Status::Partial) && !decided {
            continue;
        }
        decided = true;
        assert_eq!(r, whole, "after {fed} of {} bytes", bytes.len());
        if fed == bytes.len() {
            break;
        }
    }
});
