"""Benchmark of ``convcheck fuzz``: examples per second with 1 and 2 workers, the projection for N
machines sharing one Redis database, and the time to find and shrink planted bugs.

1. **Throughput.** ``convcheck fuzz --minutes M --workers W`` for W = 1 and 2 on a fresh directory
   database, on a config property and a weight property (round-robin). Workers search until their
   own clock says M minutes, so the rate is examples / (60 M); process start-up (imports) is
   outside it and printed apart as the rest of the wall time. On a shared machine the wall-clock
   rate follows the neighbours' load; examples per CPU second (the workers' own CPU time) does not,
   and shows whether a second worker costs anything beyond the core it needs.
2. **Projection.** Hypothesis touches the example database only at the start of each batch (the
   ``reuse`` fetch of the test's keys) and when a failure is saved or shrunk; passing examples are
   never written. With a ``redis-server`` on this machine the fetch round trip is measured, and N
   machines project as N times the two-worker rate, less that fetch per batch; the server's own
   limit is put at a conservative 50,000 commands/s.
3. **Planted bugs.** Two workers on one database against ``tests/meta/fuzz_planted.py``'s
   last-layer-dropped bug (config_roundtrip, needs two layers) and ``tests/meta/broken.py``'s k/v
   swap (forward_equivalence, one layer suffices): time to find, time to shrink, saved case size.

This prints figures; it asserts nothing.

    python benchmarks/fuzz.py [--arch llama] [--minutes 1] [--skip-planted]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONVCHECK = [sys.executable, "-c", "import sys; from checkpoints.cli import main; sys.exit(main())"]
PROPERTIES = ("config_roundtrip", "weight_roundtrip")
REDIS_COMMANDS_PER_SECOND = 50_000  # a conservative single-core redis-server figure, not measured here
FETCHES_PER_BATCH = 3  # primary, secondary and pareto keys of one test


def fuzz(*args: str) -> tuple[str, float]:
    start = time.monotonic()
    proc = subprocess.run([*CONVCHECK, "fuzz", "-q", *args], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode not in (0, 1):
        raise SystemExit(f"convcheck fuzz {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout, time.monotonic() - start


def examples(out: str) -> dict[str, int]:
    """Examples per property from the fuzz summary (its ``total`` line left out)."""
    return {m["prop"]: int(m["n"]) for m in re.finditer(r"^  (?P<prop>\w+): (?P<n>\d+) examples", out, re.M)
            if m["prop"] != "total"}


def throughput(arch: str, minutes: float) -> dict[int, dict[str, float]]:
    rates = {}
    for workers in (1, 2):
        db = tempfile.mkdtemp(prefix="convcheck-bench-db-")
        try:
            args = ["--arch", arch, "--minutes", str(minutes), "--workers", str(workers), "--database", db, "--no-save"]
            for prop in PROPERTIES:
                args += ["--property", prop]
            out, wall = fuzz(*args)
        finally:
            shutil.rmtree(db, ignore_errors=True)
        counts = examples(out)
        cpu = float(re.search(r"workers' CPU time ([\d.]+) s", out)[1])
        rates[workers] = {prop: n / (60 * minutes) for prop, n in counts.items()}
        rates[workers]["total"] = sum(counts.values()) / (60 * minutes)
        print(f"{workers} worker(s): " + ", ".join(f"{p} {counts.get(p, 0)} ex = {rates[workers][p]:.1f} ex/s"
                                                   for p in PROPERTIES)
              + f"; total {rates[workers]['total']:.1f} ex/s (search {60 * minutes:.0f} s, "
                f"start-up and summary {wall - 60 * minutes:.1f} s, 1-min load average after {os.getloadavg()[0]:.2f}); "
                f"{sum(counts.values()) / cpu:.1f} ex per CPU second ({cpu:.0f} CPU s of search)",
              flush=True)
    for prop in (*PROPERTIES, "total"):
        one, two = rates[1].get(prop, 0.0), rates[2].get(prop, 0.0)
        print(f"  {prop}: 2 workers / 1 worker = {two / one if one else float('nan'):.2f}x")
    return rates


def redis_round_trip() -> float | None:
    """Median seconds of one Hypothesis-style fetch (SMEMBERS + EXPIRE in a pipeline) against a
    local redis-server started for the purpose, or None without one."""
    server = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        redis = None
    if server is None or redis is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = tempfile.mkdtemp(prefix="convcheck-bench-redis-")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        client = redis.Redis(port=port, retry=Retry(ConstantBackoff(0.1), 100))  # retried until the server listens
        client.ping()
        client.sadd(b"hypothesis-example:k", *[os.urandom(64) for _ in range(20)])
        times = []
        for _ in range(200):
            start = time.perf_counter()
            pipe = client.pipeline()
            pipe.smembers(b"hypothesis-example:k")
            pipe.expire(b"hypothesis-example:k", 8 * 86400)
            pipe.execute()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def projection(rates: dict[int, dict[str, float]], minutes: float) -> None:
    per_machine = rates[2]["total"]
    rtt = redis_round_trip()
    # batches per second per machine: in --minutes mode a batch is max(10, budget // 20) examples
    from fixtures import budgets

    batch = {p: max(10, budgets.examples(p, "nightly") // 20) for p in PROPERTIES}
    batches_per_s = sum(rates[2][p] / batch[p] for p in PROPERTIES)
    if rtt is None:
        print("projection: no redis-server or redis client here; N machines assumed linear in the two-worker rate")
        overhead = 0.0
    else:
        # each worker waits for its own fetches: the fraction of its time spent in them
        overhead = batches_per_s / 2 * FETCHES_PER_BATCH * rtt
        print(f"redis fetch round trip (local server, median of 200): {rtt * 1e3:.2f} ms; "
              f"{batches_per_s:.2f} batches/s per machine -> {overhead * 100:.3f} % of worker time")
    commands = batches_per_s * FETCHES_PER_BATCH * 2  # a fetch pipeline is 2 commands
    cap = REDIS_COMMANDS_PER_SECOND / commands if commands else float("inf")
    print(f"projection, N machines x 2 workers like this one, one Redis database "
          f"(server limit ~{cap:,.0f} machines at {REDIS_COMMANDS_PER_SECOND:,} commands/s):")
    for n in (1, 2, 4, 8, 16, 64):
        print(f"  N = {n:>3}: {n * per_machine * (1 - overhead):,.0f} ex/s")


def planted(arch: str) -> None:
    cases = [("config_roundtrip", "tests.meta.fuzz_planted:LastLayerDropped", "200"),
             ("forward_equivalence", "tests.meta.broken:KVSwapped", "100")]
    for prop, converter, n in cases:
        db, regressions = tempfile.mkdtemp(prefix="convcheck-bench-db-"), tempfile.mkdtemp(prefix="convcheck-bench-reg-")
        try:
            out, wall = fuzz("--arch", arch, "--property", prop, "--examples", n, "--workers", "2", "--database", db,
                             "--regressions", regressions, "--converter", converter)
        finally:
            shutil.rmtree(db, ignore_errors=True)
            shutil.rmtree(regressions, ignore_errors=True)
        print(f"planted {converter.split(':')[1]} on {prop}, 2 workers ({wall:.1f} s wall with start-up):")
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("gw") and (" after " in line or "minimal case" in line):
                print("  " + line.split(": PropertyViolation")[0].split(" saved as ")[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="llama")
    p.add_argument("--minutes", type=float, default=1.0, help="search budget of each throughput run")
    p.add_argument("--skip-planted", action="store_true")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    rates = throughput(args.arch, args.minutes)
    projection(rates, args.minutes)
    if not args.skip_planted:
        planted(args.arch)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
