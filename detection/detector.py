"""F-ViT: Faster R-CNN on a frozen FG-CLIP ViT, with the CLIP region-score ensemble at test time."""
from __future__ import annotations

from torch import Tensor

from fgclip.errors import DataError
from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS


@MODELS.register_module()
class FViT(TwoStageDetector):
    """Two-stage detector whose backbone (:class:`~detection.backbone.FGCLIPViT`) also yields
    the dense CLIP map at test time; the RoI head (:class:`~detection.roi_head.FViTRoIHead`)
    ensembles its scores with CLIP's region scores. Training is plain Faster R-CNN.

    Raises:
        DataError: the class embeddings are not as wide as the backbone's CLIP map (naming their file).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        head, width = self.roi_head.bbox_head, self.backbone.embed_dim
        if head.class_embeddings.shape[1] != width:
            raise DataError(head.embeddings_file, f"its class embeddings are {head.class_embeddings.shape[1]}-d but the "
                                                  f"model's CLIP ({self.backbone.checkpoint}) embeds regions in {width}-d; "
                                                  "rewrite it with tools/dump_class_embeddings.py --config <this config>")

    def predict(self, batch_inputs: Tensor, batch_data_samples: list, rescale: bool = True) -> list:
        """(B, 3, H, W) -> data samples with ``pred_instances`` (bboxes, scores, labels)."""
        pyramid, clip_map = self.backbone.forward_with_clip_map(batch_inputs)
        x = self.neck(pyramid) if self.with_neck else pyramid
        if batch_data_samples[0].get("proposals", None) is None:
            rpn_results_list = self.rpn_head.predict(x, batch_data_samples, rescale=False)
        else:
            rpn_results_list = [sample.proposals for sample in batch_data_samples]
        results_list = self.roi_head.predict(
            x,
            rpn_results_list,
            batch_data_samples,
            rescale=rescale,
            clip_map=clip_map,
            clip_map_stride=self.backbone.patch_size,
        )
        return self.add_pred_to_datasample(batch_data_samples, results_list)
