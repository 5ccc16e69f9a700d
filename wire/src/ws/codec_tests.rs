//! Tests for the codec, grouped like the Autobahn testsuite's case groups:
//! 1 framing, 2 pings/pongs, 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8,
//! 7 close handling, 9 limits — plus masking rules and a client/server pair.

use super::*;
use crate::ws::close::CloseCode;
use proptest::prelude::*;

/// An owned copy of an event, so tests can collect them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn own(event: Event<'_>) -> Ev {
    match event {
        Event::Text(t) => Ev::Text(t.to_string()),
        Event::Binary(b) => Ev::Binary(b.to_vec()),
        Event::Ping(p) => Ev::Ping(p.to_vec()),
        Event::Pong(p) => Ev::Pong(p.to_vec()),
        Event::Close(c) => Ev::Close(c.map(|c| (c.code.as_u16(), c.reason.to_string()))),
    }
}

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A raw frame as a client would send it (masked with `KEY` when `masked`).
fn raw(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![b0];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mut body = payload.to_vec();
    if masked {
        out.extend_from_slice(&KEY);
        crate::ws::mask::apply_mask_bytes(&mut body, KEY);
    }
    out.extend_from_slice(&body);
    out
}

/// A masked client frame: FIN + opcode in `b0`.
fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
    raw(b0, payload, true)
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

/// Feed `bytes` to a fresh server codec in chunks of `chunk` and collect everything.
fn run_server(bytes: &[u8], chunk: usize) -> (Vec<Ev>, Option<WireError>, WsCodec) {
    run(WsCodec::server(WsConfig::default()), bytes, chunk)
}

fn run(mut codec: WsCodec, bytes: &[u8], chunk: usize) -> (Vec<Ev>, Option<WireError>, WsCodec) {
    let mut events = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        codec.feed(piece);
        loop {
            match codec.poll() {
                Ok(Some(event)) => events.push(own(event)),
                Ok(None) => break,
                Err(e) => return (events, Some(e), codec),
            }
        }
    }
    (events, None, codec)
}

/// Decode what a server codec wrote, as a client would.
fn server_output(codec: &WsCodec) -> Vec<Ev> {
    let (events, err, _) = run(
        WsCodec::client(WsConfig::default()),
        codec.output(),
        usize::MAX,
    );
    assert_eq!(err, None, "server output must be valid for a client");
    events
}

fn close_code_of(err: &Option<WireError>) -> Option<u16> {
    err.as_ref().map(|e| e.close_code().as_u16())
}

// ----- 1. Framing ------------------------------------------------------------------------

#[test]
fn case_1_text_and_binary_of_every_length_form() {
    for len in [0usize, 1, 125, 126, 127, 128, 65535, 65536, 100_000] {
        let text: String = "a".repeat(len);
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes = concat(&[client(0x81, text.as_bytes()), client(0x82, &data)]);
        for chunk in [1usize, 7, 4096, usize::MAX] {
            if len > 1000 && chunk < 4096 {
                continue;
            }
            let (events, err, _) = run_server(&bytes, chunk);
            assert_eq!(err, None, "len {len} chunk {chunk}");
            assert_eq!(
                events,
                vec![Ev::Text(text.clone()), Ev::Binary(data.clone())]
            );
        }
    }
}

#[test]
fn case_1_many_frames_in_one_read() {
    let frames: Vec<Vec<u8>> = (0..100u8).map(|i| client(0x82, &[i; 3])).collect();
    let (events, err, _) = run_server(&concat(&frames), usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events.len(), 100);
    assert_eq!(events[99], Ev::Binary(vec![99; 3]));
}

