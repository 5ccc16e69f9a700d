//! `chat` and `groups` over several processes: `loadgen chat --workers W`,
//! `loadgen groups --workers W` (the groups' side of the merge is in `groups.rs`).
//!
//! The coordinator starts `W` copies of itself as `loadgen chat-worker` (directly or
//! through `--worker-via` commands, as `idle` does: `fleet.rs`), each with its share of
//! the pairs and of the rate (the rate is split in proportion to the pairs, so every pair
//! sends at the same rate as in one process). Each worker registers and connects its own
//! pairs, reports `connected <pairs> 0 <seconds>`, and waits for `go <epoch> <warm-up>
//! <window>`: one wall-clock epoch for all, so the measured windows coincide. After the
//! run it prints `result <json>`: its counts and its histograms as `[value, count]`
//! pairs. The coordinator merges them (HdrHistogram addition: the merged percentiles are
//! those of all the sends, not an average of the workers' percentiles) into the same
//! report as an in-process run, plus the worker count and their CPU.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

use crate::fleet::{self, histogram_from_json, histogram_json, Launch};
use crate::report::Report;
use crate::{
    chat_report, chat_run, chat_setup, cluster, cpu_seconds, ChatArgs, ChatOptions, ChatStats,
    ChatTotals, Cli, Result, Timeline, WARMUP,
};

/// How the coordinator starts its workers.
pub struct Fleet {
    pub workers: usize,
    /// Commands that start workers elsewhere (`--worker-via`), round robin; empty: here.
    pub launchers: Vec<String>,
    /// The binary the workers run; default: this executable.
    pub worker_exe: Option<PathBuf>,
}

/// Worker `w`'s share of the rate: in proportion to its pairs, the parts summing to
/// `rate` exactly.
pub fn rate_share(rate: u64, pairs: usize, first: usize, count: usize) -> u64 {
    let upto = |n: usize| rate * n as u64 / pairs as u64;
    upto(first + count) - upto(first)
}

/// What every worker said: its `result` JSON, in worker order.
pub struct Results {
    pub lines: Vec<String>,
    /// The shared timeline the workers ran on.
    pub timeline: Timeline,
}

/// Start one worker per entry of `worker_args` (the scenario's subcommand and its share),
/// wait until all report `connected`, send them one `go` with `window`, and collect their
/// `result` lines. `units` (pairs, groups) only labels the progress line. `during` runs
/// on the coordinator once the workers have their `go` (e.g. to sample the server over
/// the window); their results queue up meanwhile.
pub fn run_workers(
    cli: &Cli,
    f: &Fleet,
    worker_args: Vec<Vec<String>>,
    units: usize,
    window: std::time::Duration,
    during: impl FnOnce(Timeline),
) -> Result<Results> {
    let workers = worker_args.len();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::with_capacity(workers);
    let mut stdins = Vec::with_capacity(workers);
    let started = Instant::now();
    for (w, share) in worker_args.into_iter().enumerate() {
        let mut args = fleet::transport_args(cli);
        args.extend(share);
        let launcher = (!f.launchers.is_empty()).then(|| &f.launchers[w % f.launchers.len()]);
        let how = Launch {
            launcher,
            exe: f.worker_exe.as_deref(),
        };
        let (child, stdin) = fleet::spawn(how, &args, "", w, &tx)?;
        children.push(child);
        stdins.push(stdin);
    }
    drop(tx);
    fleet::wait_connected(&rx, workers, units, started)?;
    let epoch = fleet::send_go(&mut stdins, WARMUP, window)?;
    let timeline = Timeline::at(epoch, WARMUP, window);
    let live = crate::report::live_line("workers running", timeline, None);
    during(timeline);
    let mut lines: Vec<Option<String>> = vec![None; workers];
    while lines.iter().any(Option::is_none) {
        let (w, line) = rx
            .recv()
            .map_err(|_| "workers ended before reporting".to_string())?;
        if let Some(json) = line.strip_prefix("result ") {
            lines[w] = Some(json.to_string());
        } else if let Some(error) = line.strip_prefix("error ") {
            return Err(format!("worker {w}: {error}"));
        } else if line == "exit" && lines[w].is_none() {
            return Err(format!("worker {w} ended without a result"));
        }
    }
    drop(stdins);
    for mut child in children {
        let _ = child.wait();
    }
    if let Some(live) = live {
        let _ = live.join();
    }
    Ok(Results {
        lines: lines.into_iter().flatten().collect(),
        timeline,
    })
}

