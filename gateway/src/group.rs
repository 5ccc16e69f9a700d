//! Groups: membership with roles, group messages with hybrid fan-out, and per-member
//! receipts (docs/architecture.md, "Groups").
//!
//! # Ownership
//! A group lives on the shard that owns its conversation id. That shard's state
//! ([`Group`]) is the authority on membership; each member's home shard keeps a copy of
//! the membership (with the join point) for routing, catch-up and quick refusals, and
//! the owner checks again on every send and read.
//!
//! # Membership changes
//! A change is validated against the folded state, then written as two records in one
//! executor step: the [`MetaEvent::GroupChange`] and the group's system message, whose
//! sequence the change names. They are adjacent in the log, and the log keeps a prefix
//! across a crash, so either both survive, or neither, or only the change — in which case
//! [`repair_system_messages`] writes the message again at start (same sequence: nothing
//! can follow it in the group). Sends to the group wait while a change is being made
//! (a per-group gate), so every message after a change's system message is fanned out
//! under the new membership. The members' homes then learn of it (`GroupJoined`,
//! `GroupLeft`) before the change is answered.
//!
//! # Fan-out
//! A message is persisted once in the group's partition and acknowledged; fan-out runs as
//! a task of its own, so the sender never waits on the group's size. Up to
//! `group_fanout_write_max` members it is *on write*: one `GroupPush` per destination
//! shard carrying the member list, so each home offers it to every member's online
//! devices and notes the news for offline ones. Above it, it is *on read*: one
//! `GroupPush` per shard that hosts members, with no list; each home offers it to the
//! online devices of its local members only, and offline members read the group from
//! their cursor when they reconnect. Both end in [`crate::session::live::offer`], which
//! sends each sequence once and in order per connection.
//!
//! # Receipts
//! A member's devices report to their home as in 1:1 chats; the home sends the member's
//! aggregated position (highest over its devices) to the owner. The owner merges it and,
//! every [`RECEIPT_FLUSH_INTERVAL`], writes one record per group with the members that
//! moved and pushes one `ReceiptUpdate` per group to the senders the moves concern — not
//! one frame per receipt.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use log_engine::{AppendRequest, RecordKind};
use router::ConversationKind;
use wire::message::{
    self, Body, ErrorCode, Frame, GroupInfo, GroupOp, GroupRole, MessageKind, ReceiptState,
    ReceiptUpdate, StoredMessage, SystemEvent,
};

use crate::chat::{self, now_ms, ApiError, AppendMsg, ShardMsg};
use crate::shard::Shard;
use crate::state::{Cursor, Group, GroupChange, MetaEvent, Role};

/// How long an owner gathers receipt moves before writing and pushing them.
pub const RECEIPT_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Owner-side bookkeeping that is not persisted.
#[derive(Default)]
pub struct GroupRuntime {
    /// Per group: sends hold it shared while they check and append, changes hold it
    /// exclusively until their records are durable and folded.
    gates: HashMap<u64, Rc<glommio::sync::RwLock<()>>>,
    /// Receipt positions ahead of the folded state, by group then member.
    receipts: HashMap<u64, HashMap<u64, Cursor>>,
    /// Members that moved since the last flush, with their read position before.
    dirty: BTreeMap<u64, BTreeMap<u64, u64>>,
    flush_scheduled: bool,
    /// Per group, each sender's newest sequence: whom receipt moves concern.
    senders: HashMap<u64, HashMap<u64, u64>>,
}

impl GroupRuntime {
    fn gate(&mut self, conversation_id: u64) -> Rc<glommio::sync::RwLock<()>> {
        self.gates
            .entry(conversation_id)
            .or_insert_with(|| Rc::new(glommio::sync::RwLock::new(())))
            .clone()
    }
}

fn role_of(role: GroupRole) -> Role {
    match role {
        GroupRole::Owner => Role::Owner,
        GroupRole::Admin => Role::Admin,
        _ => Role::Member,
    }
}

fn wire_role(role: Role) -> GroupRole {
    match role {
        Role::Owner => GroupRole::Owner,
        Role::Admin => GroupRole::Admin,
        Role::Member => GroupRole::Member,
    }
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such group")
}

