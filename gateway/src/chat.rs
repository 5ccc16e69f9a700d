//! The chat core: the messages shards send each other over the mesh, and what a shard
//! does with each — as a user's home (accounts, devices, sessions, cursors, pushes) or as
//! a conversation's owner (membership, sequence, log).
//!
//! Every message carries what its handler needs; a request that wants an answer carries
//! a oneshot [`Reply`], which the handler completes on its own thread (a cross-thread
//! wake of the asking task). Requests go through the batched, bounded mesh; replies are
//! bounded by construction (one per request).
//!
//! The 1:1 send path (docs/architecture.md, "Hops"): the sender's session runs on the
//! sender's home shard → `Append` to the conversation owner (persist, sequence, dedupe)
//! → `Reply` with the ack to the session, and `Push` to the home shard of each member,
//! which offers the message to every online device ([`crate::session::live`]).

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_channel::oneshot;
use log_engine::{AppendRequest, RecordKind};
use router::ConversationKind;
use sha2::{Digest, Sha256};
use wire::message::{
    self, AckStatus, Body, ConversationSummary, Deliver, Error, ErrorCode, Frame, MediaRef,
    MessageKind, ReceiptState, StoredMessage,
};

use crate::auth::password;
use crate::group;
use crate::presence;
use crate::shard::Shard;
use crate::state::{Cursor, MetaEvent};

/// The answer channel of a request.
pub type Reply<T> = oneshot::Sender<T>;

/// A refused request: the code clients see and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(what: &str) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, what)
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(ErrorCode::Forbidden, "not a member of this conversation")
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self.code {
            ErrorCode::InvalidArgument | ErrorCode::MalformedFrame => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable | ErrorCode::ShuttingDown => 503,
            _ => 500,
        }
    }

    /// The error frame answering request `request_id`.
    pub fn frame(&self, request_id: u64) -> Frame {
        Frame {
            request_id,
            body: Body::Error(Error {
                code: self.code,
                message: self.message.clone(),
                retry_after_ms: 0,
            }),
        }
    }
}

/// Which records a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadRange {
    /// Sequence > n, oldest first.
    After(u64),
    /// Sequence < n, the newest `limit` of them.
    Before(u64),
    /// The newest `limit`.
    Latest,
}

/// A page of one conversation, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadPage {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
    /// The conversation's last durable sequence.
    pub last_seq: u64,
}

/// A send, as the owner needs it.
#[derive(Debug, Clone)]
pub struct AppendMsg {
    pub conversation_id: u64,
    pub sender_user_id: u64,
    pub sender_device_id: u64,
    pub key: [u8; 16],
    pub kind: MessageKind,
    pub body: Vec<u8>,
    pub media: Option<MediaRef>,
    pub reply_to_seq: u64,
}

/// An authenticated connection moving to its user's home shard.
#[derive(Debug)]
pub struct Handoff {
    /// A duplicate of the socket; the accepting shard closed its own descriptor.
    pub fd: OwnedFd,
    pub transport: crate::session::codec::Transport,
    /// Bytes read past the Hello.
    pub unread: Vec<u8>,
    pub user_id: u64,
    pub device_id: u64,
    pub hello_request_id: u64,
}

