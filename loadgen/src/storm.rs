//! The `reconnect-storm` scenario: many devices lose their connections at once, miss
//! messages while away, and all come back.
//!
//! Setup: `U` users; `N` connections, connection `i` belonging to user `i mod U` and
//! being its own device (each connection logs in once over HTTP, which registers a new
//! device, and keeps that access token: reconnecting with it is the same device, with
//! the same delivery cursor). One more user, the sender, opens a 1:1 conversation with
//! each of the `U` users. Every connection is read by one thread with epoll.
//!
//! A round:
//! 1. drop `F·N` connections (a different slice each round) abruptly: `SO_LINGER` 0 and
//!    close, so the server sees a TCP reset and no WebSocket close frame;
//! 2. the sender sends `K` messages into the conversation of every user that lost a
//!    device (pipelined, at most 64 outstanding, retrying `RateLimited` answers with the
//!    same idempotency key) and waits for every ack: the messages are durable;
//! 3. `--connect-threads` threads reconnect every dropped device with its token, as fast
//!    as they can or at `--connect-rate` per second in all; the reader adds each
//!    connection to its epoll set as soon as its `Welcome` arrived;
//! 4. reading goes on until every reconnected device has received all `K` acked
//!    messages of its conversation — the server sends everything after the device's
//!    cursor on its own after `Welcome`, as `SyncBatch` frames and/or `Deliver`s, and the
//!    devices that stayed connected get them live — or `--round-timeout-secs` passes;
//! 5. the round settles for `--settle-ms` (still reading), so the devices' last
//!    Delivered receipts are folded into their cursors before the next drop.
//!
//! Devices send Delivered receipts, coalesced to one per device per 100 ms and one at
//! the end of each round, as a real client does: without them a reconnecting device's
//! cursor would stay where it was and every catch-up would resend the whole
//! conversation (reported as duplicates).
//!
//! Per device the highest sequence received is kept: a message at or below it is a
//! duplicate (the contract is at-least-once, devices dedupe by (conversation, seq)), one
//! more than one above it leaves a gap. Figures: connect→Welcome latency (`reconnect`)
//! and connect→last missed message (`catch_up`) per reconnect, reconnects per second of
//! each storm (reconnects / time from the first connect to the last Welcome), messages
//! expected (`K` per dropped device per round, if all acked) and received, duplicates,
//! gaps, errors by kind.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wire::client::http::{self, Login};
use wire::client::{sync_until_live, Connection, Transport};
use wire::message::{Body, ErrorCode, Frame, ReceiptKind, StoredMessage};

use crate::epoll::{drain, Epoll};
use crate::fleet::error_kind;
use crate::report::{self, latency, latency_line, Report};
use crate::{
    check_conns, histogram, in_parallel, messages_of, nanos_since, new_user, run_id, sleep_until,
    stamped_send, transport, Cli, Result, Timeline, PASSWORD, SETUP_THREADS,
};

/// Missed-message sends outstanding at most.
const SEND_WINDOW: usize = 64;
/// Devices send a Delivered receipt at most this often.
const RECEIPT_EVERY: Duration = Duration::from_millis(100);
/// The longest one wait lasts.
const WAIT_MAX: Duration = Duration::from_millis(20);
/// The epoll token of the sender's connection.
const SENDER: usize = usize::MAX;
/// Body of a missed message (its first 8 bytes: when it was sent, as in `chat`).
const BODY_BYTES: usize = 32;

/// The command line of `reconnect-storm`.
#[derive(clap::Args)]
pub struct Args {
    /// Connections, each its own device (one HTTP login per connection).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Users the devices belong to (connection i is user i mod users).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Fraction of the connections dropped each round (0..1].
    #[arg(long, default_value_t = 0.5)]
    fraction: f64,
    /// Messages the sender sends to each user that lost a device, while it is away.
    #[arg(long, default_value_t = 5)]
    missed: usize,
    /// Reconnects per second in all; 0 = as fast as the connect threads go.
    #[arg(long, default_value_t = 0)]
    connect_rate: u64,
    /// Threads reconnecting (each connect waits for its Welcome).
    #[arg(long, default_value_t = 4)]
    connect_threads: usize,
    /// Seconds a round may take to catch every device up before it counts as failed.
    #[arg(long, default_value_t = 30)]
    round_timeout_secs: u64,
    /// Milliseconds to keep reading after a round, so receipts reach the cursors before
    /// the next drop.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
}

impl Args {
    pub fn options(&self) -> Result<Options> {
        Options {
            conns: self.conns,
            users: self.users,
            fraction: self.fraction,
            missed: self.missed,
            connect_rate: self.connect_rate,
            connect_threads: self.connect_threads,
            round_timeout: Duration::from_secs(self.round_timeout_secs),
            settle: Duration::from_millis(self.settle_ms),
        }
        .checked()
    }
}

