"""How each benchmarked server is started, checked and stopped.

Servers: raw hyper (`bench/hyper-baseline`), `isola-edge dev`, `isola-edge
serve` behind a real `isola-control serve` (many routed workers, usage and
trace events shipped as in production), `deno serve`, workerd.

Every process started here runs in its own session and is listed in
BENCH_PIDFILE (run.sh's EXIT trap ends what is still listed); `cleanup_all`
runs at exit and on SIGINT/SIGTERM/SIGHUP. Standard library only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORKLOADS_DIR = BENCH / "workloads"

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


def install_cleanup() -> None:
    atexit.register(cleanup_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def spawn(argv: list[str], log_path: Path | None, env: dict | None = None,
          cpus: set[int] | None = None, cwd: Path = BENCH, nice: int = 0) -> subprocess.Popen:
    """Start a process in its own session; `cpus` pins it (like taskset -c),
    `nice` lowers its priority (like nice -n).

    The pin is inherited: the harness moves itself onto `cpus` for the spawn
    and back. A `preexec_fn` would pin it too, but makes Python fork the
    whole harness rather than vfork, which added ~2-3 ms to every server's
    start (2026-12-07, 30 starts each way in turn: raw hyper 5.33 -> 2.57 ms,
    the edge 17.35 -> 14.11 ms, medians), and a `taskset` prefix adds its
    own exec."""

    def lower():
        os.nice(nice)

    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    own = os.sched_getaffinity(0) if cpus else None
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lower if nice else None, env=env, cwd=cwd)
    finally:
        if own is not None:
            os.sched_setaffinity(0, own)
        if log_path:
            out.close()
    LIVE[proc.pid] = proc
    _write_pidfile()
    return proc


def snapshot_binary(src: Path, name: str) -> tuple[Path, str]:
    """A private copy of `src` in a temporary folder (removed at exit), so a
    concurrent `cargo build` cannot swap the binary mid-run; returns the
    copy and a note naming the source and its hash."""
    tmp = Path(tempfile.mkdtemp(prefix="isola-bench-bin-"))
    atexit.register(shutil.rmtree, tmp, True)
    dst = tmp / name
    shutil.copy2(src, dst)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()[:16]
    return dst, f"copied from {src} (sha256 {digest}...)"


def log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# HTTP probing


def isolates_live(admin_port: int) -> int | None:
    """The worker isolates an edge has loaded now (`isola_isolates_live` on
    its admin listener's `/metrics`), or None if it cannot say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return None
    return parse_isolates_live(text)


def parse_isolates_live(metrics: str) -> int | None:
    """`isola_isolates_live`'s value in an OpenMetrics text."""
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name == "isola_isolates_live":
            try:
                return int(float(value.split()[0]))
            except (ValueError, IndexError):
                return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port: int, method: str, path: str, headers: dict, body: bytes,
                 timeout: float, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection (Connection: close)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}",
             "Connection: close"]
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
                n = parse_headers(head).get("content-length")
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
                   poll_s: float = 0.0005, host: str | None = None) -> float | None:
    """Poll GET / until a 200; returns time.perf_counter() of it, or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            status, _, _ = http_request(port, "GET", "/", {}, b"", timeout=2.0, host=host)
            if status == 200:
                return time.perf_counter()
        except (ConnectionError, socket.timeout, OSError):
            pass
        time.sleep(poll_s)
    return None


# What wrk sends, and what a correct reply looks like (checked once per cell).
ECHO_BODY = b"0123456789abcdef" * 64  # 1 KiB, same as workloads/echo/wrk.lua
REQUESTS = {
    "hello": ("GET", "/", {}, b""),
    "json": (
        "GET", "/json",
        {"User-Agent": "isola-bench/wrk", "Accept": "application/json",
         "X-Request-Id": "0123456789abcdef"},
        b""),
    "echo": ("POST", "/echo", {"Content-Type": "application/octet-stream"}, ECHO_BODY),
}


def check_body(workload: str, headers: dict[str, str], body: bytes) -> str | None:
    """None when the reply is what the workload promises, else a reason."""
    if workload == "hello":
        return None if body == b"Hello World!" else f"body {body[:80]!r}"
    if workload == "json":
        want = {"ok": True, "userAgent": "isola-bench/wrk", "accept": "application/json",
                "requestId": "0123456789abcdef"}
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


def check_reply(port: int, workload: str, host: str | None = None) -> str | None:
    """Send the workload's request once; None when the reply is right."""
    method, path, headers, body = REQUESTS[workload]
    try:
        status, hdrs, got = http_request(port, method, path, headers, body, 5.0, host)
    except (OSError, ConnectionError) as e:
        return f"check request failed: {e}"
    return f"status {status}" if status != 200 else check_body(workload, hdrs, got)


