//! One thread sending for many conversations (`chat`'s pairs, `groups`' groups), with
//! epoll: a blocking thread per sender would spend the load generator's CPU on context
//! switches, and on a small host that CPU is the server's.
//!
//! Two paces:
//! - **open loop** at `per_sender` messages per second per sender: the `k`-th send overall
//!   goes to sender `k mod n` and is due `k / (n · per_sender)` seconds after the epoch
//!   (`heartbeat::offset`), so the server sees a steady rate rather than `n` sends at once.
//!   Each body carries its scheduled time and latency counts from it (coordinated
//!   omission is charged to the server, as wrk2 does). The thread waits for due sends
//!   in `epoll_pwait2` (nanosecond timeout, 1 ns timer slack), reading answers meanwhile.
//! - **closed loop** with `window` sends outstanding per sender: every ack lets that
//!   sender send again at once (the maximum rate).
//!
//! Both read the acks as they come and stop sending at `t.end`; answers still owed are
//! read until `drain_until`. Each send's lateness (when it left − when it was due) is
//! recorded too: latency the load generator itself added because it did not get a CPU in
//! time (it is charged to the server in the latency figures, so it is reported beside
//! them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wire::client::Connection;
use wire::message::Frame;

use crate::epoll::{adopt, drain, Epoll};
use crate::{answered, heartbeat, nanos_since, report, stamped_send, Sent, Timeline};

/// The longest one wait lasts (so the loop notices its deadlines).
const WAIT_MAX: Duration = Duration::from_millis(20);

/// How sends are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Messages per second per sender, on a fixed timeline.
    Open { per_sender: f64 },
    /// Sends outstanding per sender.
    Closed { window: usize },
}

/// Send into each sender's conversation (`(connection, conversation id)`) on `t`'s
/// timeline at `pace` (see the module documentation); returns what each sender did, in
/// the order given.
pub fn send_all(
    mut senders: Vec<(Connection, u64)>,
    t: Timeline,
    pace: Pace,
    body_len: usize,
    drain_until: Instant,
) -> Vec<Sent> {
    // Sleeps end when asked, not up to 50 µs later (the default timer slack), which the
    // open loop would charge as latency.
    // SAFETY: prctl with an integer argument changes only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let n = senders.len();
    let mut out: Vec<Sent> = (0..n).map(|_| Sent::new()).collect();
    let Some(first) = out.first_mut() else {
        return out;
    };
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            report::count(&mut first.errors, format!("epoll: {e}"));
            return out;
        }
    };
    let mut alive = vec![true; n];
    for (i, (conn, _)) in senders.iter_mut().enumerate() {
        if let Err(e) = adopt(&epoll, conn, i, |_| {}) {
            report::count(&mut out[i].errors, format!("sender setup: {e}"));
            alive[i] = false;
        }
    }
    let mut outstanding: Vec<HashMap<u64, Instant>> = vec![HashMap::new(); n];
    let mut body = vec![0u8; body_len];
    // Open loop: the next send overall and when it is due.
    let interval = match pace {
        Pace::Open { per_sender } => Duration::from_secs_f64(1.0 / per_sender.max(1e-9)),
        Pace::Closed { .. } => Duration::ZERO,
    };
    let due = |k: u64| t.epoch + heartbeat::offset(k, n as u64, 0, n, interval);
    let mut k = 0u64;
    let mut next = match pace {
        Pace::Open { .. } => due(0),
        Pace::Closed { .. } => t.end,
    };
    // Closed loop: the senders that may have room in their window.
    let mut refill: Vec<usize> = match pace {
        Pace::Open { .. } => Vec::new(),
        Pace::Closed { .. } => (0..n).collect(),
    };
    let mut ready = Vec::new();
    // Send one message for sender `i`, scheduled at `scheduled`.
    let mut send_one = |i: usize,
                        scheduled: Instant,
                        senders: &mut [(Connection, u64)],
                        alive: &mut [bool],
                        outstanding: &mut [HashMap<u64, Instant>],
                        out: &mut [Sent],
                        epoll: &Epoll| {
        let (true, Some((conn, id))) = (alive[i], senders.get_mut(i)) else {
            return;
        };
        let frame = stamped_send(*id, &mut body, nanos_since(t.epoch, scheduled));
        if scheduled >= t.measure_from {
            let late = Instant::now().saturating_duration_since(scheduled);
            let _ = out[i].late.record(late.as_micros() as u64);
        }
        match conn.request(frame) {
            Ok(request_id) => {
                outstanding[i].insert(request_id, scheduled);
                out[i].sent_with_warmup += 1;
                if scheduled >= t.measure_from {
                    out[i].sent += 1;
                }
            }
            Err(e) => {
                report::count(&mut out[i].errors, format!("send: {e}"));
                alive[i] = false;
                outstanding[i].clear();
                epoll.remove(conn);
            }
        }
    };
    loop {
        let now = Instant::now();
        let sending = now < t.end;
        if !sending && (now >= drain_until || outstanding.iter().all(HashMap::is_empty)) {
            break;
        }
        match pace {
            Pace::Open { .. } => {
                while next < t.end && next <= now {
                    let i = (k % n as u64) as usize;
                    send_one(
                        i,
                        next,
                        &mut senders,
                        &mut alive,
                        &mut outstanding,
                        &mut out,
                        &epoll,
                    );
                    k += 1;
                    next = due(k);
                }
            }
            Pace::Closed { window } if sending => {
                for i in refill.drain(..) {
                    while alive[i] && outstanding[i].len() < window {
                        // Never past the end: a send made after it would count as sent
                        // while its delivery falls outside the measured window.
                        let now = Instant::now();
                        if now >= t.end {
                            break;
                        }
                        send_one(
                            i,
                            now,
                            &mut senders,
                            &mut alive,
                            &mut outstanding,
                            &mut out,
                            &epoll,
                        );
                    }
                }
            }
            Pace::Closed { .. } => {}
        }
        // In epoll until the next due send, to the nanosecond: sends leave on time and
        // answers are read as they arrive (a plain sleep here once charged up to one send
        // interval, 0.5 ms at 2,000/s, to every ack).
        let until = if next < t.end { next } else { drain_until };
        let wait = until
            .saturating_duration_since(Instant::now())
            .min(WAIT_MAX);
        epoll.wait(wait, &mut ready);
        for &i in &ready {
            let (Some((conn, _)), Some(pending), Some(sent)) =
                (senders.get_mut(i), outstanding.get_mut(i), out.get_mut(i))
            else {
                continue;
            };
            let result = drain(conn, |Frame { request_id, body }| {
                if let Some(scheduled) = pending.remove(&request_id) {
                    answered(sent, body, scheduled, t.measure_from);
                }
            });
            if let Err(e) = result {
                report::count(&mut sent.errors, format!("sender recv: {e}"));
                alive[i] = false;
                pending.clear();
                epoll.remove(conn);
            }
            if matches!(pace, Pace::Closed { .. }) {
                refill.push(i);
            }
        }
    }
    out
}
