//! Recovery on open: survey segment headers, load the checkpoint, scan the log after it
//! record by record, and decide what to do where the written data stops.
//!
//! # The decision table (`decide`)
//!
//! Scanning a segment stops at the first position that is not a valid record. What
//! follows that position is classified ([`classify_stop`]):
//!
//! | case                | at the stop          | after it                                   |
//! |---------------------|----------------------|--------------------------------------------|
//! | `CleanEnd`          | zero length word     | only zeros                                 |
//! | `TornTail`          | zeros or bad record  | non-zero bytes, but no valid record that   |
//! |                     |                      | was written after the stop was synced      |
//! | `CorruptBeforeTail` | zeros or bad record  | a valid record whose `stable_back` says the|
//! |                     |                      | stop position was fdatasync'ed before it   |
//!
//! | case                | tail segment, `TolerateTornTail` | tail, `Strict` | sealed segment |
//! |---------------------|----------------------------------|----------------|----------------|
//! | `CleanEnd`          | accept                           | accept         | accept         |
//! | `TornTail`          | truncate, zero, sync, report     | fail           | fail           |
//! | `CorruptBeforeTail` | fail                             | fail           | fail           |
//!
//! A sealed segment can never hold a torn tail: the writer syncs a segment before it
//! creates the next one. Other cases, all failing with `Error::Corruption` naming the
//! file and offset unless stated: a valid record whose sequence or `prev_offset` does
//! not continue its stream; a sealed segment whose end does not meet the next segment's
//! base (a missing segment); a segment named in the checkpoint but missing; a segment
//! header that is invalid — except on the tail segment when nothing but zeros follows
//! the header (an interrupted segment creation: removed under `TolerateTornTail`); a
//! checkpoint that is unreadable or disagrees with the log (warned, ignored: the log is
//! scanned from its start — if retention already deleted that start, fail).

use crate::checkpoint::{Checkpoint, CHECKPOINT_NAME};
use crate::checkpoint_file::{is_checkpoint_file, load_newest, remove_all, CheckpointSource};
use crate::config::{Config, RecoveryMode};
use crate::dedupe::{Dedupe, DedupeEntry};
use crate::error::{corruption, io_err, Error, Result};
use crate::format::{
    decode_record, decode_segment_header, parse_segment_name, RecordSeed, RecordView, OFFSET_NONE,
    SEGMENT_HEADER_BYTES, UNSYNCED_WINDOW_BYTES,
};
use crate::index::Index;
use crate::limits::SEGMENT_BYTES_MAX;
use crate::meta::{MetaRecord, StateMachine};
use crate::segment::{zero_range, SegmentMeta, SegmentTable, RECYCLED_NAME, SPARE_NAME};
use crate::storage::Storage;
use crate::writer::WriterStart;

/// What the written data ends with (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCase {
    /// Zeros to the end.
    CleanEnd,
    /// A partial or bad last write.
    TornTail,
    /// Bad bytes the log had already made durable.
    CorruptBeforeTail,
}

/// What recovery does about a [`StopCase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume appending at the stop.
    Accept,
    /// Cut the log at the stop.
    Truncate,
    /// Refuse to open: `Error::Corruption`.
    Fail,
}

/// The decision table.
pub fn decide(case: StopCase, tail_segment: bool, mode: RecoveryMode) -> Action {
    match (case, tail_segment, mode) {
        (StopCase::CleanEnd, _, _) => Action::Accept,
        (StopCase::TornTail, true, RecoveryMode::TolerateTornTail) => Action::Truncate,
        (StopCase::TornTail, true, RecoveryMode::Strict) => Action::Fail,
        (StopCase::TornTail, false, _) => Action::Fail,
        (StopCase::CorruptBeforeTail, _, _) => Action::Fail,
    }
}

/// Classifies the bytes of a segment from `stop` (a record position where scanning
/// stopped) to its end. `base` is the segment's base offset, `seed` its record seed.
pub fn classify_stop(bytes: &[u8], stop: usize, base: u64, seed: RecordSeed) -> StopCase {
    let Some(last_nonzero) = bytes.iter().rposition(|b| *b != 0) else {
        return StopCase::CleanEnd;
    };
    if last_nonzero < stop {
        return StopCase::CleanEnd;
    }
    match later_valid_record(bytes, stop, last_nonzero + 1, base, seed) {
        Some(case) => case,
        None => StopCase::TornTail,
    }
}

