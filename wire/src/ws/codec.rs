//! The WebSocket message state machine (RFC 6455 §5–7), sans-IO, for both roles.
//!
//! Bytes in: `feed` (or `read_space` + `commit_read`), then call `poll` until it returns
//! `Ok(None)`. Each `Ok(Some(event))` borrows from the codec until the next call.
//! Bytes out: `send_*`, `ping`, `pong`, `close` append frames to the codec's output buffer;
//! the caller writes `output()` to the socket and calls `advance_output(n)`. Replies the
//! protocol requires (a pong for every ping, the echo of a close) are queued there by
//! `poll` itself, in order with everything else.
//!
//! A protocol violation or exceeded limit makes `poll` return `Err`, queue a Close frame
//! with the matching code (1002, 1007 or 1009) and move to `Closed`: the caller writes the
//! output and closes the TCP connection.
//!
//! Limits are checked from the frame header, before a payload byte is buffered.

use crate::buffer::InputBuffer;
use crate::error::{CapacityError, ProtocolError, SendError, WireError};
use crate::limits::{
    WS_CONTROL_PAYLOAD_BYTES_MAX, WS_FRAME_PAYLOAD_BYTES_MAX, WS_MESSAGE_BYTES_MAX,
    WS_MESSAGE_FRAGMENTS_MAX,
};
use crate::ws::close::CloseCode;
use crate::ws::frame::{FrameHeader, OpCode};
use crate::ws::mask::apply_mask;
use crate::ws::utf8::{Utf8Status, Utf8Validator};

/// Which end of the connection this codec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones.
    Server,
    /// Sends masked frames, receives unmasked ones.
    Client,
}

/// Per-connection limits. Each may be lowered below the crate limit, never raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsConfig {
    frame_payload_bytes_max: usize,
    message_bytes_max: usize,
    message_fragments_max: usize,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            frame_payload_bytes_max: WS_FRAME_PAYLOAD_BYTES_MAX,
            message_bytes_max: WS_MESSAGE_BYTES_MAX,
            message_fragments_max: WS_MESSAGE_FRAGMENTS_MAX,
        }
    }
}

impl WsConfig {
    pub fn with_frame_payload_bytes_max(mut self, bytes: usize) -> WsConfig {
        self.frame_payload_bytes_max = bytes.min(WS_FRAME_PAYLOAD_BYTES_MAX);
        self
    }

    pub fn with_message_bytes_max(mut self, bytes: usize) -> WsConfig {
        self.message_bytes_max = bytes.min(WS_MESSAGE_BYTES_MAX);
        self
    }

    pub fn with_message_fragments_max(mut self, fragments: usize) -> WsConfig {
        self.message_fragments_max = fragments.clamp(1, WS_MESSAGE_FRAGMENTS_MAX);
        self
    }

    pub fn message_bytes_max(&self) -> usize {
        self.message_bytes_max
    }
}

/// What `poll` yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, UTF-8 validated.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; the pong is already queued.
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer closed. If we had not sent a Close yet, the echo is queued; after writing
    /// it, close the TCP connection (the server closes first, RFC 6455 §7.1.1).
    Close(Option<CloseFrame<'a>>),
}

/// The status carried by a Close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: CloseCode,
    pub reason: &'a str,
}

/// Where the connection is in the close handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent Close and wait for the peer's.
    CloseSent,
    /// Both Close frames are exchanged, or the connection failed: nothing more is read or
    /// sent; write out `output()` and close the socket.
    Closed,
}

/// Data message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Text,
    Binary,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Reassembly {
    kind: DataKind,
    fragments: usize,
    utf8: Utf8Validator,
}

/// The RFC 6455 codec. See the module docs.
#[derive(Debug)]
pub struct WsCodec {
    role: Role,
    config: WsConfig,
    state: State,
    input: InputBuffer,
    /// Payload of a fragmented message; also holds the last completed one until the next
    /// call, because the event borrows it.
    message: Vec<u8>,
    reassembly: Option<Reassembly>,
    message_delivered: bool,
    output: Vec<u8>,
    output_start: usize,
    mask_rng: MaskKeys,
}

impl WsCodec {
    pub fn new(role: Role, config: WsConfig) -> WsCodec {
        WsCodec {
            role,
            config,
            state: State::Open,
            input: InputBuffer::default(),
            message: Vec::new(),
            reassembly: None,
            message_delivered: false,
            output: Vec::new(),
            output_start: 0,
            mask_rng: MaskKeys::from_os(),
        }
    }

    pub fn server(config: WsConfig) -> WsCodec {
        WsCodec::new(Role::Server, config)
    }

    pub fn client(config: WsConfig) -> WsCodec {
        WsCodec::new(Role::Client, config)
    }

