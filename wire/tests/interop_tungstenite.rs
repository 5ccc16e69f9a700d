//! Interop: our sans-IO codec against an independent WebSocket implementation
//! (tungstenite), over real loopback sockets, in both roles: handshake, text and binary
//! messages, fragmented and large messages in both directions, ping/pong, and the close
//! handshake.

// tungstenite's handshake callback returns its large `ErrorResponse` by value.
#![allow(clippy::result_large_err)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use tungstenite::handshake::server::{Request, Response};
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::{CloseCode as TCloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame as TCloseFrame, Frame};
use tungstenite::Message;
use wire::ws::handshake::{self, ClientHandshake};
use wire::ws::{DataKind, Event, State, Subprotocol, WsCodec, WsConfig};

const LARGE: usize = 3 * 1024 * 1024 + 17;

fn large_payload() -> Vec<u8> {
    (0..LARGE).map(|i| (i * 7 % 251) as u8).collect()
}

fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

fn timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
}

/// Write everything the codec has queued.
fn flush(codec: &mut WsCodec, stream: &mut TcpStream) {
    let out = codec.take_output();
    stream.write_all(&out).unwrap();
}

/// Read from the socket until the codec yields an event; return it as an owned value.
#[derive(Debug, PartialEq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Eof,
}

fn next_event(codec: &mut WsCodec, stream: &mut TcpStream) -> Owned {
    loop {
        if let Some(event) = codec.poll().unwrap() {
            return match event {
                Event::Text(t) => Owned::Text(t.to_string()),
                Event::Binary(b) => Owned::Binary(b.to_vec()),
                Event::Ping(p) => Owned::Ping(p.to_vec()),
                Event::Pong(p) => Owned::Pong(p.to_vec()),
                Event::Close(c) => Owned::Close(c.map(|c| (c.code.as_u16(), c.reason.into()))),
            };
        }
        let space = codec.read_space(64 * 1024);
        let n = stream.read(space).unwrap();
        codec.commit_read(n, 64 * 1024);
        if n == 0 {
            return Owned::Eof;
        }
    }
}

/// Our server: answers the handshake, then echoes every data message. Large messages are
/// echoed fragmented, so tungstenite has to reassemble ours too.
fn our_echo_server(listener: TcpListener) -> thread::JoinHandle<Vec<Owned>> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        timeouts(&stream);
        let mut head = Vec::new();
        let (request, used) = loop {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).unwrap();
            head.extend_from_slice(&buf[..n]);
            if let Some(done) = handshake::parse_request(&head).unwrap() {
                break done;
            }
        };
        assert_eq!(request.subprotocol, Subprotocol::Binary);
        assert_eq!(request.path, "/ws?probe=1");
        let mut out = Vec::new();
        handshake::write_accept(&request, &mut out);
        stream.write_all(&out).unwrap();
        let mut codec = WsCodec::server(WsConfig::default());
        codec.feed(&head[used..]);
        let mut seen = Vec::new();
        loop {
            let event = next_event(&mut codec, &mut stream);
            match &event {
                Owned::Text(t) => codec
                    .send_fragmented(DataKind::Text, t.as_bytes(), 1000)
                    .unwrap(),
                Owned::Binary(b) => codec.send_fragmented(DataKind::Binary, b, 100_000).unwrap(),
                Owned::Ping(_) | Owned::Pong(_) => {}
                Owned::Close(_) | Owned::Eof => {
                    flush(&mut codec, &mut stream);
                    seen.push(event);
                    return seen;
                }
            }
            flush(&mut codec, &mut stream);
            seen.push(event);
        }
    })
}

