//! Optional end-to-end encryption (feature `e2ee`): Olm between devices, Megolm for groups,
//! built on [`vodozemac`].
//!
//! The server stores and relays opaque bytes only: it keeps every device's public keys
//! (`KeysUpload`, handed out as `KeyBundle`s, each one-time key at most once) and carries
//! `MessageKind::Encrypted` bodies it cannot read. Everything below is the client's
//! business, and this page is the contract other client authors (JavaScript...) implement.
//!
//! One [`E2eeDevice`] is one device's cryptographic state: its Olm account, its Olm
//! sessions with other devices, its Megolm sessions, and what it has seen of others'
//! identities. Persist it with [`E2eeDevice::pickle`] after every call that changes it
//! (every call but `pickle`): a stale copy has stale ratchets.
//!
//! # Keys (what a device publishes)
//!
//! `KeysUpload`, built by [`E2eeDevice::keys_upload`]:
//! - `identity_key`: the device's Ed25519 signing key (32 bytes) followed by its
//!   Curve25519 identity key (32 bytes): 64 bytes.
//! - `signed_pre_key`: the Olm *fallback key* (Curve25519, 32 bytes); `signature` is the
//!   Ed25519 signature, by the device's signing key, of those 32 key bytes (64 bytes).
//! - `one_time_keys`: Olm one-time keys (Curve25519, 32 bytes each), at most 100 per
//!   upload; `key_id`s are a per-device counter (the fallback key takes ids from the same
//!   counter).
//!
//! A sender starts an Olm session with a device from its bundle's one-time key, or, when the
//! pool was empty (no `one_time_key`), from the signed pre-key after checking its
//! signature. A one-time key is used for at most one session, even if a bundle is reused.
//!
//! # Envelopes (the `body` of an encrypted message)
//!
//! UTF-8 JSON objects. Binary values are **standard base64 with padding** (RFC 4648 §4,
//! as everywhere in `confab.v1.json`); user, device and conversation ids are **decimal
//! strings**. Receivers ignore unknown fields. Olm is vodozemac/libolm Olm v1
//! (`SessionConfig::version_1`, truncated MACs, the Matrix `m.olm.v1` byte format), Megolm
//! is Megolm v1 (`m.megolm.v1` byte format): `olm_type` and the raw bytes of `body` are
//! what `OlmMessage::to_parts` gives (libolm: `type` and the base64-decoded `body`).
//!
//! ## Direct messages: `"alg": "olm"`
//!
//! ```json
//! {
//!   "v": 1,
//!   "alg": "olm",
//!   "sender_key": "<base64 Curve25519 identity key of the sending device>",
//!   "sender_signing_key": "<base64 Ed25519 key of the sending device>",
//!   "ciphertexts": [
//!     {"user_id": "2", "device_id": "5", "olm_type": 0, "body": "<base64 Olm message>"}
//!   ]
//! }
//! ```
//!
//! One ciphertext per recipient device: every device of the peer and the sender's own
//! other devices (so all of a user's devices can read the conversation). `olm_type` is 0
//! (pre-key message: the session is not confirmed yet) or 1 (normal message). Each Olm
//! plaintext is this JSON ("payload"):
//!
//! ```json
//! {"type": "message", "conversation_id": "9",
//!  "sender_user_id": "1", "sender_device_id": "3", "sender_signing_key": "<base64>",
//!  "recipient_user_id": "2", "recipient_device_id": "5",
//!  "body": "<base64 application plaintext>"}
//! ```
//!
//! ## Groups: `"alg": "megolm"`
//!
//! ```json
//! {
//!   "v": 1,
//!   "alg": "megolm",
//!   "sender_key": "<base64 Curve25519>",
//!   "sender_signing_key": "<base64 Ed25519>",
//!   "session_id": "<the Megolm session id, as vodozemac prints it (unpadded base64)>",
//!   "ciphertext": "<base64 Megolm message>",
//!   "room_keys": [
//!     {"user_id": "2", "device_id": "5", "olm_type": 0, "body": "<base64 Olm message>"}
//!   ]
//! }
//! ```
//!
//! The Megolm plaintext is:
//!
//! ```json
//! {"conversation_id": "9", "sender_user_id": "1", "sender_device_id": "3",
//!  "body": "<base64 application plaintext>"}
//! ```
//!
//! `room_keys` (possibly empty) carries the Megolm session key to the devices that do not
//! have it yet, one Olm ciphertext each, whose payload is:
//!
//! ```json
//! {"type": "room_key", "conversation_id": "9",
//!  "sender_user_id": "1", "sender_device_id": "3", "sender_signing_key": "<base64>",
//!  "recipient_user_id": "2", "recipient_device_id": "5",
//!  "session_id": "<same as the envelope>", "session_key": "<base64 Megolm SessionKey>"}
//! ```
//!
//! A sender starts a new Megolm session for a conversation when it has none, or when a
//! device that had the current one is no longer among the recipients (a member left or a
//! device was removed): leavers cannot read what follows. A device added later gets the
//! key, at the current ratchet index, with the next message (it cannot read earlier ones).
//!
//! ## What a receiver checks
//! 1. `v` is 1 and `alg` is known; keys are 32 bytes.
//! 2. The sender's keys match what it saw before for the `(user, device)` the **server**
//!    names as the sender (trust on first use), else `IdentityChanged`.
//! 3. Its own entry, by `user_id`/`device_id`; Olm-decrypt it with the session of
//!    `sender_key` (a pre-key message whose session id is known goes to that session; a new
//!    one creates a session from the one-time or fallback key it names).
//! 4. The payload: `type`, the sender ids equal the server's, `sender_signing_key` equals
//!    the envelope's, the recipient ids are its own, and `conversation_id` is the
//!    conversation the message was stored in (`WrongConversation`): a ciphertext copied
//!    into another conversation does not decrypt as that conversation. For a room key, the
//!    key's session id equals `session_id`.
//! 5. Megolm: the session must belong to this conversation and to this sender (the device
//!    that sent its room key); a known session skips `room_keys`; the Megolm plaintext
//!    names the conversation and the sender again (Megolm messages are signed by the
//!    session's creator, so only it can write them).
//!
//! # Trust model
//!
//! The server sees who talks to whom (sender, conversation, how many recipient devices and
//! which), sizes and timing, and the public keys; it does not see message contents or
//! Megolm keys. Identities are **trust on first use**: the first keys seen for a
//! `(user, device)` (from a bundle or a message) are pinned; different keys later are an
//! [`E2eeError::IdentityChanged`] until the application calls
//! [`E2eeDevice::forget_device`] (e.g. after the user compared fingerprints or accepted a
//! reinstalled device). A server that lies *before* first contact can impersonate a
//! device; one that lies later is caught. The server can also drop, delay, reorder or
//! replay messages within their conversation; it cannot forge, alter or move them. A group
//! member holds the keys of the sessions shared with it: it could pass one on, as its own,
//! to a device that does not have it yet; that device then refuses the real sender's
//! messages in that session (`WrongSender`), but it cannot be made to accept forged ones.
//!
//! # Things to know
//! - **Olm ciphertexts decrypt once**: the message key is deleted after use (forward
//!   secrecy), so a direct message decrypted again (e.g. re-read from history) fails. Keep
//!   the plaintext. Megolm (group) messages can be decrypted again.
//! - **Own direct messages**: a device cannot decrypt its own Olm ciphertexts; it gets
//!   [`E2eeError::SentByThisDevice`] and should show the plaintext it kept when sending.
//!   The sender's *other* devices read them from their own entries. Own group messages do
//!   decrypt (the sender keeps an inbound copy of its Megolm session).
//! - **Room keys travel inside messages**: a device reading history newest-first gets
//!   [`E2eeError::NoSession`] for a Megolm session whose key is in an older message; retry
//!   after that one. If an encrypted group message could not be sent at all, call
//!   [`E2eeDevice::discard_group_session`] so that its room keys go out again.
//! - **Bundles**: pass every current device (the peer's bundle and your own user's) to
//!   each `encrypt_*` call. A bundle may be cached: its one-time key is used at most once,
//!   later sessions from it use the verified fallback key.
//! - **Size**: envelopes must fit the 64 KiB message body limit ([`E2eeError::TooLarge`]
//!   otherwise). A direct envelope carries the plaintext once per recipient device (about
//!   1.8 times its size, plus ~0.5 KiB); a room key adds about 1 KiB, so one group message
//!   can bring about 60 devices into a Megolm session (a larger first send to a big group
//!   is refused; there is no separate key-distribution message yet).
//! - Nothing from the network panics: every malformed input is a typed [`E2eeError`].
//! - The pickle format is private to this module (not part of the contract).

use std::collections::{HashMap, HashSet};
use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use vodozemac::megolm::{self, GroupSession, InboundGroupSession, MegolmMessage, SessionKey};
use vodozemac::olm::{self, Account, OlmMessage, Session};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};
use zeroize::Zeroizing;

use crate::limits::{MESSAGE_BODY_BYTES_MAX, ONE_TIME_KEYS_PER_UPLOAD_MAX};
use crate::message::{DeviceKeyBundle, KeyBundle, KeysUpload, OneTimeKey, SignedPreKey};

/// The envelope version this module writes and reads (`"v"`).
pub const ENVELOPE_VERSION: u64 = 1;

/// `"alg"` of a direct (per-device Olm) envelope.
pub const ALG_OLM: &str = "olm";

/// `"alg"` of a group (Megolm) envelope.
pub const ALG_MEGOLM: &str = "megolm";

/// Olm sessions kept per peer device (newest used first; the oldest is dropped).
const OLM_SESSIONS_PER_DEVICE_MAX: usize = 8;

/// Pickle format version (first byte of the decoded pickle).
const PICKLE_VERSION: u8 = 1;

/// Associated data of the pickle's AEAD.
const PICKLE_AAD: &[u8] = b"confab-e2ee-device-pickle-v1";

const PAYLOAD_MESSAGE: &str = "message";
const PAYLOAD_ROOM_KEY: &str = "room_key";