/// What shards send each other.
#[derive(Debug)]
pub enum ShardMsg {
    // ----- to a user's home shard -----
    Register {
        user_id: u64,
        username: String,
        password_hash: String,
        reply: Reply<Result<(), ApiError>>,
    },
    Login {
        user_id: u64,
        password: String,
        device_id: u64,
        device_name: String,
        reply: Reply<Result<u64, ApiError>>,
    },
    /// Does the device exist (refresh, hand-off)?
    DeviceExists {
        user_id: u64,
        device_id: u64,
        reply: Reply<bool>,
    },
    /// The user's name, if the user exists.
    UserName {
        user_id: u64,
        reply: Reply<Option<String>>,
    },
    /// Names for a conversation list: the usernames of `users` (homed here) and the
    /// names of `groups` (owned here), as `(id, name)`; unknown ids are left out.
    Titles {
        users: Vec<u64>,
        groups: Vec<u64>,
        reply: Reply<NamedIds>,
    },
    IsMember {
        user_id: u64,
        conversation_id: u64,
        reply: Reply<bool>,
    },
    /// Claim key bundles of a user homed here (`gateway/src/keys.rs`).
    KeysClaim {
        fetch: message::KeysFetch,
        reply: Reply<Result<message::KeyBundle, ApiError>>,
    },
    Joined {
        user_id: u64,
        conversation_id: u64,
        peer_user_id: u64,
        reply: Reply<()>,
    },
    Handoff(Handoff),
    /// A new message for `user_id`'s devices (all but `skip_device`).
    Push {
        user_id: u64,
        peer_user_id: u64,
        message: StoredMessage,
        skip_device: u64,
    },
    /// A member's device moved its cursors.
    ReceiptPush {
        user_id: u64,
        conversation_id: u64,
        state: ReceiptState,
    },
    // ----- to a conversation's owner shard -----
    OpenDirect {
        a: u64,
        b: u64,
        reply: Reply<Result<u64, ApiError>>,
    },
    Append {
        append: AppendMsg,
        reply: Reply<Result<message::Ack, ApiError>>,
    },
    Read {
        conversation_id: u64,
        range: ReadRange,
        limit: usize,
        /// Whose read this is (groups: membership and join point are checked by the
        /// owner); 0 for reads already checked at the reader's home.
        reader: u64,
        reply: Reply<Result<ReadPage, ApiError>>,
    },
    GroupCreate {
        conversation_id: u64,
        creator: u64,
        name: String,
        member_user_ids: Vec<u64>,
        reply: Reply<Result<message::GroupInfo, ApiError>>,
    },
    GroupUpdate {
        actor: u64,
        update: message::GroupUpdate,
        reply: Reply<Result<message::GroupInfo, ApiError>>,
    },
    GroupInfo {
        conversation_id: u64,
        reader: u64,
        reply: Reply<Result<(message::GroupInfo, Vec<ReceiptState>), ApiError>>,
    },
    /// A member's aggregated receipt position in a group.
    GroupReceipt {
        conversation_id: u64,
        user_id: u64,
        delivered: u64,
        read: u64,
    },
    // ----- from a group's owner to member homes -----
    /// Which of these users are not registered?
    UnknownUsers {
        user_ids: Vec<u64>,
        reply: Reply<Vec<u64>>,
    },
    GroupJoined {
        conversation_id: u64,
        user_ids: Vec<u64>,
        joined_seq: u64,
        reply: Reply<()>,
    },
    GroupLeft {
        conversation_id: u64,
        user_ids: Vec<u64>,
        reply: Reply<()>,
    },
    /// A group message for the listed members' devices, or (fan-out on read, `None`)
    /// for the online devices of every member whose home this is.
    GroupPush {
        message: StoredMessage,
        users: Option<Vec<u64>>,
        sender_device: u64,
    },
    /// Batched receipt positions of group members, for these senders' devices.
    GroupReceipts {
        conversation_id: u64,
        user_ids: Vec<u64>,
        states: Vec<ReceiptState>,
    },
    // ----- the HTTP fallback, on the user's home -----
    HttpSend {
        user_id: u64,
        device_id: u64,
        send: message::Send,
        reply: Reply<Result<message::Ack, ApiError>>,
    },
    Poll {
        user_id: u64,
        device_id: u64,
        cursor: Option<String>,
        wait: std::time::Duration,
        reply: Reply<Result<crate::poll::PollAnswer, ApiError>>,
    },
    // ----- presence and typing -----
    /// To a user home: the presence of those of `user_ids` that `viewer` may see; with
    /// `watch_from`, that shard now watches them (one subscription each).
    PresenceQuery {
        viewer: u64,
        /// The viewer's conversations, sorted (the visibility check).
        viewer_conversations: Vec<u64>,
        user_ids: Vec<u64>,
        watch_from: Option<usize>,
        reply: Reply<Vec<message::PresenceEntry>>,
    },
    /// To a user home: shard `from` dropped one subscription to each of `user_ids`.
    PresenceUnwatch {
        from: usize,
        user_ids: Vec<u64>,
    },
    /// From a user home to a watching shard: these users' presence changed.
    PresenceChanged {
        entries: Vec<message::PresenceEntry>,
    },
    /// To a group's owner: a member started or stopped typing.
    GroupTyping {
        conversation_id: u64,
        user_id: u64,
        active: bool,
    },
    /// To a user home: show `user_id`'s typing to these users' devices.
    TypingPush {
        conversation_id: u64,
        user_id: u64,
        active: bool,
        users: Vec<u64>,
    },
}

/// Wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The name of user `user_id`, asked of its home shard; `NotFound` if there is no such
/// user, or if `wanted` is given and is not that name (ids are a hash of the name, so a
/// name nobody registered can hash to someone else's id).
pub async fn user_name(
    shard: &Rc<Shard>,
    user_id: u64,
    wanted: Option<&str>,
) -> Result<String, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, "no such user");
    let home = shard.user_home(user_id);
    let name = shard
        .call(home, |reply| ShardMsg::UserName { user_id, reply })
        .await?
        .ok_or_else(not_found)?;
    if wanted.is_some_and(|w| w != name) {
        return Err(not_found());
    }
    Ok(name)
}

/// `(user id, username)` pairs and `(group id, group name)` pairs.
pub type NamedIds = (Vec<(u64, String)>, Vec<(u64, String)>);

/// A user's id, derived from the username so that any shard can find the user's home
/// without a directory: the first 63 bits of SHA-256("confab-user\0" ‖ name), never 0.
/// A different name hashing to a taken id is refused as a conflict at registration.
pub fn user_id_of(username: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"confab-user\0")
        .chain_update(username.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    (u64::from_le_bytes(first) >> 1).max(1)
}

/// The log's idempotency key for a client key: scoped to the sender, so two users
/// choosing the same 16 bytes never collide (and one cannot probe another's keys).
pub fn scoped_key(sender_user_id: u64, key: &[u8; 16]) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(b"confab-idem\0")
        .chain_update(sender_user_id.to_le_bytes())
        .chain_update(key)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    out
}

/// A message record's payload: the `StoredMessage` without the fields the log record
/// header already holds (conversation, sequence, id, timestamp), as a FlatBuffers
/// `Deliver` frame — the verified schema of the wire crate, no second format. Takes the
/// message and gives it back, so the body is not copied to encode it.
pub fn encode_payload(message: StoredMessage) -> (Vec<u8>, StoredMessage) {
    let frame = Frame {
        request_id: 0,
        body: Body::Deliver(Deliver { message }),
    };
    let payload = message::to_flatbuffers(&frame);
    match frame.body {
        Body::Deliver(Deliver { message }) => (payload, message),
        // Built as a Deliver two lines up.
        _ => (payload, StoredMessage::default()),
    }
}

impl AppendMsg {
    /// The message as it will be stored, before the owner gives it a position.
    pub fn into_message(self) -> StoredMessage {
        StoredMessage {
            conversation_id: self.conversation_id,
            sender_user_id: self.sender_user_id,
            sender_device_id: self.sender_device_id,
            kind: self.kind,
            body: self.body,
            media: self.media,
            reply_to_seq: self.reply_to_seq,
            ..StoredMessage::default()
        }
    }
}

/// The stored message of a log record; `None` (logged) if its payload does not decode.
pub fn decode_record(record: &log_engine::Record) -> Option<StoredMessage> {
    match message::from_flatbuffers(&record.payload) {
        Ok(Frame {
            body: Body::Deliver(Deliver { mut message }),
            ..
        }) => {
            message.conversation_id = record.conversation_id;
            message.seq = record.seq;
            message.message_id = record.message_id;
            message.timestamp_ms = record.timestamp_ms;
            Some(message)
        }
        other => {
            tracing::error!(offset = record.offset, conversation = record.conversation_id,
                seq = record.seq, error = ?other.err(), "message record does not decode");
            None
        }
    }
}