impl Args {
    /// The command line of a worker running `conns` of the connections over `users` of
    /// the users (`storm-worker`, see `fleet_run`).
    fn worker_args(&self, conns: usize, users: usize) -> Vec<String> {
        [
            "--conns".to_string(),
            conns.to_string(),
            "--users".to_string(),
            users.to_string(),
            "--fraction".to_string(),
            self.fraction.to_string(),
            "--missed".to_string(),
            self.missed.to_string(),
            "--connect-rate".to_string(),
            self.connect_rate.to_string(),
            "--connect-threads".to_string(),
            self.connect_threads.to_string(),
            "--round-timeout-secs".to_string(),
            self.round_timeout_secs.to_string(),
            "--settle-ms".to_string(),
            self.settle_ms.to_string(),
        ]
        .to_vec()
    }
}

/// `reconnect-storm --workers W`: the users (and their connections) split over W worker
/// processes, each with a sender of its own; every worker starts round `r` at the same
/// instant, `epoch + warm-up + r × every`, so the storms of all workers hit the server
/// together. Totals are merged: histograms added, counts summed, and per round the
/// workers' storm and catch-up times taken as the longest (they ran concurrently), so
/// the reconnect rate is all reconnects over the longest storm.
pub fn fleet_run(
    cli: &Cli,
    args: &Args,
    rounds: usize,
    every: Duration,
    f: crate::chat_fleet::Fleet,
) -> Result<Report> {
    let o = args.options()?;
    let workers = f.workers.clamp(1, o.users);
    let shares = (0..workers)
        .map(|w| {
            let (_, users) = crate::fleet::share(o.users, workers, w);
            let (_, conns) = crate::fleet::share(o.conns, workers, w);
            let mut share = vec![
                "storm-worker".to_string(),
                "--every-secs".to_string(),
                every.as_secs().to_string(),
            ];
            share.extend(args.worker_args(conns.max(users), users));
            share
        })
        .collect();
    let window = every * rounds as u32;
    let results = crate::chat_fleet::run_workers(cli, &f, shares, o.conns, window, |_| ())?;
    let mut totals = crate::chat_fleet::merge_results(&results.lines, totals_from_json, merge)?;
    totals.sum_storm_time();
    let t = results.timeline;
    let mut report = report(&o, totals, Some((t.measure_from, window)));
    crate::chat_fleet::label(&mut report, workers, &results.lines);
    Ok(report)
}

/// One worker process of `reconnect-storm --workers`: connect its share, then run a
/// storm every `every` on the coordinator's timeline.
pub fn worker(cli: &Cli, o: Options, every: Duration) -> Result<()> {
    let started = Instant::now();
    let storm = setup(cli, o)?;
    crate::chat_fleet::serve_worker(o.conns, started, |t| {
        storm.run_every(t, every).map(|totals| totals_json(&totals))
    })
}

pub(crate) fn totals_json(t: &Totals) -> serde_json::Value {
    use crate::fleet::histogram_json;
    serde_json::json!({
        "reconnect": histogram_json(&t.reconnect),
        "catch_up": histogram_json(&t.catch_up),
        "missed_ack": histogram_json(&t.missed_ack),
        "rounds": t.rounds,
        "dropped": t.dropped,
        "reconnected": t.reconnected,
        "expected": t.expected,
        "caught_up": t.caught_up,
        "devices_caught_up": t.devices_caught_up,
        "duplicates": t.duplicates,
        "gaps": t.gaps,
        "live": t.live,
        "sent": t.sent,
        "acked": t.acked,
        "storm_secs": t.storm_secs,
        "errors": t.errors,
    })
}

fn totals_from_json(text: &str) -> Result<Totals> {
    Ok(totals_from_value(&crate::chat_fleet::parse_result(
        text, "storm",
    )?))
}

/// The inverse of [`totals_json`] (a missing field reads as zero).
pub(crate) fn totals_from_value(v: &serde_json::Value) -> Totals {
    use crate::fleet::histogram_from_json;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Totals {
        reconnect: histogram_from_json(&v["reconnect"]),
        catch_up: histogram_from_json(&v["catch_up"]),
        missed_ack: histogram_from_json(&v["missed_ack"]),
        rounds: v["rounds"].as_array().cloned().unwrap_or_default(),
        dropped: n("dropped"),
        reconnected: n("reconnected"),
        expected: n("expected"),
        caught_up: n("caught_up"),
        devices_caught_up: n("devices_caught_up"),
        duplicates: n("duplicates"),
        gaps: n("gaps"),
        live: n("live"),
        sent: n("sent"),
        acked: n("acked"),
        storm_secs: v["storm_secs"].as_f64().unwrap_or(0.0),
        errors: crate::fleet::counts_from_json(&v["errors"]),
        span: None,
    }
}

