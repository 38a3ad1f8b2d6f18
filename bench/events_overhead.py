#!/usr/bin/env python3
"""Trace events' cost on the edge, measured paired (issue #15's ≤ 5 %).

Two `isola-edge serve` processes run at the same time on the same core,
enrolled with one control plane that routes the same workers: one ships
trace events, the other has `trace_events = false`. An open-loop load
(oha, RATE/2 req/s each, on the other core with the control plane) hits
both at once, so whatever else the shared machine does falls on both
alike; each round swaps the two enrolled identities. The figure is the
ratio of the two processes' CPU time per request (every thread: request
threads, the shipper, the watchdog), read from /proc/PID/task/*/schedstat.

Sequential A/B runs on this 2-core VM spread ±20 % between identical
processes; these paired rounds agree within about a per cent.

    ISOLA_EDGE=target/release/isola-edge ISOLA_CONTROL=target/release/isola-control \\
      bench/events_overhead.py            # hello, 100 workers, 4 rounds

Environment: WORKLOAD (hello), WORKERS (100 routed copies; requests pick
one at random), ONE=1 (every request to the first worker: warm hello),
RATE (10000 req/s in all), WINDOW (15 s measured per round, after 8 s of
warm-up), ROUNDS (4), OTHER_EDGE (a second binary for the events-off
side, to compare two builds with events on: OTHER_EVENTS=1).

LOAD=closed gives each edge its own `wrk -t1 -c50` instead (WARMUP s of it
first, 20 by default): both edges busy, so whatever a thread saves between
requests that arrive back to back shows, which an open-loop rate below
capacity (each request a turn of its own, the thread asleep between them)
cannot show. Requests are then wrk's count, not the offered rate. The
usual A/B of two builds:

    LOAD=closed OTHER_EDGE=/tmp/after/isola-edge OTHER_EVENTS=1 \
      ISOLA_EDGE=/tmp/before/isola-edge bench/events_overhead.py
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import measure  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402


def cpu_by_thread(pid: int) -> dict[str, int]:
    """ns on CPU so far per thread group: the V8 request threads, the main
    runtime (the trace shipper, QUIC, usage), and the rest."""
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except OSError:
            continue
        group = ("v8" if comm.startswith("isola-v8")
                 else "main" if comm.startswith("isola-edge") else "other")
        out[group] = out.get(group, 0) + ns
    return out


def paired(control: Path, edge: Path, workload: str, workers: int, one: bool,
           rate: int, window: float, rounds: int, logs: Path,
           other_edge: Path | None = None, other_events: bool = False,
           say=print, closed_warmup: int | None = None) -> dict:
    """Paired rounds of two edges side by side (see the module's doc);
    `rate` is the offered req/s in all, or with `closed_warmup` (seconds)
    each edge gets a closed-loop wrk instead. Returns the per-side CPU µs
    per request by thread group, each round's difference and their median;
    raises RuntimeError when an edge does not come up or a load fails."""
    half = rate // 2
    sides = [("events on", edge, True),
             ("events on (other)" if other_events else "events off",
              other_edge or edge, other_events)]
    site = servers.ServeSite(control, edge, workload, workers, logs, {0}, 19)
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in sides}
    ratios = []
    try:
        site.start_control(30)
        site.upload_all()
        for i in range(2):
            site.enroll(f"bench-edge-{i}", f"edge{i}")
        hosts = site.hosts()[:1] if one else site.hosts()
        for rnd in range(rounds):
            procs = []
            for i, (label, binary, events) in enumerate(sides):
                port = servers.free_port()
                argv = site.edge_argv(port, 1, events, identity=(i + rnd) % 2, binary=binary)
                proc = servers.spawn(argv,
                                     logs / f"events-ab-edge{i}-{rnd}.log", None, {1})
                procs.append((label, proc, port))
            try:
                for label, proc, port in procs:
                    err = site.wait_all_served(proc, port, 60)
                    if err:
                        raise RuntimeError(f"{label}: {err}")
                if closed_warmup is None:
                    load = [subprocess.Popen(["taskset", "-c", "0"] + measure.oha_argv(
                        port, workload, half, int(window) + 13, hosts, logs),
                        stdout=subprocess.DEVNULL) for _, _, port in procs]
                    time.sleep(8)
                    before = [cpu_by_thread(p.pid) for _, p, _ in procs]
                    t0 = time.monotonic()
                    time.sleep(window)
                    after = [cpu_by_thread(p.pid) for _, p, _ in procs]
                    t1 = time.monotonic()
                    for o in load:
                        o.wait()
                    counts = [(t1 - t0) * half] * 2
                else:
                    script = measure.wrk_script(workload, logs, hosts)
                    closed_loop(procs, workload, script, closed_warmup)
                    before = [cpu_by_thread(p.pid) for _, p, _ in procs]
                    counts = closed_loop(procs, workload, script, int(window))
                    after = [cpu_by_thread(p.pid) for _, p, _ in procs]
            finally:
                for _, proc, _ in procs:
                    servers.stop(proc)
            row = {}
            for (label, _, _), a, b, n in zip(procs, before, after, counts):
                us = {g: (b.get(g, 0) - a.get(g, 0)) / n / 1000 for g in b}
                us["total"] = sum(us.values())
                results[label].append(us)
                row[label] = us["total"]
            (la, _, _), (lb, _, _) = sides
            ratios.append(row[la] / row[lb] - 1)
            say(f"round {rnd + 1}: {la} {row[la]:.2f} µs/req, {lb} {row[lb]:.2f} µs/req, "
                f"{ratios[-1] * 100:+.1f} %")
    finally:
        site.stop()
    sides_med = {label: {k: statistics.median(r.get(k, 0.0) for r in rows)
                         for k in ("v8", "main", "other", "total")}
                 for label, rows in results.items()}
    return {"workload": workload, "workers": workers, "one": one, "rate": rate,
            "window_s": window, "rounds": ratios, "median": statistics.median(ratios),
            "sides": sides_med, "labels": [label for label, _, _ in sides]}


def closed_loop(procs, workload: str, script: Path, secs: int) -> list[int]:
    """Runs one closed-loop wrk per edge at once (on the load core); returns
    each one's request count."""
    load = [subprocess.Popen(
        ["taskset", "-c", "0"] + measure.wrk_argv(port, workload, script, secs, 1),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _, _, port in procs]
    counts = []
    for (label, _, _), w in zip(procs, load):
        out, err = w.communicate(timeout=secs + 60)
        r = measure.parse_wrk(w.returncode, out, err)
        if "error" in r or r["requests"] == 0 or r["errors"]:
            raise RuntimeError(f"{label}: wrk: {r.get('error') or r.get('err_detail')}")
        counts.append(r["requests"])
    return counts


def main() -> int:
    edge = Path(os.environ.get("ISOLA_EDGE", "/root/.cache/isola-target/release/isola-edge"))
    control = Path(os.environ.get("ISOLA_CONTROL",
                                  "/root/.cache/isola-target/release/isola-control"))
    other = os.environ.get("OTHER_EDGE")
    workload = os.environ.get("WORKLOAD", "hello")
    workers = int(os.environ.get("WORKERS", "100"))
    rate = int(os.environ.get("RATE", "10000"))
    window = float(os.environ.get("WINDOW", "15"))
    rounds = int(os.environ.get("ROUNDS", "4"))
    closed = os.environ.get("LOAD", "open") == "closed"
    closed_warmup = int(os.environ.get("WARMUP", "20")) if closed else None
    logs = Path(tempfile.mkdtemp(prefix="isola-events-ab-"))
    try:
        res = paired(control, edge, workload, workers, os.environ.get("ONE") == "1", rate,
                     window, rounds, logs, Path(other) if other else None,
                     os.environ.get("OTHER_EVENTS") == "1",
                     say=lambda line: print(line, flush=True), closed_warmup=closed_warmup)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"\n{workload}, {'1 worker' if res['one'] else f'{workers} workers'} of {workers}, "
          + ("closed loop (wrk -c50 each)" if closed else f"{rate} req/s in all")
          + f", {rounds} rounds of {window:.0f} s; CPU µs per request, "
          "medians:\n")
    print("\n".join(report.render_event_sides(res)))
    print(f"\npaired difference: median {res['median'] * 100:+.1f} % "
          f"(rounds: {', '.join(f'{r * 100:+.1f} %' for r in res['rounds'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
