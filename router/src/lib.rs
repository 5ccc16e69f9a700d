//! Who lives where: user/conversation → shard ownership, the cross-shard mesh, fan-out plans.
//!
//! Not built yet: this crate lands with the gateway issue (#4).
