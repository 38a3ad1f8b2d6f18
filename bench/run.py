#!/usr/bin/env python3
"""Isola benchmark harness: four HTTP servers, same run, same machine.

Servers: raw hyper (ceiling), isola-edge dev, `deno serve`, workerd.
Workloads: hello (text), json (3 request headers -> JSON), echo (1 KiB POST).

For each (server, workload) cell: start the server pinned to SERVER_CPU,
check one response for correctness, warm up with wrk, then RUNS timed wrk
runs (pinned to LOAD_CPU). Each run records requests/s, p50/p99 latency and
server CPU (utime+stime from /proc/PID/stat) per request. The table shows
medians over the runs and ratios against raw hyper. Separately, "process
start -> first 200" is measured STARTUP_RUNS times per server (median).

Normally started by bench/run.sh, which installs peers and builds binaries
first. Everything is configured through environment variables; see
bench/README.md. Standard library only.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKLOADS_DIR = BENCH / "workloads"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# configuration


def env_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)
    if not lo <= value <= hi:
        sys.exit(f"{name}={value} is outside [{lo}, {hi}]")
    return value


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = float(raw)
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


ALL_SERVERS = ["hyper", "isola", "deno", "workerd"]
ALL_WORKLOADS = ["hello", "json", "echo"]

CFG = {
    "runs": env_int("RUNS", 3, 1, 50),
    "duration_s": env_int("DURATION", 8, 1, 300),
    "warmup_s": env_int("WARMUP", 3, 0, 120),
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
}

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", "/root/.cache/isola-target"))
PEERS = Path(os.environ.get("PEERS_DIR", BENCH / ".peers"))
BINS = {
    "hyper": Path(
        os.environ.get("HYPER_BASELINE", TARGET / "bench-hyper-baseline/release/hyper-baseline")
    ),
    "isola": Path(os.environ.get("ISOLA_EDGE", TARGET / "release/isola-edge")),
    "deno": Path(
        os.environ.get("DENO", PEERS / "node_modules/@deno/linux-x64-glibc/deno")
    ),
    "workerd": Path(
        os.environ.get(
            "WORKERD", PEERS / "node_modules/@cloudflare/workerd-linux-64/bin/workerd"
        )
    ),
}
BIN_NOTES: dict[str, str] = {}
SERVER_LABEL = {
    "hyper": "raw hyper (current_thread)",
    "isola": "isola-edge dev",
    "deno": "deno serve",
    "workerd": "workerd",
}

# What wrk sends, and what a correct reply looks like (checked once per cell).
ECHO_BODY = b"0123456789abcdef" * 64  # 1 KiB, same as workloads/echo/wrk.lua
REQUESTS = {
    "hello": ("GET", "/", {}, b""),
    "json": (
        "GET",
        "/json",
        {
            "User-Agent": "isola-bench/wrk",
            "Accept": "application/json",
            "X-Request-Id": "0123456789abcdef",
        },
        b"",
    ),
    "echo": ("POST", "/echo", {"Content-Type": "application/octet-stream"}, ECHO_BODY),
}


def check_body(workload: str, headers: dict[str, str], body: bytes) -> str | None:
    """None when the reply is what the workload promises, else a reason."""
    if workload == "hello":
        return None if body == b"Hello World!" else f"body {body[:80]!r}"
    if workload == "json":
        want = {
            "ok": True,
            "userAgent": "isola-bench/wrk",
            "accept": "application/json",
            "requestId": "0123456789abcdef",
        }
        try:
            got = json.loads(body)
        except ValueError:
            return f"not JSON: {body[:80]!r}"
        return None if got == want else f"JSON {got!r}"
    if workload == "echo":
        if body != ECHO_BODY:
            return f"echoed {len(body)} bytes, want {len(ECHO_BODY)} identical bytes"
        ct = headers.get("content-type", "")
        return None if ct == "application/octet-stream" else f"content-type {ct!r}"
    raise AssertionError(workload)


# --------------------------------------------------------------------------
# process bookkeeping and cleanup

LIVE: dict[int, subprocess.Popen] = {}
PIDFILE = os.environ.get("BENCH_PIDFILE")


def _write_pidfile() -> None:
    if PIDFILE:
        try:
            Path(PIDFILE).write_text("".join(f"{pid}\n" for pid in LIVE))
        except OSError:
            pass


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> int | None:
    """SIGTERM the process group we created for proc, then SIGKILL."""
    if proc.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    LIVE.pop(proc.pid, None)
    _write_pidfile()
    return proc.returncode


def cleanup_all() -> None:
    for proc in list(LIVE.values()):
        stop(proc, grace_s=2.0)


def _on_signal(signum, _frame):
    cleanup_all()
    sys.exit(128 + signum)


atexit.register(cleanup_all)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, _on_signal)


def spawn(argv: list[str], log_path: Path | None, env: dict | None = None) -> subprocess.Popen:
    """Start a server in its own session, pinned to SERVER_CPU (like taskset -c)."""
    cpu = CFG["server_cpu"]

    def pin():
        if PIN:
            os.sched_setaffinity(0, {cpu})

    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin,
            env=env,
            cwd=BENCH,
        )
    finally:
        if log_path:
            out.close()
    LIVE[proc.pid] = proc
    _write_pidfile()
    return proc


# --------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(server: str, workload: str, port: int) -> tuple[list[str], dict | None]:
    wdir = WORKLOADS_DIR / workload
    addr = f"127.0.0.1:{port}"
    if server == "hyper":
        return [str(BINS["hyper"]), "--listen", addr], None
    if server == "isola":
        return [str(BINS["isola"]), "dev", str(wdir / "worker.js"), "--listen", addr], None
    if server == "deno":
        env = dict(os.environ)
        env["DENO_NO_UPDATE_CHECK"] = "1"
        env["DENO_DIR"] = str(PEERS / "deno-dir")
        env["NO_COLOR"] = "1"
        argv = [str(BINS["deno"]), "serve", "--host", "127.0.0.1", "--port", str(port)]
        return argv + [str(wdir / "worker.js")], env
    if server == "workerd":
        argv = [str(BINS["workerd"]), "serve", str(wdir / "workerd.capnp")]
        return argv + ["--socket-addr", f"http={addr}"], None
    raise AssertionError(server)


def http_request(port: int, method: str, path: str, headers: dict, body: bytes,
                 timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection (Connection: close)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            buf = b"".join(chunks)
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                hdrs = parse_headers(head)
                n = hdrs.get("content-length")
                if n is not None and len(rest) >= int(n):
                    break
    buf = b"".join(chunks)
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ")
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"bad status line {status_line!r}")
    hdrs = parse_headers(head)
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        rest = dechunk(rest)
    return int(parts[1]), hdrs, rest


def parse_headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.decode("latin-1").partition(":")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    for _ in range(1_000_000):
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


def wait_first_200(proc: subprocess.Popen, port: int, timeout_s: float,
                   poll_s: float = 0.0005) -> float | None:
    """Poll GET / until a 200; returns time.perf_counter() of it, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            status, _, _ = http_request(port, "GET", "/", {}, b"", timeout=2.0)
            if status == 200:
                return time.perf_counter()
        except (ConnectionError, socket.timeout, OSError):
            pass
        time.sleep(poll_s)
    return None


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
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


