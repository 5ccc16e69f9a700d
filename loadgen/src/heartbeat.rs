//! The heartbeat half of the `idle` scenario (`--ping-interval-ms P`): every held
//! connection sends a wire `Ping` every P ms and the `Pong`s are read and counted.
//!
//! A few threads do it all, each for a contiguous share of the connections, with one
//! epoll set. The pings are spread evenly in time over *all* connections: connection `i`
//! (of `N`) pings at `epoch + i·P/N + r·P` for rounds `r = 0, 1, ...`, so the server sees
//! a steady `N/P` pings per second, not bursts. The schedule is an open loop: a thread that
//! falls behind sends what is due at once (and reports how late it got, `lag_max`).
//! A pong counts if its ping was sent in the measured window (the nonce carries the
//! ping's scheduled time), even if it arrives after the window: the threads read on for
//! up to a second for those.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::client::Connection;
use wire::message::{Body, Ping};

use crate::epoll::{adopt, drain, Epoll};
use crate::fleet::{counts_from_json, histogram_from_json, histogram_json};
use crate::{histogram, nanos_since};

/// The longest one wait for pongs lasts (so the loop notices the end of the window).
const WAIT_MAX: Duration = Duration::from_millis(50);
/// How long after the window the pongs of the pings sent in it are still awaited.
const PONG_GRACE: Duration = Duration::from_secs(1);

/// Timeline shared by the heartbeat threads.
#[derive(Clone, Copy)]
pub struct Plan {
    pub epoch: Instant,
    /// Pings sent from here to `end` (and their pongs) are counted.
    pub measure_from: Instant,
    pub end: Instant,
    /// Per connection.
    pub interval: Duration,
    /// Connections over all threads (the phases are spread over all of them).
    pub total: usize,
}

/// What one heartbeat thread counted (inside the measurement window).
pub struct Totals {
    pub sent: u64,
    pub pongs: u64,
    /// Ping (scheduled time) to Pong, µs.
    pub rtt: Histogram<u64>,
    /// Frames other than `Pong` (pushes; none are expected on idle connections).
    pub other: u64,
    /// How late the thread sent its latest-sent ping.
    pub lag_max: Duration,
    /// Connections still open at the end.
    pub held: usize,
    pub errors: HashMap<String, u64>,
}

impl Totals {
    pub fn new() -> Totals {
        Totals {
            sent: 0,
            pongs: 0,
            rtt: histogram(),
            other: 0,
            lag_max: Duration::ZERO,
            held: 0,
            errors: HashMap::new(),
        }
    }

    pub fn merge(&mut self, other: &Totals) {
        self.sent += other.sent;
        self.pongs += other.pongs;
        let _ = self.rtt.add(&other.rtt);
        self.other += other.other;
        self.lag_max = self.lag_max.max(other.lag_max);
        self.held += other.held;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// The totals as a worker reports them (the histogram as `[value, count]` pairs).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "held": self.held,
            "sent": self.sent,
            "pongs": self.pongs,
            "other": self.other,
            "lag_max_us": self.lag_max.as_micros() as u64,
            "rtt": histogram_json(&self.rtt),
            "errors": self.errors,
        })
    }

    /// The inverse of [`Totals::to_json`] (a missing field reads as zero).
    pub fn from_json(v: &serde_json::Value) -> Totals {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Totals {
            held: n("held") as usize,
            sent: n("sent"),
            pongs: n("pongs"),
            other: n("other"),
            lag_max: Duration::from_micros(n("lag_max_us")),
            rtt: histogram_from_json(&v["rtt"]),
            errors: counts_from_json(&v["errors"]),
        }
    }
}

