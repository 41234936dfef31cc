"""FG-CLIP: a CLIP dual encoder with a long-text path, dense patch features and region features.

The encoders are transformers' own CLIP modules (``CLIPTextModel``, ``CLIPVisionModel``);
FG-CLIP adds

* a 248-row position table for long captions (``position_embedding_ori`` rows ``0..keep-1``
  and ``position_embedding_res`` rows ``keep..``, the upstream checkpoint layout) with its own
  projection ``text_filip_projection``;
* dense features: the input of the last vision block is run through that block's value path
  (attention replaced by ``out_proj(v_proj(.))``), then ``post_layernorm`` and
  ``visual_projection``, giving one embedding per patch;
* region features: RoIAlign (1x1, aligned) of the dense map;
* two extra temperatures, ``logit_scale_finegraind`` (regions) and ``logit_scale_hardneg``.

Parameter names follow the upstream checkpoints, so ``from_pretrained`` reads them directly.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AttentionInterface, AutoConfig, AutoModel, AutoModelForZeroShotImageClassification,
                          CLIPModel, CLIPTextModel, CLIPVisionModel)
from transformers import initialization as init
from transformers.activations import QuickGELUActivation
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, create_causal_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPMLP,
    CLIPPreTrainedModel,
    CLIPTextEmbeddings,
    eager_attention_forward,
)

from .configuration_fgclip import FGCLIPConfig
from .modeling_common import (IMAGE_BATCH_KEYS, TEXT_BATCH_KEYS, FGCLIPImageOutput, FGCLIPOutput,
                             LongPositionEmbeddings, TokenFeatures, check_attention_mask, check_boxes, check_layers,
                             check_text_kind, ignore_batch_keys, roi_pool, start_long_positions)


# Most queries x keys per head for which CPU inference in bfloat16 takes the math path. Measured
# (docs/benchmarks.md, AVX-512 at 2 threads): the fused kernel takes 1.5-2x the math path's time for
# ViT-B/16's 197 tokens and for captions up to 248 tokens, and less than it from ViT-L/14's 257.
MATH_PATH_MAX_SCORES = 256 * 256


def takes_math_path(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether :func:`sdpa_or_math_attention` runs the math path: on the CPU only, where gradients flow,
    and without gradients in bfloat16 for at most :data:`MATH_PATH_MAX_SCORES` scores per head."""
    if query.device.type != "cpu":
        return False
    if torch.is_grad_enabled() and query.requires_grad:
        return True
    return query.dtype == torch.bfloat16 and query.shape[-2] * key.shape[-2] <= MATH_PATH_MAX_SCORES


