"""The TinyGroundingGPT model: configuration, modeling, processing, presets; registered with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from tinygroundinggpt.model.configuration_tinygroundinggpt import TinyGroundingGPTConfig
from tinygroundinggpt.model.modeling_tinygroundinggpt import (
    PlaceholderMismatchError,
    TinyGroundingGPTForConditionalGeneration,
)
from tinygroundinggpt.model.processing_tinygroundinggpt import TinyGroundingGPTProcessor

AutoConfig.register(TinyGroundingGPTConfig.model_type, TinyGroundingGPTConfig, exist_ok=True)
AutoModel.register(TinyGroundingGPTConfig, TinyGroundingGPTForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(TinyGroundingGPTConfig, TinyGroundingGPTForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TinyGroundingGPTConfig, TinyGroundingGPTProcessor, exist_ok=True)

__all__ = [
    "PlaceholderMismatchError",
    "TinyGroundingGPTConfig",
    "TinyGroundingGPTForConditionalGeneration",
    "TinyGroundingGPTProcessor",
]
