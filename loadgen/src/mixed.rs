//! The `mixed` scenario: the other scenarios at once, on one timeline.
//!
//! Each part is set up in turn with its own users and connections, then all start
//! together: a 1 s warm-up, then `--duration` seconds measured. In one process the sum
//! must fit the per-process connection budget; with `--workers W` (or automatically when
//! it does not fit) every part is split over W `mixed-worker` processes, each running all
//! the parts with its share (idle connections and users, chat pairs and their rate, whole
//! groups and their rate, storm users and their devices), on the coordinator's shared
//! timeline, so the storms of all workers hit at the same instants. Each worker reports
//! every part's totals; the coordinator merges them part by part, as `chat`, `groups`
//! and `reconnect-storm` merge their workers (`chat_fleet.rs`), and samples the server's
//! CPU over the window itself.
//!
//! - `idle`: `--idle-conns` connections over `--idle-users` users, each pinging every
//!   `--ping-interval-ms` (the `idle` scenario's heartbeat threads);
//! - `chat`: `--chat-pairs` 1:1 pairs at `--chat-rate` messages per second in all;
//! - `groups`: `--groups` groups of `--members` at `--group-rate` per second in all;
//! - `reconnect` (with `--storm-fraction` > 0): a population of its own,
//!   `--storm-conns` devices of `--storm-users` users, loses `--storm-fraction` of its
//!   connections every `--storm-every-secs` from the start of the window
//!   (`reconnect-storm`'s rounds, `--storm-missed` messages missed per user).
//!
//! Each part runs its own code (the scenario's setup and run functions, in its own
//! threads) and reports what the standalone scenario reports, as a section of one JSON
//! object: `{"idle": …, "chat": …, "groups": …, "reconnect": …}` (`null` for a part
//! switched off with a zero count). The idle part's server figures are not per part: the
//! server's CPU (with `--server-pid`) is given once, for everything.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::chat_fleet::{self, Fleet};
use crate::report::Report;
use crate::{
    chat_report, chat_run, chat_setup, check_conns, cluster, cpu_seconds, fleet, groups, idle_hold,
    idle_report, idle_setup, sleep_until, storm, ChatOptions, ChatSetup, ChatTotals, Cli, CpuRates,
    CpuSample, IdleOptions, IdleSetup, IdleTotals, Result, Timeline, CONNS_PER_PROCESS_MAX, WARMUP,
};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Idle connections (0: no idle part).
    #[arg(long, default_value_t = 1000)]
    idle_conns: usize,
    /// Users the idle connections belong to.
    #[arg(long, default_value_t = 100)]
    idle_users: usize,
    /// Each idle connection pings every this many ms (0: no pings).
    #[arg(long, default_value_t = 1000)]
    ping_interval_ms: u64,
    #[arg(long, default_value_t = 1)]
    ping_threads: usize,
    /// 1:1 pairs (0: no chat part).
    #[arg(long, default_value_t = 8)]
    chat_pairs: usize,
    /// Chat messages per second over all pairs (open loop).
    #[arg(long, default_value_t = 200)]
    chat_rate: u64,
    /// Groups (0: no groups part).
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Members per group, the sender included.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Group messages per second over all groups (open loop).
    #[arg(long, default_value_t = 50)]
    group_rate: u64,
    /// Threads reading the group members.
    #[arg(long, default_value_t = 1)]
    group_threads: usize,
    /// Message body bytes (chat and groups; at least 8).
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Fraction of the storm population dropped in each storm (0: no storms).
    #[arg(long, default_value_t = 0.0)]
    storm_fraction: f64,
    /// Seconds between the starts of two storms.
    #[arg(long, default_value_t = 5)]
    storm_every_secs: u64,
    /// Devices of the storm population (one connection each).
    #[arg(long, default_value_t = 200)]
    storm_conns: usize,
    #[arg(long, default_value_t = 20)]
    storm_users: usize,
    /// Messages sent to each user that lost a device, per storm.
    #[arg(long, default_value_t = 5)]
    storm_missed: usize,
    #[arg(long, default_value_t = 4)]
    storm_connect_threads: usize,
    /// The servers' pids (comma-separated or repeated), for their CPU time over the
    /// window (from /proc), summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
}

