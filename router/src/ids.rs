//! Snowflake message ids: unique across nodes and shards without coordination.
//!
//! # Layout (most significant bit first)
//! ```text
//! | 1 bit: 0 | 41 bits: ms since epoch | 10 bits: worker | 12 bits: sequence |
//! ```
//! - The top bit is always 0, so ids fit a signed 64-bit integer (JSON, SQL, Java clients)
//!   and never collide with direct conversation ids (see [`crate::conversation`]).
//! - Epoch: [`SNOWFLAKE_EPOCH_UNIX_MS`] = 2024-01-01T00:00:00Z. 41 bits of milliseconds
//!   last until 2093-09; past that, [`IdError::TimestampOverflow`].
//! - Worker: the design's 10-bit "node id". The gateway runs one generator per shard, so
//!   the worker names a (node, shard) pair:
//!   `worker = node × shards_per_node + shard` ([`worker_id`]). Every node of a cluster
//!   runs the same shard count, and `nodes × shards_per_node ≤ SNOWFLAKE_WORKERS_MAX`
//!   (1024) — e.g. 30 nodes × 32 shards, or 512 nodes × 2 shards.
//! - Sequence: 4096 ids per worker per millisecond.
//!
//! # Guarantees of one generator
//! Ids are strictly increasing, hence never repeated, whatever the clock does:
//! - **Clock going backwards**: the generator keeps issuing from the last millisecond it
//!   used, so ids carry a timestamp slightly ahead of the clock until it catches up.
//! - **More than 4096 ids in one millisecond**: the generator moves on to the next
//!   millisecond at once and returns the id (it never blocks or sleeps, being sans-IO);
//!   the timestamp runs ahead of the clock by at most `burst / 4096` ms and falls back
//!   into step as soon as the clock passes it.
//!
//! Two generators never share a worker (the caller builds one per shard), so ids are
//! unique across the cluster. A node that restarts within the same millisecond it last
//! issued from could repeat ids; the restart takes far longer than that.

use crate::error::IdError;
use crate::limits::{
    SNOWFLAKE_EPOCH_UNIX_MS, SNOWFLAKE_IDS_PER_MS_MAX, SNOWFLAKE_SEQUENCE_BITS,
    SNOWFLAKE_TIMESTAMP_MAX, SNOWFLAKE_WORKERS_MAX, SNOWFLAKE_WORKER_BITS,
};

const WORKER_SHIFT: u32 = SNOWFLAKE_SEQUENCE_BITS;
const TIMESTAMP_SHIFT: u32 = SNOWFLAKE_SEQUENCE_BITS + SNOWFLAKE_WORKER_BITS;
const SEQUENCE_MASK: u64 = (1 << SNOWFLAKE_SEQUENCE_BITS) - 1;
const WORKER_MASK: u64 = (1 << SNOWFLAKE_WORKER_BITS) - 1;

/// The fields of a Snowflake id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnowflakeParts {
    /// Milliseconds since the Unix epoch (the id's timestamp plus the Snowflake epoch).
    pub unix_ms: u64,
    /// The worker (node × shards_per_node + shard) that issued it.
    pub worker: u16,
    /// The sequence within that millisecond.
    pub seq: u16,
}

/// The Snowflake worker of `shard` on cluster node `node` when every node runs
/// `shards_per_node` shards: `node × shards_per_node + shard`.
pub fn worker_id(node: u16, shards_per_node: u32, shard: u32) -> Result<u16, IdError> {
    if shard >= shards_per_node {
        return Err(IdError::ShardOutOfRange {
            shard,
            shards_per_node,
        });
    }
    let node = u32::from(node);
    let worker = node
        .checked_mul(shards_per_node)
        .and_then(|w| w.checked_add(shard))
        .filter(|&w| w < SNOWFLAKE_WORKERS_MAX);
    match worker {
        // Below SNOWFLAKE_WORKERS_MAX = 1024, so it fits a u16.
        Some(w) => Ok(w as u16),
        None => Err(IdError::WorkersExceeded {
            node,
            shards_per_node,
            max: SNOWFLAKE_WORKERS_MAX,
        }),
    }
}

/// Splits `id` into its fields; [`IdError::NotSnowflake`] if the top bit is set.
pub fn decode(id: u64) -> Result<SnowflakeParts, IdError> {
    if id >> 63 != 0 {
        return Err(IdError::NotSnowflake { id });
    }
    Ok(SnowflakeParts {
        unix_ms: (id >> TIMESTAMP_SHIFT) + SNOWFLAKE_EPOCH_UNIX_MS,
        // Masked to 10 and 12 bits, so both fit a u16.
        worker: ((id >> WORKER_SHIFT) & WORKER_MASK) as u16,
        seq: (id & SEQUENCE_MASK) as u16,
    })
}

/// Issues Snowflake ids for one worker. Owned by one shard; `now` is passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnowflakeGenerator {
    worker: u16,
    /// Milliseconds since the Snowflake epoch of the last id issued (0 before the first).
    last_ms: u64,
    /// The sequence the next id in `last_ms` gets; `SNOWFLAKE_IDS_PER_MS_MAX` = exhausted.
    seq: u32,
}