fn storage_failed(shard: &Shard, error: &log_engine::Error) -> ApiError {
    tracing::error!(shard = shard.id, %error, "group append failed");
    shard.counters().storage_error();
    ApiError::unavailable("storage unavailable")
}

/// The system message that tells members about `change`.
fn system_message(conversation_id: u64, actor: u64, change: &GroupChange) -> StoredMessage {
    let (op, user_ids, name, role) = match change {
        // Creation reads as the creator adding everyone, under the group's name.
        GroupChange::Create { name, members } => (
            GroupOp::AddMembers,
            members.iter().map(|(u, _)| *u).collect(),
            name.clone(),
            GroupRole::Member,
        ),
        GroupChange::Rename { name } => {
            (GroupOp::Rename, Vec::new(), name.clone(), GroupRole::Member)
        }
        GroupChange::Add { user_ids } => (
            GroupOp::AddMembers,
            user_ids.clone(),
            String::new(),
            GroupRole::Member,
        ),
        GroupChange::Remove { user_ids } => (
            GroupOp::RemoveMembers,
            user_ids.clone(),
            String::new(),
            GroupRole::Member,
        ),
        GroupChange::Leave => (
            GroupOp::Leave,
            vec![actor],
            String::new(),
            GroupRole::Member,
        ),
        GroupChange::SetRole { user_id, role } => (
            GroupOp::SetRole,
            vec![*user_id],
            String::new(),
            wire_role(*role),
        ),
    };
    StoredMessage {
        conversation_id,
        sender_user_id: actor,
        kind: MessageKind::System,
        system: Some(SystemEvent {
            op,
            actor_user_id: actor,
            user_ids,
            name,
            role,
        }),
        ..StoredMessage::default()
    }
}

/// Info as the owner answers it (`last_seq` read beforehand: the state is borrowed).
fn info_of(conversation_id: u64, group: &Group, last_seq: u64) -> GroupInfo {
    GroupInfo {
        conversation_id,
        name: group.name.clone(),
        created_by: group.created_by,
        members: group
            .members
            .iter()
            .map(|(&user_id, m)| message::GroupMember {
                user_id,
                role: wire_role(m.role),
                joined_seq: m.joined_seq,
            })
            .collect(),
        last_seq,
    }
}

/// The group's info from the folded state.
fn current_info(shard: &Shard, conversation_id: u64) -> Result<GroupInfo, ApiError> {
    let last_seq = shard.log.with_log(|l| l.last_seq(conversation_id));
    shard
        .state(|s| {
            s.groups
                .get(&conversation_id)
                .map(|g| info_of(conversation_id, g, last_seq))
        })
        .ok_or_else(not_found)
}

/// Users among `user_ids` that are not registered (asks their home shards, one call per
/// shard).
async fn unknown_users(shard: &Rc<Shard>, user_ids: &[u64]) -> Result<Vec<u64>, ApiError> {
    let by_home = shard.users_by_home(user_ids.iter().copied());
    let mut unknown = Vec::new();
    for (home, users) in by_home {
        let missing = shard
            .call(home, |reply| ShardMsg::UnknownUsers {
                user_ids: users,
                reply,
            })
            .await?;
        unknown.extend(missing);
    }
    Ok(unknown)
}

/// Writes a validated change and its system message (see the module docs), waits for
/// both to be durable, and returns the message with its position. The caller holds the
/// group's gate exclusively.
async fn commit(
    shard: &Rc<Shard>,
    conversation_id: u64,
    actor: u64,
    change: GroupChange,
) -> Result<StoredMessage, ApiError> {
    let seq = shard
        .log
        .with_log(|l| l.appended_last_seq(conversation_id))
        .saturating_add(1);
    let now = now_ms();
    let message_id = chat::next_message_id(shard, now)?;
    let message = system_message(conversation_id, actor, &change);
    let event = MetaEvent::GroupChange {
        conversation_id,
        seq,
        actor,
        change,
    };
    let (payload, mut stored) = chat::encode_payload(message);
    // Both appends are issued before either is awaited: adjacent in the log.
    let meta = shard.log.append_meta(event.kind(), &event.encode(), now);
    let record = shard.log.append(&AppendRequest {
        conversation_id,
        message_id,
        timestamp_ms: now,
        key: None,
        kind: RecordKind::Message,
        payload: &payload,
    });
    meta.await.map_err(|e| storage_failed(shard, &e))?;
    let ack = record.await.map_err(|e| storage_failed(shard, &e))?;
    if ack.seq != seq {
        // Cannot happen while changes hold the gate; say so loudly if it ever does.
        tracing::error!(
            conversation_id,
            expected = seq,
            got = ack.seq,
            "system message sequence moved"
        );
    }
    stored.seq = ack.seq;
    stored.message_id = message_id;
    stored.timestamp_ms = now;
    Ok(stored)
}

