#!/usr/bin/env python3
"""Isola benchmark harness, reporting side: Markdown from saved JSON results.

  bench/report.py RESULT.json                 # the report of one run
  bench/report.py A.json B.json ...           # runs of the same cell pooled
  bench/report.py --compare BEFORE.json AFTER.json   # side by side, with changes
  (-o FILE writes the Markdown there instead of stdout)

Reads what measure.py writes (format 2) and what the older run.py wrote
(format 1: no open-loop latency, serve, scaling or density). Nothing is
re-run. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROW_ORDER = ["hyper", "isola", "serve100", "serve100q", "serve1", "deno", "workerd"]
LABEL = {
    "hyper": "raw hyper (current_thread)",
    "isola": "isola-edge dev",
    "serve100": "isola-edge serve, 100 workers",
    "serve100q": "isola-edge serve, 100 workers, trace events off",
    "serve1": "isola-edge serve, 1 of 100 workers",
    "deno": "deno serve",
    "workerd": "workerd",
}
ISOLA_ROWS = ("isola", "serve100")

# Targets of the performance issue that this harness measures.
CPU_TARGET = "Warm CPU per request ≤ deno's"
SCALING_TARGET = 1.8
STARTUP_TARGET_MS = 10.0
# Trace events' cost on the warm path (the observability issue, #15).
EVENTS_TARGET = 0.05


def events_what(e: dict) -> str:
    return "one warm worker" if e["one"] else f"{e['workers']} workers"


def label(row: str, cell: dict | None = None) -> str:
    if row.startswith("serve-t"):
        return f"isola-edge serve, {row[len('serve-t'):]} thread(s)"
    if row.startswith("serve-k"):
        return f"isola-edge serve, {row[len('serve-k'):]} tenants taking turns"
    if row.startswith("deno-x"):
        n = row[len("deno-x"):]
        return f"deno serve, {n} process{'' if n == '1' else 'es'}"
    if row in ("serve100", "serve100q", "serve1") and cell and cell.get("setup"):
        n = cell["setup"].get("workers", 100)
        return {"serve100": f"isola-edge serve, {n} workers",
                "serve100q": f"isola-edge serve, {n} workers, trace events off",
                "serve1": f"isola-edge serve, 1 of {n} workers"}[row]
    return LABEL.get(row, row)


# --------------------------------------------------------------------------
# numbers


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


def change(a, b):
    """B relative to A, as a signed percentage."""
    if a is None or b is None or not a:
        return "–"
    return f"{(b / a - 1) * 100:+.1f}%"


def row_of(cell: dict) -> str:
    return cell.get("row") or cell["server"]  # format 1 named it "server"


def summarize(cell: dict) -> dict:
    runs = cell.get("runs", [])
    rps = [r["rps"] for r in runs]
    opens = cell.get("open_runs", [])
    return {
        "rps": med(rps),
        "rps_min": min(rps) if rps else None,
        "rps_max": max(rps) if rps else None,
        "closed_p50_ms": med([r.get("p50_ms") for r in runs]),
        "closed_p99_ms": med([r.get("p99_ms") for r in runs]),
        "cpu_us": med([r.get("cpu_us_per_req") for r in runs]),
        "cpu_util": med([r.get("cpu_util") for r in runs]),
        "load_util": med([r.get("load_cpu_util", r.get("wrk_cpu_util")) for r in runs]),
        "control_util": med([r.get("control_cpu_util") for r in runs]),
        "control_us": med([r.get("control_cpu_us_per_req") for r in runs]),
        "other_util": med([r.get("other_cpu_util") for r in runs]),
        "errors": sum(r.get("errors", 0) for r in runs),
        "n": len(runs),
        "offered": cell.get("open_rate"),
        "achieved": med([r.get("achieved_rps") for r in opens]),
        "p50_ms": med([r.get("p50_ms") for r in opens]),
        "p99_ms": med([r.get("p99_ms") for r in opens]),
        "p999_ms": med([r.get("p999_ms") for r in opens]),
        "max_ms": med([r.get("max_ms") for r in opens]),
        "open_cpu_us": med([r.get("cpu_us_per_req") for r in opens]),
        "open_cpu_util": med([r.get("cpu_util") for r in opens]),
        "open_load_util": med([r.get("load_cpu_util") for r in opens]),
        "open_errors": sum(r.get("errors", 0) for r in opens),
        "open_n": len(opens),
    }


# --------------------------------------------------------------------------
# loading and pooling


def load(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: cannot read a result ({e}); pass a .json written by bench/run.sh")
    if not isinstance(raw, dict) or "cells" not in raw or "config" not in raw:
        sys.exit(f"{path}: not a benchmark result (no `cells`/`config`); pass a .json written "
                 "by bench/run.sh, not the .md")
    raw.setdefault("format", 1)
    raw.setdefault("source", str(path))
    for cell in raw["cells"]:
        cell.setdefault("row", row_of(cell))
    return raw


def pool(results: list[dict]) -> dict:
    """Several results as one: the runs of the same cell (and startup
    spawns, scaling runs) pooled; config and environment of the first."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    out["sources"] = [r["source"] for r in results]
    for key in ("cells", "scaling", "tenants"):
        merged: dict[tuple, dict] = {}
        for r in results:
            for cell in r.get(key) or []:
                k = (row_of(cell), cell["workload"])
                if k not in merged:
                    merged[k] = json.loads(json.dumps(cell))
                    continue
                m = merged[k]
                m["runs"] = m.get("runs", []) + cell.get("runs", [])
                m["open_runs"] = m.get("open_runs", []) + cell.get("open_runs", [])
                m["problems"] = m.get("problems", []) + cell.get("problems", [])
        out[key] = list(merged.values())
    starts: dict[str, dict] = {}
    for r in results:
        for st in r.get("startup") or []:
            s = starts.setdefault(st["server"], {"server": st["server"], "ms": [], "problems": []})
            s["ms"] += st["ms"]
            s["problems"] += st["problems"]
    out["startup"] = list(starts.values())
    out["latency_rates"] = {w: v for r in results for w, v in (r.get("latency_rates") or {}).items()}
    out["density"] = next((r["density"] for r in reversed(results) if r.get("density")), None)
    out["events"] = pool_events([e for r in results for e in r.get("events") or []])
    out["problems"] = [p for r in results for p in r.get("problems", [])]
    out["elapsed_s"] = sum(r.get("elapsed_s", 0) for r in results)
    return out


