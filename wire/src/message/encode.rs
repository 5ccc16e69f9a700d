//! Model -> FlatBuffers. One small builder function per table.
//!
//! Grammar: `Frame { request_id, body_type, body }`, file identifier `CFB1`. Empty strings,
//! byte vectors and lists are omitted (absent == empty); scalars equal to their schema
//! default are omitted by the builder (`force_defaults` off). Encoding is deterministic:
//! the same [`Frame`] always gives the same bytes.

use flatbuffers::{Allocator, FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector};
use flatbuffers::{DefaultAllocator, WIPOffset};

use super::*;

type Fbb<'a, A> = FlatBufferBuilder<'a, A>;
type Union = WIPOffset<UnionWIPOffset>;
type TableVector<'a, T> = Option<WIPOffset<Vector<'a, ForwardsUOffset<T>>>>;

/// Encodes `frame` into a new buffer.
pub fn to_flatbuffers(frame: &Frame) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::<DefaultAllocator>::new();
    encode(frame, &mut fbb).to_vec()
}

/// Encodes `frame` with a caller-owned builder, which is reset first, and returns the
/// finished bytes (valid until the builder is used again). Reusing one builder per
/// connection or shard keeps the hot path free of builder allocations.
pub fn encode<'b, 'a: 'b, A: Allocator + 'a>(frame: &Frame, fbb: &'b mut Fbb<'a, A>) -> &'b [u8] {
    fbb.reset();
    let root = build_frame(fbb, frame);
    fb::finish_frame_buffer(fbb, root);
    fbb.finished_data()
}

/// Writes `frame` as a root table into `fbb` without resetting or finishing the builder;
/// finish with `fb::finish_frame_buffer` or `fb::finish_size_prefixed_frame_buffer`.
pub fn build_frame<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    frame: &Frame,
) -> WIPOffset<fb::Frame<'a>> {
    let body = build_body(fbb, &frame.body);
    let args = fb::FrameArgs {
        request_id: frame.request_id,
        body_type: frame.body.fb_type(),
        body: Some(body),
    };
    fb::Frame::create(fbb, &args)
}

/// Encodes a [`SystemEvent`] as a standalone FlatBuffers buffer (root `SystemEvent`, no
/// file identifier), for storage outside a frame, e.g. the payload of a system record in
/// the message log. On the wire it travels inside a frame, as `StoredMessage.system`.
pub fn system_event_to_flatbuffers(event: &SystemEvent) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::<DefaultAllocator>::new();
    let root = system_event(&mut fbb, event);
    fbb.finish(root, None);
    fbb.finished_data().to_vec()
}

