//! Pure encoders and decoders for the on-disk format. `FORMAT.md` (next to `Cargo.toml`)
//! is the reference; each encoder carries the grammar it writes.
//!
//! Nothing here touches storage. Decoders never panic on any input: bad bytes are an
//! [`Invalid`] that the caller turns into `Error::Corruption` or a torn-tail decision.

/// Magic bytes opening every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CONFABLG";
/// Version of the segment and record format written by this build. See the version log
/// in `FORMAT.md`: version 2 seeds every record CRC with the segment's base offset (see
/// [`RecordSeed`]) and adds the header flags; version 1 segments are still read.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest segment format version this build reads (unseeded record CRCs, no flags).
pub const FORMAT_VERSION_MIN: u32 = 1;
/// Segment header flag: the file was recycled from a retired segment, so the bytes after
/// its written records may be stale records of that earlier segment (they never pass
/// this segment's seeded CRC). Recovery then looks for torn writes only inside
/// [`UNSYNCED_WINDOW_BYTES`] after the last valid record.
pub const SEGMENT_FLAG_RECYCLED: u32 = 0x01;
const SEGMENT_FLAGS_KNOWN: u32 = SEGMENT_FLAG_RECYCLED;
/// Most bytes past a segment's durable end that `Durable` mode ever has written and not
/// yet fdatasync'ed: one group-commit batch (written block-aligned, so plus a 4 KiB block
/// before it and one after). A torn write therefore lies inside this window after the
/// last valid record, which is all recovery scans of a recycled segment's tail.
pub const UNSYNCED_WINDOW_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of the fixed segment header; records start at this position.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes of a record header without the optional idempotency key.
pub const RECORD_HEADER_BYTES: usize = 56;
/// Bytes of an idempotency key.
pub const RECORD_KEY_BYTES: usize = 16;
/// Records start and end on this alignment (padding is zeros, covered by the CRC).
pub const RECORD_ALIGN: usize = 8;
/// `prev_offset` of the first record of a conversation (or of the metadata stream).
pub const OFFSET_NONE: u64 = u64::MAX;
/// Record flag: a 16-byte idempotency key follows the fixed header.
pub const FLAG_KEY: u8 = 0x01;
const FLAGS_KNOWN: u8 = FLAG_KEY;

const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_KEY_BYTES.is_multiple_of(RECORD_ALIGN));

/// A 16-byte idempotency key chosen by the client.
pub type IdempotencyKey = [u8; RECORD_KEY_BYTES];

/// What a record holds. Conversation kinds (`Message`, `System`) belong to a
/// conversation's gap-free sequence; all other kinds are metadata with a payload the
/// gateway defines, numbered by one log-wide metadata sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A chat message in a conversation.
    Message,
    /// A system event in a conversation ("X joined"), sequenced like a message.
    System,
    /// Metadata: a user record.
    User,
    /// Metadata: a device record.
    Device,
    /// Metadata: a group record (members, roles).
    Group,
    /// Metadata: a delivered/read cursor update.
    Cursor,
    /// Metadata: a public key / pre-key bundle.
    PublicKey,
    /// Metadata: a media record.
    Media,
    /// Metadata defined by the application, tag in `64..=127`.
    Custom(u8),
}

impl RecordKind {
    /// The byte stored on disk.
    pub fn to_byte(self) -> u8 {
        match self {
            RecordKind::Message => 1,
            RecordKind::System => 2,
            RecordKind::User => 16,
            RecordKind::Device => 17,
            RecordKind::Group => 18,
            RecordKind::Cursor => 19,
            RecordKind::PublicKey => 20,
            RecordKind::Media => 21,
            RecordKind::Custom(tag) => tag,
        }
    }

    /// Parses the stored byte; `None` for bytes no version of the format assigns.
    pub fn from_byte(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Message,
            2 => RecordKind::System,
            16 => RecordKind::User,
            17 => RecordKind::Device,
            18 => RecordKind::Group,
            19 => RecordKind::Cursor,
            20 => RecordKind::PublicKey,
            21 => RecordKind::Media,
            64..=127 => RecordKind::Custom(byte),
            _ => return None,
        })
    }

    /// True for kinds sequenced per conversation.
    pub fn is_conversation(self) -> bool {
        matches!(self, RecordKind::Message | RecordKind::System)
    }

    /// True when this value can be encoded (a `Custom` tag outside `64..=127` cannot).
    pub fn is_valid(self) -> bool {
        RecordKind::from_byte(self.to_byte()) == Some(self)
    }
}

