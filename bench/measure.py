#!/usr/bin/env python3
"""Isola benchmark harness, measuring side: runs the servers and writes raw JSON.

For each workload: start every server (servers.py) pinned to SERVER_CPU,
check one reply from each and warm each up with wrk; then RUNS rounds of
closed-loop wrk runs (pinned to LOAD_CPU) for throughput and server CPU per
request, each server once a round, then RUNS rounds of open-loop oha runs at
LATENCY_FRACTION of raw hyper's measured req/s for latency. Then the
`isola-edge serve` cells one after another, and, optionally: thread scaling
of `isola-edge serve` with wrk and the server sharing every core, process
start -> first 200, trace events' cost measured paired (events_overhead.py),
and the runtime's density bench. Writes bench/results/<stamp>.json (every
run's numbers) and renders <stamp>.md with report.py.

Normally started by bench/run.sh, which installs the tools and builds the
binaries first. Configured through environment variables (bench/README.md).
Standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import link_order
import report
import servers
from servers import BENCH, WORKLOADS_DIR

ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FORMAT = 2  # of the JSON; report.py reads 1 (run.py's) and 2


# --------------------------------------------------------------------------
# configuration


def env_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        sys.exit(f"{name}={raw!r} is not a whole number")
    if not lo <= value <= hi:
        sys.exit(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        sys.exit(f"{name}={raw!r} is not a number")
    if not lo <= value <= hi:
        sys.exit(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def env_list(name: str, default: list[str], allowed: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if not raw:
        return default
    items = [x.strip() for x in raw.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        sys.exit(f"{name}: unknown {bad}; choose from {allowed}")
    return items


def env_ints(name: str, default: list[int]) -> list[int]:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        out = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"{name}={raw!r}: want comma-separated whole numbers, like 1,2")
    if not out or any(not 1 <= x <= 256 for x in out):
        sys.exit(f"{name}={raw!r}: each must be in [1, 256]")
    return out


ALL_SERVERS = ["hyper", "isola", "serve", "deno", "workerd"]
ALL_WORKLOADS = ["hello", "json", "echo"]

CFG = {
    "runs": env_int("RUNS", 3, 1, 50),
    "duration_s": env_int("DURATION", 8, 1, 300),
    "warmup_s": env_int("WARMUP", 3, 0, 120),
    # Cells whose load is spread over many workers (Host names or tenants):
    # each isolate gets a share of it, and V8 tiers a function up by the
    # bytecode it has run in that isolate, so the warm-up is counted in
    # requests per worker: at least WARMUP_SPREAD s, then until each worker
    # has had WARMUP_SPREAD_REQUESTS (serve, 100 workers, json: Maglev code
    # and 26 µs a request after 20 s at ~35k req/s, TurboFan and 19 µs after
    # 90 s), at most WARMUP_SPREAD_MAX s.
    "warmup_spread_s": env_int("WARMUP_SPREAD", 30, 0, 600),
    "warmup_spread_requests": env_int("WARMUP_SPREAD_REQUESTS", 40_000, 0, 10_000_000),
    "warmup_spread_max_s": env_int("WARMUP_SPREAD_MAX", 300, 0, 3600),
    "connections": env_int("CONNECTIONS", 50, 1, 10000),
    "threads": env_int("THREADS", 1, 1, 64),
    "startup_runs": env_int("STARTUP_RUNS", 15, 0, 200),
    "wrk_timeout": os.environ.get("WRK_TIMEOUT", "5s"),
    "server_cpu": env_int("SERVER_CPU", 1, 0, 4095),
    "load_cpu": env_int("LOAD_CPU", 0, 0, 4095),
    "ready_timeout_s": env_float("READY_TIMEOUT", 30.0, 1.0, 600.0),
    "quiet_max": env_float("QUIET_MAX", 0.15, 0.0, 64.0),
    "quiet_wait_s": env_int("QUIET_WAIT", 300, 0, 7200),
    "quiet_budget_s": env_int("QUIET_BUDGET", 1800, 0, 86400),
    "noisy_retries": env_int("NOISY_RETRIES", 3, 0, 50),
    "servers": env_list("SERVERS", ALL_SERVERS, ALL_SERVERS),
    "workloads": env_list("WORKLOADS", ALL_WORKLOADS, ALL_WORKLOADS),
    # open loop (latency columns)
    "latency": env_int("LATENCY", 1, 0, 1),
    "latency_fraction": env_float("LATENCY_FRACTION", 0.5, 0.01, 2.0),
    "latency_rate": env_float("LATENCY_RATE", 0.0, 0.0, 10_000_000.0),
    "latency_duration_s": env_int("LATENCY_DURATION", 0, 0, 300),
    "latency_connections": env_int("LATENCY_CONNECTIONS", 0, 0, 10000),
    # isola-edge serve
    "serve_workers": env_int("SERVE_WORKERS", 100, 1, 10000),
    "serve_threads": env_int("SERVE_THREADS", 1, 1, 256),
    "serve_events_ab": env_int("SERVE_EVENTS_AB", 0, 0, 1) == 1,
    "serve_ready_timeout_s": env_float("SERVE_READY_TIMEOUT", 120.0, 1.0, 3600.0),
    "control_nice": env_int("CONTROL_NICE", 19, 0, 19),
    # Paired rounds of trace events on vs off (events_overhead.py), on
    # `hello`: rounds per setting (0: skip), seconds measured per round.
    "events_rounds": env_int("EVENTS_ROUNDS", 3, 0, 20),
    "events_window_s": env_float("EVENTS_WINDOW", 10.0, 1.0, 600.0),
    "events_rate": env_int("EVENTS_RATE", 10000, 100, 1000000),
    # thread scaling (unpinned)
    "scaling": env_int("SCALING", 1, 0, 1),
    "scaling_threads": env_ints("SCALING_THREADS", [1, 2]),
    "scaling_wrk_threads": env_int("SCALING_WRK_THREADS", 2, 1, 64),
    # Tenants (`hello`, closed-loop oha): isola-edge serve with this many of
    # its workers taking turns, and deno serve as one process per tenant
    # (1 and the most of these), the way deno isolates tenants. Empty: skip.
    "tenants": env_ints("TENANTS", [1, 10, 25, 50, 100]) if os.environ.get("TENANTS") != "0"
    else [],
}
# Not a knob: tells the report that the single-process servers were
# measured side by side (bench_cells), not each in a cell of its own.
CFG["rounds"] = True
CFG["latency_duration_s"] = CFG["latency_duration_s"] or CFG["duration_s"]
CFG["latency_connections"] = CFG["latency_connections"] or CFG["connections"]

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/root/.cache/isola-target"))
PEERS = Path(os.environ.get("PEERS_DIR", BENCH / ".peers"))
BINS = {
    "hyper": Path(os.environ.get(
        "HYPER_BASELINE", TARGET / "bench-hyper-baseline/release/hyper-baseline")),
    "isola": Path(os.environ.get("ISOLA_EDGE", TARGET / "release/isola-edge")),
    "control": Path(os.environ.get("ISOLA_CONTROL", TARGET / "release/isola-control")),
    "deno": Path(os.environ.get("DENO", PEERS / "node_modules/@deno/linux-x64-glibc/deno")),
    "workerd": Path(os.environ.get(
        "WORKERD", PEERS / "node_modules/@cloudflare/workerd-linux-64/bin/workerd")),
}
OHA = os.environ.get("OHA") or (
    str(BENCH / ".tools/bin/oha") if (BENCH / ".tools/bin/oha").exists() else shutil.which("oha"))
BIN_NOTES: dict[str, str] = {}
PIN = False
QUIET_SPENT = 0.0


def server_cpus() -> set[int] | None:
    return {CFG["server_cpu"]} if PIN else None


def load_cpus() -> set[int] | None:
    return {CFG["load_cpu"]} if PIN else None


ALL_CPUS: set[int] = set()


# --------------------------------------------------------------------------
# machine counters


def proc_cpu_ticks(pid: int) -> int | None:
    """utime + stime of the whole process (all threads), in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def proc_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_ticks() -> int:
    """Non-idle clock ticks of all CPUs together (/proc/stat "cpu" line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle  # user..steal; guest time is already in user


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def background_load(seconds: float = 2.0) -> float:
    """CPU used by everything on the machine over `seconds`, in cores."""
    b0 = machine_busy_ticks()
    time.sleep(seconds)
    return (machine_busy_ticks() - b0) / CLK_TCK / seconds


def wait_for_quiet(idle_procs: list[int] = ()) -> str | None:
    """Wait (bounded by QUIET_WAIT s) until other processes use < QUIET_MAX cores.
    `idle_procs` (a control plane left running) are not counted."""
    global QUIET_SPENT
    limit = CFG["quiet_max"]
    budget = min(CFG["quiet_wait_s"], max(0.0, CFG["quiet_budget_s"] - QUIET_SPENT))
    t0 = time.monotonic()

    def load() -> float:
        own0 = sum(proc_cpu_ticks(p) or 0 for p in idle_procs)
        b0 = machine_busy_ticks()
        time.sleep(1.0)
        own = sum(proc_cpu_ticks(p) or 0 for p in idle_procs) - own0
        return max(0.0, (machine_busy_ticks() - b0 - own) / CLK_TCK)

    busy = load()
    while busy > limit and time.monotonic() - t0 < budget:
        print(f"\n  machine busy ({busy:.2f} cores in use by other processes); waiting...",
              end="", flush=True)
        time.sleep(4)
        busy = load()
    waited = time.monotonic() - t0
    QUIET_SPENT += waited
    if busy > limit:
        return (f"the machine was busy before the start ({busy:.2f} cores in use by "
                f"other processes after waiting {waited:.0f} s)")
    return None


def with_cpus(argv: list[str], cpus: set[int] | None) -> list[str]:
    if not cpus:
        return argv
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))] + argv


# --------------------------------------------------------------------------
# load generators


RESULT_RE = re.compile(r"ISOLA_BENCH_RESULT (.*)")


def wrk_script(workload: str, out_dir: Path, hosts: list[str] | None) -> Path:
    """The workload's wrk.lua (+ hosts.lua spreading requests over `hosts`)
    + report.lua, which prints one machine-readable line."""
    name = f"wrk-{workload}" + (f"-{len(hosts)}hosts" if hosts else "")
    path = out_dir / f"{name}.lua"
    src = (WORKLOADS_DIR / workload / "wrk.lua").read_text()
    if hosts:
        src += "\nbench_hosts = {" + ", ".join(json.dumps(h) for h in hosts) + "}\n"
        src += (BENCH / "hosts.lua").read_text()
    src += "\n" + (BENCH / "report.lua").read_text()
    path.write_text(src)
    return path


def wrk_argv(port: int, workload: str, script: Path, duration_s: int, threads: int) -> list[str]:
    path = servers.REQUESTS[workload][1]
    return ["wrk", f"-t{threads}", f"-c{CFG['connections']}", f"-d{duration_s}s",
            "--latency", "--timeout", CFG["wrk_timeout"], "-s", str(script),
            f"http://127.0.0.1:{port}{path}"]


def parse_wrk(returncode: int, stdout: str, stderr: str) -> dict:
    """A finished wrk's counts from report.lua's line, or {"error": ...}."""
    m = RESULT_RE.search(stdout)
    if returncode != 0 or not m:
        return {"error": f"wrk exit {returncode}: {(stderr or stdout)[-400:]}"}
    r = {}
    for kv in m.group(1).split():
        k, _, v = kv.partition("=")
        r[k] = float(v)
    errors = {k: int(v) for k, v in r.items() if k.startswith("err_") and v}
    return {
        "requests": int(r["requests"]), "duration_s": r["duration_us"] / 1e6,
        "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000, "p999_ms": r["p999_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "errors": sum(errors.values()), "err_detail": errors, "stdout": stdout,
    }


def run_wrk(port: int, workload: str, script: Path, duration_s: int, threads: int,
            cpus: set[int] | None) -> dict:
    argv = wrk_argv(port, workload, script, duration_s, threads)
    try:
        cp = subprocess.run(with_cpus(argv, cpus), capture_output=True, text=True,
                            timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish in time"}
    return parse_wrk(cp.returncode, cp.stdout, cp.stderr)


def oha_argv(port: int, workload: str, rate: float | None, duration_s: int,
             hosts: list[str] | None, out_dir: Path, ports: list[int] | None = None) -> list[str]:
    """oha's argv: open loop at `rate`, or closed loop (rate None) over
    CONNECTIONS; to `port`, spread over `hosts` there, or over `ports`."""
    method, path, headers, body = servers.REQUESTS[workload]
    argv = [OHA, "--no-tui", "--output-format", "json", "-z", f"{duration_s}s"]
    if rate is None:
        argv += ["-c", str(CFG["connections"])]
    else:
        argv += ["-q", f"{rate:.0f}", "--latency-correction",
                 "-c", str(CFG["latency_connections"])]
    argv += ["--disable-compression", "--redirect", "0", "-t", CFG["wrk_timeout"], "-m", method]
    if PIN:
        argv += ["--worker-threads", "1"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    if body:
        body_file = out_dir / f"oha-{workload}.body"
        body_file.write_bytes(body)
        argv += ["-D", str(body_file)]
    if ports:
        # One server process per port (deno's tenants); kept-alive as below.
        urls = out_dir / f"oha-{workload}-{len(ports)}ports.urls"
        urls.write_text("".join(f"http://127.0.0.1:{p}{path}\n" for p in ports))
        argv += ["--urls-from-file", str(urls)]
    elif hosts:
        # Each request picks one of the URLs at random; --connect-to sends
        # every name to the server, on kept-alive connections.
        urls = out_dir / f"oha-{workload}-{len(hosts)}hosts.urls"
        urls.write_text("".join(f"http://{h}{path}\n" for h in hosts))
        for h in hosts:
            argv += ["--connect-to", f"{h}:80:127.0.0.1:{port}"]
        argv += ["--urls-from-file", str(urls)]
    else:
        argv.append(f"http://127.0.0.1:{port}{path}")
    return argv


def run_oha(port: int, workload: str, rate: float | None, duration_s: int,
            hosts: list[str] | None, out_dir: Path, cpus: set[int] | None,
            ports: list[int] | None = None) -> dict:
    argv = oha_argv(port, workload, rate, duration_s, hosts, out_dir, ports)
    try:
        cp = subprocess.run(with_cpus(argv, cpus), capture_output=True, text=True,
                            timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        return {"error": "oha did not finish in time"}
    try:
        j = json.loads(cp.stdout)
    except ValueError:
        return {"error": f"oha exit {cp.returncode}: {(cp.stderr or cp.stdout)[-400:]}"}
    lat = j.get("latencyPercentiles", {})
    statuses = {str(k): int(v) for k, v in j.get("statusCodeDistribution", {}).items()}
    # Requests still in flight when the duration ends are cut off, not failed.
    errs = {k: int(v) for k, v in j.get("errorDistribution", {}).items()
            if "deadline" not in k}
    answered = sum(statuses.values())
    bad = sum(v for k, v in statuses.items() if not k.startswith(("2", "3")))
    secs = j["summary"]["total"]
    return {
        "offered_rps": rate, "requests": answered, "duration_s": secs,
        "achieved_rps": answered / secs if secs else 0.0,
        "p50_ms": lat.get("p50", 0) * 1000, "p90_ms": lat.get("p90", 0) * 1000,
        "p99_ms": lat.get("p99", 0) * 1000, "p999_ms": lat.get("p99.9", 0) * 1000,
        "max_ms": j["summary"]["slowest"] * 1000 if j["summary"].get("slowest") else None,
        "errors": sum(errs.values()) + bad, "err_detail": {**errs, **{
            f"status {k}": v for k, v in statuses.items() if not k.startswith(("2", "3"))}},
        "stdout": cp.stdout,
    }


# --------------------------------------------------------------------------
# cells


class Target:
    """A started server: its process (and `more`, counted with it: deno's
    tenants), port, the Host names to spread requests over (None: the
    default host), and a control plane whose CPU is counted apart."""

    def __init__(self, proc, port, log_path, hosts=None, control=None, more=(), isolates=None):
        self.proc, self.port, self.log_path = proc, port, log_path
        self.hosts, self.control = hosts, control
        self.procs = [proc, *more]
        # () -> the worker isolates serving `hosts` now (an edge's replicas
        # on other threads count apart), or None where it cannot say.
        self.isolates = isolates

    def cpu_ticks(self) -> int | None:
        ticks = [proc_cpu_ticks(p.pid) for p in self.procs]
        return None if None in ticks else sum(ticks)

    def rss_kib(self) -> int | None:
        rss = [proc_rss_kib(p.pid) for p in self.procs]
        return None if None in rss else sum(rss)

    def exited(self) -> int | None:
        """The exit status of a process that has exited, if one has."""
        return next((rc for rc in (p.poll() for p in self.procs) if rc is not None), None)

    def stop(self) -> None:
        for p in self.procs:
            servers.stop(p)


def measured(target: Target, load) -> tuple[dict | None, str | None]:
    """Runs `load()` (one wrk or oha run) and adds the CPU the server, the
    control plane, the load generator and everything else used meanwhile."""
    cpid = target.control.pid if target.control else None
    t0, k0 = target.cpu_ticks(), proc_cpu_ticks(cpid) if cpid else None
    b0, c0 = machine_busy_ticks(), children_cpu_s()
    r = load()
    t1 = target.cpu_ticks() if target.exited() is None else None
    k1 = proc_cpu_ticks(cpid) if cpid else None
    b1, c1 = machine_busy_ticks(), children_cpu_s()
    if "error" in r:
        return None, r["error"]
    secs = r["duration_s"]
    run = dict(r)
    run["rps"] = r["requests"] / secs if secs else 0.0
    if t0 is not None and t1 is not None and r["requests"] and secs:
        cpu_s = (t1 - t0) / CLK_TCK
        control_s = (k1 - k0) / CLK_TCK if k0 is not None and k1 is not None else 0.0
        run["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"]
        run["cpu_util"] = cpu_s / secs
        run["load_cpu_util"] = (c1 - c0) / secs
        if cpid:
            run["control_cpu_util"] = control_s / secs
            run["control_cpu_us_per_req"] = control_s * 1e6 / r["requests"]
        run["other_cpu_util"] = max(
            0.0, ((b1 - b0) / CLK_TCK - cpu_s - control_s - (c1 - c0)) / secs)
    return run, None


def run_series(cell: dict, key: str, target: Target, logs: Path, stem: str, load,
               count: int) -> None:
    """Measured runs into cell[key] until it holds `count`; runs during which
    other processes used more than QUIET_MAX cores are redone, NOISY_RETRIES
    times in all for the cell."""
    kind = {"runs": "closed-loop run", "open_runs": "open-loop run"}[key]
    idle = [target.control.pid] if target.control else []
    attempts_left = (count - len(cell[key])
                     + max(CFG["noisy_retries"] - cell["noisy_discarded"], 0))
    while len(cell[key]) < count and attempts_left > 0 and target.exited() is None:
        retries_left = CFG["noisy_retries"] - cell["noisy_discarded"]
        i = len(cell[key])
        attempts_left -= 1
        run, err = measured(target, load)
        if err:
            cell["problems"].append(f"{kind} {i + 1}: {err}")
            continue
        noisy = run.get("other_cpu_util", 0) > CFG["quiet_max"]
        if noisy and retries_left > 0:
            cell["noisy_discarded"] += 1
            wait_for_quiet(idle)
            continue
        stdout = run.pop("stdout", None)
        cell[key].append(run)
        if stdout:
            (logs / f"{stem}-{key}{i + 1}.txt").write_text(stdout)
        if run["errors"]:
            cell["problems"].append(f"{kind} {i + 1}: errors {run['err_detail']}")
        if noisy:
            cell["problems"].append(
                f"{kind} {i + 1}: other processes used {run['other_cpu_util'] * 100:.0f}% "
                "of a core during the run (noisy measurement)")


def warm_problem(cell: dict, w: dict) -> bool:
    """Notes a failed warm-up run in the cell; True if there was one."""
    if "error" in w or w["errors"]:
        cell["problems"].append(f"warm-up: {w.get('error') or w['err_detail']}")
        return True
    return False


def warm_spread(cell: dict, load, tenants: int, isolates=None) -> None:
    """Warms a cell whose load is spread over `tenants` workers: at least
    WARMUP_SPREAD s, then on at the rate seen until each isolate serving
    them has had WARMUP_SPREAD_REQUESTS requests, at most WARMUP_SPREAD_MAX
    s in all; what it took goes in the cell. An edge with more than one V8
    thread may load a worker on each (a replica takes the requests that
    would cross to the other thread), and V8 tiers code up by what ran in
    each isolate, so `isolates()` (the number serving them now, read after
    each step) counts where it says more than `tenants`."""
    secs, done_s, done, units, seen = CFG["warmup_spread_s"], 0.0, 0, tenants, None
    while secs > 0:
        w = load(secs)
        if warm_problem(cell, w):
            break
        done_s += w["duration_s"]
        done += w["requests"]
        if isolates is not None:
            seen = isolates()
            units = max(tenants, seen or 0)
        left_s = CFG["warmup_spread_max_s"] - done_s
        want = CFG["warmup_spread_requests"] * units
        if done >= want or left_s < 1 or not done:
            break
        secs = max(1, min(math.ceil((want - done) * done_s / done), int(left_s)))
    cell["warmup"] = {"seconds": round(done_s, 1), "requests": done,
                      "per_worker": done // tenants}
    if seen is not None:
        cell["warmup"].update(isolates=seen, per_isolate=done // units)


class Started:
    """A cell whose server is up, checked and warm: its runs are made by
    `bench_cells`, interleaved with the other cells of its group."""

    def __init__(self, cell: dict, target: Target, logs: Path, load):
        self.cell, self.target, self.logs, self.load = cell, target, logs, load
        self.stem = f"{cell['row']}-{cell['workload']}"

    def runs(self, key: str, count: int, load) -> None:
        run_series(self.cell, key, self.target, self.logs, self.stem, load, count)

    def finish(self) -> None:
        cell, target = self.cell, self.target
        cell["rss_kib_after"] = target.rss_kib()
        if target.control:
            cell["control_rss_kib_after"] = proc_rss_kib(target.control.pid)
        stop(cell, target)


def stop(cell: dict, target: Target) -> None:
    """Stops the cell's server, noting in the cell if it had exited."""
    rc = target.exited()
    if rc is not None:
        cell["problems"].append(f"server exited during the benchmark (exit status {rc})")
        cell["log_tail"] = servers.log_tail(target.log_path)
    target.stop()


