//! Block-aligned (`Config::direct_io`) batch writes: the partial 4 KiB block a batch
//! starts in is rewritten, with the same bytes, by the next batch. A crash during that
//! rewrite must never lose an acknowledged record (SimStorage tears unsynced writes per
//! 512-byte sector, cutting one at any byte: old and new bytes mixed, never garbage —
//! the media assumption of FORMAT.md). Over real files (`O_DIRECT`), readers of the
//! active segment must never see stale bytes.

use log_engine::sim::{FaultOp, SimStorage};
use log_engine::{AppendRequest, Config, FsStorage, Log, PipelinedLog, RecordKind};

fn config() -> Config {
    Config {
        segment_bytes: 16 * 1024,
        checkpoint_interval_bytes: u64::MAX,
        ..Config::default()
    }
}

fn payload(id: u64) -> Vec<u8> {
    let len = 20 + (id * 37 % 300) as usize;
    (0..len).map(|i| (id as usize * 7 + i) as u8).collect()
}

fn req(conv: u64, id: u64, payload: &[u8]) -> AppendRequest<'_> {
    AppendRequest {
        conversation_id: conv,
        message_id: id,
        timestamp_ms: id,
        key: None,
        kind: RecordKind::Message,
        payload,
    }
}

/// Every acked record of conversation 1 is there, in order, with its payload.
fn check(log: &mut Log<SimStorage>, acked: u64) -> u64 {
    let page = log.read_after(1, 0, 10_000).unwrap();
    assert!(page.last_seq >= acked, "lost acked records");
    for (i, record) in page.records.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(record.payload, payload(record.message_id));
    }
    page.last_seq
}

#[test]
fn a_crash_while_rewriting_the_partial_block_keeps_acked_records() {
    for seed in 0..120u64 {
        let sim = SimStorage::new();
        let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
        let mut id = 0;
        // Small commits: every one rewrites the block the previous one ended in; every
        // few a reopen, so the writer also resumes from the block it reads back.
        let commits = 5 + seed % 60;
        for n in 0..commits {
            for _ in 0..=(n % 3) {
                id += 1;
                log.append_nowait(&req(1, id, &payload(id))).unwrap();
            }
            log.commit().unwrap();
            if n % 17 == 16 {
                drop(log);
                log = Log::open(sim.clone(), config(), ()).unwrap().0;
            }
        }
        let acked = id;
        // The next batch's write (a rewrite of the acked partial block) is never synced.
        sim.fail(FaultOp::Sync, 0);
        for _ in 0..1 + seed % 4 {
            id += 1;
            log.append_nowait(&req(1, id, &payload(id))).unwrap();
        }
        assert!(log.commit().is_err());
        drop(log);
        sim.crash(seed);
        let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
        let last = check(&mut log, acked);
        assert!(last <= id);
        // And the log goes on from there.
        id = last + 1;
        log.append(&req(1, id, &payload(id))).unwrap();
        assert_eq!(check(&mut log, id), id);
    }
}

#[test]
fn direct_io_reads_of_the_active_segment_are_never_stale() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        segment_bytes: 64 * 1024,
        tail_cache_bytes: 0, // every read goes to the file (page cache) or a map
        checkpoint_interval_bytes: u64::MAX,
        ..Config::default()
    };
    let storage = FsStorage::open(dir.path()).unwrap();
    let (mut log, _) = PipelinedLog::open(storage, config.clone(), ()).unwrap();
    let mut acked = 0u64;
    let mut id = 0u64;
    for round in 0..400u64 {
        // 1-3 records per batch: each batch rewrites the block its predecessor ended in,
        // while reads of that block go through the page cache.
        for _ in 0..1 + round % 3 {
            id += 1;
            log.append_nowait(&req(1, id, &payload(id))).unwrap();
        }
        log.flush().unwrap();
        for (_, ack) in log.wait_acks().unwrap() {
            acked += 1;
            assert_eq!(ack.seq, acked);
            let record = log.read_at(ack.offset).unwrap();
            assert_eq!(record.payload, payload(ack.message_id));
        }
        // Re-read a page ending at the newest durable record: older blocks too.
        let page = log.read_before(1, u64::MAX, 20).unwrap();
        for record in &page.records {
            assert_eq!(record.payload, payload(record.message_id));
        }
    }
    acked += log.drain().unwrap().len() as u64;
    assert_eq!(acked, id);
    assert!(log.segment_bases().len() > 2, "rolled");
    let storage = log.close().unwrap();
    let (mut log, report) = Log::open(storage, config, ()).unwrap();
    assert!(report.truncated.is_none());
    let page = log.read_after(1, 0, 10_000).unwrap();
    assert_eq!(page.last_seq, id);
    for (i, record) in page.records.iter().enumerate() {
        assert_eq!(record.seq, i as u64 + 1);
        assert_eq!(record.payload, payload(record.message_id));
    }
}
