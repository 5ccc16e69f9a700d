#!/usr/bin/env python3
"""Does overlapping fdatasync with the next O_DIRECT write raise a log's write bandwidth?

Usage: overlap_sync.py serial|overlap [CHUNKS]  (4 MiB chunks into a fallocated /tmp/ovl.dat).
`serial`: write + fdatasync per chunk, as the log I/O thread does; `overlap`: a second thread
syncs while the next chunk is written (at most one unsynced chunk besides it). Prints MB/s.
Measured in bench/RESULTS.md (log-engine, session 5)."""
import os, mmap, threading, time, sys
path='/tmp/ovl.dat'; CH=4<<20; N=int(sys.argv[2]) if len(sys.argv)>2 else 200
mode=sys.argv[1]
try: os.unlink(path)
except FileNotFoundError: pass
fd=os.open(path, os.O_RDWR|os.O_CREAT|os.O_DIRECT, 0o644)
os.posix_fallocate(fd, 0, CH*N)
os.fsync(fd)
buf=mmap.mmap(-1, CH); buf.write(b'x'*CH)
t0=time.time()
if mode=='serial':
    for i in range(N):
        os.pwrite(fd, buf, i*CH); os.fdatasync(fd)
else:
    cv=threading.Condition(); written=[0]; synced=[0]; done=[False]
    def syncer():
        while True:
            with cv:
                while written[0]==synced[0] and not done[0]: cv.wait()
                if written[0]==synced[0] and done[0]: return
                upto=written[0]
            os.fdatasync(fd)
            with cv: synced[0]=upto; cv.notify_all()
    th=threading.Thread(target=syncer); th.start()
    for i in range(N):
        with cv:
            while i - synced[0] > 1: cv.wait()   # at most one unsynced batch besides this one
        os.pwrite(fd, buf, i*CH)
        with cv: written[0]=i+1; cv.notify_all()
    with cv: done[0]=True; cv.notify_all()
    th.join()
dt=time.time()-t0
print(mode, f"{CH*N/dt/1e6:.0f} MB/s")
os.close(fd); os.unlink(path)
