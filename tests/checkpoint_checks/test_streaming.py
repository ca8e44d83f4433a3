"""Streaming conversion: the online HF stream equals the disk writer, memory stays at one rule, dtypes,
nonfinite weights, pipeline stages, prefetch."""
from __future__ import annotations

import json
import threading

import pytest
import torch

import checkpoints.nonfinite
import checkpoints.prefetch
import native
from checkpoints import native_writer
from checkpoints.cli import main
from checkpoints.pipeline import convert
from checkpoints.plan import stream_hf_weights
from converters.errors import ConversionError

from convert_cases import bits, hf_tensors, llama_config, read_config, read_hf, snapshot, write_hf


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A small Llama in mixed dtypes (bf16 matrices, fp32 norms), sharded."""
    cfg = llama_config(layers=3)
    tensors = {n: (t.float() if t.dim() == 1 else t) for n, t in hf_tensors(cfg).items()}
    root = tmp_path_factory.mktemp("stream")
    write_hf(root / "hf", cfg, tensors, shard=20_000)
    convert(root / "hf", root / "native")
    return root / "hf", root / "native", tensors


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("convcheck: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- the online stream
@pytest.mark.parametrize("dtype", ["keep", "bf16", "fp32"])
def test_stream_hf_weights_equals_the_disk_writer(hf_model, tmp_path, dtype):
    _, nat, _ = hf_model
    convert(nat, tmp_path / "hf", dtype=dtype, max_shard_size="30KB")
    disk = read_hf(tmp_path / "hf")
    streamed = list(stream_hf_weights(nat, dtype=dtype))
    assert [n for n, _ in streamed] == [n for n, _, _ in checkpoints.plan.hf_export(nat, dtype=dtype).plan]
    assert sorted(n for n, _ in streamed) == sorted(disk)
    for name, tensor in streamed:
        assert tensor.dtype == disk[name].dtype and torch.equal(bits(tensor), bits(disk[name])), name


def test_stream_touches_no_disk_and_is_reusable(hf_model, tmp_path, monkeypatch):
    _, nat, tensors = hf_model
    before = snapshot(nat.parent)
    monkeypatch.setattr("checkpoints.atomic.atomic_directory", lambda *a, **k: pytest.fail("the stream must not write"))
    export = checkpoints.plan.hf_export(checkpoints.open_checkpoint(nat))
    first, second = dict(export.tensors()), dict(export.tensors())
    assert first.keys() == second.keys() == tensors.keys()
    assert all(torch.equal(first[n], second[n]) and torch.equal(first[n], tensors[n]) for n in first)
    assert snapshot(nat.parent) == before


def test_stream_refuses_up_front(tmp_path):
    with pytest.raises(Exception, match="config.json: missing"):
        stream_hf_weights(tmp_path)
    with pytest.raises(ConversionError, match="--dtype='int8'"):
        stream_hf_weights(tmp_path, dtype="int8")


# -------------------------------------------------------------------------------------- memory
def test_native_writer_pulls_one_tensor_at_a_time(hf_model, tmp_path, monkeypatch):
    """HF -> native never holds more than the rule in flight: every tensor is written before the
    next rule runs, and nothing waits in the writer's pending buffer."""
    src, _, _ = hf_model
    live, peak, sources = [], [0], []
    real = native_writer._Source

    class Spy(real):
        def _take(self, name):
            tensor = super()._take(name)
            live.append(name)
            peak[0] = max(peak[0], self.peak_pending_bytes)
            sources.append(self)
            return tensor

    monkeypatch.setattr(native_writer, "_Source", Spy)
    for stages in (1, 3):
        live.clear()
        convert(src, tmp_path / f"n{stages}", pipeline_stages=stages)
        assert peak[0] == 0, "a tensor arrived before its turn and was held in memory"
        assert len(live) == len(native.state_shapes(llama_config(layers=3)))


def test_hf_writer_lays_out_shards_before_data(hf_model, tmp_path, monkeypatch):
    """native -> HF writes each tensor as it arrives (planned mode): the stream is never ahead of
    the writer by more than the prefetch depth."""
    from checkpoints import hf_writer
    _, nat, _ = hf_model
    produced, written = [], []
    real_tensors = checkpoints.plan.HFExport.tensors
    monkeypatch.setattr(checkpoints.plan.HFExport, "tensors",
                        lambda self, **kw: ((produced.append(n) or (n, t)) for n, t in real_tensors(self, **kw)))
    real_write = hf_writer._ShardFile.write
    monkeypatch.setattr(hf_writer._ShardFile, "write",
                        lambda self, n, t: (written.append((n, len(produced))), real_write(self, n, t))[1])
    convert(nat, tmp_path / "hf", max_shard_size="20KB")
    assert [n for n, _ in written] == produced
    assert all(seen - (k + 1) <= 2 for k, (_, seen) in enumerate(written))  # one in the queue, one in flight


