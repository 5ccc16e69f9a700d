//! Where checkpoints live on disk: two slot files, `checkpoint-0` and `checkpoint-1`,
//! overwritten in place and in turn; the valid one with the higher offset is the
//! checkpoint (format in `FORMAT.md`, "Checkpoint slots").
//!
//! Why slots and not a new file renamed over the old one (format v2 did that): a new
//! file costs a `fallocate`, the conversion of its unwritten extents at fdatasync, a
//! rename and a directory fsync — two journal commits, each with a device cache flush,
//! every 64 MiB of log — and the appends' fdatasyncs queue behind them (session 10 timed
//! the allocation, rename and directory fsync at 3–13 ms). A slot is written blocks
//! inside the file's size, so rewriting it is data writes and one fdatasync with no
//! metadata. The slot not holding the newest durable checkpoint is the one rewritten,
//! so a write torn by a crash (its CRC fails) leaves the other, which is the checkpoint
//! retention trusted.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::checkpoint::{decode_checkpoint, Checkpoint, CHECKPOINT_NAME};
use crate::error::{io_err, Error, Result};
use crate::limits::{
    CHECKPOINT_BYTES_MAX, CHECKPOINT_SLOT_ALIGN, CHECKPOINT_SLOT_GROWTH_DIVISOR,
    CHECKPOINT_WRITE_BYTES,
};
use crate::storage::{Storage, DIRECT_ALIGN};

/// The two slot files.
pub const CHECKPOINT_SLOT_NAMES: [&str; 2] = ["checkpoint-0", "checkpoint-1"];
/// Bytes before the checkpoint in a slot: its length, `u64` little-endian.
const SLOT_HEADER_BYTES: usize = 8;

/// True for a name recovery treats as a checkpoint file (a slot, or the single file of
/// format v2).
pub(crate) fn is_checkpoint_file(name: &str) -> bool {
    name == CHECKPOINT_NAME || CHECKPOINT_SLOT_NAMES.contains(&name)
}

/// Where the newest valid checkpoint was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckpointSource {
    /// A slot (0 or 1).
    Slot(usize),
    /// The single `checkpoint` file a format v2 log wrote.
    Legacy,
}

/// What each slot holds, so the next checkpoint goes to the one not holding the newest.
/// Shared by whoever writes checkpoints (the log itself, or `PipelinedLog`'s checkpoint
/// thread), one write at a time.
#[derive(Debug)]
pub(crate) struct CheckpointSlots {
    /// Offset of the durable checkpoint each slot holds; `None` when it holds none this
    /// process counts on (absent, torn, being rewritten, or not the one recovery used).
    held: [Option<u64>; 2],
    /// This process fsynced the directory after the slot's file existed, so its name
    /// is durable. A slot's first successful write in a process syncs the directory
    /// (a file created by a write that failed, then retried, is covered too).
    named: [bool; 2],
    /// A v2 `checkpoint` file is still there: removed once a slot holds a newer one.
    legacy: bool,
}

/// [`CheckpointSlots`] behind the lock its writers share.
pub(crate) type SharedSlots = Arc<Mutex<CheckpointSlots>>;

impl CheckpointSlots {
    /// After recovery used the checkpoint at `offset` from `used` (if any), and whether
    /// a v2 `checkpoint` file exists.
    pub(crate) fn after_recovery(
        used: Option<CheckpointSource>,
        offset: u64,
        legacy: bool,
    ) -> SharedSlots {
        let mut held = [None, None];
        if let Some(CheckpointSource::Slot(slot)) = used {
            if let Some(held) = held.get_mut(slot) {
                *held = Some(offset);
            }
        }
        Arc::new(Mutex::new(CheckpointSlots {
            held,
            named: [false, false],
            legacy,
        }))
    }

    /// The slot the next write goes to: one holding nothing counted on, else the one
    /// with the older checkpoint.
    pub(crate) fn target(&self) -> usize {
        match self.held {
            [None, _] => 0,
            [_, None] => 1,
            [Some(a), Some(b)] => usize::from(a > b),
        }
    }

