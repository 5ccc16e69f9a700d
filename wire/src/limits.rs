//! Every limit of the wire protocol, in one place.
//!
//! Names put the qualifier last (`FRAME_BYTES_MAX`). A server config may lower a limit,
//! never raise it. Relations between limits are checked at compile time below.

/// Largest encoded protocol `Frame` (FlatBuffers bytes or JSON text), either direction.
/// Server pages (history, sync) are built to fit under it.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest message body a client may send (text or ciphertext), in bytes.
pub const MESSAGE_BODY_BYTES_MAX: usize = 64 * 1024;

/// Raw TCP: bytes of the little-endian length prefix in front of every frame.
pub const TCP_LENGTH_PREFIX_BYTES: usize = 4;

/// WebSocket: largest payload of one frame. A message may span several frames.
pub const WS_FRAME_PAYLOAD_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// WebSocket: largest reassembled message. A message carries exactly one protocol frame.
pub const WS_MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// WebSocket: most frames one message may be split into. Bounds the per-frame overhead a
/// peer can make us pay (a 4 MiB message in 1-byte fragments would be 4M frames).
pub const WS_MESSAGE_FRAGMENTS_MAX: usize = 4096;

/// WebSocket: control frames carry at most 125 bytes (RFC 6455 §5.5).
pub const WS_CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// WebSocket: the longest frame header (2 + 8 extended length + 4 mask key).
pub const WS_FRAME_HEADER_BYTES_MAX: usize = 14;

/// Opening handshake: largest HTTP request head (request line + headers) we buffer.
pub const HANDSHAKE_REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Opening handshake: most headers parsed in a request or response.
pub const HANDSHAKE_HEADERS_MAX: usize = 32;

/// Opening handshake: most subprotocols a client may offer.
pub const HANDSHAKE_SUBPROTOCOLS_MAX: usize = 8;

/// FlatBuffers verifier: deepest nesting of tables (Frame > Body > StoredMessage > MediaRef
/// is 4; leave room for evolution).
pub const VERIFIER_DEPTH_MAX: usize = 16;

/// FlatBuffers verifier: most tables in one frame. A full sync batch of
/// `SYNC_BATCH_MESSAGES_MAX` messages with a media ref and a system event each is 3
/// tables per message.
pub const VERIFIER_TABLES_MAX: usize = 4 * SYNC_BATCH_MESSAGES_MAX + 1024;

/// Access tokens are at most this long.
pub const TOKEN_BYTES_MAX: usize = 1024;

/// Free-form client identification string in Hello.
pub const CLIENT_NAME_BYTES_MAX: usize = 128;

/// Usernames (also used to open a direct conversation by name).
pub const USERNAME_BYTES_MAX: usize = 64;

/// Group names.
pub const GROUP_NAME_BYTES_MAX: usize = 256;

/// Most members a group can have (config may lower it; design default).
pub const GROUP_MEMBERS_MAX: usize = 1024;

/// Most user ids in one presence subscribe/unsubscribe/query or group update.
pub const USER_IDS_PER_REQUEST_MAX: usize = GROUP_MEMBERS_MAX;

/// Most messages in one history page.
pub const HISTORY_PAGE_MESSAGES_MAX: usize = 200;

/// Most messages in one sync batch.
pub const SYNC_BATCH_MESSAGES_MAX: usize = 500;

/// Most receipt states in one receipt update (`ReceiptUpdate.states`): one per member of
/// the conversation (per-device states are still bounded by the member cap).
pub const RECEIPT_STATES_PER_UPDATE_MAX: usize = GROUP_MEMBERS_MAX;

/// Most conversations in one conversation list.
pub const CONVERSATION_LIST_MAX: usize = 1000;

/// Most receipt updates in one sync batch (`SyncBatch.receipts`): one per conversation,
/// so as many as a conversation list holds.
pub const SYNC_BATCH_RECEIPT_UPDATES_MAX: usize = CONVERSATION_LIST_MAX;

/// Media: content type string.
pub const CONTENT_TYPE_BYTES_MAX: usize = 128;

/// Media: client-defined metadata string carried with a media reference.
pub const MEDIA_METADATA_BYTES_MAX: usize = 4 * 1024;

/// Error and close reason strings.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// URLs (presigned media URLs, redirect addresses).
pub const URL_BYTES_MAX: usize = 2048;

/// E2EE key directory: one public key or signature.
pub const KEY_BYTES_MAX: usize = 1024;

/// E2EE key directory: one-time keys in one upload.
pub const ONE_TIME_KEYS_PER_UPLOAD_MAX: usize = 100;

/// E2EE key directory: devices in one key bundle.
pub const DEVICES_PER_USER_MAX: usize = 16;

const _: () = assert!(MESSAGE_BODY_BYTES_MAX * 2 < FRAME_BYTES_MAX);
const _: () = assert!(WS_MESSAGE_BYTES_MAX >= FRAME_BYTES_MAX);
const _: () = assert!(WS_FRAME_PAYLOAD_BYTES_MAX <= WS_MESSAGE_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(WS_CONTROL_PAYLOAD_BYTES_MAX == 125);
const _: () = assert!(USER_IDS_PER_REQUEST_MAX >= GROUP_MEMBERS_MAX);
const _: () = assert!(RECEIPT_STATES_PER_UPDATE_MAX >= GROUP_MEMBERS_MAX);
const _: () = assert!(SYNC_BATCH_RECEIPT_UPDATES_MAX >= CONVERSATION_LIST_MAX);
// A sync batch of messages that each carry a media ref and a system event fits the
// verifier's table budget (plus the root and the batch).
const _: () = assert!(3 * SYNC_BATCH_MESSAGES_MAX + 2 <= VERIFIER_TABLES_MAX);

/// Verifier options built from the limits above; every inbound FlatBuffers frame is checked
/// with these before any field is read.
pub fn verifier_options() -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: VERIFIER_DEPTH_MAX,
        max_tables: VERIFIER_TABLES_MAX,
        max_apparent_size: FRAME_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}