def sdpa_or_math_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                           **kwargs):
    """transformers' ``sdpa`` attention, except on the CPU where gradients flow or in bfloat16.

    There the fused CPU kernel is slow: its backward (in bf16 about 15x its own forward for many
    short causal sequences), and its bfloat16 forward (about twice the math path's time for
    ViT-B/16's 197 tokens and for captions), so the math path runs: matmul (:func:`causal_scores`
    for causal attention without a mask), softmax, matmul. The
    softmax runs in the scores' dtype: the CPU kernel accumulates reduced precisions in float32, so
    its bfloat16 probabilities are a float32 softmax's rounded (a few entries of long rows one
    bfloat16 step off), without two copies of the scores. Long sequences at inference, float32
    inference and every other device call ``sdpa`` unchanged (CUDA keeps flash attention), so
    float32 features without gradients are bit for bit those of ``sdpa``.
    """
    if not takes_math_path(query, key):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = module.is_causal if is_causal is None else is_causal
    if attention_mask is None and causal and query.shape[2] > 1:
        scores = causal_scores(query, key, scale)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale
        if attention_mask is not None:
            scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                      else scores + attention_mask)
    weights = F.dropout(scores.softmax(dim=-1).to(value.dtype), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def causal_scores(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, Lq, C) queries, (B, H, Lk, C) keys -> (B, H, Lq, Lk) ``scale q k^T`` with ``-inf`` above
    the diagonal, as one ``baddbmm``: the scaling and the mask in the product instead of two passes
    over the scores (bf16 inference on 150-token captions: 7.8 against 9.6 ms per layer; unmasked
    scores gain nothing from it)."""
    batch_heads, queries, keys = query.shape[:2], query.shape[2], key.shape[2]
    future = torch.ones(queries, keys, dtype=torch.bool, device=query.device).triu(1)
    mask = torch.zeros(queries, keys, dtype=query.dtype, device=query.device).masked_fill_(future, float("-inf"))
    scores = torch.baddbmm(mask, query.reshape(-1, queries, query.shape[-1]),
                           key.reshape(-1, keys, key.shape[-1]).transpose(-1, -2), alpha=scale)
    return scores.view(*batch_heads, queries, keys)


# Registered under its own name (masks as for sdpa); FGCLIPModel selects it where sdpa was chosen.
SDPA_OR_MATH = "sdpa_cpu_math_backward"
AttentionInterface.register(SDPA_OR_MATH, sdpa_or_math_attention)
AttentionMaskInterface.register(SDPA_OR_MATH, sdpa_mask)


QUICK_GELU_SCALE = 1.702  # CLIP's QuickGELU: x * sigmoid(1.702 x)


def quick_gelu_in_place(hidden: torch.Tensor) -> torch.Tensor:
    """``hidden * sigmoid(1.702 hidden)`` bit for bit as transformers computes it, in one new tensor
    instead of three (inference: less memory traffic)."""
    return torch.mul(hidden, QUICK_GELU_SCALE).sigmoid_().mul_(hidden)


class FusedProjectionsAttention(CLIPAttention):
    """transformers' CLIP attention; where gradients flow, the query, key and value projections run
    as one product (one input cast under autocast, one larger matmul forward and two backward
    instead of three and six). Without gradients it is ``CLIPAttention`` unchanged."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        weight = self.q_proj.weight
        # Empty: partitioned by DeepSpeed ZeRO-3, gathered only when q_proj itself runs.
        if not (torch.is_grad_enabled() and weight.requires_grad and weight.numel()):
            return super().forward(hidden_states, attention_mask, **kwargs)
        input_shape = hidden_states.shape[:-1]
        projections = (self.q_proj, self.k_proj, self.v_proj)
        joined = F.linear(hidden_states, torch.cat([p.weight for p in projections]),
                          torch.cat([p.bias for p in projections]))
        queries, keys, values = joined.view(*input_shape, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(self, queries, keys, values, attention_mask, scaling=self.scale,
                                    dropout=self.dropout if self.training else 0.0, **kwargs)
        return self.out_proj(output.reshape(*input_shape, -1).contiguous()), weights


def gradients_flow(hidden_states: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a layer's output needs gradients: trainable weights, or an input that needs them."""
    return torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad)


def onednn_bf16_inference(hidden_states: torch.Tensor) -> bool:
    """Whether a CPU step in bfloat16 (bf16 inputs, or CPU autocast to bf16) can run on oneDNN's
    prepacked bf16 products (:func:`onednn_bf16_linear`)."""
    if hidden_states.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not (autocast_bf16 or hidden_states.dtype == torch.bfloat16):
        return False
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


# Prepacked bf16 weights of each linear layer, outside the modules (oneDNN's opaque tensors neither
# copy nor pickle), made again when a weight changes or moves.
_PACKED_BF16: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def onednn_bf16_linear(hidden_states: torch.Tensor, linear: nn.Linear, activation: str = "none",
                       weight_scale: float = 1.0, bias_scale: float = 1.0) -> torch.Tensor:
    """``activation(hidden_states @ (weight_scale W)^T + bias_scale b)`` in bfloat16 on the CPU.

    oneDNN's product on a bf16 copy of the weight packed in its own layout, with the bias and the
    activation (``"none"`` or ``"swish"``, ``x sigmoid(x)``) applied in its epilogue: no bias
    copied into the output first, no reorder of the weight per call, no separate activation pass.
    Inputs are cast to bf16 as autocast casts them; the output is bf16, as autocast's. The packed
    weights stay cached (an extra bf16 copy of the layer's weight) until the layer is freed.
    """
    parameters = (linear.weight, linear.bias)
    key = (*((p.data_ptr(), p._version) for p in parameters if p is not None), weight_scale, bias_scale)
    cached = _PACKED_BF16.get(linear)
    if cached is None or cached[0] != key:
        weight = (linear.weight.detach() * weight_scale).to(torch.bfloat16)
        bias = None if linear.bias is None else (linear.bias.detach() * bias_scale).to(torch.bfloat16)
        cached = _PACKED_BF16[linear] = (key, torch.ops.mkldnn._reorder_linear_weight(weight, None), bias)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1]).to(torch.bfloat16)
    output = torch.ops.mkldnn._linear_pointwise(flat, cached[1], cached[2], activation, [], "")
    return output.view(*hidden_states.shape[:-1], output.shape[-1])