/// The union discriminant and JSON name of a body.
pub(super) fn body_type(body: &Body) -> (fb::Body, &'static str) {
    match body {
        Body::Hello(_) => (fb::Body::Hello, "hello"),
        Body::Welcome(_) => (fb::Body::Welcome, "welcome"),
        Body::Ping(_) => (fb::Body::Ping, "ping"),
        Body::Pong(_) => (fb::Body::Pong, "pong"),
        Body::Error(_) => (fb::Body::Error, "error"),
        Body::Redirect(_) => (fb::Body::Redirect, "redirect"),
        Body::Send(_) => (fb::Body::Send, "send"),
        Body::Ack(_) => (fb::Body::Ack, "ack"),
        Body::Deliver(_) => (fb::Body::Deliver, "deliver"),
        Body::Receipt(_) => (fb::Body::Receipt, "receipt"),
        Body::ReceiptUpdate(_) => (fb::Body::ReceiptUpdate, "receipt_update"),
        Body::SyncRequest(_) => (fb::Body::SyncRequest, "sync_request"),
        Body::SyncBatch(_) => (fb::Body::SyncBatch, "sync_batch"),
        Body::HistoryRequest(_) => (fb::Body::HistoryRequest, "history_request"),
        Body::HistoryPage(_) => (fb::Body::HistoryPage, "history_page"),
        Body::OpenDirect(_) => (fb::Body::OpenDirect, "open_direct"),
        Body::ConversationOpened(_) => (fb::Body::ConversationOpened, "conversation_opened"),
        Body::ConversationListRequest(_) => (
            fb::Body::ConversationListRequest,
            "conversation_list_request",
        ),
        Body::ConversationList(_) => (fb::Body::ConversationList, "conversation_list"),
        Body::PresenceSubscribe(_) => (fb::Body::PresenceSubscribe, "presence_subscribe"),
        Body::PresenceUnsubscribe(_) => (fb::Body::PresenceUnsubscribe, "presence_unsubscribe"),
        Body::PresenceQuery(_) => (fb::Body::PresenceQuery, "presence_query"),
        Body::PresenceUpdate(_) => (fb::Body::PresenceUpdate, "presence_update"),
        Body::PresenceSet(_) => (fb::Body::PresenceSet, "presence_set"),
        Body::Typing(_) => (fb::Body::Typing, "typing"),
        Body::GroupCreate(_) => (fb::Body::GroupCreate, "group_create"),
        Body::GroupUpdate(_) => (fb::Body::GroupUpdate, "group_update"),
        Body::GroupInfoRequest(_) => (fb::Body::GroupInfoRequest, "group_info_request"),
        Body::GroupInfo(_) => (fb::Body::GroupInfo, "group_info"),
        Body::KeysUpload(_) => (fb::Body::KeysUpload, "keys_upload"),
        Body::KeysUploaded(_) => (fb::Body::KeysUploaded, "keys_uploaded"),
        Body::KeysFetch(_) => (fb::Body::KeysFetch, "keys_fetch"),
        Body::KeyBundle(_) => (fb::Body::KeyBundle, "key_bundle"),
        Body::KeysLow(_) => (fb::Body::KeysLow, "keys_low"),
        Body::MediaPresignRequest(_) => (fb::Body::MediaPresignRequest, "media_presign_request"),
        Body::MediaPresignResponse(_) => (fb::Body::MediaPresignResponse, "media_presign_response"),
        Body::MediaDownloadRequest(_) => (fb::Body::MediaDownloadRequest, "media_download_request"),
        Body::MediaDownloadResponse(_) => {
            (fb::Body::MediaDownloadResponse, "media_download_response")
        }
    }
}

fn build_body<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, body: &Body) -> Union {
    match body {
        Body::Hello(m) => hello(fbb, m),
        Body::Welcome(m) => welcome(fbb, m),
        Body::Ping(m) => ping(fbb, m),
        Body::Pong(m) => pong(fbb, m),
        Body::Error(m) => error(fbb, m),
        Body::Redirect(m) => redirect(fbb, m),
        Body::Send(m) => send(fbb, m),
        Body::Ack(m) => ack(fbb, m),
        Body::Deliver(m) => deliver(fbb, m),
        Body::Receipt(m) => receipt(fbb, m),
        Body::ReceiptUpdate(m) => receipt_update(fbb, m).as_union_value(),
        Body::SyncRequest(m) => sync_request(fbb, m),
        Body::SyncBatch(m) => sync_batch(fbb, m),
        Body::HistoryRequest(m) => history_request(fbb, m),
        Body::HistoryPage(m) => history_page(fbb, m),
        Body::OpenDirect(m) => open_direct(fbb, m),
        Body::ConversationOpened(m) => conversation_opened(fbb, m),
        Body::ConversationListRequest(m) => conversation_list_request(fbb, m),
        Body::ConversationList(m) => conversation_list(fbb, m),
        Body::PresenceSubscribe(m) => presence_subscribe(fbb, m),
        Body::PresenceUnsubscribe(m) => presence_unsubscribe(fbb, m),
        Body::PresenceQuery(m) => presence_query(fbb, m),
        Body::PresenceUpdate(m) => presence_update(fbb, m),
        Body::PresenceSet(m) => presence_set(fbb, m),
        Body::Typing(m) => typing(fbb, m),
        Body::GroupCreate(m) => group_create(fbb, m),
        Body::GroupUpdate(m) => group_update(fbb, m),
        Body::GroupInfoRequest(m) => group_info_request(fbb, m),
        Body::GroupInfo(m) => group_info(fbb, m),
        Body::KeysUpload(m) => keys_upload(fbb, m),
        Body::KeysUploaded(m) => keys_uploaded(fbb, m),
        Body::KeysFetch(m) => keys_fetch(fbb, m),
        Body::KeyBundle(m) => key_bundle(fbb, m),
        Body::KeysLow(m) => keys_low(fbb, m),
        Body::MediaPresignRequest(m) => media_presign_request(fbb, m),
        Body::MediaPresignResponse(m) => media_presign_response(fbb, m),
        Body::MediaDownloadRequest(m) => media_download_request(fbb, m),
        Body::MediaDownloadResponse(m) => media_download_response(fbb, m),
    }
}

