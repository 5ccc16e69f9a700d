//! Who lives where: user → home (node, shard), conversation → owner (node, shard).
//!
//! # Two layers
//! 1. **Key → partition**, fixed forever: `partition = hash64(seed, id) & (count − 1)`
//!    with the stable hash of [`crate::hash`] (seed `"cfb-user"` for users, `"cfb-conv"` for
//!    conversations) and a power-of-two partition count ([`PARTITIONS_DEFAULT`] = 4096).
//!    No deployment change ever moves a key to another partition.
//! 2. **Partition → [`Home`]** (node index, shard index), a table ([`Placement`]). A single
//!    node builds it as `shard = partition % shards` ([`Placement::single_node`]); a cluster
//!    replaces it with the partition map it reads from its coordination store
//!    ([`Placement::from_homes`], [`Placement::reassign`]).
//!
//! # What moves when
//! With modulo placement, changing a node's shard count re-homes every partition whose
//! `p % shards` changes — from 4 to 8 shards that is half of them — and their data must
//! move with them (or be rebuilt from the log) before the node serves. That is the price of
//! a table that needs no coordination. The partition layer exists so a cluster can move
//! whole partitions one at a time: [`Placement::reassign`] moves exactly one partition's
//! keys and nothing else.
//!
//! # Receivers check ownership
//! A shard that receives work for a key asks [`Placement::check_user_home`] or
//! [`Placement::check_conversation_owner`] first and rejects the work with [`NotOwner`]
//! if a stale table or a routing bug sent it to the wrong place (glommio `sharding.rs`).

use crate::error::{NotOwner, OwnedKey, PlacementError};
use crate::hash::{hash64, CONVERSATION_SEED, USER_SEED};
use crate::limits::{NODES_MAX, PARTITIONS_DEFAULT, PARTITIONS_MAX, SHARDS_PER_NODE_MAX};

/// A partition index, below the partition count of the table that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u32);

/// Where a partition lives: a node (gateway process) of the cluster and one of its shards.
/// A single node is node 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Home {
    /// Cluster node index, below [`NODES_MAX`].
    pub node: u16,
    /// Shard (pinned executor) index within the node, below [`SHARDS_PER_NODE_MAX`].
    pub shard: u16,
}

/// The partition of `user_id` among [`PARTITIONS_DEFAULT`] partitions.
pub fn partition_of_user(user_id: u64) -> Partition {
    partition_of_hash(hash64(USER_SEED, user_id), PARTITIONS_DEFAULT)
}

/// The partition of `conversation_id` among [`PARTITIONS_DEFAULT`] partitions.
pub fn partition_of_conversation(conversation_id: u64) -> Partition {
    partition_of_hash(
        hash64(CONVERSATION_SEED, conversation_id),
        PARTITIONS_DEFAULT,
    )
}

/// The low bits of `hash`; `count` is a power of two (checked when a table is built).
fn partition_of_hash(hash: u64, count: u32) -> Partition {
    debug_assert!(count.is_power_of_two());
    // The mask keeps the value below `count` ≤ PARTITIONS_MAX, so it fits a u32.
    Partition((hash & u64::from(count - 1)) as u32)
}

/// The partition → [`Home`] table. Lookups are pure and need no registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// One entry per partition; the length is a power of two in `1..=PARTITIONS_MAX`.
    homes: Vec<Home>,
}

impl Placement {
    /// One node (`node`) with `shards` shards and [`PARTITIONS_DEFAULT`] partitions:
    /// partition `p` lives on shard `p % shards`.
    pub fn single_node(node: u16, shards: u32) -> Result<Self, PlacementError> {
        Self::single_node_with_partitions(node, shards, PARTITIONS_DEFAULT)
    }