/// Tells the homes of `users` that they joined (at `joined_seq`) or left, and waits.
async fn tell_homes(
    shard: &Rc<Shard>,
    conversation_id: u64,
    users: &[u64],
    joined_seq: Option<u64>,
) -> Result<(), ApiError> {
    let by_home = shard.users_by_home(users.iter().copied());
    for (home, user_ids) in by_home {
        shard
            .call(home, |reply| match joined_seq {
                Some(joined_seq) => ShardMsg::GroupJoined {
                    conversation_id,
                    user_ids,
                    joined_seq,
                    reply,
                },
                None => ShardMsg::GroupLeft {
                    conversation_id,
                    user_ids,
                    reply,
                },
            })
            .await?;
    }
    Ok(())
}

/// Create a group (owner shard).
pub async fn create(
    shard: &Rc<Shard>,
    conversation_id: u64,
    creator: u64,
    name: String,
    member_user_ids: Vec<u64>,
) -> Result<GroupInfo, ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "a group needs a name",
        ));
    }
    let others: BTreeSet<u64> = member_user_ids
        .into_iter()
        .filter(|&u| u != creator)
        .collect();
    if others.len() + 1 > shard.config.group_members_max {
        return Err(ApiError::new(
            ErrorCode::GroupFull,
            format!(
                "a group holds at most {} members",
                shard.config.group_members_max
            ),
        ));
    }
    let others: Vec<u64> = others.into_iter().collect();
    let unknown = unknown_users(shard, &others).await?;
    if let Some(user) = unknown.first() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no such user: {user}"),
        ));
    }
    let gate = shard.groups.borrow_mut().gate(conversation_id);
    let _changing = gate
        .write()
        .await
        .map_err(|_| ApiError::unavailable("group gate"))?;
    if shard.state(|s| s.groups.contains_key(&conversation_id)) {
        return Err(ApiError::new(ErrorCode::Conflict, "group exists"));
    }
    let mut members = vec![(creator, Role::Owner)];
    members.extend(others.iter().map(|&u| (u, Role::Member)));
    let everyone: Vec<u64> = members.iter().map(|(u, _)| *u).collect();
    let change = GroupChange::Create { name, members };
    let stored = commit(shard, conversation_id, creator, change).await?;
    tell_homes(shard, conversation_id, &everyone, Some(stored.seq)).await?;
    let info = current_info(shard, conversation_id)?;
    fan_out(shard, stored, 0, Vec::new());
    Ok(info)
}

