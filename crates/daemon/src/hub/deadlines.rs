//! [`Deadlines`]: timers keyed by client, found without walking clients.
//!
//! The loop asks every turn when its next timer is due. Scanning every
//! client for that made a turn's cost grow with idle clients (at 10,000 of
//! them, the loop's latency tripled). A min-heap answers in O(1) and takes
//! O(log n) per timer set. Cancelling is lazy: nothing is removed when a
//! timer stops mattering (a publisher resumed, a client went away); the
//! owner says, when an entry reaches the front, whether it is still current
//! (`current(key, at)`), and stale ones are dropped then. So that stale
//! entries far from the front cannot pile up (a publisher pausing and
//! resuming many times within a long timeout), the whole heap is purged of
//! them whenever it has doubled since the last purge: amortised O(1).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Size below which the heap is never purged.
const MIN_PURGE: usize = 64;

/// A min-heap of `(Instant, K)` with lazy deletion.
#[derive(Debug)]
pub struct Deadlines<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    /// Purge stale entries once the heap grows past this.
    purge_at: usize,
}

impl<K: Ord> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
            purge_at: MIN_PURGE,
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Remember `key`'s timer at `at`. An earlier entry of `key` becomes
    /// stale when `current` stops accepting it; it need not be removed.
    pub fn push(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest timer `current` still accepts, dropping stale ones.
    pub fn next(&mut self, mut current: impl FnMut(K, Instant) -> bool) -> Option<Instant> {
        if self.heap.len() > self.purge_at {
            self.heap.retain(|Reverse((at, k))| current(*k, *at));
            self.purge_at = (2 * self.heap.len()).max(MIN_PURGE);
        }
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            if current(key, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Remove every entry due by `due` (`at <= due`) and return the keys
    /// of those `current` accepts, earliest first. A timer that must fire
    /// again is pushed again by its owner.
    pub fn pop_due(&mut self, due: Instant, mut current: impl FnMut(K, Instant) -> bool) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(&Reverse((at, key))) = self.heap.peek() {
            if at > due {
                break;
            }
            self.heap.pop();
            if current(key, at) {
                out.push(key);
            }
        }
        out
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Nothing held?
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    #[test]
    fn stale_entries_are_skipped_and_dropped_lazily() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut live: HashMap<u32, Instant> = HashMap::new();
        let mut d = Deadlines::default();
        for (k, at) in [(1, ms(10)), (2, ms(20)), (3, ms(30))] {
            live.insert(k, at);
            d.push(at, k);
        }
        // Cancelled: nothing is removed yet.
        live.remove(&1);
        assert_eq!(d.len(), 3);
        // Re-armed later: the old entry goes stale.
        live.insert(2, ms(40));
        d.push(ms(40), 2);
        let is_live = |live: &HashMap<u32, Instant>| {
            let live = live.clone();
            move |k, at| live.get(&k) == Some(&at)
        };
        // 1 and 2's first entry are stale: the next timer is 3's.
        assert_eq!(d.next(is_live(&live)), Some(ms(30)));
        assert_eq!(d.len(), 2, "the stale front entries were dropped");
        // Due by 35 ms: only 3 (2 now fires at 40).
        assert_eq!(d.pop_due(ms(35), is_live(&live)), vec![3]);
        live.remove(&3);
        assert_eq!(d.next(is_live(&live)), Some(ms(40)));
        assert_eq!(d.pop_due(ms(100), is_live(&live)), vec![2]);
        live.remove(&2);
        assert_eq!(d.next(is_live(&live)), None);
        assert!(d.is_empty());
    }

    #[test]
    fn stale_entries_behind_a_live_front_are_purged() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        // One live timer in front, then many cancelled later ones.
        d.push(t0, 0u32);
        for i in 1..=1000u32 {
            d.push(t0 + Duration::from_secs(3600), i);
        }
        let live = |k: u32, _| k == 0;
        assert_eq!(d.next(live), Some(t0));
        assert_eq!(d.len(), 1, "purged once it outgrew the last purge");
        // Growth is amortised: the next purge waits for the heap to double.
        for i in 1..=10u32 {
            d.push(t0 + Duration::from_secs(1), i);
        }
        assert_eq!(d.next(live), Some(t0));
        assert_eq!(d.len(), 11);
    }
}
