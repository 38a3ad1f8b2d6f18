"""Tests of the harness's pure parts: density parsing, report rendering,
pooling and comparison. `python3 -m unittest bench/test_harness.py` (no
server is started)."""

import json
import sys
import tempfile
import unittest
from unittest import mock
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import instructions  # noqa: E402
import link_order  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402

DENSITY_OUT = """| figure | value |
|---|---|
| RSS per idle worker isolate, 100 workers | 2.76 MiB |
| RSS per idle worker isolate, 1000 workers | 1.90 MiB |
| first request to an unseen worker, ready-isolate stock: p50 / p99 | 0.42 ms / 2.44 ms |
| first request to an unseen worker, no stock: p50 / p99 | 4.89 ms / 11.20 ms |
| busy loop past a 50 ms CPU limit: median / max overrun (CPU) | 0.50 ms / 1.10 ms |
| busy loop: request → 503, median wall time | 51.2 ms |
"""


def run(rps, cpu_us, p99=None):
    r = {"rps": rps, "cpu_us_per_req": cpu_us, "cpu_util": 0.9, "load_cpu_util": 0.5,
         "other_cpu_util": 0.01, "errors": 0, "p50_ms": 0.4, "p99_ms": 1.0}
    if p99 is not None:
        r.update(achieved_rps=rps, p50_ms=p99 / 4, p99_ms=p99, p999_ms=p99 * 2, max_ms=p99 * 3)
    return r


def cell(row, workload, rps, cpu_us, p99):
    return {"row": row, "workload": workload, "runs": [run(rps, cpu_us)],
            "open_runs": [run(rps / 2, cpu_us, p99)], "open_rate": rps / 2, "problems": []}


def result(isola_cpu, scaling=(50_000, 85_000)):
    return {
        "format": 2, "started": "2026-11-30 03:00:00", "elapsed_s": 10, "pinned": True,
        "config": {"server_cpu": 1, "load_cpu": 0, "threads": 1, "connections": 50,
                   "duration_s": 8, "warmup_s": 3, "runs": 1, "startup_runs": 2,
                   "workloads": ["hello"], "scaling_threads": [1, 2], "scaling_wrk_threads": 2},
        "latency_rates": {"hello": {"rps": 60_000, "basis": "0.5 × hyper"}},
        "cells": [cell("hyper", "hello", 120_000, 5.0, 0.5),
                  cell("isola", "hello", 70_000, isola_cpu, 1.5),
                  cell("serve100", "hello", 60_000, isola_cpu + 2, 2.0),
                  cell("deno", "hello", 110_000, 5.2, 0.9)],
        "scaling": [dict(cell("serve-t1", "hello", scaling[0], 14, 1), open_runs=[]),
                    dict(cell("serve-t2", "hello", scaling[1], 15, 1), open_runs=[])],
        "startup": [{"server": "isola", "ms": [8.0, 12.0, 9.0], "problems": []}],
        "density": {"source": "test", "rows": measure.parse_density(DENSITY_OUT)},
        "problems": [],
    }


def target_rows(md):
    return {line.split(" | ")[0].lstrip("| "): line.rsplit("|", 2)[1].strip()
            for line in md.split("## Targets")[1].split("\n\n")[1].splitlines()[2:]}


class Density(unittest.TestCase):
    def test_rows_and_numbers(self):
        rows = measure.parse_density(DENSITY_OUT)
        self.assertEqual(len(rows), 6)
        self.assertEqual(rows[2]["figure"],
                         "first request to an unseen worker, ready-isolate stock: p50 / p99")
        self.assertEqual([n["value"] for n in rows[2]["numbers"]], [0.42, 2.44])
        self.assertEqual(rows[1]["numbers"][0], {"value": 1.9, "unit": "MiB"})