def pool_events(events: list[dict]) -> list[dict]:
    """Paired events runs of the same setting as one: all their rounds."""
    pooled: dict[tuple, dict] = {}
    for e in events:
        key = (e["workload"], e["one"], e["workers"], e["rate"])
        p = pooled.setdefault(key, dict(e, rounds=[], runs=[]))
        p["rounds"] = p["rounds"] + e["rounds"]
        p["runs"].append(e)
    for p in pooled.values():
        p["median"] = statistics.median(p["rounds"])
        p["sides"] = {side: {k: statistics.median(r["sides"][side][k] for r in p["runs"])
                             for k in p["sides"][side]} for side in p["labels"]}
        del p["runs"]
    return list(pooled.values())


def cells_by(raw: dict, key: str = "cells") -> dict[tuple[str, str], dict]:
    return {(row_of(c), c["workload"]): c for c in raw.get(key) or []}


def rows_in(raw: dict, workload: str) -> list[str]:
    have = {row_of(c) for c in raw.get("cells", []) if c["workload"] == workload}
    return [r for r in ROW_ORDER if r in have] + sorted(have - set(ROW_ORDER))


def workloads_in(raw: dict) -> list[str]:
    seen = []
    for c in raw.get("cells", []) + (raw.get("scaling") or []):
        if c["workload"] not in seen:
            seen.append(c["workload"])
    return seen


# --------------------------------------------------------------------------
# density figures of interest


def density_find(raw: dict, *words: str) -> dict | None:
    """The density row whose figure contains every word (case-insensitive)."""
    d = raw.get("density") or {}
    for row in d.get("rows", []):
        f = row["figure"].lower()
        if all(w.lower() in f for w in words):
            return row
    return None


def density_num(row: dict | None, i: int) -> float | None:
    if not row or len(row["numbers"]) <= i:
        return None
    return row["numbers"][i]["value"]


def idle_floor(raw: dict) -> str:
    """What the idle-isolate row sits on, from the density bench's floor
    rows: V8's own isolate and a bare deno_core runtime, each kept idle."""
    row = density_find(raw, "rss per isolate", "kept")
    v8, core = density_num(row, 0), density_num(row, 1)
    if v8 is None or core is None:
        return ""
    return (f"; beneath it: V8's own isolate and context {v8:.2f} MiB, a bare deno_core "
            f"runtime {core:.2f} MiB")


# --------------------------------------------------------------------------
# one report


