//! `loadgen`: load generator for Confab (a client of `wire` only).
//!
//! This first version runs two scenarios in one process with blocking threads (the
//! multi-process coordinator, more scenarios and the live progress line are issue #7):
//!
//! - `chat`: `--pairs` 1:1 conversations; each sender sends at `--rate / pairs` per second
//!   in an **open loop** (sends are scheduled on a fixed timeline and latency is measured
//!   from the *scheduled* time, so a stalled server is charged for the sends it delayed:
//!   coordinated-omission correction as in wrk2), or with `--rate 0` in a closed loop
//!   with `--window` sends outstanding per sender (the maximum rate). Each body carries its
//!   scheduled send time; the receiver records send→deliver, the sender send→ack.
//!   Against a cluster, `--placement same-node|cross-node` chooses users by their home
//!   node and `--owner` by the node owning their conversation (see `cluster.rs`); every
//!   session connects to its user's home node, and the figures are also given per route
//!   (how many node links a message crosses).
//! - `group`: one sender to a group of `--members` online members (one connection each,
//!   all read by one thread with poll(2)), open loop at `--rate`: deliveries per second,
//!   send→last-member and send→each-member latency, and the sender's send→ack.
//! - `idle`: opens `--conns` authenticated connections (spread over `--users` users),
//!   holds them for `--duration` seconds, and reports the server's resident memory per
//!   connection (from `/proc/<--server-pid>/status`) and its CPU time over that window
//!   (`/proc/<pid>/stat`). With `--ping-interval-ms P` every connection also sends a wire
//!   `Ping` every P ms (spread evenly over the connections; one epoll thread by default,
//!   see `heartbeat.rs`) after a 1 s warm-up: pings and pongs per second, and the server
//!   CPU a heartbeat costs, scaled to 100K connections pinging every 30 s.
//! - `presence`: `--targets` users toggle Away/Online at `--toggle-rate` per second in
//!   total while `--subscribers` users, subscribed to all of them, count the
//!   `PresenceUpdate` pushes (the fan-out rate) and the toggle→entry latency (see
//!   `presence.rs`).
//!
//! Output: a human summary, or one JSON object with `--json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

mod cluster;
mod epoll;
mod fleet;
mod heartbeat;
mod presence;

use hdrhistogram::Histogram;
use wire::client::http::{self, Login};
use wire::client::{new_key, sync_until_live, Connection, Transport};
use wire::message::{Body, Frame, MessageKind, ReceiptKind, Send};

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
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Ws,
    WsJson,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1:1 pairs at a fixed total rate (open loop) or as fast as possible (--rate 0).
    Chat {
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
    },
    /// One sender to a group of `--members` online members: deliveries per second,
    /// send→last-member latency and the sender's ack latency.
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
}

const PASSWORD: &str = "loadgen password";