/// Ping `conns` (connections `first..first + conns.len()` of `plan.total`) until
/// `plan.end`; returns the counts and the connections (still open, for the caller to
/// drop after it has read the server's memory).
pub fn run(mut conns: Vec<Connection>, first: usize, plan: Plan) -> (Totals, Vec<Connection>) {
    let mut totals = Totals::new();
    let n = conns.len() as u64;
    if n == 0 {
        return (totals, conns);
    }
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            totals.errors.insert(format!("epoll: {e}"), 1);
            return (totals, conns);
        }
    };
    let mut alive = vec![true; conns.len()];
    for (i, conn) in conns.iter_mut().enumerate() {
        if let Err(e) = adopt(&epoll, conn, i, |_| {}) {
            *totals.errors.entry(format!("setup: {e}")).or_default() += 1;
            alive[i] = false;
        }
    }
    let due = |k: u64| plan.epoch + offset(k, n, first, plan.total, plan.interval);
    let mut k = 0u64;
    let mut next = due(0);
    let mut ready = Vec::new();
    let (from_ns, end_ns) = (
        nanos_since(plan.epoch, plan.measure_from),
        nanos_since(plan.epoch, plan.end),
    );
    loop {
        let now = Instant::now();
        // After the end no more pings; the pongs of the measured ones are still awaited.
        if now >= plan.end && (totals.pongs >= totals.sent || now >= plan.end + PONG_GRACE) {
            break;
        }
        while next <= now && next < plan.end {
            let i = (k % n) as usize;
            if alive[i] {
                let ping = Body::Ping(Ping {
                    nonce: nanos_since(plan.epoch, next),
                    client_time_ms: 0,
                });
                match conns[i].request(ping) {
                    Ok(_) if next >= plan.measure_from => {
                        totals.sent += 1;
                        totals.lag_max = totals.lag_max.max(now - next);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *totals.errors.entry(format!("ping: {e}")).or_default() += 1;
                        alive[i] = false;
                        epoll.remove(&mut conns[i]);
                    }
                }
            }
            k += 1;
            next = due(k);
        }
        let wait = if next < plan.end {
            next.saturating_duration_since(now)
        } else {
            (plan.end + PONG_GRACE).saturating_duration_since(now)
        };
        epoll.wait(wait.min(WAIT_MAX), &mut ready);
        for &i in &ready {
            let Some(conn) = conns.get_mut(i) else {
                continue;
            };
            let result = drain(conn, |frame| match frame.body {
                // The nonce is the ping's scheduled time: its pong counts if the ping did.
                Body::Pong(pong) if (from_ns..end_ns).contains(&pong.nonce) => {
                    totals.pongs += 1;
                    let rtt = nanos_since(plan.epoch, Instant::now()).saturating_sub(pong.nonce);
                    let _ = totals.rtt.record(rtt / 1000);
                }
                Body::Pong(_) => {}
                _ => totals.other += 1,
            });
            if let Err(e) = result {
                *totals.errors.entry(format!("recv: {e}")).or_default() += 1;
                alive[i] = false;
                epoll.remove(conn);
            }
        }
    }
    totals.held = alive.iter().filter(|a| **a).count();
    (totals, conns)
}

/// When ping `k` of a thread holding `n` connections, `first..first + n` of `total`, is
/// due after the epoch: connection `k % n` in round `k / n`.
pub fn offset(k: u64, n: u64, first: usize, total: usize, interval: Duration) -> Duration {
    let interval = interval.as_nanos();
    let (round, i) = ((k / n) as u128, first as u128 + (k % n) as u128);
    let at = round * interval + i * interval / total.max(1) as u128;
    Duration::from_nanos(at.min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_are_spread_over_all_connections() {
        let p = Duration::from_millis(1000);
        // 4 connections over 2 threads: 0, 250, 500, 750 ms, then a period later.
        let a: Vec<u128> = (0..4).map(|k| offset(k, 2, 0, 4, p).as_millis()).collect();
        let b: Vec<u128> = (0..4).map(|k| offset(k, 2, 2, 4, p).as_millis()).collect();
        assert_eq!(a, [0, 250, 1000, 1250]);
        assert_eq!(b, [500, 750, 1500, 1750]);
    }
}
