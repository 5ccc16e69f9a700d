//! Real-process crash test: a child (`src/bin/crash_appender.rs`) appends durably with
//! `FsStorage` while this test SIGKILLs it at random moments. After each kill the log
//! is reopened and checked: every acknowledged record is present exactly once, in
//! order, with no gap in any conversation's sequence, and every record present is one
//! the child appended (payload and key match its message id; no message id twice).
//! The child applies size retention, so the oldest segments are retired and reused as
//! recycled spares: acked records below a conversation's first retained sequence may be
//! gone (their segment was retired), every later one must be there.
//!
//! Rounds: 20 by default; `CRASH_ROUNDS=1000 cargo test -p log-engine --test crash
//! --release` for the long run.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use log_engine::sim::SimRng;
use log_engine::{FsStorage, Log};

mod common {
    pub mod crash_records;
}
use common::crash_records::{crash_config, key_for, payload_for, CONVERSATIONS};

const IDS_PER_ROUND: u64 = 1 << 32;

/// Runs the child for a random while, kills it, returns its complete stdout lines.
fn run_child(dir: &std::path::Path, first_id: u64, millis: u64) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_appender"))
        .arg(dir)
        .arg(first_id.to_string())
        // Every other round drives the log as the gateway does (I/O, spare and
        // checkpoint threads); the others through the synchronous driver.
        .args((first_id / IDS_PER_ROUND % 2 == 1).then_some("pipelined"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(millis));
    let status = child.try_wait().unwrap();
    if let Some(status) = status {
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("child exited by itself ({status}): {err}");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let text = reader.join().unwrap();
    // The last line may be cut by the kill: only newline-terminated lines count.
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete.lines().map(str::to_owned).collect()
}

#[derive(Default)]
struct Expected {
    /// message id → (conversation, seq) of every acknowledged append.
    acked: HashMap<u64, (u64, u64)>,
    /// Rolls into recycled segment files, summed over the child processes.
    recycled_rolls: u64,
}

impl Expected {
    fn absorb(&mut self, lines: &[String]) {
        let mut recycled = 0;
        for line in lines {
            if let Some(count) = line.strip_prefix("recycled ") {
                recycled = count.parse().unwrap();
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 5, "bad line {line:?}");
            let conv: u64 = f[1].parse().unwrap();
            let seq: u64 = f[2].parse().unwrap();
            let id: u64 = f[3].parse().unwrap();
            if let Some(prev) = self.acked.insert(id, (conv, seq)) {
                assert_eq!(prev, (conv, seq), "a retry was acked differently: {line}");
            }
        }
        self.recycled_rolls += recycled;
    }
}

/// Checks the log against every ack; returns how many acked records retention removed.
fn verify(dir: &std::path::Path, expected: &Expected, max_id: u64) -> usize {
    let config = crash_config();
    let (mut log, _report) = Log::open(FsStorage::open(dir).unwrap(), config, ()).unwrap();
    let mut seen: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut first_seqs = HashMap::new();
    for conv in 0..CONVERSATIONS {
        // Retention may have deleted the oldest records: history starts at first_seq.
        let first_seq = log.read_after(conv, 0, 1).unwrap().first_seq;
        first_seqs.insert(conv, first_seq);
        let mut after = first_seq - 1;
        loop {
            let page = log.read_after(conv, after, 10_000).unwrap();
            assert_eq!(page.first_seq, first_seq);
            for record in &page.records {
                assert_eq!(record.seq, after + 1, "gap in conversation {conv}");
                after = record.seq;
                let id = record.message_id;
                assert!(id <= max_id, "record {id} was never appended");
                assert_eq!(record.payload, payload_for(id), "payload of {id}");
                assert_eq!(record.key, Some(key_for(id)), "key of {id}");
                let dup = seen.insert(id, (conv, record.seq));
                assert!(dup.is_none(), "message {id} stored twice");
            }
            if after >= page.last_seq {
                break;
            }
        }
    }
    let mut retired = 0;
    for (id, at) in &expected.acked {
        if !seen.contains_key(id) && at.1 < first_seqs[&at.0] {
            retired += 1; // deleted by retention with its whole segment
            continue;
        }
        assert_eq!(
            seen.get(id),
            Some(at),
            "acknowledged message {id} lost or moved"
        );
    }
    retired
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Expected::default();
    let mut rng = SimRng::new(0xC0FFEE);
    let mut total_lines = 0;
    let mut retired = 0;
    for round in 1..=rounds {
        let first_id = round * IDS_PER_ROUND;
        let millis = 20 + rng.below(120);
        let lines = run_child(dir.path(), first_id, millis);
        total_lines += lines.len();
        expected.absorb(&lines);
        retired = verify(dir.path(), &expected, first_id + IDS_PER_ROUND - 1);
    }
    assert!(total_lines > 0, "the child never acknowledged anything");
    eprintln!(
        "{rounds} rounds, {total_lines} lines, {} distinct acks, {retired} retired, \
         {} rolls into recycled files",
        expected.acked.len(),
        expected.recycled_rolls
    );
    assert!(retired > 0, "retention never ran");
    assert!(
        expected.recycled_rolls > 0,
        "no roll went into a recycled file: recycling was not exercised"
    );
}
