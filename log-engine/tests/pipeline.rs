//! `PipelinedLog`: acks in order, visibility only after durability, poisoning on a
//! failed sync, a roll while a batch is in flight, and the same over real files.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log_engine::sim::SimStorage;
use log_engine::{
    AppendRequest, CheckpointUse, Config, Error, FsStorage, Log, PipelinedLog, RecordKind, Storage,
    Ticket,
};

/// `SimStorage` whose segment syncs wait while the gate is closed, can be made to fail,
/// and whose writes to segment files are counted.
#[derive(Clone, Default)]
struct Gated {
    sim: SimStorage,
    gate: Arc<(Mutex<bool>, Condvar)>,
    fail_sync: Arc<AtomicBool>,
    segment_bytes_written: Arc<AtomicU64>,
}

impl Gated {
    fn set_open(&self, open: bool) {
        *self.gate.0.lock().unwrap() = open;
        self.gate.1.notify_all();
    }
}

impl Storage for Gated {
    type Map = Vec<u8>;
    fn list(&mut self) -> io::Result<Vec<String>> {
        self.sim.list()
    }
    fn create(&mut self, name: &str) -> io::Result<()> {
        self.sim.create(name)
    }
    fn read_at(&mut self, name: &str, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.sim.read_at(name, pos, buf)
    }
    fn write_at(&mut self, name: &str, pos: u64, data: &[u8]) -> io::Result<()> {
        if name.ends_with(".log") {
            self.segment_bytes_written
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
        self.sim.write_at(name, pos, data)
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        if name.ends_with(".log") {
            let mut open = self.gate.0.lock().unwrap();
            while !*open {
                open = self.gate.1.wait(open).unwrap();
            }
            drop(open);
            if self.fail_sync.swap(false, Ordering::SeqCst) {
                return Err(io::Error::other("injected sync failure"));
            }
        }
        self.sim.sync(name)
    }
    fn len(&mut self, name: &str) -> io::Result<u64> {
        self.sim.len(name)
    }
    fn set_len(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.sim.set_len(name, len)
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.sim.remove(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.sim.rename(from, to)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        self.sim.sync_dir()
    }
    fn map(&mut self, name: &str) -> io::Result<Vec<u8>> {
        self.sim.map(name)
    }
    fn close(&mut self, name: &str) {
        self.sim.close(name)
    }
    fn reopen(&self) -> io::Result<Gated> {
        Ok(self.clone())
    }
}

const SEGMENT: u64 = 16 * 1024;
const BATCH_RECORDS: usize = 10;

fn config() -> Config {
    Config {
        segment_bytes: SEGMENT,
        checkpoint_interval_bytes: u64::MAX,
        pipeline_in_flight: 2, // these tests exercise two batches in flight
        // Batches close at 10 records, so a test can make one that no longer grows
        // (what the I/O thread is handed behind the one in flight).
        group_commit_records: BATCH_RECORDS,
        ..Config::default()
    }
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

fn open_gated() -> (Gated, PipelinedLog<Gated>) {
    let gated = Gated::default();
    gated.set_open(true);
    let (log, _) = PipelinedLog::open(gated.clone(), config(), ()).unwrap();
    (gated, log)
}

fn wait_for_spare(log: &PipelinedLog<Gated>) {
    let start = Instant::now();
    while !log.has_spare() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "spare never ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn acks_are_in_order_and_records_visible_only_once_durable() {
    let (gated, mut log) = open_gated();
    gated.set_open(false);
    let mut tickets: Vec<Ticket> = Vec::new();
    for id in 1..=10 {
        tickets.push(log.append_nowait(&req(1, id, b"first batch")).unwrap());
    }
    log.flush().unwrap();
    assert_eq!(log.in_flight(), 1);
    // Batch 2 is encoded while batch 1 waits in its fdatasync. While appends can still
    // join it, it waits for batch 1 to complete.
    for id in 11..=20 {
        tickets.push(log.append_nowait(&req(1, id, b"second batch")).unwrap());
    }
    log.flush().unwrap();
    assert_eq!(
        log.in_flight(),
        1,
        "the open batch waits behind the one in flight"
    );
    // Append 21 starts batch 3: batch 2 is full, so it is handed over at once.
    for id in 21..=25 {
        tickets.push(log.append_nowait(&req(1, id, b"third batch")).unwrap());
    }
    log.flush().unwrap();
    assert_eq!(
        log.in_flight(),
        2,
        "a closed batch goes behind the one in flight"
    );
    for id in 26..=35 {
        tickets.push(log.append_nowait(&req(1, id, b"fourth batch")).unwrap());
    }
    log.flush().unwrap();
    assert_eq!(log.in_flight(), 2, "at most two batches in flight");
    std::thread::sleep(Duration::from_millis(20));
    assert!(log.poll_acks().unwrap().is_empty());
    assert_eq!(log.last_seq(1), 0);
    assert!(log.read_after(1, 0, 100).unwrap().records.is_empty());
    gated.set_open(true);
    let acks = log.drain().unwrap();
    let got: Vec<Ticket> = acks.iter().map(|(t, _)| *t).collect();
    assert_eq!(got, tickets, "acks in append order");
    let seqs: Vec<u64> = acks.iter().map(|(_, a)| a.seq).collect();
    assert_eq!(seqs, (1..=35).collect::<Vec<_>>());
    let page = log.read_after(1, 0, 100).unwrap();
    assert_eq!(page.records.len(), 35);
    assert_eq!(page.records[24].payload, b"third batch");
    assert_eq!(page.records[34].payload, b"fourth batch");
}

#[test]
fn a_failed_sync_poisons_and_nothing_after_it_is_written() {
    let (gated, mut log) = open_gated();
    for id in 1..=3 {
        log.append_nowait(&req(1, id, b"durable")).unwrap();
    }
    assert_eq!(log.drain().unwrap().len(), 3);
    gated.set_open(false);
    let written = gated.segment_bytes_written.load(Ordering::SeqCst);
    for id in 4..=13 {
        log.append_nowait(&req(1, id, b"batch a")).unwrap();
    }
    log.flush().unwrap();
    // Batch b fills up (append 24 starts batch c), so it is handed over behind a.
    for id in 14..=24 {
        log.append_nowait(&req(1, id, b"batch b")).unwrap();
    }
    log.flush().unwrap();
    assert_eq!(log.in_flight(), 2);
    gated.fail_sync.store(true, Ordering::SeqCst);
    gated.set_open(true);
    let err = loop {
        match log.wait_acks() {
            Ok(acks) => assert!(acks.is_empty(), "nothing after the failure acks"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Io { op: "sync", .. }), "{err:?}");
    assert!(matches!(
        log.append_nowait(&req(1, 25, b"x")),
        Err(Error::Poisoned)
    ));
    assert_eq!(log.read_after(1, 0, 100).unwrap().records.len(), 3);
    // Batch b was refused by the I/O thread: only batch a reached the file.
    let after = gated.segment_bytes_written.load(Ordering::SeqCst);
    // Block-aligned writes (`direct_io`, the default): batch a (10 records of 64 bytes
    // at position 256) is one 4 KiB block; batch b would have been a second one.
    assert_eq!(after - written, 4096, "only batch a was written");
    drop(log);
    let (log, _) = Log::open(gated.sim.clone(), config(), ()).unwrap();
    let last = log.last_seq(1);
    assert!(last == 3 || last == 13, "{last}");
}

#[test]
fn a_roll_while_a_batch_is_in_flight() {
    let (gated, mut log) = open_gated();
    wait_for_spare(&log);
    let payload = [9u8; 1000];
    gated.set_open(false);
    let mut tickets = Vec::new();
    for id in 1..=8 {
        tickets.push(log.append_nowait(&req(1, id, &payload)).unwrap());
    }
    let before = gated.segment_bytes_written.load(Ordering::SeqCst);
    log.flush().unwrap();
    // These do not fit the 16 KiB segment: the writer rolls while batch 1 is in flight.
    for id in 9..=24 {
        tickets.push(log.append_nowait(&req(2, id, &payload)).unwrap());
    }
    log.flush().unwrap();
    gated.set_open(true);
    let acks = log.drain().unwrap();
    assert_eq!(acks.iter().map(|(t, _)| *t).collect::<Vec<_>>(), tickets);
    assert_eq!(log.segment_bases().len(), 2);
    // The roll installed the spare (its header is written before the rename): the
    // segment files received the 24 records (56 + 1000 bytes each) in block-aligned
    // writes and no zero fill: batch 1 (8 records from 64) = blocks [0, 12 KiB); the
    // next batch (records 9..=15 up to 15,904) = [8 KiB, 16 KiB); the first batch of the
    // new segment (9 records from 64) = [0, 12 KiB).
    let rolled = gated.segment_bytes_written.load(Ordering::SeqCst) - before;
    assert_eq!(
        rolled,
        12288 + 8192 + 12288,
        "bytes written to segment files"
    );
    assert_eq!(log.read_after(1, 0, 100).unwrap().records.len(), 8);
    assert_eq!(log.read_after(2, 0, 100).unwrap().records.len(), 16);
    wait_for_spare(&log);
    drop(log);
    let (mut log, _) = Log::open(gated.sim.clone(), config(), ()).unwrap();
    assert_eq!(log.read_after(2, 0, 100).unwrap().last_seq, 16);
}

#[test]
fn pipelined_over_real_files_with_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        segment_bytes: 256 * 1024,
        checkpoint_interval_bytes: 512 * 1024,
        // The records carry made-up timestamps (ms since 1970): without this the log's
        // own retention would age every sealed segment out.
        retention_age_ms: u64::MAX,
        ..Config::default()
    };
    let (mut log, _) =
        PipelinedLog::open(FsStorage::open(dir.path()).unwrap(), config.clone(), ()).unwrap();
    let mut acked = 0u64;
    let mut expect_ticket = None::<Ticket>;
    for round in 0..200u64 {
        for i in 0..50u64 {
            let id = round * 50 + i + 1;
            log.append_nowait(&req(id % 5, id, &[id as u8; 200]))
                .unwrap();
        }
        log.flush().unwrap();
        for (ticket, _) in log.poll_acks().unwrap() {
            assert!(expect_ticket.is_none_or(|t| ticket > t));
            expect_ticket = Some(ticket);
            acked += 1;
        }
    }
    acked += log.drain().unwrap().len() as u64;
    assert_eq!(acked, 10_000);
    assert!(log.segment_bases().len() > 5);
    let storage = log.close().unwrap();
    let (mut log, report) = Log::open(storage, config, ()).unwrap();
    assert!(report.truncated.is_none());
    // Checkpoints were written by the checkpoint thread; close waited for the last one.
    assert!(
        matches!(report.checkpoint, CheckpointUse::Used(_)),
        "{:?}",
        report.checkpoint
    );
    for conv in 0..5 {
        let page = log.read_before(conv, u64::MAX, 10).unwrap();
        assert_eq!(page.last_seq, 2000);
        assert_eq!(page.records.len(), 10);
    }
}

/// 256 KiB segments, a checkpoint due every 128 KiB, a 1 MiB retention limit.
fn retention_config() -> Config {
    let segment = 256 * 1024;
    Config {
        segment_bytes: segment,
        checkpoint_interval_bytes: 128 * 1024,
        retention_bytes: 4 * segment,
        ..Config::default()
    }
}

#[test]
fn retention_runs_by_itself_and_rolls_reuse_retired_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = retention_config();
    let (mut log, _) =
        PipelinedLog::open(FsStorage::open(dir.path()).unwrap(), config.clone(), ()).unwrap();
    let mut retired_inodes = std::collections::HashSet::new();
    let mut most_segments = 0;
    let inodes = |dir: &std::path::Path| -> Vec<(String, u64)> {
        use std::os::unix::fs::MetadataExt;
        let entries = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok());
        entries
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().map_or(0, |m| m.ino()))
            })
            .collect()
    };
    let mut seen: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    for round in 0..400u64 {
        for i in 0..50u64 {
            let id = round * 50 + i + 1;
            log.append_nowait(&req(id % 5, id, &[id as u8; 500]))
                .unwrap();
        }
        log.drain().unwrap(); // never apply_retention: the log does it after rolls
        most_segments = most_segments.max(log.segment_bases().len());
        for (name, ino) in inodes(dir.path()) {
            if !name.ends_with(".log") {
                continue;
            }
            if let Some(earlier) = seen.insert(ino, name.clone()) {
                if earlier != name {
                    retired_inodes.insert(ino); // the same file under a new segment name
                }
            }
        }
    }
    // ~11 MB written into 256 KiB segments with a 1 MiB limit.
    assert!(
        most_segments <= 6,
        "retention did not keep up: {most_segments}"
    );
    assert!(log.recycled_rolls() > 10, "rolls: {}", log.recycled_rolls());
    assert!(
        !retired_inodes.is_empty(),
        "no segment file was ever reused"
    );
    let storage = log.close().unwrap();
    let (mut log, report) = Log::open(storage, config, ()).unwrap();
    assert!(report.truncated.is_none());
    for conv in 0..5 {
        let page = log.read_before(conv, u64::MAX, 10).unwrap();
        assert_eq!(page.last_seq, 4000);
        assert_eq!(page.records.len(), 10);
        assert!(page.first_seq > 1, "the oldest records were retired");
        let first = log.read_after(conv, page.first_seq - 1, 1).unwrap();
        assert_eq!(first.records[0].seq, page.first_seq);
    }
}

