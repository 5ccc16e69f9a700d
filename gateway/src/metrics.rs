//! Per-shard counters and the Prometheus text rendering of `/metrics`.
//!
//! Choice: one cache-line-aligned slot of atomics per shard, in an array shared by all
//! shards. A shard only ever writes its own slot (relaxed, uncontended: no lock, no shared
//! cache line); the `/metrics` handler, on whichever shard serves it, only reads all slots.
//! A cross-shard snapshot over the mesh would give the same numbers at the cost of a round
//! trip per scrape; the atomics are simpler until counters need histograms.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Http,
    Tcp,
}

/// One shard's counters. Aligned so two shards never share a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ShardCounters {
    connections: AtomicU64,
    accepted_http: AtomicU64,
    accepted_tcp: AtomicU64,
    ws_sessions: AtomicU64,
    protocol_errors: AtomicU64,
    sessions: AtomicU64,
    handed_off: AtomicU64,
    adopted: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    messages_stored: AtomicU64,
    pushed: AtomicU64,
    rate_limited: AtomicU64,
    storage_errors: AtomicU64,
    mesh_dropped: AtomicU64,
    presence_pushed: AtomicU64,
    push_jobs_pending: AtomicU64,
    push_created: AtomicU64,
    push_delivered: AtomicU64,
    push_cancelled: AtomicU64,
    push_failed_attempts: AtomicU64,
    push_dead_lettered: AtomicU64,
    keys_claimed: AtomicU64,
    media_uploaded: AtomicU64,
    media_deduped: AtomicU64,
    media_bytes_in: AtomicU64,
    media_bytes_out: AtomicU64,
    media_refused: AtomicU64,
    link_sent: AtomicU64,
    link_received: AtomicU64,
    link_dropped: AtomicU64,
    link_opened: AtomicU64,
    link_bad_frames: AtomicU64,
    link_timed_out: AtomicU64,
    redirected: AtomicU64,
    /// Append-to-durable latency: counts per bucket of [`APPEND_BUCKETS_US`], plus +Inf.
    append_buckets: [AtomicU64; APPEND_BUCKETS_US.len() + 1],
    append_sum_us: AtomicU64,
    /// The shard log's I/O thread's timing of each batch, once the log is open.
    log_io: std::sync::OnceLock<Arc<log_engine::BatchIoStats>>,
}

