//! Every limit of the log engine, as a named constant (qualifier last).
//!
//! `Config` may lower a limit, never raise it; `Config::validate` checks that. How the
//! limits relate is checked at compile time below.

use crate::format::{RECORD_HEADER_BYTES, RECORD_KEY_BYTES, SEGMENT_HEADER_BYTES};

/// Largest segment file. Default segment size too. Records never span segments, and a
/// record's position inside its segment is stored as a `u32` distance (`stable_back`),
/// so a segment must stay below 4 GiB.
pub const SEGMENT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Smallest segment a config may ask for (tests use small segments to exercise rolling).
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Largest record payload: a 64 KiB message body plus envelope room, rounded up.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Largest encoded record: header + key + payload, already 8-byte aligned.
pub const RECORD_BYTES_MAX: usize =
    RECORD_HEADER_BYTES + RECORD_KEY_BYTES + RECORD_PAYLOAD_BYTES_MAX;
/// Most records in one group-commit batch (one write + one fdatasync).
pub const GROUP_COMMIT_RECORDS_MAX: usize = 65_536;
/// Most bytes in one group-commit batch: 4 MiB keeps one write well inside one segment
/// and near the disk's sequential sweet spot.
pub const GROUP_COMMIT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Default idempotency window (the delivery contract asks for at least 24 h).
pub const DEDUPE_WINDOW_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;
/// Longest idempotency window a config may ask for.
pub const DEDUPE_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most idempotency keys held in memory. One entry costs about
/// 16 (key) + 40 (ack) + 24 (expiry queue) + ~32 (hash table overhead) ≈ 112 bytes,
/// so the maximum is ≈ 1.8 GiB and the default (1 Mi entries) ≈ 112 MiB per shard.
pub const DEDUPE_ENTRIES_MAX: usize = 16 * 1024 * 1024;
/// Default for `Config::dedupe_entries`.
pub const DEDUPE_ENTRIES_DEFAULT: usize = 1024 * 1024;
/// Default for `Config::retention_check_interval_ms`: how often `PipelinedLog` applies
/// retention when no roll prompts it (for the age limit of a log that stopped growing;
/// a roll prompts it at once), and at most how often retention that waits for a
/// checkpoint asks for one before the checkpoint interval.
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Default retention age: 30 days.
pub const RETENTION_AGE_MS_DEFAULT: u64 = 30 * 24 * 60 * 60 * 1000;
/// Largest in-memory tail cache (recent durable bytes of the active segment).
pub const TAIL_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default tail cache size.
pub const TAIL_CACHE_BYTES_DEFAULT: usize = 8 * 1024 * 1024;
/// The tail cache copies batches that fill less than half their buffer into reused
/// chunks of this size (`reader::TailCache`): at chat rates (tens of KiB per batch)
/// dozens of batches share one chunk, and no batch costs a fresh allocation.
pub const TAIL_COPY_CHUNK_BYTES: usize = 1024 * 1024;
/// Default distance (log bytes) between automatic index checkpoints: bounds restart scans.
pub const CHECKPOINT_INTERVAL_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Largest checkpoint file we agree to load (index + keys + state snapshot).
pub const CHECKPOINT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Chunk used to zero-fill (preallocate) a new segment and to zero a torn tail.
pub const ZERO_CHUNK_BYTES: usize = 1024 * 1024;
/// Most batches handed to the pipelined I/O thread and not yet completed: one being
/// written + synced, one queued behind it, so the disk never waits for the owner thread.
pub const PIPELINE_IN_FLIGHT_MAX: usize = 2;
/// Default `pipeline_in_flight`: 2. The I/O thread runs write + fdatasync of batch N+1
/// only after batch N's fdatasync returned (the `stable_back` rule), so a second batch
/// in flight never overlaps I/O; it only saves the hand-over gap. `Writer::take_batch`
/// hands over the second only when it is closed (full, or ended by a roll): the open
/// batch waits for N's completion and then holds everything that arrived during N.
/// (Handing over open batches early was measured at 500 k/s of 200 B, 6 runs: p50
/// ≈ 0.4 ms in only 2 of 6 runs against 5 of 6 with one in flight; the others fell
/// into a large-batch regime, p50 5–9 ms.) With closed batches only, at full disk speed
/// the I/O thread waited ~44 µs between 4 MiB jobs instead of ~1.2 ms.
pub const PIPELINE_IN_FLIGHT_DEFAULT: usize = 2;
/// Most batches waiting on the owner thread behind those in flight before
/// `PipelinedLog::append_nowait` blocks for a completion (backpressure). With 4 MiB
/// batches: at most (2 + 4) × 4 MiB = 24 MiB of encoded records held in memory.
pub const PIPELINE_QUEUED_BATCHES_MAX: usize = 4;

