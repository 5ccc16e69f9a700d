//! `idle` over several processes: a coordinator and its worker processes.
//!
//! One process may hold at most its hard open-files limit of connections (20,000 on the
//! machines we measure on, and it cannot be raised there), so holding 500K connections
//! takes ~30 worker processes. The coordinator (`loadgen idle --workers W`):
//!
//! 1. registers `--users` users and logs them in (through `--http`; a cluster forwards to
//!    each user's home) and, against a cluster, asks `/v1/discover` for each user's home
//!    node: every connection goes straight to its user's home;
//! 2. starts `W` copies of itself as `loadgen idle-worker` (directly, or through
//!    `--worker-via` commands such as `ssh host`, round robin, running `--worker-exe`
//!    there) and sends each the plan on its stdin (one `token address` line per user,
//!    then `end`), worker `w` owning the contiguous
//!    connections `first..first + count` of the total (connection `i` is user
//!    `i % users`), each opening at `--connect-rate / W` per second and, with pings,
//!    pinging each connection it opened every `--ping-interval-ms` while it ramps;
//! 3. reads the workers' progress lines, shows a live line on a terminal, and once all
//!    of them report `connected`, sends every worker `go <epoch> <warm-up> <window>` on its
//!    stdin: a shared timeline (wall-clock epoch) so the heartbeats of all workers are
//!    spread evenly over all connections (see `heartbeat.rs`);
//! 4. samples the servers (RSS and CPU from `/proc/<pid>` for every `--server-pid`, and
//!    from `/metrics` for every `--server-metrics` address) and the
//!    kernel (`Slab` in `/proc/meminfo`, TCP pages in `/proc/net/sockstat`) before the
//!    first connection and at the end of the window, merges the workers' `result` lines
//!    (histograms as `[value, count]` pairs) and reports. The kernel figures are the
//!    coordinator's host: they describe the servers only when those run there.
//!
//! Worker protocol, one line each on stdout: `opened <n>` (progress), `connected <n>
//! <failed> <seconds>`, then after `go`: `result <json>`. A worker that fails to start
//! prints `error <text>` and exits non-zero.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use wire::client::http::Login;
use wire::client::{sync_until_live, ClientError, Connection, Transport};
use wire::message::{Body, Ping};

use crate::{
    cluster, cpu_seconds, heartbeat, histogram, json_num, register_login, rss_bytes, run_id,
    transport, Cli, Result,
};

/// Connections one worker holds at most: under the 20,000 open-files limit with room for
/// the worker's own descriptors.
pub const WORKER_CONNS_MAX: usize = 18_000;
/// How long a worker waits for one connection's Welcome and catch-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Workers report progress this often while connecting.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Time between `go` and the shared epoch, so every worker has read it.
const GO_LEAD: Duration = Duration::from_millis(300);
/// Warm-up of the heartbeats before the measured window.
const PING_WARMUP: Duration = Duration::from_secs(1);
/// Threads registering and logging users in (argon2 on the server is the cost).
const REGISTER_THREADS: usize = 4;
/// Pause between the logins and the baseline memory sample.
const SETTLE: Duration = Duration::from_secs(2);
/// Candidate names tried per user when balancing users over nodes.
const CANDIDATES_PER_USER: usize = 64;

/// What the coordinator was asked for.
pub struct Options {
    pub conns: usize,
    pub users: usize,
    pub workers: usize,
    pub servers: Servers,
    /// Commands that start workers elsewhere (`--worker-via`), round robin; empty: here.
    pub launchers: Vec<String>,
    /// The binary the workers run; default: this executable.
    pub worker_exe: Option<PathBuf>,
    pub window: Duration,
    pub ping_interval: Duration,
    /// Connections opened per second over all workers; 0 = as fast as they go.
    pub connect_rate: u64,
    /// Nodes of the cluster: users are chosen so each node is home to the same number
    /// (1: any names).
    pub nodes: usize,
}

/// Workers needed for `conns` connections when `asked` is 0 (auto).
pub fn workers_for(conns: usize, asked: usize) -> usize {
    if asked > 0 {
        asked
    } else {
        conns.div_ceil(WORKER_CONNS_MAX).max(1)
    }
}

/// One user of the plan: its token and the address its connections go to.
struct PlanUser {
    token: String,
    addr: SocketAddr,
}