#[test]
fn case_1_server_frames_are_unmasked_and_minimal() {
    let mut codec = WsCodec::server(WsConfig::default());
    codec.send_text("Hello").unwrap();
    assert_eq!(codec.output(), [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
    codec.advance_output(7);
    codec.send_binary(&[0u8; 256]).unwrap();
    assert_eq!(&codec.output()[..4], [0x82, 0x7E, 0x01, 0x00]);
}

// ----- 2. Pings and pongs ----------------------------------------------------------------

#[test]
fn case_2_ping_is_answered_with_identical_pong() {
    for payload in [&b""[..], b"hello", &[0xFFu8; 125][..], &[0, 1, 2, 0xFE][..]] {
        let (events, err, codec) = run_server(&client(0x89, payload), usize::MAX);
        assert_eq!(err, None);
        assert_eq!(events, vec![Ev::Ping(payload.to_vec())]);
        assert_eq!(server_output(&codec), vec![Ev::Pong(payload.to_vec())]);
    }
}

#[test]
fn case_2_ping_with_126_bytes_fails_with_1002() {
    let (events, err, _) = run_server(&client(0x89, &[0u8; 126]), usize::MAX);
    assert!(events.is_empty());
    assert_eq!(close_code_of(&err), Some(1002));
}

#[test]
fn case_2_unsolicited_pong_is_reported_and_not_answered() {
    let (events, err, codec) = run_server(&client(0x8A, b"unsolicited"), usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Pong(b"unsolicited".to_vec())]);
    assert!(codec.output().is_empty());
}

#[test]
fn case_2_ten_pings_get_ten_pongs_in_order() {
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| client(0x89, &[i])).collect();
    for chunk in [1, usize::MAX] {
        let (_, err, codec) = run_server(&concat(&frames), chunk);
        assert_eq!(err, None);
        let pongs: Vec<Ev> = (0..10u8).map(|i| Ev::Pong(vec![i])).collect();
        assert_eq!(server_output(&codec), pongs);
    }
}

// ----- 3. Reserved bits ------------------------------------------------------------------

#[test]
fn case_3_any_reserved_bit_fails_after_earlier_messages() {
    for rsv in 1u8..8 {
        for opcode in [0x1u8, 0x2, 0x9] {
            let bad = client(0x80 | (rsv << 4) | opcode, b"x");
            let bytes = concat(&[client(0x81, b"before"), bad, client(0x89, b"after")]);
            let (events, err, codec) = run_server(&bytes, usize::MAX);
            assert_eq!(
                events,
                vec![Ev::Text("before".into())],
                "rsv {rsv} op {opcode}"
            );
            assert_eq!(close_code_of(&err), Some(1002));
            assert_eq!(
                server_output(&codec),
                vec![Ev::Close(Some((1002, String::new())))]
            );
            assert_eq!(codec.state(), State::Closed);
        }
    }
}

// ----- 4. Opcodes ------------------------------------------------------------------------

#[test]
fn case_4_reserved_opcodes_fail_with_1002() {
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        for payload in [&b""[..], b"reserved"] {
            let (events, err, _) = run_server(&client(0x80 | opcode, payload), usize::MAX);
            assert!(events.is_empty());
            assert_eq!(
                err,
                Some(WireError::Protocol(crate::ProtocolError::ReservedOpcode(
                    opcode
                )))
            );
        }
    }
}

// ----- 5. Fragmentation ------------------------------------------------------------------

#[test]
fn case_5_fragmented_ping_fails() {
    let (_, err, _) = run_server(&client(0x09, b"frag"), usize::MAX);
    assert_eq!(close_code_of(&err), Some(1002));
}

#[test]
fn case_5_text_in_fragments_with_pings_between() {
    let bytes = concat(&[
        client(0x01, b"frag"),
        client(0x89, b"p1"),
        client(0x00, b"men"),
        client(0x8A, b"p2"),
        client(0x80, b"ted"),
    ]);
    for chunk in [1, 2, 5, usize::MAX] {
        let (events, err, codec) = run_server(&bytes, chunk);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                Ev::Ping(b"p1".to_vec()),
                Ev::Pong(b"p2".to_vec()),
                Ev::Text("fragmented".into())
            ]
        );
        assert_eq!(server_output(&codec), vec![Ev::Pong(b"p1".to_vec())]);
    }
}

#[test]
fn case_5_one_byte_and_empty_fragments() {
    let mut frames = vec![client(0x02, b"")];
    for b in b"abcdefgh" {
        frames.push(client(0x00, &[*b]));
        frames.push(client(0x00, b""));
    }
    frames.push(client(0x80, b""));
    let (events, err, _) = run_server(&concat(&frames), 3);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Binary(b"abcdefgh".to_vec())]);
}

#[test]
fn case_5_continuation_without_start_fails() {
    for b0 in [0x00u8, 0x80] {
        let (_, err, _) = run_server(&client(b0, b"orphan"), usize::MAX);
        assert_eq!(
            err,
            Some(WireError::Protocol(
                crate::ProtocolError::UnexpectedContinuation
            ))
        );
    }
}

