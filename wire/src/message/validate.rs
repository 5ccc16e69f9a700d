//! Named field limits: which limit of [`crate::limits`] bounds which field, checked on the
//! owned model ([`validate`]) and on a verified FlatBuffers view ([`check_view`], before
//! anything is copied out of the buffer). Both walk the same table of [`Limit`]s below.

use flatbuffers::{Follow, ForwardsUOffset, Vector};

use super::decode::unknown_body;
use super::*;
use crate::error::{CapacityError, WireError};
use crate::limits::*;

/// One field's limit: bytes for strings and byte vectors, items for lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub field: &'static str,
    pub max: usize,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Bytes,
    Items,
}

impl Limit {
    pub(super) fn bytes(&self, len: usize) -> Result<(), WireError> {
        debug_assert_eq!(self.unit, Unit::Bytes, "{}", self.field);
        if len > self.max {
            let (field, max) = (self.field, self.max);
            return Err(CapacityError::FieldTooLarge {
                field,
                size: len,
                max,
            }
            .into());
        }
        Ok(())
    }

    pub(super) fn items(&self, count: usize) -> Result<(), WireError> {
        debug_assert_eq!(self.unit, Unit::Items, "{}", self.field);
        if count > self.max {
            let (field, max) = (self.field, self.max);
            return Err(CapacityError::TooManyItems { field, count, max }.into());
        }
        Ok(())
    }
}

macro_rules! limits {
    ($($name:ident = $field:literal, $max:expr, $unit:ident;)+) => {
        $(pub(crate) const $name: Limit = Limit { field: $field, max: $max, unit: Unit::$unit };)+
        /// Every field limit, for tests.
        #[cfg(test)]
        pub(crate) const ALL: &[Limit] = &[$($name,)+];
    };
}

limits! {
    HELLO_TOKEN = "Hello.token", TOKEN_BYTES_MAX, Bytes;
    HELLO_CLIENT = "Hello.client", CLIENT_NAME_BYTES_MAX, Bytes;
    REDIRECT_ADDRESS = "Redirect.address", URL_BYTES_MAX, Bytes;
    ERROR_MESSAGE = "Error.message", ERROR_MESSAGE_BYTES_MAX, Bytes;
    SEND_BODY = "Send.body", MESSAGE_BODY_BYTES_MAX, Bytes;
    STORED_MESSAGE_BODY = "StoredMessage.body", MESSAGE_BODY_BYTES_MAX, Bytes;
    MEDIA_REF_CONTENT_TYPE = "MediaRef.content_type", CONTENT_TYPE_BYTES_MAX, Bytes;
    MEDIA_REF_METADATA = "MediaRef.metadata", MEDIA_METADATA_BYTES_MAX, Bytes;
    RECEIPT_UPDATE_STATES = "ReceiptUpdate.states", RECEIPT_STATES_PER_UPDATE_MAX, Items;
    SYNC_BATCH_MESSAGES = "SyncBatch.messages", SYNC_BATCH_MESSAGES_MAX, Items;
    SYNC_BATCH_RECEIPTS = "SyncBatch.receipts", SYNC_BATCH_RECEIPT_UPDATES_MAX, Items;
    HISTORY_PAGE_MESSAGES = "HistoryPage.messages", HISTORY_PAGE_MESSAGES_MAX, Items;
    OPEN_DIRECT_PEER_USERNAME = "OpenDirect.peer_username", USERNAME_BYTES_MAX, Bytes;
    // A group name or a username: the larger of the two limits (asserted below).
    CONVERSATION_SUMMARY_TITLE = "ConversationSummary.title", GROUP_NAME_BYTES_MAX, Bytes;
    CONVERSATION_LIST_CONVERSATIONS =
        "ConversationList.conversations", CONVERSATION_LIST_MAX, Items;
    PRESENCE_SUBSCRIBE_USER_IDS = "PresenceSubscribe.user_ids", USER_IDS_PER_REQUEST_MAX, Items;
    PRESENCE_UNSUBSCRIBE_USER_IDS =
        "PresenceUnsubscribe.user_ids", USER_IDS_PER_REQUEST_MAX, Items;
    PRESENCE_QUERY_USER_IDS = "PresenceQuery.user_ids", USER_IDS_PER_REQUEST_MAX, Items;
    PRESENCE_UPDATE_ENTRIES = "PresenceUpdate.entries", USER_IDS_PER_REQUEST_MAX, Items;
    GROUP_CREATE_NAME = "GroupCreate.name", GROUP_NAME_BYTES_MAX, Bytes;
    GROUP_CREATE_MEMBER_USER_IDS = "GroupCreate.member_user_ids", GROUP_MEMBERS_MAX, Items;
    GROUP_UPDATE_NAME = "GroupUpdate.name", GROUP_NAME_BYTES_MAX, Bytes;
    GROUP_UPDATE_USER_IDS = "GroupUpdate.user_ids", USER_IDS_PER_REQUEST_MAX, Items;
    GROUP_INFO_NAME = "GroupInfo.name", GROUP_NAME_BYTES_MAX, Bytes;
    GROUP_INFO_MEMBERS = "GroupInfo.members", GROUP_MEMBERS_MAX, Items;
    SYSTEM_EVENT_NAME = "SystemEvent.name", GROUP_NAME_BYTES_MAX, Bytes;
    SYSTEM_EVENT_USER_IDS = "SystemEvent.user_ids", USER_IDS_PER_REQUEST_MAX, Items;
    KEYS_UPLOAD_IDENTITY_KEY = "KeysUpload.identity_key", KEY_BYTES_MAX, Bytes;
    KEYS_UPLOAD_ONE_TIME_KEYS = "KeysUpload.one_time_keys", ONE_TIME_KEYS_PER_UPLOAD_MAX, Items;
    ONE_TIME_KEY_PUBLIC_KEY = "OneTimeKey.public_key", KEY_BYTES_MAX, Bytes;
    SIGNED_PRE_KEY_PUBLIC_KEY = "SignedPreKey.public_key", KEY_BYTES_MAX, Bytes;
    SIGNED_PRE_KEY_SIGNATURE = "SignedPreKey.signature", KEY_BYTES_MAX, Bytes;
    DEVICE_KEY_BUNDLE_IDENTITY_KEY = "DeviceKeyBundle.identity_key", KEY_BYTES_MAX, Bytes;
    KEY_BUNDLE_DEVICES = "KeyBundle.devices", DEVICES_PER_USER_MAX, Items;
    MEDIA_PRESIGN_REQUEST_CONTENT_TYPE =
        "MediaPresignRequest.content_type", CONTENT_TYPE_BYTES_MAX, Bytes;
    MEDIA_PRESIGN_RESPONSE_UPLOAD_URL = "MediaPresignResponse.upload_url", URL_BYTES_MAX, Bytes;
    MEDIA_DOWNLOAD_RESPONSE_DOWNLOAD_URL =
        "MediaDownloadResponse.download_url", URL_BYTES_MAX, Bytes;
}

