//! Group commit, sans-IO: appends are encoded into a pending batch and get a [`Ticket`];
//! the driver takes a batch ([`Writer::take_batch`] hands out an owned [`BatchJob`]),
//! issues ONE write and ONE sync for it, then completes it
//! ([`Writer::complete_batch`]), which resolves every ticket in it. Up to
//! `WriterLimits::max_in_flight` batches may be taken before the first completes
//! (`Log`: 1; `PipelinedLog`: 2, so that batch N+1 is encoded and queued while batch N
//! is written and synced). Completions must come in the order batches were taken, and
//! in `Durable` mode the driver must not write batch N+1 before batch N is synced.
//!
//! Watermarks (Redpanda's `offset_tracker`): `appended` (encoded, maybe pending) ≥
//! `written` (handed to the OS) ≥ `stable` (covered by fdatasync). Sequence numbers and
//! `prev_offset` links are assigned at append time; conversations with pending records
//! are tracked in an overlay on top of the durable [`Index`].
//!
//! Failure: if a write or sync fails, every pending ticket fails and the writer is
//! poisoned (no further appends) until the log is reopened, because sequence numbers
//! after the failed batch were already handed out and reusing or skipping them would
//! show readers a gap. Recovery on reopen decides what of the failed batch survived.

use std::collections::{HashMap, VecDeque};

use crate::dedupe::Dedupe;
use crate::error::{CapacityError, Error, Result};
use crate::format::{
    align_up, encode_record, encode_segment_header, record_len, IdempotencyKey, RecordHeader,
    RecordKind, RecordSeed, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use crate::huge_pages::{self, HUGE_PAGE_BYTES};
use crate::index::Index;
use crate::limits::{BUFFER_POOL_MAX, RECORD_PAYLOAD_BYTES_MAX};

/// One append to a conversation.
#[derive(Clone, Copy, Debug)]
pub struct AppendRequest<'a> {
    /// Conversation the record belongs to.
    pub conversation_id: u64,
    /// Snowflake id chosen by the caller.
    pub message_id: u64,
    /// Caller's wall-clock ms (also the clock of the idempotency window).
    pub timestamp_ms: u64,
    /// Optional idempotency key.
    pub key: Option<IdempotencyKey>,
    /// `Message` or `System`.
    pub kind: RecordKind,
    /// Opaque payload.
    pub payload: &'a [u8],
}

/// The acknowledgement of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Conversation (0 for metadata).
    pub conversation_id: u64,
    /// Sequence assigned (metadata: metadata sequence).
    pub seq: u64,
    /// Message id of the stored record.
    pub message_id: u64,
    /// Log offset of the stored record.
    pub offset: u64,
    /// True when this append repeated an idempotency key: nothing new was stored.
    pub deduplicated: bool,
}

/// Handle of one append, resolved by the commit that makes it durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// The three watermarks, as log offsets (end of the last record in each state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// Encoded, possibly still pending in memory.
    pub appended: u64,
    /// Handed to the OS with a write.
    pub written: u64,
    /// Covered by fdatasync.
    pub stable: u64,
}

/// A record inside a batch, for the index and state machine once durable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub kind: RecordKind,
    pub conversation_id: u64,
    pub seq: u64,
    pub message_id: u64,
    pub timestamp_ms: u64,
    pub offset: u64,
    pub key: Option<IdempotencyKey>,
    /// Position of the record inside [`Batch::records`].
    pub at: usize,
}

/// One group-commit batch: contiguous bytes for ONE write at one segment position.
#[derive(Debug)]
pub struct Batch {
    /// Batch id.
    pub id: u64,
    /// Base offset of the segment written to.
    pub segment_base: u64,
    /// Position inside the segment file.
    pub position: u64,
    /// When set, the driver must sync the previous segment, then create this one
    /// (header, zero fill, sync, directory sync) before writing.
    pub new_segment: Option<SegmentHeader>,
    /// The buffer: `lead` bytes of room, then the encoded records ([`Batch::records`]).
    pub bytes: Vec<u8>,
    /// Where the records start in `bytes`. Block-aligned mode leaves room before them
    /// for the already-durable head of the block the batch starts in, placed so that
    /// head lands on an aligned address: the job then writes this very buffer, with
    /// no copy of the records (see [`Writer::take_batch`]). 0 otherwise.
    pub lead: usize,
    /// The seed their CRCs start from (the segment's).
    pub seed: RecordSeed,
    pub(crate) entries: Vec<Entry>,
    pub(crate) acks: Vec<(Ticket, Ack)>,
    /// While a job holds `bytes` (taken without a copy): where the records end in it.
    lent: Option<usize>,
}

impl Batch {
    /// The encoded records.
    pub fn records(&self) -> &[u8] {
        self.bytes.get(self.lead..).unwrap_or_default()
    }

    /// Log offset just past the batch.
    pub fn end_offset(&self) -> u64 {
        self.segment_base + self.position + self.records().len() as u64
    }
}

