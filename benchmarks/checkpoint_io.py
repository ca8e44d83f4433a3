"""Peak memory and load time of the lazy checkpoint readers (native DCP and HF safetensors).

    python benchmarks/checkpoint_io.py [--hidden 1024] [--layers 8] [--vocab 32000] [--dir /tmp/x]

Each measurement runs in a fresh subprocess and reads the peak resident set (VmHWM, reset through
/proc/self/clear_refs) around the loop, so it counts torch's allocations, which tracemalloc misses.
Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def touch(tensor) -> None:
    """Fault in every page (a memory-mapped tensor is otherwise never read)."""
    flat = tensor.reshape(-1)
    if flat.numel():
        flat[:: max(1, 4096 // tensor.element_size())].float().sum()


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def config(hidden: int, layers: int, vocab: int):
    import native
    heads = hidden // 64
    block = native.BlockConfig(attention=native.AttentionConfig(heads=heads, kv_heads=max(1, heads // 4), head_dim=64),
                               mlp=native.MLPConfig(intermediate=hidden * 8 // 3 // 64 * 64))
    return native.ModelConfig(hidden_size=hidden, embeddings=native.EmbeddingConfig(vocab_size=vocab),
                              decoder=native.DecoderConfig(blocks=(block,), pattern=(0,) * layers))


def child(mode: str, path: str) -> dict:
    import torch
    import checkpoints
    from checkpoints import hf_reader, hf_writer

    reader = checkpoints.open_checkpoint(path) if mode.startswith("native") else hf_reader.open_hf_checkpoint(path)
    names = list(reader.keys())
    sizes = {n: reader.shape_of(n).numel() * reader.dtype_of(n).itemsize for n in names}
    base, _ = rss_mb()
    reset_peak()
    times = []
    start = time.perf_counter()
    if mode in ("native-lazy", "hf-lazy"):
        for name in names:
            t0 = time.perf_counter()
            tensor = reader[name]
            touch(tensor)
            times.append(time.perf_counter() - t0)
            del tensor
    elif mode == "native-layer":
        groups: dict = {}
        for name in names:
            groups.setdefault(name.split(".")[1] if name.startswith("layers.") else name, []).append(name)
        for group in groups.values():
            t0 = time.perf_counter()
            tensors = reader.load_many(group)
            for tensor in tensors.values():
                touch(tensor)
            times.append(time.perf_counter() - t0)
            del tensors
    elif mode == "native-all":
        _, state = checkpoints.load_checkpoint(path)
        for tensor in state.values():
            touch(tensor)
        del state
    total_s = time.perf_counter() - start
    _, peak = rss_mb()
    small = [t for n, t in zip(names, times) if sizes[n] < 64 * 1024] if mode.endswith("lazy") else []
    return {"mode": mode, "tensors": len(names), "total_mb": sum(sizes.values()) / 2**20,
            "largest_mb": max(sizes.values()) / 2**20, "peak_over_base_mb": peak - base, "total_s": total_s,
            "calls": len(times), "mean_ms": 1e3 * sum(times) / max(1, len(times)),
            "max_ms": 1e3 * max(times, default=0.0),
            "small_tensor_mean_ms": 1e3 * sum(small) / len(small) if small else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dir", default="/tmp/convcheck-bench")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    import torch
    import checkpoints
    from checkpoints import hf_reader, hf_writer
    from native import layout

    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    cfg = config(args.hidden, args.layers, args.vocab)
    state = {n: torch.randn(s) for n, s in layout.state_shapes(cfg).items()}
    t0 = time.perf_counter()
    checkpoints.save_checkpoint(root / "native", cfg, state, pipeline_stages=2)
    save_native = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf_writer.write_hf_checkpoint(root / "hf", {"model_type": "bench"}, state.items(), max_shard_size=200 * 10**6)
    save_hf = time.perf_counter() - t0
    del state
    print(json.dumps({"save_native_s": save_native, "save_hf_s": save_hf}))
    for mode, path in (("native-lazy", root / "native"), ("native-layer", root / "native"),
                       ("native-all", root / "native"), ("hf-lazy", root / "hf")):
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], check=True,
                             capture_output=True, text=True, cwd=ROOT)
        print(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
