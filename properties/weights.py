"""The weight properties (DESIGN §3): bit-exact round trips, the key bijection with transformers'
own state dict, the tied-embedding matrix and bias handling.

Tensors come from ``native.random_state(cfg, seed)``: every tensor random and away from its default,
so a dropped, swapped or unpermuted tensor is visible.
"""
from __future__ import annotations

from typing import Mapping

import torch

import native
from converters import ConversionError

from . import common
from .common import (
    CountingMapping, bits_equal, clone_state, describe_difference, export_config, export_weights,
    import_weights, storage_key,
)
from .violation import Reporter


def _same_state(report: Reporter, expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor],
                what: str) -> None:
    missing = [n for n in expected if n not in actual]
    extra = [n for n in actual if n not in expected]
    if missing:
        report.fail(missing[0], f"{what}: tensor missing (missing: {missing[:6]})")
    if extra:
        report.fail(extra[0], f"{what}: unexpected tensor (extra: {extra[:6]})")
    for name, tensor in expected.items():
        if not bits_equal(tensor, actual[name]):
            report.fail(name, f"{what} is not bit-exact: {describe_difference(tensor, actual[name])}")


def _no_shared_storage(report: Reporter, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor],
                       what: str) -> None:
    taken = {storage_key(t): n for n, t in inputs.items() if storage_key(t) is not None}
    for name, tensor in outputs.items():
        key = storage_key(tensor)
        if key is None:
            continue
        if key in taken:
            report.fail(name, f"{what}: output shares storage with {taken[key]}")
        taken[key] = name


