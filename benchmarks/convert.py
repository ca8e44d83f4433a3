"""``convcheck convert`` at disk speed? Times, peak memory and a projection, in one run.

    python benchmarks/convert.py [--layers 20] [--hidden 2048] [--intermediate 5632] [--vocab 32000]
                                 [--shard 500MB] [--rounds 3] [--dir /tmp/convcheck-convert-bench]

Builds a synthetic Llama checkpoint (random bf16 weights, HF layout, sharded; about 2 GB with the
defaults) once, then measures, interleaved over ``--rounds`` rounds (medians reported):

- ``cp -r`` of the HF directory and of the native one: the physical floor on this disk (the page
  cache cannot be dropped here, so a warm-up copy runs first and every run reads from the cache);
  every measurement writes to the same output folder, removed just before it: the dev box is a
  VM whose page allocation got ~2.5x slower for a run writing while three earlier 2 GB outputs
  were still cached (``cp -r`` of the native folder: 0.65 s on its own, 1.5-1.9 s in the slot
  the native -> HF conversion had when each measurement kept its own output folder), so with
  separate folders the order of the measurements, not the tools, decided part of the ratios;
- ``convcheck convert`` HF -> native and native -> HF (``CONVCHECK_FSYNC=0``, like ``cp``; one
  extra run with fsync on is reported for information);
- ``transformers`` ``from_pretrained`` + ``save_pretrained`` of the same model (what a user would
  do instead).

Every measurement is its own subprocess; its peak resident memory comes from ``os.wait4`` (that
child's ``ru_maxrss`` alone). Conversion times are the converter's own (the summary line: from
opening the source to the committed output), not Python's start-up, which is reported apart; the
transformers time likewise excludes imports. Prints figures, asserts nothing. Linux only.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRANSFORMERS_CHILD = """
import sys, time, torch
from transformers import AutoModelForCausalLM
src, dst, shard = sys.argv[1:4]
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
model.save_pretrained(dst, max_shard_size=shard)
print(f"SECONDS {time.perf_counter() - t0:.4f}")
"""


def config(hidden: int, layers: int, intermediate: int, vocab: int):
    import native
    heads = hidden // 128
    block = native.BlockConfig(attention=native.AttentionConfig(heads=heads, kv_heads=max(1, heads // 4), head_dim=128),
                               mlp=native.MLPConfig(intermediate=intermediate))
    return native.ModelConfig(hidden_size=hidden, embeddings=native.EmbeddingConfig(vocab_size=vocab),
                              decoder=native.DecoderConfig(blocks=(block,), pattern=(0,) * layers),
                              head=native.HeadConfig(tied=False), metadata={"bos_token_id": 1, "eos_token_id": 2})


def build(path: Path, cfg, shard: str) -> None:
    """Random bf16 weights streamed into a sharded HF checkpoint (one tensor in memory at a time)."""
    import torch
    import converters
    from checkpoints.hf_writer import write_hf_checkpoint

    conv = converters.get("llama")
    hf_config = conv.export_config(cfg)
    hf_config["dtype"] = "bfloat16"
    shapes = conv.hf_shapes(cfg)
    generator = torch.Generator().manual_seed(0)

    def tensors():
        for name, shape in shapes.items():
            if len(shape) == 1:
                yield name, torch.ones(shape, dtype=torch.bfloat16)
            else:
                yield name, (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    plan = [(name, torch.bfloat16, tuple(shape)) for name, shape in shapes.items()]
    write_hf_checkpoint(path, hf_config, tensors(), max_shard_size=shard, plan=plan)


class Child:
    """subprocess.Popen + os.wait4, so that ru_maxrss is this child's own."""

    cpu: dict[str, float] = {}

    @staticmethod
    def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
        os.sync()  # no dirty pages left by the previous measurement to be flushed during this one
        t0 = time.perf_counter()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: exec with stdout into the pipe
            os.close(read)
            os.dup2(write, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.chdir(ROOT)
            os.execvpe(cmd[0], cmd, {**os.environ, **(env or {})})
        os.close(write)
        with os.fdopen(read) as f:
            out = f.read()
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        Child.cpu["last"] = usage.ru_utime + usage.ru_stime
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)}):\n{out[-3000:]}")
        return wall, usage.ru_maxrss * 1024, out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def largest_file(path: Path, pattern: str) -> int:
    return max((p.stat().st_size for p in path.rglob(pattern)), default=0)


def convert_cmd(src: Path, dst: Path, shard: str) -> list[str]:
    return [sys.executable, "-m", "checkpoints.cli", "convert", str(src), str(dst), "-q", "--max-shard-size", shard]