def wait_for_quiet() -> str | None:
    """Wait (bounded by QUIET_WAIT s) until other processes use < QUIET_MAX cores."""
    global QUIET_SPENT
    limit = CFG["quiet_max"]
    budget = min(CFG["quiet_wait_s"], max(0.0, CFG["quiet_budget_s"] - QUIET_SPENT))
    t0 = time.monotonic()
    load = background_load(1.0)
    while load > limit and time.monotonic() - t0 < budget:
        print(f"\n  machine busy ({load:.2f} cores in use by other processes); waiting...",
              end="", flush=True)
        time.sleep(4)
        load = background_load(1.0)
    waited = time.monotonic() - t0
    QUIET_SPENT += waited
    if load > limit:
        return (f"the machine was busy before the start ({load:.2f} cores in use by "
                f"other processes after waiting {waited:.0f} s)")
    return None


QUIET_SPENT = 0.0


def log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# load generation


RESULT_RE = re.compile(r"ISOLA_BENCH_RESULT (.*)")


def wrk_script(workload: str, out_dir: Path) -> Path:
    path = out_dir / f"wrk-{workload}.lua"
    src = (WORKLOADS_DIR / workload / "wrk.lua").read_text()
    src += "\n" + (BENCH / "report.lua").read_text()
    path.write_text(src)
    return path


