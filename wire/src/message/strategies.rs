//! proptest strategies for the whole model. Sizes are kept small (lists of at most 4
//! items, byte vectors of at most 64 bytes, strings of at most 12 characters = 48 bytes)
//! so tests are fast; every generated frame is within the named limits.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

use super::*;

const ITEMS: std::ops::Range<usize> = 0..5;

/// Any printable text, up to 12 characters (at most 48 bytes: under every string limit).
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=64)
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    vec(any::<u64>(), ITEMS)
}

pub(crate) fn idempotency_key() -> impl Strategy<Value = IdempotencyKey> {
    any::<[u8; 16]>().prop_map(IdempotencyKey)
}

pub(crate) fn sha256() -> impl Strategy<Value = Sha256> {
    any::<[u8; 32]>().prop_map(Sha256)
}

pub(crate) fn media_ref() -> impl Strategy<Value = MediaRef> {
    (sha256(), any::<u64>(), text(), text()).prop_map(|(sha256, size, content_type, metadata)| {
        MediaRef {
            sha256,
            size,
            content_type,
            metadata,
        }
    })
}

pub(crate) fn stored_message() -> impl Strategy<Value = StoredMessage> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        select(MessageKind::ALL),
        bytes(),
        option::of(media_ref()),
        any::<u64>(),
        option::of(system_event()),
    )
        .prop_map(
            |(ids, kind, body, media, reply_to_seq, system)| StoredMessage {
                conversation_id: ids.0,
                seq: ids.1,
                message_id: ids.2,
                sender_user_id: ids.3,
                sender_device_id: ids.4,
                timestamp_ms: ids.5,
                kind,
                body,
                media,
                reply_to_seq,
                system,
            },
        )
}

fn receipt_state() -> impl Strategy<Value = ReceiptState> {
    any::<[u64; 4]>().prop_map(
        |[user_id, device_id, delivered_seq, read_seq]| ReceiptState {
            user_id,
            device_id,
            delivered_seq,
            read_seq,
        },
    )
}

fn receipt_update() -> impl Strategy<Value = ReceiptUpdate> {
    (any::<u64>(), vec(receipt_state(), ITEMS)).prop_map(|(conversation_id, states)| {
        ReceiptUpdate {
            conversation_id,
            states,
        }
    })
}

fn presence_entry() -> impl Strategy<Value = PresenceEntry> {
    (any::<u64>(), any::<u64>(), select(PresenceStatus::ALL)).prop_map(
        |(user_id, last_seen_ms, status)| PresenceEntry {
            user_id,
            last_seen_ms,
            status,
        },
    )
}

fn group_member() -> impl Strategy<Value = GroupMember> {
    (any::<u64>(), select(GroupRole::ALL), any::<u64>()).prop_map(|(user_id, role, joined_seq)| {
        GroupMember {
            user_id,
            role,
            joined_seq,
        }
    })
}

fn conversation_summary() -> impl Strategy<Value = ConversationSummary> {
    (
        any::<u64>(),
        select(ConversationKind::ALL),
        text(),
        any::<[u64; 4]>(),
    )
        .prop_map(
            |(conversation_id, kind, title, [peer_user_id, last_seq, delivered_seq, read_seq])| {
                ConversationSummary {
                    conversation_id,
                    kind,
                    title,
                    peer_user_id,
                    last_seq,
                    delivered_seq,
                    read_seq,
                }
            },
        )
}

fn one_time_key() -> impl Strategy<Value = OneTimeKey> {
    (any::<u64>(), bytes()).prop_map(|(key_id, public_key)| OneTimeKey { key_id, public_key })
}

fn signed_pre_key() -> impl Strategy<Value = SignedPreKey> {
    (any::<u64>(), bytes(), bytes()).prop_map(|(key_id, public_key, signature)| SignedPreKey {
        key_id,
        public_key,
        signature,
    })
}

