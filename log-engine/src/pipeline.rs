//! [`PipelinedLog`]: group commit whose I/O runs on a dedicated thread, so that the
//! owner thread encodes batch N+1 while batch N is being written and fdatasync'ed.
//!
//! ```text
//!   owner thread (CPU)                         I/O thread                spare thread
//!   append_nowait: encode, sequence,           for each job, in order:   when asked:
//!   dedupe, into the open batch                  [roll: sync old segment,  spare.tmp,
//!   flush: Writer::take_batch → BatchJob ──────►  install the spare]       zero fill,
//!          (≤ pipeline_in_flight at once)        pwrite(bytes, position)   fdatasync,
//!   poll_acks / wait_acks ◄──────────────────── fdatasync                 dir fsync
//!     Writer::complete_batch, publish
//!     (index, keys, state, tail cache)
//!     → acks, strictly in batch order
//! ```
//!
//! Everything that decides anything (sequences, offsets, `prev_offset`, idempotency,
//! the index) stays on the owner thread in the sans-IO [`crate::writer::Writer`]; the I/O
//! thread only executes [`BatchJob`]s in the order it receives them and reports each
//! completion. Because it writes batch N+1 only after batch N's fdatasync returned, the
//! `stable_back` rule of `Durable` mode holds unchanged, and completions (hence acks and
//! reader visibility) arrive in order. A glommio DMA driver can replace the thread: it
//! takes the same jobs and feeds the same completions back.
//!
//! What keeps the owner thread's loop short (each was measured as a tail source with
//! `log_bench`'s open loop at 500k appends/s; figures in `bench/RESULTS.md`):
//! - the tail cache drops whole batches from its front instead of `drain`ing half of one
//!   8 MiB `Vec` (a 4 MiB memmove every ~30 ms);
//! - checkpoints are encoded straight from the live index (no clone), in steps of 512
//!   conversations and then 16K keys, each conversation as of the draft's start, and written
//!   into a checkpoint slot and fdatasync'ed by a checkpoint thread; the owner records one
//!   (which retention trusts) only once that thread reports it durable;
//! - batch buffers come from a pool touched at open, so a large batch (after a device
//!   stall) does not pay a thousand page faults on the owner thread; a job is the
//!   batch's own buffer (no copy), and the tail cache keeps it rather than a copy;
//!   a smaller batch is copied into a reused copy chunk, never a fresh allocation;
//! - a batch start does not zero-fill its buffer's lead (up to 2 MiB);
//! - the spare and checkpoint threads run at a lower CPU priority, so on two cores the
//!   scheduler does not preempt the owner for a 4 ms tick to zero-fill the spare.
//!
//! - the spare's zero fill and the checkpoint file go to the disk in 128 KiB `O_DIRECT`
//!   writes with one fdatasync at the end, so an append's write never queues behind a
//!   large writeback (a buffered fill synced per 512 KiB was behind 82% of the slow
//!   appends in session 10);
//! - a checkpoint overwrites written blocks of a slot file in place: no allocation,
//!   extent conversion, rename or directory fsync, hence no journal commit, for the
//!   appends' fdatasyncs to queue behind (session 11; see `checkpoint_file.rs`).
//!
//! What remains: an ideal serial group commit on this disk has a p99 of 1.7–2× the
//! disk's own write + fdatasync p99; this log is at ~1.5–3× that ideal on a quiet host
//! (session 10). The rest of the gap: the device's own multi-ms stalls, which an ideal
//! writer meets too but which cost a real one a larger batch after each, and (until
//! session 11) the checkpoint file's allocation, rename and directory fsync.
//!
//! Failure: the first failed write or sync makes the I/O thread refuse every later job
//! (it never writes past a failure) and poisons the log on the owner thread, exactly as
//! `Log::commit` does.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint_file::{write_checkpoint_file, SharedSlots};
use crate::config::{Config, Durability};
use crate::error::{io_err, Error, Result};
use crate::format::{segment_name, RecordKind, OFFSET_NONE};
use crate::limits::{
    CHECKPOINT_CONVS_PER_STEP, CHECKPOINT_DRAFT_SPAN_DIVISOR, CHECKPOINT_ENCODE_WARN,
    CHECKPOINT_KEYS_PER_STEP, CHECKPOINT_STEP_BYTES, PIPELINE_QUEUED_BATCHES_MAX,
    ZERO_FILL_BATCH_BYTES_MAX, ZERO_FILL_PACE_FACTOR, ZERO_FILL_PACE_MIN_BYTES_PER_SEC,
    ZERO_FILL_RECHECK,
};
use crate::log::CheckpointDraft;
use crate::log::Log;
use crate::meta::StateMachine;
use crate::reader::{Page, Record};
use crate::recovery::RecoveryReport;
use crate::retention::RetentionReport;
use crate::segment::{
    adopt_recycled_spare, finish_spare, roll_segment, start_spare, zero_spare_slice, AlignedZeros,
    SegmentMeta, SpareKind, SPARE_NAME,
};
use crate::stats::BatchIoStats;
use crate::storage::Storage;
use crate::writer::{Ack, AppendRequest, BatchJob, Ticket, Watermarks};

/// What the I/O thread reports for one job.
struct Completion {
    id: u64,
    bytes: Vec<u8>,
    /// The new segment when the job rolled.
    result: Result<Option<SegmentMeta>>,
}

