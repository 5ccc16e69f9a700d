//! Conversation ids: direct (1:1) ids derived from the user pair, group ids allocated.
//!
//! # The two id spaces, split by the top bit
//! - **Direct** (top bit 1): `DIRECT_BIT | hash64_pair("cfb-pair", min(a, b), max(a, b))`
//!   (the stable hash of [`crate::hash`]). Both users, on any shard or node, compute the same
//!   id for their conversation without asking anyone, so the first message of a 1:1 chat
//!   needs no "create conversation" round trip. `a == b` (notes to self) is allowed.
//! - **Group** (top bit 0): allocated by the creating shard's
//!   [`SnowflakeGenerator`], whose ids always have the top bit clear — unique across the
//!   cluster without coordination, like message ids.
//!
//! The spaces never overlap, so [`ConversationKind::of`] needs only the id.
//!
//! # Collisions between pairs
//! 63 hash bits make two pairs sharing a direct id unlikely but not impossible: with `n`
//! direct conversations the chance of any collision is about `n² / 2⁶⁴` (10⁶ → 5·10⁻⁸,
//! 10⁸ → 5·10⁻⁴). Two pairs that share a user never collide (the pair hash is a bijection
//! in each member). So the owner stores each direct conversation's two members and checks
//! them on every send ([`is_direct_between`] is the check); a mismatch is refused rather
//! than letting a third user into someone else's conversation.

use crate::error::IdError;
use crate::hash::{hash64_pair, DIRECT_PAIR_SEED};
use crate::ids::SnowflakeGenerator;

/// The bit that marks a direct conversation id.
pub const DIRECT_BIT: u64 = 1 << 63;

/// Which id space a conversation id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConversationKind {
    /// A 1:1 conversation whose id derives from its two members.
    Direct,
    /// A group conversation whose id came from a Snowflake generator.
    Group,
}

impl ConversationKind {
    /// The kind of `conversation_id`, from its top bit.
    pub fn of(conversation_id: u64) -> Self {
        if conversation_id & DIRECT_BIT != 0 {
            Self::Direct
        } else {
            Self::Group
        }
    }
}

/// The direct conversation of users `a` and `b`; the same for `(a, b)` and `(b, a)`.
pub fn direct_conversation_id(a: u64, b: u64) -> u64 {
    DIRECT_BIT | hash64_pair(DIRECT_PAIR_SEED, a.min(b), a.max(b))
}

/// Whether `conversation_id` is the direct conversation of `a` and `b` by derivation. The
/// owner still compares the stored members (see the module docs on collisions).
pub fn is_direct_between(conversation_id: u64, a: u64, b: u64) -> bool {
    conversation_id == direct_conversation_id(a, b)
}

/// A new group conversation id from the creating shard's generator (top bit clear).
pub fn group_conversation_id(
    generator: &mut SnowflakeGenerator,
    now_unix_ms: u64,
) -> Result<u64, IdError> {
    let id = generator.next(now_unix_ms)?;
    debug_assert_eq!(ConversationKind::of(id), ConversationKind::Group);
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{SNOWFLAKE_EPOCH_UNIX_MS, SNOWFLAKE_TIMESTAMP_MAX};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Golden ids: clients and stored data depend on them; they must never change.
    #[test]
    fn golden_direct_ids() {
        let ids = [direct_conversation_id(1, 2), direct_conversation_id(0, 0)];
        assert_eq!(ids, [0xf138_5c3f_f65c_b752, 0x874c_05a1_fc11_6f3c]);
    }

    #[test]
    fn direct_ids_are_symmetric_and_distinct() {
        let mut seen = HashSet::new();
        for a in 0..300u64 {
            for b in a..300 {
                let id = direct_conversation_id(a, b);
                assert_eq!(id, direct_conversation_id(b, a));
                assert_eq!(ConversationKind::of(id), ConversationKind::Direct);
                assert!(is_direct_between(id, b, a));
                assert!(seen.insert(id), "pair ({a}, {b}) collided");
            }
        }
    }

    #[test]
    fn group_ids_never_look_direct() {
        let mut generator = SnowflakeGenerator::new(1023).unwrap();
        let end = SNOWFLAKE_EPOCH_UNIX_MS + SNOWFLAKE_TIMESTAMP_MAX;
        for now in [SNOWFLAKE_EPOCH_UNIX_MS, end] {
            let id = group_conversation_id(&mut generator, now).unwrap();
            assert_eq!(ConversationKind::of(id), ConversationKind::Group);
        }
        assert_eq!(ConversationKind::of(u64::MAX >> 1), ConversationKind::Group);
        assert_eq!(ConversationKind::of(DIRECT_BIT), ConversationKind::Direct);
    }

    proptest! {
        #[test]
        fn direct_and_group_spaces_never_collide(
            a in any::<u64>(),
            b in any::<u64>(),
            ms in 0..=SNOWFLAKE_TIMESTAMP_MAX,
            worker in 0..1024u16,
        ) {
            let direct = direct_conversation_id(a, b);
            prop_assert_eq!(direct, direct_conversation_id(b, a));
            prop_assert_eq!(ConversationKind::of(direct), ConversationKind::Direct);
            let mut generator = SnowflakeGenerator::new(worker).unwrap();
            let group = group_conversation_id(&mut generator, SNOWFLAKE_EPOCH_UNIX_MS + ms)
                .unwrap();
            prop_assert_eq!(ConversationKind::of(group), ConversationKind::Group);
            prop_assert_ne!(direct, group);
        }

        /// Pairs sharing a member never collide (the pair hash is a bijection per member).
        #[test]
        fn pairs_sharing_a_member_differ(a in any::<u64>(), b in any::<u64>(), c in any::<u64>()) {
            prop_assume!(b != c);
            prop_assert_ne!(direct_conversation_id(a, b), direct_conversation_id(a, c));
        }
    }
}