def start_cell(row: str, workload: str, logs: Path, start, wrk_threads: int,
               wrk_cpus: set[int] | None) -> tuple[dict, Started | None]:
    """start(), check one reply (two Host names for a spread cell), warm up."""
    cell: dict = {"row": row, "workload": workload, "runs": [], "open_runs": [],
                  "problems": [], "noisy_discarded": 0}
    target, why = start()
    if target is None:
        cell["problems"].append(why)
        return cell, None
    try:
        if why:
            cell["problems"].append(why)
            stop(cell, target)
            cell.setdefault("log_tail", servers.log_tail(target.log_path))
            return cell, None
        hosts = target.hosts or [None]
        for host in dict.fromkeys((hosts[0], hosts[-1])):
            bad = servers.check_reply(target.port, workload, host)
            if bad:
                cell["problems"].append(f"wrong reply before load{f' ({host})' if host else ''}: "
                                        f"{bad}")
        script = wrk_script(workload, logs, target.hosts)
        tenants = len(target.hosts or [])
        load = lambda secs: run_wrk(target.port, workload, script, secs, wrk_threads, wrk_cpus)
        if tenants > 1:
            warm_spread(cell, load, tenants, target.isolates)
        elif CFG["warmup_s"] > 0:
            warm_problem(cell, load(CFG["warmup_s"]))
    except BaseException:
        stop(cell, target)
        raise
    return cell, Started(cell, target, logs, load)


