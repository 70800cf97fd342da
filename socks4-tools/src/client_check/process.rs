//! Running the client command: `sh -c COMMAND` in a process group of its own, stdin from
//! `/dev/null`, stdout and stderr captured (bounded), killed as a group past its time limit.

use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The most bytes of stdout (and of stderr) kept.
pub const MAX_OUTPUT: usize = 16 << 20;

/// A running client command.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: Receiver<Vec<u8>>,
    stderr: Receiver<Vec<u8>>,
    exited: Option<ExitStatus>,
}

/// How a client command ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Its exit status; `None` if it was killed for running past its limit.
    pub status: Option<ExitStatus>,
    /// What it printed on stdout.
    pub stdout: Vec<u8>,
    /// What it printed on stderr.
    pub stderr: Vec<u8>,
}

impl Exit {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its exit status in words, and the start of its stderr.
    pub fn describe(&self) -> String {
        let status = match self.status {
            None => "was killed (still running at its time limit)".to_owned(),
            Some(s) => match s.code() {
                Some(c) => format!("exited {c}"),
                None => format!("ended by {s}"),
            },
        };
        // A panic's line, or the last line (a traceback's exception, a tool's one error line).
        let text = String::from_utf8_lossy(&self.stderr);
        let last = text
            .lines()
            .find(|l| l.contains(" panicked at "))
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or_default()
            .trim();
        let err: String = last.chars().take(200).collect();
        if err.is_empty() { status } else { format!("{status}, stderr: {err}") }
    }
}

fn capture(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new().name("client-output".into()).spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(out);
    });
    if spawned.is_err() {
        let (tx, rx) = mpsc::channel();
        let _ = tx.send(Vec::new());
        return rx;
    }
    rx
}

impl Running {
    /// Starts `sh -c command`.
    pub fn spawn(command: &str, case: &str) -> io::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command).env("SOCKS4_CHECK_CASE", case);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().map(capture).ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let stderr = child.stderr.take().map(capture).ok_or_else(|| io::Error::other("no stderr pipe"))?;
        Ok(Running { child, stdout, stderr, exited: None })
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited.is_some()
    }

    /// Kills its process group (the shell and what it started).
    fn kill(&mut self) {
        #[cfg(unix)]
        {
            if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.kill();
    }

    /// Waits up to `limit` for it to exit (killing it after that), then for its output.
    pub fn finish(mut self, limit: Duration) -> Exit {
        let deadline = Instant::now() + limit;
        while !self.exited() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let status = if self.exited() { self.exited } else { None };
        if status.is_none() {
            self.kill();
            let _ = self.child.wait();
        }
        // A child of the shell may still hold the pipes open: give it a moment, then kill the group.
        let mut stdout = self.stdout.recv_timeout(Duration::from_secs(1));
        if stdout.is_err() {
            self.kill();
            stdout = self.stdout.recv_timeout(Duration::from_secs(1));
        }
        let stderr = self.stderr.recv_timeout(Duration::from_secs(1));
        Exit { status, stdout: stdout.unwrap_or_default(), stderr: stderr.unwrap_or_default() }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}
