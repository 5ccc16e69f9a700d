//! Retention: whole sealed segments are deleted, oldest first, while all their records
//! are older than the age limit, or while the log is larger than the size limit. The
//! active segment is never deleted. In `Durable` mode (`Config::recycle_segments`) the
//! newest segment a pass retires is renamed to `recycled.tmp` instead, to become the
//! next spare (see `segment.rs`, "Recycling").
//!
//! A segment's records are all older than its successor's `created_at_ms` (the
//! successor was created when this one filled), so no record needs to be read to age a
//! segment. Before deleting, a checkpoint covering the deleted range is made durable:
//! it keeps every conversation's last sequence, so numbering continues, and recovery
//! never needs the deleted records. Readers asking for deleted sequences get a `Page`
//! whose `first_seq` says where history now starts.

use crate::error::{io_err, Result};
use crate::log::Log;
use crate::meta::StateMachine;
use crate::segment::{retire_for_recycling, SegmentMeta};
use crate::storage::Storage;

/// A sealed segment as retention sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedSegment {
    /// Base offset.
    pub base: u64,
    /// Bytes it occupies on disk.
    pub bytes: u64,
    /// When it stopped receiving records (its successor's creation time).
    pub sealed_at_ms: u64,
}

/// How many of the oldest `sealed` segments to delete. `total_bytes` counts every
/// segment, the active one included.
pub fn plan(
    sealed: &[SealedSegment],
    total_bytes: u64,
    now_ms: u64,
    age_ms: u64,
    max_bytes: u64,
) -> usize {
    let mut total = total_bytes;
    let mut count = 0;
    for segment in sealed {
        let too_old = segment.sealed_at_ms.saturating_add(age_ms) < now_ms;
        let too_big = total > max_bytes;
        if !(too_old || too_big) {
            break;
        }
        total = total.saturating_sub(segment.bytes);
        count += 1;
    }
    count
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted.
    pub deleted: Vec<String>,
    /// Bytes they occupied.
    pub bytes_freed: u64,
    /// Lowest log offset still held.
    pub first_offset: u64,
}

impl<S: Storage, M: StateMachine> Log<S, M> {
    /// Deletes sealed segments past the configured age or size, as of `now_ms`.
    pub fn apply_retention(&mut self, now_ms: u64) -> Result<RetentionReport> {
        self.retention(now_ms, true)
            .map(|report| report.unwrap_or_default())
    }

    /// [`Log::apply_retention`] only if the durable checkpoint already covers what it
    /// would delete (`None` otherwise: nothing is written on the caller's thread; a
    /// background checkpoint will catch up). `PipelinedLog` runs it after rolls.
    pub(crate) fn apply_retention_if_checkpointed(
        &mut self,
        now_ms: u64,
    ) -> Result<Option<RetentionReport>> {
        self.retention(now_ms, false)
    }