/// A standalone `SystemEvent` buffer ([`system_event_from_flatbuffers`]) is at most as
/// large as a message body; this one limit is not a table field.
pub(super) const SYSTEM_EVENT_BYTES: Limit = Limit {
    field: "SystemEvent (bytes)",
    max: MESSAGE_BODY_BYTES_MAX,
    unit: Unit::Bytes,
};

/// Tables in one frame, counted as the FlatBuffers verifier counts them (the root, the
/// body, every nested table). The field limits alone allow a `SyncBatch` of 1000 receipt
/// updates of 1024 states each; this keeps every valid frame one the verifier accepts.
pub(crate) const FRAME_TABLES: Limit = Limit {
    field: "Frame (tables)",
    max: VERIFIER_TABLES_MAX,
    unit: Unit::Items,
};

// A conversation title is a group name or a username.
const _: () = assert!(GROUP_NAME_BYTES_MAX >= USERNAME_BYTES_MAX);
// The largest SystemEvent (every id, the longest name, table overhead) fits a standalone
// buffer of SYSTEM_EVENT_BYTES.
const _: () =
    assert!(USER_IDS_PER_REQUEST_MAX * 8 + GROUP_NAME_BYTES_MAX + 128 <= MESSAGE_BODY_BYTES_MAX);

// ---------------------------------------------------------------------------------------
// The owned model.

/// Checks every string, byte vector and list of `frame` against its named limit; the error
/// names the field (`Send.body`). Also checks the number of tables against the verifier's
/// limit (field `Frame (tables)`), so a frame that passes encodes to one the FlatBuffers
/// verifier accepts. Decoded frames (FlatBuffers or JSON) always pass.
pub fn validate(frame: &Frame) -> Result<(), WireError> {
    fields(&frame.body)?;
    FRAME_TABLES.items(1 + body_tables(&frame.body))
}

