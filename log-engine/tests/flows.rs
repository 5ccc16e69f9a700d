//! End-to-end flows over `SimStorage` (and `FsStorage` where files matter): group
//! commit, failure poisoning, idempotency across restarts, metadata state with
//! snapshots, retention, and random append/commit/crash cycles.

use std::collections::BTreeMap;

use log_engine::format::OFFSET_NONE;
use log_engine::sim::{FaultOp, SimStorage};
use log_engine::{
    AppendRequest, CheckpointUse, Config, Durability, Error, FsStorage, Log, MetaRecord,
    RecordKind, StateMachine,
};
use proptest::prelude::*;

fn config() -> Config {
    Config {
        segment_bytes: 16 * 1024,
        checkpoint_interval_bytes: u64::MAX,
        ..Config::default()
    }
}

fn msg(conv: u64, id: u64, key: Option<[u8; 16]>) -> AppendRequest<'static> {
    AppendRequest {
        conversation_id: conv,
        message_id: id,
        timestamp_ms: 1_000_000 + id,
        key,
        kind: RecordKind::Message,
        payload: b"payload of a chat message",
    }
}

#[test]
fn many_appenders_share_one_write_and_one_sync() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    let before = sim.sync_count();
    let tickets: Vec<_> = (0..100)
        .map(|i| log.append_nowait(&msg(i % 7, i, None)).unwrap())
        .collect();
    // Nothing is visible before the commit; the sequences are assigned already.
    assert_eq!(log.last_seq(0), 0);
    assert_eq!(log.appended_last_seq(0), 15);
    assert_eq!(log.appended_last_seq(99), 0, "a conversation never written");
    assert_eq!(log.watermarks().stable, log.watermarks().written);
    assert!(log.watermarks().appended > log.watermarks().written);
    let acks = log.commit().unwrap();
    assert_eq!(
        sim.sync_count() - before,
        1,
        "one fdatasync for the whole batch"
    );
    assert_eq!(acks.len(), 100);
    for ((ticket, ack), expected) in acks.iter().zip(&tickets) {
        assert_eq!(ticket, expected);
        assert!(!ack.deduplicated);
    }
    assert_eq!(log.last_seq(0), 15);
    let marks = log.watermarks();
    assert_eq!(
        (marks.appended, marks.written),
        (marks.stable, marks.stable)
    );
}

#[test]
fn a_failed_sync_poisons_the_log_and_leaves_no_gap() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    log.append(&msg(1, 1, None)).unwrap();
    sim.fail(FaultOp::Sync, 0);
    log.append_nowait(&msg(1, 2, None)).unwrap();
    assert!(matches!(log.commit(), Err(Error::Io { op: "sync", .. })));
    assert!(matches!(log.append(&msg(1, 3, None)), Err(Error::Poisoned)));
    // Readers never saw the unsynced record.
    assert_eq!(log.read_after(1, 0, 10).unwrap().last_seq, 1);
    drop(log);
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    // The written-but-unsynced record may or may not have survived; either way the
    // sequence is gap-free and appends continue after it.
    let last = log.last_seq(1);
    assert!(last == 1 || last == 2);
    assert_eq!(log.append(&msg(1, 4, None)).unwrap().seq, last + 1);
}

#[test]
fn a_failed_write_poisons_the_log() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    sim.fail(FaultOp::Write, 0);
    assert!(matches!(
        log.append(&msg(1, 1, None)),
        Err(Error::Io { op: "write", .. })
    ));
    assert!(matches!(log.append(&msg(1, 2, None)), Err(Error::Poisoned)));
}

