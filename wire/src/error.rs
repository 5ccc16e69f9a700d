//! The one error type of the wire crate, with layered sub-enums.
//!
//! "Need more bytes" is never an error: decoders return `Ok(None)` for it.

use crate::ws::CloseCode;

/// Everything that can be wrong with bytes a peer sent us.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The peer broke the WebSocket protocol (RFC 6455).
    #[error("websocket protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer exceeded a named limit.
    #[error("limit exceeded: {0}")]
    Capacity(#[from] CapacityError),
    /// A FlatBuffers frame failed verification or a required field is missing.
    #[error("frame failed verification: {0}")]
    Verify(String),
    /// A JSON frame could not be decoded into the schema.
    #[error("bad JSON frame: {0}")]
    Json(String),
    /// We tried to send on a connection that cannot take it.
    #[error("cannot send: {0}")]
    Send(#[from] SendError),
    /// The opening handshake was not acceptable.
    #[error("websocket handshake rejected: {0}")]
    Handshake(#[from] HandshakeError),
}

impl WireError {
    /// The WebSocket close code that fails a connection for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::Protocol(ProtocolError::InvalidUtf8)
            | WireError::Protocol(ProtocolError::InvalidCloseReason) => CloseCode::InvalidPayload,
            WireError::Protocol(_) | WireError::Handshake(_) => CloseCode::ProtocolError,
            WireError::Capacity(_) => CloseCode::MessageTooBig,
            WireError::Send(_) => CloseCode::InternalError,
            // A well-framed WebSocket message whose content is not a valid Confab frame:
            // the payload is inconsistent with the type of message (1007).
            WireError::Verify(_) | WireError::Json(_) => CloseCode::InvalidPayload,
        }
    }
}

/// Violations of RFC 6455 framing rules. All fail the connection with 1002, except the
/// UTF-8 ones, which use 1007.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("reserved bits set without a negotiated extension")]
    ReservedBitsSet,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    #[error("server frame is masked")]
    MaskedServerFrame,
    #[error("control frame is fragmented")]
    FragmentedControlFrame,
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    #[error("payload length not in its minimal encoding")]
    NonMinimalLength,
    #[error("64-bit payload length has its most significant bit set")]
    LengthHighBitSet,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame payload of 1 byte")]
    CloseFrameLengthOne,
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
}

/// A peer exceeded a named limit from [`crate::limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("frame of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge { size: u64, max: usize },
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge { size: u64, max: usize },
    #[error("message split into more than {max} fragments")]
    TooManyFragments { max: usize },
    #[error("field `{field}` of {size} bytes exceeds the limit of {max}")]
    FieldTooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    #[error("field `{field}` has {count} items, more than the limit of {max}")]
    TooManyItems {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

/// Why an opening handshake was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP request or response")]
    MalformedHttp,
    #[error("request head larger than {max} bytes")]
    RequestTooLarge { max: usize },
    #[error("method must be GET")]
    MethodNotGet,
    #[error("HTTP version must be 1.1")]
    HttpVersion,
    #[error("missing or invalid `{0}` header")]
    MissingHeader(&'static str),
    #[error("unsupported Sec-WebSocket-Version (only 13)")]
    UnsupportedVersion,
    #[error("Sec-WebSocket-Key is not 16 base64-encoded bytes")]
    InvalidKey,
    #[error("no supported subprotocol offered (confab.v1, confab.v1.json)")]
    NoSubprotocol,
    #[error("server answered with HTTP status {0}, not 101")]
    NotSwitching(u16),
    #[error("Sec-WebSocket-Accept does not match the key")]
    AcceptMismatch,
    #[error("server chose a subprotocol the client did not offer")]
    UnexpectedSubprotocol,
}

impl HandshakeError {
    /// The HTTP status a server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            HandshakeError::MethodNotGet => 405,
            HandshakeError::RequestTooLarge { .. } => 431,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }
}

/// Misuse of the sending side of a codec (our bug or a race with the close handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the connection is closing or closed")]
    Closed,
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlPayloadTooLong(usize),
}
