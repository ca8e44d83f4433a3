"""transformers as the reference: its config object for an HF dict, and its logging, silenced or
captured (building configs and models as references must not print their warnings, and the checks
that are about those warnings must see them)."""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Mapping
from typing import Any


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars (restored on exit)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def captured_warnings():
    """Collect python warnings and transformers log records of level WARNING and above."""
    from transformers.utils import logging as hf_logging

    handler = _ListHandler()
    logger = hf_logging.get_logger("transformers")
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logger.addHandler(handler)
    messages = handler.messages
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(level)


def hf_config(hf: Mapping[str, Any]):
    """transformers' config object for an HF config dict (``AutoConfig.for_model``)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**copy.deepcopy(dict(hf)))
