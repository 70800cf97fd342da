//! Users-file cases: a client that leaves while its user id is being verified.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::support::{Context, connect_proxy, expect_quiet};
use super::{Ctx, Failure, Outcome};
use crate::targets::EchoTarget;
use crate::wire;

/// Writes a users file `users` in `dir` with one user whose token takes about a second to verify
/// (Argon2id with 64 MiB and 16 passes, the most a users file may ask for; the parameters of
/// `hash-token` take about 20 ms), and returns its path and the user id to send.
///
/// # Errors
/// If the file cannot be written.
pub fn slow_users_file(dir: &Path) -> io::Result<(PathBuf, String)> {
    let token = b"slow-token-for-the-scenario";
    let params = argon2::Params::new(64 * 1024, 16, 1, None).map_err(io::Error::other)?;
    let hash = socks4_server::users::hash_token_with(token, params).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("users");
    std::fs::write(&path, format!("slow:{hash}\n"))?;
    Ok((path, format!("slow:{}", String::from_utf8_lossy(token))))
}

/// A client that resets its connection while the server verifies its user id (the profile's
/// slow user, on a server admitting one connection per client) ends its connection at once: the
/// server watches its client during the check. Checked through the per-client limit: a second
/// connection from the same client, soon after, is admitted (and waits for its request), where a
/// server that only notices once the check is done (a second later) still counts the first one
/// and closes the second at accept.
pub(crate) fn users_check_client_leaves(ctx: &Ctx) -> Result<Outcome, Failure> {
    let Some(user) = ctx.profile.slow_user.as_deref() else {
        return Ok(Outcome::Skip("the profile names no slow users-file user".into()));
    };
    let target = EchoTarget::start().context("starting the echo target")?;
    let mut first = connect_proxy(ctx)?;
    first.write_all(&wire::connect(target.addr(), user.as_bytes())).context("sending CONNECT as the slow user")?;
    // The check is under way; leave with a reset.
    thread::sleep(Duration::from_millis(100));
    socket2::SockRef::from(&first).set_linger(Some(Duration::ZERO))?;
    drop(first);
    thread::sleep(Duration::from_millis(200));
    let mut second = connect_proxy(ctx)?;
    expect_quiet(
        &mut second,
        Duration::from_millis(300),
        "a second connection, 200 ms after the first left during its users-file check",
    )?;
    Ok(Outcome::Pass)
}