/// [`classify_stop`] for a recycled segment, whose bytes after the written records are
/// stale records of the file's earlier segment: they fail this segment's seeded CRC, so
/// non-zero bytes say nothing. What matters is a record valid under this segment's seed
/// after the stop; a torn write can only have put one inside the
/// [`UNSYNCED_WINDOW_BYTES`] after it (`Durable` mode writes one batch past the durable
/// end at most). Such a record is a torn tail (the batch was never acknowledged) or, if
/// it says the stop had been synced before it was written, corruption; none means the
/// written data ends at the stop, whatever stale bytes follow.
pub fn classify_recycled_stop(bytes: &[u8], stop: usize, base: u64, seed: RecordSeed) -> StopCase {
    let window_end = stop.saturating_add(UNSYNCED_WINDOW_BYTES).min(bytes.len());
    match later_valid_record(bytes, stop, window_end, base, seed) {
        Some(case) => case,
        None => StopCase::CleanEnd,
    }
}

/// Looks at every record position in `(stop, end)` for a record valid under `seed`:
/// `CorruptBeforeTail` at the first whose `stable_back` shows the stop was synced before
/// it was written, else `TornTail` if any is valid, else `None`.
fn later_valid_record(
    bytes: &[u8],
    stop: usize,
    end: usize,
    base: u64,
    seed: RecordSeed,
) -> Option<StopCase> {
    let stop_offset = base + stop as u64;
    let mut found = None;
    let mut pos = stop + crate::format::RECORD_ALIGN;
    while pos < end {
        if let Some(Ok(Some(view))) = bytes.get(pos..).map(|b| decode_record(seed, b)) {
            let offset = base + pos as u64;
            let stable = offset.saturating_sub(u64::from(view.header.stable_back));
            if stable > stop_offset {
                return Some(StopCase::CorruptBeforeTail);
            }
            found = Some(StopCase::TornTail);
        }
        pos += crate::format::RECORD_ALIGN;
    }
    found
}

/// Where a checkpoint came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointUse {
    /// No checkpoint file.
    None,
    /// Loaded; the scan started at this offset.
    Used(u64),
    /// Present but unusable (reason); the log was scanned from its start.
    Unusable(String),
}

/// A torn tail that recovery cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub segment: String,
    /// Log offset of the cut (the end of the last valid record).
    pub offset: u64,
    /// Bytes zeroed after the cut.
    pub bytes_cut: u64,
    /// Why the first bad position was bad.
    pub reason: String,
}

/// What recovery found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Records scanned (after the checkpoint).
    pub records_scanned: u64,
    /// How the checkpoint was used.
    pub checkpoint: CheckpointUse,
    /// A torn tail that was cut.
    pub truncated: Option<Truncation>,
    /// Files removed: interrupted segment creations and stale temporary files.
    pub removed: Vec<String>,
    /// Log offset where appends resume.
    pub end_offset: u64,
}

/// The state rebuilt by recovery.
pub(crate) struct Recovered {
    pub index: Index,
    pub dedupe: Dedupe,
    pub segments: SegmentTable,
    /// `None`: no segment exists; create one at `fresh_base`.
    pub start: Option<WriterStart>,
    pub fresh_base: u64,
    pub checkpoint_offset: u64,
    /// Where the checkpoint recovery used came from (the next one goes to the other
    /// slot), and whether a format v2 `checkpoint` file is still there.
    pub checkpoint_source: Option<CheckpointSource>,
    pub legacy_checkpoint: bool,
    /// Offset of the last record in the log (`OFFSET_NONE` if none).
    pub last_record: u64,
    /// Log offset just past that record.
    pub last_record_end: u64,
    pub report: RecoveryReport,
}

/// Folds scanned records into the rebuilt state, checking every stream's chain.
struct Fold<'a, M: StateMachine> {
    index: Index,
    dedupe: Dedupe,
    meta_tip: (u64, u64),
    state: &'a mut M,
    records: u64,
    last_record: u64,
    last_record_end: u64,
}

