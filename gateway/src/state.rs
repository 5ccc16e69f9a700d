//! A shard's durable state, folded from the metadata records of its own log.
//!
//! Each shard's log holds two kinds of metadata, for two roles (see docs/architecture.md):
//! - as **user home** (`user_home(user) == this shard`): the user record (name, argon2
//!   hash), devices, the user's conversations (with the peer), each device's
//!   delivered/read cursor per conversation, and the latest receipt state of the peers'
//!   devices (so a reconnecting sender learns what was delivered and read meanwhile);
//! - as **conversation owner**: each direct conversation's two members; each group's
//!   name, members with their roles and join points, the last membership change (so a
//!   system record lost to a crash can be written again), and each member's aggregated
//!   delivered/read position.
//!
//! Records are JSON ([`MetaEvent`], tagged by `"type"`) in log records of the matching
//! [`RecordKind`]; the log folds them in order once durable and snapshots the whole state
//! (JSON of [`ShardState`]) in its checkpoints. JSON because metadata is small and rare
//! next to messages, and an operator can read it with `jq`; message payloads are
//! FlatBuffers. An event that does not decode is logged and skipped: the log already
//! CRC-checked it, so it can only come from a newer version of this code.
//!
//! Cursors only move forward: folding takes the max, so replays and reordering are harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use log_engine::{MetaRecord, RecordKind, StateMachine};
use serde::{Deserialize, Serialize};

/// Application record kind for [`MetaEvent::Member`].
pub const KIND_MEMBER: u8 = 64;
/// Application record kind for [`MetaEvent::PeerReceipt`].
pub const KIND_PEER_RECEIPT: u8 = 65;
/// Application record kind for [`MetaEvent::Left`].
pub const KIND_LEFT: u8 = 66;
/// Application record kind for [`MetaEvent::GroupReceipts`].
pub const KIND_GROUP_RECEIPTS: u8 = 67;
/// Application record kind for [`MetaEvent::LastSeen`].
pub const KIND_LAST_SEEN: u8 = 68;
/// Application record kind for [`MetaEvent::PushJob`].
pub const KIND_PUSH_JOB: u8 = 69;
/// Application record kind for [`MetaEvent::PushDone`] and [`MetaEvent::PushAttempt`].
pub const KIND_PUSH_DONE: u8 = 70;
/// Application record kind for [`MetaEvent::KeysClaimed`] (uploads are
/// `RecordKind::PublicKey`).
pub const KIND_KEYS_CLAIMED: u8 = 71;

/// One metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetaEvent {
    /// A user registered (home shard).
    User {
        user_id: u64,
        username: String,
        password_hash: String,
        created_ms: u64,
    },
    /// A device registered at login (home shard).
    Device {
        user_id: u64,
        device_id: u64,
        name: String,
    },
    /// `user_id` belongs to the direct conversation with `peer_user_id`, or (peer 0) to
    /// a group it joined at `joined_seq` (home shard).
    Member {
        user_id: u64,
        conversation_id: u64,
        peer_user_id: u64,
        #[serde(default)]
        joined_seq: u64,
    },
    /// `user_id` left or was removed from a group (home shard).
    Left { user_id: u64, conversation_id: u64 },
    /// A device's cursors in a conversation moved (home shard).
    Cursor {
        user_id: u64,
        device_id: u64,
        conversation_id: u64,
        delivered: u64,
        read: u64,
    },
    /// A peer device's receipt state, as seen by `user_id` (home shard of `user_id`).
    PeerReceipt {
        user_id: u64,
        conversation_id: u64,
        peer_user_id: u64,
        peer_device_id: u64,
        delivered: u64,
        read: u64,
    },
    /// A direct conversation and its two members (owner shard).
    Direct {
        conversation_id: u64,
        a: u64,
        b: u64,
    },
    /// A group was created or changed by `actor`; its system message has sequence `seq`
    /// (owner shard). Written before that message, in the same executor step.
    GroupChange {
        conversation_id: u64,
        seq: u64,
        actor: u64,
        change: GroupChange,
    },
    /// Members' aggregated receipt positions moved: `(user, delivered, read)` (owner).
    GroupReceipts {
        conversation_id: u64,
        states: Vec<(u64, u64, u64)>,
    },
    /// Users' last-seen times, `(user, unix ms)`, written at most once per interval per
    /// user (home shard).
    LastSeen { entries: Vec<(u64, u64)> },
    /// A push notification is owed to `user_id` for `conversation_id` (home shard).
    PushJob(PushJob),
    /// A push job failed `attempts` times so far; retry at `next_attempt_ms` (home).
    PushAttempt {
        job_id: u64,
        attempts: u32,
        next_attempt_ms: u64,
    },
    /// A push job ended (home shard).
    PushDone { job_id: u64, outcome: PushOutcome },
    /// A device published end-to-end encryption keys (home shard). A new identity key
    /// replaces the device's keys; otherwise the signed pre-key (if given) replaces the
    /// old one and the one-time keys join the pool (validated before it is written).
    KeysPublished {
        user_id: u64,
        device_id: u64,
        #[serde(with = "b64")]
        identity_key: Vec<u8>,
        signed_pre_key: Option<SignedKey>,
        /// `(key id, public key)`.
        #[serde(with = "b64_pairs")]
        one_time_keys: Vec<(u64, Vec<u8>)>,
    },
    /// One-time keys handed out, `(device, key id)` (home shard): never again.
    KeysClaimed {
        user_id: u64,
        claims: Vec<(u64, u64)>,
    },
}

