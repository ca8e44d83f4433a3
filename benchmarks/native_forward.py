"""Forward throughput of the native model: a ~100M-parameter Llama-like config, float32.

Prints figures only (never asserts a time): the tokens/s of ``NativeModel.forward`` at a few batch
sizes. Run: ``python benchmarks/native_forward.py [--device cuda] [--dtype bfloat16]``.
"""
from __future__ import annotations

import argparse
import time

import torch

from native import AttentionConfig, BlockConfig, DecoderConfig, DefaultRotary, EmbeddingConfig, MLPConfig, ModelConfig, NativeModel


def llama_100m() -> ModelConfig:
    block = BlockConfig(attention=AttentionConfig(heads=12, kv_heads=4, head_dim=64, rotary=DefaultRotary(theta=10000.0)),
                        mlp=MLPConfig(intermediate=2048))
    return ModelConfig(hidden_size=768, max_position_embeddings=2048, embeddings=EmbeddingConfig(vocab_size=32000),
                       decoder=DecoderConfig(blocks=(block,), pattern=(0,) * 12))


def flops_per_token(cfg: ModelConfig, seq: int) -> float:
    """Matmul FLOPs per token: 2 per weight used (all but the embedding lookup), plus causal attention
    (q·k and p·v over on average ``seq / 2`` keys)."""
    hidden, layers = cfg.hidden_size, cfg.num_layers
    a, mlp = cfg.decoder.blocks[0].attention, cfg.decoder.blocks[0].mlp
    per_layer = hidden * (a.heads + 2 * a.kv_heads) * a.head_dim + a.heads * a.head_dim * hidden + 3 * hidden * mlp.intermediate
    attention = 2 * a.heads * a.head_dim * seq / 2
    return 2 * (layers * per_layer + hidden * cfg.vocab_size) + 2 * layers * attention


def measure(model: NativeModel, batch: int, seq: int, device: str, repeats: int) -> float:
    ids = torch.randint(0, model.cfg.vocab_size, (batch, seq), device=device)
    with torch.inference_mode():
        model(ids)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(ids)
        if device == "cuda":
            torch.cuda.synchronize()
    return batch * seq * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = llama_100m()
    model = NativeModel(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"native forward: {params / 1e6:.1f}M parameters, {args.dtype}, {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, seq {args.seq}")
    for batch in args.batches:
        rate = measure(model, batch, args.seq, args.device, args.repeats)
        print(f"  batch {batch}: {rate:,.0f} tokens/s  (~{rate * flops_per_token(cfg, args.seq) / 1e9:.1f} GFLOP/s of matmul work)")


if __name__ == "__main__":
    main()
