#!/usr/bin/env python3
"""The floor under bench/board.sh's CPU figures: the cheapest reader there is, one `cat` per pty,
woken by the same paced `temp=…,hum=…` lines, its run time read from /proc schedstat. What a wake-up
costs on this machine, before any parsing or MQTT.

Usage: bench/cat_floor.py PORTS HZ SECS   (e.g. 16 100 10)
"""
import os, subprocess, time, sys, tty
n, hz, secs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pairs = [os.openpty() for _ in range(n)]
for m, s in pairs:
    tty.setraw(s)
cats = [subprocess.Popen(["cat"], stdin=s, stdout=subprocess.DEVNULL) for m, s in pairs]
def run_ns():
    t = 0
    for c in cats:
        for task in os.listdir(f"/proc/{c.pid}/task"):
            t += int(open(f"/proc/{c.pid}/task/{task}/schedstat").read().split()[0])
    return t
time.sleep(1)
period = 1.0 / hz
t0 = time.monotonic(); before = run_ns(); k = 0
while time.monotonic() - t0 < secs:
    k += 1
    for i, (m, s) in enumerate(pairs):
        os.write(m, f"temp=2{k%10}.{i%10},hum={k}\r\n".encode())
    nxt = t0 + k * period
    d = nxt - time.monotonic()
    if d > 0: time.sleep(d)
el = time.monotonic() - t0; used = run_ns() - before
readings = k * n * 2
print(f"cat floor: {n} ptys x {hz} Hz: {used/1e6/el:.1f} ms CPU per s ({100*used/1e9/el:.2f} %), {used/1e3/readings:.2f} us per reading (2 fields a line)")
for c in cats: c.kill()
