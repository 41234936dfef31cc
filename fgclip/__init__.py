"""fgclip: fine-grained vision-language alignment (FG-CLIP) for PyTorch and transformers."""
from transformers import AutoConfig, AutoModel

from .configuration_fgclip import FGCLIPConfig
from .modeling_fgclip import FGCLIPImageOutput, FGCLIPModel, FGCLIPOutput, interpolate_long_positions
from .processing_fgclip import FGCLIPProcessor

AutoConfig.register(FGCLIPConfig.model_type, FGCLIPConfig)
AutoModel.register(FGCLIPConfig, FGCLIPModel)

__all__ = [
    "FGCLIPConfig",
    "FGCLIPImageOutput",
    "FGCLIPModel",
    "FGCLIPOutput",
    "FGCLIPProcessor",
    "interpolate_long_positions",
]