    fn retention(&mut self, now_ms: u64, may_checkpoint: bool) -> Result<Option<RetentionReport>> {
        // By reference: `PipelinedLog` may ask after every completion while a checkpoint
        // catches up, so nothing is cloned until there is something to delete.
        let metas: Vec<&SegmentMeta> = self.segments.values().collect();
        let sealed: Vec<SealedSegment> = metas
            .windows(2)
            .filter_map(|pair| match pair {
                [this, next] => Some(SealedSegment {
                    base: this.header.base_offset,
                    bytes: this.header.capacity,
                    sealed_at_ms: next.header.created_at_ms,
                }),
                _ => None,
            })
            .collect();
        let total = metas.iter().map(|m| m.header.capacity).sum();
        let (age, max) = (self.config.retention_age_ms, self.config.retention_bytes);
        let count = plan(&sealed, total, now_ms, age, max);
        let mut report = RetentionReport {
            first_offset: self.segments.keys().next().copied().unwrap_or(0),
            ..RetentionReport::default()
        };
        let Some(cut) = metas.get(count).map(|m| m.header.base_offset) else {
            return Ok(Some(report));
        };
        if count == 0 {
            return Ok(Some(report));
        }
        // The checkpoint must end *past* the cut, not at it: a checkpoint taken between a
        // segment's last batch and the next segment's first ends exactly at the next
        // segment's base, and its last record (which recovery verifies) is in the
        // segment before, the one this would delete.
        let covered = |checkpoint_offset: u64| checkpoint_offset > cut;
        if !covered(self.checkpoint_offset) && !may_checkpoint {
            return Ok(None);
        }
        let doomed: Vec<SegmentMeta> = metas.iter().take(count).map(|m| (*m).clone()).collect();
        if !covered(self.checkpoint_offset) {
            self.checkpoint()?;
        }
        if !covered(self.checkpoint_offset) {
            // Nothing written after the cut yet: the next call deletes.
            return Ok(Some(report));
        }
        let recycles = self.config.recycles();
        for (i, meta) in doomed.iter().enumerate() {
            self.storage.close(&meta.name);
            if recycles && i + 1 == count {
                // The newest one retired: the next spare (an older kept one is freed).
                retire_for_recycling(&mut self.storage, &meta.name)?;
            } else {
                self.storage
                    .remove(&meta.name)
                    .map_err(io_err("remove", &meta.name))?;
            }
            self.maps.remove(&meta.header.base_offset);
            self.segments.remove(&meta.header.base_offset);
            report.deleted.push(meta.name.clone());
            report.bytes_freed += meta.header.capacity;
        }
        self.storage.sync_dir().map_err(io_err("sync_dir", "."))?;
        self.index.trim_below(cut);
        report.first_offset = cut;
        tracing::info!(
            deleted = count,
            first_offset = cut,
            "retention deleted segments"
        );
        Ok(Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::format::RecordKind;
    use crate::sim::SimStorage;
    use crate::writer::AppendRequest;

    /// A checkpoint taken after a segment's last batch and before the next segment's
    /// first ends exactly at the next segment's base; its last record is in the segment
    /// before. Retention must not delete that segment on its strength: recovery would
    /// find the checkpoint's last record in no segment (seen once as a corruption error
    /// in the SIGKILL crash test).
    #[test]
    fn a_checkpoint_ending_at_a_segment_base_does_not_let_retention_delete_below_it() {
        let config = Config {
            segment_bytes: 4096,
            retention_bytes: 4096,
            ..Config::default()
        };
        let (mut log, _) = Log::open(SimStorage::new(), config.clone(), ()).unwrap();
        let now_ms = 1_000;
        let mut boundary_checkpoint = None;
        let mut appended = 0;
        for id in 1..=100u64 {
            let segments = log.segments.len();
            let req = AppendRequest {
                conversation_id: 1,
                message_id: id,
                timestamp_ms: now_ms,
                key: None,
                kind: RecordKind::Message,
                payload: &[7; 300],
            };
            log.append(&req).unwrap();
            log.commit().unwrap();
            appended = id;
            if log.segments.len() > segments {
                let base = log.segments.keys().next_back().copied().unwrap();
                if log.checkpoint_offset == base {
                    boundary_checkpoint = Some(base);
                    break;
                }
            }
            log.checkpoint().unwrap();
        }
        let base = boundary_checkpoint.expect("a checkpoint ended at a segment base");
        // Two segments, the limit is one: the older one is due, the cut is `base`.
        assert_eq!(log.apply_retention_if_checkpointed(now_ms).unwrap(), None);
        assert_eq!(log.segments.len(), 2, "nothing deleted");
        let storage = log.storage.clone();
        let (mut reopened, _) = Log::open(storage, config.clone(), ()).unwrap();
        // With a write-back checkpoint (the caller's thread may write): one past the cut.
        let report = reopened.apply_retention(now_ms).unwrap();
        assert_eq!(report.first_offset, base);
        assert!(reopened.checkpoint_offset > base);
        let storage = reopened.storage.clone();
        let (reopened, _) = Log::open(storage, config, ()).unwrap();
        assert_eq!(reopened.last_seq(1), appended);
    }

    fn seg(base: u64, sealed_at_ms: u64) -> SealedSegment {
        SealedSegment {
            base,
            bytes: 100,
            sealed_at_ms,
        }
    }

    #[test]
    fn plan_by_age_stops_at_the_first_young_segment() {
        let sealed = [seg(0, 10), seg(100, 20), seg(200, 90), seg(300, 15)];
        assert_eq!(plan(&sealed, 500, 100, 50, u64::MAX), 2);
        assert_eq!(plan(&sealed, 500, 100, 5, u64::MAX), 4);
        assert_eq!(plan(&sealed, 500, 100, 1000, u64::MAX), 0);
    }

    #[test]
    fn plan_by_size_deletes_oldest_until_under() {
        let sealed = [seg(0, 10), seg(100, 20), seg(200, 30)];
        assert_eq!(plan(&sealed, 400, 0, u64::MAX, 250), 2);
        assert_eq!(plan(&sealed, 400, 0, u64::MAX, 400), 0);
        assert_eq!(plan(&sealed, 400, 0, u64::MAX, 0), 3);
    }
}
