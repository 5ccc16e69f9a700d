//! End to end: the real server on loopback, driven by `wire::client` over WebSocket
//! (binary and JSON) and raw TCP: accounts, 1:1 chat, multi-device, receipts, catch-up,
//! idempotent retries, history, membership checks, slow consumers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::people::*;
use common::Server;
use wire::client::http::{self, Login};
use wire::client::{new_key, ClientError, Connection, Transport};
use wire::message::{AckStatus, Body, ErrorCode, Frame, ReceiptKind, StoredMessage};

#[test]
fn two_users_chat_over_every_transport() {
    let server = Server::start(FAST);
    for transport in TRANSPORTS {
        let (_, alice) = user(&server, "alice");
        let (_, bob) = user(&server, "bob");
        let (mut a, missed) = online(&server, transport, &alice);
        assert!(missed.is_empty());
        let (mut b, _) = online(&server, transport, &bob);
        let conversation = a.open_direct(bob.user_id).unwrap();
        assert_eq!(conversation.peer_user_id, bob.user_id);
        let id = conversation.conversation_id;
        for i in 1..=3u64 {
            let ack = a
                .send_message(id, format!("hi {i}").as_bytes(), new_key())
                .unwrap();
            assert_eq!(
                (ack.seq, ack.status),
                (i, AckStatus::Stored),
                "{transport:?}"
            );
            let got = next_deliver(&mut b);
            assert_eq!((got.seq, got.sender_user_id), (i, alice.user_id));
            assert_eq!(got.body, format!("hi {i}").as_bytes());
            assert_eq!(got.message_id, ack.message_id);
        }
        let reply = b.send_message(id, b"hello alice", new_key()).unwrap();
        assert_eq!(reply.seq, 4);
        assert_eq!(next_deliver(&mut a).body, b"hello alice");
    }
}

#[test]
fn offline_recipient_gets_1000_messages_in_order_once_on_reconnect() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    for i in 1..=1000u64 {
        let ack = a
            .send_message(id, format!("m{i}").as_bytes(), new_key())
            .unwrap();
        assert_eq!(ack.seq, i);
    }
    // Bob's device was never online: catch-up brings everything, unasked, in order.
    let (mut b, missed) = online(&server, Transport::Tcp, &bob);
    let seqs: Vec<u64> = missed.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>(), "all, in order, once");
    assert_eq!(missed[999].body, b"m1000");
    // Acknowledge half; a reconnect then starts after the cursor.
    b.receipt(id, ReceiptKind::Delivered, 500).unwrap();
    b.ping().unwrap(); // the receipt was handled before the ping's answer
    std::thread::sleep(Duration::from_millis(200)); // the cursor record becomes durable
    b.close().unwrap();
    let (_, again) = online(&server, Transport::WsJson, &bob);
    let seqs: Vec<u64> = again.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (501..=1000).collect::<Vec<_>>());
}

#[test]
fn retried_send_with_the_same_key_is_stored_once() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let (mut b, _) = online(&server, Transport::WsBinary, &bob);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    let key = new_key();
    let first = a.send_message(id, b"once", key).unwrap();
    // The retry may come on another connection, even another transport.
    let (mut a2, _) = online(&server, Transport::Tcp, &alice);
    let retry = a2.send_message(id, b"once", key).unwrap();
    assert_eq!(retry.status, AckStatus::Duplicate);
    assert_eq!((retry.seq, retry.message_id), (first.seq, first.message_id));
    assert_eq!(retry.timestamp_ms, first.timestamp_ms);
    // The same key from another user is a different message.
    let other = b.send_message(id, b"mine", key).unwrap();
    assert_eq!((other.seq, other.status), (2, AckStatus::Stored));
    let page = a.history(id, 0, 0, 50).unwrap();
    let bodies: Vec<&[u8]> = page.messages.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![&b"once"[..], &b"mine"[..]]);
}