/// One round as two workers saw it, merged: counts summed; the storm and catch-up times
/// are the longer (the workers' storms ran at once).
fn merge_round(into: &mut serde_json::Value, from: &serde_json::Value) {
    for key in [
        "dropped",
        "users",
        "acked",
        "reconnected",
        "failed",
        "caught_up_devices",
    ] {
        let sum = into[key].as_u64().unwrap_or(0) + from[key].as_u64().unwrap_or(0);
        into[key] = serde_json::json!(sum);
    }
    for key in ["reconnect_secs", "catch_up_secs"] {
        let longest = into[key]
            .as_f64()
            .unwrap_or(0.0)
            .max(from[key].as_f64().unwrap_or(0.0));
        into[key] = serde_json::json!(longest);
    }
    let timed_out = into["timed_out"] == true || from["timed_out"] == true;
    into["timed_out"] = serde_json::json!(timed_out);
    let secs = into["reconnect_secs"].as_f64().unwrap_or(0.0);
    let reconnected = into["reconnected"].as_u64().unwrap_or(0) as f64;
    into["reconnects_per_sec"] = serde_json::json!(if secs > 0.0 {
        (reconnected / secs).round()
    } else {
        0.0
    });
}

/// Two workers' totals as one. Call [`Totals::sum_storm_time`] once all are merged.
pub(crate) fn merge(into: &mut Totals, from: Totals) {
    let _ = into.reconnect.add(&from.reconnect);
    let _ = into.catch_up.add(&from.catch_up);
    let _ = into.missed_ack.add(&from.missed_ack);
    for (r, round) in from.rounds.iter().enumerate() {
        match into.rounds.get_mut(r) {
            Some(mine) => merge_round(mine, round),
            None => into.rounds.push(round.clone()),
        }
    }
    into.dropped += from.dropped;
    into.reconnected += from.reconnected;
    into.expected += from.expected;
    into.caught_up += from.caught_up;
    into.devices_caught_up += from.devices_caught_up;
    into.duplicates += from.duplicates;
    into.gaps += from.gaps;
    into.live += from.live;
    into.sent += from.sent;
    into.acked += from.acked;
    report::merge_errors(&mut into.errors, from.errors);
}

#[cfg(test)]
mod fleet_tests {
    use super::*;

    #[test]
    fn rounds_of_concurrent_workers_merge_by_index_with_the_longest_storm() {
        let round = |reconnected: u64, secs: f64, timed_out: bool| {
            serde_json::json!({"round": 0, "dropped": reconnected, "users": 2, "acked": 4,
                "reconnected": reconnected, "failed": 0, "caught_up_devices": reconnected,
                "reconnect_secs": secs, "reconnects_per_sec": 0.0, "catch_up_secs": secs,
                "timed_out": timed_out})
        };
        let totals = |reconnected: u64, secs: f64, timed_out: bool| Totals {
            reconnect: histogram(),
            catch_up: histogram(),
            missed_ack: histogram(),
            rounds: vec![round(reconnected, secs, timed_out)],
            dropped: reconnected,
            reconnected,
            expected: 10,
            caught_up: 10,
            devices_caught_up: reconnected,
            duplicates: 0,
            gaps: 0,
            live: 1,
            sent: 10,
            acked: 10,
            storm_secs: secs,
            errors: HashMap::new(),
            span: None,
        };
        let a = totals(100, 0.5, false);
        let text = totals_json(&totals(300, 2.0, true)).to_string();
        let mut merged = totals_from_json(&totals_json(&a).to_string()).unwrap();
        merge(&mut merged, totals_from_json(&text).unwrap());
        assert_eq!(
            (merged.reconnected, merged.expected, merged.live),
            (400, 20, 2)
        );
        let r = &merged.rounds[0];
        assert_eq!(r["reconnected"], 400);
        assert_eq!(r["reconnect_secs"], 2.0);
        assert_eq!(r["reconnects_per_sec"], 200.0);
        assert_eq!(r["timed_out"], true);
        assert!(totals_from_json("7").is_err());
    }
}

#[derive(Clone, Copy)]
pub struct Options {
    pub conns: usize,
    pub users: usize,
    pub fraction: f64,
    pub missed: usize,
    pub connect_rate: u64,
    pub connect_threads: usize,
    pub round_timeout: Duration,
    pub settle: Duration,
}

impl Options {
    pub fn checked(mut self) -> Result<Options> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(format!("--fraction {} is not in (0, 1]", self.fraction));
        }
        self.conns = self.conns.max(1);
        self.users = self.users.clamp(1, self.conns);
        self.connect_threads = self.connect_threads.max(1);
        Ok(self)
    }

    /// Connections dropped per round.
    fn dropped(&self) -> usize {
        ((self.conns as f64 * self.fraction).round() as usize).clamp(1, self.conns)
    }
}

/// One device: a login of a user, and its connection while it has one.
struct Device {
    user: usize,
    token: String,
    conn: Option<Connection>,
    /// Highest sequence received in its conversation.
    highest: u64,
    /// Highest sequence covered by a Delivered receipt.
    receipted: u64,
    /// Dropped this round and not yet caught up (nor failed).
    away: bool,
    /// The missed messages it needs this round: sequences `want.0..=want.1`.
    want: (u64, u64),
    got: u64,
    /// When its reconnect started.
    reconnect_started: Option<Instant>,
    /// The node its session was welcomed by (its user's home in a cluster): where it
    /// reconnects, as a client that remembers where it was does (a redirect is followed
    /// if the home moved).
    home: SocketAddr,
}