/// Upper bounds (µs) of the append-to-durable latency histogram buckets.
pub const APPEND_BUCKETS_US: [u64; 12] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 500_000, 1_000_000,
];

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ShardCounters {
    pub fn accepted(&self, listener: Listener) {
        let counter = match listener {
            Listener::Http => &self.accepted_http,
            Listener::Tcp => &self.accepted_tcp,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn ws_opened(&self) {
        self.ws_sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ws_closed(&self) {
        self.ws_sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_opened(&self) {
        add(&self.sessions);
    }

    pub fn session_closed(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn handed_off(&self) {
        add(&self.handed_off);
    }

    /// A connection handed over by another shard (counted open here).
    pub fn adopted(&self) {
        add(&self.adopted);
        add(&self.connections);
    }

    pub fn frame_in(&self) {
        add(&self.frames_in);
    }

    pub fn frame_out(&self) {
        add(&self.frames_out);
    }

    pub fn message_stored(&self) {
        add(&self.messages_stored);
    }

    pub fn pushed(&self, n: u64) {
        self.pushed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        add(&self.rate_limited);
    }

    pub fn storage_error(&self) {
        add(&self.storage_errors);
    }

    pub fn mesh_dropped(&self) {
        add(&self.mesh_dropped);
    }

    /// Presence update frames queued to subscribers.
    pub fn presence_pushed(&self, n: u64) {
        self.presence_pushed.fetch_add(n, Ordering::Relaxed);
    }

    /// Push jobs not yet ended on this shard.
    pub fn push_jobs_pending(&self, n: u64) {
        self.push_jobs_pending.store(n, Ordering::Relaxed);
    }

    pub fn push_created(&self) {
        add(&self.push_created);
    }

    pub fn push_delivered(&self) {
        add(&self.push_delivered);
    }

    pub fn push_cancelled(&self, n: u64) {
        self.push_cancelled.fetch_add(n, Ordering::Relaxed);
    }

    pub fn push_failed_attempt(&self) {
        add(&self.push_failed_attempts);
    }

    /// One-time keys handed out.
    pub fn keys_claimed(&self, n: u64) {
        self.keys_claimed.fetch_add(n, Ordering::Relaxed);
    }

    /// A verified upload stored (`bytes` long).
    pub fn media_uploaded(&self, bytes: u64) {
        add(&self.media_uploaded);
        self.media_bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A presign answered "exists": nothing to upload.
    pub fn media_deduped(&self) {
        add(&self.media_deduped);
    }

    pub fn media_bytes_out(&self, bytes: u64) {
        self.media_bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A media request refused (bad signature, expired, tampered, too large...).
    pub fn media_refused(&self) {
        add(&self.media_refused);
    }

    /// A message forwarded to another node.
    pub fn link_sent(&self) {
        add(&self.link_sent);
    }

    /// A message received from another node.
    pub fn link_received(&self) {
        add(&self.link_received);
    }

    /// A message for another node dropped (node down, link full or reconnecting).
    pub fn link_dropped(&self) {
        add(&self.link_dropped);
    }

    /// An outbound node link connected.
    pub fn link_opened(&self) {
        add(&self.link_opened);
    }

    /// A node-link frame that failed to decode or match.
    pub fn link_bad_frame(&self) {
        add(&self.link_bad_frames);
    }

    /// A client sent to its home node (cluster mode).
    pub fn redirected(&self) {
        add(&self.redirected);
    }

    /// Forwarded requests that got no reply in time.
    pub fn link_timed_out(&self, n: u64) {
        self.link_timed_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn push_dead_lettered(&self) {
        add(&self.push_dead_lettered);
    }

    /// Show the shard log's batch I/O timing (set once, when the log opens).
    pub fn log_opened(&self, stats: Arc<log_engine::BatchIoStats>) {
        let _ = self.log_io.set(stats);
    }

    fn append_latency(&self, elapsed: std::time::Duration) {
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = APPEND_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(APPEND_BUCKETS_US.len());
        if let Some(counter) = self.append_buckets.get(bucket) {
            add(counter);
        }
        self.append_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// All shards' counters; cloned into every shard at startup.
#[derive(Debug, Clone)]
pub struct Metrics {
    shards: Arc<[ShardCounters]>,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| ShardCounters::default()).collect(),
        }
    }

    /// The slot shard `id` writes. Panics on an id out of range (a startup bug).
    pub fn shard(&self, id: usize) -> &ShardCounters {
        &self.shards[id]
    }

    /// Record one message append's time from call to durable.
    pub fn append_latency(&self, shard: usize, elapsed: std::time::Duration) {
        if let Some(counters) = self.shards.get(shard) {
            counters.append_latency(elapsed);
        }
    }

    /// One metric family with a sample per shard.
    fn family(&self, out: &mut String, name: &str, help: &str, kind: &str, field: Field) {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for (i, c) in self.shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", load(field(c)));
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + self.shards.len() * 256);
        let gauges: [(&str, &str, Field); 4] = [
            ("confab_push_jobs_pending", "Push jobs not yet ended", |c| {
                &c.push_jobs_pending
            }),
            ("confab_connections", "Open connections", |c| &c.connections),
            ("confab_ws_sessions", "Open WebSocket sessions", |c| {
                &c.ws_sessions
            }),
            ("confab_sessions", "Authenticated sessions", |c| &c.sessions),
        ];
        for (name, help, field) in gauges {
            self.family(
                &mut out,
                name,
                &format!("{help}, per shard"),
                "gauge",
                field,
            );
        }
        let counters: [(&str, &str, Field); 29] = [
            (
                "confab_keys_claimed_total",
                "One-time pre-keys handed out",
                |c| &c.keys_claimed,
            ),
            (
                "confab_media_uploads_total",
                "Media uploads verified and stored",
                |c| &c.media_uploaded,
            ),
            (
                "confab_media_deduped_total",
                "Media presigns answered with an existing object",
                |c| &c.media_deduped,
            ),
            ("confab_media_bytes_in_total", "Media bytes stored", |c| {
                &c.media_bytes_in
            }),
            ("confab_media_bytes_out_total", "Media bytes served", |c| {
                &c.media_bytes_out
            }),
            (
                "confab_media_refused_total",
                "Media requests refused (signature, expiry, hash, size, type)",
                |c| &c.media_refused,
            ),
            (
                "confab_link_sent_total",
                "Messages forwarded to other nodes",
                |c| &c.link_sent,
            ),
            (
                "confab_link_received_total",
                "Messages received from other nodes",
                |c| &c.link_received,
            ),
            (
                "confab_link_dropped_total",
                "Messages for other nodes dropped (node down, link full or reconnecting)",
                |c| &c.link_dropped,
            ),
            (
                "confab_link_connects_total",
                "Outbound node links opened",
                |c| &c.link_opened,
            ),
            (
                "confab_link_bad_frames_total",
                "Node-link frames refused",
                |c| &c.link_bad_frames,
            ),
            (
                "confab_redirects_total",
                "Clients redirected to their home node",
                |c| &c.redirected,
            ),
            (
                "confab_link_timeouts_total",
                "Forwarded requests that got no reply in time",
                |c| &c.link_timed_out,
            ),
            (
                "confab_presence_updates_total",
                "Presence update frames queued to subscribers",
                |c| &c.presence_pushed,
            ),
            ("confab_push_jobs_total", "Push jobs recorded", |c| {
                &c.push_created
            }),
            (
                "confab_push_delivered_total",
                "Push jobs the provider accepted",
                |c| &c.push_delivered,
            ),
            (
                "confab_push_cancelled_total",
                "Push jobs cancelled because the user came online",
                |c| &c.push_cancelled,
            ),
            (
                "confab_push_failed_attempts_total",
                "Push provider attempts that failed",
                |c| &c.push_failed_attempts,
            ),
            (
                "confab_push_dead_lettered_total",
                "Push jobs dead-lettered after their last attempt",
                |c| &c.push_dead_lettered,
            ),
            (
                "confab_handoffs_total",
                "Connections handed to their user's home shard",
                |c| &c.handed_off,
            ),
            (
                "confab_adopted_total",
                "Connections adopted from another shard",
                |c| &c.adopted,
            ),
            ("confab_frames_in_total", "Request frames received", |c| {
                &c.frames_in
            }),
            ("confab_frames_out_total", "Frames sent", |c| &c.frames_out),
            (
                "confab_messages_stored_total",
                "Messages made durable",
                |c| &c.messages_stored,
            ),
            (
                "confab_pushes_total",
                "Messages offered to a user's devices",
                |c| &c.pushed,
            ),
            (
                "confab_rate_limited_total",
                "Frames refused by the rate limit",
                |c| &c.rate_limited,
            ),
            (
                "confab_storage_errors_total",
                "Log appends or reads that failed",
                |c| &c.storage_errors,
            ),
            (
                "confab_mesh_dropped_total",
                "Mesh messages dropped (peer gone or full)",
                |c| &c.mesh_dropped,
            ),
            (
                "confab_protocol_errors_total",
                "Connections failed for bad input",
                |c| &c.protocol_errors,
            ),
        ];
        for (name, help, field) in counters {
            self.family(&mut out, name, help, "counter", field);
        }
        let appends: Vec<(Vec<u64>, u64)> = self
            .shards
            .iter()
            .map(|c| {
                let buckets = c.append_buckets.iter().map(load).collect();
                (buckets, load(&c.append_sum_us))
            })
            .collect();
        histogram_family(
            &mut out,
            "confab_append_durable_seconds",
            "Message append to durable (fdatasync covered it)",
            &APPEND_BUCKETS_US,
            &appends,
        );
        let io: Vec<log_engine::BatchIoSnapshot> = self
            .shards
            .iter()
            .map(|c| c.log_io.get().map(|s| s.snapshot()).unwrap_or_default())
            .collect();
        let batches: Vec<(Vec<u64>, u64)> =
            io.iter().map(|s| (s.buckets.clone(), s.sum_us)).collect();
        histogram_family(
            &mut out,
            "confab_log_batch_io_seconds",
            "One log batch's write and fdatasync as the log's I/O thread timed them (append to durable minus this is queueing)",
            &log_engine::stats::BATCH_IO_BUCKETS_US,
            &batches,
        );
        let name = "confab_log_batch_bytes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Bytes the log's batches wrote.\n# TYPE {name} counter"
        );
        for (i, s) in io.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", s.bytes);
        }
        let name = "confab_connections_accepted_total";
        let _ = writeln!(
            out,
            "# HELP {name} Accepted connections.\n# TYPE {name} counter"
        );
        for (i, c) in self.shards.iter().enumerate() {
            let (http, tcp) = (load(&c.accepted_http), load(&c.accepted_tcp));
            let _ = writeln!(out, "{name}{{shard=\"{i}\",listener=\"http\"}} {http}");
            let _ = writeln!(out, "{name}{{shard=\"{i}\",listener=\"tcp\"}} {tcp}");
        }
        process_family(&mut out);
        out
    }
}

/// The process's own resident memory and CPU time, under the names Prometheus client
/// libraries use, so a load generator on another host can work out memory per connection
/// (`loadgen idle --server-metrics`) and dashboards need nothing special. Read from
/// `/proc/self` at each scrape; absent where there is no `/proc`.
fn process_family(out: &mut String) {
    if let Some(rss) = process_rss_bytes() {
        let name = "process_resident_memory_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} Resident memory size in bytes.\n# TYPE {name} gauge\n{name} {rss}"
        );
    }
    if let Some(cpu) = process_cpu_seconds() {
        let name = "process_cpu_seconds_total";
        let _ = writeln!(
            out,
            "# HELP {name} Total user and system CPU time spent in seconds.\n# TYPE {name} counter\n{name} {cpu}"
        );
    }
}

fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Picks one counter out of a shard's slot.
type Field = fn(&ShardCounters) -> &AtomicU64;

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// A histogram family with one series per shard: `per_shard[i]` holds shard i's counts
/// per bucket of `bounds_us` (not cumulative; one more for +Inf) and its sum in µs.
fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    bounds_us: &[u64],
    per_shard: &[(Vec<u64>, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} histogram");
    for (i, (buckets, sum_us)) in per_shard.iter().enumerate() {
        let mut cumulative = 0;
        for (bound, count) in bounds_us.iter().zip(buckets) {
            cumulative += count;
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{i}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += buckets.get(bounds_us.len()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{i}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = *sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{shard=\"{i}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{i}\"}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_shard() {
        let metrics = Metrics::new(2);
        metrics.shard(1).accepted(Listener::Tcp);
        let text = metrics.render();
        assert!(text.contains("confab_connections{shard=\"0\"} 0\n"));
        assert!(text.contains("confab_connections{shard=\"1\"} 1\n"));
        assert!(text.contains("confab_connections_accepted_total{shard=\"1\",listener=\"tcp\"} 1"));
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(rss.is_some_and(|b| b > 0), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        metrics.shard(1).closed();
        assert_eq!(metrics.shard(1).connections(), 0);
    }

    #[test]
    fn log_batch_io_is_a_cumulative_histogram_per_shard() {
        let metrics = Metrics::new(2);
        let stats = Arc::new(log_engine::BatchIoStats::default());
        stats.record(std::time::Duration::from_micros(80), 4096);
        stats.record(std::time::Duration::from_micros(150), 8192);
        stats.record(std::time::Duration::from_secs(2), 4096);
        metrics.shard(1).log_opened(Arc::clone(&stats));
        metrics.append_latency(1, std::time::Duration::from_micros(300));
        let text = metrics.render();
        let name = "confab_log_batch_io_seconds";
        for line in [
            format!("{name}_bucket{{shard=\"1\",le=\"0.00005\"}} 0"),
            format!("{name}_bucket{{shard=\"1\",le=\"0.0001\"}} 1"),
            format!("{name}_bucket{{shard=\"1\",le=\"0.0002\"}} 2"),
            format!("{name}_bucket{{shard=\"1\",le=\"1\"}} 2"),
            format!("{name}_bucket{{shard=\"1\",le=\"+Inf\"}} 3"),
            format!("{name}_count{{shard=\"1\"}} 3"),
            format!("{name}_sum{{shard=\"1\"}} 2.00023"),
            // A shard whose log is not open yet shows an empty histogram.
            format!("{name}_count{{shard=\"0\"}} 0"),
            "confab_log_batch_bytes_total{shard=\"1\"} 16384".to_string(),
            "confab_append_durable_seconds_bucket{shard=\"1\",le=\"0.0002\"} 0".to_string(),
            "confab_append_durable_seconds_bucket{shard=\"1\",le=\"0.0005\"} 1".to_string(),
            "confab_append_durable_seconds_count{shard=\"1\"} 1".to_string(),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "missing {line:?} in {text}"
            );
        }
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<ShardCounters>(), 64);
    }
}