/// The coordinator.
pub fn run(cli: &Cli, o: Options) -> Result<crate::report::Report> {
    let (transport, default_addr) = transport(cli);
    let names = choose_names(cli, o.users, o.nodes)?;
    let users = register_users(cli, names, default_addr)?;
    // Let the servers return the memory the password hashing of the logins took, so it
    // does not hide in the baseline.
    std::thread::sleep(SETTLE);
    let plan = plan_text(&users);
    let before = HostSample::take(&o.servers);
    let workers = o.workers.min(o.conns.max(1));
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::with_capacity(workers);
    let mut stdins = Vec::with_capacity(workers);
    let started = Instant::now();
    for w in 0..workers {
        let (first, count) = share(o.conns, workers, w);
        let rate = if o.connect_rate == 0 {
            0
        } else {
            o.connect_rate.div_ceil(workers as u64)
        };
        let shares = Share {
            first,
            count,
            total: o.conns,
            rate,
            ping_interval: o.ping_interval,
        };
        let launcher = (!o.launchers.is_empty()).then(|| &o.launchers[w % o.launchers.len()]);
        let how = Launch {
            launcher,
            exe: o.worker_exe.as_deref(),
        };
        let (child, stdin) = spawn_worker(cli, how, &plan, &shares, w, &tx)?;
        children.push(child);
        stdins.push(stdin);
    }
    drop(tx);
    let connected = wait_connected(&rx, workers, o.conns, started)?;
    let connect_secs = started.elapsed().as_secs_f64();
    let after_connect = HostSample::take(&o.servers);
    // The shared timeline: every worker starts its window from the same wall-clock epoch.
    let warmup = if o.ping_interval.is_zero() {
        Duration::ZERO
    } else {
        PING_WARMUP
    };
    let measure_from = send_go(&mut stdins, warmup, o.window)? + warmup;
    sleep_until(measure_from);
    let cpu_before = CpuTotals::take(&o.servers);
    sleep_until(measure_from + o.window);
    let cpu_after = CpuTotals::take(&o.servers);
    let end = HostSample::take(&o.servers);
    let results = collect_results(&rx, workers)?;
    drop(stdins);
    for mut child in children {
        let _ = child.wait();
    }
    let report = FleetReport {
        conns: o.conns,
        users: o.users,
        workers,
        connected,
        connect_secs,
        before,
        after_connect,
        end,
        cpu: cpu_after.since(&cpu_before),
        window: o.window,
        ping_interval: o.ping_interval,
        results,
        transport,
    };
    Ok(report.build(measure_from))
}

/// Worker `w`'s contiguous share of `total` connections over `workers`.
pub(crate) fn share(total: usize, workers: usize, w: usize) -> (usize, usize) {
    let first = total * w / workers;
    let next = total * (w + 1) / workers;
    (first, next - first)
}

/// `users` fresh names; with `nodes` > 1, as many homed on each node (every node then
/// holds the same share of the connections, so none runs into its open-files limit
/// first), asking `/v1/discover` where candidates live.
fn choose_names(cli: &Cli, users: usize, nodes: usize) -> Result<Vec<String>> {
    let run = run_id();
    let name = |i: usize| format!("lg{run}w{i}");
    if nodes <= 1 {
        return Ok((0..users).map(name).collect());
    }
    let quota = users.div_ceil(nodes);
    let mut per_node: HashMap<u16, usize> = HashMap::new();
    let mut chosen = Vec::with_capacity(users);
    for i in 0..users * CANDIDATES_PER_USER {
        if chosen.len() == users {
            return Ok(chosen);
        }
        let candidate = name(i);
        let home = cluster::discover_name(cli.http, &candidate)?;
        let taken = per_node.entry(home.node).or_default();
        if *taken < quota {
            *taken += 1;
            chosen.push(candidate);
        }
    }
    Err(format!(
        "could not balance {users} users over {nodes} nodes (homes seen: {per_node:?})"
    ))
}

