"""Writes edge-node/link-order.txt: the functions a start of `isola-edge`
runs, for the linker to lay side by side.

The binary holds ~93,000 functions in 45 MB of code; a start up to its first
response runs ~5,000 of them (3 MB), scattered over the whole text, and every
64 KB of it that it touches costs a page fault (~3.3 µs each on this box,
~250 a start). Given this list, lld places the listed functions first, in
the list's order: the warm request path (hottest first, so it spans few
pages), then the rest of what a start runs.

It runs `isola-edge dev` under callgrind on each workload (`hello`, `json`,
`echo`): the functions that ran from exec to the first 200 are the start;
after a warm-up, those a steady load runs, by their share of the
workload's instructions (each workload weighs the same), are the warm path.
Only names the binary defines are kept. Regenerate it after a V8
or deno_core upgrade, or when `--check` reports that many listed names are
gone (Rust names carry a hash that changes when a crate's dependencies do).

usage: python3 bench/link_order.py [--warmup 20] [--seconds 5]
           [--workloads hello,json,echo] EDGE_BINARY
       python3 bench/link_order.py --check EDGE_BINARY

Needs valgrind, wrk and nm. `EDGE_BINARY` is a release build.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instructions  # noqa: E402  (its callgrind run and name pattern)
import servers  # noqa: E402

ORDER_FILE = Path(__file__).resolve().parent.parent / "edge-node" / "link-order.txt"
HEADER = """\
# The order lld gives isola-edge's functions (edge-node/build.rs): first the
# warm request path, hottest first, then the rest of what a start runs up to
# its first response. Written by bench/link_order.py; regenerate it there.
# Names the binary no longer defines are skipped by the linker.
"""
# The function the V8 thread runs (in linkage names, as callgrind gives them
# with `--demangle=no`).
REQUEST_THREAD = "4pool11thread_main"
# callgrind's suffix for a recursion level of a function (`f'2`).
_RECURSION = re.compile(r"'\d+$")


def self_costs(lines) -> dict[str, int]:
    """Each function's own instructions in a callgrind output file (not
    those of its callees), by linkage name, recursion levels merged."""
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    current = None
    call_cost_next = False
    for line in lines:
        if line.startswith(("fn=", "cfn=")):
            m = instructions._NAMED.match(line.strip())
            if m is None:
                continue
            if m.group(2):
                names[m.group(1)] = _RECURSION.sub("", m.group(2))
            if line.startswith("fn="):
                current = names.get(m.group(1))
                costs.setdefault(current, 0)
        elif line.startswith("calls="):
            call_cost_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if call_cost_next:
                call_cost_next = False
            elif current is not None and len(fields) >= 2:
                costs[current] += int(fields[1])
    costs.pop(None, None)
    return costs


def order(starts: list[Collection[str]], warms: list[dict[str, int]],
          defined: Collection[str]) -> list[str]:
    """The warm paths' functions by their share of each run's instructions,
    summed over the runs, most first; then the rest of what the starts ran,
    by name (a stable file from run to run); only names in `defined`."""
    share: dict[str, float] = {}
    for warm in warms:
        total = sum(warm.values()) or 1
        for n, c in warm.items():
            if c > 0 and n in defined:
                share[n] = share.get(n, 0.0) + c / total
    hot = sorted(share, key=lambda n: (-share[n], n))
    seen = set(hot)
    rest = {n for start in starts for n in start if n in defined and n not in seen}
    return hot + sorted(rest)


def defined_functions(binary: Path) -> dict[str, int]:
    """The functions the binary defines: linkage name → address."""
    out = subprocess.run(["nm", "--defined-only", str(binary)], check=True,
                         capture_output=True, text=True).stdout
    return {f[2]: int(f[0], 16) for f in (line.split() for line in out.splitlines())
            if len(f) == 3 and f[1] in "tTwW"}


def coverage(names: list[str], defined: dict[str, int]) -> str:
    """How many listed names a binary defines, and whether it was linked in
    the list's order: its first 20 listed functions at rising addresses,
    which a link that ignored the list leaves to chance (1 in 20!)."""
    have = [n for n in names if n in defined]
    first = [defined[n] for n in have[:20]]
    laid_out = len(first) > 1 and all(a < b for a, b in zip(first, first[1:]))
    return (f"{len(have)} of {len(names)} listed functions defined, "
            + ("laid out in the list's order" if laid_out else "not in the list's order"))


def listed(path: Path) -> list[str]:
    return [s for s in (line.strip() for line in path.read_text().splitlines())
            if s and not s.startswith("#")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary", type=Path)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--workloads", default="hello,json,echo")
    ap.add_argument("--check", action="store_true",
                    help="report how many listed names the binary defines and whether it"
                    " was linked in their order; write nothing")
    args = ap.parse_args()
    defined = defined_functions(args.binary)
    if args.check:
        print(f"{args.binary}: {coverage(listed(ORDER_FILE), defined)}")
        return
    starts, warms = [], []
    for workload in args.workloads.split(","):
        wdir = servers.WORKLOADS_DIR / workload
        with tempfile.TemporaryDirectory() as d:
            port = servers.free_port()
            argv = [str(args.binary), "dev", str(wdir / "worker.js"),
                    "--listen", f"127.0.0.1:{port}"]
            instructions.run_counted(
                argv, dict(os.environ, ISOLA_LOG="warn"), workload, port, args.warmup,
                args.seconds, 1, Path(d), callgrind_args=["--demangle=no", "--separate-threads=yes"],
                dump_first=True)
            # Every thread's functions up to the first 200; only their names count.
            start: set[str] = set()
            for dump in Path(d).glob("callgrind.out.*.1-*"):
                with open(dump, errors="replace") as f:
                    start |= self_costs(f).keys()
            starts.append(start)
            # The warm path is the request thread's (`dev` serves HTTP on
            # the V8 thread): V8's background threads still compiling
            # TurboFan code or marking are not on it.
            for dump in Path(d).glob("callgrind.out.*.2-*"):
                with open(dump, errors="replace") as f:
                    costs = self_costs(f)
                if any(REQUEST_THREAD in n for n in costs):
                    warms.append(costs)
    names = order(starts, warms, defined)
    ORDER_FILE.write_text(HEADER + "\n".join(names) + "\n")
    hot = len({n for w in warms for n, c in w.items() if c > 0 and n in defined})
    print(f"wrote {ORDER_FILE}: {len(names)} functions, {hot} of them on the warm paths")


if __name__ == "__main__":
    main()
