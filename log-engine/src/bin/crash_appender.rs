//! Child process of `tests/crash.rs`: appends durably to a log directory forever and
//! prints one line per acknowledged append, after the commit that made it durable:
//!
//! ```text
//! ack <conversation> <seq> <message_id> <deduplicated 0|1>
//! recycled <rolls into recycled segment files since this process opened the log>
//! ```
//!
//! Usage: `crash_appender <dir> <first_message_id> [pipelined]`: with `pipelined`, the
//! log is a `PipelinedLog` (I/O, spare and checkpoint threads, as the gateway runs it),
//! else the synchronous `Log`. Each append carries an idempotency
//! key and a payload derived from its message id (see `payload_for`, `key_for`), and now
//! and then a retry of an acknowledged key, so the parent can check every record. Between
//! batches it applies size retention, which recycles retired segments.

use std::io::Write;

use log_engine::sim::SimRng;
use log_engine::{Ack, AppendRequest, FsStorage, Log, PipelinedLog, RecordKind, Ticket};

#[path = "../../tests/common/crash_records.rs"]
mod crash_records;

use crash_records::{crash_config, key_for, payload_for, CONVERSATIONS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: crash_appender <dir> <first_message_id>")?;
    let first_id: u64 = args.next().ok_or("missing first_message_id")?.parse()?;
    let config = crash_config();
    let pipelined = args.next().as_deref() == Some("pipelined");
    let mut log = if pipelined {
        Driver::Pipelined(Box::new(
            PipelinedLog::open(FsStorage::open(&dir)?, config, ())?.0,
        ))
    } else {
        Driver::Sync(Box::new(Log::open(FsStorage::open(&dir)?, config, ())?.0))
    };
    let mut rng = SimRng::new(first_id);
    let mut out = std::io::stdout().lock();
    let mut id = first_id;
    let mut last_acked: Option<(u64, u64)> = None;
    let mut pending = Vec::new();
    let mut reported_recycled = 0;
    loop {
        pending.clear();
        for _ in 0..1 + rng.below(16) {
            id += 1;
            let conv = rng.below(CONVERSATIONS);
            pending.push((conv, id));
        }
        if let (Some(retry), 0) = (last_acked, rng.below(4)) {
            pending.push(retry);
        }
        let mut tickets = Vec::with_capacity(pending.len());
        for &(conv, msg) in &pending {
            let payload = payload_for(msg);
            let req = AppendRequest {
                conversation_id: conv,
                message_id: msg,
                timestamp_ms: msg,
                key: Some(key_for(msg)),
                kind: RecordKind::Message,
                payload: &payload,
            };
            let ticket = match &mut log {
                Driver::Sync(log) => log.append_nowait(&req)?,
                Driver::Pipelined(log) => log.append_nowait(&req)?,
            };
            tickets.push(ticket);
        }
        let acks: Vec<(Ticket, Ack)> = match &mut log {
            Driver::Sync(log) => log.commit()?,
            Driver::Pipelined(log) => log.drain()?,
        };
        for (ticket, ack) in acks {
            let Some(i) = tickets.iter().position(|t| *t == ticket) else {
                continue;
            };
            let (conv, _) = pending[i];
            let dedup = u8::from(ack.deduplicated);
            writeln!(out, "ack {conv} {} {} {dedup}", ack.seq, ack.message_id)?;
            last_acked = Some((conv, ack.message_id));
        }
        out.flush()?;
        // Between batches, as a server would: retire segments past the size limit, and
        // keep a spare segment (the retired one, recycled) ready for the roll.
        let recycled_rolls = match &mut log {
            Driver::Sync(log) => {
                log.apply_retention(id)?;
                log.prepare_spare()?;
                log.recycled_rolls()
            }
            Driver::Pipelined(log) => {
                log.apply_retention(id)?;
                log.recycled_rolls()
            }
        };
        if recycled_rolls > reported_recycled {
            reported_recycled = recycled_rolls;
            writeln!(out, "recycled {recycled_rolls}")?;
        }
    }
}

/// The two drivers of the same log.
enum Driver {
    Sync(Box<Log<FsStorage>>),
    Pipelined(Box<PipelinedLog<FsStorage>>),
}
