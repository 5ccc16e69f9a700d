//! The owned Rust model of protocol v1 (`schema/confab.fbs`), and its FlatBuffers codec.
//!
//! One Rust type per schema type, with the schema's names: [`Frame`] is the envelope,
//! [`Body`] has one variant per union member (same names, same order), each table is a
//! plain struct whose fields are the schema's snake_case field names, and each schema enum
//! is a Rust enum. [`json`](crate::json) maps this same model to `confab.v1.json`.
//!
//! # Mapping rules
//! - `ulong`/`uint`/`ushort`/`bool` fields are plain Rust scalars with the schema defaults.
//! - `string` fields are [`String`]. An absent string decodes as the empty string, and the
//!   encoder omits empty strings: "absent" and "empty" mean the same thing in protocol v1.
//! - `[ubyte]` fields are `Vec<u8>`, `[ulong]` fields `Vec<u64>`; absent == empty, as above.
//! - Optional sub-tables are `Option<T>` (`None` == absent); `(required)` sub-tables and
//!   structs are plain `T` (the verifier rejects a frame without them).
//! - The structs `IdempotencyKey` and `Sha256` are newtypes over `[u8; 16]` / `[u8; 32]`.
//!   Every field of these types is `(required)` (`Send.idempotency_key`,
//!   `MediaRef.sha256`, `MediaPresignRequest.sha256`), so each is a plain value.
//!
//! # Decoding policy
//! [`from_flatbuffers`] (and the zero-copy [`verified_root`]) check, in this order:
//! 1. size: at most [`FRAME_BYTES_MAX`](crate::limits::FRAME_BYTES_MAX), before anything;
//! 2. the file identifier `CFB1`;
//! 3. the FlatBuffers verifier, with [`verifier_options`](crate::limits::verifier_options);
//! 4. the union type: `NONE`, or a member this build does not know (a newer schema), is a
//!    [`WireError::Verify`](crate::WireError::Verify);
//! 5. every named limit of [`crate::limits`], on the verified view, before anything is
//!    copied out of the buffer.
//!
//! A FlatBuffers frame may point many tables at one large vector. The verifier counts a
//! shared object each time it is reached (its "apparent size") and bounds the total by
//! `FRAME_BYTES_MAX`, so what a decoder copies out is bounded by the frame limit too.
//!
//! Then [`from_flatbuffers`] converts the view into owned values. Enum values unknown to
//! this build are handled by direction:
//! - `ErrorCode`: an unknown code (a newer server) decodes as `ErrorCode::Unspecified`; the
//!   frame is still an error answer to the same request, with its `message`.
//! - every other enum (`MessageKind`, `ReceiptKind`, `GroupOp`, `GroupRole`, `AckStatus`,
//!   `PresenceStatus`, `ConversationKind`): [`WireError::Verify`](crate::WireError::Verify).
//!   Guessing would change the meaning of a request (a `Read` receipt is not a `Delivered`
//!   one). A server never sends enum values or union members newer than the
//!   `protocol_version` a client announced in `Hello`. [`verified_root`] leaves enum
//!   fields raw: convert them with
//!   `TryFrom` (e.g. `MessageKind::try_from(send.kind())?`).
//!
//! [`validate`] checks the same named limits on an owned [`Frame`] (the JSON decoder calls
//! it; a server may call it on frames it builds), plus the verifier's table count, so the
//! two subprotocols accept the same frames. Field names in limit errors are `Table.field`,
//! e.g. `Send.body`; the table count is reported as `Frame (tables)`.
//!
//! # Encoding
//! [`to_flatbuffers`] allocates a fresh builder; [`encode`] reuses a caller's builder (the
//! hot path keeps one per connection or per shard); [`build_frame`] writes the root table
//! into a builder without finishing it, for callers that need a size prefix. Encoders do
//! not check limits: a server builds pages that fit, and a peer verifies what it receives.

use serde::{Deserialize, Serialize};

use crate::fb;

mod decode;
mod encode;
#[cfg(test)]
pub(crate) mod strategies;
mod validate;

