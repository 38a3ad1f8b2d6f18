#!/usr/bin/env python3
"""CPU per request of two `isola-edge dev` builds, paired on one core.

Both builds serve the same workload at the same time, pinned to core 1,
each under its own `wrk -t1 -c50` on core 0 (`events_overhead.closed_loop`,
which the paired `serve` A/B uses), so whatever else the machine does falls
on both alike.
Each round reads every thread's time on CPU (/proc/PID/task/*/schedstat)
before and after a window and divides by the requests wrk counted; the
figure is the second build's CPU per request over the first's, per round
and its median. Sequential runs of one build spread by a third on this box;
two copies of one build read 1.003-1.008 here (2026-12-07, `hello`).

    python3 bench/dev_ab.py [--workload hello] [--rounds 4] [--window 12]
        [--warmup 30] BEFORE/isola-edge AFTER/isola-edge

Needs wrk and taskset. Kernel time is included (both builds make the same
system calls a request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import events_overhead  # noqa: E402  (its paired load and CPU counters)
import measure  # noqa: E402
import servers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--workload", default="hello", choices=sorted(servers.REQUESTS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--window", type=int, default=12, help="seconds measured a round")
    ap.add_argument("--warmup", type=int, default=30, help="seconds of load before the rounds")
    args = ap.parse_args()
    wdir = servers.WORKLOADS_DIR / args.workload
    servers.install_cleanup()
    edges = []
    with tempfile.TemporaryDirectory(prefix="isola-dev-ab-") as tmp:
        try:
            for label, binary in (("before", args.before), ("after", args.after)):
                port = servers.free_port()
                argv = [str(binary.resolve()), "dev", str(wdir / "worker.js"),
                        "--listen", f"127.0.0.1:{port}"]
                proc = servers.spawn(argv, None, dict(os.environ, ISOLA_LOG="warn"),
                                     cpus={1})
                edges.append((label, proc, port))
                if servers.wait_first_200(proc, port, 30) is None:
                    sys.exit(f"{binary} did not answer")
            script = measure.wrk_script(args.workload, Path(tmp), None)
            events_overhead.closed_loop(edges, args.workload, script, args.warmup)
            ratios = []
            for r in range(args.rounds):
                before = [sum(events_overhead.cpu_by_thread(p.pid).values()) for _, p, _ in edges]
                served = events_overhead.closed_loop(edges, args.workload, script, args.window)
                after = [sum(events_overhead.cpu_by_thread(p.pid).values()) for _, p, _ in edges]
                per = [(after[i] - before[i]) / served[i] for i in range(2)]
                ratios.append(per[1] / per[0])
                print(f"round {r + 1}: before {per[0] / 1000:.2f} µs/req ({served[0]} requests), "
                      f"after {per[1] / 1000:.2f} µs/req ({served[1]}), after/before "
                      f"{ratios[-1]:.3f}", flush=True)
            print(f"{args.workload}: after/before median {statistics.median(ratios):.3f} "
                  f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})")
        finally:
            for _, proc, _ in edges:
                servers.stop(proc)


if __name__ == "__main__":
    main()
