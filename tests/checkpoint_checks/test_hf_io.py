"""HF checkpoint directories: streaming sharded writer, validated lazy reader, refusals, atomicity."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import hf_reader, hf_writer
from checkpoints.hf_reader import open_hf_checkpoint
from checkpoints.hf_writer import parse_size, write_hf_checkpoint
from checkpoints.source import FileNamed, LazyReader, Located, TensorSource
from converters.errors import ConversionError

CONFIG = {"model_type": "llama", "vocab_size": 11, "architectures": ["LlamaForCausalLM"], "hidden_size": 8}


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    """Durability is checkpoints.atomic's own test; here fsync would only cost time."""
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, dtype in enumerate([torch.float32, torch.bfloat16, torch.float16, torch.float64] * 3):
        out[f"model.layers.{i}.w"] = torch.randn(3 + i, 5, generator=g, dtype=torch.float64).to(dtype)
    out["model.embed_tokens.weight"] = torch.randn(11, 8, generator=g)
    out["lm_head.weight"] = torch.randn(11, 8, generator=g).bfloat16()
    out["model.scalar"] = torch.tensor(2.5)
    out["model.empty"] = torch.zeros(0, 4)
    out["model.ids"] = torch.arange(7)
    out["model.mask"] = torch.tensor([True, False, True])
    return out


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def assert_bit_equal(a: dict, b) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x.contiguous().view(-1).view(torch.uint8) if x.numel() and x.dim() else x,
                           y.contiguous().view(-1).view(torch.uint8) if y.numel() and y.dim() else y), name


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("max_shard_size", [10**12, 400, 150, 1])
def test_roundtrip_at_shard_sizes(tmp_path, max_shard_size):
    tensors = sample_tensors()
    seen = []
    write_hf_checkpoint(tmp_path / "hf", CONFIG, iter(tensors.items()), max_shard_size=max_shard_size,
                        progress=lambda name, size: seen.append((name, size)))
    assert seen == [(n, nbytes(t)) for n, t in tensors.items()]
    reader = open_hf_checkpoint(tmp_path / "hf")
    assert reader.config == CONFIG and reader.generation_config is None and reader.format == "safetensors"
    assert list(reader) == sorted(tensors) and len(reader) == len(tensors)
    for name, t in tensors.items():
        assert reader.shape_of(name) == t.shape and reader.dtype_of(name) == t.dtype
    assert_bit_equal(tensors, {n: reader[n] for n in reader})
    assert_bit_equal(tensors, reader.load_many(list(tensors)))

    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    if max_shard_size == 10**12:
        assert files == ["config.json", "model.safetensors"]
        assert_bit_equal(tensors, load_file(tmp_path / "hf" / "model.safetensors"))
        return
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(nbytes(t) for t in tensors.values())}
    assert list(index["weight_map"]) == sorted(tensors)
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1 and shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert files == sorted(["config.json", "model.safetensors.index.json", *shards])
    # Greedy packing: each shard fits (unless it is one oversized tensor), and the next shard's
    # first tensor would not have fitted into the previous one.
    order = list(tensors)
    contents = [[name for name in order if index["weight_map"][name] == shard] for shard in shards]
    assert [name for shard in contents for name in shard] == order
    for k, names in enumerate(contents):
        size = sum(nbytes(tensors[m]) for m in names)
        assert size <= max_shard_size or len(names) == 1
        if k + 1 < n:
            assert size + nbytes(tensors[contents[k + 1][0]]) > max_shard_size
        assert_bit_equal({m: tensors[m] for m in names}, load_file(tmp_path / "hf" / shards[k]))
        with open(tmp_path / "hf" / shards[k], "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            assert json.loads(f.read(length))["__metadata__"] == {"format": "pt"}


def test_config_generation_config_and_tokenizer_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copied = ["added_tokens.json", "chat_template.jinja", "merges.txt", "special_tokens_map.json", "sp.model",
              "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json"]
    for name in copied + ["config.json", "generation_config.json", "model.safetensors", "notes.txt"]:
        (src / name).write_bytes(f"<{name}>".encode())
    (src / "tokenizer_sub").mkdir()
    gen = {"eos_token_id": [1, 2], "bos_token_id": 0, "do_sample": False}
    write_hf_checkpoint(tmp_path / "hf", {"z": 1, "a": {"y": 2, "b": 3}}, sample_tensors().items(),
                        generation_config=gen, copy_files_from=src)
    out = tmp_path / "hf"
    assert sorted(p.name for p in out.iterdir()) == sorted(copied + ["config.json", "generation_config.json",
                                                                     "model.safetensors"])
    for name in copied:
        assert (out / name).read_bytes() == f"<{name}>".encode()
    assert (out / "config.json").read_text() == '{\n  "a": {\n    "b": 3,\n    "y": 2\n  },\n  "z": 1\n}\n'
    assert json.loads((out / "generation_config.json").read_text()) == gen
    assert open_hf_checkpoint(out).generation_config == gen


def test_output_bytes_deterministic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    for name in ("a", "b"):
        write_hf_checkpoint(tmp_path / name, dict(reversed(list(CONFIG.items()))), sample_tensors().items(),
                            max_shard_size=300, generation_config={"b": 1, "a": 2}, copy_files_from=src)
    a, b = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert len(a) > 4 and a == b


def test_views_and_shared_storage_are_written_as_their_own_values(tmp_path):
    base = torch.randn(64, 32)
    same = torch.randn(4, 4)
    tensors = {"view": base[10:12], "transposed": base[:8, :4].t(), "tied.a": same, "tied.b": same,
               "expanded": torch.ones(1, 3).expand(5, 3)}
    before = {n: t.clone() for n, t in tensors.items()}
    write_hf_checkpoint(tmp_path / "hf", CONFIG, tensors.items())
    reader = open_hf_checkpoint(tmp_path / "hf")
    assert_bit_equal(before, {n: reader[n] for n in reader})
    assert_bit_equal(before, tensors)
    assert (tmp_path / "hf" / "model.safetensors").stat().st_size < 2000  # not base's whole storage


def test_reader_loads_one_tensor_without_touching_others(tmp_path, monkeypatch):
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors().items(), max_shard_size=200)
    reader = open_hf_checkpoint(tmp_path / "hf")
    opened = []
    real = hf_reader.map_tensor
    monkeypatch.setattr(hf_reader, "map_tensor", lambda path, *a, **k: opened.append(Path(path).name) or real(path, *a, **k))
    for name in reader:
        reader.shape_of(name), reader.dtype_of(name)
    assert opened == []  # metadata from the validated headers only
    t = reader["lm_head.weight"]
    assert opened == [reader.file_of("lm_head.weight")]
    assert t.is_contiguous() and t.untyped_storage().nbytes() == nbytes(t)
    assert "lm_head.weight" in reader and "nope" not in reader
    for bad in (reader.__getitem__, reader.shape_of, reader.dtype_of):
        with pytest.raises(KeyError):
            bad("nope")