/// Handle one message from the mesh (or from this shard itself). Quick handlers run
/// inline; those that wait (storage, other shards, argon2) get a task of their own.
pub fn handle(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::DeviceExists {
            user_id,
            device_id,
            reply,
        } => {
            let exists = shard.state(|s| {
                s.users
                    .get(&user_id)
                    .is_some_and(|u| u.devices.contains_key(&device_id))
            });
            let _ = reply.send(exists);
        }
        ShardMsg::UserName { user_id, reply } => {
            let name = shard.state(|s| s.users.get(&user_id).map(|u| u.username.clone()));
            let _ = reply.send(name);
        }
        ShardMsg::Titles {
            users,
            groups,
            reply,
        } => {
            let titles = shard.state(|s| {
                let users = users
                    .iter()
                    .filter_map(|id| s.users.get(id).map(|u| (*id, u.username.clone())))
                    .collect();
                let groups = groups
                    .iter()
                    .filter_map(|id| s.groups.get(id).map(|g| (*id, g.name.clone())))
                    .collect();
                (users, groups)
            });
            let _ = reply.send(titles);
        }
        ShardMsg::IsMember {
            user_id,
            conversation_id,
            reply,
        } => {
            let member = shard.state(|s| s.membership(user_id, conversation_id).is_some());
            let _ = reply.send(member);
        }
        ShardMsg::Handoff(handoff) => crate::session::live::adopt(shard, handoff),
        ShardMsg::Push {
            user_id,
            peer_user_id,
            message,
            skip_device,
        } => push(shard, user_id, peer_user_id, message, skip_device),
        ShardMsg::ReceiptPush {
            user_id,
            conversation_id,
            state,
        } => receipt_push(shard, user_id, conversation_id, state),
        ShardMsg::Read {
            conversation_id,
            range,
            limit,
            reader,
            reply,
        } => {
            let _ = reply.send(read(shard, conversation_id, range, limit, reader));
        }
        ShardMsg::GroupInfo {
            conversation_id,
            reader,
            reply,
        } => {
            let _ = reply.send(group::info(shard, conversation_id, reader));
        }
        ShardMsg::GroupReceipt {
            conversation_id,
            user_id,
            delivered,
            read,
        } => group::member_receipt(shard, conversation_id, user_id, Cursor { delivered, read }),
        ShardMsg::UnknownUsers { user_ids, reply } => {
            let unknown = shard.state(|s| {
                user_ids
                    .into_iter()
                    .filter(|u| !s.users.contains_key(u))
                    .collect()
            });
            let _ = reply.send(unknown);
        }
        ShardMsg::GroupPush {
            message,
            users,
            sender_device,
        } => group::push(shard, message, users, sender_device),
        ShardMsg::GroupReceipts {
            conversation_id,
            user_ids,
            states,
        } => group::push_receipts(shard, conversation_id, &user_ids, states),
        ShardMsg::PresenceQuery {
            viewer,
            viewer_conversations,
            user_ids,
            watch_from,
            reply,
        } => {
            let entries =
                presence::query(shard, viewer, &viewer_conversations, &user_ids, watch_from);
            let _ = reply.send(entries);
        }
        ShardMsg::PresenceUnwatch { from, user_ids } => presence::unwatch(shard, from, &user_ids),
        ShardMsg::PresenceChanged { entries } => presence::deliver_changes(shard, entries),
        ShardMsg::TypingPush {
            conversation_id,
            user_id,
            active,
            users,
        } => presence::typing_push(shard, conversation_id, user_id, active, &users),
        other => {
            let shard = shard.clone();
            glommio::spawn_local(async move { handle_async(&shard, other).await }).detach();
        }
    }
}

