"""Native checkpoint format: exact round trips, stage folders, the lazy reader, atomic and streaming
writes. (Refusals of damaged checkpoints: test_native_reader_refusals.py; kernel page copies:
test_pages.py.)"""
from __future__ import annotations

import json

import pytest
import torch

import checkpoints
import native
from checkpoints import CheckpointError, native_format, native_reader, native_writer
from checkpoints.source import LazyReader, TensorSource
from native import layout
from native_checkpoint_cases import _no_fsync, assert_same_state, leftovers, random_state, tiny_config, tree_bytes  # noqa: F401


# ---------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("stages", [1, 2, 3, 4])
def test_roundtrip_exact(tmp_path, dtype, stages):
    cfg = tiny_config(num_layers=4)
    state = random_state(cfg, dtype)
    dst = tmp_path / "ckpt"
    assert checkpoints.save_checkpoint(dst, cfg, state, pipeline_stages=stages) == dst
    loaded_cfg, loaded = checkpoints.load_checkpoint(dst)
    assert loaded_cfg == cfg
    assert_same_state(state, loaded)
    if stages == 1:
        assert (dst / ".metadata").is_file() and not (dst / "pp0").exists()
    else:
        assert sorted(p.name for p in dst.iterdir() if p.is_dir()) == [f"pp{k}" for k in range(stages)]
    assert leftovers(tmp_path) == []


def test_load_model_computes_what_the_saved_state_computes(tmp_path):
    cfg = tiny_config(moe=True)
    state = native.random_state(cfg, 3)
    checkpoints.save_checkpoint(tmp_path / "ckpt", cfg, state)
    loaded = checkpoints.load_model(tmp_path / "ckpt")
    assert loaded.cfg == cfg
    reference = native.NativeModel(cfg)
    reference.load_state_dict(state)
    ids = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(ids), reference(ids))
    assert checkpoints.load_model(tmp_path / "ckpt", dtype=torch.float64)(ids).dtype == torch.float64


def test_stage_split_and_manifests(tmp_path):
    cfg = tiny_config(num_layers=5)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, random_state(cfg), pipeline_stages=3)
    manifests = [json.loads((tmp_path / "c" / f"pp{k}" / "stage.json").read_text()) for k in range(3)]
    assert [m["layers"] for m in manifests] == [[0, 2], [2, 4], [4, 5]]
    reader = checkpoints.open_checkpoint(tmp_path / "c")
    assert reader.stage_of("embedding.weight") == "pp0"
    assert reader.stage_of("layers.3.attn.qkv.weight") == "pp1"
    assert reader.stage_of("final_norm.weight") == reader.stage_of("output.weight") == "pp2"


def test_heterogeneous_tied_config_roundtrip(tmp_path):
    cfg = tiny_config(num_layers=3, tied=True, moe=True)
    state = random_state(cfg, torch.bfloat16)
    assert "output.weight" not in state and "layers.1.mlp.experts.fc1" in state
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state, pipeline_stages=2)
    loaded_cfg, loaded = checkpoints.load_checkpoint(tmp_path / "c")
    assert loaded_cfg == cfg
    assert_same_state(state, loaded)


def test_views_saved_as_their_own_values_and_inputs_untouched(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    big = torch.randn(4, *state["embedding.weight"].shape)
    state["embedding.weight"] = big[2]  # a view into a 4x larger storage
    state["layers.0.attn.o.weight"] = state["layers.0.attn.o.weight"].t().contiguous().t()  # non-contiguous
    before = {n: t.clone() for n, t in state.items()}
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state)
    _, loaded = checkpoints.load_checkpoint(tmp_path / "c")
    assert_same_state(before, loaded)
    assert_same_state(before, state)
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert (tmp_path / "c" / "__0_0.distcp").stat().st_size < total * 1.5  # not the view's whole storage