def test_reshard_streaming_from_a_reader(tmp_path):
    tensors = sample_tensors()
    write_hf_checkpoint(tmp_path / "a", CONFIG, tensors, max_shard_size=150)  # a mapping works too
    reader = open_hf_checkpoint(tmp_path / "a")
    write_hf_checkpoint(tmp_path / "b", reader.config, reader, max_shard_size=10**9)
    again = open_hf_checkpoint(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "model.safetensors"]
    assert_bit_equal(tensors, dict(again.items()))
    edited = again["lm_head.weight"]
    edited.add_(1)  # in-place edits of a returned tensor never reach the file
    assert_bit_equal(tensors, dict(open_hf_checkpoint(tmp_path / "b").items()))


# ----------------------------------------------------------------------------- bin fallback
@pytest.mark.parametrize("legacy", [False, True])
def test_bin_fallback_single(tmp_path, legacy):
    tensors = sample_tensors()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(CONFIG))
    torch.save(tensors, tmp_path / "hf" / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    with open_hf_checkpoint(tmp_path / "hf") as reader:
        assert reader.format == "bin"
        assert {n: reader.shape_of(n) for n in reader} == {n: t.shape for n, t in tensors.items()}
        loaded = {n: reader[n] for n in reader}
    assert_bit_equal(tensors, loaded)
    loaded["lm_head.weight"].add_(1)  # the caller owns its tensor; the mapped file is untouched
    assert_bit_equal(tensors, dict(open_hf_checkpoint(tmp_path / "hf").items()))


def write_bin_shards(root: Path, tensors: dict, n: int = 3) -> dict:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(CONFIG))
    names = list(tensors)
    weight_map = {}
    for k in range(n):
        part = names[k::n]
        file = f"pytorch_model-{k + 1:05d}-of-{n:05d}.bin"
        torch.save({m: tensors[m] for m in part}, root / file)
        weight_map.update({m: file for m in part})
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_bin_fallback_sharded(tmp_path):
    tensors = sample_tensors()
    weight_map = write_bin_shards(tmp_path / "hf", tensors)
    reader = open_hf_checkpoint(tmp_path / "hf")
    assert reader.format == "bin" and {n: reader.file_of(n) for n in reader} == weight_map
    assert_bit_equal(tensors, reader.load_many(list(reader)))


