//! [`Log`]: the synchronous driver binding the sans-IO writer, the index, the readers
//! and recovery to a [`Storage`].

use std::collections::HashMap;
use std::time::Instant;

use crate::checkpoint::{CheckpointParts, KeysDraft};
use crate::checkpoint_file::{write_checkpoint_file, CheckpointSlots, SharedSlots};
use crate::config::{Config, Durability};
use crate::dedupe::{Dedupe, DedupeEntry};
use crate::error::{io_err, CapacityError, Error, Result};
use crate::format::{RecordKind, SegmentHeader, OFFSET_NONE};
use crate::index::Index;
use crate::limits::{
    CHECKPOINT_INTERVAL_SCALED_MAX_BYTES, CHECKPOINT_INTERVAL_SIZE_FACTOR, READ_RECORDS_MAX,
};
use crate::meta::{MetaRecord, StateMachine};
use crate::reader::{Page, ReadSources, Record, TailCache};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{create_segment, roll_segment, SegmentTable, SpareKind};
use crate::storage::{Storage, DIRECT_ALIGN};
use crate::writer::{
    Ack, AppendRequest, Batch, BatchJob, Ticket, Watermarks, Writer, WriterLimits,
};

/// A checkpoint being encoded in steps (see [`Log::checkpoint_begin`]).
#[derive(Debug)]
pub(crate) struct CheckpointDraft {
    offset: u64,
    keys: KeysDraft,
    state: Vec<u8>,
    /// Position (in the index's first-seen order) of the next conversation to encode.
    next_conv: usize,
    /// Conversations when the draft began: later ones are not walked (their records are
    /// after the checkpoint's offset, which recovery scans anyway).
    end_conv: usize,
    /// Absolute dedupe position of the next key to encode.
    next_key: u64,
    /// The dedupe end position when the draft began: keys after it are not walked.
    end_key: u64,
    /// Keys held when the draft began (at most this many are walked).
    keys_at_begin: usize,
    /// Keys encoded so far.
    keys_done: usize,
}

impl CheckpointDraft {
    /// How far the draft is, in conversations and keys: (encoded, at most to encode).
    pub(crate) fn progress(&self) -> (usize, usize) {
        (
            self.next_conv.saturating_add(self.keys_done),
            self.end_conv.saturating_add(self.keys_at_begin),
        )
    }

    /// The log offset the draft is as of.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }
}

/// One shard's log: a directory of segments plus in-memory index, idempotency map and
/// the caller's metadata state.
pub struct Log<S: Storage, M: StateMachine = ()> {
    pub(crate) storage: S,
    pub(crate) config: Config,
    pub(crate) state: M,
    pub(crate) writer: Writer,
    pub(crate) index: Index,
    pub(crate) dedupe: Dedupe,
    pub(crate) segments: SegmentTable,
    pub(crate) maps: HashMap<u64, S::Map>,
    pub(crate) tail: TailCache,
    pub(crate) last_sync: Instant,
    pub(crate) checkpoint_offset: u64,
    /// Size of the last checkpoint written (the interval to the next one scales with it).
    checkpoint_bytes: u64,
    /// The last checkpoint's buffer, given back once written and reused, so a large
    /// checkpoint neither reallocates while it grows nor faults in fresh pages each time.
    checkpoint_buffer: Vec<u8>,
    /// Which checkpoint slot file the next checkpoint goes to (shared with
    /// `PipelinedLog`'s checkpoint thread; one writer at a time).
    pub(crate) checkpoint_slots: SharedSlots,
    /// Offset of the last durable record (for checkpoints).
    pub(crate) last_record: u64,
    /// Log offset just past the last durable record.
    pub(crate) last_record_end: u64,
    /// `(last_seq, last_offset)` of durable metadata records.
    pub(crate) durable_meta: (u64, u64),
    resolved: Vec<(Ticket, Ack)>,
    /// A `spare.tmp` is durable and ready for the next roll: zero-filled or recycled.
    pub(crate) spare_ready: Option<SpareKind>,
    /// Rolls that installed a recycled spare since open (synchronous driver).
    recycled_rolls: u64,
}

fn now_ms() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_millis() as u64)
}

impl<S: Storage, M: StateMachine> Log<S, M> {
    /// Opens (recovering) or creates the log in `storage`. `state` is replaced by the
    /// checkpoint's snapshot (or reset) and then fed the metadata records after it.
    pub fn open(storage: S, config: Config, state: M) -> Result<(Self, RecoveryReport)> {
        Log::open_with(storage, config, state, 1)
    }