impl<M: StateMachine> Fold<'_, M> {
    fn apply(&mut self, offset: u64, view: &RecordView<'_>) -> Result<(), String> {
        let h = &view.header;
        let (last_seq, last_offset) = if h.kind.is_conversation() {
            self.index.tip(h.conversation_id)
        } else {
            self.meta_tip
        };
        if h.seq != last_seq + 1 {
            return Err(format!(
                "sequence gap in stream {}: expected {}, found {}",
                h.conversation_id,
                last_seq + 1,
                h.seq
            ));
        }
        if h.prev_offset != last_offset {
            return Err(format!(
                "prev_offset {} does not link to {last_offset}",
                h.prev_offset
            ));
        }
        if h.kind.is_conversation() {
            self.index.push(h.conversation_id, h.seq, offset);
            if let Some(key) = h.key {
                let entry = DedupeEntry {
                    conversation_id: h.conversation_id,
                    seq: h.seq,
                    message_id: h.message_id,
                    offset,
                    timestamp_ms: h.timestamp_ms,
                };
                self.dedupe.insert(key, entry);
            }
        } else {
            self.meta_tip = (h.seq, offset);
            self.state.apply(&MetaRecord {
                kind: h.kind,
                seq: h.seq,
                offset,
                timestamp_ms: h.timestamp_ms,
                payload: view.payload,
            });
        }
        self.records += 1;
        self.last_record = offset;
        self.last_record_end = offset + view.padded_len as u64;
        Ok(())
    }
}