class Render(unittest.TestCase):
    def test_big_bundle_target_reads_the_warm_cache_row(self):
        raw = result(isola_cpu=5.0)
        raw["density"]["rows"] = measure.parse_density(DENSITY_OUT + """\
| first request to an unseen worker, burst of 200 never-seen workers back to back (stock exhausted): p50 / p99 | 3.00 ms / 4.50 ms |
| first request to an unseen worker, 1 MB bundle, code cache warm (a later isolate of its version): p50 / p99 | 8.00 ms / 9.00 ms |
| first request to an unseen worker, 1 MB bundle, code cache cold (the first isolate of its version): p50 / p99 | 30.00 ms / 33.00 ms |
| first request to an unseen worker, 1 MB bundle, no code cache: p50 / p99 | 29.00 ms / 31.00 ms |
""")
        t = target_rows(report.render(raw))
        big = next(k for k in t if k.startswith("First request, 1 MB bundle"))
        self.assertIn("code cache warm", big)
        self.assertEqual(t[big], "yes")
        burst = next(k for k in t if k.startswith("First request, stock exhausted"))
        self.assertIn("burst", burst)
        self.assertEqual(t[burst], "yes")

    def test_idle_target_shows_its_floor(self):
        name = "Idle worker isolate ≤ 2 MiB RSS at 1,000 workers"
        line = lambda raw: next(l for l in report.render(raw).splitlines()
                                if l.startswith(f"| {name} |"))
        raw = result(isola_cpu=5.0)
        self.assertNotIn("beneath it", line(raw))
        raw["density"]["rows"] = measure.parse_density(DENSITY_OUT + """\
| RSS per isolate, 100 kept: V8's own isolate and context / bare deno_core runtime (its snapshot, no extensions) / Isola's blank isolate (the Workers API snapshot, no worker) | 1.13 MiB / 1.61 MiB / 2.83 MiB |
""")
        self.assertIn("beneath it: V8's own isolate and context 1.13 MiB, a bare deno_core "
                      "runtime 1.61 MiB", line(raw))

    def test_churn_target(self):
        name = ("10,000 workers loaded back to back under an isolate cap: hot worker p99 "
                "unchanged (within 1 ms), RSS bounded (≤ 1.25× at the cap)")
        churn = """\
| hot worker alone, a request every ms: p50 / p99 | 0.080 ms / 0.900 ms |
| hot worker while 10000 never-seen workers load back to back (cap 500 isolates, 2 V8 threads): p50 / p99 | 0.050 ms / {p99} ms |
| churn: 10000 workers loaded in | 34.0 s |
| churn: RSS when the cap is first reached / most after | 1500 MiB / {rss} MiB |
"""
        raw = result(isola_cpu=5.0)
        self.assertEqual(target_rows(report.render(raw))[
            "10,000 workers churning: hot worker p99 unchanged, memory bounded"], "–")
        for p99, rss, met in (("1.200", "1700", "yes"), ("11.800", "1700", "**no**"),
                              ("1.200", "3000", "**no**")):
            raw["density"]["rows"] = measure.parse_density(
                DENSITY_OUT + churn.format(p99=p99, rss=rss))
            self.assertEqual(target_rows(report.render(raw))[name], met, (p99, rss))

    def test_targets(self):
        t = target_rows(report.render(result(isola_cpu=6.0)))
        self.assertEqual(t["Warm CPU per request ≤ deno's: isola-edge dev, `hello`"], "**no**")
        self.assertEqual(t["`serve` 2 threads ≥ 1.8× 1 thread (shared cores), `hello`"], "**no**")
        self.assertEqual(t["Process start → first 200 ≤ 10 ms (isola-edge dev)"], "yes")
        self.assertEqual(
            t["First request to an unseen worker (ready stock): p50 ≤ 0.5 ms, p99 ≤ 2 ms"], "**no**")
        self.assertEqual(t["Idle worker isolate ≤ 2 MiB RSS at 1,000 workers"], "yes")
        self.assertEqual(t["First request, 1 MB bundle: p50 ≤ 10 ms"], "–")
        t = target_rows(report.render(result(isola_cpu=5.0, scaling=(50_000, 95_000))))
        self.assertEqual(t["Warm CPU per request ≤ deno's: isola-edge dev, `hello`"], "yes")
        self.assertEqual(t["`serve` 2 threads ≥ 1.8× 1 thread (shared cores), `hello`"], "yes")

    def test_scaling_ceiling(self):
        # Without the box's core count there is no ceiling to give.
        md = report.render(result(isola_cpu=6.0))
        self.assertNotIn("ceiling", md)
        raw = result(isola_cpu=6.0)
        raw["env"] = {"cpus": 2}
        # At 1 thread: edge 0.9 + wrk 0.5 + other 0.01 cores (run() above),
        # no control plane figure: 2 / 1.41.
        raw["scaling"][0]["runs"][0]["control_cpu_util"] = 0.0
        md = report.render(raw)
        self.assertIn("1.70× (50,000 → 85,000 req/s); this box's ceiling 1.42×", md)
        self.assertIn("Ceiling on this box (2 cores shared by every process): `hello` 1.42×", md)
        # The cores the cells ran on count, not the box's.
        raw["env"] = {"cpus": 4}
        raw["scaling"][0]["setup"] = {"cores": 2}
        self.assertIn("this box's ceiling 1.42×", report.render(raw))

    def test_trace_events_cost(self):
        raw = result(isola_cpu=6.0)
        raw["cells"].append(cell("serve100q", "hello", 62_000, 7.8, 2.0))
        t = target_rows(report.render(raw))
        key = ("Trace events cost ≤ 5% of edge CPU (`serve`, events on vs off, same offered "
               "rate), `hello`")
        self.assertEqual(t[key], "yes")  # 8.0 µs vs 7.8 µs: +2.6 %
        raw["cells"][-1] = cell("serve100q", "hello", 62_000, 7.0, 2.0)
        self.assertEqual(target_rows(report.render(raw))[key], "**no**")  # +14 %
        self.assertNotIn(key, target_rows(report.render(result(isola_cpu=6.0))))
        # Without open-loop runs the closed-loop figures stand in, and say so.
        for c in raw["cells"]:
            c["open_runs"] = []
        closed = key.replace("same offered rate", "closed loop")
        self.assertEqual(target_rows(report.render(raw))[closed], "**no**")

    def test_paired_trace_events_cost_replaces_the_sequential_rows(self):
        raw = result(isola_cpu=6.0)
        raw["cells"].append(cell("serve100q", "hello", 62_000, 7.0, 2.0))
        side = {"v8": 9.0, "main": 1.0, "other": 0.1, "total": 10.1}
        raw["events"] = [
            {"workload": "hello", "workers": 100, "one": one, "rate": 10_000, "window_s": 10,
             "rounds": rounds, "median": sorted(rounds)[1],
             "labels": ["events on", "events off"],
             "sides": {"events on": dict(side, total=10.4), "events off": side}}
            for one, rounds in ((True, [0.031, 0.06, 0.02]), (False, [0.07, 0.06, 0.08]))]
        md = report.render(raw)
        t = target_rows(md)
        self.assertEqual(t["Trace events cost ≤ 5% of edge CPU (`serve`, `hello`, one warm "
                           "worker, events on vs off paired)"], "yes")
        self.assertEqual(t["Trace events cost ≤ 5% of edge CPU (`serve`, `hello`, 100 "
                           "workers, events on vs off paired)"], "**no**")
        self.assertFalse(any("same offered rate" in k for k in t))
        self.assertIn("median **+3.1 %** (rounds: +3.1 %, +6.0 %, +2.0 %)", md)
        self.assertIn("| events on | 9.00 | 1.00 | 0.10 | 10.40 |", md)

    def test_ratio_columns(self):
        md = report.render(result(isola_cpu=10.4))
        line = next(ln for ln in md.splitlines() if ln.startswith("| isola-edge dev | 70,000"))
        # CPU µs/req, vs hyper, vs deno
        self.assertIn("| 10.4 | 2.08× | 2.00× |", line)
        lat = [ln for ln in md.splitlines() if ln.startswith("| isola-edge dev | 35,000")]
        self.assertEqual(len(lat), 1, md)
        self.assertIn("| 1.500 | 3.0× |", lat[0])

    def test_tenants(self):
        raw = result(isola_cpu=10.0)

        def tenants(row, n, cpu_us):
            return dict(cell(row, "hello", 40_000, cpu_us, 1), tenants=n, open_runs=[],
                        rss_kib_after=1024 * n)
        raw["tenants"] = [tenants("serve-k100", 100, 22.0), tenants("serve-k1", 1, 10.0),
                          tenants("deno-x1", 1, 5.5), tenants("deno-x100", 100, 36.0)]
        md = report.render(raw)
        section = md.split("## Tenants taking turns")[1].split("\n## ")[0]
        rows = [ln for ln in section.splitlines() if ln.startswith(("| isola", "| deno"))]
        # isola by tenants, then deno; vs 1 tenant, vs deno with as many
        self.assertEqual([r.split(" | ")[1] for r in rows], ["1", "100", "1", "100"])
        self.assertIn("| 22.0 | 2.20× | 0.61× |", rows[1])
        self.assertIn("| 10.0 | 1.00× | 1.82× |", rows[0])
        self.assertTrue(rows[3].startswith("| deno serve, 100 processes | 100 |"), rows[3])
        self.assertIn("| 36.0 | 6.55× | – |", rows[3])
        self.assertIn("With 100 tenants (one process each) it spends 36.0 µs of CPU per "
                      "`hello` request, isola-edge serve with 100 workers 22.0 µs (0.61×)", md)
        # pooled like the other cells
        a, b = json.loads(json.dumps(raw)), json.loads(json.dumps(raw))
        a["source"], b["source"] = "a.json", "b.json"
        pooled = report.pool([a, b])
        self.assertEqual(len(report.cells_by(pooled, "tenants")[("deno-x100", "hello")]["runs"]),
                         2)

    def test_format_1_renders(self):
        old = {"config": result(1)["config"], "env": {}, "startup": [],
               "cells": [{"server": "hyper", "workload": "hello", "runs": [run(100, 5)],
                          "problems": []}]}
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "old.json"
            p.write_text(json.dumps(old))
            md = report.render(report.load(p))
        self.assertIn("Latency (closed loop, wrk", md)

    def test_not_a_result(self):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "x.json"
            p.write_text("[1, 2]")
            with self.assertRaises(SystemExit) as e:
                report.load(p)
        self.assertIn("not a benchmark result", str(e.exception))