# --------------------------------------------------------------------------
# single-process servers


def server_argv(server: str, bins: dict[str, Path], peers: Path, workload: str,
                port: int) -> tuple[list[str], dict | None]:
    """argv and environment of a single-process server for one workload."""
    wdir = WORKLOADS_DIR / workload
    addr = f"127.0.0.1:{port}"
    if server == "hyper":
        return [str(bins["hyper"]), "--listen", addr], None
    if server == "isola":
        return [str(bins["isola"]), "dev", str(wdir / "worker.js"), "--listen", addr], None
    if server == "deno":
        env = dict(os.environ, DENO_NO_UPDATE_CHECK="1", DENO_DIR=str(peers / "deno-dir"),
                   NO_COLOR="1")
        argv = [str(bins["deno"]), "serve", "--host", "127.0.0.1", "--port", str(port)]
        return argv + [str(wdir / "worker.js")], env
    if server == "workerd":
        argv = [str(bins["workerd"]), "serve", str(wdir / "workerd.capnp")]
        return argv + ["--socket-addr", f"http={addr}"], None
    raise AssertionError(server)


# --------------------------------------------------------------------------
# isola-edge serve behind isola-control serve


class ApiError(RuntimeError):
    pass


class ServeSite:
    """A control plane (`isola-control serve`) with one account holding
    `n` copies of a workload's worker.js (`w0` ... `w{n-1}`, routed at
    `w{i}.bench.test/*`), and an enrolled edge that can be started as
    `isola-edge serve` with any thread count. Usage, metering and trace
    events run as in production: the edge ships them to this control plane.
    """

    HOST = "w{i}.bench.test"

    def __init__(self, control_bin: Path, edge_bin: Path, workload: str, n: int,
                 logs: Path, cpus: set[int] | None, nice: int):
        self.control_bin, self.edge_bin = control_bin, edge_bin
        self.workload, self.n, self.logs, self.cpus = workload, n, logs, cpus
        self.nice = nice
        self.dir = Path(tempfile.mkdtemp(prefix=f"isola-bench-serve-{workload}-"))
        atexit.register(shutil.rmtree, self.dir, True)
        self.control: subprocess.Popen | None = None
        self.api_port = free_port()
        self.token = ""
        # Enrolled edges: each one's edge.toml and its text as enrolled.
        self.identities: list[tuple[Path, str]] = []

    def hosts(self) -> list[str]:
        return [self.HOST.format(i=i) for i in range(self.n)]

    def _run(self, argv: list[str]) -> None:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if cp.returncode != 0:
            raise ApiError(f"{' '.join(argv[:2])} failed ({cp.returncode}): "
                           f"{(cp.stderr or cp.stdout)[-600:]}")

    def _api(self, method: str, path: str, body=None, content_type="application/json",
             token: str | None = None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data,
                                     method=method)
        req.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise ApiError(f"{method} {path}: {e.code} {e.read()[:400]!r}") from None

    def start_control(self, ready_timeout_s: float) -> None:
        """`isola-control init` + `serve`; an account `bench` and its token."""
        cp_dir, quic_port = self.dir / "cp", free_port()
        self.quic_addr = f"127.0.0.1:{quic_port}"
        self._run([str(self.control_bin), "init", "--data-dir", str(cp_dir)])
        # The per-token API rate limit would slow the uploads down; it has no
        # part in what is measured.
        (self.dir / "control.toml").write_text(
            "[rate_limit]\nper_second = 100000\nburst = 100000\n")
        env = dict(os.environ, ISOLA_LOG="warn")
        self.control = spawn(
            [str(self.control_bin), "serve", "--data-dir", str(cp_dir), "--config",
             str(self.dir / "control.toml"), "--api", f"127.0.0.1:{self.api_port}",
             "--quic", self.quic_addr],
            self.logs / f"control-{self.workload}.log", env, self.cpus, nice=self.nice)
        admin = (cp_dir / "admin-token").read_text().strip()
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.control.poll() is not None:
                raise ApiError(f"isola-control serve exited ({self.control.returncode}): "
                               + log_tail(self.logs / f"control-{self.workload}.log", 10))
            try:
                self._api("GET", "/v1/whoami", token=admin)
                break
            except (OSError, ApiError):
                if time.monotonic() > deadline:
                    raise ApiError(f"the control plane's API did not answer within "
                                   f"{ready_timeout_s:.0f} s") from None
                time.sleep(0.1)
        self.token = self._api("POST", "/v1/accounts", {"name": "bench"}, token=admin)["token"]

    def upload_all(self) -> float:
        """Uploads, deploys and routes the n copies; returns the seconds it took."""
        source = (WORKLOADS_DIR / self.workload / "worker.js").read_bytes()
        t0 = time.monotonic()
        for i in range(self.n):
            name = f"w{i}"
            boundary = "isola-bench-boundary"
            meta = json.dumps({"main_module": "worker.js", "vars": {}}).encode()
            parts = [("metadata", "application/json", meta),
                     ("worker.js", "application/javascript+module", source)]
            body = b"".join(
                b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                b"Content-Type: %s\r\n\r\n%s\r\n"
                % (boundary.encode(), p.encode(), p.encode(), ct.encode(), data)
                for p, ct, data in parts) + b"--%s--\r\n" % boundary.encode()
            v = self._api("POST", f"/v1/workers/{name}/versions", body,
                          f"multipart/form-data; boundary={boundary}")
            self._api("POST", f"/v1/workers/{name}/deployments",
                      {"versions": [{"id": v["id"], "percentage": 100}]})
            self._api("POST", "/v1/routes", {"pattern": f"{self.HOST.format(i=i)}/*",
                                             "worker": name})
        return time.monotonic() - t0

    def enroll(self, name: str = "bench-edge", out_name: str = "edge") -> int:
        """Enrolls an edge `name` (its files in `out_name`); returns its
        identity's number for `edge_argv` (0 for the first)."""
        out = self.dir / out_name
        self._run([str(self.control_bin), "enroll-edge", "--data-dir", str(self.dir / "cp"),
                   "--name", name, "--out", str(out),
                   "--control-address", self.quic_addr])
        toml = out / "edge.toml"
        self.identities.append((toml, toml.read_text()))
        return len(self.identities) - 1

    def edge_argv(self, port: int, threads: int, events: bool = True,
                  identity: int = 0, binary: Path | None = None,
                  admin_port: int | None = None) -> list[str]:
        """Rewrites an enrolled edge's edge.toml for this start (listener,
        admin listener, thread count, and whether trace events go to the
        control plane)."""
        toml, base = self.identities[identity]
        if not events:
            base = base.replace("[control]\n", "[control]\ntrace_events = false\n", 1)
        toml.write_text(
            base + f'\n[server]\nlisten = "127.0.0.1:{port}"\n'
            f'admin = "127.0.0.1:{admin_port or free_port()}"\nthreads = {threads}\n')
        return [str(binary or self.edge_bin), "serve", "--config", str(toml)]

    def wait_all_served(self, proc: subprocess.Popen, port: int, timeout_s: float) -> str | None:
        """Waits until every host answers 200; None, or what went wrong."""
        deadline = time.monotonic() + timeout_s
        for host in self.hosts():
            left = deadline - time.monotonic()
            if left <= 0 or wait_first_200(proc, port, left, 0.01, host) is None:
                rc = proc.poll()
                return (f"{host} did not answer 200 within {timeout_s:.0f} s"
                        + (f" (the edge exited with {rc})" if rc is not None else ""))
        return None

    def stop(self) -> None:
        if self.control is not None:
            stop(self.control)
            self.control = None
