"""fgclip: fine-grained vision-language alignment (FG-CLIP) for PyTorch and transformers."""
from transformers import AutoConfig, AutoModel

from .configuration_fgclip import FGCLIPConfig
from .configuration_fgclip2 import FGCLIP2Config, FGCLIP2TextConfig, FGCLIP2VisionConfig
from .modeling_fgclip import FGCLIPImageOutput, FGCLIPModel, FGCLIPOutput, interpolate_long_positions
from .modeling_fgclip2 import FGCLIP2ImageOutput, FGCLIP2Model
from .processing_fgclip import FGCLIPProcessor
from .processing_fgclip2 import FGCLIP2Images, FGCLIP2Processor

AutoConfig.register(FGCLIPConfig.model_type, FGCLIPConfig)
AutoModel.register(FGCLIPConfig, FGCLIPModel)
AutoConfig.register(FGCLIP2Config.model_type, FGCLIP2Config)
AutoModel.register(FGCLIP2Config, FGCLIP2Model)

__all__ = [
    "FGCLIP2Config",
    "FGCLIP2ImageOutput",
    "FGCLIP2Images",
    "FGCLIP2Model",
    "FGCLIP2Processor",
    "FGCLIP2TextConfig",
    "FGCLIP2VisionConfig",
    "FGCLIPConfig",
    "FGCLIPImageOutput",
    "FGCLIPModel",
    "FGCLIPOutput",
    "FGCLIPProcessor",
    "interpolate_long_positions",
]
