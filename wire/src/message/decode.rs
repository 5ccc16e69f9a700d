//! FlatBuffers -> model: verify first, check limits on the view, then copy out.

use flatbuffers::{Follow, ForwardsUOffset, Vector};

use super::validate::{check_system_event_view, check_view, SYSTEM_EVENT_BYTES};
use super::*;
use crate::error::{CapacityError, WireError};
use crate::limits::{self, FRAME_BYTES_MAX};

/// Checks and verifies a FlatBuffers frame without copying it: the size (at most
/// [`FRAME_BYTES_MAX`], checked first), the file identifier `CFB1`, the verifier (with
/// [`limits::verifier_options`]), a known union type, and every named field limit.
///
/// The view is then safe to read; enum fields may still hold values this build does not
/// know (convert them with `TryFrom`, e.g. `MessageKind::try_from(send.kind())?`).
pub fn verified_root(bytes: &[u8]) -> Result<fb::Frame<'_>, WireError> {
    if bytes.len() > FRAME_BYTES_MAX {
        let size = bytes.len() as u64;
        return Err(CapacityError::FrameTooLarge {
            size,
            max: FRAME_BYTES_MAX,
        }
        .into());
    }
    // Checked here: `fb::frame_buffer_has_identifier` asserts (panics) on short input.
    if bytes.get(4..8) != Some(fb::FRAME_IDENTIFIER.as_bytes()) {
        let msg = format!("missing file identifier {:?}", fb::FRAME_IDENTIFIER);
        return Err(WireError::Verify(msg));
    }
    let root = fb::root_as_frame_with_opts(&limits::verifier_options(), bytes)
        .map_err(|e| WireError::Verify(e.to_string()))?;
    check_view(&root)?;
    Ok(root)
}

/// Decodes one FlatBuffers frame into the owned model: [`verified_root`], then a copy.
/// The result passes [`validate`]. Unknown enum values are an error, except in
/// `Error.code`, where they decode as [`ErrorCode::Unspecified`].
pub fn from_flatbuffers(bytes: &[u8]) -> Result<Frame, WireError> {
    let root = verified_root(bytes)?;
    let frame = Frame {
        request_id: root.request_id(),
        body: body(&root)?,
    };
    // The limits were checked on the view, before copying; this is the same check again.
    debug_assert_eq!(validate(&frame), Ok(()));
    Ok(frame)
}

/// Decodes a standalone [`SystemEvent`] buffer (see [`system_event_to_flatbuffers`]):
/// at most [`MESSAGE_BODY_BYTES_MAX`](crate::limits::MESSAGE_BODY_BYTES_MAX) bytes,
/// verified, and within the `SystemEvent` limits (checked on the view, before copying).
pub fn system_event_from_flatbuffers(bytes: &[u8]) -> Result<SystemEvent, WireError> {
    SYSTEM_EVENT_BYTES.bytes(bytes.len())?;
    let view = flatbuffers::root_with_opts::<fb::SystemEvent>(&limits::verifier_options(), bytes)
        .map_err(|e| WireError::Verify(e.to_string()))?;
    check_system_event_view(view)?;
    let event = system_event(view)?;
    debug_assert_eq!(validate_system_event(&event), Ok(()));
    Ok(event)
}

fn missing_body() -> WireError {
    WireError::Verify("union body does not match its type".to_owned())
}

