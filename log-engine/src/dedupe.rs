//! Idempotency map: 16-byte key → the ack of the record that first carried it.
//!
//! Bounded twice: entries older than the window (by record timestamps, relative to the
//! newest timestamp seen) are dropped, and past `max_entries` the oldest are dropped
//! early with a warning. Keys are stored in the records themselves, so recovery rebuilds
//! this map by scanning (or loads it from a checkpoint).

use std::collections::{HashMap, VecDeque};

use crate::format::IdempotencyKey;

/// What a key resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupeEntry {
    /// Conversation of the original record.
    pub conversation_id: u64,
    /// Its sequence.
    pub seq: u64,
    /// Its message id.
    pub message_id: u64,
    /// Its log offset.
    pub offset: u64,
    /// Its timestamp (the window is measured from it).
    pub timestamp_ms: u64,
}

/// The idempotency map of one log.
///
/// Entries live in `order`, oldest first; `map` points a key at its entry's absolute
/// position. So eviction pops the front, and a checkpoint walks `order` sequentially
/// instead of looking every key up in a table far larger than the caches (that lookup
/// walk cost 1–3 µs a key: ~1 s of a shard's time per checkpoint of 1M keys).
#[derive(Debug)]
pub struct Dedupe {
    map: HashMap<IdempotencyKey, u64>,
    order: VecDeque<(IdempotencyKey, DedupeEntry)>,
    window_ms: u64,
    max_entries: usize,
    newest_ms: u64,
    evicted_early: u64,
    /// Entries ever popped from the front of `order`: `order[i]` is at absolute
    /// position `popped + i` (positions let a checkpoint walk the keys across calls).
    popped: u64,
}

/// Smallest growth step of `order` (it grows by doubling up to `max_entries + 1`, never
/// past it, so a full map does not hold a deque twice its bound).
const ORDER_GROWTH_MIN: usize = 1024;

impl Dedupe {
    /// An empty map with the given bounds. The table is sized for `max_entries` at
    /// once: growing it rehashes every key on the owner thread (74 ms at 1M keys), and
    /// an untouched table costs only its control bytes (1 byte a slot) in memory.
    pub fn new(window_ms: u64, max_entries: usize) -> Dedupe {
        Dedupe {
            map: HashMap::with_capacity(max_entries.saturating_add(1)),
            order: VecDeque::new(),
            window_ms,
            max_entries,
            newest_ms: 0,
            evicted_early: 0,
            popped: 0,
        }
    }

    /// The entry at absolute `position`, if it is still held.
    fn at(&self, position: u64) -> Option<&(IdempotencyKey, DedupeEntry)> {
        let index = usize::try_from(position.checked_sub(self.popped)?).ok()?;
        self.order.get(index)
    }

    /// The original record for `key`, if it is still inside the window at `now_ms`.
    pub fn get(&self, key: &IdempotencyKey, now_ms: u64) -> Option<DedupeEntry> {
        let (_, entry) = self.at(*self.map.get(key)?)?;
        let live = entry.timestamp_ms.saturating_add(self.window_ms) >= now_ms;
        live.then_some(*entry)
    }

    /// Records a durable keyed record, then applies both bounds. A key seen again (its
    /// old entry out of the window) points at the new entry; the old one stays in
    /// `order` as a superseded entry until it reaches the front.
    pub fn insert(&mut self, key: IdempotencyKey, entry: DedupeEntry) {
        self.newest_ms = self.newest_ms.max(entry.timestamp_ms);
        if self.order.len() == self.order.capacity() {
            let bound = self.max_entries.saturating_add(1);
            let grow = self
                .order
                .len()
                .max(ORDER_GROWTH_MIN)
                .min(bound.saturating_sub(self.order.len()))
                .max(1);
            self.order.reserve_exact(grow);
        }
        self.map.insert(key, self.end_position());
        self.order.push_back((key, entry));
        self.expire();
    }

