//! `log_bench`: the log-engine benchmark on real files with real fdatasync, with the disk's
//! own figures from fio measured in the same run.
//!
//! ```sh
//! cargo run --release -p bench --bin log_bench -- --dir /work/main/target/log-bench
//! cargo run --release -p bench --bin log_bench -- --restart-gib 10   # + 10 GiB restart
//! ```
//!
//! Scenarios:
//! 1. `disk`: fio, 4 KiB write+fdatasync (preallocated file, O_DIRECT) latency, and 1 MiB
//!    O_DIRECT sequential write bandwidth.
//! 2. `throughput`: closed loop, `--appenders` concurrent appenders each with one append
//!    outstanding, for 200 B, 1 KiB and 16 KiB records: durable appends/s, MB/s, and
//!    append-to-durable latency percentiles.
//! 3. `latency`: open loop at half the measured 200 B maximum: appends arrive on a fixed
//!    schedule and latency is measured from the *scheduled* time (no coordinated omission).
//! 4. `history`: page reads (50 records before a random sequence of a random conversation).
//! 5. `restart` (with `--restart-gib`): time to reopen a log of that size.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;

use log_engine::stats::BATCH_IO_BUCKETS_US;
use log_engine::{
    AppendRequest, BatchIoSnapshot, Config, FsStorage, Log, PipelinedLog, RecordKind, Ticket,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "log-engine benchmark: durable appends, latency, reads, restart")]
