//! Where the `chat` scenario's users live in a cluster (`--placement`, `--owner`).
//!
//! Every user has a home node (its sessions run there) and every 1:1 conversation an
//! owner node (its log and sequence counter live there). `GET /v1/discover?username=`
//! on any node names a user's home node and, in a cluster, that node's addresses, so
//! the load generator can choose its users by where they live and connect each session
//! to its home directly. A single node answers node 0 and no addresses: sessions then
//! go to `--http`/`--tcp` as before.
//!
//! The owner of a conversation is found without server support for it: the direct
//! conversation id derives from the two user ids, its partition from a stable hash
//! (router's `hash.rs`, which must never change), and a user id whose *user* partition is
//! the same partition is the inverse of that hash. `discover?user_id=` of that user names
//! the node holding the partition, which is the conversation's owner. The load
//! generator may depend on `wire` only, so the three hash lines are copied here; the
//! golden values of router's tests pin the copy (see the tests) and `chat` checks that
//! the server opened the conversation id computed here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use wire::client::{http, ClientError};

/// Where the senders and recipients of `chat` live.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Placement {
    /// Names as they come (a cluster spreads them over its nodes).
    Any,
    /// Sender and recipient on the node of `--http`.
    SameNode,
    /// Sender on the node of `--http`, recipient on another node.
    CrossNode,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Any => "any",
            Placement::SameNode => "same-node",
            Placement::CrossNode => "cross-node",
        }
    }
}

/// Which node owns each pair's conversation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Owner {
    /// Whichever node the conversation's partition is on.
    Any,
    /// The sender's home node (the append is local to the sender's session).
    Sender,
    /// The recipient's home node (the delivery is local to the owner).
    Recipient,
    /// Neither user's home node.
    Elsewhere,
}

impl Owner {
    pub fn name(self) -> &'static str {
        match self {
            Owner::Any => "any",
            Owner::Sender => "sender",
            Owner::Recipient => "recipient",
            Owner::Elsewhere => "elsewhere",
        }
    }

    fn accepts(self, sender: u16, recipient: u16, owner: u16) -> bool {
        match self {
            Owner::Any => true,
            Owner::Sender => owner == sender,
            Owner::Recipient => owner == recipient,
            Owner::Elsewhere => owner != sender && owner != recipient,
        }
    }
}

/// The path a pair's messages take between nodes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Route {
    /// Sender, owner and recipient on one node: no node link.
    Local,
    /// The owner is the sender's node: append local, the delivery crosses one link.
    OwnerAtSender,
    /// The owner is the recipient's node: the send crosses one link (and the ack back),
    /// the delivery is local to the owner.
    OwnerAtRecipient,
    /// The owner is neither: the send crosses a link to the owner (and the ack back),
    /// the delivery crosses a link from the owner.
    OwnerElsewhere,
}

impl Route {
    pub fn of(sender: u16, recipient: u16, owner: u16) -> Route {
        match (owner == sender, owner == recipient) {
            (true, true) => Route::Local,
            (true, false) => Route::OwnerAtSender,
            (false, true) => Route::OwnerAtRecipient,
            (false, false) => Route::OwnerElsewhere,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::OwnerAtSender => "owner-at-sender",
            Route::OwnerAtRecipient => "owner-at-recipient",
            Route::OwnerElsewhere => "owner-elsewhere",
        }
    }

    /// The route named `name` (see [`Route::name`]).
    pub fn from_name(name: &str) -> Option<Route> {
        [
            Route::Local,
            Route::OwnerAtSender,
            Route::OwnerAtRecipient,
            Route::OwnerElsewhere,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }

    /// Node-link hops from the sender's session to the recipient's socket.
    pub fn deliver_hops(self) -> u32 {
        match self {
            Route::Local => 0,
            Route::OwnerAtSender | Route::OwnerAtRecipient => 1,
            Route::OwnerElsewhere => 2,
        }
    }

    /// Node-link hops from the sender's session to its ack (a round trip to the owner).
    pub fn ack_hops(self) -> u32 {
        match self {
            Route::Local | Route::OwnerAtSender => 0,
            Route::OwnerAtRecipient | Route::OwnerElsewhere => 2,
        }
    }
}

/// A `/v1/discover` answer.
#[derive(Clone, Debug)]
pub struct Home {
    pub user_id: u64,
    pub node: u16,
    /// The answering node (`--http`) is this node.
    pub here: bool,
    /// The home node's addresses; `None` from a single node.
    pub http: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
}

/// A user chosen for the run (not registered yet).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub home: Home,
}

/// One sender/recipient pair and where its conversation lives.
#[derive(Clone, Debug)]
pub struct PairPlan {
    pub sender: User,
    pub recipient: User,
    pub conversation_id: u64,
    pub owner: u16,
}

impl PairPlan {
    pub fn route(&self) -> Route {
        Route::of(self.sender.home.node, self.recipient.home.node, self.owner)
    }
}

type Result<T> = std::result::Result<T, String>;