def bench_cells(starts: list[tuple[str, object]], workload: str, logs: Path, wrk_threads: int,
                wrk_cpus: set[int] | None, rate) -> list[dict]:
    """Cells measured side by side: every server of `starts` ((row, start))
    is started and warmed, then the closed-loop runs go in rounds, each
    server once a round in the same order, then the open-loop runs at
    `rate` (None: none; a function: of the cells after their closed-loop
    runs) alike. A slow spell of a shared box then falls on every server of
    a round, not on one server's cell."""
    cells, started = [], []
    try:
        for row, start in starts:
            cell, s = start_cell(row, workload, logs, start, wrk_threads, wrk_cpus)
            cells.append(cell)
            if s:
                started.append(s)
        for i in range(CFG["runs"]):
            for s in started:
                s.runs("runs", i + 1, lambda s=s: s.load(CFG["duration_s"]))
        if callable(rate):  # from raw hyper's closed-loop runs
            rate = rate(cells)
        if rate and OHA:
            for s in started:
                s.cell["open_rate"] = rate
            for i in range(CFG["runs"]):
                for s in started:
                    s.runs("open_runs", i + 1, lambda s=s: run_oha(
                        s.target.port, workload, rate, CFG["latency_duration_s"],
                        s.target.hosts, logs, wrk_cpus))
    finally:
        for s in started:
            s.finish()
    return cells