# -------------------------------------------------------------------------------- refusals
def refused(path, *fragments) -> str:
    with pytest.raises(ConversionError) as info:
        open_hf_checkpoint(path)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


@pytest.fixture
def sharded(tmp_path):
    tensors = sample_tensors()
    write_hf_checkpoint(tmp_path / "hf", CONFIG, tensors.items(), max_shard_size=300)
    index_file = tmp_path / "hf" / "model.safetensors.index.json"
    return tmp_path / "hf", tensors, index_file, json.loads(index_file.read_text())


def test_missing_or_corrupt_config(sharded):
    root, _, _, _ = sharded
    (root / "config.json").write_text('{"model_type": "llama",')
    refused(root, "config.json", "not valid JSON")
    (root / "config.json").write_text("[1]")
    refused(root, "config.json", "JSON object")
    (root / "config.json").unlink()
    refused(root, "config.json", "missing")
    refused(root.parent / "absent", "not a directory")


def test_corrupt_generation_config(sharded):
    root, _, _, _ = sharded
    (root / "generation_config.json").write_text("{oops")
    refused(root, "generation_config.json")


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    refused(tmp_path, "no weights")


def test_index_names_missing_shard(sharded):
    root, _, _, index = sharded
    shard = sorted(set(index["weight_map"].values()))[1]
    (root / shard).unlink()
    refused(root, shard, "missing")


def test_tensor_listed_but_absent_from_shard(sharded):
    root, _, index_file, index = sharded
    shard = index["weight_map"]["model.scalar"]
    index["weight_map"]["model.ghost"] = shard
    index_file.write_text(json.dumps(index))
    refused(root, "model.ghost", shard)


def test_tensor_in_two_shards(sharded):
    root, tensors, _, index = sharded
    shard = index["weight_map"]["model.layers.0.w"]
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != shard)
    contents = load_file(root / other)
    save_file({**contents, "model.layers.0.w": tensors["model.layers.0.w"]}, root / other, metadata={"format": "pt"})
    message = refused(root, "model.layers.0.w", "two shards")
    assert shard in message and other in message


def test_tensor_in_shard_but_not_in_index(sharded):
    root, _, index_file, index = sharded
    removed = "model.ids"
    shard = index["weight_map"].pop(removed)
    index_file.write_text(json.dumps(index))
    refused(root, removed, shard)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"metadata": {}}', '{"weight_map": {}}',
                                     '{"weight_map": {"a": "../elsewhere.safetensors"}}'])
def test_corrupt_index(sharded, content):
    root, _, index_file, _ = sharded
    index_file.write_text(content)
    refused(root, "model.safetensors.index.json")