/// How long discover is retried while it answers 503 (a node that has just started may
/// not see its peers up yet).
const DISCOVER_UNAVAILABLE_RETRY: Duration = Duration::from_secs(10);

fn discover(http_addr: SocketAddr, query: &str) -> Result<Home> {
    let path = format!("/v1/discover?{query}");
    let give_up = Instant::now() + DISCOVER_UNAVAILABLE_RETRY;
    let answer = loop {
        match http::request(http_addr, "GET", &path, &[], None)
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<serde_json::Value>())
        {
            Ok(answer) => break answer,
            Err(ClientError::Api { status: 503, .. }) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    };
    let bad = || format!("GET {path}: unexpected answer {answer}");
    let user_id = answer["user_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let node = answer["node"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(bad)?;
    let here = answer["here"].as_bool().ok_or_else(bad)?;
    let addr = |key: &str| -> Result<Option<SocketAddr>> {
        match answer.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(bad),
        }
    };
    Ok(Home {
        user_id,
        node,
        here,
        http: addr("http")?,
        tcp: addr("tcp")?,
    })
}

/// The home of user `name` (who need not exist yet).
pub fn discover_name(http_addr: SocketAddr, name: &str) -> Result<Home> {
    discover(http_addr, &format!("username={name}"))
}

/// The node owning `conversation_id`: the home node of a user id in the same partition.
pub fn owner_node(http_addr: SocketAddr, conversation_id: u64) -> Result<u16> {
    let probe = user_in_partition_of(hash64(CONVERSATION_SEED, conversation_id));
    Ok(discover(http_addr, &format!("user_id={probe}"))?.node)
}

/// Choose `pairs` sender/recipient pairs for `placement` and `owner`, asking `http_addr`
/// where candidate names live. Names start with `prefix` (unique per run).
pub fn plan(
    http_addr: SocketAddr,
    prefix: &str,
    pairs: usize,
    placement: Placement,
    owner: Owner,
) -> Result<Vec<PairPlan>> {
    let user = |name: String| -> Result<User> {
        Ok(User {
            home: discover_name(http_addr, &name)?,
            name,
        })
    };
    let pair = |sender: User, recipient: User| -> Result<PairPlan> {
        let conversation_id = direct_conversation_id(sender.home.user_id, recipient.home.user_id);
        Ok(PairPlan {
            owner: owner_node(http_addr, conversation_id)?,
            sender,
            recipient,
            conversation_id,
        })
    };
    let mut out = Vec::with_capacity(pairs);
    if placement == Placement::Any && owner == Owner::Any {
        // The names loadgen always used.
        for i in 0..pairs {
            out.push(pair(
                user(format!("{prefix}s{i}"))?,
                user(format!("{prefix}r{i}"))?,
            )?);
        }
        return Ok(out);
    }
    // Candidates one by one; each new one is paired with the first unpaired candidate
    // it fits with, in either role.
    let mut here: Option<u16> = None;
    let mut pool: Vec<User> = Vec::new();
    let mut other_node_seen = false;
    let tries = 64 + 200 * pairs;
    for i in 0..tries {
        if out.len() == pairs {
            break;
        }
        let candidate = user(format!("{prefix}u{i}"))?;
        if candidate.home.here {
            here = Some(candidate.home.node);
        }
        pool.push(candidate);
        let Some(h) = here else { continue };
        other_node_seen |= pool.iter().any(|u| u.home.node != h);
        if placement == Placement::CrossNode && !other_node_seen && i >= 63 {
            return Err(format!(
                "cross-node placement: the first {} names all live on node {h} (a single node?)",
                i + 1
            ));
        }
        let fits = |s: &User, r: &User| match placement {
            Placement::Any => true,
            Placement::SameNode => s.home.node == h && r.home.node == h,
            Placement::CrossNode => s.home.node == h && r.home.node != h,
        };
        let newest = pool.len() - 1;
        let mut found = None;
        'search: for j in 0..newest {
            for (si, ri) in [(j, newest), (newest, j)] {
                let (s, r) = (&pool[si], &pool[ri]);
                if !fits(s, r) {
                    continue;
                }
                let id = direct_conversation_id(s.home.user_id, r.home.user_id);
                let o = owner_node(http_addr, id)?;
                if owner.accepts(s.home.node, r.home.node, o) {
                    found = Some((si, ri));
                    break 'search;
                }
            }
        }
        if let Some((si, ri)) = found {
            // Remove the higher index first so the lower one stays valid.
            let (first, second) = (si.max(ri), si.min(ri));
            let a = pool.swap_remove(first);
            let b = pool.swap_remove(second);
            let (s, r) = if si > ri { (a, b) } else { (b, a) };
            out.push(pair(s, r)?);
        }
    }
    if out.len() < pairs {
        return Err(format!(
            "placement {} with owner {}: found only {} of {pairs} pairs in {tries} names",
            placement.name(),
            owner.name(),
            out.len()
        ));
    }
    Ok(out)
}