def bench_target(row: str, workload: str, logs: Path, start, wrk_threads: int,
                 wrk_cpus: set[int] | None, rate) -> dict:
    """One cell on its own: start(), check, warm up, closed-loop runs,
    open-loop runs at `rate` (None: none)."""
    return bench_cells([(row, start)], workload, logs, wrk_threads, wrk_cpus, rate)[0]


def tenants_cell(row: str, workload: str, logs: Path, target: Target, tenants: int,
                 hosts: list[str] | None = None, ports: list[int] | None = None) -> dict:
    """One tenants cell on a started server: closed-loop oha spread over
    `tenants` Host names at its port, or over one port per tenant."""
    cell: dict = {"row": row, "workload": workload, "tenants": tenants, "runs": [],
                  "open_runs": [], "problems": [], "noisy_discarded": 0}

    def load(secs: int) -> dict:
        return run_oha(target.port, workload, None, secs, hosts, logs, load_cpus(), ports)

    warm_spread(cell, load, tenants)
    run_series(cell, "runs", target, logs, f"{row}-{workload}",
               lambda: load(CFG["duration_s"]), CFG["runs"])
    cell["rss_kib_after"] = target.rss_kib()
    rc = target.exited()
    if rc is not None:
        cell["problems"].append(f"server exited during the benchmark (exit status {rc})")
    return cell