struct Args {
    /// Directory for the log and fio files (emptied first).
    #[arg(long, default_value = "target/log-bench")]
    dir: PathBuf,
    /// Concurrent appenders in the closed-loop throughput runs (a shard with tens of
    /// thousands of connections can have this many sends outstanding).
    #[arg(long, default_value_t = 65_536)]
    appenders: usize,
    /// Conversations the appends are spread over.
    #[arg(long, default_value_t = 10_000)]
    conversations: u64,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open-loop rate for the latency run (the issue's target is stated at half of
    /// 1,000,000 appends/s). 0 = half of the measured 200 B maximum.
    #[arg(long, default_value_t = 500_000.0)]
    open_loop_rate: f64,
    /// Also build a log of this many GiB and time its reopen.
    #[arg(long, default_value_t = 0)]
    restart_gib: u64,
    /// Skip the fio runs.
    #[arg(long)]
    no_fio: bool,
    /// Skip the closed-loop throughput runs (then give `--open-loop-rate`).
    #[arg(long)]
    no_closed: bool,
    /// Record sizes of the closed-loop runs (comma-separated bytes).
    #[arg(long, value_delimiter = ',', default_values_t = [200, 1024, 16 * 1024])]
    sizes: Vec<usize>,
    /// Also run each closed-loop size in steady state: a log with this size limit
    /// (GiB), filled until retention retires segments and rolls reuse them (recycled
    /// segment files), then measured. 0: only the fresh-log runs.
    #[arg(long, default_value_t = 0)]
    steady_state_gib: u64,
    /// Open loop: the log's threads (I/O, spare, checkpoint) on this CPU and the owner
    /// thread on another, so that they never preempt the owner (which runs flat out at
    /// 500,000 appends/s). Unpinned by default.
    #[arg(long)]
    pin_log_threads: Option<usize>,
    /// Run the open loop in steady state too: a log with this size limit (GiB), filled
    /// (closed loop, not measured) until rolls reuse retired segments, so that no spare
    /// is zero-filled during the measured run (see `--steady-state-gib`). 0: only the
    /// fresh log, whose spares are zero-filled while it appends.
    #[arg(long, default_value_t = 0)]
    open_loop_steady_gib: u64,
    /// Open loop: the log's checkpoint interval in MiB (default: the log's default),
    /// to measure what checkpoints cost the appends' tail.
    #[arg(long)]
    checkpoint_interval_mib: Option<u64>,
}

struct RunFigures {
    appends: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Rolls into recycled segment files during the run.
    recycled_rolls: u64,
}

impl RunFigures {
    fn per_sec(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

fn main() -> Result<()> {
    // As the server does: huge pages for the log's batch buffers only (this may run
    // the program again; see `log_engine::huge_pages::set_up_for_mimalloc`).
    let huge_pages = log_engine::huge_pages::set_up_for_mimalloc();
    let args = Args::parse();
    fresh_dir(&args.dir)?;
    println!("# log_bench\n");
    println!("machine: {}", machine_description());
    println!("transparent huge pages: {huge_pages:?} (AdvisedOnly: the log's batch buffers only)");
    println!(
        "command: {}\n",
        std::env::args().collect::<Vec<_>>().join(" ")
    );

    if !args.no_fio {
        fio_figures(&args.dir)?;
    }

    let mut max_rate_200 = 0.0;
    let sizes: &[usize] = if args.no_closed { &[] } else { &args.sizes };
    if !sizes.is_empty() {
        println!(
            "\n## Durable appends, closed loop, {} appenders\n",
            args.appenders
        );
        println!("| record | appends/s | MB/s | p50 | p99 | p999 | max |");
        println!("|---|---|---|---|---|---|---|");
    }
    for &size in sizes {
        let dir = args.dir.join(format!("closed-{size}"));
        let figures = closed_loop(&dir, &args, size, None)?;
        if size == 200 {
            max_rate_200 = figures.per_sec();
        }
        print_row(&format!("{size} B"), &figures);
        std::fs::remove_dir_all(&dir).ok();
    }
    if args.steady_state_gib > 0 && !sizes.is_empty() {
        println!(
            "\n## Durable appends, closed loop, steady state: {} GiB size limit, \
             segments recycled\n",
            args.steady_state_gib
        );
        println!("| record | appends/s | MB/s | p50 | p99 | p999 | max | recycled rolls |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    for &size in sizes.iter().filter(|_| args.steady_state_gib > 0) {
        let dir = args.dir.join(format!("steady-{size}"));
        let limit = args.steady_state_gib << 30;
        let figures = closed_loop(&dir, &args, size, Some(limit))?;
        print_row_with(
            &format!("{size} B"),
            &figures,
            &figures.recycled_rolls.to_string(),
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    let rate = if args.open_loop_rate > 0.0 {
        args.open_loop_rate
    } else {
        max_rate_200 / 2.0
    };
    println!(
        "\n## Append-to-durable latency, open loop at {rate:.0} appends/s \
         (measured max {max_rate_200:.0}/s)\n"
    );
    let dir = args.dir.join("open");
    let figures = open_loop(&dir, &args, 200, rate, None)?;
    println!("| record | appends/s | MB/s | p50 | p99 | p999 | max |");
    println!("|---|---|---|---|---|---|---|");
    print_row("200 B", &figures);
    if args.open_loop_steady_gib > 0 {
        let limit = args.open_loop_steady_gib << 30;
        println!(
            "\n## Append-to-durable latency, open loop at {rate:.0} appends/s, steady state: \
             {} GiB size limit, segments recycled (no zero fill)\n",
            args.open_loop_steady_gib
        );
        let steady_dir = args.dir.join("open-steady");
        let figures = open_loop(&steady_dir, &args, 200, rate, Some(limit))?;
        println!("| record | appends/s | MB/s | p50 | p99 | p999 | max | recycled rolls |");
        println!("|---|---|---|---|---|---|---|---|");
        print_row_with("200 B", &figures, &figures.recycled_rolls.to_string());
        std::fs::remove_dir_all(&steady_dir).ok();
    }

    println!("\n## History page reads (50 records before a random seq)\n");
    history_reads(&dir, &args)?;
    std::fs::remove_dir_all(&dir).ok();

    if args.restart_gib > 0 {
        println!("\n## Restart\n");
        restart(&args.dir.join("restart"), args.restart_gib)?;
    }
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn open_log(dir: &Path) -> Result<Log<FsStorage>> {
    std::fs::create_dir_all(dir)?;
    let storage = FsStorage::open(dir)?;
    let (log, _report) = Log::open(storage, Config::default(), ())?;
    Ok(log)
}

fn open_pipelined_with(dir: &Path, config: Config) -> Result<PipelinedLog<FsStorage>> {
    std::fs::create_dir_all(dir)?;
    let storage = FsStorage::open(dir)?;
    let (log, _report) = PipelinedLog::open(storage, config, ())?;
    Ok(log)
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 3 significant digits, auto-resizing: values are µs, any range. Record with
    // `record`: `saturating_record` clamps at the current top (2,047 µs here) instead of
    // growing, which once hid every latency above 2 ms.
    let mut histogram = Histogram::new(3)?;
    histogram.auto(true);
    Ok(histogram)
}

/// A chat message append, without an idempotency key, stamped now.
fn message(conversation_id: u64, message_id: u64, payload: &[u8]) -> AppendRequest<'_> {
    AppendRequest {
        conversation_id,
        message_id,
        timestamp_ms: now_ms(),
        key: None,
        kind: RecordKind::Message,
        payload,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A cheap deterministic generator so appenders pick conversations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The appenders of a closed loop, each with one append outstanding.
struct Appenders {
    rng: Rng,
    message_id: u64,
    /// Acks arrive in ticket order, so a queue in issue order matches them in O(1).
    outstanding: VecDeque<(Ticket, Instant)>,
    /// Appenders whose last append was acked.
    idle: usize,
}

impl Appenders {
    /// Every idle appender appends again; then waits for acks and calls `on_ack` with
    /// each acked append's issue time and the time the acks arrived.
    fn round(
        &mut self,
        log: &mut PipelinedLog<FsStorage>,
        conversations: u64,
        payload: &[u8],
        mut on_ack: impl FnMut(Instant, Instant) -> Result<()>,
    ) -> Result<()> {
        for _ in 0..self.idle {
            let conversation = self.rng.next() % conversations + 1;
            let req = message(conversation, self.message_id, payload);
            self.message_id += 1;
            self.outstanding
                .push_back((log.append_nowait(&req)?, Instant::now()));
        }
        self.idle = 0;
        log.flush()?;
        let acks = log.wait_acks()?;
        let done = Instant::now();
        for (ticket, _ack) in acks {
            match self.outstanding.pop_front() {
                Some((expected, start)) if expected == ticket => on_ack(start, done)?,
                _ => bail!("ack for {ticket:?} out of order"),
            }
            self.idle += 1;
        }
        Ok(())
    }
}

/// Fills a log that has the retention size limit `limit` (closed loop, not measured)
/// until two rolls went into recycled segment files: the steady state of a log that has
/// reached its limit, where every roll reuses a retired segment and no spare is
/// zero-filled.
fn fill_to_steady_state(
    log: &mut PipelinedLog<FsStorage>,
    appenders: &mut Appenders,
    args: &Args,
    payload: &[u8],
    limit: u64,
) -> Result<()> {
    let fill_started = Instant::now();
    while log.recycled_rolls() < 2 {
        let written = log.watermarks().stable;
        if written > 4 * limit + (1 << 30) {
            bail!("filled {written} bytes into a {limit}-byte log and no roll reused a segment");
        }
        appenders.round(log, args.conversations, payload, |_, _| Ok(()))?;
    }
    println!(
        "steady state reached ({} B records): {} s of filling, {} segments",
        payload.len(),
        fill_started.elapsed().as_secs(),
        log.segment_bases().len()
    );
    Ok(())
}

/// Every appender keeps one append outstanding: as soon as its ack arrives it appends
/// again. The pipelined log encodes the next batch while the previous one is written and
/// fdatasync'ed on its I/O thread.
///
/// With `size_limit`, the log has that retention size limit and the run first fills it
/// (not measured) until two rolls went into recycled segment files: the steady state of
/// a log that has reached its limit, where every roll reuses a retired segment.
fn closed_loop(
    dir: &Path,
    args: &Args,
    size: usize,
    size_limit: Option<u64>,
) -> Result<RunFigures> {
    let config = Config {
        retention_bytes: size_limit.unwrap_or(u64::MAX),
        ..Config::default()
    };
    let mut log = open_pipelined_with(dir, config)?;
    let payload = vec![0x5Au8; size];
    let mut latency = new_histogram()?;
    let mut appends = 0u64;
    let mut appenders = Appenders {
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        message_id: 1,
        outstanding: VecDeque::with_capacity(args.appenders),
        idle: args.appenders,
    };
    if let Some(limit) = size_limit {
        fill_to_steady_state(&mut log, &mut appenders, args, &payload, limit)?;
    }
    let recycled_before = log.recycled_rolls();
    let io = log.batch_io_stats();
    let io_before = io.snapshot();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let begin = Instant::now();
    while Instant::now() < deadline {
        appenders.round(&mut log, args.conversations, &payload, |start, done| {
            appends += 1;
            latency.record(done.duration_since(start).as_micros() as u64)?;
            Ok(())
        })?;
    }
    let elapsed = begin.elapsed();
    let io_after = io.snapshot();
    print_batch_io(&io_before, &io_after);
    let busy_us = io_after.sum_us - io_before.sum_us;
    println!(
        "I/O thread in write + fdatasync {:.0}% of the run",
        busy_us as f64 / elapsed.as_micros().max(1) as f64 * 100.0
    );
    log.drain()?;
    Ok(RunFigures {
        appends,
        bytes: appends * size as u64,
        elapsed,
        latency,
        recycled_rolls: log.recycled_rolls() - recycled_before,
    })
}

/// Appends arrive on a fixed schedule; latency runs from the scheduled time to the ack.
///
/// With `size_limit`, the log is first filled to its steady state (see
/// [`fill_to_steady_state`]).
fn open_loop(
    dir: &Path,
    args: &Args,
    size: usize,
    rate: f64,
    size_limit: Option<u64>,
) -> Result<RunFigures> {
    let everywhere = current_cpus()?;
    if let Some(cpu) = args.pin_log_threads {
        // The log spawns its threads at open: they inherit the opener's CPU set.
        set_cpus(&[cpu])?;
    }
    let defaults = Config::default();
    let config = Config {
        retention_bytes: size_limit.unwrap_or(u64::MAX),
        checkpoint_interval_bytes: args
            .checkpoint_interval_mib
            .map_or(defaults.checkpoint_interval_bytes, |mib| mib << 20),
        ..defaults
    };
    let log = open_pipelined_with(dir, config);
    if let Some(cpu) = args.pin_log_threads {
        let others: Vec<usize> = everywhere.iter().copied().filter(|c| *c != cpu).collect();
        set_cpus(if others.is_empty() {
            &everywhere
        } else {
            &others
        })?;
        println!("log threads on CPU {cpu}, the owner on CPUs {others:?}");
    }
    let mut log = log?;
    // A server takes traffic after it started: its first spare segment is ready and its
    // buffers are warm. Wait for the spare, then run a warm-up second that is not
    // recorded (fio's `ramp_time`), then the measured run.
    let payload = vec![0x5Au8; size];
    if let Some(limit) = size_limit {
        let mut appenders = Appenders {
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            message_id: 1,
            outstanding: VecDeque::with_capacity(args.appenders),
            idle: args.appenders,
        };
        fill_to_steady_state(&mut log, &mut appenders, args, &payload, limit)?;
        log.drain()?;
    }
    while !log.has_spare() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let warm_up = paced_appends(&mut log, args, &payload, &mut rng, rate, 1.0)?;
    println!(
        "warm-up (not counted): {} appends, p99 {} µs",
        warm_up.appends,
        warm_up.latency.value_at_quantile(0.99)
    );
    let io = log.batch_io_stats();
    let before = io.snapshot();
    let figures = paced_appends(
        &mut log,
        args,
        &payload,
        &mut rng,
        rate,
        args.seconds as f64,
    )?;
    print_batch_io(&before, &io.snapshot());
    Ok(figures)
}

/// The I/O thread's own timing of the batches between two snapshots: how much of the
/// append-to-durable latency is the device (the rest is batching and scheduling).
fn print_batch_io(before: &BatchIoSnapshot, after: &BatchIoSnapshot) {
    let counts: Vec<u64> = after
        .buckets
        .iter()
        .zip(&before.buckets)
        .map(|(a, b)| a - b)
        .collect();
    let batches: u64 = counts.iter().sum();
    if batches == 0 {
        return;
    }
    let bound = |q: f64| {
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            if cumulative as f64 >= q * batches as f64 {
                return BATCH_IO_BUCKETS_US
                    .get(i)
                    .map_or("> 1 s".to_string(), |b| format!("≤ {b} µs"));
            }
        }
        "?".to_string()
    };
    println!(
        "batch I/O (write + fdatasync as the log's I/O thread timed them): {batches} batches, \
         {:.0} B and {:.0} µs each on average; p50 {}, p99 {}, p999 {}",
        (after.bytes - before.bytes) as f64 / batches as f64,
        (after.sum_us - before.sum_us) as f64 / batches as f64,
        bound(0.5),
        bound(0.99),
        bound(0.999)
    );
}

/// Appends at `rate` for `seconds`, each latency measured from its *scheduled* time.
fn paced_appends(
    log: &mut PipelinedLog<FsStorage>,
    args: &Args,
    payload: &[u8],
    rng: &mut Rng,
    rate: f64,
    seconds: f64,
) -> Result<RunFigures> {
    let mut latency = new_histogram()?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u64;
    let (mut issued, mut appends) = (0u64, 0u64);
    let mut scheduled: VecDeque<(Ticket, Instant)> = VecDeque::new();
    let begin = Instant::now();
    let mut stalls = OwnerStalls::default();
    let mut last_turn = begin;
    let switches_before = involuntary_switches();
    let recycled_before = log.recycled_rolls();
    while appends < total {
        let now = Instant::now();
        stalls.note(now.duration_since(last_turn));
        last_turn = now;
        while issued < total && begin + interval.mul_f64(issued as f64) <= now {
            let req = message(rng.next() % args.conversations + 1, issued + 1, payload);
            let ticket = log.append_nowait(&req)?;
            scheduled.push_back((ticket, begin + interval.mul_f64(issued as f64)));
            issued += 1;
        }
        log.flush()?;
        let acks = log.poll_acks()?;
        let done = Instant::now();
        for (ticket, _ack) in acks {
            match scheduled.pop_front() {
                Some((expected, at)) if expected == ticket => {
                    latency.record(done.duration_since(at).as_micros() as u64)?;
                }
                _ => bail!("ack for {ticket:?} out of order"),
            }
            appends += 1;
        }
    }
    let elapsed = begin.elapsed();
    let preempted = involuntary_switches().saturating_sub(switches_before);
    log.drain()?;
    println!(
        "owner loop: {} turns of over {} µs without a turn, {:.1} ms in all ({:.2}% of the \
         run), longest {} µs; {preempted} times preempted (the owner thread encodes, hands \
         batches over and collects acks; a gap is time it had no CPU or spent in one call)",
        stalls.count,
        OWNER_STALL.as_micros(),
        stalls.total.as_secs_f64() * 1e3,
        stalls.total.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
        stalls.longest.as_micros()
    );
    Ok(RunFigures {
        appends,
        bytes: appends * payload.len() as u64,
        elapsed,
        latency,
        recycled_rolls: log.recycled_rolls() - recycled_before,
    })
}

/// The CPUs the calling thread may run on.
fn current_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    let cpus = (0..libc::CPU_SETSIZE as usize)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect();
    Ok(cpus)
}

/// Restricts the calling thread to `cpus`.
fn set_cpus(cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus {
        unsafe { libc::CPU_SET(*cpu, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        bail!(
            "sched_setaffinity {cpus:?}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// How often the calling thread was preempted so far (`nonvoluntary_ctxt_switches`;
/// 0 where `/proc` does not say).
fn involuntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A gap between two turns of the open loop's owner thread longer than this is a stall.
const OWNER_STALL: Duration = Duration::from_micros(200);

/// The open loop's owner-thread stalls: every append due during one waits it out.
#[derive(Default)]
struct OwnerStalls {
    count: u64,
    total: Duration,
    longest: Duration,
}

impl OwnerStalls {
    fn note(&mut self, gap: Duration) {
        if gap > OWNER_STALL {
            self.count += 1;
            self.total += gap;
            self.longest = self.longest.max(gap);
        }
    }
}

fn history_reads(dir: &Path, args: &Args) -> Result<()> {
    let mut log = open_log(dir)?;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut latency = new_histogram()?;
    let reads = 20_000;
    let mut records = 0usize;
    let begin = Instant::now();
    for _ in 0..reads {
        let conversation = rng.next() % args.conversations + 1;
        let last = log.last_seq(conversation);
        let before = if last > 1 { rng.next() % last + 1 } else { 1 };
        let start = Instant::now();
        let page = log.read_before(conversation, before, 50)?;
        latency.record(start.elapsed().as_nanos() as u64 / 1000)?;
        records += page.records.len();
    }
    let elapsed = begin.elapsed();
    println!(
        "{reads} pages, {:.1} records/page, {:.0} pages/s; latency p50 {} µs, p99 {} µs, \
         p999 {} µs, max {} µs (after reopen: sealed segments via mmap, page cache warm)",
        records as f64 / reads as f64,
        reads as f64 / elapsed.as_secs_f64(),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.value_at_quantile(0.999),
        latency.max()
    );
    Ok(())
}

fn restart(dir: &Path, gib: u64) -> Result<()> {
    let target = gib * 1024 * 1024 * 1024;
    let payload = vec![0x42u8; 1024];
    {
        let mut log = open_log(dir)?;
        let mut written = 0u64;
        let mut message_id = 1;
        let mut rng = Rng(7);
        let begin = Instant::now();
        while written < target {
            for _ in 0..4000 {
                let req = message(rng.next() % 100_000 + 1, message_id, &payload);
                message_id += 1;
                log.append_nowait(&req)?;
            }
            log.commit()?;
            written += 4000 * (payload.len() as u64 + 56);
        }
        println!(
            "built {:.1} GiB ({} records) in {:.1} s",
            written as f64 / (1u64 << 30) as f64,
            message_id - 1,
            begin.elapsed().as_secs_f64()
        );
        log.close()?;
    }
    drop_page_cache();
    let begin = Instant::now();
    let log = open_log(dir)?;
    let elapsed = begin.elapsed();
    println!(
        "reopen of {gib} GiB: {:.2} s (page cache dropped first; {} segments)",
        elapsed.as_secs_f64(),
        log.segment_bases().len()
    );
    Ok(())
}

/// Best effort: as root, drop clean page cache so a restart reads from the disk.
fn drop_page_cache() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1\n");
}

fn print_row(label: &str, f: &RunFigures) {
    print_row_with(label, f, "");
}

/// A table row, with `extra` as one more column when it is not empty.
fn print_row_with(label: &str, f: &RunFigures, extra: &str) {
    let h = &f.latency;
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra} |")
    };
    println!(
        "| {label} | {:.0} | {:.1} | {} µs | {} µs | {} µs | {} µs |{extra}",
        f.per_sec(),
        f.mb_per_sec(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, kernel {}", kernel.trim())
}

/// The disk's own figures, from fio, in the same directory the log uses.
fn fio_figures(dir: &Path) -> Result<()> {
    let file = dir.join("fio.dat");
    let file = file.to_string_lossy();
    println!("## Disk (fio, same directory)\n");
    let sync = run_fio(&[
        "--name=write4k_fdatasync",
        &format!("--filename={file}"),
        "--size=256M",
        "--bs=4k",
        "--rw=write",
        "--direct=1",
        "--ioengine=sync",
        "--fdatasync=1",
        "--runtime=10",
        "--time_based",
    ])?;
    let job = &sync["jobs"][0];
    let write_p = |q: &str| {
        job["write"]["clat_ns"]["percentile"][q]
            .as_f64()
            .unwrap_or(0.0)
    };
    let sync_p = |q: &str| {
        job["sync"]["lat_ns"]["percentile"][q]
            .as_f64()
            .unwrap_or(0.0)
    };
    println!(
        "4 KiB O_DIRECT write+fdatasync (overwriting a laid-out file): {:.0} ops/s; \
         fdatasync p50 {:.0} µs, p99 {:.0} µs, p999 {:.0} µs; write p99 {:.0} µs",
        job["write"]["iops"].as_f64().unwrap_or(0.0),
        sync_p("50.000000") / 1e3,
        sync_p("99.000000") / 1e3,
        sync_p("99.900000") / 1e3,
        write_p("99.000000") / 1e3
    );
    // Sequential bandwidth as one stream of 1 MiB writes (what a single log writer can
    // use) and with 8 in flight (what the device can do).
    for depth in ["1", "8"] {
        let seq = run_fio(&[
            "--name=seq1m",
            &format!("--filename={file}"),
            "--size=2G",
            "--bs=1M",
            "--rw=write",
            "--direct=1",
            "--ioengine=libaio",
            &format!("--iodepth={depth}"),
            "--runtime=10",
            "--time_based",
        ])?;
        let bw = seq["jobs"][0]["write"]["bw_bytes"].as_f64().unwrap_or(0.0);
        println!(
            "1 MiB O_DIRECT sequential write, iodepth {depth}: {:.0} MB/s",
            bw / 1e6
        );
    }
    std::fs::remove_file(dir.join("fio.dat")).ok();
    Ok(())
}

fn run_fio(extra: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new("fio")
        .args(extra)
        .arg("--output-format=json")
        .output()
        .context("running fio (apt-get install fio)")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}
