"""Per-layer sliding windows as HF's Qwen2/Qwen3 configs express them.

HF keys: ``use_sliding_window``, ``sliding_window``, ``max_window_layers`` and ``layer_types``.
transformers derives ``layer_types`` (when absent) as sliding for ``i >= max_window_layers`` if
``use_sliding_window``; explicit ``layer_types`` win. Keys that do not change the forward pass in a
given config (``use_sliding_window``/``sliding_window`` with no sliding layer, ``max_window_layers``
beside explicit ``layer_types``) are carried in metadata so that the round trip reproduces config.json.
"""
from __future__ import annotations

from .declaration import LayerwisePrimitive
from .errors import ConversionError

SLIDING, FULL = "sliding_attention", "full_attention"


class QwenSlidingWindows(LayerwisePrimitive):
    native_paths = ("attention.window",)
    hf_keys = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")

    def __init__(self, sliding_default: int = 4096, max_window_layers_default: int = 28):
        self.sliding_default = sliding_default
        self.max_window_layers_default = max_window_layers_default

    def import_(self, hf, num_layers):
        use = hf.get("use_sliding_window", False)
        window = hf.get("sliding_window", self.sliding_default)
        max_window_layers = hf.get("max_window_layers", self.max_window_layers_default)
        layer_types = hf.get("layer_types", None)
        if not isinstance(use, bool):
            raise ConversionError(f"config.json: use_sliding_window={use!r} must be a boolean")
        metadata = {}
        if layer_types is None:
            active = use and window is not None
            layer_types = [SLIDING if active and i >= max_window_layers else FULL for i in range(num_layers)]
        else:
            if len(layer_types) != num_layers or set(layer_types) - {SLIDING, FULL}:
                raise ConversionError(f"config.json: layer_types={layer_types!r} must list {num_layers} "
                                      f"entries of {FULL!r}/{SLIDING!r}")
            if SLIDING in layer_types and not (use and window is not None):
                raise ConversionError("config.json: layer_types has sliding_attention layers but "
                                      "use_sliding_window/sliding_window disable the window")
        # Inert values are carried, but only where export would not regenerate them, so that
        # import(export(cfg)) == cfg as well as export(import(h)) == h.
        if max_window_layers != self._max_window_layers(layer_types):
            metadata["metadata.max_window_layers"] = max_window_layers
        if SLIDING not in layer_types:  # the window settings are inert: keep them, don't apply them
            if use:
                metadata["metadata.use_sliding_window"] = True
            if (use or hf.has("sliding_window")) and window is not None:
                metadata["metadata.sliding_window"] = window
        if use and window is not None and (not isinstance(window, int) or window < 1):
            raise ConversionError(f"config.json: sliding_window={window!r} must be a positive integer")
        per_layer = [{"attention.window": window if kind == SLIDING else None} for kind in layer_types]
        return per_layer, metadata

    def export(self, layers, get_model):
        metadata = get_model("metadata")
        windows = [block.attention.window for block in layers]
        sizes = {w for w in windows if w is not None}
        if len(sizes) > 1:
            raise ConversionError(f"attention.window differs between sliding layers ({sorted(sizes)}); "
                                  "this format has one sliding_window")
        layer_types = [FULL if w is None else SLIDING for w in windows]
        max_window_layers = metadata.get("max_window_layers", self._max_window_layers(layer_types))
        if not sizes:
            return {
                "use_sliding_window": metadata.get("use_sliding_window", False),
                "sliding_window": metadata.get("sliding_window", None),
                "max_window_layers": max_window_layers,
                "layer_types": layer_types,
            }
        return {
            "use_sliding_window": True,
            "sliding_window": sizes.pop(),
            "max_window_layers": max_window_layers,
            "layer_types": layer_types,
        }

    def _max_window_layers(self, layer_types) -> int:
        """What export writes without metadata: the first sliding layer when the sliding layers are
        a suffix (transformers' own rule then gives the same layer_types), else the default. (The
        explicit layer_types are always written too, so the value never changes the model.)"""
        if SLIDING in layer_types:
            first = layer_types.index(SLIDING)
            if all(t == SLIDING for t in layer_types[first:]):
                return first
        return self.max_window_layers_default