class PackedBf16Linear(nn.Linear):
    """``nn.Linear`` (same parameters); bfloat16 inference on the CPU runs :func:`onednn_bf16_linear`,
    12-25% faster than autocast's product for the towers' shapes (docs/benchmarks.md). Elsewhere,
    and wherever gradients flow, it is ``nn.Linear`` unchanged."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (self.weight.numel() and not gradients_flow(hidden_states, self.weight)
                and onednn_bf16_inference(hidden_states)):
            return onednn_bf16_linear(hidden_states, self)
        return super().forward(hidden_states)


class FoldedQuickGELUMLP(CLIPMLP):
    """transformers' CLIP MLP, ``fc2(x * sigmoid(1.702 x))`` with ``x = fc1(h)``. Where gradients
    flow through it (trainable weights, or an input that needs gradients: LoRA, a frozen tower inside
    a trained model) it runs as ``silu(h W1'^T + b1') W2'^T + b2`` with ``W1' = 1.702 W1``,
    ``b1' = 1.702 b1``, ``W2' = W2 / 1.702``: the same function (equal up to rounding) with QuickGELU's
    two scalings moved from the (tokens x 4C) activations, four elementwise passes forward and
    backward, onto the weights, and one fused kernel. bfloat16 inference on the CPU runs the same
    folded form as two oneDNN products, the silu in the first one's epilogue
    (:func:`onednn_bf16_linear`). Otherwise it is the exact formula, in place (same bits)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc1, self.fc2
        if not fc1.weight.numel():  # partitioned by DeepSpeed ZeRO-3, gathered only when fc1 itself runs
            return super().forward(hidden_states)
        if not gradients_flow(hidden_states, fc1.weight):
            if onednn_bf16_inference(hidden_states):
                inner = onednn_bf16_linear(hidden_states, fc1, "swish", QUICK_GELU_SCALE, QUICK_GELU_SCALE)
                return onednn_bf16_linear(inner, fc2, weight_scale=1 / QUICK_GELU_SCALE)
            return fc2(quick_gelu_in_place(fc1(hidden_states)))
        hidden = F.silu(F.linear(hidden_states, fc1.weight * QUICK_GELU_SCALE, fc1.bias * QUICK_GELU_SCALE))
        return F.linear(hidden, fc2.weight / QUICK_GELU_SCALE, fc2.bias)


def use_fast_kernels(model: CLIPPreTrainedModel, towers: Sequence[nn.Module]) -> None:
    """The choices above for ``towers`` (CLIP encoders): the attention function only where ``sdpa``
    was chosen (an explicit ``attn_implementation`` stays); joined projections; the folded MLP;
    oneDNN's prepacked bf16 products for the attention's projections at inference
    (:class:`PackedBf16Linear`). Parameters and their names are unchanged."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(SDPA_OR_MATH)
    for tower in towers:
        for layer in tower.encoder.layers:
            attention = layer.self_attn
            if type(attention) is CLIPAttention:
                attention.__class__ = FusedProjectionsAttention
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                if type(projection) is nn.Linear:
                    projection.__class__ = PackedBf16Linear
            if type(layer.mlp) is CLIPMLP and isinstance(layer.mlp.activation_fn, QuickGELUActivation):
                layer.mlp.__class__ = FoldedQuickGELUMLP


class FGCLIPTextEmbeddings(LongPositionEmbeddings, CLIPTextEmbeddings):
    """CLIP token + position embeddings with FG-CLIP's 248-row long position table."""