def test_output_bytes_deterministic(tmp_path):
    cfg = tiny_config(num_layers=3)
    state = random_state(cfg)
    for name in ("a", "b"):
        checkpoints.save_checkpoint(tmp_path / name, cfg, state, pipeline_stages=2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert str(tmp_path) not in (tmp_path / "a" / "pp0" / ".metadata").read_bytes().decode("latin-1")


# ----------------------------------------------------------------------------------- lazy reader
def test_lazy_reader_mapping(tmp_path, monkeypatch):
    cfg = tiny_config(num_layers=3)
    state = random_state(cfg, torch.float16)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state, pipeline_stages=3)
    reader = checkpoints.open_checkpoint(tmp_path / "c")
    assert isinstance(reader, checkpoints.NativeCheckpointReader)
    assert reader.config == cfg
    assert list(reader) == list(reader.keys()) == list(layout.state_shapes(cfg))
    assert len(reader) == len(state) and "embedding.weight" in reader and "nope" not in reader

    def no_data(*args, **kwargs):
        raise AssertionError("metadata queries must not load tensor data")

    monkeypatch.setattr(native_reader.dcp, "load", no_data)
    for name, tensor in state.items():
        assert reader.shape_of(name) == tensor.shape and reader.dtype_of(name) == tensor.dtype
    monkeypatch.undo()

    assert torch.equal(reader["layers.1.mlp.fc1.weight"], state["layers.1.mlp.fc1.weight"])
    some = ["output.weight", "layers.0.attn.qkv.weight", "embedding.weight", "layers.2.attn.q_bias"]
    many = reader.load_many(some)
    assert list(many) == some and all(torch.equal(many[n], state[n]) for n in some)
    a, b = reader["embedding.weight"], reader["embedding.weight"]
    assert a.data_ptr() != b.data_ptr()  # each load is a fresh tensor the caller owns
    for bad in (reader.__getitem__, reader.shape_of, reader.dtype_of):
        with pytest.raises(KeyError):
            bad("layers.9.attn.qkv.weight")
    assert dict(reader.items()).keys() == state.keys()


def test_save_from_lazy_reader(tmp_path):
    cfg = tiny_config(num_layers=4)
    state = random_state(cfg, torch.bfloat16)
    checkpoints.save_checkpoint(tmp_path / "a", cfg, state, pipeline_stages=4)
    checkpoints.save_checkpoint(tmp_path / "b", cfg, checkpoints.open_checkpoint(tmp_path / "a"), pipeline_stages=2)
    assert_same_state(state, checkpoints.load_checkpoint(tmp_path / "b")[1])