/// Each part's options (`None`: the part is off).
struct Plan {
    idle: Option<IdleOptions>,
    chat: Option<ChatOptions>,
    groups: Option<groups::Options>,
    storm: Option<storm::Options>,
    every: Duration,
    duration: Duration,
    /// Connections over all parts.
    conns: usize,
}

impl Args {
    fn plan(&self) -> Result<Plan> {
        let duration = Duration::from_secs(self.duration);
        let members = self.members.max(2);
        let storming = self.storm_fraction > 0.0 && self.storm_conns > 0;
        let storm = storming
            .then(|| {
                storm::Options {
                    conns: self.storm_conns,
                    users: self.storm_users,
                    fraction: self.storm_fraction,
                    missed: self.storm_missed,
                    connect_rate: 0,
                    connect_threads: self.storm_connect_threads,
                    round_timeout: Duration::from_secs(30),
                    settle: Duration::from_millis(500),
                }
                .checked()
            })
            .transpose()?;
        Ok(Plan {
            idle: (self.idle_conns > 0).then(|| IdleOptions {
                conns: self.idle_conns,
                users: self.idle_users.max(1),
                server_pid: None,
                ping_interval: Duration::from_millis(self.ping_interval_ms),
                ping_threads: self.ping_threads.max(1),
            }),
            chat: (self.chat_pairs > 0).then(|| ChatOptions {
                pairs: self.chat_pairs,
                rate: self.chat_rate.max(1),
                window: 16,
                duration,
                body: self.body.max(8),
                placement: cluster::Placement::Any,
                owner: cluster::Owner::Any,
            }),
            groups: (self.groups > 0).then(|| groups::Options {
                name: "groups",
                groups: self.groups,
                members,
                rate: self.group_rate.max(1),
                duration,
                body: self.body.max(8),
                threads: self.group_threads.max(1),
            }),
            // The storm's sender is one more connection.
            conns: self.idle_conns
                + 2 * self.chat_pairs
                + self.groups * members
                + storm.map_or(0, |s| s.conns + 1),
            storm,
            every: Duration::from_secs(self.storm_every_secs.max(1)),
            duration,
        })
    }

    /// The `mixed-worker` command line of worker `w` of `workers`: its share of every
    /// part (rates in proportion to pairs and groups; storm devices in proportion to
    /// the storm users, so every worker's users keep at least one device each).
    fn worker_args(&self, w: usize, workers: usize) -> Vec<String> {
        let share = |total: usize| fleet::share(total, workers, w);
        let (_, idle_conns) = share(self.idle_conns);
        let (_, idle_users) = share(self.idle_users);
        let idle_users = if idle_conns > 0 { idle_users.max(1) } else { 0 };
        let (first_pair, chat_pairs) = share(self.chat_pairs);
        let chat_rate =
            chat_fleet::rate_share(self.chat_rate, self.chat_pairs, first_pair, chat_pairs);
        let (first_group, groups) = share(self.groups);
        let group_rate = chat_fleet::rate_share(self.group_rate, self.groups, first_group, groups);
        let (first_user, storm_users) = share(self.storm_users);
        let storm_conns = chat_fleet::rate_share(
            self.storm_conns as u64,
            self.storm_users,
            first_user,
            storm_users,
        ) as usize;
        let storm_fraction = if storm_users > 0 {
            self.storm_fraction
        } else {
            0.0
        };
        let mut args = vec!["mixed-worker".to_string()];
        for (flag, value) in [
            ("--duration", self.duration.to_string()),
            ("--idle-conns", idle_conns.to_string()),
            ("--idle-users", idle_users.to_string()),
            ("--ping-interval-ms", self.ping_interval_ms.to_string()),
            ("--ping-threads", self.ping_threads.to_string()),
            ("--chat-pairs", chat_pairs.to_string()),
            ("--chat-rate", chat_rate.max(1).to_string()),
            ("--groups", groups.to_string()),
            ("--members", self.members.to_string()),
            ("--group-rate", group_rate.max(1).to_string()),
            ("--group-threads", self.group_threads.to_string()),
            ("--body", self.body.to_string()),
            ("--storm-fraction", storm_fraction.to_string()),
            ("--storm-every-secs", self.storm_every_secs.to_string()),
            ("--storm-conns", storm_conns.to_string()),
            ("--storm-users", storm_users.to_string()),
            ("--storm-missed", self.storm_missed.to_string()),
            (
                "--storm-connect-threads",
                self.storm_connect_threads.to_string(),
            ),
        ] {
            args.push(flag.to_string());
            args.push(value);
        }
        args
    }
}

