//! The key directory end to end: uploads, bundles, one-time keys handed out once each
//! under concurrent claims and across a restart, and the running-low signal.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::people::{self, user, FAST, WAIT};
use common::Server;
use wire::client::{ClientError, Connection, Transport};
use wire::message::{Body, ErrorCode, Frame, KeysUpload, OneTimeKey, SignedPreKey};

fn code_of(error: ClientError) -> ErrorCode {
    match error {
        ClientError::ServerError(e) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

fn one_time_keys(ids: std::ops::RangeInclusive<u64>) -> Vec<OneTimeKey> {
    ids.map(|key_id| OneTimeKey {
        key_id,
        public_key: format!("otk-{key_id:04}").into_bytes(),
    })
    .collect()
}

fn first_upload(ids: std::ops::RangeInclusive<u64>) -> KeysUpload {
    KeysUpload {
        identity_key: b"identity-key-of-this-device".to_vec(),
        signed_pre_key: Some(SignedPreKey {
            key_id: 1,
            public_key: b"signed-pre-key".to_vec(),
            signature: b"signature".to_vec(),
        }),
        one_time_keys: one_time_keys(ids),
    }
}

/// Wait for a `KeysLow` push; returns the count it reports.
fn next_keys_low(conn: &mut Connection) -> u32 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no KeysLow within {WAIT:?}"
        );
        if let Some(Frame {
            body: Body::KeysLow(low),
            ..
        }) = conn.recv(WAIT).unwrap()
        {
            return low.one_time_keys_remaining;
        }
    }
}

#[test]
fn uploads_are_validated_and_bundles_carry_the_keys() {
    let server = Server::start(FAST);
    let (_, bob) = user(&server, "bob");
    let (_, alice) = user(&server, "alice");
    let (mut b, _) = people::online(&server, Transport::WsJson, &bob);
    let (mut a, _) = people::online(&server, Transport::WsBinary, &alice);

    // Nothing published yet: a bundle with no devices.
    assert!(a.keys_fetch(bob.user_id, 0).unwrap().devices.is_empty());
    let missing = a.keys_fetch(bob.user_id, bob.device_id).unwrap_err();
    assert_eq!(code_of(missing), ErrorCode::NotFound);
    let nobody = a.keys_fetch(12345, 0).unwrap_err();
    assert_eq!(code_of(nobody), ErrorCode::NotFound);

    // The first upload needs an identity key and a signed pre-key.
    let bare = KeysUpload {
        one_time_keys: one_time_keys(1..=3),
        ..KeysUpload::default()
    };
    assert_eq!(
        code_of(b.keys_upload(bare).unwrap_err()),
        ErrorCode::InvalidArgument
    );
    assert_eq!(b.keys_upload(first_upload(1..=3)).unwrap(), 3);
    // A retried upload is harmless; a reused id with another key is refused.
    assert_eq!(b.keys_upload(first_upload(1..=3)).unwrap(), 3);
    let mut reused = first_upload(3..=3);
    reused.one_time_keys[0].public_key = b"another key".to_vec();
    assert_eq!(
        code_of(b.keys_upload(reused).unwrap_err()),
        ErrorCode::InvalidArgument
    );
    // More keys need only the keys.
    let more = KeysUpload {
        one_time_keys: one_time_keys(4..=5),
        ..KeysUpload::default()
    };
    assert_eq!(b.keys_upload(more).unwrap(), 5);

    let bundle = a.keys_fetch(bob.user_id, 0).unwrap();
    assert_eq!(bundle.user_id, bob.user_id);
    assert_eq!(bundle.devices.len(), 1);
    let device = &bundle.devices[0];
    assert_eq!(device.device_id, bob.device_id);
    assert_eq!(device.identity_key, b"identity-key-of-this-device");
    assert_eq!(
        device
            .signed_pre_key
            .as_ref()
            .map(|k| k.public_key.as_slice()),
        Some(&b"signed-pre-key"[..])
    );
    let key = device.one_time_key.as_ref().unwrap();
    assert_eq!(
        key.public_key,
        format!("otk-{:04}", key.key_id).into_bytes()
    );

    // A pool over the cap is refused whole.
    let flood = KeysUpload {
        one_time_keys: one_time_keys(100..=199),
        ..KeysUpload::default()
    };
    assert_eq!(b.keys_upload(flood.clone()).unwrap(), 104);
    let flood = KeysUpload {
        one_time_keys: one_time_keys(200..=299),
        ..KeysUpload::default()
    };
    assert_eq!(
        code_of(b.keys_upload(flood).unwrap_err()),
        ErrorCode::TooLarge
    );
}