@pytest.mark.parametrize("seed", range(3))
def test_truncated_safetensors_at_random_offsets(tmp_path, seed):
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors().items())
    file = tmp_path / "hf" / "model.safetensors"
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    rng = random.Random(seed)
    cuts = {0, 4, 8, 8 + length // 2, 8 + length, len(data) - 1} | {rng.randrange(len(data)) for _ in range(8)}
    for cut in sorted(cuts):
        file.write_bytes(data[:cut])
        refused(tmp_path / "hf", "model.safetensors", "truncated" if cut >= 8 + length else "")
    file.write_bytes(data)
    assert len(open_hf_checkpoint(tmp_path / "hf")) == len(sample_tensors())


def test_truncated_shard(sharded):
    root, _, _, index = sharded
    shard = sorted(set(index["weight_map"].values()))[-1]
    data = (root / shard).read_bytes()
    (root / shard).write_bytes(data[:-3])
    refused(root, shard, "truncated")


def rewrite_header(file: Path, edit) -> None:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    new = edit(header)
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    raw = raw.ljust(length) if len(raw) <= length else raw
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


@pytest.mark.parametrize("case", ["garbage", "not-object", "bad-dtype", "bad-offsets", "offsets-past-end",
                                  "no-shape", "huge-length"])
def test_corrupt_safetensors_header(tmp_path, case):
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors().items())
    file = tmp_path / "hf" / "model.safetensors"

    def edit(header):
        entry = header["model.ids"]
        if case == "garbage":
            return b"{\"model.ids\": {\"dtype\": \"I64\", \xff\xfe garbage"
        if case == "not-object":
            return b"[1, 2, 3]"
        if case == "bad-dtype":
            entry["dtype"] = "Q7"
        elif case == "bad-offsets":
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][1] + 8]
        elif case == "offsets-past-end":
            size = entry["data_offsets"][1] - entry["data_offsets"][0]
            entry["data_offsets"] = [10**7, 10**7 + size]
        elif case == "no-shape":
            del entry["shape"]
        return header

    if case == "huge-length":
        data = file.read_bytes()
        file.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    else:
        rewrite_header(file, edit)
    message = refused(tmp_path / "hf", "model.safetensors")
    if case not in ("garbage", "not-object", "huge-length"):
        assert "model.ids" in message


def test_corrupt_bin(tmp_path):
    tensors = sample_tensors()
    write_bin_shards(tmp_path / "hf", tensors)
    (tmp_path / "hf" / "pytorch_model-00002-of-00003.bin").write_bytes(b"not a zip file at all")
    refused(tmp_path / "hf", "pytorch_model-00002-of-00003.bin")


def test_bin_tensor_listed_but_absent(tmp_path):
    tensors = sample_tensors()
    write_bin_shards(tmp_path / "hf", tensors)
    index_file = tmp_path / "hf" / "pytorch_model.bin.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.ghost"] = "pytorch_model-00001-of-00003.bin"
    index_file.write_text(json.dumps(index))
    refused(tmp_path / "hf", "model.ghost", "pytorch_model-00001-of-00003.bin")


# -------------------------------------------------------------------------- writer refusals
def test_writer_refusals(tmp_path):
    def attempt(tensors, fragment, **kwargs):
        with pytest.raises(ConversionError, match=fragment):
            write_hf_checkpoint(tmp_path / "hf", kwargs.pop("config", CONFIG), tensors, **kwargs)
        assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == []

    t = torch.zeros(2)
    attempt([("a", t), ("b", t), ("a", t)], "'a'.*twice")
    attempt([("a", t), ("b", [1.0, 2.0])], "'b'")
    attempt([("a", t), "b"], "expected \\(name, tensor\\)")
    attempt([], "empty")
    attempt([("a", t)], "config.json", config={"dtype": torch.float32})
    attempt([("a", t)], "config.json", config={"x": float("nan")})
    attempt([("a", t)], "generation_config.json", generation_config={"x": object()})
    attempt([("a", t)], "max shard size", max_shard_size="lots")
    attempt([("a", t)], "not a directory", copy_files_from=tmp_path / "absent")


def test_overwrite(tmp_path):
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors(1).items(), max_shard_size=200)
    with pytest.raises(ConversionError, match="already exists"):
        write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors(2).items())
    assert_bit_equal(sample_tensors(1), dict(open_hf_checkpoint(tmp_path / "hf").items()))
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors(2).items(), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors"]
    assert_bit_equal(sample_tensors(2), dict(open_hf_checkpoint(tmp_path / "hf").items()))
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- atomicity
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom("source went away"), KeyboardInterrupt()])
@pytest.mark.parametrize("overwrite", [False, True])
def test_exception_from_tensor_stream_leaves_nothing(tmp_path, error, overwrite):
    if overwrite:
        write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors(1).items())
    flushed = []
    real_shard = hf_writer._ShardFile

    def stream():
        for i, item in enumerate(sample_tensors().items()):
            if i == 12:
                assert flushed, "some shards were written before the failure"
                raise error
            yield item

    def spy(path, entries):
        flushed.append(Path(path))
        return real_shard(path, entries)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_writer, "_ShardFile", spy)
        with pytest.raises(type(error)):
            write_hf_checkpoint(tmp_path / "hf", CONFIG, stream(), max_shard_size=100, overwrite=overwrite)
    assert flushed and not any(f.exists() for f in flushed)
    assert leftovers(tmp_path) == []
    if overwrite:
        assert_bit_equal(sample_tensors(1), dict(open_hf_checkpoint(tmp_path / "hf").items()))
    else:
        assert not (tmp_path / "hf").exists()