/// The change `update` asks of `group` from `actor`, validated; `None` when there is
/// nothing to do (e.g. adding members who are all in already).
fn validate(
    group: &Group,
    actor: u64,
    update: &message::GroupUpdate,
    members_max: usize,
) -> Result<Option<GroupChange>, ApiError> {
    let forbidden = |why: &str| Err(ApiError::new(ErrorCode::Forbidden, why));
    let invalid = |why: &str| Err(ApiError::new(ErrorCode::InvalidArgument, why));
    let Some(me) = group.members.get(&actor) else {
        return forbidden("not a member of this group");
    };
    let admin = me.role >= Role::Admin;
    match update.op {
        GroupOp::Rename => {
            if !admin {
                return forbidden("only admins rename a group");
            }
            if update.name.trim().is_empty() {
                return invalid("a group needs a name");
            }
            Ok(Some(GroupChange::Rename {
                name: update.name.clone(),
            }))
        }
        GroupOp::AddMembers => {
            if !admin {
                return forbidden("only admins add members");
            }
            let new: BTreeSet<u64> = update
                .user_ids
                .iter()
                .copied()
                .filter(|u| !group.members.contains_key(u))
                .collect();
            if new.is_empty() {
                return Ok(None);
            }
            if group.members.len() + new.len() > members_max {
                return Err(ApiError::new(
                    ErrorCode::GroupFull,
                    format!("a group holds at most {members_max} members"),
                ));
            }
            Ok(Some(GroupChange::Add {
                user_ids: new.into_iter().collect(),
            }))
        }
        GroupOp::RemoveMembers => {
            if !admin {
                return forbidden("only admins remove members");
            }
            let gone: BTreeSet<u64> = update.user_ids.iter().copied().collect();
            if gone.is_empty() {
                return invalid("no members to remove");
            }
            if gone.contains(&actor) {
                return invalid("leave the group instead of removing yourself");
            }
            for user in &gone {
                match group.members.get(user) {
                    None => {
                        return Err(ApiError::new(
                            ErrorCode::NotFound,
                            format!("{user} is not a member"),
                        ))
                    }
                    Some(m) if m.role == Role::Owner => {
                        return forbidden("the owner cannot be removed")
                    }
                    Some(m) if m.role == Role::Admin && me.role != Role::Owner => {
                        return forbidden("only the owner removes admins")
                    }
                    Some(_) => {}
                }
            }
            Ok(Some(GroupChange::Remove {
                user_ids: gone.into_iter().collect(),
            }))
        }
        GroupOp::Leave => Ok(Some(GroupChange::Leave)),
        GroupOp::SetRole => {
            if me.role != Role::Owner {
                return forbidden("only the owner sets roles");
            }
            let [user_id] = update.user_ids[..] else {
                return invalid("set_role takes exactly one user");
            };
            if user_id == actor {
                return invalid("the owner hands over by making another member owner");
            }
            if !group.members.contains_key(&user_id) {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("{user_id} is not a member"),
                ));
            }
            Ok(Some(GroupChange::SetRole {
                user_id,
                role: role_of(update.role),
            }))
        }
    }
}

/// Change a group (owner shard).
pub async fn update(
    shard: &Rc<Shard>,
    actor: u64,
    update: message::GroupUpdate,
) -> Result<GroupInfo, ApiError> {
    let conversation_id = update.conversation_id;
    let gate = shard.groups.borrow_mut().gate(conversation_id);
    let changing = gate
        .write()
        .await
        .map_err(|_| ApiError::unavailable("group gate"))?;
    let members_max = shard.config.group_members_max;
    let change = shard.state(|s| {
        let group = s.groups.get(&conversation_id).ok_or_else(not_found)?;
        validate(group, actor, &update, members_max)
    })?;
    if let Some(GroupChange::Add { user_ids }) = &change {
        if let Some(user) = unknown_users(shard, user_ids).await?.first() {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no such user: {user}"),
            ));
        }
    }
    if let Some(change) = change {
        let stored = commit(shard, conversation_id, actor, change.clone()).await?;
        let gone: Vec<u64> = match &change {
            GroupChange::Remove { user_ids } => user_ids.clone(),
            GroupChange::Leave => vec![actor],
            _ => Vec::new(),
        };
        match &change {
            GroupChange::Add { user_ids } => {
                tell_homes(shard, conversation_id, user_ids, Some(stored.seq)).await?;
            }
            GroupChange::Remove { .. } | GroupChange::Leave => {
                tell_homes(shard, conversation_id, &gone, None).await?;
            }
            _ => {}
        }
        drop(changing);
        // Those who left still get the message that says so, and nothing after it.
        fan_out(shard, stored, 0, gone);
    }
    let info = current_info(shard, conversation_id)?;
    Ok(info)
}

