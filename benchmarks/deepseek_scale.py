"""DeepSeek-V3 at full width: time and peak memory of ``convcheck convert``, and a projection.

    python benchmarks/deepseek_scale.py [--experts 8 16] [--fp8] [--dir /tmp/convcheck-deepseek-bench]

Builds, from the real DeepSeek-V3 config (``strategies/real_configs``), a 2-layer checkpoint — one
dense layer and one MoE layer, every size real (hidden 7168, MLA ranks 1536/512, 128 heads, expert
width 2048, vocabulary 129280) except the number of routed experts, which is ``--experts`` (the real
256 take 11.3 B parameters in one layer: 23 GB in bf16, more disk than this shared box has to
spare). With ``--fp8`` the checkpoint is in DeepSeek's released layout (float8 projections with
128 x 128 block scales, the rest bf16). Random weights, written one tensor at a time.

Each expert count is measured as HF -> native then native -> HF (plain bf16 export), each in its
own subprocess; peak resident memory is that child's ``ru_maxrss`` (``os.wait4``). The figures at
two expert counts give the memory per expert; the projection to the real 256 experts and to the
full 61 + 1 MTP layers follows from it (the layers are converted one tensor at a time, so memory
does not grow with their number; time does, with the bytes). Prints figures, asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from convert import Child, convert_cmd, converter_seconds, du, fmt_bytes  # noqa: E402

REAL = ROOT / "strategies" / "real_configs" / "deepseek-ai__DeepSeek-V3.json"
REAL_EXPERTS = 256


def hf_config(experts: int) -> dict:
    real = json.loads(REAL.read_text())
    real.pop("quantization_config")
    group = real["n_group"] if experts == REAL_EXPERTS else 1  # routing does not change the conversion
    return {**real, "num_hidden_layers": 2, "first_k_dense_replace": 1, "n_routed_experts": experts,
            "n_group": group, "topk_group": min(real["topk_group"], group),
            "num_experts_per_tok": min(real["num_experts_per_tok"], experts - 1), "num_nextn_predict_layers": 0}


def build(path: Path, experts: int, fp8: bool) -> dict:
    """Random bf16 (or FP8-layout) weights streamed into a sharded HF checkpoint."""
    import torch

    import converters
    from checkpoints import fp8 as fp8_module
    from checkpoints.hf_writer import write_hf_checkpoint

    config = hf_config(experts)
    conv = converters.get("deepseek_v3")
    cfg = conv.import_config(config)
    shapes = conv.hf_shapes(cfg)
    generator = torch.Generator().manual_seed(0)
    quantized = ("_proj.weight", "kv_a_proj_with_mqa.weight")

    def tensors():
        for name, shape in shapes.items():
            if len(shape) == 1:
                dtype = torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16
                yield name, torch.ones(shape, dtype=dtype)
                continue
            value = (torch.randn(shape, generator=generator) * 0.02)
            if fp8 and name.endswith(quantized):
                q, scale = fp8_module.quantize(value, (128, 128))
                yield name, q
                yield name + "_scale_inv", scale
            else:
                yield name, value.to(torch.bfloat16)

    out = {**config, "dtype": "bfloat16"}
    if fp8:
        out["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}
    write_hf_checkpoint(path, out, tensors(), max_shard_size="2GB")
    return out


def measure(root: Path, experts: int, fp8: bool) -> dict:
    hf, native_dir, back = root / f"hf-{experts}", root / f"native-{experts}", root / f"back-{experts}"
    for p in (hf, native_dir, back):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    build(hf, experts, fp8)
    built = time.perf_counter() - t0
    env = {"CONVCHECK_FSYNC": "0", "OMP_NUM_THREADS": "1"}
    wall_in, peak_in, out_in = Child.run(convert_cmd(hf, native_dir, "5GB") + ["--weight-dtype", "bf16"] * fp8, env)
    wall_out, peak_out, out_out = Child.run(convert_cmd(native_dir, back, "5GB"), env)
    row = {"experts": experts, "hf_bytes": du(hf), "native_bytes": du(native_dir), "built_s": built,
           "hf_to_native_s": converter_seconds(out_in), "native_to_hf_s": converter_seconds(out_out),
           "peak_hf_to_native": peak_in, "peak_native_to_hf": peak_out}
    for p in (hf, native_dir, back):
        shutil.rmtree(p, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/convcheck-deepseek-bench"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = [measure(args.dir, e, args.fp8) for e in args.experts]
    print("| experts | HF size | native size | HF -> native | native -> HF | peak RSS in | peak RSS out |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['experts']} | {fmt_bytes(r['hf_bytes'])} | {fmt_bytes(r['native_bytes'])} | "
              f"{r['hf_to_native_s']:.1f} s | {r['native_to_hf_s']:.1f} s | {fmt_bytes(r['peak_hf_to_native'])} | "
              f"{fmt_bytes(r['peak_native_to_hf'])} |")
    if len(rows) < 2:
        return
    a, b = rows[0], rows[-1]
    span = b["experts"] - a["experts"]
    per_expert = {k: (b[k] - a[k]) / span for k in ("native_bytes", "peak_hf_to_native", "peak_native_to_hf")}
    print()
    print(f"per routed expert (one MoE layer): native {fmt_bytes(per_expert['native_bytes'])}, peak RSS "
          f"{per_expert['peak_hf_to_native'] / 2**20:+.1f} MiB in, {per_expert['peak_native_to_hf'] / 2**20:+.1f} MiB out")
    rate_in, rate_out = b["native_bytes"] / b["hf_to_native_s"], b["native_bytes"] / b["native_to_hf_s"]
    two = b["native_bytes"] + per_expert["native_bytes"] * (REAL_EXPERTS - b["experts"])
    peaks = [max(r[k] for r in rows) + max(0.0, per_expert[k]) * (REAL_EXPERTS - b["experts"])
             for k in ("peak_hf_to_native", "peak_native_to_hf")]
    print(f"projected, 2 layers with the real {REAL_EXPERTS} experts ({fmt_bytes(two)} native): HF -> native "
          f"{two / rate_in:.0f} s, native -> HF {two / rate_out:.0f} s, peak RSS {fmt_bytes(peaks[0])} / "
          f"{fmt_bytes(peaks[1])}")
    full_bytes = 2 * full_parameters()
    print(f"projected, DeepSeek-V3 671B (61 layers + 1 MTP layer, {full_bytes / 1e9:.0f} GB in bf16) at the "
          f"measured {rate_in / 1e9:.2f} / {rate_out / 1e9:.2f} GB/s: HF -> native {full_bytes / rate_in / 60:.0f} min, "
          f"native -> HF {full_bytes / rate_out / 60:.0f} min; peak RSS as for 2 layers with 256 experts "
          "(tensors are converted one at a time; the largest are the stacked experts)")


def full_parameters() -> int:
    """Parameters of the real DeepSeek-V3 config, its MTP layer included (from the native layout)."""
    import math

    import converters
    import native
    from native.layout import MTP_KEY

    real = json.loads(REAL.read_text())
    real.pop("quantization_config")
    cfg = converters.get("deepseek_v3").import_config(real)
    cfg = native.ModelConfig.from_dict({**cfg.to_dict(), "metadata": {**cfg.metadata, MTP_KEY: 1}})
    return sum(math.prod(s) for s in native.state_shapes(cfg).values())

if __name__ == "__main__":
    main()