fn register_users(
    cli: &Cli,
    names: Vec<String>,
    default_addr: SocketAddr,
) -> Result<Vec<PlanUser>> {
    let users = names.len();
    let chunks: Vec<Vec<String>> = names
        .chunks(users.div_ceil(REGISTER_THREADS).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut out = Vec::with_capacity(users);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || -> Result<Vec<PlanUser>> {
                    chunk
                        .iter()
                        .map(|name| {
                            let login: Login = register_login(cli, name)?;
                            let home = cluster::discover_name(cli.http, name)?;
                            let addr = match cli.transport {
                                crate::Proto::Tcp => home.tcp,
                                _ => home.http,
                            }
                            .unwrap_or(default_addr);
                            Ok(PlanUser {
                                token: login.access_token,
                                addr,
                            })
                        })
                        .collect()
                })
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(Ok(part)) => out.extend(part),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("a registration thread panicked".to_string()),
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// The plan as the workers read it: one `token address` line per user, then `end`.
fn plan_text(users: &[PlanUser]) -> String {
    let mut text = String::new();
    for u in users {
        let _ = writeln!(text, "{} {}", u.token, u.addr);
    }
    text.push_str("end\n");
    text
}

/// Read a plan from `path`, or from stdin (up to its `end` line) when `path` is `-`.
fn read_plan(path: &Path) -> Result<Vec<PlanUser>> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("reading the plan: {e}"))?;
            if line == "end" {
                break;
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    text.lines()
        .filter(|line| *line != "end")
        .map(|line| {
            let (token, addr) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad plan line {line:?}"))?;
            let addr = addr
                .parse()
                .map_err(|e| format!("bad address in plan line {line:?}: {e}"))?;
            Ok(PlanUser {
                token: token.to_string(),
                addr,
            })
        })
        .collect()
}

/// How a worker process is started.
#[derive(Clone, Copy)]
pub(crate) struct Launch<'a> {
    /// A command the worker's command line is appended to (run by `sh -c`), e.g.
    /// `ssh host`; `None`: started directly.
    pub launcher: Option<&'a String>,
    /// The binary; default: this executable.
    pub exe: Option<&'a Path>,
}

/// Quote `word` for `sh` (and for the remote shell an `ssh` launcher hands it to).
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// What one worker is given.
struct Share {
    first: usize,
    count: usize,
    total: usize,
    rate: u64,
    ping_interval: Duration,
}

/// Start worker `w` (see [`Launch`]) and send it the plan; its stdout lines go to `tx`.
fn spawn_worker(
    cli: &Cli,
    how: Launch<'_>,
    plan: &str,
    s: &Share,
    w: usize,
    tx: &mpsc::Sender<(usize, String)>,
) -> Result<(Child, ChildStdin)> {
    let mut args = transport_args(cli);
    args.extend([
        "idle-worker".to_string(),
        "--plan".to_string(),
        "-".to_string(),
        "--first".to_string(),
        s.first.to_string(),
        "--count".to_string(),
        s.count.to_string(),
        "--total".to_string(),
        s.total.to_string(),
        "--connect-rate".to_string(),
        s.rate.to_string(),
        "--ping-interval-ms".to_string(),
        s.ping_interval.as_millis().to_string(),
    ]);
    spawn(how, &args, plan, w, tx)
}

/// The global options a worker needs to speak like its coordinator.
pub(crate) fn transport_args(cli: &Cli) -> Vec<String> {
    let transport = match cli.transport {
        crate::Proto::Tcp => "tcp",
        crate::Proto::Ws => "ws",
        crate::Proto::WsJson => "ws-json",
    };
    let mut args = vec![
        "--transport".to_string(),
        transport.to_string(),
        "--http".to_string(),
        cli.http.to_string(),
        "--tcp".to_string(),
        cli.tcp.to_string(),
    ];
    if let Some(sources) = &cli.source_addrs {
        args.push("--source-addrs".to_string());
        args.push(sources.1.clone());
    }
    args
}

/// Start worker `w` running `args` (see [`Launch`]), write `input` to its stdin and
/// forward its stdout lines to `tx` (then `exit` when it ends).
pub(crate) fn spawn(
    how: Launch<'_>,
    args: &[String],
    input: &str,
    w: usize,
    tx: &mpsc::Sender<(usize, String)>,
) -> Result<(Child, ChildStdin)> {
    let exe = match how.exe {
        Some(exe) => exe.to_path_buf(),
        None => std::env::current_exe().map_err(|e| format!("own executable: {e}"))?,
    };
    let mut command = match how.launcher {
        None => {
            let mut command = Command::new(&exe);
            command.args(args);
            command
        }
        Some(launcher) => {
            let mut line = format!("{launcher} {}", shell_quote(&exe.to_string_lossy()));
            for arg in args {
                line.push(' ');
                line.push_str(&shell_quote(arg));
            }
            let mut command = Command::new("sh");
            command.arg("-c").arg(line);
            command
        }
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting worker {w}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("worker stdin")?;
    let stdout = child.stdout.take().ok_or("worker stdout")?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((w, line)).is_err() {
                break;
            }
        }
        let _ = tx.send((w, "exit".to_string()));
    });
    stdin
        .write_all(input.as_bytes())
        .and_then(|()| stdin.flush())
        .map_err(|e| format!("sending worker {w} its plan: {e}"))?;
    Ok((child, stdin))
}