async fn handle_async(shard: &Rc<Shard>, msg: ShardMsg) {
    match msg {
        ShardMsg::Register {
            user_id,
            username,
            password_hash,
            reply,
        } => {
            let _ = reply.send(register(shard, user_id, username, password_hash).await);
        }
        ShardMsg::Login {
            user_id,
            password,
            device_id,
            device_name,
            reply,
        } => {
            let _ = reply.send(login(shard, user_id, password, device_id, device_name).await);
        }
        ShardMsg::Joined {
            user_id,
            conversation_id,
            peer_user_id,
            reply,
        } => {
            join(shard, user_id, conversation_id, peer_user_id).await;
            let _ = reply.send(());
        }
        ShardMsg::OpenDirect { a, b, reply } => {
            let _ = reply.send(open_direct(shard, a, b).await);
        }
        ShardMsg::KeysClaim { fetch, reply } => {
            let _ = reply.send(crate::keys::claim(shard, fetch).await);
        }
        ShardMsg::Append { append, reply } => {
            let answer = match ConversationKind::of(append.conversation_id) {
                ConversationKind::Direct => append_message(shard, append).await,
                ConversationKind::Group => group::append(shard, append).await,
            };
            let _ = reply.send(answer);
        }
        ShardMsg::GroupCreate {
            conversation_id,
            creator,
            name,
            member_user_ids,
            reply,
        } => {
            let _ = reply
                .send(group::create(shard, conversation_id, creator, name, member_user_ids).await);
        }
        ShardMsg::GroupUpdate {
            actor,
            update,
            reply,
        } => {
            let _ = reply.send(group::update(shard, actor, update).await);
        }
        ShardMsg::GroupJoined {
            conversation_id,
            user_ids,
            joined_seq,
            reply,
        } => {
            group::joined(shard, conversation_id, user_ids, joined_seq).await;
            let _ = reply.send(());
        }
        ShardMsg::GroupLeft {
            conversation_id,
            user_ids,
            reply,
        } => {
            group::left(shard, conversation_id, user_ids).await;
            let _ = reply.send(());
        }
        ShardMsg::GroupTyping {
            conversation_id,
            user_id,
            active,
        } => presence::group_typing(shard, conversation_id, user_id, active).await,
        ShardMsg::HttpSend {
            user_id,
            device_id,
            send,
            reply,
        } => {
            let _ = reply.send(crate::poll::send(shard, user_id, device_id, send).await);
        }
        ShardMsg::Poll {
            user_id,
            device_id,
            cursor,
            wait,
            reply,
        } => {
            let _ = reply.send(crate::poll::poll(shard, user_id, device_id, cursor, wait).await);
        }
        // Handled inline by `handle`.
        ShardMsg::DeviceExists { .. }
        | ShardMsg::UserName { .. }
        | ShardMsg::Titles { .. }
        | ShardMsg::IsMember { .. }
        | ShardMsg::Handoff(_)
        | ShardMsg::Push { .. }
        | ShardMsg::ReceiptPush { .. }
        | ShardMsg::Read { .. }
        | ShardMsg::GroupInfo { .. }
        | ShardMsg::GroupReceipt { .. }
        | ShardMsg::UnknownUsers { .. }
        | ShardMsg::GroupPush { .. }
        | ShardMsg::GroupReceipts { .. }
        | ShardMsg::PresenceQuery { .. }
        | ShardMsg::PresenceUnwatch { .. }
        | ShardMsg::PresenceChanged { .. }
        | ShardMsg::TypingPush { .. } => {}
    }
}

/// Append a metadata event and wait until it is durable and folded into the state.
pub async fn persist(shard: &Shard, event: &MetaEvent) -> Result<(), ApiError> {
    let payload = event.encode();
    match shard
        .log
        .append_meta(event.kind(), &payload, now_ms())
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(shard = shard.id, %error, "metadata append failed");
            shard.counters().storage_error();
            Err(ApiError::unavailable("storage unavailable"))
        }
    }
}

/// Persist without waiting (cursors, receipts: losing the last few on a crash only
/// repeats some deliveries, which devices dedupe).
pub fn persist_later(shard: &Rc<Shard>, event: MetaEvent) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let _ = persist(&shard, &event).await;
    })
    .detach();
}

// ----- user home ----------------------------------------------------------------------

async fn register(
    shard: &Rc<Shard>,
    user_id: u64,
    username: String,
    password_hash: String,
) -> Result<(), ApiError> {
    let taken = shard.state(|s| s.users.contains_key(&user_id));
    if taken || !shard.reserving_users.borrow_mut().insert(user_id) {
        return Err(ApiError::new(ErrorCode::Conflict, "username is taken"));
    }
    let event = MetaEvent::User {
        user_id,
        username,
        password_hash,
        created_ms: now_ms(),
    };
    let result = persist(shard, &event).await;
    shard.reserving_users.borrow_mut().remove(&user_id);
    result
}

