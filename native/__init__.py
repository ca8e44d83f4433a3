"""The native reference model: config schema, a PyTorch model written from the maths, and the
native checkpoint format. Never imports ``transformers``: its independence is what makes comparing
its forward pass with HF's meaningful."""
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
from .checkpoint import CheckpointError, NativeCheckpointReader, load_checkpoint, open_checkpoint, save_checkpoint
from .model import NativeModel
from .init import random_state