#[test]
fn checkpoint_drafts_keep_pace_with_large_batches_so_retention_keeps_up() {
    // 4,000 conversations: ~63 short steps per checkpoint. With a batch of ~110 KB per
    // round and a checkpoint due every 128 KiB, short steps alone would finish a draft
    // ~60 rounds (~6.6 MB) after it began, and retention (which waits for a durable
    // checkpoint past its cut) could not hold the log near its 1 MiB limit. The same
    // happened to `log_bench`'s closed loop of 4 MiB batches with a 2 GiB limit.
    let config = retention_config();
    let (mut log, _) = PipelinedLog::open(SimStorage::new(), config, ()).unwrap();
    let conversations = 4_000u64;
    // Stamped now: segments of records stamped in 1970 are all past the age limit,
    // and retention would then wait for a checkpoint past the active segment.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut drafting_since = None;
    let mut drafts = 0;
    for round in 0..100u64 {
        for i in 0..200u64 {
            let id = round * 200 + i + 1;
            log.append_nowait(&AppendRequest {
                timestamp_ms: now_ms,
                ..req(id % conversations, id, &[id as u8; 500])
            })
            .unwrap();
        }
        log.drain().unwrap();
        // A draft begun at one batch's completion is encoded by the next one's: the log
        // grew past its pace, so that step took everything it was behind. (A new draft
        // begins only once the previous one is written: the durable checkpoint moved.)
        let written = log.checkpoint_offset();
        match (log.checkpoint_drafting(), drafting_since) {
            (true, Some((since, at))) if at == written => assert!(
                round - since <= 1,
                "a draft open since round {since}, now {round}"
            ),
            (true, _) => {
                drafting_since = Some((round, written));
                drafts += 1;
            }
            (false, _) => drafting_since = None,
        }
    }
    assert!(drafts > 10, "drafts seen: {drafts}");
    // Retention keeps the log near its limit (its checkpoints are written by another
    // thread, which a busy test machine may run late: give it time).
    let waited = Instant::now();
    while log.segment_bases().len() > 6 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "retention fell behind: {} segments",
            log.segment_bases().len()
        );
        std::thread::sleep(Duration::from_millis(1));
        log.poll_acks().unwrap();
    }
}