class SpreadWarmUp(unittest.TestCase):
    """The warm-up of a cell spread over many workers, counted in requests
    per worker, against a load that answers `rps` a second."""

    def warm(self, rps, tenants=100, first=30, per_worker=40_000, most=300, isolates=None):
        asked = []

        def load(secs):
            asked.append(secs)
            return {"requests": int(rps * secs), "duration_s": float(secs), "errors": 0}
        cell = {"problems": []}
        with mock.patch.dict(measure.CFG, warmup_spread_s=first,
                             warmup_spread_requests=per_worker, warmup_spread_max_s=most):
            measure.warm_spread(cell, load, tenants, isolates)
        return asked, cell

    def test_counts_each_isolate_of_a_worker(self):
        # Two V8 threads, each with a replica of every worker: twice the
        # requests, read after each step.
        seen = iter([150, 200, 200])
        asked, cell = self.warm(40_000, isolates=lambda: next(seen))
        self.assertEqual(asked, [30, 120, 50])
        self.assertEqual(cell["warmup"], {"seconds": 200.0, "requests": 8_000_000,
                                          "per_worker": 80_000, "isolates": 200,
                                          "per_isolate": 40_000})

    def test_an_edge_that_cannot_say_counts_workers(self):
        asked, cell = self.warm(40_000, isolates=lambda: None)
        self.assertEqual(asked, [30, 70])
        self.assertNotIn("isolates", cell["warmup"])

    def test_goes_on_until_each_worker_had_its_requests(self):
        asked, cell = self.warm(40_000)
        self.assertEqual(asked, [30, 70])
        self.assertEqual(cell["warmup"], {"seconds": 100.0, "requests": 4_000_000,
                                          "per_worker": 40_000})

    def test_stops_at_the_most_it_may_take(self):
        asked, cell = self.warm(5_000)
        self.assertEqual(asked, [30, 270])
        self.assertEqual(cell["warmup"]["seconds"], 300.0)

    def test_a_fast_first_step_is_enough(self):
        asked, _ = self.warm(200_000, tenants=10)
        self.assertEqual(asked, [30])

    def test_a_failed_step_ends_it_as_a_problem(self):
        cell = {"problems": []}
        measure.warm_spread(cell, lambda secs: {"error": "wrk did not finish in time"}, 100)
        self.assertEqual(cell["problems"], ["warm-up: wrk did not finish in time"])

    def test_the_report_says_what_it_took(self):
        r = result(6.0)
        r["config"].update(warmup_spread_s=30, warmup_spread_requests=40_000,
                           warmup_spread_max_s=300)
        r["cells"][2]["warmup"] = {"seconds": 101.2, "requests": 4_048_000, "per_worker": 40_480}
        md = report.render(r)
        self.assertIn("until each worker has had 40,000 requests, at most 300 s; took 101 s)", md)
        r["cells"][2]["warmup"].update(isolates=100, per_isolate=40_480)
        self.assertIn("until each isolate serving them has had 40,000", report.render(r))

    def test_the_isolates_an_edge_has_loaded(self):
        text = ("# HELP isola_isolates_live Loaded worker isolates.\n"
                "# TYPE isola_isolates_live gauge\nisola_isolates_live 200\n"
                "isola_isolates_memory_bytes 5\n# EOF\n")
        self.assertEqual(servers.parse_isolates_live(text), 200)
        self.assertIsNone(servers.parse_isolates_live("isola_cold_starts_total 3\n"))


