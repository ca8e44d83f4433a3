"""The code under test: declarative converters between native checkpoints and HF transformers."""
from .base import Converter
from .errors import ConversionError
from .llama import LlamaConverter
from .mistral import MistralConverter
from .qwen2 import Qwen2Converter
from .qwen3 import Qwen3Converter
from .registry import all_converters, detect, get, names, register

for _cls in (LlamaConverter, MistralConverter, Qwen2Converter, Qwen3Converter):
    register(_cls())
