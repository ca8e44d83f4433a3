"""The native reference model: config schema and a PyTorch model written from the maths. Never
imports ``transformers``: its independence is what makes comparing its forward pass with HF's
meaningful. It does no file I/O and imports nothing else of this project: the native checkpoint
format, its reader and writer live in :mod:`checkpoints`."""
from .config import (
    FORMAT_VERSION,
    AttentionConfig,
    BlockConfig,
    DecoderConfig,
    EmbeddingConfig,
    HeadConfig,
    LayerNormConfig,
    MLAConfig,
    ModelConfig,
    RMSNormConfig,
)
from .feedforward_config import DeepSeekMoEConfig, MLPConfig, MoEConfig
from .rotary_config import (
    DefaultRotary,
    DynamicRotary,
    LinearRotary,
    Llama3Rotary,
    LongRopeRotary,
    NoRotary,
    YarnRotary,
)
from .schema import ConfigError, architecture_fields, get_path, replace_path
from .layout import layer_shapes, state_shapes
from .model import NativeModel
from .init import random_state