def serve_tenants(site: servers.ServeSite, logs: Path) -> list[dict]:
    """isola-edge serve with K of the site's workers taking turns, for each
    K of TENANTS (most first, so every isolate is loaded once), one edge."""
    hosts = site.hosts()
    ks = sorted({k for k in CFG["tenants"] if k <= len(hosts)}, reverse=True)
    if not ks:
        return []
    target, why = start_serve(site, "tenants", CFG["serve_threads"], hosts, server_cpus(),
                              logs)()
    cells = []
    try:
        if why:
            return [{"row": f"serve-k{ks[0]}", "workload": site.workload, "tenants": ks[0],
                     "runs": [], "problems": [why]}]
        for k in ks:
            wait_for_quiet([site.control.pid])
            print(f"  {site.workload:6} serve, {k:3} tenant{'s' * (k > 1)} taking turns (oha) ...",
                  end="", flush=True)
            cell = tenants_cell(f"serve-k{k}", site.workload, logs, target, k, hosts=hosts[:k])
            cells.append(cell)
            print_cell(cell)
    finally:
        target.stop()
    return cells


def deno_tenants(workload: str, logs: Path) -> list[dict]:
    """deno serve as one process per tenant (its isolation unit), for 1
    and for the most of TENANTS, pinned and loaded like `serve_tenants`."""
    cells = []
    for n in sorted({1, max(CFG["tenants"])}):
        wait_for_quiet()
        print(f"  {workload:6} deno serve, {n:3} process{'es' * (n > 1)} (oha) ...", end="",
              flush=True)
        ports: list[int] = []
        while len(ports) < n:
            port = servers.free_port()
            if port not in ports:
                ports.append(port)
        log_path = logs / f"deno-x{n}-{workload}.log"
        procs = []
        for port in ports:
            argv, env = servers.server_argv("deno", BINS, PEERS, workload, port)
            procs.append(servers.spawn(argv, log_path, env, server_cpus()))
        target = Target(procs[0], ports[0], log_path, more=procs[1:])
        try:
            late = [port for proc, port in zip(procs, ports)
                    if servers.wait_first_200(proc, port, CFG["ready_timeout_s"]) is None]
            if late:
                cell = {"row": f"deno-x{n}", "workload": workload, "tenants": n, "runs": [],
                        "problems": [f"{len(late)} of {n} never answered 200"]}
            else:
                cell = tenants_cell(f"deno-x{n}", workload, logs, target, n, ports=ports)
        finally:
            target.stop()
        cells.append(cell)
        print_cell(cell)
    return cells


def start_single(server: str, workload: str, logs: Path):
    def start():
        port = servers.free_port()
        argv, env = servers.server_argv(server, BINS, PEERS, workload, port)
        log_path = logs / f"{server}-{workload}.log"
        proc = servers.spawn(argv, log_path, env, server_cpus())
        t = Target(proc, port, log_path)
        if servers.wait_first_200(proc, port, CFG["ready_timeout_s"]) is None:
            rc = proc.poll()
            return t, (f"never answered 200 within {CFG['ready_timeout_s']:.0f}s"
                       + (f" (exited with {rc})" if rc is not None else ""))
        return t, None
    return start