/// Tell every worker `go <epoch ns> <warm-up ms> <window ms>`: a shared wall-clock
/// epoch [`GO_LEAD`] from now. Returns the epoch as an `Instant` here.
pub(crate) fn send_go(
    stdins: &mut [ChildStdin],
    warmup: Duration,
    window: Duration,
) -> Result<Instant> {
    let epoch = SystemTime::now() + GO_LEAD;
    let epoch_ns = epoch
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for stdin in stdins.iter_mut() {
        writeln!(
            stdin,
            "go {epoch_ns} {} {}",
            warmup.as_millis(),
            window.as_millis()
        )
        .map_err(|e| format!("telling a worker to go: {e}"))?;
        let _ = stdin.flush();
    }
    Ok(Instant::now() + GO_LEAD)
}

/// Workers' connection counts once all reported `connected`: (opened, failed).
pub(crate) fn wait_connected(
    rx: &mpsc::Receiver<(usize, String)>,
    workers: usize,
    conns: usize,
    started: Instant,
) -> Result<(usize, usize)> {
    let live = std::io::stderr().is_terminal();
    let mut opened = vec![0usize; workers];
    let mut done: Vec<Option<(usize, usize)>> = vec![None; workers];
    let mut last_line = Instant::now();
    while done.iter().any(Option::is_none) {
        let (w, line) = rx
            .recv()
            .map_err(|_| "every worker ended before connecting".to_string())?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("opened") => opened[w] = words.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            Some("connected") => {
                let n = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let failed = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                opened[w] = n;
                done[w] = Some((n, failed));
            }
            Some("error") | Some("exit") => {
                return Err(format!("worker {w} failed while connecting: {line}"));
            }
            _ => {}
        }
        if live && last_line.elapsed() >= Duration::from_secs(1) {
            let total: usize = opened.iter().sum();
            let secs = started.elapsed().as_secs_f64();
            eprint!(
                "\ropened {total}/{conns} ({:.0}/s, {:.0} s)   ",
                total as f64 / secs.max(1e-9),
                secs
            );
            last_line = Instant::now();
        }
    }
    if live {
        eprintln!();
    }
    Ok(done
        .into_iter()
        .flatten()
        .fold((0, 0), |(a, b), (n, f)| (a + n, b + f)))
}

fn collect_results(
    rx: &mpsc::Receiver<(usize, String)>,
    workers: usize,
) -> Result<Vec<WorkerResult>> {
    let mut results: Vec<Option<WorkerResult>> = (0..workers).map(|_| None).collect();
    while results.iter().any(Option::is_none) {
        let (w, line) = rx
            .recv()
            .map_err(|_| "workers ended before reporting".to_string())?;
        if let Some(json) = line.strip_prefix("result ") {
            results[w] = Some(WorkerResult::parse(json)?);
        } else if line == "exit" && results[w].is_none() {
            return Err(format!("worker {w} ended without a result"));
        }
    }
    Ok(results.into_iter().flatten().collect())
}

// ----- the worker -----------------------------------------------------------------------

/// What `loadgen idle-worker` was asked for.
pub struct WorkerOptions {
    pub plan: PathBuf,
    pub first: usize,
    pub count: usize,
    pub total: usize,
    pub ping_interval: Duration,
    pub connect_rate: u64,
}

