"""The code under test: declarative converters between native checkpoints and HF transformers."""
from .base import Converter
from .deepseek_v2 import DeepseekV2Converter
from .deepseek_v3 import DeepseekV3Converter
from .errors import ConversionError
from .gemma import GemmaConverter
from .gemma2 import Gemma2Converter
from .gemma3_text import Gemma3TextConverter
from .gpt_neox import GPTNeoXConverter
from .llama import LlamaConverter
from .mistral import MistralConverter
from .mixtral import MixtralConverter
from .olmo2 import Olmo2Converter
from .phi3 import Phi3Converter
from .qwen2 import Qwen2Converter
from .qwen2_moe import Qwen2MoeConverter
from .qwen3 import Qwen3Converter
from .qwen3_moe import Qwen3MoeConverter
from .registry import all_converters, detect, get, names, register
from .starcoder2 import Starcoder2Converter

for _cls in (LlamaConverter, MistralConverter, Qwen2Converter, Qwen3Converter,
             Phi3Converter, Olmo2Converter, Starcoder2Converter, GPTNeoXConverter,
             MixtralConverter, Qwen2MoeConverter, Qwen3MoeConverter,
             GemmaConverter, Gemma2Converter, Gemma3TextConverter,
             DeepseekV2Converter, DeepseekV3Converter):
    register(_cls())
