//! The `groups` scenario (and `group`, its one-group case): fan-out to many groups.
//!
//! Setup: `G × M` fresh users, one connection each (refused above the per-process
//! connection budget); the first member of each group creates it with the other `M − 1`
//! and is its only sender.
//!
//! Load: one thread sends for every group in an open loop at `R / G` messages per second
//! per group. The `k`-th send overall goes to group `k mod G` and is due `k / R` seconds
//! after the epoch (the same spreading as the heartbeats, `heartbeat::offset`), so the
//! server sees a steady `R` per second rather than `G` sends at once. Each body carries
//! its scheduled time; latency counts from it (coordinated omission is charged to the
//! server, as in `chat`). The thread waits for due sends with epoll for whole
//! milliseconds and sleeps (a high-resolution timer) for the rest, and reads the acks.
//!
//! `--threads` reader threads each take a share of all the members' connections, read
//! them with epoll, and send Delivered receipts coalesced to one per connection per
//! 100 ms (what a real client does; the group's owner batches them on to the sender).
//!
//! Figures (sends scheduled in the measured window): sent, acked, deliveries (expected:
//! sent × (M − 1)), deliveries per second, send→each member (every delivery), send→last
//! member (per message that reached every member), send→ack, errors by kind.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::client::Connection;
use wire::message::{Body, Frame, ReceiptKind};

use crate::epoll::{adopt, drain, Epoll};
use crate::report::{self, latency, latency_line, Report};
use crate::{
    answered, check_conns, connect_users, heartbeat, histogram, messages_of, nanos_since, run_id,
    stamp_of, stamped_send, Cli, Result, Sent, Timeline,
};

/// The longest one wait lasts (so the loops notice their deadlines).
const WAIT_MAX: Duration = Duration::from_millis(20);
/// Members send a Delivered receipt at most this often.
const RECEIPT_EVERY: Duration = Duration::from_millis(100);
/// Reading (acks and deliveries) goes on this long after the last send.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
pub struct Options {
    /// `groups` or `group` (the JSON `scenario`).
    pub name: &'static str,
    pub groups: usize,
    /// Per group, its sender included.
    pub members: usize,
    /// Messages per second over all groups.
    pub rate: u64,
    pub duration: Duration,
    pub body: usize,
    /// Reader threads.
    pub threads: usize,
}

/// Groups created and every member connected: ready to run.
pub struct Setup {
    o: Options,
    /// Per group: its sender's connection and the group's conversation.
    senders: Vec<(Connection, u64)>,
    /// Every other member's connection and its group.
    members: Vec<(Connection, u64)>,
}

/// What a run counted.
pub struct Totals {
    sent: Sent,
    each: Histogram<u64>,
    last: Histogram<u64>,
    deliveries: u64,
    /// Messages that reached every member.
    complete: u64,
    /// Member connections still open at the end.
    held: usize,
    errors: HashMap<String, u64>,
}

/// Standalone: set up, run with a 1 s warm-up, report.
pub fn run(cli: &Cli, o: Options) -> Result<Report> {
    let s = setup(cli, o)?;
    let t = Timeline::start(o.duration);
    let totals = s.run(t)?;
    Ok(report(&o, &totals, t))
}

pub fn setup(cli: &Cli, o: Options) -> Result<Setup> {
    let conns = o.groups * o.members;
    check_conns(
        &format!("{} groups of {} members", o.groups, o.members),
        conns,
    )?;
    let run = run_id();
    let mut users = connect_users(cli, &run, "g", conns)?.into_iter();
    let mut senders = Vec::with_capacity(o.groups);
    let mut members = Vec::with_capacity(conns - o.groups);
    for g in 0..o.groups {
        let mut group = users.by_ref().take(o.members);
        let (_, mut sender) = group.next().ok_or("fewer users than members")?;
        let rest: Vec<_> = group.collect();
        let ids: Vec<u64> = rest.iter().map(|(login, _)| login.user_id).collect();
        let id = sender
            .create_group(&format!("lg{run}g{g}"), &ids)
            .map_err(|e| format!("create group {g}: {e}"))?
            .conversation_id;
        senders.push((sender, id));
        members.extend(rest.into_iter().map(|(_, conn)| (conn, id)));
    }
    Ok(Setup {
        o,
        senders,
        members,
    })
}

