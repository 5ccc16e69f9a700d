//! Who lives where: user/conversation → (node, shard) placement, Snowflake message ids and
//! conversation ids. Sans-IO: pure functions and plain state, with `now` passed in.
//!
//! # Layout
//! - [`limits`]: every routing limit (partitions, shards, nodes, Snowflake fields).
//! - [`error`]: [`RouterError`] and its sub-enums ([`PlacementError`], [`IdError`],
//!   [`NotOwner`]).
//! - [`hash`]: the stable 64-bit hash (splitmix64's finalizer, seeded per use) that decides
//!   where data lives; pinned by golden tests, never to change.
//! - [`placement`]: key → partition (fixed) → [`Home`] (node, shard) (a table: modulo on a
//!   single node, a cluster map later), and the ownership checks receivers run.
//! - [`ids`]: the Snowflake generator (one per shard) and decoder.
//! - [`conversation`]: direct (1:1) conversation ids derived from the user pair, group ids
//!   from the Snowflake allocator, and [`ConversationKind`].
//!
//! # Later
//! - `mesh.rs` (with the gateway, issue #4): a thin typed wrapper over bounded glommio
//!   shared channels between shards, batching; the only file here allowed glommio types.
//! - `plan.rs`: the fan-out planner — events in (a persisted send, a receipt, a presence
//!   change), actions out (which shards and devices to push to), sans-IO.
//! - The cluster (issue #9) replaces the single-node [`Placement`] table with the
//!   partition map from Redis through [`Placement::from_homes`] / [`Placement::reassign`].
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod conversation;
pub mod error;
pub mod hash;
pub mod ids;
pub mod limits;
pub mod mesh;
pub mod placement;

pub use conversation::{direct_conversation_id, ConversationKind};
pub use error::{IdError, NotOwner, OwnedKey, PlacementError, RouterError};
pub use ids::{decode, SnowflakeGenerator, SnowflakeParts};
pub use placement::{partition_of_conversation, partition_of_user, Home, Partition, Placement};