# ------------------------------------------------------------------------------ save refusals
def test_save_refuses_state_not_matching_layout(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    missing = dict(state)
    del missing["layers.1.mlp.fc2.weight"]
    extra = {**state, "layers.0.attn.k_bias": torch.zeros(16)}
    wrong = {**state, "layers.0.attn.o.weight": torch.zeros(32, 31)}
    not_tensor = {**state, "final_norm.weight": [1.0] * 32}
    cases = [(missing, "layers.1.mlp.fc2.weight"), (extra, "layers.0.attn.k_bias"),
             (wrong, "layers.0.attn.o.weight"), (not_tensor, "final_norm.weight")]
    for bad, name in cases:
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            checkpoints.save_checkpoint(tmp_path / "c", cfg, bad, pipeline_stages=2)
        assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []
    for stages in (0, 3, True, 1.0):
        with pytest.raises(CheckpointError, match="pipeline_stages"):
            checkpoints.save_checkpoint(tmp_path / "c", cfg, state, pipeline_stages=stages)


def test_overwrite(tmp_path):
    cfg = tiny_config(num_layers=2)
    first, second = random_state(cfg, seed=1), random_state(cfg, seed=2)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, first)
    with pytest.raises(CheckpointError, match="already exists"):
        checkpoints.save_checkpoint(tmp_path / "c", cfg, second)
    assert_same_state(first, checkpoints.load_checkpoint(tmp_path / "c")[1])
    checkpoints.save_checkpoint(tmp_path / "c", cfg, second, pipeline_stages=2, overwrite=True)
    assert_same_state(second, checkpoints.load_checkpoint(tmp_path / "c")[1])
    assert not (tmp_path / "c" / ".metadata").exists()  # the old layout is gone, not merged
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------- atomicity
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("overwrite", [False, True])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, overwrite):
    cfg = tiny_config(num_layers=3)
    old = random_state(cfg, seed=5)
    if overwrite:
        checkpoints.save_checkpoint(tmp_path / "c", cfg, old)
    calls = []
    real = native_writer._save_dcp

    def failing(directory, tensors):
        calls.append(directory)
        if len(calls) == 2:
            raise Boom("disk full")
        real(directory, tensors)

    monkeypatch.setattr(native_writer, "_save_dcp", failing)
    with pytest.raises(Boom):
        checkpoints.save_checkpoint(tmp_path / "c", cfg, random_state(cfg), pipeline_stages=3, overwrite=overwrite)
    assert len(calls) == 2 and (calls[0] / ".metadata").exists() is False  # stage 0 was written, then removed
    assert leftovers(tmp_path) == []
    if overwrite:
        assert_same_state(old, checkpoints.load_checkpoint(tmp_path / "c")[1])
    else:
        assert not (tmp_path / "c").exists()