/// The worker process: connect, report, wait for `go`, hold (and ping), report.
pub fn worker(cli: &Cli, o: WorkerOptions) -> Result<()> {
    let (transport, _) = transport(cli);
    let users = read_plan(&o.plan)?;
    if users.is_empty() {
        return Err("empty plan".to_string());
    }
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let interval =
        (o.connect_rate > 0).then(|| Duration::from_secs_f64(1.0 / o.connect_rate as f64));
    let mut next = started;
    let mut last_progress = started;
    let mut conns = Vec::with_capacity(o.count);
    // Ramp keep-alive: when each connection last pinged, and the next to look at.
    let mut pinged: Vec<Instant> = Vec::with_capacity(o.count);
    let mut cursor = 0usize;
    let mut connect_us = histogram();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for i in o.first..o.first + o.count {
        if let Some(interval) = interval {
            sleep_until(next);
            next += interval;
        }
        let user = &users[i % users.len()];
        let t = Instant::now();
        match open(user, transport) {
            Ok(conn) => {
                let _ = connect_us.record(t.elapsed().as_micros() as u64);
                conns.push(conn);
                pinged.push(Instant::now());
            }
            Err(e) => {
                *errors
                    .entry(format!("connect: {}", error_kind(&e)))
                    .or_default() += 1
            }
        }
        if !o.ping_interval.is_zero() {
            keep_alive(&mut conns, &mut pinged, &mut cursor, o.ping_interval);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            let _ = writeln!(out, "opened {}", conns.len());
            let _ = out.flush();
            last_progress = Instant::now();
        }
    }
    let failed: u64 = errors.values().sum();
    let _ = writeln!(
        out,
        "connected {} {failed} {:.3}",
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = out.flush();
    let (epoch, warmup, window) = read_go()?;
    let plan = heartbeat::Plan {
        epoch,
        measure_from: epoch + warmup,
        end: epoch + warmup + window,
        interval: o.ping_interval,
        total: o.total,
    };
    let (totals, conns) = if o.ping_interval.is_zero() {
        sleep_until(plan.end);
        hold_check(conns)
    } else {
        heartbeat::run(conns, o.first, plan)
    };
    let mut totals = totals;
    for (k, v) in errors {
        *totals.errors.entry(k).or_default() += v;
    }
    let result = WorkerResult {
        pings: totals,
        connect: connect_us,
        cpu_seconds: cpu_seconds("self").unwrap_or(0.0),
    };
    let _ = writeln!(out, "result {}", result.to_json());
    let _ = out.flush();
    drop(conns);
    Ok(())
}

/// While the ramp lasts (500K connections take minutes): ping every connection whose
/// last ping is `interval` old, in the order they were opened, as a real client would, so
/// the first ones do not idle out before the hold begins. Whatever they received (pongs)
/// is read and dropped first; the nonce (`u64::MAX`) is outside every measured window,
/// so a late pong is not counted by the hold. A connection that failed is left to the
/// hold to report.
fn keep_alive(
    conns: &mut [Connection],
    pinged: &mut [Instant],
    cursor: &mut usize,
    interval: Duration,
) {
    let now = Instant::now();
    for _ in 0..conns.len() {
        if *cursor >= conns.len() {
            *cursor = 0;
        }
        let (Some(conn), Some(at)) = (conns.get_mut(*cursor), pinged.get_mut(*cursor)) else {
            return;
        };
        if now.saturating_duration_since(*at) < interval {
            return;
        }
        let ping = Body::Ping(Ping {
            nonce: u64::MAX,
            client_time_ms: 0,
        });
        let _ = crate::epoll::drain(conn, |_| {}).and_then(|()| conn.request(ping));
        *at = now;
        *cursor += 1;
    }
}

fn open(user: &PlanUser, transport: Transport) -> std::result::Result<Connection, ClientError> {
    let (mut conn, _) = Connection::connect(user.addr, transport, &user.token)?;
    sync_until_live(&mut conn, CONNECT_TIMEOUT)?;
    Ok(conn)
}

/// A short name for an error, so thousands of them group into a few kinds.
pub fn error_kind(e: &ClientError) -> String {
    let text = e.to_string();
    text.split(':').next().unwrap_or(&text).trim().to_string()
}

/// Without pings: which connections are still open (none must have been closed).
fn hold_check(mut conns: Vec<Connection>) -> (heartbeat::Totals, Vec<Connection>) {
    let mut totals = heartbeat::Totals::new();
    for conn in &mut conns {
        match crate::epoll::drain(conn, |_| totals.other += 1) {
            Ok(()) => totals.held += 1,
            Err(e) => {
                *totals
                    .errors
                    .entry(format!("held: {}", error_kind(&e)))
                    .or_default() += 1
            }
        }
    }
    (totals, conns)
}

/// Block until the coordinator's `go <epoch ns> <warm-up ms> <window ms>`.
pub(crate) fn read_go() -> Result<(Instant, Duration, Duration)> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("reading go: {e}"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().map_err(|e| format!("bad go line {line:?}: {e}")))
        .collect::<Result<_>>()?;
    let [epoch_ns, warmup_ms, window_ms] = f[..] else {
        return Err(format!("bad go line {line:?}"));
    };
    let epoch_wall = UNIX_EPOCH + Duration::from_nanos(epoch_ns);
    let now_wall = SystemTime::now();
    let now = Instant::now();
    let epoch = match epoch_wall.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    };
    Ok((
        epoch,
        Duration::from_millis(warmup_ms),
        Duration::from_millis(window_ms),
    ))
}