pub use decode::{from_flatbuffers, system_event_from_flatbuffers, verified_root};
pub use encode::{build_frame, encode, system_event_to_flatbuffers, to_flatbuffers};
pub use validate::{validate, validate_system_event};

// ---------------------------------------------------------------------------------------
// Fixed-size values.

/// Client-chosen key that makes a send idempotent: a retry with the same key returns the
/// original ack and stores nothing new (dedupe window >= 24 h). JSON: 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IdempotencyKey(pub [u8; 16]);

/// SHA-256 digest of a media object (content address). JSON: 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sha256(pub [u8; 32]);

// ---------------------------------------------------------------------------------------
// Enums.

/// Defines a model enum mirroring a generated FlatBuffers enum: same variant names and
/// values, the snake_case JSON name of each, and the conversions both ways.
/// `TryFrom<fb::X>` fails with `WireError::Verify` for values this build does not know;
/// JSON names this build does not know deserialize as `unknown` (`None`: an error).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident: $repr:ty, default $default:ident, unknown $unknown:expr, {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal, $json:literal;)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The JSON names, in schema order.
            pub const NAMES: &'static [&'static str] = &[$($json,)+];

            /// The value on the wire.
            pub fn to_raw(self) -> $repr {
                self as $repr
            }

            /// The variant for a wire value; `None` if this build does not know it.
            pub fn from_raw(raw: $repr) -> Option<Self> {
                match raw {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The JSON name (the schema name in snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $json,)+
                }
            }

            /// The variant for a JSON name; `None` if this build does not know it.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($json => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl From<$name> for fb::$name {
            fn from(value: $name) -> Self {
                fb::$name(value.to_raw())
            }
        }

        impl TryFrom<fb::$name> for $name {
            type Error = crate::WireError;

            fn try_from(value: fb::$name) -> Result<Self, Self::Error> {
                $name::from_raw(value.0).ok_or_else(|| {
                    crate::WireError::Verify(format!(
                        concat!("unknown ", stringify!($name), " value {}"),
                        value.0
                    ))
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct NameVisitor;

                impl serde::de::Visitor<'_> for NameVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " name"))
                    }

                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        let unknown: Option<$name> = $unknown;
                        $name::from_name(v)
                            .or(unknown)
                            .ok_or_else(|| E::unknown_variant(v, $name::NAMES))
                    }
                }

                d.deserialize_str(NameVisitor)
            }
        }
    };
}

wire_enum! {
    /// Why a request failed (`Error.code`). Unknown codes decode as `Unspecified`.
    ErrorCode: u16, default Unspecified, unknown Some(ErrorCode::Unspecified), {
        /// Also what an unknown code (from a newer peer) decodes as, in FlatBuffers and JSON.
        Unspecified = 0, "unspecified";
        /// The frame could not be decoded or failed verification.
        MalformedFrame = 1, "malformed_frame";
        /// A field is out of range or inconsistent (e.g. limit 0, empty body).
        InvalidArgument = 2, "invalid_argument";
        /// No valid session: Hello missing, token invalid or expired.
        Unauthenticated = 3, "unauthenticated";
        /// Authenticated, but not allowed (e.g. not a member, not an admin).
        Forbidden = 4, "forbidden";
        NotFound = 5, "not_found";
        /// A size limit was exceeded (body, group members, key count...).
        TooLarge = 6, "too_large";
        /// Per-connection rate limit hit; see Error.retry_after_ms.
        RateLimited = 7, "rate_limited";
        /// The owner of this user/conversation is not reachable right now; retry later.
        Unavailable = 8, "unavailable";
        /// Conflicting state (e.g. username taken, group already exists).
        Conflict = 9, "conflict";
        /// The group is at its member cap.
        GroupFull = 10, "group_full";
        /// The server is shutting down or draining this connection.
        ShuttingDown = 11, "shutting_down";
        /// The frame kind is valid but not accepted in this direction or state.
        UnexpectedFrame = 12, "unexpected_frame";
        /// The server failed; the request may be retried with the same idempotency key.
        Internal = 13, "internal";
    }
}