/// Every part set up: connected, caught up, ready to start.
struct Setups {
    idle: Option<IdleSetup>,
    chat: Option<ChatSetup>,
    groups: Option<groups::Setup>,
    storm: Option<storm::Storm>,
}

fn setup(cli: &Cli, plan: &Plan) -> Result<Setups> {
    check_conns("the parts of `mixed`", plan.conns)?;
    Ok(Setups {
        idle: plan.idle.map(|o| idle_setup(cli, o)).transpose()?,
        chat: plan.chat.map(|o| chat_setup(cli, o)).transpose()?,
        groups: plan.groups.map(|o| groups::setup(cli, o)).transpose()?,
        storm: plan.storm.map(|o| storm::setup(cli, o)).transpose()?,
    })
}

/// What every part counted (`None`: off, or off in every worker).
struct Totals {
    idle: Option<IdleTotals>,
    chat: Option<ChatTotals>,
    groups: Option<groups::Totals>,
    reconnect: Option<storm::Totals>,
}

/// Run every part in its own threads on `t`; `during` runs meanwhile on this thread.
fn run_parts(s: Setups, t: Timeline, every: Duration, during: impl FnOnce()) -> Result<Totals> {
    let idle = s.idle.map(|s| std::thread::spawn(move || idle_hold(s, t)));
    let chat = s.chat.map(|s| std::thread::spawn(move || chat_run(s, t)));
    let groups = s.groups.map(|s| std::thread::spawn(move || s.run(t)));
    let storm = s
        .storm
        .map(|s| std::thread::spawn(move || s.run_every(t, every)));
    during();
    fn join<T>(part: &str, h: Option<std::thread::JoinHandle<Result<T>>>) -> Result<Option<T>> {
        h.map(|h| h.join().map_err(|_| format!("the {part} part panicked"))?)
            .transpose()
    }
    Ok(Totals {
        idle: join("idle", idle)?,
        chat: join("chat", chat)?,
        groups: join("groups", groups)?,
        reconnect: join("reconnect", storm)?,
    })
}

impl Totals {
    /// A worker's `result`: a section per part, `null` when off.
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "idle": self.idle.as_ref().map(IdleTotals::to_json),
            "chat": self.chat.as_ref().map(chat_fleet::totals_json),
            "groups": self.groups.as_ref().map(groups::totals_json),
            "reconnect": self.reconnect.as_ref().map(storm::totals_json),
        })
    }

    fn from_json(text: &str) -> Result<Totals> {
        let v = chat_fleet::parse_result(text, "mixed")?;
        let part = |name: &str| Some(&v[name]).filter(|p| p.is_object());
        Ok(Totals {
            idle: part("idle").map(IdleTotals::from_json),
            chat: part("chat")
                .map(chat_fleet::totals_from_value)
                .transpose()?,
            groups: part("groups").map(groups::totals_from_value),
            reconnect: part("reconnect").map(storm::totals_from_value),
        })
    }

    fn merge(&mut self, other: Totals) {
        fn both<T>(into: &mut Option<T>, from: Option<T>, merge: impl Fn(&mut T, T)) {
            match (into.as_mut(), from) {
                (Some(all), Some(one)) => merge(all, one),
                (None, one) => *into = one,
                (Some(_), None) => {}
            }
        }
        both(&mut self.idle, other.idle, IdleTotals::merge);
        both(&mut self.chat, other.chat, chat_fleet::merge);
        both(&mut self.groups, other.groups, groups::merge);
        both(&mut self.reconnect, other.reconnect, storm::merge);
    }
}