fn fields(body: &Body) -> Result<(), WireError> {
    match body {
        Body::Hello(m) => {
            HELLO_TOKEN.bytes(m.token.len())?;
            HELLO_CLIENT.bytes(m.client.len())
        }
        Body::Error(m) => ERROR_MESSAGE.bytes(m.message.len()),
        Body::Redirect(m) => REDIRECT_ADDRESS.bytes(m.address.len()),
        Body::Send(m) => {
            SEND_BODY.bytes(m.body.len())?;
            m.media.as_ref().map_or(Ok(()), media_ref)
        }
        Body::Deliver(m) => stored_message(&m.message),
        Body::ReceiptUpdate(m) => receipt_update(m),
        Body::SyncBatch(m) => sync_batch(m),
        Body::HistoryPage(m) => {
            HISTORY_PAGE_MESSAGES.items(m.messages.len())?;
            m.messages.iter().try_for_each(stored_message)
        }
        Body::OpenDirect(m) => OPEN_DIRECT_PEER_USERNAME.bytes(m.peer_username.len()),
        Body::ConversationOpened(m) => conversation_summary(&m.conversation),
        Body::ConversationList(m) => {
            CONVERSATION_LIST_CONVERSATIONS.items(m.conversations.len())?;
            m.conversations.iter().try_for_each(conversation_summary)
        }
        Body::PresenceSubscribe(m) => PRESENCE_SUBSCRIBE_USER_IDS.items(m.user_ids.len()),
        Body::PresenceUnsubscribe(m) => PRESENCE_UNSUBSCRIBE_USER_IDS.items(m.user_ids.len()),
        Body::PresenceQuery(m) => PRESENCE_QUERY_USER_IDS.items(m.user_ids.len()),
        Body::PresenceUpdate(m) => PRESENCE_UPDATE_ENTRIES.items(m.entries.len()),
        Body::GroupCreate(m) => {
            GROUP_CREATE_NAME.bytes(m.name.len())?;
            GROUP_CREATE_MEMBER_USER_IDS.items(m.member_user_ids.len())
        }
        Body::GroupUpdate(m) => {
            GROUP_UPDATE_NAME.bytes(m.name.len())?;
            GROUP_UPDATE_USER_IDS.items(m.user_ids.len())
        }
        Body::GroupInfo(m) => {
            GROUP_INFO_NAME.bytes(m.name.len())?;
            GROUP_INFO_MEMBERS.items(m.members.len())
        }
        Body::KeysUpload(m) => keys_upload(m),
        Body::KeyBundle(m) => key_bundle(m),
        Body::MediaPresignRequest(m) => {
            MEDIA_PRESIGN_REQUEST_CONTENT_TYPE.bytes(m.content_type.len())
        }
        Body::MediaPresignResponse(m) => {
            MEDIA_PRESIGN_RESPONSE_UPLOAD_URL.bytes(m.upload_url.len())?;
            m.media.as_ref().map_or(Ok(()), media_ref)
        }
        Body::MediaDownloadResponse(m) => {
            MEDIA_DOWNLOAD_RESPONSE_DOWNLOAD_URL.bytes(m.download_url.len())?;
            m.media.as_ref().map_or(Ok(()), media_ref)
        }
        // Scalars only.
        Body::Welcome(_)
        | Body::Ping(_)
        | Body::Pong(_)
        | Body::Ack(_)
        | Body::Receipt(_)
        | Body::SyncRequest(_)
        | Body::HistoryRequest(_)
        | Body::ConversationListRequest(_)
        | Body::PresenceSet(_)
        | Body::Typing(_)
        | Body::GroupInfoRequest(_)
        | Body::KeysUploaded(_)
        | Body::KeysFetch(_)
        | Body::KeysLow(_)
        | Body::MediaDownloadRequest(_) => Ok(()),
    }
}