impl Setup {
    /// Send and read on `t`'s timeline; returns [`DRAIN`] after its end.
    pub fn run(self, t: Timeline) -> Result<Totals> {
        let o = self.o;
        let drain_until = t.end + DRAIN;
        let per_group = o.rate as f64 / o.groups as f64;
        let sending =
            std::thread::spawn(move || send_all(self.senders, t, per_group, o.body, drain_until));
        let mut members = self.members;
        let per_thread = members.len().div_ceil(o.threads).max(1);
        let mut readers = Vec::new();
        while !members.is_empty() {
            let rest = members.split_off(per_thread.min(members.len()));
            let share = std::mem::replace(&mut members, rest);
            readers.push(std::thread::spawn(move || {
                read_members(share, t, drain_until)
            }));
        }
        let sent = sending.join().map_err(|_| "group sender panicked")?;
        let mut seen = Seen::new();
        for reader in readers {
            seen.merge(reader.join().map_err(|_| "group reader panicked")?);
        }
        let receivers = (o.members - 1) as u64;
        let mut last = histogram();
        let mut complete = 0u64;
        for f in seen.fanned.values() {
            if f.count == receivers {
                complete += 1;
                let _ = last.record(f.last.saturating_sub(f.scheduled) / 1000);
            }
        }
        let mut errors = seen.errors;
        report::merge_errors(&mut errors, sent.errors.clone());
        Ok(Totals {
            sent,
            each: seen.each,
            last,
            deliveries: seen.deliveries,
            complete,
            held: seen.held,
            errors,
        })
    }
}

pub fn report(o: &Options, t: &Totals, timeline: Timeline) -> Report {
    let secs = o.duration.as_secs_f64();
    let (groups, members, rate, body) = (o.groups, o.members, o.rate, o.body);
    let sent = t.sent.sent;
    let acked = t.sent.ack.len();
    let expected = sent * (members as u64 - 1);
    let json = serde_json::json!({
        "scenario": o.name,
        "groups": groups,
        "members": members,
        "rate": rate,
        "body": body,
        "seconds": secs,
        "sent": sent,
        "acked": acked,
        "sent_with_warmup": t.sent.sent_with_warmup,
        "expected_deliveries": expected,
        "deliveries": t.deliveries,
        "deliveries_per_sec": (t.deliveries as f64 / secs).round(),
        "complete": t.complete,
        "members_held": t.held,
        "each_member_us": latency(&t.each),
        "last_member_us": latency(&t.last),
        "ack_us": latency(&t.sent.ack),
        "errors": t.errors,
        "error_count": t.errors.values().sum::<u64>(),
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {groups} group(s) of {members} members online, {rate} messages/s in all, \
         {body} B bodies, {secs:.0} s measured",
        o.name
    );
    let _ = writeln!(
        out,
        "  sent {sent}, acked {acked}; deliveries {} of {expected} expected ({:.0}/s); \
         {} messages reached every member",
        t.deliveries,
        t.deliveries as f64 / secs,
        t.complete
    );
    latency_line(&mut out, "send->each member", &t.each);
    latency_line(&mut out, "send->last member", &t.last);
    latency_line(&mut out, "send->ack", &t.sent.ack);
    if !t.errors.is_empty() {
        let _ = writeln!(out, "  errors: {:?}", t.errors);
    }
    let (from, window) = (timeline.measure_from, timeline.window());
    Report::new(json, out)
        .with("each_member", from, window, &t.each)
        .with("last_member", from, window, &t.last)
        .with("ack", from, window, &t.sent.ack)
}

/// The open-loop sender of every group (see the module documentation): sends until
/// `t.end`, reads answers until they are all in or `drain_until`.
fn send_all(
    mut senders: Vec<(Connection, u64)>,
    t: Timeline,
    per_group: f64,
    body_len: usize,
    drain_until: Instant,
) -> Sent {
    let mut out = Sent::new();
    let n = senders.len();
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            report::count(&mut out.errors, format!("epoll: {e}"));
            return out;
        }
    };
    let mut alive = vec![true; n];
    for (i, (conn, _)) in senders.iter_mut().enumerate() {
        if let Err(e) = adopt(&epoll, conn, i, |_| {}) {
            report::count(&mut out.errors, format!("sender setup: {e}"));
            alive[i] = false;
        }
    }
    let mut outstanding: Vec<HashMap<u64, Instant>> = vec![HashMap::new(); n];
    let interval = Duration::from_secs_f64(1.0 / per_group.max(1e-9));
    let due = |k: u64| t.epoch + heartbeat::offset(k, n as u64, 0, n, interval);
    let mut k = 0u64;
    let mut next = due(0);
    let mut body = vec![0u8; body_len];
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if next >= t.end && (now >= drain_until || outstanding.iter().all(HashMap::is_empty)) {
            break;
        }
        while next < t.end && next <= now {
            let i = (k % n as u64) as usize;
            if let (true, Some((conn, id))) = (alive[i], senders.get_mut(i)) {
                let frame = stamped_send(*id, &mut body, nanos_since(t.epoch, next));
                match conn.request(frame) {
                    Ok(request_id) => {
                        outstanding[i].insert(request_id, next);
                        out.sent_with_warmup += 1;
                        if next >= t.measure_from {
                            out.sent += 1;
                        }
                    }
                    Err(e) => {
                        report::count(&mut out.errors, format!("send: {e}"));
                        alive[i] = false;
                        outstanding[i].clear();
                        epoll.remove(conn);
                    }
                }
            }
            k += 1;
            next = due(k);
        }
        // Whole milliseconds in epoll (never past the due send), the rest asleep on a
        // high-resolution timer, so sends leave on time.
        let until = if next < t.end { next } else { drain_until };
        let wait = until
            .saturating_duration_since(Instant::now())
            .min(WAIT_MAX);
        let whole_ms = Duration::from_millis(wait.as_millis() as u64);
        epoll.wait(whole_ms, &mut ready);
        if ready.is_empty() && whole_ms.is_zero() {
            std::thread::sleep(wait);
        }
        for &i in &ready {
            let (Some((conn, _)), Some(pending)) = (senders.get_mut(i), outstanding.get_mut(i))
            else {
                continue;
            };
            let result = drain(conn, |Frame { request_id, body }| {
                if let Some(scheduled) = pending.remove(&request_id) {
                    answered(&mut out, body, scheduled, t.measure_from);
                }
            });
            if let Err(e) = result {
                report::count(&mut out.errors, format!("sender recv: {e}"));
                alive[i] = false;
                pending.clear();
                epoll.remove(conn);
            }
        }
    }
    out
}

