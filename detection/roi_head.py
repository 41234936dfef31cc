"""F-ViT RoI head: a cosine-similarity classifier over class-name embeddings, trained on base
classes, and a test-time geometric-mean ensemble with the frozen CLIP's region scores."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torchvision.ops import roi_align

from fgclip.errors import ConfigError
from mmdet.models.layers import multiclass_nms
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi

from .class_embeddings import load_class_embeddings
from .datasets import check_novel_classes


def ensemble_scores(det_probs: Tensor, clip_probs: Tensor, is_novel: Tensor, alpha: float, beta: float) -> Tensor:
    """Geometric-mean ensemble of detector and CLIP class probabilities.

    ``p = p_det^(1 - w) * p_clip^w`` with ``w = beta`` for novel classes and ``w = alpha`` for
    base classes and the background.

    Args:
        det_probs, clip_probs: (N, C + 1) probabilities, background last.
        is_novel: (C + 1,) bool, False for the background.
    Returns:
        (N, C + 1) ensembled scores (not renormalised).
    """
    weight = torch.where(is_novel, torch.as_tensor(beta), torch.as_tensor(alpha)).to(det_probs)
    return det_probs.pow(1 - weight) * clip_probs.pow(weight)


@MODELS.register_module()
class FViTBBoxHead(ConvFCBBoxHead):
    """CLIPSelf's F-ViT box head: a region embedding classified by cosine similarity to text embeddings.

    Layers (as wusize/CLIPSelf@1c7fe9c F-ViT/models/fvit_head.py with its configs): 4 shared
    convs, 2 shared fcs with a ReLU after each, then a classification branch (1 fc + ReLU) whose
    output is the region embedding of the text width D, and a regression branch (1 fc + ReLU)
    feeding the class-agnostic box regressor. Every fc is D wide. Logits are
    ``temperature * cos(region, [class embeddings; background])`` with ``temperature`` a plain
    learnable scalar (initially 50); mmdet's linear classifier is not built.

    The background embedding is the file's "background" text embedding (the same prompt ensemble
    as the classes): fixed, or with ``learn_bg`` a learned vector starting from it.

    Training uses :class:`~detection.losses.MaskedCrossEntropyLoss` with class weights base 1,
    novel ``novel_weight``, background ``background_weight``; a weight below 1e-5 takes the class
    out of the softmax. At test time, with region CLIP features (:meth:`predict_by_feat`), scores
    are ``p_det^(1-w) * p_clip^w`` where ``p_clip = softmax(clip_temperature * cos(clip region,
    [classes; background]))`` and ``w = alpha`` (base, background) or ``beta`` (novel).

    Args:
        class_embeddings: embedding file of the classes (``tools/dump_class_embeddings.py``).
        class_names: expected class names in label order; must equal the file's names.
            ``None`` takes the file's names as they are.
        novel_classes: names among ``class_names`` treated as novel.
        learn_bg: learn the background embedding (initialised from the file's).
        fc_out_channels: must equal the embedding width D if given (it is derived from the file).
    """

    def __init__(
        self,
        class_embeddings: str,
        class_names: Sequence[str] | None = None,
        novel_classes: Sequence[str] = (),
        temperature: float = 50.0,
        clip_temperature: float = 75.0,
        alpha: float = 0.1,
        beta: float = 0.8,
        background_weight: float = 0.6,
        novel_weight: float = 0.0,
        learn_bg: bool = False,
        num_classes: int | None = None,
        num_shared_convs: int = 4,
        num_shared_fcs: int = 2,
        num_cls_fcs: int = 1,
        num_reg_fcs: int = 1,
        fc_out_channels: int | None = None,
        reg_class_agnostic: bool = True,
        loss_cls: dict | None = None,
        **kwargs,
    ):
        field = "model.roi_head.bbox_head"
        content = load_class_embeddings(class_embeddings, f"{field}.class_embeddings")
        names, embeddings = content.class_names, content.embeddings
        width = embeddings.shape[1]
        if class_names is not None and list(class_names) != names:
            raise ConfigError(
                f"{field}.class_names {list(class_names)} differ from the class_names {names} of "
                f"{class_embeddings} (same names, same order needed)"
            )
        if num_classes is not None and num_classes != len(names):
            raise ConfigError(f"{field}.num_classes={num_classes} but {class_embeddings} holds {len(names)} classes")
        if fc_out_channels is not None and fc_out_channels != width:
            raise ConfigError(f"{field}.fc_out_channels={fc_out_channels} but the embeddings of {class_embeddings} are {width} wide")
        if num_cls_fcs < 1:
            raise ConfigError(f"{field}.num_cls_fcs must be >= 1 (its last fc gives the region embedding), got {num_cls_fcs}")
        novel = check_novel_classes(names, novel_classes, field)
        loss_cls = dict(loss_cls or dict(type="MaskedCrossEntropyLoss", loss_weight=1.0))
        loss_cls["class_weight"] = self._class_weights(names, novel, novel_weight, background_weight)
        super().__init__(
            num_shared_convs=num_shared_convs,
            num_shared_fcs=num_shared_fcs,
            num_reg_fcs=num_reg_fcs,
            fc_out_channels=width,
            num_classes=len(names),
            with_cls=False,
            reg_class_agnostic=reg_class_agnostic,
            loss_cls=loss_cls,
            **kwargs,
        )
        # mmdet builds no classification branch without its linear classifier: build it here.
        self.num_cls_fcs = num_cls_fcs
        self.cls_convs, self.cls_fcs, self.cls_last_dim = self._add_conv_fc_branch(0, num_cls_fcs, self.shared_out_channels)
        self.class_names = names
        self.embeddings_file = class_embeddings
        self.templates = content.templates
        self.novel_weight, self.background_weight = novel_weight, background_weight
        self.clip_temperature, self.alpha, self.beta = clip_temperature, alpha, beta
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.learn_bg = learn_bg
        background = F.normalize(content.background, dim=0)
        if learn_bg:
            self.background_embedding = nn.Parameter(background.clone())
        else:
            self.register_buffer("background_embedding", background, persistent=False)
        # The vocabulary is configuration, not learned state: kept out of checkpoints.
        self.register_buffer("class_embeddings", F.normalize(embeddings, dim=-1), persistent=False)
        self.register_buffer("is_novel", self._novel_mask(names, novel), persistent=False)

    @staticmethod
    def _class_weights(names: Sequence[str], novel: Sequence[str], novel_weight: float, background_weight: float) -> list[float]:
        return [novel_weight if name in novel else 1.0 for name in names] + [background_weight]

    @staticmethod
    def _novel_mask(names: Sequence[str], novel: Sequence[str]) -> Tensor:
        return torch.tensor([name in novel for name in names] + [False])

    def set_vocabulary(self, class_names: Sequence[str], embeddings: Tensor, novel_classes: Sequence[str]) -> None:
        """Replace the classes (e.g. a user vocabulary at inference); ``embeddings`` is (C, D).
        The background embedding stays."""
        if embeddings.ndim != 2 or embeddings.shape != (len(class_names), self.class_embeddings.shape[1]):
            raise ValueError(
                f"embeddings must be ({len(class_names)}, {self.class_embeddings.shape[1]}), got {tuple(embeddings.shape)}"
            )
        novel = check_novel_classes(class_names, novel_classes, "set_vocabulary")
        device = self.class_embeddings.device
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.class_embeddings = F.normalize(embeddings.float(), dim=-1).to(device)
        self.is_novel = self._novel_mask(class_names, novel).to(device)
        self.loss_cls.class_weight = self._class_weights(class_names, novel, self.novel_weight, self.background_weight)

    def class_and_background_embeddings(self) -> Tensor:
        """(C + 1, D) unit vectors: the classes, then the background."""
        background = F.normalize(self.background_embedding, dim=0).to(self.class_embeddings)
        return torch.cat([self.class_embeddings, background[None]])

    def _shared(self, x: Tensor) -> Tensor:
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return x

    def _branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 256, 7, 7) RoI features -> (N, D) region embeddings and (N, D) regression features."""
        shared = self._shared(x)
        x_cls, x_reg = shared, shared
        for fc in self.cls_fcs:
            x_cls = self.relu(fc(x_cls))
        for fc in self.reg_fcs:
            x_reg = self.relu(fc(x_reg))
        return x_cls, x_reg

    def region_embeddings(self, x: Tensor) -> Tensor:
        """(N, 256, 7, 7) RoI features -> (N, D) region embeddings (unnormalised)."""
        return self._branches(x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 256, 7, 7) -> class logits (N, C + 1) and class-agnostic box deltas (N, 4)."""
        regions, x_reg = self._branches(x)
        # In float32 under autocast too: bfloat16 rounds a cosine by up to 0.002, a logit (x 50) by up to 0.1.
        with torch.autocast(regions.device.type, enabled=False):
            classes = self.class_and_background_embeddings()
            cls_score = self.temperature * F.normalize(regions.float(), dim=-1) @ classes.t()
        return cls_score, self.fc_reg(x_reg)

    def clip_probabilities(self, clip_region_embeds: Tensor) -> Tensor:
        """(N, D) CLIP region features -> (N, C + 1) ``softmax(clip_temperature * cos)``."""
        classes = self.class_and_background_embeddings()
        cosine = F.normalize(clip_region_embeds.float(), dim=-1) @ classes.float().t()
        return (self.clip_temperature * cosine).softmax(dim=-1)

    def predict_by_feat(
        self,
        rois: tuple[Tensor, ...],
        cls_scores: tuple[Tensor, ...],
        bbox_preds: tuple[Tensor, ...],
        batch_img_metas: list[dict],
        rcnn_test_cfg=None,
        rescale: bool = False,
        clip_region_embeds: tuple[Tensor, ...] | None = None,
    ) -> list[InstanceData]:
        """mmdet's box decoding and NMS on ensembled scores (detector-only scores without ``clip_region_embeds``)."""
        if clip_region_embeds is None:
            return super().predict_by_feat(rois, cls_scores, bbox_preds, batch_img_metas, rcnn_test_cfg, rescale)
        results = []
        for roi, cls_score, bbox_pred, clip_embeds, img_meta in zip(
            rois, cls_scores, bbox_preds, clip_region_embeds, batch_img_metas
        ):
            if roi.shape[0] == 0:
                results.append(self._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale, rcnn_test_cfg))
                continue
            scores = ensemble_scores(
                cls_score.float().softmax(dim=-1), self.clip_probabilities(clip_embeds), self.is_novel, self.alpha, self.beta
            )
            # mmdet's decoding (and rescaling) without NMS, then NMS on the ensembled scores.
            decoded = self._predict_by_feat_single(roi, cls_score, bbox_pred, img_meta, rescale, rcnn_test_cfg=None)
            decoded.scores = scores
            if rcnn_test_cfg is None:
                results.append(decoded)
                continue
            det_bboxes, det_labels = multiclass_nms(
                decoded.bboxes, scores, rcnn_test_cfg.score_thr, rcnn_test_cfg.nms, rcnn_test_cfg.max_per_img, box_dim=4
            )
            results.append(InstanceData(bboxes=det_bboxes[:, :-1], scores=det_bboxes[:, -1], labels=det_labels))
        return results