/// Everything that can go wrong encrypting, decrypting or restoring.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// The body is not a well-formed envelope (not JSON, missing fields, bad base64, wrong
    /// key lengths, an undecodable Olm/Megolm message, a malformed decrypted payload).
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    /// A well-formed envelope of a version or algorithm this build does not know.
    #[error("unsupported envelope: {0}")]
    Unsupported(String),
    /// The envelope has no ciphertext for this device (it was not a recipient).
    #[error("the envelope has no ciphertext for this device")]
    NotForThisDevice,
    /// A direct (Olm) message sent by this very device: it cannot decrypt its own Olm
    /// ciphertexts (use the plaintext kept when sending).
    #[error("this device sent this direct message and cannot decrypt it")]
    SentByThisDevice,
    /// No session can decrypt this: an unknown Megolm session (its key may be in an older
    /// message not processed yet) or an Olm normal message without a matching session.
    #[error("no session to decrypt this message")]
    NoSession,
    /// A signed pre-key whose signature does not verify with the device's signing key.
    #[error("bad signature on the signed pre-key of user {user_id} device {device_id}")]
    BadSignature { user_id: u64, device_id: u64 },
    /// The device's keys differ from those seen before (trust on first use).
    #[error("the identity keys of user {user_id} device {device_id} changed")]
    IdentityChanged { user_id: u64, device_id: u64 },
    /// A key in a bundle is unusable (wrong length, not a valid point...).
    #[error("invalid key for user {user_id} device {device_id}: {reason}")]
    InvalidKey {
        user_id: u64,
        device_id: u64,
        reason: String,
    },
    /// The device has no session with us and its bundle offers no usable pre-key.
    #[error("user {user_id} device {device_id} has no usable pre-key")]
    NoPreKey { user_id: u64, device_id: u64 },
    /// The bundles name no device other than this one.
    #[error("no recipient devices")]
    NoRecipients,
    /// The message (or room key) belongs to another conversation.
    #[error("the message belongs to another conversation")]
    WrongConversation,
    /// The decrypted message names a sender (or recipient) other than the one the server
    /// says, or a Megolm session is used by a device that does not own it.
    #[error("the message does not come from the device the server names")]
    WrongSender,
    /// The envelope would exceed the server's message body limit.
    #[error("envelope of {size} bytes exceeds the {max}-byte message body limit")]
    TooLarge { size: usize, max: usize },
    /// Authentication or decryption failed (tampered, replayed or already used message).
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// Encryption failed (should not happen with valid keys).
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// A pickle could not be written or restored (wrong key, corrupted, other version).
    #[error("pickle: {0}")]
    Pickle(String),
}

fn malformed(what: impl fmt::Display) -> E2eeError {
    E2eeError::MalformedEnvelope(what.to_string())
}

/// A device's two public identity keys.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    signing: Ed25519PublicKey,
    curve: Curve25519PublicKey,
}

impl Identity {
    /// Parse `identity_key` as published: Ed25519 (32 bytes) || Curve25519 (32 bytes).
    fn from_published(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 64 {
            return None;
        }
        let (signing, curve) = bytes.split_at(32);
        Self::from_parts(signing, curve)
    }

    fn from_parts(signing: &[u8], curve: &[u8]) -> Option<Self> {
        let signing: &[u8; 32] = signing.try_into().ok()?;
        Some(Identity {
            signing: Ed25519PublicKey::from_slice(signing).ok()?,
            curve: Curve25519PublicKey::from_slice(curve).ok()?,
        })
    }

    fn published(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(self.signing.as_bytes());
        out.extend_from_slice(self.curve.as_bytes());
        out
    }
}

/// This device's current fallback key (the published signed pre-key).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct FallbackKey {
    key_id: u64,
    public_key: Curve25519PublicKey,
}

/// The Megolm session this device sends with in one conversation.
struct OutboundGroup {
    session: GroupSession,
    /// The devices that were given this session's key, with the key they had then.
    shared_with: HashMap<(u64, u64), Curve25519PublicKey>,
}

/// A Megolm session this device can decrypt with (its own or another device's).
struct InboundGroup {
    conversation_id: u64,
    sender_user_id: u64,
    sender_device_id: u64,
    sender_key: Curve25519PublicKey,
    session: InboundGroupSession,
}

/// One device's end-to-end encryption state; see the [module docs](self).
pub struct E2eeDevice {
    user_id: u64,
    device_id: u64,
    account: Account,
    /// Next `key_id` for a published key (one-time or fallback).
    next_key_id: u64,
    fallback: Option<FallbackKey>,
    /// Olm sessions by the peer device's Curve25519 key; the last one is preferred.
    olm: HashMap<Curve25519PublicKey, Vec<Session>>,
    /// Trust on first use: the keys first seen for each `(user, device)`.
    known: HashMap<(u64, u64), Identity>,
    /// Others' one-time keys this device has started a session from (never twice).
    used_one_time_keys: HashSet<Curve25519PublicKey>,
    /// Outbound Megolm session by conversation.
    outbound: HashMap<u64, OutboundGroup>,
    /// Inbound Megolm sessions by session id.
    inbound: HashMap<String, InboundGroup>,
}

impl fmt::Debug for E2eeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public parts and counts only: never key material.
        f.debug_struct("E2eeDevice")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("curve25519", &self.account.curve25519_key().to_base64())
            .field("olm_peers", &self.olm.len())
            .field("known_devices", &self.known.len())
            .field("outbound_group_sessions", &self.outbound.len())
            .field("inbound_group_sessions", &self.inbound.len())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// JSON shapes (the contract described in the module docs).

/// Just enough of an envelope to pick the parser (and refuse unknown versions clearly).
#[derive(Deserialize)]
struct EnvelopeHeader {
    v: u64,
    alg: String,
}

#[derive(Serialize, Deserialize)]
struct OlmEnvelope {
    v: u64,
    alg: String,
    #[serde(with = "crate::json::base64_bytes")]
    sender_key: Vec<u8>,
    #[serde(with = "crate::json::base64_bytes")]
    sender_signing_key: Vec<u8>,
    ciphertexts: Vec<OlmCiphertext>,
}

#[derive(Serialize, Deserialize)]
struct MegolmEnvelope {
    v: u64,
    alg: String,
    #[serde(with = "crate::json::base64_bytes")]
    sender_key: Vec<u8>,
    #[serde(with = "crate::json::base64_bytes")]
    sender_signing_key: Vec<u8>,
    session_id: String,
    #[serde(with = "crate::json::base64_bytes")]
    ciphertext: Vec<u8>,
    #[serde(default)]
    room_keys: Vec<OlmCiphertext>,
}

#[derive(Serialize, Deserialize)]
struct OlmCiphertext {
    #[serde(with = "crate::json::u64_str")]
    user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    device_id: u64,
    olm_type: u8,
    #[serde(with = "crate::json::base64_bytes")]
    body: Vec<u8>,
}

/// The plaintext inside every Olm ciphertext.
#[derive(Serialize, Deserialize)]
struct OlmPayload {
    #[serde(rename = "type")]
    kind: String,
    #[serde(with = "crate::json::u64_str")]
    conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    sender_user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    sender_device_id: u64,
    #[serde(with = "crate::json::base64_bytes")]
    sender_signing_key: Vec<u8>,
    #[serde(with = "crate::json::u64_str")]
    recipient_user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    recipient_device_id: u64,
    /// `"message"`: the application plaintext.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::json::base64_bytes"
    )]
    body: Vec<u8>,
    /// `"room_key"`: the Megolm session id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    session_id: String,
    /// `"room_key"`: the Megolm session key.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::json::base64_bytes"
    )]
    session_key: Vec<u8>,
}

impl Drop for OlmPayload {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.body.zeroize();
        self.session_key.zeroize();
    }
}

/// The plaintext inside a Megolm message.
#[derive(Serialize, Deserialize)]
struct MegolmPayload {
    #[serde(with = "crate::json::u64_str")]
    conversation_id: u64,
    #[serde(with = "crate::json::u64_str")]
    sender_user_id: u64,
    #[serde(with = "crate::json::u64_str")]
    sender_device_id: u64,
    #[serde(with = "crate::json::base64_bytes")]
    body: Vec<u8>,
}

/// A recipient device from the bundles, parsed and checked against the TOFU pins.
struct Recipient<'a> {
    user_id: u64,
    device_id: u64,
    identity: Identity,
    bundle: &'a DeviceKeyBundle,
}

impl Recipient<'_> {
    fn ids(&self) -> (u64, u64) {
        (self.user_id, self.device_id)
    }

    fn invalid(&self, reason: impl fmt::Display) -> E2eeError {
        E2eeError::InvalidKey {
            user_id: self.user_id,
            device_id: self.device_id,
            reason: reason.to_string(),
        }
    }
}

/// An outbound Olm session created (not yet stored) for a recipient without one.
struct NewSession {
    curve: Curve25519PublicKey,
    session: Session,
    one_time_key: Option<Curve25519PublicKey>,
}

impl E2eeDevice {
    /// A new device with fresh identity keys. `user_id`/`device_id` are the ids the server
    /// gave this device (they are put into, and checked in, every payload).
    pub fn new(user_id: u64, device_id: u64) -> Self {
        let account = Account::new();
        let own = Identity {
            signing: account.ed25519_key(),
            curve: account.curve25519_key(),
        };
        let mut known = HashMap::new();
        known.insert((user_id, device_id), own);
        E2eeDevice {
            user_id,
            device_id,
            account,
            next_key_id: 1,
            fallback: None,
            olm: HashMap::new(),
            known,
            used_one_time_keys: HashSet::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
        }
    }

    /// This device's user id.
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// This device's device id.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// The published identity key: Ed25519 (32 bytes) || Curve25519 (32 bytes). Its base64
    /// is a fingerprint users can compare.
    pub fn identity_key(&self) -> Vec<u8> {
        self.own_identity().published()
    }

    fn own_identity(&self) -> Identity {
        Identity {
            signing: self.account.ed25519_key(),
            curve: self.account.curve25519_key(),
        }
    }

    fn take_key_id(&mut self) -> u64 {
        let id = self.next_key_id;
        self.next_key_id = self.next_key_id.wrapping_add(1);
        id
    }

