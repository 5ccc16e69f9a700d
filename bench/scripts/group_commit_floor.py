#!/usr/bin/env python3
"""The best append-to-durable latency any group commit could reach on this disk.

Usage: group_commit_floor.py [BATCH_BYTES] [SECONDS] [RATE]
(defaults: 28672 B, the average batch of `log_bench`'s open loop at 500,000 appends/s of
200 B; 10 s; 500,000 appends/s).

It writes BATCH_BYTES with O_DIRECT into written zeros (no extent conversion, as the
log does into a zero-filled spare) and fdatasyncs, back to back, for SECONDS, and
timestamps every write + fdatasync. No encoding, no queues, no threads: the device alone.
Then it replays appends arriving evenly at RATE over that trace, under two ideal writers:

- serial group commit (what the log does): an append that arrives while batch k is being
  written goes into batch k+1, which starts the instant k's fdatasync returns, so it is
  durable when k+1's returns;
- one I/O per append, issued at arrival, never waiting for anything (a bound no ordered
  log reaches: it ignores that an ack must also wait for every earlier append).

Prints the disk's own per-batch latency (ops-weighted, as fio reports) and each writer's
append-to-durable p50/p99/p999 (time-weighted: an append is charged what it waits).
Measured in bench/RESULTS.md (log-engine, session 8)."""
import mmap
import os
import sys
import time

path = '/tmp/group_commit_floor.dat'
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 28672
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 500_000.0
block = 4096
batch = (batch + block - 1) // block * block
span = 1 << 30  # wraps around: the file stays written zeros, as a recycled spare is

try:
    os.unlink(path)
except FileNotFoundError:
    pass
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
zeros = mmap.mmap(-1, 4 << 20)
for off in range(0, span, len(zeros)):
    os.pwrite(fd, zeros, off)
os.fsync(fd)
buf = mmap.mmap(-1, batch)
buf.write(b'x' * batch)

starts, ends = [], []
off = 0
clock = time.perf_counter_ns
t_end = clock() + int(seconds * 1e9)
while True:
    t0 = clock()
    if t0 >= t_end:
        break
    os.pwrite(fd, buf, off)
    os.fdatasync(fd)
    t1 = clock()
    starts.append(t0)
    ends.append(t1)
    off = (off + batch) % span
os.close(fd)
os.unlink(path)


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def show(name, values_ns):
    v = sorted(values_ns)
    print(f"{name}: p50 {pct(v, 0.5) / 1e3:.0f} µs, p99 {pct(v, 0.99) / 1e3:.0f} µs, "
          f"p999 {pct(v, 0.999) / 1e3:.0f} µs, max {v[-1] / 1e3:.0f} µs")


n = len(starts)
durations = [e - s for s, e in zip(starts, ends)]
print(f"{n} batches of {batch} B in {seconds:.0f} s ({n / seconds:.0f}/s, "
      f"{n * batch / seconds / 1e6:.0f} MB/s); appends at {rate:.0f}/s replayed over them")
show("disk: one write + fdatasync (ops-weighted, like fio)", durations)

# Serial group commit: arrivals during batch k are durable at the end of batch k+1.
step = 1e9 / rate
serial, direct = [], []
k = 0
t = float(starts[0])
last = ends[-2]
while t < last:
    while ends[k] <= t:
        k += 1
    if starts[k] <= t:
        serial.append(ends[k + 1] - t)
    else:  # between two batches (the loop's own few µs): it joins the next one
        serial.append(ends[k] - t)
    # One I/O of its own, issued now: it takes as long as the batch in flight then.
    direct.append(durations[k])
    t += step
show("serial group commit, ideal (time-weighted)", serial)
show("an I/O per append at arrival, no ordering (bound)", direct)
