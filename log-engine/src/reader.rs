//! Reading records back by offset: from the in-memory tail cache (recent durable bytes
//! of the active segment), from the active segment file, or from a `memmap2` map of a
//! sealed segment. Every record read is CRC-verified again (the pair of the check made
//! before writing it); a mismatch is `Error::Corruption`, never data.

use std::collections::HashMap;

use crate::error::{corruption, io_err, Result};
use crate::format::{decode_record, IdempotencyKey, RecordKind, RECORD_HEADER_BYTES};
use crate::limits::RECORD_BYTES_MAX;
use crate::segment::{SegmentMeta, SegmentTable};
use crate::storage::Storage;

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What it holds.
    pub kind: RecordKind,
    /// Conversation (0 for metadata).
    pub conversation_id: u64,
    /// Sequence.
    pub seq: u64,
    /// Message id.
    pub message_id: u64,
    /// Caller's timestamp.
    pub timestamp_ms: u64,
    /// Log offset.
    pub offset: u64,
    /// Idempotency key, if the append carried one.
    pub key: Option<IdempotencyKey>,
    /// Offset of the previous record of the same stream (`OFFSET_NONE` if first).
    pub prev_offset: u64,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A page of one conversation's records, in ascending sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The records.
    pub records: Vec<Record>,
    /// First sequence still retained: a caller asking for less gets history from here
    /// (retention deleted what came before). `last_seq + 1` when nothing is retained.
    pub first_seq: u64,
    /// Last durable sequence of the conversation (0 if none).
    pub last_seq: u64,
}

/// Recent durable bytes of the active segment: the published batches' own buffers,
/// contiguous, `[start, start + len)`. Whole batches are evicted from the front, so a
/// push never copies (an earlier version kept one `Vec` and `drain`ed half of it when
/// full: a 4 MiB memmove on the owner thread every ~30 ms at 500k appends/s, which was
/// most of the p99 append-to-durable latency).
#[derive(Debug)]
pub struct TailCache {
    chunks: std::collections::VecDeque<(u64, Vec<u8>)>,
    len: usize,
    cap: usize,
}

impl TailCache {
    /// An empty cache of at most `cap` bytes.
    pub fn new(cap: usize) -> TailCache {
        TailCache {
            chunks: std::collections::VecDeque::new(),
            len: 0,
            cap,
        }
    }

    /// Adds (a copy of) the durable bytes of one batch at `offset` (a batch holds whole
    /// records); a discontinuity (new segment) restarts the cache. The copy is exactly
    /// as large as the batch: the batch's own buffer, sized for the largest batch, goes
    /// back to the writer's pool instead of being held here.
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        if self.cap == 0 || data.len() > self.cap || data.is_empty() {
            return;
        }
        let end = self.chunks.back().map(|(at, b)| at + b.len() as u64);
        if end.is_some_and(|end| end != offset) {
            self.clear();
        }
        while self.len + data.len() > self.cap {
            match self.chunks.pop_front() {
                Some((_, old)) => self.len -= old.len(),
                None => break,
            }
        }
        self.len += data.len();
        self.chunks.push_back((offset, data.to_vec()));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The cached bytes from `offset` to the end of the batch holding it, if cached.
    fn from(&self, offset: u64) -> Option<&[u8]> {
        let after = self.chunks.partition_point(|(at, _)| *at <= offset);
        let (at, bytes) = self.chunks.get(after.checked_sub(1)?)?;
        let at = usize::try_from(offset - at).ok()?;
        bytes.get(at..).filter(|rest| !rest.is_empty())
    }
}

/// Where reads come from: segment table, lazily created maps, tail cache.
pub(crate) struct ReadSources<'a, S: Storage> {
    pub storage: &'a mut S,
    pub segments: &'a SegmentTable,
    pub maps: &'a mut HashMap<u64, S::Map>,
    pub tail: &'a TailCache,
}