    /// Offset of the newest checkpoint the slots hold.
    fn newest(&self) -> Option<u64> {
        self.held.iter().flatten().max().copied()
    }
}

/// Writes the encoded checkpoint as of `offset` into the slot that does not hold the
/// newest one, and fdatasyncs it; once this returns `Ok` the checkpoint is durable and
/// is the one recovery loads. On an error the slot may be torn; the other still holds
/// the previous checkpoint, and the next write goes to the same slot again. A
/// checkpoint older than the newest one written is refused: written, it would put the
/// next write over the newest.
pub(crate) fn write_checkpoint_file<S: Storage>(
    storage: &mut S,
    slots: &SharedSlots,
    offset: u64,
    checkpoint: &[u8],
) -> Result<()> {
    // A writer that panicked mid-write left its slot's `held` at `None`: the same slot
    // again.
    let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
    if slots.newest().is_some_and(|newest| offset < newest) {
        return Err(Error::InvalidRequest(
            "checkpoint older than the newest one written",
        ));
    }
    let slot = slots.target();
    let name = slot_name(slot);
    let named = slots.named.get(slot).copied().unwrap_or(false);
    if let Some(held) = slots.held.get_mut(slot) {
        *held = None; // being rewritten: it holds nothing counted on until durable
    }
    write_slot(storage, name, checkpoint, !named)?;
    let slots = &mut *slots;
    if let (Some(held), Some(named)) = (slots.held.get_mut(slot), slots.named.get_mut(slot)) {
        *held = Some(offset);
        *named = true;
    }
    if slots.legacy {
        // Unsynced: if it comes back after a crash, it is older than this slot.
        match storage.remove(CHECKPOINT_NAME) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", CHECKPOINT_NAME)(e)),
        }
        slots.legacy = false;
    }
    Ok(())
}

/// The file of slot `slot` (0 or 1).
fn slot_name(slot: usize) -> &'static str {
    let [first, second] = CHECKPOINT_SLOT_NAMES;
    if slot == 0 {
        first
    } else {
        second
    }
}

/// One slot write: the length word and the checkpoint from the slot's start, zeros to
/// the next 4 KiB, in `CHECKPOINT_WRITE_BYTES` `O_DIRECT` pieces; then one fdatasync,
/// and a directory fsync if `sync_dir` (the slot's name is not known durable yet).
/// A slot too small for it grows first, and its new space is zero-written at once, so
/// every later write into it overwrites written blocks.
fn write_slot<S: Storage>(
    storage: &mut S,
    name: &str,
    checkpoint: &[u8],
    sync_dir: bool,
) -> Result<()> {
    let image_len = (SLOT_HEADER_BYTES + checkpoint.len()).next_multiple_of(DIRECT_ALIGN);
    let capacity = match storage.len(name) {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            storage.create(name).map_err(io_err("create", name))?;
            0
        }
        Err(e) => return Err(io_err("stat", name)(e)),
    };
    let grown = if (capacity as usize) < image_len {
        let grown = slot_capacity(image_len);
        storage
            .allocate(name, grown as u64)
            .map_err(io_err("fallocate", name))?;
        Some(grown)
    } else {
        None
    };
    let header = (checkpoint.len() as u64).to_le_bytes();
    // Staged at an aligned address, so `O_DIRECT` writes it as is (no bounce copy).
    let mut staging = vec![0u8; CHECKPOINT_WRITE_BYTES + DIRECT_ALIGN];
    let aligned = staging.as_ptr().align_offset(DIRECT_ALIGN);
    let piece = staging
        .get_mut(aligned..aligned + CHECKPOINT_WRITE_BYTES)
        .ok_or_else(|| io_err("write", name)(io::Error::other("staging buffer too short")))?;
    let end = grown.unwrap_or(image_len);
    let mut at = 0;
    while at < end {
        let len = CHECKPOINT_WRITE_BYTES.min(end - at);
        let out = piece
            .get_mut(..len)
            .ok_or_else(|| io_err("write", name)(io::Error::other("piece past its buffer")))?;
        fill_image(out, at, &header, checkpoint);
        storage
            .write_direct(name, at as u64, out)
            .map_err(io_err("write", name))?;
        at += len;
    }
    storage.sync(name).map_err(io_err("sync", name))?;
    if sync_dir {
        storage.sync_dir().map_err(io_err("sync_dir", name))?;
    }
    Ok(())
}