// ---------------------------------------------------------------------------------------
// Leaves.

fn string<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, s: &str) -> Option<WIPOffset<&'a str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn bytes<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    bytes: &[u8],
) -> Option<WIPOffset<Vector<'a, u8>>> {
    (!bytes.is_empty()).then(|| fbb.create_vector(bytes))
}

fn ids<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    ids: &[u64],
) -> Option<WIPOffset<Vector<'a, u64>>> {
    (!ids.is_empty()).then(|| fbb.create_vector(ids))
}

/// Builds each item's table, then the vector of their offsets (children must be finished
/// before a vector starts, hence the small offset list).
fn tables<'a, A: Allocator + 'a, T, U: 'a>(
    fbb: &mut Fbb<'a, A>,
    items: &[T],
    build: impl Fn(&mut Fbb<'a, A>, &T) -> WIPOffset<U>,
) -> TableVector<'a, U> {
    if items.is_empty() {
        return None;
    }
    let offsets: Vec<WIPOffset<U>> = items.iter().map(|item| build(fbb, item)).collect();
    Some(fbb.create_vector(&offsets))
}

// ---------------------------------------------------------------------------------------
// Shared tables.

fn media_ref<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &MediaRef,
) -> WIPOffset<fb::MediaRef<'a>> {
    let content_type = string(fbb, &m.content_type);
    let metadata = string(fbb, &m.metadata);
    let sha256 = fb::Sha256::new(&m.sha256.0);
    let args = fb::MediaRefArgs {
        sha256: Some(&sha256),
        size: m.size,
        content_type,
        metadata,
    };
    fb::MediaRef::create(fbb, &args)
}

fn stored_message<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &StoredMessage,
) -> WIPOffset<fb::StoredMessage<'a>> {
    let body = bytes(fbb, &m.body);
    let media = m.media.as_ref().map(|media| media_ref(fbb, media));
    let system = m.system.as_ref().map(|event| system_event(fbb, event));
    let args = fb::StoredMessageArgs {
        conversation_id: m.conversation_id,
        seq: m.seq,
        message_id: m.message_id,
        sender_user_id: m.sender_user_id,
        sender_device_id: m.sender_device_id,
        timestamp_ms: m.timestamp_ms,
        kind: m.kind.into(),
        body,
        media,
        reply_to_seq: m.reply_to_seq,
        system,
    };
    fb::StoredMessage::create(fbb, &args)
}

fn receipt_state<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &ReceiptState,
) -> WIPOffset<fb::ReceiptState<'a>> {
    let args = fb::ReceiptStateArgs {
        user_id: m.user_id,
        device_id: m.device_id,
        delivered_seq: m.delivered_seq,
        read_seq: m.read_seq,
    };
    fb::ReceiptState::create(fbb, &args)
}

fn group_member<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &GroupMember,
) -> WIPOffset<fb::GroupMember<'a>> {
    let args = fb::GroupMemberArgs {
        user_id: m.user_id,
        role: m.role.into(),
        joined_seq: m.joined_seq,
    };
    fb::GroupMember::create(fbb, &args)
}