    /// The keys to publish, marked as published: the identity key, the signed pre-key
    /// (the fallback key, created on the first call) and `one_time_keys` fresh one-time
    /// keys (at most [`ONE_TIME_KEYS_PER_UPLOAD_MAX`]; 0 is fine). Every upload carries the
    /// identity and signed pre-key, so a retried or repeated upload is harmless. Call it
    /// again with a count after a `KeysLow` push.
    pub fn keys_upload(&mut self, one_time_keys: usize) -> KeysUpload {
        if self.fallback.is_none() {
            self.new_fallback_key();
        }
        let count = one_time_keys.min(ONE_TIME_KEYS_PER_UPLOAD_MAX);
        let created = self.account.generate_one_time_keys(count).created;
        let one_time_keys = created
            .into_iter()
            .map(|key| OneTimeKey {
                key_id: self.take_key_id(),
                public_key: key.to_vec(),
            })
            .collect();
        self.account.mark_keys_as_published();
        KeysUpload {
            identity_key: self.identity_key(),
            signed_pre_key: self.signed_pre_key(),
            one_time_keys,
        }
    }

    /// Replace the fallback key (the signed pre-key) with a new one, published by the next
    /// [`keys_upload`](Self::keys_upload). The previous one still works for sessions that
    /// peers start with it meanwhile (vodozemac keeps one previous fallback key).
    pub fn rotate_fallback_key(&mut self) {
        self.new_fallback_key();
    }

    fn new_fallback_key(&mut self) {
        self.account.generate_fallback_key();
        if let Some(public_key) = self.account.fallback_key().into_values().next() {
            let key_id = self.take_key_id();
            self.fallback = Some(FallbackKey { key_id, public_key });
        }
    }

    fn signed_pre_key(&self) -> Option<SignedPreKey> {
        self.fallback.map(|fallback| SignedPreKey {
            key_id: fallback.key_id,
            public_key: fallback.public_key.to_vec(),
            signature: self
                .account
                .sign(fallback.public_key.as_bytes())
                .to_bytes()
                .to_vec(),
        })
    }

    /// The devices `(user_id, device_id)` this device has an Olm session with, sorted.
    pub fn devices_with_session(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<_> = self
            .known
            .iter()
            .filter(|(_, identity)| self.olm.get(&identity.curve).is_some_and(|s| !s.is_empty()))
            .map(|(ids, _)| *ids)
            .filter(|ids| *ids != (self.user_id, self.device_id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Forget what this device knows about another device: its pinned identity (trust on
    /// first use starts over, e.g. after a reinstall the user accepted) and its Olm
    /// sessions. Megolm sessions already shared with its old keys are rotated on the next
    /// group message.
    pub fn forget_device(&mut self, user_id: u64, device_id: u64) {
        if (user_id, device_id) == (self.user_id, self.device_id) {
            return;
        }
        if let Some(identity) = self.known.remove(&(user_id, device_id)) {
            self.olm.remove(&identity.curve);
        }
    }

    /// Drop the outbound Megolm session of a conversation: the next
    /// [`encrypt_group`](Self::encrypt_group) starts a new one and sends its key to every
    /// device. Use it when an encrypted group message could not be delivered to the server
    /// at all (its room keys were lost with it). Received sessions are kept.
    pub fn discard_group_session(&mut self, conversation_id: u64) {
        self.outbound.remove(&conversation_id);
    }

    // ------------------------------------------------------------------------------------
    // Encryption.

    /// Encrypt `plaintext` for a direct conversation: one Olm ciphertext for every device
    /// in `bundles` (pass the peer's bundle and this user's own; this device is skipped).
    /// Olm sessions are created as needed from the bundles' one-time keys, or from the
    /// verified signed pre-key when there is none (or it was used before).
    ///
    /// Nothing is changed when an error is returned for a bundle (`IdentityChanged`,
    /// `BadSignature`, `NoPreKey`, `InvalidKey`).
    pub fn encrypt_direct(
        &mut self,
        conversation_id: u64,
        bundles: &[KeyBundle],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let recipients = self.recipients(bundles)?;
        if recipients.is_empty() {
            return Err(E2eeError::NoRecipients);
        }
        let new_sessions = self.plan_sessions(recipients.iter())?;
        self.commit(&recipients, new_sessions);
        let mut ciphertexts = Vec::with_capacity(recipients.len());
        for recipient in &recipients {
            let mut payload = self.payload(PAYLOAD_MESSAGE, conversation_id, recipient);
            payload.body = plaintext.to_vec();
            ciphertexts.push(self.olm_encrypt(recipient, &payload)?);
        }
        let own = self.own_identity();
        let envelope = OlmEnvelope {
            v: ENVELOPE_VERSION,
            alg: ALG_OLM.to_owned(),
            sender_key: own.curve.to_vec(),
            sender_signing_key: own.signing.as_bytes().to_vec(),
            ciphertexts,
        };
        seal(&envelope)
    }

    /// Encrypt `plaintext` for a group conversation with this device's Megolm session for
    /// it. `bundles` are the bundles of every current member (this user's included, for
    /// its other devices). The session key is sent (Olm) to every device that does not
    /// have it yet; a new session is started when a device that had the key is no longer
    /// in `bundles` (a member left), so it cannot read what follows.
    pub fn encrypt_group(
        &mut self,
        conversation_id: u64,
        bundles: &[KeyBundle],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let recipients = self.recipients(bundles)?;
        let current: HashMap<(u64, u64), Curve25519PublicKey> = recipients
            .iter()
            .map(|r| (r.ids(), r.identity.curve))
            .collect();
        let rotate = match self.outbound.get(&conversation_id) {
            None => true,
            Some(group) => group
                .shared_with
                .iter()
                .any(|(ids, key)| current.get(ids) != Some(key)),
        };
        let needs_key: Vec<&Recipient<'_>> = recipients
            .iter()
            .filter(|r| {
                rotate
                    || self
                        .outbound
                        .get(&conversation_id)
                        .is_none_or(|g| !g.shared_with.contains_key(&r.ids()))
            })
            .collect();
        // Everything that can fail for a bundle fails here, before anything changes.
        let new_sessions = self.plan_sessions(needs_key.iter().copied())?;
        if rotate {
            self.start_group_session(conversation_id);
        }
        self.commit(&recipients, new_sessions);

        let (session_id, session_key) = match self.outbound.get(&conversation_id) {
            Some(group) => (group.session.session_id(), group.session.session_key()),
            None => return Err(E2eeError::Encrypt("no outbound group session".into())),
        };
        let session_key = Zeroizing::new(session_key.to_bytes());
        let mut room_keys = Vec::with_capacity(needs_key.len());
        let mut shared = Vec::with_capacity(needs_key.len());
        for recipient in &needs_key {
            let mut payload = self.payload(PAYLOAD_ROOM_KEY, conversation_id, recipient);
            payload.session_id = session_id.clone();
            payload.session_key = session_key.to_vec();
            room_keys.push(self.olm_encrypt(recipient, &payload)?);
            shared.push((recipient.ids(), recipient.identity.curve));
        }

        let inner = Zeroizing::new(
            serde_json::to_vec(&MegolmPayload {
                conversation_id,
                sender_user_id: self.user_id,
                sender_device_id: self.device_id,
                body: plaintext.to_vec(),
            })
            .map_err(|e| E2eeError::Encrypt(e.to_string()))?,
        );
        let own = self.own_identity();
        let Some(group) = self.outbound.get_mut(&conversation_id) else {
            return Err(E2eeError::Encrypt("no outbound group session".into()));
        };
        let ciphertext = group.session.encrypt(inner.as_slice()).to_bytes();
        let envelope = MegolmEnvelope {
            v: ENVELOPE_VERSION,
            alg: ALG_MEGOLM.to_owned(),
            sender_key: own.curve.to_vec(),
            sender_signing_key: own.signing.as_bytes().to_vec(),
            session_id,
            ciphertext,
            room_keys,
        };
        // Only devices whose key is in an envelope that can be sent count as served.
        let sealed = seal(&envelope)?;
        group.shared_with.extend(shared);
        Ok(sealed)
    }

    fn start_group_session(&mut self, conversation_id: u64) {
        let session = GroupSession::new(megolm::SessionConfig::version_1());
        // Keep an inbound copy so this device can read its own messages (history).
        let inbound =
            InboundGroupSession::new(&session.session_key(), megolm::SessionConfig::version_1());
        let own = self.own_identity();
        self.inbound.insert(
            session.session_id(),
            InboundGroup {
                conversation_id,
                sender_user_id: self.user_id,
                sender_device_id: self.device_id,
                sender_key: own.curve,
                session: inbound,
            },
        );
        self.outbound.insert(
            conversation_id,
            OutboundGroup {
                session,
                shared_with: HashMap::new(),
            },
        );
    }

    /// Every device of `bundles` but this one, deduplicated, identity parsed and checked.
    fn recipients<'a>(&self, bundles: &'a [KeyBundle]) -> Result<Vec<Recipient<'a>>, E2eeError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for bundle in bundles {
            for device in &bundle.devices {
                let ids = (bundle.user_id, device.device_id);
                if ids == (self.user_id, self.device_id) || !seen.insert(ids) {
                    continue;
                }
                let identity = Identity::from_published(&device.identity_key).ok_or_else(|| {
                    E2eeError::InvalidKey {
                        user_id: ids.0,
                        device_id: ids.1,
                        reason: "identity_key must be ed25519 (32 bytes) || curve25519 (32 bytes)"
                            .into(),
                    }
                })?;
                self.check_pin(ids, &identity)?;
                out.push(Recipient {
                    user_id: ids.0,
                    device_id: ids.1,
                    identity,
                    bundle: device,
                });
            }
        }
        Ok(out)
    }

    /// Trust on first use: keys for `ids` must equal those seen before, if any.
    fn check_pin(&self, ids: (u64, u64), identity: &Identity) -> Result<(), E2eeError> {
        match self.known.get(&ids) {
            Some(pinned) if pinned != identity => Err(E2eeError::IdentityChanged {
                user_id: ids.0,
                device_id: ids.1,
            }),
            _ => Ok(()),
        }
    }

    /// Outbound Olm sessions for the recipients that have none, created but not stored.
    fn plan_sessions<'r, 'a: 'r>(
        &self,
        recipients: impl Iterator<Item = &'r Recipient<'a>>,
    ) -> Result<Vec<NewSession>, E2eeError> {
        let mut out: Vec<NewSession> = Vec::new();
        for recipient in recipients {
            let curve = recipient.identity.curve;
            if self.olm.get(&curve).is_some_and(|s| !s.is_empty())
                || out.iter().any(|n| n.curve == curve)
            {
                continue;
            }
            let planned = |key: &Curve25519PublicKey| {
                self.used_one_time_keys.contains(key)
                    || out.iter().any(|n| n.one_time_key.as_ref() == Some(key))
            };
            let (pre_key, one_time_key) = pick_pre_key(recipient, planned)?;
            let session = self
                .account
                .create_outbound_session(olm::SessionConfig::version_1(), curve, pre_key)
                .map_err(|e| recipient.invalid(e))?;
            out.push(NewSession {
                curve,
                session,
                one_time_key,
            });
        }
        Ok(out)
    }

