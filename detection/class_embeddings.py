"""Class-name embeddings for open-vocabulary classifiers: prompt-template ensembles and their files.

An embedding file is a ``torch.save`` dict::

    {"class_names": [str, ...],            # C names, in classifier order
     "embeddings": FloatTensor (C, D),      # L2-normalised
     "templates": [str, ...],               # the prompt templates ("{}" = class name)
     "model": str}                          # the FG-CLIP / FG-CLIP 2 checkpoint that embedded them
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fgclip import FGCLIP2Model, FGCLIP2Processor, FGCLIPProcessor
from fgclip.eval.interface import EvalModel, FGCLIP2EvalModel, FGCLIPEvalModel

# Photo-style prompts for a ViLD-like ensemble ("{}" is replaced by the class name).
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a {} in the scene.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "a {} in the picture.",
    "an image of a {}.",
    "itap of a {}.",
)


def embed_class_names(
    model: EvalModel,
    class_names: Sequence[str],
    templates: Sequence[str] = PROMPT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """Prompt-ensemble embedding of each class name.

    Each name fills every template; the texts are embedded on the model's region-text path
    (FG-CLIP: the short path; FG-CLIP 2: ``boxtext_head``), L2-normalised, averaged over the
    templates and normalised again.

    Returns:
        (len(class_names), D) L2-normalised embeddings.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"every template needs exactly one '{{}}' placeholder; bad templates: {bad}")
    prompts = [template.format(name) for name in class_names for template in templates]
    with torch.no_grad():
        features = [model.encode_texts(prompts[start : start + batch_size], "region").float().cpu()
                    for start in range(0, len(prompts), batch_size)]
    per_prompt = torch.cat(features).reshape(len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def text_encoder_of(clip_model, checkpoint: str) -> EvalModel:
    """The evaluation interface over a backbone's frozen FG-CLIP / FG-CLIP 2 model and its checkpoint's processor."""
    if isinstance(clip_model, FGCLIP2Model):
        return FGCLIP2EvalModel(clip_model, FGCLIP2Processor.from_pretrained(checkpoint))
    return FGCLIPEvalModel(clip_model, FGCLIPProcessor.from_pretrained(checkpoint))


def save_class_embeddings(
    path: str | os.PathLike, class_names: Sequence[str], embeddings: torch.Tensor, templates: Sequence[str], model: str
) -> None:
    """Write an embedding file (see the module docstring)."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(class_names):
        raise ValueError(f"embeddings must be ({len(class_names)}, D), got {tuple(embeddings.shape)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(
        {"class_names": list(class_names), "embeddings": embeddings.float().cpu(), "templates": list(templates), "model": str(model)},
        path,
    )


def load_class_embeddings(path: str | os.PathLike, field: str = "class_embeddings") -> tuple[list[str], torch.Tensor]:
    """Read an embedding file; errors name the config ``field``, the file and the bad entry.

    Returns:
        (class names, (C, D) float embeddings).
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"{field} = {str(path)!r}: no such file; write one with tools/dump_class_embeddings.py"
        )
    content = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(content, dict) or "class_names" not in content or "embeddings" not in content:
        raise ValueError(f"{path}: expected a dict with 'class_names' and 'embeddings' (written by tools/dump_class_embeddings.py)")
    names, embeddings = content["class_names"], content["embeddings"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: field 'class_names' must be a list of strings")
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"{path}: field 'embeddings' must be a ({len(names)}, D) tensor, got {shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: field 'class_names' has duplicates")
    return list(names), embeddings.float()
