"""FG-CLIP training: YAML recipes, the training step module and a transformers Trainer."""
from .config import TrainConfig, load_config
from .module import FGCLIPForTraining
from .trainer import FGCLIPTrainer, TrainResult, last_complete_checkpoint, train

__all__ = ["FGCLIPForTraining", "FGCLIPTrainer", "TrainConfig", "TrainResult", "last_complete_checkpoint",
           "load_config", "train"]
