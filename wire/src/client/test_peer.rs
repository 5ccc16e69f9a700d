//! A fake Confab server for the client's own tests: one accepted connection spoken to
//! with `wire`'s server-side codecs, on loopback. Every read times out after 5 s.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Transport;
use crate::message::{self, Body, Frame, StoredMessage, Welcome};
use crate::tcp_frame::{self, TcpFrameDecoder};
use crate::ws::{handshake, CloseCode, Event, Subprotocol, WsCodec, WsConfig};
use crate::{json, limits};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What the fake server saw next.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub(super) enum PeerEvent {
    Frame(Frame),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    Eof,
}

enum PeerCodec {
    Ws { codec: WsCodec, json: bool },
    Tcp(TcpFrameDecoder),
}

pub(super) struct Peer {
    stream: TcpStream,
    codec: PeerCodec,
}

/// Listen on loopback and run `script` on the first connection in a thread.
pub(super) fn serve<T: std::marker::Send + 'static>(
    transport: Transport,
    script: impl FnOnce(Peer) -> T + std::marker::Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || script(Peer::accept(&listener, transport)));
    (addr, handle)
}

/// A chat message `(conversation_id, seq)`.
pub(super) fn chat(conversation_id: u64, seq: u64) -> StoredMessage {
    StoredMessage {
        conversation_id,
        seq,
        message_id: conversation_id * 1000 + seq,
        body: format!("m{seq}").into_bytes(),
        ..StoredMessage::default()
    }
}

impl Peer {
    /// Accept one connection; for WebSocket, complete the upgrade (checking the client
    /// asked for the subprotocol of `transport`).
    pub(super) fn accept(listener: &TcpListener, transport: Transport) -> Peer {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let codec = match transport {
            Transport::Tcp => PeerCodec::Tcp(TcpFrameDecoder::new(limits::FRAME_BYTES_MAX)),
            Transport::WsBinary | Transport::WsJson => {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (request, len) = loop {
                    let n = stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "eof during handshake");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(parsed) = handshake::parse_request(&buf).unwrap() {
                        break parsed;
                    }
                };
                assert_eq!(request.path, "/ws");
                let json = transport == Transport::WsJson;
                let expected = if json {
                    Subprotocol::Json
                } else {
                    Subprotocol::Binary
                };
                assert_eq!(request.subprotocol, expected);
                let mut out = Vec::new();
                handshake::write_accept(&request, &mut out);
                stream.write_all(&out).unwrap();
                let mut codec = WsCodec::server(WsConfig::default());
                codec.feed(&buf[len..]);
                PeerCodec::Ws { codec, json }
            }
        };
        Peer { stream, codec }
    }

    /// The next frame or control event from the client.
    pub(super) fn next(&mut self) -> PeerEvent {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let event = match &mut self.codec {
                PeerCodec::Ws { codec, json } => match codec.poll().unwrap() {
                    Some(Event::Binary(bytes)) => {
                        assert!(!*json, "binary message on the JSON subprotocol");
                        Some(PeerEvent::Frame(message::from_flatbuffers(bytes).unwrap()))
                    }
                    Some(Event::Text(text)) => {
                        assert!(*json, "text message on the binary subprotocol");
                        Some(PeerEvent::Frame(json::from_json(text).unwrap()))
                    }
                    Some(Event::Ping(payload)) => Some(PeerEvent::Ping(payload.to_vec())),
                    Some(Event::Pong(payload)) => Some(PeerEvent::Pong(payload.to_vec())),
                    Some(Event::Close(frame)) => {
                        Some(PeerEvent::Close(frame.map(|f| f.code.as_u16())))
                    }
                    None => None,
                },
                PeerCodec::Tcp(decoder) => decoder
                    .poll()
                    .unwrap()
                    .map(|bytes| PeerEvent::Frame(message::from_flatbuffers(bytes).unwrap())),
            };
            self.flush();
            if let Some(event) = event {
                return event;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return PeerEvent::Eof,
                Ok(n) => match &mut self.codec {
                    PeerCodec::Ws { codec, .. } => codec.feed(&chunk[..n]),
                    PeerCodec::Tcp(decoder) => decoder.feed(&chunk[..n]),
                },
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return PeerEvent::Eof,
                Err(e) => panic!("fake server read failed: {e}"),
            }
        }
    }

    /// The next frame; anything else fails the test.
    pub(super) fn recv(&mut self) -> Frame {
        match self.next() {
            PeerEvent::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Send `frames` in one write.
    pub(super) fn send(&mut self, frames: &[Frame]) {
        match &mut self.codec {
            PeerCodec::Ws { codec, json } => {
                for frame in frames {
                    if *json {
                        codec.send_text(&json::to_json(frame)).unwrap();
                    } else {
                        codec.send_binary(&message::to_flatbuffers(frame)).unwrap();
                    }
                }
                self.flush();
            }
            PeerCodec::Tcp(_) => {
                let mut out = Vec::new();
                for frame in frames {
                    tcp_frame::encode(&message::to_flatbuffers(frame), &mut out).unwrap();
                }
                self.stream.write_all(&out).unwrap();
            }
        }
    }

    /// Expect `Hello`, answer `Welcome{user_id, device_id: 1}` with its request id.
    pub(super) fn hello(&mut self, user_id: u64) -> Frame {
        let hello = self.recv();
        assert!(matches!(hello.body, Body::Hello(_)), "{hello:?}");
        self.send(&[Frame {
            request_id: hello.request_id,
            body: Body::Welcome(Welcome {
                user_id,
                device_id: 1,
                session_id: 1,
                heartbeat_interval_ms: 30_000,
                max_frame_bytes: limits::FRAME_BYTES_MAX as u32,
                ..Welcome::default()
            }),
        }]);
        hello
    }

    pub(super) fn ping(&mut self, payload: &[u8]) {
        if let PeerCodec::Ws { codec, .. } = &mut self.codec {
            codec.ping(payload).unwrap();
        }
        self.flush();
    }

    /// WebSocket: send a close frame. TCP: shut the connection down.
    pub(super) fn close(&mut self, code: u16, reason: &str) {
        match &mut self.codec {
            PeerCodec::Ws { codec, .. } => {
                codec
                    .close(CloseCode::from_wire(code).unwrap(), reason)
                    .unwrap();
                self.flush();
            }
            PeerCodec::Tcp(_) => {
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn flush(&mut self) {
        if let PeerCodec::Ws { codec, .. } = &mut self.codec {
            let out = codec.take_output();
            // The client may already be gone.
            let _ = self.stream.write_all(&out);
        }
    }
}
