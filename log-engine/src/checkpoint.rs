//! Checkpoint file: the index, the idempotency map, the metadata tip and the caller's
//! state snapshot as of one log offset, so restart scans only the log after it.
//! Pure encode/decode here; `checkpoint_file.rs` writes it into a slot file and finds
//! the newest one on open.

use crate::dedupe::DedupeEntry;
use crate::format::{le_u32, le_u64, IdempotencyKey, Invalid, RECORD_KEY_BYTES};
use crate::index::ConvIndex;
use crate::limits::INDEX_STRIDE_RECORDS;

/// Magic bytes opening a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"CONFABCK";
/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u32 = 2;
/// Name of format v2's single checkpoint file (read on open; slots replace it).
pub const CHECKPOINT_NAME: &str = "checkpoint";
/// Name format v2 wrote a checkpoint under before its rename (removed on open).
pub const CHECKPOINT_TMP_NAME: &str = "checkpoint.tmp";

/// Everything a checkpoint holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every record below this log offset is reflected; scanning resumes here.
    pub offset: u64,
    /// Offset of the last record below `offset` (`OFFSET_NONE` if none): recovery checks
    /// that a valid record ending exactly at `offset` is there, so a checkpoint can
    /// never vouch for records the log does not hold.
    pub last_record: u64,
    /// `(last_seq, last_offset)` of the metadata stream.
    pub meta_tip: (u64, u64),
    /// Base offsets of the segments that existed (detects a missing segment).
    pub segments: Vec<u64>,
    /// Per-conversation index.
    pub convs: Vec<(u64, ConvIndex)>,
    /// Idempotency keys, oldest first.
    pub keys: Vec<(IdempotencyKey, DedupeEntry)>,
    /// The caller's state snapshot.
    pub state: Vec<u8>,
}

/// Encodes a checkpoint.
///
/// ```text
/// checkpoint := magic:[u8;8]="CONFABCK" version:u32 reserved:u32=0
///               offset:u64 last_record:u64 meta_seq:u64 meta_offset:u64
///               segment_count:u64 segment_base:u64*
///               conv_count:u64 conv*
///               key_count:u64 key_entry*
///               state_len:u64 state:[u8;state_len]
///               crc32c:u32                       (over every byte before it)
/// conv       := conversation_id:u64 first_seq:u64 last_seq:u64 last_offset:u64
///               anchor_seq:u64 anchor_count:u64 anchor_offset:u64*
/// key_entry  := key:[u8;16] conversation_id:u64 seq:u64 message_id:u64 offset:u64
///               timestamp_ms:u64
/// ```
pub fn encode_checkpoint(ckpt: &Checkpoint) -> Vec<u8> {
    let parts = CheckpointParts {
        offset: ckpt.offset,
        last_record: ckpt.last_record,
        meta_tip: ckpt.meta_tip,
        segments: &ckpt.segments,
        state: &ckpt.state,
    };
    let convs = ckpt.convs.iter().map(|(id, conv)| (*id, conv));
    let anchors = ckpt.convs.iter().map(|(_, c)| c.anchors.len()).sum();
    let size = encoded_len(&parts, ckpt.convs.len(), anchors, ckpt.keys.len());
    encode_checkpoint_from(
        &parts,
        convs,
        ckpt.keys.iter().copied(),
        Vec::with_capacity(size),
    )
}

/// Bytes of one encoded idempotency key entry: the key and five u64 fields.
const KEY_ENTRY_BYTES: usize = 16 + 5 * 8;
/// Bytes of one index entry before its anchors: six u64 fields.
const CONV_ENTRY_BYTES: usize = 6 * 8;

/// The exact encoded size of a checkpoint with these parts, `convs` conversations
/// holding `anchors` anchors in all, and `keys` key entries, so its buffer is sized once (a 60 MB checkpoint that grows by doubling
/// copies itself on the owner thread).
pub(crate) fn encoded_len(
    parts: &CheckpointParts<'_>,
    convs: usize,
    anchors: usize,
    keys: usize,
) -> usize {
    let header = CHECKPOINT_MAGIC.len() + 4 + 4 + 4 * 8;
    let segments = 8 + parts.segments.len() * 8;
    let convs = 8 + convs * CONV_ENTRY_BYTES + anchors * 8;
    let keys = 8 + keys * KEY_ENTRY_BYTES;
    let state = 8 + parts.state.len();
    header + segments + convs + keys + state + 4
}

/// The fixed parts of a checkpoint, borrowed.
pub(crate) struct CheckpointParts<'a> {
    pub offset: u64,
    pub last_record: u64,
    pub meta_tip: (u64, u64),
    pub segments: &'a [u64],
    pub state: &'a [u8],
}

