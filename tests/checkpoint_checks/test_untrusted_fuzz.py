"""Generated hostile input: Hypothesis mutates safetensors headers, config.json and DCP metadata. Each
mutant is either refused with the project's one refusal type (ConversionError / CheckpointError /
ConfigError, which the CLI turns into one line and exit 2) or accepted, and what is accepted obeys the
laws the checks promise (header ranges tile the file, config values typed, finite and bounded). No other
exception escapes, no payload runs (marker file), nothing takes unbounded time."""
from __future__ import annotations

import json
import math
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from checkpoints import CheckpointError, open_checkpoint
from checkpoints.dcp_metadata import load_metadata
from checkpoints.hf_reader import SAFETENSORS_DTYPES, open_hf_checkpoint, read_safetensors_header
from checkpoints.pipeline import convert
from checkpoints.plan import hf_import
from converters.config_values import INTEGER_KEYS, NUMBER_KEYS, POSITIVE_KEYS
from converters.errors import ConversionError
from native.schema import ConfigError

from convert_cases import hf_config, hf_tensors, llama_config, write_hf

REFUSALS = (ConversionError, CheckpointError, ConfigError)
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cfg = llama_config(layers=2)
    write_hf(root / "hf", cfg, hf_tensors(cfg))
    (root / "hf" / "tokenizer.json").write_text("{}")
    convert(root / "hf", root / "native")
    return root


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                 st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                           max_leaves=6)


# --------------------------------------------------------------------------------- headers
def split(file: Path) -> tuple[dict, bytes]:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


header_edits = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(["dtype", "shape", "data_offsets"]), json_values),
    st.tuples(st.just("dim"), st.integers(0, 1), st.one_of(json_scalars, st.integers(0, 2**64))),
    st.tuples(st.just("offset"), st.integers(0, 1), st.integers(-8, 2**40)),
    st.tuples(st.just("drop"), st.sampled_from(["dtype", "shape", "data_offsets"]), st.none()),
    st.tuples(st.just("extra"), st.text(max_size=5), json_values),
    st.tuples(st.just("duplicate"), st.none(), st.none()),
    st.tuples(st.just("swap"), st.none(), st.none()),
    st.tuples(st.just("truncate"), st.integers(0, 2**14), st.none()),
    st.tuples(st.just("metadata"), st.none(), json_values),
    st.tuples(st.just("nest"), st.integers(1, 5000), st.none()),
)


def mutate(header: dict, data: bytes, edits, pick: int) -> bytes:
    names = sorted(n for n in header if n != "__metadata__")
    name = names[pick % len(names)]
    entry = header[name]
    text_suffix = ""
    for kind, key, value in edits:
        if kind == "field":
            entry[key] = value
        elif kind == "dim" and isinstance(entry.get("shape"), list) and entry["shape"]:
            entry["shape"][key % len(entry["shape"])] = value
        elif kind == "offset" and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2:
            entry["data_offsets"][key] = value
        elif kind == "drop":
            entry.pop(key, None)
        elif kind == "extra":
            entry[key] = value
        elif kind == "duplicate":
            text_suffix = f', {json.dumps(name)}: {json.dumps(header[names[(pick + 1) % len(names)]])}'
        elif kind == "swap":
            other = header[names[(pick + 1) % len(names)]]
            entry["data_offsets"], other["data_offsets"] = other.get("data_offsets"), entry.get("data_offsets")
        elif kind == "truncate":
            data = data[:max(0, len(data) - key)]
        elif kind == "metadata":
            header["__metadata__"] = value
        elif kind == "nest":
            entry["deep"] = None
            text_suffix = f', "nest": {"[" * key}{"]" * key}'
    text = json.dumps(header, allow_nan=True)
    if text_suffix:
        text = text[:-1] + text_suffix + "}"
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


