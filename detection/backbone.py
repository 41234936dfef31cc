"""The frozen vision tower of any FG-CLIP family with a trainable simple feature pyramid (F-ViT)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from fgclip.encoders import load_model
from fgclip.errors import CheckpointError, ConfigError
from mmdet.registry import MODELS


def load_checkpoint(checkpoint: str, field: str):
    """An FG-CLIP / FG-CLIP 2 model (type detected) in float32; a :class:`CheckpointError` names the
    checkpoint and the config ``field`` that set it."""
    if not checkpoint:
        raise ConfigError(f"{field} is empty; set it to an FG-CLIP or FG-CLIP 2 checkpoint directory or hub id")
    try:
        return load_model(checkpoint, dtype=torch.float32)
    except CheckpointError as error:
        raise CheckpointError(f"{error} (set by {field})") from error
    except (OSError, ValueError) as error:
        reason = "no such file or directory" if not os.path.exists(checkpoint) else str(error).strip().splitlines()[0]
        raise CheckpointError(
            checkpoint, f"cannot load an FG-CLIP or FG-CLIP 2 checkpoint ({reason}) set by {field}; "
            "point it to a directory written by save_pretrained or to a hub id"
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
    """A frozen vision tower feeding a trainable simple feature pyramid (the F-ViT backbone).

    The tower's weights never train: they have ``requires_grad=False``, run under
    ``torch.no_grad()`` and stay in eval mode through ``train()``. The tower is read through the
    model's ``vision_hidden_states``, so either family works. Image sides must be multiples of
    the patch size ``p``; sizes other than the training size use resized position embeddings.

    As in CLIPSelf's F-ViT, the last block runs as the tokens the dense CLIP features come from
    (FG-CLIP: the value path, attention replaced by ``out_proj(v_proj(.))``; FG-CLIP 2: the
    dense head's input): when it is one of ``out_indices`` that output feeds the top pyramid
    level, and the dense CLIP map is its projection.

    Args:
        checkpoint: FG-CLIP or FG-CLIP 2 checkpoint directory or hub id.
        out_indices: four zero-based block indices whose outputs feed the pyramid levels of
            strides ``p/4, p/2, p, 2p`` (ViT-B/16: 3, 5, 7, 11; ViT-L/14: 6, 10, 14, 23).
        norm_cfg: normalisation inside the stride ``p/4`` branch (``SyncBN`` for multi-GPU).
    """

    def __init__(self, checkpoint: str, out_indices: Sequence[int] = (3, 5, 7, 11), norm_cfg: dict | None = None,
                 init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        clip = load_checkpoint(checkpoint, "model.backbone.checkpoint")
        self.clip = clip.requires_grad_(False).eval()
        vision_config = clip.config.vision_config
        num_layers = vision_config.num_hidden_layers
        out_indices = tuple(int(i) for i in out_indices)
        if len(out_indices) != 4 or list(out_indices) != sorted(set(out_indices)) or not 0 <= out_indices[0] <= out_indices[-1] < num_layers:
            raise ConfigError(
                f"model.backbone.out_indices must be 4 increasing block indices in 0..{num_layers - 1}, got {out_indices}"
            )
        self.out_indices = out_indices
        self.last_block = num_layers - 1
        self.patch_size = vision_config.patch_size
        with torch.no_grad():  # the width D of the dense CLIP map, which the class embeddings must have
            probe = torch.zeros(1, 1, vision_config.hidden_size, dtype=next(clip.parameters()).dtype)
            self.embed_dim = clip.project_dense(probe).shape[-1]
        self.checkpoint = checkpoint
        self.pyramid = SimpleFeaturePyramid(vision_config.hidden_size, norm_cfg or dict(type="BN"))

    def init_weights(self) -> None:
        """Initialise the pyramid only; the tower's weights come from its checkpoint."""
        self.pyramid.init_weights()
        self._is_init = True

    def train(self, mode: bool = True) -> "FGCLIPViT":
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

    @torch.no_grad()
    def _encode(self, pixel_values: torch.Tensor, with_clip_map: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The ``out_indices`` block outputs as (B, C, h, w) maps, and the L2-normalised dense CLIP map."""
        grid_h, grid_w = self._grid(pixel_values)
        layers = list(self.out_indices)
        if with_clip_map and self.last_block not in layers:
            layers.append(self.last_block)
        states = self.clip.vision_hidden_states(pixel_values, layers)
        maps = [_as_map(tokens, grid_h, grid_w) for tokens in states[: len(self.out_indices)]]
        clip_map = None
        if with_clip_map:
            dense = self.clip.project_dense(states[layers.index(self.last_block)])
            clip_map = _as_map(F.normalize(dense, dim=-1), grid_h, grid_w)
        return maps, clip_map

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
