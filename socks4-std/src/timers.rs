//! A worker's timer queue: a min-heap of `(deadline, slot, connection id)` with lazy invalidation.
//!
//! Entries are never removed early. A connection remembers the one deadline it relies on
//! (`scheduled`), and with bandwidth caps the one pause timer (`Conn::pause_timer`); an entry that
//! matches neither (the connection is gone, the slot was reused, or an earlier entry replaced it)
//! is skipped when it comes up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One pending deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    /// When it fires.
    pub(crate) at: Instant,
    /// The connection's slab slot.
    pub(crate) slot: usize,
    /// The connection's id, to tell a reused slot from the original.
    pub(crate) id: u64,
}

/// The queue.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Timers {
    /// Adds an entry.
    pub(crate) fn push(&mut self, entry: Entry) {
        self.heap.push(Reverse(entry));
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.push(Entry { at: t0 + Duration::from_millis(20), slot: 1, id: 1 });
        timers.push(Entry { at: t0 + Duration::from_millis(10), slot: 2, id: 2 });
        assert_eq!(timers.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(timers.pop_due(t0), None);
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(30)).map(|e| e.slot), Some(2));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(30)).map(|e| e.slot), Some(1));
        assert_eq!(timers.pop_due(t0 + Duration::from_millis(30)), None);
    }
}
