"""Frozen FG-CLIP / FG-CLIP 2 ViT backbones with a trainable simple feature pyramid (F-ViT)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from fgclip import FGCLIP2Model, FGCLIPModel
from mmdet.registry import MODELS


def load_checkpoint(model_class, checkpoint: str, field: str):
    """``model_class.from_pretrained(checkpoint)`` in float32, with an error naming the config ``field``."""
    if not checkpoint:
        raise ValueError(f"{field} is empty; set it to a {model_class.__name__} checkpoint directory or hub id")
    try:
        return model_class.from_pretrained(checkpoint, dtype=torch.float32)
    except (OSError, ValueError) as error:
        reason = "no such file or directory" if not os.path.exists(checkpoint) else str(error)
        raise FileNotFoundError(
            f"{field} = {checkpoint!r}: cannot load a {model_class.__name__} checkpoint ({reason}); "
            f"point it to a directory written by {model_class.__name__}.save_pretrained or to a hub id"
        ) from error


class SimpleFeaturePyramid(BaseModule):
    """Four ViT maps of stride ``p`` -> maps of strides ``p/4, p/2, p, 2p`` (ViTDet style).

    Level 0: ConvT(2x) - norm - GELU - ConvT(2x); level 1: ConvT(2x); level 2: identity;
    level 3: 2x2 max pooling. Every level keeps the ViT width ``channels``.
    """

    def __init__(self, channels: int, norm_cfg: dict, init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
                    build_norm_layer(norm_cfg, channels)[1],
                    nn.GELU(),
                    nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
                ),
                nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """4 x (B, C, h, w) -> (B, C, 4h, 4w), (B, C, 2h, 2w), (B, C, h, w), (B, C, h/2, w/2), contiguous."""
        return tuple(level(feature_map).contiguous() for level, feature_map in zip(self.levels, maps))


class FrozenViTBackbone(BaseModule):
    """A frozen vision tower feeding a trainable simple feature pyramid (the F-ViT backbone).

    The tower's weights never train: they have ``requires_grad=False``, run under
    ``torch.no_grad()`` and stay in eval mode through ``train()``. Subclasses load the tower
    (``self.clip``) and implement :meth:`_encode`; image sides must be multiples of the patch
    size ``p``.

    Args:
        out_indices: four zero-based block indices whose outputs feed the pyramid levels of
            strides ``p/4, p/2, p, 2p``.
        norm_cfg: normalisation inside the stride ``p/4`` branch (``SyncBN`` for multi-GPU).
    """

    def __init__(self, clip, out_indices: Sequence[int], norm_cfg: dict | None, init_cfg: dict | None):
        super().__init__(init_cfg=init_cfg)
        self.clip = clip.requires_grad_(False).eval()
        vision_config = clip.config.vision_config
        num_layers = vision_config.num_hidden_layers
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) != 4 or list(out_indices) != sorted(set(out_indices)) or not 0 <= out_indices[0] <= out_indices[-1] < num_layers:
            raise ValueError(
                f"model.backbone.out_indices must be 4 increasing block indices in 0..{num_layers - 1}, got {out_indices}"
            )
        self.out_indices = out_indices
        self.patch_size = vision_config.patch_size
        self.pyramid = SimpleFeaturePyramid(vision_config.hidden_size, norm_cfg or dict(type="BN"))

    def init_weights(self) -> None:
        """Initialise the pyramid only; the tower's weights come from its checkpoint."""
        self.pyramid.init_weights()
        self._is_init = True

    def train(self, mode: bool = True) -> "FrozenViTBackbone":
        super().train(mode)
        self.clip.eval()
        return self

    def _grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{type(self).__name__} needs image sides divisible by the patch size {self.patch_size}, got "
                f"{height}x{width}; pad inputs (data_preprocessor.pad_size_divisor)"
            )
        return height // self.patch_size, width // self.patch_size

    def _encode(self, pixel_values: torch.Tensor, with_clip_map: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The ``out_indices`` block outputs as (B, C, h, w) maps, and the L2-normalised dense CLIP map."""
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> 4 maps (B, C, H/s, W/s) for s = p/4, p/2, p, 2p."""
        maps, _ = self._encode(pixel_values, with_clip_map=False)
        return self.pyramid(maps)

    def forward_with_clip_map(self, pixel_values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Pyramid maps as in :meth:`forward`, plus the L2-normalised dense CLIP map (B, D, H/p, W/p)."""
        maps, clip_map = self._encode(pixel_values, with_clip_map=True)
        return self.pyramid(maps), clip_map


def _as_map(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, h*w, C) tokens -> contiguous (B, C, h, w): mmcv's CPU RoIAlign reads its input as such."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w).contiguous()


@MODELS.register_module()
class FGCLIPViT(FrozenViTBackbone):
    """Frozen FG-CLIP ViT + pyramid. Sizes other than the CLIP training size use interpolated
    position embeddings; the dense map is the last block's value path (FG-CLIP dense features).

    Args:
        checkpoint: FG-CLIP checkpoint (``FGCLIPModel.from_pretrained`` directory or hub id).
        out_indices: ViT-B/16: 3, 5, 7, 11; ViT-L/14: 6, 10, 14, 23.
    """

    def __init__(self, checkpoint: str, out_indices: Sequence[int] = (3, 5, 7, 11), norm_cfg: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(load_checkpoint(FGCLIPModel, checkpoint, "model.backbone.checkpoint"), out_indices, norm_cfg,
                         init_cfg)

    @torch.no_grad()
    def _encode(self, pixel_values, with_clip_map):
        grid_h, grid_w = self._grid(pixel_values)
        vision = self.clip.vision_model
        size = self.clip.config.vision_config.image_size
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (size, size))
        hidden = vision.pre_layrnorm(hidden)
        layers = vision.encoder.layers
        last_needed = len(layers) - 1 if with_clip_map else self.out_indices[-1]
        maps, before_last = [], None
        for index, layer in enumerate(layers[: last_needed + 1]):
            if index == len(layers) - 1:
                before_last = hidden
            hidden = layer(hidden, None)
            if index in self.out_indices:
                maps.append(_as_map(hidden[:, 1:], grid_h, grid_w))
        clip_map = None
        if with_clip_map:
            clip_map = _as_map(F.normalize(self.clip.value_path_features(before_last), dim=-1), grid_h, grid_w)
        return maps, clip_map


@MODELS.register_module()
class FGCLIP2ViT(FrozenViTBackbone):
    """Frozen FG-CLIP 2 (SigLIP 2 NaFlex) vision tower + pyramid. The padded detector input is one
    NaFlex image of ``H/p x W/p`` patches (position embeddings resized to that grid); the dense
    map is FG-CLIP 2's dense head on the last block's normalised tokens. Inputs are normalised
    with SigLIP's mean and std (0.5, on 0-1 pixels).

    Args:
        checkpoint: FG-CLIP 2 checkpoint (``FGCLIP2Model.from_pretrained`` directory or hub id).
        out_indices: base (12 blocks): 3, 5, 7, 11.
    """

    def __init__(self, checkpoint: str, out_indices: Sequence[int] = (3, 5, 7, 11), norm_cfg: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(load_checkpoint(FGCLIP2Model, checkpoint, "model.backbone.checkpoint"), out_indices,
                         norm_cfg, init_cfg)

    @torch.no_grad()
    def _encode(self, pixel_values, with_clip_map):
        grid_h, grid_w = self._grid(pixel_values)
        batch, channels, patch = pixel_values.shape[0], pixel_values.shape[1], self.patch_size
        # (B, C, H, W) -> (B, h*w, p*p*C) in the row-major (patch row, patch column, channel) order
        # of Siglip2ImageProcessor.
        patches = pixel_values.reshape(batch, channels, grid_h, patch, grid_w, patch).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, grid_h * grid_w, patch * patch * channels)
        shapes = torch.tensor([[grid_h, grid_w]] * batch, device=pixel_values.device)
        vision = self.clip.vision_model
        hidden = vision.embeddings(patches, shapes)
        layers = vision.encoder.layers
        last_needed = len(layers) - 1 if with_clip_map else self.out_indices[-1]
        maps = []
        for index, layer in enumerate(layers[: last_needed + 1]):
            hidden = layer(hidden, None)
            if index in self.out_indices:
                maps.append(_as_map(hidden, grid_h, grid_w))
        clip_map = None
        if with_clip_map:
            mask = torch.ones(batch, grid_h * grid_w, dtype=torch.long, device=pixel_values.device)
            dense = self.clip.dense_head_features(vision.post_layernorm(hidden), mask)
            clip_map = _as_map(F.normalize(dense, dim=-1), grid_h, grid_w)
        return maps, clip_map
