//! The sparse index: every page of every conversation reads back exactly, through
//! anchors and `prev_offset` walks, before and after a checkpointed restart and retention.

use log_engine::sim::SimStorage;
use log_engine::{AppendRequest, CheckpointUse, Config, Log, RecordKind};

fn config() -> Config {
    Config {
        segment_bytes: 32 * 1024,
        checkpoint_interval_bytes: u64::MAX,
        retention_bytes: u64::MAX,
        ..Config::default()
    }
}

fn check_pages(log: &mut Log<SimStorage>, conv: u64, first: u64, last: u64) {
    for after in (0..=last + 1).step_by(7) {
        for limit in [1, 5, 33, 100] {
            let page = log.read_after(conv, after, limit).unwrap();
            assert_eq!((page.first_seq, page.last_seq), (first, last));
            let from = (after + 1).max(first);
            let want: Vec<u64> = (from..=last).take(limit).collect();
            let got: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert_eq!(got, want, "after {after} limit {limit}");
            for r in &page.records {
                assert_eq!(r.message_id, conv * 1000 + r.seq);
            }
            let page = log.read_before(conv, after, limit).unwrap();
            let to = after.saturating_sub(1).min(last);
            let mut want: Vec<u64> = (first..=to).rev().take(limit).collect();
            want.reverse();
            let got: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
            assert_eq!(got, want, "before {after} limit {limit}");
        }
    }
}

#[test]
fn pages_walk_from_anchors_across_restart_and_retention() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    let mut seq = [0u64; 3];
    for i in 0..600u64 {
        let conv = [0, 1, 1, 2, 1][i as usize % 5];
        seq[conv as usize] += 1;
        log.append_nowait(&AppendRequest {
            conversation_id: conv,
            message_id: conv * 1000 + seq[conv as usize],
            timestamp_ms: i,
            key: None,
            kind: RecordKind::Message,
            payload: &[conv as u8; 100],
        })
        .unwrap();
        if i % 9 == 0 {
            log.commit().unwrap();
        }
    }
    log.commit().unwrap();
    for conv in 0..3 {
        check_pages(&mut log, conv, 1, seq[conv as usize]);
    }
    let ckpt = log.checkpoint().unwrap();
    drop(log);
    let (mut log, report) = Log::open(sim.clone(), config(), ()).unwrap();
    assert_eq!(report.checkpoint, CheckpointUse::Used(ckpt));
    for conv in 0..3 {
        check_pages(&mut log, conv, 1, seq[conv as usize]);
    }
    // Retention: history restarts at a retained anchor, every page still exact.
    drop(log);
    let small = Config {
        retention_bytes: 40 * 1024,
        ..config()
    };
    let (mut log, _) = Log::open(sim.clone(), small, ()).unwrap();
    assert!(!log.apply_retention(0).unwrap().deleted.is_empty());
    for conv in 0..3 {
        let first = log.read_after(conv, 0, 1).unwrap().first_seq;
        assert!(first > 1);
        check_pages(&mut log, conv, first, seq[conv as usize]);
    }
}
