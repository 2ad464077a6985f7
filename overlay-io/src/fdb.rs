//! A MAC forwarding table with learning, ageing, static entries and a cap.
//!
//! One type serves both tables of the datapath: the VTEP's per-VNI table (inner MAC ->
//! remote VTEP address, RFC 7348 §4) and a bridge domain's table (MAC -> port). Learning
//! never grows a table past its cap: a MAC that does not fit is counted as a cap hit and its
//! frames are flooded, which is what a hardware switch with a full table does.

use std::time::{Duration, Instant};

use hashbrown::HashMap;

use crate::Mac;

/// Where a table entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Configured; never ages, never moves.
    Static,
    /// Learned from a frame's source address at `seen`.
    Learned {
        /// When a frame from this MAC was last seen.
        seen: Instant,
    },
}

/// One entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<D> {
    /// Where frames for the MAC go.
    pub dest: D,
    /// Static or learned.
    pub origin: Origin,
}

/// What [`Fdb::learn`] did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The MAC was known at the same place: timestamp refreshed.
    Refreshed,
    /// A new entry.
    New,
    /// The MAC moved to a new destination (a VM migrated).
    Moved,
    /// The table is full: not learned.
    CapHit,
    /// Learning is off, or the entry is static, or the MAC is a group address.
    Ignored,
}

/// A forwarding table keyed by MAC.
#[derive(Debug, Clone)]
pub struct Fdb<D> {
    map: HashMap<Mac, Entry<D>, foldhash::fast::RandomState>,
    cap: usize,
    ageing: Duration,
    learning: bool,
    learned: usize,
}

impl<D: Copy + PartialEq> Fdb<D> {
    /// An empty table holding at most `cap` learned entries (static entries come on top).
    pub fn new(cap: usize, ageing: Duration, learning: bool) -> Fdb<D> {
        Fdb {
            map: HashMap::with_capacity_and_hasher(cap.min(4096), Default::default()),
            cap,
            ageing,
            learning,
            learned: 0,
        }
    }

    /// Change the limits (on reload); entries above a lowered cap are aged normally, and
    /// turning learning off forgets what was learned.
    pub fn set_limits(&mut self, cap: usize, ageing: Duration, learning: bool) {
        self.cap = cap;
        self.ageing = ageing;
        if self.learning && !learning {
            self.map.retain(|_, e| e.origin == Origin::Static);
            self.learned = 0;
        }
        self.learning = learning;
    }

    /// Replace the static entries with `entries`, keeping learned ones that do not collide.
    pub fn set_static(&mut self, entries: impl IntoIterator<Item = (Mac, D)>) {
        self.map.retain(|_, e| e.origin != Origin::Static);
        for (mac, dest) in entries {
            let old = self.map.insert(
                mac,
                Entry {
                    dest,
                    origin: Origin::Static,
                },
            );
            if matches!(
                old,
                Some(Entry {
                    origin: Origin::Learned { .. },
                    ..
                })
            ) {
                self.learned -= 1;
            }
        }
    }

    /// Look a MAC up.
    #[inline]
    pub fn lookup(&self, mac: &Mac) -> Option<D> {
        self.map.get(mac).map(|e| e.dest)
    }

    /// The full entry of a MAC.
    pub fn entry(&self, mac: &Mac) -> Option<&Entry<D>> {
        self.map.get(mac)
    }

    /// Learn that `mac` is reachable at `dest`.
    #[inline]
    pub fn learn(&mut self, mac: Mac, dest: D, now: Instant) -> Learned {
        if !self.learning || crate::is_group_mac(&mac) {
            return Learned::Ignored;
        }
        if let Some(e) = self.map.get_mut(&mac) {
            return match e.origin {
                Origin::Static => Learned::Ignored,
                Origin::Learned { .. } => {
                    e.origin = Origin::Learned { seen: now };
                    if e.dest == dest {
                        Learned::Refreshed
                    } else {
                        e.dest = dest;
                        Learned::Moved
                    }
                }
            };
        }
        if self.learned >= self.cap {
            return Learned::CapHit;
        }
        self.map.insert(
            mac,
            Entry {
                dest,
                origin: Origin::Learned { seen: now },
            },
        );
        self.learned += 1;
        Learned::New
    }