fn conversation_summary<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &ConversationSummary,
) -> WIPOffset<fb::ConversationSummary<'a>> {
    let title = string(fbb, &m.title);
    let args = fb::ConversationSummaryArgs {
        conversation_id: m.conversation_id,
        kind: m.kind.into(),
        title,
        peer_user_id: m.peer_user_id,
        last_seq: m.last_seq,
        delivered_seq: m.delivered_seq,
        read_seq: m.read_seq,
    };
    fb::ConversationSummary::create(fbb, &args)
}

fn one_time_key<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &OneTimeKey,
) -> WIPOffset<fb::OneTimeKey<'a>> {
    let public_key = bytes(fbb, &m.public_key);
    fb::OneTimeKey::create(
        fbb,
        &fb::OneTimeKeyArgs {
            key_id: m.key_id,
            public_key,
        },
    )
}

fn signed_pre_key<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &SignedPreKey,
) -> WIPOffset<fb::SignedPreKey<'a>> {
    let public_key = bytes(fbb, &m.public_key);
    let signature = bytes(fbb, &m.signature);
    let args = fb::SignedPreKeyArgs {
        key_id: m.key_id,
        public_key,
        signature,
    };
    fb::SignedPreKey::create(fbb, &args)
}

fn device_key_bundle<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &DeviceKeyBundle,
) -> WIPOffset<fb::DeviceKeyBundle<'a>> {
    let identity_key = bytes(fbb, &m.identity_key);
    let signed_pre_key = m.signed_pre_key.as_ref().map(|k| signed_pre_key(fbb, k));
    let one_time_key = m.one_time_key.as_ref().map(|k| one_time_key(fbb, k));
    let args = fb::DeviceKeyBundleArgs {
        device_id: m.device_id,
        identity_key,
        signed_pre_key,
        one_time_key,
    };
    fb::DeviceKeyBundle::create(fbb, &args)
}

// ---------------------------------------------------------------------------------------
// Session.

fn hello<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Hello) -> Union {
    let token = string(fbb, &m.token);
    let client = string(fbb, &m.client);
    let args = fb::HelloArgs {
        token,
        client,
        protocol_version: m.protocol_version,
    };
    fb::Hello::create(fbb, &args).as_union_value()
}

fn welcome<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Welcome) -> Union {
    let args = fb::WelcomeArgs {
        user_id: m.user_id,
        device_id: m.device_id,
        session_id: m.session_id,
        node_id: m.node_id,
        protocol_version: m.protocol_version,
        server_time_ms: m.server_time_ms,
        heartbeat_interval_ms: m.heartbeat_interval_ms,
        max_frame_bytes: m.max_frame_bytes,
    };
    fb::Welcome::create(fbb, &args).as_union_value()
}

fn ping<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Ping) -> Union {
    let args = fb::PingArgs {
        nonce: m.nonce,
        client_time_ms: m.client_time_ms,
    };
    fb::Ping::create(fbb, &args).as_union_value()
}

fn pong<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Pong) -> Union {
    let args = fb::PongArgs {
        nonce: m.nonce,
        server_time_ms: m.server_time_ms,
    };
    fb::Pong::create(fbb, &args).as_union_value()
}

fn redirect<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Redirect) -> Union {
    let address = string(fbb, &m.address);
    let args = fb::RedirectArgs {
        address,
        node_id: m.node_id,
    };
    fb::Redirect::create(fbb, &args).as_union_value()
}

fn error<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Error) -> Union {
    let message = string(fbb, &m.message);
    let args = fb::ErrorArgs {
        code: m.code.into(),
        message,
        retry_after_ms: m.retry_after_ms,
    };
    fb::Error::create(fbb, &args).as_union_value()
}

// ---------------------------------------------------------------------------------------
// Messages.

fn send<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Send) -> Union {
    let key = fb::IdempotencyKey::new(&m.idempotency_key.0);
    let body = bytes(fbb, &m.body);
    let media = m.media.as_ref().map(|media| media_ref(fbb, media));
    let args = fb::SendArgs {
        conversation_id: m.conversation_id,
        idempotency_key: Some(&key),
        kind: m.kind.into(),
        body,
        media,
        reply_to_seq: m.reply_to_seq,
    };
    fb::Send::create(fbb, &args).as_union_value()
}