#[test]
fn case_5_new_message_while_fragmented_fails() {
    for second in [0x81u8, 0x02] {
        let bytes = concat(&[client(0x01, b"start"), client(second, b"again")]);
        let (_, err, _) = run_server(&bytes, usize::MAX);
        assert_eq!(
            err,
            Some(WireError::Protocol(
                crate::ProtocolError::ExpectedContinuation
            ))
        );
    }
}

#[test]
fn case_5_sent_fragments_reassemble() {
    let mut sender = WsCodec::client(WsConfig::default()).with_mask_seed(7);
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
    sender
        .send_fragmented(DataKind::Binary, &payload, 333)
        .unwrap();
    sender
        .send_fragmented(DataKind::Text, "κόσμε".as_bytes(), 1)
        .unwrap();
    sender.send_fragmented(DataKind::Binary, &[], 10).unwrap();
    let (events, err, _) = run_server(sender.output(), 1000);
    assert_eq!(err, None);
    assert_eq!(
        events,
        vec![
            Ev::Binary(payload),
            Ev::Text("κόσμε".into()),
            Ev::Binary(vec![])
        ]
    );
}

// ----- 6. UTF-8 --------------------------------------------------------------------------

#[test]
fn case_6_valid_utf8_split_at_every_byte() {
    let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 🌍";
    let bytes = text.as_bytes();
    for cut in 0..bytes.len() {
        let frames = concat(&[client(0x01, &bytes[..cut]), client(0x80, &bytes[cut..])]);
        let (events, err, _) = run_server(&frames, usize::MAX);
        assert_eq!(err, None, "cut {cut}");
        assert_eq!(events, vec![Ev::Text(text.into())]);
    }
}

#[test]
fn case_6_invalid_utf8_fails_with_1007() {
    let invalid: [&[u8]; 6] = [
        &[
            0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
        ],
        &[0xF4, 0x90, 0x80, 0x80],
        &[0xC0, 0xAF],
        &[0x80],
        &[0xFE],
        &[0xF0, 0x9F, 0x98],
    ];
    for bad in invalid {
        let (_, err, codec) = run_server(&client(0x81, bad), usize::MAX);
        assert_eq!(close_code_of(&err), Some(1007), "{bad:?}");
        assert_eq!(
            server_output(&codec),
            vec![Ev::Close(Some((1007, String::new())))]
        );
    }
}

#[test]
fn case_6_invalid_utf8_fails_fast_before_the_last_fragment() {
    // Autobahn 6.4.x: the bad byte arrives in the first fragment; we must not wait.
    let bytes = client(0x01, &[0xCE, 0xBA, 0xF4, 0x90, 0x80, 0x80]);
    let (_, err, _) = run_server(&bytes, usize::MAX);
    assert_eq!(close_code_of(&err), Some(1007));
}

#[test]
fn case_6_binary_is_not_utf8_checked() {
    let (events, err, _) = run_server(&client(0x82, &[0xFF, 0xFE]), usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Binary(vec![0xFF, 0xFE])]);
}

// ----- 7. Close handling -----------------------------------------------------------------

#[test]
fn case_7_close_without_payload_is_echoed_empty() {
    let (events, err, codec) = run_server(&client(0x88, b""), usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Close(None)]);
    assert_eq!(server_output(&codec), vec![Ev::Close(None)]);
    assert_eq!(codec.state(), State::Closed);
}

#[test]
fn case_7_close_code_is_echoed_and_later_frames_ignored() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye κόσμε".as_bytes());
    let bytes = concat(&[
        client(0x88, &payload),
        client(0x81, b"after close"),
        client(0x89, b""),
    ]);
    let (events, err, mut codec) = run_server(&bytes, usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Close(Some((1000, "bye κόσμε".into())))]);
    assert_eq!(
        server_output(&codec),
        vec![Ev::Close(Some((1000, String::new())))]
    );
    assert_eq!(codec.send_text("late"), Err(SendError::Closed));
}

#[test]
fn case_7_close_payload_of_one_byte_fails() {
    let (_, err, _) = run_server(&client(0x88, &[0x03]), usize::MAX);
    assert_eq!(
        err,
        Some(WireError::Protocol(
            crate::ProtocolError::CloseFrameLengthOne
        ))
    );
}