/// Per message: when it was scheduled, how many members got it, the latest (ns after
/// the epoch).
#[derive(Default, Clone, Copy)]
struct Fanned {
    scheduled: u64,
    count: u64,
    last: u64,
}

/// What reader threads saw (messages scheduled in the measured window).
struct Seen {
    each: Histogram<u64>,
    deliveries: u64,
    fanned: HashMap<(u64, u64), Fanned>,
    held: usize,
    errors: HashMap<String, u64>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            each: histogram(),
            deliveries: 0,
            fanned: HashMap::new(),
            held: 0,
            errors: HashMap::new(),
        }
    }

    fn merge(&mut self, other: Seen) {
        let _ = self.each.add(&other.each);
        self.deliveries += other.deliveries;
        self.held += other.held;
        for (key, f) in other.fanned {
            let mine = self.fanned.entry(key).or_default();
            mine.scheduled = f.scheduled;
            mine.count += f.count;
            mine.last = mine.last.max(f.last);
        }
        report::merge_errors(&mut self.errors, other.errors);
    }

    /// Count the messages of one frame a member received; `highest` is the member's
    /// highest sequence so far (for its receipts).
    fn take(&mut self, frame: Frame, t: &Timeline, highest: &mut u64) {
        if let Body::Error(e) = &frame.body {
            report::count(&mut self.errors, format!("member: {:?}", e.code));
        }
        let messages = messages_of(frame.body);
        let now = nanos_since(t.epoch, Instant::now());
        for m in messages {
            *highest = (*highest).max(m.seq);
            let Some(ns) = stamp_of(&m.body).filter(|&ns| t.measured(ns)) else {
                continue;
            };
            self.deliveries += 1;
            let _ = self.each.record(now.saturating_sub(ns) / 1000);
            let f = self.fanned.entry((m.conversation_id, m.seq)).or_default();
            f.scheduled = ns;
            f.count += 1;
            f.last = f.last.max(now);
        }
    }
}

/// Read `conns` (members of the groups given with them) until `stop_at`.
fn read_members(mut conns: Vec<(Connection, u64)>, t: Timeline, stop_at: Instant) -> Seen {
    let mut seen = Seen::new();
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            report::count(&mut seen.errors, format!("epoll: {e}"));
            return seen;
        }
    };
    let n = conns.len();
    let mut alive = vec![true; n];
    let mut highest = vec![0u64; n];
    let mut receipted = vec![0u64; n];
    for (i, (conn, _)) in conns.iter_mut().enumerate() {
        let hi = &mut highest[i];
        if let Err(e) = adopt(&epoll, conn, i, |frame| seen.take(frame, &t, hi)) {
            report::count(&mut seen.errors, format!("member setup: {e}"));
            alive[i] = false;
        }
    }
    let mut next_receipts = Instant::now() + RECEIPT_EVERY;
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        if now >= next_receipts {
            for (i, (conn, id)) in conns.iter_mut().enumerate() {
                if !alive[i] || highest[i] <= receipted[i] {
                    continue;
                }
                match conn.receipt(*id, ReceiptKind::Delivered, highest[i]) {
                    Ok(_) => receipted[i] = highest[i],
                    Err(e) => {
                        report::count(&mut seen.errors, format!("receipt: {e}"));
                        alive[i] = false;
                        epoll.remove(conn);
                    }
                }
            }
            next_receipts = now + RECEIPT_EVERY;
        }
        let wait = next_receipts.min(stop_at).saturating_duration_since(now);
        epoll.wait(wait.min(WAIT_MAX), &mut ready);
        for &i in &ready {
            let (Some((conn, _)), Some(hi)) = (conns.get_mut(i), highest.get_mut(i)) else {
                continue;
            };
            if let Err(e) = drain(conn, |frame| seen.take(frame, &t, hi)) {
                report::count(&mut seen.errors, format!("member recv: {e}"));
                alive[i] = false;
                epoll.remove(conn);
            }
        }
    }
    seen.held = alive.iter().filter(|a| **a).count();
    seen
}