/// Bytes `[at, at + out.len())` of a slot image: `header`, `checkpoint`, then zeros.
fn fill_image(out: &mut [u8], at: usize, header: &[u8], checkpoint: &[u8]) {
    out.fill(0);
    for (part, part_at) in [(header, 0), (checkpoint, header.len())] {
        let from = at.max(part_at);
        let to = (at + out.len()).min(part_at + part.len());
        let dst = out.get_mut(from.saturating_sub(at)..to.saturating_sub(at));
        let src = part.get(from.saturating_sub(part_at)..to.saturating_sub(part_at));
        if let (true, Some(dst), Some(src)) = (from < to, dst, src) {
            dst.copy_from_slice(src);
        }
    }
}

/// The size a slot grows to when an image of `image_len` bytes does not fit: room for
/// a quarter more (checkpoints grow a little each time), in `CHECKPOINT_SLOT_ALIGN`
/// steps.
fn slot_capacity(image_len: usize) -> usize {
    let wanted = image_len + image_len / CHECKPOINT_SLOT_GROWTH_DIVISOR;
    wanted.next_multiple_of(CHECKPOINT_SLOT_ALIGN)
}

/// What recovery found among the checkpoint files.
pub(crate) struct LoadedCheckpoints {
    /// The valid checkpoint with the highest offset, and where it was.
    pub newest: Option<(Checkpoint, CheckpointSource)>,
    /// Checkpoint files present but not valid, each with why (a torn slot write is
    /// expected after a crash).
    pub invalid: Vec<(String, String)>,
    /// A v2 `checkpoint` file is present.
    pub legacy: bool,
}

/// Reads every checkpoint file in `names` (a slot's length word, then its checkpoint
/// with its CRC) and picks the valid one with the highest offset.
pub(crate) fn load_newest<S: Storage>(
    storage: &mut S,
    names: &[String],
) -> Result<LoadedCheckpoints> {
    let mut loaded = LoadedCheckpoints {
        newest: None,
        invalid: Vec::new(),
        legacy: false,
    };
    let sources = [
        (CHECKPOINT_SLOT_NAMES[0], CheckpointSource::Slot(0)),
        (CHECKPOINT_SLOT_NAMES[1], CheckpointSource::Slot(1)),
        (CHECKPOINT_NAME, CheckpointSource::Legacy),
    ];
    for (name, source) in sources {
        if !names.iter().any(|n| n == name) {
            continue;
        }
        loaded.legacy |= source == CheckpointSource::Legacy;
        match read_checkpoint(storage, name, source)? {
            Ok(ckpt) => {
                let newer = loaded
                    .newest
                    .as_ref()
                    .is_none_or(|(best, _)| ckpt.offset > best.offset);
                if newer {
                    loaded.newest = Some((ckpt, source));
                }
            }
            Err(reason) => loaded.invalid.push((name.to_owned(), reason)),
        }
    }
    Ok(loaded)
}

