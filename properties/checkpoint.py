"""``checkpoint_roundtrip``: the disk round trip through ``convcheck convert`` (the
``checkpoints.pipeline.convert`` function the command runs), both directions, at several shard sizes
and dtypes, with byte-deterministic output.
"""
from __future__ import annotations

import contextlib
import filecmp
import json
import os
import tempfile
from pathlib import Path

import torch

import checkpoints
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


def options(seed: int) -> tuple[str, str]:
    """``(--max-shard-size, --dtype)`` of an example, drawn from its seed (seed 0: one file, keep)."""
    rnd = common.rng(seed, "checkpoint_roundtrip")
    shard_size = SHARD_SIZES[0] if seed == 0 else rnd.choice(SHARD_SIZES)
    dtype_option = DTYPES[0] if seed == 0 else rnd.choice(DTYPES)
    return shard_size, dtype_option


def checkpoint_roundtrip(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """Disk round trips through ``convcheck convert``, compared with the **source bytes**, for every
    architecture and dtype (state dtype, ``--dtype`` and ``--max-shard-size`` drawn from the seed):

    - native ckpt → HF dir: the HF dir holds ``export_weights`` of the state cast to ``--dtype``,
      bit for bit, and its config.json imports to the same architecture;
    - → native ckpt: the cast state itself, bit for bit (native → HF → native), same architecture;
    - → HF dir again: the first HF dir, byte for byte (HF → native → HF, and native → HF is
      deterministic);
    - an HF dir written from :func:`properties.weights.random_hf_state` (bytes drawn on the HF side,
      which an export's image cannot stand for) → native → HF: those tensors, bit for bit;
    - HF → native run twice gives the same bytes (one example in four, seed % 4 == 0).

    Every transform is a byte bijection, so a cast commutes with the conversion: nothing is
    compared with an in-memory conversion, whose loss would be the same on both sides.
    The temporary directories are throwaway, so ``CONVCHECK_FSYNC=0`` is set while it runs.
    """
    from safetensors.torch import save_file

    from checkpoints.hf_reader import open_hf_checkpoint
    from checkpoints.pipeline import convert

    from .weights import random_hf_state

    report = Reporter("checkpoint_roundtrip", converter)
    shard_size, dtype_option = options(seed)
    dtype = common.weight_dtype(seed)
    state = native.random_state(cfg, seed, dtype=dtype)
    target = _TORCH.get(dtype_option)
    cast = {n: t.to(target) if target is not None else t for n, t in state.items()}
    options_text = f"--dtype {dtype_option} --max-shard-size {shard_size}"

    def run(src: Path, dst: Path, **kwargs) -> None:
        try:
            convert(src, dst, **kwargs)
        except ConversionError as exc:
            report.fail(f"convert {src.name} -> {dst.name}", f"refused ({options_text}): {exc}")

    def same_tensors(expected, actual, what: str) -> None:
        report.expect(sorted(actual) == sorted(expected), what,
                      f"tensor names differ: {sorted(set(actual) ^ set(expected))[:6]} ({options_text})")
        for name, tensor in expected.items():
            report.expect(bits_equal(tensor, actual[name]), f"{what}: {name}",
                          f"{describe_difference(tensor, actual[name])} ({options_text})")

    def read_hf(path: Path) -> dict:
        try:
            with open_hf_checkpoint(path) as reader:
                back = converter.import_config(reader.config)
                tensors = {name: reader[name] for name in reader.keys()}
        except ConversionError as exc:
            report.fail(f"{path.name}/config.json",
                        f"the HF checkpoint convert wrote cannot be read back ({options_text}): {exc}")
        report.expect(without_metadata(back) == without_metadata(cfg), f"{path.name}/config.json",
                      "imports to another architecture: "
                      + "; ".join(config_difference(without_metadata(cfg), without_metadata(back))[:4]))
        return tensors

    with (tempfile.TemporaryDirectory(prefix="convcheck-") as tmp, installed(converter), no_fsync(),
          common.quiet_transformers()):
        root = Path(tmp)
        checkpoints.save_checkpoint(root / "native0", cfg, state)
        hf_kwargs = dict(to="hf", max_shard_size=shard_size, model_type=converter.model_type)
        run(root / "native0", root / "hf1", dtype=dtype_option, **hf_kwargs)
        hf1 = read_hf(root / "hf1")
        same_tensors(common.export_weights(report, converter, cfg, cast), hf1, "HF checkpoint")

        run(root / "hf1", root / "native2", to="native")
        if seed % 4 == 0:  # (a quarter of the examples: the writer's determinism, not the converter's)
            run(root / "hf1", root / "native2b", to="native")
            same_bytes(report, root / "native2", root / "native2b", "HF -> native twice")
        cfg2, native2 = checkpoints.load_checkpoint(root / "native2")
        report.expect(without_metadata(cfg2) == without_metadata(cfg), "native config.json",
                      "HF -> native changed the architecture: "
                      + "; ".join(config_difference(without_metadata(cfg), without_metadata(cfg2))[:4]))
        same_tensors(cast, native2, "native -> HF -> native")

        run(root / "native2", root / "hf3", **hf_kwargs)
        same_bytes(report, root / "hf1", root / "hf3", f"HF -> native -> HF ({options_text})")

        source = random_hf_state(converter, cfg, seed + 1, target or dtype)
        (root / "hf4").mkdir()
        save_file(source, str(root / "hf4" / "model.safetensors"))
        (root / "hf4" / "config.json").write_text(json.dumps(common.export_config(report, converter, cfg)))
        run(root / "hf4", root / "native5", to="native")
        run(root / "native5", root / "hf6", **hf_kwargs)
        same_tensors(source, read_hf(root / "hf6"), "HF source -> native -> HF")


@contextlib.contextmanager
def no_fsync():
    """``CONVCHECK_FSYNC=0`` for the duration (see checkpoints.atomic): throwaway directories need no
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
