"""torchtune (PyPI ``torchtune``) under convcheck's adapter laws.

torchtune's HF path is :class:`torchtune.training.FullModelHFCheckpointer`: it reads the
checkpoint's ``config.json`` verbatim into ``self._config``, converts the weights with
``convert_weights.hf_to_tune`` (which *permutes* the q/k rows from HF's rotate-half layout into
torchtune's interleaved-pair RoPE layout, given ``num_heads``/``num_kv_heads``/``dim``/``head_dim``)
or with a family's own converter (``qwen2_hf_to_tune``: no permutation, a ``tie_word_embeddings``
skip of ``lm_head``; ``gemma2_hf_to_tune``; ``phi3_hf_to_tune``: splits the fused ``qkv_proj`` and
``gate_up_proj``), and on save runs the inverse and copies ``config.json`` back unchanged. The model
is a component builder (``llama3``/``llama3_1``/``llama3_2``, ``mistral``, ``qwen2``, ``gemma``,
``gemma2``, ``phi3``) whose arguments a user fills from the config. This differs in kind from LitGPT
(whose converter keeps HF's rotary layout and fuses qkv): here the weights are re-laid for a
different RoPE convention, and the model runs that other convention.

Install (the versions CI runs; torchtune 0.6.1 imports ``torchao.dtypes.nf4tensor``, gone from
torchao 0.15 on, and 0.14.1 runs its Python paths on torch 2.13 without its C++ extensions)::

    pip install -c constraints.txt torch==2.13.0 -e '.[torchtune]'

which is ``torchtune==0.6.1`` and ``torchao==0.14.1`` with torchtune's declared dependencies
(``torchtune/__init__`` imports ``torchtune.datasets``, which imports HF ``datasets``).

What is torchtune's and what is glue:

- ``import_weights``/``export_weights`` are torchtune's checkpointer dispatch, verbatim: the same
  function per ``ModelType`` and the same arguments read the same way from ``config.json``
  (``config["num_key_value_heads"]`` is a subscript there, so a config.json that leaves a key to its
  class default fails as it fails for torchtune's users). ``tests/adapters/test_torchtune.py``
  checks this dispatch against a real ``FullModelHFCheckpointer`` load/save on disk.
- ``export_config`` returns the ``config.json`` torchtune carried (its checkpointer copies the file
  back; it never writes one).
- ``import_config`` (glue) picks the ``ModelType`` and the component builder and its arguments from
  the config, the way a user writes a torchtune model config for a checkpoint. Features a builder
  has no argument for are :class:`NotRepresentable`, except where torchtune ships a builder for a
  published checkpoint that carries the feature and silently drops it (Mistral-7B-v0.1's and
  Phi-3-mini-4k's ``sliding_window``): those pass, so the forward law measures what users get.
- ``forward`` builds the model under ``training.set_default_dtype(dtype)`` as torchtune's recipes
  do, loads the state with ``strict=True`` (as the recipes do) and returns its logits.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

import torch

from . import Adapter, NotRepresentable

#: HF model_type -> torchtune ModelType name (checkpointer dispatch key)
_MODEL_TYPES = {"llama": "LLAMA3", "mistral": "MISTRAL", "qwen2": "QWEN2", "gemma": "GEMMA",
                "gemma2": "GEMMA2", "phi3": "PHI3_MINI"}

#: Llama3ScaledRoPE's fixed parameters (llama3_1/llama3_2 builders pass only scale_factor)
_LLAMA3_ROPE_FIXED = {"low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}


@dataclasses.dataclass
class TuneConfig:
    """What a torchtune user has for one HF checkpoint: the checkpointer's ``ModelType`` and its
    ``config.json`` (``self._config``), and the component builder with its arguments."""

    model_type: str                 # torchtune ModelType name
    checkpoint_config: dict[str, Any]  # config.json, as FullModelHFCheckpointer reads it
    builder: str                    # "module:function" of the component builder
    builder_args: dict[str, Any]


def _resolved(hf: dict[str, Any]):
    """The HF config object for ``hf``: class defaults for the keys the file leaves out (what a
    user reads off the model card / transformers when filling builder arguments)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})


