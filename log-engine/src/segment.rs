//! Segment files: creation (header + zero fill + sync), zeroing, and the table of
//! segments a log knows about.

use std::collections::BTreeMap;

use crate::error::{io_err, Result};
use crate::format::{encode_segment_header, segment_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::limits::ZERO_CHUNK_BYTES;
use crate::storage::Storage;

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
    use crate::format::decode_segment_header;
    use crate::sim::SimStorage;

    #[test]
    fn created_segment_is_zero_filled_and_durable() {
        let mut sim = SimStorage::new();
        let header = SegmentHeader {
            base_offset: 4096,
            created_at_ms: 1,
            capacity: 8192,
        };
        let meta = create_segment(&mut sim, &header).unwrap();
        assert_eq!(meta.name, "00000000000000004096.log");
        sim.crash(7);
        let bytes = sim.bytes(&meta.name).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        assert!(bytes[64..].iter().all(|b| *b == 0));
    }
}