fn ack<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Ack) -> Union {
    let args = fb::AckArgs {
        conversation_id: m.conversation_id,
        message_id: m.message_id,
        seq: m.seq,
        timestamp_ms: m.timestamp_ms,
        status: m.status.into(),
    };
    fb::Ack::create(fbb, &args).as_union_value()
}

fn deliver<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Deliver) -> Union {
    let message = Some(stored_message(fbb, &m.message));
    fb::Deliver::create(fbb, &fb::DeliverArgs { message }).as_union_value()
}

fn receipt<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Receipt) -> Union {
    let args = fb::ReceiptArgs {
        conversation_id: m.conversation_id,
        kind: m.kind.into(),
        up_to_seq: m.up_to_seq,
    };
    fb::Receipt::create(fbb, &args).as_union_value()
}

fn receipt_update<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &ReceiptUpdate,
) -> WIPOffset<fb::ReceiptUpdate<'a>> {
    let states = tables(fbb, &m.states, receipt_state);
    let args = fb::ReceiptUpdateArgs {
        conversation_id: m.conversation_id,
        states,
    };
    fb::ReceiptUpdate::create(fbb, &args)
}

fn sync_request<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &SyncRequest) -> Union {
    fb::SyncRequest::create(fbb, &fb::SyncRequestArgs { limit: m.limit }).as_union_value()
}

fn sync_batch<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &SyncBatch) -> Union {
    let messages = tables(fbb, &m.messages, stored_message);
    let receipts = tables(fbb, &m.receipts, receipt_update);
    let args = fb::SyncBatchArgs {
        messages,
        receipts,
        has_more: m.has_more,
    };
    fb::SyncBatch::create(fbb, &args).as_union_value()
}

fn history_request<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &HistoryRequest) -> Union {
    let args = fb::HistoryRequestArgs {
        conversation_id: m.conversation_id,
        before_seq: m.before_seq,
        after_seq: m.after_seq,
        limit: m.limit,
    };
    fb::HistoryRequest::create(fbb, &args).as_union_value()
}

fn history_page<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &HistoryPage) -> Union {
    let messages = tables(fbb, &m.messages, stored_message);
    let args = fb::HistoryPageArgs {
        conversation_id: m.conversation_id,
        messages,
        has_more: m.has_more,
    };
    fb::HistoryPage::create(fbb, &args).as_union_value()
}

fn open_direct<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &OpenDirect) -> Union {
    let peer_username = string(fbb, &m.peer_username);
    let args = fb::OpenDirectArgs {
        peer_user_id: m.peer_user_id,
        peer_username,
    };
    fb::OpenDirect::create(fbb, &args).as_union_value()
}

fn conversation_opened<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &ConversationOpened,
) -> Union {
    let conversation = Some(conversation_summary(fbb, &m.conversation));
    let args = fb::ConversationOpenedArgs { conversation };
    fb::ConversationOpened::create(fbb, &args).as_union_value()
}

fn conversation_list_request<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &ConversationListRequest,
) -> Union {
    let args = fb::ConversationListRequestArgs { limit: m.limit };
    fb::ConversationListRequest::create(fbb, &args).as_union_value()
}

fn conversation_list<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &ConversationList) -> Union {
    let conversations = tables(fbb, &m.conversations, conversation_summary);
    let args = fb::ConversationListArgs { conversations };
    fb::ConversationList::create(fbb, &args).as_union_value()
}

// ---------------------------------------------------------------------------------------
// Presence and typing.

fn presence_subscribe<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &PresenceSubscribe) -> Union {
    let user_ids = ids(fbb, &m.user_ids);
    let args = fb::PresenceSubscribeArgs { user_ids };
    fb::PresenceSubscribe::create(fbb, &args).as_union_value()
}

fn presence_unsubscribe<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &PresenceUnsubscribe,
) -> Union {
    let user_ids = ids(fbb, &m.user_ids);
    let args = fb::PresenceUnsubscribeArgs { user_ids };
    fb::PresenceUnsubscribe::create(fbb, &args).as_union_value()
}

