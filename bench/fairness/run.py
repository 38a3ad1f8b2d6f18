#!/usr/bin/env python3
"""Tenant fairness benchmark: a well-behaved worker next to abusive ones.

Starts `isola-edge serve` with four workers (hello, and the abusers spin,
memhog, hang), measures hello alone with wrk, then again while each abuser
is hammered by its own closed-loop clients, and reports hello's throughput
kept, its p99 against the baseline, and the abusers' share of the node's
CPU. Several runs; medians. Only loopback is used.

  bench/fairness/run.py --edge target/release/isola-edge [--runs 3]
      [--duration 8] [--abusers spin,memhog,hang] [--clients 8] [--label after]

Writes bench/results/fairness-<label>-<timestamp>.{md,json}.
"""

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "..", "results")
ABUSERS = ["spin", "memhog", "hang"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def write_config(folder, http, admin, extra):
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{http}"',
        f'admin = "127.0.0.1:{admin}"',
        "",
    ]
    for name in ["hello"] + ABUSERS:
        lines += [
            "[[worker]]",
            f'name = "{name}"',
            f'entry = "{os.path.join(HERE, "workers", name + ".js")}"',
            f'routes = ["{name}.test/*"]',
            "",
        ]
    path = os.path.join(folder, "edge.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + extra)
    return path


def wrk(args, duration):
    out = subprocess.run(
        ["wrk", "--latency", "-d", f"{duration}s"] + args,
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    return out


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    def ms(label):
        m = re.search(rf"\s{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
        "requests": int(total.group(1)) if total else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def proc_cpu(pid):
    """utime + stime of the process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def worker_cpu(admin):
    """isola_cpu_seconds_total by worker, from /metrics."""
    _, text = http_get(f"http://127.0.0.1:{admin}/metrics")
    cpu = {}
    for m in re.finditer(r'^isola_cpu_seconds_total\{worker="([^"]+)"\} ([\d.e+-]+)', text, re.M):
        cpu[m.group(1)] = float(m.group(2))
    throttled = {}
    for m in re.finditer(r'^isola_throttled_requests_total\{worker="([^"]+)"\} (\d+)', text, re.M):
        throttled[m.group(1)] = int(m.group(2))
    return cpu, throttled


def one_run(args, run):
    with tempfile.TemporaryDirectory() as tmp:
        http, admin = free_port(), free_port()
        data = os.path.join(tmp, "data")
        extra = f'\n[node]\ndata_dir = "{data}"\n' if args.data_dir_key else ""
        config = write_config(tmp, http, admin, extra)
        log = open(os.path.join(tmp, "edge.log"), "w")
        edge = subprocess.Popen(
            [args.edge, "serve", "--config", config],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
        )
        try:
            deadline = time.time() + 30
            while True:
                try:
                    if http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                if time.time() > deadline or edge.poll() is not None:
                    raise SystemExit(f"isola-edge did not start; see {log.name}")
                time.sleep(0.1)
            url = f"http://127.0.0.1:{http}/"
            hello = ["-t1", "-c50", "-H", "Host: hello.test", url]
            wrk(hello, 2)  # warm up
            base = parse_wrk(wrk(hello, args.duration))
            cpu0, thr0 = worker_cpu(admin)
            t0 = proc_cpu(edge.pid)
            abusers = [
                subprocess.Popen(
                    ["wrk", "-t1", f"-c{args.clients}", "-d", f"{args.duration + 3}s",
                     "--timeout", "40s", "-H", f"Host: {a}.test", url],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                for a in args.abusers
            ]
            time.sleep(1)
            loaded = parse_wrk(wrk(hello, args.duration))
            t1 = proc_cpu(edge.pid)
            cpu1, thr1 = worker_cpu(admin)
            abuse_out = {a: parse_wrk(p.communicate()[0]) for a, p in zip(args.abusers, abusers)}
            node_cpu = t1 - t0
            abuser_cpu = sum(cpu1.get(a, 0) - cpu0.get(a, 0) for a in args.abusers)
            return {
                "run": run,
                "baseline": base,
                "loaded": loaded,
                "kept": loaded["rps"] / base["rps"],
                "p99_ratio": (loaded["p99_ms"] or 0) / (base["p99_ms"] or 1),
                "node_cpu_s": node_cpu,
                "abuser_cpu_s": abuser_cpu,
                "abuser_share": abuser_cpu / node_cpu if node_cpu else 0,
                "abusers": abuse_out,
                "throttled": {a: thr1.get(a, 0) - thr0.get(a, 0) for a in args.abusers},
            }
        finally:
            os.killpg(edge.pid, signal.SIGTERM)
            try:
                edge.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(edge.pid, signal.SIGKILL)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edge", required=True, help="isola-edge binary (release)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients per abuser")
    p.add_argument("--abusers", default=",".join(ABUSERS))
    p.add_argument("--label", default="run")
    p.add_argument("--data-dir-key", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.abusers = [a for a in args.abusers.split(",") if a]
    runs = []
    for i in range(args.runs):
        r = one_run(args, i + 1)
        runs.append(r)
        print(
            f"run {i + 1}: hello {r['baseline']['rps']:.0f} → {r['loaded']['rps']:.0f} req/s "
            f"({100 * r['kept']:.1f} %), p99 {r['baseline']['p99_ms']:.2f} → {r['loaded']['p99_ms']:.2f} ms "
            f"({r['p99_ratio']:.2f}×), hello non-2xx {r['loaded']['non2xx']}, "
            f"abusers' CPU share {100 * r['abuser_share']:.1f} %, throttled {r['throttled']}",
            flush=True,
        )
    med = lambda key: statistics.median(r[key] for r in runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [
        f"# Tenant fairness, {args.label} ({stamp})",
        "",
        f"`{os.path.basename(args.edge)}`; abusers {', '.join(args.abusers)}, {args.clients} clients each; "
        f"hello by `wrk -t1 -c50 -d{args.duration}s`; {args.runs} runs; {os.cpu_count()} cores shared by server and clients.",
        "",
        "| run | hello alone req/s | hello with abusers req/s | kept | p99 alone ms | p99 with abusers ms | p99 ratio | hello non-2xx | abusers' CPU share | throttled |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['run']} | {r['baseline']['rps']:.0f} | {r['loaded']['rps']:.0f} | {100 * r['kept']:.1f} % | "
            f"{r['baseline']['p99_ms']:.2f} | {r['loaded']['p99_ms']:.2f} | {r['p99_ratio']:.2f}× | "
            f"{r['loaded']['non2xx']} | {100 * r['abuser_share']:.1f} % | {r['throttled']} |"
        )
    lines += [
        "",
        f"Median: kept {100 * med('kept'):.1f} %, p99 ratio {med('p99_ratio'):.2f}×, "
        f"abusers' CPU share {100 * med('abuser_share'):.1f} %.",
        "",
    ]
    os.makedirs(RESULTS, exist_ok=True)
    base = os.path.join(RESULTS, f"fairness-{args.label}-{stamp}")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(base + ".json", "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    print("\n".join(lines))
    print(f"wrote {base}.md")


if __name__ == "__main__":
    sys.exit(main())