#[test]
fn idempotent_appends_across_restart() {
    let sim = SimStorage::new();
    let key = [42u8; 16];
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    let first = log.append(&msg(3, 100, Some(key))).unwrap();
    // A repeat while the original is durable.
    let again = log.append(&msg(3, 101, Some(key))).unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.seq, again.message_id, again.offset),
        (first.seq, 100, first.offset)
    );
    // A repeat while the original is still pending in the same batch.
    let k2 = [43u8; 16];
    let t1 = log.append_nowait(&msg(3, 200, Some(k2))).unwrap();
    let t2 = log.append_nowait(&msg(3, 201, Some(k2))).unwrap();
    let acks: BTreeMap<_, _> = log.commit().unwrap().into_iter().collect();
    assert_eq!(acks[&t1].seq, acks[&t2].seq);
    assert!(acks[&t2].deduplicated && !acks[&t1].deduplicated);
    assert_eq!(log.last_seq(3), 2);
    drop(log);
    sim.crash(1);
    let (mut log, _) = Log::open(sim.clone(), config(), ()).unwrap();
    let after = log.append(&msg(3, 102, Some(key))).unwrap();
    assert!(after.deduplicated);
    assert_eq!(after.seq, first.seq);
    assert_eq!(log.last_seq(3), 2);
    // Outside the window the key is new again.
    let late = AppendRequest {
        timestamp_ms: 1_000_100 + log_engine::limits::DEDUPE_WINDOW_MS_DEFAULT + 1,
        ..msg(3, 103, Some(key))
    };
    let late = log.append(&late).unwrap();
    assert!(!late.deduplicated);
    assert_eq!(late.seq, 3);
}

/// A toy metadata state: the list of user payloads seen.
#[derive(Default)]
struct Users {
    names: Vec<String>,
    applied: u64,
}

impl StateMachine for Users {
    fn apply(&mut self, record: &MetaRecord<'_>) {
        assert_eq!(record.kind, RecordKind::User);
        self.names
            .push(String::from_utf8_lossy(record.payload).into_owned());
        self.applied += 1;
    }
    fn snapshot(&self) -> Vec<u8> {
        self.names.join("\n").into_bytes()
    }
    fn restore(&mut self, snapshot: Option<&[u8]>) -> Result<(), String> {
        self.applied = 0;
        self.names = match snapshot {
            None => Vec::new(),
            Some(b"") => Vec::new(),
            Some(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
                text.split('\n').map(str::to_owned).collect()
            }
        };
        Ok(())
    }
}

#[test]
fn metadata_folds_and_snapshots_bound_replay() {
    let sim = SimStorage::new();
    let (mut log, _) = Log::open(sim.clone(), config(), Users::default()).unwrap();
    for i in 0..10 {
        let ack = log
            .append_meta(RecordKind::User, format!("user{i}").as_bytes(), i)
            .unwrap();
        assert_eq!(ack.seq, i + 1);
        log.append(&msg(1, i, None)).unwrap();
    }
    assert_eq!(log.state().names.len(), 10);
    log.checkpoint().unwrap();
    for i in 10..13 {
        log.append_meta(RecordKind::User, format!("user{i}").as_bytes(), i)
            .unwrap();
    }
    assert!(matches!(
        log.append_meta(RecordKind::Message, b"x", 0),
        Err(Error::InvalidRequest(_))
    ));
    drop(log);
    let (log, report) = Log::open(sim.clone(), config(), Users::default()).unwrap();
    assert!(matches!(report.checkpoint, CheckpointUse::Used(_)));
    assert_eq!(log.state().names.len(), 13);
    assert_eq!(log.state().names[12], "user12");
    assert_eq!(
        log.state().applied,
        3,
        "only records after the snapshot are replayed"
    );
    let meta = log.state().names.clone();
    drop(log);
    // Without the checkpoint, the full replay gives the same state.
    sim.delete("checkpoint-0");
    sim.delete("checkpoint-1");
    let (log, _) = Log::open(sim.clone(), config(), Users::default()).unwrap();
    assert_eq!(log.state().names, meta);
    assert_eq!(log.state().applied, 13);
}

#[test]
fn retention_deletes_old_segments_and_history_starts_later() {
    let sim = SimStorage::new();
    let cfg = Config {
        retention_age_ms: 1_000,
        ..config()
    };
    let (mut log, _) = Log::open(sim.clone(), cfg.clone(), ()).unwrap();
    for i in 1..=600u64 {
        let req = AppendRequest {
            timestamp_ms: i * 100,
            ..msg(i % 2, i, None)
        };
        log.append(&req).unwrap();
    }
    let before = log.segment_bases();
    assert!(before.len() > 3);
    let report = log.apply_retention(40_000).unwrap();
    assert_eq!(report.deleted.len(), 2, "{report:?}");
    assert!(!report.deleted.is_empty());
    let page = log.read_after(0, 0, 1000).unwrap();
    assert!(page.first_seq > 1);
    assert_eq!(page.records.first().map(|r| r.seq), Some(page.first_seq));
    assert_eq!(page.last_seq, 300);
    let (first_seq, bases) = (page.first_seq, log.segment_bases());
    drop(log);
    let (mut log, report) = Log::open(sim.clone(), cfg, ()).unwrap();
    assert!(matches!(report.checkpoint, CheckpointUse::Used(_)));
    assert_eq!(log.segment_bases(), bases);
    let page = log.read_after(0, 0, 1000).unwrap();
    assert_eq!((page.first_seq, page.last_seq), (first_seq, 300));
    assert_eq!(log.read_before(0, 2, 10).unwrap().records.len(), 0);
    assert_eq!(log.append(&msg(0, 999, None)).unwrap().seq, 301);
}

