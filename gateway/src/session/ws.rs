//! A WebSocket session after the 101: `wire::ws::WsCodec` (server role) fed from the
//! socket, its output written back, each message decoded by the negotiated subprotocol.
//!
//! States: `Open` (reading frames; before authentication only `Hello` is accepted, see
//! [`gate`]) → `CloseSent` (our close frame is out; wait up to `CLOSE_LINGER` for the
//! peer's) → `Closed`. Any wire error closes with the codec's code (1002/1007/1009).

use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use wire::message::Frame;
use wire::ws::codec::{Event, State, WsCodec, WsConfig};
use wire::ws::handshake::{Subprotocol, UpgradeRequest};
use wire::ws::CloseCode;
use wire::WireError;

use crate::session::gate;
use crate::session::io::{race, Woken};
use crate::session::{CLOSE_LINGER, READ_BYTES};
use crate::shard::Shard;

/// What the session does after handling the buffered input.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Need more bytes.
    Read,
    /// Send our close frame with this code and reason.
    Close(CloseCode, &'static str),
    /// The codec is closed (the peer's close was answered, or a wire error was written).
    Done,
}

/// Run the session to its end; the caller then closes the socket.
pub async fn run(
    shard: &Shard,
    stream: &mut TcpStream,
    upgrade: &UpgradeRequest,
    early_bytes: &[u8],
    accepted_at: Instant,
) {
    let max = shard.config.max_frame_bytes;
    let config = WsConfig::default()
        .with_frame_payload_bytes_max(max)
        .with_message_bytes_max(max);
    let mut codec = WsCodec::server(config);
    codec.feed(early_bytes);
    shard.counters().ws_opened();
    let mut session = Session {
        shard,
        subprotocol: upgrade.subprotocol,
        // Until a Hello is accepted the handshake timeout applies, then the idle timeout.
        deadline: accepted_at + shard.config.handshake_timeout,
        timeout_code: CloseCode::HandshakeTimeout,
    };
    session.drive(stream, &mut codec).await;
    shard.counters().ws_closed();
}

struct Session<'a> {
    shard: &'a Shard,
    subprotocol: Subprotocol,
    deadline: Instant,
    timeout_code: CloseCode,
}

impl Session<'_> {
    async fn drive(&mut self, stream: &mut TcpStream, codec: &mut WsCodec) {
        let mut stop = Some(self.shard.shutdown.wait());
        loop {
            let next = self.handle_input(codec);
            if let Next::Close(code, reason) = next {
                self.close(codec, code, reason);
            }
            if flush(stream, codec).await.is_err() || codec.state() == State::Closed {
                return;
            }
            let read = stream.read(codec.read_space(READ_BYTES));
            match race(read, self.deadline, stop.as_mut()).await {
                Woken::Io(Ok(0)) | Woken::Io(Err(_)) => return,
                Woken::Io(Ok(n)) => codec.commit_read(n, READ_BYTES),
                Woken::Deadline if codec.state() == State::CloseSent => return,
                Woken::Deadline => {
                    let reason = match self.timeout_code {
                        CloseCode::HandshakeTimeout => "handshake timeout",
                        _ => "idle timeout",
                    };
                    self.close(codec, self.timeout_code, reason);
                }
                Woken::Shutdown => {
                    stop = None;
                    self.close(codec, CloseCode::GoingAway, "server shutting down");
                }
            }
        }
    }

    /// Send our close frame (if still open) and give the peer `CLOSE_LINGER` to answer.
    fn close(&mut self, codec: &mut WsCodec, code: CloseCode, reason: &str) {
        if codec.state() == State::Open {
            let _ = codec.close(code, reason);
            self.deadline = self.deadline.min(Instant::now() + CLOSE_LINGER);
        }
    }

    /// Poll every buffered event until the codec needs more bytes or we decide to close.
    fn handle_input(&mut self, codec: &mut WsCodec) -> Next {
        loop {
            let closing = codec.state() != State::Open;
            let decoded = match codec.poll() {
                Ok(None) => return Next::Read,
                Err(error) => return self.wire_failed(&error),
                Ok(Some(Event::Close(_))) => return Next::Done,
                Ok(Some(Event::Ping(_) | Event::Pong(_))) => continue,
                Ok(Some(_)) if closing => continue, // data after our close frame is ignored
                Ok(Some(Event::Text(text))) => match self.subprotocol {
                    Subprotocol::Json => wire::json::from_json(text),
                    Subprotocol::Binary => {
                        return Next::Close(CloseCode::UnsupportedData, "text on confab.v1")
                    }
                },
                Ok(Some(Event::Binary(bytes))) => match self.subprotocol {
                    Subprotocol::Binary => wire::message::from_flatbuffers(bytes),
                    Subprotocol::Json => {
                        return Next::Close(CloseCode::UnsupportedData, "binary on confab.v1.json")
                    }
                },
            };
            match decoded {
                Ok(frame) => return self.frame(codec, &frame),
                Err(error) => {
                    self.shard.counters().protocol_error();
                    tracing::debug!(shard = self.shard.id, %error, "bad frame");
                    return Next::Close(error.close_code(), "invalid frame");
                }
            }
        }
    }

    /// A decoded frame. Not authenticated yet, so every frame meets the gate.
    fn frame(&mut self, codec: &mut WsCodec, frame: &Frame) -> Next {
        let refusal = gate::before_hello(frame);
        let sent = match self.subprotocol {
            Subprotocol::Binary => {
                codec.send_binary(&wire::message::to_flatbuffers(&refusal.reply))
            }
            Subprotocol::Json => codec.send_text(&wire::json::to_json(&refusal.reply)),
        };
        if sent.is_err() {
            return Next::Done;
        }
        Next::Close(refusal.close, refusal.reason)
    }

    fn wire_failed(&self, error: &WireError) -> Next {
        // The codec has already queued a close frame with `error.close_code()`.
        self.shard.counters().protocol_error();
        tracing::debug!(shard = self.shard.id, %error, code = error.close_code().as_u16(),
            "websocket failed");
        Next::Done
    }
}

/// Write everything the codec has queued.
async fn flush(stream: &mut TcpStream, codec: &mut WsCodec) -> std::io::Result<()> {
    while !codec.output().is_empty() {
        let n = stream.write(codec.output()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        codec.advance_output(n);
    }
    stream.flush().await
}
