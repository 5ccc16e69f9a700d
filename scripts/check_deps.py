#!/usr/bin/env python3
"""Checks the one-way dependency rule between Confab's crates (docs/architecture.md).

wire, log-engine, tuning: depend on nothing of ours. router -> wire.
gateway -> wire, router, log-engine. loadgen -> wire. bench -> wire, log-engine, router.
Nothing depends on gateway, loadgen, bench or tuning.
"""
import json
import subprocess
import sys

ALLOWED = {
    "wire": set(),
    "log-engine": set(),
    "tuning": set(),
    "router": {"wire"},
    "gateway": {"wire", "router", "log-engine"},
    "loadgen": {"wire"},
    "bench": {"wire", "log-engine", "router"},
}

meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"]
    )
)
ours = {p["name"] for p in meta["packages"]}
unknown = ours - set(ALLOWED)
failures = [f"crate {name} is not in the dependency rule" for name in sorted(unknown)]
for package in meta["packages"]:
    name = package["name"]
    deps = {d["name"] for d in package["dependencies"] if d["name"] in ours}
    # Dev-dependencies on our own crates count too: tests must not invert the graph.
    extra = deps - ALLOWED.get(name, set())
    for dep in sorted(extra):
        failures.append(f"{name} must not depend on {dep}")
if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"ok: {len(ours)} crates follow the dependency rule")
