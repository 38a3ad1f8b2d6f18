"""Instructions per request on isola-edge dev's V8 thread, counted by callgrind.

Wall-clock A/B runs on a shared 2-core box spread by a third from run to run,
so a change worth a few per cent cannot be read from them. callgrind counts
every user-space instruction exactly; this runs `isola-edge dev` under it with
a load that holds one request per wake-up of the worker (`wrk -c1`, so both
builds batch alike), zeroes the counters after a warm-up long enough for
TurboFan to finish, and reports per request (requests as wrk counted them):

- instructions on the V8 thread (`isola_runtime::pool::thread_main`, which also
  runs the HTTP server in `dev`), inside the dispatcher's calls into JS (one
  for all the requests of a wake-up) and in the ops they call, and how many
  such calls a request takes;
- calls of a few costs that instruction counts hide or that are worth
  counting: clock reads (a vDSO read is ~30 ns, valgrind runs none),
  allocations, `memcpy`, new V8 global handles, and op calls in V8's fast
  API form and in the slow one.

usage: python3 bench/instructions.py [--workload hello] [--warmup 30]
           [--seconds 8] [--connections 1] [--peers] [--deno DENO ...]
           EDGE_BINARY [EDGE_BINARY ...]

With two or more binaries the table compares them, the first as the base.
`--peers` adds `deno serve` and raw hyper (the harness's binaries, see
`bench/measure.py`) under the same load: for them only the whole process's
instructions per request (every thread; requests as wrk counted them),
the row to read ours against. `--deno` (repeatable) counts another deno
binary (e.g. an older release from npm) the same way, labelled by its
version.
Needs valgrind and wrk. Kernel time is not counted (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import servers  # noqa: E402

# The dispatcher's calls into V8.
JS_CALL = "v8::internal::Execution::Call("
# Each row: (label, name pattern, what to take): "incl" sums the inclusive
# cost of every call into a function whose name contains the pattern,
# "calls" sums how often it was called.
ROWS = [
    ("V8 thread, instructions", "isola_runtime::pool::thread_main", "incl"),
    ("  the JS calls (dispatch)", "v8::Function::Call(v8::Isolate", "incl"),
    ("  ops called from JS", "::v8_fn_ptr", "incl"),
    # Fewer than one a request when requests that came together enter the
    # isolate in one call (`dispatchAll`).
    ("calls into JS", JS_CALL, "calls"),
    # The task `isola_edge::server` spawns for a connection: hyper's
    # connection future (HTTP/1 straight, or hyper_util's `auto` one that
    # sniffs HTTP/1 or 2, as every connection was before 2026-12-07), the
    # service and the drain's wrapper, which the compiler inlines into it
    # in different ways from build to build.
    ("  the connection's task", "isola_edge::server::serve_spread::{{closure}}::{{closure}}", "incl"),
    ("clock reads (Rust's std)", "Timespec>::now", "calls"),
    # mimalloc's `malloc` (it overrides libc's): Rust's allocations (see
    # runtime/alloc) and V8's; Rust's that need more than 16-byte alignment
    # take `mi_malloc_aligned`.
    ("allocations (malloc)", "=malloc", "calls"),
    ("  aligned ones (Rust's)", "mi_malloc_aligned", "calls"),
    ("memcpy calls", "__memcpy_", "calls"),
    ("V8 global handles made", "GlobalizeReference", "calls"),
    # deno_core's op entry points (`v8_fn_ptr*`): the fast API form, which
    # optimized code calls as a C function, and the slow form, a V8 callback.
    ("op calls", "::v8_fn_ptr", "calls"),
    ("  fast form", "::v8_fn_ptr_fast", "calls"),
]
# Every thread of the process, from the dump's totals: the only row the
# peers have.
WHOLE = "whole process, instructions"
# Rows computed from two others: (label, row, minus row). The JS calls' count
# moves by a few per cent from run to run (where its scavenges and tier-ups
# fall); the rest of the thread's does not.
DERIVED = [
    ("  outside the JS calls", "V8 thread, instructions", "  the JS calls (dispatch)"),
    ("  slow form", "op calls", "  fast form"),
]
# Every name `call_totals` must sum for `per_request`.
PATTERNS = list(dict.fromkeys(p for _, p, _ in ROWS))

_NAMED = re.compile(r"c?fn=\((\d+)\)(?: (.*))?")


def call_totals(lines, patterns: list[str]) -> dict[str, tuple[int, int]]:
    """For each pattern: (calls, inclusive Ir of those calls) over every call
    site in a callgrind output file whose callee's name contains it (is it,
    for a pattern that starts with `=`); under WHOLE, (0, the file's total
    Ir)."""
    names: dict[str, str] = {}
    totals = {p: [0, 0] for p in patterns}
    totals[WHOLE] = [0, 0]
    callee = None
    pending: list[str] | None = None
    for line in lines:
        if line.startswith(("totals:", "summary:")):
            totals[WHOLE][1] = int(line.split()[1])
            continue
        if pending is not None:
            fields = line.split()
            if len(fields) >= 2:
                for p in pending:
                    totals[p][1] += int(fields[1])
            pending = None
            continue
        if line.startswith(("fn=", "cfn=")):
            m = _NAMED.match(line.strip())
            if m is None:
                continue
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("cfn="):
                callee = names.get(m.group(1), "")
        elif line.startswith("calls=") and callee is not None:
            count = int(line.split("=", 1)[1].split()[0])
            hit = [p for p in patterns if (callee == p[1:] if p[0] == "=" else p in callee)]
            for p in hit:
                totals[p][0] += count
            pending = hit or None
            callee = None
    return {p: (c, ir) for p, (c, ir) in totals.items()}


def per_request(totals: dict[str, tuple[int, int]], requests: int) -> dict[str, float] | None:
    """The table's values for one run, per request (as wrk counted them);
    None if no request ran."""
    if requests == 0:
        return None
    out = {"requests": float(requests), WHOLE: totals[WHOLE][1] / requests}
    for label, pattern, take in ROWS:
        calls, ir = totals[pattern]
        out[label] = (ir if take == "incl" else calls) / requests
    for label, row, minus in DERIVED:
        out[label] = out[row] - out[minus]
    return out


def render(results: list[tuple[str, dict[str, float]]]) -> str:
    """Markdown: one column per binary; with several, each against the first."""
    head = "| per request | " + " | ".join(name for name, _ in results) + " |"
    rule = "|---|" + "--:|" * len(results)
    rows = [head, rule]
    base = results[0][1]
    labels = [WHOLE] + [label for label, _, _ in ROWS]
    for label, row, _ in DERIVED:
        labels.insert(labels.index(row) + 1, label)
    for label in labels:
        cells = []
        for i, (_, r) in enumerate(results):
            if label not in r:
                cells.append("–")
                continue
            v = r[label]
            cell = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
            if i > 0 and base[label]:
                cell += f" ({(v / base[label] - 1) * 100:+.1f} %)"
            cells.append(cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    counted = ", ".join(f"{name} {r['requests']:,.0f}" for name, r in results)
    return "\n".join(rows) + f"\n\nRequests counted: {counted}.\n"


def run_counted(argv: list[str], env: dict | None, workload: str, port: int, warmup: int,
                seconds: int, connections: int, out: Path, callgrind_args: Sequence[str] = (),
                dump_first: bool = False) -> tuple[Path, int]:
    """`argv` under callgrind: warm up, zero, load, dump. Returns the dump
    and the requests wrk counted meanwhile. `dump_first`: a dump (part 1)
    right after the first 200 as well, of everything up to it."""
    wdir = servers.WORKLOADS_DIR / workload
    prefix = out / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", *callgrind_args,
            f"--callgrind-out-file={prefix}.%p", *argv]
    proc = servers.spawn(argv, out / "server.log", env)
    try:
        if servers.wait_first_200(proc, port, 300, poll_s=0.2) is None:
            # `out` is a temporary directory: the log's end goes in the message.
            raise RuntimeError(f"{argv[4 + len(callgrind_args)]} did not answer under valgrind;"
                               " its log ends:\n" + servers.log_tail(out / "server.log", 10))
        if dump_first:
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)
        script = ["-s", str(wdir / "wrk.lua")] if (wdir / "wrk.lua").exists() else []

        def load(secs: int) -> str:
            return subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{secs}s", *script,
                                   f"http://127.0.0.1:{port}/"], check=True,
                                  capture_output=True, text=True).stdout

        load(warmup)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        report = load(seconds)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        servers.stop(proc)
    part = 2 if dump_first else 1
    # With `--separate-threads=yes`, a file a thread: `….PART-THREAD`.
    dumps = sorted(out.glob(f"callgrind.out.*.{part}")) + sorted(
        out.glob(f"callgrind.out.*.{part}-*"))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump in {out}")
    m = re.search(r"(\d+) requests in", report)
    return dumps[-1], int(m.group(1)) if m else 0


def measure(binary: Path, workload: str, warmup: int, seconds: int,
            connections: int, out: Path) -> dict[str, float]:
    """One edge binary under callgrind, every row."""
    wdir = servers.WORKLOADS_DIR / workload
    port = servers.free_port()
    argv = [str(binary), "dev", str(wdir / "worker.js"), "--listen", f"127.0.0.1:{port}"]
    dump, requests = run_counted(argv, dict(os.environ, ISOLA_LOG="warn"), workload, port,
                                 warmup, seconds, connections, out)
    with open(dump, errors="replace") as f:
        result = per_request(call_totals(f, PATTERNS), requests)
    if result is None:
        raise RuntimeError(f"no request was counted in {dump}")
    return result


def measure_peer(server: str, workload: str, warmup: int, seconds: int,
                 connections: int, out: Path, binary: Path | None = None) -> dict[str, float]:
    """A peer (`deno`, `hyper`) under callgrind: the whole process per request;
    `binary` in place of the harness's."""
    import measure as harness  # the harness's binaries and peers
    bins = dict(harness.BINS, **{server: binary}) if binary else harness.BINS
    port = servers.free_port()
    argv, env = servers.server_argv(server, bins, harness.PEERS, workload, port)
    dump, requests = run_counted(argv, env, workload, port, warmup, seconds, connections, out)
    if requests == 0:
        raise RuntimeError(f"wrk counted no request of {server}")
    with open(dump, errors="replace") as f:
        total = call_totals(f, [])[WHOLE][1]
    return {"requests": float(requests), WHOLE: total / requests}