    /// Use a fixed seed for client masking keys (deterministic tests and benchmarks).
    pub fn with_mask_seed(mut self, seed: u64) -> WsCodec {
        self.mask_rng = MaskKeys::from_seed(seed);
        self
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    // ----- bytes in ---------------------------------------------------------------------

    /// Append bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.feed(bytes);
    }

    /// Space to read at least `min` bytes into; then call `commit_read(n, min)`.
    pub fn read_space(&mut self, min: usize) -> &mut [u8] {
        self.input.read_space(min)
    }

    /// Keep the `n` bytes written into the space from `read_space(offered)`.
    pub fn commit_read(&mut self, n: usize, offered: usize) {
        self.input.commit_read(n, offered);
    }

    /// The next complete message or control frame, `Ok(None)` if more bytes are needed
    /// (or the connection is closed).
    pub fn poll(&mut self) -> Result<Option<Event<'_>>, WireError> {
        self.input.release_pending();
        if self.message_delivered {
            self.message.clear();
            self.message_delivered = false;
        }
        loop {
            if self.state == State::Closed {
                return Ok(None);
            }
            let (header, header_len) = match FrameHeader::parse(self.input.pending()) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    self.input.compact();
                    return Ok(None);
                }
                Err(e) => return Err(self.fail(e.into())),
            };
            if let Err(e) = self.check_header(&header) {
                return Err(self.fail(e));
            }
            // check_header bounded payload_len by a usize limit.
            let payload_len = header.payload_len as usize;
            let frame_len = header_len + payload_len;
            if self.input.pending().len() < frame_len {
                self.input.reserve_frame(frame_len);
                self.input.compact();
                return Ok(None);
            }
            if let Some(key) = header.mask {
                let frame = self.input.pending_mut();
                if let Some(payload) = frame.get_mut(header_len..frame_len) {
                    apply_mask(payload, key, 0);
                }
            }
            match self.handle_frame(&header, header_len, frame_len) {
                Ok(Step::Continue) => continue,
                Ok(Step::Yield(kind)) => return Ok(Some(self.event(kind, header_len, frame_len))),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Frame rules that depend on role, configuration and message state.
    fn check_header(&self, header: &FrameHeader) -> Result<(), WireError> {
        if header.rsv != 0 {
            return Err(ProtocolError::ReservedBitsSet.into());
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame.into()),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame.into()),
            _ => {}
        }
        let max = self.config.frame_payload_bytes_max;
        if header.payload_len > max as u64 {
            return Err(CapacityError::FrameTooLarge {
                size: header.payload_len,
                max,
            }
            .into());
        }
        match (header.opcode, &self.reassembly) {
            (OpCode::Continuation, None) => Err(ProtocolError::UnexpectedContinuation.into()),
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                Err(ProtocolError::ExpectedContinuation.into())
            }
            (OpCode::Text | OpCode::Binary | OpCode::Continuation, _) => {
                let size = self.message.len() as u64 + header.payload_len;
                let max = self.config.message_bytes_max;
                if size > max as u64 {
                    return Err(CapacityError::MessageTooLarge { size, max }.into());
                }
                Ok(())
            }
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => Ok(()),
        }
    }

    /// Act on one complete, unmasked frame at the front of the input.
    fn handle_frame(
        &mut self,
        header: &FrameHeader,
        header_len: usize,
        frame_len: usize,
    ) -> Result<Step, WireError> {
        let pending = self.input.pending();
        let payload = pending.get(header_len..frame_len).unwrap_or_default();
        match header.opcode {
            OpCode::Text | OpCode::Binary if header.fin => {
                if header.opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8.into());
                }
                let kind = data_kind(header.opcode);
                self.input.consume_later(frame_len);
                Ok(Step::Yield(Yield::WholeFrame(kind)))
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                self.reassemble(header, header_len, frame_len)
            }
            OpCode::Ping => {
                let mut reply = [0u8; WS_CONTROL_PAYLOAD_BYTES_MAX];
                let reply = copy_control_payload(payload, &mut reply);
                // Answer pings until the close handshake completes (§5.5.2).
                self.write_frame(OpCode::Pong, true, reply);
                self.input.consume_later(frame_len);
                Ok(Step::Yield(Yield::Ping))
            }
            OpCode::Pong => {
                self.input.consume_later(frame_len);
                Ok(Step::Yield(Yield::Pong))
            }
            OpCode::Close => {
                let code = parse_close_payload(payload)?.map(|(code, _)| code);
                if self.state == State::Open {
                    let mut reply = Vec::with_capacity(2);
                    if let Some(code) = code {
                        reply.extend_from_slice(&code.as_u16().to_be_bytes());
                    }
                    self.write_frame(OpCode::Close, true, &reply);
                }
                self.state = State::Closed;
                self.input.consume_later(frame_len);
                Ok(Step::Yield(Yield::Close))
            }
        }
    }

    /// Append a data frame to the message being reassembled.
    fn reassemble(
        &mut self,
        header: &FrameHeader,
        header_len: usize,
        frame_len: usize,
    ) -> Result<Step, WireError> {
        let mut reassembly = match self.reassembly.take() {
            Some(r) => r,
            None => Reassembly {
                kind: data_kind(header.opcode),
                fragments: 0,
                utf8: Utf8Validator::new(),
            },
        };
        reassembly.fragments += 1;
        if reassembly.fragments > self.config.message_fragments_max {
            let max = self.config.message_fragments_max;
            return Err(CapacityError::TooManyFragments { max }.into());
        }
        let payload = self
            .input
            .pending()
            .get(header_len..frame_len)
            .unwrap_or_default();
        self.message.extend_from_slice(payload);
        self.input.consume(frame_len);
        if reassembly.kind == DataKind::Text
            && reassembly.utf8.check(&self.message, header.fin) == Utf8Status::Invalid
        {
            return Err(ProtocolError::InvalidUtf8.into());
        }
        if header.fin {
            self.message_delivered = true;
            return Ok(Step::Yield(Yield::Reassembled(reassembly.kind)));
        }
        self.reassembly = Some(reassembly);
        Ok(Step::Continue)
    }

    /// Build the event for a frame `handle_frame` decided to yield.
    fn event(&self, kind: Yield, header_len: usize, frame_len: usize) -> Event<'_> {
        let payload = self
            .input
            .pending()
            .get(header_len..frame_len)
            .unwrap_or_default();
        match kind {
            Yield::WholeFrame(DataKind::Binary) => Event::Binary(payload),
            Yield::WholeFrame(DataKind::Text) => Event::Text(utf8_checked(payload)),
            Yield::Reassembled(DataKind::Binary) => Event::Binary(&self.message),
            Yield::Reassembled(DataKind::Text) => Event::Text(utf8_checked(&self.message)),
            Yield::Ping => Event::Ping(payload),
            Yield::Pong => Event::Pong(payload),
            Yield::Close => match parse_close_payload(payload) {
                Ok(Some((code, reason))) => Event::Close(Some(CloseFrame { code, reason })),
                _ => Event::Close(None),
            },
        }
    }

    /// Fail the connection: queue a Close with the error's code and stop.
    fn fail(&mut self, error: WireError) -> WireError {
        if self.state == State::Open {
            let code = error.close_code().as_u16().to_be_bytes();
            self.write_frame(OpCode::Close, true, &code);
        }
        self.state = State::Closed;
        self.reassembly = None;
        error
    }

    // ----- bytes out --------------------------------------------------------------------

    /// Free every buffer that holds nothing (input with no partial frame, output fully
    /// written, no message being reassembled), so an idle connection costs a few words.
    /// Returns whether the input is empty.
    pub fn release_idle_memory(&mut self) -> bool {
        if self.output.is_empty() {
            self.output = Vec::new();
        }
        if self.reassembly.is_none() {
            self.message = Vec::new();
            self.message_delivered = false;
        }
        self.input.release_if_empty()
    }

    /// The bytes read but not yet decoded (after releasing the last event), leaving the
    /// codec's input empty, to move an open connection to another codec or thread.
    /// `None` while a fragmented message is half received or output is still queued:
    /// then the codec's state is more than its unread bytes.
    pub fn take_unread_input(&mut self) -> Option<Vec<u8>> {
        if self.reassembly.is_some() || !self.output().is_empty() {
            return None;
        }
        Some(self.input.take_unread())
    }

    /// Queue a complete data message in one frame.
    pub fn send(&mut self, kind: DataKind, payload: &[u8]) -> Result<(), SendError> {
        self.check_can_send()?;
        let opcode = match kind {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        self.write_frame(opcode, true, payload);
        Ok(())
    }

    pub fn send_binary(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send(DataKind::Binary, payload)
    }

    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send(DataKind::Text, text.as_bytes())
    }

    /// Queue a data message split into frames of at most `fragment_bytes` of payload.
    pub fn send_fragmented(
        &mut self,
        kind: DataKind,
        payload: &[u8],
        fragment_bytes: usize,
    ) -> Result<(), SendError> {
        self.check_can_send()?;
        let mut chunks = payload.chunks(fragment_bytes.max(1)).peekable();
        let mut opcode = match kind {
            DataKind::Text => OpCode::Text,
            DataKind::Binary => OpCode::Binary,
        };
        if chunks.peek().is_none() {
            self.write_frame(opcode, true, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let fin = chunks.peek().is_none();
            self.write_frame(opcode, fin, chunk);
            opcode = OpCode::Continuation;
        }
        Ok(())
    }

    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.check_control(payload.len())?;
        self.write_frame(OpCode::Ping, true, payload);
        Ok(())
    }

    pub fn pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.check_control(payload.len())?;
        self.write_frame(OpCode::Pong, true, payload);
        Ok(())
    }

    /// Start the close handshake. `reason` is cut (at a character boundary) to fit the
    /// 123 bytes a control frame leaves after the code.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.check_can_send()?;
        let mut payload = Vec::with_capacity(WS_CONTROL_PAYLOAD_BYTES_MAX);
        payload.extend_from_slice(&code.as_u16().to_be_bytes());
        payload.extend_from_slice(truncate_utf8(reason, WS_CONTROL_PAYLOAD_BYTES_MAX - 2));
        self.write_frame(OpCode::Close, true, &payload);
        self.state = State::CloseSent;
        Ok(())
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            State::CloseSent | State::Closed => Err(SendError::Closed),
        }
    }

    fn check_control(&self, len: usize) -> Result<(), SendError> {
        if self.state == State::Closed {
            return Err(SendError::Closed);
        }
        if len > WS_CONTROL_PAYLOAD_BYTES_MAX {
            return Err(SendError::ControlPayloadTooLong(len));
        }
        Ok(())
    }

    /// Append one frame to the output, masking it if we are the client.
    fn write_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let mask = match self.role {
            Role::Server => None,
            Role::Client => Some(self.mask_rng.next_key()),
        };
        let header = FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        self.output.reserve(header.encoded_len() + payload.len());
        header.write(&mut self.output);
        let at = self.output.len();
        self.output.extend_from_slice(payload);
        if let (Some(key), Some(written)) = (mask, self.output.get_mut(at..)) {
            apply_mask(written, key, 0);
        }
    }

    /// Bytes waiting to be written to the socket.
    pub fn output(&self) -> &[u8] {
        self.output.get(self.output_start..).unwrap_or_default()
    }

    /// `n` bytes of `output()` were written.
    pub fn advance_output(&mut self, n: usize) {
        self.output_start = (self.output_start + n).min(self.output.len());
        if self.output_start == self.output.len() {
            self.output.clear();
            self.output_start = 0;
        }
    }

    /// Take all pending output at once.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.output);
        out.drain(..self.output_start);
        self.output_start = 0;
        out
    }

    /// Bytes of memory held by this codec's buffers (for per-connection accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.input.capacity() + self.message.capacity() + self.output.capacity()
    }
}