/// Encodes a checkpoint straight from the live index and keys, in their iteration order
/// (the decoder needs no order): the owner thread pays one pass and no clone.
pub(crate) fn encode_checkpoint_from<'a>(
    parts: &CheckpointParts<'_>,
    convs: impl Iterator<Item = (u64, &'a ConvIndex)>,
    keys: impl Iterator<Item = (IdempotencyKey, DedupeEntry)>,
    buffer: Vec<u8>,
) -> Vec<u8> {
    let mut draft = KeysDraft::begin(parts, convs, buffer);
    for (key, entry) in keys {
        draft.push_key(&key, &entry);
    }
    draft.finish(parts.state)
}

/// A checkpoint encoded in steps: the header and segments at once, then the
/// conversations and then the keys in as many calls as the owner likes, then the state
/// and the CRC. The bytes are the same format as [`encode_checkpoint_from`] writes.
#[derive(Debug)]
pub(crate) struct KeysDraft {
    out: Vec<u8>,
    conv_count_at: usize,
    conv_count: u64,
    /// Where the key count goes, once the conversations are done.
    key_count_at: Option<usize>,
    key_count: u64,
}

fn put(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl KeysDraft {
    /// Header, segments and the index; the key count is patched in `finish`.
    pub(crate) fn begin<'a>(
        parts: &CheckpointParts<'_>,
        convs: impl Iterator<Item = (u64, &'a ConvIndex)>,
        out: Vec<u8>,
    ) -> KeysDraft {
        let mut draft = KeysDraft::start(parts, out);
        for (id, conv) in convs {
            draft.push_conv(
                id,
                [
                    conv.first_seq,
                    conv.last_seq,
                    conv.last_offset,
                    conv.anchor_seq,
                ],
                &conv.anchors,
            );
        }
        draft.start_keys();
        draft
    }

    /// Header and segments; conversations follow with [`KeysDraft::push_conv`].
    pub(crate) fn start(parts: &CheckpointParts<'_>, mut out: Vec<u8>) -> KeysDraft {
        out.clear();
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            parts.offset,
            parts.last_record,
            parts.meta_tip.0,
            parts.meta_tip.1,
        ] {
            put(&mut out, v);
        }
        put(&mut out, parts.segments.len() as u64);
        for base in parts.segments {
            put(&mut out, *base);
        }
        let conv_count_at = out.len();
        put(&mut out, 0);
        KeysDraft {
            out,
            conv_count_at,
            conv_count: 0,
            key_count_at: None,
            key_count: 0,
        }
    }

    /// One conversation: `[first_seq, last_seq, last_offset, anchor_seq]` and its
    /// anchors.
    pub(crate) fn push_conv(&mut self, id: u64, tips: [u64; 4], anchors: &[u64]) {
        assert!(
            self.key_count_at.is_none(),
            "conversation after the keys began"
        );
        self.conv_count += 1;
        put(&mut self.out, id);
        for v in tips {
            put(&mut self.out, v);
        }
        put(&mut self.out, anchors.len() as u64);
        for offset in anchors {
            put(&mut self.out, *offset);
        }
    }

    /// Ends the conversations; keys follow with [`KeysDraft::push_key`].
    pub(crate) fn start_keys(&mut self) {
        if self.key_count_at.is_some() {
            return;
        }
        patch(&mut self.out, self.conv_count_at, self.conv_count);
        self.key_count_at = Some(self.out.len());
        put(&mut self.out, 0);
    }

    /// Bytes encoded so far.
    pub(crate) fn len(&self) -> usize {
        self.out.len()
    }

    /// The buffer, for reuse by the next draft.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.out
    }

    /// True once the conversations are done.
    pub(crate) fn keys_started(&self) -> bool {
        self.key_count_at.is_some()
    }

    pub(crate) fn push_key(&mut self, key: &IdempotencyKey, e: &DedupeEntry) {
        self.start_keys();
        self.key_count += 1;
        self.out.extend_from_slice(key);
        for v in [
            e.conversation_id,
            e.seq,
            e.message_id,
            e.offset,
            e.timestamp_ms,
        ] {
            put(&mut self.out, v);
        }
    }

    /// The key count, the state snapshot and the CRC: the finished file's bytes.
    pub(crate) fn finish(mut self, state: &[u8]) -> Vec<u8> {
        self.start_keys();
        let KeysDraft {
            mut out,
            key_count_at,
            key_count,
            ..
        } = self;
        if let Some(at) = key_count_at {
            patch(&mut out, at, key_count);
        }
        put(&mut out, state.len() as u64);
        out.extend_from_slice(state);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// Overwrites the count written as 0 at `at` once its items are out.
fn patch(out: &mut [u8], at: usize, count: u64) {
    if let Some(slot) = out.get_mut(at..at + 8) {
        slot.copy_from_slice(&count.to_le_bytes());
    }
}

/// Reads fields front to back, refusing counts larger than the bytes left (so a corrupt
/// count never allocates).
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u64(&mut self) -> Result<u64, Invalid> {
        let v = le_u64(self.buf, self.at).ok_or(Invalid("checkpoint truncated"))?;
        self.at += 8;
        Ok(v)
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], Invalid> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(Invalid("checkpoint length overflow"))?;
        let v = self
            .buf
            .get(self.at..end)
            .ok_or(Invalid("checkpoint truncated"))?;
        self.at = end;
        Ok(v)
    }

    fn count(&mut self, item_bytes: usize) -> Result<usize, Invalid> {
        let n = usize::try_from(self.u64()?).map_err(|_| Invalid("checkpoint count"))?;
        let left = self.buf.len().saturating_sub(self.at);
        if n.checked_mul(item_bytes).is_none_or(|need| need > left) {
            return Err(Invalid("checkpoint count exceeds its length"));
        }
        Ok(n)
    }
}