def _rope(cfg, model_type: str) -> tuple[float, float | None]:
    """(rope_base, llama3 scale factor or None); NotRepresentable for any other rope."""
    params = dict(cfg.rope_parameters or {})
    kind = params.get("rope_type", "default")
    if params.get("partial_rotary_factor", 1.0) != 1.0 or getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise NotRepresentable("partial_rotary_factor", "torchtune's builders rotate the whole head")
    theta = params["rope_theta"]
    if kind == "default":
        return theta, None
    if kind == "llama3" and model_type == "llama":
        for key, value in _LLAMA3_ROPE_FIXED.items():
            if params.get(key) != value:
                raise NotRepresentable("rope_scaling", f"torchtune's Llama3ScaledRoPE builders fix {key}={value}")
        return theta, params["factor"]
    raise NotRepresentable("rope_scaling", f"no torchtune {model_type} builder takes rope_type {kind!r}")


class TorchtuneAdapter(Adapter):
    """torchtune 0.6.1's FullModelHFCheckpointer conversions and component builders."""

    name = "torchtune"
    model_types = tuple(_MODEL_TYPES)

    # ------------------------------------------------------------------------------ config
    def import_config(self, hf: dict[str, Any]) -> TuneConfig:
        mt = hf.get("model_type")
        if mt not in _MODEL_TYPES:
            raise NotRepresentable("model_type", f"torchtune has no HF checkpointer path for {mt!r}")
        cfg = _resolved(hf)
        heads, hidden = cfg.num_attention_heads, cfg.hidden_size
        kv = cfg.num_key_value_heads or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        tied = bool(cfg.tie_word_embeddings)
        rope_base, llama3_factor = _rope(cfg, mt)
        if getattr(cfg, "attention_bias", False):
            raise NotRepresentable("attention_bias", f"torchtune's {mt} builder has no attention bias option")
        if getattr(cfg, "mlp_bias", False):
            raise NotRepresentable("mlp_bias", f"torchtune's {mt} builder has no MLP bias option")
        common = dict(vocab_size=cfg.vocab_size, num_layers=cfg.num_hidden_layers, num_heads=heads,
                      num_kv_heads=kv, embed_dim=hidden, max_seq_len=cfg.max_position_embeddings,
                      norm_eps=cfg.rms_norm_eps, rope_base=rope_base)
        if mt in ("gemma", "gemma2"):
            act = cfg.hidden_act if mt == "gemma" else cfg.hidden_activation
            if act != "gelu_pytorch_tanh":
                raise NotRepresentable("hidden_act" if mt == "gemma" else "hidden_activation",
                                       "torchtune's gemma MLP is GELU(approximate='tanh')")
            if not tied:
                raise NotRepresentable("tie_word_embeddings", f"torchtune's {mt} output is always TiedLinear")
            common.update(head_dim=head_dim, intermediate_dim=cfg.intermediate_size)
            if mt == "gemma":
                return self._config(hf, "gemma._component_builders:gemma", common)
            if cfg.final_logit_softcapping is None:
                raise NotRepresentable("final_logit_softcapping", "Gemma2FinalNorm always soft-caps (a float)")
            expected = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.num_hidden_layers)]
            if list(cfg.layer_types) != expected:
                raise NotRepresentable("layer_types", "torchtune's gemma2 slides on the even layers")
            if cfg.sliding_window is None:
                raise NotRepresentable("sliding_window", "torchtune's gemma2 needs a window size")
            common.update(hidden_capping_value=cfg.attn_logit_softcapping, final_capping_value=cfg.final_logit_softcapping,
                          sliding_window_size=cfg.sliding_window, query_pre_attn_scalar=cfg.query_pre_attn_scalar)
            return self._config(hf, "gemma2._component_builders:gemma2", common)

        # llama, mistral, qwen2, phi3: builders derive head_dim = embed_dim // num_heads, SiLU MLP
        if hidden % heads or head_dim != hidden // heads:
            raise NotRepresentable("head_dim", f"torchtune's {mt} builder derives head_dim = hidden_size // num_attention_heads")
        if cfg.hidden_act != "silu":
            raise NotRepresentable("hidden_act", "torchtune's FeedForward is SiLU-gated here")
        common["intermediate_dim"] = cfg.intermediate_size
        if mt == "llama":
            if tied:  # llama3_2 is the tied Llama builder; its RoPE is Llama3ScaledRoPE (factor 1 = plain RoPE)
                return self._config(hf, "llama3_2._component_builders:llama3_2",
                                    {**common, "scale_factor": llama3_factor or 1, "tie_word_embeddings": True},
                                    model_type="LLAMA3_2")
            if llama3_factor is not None:
                return self._config(hf, "llama3_1._component_builders:llama3_1", {**common, "scale_factor": llama3_factor})
            return self._config(hf, "llama3._component_builders:llama3", common)
        if mt == "qwen2":
            if any(t != "full_attention" for t in (cfg.layer_types or ())):
                raise NotRepresentable("use_sliding_window", "torchtune's qwen2 builder has no window")
            return self._config(hf, "qwen2._component_builders:qwen2", {**common, "tie_word_embeddings": tied})
        if tied:
            raise NotRepresentable("tie_word_embeddings", f"torchtune's {mt} output is an untied Linear")
        # mistral / phi3: sliding_window passes (torchtune's mistral_7b / phi3_mini builders target
        # checkpoints whose config.json carries one, and drop it): see the module docstring
        return self._config(hf, f"{mt}._component_builders:{mt}", common)

    @staticmethod
    def _config(hf, builder, args, model_type=None) -> TuneConfig:
        return TuneConfig(model_type=model_type or _MODEL_TYPES[hf["model_type"]], checkpoint_config=dict(hf),
                          builder=f"torchtune.models.{builder}", builder_args=args)

    def export_config(self, foreign: TuneConfig) -> dict[str, Any]:
        # torchtune never writes a config.json: save_checkpoint copies the checkpoint's one
        return dict(foreign.checkpoint_config)

    # ----------------------------------------------------------------------------- weights
    def import_weights(self, foreign: TuneConfig, hf_tensors: Mapping[str, torch.Tensor]):
        """FullModelHFCheckpointer.load_checkpoint's conversion (torchtune 0.6.1, verbatim dispatch)."""
        state = {k: hf_tensors[k] for k in hf_tensors}  # the checkpointer's merged_state_dict
        return _checkpointer_function(foreign.model_type, "import")(
            state, **_checkpointer_arguments(foreign.model_type, foreign.checkpoint_config, "import"))

    def export_weights(self, foreign: TuneConfig, state: Mapping[str, torch.Tensor]):
        """FullModelHFCheckpointer.save_checkpoint's conversion (torchtune 0.6.1, verbatim dispatch)."""
        return _checkpointer_function(foreign.model_type, "export")(
            dict(state), **_checkpointer_arguments(foreign.model_type, foreign.checkpoint_config, "export"))

    # ----------------------------------------------------------------------------- forward
    def build(self, foreign: TuneConfig, dtype: torch.dtype):
        from torchtune import training

        module, _, fn = foreign.builder.partition(":")
        builder = getattr(importlib.import_module(module), fn)
        with training.set_default_dtype(dtype):
            return builder(**foreign.builder_args)

    def forward(self, foreign: TuneConfig, state, input_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        model = self.build(foreign, dtype)
        model.load_state_dict(dict(state), strict=True)
        model.eval()
        with torch.no_grad():
            return model(input_ids)


# ------------------------------------------------------------------ the checkpointer's dispatch
#: FullModelHFCheckpointer's choice of conversion functions by model type (torchtune 0.6.1):
#: (module, HF → torchtune, torchtune → HF); any other type takes the generic pair.
_CHECKPOINTER_FUNCTIONS = {
    "PHI3_MINI": ("torchtune.models.phi3._convert_weights", "phi3_hf_to_tune", "phi3_tune_to_hf"),
    "PHI4": ("torchtune.models.phi3._convert_weights", "phi3_hf_to_tune", "phi3_tune_to_hf"),
    "QWEN2": ("torchtune.models.qwen2._convert_weights", "qwen2_hf_to_tune", "qwen2_tune_to_hf"),
    "GEMMA2": ("torchtune.models.gemma2._convert_weights", "gemma2_hf_to_tune", "gemma2_tune_to_hf"),
}
_GENERIC_FUNCTIONS = ("torchtune.models.convert_weights", "hf_to_tune", "tune_to_hf")


def _checkpointer_function(model_type: str, direction: str):
    module, to_tune, to_hf = _CHECKPOINTER_FUNCTIONS.get(model_type, _GENERIC_FUNCTIONS)
    return getattr(importlib.import_module(module), to_tune if direction == "import" else to_hf)


def _checkpointer_arguments(model_type: str, config: Mapping[str, Any], direction: str) -> dict[str, Any]:
    """The keyword arguments the checkpointer passes with the state dict, verbatim."""
    shape = {"num_heads": config["num_attention_heads"], "num_kv_heads": config["num_key_value_heads"],
             "dim": config["hidden_size"]}
    if model_type in ("PHI3_MINI", "PHI4"):
        if direction == "export":
            return {}
        return dict.fromkeys(shape) if shape["num_heads"] == shape["num_kv_heads"] else shape
    if model_type == "QWEN2":
        return {**shape, "tie_word_embeddings": config["tie_word_embeddings"]}
    return {**shape, "head_dim": config.get("head_dim", None)}