def random_hf_state(converter, cfg: native.ModelConfig, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """An HF state drawn on the HF side, never through ``export_weights``: every tensor of
    ``converter.hf_shapes(cfg)`` is ``0.05 N(0, 1)`` in ``dtype``, as small as real checkpoints'
    norm offsets and projections, drawn in float64 so every bit of ``dtype`` is used. An export's
    image can hide a lossy transform (an offset exact on exported values, a cast exact on values
    that came from a narrower type); these bytes cannot."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
            for name, shape in converter.hf_shapes(cfg).items()}


def weight_roundtrip(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """native→HF→native and HF→native→HF return the source bytes, dtype included, for every
    architecture and in every dtype (drawn from the seed among float32, bfloat16, float16, float64):
    the native source is ``native.random_state``, the HF source :func:`random_hf_state` (drawn on
    the HF side). Inputs are not mutated; outputs share no storage with the inputs or with each
    other."""
    report = Reporter("weight_roundtrip", converter)
    dtype = common.weight_dtype(seed)
    state = native.random_state(cfg, seed, dtype=dtype)
    before = clone_state(state)
    hf = export_weights(report, converter, cfg, state)
    _same_state(report, before, state, "export_weights mutated its input")
    for name, tensor in hf.items():
        report.expect(tensor.dtype == dtype, name, f"export_weights changed the dtype: {dtype} -> {tensor.dtype}")
    _no_shared_storage(report, state, hf, "export_weights")
    hf_before = clone_state(hf)
    back = import_weights(report, converter, cfg, hf)
    _same_state(report, hf_before, hf, "import_weights mutated its input")
    _no_shared_storage(report, hf, back, "import_weights")
    _same_state(report, before, back, "native -> HF -> native")

    source = random_hf_state(converter, cfg, seed + 1, dtype)
    source_before = clone_state(source)
    native_side = import_weights(report, converter, cfg, source)
    _same_state(report, source_before, source, "import_weights mutated its input")
    _no_shared_storage(report, source, native_side, "import_weights")
    again = export_weights(report, converter, cfg, native_side)
    _no_shared_storage(report, native_side, again, "export_weights")
    _same_state(report, source_before, again, "HF -> native -> HF")


def key_bijection(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """Exported names, shapes and dtypes equal the checkpoint transformers itself saves for the
    exported config (``save_pretrained`` form: tied weights dropped, MoE experts per expert); every
    native tensor is read exactly once, and so is every HF tensor on the way back."""
    report = Reporter("key_bijection", converter)
    dtype = common.weight_dtype(seed)
    hf_cfg = export_config(report, converter, cfg)
    state = CountingMapping(native.random_state(cfg, seed, dtype=dtype))
    exported = export_weights(report, converter, cfg, state)
    for name in state:
        reads = state.reads.get(name, 0)
        report.expect(reads == 1, name, f"export_weights read this native tensor {reads} times (expected once)")
    expected = common.hf_disk_shapes(hf_cfg, dtype)
    missing = sorted(set(expected) - set(exported))
    extra = sorted(set(exported) - set(expected))
    report.expect(not missing, missing[0] if missing else "",
                  f"transformers' checkpoint has tensor(s) the export lacks: {missing[:6]}")
    report.expect(not extra, extra[0] if extra else "",
                  f"exported tensor(s) transformers' checkpoint does not have: {extra[:6]}")
    for name, tensor in exported.items():
        shape, hf_dtype = expected[name]
        report.expect(tuple(tensor.shape) == shape, name,
                      f"exported shape {tuple(tensor.shape)}, transformers expects {shape}")
        report.expect(tensor.dtype == hf_dtype, name, f"exported dtype {tensor.dtype}, transformers expects {hf_dtype}")
    predicted = converter.hf_shapes(cfg)
    report.expect(predicted == {n: tuple(t.shape) for n, t in exported.items()}, "hf_shapes",
                  "converter.hf_shapes(cfg) disagrees with the exported shapes")

    hf_state = CountingMapping(exported)
    back = import_weights(report, converter, cfg, hf_state)
    for name in hf_state:
        reads = hf_state.reads.get(name, 0)
        report.expect(reads == 1, name, f"import_weights read this HF tensor {reads} times (expected once)")
    shapes = native.state_shapes(cfg)
    report.expect(set(back) == set(shapes), "import_weights",
                  f"native names differ from state_shapes(cfg): missing {sorted(set(shapes) - set(back))[:4]}, "
                  f"extra {sorted(set(back) - set(shapes))[:4]}")
    for name, tensor in back.items():
        report.expect(tuple(tensor.shape) == tuple(shapes[name]), name,
                      f"imported shape {tuple(tensor.shape)}, native layout says {tuple(shapes[name])}")


# ----------------------------------------------------------------------------------- tied matrix
def embedding_names(hf_cfg: Mapping) -> tuple[str, str]:
    """``(embedding, head)``: the state-dict names of the HF model's input embedding and output
    projection (``get_input_embeddings``/``get_output_embeddings``; ``embed_tokens``/``lm_head`` for
    most models, ``embed_in``/``embed_out`` for GPT-NeoX). A tied model lists its one tensor under
    both names; the head is the name that is not the embedding's."""
    from transformers.core_model_loading import revert_weight_conversion

    model = common.empty_hf_model(hf_cfg)
    state = model.state_dict(keep_vars=True)
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    embedding = next(n for n, t in state.items() if t is inputs)
    head = next(n for n, t in state.items() if t is outputs and n != embedding)

    def on_disk(name: str) -> str:  # the checkpoint name (GPT-NeoX's lm_head is saved as embed_out)
        (saved,) = revert_weight_conversion(model, {name: state[name]})
        return saved

    return on_disk(embedding), on_disk(head)


def tied_embeddings(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """The matrix, for the drawn config made tied and untied (when the format accepts it):

    export: tied → no ``lm_head`` exported and the HF config ties; untied → ``lm_head`` exported,
    equal to the native output, and the HF config does not tie.

    import, HF source × (``lm_head`` absent | equal to the embedding | different):
    tied + absent → converted; tied + equal → converted (the copy dropped) or refused; tied +
    different → refused (a tied model cannot hold it); untied + absent → refused (the head would be
    invented); untied + equal / different → converted, output = ``lm_head`` exactly.
    Refused means ``ConversionError`` naming ``lm_head``."""
    report = Reporter("tied_embeddings", converter)
    export_config(report, converter, cfg)  # the drawn setting itself must be accepted
    for tied in (cfg.head.tied, not cfg.head.tied):
        variant = native.replace_path(cfg, "head.tied", tied)
        try:
            hf_cfg = converter.export_config(variant)
        except ConversionError as exc:  # the format cannot express the other tie setting: a valid cell
            report.expect("tied" in str(exc) or "tie_word_embeddings" in str(exc), "head.tied",
                          f"the refusal of head.tied={tied} does not name it: {exc}")
            continue
        _tied_cells(report, converter, variant, hf_cfg, tied, seed)


def _tied_cells(report: Reporter, converter, cfg, hf_cfg, tied: bool, seed: int) -> None:
    label = "tied" if tied else "untied"
    config = common.hf_config(hf_cfg)
    report.expect(bool(config.tie_word_embeddings) == tied, "tie_word_embeddings",
                  f"native head.tied={tied} but the exported config gives "
                  f"tie_word_embeddings={config.tie_word_embeddings}")
    state = native.random_state(cfg, seed)
    hf = export_weights(report, converter, cfg, state)
    embedding, head = embedding_names(hf_cfg)
    if tied:
        report.expect(head not in hf, head, "exported while the model is tied (HF ties it to the embedding)")
    else:
        report.expect(head in hf, head, "not exported for an untied model")
        report.expect(bits_equal(hf[head], state["output.weight"]), head,
                      "exported lm_head differs from native output.weight")
    report.expect(embedding in hf, embedding or "embedding", f"no embedding among the exported tensors ({label})")

    generator = torch.Generator().manual_seed(seed)
    different = torch.randn(hf[embedding].shape, generator=generator).to(hf[embedding].dtype)
    base = {n: t for n, t in hf.items() if n != head}
    cells = {
        "absent": base,
        "equal": {**base, head: hf[embedding].clone()},
        "different": {**base, head: different},
    }
    for cell, source in cells.items():
        where = f"{label} config, HF lm_head {cell}"
        try:
            out = dict(converter.import_weights(cfg, source))
        except ConversionError as exc:
            must_convert = (tied and cell == "absent") or (not tied and cell != "absent")
            report.expect(not must_convert, where, f"refused a convertible checkpoint: {exc}")
            report.expect(head in str(exc) or "lm_head" in str(exc), where,
                          f"the refusal does not name {head}: {exc}")
            continue
        must_refuse = (tied and cell == "different") or (not tied and cell == "absent")
        report.expect(not must_refuse, where,
                      "converted instead of refusing (" + ("the different lm_head was dropped" if tied else
                                                           "an output head would be invented") + ")")
        report.expect(bits_equal(out["embedding.weight"], source[embedding]), where,
                      "native embedding differs from the HF embedding")
        if tied:
            report.expect("output.weight" not in out, where, "a tied native state must not hold output.weight")
        else:
            report.expect(bits_equal(out["output.weight"], source[head]), where,
                          "native output.weight differs from the HF lm_head")


# ---------------------------------------------------------------------------------------- biases
def native_biases(cfg: native.ModelConfig) -> list[str]:
    """Every bias tensor of the native layout (attention, MLP and norm biases)."""
    return [n for n in native.state_shapes(cfg) if n.endswith("bias")]


def _k_side(name: str) -> bool:
    return name.endswith("attn.k_bias") or name.endswith("attn.k_norm.bias")


def _q_side(name: str) -> bool:
    return name.endswith("attn.q_bias") or name.endswith("attn.q_norm.bias")


def _inert(cfg: native.ModelConfig, name: str) -> str | None:
    """Why perturbing this bias cannot change the logits, or None.

    - A key bias (or k-norm bias) adds ``q · b`` to every score of a query alike, which softmax
      cancels, unless rotary makes it depend on the key position.
    - With a window of 1 every query sees only itself: softmax over one key is 1 whatever q and k
      are, so q- and k-side biases cannot matter."""
    if name.endswith("router.score_bias"):
        return ("a score bias moves only which experts are chosen, which a few tokens may never flip "
                "(forward_equivalence judges it)")
    if _k_side(name) or _q_side(name):
        a = cfg.decoder.layer(int(name.split(".")[1])).attention
        if a.window == 1:
            return "a window of 1 makes the attention weights constant"
        if _k_side(name) and a.rotary.rotary_dim(a.head_dim) == 0:
            return "a key bias without rotary is cancelled by softmax"
    return None


def bias_handling(converter, cfg: native.ModelConfig, seed: int = 0) -> None:
    """Every bias the native config enables is exported, round-trips, and reaches the forward pass
    on both sides (perturbing that bias alone changes native logits, and perturbing the HF tensors
    it became changes HF logits); the HF model built from the exported config has no bias the native
    config does not enable (so asymmetric patterns, Qwen2's q/k/v without o, are honoured)."""
    report = Reporter("bias_handling", converter)
    dtype = torch.float64
    hf_cfg = export_config(report, converter, cfg)
    state = native.random_state(cfg, seed, dtype=dtype)
    hf = export_weights(report, converter, cfg, state)
    back = import_weights(report, converter, cfg, hf)
    biases = native_biases(cfg)
    for name in biases:
        report.expect(name in back and bits_equal(back[name], state[name]), name, "bias does not round-trip")

    # Where each native bias lands: the HF tensors that change when only it changes. The change is
    # random, not constant: a constant shift of a bias feeding a LayerNorm would cancel out.
    generator = torch.Generator().manual_seed(seed)
    delta = {name: 0.5 * torch.randn(state[name].shape, generator=generator, dtype=dtype) for name in biases}
    landing: dict[str, list[str]] = {}
    moved: dict[str, dict[str, torch.Tensor]] = {}
    for name in biases:
        bumped = {**state, name: state[name] + delta[name]}
        moved[name] = export_weights(report, converter, cfg, bumped)
        landing[name] = [n for n in hf if not bits_equal(hf[n], moved[name][n])]
        report.expect(bool(landing[name]), name, "changing this bias changes no exported tensor (dropped on export)")
    produced = {n for names in landing.values() for n in names}
    invented = sorted(n for n in hf if n.endswith("bias") and n not in produced)
    report.expect(not invented, invented[0] if invented else "",
                  f"exported bias tensor(s) that no native bias feeds: {invented[:6]}")
    # Loading is strict (common.hf_model): an HF bias parameter the export does not provide, i.e. a
    # bias the HF config enables but the native config does not, is reported as a missing key.
    hf_model = common.hf_model(report, hf_cfg, hf, dtype)
    hf_bias_params = sorted(n for n, _ in hf_model.named_parameters() if n.endswith("bias"))

    tokens = torch.randint(0, cfg.vocab_size, (1, 6), generator=generator)
    native_model = common.native_model(cfg, state, dtype)
    native_params = dict(native_model.named_parameters())
    hf_tensors = hf_model.state_dict()  # shares storage with the parameters
    with torch.no_grad():
        native_ref = native_model(tokens)
        hf_ref = hf_model(tokens).logits
        for name in biases:
            if _inert(cfg, name):
                continue
            with _replaced(native_params, {name: state[name] + delta[name]}):
                logits = native_model(tokens)
            report.expect(_changed(logits, native_ref), name,
                          "perturbing this bias leaves the native logits unchanged")
            changes = {n: moved[name][n] for n in landing[name]}
            if all(n in hf_tensors and hf_tensors[n].shape == t.shape for n, t in changes.items()):
                with _replaced(hf_tensors, changes):
                    perturbed = hf_model(tokens).logits
            else:  # stored differently in memory (conversion mapping): load the whole model again
                perturbed = common.hf_model(report, hf_cfg, moved[name], dtype)(tokens).logits
            report.expect(_changed(perturbed, hf_ref), f"{name} -> {landing[name]}",
                          "perturbing the HF tensor(s) of this bias leaves the HF logits unchanged "
                          f"(HF bias parameters: {hf_bias_params[:6]})")


#: A perturbation "reaches the logits" when it moves them by more than rounding could (float64).
CHANGED = 1e-9


def _changed(logits: torch.Tensor, reference: torch.Tensor) -> bool:
    from fixtures.tolerances import relative_error

    return relative_error(logits, reference) > CHANGED


class _replaced:
    """Temporarily overwrite tensors in place (restored bit for bit on exit)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]):
        self.tensors, self.values = tensors, values
        self.saved: dict[str, torch.Tensor] = {}

    def __enter__(self):
        with torch.no_grad():
            for name, value in self.values.items():
                target = self.tensors[name]
                self.saved[name] = target.detach().clone()
                target.copy_(value)
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for name, value in self.saved.items():
                self.tensors[name].copy_(value)
