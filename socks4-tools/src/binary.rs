//! Checks run against an adapter's server binary, the way an operator starts it: the same command
//! line must give the same behaviour, and the same event the same words in the log, on every
//! adapter.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::scenarios::{Ctx, Failure, Outcome, Profile, find};

/// How long the server may take to start, and to write a connection's log line.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The server process; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a log line containing `needle`; returns it.
fn line_with(lines: &Receiver<String>, needle: &str, seen: &mut Vec<String>) -> Result<String, Failure> {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => {
                return Err(Failure::new(format!(
                    "no log line with {needle:?} within {LOG_TIMEOUT:?}; log: {seen:#?}"
                )));
            }
        }
    }
}

/// Starts `binary` with `--listen [::ffff:127.0.0.1]:0` (an IPv4-mapped address, which every
/// adapter must bind as `127.0.0.1`), runs the `upstream_reset_reaches_client` scenario through it
/// and checks the connection's log line: `result=upstream reset up=1 down=1048576`.
///
/// # Errors
/// What went wrong, with the server's log so far.
pub fn mapped_listen_and_reset_words(binary: &Path) -> Result<(), Failure> {
    let mut child = Command::new(binary)
        .args(["--listen", "[::ffff:127.0.0.1]:0", "--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::new(format!("starting {}: {e}", binary.display())))?;
    let stderr = child.stderr.take();
    let server = Server(child);
    let (tx, lines) = mpsc::channel();
    if let Some(stderr) = stderr {
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = Vec::new();
    let listening = line_with(&lines, "listening on ", &mut seen)?;
    let text = listening.rsplit("listening on ").next().unwrap_or_default().trim();
    let proxy: SocketAddr = text.parse().map_err(|e| Failure::new(format!("listen address {text:?}: {e}")))?;
    if !proxy.is_ipv4() || !proxy.ip().is_loopback() {
        return Err(Failure::new(format!("--listen [::ffff:127.0.0.1]:0 listens on {proxy}, not 127.0.0.1")));
    }
    let scenario = find("upstream_reset_reaches_client").ok_or_else(|| Failure::new("no reset scenario"))?;
    match scenario.run_catching(&Ctx { proxy, profile: Profile::default() })? {
        Outcome::Pass => {}
        Outcome::Skip(why) => return Err(Failure::new(format!("the reset scenario skipped: {why}"))),
    }
    let line = line_with(&lines, "conn client=", &mut seen)?;
    drop(server);
    if !line.contains("result=upstream reset up=1 down=1048576 ") {
        return Err(Failure::new(format!("log line {line:?} does not say `result=upstream reset up=1 down=1048576`")));
    }
    Ok(())
}