/// Idempotency keys a checkpoint encodes per step on the owner thread (a step runs after
/// each batch completion while a checkpoint is being drafted): 512 keys are ~28 KiB of
/// checkpoint. A whole 1M-key map took 100–500 ms in one go, 16K keys a few ms.
pub const CHECKPOINT_KEYS_PER_STEP: usize = 512;
/// Conversations a checkpoint encodes per step on the owner thread (as keys above). A
/// step walks conversations by position, a hash lookup and a cache miss each (~0.4 µs).
/// 512 per step took ~200 µs per step once conversations held many anchors (a log in
/// steady state, 245 B per conversation), and every append due meanwhile waited it out:
/// at 500k appends/s a checkpoint's 20 steps made ~12 ms of appends over 600 µs, the
/// largest share of the open-loop p99 (`bench/RESULTS.md`, session 10). A checkpoint
/// has thousands of batch completions to spread over (one every ~64 MiB of log), so
/// steps are kept short instead: at most 64 conversations or `CHECKPOINT_STEP_BYTES`.
pub const CHECKPOINT_CONVS_PER_STEP: usize = 64;
/// Encoded bytes after which a step stops taking more conversations (a conversation
/// with many anchors costs its bytes; see `CHECKPOINT_CONVS_PER_STEP`).
pub const CHECKPOINT_STEP_BYTES: usize = 16 * 1024;
/// A checkpoint draft should be complete once the log has grown this fraction
/// (1 / divisor) of `checkpoint_interval_bytes` past the draft's offset; a step that is
/// behind that pace encodes what it is behind in one go. Short steps suit many small
/// batches (500k appends/s: ~6,000 completions a second); a closed loop of 4 MiB
/// batches has a few completions per checkpoint interval, and with short steps only, a
/// draft trailed the log by over 2 GiB and a log with a 2 GiB size limit could never
/// retire a segment (retention waits for a checkpoint past the cut).
pub const CHECKPOINT_DRAFT_SPAN_DIVISOR: u64 = 4;
/// Between two checkpoints the log grows at least this many times the last checkpoint's
/// size (or `checkpoint_interval_bytes`, whichever is more), so writing checkpoints
/// costs the disk at most a quarter of what the appends do. A shard holding the default
/// 1M idempotency keys has a ~56 MB checkpoint: every 64 MiB of log, that doubled the
/// bytes written, and the owner encoded 1M keys per 64 MiB.
pub const CHECKPOINT_INTERVAL_SIZE_FACTOR: u64 = 4;
/// The interval the size factor may scale to: the log after a checkpoint is what a
/// restart scans, and restart is bounded (≤ 2 s for 10 GB: scanning runs at ~1 GB/s).
pub const CHECKPOINT_INTERVAL_SCALED_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// A checkpoint encoding step that holds the owner thread longer than this is logged (the
/// owner is a shard's executor in the gateway: this time is a stall of every session).
pub const CHECKPOINT_ENCODE_WARN: std::time::Duration = std::time::Duration::from_millis(10);
/// Batch buffers a writer keeps for reuse, touched at open by `PipelinedLog` so that no
/// batch pays page faults on the owner thread. Each holds `GROUP_COMMIT_BYTES_MAX` plus
/// three blocks; in block-aligned mode it is advised transparent huge pages and spans
/// whole 2 MiB pages after a 2 MiB boundary (see `huge_pages`): ~6–8 MiB touched each,
/// ~24–32 MiB per log.
pub const BUFFER_POOL_MAX: usize = 4;
/// A checkpoint file is written in `O_DIRECT` writes of this size (a multiple of
/// `storage::DIRECT_ALIGN`), fdatasync'ed once at the end. Written in one buffered
/// write + fdatasync, a 2.4 MB checkpoint (10,000 conversations in steady state) took
/// ~3.3 ms and the appends' batches during it 1–2 ms instead of ~0.15 ms: ~1,600
/// appends over 600 µs per checkpoint at 500k appends/s (session 10).
pub const CHECKPOINT_WRITE_BYTES: usize = 128 * 1024;
/// A checkpoint slot file's size is a multiple of this (see `checkpoint_file.rs`).
pub const CHECKPOINT_SLOT_ALIGN: usize = 1024 * 1024;
/// A slot too small for a checkpoint grows to hold it plus `1 / this` of it more, so
/// a checkpoint that grows a little each time does not grow the file each time (a
/// growth costs an allocation and extent conversions, which need a journal commit).
pub const CHECKPOINT_SLOT_GROWTH_DIVISOR: usize = 4;
/// The spare preparer zero-fills this much between two looks at its state (a roll's
/// hand-off, a stop) and at its pace.
pub const ZERO_FILL_SLICE_BYTES: u64 = 512 * 1024;
/// One `O_DIRECT` write of the spare's zero fill. The fill is written with `O_DIRECT` in
/// writes this small and fdatasync'ed once, when the whole spare is zeroed (or by the
/// roll's install, when a roll takes it part-zeroed). Until session 10 it was written
/// through the page cache and fdatasync'ed per 512 KiB: every fdatasync pushed a 512 KiB
/// writeback into the device queue, and the appends' small write + fdatasync queued
/// behind it. Measured with `bench/scripts/group_commit_floor.py` (28 KiB write +
/// fdatasync back to back, the log's batch at 500k appends/s) beside a paced zero fill
/// of another file: the floor's write + fdatasync p99 was 175–236 µs alone, 750–1,000
/// µs beside a 100–300 MB/s buffered fill synced per 512 KiB (the same with `O_DIRECT`
/// 512 KiB or 1 MiB writes), 1.6 ms beside 4 MiB `O_DIRECT` writes, and 287–314 µs
/// beside 64–128 KiB `O_DIRECT` writes without syncs at 450 MB/s. In `log_bench`'s open
/// loop the fill was behind 82% of the appends over 600 µs before this change.
pub const ZERO_FILL_WRITE_BYTES: usize = 128 * 1024;
/// The spare is zero-filled only while the recent batches average less than this.
/// Zeroing costs the disk a write of every byte (~0.42 ms per MiB at 2.4 GB/s); it saves
/// each later batch written into zeroed space its unwritten-extent conversion. Measured
/// with fio (O_DIRECT write + fdatasync, 5 alternating pairs of 2 s runs, fallocated
/// against zeroed files): 256 KiB 750 against 1,256 MB/s (+0.14 ms per batch), 4 MiB
/// 1,547 against 2,228 MB/s (+0.8 ms). Zeroing a batch's worth of space pays below
/// ~0.5 MiB: at chat rates (tens of KiB per batch) the spare is zeroed in the disk's
/// idle time; at full disk speed (MiB batches) it would halve the bandwidth.
pub const ZERO_FILL_BATCH_BYTES_MAX: u64 = 512 * 1024;
/// The spare's zero fill runs at this many times the log's own write rate (measured
/// since the fill began) ...
pub const ZERO_FILL_PACE_FACTOR: f64 = 3.0;
/// ... and at least this fast (bytes/s), so an idle log's spare is still ready within
/// seconds (256 MiB in ~2 s).
pub const ZERO_FILL_PACE_MIN_BYTES_PER_SEC: f64 = 128.0 * 1024.0 * 1024.0;
/// How long the spare preparer waits before looking again when batches are too large
/// for zero filling to pay (a roll's hand-off wakes it earlier).
pub const ZERO_FILL_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);
/// Sparse index stride: the index keeps the offset of every this-many-th record of a
/// conversation; reads walk `prev_offset` links from there (at most this many − 1 extra
/// record reads per page).
pub const INDEX_STRIDE_RECORDS: u64 = 32;
/// Most records returned by one read call.
pub const READ_RECORDS_MAX: usize = 10_000;