/// A group's info and each member's aggregated receipt position (owner shard).
pub fn info(
    shard: &Shard,
    conversation_id: u64,
    reader: u64,
) -> Result<(GroupInfo, Vec<ReceiptState>), ApiError> {
    let runtime = shard.groups.borrow();
    let overlay = runtime.receipts.get(&conversation_id);
    let last_seq = shard.log.with_log(|l| l.last_seq(conversation_id));
    shard.state(|s| {
        let group = s.groups.get(&conversation_id).ok_or_else(not_found)?;
        if !group.members.contains_key(&reader) {
            return Err(ApiError::forbidden());
        }
        let states = group
            .members
            .keys()
            .map(|&user_id| {
                let mut cursor = group.receipts.get(&user_id).copied().unwrap_or_default();
                if let Some(ahead) = overlay.and_then(|o| o.get(&user_id)) {
                    cursor.merge(*ahead);
                }
                ReceiptState {
                    user_id,
                    device_id: 0,
                    delivered_seq: cursor.delivered,
                    read_seq: cursor.read,
                }
            })
            .collect();
        Ok((info_of(conversation_id, group, last_seq), states))
    })
}

/// The first sequence `reader` may read in a group (its join point); refuses
/// non-members. Direct conversations are checked at the reader's home.
pub fn read_floor(shard: &Shard, conversation_id: u64, reader: u64) -> Result<u64, ApiError> {
    if reader == 0 || ConversationKind::of(conversation_id) != ConversationKind::Group {
        return Ok(1);
    }
    shard.state(|s| {
        let group = s.groups.get(&conversation_id).ok_or_else(not_found)?;
        group
            .members
            .get(&reader)
            .map(|m| m.joined_seq.max(1))
            .ok_or_else(ApiError::forbidden)
    })
}

/// A group message (owner shard): checked and appended under the group's gate, acked
/// once durable, fanned out by a task of its own.
pub async fn append(shard: &Rc<Shard>, append: AppendMsg) -> Result<message::Ack, ApiError> {
    let conversation_id = append.conversation_id;
    let sender = append.sender_user_id;
    let sender_device = append.sender_device_id;
    let gate = shard.groups.borrow_mut().gate(conversation_id);
    let sending = gate
        .read()
        .await
        .map_err(|_| ApiError::unavailable("group gate"))?;
    let member = shard.state(|s| {
        s.groups
            .get(&conversation_id)
            .map(|g| g.members.contains_key(&sender))
    });
    match member {
        None => return Err(not_found()),
        Some(false) => return Err(ApiError::forbidden()),
        Some(true) => {}
    }
    let pending = chat::begin_append(shard, append)?;
    // The position is taken; a change may go ahead while this one becomes durable.
    drop(sending);
    let (ack, stored) = pending.finish(shard).await?;
    let Some(stored) = stored else {
        return Ok(ack);
    };
    {
        let mut runtime = shard.groups.borrow_mut();
        let newest = runtime
            .senders
            .entry(conversation_id)
            .or_default()
            .entry(sender)
            .or_insert(0);
        *newest = (*newest).max(ack.seq);
    }
    fan_out(shard, stored, sender_device, Vec::new());
    Ok(ack)
}

/// Sends `message` to the members' home shards (see the module docs), plus `extra`
/// users (members who just left, for the message that says so). Runs as its own task.
fn fan_out(shard: &Rc<Shard>, message: StoredMessage, sender_device: u64, extra: Vec<u64>) {
    let conversation_id = message.conversation_id;
    let mut members: Vec<u64> = shard.state(|s| {
        s.groups
            .get(&conversation_id)
            .map_or_else(Vec::new, |g| g.members.keys().copied().collect())
    });
    let on_read = members.len() > shard.config.group_fanout_write_max && extra.is_empty();
    members.extend(extra);
    let by_home = shard.users_by_home(members);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        for (home, users) in by_home {
            let msg = ShardMsg::GroupPush {
                message: message.clone(),
                users: (!on_read).then_some(users),
                sender_device,
            };
            shard.route(home, msg).await;
        }
    })
    .detach();
}

