"""FG-CLIP 2: the bilingual FG-CLIP on SigLIP 2 towers (NaFlex images, Gemma-tokenized text).

The encoders are transformers' own ``Siglip2TextModel`` and ``Siglip2VisionModel``; FG-CLIP 2
adds, under the upstream ``qihoo360/fg-clip2-*`` parameter names,

* a 196-row long position table (``position_embedding_ori`` rows ``0..keep-1``,
  ``position_embedding_res`` rows ``keep..``) built from the 64-row one as in FG-CLIP;
* a head per text kind: ``text_model.head`` for short captions, ``longtext_head`` for long
  ones, ``boxtext_head`` for region (box) captions (the official ``walk_type`` ``"short"`` /
  ``"long"`` / ``"box"``), each on the last token's hidden state (SigLIP pools the last
  position, so texts are padded to a fixed length: 64 or 196 tokens, or any length up to
  those); the long and box heads are ``hidden_size x hidden_size`` as the official model builds them;
* ``dense_feature_head``: a multi-head-attention-pooling block whose attention runs with
  every patch as its own query (no probe), giving one feature per patch; region features are
  RoIAlign (1x1, aligned) of each image's own ``h x w`` patch grid, L2-normalised upstream;
* ``logit_scale`` / ``logit_bias`` of the sigmoid loss, and for training the region and
  hard-negative temperatures ``logit_scale_finegraind`` / ``logit_scale_hardneg`` (loaded and
  saved whenever a checkpoint holds them, as the official training writes them).

Images are NaFlex inputs: ``pixel_values`` (B, N, 3 * 16 * 16) patches, ``pixel_attention_mask``
(B, N) and ``spatial_shapes`` (B, 2) = each image's patch grid ``(h, w)``, ``h * w <= N``.
Boxes are xyxy in *input pixels* of each image's grid, ``0..w*16`` by ``0..h*16``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align
from transformers import Siglip2Model, Siglip2TextModel, Siglip2VisionModel
from transformers import initialization as init
from transformers.models.siglip2.modeling_siglip2 import (
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2PreTrainedModel,
    Siglip2TextEmbeddings,
)

from .checkpoint_files import stored_parameter_names
from .configuration_fgclip2 import FGCLIP2Config
from .modeling_common import (
    IMAGE_BATCH_KEYS,
    TEXT_BATCH_KEYS,
    FGCLIPImageOutput,
    FGCLIPOutput,
    LongPositionEmbeddings,
    TokenFeatures,
    check_attention_mask,
    check_boxes,
    check_layers,
    check_text_kind,
    ignore_batch_keys,
    roi_pool,
    start_long_positions,
)

# SigLIP's initial temperature and bias (Zhai et al. 2023): t' = log 10, b = -10.
LOGIT_SCALE_INIT = 2.302585092994046
LOGIT_BIAS_INIT = -10.0
# Initial log temperature of the regional and hard-negative terms: the official launch's
# ``log_scale`` (train_fgclip2.py ModelArguments), trained only.
REGION_LOGIT_SCALE_INIT = 4.6052
REGION_TEMPERATURE_KEYS = ("logit_scale_finegraind", "logit_scale_hardneg")
# The official ``walk_type`` names of the text kinds.
WALK_TYPES = {"short": "short", "long": "long", "box": "region"}
# from_pretrained keywords that locate a checkpoint's files (passed on to the key lookup).
HUB_KEYWORDS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


def resolve_text_kind(text_kind: str, walk_type: str | None) -> str:
    """Our ``text_kind`` from the official ``walk_type`` (``"box"`` is our ``"region"``), if given."""
    if walk_type is None:
        return text_kind
    if walk_type.lower() not in WALK_TYPES:
        raise ValueError(f"Invalid walk_type {walk_type!r}: expected one of {', '.join(WALK_TYPES)}")
    kind = WALK_TYPES[walk_type.lower()]
    if text_kind not in ("short", kind):
        raise ValueError(f"text_kind {text_kind!r} and walk_type {walk_type!r} disagree")
    return kind


class FGCLIP2TextEmbeddings(LongPositionEmbeddings, Siglip2TextEmbeddings):
    """SigLIP 2 token + position embeddings with FG-CLIP 2's 196-row long position table."""


