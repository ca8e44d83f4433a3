"""Planted bugs for the fuzz meta-tests, with a known smallest witness, so the case ``convcheck
fuzz`` saves can be checked for minimality. They sit on the export side: the hand-written examples
are real HF configs imported by the converter under test, so an import-side bug would corrupt the
example and its round trip alike. Importable by path (``--converter
tests.meta.fuzz_planted:LastLayerDropped``), so pytest-xdist workers load them too.
"""
from __future__ import annotations

from converters.llama import LlamaConverter


class LastLayerDropped(LlamaConverter):
    """One layer fewer written whenever there are several (an off-by-one in the layer loop, guarded
    for one-layer models). Two layers are needed to show it; Llama-3.1-8B (32) shows it at once."""

    def export_config(self, cfg):
        hf = super().export_config(cfg)
        if hf["num_hidden_layers"] > 1:
            hf["num_hidden_layers"] -= 1
        return hf
