"""Untrusted checkpoints (people convert what they downloaded): no code runs, nothing is read from outside
SRC, no special file is opened, a checkpoint replaced while it is read is read as one version, the input is
never destroyed, and every bad input or destination is one line and exit 2 with nothing written.

Payloads write a marker file when they run; every test here asserts the marker is absent."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from checkpoints import open_checkpoint
from checkpoints.cli import main
from checkpoints.dcp_metadata import MetadataUnpickler
from checkpoints.hf_reader import open_hf_checkpoint
from checkpoints.hf_writer import write_hf_checkpoint
from checkpoints.pipeline import convert

from convert_cases import hf_tensors, llama_config, read_hf, refused, snapshot, write_hf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch):
    monkeypatch.setenv("CONVCHECK_FSYNC", "0")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A sharded HF checkpoint with a tokenizer file, its native conversion in one stage and in
    two, and the same model with other weights (the "new version" of a replaced checkpoint)."""
    root = tmp_path_factory.mktemp("untrusted")
    cfg = llama_config(layers=2)
    write_hf(root / "hf", cfg, hf_tensors(cfg), shard=20_000)
    (root / "hf" / "tokenizer.json").write_text('{"version": "1.0"}')
    write_hf(root / "hf-new", cfg, hf_tensors(cfg, seed=1), shard=20_000)
    convert(root / "hf", root / "native")
    convert(root / "hf", root / "staged", pipeline_stages=2)
    convert(root / "hf-new", root / "native-new")
    return root


@pytest.fixture
def work(good, tmp_path):
    for name in ("hf", "hf-new", "native", "staged", "native-new"):
        shutil.copytree(good / name, tmp_path / name, symlinks=True)
    (tmp_path / "secret.txt").write_text("PRIVATE KEY")
    return tmp_path


MARKER_NAME = "payload-ran"