fn device_key_bundle() -> impl Strategy<Value = DeviceKeyBundle> {
    (
        any::<u64>(),
        bytes(),
        option::of(signed_pre_key()),
        option::of(one_time_key()),
    )
        .prop_map(
            |(device_id, identity_key, signed_pre_key, one_time_key)| DeviceKeyBundle {
                device_id,
                identity_key,
                signed_pre_key,
                one_time_key,
            },
        )
}

pub(crate) fn system_event() -> impl Strategy<Value = SystemEvent> {
    (
        select(GroupOp::ALL),
        any::<u64>(),
        ids(),
        text(),
        select(GroupRole::ALL),
    )
        .prop_map(|(op, actor_user_id, user_ids, name, role)| SystemEvent {
            op,
            actor_user_id,
            user_ids,
            name,
            role,
        })
}

// ---------------------------------------------------------------------------------------
// Bodies.

fn session() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "hello",
            (text(), text(), any::<u16>())
                .prop_map(|(token, client, protocol_version)| {
                    Body::Hello(Hello {
                        token,
                        client,
                        protocol_version,
                    })
                })
                .boxed(),
        ),
        (
            "welcome",
            (
                any::<[u64; 4]>(),
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
            )
                .prop_map(
                    |([user_id, device_id, session_id, server_time_ms], n, p, h, m)| {
                        Body::Welcome(Welcome {
                            user_id,
                            device_id,
                            session_id,
                            node_id: n,
                            protocol_version: p,
                            server_time_ms,
                            heartbeat_interval_ms: h,
                            max_frame_bytes: m,
                        })
                    },
                )
                .boxed(),
        ),
        (
            "ping",
            any::<[u64; 2]>()
                .prop_map(|[nonce, client_time_ms]| {
                    Body::Ping(Ping {
                        nonce,
                        client_time_ms,
                    })
                })
                .boxed(),
        ),
    ]
}

fn errors() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "pong",
            any::<[u64; 2]>()
                .prop_map(|[nonce, server_time_ms]| {
                    Body::Pong(Pong {
                        nonce,
                        server_time_ms,
                    })
                })
                .boxed(),
        ),
        (
            "error",
            (select(ErrorCode::ALL), text(), any::<u32>())
                .prop_map(|(code, message, retry_after_ms)| {
                    Body::Error(Error {
                        code,
                        message,
                        retry_after_ms,
                    })
                })
                .boxed(),
        ),
        (
            "redirect",
            (text(), any::<u16>())
                .prop_map(|(address, node_id)| Body::Redirect(Redirect { address, node_id }))
                .boxed(),
        ),
    ]
}

fn messages() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "send",
            (
                any::<u64>(),
                idempotency_key(),
                select(MessageKind::ALL),
                bytes(),
                option::of(media_ref()),
                any::<u64>(),
            )
                .prop_map(
                    |(conversation_id, idempotency_key, kind, body, media, reply_to_seq)| {
                        Body::Send(Send {
                            conversation_id,
                            idempotency_key,
                            kind,
                            body,
                            media,
                            reply_to_seq,
                        })
                    },
                )
                .boxed(),
        ),
        (
            "ack",
            (any::<[u64; 4]>(), select(AckStatus::ALL))
                .prop_map(
                    |([conversation_id, message_id, seq, timestamp_ms], status)| {
                        Body::Ack(Ack {
                            conversation_id,
                            message_id,
                            seq,
                            timestamp_ms,
                            status,
                        })
                    },
                )
                .boxed(),
        ),
        (
            "deliver",
            stored_message()
                .prop_map(|message| Body::Deliver(Deliver { message }))
                .boxed(),
        ),
    ]
}

fn receipts_and_sync() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "receipt",
            (any::<u64>(), select(ReceiptKind::ALL), any::<u64>())
                .prop_map(|(conversation_id, kind, up_to_seq)| {
                    Body::Receipt(Receipt {
                        conversation_id,
                        kind,
                        up_to_seq,
                    })
                })
                .boxed(),
        ),
        (
            "receipt_update",
            receipt_update().prop_map(Body::ReceiptUpdate).boxed(),
        ),
        (
            "sync_request",
            any::<u32>()
                .prop_map(|limit| Body::SyncRequest(SyncRequest { limit }))
                .boxed(),
        ),
        (
            "sync_batch",
            (
                vec(stored_message(), ITEMS),
                vec(receipt_update(), ITEMS),
                any::<bool>(),
            )
                .prop_map(|(messages, receipts, has_more)| {
                    Body::SyncBatch(SyncBatch {
                        messages,
                        receipts,
                        has_more,
                    })
                })
                .boxed(),
        ),
    ]
}