fn presence_query<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &PresenceQuery) -> Union {
    let user_ids = ids(fbb, &m.user_ids);
    fb::PresenceQuery::create(fbb, &fb::PresenceQueryArgs { user_ids }).as_union_value()
}

fn presence_update<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &PresenceUpdate) -> Union {
    let entries = (!m.entries.is_empty()).then(|| {
        let structs: Vec<fb::PresenceEntry> = m
            .entries
            .iter()
            .map(|e| fb::PresenceEntry::new(e.user_id, e.last_seen_ms, e.status.into()))
            .collect();
        fbb.create_vector(&structs)
    });
    fb::PresenceUpdate::create(fbb, &fb::PresenceUpdateArgs { entries }).as_union_value()
}

fn presence_set<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &PresenceSet) -> Union {
    let args = fb::PresenceSetArgs {
        status: m.status.into(),
    };
    fb::PresenceSet::create(fbb, &args).as_union_value()
}

fn typing<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &Typing) -> Union {
    let args = fb::TypingArgs {
        conversation_id: m.conversation_id,
        user_id: m.user_id,
        active: m.active,
    };
    fb::Typing::create(fbb, &args).as_union_value()
}

// ---------------------------------------------------------------------------------------
// Groups.

fn group_create<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &GroupCreate) -> Union {
    let name = string(fbb, &m.name);
    let member_user_ids = ids(fbb, &m.member_user_ids);
    let args = fb::GroupCreateArgs {
        name,
        member_user_ids,
    };
    fb::GroupCreate::create(fbb, &args).as_union_value()
}

fn group_update<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &GroupUpdate) -> Union {
    let name = string(fbb, &m.name);
    let user_ids = ids(fbb, &m.user_ids);
    let args = fb::GroupUpdateArgs {
        conversation_id: m.conversation_id,
        op: m.op.into(),
        name,
        user_ids,
        role: m.role.into(),
    };
    fb::GroupUpdate::create(fbb, &args).as_union_value()
}

fn group_info_request<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &GroupInfoRequest) -> Union {
    let args = fb::GroupInfoRequestArgs {
        conversation_id: m.conversation_id,
    };
    fb::GroupInfoRequest::create(fbb, &args).as_union_value()
}

fn group_info<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &GroupInfo) -> Union {
    let name = string(fbb, &m.name);
    let members = tables(fbb, &m.members, group_member);
    let args = fb::GroupInfoArgs {
        conversation_id: m.conversation_id,
        name,
        created_by: m.created_by,
        members,
        last_seq: m.last_seq,
    };
    fb::GroupInfo::create(fbb, &args).as_union_value()
}

fn system_event<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &SystemEvent,
) -> WIPOffset<fb::SystemEvent<'a>> {
    let user_ids = ids(fbb, &m.user_ids);
    let name = string(fbb, &m.name);
    let args = fb::SystemEventArgs {
        op: m.op.into(),
        actor_user_id: m.actor_user_id,
        user_ids,
        name,
        role: m.role.into(),
    };
    fb::SystemEvent::create(fbb, &args)
}

// ---------------------------------------------------------------------------------------
// Key directory.

fn keys_upload<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &KeysUpload) -> Union {
    let identity_key = bytes(fbb, &m.identity_key);
    let signed_pre_key = m.signed_pre_key.as_ref().map(|k| signed_pre_key(fbb, k));
    let one_time_keys = tables(fbb, &m.one_time_keys, one_time_key);
    let args = fb::KeysUploadArgs {
        identity_key,
        signed_pre_key,
        one_time_keys,
    };
    fb::KeysUpload::create(fbb, &args).as_union_value()
}

fn keys_uploaded<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &KeysUploaded) -> Union {
    let args = fb::KeysUploadedArgs {
        one_time_keys_remaining: m.one_time_keys_remaining,
    };
    fb::KeysUploaded::create(fbb, &args).as_union_value()
}

fn keys_fetch<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &KeysFetch) -> Union {
    let args = fb::KeysFetchArgs {
        user_id: m.user_id,
        device_id: m.device_id,
    };
    fb::KeysFetch::create(fbb, &args).as_union_value()
}

