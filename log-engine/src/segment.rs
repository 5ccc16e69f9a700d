//! Segment files: creation (header + zero fill + sync), the preallocated spare segment,
//! zeroing, and the table of segments a log knows about.
//!
//! # The spare
//!
//! Zero-filling a 256 MiB segment takes ~0.4 s on this machine class, far too long to do
//! inside the commit that rolls. So one *spare* is prepared ahead of time, off the hot
//! path: [`start_spare`] creates `spare.tmp` with its space allocated (`fallocate`),
//! fdatasync'ed, directory fsync'ed — from then on it can be installed — and
//! [`zero_spare_slice`] then zero-fills it slice by slice, because a 4 KiB O_DIRECT
//! write + fdatasync into written, zeroed blocks costs ~100 µs against ~2× that into
//! unwritten extents (the conversion is journaled). The fill is written with small
//! `O_DIRECT` writes and fdatasync'ed once at its end ([`finish_spare`]): the appends'
//! fdatasyncs then never queue behind a large writeback of zeros
//! (`limits::ZERO_FILL_WRITE_BYTES` has the measurements). Between slices nothing of the
//! spare sits in the page cache; its extent conversions are in the file system's
//! journal, and the install's fdatasync commits them with the header. A roll [`install_spare`]s it
//! whatever its progress (header write, fdatasync, rename to the segment's name,
//! directory fsync): at moderate rates it is fully zeroed by then and appends get the
//! fast path; when appends outrun the zero filling (large records at full disk speed)
//! the rest stays unwritten extents, so the disk writes each byte once instead of twice.
//! A leftover `spare.tmp` after a crash (during preparation or before the rename was
//! durable) is removed by recovery like every `*.tmp` file; it never holds a record.
//!
//! # Recycling
//!
//! Writing into fresh space costs the disk more than overwriting: an O_DIRECT 4 MiB
//! write + fdatasync into fallocated (unwritten) blocks ran ~1.9 GB/s on this machine
//! class, over already-written blocks ~3.3–3.7 GB/s (fio, same file, back to back), and
//! zero-filling ahead of time spends the same disk bandwidth once more. So in `Durable`
//! mode retention does not delete a retired segment: [`retire_for_recycling`] renames it
//! to `recycled.tmp`, and the next spare is that file ([`adopt_recycled_spare`]), moved
//! to `spare.tmp` without touching its blocks. Its old records stay where they are and
//! fail the new segment's seeded record CRC (`format::RecordSeed`). A recycled spare is
//! installed only under a header flagged `recycled`, which tells recovery that bytes
//! after the written records may be stale rather than zeros. While recycling is on every
//! rolled segment is flagged so, whichever spare it gets: the writer encodes the header
//! (and rewrites it with block 0) before it can know which spare the roll will take.

use std::collections::BTreeMap;

use crate::error::{io_err, Result};
use crate::format::{
    decode_segment_header, encode_segment_header, segment_name, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use crate::limits::{ZERO_CHUNK_BYTES, ZERO_FILL_SLICE_BYTES, ZERO_FILL_WRITE_BYTES};
use crate::storage::Storage;
use crate::storage::DIRECT_ALIGN;

/// What the log knows about one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// File name.
    pub name: String,
    /// Its header.
    pub header: SegmentHeader,
    /// End position of written records once sealed (`None` for the active segment).
    pub sealed_end: Option<u64>,
}

/// All segments of a log, by base offset.
pub type SegmentTable = BTreeMap<u64, SegmentMeta>;

/// Creates a segment: header, zeros up to capacity (so later appends overwrite
/// allocated, zeroed space and fdatasync need not update the file size), sync of the
/// file, sync of the directory. A crash part-way leaves a tail segment whose header is
/// torn or whose body is short: recovery removes it (no record was ever written to it).
pub fn create_segment<S: Storage>(storage: &mut S, header: &SegmentHeader) -> Result<SegmentMeta> {
    assert!(header.capacity >= 2 * SEGMENT_HEADER_BYTES as u64);
    let name = segment_name(header.base_offset);
    storage.create(&name).map_err(io_err("create", &name))?;
    let head = encode_segment_header(header);
    storage
        .write_at(&name, 0, &head)
        .map_err(io_err("write", &name))?;
    zero_range(storage, &name, SEGMENT_HEADER_BYTES as u64, header.capacity)?;
    storage.sync(&name).map_err(io_err("sync", &name))?;
    storage.sync_dir().map_err(io_err("sync_dir", &name))?;
    Ok(SegmentMeta {
        name,
        header: *header,
        sealed_end: None,
    })
}