#[test]
fn retention_by_size() {
    let sim = SimStorage::new();
    let cfg = Config {
        retention_bytes: 48 * 1024,
        ..config()
    };
    let (mut log, _) = Log::open(sim.clone(), cfg, ()).unwrap();
    for i in 1..=400u64 {
        log.append(&msg(1, i, None)).unwrap();
    }
    log.apply_retention(0).unwrap();
    assert!(log.segment_bases().len() <= 3);
}

#[test]
fn os_buffered_mode_acks_after_write() {
    let sim = SimStorage::new();
    let cfg = Config {
        durability: Durability::OsBuffered {
            sync_interval: std::time::Duration::from_secs(3600),
        },
        ..config()
    };
    let (mut log, _) = Log::open(sim.clone(), cfg, ()).unwrap();
    let before = sim.sync_count();
    for i in 1..=5 {
        log.append(&msg(1, i, None)).unwrap();
    }
    assert_eq!(sim.sync_count(), before, "no fdatasync per append");
    let marks = log.watermarks();
    assert!(marks.written > marks.stable);
    log.sync().unwrap();
    assert_eq!(log.watermarks().stable, marks.written);
}

#[test]
fn fs_storage_round_trip_with_rolls_and_mmap_reads() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        segment_bytes: 8192,
        ..config()
    };
    let (mut log, _) = Log::open(FsStorage::open(dir.path()).unwrap(), config(), ()).unwrap();
    for i in 1..=500u64 {
        log.append_nowait(&msg(i % 5, i, Some([(i % 251) as u8; 16])))
            .unwrap();
        if i % 10 == 0 {
            log.commit().unwrap();
        }
    }
    log.close().unwrap();
    let (mut log, report) = Log::open(FsStorage::open(dir.path()).unwrap(), config(), ()).unwrap();
    assert_eq!(report.truncated, None);
    assert!(report.segments > 2);
    for conv in 0..5 {
        let page = log.read_after(conv, 0, 1000).unwrap();
        let got: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
        assert_eq!(got, (1..=page.last_seq).collect::<Vec<_>>());
    }
    // Keys repeat every 251 ids, so only the first 251 distinct keys stored records.
    let total: u64 = (0..5).map(|c| log.last_seq(c)).sum();
    assert_eq!(total, 251);
}

#[test]
fn payload_limits_are_checked_before_writing() {
    let (mut log, _) = Log::open(SimStorage::new(), config(), ()).unwrap();
    let big = vec![0u8; 16 * 1024];
    let req = AppendRequest {
        payload: &big,
        ..msg(1, 1, None)
    };
    assert!(matches!(log.append(&req), Err(Error::Capacity(_))));
    assert!(matches!(
        log.read_after(1, 0, 1_000_000),
        Err(Error::Capacity(_))
    ));
    assert_eq!(log.append(&msg(1, 2, None)).unwrap().seq, 1);
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        conv: u64,
        len: usize,
        key: Option<u8>,
    },
    Commit,
    Crash(u64),
    Checkpoint,
    /// The next sync fails: the batch is written but not synced, then power is lost.
    FailSync(u64),
    /// Size-based retention (recycles the newest retired segment).
    Retention,
    /// Prepare the next spare: the recycled segment if retention left one.
    Spare,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4, 0usize..900, proptest::option::of(0u8..30))
            .prop_map(|(conv, len, key)| Op::Append { conv, len, key }),
        3 => Just(Op::Commit),
        1 => any::<u64>().prop_map(Op::Crash),
        1 => Just(Op::Checkpoint),
        1 => any::<u64>().prop_map(Op::FailSync),
        1 => Just(Op::Retention),
        1 => Just(Op::Spare),
    ]
}

