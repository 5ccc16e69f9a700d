//! End to end: presence and typing on the real server over loopback — online, away,
//! offline at the idle timeout of a device that stopped heartbeating, last-seen kept
//! across a SIGKILL, visibility limited to shared conversations, coalesced subscription
//! updates, and typing that reaches the other members and expires.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::people::*;
use common::Server;
use wire::client::{ClientError, Connection, Transport};
use wire::message::{
    Body, ErrorCode, PresenceEntry, PresenceQuery, PresenceSet, PresenceStatus, PresenceSubscribe,
    PresenceUnsubscribe, Typing,
};

/// Short intervals so the tests see heartbeats, coalescing and expiry in seconds.
const PRESENCE: &[&str] = &[
    "--idle-timeout-ms",
    "1500",
    "--heartbeat-interval-ms",
    "400",
    "--presence-coalesce-ms",
    "200",
    "--presence-persist-interval-ms",
    "300",
    "--typing-ttl-ms",
    "1000",
];

fn server_in(dir: Option<std::path::PathBuf>, extra: &[&str]) -> Server {
    let mut args = FAST.to_vec();
    // Flags in `extra` replace the defaults above (clap refuses a flag twice).
    for pair in PRESENCE.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    match dir {
        Some(dir) => Server::start_in(dir, &args),
        None => Server::start(&args),
    }
}

fn subscribe(conn: &mut Connection, user_ids: &[u64]) -> Vec<PresenceEntry> {
    let body = Body::PresenceSubscribe(PresenceSubscribe {
        user_ids: user_ids.to_vec(),
    });
    match conn.call(body, WAIT).unwrap().body {
        Body::PresenceUpdate(update) => update.entries,
        other => panic!("expected PresenceUpdate, got {other:?}"),
    }
}

fn query(conn: &mut Connection, user_ids: &[u64]) -> Vec<PresenceEntry> {
    let body = Body::PresenceQuery(PresenceQuery {
        user_ids: user_ids.to_vec(),
    });
    match conn.call(body, WAIT).unwrap().body {
        Body::PresenceUpdate(update) => update.entries,
        other => panic!("expected PresenceUpdate, got {other:?}"),
    }
}

fn set_status(conn: &mut Connection, status: PresenceStatus) {
    conn.request(Body::PresenceSet(PresenceSet { status }))
        .unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn presence_follows_devices_heartbeats_and_survives_a_kill() {
    let mut server = server_in(None, &[]);
    let (_, a) = user(&server, "pa");
    let (_, b) = user(&server, "pb");
    let (_, stranger) = user(&server, "ps");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    ca.open_direct(b.user_id).unwrap();

    // Only users sharing a conversation are visible; strangers look like unknown ids.
    let entries = subscribe(&mut ca, &[b.user_id, stranger.user_id, 12345]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].user_id, b.user_id);
    assert_eq!(entries[0].status, PresenceStatus::Offline);
    assert_eq!(entries[0].last_seen_ms, 0, "never seen");
    let (mut cs, _) = online(&server, Transport::Tcp, &stranger);
    assert!(query(&mut cs, &[a.user_id, b.user_id]).is_empty());
    assert_eq!(
        query(&mut cs, &[stranger.user_id]).len(),
        1,
        "self is visible"
    );

    // Online when a device connects (over another transport), Away when it says so.
    let (mut cb, _) = online(&server, Transport::WsJson, &b);
    let seen = next_presence(&mut ca, b.user_id, WAIT).expect("online update");
    assert_eq!(seen.status, PresenceStatus::Online);
    set_status(&mut cb, PresenceStatus::Away);
    let seen = next_presence(&mut ca, b.user_id, WAIT).expect("away update");
    assert_eq!(seen.status, PresenceStatus::Away);
    set_status(&mut cb, PresenceStatus::Online);
    assert_eq!(
        next_presence(&mut ca, b.user_id, WAIT).unwrap().status,
        PresenceStatus::Online
    );

    // A device that heartbeats stays online past the idle timeout (1.5 s).
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        cb.ping().unwrap();
        ca.ping().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let entries = query(&mut ca, &[b.user_id]);
    assert_eq!(entries[0].status, PresenceStatus::Online);
    assert!(
        entries[0].last_seen_ms + 2000 >= now_ms(),
        "last seen follows heartbeats: {entries:?}"
    );

    // It vanishes: no close, no heartbeat. The idle timeout takes it offline, with
    // last-seen at its last frame.
    let last_frame = now_ms();
    cb.ping().unwrap();
    let vanished = Instant::now();
    let offline = loop {
        ca.ping().unwrap();
        if let Some(e) = next_presence(&mut ca, b.user_id, Duration::from_millis(300)) {
            break e;
        }
        assert!(vanished.elapsed() < WAIT, "no offline update");
    };
    assert_eq!(offline.status, PresenceStatus::Offline);
    assert!(
        vanished.elapsed() >= Duration::from_millis(1200),
        "offline only at the idle timeout, after {:?}",
        vanished.elapsed()
    );
    assert!(
        offline.last_seen_ms >= last_frame && offline.last_seen_ms <= last_frame + 500,
        "last seen {} vs last frame {last_frame}",
        offline.last_seen_ms
    );
    drop(cb);

    // Written within the persist interval (300 ms): it survives a SIGKILL.
    std::thread::sleep(Duration::from_millis(1000));
    server.kill();
    let server = server_in(Some(server.data_dir.clone()), &[]);
    let (mut ca, _) = online(&server, Transport::Tcp, &a);
    let entries = query(&mut ca, &[b.user_id]);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, PresenceStatus::Offline);
    assert_eq!(entries[0].last_seen_ms, offline.last_seen_ms);
}

