//! Every routing limit, in one place. Names put the qualifier last (`PARTITIONS_MAX`).
//!
//! The relations between them are checked at compile time at the bottom of this file.

/// Partitions a deployment is built with unless the cluster map says otherwise. A power of
/// two, so a partition is the low bits of a stable hash and doubling the count splits each
/// partition `p` into exactly `p` and `p + count` (a local split, no global reshuffle).
pub const PARTITIONS_DEFAULT: u32 = 4096;

/// Most partitions a placement table may hold (a table is `PARTITIONS_MAX × 4` bytes at most).
pub const PARTITIONS_MAX: u32 = 65_536;

/// Bits in a Snowflake id's timestamp field (milliseconds since [`SNOWFLAKE_EPOCH_UNIX_MS`]).
pub const SNOWFLAKE_TIMESTAMP_BITS: u32 = 41;
/// Bits in a Snowflake id's worker field (the design calls it the "node id").
pub const SNOWFLAKE_WORKER_BITS: u32 = 10;
/// Bits in a Snowflake id's per-millisecond sequence field.
pub const SNOWFLAKE_SEQUENCE_BITS: u32 = 12;

/// Id generators that may run at once in one cluster: one per shard of every node, so
/// `nodes × shards_per_node` must not exceed it.
pub const SNOWFLAKE_WORKERS_MAX: u32 = 1 << SNOWFLAKE_WORKER_BITS;
/// Ids one generator issues per millisecond before it borrows the next millisecond.
pub const SNOWFLAKE_IDS_PER_MS_MAX: u32 = 1 << SNOWFLAKE_SEQUENCE_BITS;
/// Largest timestamp field: 2^41 − 1 ms ≈ 69.7 years after the epoch (until 2093-09).
pub const SNOWFLAKE_TIMESTAMP_MAX: u64 = (1 << SNOWFLAKE_TIMESTAMP_BITS) - 1;

/// The Snowflake epoch: 2024-01-01T00:00:00Z as Unix milliseconds. Never change it: it is
/// part of every message id ever issued.
pub const SNOWFLAKE_EPOCH_UNIX_MS: u64 = 1_704_067_200_000;

/// Shards (pinned executors) one node may run. A node's shards are also its Snowflake
/// workers, hence no more than [`SNOWFLAKE_WORKERS_MAX`].
pub const SHARDS_PER_NODE_MAX: u32 = 256;
/// Nodes one cluster may have. Each node needs at least one Snowflake worker.
pub const NODES_MAX: u32 = SNOWFLAKE_WORKERS_MAX;

const _: () = assert!(PARTITIONS_DEFAULT.is_power_of_two());
const _: () = assert!(PARTITIONS_MAX.is_power_of_two());
const _: () = assert!(PARTITIONS_DEFAULT <= PARTITIONS_MAX);
// Partitions and their homes fit the u16/u32 fields that carry them.
const _: () = assert!(PARTITIONS_MAX <= u32::MAX / 2);
const _: () = assert!(NODES_MAX <= u16::MAX as u32 + 1);
const _: () = assert!(SHARDS_PER_NODE_MAX <= u16::MAX as u32 + 1);
// One sign bit (always 0, so ids fit an i64) + timestamp + worker + sequence = 64 bits.
const _: () =
    assert!(1 + SNOWFLAKE_TIMESTAMP_BITS + SNOWFLAKE_WORKER_BITS + SNOWFLAKE_SEQUENCE_BITS == 64);
// A single node with the most shards still gets a worker id for every shard.
const _: () = assert!(SHARDS_PER_NODE_MAX <= SNOWFLAKE_WORKERS_MAX);