class Payload:
    """Unpickling it writes the marker (what a malicious pickle would do instead: run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def no_payload(work: Path) -> None:
    assert not (work / MARKER_NAME).exists(), "the payload ran"


def dcp_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.distcp"))


def edit_metadata(file: Path, edit) -> None:
    with open(file, "rb") as f:
        metadata = MetadataUnpickler(f).load()
    edit(metadata)
    file.write_bytes(pickle.dumps(metadata))


@contextmanager
def within(seconds: int):
    """Fail instead of hanging (SIGALRM in the main thread)."""
    def hung(signum, frame):
        raise AssertionError(f"still running after {seconds} s: it hangs")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------ code execution
@pytest.mark.parametrize("where", [".metadata", "pp1/.metadata"])
@pytest.mark.parametrize("form", ["bare", "then-garbage", "inside-valid-metadata"])
def test_dcp_metadata_payload_never_runs(work, capsys, where, form):
    src = work / ("native" if where == ".metadata" else "staged")
    file = src / where
    payload = Payload(work / MARKER_NAME)
    if form == "bare":
        file.write_bytes(pickle.dumps(payload))
    elif form == "then-garbage":  # the full unpickler runs it, then reports the file corrupt
        file.write_bytes(pickle.dumps(payload)[:-1] + b"\xffgarbage")
    else:
        edit_metadata(file, lambda m: setattr(m, "planner_data", payload))
    err = refused(src, work / "out", capsys, str(file), "DCP metadata")
    assert "builtins.exec" in err
    no_payload(work)


def test_the_full_unpickler_would_have_run_it(work):
    """The payload is real: plain pickle runs it (so the test above proves the refusal)."""
    pickle.loads(pickle.dumps(Payload(work / MARKER_NAME)))
    assert (work / MARKER_NAME).exists()


def test_bin_and_distcp_payloads_never_run(work, capsys):
    bin_src = work / "bin"
    bin_src.mkdir()
    shutil.copy(work / "hf" / "config.json", bin_src)
    torch.save({"model.embed_tokens.weight": Payload(work / MARKER_NAME)}, bin_src / "pytorch_model.bin")
    refused(bin_src, work / "out", capsys, "pytorch_model.bin")
    data = max(dcp_files(work / "native"), key=lambda p: p.stat().st_size)
    size = data.stat().st_size
    torch.save(Payload(work / MARKER_NAME), data)
    with open(data, "ab") as f:  # same length as the record says, so the data is really read
        f.write(b"\0" * max(0, size - data.stat().st_size))
    refused(work / "native", work / "out", capsys, "native")
    no_payload(work)


# ------------------------------------------------------------------- nothing from outside SRC
@pytest.mark.parametrize("direction", ["hf", "native"])
def test_tokenizer_symlink_outside_src_is_refused_unless_followed(work, capsys, direction):
    src = work / direction
    link = src / ("tokenizer.json" if direction == "hf" else "hf_files/tokenizer.json")
    link.unlink()
    link.symlink_to(work / "secret.txt")
    refused(src, work / "out", capsys, str(link), "outside", "--follow-symlinks")
    assert main(["convert", str(src), str(work / "out"), "-q", "--follow-symlinks"]) == 0
    copied = work / "out" / ("hf_files/tokenizer.json" if direction == "hf" else "tokenizer.json")
    assert copied.read_text() == "PRIVATE KEY"  # read only because the user asked for it


@pytest.mark.parametrize("target", ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"])
def test_any_hf_file_linking_outside_is_refused(work, capsys, target):
    outside = work / "elsewhere"
    outside.mkdir()
    shutil.move(work / "hf" / target, outside / target)
    (work / "hf" / target).symlink_to(outside / target)
    refused(work / "hf", work / "out", capsys, target, "outside")


def test_symlinks_inside_src_are_followed(work, capsys):
    inner = work / "hf" / "blobs"
    inner.mkdir()
    for file in ["model-00001-of-00002.safetensors", "tokenizer.json"]:
        shutil.move(work / "hf" / file, inner / file)
        (work / "hf" / file).symlink_to(Path("blobs") / file)
    assert main(["convert", str(work / "hf"), str(work / "out"), "-q"]) == 0
    assert (work / "out" / "hf_files" / "tokenizer.json").read_text() == '{"version": "1.0"}'


@pytest.mark.parametrize("path", ["../native-new/{name}", "/{abs}/{name}", "sub/{name}", ".metadata"])
def test_dcp_storage_path_leading_outside_is_refused(work, capsys, path):
    other = dcp_files(work / "native-new")[0]

    def edit(metadata):
        index, info = next(iter(metadata.storage_data.items()))
        rel = path.format(name=other.name, abs=str(other.parent).lstrip("/"))
        metadata.storage_data[index] = dataclasses.replace(info, relative_path=rel)

    edit_metadata(work / "native" / ".metadata", edit)
    refused(work / "native", work / "out", capsys, "not a data file", "refused")


def test_dcp_data_file_linking_outside_is_refused(work, capsys):
    data = dcp_files(work / "native")[0]
    data.unlink()
    data.symlink_to(work / "native-new" / data.name)
    refused(work / "native", work / "out", capsys, data.name, "outside")


def test_index_entry_leading_outside_is_refused(work, capsys):
    index = json.loads((work / "hf" / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../hf-new/" + index["weight_map"][name]
    (work / "hf" / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(work / "hf", work / "out", capsys, "weight_map")


# ---------------------------------------------------------------------------- special files
@pytest.mark.parametrize("target", ["config.json", "tokenizer.json", "model-00002-of-00002.safetensors",
                                    "generation_config.json"])
def test_fifo_is_refused_without_blocking(work, capsys, target):
    file = work / "hf" / target
    if file.exists():
        file.unlink()
    os.mkfifo(file)
    with within(60):
        refused(work / "hf", work / "out", capsys, target, "FIFO")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_device_and_socket_are_refused(work, capsys):
    os.mknod(work / "hf" / "tokenizer.model", 0o600 | 0o020000, os.makedev(1, 3))  # a character device
    refused(work / "hf", work / "out", capsys, "tokenizer.model", "character device")
    (work / "hf" / "tokenizer.model").unlink()
    import socket
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(work / "native" / "hf_files" / "vocab.json"))
        refused(work / "native", work / "out", capsys, "vocab.json", "socket")
    finally:
        sock.close()


# ------------------------------------------------------------ one version of a replaced source
def test_readers_keep_reading_the_version_they_opened(work):
    old_hf = {n: t.clone() for n, t in open_hf_checkpoint(work / "hf").items()}
    old_native = {n: t.clone() for n, t in open_checkpoint(work / "native").items()}
    hf, nat = open_hf_checkpoint(work / "hf"), open_checkpoint(work / "native")
    new_hf = read_hf(work / "hf-new")
    write_hf_checkpoint(work / "hf", hf.config, new_hf, max_shard_size=20_000, overwrite=True)
    shutil.rmtree(work / "native")
    shutil.copytree(work / "native-new", work / "native")
    for name in hf:
        assert torch.equal(hf[name], old_hf[name]), name
    for name in nat:
        assert torch.equal(nat[name], old_native[name]), name
    hf.close(), nat.close()


@pytest.mark.parametrize("direction", ["hf", "native"])
def test_conversion_of_a_source_replaced_midway_is_the_version_opened(work, monkeypatch, direction):
    """``--overwrite`` of SRC by another run while it is converted (the online/RL pattern)."""
    import checkpoints.pipeline as pipeline
    reference = work / "reference"
    assert convert(work / direction, reference).tensors > 0
    new = work / ("hf-new" if direction == "hf" else "native-new")
    real = pipeline.prefetch

    def replaced_then_prefetch(items, depth=1):
        shutil.rmtree(work / direction)  # the directory the reader opened is gone: its files are held
        shutil.copytree(new, work / direction)
        return real(items, depth)

    monkeypatch.setattr(pipeline, "prefetch", replaced_then_prefetch)
    convert(work / direction, work / "out")
    assert snapshot(work / "out") == snapshot(reference)


# -------------------------------------------------------------------- SRC and DST by identity
def test_overwrite_replaces_only_a_checkpoint_or_an_empty_folder(work, capsys):
    photos = work / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_text("not a checkpoint")
    refused(work / "hf", photos, capsys, "holds no HF or native checkpoint", "--force-overwrite", extra=["--overwrite"])
    assert main(["convert", str(work / "hf"), str(photos), "-q", "--force-overwrite"]) == 0
    assert not (photos / "holiday.jpg").exists()
    empty = work / "empty"
    empty.mkdir()
    assert main(["convert", str(work / "hf"), str(empty), "-q", "--overwrite"]) == 0
    assert main(["convert", str(work / "hf"), str(work / "native"), "-q", "--overwrite"]) == 0


def test_dst_that_is_src_by_another_path(work, capsys):
    alias = work / "alias"
    alias.symlink_to(work / "native")
    before = snapshot(work / "native")
    refused(work / "native", alias, capsys, "must not be inside the input", extra=["--overwrite"])
    refused(work / "native", work / "native" / ".." / "native", capsys, "must not be inside the input",
            extra=["--overwrite"])
    assert snapshot(work / "native") == before


# --------------------------------------------------------------------- invalid input accepted
def rewrite_header(file: Path, edit) -> None:
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    raw = edit(data[8:8 + length].decode())
    raw = raw.encode() if isinstance(raw, str) else raw
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def shard(work: Path, k: int = 0) -> Path:
    return sorted((work / "hf").glob("model-*.safetensors"))[k]


def test_overlapping_data_ranges(work, capsys):
    file = shard(work)

    def edit(text):
        header = json.loads(text)
        names = [n for n in header if n != "__metadata__" and header[n]["dtype"] == "BF16"
                 and header[n]["shape"] == [32, 32]]
        a, b = names[:2]
        header[b]["data_offsets"] = header[a]["data_offsets"]
        return json.dumps(header)

    rewrite_header(file, edit)
    refused(work / "hf", work / "out", capsys, file.name, "overlap")


def test_duplicate_tensor_name_in_header(work, capsys):
    file = shard(work)

    def edit(text):
        header = json.loads(text)
        name = next(n for n in header if n != "__metadata__")
        entry = json.dumps(header[name])
        return text.rstrip()[:-1] + f', "{name}": {entry}}}'

    rewrite_header(file, edit)
    refused(work / "hf", work / "out", capsys, file.name, "appears twice")


@pytest.mark.parametrize("dim", ["32.0", '"32"', "true", "3.2e1", "-32"])
def test_non_integer_dims(work, capsys, dim):
    file = shard(work)

    def edit(text):
        header = json.loads(text)
        name = next(n for n in header if n != "__metadata__" and header[n]["shape"][:1] == [32])
        entry = header[name]
        return json.dumps(header).replace(json.dumps(entry), json.dumps(entry).replace("[32", f"[{dim}", 1), 1)

    rewrite_header(file, edit)
    refused(work / "hf", work / "out", capsys, file.name, "shape")


@pytest.mark.parametrize("key,text", [
    ("rope_theta", "Infinity"), ("rms_norm_eps", "NaN"), ("rope_theta", "1e999"), ("num_hidden_layers", "true"),
    ("rms_norm_eps", "false"), ("hidden_size", "32.0"), ("vocab_size", "-Infinity"), ("num_hidden_layers", "1000000"),
    ("hidden_size", "1099511627776"), ("intermediate_size", "[48]"),
])
def test_bad_config_values(work, capsys, key, text):
    config = json.loads((work / "hf" / "config.json").read_text())
    config[key] = "@@"
    (work / "hf" / "config.json").write_text(json.dumps(config).replace('"@@"', text))
    with within(30):
        refused(work / "hf", work / "out", capsys, "config.json", key)


def test_fp8_block_size_bounded_before_allocation(work, capsys):
    config = json.loads((work / "hf" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 2**40]}
    (work / "hf" / "config.json").write_text(json.dumps(config))
    refused(work / "hf", work / "out", capsys, "config.json", "weight_block_size")


def test_nan_in_generation_config(work, capsys):
    (work / "hf" / "generation_config.json").write_text('{"temperature": NaN, "bos_token_id": 1}')
    refused(work / "hf", work / "out", capsys, "generation_config.json", "NaN")


def test_native_config_with_a_million_layers(work, capsys):
    config = json.loads((work / "native" / "config.json").read_text())
    config["decoder"]["pattern"] = [0] * 1_000_000
    (work / "native" / "config.json").write_text(json.dumps(config))
    with within(60):
        refused(work / "native", work / "out", capsys, "config.json", "layers")


# ------------------------------------------------------------------ one line, never a traceback
@pytest.mark.parametrize("where", ["config.json", "model.safetensors.index.json", "header"])
def test_deeply_nested_json(work, capsys, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "header":
        rewrite_header(shard(work), lambda text: text.rstrip()[:-1] + f', "deep": {deep}}}')
        fragment = shard(work).name
    else:
        data = json.loads((work / "hf" / where).read_text())
        (work / "hf" / where).write_text(json.dumps(data)[:-1] + f', "deep": {deep}}}')
        fragment = where
    refused(work / "hf", work / "out", capsys, fragment, "nested")


def test_dims_whose_byte_size_overflows(work, capsys):
    file = shard(work)

    def edit(text):
        header = json.loads(text)
        name = next(n for n in header if n != "__metadata__")
        header[name]["shape"] = [2**62, 2**62, 2**62]
        return json.dumps(header)

    rewrite_header(file, edit)
    refused(work / "hf", work / "out", capsys, file.name)


def test_bad_destinations(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    (work / "a-file").write_text("x")
    refused(work / "hf", work / "a-file" / "out", capsys, "a-file")
    monkeypatch.chdir(work / "hf-new")
    for dst in (f"{work}/..", ".", "..", f"{work}/out/.."):
        assert main(["convert", str(work / "hf"), dst, "-q", "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("convcheck: error:") and "not a usable destination" in err and "\n" not in err, err
    refused(work / "hf", work / ("x" * 250), capsys, "too long")
    assert not list(work.glob(".x*"))


# -------------------------------------------------------------- destinations on other mounts
_NAMESPACE = """
import json, os, subprocess, sys
work = sys.argv[1]
def run(*args):
    r = subprocess.run([sys.executable, "-m", "checkpoints.cli", "convert", *args, "-q"], capture_output=True,
                       text=True, env={**os.environ, "CONVCHECK_FSYNC": "0"})
    return {"rc": r.returncode, "err": r.stderr.strip()}
