//! The `presence` scenario: the presence fan-out rate and the latency of status changes.
//!
//! Setup: `T` target and `S` subscriber users, one connection each, who share a
//! conversation so that presence is visible: one group of everyone if `T + S ≤ 1000`,
//! else groups of all the targets plus a slice of the subscribers (1000 members each).
//! Every subscriber sends `PresenceSubscribe { user_ids: every target }` and expects a
//! `PresenceUpdate` answer (the snapshot) under the same request id.
//!
//! Load: one thread toggles the targets' status with `PresenceSet`, `R` times per second
//! in total, round robin over the targets, each target alternating Away, Online, Away...
//! Toggle `k` goes to target `k % T`, is Away when `(k / T)` is even, and is scheduled at
//! `k / R` seconds after the epoch (an open loop: a late sender sends at once, and latency
//! counts from the scheduled time). `--threads` threads read the subscribers with epoll
//! and count the pushed `PresenceUpdate` frames (request id 0) and their entries.
//!
//! Matching: an entry `(target, status)` a subscriber receives at `t` stands for the
//! *latest* toggle of that target to that status scheduled (and sent) at or before `t`:
//! the server reports the current state, so when it coalesces, the earlier toggles it
//! folded never show. Each subscriber is credited once per toggle, with its first
//! matching entry: `toggle->each subscriber` latency; the earliest over all subscribers
//! gives `toggle->first subscriber` and "observed by at least one subscriber". Entries for
//! other users, for Offline, or for a status no toggle has set yet (e.g. the targets'
//! Online, published once after the subscriptions) are "unmatched"; entries for a toggle
//! already credited are "repeated".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::client::Connection;
use wire::limits::USER_IDS_PER_REQUEST_MAX;
use wire::message::{Body, Frame, PresenceSet, PresenceStatus, PresenceSubscribe};

use crate::epoll::{drain, Epoll};
use crate::{connect_users, histogram, nanos_since, run_id, Cli, Result};

/// Members of one group the scenario creates, its creator included (the server allows
/// up to `wire::limits::GROUP_MEMBERS_MAX`).
const GROUP_SIZE: usize = 1000;
/// The longest one wait lasts (so the loops notice the end).
const WAIT_MAX: Duration = Duration::from_millis(20);
const NANOS: u128 = 1_000_000_000;

pub struct Options {
    pub targets: usize,
    pub subscribers: usize,
    /// Toggles per second over all targets.
    pub rate: u64,
    pub duration: Duration,
    /// Reading goes on this long after the last toggle.
    pub drain: Duration,
    /// Threads reading the subscribers.
    pub threads: usize,
}