impl SnowflakeGenerator {
    /// A generator for `worker` (below [`SNOWFLAKE_WORKERS_MAX`]).
    pub fn new(worker: u16) -> Result<Self, IdError> {
        if u32::from(worker) >= SNOWFLAKE_WORKERS_MAX {
            return Err(IdError::WorkerOutOfRange {
                worker: u32::from(worker),
                max: SNOWFLAKE_WORKERS_MAX,
            });
        }
        Ok(Self {
            worker,
            last_ms: 0,
            seq: 0,
        })
    }

    /// The generator of `shard` on cluster node `node` (see [`worker_id`]).
    pub fn for_shard(node: u16, shards_per_node: u32, shard: u32) -> Result<Self, IdError> {
        Self::new(worker_id(node, shards_per_node, shard)?)
    }

    /// This generator's worker id.
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// The next id, given the wall clock `now_unix_ms`. Strictly greater than every id this
    /// generator issued before (see the module docs for a backwards clock and bursts).
    pub fn next(&mut self, now_unix_ms: u64) -> Result<u64, IdError> {
        let now =
            now_unix_ms
                .checked_sub(SNOWFLAKE_EPOCH_UNIX_MS)
                .ok_or(IdError::ClockBeforeEpoch {
                    now_unix_ms,
                    epoch_unix_ms: SNOWFLAKE_EPOCH_UNIX_MS,
                })?;
        let (ms, seq) = if now > self.last_ms {
            (now, 0)
        } else if self.seq < SNOWFLAKE_IDS_PER_MS_MAX {
            // Same millisecond, or the clock went backwards: stay on last_ms.
            (self.last_ms, self.seq)
        } else {
            // 4096 ids issued in last_ms: borrow the next millisecond instead of blocking.
            (self.last_ms + 1, 0)
        };
        if ms > SNOWFLAKE_TIMESTAMP_MAX {
            return Err(IdError::TimestampOverflow {
                ms_since_epoch: ms,
                max: SNOWFLAKE_TIMESTAMP_MAX,
            });
        }
        self.last_ms = ms;
        self.seq = seq + 1;
        Ok((ms << TIMESTAMP_SHIFT) | (u64::from(self.worker) << WORKER_SHIFT) | u64::from(seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const T0: u64 = SNOWFLAKE_EPOCH_UNIX_MS + 1_000_000;

    #[test]
    fn golden_layout() {
        let mut generator = SnowflakeGenerator::new(5).unwrap();
        let id = generator.next(SNOWFLAKE_EPOCH_UNIX_MS + 1).unwrap();
        assert_eq!(id, (1 << 22) | (5 << 12));
        assert_eq!(generator.next(SNOWFLAKE_EPOCH_UNIX_MS + 1).unwrap(), id + 1);
        let parts = decode(id).unwrap();
        assert_eq!(
            parts,
            SnowflakeParts {
                unix_ms: SNOWFLAKE_EPOCH_UNIX_MS + 1,
                worker: 5,
                seq: 0
            }
        );
        // 2025-01-01T00:00:00Z, worker 1023, sequence 0.
        let mut last = SnowflakeGenerator::new(1023).unwrap();
        assert_eq!(last.next(1_735_689_600_000).unwrap(), 0x01d7_35e2_003f_f000);
    }

    #[test]
    fn worker_ids_fit_and_are_distinct() {
        assert_eq!(worker_id(0, 2, 1), Ok(1));
        assert_eq!(worker_id(29, 32, 31), Ok(959));
        assert_eq!(worker_id(511, 2, 1), Ok(1023));
        assert_eq!(
            worker_id(512, 2, 0),
            Err(IdError::WorkersExceeded {
                node: 512,
                shards_per_node: 2,
                max: 1024
            })
        );
        assert_eq!(
            worker_id(0, 4, 4),
            Err(IdError::ShardOutOfRange {
                shard: 4,
                shards_per_node: 4
            })
        );
        assert_eq!(
            worker_id(0, 0, 0),
            Err(IdError::ShardOutOfRange {
                shard: 0,
                shards_per_node: 0
            })
        );
        assert!(matches!(
            worker_id(u16::MAX, u32::MAX, 0),
            Err(IdError::WorkersExceeded { .. })
        ));
        assert_eq!(
            SnowflakeGenerator::new(1024),
            Err(IdError::WorkerOutOfRange {
                worker: 1024,
                max: 1024
            })
        );
        let mut seen = HashSet::new();
        for node in 0..32u16 {
            for shard in 0..32 {
                assert!(seen.insert(worker_id(node, 32, shard).unwrap()));
            }
        }
        assert_eq!(seen.len(), 1024);
    }

    /// Many generators on many nodes, all issuing in the same milliseconds: no duplicates.
    #[test]
    fn unique_across_generators() {
        let mut generators: Vec<_> = (0..30u16)
            .flat_map(|node| (0..4).map(move |shard| (node, shard)))
            .map(|(node, shard)| SnowflakeGenerator::for_shard(node, 4, shard).unwrap())
            .collect();
        let mut seen = HashSet::new();
        for ms in 0..20 {
            for generator in &mut generators {
                for _ in 0..300 {
                    assert!(seen.insert(generator.next(T0 + ms).unwrap()));
                }
            }
        }
        assert_eq!(seen.len(), 120 * 20 * 300);
    }

    #[test]
    fn monotone_when_clock_goes_backwards() {
        let mut generator = SnowflakeGenerator::new(7).unwrap();
        let clock = [
            T0,
            T0 + 5,
            T0 + 5,
            T0 + 2,
            T0,
            T0 + 5,
            T0 + 6,
            T0 - 1000,
            T0 + 7,
        ];
        let mut last = None;
        let mut latest_clock = 0;
        for now in clock {
            latest_clock = latest_clock.max(now);
            for _ in 0..10 {
                let id = generator.next(now).unwrap();
                assert!(last < Some(id), "{last:?} then {id}");
                // While the clock is behind, ids keep the latest millisecond seen.
                assert_eq!(decode(id).unwrap().unix_ms, latest_clock);
                last = Some(id);
            }
        }
    }

    #[test]
    fn burst_past_4096_borrows_next_millisecond() {
        let mut generator = SnowflakeGenerator::new(3).unwrap();
        let ids: Vec<u64> = (0..3 * 4096 + 5)
            .map(|_| generator.next(T0).unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let parts: Vec<_> = ids.iter().map(|&id| decode(id).unwrap()).collect();
        assert_eq!(
            parts[4095],
            SnowflakeParts {
                unix_ms: T0,
                worker: 3,
                seq: 4095
            }
        );
        assert_eq!(
            parts[4096],
            SnowflakeParts {
                unix_ms: T0 + 1,
                worker: 3,
                seq: 0
            }
        );
        assert_eq!(parts[3 * 4096].unix_ms, T0 + 3);
        // The clock reaching a borrowed millisecond continues after it, never repeating.
        let id = generator.next(T0 + 3).unwrap();
        assert!(id > *ids.last().unwrap());
        // Once the clock passes the borrowed millisecond, ids follow the clock again.
        let id = generator.next(T0 + 10).unwrap();
        assert_eq!(
            decode(id).unwrap(),
            SnowflakeParts {
                unix_ms: T0 + 10,
                worker: 3,
                seq: 0
            }
        );
    }

    #[test]
    fn typed_errors_at_the_edges() {
        let mut generator = SnowflakeGenerator::new(0).unwrap();
        assert_eq!(
            generator.next(SNOWFLAKE_EPOCH_UNIX_MS - 1),
            Err(IdError::ClockBeforeEpoch {
                now_unix_ms: SNOWFLAKE_EPOCH_UNIX_MS - 1,
                epoch_unix_ms: SNOWFLAKE_EPOCH_UNIX_MS
            })
        );
        let end = SNOWFLAKE_EPOCH_UNIX_MS + SNOWFLAKE_TIMESTAMP_MAX;
        assert_eq!(
            generator.next(end + 1),
            Err(IdError::TimestampOverflow {
                ms_since_epoch: SNOWFLAKE_TIMESTAMP_MAX + 1,
                max: SNOWFLAKE_TIMESTAMP_MAX
            })
        );
        // The last millisecond works, for 4096 ids; the 4097th has nowhere to go.
        for _ in 0..4096 {
            let id = generator.next(end).unwrap();
            assert_eq!(id >> 63, 0);
        }
        assert!(matches!(
            generator.next(end),
            Err(IdError::TimestampOverflow { .. })
        ));
        assert_eq!(decode(1 << 63), Err(IdError::NotSnowflake { id: 1 << 63 }));
    }

    proptest! {
        #[test]
        fn decode_round_trips(
            ms in 0..=SNOWFLAKE_TIMESTAMP_MAX,
            worker in 0..1024u16,
            burst in 1..5000usize,
        ) {
            let mut generator = SnowflakeGenerator::new(worker).unwrap();
            let now = SNOWFLAKE_EPOCH_UNIX_MS + ms;
            let mut previous = None;
            for i in 0..burst {
                let Ok(id) = generator.next(now) else {
                    // Only possible at the very end of the timestamp range.
                    prop_assert!(ms + (i as u64) / 4096 >= SNOWFLAKE_TIMESTAMP_MAX);
                    break;
                };
                let parts = decode(id).unwrap();
                prop_assert_eq!(parts.worker, worker);
                prop_assert_eq!(u64::from(parts.seq), (i % 4096) as u64);
                prop_assert_eq!(parts.unix_ms, now + (i / 4096) as u64);
                let rebuilt = ((parts.unix_ms - SNOWFLAKE_EPOCH_UNIX_MS) << 22)
                    | (u64::from(parts.worker) << 12)
                    | u64::from(parts.seq);
                prop_assert_eq!(rebuilt, id);
                prop_assert!(previous < Some(id));
                previous = Some(id);
            }
        }
    }
}