/// Writes the system message of each group's last change if a crash took it (see the
/// module docs). Runs once at start, before the shard serves.
pub async fn repair_system_messages(shard: &Rc<Shard>) {
    let missing: Vec<(u64, u64, u64, GroupChange)> = shard.state(|s| {
        s.groups
            .iter()
            .filter_map(|(&conversation_id, g)| {
                let (seq, actor, change) = g.last_change.clone()?;
                Some((conversation_id, seq, actor, change))
            })
            .collect()
    });
    for (conversation_id, seq, actor, change) in missing {
        if shard.log.with_log(|l| l.last_seq(conversation_id)) >= seq {
            continue;
        }
        let now = now_ms();
        let Ok(message_id) = chat::next_message_id(shard, now) else {
            continue;
        };
        let (payload, _) = chat::encode_payload(system_message(conversation_id, actor, &change));
        let written = shard
            .log
            .append(&AppendRequest {
                conversation_id,
                message_id,
                timestamp_ms: now,
                key: None,
                kind: RecordKind::Message,
                payload: &payload,
            })
            .await;
        match written {
            Ok(ack) if ack.seq == seq => {
                tracing::warn!(
                    conversation_id,
                    seq,
                    "group system message written again after a crash"
                );
            }
            Ok(ack) => tracing::error!(
                conversation_id,
                expected = seq,
                got = ack.seq,
                "group system message repaired at another sequence"
            ),
            Err(error) => {
                tracing::error!(conversation_id, %error, "group system message repair failed")
            }
        }
    }
}

// ----- member homes -------------------------------------------------------------------

/// Offer a group message to its members' devices on this (home) shard: the listed users,
/// or (fan-out on read) the local members.
pub fn push(
    shard: &Rc<Shard>,
    message: StoredMessage,
    users: Option<Vec<u64>>,
    sender_device: u64,
) {
    let conversation_id = message.conversation_id;
    shard.note_last_seq(conversation_id, message.seq);
    let users: Vec<u64> = match users {
        Some(users) => users,
        None => shard.state(|s| {
            s.group_members_here
                .get(&conversation_id)
                .map_or_else(Vec::new, |m| m.iter().copied().collect())
        }),
    };
    let registry = shard.sessions.borrow();
    let mut pushed = 0;
    for user in users {
        if !registry.of_user_iter(user).any(|s| !s.is_closed()) {
            crate::push::note_offline(shard, user, &message);
            continue;
        }
        for session in registry.of_user_iter(user) {
            if user == message.sender_user_id && session.device_id == sender_device {
                let floor =
                    shard.state(|s| s.delivered_floor(user, session.device_id, conversation_id));
                session.own_message_acked(conversation_id, message.seq, floor);
            } else {
                crate::session::live::offer(shard, session, &message);
                pushed += 1;
            }
        }
    }
    shard.counters().pushed(pushed);
}

/// Record that `user_ids` (those whose home this is) joined at `joined_seq`.
pub async fn joined(shard: &Rc<Shard>, conversation_id: u64, user_ids: Vec<u64>, joined_seq: u64) {
    for user_id in user_ids {
        if !shard.state(|s| s.users.contains_key(&user_id)) {
            continue;
        }
        let _ = chat::persist(
            shard,
            &MetaEvent::Member {
                user_id,
                conversation_id,
                peer_user_id: 0,
                joined_seq,
            },
        )
        .await;
    }
}

/// Record that `user_ids` left.
pub async fn left(shard: &Rc<Shard>, conversation_id: u64, user_ids: Vec<u64>) {
    for user_id in user_ids {
        if shard.state(|s| s.membership(user_id, conversation_id).is_none()) {
            continue;
        }
        let _ = chat::persist(
            shard,
            &MetaEvent::Left {
                user_id,
                conversation_id,
            },
        )
        .await;
    }
}

/// Push a batched receipt update to every device of `user_ids` (home shard).
pub fn push_receipts(
    shard: &Shard,
    conversation_id: u64,
    user_ids: &[u64],
    states: Vec<ReceiptState>,
) {
    let frame = Frame {
        request_id: 0,
        body: Body::ReceiptUpdate(ReceiptUpdate {
            conversation_id,
            states,
        }),
    };
    let registry = shard.sessions.borrow();
    for &user in user_ids {
        for session in registry.of_user_iter(user) {
            session.push_live(frame.clone());
        }
    }
}

// ----- receipts at the owner ----------------------------------------------------------