fn history_and_conversations() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "history_request",
            (any::<[u64; 3]>(), any::<u32>())
                .prop_map(|([conversation_id, before_seq, after_seq], limit)| {
                    Body::HistoryRequest(HistoryRequest {
                        conversation_id,
                        before_seq,
                        after_seq,
                        limit,
                    })
                })
                .boxed(),
        ),
        (
            "history_page",
            (any::<u64>(), vec(stored_message(), ITEMS), any::<bool>())
                .prop_map(|(conversation_id, messages, has_more)| {
                    Body::HistoryPage(HistoryPage {
                        conversation_id,
                        messages,
                        has_more,
                    })
                })
                .boxed(),
        ),
        (
            "open_direct",
            (any::<u64>(), text())
                .prop_map(|(peer_user_id, peer_username)| {
                    Body::OpenDirect(OpenDirect {
                        peer_user_id,
                        peer_username,
                    })
                })
                .boxed(),
        ),
        (
            "conversation_opened",
            conversation_summary()
                .prop_map(|conversation| {
                    Body::ConversationOpened(ConversationOpened { conversation })
                })
                .boxed(),
        ),
        (
            "conversation_list_request",
            any::<u32>()
                .prop_map(|limit| Body::ConversationListRequest(ConversationListRequest { limit }))
                .boxed(),
        ),
        (
            "conversation_list",
            vec(conversation_summary(), ITEMS)
                .prop_map(|conversations| {
                    Body::ConversationList(ConversationList { conversations })
                })
                .boxed(),
        ),
    ]
}

fn presence() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "presence_subscribe",
            ids()
                .prop_map(|user_ids| Body::PresenceSubscribe(PresenceSubscribe { user_ids }))
                .boxed(),
        ),
        (
            "presence_unsubscribe",
            ids()
                .prop_map(|user_ids| Body::PresenceUnsubscribe(PresenceUnsubscribe { user_ids }))
                .boxed(),
        ),
        (
            "presence_query",
            ids()
                .prop_map(|user_ids| Body::PresenceQuery(PresenceQuery { user_ids }))
                .boxed(),
        ),
        (
            "presence_update",
            vec(presence_entry(), ITEMS)
                .prop_map(|entries| Body::PresenceUpdate(PresenceUpdate { entries }))
                .boxed(),
        ),
        (
            "presence_set",
            select(PresenceStatus::ALL)
                .prop_map(|status| Body::PresenceSet(PresenceSet { status }))
                .boxed(),
        ),
        (
            "typing",
            (any::<u64>(), any::<u64>(), any::<bool>())
                .prop_map(|(conversation_id, user_id, active)| {
                    Body::Typing(Typing {
                        conversation_id,
                        user_id,
                        active,
                    })
                })
                .boxed(),
        ),
    ]
}

fn groups() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "group_create",
            (text(), ids())
                .prop_map(|(name, member_user_ids)| {
                    Body::GroupCreate(GroupCreate {
                        name,
                        member_user_ids,
                    })
                })
                .boxed(),
        ),
        (
            "group_update",
            (
                any::<u64>(),
                select(GroupOp::ALL),
                text(),
                ids(),
                select(GroupRole::ALL),
            )
                .prop_map(|(conversation_id, op, name, user_ids, role)| {
                    Body::GroupUpdate(GroupUpdate {
                        conversation_id,
                        op,
                        name,
                        user_ids,
                        role,
                    })
                })
                .boxed(),
        ),
        (
            "group_info_request",
            any::<u64>()
                .prop_map(|conversation_id| {
                    Body::GroupInfoRequest(GroupInfoRequest { conversation_id })
                })
                .boxed(),
        ),
        (
            "group_info",
            (
                any::<u64>(),
                text(),
                any::<u64>(),
                vec(group_member(), ITEMS),
                any::<u64>(),
            )
                .prop_map(|(conversation_id, name, created_by, members, last_seq)| {
                    Body::GroupInfo(GroupInfo {
                        conversation_id,
                        name,
                        created_by,
                        members,
                        last_seq,
                    })
                })
                .boxed(),
        ),
    ]
}

