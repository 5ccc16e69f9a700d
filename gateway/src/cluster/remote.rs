//! What crosses a node link: a [`ShardMsg`] taken apart into data that can be serialized
//! ([`RemoteRequest`]) and, for a request that wants an answer, a local slot that
//! completes the asker's typed oneshot when the answer comes back ([`PendingReply`]).
//!
//! Inside a process a request carries its answer channel (a oneshot [`Reply`]) and the
//! handler completes it directly. A channel cannot cross a process, so forwarding a
//! request splits it in two: the data goes over the link, and the sender half of the
//! channel stays behind as a [`PendingReply`] (the link keeps it under a request id). The
//! receiving node [`rebuild`]s the request with a fresh oneshot of its own, so its
//! handlers need not know the asker is remote, and gets a future that resolves to the
//! answer, type-erased as a [`RemoteReply`], to send back. The answer completes the
//! pending reply, which restores the type the asker waits for.
//!
//! The failure behaviour is the one of a local request: an asker sees `Unavailable` when
//! its sender is dropped unanswered, so a broken link (its pending replies dropped), a
//! remote handler that drops its channel (the future yields `None`, nothing is sent, the
//! link drops the pending reply) and a wrong answer ([`RemoteError::ReplyMismatch`]) all
//! end the same way.
//!
//! Not everything can cross: [`ShardMsg::Handoff`] carries a socket's file descriptor,
//! which only means something in this process; [`split`] gives it back.
//!
//! Encoding is MessagePack with named fields (structs as maps): the wire types nested in
//! requests and replies are JSON-oriented (internally tagged `Body`, deserializers that
//! call `deserialize_any`), which needs a self-describing format.
//!
//! Requests carry what their `ShardMsg` carries, secrets included (`Register`'s password
//! hash, `Login`'s password): node links must be private or encrypted.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_channel::oneshot;
use serde::{Deserialize, Serialize};
use wire::message::{
    self, Frame, MediaRef, MessageKind, PresenceEntry, ReceiptState, StoredMessage,
};

use crate::chat::{ApiError, AppendMsg, NamedIds, ReadPage, ReadRange, Reply, ShardMsg};
use crate::poll::PollAnswer;

/// What [`rebuild`] gives for a request that wants an answer: the reply to send back,
/// or `None` if the local handler dropped its reply channel without answering.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Option<RemoteReply>>>>;

/// A ShardMsg's data, without its reply channel: what crosses a node link. One variant
/// per [`ShardMsg`] variant but `Handoff`, with the same fields but `reply` (`Poll`'s
/// `wait` is `wait_ms`); see there for what each means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteRequest {
    Register {
        user_id: u64,
        username: String,
        password_hash: String,
    },
    Login {
        user_id: u64,
        password: String,
        device_id: u64,
        device_name: String,
    },
    DeviceExists {
        user_id: u64,
        device_id: u64,
    },
    UserName {
        user_id: u64,
    },
    Titles {
        users: Vec<u64>,
        groups: Vec<u64>,
    },
    IsMember {
        user_id: u64,
        conversation_id: u64,
    },
    KeysClaim {
        fetch: message::KeysFetch,
    },
    Joined {
        user_id: u64,
        conversation_id: u64,
        peer_user_id: u64,
    },
    Push {
        user_id: u64,
        peer_user_id: u64,
        message: StoredMessage,
        skip_device: u64,
    },
    ReceiptPush {
        user_id: u64,
        conversation_id: u64,
        state: ReceiptState,
    },
    OpenDirect {
        a: u64,
        b: u64,
    },
    Append {
        append: RemoteAppend,
    },
    Read {
        conversation_id: u64,
        range: ReadRange,
        limit: usize,
        reader: u64,
    },
    GroupCreate {
        conversation_id: u64,
        creator: u64,
        name: String,
        member_user_ids: Vec<u64>,
    },
    GroupUpdate {
        actor: u64,
        update: message::GroupUpdate,
    },
    GroupInfo {
        conversation_id: u64,
        reader: u64,
    },
    GroupReceipt {
        conversation_id: u64,
        user_id: u64,
        delivered: u64,
        read: u64,
    },
    UnknownUsers {
        user_ids: Vec<u64>,
    },
    GroupJoined {
        conversation_id: u64,
        user_ids: Vec<u64>,
        joined_seq: u64,
    },
    GroupLeft {
        conversation_id: u64,
        user_ids: Vec<u64>,
    },
    GroupPush {
        message: StoredMessage,
        users: Option<Vec<u64>>,
        sender_device: u64,
    },
    GroupReceipts {
        conversation_id: u64,
        user_ids: Vec<u64>,
        states: Vec<ReceiptState>,
    },
    HttpSend {
        user_id: u64,
        device_id: u64,
        send: message::Send,
    },
    Poll {
        user_id: u64,
        device_id: u64,
        cursor: Option<String>,
        /// `ShardMsg::Poll::wait` in milliseconds (finer parts are dropped, more than
        /// `u64::MAX` ms is `u64::MAX`).
        wait_ms: u64,
    },
    PresenceQuery {
        viewer: u64,
        viewer_conversations: Vec<u64>,
        user_ids: Vec<u64>,
        /// A global shard index (`node × shards_per_node + shard`).
        watch_from: Option<usize>,
    },
    PresenceUnwatch {
        /// A global shard index (`node × shards_per_node + shard`).
        from: usize,
        user_ids: Vec<u64>,
    },
    PresenceChanged {
        entries: Vec<PresenceEntry>,
    },
    GroupTyping {
        conversation_id: u64,
        user_id: u64,
        active: bool,
    },
    TypingPush {
        conversation_id: u64,
        user_id: u64,
        active: bool,
        users: Vec<u64>,
    },
}

/// [`AppendMsg`] as it crosses a node link: the same fields, in a type that can be
/// compared (a [`RemoteRequest`] must be, and `AppendMsg` is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAppend {
    pub conversation_id: u64,
    pub sender_user_id: u64,
    pub sender_device_id: u64,
    pub key: [u8; 16],
    pub kind: MessageKind,
    /// As MessagePack bin: serde's default for bytes is an array of numbers, up to twice
    /// the size, and bodies are most of what a link carries.
    #[serde(with = "bin")]
    pub body: Vec<u8>,
    pub media: Option<MediaRef>,
    pub reply_to_seq: u64,
}

/// [`PollAnswer`] as it crosses a node link: the same fields, in a type that can be
/// cloned and compared (a [`RemoteReply`] must be, and `PollAnswer` is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePollAnswer {
    pub frames: Vec<Frame>,
    pub cursor: String,
}

