//! One interface over the two transports of an authenticated session: WebSocket (either
//! subprotocol) and raw TCP. Frames in, frames out, bytes to the socket; sans-IO.

use wire::message::Frame;
use wire::tcp_frame::{self, TcpFrameDecoder};
use wire::ws::codec::{Event, State, WsCodec, WsConfig};
use wire::ws::handshake::Subprotocol;
use wire::ws::CloseCode;
use wire::WireError;

/// Which protocol a connection speaks (kept across a hand-off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws(Subprotocol),
    Tcp,
}

/// Why decoding stopped.
#[derive(Debug)]
pub enum InputEnd {
    /// The peer closed (WebSocket close frame answered).
    Closed,
    /// Bad bytes: close with this code (TCP: disconnect).
    Invalid(CloseCode, String),
}

pub enum Codec {
    Ws {
        codec: Box<WsCodec>,
        subprotocol: Subprotocol,
    },
    Tcp {
        decoder: TcpFrameDecoder,
        output: Vec<u8>,
        /// Bytes of `output` already written.
        written: usize,
        frame_bytes_max: usize,
        closed: bool,
    },
}

/// What [`Codec::send`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The connection is closing: nothing more can be sent.
    Closing,
    /// The encoded frame (this many bytes) is over the raw-TCP frame limit; not sent.
    TooLarge(usize),
}

impl Codec {
    pub fn is_websocket(&self) -> bool {
        matches!(self, Codec::Ws { .. })
    }

    pub fn new(transport: Transport, max_frame_bytes: usize) -> Codec {
        match transport {
            Transport::Ws(subprotocol) => Codec::Ws {
                codec: Box::new(WsCodec::server(
                    WsConfig::default()
                        .with_frame_payload_bytes_max(max_frame_bytes)
                        .with_message_bytes_max(max_frame_bytes),
                )),
                subprotocol,
            },
            Transport::Tcp => Codec::Tcp {
                decoder: TcpFrameDecoder::new(max_frame_bytes),
                output: Vec::new(),
                written: 0,
                frame_bytes_max: max_frame_bytes,
                closed: false,
            },
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        match self {
            Codec::Ws { codec, .. } => codec.feed(bytes),
            Codec::Tcp { decoder, .. } => decoder.feed(bytes),
        }
    }

    pub fn read_space(&mut self, min: usize) -> &mut [u8] {
        match self {
            Codec::Ws { codec, .. } => codec.read_space(min),
            Codec::Tcp { decoder, .. } => decoder.read_space(min),
        }
    }

    pub fn commit_read(&mut self, n: usize, offered: usize) {
        match self {
            Codec::Ws { codec, .. } => codec.commit_read(n, offered),
            Codec::Tcp { decoder, .. } => decoder.commit_read(n, offered),
        }
    }

    /// The next complete application frame, if buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, InputEnd> {
        match self {
            Codec::Ws { codec, subprotocol } => loop {
                let closing = codec.state() != State::Open;
                let decoded = match codec.poll() {
                    Ok(None) => return Ok(None),
                    Err(error) => return Err(invalid(&error)),
                    Ok(Some(Event::Close(_))) => return Err(InputEnd::Closed),
                    Ok(Some(Event::Ping(_) | Event::Pong(_))) => continue,
                    Ok(Some(_)) if closing => continue,
                    Ok(Some(Event::Text(text))) => match subprotocol {
                        Subprotocol::Json => wire::json::from_json(text),
                        Subprotocol::Binary => {
                            return Err(InputEnd::Invalid(
                                CloseCode::UnsupportedData,
                                "text on confab.v1".into(),
                            ))
                        }
                    },
                    Ok(Some(Event::Binary(bytes))) => match subprotocol {
                        Subprotocol::Binary => wire::message::from_flatbuffers(bytes),
                        Subprotocol::Json => {
                            return Err(InputEnd::Invalid(
                                CloseCode::UnsupportedData,
                                "binary on confab.v1.json".into(),
                            ))
                        }
                    },
                };
                return decoded.map(Some).map_err(|e| invalid(&e));
            },
            Codec::Tcp {
                decoder, closed, ..
            } => {
                if *closed {
                    return Ok(None);
                }
                match decoder.poll() {
                    Ok(None) => Ok(None),
                    Ok(Some(bytes)) => wire::message::from_flatbuffers(bytes)
                        .map(Some)
                        .map_err(|e| invalid(&e)),
                    Err(error) => Err(invalid(&error)),
                }
            }
        }
    }