/// The number of tables in `body` (itself included), as the verifier counts them.
fn body_tables(body: &Body) -> usize {
    let media = |m: &Option<MediaRef>| usize::from(m.is_some());
    let stored = |m: &StoredMessage| 1 + media(&m.media) + usize::from(m.system.is_some());
    let receipts = |r: &ReceiptUpdate| 1 + r.states.len();
    let spk = |k: &Option<SignedPreKey>| usize::from(k.is_some());
    let nested = match body {
        Body::Send(m) => media(&m.media),
        Body::Deliver(m) => stored(&m.message),
        Body::ReceiptUpdate(m) => m.states.len(),
        Body::SyncBatch(m) => {
            m.messages.iter().map(stored).sum::<usize>()
                + m.receipts.iter().map(receipts).sum::<usize>()
        }
        Body::HistoryPage(m) => m.messages.iter().map(stored).sum(),
        Body::ConversationOpened(_) => 1,
        Body::ConversationList(m) => m.conversations.len(),
        Body::GroupInfo(m) => m.members.len(),
        Body::KeysUpload(m) => spk(&m.signed_pre_key) + m.one_time_keys.len(),
        Body::KeyBundle(m) => m
            .devices
            .iter()
            .map(|d| 1 + spk(&d.signed_pre_key) + usize::from(d.one_time_key.is_some()))
            .sum(),
        Body::MediaPresignResponse(m) => media(&m.media),
        Body::MediaDownloadResponse(m) => media(&m.media),
        _ => 0,
    };
    1 + nested
}

/// Checks a [`SystemEvent`] against its named limits (also checked by [`validate`] on
/// `StoredMessage.system`).
pub fn validate_system_event(event: &SystemEvent) -> Result<(), WireError> {
    SYSTEM_EVENT_NAME.bytes(event.name.len())?;
    SYSTEM_EVENT_USER_IDS.items(event.user_ids.len())
}

fn media_ref(m: &MediaRef) -> Result<(), WireError> {
    MEDIA_REF_CONTENT_TYPE.bytes(m.content_type.len())?;
    MEDIA_REF_METADATA.bytes(m.metadata.len())
}

fn stored_message(m: &StoredMessage) -> Result<(), WireError> {
    STORED_MESSAGE_BODY.bytes(m.body.len())?;
    m.media.as_ref().map_or(Ok(()), media_ref)?;
    m.system.as_ref().map_or(Ok(()), validate_system_event)
}

fn receipt_update(m: &ReceiptUpdate) -> Result<(), WireError> {
    RECEIPT_UPDATE_STATES.items(m.states.len())
}

fn sync_batch(m: &SyncBatch) -> Result<(), WireError> {
    SYNC_BATCH_MESSAGES.items(m.messages.len())?;
    SYNC_BATCH_RECEIPTS.items(m.receipts.len())?;
    m.messages.iter().try_for_each(stored_message)?;
    m.receipts.iter().try_for_each(receipt_update)
}

fn conversation_summary(m: &ConversationSummary) -> Result<(), WireError> {
    CONVERSATION_SUMMARY_TITLE.bytes(m.title.len())
}

fn one_time_key(m: &OneTimeKey) -> Result<(), WireError> {
    ONE_TIME_KEY_PUBLIC_KEY.bytes(m.public_key.len())
}

fn signed_pre_key(m: &SignedPreKey) -> Result<(), WireError> {
    SIGNED_PRE_KEY_PUBLIC_KEY.bytes(m.public_key.len())?;
    SIGNED_PRE_KEY_SIGNATURE.bytes(m.signature.len())
}

fn keys_upload(m: &KeysUpload) -> Result<(), WireError> {
    KEYS_UPLOAD_IDENTITY_KEY.bytes(m.identity_key.len())?;
    KEYS_UPLOAD_ONE_TIME_KEYS.items(m.one_time_keys.len())?;
    m.signed_pre_key.as_ref().map_or(Ok(()), signed_pre_key)?;
    m.one_time_keys.iter().try_for_each(one_time_key)
}

fn key_bundle(m: &KeyBundle) -> Result<(), WireError> {
    KEY_BUNDLE_DEVICES.items(m.devices.len())?;
    m.devices.iter().try_for_each(|d| {
        DEVICE_KEY_BUNDLE_IDENTITY_KEY.bytes(d.identity_key.len())?;
        d.signed_pre_key.as_ref().map_or(Ok(()), signed_pre_key)?;
        d.one_time_key.as_ref().map_or(Ok(()), one_time_key)
    })
}

// ---------------------------------------------------------------------------------------
// The verified view: the same checks, reading lengths only.