/// Recovers the log in `storage`.
pub(crate) fn recover<S: Storage, M: StateMachine>(
    storage: &mut S,
    config: &Config,
    state: &mut M,
) -> Result<Recovered> {
    let mut report = RecoveryReport {
        segments: 0,
        records_scanned: 0,
        checkpoint: CheckpointUse::None,
        truncated: None,
        removed: Vec::new(),
        end_offset: 0,
    };
    let (mut segments, fresh_base, names) = survey(storage, config, &mut report)?;
    let has_ckpt = names.iter().any(|n| is_checkpoint_file(n));
    let Some(&first_base) = segments.keys().next() else {
        if has_ckpt {
            return Err(corruption(
                CHECKPOINT_NAME,
                0,
                "checkpoint present, every segment missing",
            ));
        }
        let index = Index::new();
        let dedupe = Dedupe::new(config.dedupe_window_ms, config.dedupe_entries);
        report.end_offset = fresh_base + SEGMENT_HEADER_BYTES as u64;
        return Ok(Recovered {
            index,
            dedupe,
            segments,
            start: None,
            fresh_base,
            checkpoint_offset: 0,
            checkpoint_source: None,
            legacy_checkpoint: false,
            last_record: OFFSET_NONE,
            last_record_end: 0,
            report,
        });
    };
    if has_ckpt {
        let loaded = load_newest(storage, &names)?;
        for (name, reason) in &loaded.invalid {
            // Expected for one slot after a crash during its write: the other holds
            // the checkpoint before it.
            tracing::info!(file = %name, %reason, "checkpoint file not valid; ignored");
        }
        let checked = match loaded.newest {
            Some((ckpt, source)) => check_checkpoint(ckpt, &segments).map(|c| (c, source)),
            None => {
                let reason = loaded
                    .invalid
                    .first()
                    .map_or("no checkpoint".to_string(), |(name, r)| {
                        format!("{name}: {r}")
                    });
                Err(corruption(CHECKPOINT_NAME, 0, reason))
            }
        };
        match checked {
            Ok((ckpt, source)) => {
                let attempt = scan(
                    storage,
                    config,
                    state,
                    &mut segments,
                    Some(&ckpt),
                    &mut report,
                );
                match attempt {
                    Err(Error::Corruption { reason, .. }) if first_base == 0 => {
                        tracing::warn!(%reason, "checkpoint disagrees with the log; full scan");
                        report.checkpoint = CheckpointUse::Unusable(reason);
                    }
                    Ok(mut recovered) => {
                        recovered.checkpoint_source = Some(source);
                        recovered.legacy_checkpoint = loaded.legacy;
                        return Ok(recovered);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::Corruption { reason, .. }) => {
                tracing::warn!(%reason, "checkpoint unusable; scanning the log from its start");
                report.checkpoint = CheckpointUse::Unusable(reason);
            }
            Err(e) => return Err(e),
        }
    }
    if first_base != 0 {
        let reason = "log start was deleted by retention and no usable checkpoint covers it";
        return Err(corruption(CHECKPOINT_NAME, first_base, reason));
    }
    let recovered = scan(storage, config, state, &mut segments, None, &mut report)?;
    if has_ckpt {
        // The full scan rebuilt everything: drop the checkpoints that disagreed, or a
        // stale slot with a higher offset could win again once a new checkpoint lands
        // in the other slot.
        remove_all(storage, &names)?;
    }
    Ok(recovered)
}

/// Lists the directory: removes temporary files, reads every segment header, removes an
/// interrupted creation of the tail segment. Returns the segments, the base for a fresh
/// log, and the names the directory held.
///
/// With recycling on (`Config::recycles`), a retired segment kept for recycling
/// (`recycled.tmp`) stays, and a leftover `spare.tmp` becomes it if there is none: either
/// holds nothing the log needs, and either may be installed under a `recycled` header
/// (stale records, zeros, or a header that was never renamed into place). Kept, so that
/// a restart does not throw away the written blocks recycling saves.
fn survey<S: Storage>(
    storage: &mut S,
    config: &Config,
    report: &mut RecoveryReport,
) -> Result<(SegmentTable, u64, Vec<String>)> {
    let mode = config.recovery_mode;
    let names = storage.list().map_err(io_err("list", "."))?;
    let mut bases = Vec::new();
    let mut keep_recycled = config.recycles() && names.iter().any(|n| n == RECYCLED_NAME);
    for name in &names {
        if name == RECYCLED_NAME && keep_recycled {
            continue;
        }
        if name == SPARE_NAME && config.recycles() && !keep_recycled {
            storage
                .rename(name, RECYCLED_NAME)
                .map_err(io_err("rename", RECYCLED_NAME))?;
            keep_recycled = true;
        } else if name.ends_with(".tmp") {
            storage.remove(name).map_err(io_err("remove", name))?;
            report.removed.push(name.clone());
        } else if let Some(base) = parse_segment_name(name) {
            bases.push((base, name.clone()));
        }
    }
    bases.sort();
    let mut segments = SegmentTable::new();
    let mut fresh_base = 0;
    let count = bases.len();
    for (i, (base, name)) in bases.into_iter().enumerate() {
        let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
        let n = storage
            .read_at(&name, 0, &mut head)
            .map_err(io_err("read", &name))?;
        head.truncate(n);
        storage.close(&name); // reopened lazily: keep descriptors few
        let header = match decode_segment_header(&head) {
            Ok(header) if header.base_offset != base => {
                return Err(corruption(
                    &name,
                    base,
                    "header base offset differs from file name",
                ));
            }
            Ok(header) if header.capacity > SEGMENT_BYTES_MAX || header.capacity % 8 != 0 => {
                return Err(corruption(&name, base, "segment capacity out of range"));
            }
            Ok(header) => header,
            Err(invalid) if i + 1 == count && mode == RecoveryMode::TolerateTornTail => {
                if !body_is_zero(storage, &name)? {
                    return Err(corruption(&name, base, invalid.0));
                }
                tracing::warn!(segment = %name, reason = invalid.0,
                    "removing an interrupted segment creation");
                storage.remove(&name).map_err(io_err("remove", &name))?;
                storage.sync_dir().map_err(io_err("sync_dir", &name))?;
                report.removed.push(name);
                fresh_base = base;
                continue;
            }
            Err(invalid) => return Err(corruption(&name, base, invalid.0)),
        };
        segments.insert(
            base,
            SegmentMeta {
                name,
                header,
                sealed_end: None,
            },
        );
    }
    Ok((segments, fresh_base, names))
}

/// True when nothing but zeros follows the header position.
fn body_is_zero<S: Storage>(storage: &mut S, name: &str) -> Result<bool> {
    let map = storage.map(name).map_err(io_err("mmap", name))?;
    let body = map.as_ref().get(SEGMENT_HEADER_BYTES..).unwrap_or_default();
    Ok(body.iter().all(|b| *b == 0))
}

/// Checks the newest valid checkpoint against the segments present.
fn check_checkpoint(ckpt: Checkpoint, segments: &SegmentTable) -> Result<Checkpoint> {
    let name = CHECKPOINT_NAME;
    let first = segments.keys().next().copied().unwrap_or(0);
    for base in &ckpt.segments {
        if *base >= first && *base < ckpt.offset && !segments.contains_key(base) {
            let missing = crate::format::segment_name(*base);
            return Err(Error::Corruption {
                segment: missing,
                offset: *base,
                reason: "segment listed in the checkpoint is missing".into(),
            });
        }
    }
    if ckpt.offset < first {
        return Err(corruption(
            name,
            ckpt.offset,
            "checkpoint predates the oldest segment",
        ));
    }
    Ok(ckpt)
}

/// Rebuilds the state from `ckpt` (if any) and the log after it.
fn scan<S: Storage, M: StateMachine>(
    storage: &mut S,
    config: &Config,
    state: &mut M,
    segments: &mut SegmentTable,
    ckpt: Option<&Checkpoint>,
    report: &mut RecoveryReport,
) -> Result<Recovered> {
    let bases: Vec<u64> = segments.keys().copied().collect();
    let first_base = bases.first().copied().unwrap_or(0);
    let mut fold = Fold {
        index: Index::new(),
        dedupe: Dedupe::new(config.dedupe_window_ms, config.dedupe_entries),
        meta_tip: (0, OFFSET_NONE),
        state,
        records: 0,
        last_record: OFFSET_NONE,
        last_record_end: 0,
    };
    let start = match ckpt {
        Some(c) => {
            verify_checkpoint_end(storage, segments, c)?;
            seed_from_checkpoint(&mut fold, c, first_base)?;
            c.offset
        }
        None => {
            fold.state.restore(None).map_err(Error::SnapshotRejected)?;
            first_base
        }
    };
    let first_idx = bases
        .iter()
        .rposition(|b| *b <= start)
        .ok_or_else(|| corruption(CHECKPOINT_NAME, start, "no segment holds the scan start"))?;
    let mut end = (first_base, SEGMENT_HEADER_BYTES as u64);
    for (i, base) in bases.iter().enumerate() {
        let next = bases.get(i + 1).copied();
        let meta = segments.get_mut(base).ok_or(Error::Poisoned)?;
        if i < first_idx {
            meta.sealed_end = next.map(|n| n - base);
            continue;
        }
        let from = if i == first_idx { start - base } else { 0 };
        let from = from.max(SEGMENT_HEADER_BYTES as u64);
        let stop = scan_segment(
            storage,
            meta,
            from,
            next,
            &mut fold,
            config.recovery_mode,
            report,
        )?;
        meta.sealed_end = next.map(|_| stop);
        end = (*base, stop);
    }
    let tail = segments.get(&end.0).ok_or(Error::Poisoned)?;
    report.segments = segments.len();
    report.records_scanned = fold.records;
    report.end_offset = end.0 + end.1;
    if let Some(c) = ckpt {
        report.checkpoint = CheckpointUse::Used(c.offset);
    }
    let start = WriterStart {
        segment_base: end.0,
        segment_capacity: tail.header.capacity,
        position: end.1,
        record_seed: tail.header.record_seed(),
        meta_tip: fold.meta_tip,
    };
    Ok(Recovered {
        index: fold.index,
        dedupe: fold.dedupe,
        segments: segments.clone(),
        start: Some(start),
        fresh_base: 0,
        checkpoint_offset: ckpt.map_or(0, |c| c.offset),
        checkpoint_source: None,
        legacy_checkpoint: false,
        last_record: match fold.last_record {
            OFFSET_NONE => ckpt.map_or(OFFSET_NONE, |c| c.last_record),
            offset => offset,
        },
        last_record_end: match fold.last_record {
            OFFSET_NONE => ckpt.map_or(0, |c| c.offset),
            _ => fold.last_record_end,
        },
        report: report.clone(),
    })
}

/// Loads the checkpoint's index, keys, metadata tip and state into the fold.
fn seed_from_checkpoint<M: StateMachine>(
    fold: &mut Fold<'_, M>,
    ckpt: &Checkpoint,
    first_base: u64,
) -> Result<()> {
    for (id, conv) in &ckpt.convs {
        fold.index.insert(*id, conv.clone());
    }
    fold.index.trim_below(first_base);
    for (key, entry) in &ckpt.keys {
        fold.dedupe.insert(*key, *entry);
    }
    fold.meta_tip = ckpt.meta_tip;
    fold.state
        .restore(Some(&ckpt.state))
        .map_err(Error::SnapshotRejected)
}

/// A checkpoint must end exactly after a valid record of the log.
fn verify_checkpoint_end<S: Storage>(
    storage: &mut S,
    segments: &SegmentTable,
    ckpt: &Checkpoint,
) -> Result<()> {
    if ckpt.last_record == OFFSET_NONE {
        return Ok(());
    }
    let fail = |reason: &str| corruption(CHECKPOINT_NAME, ckpt.last_record, reason);
    let (base, meta) = segments
        .range(..=ckpt.last_record)
        .next_back()
        .ok_or_else(|| fail("checkpoint's last record is in no segment"))?;
    let map = storage
        .map(&meta.name)
        .map_err(io_err("mmap", &meta.name))?;
    let pos = usize::try_from(ckpt.last_record - base).unwrap_or(usize::MAX);
    let bytes = map.as_ref().get(pos..).unwrap_or_default();
    match decode_record(meta.header.record_seed(), bytes) {
        Ok(Some(view)) if ckpt.last_record + view.padded_len as u64 == ckpt.offset => Ok(()),
        _ => Err(fail("checkpoint ends past the log's valid records")),
    }
}

/// Scans one segment from position `from`; applies the decision table where the data
/// stops; returns the stop position (where appends resume if this is the tail).
fn scan_segment<S: Storage, M: StateMachine>(
    storage: &mut S,
    meta: &SegmentMeta,
    from: u64,
    next_base: Option<u64>,
    fold: &mut Fold<'_, M>,
    mode: RecoveryMode,
    report: &mut RecoveryReport,
) -> Result<u64> {
    let (name, base) = (&meta.name, meta.header.base_offset);
    let seed = meta.header.record_seed();
    let map = storage.map(name).map_err(io_err("mmap", name))?;
    let all = map.as_ref();
    let bytes = all.get(..meta.header.capacity as usize).unwrap_or(all);
    let mut pos = usize::try_from(from).unwrap_or(usize::MAX);
    let invalid = loop {
        match decode_record(seed, bytes.get(pos..).unwrap_or_default()) {
            Ok(Some(view)) => {
                let offset = base + pos as u64;
                fold.apply(offset, &view)
                    .map_err(|r| corruption(name, offset, r))?;
                pos += view.padded_len;
            }
            Ok(None) => break "zero length word",
            Err(invalid) => break invalid.0,
        }
    };
    let case = match (meta.header.recycled, next_base) {
        // Stale bytes follow a sealed recycled segment's records; its end is checked
        // against the next base below.
        (true, Some(_)) => StopCase::CleanEnd,
        (true, None) => classify_recycled_stop(bytes, pos, base, seed),
        (false, _) => classify_stop(bytes, pos, base, seed),
    };
    let stop = base + pos as u64;
    match decide(case, next_base.is_none(), mode) {
        Action::Accept => {}
        Action::Fail => {
            return Err(corruption(name, stop, format!("{case:?} ({invalid})")));
        }
        Action::Truncate => {
            let last = if meta.header.recycled {
                pos.saturating_add(UNSYNCED_WINDOW_BYTES).min(bytes.len())
            } else {
                bytes.iter().rposition(|b| *b != 0).map_or(pos, |l| l + 1)
            };
            let cut_end = crate::format::align_up(last) as u64;
            drop(map);
            zero_range(storage, name, pos as u64, cut_end)?;
            storage.sync(name).map_err(io_err("sync", name))?;
            tracing::warn!(segment = %name, offset = stop, bytes = cut_end - pos as u64,
                reason = invalid, "truncated a torn tail");
            report.truncated = Some(crate::recovery::Truncation {
                segment: name.clone(),
                offset: stop,
                bytes_cut: cut_end - pos as u64,
                reason: invalid.to_owned(),
            });
        }
    }
    if let Some(next) = next_base {
        storage.close(name);
        if stop != next {
            let reason = "segment end does not meet the next segment's base (missing segment?)";
            return Err(corruption(name, stop, reason));
        }
    }
    Ok(pos as u64)
}

/// Offsets of every record from `pos` on in a segment whose record CRCs start from
/// `seed` (used by tests to cut at record boundaries).
pub fn record_positions(bytes: &[u8], mut pos: usize, seed: RecordSeed) -> Vec<usize> {
    let mut out = Vec::new();
    while let Ok(Some(view)) = decode_record(seed, bytes.get(pos..).unwrap_or_default()) {
        out.push(pos);
        pos += view.padded_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_exhaustive_and_conservative() {
        use RecoveryMode::*;
        use StopCase::*;
        for mode in [TolerateTornTail, Strict] {
            for tail in [true, false] {
                assert_eq!(decide(CleanEnd, tail, mode), Action::Accept);
                assert_eq!(decide(CorruptBeforeTail, tail, mode), Action::Fail);
            }
            assert_eq!(decide(TornTail, false, mode), Action::Fail);
        }
        assert_eq!(decide(TornTail, true, TolerateTornTail), Action::Truncate);
        assert_eq!(decide(TornTail, true, Strict), Action::Fail);
    }

    #[test]
    fn classify_zeros_garbage_and_later_records() {
        use crate::format::{encode_record, RecordHeader, RecordKind};
        let seed = RecordSeed::for_base(0);
        let mut seg = vec![0u8; 1024];
        assert_eq!(classify_stop(&seg, 64, 0, seed), StopCase::CleanEnd);
        seg[100] = 1;
        assert_eq!(classify_stop(&seg, 64, 0, seed), StopCase::TornTail);
        // A valid record at 256 written when everything below 128 was synced: a stop at
        // 64 lies in synced space, so the damage there is corruption.
        let mut rec = Vec::new();
        let header = RecordHeader {
            kind: RecordKind::Message,
            conversation_id: 1,
            seq: 2,
            message_id: 0,
            timestamp_ms: 0,
            prev_offset: 64,
            stable_back: 256 - 128,
            key: None,
        };
        encode_record(seed, &header, b"x", &mut rec);
        seg[256..256 + rec.len()].copy_from_slice(&rec);
        assert_eq!(
            classify_stop(&seg, 64, 0, seed),
            StopCase::CorruptBeforeTail
        );
        // The same record written in the same unsynced batch as the stop: torn.
        assert_eq!(classify_stop(&seg, 128, 0, seed), StopCase::TornTail);
        // Under another segment's seed the record is just bytes.
        let other = RecordSeed::for_base(1 << 30);
        assert_eq!(classify_stop(&seg, 64, 0, other), StopCase::TornTail);
    }

    #[test]
    fn in_a_recycled_segment_only_records_of_its_own_seed_inside_the_window_count() {
        use crate::format::{encode_record, RecordHeader, RecordKind};
        let (old, new) = (RecordSeed::for_base(0), RecordSeed::for_base(1 << 20));
        let record = |seed, stable_back: u32| {
            let header = RecordHeader {
                kind: RecordKind::Message,
                conversation_id: 1,
                seq: 1,
                message_id: 0,
                timestamp_ms: 0,
                prev_offset: OFFSET_NONE,
                stable_back,
                key: None,
            };
            let mut rec = Vec::new();
            encode_record(seed, &header, b"x", &mut rec);
            rec
        };
        let len = 2 * UNSYNCED_WINDOW_BYTES;
        // Stale records of the file's previous segment everywhere after the stop.
        let mut seg = vec![0u8; len];
        let stale = record(old, 0);
        for at in (128..len - 64).step_by(4096) {
            seg[at..at + stale.len()].copy_from_slice(&stale);
        }
        let base = 1 << 20;
        assert_eq!(
            classify_recycled_stop(&seg, 64, base, new),
            StopCase::CleanEnd
        );
        // The stale segment with one record of this segment placed at `at`.
        let placed = |at: usize, rec: &[u8]| {
            let mut bytes = seg.clone();
            bytes[at..at + rec.len()].copy_from_slice(rec);
            bytes
        };
        let classify = |bytes: &[u8]| classify_recycled_stop(bytes, 64, base, new);
        // A valid record of this segment from the unsynced batch that began at the stop.
        let own = record(new, 4096 - 64);
        assert_eq!(classify(&placed(4096, &own)), StopCase::TornTail);
        // One written after the stop was synced: corruption before the tail.
        let synced = record(new, 4096 - 1024);
        assert_eq!(
            classify(&placed(4096, &synced)),
            StopCase::CorruptBeforeTail
        );
        // Past the window nothing is looked at (no batch reaches that far unsynced).
        let far = 64 + UNSYNCED_WINDOW_BYTES + 4096;
        assert_eq!(classify(&placed(far, &own)), StopCase::CleanEnd);
    }
}