const _: () = assert!(SEGMENT_BYTES_MAX < u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN as usize >= SEGMENT_HEADER_BYTES * 2);
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX >= 64 * 1024 + 4096);
const _: () = assert!(RECORD_BYTES_MAX.is_multiple_of(8));
// A maximal record and a maximal batch both fit in one default segment.
const _: () = assert!((SEGMENT_HEADER_BYTES + RECORD_BYTES_MAX) as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!((SEGMENT_HEADER_BYTES + GROUP_COMMIT_BYTES_MAX) as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(GROUP_COMMIT_BYTES_MAX >= RECORD_BYTES_MAX);
const _: () = assert!(DEDUPE_WINDOW_MS_DEFAULT >= 24 * 60 * 60 * 1000);
const _: () = assert!(DEDUPE_WINDOW_MS_DEFAULT <= DEDUPE_WINDOW_MS_MAX);
const _: () = assert!(DEDUPE_ENTRIES_DEFAULT <= DEDUPE_ENTRIES_MAX);
const _: () = assert!(TAIL_CACHE_BYTES_DEFAULT <= TAIL_CACHE_BYTES_MAX);
const _: () = assert!(ZERO_CHUNK_BYTES.is_multiple_of(8));
const _: () = assert!(PIPELINE_IN_FLIGHT_MAX >= 1 && PIPELINE_QUEUED_BATCHES_MAX >= 1);
const _: () = assert!(PIPELINE_IN_FLIGHT_DEFAULT >= 1);
const _: () = assert!(PIPELINE_IN_FLIGHT_DEFAULT <= PIPELINE_IN_FLIGHT_MAX);
// A torn write lies inside the window recovery scans in a recycled segment: one batch,
// written from the block before it to the block after it.
const _: () = assert!(
    GROUP_COMMIT_BYTES_MAX + 2 * crate::storage::DIRECT_ALIGN
        <= crate::format::UNSYNCED_WINDOW_BYTES
);
