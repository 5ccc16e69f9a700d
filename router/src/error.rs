//! [`RouterError`]: the crate's one error enum, layered over one sub-enum per concern.
//!
//! Every variant carries the values that were wrong, so a log line can say what happened
//! without the caller re-deriving it.

use crate::placement::{Home, Partition};

/// Any error this crate returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// A placement table or a placement query was invalid.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A Snowflake generator could not be built or could not issue an id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A shard received work for a key it does not own.
    #[error(transparent)]
    NotOwner(#[from] NotOwner),
}

/// Building or querying a [`crate::placement::Placement`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Shards per node must be in `1..=SHARDS_PER_NODE_MAX`.
    #[error("shards per node {shards} not in 1..={max}")]
    ShardsOutOfRange { shards: u32, max: u32 },
    /// Node indexes must be below `NODES_MAX`.
    #[error("node {node} not below {max}")]
    NodeOutOfRange { node: u32, max: u32 },
    /// A table must have a power-of-two number of partitions, at most `PARTITIONS_MAX`.
    #[error("partition count {count} is not a power of two in 1..={max}")]
    PartitionCountInvalid { count: usize, max: u32 },
    /// A partition index outside the table.
    #[error("partition {partition} not below the table's {count} partitions")]
    PartitionOutOfRange { partition: u32, count: u32 },
    /// A table entry names a shard or node outside the limits.
    #[error("partition {partition} homed at node {node} shard {shard}, outside the limits")]
    HomeInvalid {
        partition: u32,
        node: u16,
        shard: u16,
    },
}

/// Building a [`crate::ids::SnowflakeGenerator`] or issuing an id failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The worker id does not fit in the id's 10-bit field.
    #[error("snowflake worker {worker} not below {max}")]
    WorkerOutOfRange { worker: u32, max: u32 },
    /// `shard` is not one of the node's `shards_per_node` shards.
    #[error("shard {shard} not below the node's {shards_per_node} shards")]
    ShardOutOfRange { shard: u32, shards_per_node: u32 },
    /// `node × shards_per_node + shard` would not fit in the id's worker field.
    #[error(
        "node {node} with {shards_per_node} shards per node needs worker ids past {max}; \
         nodes × shards per node must not exceed {max}"
    )]
    WorkersExceeded {
        node: u32,
        shards_per_node: u32,
        max: u32,
    },
    /// The clock reads earlier than the Snowflake epoch (2024-01-01T00:00:00Z).
    #[error("clock {now_unix_ms} ms is before the snowflake epoch {epoch_unix_ms} ms")]
    ClockBeforeEpoch {
        now_unix_ms: u64,
        epoch_unix_ms: u64,
    },
    /// The timestamp no longer fits in 41 bits (the year 2093), or the generator borrowed
    /// milliseconds up to that point.
    #[error("snowflake timestamp {ms_since_epoch} ms past the epoch exceeds {max}")]
    TimestampOverflow { ms_since_epoch: u64, max: u64 },
    /// The value has its top bit set, which no Snowflake id has.
    #[error("{id:#018x} is not a snowflake id (top bit set)")]
    NotSnowflake { id: u64 },
}

/// What kind of key an ownership check was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedKey {
    /// A user id: its home shard holds its connections, devices and presence.
    User(u64),
    /// A conversation id: its owner shard holds its log, sequence and membership.
    Conversation(u64),
}

/// A shard received work for a key whose partition lives elsewhere: a routing bug or a
/// stale placement table. The receiver rejects the work instead of touching state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{key:?} is in {partition:?} owned by {owner:?}, not by {here:?}")]
pub struct NotOwner {
    /// The key that was routed here.
    pub key: OwnedKey,
    /// Its partition.
    pub partition: Partition,
    /// Where the placement table says the partition lives.
    pub owner: Home,
    /// The shard that received it.
    pub here: Home,
}