/// Why bytes failed to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// The fixed header at position 0 of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Logical log offset of position 0 of this file.
    pub base_offset: u64,
    /// Wall-clock ms when the segment was created (retention ages segments by it).
    pub created_at_ms: u64,
    /// Preallocated size of the file; records end at or before it.
    pub capacity: u64,
    /// Format version of this segment (`FORMAT_VERSION_MIN..=FORMAT_VERSION`).
    pub version: u32,
    /// Recycled from a retired segment ([`SEGMENT_FLAG_RECYCLED`]; version ≥ 2).
    pub recycled: bool,
}

impl SegmentHeader {
    /// A header of the current version for a new (not recycled) segment.
    pub fn new(base_offset: u64, created_at_ms: u64, capacity: u64) -> SegmentHeader {
        SegmentHeader {
            base_offset,
            created_at_ms,
            capacity,
            version: FORMAT_VERSION,
            recycled: false,
        }
    }

    /// The seed of this segment's record CRCs.
    pub fn record_seed(&self) -> RecordSeed {
        if self.version >= 2 {
            RecordSeed::for_base(self.base_offset)
        } else {
            RecordSeed::UNSEEDED
        }
    }
}

/// What a record's CRC32C starts from. Version 2 segments start it from the CRC32C of
/// the segment's base offset, so a record is valid only inside the segment (incarnation)
/// that wrote it: when a retired segment file is recycled, its old records become bytes
/// that fail every check, without zeroing the file first. Base offsets never repeat, so
/// two incarnations of a file never share a base; they share a seed with probability
/// 2^-32 (the odds of any CRC collision), and retention refuses to recycle a file into a
/// base whose seed equals the file's previous one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RecordSeed(u32);

impl RecordSeed {
    /// Version 1 segments: a plain CRC32C.
    pub const UNSEEDED: RecordSeed = RecordSeed(0);

    /// The seed of the version 2 segment at `base_offset`.
    pub fn for_base(base_offset: u64) -> RecordSeed {
        RecordSeed(crc32c::crc32c(&base_offset.to_le_bytes()))
    }
}

/// Encodes a segment header.
///
/// ```text
/// segment_header := magic:[u8;8]="CONFABLG" version:u32 header_bytes:u32=64
///                   base_offset:u64 created_at_ms:u64 capacity:u64
///                   flags:u32 (version ≥ 2; zeros in version 1)
///                   reserved:[u8;16]=0 crc32c:u32        (crc over the first 60 bytes)
/// ```
///
/// Writes `header.version` as given (tests write version 1 segments this way).
pub fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&header.version.to_le_bytes());
    out.extend_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&header.base_offset.to_le_bytes());
    out.extend_from_slice(&header.created_at_ms.to_le_bytes());
    out.extend_from_slice(&header.capacity.to_le_bytes());
    let flags = if header.recycled {
        SEGMENT_FLAG_RECYCLED
    } else {
        0
    };
    out.extend_from_slice(&flags.to_le_bytes());
    out.resize(SEGMENT_HEADER_BYTES - 4, 0);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let mut fixed = [0u8; SEGMENT_HEADER_BYTES];
    fixed.copy_from_slice(&out);
    fixed
}

/// Decodes and verifies a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, Invalid> {
    let head = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(Invalid("short segment header"))?;
    let crc_stored = le_u32(head, SEGMENT_HEADER_BYTES - 4).ok_or(Invalid("short"))?;
    let covered = head
        .get(..SEGMENT_HEADER_BYTES - 4)
        .ok_or(Invalid("short"))?;
    if crc32c::crc32c(covered) != crc_stored {
        return Err(Invalid("segment header crc mismatch"));
    }
    if head.get(..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(Invalid("bad segment magic"));
    }
    let version = le_u32(head, 8).ok_or(Invalid("short"))?;
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(Invalid("unsupported segment format version"));
    }
    if le_u32(head, 12) != Some(SEGMENT_HEADER_BYTES as u32) {
        return Err(Invalid("unexpected segment header size"));
    }
    let flags = if version >= 2 {
        le_u32(head, 40).ok_or(Invalid("short"))?
    } else {
        0
    };
    if flags & !SEGMENT_FLAGS_KNOWN != 0 {
        return Err(Invalid("unknown segment flags"));
    }
    let header = SegmentHeader {
        base_offset: le_u64(head, 16).ok_or(Invalid("short"))?,
        created_at_ms: le_u64(head, 24).ok_or(Invalid("short"))?,
        capacity: le_u64(head, 32).ok_or(Invalid("short"))?,
        version,
        recycled: flags & SEGMENT_FLAG_RECYCLED != 0,
    };
    if header.capacity < SEGMENT_HEADER_BYTES as u64 {
        return Err(Invalid("segment capacity below header size"));
    }
    Ok(header)
}