class FGCLIPModel(CLIPPreTrainedModel):
    """FG-CLIP dual encoder. See the module docstring for what it adds to CLIP."""

    config_class = FGCLIPConfig
    config: FGCLIPConfig
    _no_split_modules = ["FGCLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings"]

    def __init__(self, config: FGCLIPConfig):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.projection_dim = config.projection_dim
        self.text_embed_dim = text_config.hidden_size
        self.vision_embed_dim = vision_config.hidden_size

        self.text_model = CLIPTextModel._from_config(text_config)
        self.text_model.embeddings = FGCLIPTextEmbeddings(
            text_config, config.long_text_length, config.long_keep_positions
        )
        self.vision_model = CLIPVisionModel._from_config(vision_config)

        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.text_filip_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_scale_finegraind = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_scale_hardneg = nn.Parameter(torch.tensor(config.logit_scale_init_value))

        # Position ids of the long path: rows short..short+long-1 of the joined table.
        long_ids = torch.arange(config.long_text_length) + config.short_text_length
        self.long_position_ids = nn.Buffer(long_ids[None], persistent=False)
        self.post_init()
        use_fast_kernels(self, (self.text_model, self.vision_model))

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, FGCLIPTextEmbeddings):
            for table in (module.position_embedding_ori, module.position_embedding_res):
                init.normal_(table.weight, std=factor * 0.02)
        elif isinstance(module, FGCLIPModel):
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            for projection in (module.text_projection, module.text_filip_projection):
                init.normal_(projection.weight, std=module.text_embed_dim**-0.5 * factor)
            for scale in (module.logit_scale, module.logit_scale_finegraind, module.logit_scale_hardneg):
                init.constant_(scale, self.config.logit_scale_init_value)
            long_ids = torch.arange(self.config.long_text_length) + self.config.short_text_length
            init.copy_(module.long_position_ids, long_ids[None])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_clip(cls, clip: str | os.PathLike | CLIPModel, **kwargs) -> "FGCLIPModel":
        """Stage-1 initialisation from a plain CLIP checkpoint (a path, hub id or ``CLIPModel``).

        Copies every CLIP weight, builds both long position tables from the 77-row table by
        :func:`interpolate_long_positions`, copies ``text_projection`` into
        ``text_filip_projection`` and ``logit_scale`` into the two extra temperatures.
        ``kwargs`` go to ``CLIPModel.from_pretrained`` when ``clip`` is a path.
        """
        if not isinstance(clip, CLIPModel):
            clip = CLIPModel.from_pretrained(clip, **kwargs)
        clip_config = clip.config
        config = cls.config_class(
            text_config=clip_config.text_config.to_dict(),
            vision_config=clip_config.vision_config.to_dict(),
            projection_dim=clip_config.projection_dim,
            logit_scale_init_value=clip_config.logit_scale_init_value,
        )
        model = cls(config).to(clip.dtype)
        missing, unexpected = model.load_state_dict(clip.state_dict(), strict=False)
        new_keys = {
            "text_model.embeddings.position_embedding_ori.weight",
            "text_model.embeddings.position_embedding_res.weight",
            "text_filip_projection.weight",
            "logit_scale_finegraind",
            "logit_scale_hardneg",
        }
        if unexpected or set(missing) - new_keys:
            raise ValueError(
                f"CLIP checkpoint does not match the FG-CLIP layout: missing {sorted(set(missing) - new_keys)}, "
                f"unexpected {sorted(unexpected)}"
            )
        start_long_positions(model.text_model.embeddings, config.long_keep_positions, config.long_position_stretch)
        with torch.no_grad():
            model.text_filip_projection.weight.copy_(model.text_projection.weight)
            model.logit_scale_finegraind.copy_(model.logit_scale)
            model.logit_scale_hardneg.copy_(model.logit_scale)
        return model

    # ------------------------------------------------------------------ text
    def pooled_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, long: bool = False
    ) -> torch.Tensor:
        """(N, L) ids -> (N, C) states at each text's first eos after ``final_layer_norm``, before any projection.

        ``attention_mask`` is accepted for a uniform interface and not used: under CLIP's causal
        mask the pooled first-eos position never sees the padding after it (upstream FG-CLIP
        passes no mask either). The last layer runs only at the pooled rows
        (:func:`block_at_positions`): the same states as the whole tower's, with about 7% fewer FLOPs.
        """
        text = self.text_model
        position_ids = self.long_position_ids[:, : input_ids.shape[1]] if long else None
        hidden = text.embeddings(input_ids=input_ids, position_ids=position_ids)
        mask = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        for layer in text.encoder.layers[:-1]:
            hidden = layer(hidden, mask, is_causal=True)
        positions = self.pooled_positions(input_ids)
        causal_rows = torch.arange(input_ids.shape[1], device=input_ids.device) <= positions[:, None]
        return text.final_layer_norm(block_at_positions(text.encoder.layers[-1], hidden, positions, causal_rows))

    def pooled_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N,) the position each text is pooled at, as transformers' ``CLIPTextModel``
        pools: the first eos, or the largest id for the pre-2023 configs whose ``eos_token_id`` is 2."""
        eos = self.config.text_config.eos_token_id
        ids = input_ids.to(torch.int)
        return ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)

    def project_text(self, pooled: torch.Tensor, text_kind: str) -> torch.Tensor:
        """(N, C) pooled states -> (N, D): ``text_filip_projection`` for long texts, ``text_projection`` else."""
        return (self.text_filip_projection if check_text_kind(text_kind) == "long" else self.text_projection)(pooled)

    def trim_padding(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The shortest inputs with the same features: columns after the last first-eos are dropped
        (causal mask + first-eos pooling)."""
        width = int(self.pooled_positions(input_ids).max()) + 1
        return input_ids[:, :width], None if attention_mask is None else attention_mask[:, :width]

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        text_kind: str = "short",
        normalize: bool = False,
        **batch_keys,
    ) -> torch.Tensor:
        """Embed token ids of one text kind.

        Args:
            input_ids: (N, L) CLIP BPE ids, each row containing the eos token; padding may be
                shorter than the kind's maximum (causal mask + first-eos pooling).
            attention_mask: (N, L), accepted and not needed (see :meth:`pooled_text`).
            text_kind: ``"short"`` and ``"region"`` use the 77-row table and ``text_projection``;
                ``"long"`` uses the 248-row table and ``text_filip_projection``.
            batch_keys: image keys of a processor batch (ignored), so ``get_text_features(**batch)`` works.
        Returns:
            (N, D) text embeddings.
        """
        check_attention_mask(attention_mask)
        ignore_batch_keys(batch_keys, IMAGE_BATCH_KEYS, "get_text_features")
        is_long = check_text_kind(text_kind) == "long"
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty (N, L) tensor, got shape {tuple(input_ids.shape)}")
        max_length = self.config.long_text_length if is_long else self.config.short_text_length
        if input_ids.shape[1] > max_length:
            raise ValueError(
                f"{text_kind} texts take at most {max_length} tokens, got {input_ids.shape[1]}; "
                f"tokenize with FGCLIPProcessor(text=texts, text_kind={text_kind!r})"
            )
        eos = self.config.text_config.eos_token_id
        if eos != 2 and not bool((input_ids == eos).any(dim=1).all()):
            raise ValueError(f"every text must contain the eos token {eos} (its features are pooled there)")
        features = self.project_text(self.pooled_text(input_ids, long=is_long), text_kind)
        return F.normalize(features, dim=-1) if normalize else features

    def _text_outputs(self, input_ids: torch.Tensor, long: bool):
        position_ids = self.long_position_ids[:, : input_ids.shape[1]] if long else None
        return self.text_model(input_ids=input_ids, position_ids=position_ids)

    def get_text_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, text_kind: str = "short"
    ) -> TokenFeatures:
        """Per-token text states (after ``final_layer_norm``) for a cross-encoder re-ranker; the mask is
        1 up to and including each text's first eos (the causal tower's real tokens)."""
        check_attention_mask(attention_mask)
        outputs = self._text_outputs(input_ids, check_text_kind(text_kind) == "long")
        is_eos = (input_ids == self.config.text_config.eos_token_id).int()
        mask = (is_eos.cumsum(dim=1) - is_eos == 0).long()  # no eos before this position
        return TokenFeatures(outputs.last_hidden_state, mask, self.project_text(outputs.pooler_output, text_kind))

    # ------------------------------------------------------------------ vision
    def _check_pixels(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.vision_config.num_channels:
            raise ValueError(
                f"pixel_values must be (B, {self.config.vision_config.num_channels}, H, W), "
                f"got shape {tuple(pixel_values.shape)}"
            )
        patch = self.config.vision_config.patch_size
        height, width = pixel_values.shape[-2:]
        if height < patch or width < patch:
            raise ValueError(f"images must be at least {patch}x{patch} pixels, got {height}x{width}")
        return height // patch, width // patch

    def _block_outputs(
        self, pixel_values: torch.Tensor, layers: Sequence[int] = (), until: int | None = None
    ) -> tuple[torch.Tensor, list]:
        """Run blocks ``0..until-1`` (default: all but the last): the tokens they output,
        (B, 1 + h*w, C), and the outputs of the blocks in ``layers`` in that order."""
        vision = self.vision_model
        size = self.config.vision_config.image_size
        interpolate = tuple(pixel_values.shape[-2:]) != (size, size)
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        hidden = vision.pre_layrnorm(hidden)
        until = len(vision.encoder.layers) - 1 if until is None else until
        kept = {}
        for index, layer in enumerate(vision.encoder.layers[:until]):
            hidden = layer(hidden, None)
            if index in layers:
                kept[index] = hidden
        return hidden, [kept[index] for index in layers]

    def value_path_features(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, 1 + h*w, C) tokens entering the last block -> (B, h*w, D), see :func:`value_path_tokens`."""
        return value_path_tokens(self.vision_model, self.visual_projection, hidden_states)

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        dense: bool = True,
        normalize: bool = False,
        boxes: list[torch.Tensor] | None = None,
        image_embeds: bool = True,
        **batch_keys,
    ) -> FGCLIPImageOutput:
        """One backbone pass giving the global embeddings, the patch embeddings if ``dense`` and the
        region embeddings of ``boxes`` if given.

        Args:
            pixel_values: (B, 3, H, W); sizes other than the training size use bicubically
                interpolated position embeddings.
            boxes: one (K_i, 4) xyxy tensor per image in input pixels.
            image_embeds: compute the global (CLS) embeddings; regions and patches do not need them.
        """
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "encode_image")
        grid_h, grid_w = self._check_pixels(pixel_values)
        batch = pixel_values.shape[0]
        checked = None if boxes is None else check_boxes(boxes, batch, *pixel_values.shape[-2:])
        hidden, _ = self._block_outputs(pixel_values)
        output = FGCLIPImageOutput(spatial_shapes=torch.tensor([[grid_h, grid_w]] * batch, device=pixel_values.device))
        block = self.vision_model.encoder.layers[-1]
        needs_tokens = dense or checked is not None
        # The CLS row of the last block and its value path share the layer norm and value projection.
        normed = block.layer_norm1(hidden) if needs_tokens else None
        values = block.self_attn.v_proj(normed) if needs_tokens else None
        if image_embeds:
            cls = block_at_positions(block, hidden, hidden.new_zeros(batch, dtype=torch.long), normed=normed,
                                     values=values)
            output.image_embeds = self.visual_projection(self.vision_model.post_layernorm(cls))
        if needs_tokens:
            tokens = self.project_dense(value_path_block(block, hidden, values)[:, 1:])
            dense_features = tokens.reshape(batch, grid_h, grid_w, tokens.shape[-1])
            if checked is not None:
                output.region_embeds = roi_pool(dense_features, checked, self.config.vision_config.patch_size)
            if dense:
                output.dense_features = dense_features
        return output.normalized() if normalize else output

    def dense_maps(self, output: FGCLIPImageOutput) -> list[torch.Tensor]:
        """The (h_i, w_i, D) patch-feature map of each image of an :meth:`encode_image` output."""
        return list(output.dense_features)

    def vision_hidden_states(self, pixel_values: torch.Tensor, layers: Sequence[int], **batch_keys) -> list[torch.Tensor]:
        """Patch tokens (B, h*w, C) after each block of ``layers`` (zero-based, negative from the end;
        CLS dropped); blocks after the last one asked for are not run.

        The last block's entry is its value path, ``x + out_proj(v_proj(ln1(x)))`` then the
        MLP: the tokens FG-CLIP's dense features are projected from (:meth:`project_dense`), which
        CLIPSelf's F-ViT also feeds to its top pyramid level.
        """
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "vision_hidden_states")
        self._check_pixels(pixel_values)
        last = self.config.vision_config.num_hidden_layers - 1
        layers = check_layers(layers, last + 1)
        inner = [index for index in layers if index != last]
        hidden, kept = self._block_outputs(pixel_values, inner, until=last if last in layers else max(inner) + 1)
        states = dict(zip(inner, kept))
        if last in layers:
            states[last] = value_path_block(self.vision_model.encoder.layers[-1], hidden)
        return [states[index][:, 1:] for index in layers]

    def project_dense(self, tokens: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) value-path patch tokens of the last block -> (B, N, D) dense features
        (``post_layernorm``, ``visual_projection``). ``pixel_attention_mask`` is unused (no padding)."""
        return self.visual_projection(self.vision_model.post_layernorm(tokens))

    def get_image_tokens(self, pixel_values: torch.Tensor, **batch_keys) -> TokenFeatures:
        """(B, 3, H, W) -> the (B, 1 + h*w, C) vision tokens after ``post_layernorm`` (all real) and
        the global embeddings: the image side of a cross-encoder re-ranker."""
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "get_image_tokens")
        self._check_pixels(pixel_values)
        hidden = self.vision_model.encoder.layers[-1](self._block_outputs(pixel_values)[0], None)
        tokens = self.vision_model.post_layernorm(hidden)
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return TokenFeatures(tokens, mask, self.visual_projection(tokens[:, 0]))

    def get_image_features(self, pixel_values: torch.Tensor, normalize: bool = False, **batch_keys) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) global image embeddings (CLS -> post_layernorm -> projection)."""
        return self.encode_image(pixel_values, dense=False, normalize=normalize, **batch_keys).image_embeds

    def get_dense_features(self, pixel_values: torch.Tensor, normalize: bool = False, **batch_keys) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, D) patch embeddings; the last block's attention is skipped."""
        return self.encode_image(pixel_values, normalize=normalize, image_embeds=False, **batch_keys).dense_features

    def pool_regions(self, dense_features: torch.Tensor, boxes: list[torch.Tensor], normalize: bool = False) -> torch.Tensor:
        """RoIAlign (1x1, aligned, adaptive sampling) of a dense map.

        Args:
            dense_features: (B, h, w, D) from :meth:`get_dense_features` / :meth:`encode_image`.
            boxes: one (K_i, 4) xyxy tensor per image, in input-pixel coordinates.
        Returns:
            (sum K_i, D) region embeddings in the order of ``boxes``.
        """
        patch = self.config.vision_config.patch_size
        num_images, grid_h, grid_w = dense_features.shape[:3]
        checked = check_boxes(boxes, num_images, grid_h * patch, grid_w * patch)
        regions = roi_pool(dense_features, checked, patch)
        return F.normalize(regions, dim=-1) if normalize else regions

    def get_region_features(
        self, pixel_values: torch.Tensor, boxes: list[torch.Tensor], normalize: bool = False, **batch_keys
    ) -> torch.Tensor:
        """Region embeddings of many boxes from one backbone pass per image.

        Args:
            pixel_values: (B, 3, H, W).
            boxes: list of B tensors (K_i, 4), xyxy in input-pixel coordinates (a processor
                batch's ``boxes``).
        Returns:
            (sum K_i, D), image 0's boxes first.
        """
        output = self.encode_image(pixel_values, dense=False, boxes=boxes, image_embeds=False, **batch_keys)
        return F.normalize(output.region_embeds, dim=-1) if normalize else output.region_embeds

    # ------------------------------------------------------------------ training
    def global_logit_parameters(self) -> dict[str, torch.Tensor]:
        """The global loss's temperature, as keyword arguments of :class:`~fgclip.losses.FGCLIPLoss`."""
        return {"logit_scale": self.logit_scale.reshape(())}

    def set_trainable_terms(self, regional: bool, hard_negatives: bool) -> None:
        """Freeze what no trained loss term uses: the temperature of a term that does not train."""
        self.logit_scale_finegraind.requires_grad_(regional)
        self.logit_scale_hardneg.requires_grad_(hard_negatives)

    # ------------------------------------------------------------------ both
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        text_kind: str = "short",
        **batch_keys,
    ) -> FGCLIPOutput:
        """CLIP-style image-text logits for one text kind, scaled by ``exp(logit_scale)``.

        Arguments in transformers' order (``input_ids`` first), as ``model(**processor(images=..., text=...))``.
        """
        ignore_batch_keys(batch_keys, ("boxes", "image_sizes"), "forward")
        image_embeds = self.get_image_features(pixel_values, normalize=True)
        text_embeds = self.get_text_features(input_ids, attention_mask, text_kind, normalize=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return FGCLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
        )