def mount(*args):
    subprocess.run(["mount", *args], check=True)
out = {}
hf, nat = f"{work}/hf", f"{work}/native"
os.makedirs(f"{work}/bind")
mount("--bind", nat, f"{work}/bind")
out["bind-is-src"] = run(nat, f"{work}/bind", "--overwrite")
out["bind-inside-src"] = run(nat, f"{work}/bind/sub")
mount("--bind", work, f"{work}/bind")
out["dst-contains-src-by-bind"] = run(nat, f"{work}/bind", "--force-overwrite")
os.makedirs(f"{work}/ro")
mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", f"{work}/ro")
out["read-only"] = run(hf, f"{work}/ro/out")
os.makedirs(f"{work}/mnt")
mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", f"{work}/mnt")
out["mount-point"] = run(hf, f"{work}/mnt", "--force-overwrite")
for name, src, size in [("full-hf-native", hf, "16k"), ("full-native-hf", nat, "16k"),
                        ("full-tokenizer", hf, sys.argv[2])]:
    os.makedirs(f"{work}/{name}")
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", f"{work}/{name}")
    out[name] = run(src, f"{work}/{name}/out")
    out[name]["left"] = sorted(os.listdir(f"{work}/{name}"))
print(json.dumps(out))
"""


def test_destinations_on_other_mounts(work):
    """Bind mounts, a read-only file system, a mount point and full disks, in a private mount
    namespace (``unshare -m``): every one exit 2, one line, nothing left, the input intact."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m (a private mount namespace) to mount file systems")
    (work / "hf" / "tokenizer.json").write_text(json.dumps({"vocab": "x" * 40_000}))
    pages = sum(-(-p.stat().st_size // 4096) for p in (work / "native").rglob("*")
                if p.is_file() and "hf_files" not in p.parts)
    fits_weights_not_tokenizer = f"{(pages + 4) * 4}k"  # the weights need `pages`, the tokenizer 10 more
    native_before, hf_before = snapshot(work / "native"), snapshot(work / "hf")
    result = subprocess.run(["unshare", "-m", sys.executable, "-c", _NAMESPACE, str(work), fits_weights_not_tokenizer],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = {"bind-is-src": "must not be inside the input", "bind-inside-src": "must not be inside the input",
                "dst-contains-src-by-bind": "must not contain the input", "read-only": "Read-only file system",
                "mount-point": "mount point", "full-hf-native": "No space left", "full-native-hf": "No space left",
                "full-tokenizer": "No space left"}
    for case, fragment in expected.items():
        rc, err = out[case]["rc"], out[case]["err"]
        assert rc == 2 and err.startswith("convcheck: error:") and "\n" not in err, (case, err)
        assert fragment in err and "terminate called" not in err, (case, err)
        assert out[case].get("left", []) == [], (case, out[case])
    assert snapshot(work / "native") == native_before and snapshot(work / "hf") == hf_before