def test_failure_from_lazy_state_and_interrupt(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)

    class Failing(dict):
        def __init__(self, error):
            super().__init__(state)
            self.error = error

        def __getitem__(self, name):
            if name == "final_norm.weight":
                raise self.error
            return super().__getitem__(name)

    for error in (Boom("source vanished"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            checkpoints.save_checkpoint(tmp_path / "c", cfg, Failing(error), pipeline_stages=2)
        assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_extra_files_copied_inside_the_atomic_write(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    src = tmp_path / "tok.json"
    src.write_text('{"tok": 1}')
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state, pipeline_stages=2,
                           extra_files={"hf/tokenizer.json": src, "notes.txt": src})
    assert (tmp_path / "c" / "hf" / "tokenizer.json").read_text() == '{"tok": 1}'
    assert (tmp_path / "c" / "notes.txt").is_file()
    assert_same_state(state, checkpoints.load_checkpoint(tmp_path / "c")[1])  # the reader ignores them
    for bad in ("config.json", ".metadata", "pp0/x", "__0_0.distcp", "../escape", "/abs/path", "a/../../b"):
        with pytest.raises(CheckpointError, match="extra file"):
            checkpoints.save_checkpoint(tmp_path / "d", cfg, state, extra_files={bad: src})
        assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []
    with pytest.raises(CheckpointError, match="cannot copy"):
        checkpoints.save_checkpoint(tmp_path / "d", cfg, state, extra_files={"x.json": tmp_path / "absent"})
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- streaming write
def test_write_checkpoint_pulls_each_tensor_only_when_writing_it(tmp_path):
    import weakref
    cfg = tiny_config(num_layers=3)
    state = random_state(cfg, torch.bfloat16)
    alive = []

    def stream():
        for name in state:
            assert sum(ref() is not None for ref in alive) <= 1, "earlier tensors are still held"
            tensor = state[name].clone()
            alive.append(weakref.ref(tensor))
            yield name, tensor

    dtypes = {n: t.dtype for n, t in state.items()}
    native_writer.write_checkpoint(tmp_path / "c", cfg, stream(), dtypes, 2)
    assert_same_state(state, checkpoints.load_checkpoint(tmp_path / "c")[1])


def test_write_checkpoint_holds_early_tensors_until_their_turn(tmp_path, monkeypatch):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    sources = []
    real = native_writer._Source
    monkeypatch.setattr(native_writer, "_Source", lambda *a: sources.append(real(*a)) or sources[-1])
    dtypes = {n: t.dtype for n, t in state.items()}
    native_writer.write_checkpoint(tmp_path / "c", cfg, reversed(list(state.items())), dtypes)
    assert_same_state(state, checkpoints.load_checkpoint(tmp_path / "c")[1])
    assert sources[0].peak_pending_bytes > 0  # correct, at the cost of memory: callers stream in order
    order = native_format.stage_order(cfg, reversed(list(state)), 2)
    stage = native_format.stage_index(cfg, 2)
    assert sorted(order) == sorted(state) and [stage(n) for n in order] == sorted(stage(n) for n in order)


@pytest.mark.parametrize("case", ["dtype", "unknown", "twice", "short", "extra", "trailing"])
def test_write_checkpoint_refuses_a_stream_that_breaks_its_plan(tmp_path, case):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    items = list(state.items())
    dtypes = {n: t.dtype for n, t in items}
    if case == "dtype":
        items[3] = (items[3][0], items[3][1].double())
    elif case == "unknown":
        items.insert(2, ("layers.7.attn.o.weight", torch.zeros(1)))
    elif case == "twice":
        items.insert(2, items[1])
    elif case == "short":
        items.pop()
    elif case == "extra":
        items.append(("final_norm.weight", state["final_norm.weight"]))

    def stream():
        yield from items
        if case == "trailing":
            raise CheckpointError("the producer's own last check failed")

    with pytest.raises(CheckpointError):
        native_writer.write_checkpoint(tmp_path / "c", cfg, stream(), dtypes, 2)
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_data_files_hold_one_tensor_each_and_load_memory_mapped(tmp_path, monkeypatch):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, state)
    files = sorted((tmp_path / "c").glob("*.distcp"))
    assert len(files) == len(state)
    before = {f.name: f.read_bytes() for f in files}
    reader = checkpoints.open_checkpoint(tmp_path / "c")
    monkeypatch.setattr(native_reader.dcp, "load", lambda *a, **k: pytest.fail("tensors stored alone are mapped"))
    tensor = reader["layers.1.mlp.fc1.weight"]
    assert torch.equal(tensor, state["layers.1.mlp.fc1.weight"])
    tensor.add_(1)  # a private mapping: the file never changes
    assert {f.name: f.read_bytes() for f in files} == before
    assert torch.equal(reader["layers.1.mlp.fc1.weight"], state["layers.1.mlp.fc1.weight"])


def test_a_single_file_dcp_save_is_read_through_dcp(tmp_path):
    """What other writers (and DCP's default) make: every tensor in one .distcp file."""
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg, torch.float16)
    root = tmp_path / "c"
    root.mkdir()
    (root / "config.json").write_text(cfg.to_json())
    with native_format.quiet_dcp():
        torch.distributed.checkpoint.save(state, storage_writer=torch.distributed.checkpoint.FileSystemWriter(root),
                                          no_dist=True)
    assert len(list(root.glob("*.distcp"))) == 1
    reader = checkpoints.open_checkpoint(root)
    assert reader._file_of == {}
    assert_same_state(state, reader.load_all())
    checkpoints.save_checkpoint(tmp_path / "d", cfg, reader, pipeline_stages=2)  # re-staging streams from a reader
    assert_same_state(state, checkpoints.load_checkpoint(tmp_path / "d")[1])


# ------------------------------------------------------------------- data files written block by block
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_data_files_are_the_bytes_dcp_itself_writes(tmp_path, monkeypatch, dtype):
    """The writer's own data files (archive saved without data, then the bytes at their offset)
    against DCP's stock write path (torch.save per file): every file byte for byte."""
    cfg = tiny_config(num_layers=3, tied=True, moe=True)
    state = {n: (t * 100).to(dtype) for n, t in random_state(cfg).items()}
    checkpoints.save_checkpoint(tmp_path / "ours", cfg, state, pipeline_stages=2)
    monkeypatch.setattr(native_writer._DeterministicWriter, "write_data", native_writer.FileSystemWriter.write_data)
    checkpoints.save_checkpoint(tmp_path / "dcp", cfg, state, pipeline_stages=2)
    assert tree_bytes(tmp_path / "ours") == tree_bytes(tmp_path / "dcp")