/// Runs `mixed`: in this process, or over worker processes when `fleet` is given or
/// the connections do not fit in one process.
pub fn run(cli: &Cli, a: &Args, fleet: Option<Fleet>) -> Result<Report> {
    let plan = a.plan()?;
    let fleet = fleet.or_else(|| {
        (plan.conns > CONNS_PER_PROCESS_MAX).then(|| Fleet {
            workers: fleet::workers_for(plan.conns, 0),
            launchers: Vec::new(),
            worker_exe: None,
        })
    });
    if let Some(f) = fleet {
        return fleet_run(cli, a, &plan, f);
    }
    let setups = setup(cli, &plan)?;
    let t = Timeline::start(plan.duration);
    let mut cpu = None;
    let totals = run_parts(setups, t, plan.every, || {
        cpu = Some(sample_cpu(&a.server_pid, t))
    })?;
    Ok(report(&plan, totals, t, cpu))
}

/// The servers' (summed) and this process's CPU over `t`'s measured window (sleeps
/// through it).
fn sample_cpu(server_pids: &[u32], t: Timeline) -> CpuRates {
    let take = || CpuSample {
        at: Instant::now(),
        server: (!server_pids.is_empty())
            .then(|| {
                server_pids
                    .iter()
                    .map(|p| cpu_seconds(&p.to_string()))
                    .sum::<Option<f64>>()
            })
            .flatten(),
        own: cpu_seconds("self"),
    };
    sleep_until(t.measure_from);
    let before = take();
    sleep_until(t.end);
    take().since(&before)
}

fn fleet_run(cli: &Cli, a: &Args, plan: &Plan, f: Fleet) -> Result<Report> {
    let workers = f.workers.max(1);
    let shares = (0..workers).map(|w| a.worker_args(w, workers)).collect();
    let mut cpu = None;
    let results = chat_fleet::run_workers(cli, &f, shares, plan.conns, plan.duration, |t| {
        cpu = Some(sample_cpu(&a.server_pid, t))
    })?;
    let mut totals = chat_fleet::merge_results(&results.lines, Totals::from_json, Totals::merge)?;
    if let Some(r) = &mut totals.reconnect {
        r.sum_storm_time();
    }
    let mut report = report(plan, totals, results.timeline, cpu);
    chat_fleet::label(&mut report, workers, &results.lines);
    Ok(report)
}

/// One `mixed-worker` process: set up its share of every part, then run them all on
/// the coordinator's timeline.
pub fn worker(cli: &Cli, a: &Args) -> Result<()> {
    let started = Instant::now();
    let plan = a.plan()?;
    let setups = setup(cli, &plan)?;
    chat_fleet::serve_worker(plan.conns, started, |t| {
        run_parts(setups, t, plan.every, || ()).map(|totals| totals.to_json())
    })
}

