"""Benchmark of the CI gate: wall time, and examples per second per property.

Runs the real gate (``fixtures.gate.execute``: pytest-xdist, ``gate`` profile, every registered
architecture unless ``--arch`` narrows it) and prints:

- the gate's wall time against the 5-minute target;
- per property: cells, examples run, summed cell seconds, examples/s, and the share of the total;
- per architecture: summed cell seconds;
- the budget per property (fixtures/budgets.py), and the examples actually run, so a budget cut
  forced by time shows up as figures.

This is a benchmark, not a test: it exits 0 even when over budget (and 1 only when the gate
itself fails). ``--json PATH`` writes the figures for tracking.

    python benchmarks/gate.py [-n 2] [--arch A ...] [--property P ...] [--json gate-report/bench.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fixtures import budgets  # noqa: E402
from fixtures.gate import DEFAULT_REPORT_DIR, execute  # noqa: E402

TARGET_SECONDS = 300.0


def report(result, workers, target: float = TARGET_SECONDS) -> tuple[str, dict]:
    lines = []
    wall = result.wall_seconds or 0.0
    cpus = os.cpu_count()
    verdict = "within" if wall <= target else "OVER"
    lines.append(f"gate wall time: {wall:.1f} s for {len(result.cells)} cells "
                 f"({len(result.archs)} architectures x {len(result.properties)} properties), "
                 f"workers={workers}, cpus={cpus}: {verdict} the {target:.0f} s target")
    per_property = result.per_property()
    total_seconds = sum(row["seconds"] for row in per_property.values()) or 1.0
    lines.append("")
    header = f"{'property':<26} {'cells':>5} {'budget':>6} {'examples':>9} {'cell s':>8} {'ex/s':>8} {'share':>6}"
    lines += [header, "-" * len(header)]
    for prop in result.properties:
        row = per_property[prop]
        budget = budgets.examples(prop, "gate") if prop in budgets.PROPERTY_CLASSES else 0
        lines.append(f"{prop:<26} {row['cells']:>5} {budget:>6} {row['examples']:>9} {row['seconds']:>8.1f} "
                     f"{row['examples_per_second']:>8.1f} {row['seconds'] / total_seconds:>6.1%}")
    lines.append("")
    per_arch = {}
    for (arch, _), cell in result.cells.items():
        per_arch[arch] = per_arch.get(arch, 0.0) + cell.seconds
    lines.append("cell seconds per architecture: " +
                 ", ".join(f"{a} {s:.1f}" for a, s in sorted(per_arch.items(), key=lambda kv: -kv[1])))
    under = [(c.arch, c.property, c.examples) for c in result.cells.values()
             if c.outcome == "passed" and c.property in budgets.PROPERTY_CLASSES and c.examples is not None
             and c.examples < budgets.examples(c.property, "gate")]
    if under:
        lines.append("cells that ran fewer examples than their budget (strategy exhausted or assumptions): " +
                     ", ".join(f"{a}/{p}={n}" for a, p, n in under))
    figures = {"wall_seconds": wall, "target_seconds": target, "workers": str(workers), "cpus": cpus,
               "cells": len(result.cells), "per_property": per_property, "per_architecture": per_arch}
    return "\n".join(lines), figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", default=[])
    parser.add_argument("--property", action="append", default=[])
    parser.add_argument("-n", "--workers", default="2", help="xdist workers (default 2, the CI machine)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    out = DEFAULT_REPORT_DIR / "bench"
    code, result = execute(args.arch, args.property, args.workers, "gate", out / "junit.xml", out / "summary.md",
                           cwd=ROOT)
    if result is None:
        return code
    text, figures = report(result, args.workers)
    print("\n" + text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
