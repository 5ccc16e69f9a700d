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

/// Bytes offered to the first read of an idle session (its buffers were freed) whose
/// last burst of input fitted in it: enough for a heartbeat (a Ping is ~40 bytes framed)
/// or a receipt, and an idle connection holds no 4 KiB buffer while it waits (the read
/// buffer is allocated when the read is posted, and held for as long as the connection
/// stays idle). A read that fills it is followed by full-size ones, so a larger frame
/// costs one extra read.
pub const READ_BYTES_IDLE: usize = 128;

/// The most an idle session offers its first read: a session whose last burst of input
/// (the bytes read from one wait until the input was empty again) was larger than
/// [`READ_BYTES_IDLE`] offers that burst rounded up to a power of two, up to this.
/// Why: a chat `Send` is ~300 bytes framed, so with 128 bytes every message took two
/// `recv` calls (one filled the small buffer, one read the rest), each a system call
/// on the shard's core. Connections that only ping keep the 128-byte read; one that
/// sends messages holds at most this much more while it waits.
pub const READ_BYTES_IDLE_MAX: usize = 1024;

/// The size of an idle session's first read after a burst of `burst` input bytes (see
/// [`READ_BYTES_IDLE_MAX`]).
pub fn idle_read_bytes(burst: usize) -> usize {
    burst
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
        .clamp(READ_BYTES_IDLE, READ_BYTES_IDLE_MAX)
}

/// After our close frame (or on a failed connection), how long we keep reading and
/// discarding the peer's bytes before dropping the socket, so the peer sees our close frame
/// rather than a reset.
pub const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// Bytes discarded while lingering before giving up on a peer that keeps sending.
pub const CLOSE_LINGER_BYTES_MAX: usize = 1024 * 1024;

/// Bytes offered to each read while lingering.
pub const LINGER_READ_BYTES: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_reads_fit_the_last_burst_within_bounds() {
        assert_eq!(idle_read_bytes(0), READ_BYTES_IDLE);
        assert_eq!(
            idle_read_bytes(40),
            READ_BYTES_IDLE,
            "a ping keeps the small read"
        );
        assert_eq!(idle_read_bytes(READ_BYTES_IDLE), READ_BYTES_IDLE);
        assert_eq!(idle_read_bytes(READ_BYTES_IDLE + 1), 2 * READ_BYTES_IDLE);
        assert_eq!(idle_read_bytes(328), 512, "a chat send is read in one call");
        assert_eq!(
            idle_read_bytes(READ_BYTES_IDLE_MAX + 1),
            READ_BYTES_IDLE_MAX
        );
        assert_eq!(idle_read_bytes(usize::MAX), READ_BYTES_IDLE_MAX);
    }
}