pub fn run(cli: &Cli, o: Options) -> Result<()> {
    let run = run_id();
    let (t, s) = (o.targets, o.subscribers);
    if t + s > GROUP_SIZE && t >= GROUP_SIZE {
        return Err(format!(
            "with more than {GROUP_SIZE} users in all, --targets must be below {GROUP_SIZE} \
             (every group holds all the targets)"
        ));
    }
    let mut targets = connect_users(cli, &run, "pt", t)?;
    let mut subscribers = connect_users(cli, &run, "ps", s)?;
    let target_ids: Vec<u64> = targets.iter().map(|(l, _)| l.user_id).collect();
    let subscriber_ids: Vec<u64> = subscribers.iter().map(|(l, _)| l.user_id).collect();

    // Shared conversations: the first target creates every group.
    let slice = if t + s <= GROUP_SIZE {
        s
    } else {
        GROUP_SIZE - t
    };
    let mut groups = 0;
    let (_, creator) = targets.first_mut().ok_or("no targets")?;
    for (g, members) in subscriber_ids.chunks(slice.max(1)).enumerate() {
        let mut member_ids: Vec<u64> = target_ids.iter().skip(1).copied().collect();
        member_ids.extend_from_slice(members);
        creator
            .create_group(&format!("lg{run}p{g}"), &member_ids)
            .map_err(|e| format!("create group {g}: {e}"))?;
        groups += 1;
    }

    // Subscriptions, each answered with the current state.
    let mut snapshot_entries = 0usize;
    for (i, (_, conn)) in subscribers.iter_mut().enumerate() {
        for ids in target_ids.chunks(USER_IDS_PER_REQUEST_MAX) {
            let subscribe = Body::PresenceSubscribe(PresenceSubscribe {
                user_ids: ids.to_vec(),
            });
            let answer = conn
                .call(subscribe, conn.timeout())
                .map_err(|e| format!("subscriber {i}: presence_subscribe: {e}"))?;
            match answer.body {
                Body::PresenceUpdate(update) => snapshot_entries += update.entries.len(),
                other => {
                    return Err(format!(
                        "subscriber {i}: presence_subscribe: expected presence_update, got {}",
                        other.type_name()
                    ))
                }
            }
        }
    }

    let epoch = Instant::now();
    let measure_from = Duration::from_secs(1);
    let end = measure_from + o.duration;
    let stop_at = epoch + end + o.drain;
    let schedule = Schedule::new(o.rate, t, measure_from, end);
    let index: Arc<HashMap<u64, usize>> = Arc::new(
        target_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect(),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let target_conns: Vec<Connection> = targets.into_iter().map(|(_, c)| c).collect();
    let sending = {
        let sent = sent.clone();
        std::thread::spawn(move || toggle(target_conns, schedule, epoch, stop_at, &sent))
    };
    let mut subscriber_conns: Vec<Connection> = subscribers.into_iter().map(|(_, c)| c).collect();
    let per_thread = s.div_ceil(o.threads.min(s)).max(1);
    let mut readers = Vec::new();
    while !subscriber_conns.is_empty() {
        let rest = subscriber_conns.split_off(per_thread.min(subscriber_conns.len()));
        let share = std::mem::replace(&mut subscriber_conns, rest);
        let observer = Observer::new(share.len(), schedule, index.clone(), epoch, sent.clone());
        readers.push(std::thread::spawn(move || {
            observe(share, observer, stop_at)
        }));
    }
    let toggles = sending.join().map_err(|_| "toggle thread panicked")?;
    let mut seen = Observed::new(schedule.total);
    for reader in readers {
        seen.merge(reader.join().map_err(|_| "reader thread panicked")?);
    }

    let mut first = histogram();
    let mut observed = 0u64;
    let mut scheduled = 0u64;
    for (k, at) in seen.first.iter().enumerate() {
        let k = k as u64;
        if !schedule.measured(k) {
            continue;
        }
        scheduled += 1;
        if *at != u64::MAX {
            observed += 1;
            let _ = first.record(at.saturating_sub(schedule.at_ns(k)) / 1000);
        }
    }
    let mut errors = toggles.errors;
    for (k, v) in seen.errors {
        *errors.entry(k).or_default() += v;
    }
    let secs = o.duration.as_secs_f64();
    let fanned = if toggles.sent > 0 {
        seen.entries as f64 / (toggles.sent as f64 * s as f64)
    } else {
        0.0
    };
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let each = &seen.each;
    if cli.json {
        let error_list: Vec<String> = errors.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
        println!(
            "{{\"scenario\":\"presence\",\"targets\":{t},\"subscribers\":{s},\"groups\":{groups},\
             \"toggle_rate\":{},\"seconds\":{secs},\"toggles\":{},\"toggles_per_sec\":{:.1},\
             \"update_frames_per_sec\":{:.1},\"entries_per_sec\":{:.1},\
             \"entries_per_toggle_per_subscriber\":{fanned:.4},\"toggles_scheduled\":{scheduled},\
             \"toggles_observed\":{observed},\
             \"toggle_to_each_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\
             \"toggle_to_first_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\
             \"snapshot_entries\":{snapshot_entries},\"unmatched_entries\":{},\"repeated_entries\":{},\
             \"other_frames\":{},\"held\":{},\"toggle_lag_max_us\":{},\"errors\":{{{}}}}}",
            o.rate,
            toggles.sent,
            toggles.sent as f64 / secs,
            seen.frames as f64 / secs,
            seen.entries as f64 / secs,
            q(each, 0.5),
            q(each, 0.99),
            each.max(),
            q(&first, 0.5),
            q(&first, 0.99),
            first.max(),
            seen.unmatched,
            seen.repeated,
            seen.other,
            seen.held,
            toggles.lag_max.as_micros(),
            error_list.join(",")
        );
        return Ok(());
    }
    println!(
        "presence: {t} targets, {s} subscribers (each subscribed to every target; {groups} group(s)), \
         {} toggles/s, {secs:.0} s measured",
        o.rate
    );
    println!(
        "  toggles sent {} ({:.1}/s); PresenceUpdate frames {:.1}/s, entries {:.1}/s \
         (presence fan-out; {fanned:.3} per toggle per subscriber)",
        toggles.sent,
        toggles.sent as f64 / secs,
        seen.frames as f64 / secs,
        seen.entries as f64 / secs
    );
    println!(
        "  toggles observed by at least one subscriber: {observed} of {scheduled} ({:.1}%)",
        if scheduled > 0 {
            observed as f64 * 100.0 / scheduled as f64
        } else {
            0.0
        }
    );
    for (name, h) in [
        ("toggle->each subscriber", each),
        ("toggle->first subscriber", &first),
    ] {
        println!(
            "  {name:24} µs  p50 {}  p99 {}  max {}",
            q(h, 0.5),
            q(h, 0.99),
            h.max()
        );
    }
    println!(
        "  snapshot entries {snapshot_entries}; unmatched entries {}, repeated {}, other frames {}; \
         subscribers still connected {}; latest toggle sent {} µs late",
        seen.unmatched,
        seen.repeated,
        seen.other,
        seen.held,
        toggles.lag_max.as_micros()
    );
    if !errors.is_empty() {
        println!("  errors: {errors:?}");
    }
    Ok(())
}

/// The toggle timeline (see the module documentation); times in ns after the epoch.
#[derive(Clone, Copy)]
struct Schedule {
    rate: u64,
    targets: u64,
    measure_from_ns: u64,
    end_ns: u64,
    /// Toggles scheduled before the end.
    total: u64,
}

impl Schedule {
    fn new(rate: u64, targets: usize, measure_from: Duration, end: Duration) -> Schedule {
        let end_ns = end.as_nanos() as u64;
        Schedule {
            rate: rate.max(1),
            targets: targets.max(1) as u64,
            measure_from_ns: measure_from.as_nanos() as u64,
            end_ns,
            // The k with k·10⁹ < end·rate.
            total: (end_ns as u128 * rate.max(1) as u128).div_ceil(NANOS) as u64,
        }
    }

    /// When toggle `k` is due: the first ns `t` with `k·10⁹ ≤ t·rate`.
    fn at_ns(&self, k: u64) -> u64 {
        (k as u128 * NANOS).div_ceil(self.rate as u128) as u64
    }

    fn target(&self, k: u64) -> usize {
        (k % self.targets) as usize
    }

    fn status(&self, k: u64) -> PresenceStatus {
        if (k / self.targets).is_multiple_of(2) {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        }
    }

    /// Whether toggle `k` is scheduled inside the measurement window.
    fn measured(&self, k: u64) -> bool {
        let at = self.at_ns(k);
        at >= self.measure_from_ns && at < self.end_ns
    }

    /// The latest toggle of `target` to `status` due at or before `t_ns` and among the
    /// first `sent`.
    fn latest(&self, target: usize, status: PresenceStatus, t_ns: u64, sent: u64) -> Option<u64> {
        let even = match status {
            PresenceStatus::Away => true,
            PresenceStatus::Online => false,
            PresenceStatus::Offline => return None,
        };
        let due = (t_ns as u128 * self.rate as u128 / NANOS).min(u64::MAX as u128) as u64;
        let last = due
            .min(sent.checked_sub(1)?)
            .min(self.total.checked_sub(1)?);
        let target = target as u64;
        let mut round = last.checked_sub(target)? / self.targets;
        if round.is_multiple_of(2) != even {
            round = round.checked_sub(1)?;
        }
        Some(target + round * self.targets)
    }
}

struct Toggled {
    /// Toggles sent in the measurement window.
    sent: u64,
    /// How late the latest-sent toggle went out.
    lag_max: Duration,
    errors: HashMap<String, u64>,
}

/// Send the toggles on the targets' connections (reading what comes back: refusals are
/// counted) until `stop_at`. `sent` counts toggles handled so far, for the readers.
fn toggle(
    mut conns: Vec<Connection>,
    schedule: Schedule,
    epoch: Instant,
    stop_at: Instant,
    sent: &AtomicU64,
) -> Toggled {
    let mut totals = Toggled {
        sent: 0,
        lag_max: Duration::ZERO,
        errors: HashMap::new(),
    };
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            totals.errors.insert(format!("epoll: {e}"), 1);
            return totals;
        }
    };
    let mut alive = vec![true; conns.len()];
    for (i, conn) in conns.iter_mut().enumerate() {
        if let Err(e) = epoll.add(conn, i) {
            *totals.errors.entry(format!("target: {e}")).or_default() += 1;
            alive[i] = false;
        }
    }
    // What arrived during setup (the group's system messages...) would otherwise wait.
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    let mut k = 0u64;
    loop {
        for &i in &ready {
            let Some(conn) = conns.get_mut(i).filter(|_| alive[i]) else {
                continue;
            };
            let result = drain(conn, |frame| {
                if let Body::Error(e) = frame.body {
                    let key = format!("target: {}", e.code.as_str());
                    *totals.errors.entry(key).or_default() += 1;
                }
            });
            if let Err(e) = result {
                *totals.errors.entry(format!("target: {e}")).or_default() += 1;
                alive[i] = false;
                epoll.remove(conn);
            }
        }
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        let now_ns = nanos_since(epoch, now);
        while k < schedule.total && schedule.at_ns(k) <= now_ns {
            let i = schedule.target(k);
            if let Some(conn) = conns.get_mut(i).filter(|_| alive[i]) {
                let set = Body::PresenceSet(PresenceSet {
                    status: schedule.status(k),
                });
                match conn.request(set) {
                    Ok(_) if schedule.measured(k) => {
                        totals.sent += 1;
                        let late = now_ns.saturating_sub(schedule.at_ns(k));
                        totals.lag_max = totals.lag_max.max(Duration::from_nanos(late));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *totals
                            .errors
                            .entry(format!("presence_set: {e}"))
                            .or_default() += 1;
                        alive[i] = false;
                        epoll.remove(conn);
                    }
                }
            }
            k += 1;
            sent.store(k, Ordering::Release);
        }
        let next = if k < schedule.total {
            epoch + Duration::from_nanos(schedule.at_ns(k))
        } else {
            stop_at
        };
        let wait = next.min(stop_at).saturating_duration_since(Instant::now());
        epoll.wait(wait.min(WAIT_MAX), &mut ready);
    }
    totals
}