/// The fixed fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record holds.
    pub kind: RecordKind,
    /// Conversation (0 for metadata records).
    pub conversation_id: u64,
    /// Conversation sequence (metadata: the log-wide metadata sequence). Starts at 1.
    pub seq: u64,
    /// Snowflake message id chosen by the caller (0 for metadata).
    pub message_id: u64,
    /// Caller's wall-clock ms.
    pub timestamp_ms: u64,
    /// Log offset of the previous record of the same stream, or [`OFFSET_NONE`].
    pub prev_offset: u64,
    /// Distance back from this record's offset to the point up to which the log was
    /// known to be fdatasync'ed when this record was written (see FORMAT.md, recovery).
    pub stable_back: u32,
    /// Optional idempotency key.
    pub key: Option<IdempotencyKey>,
}

/// A decoded record borrowing its payload from the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The fixed fields.
    pub header: RecordHeader,
    /// The payload.
    pub payload: &'a [u8],
    /// Bytes the record occupies on disk, padding included.
    pub padded_len: usize,
}

/// Unpadded record length (header, key, payload): the value of the `length` word.
pub fn record_len(payload_len: usize, has_key: bool) -> usize {
    RECORD_HEADER_BYTES + if has_key { RECORD_KEY_BYTES } else { 0 } + payload_len
}

/// Rounds up to [`RECORD_ALIGN`].
pub fn align_up(len: usize) -> usize {
    len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Encodes one record, appending it to `out`; returns the padded length written.
///
/// ```text
/// record  := length:u32 crc32c:u32 kind:u8 flags:u8 reserved:u16=0 stable_back:u32
///            conversation_id:u64 seq:u64 message_id:u64 timestamp_ms:u64 prev_offset:u64
///            [key:[u8;16]  if flags & FLAG_KEY]
///            payload:[u8; length - 56 - (16 if key)]
///            padding:[u8; align8(length) - length] = 0
/// crc32c  := CRC32C(length bytes ++ every byte after the crc field, padding included),
///            started from the segment's `seed` (version 2: CRC32C of its base offset)
/// ```
///
/// The caller guarantees the payload limit; asserted here because a record we cannot
/// decode must never be written.
pub fn encode_record(
    seed: RecordSeed,
    header: &RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> usize {
    assert!(payload.len() <= crate::limits::RECORD_PAYLOAD_BYTES_MAX);
    assert!(header.kind.is_valid());
    assert!(header.seq >= 1);
    let length = record_len(payload.len(), header.key.is_some());
    let padded = align_up(length);
    let start = out.len();
    out.reserve(padded);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // crc, patched below
    out.push(header.kind.to_byte());
    out.push(if header.key.is_some() { FLAG_KEY } else { 0 });
    out.extend_from_slice(&[0u8; 2]);
    out.extend_from_slice(&header.stable_back.to_le_bytes());
    for field in [
        header.conversation_id,
        header.seq,
        header.message_id,
        header.timestamp_ms,
        header.prev_offset,
    ] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    if let Some(key) = &header.key {
        out.extend_from_slice(key);
    }
    out.extend_from_slice(payload);
    out.resize(start + padded, 0);
    let record = out.get_mut(start..).unwrap_or_default();
    let crc = record_crc(seed, record);
    if let Some(slot) = record.get_mut(4..8) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    padded
}

/// CRC32C of a padded record from `seed`: the length word, then everything after the
/// CRC field.
fn record_crc(seed: RecordSeed, record: &[u8]) -> u32 {
    let head = record.get(..4).unwrap_or_default();
    let tail = record.get(8..).unwrap_or_default();
    crc32c::crc32c_append(crc32c::crc32c_append(seed.0, head), tail)
}

/// Decodes the record at the start of `buf` (the bytes from a record position to the
/// end of the segment whose record CRCs start from `seed`). `Ok(None)`: a zero length
/// word, i.e. the end of written data (bytes past the end of `buf` count as zeros).
/// `Err`: the bytes are not a valid record of this segment.
pub fn decode_record(seed: RecordSeed, buf: &[u8]) -> Result<Option<RecordView<'_>>, Invalid> {
    let length = match le_u32(buf, 0) {
        Some(length) => length as usize,
        None if buf.iter().all(|b| *b == 0) => return Ok(None),
        None => return Err(Invalid("truncated length word")),
    };
    if length == 0 {
        return Ok(None);
    }
    if !(RECORD_HEADER_BYTES..=crate::limits::RECORD_BYTES_MAX).contains(&length) {
        return Err(Invalid("record length out of range"));
    }
    let padded = align_up(length);
    let record = buf
        .get(..padded)
        .ok_or(Invalid("record runs past segment end"))?;
    let crc_stored = le_u32(record, 4).ok_or(Invalid("short"))?;
    if record_crc(seed, record) != crc_stored {
        return Err(Invalid("record crc mismatch"));
    }
    let header = decode_record_header(record, length)?;
    let key_bytes = if header.key.is_some() {
        RECORD_KEY_BYTES
    } else {
        0
    };
    let payload = record
        .get(RECORD_HEADER_BYTES + key_bytes..length)
        .ok_or(Invalid("record shorter than its key"))?;
    Ok(Some(RecordView {
        header,
        payload,
        padded_len: padded,
    }))
}

/// Parses the fixed fields of a record whose CRC already matched.
fn decode_record_header(record: &[u8], length: usize) -> Result<RecordHeader, Invalid> {
    let short = Invalid("short record header");
    let kind_byte = *record.get(8).ok_or(short)?;
    let flags = *record.get(9).ok_or(short)?;
    let kind = RecordKind::from_byte(kind_byte).ok_or(Invalid("unknown record kind"))?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(Invalid("unknown record flags"));
    }
    if record.get(10..12) != Some(&[0u8, 0][..]) {
        return Err(Invalid("reserved record bytes not zero"));
    }
    if record
        .get(length..)
        .is_some_and(|pad| pad.iter().any(|b| *b != 0))
    {
        return Err(Invalid("record padding not zero"));
    }
    let key = if flags & FLAG_KEY != 0 {
        if length < RECORD_HEADER_BYTES + RECORD_KEY_BYTES {
            return Err(Invalid("record shorter than its key"));
        }
        let mut key = [0u8; RECORD_KEY_BYTES];
        key.copy_from_slice(
            record
                .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + 16)
                .ok_or(short)?,
        );
        Some(key)
    } else {
        None
    };
    let header = RecordHeader {
        kind,
        stable_back: le_u32(record, 12).ok_or(short)?,
        conversation_id: le_u64(record, 16).ok_or(short)?,
        seq: le_u64(record, 24).ok_or(short)?,
        message_id: le_u64(record, 32).ok_or(short)?,
        timestamp_ms: le_u64(record, 40).ok_or(short)?,
        prev_offset: le_u64(record, 48).ok_or(short)?,
        key,
    };
    if header.seq == 0 {
        return Err(Invalid("record sequence is zero"));
    }
    Ok(header)
}

