//! End to end: a client that only speaks the HTTP fallback (`POST /v1/messages`, the
//! `POST /v1/poll` long poll) chats with a WebSocket client on the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::people::*;
use common::Server;
use wire::client::http::{self, PollAnswer};
use wire::client::{new_key, ClientError, Transport};
use wire::message::{AckStatus, Body, MessageKind, PresenceStatus, Send, StoredMessage};

fn messages(answer: &PollAnswer) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    for frame in &answer.frames {
        match &frame.body {
            Body::Deliver(d) => out.push(d.message.clone()),
            Body::SyncBatch(b) => out.extend(b.messages.iter().cloned()),
            _ => {}
        }
    }
    out
}

fn text(send_to: u64, body: &str, key: wire::message::IdempotencyKey) -> Send {
    Send {
        conversation_id: send_to,
        idempotency_key: key,
        kind: MessageKind::Chat,
        body: body.as_bytes().to_vec(),
        media: None,
        reply_to_seq: 0,
    }
}

fn api_code(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn an_http_only_client_chats_with_a_websocket_client() {
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--presence-coalesce-ms", "100"]);
    let server = Server::start(&args);
    let (_, a) = user(&server, "ha"); // HTTP only
    let (_, b) = user(&server, "hb"); // WebSocket
    let (mut cb, _) = online(&server, Transport::WsBinary, &b);
    let chat = cb.open_direct(a.user_id).unwrap().conversation_id;
    cb.send_message(chat, b"sent while you were away", new_key())
        .unwrap();

    // The first poll starts a session: the catch-up, ending with has_more = false.
    let first = http::poll(server.http, &a.access_token, None, 5_000).unwrap();
    let caught_up = messages(&first);
    assert_eq!(caught_up.len(), 1);
    assert_eq!(caught_up[0].body, b"sent while you were away");
    let mut cursor = first.cursor.clone();
    let mut done = first
        .frames
        .iter()
        .any(|f| matches!(&f.body, Body::SyncBatch(s) if !s.has_more));
    while !done {
        let next = http::poll(server.http, &a.access_token, Some(&cursor), 5_000).unwrap();
        done = next
            .frames
            .iter()
            .any(|f| matches!(&f.body, Body::SyncBatch(s) if !s.has_more));
        cursor = next.cursor;
    }

    // A polling device counts as online.
    cb.call(
        Body::PresenceQuery(wire::message::PresenceQuery {
            user_ids: vec![a.user_id],
        }),
        WAIT,
    )
    .map(|f| match f.body {
        Body::PresenceUpdate(u) => assert_eq!(u.entries[0].status, PresenceStatus::Online),
        other => panic!("{other:?}"),
    })
    .unwrap();

    // A long poll holds until something arrives, then answers at once.
    let token = a.access_token.clone();
    let addr = server.http;
    let held = cursor.clone();
    let waiting = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = http::poll(addr, &token, Some(&held), 20_000).unwrap();
        (answer, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    cb.send_message(chat, b"hello over websocket", new_key())
        .unwrap();
    let (answer, waited) = waiting.join().unwrap();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
        "held for {waited:?}"
    );
    let got = messages(&answer);
    assert_eq!(got.len(), 1, "{:?}", answer.frames);
    assert_eq!((got[0].seq, got[0].sender_user_id), (2, b.user_id));
    assert_eq!(got[0].body, b"hello over websocket");

    // The next poll acknowledges that answer: b learns it was delivered.
    let quiet = http::poll(server.http, &a.access_token, Some(&answer.cursor), 300).unwrap();
    assert!(messages(&quiet).is_empty());
    // (Earlier receipts, for the catch-up, may come first.)
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no delivered receipt for seq 2");
        let receipt = next_receipt(&mut cb);
        assert_eq!(receipt.conversation_id, chat);
        if receipt
            .states
            .iter()
            .any(|s| s.user_id == a.user_id && s.delivered_seq == 2)
        {
            break;
        }
    }
    let mut cursor = quiet.cursor;

    // HTTP send: durable ack, delivered to the WebSocket client; a retry with the same
    // key is answered with the original ack and stores nothing.
    let key = new_key();
    let ack = http::send(
        server.http,
        &a.access_token,
        &text(chat, "hi from http", key),
    )
    .unwrap();
    assert_eq!((ack.seq, ack.status), (3, AckStatus::Stored));
    let delivered = next_deliver(&mut cb);
    assert_eq!((delivered.seq, delivered.sender_user_id), (3, a.user_id));
    assert_eq!(delivered.body, b"hi from http");
    let again = http::send(
        server.http,
        &a.access_token,
        &text(chat, "hi from http", key),
    )
    .unwrap();
    assert_eq!(
        (again.seq, again.message_id, again.status),
        (3, ack.message_id, AckStatus::Duplicate)
    );
    assert_no_deliver(&mut cb, Duration::from_millis(300));
    // Its own send does not come back to the sending device.
    let own = http::poll(server.http, &a.access_token, Some(&cursor), 300).unwrap();
    assert!(messages(&own).is_empty(), "{:?}", own.frames);
    cursor = own.cursor;

    // A lost answer: polling again with the cursor before it repeats it.
    cb.send_message(chat, b"did you get this?", new_key())
        .unwrap();
    let lost = http::poll(server.http, &a.access_token, Some(&cursor), 5_000).unwrap();
    assert_eq!(messages(&lost).len(), 1);
    let repeated = http::poll(server.http, &a.access_token, Some(&cursor), 5_000).unwrap();
    assert_eq!(repeated.cursor, lost.cursor);
    assert_eq!(messages(&repeated), messages(&lost));
    assert_eq!(messages(&repeated)[0].seq, 4);

    // Typed refusals: no token, a malformed cursor, a conversation that is not theirs.
    let (status, code) = api_code(http::poll(server.http, "not-a-token", None, 0));
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    let (status, code) = api_code(http::poll(server.http, &a.access_token, Some("x.y"), 0));
    assert_eq!((status, code.as_str()), (400, "invalid_argument"));
    let (_, stranger) = user(&server, "hs");
    let (status, code) = api_code(http::send(
        server.http,
        &stranger.access_token,
        &text(chat, "let me in", new_key()),
    ));
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let mut system = text(chat, "i am the server", new_key());
    system.kind = MessageKind::System;
    let (status, code) = api_code(http::send(server.http, &a.access_token, &system));
    assert_eq!((status, code.as_str()), (400, "invalid_argument"));
    let huge = "x".repeat(wire::limits::MESSAGE_BODY_BYTES_MAX + 1);
    let (status, code) = api_code(http::send(
        server.http,
        &a.access_token,
        &text(chat, &huge, new_key()),
    ));
    assert_eq!(
        (status, code.as_str()),
        (413, "too_large"),
        "the wire body limit"
    );

    // The history both sides agree on.
    let page = http::history(server.http, &a.access_token, chat, 0, 0, 50).unwrap();
    let bodies: Vec<&[u8]> = page.messages.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(
        bodies,
        [
            &b"sent while you were away"[..],
            b"hello over websocket",
            b"hi from http",
            b"did you get this?"
        ]
    );
}

