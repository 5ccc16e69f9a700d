//! Recovery at every boundary, over `SimStorage`: cuts at every byte of the tail, bit
//! flips in tail and non-tail records, empty and missing segments, checkpoints older
//! than the log, clean and unclean reopen.

use log_engine::format::{decode_segment_header, segment_name, RecordSeed, SEGMENT_HEADER_BYTES};
use log_engine::recovery::record_positions;
use log_engine::sim::SimStorage;
use log_engine::{AppendRequest, CheckpointUse, Config, Error, Log, RecordKind, RecoveryMode};

fn config() -> Config {
    Config {
        segment_bytes: 8192,
        checkpoint_interval_bytes: u64::MAX,
        ..Config::default()
    }
}

fn req(conv: u64, id: u64, payload: &[u8]) -> AppendRequest<'_> {
    AppendRequest {
        conversation_id: conv,
        message_id: id,
        timestamp_ms: 1_000 + id,
        key: None,
        kind: RecordKind::Message,
        payload,
    }
}

fn open(sim: &SimStorage) -> log_engine::Result<(Log<SimStorage>, log_engine::RecoveryReport)> {
    Log::open(sim.clone(), config(), ())
}

/// Appends `n` records to conversation 1, one commit each. Returns their offsets.
fn fill(sim: &SimStorage, n: u64) -> Vec<u64> {
    let (mut log, _) = open(sim).unwrap();
    let offsets = (1..=n)
        .map(|i| {
            log.append(&req(1, i, format!("message {i}").as_bytes()))
                .unwrap()
                .offset
        })
        .collect();
    drop(log);
    offsets
}

fn seqs(log: &mut Log<SimStorage>, conv: u64) -> Vec<u64> {
    let page = log.read_after(conv, 0, 1000).unwrap();
    page.records.iter().map(|r| r.seq).collect()
}

#[test]
fn clean_reopen_keeps_everything() {
    let sim = SimStorage::new();
    fill(&sim, 5);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.truncated, None);
    assert_eq!(report.records_scanned, 5);
    assert_eq!(seqs(&mut log, 1), vec![1, 2, 3, 4, 5]);
    assert_eq!(log.append(&req(1, 6, b"six")).unwrap().seq, 6);
}

#[test]
fn tail_cut_at_every_byte_recovers_the_earlier_records() {
    let pristine = SimStorage::new();
    let offsets = fill(&pristine, 4);
    let name = segment_name(0);
    let bytes = pristine.bytes(&name).unwrap();
    let tail = offsets[3] as usize;
    let end = record_positions(&bytes, SEGMENT_HEADER_BYTES, RecordSeed::for_base(0)).len();
    assert_eq!(end, 4);
    let tail_len = bytes[tail..].iter().rposition(|b| *b != 0).unwrap() + 1;
    for garbage in [0u8, 0xA5] {
        // Zeros past the last non-zero byte change nothing; garbage in the padding does.
        let cuts = if garbage == 0 {
            tail_len
        } else {
            tail_len.div_ceil(8) * 8
        };
        for cut in 0..cuts {
            let sim = SimStorage::new();
            fill(&sim, 4);
            let mut damaged = bytes.clone();
            for b in &mut damaged[tail + cut..tail + 256] {
                *b = garbage;
            }
            sim.set_bytes(&name, damaged);
            let (mut log, report) = open(&sim).unwrap();
            assert_eq!(
                seqs(&mut log, 1),
                vec![1, 2, 3],
                "cut {cut} garbage {garbage}"
            );
            let truncated = report.truncated.is_some();
            assert_eq!(truncated, cut > 0 || garbage != 0, "cut {cut}");
            // Appending continues the sequence without a gap, and survives a reopen.
            assert_eq!(log.append(&req(1, 9, b"after")).unwrap().seq, 4);
            drop(log);
            let (mut log, report) = open(&sim).unwrap();
            assert_eq!(report.truncated, None);
            assert_eq!(seqs(&mut log, 1), vec![1, 2, 3, 4]);
        }
    }
}

