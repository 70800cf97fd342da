//! Cheap timeouts for smol's worker threads.
//!
//! Every connection arms timeouts (handshake, connect, relay idle) and nearly all of them are
//! cancelled long before they fire. An `async_io::Timer` per timeout costs a reactor notification
//! (an eventfd write and one more `epoll_wait` round, often on another thread) each time one is
//! armed. Inside [`Smol::block_on`](crate::Smol) a thread instead keeps its sleepers in a local
//! ordered map, and one `async_io::Timer` per thread is re-armed only when a new deadline is earlier
//! than the one it waits for. Inside [`SmolLocal::block_on`](crate::SmolLocal) the same map has no
//! timer at all: the worker's poller waits until the earliest deadline ([`next_deadline`]) and then
//! wakes the due sleepers ([`fire_due`]). Outside both, [`Sleep`] falls back to an `async_io::Timer`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_io::Timer;

/// Where the thread's timer waits when no sleeper is registered.
const IDLE: Duration = Duration::from_secs(3600);

/// Sleeper keys: unique across threads and wheels.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

type Key = (Instant, u64);

/// One thread's sleepers and the timer that wakes the earliest.
struct Wheel {
    sleepers: BTreeMap<Key, Waker>,
    /// The deadline `timer` is set to.
    armed: Instant,
    /// `None`: the thread's poller waits for the earliest deadline itself (`crate::local`).
    timer: Option<Timer>,
}

thread_local! {
    static WHEEL: RefCell<Option<Wheel>> = const { RefCell::new(None) };
}

/// Runs `future` to completion on this thread with `async_io::block_on`, serving [`Sleep`]s from
/// the thread's wheel.
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> T {
    let installed = WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_some() {
            return false;
        }
        let armed = Instant::now() + IDLE;
        *w = Some(Wheel { sleepers: BTreeMap::new(), armed, timer: Some(Timer::at(armed)) });
        true
    });
    if !installed {
        // Nested: the outer call drives the wheel.
        return async_io::block_on(future);
    }
    let _uninstall = Uninstall;
    async_io::block_on(futures_lite::future::or(future, futures_lite::future::poll_fn(drive::<T>)))
}

/// Removes the thread's wheel when dropped.
pub(crate) struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = WHEEL.try_with(|w| w.borrow_mut().take());
    }
}

/// Installs a wheel without a timer on this thread, for a loop that waits for
/// [`next_deadline`] itself and calls [`fire_due`]. `None` if the thread has a wheel already (an
/// outer loop installed it; it is driven all the same by whoever calls `fire_due`).
#[cfg(all(target_os = "linux", feature = "server"))]
pub(crate) fn install_untimed() -> Option<Uninstall> {
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_some() {
            return None;
        }
        *w = Some(Wheel { sleepers: BTreeMap::new(), armed: Instant::now() + IDLE, timer: None });
        Some(Uninstall)
    })
}

/// The earliest deadline of this thread's sleepers.
#[cfg(all(target_os = "linux", feature = "server"))]
pub(crate) fn next_deadline() -> Option<Instant> {
    WHEEL.with(|w| w.borrow().as_ref().and_then(|w| w.sleepers.keys().next().map(|k| k.0)))
}

/// Wakes this thread's sleepers whose deadline has passed.
#[cfg(all(target_os = "linux", feature = "server"))]
pub(crate) fn fire_due(now: Instant) {
    let mut due = Vec::new();
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        let Some(w) = w.as_mut() else { return };
        while let Some(entry) = w.sleepers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
    });
    for waker in due {
        waker.wake();
    }
}

/// Wakes the sleepers whose deadline has passed and re-arms the thread's timer. Never completes.
fn drive<T>(cx: &mut Context<'_>) -> Poll<T> {
    let mut due = Vec::new();
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        let Some(w) = w.as_mut() else { return };
        let Some(timer) = w.timer.as_mut() else { return };
        while Pin::new(&mut *timer).poll(cx).is_ready() {
            let now = Instant::now();
            while let Some(entry) = w.sleepers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            w.armed = w.sleepers.keys().next().map_or(now + IDLE, |k| k.0);
            timer.set_at(w.armed);
        }
    });
    for waker in due {
        waker.wake();
    }
    Poll::Pending
}

/// Completes at `deadline`: the future behind [`Runtime::sleep`](crate::Runtime::sleep) on smol.
pub(crate) struct Sleep {
    deadline: Instant,
    state: State,
}

enum State {
    New,
    /// Registered in this thread's wheel.
    Wheel(Key),
    /// No wheel on this thread.
    Timer(Timer),
}

impl Sleep {
    pub(crate) fn after(duration: Duration) -> Sleep {
        let now = Instant::now();
        Sleep { deadline: now.checked_add(duration).unwrap_or(now + IDLE * 24 * 365), state: State::New }
    }

    fn unregister(&mut self) {
        if let State::Wheel(key) = std::mem::replace(&mut self.state, State::New) {
            let _ = WHEEL.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut()
                    && let Some(w) = w.as_mut()
                {
                    w.sleepers.remove(&key);
                }
            });
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let State::Timer(timer) = &mut this.state {
            return Pin::new(timer).poll(cx).map(|_| ());
        }
        if Instant::now() >= this.deadline {
            this.unregister();
            return Poll::Ready(());
        }
        let deadline = this.deadline;
        let registered = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let w = w.as_mut()?;
            let key = match this.state {
                State::Wheel(key) => {
                    match w.sleepers.get_mut(&key) {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        Some(waker) => waker.clone_from(cx.waker()),
                        None => {
                            w.sleepers.insert(key, cx.waker().clone());
                        }
                    }
                    key
                }
                _ => {
                    let key = (deadline, NEXT_ID.fetch_add(1, Ordering::Relaxed));
                    w.sleepers.insert(key, cx.waker().clone());
                    key
                }
            };
            if deadline < w.armed
                && let Some(timer) = w.timer.as_mut()
            {
                w.armed = deadline;
                timer.set_at(deadline);
            }
            Some(key)
        });
        match registered {
            Some(key) => {
                this.state = State::Wheel(key);
                Poll::Pending
            }
            None => {
                let mut timer = Timer::at(deadline);
                let poll = Pin::new(&mut timer).poll(cx).map(|_| ());
                this.state = State::Timer(timer);
                poll
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}