@FAST
@given(edits=st.lists(header_edits, min_size=1, max_size=3), pick=st.integers(0, 100))
def test_mutated_safetensors_headers(base, tmp_path_factory, edits, pick):
    header, data = split(base / "hf" / "model.safetensors")
    root = tmp_path_factory.mktemp("h")
    shutil.copy(base / "hf" / "config.json", root / "config.json")
    file = root / "model.safetensors"
    file.write_bytes(mutate(header, data, edits, pick))
    try:
        parsed = read_safetensors_header(file)
    except ConversionError as exc:
        assert str(file) in str(exc)
        event("refused")
        return
    event("accepted")
    size = file.stat().st_size
    (length,) = struct.unpack("<Q", file.read_bytes()[:8])
    position = 8 + length
    for name, (dtype, shape, begin, end) in sorted(parsed.items(), key=lambda item: item[1][2:]):
        assert all(type(d) is int and d >= 0 for d in shape), (name, shape)
        assert dtype in SAFETENSORS_DTYPES.values()
        assert begin == position and end - begin == math.prod(shape) * dtype.itemsize, name
        position = end
    assert position == size
    with open_hf_checkpoint(root) as reader:  # every accepted tensor reads
        for name in reader:
            assert tuple(reader[name].shape) == tuple(reader.shape_of(name))


# ---------------------------------------------------------------------------------- configs
config_keys = st.sampled_from(sorted({*INTEGER_KEYS, *NUMBER_KEYS, "model_type", "rope_scaling", "rope_parameters",
                                      "tie_word_embeddings", "head_dim", "bos_token_id", "architectures"}))


@FAST
@given(changes=st.lists(st.tuples(config_keys, st.one_of(json_values, st.integers(0, 2**41))), min_size=1, max_size=3))
def test_mutated_configs(base, tmp_path_factory, changes):
    root = tmp_path_factory.mktemp("c")
    shutil.copy(base / "hf" / "model.safetensors", root)
    config = hf_config(llama_config(layers=2))
    for key, value in changes:
        config[key] = value
    (root / "config.json").write_text(json.dumps(config, allow_nan=True))
    try:
        with open_hf_checkpoint(root) as reader:
            plan = hf_import(reader)
    except REFUSALS as exc:
        assert "config.json" in str(exc) or str(root) in str(exc), str(exc)
        event("refused")
        return
    event("accepted")
    assert plan.cfg.num_layers <= INTEGER_KEYS["num_hidden_layers"]
    for key, value in config.items():
        assert not (isinstance(value, float) and not math.isfinite(value)), key
        if key in INTEGER_KEYS and value is not None:
            assert type(value) is int and value <= INTEGER_KEYS[key] and (value > 0 or key not in POSITIVE_KEYS), key
        if key in NUMBER_KEYS and value is not None:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), key


# -------------------------------------------------------------------------------- DCP metadata
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@FAST
@given(splices=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), st.binary(max_size=4)), min_size=1,
                        max_size=4), payload=st.booleans())
def test_mutated_dcp_metadata(base, tmp_path_factory, splices, payload):
    root = tmp_path_factory.mktemp("m")
    shutil.copytree(base / "native", root / "native")
    marker = root / "payload-ran"
    data = bytearray((root / "native" / ".metadata").read_bytes())
    for position, cut, insert in splices:
        k = position % (len(data) + 1)
        data[k:k + cut] = insert
    if payload:
        evil = pickle.dumps(Payload(marker))
        k = splices[0][0] % (len(data) + 1)
        data[k:k] = evil[2:-1]  # the payload's opcodes spliced into the stream
    (root / "native" / ".metadata").write_bytes(bytes(data))
    try:
        load_metadata(bytes(data), "m", CheckpointError)
        with open_checkpoint(root / "native") as reader:
            for name in reader:
                assert reader[name].shape == reader.shape_of(name)
        event("accepted")
    except REFUSALS:
        event("refused")
    assert not marker.exists(), "the payload ran"
    assert torch.get_num_threads() >= 1