fn report(plan: &Plan, totals: Totals, t: Timeline, cpu: Option<CpuRates>) -> Report {
    let (conns, duration) = (plan.conns, plan.duration);
    let cpu = cpu.unwrap_or(CpuRates {
        server: None,
        own: None,
    });
    // A part on in the plan but missing from every worker would be a bug of the split;
    // it shows as `null` rather than as made-up figures.
    let idle = totals.idle.map(|i| idle_report(&i, t));
    let chat = plan
        .chat
        .as_ref()
        .zip(totals.chat)
        .map(|(o, c)| chat_report(o, &c, t));
    let groups = plan
        .groups
        .as_ref()
        .zip(totals.groups)
        .map(|(o, g)| groups::report(o, &g, t));
    let reconnect = plan
        .storm
        .as_ref()
        .zip(totals.reconnect)
        .map(|(o, r)| storm::report(o, r, Some((t.measure_from, t.window()))));

    let mut json = serde_json::json!({
        "scenario": "mixed",
        "seconds": duration.as_secs_f64(),
        "warmup_seconds": WARMUP.as_secs_f64(),
        "connections": conns,
        "server_cpu_per_sec": cpu.server,
        "loadgen_cpu_per_sec": cpu.own,
    });
    let mut human = String::new();
    let _ = writeln!(
        human,
        "mixed: {conns} connections, {} s measured after a 1 s warm-up{}",
        duration.as_secs(),
        match cpu.server {
            Some(c) => format!("; server CPU {c:.3} s/s"),
            None => String::new(),
        }
    );
    let mut histograms = Vec::new();
    for (name, part) in [
        ("idle", idle),
        ("chat", chat),
        ("groups", groups),
        ("reconnect", reconnect),
    ] {
        let Some(part) = part else {
            json[name] = serde_json::Value::Null;
            let _ = writeln!(human, "  {name}: off");
            continue;
        };
        json[name] = part.json;
        for line in part.human.lines() {
            let _ = writeln!(human, "  {line}");
        }
        for mut h in part.histograms {
            h.tag = format!("{name}.{}", h.tag);
            histograms.push(h);
        }
    }
    Report {
        json,
        human,
        histograms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        args: Args,
    }

    fn parse(words: &[String]) -> Args {
        Line::try_parse_from(std::iter::once("mixed").chain(words.iter().map(String::as_str)))
            .map(|l| l.args)
            .unwrap()
    }

    #[test]
    fn worker_shares_add_up_to_every_part_and_parse_back() {
        let whole = parse(
            &"--idle-conns 1001 --idle-users 2 --chat-pairs 5 --chat-rate 1000 --groups 4 \
              --members 3 --group-rate 90 --storm-fraction 0.5 --storm-conns 50 --storm-users 7"
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        );
        let workers = 3;
        let shares: Vec<Args> = (0..workers)
            .map(|w| {
                let line = whole.worker_args(w, workers);
                assert_eq!(line[0], "mixed-worker");
                parse(&line[1..])
            })
            .collect();
        let sum = |f: fn(&Args) -> usize| shares.iter().map(f).sum::<usize>();
        assert_eq!(sum(|a| a.idle_conns), 1001);
        assert_eq!(sum(|a| a.chat_pairs), 5);
        assert_eq!(sum(|a| a.chat_rate as usize), 1000);
        assert_eq!(sum(|a| a.groups), 4);
        assert_eq!(sum(|a| a.group_rate as usize), 90);
        assert_eq!(sum(|a| a.storm_users), 7);
        assert_eq!(sum(|a| a.storm_conns), 50);
        for a in &shares {
            // Two idle users over three workers: the one with none still gets a user.
            assert!(a.idle_conns == 0 || a.idle_users >= 1);
            assert!(
                a.storm_conns >= a.storm_users,
                "every storm user has a device"
            );
            assert_eq!(a.members, 3);
        }
        let plans: Vec<Plan> = shares.iter().map(|a| a.plan().unwrap()).collect();
        assert_eq!(
            plans.iter().map(|p| p.conns).sum::<usize>(),
            whole.plan().unwrap().conns + workers - 1,
            "the same connections, plus a storm sender per extra worker"
        );
    }
}