    /// As [`Placement::single_node`] with an explicit power-of-two partition count.
    pub fn single_node_with_partitions(
        node: u16,
        shards: u32,
        partitions: u32,
    ) -> Result<Self, PlacementError> {
        if shards == 0 || shards > SHARDS_PER_NODE_MAX {
            return Err(PlacementError::ShardsOutOfRange {
                shards,
                max: SHARDS_PER_NODE_MAX,
            });
        }
        check_partition_count(partitions as usize)?;
        // `p % shards` < shards ≤ SHARDS_PER_NODE_MAX ≤ u16::MAX + 1, so it fits a u16.
        let homes = (0..partitions)
            .map(|p| Home {
                node,
                shard: (p % shards) as u16,
            })
            .collect();
        Self::from_homes(homes)
    }

    /// A table from a cluster's partition map: `homes[p]` is partition `p`'s home. The
    /// length must be a power of two in `1..=PARTITIONS_MAX` and every home within limits.
    pub fn from_homes(homes: Vec<Home>) -> Result<Self, PlacementError> {
        check_partition_count(homes.len())?;
        for (partition, home) in homes.iter().enumerate() {
            check_home(partition as u32, *home)?;
        }
        Ok(Self { homes })
    }

    /// Moves one partition to `home` (a cluster rebalance step). Only keys of `partition`
    /// change home.
    pub fn reassign(&mut self, partition: Partition, home: Home) -> Result<(), PlacementError> {
        let count = self.partition_count();
        check_home(partition.0, home)?;
        let slot = self.homes.get_mut(partition.0 as usize).ok_or(
            PlacementError::PartitionOutOfRange {
                partition: partition.0,
                count,
            },
        )?;
        *slot = home;
        Ok(())
    }

    /// Number of partitions in this table (a power of two).
    pub fn partition_count(&self) -> u32 {
        // `from_homes` checked len ≤ PARTITIONS_MAX.
        self.homes.len() as u32
    }

    /// All partition homes, indexed by partition.
    pub fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// The partition of `user_id` in this table.
    pub fn user_partition(&self, user_id: u64) -> Partition {
        partition_of_hash(hash64(USER_SEED, user_id), self.partition_count())
    }

    /// The partition of `conversation_id` in this table.
    pub fn conversation_partition(&self, conversation_id: u64) -> Partition {
        partition_of_hash(
            hash64(CONVERSATION_SEED, conversation_id),
            self.partition_count(),
        )
    }

    /// Where `partition` lives, or `None` if it is not in this table.
    pub fn home_of(&self, partition: Partition) -> Option<Home> {
        self.homes.get(partition.0 as usize).copied()
    }

    /// The shard holding `user_id`'s connections, devices, presence and inbox.
    pub fn user_home(&self, user_id: u64) -> Home {
        self.home_of_own(self.user_partition(user_id))
    }

    /// The shard owning `conversation_id`'s log, sequence counter, membership and cursors.
    pub fn conversation_owner(&self, conversation_id: u64) -> Home {
        self.home_of_own(self.conversation_partition(conversation_id))
    }

    /// `Ok` if `here` is `user_id`'s home; otherwise the work must not touch state.
    pub fn check_user_home(&self, user_id: u64, here: Home) -> Result<(), NotOwner> {
        self.check(OwnedKey::User(user_id), self.user_partition(user_id), here)
    }

    /// `Ok` if `here` owns `conversation_id`; otherwise the work must not touch state.
    pub fn check_conversation_owner(
        &self,
        conversation_id: u64,
        here: Home,
    ) -> Result<(), NotOwner> {
        let partition = self.conversation_partition(conversation_id);
        self.check(OwnedKey::Conversation(conversation_id), partition, here)
    }

    fn check(&self, key: OwnedKey, partition: Partition, here: Home) -> Result<(), NotOwner> {
        let owner = self.home_of_own(partition);
        if owner == here {
            Ok(())
        } else {
            Err(NotOwner {
                key,
                partition,
                owner,
                here,
            })
        }
    }

    /// Home of a partition this table computed itself (so it is in range).
    #[expect(
        clippy::indexing_slicing,
        reason = "partition_of_hash masks with len − 1 and len is a power of two, so the \
                  index is always below len"
    )]
    fn home_of_own(&self, partition: Partition) -> Home {
        self.homes[partition.0 as usize]
    }
}