/// A durable push-notification job (see `gateway/src/push.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub job_id: u64,
    pub user_id: u64,
    pub conversation_id: u64,
    /// The first message the notification is about.
    pub seq: u64,
    pub sender_user_id: u64,
    pub created_ms: u64,
    /// When it fires, unless the user comes online first.
    pub due_ms: u64,
    #[serde(default)]
    pub attempts: u32,
}

/// How a push job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// The provider accepted it.
    Delivered,
    /// The user came online first.
    Cancelled,
    /// Every attempt failed (or the provider refused it for good).
    DeadLettered,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// What a membership change did (validated by the owner before it is written, so
/// folding it never fails).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GroupChange {
    /// A new group; the creator is among `members` as owner.
    Create {
        name: String,
        members: Vec<(u64, Role)>,
    },
    Rename {
        name: String,
    },
    Add {
        user_ids: Vec<u64>,
    },
    Remove {
        user_ids: Vec<u64>,
    },
    /// The actor left.
    Leave,
    SetRole {
        user_id: u64,
        role: Role,
    },
}

impl MetaEvent {
    /// The log record kind this event is stored as.
    pub fn kind(&self) -> RecordKind {
        match self {
            MetaEvent::User { .. } => RecordKind::User,
            MetaEvent::Device { .. } => RecordKind::Device,
            MetaEvent::Member { .. } => RecordKind::Custom(KIND_MEMBER),
            MetaEvent::Left { .. } => RecordKind::Custom(KIND_LEFT),
            MetaEvent::GroupChange { .. } => RecordKind::Group,
            MetaEvent::GroupReceipts { .. } => RecordKind::Custom(KIND_GROUP_RECEIPTS),
            MetaEvent::Cursor { .. } => RecordKind::Cursor,
            MetaEvent::PeerReceipt { .. } => RecordKind::Custom(KIND_PEER_RECEIPT),
            MetaEvent::Direct { .. } => RecordKind::Group,
            MetaEvent::LastSeen { .. } => RecordKind::Custom(KIND_LAST_SEEN),
            MetaEvent::PushJob(_) => RecordKind::Custom(KIND_PUSH_JOB),
            MetaEvent::PushAttempt { .. } | MetaEvent::PushDone { .. } => {
                RecordKind::Custom(KIND_PUSH_DONE)
            }
            MetaEvent::KeysPublished { .. } => RecordKind::PublicKey,
            MetaEvent::KeysClaimed { .. } => RecordKind::Custom(KIND_KEYS_CLAIMED),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Delivered/read position of one device in one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub delivered: u64,
    pub read: u64,
}

impl Cursor {
    /// Both positions moved forward to at least `other`'s (read implies delivered).
    pub fn merge(&mut self, other: Cursor) {
        self.read = self.read.max(other.read);
        self.delivered = self.delivered.max(other.delivered).max(self.read);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    /// Per conversation.
    pub cursors: HashMap<u64, Cursor>,
    /// Published end-to-end encryption keys (`gateway/src/keys.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<DeviceKeys>,
}

/// A device's public keys in the key directory. Opaque bytes to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    #[serde(with = "b64")]
    pub identity_key: Vec<u8>,
    pub signed_pre_key: Option<SignedKey>,
    /// The one-time pre-key pool, by key id.
    #[serde(with = "b64_map")]
    pub one_time: BTreeMap<u64, Vec<u8>>,
    /// The highest one-time key id ever published under this identity key: ids must
    /// grow, so a key handed out can never be published (and handed out) again.
    #[serde(default)]
    pub highest_key_id: u64,
}

/// A signed pre-key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedKey {
    pub key_id: u64,
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

/// Bytes as standard base64 in the JSON of metadata records (keys are binary).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// `(id, bytes)` pairs with the bytes as base64.
mod b64_pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Pair(u64, #[serde(with = "super::b64")] Vec<u8>);

    pub fn serialize<S: Serializer>(pairs: &[(u64, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<Pair> = pairs.iter().map(|(id, b)| Pair(*id, b.clone())).collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, Vec<u8>)>, D::Error> {
        let pairs = Vec::<Pair>::deserialize(d)?;
        Ok(pairs.into_iter().map(|Pair(id, b)| (id, b)).collect())
    }
}

/// A map from id to bytes, stored as base64 pairs.
mod b64_map {
    use std::collections::BTreeMap;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u64, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(u64, Vec<u8>)> = map.iter().map(|(id, b)| (*id, b.clone())).collect();
        super::b64_pairs::serialize(&pairs, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, Vec<u8>>, D::Error> {
        Ok(super::b64_pairs::deserialize(d)?.into_iter().collect())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The other user of a direct conversation; 0 for a group.
    pub peer_user_id: u64,
    /// Groups: the sequence of the system message that added the user (history before
    /// it is not theirs to read). 0 for direct conversations.
    #[serde(default)]
    pub joined_seq: u64,
    /// Receipt state of the peer's devices, by device id.
    pub peer_receipts: BTreeMap<u64, Cursor>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    pub created_ms: u64,
    pub devices: BTreeMap<u64, Device>,
    /// By conversation id.
    pub conversations: HashMap<u64, Membership>,
    /// Newest written last-seen time (unix ms; 0 = never seen).
    #[serde(default)]
    pub last_seen_ms: u64,
}

impl User {
    /// The id the next registered device gets (ids start at 1, never reused).
    pub fn next_device_id(&self) -> u64 {
        self.devices.keys().next_back().map_or(1, |last| last + 1)
    }
}

/// A group member, as its owner keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub role: Role,
    pub joined_seq: u64,
}

/// A group, as its owner shard keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub created_by: u64,
    pub members: BTreeMap<u64, GroupMember>,
    /// Aggregated over each member's devices (highest of each position).
    pub receipts: HashMap<u64, Cursor>,
    /// The newest change and its system message's sequence.
    pub last_change: Option<(u64, u64, GroupChange)>,
}

impl Group {
    /// Apply a validated change whose system message is `seq`.
    pub fn apply(&mut self, actor: u64, seq: u64, change: &GroupChange) {
        let joined = |role| GroupMember {
            role,
            joined_seq: seq,
        };
        match change {
            GroupChange::Create { name, members } => {
                self.name = name.clone();
                self.created_by = actor;
                for &(user, role) in members {
                    self.members.insert(user, joined(role));
                }
            }
            GroupChange::Rename { name } => self.name = name.clone(),
            GroupChange::Add { user_ids } => {
                for user in user_ids {
                    self.members.entry(*user).or_insert(joined(Role::Member));
                }
            }
            GroupChange::Remove { user_ids } => {
                for user in user_ids {
                    self.members.remove(user);
                    self.receipts.remove(user);
                }
            }
            GroupChange::Leave => {
                let was_owner = self
                    .members
                    .remove(&actor)
                    .is_some_and(|m| m.role == Role::Owner);
                self.receipts.remove(&actor);
                if was_owner {
                    // The senior admin inherits the group, else the senior member.
                    let heir = self
                        .members
                        .iter()
                        .max_by_key(|(user, m)| (m.role, std::cmp::Reverse((m.joined_seq, **user))))
                        .map(|(user, _)| *user);
                    if let Some(member) = heir.and_then(|u| self.members.get_mut(&u)) {
                        member.role = Role::Owner;
                    }
                }
            }
            GroupChange::SetRole { user_id, role } => {
                if *role == Role::Owner {
                    // A transfer: the old owner stays on as an admin.
                    for member in self.members.values_mut() {
                        if member.role == Role::Owner {
                            member.role = Role::Admin;
                        }
                    }
                }
                if let Some(member) = self.members.get_mut(user_id) {
                    member.role = *role;
                }
            }
        }
        self.last_change = Some((seq, actor, change.clone()));
    }
}

/// Dead-lettered push jobs a shard keeps for operators (older ones are only in the log).
pub const PUSH_DEAD_LETTERS_KEPT: usize = 1024;

/// Everything a shard folds from its log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    /// Users whose home is this shard.
    pub users: HashMap<u64, User>,
    /// Direct conversations this shard owns: their members `(a, b)`.
    pub directs: HashMap<u64, (u64, u64)>,
    /// Groups this shard owns.
    #[serde(default)]
    pub groups: HashMap<u64, Group>,
    /// Push jobs not yet ended (home side), by job id.
    #[serde(default)]
    pub push_jobs: BTreeMap<u64, PushJob>,
    /// Push jobs dead-lettered (home side), newest last, at most
    /// [`PUSH_DEAD_LETTERS_KEPT`].
    #[serde(default)]
    pub push_dead_letters: std::collections::VecDeque<PushJob>,
    /// Derived (home side): the users of this shard in each group, for fan-out on read.
    #[serde(skip)]
    pub group_members_here: HashMap<u64, BTreeSet<u64>>,
    /// Metadata records that did not decode (skipped).
    #[serde(skip)]
    pub skipped: u64,
}

impl ShardState {
    pub fn fold(&mut self, event: MetaEvent) {
        match event {
            MetaEvent::User {
                user_id,
                username,
                password_hash,
                created_ms,
            } => {
                let user = self.users.entry(user_id).or_default();
                user.username = username;
                user.password_hash = password_hash;
                user.created_ms = created_ms;
            }
            MetaEvent::Device {
                user_id,
                device_id,
                name,
            } => {
                if let Some(user) = self.users.get_mut(&user_id) {
                    user.devices.entry(device_id).or_default().name = name;
                }
            }
            MetaEvent::Member {
                user_id,
                conversation_id,
                peer_user_id,
                joined_seq,
            } => {
                if let Some(user) = self.users.get_mut(&user_id) {
                    let membership = user.conversations.entry(conversation_id).or_default();
                    membership.peer_user_id = peer_user_id;
                    membership.joined_seq = joined_seq;
                    if peer_user_id == 0 {
                        self.group_members_here
                            .entry(conversation_id)
                            .or_default()
                            .insert(user_id);
                    }
                }
            }
            MetaEvent::Left {
                user_id,
                conversation_id,
            } => {
                if let Some(user) = self.users.get_mut(&user_id) {
                    user.conversations.remove(&conversation_id);
                    for device in user.devices.values_mut() {
                        device.cursors.remove(&conversation_id);
                    }
                }
                if let Some(here) = self.group_members_here.get_mut(&conversation_id) {
                    here.remove(&user_id);
                    if here.is_empty() {
                        self.group_members_here.remove(&conversation_id);
                    }
                }
            }
            MetaEvent::Cursor {
                user_id,
                device_id,
                conversation_id,
                delivered,
                read,
            } => {
                if let Some(device) = self.device_mut(user_id, device_id) {
                    device
                        .cursors
                        .entry(conversation_id)
                        .or_default()
                        .merge(Cursor { delivered, read });
                }
            }
            MetaEvent::PeerReceipt {
                user_id,
                conversation_id,
                peer_user_id,
                peer_device_id,
                delivered,
                read,
            } => {
                let membership = self
                    .users
                    .get_mut(&user_id)
                    .and_then(|u| u.conversations.get_mut(&conversation_id))
                    .filter(|m| m.peer_user_id == peer_user_id);
                if let Some(membership) = membership {
                    membership
                        .peer_receipts
                        .entry(peer_device_id)
                        .or_default()
                        .merge(Cursor { delivered, read });
                }
            }
            MetaEvent::Direct {
                conversation_id,
                a,
                b,
            } => {
                self.directs.insert(conversation_id, (a.min(b), a.max(b)));
            }
            MetaEvent::GroupChange {
                conversation_id,
                seq,
                actor,
                change,
            } => {
                self.groups
                    .entry(conversation_id)
                    .or_default()
                    .apply(actor, seq, &change);
            }
            MetaEvent::GroupReceipts {
                conversation_id,
                states,
            } => {
                if let Some(group) = self.groups.get_mut(&conversation_id) {
                    for (user, delivered, read) in states {
                        if group.members.contains_key(&user) {
                            group
                                .receipts
                                .entry(user)
                                .or_default()
                                .merge(Cursor { delivered, read });
                        }
                    }
                }
            }
            MetaEvent::LastSeen { entries } => {
                for (user_id, at) in entries {
                    if let Some(user) = self.users.get_mut(&user_id) {
                        user.last_seen_ms = user.last_seen_ms.max(at);
                    }
                }
            }
            MetaEvent::PushJob(job) => {
                self.push_jobs.insert(job.job_id, job);
            }
            MetaEvent::PushAttempt {
                job_id,
                attempts,
                next_attempt_ms,
            } => {
                if let Some(job) = self.push_jobs.get_mut(&job_id) {
                    job.attempts = job.attempts.max(attempts);
                    job.due_ms = next_attempt_ms;
                }
            }
            MetaEvent::KeysPublished {
                user_id,
                device_id,
                identity_key,
                signed_pre_key,
                one_time_keys,
            } => {
                if let Some(device) = self.device_mut(user_id, device_id) {
                    let keys = device.keys.get_or_insert_with(DeviceKeys::default);
                    if keys.identity_key != identity_key {
                        *keys = DeviceKeys {
                            identity_key,
                            ..DeviceKeys::default()
                        };
                    }
                    if signed_pre_key.is_some() {
                        keys.signed_pre_key = signed_pre_key;
                    }
                    for (key_id, key) in one_time_keys {
                        if keys.one_time.len() >= crate::keys::ONE_TIME_KEYS_PER_DEVICE_MAX {
                            break;
                        }
                        if key_id > keys.highest_key_id {
                            keys.highest_key_id = key_id;
                            keys.one_time.insert(key_id, key);
                        }
                    }
                }
            }
            MetaEvent::KeysClaimed { user_id, claims } => {
                if let Some(user) = self.users.get_mut(&user_id) {
                    for (device_id, key_id) in claims {
                        if let Some(keys) = user
                            .devices
                            .get_mut(&device_id)
                            .and_then(|d| d.keys.as_mut())
                        {
                            keys.one_time.remove(&key_id);
                        }
                    }
                }
            }
            MetaEvent::PushDone { job_id, outcome } => {
                if let Some(job) = self.push_jobs.remove(&job_id) {
                    if outcome == PushOutcome::DeadLettered {
                        if self.push_dead_letters.len() >= PUSH_DEAD_LETTERS_KEPT {
                            self.push_dead_letters.pop_front();
                        }
                        self.push_dead_letters.push_back(job);
                    }
                }
            }
        }
    }

    /// Rebuild the derived indexes (after a snapshot is restored).
    fn reindex(&mut self) {
        self.group_members_here.clear();
        for (&user_id, user) in &self.users {
            for (&conversation_id, membership) in &user.conversations {
                if membership.peer_user_id == 0 {
                    self.group_members_here
                        .entry(conversation_id)
                        .or_default()
                        .insert(user_id);
                }
            }
        }
    }

    /// Where a device's delivery in a conversation starts: after its delivered cursor,
    /// and never before the user joined (groups).
    pub fn delivered_floor(&self, user_id: u64, device_id: u64, conversation_id: u64) -> u64 {
        let joined = self
            .membership(user_id, conversation_id)
            .map_or(0, |m| m.joined_seq.saturating_sub(1));
        self.cursor(user_id, device_id, conversation_id)
            .delivered
            .max(joined)
    }

    /// The user's membership of `conversation_id`, if any.
    pub fn membership(&self, user_id: u64, conversation_id: u64) -> Option<&Membership> {
        self.users
            .get(&user_id)?
            .conversations
            .get(&conversation_id)
    }

    /// A registered device of a user homed here.
    pub fn device(&self, user_id: u64, device_id: u64) -> Option<&Device> {
        self.users.get(&user_id)?.devices.get(&device_id)
    }

    fn device_mut(&mut self, user_id: u64, device_id: u64) -> Option<&mut Device> {
        self.users.get_mut(&user_id)?.devices.get_mut(&device_id)
    }

    /// A device's cursor in a conversation (zero if it never moved).
    pub fn cursor(&self, user_id: u64, device_id: u64, conversation_id: u64) -> Cursor {
        self.device(user_id, device_id)
            .and_then(|d| d.cursors.get(&conversation_id))
            .copied()
            .unwrap_or_default()
    }
}

impl StateMachine for ShardState {
    fn apply(&mut self, record: &MetaRecord<'_>) {
        match serde_json::from_slice::<MetaEvent>(record.payload) {
            Ok(event) => self.fold(event),
            Err(error) => {
                self.skipped += 1;
                tracing::warn!(offset = record.offset, kind = ?record.kind, %error,
                    "metadata record skipped: it does not decode");
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        *self = match snapshot {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| e.to_string())?,
            None => ShardState::default(),
        };
        self.reindex();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> MetaEvent {
        MetaEvent::User {
            user_id: id,
            username: format!("u{id}"),
            password_hash: "$argon2id$...".into(),
            created_ms: 1,
        }
    }

    #[test]
    fn cursors_only_move_forward_and_read_implies_delivered() {
        let mut state = ShardState::default();
        state.fold(user(1));
        state.fold(MetaEvent::Device {
            user_id: 1,
            device_id: 1,
            name: "phone".into(),
        });
        let cursor = |delivered, read| MetaEvent::Cursor {
            user_id: 1,
            device_id: 1,
            conversation_id: 9,
            delivered,
            read,
        };
        state.fold(cursor(5, 0));
        state.fold(cursor(3, 0)); // late, lower: ignored
        assert_eq!(
            state.cursor(1, 1, 9),
            Cursor {
                delivered: 5,
                read: 0
            }
        );
        state.fold(cursor(0, 7));
        assert_eq!(
            state.cursor(1, 1, 9),
            Cursor {
                delivered: 7,
                read: 7
            }
        );
        assert_eq!(state.cursor(1, 2, 9), Cursor::default(), "unknown device");
    }

    #[test]
    fn snapshot_round_trips_and_bad_records_are_skipped() {
        let mut state = ShardState::default();
        state.fold(user(1));
        state.fold(MetaEvent::Member {
            user_id: 1,
            conversation_id: 9,
            peer_user_id: 2,
            joined_seq: 0,
        });
        state.fold(MetaEvent::Direct {
            conversation_id: 9,
            a: 2,
            b: 1,
        });
        let mut copy = ShardState::default();
        copy.restore(Some(&state.snapshot())).unwrap();
        assert_eq!(copy, state);
        assert_eq!(copy.directs[&9], (1, 2));
        assert_eq!(copy.membership(1, 9).unwrap().peer_user_id, 2);
        copy.apply(&MetaRecord {
            kind: RecordKind::User,
            seq: 9,
            offset: 64,
            timestamp_ms: 0,
            payload: b"{not json",
        });
        assert_eq!(copy.skipped, 1);
        assert!(copy.restore(Some(b"[]")).is_err());
    }

    #[test]
    fn events_are_stored_as_their_kinds() {
        assert_eq!(user(1).kind(), RecordKind::User);
        let member = MetaEvent::Member {
            user_id: 1,
            conversation_id: 2,
            peer_user_id: 3,
            joined_seq: 0,
        };
        assert_eq!(member.kind(), RecordKind::Custom(KIND_MEMBER));
        let text = String::from_utf8(member.encode()).unwrap();
        assert!(text.starts_with("{\"type\":\"member\""), "{text}");
    }
}
