//! The `confab.v1.json` codec: the [`message`] model as JSON text.
//!
//! # Conventions
//! The JSON form maps the FlatBuffers schema (`schema/confab.fbs`) one to one:
//!
//! - **Frame.** `{"request_id": "42", "body": {"type": "send", ...}}`. `body` is an object
//!   whose `"type"` is the union member's name in snake_case (`"hello"`, `"welcome"`,
//!   `"send"`, `"receipt_update"`, `"conversation_list_request"`,
//!   `"media_presign_response"`...); the other keys of `body` are the fields of that table.
//! - **Field names** are the schema's snake_case field names, unchanged.
//! - **64-bit integers** (`ulong`: ids, sequences, timestamps, sizes) are decimal strings,
//!   `"18446744073709551615"`, because JavaScript numbers lose precision above 2^53 and
//!   Snowflake ids exceed it. On input a JSON number is accepted too (`42` == `"42"`);
//!   negative numbers, fractions, exponents, non-digit characters, and values above
//!   `u64::MAX` are rejected. Lists of ids (`user_ids`) are arrays of such strings.
//! - **Smaller integers** (`uint`, `ushort`) are plain JSON numbers; `bool` is `true`/`false`.
//! - **Byte vectors** (`body`, keys, signatures) are standard base64 with padding
//!   (RFC 4648 §4, `+/`, `=`).
//! - **Fixed-size structs**: `idempotency_key` (16 bytes) and `sha256` (32 bytes) are hex
//!   strings of exactly 32 and 64 digits, written lowercase (uppercase digits are accepted
//!   on input); any other length is rejected.
//! - **Enums** are snake_case strings of the schema names: `"chat"`, `"delivered"`,
//!   `"read"`, `"group_full"`, `"add_members"`. An unknown `ErrorCode` string decodes as
//!   `"unspecified"` (a newer server's error is still an error); an unknown value of any
//!   other enum is rejected.
//! - **Other structs**: `PresenceEntry` is an object like a table:
//!   `{"user_id": "7", "last_seen_ms": "0", "status": "online"}`.
//! - **Defaults.** A missing field takes the schema default (0, `false`, `""`, empty list,
//!   the enum's default, `protocol_version` 1, `PresenceSet.status` `"online"`). Absent
//!   optional sub-tables (e.g. `media`, `system`) are omitted on output and may be omitted
//!   or `null` on input. `(required)` fields (`Send.idempotency_key`, `Deliver.message`,
//!   `ConversationOpened.conversation`, `MediaRef.sha256`, `MediaPresignRequest.sha256`)
//!   and `body` must be present: a media object without `sha256` is rejected
//!   (``missing field `sha256` ``). Output always writes every other field, defaults
//!   included.
//! - **System messages.** A `StoredMessage` of kind `"system"` carries what changed in
//!   `system`, a `SystemEvent` object (`{"op": "add_members", "actor_user_id": "1",
//!   "user_ids": ["2"], "name": "", "role": "member"}`), and an empty `body`.
//! - **Strictness.** Unknown fields (at any depth, including inside `body`), duplicate
//!   fields, an unknown `"type"`, and trailing data are rejected, so typos fail loudly.
//! - **Limits.** The whole text is at most `FRAME_BYTES_MAX` bytes (checked before
//!   parsing), and decoded frames pass the same named field limits as FlatBuffers frames,
//!   and the verifier's table count ([`message::validate`]), so both subprotocols accept
//!   the same frames (up to the total size, which each checks on its own encoding).
//!   Limits count decoded bytes (after base64) and string lengths in UTF-8 bytes.
//!
//! Example (a Send):
//! ```json
//! {"request_id":"7","body":{"type":"send","conversation_id":"9007199254740993",
//!  "idempotency_key":"000102030405060708090a0b0c0d0e0f","kind":"chat",
//!  "body":"aGk=","reply_to_seq":"0"}}
//! ```

use crate::error::{CapacityError, WireError};
use crate::limits::FRAME_BYTES_MAX;
use crate::message::{self, Frame, IdempotencyKey, Sha256};

/// Encodes a frame as JSON text.
pub fn to_json(frame: &Frame) -> String {
    let mut out = Vec::new();
    encode_json(frame, &mut out);
    // serde_json writes UTF-8 only; the fallback is never taken.
    String::from_utf8(out).unwrap_or_default()
}

