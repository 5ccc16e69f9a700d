//! Crash test: several clients send under steady load over all transports, the server is
//! SIGKILLed mid-stream and restarted on the same data directory. Every message a client
//! saw acknowledged must be in history exactly once, at its acknowledged sequence, in a
//! gap-free order; retries of the sends that were in flight (same idempotency key) are
//! stored at most once; and recipients that reconnect are delivered everything.
//!
//! `CRASH_ROUNDS` (default 2) sets how many kill/restart rounds run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::people::full_history;
use common::{fresh_dir, Server};
use wire::client::http::{self, Login};
use wire::client::{new_key, sync_until_live, ClientError, Connection, Transport};
use wire::message::{AckStatus, IdempotencyKey};

const FAST: &[&str] = &[
    "--rate-limit-per-sec",
    "100000",
    "--rate-limit-burst",
    "100000",
];
const PAIRS: usize = 3;
const WAIT: Duration = Duration::from_secs(20);

/// What one sender knows: acknowledged (seq, body) and the sends in flight at the crash.
#[derive(Default)]
struct Outcome {
    acked: Vec<(u64, Vec<u8>)>,
    in_flight: Option<(IdempotencyKey, Vec<u8>)>,
}

fn login(server: &Server, name: &str) -> Login {
    http::login(server.http, name, "correct horse", None, None).unwrap()
}

fn transport_addr(server: &Server, transport: Transport) -> std::net::SocketAddr {
    match transport {
        Transport::Tcp => server.tcp,
        _ => server.http,
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_exactly_once_in_order() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = fresh_dir();
    let mut server = Server::start_in(dir.clone(), FAST);
    // Pairs of users; the first of each pair sends, the second receives.
    let mut pairs = Vec::new();
    for p in 0..PAIRS {
        let (s, r) = (
            format!("crash_s{p}_{}", std::process::id()),
            format!("crash_r{p}_{}", std::process::id()),
        );
        http::register(server.http, &s, "correct horse").unwrap();
        http::register(server.http, &r, "correct horse").unwrap();
        let (sender, receiver) = (login(&server, &s), login(&server, &r));
        let (mut conn, _) =
            Connection::connect(server.http, Transport::WsBinary, &sender.access_token).unwrap();
        let id = conn.open_direct(receiver.user_id).unwrap().conversation_id;
        pairs.push((s, r, id, sender.device_id, receiver.device_id));
    }
    let transports = [Transport::WsBinary, Transport::WsJson, Transport::Tcp];
    let mut acked: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Vec<Arc<Mutex<Outcome>>> = (0..PAIRS).map(|_| Arc::default()).collect();
        let threads: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(p, (s, _, id, device, _))| {
                let transport = transports[(p + round) % transports.len()];
                let addr = transport_addr(&server, transport);
                let token = http::login(server.http, s, "correct horse", Some(*device), None)
                    .unwrap()
                    .access_token;
                let (stop, outcome, id) = (stop.clone(), outcomes[p].clone(), *id);
                std::thread::spawn(move || {
                    let (mut conn, _) = Connection::connect(addr, transport, &token).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let body = format!("r{round}p{p}n{n}").into_bytes();
                        let key = new_key();
                        outcome.lock().unwrap().in_flight = Some((key, body.clone()));
                        match conn.send_message(id, &body, key) {
                            Ok(ack) => {
                                assert_eq!(ack.status, AckStatus::Stored);
                                let mut o = outcome.lock().unwrap();
                                o.acked.push((ack.seq, body));
                                o.in_flight = None;
                            }
                            Err(_) => return, // the server died
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        // Steady load, then SIGKILL with sends in flight.
        std::thread::sleep(Duration::from_millis(1500));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        server = Server::start_in(dir.clone(), FAST);
        for (p, (s, _, id, device, _)) in pairs.iter().enumerate() {
            let mut outcome = outcomes[p].lock().unwrap();
            assert!(
                !outcome.acked.is_empty(),
                "round {round}: pair {p} sent nothing before the kill"
            );
            acked.entry(*id).or_default().append(&mut outcome.acked);
            // Retry the send that was in flight, with its key: stored at most once.
            if let Some((key, body)) = outcome.in_flight.take() {
                let token = http::login(server.http, s, "correct horse", Some(*device), None)
                    .unwrap()
                    .access_token;
                let (mut conn, _) =
                    Connection::connect(server.tcp, Transport::Tcp, &token).unwrap();
                let ack = conn.send_message(*id, &body, key).unwrap();
                acked.get_mut(id).unwrap().push((ack.seq, body));
                let again = conn.send_message(*id, b"ignored: same key", key).unwrap();
                assert_eq!((again.status, again.seq), (AckStatus::Duplicate, ack.seq));
            }
        }
        // History: gap-free, every acknowledged message exactly once at its sequence.
        for (s, r, id, _, receiver_device) in &pairs {
            let token = login(&server, s).access_token;
            let history = full_history(&server, &token, *id);
            let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
            assert_eq!(
                seqs,
                (1..=history.len() as u64).collect::<Vec<_>>(),
                "round {round}: gap-free"
            );
            let bodies: HashSet<&[u8]> = history.iter().map(|m| m.body.as_slice()).collect();
            assert_eq!(
                bodies.len(),
                history.len(),
                "round {round}: no message stored twice"
            );
            for (seq, body) in &acked[id] {
                let stored = &history[(*seq - 1) as usize];
                assert_eq!(
                    &stored.body, body,
                    "round {round}: ack seq {seq} holds its message"
                );
            }
            // The receiver's device reconnects and is delivered everything, in order.
            let receiver = http::login(
                server.http,
                r,
                "correct horse",
                Some(*receiver_device),
                None,
            )
            .unwrap();
            let (mut conn, _) =
                Connection::connect(server.http, Transport::WsJson, &receiver.access_token)
                    .unwrap();
            let delivered = sync_until_live(&mut conn, WAIT).unwrap();
            let got: Vec<u64> = delivered
                .iter()
                .filter(|m| m.conversation_id == *id)
                .map(|m| m.seq)
                .collect();
            assert_eq!(
                got, seqs,
                "round {round}: catch-up delivers all of it in order"
            );
            match conn.ping() {
                Ok(_) => {}
                Err(ClientError::Closed { .. }) => panic!("receiver dropped"),
                Err(e) => panic!("{e:?}"),
            }
        }
    }
}
