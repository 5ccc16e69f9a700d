//! What the log's I/O thread measures of its own work, readable from any thread (a
//! metrics endpoint) without a lock.
//!
//! Why it exists: append-to-durable latency is the device's time *plus* the time a batch
//! waits for the owner thread and for the I/O thread to be scheduled. This histogram is
//! the first part alone — one batch's write and fdatasync (and, when the batch rolls the
//! segment, the old segment's sync and the spare's installation) as the I/O thread timed
//! them — so the two can be told apart on a live server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the batch I/O time buckets (the last bucket is everything
/// slower).
pub const BATCH_IO_BUCKETS_US: [u64; 12] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000,
];

/// Batch I/O counters, written by the I/O thread only.
#[derive(Debug, Default)]
pub struct BatchIoStats {
    /// Batches per bucket of [`BATCH_IO_BUCKETS_US`], then the slower ones.
    buckets: [AtomicU64; BATCH_IO_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    bytes: AtomicU64,
}

/// The counters at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchIoSnapshot {
    /// Per bucket (not cumulative), the last one past every bound.
    pub buckets: Vec<u64>,
    /// Total I/O time of the batches counted, µs.
    pub sum_us: u64,
    /// Bytes written by the batches counted.
    pub bytes: u64,
}

impl BatchIoSnapshot {
    /// Batches counted.
    pub fn batches(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl BatchIoStats {
    /// One batch of `bytes` took `elapsed` of I/O.
    pub fn record(&self, elapsed: Duration, bytes: usize) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BATCH_IO_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BATCH_IO_BUCKETS_US.len());
        // `position` is at most the bound count: the last bucket exists.
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a batch recorded meanwhile may be in
    /// some and not others).
    pub fn snapshot(&self) -> BatchIoSnapshot {
        BatchIoSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_land_in_the_first_bucket_that_holds_them() {
        let stats = BatchIoStats::default();
        stats.record(Duration::from_micros(50), 4096); // on a bound: that bucket
        stats.record(Duration::from_micros(51), 4096);
        stats.record(Duration::from_micros(700), 8192);
        stats.record(Duration::from_secs(3), 1); // past every bound
        let s = stats.snapshot();
        assert_eq!(s.buckets.len(), BATCH_IO_BUCKETS_US.len() + 1);
        assert_eq!(&s.buckets[..4], &[1, 1, 0, 0]);
        assert_eq!(s.buckets[4], 1, "700 µs is in the ≤ 1 ms bucket");
        assert_eq!(s.buckets[BATCH_IO_BUCKETS_US.len()], 1);
        assert_eq!(s.batches(), 4);
        assert_eq!(s.bytes, 4096 + 4096 + 8192 + 1);
        assert_eq!(s.sum_us, 50 + 51 + 700 + 3_000_000);
    }
}