/// Checks the union type and every named limit of a verified frame, without copying.
pub(super) fn check_view(frame: &fb::Frame<'_>) -> Result<(), WireError> {
    match frame.body_type() {
        fb::Body::Hello => with(frame.body_as_hello(), |m| {
            HELLO_TOKEN.bytes(str_len(m.token()))?;
            HELLO_CLIENT.bytes(str_len(m.client()))
        }),
        fb::Body::Error => with(frame.body_as_error(), |m| {
            ERROR_MESSAGE.bytes(str_len(m.message()))
        }),
        fb::Body::Redirect => with(frame.body_as_redirect(), |m| {
            REDIRECT_ADDRESS.bytes(str_len(m.address()))
        }),
        fb::Body::Send => with(frame.body_as_send(), |m| {
            SEND_BODY.bytes(vec_len(m.body()))?;
            with(m.media(), view_media_ref)
        }),
        fb::Body::Deliver => with(frame.body_as_deliver(), |m| {
            view_stored_message(m.message())
        }),
        fb::Body::ReceiptUpdate => with(frame.body_as_receipt_update(), view_receipt_update),
        fb::Body::SyncBatch => with(frame.body_as_sync_batch(), view_sync_batch),
        fb::Body::HistoryPage => with(frame.body_as_history_page(), |m| {
            HISTORY_PAGE_MESSAGES.items(vec_len(m.messages()))?;
            each(m.messages(), view_stored_message)
        }),
        fb::Body::OpenDirect => with(frame.body_as_open_direct(), |m| {
            OPEN_DIRECT_PEER_USERNAME.bytes(str_len(m.peer_username()))
        }),
        fb::Body::ConversationOpened => with(frame.body_as_conversation_opened(), |m| {
            view_conversation_summary(m.conversation())
        }),
        fb::Body::ConversationList => with(frame.body_as_conversation_list(), |m| {
            CONVERSATION_LIST_CONVERSATIONS.items(vec_len(m.conversations()))?;
            each(m.conversations(), view_conversation_summary)
        }),
        fb::Body::Welcome
        | fb::Body::Ping
        | fb::Body::Pong
        | fb::Body::Ack
        | fb::Body::Receipt
        | fb::Body::SyncRequest
        | fb::Body::HistoryRequest
        | fb::Body::ConversationListRequest => Ok(()),
        _ => check_view_presence_group_keys_media(frame),
    }
}

/// The second half of [`check_view`] (split to keep functions short).
fn check_view_presence_group_keys_media(frame: &fb::Frame<'_>) -> Result<(), WireError> {
    match frame.body_type() {
        fb::Body::PresenceSubscribe => with(frame.body_as_presence_subscribe(), |m| {
            PRESENCE_SUBSCRIBE_USER_IDS.items(vec_len(m.user_ids()))
        }),
        fb::Body::PresenceUnsubscribe => with(frame.body_as_presence_unsubscribe(), |m| {
            PRESENCE_UNSUBSCRIBE_USER_IDS.items(vec_len(m.user_ids()))
        }),
        fb::Body::PresenceQuery => with(frame.body_as_presence_query(), |m| {
            PRESENCE_QUERY_USER_IDS.items(vec_len(m.user_ids()))
        }),
        fb::Body::PresenceUpdate => with(frame.body_as_presence_update(), |m| {
            PRESENCE_UPDATE_ENTRIES.items(vec_len(m.entries()))
        }),
        fb::Body::GroupCreate => with(frame.body_as_group_create(), |m| {
            GROUP_CREATE_NAME.bytes(str_len(m.name()))?;
            GROUP_CREATE_MEMBER_USER_IDS.items(vec_len(m.member_user_ids()))
        }),
        fb::Body::GroupUpdate => with(frame.body_as_group_update(), |m| {
            GROUP_UPDATE_NAME.bytes(str_len(m.name()))?;
            GROUP_UPDATE_USER_IDS.items(vec_len(m.user_ids()))
        }),
        fb::Body::GroupInfo => with(frame.body_as_group_info(), |m| {
            GROUP_INFO_NAME.bytes(str_len(m.name()))?;
            GROUP_INFO_MEMBERS.items(vec_len(m.members()))
        }),
        fb::Body::KeysUpload => with(frame.body_as_keys_upload(), view_keys_upload),
        fb::Body::KeyBundle => with(frame.body_as_key_bundle(), view_key_bundle),
        fb::Body::MediaPresignRequest => with(frame.body_as_media_presign_request(), |m| {
            MEDIA_PRESIGN_REQUEST_CONTENT_TYPE.bytes(str_len(m.content_type()))
        }),
        fb::Body::MediaPresignResponse => with(frame.body_as_media_presign_response(), |m| {
            MEDIA_PRESIGN_RESPONSE_UPLOAD_URL.bytes(str_len(m.upload_url()))?;
            with(m.media(), view_media_ref)
        }),
        fb::Body::MediaDownloadResponse => with(frame.body_as_media_download_response(), |m| {
            MEDIA_DOWNLOAD_RESPONSE_DOWNLOAD_URL.bytes(str_len(m.download_url()))?;
            with(m.media(), view_media_ref)
        }),
        fb::Body::PresenceSet
        | fb::Body::Typing
        | fb::Body::GroupInfoRequest
        | fb::Body::KeysUploaded
        | fb::Body::KeysFetch
        | fb::Body::KeysLow
        | fb::Body::MediaDownloadRequest => Ok(()),
        other => Err(unknown_body(other)),
    }
}