#[test]
fn case_7_close_codes_valid_and_invalid() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let (events, err, _) = run_server(&client(0x88, &code.to_be_bytes()), usize::MAX);
        assert_eq!(err, None, "{code}");
        assert_eq!(events, vec![Ev::Close(Some((code, String::new())))]);
    }
    for code in [
        0u16,
        999,
        1004,
        1005,
        1006,
        1012 + 4,
        1100,
        2000,
        2999,
        5000,
        65535,
    ] {
        let (_, err, codec) = run_server(&client(0x88, &code.to_be_bytes()), usize::MAX);
        assert_eq!(close_code_of(&err), Some(1002), "{code}");
        assert_eq!(
            server_output(&codec),
            vec![Ev::Close(Some((1002, String::new())))]
        );
    }
}

#[test]
fn case_7_close_reason_with_bad_utf8_fails_with_1007() {
    let payload = [0x03, 0xE8, 0xCE, 0xBA, 0xF4, 0x90, 0x80, 0x80];
    let (_, err, _) = run_server(&client(0x88, &payload), usize::MAX);
    assert_eq!(close_code_of(&err), Some(1007));
}

#[test]
fn case_7_locally_initiated_close_handshake() {
    let mut server = WsCodec::server(WsConfig::default());
    server.close(CloseCode::GoingAway, "shutting down").unwrap();
    assert_eq!(server.state(), State::CloseSent);
    assert_eq!(
        server_output(&server),
        vec![Ev::Close(Some((1001, "shutting down".into())))]
    );
    server.advance_output(server.output().len());
    assert_eq!(server.send_text("no more"), Err(SendError::Closed));
    // Data still in flight from the peer is delivered, then its Close completes the
    // handshake without another reply.
    server.feed(&client(0x81, b"in flight"));
    server.feed(&client(0x88, &1001u16.to_be_bytes()));
    assert_eq!(
        own(server.poll().unwrap().unwrap()),
        Ev::Text("in flight".into())
    );
    assert_eq!(
        own(server.poll().unwrap().unwrap()),
        Ev::Close(Some((1001, String::new())))
    );
    assert_eq!(server.state(), State::Closed);
    assert!(server.output().is_empty());
}

#[test]
fn case_7_long_close_reason_is_truncated_at_a_char_boundary() {
    let mut server = WsCodec::server(WsConfig::default());
    server.close(CloseCode::Normal, &"é".repeat(100)).unwrap();
    let events = server_output(&server);
    let Ev::Close(Some((1000, reason))) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(reason.len(), 122);
}

// ----- 9. Limits -------------------------------------------------------------------------

#[test]
fn case_9_frame_over_the_limit_fails_from_the_header_alone() {
    let config = WsConfig::default().with_frame_payload_bytes_max(1000);
    let frame = client(0x82, &[0u8; 1001]);
    // Feed only the header: the codec must refuse before buffering the payload.
    let (_, err, codec) = run(WsCodec::server(config), &frame[..8], usize::MAX);
    assert_eq!(close_code_of(&err), Some(1009));
    assert_eq!(
        server_output(&codec),
        vec![Ev::Close(Some((1009, String::new())))]
    );
    let (events, err, _) = run(WsCodec::server(config), &client(0x82, &[1u8; 1000]), 64);
    assert_eq!((events.len(), err), (1, None));
}

#[test]
fn case_9_reassembled_message_over_the_limit_fails() {
    let config = WsConfig::default().with_message_bytes_max(1000);
    let bytes = concat(&[client(0x02, &[0u8; 600]), client(0x80, &[0u8; 401])]);
    let (_, err, _) = run(WsCodec::server(config), &bytes, usize::MAX);
    assert!(matches!(
        err,
        Some(WireError::Capacity(CapacityError::MessageTooLarge { .. }))
    ));
}

#[test]
fn case_9_too_many_fragments_fails() {
    let config = WsConfig::default().with_message_fragments_max(4);
    let mut frames = vec![client(0x02, b"a")];
    frames.extend((0..4).map(|_| client(0x00, b"b")));
    let (_, err, _) = run(WsCodec::server(config), &concat(&frames), usize::MAX);
    assert_eq!(
        err,
        Some(WireError::Capacity(CapacityError::TooManyFragments {
            max: 4
        }))
    );
}

#[test]
fn case_9_config_cannot_raise_crate_limits() {
    let config = WsConfig::default().with_message_bytes_max(usize::MAX);
    assert_eq!(config.message_bytes_max(), WS_MESSAGE_BYTES_MAX);
}