# ------------------------------------------------------------------------------- kernel copies
@pytest.mark.parametrize("stages", [1, 2])
def test_kernel_copies_give_the_same_bytes_as_writing_from_memory(hf_model, tmp_path, monkeypatch, stages):
    """Renames and concatenated blocks are copied file to file (copy_file_range) both ways; the
    outputs are byte for byte those written from memory (where the kernel cannot copy)."""
    from checkpoints import pages
    src, _, tensors = hf_model
    copied = []
    real = pages.os.copy_file_range

    def counting(src_fd, dst_fd, count, *offsets):
        n = real(src_fd, dst_fd, count, *offsets)
        copied.append(n)
        return n

    monkeypatch.setattr(pages.os, "copy_file_range", counting)
    monkeypatch.setattr(pages, "_copy_supported", True)
    convert(src, tmp_path / "native", pipeline_stages=stages)
    convert(tmp_path / "native", tmp_path / "hf", max_shard_size="30KB")
    total = sum(t.nbytes for t in tensors.values())
    assert sum(copied) > total  # most bytes of both conversions went file to file
    monkeypatch.setattr(pages, "_copy_supported", False)
    convert(src, tmp_path / "native_memory", pipeline_stages=stages)
    convert(tmp_path / "native", tmp_path / "hf_memory", max_shard_size="30KB")
    assert snapshot(tmp_path / "native") == snapshot(tmp_path / "native_memory")
    assert snapshot(tmp_path / "hf") == snapshot(tmp_path / "hf_memory")
    out = read_hf(tmp_path / "hf")
    assert out.keys() == tensors.keys() and all(torch.equal(bits(out[n]), bits(t)) for n, t in tensors.items())


# -------------------------------------------------------------------------------------- dtypes
def test_keep_preserves_each_dtype_and_config_names_the_dominant_one(hf_model, tmp_path):
    _, nat, tensors = hf_model
    convert(nat, tmp_path / "hf")
    out = read_hf(tmp_path / "hf")
    assert {n: t.dtype for n, t in out.items()} == {n: t.dtype for n, t in tensors.items()}
    assert read_config(tmp_path / "hf")["dtype"] == "bfloat16"  # matrices outweigh the fp32 norms