class Rounds(unittest.TestCase):
    """Cells measured side by side: started and warmed, then one run of each
    a round."""

    def measure(self, rows, noisy=(), runs=3, retries=3):
        order = []

        class FakeTarget:
            control, hosts, port = None, None, 1

            def exited(self):
                return None

            def rss_kib(self):
                return 1

            def stop(self):
                order.append(("stop", self.row))

        def start_cell(row, workload, logs, start, threads, cpus):
            target = FakeTarget()
            target.row = row
            cell = {"row": row, "workload": workload, "runs": [], "open_runs": [],
                    "problems": [], "noisy_discarded": 0}
            order.append(("warm", row))

            def load(secs, row=row):
                order.append(("run", row))
                return row
            return cell, measure.Started(cell, target, Path("/nonexistent"), load)

        def measured(target, load):
            row = load()
            nth = sum(1 for o in order if o == ("run", row))
            other = 0.9 if (row, nth) in noisy else 0.0
            return {"rps": 1.0, "errors": 0, "other_cpu_util": other}, None

        with mock.patch.object(measure, "start_cell", start_cell), \
                mock.patch.object(measure, "measured", measured), \
                mock.patch.object(measure, "wait_for_quiet", lambda idle=(): None), \
                mock.patch.dict(measure.CFG, runs=runs, noisy_retries=retries):
            cells = measure.bench_cells([(r, None) for r in rows], "hello", Path("/tmp"), 1,
                                        None, None)
        return order, cells

    def test_every_server_runs_once_a_round(self):
        order, cells = self.measure(["hyper", "isola", "deno"], runs=2)
        self.assertEqual(order, [
            ("warm", "hyper"), ("warm", "isola"), ("warm", "deno"),
            ("run", "hyper"), ("run", "isola"), ("run", "deno"),
            ("run", "hyper"), ("run", "isola"), ("run", "deno"),
            ("stop", "hyper"), ("stop", "isola"), ("stop", "deno")])
        self.assertEqual([len(c["runs"]) for c in cells], [2, 2, 2])

    def test_a_noisy_run_is_redone_in_its_round_within_the_cells_budget(self):
        # isola's first and second runs are noisy; one retry in all.
        order, cells = self.measure(["hyper", "isola"], noisy={("isola", 1), ("isola", 2)},
                                    runs=2, retries=1)
        runs = [o[1] for o in order if o[0] == "run"]
        self.assertEqual(runs, ["hyper", "isola", "isola", "hyper", "isola"])
        isola = cells[1]
        self.assertEqual((len(isola["runs"]), isola["noisy_discarded"]), (2, 1))
        self.assertIn("noisy measurement", isola["problems"][0])

    def test_the_report_says_the_runs_went_in_rounds(self):
        r = result(6.0)
        self.assertNotIn("in rounds", report.render(r))
        r["config"]["rounds"] = True
        self.assertIn("1 runs per cell (in rounds:", report.render(r))


