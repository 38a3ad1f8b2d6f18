#!/usr/bin/env python3
"""Soak: a `isola-edge serve` node under mixed load for a long while.

A control plane and one edge on loopback. 50 well-behaved workers take a
steady open-loop load; 3 abusive ones (a busy loop, memory that only grows,
a promise that never settles) are called all along; a new version of a
well-behaved worker is deployed every 10 s; slow clients dribble request
heads a byte at a time. Every 5 s it samples the edge's RSS, open file
descriptors, threads and live isolates; per minute it reports the
well-behaved workers' requests, errors (must be 0) and latency p50/p99
(must stay flat).

  bench/soak/run.py --edge BIN --control BIN [--minutes 20] [--rate 100]
      [--workers 50] [--deploy-every 10] [--slow-clients 8] [--label NAME]

Writes bench/results/soak-<label>-<timestamp>.{md,json}. Not part of
`cargo test`: it runs for as long as it is told to.
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "..", "results")

GOOD = """
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    let sum = 0;
    for (let i = 0; i < 2000; i++) sum += i % 7;
    if (url.searchParams.has("log")) console.log("soak", url.pathname);
    return Response.json({ worker: env.NAME, version: VERSION, sum, path: url.pathname });
  },
};
"""

ABUSERS = {
    # Burns its CPU limit on every request.
    "spin": "export default { fetch() { for (;;) {} } };",
    # Keeps what every request allocates, until its memory limit ends it.
    "memhog": """
const kept = [];
export default {
  fetch() {
    for (let i = 0; i < 64; i++) kept.push(new Array(16384).fill(i));
    return new Response(String(kept.length));
  },
};
""",
    # Never answers; the wall-clock limit ends each request.
    "hang": "export default { fetch() { return new Promise(() => {}); } };",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def call(self, method, path, body=None, content_type="application/json"):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.token)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def upload(self, worker, source, limits=None):
        meta = {"main_module": "worker.js", "vars": {"NAME": worker}}
        if limits:
            meta["limits"] = limits
        boundary = "isola-soak"
        parts = [("metadata", json.dumps(meta).encode()), ("worker.js", source.encode())]
        body = b"".join(
            b'--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n\r\n%s\r\n'
            % (boundary.encode(), n.encode(), n.encode(), b)
            for n, b in parts
        ) + b"--%s--\r\n" % boundary.encode()
        v = self.call("POST", f"/v1/workers/{worker}/versions", body,
                      "multipart/form-data; boundary=" + boundary)
        self.call("POST", f"/v1/workers/{worker}/deployments",
                  {"versions": [{"id": v["id"], "percentage": 100}]})


def good_source(version):
    return f"const VERSION = {version};\n" + GOOD


def proc_stats(pid):
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def isolates(admin):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            m = re.search(r"^isola_isolates_live (\d+)", r.read().decode(), re.M)
            return int(m.group(1)) if m else None
    except OSError:
        return None


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.good = []  # (t, latency_s, ok)
        self.abuse = {}

    def add(self, t, latency, ok):
        with self.lock:
            self.good.append((t, latency, ok))

    def add_abuse(self, name, status):
        with self.lock:
            self.abuse.setdefault(name, {}).setdefault(str(status), 0)
            self.abuse[name][str(status)] += 1


def get(conn_holder, port, host, path, timeout):
    """One GET on a kept-alive connection (reopened when it breaks)."""
    for attempt in range(2):
        if conn_holder[0] is None:
            conn_holder[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn = conn_holder[0]
        try:
            conn.request("GET", path, headers={"Host": host})
            r = conn.getresponse()
            body = r.read()
            return r.status, body
        except (OSError, http.client.HTTPException):
            conn.close()
            conn_holder[0] = None
            if attempt:
                return None, b""
    return None, b""


def good_load(stop, port, workers, rate, rec, threads=8):
    """Open loop: each thread sends at rate/threads per second on its own
    schedule, whatever the answers' latency, so slowness shows as latency."""
    interval = threads / rate

    def run(seed):
        rnd = random.Random(seed)
        conn = [None]
        next_at = time.monotonic() + rnd.random() * interval
        while not stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            w = rnd.randrange(workers)
            path = "/x?log=1" if rnd.random() < 0.05 else "/x"
            start = time.monotonic()
            status, body = get(conn, port, f"good-{w}.test", path, 10)
            latency = time.monotonic() - start
            ok = status == 200 and b'"worker":"good-%d"' % w in body
            rec.add(time.time(), latency, ok)

    ts = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    return ts