#[test]
fn concurrent_senders_see_one_order() {
    let server = Server::start(FAST);
    let (alice_name, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let alice2 = device(&server, &alice_name);
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    drop(a);
    let mut watcher_b = online(&server, Transport::Tcp, &bob).0;
    let senders: Vec<_> = [
        (alice.clone(), Transport::WsBinary),
        (alice2.clone(), Transport::Tcp),
        (bob.clone(), Transport::WsJson),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, (login, transport))| {
        let server_addr = addr(&server, transport);
        std::thread::spawn(move || {
            let (mut conn, _) =
                Connection::connect(server_addr, transport, &login.access_token).unwrap();
            let mut acks = Vec::new();
            for i in 0..100 {
                acks.push(
                    conn.send_message(id, format!("{n}:{i}").as_bytes(), new_key())
                        .unwrap(),
                );
            }
            acks
        })
    })
    .collect();
    let mut seqs: Vec<u64> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .map(|a| a.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<_>>(),
        "gap-free, no duplicates"
    );
    // Bob's watcher saw the others' messages in sequence order; history agrees with it.
    let page = |before, after| {
        http::history(server.http, &bob.access_token, id, before, after, 100)
            .unwrap()
            .messages
    };
    let history: Vec<StoredMessage> = [page(101, 0), page(0, 100), page(0, 200)].concat();
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    let mut last = 0;
    let mut seen = 0;
    while seen < 200 {
        let m = next_deliver(&mut watcher_b);
        assert!(m.seq > last, "in order: {} after {last}", m.seq);
        last = m.seq;
        let stored = &history[(m.seq - 1) as usize];
        assert_eq!(
            (&m.body, m.sender_device_id),
            (&stored.body, stored.sender_device_id)
        );
        if m.sender_user_id == alice.user_id {
            seen += 1;
        }
    }
}

#[test]
fn second_device_gets_own_sends_and_receipts_reach_every_sender_device() {
    let server = Server::start(FAST);
    let (alice_name, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let alice2 = device(&server, &alice_name);
    assert_ne!(alice.device_id, alice2.device_id);
    let (mut a1, _) = online(&server, Transport::WsBinary, &alice);
    let (mut a2, _) = online(&server, Transport::Tcp, &alice2);
    let (mut b, _) = online(&server, Transport::WsJson, &bob);
    let id = a1.open_direct(bob.user_id).unwrap().conversation_id;
    let ack = a1.send_message(id, b"from phone", new_key()).unwrap();
    // Alice's other device gets her own send; the sending device does not.
    let mine = next_deliver(&mut a2);
    assert_eq!(
        (mine.seq, mine.sender_device_id),
        (ack.seq, alice.device_id)
    );
    assert_eq!(next_deliver(&mut b).seq, ack.seq);
    // Bob reads it: both of Alice's devices get the receipt.
    b.receipt(id, ReceiptKind::Read, ack.seq).unwrap();
    for conn in [&mut a1, &mut a2] {
        let update = next_receipt(conn);
        assert_eq!(update.conversation_id, id);
        let state = &update.states[0];
        assert_eq!(
            (state.user_id, state.device_id),
            (bob.user_id, bob.device_id)
        );
        assert_eq!((state.delivered_seq, state.read_seq), (1, 1));
    }
    // A receipt beyond what exists is clamped, never moves a cursor past the end.
    b.receipt(id, ReceiptKind::Read, 1_000_000).unwrap();
    assert_no_deliver(&mut a1, Duration::from_millis(300));
    // A device reconnecting learns the receipts it missed in the final catch-up batch.
    drop(a2);
    let (mut a2, _) =
        Connection::connect(server.tcp, Transport::Tcp, &alice2.access_token).unwrap();
    let done = wire::client::catch_up(&mut a2, WAIT).unwrap();
    let receipt = done
        .receipts
        .iter()
        .find(|r| r.conversation_id == id)
        .expect("receipt in catch-up");
    assert_eq!(receipt.states[0].read_seq, 1);
}

#[test]
fn strangers_cannot_read_or_post() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let (_, eve) = user(&server, "eve");
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    a.send_message(id, b"private", new_key()).unwrap();
    let (mut e, _) = online(&server, Transport::WsJson, &eve);
    let forbidden = |r: Result<_, ClientError>| match r {
        Err(ClientError::ServerError(error)) => assert_eq!(error.code, ErrorCode::Forbidden),
        other => panic!("expected Forbidden, got {other:?}"),
    };
    forbidden(e.send_message(id, b"let me in", new_key()).map(|_| ()));
    forbidden(e.history(id, 0, 0, 10).map(|_| ()));
    match http::history(server.http, &eve.access_token, id, 0, 0, 10) {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "forbidden"))
        }
        other => panic!("expected 403, got {other:?}"),
    }
    match http::history(server.http, "v1.bogus.token", id, 0, 0, 10) {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // Eve's connection is still fine, and nothing she tried was stored.
    e.ping().unwrap();
    assert_eq!(a.history(id, 0, 0, 10).unwrap().messages.len(), 1);
    assert_no_deliver(&mut e, Duration::from_millis(200));
}