fn body(frame: &fb::Frame<'_>) -> Result<Body, WireError> {
    macro_rules! arm {
        ($variant:ident, $accessor:ident, $convert:ident) => {
            Body::$variant($convert(frame.$accessor().ok_or_else(missing_body)?)?)
        };
    }
    Ok(match frame.body_type() {
        fb::Body::Hello => arm!(Hello, body_as_hello, hello),
        fb::Body::Welcome => arm!(Welcome, body_as_welcome, welcome),
        fb::Body::Ping => arm!(Ping, body_as_ping, ping),
        fb::Body::Pong => arm!(Pong, body_as_pong, pong),
        fb::Body::Error => arm!(Error, body_as_error, error),
        fb::Body::Redirect => arm!(Redirect, body_as_redirect, redirect),
        fb::Body::Send => arm!(Send, body_as_send, send),
        fb::Body::Ack => arm!(Ack, body_as_ack, ack),
        fb::Body::Deliver => arm!(Deliver, body_as_deliver, deliver),
        fb::Body::Receipt => arm!(Receipt, body_as_receipt, receipt),
        fb::Body::ReceiptUpdate => arm!(ReceiptUpdate, body_as_receipt_update, receipt_update),
        fb::Body::SyncRequest => arm!(SyncRequest, body_as_sync_request, sync_request),
        fb::Body::SyncBatch => arm!(SyncBatch, body_as_sync_batch, sync_batch),
        fb::Body::HistoryRequest => arm!(HistoryRequest, body_as_history_request, history_request),
        fb::Body::HistoryPage => arm!(HistoryPage, body_as_history_page, history_page),
        fb::Body::OpenDirect => arm!(OpenDirect, body_as_open_direct, open_direct),
        fb::Body::ConversationOpened => {
            arm!(
                ConversationOpened,
                body_as_conversation_opened,
                conversation_opened
            )
        }
        fb::Body::ConversationListRequest => arm!(
            ConversationListRequest,
            body_as_conversation_list_request,
            conversation_list_request
        ),
        fb::Body::ConversationList => {
            arm!(
                ConversationList,
                body_as_conversation_list,
                conversation_list
            )
        }
        _ => return presence_group_keys_media(frame),
    })
}

/// The second half of [`body`] (split to keep functions short).
fn presence_group_keys_media(frame: &fb::Frame<'_>) -> Result<Body, WireError> {
    macro_rules! arm {
        ($variant:ident, $accessor:ident, $convert:ident) => {
            Body::$variant($convert(frame.$accessor().ok_or_else(missing_body)?)?)
        };
    }
    Ok(match frame.body_type() {
        fb::Body::PresenceSubscribe => {
            arm!(
                PresenceSubscribe,
                body_as_presence_subscribe,
                presence_subscribe
            )
        }
        fb::Body::PresenceUnsubscribe => {
            arm!(
                PresenceUnsubscribe,
                body_as_presence_unsubscribe,
                presence_unsubscribe
            )
        }
        fb::Body::PresenceQuery => arm!(PresenceQuery, body_as_presence_query, presence_query),
        fb::Body::PresenceUpdate => arm!(PresenceUpdate, body_as_presence_update, presence_update),
        fb::Body::PresenceSet => arm!(PresenceSet, body_as_presence_set, presence_set),
        fb::Body::Typing => arm!(Typing, body_as_typing, typing),
        fb::Body::GroupCreate => arm!(GroupCreate, body_as_group_create, group_create),
        fb::Body::GroupUpdate => arm!(GroupUpdate, body_as_group_update, group_update),
        fb::Body::GroupInfoRequest => {
            arm!(
                GroupInfoRequest,
                body_as_group_info_request,
                group_info_request
            )
        }
        fb::Body::GroupInfo => arm!(GroupInfo, body_as_group_info, group_info),
        fb::Body::KeysUpload => arm!(KeysUpload, body_as_keys_upload, keys_upload),
        fb::Body::KeysUploaded => arm!(KeysUploaded, body_as_keys_uploaded, keys_uploaded),
        fb::Body::KeysFetch => arm!(KeysFetch, body_as_keys_fetch, keys_fetch),
        fb::Body::KeyBundle => arm!(KeyBundle, body_as_key_bundle, key_bundle),
        fb::Body::KeysLow => arm!(KeysLow, body_as_keys_low, keys_low),
        fb::Body::MediaPresignRequest => {
            arm!(
                MediaPresignRequest,
                body_as_media_presign_request,
                media_presign_request
            )
        }
        fb::Body::MediaPresignResponse => {
            arm!(
                MediaPresignResponse,
                body_as_media_presign_response,
                media_presign_response
            )
        }
        fb::Body::MediaDownloadRequest => {
            arm!(
                MediaDownloadRequest,
                body_as_media_download_request,
                media_download_request
            )
        }
        fb::Body::MediaDownloadResponse => {
            arm!(
                MediaDownloadResponse,
                body_as_media_download_response,
                media_download_response
            )
        }
        other => return Err(unknown_body(other)),
    })
}