    fn expire(&mut self) {
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some(&(key, entry)) = self.order.front() {
            let superseded = self.map.get(&key) != Some(&self.popped);
            let expired = entry.timestamp_ms < horizon;
            let over = self.map.len() > self.max_entries;
            if !(superseded || expired || over) {
                break;
            }
            self.order.pop_front();
            self.popped += 1;
            if !superseded {
                self.map.remove(&key);
                if over && !expired {
                    self.evicted_early += 1;
                    if self.evicted_early.is_power_of_two() {
                        tracing::warn!(
                            evicted = self.evicted_early,
                            max = self.max_entries,
                            "idempotency map full: oldest keys dropped inside the window"
                        );
                    }
                }
            }
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries in the walk order, superseded ones included: what a checkpoint walk
    /// started now visits at most.
    pub fn held_entries(&self) -> usize {
        self.order.len()
    }

    /// The absolute position after the newest entry.
    pub fn end_position(&self) -> u64 {
        self.popped + self.order.len() as u64
    }

    /// Entries at absolute positions `[from, to)`, oldest first, at most `max` (entries
    /// evicted since `from` are skipped). A superseded entry may be visited; its key's
    /// newer entry comes later, so inserting the visited entries in order rebuilds the
    /// same map. Returns the position to continue from; `to` (or more) when done.
    pub fn visit_between(
        &self,
        from: u64,
        to: u64,
        max: usize,
        mut visit: impl FnMut(IdempotencyKey, DedupeEntry),
    ) -> u64 {
        let start = from.max(self.popped);
        let stop = to.min(self.end_position());
        if start >= stop {
            return to.max(start);
        }
        let count = usize::try_from(stop.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(max);
        let first = usize::try_from(start - self.popped).unwrap_or(usize::MAX);
        for (key, entry) in self.order.range(first..).take(count) {
            visit(*key, *entry);
        }
        let position = start + count as u64;
        if position >= stop {
            to.max(position)
        } else {
            position
        }
    }

    /// Held entries oldest first, superseded ones left out.
    pub fn iter(&self) -> impl Iterator<Item = (IdempotencyKey, DedupeEntry)> + '_ {
        (self.popped..)
            .zip(self.order.iter())
            .filter(|(position, (key, _))| self.map.get(key) == Some(position))
            .map(|(_, entry)| *entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visiting_by_position_survives_evictions_between_calls() {
        let mut d = Dedupe::new(u64::MAX, 4);
        for i in 0..4u64 {
            d.insert([i as u8; 16], entry(i + 1, 10));
        }
        let end = d.end_position();
        let mut seen = Vec::new();
        let next = d.visit_between(0, end, 2, |k, _| seen.push(k[0]));
        assert_eq!((next, seen.clone()), (2, vec![0, 1]));
        // Two more keys evict keys 0 and 1; the walk goes on from where it was.
        d.insert([8; 16], entry(9, 10));
        d.insert([9; 16], entry(10, 10));
        let next = d.visit_between(next, end, 10, |k, _| seen.push(k[0]));
        assert_eq!(next, end, "done at the end captured before");
        assert_eq!(
            seen,
            vec![0, 1, 2, 3],
            "newer keys are not part of this walk"
        );
        // A walk that starts before evicted entries skips them.
        let mut rest = Vec::new();
        d.visit_between(0, d.end_position(), 10, |k, _| rest.push(k[0]));
        assert_eq!(rest, vec![2, 3, 8, 9]);
    }

    fn entry(seq: u64, ts: u64) -> DedupeEntry {
        DedupeEntry {
            conversation_id: 1,
            seq,
            message_id: seq,
            offset: seq * 64,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn a_key_seen_again_after_its_window_points_at_the_new_entry() {
        let mut d = Dedupe::new(1000, 100);
        d.insert([1; 16], entry(1, 0));
        d.insert([2; 16], entry(2, 500));
        // At 1500 key 1 is out of the window but not yet expired (newest is 500).
        assert_eq!(d.get(&[1; 16], 1500), None);
        d.insert([1; 16], entry(3, 600));
        assert_eq!(d.get(&[1; 16], 1500), Some(entry(3, 600)));
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.iter().map(|(k, e)| (k[0], e.seq)).collect::<Vec<_>>(),
            [(2, 2), (1, 3)]
        );
        // A checkpoint walk may visit the superseded entry; replaying it in order
        // rebuilds the same map.
        let mut walked = Vec::new();
        d.visit_between(0, d.end_position(), 100, |k, e| walked.push((k, e)));
        let mut rebuilt = Dedupe::new(1000, 100);
        for (k, e) in walked {
            rebuilt.insert(k, e);
        }
        assert_eq!(rebuilt.get(&[1; 16], 1500), Some(entry(3, 600)));
        assert_eq!(
            rebuilt.iter().collect::<Vec<_>>(),
            d.iter().collect::<Vec<_>>()
        );
        // Once the window passes the old entry, it leaves the front without taking the
        // key's newer entry with it.
        d.insert([3; 16], entry(4, 1_550));
        assert_eq!(d.get(&[1; 16], 1_550), Some(entry(3, 600)));
        assert_eq!(d.get(&[2; 16], 1_550), None, "key 2 (at 500) expired");
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn order_never_grows_past_its_bound() {
        let mut d = Dedupe::new(u64::MAX, 3000);
        for i in 0..10_000u64 {
            let mut key = [0; 16];
            key[..8].copy_from_slice(&i.to_le_bytes());
            d.insert(key, entry(i, 0));
        }
        assert_eq!(d.len(), 3000);
        assert!(
            d.order.capacity() <= 3001 + 1,
            "capacity {}",
            d.order.capacity()
        );
    }

    #[test]
    fn window_expires_keys() {
        let mut d = Dedupe::new(1000, 100);
        d.insert([1; 16], entry(1, 0));
        assert_eq!(d.get(&[1; 16], 1000), Some(entry(1, 0)));
        assert_eq!(d.get(&[1; 16], 1001), None);
        d.insert([2; 16], entry(2, 5000));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn entry_bound_drops_oldest() {
        let mut d = Dedupe::new(u64::MAX, 3);
        for i in 1..=5u8 {
            d.insert([i; 16], entry(u64::from(i), 0));
        }
        assert_eq!(d.len(), 3);
        assert!(d.get(&[1; 16], 0).is_none());
        assert!(d.get(&[5; 16], 0).is_some());
        assert_eq!(d.iter().count(), 3);
    }
}