/// The log with pipelined group commit. Only `Durability::Durable`.
///
/// Typical owner loop (one per shard):
///
/// ```
/// use log_engine::{AppendRequest, Config, PipelinedLog, RecordKind, sim::SimStorage};
/// let config = Config { segment_bytes: 64 * 1024, ..Config::default() };
/// let (mut log, _) = PipelinedLog::open(SimStorage::new(), config, ()).unwrap();
/// let req = AppendRequest {
///     conversation_id: 7, message_id: 1, timestamp_ms: 0, key: None,
///     kind: RecordKind::Message, payload: b"hello",
/// };
/// let ticket = log.append_nowait(&req).unwrap(); // encode only
/// log.flush().unwrap(); // hand the batch to the I/O thread
/// let acks = log.wait_acks().unwrap(); // durable now, in order
/// assert_eq!(acks[0].0, ticket);
/// assert_eq!(log.read_after(7, 0, 10).unwrap().records.len(), 1);
/// ```
pub struct PipelinedLog<S: Storage + Send + 'static, M: StateMachine = ()> {
    log: Log<S, M>,
    threads: IoThreads,
    done: Receiver<Completion>,
    /// Acks resolved but not yet returned.
    ready: Vec<(Ticket, Ack)>,
    /// Woken by the I/O thread after each completion.
    notify: Arc<CompletionWaker>,
    /// A checkpoint being encoded in steps (see `checkpoint_in_background`).
    draft: Option<CheckpointDraft>,
    /// The I/O thread's own timing of each batch.
    io_stats: Arc<BatchIoStats>,
    /// When retention last looked (a roll makes it look at once; see `retention_due`).
    retention_checked: Instant,
    /// Retention should look at the next completion: a roll happened, or a checkpoint
    /// it waited for was written.
    retention_due: bool,
    /// Retention is held back by the checkpoint (cleared when it runs).
    retention_waits: bool,
    /// Retention asked for a checkpoint before one is due (cleared when a draft begins).
    checkpoint_for_retention: bool,
}

/// The I/O, spare and checkpoint threads; dropping it stops and joins them.
struct IoThreads {
    jobs: Option<SyncSender<BatchJob>>,
    io: Option<JoinHandle<()>>,
    spare: Arc<SpareSlot>,
    preparer: Option<JoinHandle<()>>,
    checkpoints: CheckpointThread,
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.jobs = None; // the I/O thread finishes its queue and exits
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        self.checkpoints.jobs = None; // finishes the checkpoint it writes, then exits
        if let Some(thread) = self.checkpoints.thread.take() {
            let _ = thread.join();
        }
        self.spare.stop();
        if let Some(preparer) = self.preparer.take() {
            let _ = preparer.join();
        }
    }
}