impl Device {
    fn need(&self) -> u64 {
        if self.want.1 >= self.want.0 && self.want.0 > 0 {
            self.want.1 - self.want.0 + 1
        } else {
            0
        }
    }
}

/// A reconnect, from a connect thread.
struct Reconnected {
    device: usize,
    started: Instant,
    result: std::result::Result<(Connection, Instant), String>,
}

/// A missed message sent and not yet answered.
struct Pending {
    user: usize,
    body: Body,
    sent_at: Instant,
}

/// One round's figures.
#[derive(Default)]
struct Round {
    dropped: usize,
    users: usize,
    acked: u64,
    reconnected: usize,
    failed: usize,
    caught_up_devices: usize,
    first_connect: Option<Instant>,
    last_welcome: Option<Instant>,
    last_caught_up: Option<Instant>,
    timed_out: bool,
}

/// Everything counted over the rounds.
pub struct Totals {
    reconnect: Histogram<u64>,
    catch_up: Histogram<u64>,
    missed_ack: Histogram<u64>,
    rounds: Vec<serde_json::Value>,
    dropped: u64,
    reconnected: u64,
    expected: u64,
    caught_up: u64,
    devices_caught_up: u64,
    duplicates: u64,
    gaps: u64,
    /// Missed messages received live by devices that stayed connected.
    live: u64,
    sent: u64,
    acked: u64,
    /// Sum over rounds of first connect → last Welcome.
    storm_secs: f64,
    errors: HashMap<String, u64>,
    /// When the first round started and the last ended.
    span: Option<(Instant, Instant)>,
}

impl Totals {
    /// After merging workers' totals: the storm time is the sum over rounds of each
    /// round's longest storm (the workers' storms of one round ran at once).
    pub(crate) fn sum_storm_time(&mut self) {
        self.storm_secs = self
            .rounds
            .iter()
            .filter_map(|r| r["reconnect_secs"].as_f64())
            .sum();
    }
}

/// The population of a storm, connected.
pub struct Storm {
    o: Options,
    transport: Transport,
    devices: Vec<Device>,
    /// Per user: the conversation with the sender.
    conversations: Vec<u64>,
    sender: Connection,
    epoll: Epoll,
    ready: Vec<usize>,
    epoch: Instant,
    outstanding: HashMap<u64, Pending>,
    /// Per user this round: the lowest and highest acked sequence and how many.
    acked: HashMap<usize, (u64, u64, u64)>,
    /// Sends to retry (after `RateLimited`) no earlier than the instant.
    retry: Vec<(Instant, usize, Body)>,
    sender_lost: Option<String>,
    next_receipts: Instant,
    round: Round,
    totals: Totals,
}

/// Standalone: `rounds` storms back to back.
pub fn run(cli: &Cli, o: Options, rounds: usize) -> Result<Report> {
    let mut storm = setup(cli, o)?;
    for r in 0..rounds {
        storm.round(r)?;
    }
    Ok(storm.report(None))
}