/// Segment file name for a base offset: 20 decimal digits, zero-padded, `.log`.
pub fn segment_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// Parses a segment file name back into its base offset.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads a little-endian `u32` at `at`, if the bytes are there.
pub fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    bytes.try_into().ok().map(u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `at`, if the bytes are there.
pub fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    bytes.try_into().ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEED: RecordSeed = RecordSeed(0x1234_5678);

    fn header(key: Option<IdempotencyKey>) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Message,
            conversation_id: 42,
            seq: 7,
            message_id: 0xdead_beef,
            timestamp_ms: 1_700_000_000_000,
            prev_offset: 128,
            stable_back: 64,
            key,
        }
    }

    #[test]
    fn record_golden_layout() {
        let mut out = Vec::new();
        let padded = encode_record(SEED, &header(None), b"hi", &mut out);
        assert_eq!(padded, 64);
        assert_eq!(out.len(), 64);
        assert_eq!(&out[0..4], &58u32.to_le_bytes());
        assert_eq!(out[8], 1);
        assert_eq!(out[9], 0);
        assert_eq!(&out[12..16], &64u32.to_le_bytes());
        assert_eq!(&out[16..24], &42u64.to_le_bytes());
        assert_eq!(&out[56..58], b"hi");
        assert!(out[58..].iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_length_is_end_of_data() {
        assert_eq!(decode_record(SEED, &[0u8; 64]), Ok(None));
        assert_eq!(decode_record(SEED, &[]), Ok(None));
        assert_eq!(decode_record(SEED, &[0, 0]), Ok(None));
        assert!(decode_record(SEED, &[1, 0]).is_err());
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut out = Vec::new();
        encode_record(SEED, &header(Some([9; 16])), b"payload bytes", &mut out);
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let decoded = decode_record(SEED, &bad);
            assert!(
                !matches!(decoded, Ok(Some(_))),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn segment_header_round_trip_and_flips() {
        let mut h = SegmentHeader::new(1 << 40, 5, 1 << 20);
        let bytes = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&bytes), Ok(h));
        h.recycled = true;
        let recycled = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&recycled), Ok(h));
        assert_eq!(recycled[40], 1, "flags word at byte 40");
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_segment_header(&bytes[..63]).is_err());
    }

    #[test]
    fn version_1_headers_are_read_unseeded_and_unknown_flags_refused() {
        let mut v1 = SegmentHeader::new(4096, 5, 1 << 20);
        v1.version = 1;
        let bytes = encode_segment_header(&v1);
        let read = decode_segment_header(&bytes).unwrap();
        assert_eq!(read.version, 1);
        assert_eq!(read.record_seed(), RecordSeed::UNSEEDED);
        let v2 = SegmentHeader::new(4096, 5, 1 << 20);
        assert_eq!(v2.record_seed(), RecordSeed::for_base(4096));
        assert_ne!(v2.record_seed(), RecordSeed::for_base(8192));
        for (version, flags) in [(2u32, 2u32), (3, 0), (0, 0)] {
            let mut bad = encode_segment_header(&v2);
            bad[8..12].copy_from_slice(&version.to_le_bytes());
            bad[40..44].copy_from_slice(&flags.to_le_bytes());
            let crc = crc32c::crc32c(&bad[..60]);
            bad[60..64].copy_from_slice(&crc.to_le_bytes());
            assert!(
                decode_segment_header(&bad).is_err(),
                "v{version} flags {flags}"
            );
        }
    }

    #[test]
    fn a_record_is_valid_only_under_the_seed_that_wrote_it() {
        let mut out = Vec::new();
        encode_record(
            RecordSeed::for_base(1 << 20),
            &header(None),
            b"hi",
            &mut out,
        );
        let decode = |seed| decode_record(seed, &out);
        assert!(matches!(decode(RecordSeed::for_base(1 << 20)), Ok(Some(_))));
        for other in [RecordSeed::for_base(2 << 20), RecordSeed::UNSEEDED] {
            assert_eq!(decode(other), Err(Invalid("record crc mismatch")));
        }
        // Unseeded is exactly the version 1 CRC: plain CRC32C of the covered bytes.
        let mut v1 = Vec::new();
        encode_record(RecordSeed::UNSEEDED, &header(None), b"hi", &mut v1);
        let plain = crc32c::crc32c_append(crc32c::crc32c(&v1[..4]), &v1[8..]);
        assert_eq!(&v1[4..8], &plain.to_le_bytes());
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(0), "00000000000000000000.log");
        assert_eq!(parse_segment_name("00000000000000004096.log"), Some(4096));
        assert_eq!(parse_segment_name("4096.log"), None);
        assert_eq!(parse_segment_name("0000000000000000409x.log"), None);
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn kinds_round_trip() {
        for byte in 0..=255u8 {
            if let Some(kind) = RecordKind::from_byte(byte) {
                assert_eq!(kind.to_byte(), byte);
                assert!(kind.is_valid());
            }
        }
        assert!(!RecordKind::Custom(3).is_valid());
        assert!(RecordKind::System.is_conversation());
        assert!(!RecordKind::Cursor.is_conversation());
    }

    proptest! {
        #[test]
        fn record_round_trip(
            conversation_id: u64, seq in 1u64.., message_id: u64, timestamp_ms: u64,
            prev_offset: u64, stable_back: u32, key: Option<[u8; 16]>,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            kind_byte in prop::sample::select(vec![1u8, 2, 16, 17, 18, 19, 20, 21, 64, 127]),
        ) {
            let kind = RecordKind::from_byte(kind_byte).unwrap();
            let h = RecordHeader {
                kind, conversation_id, seq, message_id, timestamp_ms, prev_offset,
                stable_back, key,
            };
            let mut out = vec![0xAA; 3];
            let padded = encode_record(SEED, &h, &payload, &mut out);
            prop_assert_eq!(out.len(), 3 + padded);
            prop_assert_eq!(padded % RECORD_ALIGN, 0);
            out.extend_from_slice(&[0u8; 16]);
            let view = decode_record(SEED, &out[3..]).unwrap().unwrap();
            prop_assert_eq!(view.header, h);
            prop_assert_eq!(view.payload, &payload[..]);
            prop_assert_eq!(view.padded_len, padded);
            prop_assert_eq!(decode_record(SEED, &out[3 + padded..]), Ok(None));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(SEED, &bytes);
            let _ = decode_segment_header(&bytes);
        }
    }
}
