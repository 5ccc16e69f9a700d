//! End-to-end encryption through the real server: devices publish keys, claim each
//! other's bundles, and exchange Olm (1:1, multi-device) and Megolm (group) messages
//! with the client library's `e2ee` layer. The server stores and routes ciphertext only:
//! a byte search of its data directory and its metrics finds none of the plaintexts
//! (and does find a plaintext sent unencrypted, so the search itself works).

mod common;

use std::path::Path;
use std::time::Duration;

use common::people::{self, user, FAST, WAIT};
use common::{http_get, Server};
use wire::client::e2ee::E2eeDevice;
use wire::client::http::Login;
use wire::client::{new_key, Connection, Transport};
use wire::message::{KeyBundle, MessageKind, Send, StoredMessage};

/// One device: its connection and its cryptographic state.
struct Device {
    conn: Connection,
    crypto: E2eeDevice,
}

impl Device {
    fn online(server: &Server, transport: Transport, login: &Login) -> Device {
        let (mut conn, _) = people::online(server, transport, login);
        let mut crypto = E2eeDevice::new(login.user_id, login.device_id);
        let remaining = conn.keys_upload(crypto.keys_upload(20)).unwrap();
        assert_eq!(remaining, 20);
        Device { conn, crypto }
    }

    fn bundles(&mut self, users: &[u64]) -> Vec<KeyBundle> {
        users
            .iter()
            .map(|&user| self.conn.keys_fetch(user, 0).unwrap())
            .collect()
    }

    fn send_encrypted(&mut self, conversation_id: u64, body: Vec<u8>) -> u64 {
        self.conn
            .send(Send {
                conversation_id,
                idempotency_key: new_key(),
                kind: MessageKind::Encrypted,
                body,
                media: None,
                reply_to_seq: 0,
            })
            .unwrap()
            .seq
    }

    fn receive(&mut self) -> StoredMessage {
        let message = people::next_deliver(&mut self.conn);
        assert_eq!(message.kind, MessageKind::Encrypted);
        message
    }

    fn decrypt(&mut self, message: &StoredMessage) -> Vec<u8> {
        self.crypto
            .decrypt(
                message.conversation_id,
                message.sender_user_id,
                message.sender_device_id,
                &message.body,
            )
            .unwrap()
    }
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn encrypted_direct_and_group_chats_leave_no_plaintext_on_the_server() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (bob_name, bob) = user(&server, "bob");
    let bob_phone = people::device(&server, &bob_name);
    let (_, carol) = user(&server, "carol");
    let mut a = Device::online(&server, Transport::WsBinary, &alice);
    let mut b1 = Device::online(&server, Transport::Tcp, &bob);
    let mut b2 = Device::online(&server, Transport::WsJson, &bob_phone);
    let mut c = Device::online(&server, Transport::WsJson, &carol);
    let mut secrets: Vec<Vec<u8>> = Vec::new();

    // 1:1, both ways, reaching every device of the peer and the sender's other devices.
    let direct = a.conn.open_direct(bob.user_id).unwrap().conversation_id;
    let alice_sees = a.bundles(&[bob.user_id, alice.user_id]);
    let bob1_sees = b1.bundles(&[alice.user_id, bob.user_id]);
    for round in 0..3 {
        let secret = format!("attack at dawn, round {round}: the password is swordfish-{round}");
        let body = a
            .crypto
            .encrypt_direct(direct, &alice_sees, secret.as_bytes())
            .unwrap();
        assert!(!contains(&body, secret.as_bytes()));
        a.send_encrypted(direct, body);
        for bob_device in [&mut b1, &mut b2] {
            let message = bob_device.receive();
            assert_eq!(bob_device.decrypt(&message), secret.as_bytes());
        }
        secrets.push(secret.into_bytes());

        let reply = format!("dawn is too early, reply {round}: meet at the old mill-{round}");
        let body = b1
            .crypto
            .encrypt_direct(direct, &bob1_sees, reply.as_bytes())
            .unwrap();
        b1.send_encrypted(direct, body);
        let message = a.receive();
        assert_eq!(a.decrypt(&message), reply.as_bytes());
        // Bob's phone reads what his laptop sent.
        let message = b2.receive();
        assert_eq!(b2.decrypt(&message), reply.as_bytes());
        secrets.push(reply.into_bytes());
    }

    // A group of three, one member with two devices; every member sends.
    let group = a
        .conn
        .create_group("cabal", &[bob.user_id, carol.user_id])
        .unwrap()
        .conversation_id;
    let members = [alice.user_id, bob.user_id, carol.user_id];
    let alice_group = a.bundles(&members);
    let carol_group = c.bundles(&members);
    let secret = b"the treasure is under the third oak tree".to_vec();
    let body = a
        .crypto
        .encrypt_group(group, &alice_group, &secret)
        .unwrap();
    a.send_encrypted(group, body);
    for reader in [&mut b1, &mut b2, &mut c] {
        // The group's system message comes first for the members added at creation.
        let message = next_encrypted(reader);
        assert_eq!(reader.decrypt(&message), secret);
    }
    secrets.push(secret);
    for round in 0..2 {
        let secret = format!("carol agrees, group round {round}: bring shovels-{round}");
        let body = c
            .crypto
            .encrypt_group(group, &carol_group, secret.as_bytes())
            .unwrap();
        c.send_encrypted(group, body);
        for reader in [&mut a, &mut b1, &mut b2] {
            let message = next_encrypted(reader);
            assert_eq!(reader.decrypt(&message), secret.as_bytes());
        }
        secrets.push(secret.into_bytes());
    }

    // A control: a plaintext message is found by the same search.
    let canary = b"plaintext canary, not encrypted at all".to_vec();
    a.conn.send_message(direct, &canary, new_key()).unwrap();

    let metrics = http_get(server.http, "/metrics");
    let dir = server.data_dir.clone();
    server.terminate();
    let mut server = server;
    server.wait_exit(Duration::from_secs(10));
    let on_disk = files(&dir);
    assert!(
        on_disk.iter().any(|(_, bytes)| contains(bytes, &canary)),
        "the search must find a plaintext message in the data directory"
    );
    for secret in &secrets {
        for (path, bytes) in &on_disk {
            assert!(
                !contains(bytes, secret),
                "{} holds the plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(secret)
            );
        }
        assert!(!contains(metrics.as_bytes(), secret));
    }
    let _ = WAIT;
}

/// The next encrypted delivery, skipping system messages (group creation).
fn next_encrypted(device: &mut Device) -> StoredMessage {
    loop {
        let message = people::next_deliver(&mut device.conn);
        if message.kind == MessageKind::Encrypted {
            return message;
        }
    }
}
