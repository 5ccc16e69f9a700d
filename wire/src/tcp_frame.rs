//! Raw-TCP framing: every frame is a u32 little-endian length followed by that many bytes
//! of one FlatBuffers `Frame`.
//!
//! ```text
//! +----------------+---------------------------+
//! | len: u32 (LE)  | frame: [u8; len]          |
//! +----------------+---------------------------+
//! ```
//!
//! `len` is checked against the frame limit before any payload is buffered; a peer that
//! announces a larger frame is disconnected with a `Capacity` error.

use crate::buffer::InputBuffer;
use crate::error::{CapacityError, WireError};
use crate::limits::{FRAME_BYTES_MAX, TCP_LENGTH_PREFIX_BYTES};

/// Parse one frame at the start of `buf`: the frame bytes and the total bytes it took,
/// or `Ok(None)` if incomplete.
pub fn parse(buf: &[u8], frame_bytes_max: usize) -> Result<Option<(&[u8], usize)>, CapacityError> {
    let Some(prefix) = buf.get(..TCP_LENGTH_PREFIX_BYTES) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; TCP_LENGTH_PREFIX_BYTES];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_le_bytes(len_bytes) as usize;
    let max = frame_bytes_max.min(FRAME_BYTES_MAX);
    if len > max {
        return Err(CapacityError::FrameTooLarge {
            size: len as u64,
            max,
        });
    }
    let total = TCP_LENGTH_PREFIX_BYTES + len;
    Ok(buf
        .get(TCP_LENGTH_PREFIX_BYTES..total)
        .map(|frame| (frame, total)))
}

/// Append one length-prefixed frame to `out`.
pub fn encode(frame: &[u8], out: &mut Vec<u8>) -> Result<(), CapacityError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(CapacityError::FrameTooLarge {
            size: frame.len() as u64,
            max: FRAME_BYTES_MAX,
        });
    }
    out.reserve(TCP_LENGTH_PREFIX_BYTES + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(frame);
    Ok(())
}

/// A stream decoder for raw-TCP frames, with the same buffer discipline as the WebSocket
/// codec: `feed` or `read_space`/`commit_read`, then `poll` until `Ok(None)`.
#[derive(Debug)]
pub struct TcpFrameDecoder {
    input: InputBuffer,
    frame_bytes_max: usize,
    failed: bool,
}

impl TcpFrameDecoder {
    /// `frame_bytes_max` is clamped to `FRAME_BYTES_MAX`.
    pub fn new(frame_bytes_max: usize) -> TcpFrameDecoder {
        TcpFrameDecoder {
            input: InputBuffer::default(),
            frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX),
            failed: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.feed(bytes);
    }

    pub fn read_space(&mut self, min: usize) -> &mut [u8] {
        self.input.read_space(min)
    }

    pub fn commit_read(&mut self, n: usize, offered: usize) {
        self.input.commit_read(n, offered);
    }

    /// The next complete frame, borrowed until the next call.
    pub fn poll(&mut self) -> Result<Option<&[u8]>, WireError> {
        self.input.release_pending();
        if self.failed {
            return Ok(None);
        }
        match parse(self.input.pending(), self.frame_bytes_max) {
            Ok(Some((_, total))) => {
                self.input.consume_later(total);
                let frame = self.input.pending().get(TCP_LENGTH_PREFIX_BYTES..total);
                Ok(frame)
            }
            Ok(None) => {
                if let Some(prefix) = self.input.pending().get(..TCP_LENGTH_PREFIX_BYTES) {
                    let mut len = [0u8; TCP_LENGTH_PREFIX_BYTES];
                    len.copy_from_slice(prefix);
                    let total = TCP_LENGTH_PREFIX_BYTES + u32::from_le_bytes(len) as usize;
                    self.input.reserve_frame(total);
                }
                self.input.compact();
                Ok(None)
            }
            Err(e) => {
                self.failed = true;
                Err(e.into())
            }
        }
    }

    /// Free the input buffer if it holds no partial frame (see `WsCodec::
    /// release_idle_memory`). Returns whether the input is empty.
    pub fn release_idle_memory(&mut self) -> bool {
        self.input.release_if_empty()
    }

    /// The bytes read but not yet returned as frames (after releasing the last frame),
    /// leaving the decoder empty: to move a connection to another decoder or thread.
    pub fn take_unread_input(&mut self) -> Vec<u8> {
        self.input.take_unread()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.input.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn idle_memory_is_released_only_without_a_partial_frame() {
        let mut decoder = TcpFrameDecoder::new(1024);
        let mut bytes = Vec::new();
        encode(b"hello", &mut bytes).unwrap();
        decoder.feed(&bytes[..6]); // a partial frame stays
        assert!(!decoder.release_idle_memory());
        decoder.feed(&bytes[6..]);
        assert_eq!(decoder.poll().unwrap(), Some(&b"hello"[..]));
        assert_eq!(decoder.poll().unwrap(), None);
        assert!(decoder.release_idle_memory());
        assert_eq!(decoder.input.capacity(), 0, "the buffer is freed");
        decoder.feed(&bytes);
        assert_eq!(
            decoder.poll().unwrap(),
            Some(&b"hello"[..]),
            "and works after"
        );
    }

    #[test]
    fn golden_bytes() {
        let mut out = Vec::new();
        encode(b"abc", &mut out).unwrap();
        assert_eq!(out, [3, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(parse(&out, 16).unwrap(), Some((&b"abc"[..], 7)));
    }

    #[test]
    fn incomplete_needs_more_bytes() {
        let mut out = Vec::new();
        encode(b"hello", &mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(parse(&out[..cut], 16).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let announced = (FRAME_BYTES_MAX as u32 + 1).to_le_bytes();
        assert_eq!(
            parse(&announced, FRAME_BYTES_MAX),
            Err(CapacityError::FrameTooLarge {
                size: FRAME_BYTES_MAX as u64 + 1,
                max: FRAME_BYTES_MAX
            })
        );
        let mut decoder = TcpFrameDecoder::new(8);
        decoder.feed(&9u32.to_le_bytes());
        assert!(matches!(decoder.poll(), Err(WireError::Capacity(_))));
        decoder.feed(&[0; 9]);
        assert_eq!(
            decoder.poll(),
            Ok(None),
            "a failed decoder yields nothing more"
        );
    }

    #[test]
    fn decoder_handles_byte_at_a_time_and_batched_input() {
        let mut stream = Vec::new();
        for frame in [&b"one"[..], b"", b"three"] {
            encode(frame, &mut stream).unwrap();
        }
        let mut decoder = TcpFrameDecoder::new(FRAME_BYTES_MAX);
        let mut got = Vec::new();
        for byte in &stream {
            decoder.feed(std::slice::from_ref(byte));
            while let Some(frame) = decoder.poll().unwrap() {
                got.push(frame.to_vec());
            }
        }
        assert_eq!(got, [b"one".to_vec(), vec![], b"three".to_vec()]);
    }

    proptest! {
        #[test]
        fn round_trip_in_arbitrary_chunks(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            chunk in 1usize..64,
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                encode(f, &mut stream).unwrap();
            }
            let mut decoder = TcpFrameDecoder::new(FRAME_BYTES_MAX);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                let space = decoder.read_space(piece.len() + 7);
                space[..piece.len()].copy_from_slice(piece);
                decoder.commit_read(piece.len(), piece.len() + 7);
                while let Some(frame) = decoder.poll().unwrap() {
                    got.push(frame.to_vec());
                }
            }
            prop_assert_eq!(got, frames);
        }
    }
}