/// A worker's `result` JSON object (`what` names the scenario in the error).
pub fn parse_result(text: &str, what: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("bad {what} worker result: {e}"))?;
    if !v.is_object() {
        return Err(format!("bad {what} worker result: not an object"));
    }
    Ok(v)
}

/// Every worker's totals, parsed and merged into one.
pub fn merge_results<T>(
    lines: &[String],
    parse: impl Fn(&str) -> Result<T>,
    merge: impl Fn(&mut T, T),
) -> Result<T> {
    let mut merged: Option<T> = None;
    for line in lines {
        let totals = parse(line)?;
        match &mut merged {
            Some(all) => merge(all, totals),
            None => merged = Some(totals),
        }
    }
    merged.ok_or_else(|| "no worker reported".to_string())
}

/// A worker's side of the protocol: report `connected <units>`, wait for `go`, run on
/// its timeline, print `result <json>` (the JSON gets the worker's CPU seconds).
pub fn serve_worker(
    units: usize,
    started: Instant,
    run: impl FnOnce(Timeline) -> Result<serde_json::Value>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "connected {units} 0 {:.3}",
        started.elapsed().as_secs_f64()
    );
    let _ = out.flush();
    let (epoch, warmup, window) = fleet::read_go()?;
    let mut result = run(Timeline::at(epoch, warmup, window))?;
    result["cpu_seconds"] = serde_json::json!(cpu_seconds("self").unwrap_or(0.0));
    let _ = writeln!(out, "result {result}");
    let _ = out.flush();
    Ok(())
}

/// The worker count and their CPU, added to a merged report.
pub fn label(report: &mut Report, workers: usize, lines: &[String]) {
    let cpu: f64 = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["cpu_seconds"].as_f64())
        .sum();
    report.json["workers"] = serde_json::json!(workers);
    report.json["workers_cpu_seconds"] = serde_json::json!(cpu);
    report.human.push_str(&format!(
        "  {workers} worker processes, {cpu:.1} s of CPU between them\n"
    ));
}