async fn login(
    shard: &Rc<Shard>,
    user_id: u64,
    password: String,
    device_id: u64,
    device_name: String,
) -> Result<u64, ApiError> {
    let wrong = || ApiError::new(ErrorCode::Unauthenticated, "wrong username or password");
    let Some(hash) = shard.state(|s| s.users.get(&user_id).map(|u| u.password_hash.clone())) else {
        return Err(wrong());
    };
    let verified = glommio::executor()
        .spawn_blocking(move || password::verify_password(&password, &hash))
        .await;
    match verified {
        Ok(true) => {}
        Ok(false) => return Err(wrong()),
        Err(error) => {
            tracing::error!(user_id, %error, "stored password hash unusable");
            return Err(ApiError::new(ErrorCode::Internal, "account record damaged"));
        }
    }
    if device_id != 0 {
        let exists = shard.state(|s| {
            s.users
                .get(&user_id)
                .is_some_and(|u| u.devices.contains_key(&device_id))
        });
        return if exists {
            Ok(device_id)
        } else {
            Err(ApiError::new(
                ErrorCode::NotFound,
                "no such device for this user",
            ))
        };
    }
    // A new device: its id is reserved now, so concurrent logins get different ones.
    let stored_next = shard.state(|s| s.users.get(&user_id).map_or(1, |u| u.next_device_id()));
    let device_id = {
        let mut reserved = shard.reserved_devices.borrow_mut();
        let next = reserved
            .get(&user_id)
            .map_or(stored_next, |r| (*r + 1).max(stored_next));
        reserved.insert(user_id, next);
        next
    };
    persist(
        shard,
        &MetaEvent::Device {
            user_id,
            device_id,
            name: device_name,
        },
    )
    .await?;
    Ok(device_id)
}

async fn join(shard: &Rc<Shard>, user_id: u64, conversation_id: u64, peer_user_id: u64) {
    if shard.state(|s| s.membership(user_id, conversation_id).is_some()) {
        return;
    }
    let _ = persist(
        shard,
        &MetaEvent::Member {
            user_id,
            conversation_id,
            peer_user_id,
            joined_seq: 0,
        },
    )
    .await;
}

fn push(
    shard: &Rc<Shard>,
    user_id: u64,
    peer_user_id: u64,
    message: StoredMessage,
    skip_device: u64,
) {
    let conversation_id = message.conversation_id;
    shard.note_last_seq(conversation_id, message.seq);
    // Repair: a member whose membership record was lost to a crash between the owner's
    // record and this shard's gets it now, before any device needs it for catch-up.
    if shard.state(|s| {
        s.users.contains_key(&user_id) && s.membership(user_id, conversation_id).is_none()
    }) {
        persist_later(
            shard,
            MetaEvent::Member {
                user_id,
                conversation_id,
                peer_user_id,
                joined_seq: 0,
            },
        );
    }
    let sessions = shard.sessions.borrow().of_user(user_id);
    if sessions.iter().all(|s| s.is_closed()) {
        crate::push::note_offline(shard, user_id, &message);
    }
    for session in sessions {
        if session.device_id == skip_device {
            let cursor = shard.state(|s| s.cursor(user_id, session.device_id, conversation_id));
            session.own_message_acked(conversation_id, message.seq, cursor.delivered);
        } else {
            crate::session::live::offer(shard, &session, &message);
        }
    }
    shard.counters().pushed(1);
}

fn receipt_push(shard: &Rc<Shard>, user_id: u64, conversation_id: u64, state: ReceiptState) {
    if state.user_id != user_id {
        persist_later(
            shard,
            MetaEvent::PeerReceipt {
                user_id,
                conversation_id,
                peer_user_id: state.user_id,
                peer_device_id: state.device_id,
                delivered: state.delivered_seq,
                read: state.read_seq,
            },
        );
    }
    let frame = Frame {
        request_id: 0,
        body: Body::ReceiptUpdate(message::ReceiptUpdate {
            conversation_id,
            states: vec![state.clone()],
        }),
    };
    let sessions = shard.sessions.borrow().of_user(user_id);
    for session in sessions {
        // A device's own receipt is not echoed to it.
        if !(state.user_id == user_id && session.device_id == state.device_id) {
            session.push_live(frame.clone());
        }
    }
}

/// The summary of a conversation for `user_id`'s `device_id` (home shard).
pub fn summary(
    shard: &Shard,
    user_id: u64,
    device_id: u64,
    conversation_id: u64,
    title: String,
) -> ConversationSummary {
    let (peer, cursor) = shard.state(|s| {
        (
            s.membership(user_id, conversation_id)
                .map_or(0, |m| m.peer_user_id),
            s.cursor(user_id, device_id, conversation_id),
        )
    });
    ConversationSummary {
        conversation_id,
        kind: match ConversationKind::of(conversation_id) {
            ConversationKind::Direct => message::ConversationKind::Direct,
            ConversationKind::Group => message::ConversationKind::Group,
        },
        title,
        peer_user_id: peer,
        last_seq: shard.last_seq(conversation_id),
        delivered_seq: cursor.delivered,
        read_seq: cursor.read,
    }
}