fn key_bundle<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &KeyBundle) -> Union {
    let devices = tables(fbb, &m.devices, device_key_bundle);
    let args = fb::KeyBundleArgs {
        user_id: m.user_id,
        devices,
    };
    fb::KeyBundle::create(fbb, &args).as_union_value()
}

fn keys_low<'a, A: Allocator + 'a>(fbb: &mut Fbb<'a, A>, m: &KeysLow) -> Union {
    let args = fb::KeysLowArgs {
        one_time_keys_remaining: m.one_time_keys_remaining,
    };
    fb::KeysLow::create(fbb, &args).as_union_value()
}

// ---------------------------------------------------------------------------------------
// Media.

fn media_presign_request<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &MediaPresignRequest,
) -> Union {
    let sha256 = fb::Sha256::new(&m.sha256.0);
    let content_type = string(fbb, &m.content_type);
    let args = fb::MediaPresignRequestArgs {
        sha256: Some(&sha256),
        size: m.size,
        content_type,
    };
    fb::MediaPresignRequest::create(fbb, &args).as_union_value()
}

fn media_presign_response<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &MediaPresignResponse,
) -> Union {
    let media = m.media.as_ref().map(|media| media_ref(fbb, media));
    let upload_url = string(fbb, &m.upload_url);
    let args = fb::MediaPresignResponseArgs {
        media,
        exists: m.exists,
        upload_url,
        expires_at_ms: m.expires_at_ms,
    };
    fb::MediaPresignResponse::create(fbb, &args).as_union_value()
}

fn media_download_request<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &MediaDownloadRequest,
) -> Union {
    let args = fb::MediaDownloadRequestArgs {
        conversation_id: m.conversation_id,
        seq: m.seq,
    };
    fb::MediaDownloadRequest::create(fbb, &args).as_union_value()
}

fn media_download_response<'a, A: Allocator + 'a>(
    fbb: &mut Fbb<'a, A>,
    m: &MediaDownloadResponse,
) -> Union {
    let media = m.media.as_ref().map(|media| media_ref(fbb, media));
    let download_url = string(fbb, &m.download_url);
    let args = fb::MediaDownloadResponseArgs {
        media,
        download_url,
        expires_at_ms: m.expires_at_ms,
    };
    fb::MediaDownloadResponse::create(fbb, &args).as_union_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_builder_gives_the_same_bytes_as_a_fresh_one() {
        let frame = Frame {
            request_id: 7,
            body: Body::Ping(Ping {
                nonce: 1,
                client_time_ms: 2,
            }),
        };
        let big = Frame {
            request_id: 8,
            body: Body::SyncBatch(SyncBatch {
                messages: vec![
                    StoredMessage {
                        body: vec![1; 1000],
                        ..Default::default()
                    };
                    3
                ],
                ..Default::default()
            }),
        };
        let mut fbb = FlatBufferBuilder::new();
        let first = encode(&big, &mut fbb).to_vec();
        assert_eq!(first, to_flatbuffers(&big));
        assert_eq!(encode(&frame, &mut fbb), to_flatbuffers(&frame).as_slice());
        assert_eq!(
            encode(&big, &mut fbb),
            first.as_slice(),
            "deterministic after reuse"
        );
    }

    #[test]
    fn encoded_frames_carry_the_file_identifier() {
        let frame = Frame {
            request_id: 0,
            body: Body::KeysLow(KeysLow::default()),
        };
        let bytes = to_flatbuffers(&frame);
        assert_eq!(bytes.get(4..8), Some(&b"CFB1"[..]));
    }

    #[test]
    fn empty_strings_and_defaults_are_omitted() {
        let empty = to_flatbuffers(&Frame {
            request_id: 0,
            body: Body::Hello(Hello::default()),
        });
        let full = to_flatbuffers(&Frame {
            request_id: 0,
            body: Body::Hello(Hello {
                token: "t".into(),
                ..Hello::default()
            }),
        });
        assert!(empty.len() < full.len());
    }
}