def value_path_tokens(vision_model: nn.Module, visual_projection: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """Run the last block of a CLIP vision transformer with attention replaced by its value path.

    ``x + out_proj(v_proj(ln1(x)))``, then the block's MLP, ``post_layernorm`` and the
    projection; CLS is dropped. Works for FG-CLIP and plain CLIP towers alike.

    Args:
        vision_model: transformers ``CLIPVisionTransformer``.
        hidden_states: (B, 1 + h*w, C) tokens entering the last block (``hidden_states[-2]``).
    Returns:
        (B, h*w, D) projected patch embeddings, unnormalised.
    """
    hidden = value_path_block(vision_model.encoder.layers[-1], hidden_states)
    return visual_projection(vision_model.post_layernorm(hidden[:, 1:]))


def value_path_block(block: nn.Module, hidden_states: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """A CLIP encoder layer with attention replaced by its value path:
    ``x + out_proj(v_proj(ln1(x)))``, then ``x + mlp(ln2(x))``; shapes unchanged. ``values``:
    ``v_proj(ln1(x))`` if already computed."""
    attention = block.self_attn
    values = attention.v_proj(block.layer_norm1(hidden_states)) if values is None else values
    hidden = hidden_states + attention.out_proj(values)
    return hidden + block.mlp(block.layer_norm2(hidden))


def block_at_positions(
    block: nn.Module,
    hidden_states: torch.Tensor,
    positions: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    normed: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """A CLIP encoder layer's output at one position of each sequence: (N, L, C) -> (N, C).

    What pooling reads of a last layer: keys and values are projected for every token, the
    query, attention, ``out_proj`` and MLP run only at ``positions`` (the CLS or first-eos row),
    which skips about 10/12 of the layer's matmul FLOPs. Equal to the whole layer's row up to
    rounding (other product shapes).

    Args:
        positions: (N,) the row of each sequence.
        key_mask: (N, L) bool, the keys each row attends (the text tower's causal row); ``None``: all.
        normed / values: ``layer_norm1(hidden_states)`` and its value projection, if already computed.
    """
    attention = block.self_attn
    batch = hidden_states.shape[0]
    rows = torch.arange(batch, device=hidden_states.device)
    normed = block.layer_norm1(hidden_states) if normed is None else normed
    values = attention.v_proj(normed) if values is None else values

    def heads(states: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, H, L, C / H)
        return states.view(batch, -1, attention.num_heads, attention.head_dim).transpose(1, 2)

    query = heads(attention.q_proj(normed[rows, positions]))
    mask = None if key_mask is None else key_mask[:, None, None, :]
    output, _ = sdpa_or_math_attention(attention, query, heads(attention.k_proj(normed)), heads(values), mask,
                                       scaling=attention.scale, is_causal=False)
    hidden = hidden_states[rows, positions] + attention.out_proj(output.reshape(batch, -1))
    return hidden + block.mlp(block.layer_norm2(hidden))


AutoConfig.register(FGCLIPConfig.model_type, FGCLIPConfig, exist_ok=True)
AutoModel.register(FGCLIPConfig, FGCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(FGCLIPConfig, FGCLIPModel, exist_ok=True)