    /// [`Log::open`] with a writer that lets `max_in_flight` batches be taken at once.
    pub(crate) fn open_with(
        mut storage: S,
        config: Config,
        mut state: M,
        max_in_flight: usize,
    ) -> Result<(Self, RecoveryReport)> {
        config.validate()?;
        let mut rec = recover(&mut storage, &config, &mut state)?;
        let start = match rec.start {
            Some(start) => start,
            None => {
                let header = SegmentHeader::new(rec.fresh_base, now_ms(), config.segment_bytes);
                let meta = create_segment(&mut storage, &header)?;
                rec.segments.insert(header.base_offset, meta);
                rec.report.segments = 1;
                crate::writer::WriterStart {
                    segment_base: header.base_offset,
                    segment_capacity: header.capacity,
                    position: crate::format::SEGMENT_HEADER_BYTES as u64,
                    record_seed: header.record_seed(),
                    meta_tip: (0, OFFSET_NONE),
                }
            }
        };
        let limits = WriterLimits {
            batch_records: config.group_commit_records,
            batch_bytes: config.group_commit_bytes,
            segment_bytes: config.segment_bytes,
            sync_each_batch: config.durability == Durability::Durable,
            max_in_flight,
            write_align: if config.direct_io && config.durability == Durability::Durable {
                DIRECT_ALIGN as u64
            } else {
                1
            },
            recycled_segments: config.recycles(),
        };
        let mut writer = crate::writer::Writer::new(limits, start);
        let partial = writer.tail_block_len(start.position);
        if partial > 0 {
            // The durable bytes of the block the first aligned write starts in.
            let name = crate::format::segment_name(start.segment_base);
            let mut block = vec![0u8; partial as usize];
            let read = storage
                .read_at(&name, start.position - partial, &mut block)
                .map_err(io_err("read", &name))?;
            if read != block.len() {
                let at = start.segment_base + start.position;
                return Err(crate::error::corruption(&name, at, "short segment"));
            }
            writer.seed_tail_block(block);
        }
        let log = Log {
            tail: TailCache::new(config.tail_cache_bytes),
            writer,
            storage,
            config,
            state,
            index: rec.index,
            dedupe: rec.dedupe,
            segments: rec.segments,
            maps: HashMap::new(),
            last_sync: Instant::now(),
            checkpoint_offset: rec.checkpoint_offset,
            checkpoint_bytes: 0,
            checkpoint_buffer: Vec::new(),
            checkpoint_slots: CheckpointSlots::after_recovery(
                rec.checkpoint_source,
                rec.checkpoint_offset,
                rec.legacy_checkpoint,
            ),
            last_record: rec.last_record,
            last_record_end: rec.last_record_end,
            durable_meta: start.meta_tip,
            resolved: Vec::new(),
            spare_ready: None,
            recycled_rolls: 0,
        };
        Ok((log, rec.report))
    }

    /// Appends one record and commits: returns its ack once durable (per the config's
    /// durability). Acks of other pending tickets are kept for the next `commit`.
    pub fn append(&mut self, req: &AppendRequest<'_>) -> Result<Ack> {
        let ticket = self.append_nowait(req)?;
        self.commit_for(ticket)
    }

    /// Appends one metadata record and commits (see [`Log::append`]).
    pub fn append_meta(&mut self, kind: RecordKind, payload: &[u8], now_ms: u64) -> Result<Ack> {
        let ticket = self.append_meta_nowait(kind, payload, now_ms)?;
        self.commit_for(ticket)
    }

    fn commit_for(&mut self, ticket: Ticket) -> Result<Ack> {
        let acks = self.commit()?;
        let mut mine = None;
        for (t, ack) in acks {
            if t == ticket {
                mine = Some(ack);
            } else {
                self.resolved.push((t, ack));
            }
        }
        mine.ok_or(Error::Poisoned)
    }

    /// Encodes an append into the pending batch; it resolves at the next `commit`.
    /// Many appenders calling this then one `commit` share one write and one fdatasync.
    pub fn append_nowait(&mut self, req: &AppendRequest<'_>) -> Result<Ticket> {
        self.writer.append(&self.index, &self.dedupe, req)
    }

