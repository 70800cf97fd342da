//! `Reply::parse` on arbitrary bytes: no panic; a complete reply re-encodes to the first 8 bytes;
//! prefixes are `Partial` until the verdict, which longer inputs keep.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_core::{REPLY_LEN, Reply, Status};

fuzz_target!(|data: &[u8]| {
    let result = Reply::parse(data);
    match result {
        Ok(Status::Complete(reply)) => {
            assert!(data.len() >= REPLY_LEN);
            assert_eq!(reply.to_bytes(), data[..REPLY_LEN]);
            assert_eq!(Reply::parse(&reply.to_bytes()), result);
        }
        Ok(Status::Partial) => assert!(data.len() < REPLY_LEN),
        Err(_) => {}
    }
    let mut verdict = None;
    for k in 0..=data.len().min(REPLY_LEN + 1) {
        let r = Reply::parse(&data[..k]);
        match (&verdict, &r) {
            (None, Ok(Status::Partial)) => {}
            (None, _) => verdict = Some(r),
            (Some(v), _) => assert_eq!(v.is_err(), r.is_err(), "prefix {k}: {r:?} after {v:?}"),
        }
    }
});
