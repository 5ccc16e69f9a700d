//! Segment rolls with a preallocated spare: the commit that rolls writes only the new
//! header and its batch (no zero filling), and crashes around the spare recover.

use log_engine::segment::SPARE_NAME;
use log_engine::sim::{FaultOp, SimStorage};
use log_engine::{AppendRequest, Config, Log, RecordKind};

const SEGMENT: u64 = 64 * 1024;

fn config() -> Config {
    Config {
        segment_bytes: SEGMENT,
        checkpoint_interval_bytes: u64::MAX,
        ..Config::default()
    }
}

fn req(conv: u64, id: u64) -> AppendRequest<'static> {
    AppendRequest {
        conversation_id: conv,
        message_id: id,
        timestamp_ms: id,
        key: None,
        kind: RecordKind::Message,
        payload: &[7; 1000],
    }
}

/// Appends one record per commit until the log rolls; returns the bytes written by the
/// commit that rolled and the next message id.
fn append_until_roll(log: &mut Log<SimStorage>, sim: &SimStorage, mut id: u64) -> (u64, u64) {
    let segments = log.segment_bases().len();
    loop {
        id += 1;
        let before = sim.bytes_written();
        log.append(&req(1, id)).unwrap();
        if log.segment_bases().len() > segments {
            return (sim.bytes_written() - before, id);
        }
    }
}

fn seqs(log: &mut Log<SimStorage>) -> Vec<u64> {
    let page = log.read_after(1, 0, 10_000).unwrap();
    page.records.iter().map(|r| r.seq).collect()
}

#[test]
fn a_roll_with_a_spare_does_not_zero_fill_in_commit() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    assert!(log.prepare_spare().unwrap());
    assert!(!log.prepare_spare().unwrap(), "one spare is enough");
    let (rolled, id) = append_until_roll(&mut log, &sim, 0);
    // Header of the new segment + the one-record batch (one 4 KiB block with
    // `direct_io`), nothing near a segment's size.
    assert!(
        rolled <= 64 + 4096,
        "the rolling commit wrote {rolled} bytes"
    );
    assert!(!log.has_spare());
    assert!(!sim.names().contains(&SPARE_NAME.to_owned()));
    // Without a spare, the roll falls back to zero-filling inline.
    let (rolled, id) = append_until_roll(&mut log, &sim, id);
    assert!(rolled >= SEGMENT - 64, "the fallback wrote {rolled} bytes");
    drop(log);
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    assert_eq!(seqs(&mut log), (1..=id).collect::<Vec<_>>());
}

#[test]
fn crash_during_spare_preparation_recovers() {
    for seed in 0..40 {
        let sim = SimStorage::new();
        let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
        for id in 1..=5 {
            log.append(&req(1, id)).unwrap();
        }
        // The zero fill fails part-way (or, for odd seeds, the spare is left unsynced).
        if seed % 2 == 0 {
            sim.fail(FaultOp::Write, 0);
            assert!(log.prepare_spare().is_err());
            assert!(!log.has_spare());
            // Appends are unaffected: preparation failing poisons nothing.
            log.append(&req(1, 6)).unwrap();
        } else {
            sim.fail(FaultOp::Sync, 0);
            assert!(log.prepare_spare().is_err());
            log.append(&req(1, 6)).unwrap();
        }
        drop(log);
        sim.crash(seed);
        let (mut log, report) = Log::open(sim.clone(), config(), ()).unwrap();
        assert!(!sim.names().contains(&SPARE_NAME.to_owned()));
        if report.removed.contains(&SPARE_NAME.to_owned()) {
            assert_eq!(report.removed, vec![SPARE_NAME.to_owned()]);
        }
        assert_eq!(seqs(&mut log), (1..=6).collect::<Vec<_>>());
        // A fresh spare is prepared over any leftover and used by the next roll.
        log.prepare_spare().unwrap();
        let (rolled, id) = append_until_roll(&mut log, &sim, 6);
        assert!(rolled <= 64 + 4096);
        assert_eq!(seqs(&mut log), (1..=id).collect::<Vec<_>>());
    }
}

#[test]
fn crash_around_installing_the_spare_recovers() {
    for seed in 0..40 {
        let sim = SimStorage::new();
        let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
        log.prepare_spare().unwrap();
        let (_, id) = append_until_roll(&mut log, &sim, 0);
        log.prepare_spare().unwrap();
        // Fail the second roll at its first sync (the old segment, then the spare's
        // header): the log is poisoned, then power fails.
        let mut next = id;
        let segments = log.segment_bases().len();
        sim.fail(FaultOp::Sync, (seed % 3) as u32);
        let mut acked = id;
        loop {
            next += 1;
            match log.append(&req(1, next)) {
                Ok(_) if log.segment_bases().len() == segments => acked = next,
                Ok(_) => {
                    acked = next;
                    break;
                }
                Err(_) => break,
            }
        }
        drop(log);
        sim.crash(seed);
        let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
        assert!(!sim.names().contains(&SPARE_NAME.to_owned()));
        let got = seqs(&mut log);
        assert!(got.len() as u64 >= acked, "lost acked records: {got:?}");
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
        let ack = log.append(&req(1, 999)).unwrap();
        assert_eq!(ack.seq, got.len() as u64 + 1);
    }
}
