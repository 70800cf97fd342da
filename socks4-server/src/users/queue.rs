//! The waiting places of the users-file verifier: bounded, shared fairly between clients.
//!
//! - Each client (an IPv4 address; an IPv6 /64) holds at most `share` places, so one client
//!   cannot fill the queue: past its share it is answered "busy" at once, and others still get in.
//! - Clients are served in turn (start-time fair queuing: a client's n-th waiting check is served
//!   after every other client's n-th), so a client with many checks waiting does not delay a
//!   newcomer by more than one check per lane.
//! - Two lanes: names that verified before ([`Lane::Known`]) and the others ([`Lane::New`]). The
//!   new lane may use all but a reserve of the places; the reserve is only for known names. When
//!   both lanes wait they are served alternately, so neither starves the other.

use std::net::IpAddr;

/// Which lane a check waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// The name verified before (since the server started, carried over reloads).
    Known = 0,
    /// Any other name (first-time logins, unknown names, guesses).
    New = 1,
}

/// Who a check is for, for its share: an IPv4 address, or an IPv6 address's /64 (one host
/// usually owns a whole /64). IPv4-mapped IPv6 addresses count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(u128);

impl ClientKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            // The low 64 bits tell the families apart: 2 for IPv4, 1 for an IPv6 /64.
            IpAddr::V4(v4) => Self((u128::from(u32::from(v4)) << 64) | 2),
            IpAddr::V6(v6) => Self((u128::from(v6) & !u128::from(u64::MAX)) | 1),
        }
    }
}

struct Entry<T> {
    lane: Lane,
    client: ClientKey,
    /// The user whose name it checks (for the known names' lane; `u32::MAX` for none).
    user: u32,
    /// Virtual start time in its lane: the order of service.
    tag: u64,
    /// Arrival order, to break ties.
    seq: u64,
    item: T,
}

/// Why a check found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every place its lane may use is taken.
    Lane,
    /// Its client holds its share already.
    Share,
}

/// The bounded, fair queue of checks waiting for a verification thread.
pub(crate) struct Queue<T> {
    entries: Vec<Entry<T>>,
    /// All places.
    capacity: usize,
    /// Places only [`Lane::Known`] may take.
    reserve: usize,
    /// Places one client may hold.
    share: usize,
    /// Each lane's virtual time: the tag of the last entry served.
    clock: [u64; 2],
    seq: u64,
    /// The lane served next when both wait.
    turn: Lane,
}