/// A reply's value, one variant per distinct reply type (the requests answered with
/// each are listed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteReply {
    /// `()`: `Joined`, `GroupJoined`, `GroupLeft`.
    Done,
    /// `Register`.
    Status(Result<(), ApiError>),
    /// `Login` (a device id), `OpenDirect` (a conversation id).
    Id(Result<u64, ApiError>),
    /// `DeviceExists`, `IsMember`.
    Bool(bool),
    /// `UserName`.
    Name(Option<String>),
    /// `Titles`.
    Titles(NamedIds),
    /// `KeysClaim`.
    KeyBundle(Result<message::KeyBundle, ApiError>),
    /// `Append`, `HttpSend`.
    Ack(Result<message::Ack, ApiError>),
    /// `Read`.
    ReadPage(Result<ReadPage, ApiError>),
    /// `GroupCreate`, `GroupUpdate`.
    GroupInfo(Result<message::GroupInfo, ApiError>),
    /// `GroupInfo` (with the members' receipt states).
    GroupInfoReceipts(Result<(message::GroupInfo, Vec<ReceiptState>), ApiError>),
    /// `UnknownUsers`.
    UserIds(Vec<u64>),
    /// `Poll`.
    Poll(Result<RemotePollAnswer, ApiError>),
    /// `PresenceQuery`.
    Presence(Vec<PresenceEntry>),
}

impl RemoteReply {
    /// The variant's name, for [`RemoteError::ReplyMismatch`].
    fn name(&self) -> &'static str {
        match self {
            RemoteReply::Done => "Done",
            RemoteReply::Status(_) => "Status",
            RemoteReply::Id(_) => "Id",
            RemoteReply::Bool(_) => "Bool",
            RemoteReply::Name(_) => "Name",
            RemoteReply::Titles(_) => "Titles",
            RemoteReply::KeyBundle(_) => "KeyBundle",
            RemoteReply::Ack(_) => "Ack",
            RemoteReply::ReadPage(_) => "ReadPage",
            RemoteReply::GroupInfo(_) => "GroupInfo",
            RemoteReply::GroupInfoReceipts(_) => "GroupInfoReceipts",
            RemoteReply::UserIds(_) => "UserIds",
            RemoteReply::Poll(_) => "Poll",
            RemoteReply::Presence(_) => "Presence",
        }
    }
}

/// Why a value did not cross a node link.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot encode for a node link: {0}")]
    Encode(String),
    #[error("cannot decode from a node link: {0}")]
    Decode(String),
    #[error("a request expecting a {expected} reply was answered with {got}")]
    ReplyMismatch {
        expected: &'static str,
        got: &'static str,
    },
}

/// The local half of a forwarded request: completes the caller's typed oneshot.
///
/// Dropping it without completing it drops the oneshot sender, which the caller sees as
/// `Unavailable` — what should happen to the requests in flight on a link that broke.
pub struct PendingReply {
    /// The [`RemoteReply`] variant that answers this request.
    expects: &'static str,
    complete: Box<dyn FnOnce(RemoteReply) -> Result<(), RemoteError> + Send>,
}

impl PendingReply {
    /// Complete the caller's oneshot with `reply`. Returns Err(RemoteError::ReplyMismatch)
    /// if the reply variant is not the one this request expects (the caller's oneshot is
    /// then dropped, which the caller sees as Unavailable). A caller that stopped waiting
    /// is not an error: the reply is dropped.
    pub fn complete(self, reply: RemoteReply) -> Result<(), RemoteError> {
        (self.complete)(reply)
    }
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply")
            .field("expects", &self.expects)
            .finish_non_exhaustive()
    }
}

/// A type some `ShardMsg` is answered with, and how it travels as a [`RemoteReply`].
trait ReplyValue: Sized + Send + 'static {
    /// The name of the variant that carries it (as [`RemoteReply::name`] gives it).
    const VARIANT: &'static str;

    fn into_remote(self) -> RemoteReply;

    /// The value, or the reply given back if it is another variant.
    fn from_remote(reply: RemoteReply) -> Result<Self, RemoteReply>;
}

/// `ReplyValue` for types carried as they are, in a one-field variant.
macro_rules! reply_value {
    ($($variant:ident($ty:ty),)+) => {$(
        impl ReplyValue for $ty {
            const VARIANT: &'static str = stringify!($variant);

            fn into_remote(self) -> RemoteReply {
                RemoteReply::$variant(self)
            }

            fn from_remote(reply: RemoteReply) -> Result<Self, RemoteReply> {
                match reply {
                    RemoteReply::$variant(value) => Ok(value),
                    other => Err(other),
                }
            }
        }
    )+};
}

reply_value! {
    Status(Result<(), ApiError>),
    Id(Result<u64, ApiError>),
    Bool(bool),
    Name(Option<String>),
    Titles(NamedIds),
    KeyBundle(Result<message::KeyBundle, ApiError>),
    Ack(Result<message::Ack, ApiError>),
    ReadPage(Result<ReadPage, ApiError>),
    GroupInfo(Result<message::GroupInfo, ApiError>),
    GroupInfoReceipts(Result<(message::GroupInfo, Vec<ReceiptState>), ApiError>),
    UserIds(Vec<u64>),
    Presence(Vec<PresenceEntry>),
}

impl ReplyValue for () {
    const VARIANT: &'static str = "Done";

    fn into_remote(self) -> RemoteReply {
        RemoteReply::Done
    }

    fn from_remote(reply: RemoteReply) -> Result<Self, RemoteReply> {
        match reply {
            RemoteReply::Done => Ok(()),
            other => Err(other),
        }
    }
}

impl ReplyValue for Result<PollAnswer, ApiError> {
    const VARIANT: &'static str = "Poll";

    fn into_remote(self) -> RemoteReply {
        RemoteReply::Poll(self.map(|answer| RemotePollAnswer {
            frames: answer.frames,
            cursor: answer.cursor,
        }))
    }

    fn from_remote(reply: RemoteReply) -> Result<Self, RemoteReply> {
        match reply {
            RemoteReply::Poll(answer) => Ok(answer.map(|answer| PollAnswer {
                frames: answer.frames,
                cursor: answer.cursor,
            })),
            other => Err(other),
        }
    }
}

/// The pending reply that completes `reply` with the answer of type `T`.
fn pending<T: ReplyValue>(reply: Reply<T>) -> Option<PendingReply> {
    Some(PendingReply {
        expects: T::VARIANT,
        complete: Box::new(move |remote: RemoteReply| {
            // On a mismatch `reply` is dropped with this closure: the caller sees
            // Unavailable, as for any request that was not answered.
            let value = T::from_remote(remote).map_err(|got| RemoteError::ReplyMismatch {
                expected: T::VARIANT,
                got: got.name(),
            })?;
            // Err: the caller stopped waiting; nobody is owed the answer any more.
            let _ = reply.send(value);
            Ok(())
        }),
    })
}