wire_enum! {
    /// How a send was stored (`Ack.status`).
    AckStatus: u8, default Stored, unknown None, {
        /// Stored durably now.
        Stored = 0, "stored";
        /// A retry of an earlier send (same idempotency key): the original ack is returned.
        Duplicate = 1, "duplicate";
    }
}

wire_enum! {
    /// What a message body holds.
    MessageKind: u8, default Chat, unknown None, {
        /// A user's chat message; `body` is opaque to the server (text or ciphertext).
        Chat = 0, "chat";
        /// End-to-end encrypted; `body` is ciphertext the server cannot read.
        Encrypted = 1, "encrypted";
        /// A system record (membership change, rename...): `StoredMessage.system` says what
        /// changed, and `body` is empty.
        System = 2, "system";
    }
}

wire_enum! {
    /// Which cursor a receipt moves.
    ReceiptKind: u8, default Delivered, unknown None, {
        Delivered = 0, "delivered";
        Read = 1, "read";
    }
}

wire_enum! {
    /// A user's presence.
    PresenceStatus: u8, default Offline, unknown None, {
        Offline = 0, "offline";
        Online = 1, "online";
        Away = 2, "away";
    }
}

wire_enum! {
    /// Direct (1:1) or group conversation.
    ConversationKind: u8, default Direct, unknown None, {
        Direct = 0, "direct";
        Group = 1, "group";
    }
}

wire_enum! {
    /// A member's role in a group.
    GroupRole: u8, default Member, unknown None, {
        Member = 0, "member";
        Admin = 1, "admin";
        Owner = 2, "owner";
    }
}

wire_enum! {
    /// A change to a group (`GroupUpdate.op`, `SystemEvent.op`).
    GroupOp: u8, default Rename, unknown None, {
        Rename = 0, "rename";
        AddMembers = 1, "add_members";
        RemoveMembers = 2, "remove_members";
        Leave = 3, "leave";
        SetRole = 4, "set_role";
    }
}

// ---------------------------------------------------------------------------------------
// Shared tables.

/// A reference to a media object; messages carry this, never the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRef {
    /// Required.
    pub sha256: Sha256,
    #[serde(default, with = "crate::json::u64_str")]
    pub size: u64,
    #[serde(default)]
    pub content_type: String,
    /// Optional, client-defined (e.g. dimensions, duration, file name); opaque to the server.
    #[serde(default)]
    pub metadata: String,
}

/// One stored message, as delivered, synced and returned by history.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoredMessage {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    /// Gap-free per-conversation sequence, assigned by the conversation's owner; starts at 1.
    #[serde(with = "crate::json::u64_str")]
    pub seq: u64,
    /// Snowflake id: 41-bit ms timestamp, 10-bit node id, 12-bit sequence.
    #[serde(with = "crate::json::u64_str")]
    pub message_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub sender_user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub sender_device_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub timestamp_ms: u64,
    pub kind: MessageKind,
    #[serde(with = "crate::json::base64_bytes")]
    pub body: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    #[serde(with = "crate::json::u64_str")]
    pub reply_to_seq: u64,
    /// For kind System: what changed (membership, rename...), readable by JSON clients too.
    /// `body` is empty for system messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemEvent>,
}

/// Per user (and optionally device) receipt state in one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptState {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    /// 0 = aggregated over the user's devices.
    #[serde(with = "crate::json::u64_str")]
    pub device_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub delivered_seq: u64,
    #[serde(with = "crate::json::u64_str")]
    pub read_seq: u64,
}