    /// Store planned sessions, remember their one-time keys, pin the recipients.
    fn commit(&mut self, recipients: &[Recipient<'_>], new_sessions: Vec<NewSession>) {
        for new in new_sessions {
            if let Some(key) = new.one_time_key {
                self.used_one_time_keys.insert(key);
            }
            push_session(self.olm.entry(new.curve).or_default(), new.session);
        }
        for recipient in recipients {
            self.known
                .entry(recipient.ids())
                .or_insert(recipient.identity);
        }
    }

    fn payload(&self, kind: &str, conversation_id: u64, recipient: &Recipient<'_>) -> OlmPayload {
        OlmPayload {
            kind: kind.to_owned(),
            conversation_id,
            sender_user_id: self.user_id,
            sender_device_id: self.device_id,
            sender_signing_key: self.account.ed25519_key().as_bytes().to_vec(),
            recipient_user_id: recipient.user_id,
            recipient_device_id: recipient.device_id,
            body: Vec::new(),
            session_id: String::new(),
            session_key: Vec::new(),
        }
    }

    /// Olm-encrypt `payload` with the preferred session of `recipient`.
    fn olm_encrypt(
        &mut self,
        recipient: &Recipient<'_>,
        payload: &OlmPayload,
    ) -> Result<OlmCiphertext, E2eeError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(payload).map_err(|e| E2eeError::Encrypt(e.to_string()))?,
        );
        let session = self
            .olm
            .get_mut(&recipient.identity.curve)
            .and_then(|sessions| sessions.last_mut())
            .ok_or(E2eeError::NoSession)?;
        let message = session
            .encrypt(bytes.as_slice())
            .map_err(|e| E2eeError::Encrypt(e.to_string()))?;
        let (olm_type, body) = message.to_parts();
        Ok(OlmCiphertext {
            user_id: recipient.user_id,
            device_id: recipient.device_id,
            olm_type: u8::try_from(olm_type).map_err(|e| E2eeError::Encrypt(e.to_string()))?,
            body,
        })
    }

    // ------------------------------------------------------------------------------------
    // Decryption.

    /// Decrypt an envelope (either algorithm) stored in `conversation_id` and sent, as the
    /// server says, by `sender_user_id`'s device `sender_device_id`. Checks the sender's
    /// keys against those seen before (trust on first use), that the message names this
    /// conversation, this sender and this device. Returns the application plaintext.
    pub fn decrypt(
        &mut self,
        conversation_id: u64,
        sender_user_id: u64,
        sender_device_id: u64,
        body: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let header: EnvelopeHeader = serde_json::from_slice(body).map_err(malformed)?;
        if header.v != ENVELOPE_VERSION {
            return Err(E2eeError::Unsupported(format!("version {}", header.v)));
        }
        let sender = (sender_user_id, sender_device_id);
        match header.alg.as_str() {
            ALG_OLM => {
                let envelope: OlmEnvelope = serde_json::from_slice(body).map_err(malformed)?;
                let identity = self.sender_identity(
                    sender,
                    &envelope.sender_signing_key,
                    &envelope.sender_key,
                )?;
                self.decrypt_direct(conversation_id, sender, identity, &envelope)
            }
            ALG_MEGOLM => {
                let envelope: MegolmEnvelope = serde_json::from_slice(body).map_err(malformed)?;
                let identity = self.sender_identity(
                    sender,
                    &envelope.sender_signing_key,
                    &envelope.sender_key,
                )?;
                self.decrypt_group(conversation_id, sender, identity, &envelope)
            }
            other => Err(E2eeError::Unsupported(format!("algorithm {other:?}"))),
        }
    }

    fn sender_identity(
        &self,
        sender: (u64, u64),
        signing: &[u8],
        curve: &[u8],
    ) -> Result<Identity, E2eeError> {
        let identity = Identity::from_parts(signing, curve)
            .ok_or_else(|| malformed("sender keys must be 32-byte ed25519 and curve25519 keys"))?;
        self.check_pin(sender, &identity)?;
        Ok(identity)
    }

    fn own_entry<'e>(&self, entries: &'e [OlmCiphertext]) -> Option<&'e OlmCiphertext> {
        entries
            .iter()
            .find(|c| c.user_id == self.user_id && c.device_id == self.device_id)
    }

    fn decrypt_direct(
        &mut self,
        conversation_id: u64,
        sender: (u64, u64),
        identity: Identity,
        envelope: &OlmEnvelope,
    ) -> Result<Vec<u8>, E2eeError> {
        if sender == (self.user_id, self.device_id) {
            return Err(E2eeError::SentByThisDevice);
        }
        let entry = self
            .own_entry(&envelope.ciphertexts)
            .ok_or(E2eeError::NotForThisDevice)?;
        let mut payload = self.olm_decrypt(identity.curve, entry)?;
        self.check_payload(
            &payload,
            PAYLOAD_MESSAGE,
            conversation_id,
            sender,
            &identity,
        )?;
        self.known.entry(sender).or_insert(identity);
        Ok(std::mem::take(&mut payload.body))
    }

    fn decrypt_group(
        &mut self,
        conversation_id: u64,
        sender: (u64, u64),
        identity: Identity,
        envelope: &MegolmEnvelope,
    ) -> Result<Vec<u8>, E2eeError> {
        let message = MegolmMessage::from_bytes(&envelope.ciphertext).map_err(malformed)?;
        if !self.inbound.contains_key(&envelope.session_id) {
            self.accept_room_key(conversation_id, sender, identity, envelope)?;
        }
        let group = self
            .inbound
            .get_mut(&envelope.session_id)
            .ok_or(E2eeError::NoSession)?;
        if group.conversation_id != conversation_id {
            return Err(E2eeError::WrongConversation);
        }
        if (group.sender_user_id, group.sender_device_id) != sender
            || group.sender_key != identity.curve
        {
            return Err(E2eeError::WrongSender);
        }
        let decrypted = group
            .session
            .decrypt(&message)
            .map_err(|e| E2eeError::Decrypt(e.to_string()))?;
        let plaintext = Zeroizing::new(decrypted.plaintext);
        let mut payload: MegolmPayload = serde_json::from_slice(&plaintext).map_err(malformed)?;
        if payload.conversation_id != conversation_id {
            return Err(E2eeError::WrongConversation);
        }
        if (payload.sender_user_id, payload.sender_device_id) != sender {
            return Err(E2eeError::WrongSender);
        }
        Ok(std::mem::take(&mut payload.body))
    }

    /// Take this device's room key out of `envelope` (the session is unknown so far).
    fn accept_room_key(
        &mut self,
        conversation_id: u64,
        sender: (u64, u64),
        identity: Identity,
        envelope: &MegolmEnvelope,
    ) -> Result<(), E2eeError> {
        if sender == (self.user_id, self.device_id) {
            // Our own session, lost (e.g. a pickle older than the message).
            return Err(E2eeError::NoSession);
        }
        let Some(entry) = self.own_entry(&envelope.room_keys) else {
            return Err(E2eeError::NoSession);
        };
        let payload = self.olm_decrypt(identity.curve, entry)?;
        self.check_payload(
            &payload,
            PAYLOAD_ROOM_KEY,
            conversation_id,
            sender,
            &identity,
        )?;
        if payload.session_id != envelope.session_id {
            return Err(malformed("room key for another session"));
        }
        let key = SessionKey::from_bytes(&payload.session_key).map_err(malformed)?;
        let session = InboundGroupSession::new(&key, megolm::SessionConfig::version_1());
        if session.session_id() != envelope.session_id {
            return Err(malformed("room key does not match its session id"));
        }
        self.known.entry(sender).or_insert(identity);
        self.inbound.insert(
            envelope.session_id.clone(),
            InboundGroup {
                conversation_id,
                sender_user_id: sender.0,
                sender_device_id: sender.1,
                sender_key: identity.curve,
                session,
            },
        );
        Ok(())
    }

    /// Olm-decrypt `entry` from the device whose Curve25519 key is `sender_key`.
    fn olm_decrypt(
        &mut self,
        sender_key: Curve25519PublicKey,
        entry: &OlmCiphertext,
    ) -> Result<OlmPayload, E2eeError> {
        let message =
            OlmMessage::from_parts(usize::from(entry.olm_type), &entry.body).map_err(malformed)?;
        let plaintext = Zeroizing::new(match &message {
            OlmMessage::PreKey(pre_key) => {
                let session_id = pre_key.session_id();
                let known = self.olm.get_mut(&sender_key).and_then(|sessions| {
                    let index = sessions.iter().position(|s| s.session_id() == session_id)?;
                    Some((sessions, index))
                });
                if let Some((sessions, index)) = known {
                    decrypt_with(sessions, index, &message)?
                } else {
                    let created = self
                        .account
                        .create_inbound_session(
                            olm::SessionConfig::version_1(),
                            sender_key,
                            pre_key,
                        )
                        .map_err(|e| E2eeError::Decrypt(e.to_string()))?;
                    // Stored even if the payload turns out wrong: the session is authentic
                    // (it proves the sender's key) and its one-time key is spent.
                    push_session(self.olm.entry(sender_key).or_default(), created.session);
                    created.plaintext
                }
            }
            OlmMessage::Normal(_) => {
                let sessions = self.olm.get_mut(&sender_key).ok_or(E2eeError::NoSession)?;
                let mut result = Err(E2eeError::NoSession);
                for index in (0..sessions.len()).rev() {
                    result = decrypt_with(sessions, index, &message);
                    if result.is_ok() {
                        break;
                    }
                }
                result?
            }
        });
        serde_json::from_slice(&plaintext).map_err(malformed)
    }

    fn check_payload(
        &self,
        payload: &OlmPayload,
        kind: &str,
        conversation_id: u64,
        sender: (u64, u64),
        identity: &Identity,
    ) -> Result<(), E2eeError> {
        if payload.kind != kind {
            return Err(malformed(format_args!(
                "expected a {kind:?} payload, got {:?}",
                payload.kind
            )));
        }
        if (payload.sender_user_id, payload.sender_device_id) != sender
            || payload.sender_signing_key.as_slice() != identity.signing.as_bytes()
        {
            return Err(E2eeError::WrongSender);
        }
        if (payload.recipient_user_id, payload.recipient_device_id)
            != (self.user_id, self.device_id)
        {
            return Err(E2eeError::NotForThisDevice);
        }
        if payload.conversation_id != conversation_id {
            return Err(E2eeError::WrongConversation);
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Persistence.

    /// The whole state, encrypted and authenticated (XChaCha20-Poly1305) with `key`, as a
    /// base64 string. Store it after every change; restore with
    /// [`from_pickle`](Self::from_pickle). Fails only without OS randomness.
    pub fn pickle(&self, key: &[u8; 32]) -> Result<String, E2eeError> {
        let state = DevicePickle {
            user_id: self.user_id,
            device_id: self.device_id,
            account: self.account.pickle(),
            next_key_id: self.next_key_id,
            fallback: self.fallback,
            olm: self
                .olm
                .iter()
                .map(|(peer, sessions)| PeerPickle {
                    peer: *peer,
                    sessions: sessions.iter().map(Session::pickle).collect(),
                })
                .collect(),
            known: self
                .known
                .iter()
                .map(|(ids, identity)| KnownPickle {
                    user_id: ids.0,
                    device_id: ids.1,
                    signing: identity.signing,
                    curve: identity.curve,
                })
                .collect(),
            used_one_time_keys: self.used_one_time_keys.iter().copied().collect(),
            outbound: self
                .outbound
                .iter()
                .map(|(conversation_id, group)| OutboundPickle {
                    conversation_id: *conversation_id,
                    session: group.session.pickle(),
                    shared_with: group
                        .shared_with
                        .iter()
                        .map(|(ids, key)| (ids.0, ids.1, *key))
                        .collect(),
                })
                .collect(),
            inbound: self
                .inbound
                .values()
                .map(|group| InboundPickle {
                    conversation_id: group.conversation_id,
                    sender_user_id: group.sender_user_id,
                    sender_device_id: group.sender_device_id,
                    sender_key: group.sender_key,
                    session: group.session.pickle(),
                })
                .collect(),
        };
        let json = Zeroizing::new(
            serde_json::to_vec(&state).map_err(|e| E2eeError::Pickle(e.to_string()))?,
        );
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| E2eeError::Pickle(e.to_string()))?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: json.as_slice(),
                    aad: PICKLE_AAD,
                },
            )
            .map_err(|e| E2eeError::Pickle(e.to_string()))?;
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(PICKLE_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Restore a device from [`pickle`](Self::pickle) output and the same key.
    pub fn from_pickle(pickle: &str, key: &[u8; 32]) -> Result<Self, E2eeError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(pickle.trim())
            .map_err(|e| E2eeError::Pickle(e.to_string()))?;
        let (version, rest) = raw
            .split_first()
            .ok_or_else(|| E2eeError::Pickle("empty".into()))?;
        if *version != PICKLE_VERSION {
            return Err(E2eeError::Pickle(format!("unknown version {version}")));
        }
        if rest.len() < 24 {
            return Err(E2eeError::Pickle("truncated".into()));
        }
        let (nonce, ciphertext) = rest.split_at(24);
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| E2eeError::Pickle("truncated".into()))?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let json = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: PICKLE_AAD,
                    },
                )
                .map_err(|_| E2eeError::Pickle("wrong key or corrupted pickle".into()))?,
        );
        let state: DevicePickle =
            serde_json::from_slice(&json).map_err(|e| E2eeError::Pickle(e.to_string()))?;
        Ok(E2eeDevice {
            user_id: state.user_id,
            device_id: state.device_id,
            account: Account::from_pickle(state.account),
            next_key_id: state.next_key_id,
            fallback: state.fallback,
            olm: state
                .olm
                .into_iter()
                .map(|peer| {
                    let sessions = peer
                        .sessions
                        .into_iter()
                        .map(Session::from_pickle)
                        .collect();
                    (peer.peer, sessions)
                })
                .collect(),
            known: state
                .known
                .into_iter()
                .map(|k| {
                    let identity = Identity {
                        signing: k.signing,
                        curve: k.curve,
                    };
                    ((k.user_id, k.device_id), identity)
                })
                .collect(),
            used_one_time_keys: state.used_one_time_keys.into_iter().collect(),
            outbound: state
                .outbound
                .into_iter()
                .map(|o| {
                    let group = OutboundGroup {
                        session: GroupSession::from_pickle(o.session),
                        shared_with: o
                            .shared_with
                            .into_iter()
                            .map(|(user, device, key)| ((user, device), key))
                            .collect(),
                    };
                    (o.conversation_id, group)
                })
                .collect(),
            inbound: state
                .inbound
                .into_iter()
                .map(|i| {
                    let session = InboundGroupSession::from_pickle(i.session);
                    let group = InboundGroup {
                        conversation_id: i.conversation_id,
                        sender_user_id: i.sender_user_id,
                        sender_device_id: i.sender_device_id,
                        sender_key: i.sender_key,
                        session,
                    };
                    (group.session.session_id(), group)
                })
                .collect(),
        })
    }
}

