"""Forward throughput in bf16 at realistic sizes, and the time of one forward_equivalence
example. Prints figures; never asserts timings.

On CUDA: the real configs of fixtures/realistic.py (2 layers, full width, 2k–8k tokens): tokens/s of
the native and the HF forward in bf16, then the time of one realistic forward_equivalence example
(HF float64 reference + HF bf16 + native bf16, weights converted) and of one tiny-config example of
the gate's bf16 column. Without CUDA it says so and runs the same code on CPU at a small size
(hidden 256, 4 heads, 256 tokens).

    python benchmarks/forward_gpu.py [--device cuda|cpu] [--reps 3] [--config Llama-3.1-8B ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import converters  # noqa: E402
import native  # noqa: E402
from fixtures import realistic  # noqa: E402
from properties import common  # noqa: E402
from properties.violation import Reporter  # noqa: E402

SMALL_WIDTH = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 64}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up."""
    with torch.no_grad():
        fn()
        sync(device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def small(case: realistic.Case) -> realistic.Case:
    w = dict(SMALL_WIDTH)
    if case.hf.get("num_local_experts"):
        w["num_local_experts"] = 4
    hf = realistic.reduce(case.hf, width=w, vocab=1024)
    if hf.get("sliding_window"):
        hf["sliding_window"] = min(hf["sliding_window"], 128)
    return realistic.Case(case.file, hf, 256)


def throughput(case: realistic.Case, device: str, reps: int) -> tuple[float, float]:
    converter = converters.get(case.model_type)
    cfg = converter.import_config(case.hf)
    report = Reporter("forward_equivalence", converter)
    hf_cfg = common.export_config(report, converter, cfg)
    state = native.random_state(cfg, 0, dtype=torch.bfloat16)
    ids, mask = realistic.tokens(cfg.vocab_size, case.tokens, 0, device)
    model = common.native_model(cfg, state, torch.bfloat16, device)
    t_native = timed(lambda: model(ids, attention_mask=mask), device, reps)
    del model
    hf = common.hf_model(report, hf_cfg, common.export_weights(report, converter, cfg, state), torch.bfloat16, device)
    t_hf = timed(lambda: hf(input_ids=ids, attention_mask=mask), device, reps)
    del hf
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return case.tokens / t_native, case.tokens / t_hf


def tiny_example_seconds(device: str, reps: int) -> float:
    """One example of the gate's bf16 column on the Llama strategy's scaled Llama-3.1-8B example."""
    from properties import forward_equivalence
    from fixtures.runner import explicit_examples, strategy_module
    from properties import PROPERTIES

    conv = converters.get("llama")
    cfg = explicit_examples(PROPERTIES["forward_equivalence"], conv, strategy_module("llama"))[-1]
    return timed(lambda: forward_equivalence(conv, cfg, 0, device=device, dtypes=("bfloat16",)), device, reps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--config", action="append", help="config id (e.g. Llama-3.1-8B); default all")
    args = p.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA not available: running the CPU fallback at small size")
        device = "cpu"
    elif device == "cpu":
        print(f"CPU{' (CUDA not available)' if not torch.cuda.is_available() else ''}: "
              f"realistic configs at small size (hidden 256, 4 heads, vocab 1024, 256 tokens)")
    else:
        print(f"device: {torch.cuda.get_device_name()}")
    cases = [c for c in realistic.cases() if not args.config or c.id in args.config]
    if device == "cpu":
        cases = [small(c) for c in cases]
    print(f"\n{'config':24s} {'T':>5s} {'native tok/s':>13s} {'HF tok/s':>10s} {'example s':>10s} {'ok':>3s} "
          f"{'err':>9s} {'tol':>9s}")
    for case in cases:
        nat, hf = throughput(case, device, args.reps)
        t = time.perf_counter()
        m = realistic.measure(case, torch.bfloat16, device)
        sync(device)
        example = time.perf_counter() - t
        if device == "cuda":
            torch.cuda.empty_cache()
        print(f"{case.id:24s} {case.tokens:5d} {nat:13.0f} {hf:10.0f} {example:10.2f} {'yes' if m.ok else 'NO':>3s} "
              f"{m.native_error:9.2e} {m.tolerance:9.2e}", flush=True)
    print(f"\none tiny forward_equivalence example (bf16 column, Llama-3.1-8B scaled down) on {device}: "
          f"{tiny_example_seconds(device, args.reps):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
