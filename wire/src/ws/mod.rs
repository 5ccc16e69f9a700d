//! RFC 6455 WebSocket, sans-IO: bytes in → events out, events in → bytes out.
//!
//! - [`handshake`]: the opening handshake, server and client side.
//! - [`frame`]: the frame header.
//! - [`mask`]: payload masking, word-at-a-time.
//! - [`utf8`]: incremental UTF-8 validation across fragments.
//! - [`close`]: close codes.
//! - [`codec`]: the per-connection state machine tying them together.

pub mod close;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::CloseCode;
pub use codec::{CloseFrame, DataKind, Event, Role, State, WsCodec, WsConfig};
pub use handshake::{ClientHandshake, Subprotocol, UpgradeRequest};