class PoolAndCompare(unittest.TestCase):
    def test_pool_takes_medians_over_all_runs(self):
        a, b, c = result(6.0), result(8.0), result(10.0)
        for i, r in enumerate((a, b, c)):
            r["source"] = f"r{i}.json"
        pooled = report.pool([a, b, c])
        isola = report.cells_by(pooled)[("isola", "hello")]
        self.assertEqual(len(isola["runs"]), 3)
        self.assertEqual(report.summarize(isola)["cpu_us"], 8.0)
        self.assertEqual(len(pooled["startup"][0]["ms"]), 9)

    def test_compare(self):
        a, b = result(10.0), result(5.0)
        a["source"], b["source"] = "before.json", "after.json"
        md = report.render_compare(a, b)
        line = next(ln for ln in md.splitlines() if ln.startswith("| isola-edge dev |"))
        self.assertIn("| 10.0 | 5.0 | -50.0% | 1.92× | 0.96× |", line)


# A callgrind dump in miniature: names given once, then referred to by number.
CALLGRIND_OUT = """\
events: Ir
fn=(1) isola_runtime::pool::thread_main
0 10
cfn=(2) v8::internal::Execution::Call(v8::internal::Isolate*, int)
calls=2 0
0 100
cfn=(3) <std::sys::pal::unix::time::Timespec>::now
calls=5 0
0 50
cfn=(5) v8::Function::Call(v8::Isolate*, v8::Local<v8::Context>)
calls=2 0
0 100
cfn=(6) isola_ext::ops::op_a::op_a::v8_fn_ptr_fast
calls=2 0
0 40
cfn=(7) deno_core::ops::op_b::op_b::v8_fn_ptr
calls=1 0
0 30
fn=(7)
0 5
cfn=(8) deno_core::ops::op_b::op_b::slow_function_impl
calls=1 0
0 25
fn=(1)
cfn=(9) malloc
calls=3 0
0 0
cfn=(10) _mi_malloc_generic
calls=1 0
0 0
fn=(4) start_thread
0 1
cfn=(1)
calls=1 0
0 260
cfn=(3)
calls=1 0
0 10
totals: 300
"""