def render(raw: dict) -> str:
    c = raw["config"]
    env = raw.get("env", {})
    by = cells_by(raw)
    out = [f"# Isola benchmark — {raw.get('started', '?')}", ""]
    if raw.get("sources"):
        out += [f"Pooled from {len(raw['sources'])} results: "
                + ", ".join(f"`{Path(s).name}`" for s in raw["sources"])
                + " (runs of the same cell pooled; medians over all of them).", ""]
    pinned = raw.get("pinned", True)
    # Files before the harness measured in rounds have no `rounds` key.
    rounds = (" (in rounds: the servers other than `serve` started side by side, each "
              "measured once a round)") if c.get("rounds") else ""
    out += [
        f"- Machine: {env.get('cpu', '?')}, {env.get('cpus', '?')} CPUs, kernel "
        f"{env.get('kernel', '?')}",
        f"- Pinning: server on CPU {c['server_cpu']}, load generator (and control plane) on "
        f"CPU {c['load_cpu']}" + ("" if pinned else " (NOT pinned: fewer than 2 usable CPUs)"),
        f"- Throughput: `wrk -t{c['threads']} -c{c['connections']} -d{c['duration_s']}s` "
        f"(closed loop, keep-alive), warm-up {c['warmup_s']} s{spread_warmup(raw)}"
        f", {c['runs']} runs per cell{rounds}; "
        "medians over runs.",
    ]
    if raw.get("latency_rates"):
        rates = "; ".join(f"`{w}` {v['rps']:,.0f} req/s ({v['basis']})"
                          for w, v in raw["latency_rates"].items())
        out.append(f"- Latency: `oha -q RATE --latency-correction -c "
                   f"{c.get('latency_connections', c['connections'])} "
                   f"-z {c.get('latency_duration_s', c['duration_s'])}s` (open loop), "
                   f"{c['runs']} runs per cell after the throughput runs; rates: {rates}.")
    if raw.get("scaling"):
        out.append(f"- Thread scaling: `isola-edge serve` with threads "
                   f"{', '.join(map(str, c.get('scaling_threads', [])))}, NOT pinned: the edge, "
                   f"its control plane and `wrk -t{c.get('scaling_wrk_threads')}` share every core.")
    if raw.get("startup"):
        out.append(f"- Startup: median of {c['startup_runs']} spawns per server.")
    out += [f"- Total harness time: {raw.get('elapsed_s', 0):.0f} s", ""]
    if env.get("versions"):
        out += ["| component | version |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in env["versions"].items()]
        out += ["", "<details><summary>CPU vulnerability mitigations</summary>", ""]
        out += [f"- {v}" for v in env.get("mitigations", [])] or ["- unknown"]
        out += ["", "</details>", ""]

    out += render_targets(raw)
    for w in [w for w in workloads_in(raw) if any(k[1] == w for k in by)]:
        out += render_workload(raw, w)
    out += render_scaling(raw)
    out += render_tenants(raw)
    out += render_startup(raw)
    out += render_events(raw)
    out += render_density(raw)
    out += render_problems(raw)
    out += [
        "Notes (bench/README.md has the details): *vs hyper*, *vs deno* = value ÷ that "
        "server's value for the same workload in the same run. *CPU µs/req* = the server "
        "process's utime+stime over a run ÷ requests completed in it. *server CPU* = that "
        "CPU time ÷ wall time (100% = its core is saturated). *load CPU* = wrk's (or oha's). "
        "*control CPU* = the control plane's, receiving usage and trace events (`serve` rows). "
        "*other CPU* = everything else on the machine: noise. Latency columns come from the "
        "open-loop runs (corrected for coordinated omission); *achieved* below *offered* means "
        "the server could not keep up and latency grew with the queue.",
        "",
    ]
    return "\n".join(out)


def render_targets(raw: dict) -> list[str]:
    by = cells_by(raw)
    rows = []
    for w in workloads_in(raw):
        deno = by.get(("deno", w))
        d = summarize(deno)["cpu_us"] if deno else None
        for r in ISOLA_ROWS:
            cell = by.get((r, w))
            if not cell:
                continue
            v = summarize(cell)["cpu_us"]
            ok = None if v is None or d is None else v <= d
            rows.append((f"{CPU_TARGET}: {label(r, cell)}, `{w}`",
                         f"{fmt(v, '.1f')} µs vs deno {fmt(d, '.1f')} µs ({ratio(v, d)})", ok))
    for w, (r1, rn, n) in scaling_pairs(raw).items():
        x = None if not r1 or not rn else rn / r1
        cap = scaling_ceiling(raw, w)
        rows.append((f"`serve` {n} threads ≥ {SCALING_TARGET}× 1 thread (shared cores), `{w}`",
                     f"{fmt(x, '.2f')}× ({fmt(r1, ',.0f')} → {fmt(rn, ',.0f')} req/s)"
                     + (f"; this box's ceiling {cap:.2f}×" if cap else ""),
                     None if x is None else x >= SCALING_TARGET))
    for e in raw.get("events") or []:
        x = e["median"]
        on, off = (e["sides"][label]["total"] for label in e["labels"])
        rows.append((f"Trace events cost ≤ {EVENTS_TARGET:.0%} of edge CPU (`serve`, `hello`, "
                     f"{events_what(e)}, events on vs off paired)",
                     f"{x * 100:+.1f} % (median of {len(e['rounds'])} rounds; "
                     f"{on:.2f} vs {off:.2f} µs)", x <= EVENTS_TARGET))
    for w in workloads_in(raw) if not raw.get("events") else []:
        # Older results: the sequential rows, which spread far more.
        on, off = by.get(("serve100", w)), by.get(("serve100q", w))
        if not on or not off:
            continue
        # At one offered rate (open loop) when measured: closed-loop load
        # differs between the rows, since the control plane's event intake
        # shares the load generator's core.
        s_off, s_on = summarize(off), summarize(on)
        key, how = (("open_cpu_us", "same offered rate")
                    if s_off["open_cpu_us"] is not None and s_on["open_cpu_us"] is not None
                    else ("cpu_us", "closed loop"))
        a, b = s_off[key], s_on[key]
        x = None if a is None or b is None or not a else b / a - 1
        rows.append((f"Trace events cost ≤ {EVENTS_TARGET:.0%} of edge CPU (`serve`, "
                     f"events on vs off, {how}), `{w}`",
                     f"{fmt(b, '.1f')} µs vs {fmt(a, '.1f')} µs ({change(a, b)})",
                     None if x is None else x <= EVENTS_TARGET))
    st = next((s for s in raw.get("startup") or [] if s["server"] == "isola"), None)
    if st and st["ms"]:
        m = med(st["ms"])
        rows.append((f"Process start → first 200 ≤ {STARTUP_TARGET_MS:g} ms (isola-edge dev)",
                     f"median {m:.2f} ms, max {max(st['ms']):.2f} ms", m <= STARTUP_TARGET_MS))
    if raw.get("density"):
        stock = density_find(raw, "unseen", "stock:") or density_find(raw, "unseen", "ready")
        p50, p99 = density_num(stock, 0), density_num(stock, 1)
        rows.append(("First request to an unseen worker (ready stock): p50 ≤ 0.5 ms, p99 ≤ 2 ms",
                     stock["value"] if stock else "not in the density output",
                     None if p50 is None or p99 is None else p50 <= 0.5 and p99 <= 2.0))
        burst = (density_find(raw, "unseen", "exhausted") or density_find(raw, "unseen", "burst")
                 or density_find(raw, "unseen", "no stock"))
        p99 = density_num(burst, 1)
        rows.append(("First request, stock exhausted: p99 ≤ 5 ms"
                     + (f" (density row “{burst['figure']}”)" if burst else ""),
                     burst["value"] if burst else "not in the density output",
                     None if p99 is None else p99 <= 5.0))
        # A later isolate of the version (code cache warm) when the bench
        # tells the cases apart.
        big = (density_find(raw, "1 mb", "cache warm") or density_find(raw, "1 mb")
               or density_find(raw, "1 mib"))
        p50 = density_num(big, 0)
        rows.append(("First request, 1 MB bundle: p50 ≤ 10 ms"
                     + (f" (density row “{big['figure']}”)" if big else ""),
                     big["value"] if big else "not in the density output",
                     None if p50 is None else p50 <= 10.0))
        alone, churning = density_find(raw, "hot worker alone"), density_find(raw, "hot worker while")
        rss = density_find(raw, "churn: rss")
        a, c = density_num(alone, 1), density_num(churning, 1)
        at_cap, most = density_num(rss, 0), density_num(rss, 1)
        if None in (a, c, at_cap, most):
            rows.append(("10,000 workers churning: hot worker p99 unchanged, memory bounded",
                         "not in the density output", None))
        else:
            # Unchanged: within 1 ms (a request held up by a load waits ~3 ms);
            # bounded: no more than a quarter over the RSS when the cap was reached.
            rows.append(("10,000 workers loaded back to back under an isolate cap: hot worker "
                         "p99 unchanged (within 1 ms), RSS bounded (≤ 1.25× at the cap)",
                         f"hot p99 {a:.3f} ms alone, {c:.3f} ms during the churn; "
                         f"RSS {at_cap:.0f} MiB at the cap, {most:.0f} MiB at most",
                         c <= a + 1.0 and most <= 1.25 * at_cap))
        iso = density_find(raw, "rss", "1000") or density_find(raw, "rss", "1,000")
        v = density_num(iso, 0)
        rows.append(("Idle worker isolate ≤ 2 MiB RSS at 1,000 workers",
                     (iso["value"] if iso else "not in the density output") + idle_floor(raw),
                     None if v is None else v <= 2.0))
    if not rows:
        return []
    out = ["## Targets (issue #17)", "", "| target | measured | met |", "|---|---|:-:|"]
    for name, value, ok in rows:
        out.append(f"| {name} | {value} | {'–' if ok is None else ('yes' if ok else '**no**')} |")
    return out + [""] + tenants_beside_deno(raw)


def tenants_beside_deno(raw: dict) -> list[str]:
    """The most tenants measured, isola-edge serve beside deno serve with
    as many processes: what the `serve` target's deno does for isolation."""
    by = {row_of(c): c for c in raw.get("tenants") or []}
    n = max((c["tenants"] for c in by.values() if row_of(c).startswith("deno-x")), default=0)
    mine, theirs = by.get(f"serve-k{n}"), by.get(f"deno-x{n}")
    if n < 2 or not mine or not theirs:
        return []
    a, b = summarize(mine)["cpu_us"], summarize(theirs)["cpu_us"]
    return [f"Beside the `serve` rows: deno serve isolates tenants by process. With {n} "
            f"tenants (one process each) it spends {fmt(b, '.1f')} µs of CPU per `hello` "
            f"request, isola-edge serve with {n} workers {fmt(a, '.1f')} µs "
            f"({ratio(a, b)}); see *Tenants taking turns*.", ""]


def render_workload(raw: dict, w: str) -> list[str]:
    by = cells_by(raw)
    base = summarize(by[("hyper", w)]) if ("hyper", w) in by else {}
    deno = summarize(by[("deno", w)]) if ("deno", w) in by else {}
    rows = rows_in(raw, w)
    serve = any(r.startswith("serve") for r in rows)
    out = [f"## Workload `{w}`", "", "Throughput and CPU (closed loop, wrk):", "",
           "| server | req/s | min–max | vs hyper | CPU µs/req | vs hyper | vs deno "
           "| server CPU | load CPU |" + (" control CPU |" if serve else "")
           + " other CPU | RSS MiB | errors |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|" + ("--:|" if serve else "") + "--:|--:|--:|"]
    for r in rows:
        cell = by[(r, w)]
        m = summarize(cell)
        if m["n"] == 0:
            out.append(f"| {label(r, cell)} | **failed** |" + " |" * (10 + serve))
            continue
        rss = cell.get("rss_kib_after")
        control = ""
        if serve:
            control = (f" {pct(m['control_util'])} ({fmt(m['control_us'], '.1f')} µs/req) |"
                       if m["control_util"] is not None else " – |")
        out.append(
            f"| {label(r, cell)} | {fmt(m['rps'], ',.0f')} "
            f"| {fmt(m['rps_min'], ',.0f')}–{fmt(m['rps_max'], ',.0f')} "
            f"| {ratio(m['rps'], base.get('rps'))} "
            f"| {fmt(m['cpu_us'], '.1f')} | {ratio(m['cpu_us'], base.get('cpu_us'))} "
            f"| {ratio(m['cpu_us'], deno.get('cpu_us'))} "
            f"| {pct(m['cpu_util'])} | {pct(m['load_util'])} |{control} {pct(m['other_util'])} "
            f"| {fmt(None if rss is None else rss / 1024, '.1f')} | {m['errors']} |")
    out.append("")
    opened = [r for r in rows if summarize(by[(r, w)])["open_n"]]
    if opened:
        rate = (raw.get("latency_rates") or {}).get(w, {}).get("rps")
        out += [f"Latency (open loop, oha, {fmt(rate, ',.0f')} req/s offered):", "",
                "| server | achieved req/s | p50 ms | p99 ms | vs hyper | vs deno | p99.9 ms "
                "| max ms | CPU µs/req | server CPU | load CPU | errors |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in opened:
            cell = by[(r, w)]
            m = summarize(cell)
            short = m["achieved"] is not None and m["offered"] and m["achieved"] < 0.95 * m["offered"]
            out.append(
                f"| {label(r, cell)} | {fmt(m['achieved'], ',.0f')}{' ⚠' if short else ''} "
                f"| {fmt(m['p50_ms'], '.3f')} | {fmt(m['p99_ms'], '.3f')} "
                f"| {ratio(m['p99_ms'], base.get('p99_ms'), '.1f')} "
                f"| {ratio(m['p99_ms'], deno.get('p99_ms'), '.1f')} "
                f"| {fmt(m['p999_ms'], '.3f')} | {fmt(m['max_ms'], '.2f')} "
                f"| {fmt(m['open_cpu_us'], '.1f')} | {pct(m['open_cpu_util'])} "
                f"| {pct(m['open_load_util'])} | {m['open_errors']} |")
        out.append("")
    elif any(summarize(by[(r, w)])["closed_p99_ms"] is not None for r in rows):
        out += ["Latency (closed loop, wrk; this result has no open-loop runs):", "",
                "| server | p50 ms | p99 ms | vs hyper |", "|---|--:|--:|--:|"]
        for r in rows:
            m = summarize(by[(r, w)])
            out.append(f"| {label(r, by[(r, w)])} | {fmt(m['closed_p50_ms'], '.3f')} "
                       f"| {fmt(m['closed_p99_ms'], '.3f')} "
                       f"| {ratio(m['closed_p99_ms'], base.get('closed_p99_ms'), '.1f')} |")
        out.append("")
    return out


def scaling_pairs(raw: dict) -> dict[str, tuple]:
    """Per workload: (1-thread req/s, most-threads req/s, most threads)."""
    out = {}
    cells = raw.get("scaling") or []
    for w in workloads_in(raw):
        ts = {}
        for cell in cells:
            if cell["workload"] == w:
                ts[int(row_of(cell)[len("serve-t"):])] = summarize(cell)["rps"]
        if 1 in ts and len(ts) > 1:
            n = max(ts)
            out[w] = (ts[1], ts[n], n)
    return out


def scaling_cores(raw: dict, cell: dict) -> int | None:
    """The cores a scaling cell ran on; for results before cells noted
    them, the box's."""
    return (cell.get("setup") or {}).get("cores") or (raw.get("env") or {}).get("cpus")


def scaling_ceiling(raw: dict, workload: str) -> float | None:
    """The most any thread count could reach over 1 thread when every
    process shares the box's cores: the cores over the CPU (in cores) that the
    edge, wrk, the control plane and the rest spent at 1 thread. It holds
    if each process's CPU per request stays what it was at 1 thread."""
    one = next((c for c in raw.get("scaling") or []
                if c["workload"] == workload and row_of(c) == "serve-t1"), None)
    if not one:
        return None
    cores = scaling_cores(raw, one)
    if not cores:
        return None
    m = summarize(one)
    parts = [m["cpu_util"], m["load_util"], m["control_util"], m["other_util"]]
    if any(v is None for v in parts) or sum(parts) <= 0:
        return None
    return cores / sum(parts)


def render_scaling(raw: dict) -> list[str]:
    cells = raw.get("scaling") or []
    if not cells:
        return []
    out = ["## Thread scaling (`isola-edge serve`, all workers, cores shared with wrk)", "",
           "| workload | threads | req/s | min–max | vs 1 thread | CPU µs/req | server CPU "
           "| load CPU | control CPU | other CPU | errors |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for w in workloads_in(raw):
        mine = sorted((c for c in cells if c["workload"] == w),
                      key=lambda c: int(row_of(c)[len("serve-t"):]))
        one = next((summarize(c)["rps"] for c in mine if row_of(c) == "serve-t1"), None)
        for cell in mine:
            m = summarize(cell)
            t = row_of(cell)[len("serve-t"):]
            if m["n"] == 0:
                out.append(f"| `{w}` | {t} | **failed** |" + " |" * 8)
                continue
            out.append(
                f"| `{w}` | {t} | {fmt(m['rps'], ',.0f')} "
                f"| {fmt(m['rps_min'], ',.0f')}–{fmt(m['rps_max'], ',.0f')} "
                f"| {ratio(m['rps'], one)} | {fmt(m['cpu_us'], '.1f')} | {pct(m['cpu_util'])} "
                f"| {pct(m['load_util'])} | {pct(m['control_util'])} | {pct(m['other_util'])} "
                f"| {m['errors']} |")
    ceilings = [(w, scaling_ceiling(raw, w)) for w in workloads_in(raw)]
    ceilings = [f"`{w}` {x:.2f}×" for w, x in ceilings if x]
    out += ["", "Server CPU here is a share of one core (200% = both)."]
    if ceilings:
        cores = scaling_cores(raw, cells[0])
        out += ["", f"Ceiling on this box ({cores} cores shared by every process): "
                f"{', '.join(ceilings)}. That is {cores} cores over the CPU that the edge, wrk, "
                "the control plane and the rest spent at 1 thread (their shares above), "
                "so no thread count beats it while each request costs what it did there."]
    return out + [""]


def render_tenants(raw: dict) -> list[str]:
    """CPU per request by how many tenants take turns: isola-edge serve's
    workers (one isolate each, one process), and deno serve processes."""
    cells = raw.get("tenants") or []
    if not cells:
        return []
    c = raw["config"]
    by = {row_of(cell): cell for cell in cells}
    isola = sorted((x for x in cells if row_of(x).startswith("serve-k")),
                   key=lambda x: x["tenants"])
    deno = sorted((x for x in cells if row_of(x).startswith("deno-x")),
                  key=lambda x: x["tenants"])
    out = [f"## Tenants taking turns (`hello`, closed loop: `oha -c {c['connections']} "
           f"-z {c['duration_s']}s`, {c['runs']} runs)", "",
           "Each request goes to one of N tenants at random, on kept-alive connections. "
           "isola-edge serve runs each tenant (worker) in its own isolate in one process; "
           "deno serve has one isolate per process, so its N tenants are N processes, all "
           "on the server's core. CPU counts every process of the row.", "",
           "| server | tenants | req/s | CPU µs/req | vs 1 tenant | vs deno, same tenants "
           "| server CPU | load CPU | control CPU | RSS MiB | errors |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for group, name in ((isola, "isola-edge serve"), (deno, "deno serve")):
        one = next((summarize(x)["cpu_us"] for x in group if x["tenants"] == 1), None)
        for cell in group:
            n, m = cell["tenants"], summarize(cell)
            what = label(row_of(cell)) if group is deno else name
            if m["n"] == 0:
                out.append(f"| {what} | {n} | **failed** |" + " |" * 8)
                continue
            peer = by.get(f"deno-x{n}") if group is isola else None
            rss = cell.get("rss_kib_after")
            out.append(
                f"| {what} | {n} | {fmt(m['rps'], ',.0f')} | {fmt(m['cpu_us'], '.1f')} "
                f"| {ratio(m['cpu_us'], one)} "
                f"| {ratio(m['cpu_us'], summarize(peer)['cpu_us']) if peer else '–'} "
                f"| {pct(m['cpu_util'])} | {pct(m['load_util'])} | {pct(m['control_util'])} "
                f"| {fmt(None if rss is None else rss / 1024, '.1f')} | {m['errors']} |")
    return out + [""]


def render_startup(raw: dict) -> list[str]:
    startups = raw.get("startup") or []
    if not startups:
        return []
    base = next((s for s in startups if s["server"] == "hyper"), None)
    bmed = med(base["ms"]) if base else None
    out = ["## Process start → first 200 (`GET /`, hello worker)", "",
           "| server | median ms | min ms | max ms | vs hyper | runs |", "|---|--:|--:|--:|--:|--:|"]
    for st in startups:
        ms = st["ms"]
        out.append(f"| {label(st['server'])} | {fmt(med(ms))} | {fmt(min(ms) if ms else None)} "
                   f"| {fmt(max(ms) if ms else None)} | {ratio(med(ms), bmed, '.1f')} "
                   f"| {len(ms)} |")
    return out + [""]


def render_event_sides(e: dict) -> list[str]:
    """CPU µs per request of each side of a paired events run, by thread."""
    out = ["| edge | V8 threads | main (shipper, QUIC) | other | total |",
           "|---|--:|--:|--:|--:|"]
    for side in e["labels"]:
        m = e["sides"][side]
        out.append(f"| {side} | {m['v8']:.2f} | {m['main']:.2f} | {m['other']:.2f} "
                   f"| {m['total']:.2f} |")
    return out


def render_events(raw: dict) -> list[str]:
    events = raw.get("events") or []
    if not events:
        return []
    out = ["## Trace events on vs off, paired (`bench/events_overhead.py`)", "",
           "Two `isola-edge serve` edges on the server's core at once, one with "
           "`trace_events = false`, each offered half the rate by oha; the identities swap "
           "every round. CPU µs per request, every thread, medians over rounds.", ""]
    for e in events:
        out += [f"`hello`, {events_what(e)}, {e['rate']:,} req/s in all, "
                f"{len(e['rounds'])} rounds of {e['window_s']:g} s: median "
                f"**{e['median'] * 100:+.1f} %** (rounds: "
                + ", ".join(f"{r * 100:+.1f} %" for r in e["rounds"]) + ")", ""]
        out += render_event_sides(e) + [""]
    return out


def render_density(raw: dict) -> list[str]:
    d = raw.get("density")
    if not d:
        return []
    out = ["## Density (`cargo bench -p isola-runtime --bench density`)", "",
           f"Source: {d.get('source', '?')}.", "", "| figure | value |", "|---|---|"]
    out += [f"| {r['figure']} | {r['value']} |" for r in d.get("rows", [])]
    return out + [""]


def spread_warmup(raw: dict) -> str:
    """How cells whose load is spread over many workers were warmed: a fixed
    time (older results), or by requests per worker and what that took."""
    c = raw["config"]
    if "warmup_spread_requests" not in c:
        return (f" ({c['warmup_spread_s']} s where the load is spread over many workers)"
                if "warmup_spread_s" in c else "")
    warmed = [cell["warmup"] for cell in raw.get("cells", []) + (raw.get("tenants") or [])
              + (raw.get("scaling") or []) if cell.get("warmup")]
    secs = [w["seconds"] for w in warmed]
    # Since 2026-12-08 an edge's replicas of a worker (one per V8 thread)
    # count apart: each isolate tiers its code up by what it ran.
    each = ("each isolate serving them" if any("isolates" in w for w in warmed)
            else "each worker")
    took = ""
    if secs:
        lo, hi = min(secs), max(secs)
        took = f"; took {lo:.0f} s" if round(lo) == round(hi) else f"; took {lo:.0f}–{hi:.0f} s"
    return (f" (where the load is spread over many workers: at least {c['warmup_spread_s']} s, "
            f"then until {each} has had {c['warmup_spread_requests']:,} requests, at most "
            f"{c['warmup_spread_max_s']} s{took})")


def render_problems(raw: dict) -> list[str]:
    problems = [f"- {p}" for p in raw.get("problems", [])]
    for cell in raw.get("cells", []) + (raw.get("scaling") or []) + (raw.get("tenants") or []):
        name = f"{label(row_of(cell), cell)} / `{cell['workload']}`"
        problems += [f"- {name}: {p}" for p in cell.get("problems", [])]
        if cell.get("noisy_discarded"):
            problems.append(f"- {name}: {cell['noisy_discarded']} run(s) discarded and redone "
                            "because other processes used CPU during them")
        if cell.get("log_tail"):
            problems.append("  ```\n" + "\n".join("  " + ln for ln in cell["log_tail"].splitlines())
                            + "\n  ```")
    for st in raw.get("startup") or []:
        problems += [f"- {label(st['server'])} / startup: {p}" for p in st["problems"]]
    for p in (raw.get("density") or {}).get("problems", []):
        problems.append(f"- density: {p}")
    return ["## Problems observed", ""] + (problems or ["None."]) + [""]


# --------------------------------------------------------------------------
# comparison


def render_compare(a: dict, b: dict) -> str:
    out = ["# Isola benchmark comparison", "",
           f"- A (before): `{Path(a['source']).name}`, {a.get('started', '?')}, "
           f"{a.get('env', {}).get('versions', {}).get('isola-edge', '?')}",
           f"- B (after): `{Path(b['source']).name}`, {b.get('started', '?')}, "
           f"{b.get('env', {}).get('versions', {}).get('isola-edge', '?')}",
           "",
           "Absolute numbers move with the machine and its load between runs; the same-run "
           "ratios (*vs deno*, *vs hyper*) are the fairer comparison.", ""]
    ba, bb = cells_by(a), cells_by(b)
    for w in dict.fromkeys(workloads_in(a) + workloads_in(b)):
        rows = [r for r in ROW_ORDER if (r, w) in ba or (r, w) in bb]
        if not rows:
            continue

        def side(by, r):
            return summarize(by[(r, w)]) if (r, w) in by else {}

        deno_a, deno_b = side(ba, "deno"), side(bb, "deno")
        hyper_a, hyper_b = side(ba, "hyper"), side(bb, "hyper")
        out += [f"## Workload `{w}`", "",
                "| server | req/s A | req/s B | Δ | CPU µs/req A | B | Δ | vs deno A | B "
                "| vs hyper A | B | p99 ms A | B | Δ |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for r in rows:
            x, y = side(ba, r), side(bb, r)
            out.append(
                f"| {label(r, ba.get((r, w)) or bb.get((r, w)))} "
                f"| {fmt(x.get('rps'), ',.0f')} | {fmt(y.get('rps'), ',.0f')} "
                f"| {change(x.get('rps'), y.get('rps'))} "
                f"| {fmt(x.get('cpu_us'), '.1f')} | {fmt(y.get('cpu_us'), '.1f')} "
                f"| {change(x.get('cpu_us'), y.get('cpu_us'))} "
                f"| {ratio(x.get('cpu_us'), deno_a.get('cpu_us'))} "
                f"| {ratio(y.get('cpu_us'), deno_b.get('cpu_us'))} "
                f"| {ratio(x.get('cpu_us'), hyper_a.get('cpu_us'))} "
                f"| {ratio(y.get('cpu_us'), hyper_b.get('cpu_us'))} "
                f"| {fmt(x.get('p99_ms'), '.3f')} | {fmt(y.get('p99_ms'), '.3f')} "
                f"| {change(x.get('p99_ms'), y.get('p99_ms'))} |")
        out.append("")
    sa, sb = scaling_pairs(a), scaling_pairs(b)
    if sa or sb:
        out += ["## Thread scaling", "", "| workload | A | B |", "|---|--:|--:|"]
        for w in dict.fromkeys(list(sa) + list(sb)):
            def sc(p):
                return f"{p[1] / p[0]:.2f}× ({p[2]} threads)" if p and p[0] and p[1] else "–"
            out.append(f"| `{w}` | {sc(sa.get(w))} | {sc(sb.get(w))} |")
        out.append("")
    sta = {s["server"]: med(s["ms"]) for s in a.get("startup") or []}
    stb = {s["server"]: med(s["ms"]) for s in b.get("startup") or []}
    if sta or stb:
        out += ["## Process start → first 200, median ms", "", "| server | A | B | Δ |",
                "|---|--:|--:|--:|"]
        for s in [s for s in ROW_ORDER if s in sta or s in stb]:
            out.append(f"| {label(s)} | {fmt(sta.get(s))} | {fmt(stb.get(s))} "
                       f"| {change(sta.get(s), stb.get(s))} |")
        out.append("")
    da = {r["figure"]: r["value"] for r in (a.get("density") or {}).get("rows", [])}
    db = {r["figure"]: r["value"] for r in (b.get("density") or {}).get("rows", [])}
    if da or db:
        out += ["## Density", "", "| figure | A | B |", "|---|---|---|"]
        for f in dict.fromkeys(list(da) + list(db)):
            out.append(f"| {f} | {da.get(f, '–')} | {db.get(f, '–')} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description="Render or compare saved benchmark results (bench/results/*.json).")
    ap.add_argument("results", nargs="*", type=Path, help="result files; several are pooled")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                    help="two results side by side, with B's change against A")
    ap.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = ap.parse_args(argv)
    if args.compare and args.results:
        ap.error("give either result files or --compare A B, not both")
    if args.compare:
        md = render_compare(load(args.compare[0]), load(args.compare[1]))
    elif args.results:
        md = render(pool([load(p) for p in args.results]))
    else:
        ap.error("name at least one result file (bench/results/<stamp>.json)")
    if args.output:
        args.output.write_text(md)
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
