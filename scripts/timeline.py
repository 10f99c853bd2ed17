#!/usr/bin/env python3
"""Where one request's time goes through the tunnel, from syscall traces.

    scripts/timeline.py SERVER_TRACE CLIENT_TRACE

Reads two `perf script` outputs of `perf record -e raw_syscalls:sys_enter,
raw_syscalls:sys_exit` (scripts/perf-stat.sh --timeline makes them, with one
keep-alive connection) and prints, for the requests after the first tenth,
the median and 90th percentile of each step:

  server: the visitor's request read -> sent on to the client
  wake the client: that send -> the client has read it
  client: request read -> written to the local service
  local service round trip (both wake-ups included)
  client: response read -> sent on to the server
  wake the server: that send -> the server has read it
  server: response read -> written to the visitor

The sockets are told apart by the calls made on them: the server writes to
the visitor with writev (hyper) and to the client with send (tungstenite),
the client to the local service with writev and to the server with send.
"""
import collections
import platform
import re
import statistics
import sys

CALL = re.compile(
    r"\s(\d+)\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+)"
    r"(?: \(([0-9a-f]+)| = (-?\d+))?"
)
RECV = {0, 45}  # read, recvfrom
SEND, WRITEV = 44, 20  # sendto, writev


def load(path, who):
    """(time µs, process, "enter"/"exit", syscall, fd on enter, thread, result on exit)"""
    calls = []
    with open(path) as f:
        for line in f:
            m = CALL.search(line)
            if m:
                fd = int(m.group(5), 16) if m.group(5) else None
                ret = int(m.group(6)) if m.group(6) else None
                tid = int(m.group(1))
                calls.append((float(m.group(2)) * 1e6, who, m.group(3), int(m.group(4)), fd, tid, ret))
    return calls


def busiest_fd(calls, who, nr):
    fds = collections.Counter(c[4] for c in calls if c[1] == who and c[2] == "enter" and c[3] == nr)
    if not fds:
        sys.exit(f"no syscall {nr} of the {'server' if who == 'S' else 'client'} in the traces")
    return fds.most_common(1)[0][0]


def main():
    if platform.machine() != "x86_64":
        sys.exit("timeline.py knows the x86-64 syscall numbers only")
    calls = sorted(load(sys.argv[1], "S") + load(sys.argv[2], "C"))
    visitor, s_ws = busiest_fd(calls, "S", WRITEV), busiest_fd(calls, "S", SEND)
    local, c_ws = busiest_fd(calls, "C", WRITEV), busiest_fd(calls, "C", SEND)
    # (who, event, fd) in the order one request meets them.
    steps = [
        ("S", "recv", visitor), ("S", "send", s_ws), ("C", "recv", c_ws), ("C", "send", local),
        ("C", "recv", local), ("C", "send", c_ws), ("S", "recv", s_ws), ("S", "send", visitor),
    ]
    names = [
        "server: request read -> sent to the client",
        "wake the client: send -> read",
        "client: request read -> written to the service",
        "local service round trip",
        "client: response read -> sent to the server",
        "wake the server: send -> read",
        "server: response read -> written to the visitor",
    ]
    done, times, reading = [], [], {}
    for t, who, kind, nr, fd, tid, ret in calls:
        if kind == "enter" and nr in RECV:
            reading[tid] = fd
            continue
        if kind == "exit" and nr in RECV and tid in reading:
            # A read that found nothing (EAGAIN) or the end is no read done.
            event, fd = "recv", reading.pop(tid)
            if ret is None or ret <= 0:
                continue
        elif kind == "enter" and nr in (SEND, WRITEV):
            event = "send"
        else:
            continue
        if (who, event, fd) == steps[0]:
            times = [t]
        elif times and (who, event, fd) == steps[len(times)]:
            times.append(t)
            if len(times) == len(steps):
                done.append(times)
                times = []
    done = done[len(done) // 10:]
    if not done:
        sys.exit("no complete request found in the traces")
    print(f"one request's path, median and p90 over {len(done)} requests:")
    for i, name in enumerate(names):
        gaps = sorted(r[i + 1] - r[i] for r in done)
        print(f"  {name:50s} {statistics.median(gaps):6.1f} µs {gaps[len(gaps) * 9 // 10]:6.1f} µs")
    total = sorted(r[-1] - r[0] for r in done)
    print(f"  {'in the server, in to out':50s} {statistics.median(total):6.1f} µs {total[len(total) * 9 // 10]:6.1f} µs")


if __name__ == "__main__":
    main()