/// A fresh reply channel for a rebuilt request, and the future of its answer as a
/// [`RemoteReply`] (`None` if the handler drops the channel unanswered).
fn answer<T: ReplyValue>() -> (Reply<T>, Option<ReplyFuture>) {
    let (reply, answer) = oneshot::channel::<T>();
    let future: ReplyFuture = Box::pin(async move { answer.await.ok().map(T::into_remote) });
    (reply, Some(future))
}

/// Milliseconds of `wait`, saturating.
fn millis(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
}

/// Take `msg` apart for another node. `Err(msg)` (the message given back unchanged) for
/// a message that cannot cross processes: `ShardMsg::Handoff` (it carries a file
/// descriptor).
// The Err side is as large as a ShardMsg by design: the message comes back unchanged so
// that the caller can still handle it locally, and it is rare (a `Handoff` only).
#[allow(clippy::result_large_err)]
pub fn split(msg: ShardMsg) -> Result<(RemoteRequest, Option<PendingReply>), ShardMsg> {
    // Exhaustive on purpose (no `_` arm): a new ShardMsg variant must be given a remote
    // form here before the crate compiles.
    Ok(match msg {
        ShardMsg::Register {
            user_id,
            username,
            password_hash,
            reply,
        } => (
            RemoteRequest::Register {
                user_id,
                username,
                password_hash,
            },
            pending(reply),
        ),
        ShardMsg::Login {
            user_id,
            password,
            device_id,
            device_name,
            reply,
        } => (
            RemoteRequest::Login {
                user_id,
                password,
                device_id,
                device_name,
            },
            pending(reply),
        ),
        ShardMsg::DeviceExists {
            user_id,
            device_id,
            reply,
        } => (
            RemoteRequest::DeviceExists { user_id, device_id },
            pending(reply),
        ),
        ShardMsg::UserName { user_id, reply } => {
            (RemoteRequest::UserName { user_id }, pending(reply))
        }
        ShardMsg::Titles {
            users,
            groups,
            reply,
        } => (RemoteRequest::Titles { users, groups }, pending(reply)),
        ShardMsg::IsMember {
            user_id,
            conversation_id,
            reply,
        } => (
            RemoteRequest::IsMember {
                user_id,
                conversation_id,
            },
            pending(reply),
        ),
        ShardMsg::KeysClaim { fetch, reply } => {
            (RemoteRequest::KeysClaim { fetch }, pending(reply))
        }
        ShardMsg::Joined {
            user_id,
            conversation_id,
            peer_user_id,
            reply,
        } => (
            RemoteRequest::Joined {
                user_id,
                conversation_id,
                peer_user_id,
            },
            pending(reply),
        ),
        msg @ ShardMsg::Handoff(_) => return Err(msg),
        ShardMsg::Push {
            user_id,
            peer_user_id,
            message,
            skip_device,
        } => (
            RemoteRequest::Push {
                user_id,
                peer_user_id,
                message,
                skip_device,
            },
            None,
        ),
        ShardMsg::ReceiptPush {
            user_id,
            conversation_id,
            state,
        } => (
            RemoteRequest::ReceiptPush {
                user_id,
                conversation_id,
                state,
            },
            None,
        ),
        ShardMsg::OpenDirect { a, b, reply } => {
            (RemoteRequest::OpenDirect { a, b }, pending(reply))
        }
        ShardMsg::Append { append, reply } => {
            let AppendMsg {
                conversation_id,
                sender_user_id,
                sender_device_id,
                key,
                kind,
                body,
                media,
                reply_to_seq,
            } = append;
            let append = RemoteAppend {
                conversation_id,
                sender_user_id,
                sender_device_id,
                key,
                kind,
                body,
                media,
                reply_to_seq,
            };
            (RemoteRequest::Append { append }, pending(reply))
        }
        ShardMsg::Read {
            conversation_id,
            range,
            limit,
            reader,
            reply,
        } => (
            RemoteRequest::Read {
                conversation_id,
                range,
                limit,
                reader,
            },
            pending(reply),
        ),
        ShardMsg::GroupCreate {
            conversation_id,
            creator,
            name,
            member_user_ids,
            reply,
        } => (
            RemoteRequest::GroupCreate {
                conversation_id,
                creator,
                name,
                member_user_ids,
            },
            pending(reply),
        ),
        ShardMsg::GroupUpdate {
            actor,
            update,
            reply,
        } => (RemoteRequest::GroupUpdate { actor, update }, pending(reply)),
        ShardMsg::GroupInfo {
            conversation_id,
            reader,
            reply,
        } => (
            RemoteRequest::GroupInfo {
                conversation_id,
                reader,
            },
            pending(reply),
        ),
        ShardMsg::GroupReceipt {
            conversation_id,
            user_id,
            delivered,
            read,
        } => (
            RemoteRequest::GroupReceipt {
                conversation_id,
                user_id,
                delivered,
                read,
            },
            None,
        ),
        ShardMsg::UnknownUsers { user_ids, reply } => {
            (RemoteRequest::UnknownUsers { user_ids }, pending(reply))
        }
        ShardMsg::GroupJoined {
            conversation_id,
            user_ids,
            joined_seq,
            reply,
        } => (
            RemoteRequest::GroupJoined {
                conversation_id,
                user_ids,
                joined_seq,
            },
            pending(reply),
        ),
        ShardMsg::GroupLeft {
            conversation_id,
            user_ids,
            reply,
        } => (
            RemoteRequest::GroupLeft {
                conversation_id,
                user_ids,
            },
            pending(reply),
        ),
        ShardMsg::GroupPush {
            message,
            users,
            sender_device,
        } => (
            RemoteRequest::GroupPush {
                message,
                users,
                sender_device,
            },
            None,
        ),
        ShardMsg::GroupReceipts {
            conversation_id,
            user_ids,
            states,
        } => (
            RemoteRequest::GroupReceipts {
                conversation_id,
                user_ids,
                states,
            },
            None,
        ),
        ShardMsg::HttpSend {
            user_id,
            device_id,
            send,
            reply,
        } => (
            RemoteRequest::HttpSend {
                user_id,
                device_id,
                send,
            },
            pending(reply),
        ),
        ShardMsg::Poll {
            user_id,
            device_id,
            cursor,
            wait,
            reply,
        } => (
            RemoteRequest::Poll {
                user_id,
                device_id,
                cursor,
                wait_ms: millis(wait),
            },
            pending(reply),
        ),
        ShardMsg::PresenceQuery {
            viewer,
            viewer_conversations,
            user_ids,
            watch_from,
            reply,
        } => (
            RemoteRequest::PresenceQuery {
                viewer,
                viewer_conversations,
                user_ids,
                watch_from,
            },
            pending(reply),
        ),
        ShardMsg::PresenceUnwatch { from, user_ids } => {
            (RemoteRequest::PresenceUnwatch { from, user_ids }, None)
        }
        ShardMsg::PresenceChanged { entries } => (RemoteRequest::PresenceChanged { entries }, None),
        ShardMsg::GroupTyping {
            conversation_id,
            user_id,
            active,
        } => (
            RemoteRequest::GroupTyping {
                conversation_id,
                user_id,
                active,
            },
            None,
        ),
        ShardMsg::TypingPush {
            conversation_id,
            user_id,
            active,
            users,
        } => (
            RemoteRequest::TypingPush {
                conversation_id,
                user_id,
                active,
                users,
            },
            None,
        ),
    })
}