def abuse_load(stop, port, rec, per_second=4):
    def run(name):
        conn = [None]
        while not stop.is_set():
            status, _ = get(conn, port, f"{name}.test", "/", 60)
            rec.add_abuse(name, status)
            time.sleep(1 / per_second)

    ts = [threading.Thread(target=run, args=(n,), daemon=True) for n in ABUSERS]
    for t in ts:
        t.start()
    return ts


def slow_clients(stop, port, n):
    """Each dribbles a request head a byte every 200 ms until the node
    gives up on it, then starts again."""
    head = b"GET / HTTP/1.1\r\nHost: good-0.test\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"

    def run():
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    for b in head:
                        if stop.is_set():
                            return
                        s.sendall(bytes([b]))
                        time.sleep(0.2)
                    s.recv(1024)
            except OSError:
                time.sleep(0.2)

    ts = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in ts:
        t.start()
    return ts


def deployer(stop, api, workers, every, log):
    def run():
        version = 1
        while not stop.wait(every):
            version += 1
            w = random.randrange(workers)
            start = time.monotonic()
            try:
                api.upload(f"good-{w}", good_source(version))
                log.append((time.time(), w, version, time.monotonic() - start, None))
            except OSError as e:
                log.append((time.time(), w, version, time.monotonic() - start, str(e)))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--rate", type=float, default=100, help="well-behaved requests per second")
    ap.add_argument("--workers", type=int, default=50)
    ap.add_argument("--deploy-every", type=float, default=10)
    ap.add_argument("--slow-clients", type=int, default=8)
    ap.add_argument("--label", default="run")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="isola-soak-")
    api_port, quic_port, http_port, admin_port = (free_port() for _ in range(4))
    procs = []
    try:
        subprocess.run([args.control, "init", "--data-dir", f"{tmp}/cp"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(f"{tmp}/control.toml", "w") as f:
            f.write("[rate_limit]\nper_second = 100000\nburst = 100000\n")
        control_log = open(f"{tmp}/control.log", "w")
        procs.append(subprocess.Popen(
            [args.control, "serve", "--data-dir", f"{tmp}/cp", "--config", f"{tmp}/control.toml",
             "--api", f"127.0.0.1:{api_port}", "--quic", f"127.0.0.1:{quic_port}"],
            stdout=control_log, stderr=control_log, env={**os.environ, "ISOLA_LOG": "warn"}))
        subprocess.run([args.control, "enroll-edge", "--data-dir", f"{tmp}/cp", "--name", "soak",
                        "--out", f"{tmp}/edge", "--control-address", f"127.0.0.1:{quic_port}"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(f"{tmp}/edge/edge.toml", "a") as f:
            f.write(f'\n[server]\nlisten = "127.0.0.1:{http_port}"\nadmin = "127.0.0.1:{admin_port}"\n')
        edge_log = open(f"{tmp}/edge.log", "w")
        edge = subprocess.Popen([args.edge, "serve", "--config", f"{tmp}/edge/edge.toml"],
                                stdout=edge_log, stderr=edge_log, env={**os.environ, "ISOLA_LOG": "warn"})
        procs.append(edge)
        token = open(f"{tmp}/cp/admin-token").read().strip()
        api = Api(f"http://127.0.0.1:{api_port}", token)
        for _ in range(300):
            try:
                api.call("GET", "/v1/workers")
                break
            except OSError:
                time.sleep(0.1)
        print(f"soak: uploading {args.workers} workers and {len(ABUSERS)} abusers", flush=True)
        for w in range(args.workers):
            api.upload(f"good-{w}", good_source(1))
            api.call("POST", "/v1/routes", {"pattern": f"good-{w}.test/*", "worker": f"good-{w}"})
        for name, src in ABUSERS.items():
            api.upload(name, src, {"cpu_ms": 50, "memory_mb": 64, "wall_ms": 5000})
            api.call("POST", "/v1/routes", {"pattern": f"{name}.test/*", "worker": name})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                c = [None]
                s, b = get(c, http_port, f"good-{args.workers - 1}.test", "/", 5)
                if s == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            sys.exit("soak: the edge never served the workers")

        rec, deploys, samples = Recorder(), [], []
        stop = threading.Event()
        good_load(stop, http_port, args.workers, args.rate, rec)
        abuse_load(stop, http_port, rec)
        slow_clients(stop, http_port, args.slow_clients)
        deployer(stop, api, args.workers, args.deploy_every, deploys)
        start = time.time()
        end = start + args.minutes * 60
        print(f"soak: running {args.minutes} min", flush=True)
        while time.time() < end and edge.poll() is None:
            rss, fds, threads = proc_stats(edge.pid)
            samples.append({"t": round(time.time() - start, 1), "rss_mib": round(rss / 2**20, 1),
                            "fds": fds, "threads": threads, "isolates": isolates(admin_port)})
            time.sleep(5)
        stop.set()
        died = edge.poll() is not None
        time.sleep(1)

        minutes = []
        for m in range(int(args.minutes + 0.999)):
            lo, hi = start + 60 * m, start + 60 * (m + 1)
            rows = [r for r in rec.good if lo <= r[0] < hi]
            lat = [r[1] * 1000 for r in rows]
            snap = [s for s in samples if 60 * m <= s["t"] < 60 * (m + 1)]
            minutes.append({
                "minute": m + 1,
                "requests": len(rows),
                "errors": sum(1 for r in rows if not r[2]),
                "p50_ms": round(pct(lat, 50), 2) if lat else None,
                "p99_ms": round(pct(lat, 99), 2) if lat else None,
                "rss_mib": snap[-1]["rss_mib"] if snap else None,
                "fds": snap[-1]["fds"] if snap else None,
                "threads": snap[-1]["threads"] if snap else None,
                "isolates": snap[-1]["isolates"] if snap else None,
            })
        result = {
            "label": args.label, "minutes": args.minutes, "rate": args.rate,
            "workers": args.workers, "edge_died": died, "per_minute": minutes,
            "samples": samples, "abusers": rec.abuse,
            "deploys": len(deploys), "deploy_errors": [d for d in deploys if d[4]],
            "deploy_p50_s": round(pct([d[3] for d in deploys], 50) or 0, 3),
            "total_requests": len(rec.good),
            "total_errors": sum(1 for r in rec.good if not r[2]),
        }
        os.makedirs(RESULTS, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(RESULTS, f"soak-{args.label}-{stamp}")
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        lines = [
            f"# Soak `{args.label}`: {args.minutes} min, {args.workers} workers at {args.rate:g} req/s, "
            f"3 abusers, a deploy every {args.deploy_every:g} s, {args.slow_clients} slow clients",
            "",
            f"Well-behaved requests {result['total_requests']}, errors {result['total_errors']}; "
            f"deploys {result['deploys']} (errors {len(result['deploy_errors'])}, "
            f"upload+deploy p50 {result['deploy_p50_s']} s); edge died: {died}.",
            f"Abusers' answers by status: {json.dumps(rec.abuse, sort_keys=True)}.",
            "",
            "| minute | requests | errors | p50 ms | p99 ms | RSS MiB | FDs | threads | isolates |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for m in minutes:
            lines.append("| {minute} | {requests} | {errors} | {p50_ms} | {p99_ms} | {rss_mib} | "
                         "{fds} | {threads} | {isolates} |".format(**m))
        with open(base + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"soak: wrote {base}.md and .json")
        if died or result["total_errors"]:
            sys.exit(1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
