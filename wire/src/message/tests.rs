//! Round trips for every body kind, negative cases for the FlatBuffers decoder, and a
//! table-driven test of every named field limit.

use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::strategies;
use super::validate::{self as limits_table, Limit, Unit};
use super::*;
use crate::error::{CapacityError, WireError};
use crate::json::{from_json, to_json};
use crate::limits::*;

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Every body kind: Frame -> FlatBuffers -> Frame, Frame -> JSON -> Frame, and
/// FlatBuffers -> JSON -> FlatBuffers (byte-identical, since encoding is deterministic).
#[test]
fn every_body_kind_round_trips() {
    let fbb = std::cell::RefCell::new(FlatBufferBuilder::new());
    for (name, strategy) in strategies::bodies() {
        let mut runner = TestRunner::new(Config {
            cases: 64,
            ..Config::default()
        });
        let result = runner.run(&strategies::frame_with(strategy), |frame| {
            prop_assert_eq!(frame.body.type_name(), name);
            prop_assert_eq!(validate(&frame), Ok(()));

            let bytes = to_flatbuffers(&frame);
            let mut builder = fbb.borrow_mut();
            prop_assert_eq!(encode(&frame, &mut builder), bytes.as_slice());
            drop(builder);
            let view = verified_root(&bytes).unwrap();
            prop_assert_eq!(view.body_type(), frame.body.fb_type());
            prop_assert_eq!(view.request_id(), frame.request_id);
            let decoded = from_flatbuffers(&bytes).unwrap();
            prop_assert_eq!(&decoded, &frame);

            let json = to_json(&frame);
            prop_assert_eq!(&from_json(&json).unwrap(), &frame, "{}", json);

            let via_json = from_json(&to_json(&decoded)).unwrap();
            prop_assert_eq!(to_flatbuffers(&via_json), bytes);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
}

proptest! {
    #[test]
    fn any_frame_round_trips_through_flatbuffers(frame in strategies::frame()) {
        prop_assert_eq!(from_flatbuffers(&to_flatbuffers(&frame)).unwrap(), frame);
    }

    #[test]
    fn system_event_round_trips(event in strategies::system_event()) {
        let bytes = system_event_to_flatbuffers(&event);
        prop_assert_eq!(system_event_from_flatbuffers(&bytes).unwrap(), event);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Almost always an error; what matters is no panic and no frame beyond limits.
        if let Ok(frame) = from_flatbuffers(&bytes) {
            prop_assert_eq!(validate(&frame), Ok(()));
        }
        let _ = system_event_from_flatbuffers(&bytes);
    }

    #[test]
    fn garbage_with_identifier_never_panics(
        mut bytes in proptest::collection::vec(any::<u8>(), 8..512),
    ) {
        bytes.splice(4..8, *b"CFB1");
        if let Ok(frame) = from_flatbuffers(&bytes) {
            prop_assert_eq!(validate(&frame), Ok(()));
        }
    }

    #[test]
    fn bit_flips_never_panic(frame in strategies::frame(), at in any::<prop::sample::Index>(),
                             bit in 0u8..8) {
        let mut bytes = to_flatbuffers(&frame);
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(frame) = from_flatbuffers(&bytes) {
            prop_assert_eq!(validate(&frame), Ok(()));
        }
    }
}

#[test]
fn body_variants_match_the_schema_union_in_order() {
    let strategies = strategies::bodies();
    let schema: Vec<&str> = fb::Body::ENUM_VALUES
        .iter()
        .skip(1)
        .filter_map(|b| b.variant_name())
        .collect();
    assert_eq!(strategies.len(), schema.len());
    let mut runner = TestRunner::deterministic();
    for ((name, strategy), (i, schema_name)) in strategies.iter().zip(schema.iter().enumerate()) {
        assert_eq!(*name, snake_case(schema_name));
        let body = strategy.new_tree(&mut runner).unwrap().current();
        assert_eq!(
            body.fb_type(),
            fb::Body(u8::try_from(i + 1).unwrap()),
            "{name}"
        );
        assert_eq!(body.type_name(), *name);
    }
}

#[test]
fn enum_names_and_values_match_the_schema() {
    fn check<T: Copy + std::fmt::Debug>(all: &[T], names: &[&str], fb_names: &[&str]) {
        assert_eq!(all.len(), fb_names.len());
        for (name, fb_name) in names.iter().zip(fb_names) {
            assert_eq!(*name, snake_case(fb_name));
        }
    }
    macro_rules! check {
        ($t:ident) => {{
            let fb_names: Vec<&str> = fb::$t::ENUM_VALUES
                .iter()
                .filter_map(|v| v.variant_name())
                .collect();
            check($t::ALL, $t::NAMES, &fb_names);
            for (i, v) in $t::ALL.iter().enumerate() {
                assert_eq!(fb::$t::from(*v), fb::$t::ENUM_VALUES[i]);
                assert_eq!($t::try_from(fb::$t::ENUM_VALUES[i]).unwrap(), *v);
                assert_eq!($t::from_name(v.as_str()), Some(*v));
            }
        }};
    }
    check!(ErrorCode);
    check!(AckStatus);
    check!(MessageKind);
    check!(ReceiptKind);
    check!(PresenceStatus);
    check!(ConversationKind);
    check!(GroupRole);
    check!(GroupOp);
    assert_eq!(PresenceSet::default().status, PresenceStatus::Online);
    assert_eq!(Hello::default().protocol_version, 1);
    assert_eq!(Welcome::default().protocol_version, 1);
}

fn sample_send() -> Frame {
    Frame {
        request_id: 42,
        body: Body::Send(Send {
            conversation_id: 9,
            idempotency_key: IdempotencyKey([7; 16]),
            kind: MessageKind::Chat,
            body: b"hi".to_vec(),
            media: None,
            reply_to_seq: 0,
        }),
    }
}

fn verify_error(result: Result<Frame, WireError>) -> String {
    match result {
        Err(WireError::Verify(msg)) => msg,
        other => panic!("expected a Verify error, got {other:?}"),
    }
}

#[test]
fn truncated_frames_are_rejected() {
    let bytes = to_flatbuffers(&sample_send());
    for cut in 0..bytes.len() {
        match from_flatbuffers(&bytes[..cut]) {
            // Only alignment padding (at most 3 bytes) may be cut without harm.
            Ok(frame) => {
                assert!(cut + 3 >= bytes.len(), "cut at {cut} of {}", bytes.len());
                assert_eq!(frame, sample_send());
            }
            Err(WireError::Verify(_)) => {}
            Err(other) => panic!("cut at {cut}: {other:?}"),
        }
    }
    assert!(verified_root(&[]).is_err());
    assert!(verified_root(&[0; 7]).is_err());
}

#[test]
fn wrong_identifier_is_rejected() {
    let mut bytes = to_flatbuffers(&sample_send());
    bytes[4..8].copy_from_slice(b"CFB2");
    assert!(verify_error(from_flatbuffers(&bytes)).contains("identifier"));
    // No identifier at all (a buffer finished without one).
    let mut fbb = FlatBufferBuilder::new();
    let root = build_frame(&mut fbb, &sample_send());
    fbb.finish(root, None);
    assert!(verify_error(from_flatbuffers(fbb.finished_data())).contains("identifier"));
}

#[test]
fn oversize_frame_is_rejected_before_anything_else() {
    let bytes = vec![0u8; FRAME_BYTES_MAX + 1];
    let expected = CapacityError::FrameTooLarge {
        size: FRAME_BYTES_MAX as u64 + 1,
        max: FRAME_BYTES_MAX,
    };
    assert_eq!(from_flatbuffers(&bytes), Err(expected.clone().into()));
    assert_eq!(verified_root(&bytes).err(), Some(expected.into()));
}

#[test]
fn oversize_send_body_names_the_field() {
    let mut frame = sample_send();
    if let Body::Send(send) = &mut frame.body {
        send.body = vec![b'x'; MESSAGE_BODY_BYTES_MAX + 1];
    }
    let expected: WireError = CapacityError::FieldTooLarge {
        field: "Send.body",
        size: MESSAGE_BODY_BYTES_MAX + 1,
        max: MESSAGE_BODY_BYTES_MAX,
    }
    .into();
    assert_eq!(validate(&frame), Err(expected.clone()));
    assert_eq!(
        from_flatbuffers(&to_flatbuffers(&frame)),
        Err(expected.clone())
    );
    assert_eq!(
        verified_root(&to_flatbuffers(&frame)).err(),
        Some(expected.clone())
    );
    assert_eq!(from_json(&to_json(&frame)), Err(expected));
}

/// A frame with `request_id` and a raw union type/value, built by hand.
fn raw_frame(body_type: fb::Body, with_value: bool) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let value = fb::Ping::create(
        &mut fbb,
        &fb::PingArgs {
            nonce: 1,
            client_time_ms: 2,
        },
    );
    let args = fb::FrameArgs {
        request_id: 5,
        body_type,
        body: with_value.then(|| value.as_union_value()),
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fb::finish_frame_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn union_none_is_rejected() {
    let msg = verify_error(from_flatbuffers(&raw_frame(fb::Body::NONE, false)));
    assert!(msg.contains("NONE"), "{msg}");
    assert!(verified_root(&raw_frame(fb::Body::NONE, false)).is_err());
}

#[test]
fn unknown_union_type_is_rejected() {
    let newer = fb::Body(fb::Body::ENUM_MAX + 1);
    let msg = verify_error(from_flatbuffers(&raw_frame(newer, true)));
    assert!(msg.contains("unknown body type 39"), "{msg}");
}

#[test]
fn inconsistent_union_is_rejected() {
    // A type without a value.
    assert!(from_flatbuffers(&raw_frame(fb::Body::Ping, false)).is_err());
    // A value whose table does not match the type is still a valid table; it decodes as the
    // named type with default fields. What matters is that nothing panics.
    let _ = from_flatbuffers(&raw_frame(fb::Body::Send, true));
}

/// A frame whose body is a `Receipt` with a raw `kind`, or an `Error` with a raw `code`.
fn raw_enum_frame(receipt_kind: Option<u8>, error_code: Option<u16>) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let (body_type, value) = match (receipt_kind, error_code) {
        (Some(kind), _) => {
            let args = fb::ReceiptArgs {
                conversation_id: 1,
                kind: fb::ReceiptKind(kind),
                up_to_seq: 2,
            };
            (
                fb::Body::Receipt,
                fb::Receipt::create(&mut fbb, &args).as_union_value(),
            )
        }
        (None, code) => {
            let args = fb::ErrorArgs {
                code: fb::ErrorCode(code.unwrap_or(0)),
                message: None,
                retry_after_ms: 0,
            };
            (
                fb::Body::Error,
                fb::Error::create(&mut fbb, &args).as_union_value(),
            )
        }
    };
    let args = fb::FrameArgs {
        request_id: 3,
        body_type,
        body: Some(value),
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fb::finish_frame_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn unknown_request_enum_values_are_errors() {
    let msg = verify_error(from_flatbuffers(&raw_enum_frame(Some(9), None)));
    assert_eq!(msg, "unknown ReceiptKind value 9");
    // The view is still readable for callers that handle the raw value themselves.
    assert!(verified_root(&raw_enum_frame(Some(9), None)).is_ok());
}

#[test]
fn unknown_error_codes_decode_as_unspecified() {
    let frame = from_flatbuffers(&raw_enum_frame(None, Some(999))).unwrap();
    assert_eq!(
        frame.body,
        Body::Error(Error {
            code: ErrorCode::Unspecified,
            message: String::new(),
            retry_after_ms: 0
        })
    );
}

/// A SyncBatch of `count` StoredMessage tables all pointing at one `body_bytes` vector.
fn shared_body_batch(count: usize, body_bytes: usize) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let body = fbb.create_vector(&vec![0u8; body_bytes]);
    let offsets: Vec<_> = (0..count)
        .map(|_| {
            let args = fb::StoredMessageArgs {
                body: Some(body),
                ..Default::default()
            };
            fb::StoredMessage::create(&mut fbb, &args)
        })
        .collect();
    let messages = fbb.create_vector(&offsets);
    let args = fb::SyncBatchArgs {
        messages: Some(messages),
        ..Default::default()
    };
    let batch = fb::SyncBatch::create(&mut fbb, &args).as_union_value();
    let args = fb::FrameArgs {
        request_id: 0,
        body_type: fb::Body::SyncBatch,
        body: Some(batch),
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fb::finish_frame_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn shared_vectors_cannot_amplify_allocation() {
    // 500 messages sharing one 60 KiB body: a 72 KB frame that would copy out as 30 MB. The
    // verifier counts a shared vector each time it is reached (its "apparent size"), and
    // bounds the total by FRAME_BYTES_MAX.
    let bytes = shared_body_batch(SYNC_BATCH_MESSAGES_MAX, 60 * 1024);
    assert!(bytes.len() < 100 * 1024);
    let msg = verify_error(from_flatbuffers(&bytes));
    assert!(msg.contains("Apparent size too large"), "{msg}");
    // Counts are checked on the view too, before anything is copied.
    let bytes = shared_body_batch(SYNC_BATCH_MESSAGES_MAX + 1, 8);
    assert_eq!(
        from_flatbuffers(&bytes),
        Err(CapacityError::TooManyItems {
            field: "SyncBatch.messages",
            count: SYNC_BATCH_MESSAGES_MAX + 1,
            max: SYNC_BATCH_MESSAGES_MAX,
        }
        .into())
    );
    assert!(from_flatbuffers(&shared_body_batch(SYNC_BATCH_MESSAGES_MAX, 8)).is_ok());
}

// ---------------------------------------------------------------------------------------
// Every named field limit, at the limit and one past it.

fn frame(body: Body) -> Frame {
    Frame {
        request_id: 1,
        body,
    }
}

fn stored(body: Vec<u8>, media: Option<MediaRef>) -> StoredMessage {
    StoredMessage {
        body,
        media,
        ..Default::default()
    }
}

fn media(content_type: String, metadata: String) -> Option<MediaRef> {
    Some(MediaRef {
        sha256: Sha256([1; 32]),
        size: 1,
        content_type,
        metadata,
    })
}

fn spk(public_key: Vec<u8>, signature: Vec<u8>) -> Option<SignedPreKey> {
    Some(SignedPreKey {
        key_id: 1,
        public_key,
        signature,
    })
}

/// A system message carrying `event`.
fn system_message(event: SystemEvent) -> Frame {
    frame(Body::Deliver(Deliver {
        message: StoredMessage {
            kind: MessageKind::System,
            system: Some(event),
            ..Default::default()
        },
    }))
}

/// A sample whose field `limit.field` has `n` bytes or items (all else minimal).
fn sample(limit: &Limit, n: usize) -> Frame {
    let s = "a".repeat(n);
    let b = vec![7u8; n];
    let ids: Vec<u64> = (0..n as u64).collect();
    match limit.field {
        "Hello.token" => frame(Body::Hello(Hello {
            token: s,
            ..Hello::default()
        })),
        "Hello.client" => frame(Body::Hello(Hello {
            client: s,
            ..Hello::default()
        })),
        "Redirect.address" => frame(Body::Redirect(Redirect {
            address: s,
            node_id: 1,
        })),
        "Error.message" => frame(Body::Error(Error {
            message: s,
            ..Error::default()
        })),
        "Send.body" => {
            let mut f = sample_send();
            if let Body::Send(send) = &mut f.body {
                send.body = b;
            }
            f
        }
        "StoredMessage.body" => frame(Body::Deliver(Deliver {
            message: stored(b, None),
        })),
        "MediaRef.content_type" => frame(Body::Deliver(Deliver {
            message: stored(vec![], media(s, String::new())),
        })),
        "MediaRef.metadata" => frame(Body::MediaPresignResponse(MediaPresignResponse {
            media: media(String::new(), s),
            ..Default::default()
        })),
        "ReceiptUpdate.states" => frame(Body::SyncBatch(SyncBatch {
            receipts: vec![ReceiptUpdate {
                conversation_id: 1,
                states: vec![ReceiptState::default(); n],
            }],
            ..Default::default()
        })),
        "SyncBatch.messages" => frame(Body::SyncBatch(SyncBatch {
            messages: vec![stored(vec![1], None); n],
            ..Default::default()
        })),
        "SyncBatch.receipts" => frame(Body::SyncBatch(SyncBatch {
            receipts: vec![ReceiptUpdate::default(); n],
            ..Default::default()
        })),
        "HistoryPage.messages" => frame(Body::HistoryPage(HistoryPage {
            messages: vec![stored(vec![1], None); n],
            ..Default::default()
        })),
        "OpenDirect.peer_username" => frame(Body::OpenDirect(OpenDirect {
            peer_user_id: 0,
            peer_username: s,
        })),
        "ConversationSummary.title" => frame(Body::ConversationOpened(ConversationOpened {
            conversation: ConversationSummary {
                title: s,
                ..Default::default()
            },
        })),
        "ConversationList.conversations" => frame(Body::ConversationList(ConversationList {
            conversations: vec![ConversationSummary::default(); n],
        })),
        _ => sample_rest(limit, n, s, b, ids),
    }
}

fn sample_rest(limit: &Limit, n: usize, s: String, b: Vec<u8>, ids: Vec<u64>) -> Frame {
    match limit.field {
        "PresenceSubscribe.user_ids" => {
            frame(Body::PresenceSubscribe(PresenceSubscribe { user_ids: ids }))
        }
        "PresenceUnsubscribe.user_ids" => frame(Body::PresenceUnsubscribe(PresenceUnsubscribe {
            user_ids: ids,
        })),
        "PresenceQuery.user_ids" => frame(Body::PresenceQuery(PresenceQuery { user_ids: ids })),
        "PresenceUpdate.entries" => frame(Body::PresenceUpdate(PresenceUpdate {
            entries: vec![PresenceEntry::default(); n],
        })),
        "GroupCreate.name" => frame(Body::GroupCreate(GroupCreate {
            name: s,
            ..Default::default()
        })),
        "GroupCreate.member_user_ids" => frame(Body::GroupCreate(GroupCreate {
            member_user_ids: ids,
            ..Default::default()
        })),
        "GroupUpdate.name" => frame(Body::GroupUpdate(GroupUpdate {
            name: s,
            ..Default::default()
        })),
        "GroupUpdate.user_ids" => frame(Body::GroupUpdate(GroupUpdate {
            user_ids: ids,
            ..Default::default()
        })),
        "GroupInfo.name" => frame(Body::GroupInfo(GroupInfo {
            name: s,
            ..Default::default()
        })),
        "GroupInfo.members" => frame(Body::GroupInfo(GroupInfo {
            members: vec![GroupMember::default(); n],
            ..Default::default()
        })),
        _ => sample_keys_media(limit, n, s, b, ids),
    }
}

fn sample_keys_media(limit: &Limit, n: usize, s: String, b: Vec<u8>, ids: Vec<u64>) -> Frame {
    match limit.field {
        "SystemEvent.name" => system_message(SystemEvent {
            name: s,
            ..Default::default()
        }),
        "SystemEvent.user_ids" => system_message(SystemEvent {
            user_ids: ids,
            ..Default::default()
        }),
        "KeysUpload.identity_key" => frame(Body::KeysUpload(KeysUpload {
            identity_key: b,
            ..Default::default()
        })),
        "KeysUpload.one_time_keys" => frame(Body::KeysUpload(KeysUpload {
            one_time_keys: vec![OneTimeKey::default(); n],
            ..Default::default()
        })),
        "OneTimeKey.public_key" => frame(Body::KeysUpload(KeysUpload {
            one_time_keys: vec![OneTimeKey {
                key_id: 1,
                public_key: b,
            }],
            ..Default::default()
        })),
        "SignedPreKey.public_key" => frame(Body::KeysUpload(KeysUpload {
            signed_pre_key: spk(b, vec![]),
            ..Default::default()
        })),
        "SignedPreKey.signature" => frame(Body::KeyBundle(KeyBundle {
            user_id: 1,
            devices: vec![DeviceKeyBundle {
                signed_pre_key: spk(vec![], b),
                ..Default::default()
            }],
        })),
        "DeviceKeyBundle.identity_key" => frame(Body::KeyBundle(KeyBundle {
            user_id: 1,
            devices: vec![DeviceKeyBundle {
                identity_key: b,
                ..Default::default()
            }],
        })),
        "KeyBundle.devices" => frame(Body::KeyBundle(KeyBundle {
            user_id: 1,
            devices: vec![DeviceKeyBundle::default(); n],
        })),
        "MediaPresignRequest.content_type" => {
            frame(Body::MediaPresignRequest(MediaPresignRequest {
                sha256: Sha256([2; 32]),
                size: 3,
                content_type: s,
            }))
        }
        "MediaPresignResponse.upload_url" => {
            frame(Body::MediaPresignResponse(MediaPresignResponse {
                upload_url: s,
                ..Default::default()
            }))
        }
        "MediaDownloadResponse.download_url" => {
            frame(Body::MediaDownloadResponse(MediaDownloadResponse {
                download_url: s,
                ..Default::default()
            }))
        }
        other => panic!("no sample for limit {other}: add one"),
    }
}

fn expected_error(limit: &Limit, n: usize) -> WireError {
    match limit.unit {
        Unit::Bytes => CapacityError::FieldTooLarge {
            field: limit.field,
            size: n,
            max: limit.max,
        }
        .into(),
        Unit::Items => CapacityError::TooManyItems {
            field: limit.field,
            count: n,
            max: limit.max,
        }
        .into(),
    }
}

/// Each limit is enforced identically by `validate`, the FlatBuffers decoder (on the
/// view) and the JSON decoder; exactly at the limit passes everywhere. `SystemEvent`
/// limits also hold for the standalone event codec.
#[test]
fn every_field_limit_is_enforced_by_every_decoder() {
    assert_eq!(limits_table::ALL.len(), 37);
    for limit in limits_table::ALL {
        for (n, expected) in [
            (limit.max, Ok(())),
            (limit.max + 1, Err(expected_error(limit, limit.max + 1))),
        ] {
            let frame = sample(limit, n);
            let bytes = to_flatbuffers(&frame);
            assert!(bytes.len() <= FRAME_BYTES_MAX, "{}", limit.field);
            assert_eq!(validate(&frame), expected, "{} validate", limit.field);
            let decoded = from_flatbuffers(&bytes).map(|f| assert_eq!(f, frame));
            assert_eq!(decoded, expected, "{} flatbuffers", limit.field);
            let view = verified_root(&bytes).map(|_| ());
            assert_eq!(view, expected, "{} view", limit.field);
            let decoded = from_json(&to_json(&frame)).map(|f| assert_eq!(f, frame));
            assert_eq!(decoded, expected, "{} json", limit.field);

            if let Body::Deliver(Deliver {
                message:
                    StoredMessage {
                        system: Some(event),
                        ..
                    },
            }) = &frame.body
            {
                assert_eq!(validate_system_event(event), expected, "{}", limit.field);
                let bytes = system_event_to_flatbuffers(event);
                let decoded = system_event_from_flatbuffers(&bytes).map(|e| assert_eq!(&e, event));
                assert_eq!(decoded, expected, "{} standalone", limit.field);
            }
        }
    }
}

/// A SyncBatch frame with `tables` tables in all: root + body + `messages` system messages
/// with a media ref (3 tables each) + receipt updates of states.
fn batch_with_tables(tables: usize, messages: usize) -> Frame {
    let states = tables - 3 - 3 * messages; // root, SyncBatch, one ReceiptUpdate, messages
    let chunks = states.div_ceil(RECEIPT_STATES_PER_UPDATE_MAX);
    let mut receipts = Vec::new();
    let mut left = states;
    for _ in 0..chunks {
        let n = left.min(RECEIPT_STATES_PER_UPDATE_MAX);
        receipts.push(ReceiptUpdate {
            conversation_id: 1,
            states: vec![ReceiptState::default(); n],
        });
        left -= n;
    }
    // Every update but the first is a table too: take them out of the first.
    let extra = receipts.len() - 1;
    if let Some(first) = receipts.first_mut() {
        first.states.truncate(first.states.len() - extra);
    }
    let message = StoredMessage {
        kind: MessageKind::System,
        media: media(String::new(), String::new()),
        system: Some(SystemEvent::default()),
        ..Default::default()
    };
    Frame {
        request_id: 1,
        body: Body::SyncBatch(SyncBatch {
            messages: vec![message; messages],
            receipts,
            ..Default::default()
        }),
    }
}

#[test]
fn table_count_matches_the_verifier() {
    // Receipt states only, then a full batch of messages with a media ref and a system
    // event each (`StoredMessage.system` is a table too).
    for messages in [0, SYNC_BATCH_MESSAGES_MAX] {
        let at_limit = batch_with_tables(VERIFIER_TABLES_MAX, messages);
        assert_eq!(validate(&at_limit), Ok(()), "{messages}");
        assert_eq!(
            from_flatbuffers(&to_flatbuffers(&at_limit)).unwrap(),
            at_limit
        );
        assert_eq!(from_json(&to_json(&at_limit)).unwrap(), at_limit);

        let over = batch_with_tables(VERIFIER_TABLES_MAX + 1, messages);
        let expected: WireError = CapacityError::TooManyItems {
            field: "Frame (tables)",
            count: VERIFIER_TABLES_MAX + 1,
            max: VERIFIER_TABLES_MAX,
        }
        .into();
        assert_eq!(validate(&over), Err(expected.clone()), "{messages}");
        assert_eq!(from_json(&to_json(&over)), Err(expected));
        let msg = verify_error(from_flatbuffers(&to_flatbuffers(&over)));
        assert!(msg.contains("Too many tables"), "{msg}");
    }
}

// ---------------------------------------------------------------------------------------
// MediaRef.sha256 is required; StoredMessage.system.

/// A Deliver frame whose message has a media ref without `sha256`, built by hand (the
/// generated builder refuses to finish such a table).
fn media_without_sha256() -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let start = fbb.start_table();
    fbb.push_slot::<u64>(fb::MediaRef::VT_SIZE, 7, 0);
    let media = flatbuffers::WIPOffset::<fb::MediaRef>::new(fbb.end_table(start).value());
    let args = fb::StoredMessageArgs {
        seq: 1,
        media: Some(media),
        ..Default::default()
    };
    let message = fb::StoredMessage::create(&mut fbb, &args);
    let args = fb::DeliverArgs {
        message: Some(message),
    };
    let deliver = fb::Deliver::create(&mut fbb, &args).as_union_value();
    let args = fb::FrameArgs {
        request_id: 0,
        body_type: fb::Body::Deliver,
        body: Some(deliver),
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fb::finish_frame_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

#[test]
fn media_ref_without_sha256_is_rejected() {
    let bytes = media_without_sha256();
    let msg = verify_error(from_flatbuffers(&bytes));
    assert!(msg.contains("sha256"), "{msg}");
    assert!(verified_root(&bytes).is_err());
}

#[test]
fn system_message_round_trips_and_is_readable_on_the_view() {
    let event = SystemEvent {
        op: GroupOp::SetRole,
        actor_user_id: 3,
        user_ids: vec![4],
        name: String::new(),
        role: GroupRole::Admin,
    };
    let with_event = system_message(event);
    let bytes = to_flatbuffers(&with_event);
    assert_eq!(from_flatbuffers(&bytes).unwrap(), with_event);
    assert_eq!(from_json(&to_json(&with_event)).unwrap(), with_event);

    let view = verified_root(&bytes).unwrap();
    let message = view.body_as_deliver().unwrap().message();
    assert_eq!(message.kind(), fb::MessageKind::System);
    assert!(message.body().is_none(), "empty body is omitted");
    let system = message.system().unwrap();
    assert_eq!(system.op(), fb::GroupOp::SetRole);
    assert_eq!(system.role(), fb::GroupRole::Admin);
    assert_eq!(system.user_ids().unwrap().iter().collect::<Vec<_>>(), [4]);

    // Without an event, nothing is written for it.
    let plain = frame(Body::Deliver(Deliver {
        message: StoredMessage {
            kind: MessageKind::System,
            ..Default::default()
        },
    }));
    let plain_bytes = to_flatbuffers(&plain);
    assert!(plain_bytes.len() < bytes.len());
    let view = verified_root(&plain_bytes).unwrap();
    assert!(view.body_as_deliver().unwrap().message().system().is_none());
    assert_eq!(from_flatbuffers(&plain_bytes).unwrap(), plain);
}

#[test]
fn unknown_enum_values_inside_system_events_are_errors() {
    let mut fbb = FlatBufferBuilder::new();
    let system = fb::SystemEvent::create(
        &mut fbb,
        &fb::SystemEventArgs {
            op: fb::GroupOp(200),
            ..Default::default()
        },
    );
    let args = fb::StoredMessageArgs {
        kind: fb::MessageKind::System,
        system: Some(system),
        ..Default::default()
    };
    let message = fb::StoredMessage::create(&mut fbb, &args);
    let args = fb::DeliverArgs {
        message: Some(message),
    };
    let deliver = fb::Deliver::create(&mut fbb, &args).as_union_value();
    let args = fb::FrameArgs {
        request_id: 0,
        body_type: fb::Body::Deliver,
        body: Some(deliver),
    };
    let root = fb::Frame::create(&mut fbb, &args);
    fb::finish_frame_buffer(&mut fbb, root);
    let msg = verify_error(from_flatbuffers(fbb.finished_data()));
    assert_eq!(msg, "unknown GroupOp value 200");
}

#[test]
fn standalone_system_event_is_bounded_in_size() {
    let bytes = vec![0u8; MESSAGE_BODY_BYTES_MAX + 1];
    assert_eq!(
        system_event_from_flatbuffers(&bytes),
        Err(CapacityError::FieldTooLarge {
            field: "SystemEvent (bytes)",
            size: MESSAGE_BODY_BYTES_MAX + 1,
            max: MESSAGE_BODY_BYTES_MAX,
        }
        .into())
    );
    // The largest valid event fits.
    let event = SystemEvent {
        user_ids: vec![u64::MAX; USER_IDS_PER_REQUEST_MAX],
        name: "n".repeat(GROUP_NAME_BYTES_MAX),
        ..Default::default()
    };
    let bytes = system_event_to_flatbuffers(&event);
    assert!(bytes.len() <= MESSAGE_BODY_BYTES_MAX);
    assert_eq!(system_event_from_flatbuffers(&bytes).unwrap(), event);
}

#[test]
fn no_schema_field_is_named_type() {
    // `type` is the JSON union tag: a body field of that name could not be encoded.
    let schema = include_str!("../../schema/confab.fbs");
    for line in schema.lines() {
        let code = line.split("//").next().unwrap_or_default().trim_start();
        assert!(!code.starts_with("type:"), "reserved field name: {line}");
        assert!(!code.starts_with("type :"), "reserved field name: {line}");
    }
}

#[test]
fn receipt_list_limits_are_named() {
    assert_eq!(
        limits_table::RECEIPT_UPDATE_STATES.max,
        RECEIPT_STATES_PER_UPDATE_MAX
    );
    assert_eq!(
        limits_table::SYNC_BATCH_RECEIPTS.max,
        SYNC_BATCH_RECEIPT_UPDATES_MAX
    );
    assert_eq!(RECEIPT_STATES_PER_UPDATE_MAX, GROUP_MEMBERS_MAX);
    assert_eq!(SYNC_BATCH_RECEIPT_UPDATES_MAX, CONVERSATION_LIST_MAX);
}

#[test]
fn field_limit_names_are_schema_fields() {
    // "Table.field" with a table and field of the schema.
    let schema = include_str!("../../schema/confab.fbs");
    for limit in limits_table::ALL {
        let (table, field) = limit.field.split_once('.').unwrap();
        let start = schema
            .find(&format!("table {table} {{"))
            .unwrap_or_else(|| panic!("{table}"));
        let end = start + schema[start..].find('}').unwrap();
        assert!(
            schema[start..end].contains(&format!("  {field}: ")),
            "{}",
            limit.field
        );
    }
}
