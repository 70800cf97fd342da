//! The text rules of a SOCKS4 user id, in one place: what a user name is, how `NAME:TOKEN` splits,
//! what rules, caps and logs see of it (the name, never the token), and how a user id is escaped
//! in a log line. [`users`](crate::users) (the token check) and [`log`](crate::log) (the
//! connection line) both build on these.

use std::fmt::{self, Display};

use socks4_core::rules::AccessRequest;

/// Longest user name in the users file.
pub const MAX_NAME: usize = 64;

/// Is `name` a valid user name (1–64 bytes of `A–Z a–z 0–9 . _ - @ +`)?
///
/// ```
/// use socks4_server::user_id::valid_name;
/// assert!(valid_name(b"alice.smith@example"));
/// assert!(!valid_name(b"") && !valid_name(b"a b") && !valid_name(b"a:b"));
/// ```
pub fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'))
}

/// Splits a user id `NAME:TOKEN` at its first `:` into a valid name and a non-empty token.
///
/// ```
/// use socks4_server::user_id::split_user_id;
/// assert_eq!(split_user_id(b"alice:tok:en"), Some(("alice", &b"tok:en"[..])));
/// assert_eq!(split_user_id(b"alice"), None);
/// assert_eq!(split_user_id(b"alice:"), None);
/// assert_eq!(split_user_id(b"al ice:x"), None);
/// ```
pub fn split_user_id(user_id: &[u8]) -> Option<(&str, &[u8])> {
    let colon = user_id.iter().position(|&b| b == b':')?;
    let (name, token) = (&user_id[..colon], &user_id[colon + 1..]);
    if !valid_name(name) || token.is_empty() {
        return None;
    }
    std::str::from_utf8(name).ok().map(|name| (name, token))
}

/// The user part of a user id: what comes before the first `:` (all of it when there is none).
/// What rules, per-user caps and logs should see; never the token.
///
/// ```
/// assert_eq!(socks4_server::user_id::user_name(b"alice:secret"), b"alice");
/// assert_eq!(socks4_server::user_id::user_name(b"bob"), b"bob");
/// ```
pub fn user_name(user_id: &[u8]) -> &[u8] {
    user_id.split(|&b| b == b':').next().unwrap_or(user_id)
}

/// The request as rules should see it: the user id replaced by its [`user_name`], so that
/// `allow user alice` matches `alice:TOKEN`. Evaluate it with
/// [`Rules::evaluate`](socks4_core::rules::Rules::evaluate) (after a successful verification),
/// then call `accept` or `reject` on the handshake.
pub fn named(mut request: AccessRequest<'_>) -> AccessRequest<'_> {
    request.user_id = user_name(request.user_id);
    request
}

/// A user id for a log line: `-` when empty, otherwise escaped (see the [module docs](self)).
///
/// ```
/// use socks4_server::user_id::UserId;
/// assert_eq!(UserId(b"alice").to_string(), "alice");
/// assert_eq!(UserId(b"x y=1\n").to_string(), "x\\x20y\\x3d1\\x0a");
/// assert_eq!(UserId(b"").to_string(), "-");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct UserId<'a>(pub &'a [u8]);

impl Display for UserId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for &b in self.0 {
            if b.is_ascii_graphic() && b != b'\\' && b != b'=' {
                fmt::Write::write_char(f, char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}