#[test]
fn case_9_large_message_at_the_limit_in_many_reads() {
    let payload = vec![0xAB; WS_MESSAGE_BYTES_MAX];
    let (events, err, _) = run_server(&client(0x82, &payload), 64 * 1024);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Binary(payload)]);
}

// ----- Masking ---------------------------------------------------------------------------

#[test]
fn masking_server_rejects_unmasked_client_frames() {
    let (_, err, codec) = run_server(&raw(0x82, b"plain", false), usize::MAX);
    assert_eq!(
        err,
        Some(WireError::Protocol(
            crate::ProtocolError::UnmaskedClientFrame
        ))
    );
    assert_eq!(
        server_output(&codec),
        vec![Ev::Close(Some((1002, String::new())))]
    );
}

#[test]
fn masking_client_rejects_masked_server_frames() {
    let (_, err, _) = run(WsCodec::client(WsConfig::default()), &client(0x82, b"x"), 1);
    assert_eq!(
        err,
        Some(WireError::Protocol(crate::ProtocolError::MaskedServerFrame))
    );
}

#[test]
fn masking_client_output_is_masked_with_fresh_keys() {
    let mut c = WsCodec::client(WsConfig::default()).with_mask_seed(1);
    c.send_binary(b"same").unwrap();
    c.send_binary(b"same").unwrap();
    let out = c.output().to_vec();
    assert_eq!(out[1] & 0x80, 0x80);
    assert_eq!(out.len(), 2 * (2 + 4 + 4));
    assert_ne!(out[2..6], out[12..16], "each frame gets its own key");
    assert_ne!(&out[6..10], b"same");
}

// ----- Pair: client codec ↔ server codec ------------------------------------------------

#[test]
fn pair_client_and_server_talk_both_ways_and_close() {
    let mut client_codec = WsCodec::client(WsConfig::default());
    let mut server_codec = WsCodec::server(WsConfig::default());
    client_codec.send_text("hi server").unwrap();
    client_codec.ping(b"rtt").unwrap();
    let (events, err, s) = run(server_codec, &client_codec.take_output(), 5);
    server_codec = s;
    assert_eq!(err, None);
    assert_eq!(
        events,
        vec![Ev::Text("hi server".into()), Ev::Ping(b"rtt".to_vec())]
    );
    server_codec.send_binary(&[9; 70_000]).unwrap();
    server_codec.close(CloseCode::Normal, "done").unwrap();
    let (events, err, c) = run(client_codec, &server_codec.take_output(), 1000);
    client_codec = c;
    assert_eq!(err, None);
    assert_eq!(
        events,
        vec![
            Ev::Pong(b"rtt".to_vec()),
            Ev::Binary(vec![9; 70_000]),
            Ev::Close(Some((1000, "done".into())))
        ]
    );
    assert_eq!(client_codec.state(), State::Closed);
    // The client's echo completes the server's handshake.
    let (events, err, s) = run(server_codec, &client_codec.take_output(), usize::MAX);
    assert_eq!(err, None);
    assert_eq!(events, vec![Ev::Close(Some((1000, String::new())))]);
    assert_eq!(s.state(), State::Closed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of messages, fragmented any way, read in any chunk size, arrives intact.
    #[test]
    fn pair_round_trip(
        messages in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..3000), 1usize..4000),
            0..10,
        ),
        chunk in 1usize..5000,
        seed in any::<u64>(),
    ) {
        let mut sender = WsCodec::client(WsConfig::default()).with_mask_seed(seed);
        let mut expected = Vec::new();
        for (is_text, bytes, fragment) in &messages {
            if *is_text {
                let text = String::from_utf8_lossy(bytes).into_owned();
                sender.send_fragmented(DataKind::Text, text.as_bytes(), *fragment).unwrap();
                expected.push(Ev::Text(text));
            } else {
                sender.send_fragmented(DataKind::Binary, bytes, *fragment).unwrap();
                expected.push(Ev::Binary(bytes.clone()));
            }
        }
        let (events, err, _) = run_server(sender.output(), chunk);
        prop_assert_eq!(err, None);
        prop_assert_eq!(events, expected);
    }

    /// Arbitrary bytes never panic the server codec, and an error always leaves it closed
    /// with a Close frame queued.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (_, err, codec) = run_server(&bytes, 13);
        if err.is_some() {
            prop_assert_eq!(codec.state(), State::Closed);
            prop_assert!(!codec.output().is_empty());
        }
    }
}