#[test]
fn a_long_poll_longer_than_the_idle_timeout_keeps_the_server_serving() {
    // The poll outlives the idle timeout: the session must stay, and its home shard must
    // keep serving meanwhile (its expiry check once spun on a past deadline).
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--idle-timeout-ms", "1000"]);
    let server = Server::start(&args);
    let (_, a) = user(&server, "la");
    let first = http::poll(server.http, &a.access_token, None, 0).unwrap();
    let token = a.access_token.clone();
    let addr = server.http;
    let cursor = first.cursor.clone();
    let waiting = std::thread::spawn(move || http::poll(addr, &token, Some(&cursor), 3_000));
    std::thread::sleep(Duration::from_millis(200));
    // The home shard answers a second poll of the device at once: 409, one is waiting.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let (status, code) = api_code(http::poll(server.http, &a.access_token, None, 0));
        assert_eq!((status, code.as_str()), (409, "conflict"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let answer = waiting.join().unwrap().unwrap();
    assert_ne!(answer.cursor, first.cursor);
    // The same session goes on: its cursor is accepted.
    let next = http::poll(server.http, &a.access_token, Some(&answer.cursor), 0).unwrap();
    assert_eq!(
        next.cursor.split('.').next(),
        answer.cursor.split('.').next(),
        "same session"
    );
}