/// The pre-key to start a session with `recipient`: its one-time key unless `used(key)`
/// (then, or without one, its signed pre-key, whose signature must verify).
fn pick_pre_key(
    recipient: &Recipient<'_>,
    used: impl Fn(&Curve25519PublicKey) -> bool,
) -> Result<(Curve25519PublicKey, Option<Curve25519PublicKey>), E2eeError> {
    if let Some(one_time) = &recipient.bundle.one_time_key {
        let key = Curve25519PublicKey::from_slice(&one_time.public_key)
            .map_err(|e| recipient.invalid(format_args!("one-time key: {e}")))?;
        if !used(&key) {
            return Ok((key, Some(key)));
        }
    }
    let Some(signed) = &recipient.bundle.signed_pre_key else {
        return Err(E2eeError::NoPreKey {
            user_id: recipient.user_id,
            device_id: recipient.device_id,
        });
    };
    let key = Curve25519PublicKey::from_slice(&signed.public_key)
        .map_err(|e| recipient.invalid(format_args!("signed pre-key: {e}")))?;
    let bad_signature = || E2eeError::BadSignature {
        user_id: recipient.user_id,
        device_id: recipient.device_id,
    };
    let signature = Ed25519Signature::from_slice(&signed.signature).map_err(|_| bad_signature())?;
    recipient
        .identity
        .signing
        .verify(&signed.public_key, &signature)
        .map_err(|_| bad_signature())?;
    Ok((key, None))
}

/// Add a session as the preferred one, dropping the oldest beyond the cap.
fn push_session(sessions: &mut Vec<Session>, session: Session) {
    sessions.push(session);
    if sessions.len() > OLM_SESSIONS_PER_DEVICE_MAX {
        sessions.remove(0);
    }
}

/// Decrypt with `sessions[index]`; on success it becomes the preferred session (so both
/// sides converge on the session that last worked).
fn decrypt_with(
    sessions: &mut Vec<Session>,
    index: usize,
    message: &OlmMessage,
) -> Result<Vec<u8>, E2eeError> {
    let session = sessions.get_mut(index).ok_or(E2eeError::NoSession)?;
    let plaintext = session
        .decrypt(message)
        .map_err(|e| E2eeError::Decrypt(e.to_string()))?;
    let session = sessions.remove(index);
    sessions.push(session);
    Ok(plaintext)
}