pub fn setup(cli: &Cli, o: Options) -> Result<Storm> {
    check_conns("reconnect-storm", o.conns + 1)?;
    let run = run_id();
    let (transport, addr) = transport(cli);
    let names: Vec<String> = (0..o.users).map(|u| format!("lg{run}r{u}")).collect();
    let user_ids: Vec<u64> = in_parallel(o.users, SETUP_THREADS, |u| {
        http::register(cli.http, &names[u], PASSWORD)
            .map_err(|e| format!("register {}: {e}", names[u]))
    })?;
    // One login per connection: each is a new device of its user.
    let logins: Vec<Login> = in_parallel(o.conns, SETUP_THREADS, |i| {
        let name = &names[i % o.users];
        http::login(cli.http, name, PASSWORD, None, Some("loadgen storm"))
            .map_err(|e| format!("login {name}: {e}"))
    })?;
    let sender_login = new_user(cli, &run, "rs", 0)?;
    let (mut sender, _) =
        Connection::connect_following(addr, transport, &sender_login.access_token)
            .map_err(|e| format!("sender: {e}"))?;
    sync_until_live(&mut sender, Duration::from_secs(10)).map_err(|e| format!("sender: {e}"))?;
    let conversations: Vec<u64> = user_ids
        .iter()
        .map(|&id| {
            sender
                .open_direct(id)
                .map(|c| c.conversation_id)
                .map_err(|e| format!("open direct: {e}"))
        })
        .collect::<Result<_>>()?;
    let opened: Vec<(Connection, Vec<StoredMessage>)> = in_parallel(o.conns, SETUP_THREADS, |i| {
        let (mut conn, _) = Connection::connect_following(addr, transport, &logins[i].access_token)
            .map_err(|e| format!("device {i}: {e}"))?;
        let missed = sync_until_live(&mut conn, Duration::from_secs(10))
            .map_err(|e| format!("device {i}: {e}"))?;
        Ok((conn, missed))
    })?;
    let epoll = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut devices = Vec::with_capacity(o.conns);
    for (i, ((mut conn, messages), login)) in opened.into_iter().zip(logins).enumerate() {
        let user = i % o.users;
        let highest = messages
            .iter()
            .filter(|m| m.conversation_id == conversations[user])
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        epoll
            .add(&mut conn, i)
            .map_err(|e| format!("epoll add: {e}"))?;
        devices.push(Device {
            user,
            home: conn.peer_addr(),
            token: login.access_token,
            conn: Some(conn),
            highest,
            receipted: 0,
            away: false,
            want: (0, 0),
            got: 0,
            reconnect_started: None,
        });
    }
    epoll
        .add(&mut sender, SENDER)
        .map_err(|e| format!("epoll add: {e}"))?;
    let mut storm = Storm {
        o,
        transport,
        devices,
        conversations,
        sender,
        epoll,
        ready: Vec::new(),
        epoch: Instant::now(),
        outstanding: HashMap::new(),
        acked: HashMap::new(),
        retry: Vec::new(),
        sender_lost: None,
        next_receipts: Instant::now(),
        round: Round::default(),
        totals: Totals {
            reconnect: histogram(),
            catch_up: histogram(),
            missed_ack: histogram(),
            rounds: Vec::new(),
            dropped: 0,
            reconnected: 0,
            expected: 0,
            caught_up: 0,
            devices_caught_up: 0,
            duplicates: 0,
            gaps: 0,
            live: 0,
            sent: 0,
            acked: 0,
            storm_secs: 0.0,
            errors: HashMap::new(),
            span: None,
        },
    };
    // Whatever arrived during setup (frames after the catch-up) is read now.
    for d in 0..storm.devices.len() {
        storm.read_device(d);
    }
    storm.read_sender();
    Ok(storm)
}

impl Storm {
    /// In `mixed`: a storm every `every` from `t.measure_from` while before `t.end`,
    /// reading in between.
    pub fn run_every(mut self, t: Timeline, every: Duration) -> Result<Totals> {
        let mut r = 0;
        loop {
            let at = t.measure_from + every * r as u32;
            if at >= t.end {
                break;
            }
            self.pump_until(at);
            self.round(r)?;
            r += 1;
        }
        self.pump_until(t.end);
        Ok(self.totals)
    }

    /// One storm (see the module documentation).
    pub fn round(&mut self, r: usize) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.o.round_timeout;
        self.round = Round::default();
        let n = self.devices.len();
        let count = self.o.dropped();
        let first = (r * count) % n;
        let dropped: Vec<usize> = (0..count).map(|j| (first + j) % n).collect();
        let before: Vec<u64> = self.devices.iter().map(|d| d.highest).collect();
        let mut users: Vec<usize> = Vec::new();
        for &d in &dropped {
            let device = &mut self.devices[d];
            if let Some(mut conn) = device.conn.take() {
                self.epoll.remove(&mut conn);
                abort(conn);
            }
            device.away = true;
            device.got = 0;
            device.want = (0, 0);
            device.reconnect_started = None;
            users.push(device.user);
        }
        users.sort_unstable();
        users.dedup();
        self.round.dropped = dropped.len();
        self.round.users = users.len();

        // The messages they miss, durable before anyone reconnects.
        self.acked.clear();
        self.send_missed(&users, deadline);
        if let Some(lost) = &self.sender_lost {
            return Err(format!("the storm's sender lost its connection: {lost}"));
        }
        for &d in &dropped {
            let device = &mut self.devices[d];
            let (lo, hi, _) = self.acked.get(&device.user).copied().unwrap_or((0, 0, 0));
            device.want = (lo, hi);
            self.totals.expected += device.need();
        }