/// A user's presence (a FlatBuffers struct: all fields always present).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceEntry {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub last_seen_ms: u64,
    pub status: PresenceStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupMember {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    pub role: GroupRole,
    /// The group sequence at which the member joined; history before it is not visible.
    #[serde(with = "crate::json::u64_str")]
    pub joined_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationSummary {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    pub kind: ConversationKind,
    /// Group name, or the peer's username for direct conversations.
    pub title: String,
    /// The other user of a direct conversation (0 for groups).
    #[serde(with = "crate::json::u64_str")]
    pub peer_user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub last_seq: u64,
    /// This device's cursors.
    #[serde(with = "crate::json::u64_str")]
    pub delivered_seq: u64,
    #[serde(with = "crate::json::u64_str")]
    pub read_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OneTimeKey {
    #[serde(with = "crate::json::u64_str")]
    pub key_id: u64,
    #[serde(with = "crate::json::base64_bytes")]
    pub public_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignedPreKey {
    #[serde(with = "crate::json::u64_str")]
    pub key_id: u64,
    #[serde(with = "crate::json::base64_bytes")]
    pub public_key: Vec<u8>,
    #[serde(with = "crate::json::base64_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceKeyBundle {
    #[serde(with = "crate::json::u64_str")]
    pub device_id: u64,
    #[serde(with = "crate::json::base64_bytes")]
    pub identity_key: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_pre_key: Option<SignedPreKey>,
    /// Claimed atomically for this fetch; absent when the pool is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_key: Option<OneTimeKey>,
}

// ---------------------------------------------------------------------------------------
// Session.

/// Client -> server, first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hello {
    /// Access token from POST /v1/login.
    pub token: String,
    /// Free-form client identification (e.g. "confab-web/0.1").
    pub client: String,
    /// Highest protocol version the client speaks (this schema is 1).
    pub protocol_version: u16,
}

impl Default for Hello {
    fn default() -> Self {
        Hello {
            token: String::new(),
            client: String::new(),
            protocol_version: 1,
        }
    }
}

/// Server -> client, answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Welcome {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub device_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub session_id: u64,
    pub node_id: u16,
    pub protocol_version: u16,
    #[serde(with = "crate::json::u64_str")]
    pub server_time_ms: u64,
    /// The client should send Ping at least this often.
    pub heartbeat_interval_ms: u32,
    /// The largest frame the server accepts on this connection.
    pub max_frame_bytes: u32,
}

impl Default for Welcome {
    fn default() -> Self {
        Welcome {
            user_id: 0,
            device_id: 0,
            session_id: 0,
            node_id: 0,
            protocol_version: 1,
            server_time_ms: 0,
            heartbeat_interval_ms: 0,
            max_frame_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ping {
    #[serde(with = "crate::json::u64_str")]
    pub nonce: u64,
    #[serde(with = "crate::json::u64_str")]
    pub client_time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pong {
    #[serde(with = "crate::json::u64_str")]
    pub nonce: u64,
    #[serde(with = "crate::json::u64_str")]
    pub server_time_ms: u64,
}

/// Server -> client: connect elsewhere (cluster mode: this node does not serve this user).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redirect {
    pub address: String,
    pub node_id: u16,
}

/// Server -> client. `Frame.request_id` names the request that failed (0 if none).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// For RateLimited / Unavailable: when to retry.
    pub retry_after_ms: u32,
}

// ---------------------------------------------------------------------------------------
// Messages.

/// Client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Send {
    #[serde(default, with = "crate::json::u64_str")]
    pub conversation_id: u64,
    /// Required.
    pub idempotency_key: IdempotencyKey,
    #[serde(default)]
    pub kind: MessageKind,
    #[serde(default, with = "crate::json::base64_bytes")]
    pub body: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// Sequence of the message this replies to in the same conversation (0 = none).
    #[serde(default, with = "crate::json::u64_str")]
    pub reply_to_seq: u64,
}

/// Server -> client: the Send with the same request id is durable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ack {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub message_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub seq: u64,
    #[serde(with = "crate::json::u64_str")]
    pub timestamp_ms: u64,
    pub status: AckStatus,
}

/// Server -> client: a new message in a conversation this user belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deliver {
    /// Required.
    pub message: StoredMessage,
}