def test_concatenation_is_written_as_the_assembled_tensor(tmp_path):
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg, torch.bfloat16)
    big = torch.randn(3, *state["layers.0.mlp.fc1.weight"].shape).to(torch.bfloat16)

    def blocks(tensor: torch.Tensor) -> native_format.Concatenation:
        cut = [0, 0, 1, tensor.shape[0] // 2, tensor.shape[0]]  # an empty block, one row, views
        return native_format.Concatenation(tuple(tensor[a:b] for a, b in zip(cut, cut[1:])))

    state["layers.0.mlp.fc1.weight"] = big[1]  # a view with a storage offset, written as itself
    stream = [(n, blocks(t) if t.dim() == 2 else t) for n, t in state.items()]
    stream[0] = (stream[0][0], native_format.Concatenation(state[stream[0][0]].unbind(0), state[stream[0][0]].shape))
    dtypes = {n: t.dtype for n, t in state.items()}
    native_writer.write_checkpoint(tmp_path / "blocks", cfg, stream, dtypes)
    checkpoints.save_checkpoint(tmp_path / "plain", cfg, {n: t.clone() for n, t in state.items()})
    assert tree_bytes(tmp_path / "blocks") == tree_bytes(tmp_path / "plain")
    loaded = checkpoints.load_checkpoint(tmp_path / "blocks")[1]
    assert_same_state(state, loaded)
    stock = {n: torch.empty_like(t) for n, t in state.items()}
    with native_format.quiet_dcp():
        torch.distributed.checkpoint.load(stock, checkpoint_id=tmp_path / "blocks", no_dist=True)
    assert_same_state(state, stock)


def test_concatenation_refusals(tmp_path):
    a = torch.zeros(2, 3)
    with pytest.raises(CheckpointError, match="one dtype"):
        native_format.Concatenation((a, a.double()))
    with pytest.raises(CheckpointError, match="trailing"):
        native_format.Concatenation((a, torch.zeros(2, 4)))
    with pytest.raises(CheckpointError, match="none"):
        native_format.Concatenation(())
    with pytest.raises(CheckpointError, match="cannot have shape"):
        native_format.Concatenation((a, a), (2, 2))
    joined = native_format.Concatenation((a, a.t().contiguous().t()))  # a non-contiguous block is made contiguous
    assert joined.shape == (4, 3) and joined.nbytes == 48 and torch.equal(joined.materialize(), torch.zeros(4, 3))
    stacked = native_format.Concatenation((torch.ones(3), torch.zeros(3)), (2, 1, 3))  # another shape: a stack
    assert torch.equal(stacked.materialize(), torch.stack([torch.ones(1, 3), torch.zeros(1, 3)]))
    cfg = tiny_config(num_layers=2)
    state = random_state(cfg)
    dtypes = {n: t.dtype for n, t in state.items()}
    items = [(n, native_format.Concatenation((t, t)) if n == "embedding.weight" else t) for n, t in state.items()]
    with pytest.raises(CheckpointError, match="shape"):
        native_writer.write_checkpoint(tmp_path / "c", cfg, items, dtypes)
    assert not (tmp_path / "c").exists() and leftovers(tmp_path) == []


def test_the_reader_is_a_declared_tensor_source(tmp_path):
    cfg = tiny_config(num_layers=2)
    checkpoints.save_checkpoint(tmp_path / "c", cfg, random_state(cfg))
    with checkpoints.open_checkpoint(tmp_path / "c") as reader:
        assert isinstance(reader, LazyReader) and isinstance(reader, TensorSource)