/// One checkpoint file: `Ok(Err(reason))` when it is not a valid checkpoint.
fn read_checkpoint<S: Storage>(
    storage: &mut S,
    name: &str,
    source: CheckpointSource,
) -> Result<std::result::Result<Checkpoint, String>> {
    let len = storage.len(name).map_err(io_err("stat", name))?;
    // A slot is larger than its checkpoint by its length word, up to a quarter and an
    // alignment step; a v2 file is exactly its checkpoint.
    let file_limit = match source {
        CheckpointSource::Slot(_) => {
            slot_capacity(CHECKPOINT_BYTES_MAX as usize + SLOT_HEADER_BYTES) as u64
        }
        CheckpointSource::Legacy => CHECKPOINT_BYTES_MAX,
    };
    if len > file_limit {
        return Ok(Err(
            "checkpoint file larger than CHECKPOINT_BYTES_MAX".into()
        ));
    }
    // Mapped, not read. A slot is only rewritten by the checkpoint writer, which starts
    // after recovery and never writes the slot recovery loaded until a newer one is
    // durable; the map is dropped before this returns.
    let map = storage.map(name).map_err(io_err("mmap", name))?;
    storage.close(name);
    let bytes = map.as_ref();
    let body = match source {
        CheckpointSource::Legacy => Some(bytes),
        CheckpointSource::Slot(_) => slot_body(bytes),
    };
    let Some(body) = body else {
        return Ok(Err("slot's length word is past its end".into()));
    };
    Ok(decode_checkpoint(body).map_err(|invalid| invalid.0.to_string()))
}

/// The checkpoint bytes a slot's length word names, if they are inside the slot.
fn slot_body(slot: &[u8]) -> Option<&[u8]> {
    let word: [u8; SLOT_HEADER_BYTES] = slot.get(..SLOT_HEADER_BYTES)?.try_into().ok()?;
    let len = usize::try_from(u64::from_le_bytes(word)).ok()?;
    slot.get(SLOT_HEADER_BYTES..SLOT_HEADER_BYTES.checked_add(len)?)
}

