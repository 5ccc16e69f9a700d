//! Options of one log, passed explicitly to `Log::open`. A config may lower a limit
//! from `limits.rs`, never raise it.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::limits::*;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Default: acknowledge after the batch's `fdatasync` returned (persist before ack).
    Durable,
    /// Weaker, named as such: acknowledge after the batch was written to the OS page
    /// cache; `fdatasync` runs when `sync_interval` has passed since the last one (checked
    /// on each commit) and on `Log::sync`. Acknowledged records may be lost by a power
    /// failure (not by a process crash). Readers see records once acknowledged.
    OsBuffered {
        /// Longest time between syncs while appends keep coming.
        sync_interval: Duration,
    },
}

/// What recovery does with a torn tail. See `recovery.rs` for the full table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Default: truncate a torn tail at the last valid record (reported), fail on
    /// corruption before the tail.
    TolerateTornTail,
    /// Fail on any torn tail too, changing nothing on disk.
    Strict,
}

/// Options of one log.
#[derive(Clone, Debug)]
pub struct Config {
    /// Preallocated size of each segment file.
    pub segment_bytes: u64,
    /// When appends are acknowledged.
    pub durability: Durability,
    /// What recovery does with a torn tail.
    pub recovery_mode: RecoveryMode,
    /// Most records per group-commit batch.
    pub group_commit_records: usize,
    /// Most bytes per group-commit batch.
    pub group_commit_bytes: usize,
    /// How long an idempotency key dedupes (by record timestamps).
    pub dedupe_window_ms: u64,
    /// Most idempotency keys kept; past it the oldest are forgotten early (warned).
    pub dedupe_entries: usize,
    /// Sealed segments whose records are all older than this are deleted.
    pub retention_age_ms: u64,
    /// `PipelinedLog`: how often retention looks when no roll prompts it, and at most
    /// how often retention that is held back by the checkpoint (it deletes only below a
    /// durable one) asks for a checkpoint early. Without the early checkpoint, a quiet
    /// log kept segments past their age until `checkpoint_interval_bytes` more were
    /// written. 0: at every batch completion (tests).
    pub retention_check_interval_ms: u64,
    /// Oldest sealed segments are deleted while the log is larger than this.
    pub retention_bytes: u64,
    /// Recent durable bytes of the active segment kept in memory for reads.
    pub tail_cache_bytes: usize,
    /// Log bytes between automatic checkpoints (index + keys + state snapshot); at
    /// least `CHECKPOINT_INTERVAL_SIZE_FACTOR` times the last checkpoint's size (up to
    /// `CHECKPOINT_INTERVAL_SCALED_MAX_BYTES`), so large checkpoints come less often.
    pub checkpoint_interval_bytes: u64,
    /// `PipelinedLog`: most batches handed to the I/O thread at once (1, the default =
    /// the owner hands over the next batch only when the previous one completed, so it
    /// holds everything that arrived meanwhile; see `PIPELINE_IN_FLIGHT_DEFAULT`).
    pub pipeline_in_flight: usize,
    /// `Durable` mode: write batches block-aligned with `O_DIRECT`
    /// (`Storage::write_direct`): each batch is written from the start of the 4 KiB
    /// block it begins in (rewriting that block's durable bytes unchanged) to the next
    /// 4 KiB boundary (zeros after its last record). Off: buffered `pwrite` of exactly
    /// the batch. Either way one write + one fdatasync per batch, and the same format.
    /// See FORMAT.md "Write protocol" and "Media assumptions".
    pub direct_io: bool,
    /// `Durable` mode: retention keeps the newest segment it retires as the next spare
    /// (`recycled.tmp`) instead of deleting it, so appends overwrite written blocks
    /// (~1.8× the disk bandwidth of writing fresh space here; see `segment.rs`,
    /// "Recycling"). Costs one segment of disk beyond `retention_bytes` while it waits.
    /// Ignored in `OsBuffered` mode, whose unsynced writes are not bounded by the window
    /// recovery checks in a recycled segment (FORMAT.md "Recycled segments").
    pub recycle_segments: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            segment_bytes: SEGMENT_BYTES_MAX,
            durability: Durability::Durable,
            recovery_mode: RecoveryMode::TolerateTornTail,
            group_commit_records: GROUP_COMMIT_RECORDS_MAX,
            group_commit_bytes: GROUP_COMMIT_BYTES_MAX,
            dedupe_window_ms: DEDUPE_WINDOW_MS_DEFAULT,
            dedupe_entries: DEDUPE_ENTRIES_DEFAULT,
            retention_age_ms: RETENTION_AGE_MS_DEFAULT,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            retention_bytes: u64::MAX,
            tail_cache_bytes: TAIL_CACHE_BYTES_DEFAULT,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES_DEFAULT,
            pipeline_in_flight: PIPELINE_IN_FLIGHT_DEFAULT,
            direct_io: true,
            recycle_segments: true,
        }
    }
}

impl Config {
    /// True when retention recycles segments (see `recycle_segments`).
    pub fn recycles(&self) -> bool {
        self.recycle_segments && self.durability == Durability::Durable
    }

    /// Checks that no limit is raised and the values agree.
    pub fn validate(&self) -> Result<()> {
        let checks: [(bool, &'static str); 9] = [
            (
                self.segment_bytes <= SEGMENT_BYTES_MAX,
                "segment_bytes above SEGMENT_BYTES_MAX",
            ),
            (
                self.segment_bytes >= SEGMENT_BYTES_MIN,
                "segment_bytes below SEGMENT_BYTES_MIN",
            ),
            (
                self.segment_bytes.is_multiple_of(8),
                "segment_bytes not a multiple of 8",
            ),
            (
                (1..=GROUP_COMMIT_RECORDS_MAX).contains(&self.group_commit_records),
                "group_commit_records outside 1..=GROUP_COMMIT_RECORDS_MAX",
            ),
            (
                (1..=GROUP_COMMIT_BYTES_MAX).contains(&self.group_commit_bytes),
                "group_commit_bytes outside 1..=GROUP_COMMIT_BYTES_MAX",
            ),
            (
                self.dedupe_window_ms <= DEDUPE_WINDOW_MS_MAX,
                "dedupe_window_ms above max",
            ),
            (
                self.dedupe_entries <= DEDUPE_ENTRIES_MAX,
                "dedupe_entries above max",
            ),
            (
                self.tail_cache_bytes <= TAIL_CACHE_BYTES_MAX,
                "tail_cache_bytes above max",
            ),
            (
                (1..=PIPELINE_IN_FLIGHT_MAX).contains(&self.pipeline_in_flight),
                "pipeline_in_flight outside 1..=PIPELINE_IN_FLIGHT_MAX",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, reason)) => Err(Error::Config(reason)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_durable() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.durability, Durability::Durable);
        assert_eq!(config.recovery_mode, RecoveryMode::TolerateTornTail);
    }

    #[test]
    fn raising_a_limit_is_refused() {
        let config = Config {
            segment_bytes: SEGMENT_BYTES_MAX * 2,
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
        let config = Config {
            dedupe_entries: DEDUPE_ENTRIES_MAX + 1,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
