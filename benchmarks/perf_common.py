"""Pieces shared by the benchmark scripts whose raw output is stored under docs/perf/.

Every such script has ``--out FILE.json`` (raw samples plus the machine they ran on) and
``--report FILE.json`` (the Markdown table docs/performance.md shows, printed from that file
alone). tests/benchmarks/test_performance_tables.py runs each report named in the doc and checks
the table under it byte for byte.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, Iterable, List


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def machine(threads) -> Dict[str, object]:
    """What a timing depends on, recorded before the run: CPUs, torch, the threads asked for (a count
    or a list of counts), load."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": threads, "loadavg_before": list(os.getloadavg()), "started": utc_now()}


def finish(results: dict) -> dict:
    """Record the load average and time at the end of the run into ``results["machine"]``."""
    results["machine"].update(loadavg_after=list(os.getloadavg()), finished=utc_now())
    return results


def add_io_flags(ap) -> None:
    """``--out FILE.json`` (write the raw results) and ``--report FILE.json`` (print the table)."""
    ap.add_argument("--out", help="write the raw results (JSON) here")
    ap.add_argument("--report", metavar="JSON", help="print the Markdown table of a results file and exit")


def command(script: str, argv) -> str:
    """The command line that made a results file (``argv`` None: this process's own)."""
    return " ".join([f"benchmarks/{script}"] + list(argv if argv is not None else sys.argv[1:]))


def conclude(results: dict, out, report) -> None:
    """End of a run: record the final load, write ``out`` (if given), print ``report(results)``."""
    finish(results)
    if out:
        write_json(out, results)
        print(f"wrote {out}")
    print(report(results))


def spread(samples: Iterable[float]) -> Dict[str, float]:
    """Median, minimum, maximum and count of ``samples``."""
    s: List[float] = list(samples)
    return {"median": statistics.median(s), "min": min(s), "max": max(s), "n": len(s)}


def with_range(st: Dict[str, float], digits: int = 1, unit: str = "") -> str:
    """``median unit [min–max]``, e.g. ``12.3 ms [11.9–13.0]``."""
    f = f"{{:.{digits}f}}"
    return f"{f.format(st['median'])}{unit} [{f.format(st['min'])}–{f.format(st['max'])}]"


def select_tables(text: str, spec: str) -> str:
    """The blocks of ``text`` (separated by blank lines) named by ``spec``: ``"2"`` or ``"1-3"``
    (1-based, inclusive), joined as they were."""
    blocks = [b for b in text.strip("\n").split("\n\n") if b.strip()]
    first, _, last = spec.partition("-")
    lo, hi = int(first), int(last or first)
    if not 1 <= lo <= hi <= len(blocks):
        raise SystemExit(f"--table {spec}: the report has {len(blocks)} tables")
    return "\n\n".join(blocks[lo - 1:hi])


def write_json(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def profiled_steps(step, warm: int, steps: int) -> tuple:
    """Run ``step()`` ``warm`` times, then ``steps`` times under torch.profiler: (wall ms per step,
    {profiler key: inclusive CPU ms per step})."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warm):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = 1e3 * (time.perf_counter() - t0) / steps
    return wall, {ev.key: ev.cpu_time_total / 1e3 / steps for ev in prof.key_averages()}