#[test]
fn checkpoints_of_large_key_maps_are_encoded_in_steps_and_every_key_survives() {
    // More keys than one checkpoint step encodes, a key bound that evicts while drafts
    // are in progress, and frequent checkpoints: drafts span many batches.
    let keys_max = log_engine::limits::CHECKPOINT_KEYS_PER_STEP * 3;
    let config = Config {
        segment_bytes: 8 * 1024 * 1024,
        checkpoint_interval_bytes: 64 * 1024,
        dedupe_entries: keys_max,
        ..Config::default()
    };
    let key_of = |id: u64| {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&id.to_le_bytes());
        key[8] = 0xAB;
        key
    };
    let total = (keys_max as u64) * 8;
    let (mut log, _) = PipelinedLog::open(SimStorage::new(), config.clone(), ()).unwrap();
    for id in 1..=total {
        log.append_nowait(&AppendRequest {
            key: Some(key_of(id)),
            ..req(id % 7, id, b"payload")
        })
        .unwrap();
        if id % 64 == 0 {
            log.flush().unwrap();
            log.poll_acks().unwrap();
        }
    }
    log.drain().unwrap();
    let storage = log.close().unwrap();
    let (mut log, report) = Log::open(storage, config, ()).unwrap();
    let CheckpointUse::Used(offset) = report.checkpoint else {
        panic!("no checkpoint used: {:?}", report.checkpoint);
    };
    assert!(offset > 0);
    // Every key the bound kept (the newest `keys_max`) still dedupes: those before the
    // checkpoint came from the stepped encoding, the rest from the scan after it.
    for id in (total - keys_max as u64 + 1)..=total {
        let ack = log
            .append(&AppendRequest {
                key: Some(key_of(id)),
                ..req(id % 7, id, b"payload")
            })
            .unwrap();
        assert!(ack.deduplicated, "key {id} forgotten");
        assert_eq!(ack.message_id, id);
    }
}

