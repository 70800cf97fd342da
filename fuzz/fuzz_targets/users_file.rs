//! `Users::parse` (the `--users` file) and `split_user_id` on arbitrary bytes.
//!
//! Checks: no panic (no hashing happens while parsing, so no input can be slow); an error names a
//! line that exists and is not blank or a comment; every parsed user has a valid, unique name and
//! there are no more users than lines; `split_user_id` returns a valid name and a non-empty token
//! that rejoin to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socks4_server::users::{Users, split_user_id, valid_name};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    match Users::parse(data) {
        Ok(users) => {
            assert!(users.len() <= lines.len());
            let mut names: Vec<&str> = users.users().iter().map(|u| u.name()).collect();
            assert!(names.iter().all(|n| valid_name(n.as_bytes())));
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), users.len(), "duplicate names accepted");
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= lines.len(), "line {} of {}", e.line, lines.len());
            let line = lines[e.line - 1].trim_ascii();
            assert!(!line.is_empty() && !line.starts_with(b"#"), "error on a blank or comment line");
            assert!(!e.message.is_empty());
        }
    }
    if let Some((name, token)) = split_user_id(data) {
        assert!(valid_name(name.as_bytes()) && !token.is_empty());
        assert_eq!([name.as_bytes(), b":", token].concat(), data);
    }
});