fn check_partition_count(count: usize) -> Result<(), PlacementError> {
    if count.is_power_of_two() && count <= PARTITIONS_MAX as usize {
        Ok(())
    } else {
        Err(PlacementError::PartitionCountInvalid {
            count,
            max: PARTITIONS_MAX,
        })
    }
}

fn check_home(partition: u32, home: Home) -> Result<(), PlacementError> {
    if u32::from(home.node) < NODES_MAX && u32::from(home.shard) < SHARDS_PER_NODE_MAX {
        Ok(())
    } else {
        Err(PlacementError::HomeInvalid {
            partition,
            node: home.node,
            shard: home.shard,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: u64 = 1_000_000;

    /// Pearson's chi-square statistic of `counts` against a uniform expectation.
    fn chi_square(counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// A generous bound for a uniform fit: mean (k − 1) plus 6 standard deviations
    /// (sqrt(2(k − 1))). A broken hash overshoots it by orders of magnitude.
    fn chi_square_bound(buckets: usize) -> f64 {
        let dof = (buckets - 1) as f64;
        dof + 6.0 * (2.0 * dof).sqrt()
    }

    /// Sequential ids (how an allocator hands them out), strided ids (which defeat a plain
    /// modulo) and large scattered ids.
    fn id_sets() -> Vec<(&'static str, Vec<u64>)> {
        vec![
            ("sequential", (0..IDS).collect()),
            ("stride 4096", (0..IDS).map(|i| i * 4096).collect()),
            ("high bits", (0..IDS).map(|i| (i << 40) | 7).collect()),
        ]
    }

    #[test]
    fn shards_are_balanced() {
        for shards in [2u32, 4, 32] {
            let placement = Placement::single_node(0, shards).unwrap();
            for (name, ids) in id_sets() {
                let mut users = vec![0u64; shards as usize];
                let mut convs = vec![0u64; shards as usize];
                for &id in &ids {
                    users[placement.user_home(id).shard as usize] += 1;
                    convs[placement.conversation_owner(id).shard as usize] += 1;
                }
                for counts in [&users, &convs] {
                    let chi = chi_square(counts);
                    let bound = chi_square_bound(counts.len());
                    assert!(chi < bound, "{shards} shards, {name}: chi² {chi} ≥ {bound}");
                }
            }
        }
    }

    #[test]
    fn partitions_are_balanced() {
        for (name, ids) in id_sets() {
            let mut counts = vec![0u64; PARTITIONS_DEFAULT as usize];
            for &id in &ids {
                counts[partition_of_user(id).0 as usize] += 1;
            }
            let chi = chi_square(&counts);
            let bound = chi_square_bound(counts.len());
            assert!(chi < bound, "{name}: chi² {chi} ≥ {bound}");
            assert!(counts.iter().all(|&c| c > 0), "{name}: an empty partition");
        }
    }

    /// Golden partitions: these decide where data lives and must never change.
    #[test]
    fn golden_partitions() {
        let users = [0, 1, 2, 42, u64::MAX].map(|u| partition_of_user(u).0);
        let convs = [0, 1, 2, 42, u64::MAX].map(|c| partition_of_conversation(c).0);
        assert_eq!(users, [3623, 837, 1708, 2797, 2201]);
        assert_eq!(convs, [2594, 3877, 1984, 240, 4029]);
        let placement = Placement::single_node(0, 4).unwrap();
        assert_eq!(
            placement.user_home(42),
            Home {
                node: 0,
                shard: users[3] as u16 % 4
            }
        );
    }

    #[test]
    fn free_functions_agree_with_default_table() {
        let placement = Placement::single_node(3, 7).unwrap();
        assert_eq!(placement.partition_count(), PARTITIONS_DEFAULT);
        for id in (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let p = partition_of_user(id);
            assert_eq!(placement.user_partition(id), p);
            assert_eq!(
                placement.user_home(id),
                Home {
                    node: 3,
                    shard: (p.0 % 7) as u16
                }
            );
            let c = partition_of_conversation(id);
            assert_eq!(placement.conversation_partition(id), c);
            assert_eq!(placement.conversation_owner(id).shard, (c.0 % 7) as u16);
        }
    }

    /// Changing the shard count never changes a key's partition; a key moves iff its
    /// partition's `p % shards` changes — from 4 to 8 shards exactly half the partitions.
    #[test]
    fn shard_count_change_moves_only_rehomed_partitions() {
        let four = Placement::single_node(0, 4).unwrap();
        let eight = Placement::single_node(0, 8).unwrap();
        let moved_partitions = four
            .homes()
            .iter()
            .zip(eight.homes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(moved_partitions, PARTITIONS_DEFAULT as usize / 2);
        let mut moved_users = 0u64;
        for id in 0..IDS {
            let p = four.user_partition(id);
            assert_eq!(eight.user_partition(id), p);
            let moved = four.user_home(id) != eight.user_home(id);
            assert_eq!(moved, four.home_of(p) != eight.home_of(p));
            moved_users += u64::from(moved);
        }
        // About half the users move with their partitions (within 1%).
        assert!(
            moved_users.abs_diff(IDS / 2) < IDS / 100,
            "{moved_users} moved"
        );
    }

    /// A cluster moves one partition at a time; only that partition's keys change home.
    #[test]
    fn reassign_moves_exactly_one_partition() {
        let before = Placement::single_node(0, 4).unwrap();
        let mut after = before.clone();
        let target = partition_of_user(42);
        let elsewhere = Home { node: 5, shard: 1 };
        after.reassign(target, elsewhere).unwrap();
        assert_eq!(after.user_home(42), elsewhere);
        for id in 0..100_000u64 {
            let moved = before.user_home(id) != after.user_home(id);
            assert_eq!(moved, before.user_partition(id) == target, "user {id}");
        }
        let past = Partition(PARTITIONS_DEFAULT);
        assert_eq!(
            after.reassign(past, elsewhere),
            Err(PlacementError::PartitionOutOfRange {
                partition: PARTITIONS_DEFAULT,
                count: PARTITIONS_DEFAULT
            })
        );
    }

    #[test]
    fn ownership_checks() {
        let placement = Placement::single_node(0, 4).unwrap();
        let home = placement.user_home(42);
        assert_eq!(placement.check_user_home(42, home), Ok(()));
        let wrong = Home {
            node: 0,
            shard: (home.shard + 1) % 4,
        };
        let err = placement.check_user_home(42, wrong).unwrap_err();
        assert_eq!(
            err,
            NotOwner {
                key: OwnedKey::User(42),
                partition: partition_of_user(42),
                owner: home,
                here: wrong
            }
        );
        let owner = placement.conversation_owner(7);
        assert_eq!(placement.check_conversation_owner(7, owner), Ok(()));
        let other_node = Home {
            node: 1,
            shard: owner.shard,
        };
        let err = placement
            .check_conversation_owner(7, other_node)
            .unwrap_err();
        assert_eq!(err.key, OwnedKey::Conversation(7));
        assert_eq!(err.owner, owner);
    }

    #[test]
    fn invalid_tables_are_rejected() {
        assert!(matches!(
            Placement::single_node(0, 0),
            Err(PlacementError::ShardsOutOfRange { shards: 0, .. })
        ));
        assert!(matches!(
            Placement::single_node(0, SHARDS_PER_NODE_MAX + 1),
            Err(PlacementError::ShardsOutOfRange { .. })
        ));
        assert!(Placement::single_node(0, SHARDS_PER_NODE_MAX).is_ok());
        for count in [0u32, 3, 4095, PARTITIONS_MAX * 2] {
            assert!(matches!(
                Placement::single_node_with_partitions(0, 2, count),
                Err(PlacementError::PartitionCountInvalid { .. })
            ));
        }
        let bad_node = vec![Home {
            node: NODES_MAX as u16,
            shard: 0,
        }];
        assert!(matches!(
            Placement::from_homes(bad_node),
            Err(PlacementError::HomeInvalid { partition: 0, .. })
        ));
        let single = Placement::from_homes(vec![Home { node: 2, shard: 3 }]).unwrap();
        assert_eq!(single.user_home(u64::MAX), Home { node: 2, shard: 3 });
    }
}