impl<S: Storage> ReadSources<'_, S> {
    /// Reads and verifies the record at `offset`.
    pub fn read(&mut self, offset: u64) -> Result<Record> {
        let (&base, meta) = self
            .segments
            .range(..=offset)
            .next_back()
            .ok_or_else(|| corruption("(none)", offset, "no segment holds this offset"))?;
        let pos = offset - base;
        if meta.sealed_end.is_none() {
            if let Some(bytes) = self.tail.from(offset) {
                return decode_at(bytes, meta, offset);
            }
            let bytes = read_record_bytes(self.storage, &meta.name, pos)?;
            return decode_at(&bytes, meta, offset);
        }
        if !self.maps.contains_key(&base) {
            let map = self
                .storage
                .map(&meta.name)
                .map_err(io_err("mmap", &meta.name))?;
            // The map outlives the descriptor: keep open files few (20,000 per process).
            self.storage.close(&meta.name);
            self.maps.insert(base, map);
        }
        let map = self.maps.get(&base).map(|m| m.as_ref()).unwrap_or_default();
        let bytes = usize::try_from(pos)
            .ok()
            .and_then(|p| map.get(p..))
            .unwrap_or_default();
        decode_at(bytes, meta, offset)
    }
}

/// Reads one record's bytes from a file with two positioned reads (header, then rest).
fn read_record_bytes<S: Storage>(storage: &mut S, name: &str, pos: u64) -> Result<Vec<u8>> {
    let mut head = vec![0u8; RECORD_HEADER_BYTES];
    let n = storage
        .read_at(name, pos, &mut head)
        .map_err(io_err("read", name))?;
    head.truncate(n);
    let length = crate::format::le_u32(&head, 0).unwrap_or(0) as usize;
    let padded = crate::format::align_up(length.clamp(RECORD_HEADER_BYTES, RECORD_BYTES_MAX));
    let mut bytes = vec![0u8; padded];
    let n = storage
        .read_at(name, pos, &mut bytes)
        .map_err(io_err("read", name))?;
    bytes.truncate(n);
    Ok(bytes)
}

fn decode_at(bytes: &[u8], meta: &SegmentMeta, offset: u64) -> Result<Record> {
    let segment = &meta.name;
    match decode_record(meta.header.record_seed(), bytes) {
        Ok(Some(view)) => Ok(Record {
            kind: view.header.kind,
            conversation_id: view.header.conversation_id,
            seq: view.header.seq,
            message_id: view.header.message_id,
            timestamp_ms: view.header.timestamp_ms,
            offset,
            key: view.header.key,
            prev_offset: view.header.prev_offset,
            payload: view.payload.to_vec(),
        }),
        Ok(None) => Err(corruption(
            segment,
            offset,
            "indexed record reads as end of data",
        )),
        Err(invalid) => Err(corruption(segment, offset, invalid.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cache_keeps_recent_batches() {
        let mut cache = TailCache::new(100);
        cache.push(64, &[1; 40]);
        cache.push(104, &[2; 40]);
        // Reads run to the end of the batch holding the offset.
        assert_eq!(cache.from(64).unwrap(), &[1; 40]);
        assert_eq!(cache.from(70).unwrap().len(), 34);
        assert_eq!(cache.from(104).unwrap(), &[2; 40]);
        assert_eq!(cache.from(143).unwrap(), &[2]);
        assert!(cache.from(144).is_none());
        assert!(cache.from(63).is_none());
        // Full: the oldest whole batch goes.
        cache.push(144, &[3; 40]);
        assert!(cache.from(64).is_none());
        assert_eq!(cache.from(104).unwrap(), &[2; 40]);
        assert_eq!(cache.from(144).unwrap(), &[3; 40]);
        // A discontinuity (new segment) restarts the cache.
        cache.push(5000, &[4; 8]);
        assert!(cache.from(144).is_none());
        assert!(cache.from(104).is_none());
        assert_eq!(cache.from(5000).unwrap(), &[4; 8]);
        assert!(cache.from(5008).is_none());
        // Larger than the cache, or empty: not kept.
        cache.push(5008, &[5; 101]);
        cache.push(5008, &[]);
        assert_eq!(cache.from(5000).unwrap(), &[4; 8]);
        assert!(cache.from(5008).is_none());
        let mut off = TailCache::new(0);
        off.push(64, &[1; 8]);
        assert!(off.from(64).is_none());
    }
}