    /// Queue one frame.
    pub fn send(&mut self, frame: &Frame) -> Sent {
        match self {
            Codec::Ws { codec, subprotocol } => {
                let queued = match subprotocol {
                    Subprotocol::Binary => codec.send_binary(&wire::message::to_flatbuffers(frame)),
                    Subprotocol::Json => codec.send_text(&wire::json::to_json(frame)),
                };
                // The WebSocket codec refuses only when closing.
                if queued.is_ok() {
                    Sent::Queued
                } else {
                    Sent::Closing
                }
            }
            Codec::Tcp {
                output,
                frame_bytes_max,
                closed,
                ..
            } => {
                if *closed {
                    return Sent::Closing;
                }
                let bytes = wire::message::to_flatbuffers(frame);
                if bytes.len() > *frame_bytes_max {
                    return Sent::TooLarge(bytes.len());
                }
                match tcp_frame::encode(&bytes, output) {
                    Ok(()) => Sent::Queued,
                    Err(_) => Sent::TooLarge(bytes.len()),
                }
            }
        }
    }

    /// Start closing: a close frame (WebSocket) or nothing more to send (TCP).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        match self {
            Codec::Ws { codec, .. } => {
                if codec.state() == State::Open {
                    let _ = codec.close(code, reason);
                }
            }
            Codec::Tcp { closed, .. } => *closed = true,
        }
    }

    /// Whether the session is over once the output is written.
    pub fn is_finished(&self) -> bool {
        match self {
            Codec::Ws { codec, .. } => codec.state() == State::Closed,
            Codec::Tcp { closed, .. } => *closed,
        }
    }

    /// Whether our close has been sent and we only wait for the peer's.
    pub fn is_closing(&self) -> bool {
        match self {
            Codec::Ws { codec, .. } => codec.state() == State::CloseSent,
            Codec::Tcp { closed, .. } => *closed,
        }
    }

    pub fn output(&self) -> &[u8] {
        match self {
            Codec::Ws { codec, .. } => codec.output(),
            Codec::Tcp {
                output, written, ..
            } => output.get(*written..).unwrap_or_default(),
        }
    }

    pub fn advance_output(&mut self, n: usize) {
        match self {
            Codec::Ws { codec, .. } => codec.advance_output(n),
            Codec::Tcp {
                output, written, ..
            } => {
                *written += n;
                if *written >= output.len() {
                    output.clear();
                    *written = 0;
                }
            }
        }
    }

    /// Free buffers that hold nothing; returns whether no input is pending (then the
    /// next read may offer a small buffer).
    pub fn release_idle_memory(&mut self) -> bool {
        match self {
            Codec::Ws { codec, .. } => codec.release_idle_memory(),
            Codec::Tcp {
                decoder, output, ..
            } => {
                if output.is_empty() {
                    *output = Vec::new();
                }
                decoder.release_idle_memory()
            }
        }
    }

    /// Bytes read but not decoded, for a hand-off (`None`: cannot be handed off now).
    pub fn take_unread_input(&mut self) -> Option<Vec<u8>> {
        match self {
            Codec::Ws { codec, .. } => codec.take_unread_input(),
            Codec::Tcp { decoder, .. } => Some(decoder.take_unread_input()),
        }
    }
}

fn invalid(error: &WireError) -> InputEnd {
    InputEnd::Invalid(error.close_code(), error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::message::{Body, Pong};

    /// A tiny Pong (`error_bytes` 0), or an Error whose message has `error_bytes` bytes
    /// (standing in for a big answer).
    fn frame(request_id: u64, error_bytes: usize) -> Frame {
        if error_bytes == 0 {
            return Frame {
                request_id,
                body: Body::Pong(Pong {
                    nonce: 1,
                    server_time_ms: 2,
                }),
            };
        }
        crate::chat::ApiError::new(wire::message::ErrorCode::Internal, "x".repeat(error_bytes))
            .frame(request_id)
    }

    #[test]
    fn an_oversized_frame_is_refused_alone_and_later_frames_still_go_out() {
        let mut codec = Codec::new(Transport::Tcp, 256);
        assert_eq!(codec.send(&frame(1, 0)), Sent::Queued);
        let queued = codec.output().len();
        assert!(matches!(codec.send(&frame(2, 900)), Sent::TooLarge(n) if n > 256));
        assert_eq!(
            codec.output().len(),
            queued,
            "nothing of the big frame was queued"
        );
        assert_eq!(codec.send(&frame(3, 0)), Sent::Queued);
        assert!(codec.output().len() > queued);
    }
}