/// Rebuild a request on the receiving node: the ShardMsg to handle locally, plus (for
/// requests that want an answer) a future that resolves to the reply to send back, or
/// None if the local handler dropped its reply channel without answering.
pub fn rebuild(request: RemoteRequest) -> (ShardMsg, Option<ReplyFuture>) {
    // A `ShardMsg` with a fresh reply channel, and the future of its answer.
    macro_rules! asks {
        ($variant:ident { $($field:ident $(: $value:expr)?),* $(,)? }) => {{
            let (reply, answer) = answer();
            (ShardMsg::$variant { $($field $(: $value)?,)* reply }, answer)
        }};
    }

    match request {
        RemoteRequest::Register {
            user_id,
            username,
            password_hash,
        } => asks!(Register {
            user_id,
            username,
            password_hash
        }),
        RemoteRequest::Login {
            user_id,
            password,
            device_id,
            device_name,
        } => asks!(Login {
            user_id,
            password,
            device_id,
            device_name
        }),
        RemoteRequest::DeviceExists { user_id, device_id } => {
            asks!(DeviceExists { user_id, device_id })
        }
        RemoteRequest::UserName { user_id } => asks!(UserName { user_id }),
        RemoteRequest::Titles { users, groups } => asks!(Titles { users, groups }),
        RemoteRequest::IsMember {
            user_id,
            conversation_id,
        } => asks!(IsMember {
            user_id,
            conversation_id
        }),
        RemoteRequest::KeysClaim { fetch } => asks!(KeysClaim { fetch }),
        RemoteRequest::Joined {
            user_id,
            conversation_id,
            peer_user_id,
        } => asks!(Joined {
            user_id,
            conversation_id,
            peer_user_id
        }),
        RemoteRequest::Push {
            user_id,
            peer_user_id,
            message,
            skip_device,
        } => (
            ShardMsg::Push {
                user_id,
                peer_user_id,
                message,
                skip_device,
            },
            None,
        ),
        RemoteRequest::ReceiptPush {
            user_id,
            conversation_id,
            state,
        } => (
            ShardMsg::ReceiptPush {
                user_id,
                conversation_id,
                state,
            },
            None,
        ),
        RemoteRequest::OpenDirect { a, b } => asks!(OpenDirect { a, b }),
        RemoteRequest::Append { append } => {
            let RemoteAppend {
                conversation_id,
                sender_user_id,
                sender_device_id,
                key,
                kind,
                body,
                media,
                reply_to_seq,
            } = append;
            let append = AppendMsg {
                conversation_id,
                sender_user_id,
                sender_device_id,
                key,
                kind,
                body,
                media,
                reply_to_seq,
            };
            asks!(Append { append })
        }
        RemoteRequest::Read {
            conversation_id,
            range,
            limit,
            reader,
        } => asks!(Read {
            conversation_id,
            range,
            limit,
            reader
        }),
        RemoteRequest::GroupCreate {
            conversation_id,
            creator,
            name,
            member_user_ids,
        } => asks!(GroupCreate {
            conversation_id,
            creator,
            name,
            member_user_ids
        }),
        RemoteRequest::GroupUpdate { actor, update } => asks!(GroupUpdate { actor, update }),
        RemoteRequest::GroupInfo {
            conversation_id,
            reader,
        } => asks!(GroupInfo {
            conversation_id,
            reader
        }),
        RemoteRequest::GroupReceipt {
            conversation_id,
            user_id,
            delivered,
            read,
        } => (
            ShardMsg::GroupReceipt {
                conversation_id,
                user_id,
                delivered,
                read,
            },
            None,
        ),
        RemoteRequest::UnknownUsers { user_ids } => asks!(UnknownUsers { user_ids }),
        RemoteRequest::GroupJoined {
            conversation_id,
            user_ids,
            joined_seq,
        } => asks!(GroupJoined {
            conversation_id,
            user_ids,
            joined_seq
        }),
        RemoteRequest::GroupLeft {
            conversation_id,
            user_ids,
        } => asks!(GroupLeft {
            conversation_id,
            user_ids
        }),
        RemoteRequest::GroupPush {
            message,
            users,
            sender_device,
        } => (
            ShardMsg::GroupPush {
                message,
                users,
                sender_device,
            },
            None,
        ),
        RemoteRequest::GroupReceipts {
            conversation_id,
            user_ids,
            states,
        } => (
            ShardMsg::GroupReceipts {
                conversation_id,
                user_ids,
                states,
            },
            None,
        ),
        RemoteRequest::HttpSend {
            user_id,
            device_id,
            send,
        } => asks!(HttpSend {
            user_id,
            device_id,
            send
        }),
        RemoteRequest::Poll {
            user_id,
            device_id,
            cursor,
            wait_ms,
        } => asks!(Poll {
            user_id,
            device_id,
            cursor,
            wait: Duration::from_millis(wait_ms)
        }),
        RemoteRequest::PresenceQuery {
            viewer,
            viewer_conversations,
            user_ids,
            watch_from,
        } => asks!(PresenceQuery {
            viewer,
            viewer_conversations,
            user_ids,
            watch_from
        }),
        RemoteRequest::PresenceUnwatch { from, user_ids } => {
            (ShardMsg::PresenceUnwatch { from, user_ids }, None)
        }
        RemoteRequest::PresenceChanged { entries } => (ShardMsg::PresenceChanged { entries }, None),
        RemoteRequest::GroupTyping {
            conversation_id,
            user_id,
            active,
        } => (
            ShardMsg::GroupTyping {
                conversation_id,
                user_id,
                active,
            },
            None,
        ),
        RemoteRequest::TypingPush {
            conversation_id,
            user_id,
            active,
            users,
        } => (
            ShardMsg::TypingPush {
                conversation_id,
                user_id,
                active,
                users,
            },
            None,
        ),
    }
}

