//! Durable append throughput and append-to-durable latency of `PipelinedLog` over real
//! files, with the disk's own 4 KiB write+fdatasync latency measured beside it.
//!
//! ```sh
//! cargo run -p log-engine --release --example pipeline_throughput -- [secs] [rate/s] [dir]
//! ```
//!
//! `rate` 0 (default) appends as fast as the owner thread can; otherwise appends are
//! paced to that rate. Environment: `PAYLOAD` (bytes, default 200), `IN_FLIGHT`
//! (`pipeline_in_flight`), `SEGMENT_BYTES`, `DIRECT_IO` (0 = buffered writes, default 1),
//! `CHECKPOINT_BYTES`. One owner thread plays "many concurrent appenders": it appends a
//! burst of 64 records (conversations spread over 10,000), flushes and polls acks.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use log_engine::{AppendRequest, Config, FsStorage, PipelinedLog, RecordKind};

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// p50/p99/p999 (µs) of 4 KiB pwrite + fdatasync into a preallocated, zeroed file.
fn raw_fdatasync(dir: &std::path::Path) -> std::io::Result<(f64, f64, f64)> {
    let path = dir.join("raw-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..16 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    let block = vec![7u8; 4096];
    let mut lat = Vec::new();
    for i in 0..2000u64 {
        let t = Instant::now();
        file.write_all_at(&block, (i % 4096) * 4096)?;
        file.sync_data()?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    std::fs::remove_file(&path)?;
    lat.sort_unstable();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999)))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(Ok(5.0), |a| a.parse())?;
    let rate: f64 = args.next().map_or(Ok(0.0), |a| a.parse())?;
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let (p50, p99, p999) = raw_fdatasync(&dir)?;
    println!("disk: 4 KiB pwrite+fdatasync p50 {p50:.0} µs, p99 {p99:.0} µs, p999 {p999:.0} µs");
    let mut config = Config::default();
    if let Ok(bytes) = std::env::var("CHECKPOINT_BYTES") {
        config.checkpoint_interval_bytes = bytes.parse()?;
    }
    if let Ok(bytes) = std::env::var("SEGMENT_BYTES") {
        config.segment_bytes = bytes.parse()?;
    }
    if let Ok(depth) = std::env::var("IN_FLIGHT") {
        config.pipeline_in_flight = depth.parse()?;
    }
    if let Ok(direct) = std::env::var("DIRECT_IO") {
        config.direct_io = direct != "0";
    }
    let payload_len: usize = std::env::var("PAYLOAD").map_or(Ok(200), |p| p.parse())?;
    let record_bytes = (56 + payload_len).div_ceil(8) * 8;
    println!(
        "config: payload {payload_len} B, in flight {}, direct_io {}",
        config.pipeline_in_flight, config.direct_io
    );
    let (mut log, _) = PipelinedLog::open(FsStorage::open(&dir)?, config, ())?;
    // Let the first spare finish before measuring (a server starts before traffic).
    while !log.has_spare() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let payload = vec![0x5Au8; payload_len];
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut lat = Vec::with_capacity(1 << 24);
    let (mut appended, mut acked, mut batches) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(appended as f64 / rate);
            if Instant::now() < due {
                let acks = log.poll_acks()?;
                record(&acks, &mut sent, &mut lat, &mut acked);
                continue;
            }
        }
        for _ in 0..64 {
            appended += 1;
            log.append_nowait(&AppendRequest {
                conversation_id: appended % 10_000,
                message_id: appended,
                timestamp_ms: appended,
                key: None,
                kind: RecordKind::Message,
                payload: &payload,
            })?;
            sent.push_back(Instant::now());
        }
        let before = log.in_flight();
        log.flush()?;
        batches += (log.in_flight() - before) as u64;
        let acks = log.poll_acks()?;
        record(&acks, &mut sent, &mut lat, &mut acked);
    }
    let acks = log.drain()?;
    record(&acks, &mut sent, &mut lat, &mut acked);
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "pipelined: {acked} durable {payload_len} B appends in {elapsed:.2} s = {:.0}/s \
         ({:.0} MB/s of records), {batches}+ batches, segments {}",
        acked as f64 / elapsed,
        acked as f64 * record_bytes as f64 / elapsed / 1e6,
        log.segment_bases().len()
    );
    println!(
        "append-to-durable: p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
    std::io::stdout().flush()?;
    Ok(())
}

fn record(
    acks: &[(log_engine::Ticket, log_engine::Ack)],
    sent: &mut VecDeque<Instant>,
    lat: &mut Vec<u64>,
    acked: &mut u64,
) {
    let now = Instant::now();
    for _ in acks {
        if let Some(t) = sent.pop_front() {
            lat.push(now.duration_since(t).as_nanos() as u64);
        }
        *acked += 1;
    }
}