/// Name of the preallocated spare segment (no header until it is installed).
pub const SPARE_NAME: &str = "spare.tmp";

/// Name of a retired segment kept for recycling (at most one; a newer one replaces it).
pub const RECYCLED_NAME: &str = "recycled.tmp";

/// Where an installable spare came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpareKind {
    /// Created by [`start_spare`]: allocated, reads as zeros (zero-filled or not).
    Prepared,
    /// A retired segment ([`adopt_recycled_spare`]): written blocks holding stale records.
    Recycled,
}

/// Retention's replacement for deleting segment `name`: renames it to `recycled.tmp`
/// (replacing, and so freeing, an older one). The caller fsyncs the directory, as it
/// does after deleting. Like every `*.tmp` file, recovery removes it.
pub fn retire_for_recycling<S: Storage>(storage: &mut S, name: &str) -> Result<()> {
    storage.close(name);
    storage
        .rename(name, RECYCLED_NAME)
        .map_err(io_err("rename", RECYCLED_NAME))
}

/// Makes `recycled.tmp` the spare if there is one of `capacity` bytes: renames it to
/// `spare.tmp` (over a stale one) and fsyncs the directory. False when there is none;
/// one of another capacity (the configuration changed) is removed.
pub fn adopt_recycled_spare<S: Storage>(storage: &mut S, capacity: u64) -> Result<bool> {
    match storage.len(RECYCLED_NAME) {
        Ok(len) if len == capacity => {}
        Ok(_) => {
            storage
                .remove(RECYCLED_NAME)
                .map_err(io_err("remove", RECYCLED_NAME))?;
            return Ok(false);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("stat", RECYCLED_NAME)(e)),
    }
    storage
        .rename(RECYCLED_NAME, SPARE_NAME)
        .map_err(io_err("rename", SPARE_NAME))?;
    storage.sync_dir().map_err(io_err("sync_dir", SPARE_NAME))?;
    storage.close(SPARE_NAME);
    Ok(true)
}

/// Prepares the spare: removes a stale one, creates `spare.tmp` at `capacity` with its
/// space allocated (`fallocate`), fdatasyncs it and fsyncs the directory; then zero-fills
/// it with [`zero_spare_slice`]. Runs off the commit path (a maintenance call or a
/// background thread with its own storage handle).
pub fn prepare_spare<S: Storage>(storage: &mut S, capacity: u64) -> Result<()> {
    start_spare(storage, capacity)?;
    let zeros = AlignedZeros::new();
    let mut from = 0;
    while from < capacity {
        from = zero_spare_slice(storage, from, capacity, &zeros)?;
    }
    finish_spare(storage)
}

/// First step of [`prepare_spare`]: after it the spare can already be installed. Its
/// space is allocated but not written (unwritten extents read as zeros): appends into it
/// are correct, only their fdatasyncs cost more (the extent conversion is journaled)
/// until zeroed blocks are reached.
pub fn start_spare<S: Storage>(storage: &mut S, capacity: u64) -> Result<()> {
    assert!(capacity >= 2 * SEGMENT_HEADER_BYTES as u64);
    let name = SPARE_NAME;
    match storage.remove(name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", name)(e)),
    }
    storage.create(name).map_err(io_err("create", name))?;
    storage
        .allocate(name, capacity)
        .map_err(io_err("fallocate", name))?;
    storage.sync(name).map_err(io_err("sync", name))?;
    storage.sync_dir().map_err(io_err("sync_dir", name))?;
    Ok(())
}

/// `ZERO_FILL_WRITE_BYTES` of zeros at a `DIRECT_ALIGN`-aligned address, so that
/// `O_DIRECT` writes of them need no bounce copy.
pub struct AlignedZeros {
    buffer: Vec<u8>,
    at: usize,
}

