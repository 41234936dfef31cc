"""R2D2-style re-ranking: cross encoders that re-score a dual encoder's top retrieval candidates."""
from transformers import AutoConfig, AutoModel

from .modeling_reranker import CrossEncoder, CrossEncoderReranker, CrossEncoderRerankerConfig, RerankerOutput
from .ranking import ranked_recall, rerank_topk
from .training import RerankerForTraining, sample_hard_negatives

AutoConfig.register(CrossEncoderRerankerConfig.model_type, CrossEncoderRerankerConfig)
AutoModel.register(CrossEncoderRerankerConfig, CrossEncoderReranker)

__all__ = [
    "CrossEncoder",
    "CrossEncoderReranker",
    "CrossEncoderRerankerConfig",
    "RerankerForTraining",
    "RerankerOutput",
    "ranked_recall",
    "rerank_topk",
    "sample_hard_negatives",
]