        // The storm.
        let (tx, rx) = mpsc::channel();
        let connectors = self.reconnect(&dropped, tx);
        while Instant::now() < deadline && !self.caught_up(&users) {
            while let Ok(r) = rx.try_recv() {
                self.reconnected(r);
            }
            self.pump(Duration::from_millis(1));
        }
        // After a timeout some connect threads may still be connecting: wait for them
        // (each connect gives up after the client's timeout); late connections count
        // as reconnected, their devices as not caught up.
        for c in connectors {
            let _ = c.join();
        }
        while let Ok(r) = rx.try_recv() {
            self.reconnected(r);
        }
        if !self.caught_up(&users) {
            self.round.timed_out = true;
            let behind = self.devices.iter().filter(|d| d.away).count();
            report::count(
                &mut self.totals.errors,
                format!("round timeout: devices not caught up ({behind} in round {r})"),
            );
            for d in &mut self.devices {
                d.away = false;
            }
        }
        // The devices that stayed connected got the same messages live (counted now:
        // a push may arrive before the sender has read its ack).
        let mut stayed = vec![true; n];
        for &d in &dropped {
            stayed[d] = false;
        }
        for ((device, before), stayed) in self.devices.iter().zip(before).zip(stayed) {
            if let (true, Some(&(lo, hi, _))) = (stayed, self.acked.get(&device.user)) {
                if device.conn.is_some() {
                    let from = lo.max(before + 1);
                    let to = hi.min(device.highest);
                    self.totals.live += (to + 1).saturating_sub(from);
                }
            }
        }
        self.send_receipts();
        self.pump_until(Instant::now() + self.o.settle);
        self.close_round(r, started);
        Ok(())
    }

    /// Every device dropped this round caught up (or failed for good), and every
    /// connected device of the users concerned holds their newest message.
    fn caught_up(&self, users: &[usize]) -> bool {
        self.devices.iter().all(|d| {
            if d.away {
                return false;
            }
            match (d.conn.is_some(), self.acked.get(&d.user)) {
                (true, Some(&(_, hi, _))) if users.binary_search(&d.user).is_ok() => {
                    d.highest >= hi
                }
                _ => true,
            }
        })
    }

    fn close_round(&mut self, r: usize, started: Instant) {
        let round = std::mem::take(&mut self.round);
        let storm_secs = match (round.first_connect, round.last_welcome) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let catch_up_secs = match (round.first_connect, round.last_caught_up) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        self.totals.storm_secs += storm_secs;
        self.totals.dropped += round.dropped as u64;
        self.totals.reconnected += round.reconnected as u64;
        self.totals.devices_caught_up += round.caught_up_devices as u64;
        self.totals.rounds.push(serde_json::json!({
            "round": r,
            "dropped": round.dropped,
            "users": round.users,
            "acked": round.acked,
            "reconnected": round.reconnected,
            "failed": round.failed,
            "caught_up_devices": round.caught_up_devices,
            "reconnect_secs": storm_secs,
            "reconnects_per_sec": if storm_secs > 0.0 { (round.reconnected as f64 / storm_secs).round() } else { 0.0 },
            "catch_up_secs": catch_up_secs,
            "timed_out": round.timed_out,
        }));
        let end = Instant::now();
        self.totals.span = Some(match self.totals.span {
            Some((a, _)) => (a, end),
            None => (started, end),
        });
    }

    /// Send `missed` messages into the conversation of each of `users` and wait for
    /// their answers (reading everything meanwhile).
    fn send_missed(&mut self, users: &[usize], deadline: Instant) {
        let mut queue: Vec<(usize, Body)> = Vec::with_capacity(users.len() * self.o.missed);
        let mut body = vec![0u8; BODY_BYTES];
        for &u in users {
            for _ in 0..self.o.missed {
                let ns = nanos_since(self.epoch, Instant::now());
                queue.push((u, stamped_send(self.conversations[u], &mut body, ns)));
            }
        }
        queue.reverse();
        self.totals.sent += queue.len() as u64;
        loop {
            let now = Instant::now();
            if let Some(at) = self.retry.iter().position(|(when, _, _)| *when <= now) {
                let (_, u, body) = self.retry.swap_remove(at);
                queue.push((u, body));
            }
            while self.outstanding.len() < SEND_WINDOW && self.sender_lost.is_none() {
                let Some((user, body)) = queue.pop() else {
                    break;
                };
                match self.sender.request(body.clone()) {
                    Ok(request_id) => {
                        self.outstanding.insert(
                            request_id,
                            Pending {
                                user,
                                body,
                                sent_at: Instant::now(),
                            },
                        );
                    }
                    Err(e) => self.sender_lost = Some(e.to_string()),
                }
            }
            let done = queue.is_empty() && self.outstanding.is_empty() && self.retry.is_empty();
            if done || self.sender_lost.is_some() || now >= deadline {
                if !done {
                    let left = queue.len() + self.outstanding.len() + self.retry.len();
                    report::count(
                        &mut self.totals.errors,
                        format!("missed sends unanswered at the round timeout ({left})"),
                    );
                    self.outstanding.clear();
                    self.retry.clear();
                }
                return;
            }
            self.pump(Duration::from_millis(1));
        }
    }

    /// Start the connect threads for `dropped`; they hand each connection over on `tx`.
    fn reconnect(
        &mut self,
        dropped: &[usize],
        tx: mpsc::Sender<Reconnected>,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let threads = self.o.connect_threads.min(dropped.len()).max(1);
        let start = Instant::now();
        self.round.first_connect = Some(start);
        let rate = self.o.connect_rate;
        let mut shares: Vec<Vec<(usize, usize, String, SocketAddr)>> = vec![Vec::new(); threads];
        for (j, &d) in dropped.iter().enumerate() {
            let device = &self.devices[d];
            shares[j % threads].push((j, d, device.token.clone(), device.home));
        }
        let transport = self.transport;
        shares
            .into_iter()
            .map(|share| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for (j, device, token, addr) in share {
                        if rate > 0 {
                            sleep_until(start + Duration::from_secs_f64(j as f64 / rate as f64));
                        }
                        let started = Instant::now();
                        let result = Connection::connect_following(addr, transport, &token)
                            .map(|(conn, _)| (conn, Instant::now()))
                            .map_err(|e| error_kind(&e));
                        let r = Reconnected {
                            device,
                            started,
                            result,
                        };
                        if tx.send(r).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect()
    }

    fn reconnected(&mut self, r: Reconnected) {
        let Some(device) = self.devices.get_mut(r.device) else {
            return;
        };
        match r.result {
            Ok((mut conn, welcomed)) => {
                let latency = welcomed.saturating_duration_since(r.started);
                let _ = self.totals.reconnect.record(latency.as_micros() as u64);
                self.round.reconnected += 1;
                self.round.last_welcome = self.round.last_welcome.max(Some(welcomed));
                device.reconnect_started = Some(r.started);
                if let Err(e) = self.epoll.add(&mut conn, r.device) {
                    report::count(&mut self.totals.errors, format!("epoll add: {e}"));
                }
                device.conn = Some(conn);
                if device.need() == 0 {
                    device.away = false;
                }
                self.read_device(r.device);
            }
            Err(kind) => {
                report::count(&mut self.totals.errors, format!("reconnect: {kind}"));
                device.away = false;
                self.round.failed += 1;
            }
        }
    }

    /// Read until `until`.
    fn pump_until(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.pump(left.min(WAIT_MAX));
        }
    }

    /// Wait up to `wait` for input and read it; send the receipts that are due.
    fn pump(&mut self, wait: Duration) {
        if Instant::now() >= self.next_receipts {
            self.send_receipts();
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.epoll.wait(wait, &mut ready);
        for &token in &ready {
            if token == SENDER {
                self.read_sender();
            } else {
                self.read_device(token);
            }
        }
        self.ready = ready;
    }

    /// A Delivered receipt from every connected device with news, coalesced.
    fn send_receipts(&mut self) {
        self.next_receipts = Instant::now() + RECEIPT_EVERY;
        for d in 0..self.devices.len() {
            let device = &mut self.devices[d];
            let conversation = self.conversations[device.user];
            let Some(conn) = device.conn.as_mut() else {
                continue;
            };
            if device.highest <= device.receipted {
                continue;
            }
            match conn.receipt(conversation, ReceiptKind::Delivered, device.highest) {
                Ok(_) => device.receipted = device.highest,
                Err(e) => {
                    report::count(
                        &mut self.totals.errors,
                        format!("receipt: {}", error_kind(&e)),
                    );
                    self.lost(d);
                }
            }
        }
    }

    fn read_device(&mut self, d: usize) {
        let Some(conn) = self.devices.get_mut(d).and_then(|dev| dev.conn.as_mut()) else {
            return;
        };
        let mut frames = Vec::new();
        let result = drain(conn, |frame| frames.push(frame));
        for frame in frames {
            self.device_frame(d, frame);
        }
        if let Err(e) = result {
            report::count(
                &mut self.totals.errors,
                format!("device recv: {}", error_kind(&e)),
            );
            self.lost(d);
        }
    }

    /// A device's connection ended unasked: it stays away (and fails its round).
    fn lost(&mut self, d: usize) {
        if let Some(device) = self.devices.get_mut(d) {
            if let Some(mut conn) = device.conn.take() {
                self.epoll.remove(&mut conn);
            }
            device.away = false;
        }
    }

    fn device_frame(&mut self, d: usize, frame: Frame) {
        let conversation = self.conversations[self.devices[d].user];
        if let Body::Error(e) = &frame.body {
            report::count(&mut self.totals.errors, format!("device: {:?}", e.code));
        }
        for m in messages_of(frame.body) {
            if m.conversation_id == conversation {
                self.message(d, m.seq);
            }
        }
    }

    /// Device `d` received sequence `seq` of its conversation.
    fn message(&mut self, d: usize, seq: u64) {
        let device = &mut self.devices[d];
        let t = &mut self.totals;
        if seq <= device.highest {
            t.duplicates += 1;
            return;
        }
        if seq > device.highest + 1 {
            t.gaps += seq - device.highest - 1;
        }
        device.highest = seq;
        let (lo, hi) = device.want;
        if !device.away || !(lo..=hi).contains(&seq) {
            return;
        }
        device.got += 1;
        t.caught_up += 1;
        if device.got >= device.need() {
            device.away = false;
            let now = Instant::now();
            if let Some(started) = device.reconnect_started {
                let _ = t
                    .catch_up
                    .record(now.saturating_duration_since(started).as_micros() as u64);
            }
            self.round.caught_up_devices += 1;
            self.round.last_caught_up = Some(now);
        }
    }

    fn read_sender(&mut self) {
        let mut frames = Vec::new();
        let result = drain(&mut self.sender, |frame| frames.push(frame));
        for Frame { request_id, body } in frames {
            let Some(pending) = self.outstanding.remove(&request_id) else {
                continue; // receipt updates and other pushes
            };
            match body {
                Body::Ack(ack) => {
                    let latency = pending.sent_at.elapsed().as_micros() as u64;
                    let _ = self.totals.missed_ack.record(latency);
                    self.totals.acked += 1;
                    self.round.acked += 1;
                    let e = self
                        .acked
                        .entry(pending.user)
                        .or_insert((ack.seq, ack.seq, 0));
                    e.0 = e.0.min(ack.seq);
                    e.1 = e.1.max(ack.seq);
                    // The sender is the conversation's only writer: the acked
                    // sequences of a round are dense, `lo..=hi`.
                    e.2 += 1;
                }
                Body::Error(e) if e.code == ErrorCode::RateLimited => {
                    let wait = Duration::from_millis(u64::from(e.retry_after_ms.max(5)));
                    self.retry
                        .push((Instant::now() + wait, pending.user, pending.body));
                }
                Body::Error(e) => report::count(
                    &mut self.totals.errors,
                    format!("missed send: {:?}", e.code),
                ),
                other => report::count(
                    &mut self.totals.errors,
                    format!("missed send: unexpected {}", other.type_name()),
                ),
            }
        }
        if let Err(e) = result {
            self.sender_lost = Some(e.to_string());
            self.epoll.remove(&mut self.sender);
        }
    }

    /// The report of the rounds run so far; `window` for the histograms (default: the
    /// rounds' span).
    pub fn report(self, window: Option<(Instant, Duration)>) -> Report {
        report(&self.o, self.totals, window)
    }
}

/// The report of a storm's totals (standalone or the `reconnect` section of `mixed`).
pub fn report(o: &Options, t: Totals, window: Option<(Instant, Duration)>) -> Report {
    let rounds = t.rounds.len();
    let reconnects_per_sec = if t.storm_secs > 0.0 {
        (t.reconnected as f64 / t.storm_secs).round()
    } else {
        0.0
    };
    let missing = t.expected.saturating_sub(t.caught_up);
    let json = serde_json::json!({
        "scenario": "reconnect-storm",
        "conns": o.conns,
        "users": o.users,
        "fraction": o.fraction,
        "missed": o.missed,
        "connect_rate": o.connect_rate,
        "rounds": rounds,
        "dropped": t.dropped,
        "reconnected": t.reconnected,
        "reconnects_per_sec": reconnects_per_sec,
        "missed_sent": t.sent,
        "missed_acked": t.acked,
        "expected": t.expected,
        "caught_up": t.caught_up,
        "missing": missing,
        "devices_caught_up": t.devices_caught_up,
        "duplicates": t.duplicates,
        "gaps": t.gaps,
        "live_delivered": t.live,
        "reconnect_us": latency(&t.reconnect),
        "catch_up_us": latency(&t.catch_up),
        "missed_ack_us": latency(&t.missed_ack),
        "per_round": t.rounds,
        "errors": t.errors,
        "error_count": t.errors.values().sum::<u64>(),
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reconnect-storm: {} devices of {} users; {rounds} round(s) dropping {:.0}% of them, \
         {} missed messages per user",
        o.conns,
        o.users,
        o.fraction * 100.0,
        o.missed
    );
    for (r, v) in t.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "  round {r}: dropped {}, reconnected {} in {:.3} s ({:.0}/s), all caught up after {:.3} s{}",
            v["dropped"],
            v["reconnected"],
            v["reconnect_secs"].as_f64().unwrap_or(0.0),
            v["reconnects_per_sec"].as_f64().unwrap_or(0.0),
            v["catch_up_secs"].as_f64().unwrap_or(0.0),
            if v["timed_out"] == true { " (timed out)" } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "  reconnects {} of {} dropped ({reconnects_per_sec:.0}/s during the storms); missed \
         messages expected {}, received {} ({missing} missing), duplicates {}, gaps {}; \
         {} received live by devices still connected",
        t.reconnected, t.dropped, t.expected, t.caught_up, t.duplicates, t.gaps, t.live
    );
    latency_line(&mut out, "connect->Welcome", &t.reconnect);
    latency_line(&mut out, "connect->caught up", &t.catch_up);
    latency_line(&mut out, "missed send->ack", &t.missed_ack);
    if !t.errors.is_empty() {
        let _ = writeln!(out, "  errors: {:?}", t.errors);
    }
    let (from, length) = window.unwrap_or_else(|| match t.span {
        Some((a, b)) => (a, b.saturating_duration_since(a)),
        None => (Instant::now(), Duration::ZERO),
    });
    Report::new(json, out)
        .with("reconnect", from, length, &t.reconnect)
        .with("catch_up", from, length, &t.catch_up)
}

/// Close a connection abruptly: `SO_LINGER` 0 makes the close send a TCP reset (no
/// WebSocket close frame, no FIN handshake, no TIME_WAIT on this side).
fn abort(mut conn: Connection) {
    let fd = conn.raw_stream().as_raw_fd();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a valid `linger` for the call's duration.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}