class Wrk(unittest.TestCase):
    LINE = ("ISOLA_BENCH_RESULT requests=1200 duration_us=2000000 bytes=9 p50_us=400 "
            "p90_us=800 p99_us=1500 p999_us=2500 max_us=3000 mean_us=450.0 err_connect=0 "
            "err_read=0 err_write=0 err_status={status} err_timeout=0\n")

    def test_the_result_line(self):
        r = measure.parse_wrk(0, "Running 2s test\n" + self.LINE.format(status=0), "")
        self.assertEqual((r["requests"], r["duration_s"], r["p99_ms"], r["errors"]),
                         (1200, 2.0, 1.5, 0))
        r = measure.parse_wrk(0, self.LINE.format(status=3), "")
        self.assertEqual((r["errors"], r["err_detail"]), (3, {"err_status": 3}))

    def test_no_result_line_or_a_failed_wrk_is_an_error(self):
        self.assertIn("unable to connect", measure.parse_wrk(1, "", "unable to connect")["error"])
        self.assertIn("error", measure.parse_wrk(0, "no line", ""))
        self.assertIn("error", measure.parse_wrk(1, self.LINE.format(status=0), ""))

    def test_closed_loop_pairs_count_each_edges_requests(self):
        import events_overhead

        class Done:
            def __init__(self, out):
                self.out, self.returncode = out, 0

            def communicate(self, timeout=None):
                return self.out, ""

        outs = iter([self.LINE.format(status=0),
                     self.LINE.format(status=0).replace("1200", "900")])
        procs = [("A", None, 1), ("B", None, 2)]
        with mock.patch("subprocess.Popen", lambda argv, **kw: Done(next(outs))):
            counts = events_overhead.closed_loop(procs, "hello", Path("x.lua"), 5)
        self.assertEqual(counts, [1200, 900])
        outs = iter([self.LINE.format(status=0), self.LINE.format(status=2)])
        with mock.patch("subprocess.Popen", lambda argv, **kw: Done(next(outs))):
            with self.assertRaisesRegex(RuntimeError, "B: wrk"):
                events_overhead.closed_loop(procs, "hello", Path("x.lua"), 5)