def deno_label(binary: Path) -> str:
    """`deno 2.7.14` for a deno binary (its `--version`'s first line), else
    its path."""
    try:
        first = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                               timeout=30).stdout.split("\n", 1)[0]
    except (OSError, subprocess.SubprocessError):
        return str(binary)
    words = first.split()
    return " ".join(words[:2]) if len(words) >= 2 else str(binary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+", type=Path)
    ap.add_argument("--workload", default="hello", choices=sorted(servers.REQUESTS))
    ap.add_argument("--warmup", type=int, default=30, help="seconds of load before counting")
    ap.add_argument("--seconds", type=int, default=8, help="seconds of load counted")
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--peers", action="store_true",
                    help="also count deno serve and raw hyper (whole process only)")
    ap.add_argument("--deno", type=Path, action="append", default=[],
                    help="also count this deno binary (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    servers.install_cleanup()
    results = []
    with tempfile.TemporaryDirectory(prefix="isola-instr-") as tmp:
        for i, binary in enumerate(args.binaries):
            out = Path(tmp) / str(i)
            out.mkdir()
            print(f"counting {binary} ({args.warmup} s warm-up, {args.seconds} s counted)",
                  file=sys.stderr)
            r = measure(binary.resolve(), args.workload, args.warmup, args.seconds,
                        args.connections, out)
            results.append((f"{binary.parent.name}/{binary.name}", r))
        peers = [(p, p, None) for p in (["deno", "hyper"] if args.peers else [])]
        peers += [("deno", deno_label(d), d.resolve()) for d in args.deno]
        for i, (peer, label, binary) in enumerate(peers):
            out = Path(tmp) / f"peer{i}"
            out.mkdir()
            print(f"counting {label} ({args.warmup} s warm-up, {args.seconds} s counted)",
                  file=sys.stderr)
            try:
                r = measure_peer(peer, args.workload, args.warmup, args.seconds,
                                 args.connections, out, binary)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                # The counts already made are still worth printing.
                print(f"{label} not counted: {e}", file=sys.stderr)
                continue
            results.append((label, r))
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(dict(results), indent=1))


if __name__ == "__main__":
    main()
