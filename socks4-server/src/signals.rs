//! The signals a server's `main` waits for, on its main thread (no async runtime): `SIGHUP`
//! reloads the config, `SIGINT`/`SIGTERM` stop the server gracefully.
//!
//! ```no_run
//! use socks4_server::signals::{Signal, Signals};
//! let mut signals = Signals::new()?; // before serving: a SIGHUP must never kill the server
//! loop {
//!     match signals.wait() {
//!         Signal::Reload => { /* re-read the config file */ }
//!         Signal::Stop(_) => break,
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGHUP`: reload the config.
    Reload,
    /// `SIGINT` or `SIGTERM` (the number): stop accepting, drain, exit.
    Stop(i32),
}

/// The handlers for `SIGHUP`, `SIGINT` and `SIGTERM`, installed by [`Signals::new`].
pub struct Signals(signal_hook::iterator::Signals);

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals")
    }
}

impl Signals {
    /// Installs the handlers (from then on these signals no longer end the process).
    ///
    /// # Errors
    ///
    /// The I/O error of installing the handlers (the signal pipe cannot be created).
    pub fn new() -> io::Result<Self> {
        signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM]).map(Self)
    }

    /// Blocks until one of the signals arrives. Of signals that arrive together a stop wins, and
    /// several `SIGHUP`s count once.
    pub fn wait(&mut self) -> Signal {
        loop {
            let mut reload = false;
            let mut stop = None;
            // Read them all: the ones left unread would not wake the next wait.
            for signal in self.0.wait() {
                match signal {
                    SIGHUP => reload = true,
                    SIGINT | SIGTERM => stop = Some(signal),
                    _ => {}
                }
            }
            match (stop, reload) {
                (Some(signal), _) => return Signal::Stop(signal),
                (None, true) => return Signal::Reload,
                (None, false) => {}
            }
        }
    }
}