/// Age-based retention on a log that went quiet: every sealed segment is past the age
/// limit, the next checkpoint is 64 MiB of writes away, and retention deletes only
/// below a durable checkpoint past its cut. It asks for a checkpoint early (at most
/// once per `retention_check_interval_ms`), so the expired segments go with the next
/// few appends instead of staying until 64 MiB more were written.
#[test]
fn age_retention_on_a_quiet_log_asks_for_an_early_checkpoint() {
    let config = Config {
        segment_bytes: 256 * 1024,
        retention_age_ms: 50,
        retention_check_interval_ms: 0,
        ..Config::default()
    };
    assert!(config.checkpoint_interval_bytes >= 64 << 20);
    let (mut log, _) = PipelinedLog::open(SimStorage::new(), config, ()).unwrap();
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let stamped = |id: u64, payload: &'static [u8], at: u64| AppendRequest {
        timestamp_ms: at,
        ..req(id % 5, id, payload)
    };
    // ~1 MiB: four rolls, no checkpoint due.
    let at = now_ms();
    for id in 1..=2_000u64 {
        log.append_nowait(&stamped(id, &[7; 500], at)).unwrap();
    }
    log.drain().unwrap();
    assert!(log.segment_bases().len() >= 4, "{:?}", log.segment_bases());
    assert_eq!(log.checkpoint_offset(), 0, "no checkpoint was due");
    std::thread::sleep(Duration::from_millis(100));
    // Quiet, then a trickle of appends: the sealed segments are all past the age.
    let waited = Instant::now();
    let mut id = 2_000;
    while log.segment_bases().len() > 1 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "expired segments kept: {:?}, checkpoint at {}",
            log.segment_bases(),
            log.checkpoint_offset()
        );
        id += 1;
        log.append_nowait(&stamped(id, b"late", now_ms())).unwrap();
        log.drain().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(log.checkpoint_offset() > 0);
}