fn keys() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "keys_upload",
            (
                bytes(),
                option::of(signed_pre_key()),
                vec(one_time_key(), ITEMS),
            )
                .prop_map(|(identity_key, signed_pre_key, one_time_keys)| {
                    Body::KeysUpload(KeysUpload {
                        identity_key,
                        signed_pre_key,
                        one_time_keys,
                    })
                })
                .boxed(),
        ),
        (
            "keys_uploaded",
            any::<u32>()
                .prop_map(|n| {
                    Body::KeysUploaded(KeysUploaded {
                        one_time_keys_remaining: n,
                    })
                })
                .boxed(),
        ),
        (
            "keys_fetch",
            any::<[u64; 2]>()
                .prop_map(|[user_id, device_id]| Body::KeysFetch(KeysFetch { user_id, device_id }))
                .boxed(),
        ),
        (
            "key_bundle",
            (any::<u64>(), vec(device_key_bundle(), ITEMS))
                .prop_map(|(user_id, devices)| Body::KeyBundle(KeyBundle { user_id, devices }))
                .boxed(),
        ),
        (
            "keys_low",
            any::<u32>()
                .prop_map(|n| {
                    Body::KeysLow(KeysLow {
                        one_time_keys_remaining: n,
                    })
                })
                .boxed(),
        ),
    ]
}

fn media() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    vec![
        (
            "media_presign_request",
            (sha256(), any::<u64>(), text())
                .prop_map(|(sha256, size, content_type)| {
                    Body::MediaPresignRequest(MediaPresignRequest {
                        sha256,
                        size,
                        content_type,
                    })
                })
                .boxed(),
        ),
        (
            "media_presign_response",
            (option::of(media_ref()), any::<bool>(), text(), any::<u64>())
                .prop_map(|(media, exists, upload_url, expires_at_ms)| {
                    Body::MediaPresignResponse(MediaPresignResponse {
                        media,
                        exists,
                        upload_url,
                        expires_at_ms,
                    })
                })
                .boxed(),
        ),
        (
            "media_download_request",
            any::<[u64; 2]>()
                .prop_map(|[conversation_id, seq]| {
                    Body::MediaDownloadRequest(MediaDownloadRequest {
                        conversation_id,
                        seq,
                    })
                })
                .boxed(),
        ),
        (
            "media_download_response",
            (option::of(media_ref()), text(), any::<u64>())
                .prop_map(|(media, download_url, expires_at_ms)| {
                    Body::MediaDownloadResponse(MediaDownloadResponse {
                        media,
                        download_url,
                        expires_at_ms,
                    })
                })
                .boxed(),
        ),
    ]
}

/// One strategy per union member, in schema order, with its JSON type name.
pub(crate) fn bodies() -> Vec<(&'static str, BoxedStrategy<Body>)> {
    let mut all = session();
    all.extend(errors());
    all.extend(messages());
    all.extend(receipts_and_sync());
    all.extend(history_and_conversations());
    all.extend(presence());
    all.extend(groups());
    all.extend(keys());
    all.extend(media());
    all
}

/// Any body, every member equally likely.
pub(crate) fn body() -> impl Strategy<Value = Body> {
    Union::new(bodies().into_iter().map(|(_, strategy)| strategy))
}

/// A frame with `body`.
pub(crate) fn frame_with(body: impl Strategy<Value = Body>) -> impl Strategy<Value = Frame> {
    (any::<u64>(), body).prop_map(|(request_id, body)| Frame { request_id, body })
}

/// Any frame.
pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    frame_with(body())
}
