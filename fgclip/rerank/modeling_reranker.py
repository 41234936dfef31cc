"""R2D2-style cross-encoder re-ranking on top of a (frozen) FG-CLIP / FG-CLIP 2 dual encoder.

R2D2 (Xie et al., 2022) pre-ranks with the dual encoder's global similarity, then ranks the
top candidates with two cross encoders: one where the text tokens attend to the image tokens
and one where the image tokens attend to the text tokens, each trained as 2-class matching
(match / no match). :class:`CrossEncoderReranker` holds both: the dual encoder's last-layer
tokens of each side are projected to a common width, each cross encoder is a stack of
pre-norm transformer decoder layers (self-attention over its own tokens, cross-attention to
the other side, MLP) whose masked mean feeds a 2-way head, and the pair score is the mean of
the two matching probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class CrossEncoderRerankerConfig(PretrainedConfig):
    r"""Configuration of :class:`CrossEncoderReranker`.

    Args:
        image_width / text_width: token widths of the dual encoder's vision and text towers.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: of each cross encoder.
        dropout: inside the cross-encoder layers.
        positive_weight: weight of the matching class in the training cross entropy (R2D2's
            fine-tuning code weighs it 2 against 1 for the non-matching class).
        pre_ranking: training also updates the dual encoder with R2D2's global contrastive
            (pre-ranking) loss instead of keeping it frozen.
        distill_momentum, distill_target_weight, distill_feature_weight, distill_feature_mask_ratio,
        distill_queue_size: R2D2's target- and feature-guided distillation while training (see
            :class:`~fgclip.rerank.distillation.Distillation`; off by default).

    The training options are kept in the saved config as a record of how the re-ranker was trained.
    """

    model_type = "fgclip_reranker"
    image_width: int = 768
    text_width: int = 512
    hidden_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    positive_weight: float = 1.0
    pre_ranking: bool = False
    distill_momentum: float | None = None
    distill_target_weight: float = 0.0
    distill_feature_weight: float = 0.0
    distill_feature_mask_ratio: float = 0.0
    distill_queue_size: int = 0


@dataclass
class RerankerOutput(ModelOutput):
    """Matching logits of a batch of P (image, text) pairs.

    Args:
        text_query_logits: (P, 2) of the cross encoder whose queries are the text tokens.
        image_query_logits: (P, 2) of the cross encoder whose queries are the image tokens.
        scores: (P,) mean matching probability of the two (class 1 = match).
        text_query_features / image_query_features: (P, hidden_size) the pooled states that feed
            each cross encoder's head.
    """

    text_query_logits: torch.Tensor | None = None
    image_query_logits: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    text_query_features: torch.Tensor | None = None
    image_query_features: torch.Tensor | None = None


class CrossEncoder(nn.Module):
    """Queries of one modality attending to the other's tokens; masked mean -> 2-way head."""

    def __init__(self, config: CrossEncoderRerankerConfig):
        super().__init__()
        layer = nn.TransformerDecoderLayer(
            config.hidden_size, config.num_attention_heads, config.intermediate_size, config.dropout,
            activation="gelu", layer_norm_eps=config.layer_norm_eps, batch_first=True, norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, config.num_hidden_layers,
                                            norm=nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps))
        self.head = nn.Linear(config.hidden_size, 2)

    def forward(self, queries, query_mask, memory, memory_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, Lq, H) queries and (P, Lm, H) memory with their (P, L) masks of real tokens ->
        (P, 2) logits and the (P, H) pooled states they are computed from."""
        hidden = self.layers(queries, memory, tgt_key_padding_mask=~query_mask.bool(),
                             memory_key_padding_mask=~memory_mask.bool())
        weights = query_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.head(pooled), pooled


class CrossEncoderReranker(PreTrainedModel):
    """The two R2D2 cross encoders over a dual encoder's token features (see the module docstring)."""

    config_class = CrossEncoderRerankerConfig
    config: CrossEncoderRerankerConfig
    base_model_prefix = "reranker"

    def __init__(self, config: CrossEncoderRerankerConfig):
        super().__init__(config)
        eps = config.layer_norm_eps
        self.image_input = nn.Sequential(nn.Linear(config.image_width, config.hidden_size),
                                         nn.LayerNorm(config.hidden_size, eps=eps))
        self.text_input = nn.Sequential(nn.Linear(config.text_width, config.hidden_size),
                                        nn.LayerNorm(config.hidden_size, eps=eps))
        self.text_queries = CrossEncoder(config)
        self.image_queries = CrossEncoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.normal_(std=self.config.initializer_range)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.normal_(std=self.config.initializer_range)
            module.in_proj_bias.zero_()

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_mask: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> RerankerOutput:
        """Score P pairs: row p of the image and text inputs form one pair.

        Args:
            image_tokens: (P, Li, image_width); image_mask: (P, Li) 1 on real tokens.
            text_tokens: (P, Lt, text_width); text_mask: (P, Lt) 1 on real tokens.
        """
        if image_tokens.shape[0] != text_tokens.shape[0]:
            raise ValueError(f"got {image_tokens.shape[0]} images for {text_tokens.shape[0]} texts: pairs are rows")
        image = self.image_input(image_tokens)
        text = self.text_input(text_tokens)
        text_logits, text_pooled = self.text_queries(text, text_mask, image, image_mask)
        image_logits, image_pooled = self.image_queries(image, image_mask, text, text_mask)
        scores = (F.softmax(text_logits.float(), dim=-1)[:, 1] + F.softmax(image_logits.float(), dim=-1)[:, 1]) / 2
        return RerankerOutput(text_query_logits=text_logits, image_query_logits=image_logits, scores=scores,
                              text_query_features=text_pooled, image_query_features=image_pooled)
