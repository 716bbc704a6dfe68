"""Print the README's performance table from the rows one benchmark run appended
to ``results/bench.csv`` (so that the README quotes a run, not a hope).

    python benchmarks/readme_table.py                  # the newest full run
    python benchmarks/readme_table.py --date 2026-12-01T20:02:11Z
    python benchmarks/readme_table.py --date D1 --date D2   # two runs, D2's rows win

A run is the set of rows with one ``date`` (the harness stamps a whole run with
its start time). Rows are grouped by case; times are medians in ms, ratios are
against PyTorch CPU and the NumPy twin measured in the same run, memory is the
peak one call adds, in units of one N x C buffer of the input dtype.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _f(x: str, fmt: str) -> str:
    if x in ("", None):
        return "-"
    return f"{float(x):.0f}" if float(x) >= 100 else format(float(x), fmt)


def _ratio(a: str, b: str) -> str:
    """``a / b`` buffers, or '-'."""
    if a in ("", None) or b in ("", None) or float(b) == 0:
        return "-"
    return f"{float(a) / float(b):.2f}"


def table(rows) -> str:
    head = ("| case | N x C | threads | kdtemp ms | PyTorch ms | vs PyTorch | vs NumPy "
            "| GB/s | % of copy | floor ms | ceiling | kdtemp peak (x NC) "
            "| PyTorch peak (x NC) |")
    out = [head, "| --- | --- | --- |" + " ---: |" * 10]
    for r in rows:
        vs_np = f"{float(r['speedup_vs_numpy']):.1f}x" if r["speedup_vs_numpy"] else "skipped"
        out.append(
            f"| {r['case']} | {r['n']}x{r['c']} | {r['threads']} | {_f(r['kdtemp_ms'], '.3g')} "
            f"| {_f(r['torch_ms'], '.3g')} | {float(r['speedup_vs_torch']):.1f}x | {vs_np} "
            f"| {_f(r['kdtemp_gbps'], '.2f')} | {100 * float(r['bw_fraction']):.0f} "
            f"| {_f(r.get('floor_ms'), '.3g')} "
            f"| {_f(r.get('torch_over_floor'), '.3g')}{'x' if r.get('torch_over_floor') else ''} "
            f"| {_ratio(r['kdtemp_peak_mb'], r['nc_buffer_mb'])} "
            f"| {_ratio(r['torch_peak_mb'], r['nc_buffer_mb'])} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=str(HERE / "results" / "bench.csv"))
    p.add_argument("--date", action="append", default=[],
                   help="a run's date stamp (default: the newest full run); repeat to "
                        "combine runs, a later one replacing the same case and shape")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--cases", default="", help="only these cases, e.g. kl,ce")
    p.add_argument("--shapes", default="", help="only these shapes, e.g. 2048x32000")
    a = p.parse_args(argv)
    rows = [r for r in csv.DictReader(open(a.csv, newline="")) if r["dtype"] == a.dtype]
    if not a.date:
        full = [r["date"] for r in rows if r["quick"] in ("0", "False")]
        if not full:
            print("no full run in the CSV", file=sys.stderr)
            return 1
        a.date = [max(full)]
    picked = {}
    for d in a.date:
        run = [r for r in rows if r["date"] == d]
        if not run:
            print(f"no rows with date {d}", file=sys.stderr)
            return 1
        r0 = run[0]
        print(f"<!-- rows of benchmarks/results/bench.csv from run {d}: commit "
              f"{r0['git_commit']}, {r0['cpu_model']} ({r0['n_cores']} cores), torch "
              f"{r0['torch_version']}, numpy {r0['numpy_version']}, load average at its "
              f"first row {r0['loadavg_1min']} -->")
        for r in run:
            if a.cases and r["case"] not in a.cases.split(","):
                continue
            if a.shapes and f"{r['n']}x{r['c']}" not in a.shapes.split(","):
                continue
            picked[(r["module"], r["case"], r["n"], r["c"], r["threads"])] = r
    order = sorted(picked.values(), key=lambda r: (r["module"], r["case"], int(r["n"]) * int(r["c"]),
                                                   int(r["threads"])))
    print(table(order))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