impl<S: Storage + Send + 'static, M: StateMachine> PipelinedLog<S, M> {
    /// Opens (recovering) the log like [`Log::open`], then starts the I/O thread and the
    /// spare preparer, each with its own handle on the directory (`Storage::reopen`).
    pub fn open(storage: S, config: Config, state: M) -> Result<(Self, RecoveryReport)> {
        if config.durability != Durability::Durable {
            return Err(Error::Config("PipelinedLog needs Durability::Durable"));
        }
        let depth = config.pipeline_in_flight;
        let capacity = config.segment_bytes;
        let recycles = config.recycles();
        let (mut log, report) = Log::open_with(storage, config, state, depth)?;
        log.writer.warm_buffers();
        let io_storage = log.storage.reopen().map_err(io_err("reopen", "."))?;
        let spare_storage = log.storage.reopen().map_err(io_err("reopen", "."))?;
        let checkpoint_storage = log.storage.reopen().map_err(io_err("reopen", "."))?;
        let checkpoints =
            CheckpointThread::start(checkpoint_storage, log.checkpoint_slots.clone())?;
        let spare = Arc::new(SpareSlot::default());
        let slot = Arc::clone(&spare);
        let preparer = std::thread::Builder::new()
            .name("log-spare".into())
            .spawn(move || {
                lower_priority();
                spare_loop(spare_storage, capacity, recycles, &slot)
            })
            .map_err(io_err("spawn", "log-spare"))?;
        spare.request();
        let (jobs_tx, jobs_rx) = mpsc::sync_channel(depth);
        let (done_tx, done_rx) = mpsc::channel();
        let slot = Arc::clone(&spare);
        let active = log.writer.active_segment();
        let notify = Arc::new(CompletionWaker::default());
        let io_notify = Arc::clone(&notify);
        let io_stats = Arc::new(BatchIoStats::default());
        let stats = Arc::clone(&io_stats);
        let mut threads = IoThreads {
            jobs: Some(jobs_tx),
            io: None,
            spare,
            preparer: Some(preparer),
            checkpoints,
        };
        let io = std::thread::Builder::new()
            .name("log-io".into())
            .spawn(move || {
                let ends = IoEnds {
                    jobs: &jobs_rx,
                    done: &done_tx,
                    notify: &io_notify,
                    stats: &stats,
                };
                io_loop(io_storage, ends, &slot, active)
            })
            .map_err(io_err("spawn", "log-io"))?;
        threads.io = Some(io);
        let log = PipelinedLog {
            log,
            threads,
            done: done_rx,
            ready: Vec::new(),
            draft: None,
            notify,
            io_stats,
            retention_checked: Instant::now(),
            retention_due: false,
            retention_waits: false,
            checkpoint_for_retention: false,
        };
        Ok((log, report))
    }

    /// The I/O thread's timing of every batch so far (write + fdatasync, and the roll
    /// when there is one): a handle that stays current.
    pub fn batch_io_stats(&self) -> Arc<BatchIoStats> {
        Arc::clone(&self.io_stats)
    }

    /// Registers `waker` to be woken (from the I/O thread) after the next batch
    /// completion. Call it before [`PipelinedLog::poll_acks`] so no completion is missed.
    pub fn wake_on_completion(&self, waker: &std::task::Waker) {
        self.notify.set(waker);
    }

    /// Encodes an append into the open batch and returns its ticket; it resolves in a
    /// later [`PipelinedLog::poll_acks`] / [`PipelinedLog::wait_acks`] once durable. A
    /// repeat of a durable idempotency key resolves at once (it is already durable).
    /// Blocks for a completion only when more than `PIPELINE_QUEUED_BATCHES_MAX` full
    /// batches wait behind those in flight (backpressure).
    pub fn append_nowait(&mut self, req: &AppendRequest<'_>) -> Result<Ticket> {
        self.backpressure()?;
        self.log.append_nowait(req)
    }

    /// Encodes a metadata append (see [`PipelinedLog::append_nowait`]).
    pub fn append_meta_nowait(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Ticket> {
        self.backpressure()?;
        self.log.append_meta_nowait(kind, payload, now_ms)
    }

    fn backpressure(&mut self) -> Result<()> {
        if self.log.writer.queued() <= PIPELINE_QUEUED_BATCHES_MAX {
            return Ok(());
        }
        self.flush()?;
        while self.log.writer.queued() > PIPELINE_QUEUED_BATCHES_MAX {
            self.wait_one()?;
            self.flush()?;
            // An owner that appends faster than the disk may stay in here for long
            // stretches: checkpoints and retention advance here too, or retention would
            // wait for a checkpoint that only an ack poll starts.
            self.checkpoint_in_background()?;
            self.retention_in_background()?;
        }
        Ok(())
    }

    /// Hands pending batches to the I/O thread while fewer than `pipeline_in_flight`
    /// are in flight (the open batch is closed by this: later appends start the next
    /// one). Never blocks.
    pub fn flush(&mut self) -> Result<()> {
        if self.log.writer.is_poisoned() {
            return Err(Error::Poisoned);
        }
        while let Some(job) = self.log.writer.take_batch() {
            let sent = match &self.threads.jobs {
                Some(jobs) => jobs.try_send(job).is_ok(),
                None => false,
            };
            if !sent {
                // Cannot happen while the I/O thread lives (the channel holds
                // `pipeline_in_flight` jobs); if it died, nothing will complete.
                self.log.writer.fail();
                return Err(Error::Poisoned);
            }
        }
        Ok(())
    }

    /// Acks of every append that became durable since the last call, in batch order,
    /// without blocking; then hands the next batches to the I/O thread. After a failed
    /// write or sync: the error once (acks completed before it are returned by the next
    /// call), then `Error::Poisoned` from appends.
    pub fn poll_acks(&mut self) -> Result<Vec<(Ticket, Ack)>> {
        self.collect_completions()?;
        self.finish()
    }

    /// Takes every batch completion the I/O thread has reported and hands over the next
    /// batch, without returning acks (the next [`PipelinedLog::poll_acks`] returns them).
    /// Returns whether there was one. One channel check when there is none, so an owner
    /// can call it on every append: a completion is then noticed by whichever task
    /// appends next, not only by the task the I/O thread woke (which, on a busy
    /// executor, may run much later while the disk sits idle).
    pub fn collect_completions(&mut self) -> Result<bool> {
        let mut collected = false;
        loop {
            match self.done.try_recv() {
                Ok(done) => {
                    collected = true;
                    self.complete(done)?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if self.log.writer.in_flight() > 0 {
                        self.log.writer.fail();
                        return Err(Error::Poisoned);
                    }
                    break;
                }
            }
        }
        Ok(collected)
    }

    /// Like [`PipelinedLog::poll_acks`], but first flushes and, if nothing is resolved
    /// yet and a batch is in flight, blocks until one completes.
    pub fn wait_acks(&mut self) -> Result<Vec<(Ticket, Ack)>> {
        if !self.log.writer.is_poisoned() {
            self.flush()?;
        }
        self.ready.extend(self.log.writer.take_resolved());
        if self.ready.is_empty() && self.log.writer.in_flight() > 0 {
            self.wait_one()?;
        }
        self.poll_acks()
    }

    /// Waits until nothing is pending or in flight; returns every ack resolved.
    pub fn drain(&mut self) -> Result<Vec<(Ticket, Ack)>> {
        let mut acks = Vec::new();
        loop {
            acks.extend(self.wait_acks()?);
            let writer = &self.log.writer;
            if writer.in_flight() == 0 && writer.queued() == 0 {
                acks.extend(self.poll_acks()?);
                return Ok(acks);
            }
        }
    }

    fn wait_one(&mut self) -> Result<()> {
        match self.done.recv() {
            Ok(done) => self.complete(done),
            Err(_) => {
                self.log.writer.fail();
                Err(Error::Poisoned)
            }
        }
    }

    /// Returns the ready acks, flushes the next batches, checkpoints when due.
    fn finish(&mut self) -> Result<Vec<(Ticket, Ack)>> {
        self.ready.extend(self.log.writer.take_resolved());
        let acks = std::mem::take(&mut self.ready);
        if !self.log.writer.is_poisoned() {
            self.flush()?;
            self.checkpoint_in_background()?;
            self.retention_in_background()?;
        }
        Ok(acks)
    }

    /// Applies retention on its own (the owner never has to call
    /// [`PipelinedLog::apply_retention`]): after every roll, and every
    /// `retention_check_interval_ms` for the age limit of a log that stopped rolling. It
    /// deletes (or retires for recycling) only what the durable checkpoint already
    /// covers, so it never writes a checkpoint or waits for one here; when the background
    /// checkpoint is behind, it looks again at the next completion, and once per
    /// interval it asks for a checkpoint before one is due (a quiet log would otherwise
    /// keep its expired segments until a checkpoint interval more was written).
    fn retention_in_background(&mut self) -> Result<()> {
        let interval = Duration::from_millis(self.log.config.retention_check_interval_ms);
        let by_clock = self.retention_checked.elapsed() >= interval;
        let due = self.retention_due || by_clock;
        // A checkpoint being drafted encodes the index as it was when it began, which
        // retention's trim would change under it: retention waits for the draft.
        if !due || self.draft.is_some() {
            return Ok(());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if self.log.apply_retention_if_checkpointed(now_ms)?.is_some() {
            self.retention_due = false;
            self.retention_waits = false;
            self.checkpoint_for_retention = false;
            self.retention_checked = Instant::now();
        } else {
            self.retention_waits = true;
            if by_clock {
                self.checkpoint_for_retention = true;
                self.retention_checked = Instant::now();
            }
        }
        Ok(())
    }

    /// Advances the checkpoint: when one is due and none is being written, begins a
    /// draft; each call encodes up to `CHECKPOINT_CONVS_PER_STEP` conversations (at most
    /// `CHECKPOINT_STEP_BYTES`) or `CHECKPOINT_KEYS_PER_STEP` keys; a finished
    /// draft goes to the checkpoint thread. A finished write is recorded. The owner never
    /// encodes a whole large key map in one call.
    fn checkpoint_in_background(&mut self) -> Result<()> {
        self.collect_checkpoint(false);
        if self.threads.checkpoints.in_flight.is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut draft = match self.draft.take() {
            Some(draft) => draft,
            None if self.log.checkpoint_due(self.log.checkpoint_offset)
                || self.early_checkpoint_for_retention() =>
            {
                // A draft begun for any reason answers retention's request.
                self.checkpoint_for_retention = false;
                self.log.checkpoint_begin()?
            }
            None => return Ok(()),
        };
        let behind = self.checkpoint_behind(&draft);
        let done = if behind > 0 {
            // The log outruns the steps (large batches, few completions): catch up.
            self.log
                .checkpoint_step(&mut draft, behind, behind, usize::MAX)
        } else {
            self.log.checkpoint_step(
                &mut draft,
                CHECKPOINT_CONVS_PER_STEP,
                CHECKPOINT_KEYS_PER_STEP,
                CHECKPOINT_STEP_BYTES,
            )
        };
        let took = started.elapsed();
        if took > CHECKPOINT_ENCODE_WARN {
            tracing::warn!(?took, "checkpoint encoding step held the owner thread");
        }
        if !done {
            self.draft = Some(draft);
            return Ok(());
        }
        let (offset, bytes) = self.log.checkpoint_finish(draft);
        let checkpoints = &mut self.threads.checkpoints;
        let sent = match &checkpoints.jobs {
            Some(jobs) => jobs.send((offset, bytes)).is_ok(),
            None => false,
        };
        if sent {
            checkpoints.in_flight = Some(offset);
        } else {
            tracing::warn!("checkpoint thread gone; checkpoints stop");
        }
        Ok(())
    }

    /// Retention asked for a checkpoint and there are records it would cover that the
    /// last one does not (consumes the request either way).
    fn early_checkpoint_for_retention(&mut self) -> bool {
        let asked = std::mem::take(&mut self.checkpoint_for_retention);
        asked
            && self.log.last_record != OFFSET_NONE
            && self.log.last_record_end > self.log.checkpoint_offset
    }

    /// How many conversations and keys `draft` is behind its pace: a draft should be
    /// complete once the log has grown `checkpoint_interval_bytes /
    /// CHECKPOINT_DRAFT_SPAN_DIVISOR` past its offset. With small batches (many
    /// completions) the short steps are ahead and this is 0; with 4 MiB batches a few
    /// completions carry that span, and each step takes its share.
    fn checkpoint_behind(&self, draft: &CheckpointDraft) -> usize {
        let span = self.log.checkpoint_interval() / CHECKPOINT_DRAFT_SPAN_DIVISOR;
        let grown = self
            .log
            .writer
            .watermarks()
            .stable
            .saturating_sub(draft.offset());
        let (encoded, total) = draft.progress();
        items_behind_pace(encoded, total, grown, span)
    }

    /// Records the checkpoint being written once it is done (waiting for it if `block`).
    /// A failed write is logged: the previous checkpoint stays the one recovery uses.
    fn collect_checkpoint(&mut self, block: bool) {
        let checkpoints = &mut self.threads.checkpoints;
        if checkpoints.in_flight.is_none() {
            return;
        }
        let done = if block {
            checkpoints.done.recv().ok()
        } else {
            match checkpoints.done.try_recv() {
                Ok(done) => Some(done),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        checkpoints.in_flight = None;
        match done {
            Some((offset, bytes, Ok(()))) => {
                self.log.checkpoint_written(offset, bytes.len());
                self.log.recycle_checkpoint_buffer(bytes);
                // Retention waiting for a checkpoint looks again now, not at the next
                // roll or interval.
                self.retention_due |= self.retention_waits;
            }
            Some((offset, bytes, Err(e))) => {
                tracing::warn!(offset, error = %e, "background checkpoint failed");
                self.log.recycle_checkpoint_buffer(bytes);
            }
            None => tracing::warn!("checkpoint thread gone"),
        }
    }

    /// One completion from the I/O thread: seal/add segments, publish the batch.
    fn complete(&mut self, done: Completion) -> Result<()> {
        if self.log.writer.is_poisoned() {
            return Ok(()); // its tickets were failed already
        }
        let rolled = match done.result {
            Ok(rolled) => rolled,
            Err(e) => {
                let lost = self.log.writer.fail();
                tracing::error!(error = %e, tickets = lost.len(), "batch failed; log poisoned");
                return Err(e);
            }
        };
        if let Some(meta) = rolled {
            self.retention_due = true;
            let base = meta.header.base_offset;
            let old = self.log.segments.keys().next_back().copied();
            self.log.segments.insert(base, meta);
            if let Some(old) = old {
                self.log.seal(old, base);
            }
        }
        let batch = self.log.writer.complete_batch(done.id, done.bytes, true);
        let batch = batch.ok_or(Error::Poisoned)?;
        // The I/O thread gets its next job before this batch is published (index, tail
        // cache, acks): the disk should not wait for the bookkeeping. The batch is
        // durable, so it is published even if the hand-over failed.
        let handed_over = self.flush();
        self.log.last_sync = Instant::now();
        self.log.publish(batch, &mut self.ready);
        handed_over
    }

    /// Batches handed to the I/O thread and not completed.
    pub fn in_flight(&self) -> usize {
        self.log.writer.in_flight()
    }

    /// True when a spare segment is ready for the next roll.
    pub fn has_spare(&self) -> bool {
        self.threads.spare.is_ready()
    }

    /// Rolls since open whose new segment went into a recycled file.
    pub fn recycled_rolls(&self) -> u64 {
        self.threads
            .spare
            .recycled_rolls
            .load(AtomicOrdering::Relaxed)
    }

    /// Conversation records after `after_seq` (durable ones only).
    pub fn read_after(
        &mut self,
        conversation_id: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Page> {
        self.log.read_after(conversation_id, after_seq, limit)
    }

    /// Conversation records before `before_seq` (durable ones only).
    pub fn read_before(
        &mut self,
        conversation_id: u64,
        before_seq: u64,
        limit: usize,
    ) -> Result<Page> {
        self.log.read_before(conversation_id, before_seq, limit)
    }

    /// Reads any durable record by offset.
    pub fn read_at(&mut self, offset: u64) -> Result<Record> {
        self.log.read_at(offset)
    }

    /// Last durable sequence of a conversation.
    pub fn last_seq(&self, conversation_id: u64) -> u64 {
        self.log.last_seq(conversation_id)
    }

    /// Last sequence assigned in a conversation, pending appends included.
    pub fn appended_last_seq(&self, conversation_id: u64) -> u64 {
        self.log.appended_last_seq(conversation_id)
    }

    /// True while a checkpoint is being encoded in steps (retention waits for it).
    pub fn checkpoint_drafting(&self) -> bool {
        self.draft.is_some()
    }

    /// Offset of the newest durable checkpoint: a restart replays the log from here.
    pub fn checkpoint_offset(&self) -> u64 {
        self.log.checkpoint_offset
    }

    /// The watermarks (appended ≥ written ≥ stable; written = stable here).
    pub fn watermarks(&self) -> Watermarks {
        self.log.watermarks()
    }

    /// The caller's metadata state.
    pub fn state(&self) -> &M {
        self.log.state()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<u64> {
        self.log.segment_bases()
    }

    /// Writes a checkpoint as of the last published record (see [`Log::checkpoint`]),
    /// after any background one finished.
    pub fn checkpoint(&mut self) -> Result<u64> {
        self.abandon_draft(); // superseded by this complete one
        self.collect_checkpoint(true);
        self.log.checkpoint()
    }

    /// Deletes sealed segments past the retention limits (see `Log::apply_retention`),
    /// after any background checkpoint finished (retention may write one itself).
    pub fn apply_retention(&mut self, now_ms: u64) -> Result<RetentionReport> {
        self.abandon_draft(); // retention may write a complete one itself
        self.collect_checkpoint(true);
        self.log.apply_retention(now_ms)
    }

    fn abandon_draft(&mut self) {
        if let Some(draft) = self.draft.take() {
            self.log.checkpoint_abandon(draft);
        }
    }

    /// Drains, stops the threads and hands the storage back.
    pub fn close(mut self) -> Result<S> {
        self.drain()?;
        self.abandon_draft(); // the log may write a complete one as it closes
        self.collect_checkpoint(true);
        let PipelinedLog { log, threads, .. } = self;
        drop(threads);
        log.close()
    }
}

/// Niceness of the spare and checkpoint threads.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's CPU priority (Linux: per-thread nice). On a two-core host
/// the owner, the I/O thread and the background threads share two CPUs; at equal
/// priority the scheduler would preempt the owner for a whole tick (4 ms) to let the
/// spare's zero fill run, and every append due meanwhile would wait. Best effort.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread.
    let tid = unsafe { libc::gettid() };
    let who = libc::id_t::try_from(tid).unwrap_or(0);
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower thread priority");
    }
}

/// Writes encoded checkpoints off the owner thread: the slot write and its fdatasync
/// take milliseconds that would otherwise stall every append due meanwhile. One at a time; the owner records a checkpoint (which retention
/// trusts) only once its write is reported.
struct CheckpointThread {
    jobs: Option<Sender<(u64, Vec<u8>)>>,
    /// Offset, the written bytes (their buffer goes back to the log for reuse), result.
    done: Receiver<(u64, Vec<u8>, Result<()>)>,
    thread: Option<JoinHandle<()>>,
    /// Offset of the checkpoint being written.
    in_flight: Option<u64>,
}

impl CheckpointThread {
    fn start<S: Storage + Send + 'static>(
        mut storage: S,
        slots: SharedSlots,
    ) -> Result<CheckpointThread> {
        let (jobs, inbox) = mpsc::channel::<(u64, Vec<u8>)>();
        let (outbox, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("log-checkpoint".into())
            .spawn(move || {
                lower_priority();
                for (offset, bytes) in inbox {
                    let result = write_checkpoint_file(&mut storage, &slots, offset, &bytes);
                    if outbox.send((offset, bytes, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(io_err("spawn", "log-checkpoint"))?;
        Ok(CheckpointThread {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            in_flight: None,
        })
    }
}

/// What the I/O thread talks to the owner through.
struct IoEnds<'a> {
    jobs: &'a Receiver<BatchJob>,
    done: &'a Sender<Completion>,
    notify: &'a CompletionWaker,
    stats: &'a BatchIoStats,
}

/// The I/O thread: runs jobs in order; after the first failure, refuses the rest.
fn io_loop<S: Storage>(mut storage: S, ends: IoEnds<'_>, spare: &SpareSlot, mut active: u64) {
    let IoEnds {
        jobs,
        done,
        notify,
        stats,
    } = ends;
    let mut failed = false;
    for job in jobs {
        let result = if failed {
            Err(Error::Poisoned)
        } else {
            let started = Instant::now();
            let result = run_job(&mut storage, &job, spare, &mut active);
            stats.record(started.elapsed(), job.data().len());
            result
        };
        spare.note_batch(job.data().len());
        failed |= result.is_err();
        let completion = Completion {
            id: job.id,
            bytes: job.bytes,
            result,
        };
        if done.send(completion).is_err() {
            return;
        }
        // After the send, so a woken owner always finds the completion.
        notify.wake();
    }
}

/// A waker the I/O thread wakes after every completion, so an async owner (see
/// [`crate::async_log`]) sleeps instead of polling. Set it *before* checking for
/// completions; a wake that races with the check is then at worst spurious.
#[derive(Default)]
pub(crate) struct CompletionWaker {
    waker: Mutex<Option<std::task::Waker>>,
}

impl CompletionWaker {
    pub(crate) fn set(&self, waker: &std::task::Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(current) if current.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One job: roll if asked (sync the old segment, install the spare), one write, one
/// fdatasync.
fn run_job<S: Storage>(
    storage: &mut S,
    job: &BatchJob,
    spare: &SpareSlot,
    active: &mut u64,
) -> Result<Option<SegmentMeta>> {
    let mut rolled = None;
    if let Some(header) = &job.new_segment {
        let old = segment_name(*active);
        // Sealed segments hold no torn tail: sync before the next one exists.
        storage.sync(&old).map_err(io_err("sync", &old))?;
        storage.close(&old);
        let mut ready = spare.take();
        let (meta, recycled) = roll_segment(storage, header, &mut ready)?;
        if recycled {
            spare.recycled_rolls.fetch_add(1, AtomicOrdering::Relaxed);
        }
        spare.request();
        *active = header.base_offset;
        rolled = Some(meta);
    }
    assert_eq!(
        job.segment_base, *active,
        "batch for a segment that is not active"
    );
    if !job.data().is_empty() {
        let name = segment_name(job.segment_base);
        let written = if job.aligned {
            storage.write_direct(&name, job.position, job.data())
        } else {
            storage.write_at(&name, job.position, job.data())
        };
        written.map_err(io_err("write", &name))?;
        storage.sync(&name).map_err(io_err("sync", &name))?;
    }
    Ok(rolled)
}

/// Where the spare segment stands, shared by the I/O thread and the preparer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Spare {
    /// No spare and none asked for.
    #[default]
    Idle,
    /// Asked for; the preparer will start.
    Wanted,
    /// Being created and allocated: not installable yet.
    Creating,
    /// Allocated and durable (installable); the preparer is zero-filling it.
    Zeroing,
    /// A roll wants it: the preparer stops after its current slice.
    Handoff,
    /// The preparer stopped for the roll; it is the roll's now.
    HandedOff,
    /// Zero-filled, durable, unused.
    Ready,
    /// Shutting down.
    Stop,
}

#[derive(Debug, Default)]
struct SpareSlot {
    state: Mutex<Spare>,
    changed: Condvar,
    /// Moving average of the bytes of recent batches (each new one weighs 1/8), kept by
    /// the I/O thread; the preparer zero-fills only while it is under
    /// `ZERO_FILL_BATCH_BYTES_MAX`.
    recent_batch_bytes: AtomicU64,
    /// The spare is a recycled segment (set by the preparer before it reports `Ready`).
    recycled: std::sync::atomic::AtomicBool,
    /// Rolls since open that installed a recycled spare (kept by the I/O thread).
    recycled_rolls: AtomicU64,
    /// Bytes of every batch written since open (kept by the I/O thread): the preparer
    /// paces its zero fill by the log's write rate.
    batch_bytes_total: AtomicU64,
}

impl SpareSlot {
    fn lock(&self) -> MutexGuard<'_, Spare> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Spare>) -> MutexGuard<'a, Spare> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, guard: &mut MutexGuard<'_, Spare>, to: Spare) {
        **guard = to;
        self.changed.notify_all();
    }

    /// Asks the preparer for a spare if there is none.
    fn request(&self) {
        let mut state = self.lock();
        if *state == Spare::Idle {
            self.set(&mut state, Spare::Wanted);
        }
    }

    /// Takes the spare — zero-filled or not, once it is allocated and durable, or
    /// recycled — waiting for its creation or for the zero-fill slice in progress; `None`
    /// if there is none (the roll then zero-fills inline).
    fn take(&self) -> Option<SpareKind> {
        let mut state = self.lock();
        loop {
            match *state {
                Spare::Wanted | Spare::Creating | Spare::Handoff => state = self.wait(state),
                Spare::Zeroing => self.set(&mut state, Spare::Handoff),
                Spare::HandedOff | Spare::Ready => {
                    self.set(&mut state, Spare::Idle);
                    return Some(if self.recycled.load(AtomicOrdering::Relaxed) {
                        SpareKind::Recycled
                    } else {
                        SpareKind::Prepared
                    });
                }
                Spare::Idle | Spare::Stop => return None,
            }
        }
    }

    /// Folds one written batch's size into the moving average.
    fn note_batch(&self, bytes: usize) {
        self.batch_bytes_total
            .fetch_add(bytes as u64, AtomicOrdering::Relaxed);
        let average = self.recent_batch_bytes.load(AtomicOrdering::Relaxed);
        let average = average - average / 8 + bytes as u64 / 8;
        self.recent_batch_bytes
            .store(average, AtomicOrdering::Relaxed);
    }

    /// True while recent batches are large enough that zero filling costs the disk more
    /// than it saves them (see `ZERO_FILL_BATCH_BYTES_MAX`).
    fn batches_too_large_to_zero(&self) -> bool {
        self.recent_batch_bytes.load(AtomicOrdering::Relaxed) > ZERO_FILL_BATCH_BYTES_MAX
    }

    /// Waits up to `timeout` unless the state moves on from `Zeroing` (a hand-off or a
    /// stop) meanwhile.
    fn pause(&self, timeout: std::time::Duration) {
        let state = self.lock();
        if *state == Spare::Zeroing {
            let waited = self.changed.wait_timeout(state, timeout);
            drop(waited.unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// True when a fully zero-filled spare waits.
    fn is_ready(&self) -> bool {
        *self.lock() == Spare::Ready
    }

    fn stop(&self) {
        let mut state = self.lock();
        self.set(&mut state, Spare::Stop);
    }
}

/// The spare preparer: whenever asked, creates `spare.tmp` (installable from then on)
/// and zero-fills it slice by slice, off the owner and I/O threads, until it is full or
/// a roll takes it.
fn spare_loop<S: Storage>(mut storage: S, capacity: u64, recycles: bool, slot: &SpareSlot) {
    loop {
        {
            let mut state = slot.lock();
            while *state != Spare::Wanted {
                if *state == Spare::Stop {
                    return;
                }
                state = slot.wait(state);
            }
            slot.set(&mut state, Spare::Creating);
        }
        let started = Instant::now();
        // A segment retention retired is the best spare: its blocks are written already.
        let adopted = recycles
            && adopt_recycled_spare(&mut storage, capacity).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "recycling a retired segment failed");
                false
            });
        slot.recycled.store(adopted, AtomicOrdering::Relaxed);
        if adopted {
            let mut state = slot.lock();
            if *state == Spare::Stop {
                return;
            }
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "recycled spare ready"
            );
            slot.set(&mut state, Spare::Ready);
            continue;
        }
        let created = start_spare(&mut storage, capacity);
        {
            let mut state = slot.lock();
            match (*state, created) {
                (Spare::Stop, _) => return,
                (_, Ok(())) => slot.set(&mut state, Spare::Zeroing),
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "creating the spare segment failed");
                    storage.close(SPARE_NAME);
                    slot.set(&mut state, Spare::Idle);
                    continue;
                }
            }
        }
        let mut from = 0;
        let pace = ZeroFillPace::start(slot);
        let zeros = AlignedZeros::new();
        loop {
            {
                let mut state = slot.lock();
                match *state {
                    Spare::Stop => return,
                    Spare::Handoff => {
                        tracing::debug!(zeroed = from, capacity, "spare taken part-zeroed");
                        slot.set(&mut state, Spare::HandedOff);
                        break;
                    }
                    _ if from >= capacity => {
                        drop(state);
                        // Outside the lock: a roll that comes meanwhile waits for this
                        // sync to finish (see `SpareSlot::take`) and installs a spare
                        // whose zeros are durable.
                        if let Err(e) = finish_spare(&mut storage) {
                            // Still a correct spare; the install's fdatasync retries.
                            tracing::warn!(error = %e, "syncing the zero-filled spare failed");
                        }
                        let mut state = slot.lock();
                        if *state == Spare::Stop {
                            return;
                        }
                        tracing::debug!(ms = started.elapsed().as_millis() as u64, "spare ready");
                        slot.set(&mut state, Spare::Ready);
                        break;
                    }
                    _ => {}
                }
            }
            if slot.batches_too_large_to_zero() {
                // Zeroing now would take disk bandwidth from large batches that save
                // little by it; the spare stays correct (allocated, durable) meanwhile.
                // A roll's hand-off or a stop wakes the wait.
                slot.pause(ZERO_FILL_RECHECK);
                continue;
            }
            match zero_spare_slice(&mut storage, from, capacity, &zeros) {
                Ok(next) => {
                    from = next;
                    if let Some(ahead) = pace.ahead_by(slot, from) {
                        slot.pause(ahead);
                    }
                }
                Err(e) => {
                    // Still a correct spare (allocated, durable), just not zeroed further.
                    tracing::warn!(error = %e, "zero-filling the spare segment failed");
                    from = capacity;
                }
            }
        }
        storage.close(SPARE_NAME);
    }
}

/// Items (conversations and keys) a draft that has encoded `encoded` of `total` is
/// behind, when it should be done after `span` bytes of log and the log has grown
/// `grown` bytes since the draft's offset.
fn items_behind_pace(encoded: usize, total: usize, grown: u64, span: u64) -> usize {
    let due = if grown >= span {
        total
    } else {
        // grown < span, so this is at most `total`.
        (total as u128 * u128::from(grown) / u128::from(span.max(1))) as usize
    };
    due.saturating_sub(encoded)
}

/// Paces a spare's zero fill at `ZERO_FILL_PACE_FACTOR` times the log's write rate since
/// the fill began, and at least `ZERO_FILL_PACE_MIN_BYTES_PER_SEC`: fast enough that
/// the spare is ready long before the active segment fills, spread out so that the
/// appends' fdatasyncs do not all meet it in one burst.
struct ZeroFillPace {
    began: Instant,
    log_bytes_at_start: u64,
}

impl ZeroFillPace {
    fn start(slot: &SpareSlot) -> ZeroFillPace {
        ZeroFillPace {
            began: Instant::now(),
            log_bytes_at_start: slot.batch_bytes_total.load(AtomicOrdering::Relaxed),
        }
    }

    /// How far the fill (`zeroed` bytes) is ahead of its pace, if it is.
    fn ahead_by(&self, slot: &SpareSlot, zeroed: u64) -> Option<std::time::Duration> {
        let elapsed = self.began.elapsed().as_secs_f64();
        let log_bytes = slot
            .batch_bytes_total
            .load(AtomicOrdering::Relaxed)
            .saturating_sub(self.log_bytes_at_start);
        let log_rate = if elapsed > 0.0 {
            log_bytes as f64 / elapsed
        } else {
            0.0
        };
        let rate = (log_rate * ZERO_FILL_PACE_FACTOR).max(ZERO_FILL_PACE_MIN_BYTES_PER_SEC);
        let due = zeroed as f64 / rate;
        (due > elapsed).then(|| std::time::Duration::from_secs_f64(due - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_is_behind_by_its_share_of_the_log_grown_since_it_began() {
        assert_eq!(items_behind_pace(0, 1000, 0, 4096), 0);
        assert_eq!(items_behind_pace(100, 1000, 2048, 4096), 400);
        assert_eq!(
            items_behind_pace(600, 1000, 2048, 4096),
            0,
            "ahead of its pace"
        );
        assert_eq!(items_behind_pace(100, 1000, 4096, 4096), 900);
        assert_eq!(items_behind_pace(100, 1000, u64::MAX, 4096), 900);
        assert_eq!(
            items_behind_pace(0, usize::MAX, u64::MAX - 1, u64::MAX),
            usize::MAX - 1
        );
    }

    #[test]
    fn zero_filling_is_paced_by_the_logs_write_rate() {
        let slot = SpareSlot::default();
        let pace = ZeroFillPace::start(&slot);
        assert_eq!(
            pace.ahead_by(&slot, 0),
            None,
            "nothing zeroed, nothing to wait"
        );
        // An idle log: the floor rate. 64 MiB at 128 MiB/s is due ~0.5 s after the start.
        let idle = pace
            .ahead_by(&slot, 64 << 20)
            .expect("ahead of the floor rate");
        assert!(
            idle > std::time::Duration::from_millis(400)
                && idle <= std::time::Duration::from_millis(500),
            "{idle:?}"
        );
        // The log wrote 1 GiB since (far faster than the floor): the fill may run at
        // three times that, so the same 64 MiB is due much sooner.
        for _ in 0..1024 {
            slot.note_batch(1 << 20);
        }
        let busy = pace.ahead_by(&slot, 64 << 20).unwrap_or_default();
        assert!(busy < idle / 10, "{busy:?} against {idle:?}");
    }

    #[test]
    fn zero_filling_pauses_while_batches_are_large_and_resumes_when_they_shrink() {
        let slot = SpareSlot::default();
        assert!(!slot.batches_too_large_to_zero(), "an idle log zero-fills");
        for _ in 0..32 {
            slot.note_batch(4 << 20);
        }
        assert!(slot.batches_too_large_to_zero(), "full-speed 4 MiB batches");
        for _ in 0..8 {
            slot.note_batch(16 << 10);
        }
        assert!(
            slot.batches_too_large_to_zero(),
            "a few small batches do not flip it at once"
        );
        for _ in 0..64 {
            slot.note_batch(16 << 10);
        }
        assert!(!slot.batches_too_large_to_zero(), "chat-rate batches again");
    }

    #[test]
    fn a_paused_preparer_is_woken_by_a_roll() {
        let slot = Arc::new(SpareSlot::default());
        *slot.lock() = Spare::Zeroing;
        let preparer = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                let started = Instant::now();
                slot.pause(std::time::Duration::from_secs(30));
                started.elapsed()
            })
        };
        // Hand-off as a roll would; the pause ends long before its 30 s.
        while !preparer.is_finished() {
            slot.set(&mut slot.lock(), Spare::Handoff);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let paused = preparer.join().unwrap();
        assert!(paused < std::time::Duration::from_secs(10), "{paused:?}");
    }

    #[test]
    fn a_roll_takes_the_spare_mid_zero_fill_after_the_current_slice() {
        let slot = Arc::new(SpareSlot::default());
        assert!(slot.take().is_none(), "no spare, none asked for");
        slot.request();
        *slot.lock() = Spare::Zeroing; // as the preparer would, between slices
        let roll = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || slot.take())
        };
        // The roll asks for a hand-off and waits for the slice in progress.
        let mut state = slot.lock();
        while *state != Spare::Handoff {
            state = slot.wait(state);
        }
        assert!(!roll.is_finished());
        slot.set(&mut state, Spare::HandedOff); // the preparer, after its slice
        drop(state);
        assert_eq!(roll.join().unwrap(), Some(SpareKind::Prepared));
        assert_eq!(*slot.lock(), Spare::Idle);
        assert!(
            !slot.is_ready(),
            "only a fully zero-filled spare counts as ready"
        );
    }
}