    /// Encodes a metadata append into the pending batch.
    pub fn append_meta_nowait(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Ticket> {
        self.writer.append_meta(kind, payload, now_ms)
    }

    /// Writes and syncs every pending batch (one write + one fdatasync each) and returns
    /// the acks of every ticket resolved. On a write or sync failure, the log is poisoned
    /// and the error returned; no pending ticket will resolve.
    pub fn commit(&mut self) -> Result<Vec<(Ticket, Ack)>> {
        let mut acks = std::mem::take(&mut self.resolved);
        acks.extend(self.writer.take_resolved());
        let durable = self.config.durability == Durability::Durable;
        while let Some(job) = self.writer.take_batch() {
            let (id, base) = (job.id, job.segment_base);
            let written = write_batch(
                &mut self.storage,
                &mut self.segments,
                &job,
                durable,
                &mut self.spare_ready,
                &mut self.recycled_rolls,
            );
            let rolled = match written {
                Ok(rolled) => rolled,
                Err(e) => {
                    let lost = self.writer.fail();
                    tracing::error!(error = %e, tickets = lost.len(), "batch failed; log poisoned");
                    return Err(e);
                }
            };
            if let Some(sealed_base) = rolled {
                self.seal(sealed_base, base);
            }
            let batch = self
                .writer
                .complete_batch(id, job.bytes, durable)
                .ok_or(Error::Poisoned)?;
            if durable {
                self.last_sync = Instant::now();
            }
            self.publish(batch, &mut acks);
        }
        if let Durability::OsBuffered { sync_interval } = self.config.durability {
            if self.last_sync.elapsed() >= sync_interval {
                self.sync()?;
            }
        }
        self.maybe_checkpoint()?;
        Ok(acks)
    }

    /// Maintenance call for the owner to run between batches (never inside a commit):
    /// if no spare segment is ready, prepares one so that the next roll only renames it:
    /// the segment retention retired last (`recycled.tmp`, see `segment.rs`), else a new
    /// `spare.tmp` zero-filled to the segment size, synced. Returns true when it did
    /// work. Without it a roll zero-fills inline (a latency spike, warned).
    /// A failure here does not poison the log: nothing was acknowledged through it.
    pub fn prepare_spare(&mut self) -> Result<bool> {
        if self.spare_ready.is_some() {
            return Ok(false);
        }
        let capacity = self.config.segment_bytes;
        let recycles = self.config.recycles();
        if recycles && crate::segment::adopt_recycled_spare(&mut self.storage, capacity)? {
            self.spare_ready = Some(SpareKind::Recycled);
            return Ok(true);
        }
        crate::segment::prepare_spare(&mut self.storage, capacity)?;
        self.spare_ready = Some(SpareKind::Prepared);
        Ok(true)
    }

    /// True when a spare segment is ready for the next roll.
    pub fn has_spare(&self) -> bool {
        self.spare_ready.is_some()
    }

    /// Rolls since open whose new segment went into a recycled file.
    pub fn recycled_rolls(&self) -> u64 {
        self.recycled_rolls
    }

    /// A segment was sealed by a roll: remember its end, drop its handle and the cache.
    pub(crate) fn seal(&mut self, base: u64, next: u64) {
        if let Some(meta) = self.segments.get_mut(&base) {
            meta.sealed_end = Some(next - base);
            self.storage.close(&meta.name);
        }
        let writer = &mut self.writer;
        self.tail.clear(|buffer| writer.recycle(buffer));
        self.writer.mark_synced(next);
    }

    /// A written batch becomes visible: index, idempotency keys, state, tail cache.
    pub(crate) fn publish(&mut self, batch: Batch, acks: &mut Vec<(Ticket, Ack)>) {
        for entry in &batch.entries {
            if entry.kind.is_conversation() {
                self.index
                    .push(entry.conversation_id, entry.seq, entry.offset);
                if let Some(key) = entry.key {
                    let dedupe = DedupeEntry {
                        conversation_id: entry.conversation_id,
                        seq: entry.seq,
                        message_id: entry.message_id,
                        offset: entry.offset,
                        timestamp_ms: entry.timestamp_ms,
                    };
                    self.dedupe.insert(key, dedupe);
                }
            } else {
                let bytes = batch.records().get(entry.at..).unwrap_or_default();
                // Our own bytes, encoded a moment ago: failing to decode them is a bug.
                let view = crate::format::decode_record(batch.seed, bytes);
                assert!(matches!(view, Ok(Some(_))), "own batch bytes do not decode");
                self.durable_meta = (entry.seq, entry.offset);
                if let Ok(Some(view)) = view {
                    self.state.apply(&MetaRecord {
                        kind: entry.kind,
                        seq: entry.seq,
                        offset: entry.offset,
                        timestamp_ms: entry.timestamp_ms,
                        payload: view.payload,
                    });
                }
            }
            self.last_record = entry.offset;
        }
        if !batch.entries.is_empty() {
            self.last_record_end = batch.end_offset();
        }
        let writer = &mut self.writer;
        self.tail.push(
            batch.segment_base + batch.position,
            batch.bytes,
            batch.lead,
            |buffer| writer.recycle(buffer),
        );
        acks.extend(batch.acks);
    }

    /// Syncs the active segment (needed only with `Durability::OsBuffered`).
    pub fn sync(&mut self) -> Result<()> {
        let marks = self.writer.watermarks();
        if marks.stable < marks.written {
            let name = crate::format::segment_name(self.writer.active_segment());
            if let Err(e) = self.storage.sync(&name) {
                self.writer.fail();
                return Err(io_err("sync", &name)(e));
            }
            self.writer.mark_synced(marks.written);
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Conversation records after `after_seq` (catch-up), at most `limit`, ascending.
    pub fn read_after(
        &mut self,
        conversation_id: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Page> {
        self.read_range(conversation_id, limit, |first, last| {
            let from = after_seq.saturating_add(1).max(first);
            (
                from,
                last.min(from.saturating_add(limit as u64).saturating_sub(1)),
            )
        })
    }

    /// Conversation records before `before_seq` (history), at most `limit`, ascending.
    pub fn read_before(
        &mut self,
        conversation_id: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Page> {
        self.read_range(conversation_id, limit, |first, last| {
            let to = before_seq.saturating_sub(1).min(last);
            (
                to.saturating_add(1).saturating_sub(limit as u64).max(first),
                to,
            )
        })
    }

    fn read_range(
        &mut self,
        conversation_id: u64,
        limit: usize,
        range: impl FnOnce(u64, u64) -> (u64, u64),
    ) -> Result<Page> {
        if limit > READ_RECORDS_MAX {
            let max = READ_RECORDS_MAX;
            return Err(CapacityError::ReadTooLarge { asked: limit, max }.into());
        }
        let Some(conv) = self.index.get(conversation_id) else {
            return Ok(Page {
                records: Vec::new(),
                first_seq: 1,
                last_seq: 0,
            });
        };
        let (first_seq, last_seq) = (conv.first_seq, conv.last_seq());
        let (from, to) = if limit == 0 {
            (1, 0)
        } else {
            range(first_seq, last_seq)
        };
        let mut sources = ReadSources {
            storage: &mut self.storage,
            segments: &self.segments,
            maps: &mut self.maps,
            tail: &self.tail,
        };
        let mut records = Vec::with_capacity(to.saturating_sub(from).saturating_add(1) as usize);
        // Sparse index: start at the nearest known record at or after `to`, walk back.
        if let Some((mut seq, mut offset)) = conv.locate(to).filter(|_| from <= to) {
            loop {
                let record = sources.read(offset)?;
                let name = || crate::format::segment_name(offset);
                if record.conversation_id != conversation_id || record.seq != seq {
                    let reason = "indexed record belongs to another stream";
                    return Err(crate::error::corruption(&name(), offset, reason));
                }
                let prev = record.prev_offset;
                if seq <= to {
                    records.push(record);
                }
                if seq <= from {
                    break;
                }
                if prev == OFFSET_NONE || prev >= offset {
                    let reason = "prev_offset chain breaks inside the retained range";
                    return Err(crate::error::corruption(&name(), offset, reason));
                }
                (seq, offset) = (seq - 1, prev);
            }
            records.reverse();
        }
        Ok(Page {
            records,
            first_seq,
            last_seq,
        })
    }

    /// Reads any durable record by offset (metadata included).
    pub fn read_at(&mut self, offset: u64) -> Result<Record> {
        ReadSources {
            storage: &mut self.storage,
            segments: &self.segments,
            maps: &mut self.maps,
            tail: &self.tail,
        }
        .read(offset)
    }

    /// Last durable sequence of a conversation (0 if none).
    pub fn last_seq(&self, conversation_id: u64) -> u64 {
        self.index.tip(conversation_id).0
    }

    /// Last sequence assigned in a conversation, appends not yet durable included: the
    /// next append gets this plus one.
    pub fn appended_last_seq(&self, conversation_id: u64) -> u64 {
        self.writer.appended_last_seq(&self.index, conversation_id)
    }

    /// The watermarks (appended ≥ written ≥ stable).
    pub fn watermarks(&self) -> Watermarks {
        self.writer.watermarks()
    }

    /// The caller's metadata state.
    pub fn state(&self) -> &M {
        &self.state
    }

    /// Number of idempotency keys held.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.segments.keys().copied().collect()
    }

    pub(crate) fn maybe_checkpoint(&mut self) -> Result<()> {
        if self.checkpoint_due(self.checkpoint_offset) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// True when the stable end is [`Log::checkpoint_interval`] past `since`.
    pub(crate) fn checkpoint_due(&self, since: u64) -> bool {
        let stable = self.writer.watermarks().stable;
        stable.saturating_sub(since) >= self.checkpoint_interval()
    }

    /// Log bytes between two checkpoints: `checkpoint_interval_bytes`, or
    /// `CHECKPOINT_INTERVAL_SIZE_FACTOR` times the last checkpoint's size if that is
    /// more (capped at `CHECKPOINT_INTERVAL_SCALED_MAX_BYTES`).
    pub(crate) fn checkpoint_interval(&self) -> u64 {
        let scaled = self
            .checkpoint_bytes
            .saturating_mul(CHECKPOINT_INTERVAL_SIZE_FACTOR)
            .min(CHECKPOINT_INTERVAL_SCALED_MAX_BYTES);
        self.config.checkpoint_interval_bytes.max(scaled)
    }

    /// Writes a checkpoint (index, keys, metadata tip, state snapshot) as of the written
    /// end into a checkpoint slot (see `checkpoint_file.rs`). Returns its offset.
    pub fn checkpoint(&mut self) -> Result<u64> {
        let (offset, bytes) = self.checkpoint_snapshot()?;
        write_checkpoint_file(&mut self.storage, &self.checkpoint_slots, offset, &bytes)?;
        self.checkpoint_written(offset, bytes.len());
        self.recycle_checkpoint_buffer(bytes);
        Ok(offset)
    }

    /// The encoded checkpoint as of the written end (synced first), and its offset. The
    /// file is written by [`write_checkpoint_file`], here or on another thread; only
    /// then may [`Log::checkpoint_written`] record it (retention trusts that offset).
    pub(crate) fn checkpoint_snapshot(&mut self) -> Result<(u64, Vec<u8>)> {
        let mut draft = self.checkpoint_begin()?;
        self.checkpoint_step(&mut draft, usize::MAX, usize::MAX, usize::MAX);
        Ok(self.checkpoint_finish(draft))
    }

    /// Starts a checkpoint that is encoded in steps ([`Log::checkpoint_step`]), so
    /// neither a large index nor a large idempotency map holds the owner thread in one
    /// go (the index of 10,000 conversations took 0.5–1.7 ms in one step). The header,
    /// segments and state are captured now, as of the written end. Conversations are
    /// walked later by position in first-seen order, each as it was now: the index
    /// remembers a conversation's tips before its first push after this call
    /// ([`Index::begin_as_of`]), and anchors only grow meanwhile (retention waits until
    /// the draft is finished or abandoned). Conversations created meanwhile and keys
    /// added meanwhile are not walked: they belong to records after the checkpoint's
    /// offset, which recovery scans anyway. Keys evicted meanwhile are left out
    /// (eviction is allowed to forget).
    pub(crate) fn checkpoint_begin(&mut self) -> Result<CheckpointDraft> {
        if self.writer.is_poisoned() {
            return Err(Error::Poisoned);
        }
        self.sync()?;
        let offset = match self.last_record {
            OFFSET_NONE => self.writer.watermarks().written,
            _ => self.last_record_end,
        };
        let segments: Vec<u64> = self.segments.keys().copied().collect();
        let state = self.state.snapshot();
        let parts = CheckpointParts {
            offset,
            last_record: self.last_record,
            meta_tip: self.durable_meta_tip(),
            segments: &segments,
            state: &state,
        };
        // From running totals: walking every conversation here would be one more pass
        // over the index on the owner thread, the one the steps exist to avoid.
        let size = crate::checkpoint::encoded_len(
            &parts,
            self.index.len(),
            self.index.anchor_count(),
            self.dedupe.held_entries(),
        );
        let mut buffer = std::mem::take(&mut self.checkpoint_buffer);
        buffer.clear();
        if buffer.capacity() < size {
            // A checkpoint grows a little each time: a buffer of exactly its size would
            // be reallocated (its old bytes copied, its new pages faulted in on the
            // owner thread: 0.2–0.8 ms at 10,000 conversations) for every checkpoint.
            buffer = Vec::with_capacity(size.saturating_add(size / 4));
        }
        let keys = KeysDraft::start(&parts, buffer);
        let end_conv = self.index.begin_as_of();
        Ok(CheckpointDraft {
            offset,
            keys,
            state,
            next_conv: 0,
            end_conv,
            next_key: 0,
            end_key: self.dedupe.end_position(),
            keys_at_begin: self.dedupe.held_entries(),
            keys_done: 0,
        })
    }

    /// Encodes up to `max_convs` more conversations of `draft` (each as it was when the
    /// draft began), or once they are all in, up to `max_keys` more keys; true once
    /// everything is in.
    pub(crate) fn checkpoint_step(
        &self,
        draft: &mut CheckpointDraft,
        max_convs: usize,
        max_keys: usize,
        max_bytes: usize,
    ) -> bool {
        let keys = &mut draft.keys;
        if draft.next_conv < draft.end_conv {
            let mut end = draft
                .end_conv
                .min(draft.next_conv.saturating_add(max_convs));
            let bytes_end = keys.len().saturating_add(max_bytes);
            for position in draft.next_conv..end {
                // Every position below `end_conv` exists: conversations are never
                // removed, and anchors only grow while the draft is open.
                let entry = self.index.as_of_entry(position);
                assert!(entry.is_some(), "index: conversation {position} missing");
                if let Some((id, tips, anchors)) = entry {
                    let fields = [
                        tips.first_seq,
                        tips.last_seq,
                        tips.last_offset,
                        tips.anchor_seq,
                    ];
                    keys.push_conv(id, fields, anchors);
                }
                if keys.len() >= bytes_end {
                    end = position + 1;
                    break;
                }
            }
            draft.next_conv = end;
            if end < draft.end_conv {
                return false;
            }
        }
        keys.start_keys();
        draft.next_key =
            self.dedupe
                .visit_between(draft.next_key, draft.end_key, max_keys, |key, entry| {
                    keys.push_key(&key, &entry);
                    draft.keys_done += 1;
                });
        draft.next_key >= draft.end_key
    }

    /// The encoded checkpoint of a finished draft, and its offset.
    pub(crate) fn checkpoint_finish(&mut self, draft: CheckpointDraft) -> (u64, Vec<u8>) {
        assert!(
            draft.keys.keys_started(),
            "checkpoint finished before its steps"
        );
        self.index.end_as_of();
        (draft.offset, draft.keys.finish(&draft.state))
    }

    /// Drops an unfinished draft (a complete checkpoint or retention supersedes it).
    pub(crate) fn checkpoint_abandon(&mut self, draft: CheckpointDraft) {
        self.index.end_as_of();
        let CheckpointDraft { keys, .. } = draft;
        self.recycle_checkpoint_buffer(keys.into_buffer());
    }

    /// Records that the checkpoint as of `offset` is durable on disk.
    pub(crate) fn checkpoint_written(&mut self, offset: u64, bytes: usize) {
        // Never backwards: a late background write must not undo a newer inline one.
        self.checkpoint_offset = self.checkpoint_offset.max(offset);
        self.checkpoint_bytes = bytes as u64;
        tracing::debug!(offset, bytes, "checkpoint written");
    }

    /// Gives a written checkpoint's buffer back for the next one.
    pub(crate) fn recycle_checkpoint_buffer(&mut self, buffer: Vec<u8>) {
        self.checkpoint_buffer = buffer;
    }

    /// Metadata tip of published (durable) records: pending ones are excluded because
    /// the checkpoint only covers the written end.
    fn durable_meta_tip(&self) -> (u64, u64) {
        self.durable_meta
    }

    /// Commits what is pending, syncs, and hands the storage back.
    pub fn close(mut self) -> Result<S> {
        self.commit()?;
        self.sync()?;
        Ok(self.storage)
    }
}

/// ONE write (after creating the segment if the batch opens one: from the spare when
/// `spare` says one is ready) and, when `durable`,
/// ONE sync. Returns the base of the segment sealed by a roll.
fn write_batch<S: Storage>(
    storage: &mut S,
    segments: &mut SegmentTable,
    batch: &BatchJob,
    durable: bool,
    spare: &mut Option<SpareKind>,
    recycled_rolls: &mut u64,
) -> Result<Option<u64>> {
    let mut sealed = None;
    if let Some(header) = &batch.new_segment {
        if let Some((&old_base, old)) = segments.iter().next_back() {
            // Sealed segments hold no torn tail: sync before the next one exists.
            storage.sync(&old.name).map_err(io_err("sync", &old.name))?;
            sealed = Some(old_base);
        }
        let (meta, recycled) = roll_segment(storage, header, spare)?;
        *recycled_rolls += u64::from(recycled);
        segments.insert(header.base_offset, meta);
    }
    let name = crate::format::segment_name(batch.segment_base);
    assert!(
        segments.contains_key(&batch.segment_base),
        "batch for an unknown segment"
    );
    if !batch.data().is_empty() {
        let written = if batch.aligned {
            storage.write_direct(&name, batch.position, batch.data())
        } else {
            storage.write_at(&name, batch.position, batch.data())
        };
        written.map_err(io_err("write", &name))?;
        if durable {
            storage.sync(&name).map_err(io_err("sync", &name))?;
        }
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::IdempotencyKey;
    use crate::sim::SimStorage;
    use crate::writer::AppendRequest;

    fn config() -> Config {
        Config {
            segment_bytes: 1 << 20,
            ..Config::default()
        }
    }

    /// `n` keyed appends to each conversation of `convs`; `call` keeps keys distinct.
    fn append_each(
        log: &mut Log<SimStorage>,
        convs: std::ops::RangeInclusive<u64>,
        n: u64,
        call: u8,
    ) {
        for round in 0..n {
            for conv in convs.clone() {
                let mut key: IdempotencyKey = [7; 16];
                key[..3].copy_from_slice(&[conv as u8, round as u8, call]);
                let req = AppendRequest {
                    conversation_id: conv,
                    message_id: conv * 1_000 + round,
                    timestamp_ms: 1,
                    key: Some(key),
                    kind: RecordKind::Message,
                    payload: b"hello",
                };
                log.append(&req).unwrap();
            }
        }
        log.commit().unwrap();
    }

    /// The interval to the next checkpoint scales with the last checkpoint's size: a
    /// log whose checkpoint is larger than a quarter of `checkpoint_interval_bytes`
    /// waits for four times its size before the next one.
    #[test]
    fn the_checkpoint_interval_scales_with_the_checkpoint_size() {
        let cfg = Config {
            checkpoint_interval_bytes: 4096,
            ..config()
        };
        let (mut log, _) = Log::open(SimStorage::new(), cfg, ()).unwrap();
        assert_eq!(log.checkpoint_interval(), 4096, "no checkpoint yet");
        append_each(&mut log, 1..=300, 1, 0);
        let offset = log.checkpoint().unwrap();
        let size = log.checkpoint_bytes;
        assert!(size * CHECKPOINT_INTERVAL_SIZE_FACTOR > 4096, "{size}");
        assert_eq!(
            log.checkpoint_interval(),
            size * CHECKPOINT_INTERVAL_SIZE_FACTOR
        );
        // Appends past the configured interval but short of the scaled one: not due.
        let grow_to = |log: &mut Log<SimStorage>, past: u64| {
            while log.writer.watermarks().stable - offset < past {
                let req = AppendRequest {
                    conversation_id: 1,
                    message_id: 1,
                    timestamp_ms: 1,
                    key: None,
                    kind: RecordKind::Message,
                    payload: &[9; 100],
                };
                log.append(&req).unwrap();
                log.commit().unwrap();
            }
        };
        // (`commit` checkpoints by itself when one is due.)
        grow_to(&mut log, 8192);
        assert!(!log.checkpoint_due(offset));
        assert_eq!(
            log.checkpoint_offset, offset,
            "no checkpoint at the configured interval"
        );
        grow_to(&mut log, size * CHECKPOINT_INTERVAL_SIZE_FACTOR);
        assert!(
            log.checkpoint_offset > offset,
            "a checkpoint once the log grew four times the last one's size"
        );
    }

    /// A step stops taking conversations once it has encoded `max_bytes` (the one that
    /// crosses the budget is its last), so conversations with many anchors do not make
    /// a long step; the draft still holds every conversation in the end.
    #[test]
    fn a_checkpoint_step_stops_taking_conversations_at_its_byte_budget() {
        let (mut log, _) = Log::open(SimStorage::new(), config(), ()).unwrap();
        // 40 records each: anchors at seq 1 and 33, so 64 encoded bytes per conversation.
        append_each(&mut log, 1..=20, 40, 0);
        let mut draft = log.checkpoint_begin().unwrap();
        let before = draft.keys.len();
        assert!(!log.checkpoint_step(&mut draft, usize::MAX, usize::MAX, 100));
        assert_eq!(draft.next_conv, 2);
        assert_eq!(draft.keys.len() - before, 128);
        let mut steps = 1;
        loop {
            steps += 1;
            if log.checkpoint_step(&mut draft, usize::MAX, usize::MAX, 100) {
                break;
            }
        }
        assert_eq!(
            steps, 10,
            "two conversations a step, the last with every key"
        );
        let (_, bytes) = log.checkpoint_finish(draft);
        let decoded = crate::checkpoint::decode_checkpoint(&bytes).unwrap();
        assert_eq!(decoded.convs.len(), 20);
        assert_eq!(decoded.keys.len(), 800);
    }

    /// A checkpoint drafted in steps while records keep arriving encodes every
    /// conversation as it was when the draft began (tips and anchors), leaves out
    /// conversations created meanwhile, and a log reopened from it replays the rest
    /// onto exactly that state.
    #[test]
    fn a_stepped_checkpoint_encodes_the_index_as_of_its_offset() {
        let storage = SimStorage::new();
        let (mut log, _) = Log::open(storage.clone(), config(), ()).unwrap();
        // 40 records each: anchors at seq 1 and 33.
        append_each(&mut log, 1..=50, 40, 0);
        let as_of = log.index.clone();
        let mut draft = log.checkpoint_begin().unwrap();
        assert!(!log.checkpoint_step(&mut draft, 10, usize::MAX, usize::MAX));
        // Meanwhile: 40 more in each (a new anchor at 65) and 10 new conversations.
        append_each(&mut log, 1..=60, 40, 1);
        let mut steps = 1;
        while !log.checkpoint_step(&mut draft, 10, 3, usize::MAX) {
            steps += 1;
        }
        assert!(
            steps >= 5,
            "conversations went in over several steps ({steps})"
        );
        let (offset, bytes) = log.checkpoint_finish(draft);
        assert!(!log.index.is_as_of());
        let decoded = crate::checkpoint::decode_checkpoint(&bytes).unwrap();
        assert_eq!(decoded.offset, offset);
        assert_eq!(
            decoded.convs.len(),
            50,
            "conversations created later are left out"
        );
        for (id, conv) in &decoded.convs {
            assert_eq!(
                Some(conv),
                as_of.get(*id),
                "conversation {id} as of the draft"
            );
            assert_eq!(conv.last_seq, 40);
            assert_eq!(conv.anchors.len(), 2);
        }
        assert_eq!(log.index.get(1).map(|c| c.anchors.len()), Some(3));
        write_checkpoint_file(&mut log.storage, &log.checkpoint_slots, offset, &bytes).unwrap();
        log.checkpoint_written(offset, bytes.len());
        let before = log.index.clone();
        drop(log);
        let (mut reopened, report) = Log::open(storage, config(), ()).unwrap();
        assert!(
            matches!(report.checkpoint, crate::recovery::CheckpointUse::Used(at) if at == offset),
            "{:?}",
            report.checkpoint
        );
        assert_eq!(
            report.records_scanned,
            60 * 40,
            "only what came after the draft"
        );
        assert_eq!(reopened.index, before);
        for conv in 1..=60u64 {
            assert_eq!(reopened.last_seq(conv), if conv <= 50 { 80 } else { 40 });
            let page = reopened.read_after(conv, 0, 100).unwrap();
            let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=reopened.last_seq(conv)).collect::<Vec<_>>());
        }
    }

    /// An abandoned draft stops the index remembering, so retention may trim again.
    #[test]
    fn an_abandoned_checkpoint_draft_releases_the_index() {
        let (mut log, _) = Log::open(SimStorage::new(), config(), ()).unwrap();
        append_each(&mut log, 1..=3, 5, 0);
        let draft = log.checkpoint_begin().unwrap();
        assert!(log.index.is_as_of());
        log.checkpoint_abandon(draft);
        assert!(!log.index.is_as_of());
        log.index.trim_below(0);
        assert!(log.checkpoint().is_ok());
    }
}
