//! `loadgen`: load generator for Confab (a client of `wire` only).
//!
//! Scenarios (one process unless said otherwise; connections are files, and one process
//! holds at most ~18,000 of them under the 20,000 open-files limit):
//!
//! - `chat`: `--pairs` 1:1 conversations; each sender sends at `--rate / pairs` per second
//!   in an **open loop** (sends are scheduled on a fixed timeline and latency is measured
//!   from the *scheduled* time, so a stalled server is charged for the sends it delayed:
//!   coordinated-omission correction as in wrk2), or with `--rate 0` in a closed loop
//!   with `--window` sends outstanding per sender (the maximum rate). Each body carries its
//!   scheduled send time; the receiver records send→deliver, the sender send→ack. One
//!   epoll thread sends for every pair (`senders.rs`) and one per route reads the
//!   receivers (`groups::read_members`), so the load generator costs little CPU on the
//!   host it shares with the server; its own send lateness is reported beside the
//!   latencies, and each receiver's sequences are checked for gaps and repeats.
//!   Against a cluster, `--placement same-node|cross-node` chooses users by their home
//!   node and `--owner` by the node owning their conversation (see `cluster.rs`); every
//!   session connects to its user's home node, and the figures are also given per route
//!   (how many node links a message crosses).
//!   With `--workers W` (and `--worker-via`, as for `idle`) the pairs and the rate are
//!   split over W worker processes on one shared timeline and their histograms merged
//!   (`chat_fleet.rs`).
//! - `groups`: fan-out. `--groups` groups of `--members` users each (one connection per
//!   member; a group's first member is its sender), `--rate` messages per second in all,
//!   spread evenly over the groups, open loop as in `chat`. One thread sends for every
//!   group; `--threads` threads read all members with epoll and send coalesced Delivered
//!   receipts. Deliveries (expected: sent × (members − 1)) and their rate, send→each
//!   member, send→last member and send→ack latency (see `groups.rs`). `group` is the
//!   one-group case (`--members`, `--rate`). `--workers W` runs whole groups in W worker
//!   processes (a group's members stay in one process) and merges their totals.
//! - `reconnect-storm`: `--conns` devices (one login, so one device, per connection) of
//!   `--users` users, each user in a 1:1 conversation with one sender. Each of `--rounds`
//!   rounds drops `--fraction` of the connections abruptly (a TCP reset, no close frame),
//!   has the sender send `--missed` durable messages to every user that lost a device,
//!   then reconnects the dropped devices with their tokens (as fast as possible or at
//!   `--connect-rate`) and reads until each has caught up: connect→Welcome and
//!   connect→last missed message latency, reconnects per second, messages expected and
//!   received, duplicates and gaps (see `storm.rs`).
//!   `--workers W` splits the users over W processes (a sender each); round r starts in
//!   all of them at the same instant, every `--every-secs`, and the totals are merged.
//! - `idle`: opens `--conns` authenticated connections (spread over `--users` users),
//!   holds them for `--duration` seconds, and reports the server's resident memory per
//!   connection (from `/proc/<--server-pid>/status`) and its CPU time over that window
//!   (`/proc/<pid>/stat`). With `--ping-interval-ms P` every connection also sends a wire
//!   `Ping` every P ms (spread evenly over the connections; one epoll thread by default,
//!   see `heartbeat.rs`) after a 1 s warm-up: pings and pongs per second, and the server
//!   CPU a heartbeat costs, scaled to 100K connections pinging every 30 s. More than
//!   18,000 connections (or `--workers`) run in worker processes (`fleet.rs`).
//! - `presence`: `--targets` users toggle Away/Online at `--toggle-rate` per second in
//!   total while `--subscribers` users, subscribed to all of them, count the
//!   `PresenceUpdate` pushes (the fan-out rate) and the toggle→entry latency (see
//!   `presence.rs`).
//! - `mixed`: the above at once on one timeline (a 1 s warm-up, then `--duration` s): an
//!   idle population with heartbeats, 1:1 chat, groups, and optionally a reconnect storm
//!   every `--storm-every-secs` on a population of its own (see `mixed.rs`). With
//!   `--workers W` (automatic past 18,000 connections) every part is split over W worker
//!   processes and merged part by part.
//!
//! Output: a human summary, or one JSON object with `--json` (`mixed`: one object with a
//! section per part). `--hdr-log FILE` also writes every latency histogram of the run
//! (µs) to FILE in HdrHistogram's interval log format, one entry per histogram tagged
//! with its name (`report.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};

mod chat_fleet;
mod cluster;
mod epoll;
mod fleet;
mod groups;
mod heartbeat;
mod mixed;
mod presence;
mod report;
mod senders;
mod storm;

use hdrhistogram::Histogram;
use report::{latency, latency_line, Report};
use senders::Pace;
use wire::client::http::{self, Login};
use wire::client::{new_key, sync_until_live, ClientError, Connection, Transport};
use wire::message::{Body, MessageKind, Send, StoredMessage};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Confab load generator")]
struct Cli {
    /// Server HTTP address (accounts API and WebSocket).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Server raw-TCP address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    tcp: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    transport: Proto,
    /// Local addresses the connections bind to, round robin (workers get the same list):
    /// `127.0.0.2-127.0.0.17` or `127.0.0.2,127.0.0.3`. The kernel allows ~64K
    /// connections per (source address, server address) pair, so one server address
    /// taking more than that from this host needs several. Default: the kernel's choice.
    #[arg(long, value_parser = parse_source_addrs, value_name = "ADDRS")]
    source_addrs: Option<SourceAddrs>,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Also write every latency histogram of the run (µs) to this file, in HdrHistogram's
    /// interval log format (one entry per histogram, tagged with its name).
    #[arg(long, global = true, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Ws,
    WsJson,
}

/// Worker processes for `chat`, `groups`, `reconnect-storm` and `mixed` (`chat_fleet.rs`).
#[derive(clap::Args)]
struct FleetArgs {
    /// Worker processes running the scenario, each its share (pairs; whole groups, so a
    /// group's members stay in one process; users with a sender each; in `mixed`, a
    /// share of every part) and its share of the rate, on one shared timeline; their
    /// histograms are merged. Default: all in this process (`mixed`: as many as its
    /// connections need).
    #[arg(long)]
    workers: Option<usize>,
    /// Start the workers through this command, round robin (see `idle`).
    #[arg(long)]
    worker_via: Vec<String>,
    /// The loadgen binary the workers run; default: this executable's path.
    #[arg(long)]
    worker_exe: Option<PathBuf>,
}

impl FleetArgs {
    /// `Some` when --workers was given.
    fn fleet(&self) -> Option<chat_fleet::Fleet> {
        self.workers.map(|workers| chat_fleet::Fleet {
            workers,
            launchers: self.worker_via.clone(),
            worker_exe: self.worker_exe.clone(),
        })
    }
}