#[test]
fn strict_mode_refuses_a_torn_tail() {
    let sim = SimStorage::new();
    let offsets = fill(&sim, 3);
    let name = segment_name(0);
    let mut bytes = sim.bytes(&name).unwrap();
    bytes[offsets[2] as usize + 20] ^= 1;
    sim.set_bytes(&name, bytes);
    let strict = Config {
        recovery_mode: RecoveryMode::Strict,
        ..config()
    };
    let err = Log::open(sim.clone(), strict, ()).err().unwrap();
    assert!(matches!(err, Error::Corruption { .. }), "{err}");
}

fn flip_and_open(record: usize, records: u64) -> Vec<(usize, log_engine::Result<Vec<u64>>)> {
    let pristine = SimStorage::new();
    let offsets = fill(&pristine, records);
    let name = segment_name(0);
    let bytes = pristine.bytes(&name).unwrap();
    let at = offsets[record] as usize;
    let len = record_positions(&bytes, at, RecordSeed::for_base(0))
        .get(1)
        .copied()
        .unwrap_or(at + 72)
        - at;
    let len = if record + 1 == offsets.len() { 72 } else { len };
    let mut results = Vec::new();
    for bit in 0..len * 8 {
        let sim = SimStorage::new();
        fill(&sim, records);
        let mut damaged = bytes.clone();
        damaged[at + bit / 8] ^= 1 << (bit % 8);
        sim.set_bytes(&name, damaged);
        let result = open(&sim).map(|(mut log, _)| seqs(&mut log, 1));
        results.push((bit, result));
    }
    results
}

#[test]
fn bit_flips_in_the_tail_record_are_truncated() {
    for (bit, result) in flip_and_open(3, 4) {
        assert_eq!(result.unwrap(), vec![1, 2, 3], "bit {bit}");
    }
}