def start_serve(site: servers.ServeSite, row: str, threads: int, hosts: list[str],
                cpus: set[int] | None, logs: Path):
    def start():
        port, admin = servers.free_port(), servers.free_port()
        log_path = logs / f"{row}-{site.workload}.log"
        proc = servers.spawn(site.edge_argv(port, threads, events=row != "serve100q",
                                            admin_port=admin), log_path, None, cpus)
        # The edge loads every deployed worker, so its isolates are those
        # serving `hosts` only where `hosts` are all of them.
        every = len(hosts) == len(site.hosts())
        t = Target(proc, port, log_path, hosts, site.control,
                   isolates=(lambda: servers.isolates_live(admin)) if every else None)
        return t, site.wait_all_served(proc, port, CFG["serve_ready_timeout_s"])
    return start


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def print_cell(cell: dict) -> None:
    runs = cell["runs"]
    rps = median([r["rps"] for r in runs])
    cpu = median([r.get("cpu_us_per_req") for r in runs])
    p99 = median([r["p99_ms"] for r in cell.get("open_runs", [])])
    print(f" {report.fmt(rps, ',.0f')} req/s, {report.fmt(cpu, '.1f')} CPU µs/req"
          + (f", open-loop p99 {report.fmt(p99, '.2f')} ms" if p99 is not None else "")
          + (f"  [problems: {'; '.join(cell['problems'])}]" if cell["problems"] else ""),
          flush=True)


def bench_startup(server: str, logs: Path) -> dict:
    """Process start -> first 200 on GET / (hello workload), STARTUP_RUNS times."""
    times, problems = [], []
    log_path = logs / f"{server}-startup.log"
    for i in range(CFG["startup_runs"]):
        port = servers.free_port()
        argv, env = servers.server_argv(server, BINS, PEERS, "hello", port)
        t0 = time.perf_counter()
        proc = servers.spawn(argv, log_path, env, server_cpus())
        t1 = servers.wait_first_200(proc, port, CFG["ready_timeout_s"])
        rc = proc.poll()
        servers.stop(proc)
        if t1 is None:
            problems.append(f"run {i + 1}: no 200 within {CFG['ready_timeout_s']:.0f}s"
                            + (f" (exited with {rc})" if rc is not None else ""))
            if len(problems) >= 3:
                break
            continue
        times.append((t1 - t0) * 1000)
        time.sleep(0.05)
    return {"server": server, "ms": times, "problems": problems}


# --------------------------------------------------------------------------
# density (runtime/benches/density.rs)

ROW_RE = re.compile(r"^\|\s*(?P<figure>[^|]+?)\s*\|\s*(?P<value>[^|]+?)\s*\|\s*$")
NUM_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(MiB|KiB|GiB|ms|µs|us|s|%)?")


def parse_density(text: str) -> list[dict]:
    """The bench's Markdown rows `| figure | value |` with their numbers."""
    rows = []
    for line in text.splitlines():
        m = ROW_RE.match(line.strip())
        if not m or m["figure"] == "figure" or set(m["figure"]) <= set("-: "):
            continue
        nums = [{"value": float(n), "unit": u or ""} for n, u in NUM_RE.findall(m["value"])]
        rows.append({"figure": m["figure"], "value": m["value"], "numbers": nums})
    return rows


def bench_density(logs: Path) -> dict | None:
    """DENSITY_FILE: a saved output of the bench; DENSITY_BIN: the bench
    executable (run.sh builds it with DENSITY=1), run pinned to SERVER_CPU."""
    if os.environ.get("DENSITY_FILE"):
        src = Path(os.environ["DENSITY_FILE"])
        text = src.read_text()
        return {"source": f"read from {src}", "rows": parse_density(text), "output": text}
    if not os.environ.get("DENSITY_BIN"):
        return None
    exe, note = servers.snapshot_binary(Path(os.environ["DENSITY_BIN"]), "density")
    busy = wait_for_quiet()
    print("  density bench ...", end="", flush=True)
    t0 = time.monotonic()
    try:
        cp = subprocess.run(with_cpus([str(exe), "--bench"], server_cpus()), capture_output=True,
                            text=True, timeout=env_int("DENSITY_TIMEOUT", 1800, 10, 7200),
                            env=dict(os.environ, DENSITY_MAX=os.environ.get("DENSITY_MAX", "1000")))
    except subprocess.TimeoutExpired:
        print(" timed out", flush=True)
        return {"source": note, "rows": [], "problems": ["the density bench timed out"]}
    (logs / "density.txt").write_text(cp.stdout + cp.stderr)
    rows = parse_density(cp.stdout)
    problems = [busy] if busy else []
    if cp.returncode != 0 or not rows:
        problems.append(f"the density bench exited {cp.returncode}: {cp.stderr[-400:]}")
    # The churn figures need two cores (the hot worker's thread and the
    # loading one), so that run gets every core: a plain child would inherit
    # the harness's own pin to the load core, and on one core the hot
    # worker's p99 is the scheduler's time slice, not the node's.
    try:
        churn = subprocess.run(with_cpus([str(exe), "--bench", "--churn"], ALL_CPUS),
                               capture_output=True, text=True,
                               timeout=env_int("DENSITY_TIMEOUT", 1800, 10, 7200))
        (logs / "density-churn.txt").write_text(churn.stdout + churn.stderr)
        rows += parse_density(churn.stdout)
        if churn.returncode != 0:
            problems.append(f"the churn figures exited {churn.returncode}: "
                            f"{churn.stderr[-400:]}")
    except subprocess.TimeoutExpired:
        problems.append("the churn figures timed out")
    print(f" {len(rows)} figures in {time.monotonic() - t0:.0f} s", flush=True)
    cpus = ",".join(map(str, sorted(ALL_CPUS)))
    return {"source": (f"{note}, `--bench`, pinned to CPU {CFG['server_cpu']}; `--churn` on "
                       f"CPUs {cpus}") if PIN else note,
            "rows": rows, "output": cp.stdout, "problems": problems}


# --------------------------------------------------------------------------
# environment description


def cmd_out(argv: list[str], cwd: Path | None = None) -> str:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
        return (cp.stdout or cp.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


def cargo_lock_version(lock: Path, name: str) -> str:
    try:
        text = lock.read_text()
    except OSError:
        return "?"
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(name), text)
    return m.group(1) if m else "?"