/// A member's aggregated position moved (owner shard).
pub fn member_receipt(shard: &Rc<Shard>, conversation_id: u64, user_id: u64, cursor: Cursor) {
    let folded = shard.state(|s| {
        s.groups
            .get(&conversation_id)
            .filter(|g| g.members.contains_key(&user_id))
            .map(|g| g.receipts.get(&user_id).copied().unwrap_or_default())
    });
    let Some(folded) = folded else {
        return; // not (or no longer) a member
    };
    let mut runtime = shard.groups.borrow_mut();
    let current = runtime
        .receipts
        .entry(conversation_id)
        .or_default()
        .entry(user_id)
        .or_insert(folded);
    let before = *current;
    current.merge(folded);
    current.merge(cursor);
    if *current == before {
        return;
    }
    runtime
        .dirty
        .entry(conversation_id)
        .or_default()
        .entry(user_id)
        .or_insert(before.read);
    if !runtime.flush_scheduled {
        runtime.flush_scheduled = true;
        let shard = shard.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(RECEIPT_FLUSH_INTERVAL).await;
            flush_receipts(&shard).await;
        })
        .detach();
    }
}

/// Write the moved positions (one record per group) and push one update per group to
/// each sender concerned: one whose newest message a moved member had not read.
async fn flush_receipts(shard: &Rc<Shard>) {
    let batches: Vec<(u64, Vec<ReceiptState>, Vec<u64>)> = {
        let mut runtime = shard.groups.borrow_mut();
        runtime.flush_scheduled = false;
        let dirty = std::mem::take(&mut runtime.dirty);
        dirty
            .into_iter()
            .map(|(conversation_id, moved)| {
                let positions = runtime.receipts.get(&conversation_id);
                let states: Vec<ReceiptState> = moved
                    .keys()
                    .map(|&user_id| {
                        let c = positions
                            .and_then(|p| p.get(&user_id))
                            .copied()
                            .unwrap_or_default();
                        ReceiptState {
                            user_id,
                            device_id: 0,
                            delivered_seq: c.delivered,
                            read_seq: c.read,
                        }
                    })
                    .collect();
                let targets: Vec<u64> =
                    runtime
                        .senders
                        .get(&conversation_id)
                        .map_or_else(Vec::new, |senders| {
                            senders
                                .iter()
                                .filter(|(sender, newest)| {
                                    moved.iter().any(|(member, read_before)| {
                                        member != *sender && read_before < newest
                                    })
                                })
                                .map(|(sender, _)| *sender)
                                .collect()
                        });
                (conversation_id, states, targets)
            })
            .collect()
    };
    for (conversation_id, states, targets) in batches {
        let event = MetaEvent::GroupReceipts {
            conversation_id,
            states: states
                .iter()
                .map(|s| (s.user_id, s.delivered_seq, s.read_seq))
                .collect(),
        };
        chat::persist_later(shard, event);
        let by_home = shard.users_by_home(targets);
        for (home, user_ids) in by_home {
            let msg = ShardMsg::GroupReceipts {
                conversation_id,
                user_ids,
                states: states.clone(),
            };
            shard.route(home, msg).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GroupMember;

    fn group(members: &[(u64, Role)]) -> Group {
        let mut g = Group::default();
        for &(u, role) in members {
            g.members.insert(
                u,
                GroupMember {
                    role,
                    joined_seq: 1,
                },
            );
        }
        g
    }

    fn op(op: GroupOp, user_ids: &[u64]) -> message::GroupUpdate {
        message::GroupUpdate {
            conversation_id: 7,
            op,
            name: "n".to_string(),
            user_ids: user_ids.to_vec(),
            role: GroupRole::Admin,
        }
    }

    fn code(r: Result<Option<GroupChange>, ApiError>) -> ErrorCode {
        r.err().map_or(ErrorCode::Unspecified, |e| e.code)
    }

    #[test]
    fn permissions() {
        let g = group(&[
            (1, Role::Owner),
            (2, Role::Admin),
            (3, Role::Member),
            (4, Role::Admin),
        ]);
        // Members change nothing but themselves.
        assert_eq!(
            code(validate(&g, 3, &op(GroupOp::Rename, &[]), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(validate(&g, 3, &op(GroupOp::AddMembers, &[9]), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(validate(&g, 3, &op(GroupOp::RemoveMembers, &[2]), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            validate(&g, 3, &op(GroupOp::Leave, &[]), 10),
            Ok(Some(GroupChange::Leave))
        );
        // Strangers nothing at all.
        assert_eq!(
            code(validate(&g, 99, &op(GroupOp::Leave, &[]), 10)),
            ErrorCode::Forbidden
        );
        // Admins add, rename, remove members, but not admins or the owner.
        assert!(
            matches!(validate(&g, 2, &op(GroupOp::AddMembers, &[9, 3]), 10), Ok(Some(GroupChange::Add { user_ids })) if user_ids == [9])
        );
        assert_eq!(
            validate(&g, 2, &op(GroupOp::AddMembers, &[3]), 10),
            Ok(None),
            "already in"
        );
        assert_eq!(
            code(validate(&g, 2, &op(GroupOp::AddMembers, &[8, 9]), 5)),
            ErrorCode::GroupFull
        );
        assert!(validate(&g, 2, &op(GroupOp::RemoveMembers, &[3]), 10).is_ok());
        assert_eq!(
            code(validate(&g, 2, &op(GroupOp::RemoveMembers, &[4]), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(validate(&g, 2, &op(GroupOp::RemoveMembers, &[1]), 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(validate(&g, 2, &op(GroupOp::RemoveMembers, &[42]), 10)),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(validate(&g, 2, &op(GroupOp::SetRole, &[3]), 10)),
            ErrorCode::Forbidden
        );
        // The owner removes admins and sets roles.
        assert!(validate(&g, 1, &op(GroupOp::RemoveMembers, &[4]), 10).is_ok());
        assert_eq!(
            validate(&g, 1, &op(GroupOp::SetRole, &[3]), 10),
            Ok(Some(GroupChange::SetRole {
                user_id: 3,
                role: Role::Admin
            }))
        );
        assert_eq!(
            code(validate(&g, 1, &op(GroupOp::SetRole, &[3, 4]), 10)),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn the_owner_leaving_hands_the_group_to_the_senior_admin() {
        let mut g = Group::default();
        g.apply(
            1,
            1,
            &GroupChange::Create {
                name: "g".into(),
                members: vec![(1, Role::Owner), (2, Role::Member), (3, Role::Member)],
            },
        );
        g.apply(1, 2, &GroupChange::Add { user_ids: vec![4] });
        g.apply(
            1,
            3,
            &GroupChange::SetRole {
                user_id: 4,
                role: Role::Admin,
            },
        );
        g.apply(1, 4, &GroupChange::Leave);
        assert_eq!(
            g.members.get(&4).map(|m| m.role),
            Some(Role::Owner),
            "the admin, though newer"
        );
        assert_eq!(g.members.get(&4).map(|m| m.joined_seq), Some(2));
        g.apply(4, 5, &GroupChange::Leave);
        assert_eq!(
            g.members.get(&2).map(|m| m.role),
            Some(Role::Owner),
            "then the senior member"
        );
        g.apply(
            2,
            6,
            &GroupChange::SetRole {
                user_id: 3,
                role: Role::Owner,
            },
        );
        assert_eq!(g.members.get(&3).map(|m| m.role), Some(Role::Owner));
        assert_eq!(
            g.members.get(&2).map(|m| m.role),
            Some(Role::Admin),
            "a transfer keeps the old owner as admin"
        );
        assert_eq!(g.last_change.as_ref().map(|c| c.0), Some(6));
    }

    #[test]
    fn system_messages_say_what_changed() {
        let m = system_message(
            7,
            1,
            &GroupChange::Remove {
                user_ids: vec![2, 3],
            },
        );
        assert_eq!(m.kind, MessageKind::System);
        let event = m.system.unwrap();
        assert_eq!(
            (event.op, event.actor_user_id, event.user_ids),
            (GroupOp::RemoveMembers, 1, vec![2, 3])
        );
        assert!(m.body.is_empty());
    }
}