/// Client -> server: this device has received / read everything up to `up_to_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Receipt {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    pub kind: ReceiptKind,
    #[serde(with = "crate::json::u64_str")]
    pub up_to_seq: u64,
}

/// Server -> client: receipt progress of other members (batched per conversation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptUpdate {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    pub states: Vec<ReceiptState>,
}

/// Client -> server: send me what I missed (the server also does this on connect).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncRequest {
    /// Upper bound on messages in one batch (server clamps to its limit).
    pub limit: u32,
}

/// Server -> client: missed messages in per-conversation sequence order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncBatch {
    pub messages: Vec<StoredMessage>,
    pub receipts: Vec<ReceiptUpdate>,
    /// More batches follow.
    pub has_more: bool,
}

/// Client -> server. Exactly one of before_seq/after_seq may be non-zero; both zero means
/// the newest page.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryRequest {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub before_seq: u64,
    #[serde(with = "crate::json::u64_str")]
    pub after_seq: u64,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryPage {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    /// In ascending sequence order.
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
}

/// Client -> server: the direct conversation with a user, created on first use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenDirect {
    #[serde(with = "crate::json::u64_str")]
    pub peer_user_id: u64,
    /// Alternatively, the peer's username (used when peer_user_id is 0).
    pub peer_username: String,
}

/// Server -> client: answer to OpenDirect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationOpened {
    /// Required.
    pub conversation: ConversationSummary,
}

/// Client -> server.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationListRequest {
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
}

// ---------------------------------------------------------------------------------------
// Presence and typing (ephemeral: never written to the message log).

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSubscribe {
    #[serde(with = "crate::json::u64_vec_str")]
    pub user_ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceUnsubscribe {
    #[serde(with = "crate::json::u64_vec_str")]
    pub user_ids: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceQuery {
    #[serde(with = "crate::json::u64_vec_str")]
    pub user_ids: Vec<u64>,
}

/// Server -> client: answer to PresenceQuery, and pushed changes for subscriptions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceUpdate {
    pub entries: Vec<PresenceEntry>,
}

/// Client -> server: set this user's status (e.g. Away); Online/Offline follow connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSet {
    /// Schema default: `Online`.
    pub status: PresenceStatus,
}

impl Default for PresenceSet {
    fn default() -> Self {
        PresenceSet {
            status: PresenceStatus::Online,
        }
    }
}

/// Both ways: client -> server starts/stops; server -> members pushes it with user_id set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Typing {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    pub active: bool,
}

// ---------------------------------------------------------------------------------------
// Groups.

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
    #[serde(with = "crate::json::u64_vec_str")]
    pub member_user_ids: Vec<u64>,
}

/// Client -> server. Which fields matter depends on `op`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupUpdate {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    pub op: GroupOp,
    pub name: String,
    #[serde(with = "crate::json::u64_vec_str")]
    pub user_ids: Vec<u64>,
    pub role: GroupRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupInfoRequest {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupInfo {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    pub name: String,
    #[serde(with = "crate::json::u64_str")]
    pub created_by: u64,
    pub members: Vec<GroupMember>,
    #[serde(with = "crate::json::u64_str")]
    pub last_seq: u64,
}

/// What changed in a group and who did it: [`StoredMessage::system`] of a System message
/// ([`MessageKind::System`]). Not a union member. For storage outside a frame (e.g. the
/// payload of a log record), [`system_event_to_flatbuffers`] encodes it as a standalone
/// buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemEvent {
    pub op: GroupOp,
    #[serde(with = "crate::json::u64_str")]
    pub actor_user_id: u64,
    #[serde(with = "crate::json::u64_vec_str")]
    pub user_ids: Vec<u64>,
    pub name: String,
    pub role: GroupRole,
}