def converter_seconds(out: str) -> float:
    match = re.search(r" in ([0-9.]+) s ", out)
    if not match:
        raise SystemExit(f"no summary line in: {out!r}")
    return float(match.group(1))


def fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard", default="500MB", help="shard size of the source and of the HF output")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/convcheck-convert-bench")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint for the next run")
    args = parser.parse_args()

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg = config(args.hidden, args.layers, args.intermediate, args.vocab)
    hf = root / f"hf-{args.hidden}-{args.layers}-{args.intermediate}-{args.vocab}-{args.shard}"
    if not (hf / "config.json").exists():
        t0 = time.perf_counter()
        build(hf, cfg, args.shard)
        print(f"built {hf} in {time.perf_counter() - t0:.1f} s", flush=True)
    nat, out = root / "native", root / "out"  # every measurement writes ``out``, freshly removed
    env = {"CONVCHECK_FSYNC": "0"}

    def fresh(*paths):
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    load_before = os.getloadavg()
    # warm-up: page cache, and the native source for the native -> HF direction
    fresh(out, nat)
    subprocess.run(["cp", "-r", str(hf), str(out)], check=True)
    Child.run(convert_cmd(hf, nat, args.shard), env)
    size_hf, size_native = du(hf), du(nat)
    times: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}

    cpu: dict[str, list[float]] = {}

    def record(key, seconds, peak=None):
        times.setdefault(key, []).append(seconds)
        cpu.setdefault(key, []).append(Child.cpu["last"])
        if peak is not None:
            rss.setdefault(key, []).append(peak)

    _, base_rss, _ = Child.run([sys.executable, "-c", "import checkpoints.pipeline, checkpoints.cli"])
    for r in range(args.rounds):
        for src, source_format, direction in ((hf, "hf", "hf -> native"), (nat, "native", "native -> hf")):
            fresh(out)
            wall, _, _ = Child.run(["cp", "-r", str(src), str(out)])
            record(f"cp -r {source_format}", wall)
            fresh(out)
            wall, peak, printed = Child.run(convert_cmd(src, out, args.shard), env)
            record(direction, converter_seconds(printed), peak)
            record(f"{direction} (wall, with start-up)", wall)
        if not args.no_transformers:
            fresh(out)
            wall, peak, printed = Child.run([sys.executable, "-c", TRANSFORMERS_CHILD, str(hf), str(out), args.shard])
            record("transformers load+save", float(printed.split("SECONDS")[1]), peak)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    fresh(out)
    _, _, printed = Child.run(convert_cmd(hf, out, args.shard), {"CONVCHECK_FSYNC": "1"})
    record("hf -> native, fsync on", converter_seconds(printed))
    fresh(out)
    _, _, printed = Child.run(convert_cmd(nat, out, args.shard), {"CONVCHECK_FSYNC": "1"})
    record("native -> hf, fsync on", converter_seconds(printed))

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    _, _, _ = Child.run([sys.executable, "-c", "import checkpoints.pipeline, checkpoints.cli"])
    startup_cpu = Child.cpu["last"]
    peak = {k: max(v) for k, v in rss.items()}
    shard_hf = largest_file(hf, "*.safetensors")
    shard_out = largest_file(out, "*.safetensors")  # the last run: native -> hf
    print()
    print(f"load average (1/5/15 min): {_load(load_before)} before, {_load(os.getloadavg())} after "
          f"(the benchmark's own runs add about 1)")
    print(f"model: {size_hf / 1e9:.2f} GB HF ({len(list(hf.glob('*.safetensors')))} shards, largest "
          f"{fmt_bytes(shard_hf)}), {size_native / 1e9:.2f} GB native; {args.rounds} rounds, medians")
    print(f"{'measurement':40s} {'seconds':>8s} {'GB/s':>6s} {'CPU s':>6s} {'peak RSS':>10s}")
    for key, seconds in med.items():
        size = size_native if "native" in key.split("->")[-1] or key == "cp -r native" else size_hf
        line = f"{key:40s} {seconds:8.2f} {size / seconds / 1e9:6.2f} {med_cpu[key]:6.2f}"
        if key in peak:
            line += f" {fmt_bytes(peak[key]):>10s}"
        print(line)
    print(f"(CPU s: user + system of the whole process, start-up included; start-up alone: {startup_cpu:.2f})")
    print(f"{'python + torch + convcheck imported':40s} {'':8s} {'':6s} {fmt_bytes(base_rss):>10s}")
    print()
    ratios = {
        "hf -> native / cp -r hf": med["hf -> native"] / med["cp -r hf"],
        "native -> hf / cp -r native": med["native -> hf"] / med["cp -r native"],
    }
    if "transformers load+save" in med:
        ratios["hf -> native -> hf / transformers load+save"] = (med["hf -> native"] + med["native -> hf"]) / med["transformers load+save"]
        ratios["native -> hf / transformers load+save"] = med["native -> hf"] / med["transformers load+save"]
    for key, value in ratios.items():
        print(f"ratio {key:50s} {value:5.2f}")
    for key, base in (("hf -> native", "cp -r hf"), ("native -> hf", "cp -r native")):
        print(f"CPU-time ratio {key} (start-up excluded) / {base}: "
              f"{(med_cpu[key] - startup_cpu) / med_cpu[base]:5.2f}")
    print(f"peak RSS hf -> native: {fmt_bytes(peak['hf -> native'])} vs largest source shard {fmt_bytes(shard_hf)} "
          f"(+1 GiB budget: {fmt_bytes(shard_hf + 2**30)})")
    print(f"peak RSS native -> hf: {fmt_bytes(peak['native -> hf'])} vs largest output shard {fmt_bytes(shard_out)} "
          f"(+1 GiB budget: {fmt_bytes(shard_out + 2**30)})")
    if "transformers load+save" in peak:
        print(f"peak RSS transformers load+save: {fmt_bytes(peak['transformers load+save'])}")
    projection(cfg, size_hf, med, peak, base_rss)
    if not args.keep:
        fresh(hf)
    fresh(nat, out)