// ----- router's stable hash (router/src/hash.rs, conversation.rs), copied ------------------

const USER_SEED: u64 = u64::from_be_bytes(*b"cfb-user");
const CONVERSATION_SEED: u64 = u64::from_be_bytes(*b"cfb-conv");
const DIRECT_PAIR_SEED: u64 = u64::from_be_bytes(*b"cfb-pair");
const DIRECT_BIT: u64 = 1 << 63;
const MIX_1: u64 = 0xbf58_476d_1ce4_e5b9;
const MIX_2: u64 = 0x94d0_49bb_1331_11eb;

/// The splitmix64 finalizer (router `mix64`).
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX_1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX_2);
    z ^ (z >> 31)
}

const fn hash64(seed: u64, x: u64) -> u64 {
    mix64(x.wrapping_add(seed))
}

/// The direct conversation of users `a` and `b` (router `direct_conversation_id`).
pub fn direct_conversation_id(a: u64, b: u64) -> u64 {
    DIRECT_BIT | mix64(hash64(DIRECT_PAIR_SEED, a.min(b)) ^ a.max(b))
}

/// The inverse of `x ↦ x ^ (x >> shift)` (0 < shift < 64).
const fn unxorshift(y: u64, shift: u32) -> u64 {
    let mut x = y;
    let mut i = 0;
    while i < 64 / shift {
        x = y ^ (x >> shift);
        i += 1;
    }
    x
}

/// The inverse of odd `a` modulo 2^64 (Newton's iteration doubles the correct bits).
const fn inverse_mod_2_64(a: u64) -> u64 {
    let mut x = a; // a·a ≡ 1 (mod 8) for odd a: 3 bits
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        i += 1;
    }
    x
}

/// The inverse of [`mix64`].
const fn unmix64(mut z: u64) -> u64 {
    z = unxorshift(z, 31);
    z = z.wrapping_mul(inverse_mod_2_64(MIX_2));
    z = unxorshift(z, 27);
    z = z.wrapping_mul(inverse_mod_2_64(MIX_1));
    unxorshift(z, 30)
}

/// A user id whose user hash is `hash` (so whose partition is that of `hash`, whatever
/// the partition count).
fn user_in_partition_of(hash: u64) -> u64 {
    unmix64(hash).wrapping_sub(USER_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// router/src/hash.rs golden values: the copy must match the original exactly.
    #[test]
    fn golden_hashes() {
        let user = [0, 1, 2, 42, u64::MAX].map(|x| hash64(USER_SEED, x));
        let conv = [0, 1, 2, 42, u64::MAX].map(|x| hash64(CONVERSATION_SEED, x));
        assert_eq!(
            user,
            [
                0x4e2a_d81c_fcd7_7e27,
                0xd528_efd7_638e_5345,
                0xd879_801c_1e3c_26ac,
                0x58b7_a99f_5f1b_9aed,
                0x5698_9ecc_c837_9899,
            ]
        );
        assert_eq!(
            conv,
            [
                0x7976_de87_47da_6a22,
                0x1e17_3e86_6db8_0f25,
                0x29b4_bc33_8680_47c0,
                0x09b9_bb7b_9a34_20f0,
                0xb8f7_aeaa_7163_efbd,
            ]
        );
        // router/src/conversation.rs golden direct ids.
        assert_eq!(
            [direct_conversation_id(1, 2), direct_conversation_id(0, 0)],
            [0xf138_5c3f_f65c_b752, 0x874c_05a1_fc11_6f3c]
        );
        assert_eq!(direct_conversation_id(2, 1), direct_conversation_id(1, 2));
    }

    #[test]
    fn unmix_inverts_mix() {
        let mut x = 0x0123_4567_89ab_cdefu64;
        for _ in 0..10_000 {
            assert_eq!(unmix64(mix64(x)), x);
            assert_eq!(mix64(unmix64(x)), x);
            x = mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        for v in [0, 1, u64::MAX, 1 << 63] {
            assert_eq!(unmix64(mix64(v)), v);
        }
    }

    #[test]
    fn probe_user_shares_the_conversation_hash() {
        for id in [1u64, 42, DIRECT_BIT | 7, u64::MAX] {
            let hash = hash64(CONVERSATION_SEED, id);
            assert_eq!(hash64(USER_SEED, user_in_partition_of(hash)), hash);
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of(0, 0, 0), Route::Local);
        assert_eq!(Route::of(0, 0, 1), Route::OwnerElsewhere);
        assert_eq!(Route::of(0, 1, 0), Route::OwnerAtSender);
        assert_eq!(Route::of(0, 1, 1), Route::OwnerAtRecipient);
        assert_eq!(Route::of(0, 1, 2), Route::OwnerElsewhere);
        assert!(Owner::Sender.accepts(0, 0, 0));
        assert!(!Owner::Elsewhere.accepts(0, 1, 1));
        assert!(Owner::Elsewhere.accepts(0, 0, 1));
    }
}