// ----- conversation owner -------------------------------------------------------------

async fn open_direct(shard: &Rc<Shard>, a: u64, b: u64) -> Result<u64, ApiError> {
    let conversation_id = router::direct_conversation_id(a, b);
    let members = (a.min(b), a.max(b));
    match shard.state(|s| s.directs.get(&conversation_id).copied()) {
        Some(stored) if stored == members => {}
        Some(_) => {
            // Two pairs share a hashed id (see router::conversation): refuse, never merge.
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "conversation id collision; cannot open this conversation",
            ));
        }
        None => {
            persist(
                shard,
                &MetaEvent::Direct {
                    conversation_id,
                    a,
                    b,
                },
            )
            .await?;
        }
    }
    Ok(shard.log.with_log(|l| l.last_seq(conversation_id)))
}

fn members(shard: &Shard, conversation_id: u64) -> Option<(u64, u64)> {
    shard.state(|s| s.directs.get(&conversation_id).copied())
}

/// A Snowflake id from the shard's generator (refused only if the clock is before the
/// id epoch or the generator is exhausted for this millisecond and cannot wait).
pub fn next_message_id(shard: &Shard, now: u64) -> Result<u64, ApiError> {
    shard
        .ids
        .borrow_mut()
        .next(now)
        .map_err(|e| ApiError::unavailable(&format!("message id: {e}")))
}

/// A message with its id and log position, on its way to durability.
pub struct PendingMessage<'a> {
    durable: log_engine::Durable<'a, log_engine::FsStorage, crate::state::ShardState>,
    stored: StoredMessage,
    started: std::time::Instant,
}

/// Give a (checked) send its Snowflake id and its place in the log now: the log assigns
/// the sequence at this call, so the caller fixes the order before any await. The
/// idempotency key is scoped to the sender. [`PendingMessage::finish`] waits.
pub fn begin_append(shard: &Shard, append: AppendMsg) -> Result<PendingMessage<'_>, ApiError> {
    let now = now_ms();
    let message_id = next_message_id(shard, now)?;
    let key = scoped_key(append.sender_user_id, &append.key);
    let (payload, mut stored) = encode_payload(append.into_message());
    stored.message_id = message_id;
    stored.timestamp_ms = now;
    let durable = shard.log.append(&AppendRequest {
        conversation_id: stored.conversation_id,
        message_id,
        timestamp_ms: now,
        key: Some(key),
        kind: RecordKind::Message,
        payload: &payload,
    });
    Ok(PendingMessage {
        durable,
        stored,
        started: std::time::Instant::now(),
    })
}

impl PendingMessage<'_> {
    /// Wait until durable: the sender's `Ack`, and the stored message to fan out — `None`
    /// for a retry of an earlier send (its original ack; nothing new to deliver).
    pub async fn finish(
        self,
        shard: &Shard,
    ) -> Result<(message::Ack, Option<StoredMessage>), ApiError> {
        let PendingMessage {
            durable,
            mut stored,
            started,
        } = self;
        let ack = durable.await.map_err(|error| {
            tracing::error!(shard = shard.id, %error, "message append failed");
            shard.counters().storage_error();
            ApiError::unavailable("storage unavailable")
        })?;
        shard.metrics.append_latency(shard.id, started.elapsed());
        if ack.deduplicated {
            // The original's timestamp is in its Snowflake id.
            let timestamp_ms = router::decode(ack.message_id).map_or(0, |p| p.unix_ms);
            let original = message::Ack {
                conversation_id: stored.conversation_id,
                message_id: ack.message_id,
                seq: ack.seq,
                timestamp_ms,
                status: AckStatus::Duplicate,
            };
            return Ok((original, None));
        }
        shard.counters().message_stored();
        stored.seq = ack.seq;
        let stored_ack = message::Ack {
            conversation_id: stored.conversation_id,
            message_id: stored.message_id,
            seq: ack.seq,
            timestamp_ms: stored.timestamp_ms,
            status: AckStatus::Stored,
        };
        Ok((stored_ack, Some(stored)))
    }
}

