"""Power of forward_equivalence at every precision: for each single converter bug of the
meta-tests, its relative logit error, the tolerance forward_equivalence applies in that dtype, and
the margin ``error / tolerance`` (> 1: the bug is caught). float64/float32 use the static tolerance
against HF in the same dtype; bfloat16/float16 the derived one (2 × HF's own error against an HF
float64 reference + floor). Prints figures; exits 1 if a cell has margin <= 1.

    python benchmarks/power_table.py [--device cpu|cuda] [--seeds 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.meta.low_precision import BUGS, DTYPES, measure  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell; the smallest margin is shown")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="dtype column (repeatable; default all)")
    args = p.parse_args(argv)
    dtypes = args.dtype or list(DTYPES)
    print(f"{'bug':26s} {'dtype':9s} {'T':>4s} {'error':>10s} {'HF own err':>10s} {'tolerance':>10s} {'margin':>10s}")
    worst = float("inf")
    for bug in BUGS:
        for dtype in dtypes:
            cell = min((measure(bug, dtype, seed) for seed in range(args.seeds)), key=lambda c: c.margin)
            base = "-" if cell.baseline is None else f"{cell.baseline:.3e}"
            print(f"{cell.bug:26s} {cell.dtype:9s} {cell.tokens:4d} {cell.error:10.3e} {base:>10s} "
                  f"{cell.tolerance:10.3e} {cell.margin:10.1f}", flush=True)
            worst = min(worst, cell.margin)
    print(f"\nsmallest margin: {worst:.1f} ({'every bug caught' if worst > 1 else 'A BUG SLIPS THROUGH'})")
    return 0 if worst > 1 else 1


if __name__ == "__main__":
    sys.exit(main())
