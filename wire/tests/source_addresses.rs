//! `client::set_source_addresses`: connections bind to the given local addresses, round
//! robin, before they connect. Its own test binary because the setting is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, TcpListener};

use wire::client::{self, Connection, Transport};

#[test]
fn connections_take_the_source_addresses_in_turn() {
    let sources: Vec<IpAddr> = [2, 3, 4]
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .to_vec();
    assert!(client::set_source_addresses(sources.clone()));
    assert!(
        !client::set_source_addresses(Vec::new()),
        "a second call changes nothing"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = std::thread::spawn(move || {
        (0..6)
            .map(|_| {
                let (stream, peer) = listener.accept().unwrap();
                drop(stream);
                peer.ip()
            })
            .collect::<Vec<IpAddr>>()
    });
    // `open` connects (raw TCP needs no handshake before Hello); the server side just
    // records who connected.
    for _ in 0..6 {
        let conn = Connection::open(addr, Transport::Tcp).unwrap();
        assert_eq!(conn.peer_addr(), addr);
    }
    let seen = accepting.join().unwrap();
    let mut expected = sources.clone();
    expected.extend(sources);
    assert_eq!(seen, expected, "round robin over the sources");
    // A refused connection is still an error, not a panic.
    let refused = Connection::open(("127.0.0.1", 1), Transport::Tcp);
    assert!(refused.is_err());
}
