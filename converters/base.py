"""The Converter base class: a declaration of config sections and weight rules, nothing else.

Subclasses override ``model_section``/``layer_section`` *by key* (``{**super().layer_section(),
"window": ...}``), so a variant states only its differences from its parent. The same declaration
drives ``export_config``, ``import_config`` and the coverage checks; ``weight_rules`` drives both
weight directions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator, Mapping

import torch

import native

from .config_primitives import Carried, ConfigPrimitive, ConstantExport
from .declaration import Declaration, LayerwisePrimitive, unclaimed_architecture_fields
from .errors import ConversionError
from .key_policy import FILE_KEYS
from .rope import DEFAULT_THETA, TYPE_ALIAS_KEY, canonical_rope, has_type_alias, with_type_alias

#: HF keys that describe the file, not the model: dropped on import, regenerated on export (any
#: other key is claimed by a declaration, carried verbatim or refused: see converters/key_policy.py).
METADATA_KEYS = FILE_KEYS

#: ``PretrainedConfig``'s own keys that do not change a causal LM's logits (labels for
#: classification heads, output switches): carried through native metadata when present.
PRETRAINED_CARRIED = ("id2label", "label2id", "problem_type", "return_dict", "output_hidden_states",
                      "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder")


class Converter:
    """One HF ``model_type``. Subclasses set the class attributes and the sections."""

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""  # the HF ``*ForCausalLM`` class name
    default_theta: ClassVar[float] = DEFAULT_THETA

    # ------------------------------------------------------------------------------ declaration
    def model_section(self) -> dict[str, ConfigPrimitive]:
        return {"model_type": ConstantExport("model_type", self.model_type),
                "pretrained_carried": Carried(PRETRAINED_CARRIED)}

    def layer_section(self) -> dict[str, ConfigPrimitive | LayerwisePrimitive]:
        return {}

    def declaration(self) -> Declaration:
        return Declaration(self.model_section(), self.layer_section(), model_type=self.model_type)

    def weight_rules(self, cfg: native.ModelConfig) -> list:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- config
    def export_config(self, cfg: native.ModelConfig) -> dict[str, Any]:
        hf = self.declaration().export(cfg)
        hf["architectures"] = [self.architecture]
        if cfg.metadata.get(TYPE_ALIAS_KEY):
            with_type_alias(hf)
        return dict(sorted(hf.items()))

    def import_config(self, hf: Mapping[str, Any]) -> native.ModelConfig:
        if hf.get("model_type") != self.model_type:
            raise ConversionError(f"config.json: model_type={hf.get('model_type')!r}, "
                                  f"this converter reads {self.model_type!r}")
        canonical = self.canonical_hf(hf)
        cfg = self.declaration().import_(canonical, METADATA_KEYS)
        if has_type_alias(hf):
            cfg = dataclasses.replace(cfg, metadata={**cfg.metadata, TYPE_ALIAS_KEY: True})
        return cfg

    def canonical_hf(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        """Rewrite accepted legacy forms (v4 rope keys) into the one form the declaration reads."""
        return canonical_rope(hf, self.default_theta)

    def fit_checkpoint(self, cfg: native.ModelConfig, hf_names) -> native.ModelConfig:
        """``cfg`` adjusted to what an HF checkpoint carries beyond its config.json (the tensor
        names, before any is read): DeepSeek's MTP layers. Most formats: unchanged."""
        return cfg

    def unclaimed_fields(self, cfg: native.ModelConfig) -> list[str]:
        return unclaimed_architecture_fields(self.declaration(), cfg)

    # ---------------------------------------------------------------------------------- weights
    def export_weights(self, cfg: native.ModelConfig, state: Mapping[str, torch.Tensor]
                       ) -> Iterator[tuple[str, torch.Tensor]]:
        from .weights import convert_stream

        self.export_config(cfg)  # refuse what the format cannot express before touching tensors
        return convert_stream(self.weight_rules(cfg), state, "export", native.state_shapes(cfg))

    def import_weights(self, cfg: native.ModelConfig, hf_state: Mapping[str, torch.Tensor]
                       ) -> Iterator[tuple[str, torch.Tensor]]:
        from .weights import convert_stream, export_shapes

        rules = self.weight_rules(cfg)
        return convert_stream(rules, hf_state, "import", export_shapes(rules, native.state_shapes(cfg)))

    def hf_shapes(self, cfg: native.ModelConfig) -> dict[str, tuple[int, ...]]:
        from .weights import export_shapes

        return export_shapes(self.weight_rules(cfg), native.state_shapes(cfg))

    # --------------------------------------------------- the adapter protocol (converters.adapters)
    name: ClassVar[str] = "native"

    @property
    def model_types(self) -> tuple[str, ...]:
        return (self.model_type,)

    def forward(self, cfg: native.ModelConfig, state: Mapping[str, torch.Tensor], input_ids: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        """The native model's logits: native is this adapter's foreign format."""
        model = native.NativeModel(cfg)
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
        return model.eval()(input_ids)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_type}>"
