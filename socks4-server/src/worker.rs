//! Which worker the calling thread is: set once at the top of each worker thread
//! ([`Metrics::enter_worker`](crate::metrics::Metrics::enter_worker)), read by the meters and by
//! log lines written without one (`worker=N`).
//!
//! ```
//! assert_eq!(socks4_server::worker::current(), None); // not a worker thread
//! socks4_server::metrics::Metrics::new(4, false).enter_worker(6);
//! assert_eq!(socks4_server::worker::current(), Some(2)); // modulo the worker count
//! ```

use std::cell::Cell;

thread_local! {
    /// The worker this thread is.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread is; `None` on a thread that is no worker.
pub fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Marks the calling thread as worker `index`.
pub(crate) fn enter(index: usize) {
    WORKER.with(|w| w.set(Some(index)));
}