// ---------------------------------------------------------------------------------------
// Key directory (end-to-end encryption support: the server stores public keys only).

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysUpload {
    #[serde(with = "crate::json::base64_bytes")]
    pub identity_key: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_pre_key: Option<SignedPreKey>,
    pub one_time_keys: Vec<OneTimeKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysUploaded {
    pub one_time_keys_remaining: u32,
}

/// Client -> server: claim a bundle per device of `user_id` (or one device).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysFetch {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    /// 0 = every device of the user.
    #[serde(with = "crate::json::u64_str")]
    pub device_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyBundle {
    #[serde(with = "crate::json::u64_str")]
    pub user_id: u64,
    pub devices: Vec<DeviceKeyBundle>,
}

/// Server -> client: this device's one-time key pool is running low.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysLow {
    pub one_time_keys_remaining: u32,
}

// ---------------------------------------------------------------------------------------
// Media.

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaPresignRequest {
    /// Required.
    pub sha256: Sha256,
    #[serde(default, with = "crate::json::u64_str")]
    pub size: u64,
    #[serde(default)]
    pub content_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaPresignResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// True when the object already exists: nothing to upload.
    pub exists: bool,
    /// Signed, expiring upload URL (empty when `exists`).
    pub upload_url: String,
    #[serde(with = "crate::json::u64_str")]
    pub expires_at_ms: u64,
}

/// Client -> server: a signed, expiring download URL for the media of message `seq` in
/// `conversation_id` (the requester must be able to read that message).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaDownloadRequest {
    #[serde(with = "crate::json::u64_str")]
    pub conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    pub seq: u64,
}

/// Server -> client: answer to [`MediaDownloadRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaDownloadResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRef>,
    /// Signed, expiring download URL; serves HTTP Range requests.
    pub download_url: String,
    #[serde(with = "crate::json::u64_str")]
    pub expires_at_ms: u64,
}

// ---------------------------------------------------------------------------------------
// The envelope.

/// One protocol frame: a WebSocket message, or one raw-TCP length-prefixed frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    /// Chosen by the client per request; echoed on the response(s). 0 on server pushes.
    #[serde(default, with = "crate::json::u64_str")]
    pub request_id: u64,
    pub body: Body,
}

/// The union `Body`: one variant per member, in schema order. JSON: internally tagged,
/// `"type"` is the snake_case member name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Hello(Hello),
    Welcome(Welcome),
    Ping(Ping),
    Pong(Pong),
    Error(Error),
    Redirect(Redirect),
    Send(Send),
    Ack(Ack),
    Deliver(Deliver),
    Receipt(Receipt),
    ReceiptUpdate(ReceiptUpdate),
    SyncRequest(SyncRequest),
    SyncBatch(SyncBatch),
    HistoryRequest(HistoryRequest),
    HistoryPage(HistoryPage),
    OpenDirect(OpenDirect),
    ConversationOpened(ConversationOpened),
    ConversationListRequest(ConversationListRequest),
    ConversationList(ConversationList),
    PresenceSubscribe(PresenceSubscribe),
    PresenceUnsubscribe(PresenceUnsubscribe),
    PresenceQuery(PresenceQuery),
    PresenceUpdate(PresenceUpdate),
    PresenceSet(PresenceSet),
    Typing(Typing),
    GroupCreate(GroupCreate),
    GroupUpdate(GroupUpdate),
    GroupInfoRequest(GroupInfoRequest),
    GroupInfo(GroupInfo),
    KeysUpload(KeysUpload),
    KeysUploaded(KeysUploaded),
    KeysFetch(KeysFetch),
    KeyBundle(KeyBundle),
    KeysLow(KeysLow),
    MediaPresignRequest(MediaPresignRequest),
    MediaPresignResponse(MediaPresignResponse),
    MediaDownloadRequest(MediaDownloadRequest),
    MediaDownloadResponse(MediaDownloadResponse),
}

impl Body {
    /// The member's name as in the JSON `"type"` tag (`"send"`, `"receipt_update"`...);
    /// handy for logs and per-kind metrics.
    pub fn type_name(&self) -> &'static str {
        encode::body_type(self).1
    }

    /// The FlatBuffers union discriminant of this member.
    pub fn fb_type(&self) -> fb::Body {
        encode::body_type(self).0
    }
}

#[cfg(test)]
mod tests;
