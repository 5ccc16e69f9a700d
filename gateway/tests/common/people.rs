//! People for end-to-end chat tests: fresh users and devices, connected clients, and
//! waits for the next push of a kind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wire::client::http::{self, Login};
use wire::client::{sync_until_live, Connection, Transport};
use wire::message::{Body, Frame, PresenceEntry, ReceiptUpdate, StoredMessage, Typing};

use super::Server;

pub const WAIT: Duration = Duration::from_secs(10);
pub const TRANSPORTS: [Transport; 3] = [Transport::WsBinary, Transport::WsJson, Transport::Tcp];

/// Test servers allow far more than the default rate (tests send in tight loops).
pub const FAST: &[&str] = &[
    "--rate-limit-per-sec",
    "100000",
    "--rate-limit-burst",
    "100000",
];

pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Register a fresh user and log in one device.
pub fn user(server: &Server, prefix: &str) -> (String, Login) {
    let name = unique(prefix);
    http::register(server.http, &name, "correct horse").unwrap();
    let login = http::login(server.http, &name, "correct horse", None, Some("test")).unwrap();
    (name, login)
}

/// Another device of a user (a second login).
pub fn device(server: &Server, name: &str) -> Login {
    http::login(server.http, name, "correct horse", None, Some("second")).unwrap()
}

pub fn addr(server: &Server, transport: Transport) -> SocketAddr {
    match transport {
        Transport::Tcp => server.tcp,
        _ => server.http,
    }
}

/// Connect a device and read its catch-up; returns the messages caught up.
pub fn online(
    server: &Server,
    transport: Transport,
    login: &Login,
) -> (Connection, Vec<StoredMessage>) {
    let (mut conn, welcome) =
        Connection::connect(addr(server, transport), transport, &login.access_token).unwrap();
    assert_eq!(
        (welcome.user_id, welcome.device_id),
        (login.user_id, login.device_id)
    );
    let missed = sync_until_live(&mut conn, WAIT).unwrap();
    (conn, missed)
}

/// The next `Deliver`, skipping other pushes.
pub fn next_deliver(conn: &mut Connection) -> StoredMessage {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no Deliver within {WAIT:?}");
        if let Some(Frame {
            body: Body::Deliver(d),
            ..
        }) = conn.recv(WAIT).unwrap()
        {
            return d.message;
        }
    }
}

pub fn next_receipt(conn: &mut Connection) -> ReceiptUpdate {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no ReceiptUpdate within {WAIT:?}"
        );
        if let Some(Frame {
            body: Body::ReceiptUpdate(r),
            ..
        }) = conn.recv(WAIT).unwrap()
        {
            return r;
        }
    }
}

/// Nothing but pings/pongs arrives for `quiet`.
pub fn assert_no_deliver(conn: &mut Connection, quiet: Duration) {
    let until = Instant::now() + quiet;
    while Instant::now() < until {
        if let Some(frame) = conn
            .recv(until.saturating_duration_since(Instant::now()))
            .unwrap()
        {
            assert!(
                !matches!(frame.body, Body::Deliver(_)),
                "unexpected {frame:?}"
            );
        }
    }
}

/// The next pushed presence entry for `user_id` (request id 0), within `within`.
pub fn next_presence(
    conn: &mut Connection,
    user_id: u64,
    within: Duration,
) -> Option<PresenceEntry> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let frame = conn
            .recv_where(left, |f| {
                f.request_id == 0 && matches!(f.body, Body::PresenceUpdate(_))
            })
            .unwrap();
        match frame {
            Some(Frame {
                body: Body::PresenceUpdate(update),
                ..
            }) => {
                if let Some(entry) = update.entries.into_iter().find(|e| e.user_id == user_id) {
                    return Some(entry);
                }
            }
            _ => return None,
        }
    }
}

pub fn next_typing(conn: &mut Connection, within: Duration) -> Option<Typing> {
    match conn
        .recv_where(within, |f| matches!(f.body, Body::Typing(_)))
        .unwrap()
    {
        Some(Frame {
            body: Body::Typing(t),
            ..
        }) => Some(t),
        _ => None,
    }
}

/// Every message of a conversation, through the HTTP history API (walked backwards from
/// the newest page), oldest first.
pub fn full_history(server: &Server, token: &str, conversation_id: u64) -> Vec<StoredMessage> {
    let mut pages = Vec::new();
    let mut before = 0;
    loop {
        let page = http::history(server.http, token, conversation_id, before, 0, 200).unwrap();
        let Some(first) = page.messages.first().map(|m| m.seq) else {
            break;
        };
        before = first;
        let more = page.has_more;
        pages.push(page.messages);
        if !more {
            break;
        }
    }
    pages.into_iter().rev().flatten().collect()
}
