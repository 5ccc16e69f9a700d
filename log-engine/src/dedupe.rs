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
#[derive(Debug)]
pub struct Dedupe {
    map: HashMap<IdempotencyKey, DedupeEntry>,
    order: VecDeque<(IdempotencyKey, u64)>,
    window_ms: u64,
    max_entries: usize,
    newest_ms: u64,
    evicted_early: u64,
    /// Entries ever popped from the front of `order`: `order[i]` is at absolute
    /// position `popped + i` (positions let a checkpoint walk the keys across calls).
    popped: u64,
}

impl Dedupe {
    /// An empty map with the given bounds.
    pub fn new(window_ms: u64, max_entries: usize) -> Dedupe {
        Dedupe {
            map: HashMap::new(),
            order: VecDeque::new(),
            window_ms,
            max_entries,
            newest_ms: 0,
            evicted_early: 0,
            popped: 0,
        }
    }

    /// The original record for `key`, if it is still inside the window at `now_ms`.
    pub fn get(&self, key: &IdempotencyKey, now_ms: u64) -> Option<DedupeEntry> {
        let entry = self.map.get(key)?;
        let live = entry.timestamp_ms.saturating_add(self.window_ms) >= now_ms;
        live.then_some(*entry)
    }

    /// Records a durable keyed record, then applies both bounds.
    pub fn insert(&mut self, key: IdempotencyKey, entry: DedupeEntry) {
        self.newest_ms = self.newest_ms.max(entry.timestamp_ms);
        self.map.insert(key, entry);
        self.order.push_back((key, entry.offset));
        self.expire();
    }

    fn expire(&mut self) {
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while let Some(&(key, offset)) = self.order.front() {
            let current = self.map.get(&key).copied();
            let stale = current.is_none_or(|e| e.offset != offset);
            let expired = current.is_some_and(|e| e.timestamp_ms < horizon);
            let over = self.map.len() > self.max_entries;
            if !(stale || expired || over) {
                break;
            }
            self.order.pop_front();
            self.popped += 1;
            if !stale {
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

    /// The absolute position after the newest entry.
    pub fn end_position(&self) -> u64 {
        self.popped + self.order.len() as u64
    }

    /// Live entries at absolute positions `[from, to)`, oldest first, at most `max`
    /// (entries evicted since `from` are skipped). Returns the position to continue from;
    /// `to` (or more) when done.
    pub fn visit_between(
        &self,
        from: u64,
        to: u64,
        max: usize,
        mut visit: impl FnMut(IdempotencyKey, DedupeEntry),
    ) -> u64 {
        let start = from.max(self.popped);
        let stop = to.min(self.end_position());
        let mut position = start;
        let first = (start - self.popped) as usize;
        for (key, offset) in self.order.range(first..).take(max) {
            if position >= stop {
                break;
            }
            position += 1;
            if let Some(entry) = self.map.get(key).filter(|e| e.offset == *offset) {
                visit(*key, *entry);
            }
        }
        if position >= stop {
            to.max(position)
        } else {
            position
        }
    }

    /// Entries oldest first (for checkpoints).
    pub fn iter(&self) -> impl Iterator<Item = (IdempotencyKey, DedupeEntry)> + '_ {
        self.order.iter().filter_map(|(key, offset)| {
            let entry = self.map.get(key)?;
            (entry.offset == *offset).then_some((*key, *entry))
        })
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
