#!/usr/bin/env python3
"""Run a criterion bench several times and report the median of the per-run medians.

Usage: bench/scripts/criterion_runs.py BENCH [RUNS] [-- extra criterion args]
Example: bench/scripts/criterion_runs.py ws_frame 5

Prints a Markdown table: benchmark, median time per iteration, throughput (when the bench
declares one), and the spread (min..max of the run medians). These machines are shared and
noisy, so one run is not a figure.
"""
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

args = sys.argv[1:]
extra = []
if "--" in args:
    i = args.index("--")
    args, extra = args[:i], args[i + 1 :]
bench = args[0]
runs = int(args[1]) if len(args) > 1 else 5
root = pathlib.Path(__file__).resolve().parents[2]
criterion_dir = root / "target" / "criterion"

samples = {}
throughput = {}
for run in range(runs):
    started = time.time()
    # BENCH_EXE runs an already built bench executable (e.g. while another crate of the
    # workspace is mid-edit and cargo would rebuild it).
    exe = os.environ.get("BENCH_EXE")
    command = [exe, "--bench", *extra] if exe else [
        "cargo", "bench", "-q", "-p", "bench", "--bench", bench, "--", *extra]
    subprocess.run(
        command,
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for est in criterion_dir.glob("**/new/estimates.json"):
        bench_json = est.parent / "benchmark.json"
        if not bench_json.exists():
            continue
        meta = json.loads(bench_json.read_text())
        name = meta["full_id"]
        if est.stat().st_mtime < started:
            continue  # not written by this run (another bench, or an earlier run)
        median_ns = json.loads(est.read_text())["median"]["point_estimate"]
        samples.setdefault(name, []).append(median_ns)
        if meta.get("throughput"):
            throughput[name] = meta["throughput"]
    print(f"run {run + 1}/{runs} done", file=sys.stderr)


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


def fmt_tp(name, ns):
    tp = throughput.get(name)
    if not tp:
        return ""
    if "Bytes" in tp:
        return f"{tp['Bytes'] / ns:.2f} GB/s"
    if "Elements" in tp:
        return f"{tp['Elements'] / ns * 1e3:.2f} M/s"
    return ""


print(f"| benchmark | median of {runs} run medians | throughput | spread |")
print("|---|---|---|---|")
for name in sorted(samples):
    vals = samples[name][-runs:]
    med = statistics.median(vals)
    print(
        f"| {name} | {fmt_time(med)} | {fmt_tp(name, med)} | "
        f"{fmt_time(min(vals))} .. {fmt_time(max(vals))} |"
    )
