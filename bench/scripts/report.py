#!/usr/bin/env python3
"""Write a benchmark report: `report.json` and `report.md` in an output directory.

Used by `bench/scenario.sh` and `bench/capacity.sh`. The report holds the machine
description (read here, from /proc and uname), the exact commands that ran, the server
configuration, and every loadgen `--json` result given, unchanged in the JSON and as
tables in the Markdown.

    report.py --out-dir DIR --title TITLE --command CMD [--command CMD ...]
              --result NAME=FILE.json [--result NAME=FILE.json ...]
              [--config FILE] [--note TEXT ...]

A result file that is missing or not JSON is reported as such (the run failed); the
script still writes the report and exits 0, so the caller's own status decides.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys


def machine():
    """What the figures were measured on."""
    info = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cores_online": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 1048576, 1)
                    break
    except OSError:
        pass
    for key, path in [
        ("thp_enabled", "/sys/kernel/mm/transparent_hugepage/enabled"),
        ("port_range", "/proc/sys/net/ipv4/ip_local_port_range"),
        ("somaxconn", "/proc/sys/net/core/somaxconn"),
    ]:
        try:
            with open(path) as f:
                info[key] = " ".join(f.read().split())
        except OSError:
            pass
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        info["open_files_limit"] = {"soft": soft, "hard": hard}
    except (ImportError, OSError, ValueError):
        pass
    info["load_average"] = list(os.getloadavg())
    return info


def git_commit():
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=False,
        )
        commit = out.stdout.strip() or None
        if commit and dirty.stdout.strip():
            commit += " (with uncommitted changes)"
        return commit
    except OSError:
        return None


def load_result(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        return {"error": f"no result: {e}"}
    # loadgen prints one JSON object; take the last non-empty line that parses.
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {"error": "result is not JSON", "output": text[-2000:]}


def flatten(value, prefix=""):
    """(dotted key, scalar) pairs of a JSON value, in document order."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and value and all(isinstance(x, (dict, list)) for x in value):
        for i, v in enumerate(value):
            yield from flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def cell(value):
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    return str(value).replace("|", "\\|")


def markdown(report):
    lines = [f"# {report['title']}", ""]
    lines.append(f"- date (UTC): {report['date']}")
    if report.get("commit"):
        lines.append(f"- commit: {report['commit']}")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    for key, value in flatten(report["machine"]):
        lines.append(f"| {key} | {cell(value)} |")
    lines += ["", "## Commands", "", "```sh"]
    lines += report["commands"]
    lines += ["```", ""]
    if report.get("config") is not None:
        lines += ["## Server configuration", "", "```toml", report["config"].rstrip(), "```", ""]
    for name, result in report["results"].items():
        lines += [f"## Result: {name}", "", "| figure | value |", "|---|---|"]
        for key, value in flatten(result):
            lines.append(f"| {key} | {cell(value)} |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--command", action="append", default=[])
    parser.add_argument("--result", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--config")
    parser.add_argument("--note", action="append", default=[])
    args = parser.parse_args()

    results = {}
    for spec in args.result:
        name, sep, path = spec.partition("=")
        if not sep:
            sys.exit(f"report.py: --result wants NAME=FILE, got {spec!r}")
        results[name] = load_result(path)
    config = None
    if args.config:
        try:
            with open(args.config) as f:
                config = f.read()
        except OSError as e:
            config = f"# could not read {args.config}: {e}"
    report = {
        "title": args.title,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "machine": machine(),
        "commands": args.command,
        "config": config,
        "notes": args.note,
        "results": results,
    }
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write(markdown(report))
        f.write("\n")
    print(f"report: {args.out_dir}/report.md and report.json")


if __name__ == "__main__":
    main()
