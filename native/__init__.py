"""The native reference model: config schema and a PyTorch model written from the maths. Never
imports ``transformers``: its independence is what makes comparing its forward pass with HF's
meaningful. It does no file I/O and imports nothing else of this project: the native checkpoint
format, its reader and writer live in :mod:`checkpoints`."""
from .config import (
    FORMAT_VERSION,
    AttentionConfig,
    BlockConfig,
    DecoderConfig,
    DeepSeekMoEConfig,
    DefaultRotary,
    DynamicRotary,
    EmbeddingConfig,
    HeadConfig,
    LayerNormConfig,
    LinearRotary,
    Llama3Rotary,
    LongRopeRotary,
    MLAConfig,
    MLPConfig,
    ModelConfig,
    MoEConfig,
    NoRotary,
    RMSNormConfig,
    YarnRotary,
)
from .schema import ConfigError, architecture_fields, get_path, replace_path
from .layout import layer_shapes, state_shapes
from .model import NativeModel
from .init import random_state