def run_wrk(port: int, workload: str, script: Path, duration_s: int) -> dict:
    path = REQUESTS[workload][1]
    argv = ["wrk", f"-t{CFG['threads']}", f"-c{CFG['connections']}", f"-d{duration_s}s",
            "--latency", "--timeout", CFG["wrk_timeout"], "-s", str(script),
            f"http://127.0.0.1:{port}{path}"]
    if PIN:
        argv = ["taskset", "-c", str(CFG["load_cpu"])] + argv
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish in time"}
    m = RESULT_RE.search(cp.stdout)
    if cp.returncode != 0 or not m:
        return {"error": f"wrk exit {cp.returncode}: {(cp.stderr or cp.stdout)[-400:]}"}
    res = {}
    for kv in m.group(1).split():
        k, _, v = kv.partition("=")
        res[k] = float(v)
    res["errors"] = int(sum(res[k] for k in res if k.startswith("err_")))
    res["wrk_stdout"] = cp.stdout
    return res


def bench_cell(server: str, workload: str, logs: Path) -> dict:
    """Start one server, check it, warm up, do RUNS timed runs."""
    cell: dict = {"server": server, "workload": workload, "runs": [], "problems": []}
    port = free_port()
    argv, env = server_argv(server, workload, port)
    log_path = logs / f"{server}-{workload}.log"
    proc = spawn(argv, log_path, env)
    cell["pid"] = proc.pid
    try:
        if wait_first_200(proc, port, CFG["ready_timeout_s"]) is None:
            rc = proc.poll()
            cell["problems"].append(
                f"never answered 200 within {CFG['ready_timeout_s']:.0f}s"
                + (f" (exited with {rc})" if rc is not None else ""))
            cell["log_tail"] = log_tail(log_path)
            return cell

        method, path, headers, body = REQUESTS[workload]
        try:
            status, hdrs, got = http_request(port, method, path, headers, body, timeout=5.0)
            why = None if status == 200 else f"status {status}"
            why = why or check_body(workload, hdrs, got)
        except (OSError, ConnectionError) as e:
            why = f"check request failed: {e}"
        if why:
            cell["problems"].append(f"wrong reply before load: {why}")

        script = wrk_script(workload, logs)
        if CFG["warmup_s"] > 0:
            w = run_wrk(port, workload, script, CFG["warmup_s"])
            if "error" in w:
                cell["problems"].append(f"warm-up: {w['error']}")
            elif w["errors"]:
                cell["problems"].append(f"warm-up: {w['errors']} wrk errors")
            cell["warmup_rps"] = w.get("requests", 0) / max(w.get("duration_us", 1) / 1e6, 1e-9)

        attempts, retries_left = 0, CFG["noisy_retries"]
        cell["noisy_discarded"] = 0
        while len(cell["runs"]) < CFG["runs"] and attempts < CFG["runs"] + CFG["noisy_retries"]:
            i = len(cell["runs"])
            attempts += 1
            if proc.poll() is not None:
                break
            t0, b0, c0 = proc_cpu_ticks(proc.pid), machine_busy_ticks(), children_cpu_s()
            r = run_wrk(port, workload, script, CFG["duration_s"])
            alive = proc.poll() is None
            t1 = proc_cpu_ticks(proc.pid) if alive else None
            b1, c1 = machine_busy_ticks(), children_cpu_s()
            if "error" in r:
                cell["problems"].append(f"run {i + 1}: {r['error']}")
                continue
            secs = r["duration_us"] / 1e6
            run = {
                "requests": int(r["requests"]),
                "rps": r["requests"] / secs if secs else 0.0,
                "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000, "p999_ms": r["p999_us"] / 1000,
                "max_ms": r["max_us"] / 1000,
                "errors": r["errors"],
                "err_detail": {k: int(v) for k, v in r.items() if k.startswith("err_") and v},
            }
            if t1 is not None and r["requests"]:
                cpu_s = (t1 - t0) / CLK_TCK
                run["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"]
                run["cpu_util"] = cpu_s / secs
                # everything else on the machine: total busy - server - wrk (+ taskset)
                run["wrk_cpu_util"] = (c1 - c0) / secs
                run["other_cpu_util"] = max(0.0, ((b1 - b0) / CLK_TCK - cpu_s - (c1 - c0)) / secs)
            noisy = run.get("other_cpu_util", 0) > CFG["quiet_max"]
            if noisy and retries_left > 0:
                # Another process ate CPU during this run: drop it, wait, redo.
                retries_left -= 1
                cell["noisy_discarded"] += 1
                wait_for_quiet()
                continue
            cell["runs"].append(run)
            (logs / f"{server}-{workload}-run{i + 1}.wrk.txt").write_text(r["wrk_stdout"])
            if r["errors"]:
                cell["problems"].append(f"run {i + 1}: wrk errors {run['err_detail']}")
            if noisy:
                cell["problems"].append(
                    f"run {i + 1}: other processes used {run['other_cpu_util'] * 100:.0f}% of a "
                    "core during the run (noisy measurement)")
        cell["rss_kib_after"] = proc_rss_kib(proc.pid)
    finally:
        rc = proc.poll()
        if rc is not None:
            cell["problems"].append(f"server exited during the benchmark (exit status {rc})")
            cell["log_tail"] = log_tail(log_path)
        stop(proc)
    return cell