#[test]
fn subscribers_get_coalesced_updates_and_can_unsubscribe() {
    // A 1 s window: a user flapping 20 times within it reaches subscribers at most twice.
    let server = server_in(
        None,
        &[
            "--presence-coalesce-ms",
            "1000",
            "--idle-timeout-ms",
            "30000",
        ],
    );
    let (_, a) = user(&server, "ca");
    let (_, b) = user(&server, "cb");
    let (_, c) = user(&server, "cc");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    let group = ca
        .create_group("watchers", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;
    assert!(group != 0);
    let (mut cc, _) = online(&server, Transport::Tcp, &c);
    // Two subscribers on possibly different shards, to the same user.
    assert_eq!(subscribe(&mut ca, &[b.user_id]).len(), 1);
    assert_eq!(subscribe(&mut cc, &[b.user_id]).len(), 1);
    let (mut cb, _) = online(&server, Transport::WsJson, &b);
    for conn in [&mut ca, &mut cc] {
        assert_eq!(
            next_presence(conn, b.user_id, WAIT).unwrap().status,
            PresenceStatus::Online
        );
    }
    let flaps = 21;
    for i in 0..flaps {
        let status = if i % 2 == 0 {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        set_status(&mut cb, status);
    }
    cb.ping().unwrap();
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_millis(3000);
    while let Some(e) = next_presence(
        &mut ca,
        b.user_id,
        until.saturating_duration_since(Instant::now()),
    ) {
        seen.push(e.status);
    }
    assert!(
        !seen.is_empty() && seen.len() <= 2,
        "{flaps} flaps became {seen:?}"
    );
    assert_eq!(seen.last(), Some(&PresenceStatus::Away), "the final state");

    // Unsubscribed: c hears nothing more; a still does.
    let body = Body::PresenceUnsubscribe(PresenceUnsubscribe {
        user_ids: vec![b.user_id],
    });
    cc.call(body, WAIT).unwrap();
    let _ = next_presence(&mut cc, b.user_id, Duration::from_millis(1500));
    set_status(&mut cb, PresenceStatus::Online);
    assert_eq!(
        next_presence(&mut ca, b.user_id, WAIT).unwrap().status,
        PresenceStatus::Online
    );
    assert!(
        next_presence(&mut cc, b.user_id, Duration::from_millis(1500)).is_none(),
        "unsubscribed"
    );
    // Invisible: connected, but shown as offline.
    set_status(&mut cb, PresenceStatus::Offline);
    assert_eq!(
        next_presence(&mut ca, b.user_id, WAIT).unwrap().status,
        PresenceStatus::Offline
    );
}

#[test]
fn typing_reaches_the_other_members_and_expires() {
    let server = server_in(None, &["--idle-timeout-ms", "30000"]);
    let (_, a) = user(&server, "ta");
    let (_, b) = user(&server, "tb");
    let (_, c) = user(&server, "tc");
    let (_, outsider) = user(&server, "to");
    let (mut ca, _) = online(&server, Transport::WsBinary, &a);
    let (mut cb, _) = online(&server, Transport::WsJson, &b);
    let (mut cc, _) = online(&server, Transport::Tcp, &c);
    let (mut co, _) = online(&server, Transport::Tcp, &outsider);
    let direct = ca.open_direct(b.user_id).unwrap().conversation_id;

    // 1:1: start reaches b with a's id; without a refresh it stops after the TTL (1 s).
    let typing = |conversation_id, active| {
        Body::Typing(Typing {
            conversation_id,
            user_id: 0,
            active,
        })
    };
    let started = Instant::now();
    ca.request(typing(direct, true)).unwrap();
    let t = next_typing(&mut cb, WAIT).expect("typing start");
    assert_eq!(
        (t.conversation_id, t.user_id, t.active),
        (direct, a.user_id, true)
    );
    let t = next_typing(&mut cb, WAIT).expect("typing expiry");
    assert_eq!((t.user_id, t.active), (a.user_id, false));
    let expired_after = started.elapsed();
    assert!(
        expired_after >= Duration::from_millis(900) && expired_after < Duration::from_secs(4),
        "expired after {expired_after:?}"
    );

    // Refreshes keep it going and are not forwarded; an explicit stop is.
    ca.request(typing(direct, true)).unwrap();
    assert!(next_typing(&mut cb, WAIT).unwrap().active);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        ca.request(typing(direct, true)).unwrap();
    }
    ca.request(typing(direct, false)).unwrap();
    let t = next_typing(&mut cb, WAIT).unwrap();
    assert!(
        !t.active,
        "the refreshes were absorbed, the stop came through"
    );
    assert!(next_typing(&mut cb, Duration::from_millis(500)).is_none());

    // A group: both other members see it, the typist does not.
    let group = ca
        .create_group("typists", &[b.user_id, c.user_id])
        .unwrap()
        .conversation_id;
    cb.request(typing(group, true)).unwrap();
    for conn in [&mut ca, &mut cc] {
        let t = next_typing(conn, WAIT).expect("group typing");
        assert_eq!(
            (t.conversation_id, t.user_id, t.active),
            (group, b.user_id, true)
        );
    }
    // The typist disconnects: the others see the stop at once, not at the TTL.
    drop(cb);
    for conn in [&mut ca, &mut cc] {
        let t = next_typing(conn, Duration::from_millis(900)).expect("stop on disconnect");
        assert_eq!((t.user_id, t.active), (b.user_id, false));
    }

    // Not a member: a typed refusal, and nobody hears it.
    match co.call(typing(direct, true), WAIT) {
        Err(ClientError::ServerError(e)) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
    assert!(next_typing(&mut ca, Duration::from_millis(300)).is_none());

    // Never written to the log.
    let page = ca.history(direct, 0, 0, 50).unwrap();
    assert!(page.messages.is_empty(), "{:?}", page.messages);
}