impl AlignedZeros {
    /// Allocates the zeros.
    pub fn new() -> AlignedZeros {
        let buffer = vec![0u8; ZERO_FILL_WRITE_BYTES + DIRECT_ALIGN];
        let at = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedZeros { buffer, at }
    }

    /// The first `len` (at most `ZERO_FILL_WRITE_BYTES`) zeros.
    fn get(&self, len: usize) -> &[u8] {
        let end = self.at + len.min(ZERO_FILL_WRITE_BYTES);
        self.buffer.get(self.at..end).unwrap_or_default()
    }
}

impl Default for AlignedZeros {
    fn default() -> Self {
        AlignedZeros::new()
    }
}

/// Zero-fills `[from, from + ZERO_FILL_SLICE_BYTES)` of the spare with `O_DIRECT` writes
/// of `ZERO_FILL_WRITE_BYTES` (buffered where the file system refuses `O_DIRECT`, or
/// for an unaligned end); returns where the next slice starts. No fdatasync: see
/// [`finish_spare`] and the module docs.
pub fn zero_spare_slice<S: Storage>(
    storage: &mut S,
    from: u64,
    capacity: u64,
    zeros: &AlignedZeros,
) -> Result<u64> {
    let name = SPARE_NAME;
    let to = (from + ZERO_FILL_SLICE_BYTES).min(capacity);
    let mut pos = from;
    while pos < to {
        let len = (to - pos).min(ZERO_FILL_WRITE_BYTES as u64) as usize;
        storage
            .write_direct(name, pos, zeros.get(len))
            .map_err(io_err("write", name))?;
        pos += len as u64;
    }
    Ok(to)
}

/// Makes a completely zero-filled spare's zeros (and their extent conversions) durable:
/// one fdatasync, so that installing it later does not commit them on the I/O thread.
pub fn finish_spare<S: Storage>(storage: &mut S) -> Result<()> {
    let name = SPARE_NAME;
    storage.sync(name).map_err(io_err("sync", name))
}

/// Turns the prepared spare into the segment `header` describes: header write,
/// fdatasync (so the segment never exists with a torn header under its final name),
/// rename, directory fsync. No zero filling: that was done by [`prepare_spare`], or is
/// not needed (a recycled spare, installed only under a header flagged `recycled`).
pub fn install_spare<S: Storage>(storage: &mut S, header: &SegmentHeader) -> Result<SegmentMeta> {
    let spare = SPARE_NAME;
    let len = storage.len(spare).map_err(io_err("stat", spare))?;
    assert_eq!(len, header.capacity, "spare prepared for another capacity");
    let name = segment_name(header.base_offset);
    let head = encode_segment_header(header);
    storage
        .write_at(spare, 0, &head)
        .map_err(io_err("write", spare))?;
    storage.sync(spare).map_err(io_err("sync", spare))?;
    storage
        .rename(spare, &name)
        .map_err(io_err("rename", &name))?;
    storage.sync_dir().map_err(io_err("sync_dir", &name))?;
    Ok(SegmentMeta {
        name,
        header: *header,
        sealed_end: None,
    })
}

/// True when the records a recycled spare still holds could pass the CRC of records
/// written under `header`: its previous header's seed equals the new one (odds 2^-32).
fn stale_seed_collides<S: Storage>(storage: &mut S, header: &SegmentHeader) -> bool {
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    let read = storage.read_at(SPARE_NAME, 0, &mut head);
    let previous = read
        .ok()
        .and_then(|n| decode_segment_header(head.get(..n)?).ok());
    previous.is_some_and(|old| old.record_seed() == header.record_seed())
}

/// Creates the segment for a roll: installs the spare if one is ready (`spare` is then
/// cleared), else creates and zero-fills it inline (slow: warned). The flag says whether
/// the segment went into a recycled file.
pub fn roll_segment<S: Storage>(
    storage: &mut S,
    header: &SegmentHeader,
    spare: &mut Option<SpareKind>,
) -> Result<(SegmentMeta, bool)> {
    match spare.take() {
        Some(SpareKind::Recycled) if !header.recycled => {
            tracing::warn!(
                base = header.base_offset,
                "recycled spare for a segment not flagged recycled: not used"
            );
        }
        Some(SpareKind::Recycled) if stale_seed_collides(storage, header) => {
            tracing::warn!(
                base = header.base_offset,
                "recycled spare shares the new segment's record seed: not used"
            );
        }
        Some(kind) => {
            let meta = install_spare(storage, header)?;
            return Ok((meta, kind == SpareKind::Recycled));
        }
        None => {}
    }
    tracing::warn!(
        base = header.base_offset,
        "no spare segment prepared: zero-filling inside the roll"
    );
    Ok((create_segment(storage, header)?, false))
}

