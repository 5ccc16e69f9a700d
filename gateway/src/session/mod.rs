//! Connection sessions: WebSocket and raw TCP through one [`codec::Codec`] over the
//! sans-IO codecs of the `wire` crate; [`live`] runs the Hello gate, the hand-off to the
//! user's home shard and the authenticated session.
//!
//! Per-connection memory is the codec's input buffer (grown only to the frame being read,
//! at most `max_frame_bytes` plus a header), its output buffer, and a few words of state.

pub mod codec;
pub mod idle;
pub mod io;
pub mod lazy;
pub mod live;

use std::time::Duration;

/// Bytes offered to each socket read.
pub const READ_BYTES: usize = 4096;

/// Bytes offered to the first read of an idle session (its buffers were freed): enough
/// for a heartbeat (a Ping is ~40 bytes framed) or a receipt, and an idle connection
/// holds no 4 KiB buffer while it waits (the read buffer is allocated when the read is
/// posted, and held for as long as the connection stays idle). A read that fills it is
/// followed by full-size ones, so a larger frame costs one extra read.
pub const READ_BYTES_IDLE: usize = 128;

/// After our close frame (or on a failed connection), how long we keep reading and
/// discarding the peer's bytes before dropping the socket, so the peer sees our close frame
/// rather than a reset.
pub const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// Bytes discarded while lingering before giving up on a peer that keeps sending.
pub const CLOSE_LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Bytes offered to each read while lingering.
pub const LINGER_READ_BYTES: usize = 1024;