impl<T> Queue<T> {
    /// `capacity` places, a quarter of them reserved for known names, each client at most a
    /// sixteenth (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with(capacity, capacity / 4, (capacity / 16).max(1))
    }

    pub(crate) fn with(capacity: usize, reserve: usize, share: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            capacity,
            reserve: reserve.min(capacity),
            share,
            clock: [0; 2],
            seq: 0,
            turn: Lane::Known,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Queues `item` for `client` in `lane`, or says why there is no place (the item comes back).
    #[cfg(test)]
    pub(crate) fn push(&mut self, lane: Lane, client: ClientKey, item: T) -> Result<(), (Full, T)> {
        self.push_for(lane, u32::MAX, client, item)
    }

    /// [`push`](Self::push) for a check of `user`'s name. A name holds at most a share of the
    /// known names' lane: past it, its checks wait in the new lane. Knowing a name that verified
    /// before is not enough to take the reserve with guesses (each a fresh token, so no single
    /// flight), from however many addresses.
    pub(crate) fn push_for(&mut self, lane: Lane, user: u32, client: ClientKey, item: T) -> Result<(), (Full, T)> {
        let known_of_user = self.entries.iter().filter(|e| e.lane == Lane::Known && e.user == user).count();
        let lane = if lane == Lane::Known && known_of_user >= self.share { Lane::New } else { lane };
        let in_lane = self.entries.iter().filter(|e| e.lane == lane).count();
        let lane_room = match lane {
            Lane::Known => self.capacity,
            Lane::New => self.capacity - self.reserve,
        };
        if self.entries.len() >= self.capacity || (lane == Lane::New && in_lane >= lane_room) {
            return Err((Full::Lane, item));
        }
        let mine = self.entries.iter().filter(|e| e.client == client);
        if mine.clone().count() >= self.share {
            return Err((Full::Share, item));
        }
        let last = mine.filter(|e| e.lane == lane).map(|e| e.tag).max();
        let tag = last.unwrap_or(0).max(self.clock[lane as usize]) + 1;
        self.seq += 1;
        self.entries.push(Entry { lane, client, user, tag, seq: self.seq, item });
        Ok(())
    }

    /// The next item to serve: the lanes in turn, in each the smallest virtual start time.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let waits = |lane: Lane| self.entries.iter().any(|e| e.lane == lane);
        let lane = match (waits(Lane::Known), waits(Lane::New)) {
            (true, true) => self.turn,
            (true, false) => Lane::Known,
            (false, true) => Lane::New,
            (false, false) => return None,
        };
        self.turn = if lane == Lane::Known { Lane::New } else { Lane::Known };
        let (i, _) =
            self.entries.iter().enumerate().filter(|(_, e)| e.lane == lane).min_by_key(|(_, e)| (e.tag, e.seq))?;
        let entry = self.entries.swap_remove(i);
        self.clock[lane as usize] = entry.tag;
        Some(entry.item)
    }

    /// Takes out the first item for which `which` holds (a check nobody waits for any more).
    pub(crate) fn remove(&mut self, which: impl Fn(&T) -> bool) -> Option<T> {
        let i = self.entries.iter().position(|e| which(&e.item))?;
        Some(self.entries.swap_remove(i).item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientKey {
        ClientKey::of(s.parse().unwrap())
    }

    #[test]
    fn client_keys() {
        assert_eq!(ip("10.0.0.1"), ip("::ffff:10.0.0.1"));
        assert_ne!(ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(ip("2001:db8:1:2::1"), ip("2001:db8:1:2:ffff::9"), "one /64");
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_ne!(ip("::1"), ip("0.0.0.1"));
    }

    #[test]
    fn one_client_cannot_fill_the_queue() {
        let mut q = Queue::new(64);
        let attacker = ip("192.0.2.1");
        let pushed = (0..1000).filter(|&i| q.push(Lane::New, attacker, i).is_ok()).count();
        assert_eq!(pushed, 4, "a sixteenth of the places");
        assert!(matches!(q.push(Lane::New, attacker, 0), Err((Full::Share, 0))));
        // Another client of the same /64 is the same client; others get in.
        let v6 = ip("2001:db8::1");
        assert!(q.push(Lane::New, v6, 100).is_ok());
        assert!(q.push(Lane::New, ip("2001:db8::ffff"), 101).is_ok());
        for i in 0..40 {
            assert!(q.push(Lane::New, ClientKey(u128::from(1000 + i as u32)), 200 + i).is_ok(), "newcomer {i}");
        }
    }

    #[test]
    fn clients_are_served_in_turn() {
        let mut q = Queue::new(64);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for i in 0..4 {
            q.push(Lane::New, a, format!("a{i}")).unwrap();
        }
        q.push(Lane::New, b, "b0".to_owned()).unwrap();
        assert_eq!(q.pop().as_deref(), Some("a0"));
        assert_eq!(q.pop().as_deref(), Some("b0"), "the newcomer after one of a's");
        q.push(Lane::New, b, "b1".to_owned()).unwrap();
        assert_eq!(q.pop().as_deref(), Some("a1"));
        assert_eq!(q.pop().as_deref(), Some("b1"));
        assert_eq!(q.pop().as_deref(), Some("a2"));
        assert_eq!(q.pop().as_deref(), Some("a3"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn the_reserve_is_for_known_names_and_lanes_alternate() {
        let mut q = Queue::with(8, 2, 8);
        let client = |i: u32| ClientKey(u128::from(i));
        for i in 0..6 {
            q.push(Lane::New, client(i), i).unwrap();
        }
        assert!(matches!(q.push(Lane::New, client(9), 9), Err((Full::Lane, _))), "the new lane is full");
        q.push(Lane::Known, client(10), 10).unwrap();
        q.push(Lane::Known, client(11), 11).unwrap();
        assert!(matches!(q.push(Lane::Known, client(12), 12), Err((Full::Lane, _))), "all places taken");
        assert_eq!(q.len(), 8);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [10, 0, 11, 1, 2, 3, 4, 5]);
        assert!(q.remove(|_| true).is_none());
    }

    #[test]
    fn removed_items_free_their_place() {
        let mut q = Queue::with(2, 0, 2);
        let c = ip("192.0.2.1");
        q.push(Lane::New, c, 1).unwrap();
        q.push(Lane::New, c, 2).unwrap();
        assert!(q.push(Lane::New, c, 3).is_err());
        assert_eq!(q.remove(|&i| i == 1), Some(1));
        q.push(Lane::New, c, 3).unwrap();
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
    }

    #[test]
    fn guesses_at_one_known_name_take_no_more_than_a_share_of_the_reserve() {
        // 8 places, 4 reserved, share 2: guesses at user 7 from many clients.
        let mut q = Queue::with(8, 4, 2);
        for i in 0..8u32 {
            let _ = q.push_for(Lane::Known, 7, ClientKey(u128::from(100 + i)), i);
        }
        // User 7 holds 2 known places; the rest went to the new lane (4 places): 6 taken.
        assert_eq!(q.len(), 6);
        // Another known user still gets the reserve.
        assert!(q.push_for(Lane::Known, 8, ClientKey(1), 100).is_ok());
        assert!(q.push_for(Lane::Known, 9, ClientKey(2), 101).is_ok());
    }
}
