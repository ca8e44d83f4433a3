"""The streaming driver's contract (converters.weights.convert_stream): each source tensor loaded
once and only when its rule runs, few tensors alive at a time, and missing, extra or misshapen
tensors refused before any output."""
from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from converters.errors import ConversionError
from converters import weights as w
from weight_cases import assemble, assert_no_sharing, randn



class CountingSource(Mapping):
    """A lazy state dict: records every load, the order, and how many loaded tensors are alive."""

    def __init__(self, tensors, with_shape_of=True):
        self._tensors = dict(tensors)
        self.loads: list[str] = []
        self.alive = 0
        self.max_alive = 0
        if with_shape_of:
            self.shape_of = lambda name: tuple(self._tensors[name].shape)

    def __getitem__(self, name):
        t = self._tensors[name].clone()
        self.loads.append(name)
        self.alive += 1
        self.max_alive = max(self.max_alive, self.alive)
        import weakref
        weakref.finalize(t, self._dead)
        return t

    def _dead(self):
        self.alive -= 1

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self):
        return len(self._tensors)


def small_llama(tied=False, layers=2, heads=4, kv=2, d=6, r=4, hidden=5, inter=7, vocab=11):
    def layer(i, _):
        return [
            w.norm("attn_norm.weight", "input_layernorm.weight"),
            w.split_qkv("attn.qkv.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
                        heads=heads, kv_heads=kv, head_dim=d, rotary_dim=r),
            w.rotary_rows("attn.q_bias", "self_attn.q_proj.bias", heads=heads, head_dim=d, rotary_dim=r),
            w.rename("attn.o.weight", "self_attn.o_proj.weight"),
            w.norm("mlp_norm.weight", "post_attention_layernorm.weight"),
            w.split_gate_up("mlp.fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
            w.rename("mlp.fc2.weight", "mlp.down_proj.weight"),
        ]

    rules = [*w.embedding_and_head(tied), *w.walk_layers(range(layers), layer), w.norm("final_norm.weight", "model.norm.weight")]
    shapes = {"embedding.weight": (vocab, hidden)}
    for i in range(layers):
        shapes.update({
            f"layers.{i}.attn_norm.weight": (hidden,), f"layers.{i}.attn.qkv.weight": ((heads + 2 * kv) * d, hidden),
            f"layers.{i}.attn.q_bias": (heads * d,), f"layers.{i}.attn.o.weight": (hidden, heads * d),
            f"layers.{i}.mlp_norm.weight": (hidden,), f"layers.{i}.mlp.fc1.weight": (2 * inter, hidden),
            f"layers.{i}.mlp.fc2.weight": (hidden, inter),
        })
    shapes["final_norm.weight"] = (hidden,)
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    state = {n: randn(s, torch.float32, k) for k, (n, s) in enumerate(shapes.items())}
    return rules, shapes, state


def test_stream_roundtrip_and_hf_names():
    rules, shapes, state = small_llama()
    hf_shapes = w.export_shapes(rules, shapes)
    hf = dict(w.convert_stream(rules, state, "export", shapes))
    assert {n: tuple(t.shape) for n, t in hf.items()} == hf_shapes
    assert "model.layers.1.self_attn.k_proj.weight" in hf and "lm_head.weight" in hf
    assert set(hf) == set(w.claimed_names(rules, "hf"))
    assert set(state) == set(w.claimed_names(rules, "native"))
    back = dict(w.convert_stream(rules, hf, "import", hf_shapes))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    assert_no_sharing(list(hf.values()), list(state.values()))
    assert w.import_shapes(rules, hf_shapes) == shapes


def test_stream_is_lazy_in_rule_order_and_bounded():
    rules, shapes, state = small_llama()
    source = CountingSource(state)
    stream = w.convert_stream(rules, source, "export", shapes)
    assert source.loads == []  # the up-front checks load nothing
    names = []
    for name, tensor in stream:
        names.append(name)
        del tensor
    assert source.loads == [n for rule in rules for n in rule.native]  # each key once, in rule order
    assert names == w.claimed_names(rules, "hf")
    assert source.max_alive == 1  # every rule here has one source: one loaded tensor alive at a time
    assert source.alive == 0


def test_stream_errors_name_the_tensor():
    rules, shapes, state = small_llama()
    missing = {k: v for k, v in state.items() if k != "layers.1.attn.qkv.weight"}
    with pytest.raises(ConversionError, match=r"^layers\.1\.attn\.qkv\.weight: missing"):
        w.convert_stream(rules, missing, "export", shapes)
    extra = {**state, "layers.0.attn.k_bias": torch.zeros(12)}
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.k_bias: not claimed"):
        w.convert_stream(rules, extra, "export", shapes)
    bad = {**state, "layers.0.mlp.fc2.weight": torch.zeros(5, 8)}
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: shape \(5, 8\), expected \(5, 7\)"):
        w.convert_stream(rules, CountingSource(bad), "export", shapes)  # up-front, via shape_of
    lazy = CountingSource(bad, with_shape_of=False)
    stream = w.convert_stream(rules, lazy, "export", shapes)
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: shape"):
        list(stream)  # at load time, without shape_of
    twice = rules + [w.rename("layers.0.mlp.fc2.weight", "other")]
    with pytest.raises(ConversionError, match=r"^layers\.0\.mlp\.fc2\.weight: claimed by two rules"):
        w.convert_stream(twice, state, "export")
    twice_hf = rules + [w.rename("somewhere", "model.norm.weight")]
    with pytest.raises(ConversionError, match=r"^model\.norm\.weight: claimed by two rules"):
        w.convert_stream(twice_hf, state, "export")


def test_stream_import_errors_name_hf_tensors():
    rules, shapes, state = small_llama()
    hf_shapes = w.export_shapes(rules, shapes)
    hf = dict(w.convert_stream(rules, state, "export"))
    del hf["lm_head.weight"]
    with pytest.raises(ConversionError, match=r"^lm_head\.weight: missing"):  # untied: lm_head required
        w.convert_stream(rules, hf, "import", hf_shapes)
    hf = dict(w.convert_stream(rules, state, "export"))
    hf["model.layers.0.self_attn.k_proj.weight"] = hf["model.layers.0.self_attn.k_proj.weight"].double()
    with pytest.raises(ConversionError, match=r"dtypes differ"):
        list(w.convert_stream(rules, hf, "import", hf_shapes))


@pytest.mark.parametrize("has_head", [False, True])
@pytest.mark.parametrize("equal", [False, True])
def test_tied_embedding_matrix(has_head, equal):
    rules, shapes, state = small_llama(tied=True)
    hf_shapes = w.export_shapes(rules, shapes)
    assert "lm_head.weight" not in hf_shapes
    hf = dict(w.convert_stream(rules, state, "export", shapes))
    assert "lm_head.weight" not in hf
    if has_head:
        emb = hf["model.embed_tokens.weight"]
        hf["lm_head.weight"] = emb.clone() if equal else emb + 1
    if has_head and not equal:
        with pytest.raises(ConversionError, match=r"^lm_head\.weight: the model is tied"):
            list(w.convert_stream(rules, hf, "import", hf_shapes))
        return
    back = dict(w.convert_stream(rules, hf, "import", hf_shapes))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    # an output.weight in a tied native state is an extra tensor
    with pytest.raises(ConversionError, match=r"^output\.weight: not claimed"):
        w.convert_stream(rules, {**state, "output.weight": state["embedding.weight"]}, "export")


def test_transform_rejection_names_the_tensor():
    rule = w.split_qkv("layers.0.attn.qkv.weight", ("q", "k", "v"), heads=4, kv_heads=2, head_dim=6, rotary_dim=4)
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.qkv\.weight: qkv: expected 48 rows"):
        rule.export([torch.zeros(47, 3)])
    with pytest.raises(ConversionError, match=r"^layers\.0\.attn\.qkv\.weight: no shape"):
        w.export_shapes([rule], {})


def test_walk_layers_prefixes_and_claims():
    rules = w.walk_layers([None, None], lambda i, _: [w.rename("a.weight", "b.weight")])
    assert w.claimed_names(rules, "native") == ["layers.0.a.weight", "layers.1.a.weight"]
    assert w.claimed_names(rules, "hf") == ["model.layers.0.b.weight", "model.layers.1.b.weight"]
    tied = w.embedding_and_head(True)
    assert w.claimed_names(tied, "hf") == ["model.embed_tokens.weight", "lm_head.weight"]
    assert w.claimed_names(tied, "native") == ["embedding.weight"]


def test_requires_grad_inputs_give_plain_outputs():
    p = torch.nn.Parameter(torch.randn(4, 3))
    (out,) = w.rename("a", "b").export([p])
    assert not out.requires_grad and torch.equal(out, p.detach())
    assert out.untyped_storage().data_ptr() != p.untyped_storage().data_ptr()


def test_copy_false_passes_renames_through_but_never_shares_between_outputs():
    x = torch.randn(6, 3)
    (same,) = w.rename("a", "b").export([x], copy=False)
    assert same.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    gate, up = w.split_gate_up("fc1", ("g", "u")).export([x], copy=False)
    assert_no_sharing([gate, up], [])  # chunk views are materialised: each output owns its bytes
    rules, shapes, state = small_llama()
    hf = dict(w.convert_stream(rules, state, "export", shapes, copy=False))
    back = dict(w.convert_stream(rules, hf, "import", copy=False))
    assert all(torch.equal(back[n], state[n]) for n in state)
    assert_no_sharing(list(hf.values()), [])


def test_import_blocks_are_the_inputs_where_the_import_only_concatenates():
    gate, up = torch.randn(3, 4), torch.randn(3, 4)
    ((blocks, shape),) = w.split_gate_up("fc1", ("g", "u")).import_blocks([gate, up])
    assert blocks[0] is gate and blocks[1] is up and shape == (6, 4)
    experts = [torch.randn(2, 5) for _ in range(6)]
    ((blocks, shape),) = w.experts("fc1", "fc2", experts=3, fc1=("{e}.w1", "{e}.w3"), fc2="{e}.w2")[0].import_blocks(experts)
    assert all(b is x for b, x in zip(blocks, experts)) and shape == (3, 4, 5)
    assert w.rename("a", "b").import_blocks([gate]) is None  # nothing to assemble: the rule runs as usual
    assert w.norm("a", "b", offset=1.0).import_blocks([gate]) is None
    assert w.embedding_and_head(True)[0].import_blocks([gate]) is None  # a rule with its own run()
    with pytest.raises(ConversionError, match="g, u: chunk: the 2 parts differ"):
        w.split_gate_up("fc1", ("g", "u")).import_blocks([gate, torch.randn(2, 4)])


def test_stream_yields_parts_unassembled_and_uncloned_on_request():
    rules, shapes, state = small_llama()
    made = []

    def blocks(parts, shape):
        made.append(len(parts))
        return assemble(parts, shape)

    hf = dict(w.convert_stream(rules, state, "export", shapes, copy=False, blocks=blocks))
    assert hf.keys() == dict(w.convert_stream(rules, state, "export", shapes)).keys()
    assert set(made) == {1}  # an export is never a concatenation of its inputs
    gate, up = w.split_gate_up("fc1", ("g", "u")).run_views("export", [state["layers.0.mlp.fc1.weight"]])
    assert gate.untyped_storage().data_ptr() == up.untyped_storage().data_ptr()  # views, no clone
    assert w.embedding_and_head(True)[0].run_views("export", [gate]) is None  # a rule with its own run()
    made.clear()
    back = dict(w.convert_stream(rules, hf, "import", copy=False, blocks=blocks))
    assert back.keys() == state.keys() and all(torch.equal(back[n], state[n]) for n in state)
    assert sorted(made, reverse=True)[:4] == [3 * 2, 3 * 2, 2, 2]  # per layer: qkv by kv group, fc1 = [gate; up]
    with pytest.raises(ValueError, match="copy=False"):
        w.convert_stream(rules, hf, "import", blocks=blocks)