async fn append_message(shard: &Rc<Shard>, append: AppendMsg) -> Result<message::Ack, ApiError> {
    let conversation_id = append.conversation_id;
    let Some((a, b)) = members(shard, conversation_id) else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such conversation"));
    };
    let sender = append.sender_user_id;
    if sender != a && sender != b {
        return Err(ApiError::forbidden());
    }
    let (ack, stored) = begin_append(shard, append)?.finish(shard).await?;
    let Some(stored) = stored else {
        return Ok(ack);
    };
    let recipients: &[u64] = if a == b { &[a] } else { &[a, b] };
    for &user_id in recipients {
        let peer_user_id = if user_id == a { b } else { a };
        let skip_device = if user_id == sender {
            stored.sender_device_id
        } else {
            0
        };
        let home = shard.user_home(user_id);
        shard
            .route(
                home,
                ShardMsg::Push {
                    user_id,
                    peer_user_id,
                    message: stored.clone(),
                    skip_device,
                },
            )
            .await;
    }
    Ok(ack)
}

fn read(
    shard: &Shard,
    conversation_id: u64,
    range: ReadRange,
    limit: usize,
    reader: u64,
) -> Result<ReadPage, ApiError> {
    let limit = limit.clamp(1, wire::limits::SYNC_BATCH_MESSAGES_MAX);
    // A group member reads from its join point on.
    let floor = group::read_floor(shard, conversation_id, reader)?;
    let page = shard.log.with_log(|l| {
        let last = l.last_seq(conversation_id);
        match range {
            ReadRange::After(after) => {
                l.read_after(conversation_id, after.max(floor.saturating_sub(1)), limit)
            }
            ReadRange::Before(before) => l.read_before(conversation_id, before, limit),
            ReadRange::Latest => l.read_before(conversation_id, last.saturating_add(1), limit),
        }
    });
    let page = page.map_err(|error| {
        tracing::error!(shard = shard.id, conversation_id, %error, "read failed");
        shard.counters().storage_error();
        ApiError::unavailable("storage unavailable")
    })?;
    let first = page.records.iter().map(|r| r.seq).find(|&s| s >= floor);
    let last = page.records.last().map(|r| r.seq);
    let has_more = match range {
        ReadRange::After(_) => last.is_some_and(|s| s < page.last_seq),
        ReadRange::Before(_) | ReadRange::Latest => {
            first.is_some_and(|s| s > page.first_seq.max(floor))
        }
    };
    let messages = page
        .records
        .iter()
        .filter(|r| r.seq >= floor)
        .filter_map(decode_record)
        .collect();
    Ok(ReadPage {
        messages,
        has_more,
        last_seq: page.last_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_stable_nonzero_and_63_bit() {
        let alice = user_id_of("alice");
        assert_eq!(alice, user_id_of("alice"));
        assert_ne!(alice, user_id_of("alicf"));
        assert!(alice != 0 && alice < (1 << 63));
    }

    #[test]
    fn keys_are_scoped_to_their_sender() {
        let key = [7u8; 16];
        assert_ne!(scoped_key(1, &key), scoped_key(2, &key));
        assert_eq!(scoped_key(1, &key), scoped_key(1, &key));
    }

    #[test]
    fn payload_round_trips_through_a_record() {
        let append = AppendMsg {
            conversation_id: 9,
            sender_user_id: 1,
            sender_device_id: 2,
            key: [0; 16],
            kind: MessageKind::Chat,
            body: b"hello".to_vec(),
            media: None,
            reply_to_seq: 0,
        };
        let record = log_engine::Record {
            kind: RecordKind::Message,
            conversation_id: 9,
            seq: 3,
            message_id: 44,
            timestamp_ms: 55,
            offset: 64,
            key: None,
            prev_offset: 0,
            payload: encode_payload(append.into_message()).0,
        };
        let message = decode_record(&record).unwrap();
        assert_eq!(
            (
                message.conversation_id,
                message.seq,
                message.message_id,
                message.timestamp_ms
            ),
            (9, 3, 44, 55)
        );
        assert_eq!((message.sender_user_id, message.sender_device_id), (1, 2));
        assert_eq!(message.body, b"hello");
        let mut bad = record.clone();
        bad.payload = b"garbage".to_vec();
        assert!(decode_record(&bad).is_none());
    }

    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(ApiError::forbidden().http_status(), 403);
        assert_eq!(ApiError::unavailable("x").http_status(), 503);
        assert_eq!(ApiError::new(ErrorCode::Conflict, "x").http_status(), 409);
    }
}