def link_order_note(binary: Path) -> str:
    """Whether the edge was linked in `edge-node/link-order.txt`'s order and
    how much of the list it still defines (bench/README.md, *Laying out the
    binary*); nothing where `nm` cannot tell."""
    try:
        text = link_order.coverage(link_order.listed(link_order.ORDER_FILE),
                                   link_order.defined_functions(binary))
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"; link order: {text}"


def describe_env() -> dict:
    cpu_model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vulns = []
    vdir = Path("/sys/devices/system/cpu/vulnerabilities")
    if vdir.is_dir():
        for f in sorted(vdir.iterdir()):
            try:
                vulns.append(f"{f.name}: {f.read_text().strip()}")
            except OSError:
                pass
    git_rev = cmd_out(["git", "rev-parse", "--short=12", "HEAD"], ROOT)
    dirty = cmd_out(["git", "status", "--porcelain", "--untracked-files=no"], ROOT)
    source = f"git {git_rev}" + (f" + {len(dirty.splitlines())} modified tracked files"
                                 if dirty else " (clean)")

    def isola(key: str) -> str:
        b = BINS[key]
        if not b.exists():
            return "not used"
        src = Path(BIN_NOTES.get(key + "_src", b))
        built = (dt.datetime.fromtimestamp(src.stat().st_mtime).isoformat(timespec="seconds")
                 if src.exists() else "?")
        return (f"{source}; binary built {built}; {cmd_out([str(b), '--version'])}"
                + (f"; {BIN_NOTES[key]}" if key in BIN_NOTES else "")
                + (link_order_note(b) if key == "isola" else ""))

    versions = {
        "isola-edge": isola("isola"),
        "isola-control": isola("control") if "serve" in CFG["servers"] else "not used",
        "deno": cmd_out([str(BINS["deno"]), "--version"]).replace("\n", "; "),
        "workerd": cmd_out([str(BINS["workerd"]), "--version"]),
        "hyper (baseline)": "hyper "
        + cargo_lock_version(BENCH / "hyper-baseline/Cargo.lock", "hyper")
        + ", tokio " + cargo_lock_version(BENCH / "hyper-baseline/Cargo.lock", "tokio")
        + " (current_thread)",
        "wrk": cmd_out(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "missing",
        "oha": cmd_out([OHA, "--version"]) if OHA else "missing",
        "rustc": cmd_out(["rustc", "--version"]),
        "python": platform.python_version(),
    }
    return {"kernel": platform.release(), "cpu": cpu_model, "cpus": os.cpu_count(),
            "mitigations": vulns, "versions": versions}


# --------------------------------------------------------------------------


def usable(key: str) -> bool:
    return BINS[key].is_file() and os.access(BINS[key], os.X_OK)


def main() -> int:
    global PIN, ALL_CPUS
    servers.install_cleanup()
    ALL_CPUS = os.sched_getaffinity(0)
    PIN = ({CFG["server_cpu"], CFG["load_cpu"]} <= ALL_CPUS
           and CFG["server_cpu"] != CFG["load_cpu"])
    if PIN:
        os.sched_setaffinity(0, {CFG["load_cpu"]})  # the harness itself stays off the server core
    else:
        print(f"warning: cannot pin to CPUs {CFG['server_cpu']}/{CFG['load_cpu']} "
              f"(usable {sorted(ALL_CPUS)}); running unpinned", file=sys.stderr)
    if not shutil.which("wrk"):
        sys.exit("wrk not found (bench/run.sh installs it)")
    global_problems = []
    if CFG["latency"] and not OHA:
        global_problems.append("oha not found (bench/run.sh installs it into bench/.tools): "
                               "no open-loop latency columns")

    need = {"hyper": ["hyper"], "isola": ["isola"], "serve": ["isola", "control"],
            "deno": ["deno"], "workerd": ["workerd"]}
    chosen = []
    for s in CFG["servers"]:
        missing = [str(BINS[k]) for k in need[s] if not usable(k)]
        if missing:
            print(f"warning: skipping {s}: {', '.join(missing)} missing", file=sys.stderr)
            global_problems.append(f"{s} skipped: {', '.join(missing)} missing")
        else:
            chosen.append(s)
    CFG["servers"] = chosen
    if os.environ.get("NO_SNAPSHOT") != "1":
        for key, name in (("isola", "isola-edge"), ("control", "isola-control")):
            if any(key in need[s] for s in chosen):
                BIN_NOTES[key + "_src"] = str(BINS[key])
                BINS[key], BIN_NOTES[key] = servers.snapshot_binary(BINS[key], name)

    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Path(os.environ.get("RESULTS_DIR", BENCH / "results"))
    logs = results / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    env = describe_env()
    if os.environ.get("ISOLA_BUILD_NOTE"):
        global_problems.append("isola: " + os.environ["ISOLA_BUILD_NOTE"])

    cells, scaling, startups, rates, tenants = [], [], [], {}, []
    print(f"benchmarking {chosen} x {CFG['workloads']}, logs in {logs}", flush=True)
    for w in CFG["workloads"]:
        rate = CFG["latency_rate"] or None
        if rate:
            rates[w] = {"rps": rate, "basis": "LATENCY_RATE"}
        single = [s for s in chosen if s != "serve"]
        if single:
            busy = wait_for_quiet()
            print(f"  {w:6} {', '.join(single)}: started, warmed, then measured in rounds ...",
                  flush=True)
            group_rate = rate
            if "hyper" in single and not rate:
                def group_rate(cells_, w=w):
                    runs = next(c["runs"] for c in cells_ if c["row"] == "hyper")
                    if not runs:
                        return None
                    base = median([r["rps"] for r in runs])
                    rates[w] = {"rps": CFG["latency_fraction"] * base,
                                "basis": f"{CFG['latency_fraction']:g} × raw hyper's median "
                                f"{base:,.0f} req/s"}
                    return rates[w]["rps"]
            for cell in bench_cells([(s, start_single(s, w, logs)) for s in single], w, logs,
                                    CFG["threads"], load_cpus(),
                                    group_rate if CFG["latency"] else None):
                if busy:
                    cell["problems"].insert(0, busy)
                cells.append(cell)
                print(f"  {w:6} {cell['row']:9}", end="")
                print_cell(cell)
            if w in rates:
                rate = rates[w]["rps"]
        # After the others: its open-loop rate is raw hyper's.
        if "serve" in chosen:
            cells_, scaling_, tenants_ = bench_serve(w, logs, rate, global_problems)
            cells += cells_
            scaling += scaling_
            tenants += tenants_
        if CFG["latency"] and not rate:
            global_problems.append(f"`{w}`: no open-loop latency (raw hyper not measured and "
                                   "LATENCY_RATE unset)")

    if CFG["startup_runs"]:
        for s in [s for s in chosen if s != "serve"]:
            busy = wait_for_quiet()
            print(f"  startup {s:8} ...", end="", flush=True)
            st = bench_startup(s, logs)
            if busy:
                st["problems"].insert(0, busy)
            startups.append(st)
            print(f" median {report.fmt(median(st['ms']))} ms over {len(st['ms'])} runs",
                  flush=True)
    if CFG["tenants"] and "deno" in chosen and "hello" in CFG["workloads"] and OHA:
        tenants += deno_tenants("hello", logs)
    events = bench_events(logs, chosen, global_problems)
    density = bench_density(logs)

    raw = {
        "format": FORMAT, "started": started, "elapsed_s": time.monotonic() - t_start,
        "pinned": PIN, "config": CFG, "env": env, "latency_rates": rates, "cells": cells,
        "scaling": scaling, "tenants": tenants, "startup": startups, "density": density,
        "events": events,
        "problems": global_problems, "binaries": {k: str(v) for k, v in BINS.items()},
    }
    out_json = results / f"{stamp}.json"
    out_json.write_text(json.dumps(raw, indent=1, default=str))
    md = report.render(raw)
    out_md = results / f"{stamp}.md"
    out_md.write_text(md)
    print()
    print(md)
    print(f"written: {out_md} and {out_json.name}")
    return 0


def bench_events(logs: Path, chosen: list[str], global_problems: list[str]) -> list[dict]:
    """Trace events' cost, paired (events_overhead.py): warm `hello` on one
    worker, and spread over SERVE_WORKERS."""
    if "serve" not in chosen or not CFG["events_rounds"] or "hello" not in CFG["workloads"]:
        return []
    import events_overhead  # it imports this module
    out = []
    for one in (True, False):
        what = "one warm worker" if one else f"{CFG['serve_workers']} workers"
        print(f"  events on vs off, paired, hello, {what} ...", flush=True)
        wait_for_quiet()
        try:
            out.append(events_overhead.paired(
                BINS["control"], BINS["isola"], "hello", CFG["serve_workers"], one,
                CFG["events_rate"], CFG["events_window_s"], CFG["events_rounds"], logs,
                say=lambda line: print(f"    {line}", flush=True)))
        except (RuntimeError, servers.ApiError, OSError, subprocess.SubprocessError) as e:
            global_problems.append(f"events on vs off ({what}): {e}")
    return out


def bench_serve(w: str, logs: Path, rate: float | None, global_problems: list[str]
                ) -> tuple[list[dict], list[dict], list[dict]]:
    """The `serve` rows of one workload (all workers; one of them), pinned
    like the others, the tenants cells (`hello`), then the thread-scaling
    cells (unpinned)."""
    n = CFG["serve_workers"]
    site = servers.ServeSite(BINS["control"], BINS["isola"], w, n, logs, load_cpus(),
                             CFG["control_nice"])
    cells, scaling, tenants = [], [], []
    try:
        print(f"  {w:6} serve     setting up a control plane with {n} workers ...",
              end="", flush=True)
        try:
            site.start_control(CFG["ready_timeout_s"])
            secs = site.upload_all()
            site.enroll()
        except (servers.ApiError, OSError, subprocess.SubprocessError) as e:
            print(f" failed: {e}", flush=True)
            global_problems.append(f"`{w}` serve: setup failed: {e}")
            return cells, scaling, tenants
        print(f" uploaded in {secs:.1f} s", flush=True)
        setup = {"workers": n, "upload_s": secs}
        hosts = site.hosts()
        rows = [("serve100", hosts), ("serve1", hosts[:1])]
        if CFG["serve_events_ab"]:
            # The same as serve100 with `[control] trace_events = false`:
            # what trace events cost the edge.
            rows.insert(1, ("serve100q", hosts))
        for row, hs in rows:
            busy = wait_for_quiet([site.control.pid])
            print(f"  {w:6} {row:9} ...", end="", flush=True)
            cell = bench_target(row, w, logs, start_serve(
                site, row, CFG["serve_threads"], hs, server_cpus(), logs), CFG["threads"],
                load_cpus(), rate if CFG["latency"] else None)
            cell["setup"] = dict(setup, threads=CFG["serve_threads"], hosts=len(hs))
            if busy:
                cell["problems"].insert(0, busy)
            cells.append(cell)
            print_cell(cell)
        if CFG["tenants"] and w == "hello" and OHA:
            tenants += serve_tenants(site, logs)
        if CFG["scaling"]:
            # Everything shares every core now, the control plane too.
            subprocess.run(["taskset", "-a", "-p", "-c", ",".join(map(str, sorted(ALL_CPUS))),
                            str(site.control.pid)], capture_output=True, timeout=30)
            for threads in CFG["scaling_threads"]:
                row = f"serve-t{threads}"
                busy = wait_for_quiet([site.control.pid])
                print(f"  {w:6} {row:9} (unpinned) ...", end="", flush=True)
                cell = bench_target(row, w, logs, start_serve(
                    site, row, threads, hosts, ALL_CPUS, logs), CFG["scaling_wrk_threads"],
                    ALL_CPUS, None)
                cell["setup"] = dict(setup, threads=threads, hosts=len(hosts), pinned=False,
                                     wrk_threads=CFG["scaling_wrk_threads"],
                                     cores=len(ALL_CPUS))
                if busy:
                    cell["problems"].insert(0, busy)
                scaling.append(cell)
                print_cell(cell)
    finally:
        site.stop()
    return cells, scaling, tenants


if __name__ == "__main__":
    sys.exit(main())