enum Step {
    Continue,
    Yield(Yield),
}

#[derive(Clone, Copy)]
enum Yield {
    WholeFrame(DataKind),
    Reassembled(DataKind),
    Ping,
    Pong,
    Close,
}

/// Copy a control payload (≤ 125 bytes, checked by the header parser) to the stack so the
/// reply can be written while the input buffer is borrowed.
fn copy_control_payload<'a>(
    payload: &[u8],
    buf: &'a mut [u8; WS_CONTROL_PAYLOAD_BYTES_MAX],
) -> &'a [u8] {
    let n = payload.len().min(buf.len());
    match (buf.get_mut(..n), payload.get(..n)) {
        (Some(dst), Some(src)) => {
            dst.copy_from_slice(src);
            dst
        }
        _ => &[],
    }
}

fn data_kind(opcode: OpCode) -> DataKind {
    if opcode == OpCode::Text {
        DataKind::Text
    } else {
        DataKind::Binary
    }
}

/// Already validated by `handle_frame`/`reassemble`; re-checked rather than trusted with
/// `unsafe`, which costs one more pass over text messages only.
fn utf8_checked(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Decode a Close payload: empty, or a valid code followed by a UTF-8 reason.
fn parse_close_payload(payload: &[u8]) -> Result<Option<(CloseCode, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseFrameLengthOne),
        [hi, lo, reason @ ..] => {
            let raw = u16::from_be_bytes([*hi, *lo]);
            let code = CloseCode::from_wire(raw).ok_or(ProtocolError::InvalidCloseCode(raw))?;
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

fn truncate_utf8(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.as_bytes().get(..end).unwrap_or_default()
}

/// Client masking keys: unpredictable to the peer (RFC 6455 §5.3 asks for a strong source
/// of entropy). A wyrand generator seeded once from the OS keeps this to a few cycles per
/// frame instead of a syscall.
#[derive(Debug)]
struct MaskKeys {
    state: u64,
}

impl MaskKeys {
    fn from_os() -> MaskKeys {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            // No OS entropy (never seen on Linux): fall back to the clock and an address.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            seed = (now ^ (&seed as *const _ as u64)).to_le_bytes();
        }
        MaskKeys::from_seed(u64::from_le_bytes(seed))
    }

    fn from_seed(seed: u64) -> MaskKeys {
        MaskKeys { state: seed }
    }

    fn next_key(&mut self) -> [u8; 4] {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        let mixed = (t >> 64) as u64 ^ t as u64;
        (mixed as u32).to_le_bytes()
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