fn payload(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 7 + i) as u8).collect()
}

/// Records that survived a crash without an ack are durable facts from now on.
fn absorb_survivors(log: &mut Log<SimStorage>, acked: &mut BTreeMap<(u64, u64), u64>) {
    for conv in 0..4 {
        let page = log.read_after(conv, 0, 10_000).unwrap();
        for r in &page.records {
            acked.entry((conv, r.seq)).or_insert(r.message_id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random appends, commits, checkpoints and crashes: every acked record survives
    /// exactly once in order; unacked records may survive, but only complete, valid,
    /// contiguous, and only ones that were appended.
    #[test]
    fn crash_cycles_keep_acked_records_and_gap_free_sequences(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        let sim = SimStorage::new();
        let cfg = Config {
            segment_bytes: 8192,
            checkpoint_interval_bytes: 4096,
            retention_bytes: 4 * 8192,
            ..config()
        };
        let (mut log, _) = Log::open(sim.clone(), cfg.clone(), ()).unwrap();
        let mut next_id = 0u64;
        let mut appended: BTreeMap<u64, (u64, usize)> = BTreeMap::new(); // id → (conv, len)
        let mut acked: BTreeMap<(u64, u64), u64> = BTreeMap::new(); // (conv, seq) → id
        let mut pending: BTreeMap<log_engine::Ticket, u64> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append { conv, len, key } => {
                    next_id += 1;
                    let p = payload(next_id, len);
                    let req = AppendRequest {
                        conversation_id: conv, message_id: next_id, timestamp_ms: next_id,
                        key: key.map(|k| [k; 16]), kind: RecordKind::Message, payload: &p,
                    };
                    appended.insert(next_id, (conv, len));
                    let ticket = log.append_nowait(&req).unwrap();
                    pending.insert(ticket, next_id);
                }
                Op::FailSync(seed) => {
                    sim.fail(FaultOp::Sync, 0);
                    // Succeeds only when nothing needed a sync (repeats of durable keys).
                    let _ = log.commit();
                    drop(log);
                    pending.clear();
                    sim.crash(seed);
                    let (reopened, _) = Log::open(sim.clone(), cfg.clone(), ()).unwrap();
                    log = reopened;
                    absorb_survivors(&mut log, &mut acked);
                }
                Op::Commit => {
                    for (ticket, ack) in log.commit().unwrap() {
                        let id = pending.remove(&ticket).unwrap();
                        if !ack.deduplicated {
                            prop_assert_eq!(ack.message_id, id);
                        }
                        let prev = acked.insert((ack.conversation_id, ack.seq), ack.message_id);
                        prop_assert!(prev.is_none() || prev == Some(ack.message_id));
                    }
                }
                Op::Checkpoint => {
                    log.checkpoint().unwrap();
                }
                Op::Retention => {
                    log.apply_retention(0).unwrap();
                }
                Op::Spare => {
                    log.prepare_spare().unwrap();
                }
                Op::Crash(seed) => {
                    drop(log);
                    pending.clear();
                    sim.crash(seed);
                    let (reopened, _) = Log::open(sim.clone(), cfg.clone(), ()).unwrap();
                    log = reopened;
                    absorb_survivors(&mut log, &mut acked);
                }
            }
        }
        for conv in 0..4 {
            let page = log.read_after(conv, 0, 10_000).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for (i, r) in page.records.iter().enumerate() {
                prop_assert_eq!(r.seq, page.first_seq + i as u64, "gap in {}", conv);
                let (app_conv, len) = appended[&r.message_id];
                prop_assert_eq!(app_conv, conv);
                prop_assert_eq!(&r.payload, &payload(r.message_id, len));
                prop_assert!(seen.insert(r.message_id), "message stored twice");
            }
            prop_assert!(page.last_seq >= acked.range((conv, 0)..(conv + 1, 0)).count() as u64);
            for (&(c, seq), &id) in acked.range((conv, page.first_seq)..(conv + 1, 0)) {
                let r = page.records.get((seq - page.first_seq) as usize);
                prop_assert!(r.is_some(), "acked ({}, {}) lost", c, seq);
                prop_assert_eq!(r.map(|r| r.message_id), Some(id));
            }
        }
        prop_assert!(log.watermarks().stable >= 64);
        let _ = OFFSET_NONE;
    }
}