/// The I/O of one taken batch, owned so it can cross to an I/O thread (or a DMA queue):
/// create the segment if `new_segment`, write `bytes` at `position` of segment
/// `segment_base`, sync, then give `bytes` back with [`Writer::complete_batch`].
///
/// Block-aligned mode (`WriterLimits::write_align` > 1, for `O_DIRECT`): `position` is
/// the batch start rounded down to the alignment and `bytes` covers whole aligned blocks:
/// the already-durable bytes of the partial block the batch starts in (rewritten with
/// the same values), the batch's records, then zeros up to the next aligned boundary
/// (or the segment's capacity). The zeros overwrite zeros: the segment was zero-filled.
#[derive(Debug)]
pub struct BatchJob {
    /// Batch id (completions must come in id order).
    pub id: u64,
    /// Base offset of the segment written to.
    pub segment_base: u64,
    /// Position inside the segment file.
    pub position: u64,
    /// When set: sync the previous segment, then create this one before writing.
    pub new_segment: Option<SegmentHeader>,
    /// The buffer holding what to write: [`BatchJob::data`], from `data_start` on.
    /// Given back whole with [`Writer::complete_batch`].
    pub bytes: Vec<u8>,
    /// Where the data starts in `bytes`. Block-aligned mode starts it at a block-aligned
    /// address, so that an `O_DIRECT` write needs no copy into an aligned bounce buffer
    /// (on the I/O thread's critical path: ~0.3 ms per 4 MiB batch). 0 otherwise.
    pub data_start: usize,
    /// True in block-aligned mode: write with `Storage::write_direct`.
    pub aligned: bool,
}

impl BatchJob {
    /// The bytes to write at `position` (encoded records; may be empty for a roll with
    /// no record yet).
    pub fn data(&self) -> &[u8] {
        self.bytes.get(self.data_start..).unwrap_or_default()
    }
}

/// Batch and segment limits of the writer.
#[derive(Clone, Copy, Debug)]
pub struct WriterLimits {
    /// Most records per batch.
    pub batch_records: usize,
    /// Most bytes per batch.
    pub batch_bytes: usize,
    /// Capacity of new segments.
    pub segment_bytes: u64,
    /// True in `Durability::Durable`: every batch is synced before the next is written.
    pub sync_each_batch: bool,
    /// Most batches taken and not yet completed (1 = no pipelining).
    pub max_in_flight: usize,
    /// 1: jobs hold exactly the batch's records. A power of two > 1 (`DIRECT_ALIGN` with
    /// `Config::direct_io`): jobs are block-aligned (see [`BatchJob`]).
    pub write_align: u64,
    /// New segments are flagged `recycled` (`Config::recycles`): they may be given a
    /// recycled spare.
    pub recycled_segments: bool,
}

/// Where the writer resumes, found by recovery.
#[derive(Clone, Copy, Debug)]
pub struct WriterStart {
    /// Base offset of the active segment.
    pub segment_base: u64,
    /// Capacity of the active segment (from its header).
    pub segment_capacity: u64,
    /// Next free position in the active segment.
    pub position: u64,
    /// The active segment's record CRC seed (from its header).
    pub record_seed: RecordSeed,
    /// `(last_seq, last_offset)` of the metadata stream.
    pub meta_tip: (u64, u64),
}

/// The group-commit state machine.
#[derive(Debug)]
pub struct Writer {
    limits: WriterLimits,
    seg_base: u64,
    seg_capacity: u64,
    seg_pos: u64,
    seg_seed: RecordSeed,
    written: u64,
    stable: u64,
    /// Front may be in flight; only the back accepts appends, and only if `open`.
    batches: VecDeque<Batch>,
    open: bool,
    /// Batches at the front of `batches` that were taken and not completed.
    in_flight: usize,
    conv_overlay: HashMap<u64, (u64, u64)>,
    key_overlay: HashMap<IdempotencyKey, (u64, Ack)>,
    meta_tip: (u64, u64),
    resolved: Vec<(Ticket, Ack)>,
    next_ticket: u64,
    next_batch: u64,
    poisoned: bool,
    /// Block-aligned mode: the bytes of the partial block the next taken batch starts
    /// in, from the block's start to the batch's position (what is on disk there).
    tail_block: Vec<u8>,
    /// Block-aligned mode: capacity of the segment of the last taken batch.
    take_capacity: u64,
    /// Buffers given back (written jobs, batches evicted from the tail cache), reused
    /// for new batches and jobs: a fresh multi-MiB allocation per batch costs page
    /// faults (and `munmap`s) on the owner thread.
    pool: Vec<Vec<u8>>,
    /// Addresses of the pooled buffers advised `MADV_HUGEPAGE` by `warm_buffers`: a
    /// batch in one starts its job on a 2 MiB boundary (see [`crate::huge_pages`]).
    /// They are never freed on purpose (`recycle` keeps them first); should one be
    /// (a record larger than a batch grew it), its address may come back as an
    /// ordinary buffer, which only costs the 2 MiB placement (capacity is checked).
    advised: Vec<usize>,
}

impl Writer {
    /// A writer resuming at `start` (everything before it is durable).
    pub fn new(limits: WriterLimits, start: WriterStart) -> Writer {
        assert!(start.position >= SEGMENT_HEADER_BYTES as u64);
        assert!(start.position <= start.segment_capacity);
        let end = start.segment_base + start.position;
        Writer {
            limits,
            seg_base: start.segment_base,
            seg_capacity: start.segment_capacity,
            seg_pos: start.position,
            seg_seed: start.record_seed,
            written: end,
            stable: end,
            batches: VecDeque::new(),
            open: false,
            in_flight: 0,
            conv_overlay: HashMap::new(),
            key_overlay: HashMap::new(),
            meta_tip: start.meta_tip,
            resolved: Vec::new(),
            next_ticket: 0,
            next_batch: 0,
            poisoned: false,
            tail_block: Vec::new(),
            take_capacity: start.segment_capacity,
            pool: Vec::new(),
            advised: Vec::new(),
        }
    }