/// Encode `value` for a node link: MessagePack with named fields (structs as maps), which
/// the JSON-oriented wire types need (see the module docs).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RemoteError> {
    rmp_serde::to_vec_named(value).map_err(|e| RemoteError::Encode(e.to_string()))
}

/// Append `value` to `out` as one raw-TCP frame of `wire` (u32 LE length + MessagePack),
/// encoding in place: no intermediate buffer, one limit check. On error `out` is left as
/// it was.
pub fn encode_framed<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), RemoteError> {
    use wire::limits::{FRAME_BYTES_MAX, TCP_LENGTH_PREFIX_BYTES};
    let start = out.len();
    out.extend_from_slice(&[0; TCP_LENGTH_PREFIX_BYTES]);
    let encoded = rmp_serde::encode::write_named(out, value);
    let len = out.len() - start - TCP_LENGTH_PREFIX_BYTES;
    let result = match encoded {
        Err(e) => Err(RemoteError::Encode(e.to_string())),
        Ok(()) if len > FRAME_BYTES_MAX => Err(RemoteError::Encode(format!(
            "{len} bytes, over the {FRAME_BYTES_MAX}-byte frame limit"
        ))),
        // `len` ≤ FRAME_BYTES_MAX < u32::MAX.
        Ok(()) => match out.get_mut(start..start + TCP_LENGTH_PREFIX_BYTES) {
            Some(prefix) => {
                prefix.copy_from_slice(&(len as u32).to_le_bytes());
                return Ok(());
            }
            None => Err(RemoteError::Encode("length prefix vanished".to_owned())),
        },
    };
    out.truncate(start);
    result
}

/// Decode a value [`encode`] encoded.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RemoteError> {
    rmp_serde::from_slice(bytes).map_err(|e| RemoteError::Decode(e.to_string()))
}

/// `Vec<u8>` as MessagePack bin.
mod bin {
    use std::fmt;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl de::Visitor<'_> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use futures_lite::future::block_on;
    use wire::message::{
        Ack, AckStatus, Body, DeviceKeyBundle, Error, ErrorCode, GroupMember, GroupOp, GroupRole,
        IdempotencyKey, KeyBundle, KeysFetch, KeysLow, OneTimeKey, PresenceStatus, PresenceUpdate,
        ReceiptUpdate, Sha256, SignedPreKey, SystemEvent, Typing,
    };

    use super::*;
    use crate::chat::Handoff;
    use crate::session::codec::Transport;

    /// Every `RemoteRequest` variant: the round-trip test must cover exactly these.
    const REQUESTS: &[&str] = &[
        "Register",
        "Login",
        "DeviceExists",
        "UserName",
        "Titles",
        "IsMember",
        "KeysClaim",
        "Joined",
        "Push",
        "ReceiptPush",
        "OpenDirect",
        "Append",
        "Read",
        "GroupCreate",
        "GroupUpdate",
        "GroupInfo",
        "GroupReceipt",
        "UnknownUsers",
        "GroupJoined",
        "GroupLeft",
        "GroupPush",
        "GroupReceipts",
        "HttpSend",
        "Poll",
        "PresenceQuery",
        "PresenceUnwatch",
        "PresenceChanged",
        "GroupTyping",
        "TypingPush",
    ];

    /// Every `RemoteReply` variant: the round-trip test must answer with each.
    const REPLIES: &[&str] = &[
        "Done",
        "Status",
        "Id",
        "Bool",
        "Name",
        "Titles",
        "KeyBundle",
        "Ack",
        "ReadPage",
        "GroupInfo",
        "GroupInfoReceipts",
        "UserIds",
        "Poll",
        "Presence",
    ];

    /// The variant name (from the Debug form, which derives it).
    fn variant_name(value: &impl Debug) -> String {
        let debug = format!("{value:?}");
        debug
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap()
            .to_string()
    }

