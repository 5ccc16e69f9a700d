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

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(256 + self.shards.len() * 256);
        let gauges: [(&str, &str, Field); 2] = [
            ("confab_connections", "Open connections", |c| &c.connections),
            ("confab_ws_sessions", "Open WebSocket sessions", |c| {
                &c.ws_sessions
            }),
        ];
        for (name, help, field) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}, per shard.\n# TYPE {name} gauge");
            for (i, c) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", load(field(c)));
            }
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
        let name = "confab_protocol_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections failed for bad input.\n# TYPE {name} counter"
        );
        for (i, c) in self.shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", load(&c.protocol_errors));
        }
        out
    }
}

/// Picks one counter out of a shard's slot.
type Field = fn(&ShardCounters) -> &AtomicU64;

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
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
        metrics.shard(1).closed();
        assert_eq!(metrics.shard(1).connections(), 0);
    }

    #[test]
    fn slots_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<ShardCounters>(), 64);
    }
}