/// The options of `chat` (and of its workers).
#[derive(clap::Args, Clone, Copy)]
struct ChatArgs {
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Total messages per second over all pairs; 0 = closed loop (maximum rate).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Closed loop: sends outstanding per sender.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Message body bytes (at least 8: the scheduled send time).
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Where the users live in a cluster: `same-node` puts senders and recipients on
    /// the node of `--http`, `cross-node` senders there and recipients on another
    /// node (names are chosen with `/v1/discover`). Sessions connect to their home.
    #[arg(long, value_enum, default_value_t = cluster::Placement::Any)]
    placement: cluster::Placement,
    /// Which node owns each pair's conversation (log and sequence): the sender's
    /// home, the recipient's, neither, or any.
    #[arg(long, value_enum, default_value_t = cluster::Owner::Any)]
    owner: cluster::Owner,
}

impl ChatArgs {
    fn options(&self) -> ChatOptions {
        ChatOptions {
            pairs: self.pairs.max(1),
            rate: self.rate,
            window: self.window.max(1),
            duration: Duration::from_secs(self.duration),
            body: self.body.max(8),
            placement: self.placement,
            owner: self.owner,
        }
    }
}

/// The options of `groups` (and of its workers).
#[derive(clap::Args, Clone, Copy)]
struct GroupsArgs {
    /// Number of groups (each with its own members and one sender).
    #[arg(long, default_value_t = 10)]
    groups: usize,
    /// Group size, the sender included (each member is one connection).
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Messages per second over all groups (open loop, spread evenly).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Message body bytes (at least 8: the scheduled send time).
    #[arg(long, default_value_t = 64)]
    body: usize,
    /// Threads reading the members' connections (epoll).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl GroupsArgs {
    fn options(&self) -> groups::Options {
        groups::Options {
            name: "groups",
            groups: self.groups.max(1),
            members: self.members.max(2),
            rate: self.rate.max(1),
            duration: Duration::from_secs(self.duration),
            body: self.body.max(8),
            threads: self.threads.max(1),
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// 1:1 pairs at a fixed total rate (open loop) or as fast as possible (--rate 0).
    Chat {
        #[command(flatten)]
        args: ChatArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One worker process of `chat --workers` (started by the coordinator).
    #[command(hide = true)]
    ChatWorker {
        #[command(flatten)]
        args: ChatArgs,
    },
    /// Fan-out to G groups of M online members: deliveries per second, send→each member,
    /// send→last member and send→ack latency.
    Groups {
        #[command(flatten)]
        args: GroupsArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One worker process of `groups --workers` (started by the coordinator).
    #[command(hide = true)]
    GroupsWorker {
        #[command(flatten)]
        args: GroupsArgs,
    },
    /// One sender to one group of `--members` online members (`groups --groups 1`).
    Group {
        /// Group size, the sender included (each member is one connection).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Messages per second from the sender (open loop).
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Seconds of measured load (after a 1 s warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Message body bytes (at least 8: the scheduled send time).
        #[arg(long, default_value_t = 64)]
        body: usize,
        /// Threads reading the members' connections (epoll).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Drop a fraction of the connections abruptly, send them messages while they are
    /// away, reconnect them all at once: reconnect and catch-up latency, duplicates, gaps.
    ReconnectStorm {
        #[command(flatten)]
        storm: storm::Args,
        /// Storm rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// With --workers: a round starts in every worker every this many seconds (it
        /// must have caught everyone up by then, or the next starts late).
        #[arg(long, default_value_t = 10)]
        every_secs: u64,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One worker process of `reconnect-storm --workers` (started by the coordinator).
    #[command(hide = true)]
    StormWorker {
        #[command(flatten)]
        storm: storm::Args,
        /// Seconds between round starts (the coordinator's window sets how many).
        #[arg(long)]
        every_secs: u64,
    },
    /// Hold authenticated idle connections: server memory per connection, server CPU,
    /// and with --ping-interval-ms the cost of application heartbeats.
    Idle {
        /// Connections to open and hold.
        #[arg(long, visible_alias = "connections", default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// The server's pid (several, comma-separated, for the nodes of a cluster), to
        /// read resident memory and CPU time from /proc.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        /// A server's HTTP address (several, comma-separated): read its resident memory
        /// and CPU time from its `/metrics` (`process_resident_memory_bytes`,
        /// `process_cpu_seconds_total`), for servers on other hosts. Adds to
        /// --server-pid; runs the coordinator (fleet.rs).
        #[arg(long, value_delimiter = ',')]
        server_metrics: Vec<SocketAddr>,
        /// Start worker processes through this command (repeat it for several hosts;
        /// workers go to them round robin), e.g. `--worker-via "ssh lg1"`: the worker's
        /// command line is appended and run by `sh -c`. The plan goes over the worker's
        /// stdin, so nothing but the binary needs to exist on the other host.
        #[arg(long)]
        worker_via: Vec<String>,
        /// The loadgen binary the workers run (where --worker-via starts them); default:
        /// this executable's path.
        #[arg(long)]
        worker_exe: Option<PathBuf>,
        /// Seconds of the measurement window: from the last connection opened (with
        /// pings, after a 1 s warm-up of pinging).
        #[arg(long, visible_alias = "hold", default_value_t = 3)]
        duration: u64,
        /// Each connection sends a wire Ping every this many ms, spread evenly in time
        /// over the connections, and reads the Pongs; 0 = no pings.
        #[arg(long, default_value_t = 0)]
        ping_interval_ms: u64,
        /// Threads sending the pings and reading the pongs (each polls its share of the
        /// connections with epoll).
        #[arg(long, default_value_t = 1)]
        ping_threads: usize,
        /// Worker processes holding the connections (each under the open-files limit;
        /// see fleet.rs). Default: in this process up to 18,000 connections, else
        /// enough workers for 18,000 each.
        #[arg(long)]
        workers: Option<usize>,
        /// Connections opened per second over all workers; 0 = as fast as they go.
        #[arg(long, default_value_t = 0)]
        connect_rate: u64,
        /// Nodes in the cluster: with workers, users are chosen so that each node is home
        /// to the same number of them (and holds the same share of the connections).
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// One worker process of `idle --workers` (started by the coordinator).
    #[command(hide = true)]
    IdleWorker {
        /// Where the plan comes from: a file, or `-` for stdin (ending with a line `end`).
        #[arg(long)]
        plan: std::path::PathBuf,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        total: usize,
        #[arg(long, default_value_t = 0)]
        ping_interval_ms: u64,
        #[arg(long, default_value_t = 0)]
        connect_rate: u64,
    },
    /// Targets toggle Away/Online; subscribers count PresenceUpdate pushes (the
    /// presence fan-out rate) and the toggle→entry latency.
    Presence {
        /// Users whose status changes (each one connection).
        #[arg(long, default_value_t = 10)]
        targets: usize,
        /// Users subscribed to every target (each one connection).
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Status changes per second over all targets, round robin (each target
        /// alternates Away, Online, Away...).
        #[arg(long, default_value_t = 100)]
        toggle_rate: u64,
        /// Seconds of measured load (after a 1 s warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds to keep reading after the last toggle (the server coalesces updates).
        #[arg(long, default_value_t = 3)]
        drain: u64,
        /// Threads reading the subscribers' connections (epoll).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Idle connections with heartbeats, 1:1 chat, groups and (optionally) periodic
    /// reconnect storms at once, for --duration seconds: each part's figures.
    Mixed {
        #[command(flatten)]
        args: mixed::Args,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// One worker process of `mixed --workers` (started by the coordinator).
    #[command(hide = true)]
    MixedWorker {
        #[command(flatten)]
        args: mixed::Args,
    },
}

const PASSWORD: &str = "loadgen password";
/// Connections one process holds at most: under the 20,000 open-files limit with room
/// for its other descriptors.
const CONNS_PER_PROCESS_MAX: usize = fleet::WORKER_CONNS_MAX;
/// The warm-up before every measured window.
const WARMUP: Duration = Duration::from_secs(1);
/// How long `chat` waits after the last send for the acks and deliveries in flight.
const DELIVERY_GRACE: Duration = Duration::from_secs(3);
/// Threads registering, logging in and connecting users during setup (the server's
/// password hashing is the cost).
const SETUP_THREADS: usize = 8;

fn main() {
    let cli = Cli::parse();
    raise_fd_limit();
    if let Some(sources) = &cli.source_addrs {
        wire::client::set_source_addresses(sources.0.clone());
    }
    let started = SystemTime::now();
    let result = run(&cli);
    let result = result.and_then(|report| {
        if let Some(report) = &report {
            report.print(cli.json);
        }
        match (&cli.hdr_log, report) {
            (Some(path), Some(report)) => {
                let scenario = report.json["scenario"].as_str().unwrap_or("run");
                report::write_hdr_log(path, scenario, started, &report.histograms)
            }
            // `presence` keeps its histograms to itself: an empty log says so.
            (Some(path), None) if matches!(cli.scenario, Scenario::Presence { .. }) => {
                report::write_hdr_log(path, "presence (no histograms logged)", started, &[])
            }
            _ => Ok(()),
        }
    });
    if let Err(error) = result {
        eprintln!("loadgen: {error}");
        std::process::exit(1);
    }
}

/// Run the scenario: its report, or `None` if it printed its own (presence, a worker).
fn run(cli: &Cli) -> Result<Option<Report>> {
    let worker = matches!(
        cli.scenario,
        Scenario::ChatWorker { .. }
            | Scenario::GroupsWorker { .. }
            | Scenario::StormWorker { .. }
            | Scenario::IdleWorker { .. }
            | Scenario::MixedWorker { .. }
    );
    report::IN_WORKER.store(worker, Ordering::Relaxed);
    let report = match cli.scenario {
        Scenario::Chat { args, ref fleet } => match fleet.fleet() {
            Some(fleet) => chat_fleet::run(cli, args, fleet)?,
            None => chat(cli, args.options())?,
        },
        Scenario::ChatWorker { args } => {
            chat_fleet::worker(cli, args.options()).inspect_err(|e| println!("error {e}"))?;
            return Ok(None);
        }
        Scenario::Groups { args, ref fleet } => match fleet.fleet() {
            Some(fleet) => groups::fleet_run(cli, args.options(), fleet)?,
            None => groups::run(cli, args.options())?,
        },
        Scenario::GroupsWorker { args } => {
            groups::worker(cli, args.options()).inspect_err(|e| println!("error {e}"))?;
            return Ok(None);
        }
        Scenario::Group {
            members,
            rate,
            duration,
            body,
            threads,
        } => groups::run(
            cli,
            groups::Options {
                name: "group",
                groups: 1,
                members: members.max(2),
                rate: rate.max(1),
                duration: Duration::from_secs(duration),
                body: body.max(8),
                threads: threads.max(1),
            },
        )?,
        Scenario::ReconnectStorm {
            ref storm,
            rounds,
            every_secs,
            ref fleet,
        } => match fleet.fleet() {
            Some(fleet) => {
                let every = Duration::from_secs(every_secs.max(1));
                storm::fleet_run(cli, storm, rounds.max(1), every, fleet)?
            }
            None => storm::run(cli, storm.options()?, rounds.max(1))?,
        },
        Scenario::StormWorker {
            ref storm,
            every_secs,
        } => {
            let every = Duration::from_secs(every_secs.max(1));
            storm::worker(cli, storm.options()?, every).inspect_err(|e| println!("error {e}"))?;
            return Ok(None);
        }
        Scenario::Idle {
            conns,
            users,
            ref server_pid,
            duration,
            ping_interval_ms,
            workers,
            connect_rate,
            nodes,
            ref server_metrics,
            ref worker_via,
            ref worker_exe,
            ..
        } if workers.is_some()
            || conns > fleet::WORKER_CONNS_MAX
            || server_pid.len() > 1
            || !server_metrics.is_empty()
            || !worker_via.is_empty() =>
        {
            fleet::run(
                cli,
                fleet::Options {
                    conns,
                    users: users.max(1),
                    workers: fleet::workers_for(conns, workers.unwrap_or(0)),
                    servers: fleet::Servers {
                        pids: server_pid.clone(),
                        metrics: server_metrics.clone(),
                    },
                    launchers: worker_via.clone(),
                    worker_exe: worker_exe.clone(),
                    window: Duration::from_secs(duration),
                    ping_interval: Duration::from_millis(ping_interval_ms),
                    connect_rate,
                    nodes: nodes.max(1),
                },
            )?
        }
        Scenario::Idle {
            conns,
            users,
            ref server_pid,
            duration,
            ping_interval_ms,
            ping_threads,
            ..
        } => {
            let o = IdleOptions {
                conns,
                users: users.max(1),
                server_pid: server_pid.first().copied(),
                ping_interval: Duration::from_millis(ping_interval_ms),
                ping_threads: ping_threads.max(1),
            };
            let setup = idle_setup(cli, o)?;
            let epoch = Instant::now();
            let warmup = if setup.o.ping_interval.is_zero() {
                Duration::ZERO
            } else {
                WARMUP
            };
            let t = Timeline::at(epoch, warmup, Duration::from_secs(duration));
            idle_report(&idle_hold(setup, t)?, t)
        }
        Scenario::IdleWorker {
            ref plan,
            first,
            count,
            total,
            ping_interval_ms,
            connect_rate,
        } => {
            fleet::worker(
                cli,
                fleet::WorkerOptions {
                    plan: plan.clone(),
                    first,
                    count,
                    total,
                    ping_interval: Duration::from_millis(ping_interval_ms),
                    connect_rate,
                },
            )
            .inspect_err(|e| println!("error {e}"))?;
            return Ok(None);
        }
        Scenario::Presence {
            targets,
            subscribers,
            toggle_rate,
            duration,
            drain,
            threads,
        } => {
            presence::run(
                cli,
                presence::Options {
                    targets: targets.max(1),
                    subscribers: subscribers.max(1),
                    rate: toggle_rate.max(1),
                    duration: Duration::from_secs(duration),
                    drain: Duration::from_secs(drain),
                    threads: threads.max(1),
                },
            )?;
            return Ok(None);
        }
        Scenario::Mixed {
            ref args,
            ref fleet,
        } => mixed::run(cli, args, fleet.fleet())?,
        Scenario::MixedWorker { ref args } => {
            mixed::worker(cli, args).inspect_err(|e| println!("error {e}"))?;
            return Ok(None);
        }
    };
    Ok(Some(report))
}

type Result<T> = std::result::Result<T, String>;

/// `--source-addrs`: the addresses, and the text they were given as (for workers).
#[derive(Clone, Debug)]
struct SourceAddrs(Vec<std::net::IpAddr>, String);

/// Most source addresses `--source-addrs` may name (a /16 of loopback).
const SOURCE_ADDRS_MAX: usize = 65_536;

/// `a.b.c.d-a.b.c.e` (IPv4, inclusive) or a comma-separated list, or both mixed.
fn parse_source_addrs(text: &str) -> std::result::Result<SourceAddrs, String> {
    use std::net::{IpAddr, Ipv4Addr};
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let bad = |s: &str| format!("{s:?} is not an IPv4 address");
                let first: Ipv4Addr = first.trim().parse().map_err(|_| bad(first))?;
                let last: Ipv4Addr = last.trim().parse().map_err(|_| bad(last))?;
                let (a, b) = (u32::from(first), u32::from(last));
                if b < a {
                    return Err(format!("range {part:?} runs backwards"));
                }
                if (b - a) as usize >= SOURCE_ADDRS_MAX {
                    return Err(format!(
                        "range {part:?} is over {SOURCE_ADDRS_MAX} addresses"
                    ));
                }
                addrs.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
            None => addrs.push(
                part.parse()
                    .map_err(|_| format!("{part:?} is not an IP address"))?,
            ),
        }
        if addrs.len() > SOURCE_ADDRS_MAX {
            return Err(format!("more than {SOURCE_ADDRS_MAX} source addresses"));
        }
    }
    if addrs.is_empty() {
        return Err("no source address given".to_string());
    }
    Ok(SourceAddrs(addrs, text.to_string()))
}

fn transport(cli: &Cli) -> (Transport, SocketAddr) {
    match cli.transport {
        Proto::Tcp => (Transport::Tcp, cli.tcp),
        Proto::Ws => (Transport::WsBinary, cli.http),
        Proto::WsJson => (Transport::WsJson, cli.http),
    }
}

/// A fresh user (random name prefix so runs never collide).
fn new_user(cli: &Cli, run: &str, role: &str, i: usize) -> Result<Login> {
    register_login(cli, &format!("lg{run}{role}{i}"))
}

/// Register `name` and log in, through `--http` (a cluster forwards to the home node).
fn register_login(cli: &Cli, name: &str) -> Result<Login> {
    let mut attempts = 0;
    retry_unavailable(|| {
        attempts += 1;
        match http::register(cli.http, name, PASSWORD) {
            // Our own earlier attempt landed (names are unique to the run).
            Err(ClientError::Api { status: 409, .. }) if attempts > 1 => Ok(0),
            other => other,
        }
    })
    .map_err(|e| format!("register {name}: {e}"))?;
    retry_unavailable(|| http::login(cli.http, name, PASSWORD, None, Some("loadgen")))
        .map_err(|e| format!("login {name}: {e}"))
}

/// How long a request answered 503 (a cluster node not reachable yet, as while the
/// nodes' links come up) is retried, and how often.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(10);
const UNAVAILABLE_RETRY_EVERY: Duration = Duration::from_millis(100);

/// `request`, retried while it answers 503 for up to [`UNAVAILABLE_FOR`].
fn retry_unavailable<T>(
    mut request: impl FnMut() -> std::result::Result<T, ClientError>,
) -> std::result::Result<T, ClientError> {
    let give_up = Instant::now() + UNAVAILABLE_FOR;
    loop {
        match request() {
            Err(ClientError::Api { status: 503, .. }) if Instant::now() < give_up => {
                std::thread::sleep(UNAVAILABLE_RETRY_EVERY);
            }
            other => return other,
        }
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits; `record` saturates only past that.
    // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, 3 digits ≤ 5).
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid constant histogram bounds")
}

/// `f(0..count)` on up to `threads` threads at a time; the results in index order, or
/// the first error.
fn in_parallel<T: std::marker::Send>(
    count: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.min(count).max(1);
    let per_thread = count.div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|n| {
                scope.spawn(move || {
                    (n * per_thread..((n + 1) * per_thread).min(count))
                        .map(f)
                        .collect::<Result<Vec<T>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for handle in handles {
            all.extend(handle.join().map_err(|_| "setup thread panicked")??);
        }
        Ok(all)
    })
}

/// Register, log in and connect `count` users (named `lg<run><role><i>`), several at a
/// time; in order. The catch-up after Welcome is read (a fresh user has none). In a
/// cluster each session follows the redirect to its user's home node.
fn connect_users(
    cli: &Cli,
    run: &str,
    role: &str,
    count: usize,
) -> Result<Vec<(Login, Connection)>> {
    let (transport, addr) = transport(cli);
    in_parallel(count, SETUP_THREADS, |i| {
        let login = new_user(cli, run, role, i)?;
        let (mut conn, _) = Connection::connect_following(addr, transport, &login.access_token)
            .map_err(|e| format!("{role} {i}: {e}"))?;
        sync_until_live(&mut conn, Duration::from_secs(10))
            .map_err(|e| format!("{role} {i}: {e}"))?;
        Ok((login, conn))
    })
}

/// Refuse a run that would hold more connections than one process may open.
fn check_conns(what: &str, conns: usize) -> Result<()> {
    if conns > CONNS_PER_PROCESS_MAX {
        return Err(format!(
            "{what} need {conns} connections, more than the {CONNS_PER_PROCESS_MAX} one \
             process may hold (the open-files limit here is 20,000 per process): spread it \
             over worker processes with --workers (idle, chat, groups, reconnect-storm, mixed) or \
             make it smaller"
        ));
    }
    Ok(())
}

/// When a run's load starts and its measured window lies.
#[derive(Clone, Copy)]
pub struct Timeline {
    /// Scheduled send times are nanoseconds after this.
    pub epoch: Instant,
    /// Sends scheduled from here...
    pub measure_from: Instant,
    /// ...to here are measured.
    pub end: Instant,
}

impl Timeline {
    /// `epoch`, then `warmup`, then `window` of measurement.
    fn at(epoch: Instant, warmup: Duration, window: Duration) -> Timeline {
        Timeline {
            epoch,
            measure_from: epoch + warmup,
            end: epoch + warmup + window,
        }
    }

    /// Starting now, with the standard warm-up.
    fn start(window: Duration) -> Timeline {
        Timeline::at(Instant::now(), WARMUP, window)
    }

    fn window(&self) -> Duration {
        self.end.saturating_duration_since(self.measure_from)
    }

    /// Whether a send scheduled `ns` after the epoch is inside the measured window.
    fn measured(&self, ns: u64) -> bool {
        let at = self.epoch + Duration::from_nanos(ns);
        at >= self.measure_from && at < self.end
    }
}

/// A chat `Send` into `conversation_id` whose body (`body.len()` ≥ 8 bytes) starts with
/// the scheduled send time, `scheduled_ns` after the epoch (little endian).
fn stamped_send(conversation_id: u64, body: &mut [u8], scheduled_ns: u64) -> Body {
    if let Some(stamp) = body.get_mut(..8) {
        stamp.copy_from_slice(&scheduled_ns.to_le_bytes());
    }
    Body::Send(Send {
        conversation_id,
        idempotency_key: new_key(),
        kind: MessageKind::Chat,
        body: body.to_vec(),
        media: None,
        reply_to_seq: 0,
    })
}

/// The messages a frame brings: one pushed (`Deliver`) or a catch-up batch.
fn messages_of(body: Body) -> Vec<StoredMessage> {
    match body {
        Body::Deliver(d) => vec![d.message],
        Body::SyncBatch(b) => b.messages,
        _ => Vec::new(),
    }
}

/// The scheduled send time a body made by [`stamped_send`] carries.
fn stamp_of(body: &[u8]) -> Option<u64> {
    body.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
}

/// Options of the `chat` scenario.
#[derive(Clone, Copy)]
struct ChatOptions {
    pairs: usize,
    /// Total messages per second; 0 = closed loop.
    rate: u64,
    window: usize,
    duration: Duration,
    body: usize,
    placement: cluster::Placement,
    owner: cluster::Owner,
}

/// Counts and latencies of a set of pairs.
struct ChatStats {
    pairs: usize,
    deliver: Histogram<u64>,
    ack: Histogram<u64>,
    /// The load generator's own send lateness (see `senders.rs`).
    late: Histogram<u64>,
    sent: u64,
    delivered: u64,
}

impl ChatStats {
    fn new() -> ChatStats {
        ChatStats {
            pairs: 0,
            deliver: histogram(),
            ack: histogram(),
            late: histogram(),
            sent: 0,
            delivered: 0,
        }
    }
}

struct ChatTotals {
    all: ChatStats,
    /// The same, per route between nodes (one entry on a single node: `local`).
    routes: std::collections::BTreeMap<cluster::Route, ChatStats>,
    /// Pairs whose sender and recipient have different home nodes.
    cross_node_pairs: usize,
    /// Sends including the warm-up (to relate server counters to messages).
    sent_with_warmup: u64,
    /// Deliveries repeated or out of order, and gaps (`groups::Seen`): must be 0.
    repeated: u64,
    gaps: u64,
    errors: HashMap<String, u64>,
}

/// The address of `home`'s node for `transport`, or the command line's on a single node.
fn session_addr(cli: &Cli, home: &cluster::Home) -> SocketAddr {
    let (_, default) = transport(cli);
    match cli.transport {
        Proto::Tcp => home.tcp.unwrap_or(default),
        Proto::Ws | Proto::WsJson => home.http.unwrap_or(default),
    }
}

/// Connect `login`'s session to its home node (following a redirect if the cluster map
/// moved since discover).
fn connect_home(cli: &Cli, home: &cluster::Home, login: &Login) -> Result<Connection> {
    let (transport, _) = transport(cli);
    let addr = session_addr(cli, home);
    let (conn, _) = Connection::connect_following(addr, transport, &login.access_token)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(conn)
}

/// One pair of the `chat` scenario, connected.
struct ChatPair {
    sender: Connection,
    receiver: Connection,
    conversation_id: u64,
    route: cluster::Route,
}

/// The pairs of a `chat` run, connected and with their conversations open.
struct ChatSetup {
    o: ChatOptions,
    pairs: Vec<ChatPair>,
    cross_node_pairs: usize,
}

fn chat(cli: &Cli, o: ChatOptions) -> Result<Report> {
    let setup = chat_setup(cli, o)?;
    let t = Timeline::start(o.duration);
    let totals = chat_run(setup, t)?;
    Ok(chat_report(&o, &totals, t))
}

fn chat_setup(cli: &Cli, o: ChatOptions) -> Result<ChatSetup> {
    let run = run_id();
    let plans = cluster::plan(cli.http, &format!("lg{run}"), o.pairs, o.placement, o.owner)?;
    let mut pairs = Vec::new();
    for plan in &plans {
        let sender = register_login(cli, &plan.sender.name)?;
        let receiver = register_login(cli, &plan.recipient.name)?;
        let mut conn = connect_home(cli, &plan.sender.home, &sender)?;
        sync_until_live(&mut conn, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let id = conn
            .open_direct(receiver.user_id)
            .map_err(|e| e.to_string())?
            .conversation_id;
        if id != plan.conversation_id
            || sender.user_id != plan.sender.home.user_id
            || receiver.user_id != plan.recipient.home.user_id
        {
            return Err(format!(
                "the server's ids differ from loadgen's (conversation {id} vs {}): \
                 loadgen's copy of router's hash is out of date",
                plan.conversation_id
            ));
        }
        pairs.push(ChatPair {
            sender: conn,
            receiver: connect_home(cli, &plan.recipient.home, &receiver)?,
            conversation_id: id,
            route: plan.route(),
        });
    }
    Ok(ChatSetup {
        o,
        pairs,
        cross_node_pairs: plans
            .iter()
            .filter(|p| p.sender.home.node != p.recipient.home.node)
            .count(),
    })
}

/// Run the pairs on `t`'s timeline (one epoll thread sends for every pair, one reads
/// the receivers of each route: `senders.rs`, `groups::read_members`); returns once the
/// senders have their answers and every measured send was delivered, or
/// [`DELIVERY_GRACE`] after the end.
fn chat_run(setup: ChatSetup, t: Timeline) -> Result<ChatTotals> {
    let o = setup.o;
    let pace = if o.rate == 0 {
        Pace::Closed { window: o.window }
    } else {
        Pace::Open {
            per_sender: o.rate as f64 / o.pairs as f64,
        }
    };
    let drain_until = t.end + DELIVERY_GRACE;
    let readers = groups::Readers::until(drain_until);
    let mut routes = Vec::new();
    let mut senders = Vec::new();
    let mut receivers: std::collections::BTreeMap<cluster::Route, Vec<(Connection, u64)>> =
        Default::default();
    for pair in setup.pairs {
        routes.push(pair.route);
        senders.push((pair.sender, pair.conversation_id));
        receivers
            .entry(pair.route)
            .or_default()
            .push((pair.receiver, pair.conversation_id));
    }
    let reading: Vec<_> = receivers
        .into_iter()
        .map(|(route, conns)| {
            let until = readers.clone();
            let thread = std::thread::spawn(move || groups::read_members(conns, t, until, false));
            (route, thread)
        })
        .collect();
    let body = o.body;
    let sending =
        std::thread::spawn(move || senders::send_all(senders, t, pace, body, drain_until));
    let live = report::live_line("chat", t, Some(readers.delivered.clone()));
    let mut totals = ChatTotals {
        all: ChatStats::new(),
        routes: Default::default(),
        cross_node_pairs: setup.cross_node_pairs,
        sent_with_warmup: 0,
        repeated: 0,
        gaps: 0,
        errors: HashMap::new(),
    };
    for route in &routes {
        totals
            .routes
            .entry(*route)
            .or_insert_with(ChatStats::new)
            .pairs += 1;
    }
    totals.all.pairs = routes.len();
    let sent_by_pair = sending.join().map_err(|_| "sender panicked")?;
    for (sent, route) in sent_by_pair.into_iter().zip(&routes) {
        totals.sent_with_warmup += sent.sent_with_warmup;
        for stats in [
            &mut totals.all,
            totals.routes.entry(*route).or_insert_with(ChatStats::new),
        ] {
            let _ = stats.ack.add(&sent.ack);
            let _ = stats.late.add(&sent.late);
            stats.sent += sent.sent;
        }
        report::merge_errors(&mut totals.errors, sent.errors);
    }
    // Deliveries in flight get until every measured send arrived (at most until
    // `drain_until`), then the readers stop.
    let sent = totals.all.sent;
    while readers.delivered.load(Ordering::Relaxed) < sent && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    readers.stop.store(true, Ordering::Relaxed);
    for (route, thread) in reading {
        let seen = thread.join().map_err(|_| "receiver panicked")?;
        for stats in [
            &mut totals.all,
            totals.routes.entry(route).or_insert_with(ChatStats::new),
        ] {
            let _ = stats.deliver.add(&seen.each);
            stats.delivered += seen.deliveries;
        }
        totals.repeated += seen.repeated;
        totals.gaps += seen.gaps;
        report::merge_errors(&mut totals.errors, seen.errors);
    }
    if let Some(live) = live {
        let _ = live.join();
    }
    Ok(totals)
}

fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

/// What one open- or closed-loop sender did (sends scheduled in the measured window).
struct Sent {
    /// Scheduled send → ack, µs.
    ack: Histogram<u64>,
    /// Scheduled send → the frame written (the load generator's own lateness), µs.
    late: Histogram<u64>,
    sent: u64,
    sent_with_warmup: u64,
    errors: HashMap<String, u64>,
}

impl Sent {
    fn new() -> Sent {
        Sent {
            ack: histogram(),
            late: histogram(),
            sent: 0,
            sent_with_warmup: 0,
            errors: HashMap::new(),
        }
    }

    fn merge(&mut self, other: Sent) {
        let _ = self.ack.add(&other.ack);
        let _ = self.late.add(&other.late);
        self.sent += other.sent;
        self.sent_with_warmup += other.sent_with_warmup;
        report::merge_errors(&mut self.errors, other.errors);
    }
}

/// Count the answer to a send scheduled at `scheduled`: an ack (its latency, if measured)
/// or an error (by code).
fn answered(out: &mut Sent, body: Body, scheduled: Instant, measure_from: Instant) {
    match body {
        Body::Ack(_) if scheduled >= measure_from => {
            let latency = Instant::now().saturating_duration_since(scheduled);
            let _ = out.ack.record(latency.as_micros() as u64);
        }
        Body::Ack(_) => {}
        Body::Error(e) => report::count(&mut out.errors, format!("send: {:?}", e.code)),
        _ => {}
    }
}

fn chat_report(o: &ChatOptions, t: &ChatTotals, timeline: Timeline) -> Report {
    let (pairs, rate, window, body) = (o.pairs, o.rate, o.window, o.body);
    let (placement, owner) = (o.placement.name(), o.owner.name());
    let secs = o.duration.as_secs_f64();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let a = &t.all;
    let routes: serde_json::Map<String, serde_json::Value> = t
        .routes
        .iter()
        .map(|(route, s)| {
            let v = serde_json::json!({
                "pairs": s.pairs,
                "deliver_hops": route.deliver_hops(),
                "ack_hops": route.ack_hops(),
                "sent": s.sent,
                "delivered": s.delivered,
                "deliver_us": {"p50": q(&s.deliver, 0.5), "p99": q(&s.deliver, 0.99)},
                "ack_us": {"p50": q(&s.ack, 0.5), "p99": q(&s.ack, 0.99)},
            });
            (route.name().to_string(), v)
        })
        .collect();
    let json = serde_json::json!({
        "scenario": "chat",
        "pairs": pairs,
        "placement": placement,
        "owner": owner,
        "cross_node_pairs": t.cross_node_pairs,
        "rate": rate,
        "window": window,
        "body": body,
        "seconds": secs,
        "sent": a.sent,
        "acked": a.ack.len(),
        "sent_with_warmup": t.sent_with_warmup,
        "delivered": a.delivered,
        "sent_per_sec": (a.sent as f64 / secs).round(),
        "delivered_per_sec": (a.delivered as f64 / secs).round(),
        "deliver_us": latency(&a.deliver),
        "ack_us": latency(&a.ack),
        "send_late_us": latency(&a.late),
        "repeated": t.repeated,
        "gaps": t.gaps,
        "routes": routes,
        "errors": t.errors,
    });
    let mut out = String::new();
    let mode = if rate == 0 {
        format!("closed loop, window {window}")
    } else {
        format!("open loop, {rate}/s")
    };
    let _ = writeln!(
        out,
        "chat: {pairs} pairs, {mode}, {body} B bodies, {secs:.0} s measured"
    );
    let _ = writeln!(
        out,
        "  placement {placement}, owner {owner}: {pairs} pairs, {} with sender and recipient on different nodes",
        t.cross_node_pairs
    );
    let _ = writeln!(
        out,
        "  sent {} ({:.0}/s), delivered {} ({:.0}/s)",
        a.sent,
        a.sent as f64 / secs,
        a.delivered,
        a.delivered as f64 / secs
    );
    report::order_line(&mut out, t.repeated, t.gaps);
    latency_line(&mut out, "send->deliver", &a.deliver);
    latency_line(&mut out, "send->ack", &a.ack);
    latency_line(&mut out, "send lateness", &a.late);
    let _ = writeln!(
        out,
        "  by route (node-link hops send->deliver / send->ack):"
    );
    for (route, s) in &t.routes {
        let _ = writeln!(
            out,
            "    {:18} {}/{} hops  {:3} pairs  delivered {:.0}/s  deliver µs p50 {} p99 {}  ack µs p50 {} p99 {}",
            route.name(),
            route.deliver_hops(),
            route.ack_hops(),
            s.pairs,
            s.delivered as f64 / secs,
            q(&s.deliver, 0.5),
            q(&s.deliver, 0.99),
            q(&s.ack, 0.5),
            q(&s.ack, 0.99)
        );
    }
    if !t.errors.is_empty() {
        let _ = writeln!(out, "  errors: {:?}", t.errors);
    }
    let window = timeline.window();
    Report::new(json, out)
        .with("deliver", timeline.measure_from, window, &a.deliver)
        .with("ack", timeline.measure_from, window, &a.ack)
}

/// Options of the in-process `idle` scenario.
#[derive(Clone, Copy)]
struct IdleOptions {
    conns: usize,
    users: usize,
    server_pid: Option<u32>,
    /// Zero: no pings.
    ping_interval: Duration,
    ping_threads: usize,
}

/// The connections of an in-process `idle` run, open and caught up.
struct IdleSetup {
    o: IdleOptions,
    open: Vec<Connection>,
    connect_secs: f64,
    rss_before: Option<u64>,
}

fn idle_setup(cli: &Cli, o: IdleOptions) -> Result<IdleSetup> {
    let run = run_id();
    let (transport, addr) = transport(cli);
    let logins: Vec<Login> = in_parallel(o.users, SETUP_THREADS, |i| new_user(cli, &run, "i", i))?;
    let rss_before = o.server_pid.and_then(rss_bytes);
    let started = Instant::now();
    let mut open = Vec::with_capacity(o.conns);
    // In a cluster a user's first session follows the redirect to its home node; the
    // rest go straight there.
    let mut homes: Vec<Option<SocketAddr>> = vec![None; o.users];
    for i in 0..o.conns {
        let login = &logins[i % o.users];
        let home = &mut homes[i % o.users];
        let (mut conn, _) =
            Connection::connect_following(home.unwrap_or(addr), transport, &login.access_token)
                .map_err(|e| format!("connection {i}: {e}"))?;
        *home = Some(conn.peer_addr());
        sync_until_live(&mut conn, Duration::from_secs(10))
            .map_err(|e| format!("connection {i}: {e}"))?;
        open.push(conn);
    }
    Ok(IdleSetup {
        o,
        open,
        connect_secs: started.elapsed().as_secs_f64(),
        rss_before,
    })
}

/// What an in-process `idle` run (or the idle part of `mixed`) counted.
struct IdleTotals {
    conns: usize,
    users: usize,
    ping_interval: Duration,
    ping_threads: usize,
    connect_secs: f64,
    pings: heartbeat::Totals,
    /// The server's RSS before the connections opened and at the end of the window.
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    cpu: CpuRates,
}

impl IdleTotals {
    /// The counts a `mixed` worker reports for its idle part (no server figures: the
    /// coordinator samples the server once for all parts).
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "conns": self.conns,
            "users": self.users,
            "ping_interval_ms": self.ping_interval.as_millis() as u64,
            "ping_threads": self.ping_threads,
            "connect_secs": self.connect_secs,
            "pings": self.pings.to_json(),
        })
    }

    fn from_json(v: &serde_json::Value) -> IdleTotals {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        IdleTotals {
            conns: n("conns") as usize,
            users: n("users") as usize,
            ping_interval: Duration::from_millis(n("ping_interval_ms")),
            ping_threads: n("ping_threads") as usize,
            connect_secs: v["connect_secs"].as_f64().unwrap_or(0.0),
            pings: heartbeat::Totals::from_json(&v["pings"]),
            rss_before: None,
            rss_after: None,
            cpu: CpuRates {
                server: None,
                own: None,
            },
        }
    }

    /// Two workers' idle parts as one: their connections opened side by side, so the
    /// connect time is the longer of the two.
    fn merge(&mut self, other: IdleTotals) {
        self.conns += other.conns;
        self.users += other.users;
        self.ping_threads += other.ping_threads;
        self.connect_secs = self.connect_secs.max(other.connect_secs);
        self.pings.merge(&other.pings);
    }
}

/// Hold (and ping) the connections over `t`'s window, sampling the server at its ends.
fn idle_hold(setup: IdleSetup, t: Timeline) -> Result<IdleTotals> {
    let IdleSetup {
        o,
        mut open,
        connect_secs,
        rss_before,
    } = setup;
    let (conns, users, server_pid) = (o.conns, o.users, o.server_pid);
    let (ping_interval, ping_threads) = (o.ping_interval, o.ping_threads);
    let pinging = !ping_interval.is_zero();
    let plan = heartbeat::Plan {
        epoch: t.epoch,
        measure_from: t.measure_from,
        end: t.end,
        interval: ping_interval,
        total: open.len(),
    };
    let mut workers = Vec::new();
    if pinging {
        let per_thread = open.len().div_ceil(ping_threads).max(1);
        let mut first = 0;
        while !open.is_empty() {
            let rest = open.split_off(per_thread.min(open.len()));
            let share = std::mem::replace(&mut open, rest);
            let len = share.len();
            workers.push(std::thread::spawn(move || {
                heartbeat::run(share, first, plan)
            }));
            first += len;
        }
    }
    sleep_until(plan.measure_from);
    let cpu_before = CpuSample::take(server_pid);
    sleep_until(plan.end);
    let cpu_after = CpuSample::take(server_pid);
    let rss_after = server_pid.and_then(rss_bytes);
    let mut pings = heartbeat::Totals::new();
    for worker in workers {
        let (totals, conns) = worker.join().map_err(|_| "heartbeat thread panicked")?;
        pings.merge(&totals);
        open.extend(conns);
    }
    if !pinging {
        pings.held = open.len();
    }
    drop(open);
    Ok(IdleTotals {
        conns,
        users,
        ping_interval,
        ping_threads,
        connect_secs,
        pings,
        rss_before,
        rss_after,
        cpu: cpu_after.since(&cpu_before),
    })
}

/// The report of an idle run over `t`'s window.
fn idle_report(totals: &IdleTotals, t: Timeline) -> Report {
    let IdleTotals {
        conns,
        users,
        ping_interval,
        ping_threads,
        connect_secs,
        ref pings,
        rss_before,
        rss_after,
        ref cpu,
    } = *totals;
    let pinging = !ping_interval.is_zero();
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / conns.max(1) as f64),
        _ => None,
    };
    let secs = t.window().as_secs_f64();
    let pings_per_sec = pings.sent as f64 / secs;
    let pongs_per_sec = pings.pongs as f64 / secs;
    // Server CPU-seconds per ping, scaled to 100K connections pinging every 30 s, as a
    // percentage of one core. Includes whatever else the server did in the window (an
    // idle server: nothing; run with --ping-interval-ms 0 for that baseline).
    let per_ping = cpu
        .server
        .filter(|_| pinging && pings_per_sec > 0.0)
        .map(|c| c / pings_per_sec);
    let pct_100k = per_ping.map(|p| p * (100_000.0 / 30.0) * 100.0);
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let errors: u64 = pings.errors.values().sum();
    let connect_per_sec = conns as f64 / connect_secs.max(1e-9);
    let json = serde_json::json!({
        "scenario": "idle",
        "conns": conns,
        "users": users,
        "connect_per_sec": connect_per_sec.round(),
        "server_rss_before": rss_before.unwrap_or(0),
        "server_rss_after": rss_after.unwrap_or(0),
        "server_bytes_per_conn": per_conn.map(f64::round),
        "ping_interval_ms": ping_interval.as_millis() as u64,
        "seconds": secs,
        "held": pings.held,
        "pings": pings.sent,
        "pongs": pings.pongs,
        "pings_per_sec": (pings_per_sec * 10.0).round() / 10.0,
        "pongs_per_sec": (pongs_per_sec * 10.0).round() / 10.0,
        "pong_us": latency(&pings.rtt),
        "ping_lag_max_us": pings.lag_max.as_micros() as u64,
        "other_frames": pings.other,
        "server_cpu_per_sec": cpu.server,
        "server_cpu_us_per_ping": per_ping.map(|p| p * 1e6),
        "server_core_pct_per_100k_at_30s": pct_100k,
        "loadgen_cpu_per_sec": cpu.own,
        "errors": pings.errors,
        "error_count": errors,
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "idle: {conns} authenticated connections over {users} users, {connect_per_sec:.0} connects/s"
    );
    match per_conn {
        Some(b) => {
            let _ = writeln!(
                out,
                "  server RSS {} -> {} KiB: {:.0} bytes ({:.2} KiB) per connection",
                rss_before.unwrap_or(0) / 1024,
                rss_after.unwrap_or(0) / 1024,
                b,
                b / 1024.0
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  server memory per connection: not measured (`idle --server-pid PID` measures it)"
            );
        }
    }
    if pinging {
        let _ = writeln!(
            out,
            "  heartbeat: a Ping every {} ms per connection, {ping_threads} thread(s), {secs:.0} s measured after 1 s warm-up",
            ping_interval.as_millis()
        );
        let _ = writeln!(
            out,
            "  held {} connections; pings {pings_per_sec:.1}/s, pongs {pongs_per_sec:.1}/s, other frames {}",
            pings.held, pings.other
        );
        let _ = writeln!(
            out,
            "  ping->pong  µs  p50 {}  p99 {}  max {}   (latest ping sent {} µs late)",
            q(&pings.rtt, 0.5),
            q(&pings.rtt, 0.99),
            pings.rtt.max(),
            pings.lag_max.as_micros()
        );
    } else {
        let _ = writeln!(
            out,
            "  held {} connections for {secs:.0} s, no pings",
            pings.held
        );
    }
    if let Some(server) = cpu.server {
        let _ = writeln!(
            out,
            "  server CPU {server:.4} s/s ({:.2}% of a core) over the window",
            server * 100.0
        );
    }
    if let (Some(per_ping), Some(pct)) = (per_ping, pct_100k) {
        let _ = writeln!(
            out,
            "  {:.2} µs server CPU per ping => 100K connections pinging every 30 s: {pct:.2}% of one core",
            per_ping * 1e6
        );
    }
    if let Some(own) = cpu.own {
        let _ = writeln!(
            out,
            "  loadgen CPU {own:.4} s/s ({:.2}% of a core)",
            own * 100.0
        );
    }
    if !pings.errors.is_empty() {
        let _ = writeln!(out, "  errors: {:?}", pings.errors);
    }
    Report::new(json, out).with("pong", t.measure_from, t.window(), &pings.rtt)
}

/// `value` with `digits` decimals, or JSON `null`.
fn json_num(value: Option<f64>, digits: usize) -> String {
    value.map_or("null".to_string(), |v| format!("{v:.digits$}"))
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// CPU time (user + system, all threads) of the server and of this process, at an instant.
struct CpuSample {
    at: Instant,
    server: Option<f64>,
    own: Option<f64>,
}

/// CPU-seconds per second between two samples.
struct CpuRates {
    server: Option<f64>,
    own: Option<f64>,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            own: cpu_seconds("self"),
        }
    }

    fn since(&self, before: &CpuSample) -> CpuRates {
        let secs = self.at.saturating_duration_since(before.at).as_secs_f64();
        let rate = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if secs > 0.0 => Some((a - b).max(0.0) / secs),
            _ => None,
        };
        CpuRates {
            server: rate(self.server, before.server),
            own: rate(self.own, before.own),
        }
    }
}

/// utime + stime of `/proc/<pid>/stat` (`pid` may be `self`), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is
    // field 3, utime 14, stime 15 (proc(5)).
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

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raise the soft open-files limit to the hard limit (connections are files).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_parse_as_ranges_and_lists() {
        let a = parse_source_addrs("127.0.0.2-127.0.0.4, 10.0.0.1").unwrap();
        let text: Vec<String> = a.0.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["127.0.0.2", "127.0.0.3", "127.0.0.4", "10.0.0.1"]);
        assert_eq!(a.1, "127.0.0.2-127.0.0.4, 10.0.0.1", "kept for the workers");
        let wide = parse_source_addrs("127.0.0.255-127.0.1.1").unwrap();
        assert_eq!(wide.0.len(), 3, "ranges cross octets");
        for bad in [
            "",
            "127.0.0.5-127.0.0.2",
            "127.0.0.1-::1",
            "localhost",
            "127.0.0.0-127.255.255.255",
        ] {
            assert!(parse_source_addrs(bad).is_err(), "{bad:?}");
        }
    }
}