def in_flight_bytes(hidden: int, intermediate: int, vocab: int) -> int:
    """bf16 bytes alive at the worst moment, an upper bound: the writer holds one item while the
    producer has made up to two more (``pipeline.PREFETCH_DEPTH``), nearly all of them mapped
    source bytes (``fc1 = [gate; up]`` is written from its two halves, never assembled). Bounded
    by two vocab x hidden matrices (embedding and output head), or a layer's largest items (gate
    and up, down, and the next q/k/v: under 5 hidden x intermediate)."""
    return max(2 * vocab * hidden * 2, 5 * hidden * intermediate * 2)


MODELS = {  # Llama 3.1 shapes: hidden, intermediate, layers, heads, kv heads, vocab
    "8B": (4096, 14336, 32, 32, 8, 128256),
    "70B": (8192, 28672, 80, 64, 8, 128256),
    "405B": (16384, 53248, 126, 128, 8, 128256),
}


def projection(cfg, size_hf: int, med: dict, peak: dict, base_rss: int) -> None:
    """Time from the measured GB/s; memory = start-up + the bytes in flight at the worst moment
    (:func:`in_flight_bytes`) + whatever the measured peak here exceeds that model by."""
    here = in_flight_bytes(cfg.hidden_size, cfg.decoder.blocks[0].mlp.intermediate, cfg.vocab_size)
    rate = {d: size_hf / med[d] for d in ("hf -> native", "native -> hf")}
    excess = max(0, max(peak[d] for d in rate) - base_rss - here)
    print()
    print(f"memory model here: start-up {fmt_bytes(base_rss)} + in flight {fmt_bytes(here)} "
          f"+ unexplained {fmt_bytes(excess)} = measured {fmt_bytes(max(peak[d] for d in rate))}")
    print("| model | bf16 size | HF -> native | native -> HF | peak RSS (either way) |")
    print("|---|---|---|---|---|")
    for name, (hidden, inter, layers, heads, kv, vocab) in MODELS.items():
        params = layers * (3 * hidden * inter + 2 * heads * 128 * hidden + 2 * kv * 128 * hidden + 2 * hidden) \
            + 2 * vocab * hidden + hidden
        size = params * 2
        memory = base_rss + in_flight_bytes(hidden, inter, vocab) + excess
        t = {d: size / r for d, r in rate.items()}
        print(f"| {name} | {size / 1e9:.0f} GB | {_duration(t['hf -> native'])} | {_duration(t['native -> hf'])} | "
              f"~{memory / 2**30:.1f} GiB |")
    print(f"(measured here: HF -> native {rate['hf -> native'] / 1e9:.2f} GB/s, native -> HF "
          f"{rate['native -> hf'] / 1e9:.2f} GB/s, page cache warm, fsync off)")


def _load(averages: tuple[float, float, float]) -> str:
    return "/".join(f"{a:.2f}" for a in averages)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


if __name__ == "__main__":
    main()
