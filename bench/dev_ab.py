#!/usr/bin/env python3
"""CPU per request of two `isola-edge dev` builds, paired on one core.

Both builds serve the same workload at the same time, pinned to the server
core (`SERVER_CPU`, 1), each under its own `wrk -t1 -c50` on the load core
(`LOAD_CPU`, 0), so whatever else the machine does falls on both alike.
Each round reads every thread's time on CPU (/proc/PID/task/*/schedstat)
before and after a window and divides by the requests wrk counted; the
figure is the second build's CPU per request over the first's, per round
and its median. Sequential runs of one build spread by a third on this box;
two copies of one build read 1.003-1.008 here (2026-12-07, `hello`).

    python3 bench/dev_ab.py [--workload hello] [--rounds 4] [--window 12]
        [--warmup 30] BEFORE/isola-edge AFTER/isola-edge

Needs wrk and taskset (for wrk). Kernel time is included (both builds make the same
system calls a request).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402


def cpu_ns(pid: int) -> int:
    """Every thread's time on CPU so far."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--workload", default="hello", choices=sorted(servers.REQUESTS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=12, help="seconds measured a round")
    ap.add_argument("--warmup", type=int, default=30, help="seconds of load before the rounds")
    args = ap.parse_args()
    server_cpu, load_cpu = os.environ.get("SERVER_CPU", "1"), os.environ.get("LOAD_CPU", "0")
    wdir = servers.WORKLOADS_DIR / args.workload
    script = ["-s", str(wdir / "wrk.lua")] if (wdir / "wrk.lua").exists() else []
    servers.install_cleanup()
    edges = []
    for binary in (args.before, args.after):
        port = servers.free_port()
        argv = [str(binary.resolve()), "dev", str(wdir / "worker.js"),
                "--listen", f"127.0.0.1:{port}"]
        proc = servers.spawn(argv, None, dict(os.environ, ISOLA_LOG="warn"),
                             cpus={int(server_cpu)})
        if servers.wait_first_200(proc, port, 30) is None:
            sys.exit(f"{binary} did not answer")
        edges.append((proc, port))

    def load(secs: int) -> list[int]:
        """Both edges under load at once; the requests each one served."""
        wrks = [subprocess.Popen(["taskset", "-c", load_cpu, "wrk", "-t1", "-c50",
                                  f"-d{secs}s", *script, f"http://127.0.0.1:{port}/"],
                                 stdout=subprocess.PIPE, text=True) for _, port in edges]
        counts = []
        for w in wrks:
            m = re.search(r"(\d+) requests in", w.communicate()[0])
            counts.append(int(m.group(1)) if m else 0)
        return counts

    try:
        load(args.warmup)
        ratios = []
        for r in range(args.rounds):
            before = [cpu_ns(p.pid) for p, _ in edges]
            served = load(args.window)
            after = [cpu_ns(p.pid) for p, _ in edges]
            if 0 in served:
                sys.exit(f"round {r + 1}: wrk counted no request of one build")
            per = [(after[i] - before[i]) / served[i] for i in range(2)]
            ratios.append(per[1] / per[0])
            print(f"round {r + 1}: before {per[0] / 1000:.2f} µs/req ({served[0]} requests), "
                  f"after {per[1] / 1000:.2f} µs/req ({served[1]}), after/before "
                  f"{ratios[-1]:.3f}", flush=True)
        print(f"{args.workload}: after/before median {statistics.median(ratios):.3f} "
              f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})")
    finally:
        for proc, _ in edges:
            servers.stop(proc)


if __name__ == "__main__":
    main()