/// What the readers counted.
struct Observed {
    /// Toggle → a subscriber's first matching entry, µs (measured toggles).
    each: Histogram<u64>,
    /// Per toggle, the earliest matching entry over all subscribers (ns after the
    /// epoch; `u64::MAX`: never).
    first: Vec<u64>,
    /// Pushed `PresenceUpdate` frames and their entries received in the window.
    frames: u64,
    entries: u64,
    unmatched: u64,
    repeated: u64,
    /// Other frames (group messages, answers...).
    other: u64,
    /// Subscribers still connected at the end.
    held: usize,
    errors: HashMap<String, u64>,
}

impl Observed {
    fn new(toggles: u64) -> Observed {
        Observed {
            each: histogram(),
            first: vec![u64::MAX; toggles as usize],
            frames: 0,
            entries: 0,
            unmatched: 0,
            repeated: 0,
            other: 0,
            held: 0,
            errors: HashMap::new(),
        }
    }

    fn merge(&mut self, other: Observed) {
        let _ = self.each.add(&other.each);
        for (mine, theirs) in self.first.iter_mut().zip(other.first) {
            *mine = (*mine).min(theirs);
        }
        self.frames += other.frames;
        self.entries += other.entries;
        self.unmatched += other.unmatched;
        self.repeated += other.repeated;
        self.other += other.other;
        self.held += other.held;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One reader thread's matching state.
struct Observer {
    schedule: Schedule,
    /// Target user id → target index.
    index: Arc<HashMap<u64, usize>>,
    epoch: Instant,
    sent: Arc<AtomicU64>,
    /// Per (subscriber, target): the round of the latest toggle credited, or `u32::MAX`.
    credited: Vec<u32>,
    seen: Observed,
}

impl Observer {
    fn new(
        subscribers: usize,
        schedule: Schedule,
        index: Arc<HashMap<u64, usize>>,
        epoch: Instant,
        sent: Arc<AtomicU64>,
    ) -> Observer {
        Observer {
            credited: vec![u32::MAX; subscribers * schedule.targets as usize],
            seen: Observed::new(schedule.total),
            schedule,
            index,
            epoch,
            sent,
        }
    }

    /// A frame received by subscriber `sub` (of this thread) now.
    fn frame(&mut self, sub: usize, frame: Frame) {
        let t = nanos_since(self.epoch, Instant::now());
        self.frame_at(sub, frame, t);
    }

    /// A frame received by subscriber `sub` at `t` ns after the epoch.
    fn frame_at(&mut self, sub: usize, frame: Frame, t: u64) {
        let update = match frame.body {
            Body::PresenceUpdate(update) if frame.request_id == 0 => update,
            Body::Error(e) => {
                let key = format!("subscriber: {}", e.code.as_str());
                *self.seen.errors.entry(key).or_default() += 1;
                return;
            }
            _ => {
                self.seen.other += 1;
                return;
            }
        };
        let schedule = self.schedule;
        if t >= schedule.measure_from_ns && t < schedule.end_ns {
            self.seen.frames += 1;
            self.seen.entries += update.entries.len() as u64;
        }
        let sent = self.sent.load(Ordering::Acquire);
        for entry in update.entries {
            let toggle = self
                .index
                .get(&entry.user_id)
                .and_then(|&target| schedule.latest(target, entry.status, t, sent));
            let Some(k) = toggle else {
                self.seen.unmatched += 1;
                continue;
            };
            let target = schedule.target(k);
            let round = (k / schedule.targets).min(u32::MAX as u64 - 1) as u32;
            let Some(cell) = self
                .credited
                .get_mut(sub * schedule.targets as usize + target)
            else {
                continue;
            };
            if *cell != u32::MAX && round <= *cell {
                self.seen.repeated += 1;
                continue;
            }
            *cell = round;
            if schedule.measured(k) {
                let _ = self
                    .seen
                    .each
                    .record(t.saturating_sub(schedule.at_ns(k)) / 1000);
                if let Some(first) = self.seen.first.get_mut(k as usize) {
                    *first = (*first).min(t);
                }
            }
        }
    }
}

/// Read the subscribers' connections until `stop_at`.
fn observe(mut conns: Vec<Connection>, mut observer: Observer, stop_at: Instant) -> Observed {
    let mut epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            observer.seen.errors.insert(format!("epoll: {e}"), 1);
            return observer.seen;
        }
    };
    let mut alive = vec![true; conns.len()];
    for (i, conn) in conns.iter_mut().enumerate() {
        if let Err(e) = epoll.add(conn, i) {
            let key = format!("subscriber: {e}");
            *observer.seen.errors.entry(key).or_default() += 1;
            alive[i] = false;
        }
    }
    // Setup leftovers (the group's system messages...) first: they are in the inboxes.
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    loop {
        for &i in &ready {
            let Some(conn) = conns.get_mut(i).filter(|_| alive[i]) else {
                continue;
            };
            if let Err(e) = drain(conn, |frame| observer.frame(i, frame)) {
                let key = format!("subscriber: {e}");
                *observer.seen.errors.entry(key).or_default() += 1;
                alive[i] = false;
                epoll.remove(conn);
            }
        }
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        epoll.wait(
            stop_at.saturating_duration_since(now).min(WAIT_MAX),
            &mut ready,
        );
    }
    observer.seen.held = alive.iter().filter(|a| **a).count();
    observer.seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::message::{PresenceEntry, PresenceUpdate};