// ----- results ------------------------------------------------------------------------------

/// One worker's `result` line.
struct WorkerResult {
    /// What its heartbeat threads counted (held connections, pings, pongs, errors).
    pings: heartbeat::Totals,
    connect: Histogram<u64>,
    cpu_seconds: f64,
}

pub(crate) fn histogram_json(h: &Histogram<u64>) -> serde_json::Value {
    h.iter_recorded()
        .map(|v| serde_json::json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

/// A `{"kind": count}` object of a worker's result (errors by kind); anything else is
/// empty.
pub(crate) fn counts_from_json(v: &serde_json::Value) -> HashMap<String, u64> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
        .collect()
}

pub(crate) fn histogram_from_json(v: &serde_json::Value) -> Histogram<u64> {
    let mut h = histogram();
    for pair in v.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = h.record_n(value, count);
        }
    }
    h
}

impl WorkerResult {
    fn to_json(&self) -> serde_json::Value {
        let mut v = self.pings.to_json();
        v["connect"] = histogram_json(&self.connect);
        v["cpu_seconds"] = serde_json::json!(self.cpu_seconds);
        v
    }

    fn parse(text: &str) -> Result<WorkerResult> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("bad worker result: {e}"))?;
        Ok(WorkerResult {
            pings: heartbeat::Totals::from_json(&v),
            connect: histogram_from_json(&v["connect"]),
            cpu_seconds: v["cpu_seconds"].as_f64().unwrap_or(0.0),
        })
    }
}

/// Memory of the servers and the kernel at one instant.
struct HostSample {
    /// Sum of the servers' VmRSS; `None` without server pids or if one is gone.
    server_rss: Option<u64>,
    /// `Slab:` of /proc/meminfo (socket, inode, dentry and TCP structures live there).
    slab: Option<u64>,
    /// TCP socket buffer memory: `mem` pages of the `TCP:` line of /proc/net/sockstat.
    tcp_buffers: Option<u64>,
}

/// The servers whose memory and CPU a run reports: local pids (read from /proc) and
/// HTTP addresses (read from their `/metrics`, for servers on other hosts).
#[derive(Clone, Debug, Default)]
pub struct Servers {
    pub pids: Vec<u32>,
    pub metrics: Vec<SocketAddr>,
}

impl Servers {
    /// Sum of resident memory; `None` with no server given or if one cannot be read.
    fn rss(&self) -> Option<u64> {
        if self.pids.is_empty() && self.metrics.is_empty() {
            return None;
        }
        let local: Option<u64> = self.pids.iter().map(|&p| rss_bytes(p)).sum();
        let remote: Option<f64> = self
            .metrics
            .iter()
            .map(|&a| scrape(a, "process_resident_memory_bytes"))
            .sum();
        Some(local? + remote? as u64)
    }

    /// Sum of CPU-seconds; `None` as for [`Servers::rss`].
    fn cpu_seconds(&self) -> Option<f64> {
        if self.pids.is_empty() && self.metrics.is_empty() {
            return None;
        }
        let local: Option<f64> = self.pids.iter().map(|p| cpu_seconds(&p.to_string())).sum();
        let remote: Option<f64> = self
            .metrics
            .iter()
            .map(|&a| scrape(a, "process_cpu_seconds_total"))
            .sum();
        Some(local? + remote?)
    }
}

/// The value of the unlabelled sample `name` in `addr`'s `/metrics`.
fn scrape(addr: SocketAddr, name: &str) -> Option<f64> {
    let answer = wire::client::http::request(addr, "GET", "/metrics", &[], None).ok()?;
    if answer.status != 200 {
        return None;
    }
    metric_value(&String::from_utf8_lossy(&answer.body), name)
}

/// `name value` in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