/// Runs `check` on a present table; an absent one has nothing to check.
fn with<T>(
    table: Option<T>,
    check: impl FnOnce(T) -> Result<(), WireError>,
) -> Result<(), WireError> {
    table.map_or(Ok(()), check)
}

fn each<'a, T: Follow<'a> + 'a>(
    list: Option<Vector<'a, ForwardsUOffset<T>>>,
    check: impl Fn(T::Inner) -> Result<(), WireError>,
) -> Result<(), WireError> {
    list.map_or(Ok(()), |list| list.iter().try_for_each(check))
}

fn str_len(s: Option<&str>) -> usize {
    s.map_or(0, str::len)
}

fn vec_len<T>(v: Option<Vector<'_, T>>) -> usize {
    v.map_or(0, |v| v.len())
}

fn view_media_ref(m: fb::MediaRef<'_>) -> Result<(), WireError> {
    MEDIA_REF_CONTENT_TYPE.bytes(str_len(m.content_type()))?;
    MEDIA_REF_METADATA.bytes(str_len(m.metadata()))
}

fn view_stored_message(m: fb::StoredMessage<'_>) -> Result<(), WireError> {
    STORED_MESSAGE_BODY.bytes(vec_len(m.body()))?;
    with(m.media(), view_media_ref)?;
    with(m.system(), check_system_event_view)
}

/// The limits of [`validate_system_event`], on a verified view.
pub(super) fn check_system_event_view(m: fb::SystemEvent<'_>) -> Result<(), WireError> {
    SYSTEM_EVENT_NAME.bytes(str_len(m.name()))?;
    SYSTEM_EVENT_USER_IDS.items(vec_len(m.user_ids()))
}

fn view_receipt_update(m: fb::ReceiptUpdate<'_>) -> Result<(), WireError> {
    RECEIPT_UPDATE_STATES.items(vec_len(m.states()))
}

fn view_sync_batch(m: fb::SyncBatch<'_>) -> Result<(), WireError> {
    SYNC_BATCH_MESSAGES.items(vec_len(m.messages()))?;
    SYNC_BATCH_RECEIPTS.items(vec_len(m.receipts()))?;
    each(m.messages(), view_stored_message)?;
    each(m.receipts(), view_receipt_update)
}

fn view_conversation_summary(m: fb::ConversationSummary<'_>) -> Result<(), WireError> {
    CONVERSATION_SUMMARY_TITLE.bytes(str_len(m.title()))
}

fn view_one_time_key(m: fb::OneTimeKey<'_>) -> Result<(), WireError> {
    ONE_TIME_KEY_PUBLIC_KEY.bytes(vec_len(m.public_key()))
}

fn view_signed_pre_key(m: fb::SignedPreKey<'_>) -> Result<(), WireError> {
    SIGNED_PRE_KEY_PUBLIC_KEY.bytes(vec_len(m.public_key()))?;
    SIGNED_PRE_KEY_SIGNATURE.bytes(vec_len(m.signature()))
}

fn view_keys_upload(m: fb::KeysUpload<'_>) -> Result<(), WireError> {
    KEYS_UPLOAD_IDENTITY_KEY.bytes(vec_len(m.identity_key()))?;
    KEYS_UPLOAD_ONE_TIME_KEYS.items(vec_len(m.one_time_keys()))?;
    with(m.signed_pre_key(), view_signed_pre_key)?;
    each(m.one_time_keys(), view_one_time_key)
}

fn view_key_bundle(m: fb::KeyBundle<'_>) -> Result<(), WireError> {
    KEY_BUNDLE_DEVICES.items(vec_len(m.devices()))?;
    each(m.devices(), |d| {
        DEVICE_KEY_BUNDLE_IDENTITY_KEY.bytes(vec_len(d.identity_key()))?;
        with(d.signed_pre_key(), view_signed_pre_key)?;
        with(d.one_time_key(), view_one_time_key)
    })
}