class Instructions(unittest.TestCase):
    def totals(self):
        return instructions.call_totals(CALLGRIND_OUT.splitlines(), instructions.PATTERNS)

    def test_calls_and_inclusive_cost_follow_compressed_names(self):
        t = self.totals()
        self.assertEqual(t["isola_runtime::pool::thread_main"], (1, 260))
        self.assertEqual(t["Timespec>::now"], (6, 60))
        self.assertEqual(t[instructions.JS_CALL], (2, 100))
        # An op's entry in either form; its inner calls are not counted again.
        self.assertEqual(t["::v8_fn_ptr"], (3, 70))
        self.assertEqual(t["::v8_fn_ptr_fast"], (2, 40))
        # `=malloc` is that function alone, not every name with it in.
        self.assertEqual(t["=malloc"], (3, 0))

    def test_per_request_and_the_comparison(self):
        a = instructions.per_request(self.totals(), 2)
        self.assertEqual(a["requests"], 2)
        self.assertEqual(a["calls into JS"], 1)
        self.assertEqual(a["V8 thread, instructions"], 130)
        self.assertEqual(a["clock reads (Rust's std)"], 3)
        self.assertEqual(a["op calls"], 1.5)
        self.assertEqual(a["  fast form"], 1)
        self.assertEqual(a["  slow form"], 0.5)
        b = dict(a, **{"V8 thread, instructions": 117.0, "  outside the JS calls": 67.0})
        self.assertEqual(a["  outside the JS calls"], 80)
        md = instructions.render([("A/isola-edge", a), ("B/isola-edge", b)])
        self.assertIn("| V8 thread, instructions | 130 | 117 (-10.0 %) |", md)
        self.assertIn("| clock reads (Rust's std) | 3.00 | 3.00 (+0.0 %) |", md)
        self.assertIn("|   outside the JS calls | 80.00 | 67.00 (-16.2 %) |", md)

    def test_the_whole_process_and_a_peer_column(self):
        a = instructions.per_request(self.totals(), 2)
        self.assertEqual(a[instructions.WHOLE], 150)
        peer = {"requests": 10.0, instructions.WHOLE: 75.0}
        md = instructions.render([("A/isola-edge", a), ("deno", peer)])
        self.assertIn("| whole process, instructions | 150 | 75.00 (-50.0 %) |", md)
        self.assertIn("| V8 thread, instructions | 130 | – |", md)
        self.assertIn("Requests counted: A/isola-edge 2, deno 10.", md)

    def test_another_deno_is_labelled_by_its_version(self):
        with tempfile.TemporaryDirectory() as tmp:
            fake = Path(tmp) / "deno"
            fake.write_text("#!/bin/sh\necho 'deno 2.7.14 (stable, release)'\necho 'v8 14.7'\n")
            fake.chmod(0o755)
            self.assertEqual(instructions.deno_label(fake), "deno 2.7.14")
            # One that does not run is named by its path.
            self.assertEqual(instructions.deno_label(Path(tmp) / "gone"), str(Path(tmp) / "gone"))

    def test_no_request_is_no_result(self):
        self.assertIsNone(instructions.per_request(
            instructions.call_totals([], instructions.PATTERNS), 0))


class LinkOrder(unittest.TestCase):
    def test_self_cost_leaves_out_calls_and_merges_recursion(self):
        out = """\
events: Ir
fn=(1) _ZN4main
0 10
cfn=(2) _ZN4hot'2
calls=3 0
0 700
+2 5
fn=(2)
0 300
fn=(3) _ZN4hot
* 100
cfn=(2)
calls=1 0
0 300
"""
        self.assertEqual(link_order.self_costs(out.splitlines()),
                         {"_ZN4main": 15, "_ZN4hot": 400})

    def test_warm_paths_first_by_share_then_the_starts_by_name(self):
        starts = [{"c": 9, "a": 1, "hot": 50, "libc_only": 3}, {"b": 2}]
        # Each run weighs the same: `big` is most of the second run's
        # instructions, `warm2` 70 % of the first's.
        warms = [{"hot": 25, "warm2": 70, "idle": 0, "gone": 5},
                 {"big": 9000, "hot": 1000}]
        defined = {"a", "b", "c", "hot", "warm2", "idle", "big"}
        self.assertEqual(link_order.order(starts, warms, defined),
                         ["big", "warm2", "hot", "a", "b", "c"])

    def test_coverage_tells_a_laid_out_binary_from_one_that_is_not(self):
        names = ["f", "g", "h", "gone"]
        self.assertEqual(link_order.coverage(names, {"f": 16, "g": 32, "h": 48}),
                         "3 of 4 listed functions defined, laid out in the list's order")
        self.assertEqual(link_order.coverage(names, {"f": 48, "g": 32, "h": 16}),
                         "3 of 4 listed functions defined, not in the list's order")


if __name__ == "__main__":
    unittest.main()
