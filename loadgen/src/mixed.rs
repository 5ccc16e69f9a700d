//! The `mixed` scenario: the other scenarios at once, in one process, on one timeline.
//!
//! Each part is set up in turn with its own users and connections (the sum must fit the
//! per-process connection budget), then all start together: a 1 s warm-up, then
//! `--duration` seconds measured.
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
use std::time::Duration;

use crate::report::Report;
use crate::{
    chat_report, chat_run, chat_setup, check_conns, cluster, groups, idle_run, idle_setup,
    sleep_until, storm, ChatOptions, Cli, CpuSample, IdleOptions, Result, Timeline, WARMUP,
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
    /// The server's pid, for its CPU time over the window (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
}

pub fn run(cli: &Cli, a: &Args) -> Result<Report> {
    let storming = a.storm_fraction > 0.0;
    let duration = Duration::from_secs(a.duration);
    let members = a.members.max(2);
    let conns = a.idle_conns
        + 2 * a.chat_pairs
        + a.groups * members
        + if storming { a.storm_conns + 1 } else { 0 };
    check_conns("the parts of `mixed`", conns)?;
    let idle = (a.idle_conns > 0)
        .then(|| {
            idle_setup(
                cli,
                IdleOptions {
                    conns: a.idle_conns,
                    users: a.idle_users.max(1),
                    server_pid: None,
                    ping_interval: Duration::from_millis(a.ping_interval_ms),
                    ping_threads: a.ping_threads.max(1),
                },
            )
        })
        .transpose()?;
    let chat_o = ChatOptions {
        pairs: a.chat_pairs,
        rate: a.chat_rate.max(1),
        window: 16,
        duration,
        body: a.body.max(8),
        placement: cluster::Placement::Any,
        owner: cluster::Owner::Any,
    };
    let chat = (a.chat_pairs > 0)
        .then(|| chat_setup(cli, chat_o))
        .transpose()?;
    let groups_o = groups::Options {
        name: "groups",
        groups: a.groups,
        members,
        rate: a.group_rate.max(1),
        duration,
        body: a.body.max(8),
        threads: a.group_threads.max(1),
    };
    let groups = (a.groups > 0)
        .then(|| groups::setup(cli, groups_o))
        .transpose()?;
    let storm_o = storm::Options {
        conns: a.storm_conns,
        users: a.storm_users,
        fraction: if storming { a.storm_fraction } else { 1.0 },
        missed: a.storm_missed,
        connect_rate: 0,
        connect_threads: a.storm_connect_threads,
        round_timeout: Duration::from_secs(30),
        settle: Duration::from_millis(500),
    }
    .checked()?;
    let storm = storming.then(|| storm::setup(cli, storm_o)).transpose()?;

    let t = Timeline::start(duration);
    let idle = idle.map(|s| std::thread::spawn(move || idle_run(s, t)));
    let chat = chat.map(|s| std::thread::spawn(move || chat_run(s, t)));
    let groups = groups.map(|s| std::thread::spawn(move || s.run(t)));
    let every = Duration::from_secs(a.storm_every_secs.max(1));
    let storm = storm.map(|s| std::thread::spawn(move || s.run_every(t, every)));
    sleep_until(t.measure_from);
    let cpu_before = CpuSample::take(a.server_pid);
    sleep_until(t.end);
    let cpu = CpuSample::take(a.server_pid).since(&cpu_before);

    let panicked = |part: &str| format!("the {part} part panicked");
    let idle = match idle {
        Some(h) => Some(h.join().map_err(|_| panicked("idle"))??),
        None => None,
    };
    let chat = match chat {
        Some(h) => {
            let totals = h.join().map_err(|_| panicked("chat"))??;
            Some(chat_report(&chat_o, &totals, t))
        }
        None => None,
    };
    let groups = match groups {
        Some(h) => {
            let totals = h.join().map_err(|_| panicked("groups"))??;
            Some(groups::report(&groups_o, &totals, t))
        }
        None => None,
    };
    let reconnect = match storm {
        Some(h) => {
            let totals = h.join().map_err(|_| panicked("reconnect"))??;
            Some(storm::report(
                &storm_o,
                totals,
                Some((t.measure_from, t.window())),
            ))
        }
        None => None,
    };

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
        a.duration,
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
    Ok(Report {
        json,
        human,
        histograms,
    })
}
