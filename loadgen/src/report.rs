//! What a scenario hands back: its JSON object, its human summary and its latency
//! histograms, so that the standalone scenario and `mixed` print the same figures, and
//! `--hdr-log FILE` can write every histogram of the run.
//!
//! The log is HdrHistogram's interval log (the format of Java's `HistogramLogWriter`,
//! read by `HistogramLogProcessor`, HdrHistogram's plotters and hdrhistogram's
//! `IntervalLogIterator`): a `StartTime` and `BaseTime` header (the run's start, seconds
//! since the Unix epoch), then one line per histogram, `Tag=<name>,<start>,<length>,<max>,
//! <base64 of the V2 deflate encoding>`, where `<start>` is the histogram's measurement
//! window's start in seconds after BaseTime and `<length>` its length. Values are
//! microseconds. In `mixed` the tags carry their section: `chat.deliver`, `groups.ack`...

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::{Result, Timeline};

/// Set in worker processes: their stderr is the coordinator's terminal, where only the
/// coordinator draws a live line.
pub static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// How often the live line is redrawn.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// The live progress line on stderr while `t` runs, when stderr is a terminal (and this
/// is not a worker): the seconds of the window done and, with `count`, its value and
/// rate (deliveries so far). Gone, with a newline, at the end of the window.
pub fn live_line(
    label: &'static str,
    t: Timeline,
    count: Option<Arc<AtomicU64>>,
) -> Option<std::thread::JoinHandle<()>> {
    if IN_WORKER.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
        return None;
    }
    Some(std::thread::spawn(move || {
        let window = t.window().as_secs_f64();
        let mut last = (Instant::now(), 0u64);
        while Instant::now() < t.end {
            std::thread::sleep(LIVE_EVERY.min(t.end.saturating_duration_since(Instant::now())));
            let now = Instant::now();
            let phase = if now < t.measure_from {
                "warm-up".to_string()
            } else {
                let done = now.duration_since(t.measure_from).as_secs_f64();
                format!("{:.0}/{window:.0} s", done.min(window))
            };
            let mut line = format!("\r{label}: {phase}");
            if let Some(count) = &count {
                let n = count.load(Ordering::Relaxed);
                let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
                let rate = n.saturating_sub(last.1) as f64 / secs;
                line.push_str(&format!(", {n} delivered ({rate:.0}/s)"));
                last = (now, n);
            }
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{line}   ");
            let _ = err.flush();
        }
        eprintln!();
    }))
}

/// One latency histogram (µs) with its name and the window it covers.
pub struct Tagged {
    pub tag: String,
    /// Start of the measurement window (wall clock).
    pub start: SystemTime,
    pub length: Duration,
    pub histogram: Histogram<u64>,
}

/// A scenario's result.
pub struct Report {
    pub json: serde_json::Value,
    pub human: String,
    pub histograms: Vec<Tagged>,
}

impl Report {
    pub fn new(json: serde_json::Value, human: String) -> Report {
        Report {
            json,
            human,
            histograms: Vec::new(),
        }
    }

    /// Add a histogram for `--hdr-log`, measured over `length` from `start`.
    pub fn with(mut self, tag: &str, start: Instant, length: Duration, h: &Histogram<u64>) -> Self {
        self.histograms.push(Tagged {
            tag: tag.to_string(),
            start: wall(start),
            length,
            histogram: h.clone(),
        });
        self
    }

    /// Print the JSON object or the human summary.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json);
        } else {
            print!("{}", self.human);
        }
    }
}

/// The wall-clock time of an `Instant` (for the log's timestamps).
pub fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    let wall_now = SystemTime::now();
    if at <= now {
        wall_now
            .checked_sub(now.duration_since(at))
            .unwrap_or(wall_now)
    } else {
        wall_now + at.duration_since(now)
    }
}

/// Write `histograms` to `path` as an interval log (see the module documentation).
pub fn write_hdr_log(
    path: &Path,
    scenario: &str,
    started: SystemTime,
    histograms: &[Tagged],
) -> Result<()> {
    let failed = |e: &dyn std::fmt::Display| format!("--hdr-log {}: {e}", path.display());
    let mut out: Vec<u8> = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "loadgen {scenario}: latency histograms in microseconds, one per name"
            ))
            .with_start_time(started)
            .with_base_time(started)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| failed(&e))?;
        for t in histograms {
            let tag = Tag::new(&t.tag).ok_or_else(|| failed(&format!("bad tag {:?}", t.tag)))?;
            let offset = t.start.duration_since(started).unwrap_or_default();
            writer
                .write_histogram(&t.histogram, offset, t.length, Some(tag))
                .map_err(|e| failed(&e))?;
        }
    }
    std::fs::write(path, out).map_err(|e| failed(&e))
}

/// `{"p50", "p90", "p99", "p999", "max"}` of a histogram (µs).
pub fn latency(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

/// A loud line when deliveries broke the per-conversation order (see `groups::Seen`).
pub fn order_line(out: &mut String, repeated: u64, gaps: u64) {
    if repeated + gaps > 0 {
        let _ = writeln!(
            out,
            "  ORDER BROKEN: {repeated} deliveries repeated or reordered, {gaps} gaps"
        );
    }
}

/// One human line of a latency histogram: `  <name> µs  p50 .. p90 .. p99 .. p999 .. max ..`.
pub fn latency_line(out: &mut String, name: &str, h: &Histogram<u64>) {
    let q = |p: f64| h.value_at_quantile(p);
    let _ = writeln!(
        out,
        "  {name:18} µs  p50 {}  p90 {}  p99 {}  p999 {}  max {}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max()
    );
}

/// Add `more` into `errors` (counts by kind).
pub fn merge_errors(errors: &mut HashMap<String, u64>, more: HashMap<String, u64>) {
    for (k, v) in more {
        *errors.entry(k).or_default() += v;
    }
}

/// Count one error of `kind`.
pub fn count(errors: &mut HashMap<String, u64>, kind: String) {
    *errors.entry(kind).or_default() += 1;
}
