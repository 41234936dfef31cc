"""Frozen FG-CLIP ViT backbone with a trainable simple feature pyramid (F-ViT)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from fgclip import FGCLIPModel
from mmdet.registry import MODELS


def load_fgclip(checkpoint: str, field: str) -> FGCLIPModel:
    """``FGCLIPModel.from_pretrained(checkpoint)`` in float32, with an error naming the config ``field``."""
    if not checkpoint:
        raise ValueError(f"{field} is empty; set it to an FG-CLIP checkpoint directory or hub id")
    try:
        return FGCLIPModel.from_pretrained(checkpoint, dtype=torch.float32)
    except (OSError, ValueError) as error:
        reason = "no such file or directory" if not os.path.exists(checkpoint) else str(error)
        raise FileNotFoundError(
            f"{field} = {checkpoint!r}: cannot load an FG-CLIP checkpoint ({reason}); "
            f"point it to a directory written by FGCLIPModel.save_pretrained or to a hub id"
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


@MODELS.register_module()
class FGCLIPViT(BaseModule):
    """Frozen FG-CLIP vision tower feeding a trainable simple feature pyramid.

    The FG-CLIP weights never train: they have ``requires_grad=False``, run under
    ``torch.no_grad()`` and stay in eval mode through ``train()``. Sizes other than the CLIP
    training size use interpolated position embeddings; height and width must be multiples
    of the patch size ``p``.

    Args:
        checkpoint: FG-CLIP checkpoint (``FGCLIPModel.from_pretrained`` directory or hub id).
        out_indices: four zero-based block indices whose outputs feed the pyramid levels of
            strides ``p/4, p/2, p, 2p`` (ViT-B/16: 3, 5, 7, 11; ViT-L/14: 6, 10, 14, 23).
        norm_cfg: normalisation inside the stride ``p/4`` branch (``SyncBN`` for multi-GPU).
    """

    def __init__(
        self,
        checkpoint: str,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        norm_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.clip = load_fgclip(checkpoint, "model.backbone.checkpoint")
        self.clip.requires_grad_(False)
        self.clip.eval()
        vision_config = self.clip.config.vision_config
        num_layers = vision_config.num_hidden_layers
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) != 4 or list(out_indices) != sorted(set(out_indices)) or not 0 <= out_indices[0] <= out_indices[-1] < num_layers:
            raise ValueError(
                f"model.backbone.out_indices must be 4 increasing block indices in 0..{num_layers - 1}, got {out_indices}"
            )
        self.out_indices = out_indices
        self.patch_size = vision_config.patch_size
        self.embed_dim = self.clip.config.projection_dim
        self.pyramid = SimpleFeaturePyramid(vision_config.hidden_size, norm_cfg or dict(type="BN"))

    def init_weights(self) -> None:
        """Initialise the pyramid only; the FG-CLIP weights come from ``checkpoint``."""
        self.pyramid.init_weights()
        self._is_init = True

    def train(self, mode: bool = True) -> "FGCLIPViT":
        super().train(mode)
        self.clip.eval()
        return self

    @torch.no_grad()
    def _encode(self, pixel_values: torch.Tensor, with_clip_map: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Run the frozen tower: the ``out_indices`` block outputs as maps, and the dense CLIP map."""
        batch, _, height, width = pixel_values.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"FGCLIPViT needs image sides divisible by the patch size {self.patch_size}, got {height}x{width}; "
                f"pad inputs (data_preprocessor.pad_size_divisor)"
            )
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        vision = self.clip.vision_model
        size = self.clip.config.vision_config.image_size
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=(height, width) != (size, size))
        hidden = vision.pre_layrnorm(hidden)
        layers = vision.encoder.layers
        last_needed = len(layers) - 1 if with_clip_map else self.out_indices[-1]
        maps, before_last = [], None
        for index, layer in enumerate(layers[: last_needed + 1]):
            if index == len(layers) - 1:
                before_last = hidden
            hidden = layer(hidden, None)
            if index in self.out_indices:
                # Contiguous NCHW: mmcv's CPU RoIAlign reads its input as such, whatever the strides.
                maps.append(hidden[:, 1:].transpose(1, 2).reshape(batch, -1, grid_h, grid_w).contiguous())
        clip_map = None
        if with_clip_map:
            tokens = F.normalize(self.clip.value_path_features(before_last), dim=-1)
            clip_map = tokens.transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        return maps, clip_map

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> 4 maps (B, C, H/s, W/s) for s = p/4, p/2, p, 2p."""
        maps, _ = self._encode(pixel_values, with_clip_map=False)
        return self.pyramid(maps)

    def forward_with_clip_map(self, pixel_values: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Pyramid maps as in :meth:`forward`, plus the L2-normalised dense CLIP map (B, D, H/p, W/p)
        from the last block's value path (FG-CLIP dense features)."""
        maps, clip_map = self._encode(pixel_values, with_clip_map=True)
        return self.pyramid(maps), clip_map