#[test]
fn tungstenite_client_against_our_server() {
    let (listener, addr) = listener();
    let server = our_echo_server(listener);

    let stream = TcpStream::connect(&addr).unwrap();
    timeouts(&stream);
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{addr}/ws?probe=1"
    ))
    .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("confab.v1"),
    );
    let (mut ws, response) = tungstenite::client::client(request, stream).unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "confab.v1");

    ws.send(Message::text("hello κόσμε")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello κόσμε"));

    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![1u8, 2, 3]));

    // A message tungstenite sends in three fragments, with a ping in between.
    ws.write(Message::Frame(Frame::message(
        &b"frag"[..],
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.write(Message::Ping(b"mid".to_vec().into())).unwrap();
    ws.write(Message::Frame(Frame::message(
        &b"men"[..],
        OpCode::Data(Data::Continue),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::message(
        &b"ted"[..],
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"mid".to_vec().into()));
    assert_eq!(ws.read().unwrap(), Message::text("fragmented"));

    // Large binary both ways; ours comes back in 100 KB fragments.
    let large = large_payload();
    ws.send(Message::binary(large.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(large));

    // Close handshake initiated by the client.
    ws.close(Some(TCloseFrame {
        code: TCloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, TCloseCode::Normal);
                continue;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    let seen = server.join().unwrap();
    assert_eq!(seen.last(), Some(&Owned::Close(Some((1000, "bye".into())))));
    assert!(seen.contains(&Owned::Ping(b"mid".to_vec())));
}

#[test]
fn our_client_against_tungstenite_server() {
    let (listener, addr) = listener();
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        timeouts(&stream);
        let callback = |req: &Request, mut resp: Response| {
            let offered = req.headers()["Sec-WebSocket-Protocol"]
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(offered, "confab.v1.json, confab.v1");
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("confab.v1.json"),
            );
            Ok(resp)
        };
        let mut ws = tungstenite::accept_hdr(stream, callback).unwrap();
        let mut received = Vec::new();
        loop {
            match ws.read().unwrap() {
                Message::Text(t) if t.as_str() == "close please" => break,
                msg @ (Message::Text(_) | Message::Binary(_)) => {
                    ws.send(msg.clone()).unwrap();
                    received.push(msg);
                }
                _ => {}
            }
        }
        // Server-initiated close; our client must echo it.
        ws.close(Some(TCloseFrame {
            code: TCloseCode::Away,
            reason: "going".into(),
        }))
        .unwrap();
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("server close handshake failed: {e}"),
            }
        }
        received
    });

    let mut stream = TcpStream::connect(&addr).unwrap();
    timeouts(&stream);
    let mut out = Vec::new();
    let hs = ClientHandshake::new(
        &addr,
        "/ws",
        &[Subprotocol::Json, Subprotocol::Binary],
        &mut out,
    );
    stream.write_all(&out).unwrap();
    let mut head = Vec::new();
    let (protocol, used) = loop {
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap();
        head.extend_from_slice(&buf[..n]);
        if let Some(done) = hs.parse_response(&head).unwrap() {
            break done;
        }
    };
    assert_eq!(protocol, Subprotocol::Json);
    let mut codec = WsCodec::client(WsConfig::default());
    codec.feed(&head[used..]);

    codec.send_text("{\"hello\":\"κόσμε\"}").unwrap();
    flush(&mut codec, &mut stream);
    assert_eq!(
        next_event(&mut codec, &mut stream),
        Owned::Text("{\"hello\":\"κόσμε\"}".into())
    );

    codec
        .send_fragmented(DataKind::Text, "ü".repeat(5000).as_bytes(), 777)
        .unwrap();
    flush(&mut codec, &mut stream);
    assert_eq!(
        next_event(&mut codec, &mut stream),
        Owned::Text("ü".repeat(5000))
    );

    let large = large_payload();
    codec
        .send_fragmented(DataKind::Binary, &large, 65_536)
        .unwrap();
    flush(&mut codec, &mut stream);
    assert_eq!(
        next_event(&mut codec, &mut stream),
        Owned::Binary(large.clone())
    );

    codec.ping(b"are you there").unwrap();
    codec.send_text("close please").unwrap();
    flush(&mut codec, &mut stream);
    assert_eq!(
        next_event(&mut codec, &mut stream),
        Owned::Pong(b"are you there".to_vec())
    );
    assert_eq!(
        next_event(&mut codec, &mut stream),
        Owned::Close(Some((1001, "going".into())))
    );
    assert_eq!(codec.state(), State::Closed);
    flush(&mut codec, &mut stream); // the echo
    let received = server.join().unwrap();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2], Message::binary(large));
    // Nothing after the close handshake: the server closed its socket.
    assert_eq!(next_event(&mut codec, &mut stream), Owned::Eof);
}