# --------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("text,value", [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30),
                                        ("1.5GB", 1_500_000_000), ("123", 123), ("10 kb", 10_000), ("7KiB", 7168),
                                        ("3g", 3 * 10**9), ("1TB", 10**12), ("64B", 64), (4096, 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GB", "5XB", "-1GB", "0", "1e9", "five", True, 0])
def test_parse_size_refuses(text):
    with pytest.raises(ConversionError):
        parse_size(text)


def test_is_hf_checkpoint(tmp_path, sharded):
    root, _, _, _ = sharded
    assert hf_reader.is_hf_checkpoint(root)
    assert not hf_reader.is_hf_checkpoint(tmp_path / "absent")


# ------------------------------------------------------------------------------ planned writing
def plan_of(tensors: dict) -> list:
    return [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]


@pytest.mark.parametrize("max_shard_size", [10**12, 300, 1])
def test_planned_writer_gives_the_same_bytes_in_any_arrival_order(tmp_path, max_shard_size):
    tensors = sample_tensors()
    write_hf_checkpoint(tmp_path / "held", CONFIG, tensors.items(), max_shard_size=max_shard_size)
    write_hf_checkpoint(tmp_path / "planned", CONFIG, tensors.items(), max_shard_size=max_shard_size,
                        plan=plan_of(tensors))
    write_hf_checkpoint(tmp_path / "reversed", CONFIG, reversed(list(tensors.items())), max_shard_size=max_shard_size,
                        plan=plan_of(tensors))
    assert all_bytes(tmp_path / "held") == all_bytes(tmp_path / "planned") == all_bytes(tmp_path / "reversed")
    assert_bit_equal(tensors, dict(open_hf_checkpoint(tmp_path / "planned").items()))
    for file in (tmp_path / "planned").glob("*.safetensors"):
        assert_bit_equal(load_file(file), {n: t for n, t in tensors.items()
                                           if n in load_file(file)})  # safetensors itself reads them


def test_planned_writer_holds_no_shard_in_memory(tmp_path):
    import weakref
    tensors = sample_tensors()
    alive = []

    def stream():
        for name, t in tensors.items():
            assert sum(ref() is not None for ref in alive) <= 1
            t = t.clone()
            alive.append(weakref.ref(t))
            yield name, t

    write_hf_checkpoint(tmp_path / "hf", CONFIG, stream(), max_shard_size=10**12, plan=plan_of(tensors))
    assert_bit_equal(tensors, dict(open_hf_checkpoint(tmp_path / "hf").items()))


@pytest.mark.parametrize("case", ["unplanned", "missing", "dtype", "shape", "twice"])
def test_planned_writer_refusals(tmp_path, case):
    tensors = sample_tensors()
    plan = plan_of(tensors)
    items = list(tensors.items())
    if case == "unplanned":
        items.append(("extra.weight", torch.zeros(2)))
    elif case == "missing":
        items.pop(3)
    elif case == "dtype":
        items[0] = (items[0][0], items[0][1].double())
    elif case == "shape":
        items[0] = (items[0][0], items[0][1][:1])
    elif case == "twice":
        items.append(items[0])
    with pytest.raises(ConversionError):
        write_hf_checkpoint(tmp_path / "hf", CONFIG, items, max_shard_size=200, plan=plan)
    assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == []


def test_mapped_tensors_own_exactly_their_bytes(tmp_path):
    tensors = sample_tensors()
    write_hf_checkpoint(tmp_path / "hf", CONFIG, tensors.items())
    reader = open_hf_checkpoint(tmp_path / "hf")
    for name in reader:
        t = reader[name]
        assert t.storage_offset() == 0 and t.untyped_storage().nbytes() == nbytes(t), name


def test_the_reader_is_a_declared_tensor_source(tmp_path):
    write_hf_checkpoint(tmp_path / "hf", CONFIG, sample_tensors().items(), max_shard_size=200)
    with open_hf_checkpoint(tmp_path / "hf") as reader:
        assert isinstance(reader, LazyReader) and all(isinstance(reader, p) for p in (TensorSource, Located, FileNamed))