    fn through_the_wire<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        decode(&encode(value).unwrap()).unwrap()
    }

    /// Round-trips every request `make` builds (one per answer): the request crosses,
    /// is rebuilt equal to the original, its rebuilt reply channel is answered, and the
    /// answer crosses back to the original caller unchanged. Returns the names of the
    /// request and reply variants.
    fn check_asks<T: ReplyValue + Debug>(
        make: impl Fn(Reply<T>) -> ShardMsg,
        answers: Vec<T>,
        take_reply: impl Fn(ShardMsg) -> Reply<T>,
    ) -> (String, String) {
        let mut names = (String::new(), String::new());
        for answer in answers {
            let expected = format!("{answer:?}");
            let (reply, mut asker) = oneshot::channel();
            let original = make(reply);
            let original_debug = format!("{original:?}");
            let (request, pending) = split(original).unwrap();
            let pending = pending.expect("a request that wants an answer leaves a pending reply");
            let request = through_the_wire(&request);

            // The data: the rebuilt message is the original (Debug shows every field, and
            // a sender whose receiver lives as `Sender { complete: false }`: `_answer`
            // keeps the rebuilt one's), and splits into the same request.
            let (rebuilt, _answer) = rebuild(request.clone());
            assert_eq!(format!("{rebuilt:?}"), original_debug);
            let (again, _) = split(rebuilt).unwrap();
            assert_eq!(again, request);

            // The answer: the local handler answers the rebuilt message's channel.
            let (rebuilt, remote_answer) = rebuild(request.clone());
            let remote_answer = remote_answer.expect("a request that wants an answer");
            take_reply(rebuilt).send(answer).unwrap();
            let reply = block_on(remote_answer).expect("answered");
            assert_eq!(reply.name(), T::VARIANT);
            let reply = through_the_wire(&reply);
            assert_eq!(
                asker.try_recv().unwrap().map(|_| ()),
                None,
                "not yet answered"
            );
            pending.complete(reply.clone()).unwrap();
            let got = asker.try_recv().unwrap().expect("answered");
            assert_eq!(format!("{got:?}"), expected);

            assert_eq!(variant_name(&request), variant_name(&again));
            names = (variant_name(&request), reply.name().to_string());
        }
        names
    }

    /// Round-trips a request that wants no answer; returns its variant name.
    fn check_tells(make: impl Fn() -> ShardMsg) -> String {
        let original_debug = format!("{:?}", make());
        let (request, pending) = split(make()).unwrap();
        assert!(pending.is_none());
        let request = through_the_wire(&request);
        let (rebuilt, answer) = rebuild(request.clone());
        assert!(answer.is_none());
        assert_eq!(format!("{rebuilt:?}"), original_debug);
        let (again, pending) = split(rebuilt).unwrap();
        assert!(pending.is_none());
        assert_eq!(again, request);
        variant_name(&request)
    }

    // Round-trips a request that wants an answer: `asks!(Variant, [answers], |reply|
    // ShardMsg::Variant { .., reply })`.
    macro_rules! asks {
        ($variant:ident, [$($answer:expr),+ $(,)?], |$reply:ident| $make:expr) => {{
            let names = check_asks(
                |$reply| $make,
                vec![$($answer),+],
                |msg| match msg {
                    ShardMsg::$variant { reply, .. } => reply,
                    other => panic!("rebuilt as {other:?}"),
                },
            );
            assert_eq!(names.0, stringify!($variant));
            names
        }};
    }

    fn media() -> MediaRef {
        MediaRef {
            sha256: Sha256([0xa7; 32]),
            size: 1_048_577,
            content_type: "image/png".into(),
            metadata: r#"{"w":640,"h":480}"#.into(),
        }
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage {
            conversation_id: 0x7fff_0000_1234,
            seq,
            message_id: 0x0123_4567_89ab_cdef,
            sender_user_id: 0x5555_aaaa_1111,
            sender_device_id: 3,
            timestamp_ms: 1_726_000_000_123,
            kind: MessageKind::Chat,
            body: vec![0, 1, 2, 0x7f, 0x80, 0xff, b'h', b'i'],
            media: Some(media()),
            reply_to_seq: seq - 1,
            system: None,
        }
    }

    fn system_message() -> StoredMessage {
        StoredMessage {
            kind: MessageKind::System,
            body: Vec::new(),
            media: None,
            reply_to_seq: 0,
            system: Some(SystemEvent {
                op: GroupOp::AddMembers,
                actor_user_id: 901,
                user_ids: vec![902, u64::MAX >> 1],
                name: "ops on call".into(),
                role: GroupRole::Member,
            }),
            ..stored(57)
        }
    }

    fn receipt(user_id: u64) -> ReceiptState {
        ReceiptState {
            user_id,
            device_id: 4,
            delivered_seq: 88,
            read_seq: 85,
        }
    }

    fn group_info() -> message::GroupInfo {
        message::GroupInfo {
            conversation_id: 0x4000_0000_0000_0007,
            name: "Release — crew ✓".into(),
            created_by: 901,
            members: vec![
                GroupMember {
                    user_id: 901,
                    role: GroupRole::Owner,
                    joined_seq: 1,
                },
                GroupMember {
                    user_id: 902,
                    role: GroupRole::Admin,
                    joined_seq: 14,
                },
            ],
            last_seq: 312,
        }
    }

    fn presence() -> Vec<PresenceEntry> {
        vec![
            PresenceEntry {
                user_id: 902,
                last_seen_ms: 1_726_000_001_000,
                status: PresenceStatus::Away,
            },
            PresenceEntry {
                user_id: 903,
                last_seen_ms: 0,
                status: PresenceStatus::Online,
            },
        ]
    }

    fn ack() -> Ack {
        Ack {
            conversation_id: 0x7fff_0000_1234,
            message_id: 0x0123_4567_89ab_cdef,
            seq: 58,
            timestamp_ms: 1_726_000_000_456,
            status: AckStatus::Duplicate,
        }
    }

    fn send() -> message::Send {
        message::Send {
            conversation_id: 0x7fff_0000_1234,
            idempotency_key: IdempotencyKey([0x3c; 16]),
            kind: MessageKind::Encrypted,
            body: vec![0xde, 0xad, 0xbe, 0xef, 0x00],
            media: Some(media()),
            reply_to_seq: 41,
        }
    }

    fn refused(code: ErrorCode) -> ApiError {
        ApiError::new(code, format!("refused: {}", code.as_str()))
    }

    fn poll_answer() -> PollAnswer {
        PollAnswer {
            frames: vec![
                Frame {
                    request_id: 0,
                    body: Body::Deliver(message::Deliver {
                        message: stored(58),
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::Deliver(message::Deliver {
                        message: system_message(),
                    }),
                },
                Frame {
                    request_id: 17,
                    body: Body::Ack(ack()),
                },
                Frame {
                    request_id: 0,
                    body: Body::ReceiptUpdate(ReceiptUpdate {
                        conversation_id: 12,
                        states: vec![receipt(902), receipt(903)],
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::Typing(Typing {
                        conversation_id: 12,
                        user_id: 902,
                        active: true,
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::PresenceUpdate(PresenceUpdate {
                        entries: presence(),
                    }),
                },
                Frame {
                    request_id: 0,
                    body: Body::KeysLow(KeysLow {
                        one_time_keys_remaining: 3,
                    }),
                },
                Frame {
                    request_id: 18,
                    body: Body::Error(Error {
                        code: ErrorCode::RateLimited,
                        message: "slow down".into(),
                        retry_after_ms: 250,
                    }),
                },
            ],
            cursor: "8812345.17".into(),
        }
    }

    #[test]
    fn every_request_and_reply_round_trips() {
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        let mut asked = |(request, reply): (String, String)| {
            requests.push(request);
            replies.push(reply);
        };

        asked(asks!(
            Register,
            [Ok(()), Err(refused(ErrorCode::Conflict))],
            |reply| ShardMsg::Register {
                user_id: 0x2b3c_4d5e_6f70,
                username: "alice_ü".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                reply,
            }
        ));
        asked(asks!(
            Login,
            [
                Ok(0x1122_3344_5566),
                Err(refused(ErrorCode::Unauthenticated))
            ],
            |reply| ShardMsg::Login {
                user_id: 0x2b3c_4d5e_6f70,
                password: "correct horse battery staple".into(),
                device_id: 9,
                device_name: "Alice's phone".into(),
                reply,
            }
        ));
        asked(asks!(DeviceExists, [true, false], |reply| {
            ShardMsg::DeviceExists {
                user_id: 0x2b3c_4d5e_6f70,
                device_id: 9,
                reply,
            }
        }));
        asked(asks!(
            UserName,
            [Some("alice_ü".to_string()), None],
            |reply| {
                ShardMsg::UserName {
                    user_id: 0x2b3c_4d5e_6f70,
                    reply,
                }
            }
        ));
        asked(asks!(
            Titles,
            [(
                vec![(11, "bob".to_string()), (13, "carol".to_string())],
                vec![(0x4000_0000_0000_0007, "crew".to_string())]
            )],
            |reply| ShardMsg::Titles {
                users: vec![11, 12, 13],
                groups: vec![0x4000_0000_0000_0007],
                reply,
            }
        ));
        asked(asks!(IsMember, [true], |reply| ShardMsg::IsMember {
            user_id: 11,
            conversation_id: 0x7fff_0000_1234,
            reply,
        }));
        asked(asks!(
            KeysClaim,
            [
                Ok(KeyBundle {
                    user_id: 11,
                    devices: vec![
                        DeviceKeyBundle {
                            device_id: 2,
                            identity_key: vec![1; 32],
                            signed_pre_key: Some(SignedPreKey {
                                key_id: 5,
                                public_key: vec![2; 32],
                                signature: vec![3; 64],
                            }),
                            one_time_key: Some(OneTimeKey {
                                key_id: 77,
                                public_key: vec![4; 32],
                            }),
                        },
                        DeviceKeyBundle {
                            device_id: 3,
                            identity_key: vec![5; 32],
                            signed_pre_key: None,
                            one_time_key: None,
                        },
                    ],
                }),
                Err(refused(ErrorCode::NotFound)),
            ],
            |reply| ShardMsg::KeysClaim {
                fetch: KeysFetch {
                    user_id: 11,
                    device_id: 2,
                },
                reply,
            }
        ));
        asked(asks!(Joined, [()], |reply| ShardMsg::Joined {
            user_id: 11,
            conversation_id: 0x7fff_0000_1234,
            peer_user_id: 13,
            reply,
        }));
        asked(asks!(
            OpenDirect,
            [Ok(0x7fff_0000_1234), Err(refused(ErrorCode::Unavailable))],
            |reply| ShardMsg::OpenDirect {
                a: 11,
                b: 13,
                reply,
            }
        ));
        asked(asks!(
            Append,
            [Ok(ack()), Err(refused(ErrorCode::TooLarge))],
            |reply| ShardMsg::Append {
                append: AppendMsg {
                    conversation_id: 0x7fff_0000_1234,
                    sender_user_id: 11,
                    sender_device_id: 2,
                    key: *b"0123456789abcdef",
                    kind: MessageKind::Encrypted,
                    body: (0..=255).collect(),
                    media: Some(media()),
                    reply_to_seq: 40,
                },
                reply,
            }
        ));
        for range in [
            ReadRange::After(40),
            ReadRange::Before(90),
            ReadRange::Latest,
        ] {
            asked(asks!(
                Read,
                [
                    Ok(ReadPage {
                        messages: vec![stored(41), system_message(), stored(58)],
                        has_more: true,
                        last_seq: 312,
                    }),
                    Err(refused(ErrorCode::Forbidden)),
                ],
                |reply| ShardMsg::Read {
                    conversation_id: 0x7fff_0000_1234,
                    range,
                    limit: 50,
                    reader: 11,
                    reply,
                }
            ));
        }
        asked(asks!(
            GroupCreate,
            [Ok(group_info()), Err(refused(ErrorCode::GroupFull))],
            |reply| ShardMsg::GroupCreate {
                conversation_id: 0x4000_0000_0000_0007,
                creator: 901,
                name: "Release — crew ✓".into(),
                member_user_ids: vec![902, 903],
                reply,
            }
        ));
        asked(asks!(GroupUpdate, [Ok(group_info())], |reply| {
            ShardMsg::GroupUpdate {
                actor: 901,
                update: message::GroupUpdate {
                    conversation_id: 0x4000_0000_0000_0007,
                    op: GroupOp::SetRole,
                    name: String::new(),
                    user_ids: vec![902],
                    role: GroupRole::Admin,
                },
                reply,
            }
        }));
        asked(asks!(
            GroupInfo,
            [
                Ok((group_info(), vec![receipt(901), receipt(902)])),
                Err(refused(ErrorCode::NotFound)),
            ],
            |reply| ShardMsg::GroupInfo {
                conversation_id: 0x4000_0000_0000_0007,
                reader: 902,
                reply,
            }
        ));
        asked(asks!(
            UnknownUsers,
            [vec![903, 0x1234_5678_9abc], vec![]],
            |reply| {
                ShardMsg::UnknownUsers {
                    user_ids: vec![901, 902, 903, 0x1234_5678_9abc],
                    reply,
                }
            }
        ));
        asked(asks!(GroupJoined, [()], |reply| ShardMsg::GroupJoined {
            conversation_id: 0x4000_0000_0000_0007,
            user_ids: vec![902, 903],
            joined_seq: 14,
            reply,
        }));
        asked(asks!(GroupLeft, [()], |reply| ShardMsg::GroupLeft {
            conversation_id: 0x4000_0000_0000_0007,
            user_ids: vec![903],
            reply,
        }));
        asked(asks!(
            HttpSend,
            [Ok(ack()), Err(refused(ErrorCode::RateLimited))],
            |reply| ShardMsg::HttpSend {
                user_id: 11,
                device_id: 2,
                send: send(),
                reply,
            }
        ));
        for cursor in [Some("8812345.16".to_string()), None] {
            asked(asks!(
                Poll,
                [Ok(poll_answer()), Err(refused(ErrorCode::Conflict))],
                |reply| ShardMsg::Poll {
                    user_id: 11,
                    device_id: 2,
                    cursor: cursor.clone(),
                    wait: Duration::from_millis(29_500),
                    reply,
                }
            ));
        }
        for watch_from in [Some(3), None] {
            asked(asks!(PresenceQuery, [presence(), Vec::new()], |reply| {
                ShardMsg::PresenceQuery {
                    viewer: 11,
                    viewer_conversations: vec![12, 0x7fff_0000_1234],
                    user_ids: vec![902, 903],
                    watch_from,
                    reply,
                }
            }));
        }

        requests.push(check_tells(|| ShardMsg::Push {
            user_id: 13,
            peer_user_id: 11,
            message: stored(58),
            skip_device: 2,
        }));
        requests.push(check_tells(|| ShardMsg::ReceiptPush {
            user_id: 11,
            conversation_id: 0x7fff_0000_1234,
            state: receipt(13),
        }));
        requests.push(check_tells(|| ShardMsg::GroupReceipt {
            conversation_id: 0x4000_0000_0000_0007,
            user_id: 902,
            delivered: 300,
            read: 290,
        }));
        requests.push(check_tells(|| ShardMsg::GroupPush {
            message: system_message(),
            users: Some(vec![902, 903]),
            sender_device: 5,
        }));
        requests.push(check_tells(|| ShardMsg::GroupPush {
            message: stored(313),
            users: None,
            sender_device: 0,
        }));
        requests.push(check_tells(|| ShardMsg::GroupReceipts {
            conversation_id: 0x4000_0000_0000_0007,
            user_ids: vec![901, 903],
            states: vec![receipt(902)],
        }));
        requests.push(check_tells(|| ShardMsg::PresenceUnwatch {
            from: 7,
            user_ids: vec![902, 903],
        }));
        requests.push(check_tells(|| ShardMsg::PresenceChanged {
            entries: presence(),
        }));
        requests.push(check_tells(|| ShardMsg::GroupTyping {
            conversation_id: 0x4000_0000_0000_0007,
            user_id: 902,
            active: true,
        }));
        requests.push(check_tells(|| ShardMsg::TypingPush {
            conversation_id: 0x4000_0000_0000_0007,
            user_id: 902,
            active: false,
            users: vec![901, 903],
        }));

        let mut requests: Vec<&str> = requests.iter().map(String::as_str).collect();
        requests.sort_unstable();
        requests.dedup();
        let mut all_requests = REQUESTS.to_vec();
        all_requests.sort_unstable();
        assert_eq!(requests, all_requests, "every request variant is covered");
        assert_eq!(requests.len(), 29);

        let mut replies: Vec<&str> = replies.iter().map(String::as_str).collect();
        replies.sort_unstable();
        replies.dedup();
        let mut all_replies = REPLIES.to_vec();
        all_replies.sort_unstable();
        assert_eq!(replies, all_replies, "every reply variant is covered");
        assert_eq!(replies.len(), 14);
    }

    #[test]
    fn a_reply_of_the_wrong_kind_is_refused_and_the_caller_sees_unavailable() {
        let (reply, mut asker) = oneshot::channel();
        let (_, pending) = split(ShardMsg::DeviceExists {
            user_id: 11,
            device_id: 2,
            reply,
        })
        .unwrap();
        let pending = pending.unwrap();
        assert_eq!(
            format!("{pending:?}"),
            r#"PendingReply { expects: "Bool", .. }"#
        );
        let err = pending
            .complete(RemoteReply::Name(Some("bob".into())))
            .unwrap_err();
        assert!(
            matches!(
                err,
                RemoteError::ReplyMismatch {
                    expected: "Bool",
                    got: "Name"
                }
            ),
            "{err:?}"
        );
        // The sender was dropped: `Shard::call` maps this to `ApiError::unavailable`.
        assert!(asker.try_recv().is_err());
    }

    #[test]
    fn a_pending_reply_dropped_unanswered_cancels_the_caller() {
        let (reply, mut asker) = oneshot::channel();
        let (_, pending) = split(ShardMsg::UserName { user_id: 11, reply }).unwrap();
        drop(pending);
        assert!(asker.try_recv().is_err());
    }

    #[test]
    fn a_caller_that_stopped_waiting_is_not_an_error() {
        let (reply, asker) = oneshot::channel();
        let (_, pending) = split(ShardMsg::UserName { user_id: 11, reply }).unwrap();
        drop(asker);
        pending.unwrap().complete(RemoteReply::Name(None)).unwrap();
    }

    #[test]
    fn a_handler_that_drops_its_reply_yields_no_answer() {
        let (msg, answer) = rebuild(RemoteRequest::Register {
            user_id: 11,
            username: "bob".into(),
            password_hash: "hash".into(),
        });
        let answer = answer.unwrap();
        drop(msg);
        assert_eq!(block_on(answer), None);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let valid = encode(&RemoteRequest::OpenDirect { a: 11, b: 13 }).unwrap();
        let reply = encode(&RemoteReply::Bool(true)).unwrap();
        let garbage: &[&[u8]] = &[
            &[],
            &[0xc1],
            &[0xff, 0x00, 0x13, 0x37],
            b"{\"OpenDirect\":{\"a\":1,\"b\":2}}",
            &valid[..valid.len() - 1],
            &reply,
            // A map claiming 2^32 - 1 entries, with none.
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
        ];
        for bytes in garbage {
            let err = decode::<RemoteRequest>(bytes).unwrap_err();
            assert!(matches!(err, RemoteError::Decode(_)), "{bytes:?}: {err:?}");
        }
        let err = decode::<RemoteReply>(&valid).unwrap_err();
        assert!(matches!(err, RemoteError::Decode(_)), "{err:?}");
    }

    #[test]
    fn a_handoff_cannot_cross() {
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let msg = ShardMsg::Handoff(Handoff {
            fd,
            transport: Transport::Tcp,
            unread: b"left over".to_vec(),
            user_id: 11,
            device_id: 2,
            hello_request_id: 1,
        });
        let given_back = split(msg).unwrap_err();
        match given_back {
            ShardMsg::Handoff(handoff) => {
                assert_eq!(handoff.unread, b"left over");
                assert_eq!(handoff.user_id, 11);
                assert_eq!(handoff.hello_request_id, 1);
            }
            other => panic!("given back as {other:?}"),
        }
    }

    #[test]
    fn wait_is_carried_in_milliseconds() {
        assert_eq!(millis(Duration::from_micros(1_999)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        let (reply, _asker) = oneshot::channel();
        let (request, _) = split(ShardMsg::Poll {
            user_id: 1,
            device_id: 1,
            cursor: None,
            wait: Duration::from_secs(30),
            reply,
        })
        .unwrap();
        assert!(matches!(
            request,
            RemoteRequest::Poll {
                wait_ms: 30_000,
                ..
            }
        ));
    }

    #[test]
    fn append_bodies_travel_as_bin() {
        let body = vec![0xab; 1000];
        let (reply, _asker) = oneshot::channel();
        let (request, _) = split(ShardMsg::Append {
            append: AppendMsg {
                conversation_id: 1,
                sender_user_id: 2,
                sender_device_id: 3,
                key: [9; 16],
                kind: MessageKind::Chat,
                body,
                media: None,
                reply_to_seq: 0,
            },
            reply,
        })
        .unwrap();
        // bin: one byte a byte; an array of numbers would take two (0xcc 0xab) each.
        assert!(encode(&request).unwrap().len() < 1200);
    }

    #[test]
    fn framed_encoding_is_one_raw_tcp_frame_and_over_limit_leaves_the_buffer_alone() {
        let value = RemoteReply::UserIds(vec![1, 2, 3]);
        let mut out = b"earlier".to_vec();
        encode_framed(&value, &mut out).unwrap();
        let mut decoder = wire::tcp_frame::TcpFrameDecoder::new(wire::limits::FRAME_BYTES_MAX);
        decoder.feed(&out[7..]);
        let frame = decoder.poll().unwrap().unwrap();
        assert_eq!(decode::<RemoteReply>(frame).unwrap(), value);
        assert_eq!(frame, encode(&value).unwrap().as_slice());

        let huge = RemoteReply::UserIds(vec![u64::MAX; wire::limits::FRAME_BYTES_MAX / 8]);
        let before = out.clone();
        assert!(matches!(
            encode_framed(&huge, &mut out),
            Err(RemoteError::Encode(_))
        ));
        assert_eq!(out, before);
    }
}