impl HostSample {
    fn take(servers: &Servers) -> HostSample {
        HostSample {
            server_rss: servers.rss(),
            slab: meminfo_bytes("Slab:"),
            tcp_buffers: sockstat_tcp_pages().map(|p| p * 4096),
        }
    }
}

fn meminfo_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `TCP: inuse N orphan N tw N alloc N mem P`: P pages of socket buffers.
fn sockstat_tcp_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "mem")?;
    words.get(at + 1)?.parse().ok()
}

/// CPU-seconds of all servers at an instant.
struct CpuTotals {
    at: Instant,
    server: Option<f64>,
}

impl CpuTotals {
    fn take(servers: &Servers) -> CpuTotals {
        CpuTotals {
            at: Instant::now(),
            server: servers.cpu_seconds(),
        }
    }

    /// Server CPU-seconds per second since `before`.
    fn since(&self, before: &CpuTotals) -> Option<f64> {
        let secs = self.at.saturating_duration_since(before.at).as_secs_f64();
        match (self.server, before.server) {
            (Some(a), Some(b)) if secs > 0.0 => Some((a - b).max(0.0) / secs),
            _ => None,
        }
    }
}

struct FleetReport {
    conns: usize,
    users: usize,
    workers: usize,
    /// (opened, failed) over all workers.
    connected: (usize, usize),
    connect_secs: f64,
    before: HostSample,
    after_connect: HostSample,
    end: HostSample,
    cpu: Option<f64>,
    window: Duration,
    ping_interval: Duration,
    results: Vec<WorkerResult>,
    transport: Transport,
}