class FGCLIP2Model(Siglip2PreTrainedModel):
    """FG-CLIP 2 dual encoder. See the module docstring for what it adds to SigLIP 2."""

    config_class = FGCLIP2Config
    config: FGCLIP2Config
    base_model_prefix = "fgclip2"
    _no_split_modules = [*Siglip2PreTrainedModel._no_split_modules, "FGCLIP2TextEmbeddings"]

    def __init__(self, config: FGCLIP2Config):
        super().__init__(config)
        text_config, vision_config = config.text_config, config.vision_config
        self.text_model = Siglip2TextModel._from_config(text_config)
        self.text_model.embeddings = FGCLIP2TextEmbeddings(text_config, text_config.longtext_len, text_config.keep_len)
        self.vision_model = Siglip2VisionModel._from_config(vision_config)
        width = text_config.hidden_size
        self.longtext_head = nn.Linear(width, width)  # hidden x hidden, as the official model
        self.boxtext_head = nn.Linear(width, width)
        self.dense_feature_head = Siglip2MultiheadAttentionPoolingHead(vision_config)
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))
        self.logit_bias = nn.Parameter(torch.full((1,), LOGIT_BIAS_INIT))
        if config.region_temperatures:
            self._add_region_temperatures()
        long_ids = torch.arange(config.long_text_length) + config.short_text_length
        self.long_position_ids = nn.Buffer(long_ids[None], persistent=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FGCLIP2Model):
            init.constant_(module.logit_scale, LOGIT_SCALE_INIT)
            init.constant_(module.logit_bias, LOGIT_BIAS_INIT)
            if module.config.region_temperatures:
                init.constant_(module.logit_scale_finegraind, REGION_LOGIT_SCALE_INIT)
                init.constant_(module.logit_scale_hardneg, REGION_LOGIT_SCALE_INIT)
            long_ids = torch.arange(self.config.long_text_length) + self.config.short_text_length
            init.copy_(module.long_position_ids, long_ids[None])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs) -> "FGCLIP2Model":
        """``PreTrainedModel.from_pretrained``; a checkpoint that stores the training-only temperatures
        (``logit_scale_finegraind`` / ``logit_scale_hardneg``, as the official training saves them)
        loads them even when its config.json (e.g. one the official code wrote) lacks
        ``region_temperatures``."""
        hub_kwargs = {key: kwargs[key] for key in HUB_KEYWORDS if key in kwargs}
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if isinstance(config, FGCLIP2Config) and not config.region_temperatures:
            stored = stored_parameter_names(pretrained_model_name_or_path, **hub_kwargs)
            config.region_temperatures = set(REGION_TEMPERATURE_KEYS) <= stored
        return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def from_siglip2(cls, siglip2: str | os.PathLike | Siglip2Model, **kwargs) -> "FGCLIP2Model":
        """Initialisation from a plain SigLIP 2 checkpoint (a path, hub id or ``Siglip2Model``).

        Copies every SigLIP 2 weight, builds both long position tables from the 64-row table by
        :func:`~fgclip.interpolate_long_positions`, copies ``text_model.head`` into
        ``longtext_head`` and ``boxtext_head`` and the vision attention-pooling head into
        ``dense_feature_head``. ``kwargs`` go to ``Siglip2Model.from_pretrained``.
        """
        if not isinstance(siglip2, Siglip2Model):
            siglip2 = Siglip2Model.from_pretrained(siglip2, **kwargs)
        source = siglip2.config
        config = cls.config_class(text_config=source.text_config.to_dict(), vision_config=source.vision_config.to_dict())
        model = cls(config).to(siglip2.dtype)
        missing, unexpected = model.load_state_dict(siglip2.state_dict(), strict=False)
        new_prefixes = ("text_model.embeddings.position_embedding_ori.", "text_model.embeddings.position_embedding_res.",
                        "longtext_head.", "boxtext_head.", "dense_feature_head.", "logit_scale_finegraind",
                        "logit_scale_hardneg")
        unmatched = [key for key in missing if not key.startswith(new_prefixes)]
        if unexpected or unmatched:
            raise ValueError(f"SigLIP 2 checkpoint does not match the FG-CLIP 2 layout: missing {sorted(unmatched)}, "
                             f"unexpected {sorted(unexpected)}")
        text_config = config.text_config
        start_long_positions(model.text_model.embeddings, text_config.keep_len, text_config.long_position_stretch)
        with torch.no_grad():
            model.longtext_head.load_state_dict(model.text_model.head.state_dict())
            model.boxtext_head.load_state_dict(model.text_model.head.state_dict())
            model.dense_feature_head.load_state_dict(model.vision_model.head.state_dict())
        return model

    # ------------------------------------------------------------------ text
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        text_kind: str = "short",
        normalize: bool = False,
        *,
        walk_type: str | None = None,
        **batch_keys,
    ) -> torch.Tensor:
        """Embed token ids of one text kind.

        Args:
            input_ids: (N, L) ids padded to a fixed length, at most 64 (short / region) or 196
                (long): the last position is pooled, padding or not (the processor pads to 64 / 196;
                the official retrieval scripts also run the long path on 64).
            attention_mask: (N, L), 1 on real tokens, as the tokenizer returns it.
            text_kind: ``"short"`` (``text_model.head``), ``"region"`` (``boxtext_head``) or
                ``"long"`` (long positions, ``longtext_head``).
            walk_type: the official spelling: ``"short"``, ``"box"`` (= ``"region"``) or ``"long"``.
            batch_keys: image keys of a processor batch (ignored), so ``get_text_features(**batch)`` works.
        Returns:
            (N, D) text embeddings.
        """
        check_attention_mask(attention_mask)
        text_kind = resolve_text_kind(check_text_kind(text_kind), walk_type)
        ignore_batch_keys(batch_keys, IMAGE_BATCH_KEYS, "get_text_features")
        is_long = text_kind == "long"
        length = self.config.long_text_length if is_long else self.config.short_text_length
        if input_ids.ndim != 2 or input_ids.shape[0] == 0 or not 0 < input_ids.shape[1] <= length:
            raise ValueError(
                f"{text_kind} texts must be (N, L) token ids padded to a fixed L <= {length} (the last position "
                f"is pooled), got shape {tuple(input_ids.shape)}; tokenize with FGCLIP2Processor(text=texts, "
                f"text_kind={text_kind!r})"
            )
        features = self.project_text(self.pooled_text(input_ids, attention_mask, long=is_long), text_kind)
        return F.normalize(features, dim=-1) if normalize else features

    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    long: bool = False) -> torch.Tensor:
        """(N, L) ids -> (N, C) last-position hidden states before any head (the short or long positions)."""
        return self._text_states(input_ids, attention_mask, long)[:, -1]

    def project_text(self, pooled: torch.Tensor, text_kind: str) -> torch.Tensor:
        """(N, C) pooled states -> (N, D) through the head of ``text_kind`` (see :meth:`text_head`)."""
        return self.text_head(text_kind)(pooled)

    def trim_padding(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs unchanged: SigLIP pools the last position, so the padded length is part of the feature."""
        return input_ids, attention_mask

    def _text_states(self, input_ids, attention_mask, long: bool) -> torch.Tensor:
        position_ids = self.long_position_ids[:, : input_ids.shape[1]] if long else None
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state

    def get_text_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, text_kind: str = "short"
    ) -> TokenFeatures:
        """Per-token text states (after ``final_layer_norm``) for a cross-encoder re-ranker, the mask of
        real tokens and the kind's global embeddings."""
        check_attention_mask(attention_mask)
        tokens = self._text_states(input_ids, attention_mask, check_text_kind(text_kind) == "long")
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return TokenFeatures(tokens, mask.long(), self.project_text(tokens[:, -1], text_kind))

    def text_head(self, text_kind: str) -> nn.Linear:
        """The head of a text kind: ``text_model.head`` (short), ``boxtext_head`` (region), ``longtext_head``."""
        heads = {"short": self.text_model.head, "region": self.boxtext_head, "long": self.longtext_head}
        return heads[check_text_kind(text_kind)]

    # ------------------------------------------------------------------ vision
    def _check_images(self, pixel_values, pixel_attention_mask, spatial_shapes) -> None:
        patch = self.config.vision_config.patch_size
        channels = self.config.vision_config.num_channels * patch * patch
        if pixel_values.ndim != 3 or pixel_values.shape[-1] != channels:
            raise ValueError(f"pixel_values must be (B, N, {channels}) NaFlex patches, got {tuple(pixel_values.shape)}")
        batch, length = pixel_values.shape[:2]
        if tuple(pixel_attention_mask.shape) != (batch, length) or tuple(spatial_shapes.shape) != (batch, 2):
            raise ValueError(
                f"pixel_attention_mask must be ({batch}, {length}) and spatial_shapes ({batch}, 2), got "
                f"{tuple(pixel_attention_mask.shape)} and {tuple(spatial_shapes.shape)}"
            )
        cells = spatial_shapes.prod(-1)
        if bool((cells > length).any()) or bool((pixel_attention_mask.sum(-1) != cells).any()):
            raise ValueError("spatial_shapes disagree with pixel_attention_mask: image i must have h_i * w_i <= N "
                             "valid patches, first")

    def patchify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normalised images (sides multiples of the patch size) -> NaFlex inputs
        ``(pixel_values, pixel_attention_mask, spatial_shapes)`` of one ``H/p x W/p`` grid each."""
        patch = self.config.vision_config.patch_size
        batch, channels, height, width = images.shape
        if height % patch or width % patch:
            raise ValueError(f"image sides must be multiples of the patch size {patch}, got {height}x{width}")
        grid_h, grid_w = height // patch, width // patch
        # Row-major (patch row, patch column), each patch (row, column, channel): Siglip2ImageProcessor's order.
        patches = images.reshape(batch, channels, grid_h, patch, grid_w, patch).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, grid_h * grid_w, patch * patch * channels)
        mask = torch.ones(batch, grid_h * grid_w, dtype=torch.long, device=images.device)
        shapes = torch.tensor([[grid_h, grid_w]] * batch, device=images.device)
        return patches, mask, shapes

    def _naflex(self, pixel_values, pixel_attention_mask, spatial_shapes):
        """NaFlex inputs as given, or made from (B, 3, H, W) images (:meth:`patchify`), checked."""
        if pixel_values.ndim == 4 and pixel_attention_mask is None and spatial_shapes is None:
            return self.patchify(pixel_values)
        if pixel_attention_mask is None or spatial_shapes is None:
            raise ValueError("NaFlex pixel_values need pixel_attention_mask and spatial_shapes (a processor batch)")
        self._check_images(pixel_values, pixel_attention_mask, spatial_shapes)
        return pixel_values, pixel_attention_mask, spatial_shapes

    def dense_head_features(self, last_hidden_state: torch.Tensor, pixel_attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, N, C) post-layernorm patch tokens -> (B, N, D): the dense head with every patch as a query.

        Attention over the image's valid patches, then ``x + mlp(layernorm(x))`` on its output.
        """
        head = self.dense_feature_head
        padding = ~pixel_attention_mask.bool()
        attended = head.attention(last_hidden_state, last_hidden_state, last_hidden_state,
                                  key_padding_mask=padding, need_weights=False)[0]
        return attended + head.mlp(head.layernorm(attended))

    def project_dense(self, tokens: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) last-block tokens (before ``post_layernorm``) -> (B, N, D) dense features."""
        if pixel_attention_mask is None:
            pixel_attention_mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return self.dense_head_features(self.vision_model.post_layernorm(tokens), pixel_attention_mask)

    def encode_image(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        dense: bool = True,
        normalize: bool = False,
        boxes: list[torch.Tensor] | None = None,
        image_embeds: bool = True,
        **batch_keys,
    ) -> FGCLIPImageOutput:
        """One backbone pass giving the global embeddings, the per-patch features if ``dense`` and the
        region embeddings of ``boxes`` (one (K_i, 4) xyxy tensor per image in its input pixels) if given.

        ``pixel_values`` are NaFlex patches with their mask and shapes, or (B, 3, H, W) images.
        ``image_embeds`` is accepted for the shared interface; the pooling head always runs.
        """
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "encode_image")
        pixel_values, pixel_attention_mask, spatial_shapes = self._naflex(pixel_values, pixel_attention_mask,
                                                                          spatial_shapes)
        outputs = self.vision_model(
            pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask, spatial_shapes=spatial_shapes
        )
        output = FGCLIPImageOutput(image_embeds=outputs.pooler_output, spatial_shapes=spatial_shapes)
        if dense or boxes is not None:
            dense_features = self.dense_head_features(outputs.last_hidden_state, pixel_attention_mask)
            if boxes is not None:
                output.region_embeds = self.pool_regions(dense_features, spatial_shapes, boxes)
            if dense:
                output.dense_features = dense_features
        return output.normalized() if normalize else output

    def vision_hidden_states(
        self, pixel_values: torch.Tensor, layers: Sequence[int], pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None, **batch_keys,
    ) -> list[torch.Tensor]:
        """Patch tokens (B, N, C) after each block of ``layers`` (zero-based, negative from the end),
        before ``post_layernorm``; the last block's are the input of the dense head (:meth:`project_dense`)."""
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "vision_hidden_states")
        layers = check_layers(layers, self.config.vision_config.num_hidden_layers)
        pixel_values, pixel_attention_mask, spatial_shapes = self._naflex(pixel_values, pixel_attention_mask,
                                                                          spatial_shapes)
        hidden_states = self.vision_model(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                                          spatial_shapes=spatial_shapes, output_hidden_states=True).hidden_states
        return [hidden_states[index + 1] for index in layers]

    def get_image_tokens(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None, **batch_keys
                         ) -> TokenFeatures:
        """NaFlex inputs -> the (B, N, C) post-layernorm patch tokens, the mask of real patches and the
        global embeddings: the image side of a cross-encoder re-ranker."""
        ignore_batch_keys(batch_keys, TEXT_BATCH_KEYS, "get_image_tokens")
        pixel_values, pixel_attention_mask, spatial_shapes = self._naflex(pixel_values, pixel_attention_mask,
                                                                          spatial_shapes)
        outputs = self.vision_model(pixel_values=pixel_values, pixel_attention_mask=pixel_attention_mask,
                                    spatial_shapes=spatial_shapes)
        return TokenFeatures(outputs.last_hidden_state, pixel_attention_mask.long(), outputs.pooler_output)

    def get_image_features(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None,
                           normalize: bool = False, **batch_keys) -> torch.Tensor:
        """(B, D) global image embeddings (the vision tower's attention-pooling head)."""
        return self.encode_image(pixel_values, pixel_attention_mask, spatial_shapes, dense=False,
                                 normalize=normalize, **batch_keys).image_embeds

    def get_dense_features(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None,
                           normalize: bool = False, **batch_keys) -> torch.Tensor:
        """(B, N, D) per-patch features of the dense head; rows past ``h_i * w_i`` of image i are padding."""
        return self.encode_image(pixel_values, pixel_attention_mask, spatial_shapes, dense=True,
                                 normalize=normalize, **batch_keys).dense_features

    def dense_maps(self, output: FGCLIPImageOutput) -> list[torch.Tensor]:
        """The (h_i, w_i, D) patch-feature map of each image of an :meth:`encode_image` output (padding dropped)."""
        return [
            features[: h * w].reshape(h, w, -1)
            for features, (h, w) in zip(output.dense_features, output.spatial_shapes.tolist())
        ]

    def pool_regions(
        self, dense_features: torch.Tensor, spatial_shapes: torch.Tensor, boxes: list[torch.Tensor],
        normalize: bool = False,
    ) -> torch.Tensor:
        """RoIAlign (1x1, aligned, adaptive sampling) of each image's own patch grid.

        Args:
            boxes: one (K_i, 4) xyxy tensor per image in its input pixels (``0..w_i * patch``).
        Returns:
            (sum K_i, D), image 0's boxes first.
        """
        patch = self.config.vision_config.patch_size
        maps = self.dense_maps(FGCLIPImageOutput(dense_features=dense_features, spatial_shapes=spatial_shapes))
        if isinstance(boxes, torch.Tensor) or len(boxes) != len(maps):
            raise ValueError(f"boxes must be a list with one (K, 4) tensor per image ({len(maps)} images)")
        regions = []
        for index, (feature_map, image_boxes) in enumerate(zip(maps, boxes)):
            height, width = feature_map.shape[0] * patch, feature_map.shape[1] * patch
            try:
                checked = check_boxes([image_boxes], 1, height, width)
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from None
            regions.append(roi_pool(feature_map[None], checked, patch))
        pooled = torch.cat(regions)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def get_region_features(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        boxes: list[torch.Tensor] | None = None,
        normalize: bool = False,
        **batch_keys,
    ) -> torch.Tensor:
        """Region embeddings of many boxes from one backbone pass per image, (sum K_i, D)."""
        if boxes is None:
            raise ValueError("get_region_features needs boxes: one (K, 4) xyxy tensor per image")
        output = self.encode_image(pixel_values, pixel_attention_mask, spatial_shapes, dense=False, boxes=boxes,
                                   **batch_keys)
        return F.normalize(output.region_embeds, dim=-1) if normalize else output.region_embeds

    def get_image_dense_feature(self, pixel_values, pixel_attention_mask=None, spatial_shapes=None) -> torch.Tensor:
        """The official name of :meth:`get_dense_features`: (B, N, D) per-patch features, unnormalised."""
        return self.get_dense_features(pixel_values, pixel_attention_mask, spatial_shapes)

    def get_image_region_features(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        region_infos: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> list[torch.Tensor]:
        """The official region API: boxes in ORIGINAL image pixels.

        Args:
            image_sizes: per image, its original ``(height, width)``.
            region_infos: per image, its ``[x1, y1, x2, y2]`` boxes in original pixels.
        Returns:
            per image, its (K_i, D) unnormalised region features ((0, D) for an image without
            boxes); ``[]`` when ``region_infos`` is empty, as the official method.
        """
        if not region_infos:
            return []
        batch = pixel_values.shape[0]
        if image_sizes is None or len(image_sizes) != batch or len(region_infos) != batch:
            raise ValueError(f"image_sizes and region_infos need one entry per image ({batch} images)")
        dense = self.encode_image(pixel_values, pixel_attention_mask, spatial_shapes, dense=True)
        regions = []
        for feature_map, (height, width), boxes in zip(self.dense_maps(dense), image_sizes, region_infos):
            grid_h, grid_w = feature_map.shape[:2]
            # Grid coordinates computed as the official method does (Python floats, then float32), unclipped.
            grid_boxes = [[0, x1 / width * grid_w, y1 / height * grid_h, x2 / width * grid_w, y2 / height * grid_h]
                          for x1, y1, x2, y2 in boxes]
            if not grid_boxes:
                regions.append(feature_map.new_zeros(0, feature_map.shape[-1]))
                continue
            rois = torch.tensor(grid_boxes, dtype=torch.float32, device=feature_map.device)
            pooled = roi_align(feature_map.permute(2, 0, 1)[None], rois, output_size=(1, 1), spatial_scale=1.0,
                               sampling_ratio=-1, aligned=True)
            regions.append(pooled[:, :, 0, 0])
        return regions

    # ------------------------------------------------------------------ training
    def global_logit_parameters(self) -> dict[str, torch.Tensor]:
        """The sigmoid loss's temperature and bias, as keyword arguments of :class:`~fgclip.losses.FGCLIP2Loss`."""
        return {"logit_scale": self.logit_scale.reshape(()), "logit_bias": self.logit_bias.reshape(())}

    def _add_region_temperatures(self) -> None:
        self.logit_scale_finegraind = nn.Parameter(torch.tensor(REGION_LOGIT_SCALE_INIT))
        self.logit_scale_hardneg = nn.Parameter(torch.tensor(REGION_LOGIT_SCALE_INIT))

    def set_trainable_terms(self, regional: bool, hard_negatives: bool) -> None:
        """Prepare for training: add the regional and hard-negative temperatures when the checkpoint
        has none (the released ones do not; the official launch adds them the same way; they are then
        saved, ``config.region_temperatures``), and freeze what no trained loss term uses: a temperature
        whose term does not train, the box-text and dense heads when neither region term trains, and
        always the dense head's ``probe`` (the dense path queries with the patches themselves)."""
        if not self.config.region_temperatures:
            self.config.region_temperatures = True
            self._add_region_temperatures()
            self.to(self.logit_scale.device)
        needs_regions = regional or hard_negatives
        self.logit_scale_finegraind.requires_grad_(regional)
        self.logit_scale_hardneg.requires_grad_(hard_negatives)
        self.boxtext_head.requires_grad_(needs_regions)
        self.dense_feature_head.requires_grad_(needs_regions)
        self.dense_feature_head.probe.requires_grad_(False)

    # ------------------------------------------------------------------ both
    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_kind: str = "short",
        *,
        walk_type: str | None = None,
        **batch_keys,
    ) -> FGCLIPOutput:
        """Sigmoid-loss logits ``exp(t) * <text, image> + b`` between B images and T texts of one kind
        (``text_kind``, or the official ``walk_type``)."""
        text_kind = resolve_text_kind(text_kind, walk_type)
        ignore_batch_keys(batch_keys, ("boxes", "image_sizes"), "forward")
        image_embeds = self.get_image_features(pixel_values, pixel_attention_mask, spatial_shapes, normalize=True)
        text_embeds = self.get_text_features(input_ids, attention_mask, text_kind, normalize=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp() + self.logit_bias
        return FGCLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
        )
