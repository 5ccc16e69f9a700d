//! Reading records back by offset: from the in-memory tail cache (recent durable bytes
//! of the active segment), from the active segment file, or from a `memmap2` map of a
//! sealed segment. Every record read is CRC-verified again (the pair of the check made
//! before writing it); a mismatch is `Error::Corruption`, never data.

use std::collections::HashMap;

use crate::error::{corruption, io_err, Result};
use crate::format::{decode_record, IdempotencyKey, RecordKind, RECORD_HEADER_BYTES};
use crate::limits::{RECORD_BYTES_MAX, TAIL_COPY_CHUNK_BYTES};
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

/// Recent durable bytes of the active segment: the published batches' bytes,
/// contiguous, `[start, start + len)`. Whole chunks are evicted from the front, so a
/// push never moves cached bytes (an earlier version kept one `Vec` and `drain`ed half
/// of it when full: a 4 MiB memmove on the owner thread every ~30 ms at 500k appends/s,
/// which was most of the p99 append-to-durable latency).
///
/// A chunk is either a batch's own buffer, kept when the batch fills at least half of
/// it (the large batches of a busy log: no copy), or a *copy chunk* of
/// [`TAIL_COPY_CHUNK_BYTES`] (at most a quarter of the cache) into which consecutive
/// small batches are copied. Copy
/// chunks are reused once evicted: a small batch costs a memcpy into memory already
/// touched, never a fresh allocation (each fresh allocation of a few hundred KiB cost
/// the owner thread ~100 page faults on 4 KiB pages, and once freed mimalloc handed it
/// back to the OS: `publish` calls of 0.3–1.7 ms at 500k appends/s, `bench/RESULTS.md`,
/// session 8). A batch larger than half a copy chunk gets a copy of its own size.
///
/// Memory: at most `cap` bytes of data; every chunk but the newest copy chunk holds at
/// least half its capacity in data, so chunks in use take at most `2 × cap` plus one
/// copy chunk; evicted copy chunks kept for reuse take at most `cap` more.
#[derive(Debug)]
pub struct TailCache {
    chunks: std::collections::VecDeque<Chunk>,
    /// Evicted copy chunks, for the next copies.
    free: Vec<Vec<u8>>,
    len: usize,
    cap: usize,
}

/// Cached bytes: `bytes[start..]` are the log's bytes from `offset` on.
#[derive(Debug)]
struct Chunk {
    offset: u64,
    bytes: Vec<u8>,
    start: usize,
    /// A copy chunk (ours, reused), not a batch's buffer (which goes back to the writer).
    copies: bool,
}

impl Chunk {
    fn data_len(&self) -> usize {
        self.bytes.len().saturating_sub(self.start)
    }
}

impl TailCache {
    /// An empty cache of at most `cap` bytes.
    pub fn new(cap: usize) -> TailCache {
        TailCache {
            chunks: std::collections::VecDeque::new(),
            free: Vec::new(),
            len: 0,
            cap,
        }
    }

    /// Capacity of a copy chunk: at most a quarter of the cache, so that evicting one
    /// never empties much of it.
    fn copy_chunk_bytes(&self) -> usize {
        TAIL_COPY_CHUNK_BYTES.min(self.cap / 4)
    }

