//! The stable 64-bit hash that decides where data lives.
//!
//! **Never change anything in this file.** Every partition assignment — and so which
//! node and shard holds a user's devices or a conversation's log — and every direct
//! conversation id is derived from these functions. A change would silently re-home
//! data. The golden tests below pin the outputs; a failing golden test means "revert".
//!
//! # Definition
//! `mix64` is the output function ("finalizer") of splitmix64 (Steele, Lea, Flood,
//! *Fast splittable pseudorandom number generators*, OOPSLA 2014; constants from
//! Stafford's "Mix13"), a bijection on `u64` with full avalanche:
//!
//! ```text
//! mix64(z):  z = (z ^ (z >> 30)) * 0xbf58_476d_1ce4_e5b9   (wrapping)
//!            z = (z ^ (z >> 27)) * 0x94d0_49bb_1331_11eb   (wrapping)
//!            return z ^ (z >> 31)
//! hash64(seed, x)          = mix64(x + seed)                           (wrapping add)
//! hash64_pair(seed, a, b)  = mix64(mix64(a + seed) ^ b)                (ordered pair)
//! ```
//!
//! Each use has its own seed (8 ASCII bytes read big-endian), so a user id and a
//! conversation id that happen to be equal land in unrelated partitions:
//! [`USER_SEED`] = `"cfb-user"`, [`CONVERSATION_SEED`] = `"cfb-conv"`,
//! [`DIRECT_PAIR_SEED`] = `"cfb-pair"`.
//!
//! It is not a keyed (DoS-resistant) hash: ids are assigned by the server, not chosen by
//! clients, so an attacker cannot aim many keys at one partition.

/// Seed for user ids: `"cfb-user"` as a big-endian u64.
pub const USER_SEED: u64 = u64::from_be_bytes(*b"cfb-user");
/// Seed for conversation ids: `"cfb-conv"` as a big-endian u64.
pub const CONVERSATION_SEED: u64 = u64::from_be_bytes(*b"cfb-conv");
/// Seed for direct-conversation user pairs: `"cfb-pair"` as a big-endian u64.
pub const DIRECT_PAIR_SEED: u64 = u64::from_be_bytes(*b"cfb-pair");

/// The splitmix64 finalizer: a fixed bijection on `u64`. See the module docs.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `mix64(x + seed)`: the stable hash of one id under one seed.
#[inline]
pub const fn hash64(seed: u64, x: u64) -> u64 {
    mix64(x.wrapping_add(seed))
}

/// `mix64(mix64(a + seed) ^ b)`: the stable hash of an ordered pair. For a fixed `a` it
/// is a bijection in `b` and for a fixed `b` a bijection in `a`, so two pairs that share a
/// member never collide.
#[inline]
pub const fn hash64_pair(seed: u64, a: u64, b: u64) -> u64 {
    mix64(hash64(seed, a) ^ b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 seeded with 0 produces `mix64(0x9e37_79b9_7f4a_7c15)` first; the reference
    /// value pins `mix64` to the published algorithm, not just to itself.
    #[test]
    fn mix64_matches_reference_splitmix64() {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(mix64(GAMMA), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(GAMMA.wrapping_mul(2)), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(mix64(0), 0);
    }

    #[test]
    fn seeds_spell_their_names() {
        assert_eq!(USER_SEED, 0x6366_622d_7573_6572);
        assert_eq!(CONVERSATION_SEED, 0x6366_622d_636f_6e76);
        assert_eq!(DIRECT_PAIR_SEED, 0x6366_622d_7061_6972);
    }

    /// Golden values: these must never change (see the module docs).
    #[test]
    fn golden_hashes() {
        let user: Vec<u64> = [0, 1, 2, 42, u64::MAX]
            .map(|x| hash64(USER_SEED, x))
            .to_vec();
        let conv: Vec<u64> = [0, 1, 2, 42, u64::MAX]
            .map(|x| hash64(CONVERSATION_SEED, x))
            .to_vec();
        let pair = [
            hash64_pair(DIRECT_PAIR_SEED, 1, 2),
            hash64_pair(DIRECT_PAIR_SEED, 0, 0),
        ];
        assert_eq!(user, GOLDEN_USER);
        assert_eq!(conv, GOLDEN_CONVERSATION);
        assert_eq!(pair, GOLDEN_PAIR);
    }

    const GOLDEN_USER: [u64; 5] = [
        0x4e2a_d81c_fcd7_7e27,
        0xd528_efd7_638e_5345,
        0xd879_801c_1e3c_26ac,
        0x58b7_a99f_5f1b_9aed,
        0x5698_9ecc_c837_9899,
    ];
    const GOLDEN_CONVERSATION: [u64; 5] = [
        0x7976_de87_47da_6a22,
        0x1e17_3e86_6db8_0f25,
        0x29b4_bc33_8680_47c0,
        0x09b9_bb7b_9a34_20f0,
        0xb8f7_aeaa_7163_efbd,
    ];
    const GOLDEN_PAIR: [u64; 2] = [0xf138_5c3f_f65c_b752, 0x074c_05a1_fc11_6f3c];
}