/// Writes zeros over `[from, to)` in large chunks (no sync).
pub fn zero_range<S: Storage>(storage: &mut S, name: &str, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZERO_CHUNK_BYTES as u64) as usize;
        let chunk = zeros.get(..n).unwrap_or_default();
        storage
            .write_at(name, pos, chunk)
            .map_err(io_err("write", name))?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimStorage;
    use crate::storage::FsStorage;

    #[test]
    fn the_spare_is_zero_filled_with_small_direct_writes_over_whatever_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = FsStorage::open(dir.path()).unwrap();
        // Two whole slices and a part slice with an unaligned end.
        let capacity = 2 * ZERO_FILL_SLICE_BYTES + 3 * DIRECT_ALIGN as u64 + 100;
        start_spare(&mut fs, capacity).unwrap();
        fs.write_at(SPARE_NAME, 0, &vec![0xEE; capacity as usize])
            .unwrap();
        let zeros = AlignedZeros::new();
        let mut from = 0;
        let mut slices = 0;
        while from < capacity {
            from = zero_spare_slice(&mut fs, from, capacity, &zeros).unwrap();
            slices += 1;
        }
        finish_spare(&mut fs).unwrap();
        assert_eq!((from, slices), (capacity, 3));
        let mut bytes = vec![0xAA; capacity as usize];
        assert_eq!(fs.read_at(SPARE_NAME, 0, &mut bytes).unwrap(), bytes.len());
        assert!(bytes.iter().all(|b| *b == 0), "every byte zeroed");
        // Each slice in ZERO_FILL_WRITE_BYTES writes; the unaligned end is buffered.
        let per_slice = ZERO_FILL_SLICE_BYTES as usize / ZERO_FILL_WRITE_BYTES;
        let direct = 2 * per_slice as u64;
        assert!(fs.direct_writes() == direct || !fs.writes_direct());
    }

    #[test]
    fn created_segment_is_zero_filled_and_durable() {
        let mut sim = SimStorage::new();
        let header = SegmentHeader::new(4096, 1, 8192);
        let meta = create_segment(&mut sim, &header).unwrap();
        assert_eq!(meta.name, "00000000000000004096.log");
        sim.crash(7);
        let bytes = sim.bytes(&meta.name).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        assert!(bytes[64..].iter().all(|b| *b == 0));
    }

    #[test]
    fn installed_spare_is_a_durable_segment_without_zero_filling() {
        let mut sim = SimStorage::new();
        prepare_spare(&mut sim, 8192).unwrap();
        let header = SegmentHeader::new(4096, 1, 8192);
        let before = sim.bytes_written();
        let mut spare = Some(SpareKind::Prepared);
        let (meta, _) = roll_segment(&mut sim, &header, &mut spare).unwrap();
        assert!(spare.is_none());
        assert_eq!(sim.bytes_written() - before, SEGMENT_HEADER_BYTES as u64);
        sim.crash(3);
        assert_eq!(sim.names(), vec![meta.name.clone()]);
        let bytes = sim.bytes(&meta.name).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        assert!(bytes[64..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_spare_installed_before_its_zero_fill_finished_is_a_durable_segment() {
        let mut sim = SimStorage::new();
        let capacity = 3 * ZERO_FILL_SLICE_BYTES;
        start_spare(&mut sim, capacity).unwrap();
        let zeroed = zero_spare_slice(&mut sim, 0, capacity, &AlignedZeros::new()).unwrap();
        assert_eq!(zeroed, ZERO_FILL_SLICE_BYTES);
        let header = SegmentHeader::new(0, 1, capacity);
        let mut spare = Some(SpareKind::Prepared);
        let (meta, _) = roll_segment(&mut sim, &header, &mut spare).unwrap();
        // A record written past the zeroed prefix, synced, survives a crash; the
        // allocated-but-unwritten rest reads as zeros (the end of the log).
        let at = 2 * ZERO_FILL_SLICE_BYTES;
        sim.write_at(&meta.name, at, &[7; 100]).unwrap();
        sim.sync(&meta.name).unwrap();
        sim.crash(11);
        let bytes = sim.bytes(&meta.name).unwrap();
        assert_eq!(bytes.len() as u64, capacity);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        let at = at as usize;
        assert!(bytes[64..at].iter().all(|b| *b == 0));
        assert_eq!(&bytes[at..at + 100], &[7; 100]);
        assert!(bytes[at + 100..].iter().all(|b| *b == 0));
    }

    fn retired_segment(sim: &mut SimStorage, base: u64, capacity: u64) {
        let old = create_segment(sim, &SegmentHeader::new(base, 1, capacity)).unwrap();
        sim.write_at(&old.name, 64, &[7; 1000]).unwrap();
        sim.sync(&old.name).unwrap();
        retire_for_recycling(sim, &old.name).unwrap();
        sim.sync_dir().unwrap();
        assert_eq!(sim.names(), vec![RECYCLED_NAME.to_owned()]);
    }

    #[test]
    fn a_retired_segment_becomes_a_recycled_segment_without_rewriting_its_blocks() {
        let mut sim = SimStorage::new();
        retired_segment(&mut sim, 0, 8192);
        assert!(adopt_recycled_spare(&mut sim, 8192).unwrap());
        assert!(
            !adopt_recycled_spare(&mut sim, 8192).unwrap(),
            "adopted once"
        );
        let header = SegmentHeader {
            recycled: true,
            ..SegmentHeader::new(8192, 2, 8192)
        };
        let before = sim.bytes_written();
        let mut spare = Some(SpareKind::Recycled);
        let (meta, recycled) = roll_segment(&mut sim, &header, &mut spare).unwrap();
        assert!(recycled);
        assert_eq!(sim.bytes_written() - before, SEGMENT_HEADER_BYTES as u64);
        assert!(meta.header.recycled);
        sim.crash(5);
        assert_eq!(sim.names(), vec![meta.name.clone()]);
        let bytes = sim.bytes(&meta.name).unwrap();
        let read = decode_segment_header(&bytes).unwrap();
        assert!(read.recycled);
        assert_eq!(read.base_offset, 8192);
        assert_eq!(
            &bytes[64..1064],
            &[7; 1000][..],
            "stale bytes left in place"
        );
    }

    #[test]
    fn a_recycled_file_of_another_capacity_is_removed_not_adopted() {
        let mut sim = SimStorage::new();
        retired_segment(&mut sim, 0, 8192);
        assert!(!adopt_recycled_spare(&mut sim, 16384).unwrap());
        assert!(sim.names().is_empty());
    }

    #[test]
    fn a_recycled_spare_whose_old_seed_matches_the_new_one_is_not_installed() {
        let mut sim = SimStorage::new();
        // The same base gives the same seed: the stand-in for a 2^-32 collision.
        retired_segment(&mut sim, 4096, 8192);
        assert!(adopt_recycled_spare(&mut sim, 8192).unwrap());
        let header = SegmentHeader {
            recycled: true,
            ..SegmentHeader::new(4096, 2, 8192)
        };
        let mut spare = Some(SpareKind::Recycled);
        let (meta, _) = roll_segment(&mut sim, &header, &mut spare).unwrap();
        let bytes = sim.bytes(&meta.name).unwrap();
        assert!(
            bytes[64..].iter().all(|b| *b == 0),
            "created and zero-filled"
        );
    }

    #[test]
    fn a_recycled_spare_is_never_installed_under_a_header_not_flagged_recycled() {
        let mut sim = SimStorage::new();
        retired_segment(&mut sim, 0, 8192);
        assert!(adopt_recycled_spare(&mut sim, 8192).unwrap());
        let header = SegmentHeader::new(8192, 2, 8192);
        let mut spare = Some(SpareKind::Recycled);
        let (meta, _) = roll_segment(&mut sim, &header, &mut spare).unwrap();
        assert!(!meta.header.recycled);
        let bytes = sim.bytes(&meta.name).unwrap();
        assert!(
            bytes[64..].iter().all(|b| *b == 0),
            "created and zero-filled"
        );
    }
}
