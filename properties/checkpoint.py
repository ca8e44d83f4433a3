"""``checkpoint_roundtrip``: the disk round trip through ``convcheck convert`` (the
``converters.pipeline.convert`` function the command runs), both directions, at several shard sizes
and dtypes, with byte-deterministic output.
"""
from __future__ import annotations

import contextlib
import filecmp
import os
import tempfile
from pathlib import Path

import torch

import native
from converters import ConversionError, registry

from . import common
from .common import bits_equal, config_difference, describe_difference, without_metadata
from .violation import Reporter

#: ``--max-shard-size`` values drawn: several shards per file set, one tensor per shard, one file.
SHARD_SIZES = ("5GB", "2KB", "16KB", "64KB", "1B")
#: ``--dtype`` values drawn (``keep`` first: what shrinking reaches).
DTYPES = ("keep", "fp32", "bf16", "fp16")
_TORCH = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def installed(converter):
    """Make ``converter`` the registered one for its model_type while the pipeline runs (the
    pipeline looks converters up in the registry; a meta-test's broken converter must be the one it
    finds). Restores the registry on exit."""
    table = registry._REGISTRY
    previous = table.get(converter.model_type)
    table[converter.model_type] = converter
    try:
        yield
    finally:
        if previous is None:
            table.pop(converter.model_type, None)
        else:
            table[converter.model_type] = previous


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def same_bytes(report: Reporter, a: Path, b: Path, what: str) -> None:
    fa, fb = _files(a), _files(b)
    if fa.keys() != fb.keys():
        report.fail(what, f"different files: {sorted(set(fa) ^ set(fb))[:6]}")
    for name in fa:
        if not filecmp.cmp(fa[name], fb[name], shallow=False):
            report.fail(f"{what}: {name}", "bytes differ")


def checkpoint_roundtrip(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """native ckpt → HF dir → native ckpt → HF dir, with ``--dtype`` and ``--max-shard-size`` drawn
    from the seed:

    - the HF dir holds ``export_weights`` of the state (cast to the dtype) bit for bit, and its
      config.json imports back to the same architecture;
    - the native ckpt read back holds the cast state bit for bit, same architecture;
    - HF → native → HF reproduces the HF dir byte for byte (so native → HF is deterministic: two
      conversions of the same tensors give the same bytes), and HF → native run twice gives the
      same bytes.

    The temporary directories are throwaway, so ``CONVCHECK_FSYNC=0`` is set while it runs.
    """
    from converters.hf_io import open_hf_checkpoint
    from converters.pipeline import convert

    report = Reporter("checkpoint_roundtrip", converter)
    rnd = common.rng(seed, "checkpoint_roundtrip")
    shard_size = SHARD_SIZES[0] if seed == 0 else rnd.choice(SHARD_SIZES)
    dtype_option = DTYPES[0] if seed == 0 else rnd.choice(DTYPES)
    state = native.random_state(cfg, seed, dtype=common.weight_dtype(seed))
    target_dtype = _TORCH.get(dtype_option)
    cast = {k: v.to(target_dtype) if target_dtype is not None else v for k, v in state.items()}
    options = f"--dtype {dtype_option} --max-shard-size {shard_size}"

    def run(src: Path, dst: Path, **kwargs) -> None:
        try:
            convert(src, dst, **kwargs)
        except ConversionError as exc:
            report.fail(f"convert {src.name} -> {dst.name}", f"refused ({options}): {exc}")

    with (tempfile.TemporaryDirectory(prefix="convcheck-") as tmp, installed(converter), no_fsync(),
          common.quiet_transformers()):
        root = Path(tmp)
        native.save_checkpoint(root / "native0", cfg, state)
        run(root / "native0", root / "hf1", to="hf", dtype=dtype_option, max_shard_size=shard_size,
            model_type=converter.model_type)

        expected = common.export_weights(report, converter, cfg, cast)
        try:
            reader = open_hf_checkpoint(root / "hf1")
            back_cfg = converter.import_config(reader.config)
        except ConversionError as exc:
            report.fail("hf1/config.json", f"the HF checkpoint convert wrote cannot be read back ({options}): {exc}")
        with reader:
            report.expect(without_metadata(back_cfg) == without_metadata(cfg), "config.json",
                          "imports to another architecture: "
                          + "; ".join(config_difference(without_metadata(cfg), without_metadata(back_cfg))[:4]))
            names = sorted(reader.keys())
            report.expect(names == sorted(expected), "HF checkpoint",
                          f"tensor names differ from export_weights: {sorted(set(names) ^ set(expected))[:6]}")
            for name in names:
                tensor = reader[name]
                report.expect(bits_equal(expected[name], tensor), f"HF checkpoint: {name}",
                              f"{describe_difference(expected[name], tensor)} ({options})")

        run(root / "hf1", root / "native2", to="native")
        run(root / "hf1", root / "native2b", to="native")
        same_bytes(report, root / "native2", root / "native2b", "HF -> native twice")
        cfg2, state2 = native.load_checkpoint(root / "native2")
        report.expect(without_metadata(cfg2) == without_metadata(cfg), "native config.json",
                      "HF -> native changed the architecture: "
                      + "; ".join(config_difference(without_metadata(cfg), without_metadata(cfg2))[:4]))
        report.expect(set(state2) == set(cast), "native checkpoint",
                      f"tensor names differ: {sorted(set(state2) ^ set(cast))[:6]}")
        for name, tensor in cast.items():
            report.expect(bits_equal(tensor, state2[name]), f"native checkpoint: {name}",
                          f"native -> HF -> native is not bit-exact: {describe_difference(tensor, state2[name])} ({options})")

        run(root / "native2", root / "hf3", to="hf", max_shard_size=shard_size)
        same_bytes(report, root / "hf1", root / "hf3", f"HF -> native -> HF ({options})")


@contextlib.contextmanager
def no_fsync():
    """``CONVCHECK_FSYNC=0`` for the duration (see native.atomic): throwaway directories need no
    durability, and fsync would dominate the property's time."""
    previous = os.environ.get("CONVCHECK_FSYNC")
    os.environ["CONVCHECK_FSYNC"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CONVCHECK_FSYNC", None)
        else:
            os.environ["CONVCHECK_FSYNC"] = previous