/// The sparse index's invariants, so a checkpoint never feeds the index a state its
/// assertions refuse.
fn check_conv(conv: &ConvIndex) -> Result<(), Invalid> {
    let k = INDEX_STRIDE_RECORDS;
    let n = conv.anchors.len() as u64;
    let last_anchor = conv
        .anchor_seq
        .checked_add(n.saturating_sub(1).saturating_mul(k));
    let ok = conv.anchor_seq % k == 1 % k
        && conv.first_seq >= 1
        && conv.first_seq <= conv.last_seq.saturating_add(1)
        && (n == 0 || last_anchor.is_some_and(|a| a <= conv.last_seq))
        && conv.anchors.windows(2).all(|w| w.first() < w.last());
    if ok {
        Ok(())
    } else {
        Err(Invalid("checkpoint conversation index inconsistent"))
    }
}

/// Decodes and verifies a checkpoint.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, Invalid> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or(Invalid("checkpoint truncated"))?;
    let body = bytes
        .get(..body_len)
        .ok_or(Invalid("checkpoint truncated"))?;
    if le_u32(bytes, body_len) != Some(crc32c::crc32c(body)) {
        return Err(Invalid("checkpoint crc mismatch"));
    }
    if body.get(..8) != Some(&CHECKPOINT_MAGIC[..]) {
        return Err(Invalid("bad checkpoint magic"));
    }
    if le_u32(body, 8) != Some(CHECKPOINT_VERSION) {
        return Err(Invalid("unsupported checkpoint version"));
    }
    let mut cur = Cursor { buf: body, at: 16 };
    let mut ckpt = Checkpoint {
        offset: cur.u64()?,
        last_record: cur.u64()?,
        meta_tip: (cur.u64()?, cur.u64()?),
        ..Checkpoint::default()
    };
    let n = cur.count(8)?;
    for _ in 0..n {
        ckpt.segments.push(cur.u64()?);
    }
    let n = cur.count(48)?;
    for _ in 0..n {
        let id = cur.u64()?;
        let conv = ConvIndex {
            first_seq: cur.u64()?,
            last_seq: cur.u64()?,
            last_offset: cur.u64()?,
            anchor_seq: cur.u64()?,
            anchors: {
                let count = cur.count(8)?;
                (0..count)
                    .map(|_| cur.u64())
                    .collect::<Result<Vec<_>, _>>()?
            },
        };
        check_conv(&conv)?;
        ckpt.convs.push((id, conv));
    }
    let n = cur.count(RECORD_KEY_BYTES + 40)?;
    for _ in 0..n {
        let mut key = [0u8; RECORD_KEY_BYTES];
        key.copy_from_slice(cur.bytes(RECORD_KEY_BYTES)?);
        let entry = DedupeEntry {
            conversation_id: cur.u64()?,
            seq: cur.u64()?,
            message_id: cur.u64()?,
            offset: cur.u64()?,
            timestamp_ms: cur.u64()?,
        };
        ckpt.keys.push((key, entry));
    }
    let n = cur.count(1)?;
    ckpt.state = cur.bytes(n)?.to_vec();
    if cur.at != body.len() {
        return Err(Invalid("checkpoint has trailing bytes"));
    }
    Ok(ckpt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            offset: 4096,
            last_record: 4000,
            meta_tip: (3, 2048),
            segments: vec![0, 8192],
            convs: vec![(
                7,
                ConvIndex {
                    first_seq: 33,
                    last_seq: 70,
                    last_offset: 4000,
                    anchor_seq: 33,
                    anchors: vec![64, 128],
                },
            )],
            keys: vec![(
                [5; 16],
                DedupeEntry {
                    conversation_id: 7,
                    seq: 3,
                    message_id: 99,
                    offset: 128,
                    timestamp_ms: 1000,
                },
            )],
            state: b"state bytes".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let ckpt = sample();
        assert_eq!(decode_checkpoint(&encode_checkpoint(&ckpt)), Ok(ckpt));
        let empty = Checkpoint::default();
        assert_eq!(decode_checkpoint(&encode_checkpoint(&empty)), Ok(empty));
    }

    #[test]
    fn every_flip_and_cut_is_refused() {
        let bytes = encode_checkpoint(&sample());
        assert_eq!(bytes.len(), bytes.capacity(), "encoded_len is exact");
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_checkpoint(&bad).is_err(), "bit {bit}");
        }
        for cut in 0..bytes.len() {
            assert!(decode_checkpoint(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }
}