/// The `chat` coordinator.
pub fn run(cli: &Cli, args: ChatArgs, f: Fleet) -> Result<Report> {
    let o = args.options();
    let workers = f.workers.clamp(1, o.pairs);
    let shares = (0..workers)
        .map(|w| {
            let (first, count) = fleet::share(o.pairs, workers, w);
            let rate = rate_share(o.rate, o.pairs, first, count);
            [
                "chat-worker",
                "--pairs",
                &count.to_string(),
                "--rate",
                &rate.to_string(),
                "--window",
                &o.window.to_string(),
                "--duration",
                &o.duration.as_secs().to_string(),
                "--body",
                &o.body.to_string(),
                "--placement",
                o.placement.name(),
                "--owner",
                o.owner.name(),
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let results = run_workers(cli, &f, shares, o.pairs, o.duration, |_| ())?;
    let totals = merge_results(&results.lines, totals_from_json, merge)?;
    let mut report = chat_report(&o, &totals, results.timeline);
    label(&mut report, workers, &results.lines);
    Ok(report)
}

/// The `chat` worker process: set up its pairs, then [`serve_worker`].
pub fn worker(cli: &Cli, o: ChatOptions) -> Result<()> {
    let started = Instant::now();
    let setup = chat_setup(cli, o)?;
    serve_worker(o.pairs, started, |t| {
        chat_run(setup, t).map(|totals| totals_json(&totals))
    })
}

fn stats_json(s: &ChatStats) -> serde_json::Value {
    serde_json::json!({
        "pairs": s.pairs,
        "sent": s.sent,
        "delivered": s.delivered,
        "deliver": histogram_json(&s.deliver),
        "ack": histogram_json(&s.ack),
        "late": histogram_json(&s.late),
    })
}

fn stats_from_json(v: &serde_json::Value) -> ChatStats {
    ChatStats {
        pairs: v["pairs"].as_u64().unwrap_or(0) as usize,
        sent: v["sent"].as_u64().unwrap_or(0),
        delivered: v["delivered"].as_u64().unwrap_or(0),
        deliver: histogram_from_json(&v["deliver"]),
        ack: histogram_from_json(&v["ack"]),
        late: histogram_from_json(&v["late"]),
    }
}

pub(crate) fn totals_json(t: &ChatTotals) -> serde_json::Value {
    let routes: serde_json::Map<String, serde_json::Value> = t
        .routes
        .iter()
        .map(|(route, s)| (route.name().to_string(), stats_json(s)))
        .collect();
    serde_json::json!({
        "all": stats_json(&t.all),
        "routes": routes,
        "cross_node_pairs": t.cross_node_pairs,
        "sent_with_warmup": t.sent_with_warmup,
        "repeated": t.repeated,
        "gaps": t.gaps,
        "errors": t.errors,
    })
}

fn totals_from_json(text: &str) -> Result<ChatTotals> {
    totals_from_value(&parse_result(text, "chat")?)
}

/// The inverse of [`totals_json`].
pub(crate) fn totals_from_value(v: &serde_json::Value) -> Result<ChatTotals> {
    let mut routes = BTreeMap::new();
    for (name, stats) in v["routes"].as_object().into_iter().flatten() {
        let route = cluster::Route::from_name(name)
            .ok_or_else(|| format!("bad chat worker result: route {name:?}"))?;
        routes.insert(route, stats_from_json(stats));
    }
    let errors = fleet::counts_from_json(&v["errors"]);
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let totals = ChatTotals {
        all: stats_from_json(&v["all"]),
        routes,
        cross_node_pairs: n("cross_node_pairs") as usize,
        sent_with_warmup: n("sent_with_warmup"),
        repeated: n("repeated"),
        gaps: n("gaps"),
        errors,
    };
    Ok(totals)
}

fn merge_stats(into: &mut ChatStats, from: &ChatStats) {
    into.pairs += from.pairs;
    into.sent += from.sent;
    into.delivered += from.delivered;
    let _ = into.deliver.add(&from.deliver);
    let _ = into.ack.add(&from.ack);
    let _ = into.late.add(&from.late);
}

pub(crate) fn merge(into: &mut ChatTotals, from: ChatTotals) {
    merge_stats(&mut into.all, &from.all);
    for (route, stats) in &from.routes {
        merge_stats(
            into.routes.entry(*route).or_insert_with(ChatStats::new),
            stats,
        );
    }
    into.cross_node_pairs += from.cross_node_pairs;
    into.sent_with_warmup += from.sent_with_warmup;
    into.repeated += from.repeated;
    into.gaps += from.gaps;
    crate::report::merge_errors(&mut into.errors, from.errors);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn rate_shares_follow_the_pairs_and_sum_to_the_rate() {
        let (rate, pairs, workers) = (1000u64, 7usize, 3usize);
        let shares: Vec<u64> = (0..workers)
            .map(|w| {
                let (first, count) = fleet::share(pairs, workers, w);
                rate_share(rate, pairs, first, count)
            })
            .collect();
        assert_eq!(shares.iter().sum::<u64>(), rate);
        assert_eq!(shares, vec![285, 286, 429]); // 2, 2 and 3 pairs
        assert_eq!(rate_share(0, pairs, 0, 3), 0, "closed loop stays closed");
    }

    #[test]
    fn worker_results_survive_the_round_trip_and_merge_as_one_run() {
        let mut a = ChatStats::new();
        a.pairs = 2;
        a.sent = 10;
        a.delivered = 10;
        for v in [100, 200, 300] {
            a.deliver.record(v).unwrap();
            a.ack.record(v / 2).unwrap();
        }
        let totals = ChatTotals {
            all: a,
            routes: BTreeMap::new(),
            cross_node_pairs: 0,
            sent_with_warmup: 12,
            repeated: 0,
            gaps: 1,
            errors: HashMap::from([("send: timeout".to_string(), 2)]),
        };
        let text = totals_json(&totals).to_string();
        let back = totals_from_json(&text).unwrap();
        assert_eq!((back.all.sent, back.all.delivered, back.gaps), (10, 10, 1));
        assert_eq!(back.all.deliver.len(), 3);
        assert_eq!(back.all.deliver.max(), totals.all.deliver.max());
        let other = totals_from_json(&text).unwrap();
        let mut merged = back;
        merge(&mut merged, other);
        assert_eq!(merged.all.sent, 20);
        assert_eq!(merged.all.pairs, 4);
        assert_eq!(merged.all.deliver.len(), 6);
        assert_eq!(merged.errors["send: timeout"], 4);
        assert_eq!(merged.gaps, 2);
    }

    #[test]
    fn a_bad_result_line_is_an_error_not_a_panic() {
        assert!(totals_from_json("not json").is_err());
        assert!(totals_from_json(r#"{"routes": {"nowhere": {}}}"#).is_err());
    }
}
