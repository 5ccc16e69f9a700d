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
//! server, as in `chat`). The thread waits for due sends in epoll (to the nanosecond)
//! and reads the acks meanwhile.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::client::Connection;
use wire::message::{Body, Frame, ReceiptKind};

use crate::epoll::{adopt, drain, Epoll};
use crate::report::{self, latency, latency_line, Report};
use crate::senders::{send_all, Pace};
use crate::{
    check_conns, connect_users, histogram, messages_of, nanos_since, run_id, stamp_of, Cli, Result,
    Sent, Timeline,
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
    /// See [`Seen`]: must be 0.
    repeated: u64,
    gaps: u64,
    errors: HashMap<String, u64>,
}

/// `groups --workers W`: whole groups per worker process (so "every member got it" is
/// decided inside one worker), the rate split in proportion, one timeline, the workers'
/// totals merged (`chat_fleet.rs` runs the processes).
pub fn fleet_run(cli: &Cli, o: Options, f: crate::chat_fleet::Fleet) -> Result<Report> {
    let workers = f.workers.clamp(1, o.groups);
    let shares = (0..workers)
        .map(|w| {
            let (first, count) = crate::fleet::share(o.groups, workers, w);
            let rate = crate::chat_fleet::rate_share(o.rate, o.groups, first, count).max(1);
            [
                "groups-worker",
                "--groups",
                &count.to_string(),
                "--members",
                &o.members.to_string(),
                "--rate",
                &rate.to_string(),
                "--duration",
                &o.duration.as_secs().to_string(),
                "--body",
                &o.body.to_string(),
                "--threads",
                &o.threads.to_string(),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let results = crate::chat_fleet::run_workers(cli, &f, shares, o.groups, o.duration, |_| ())?;
    let totals = crate::chat_fleet::merge_results(&results.lines, totals_from_json, merge)?;
    let mut report = report(&o, &totals, results.timeline);
    crate::chat_fleet::label(&mut report, workers, &results.lines);
    Ok(report)
}

/// One worker process of `groups --workers`: set up its groups, then run on the
/// coordinator's timeline.
pub fn worker(cli: &Cli, o: Options) -> Result<()> {
    let started = Instant::now();
    let s = setup(cli, o)?;
    crate::chat_fleet::serve_worker(o.groups, started, |t| {
        s.run(t).map(|totals| totals_json(&totals))
    })
}

pub(crate) fn totals_json(t: &Totals) -> serde_json::Value {
    use crate::fleet::histogram_json;
    serde_json::json!({
        "sent": {
            "ack": histogram_json(&t.sent.ack),
            "late": histogram_json(&t.sent.late),
            "sent": t.sent.sent,
            "sent_with_warmup": t.sent.sent_with_warmup,
            "errors": t.sent.errors,
        },
        "each": histogram_json(&t.each),
        "last": histogram_json(&t.last),
        "deliveries": t.deliveries,
        "complete": t.complete,
        "held": t.held,
        "repeated": t.repeated,
        "gaps": t.gaps,
        "errors": t.errors,
    })
}

fn totals_from_json(text: &str) -> Result<Totals> {
    Ok(totals_from_value(&crate::chat_fleet::parse_result(
        text, "groups",
    )?))
}

/// The inverse of [`totals_json`] (a missing field reads as zero).
pub(crate) fn totals_from_value(v: &serde_json::Value) -> Totals {
    use crate::fleet::histogram_from_json;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let s = &v["sent"];
    Totals {
        sent: Sent {
            ack: histogram_from_json(&s["ack"]),
            late: histogram_from_json(&s["late"]),
            sent: s["sent"].as_u64().unwrap_or(0),
            sent_with_warmup: s["sent_with_warmup"].as_u64().unwrap_or(0),
            errors: crate::fleet::counts_from_json(&s["errors"]),
        },
        each: histogram_from_json(&v["each"]),
        last: histogram_from_json(&v["last"]),
        deliveries: n("deliveries"),
        complete: n("complete"),
        held: n("held") as usize,
        repeated: n("repeated"),
        gaps: n("gaps"),
        errors: crate::fleet::counts_from_json(&v["errors"]),
    }
}

pub(crate) fn merge(into: &mut Totals, from: Totals) {
    into.sent.merge(from.sent);
    let _ = into.each.add(&from.each);
    let _ = into.last.add(&from.last);
    into.deliveries += from.deliveries;
    into.complete += from.complete;
    into.held += from.held;
    into.repeated += from.repeated;
    into.gaps += from.gaps;
    report::merge_errors(&mut into.errors, from.errors);
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
        let pace = Pace::Open {
            per_sender: per_group,
        };
        let sending =
            std::thread::spawn(move || send_all(self.senders, t, pace, o.body, drain_until));
        let mut members = self.members;
        let per_thread = members.len().div_ceil(o.threads).max(1);
        let mut readers = Vec::new();
        // One `Readers` for all: its delivery count is the live line's.
        let until = Readers::until(drain_until);
        let live = report::live_line("groups", t, Some(until.delivered.clone()));
        while !members.is_empty() {
            let rest = members.split_off(per_thread.min(members.len()));
            let share = std::mem::replace(&mut members, rest);
            let until = until.clone();
            readers.push(std::thread::spawn(move || {
                read_members(share, t, until, true)
            }));
        }
        let mut sent = Sent::new();
        for one in sending.join().map_err(|_| "group sender panicked")? {
            sent.merge(one);
        }
        let mut seen = Seen::new(true);
        for reader in readers {
            seen.merge(reader.join().map_err(|_| "group reader panicked")?);
        }
        if let Some(live) = live {
            let _ = live.join();
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
            repeated: seen.repeated,
            gaps: seen.gaps,
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
        "repeated": t.repeated,
        "gaps": t.gaps,
        "each_member_us": latency(&t.each),
        "last_member_us": latency(&t.last),
        "ack_us": latency(&t.sent.ack),
        "send_late_us": latency(&t.sent.late),
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
    report::order_line(&mut out, t.repeated, t.gaps);
    latency_line(&mut out, "send->each member", &t.each);
    latency_line(&mut out, "send->last member", &t.last);
    latency_line(&mut out, "send->ack", &t.sent.ack);
    latency_line(&mut out, "send lateness", &t.sent.late);
    if !t.errors.is_empty() {
        let _ = writeln!(out, "  errors: {:?}", t.errors);
    }
    let (from, window) = (timeline.measure_from, timeline.window());
    Report::new(json, out)
        .with("each_member", from, window, &t.each)
        .with("last_member", from, window, &t.last)
        .with("ack", from, window, &t.sent.ack)
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
pub struct Seen {
    pub each: Histogram<u64>,
    pub deliveries: u64,
    /// Per message, when `track_last` (1:1 chat has no "last member" to find).
    fanned: HashMap<(u64, u64), Fanned>,
    track_last: bool,
    held: usize,
    /// Messages at or below the connection's highest sequence so far (duplicates or
    /// reordering), and jumps past the next sequence (a gap): both must stay 0.
    pub repeated: u64,
    pub gaps: u64,
    pub errors: HashMap<String, u64>,
}

impl Seen {
    pub fn new(track_last: bool) -> Seen {
        Seen {
            each: histogram(),
            deliveries: 0,
            fanned: HashMap::new(),
            track_last,
            repeated: 0,
            gaps: 0,
            held: 0,
            errors: HashMap::new(),
        }
    }

    pub fn merge(&mut self, other: Seen) {
        let _ = self.each.add(&other.each);
        self.deliveries += other.deliveries;
        self.held += other.held;
        self.repeated += other.repeated;
        self.gaps += other.gaps;
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
            // A device sees each conversation's sequences once and in order (the delivery
            // contract); the first message a connection sees sets where it starts.
            if *highest > 0 && m.seq <= *highest {
                self.repeated += 1;
            } else if *highest > 0 && m.seq > *highest + 1 {
                self.gaps += 1;
            }
            *highest = (*highest).max(m.seq);
            let Some(ns) = stamp_of(&m.body).filter(|&ns| t.measured(ns)) else {
                continue;
            };
            self.deliveries += 1;
            let _ = self.each.record(now.saturating_sub(ns) / 1000);
            if !self.track_last {
                continue;
            }
            let f = self.fanned.entry((m.conversation_id, m.seq)).or_default();
            f.scheduled = ns;
            f.count += 1;
            f.last = f.last.max(now);
        }
    }
}

/// When readers stop, and what they tell the thread that decides it.
#[derive(Clone)]
pub struct Readers {
    /// Stop at the latest then.
    pub stop_at: Instant,
    /// Stop as soon as this is set.
    pub stop: Arc<AtomicBool>,
    /// Deliveries counted so far (measured ones), over all readers.
    pub delivered: Arc<AtomicU64>,
}

impl Readers {
    pub fn until(stop_at: Instant) -> Readers {
        Readers {
            stop_at,
            stop: Arc::new(AtomicBool::new(false)),
            delivered: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Read `conns` (members of the conversations given with them: receivers of 1:1 chat or
/// group members) until `until` says stop, and send each one's Delivered receipts
/// coalesced to one per [`RECEIPT_EVERY`]. `track_last`: follow each message to its last
/// member ([`Seen`]).
pub fn read_members(
    mut conns: Vec<(Connection, u64)>,
    t: Timeline,
    until: Readers,
    track_last: bool,
) -> Seen {
    let mut seen = Seen::new(track_last);
    let stop_at = until.stop_at;
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
    until
        .delivered
        .fetch_add(seen.deliveries, Ordering::Relaxed);
    let mut next_receipts = Instant::now() + RECEIPT_EVERY;
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if now >= stop_at || until.stop.load(Ordering::Relaxed) {
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
            let before = seen.deliveries;
            let result = drain(conn, |frame| seen.take(frame, &t, hi));
            until
                .delivered
                .fetch_add(seen.deliveries - before, Ordering::Relaxed);
            if let Err(e) = result {
                report::count(&mut seen.errors, format!("member recv: {e}"));
                alive[i] = false;
                epoll.remove(conn);
            }
        }
    }
    seen.held = alive.iter().filter(|a| **a).count();
    seen
}

#[cfg(test)]
mod fleet_tests {
    use super::*;

    #[test]
    fn worker_totals_survive_the_round_trip_and_merge() {
        let mut sent = Sent::new();
        sent.sent = 7;
        sent.ack.record(150).unwrap();
        let mut totals = Totals {
            sent,
            each: histogram(),
            last: histogram(),
            deliveries: 28,
            complete: 7,
            held: 4,
            repeated: 0,
            gaps: 0,
            errors: HashMap::new(),
        };
        totals.each.record(900).unwrap();
        totals.last.record(1200).unwrap();
        let text = totals_json(&totals).to_string();
        let mut merged = totals_from_json(&text).unwrap();
        merge(&mut merged, totals_from_json(&text).unwrap());
        assert_eq!(
            (merged.sent.sent, merged.deliveries, merged.complete),
            (14, 56, 14)
        );
        assert_eq!(merged.held, 8);
        assert_eq!(merged.sent.ack.len(), 2);
        assert_eq!(merged.last.max(), totals.last.max());
        assert!(totals_from_json("[1, 2]").is_err());
    }
}