#[test]
fn bit_flips_before_the_tail_are_corruption() {
    for (bit, result) in flip_and_open(2, 4) {
        match result {
            Err(Error::Corruption {
                segment, offset, ..
            }) => {
                assert_eq!(segment, segment_name(0));
                assert!(offset >= 64, "bit {bit}");
            }
            other => panic!("bit {bit}: expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn empty_tail_segment_is_an_interrupted_creation() {
    let sim = SimStorage::new();
    fill(&sim, 3);
    let sealed_end = sim.bytes(&segment_name(0)).unwrap().len() as u64;
    let mut storage = sim.clone();
    use log_engine::Storage;
    // A creation interrupted before the header was written: an empty file.
    storage.create(&segment_name(sealed_end)).unwrap();
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.removed, vec![segment_name(sealed_end)]);
    assert_eq!(seqs(&mut log, 1), vec![1, 2, 3]);
    // Strict mode refuses instead.
    drop(log);
    storage.create(&segment_name(sealed_end)).unwrap();
    let strict = Config {
        recovery_mode: RecoveryMode::Strict,
        ..config()
    };
    assert!(matches!(
        Log::open(sim.clone(), strict, ()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn empty_directory_and_lone_empty_segment_start_fresh() {
    let sim = SimStorage::new();
    use log_engine::Storage;
    sim.clone().create(&segment_name(0)).unwrap();
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert_eq!(log.append(&req(1, 1, b"x")).unwrap().seq, 1);
}

/// Many segments: records spread over sealed (mmap'ed) and active segments.
fn fill_segments(sim: &SimStorage, n: u64) {
    let (mut log, _) = open(sim).unwrap();
    for i in 1..=n {
        let payload = vec![i as u8; 300];
        log.append(&req(i % 3, i, &payload)).unwrap();
    }
    assert!(log.segment_bases().len() >= 3);
}

#[test]
fn missing_middle_segment_is_corruption() {
    let sim = SimStorage::new();
    fill_segments(&sim, 100);
    let names: Vec<String> = sim
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    sim.delete(&names[1]);
    match open(&sim) {
        Err(Error::Corruption { segment, .. }) => assert_eq!(segment, names[0]),
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
}

#[test]
fn missing_first_segment_without_checkpoint_is_corruption() {
    let sim = SimStorage::new();
    fill_segments(&sim, 100);
    sim.delete(&segment_name(0));
    assert!(matches!(open(&sim), Err(Error::Corruption { .. })));
}

#[test]
fn reads_span_sealed_and_active_segments() {
    let sim = SimStorage::new();
    fill_segments(&sim, 100);
    let (mut log, _) = open(&sim).unwrap();
    for conv in 0..3 {
        let page = log.read_after(conv, 0, 1000).unwrap();
        let expect: Vec<u64> = (1..=page.last_seq).collect();
        assert_eq!(
            page.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            expect
        );
        for r in &page.records {
            assert_eq!(r.conversation_id, conv);
            assert_eq!(r.payload.len(), 300);
        }
        let back = log.read_before(conv, page.last_seq, 5).unwrap();
        let expect: Vec<u64> = (page.last_seq - 5..page.last_seq).collect();
        assert_eq!(
            back.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            expect
        );
    }
}

#[test]
fn checkpoint_older_than_the_log() {
    let sim = SimStorage::new();
    let (mut log, _) = open(&sim).unwrap();
    for i in 1..=40 {
        log.append(&req(i % 4, i, &[7; 200])).unwrap();
    }
    let ckpt = log.checkpoint().unwrap();
    for i in 41..=80 {
        log.append(&req(i % 4, i, &[8; 200])).unwrap();
    }
    drop(log);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(ckpt));
    assert_eq!(report.records_scanned, 40);
    for conv in 0..4 {
        assert_eq!(seqs(&mut log, conv), (1..=20).collect::<Vec<_>>());
    }
    assert_eq!(log.append(&req(0, 99, b"x")).unwrap().seq, 21);
}

#[test]
fn corrupt_checkpoint_falls_back_to_a_full_scan() {
    let sim = SimStorage::new();
    let (mut log, _) = open(&sim).unwrap();
    for i in 1..=30 {
        log.append(&req(i % 2, i, &[1; 100])).unwrap();
    }
    log.checkpoint().unwrap();
    log.append(&req(0, 31, b"late")).unwrap();
    drop(log);
    let mut bytes = sim.bytes("checkpoint-0").unwrap();
    bytes[30] ^= 0x10;
    sim.set_bytes("checkpoint-0", bytes);
    let (mut log, report) = open(&sim).unwrap();
    assert!(matches!(report.checkpoint, CheckpointUse::Unusable(_)));
    assert_eq!(report.records_scanned, 31);
    assert_eq!(seqs(&mut log, 0).len(), 16);
    assert!(
        sim.bytes("checkpoint-0").is_none(),
        "after a full scan the checkpoints that disagreed are removed"
    );
}

/// A checkpoint write torn by a crash leaves its slot invalid; the other slot holds
/// the checkpoint before it, which recovery uses. The next checkpoint goes to the torn
/// slot, and the one after it to the other.
#[test]
fn a_torn_newest_slot_falls_back_to_the_previous_checkpoint() {
    let sim = SimStorage::new();
    let (mut log, _) = open(&sim).unwrap();
    for i in 1..=30 {
        log.append(&req(i % 3, i, &[1; 100])).unwrap();
    }
    let first = log.checkpoint().unwrap();
    for i in 31..=50 {
        log.append(&req(i % 3, i, &[2; 100])).unwrap();
    }
    let second = log.checkpoint().unwrap();
    assert!(second > first);
    drop(log);
    // Tear the newest (slot 1): its second half never reached the disk.
    let mut bytes = sim.bytes("checkpoint-1").unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + len / 2..8 + len].fill(0);
    sim.set_bytes("checkpoint-1", bytes);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(first));
    assert_eq!(report.records_scanned, 20);
    for conv in 0..3 {
        assert_eq!(seqs(&mut log, conv).len(), if conv == 0 { 16 } else { 17 });
    }
    log.append(&req(0, 51, b"after")).unwrap();
    let slot0 = sim.bytes("checkpoint-0").unwrap();
    let third = log.checkpoint().unwrap();
    drop(log);
    assert_eq!(
        sim.bytes("checkpoint-0").unwrap(),
        slot0,
        "the third checkpoint went to the torn slot, not over the one recovery used"
    );
    let (log, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(third));
    drop(log);
    // Tear the third as well: the first, still in slot 0, is what recovery falls back on.
    let mut bytes = sim.bytes("checkpoint-1").unwrap();
    bytes[8..16].fill(0xFF);
    sim.set_bytes("checkpoint-1", bytes);
    let (_, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(first));
}

/// A log written by format v2 has one `checkpoint` file without a slot's length word:
/// it is used, and removed once the first slot holds a newer checkpoint.
#[test]
fn a_v2_checkpoint_file_is_used_then_replaced_by_a_slot() {
    let sim = SimStorage::new();
    let (mut log, _) = open(&sim).unwrap();
    for i in 1..=20 {
        log.append(&req(i % 2, i, &[4; 80])).unwrap();
    }
    let at = log.checkpoint().unwrap();
    log.append(&req(0, 21, b"late")).unwrap();
    drop(log);
    let slot = sim.bytes("checkpoint-0").unwrap();
    let len = u64::from_le_bytes(slot[..8].try_into().unwrap()) as usize;
    {
        use log_engine::Storage;
        let mut storage = sim.clone();
        storage.create("checkpoint").unwrap();
        storage.sync_dir().unwrap();
    }
    sim.set_bytes("checkpoint", slot[8..8 + len].to_vec());
    sim.delete("checkpoint-0");
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(at));
    assert_eq!(report.records_scanned, 1);
    log.checkpoint().unwrap();
    drop(log);
    assert!(sim.bytes("checkpoint").is_none());
    assert!(sim.bytes("checkpoint-0").is_some());
    let (_, report) = open(&sim).unwrap();
    assert!(matches!(report.checkpoint, CheckpointUse::Used(_)));
}

#[test]
fn checkpoint_ahead_of_the_log_is_not_trusted() {
    // A checkpoint taken from another, longer log must not vouch for records this log
    // does not hold.
    let long = SimStorage::new();
    let (mut log, _) = open(&long).unwrap();
    for i in 1..=20 {
        log.append(&req(1, i, &[3; 50])).unwrap();
    }
    log.checkpoint().unwrap();
    drop(log);
    let short = SimStorage::new();
    fill(&short, 5);
    use log_engine::Storage;
    let mut storage = short.clone();
    storage.create("checkpoint-0").unwrap();
    short.set_bytes("checkpoint-0", long.bytes("checkpoint-0").unwrap());
    let (mut log, report) = open(&short).unwrap();
    assert!(
        matches!(report.checkpoint, CheckpointUse::Unusable(_)),
        "{report:?}"
    );
    assert_eq!(seqs(&mut log, 1), vec![1, 2, 3, 4, 5]);
}

#[test]
fn unclean_shutdown_keeps_every_acked_record() {
    for seed in 0..50 {
        let sim = SimStorage::new();
        let (mut log, _) = open(&sim).unwrap();
        let mut acked = 0;
        for i in 1..=30 {
            log.append_nowait(&req(5, i, &[i as u8; 150])).unwrap();
            if i % 4 == 0 {
                acked += log.commit().unwrap().len() as u64;
            }
        }
        // Pending records are encoded but never written: a crash loses them.
        drop(log);
        sim.crash(seed);
        let (mut log, _) = open(&sim).unwrap();
        let got = seqs(&mut log, 5);
        assert_eq!(got, (1..=acked).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[test]
fn checkpoint_after_an_empty_new_segment_is_usable() {
    use log_engine::sim::FaultOp;
    let sim = SimStorage::new();
    let (mut log, _) = open(&sim).unwrap();
    let mut i = 0;
    while log.segment_bases().len() == 1 {
        i += 1;
        log.append(&req(1, i, &[1; 500])).unwrap();
    }
    let bases = log.segment_bases();
    // Fill the second segment up to the brink, then fail the write of the batch that
    // rolls to a third: the third segment exists (header, zeros) with no record.
    while log.segment_bases().len() == 2 && log.watermarks().stable + 600 < bases[1] + 8192 {
        i += 1;
        log.append(&req(1, i, &[2; 500])).unwrap();
    }
    sim.fail(FaultOp::Write, 2); // header, zero fill, then the batch write fails
    let failed = log.append(&req(1, i + 1, &[3; 500]));
    assert!(
        matches!(failed, Err(Error::Io { op: "write", .. })),
        "{failed:?}"
    );
    drop(log);
    let (mut log, _) = open(&sim).unwrap();
    assert_eq!(log.segment_bases().len(), 3);
    let ckpt = log.checkpoint().unwrap();
    drop(log);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(ckpt));
    assert_eq!(seqs(&mut log, 1), (1..=i).collect::<Vec<_>>());
    assert_eq!(log.append(&req(1, 999, b"next")).unwrap().seq, i + 1);
}

/// A log whose active segment is a recycled one (retention keeps 2 segments, the spare
/// is prepared after every append): returns the log and the segment's name.
fn recycled_tail(sim: &SimStorage) -> (Log<SimStorage>, String) {
    let cfg = Config {
        retention_bytes: 2 * 8192,
        ..config()
    };
    let (mut log, _) = Log::open(sim.clone(), cfg, ()).unwrap();
    for i in 1..=400u64 {
        log.append(&req(2, i, &[i as u8; 500])).unwrap();
        log.apply_retention(0).unwrap();
        log.prepare_spare().unwrap();
        let active = segment_name(*log.segment_bases().last().unwrap());
        let bytes = sim.bytes(&active).unwrap();
        let header = decode_segment_header(&bytes).unwrap();
        // Fresh in a recycled file (its earlier records still there), with room for four
        // short records and more.
        let position = log.watermarks().stable - header.base_offset;
        let stale = bytes[4096..].iter().any(|b| *b != 0);
        if header.recycled && stale && position < 2048 {
            return (log, active);
        }
    }
    panic!("no recycled segment became active");
}

#[test]
fn a_recycled_segment_is_written_over_its_stale_records_and_reopens_clean() {
    let sim = SimStorage::new();
    let (mut log, active) = recycled_tail(&sim);
    let before = sim.bytes(&active).unwrap();
    assert!(
        before[4096..].iter().any(|b| *b != 0),
        "the recycled file still holds its earlier segment's records"
    );
    for id in 1..=4 {
        log.append(&req(1, id, format!("message {id}").as_bytes()))
            .unwrap();
    }
    let history = seqs(&mut log, 2);
    drop(log);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.truncated, None);
    assert_eq!(seqs(&mut log, 1), vec![1, 2, 3, 4]);
    assert_eq!(seqs(&mut log, 2), history);
    assert_eq!(log.append(&req(1, 5, b"five")).unwrap().seq, 5);
}

#[test]
fn a_recycled_tail_cut_at_every_byte_recovers_the_earlier_records() {
    let pristine = SimStorage::new();
    let (mut log, active) = recycled_tail(&pristine);
    for id in 1..=3 {
        log.append(&req(1, id, b"earlier")).unwrap();
    }
    // What the file held where the last record goes: the stale bytes a torn write of it
    // leaves behind.
    let stale = pristine.bytes(&active).unwrap();
    let last = log.append(&req(1, 4, b"the last record")).unwrap().offset;
    drop(log);
    let written = pristine.bytes(&active).unwrap();
    let base = decode_segment_header(&written).unwrap().base_offset;
    let tail = (last - base) as usize;
    let seed = RecordSeed::for_base(base);
    let len = record_positions(&written, tail, seed)
        .first()
        .map(|_| 72)
        .unwrap();
    let mut cuts = 0;
    for cut in 0..len {
        if stale[tail + cut..tail + len] == written[tail + cut..tail + len] {
            continue; // the stale bytes there equal the record's: not a cut
        }
        cuts += 1;
        let sim = pristine.clone_deep();
        let mut damaged = written.clone();
        damaged[tail + cut..].copy_from_slice(&stale[tail + cut..]);
        sim.set_bytes(&active, damaged);
        let (mut log, report) = open(&sim).unwrap();
        assert_eq!(seqs(&mut log, 1), vec![1, 2, 3], "cut {cut}");
        // Only stale bytes follow: nothing of this segment to cut, nothing reported.
        assert_eq!(report.truncated, None, "cut {cut}");
        assert_eq!(log.append(&req(1, 9, b"after")).unwrap().seq, 4);
        drop(log);
        let (mut log, report) = open(&sim).unwrap();
        assert_eq!(report.truncated, None);
        assert_eq!(seqs(&mut log, 1), vec![1, 2, 3, 4]);
    }
    assert!(
        cuts > len / 2,
        "only {cuts} of {len} cuts differ from the stale bytes"
    );
}

#[test]
fn a_torn_batch_in_a_recycled_tail_is_cut_and_never_comes_back() {
    let pristine = SimStorage::new();
    let (mut log, active) = recycled_tail(&pristine);
    log.append(&req(1, 1, b"acked")).unwrap();
    let stale = pristine.bytes(&active).unwrap();
    // One batch of three records; its first record is torn, the third is intact.
    let mut tickets = Vec::new();
    for id in 2..=4 {
        tickets.push(log.append_nowait(&req(1, id, &[id as u8; 100])).unwrap());
    }
    let acks = log.commit().unwrap();
    let first = acks.iter().map(|(_, a)| a.offset).min().unwrap();
    drop(log);
    let written = pristine.bytes(&active).unwrap();
    let base = decode_segment_header(&written).unwrap().base_offset;
    let at = (first - base) as usize;
    let sim = pristine.clone_deep();
    let mut damaged = written.clone();
    damaged[at + 8..at + 16].copy_from_slice(&stale[at + 8..at + 16]);
    damaged[at + 8] ^= 0xFF; // surely different from the record's own bytes
    sim.set_bytes(&active, damaged);
    let (mut log, report) = open(&sim).unwrap();
    let cut = report
        .truncated
        .expect("a valid record of the torn batch was cut");
    assert_eq!(cut.offset, first);
    assert_eq!(seqs(&mut log, 1), vec![1]);
    // A shorter record now ends where the torn batch's later records were: they must
    // not be read as its successors.
    assert_eq!(log.append(&req(1, 7, b"x")).unwrap().seq, 2);
    drop(log);
    let (mut log, report) = open(&sim).unwrap();
    assert_eq!(report.truncated, None);
    assert_eq!(seqs(&mut log, 1), vec![1, 2]);
    let _ = tickets;
}

#[test]
fn a_bit_flip_before_the_tail_of_a_recycled_segment_is_corruption() {
    let pristine = SimStorage::new();
    let (mut log, active) = recycled_tail(&pristine);
    let first = log.append(&req(1, 1, b"synced long ago")).unwrap().offset;
    for id in 2..=4 {
        log.append(&req(1, id, b"later batches")).unwrap();
    }
    drop(log);
    let written = pristine.bytes(&active).unwrap();
    let base = decode_segment_header(&written).unwrap().base_offset;
    let at = (first - base) as usize;
    for byte in [0, 9, 20, 60] {
        let sim = pristine.clone_deep();
        let mut damaged = written.clone();
        damaged[at + byte] ^= 0x10;
        sim.set_bytes(&active, damaged);
        match open(&sim) {
            Err(Error::Corruption { segment, .. }) => assert_eq!(segment, active),
            Err(e) => panic!("byte {byte}: {e}"),
            Ok(_) => panic!("byte {byte}: opened over damaged synced data"),
        }
    }
}