/// The error for a union type this build cannot decode.
pub(super) fn unknown_body(body_type: fb::Body) -> WireError {
    if body_type == fb::Body::NONE {
        WireError::Verify("frame has no body (union type NONE)".to_owned())
    } else {
        WireError::Verify(format!(
            "unknown body type {} (newer protocol than this build)",
            body_type.0
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Leaves.

fn string(s: Option<&str>) -> String {
    s.map(str::to_owned).unwrap_or_default()
}

fn bytes(v: Option<Vector<'_, u8>>) -> Vec<u8> {
    v.map(|v| v.bytes().to_vec()).unwrap_or_default()
}

fn ids(v: Option<Vector<'_, u64>>) -> Vec<u64> {
    v.map(|v| v.iter().collect()).unwrap_or_default()
}

fn list<'a, T: Follow<'a> + 'a, U>(
    v: Option<Vector<'a, ForwardsUOffset<T>>>,
    convert: impl Fn(T::Inner) -> Result<U, WireError>,
) -> Result<Vec<U>, WireError> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => v.iter().map(convert).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Shared tables.

fn media_ref(m: fb::MediaRef<'_>) -> Result<MediaRef, WireError> {
    Ok(MediaRef {
        sha256: Sha256(m.sha256().0),
        size: m.size(),
        content_type: string(m.content_type()),
        metadata: string(m.metadata()),
    })
}

fn stored_message(m: fb::StoredMessage<'_>) -> Result<StoredMessage, WireError> {
    Ok(StoredMessage {
        conversation_id: m.conversation_id(),
        seq: m.seq(),
        message_id: m.message_id(),
        sender_user_id: m.sender_user_id(),
        sender_device_id: m.sender_device_id(),
        timestamp_ms: m.timestamp_ms(),
        kind: m.kind().try_into()?,
        body: bytes(m.body()),
        media: m.media().map(media_ref).transpose()?,
        reply_to_seq: m.reply_to_seq(),
        system: m.system().map(system_event).transpose()?,
    })
}

fn receipt_state(m: fb::ReceiptState<'_>) -> Result<ReceiptState, WireError> {
    Ok(ReceiptState {
        user_id: m.user_id(),
        device_id: m.device_id(),
        delivered_seq: m.delivered_seq(),
        read_seq: m.read_seq(),
    })
}

fn presence_entry(m: &fb::PresenceEntry) -> Result<PresenceEntry, WireError> {
    Ok(PresenceEntry {
        user_id: m.user_id(),
        last_seen_ms: m.last_seen_ms(),
        status: m.status().try_into()?,
    })
}

fn group_member(m: fb::GroupMember<'_>) -> Result<GroupMember, WireError> {
    Ok(GroupMember {
        user_id: m.user_id(),
        role: m.role().try_into()?,
        joined_seq: m.joined_seq(),
    })
}

fn conversation_summary(m: fb::ConversationSummary<'_>) -> Result<ConversationSummary, WireError> {
    Ok(ConversationSummary {
        conversation_id: m.conversation_id(),
        kind: m.kind().try_into()?,
        title: string(m.title()),
        peer_user_id: m.peer_user_id(),
        last_seq: m.last_seq(),
        delivered_seq: m.delivered_seq(),
        read_seq: m.read_seq(),
    })
}

fn one_time_key(m: fb::OneTimeKey<'_>) -> Result<OneTimeKey, WireError> {
    Ok(OneTimeKey {
        key_id: m.key_id(),
        public_key: bytes(m.public_key()),
    })
}

fn signed_pre_key(m: fb::SignedPreKey<'_>) -> Result<SignedPreKey, WireError> {
    Ok(SignedPreKey {
        key_id: m.key_id(),
        public_key: bytes(m.public_key()),
        signature: bytes(m.signature()),
    })
}

fn device_key_bundle(m: fb::DeviceKeyBundle<'_>) -> Result<DeviceKeyBundle, WireError> {
    Ok(DeviceKeyBundle {
        device_id: m.device_id(),
        identity_key: bytes(m.identity_key()),
        signed_pre_key: m.signed_pre_key().map(signed_pre_key).transpose()?,
        one_time_key: m.one_time_key().map(one_time_key).transpose()?,
    })
}

// ---------------------------------------------------------------------------------------
// Session.

fn hello(m: fb::Hello<'_>) -> Result<Hello, WireError> {
    Ok(Hello {
        token: string(m.token()),
        client: string(m.client()),
        protocol_version: m.protocol_version(),
    })
}

fn welcome(m: fb::Welcome<'_>) -> Result<Welcome, WireError> {
    Ok(Welcome {
        user_id: m.user_id(),
        device_id: m.device_id(),
        session_id: m.session_id(),
        node_id: m.node_id(),
        protocol_version: m.protocol_version(),
        server_time_ms: m.server_time_ms(),
        heartbeat_interval_ms: m.heartbeat_interval_ms(),
        max_frame_bytes: m.max_frame_bytes(),
    })
}

fn ping(m: fb::Ping<'_>) -> Result<Ping, WireError> {
    Ok(Ping {
        nonce: m.nonce(),
        client_time_ms: m.client_time_ms(),
    })
}

fn pong(m: fb::Pong<'_>) -> Result<Pong, WireError> {
    Ok(Pong {
        nonce: m.nonce(),
        server_time_ms: m.server_time_ms(),
    })
}

fn redirect(m: fb::Redirect<'_>) -> Result<Redirect, WireError> {
    Ok(Redirect {
        address: string(m.address()),
        node_id: m.node_id(),
    })
}

fn error(m: fb::Error<'_>) -> Result<Error, WireError> {
    Ok(Error {
        // Tolerated: an error from a newer peer is still an error for this request.
        code: ErrorCode::try_from(m.code()).unwrap_or(ErrorCode::Unspecified),
        message: string(m.message()),
        retry_after_ms: m.retry_after_ms(),
    })
}

// ---------------------------------------------------------------------------------------
// Messages.

fn send(m: fb::Send<'_>) -> Result<Send, WireError> {
    Ok(Send {
        conversation_id: m.conversation_id(),
        idempotency_key: IdempotencyKey(m.idempotency_key().0),
        kind: m.kind().try_into()?,
        body: bytes(m.body()),
        media: m.media().map(media_ref).transpose()?,
        reply_to_seq: m.reply_to_seq(),
    })
}

fn ack(m: fb::Ack<'_>) -> Result<Ack, WireError> {
    Ok(Ack {
        conversation_id: m.conversation_id(),
        message_id: m.message_id(),
        seq: m.seq(),
        timestamp_ms: m.timestamp_ms(),
        status: m.status().try_into()?,
    })
}

fn deliver(m: fb::Deliver<'_>) -> Result<Deliver, WireError> {
    Ok(Deliver {
        message: stored_message(m.message())?,
    })
}

fn receipt(m: fb::Receipt<'_>) -> Result<Receipt, WireError> {
    Ok(Receipt {
        conversation_id: m.conversation_id(),
        kind: m.kind().try_into()?,
        up_to_seq: m.up_to_seq(),
    })
}

fn receipt_update(m: fb::ReceiptUpdate<'_>) -> Result<ReceiptUpdate, WireError> {
    Ok(ReceiptUpdate {
        conversation_id: m.conversation_id(),
        states: list(m.states(), receipt_state)?,
    })
}

fn sync_request(m: fb::SyncRequest<'_>) -> Result<SyncRequest, WireError> {
    Ok(SyncRequest { limit: m.limit() })
}

fn sync_batch(m: fb::SyncBatch<'_>) -> Result<SyncBatch, WireError> {
    Ok(SyncBatch {
        messages: list(m.messages(), stored_message)?,
        receipts: list(m.receipts(), receipt_update)?,
        has_more: m.has_more(),
    })
}

fn history_request(m: fb::HistoryRequest<'_>) -> Result<HistoryRequest, WireError> {
    Ok(HistoryRequest {
        conversation_id: m.conversation_id(),
        before_seq: m.before_seq(),
        after_seq: m.after_seq(),
        limit: m.limit(),
    })
}

fn history_page(m: fb::HistoryPage<'_>) -> Result<HistoryPage, WireError> {
    Ok(HistoryPage {
        conversation_id: m.conversation_id(),
        messages: list(m.messages(), stored_message)?,
        has_more: m.has_more(),
    })
}

fn open_direct(m: fb::OpenDirect<'_>) -> Result<OpenDirect, WireError> {
    Ok(OpenDirect {
        peer_user_id: m.peer_user_id(),
        peer_username: string(m.peer_username()),
    })
}

fn conversation_opened(m: fb::ConversationOpened<'_>) -> Result<ConversationOpened, WireError> {
    Ok(ConversationOpened {
        conversation: conversation_summary(m.conversation())?,
    })
}

fn conversation_list_request(
    m: fb::ConversationListRequest<'_>,
) -> Result<ConversationListRequest, WireError> {
    Ok(ConversationListRequest { limit: m.limit() })
}

fn conversation_list(m: fb::ConversationList<'_>) -> Result<ConversationList, WireError> {
    Ok(ConversationList {
        conversations: list(m.conversations(), conversation_summary)?,
    })
}

// ---------------------------------------------------------------------------------------
// Presence and typing.

fn presence_subscribe(m: fb::PresenceSubscribe<'_>) -> Result<PresenceSubscribe, WireError> {
    Ok(PresenceSubscribe {
        user_ids: ids(m.user_ids()),
    })
}

fn presence_unsubscribe(m: fb::PresenceUnsubscribe<'_>) -> Result<PresenceUnsubscribe, WireError> {
    Ok(PresenceUnsubscribe {
        user_ids: ids(m.user_ids()),
    })
}

fn presence_query(m: fb::PresenceQuery<'_>) -> Result<PresenceQuery, WireError> {
    Ok(PresenceQuery {
        user_ids: ids(m.user_ids()),
    })
}

fn presence_update(m: fb::PresenceUpdate<'_>) -> Result<PresenceUpdate, WireError> {
    let entries = match m.entries() {
        None => Vec::new(),
        Some(v) => v.iter().map(presence_entry).collect::<Result<_, _>>()?,
    };
    Ok(PresenceUpdate { entries })
}

fn presence_set(m: fb::PresenceSet<'_>) -> Result<PresenceSet, WireError> {
    Ok(PresenceSet {
        status: m.status().try_into()?,
    })
}

fn typing(m: fb::Typing<'_>) -> Result<Typing, WireError> {
    Ok(Typing {
        conversation_id: m.conversation_id(),
        user_id: m.user_id(),
        active: m.active(),
    })
}

// ---------------------------------------------------------------------------------------
// Groups.

fn group_create(m: fb::GroupCreate<'_>) -> Result<GroupCreate, WireError> {
    Ok(GroupCreate {
        name: string(m.name()),
        member_user_ids: ids(m.member_user_ids()),
    })
}

fn group_update(m: fb::GroupUpdate<'_>) -> Result<GroupUpdate, WireError> {
    Ok(GroupUpdate {
        conversation_id: m.conversation_id(),
        op: m.op().try_into()?,
        name: string(m.name()),
        user_ids: ids(m.user_ids()),
        role: m.role().try_into()?,
    })
}

fn group_info_request(m: fb::GroupInfoRequest<'_>) -> Result<GroupInfoRequest, WireError> {
    Ok(GroupInfoRequest {
        conversation_id: m.conversation_id(),
    })
}

fn group_info(m: fb::GroupInfo<'_>) -> Result<GroupInfo, WireError> {
    Ok(GroupInfo {
        conversation_id: m.conversation_id(),
        name: string(m.name()),
        created_by: m.created_by(),
        members: list(m.members(), group_member)?,
        last_seq: m.last_seq(),
    })
}

fn system_event(m: fb::SystemEvent<'_>) -> Result<SystemEvent, WireError> {
    Ok(SystemEvent {
        op: m.op().try_into()?,
        actor_user_id: m.actor_user_id(),
        user_ids: ids(m.user_ids()),
        name: string(m.name()),
        role: m.role().try_into()?,
    })
}

// ---------------------------------------------------------------------------------------
// Key directory.

fn keys_upload(m: fb::KeysUpload<'_>) -> Result<KeysUpload, WireError> {
    Ok(KeysUpload {
        identity_key: bytes(m.identity_key()),
        signed_pre_key: m.signed_pre_key().map(signed_pre_key).transpose()?,
        one_time_keys: list(m.one_time_keys(), one_time_key)?,
    })
}

fn keys_uploaded(m: fb::KeysUploaded<'_>) -> Result<KeysUploaded, WireError> {
    Ok(KeysUploaded {
        one_time_keys_remaining: m.one_time_keys_remaining(),
    })
}

fn keys_fetch(m: fb::KeysFetch<'_>) -> Result<KeysFetch, WireError> {
    Ok(KeysFetch {
        user_id: m.user_id(),
        device_id: m.device_id(),
    })
}

fn key_bundle(m: fb::KeyBundle<'_>) -> Result<KeyBundle, WireError> {
    Ok(KeyBundle {
        user_id: m.user_id(),
        devices: list(m.devices(), device_key_bundle)?,
    })
}

fn keys_low(m: fb::KeysLow<'_>) -> Result<KeysLow, WireError> {
    Ok(KeysLow {
        one_time_keys_remaining: m.one_time_keys_remaining(),
    })
}

// ---------------------------------------------------------------------------------------
// Media.

fn media_presign_request(m: fb::MediaPresignRequest<'_>) -> Result<MediaPresignRequest, WireError> {
    Ok(MediaPresignRequest {
        sha256: Sha256(m.sha256().0),
        size: m.size(),
        content_type: string(m.content_type()),
    })
}

fn media_presign_response(
    m: fb::MediaPresignResponse<'_>,
) -> Result<MediaPresignResponse, WireError> {
    Ok(MediaPresignResponse {
        media: m.media().map(media_ref).transpose()?,
        exists: m.exists(),
        upload_url: string(m.upload_url()),
        expires_at_ms: m.expires_at_ms(),
    })
}

fn media_download_request(
    m: fb::MediaDownloadRequest<'_>,
) -> Result<MediaDownloadRequest, WireError> {
    Ok(MediaDownloadRequest {
        conversation_id: m.conversation_id(),
        seq: m.seq(),
    })
}

fn media_download_response(
    m: fb::MediaDownloadResponse<'_>,
) -> Result<MediaDownloadResponse, WireError> {
    Ok(MediaDownloadResponse {
        media: m.media().map(media_ref).transpose()?,
        download_url: string(m.download_url()),
        expires_at_ms: m.expires_at_ms(),
    })
}