    const MS: u64 = 1_000_000;

    /// 10 toggles/s over 3 targets, measured from 1 s to 3 s.
    fn schedule() -> Schedule {
        Schedule::new(10, 3, Duration::from_secs(1), Duration::from_secs(3))
    }

    #[test]
    fn schedule_is_round_robin_and_alternates() {
        let s = schedule();
        assert_eq!(s.total, 30);
        assert_eq!(s.at_ns(7), 700 * MS);
        let plan: Vec<(usize, PresenceStatus)> =
            (0..7).map(|k| (s.target(k), s.status(k))).collect();
        use PresenceStatus::{Away, Online};
        assert_eq!(
            plan,
            [
                (0, Away),
                (1, Away),
                (2, Away),
                (0, Online),
                (1, Online),
                (2, Online),
                (0, Away)
            ]
        );
        assert!(!s.measured(9) && s.measured(10) && s.measured(29));
        // A rate that does not divide a second: due times round up, never early.
        let odd = Schedule::new(3, 1, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(odd.at_ns(1), 333_333_334);
        assert_eq!(odd.latest(0, PresenceStatus::Online, 333_333_333, 9), None);
        assert_eq!(
            odd.latest(0, PresenceStatus::Online, 333_333_334, 9),
            Some(1)
        );
        assert_eq!(odd.total, 3);
    }

    #[test]
    fn latest_matching_toggle() {
        let s = schedule();
        use PresenceStatus::{Away, Offline, Online};
        // Target 1's toggles: 1 Away, 4 Online, 7 Away, 10 Online...
        assert_eq!(s.latest(1, Away, 700 * MS, 100), Some(7));
        assert_eq!(s.latest(1, Away, 700 * MS - 1, 100), Some(1));
        assert_eq!(s.latest(1, Online, 700 * MS, 100), Some(4));
        // Not sent yet: the earlier one.
        assert_eq!(s.latest(1, Away, 700 * MS, 7), Some(1));
        assert_eq!(s.latest(1, Away, 700 * MS, 0), None);
        // Before any toggle of that target (or to that status).
        assert_eq!(s.latest(2, Away, 100 * MS, 100), None);
        assert_eq!(s.latest(0, Online, 200 * MS, 100), None);
        assert_eq!(s.latest(0, Offline, 900 * MS, 100), None);
        // After the end: the last scheduled toggle (29 is target 2, round 9: Online).
        assert_eq!(s.latest(2, Online, 10_000 * MS, 100), Some(29));
        assert_eq!(s.latest(2, Away, 10_000 * MS, 100), Some(26));
    }

    fn update(entries: &[(u64, PresenceStatus)]) -> Frame {
        Frame {
            request_id: 0,
            body: Body::PresenceUpdate(PresenceUpdate {
                entries: entries
                    .iter()
                    .map(|&(user_id, status)| PresenceEntry {
                        user_id,
                        last_seen_ms: 0,
                        status,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn subscribers_are_credited_once_per_toggle() {
        use PresenceStatus::{Away, Offline, Online};
        let s = schedule();
        let index = Arc::new(HashMap::from([(100, 0), (101, 1), (102, 2)]));
        let sent = Arc::new(AtomicU64::new(30));
        let mut o = Observer::new(2, s, index, Instant::now(), sent);
        // Toggle 10 (target 1, round 3: Online) is due at 1 s.
        assert_eq!((s.target(10), s.status(10)), (1, Online));
        o.frame_at(0, update(&[(101, Online)]), 1_005 * MS);
        o.frame_at(1, update(&[(101, Online)]), 1_020 * MS);
        // The same state again, a stranger, Offline: not credited.
        o.frame_at(
            0,
            update(&[(101, Online), (999, Away), (100, Offline)]),
            1_030 * MS,
        );
        // Coalesced: toggles 12 (target 0 Away) and 15 (target 0 Online): only 15 shows.
        assert_eq!((s.status(12), s.status(15)), (Away, Online));
        o.frame_at(0, update(&[(100, Online)]), 1_600 * MS);
        // Pushed frames count in the window only; answers (request id != 0) are "other".
        o.frame_at(
            0,
            Frame {
                request_id: 5,
                body: Body::PresenceUpdate(PresenceUpdate::default()),
            },
            1_700 * MS,
        );
        let seen = o.seen;
        assert_eq!((seen.frames, seen.entries), (4, 6));
        assert_eq!((seen.repeated, seen.unmatched, seen.other), (1, 2, 1));
        assert_eq!(seen.each.len(), 3);
        assert_eq!(seen.first[10], 1_005 * MS);
        assert_eq!(seen.first[12], u64::MAX);
        assert_eq!(seen.first[15], 1_600 * MS);
        // µs from the due time: 5 ms, 20 ms, 100 ms (15 is due at 1.5 s).
        assert_eq!(seen.each.min(), 5_000);
        assert!(seen.each.max() >= 100_000 && seen.each.max() < 100_100);
    }
}