impl FleetReport {
    /// The report, with the pong and connect histograms (the window starts at
    /// `measure_from`).
    fn build(&self, measure_from: Instant) -> crate::report::Report {
        let (opened, failed) = self.connected;
        let loadgen_cpu: f64 = self.results.iter().map(|r| r.cpu_seconds).sum();
        let mut pings = heartbeat::Totals::new();
        let mut connect = histogram();
        for r in &self.results {
            pings.merge(&r.pings);
            let _ = connect.add(&r.connect);
        }
        let heartbeat::Totals {
            held,
            sent,
            pongs,
            other,
            lag_max,
            rtt,
            errors,
        } = pings;
        let lag_max_us = lag_max.as_micros() as u64;
        let per_conn = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if opened > 0 => Some(a.saturating_sub(b) as f64 / opened as f64),
            _ => None,
        };
        let server_per_conn = per_conn(self.end.server_rss, self.before.server_rss);
        let slab_per_conn = per_conn(self.end.slab, self.before.slab);
        let tcp_per_conn = per_conn(self.end.tcp_buffers, self.before.tcp_buffers);
        let secs = self.window.as_secs_f64();
        let connect_per_sec = opened as f64 / self.connect_secs.max(1e-9);
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
        let error_count: u64 = errors.values().sum();
        let v = serde_json::json!({
            "scenario": "idle",
            "transport": format!("{:?}", self.transport),
            "conns": self.conns,
            "users": self.users,
            "workers": self.workers,
            "opened": opened,
            "failed": failed,
            "held": held,
            "connect_seconds": self.connect_secs,
            "connect_per_sec": connect_per_sec.round(),
            "connect_us": {"p50": q(&connect, 0.5), "p99": q(&connect, 0.99), "max": connect.max()},
            "server_rss_before": self.before.server_rss,
            "server_rss_connected": self.after_connect.server_rss,
            "server_rss_end": self.end.server_rss,
            "server_bytes_per_conn": server_per_conn.map(f64::round),
            "kernel_slab_bytes_per_conn": slab_per_conn.map(f64::round),
            "kernel_tcp_buffer_bytes_per_conn": tcp_per_conn.map(f64::round),
            "seconds": secs,
            "ping_interval_ms": self.ping_interval.as_millis() as u64,
            "pings_per_sec": (sent as f64 / secs * 10.0).round() / 10.0,
            "pongs_per_sec": (pongs as f64 / secs * 10.0).round() / 10.0,
            "pong_us": {"p50": q(&rtt, 0.5), "p99": q(&rtt, 0.99), "p999": q(&rtt, 0.999), "max": rtt.max()},
            "ping_lag_max_us": lag_max_us,
            "other_frames": other,
            "server_cpu_per_sec": self.cpu,
            "loadgen_cpu_seconds": loadgen_cpu,
            "errors": errors,
            "error_count": error_count,
        });
        let mut out = String::new();
        let _ = writeln!(
            out,
            "idle: {opened} of {} connections opened ({failed} failed) by {} worker processes over {} users, {connect_per_sec:.0} connects/s ({:.1} s; connect→live p50 {} µs, p99 {} µs)",
            self.conns, self.workers, self.users, self.connect_secs, q(&connect, 0.5), q(&connect, 0.99)
        );
        let _ = writeln!(
            out,
            "  held {held} for {secs:.0} s{}",
            if self.ping_interval.is_zero() {
                ", no pings".to_string()
            } else {
                format!(
                    ", a Ping every {} ms each: {:.1} pings/s, {:.1} pongs/s, ping->pong p50 {} µs p99 {} µs max {} µs (latest ping {} µs late)",
                    self.ping_interval.as_millis(),
                    sent as f64 / secs,
                    pongs as f64 / secs,
                    q(&rtt, 0.5),
                    q(&rtt, 0.99),
                    rtt.max(),
                    lag_max_us
                )
            }
        );
        if let Some(b) = server_per_conn {
            let _ = writeln!(
                out,
                "  servers' RSS {} -> {} MiB: {b:.0} bytes ({:.2} KiB) per connection",
                self.before.server_rss.unwrap_or(0) >> 20,
                self.end.server_rss.unwrap_or(0) >> 20,
                b / 1024.0
            );
        } else {
            let _ = writeln!(out, "  (pass --server-pid for server memory and CPU)");
        }
        let _ = writeln!(
            out,
            "  kernel per connection (both socket ends, loadgen on this host): slab {} bytes, TCP buffers {} bytes",
            json_num(slab_per_conn, 0),
            json_num(tcp_per_conn, 0)
        );
        if let Some(cpu) = self.cpu {
            let _ = writeln!(
                out,
                "  servers' CPU {cpu:.3} s/s ({:.1}% of a core) over the window",
                cpu * 100.0
            );
        }
        let _ = writeln!(out, "  loadgen workers' CPU {loadgen_cpu:.1} s in total");
        if !errors.is_empty() {
            let _ = writeln!(out, "  errors: {errors:?}");
        }
        crate::report::Report::new(v, out)
            .with("pong", measure_from, self.window, &rtt)
            .with("connect", measure_from, self.window, &connect)
    }
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_exact_name() {
        let text = "# HELP process_resident_memory_bytes x\n\
                    process_resident_memory_bytes_extra 1\n\
                    process_resident_memory_bytes 123456\n\
                    process_cpu_seconds_total 1.5\n";
        assert_eq!(
            metric_value(text, "process_resident_memory_bytes"),
            Some(123456.0)
        );
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(metric_value(text, "missing"), None);
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/opt/load gen"), "'/opt/load gen'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("a 'b' $c")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $c");
    }

    #[test]
    fn shares_cover_every_connection_once() {
        for (total, workers) in [(10, 3), (500_000, 28), (1, 1), (7, 7)] {
            let mut next = 0;
            for w in 0..workers {
                let (first, count) = share(total, workers, w);
                assert_eq!(first, next);
                next = first + count;
            }
            assert_eq!(next, total);
        }
    }

    #[test]
    fn workers_fit_under_the_fd_limit() {
        assert_eq!(workers_for(500_000, 0), 28);
        assert_eq!(workers_for(18_000, 0), 1);
        assert_eq!(workers_for(100, 4), 4);
    }

    #[test]
    fn results_round_trip_with_their_histograms() {
        let mut rtt = histogram();
        for v in [100, 200, 200, 5000] {
            rtt.record(v).unwrap();
        }
        let pings = heartbeat::Totals {
            held: 3,
            sent: 10,
            pongs: 9,
            other: 1,
            lag_max: Duration::from_micros(42),
            rtt,
            errors: [("connect: refused".to_string(), 2)].into_iter().collect(),
        };
        let r = WorkerResult {
            pings,
            connect: histogram(),
            cpu_seconds: 1.5,
        };
        let back = WorkerResult::parse(&r.to_json().to_string()).unwrap();
        let p = &back.pings;
        assert_eq!((p.held, p.sent, p.pongs, p.other), (3, 10, 9, 1));
        assert_eq!(p.lag_max, Duration::from_micros(42));
        assert_eq!(p.rtt.len(), 4);
        assert_eq!(p.rtt.max(), r.pings.rtt.max());
        assert_eq!(p.errors["connect: refused"], 2);
    }
}