@MODELS.register_module()
class FViTRoIHead(StandardRoIHead):
    """Standard RoI head that, at test time, pools a CLIP region feature for each proposal
    (RoIAlign 1x1, aligned, on the dense CLIP map) and hands it to :class:`FViTBBoxHead`.
    RoI features are pooled in float32 under mixed precision too (:meth:`_bbox_forward`)."""

    def _bbox_forward(self, x: tuple[Tensor, ...], rois: Tensor) -> dict:
        """``StandardRoIHead._bbox_forward`` on float32 features, as the reference's mmdet 2.x pooled
        under fp16 (``force_fp32`` on the RoI extractor): mmdet 3.x's extractor casts the RoIs to the
        features' dtype, and mmcv's RoIAlign has no bfloat16 kernel."""
        return super()._bbox_forward(tuple(level.float() for level in x), rois)

    def predict(
        self,
        x: tuple[Tensor, ...],
        rpn_results_list: list[InstanceData],
        batch_data_samples: list,
        rescale: bool = False,
        clip_map: Tensor | None = None,
        clip_map_stride: float | None = None,
    ) -> list[InstanceData]:
        """As ``StandardRoIHead.predict``; ``clip_map`` (B, D, h, w) of stride ``clip_map_stride``
        switches on the CLIP ensemble."""
        if clip_map is None:
            return super().predict(x, rpn_results_list, batch_data_samples, rescale)
        if self.with_mask:
            raise NotImplementedError("FViTRoIHead's CLIP ensemble covers boxes only; configure it without a mask head")
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        return self.predict_bbox(
            x, batch_img_metas, rpn_results_list, self.test_cfg, rescale, clip_map=clip_map, clip_map_stride=clip_map_stride
        )

    def predict_bbox(
        self,
        x: tuple[Tensor, ...],
        batch_img_metas: list[dict],
        rpn_results_list: list[InstanceData],
        rcnn_test_cfg,
        rescale: bool = False,
        clip_map: Tensor | None = None,
        clip_map_stride: float | None = None,
    ) -> list[InstanceData]:
        proposals = [result.bboxes for result in rpn_results_list]
        rois = bbox2roi(proposals)
        if clip_map is None or rois.shape[0] == 0:
            return super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg, rescale)
        bbox_results = self._bbox_forward(x, rois)
        clip_embeds = roi_align(
            clip_map.float(), rois.float(), output_size=1, spatial_scale=1.0 / clip_map_stride, sampling_ratio=-1, aligned=True
        ).flatten(1)
        counts = [len(p) for p in proposals]
        return self.bbox_head.predict_by_feat(
            rois=rois.split(counts),
            cls_scores=bbox_results["cls_score"].split(counts),
            bbox_preds=bbox_results["bbox_pred"].split(counts),
            batch_img_metas=batch_img_metas,
            rcnn_test_cfg=rcnn_test_cfg,
            rescale=rescale,
            clip_region_embeds=clip_embeds.split(counts),
        )