/// Encodes a frame as JSON into `out`, which is cleared first (reuse it on the hot path).
pub fn encode_json(frame: &Frame, out: &mut Vec<u8>) {
    out.clear();
    // Cannot fail: writing to a Vec does not fail, the model has no maps with non-string
    // keys, and none of its Serialize impls returns an error. Stay panic-free anyway.
    let result = serde_json::to_writer(&mut *out, frame);
    debug_assert!(result.is_ok(), "JSON encoding failed: {result:?}");
    if result.is_err() {
        out.clear();
    }
}

/// Decodes and validates one JSON frame.
pub fn from_json(text: &str) -> Result<Frame, WireError> {
    from_json_slice(text.as_bytes())
}

/// Decodes and validates one JSON frame given as bytes (UTF-8 is checked).
pub fn from_json_slice(bytes: &[u8]) -> Result<Frame, WireError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(CapacityError::FrameTooLarge {
            size: bytes.len() as u64,
            max: FRAME_BYTES_MAX,
        }
        .into());
    }
    let frame: Frame = serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    message::validate(&frame)?;
    Ok(frame)
}

// ---------------------------------------------------------------------------------------
// Serde helpers used by the model's `#[serde(with = ..)]` attributes.

/// Parses a `u64` from a decimal string: digits only (no sign, space or exponent).
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

struct U64Visitor;

impl serde::de::Visitor<'_> for U64Visitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an unsigned 64-bit integer as a decimal string or a JSON number")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format_args!("negative integer {v}")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
        // serde_json yields f64 for fractions, exponents, and integers above u64::MAX.
        Err(E::custom(format_args!(
            "{v} is not an integer in the u64 range"
        )))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
        parse_u64(v).ok_or_else(|| {
            E::custom(format_args!(
                "{v:?} is not a decimal integer in the u64 range"
            ))
        })
    }
}

/// `u64` as a decimal string; accepts a string or a number (serde `with` module).
pub mod u64_str {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(super::U64Visitor)
    }
}

/// One element of a `u64` list, deserialized like [`u64_str`].
struct U64Element(u64);

impl<'de> serde::Deserialize<'de> for U64Element {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(U64Visitor).map(U64Element)
    }
}

/// `Vec<u64>` as an array of decimal strings; elements may also be numbers.
pub(crate) mod u64_vec_str {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(values.len()))?;
        for value in values {
            seq.serialize_element(&format_args!("{value}"))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let items = Vec::<super::U64Element>::deserialize(d)?;
        Ok(items.into_iter().map(|item| item.0).collect())
    }
}

/// `Vec<u8>` as standard base64 with padding.
pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_str(Base64Visitor)
    }

    struct Base64Visitor;

    impl serde::de::Visitor<'_> for Base64Visitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a standard base64 string with padding")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| E::custom(format_args!("invalid base64: {e}")))
        }
    }
}

/// Writes `bytes` as lowercase hex.
fn hex_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            // A nibble is always a valid base-16 digit.
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// Parses exactly `N` bytes of hex (either case); `None` on a bad length or digit.
fn hex_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

struct HexVisitor<const N: usize>;

impl<const N: usize> serde::de::Visitor<'_> for HexVisitor<N> {
    type Value = [u8; N];

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a hex string of exactly {} digits ({N} bytes)", N * 2)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<[u8; N], E> {
        hex_decode::<N>(v).ok_or_else(|| {
            E::custom(format_args!(
                "expected exactly {} hex digits ({N} bytes), got {:?}",
                N * 2,
                v
            ))
        })
    }
}