    /// Gives a buffer back for reuse. At most [`BUFFER_POOL_MAX`] are kept, huge-page
    /// ones first; buffers too small for a batch are dropped.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        if buffer.capacity() < self.buffer_bytes() {
            return;
        }
        // Not cleared: the next batch truncates it to its lead instead of zero-filling
        // the lead (up to 2 MiB before a huge-page boundary) again.
        if self.pool.len() < BUFFER_POOL_MAX {
            self.pool.push(buffer);
        } else if self.is_advised(&buffer) {
            let small = self.pool.iter().position(|b| !self.is_advised(b));
            if let Some(slot) = small.and_then(|i| self.pool.get_mut(i)) {
                *slot = buffer;
            }
        }
    }

    fn is_advised(&self, buffer: &[u8]) -> bool {
        self.advised.contains(&(buffer.as_ptr() as usize))
    }

    /// A buffer with room for the largest batch (taken from the pool when it can be),
    /// so that neither appends nor `take_batch` grow it. One made here (the pool ran
    /// dry) has ordinary pages: a huge page's first touch would stall the owner thread.
    fn buffer(&mut self) -> Vec<u8> {
        let mut buffer = self.pool.pop().unwrap_or_default();
        if buffer.capacity() < self.buffer_bytes() {
            buffer.clear();
            buffer.reserve(self.buffer_bytes());
        }
        buffer
    }

    /// Bytes of the huge pages a job of the largest batch spans from a 2 MiB boundary.
    fn huge_span(&self) -> usize {
        self.buffer_bytes().div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    }

    fn buffer_bytes(&self) -> usize {
        let align = usize::try_from(self.limits.write_align.max(1)).unwrap_or(1);
        // A job: the partial block before the batch, the batch, zeros to the next
        // block, and up to a block of padding before the first aligned address.
        self.limits.batch_bytes + 3 * align
    }

    /// Fills the buffer pool with buffers already touched, so the first batches after
    /// open do not pay page faults on the owner thread (at up to 4 MiB a batch, ~1,000
    /// faults each: milliseconds that every append due meanwhile waits for).
    ///
    /// Block-aligned mode: each buffer has room for a 2 MiB boundary plus the largest
    /// job after it, and the huge pages in it are advised `MADV_HUGEPAGE` before this
    /// first touch, so its batches' `O_DIRECT` writes go out from huge pages.
    pub fn warm_buffers(&mut self) {
        let aligned = self.limits.write_align > 1;
        while self.pool.len() < BUFFER_POOL_MAX {
            let buffer = if aligned {
                let span = self.huge_span();
                let mut buffer: Vec<u8> = Vec::with_capacity(span + HUGE_PAGE_BYTES);
                if huge_pages::advise(&buffer) {
                    self.advised.push(buffer.as_ptr() as usize);
                }
                let start = buffer.as_ptr().align_offset(HUGE_PAGE_BYTES);
                buffer.resize(start + span, 0);
                buffer
            } else {
                vec![0u8; self.buffer_bytes()]
            };
            // Left at its touched length: `start_batch` truncates it to a batch's lead.
            self.pool.push(buffer);
        }
    }

    /// Block-aligned mode: where the first taken batch starts, a partial block may
    /// already hold durable bytes (records, or the segment header); the driver reads
    /// them from the active segment at open and hands them over here, so that the first
    /// aligned job rewrites them unchanged. `bytes.len()` must be the resume position
    /// modulo `write_align`.
    pub fn seed_tail_block(&mut self, bytes: Vec<u8>) {
        assert_eq!(bytes.len() as u64, self.tail_block_len(self.seg_pos));
        self.tail_block = bytes;
    }

    /// Bytes between the aligned block start and `position` (0 when not aligned).
    pub fn tail_block_len(&self, position: u64) -> u64 {
        position % self.limits.write_align.max(1)
    }

    /// Appends a conversation record (or resolves a repeated key). Durable state
    /// (`index`, `dedupe`) is consulted under the pending overlay.
    pub fn append(
        &mut self,
        index: &Index,
        dedupe: &Dedupe,
        req: &AppendRequest<'_>,
    ) -> Result<Ticket> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if !req.kind.is_conversation() {
            return Err(Error::InvalidRequest(
                "append takes Message or System records",
            ));
        }
        if let Some(key) = &req.key {
            if let Some(ticket) = self.resolve_repeat(dedupe, key, req.timestamp_ms) {
                return Ok(ticket);
            }
        }
        let conv = req.conversation_id;
        let (last_seq, last_offset) = match self.conv_overlay.get(&conv) {
            Some(tip) => *tip,
            None => index.tip(conv),
        };
        let seq = last_seq
            .checked_add(1)
            .ok_or(CapacityError::SequenceExhausted(conv))?;
        let header = RecordHeader {
            kind: req.kind,
            conversation_id: conv,
            seq,
            message_id: req.message_id,
            timestamp_ms: req.timestamp_ms,
            prev_offset: last_offset,
            stable_back: 0,
            key: req.key,
        };
        let (ticket, ack) = self.push_record(header, req.payload)?;
        self.conv_overlay.insert(conv, (seq, ack.offset));
        if let Some(key) = req.key {
            self.key_overlay.insert(key, (self.next_batch - 1, ack));
        }
        Ok(ticket)
    }

    /// Appends a metadata record, numbered by the log-wide metadata sequence.
    pub fn append_meta(&mut self, kind: RecordKind, payload: &[u8], now_ms: u64) -> Result<Ticket> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if kind.is_conversation() || !kind.is_valid() {
            return Err(Error::InvalidRequest("append_meta takes a metadata kind"));
        }
        let (last_seq, last_offset) = self.meta_tip;
        let header = RecordHeader {
            kind,
            conversation_id: 0,
            seq: last_seq + 1,
            message_id: 0,
            timestamp_ms: now_ms,
            prev_offset: last_offset,
            stable_back: 0,
            key: None,
        };
        let (ticket, ack) = self.push_record(header, payload)?;
        self.meta_tip = (ack.seq, ack.offset);
        Ok(ticket)
    }

    /// A repeated key: attach to the pending original, or resolve from the durable map.
    fn resolve_repeat(
        &mut self,
        dedupe: &Dedupe,
        key: &IdempotencyKey,
        now: u64,
    ) -> Option<Ticket> {
        if let Some((batch_id, ack)) = self.key_overlay.get(key).copied() {
            let ticket = self.ticket();
            let batch = self.batches.iter_mut().find(|b| b.id == batch_id);
            assert!(batch.is_some(), "key overlay names a batch that is gone");
            if let Some(batch) = batch {
                let ack = Ack {
                    deduplicated: true,
                    ..ack
                };
                batch.acks.push((ticket, ack));
            }
            return Some(ticket);
        }
        let original = dedupe.get(key, now)?;
        let ticket = self.ticket();
        let ack = Ack {
            conversation_id: original.conversation_id,
            seq: original.seq,
            message_id: original.message_id,
            offset: original.offset,
            deduplicated: true,
        };
        self.resolved.push((ticket, ack));
        Some(ticket)
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    /// Places one record: rolls the segment or starts a batch as needed, encodes it.
    fn push_record(&mut self, mut header: RecordHeader, payload: &[u8]) -> Result<(Ticket, Ack)> {
        let padded = align_up(record_len(payload.len(), header.key.is_some()));
        let max_payload = self.max_payload();
        if payload.len() > max_payload {
            return Err(CapacityError::PayloadTooLarge {
                len: payload.len(),
                max: max_payload,
            }
            .into());
        }
        if self.seg_pos + padded as u64 > self.seg_capacity {
            self.roll(header.timestamp_ms);
        }
        let needs_batch = match self.batches.back() {
            Some(b) if self.open => {
                b.entries.len() >= self.limits.batch_records
                    || b.records().len() + padded > self.limits.batch_bytes
            }
            _ => true,
        };
        if needs_batch {
            self.start_batch(None);
        }
        let offset = self.seg_base + self.seg_pos;
        let floor = self.sync_floor();
        assert!(floor <= offset);
        header.stable_back = u32::try_from(offset - floor).unwrap_or(u32::MAX);
        let ticket = self.ticket();
        let ack = Ack {
            conversation_id: header.conversation_id,
            seq: header.seq,
            message_id: header.message_id,
            offset,
            deduplicated: false,
        };
        let batch = self.batches.back_mut().ok_or(Error::Poisoned)?;
        assert_eq!(batch.end_offset(), offset);
        let at = batch.records().len();
        let written = encode_record(batch.seed, &header, payload, &mut batch.bytes);
        assert_eq!(written, padded);
        batch.entries.push(Entry {
            kind: header.kind,
            conversation_id: header.conversation_id,
            seq: header.seq,
            message_id: header.message_id,
            timestamp_ms: header.timestamp_ms,
            offset,
            key: header.key,
            at,
        });
        batch.acks.push((ticket, ack));
        self.seg_pos += padded as u64;
        Ok((ticket, ack))
    }

    /// Largest payload that fits the limits and an empty segment.
    fn max_payload(&self) -> usize {
        let room = self.limits.segment_bytes as usize - SEGMENT_HEADER_BYTES;
        let room = room.min(self.limits.batch_bytes.max(crate::limits::RECORD_BYTES_MAX));
        let overhead = record_len(0, true) + crate::format::RECORD_ALIGN;
        room.saturating_sub(overhead).min(RECORD_PAYLOAD_BYTES_MAX)
    }

    /// The offset below which the log is known durable when this batch is written.
    /// Durable mode: the batch start (the previous batch was synced before this one is
    /// written, or the writer is poisoned and writes nothing more). Buffered mode: the
    /// last synced offset now (a lower bound of what it will be at write time).
    fn sync_floor(&self) -> u64 {
        let segment_floor = self.seg_base + SEGMENT_HEADER_BYTES as u64;
        let floor = match self.batches.back() {
            Some(b) if self.limits.sync_each_batch => b.segment_base + b.position,
            _ => self.stable,
        };
        floor.max(segment_floor)
    }

    fn roll(&mut self, now_ms: u64) {
        let base = self.seg_base + self.seg_pos;
        self.seg_base = base;
        self.seg_capacity = self.limits.segment_bytes;
        self.seg_pos = SEGMENT_HEADER_BYTES as u64;
        let header = SegmentHeader {
            recycled: self.limits.recycled_segments,
            ..SegmentHeader::new(base, now_ms, self.limits.segment_bytes)
        };
        self.seg_seed = header.record_seed();
        self.start_batch(Some(header));
    }

    fn start_batch(&mut self, new_segment: Option<SegmentHeader>) {
        let mut bytes = self.buffer();
        let align = usize::try_from(self.limits.write_align.max(1)).unwrap_or(1);
        // Block-aligned mode: records start `position % align` bytes past an aligned
        // address, so the block's durable head fits right before them (`take_batch`).
        let lead = if align > 1 {
            let head = usize::try_from(self.seg_pos % align as u64).unwrap_or(0);
            let huge = bytes.as_ptr().align_offset(HUGE_PAGE_BYTES);
            if self.is_advised(&bytes) && huge + self.buffer_bytes() <= bytes.capacity() {
                huge + head
            } else {
                bytes.as_ptr().align_offset(align).min(align) + head
            }
        } else {
            0
        };
        // The lead's bytes are never written (only the block head's room at its end is,
        // and `take_batch` fills that): a buffer that comes back long enough is cut to
        // the lead, not zero-filled again. Zeroing up to 2 MiB per batch cost ~5% of a
        // shard's CPU at 42K msg/s and evicted its L2 (`bench/RESULTS.md`, session 8).
        if bytes.len() >= lead {
            bytes.truncate(lead);
        } else {
            bytes.resize(lead, 0);
        }
        self.batches.push_back(Batch {
            id: self.next_batch,
            segment_base: self.seg_base,
            position: self.seg_pos,
            new_segment,
            bytes,
            lead,
            seed: self.seg_seed,
            entries: Vec::new(),
            acks: Vec::new(),
            lent: None,
        });
        self.next_batch += 1;
        self.open = true;
    }

    /// The next batch to write, or `None` if nothing is pending, the writer is poisoned,
    /// or `max_in_flight` batches are already taken. Taking the open batch closes it:
    /// later appends start a new one.
    ///
    /// The newest batch (the one appends still join) is taken only when none is in
    /// flight: handed over behind another it would be small (what arrived in the instant
    /// after that one was taken) and everything arriving after it would wait two I/O
    /// rounds. A batch that can no longer grow (a newer one exists: it filled up, or a
    /// roll closed it) is taken as soon as a slot is free, so that under a backlog the
    /// I/O thread finds the next full batch queued the moment its fdatasync returns.
    pub fn take_batch(&mut self) -> Option<BatchJob> {
        if self.in_flight >= self.limits.max_in_flight || self.poisoned {
            return None;
        }
        let at = self.in_flight;
        if at + 1 == self.batches.len() {
            if at > 0 {
                return None;
            }
            self.open = false;
        }
        let align = self.limits.write_align.max(1);
        let batch = self.batches.get_mut(at)?;
        self.in_flight += 1;
        if align == 1 {
            batch.lent = Some(batch.bytes.len());
            return Some(BatchJob {
                id: batch.id,
                segment_base: batch.segment_base,
                position: batch.position,
                new_segment: batch.new_segment,
                data_start: batch.lead,
                bytes: std::mem::take(&mut batch.bytes),
                aligned: false,
            });
        }
        if let Some(header) = &batch.new_segment {
            self.tail_block = encode_segment_header(header).to_vec();
            self.take_capacity = header.capacity;
        }
        let start = batch.position - self.tail_block.len() as u64;
        assert_eq!(start % align, 0, "tail block does not start a block");
        let records_len = batch.records().len();
        let end = batch.position + records_len as u64;
        let padded_end = end.div_ceil(align).saturating_mul(align);
        let padded_end = padded_end.min(self.take_capacity.max(end));
        let len = (padded_end - start) as usize;
        let head = self.tail_block.len();
        let cut = (end - end % align - start) as usize;
        let align = usize::try_from(align).unwrap_or(1);
        // Without a copy: the head of the first block goes into the room left before
        // the records, zeros after them, and the job writes the batch's own buffer.
        // (Not when the buffer moved since `start_batch`: a record larger than a
        // batch grew it.)
        let data_start = batch.lead.wrapping_sub(head);
        let in_place = records_len > 0
            && batch.lead >= head
            && (batch.bytes.as_ptr() as usize + data_start).is_multiple_of(align)
            && data_start + len <= batch.bytes.capacity();
        let (bytes, data_start) = if in_place {
            let mut bytes = std::mem::take(&mut batch.bytes);
            let records_end = bytes.len();
            if let Some(room) = bytes.get_mut(data_start..batch.lead) {
                room.copy_from_slice(&self.tail_block);
            }
            // The partial block the next batch starts in: rewritten by it.
            let last = bytes.get(data_start + cut..records_end).unwrap_or_default();
            self.tail_block = last.to_vec();
            bytes.resize(data_start + len, 0);
            batch.lent = Some(records_end);
            (bytes, data_start)
        } else {
            let mut bytes = self.pool.pop().unwrap_or_default();
            bytes.clear(); // pooled buffers keep their length (see `recycle`)
            let mut data_start = 0;
            if records_len > 0 {
                // Room for the padding before an aligned address too: no reallocation
                // after `data_start` is chosen (the pool's buffers already have it).
                bytes.reserve_exact(len + align);
                data_start = bytes.as_ptr().align_offset(align).min(align);
                bytes.resize(data_start, 0);
                bytes.extend_from_slice(&self.tail_block);
                bytes.extend_from_slice(batch.records());
                bytes.resize(data_start + len, 0);
                // The partial block the next batch starts in: rewritten by it.
                let last = bytes
                    .get(data_start + cut..data_start + (end - start) as usize)
                    .unwrap_or_default();
                self.tail_block = last.to_vec();
            }
            (bytes, data_start)
        };
        Some(BatchJob {
            id: batch.id,
            segment_base: batch.segment_base,
            position: start,
            new_segment: batch.new_segment,
            bytes,
            data_start,
            aligned: true,
        })
    }

    /// Marks the oldest taken batch written (and synced if `synced`) and returns it, its
    /// `bytes` given back, with its acks, for the driver to publish. Overlays shrink to
    /// what is still pending. (A job that wrote a copy of the records gives its buffer
    /// to the pool; one that wrote the batch's own buffer gives it back to the batch.)
    pub fn complete_batch(&mut self, id: u64, bytes: Vec<u8>, synced: bool) -> Option<Batch> {
        assert!(
            self.in_flight > 0,
            "complete_batch without a batch in flight"
        );
        let mut batch = self.batches.pop_front()?;
        assert_eq!(
            batch.id, id,
            "batches complete in the order they were taken"
        );
        match batch.lent.take() {
            Some(records_end) => {
                assert!(batch.bytes.is_empty());
                batch.bytes = bytes; // the job took them; they come back
                batch.bytes.truncate(records_end);
            }
            None => self.recycle(bytes),
        }
        assert!(batch.end_offset() >= self.written);
        self.in_flight -= 1;
        self.written = batch.end_offset();
        if synced {
            self.stable = self.written;
        }
        for entry in &batch.entries {
            if entry.kind.is_conversation() {
                let tip = self.conv_overlay.get(&entry.conversation_id);
                if tip.is_some_and(|t| t.1 == entry.offset) {
                    self.conv_overlay.remove(&entry.conversation_id);
                }
            }
            if let Some(key) = &entry.key {
                if self.key_overlay.get(key).is_some_and(|(b, _)| *b == id) {
                    self.key_overlay.remove(key);
                }
            }
        }
        Some(batch)
    }

    /// Batches taken and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Batches with work that were not taken yet (the open one included).
    pub fn queued(&self) -> usize {
        self.batches
            .iter()
            .skip(self.in_flight)
            .filter(|b| !b.acks.is_empty() || b.new_segment.is_some())
            .count()
    }

    /// Everything up to `offset` is covered by a sync.
    pub fn mark_synced(&mut self, offset: u64) {
        assert!(offset <= self.written, "synced past what was written");
        self.stable = self.stable.max(offset);
    }

    /// A write or sync failed: poison, and return every ticket that will never resolve.
    pub fn fail(&mut self) -> Vec<Ticket> {
        self.poisoned = true;
        self.in_flight = 0;
        self.open = false;
        let tickets = self.batches.drain(..).flat_map(|b| b.acks).map(|(t, _)| t);
        let tickets = tickets.collect();
        self.conv_overlay.clear();
        self.key_overlay.clear();
        tickets
    }

    /// Acks resolved without a write (repeats of durable keys).
    pub fn take_resolved(&mut self) -> Vec<(Ticket, Ack)> {
        std::mem::take(&mut self.resolved)
    }

    /// True when some append waits for a batch.
    pub fn has_pending(&self) -> bool {
        self.batches
            .iter()
            .any(|b| !b.acks.is_empty() || b.new_segment.is_some())
    }

    /// True once a write or sync failed.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The watermarks.
    pub fn watermarks(&self) -> Watermarks {
        Watermarks {
            appended: self.seg_base + self.seg_pos,
            written: self.written,
            stable: self.stable,
        }
    }

    /// Base offset of the segment appends currently go to.
    pub fn active_segment(&self) -> u64 {
        self.seg_base
    }

    /// Last sequence assigned in a conversation, pending records included.
    pub fn appended_last_seq(&self, index: &crate::index::Index, conversation_id: u64) -> u64 {
        match self.conv_overlay.get(&conversation_id) {
            Some(&(seq, _)) => seq,
            None => index.tip(conversation_id).0,
        }
    }

    /// `(last_seq, last_offset)` of the metadata stream, pending records included.
    pub fn meta_tip(&self) -> (u64, u64) {
        self.meta_tip
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_record, OFFSET_NONE};

    fn writer(segment_bytes: u64, batch_records: usize) -> Writer {
        let limits = WriterLimits {
            batch_records,
            batch_bytes: crate::limits::GROUP_COMMIT_BYTES_MAX,
            segment_bytes,
            sync_each_batch: true,
            max_in_flight: 1,
            write_align: 1,
            recycled_segments: true,
        };
        let start = WriterStart {
            segment_base: 0,
            segment_capacity: segment_bytes,
            position: SEGMENT_HEADER_BYTES as u64,
            record_seed: RecordSeed::for_base(0),
            meta_tip: (0, OFFSET_NONE),
        };
        Writer::new(limits, start)
    }

    fn req(conv: u64, payload: &[u8]) -> AppendRequest<'_> {
        AppendRequest {
            conversation_id: conv,
            message_id: 1,
            timestamp_ms: 5,
            key: None,
            kind: RecordKind::Message,
            payload,
        }
    }

    /// Completes every batch as the driver would, returning them.
    fn drain(w: &mut Writer) -> Vec<Batch> {
        let mut done = Vec::new();
        while let Some(job) = w.take_batch() {
            done.push(w.complete_batch(job.id, job.bytes, true).unwrap());
        }
        done
    }

    #[test]
    fn one_batch_per_commit_with_links_and_stable_back() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = writer(4096, 100);
        for conv in [1, 2, 1] {
            w.append(&index, &dedupe, &req(conv, b"abc")).unwrap();
        }
        let batches = drain(&mut w);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.position, 64);
        let mut pos = 0;
        let mut seen = Vec::new();
        while let Ok(Some(view)) = decode_record(batch.seed, &batch.records()[pos..]) {
            let h = view.header;
            seen.push((h.conversation_id, h.seq, h.prev_offset));
            // Durable mode: everything before the batch start was synced.
            assert_eq!(u64::from(h.stable_back), pos as u64);
            pos += view.padded_len;
        }
        assert_eq!(
            seen,
            vec![(1, 1, OFFSET_NONE), (2, 1, OFFSET_NONE), (1, 2, 64)]
        );
        let marks = w.watermarks();
        assert_eq!(marks.stable, 64 + batch.records().len() as u64);
        assert_eq!(marks.appended, marks.stable);
    }

    #[test]
    fn batches_split_at_the_record_limit_and_segments_roll() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = writer(4096, 2);
        for _ in 0..5 {
            w.append(&index, &dedupe, &req(1, &[0u8; 8])).unwrap();
        }
        assert_eq!(drain(&mut w).len(), 3);
        let mut w = writer(4096, 1000);
        for _ in 0..80 {
            w.append(&index, &dedupe, &req(1, &[0u8; 100])).unwrap();
        }
        let batches = drain(&mut w);
        let rolled: Vec<_> = batches.iter().filter_map(|b| b.new_segment).collect();
        assert!(!rolled.is_empty());
        assert_eq!(rolled[0].base_offset, batches[0].end_offset());
        assert!(batches
            .iter()
            .all(|b| b.position + b.records().len() as u64 <= 4096));
    }

    /// What a plain and a block-aligned writer put in their segment files, and the
    /// records of every batch they completed, for the same appends; plus how many of
    /// the aligned writer's jobs wrote the batch's own buffer (no copy).
    struct Written {
        files: [HashMap<u64, Vec<u8>>; 2],
        records: [Vec<Vec<u8>>; 2],
        in_place: usize,
        copied: usize,
    }

    fn write_plain_and_aligned(segment_bytes: u64, batch_bytes: usize, sizes: &[usize]) -> Written {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let (mut plain, mut aligned) = (writer(segment_bytes, 5), writer(segment_bytes, 5));
        plain.limits.batch_bytes = batch_bytes;
        aligned.limits.batch_bytes = batch_bytes;
        aligned.limits.write_align = 4096;
        let header = SegmentHeader::new(0, 5, segment_bytes);
        aligned.seed_tail_block(encode_segment_header(&header).to_vec());
        let mut out = Written {
            files: Default::default(),
            records: Default::default(),
            in_place: 0,
            copied: 0,
        };
        let seg_len = segment_bytes as usize;
        let ends = [&mut plain, &mut aligned]
            .into_iter()
            .zip(out.files.iter_mut().zip(out.records.iter_mut()));
        for (w, (file, records)) in ends {
            for (i, size) in sizes.iter().enumerate() {
                let payload = vec![i as u8; *size];
                w.append(&index, &dedupe, &req(i as u64 % 3, &payload))
                    .unwrap();
            }
            while let Some(job) = w.take_batch() {
                let seg = file.entry(job.segment_base).or_insert_with(|| {
                    let mut bytes = vec![0u8; seg_len];
                    let header = job
                        .new_segment
                        .unwrap_or(SegmentHeader::new(0, 5, segment_bytes));
                    let head = encode_segment_header(&header);
                    bytes[..64].copy_from_slice(&head);
                    bytes
                });
                if job.aligned && !job.data().is_empty() {
                    assert_eq!(job.position % 4096, 0);
                    assert_eq!(job.data().as_ptr() as usize % 4096, 0, "aligned address");
                    let end = job.position as usize + job.data().len();
                    assert!(end.is_multiple_of(4096) || end == seg_len);
                    // The rewritten prefix equals what is there already.
                    let batch = w.batches.get(w.in_flight - 1).unwrap();
                    let prefix = (batch.position - job.position) as usize;
                    let at = job.position as usize;
                    assert_eq!(job.data()[..prefix], seg[at..at + prefix]);
                    if batch.bytes.is_empty() {
                        out.in_place += 1;
                    } else {
                        out.copied += 1;
                    }
                }
                let at = job.position as usize;
                seg[at..at + job.data().len()].copy_from_slice(job.data());
                let batch = w.complete_batch(job.id, job.bytes, true).unwrap();
                records.push(batch.records().to_vec());
            }
        }
        out
    }

    #[test]
    fn aligned_jobs_rewrite_the_partial_block_and_write_the_same_file() {
        let out = write_plain_and_aligned(8192, crate::limits::GROUP_COMMIT_BYTES_MAX, &[90; 300]);
        assert!(out.files[0].len() > 3, "rolled");
        assert_eq!(out.files[0], out.files[1]);
        // Completed batches hold exactly their records again (the job's head and
        // padding are gone), as the tail cache and the publish step read them.
        assert_eq!(out.records[0], out.records[1]);
        assert!(
            out.in_place > 10 && out.copied == 0,
            "no copy: {}",
            out.copied
        );
    }

    /// A record larger than the batch budget grows the batch's buffer past what
    /// `start_batch` aligned: that job falls back to a copy, and the files still match.
    #[test]
    fn aligned_jobs_fall_back_to_a_copy_when_a_large_record_moved_the_buffer() {
        let sizes: Vec<usize> = (0..120).map(|i| [90, 6000, 300, 13_000][i % 4]).collect();
        let out = write_plain_and_aligned(256 * 1024, 4096, &sizes);
        assert!(out.files[0].len() > 2, "rolled");
        assert_eq!(out.files[0], out.files[1]);
        assert_eq!(out.records[0], out.records[1]);
        assert!(
            out.in_place > 0 && out.copied > 0,
            "{} / {}",
            out.in_place,
            out.copied
        );
    }

    /// A writer in block-aligned mode (4 KiB) at the start of a fresh 1 MiB segment,
    /// whose first block holds the segment header; 64 KiB batches.
    fn block_aligned_writer() -> Writer {
        let mut w = writer(1 << 20, 100);
        w.limits.write_align = 4096;
        w.limits.batch_bytes = 64 * 1024;
        w.seed_tail_block(encode_segment_header(&SegmentHeader::new(0, 5, 1 << 20)).to_vec());
        w
    }

    /// Pooled buffers are advised huge pages at open; a batch in one starts its job on
    /// a 2 MiB boundary; the pool keeps advised buffers over ordinary ones.
    #[test]
    fn warm_buffers_are_huge_page_advised_and_kept_first() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = block_aligned_writer();
        w.warm_buffers();
        assert_eq!(w.pool.len(), BUFFER_POOL_MAX);
        if w.advised.is_empty() {
            // A kernel without transparent huge pages: nothing else to check.
            assert!(!std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists());
            return;
        }
        assert_eq!(w.advised.len(), BUFFER_POOL_MAX);
        w.append(&index, &dedupe, &req(1, &[7; 100])).unwrap();
        let job = w.take_batch().unwrap();
        assert_eq!(job.data().as_ptr() as usize % HUGE_PAGE_BYTES, 0);
        let batch = w.complete_batch(job.id, job.bytes, true).unwrap();
        // Full of ordinary buffers, the pool swaps one out for an advised one.
        let advised = batch.bytes;
        let size = w.buffer_bytes();
        // (The advised buffers stay alive meanwhile: a freed one's address could be
        // handed out again and pass as advised.)
        let warm = std::mem::take(&mut w.pool);
        w.pool = (0..BUFFER_POOL_MAX)
            .map(|_| Vec::with_capacity(size))
            .collect();
        w.recycle(Vec::with_capacity(size));
        assert_eq!(w.pool.iter().filter(|b| w.is_advised(b)).count(), 0);
        w.recycle(advised);
        assert_eq!(w.pool.len(), BUFFER_POOL_MAX);
        assert_eq!(w.pool.iter().filter(|b| w.is_advised(b)).count(), 1);
        // Too small for a batch: not kept.
        w.pool.clear();
        w.recycle(vec![0; 10]);
        assert!(w.pool.is_empty());
        drop(warm);
    }

    /// A pooled buffer comes back with its length: the next batch cuts it to its lead
    /// rather than zero-filling the lead again, and its job still carries exactly the
    /// block head and the records.
    #[test]
    fn a_reused_buffer_keeps_its_lead_unzeroed() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = block_aligned_writer();
        let header = encode_segment_header(&SegmentHeader::new(0, 5, 1 << 20)).to_vec();
        let size = w.buffer_bytes();
        w.pool = vec![vec![0xAA; size]];
        w.append(&index, &dedupe, &req(1, &[7; 100])).unwrap();
        let job = w.take_batch().unwrap();
        let data_start = job.data_start;
        assert!(
            data_start > 0,
            "records start after room for the block head"
        );
        // Before the job's data: what the buffer held, not zeros.
        assert!(job.bytes[..data_start].iter().all(|b| *b == 0xAA));
        // The job: the block head (the segment header), then the record, then zeros.
        assert_eq!(&job.data()[..header.len()], &header[..]);
        let record_end = header.len() + crate::format::record_len(100, false);
        assert!(job.data()[header.len()..record_end].contains(&7));
        assert!(job.data()[record_end..].iter().all(|b| *b == 0));
        assert_eq!(job.data().len() % 4096, 0);
        let batch = w.complete_batch(job.id, job.bytes, true).unwrap();
        let long = batch.bytes.len();
        w.recycle(batch.bytes);
        assert_eq!(
            w.pool.last().map(Vec::len),
            Some(long),
            "recycle keeps the length"
        );
    }

    #[test]
    fn failure_poisons_and_returns_every_ticket() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = writer(4096, 100);
        let t1 = w.append(&index, &dedupe, &req(1, b"a")).unwrap();
        assert!(w.take_batch().is_some());
        let t2 = w.append(&index, &dedupe, &req(1, b"b")).unwrap();
        assert_eq!(w.fail(), vec![t1, t2]);
        assert!(matches!(
            w.append(&index, &dedupe, &req(1, b"c")),
            Err(Error::Poisoned)
        ));
        assert!(w.take_batch().is_none());
    }

    #[test]
    fn oversized_payload_is_refused_before_encoding() {
        let (index, dedupe) = (Index::new(), Dedupe::new(1000, 10));
        let mut w = writer(4096, 100);
        let big = vec![0u8; 4096];
        let err = w.append(&index, &dedupe, &req(1, &big));
        assert!(matches!(err, Err(Error::Capacity(_))));
        assert!(!w.has_pending());
    }
}