#[test]
fn accounts_reject_bad_input_and_duplicates() {
    let server = Server::start(FAST);
    let name = unique("carol");
    http::register(server.http, &name, "correct horse").unwrap();
    let code = |r: Result<u64, ClientError>| match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    };
    assert_eq!(
        code(http::register(server.http, &name, "another one")),
        (409, "conflict".to_string())
    );
    assert_eq!(
        code(http::register(server.http, "x", "correct horse")).0,
        400
    );
    assert_eq!(
        code(http::register(server.http, "Upper", "correct horse")).0,
        400
    );
    assert_eq!(
        code(http::register(server.http, &unique("dave"), "short")).0,
        400
    );
    match http::login(server.http, &name, "wrong password", None, None) {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let login = http::login(server.http, &name, "correct horse", None, None).unwrap();
    // Logging in again with the device id keeps the device; an unknown one is refused.
    let again = http::login(
        server.http,
        &name,
        "correct horse",
        Some(login.device_id),
        None,
    )
    .unwrap();
    assert_eq!(again.device_id, login.device_id);
    assert!(http::login(server.http, &name, "correct horse", Some(999), None).is_err());
    // Refresh gives a working access token; an access token is not a refresh token.
    let refreshed = http::refresh(server.http, &login.refresh_token).unwrap();
    assert_eq!(
        (refreshed.user_id, refreshed.device_id),
        (login.user_id, login.device_id)
    );
    Connection::connect(server.tcp, Transport::Tcp, &refreshed.access_token).unwrap();
    assert!(http::refresh(server.http, &login.access_token).is_err());
    // A refresh token does not open a session.
    match Connection::connect(server.http, Transport::WsBinary, &login.refresh_token) {
        Err(ClientError::ServerError(e)) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 4001),
        other => panic!("expected Unauthenticated, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn history_pages_over_socket_and_http() {
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    for i in 1..=25u64 {
        a.send_message(id, format!("{i}").as_bytes(), new_key())
            .unwrap();
    }
    let newest = a.history(id, 0, 0, 10).unwrap();
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (16..=25).collect::<Vec<_>>()
    );
    assert!(newest.has_more);
    let older = a.history(id, 16, 0, 10).unwrap();
    assert_eq!(older.messages.first().map(|m| m.seq), Some(6));
    let oldest = http::history(server.http, &bob.access_token, id, 6, 0, 10).unwrap();
    assert_eq!(
        oldest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>()
    );
    assert!(!oldest.has_more);
    let after = http::history(server.http, &bob.access_token, id, 0, 20, 100).unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (21..=25).collect::<Vec<_>>()
    );
    assert!(!after.has_more);
    match a.history(id, 5, 5, 10) {
        Err(ClientError::ServerError(e)) => assert_eq!(e.code, ErrorCode::InvalidArgument),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn slow_consumer_is_cut_off_without_affecting_others_and_catches_up() {
    let server = Server::start(&[
        "--outbound-queue-frames",
        "64",
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
    ]);
    let (_, alice) = user(&server, "alice");
    let (bob_name, bob) = user(&server, "bob");
    let bob2 = device(&server, &bob_name);
    let (mut a, _) = online(&server, Transport::Tcp, &alice);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    // Bob's first device stops reading; his second keeps up.
    let (mut slow, _) = online(&server, Transport::WsBinary, &bob);
    let (mut fast, _) = online(&server, Transport::Tcp, &bob2);
    let body = vec![b'x'; 16 * 1024];
    let total = 600u64;
    let mut fast_seen = 0u64;
    for i in 1..=total {
        assert_eq!(a.send_message(id, &body, new_key()).unwrap().seq, i);
        while let Some(frame) = fast.recv(Duration::from_millis(0)).unwrap() {
            if let Body::Deliver(d) = frame.body {
                fast_seen += 1;
                assert_eq!(d.message.seq, fast_seen);
            }
        }
    }
    while fast_seen < total {
        assert_eq!(next_deliver(&mut fast).seq, fast_seen + 1);
        fast_seen += 1;
    }
    // The slow device was closed with 4008 (or, its socket being full, just dropped).
    let mut slow_got = 0u64;
    let ended = loop {
        match slow.recv(WAIT) {
            Ok(Some(Frame {
                body: Body::Deliver(_),
                ..
            })) => slow_got += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("slow consumer still connected"),
            Err(ClientError::Closed { code, .. }) => break code,
            Err(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(ended, 4008 | 1006 | 0), "close code {ended}");
    assert!(slow_got < total, "it was cut off before getting everything");
    // Reconnecting, it catches up on everything after its cursor (0: it acked nothing).
    let (_, missed) = online(&server, Transport::WsBinary, &bob);
    assert_eq!(missed.len() as u64, total);
    assert!(missed
        .iter()
        .enumerate()
        .all(|(i, m)| m.seq == i as u64 + 1));
}

#[test]
fn bad_input_on_one_session_leaves_others_alone() {
    use std::io::Write;
    let server = Server::start(FAST);
    let (_, alice) = user(&server, "alice");
    let (_, bob) = user(&server, "bob");
    let (mut a, _) = online(&server, Transport::WsBinary, &alice);
    let (mut b, _) = online(&server, Transport::Tcp, &bob);
    let id = a.open_direct(bob.user_id).unwrap().conversation_id;
    // Garbage on an authenticated raw-TCP session: a length prefix over the limit.
    let (mut bad, _) = online(&server, Transport::Tcp, &alice);
    bad.raw_stream().write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(matches!(bad.recv(WAIT), Err(ClientError::Closed { .. })));
    // An unmasked client frame on an authenticated WebSocket: 1002.
    let (mut bad_ws, _) = online(&server, Transport::WsBinary, &alice);
    bad_ws.raw_stream().write_all(&[0x82, 0x01, 0x00]).unwrap();
    match bad_ws.recv(WAIT) {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1002),
        other => panic!("expected close 1002, got {other:?}"),
    }
    // Invalid UTF-8 in a JSON text frame: 1007.
    let (mut bad_json, _) = online(&server, Transport::WsJson, &alice);
    // (Written by hand: the client codec refuses to send bad UTF-8 as text.)
    let frame = [0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe];
    bad_json.raw_stream().write_all(&frame).unwrap();
    match bad_json.recv(WAIT) {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1007),
        other => panic!("expected close 1007, got {other:?}"),
    }
    // The good sessions carry on.
    a.send_message(id, b"still here", new_key()).unwrap();
    assert_eq!(next_deliver(&mut b).body, b"still here");
}

#[test]
fn rate_limit_refuses_with_retry_after() {
    let server = Server::start(&["--rate-limit-per-sec", "5", "--rate-limit-burst", "5"]);
    let (_, alice) = user(&server, "alice");
    let (mut a, _) = online(&server, Transport::Tcp, &alice);
    let mut limited = None;
    for _ in 0..20 {
        match a.ping() {
            Ok(_) => {}
            Err(ClientError::ServerError(e)) => {
                limited = Some(e);
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    let error = limited.expect("a burst over the limit is refused");
    assert_eq!(error.code, ErrorCode::RateLimited);
    assert!(error.retry_after_ms > 0);
    std::thread::sleep(Duration::from_millis(error.retry_after_ms as u64 + 50));
    a.ping().unwrap();
}

#[test]
fn python_websockets_client_interoperates() {
    let server = Server::start(FAST);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/json_client.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(server.http.to_string())
        .output()
        .expect("python3 runs (scripts/test.sh installs the websockets package)");
    assert!(
        output.status.success(),
        "interop failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("interop ok"));
}

#[test]
fn sessions_move_to_their_users_home_shard() {
    let server = Server::start(FAST);
    let users: Vec<Login> = (0..10).map(|_| user(&server, "home").1).collect();
    let mut conns = Vec::new();
    // 20 connections: each lands on a random shard (SO_REUSEPORT); about half are on the
    // wrong one and must be handed over (all staying put: odds 2^-20).
    for login in users.iter().chain(users.iter()) {
        conns.push(online(&server, Transport::Tcp, login).0);
    }
    let handed = common::metric_sum(&server, "confab_handoffs_total");
    let adopted = common::metric_sum(&server, "confab_adopted_total");
    assert!(handed > 0, "no connection was handed off");
    assert_eq!(handed, adopted, "every hand-off was adopted");
    assert_eq!(common::metric_sum(&server, "confab_sessions"), 20);
    // Handed-off sessions work like any other: each device can ping.
    for conn in &mut conns {
        conn.ping().unwrap();
    }
}

#[test]
fn a_silent_session_is_closed_at_the_idle_timeout_and_a_talking_one_is_not() {
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--idle-timeout-ms", "1000"]);
    let server = Server::start(&args);
    let (_, a) = user(&server, "quiet");
    let (_, b) = user(&server, "chatty");
    for transport in [Transport::Tcp, Transport::WsBinary] {
        let (mut silent, _) =
            Connection::connect(addr(&server, transport), transport, &a.access_token).unwrap();
        let (mut talking, _) =
            Connection::connect(addr(&server, transport), transport, &b.access_token).unwrap();
        let opened = std::time::Instant::now();
        // The talking one pings every 300 ms for 2.5 idle timeouts; the silent one sends
        // nothing and must be closed with 4003 between 1.0 s and 1.0 s + one wheel tick.
        let mut silent_closed = None;
        while opened.elapsed() < Duration::from_millis(2500) {
            talking.ping().unwrap();
            if silent_closed.is_none() {
                match silent.recv(Duration::from_millis(300)) {
                    Ok(_) => {}
                    Err(ClientError::Closed { code, .. }) => {
                        silent_closed = Some((code, opened.elapsed()));
                    }
                    Err(e) => panic!("silent session: {e:?}"),
                }
            } else {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let (code, after) = silent_closed.expect("the silent session was never closed");
        // Raw TCP has no close frame: the socket just ends (code 0).
        let expected = if transport == Transport::Tcp { 0 } else { 4003 };
        assert_eq!(code, expected, "{transport:?}");
        assert!(
            after >= Duration::from_millis(950) && after < Duration::from_millis(1800),
            "{transport:?}: closed after {after:?}"
        );
        talking.ping().expect("the talking session stays open");
    }
}