/// Serialize an envelope, refusing one the server would refuse.
fn seal(envelope: &impl Serialize) -> Result<Vec<u8>, E2eeError> {
    let bytes = serde_json::to_vec(envelope).map_err(|e| E2eeError::Encrypt(e.to_string()))?;
    if bytes.len() > MESSAGE_BODY_BYTES_MAX {
        return Err(E2eeError::TooLarge {
            size: bytes.len(),
            max: MESSAGE_BODY_BYTES_MAX,
        });
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------
// Pickle shapes (private format).

#[derive(Serialize, Deserialize)]
struct DevicePickle {
    user_id: u64,
    device_id: u64,
    account: olm::AccountPickle,
    next_key_id: u64,
    fallback: Option<FallbackKey>,
    olm: Vec<PeerPickle>,
    known: Vec<KnownPickle>,
    used_one_time_keys: Vec<Curve25519PublicKey>,
    outbound: Vec<OutboundPickle>,
    inbound: Vec<InboundPickle>,
}

#[derive(Serialize, Deserialize)]
struct PeerPickle {
    peer: Curve25519PublicKey,
    sessions: Vec<olm::SessionPickle>,
}

#[derive(Serialize, Deserialize)]
struct KnownPickle {
    user_id: u64,
    device_id: u64,
    signing: Ed25519PublicKey,
    curve: Curve25519PublicKey,
}

#[derive(Serialize, Deserialize)]
struct OutboundPickle {
    conversation_id: u64,
    session: megolm::GroupSessionPickle,
    shared_with: Vec<(u64, u64, Curve25519PublicKey)>,
}

#[derive(Serialize, Deserialize)]
struct InboundPickle {
    conversation_id: u64,
    sender_user_id: u64,
    sender_device_id: u64,
    sender_key: Curve25519PublicKey,
    session: megolm::InboundGroupSessionPickle,
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;

    use super::*;

    const ALICE: u64 = 1;
    const BOB: u64 = 2;
    const CAROL: u64 = 3;
    const DAVE: u64 = 4;
    const DIRECT: u64 = 100;
    const GROUP: u64 = 200;

    /// What the server holds for one device: identity key, signed pre-key, one-time keys.
    type Published = (Vec<u8>, Option<SignedPreKey>, VecDeque<OneTimeKey>);

    /// The server's key directory, as far as these tests need it: one one-time key per
    /// device per fetch, each handed out once.
    #[derive(Default)]
    struct Directory {
        devices: BTreeMap<(u64, u64), Published>,
    }

    impl Directory {
        fn upload(&mut self, device: &mut E2eeDevice, one_time_keys: usize) {
            let upload = device.keys_upload(one_time_keys);
            let entry = self
                .devices
                .entry((device.user_id(), device.device_id()))
                .or_default();
            entry.0 = upload.identity_key;
            if upload.signed_pre_key.is_some() {
                entry.1 = upload.signed_pre_key;
            }
            entry.2.extend(upload.one_time_keys);
        }

        fn fetch(&mut self, user_id: u64) -> KeyBundle {
            let devices = self
                .devices
                .iter_mut()
                .filter(|((user, _), _)| *user == user_id)
                .map(
                    |((_, device_id), (identity_key, signed, pool))| DeviceKeyBundle {
                        device_id: *device_id,
                        identity_key: identity_key.clone(),
                        signed_pre_key: signed.clone(),
                        one_time_key: pool.pop_front(),
                    },
                )
                .collect();
            KeyBundle { user_id, devices }
        }

        fn fetch_all(&mut self, users: &[u64]) -> Vec<KeyBundle> {
            users.iter().map(|user| self.fetch(*user)).collect()
        }
    }

    fn device(directory: &mut Directory, user_id: u64, device_id: u64) -> E2eeDevice {
        let mut device = E2eeDevice::new(user_id, device_id);
        directory.upload(&mut device, 5);
        device
    }

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    /// `olm_type` of every ciphertext of an Olm envelope.
    fn olm_types(body: &[u8]) -> Vec<u64> {
        json(body)["ciphertexts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["olm_type"].as_u64().unwrap())
            .collect()
    }

    /// The pre-key the (pre-key) Olm message for `(user, device)` was started from.
    fn pre_key_used(body: &[u8], user_id: u64, device_id: u64) -> Curve25519PublicKey {
        let envelope = json(body);
        let entry = envelope["ciphertexts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| {
                c["user_id"] == *user_id.to_string() && c["device_id"] == *device_id.to_string()
            })
            .unwrap();
        let bytes = STANDARD.decode(entry["body"].as_str().unwrap()).unwrap();
        match OlmMessage::from_parts(entry["olm_type"].as_u64().unwrap() as usize, &bytes) {
            Ok(OlmMessage::PreKey(pre_key)) => pre_key.one_time_key(),
            other => panic!("not a pre-key message: {other:?}"),
        }
    }

    fn edit(body: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value = json(body);
        f(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    /// Flip the last byte of a base64 field (inside a MAC or signature).
    fn flip_last_byte(field: &mut serde_json::Value) {
        let mut bytes = STANDARD.decode(field.as_str().unwrap()).unwrap();
        *bytes.last_mut().unwrap() ^= 0x01;
        *field = serde_json::Value::String(STANDARD.encode(bytes));
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn keys_upload_publishes_identity_signed_fallback_and_fresh_one_time_keys() {
        let mut alice = E2eeDevice::new(ALICE, 1);
        let first = alice.keys_upload(3);
        assert_eq!(first.identity_key.len(), 64);
        assert_eq!(first.identity_key, alice.identity_key());
        let identity = Identity::from_published(&first.identity_key).unwrap();
        let signed = first.signed_pre_key.clone().unwrap();
        assert_eq!(signed.public_key.len(), 32);
        let signature = Ed25519Signature::from_slice(&signed.signature).unwrap();
        identity
            .signing
            .verify(&signed.public_key, &signature)
            .unwrap();
        assert_eq!(first.one_time_keys.len(), 3);
        assert!(first.one_time_keys.iter().all(|k| k.public_key.len() == 32));

        let second = alice.keys_upload(1000);
        assert_eq!(second.one_time_keys.len(), ONE_TIME_KEYS_PER_UPLOAD_MAX);
        assert_eq!(second.identity_key, first.identity_key);
        assert_eq!(second.signed_pre_key, first.signed_pre_key);
        let mut ids: Vec<u64> = first
            .one_time_keys
            .iter()
            .chain(&second.one_time_keys)
            .map(|k| k.key_id)
            .chain([signed.key_id])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            3 + ONE_TIME_KEYS_PER_UPLOAD_MAX + 1,
            "key ids are unique"
        );
        let keys: HashSet<&Vec<u8>> = first
            .one_time_keys
            .iter()
            .chain(&second.one_time_keys)
            .map(|k| &k.public_key)
            .collect();
        assert_eq!(keys.len(), 3 + ONE_TIME_KEYS_PER_UPLOAD_MAX);

        alice.rotate_fallback_key();
        let third = alice.keys_upload(0);
        let rotated = third.signed_pre_key.unwrap();
        assert_ne!(rotated.public_key, signed.public_key);
        assert!(rotated.key_id > signed.key_id);
        assert!(third.one_time_keys.is_empty());
    }

    #[test]
    fn direct_messages_both_ways_prekey_then_normal_and_out_of_order() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);

        let to_bob = dir.fetch_all(&[BOB, ALICE]);
        let sent: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                alice
                    .encrypt_direct(DIRECT, &to_bob, format!("a{i}").as_bytes())
                    .unwrap()
            })
            .collect();
        for envelope in &sent {
            assert_eq!(
                olm_types(envelope),
                [0],
                "pre-key messages until Bob answers"
            );
        }
        // Out of order (skipped message keys are kept).
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &sent[2]).unwrap(), b"a2");
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &sent[0]).unwrap(), b"a0");
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &sent[1]).unwrap(), b"a1");
        // An Olm ciphertext decrypts once.
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &sent[1]),
            Err(E2eeError::Decrypt(_))
        ));
        assert_eq!(bob.devices_with_session(), [(ALICE, 1)]);

        // Bob answers on the session Alice started: normal messages.
        let to_alice = dir.fetch_all(&[ALICE, BOB]);
        let replies: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                bob.encrypt_direct(DIRECT, &to_alice, format!("b{i}").as_bytes())
                    .unwrap()
            })
            .collect();
        for envelope in &replies {
            assert_eq!(olm_types(envelope), [1]);
        }
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &replies[1]).unwrap(), b"b1");
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &replies[0]).unwrap(), b"b0");
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &replies[2]).unwrap(), b"b2");

        // Now Alice's session is confirmed too.
        for round in 0..4 {
            let a = alice
                .encrypt_direct(DIRECT, &to_bob, format!("a-{round}").as_bytes())
                .unwrap();
            assert_eq!(olm_types(&a), [1]);
            assert_eq!(
                bob.decrypt(DIRECT, ALICE, 1, &a).unwrap(),
                format!("a-{round}").as_bytes()
            );
            let b = bob
                .encrypt_direct(DIRECT, &to_alice, format!("b-{round}").as_bytes())
                .unwrap();
            assert_eq!(olm_types(&b), [1]);
            assert_eq!(
                alice.decrypt(DIRECT, BOB, 1, &b).unwrap(),
                format!("b-{round}").as_bytes()
            );
        }
        // One session each way, no matter how often the bundles were passed.
        assert_eq!(alice.olm.values().map(Vec::len).sum::<usize>(), 1);
        assert_eq!(bob.olm.values().map(Vec::len).sum::<usize>(), 1);

        // The sender cannot decrypt its own direct message.
        assert!(matches!(
            alice.decrypt(DIRECT, ALICE, 1, &sent[0]),
            Err(E2eeError::SentByThisDevice)
        ));
    }

    #[test]
    fn simultaneous_first_messages_converge() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let to_bob = dir.fetch_all(&[BOB]);
        let to_alice = dir.fetch_all(&[ALICE]);
        let a = alice.encrypt_direct(DIRECT, &to_bob, b"hi bob").unwrap();
        let b = bob.encrypt_direct(DIRECT, &to_alice, b"hi alice").unwrap();
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &a).unwrap(), b"hi bob");
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &b).unwrap(), b"hi alice");
        for i in 0..3 {
            let a = alice.encrypt_direct(DIRECT, &to_bob, &[i]).unwrap();
            assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &a).unwrap(), [i]);
            let b = bob.encrypt_direct(DIRECT, &to_alice, &[i]).unwrap();
            assert_eq!(alice.decrypt(DIRECT, BOB, 1, &b).unwrap(), [i]);
        }
    }

    #[test]
    fn multi_device_every_other_device_reads_it() {
        let mut dir = Directory::default();
        let mut alice1 = device(&mut dir, ALICE, 1);
        let mut alice2 = device(&mut dir, ALICE, 2);
        let mut bob1 = device(&mut dir, BOB, 1);
        let mut bob2 = device(&mut dir, BOB, 2);

        let bundles = dir.fetch_all(&[BOB, ALICE]);
        let envelope = alice1
            .encrypt_direct(DIRECT, &bundles, b"hello all")
            .unwrap();
        assert_eq!(olm_types(&envelope).len(), 3, "bob1, bob2, alice2");
        assert_eq!(
            bob1.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(),
            b"hello all"
        );
        assert_eq!(
            bob2.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(),
            b"hello all"
        );
        assert_eq!(
            alice2.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(),
            b"hello all"
        );
        assert!(matches!(
            alice1.decrypt(DIRECT, ALICE, 1, &envelope),
            Err(E2eeError::SentByThisDevice)
        ));

        let bundles = dir.fetch_all(&[ALICE, BOB]);
        let reply = bob2.encrypt_direct(DIRECT, &bundles, b"reply").unwrap();
        assert_eq!(olm_types(&reply).len(), 3, "alice1, alice2, bob1");
        assert_eq!(alice1.decrypt(DIRECT, BOB, 2, &reply).unwrap(), b"reply");
        assert_eq!(alice2.decrypt(DIRECT, BOB, 2, &reply).unwrap(), b"reply");
        assert_eq!(bob1.decrypt(DIRECT, BOB, 2, &reply).unwrap(), b"reply");
        assert_eq!(
            bob2.devices_with_session(),
            [(ALICE, 1), (ALICE, 2), (BOB, 1)]
        );
    }

    #[test]
    fn empty_pool_falls_back_to_the_signed_pre_key_and_forgeries_are_refused() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = E2eeDevice::new(BOB, 1);
        dir.upload(&mut bob, 0);
        let bundle = dir.fetch(BOB);
        assert!(bundle.devices[0].one_time_key.is_none());
        let signed = bundle.devices[0].signed_pre_key.clone().unwrap();

        // A signature that does not verify.
        let mut forged = bundle.clone();
        forged.devices[0].signed_pre_key.as_mut().unwrap().signature[10] ^= 0x40;
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[forged], b"x"),
            Err(E2eeError::BadSignature {
                user_id: BOB,
                device_id: 1
            })
        ));
        // Another key under Bob's signature (the server substituting its own pre-key).
        let mut swapped = bundle.clone();
        swapped.devices[0]
            .signed_pre_key
            .as_mut()
            .unwrap()
            .public_key =
            Curve25519PublicKey::from(&vodozemac::Curve25519SecretKey::new()).to_vec();
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[swapped], b"x"),
            Err(E2eeError::BadSignature { .. })
        ));
        // A garbage signature length.
        let mut short = bundle.clone();
        short.devices[0]
            .signed_pre_key
            .as_mut()
            .unwrap()
            .signature
            .truncate(10);
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[short], b"x"),
            Err(E2eeError::BadSignature { .. })
        ));
        // No pre-key at all.
        let mut bare = bundle.clone();
        bare.devices[0].signed_pre_key = None;
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[bare], b"x"),
            Err(E2eeError::NoPreKey {
                user_id: BOB,
                device_id: 1
            })
        ));
        // A bad identity key.
        let mut bad_identity = bundle.clone();
        bad_identity.devices[0].identity_key.pop();
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[bad_identity], b"x"),
            Err(E2eeError::InvalidKey { .. })
        ));
        // Refusals change nothing.
        assert!(alice.devices_with_session().is_empty());
        assert!(alice.olm.is_empty());

        let envelope = alice
            .encrypt_direct(DIRECT, &[bundle], b"via fallback")
            .unwrap();
        assert_eq!(
            pre_key_used(&envelope, BOB, 1).to_vec(),
            signed.public_key,
            "started from the fallback key"
        );
        assert_eq!(
            bob.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(),
            b"via fallback"
        );
        let reply = bob
            .encrypt_direct(DIRECT, &dir.fetch_all(&[ALICE]), b"got it")
            .unwrap();
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &reply).unwrap(), b"got it");
    }

    #[test]
    fn a_one_time_key_is_never_used_twice() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let bundle = dir.fetch(BOB);
        let one_time = bundle.devices[0].one_time_key.clone().unwrap();
        let signed = bundle.devices[0].signed_pre_key.clone().unwrap();

        let first = alice
            .encrypt_direct(DIRECT, std::slice::from_ref(&bundle), b"one")
            .unwrap();
        assert_eq!(pre_key_used(&first, BOB, 1).to_vec(), one_time.public_key);
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &first).unwrap(), b"one");

        // The session is gone (e.g. the user reset trust) and the cached bundle is reused:
        // the spent one-time key is not used again, the fallback key is.
        alice.forget_device(BOB, 1);
        assert!(alice.devices_with_session().is_empty());
        let second = alice
            .encrypt_direct(DIRECT, std::slice::from_ref(&bundle), b"two")
            .unwrap();
        assert_eq!(pre_key_used(&second, BOB, 1).to_vec(), signed.public_key);
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &second).unwrap(), b"two");

        // Two devices offered the same one-time key in one call (a lying server): it is
        // used for one of them; the other session starts from that device's fallback key.
        let mut carol1 = device(&mut dir, CAROL, 1);
        let mut carol2 = device(&mut dir, CAROL, 2);
        let mut carols = dir.fetch(CAROL);
        let shared = carols.devices[0].one_time_key.clone();
        carols.devices[1].one_time_key = shared.clone();
        let envelope = alice
            .encrypt_direct(DIRECT, &[carols.clone()], b"x")
            .unwrap();
        let shared = shared.unwrap().public_key;
        assert_eq!(pre_key_used(&envelope, CAROL, 1).to_vec(), shared);
        assert_eq!(
            pre_key_used(&envelope, CAROL, 2).to_vec(),
            carols.devices[1].signed_pre_key.clone().unwrap().public_key
        );
        assert_eq!(carol1.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(), b"x");
        assert_eq!(carol2.decrypt(DIRECT, ALICE, 1, &envelope).unwrap(), b"x");
    }

    #[test]
    fn group_members_join_and_leave() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob1 = device(&mut dir, BOB, 1);
        let mut bob2 = device(&mut dir, BOB, 2);
        let mut carol = device(&mut dir, CAROL, 1);

        let bundles = dir.fetch_all(&[ALICE, BOB, CAROL]);
        let g1 = alice.encrypt_group(GROUP, &bundles, b"g1").unwrap();
        let session_1 = json(&g1)["session_id"].as_str().unwrap().to_owned();
        assert_eq!(json(&g1)["room_keys"].as_array().unwrap().len(), 3);
        for receiver in [&mut bob1, &mut bob2, &mut carol] {
            assert_eq!(receiver.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"g1");
        }
        // The sender reads its own group messages, as often as it likes (history).
        assert_eq!(alice.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"g1");
        assert_eq!(alice.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"g1");
        assert_eq!(bob1.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"g1");

        let g2 = alice.encrypt_group(GROUP, &bundles, b"g2").unwrap();
        assert_eq!(json(&g2)["session_id"], session_1.as_str());
        assert!(json(&g2)["room_keys"].as_array().unwrap().is_empty());
        for receiver in [&mut bob1, &mut bob2, &mut carol] {
            assert_eq!(receiver.decrypt(GROUP, ALICE, 1, &g2).unwrap(), b"g2");
        }

        // Another member sends with its own session.
        let bundles_for_bob2 = dir.fetch_all(&[ALICE, BOB, CAROL]);
        let from_bob2 = bob2
            .encrypt_group(GROUP, &bundles_for_bob2, b"from bob2")
            .unwrap();
        for receiver in [&mut alice, &mut bob1, &mut carol] {
            assert_eq!(
                receiver.decrypt(GROUP, BOB, 2, &from_bob2).unwrap(),
                b"from bob2"
            );
        }

        // Dave joins: he gets the current key with the next message, and only that.
        let mut dave = device(&mut dir, DAVE, 1);
        let bundles = dir.fetch_all(&[ALICE, BOB, CAROL, DAVE]);
        let g3 = alice.encrypt_group(GROUP, &bundles, b"g3").unwrap();
        assert_eq!(json(&g3)["session_id"], session_1.as_str());
        let room_keys = json(&g3)["room_keys"].as_array().unwrap().clone();
        assert_eq!(room_keys.len(), 1);
        assert_eq!(room_keys[0]["user_id"], DAVE.to_string());
        for receiver in [&mut bob1, &mut bob2, &mut carol, &mut dave] {
            assert_eq!(receiver.decrypt(GROUP, ALICE, 1, &g3).unwrap(), b"g3");
        }
        assert!(matches!(
            dave.decrypt(GROUP, ALICE, 1, &g2),
            Err(E2eeError::Decrypt(_))
        ));
        // Bob2's session has never been shared with Dave.
        assert!(matches!(
            dave.decrypt(GROUP, BOB, 2, &from_bob2),
            Err(E2eeError::NoSession)
        ));

        // Carol leaves: a new session, which she cannot read.
        let bundles = dir.fetch_all(&[ALICE, BOB, DAVE]);
        let g4 = alice.encrypt_group(GROUP, &bundles, b"g4").unwrap();
        let session_2 = json(&g4)["session_id"].as_str().unwrap().to_owned();
        assert_ne!(session_2, session_1);
        assert_eq!(json(&g4)["room_keys"].as_array().unwrap().len(), 3);
        assert!(matches!(
            carol.decrypt(GROUP, ALICE, 1, &g4),
            Err(E2eeError::NoSession)
        ));
        for receiver in [&mut bob1, &mut bob2, &mut dave] {
            assert_eq!(receiver.decrypt(GROUP, ALICE, 1, &g4).unwrap(), b"g4");
        }
        assert_eq!(alice.decrypt(GROUP, ALICE, 1, &g4).unwrap(), b"g4");
        assert_eq!(alice.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"g1");
        // Carol still reads what she was there for.
        assert_eq!(carol.decrypt(GROUP, ALICE, 1, &g3).unwrap(), b"g3");

        // A lost send: discarding the session shares a fresh one with everyone.
        alice.discard_group_session(GROUP);
        let g5 = alice.encrypt_group(GROUP, &bundles, b"g5").unwrap();
        assert_ne!(json(&g5)["session_id"], session_2.as_str());
        assert_eq!(json(&g5)["room_keys"].as_array().unwrap().len(), 3);
        assert_eq!(dave.decrypt(GROUP, ALICE, 1, &g5).unwrap(), b"g5");
    }

    #[test]
    fn envelopes_hide_the_plaintext_and_bad_input_gives_typed_errors() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let mut carol = device(&mut dir, CAROL, 1);
        let secret = b"SECRET-PLAINTEXT-0123456789-SECRET";
        let to_bob = dir.fetch_all(&[BOB, ALICE]);

        let direct = alice.encrypt_direct(DIRECT, &to_bob, secret).unwrap();
        let group = alice
            .encrypt_group(GROUP, &dir.fetch_all(&[BOB, CAROL]), secret)
            .unwrap();
        for envelope in [&direct, &group] {
            assert!(std::str::from_utf8(envelope).is_ok());
            assert!(!contains(envelope, secret));
            assert!(!contains(envelope, STANDARD.encode(secret).as_bytes()));
            assert!(!contains(envelope, b"SECRET"));
        }

        // Tampered: the MAC of the Olm message. The genuine one still works afterwards.
        let tampered = edit(&direct, |v| {
            flip_last_byte(&mut v["ciphertexts"][0]["body"])
        });
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &tampered),
            Err(E2eeError::Decrypt(_))
        ));
        // Copied into another conversation: refused as that conversation.
        let second = alice.encrypt_direct(DIRECT, &to_bob, b"second").unwrap();
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &direct).unwrap(), secret);
        assert!(matches!(
            bob.decrypt(DIRECT + 1, ALICE, 1, &second),
            Err(E2eeError::WrongConversation)
        ));
        // Attributed by the server to another device: refused, and nothing pinned.
        let third = alice.encrypt_direct(DIRECT, &to_bob, b"third").unwrap();
        assert!(matches!(
            bob.decrypt(DIRECT, CAROL, 1, &third),
            Err(E2eeError::WrongSender)
        ));
        assert!(!bob.known.contains_key(&(CAROL, 1)));
        // Not addressed to this device.
        let fourth = alice.encrypt_direct(DIRECT, &to_bob, b"fourth").unwrap();
        assert!(matches!(
            carol.decrypt(DIRECT, ALICE, 1, &fourth),
            Err(E2eeError::NotForThisDevice)
        ));
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &fourth).unwrap(), b"fourth");
        // Another entry's ciphertext presented as ours (the server swapping entries).
        let mut dir2 = Directory::default();
        let mut bob2 = device(&mut dir2, BOB, 2);
        let mut bundles = to_bob.clone();
        bundles.push(dir2.fetch(BOB));
        let fifth = alice.encrypt_direct(DIRECT, &bundles, b"fifth").unwrap();
        let swapped = edit(&fifth, |v| {
            let entries = v["ciphertexts"].as_array_mut().unwrap();
            let body = entries[0]["body"].clone();
            entries[0]["body"] = entries[1]["body"].clone();
            entries[1]["body"] = body;
        });
        assert!(bob2.decrypt(DIRECT, ALICE, 1, &swapped).is_err());

        // Group: tampered Megolm ciphertext, wrong conversation, wrong sender.
        assert_eq!(carol.decrypt(GROUP, ALICE, 1, &group).unwrap(), secret);
        let tampered = edit(&group, |v| flip_last_byte(&mut v["ciphertext"]));
        assert!(matches!(
            carol.decrypt(GROUP, ALICE, 1, &tampered),
            Err(E2eeError::Decrypt(_))
        ));
        assert!(matches!(
            carol.decrypt(GROUP + 1, ALICE, 1, &group),
            Err(E2eeError::WrongConversation)
        ));
        // The room key itself names its conversation: a first message moved elsewhere.
        assert!(matches!(
            bob.decrypt(GROUP + 1, ALICE, 1, &group),
            Err(E2eeError::WrongConversation)
        ));
        // A group envelope claiming to be from Bob while carrying Alice's keys.
        assert!(matches!(
            carol.decrypt(GROUP, BOB, 1, &group),
            Err(E2eeError::WrongSender)
        ));

        // Structure: truncated, not JSON, unknown version or algorithm, bad keys.
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &direct[..direct.len() / 2]),
            Err(E2eeError::MalformedEnvelope(_))
        ));
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, b"\x00\xff garbage"),
            Err(E2eeError::MalformedEnvelope(_))
        ));
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, br#"{"v":2,"alg":"olm"}"#),
            Err(E2eeError::Unsupported(_))
        ));
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, br#"{"v":1,"alg":"rot13"}"#),
            Err(E2eeError::Unsupported(_))
        ));
        let short_key = edit(&direct, |v| v["sender_key"] = "AAAA".into());
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &short_key),
            Err(E2eeError::MalformedEnvelope(_))
        ));
        let bad_type = edit(&direct, |v| v["ciphertexts"][0]["olm_type"] = 7.into());
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &bad_type),
            Err(E2eeError::MalformedEnvelope(_))
        ));
    }

    #[test]
    fn changed_identity_is_refused_until_forgotten() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let first = alice
            .encrypt_direct(DIRECT, &dir.fetch_all(&[BOB]), b"first")
            .unwrap();
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &first).unwrap(), b"first");

        // Alice's device 1 comes back with new keys (reinstall, or an impostor).
        let mut impostor = device(&mut dir, ALICE, 1);
        let forged = impostor
            .encrypt_direct(DIRECT, &dir.fetch_all(&[BOB]), b"trust me")
            .unwrap();
        assert!(matches!(
            bob.decrypt(DIRECT, ALICE, 1, &forged),
            Err(E2eeError::IdentityChanged {
                user_id: ALICE,
                device_id: 1
            })
        ));
        assert!(matches!(
            bob.encrypt_direct(DIRECT, &dir.fetch_all(&[ALICE]), b"x"),
            Err(E2eeError::IdentityChanged {
                user_id: ALICE,
                device_id: 1
            })
        ));
        // The user accepts the new device.
        bob.forget_device(ALICE, 1);
        let later = impostor
            .encrypt_direct(DIRECT, &dir.fetch_all(&[BOB]), b"new me")
            .unwrap();
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &later).unwrap(), b"new me");
    }

    #[test]
    fn too_large_envelopes_are_refused_and_the_key_is_shared_again() {
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let bundles = dir.fetch_all(&[BOB]);
        let huge = vec![7u8; MESSAGE_BODY_BYTES_MAX];
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &bundles, &huge),
            Err(E2eeError::TooLarge { .. })
        ));
        assert!(matches!(
            alice.encrypt_group(GROUP, &bundles, &huge),
            Err(E2eeError::TooLarge { .. })
        ));
        let small = alice.encrypt_group(GROUP, &bundles, b"small").unwrap();
        assert_eq!(json(&small)["room_keys"].as_array().unwrap().len(), 1);
        assert_eq!(bob.decrypt(GROUP, ALICE, 1, &small).unwrap(), b"small");
        assert!(matches!(
            alice.encrypt_direct(DIRECT, &[], b"x"),
            Err(E2eeError::NoRecipients)
        ));
    }

    #[test]
    fn pickle_round_trip_keeps_sessions_working() {
        let key = [7u8; 32];
        let mut dir = Directory::default();
        let mut alice = device(&mut dir, ALICE, 1);
        let mut bob = device(&mut dir, BOB, 1);
        let to_bob = dir.fetch_all(&[BOB]);
        let to_alice = dir.fetch_all(&[ALICE]);
        let a = alice.encrypt_direct(DIRECT, &to_bob, b"before").unwrap();
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &a).unwrap(), b"before");
        let g1 = alice
            .encrypt_group(GROUP, &to_bob, b"group before")
            .unwrap();
        assert_eq!(bob.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"group before");
        let last_key_id = alice
            .keys_upload(2)
            .one_time_keys
            .iter()
            .map(|k| k.key_id)
            .max()
            .unwrap();

        let alice_pickle = alice.pickle(&key).unwrap();
        assert!(!alice_pickle.contains("before"));
        let mut alice = E2eeDevice::from_pickle(&alice_pickle, &key).unwrap();
        let mut bob = E2eeDevice::from_pickle(&bob.pickle(&key).unwrap(), &key).unwrap();
        assert_eq!((alice.user_id(), alice.device_id()), (ALICE, 1));

        let b = bob.encrypt_direct(DIRECT, &to_alice, b"after").unwrap();
        assert_eq!(olm_types(&b), [1]);
        assert_eq!(alice.decrypt(DIRECT, BOB, 1, &b).unwrap(), b"after");
        let a = alice.encrypt_direct(DIRECT, &to_bob, b"after too").unwrap();
        assert_eq!(olm_types(&a), [1]);
        assert_eq!(bob.decrypt(DIRECT, ALICE, 1, &a).unwrap(), b"after too");

        let g2 = alice.encrypt_group(GROUP, &to_bob, b"group after").unwrap();
        assert_eq!(json(&g2)["session_id"], json(&g1)["session_id"]);
        assert!(json(&g2)["room_keys"].as_array().unwrap().is_empty());
        assert_eq!(bob.decrypt(GROUP, ALICE, 1, &g2).unwrap(), b"group after");
        assert_eq!(
            alice.decrypt(GROUP, ALICE, 1, &g1).unwrap(),
            b"group before"
        );
        assert_eq!(bob.decrypt(GROUP, ALICE, 1, &g1).unwrap(), b"group before");

        // Key ids keep counting; pins survive.
        let upload = alice.keys_upload(1);
        assert!(upload.one_time_keys[0].key_id > last_key_id);
        assert!(alice.known.contains_key(&(BOB, 1)));

        // Wrong key, corruption, garbage.
        assert!(matches!(
            E2eeDevice::from_pickle(&alice_pickle, &[8u8; 32]),
            Err(E2eeError::Pickle(_))
        ));
        let mut raw = STANDARD.decode(&alice_pickle).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        assert!(matches!(
            E2eeDevice::from_pickle(&STANDARD.encode(&raw), &key),
            Err(E2eeError::Pickle(_))
        ));
        for garbage in ["", "AQ==", "not base64!", "AQID"] {
            assert!(matches!(
                E2eeDevice::from_pickle(garbage, &key),
                Err(E2eeError::Pickle(_))
            ));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bob = E2eeDevice::new(BOB, 1);
            prop_assert!(bob.decrypt(DIRECT, ALICE, 1, &bytes).is_err());
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(E2eeDevice::from_pickle(&text, &[0; 32]).is_err());
        }

        #[test]
        fn mutated_envelopes_never_panic(
            index in any::<prop::sample::Index>(),
            xor in 1u8..,
            group in any::<bool>(),
        ) {
            let mut dir = Directory::default();
            let mut alice = device(&mut dir, ALICE, 1);
            let mut bob = device(&mut dir, BOB, 1);
            let bundles = dir.fetch_all(&[BOB]);
            let mut envelope = if group {
                alice.encrypt_group(GROUP, &bundles, b"payload").unwrap()
            } else {
                alice.encrypt_direct(DIRECT, &bundles, b"payload").unwrap()
            };
            let at = index.index(envelope.len());
            envelope[at] ^= xor;
            let conversation = if group { GROUP } else { DIRECT };
            // Either refused, or (a byte that does not matter, e.g. in "v") the original.
            if let Ok(plaintext) = bob.decrypt(conversation, ALICE, 1, &envelope) {
                prop_assert_eq!(plaintext, b"payload".to_vec());
            }
        }
    }
}