    /// Adds the durable bytes of one batch at `offset` (a batch holds whole records),
    /// given as the batch's own buffer, the bytes from `start` on; a discontinuity
    /// (new segment) restarts the cache. Every batch buffer it lets go of (evicted, or
    /// not kept) goes to `give_back`, for the writer's pool.
    pub fn push(
        &mut self,
        offset: u64,
        buffer: Vec<u8>,
        start: usize,
        mut give_back: impl FnMut(Vec<u8>),
    ) {
        let data_len = buffer.len().saturating_sub(start);
        if self.cap == 0 || data_len > self.cap || data_len == 0 {
            give_back(buffer);
            return;
        }
        let end = self
            .chunks
            .back()
            .map(|chunk| chunk.offset + chunk.data_len() as u64);
        if end.is_some_and(|end| end != offset) {
            self.clear(&mut give_back);
        }
        while self.len + data_len > self.cap {
            match self.chunks.pop_front() {
                Some(old) => {
                    self.len -= old.data_len();
                    self.release(old, &mut give_back);
                }
                None => break,
            }
        }
        self.len += data_len;
        if data_len.saturating_mul(2) >= buffer.capacity() {
            self.chunks.push_back(Chunk {
                offset,
                bytes: buffer,
                start,
                copies: false,
            });
            return;
        }
        let data = buffer.get(start..).unwrap_or_default();
        let chunk_bytes = self.copy_chunk_bytes();
        let last = self
            .chunks
            .back_mut()
            .filter(|last| last.copies && last.bytes.capacity() - last.bytes.len() >= data_len);
        if let Some(last) = last {
            last.bytes.extend_from_slice(data);
        } else if data_len.saturating_mul(2) <= chunk_bytes {
            let mut bytes = self
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(chunk_bytes));
            bytes.clear();
            bytes.extend_from_slice(data);
            self.chunks.push_back(Chunk {
                offset,
                bytes,
                start: 0,
                copies: true,
            });
        } else {
            self.chunks.push_back(Chunk {
                offset,
                bytes: data.to_vec(),
                start: 0,
                copies: false,
            });
        }
        give_back(buffer);
    }

    /// Forgets everything; batch buffers go to `give_back`, copy chunks are kept for
    /// reuse.
    pub fn clear(&mut self, mut give_back: impl FnMut(Vec<u8>)) {
        self.len = 0;
        while let Some(chunk) = self.chunks.pop_front() {
            self.release(chunk, &mut give_back);
        }
    }

    /// An evicted chunk: a copy chunk is kept for reuse (up to `cap / chunk` of them),
    /// anything else goes to `give_back`.
    fn release(&mut self, chunk: Chunk, give_back: &mut impl FnMut(Vec<u8>)) {
        let chunk_bytes = self.copy_chunk_bytes();
        let keep = chunk.copies
            && chunk.bytes.capacity() == chunk_bytes
            && self.free.len() < self.cap / chunk_bytes.max(1);
        if keep {
            self.free.push(chunk.bytes);
        } else {
            give_back(chunk.bytes);
        }
    }

    /// The cached bytes from `offset` to the end of the chunk holding it, if cached.
    fn from(&self, offset: u64) -> Option<&[u8]> {
        let after = self.chunks.partition_point(|chunk| chunk.offset <= offset);
        let chunk = self.chunks.get(after.checked_sub(1)?)?;
        let at = usize::try_from(offset - chunk.offset)
            .ok()?
            .checked_add(chunk.start)?;
        chunk.bytes.get(at..).filter(|rest| !rest.is_empty())
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
        let mut back = Vec::new();
        cache.push(64, vec![1; 40], 0, |b| back.push(b));
        cache.push(104, vec![2; 40], 0, |b| back.push(b));
        // Reads run to the end of the batch holding the offset.
        assert_eq!(cache.from(64).unwrap(), &[1; 40]);
        assert_eq!(cache.from(70).unwrap().len(), 34);
        assert_eq!(cache.from(104).unwrap(), &[2; 40]);
        assert_eq!(cache.from(143).unwrap(), &[2]);
        assert!(cache.from(144).is_none());
        assert!(cache.from(63).is_none());
        assert!(back.is_empty());
        // Full: the oldest whole batch goes, and its buffer comes back.
        cache.push(144, vec![3; 40], 0, |b| back.push(b));
        assert!(cache.from(64).is_none());
        assert_eq!(cache.from(104).unwrap(), &[2; 40]);
        assert_eq!(cache.from(144).unwrap(), &[3; 40]);
        assert_eq!(back, vec![vec![1; 40]]);
        // A discontinuity (new segment) restarts the cache; every buffer comes back.
        cache.push(5000, vec![4; 8], 0, |b| back.push(b));
        assert!(cache.from(144).is_none());
        assert!(cache.from(104).is_none());
        assert_eq!(cache.from(5000).unwrap(), &[4; 8]);
        assert!(cache.from(5008).is_none());
        assert_eq!(back.len(), 3);
        // Larger than the cache, or empty: not kept, and handed back.
        cache.push(5008, vec![5; 101], 0, |b| back.push(b));
        cache.push(5008, Vec::new(), 0, |b| back.push(b));
        assert_eq!(cache.from(5000).unwrap(), &[4; 8]);
        assert!(cache.from(5008).is_none());
        assert_eq!(back.len(), 5);
        let mut off = TailCache::new(0);
        off.push(64, vec![1; 8], 0, |b| back.push(b));
        assert!(off.from(64).is_none());
        assert_eq!(back.len(), 6);
    }

    /// Large batches are kept without a copy; a small batch in a big buffer is copied
    /// and the big buffer comes back; data may start after room in the buffer.
    #[test]
    fn tail_cache_keeps_full_buffers_and_copies_small_batches() {
        let big = |fill: u8| {
            let mut buffer = Vec::with_capacity(64);
            buffer.resize(40, fill);
            buffer
        };
        let mut back = Vec::new();
        let mut cache = TailCache::new(100);
        let first = big(1);
        let first_at = first.as_ptr();
        cache.push(64, first, 0, |b| back.push(b));
        assert_eq!(
            cache.from(64).unwrap().as_ptr(),
            first_at,
            "kept, not copied"
        );
        cache.push(104, big(2), 0, |b| back.push(b));
        // Room for the third means evicting the first: its buffer comes back.
        cache.push(144, big(3), 0, |b| back.push(b));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ptr(), first_at);
        assert_eq!(cache.from(104).unwrap(), &[2; 40]);
        assert_eq!(cache.from(144).unwrap(), &[3; 40]);
        // 10 bytes in a 64-byte buffer: copied; the buffer comes back.
        let mut small = Vec::with_capacity(64);
        small.extend_from_slice(&[4; 10]);
        let small_at = small.as_ptr();
        cache.push(184, small, 0, |b| back.push(b));
        assert_eq!(back.last().unwrap().as_ptr(), small_at);
        assert_eq!(cache.from(184).unwrap(), &[4; 10]);
        assert_ne!(cache.from(184).unwrap().as_ptr(), small_at);
        // A buffer whose data starts after some room (a batch's `lead`): only the
        // data counts and is served.
        let mut led = vec![9u8; 5];
        led.extend_from_slice(&[6; 30]);
        let led_at = led.as_ptr();
        cache.push(194, led, 5, |b| back.push(b));
        assert_eq!(cache.from(194).unwrap(), &[6; 30]);
        assert_eq!(cache.from(194).unwrap().as_ptr(), led_at.wrapping_add(5));
        assert_eq!(cache.from(200).unwrap(), &[6; 24]);
        assert!(cache.from(224).is_none());
        // Every kept batch buffer holds at least half its capacity in data.
        assert!(cache
            .chunks
            .iter()
            .filter(|chunk| !chunk.copies)
            .all(|chunk| chunk.data_len() * 2 >= chunk.bytes.capacity()));
        assert!(cache.len <= 100);
    }

    /// Small batches are copied one after another into a shared copy chunk; an evicted
    /// copy chunk is reused for later copies instead of a fresh allocation (and never
    /// handed to the writer); a batch over half a chunk gets a copy of its own.
    #[test]
    fn tail_cache_copies_small_batches_into_reused_chunks() {
        let small = |fill: u8, len: usize| {
            let mut buffer = Vec::with_capacity(1000);
            buffer.resize(len, fill);
            buffer
        };
        let mut back = Vec::new();
        // Chunks of 100 bytes (a quarter of the cache).
        let mut cache = TailCache::new(400);
        let mut at = 0u64;
        for fill in 0..4u8 {
            cache.push(at, small(fill, 25), 0, |b| back.push(b));
            at += 25;
        }
        assert_eq!(back.len(), 4, "every batch buffer went back");
        assert_eq!(cache.chunks.len(), 1, "four batches of 25 share a chunk");
        let first_chunk = cache.chunks[0].bytes.as_ptr();
        // Reads cross batch boundaries inside the chunk.
        assert_eq!(cache.from(20).unwrap().len(), 80);
        assert_eq!(&cache.from(45).unwrap()[..6], &[1, 1, 1, 1, 1, 2]);
        // Fill the cache: three more chunks of 100.
        for fill in 4..16u8 {
            cache.push(at, small(fill, 25), 0, |b| back.push(b));
            at += 25;
        }
        assert_eq!(cache.len, 400);
        assert_eq!(cache.chunks.len(), 4);
        // The next batch evicts the oldest chunk; it is kept for reuse, not handed back.
        cache.push(at, small(16, 25), 0, |b| back.push(b));
        at += 25;
        assert_eq!(back.len(), 17, "only batch buffers come back");
        assert!(cache.from(0).is_none());
        assert_eq!(cache.from(100).unwrap()[0], 4);
        assert_eq!(cache.free.len(), 0, "the evicted chunk was taken at once");
        assert_eq!(cache.chunks.back().unwrap().bytes.as_ptr(), first_chunk);
        assert_eq!(cache.from(400).unwrap(), &[16; 25]);
        // Over half a chunk: a copy of its own size, handed back when evicted.
        // (80 bytes do not fit in the 75 left in the open chunk.)
        cache.push(at, small(17, 80), 0, |b| back.push(b));
        let own = cache.chunks.back().unwrap();
        assert!(!own.copies);
        assert_eq!(own.bytes, vec![17; 80]);
        assert_eq!(cache.free.len(), 1, "the chunk evicted for it is kept");
        // A discontinuity keeps the copy chunks for reuse and hands back the rest.
        let before = back.len();
        cache.push(10_000, small(18, 25), 0, |b| back.push(b));
        assert_eq!(
            back.len(),
            before + 2,
            "the 80-byte copy and the batch buffer"
        );
        assert_eq!(cache.from(10_000).unwrap(), &[18; 25]);
        assert!(cache.free.len() <= 4);
        assert!(cache.len <= 400);
    }
}