fn main() {
    let cli = Cli::parse();
    raise_fd_limit();
    let result = match cli.scenario {
        Scenario::Chat {
            pairs,
            rate,
            window,
            duration,
            body,
            placement,
            owner,
        } => chat(
            &cli,
            ChatOptions {
                pairs: pairs.max(1),
                rate,
                window: window.max(1),
                duration: Duration::from_secs(duration),
                body: body.max(8),
                placement,
                owner,
            },
        ),
        Scenario::Group {
            members,
            rate,
            duration,
            body,
        } => group(
            &cli,
            members.max(2),
            rate.max(1),
            Duration::from_secs(duration),
            body.max(8),
        ),
        Scenario::Idle {
            conns,
            users,
            ref server_pid,
            duration,
            ping_interval_ms,
            workers,
            connect_rate,
            nodes,
            ..
        } if workers.is_some() || conns > fleet::WORKER_CONNS_MAX || server_pid.len() > 1 => {
            fleet::run(
                &cli,
                fleet::Options {
                    conns,
                    users: users.max(1),
                    workers: fleet::workers_for(conns, workers.unwrap_or(0)),
                    server_pids: server_pid.clone(),
                    window: Duration::from_secs(duration),
                    ping_interval: Duration::from_millis(ping_interval_ms),
                    connect_rate,
                    nodes: nodes.max(1),
                },
            )
        }
        Scenario::Idle {
            conns,
            users,
            ref server_pid,
            duration,
            ping_interval_ms,
            ping_threads,
            ..
        } => idle(
            &cli,
            conns,
            users.max(1),
            server_pid.first().copied(),
            Duration::from_secs(duration),
            Duration::from_millis(ping_interval_ms),
            ping_threads.max(1),
        ),
        Scenario::IdleWorker {
            ref plan,
            first,
            count,
            total,
            ping_interval_ms,
            connect_rate,
        } => fleet::worker(
            &cli,
            fleet::WorkerOptions {
                plan: plan.clone(),
                first,
                count,
                total,
                ping_interval: Duration::from_millis(ping_interval_ms),
                connect_rate,
            },
        )
        .inspect_err(|e| println!("error {e}")),
        Scenario::Presence {
            targets,
            subscribers,
            toggle_rate,
            duration,
            drain,
            threads,
        } => presence::run(
            &cli,
            presence::Options {
                targets: targets.max(1),
                subscribers: subscribers.max(1),
                rate: toggle_rate.max(1),
                duration: Duration::from_secs(duration),
                drain: Duration::from_secs(drain),
                threads: threads.max(1),
            },
        ),
    };
    if let Err(error) = result {
        eprintln!("loadgen: {error}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

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
    http::register(cli.http, name, PASSWORD).map_err(|e| format!("register {name}: {e}"))?;
    http::login(cli.http, name, PASSWORD, None, Some("loadgen"))
        .map_err(|e| format!("login {name}: {e}"))
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

/// Options of the `chat` scenario.
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
    sent: u64,
    delivered: u64,
}

impl ChatStats {
    fn new() -> ChatStats {
        ChatStats {
            pairs: 0,
            deliver: histogram(),
            ack: histogram(),
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

fn chat(cli: &Cli, o: ChatOptions) -> Result<()> {
    let run = run_id();
    let plans = cluster::plan(cli.http, &format!("lg{run}"), o.pairs, o.placement, o.owner)?;
    let mut setups = Vec::new();
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
        setups.push((conn, receiver, id, plan));
    }
    let epoch = Instant::now();
    let warmup = Duration::from_secs(1);
    let measure_from = epoch + warmup;
    let end = measure_from + o.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let per_sender = if o.rate == 0 {
        0.0
    } else {
        o.rate as f64 / o.pairs as f64
    };
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut routes = Vec::new();
    for (conn, receiver, id, plan) in setups {
        let stop_r = stop.clone();
        let rconn = connect_home(cli, &plan.recipient.home, &receiver)?;
        receivers.push(std::thread::spawn(move || {
            receive(rconn, id, epoch, measure_from, end, stop_r)
        }));
        let (window, body) = (o.window, o.body);
        senders.push(std::thread::spawn(move || {
            send(conn, id, epoch, measure_from, end, per_sender, window, body)
        }));
        routes.push(plan.route());
    }
    let mut totals = ChatTotals {
        all: ChatStats::new(),
        routes: Default::default(),
        cross_node_pairs: plans
            .iter()
            .filter(|p| p.sender.home.node != p.recipient.home.node)
            .count(),
        sent_with_warmup: 0,
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
    for (s, route) in senders.into_iter().zip(&routes) {
        let (ack, sent, sent_with_warmup, errors) = s.join().map_err(|_| "sender panicked")?;
        totals.sent_with_warmup += sent_with_warmup;
        for stats in [
            &mut totals.all,
            totals.routes.entry(*route).or_insert_with(ChatStats::new),
        ] {
            let _ = stats.ack.add(&ack);
            stats.sent += sent;
        }
        for (k, v) in errors {
            *totals.errors.entry(k).or_default() += v;
        }
    }
    // Give deliveries in flight a moment, then stop the receivers.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for (r, route) in receivers.into_iter().zip(&routes) {
        let (deliver, delivered, error) = r.join().map_err(|_| "receiver panicked")?;
        for stats in [
            &mut totals.all,
            totals.routes.entry(*route).or_insert_with(ChatStats::new),
        ] {
            let _ = stats.deliver.add(&deliver);
            stats.delivered += delivered;
        }
        if let Some(error) = error {
            *totals.errors.entry(error).or_default() += 1;
        }
    }
    report_chat(cli, &o, &totals);
    Ok(())
}

fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64
}

#[allow(clippy::too_many_arguments)]
fn send(
    mut conn: Connection,
    id: u64,
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
    per_sec: f64,
    window: usize,
    body_len: usize,
) -> (Histogram<u64>, u64, u64, HashMap<String, u64>) {
    let mut acks = histogram();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    let mut sent = 0u64;
    let mut sent_with_warmup = 0u64;
    let interval = if per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / per_sec)
    } else {
        Duration::ZERO
    };
    let mut next = Instant::now();
    let mut body = vec![0u8; body_len];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let may_send = if per_sec > 0.0 {
            now >= next
        } else {
            outstanding.len() < window
        };
        if may_send {
            let scheduled = if per_sec > 0.0 { next } else { now };
            body[..8].copy_from_slice(&nanos_since(epoch, scheduled).to_le_bytes());
            let frame = Body::Send(Send {
                conversation_id: id,
                idempotency_key: new_key(),
                kind: MessageKind::Chat,
                body: body.clone(),
                media: None,
                reply_to_seq: 0,
            });
            match conn.request(frame) {
                Ok(request_id) => {
                    outstanding.insert(request_id, scheduled);
                    sent_with_warmup += 1;
                    if scheduled >= measure_from {
                        sent += 1;
                    }
                }
                Err(e) => {
                    *errors.entry(format!("send: {e}")).or_default() += 1;
                    break;
                }
            }
            next += interval;
            continue;
        }
        let wait = if per_sec > 0.0 {
            next.saturating_duration_since(now)
                .min(Duration::from_millis(50))
        } else {
            Duration::from_millis(50)
        };
        // Wait with ppoll (a high-resolution timer), then take what arrived without
        // blocking: a socket read timeout (SO_RCVTIMEO) counts in jiffies and would wake
        // the sender up to a few ms late, which the open loop charges as latency.
        wait_readable(&mut conn, wait);
        // Take every frame that arrived, not one: frames read together sit in the
        // connection's buffer where ppoll cannot see them, so one left behind (an ack
        // that came in the same read as a receipt) would wait for the next send or the
        // 50 ms cap — which once showed up as "remote acks wait for the next frame".
        loop {
            match conn.recv(Duration::ZERO) {
                Ok(Some(Frame { request_id, body })) => {
                    let Some(scheduled) = outstanding.remove(&request_id) else {
                        continue;
                    };
                    match body {
                        Body::Ack(_) if scheduled >= measure_from => {
                            let _ = acks.record(
                                Instant::now()
                                    .saturating_duration_since(scheduled)
                                    .as_micros() as u64,
                            );
                        }
                        Body::Ack(_) => {}
                        Body::Error(e) => *errors.entry(format!("{:?}", e.code)).or_default() += 1,
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    *errors.entry(format!("recv: {e}")).or_default() += 1;
                    return (acks, sent, sent_with_warmup, errors);
                }
            }
        }
    }
    (acks, sent, sent_with_warmup, errors)
}

fn receive(
    mut conn: Connection,
    id: u64,
    epoch: Instant,
    measure_from: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> (Histogram<u64>, u64, Option<String>) {
    let mut latency = histogram();
    let mut delivered = 0u64;
    let mut highest = 0u64;
    let mut last_receipt = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let frame = match conn.recv(Duration::from_millis(50)) {
            Ok(Some(frame)) => frame,
            Ok(None) => continue,
            Err(e) => return (latency, delivered, Some(format!("receiver: {e}"))),
        };
        let messages = match frame.body {
            Body::Deliver(d) => vec![d.message],
            Body::SyncBatch(b) => b.messages,
            _ => continue,
        };
        let now = Instant::now();
        for m in messages {
            highest = highest.max(m.seq);
            let Some(stamp) = m.body.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let scheduled = epoch + Duration::from_nanos(u64::from_le_bytes(stamp));
            if scheduled >= measure_from && scheduled < end {
                delivered += 1;
                let _ = latency.record(now.saturating_duration_since(scheduled).as_micros() as u64);
            }
        }
        // Delivered receipts, coalesced: what a real client does.
        if now.duration_since(last_receipt) > Duration::from_millis(100) {
            let _ = conn.receipt(id, ReceiptKind::Delivered, highest);
            last_receipt = now;
        }
    }
    (latency, delivered, None)
}

fn report_chat(cli: &Cli, o: &ChatOptions, t: &ChatTotals) {
    let (pairs, rate, window, body) = (o.pairs, o.rate, o.window, o.body);
    let (placement, owner) = (o.placement.name(), o.owner.name());
    let secs = o.duration.as_secs_f64();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let a = &t.all;
    if cli.json {
        let errors: Vec<String> = t
            .errors
            .iter()
            .map(|(k, v)| format!("{:?}: {v}", k))
            .collect();
        let routes: Vec<String> = t
            .routes
            .iter()
            .map(|(route, s)| {
                format!(
                    "\"{}\":{{\"pairs\":{},\"deliver_hops\":{},\"ack_hops\":{},\"sent\":{},\"delivered\":{},\
                     \"deliver_us\":{{\"p50\":{},\"p99\":{}}},\"ack_us\":{{\"p50\":{},\"p99\":{}}}}}",
                    route.name(),
                    s.pairs,
                    route.deliver_hops(),
                    route.ack_hops(),
                    s.sent,
                    s.delivered,
                    q(&s.deliver, 0.5),
                    q(&s.deliver, 0.99),
                    q(&s.ack, 0.5),
                    q(&s.ack, 0.99),
                )
            })
            .collect();
        println!(
            "{{\"scenario\":\"chat\",\"pairs\":{pairs},\"placement\":\"{placement}\",\"owner\":\"{owner}\",\
             \"cross_node_pairs\":{},\"rate\":{rate},\"window\":{window},\"body\":{body},\
             \"seconds\":{secs},\"sent\":{},\"acked\":{},\"sent_with_warmup\":{},\"delivered\":{},\"sent_per_sec\":{:.0},\"delivered_per_sec\":{:.0},\
             \"deliver_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\
             \"ack_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}},\"routes\":{{{}}},\"errors\":{{{}}}}}",
            t.cross_node_pairs,
            a.sent,
            a.ack.len(),
            t.sent_with_warmup,
            a.delivered,
            a.sent as f64 / secs,
            a.delivered as f64 / secs,
            q(&a.deliver, 0.5),
            q(&a.deliver, 0.9),
            q(&a.deliver, 0.99),
            q(&a.deliver, 0.999),
            a.deliver.max(),
            q(&a.ack, 0.5),
            q(&a.ack, 0.99),
            q(&a.ack, 0.999),
            a.ack.max(),
            routes.join(","),
            errors.join(",")
        );
        return;
    }
    let mode = if rate == 0 {
        format!("closed loop, window {window}")
    } else {
        format!("open loop, {rate}/s")
    };
    println!("chat: {pairs} pairs, {mode}, {body} B bodies, {secs:.0} s measured");
    println!(
        "  placement {placement}, owner {owner}: {pairs} pairs, {} with sender and recipient on different nodes",
        t.cross_node_pairs
    );
    println!(
        "  sent {} ({:.0}/s), delivered {} ({:.0}/s)",
        a.sent,
        a.sent as f64 / secs,
        a.delivered,
        a.delivered as f64 / secs
    );
    for (name, h) in [("send->deliver", &a.deliver), ("send->ack", &a.ack)] {
        println!(
            "  {name:14} µs  p50 {}  p90 {}  p99 {}  p999 {}  max {}",
            q(h, 0.5),
            q(h, 0.9),
            q(h, 0.99),
            q(h, 0.999),
            h.max()
        );
    }
    println!("  by route (node-link hops send->deliver / send->ack):");
    for (route, s) in &t.routes {
        println!(
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
        println!("  errors: {:?}", t.errors);
    }
}

/// Per message of the group scenario: deliveries seen and the latest one.
#[derive(Default, Clone, Copy)]
struct Fanned {
    scheduled: u64,
    count: usize,
    last: u64,
}

fn group(cli: &Cli, members: usize, rate: u64, duration: Duration, body: usize) -> Result<()> {
    let run = run_id();
    let (transport, addr) = transport(cli);
    let logins: Vec<Login> = (0..members)
        .map(|i| new_user(cli, &run, "g", i))
        .collect::<Result<_>>()?;
    let mut conns = Vec::with_capacity(members);
    for (i, login) in logins.iter().enumerate() {
        let (mut conn, _) = Connection::connect(addr, transport, &login.access_token)
            .map_err(|e| format!("member {i}: {e}"))?;
        sync_until_live(&mut conn, Duration::from_secs(10))
            .map_err(|e| format!("member {i}: {e}"))?;
        conns.push(conn);
    }
    let others: Vec<u64> = logins.iter().skip(1).map(|l| l.user_id).collect();
    let mut sender = conns.remove(0);
    let id = sender
        .create_group(&format!("lg{run}"), &others)
        .map_err(|e| format!("create group: {e}"))?
        .conversation_id;
    let epoch = Instant::now();
    let measure_from = epoch + Duration::from_secs(1);
    let end = measure_from + duration;
    let sending = std::thread::spawn(move || {
        send(sender, id, epoch, measure_from, end, rate as f64, 0, body)
    });
    // Every member's connection on one thread, woken by poll(2).
    let receivers = members - 1;
    let mut fanned: HashMap<u64, Fanned> = HashMap::new();
    let mut each = histogram();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let drain_until = end + Duration::from_secs(2);
    let mut fds: Vec<libc::pollfd> = conns
        .iter_mut()
        .map(|c| {
            use std::os::fd::AsRawFd;
            libc::pollfd {
                fd: c.raw_stream().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }
        })
        .collect();
    while Instant::now() < drain_until {
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            continue;
        }
        for (fd, conn) in fds.iter_mut().zip(conns.iter_mut()) {
            if fd.revents == 0 {
                continue;
            }
            fd.revents = 0;
            loop {
                let frame = match conn.recv(Duration::ZERO) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        *errors.entry(format!("member: {e}")).or_default() += 1;
                        fd.fd = -1; // poll ignores negative descriptors
                        break;
                    }
                };
                let Body::Deliver(deliver) = frame.body else {
                    continue;
                };
                let m = deliver.message;
                let Some(stamp) = m.body.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                    continue;
                };
                let scheduled = u64::from_le_bytes(stamp);
                if epoch + Duration::from_nanos(scheduled) < measure_from {
                    continue;
                }
                let now = nanos_since(epoch, Instant::now());
                let _ = each.record(now.saturating_sub(scheduled) / 1000);
                let f = fanned.entry(m.seq).or_default();
                f.scheduled = scheduled;
                f.count += 1;
                f.last = f.last.max(now);
            }
        }
    }
    let (acks, sent, _, send_errors) = sending.join().map_err(|_| "sender panicked")?;
    for (k, v) in send_errors {
        *errors.entry(k).or_default() += v;
    }
    let mut last = histogram();
    let mut complete = 0u64;
    for f in fanned.values() {
        if f.count == receivers {
            complete += 1;
            let _ = last.record(f.last.saturating_sub(f.scheduled) / 1000);
        }
    }
    let secs = duration.as_secs_f64();
    let deliveries = each.len();
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    if cli.json {
        println!(
            "{{\"scenario\":\"group\",\"members\":{members},\"rate\":{rate},\"seconds\":{secs},\
             \"sent\":{sent},\"complete\":{complete},\"deliveries\":{deliveries},\"deliveries_per_sec\":{:.0},\
             \"last_member_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"each_us\":{{\"p50\":{},\"p99\":{}}},\
             \"ack_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\"errors\":{}}}",
            deliveries as f64 / secs,
            q(&last, 0.5),
            q(&last, 0.99),
            last.max(),
            q(&each, 0.5),
            q(&each, 0.99),
            q(&acks, 0.5),
            q(&acks, 0.99),
            acks.max(),
            errors.values().sum::<u64>()
        );
    } else {
        println!("group: {members} members online, 1 sender at {rate}/s, {body} B bodies, {secs:.0} s measured");
        println!(
            "  sent {sent}, reached every member {complete}; {deliveries} deliveries ({:.0}/s)",
            deliveries as f64 / secs
        );
        println!(
            "  send->last member  µs  p50 {}  p99 {}  max {}",
            q(&last, 0.5),
            q(&last, 0.99),
            last.max()
        );
        println!(
            "  send->each member  µs  p50 {}  p99 {}",
            q(&each, 0.5),
            q(&each, 0.99)
        );
        println!(
            "  send->ack          µs  p50 {}  p99 {}  max {}",
            q(&acks, 0.5),
            q(&acks, 0.99),
            acks.max()
        );
        if !errors.is_empty() {
            println!("  errors: {errors:?}");
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn idle(
    cli: &Cli,
    conns: usize,
    users: usize,
    server_pid: Option<u32>,
    window: Duration,
    ping_interval: Duration,
    ping_threads: usize,
) -> Result<()> {
    let run = run_id();
    let (transport, addr) = transport(cli);
    let logins: Vec<Login> = (0..users)
        .map(|i| new_user(cli, &run, "i", i))
        .collect::<Result<_>>()?;
    let rss_before = server_pid.and_then(rss_bytes);
    let started = Instant::now();
    let mut open = Vec::with_capacity(conns);
    for i in 0..conns {
        let login = &logins[i % users];
        let (mut conn, _) = Connection::connect(addr, transport, &login.access_token)
            .map_err(|e| format!("connection {i}: {e}"))?;
        sync_until_live(&mut conn, Duration::from_secs(10))
            .map_err(|e| format!("connection {i}: {e}"))?;
        open.push(conn);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let pinging = !ping_interval.is_zero();
    let epoch = Instant::now();
    let measure_from = if pinging {
        epoch + Duration::from_secs(1)
    } else {
        epoch
    };
    let plan = heartbeat::Plan {
        epoch,
        measure_from,
        end: measure_from + window,
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
        pings.merge(totals);
        open.extend(conns);
    }
    if !pinging {
        pings.held = open.len();
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / conns as f64),
        _ => None,
    };
    let secs = window.as_secs_f64();
    let cpu = cpu_after.since(&cpu_before);
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
    if cli.json {
        println!(
            "{{\"scenario\":\"idle\",\"conns\":{conns},\"users\":{users},\"connect_per_sec\":{:.0},\
             \"server_rss_before\":{},\"server_rss_after\":{},\"server_bytes_per_conn\":{},\
             \"ping_interval_ms\":{},\"seconds\":{secs},\"held\":{},\"pings_per_sec\":{pings_per_sec:.1},\
             \"pongs_per_sec\":{pongs_per_sec:.1},\"pong_us\":{{\"p50\":{},\"p99\":{},\"max\":{}}},\
             \"ping_lag_max_us\":{},\"other_frames\":{},\"server_cpu_per_sec\":{},\"server_cpu_us_per_ping\":{},\
             \"server_core_pct_per_100k_at_30s\":{},\"loadgen_cpu_per_sec\":{},\"errors\":{errors}}}",
            conns as f64 / connect_secs,
            rss_before.unwrap_or(0),
            rss_after.unwrap_or(0),
            json_num(per_conn, 0),
            ping_interval.as_millis(),
            pings.held,
            q(&pings.rtt, 0.5),
            q(&pings.rtt, 0.99),
            pings.rtt.max(),
            pings.lag_max.as_micros(),
            pings.other,
            json_num(cpu.server, 4),
            json_num(per_ping.map(|p| p * 1e6), 2),
            json_num(pct_100k, 3),
            json_num(cpu.own, 4),
        );
        return Ok(());
    }
    println!(
        "idle: {conns} authenticated connections over {users} users, {:.0} connects/s",
        conns as f64 / connect_secs
    );
    match per_conn {
        Some(b) => println!(
            "  server RSS {} -> {} KiB: {:.0} bytes ({:.2} KiB) per connection",
            rss_before.unwrap_or(0) / 1024,
            rss_after.unwrap_or(0) / 1024,
            b,
            b / 1024.0
        ),
        None => println!("  (pass --server-pid to measure server memory and CPU)"),
    }
    if pinging {
        println!(
            "  heartbeat: a Ping every {} ms per connection, {ping_threads} thread(s), {secs:.0} s measured after 1 s warm-up",
            ping_interval.as_millis()
        );
        println!(
            "  held {} connections; pings {pings_per_sec:.1}/s, pongs {pongs_per_sec:.1}/s, other frames {}",
            pings.held, pings.other
        );
        println!(
            "  ping->pong  µs  p50 {}  p99 {}  max {}   (latest ping sent {} µs late)",
            q(&pings.rtt, 0.5),
            q(&pings.rtt, 0.99),
            pings.rtt.max(),
            pings.lag_max.as_micros()
        );
    } else {
        println!(
            "  held {} connections for {secs:.0} s, no pings",
            pings.held
        );
    }
    if let Some(server) = cpu.server {
        println!(
            "  server CPU {server:.4} s/s ({:.2}% of a core) over the window",
            server * 100.0
        );
    }
    if let (Some(per_ping), Some(pct)) = (per_ping, pct_100k) {
        println!(
            "  {:.2} µs server CPU per ping => 100K connections pinging every 30 s: {pct:.2}% of one core",
            per_ping * 1e6
        );
    }
    if let Some(own) = cpu.own {
        println!("  loadgen CPU {own:.4} s/s ({:.2}% of a core)", own * 100.0);
    }
    if !pings.errors.is_empty() {
        println!("  errors: {:?}", pings.errors);
    }
    drop(open);
    Ok(())
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

/// Block until the connection's socket is readable or `timeout` passes.
fn wait_readable(conn: &mut Connection, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: conn.raw_stream().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe {
        libc::ppoll(&mut fds, 1, &ts, std::ptr::null());
    }
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