    /// Remove learned entries not seen for the ageing time; returns how many.
    pub fn age(&mut self, now: Instant) -> usize {
        let ageing = self.ageing;
        let before = self.map.len();
        self.map.retain(|_, e| match e.origin {
            Origin::Static => true,
            Origin::Learned { seen } => now.saturating_duration_since(seen) < ageing,
        });
        let removed = before - self.map.len();
        self.learned -= removed;
        removed
    }

    /// Drop every learned entry whose destination fails `keep` (a port or VTEP removed).
    pub fn retain_dest(&mut self, mut keep: impl FnMut(&D) -> bool) {
        let before = self.map.len();
        self.map
            .retain(|_, e| e.origin == Origin::Static || keep(&e.dest));
        self.learned -= before - self.map.len();
    }

    /// Rewrite every destination (ports renumbered on reload); `None` drops the entry.
    pub fn remap(&mut self, mut f: impl FnMut(D) -> Option<D>) {
        let mut dropped = 0;
        self.map.retain(|_, e| match f(e.dest) {
            Some(d) => {
                e.dest = d;
                true
            }
            None => {
                if e.origin != Origin::Static {
                    dropped += 1;
                }
                false
            }
        });
        self.learned -= dropped;
    }

    /// Entries in the table (static and learned).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Learned entries.
    pub fn learned_len(&self) -> usize {
        self.learned
    }

    /// The ageing time.
    pub fn ageing(&self) -> Duration {
        self.ageing
    }

    /// All entries, for the admin endpoint and tests.
    pub fn iter(&self) -> impl Iterator<Item = (&Mac, &Entry<D>)> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];

    #[test]
    fn learns_refreshes_moves() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(10, Duration::from_secs(300), true);
        assert_eq!(f.learn(A, 1, t0), Learned::New);
        assert_eq!(f.learn(A, 1, t0), Learned::Refreshed);
        assert_eq!(f.learn(A, 2, t0), Learned::Moved);
        assert_eq!(f.lookup(&A), Some(2));
        assert_eq!(f.learn([1, 0, 0, 0, 0, 1], 1, t0), Learned::Ignored);
    }

    #[test]
    fn cap_is_never_exceeded() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(2, Duration::from_secs(300), true);
        assert_eq!(f.learn(A, 1, t0), Learned::New);
        assert_eq!(f.learn(B, 1, t0), Learned::New);
        assert_eq!(f.learn(C, 1, t0), Learned::CapHit);
        assert_eq!(f.len(), 2);
        assert_eq!(f.lookup(&C), None);
        // A known MAC still refreshes and moves when the table is full.
        assert_eq!(f.learn(A, 3, t0), Learned::Moved);
    }

    #[test]
    fn ageing_removes_only_stale_learned() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(10, Duration::from_secs(300), true);
        f.set_static([(C, 9)]);
        f.learn(A, 1, t0);
        f.learn(B, 1, t0 + Duration::from_secs(200));
        assert_eq!(f.age(t0 + Duration::from_secs(299)), 0);
        assert_eq!(f.age(t0 + Duration::from_secs(300)), 1);
        assert_eq!(f.lookup(&A), None);
        assert_eq!(f.lookup(&B), Some(1));
        assert_eq!(f.age(t0 + Duration::from_secs(10_000)), 1);
        assert_eq!(f.lookup(&C), Some(9));
        assert_eq!(f.learned_len(), 0);
    }

    #[test]
    fn static_entries_do_not_move() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(10, Duration::from_secs(300), true);
        f.learn(A, 1, t0);
        f.set_static([(A, 7)]);
        assert_eq!(f.learned_len(), 0);
        assert_eq!(f.learn(A, 1, t0), Learned::Ignored);
        assert_eq!(f.lookup(&A), Some(7));
    }

    #[test]
    fn learning_off_forgets_and_ignores() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(10, Duration::from_secs(300), true);
        f.learn(A, 1, t0);
        f.set_limits(10, Duration::from_secs(300), false);
        assert_eq!(f.lookup(&A), None);
        assert_eq!(f.learn(B, 1, t0), Learned::Ignored);
    }

    #[test]
    fn remap_renumbers_and_drops() {
        let t0 = Instant::now();
        let mut f: Fdb<u8> = Fdb::new(10, Duration::from_secs(300), true);
        f.learn(A, 1, t0);
        f.learn(B, 2, t0);
        f.remap(|d| (d == 1).then_some(5));
        assert_eq!(f.lookup(&A), Some(5));
        assert_eq!(f.lookup(&B), None);
        assert_eq!(f.learned_len(), 1);
    }
}
