//! Restart time: builds a log of `GB` gigabytes of 200 B records (10,000 conversations)
//! with `FsStorage` (unless `dir` already holds one), closes it without a final
//! checkpoint, then times `Log::open` (recovery: checkpoint map + scan of the tail).
//!
//! ```sh
//! cargo run -p log-engine --release --example restart_time -- 1 [dir]
//! cargo run -p log-engine --release --example restart_time -- 10 [dir]
//! ```

use std::time::Instant;

use log_engine::{AppendRequest, Config, FsStorage, Log, RecordKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let gb: f64 = args.next().map_or(Ok(1.0), |a| a.parse())?;
    let tmp;
    let dir = match args.next() {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let config = Config::default();
    let target = (gb * 1e9) as u64;
    let built = Instant::now();
    let (mut log, _) = Log::open(FsStorage::open(&dir)?, config.clone(), ())?;
    let payload = [0x42u8; 200];
    let mut id = 0u64;
    while log.watermarks().stable < target {
        for _ in 0..4096 {
            id += 1;
            log.append_nowait(&AppendRequest {
                conversation_id: id % 10_000,
                message_id: id,
                timestamp_ms: id,
                key: None,
                kind: RecordKind::Message,
                payload: &payload,
            })?;
        }
        log.commit()?;
        log.prepare_spare()?;
    }
    let end = log.watermarks().stable;
    drop(log); // no close: like a crash between checkpoints (data synced)
    println!(
        "built {:.2} GB ({id} records appended this run) in {:.1} s",
        end as f64 / 1e9,
        built.elapsed().as_secs_f64()
    );
    for round in 0..3 {
        let t = Instant::now();
        let (log, report) = Log::open(FsStorage::open(&dir)?, config.clone(), ())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "open #{round}: {ms:.0} ms; segments {}, checkpoint {:?}, records scanned {}, \
             conversation 1 last seq {}",
            report.segments,
            report.checkpoint,
            report.records_scanned,
            log.last_seq(1)
        );
    }
    let ckpt = std::fs::metadata(dir.join("checkpoint")).map_or(0, |m| m.len());
    println!("checkpoint file: {:.1} MiB", ckpt as f64 / (1 << 20) as f64);
    Ok(())
}