@pytest.mark.parametrize("dtype,expected", [("fp16", torch.float16), ("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_dtype_casts_floats_both_ways(hf_model, tmp_path, dtype, expected):
    src, _, tensors = hf_model
    convert(src, tmp_path / "native", dtype=dtype)
    reader = checkpoints.open_checkpoint(tmp_path / "native")
    assert {reader.dtype_of(n) for n in reader} == {expected}
    convert(tmp_path / "native", tmp_path / "hf")
    assert read_config(tmp_path / "hf")["dtype"] == str(expected).removeprefix("torch.")
    out = read_hf(tmp_path / "hf")
    assert all(torch.equal(out[n], t.to(expected)) for n, t in tensors.items())


def test_cast_keeps_integer_and_bool_tensors():
    check = checkpoints.nonfinite.NonfiniteCheck()
    for t in (torch.arange(5), torch.tensor([True, False])):
        assert checkpoints.plan._cast("x", t, t.dtype, check) is t
    plan = [("w", torch.bfloat16, (2,)), ("ids", torch.int64, (3,))]
    assert checkpoints.plan.dominant(plan, torch.float32) == torch.bfloat16
    assert checkpoints.plan.dominant([("ids", torch.int64, (3,))], torch.float32) == torch.float32


# ------------------------------------------------------------------------------------ nonfinite
def _poisoned(tmp_path, cfg, tensors, where):
    tensors = dict(tensors)
    for name, index, value in where:
        t = tensors[name].clone()
        t.view(-1)[index] = value
        tensors[name] = t
    return write_hf(tmp_path / "bad", cfg, tensors)


def test_nonfinite_refused_with_every_tensor_and_count_then_allowed(hf_model, tmp_path, capsys):
    _, _, tensors = hf_model
    cfg = llama_config(layers=3)
    where = [("model.layers.0.mlp.down_proj.weight", 0, float("nan")),
             ("model.layers.0.mlp.down_proj.weight", 1, float("nan")),
             ("model.layers.2.self_attn.q_proj.weight", 5, float("inf")),
             ("model.norm.weight", 3, float("-inf"))]
    src = _poisoned(tmp_path, cfg, tensors, where)
    assert main(["convert", str(src), str(tmp_path / "out"), "-q"]) == 2
    err = one_line_error(capsys)
    assert "nonfinite weights in 3 tensor(s)" in err and "--allow-nonfinite" in err
    for fragment in ("model.layers.0.mlp.down_proj.weight: 2 NaN", "model.layers.2.self_attn.q_proj.weight: 1 Inf",
                     "model.norm.weight: 1 Inf"):
        assert fragment in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    assert main(["convert", str(src), str(tmp_path / "out"), "-q", "--allow-nonfinite"]) == 0
    assert main(["convert", str(tmp_path / "out"), str(tmp_path / "back"), "-q"]) == 2  # the native side checks too
    assert "nonfinite weights in 3 tensor(s)" in one_line_error(capsys)


def test_overflow_on_a_narrowing_cast_is_refused(hf_model, tmp_path, capsys):
    _, _, tensors = hf_model
    cfg = llama_config(layers=3)
    tensors = {n: t.float() for n, t in tensors.items()}
    src = _poisoned(tmp_path, cfg, tensors, [("model.layers.1.mlp.up_proj.weight", 7, 1e6)])
    assert main(["convert", str(src), str(tmp_path / "out"), "-q", "--dtype", "fp16"]) == 2
    assert "layers.1.mlp.fc1.weight (overflow casting to float16): 1 Inf" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_many_offenders_are_folded_compactly():
    found = [(f"model.layers.{i}.mlp.down_proj.weight", i, 0) for i in (0, 3, 7)] + [("lm_head.weight", 0, 2)]
    text = checkpoints.nonfinite.describe_counts(found)
    assert text == "model.layers.{0,3,7}.mlp.down_proj.weight: NaN 0/3/7, Inf 0/0/0; lm_head.weight: 2 Inf"


# ------------------------------------------------------------------------------ pipeline stages
def test_hf_to_native_in_pipeline_stages(hf_model, tmp_path):
    src, nat, _ = hf_model
    convert(src, tmp_path / "staged", pipeline_stages=3)
    assert sorted(p.name for p in (tmp_path / "staged").iterdir() if p.is_dir()) == ["pp0", "pp1", "pp2"]
    flat_cfg, flat = checkpoints.load_checkpoint(nat)
    staged_cfg, staged = checkpoints.load_checkpoint(tmp_path / "staged")
    assert flat_cfg == staged_cfg and flat.keys() == staged.keys()
    assert all(torch.equal(flat[n], staged[n]) for n in flat)
    convert(tmp_path / "staged", tmp_path / "hf")  # merging the stages streams too
    assert snapshot(tmp_path / "hf").keys() >= {"config.json"}
    assert main(["convert", str(src), str(tmp_path / "x"), "-q", "--pipeline-stages", "4"]) == 2


# ------------------------------------------------------------------------------------- prefetch
def test_prefetch_keeps_order_and_reraises_as_itself():
    assert list(checkpoints.prefetch.prefetch(iter(range(50)), depth=2)) == list(range(50))

    class Boom(RuntimeError):
        pass

    def failing():
        yield 1
        raise Boom("source vanished")

    out = []
    with pytest.raises(Boom, match="vanished"):
        for x in checkpoints.prefetch.prefetch(failing()):
            out.append(x)
    assert out == [1]


def test_prefetch_stops_its_thread_when_dropped():
    started = threading.active_count()
    gen = checkpoints.prefetch.prefetch(iter(range(10**6)))
    next(gen)
    gen.close()
    assert threading.active_count() == started
    checkpoints.prefetch.prefetch(iter(range(10)))  # never iterated: no thread was started
    assert threading.active_count() == started


# ------------------------------------------------------------------------------------- progress
def test_progress_bar_shows_tensors_bytes_and_throughput_unless_quiet(hf_model, tmp_path, capsys):
    from checkpoints.progress import progress_bar
    with progress_bar(mininterval=0) as update:
        update.start(3, 3 * 2**20)
        for name in "abc":
            update(name, 2**20)
    err = capsys.readouterr().err
    assert "3/3 tensors" in err and "3.00M/3.00M" in err and "B/s" in err and "100%" in err, err
    src, _, _ = hf_model
    assert main(["convert", str(src), str(tmp_path / "b"), "-q"]) == 0
    assert capsys.readouterr().err == ""
