//! Append-only segmented log keyed by conversation: group commit, per-conversation
//! index, idempotency, recovery, checkpoints, metadata state, retention.
//!
//! # Layout
//!
//! - `FORMAT.md` (beside `Cargo.toml`): the on-disk format, crash cases, version log.
//! - [`format`]: pure encode/decode of segment headers and records.
//! - [`limits`], [`error`], [`config`]: named limits, the error type, options.
//! - [`storage`]: the `Storage` trait and `FsStorage`; [`sim`]: `SimStorage`, which
//!   simulates crashes that lose or tear unsynced writes.
//! - [`segment`]: segment creation (preallocated, zero-filled) and the segment table.
//! - [`writer`]: sans-IO group commit (tickets, batches, watermarks).
//! - [`huge_pages`]: transparent huge pages for the batch buffers only.
//! - [`index`]: conversation → sequence → offset; [`dedupe`]: idempotency keys.
//! - [`reader`]: reads by offset (tail cache, active file, mmap of sealed segments).
//! - [`recovery`]: the decision table run on open; [`checkpoint`]: checkpoint file.
//! - [`meta`]: the `StateMachine` hook for metadata records; [`retention`].
//! - [`log`]: `Log`, the synchronous driver tying them together.
//! - [`pipeline`]: `PipelinedLog`, the driver whose batch I/O runs on its own thread
//!   (encode batch N+1 while batch N is written and synced), plus the spare preparer.
//!
//! # Drivers
//!
//! - [`Log`] (synchronous): `append_nowait` encodes, `commit` writes and syncs every
//!   pending batch on the calling thread. Call [`Log::prepare_spare`] between batches so
//!   a segment roll renames a preallocated spare instead of zero-filling in `commit`.
//! - [`PipelinedLog`] (`Durable` only): the owner thread encodes, sequences, indexes and
//!   dedupes; a dedicated I/O thread does one `pwrite` + one `fdatasync` per batch, in
//!   order, while the owner encodes the next batch; a third thread keeps the spare ready.
//!
//!   ```text
//!   PipelinedLog::open(storage: S, config: Config, state: M)
//!       -> Result<(PipelinedLog<S, M>, RecoveryReport)>      // S: Storage + Send + 'static
//!   fn append_nowait(&mut self, req: &AppendRequest<'_>) -> Result<Ticket>
//!   fn append_meta_nowait(&mut self, kind: RecordKind, payload: &[u8], now_ms: u64)
//!       -> Result<Ticket>
//!   fn flush(&mut self) -> Result<()>            // hand batches over, ≤ pipeline_in_flight
//!   fn poll_acks(&mut self) -> Result<Vec<(Ticket, Ack)>>  // non-blocking, batch order
//!   fn wait_acks(&mut self) -> Result<Vec<(Ticket, Ack)>>  // blocks for one completion
//!   fn drain(&mut self) -> Result<Vec<(Ticket, Ack)>>      // until nothing is pending
//!   fn close(self) -> Result<S>
//!   ```
//!
//!   Batch writes are block-aligned `O_DIRECT` by default (`Config::direct_io`): each
//!   batch's one write starts at the 4 KiB block its first record is in, rewriting that
//!   block's durable bytes unchanged, and ends at a 4 KiB boundary (zeros); the on-disk
//!   format is the same as with buffered writes. This relies on the media assumption in
//!   FORMAT.md (a torn write leaves old or new bytes, never garbage). Up to two batches in
//!   flight, the second only once it is closed (`pipeline_in_flight`, see
//!   `limits::PIPELINE_IN_FLIGHT_DEFAULT` and `writer::Writer::take_batch`).
//!
//!   Readers (`read_after`, `read_before`, `read_at`, `last_seq`) see a record only after
//!   its batch's fdatasync returned and its completion was processed on the owner
//!   thread. A failed write or sync poisons the log as in `Log::commit`; the I/O thread
//!   writes nothing after a failure. The seam for a glommio DMA driver is
//!   [`writer::Writer::take_batch`] (an owned [`writer::BatchJob`]) and
//!   [`writer::Writer::complete_batch`].
//!
//! ```
//! use log_engine::{AppendRequest, Config, Log, RecordKind, sim::SimStorage};
//! let config = Config { segment_bytes: 64 * 1024, ..Config::default() };
//! let (mut log, _report) = Log::open(SimStorage::new(), config, ()).unwrap();
//! let ack = log.append(&AppendRequest {
//!     conversation_id: 7, message_id: 1, timestamp_ms: 0, key: None,
//!     kind: RecordKind::Message, payload: b"hello",
//! }).unwrap();
//! assert_eq!(ack.seq, 1);
//! let page = log.read_after(7, 0, 10).unwrap();
//! assert_eq!(page.records[0].payload, b"hello");
//! ```

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod async_log;
pub mod checkpoint;
pub mod checkpoint_file;
pub mod config;
pub mod dedupe;
pub mod error;
pub mod format;
pub mod huge_pages;
pub mod index;
pub mod limits;
pub mod log;
pub mod meta;
pub mod pipeline;
pub mod reader;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod sim;
pub mod stats;
pub mod storage;
pub mod writer;

pub use async_log::{AsyncLog, Durable};
pub use config::{Config, Durability, RecoveryMode};
pub use error::{CapacityError, Error, Result};
pub use format::{IdempotencyKey, RecordKind};
pub use log::Log;
pub use meta::{MetaRecord, StateMachine};
pub use pipeline::PipelinedLog;
pub use reader::{Page, Record};
pub use recovery::{CheckpointUse, RecoveryReport, Truncation};
pub use stats::{BatchIoSnapshot, BatchIoStats};
pub use storage::{FsStorage, Storage};
pub use writer::{Ack, AppendRequest, Ticket, Watermarks};