#[test]
fn one_time_keys_are_handed_out_once_even_under_concurrent_claims() {
    const KEYS: u64 = 100;
    const CLAIMERS: usize = 6;
    const CLAIMS_EACH: usize = 20;
    let server = Server::start(FAST);
    let (bob_name, bob) = user(&server, "bob");
    let (mut b, _) = people::online(&server, Transport::Tcp, &bob);
    assert_eq!(b.keys_upload(first_upload(1..=KEYS)).unwrap(), KEYS as u32);

    // Claimers on several connections (and so several shards) claim at once.
    let start = Arc::new(Barrier::new(CLAIMERS));
    let claimers: Vec<_> = (0..CLAIMERS)
        .map(|i| {
            let (_, login) = user(&server, "claimer");
            let transport = [Transport::Tcp, Transport::WsBinary, Transport::WsJson][i % 3];
            let (mut conn, _) = people::online(&server, transport, &login);
            let start = start.clone();
            let bob_id = bob.user_id;
            std::thread::spawn(move || {
                start.wait();
                let mut got = Vec::new();
                for _ in 0..CLAIMS_EACH {
                    let bundle = conn.keys_fetch(bob_id, 0).unwrap();
                    assert_eq!(bundle.devices.len(), 1);
                    let device = &bundle.devices[0];
                    assert!(
                        device.signed_pre_key.is_some(),
                        "the fallback is always there"
                    );
                    got.extend(device.one_time_key.as_ref().map(|k| k.key_id));
                }
                got
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.join().unwrap());
    }
    let distinct: HashSet<u64> = claimed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        claimed.len(),
        "a one-time key was handed out twice"
    );
    assert_eq!(claimed.len() as u64, KEYS, "every key was handed out, once");
    assert_eq!(distinct, (1..=KEYS).collect::<HashSet<u64>>());
    assert_eq!(
        common::metric_sum(&server, "confab_keys_claimed_total"),
        KEYS
    );

    // Bob was told the pool ran low (pushes arrive as the pool shrinks past the mark).
    assert!(next_keys_low(&mut b) < 10);

    // After a restart the claims hold: the pool is still empty, and old ids cannot be
    // published again; a device that connects with a low pool is told so.
    drop(b);
    let dir = server.data_dir.clone();
    server.terminate();
    let mut server = server;
    server.wait_exit(Duration::from_secs(10));
    let server = Server::start_in(dir, FAST);
    let (_, carol) = user(&server, "carol");
    let (mut c, _) = people::online(&server, Transport::WsJson, &carol);
    let bundle = c.keys_fetch(bob.user_id, 0).unwrap();
    assert!(bundle.devices[0].one_time_key.is_none(), "{bundle:?}");
    let (mut b, _) = people::online(&server, Transport::Tcp, &bob);
    assert_eq!(next_keys_low(&mut b), 0);
    let replay = KeysUpload {
        one_time_keys: one_time_keys(50..=50),
        ..KeysUpload::default()
    };
    assert_eq!(
        b.keys_upload(replay).unwrap(),
        0,
        "an id published (and handed out) before is not published again"
    );
    let fresh = KeysUpload {
        one_time_keys: one_time_keys(KEYS + 1..=KEYS + 20),
        ..KeysUpload::default()
    };
    assert_eq!(b.keys_upload(fresh).unwrap(), 20);
    let key = c.keys_fetch(bob.user_id, bob.device_id).unwrap().devices[0]
        .one_time_key
        .clone()
        .unwrap();
    assert_eq!(key.key_id, KEYS + 1);
    let _ = bob_name;
}
