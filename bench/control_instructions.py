"""Instructions the control plane spends per request an edge serves, counted by callgrind.

Every request an edge serves sends a trace event to its control plane,
which reads the batch, feeds live tails and the analytics sketches, and
stores the invocation log. The control plane's CPU per request
(`bench/README.md`, *What the control plane spends on a request*) moves by
a fifth between runs on this shared box; callgrind counts its user-space
instructions exactly. This starts the harness's `serve` site (one control
plane, N `hello` workers, one edge) with `isola-control serve` under
callgrind, loads the edge with `wrk` at a fixed rate (each connection waits
DELAY ms between requests, so both builds see the same batches: the control
plane under valgrind runs ~50x slower and must keep up), zeroes the counters
after a warm-up, and reports per request (as wrk counted them): the whole
process, reading the batches, storing them, and the hub's fan-out, with
allocation counts.

usage: python3 bench/control_instructions.py [--workers 20] [--delay 5]
           [--connections 10] [--warmup 40] [--seconds 20]
           --edge EDGE_BINARY CONTROL_BINARY [CONTROL_BINARY ...]

With two or more control planes the table compares them, the first as the
base. Needs valgrind and wrk. Kernel time (SQLite's writes, QUIC's sends) is
not counted.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402
import servers  # noqa: E402

# (label, name patterns, what to take), as in instructions.py: the sum over
# the patterns, whose calls must not nest.
ROWS = [
    # `from_lz4` and `unpack` before, `unpack_lz4` since.
    ("  reading batches (LZ4, CBOR, events)", ["isola_proto::trace::PackedBatch::"], "incl"),
    ("  the hub (tails, metrics)", ["=isola_control::observe::Traces::ingest"], "incl"),
    ("  storing them (logs, sketches, SQLite)",
     ["=isola_control::db::logs::<impl isola_control::db::Db>::store_traces"], "incl"),
    # glibc's, or mimalloc's (which callgrind names `malloc` too, where it
    # replaces it): Rust's allocations and SQLite's.
    ("allocations (malloc)", ["=malloc"], "calls"),
]
PATTERNS = list(dict.fromkeys(p for _, ps, _ in ROWS for p in ps))


def wrapper(control: Path, out: Path) -> Path:
    """A stand-in for the binary that runs only `serve` under callgrind
    (`init`, `enroll-edge` and the uploads' checks run as they are)."""
    script = out / "isola-control"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = serve ]; then exec valgrind --tool=callgrind --smc-check=all-non-file '
        f'--callgrind-out-file={out}/callgrind.out.%p {control} "$@"; fi\n'
        f'exec {control} "$@"\n')
    script.chmod(0o755)
    return script


def measure(control: Path, edge: Path, args, out: Path) -> dict[str, float]:
    logs = out / "logs"
    logs.mkdir()
    site = servers.ServeSite(wrapper(control, out), edge, "hello", args.workers, logs, {0}, 0)
    try:
        # Uploads are checked by starting each worker: slower under valgrind.
        site.start_control(600)
        site.upload_all()
        site.enroll()
        port = servers.free_port()
        proc = servers.spawn(site.edge_argv(port, 1), logs / "edge.log", None, {1})
        try:
            err = site.wait_all_served(proc, port, 300)
            if err is not None:
                raise RuntimeError(err)
            lua = out / "hosts.lua"
            hosts = ",".join(f'"{h}"' for h in site.hosts())
            lua.write_text(f"local hosts = {{{hosts}}}\nlocal i = 0\n"
                           "request = function()\n  i = i % #hosts + 1\n"
                           "  wrk.headers['Host'] = hosts[i]\n  return wrk.format('GET', '/')\nend\n"
                           f"delay = function() return {args.delay} end\n")

            def load(secs: int) -> str:
                return subprocess.run(
                    ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", f"-d{secs}s",
                     "-s", str(lua), f"http://127.0.0.1:{port}/"],
                    check=True, capture_output=True, text=True).stdout

            load(args.warmup)
            time.sleep(2)
            pid = str(site.control.pid)
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            report = load(args.seconds)
            # The last batches leave the edge within its 200 ms and are
            # stored within the control plane's second of gathering.
            time.sleep(3)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            time.sleep(1)
        finally:
            servers.stop(proc)
    finally:
        site.stop()
    dumps = sorted(out.glob("callgrind.out.*.1"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump in {out}")
    m = re.search(r"(\d+) requests in", report)
    requests = int(m.group(1)) if m else 0
    if requests == 0:
        raise RuntimeError("wrk counted no request")
    with open(dumps[-1], errors="replace") as f:
        totals = instructions.call_totals(f, PATTERNS)
    result = {"requests": float(requests),
              instructions.WHOLE: totals[instructions.WHOLE][1] / requests}
    for label, patterns, take in ROWS:
        taken = sum(totals[p][1] if take == "incl" else totals[p][0] for p in patterns)
        result[label] = taken / requests
    return result


def table(results: list[tuple[str, dict[str, float]]]) -> str:
    labels = [instructions.WHOLE] + [label for label, _, _ in ROWS]
    base = results[0][1]
    rows = ["| per request | " + " | ".join(name for name, _ in results) + " |",
            "|---|" + "--:|" * len(results)]
    for label in labels:
        cells = []
        for i, (_, r) in enumerate(results):
            cell = f"{r[label]:,.0f}" if r[label] >= 10 else f"{r[label]:.2f}"
            if i and base[label]:
                cell += f" ({(r[label] / base[label] - 1) * 100:+.1f} %)"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    counted = ", ".join(f"{name} {r['requests']:,.0f}" for name, r in results)
    return "\n".join(rows) + f"\n\nRequests counted: {counted}.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("controls", nargs="+", type=Path)
    ap.add_argument("--edge", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--delay", type=int, default=5, help="ms a connection waits between requests")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=40, help="seconds of load before counting")
    ap.add_argument("--seconds", type=int, default=20, help="seconds of load counted")
    args = ap.parse_args()
    servers.install_cleanup()
    results = []
    with tempfile.TemporaryDirectory(prefix="isola-cp-instr-") as tmp:
        for i, control in enumerate(args.controls):
            out = Path(tmp) / str(i)
            out.mkdir()
            print(f"counting {control} ({args.warmup} s warm-up, {args.seconds} s counted)",
                  file=sys.stderr)
            r = measure(control.resolve(), args.edge.resolve(), args, out)
            results.append((f"{control.parent.name}/{control.name}", r))
    print(table(results))


if __name__ == "__main__":
    main()