impl serde::Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexVisitor::<16>).map(IdempotencyKey)
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(HexVisitor::<32>).map(Sha256)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::message::strategies;
    use crate::message::*;

    fn send_frame() -> Frame {
        Frame {
            request_id: 42,
            body: Body::Send(Send {
                conversation_id: 9_007_199_254_740_993, // 2^53 + 1: not a safe JS number
                idempotency_key: IdempotencyKey([
                    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                ]),
                kind: MessageKind::Chat,
                body: b"hi".to_vec(),
                media: None,
                reply_to_seq: 0,
            }),
        }
    }

    fn json_error(text: &str) -> String {
        match from_json(text) {
            Err(WireError::Json(msg)) => msg,
            other => panic!("expected a JSON error for {text}, got {other:?}"),
        }
    }

    #[test]
    fn golden_send() {
        let text = concat!(
            r#"{"request_id":"42","body":{"type":"send","conversation_id":"9007199254740993","#,
            r#""idempotency_key":"000102030405060708090a0b0c0d0e0f","kind":"chat","#,
            r#""body":"aGk=","reply_to_seq":"0"}}"#
        );
        assert_eq!(to_json(&send_frame()), text);
        assert_eq!(from_json(text).unwrap(), send_frame());
    }

    #[test]
    fn golden_ack() {
        let frame = Frame {
            request_id: 42,
            body: Body::Ack(Ack {
                conversation_id: 9_007_199_254_740_993,
                message_id: 7_318_349_394_477_056,
                seq: 17,
                timestamp_ms: 1_700_000_000_000,
                status: AckStatus::Duplicate,
            }),
        };
        let text = concat!(
            r#"{"request_id":"42","body":{"type":"ack","conversation_id":"9007199254740993","#,
            r#""message_id":"7318349394477056","seq":"17","timestamp_ms":"1700000000000","#,
            r#""status":"duplicate"}}"#
        );
        assert_eq!(to_json(&frame), text);
        assert_eq!(from_json(text).unwrap(), frame);
    }

    #[test]
    fn golden_deliver() {
        let frame = Frame {
            request_id: 0,
            body: Body::Deliver(Deliver {
                message: StoredMessage {
                    conversation_id: 5,
                    seq: 17,
                    message_id: u64::MAX,
                    sender_user_id: 1,
                    sender_device_id: 2,
                    timestamp_ms: 3,
                    kind: MessageKind::Encrypted,
                    body: vec![0xff, 0x00, 0x10],
                    media: Some(MediaRef {
                        sha256: Sha256([0xab; 32]),
                        size: 1024,
                        content_type: "image/png".into(),
                        metadata: String::new(),
                    }),
                    reply_to_seq: 16,
                    system: None,
                },
            }),
        };
        let expected = json!({
            "request_id": "0",
            "body": {
                "type": "deliver",
                "message": {
                    "conversation_id": "5",
                    "seq": "17",
                    "message_id": "18446744073709551615",
                    "sender_user_id": "1",
                    "sender_device_id": "2",
                    "timestamp_ms": "3",
                    "kind": "encrypted",
                    "body": "/wAQ",
                    "media": {
                        "sha256": "ab".repeat(32),
                        "size": "1024",
                        "content_type": "image/png",
                        "metadata": ""
                    },
                    "reply_to_seq": "16"
                }
            }
        });
        let text = to_json(&frame);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            expected
        );
        assert!(text.starts_with(r#"{"request_id":"0","body":{"type":"deliver","message":{"#));
        assert_eq!(from_json(&text).unwrap(), frame);
    }

    #[test]
    fn golden_system_message() {
        let frame = Frame {
            request_id: 0,
            body: Body::Deliver(Deliver {
                message: StoredMessage {
                    conversation_id: 5,
                    seq: 18,
                    message_id: 9,
                    sender_user_id: 1,
                    sender_device_id: 0,
                    timestamp_ms: 3,
                    kind: MessageKind::System,
                    body: Vec::new(),
                    media: None,
                    reply_to_seq: 0,
                    system: Some(SystemEvent {
                        op: GroupOp::AddMembers,
                        actor_user_id: 1,
                        user_ids: vec![2, 9_007_199_254_740_993],
                        name: String::new(),
                        role: GroupRole::Member,
                    }),
                },
            }),
        };
        let text = concat!(
            r#"{"request_id":"0","body":{"type":"deliver","message":{"conversation_id":"5","#,
            r#""seq":"18","message_id":"9","sender_user_id":"1","sender_device_id":"0","#,
            r#""timestamp_ms":"3","kind":"system","body":"","reply_to_seq":"0","#,
            r#""system":{"op":"add_members","actor_user_id":"1","#,
            r#""user_ids":["2","9007199254740993"],"name":"","role":"member"}}}}"#
        );
        assert_eq!(to_json(&frame), text);
        assert_eq!(from_json(text).unwrap(), frame);
        // Missing fields of the event take the schema defaults.
        let minimal = concat!(
            r#"{"body":{"type":"deliver","message":{"kind":"system","#,
            r#""system":{"op":"rename","name":"Team"}}}}"#
        );
        let Body::Deliver(deliver) = from_json(minimal).unwrap().body else {
            panic!("not a deliver")
        };
        assert_eq!(
            deliver.message.system,
            Some(SystemEvent {
                op: GroupOp::Rename,
                name: "Team".into(),
                ..SystemEvent::default()
            })
        );
        // `null` is absent, like every optional sub-table; unknown event fields fail.
        let null = r#"{"body":{"type":"deliver","message":{"seq":"1","system":null}}}"#;
        let Body::Deliver(deliver) = from_json(null).unwrap().body else {
            panic!("not a deliver")
        };
        assert_eq!(deliver.message.system, None);
        let msg = json_error(r#"{"body":{"type":"deliver","message":{"system":{"who":"1"}}}}"#);
        assert!(msg.contains("unknown field `who`"), "{msg}");
        let msg = json_error(r#"{"body":{"type":"deliver","message":{"system":{"op":"kick"}}}}"#);
        assert!(msg.contains("unknown variant `kick`"), "{msg}");
    }

    #[test]
    fn media_ref_requires_sha256() {
        let with_media = |media: &str| {
            format!(r#"{{"body":{{"type":"deliver","message":{{"seq":"1","media":{media}}}}}}}"#)
        };
        let msg = json_error(&with_media(r#"{"size":"1","content_type":"image/png"}"#));
        assert!(msg.contains("missing field `sha256`"), "{msg}");
        let msg = json_error(&with_media(r#"{}"#));
        assert!(msg.contains("missing field `sha256`"), "{msg}");
        let msg = json_error(&with_media(r#"{"sha256":null}"#));
        assert!(msg.contains("64 digits"), "{msg}");
        // The same inside Send and MediaPresignResponse.
        let msg = json_error(&format!(
            r#"{{"body":{{"type":"send","idempotency_key":"{}","media":{{"size":"1"}}}}}}"#,
            "0".repeat(32)
        ));
        assert!(msg.contains("missing field `sha256`"), "{msg}");
        let msg = json_error(r#"{"body":{"type":"media_presign_response","media":{}}}"#);
        assert!(msg.contains("missing field `sha256`"), "{msg}");
        // With it, the other fields take their defaults.
        let digest = "ab".repeat(32);
        let frame = from_json(&with_media(&format!(r#"{{"sha256":"{digest}"}}"#))).unwrap();
        let Body::Deliver(deliver) = frame.body else {
            panic!("not a deliver")
        };
        assert_eq!(
            deliver.message.media,
            Some(MediaRef {
                sha256: Sha256([0xab; 32]),
                size: 0,
                content_type: String::new(),
                metadata: String::new(),
            })
        );
    }

    #[test]
    fn golden_error() {
        let frame = Frame {
            request_id: 42,
            body: Body::Error(Error {
                code: ErrorCode::GroupFull,
                message: "group is full".into(),
                retry_after_ms: 0,
            }),
        };
        let text = concat!(
            r#"{"request_id":"42","body":{"type":"error","code":"group_full","#,
            r#""message":"group is full","retry_after_ms":0}}"#
        );
        assert_eq!(to_json(&frame), text);
        assert_eq!(from_json(text).unwrap(), frame);
    }

    #[test]
    fn golden_lists_and_defaults() {
        let frame = Frame {
            request_id: 1,
            body: Body::PresenceSubscribe(PresenceSubscribe {
                user_ids: vec![1, u64::MAX],
            }),
        };
        let text = concat!(
            r#"{"request_id":"1","body":{"type":"presence_subscribe","#,
            r#""user_ids":["1","18446744073709551615"]}}"#
        );
        assert_eq!(to_json(&frame), text);
        // Missing fields take the schema defaults.
        let hello = from_json(r#"{"body":{"type":"hello","token":"t"}}"#).unwrap();
        assert_eq!(
            hello,
            Frame {
                request_id: 0,
                body: Body::Hello(Hello {
                    token: "t".into(),
                    ..Hello::default()
                })
            }
        );
        assert_eq!(Hello::default().protocol_version, 1);
        let set = from_json(r#"{"request_id":"2","body":{"type":"presence_set"}}"#).unwrap();
        assert_eq!(
            set.body,
            Body::PresenceSet(PresenceSet {
                status: PresenceStatus::Online
            })
        );
    }

    #[test]
    fn u64_accepts_numbers_and_strings() {
        let text = concat!(
            r#"{"request_id":42,"body":{"type":"ping","#,
            r#""nonce":18446744073709551615,"client_time_ms":"7"}}"#
        );
        let frame = from_json(text).unwrap();
        assert_eq!(frame.request_id, 42);
        assert_eq!(
            frame.body,
            Body::Ping(Ping {
                nonce: u64::MAX,
                client_time_ms: 7
            })
        );
        let ids = r#"{"body":{"type":"presence_query","user_ids":[1,"2"]}}"#;
        assert_eq!(
            from_json(ids).unwrap().body,
            Body::PresenceQuery(PresenceQuery {
                user_ids: vec![1, 2]
            })
        );
    }

    #[test]
    fn u64_out_of_range_or_malformed_is_rejected() {
        for bad in [
            r#"18446744073709551616"#,
            r#""18446744073709551616""#,
            r#"-1"#,
            r#""-1""#,
            r#""+1""#,
            r#"" 1""#,
            r#""""#,
            r#"1.5"#,
            r#"1e3"#,
            r#""0x10""#,
            r#"null"#,
            r#"true"#,
        ] {
            let text = format!(r#"{{"request_id":{bad},"body":{{"type":"keys_low"}}}}"#);
            json_error(&text);
            let text = format!(r#"{{"body":{{"type":"ping","nonce":{bad}}}}}"#);
            json_error(&text);
        }
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_depth() {
        let msg = json_error(r#"{"request_id":"1","extra":1,"body":{"type":"keys_low"}}"#);
        assert!(msg.contains("unknown field `extra`"), "{msg}");
        let msg = json_error(r#"{"body":{"type":"ping","nonce":"1","nonse":"2"}}"#);
        assert!(msg.contains("unknown field `nonse`"), "{msg}");
        let msg = json_error(concat!(
            r#"{"body":{"type":"deliver","message":{"seq":"1","#,
            r#""media":{"size":"1","colour":"red"}}}}"#
        ));
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn unknown_or_missing_type_is_rejected() {
        let msg = json_error(r#"{"body":{"type":"sned"}}"#);
        assert!(msg.contains("unknown variant `sned`"), "{msg}");
        let msg = json_error(r#"{"body":{"nonce":"1"}}"#);
        assert!(msg.contains("missing field `type`"), "{msg}");
        let msg = json_error(r#"{"request_id":"1"}"#);
        assert!(msg.contains("missing field `body`"), "{msg}");
    }

    #[test]
    fn idempotency_key_must_be_32_hex_digits() {
        let with_key = |key: &str| {
            format!(
                r#"{{"body":{{"type":"send","conversation_id":"1","idempotency_key":"{key}"}}}}"#
            )
        };
        for bad in [
            "00",
            &"0".repeat(31),
            &"0".repeat(33),
            &"0".repeat(64),
            &"zz".repeat(16),
        ] {
            let msg = json_error(&with_key(bad));
            assert!(
                msg.contains("expected exactly 32 hex digits (16 bytes)"),
                "{msg}"
            );
        }
        let upper = from_json(&with_key(&"AB".repeat(16))).unwrap();
        let Body::Send(send) = upper.body else {
            panic!("not a send")
        };
        assert_eq!(send.idempotency_key, IdempotencyKey([0xab; 16]));
        // Required: no default.
        let msg = json_error(r#"{"body":{"type":"send","conversation_id":"1"}}"#);
        assert!(msg.contains("missing field `idempotency_key`"), "{msg}");
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        let msg = json_error(&format!(
            r#"{{"body":{{"type":"media_presign_request","sha256":"{}"}}}}"#,
            "0".repeat(62)
        ));
        assert!(
            msg.contains("expected exactly 64 hex digits (32 bytes)"),
            "{msg}"
        );
    }

    #[test]
    fn bytes_must_be_padded_standard_base64() {
        let key = "0".repeat(32);
        for bad in ["aGk", "aGk=\\n", " aGk=", "a-_=", "!!!!"] {
            let text =
                format!(r#"{{"body":{{"type":"send","idempotency_key":"{key}","body":"{bad}"}}}}"#);
            let msg = json_error(&text);
            assert!(msg.contains("invalid base64"), "{msg}");
        }
    }

    #[test]
    fn enums_are_snake_case_and_strict_except_error_code() {
        let msg = json_error(r#"{"body":{"type":"receipt","kind":"seen"}}"#);
        assert!(
            msg.contains("unknown variant `seen`, expected `delivered` or `read`"),
            "{msg}"
        );
        let msg = json_error(r#"{"body":{"type":"receipt","kind":"Read"}}"#);
        assert!(msg.contains("unknown variant `Read`"), "{msg}");
        let msg = json_error(r#"{"body":{"type":"receipt","kind":1}}"#);
        assert!(msg.contains("ReceiptKind name"), "{msg}");
        let frame = from_json(r#"{"body":{"type":"error","code":"quota_exceeded"}}"#).unwrap();
        assert_eq!(frame.body, Body::Error(Error::default()));
    }

    #[test]
    fn null_optional_table_is_absent() {
        let text = r#"{"body":{"type":"media_presign_response","media":null,"exists":true}}"#;
        let frame = from_json(text).unwrap();
        let expected = MediaPresignResponse {
            exists: true,
            ..Default::default()
        };
        assert_eq!(frame.body, Body::MediaPresignResponse(expected));
    }

    #[test]
    fn duplicate_fields_and_trailing_data_are_rejected() {
        let msg = json_error(r#"{"body":{"type":"ping","nonce":"1","nonce":"2"}}"#);
        assert!(msg.contains("duplicate field `nonce`"), "{msg}");
        json_error(r#"{"body":{"type":"keys_low"}} {}"#);
        json_error(r#"{"body":{"type":"keys_low"}"#);
        json_error("");
    }

    #[test]
    fn oversize_text_is_rejected_before_parsing() {
        let text = " ".repeat(FRAME_BYTES_MAX + 1);
        assert_eq!(
            from_json(&text),
            Err(CapacityError::FrameTooLarge {
                size: FRAME_BYTES_MAX as u64 + 1,
                max: FRAME_BYTES_MAX
            }
            .into())
        );
    }

    #[test]
    fn oversize_body_is_a_capacity_error_naming_the_field() {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(vec![
            0u8;
            crate::limits::MESSAGE_BODY_BYTES_MAX
                + 1
        ]);
        let text = format!(
            r#"{{"body":{{"type":"send","idempotency_key":"{}","body":"{body}"}}}}"#,
            "0".repeat(32)
        );
        assert_eq!(
            from_json(&text),
            Err(CapacityError::FieldTooLarge {
                field: "Send.body",
                size: crate::limits::MESSAGE_BODY_BYTES_MAX + 1,
                max: crate::limits::MESSAGE_BODY_BYTES_MAX,
            }
            .into())
        );
    }

    #[test]
    fn encode_json_reuses_the_buffer() {
        let mut out = b"stale".to_vec();
        encode_json(&send_frame(), &mut out);
        assert_eq!(out, to_json(&send_frame()).into_bytes());
        assert_eq!(from_json_slice(&out).unwrap(), send_frame());
        assert!(from_json_slice(b"\xff").is_err());
    }

    proptest! {
        #[test]
        fn any_frame_round_trips_through_json(frame in strategies::frame()) {
            let text = to_json(&frame);
            prop_assert_eq!(from_json(&text).unwrap(), frame);
        }

        #[test]
        fn flatbuffers_to_json_to_flatbuffers_is_lossless(frame in strategies::frame()) {
            let bytes = to_flatbuffers(&frame);
            let via_json = from_json(&to_json(&from_flatbuffers(&bytes).unwrap())).unwrap();
            prop_assert_eq!(to_flatbuffers(&via_json), bytes);
        }

        #[test]
        fn u64_strings_and_numbers_agree(n in any::<u64>()) {
            let as_string = format!(r#"{{"request_id":"{n}","body":{{"type":"keys_low"}}}}"#);
            let as_number = format!(r#"{{"request_id":{n},"body":{{"type":"keys_low"}}}}"#);
            prop_assert_eq!(from_json(&as_string).unwrap().request_id, n);
            prop_assert_eq!(from_json(&as_number).unwrap().request_id, n);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = from_json(&text);
        }

        #[test]
        fn hex_round_trips(key in strategies::idempotency_key(), digest in strategies::sha256()) {
            let text = serde_json::to_string(&key).unwrap();
            prop_assert_eq!(text.len(), 34);
            prop_assert_eq!(serde_json::from_str::<IdempotencyKey>(&text).unwrap(), key);
            let text = serde_json::to_string(&digest).unwrap();
            prop_assert_eq!(text.len(), 66);
            prop_assert_eq!(serde_json::from_str::<Sha256>(&text).unwrap(), digest);
        }
    }
}