/// Removes every checkpoint file (recovery found the newest one disagreeing with the
/// log and rebuilt from a full scan: a stale slot must not come back as "newest" once
/// a new checkpoint lands in the other slot), then syncs the directory.
pub(crate) fn remove_all<S: Storage>(storage: &mut S, names: &[String]) -> Result<()> {
    for name in names.iter().filter(|n| is_checkpoint_file(n)) {
        storage.remove(name).map_err(io_err("remove", name))?;
    }
    storage.sync_dir().map_err(io_err("sync_dir", "."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::encode_checkpoint;
    use crate::sim::{FaultOp, SimStorage};

    fn checkpoint(offset: u64, state_len: usize) -> Checkpoint {
        Checkpoint {
            offset,
            last_record: offset.saturating_sub(64),
            segments: vec![0],
            state: vec![0xAB; state_len],
            ..Checkpoint::default()
        }
    }

    fn names(sim: &mut SimStorage) -> Vec<String> {
        sim.list().unwrap()
    }

    fn newest(sim: &mut SimStorage) -> Option<(u64, CheckpointSource)> {
        let names = names(sim);
        let loaded = load_newest(sim, &names).unwrap();
        loaded.newest.map(|(c, source)| (c.offset, source))
    }

    #[test]
    fn image_pieces_place_the_length_word_the_checkpoint_and_zeros() {
        let checkpoint: Vec<u8> = (0..20u8).collect();
        let header = 20u64.to_le_bytes();
        let mut whole = vec![0xFF; 40];
        fill_image(&mut whole, 0, &header, &checkpoint);
        assert_eq!(&whole[..8], &header);
        assert_eq!(&whole[8..28], &checkpoint[..]);
        assert!(whole[28..].iter().all(|b| *b == 0));
        // Any split into pieces gives the same bytes.
        for cut in 1..40 {
            let (mut a, mut b) = (vec![0xFF; cut], vec![0xFF; 40 - cut]);
            fill_image(&mut a, 0, &header, &checkpoint);
            fill_image(&mut b, cut, &header, &checkpoint);
            a.extend_from_slice(&b);
            assert_eq!(a, whole, "cut at {cut}");
        }
    }

    fn write(sim: &mut SimStorage, slots: &SharedSlots, ckpt: &Checkpoint) -> Result<()> {
        write_checkpoint_file(sim, slots, ckpt.offset, &encode_checkpoint(ckpt))
    }

    /// Writes alternate between the slots; each load finds the last one written.
    #[test]
    fn writes_alternate_and_the_newest_wins() {
        let mut sim = SimStorage::new();
        let slots = CheckpointSlots::after_recovery(None, 0, false);
        for (i, offset) in [100u64, 200, 300, 400].into_iter().enumerate() {
            write(&mut sim, &slots, &checkpoint(offset, 10)).unwrap();
            assert_eq!(
                newest(&mut sim),
                Some((offset, CheckpointSource::Slot(i % 2)))
            );
        }
        assert!(!names(&mut sim).iter().any(|n| n == CHECKPOINT_NAME));
    }

    /// After recovery the next write goes to the slot recovery did not use.
    #[test]
    fn after_recovery_the_other_slot_is_written() {
        for used in [0, 1] {
            let slots =
                CheckpointSlots::after_recovery(Some(CheckpointSource::Slot(used)), 7, false);
            assert_eq!(slots.lock().unwrap().target(), 1 - used);
        }
        let slots = CheckpointSlots::after_recovery(Some(CheckpointSource::Legacy), 7, true);
        assert_eq!(slots.lock().unwrap().target(), 0);
    }

    /// A checkpoint older than the newest one written is refused and changes nothing:
    /// written, it would send the next write over the newest.
    #[test]
    fn an_older_checkpoint_than_the_newest_is_refused() {
        let mut sim = SimStorage::new();
        let slots = CheckpointSlots::after_recovery(None, 0, false);
        write(&mut sim, &slots, &checkpoint(100, 10)).unwrap();
        write(&mut sim, &slots, &checkpoint(300, 10)).unwrap();
        assert!(matches!(
            write(&mut sim, &slots, &checkpoint(200, 10)),
            Err(Error::InvalidRequest(_))
        ));
        assert_eq!(newest(&mut sim), Some((300, CheckpointSource::Slot(1))));
        write(&mut sim, &slots, &checkpoint(400, 10)).unwrap();
        assert_eq!(newest(&mut sim), Some((400, CheckpointSource::Slot(0))));
    }

    /// A checkpoint larger than its slot grows the slot (a quarter to spare, in
    /// alignment steps, zero-written); a smaller one after it leaves the size alone.
    #[test]
    fn a_slot_grows_for_a_larger_checkpoint_and_keeps_its_size() {
        let mut sim = SimStorage::new();
        let slots = CheckpointSlots::after_recovery(None, 0, false);
        let big = checkpoint(100, 3 * CHECKPOINT_SLOT_ALIGN);
        write(&mut sim, &slots, &big).unwrap();
        let big_len = encode_checkpoint(&big).len();
        let size = sim.len(CHECKPOINT_SLOT_NAMES[0]).unwrap() as usize;
        assert!(size >= big_len + big_len / CHECKPOINT_SLOT_GROWTH_DIVISOR);
        assert!(size.is_multiple_of(CHECKPOINT_SLOT_ALIGN));
        write(&mut sim, &slots, &checkpoint(200, 10)).unwrap(); // slot 1
        write(&mut sim, &slots, &checkpoint(300, 10)).unwrap(); // slot 0 again
        assert_eq!(sim.len(CHECKPOINT_SLOT_NAMES[0]).unwrap() as usize, size);
        assert_eq!(newest(&mut sim), Some((300, CheckpointSource::Slot(0))));
    }

    /// A crash at any moment of a slot write leaves a loadable checkpoint that is the
    /// new one or the one before it, never an older or a broken one. The sim loses or
    /// tears unsynced writes (and directory operations) at random.
    #[test]
    fn a_crash_mid_write_leaves_the_new_or_the_previous_checkpoint() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..300u64 {
            let mut sim = SimStorage::new();
            let slots = CheckpointSlots::after_recovery(None, 0, false);
            // Slot 0: 100, slot 1: 200 (durable); then 300 goes to slot 0 and crashes.
            for offset in [100u64, 200] {
                write(&mut sim, &slots, &checkpoint(offset, 200_000)).unwrap();
            }
            let third = checkpoint(300, 150_000 + seed as usize * 500);
            // The write reaches the file but its fdatasync fails: nothing is durable.
            sim.fail(FaultOp::Sync, 0);
            assert!(write(&mut sim, &slots, &third).is_err());
            assert_eq!(
                slots.lock().unwrap().target(),
                0,
                "a failed write is retried in place"
            );
            sim.crash(seed);
            let found = newest(&mut sim);
            assert!(
                matches!(
                    found,
                    Some((200, CheckpointSource::Slot(1))) | Some((300, CheckpointSource::Slot(0)))
                ),
                "seed {seed}: {found:?}"
            );
            outcomes.insert(found.map(|(offset, _)| offset));
        }
        assert_eq!(outcomes.len(), 2, "both outcomes seen: {outcomes:?}");
    }

    /// A slot's first write whose fdatasync failed left a file created by this
    /// process; the retry that succeeds still syncs the directory, so the slot's name
    /// survives a crash (the sim drops unsynced directory entries).
    #[test]
    fn a_retried_first_write_still_syncs_the_directory() {
        for seed in 0..50u64 {
            let mut sim = SimStorage::new();
            let slots = CheckpointSlots::after_recovery(None, 0, false);
            sim.fail(FaultOp::Sync, 0);
            assert!(write(&mut sim, &slots, &checkpoint(100, 10)).is_err());
            write(&mut sim, &slots, &checkpoint(100, 10)).unwrap();
            sim.crash(seed);
            assert_eq!(
                newest(&mut sim),
                Some((100, CheckpointSource::Slot(0))),
                "seed {seed}"
            );
        }
    }

    /// A v2 `checkpoint` file is read as a candidate and removed after the first slot
    /// write.
    #[test]
    fn a_legacy_checkpoint_is_loaded_and_then_replaced() {
        let mut sim = SimStorage::new();
        let legacy = encode_checkpoint(&checkpoint(500, 10));
        sim.create(CHECKPOINT_NAME).unwrap();
        sim.write_at(CHECKPOINT_NAME, 0, &legacy).unwrap();
        let names = names(&mut sim);
        let loaded = load_newest(&mut sim, &names).unwrap();
        assert!(loaded.legacy);
        let (ckpt, source) = loaded.newest.unwrap();
        assert_eq!((ckpt.offset, source), (500, CheckpointSource::Legacy));
        let slots = CheckpointSlots::after_recovery(Some(source), ckpt.offset, loaded.legacy);
        assert_eq!(slots.lock().unwrap().target(), 0);
        write(&mut sim, &slots, &checkpoint(600, 10)).unwrap();
        assert!(!sim.list().unwrap().iter().any(|n| n == CHECKPOINT_NAME));
        assert_eq!(newest(&mut sim), Some((600, CheckpointSource::Slot(0))));
    }

    /// A slot whose length word points past its end, or whose bytes fail the CRC, is
    /// reported invalid, not an error.
    #[test]
    fn broken_slots_are_invalid_not_errors() {
        let mut sim = SimStorage::new();
        let slots = CheckpointSlots::after_recovery(None, 0, false);
        write(&mut sim, &slots, &checkpoint(100, 10)).unwrap();
        write(&mut sim, &slots, &checkpoint(100, 10)).unwrap();
        sim.write_at(CHECKPOINT_SLOT_NAMES[0], 0, &u64::MAX.to_le_bytes())
            .unwrap();
        sim.write_at(CHECKPOINT_SLOT_NAMES[1], 20, &[0x55]).unwrap();
        let names = names(&mut sim);
        let loaded = load_newest(&mut sim, &names).unwrap();
        assert!(loaded.newest.is_none());
        assert_eq!(loaded.invalid.len(), 2, "{:?}", loaded.invalid);
    }
}