def bench_startup(server: str, logs: Path) -> dict:
    """Process start -> first 200 on GET / (hello workload), STARTUP_RUNS times."""
    times, problems = [], []
    log_path = logs / f"{server}-startup.log"
    for i in range(CFG["startup_runs"]):
        port = free_port()
        argv, env = server_argv(server, "hello", port)
        t0 = time.perf_counter()
        proc = spawn(argv, log_path, env)
        t1 = wait_first_200(proc, port, CFG["ready_timeout_s"])
        rc = proc.poll()
        stop(proc)
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
    isola_bin = BINS["isola"]
    isola_mtime = (dt.datetime.fromtimestamp(isola_bin.stat().st_mtime).isoformat(timespec="seconds")
                   if isola_bin.exists() else "missing")
    versions = {
        "isola-edge": f"git {git_rev}"
        + (f" + {len(dirty.splitlines())} modified tracked files" if dirty else " (clean)")
        + f"; binary built {isola_mtime}; {cmd_out([str(isola_bin), '--version'])}"
        + (f"; {BIN_NOTES['isola']}" if "isola" in BIN_NOTES else ""),
        "deno": cmd_out([str(BINS["deno"]), "--version"]).replace("\n", "; "),
        "workerd": cmd_out([str(BINS["workerd"]), "--version"]),
        "hyper (baseline)": "hyper "
        + cargo_lock_version(BENCH / "hyper-baseline/Cargo.lock", "hyper")
        + ", tokio " + cargo_lock_version(BENCH / "hyper-baseline/Cargo.lock", "tokio")
        + " (current_thread)",
        "wrk": cmd_out(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else "missing",
        "rustc": cmd_out(["rustc", "--version"]),
        "python": platform.python_version(),
    }
    return {
        "kernel": platform.release(),
        "cpu": cpu_model,
        "cpus": os.cpu_count(),
        "mitigations": vulns,
        "versions": versions,
    }


# --------------------------------------------------------------------------
# report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=".2f", none="–"):
    return none if x is None else format(x, spec)


def pct(x):
    return "–" if x is None else f"{x * 100:.0f}%"


def ratio(x, base, spec=".2f"):
    if x is None or not base:
        return "–"
    return format(x / base, spec) + "×"


def summarize(cell: dict) -> dict:
    runs = cell["runs"]
    rps = [r["rps"] for r in runs]
    return {
        "rps": med(rps),
        "rps_min": min(rps) if rps else None,
        "rps_max": max(rps) if rps else None,
        "p50_ms": med([r["p50_ms"] for r in runs]),
        "p99_ms": med([r["p99_ms"] for r in runs]),
        "cpu_us": med([r.get("cpu_us_per_req") for r in runs]),
        "cpu_util": med([r.get("cpu_util") for r in runs]),
        "wrk_util": med([r.get("wrk_cpu_util") for r in runs]),
        "other_util": med([r.get("other_cpu_util") for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "n": len(runs),
    }


def render(env: dict, cells: list[dict], startups: list[dict], started: str,
           elapsed_s: float, global_problems: list[str]) -> str:
    c = CFG
    out = [f"# Isola benchmark — {started}", ""]
    out += [
        f"- Machine: {env['cpu']}, {env['cpus']} CPUs, kernel {env['kernel']}",
        f"- Pinning: server on CPU {c['server_cpu']}, wrk on CPU {c['load_cpu']}"
        + ("" if PIN else " (NOT pinned: fewer than 2 usable CPUs)"),
        f"- Load: `wrk -t{c['threads']} -c{c['connections']} -d{c['duration_s']}s --latency` "
        f"(keep-alive), warm-up {c['warmup_s']} s, {c['runs']} runs per cell; "
        f"medians over runs. Startup: median of {c['startup_runs']} spawns.",
        f"- Total harness time: {elapsed_s:.0f} s",
        "",
        "| component | version |",
        "|---|---|",
    ]
    out += [f"| {k} | {v} |" for k, v in env["versions"].items()]
    out += ["", "<details><summary>CPU vulnerability mitigations</summary>", ""]
    out += [f"- {v}" for v in env["mitigations"]] or ["- unknown"]
    out += ["", "</details>", ""]

    by = {(x["server"], x["workload"]): x for x in cells}
    for w in c["workloads"]:
        base = by.get(("hyper", w))
        bs = summarize(base) if base else {}
        out += [f"## Workload `{w}`", "",
                "| server | req/s (median) | min–max | vs hyper | p50 ms | p99 ms "
                "| CPU µs/req | vs hyper | server CPU | wrk CPU | other CPU | RSS after MiB | errors |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for s in c["servers"]:
            cell = by.get((s, w))
            if not cell:
                continue
            m = summarize(cell)
            if m["n"] == 0:
                out.append(f"| {SERVER_LABEL[s]} | **failed** | | | | | | | | | | | |")
                continue
            rng = f"{fmt(m['rps_min'], ',.0f')}–{fmt(m['rps_max'], ',.0f')}"
            rss = cell.get("rss_kib_after")
            out.append(
                f"| {SERVER_LABEL[s]} | {fmt(m['rps'], ',.0f')} | {rng} "
                f"| {ratio(m['rps'], bs.get('rps'))} "
                f"| {fmt(m['p50_ms'], '.3f')} ({ratio(m['p50_ms'], bs.get('p50_ms'), '.1f')}) "
                f"| {fmt(m['p99_ms'], '.3f')} ({ratio(m['p99_ms'], bs.get('p99_ms'), '.1f')}) "
                f"| {fmt(m['cpu_us'], '.1f')} | {ratio(m['cpu_us'], bs.get('cpu_us'))} "
                f"| {pct(m['cpu_util'])} | {pct(m['wrk_util'])} | {pct(m['other_util'])} "
                f"| {fmt(None if rss is None else rss / 1024, '.1f')} | {m['errors']} |")
        out.append("")

    if startups:
        base = next((s for s in startups if s["server"] == "hyper"), None)
        bmed = med(base["ms"]) if base else None
        out += ["## Process start → first 200 (`GET /`, hello worker)", "",
                "| server | median ms | min ms | max ms | vs hyper | runs |",
                "|---|--:|--:|--:|--:|--:|"]
        for st in startups:
            ms = st["ms"]
            out.append(
                f"| {SERVER_LABEL[st['server']]} | {fmt(med(ms))} "
                f"| {fmt(min(ms) if ms else None)} | {fmt(max(ms) if ms else None)} "
                f"| {ratio(med(ms), bmed, '.1f')} | {len(ms)} |")
        out.append("")

    problems = [f"- {p}" for p in global_problems]
    for cell in cells:
        for p in cell["problems"]:
            problems.append(f"- {SERVER_LABEL[cell['server']]} / `{cell['workload']}`: {p}")
        if cell.get("noisy_discarded"):
            problems.append(f"- {SERVER_LABEL[cell['server']]} / `{cell['workload']}`: "
                            f"{cell['noisy_discarded']} run(s) discarded and redone because "
                            "other processes used CPU during them")
        if cell.get("log_tail"):
            problems.append("  ```\n" + "\n".join("  " + ln for ln in cell["log_tail"].splitlines())
                            + "\n  ```")
    for st in startups:
        for p in st["problems"]:
            problems.append(f"- {SERVER_LABEL[st['server']]} / startup: {p}")
    out += ["## Problems observed", ""] + (problems or ["None."]) + [""]
    out += [
        "Notes: *vs hyper* = value ÷ raw hyper's value for the same workload (higher is "
        "better for req/s, lower for latency and CPU). *CPU µs/req* = server utime+stime "
        "(/proc/PID/stat, all threads) over a run ÷ requests completed in it. *server CPU* = "
        "that CPU time ÷ wall time (100% = the one pinned core is saturated; well below 100% "
        "means the load generator, not the server, was the limit). *wrk CPU* = the same for "
        "wrk (100% = its core is saturated). *other CPU* = everything else on the machine "
        "during the run (total busy time from /proc/stat minus server and wrk), as a share "
        "of one core: noise; above QUIET_MAX it is flagged below. *errors* = wrk "
        "connect/read/write/timeout errors plus non-2xx replies, summed over runs.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------


def snapshot_isola_binary() -> None:
    """Run a private copy of isola-edge, so a concurrent `cargo build` that
    replaces target/release/isola-edge cannot change the binary mid-run."""
    src = BINS["isola"]
    if "isola" not in CFG["servers"] or os.environ.get("NO_SNAPSHOT") == "1":
        return
    tmp = Path(tempfile.mkdtemp(prefix="isola-bench-bin-"))
    atexit.register(shutil.rmtree, tmp, True)
    dst = tmp / "isola-edge"
    shutil.copy2(src, dst)
    h = hashlib.sha256(dst.read_bytes()).hexdigest()[:16]
    BIN_NOTES["isola"] = f"copied from {src} (sha256 {h}...)"
    BINS["isola"] = dst


def main() -> int:
    global PIN
    usable = os.sched_getaffinity(0)
    PIN = {CFG["server_cpu"], CFG["load_cpu"]} <= usable and CFG["server_cpu"] != CFG["load_cpu"]
    if PIN:
        os.sched_setaffinity(0, {CFG["load_cpu"]})  # the harness itself stays off the server core
    else:
        print(f"warning: cannot pin to CPUs {CFG['server_cpu']}/{CFG['load_cpu']} "
              f"(usable {sorted(usable)}); running unpinned", file=sys.stderr)

    if not shutil.which("wrk"):
        sys.exit("wrk not found (bench/run.sh installs it)")
    servers = []
    for s in CFG["servers"]:
        if BINS[s].is_file() and os.access(BINS[s], os.X_OK):
            servers.append(s)
        else:
            print(f"warning: skipping {s}: {BINS[s]} is missing", file=sys.stderr)
    CFG["servers"] = servers
    snapshot_isola_binary()

    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = Path(os.environ.get("RESULTS_DIR", BENCH / "results"))
    logs = results / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    env = describe_env()
    cells, startups = [], []
    global_problems = []
    if os.environ.get("ISOLA_BUILD_NOTE") and "isola" in servers:
        global_problems.append("isola-edge: " + os.environ["ISOLA_BUILD_NOTE"])
    n_cells = len(servers) * len(CFG["workloads"])
    est = n_cells * (CFG["warmup_s"] + CFG["runs"] * CFG["duration_s"] + 2)
    print(f"benchmarking {servers} x {CFG['workloads']}: about {est // 60} min {est % 60} s "
          f"of load, logs in {logs}", flush=True)
    for w in CFG["workloads"]:
        for s in servers:
            busy = wait_for_quiet()
            print(f"  {w:6} {s:8} ...", end="", flush=True)
            cell = bench_cell(s, w, logs)
            if busy:
                cell["problems"].insert(0, busy)
            cells.append(cell)
            m = summarize(cell)
            print(f" {fmt(m['rps'], ',.0f')} req/s, p99 {fmt(m['p99_ms'], '.2f')} ms, "
                  f"{fmt(m['cpu_us'], '.1f')} CPU µs/req"
                  + (f"  [problems: {'; '.join(cell['problems'])}]" if cell["problems"] else ""),
                  flush=True)
    if CFG["startup_runs"]:
        for s in servers:
            busy = wait_for_quiet()
            print(f"  startup {s:8} ...", end="", flush=True)
            st = bench_startup(s, logs)
            if busy:
                st["problems"].insert(0, busy)
            startups.append(st)
            print(f" median {fmt(med(st['ms']))} ms over {len(st['ms'])} runs", flush=True)

    elapsed = time.monotonic() - t_start
    md = render(env, cells, startups, started, elapsed, global_problems)
    out_md = results / f"{stamp}.md"
    out_md.write_text(md)
    raw = {"config": CFG, "env": env, "cells": cells, "startup": startups,
           "binaries": {k: str(v) for k, v in BINS.items()}}
    (results / f"{stamp}.json").write_text(json.dumps(raw, indent=2, default=str))
    print()
    print(md)
    print(f"written: {out_md}")
    return 0


PIN = False

if __name__ == "__main__":
    sys.exit(main())
