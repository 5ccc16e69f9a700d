//! The WebSocket frame header (RFC 6455 §5.2), parsed incrementally and written compactly.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! `FrameHeader::parse` returns `Ok(None)` while the header is incomplete. It checks only
//! what the header alone decides (reserved opcodes, minimal length encoding, the 64-bit
//! high bit, control frame rules); role-dependent rules (masking) and message-level rules
//! (fragmentation, limits) live in the codec.

use crate::error::ProtocolError;
use crate::limits::WS_CONTROL_PAYLOAD_BYTES_MAX;

/// Frame opcodes. Reserved values are rejected at parse time, so this is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    pub fn from_u8(value: u8) -> Result<OpCode, ProtocolError> {
        match value {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            other => Err(ProtocolError::ReservedOpcode(other)),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may interleave with a fragmented message.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// The three reserved bits, RSV1 as 0b100. Non-zero only with a negotiated extension.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parse a header from the start of `buf`. Returns the header and its length in bytes,
    /// or `Ok(None)` if `buf` does not yet hold the whole header.
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let (payload_len, mut at) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => {
                    let len = u64::from(u16::from_be_bytes([a, b]));
                    if len < 126 {
                        return Err(ProtocolError::NonMinimalLength);
                    }
                    (len, 4)
                }
                _ => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
                Some(bytes) => {
                    let len = u64::from_be_bytes(bytes);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::LengthHighBitSet);
                    }
                    if len <= u64::from(u16::MAX) {
                        return Err(ProtocolError::NonMinimalLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > WS_CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(ProtocolError::ControlFrameTooLong(payload_len));
            }
        }
        let mask = if masked {
            match buf
                .get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
            {
                Some(key) => {
                    at += 4;
                    Some(key)
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, at)))
    }

    /// Bytes this header takes when written.
    pub fn encoded_len(&self) -> usize {
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + len_bytes + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Append this header to `out`, always in the minimal length encoding.
    pub fn write(&self, out: &mut Vec<u8>) {
        debug_assert!(self.payload_len >> 63 == 0);
        debug_assert!(self.rsv <= 0x7);
        let b0 = (u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        match self.payload_len {
            len @ 0..=125 => out.extend_from_slice(&[b0, mask_bit | len as u8]),
            len @ 126..=0xFFFF => {
                out.extend_from_slice(&[b0, mask_bit | 126]);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.extend_from_slice(&[b0, mask_bit | 127]);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes)
    }

    #[test]
    fn rfc_examples() {
        // §5.7: a single-frame unmasked text message "Hello".
        let (h, n) = parse(&[0x81, 0x05, 0x48]).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        // §5.7: masked "Hello".
        let (h, n) = parse(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d])
            .unwrap()
            .unwrap();
        assert_eq!((h.mask, n), (Some([0x37, 0xfa, 0x21, 0x3d]), 6));
        // §5.7: 256 bytes binary in a single unmasked frame.
        let (h, n) = parse(&[0x82, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));
        // §5.7: 64 KiB binary in a single unmasked frame.
        let (h, n) = parse(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn incomplete_headers_need_more_bytes() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(&full).unwrap().is_some());
    }

    #[test]
    fn every_opcode() {
        for op in 0u8..=0xF {
            let res = parse(&[0x80 | op, 0x00]);
            match op {
                0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA => {
                    assert_eq!(res.unwrap().unwrap().0.opcode.as_u8(), op)
                }
                _ => assert_eq!(res, Err(ProtocolError::ReservedOpcode(op))),
            }
        }
    }

    #[test]
    fn reserved_bits_are_reported_not_rejected_here() {
        for rsv in 0u8..8 {
            let (h, _) = parse(&[0x82 | (rsv << 4), 0]).unwrap().unwrap();
            assert_eq!(h.rsv, rsv);
        }
    }

    #[test]
    fn non_minimal_lengths_are_rejected() {
        assert_eq!(
            parse(&[0x82, 126, 0, 125]),
            Err(ProtocolError::NonMinimalLength)
        );
        assert_eq!(
            parse(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
            Err(ProtocolError::NonMinimalLength)
        );
        assert_eq!(
            parse(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::LengthHighBitSet)
        );
    }

    #[test]
    fn control_frame_rules() {
        assert_eq!(
            parse(&[0x09, 0x00]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            parse(&[0x89, 126, 0, 126]),
            Err(ProtocolError::ControlFrameTooLong(126))
        );
        assert!(parse(&[0x89, 125]).unwrap().is_some());
    }

    proptest! {
        #[test]
        fn write_then_parse_round_trips(
            fin in any::<bool>(),
            rsv in 0u8..8,
            op in prop_oneof![Just(OpCode::Continuation), Just(OpCode::Text), Just(OpCode::Binary)],
            mask in any::<Option<[u8; 4]>>(),
            len in prop_oneof![0u64..200, 60_000u64..70_000, 1u64 << 32..1u64 << 40],
        ) {
            let header = FrameHeader { fin, rsv, opcode: op, mask, payload_len: len };
            let mut out = Vec::new();
            header.write(&mut out);
            prop_assert_eq!(out.len(), header.encoded_len());
            prop_assert_eq!(parse(&out).unwrap(), Some((header, out.len())));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = parse(&bytes);
        }
    }
}
