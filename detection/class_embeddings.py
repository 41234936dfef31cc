"""Class-name embeddings for open-vocabulary classifiers: prompt-template ensembles and their files.

An embedding file is a ``torch.save`` dict::

    {"class_names": [str, ...],            # C names, in classifier order
     "embeddings": FloatTensor (C, D),      # L2-normalised
     "background": FloatTensor (D,),        # "background" through the same templates, L2-normalised
     "templates": [str, ...],               # the prompt templates
     "model": str}                          # the FG-CLIP / FG-CLIP 2 checkpoint that embedded them

A template holds ``{}`` (the class name) once and may hold ``{article}`` ("a" / "an").
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fgclip.checkpoint_files import refused_pickle
from fgclip.encoders import Encoder, processor_for
from fgclip.errors import ConfigError, DataError, atomic_output


# CLIPSelf F-ViT's 63 class prompts (wusize/CLIPSelf@1c7fe9c, F-ViT/tools/clip_utils.py), with the
# "This is " that it prepends to every prompt starting with "a" or "the" already applied.
CLIPSELF_TEMPLATES = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "This is a photo of {article} {} in the scene.",
    "This is a photo of the {} in the scene.",
    "This is a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "This is a photo of {article} {}.",
    "This is a photo of my {}.",
    "This is a photo of the {}.",
    "This is a photo of one {}.",
    "This is a photo of many {}.",
    "This is a good photo of {article} {}.",
    "This is a good photo of the {}.",
    "This is a bad photo of {article} {}.",
    "This is a bad photo of the {}.",
    "This is a photo of a nice {}.",
    "This is a photo of the nice {}.",
    "This is a photo of a cool {}.",
    "This is a photo of the cool {}.",
    "This is a photo of a weird {}.",
    "This is a photo of the weird {}.",
    "This is a photo of a small {}.",
    "This is a photo of the small {}.",
    "This is a photo of a large {}.",
    "This is a photo of the large {}.",
    "This is a photo of a clean {}.",
    "This is a photo of the clean {}.",
    "This is a photo of a dirty {}.",
    "This is a photo of the dirty {}.",
    "This is a bright photo of {article} {}.",
    "This is a bright photo of the {}.",
    "This is a dark photo of {article} {}.",
    "This is a dark photo of the {}.",
    "This is a photo of a hard to see {}.",
    "This is a photo of the hard to see {}.",
    "This is a low resolution photo of {article} {}.",
    "This is a low resolution photo of the {}.",
    "This is a cropped photo of {article} {}.",
    "This is a cropped photo of the {}.",
    "This is a close-up photo of {article} {}.",
    "This is a close-up photo of the {}.",
    "This is a jpeg corrupted photo of {article} {}.",
    "This is a jpeg corrupted photo of the {}.",
    "This is a blurry photo of {article} {}.",
    "This is a blurry photo of the {}.",
    "This is a pixelated photo of {article} {}.",
    "This is a pixelated photo of the {}.",
    "This is a black and white photo of the {}.",
    "This is a black and white photo of {article} {}.",
    "This is a plastic {}.",
    "This is the plastic {}.",
    "This is a toy {}.",
    "This is the toy {}.",
    "This is a plushie {}.",
    "This is the plushie {}.",
    "This is a cartoon {}.",
    "This is the cartoon {}.",
    "This is an embroidered {}.",
    "This is the embroidered {}.",
    "This is a painting of the {}.",
    "This is a painting of a {}.",
)

# FG-CLIP's short photo-style prompts.
FGCLIP_TEMPLATES = (
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

TEMPLATE_SETS = {"clipself": CLIPSELF_TEMPLATES, "fgclip": FGCLIP_TEMPLATES}
PROMPT_TEMPLATES = CLIPSELF_TEMPLATES  # the default set
BACKGROUND = "background"


def prompt_name(name: str) -> str:
    """A class name as it enters the prompts (CLIPSelf's rule): ``_`` -> space, ``/`` -> " or ",
    lower case, trailing dots removed (``"bow_(weapon)"`` -> ``"bow (weapon)"``)."""
    return name.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def prompts(name: str, templates: Sequence[str]) -> list[str]:
    """Every template filled with ``name`` (:func:`prompt_name`) and its article ("an" before a
    vowel of the raw name, as CLIPSelf)."""
    article = "an" if name and name[0] in "aeiou" else "a"
    return [template.format(prompt_name(name), article=article) for template in templates]


def check_templates(templates: Sequence[str], where: str = "templates") -> None:
    """Every template holds ``{}`` exactly once and no placeholder but ``{article}``."""
    bad = [t for t in templates if (rest := t.replace("{article}", "")).count("{}") != 1 or rest.replace("{}", "").count("{")]
    if not templates or bad:
        raise ConfigError(f"{where}: every template needs exactly one '{{}}' (and optionally '{{article}}'); bad: {bad}")


def embed_class_names(
    model: Encoder,
    class_names: Sequence[str],
    templates: Sequence[str] = PROMPT_TEMPLATES,
    batch_size: int = 256,
) -> torch.Tensor:
    """Prompt-ensemble embedding of each class name.

    Each name fills every template (:func:`prompts`); the texts are embedded on the model's
    region-text path (FG-CLIP: the short path; FG-CLIP 2: ``boxtext_head``), L2-normalised,
    averaged over the templates and normalised again.

    Returns:
        (len(class_names), D) L2-normalised embeddings.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    check_templates(templates)
    texts = [text for name in class_names for text in prompts(name, templates)]
    with torch.no_grad():
        features = [model.encode_texts(texts[start : start + batch_size], "region").float().cpu()
                    for start in range(0, len(texts), batch_size)]
    per_prompt = F.normalize(torch.cat(features), dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def text_encoder_of(clip_model, checkpoint: str) -> Encoder:
    """The encoder interface over a backbone's frozen model and its checkpoint's processor."""
    return Encoder(clip_model, processor_for(clip_model, checkpoint))


class ClassEmbeddings(NamedTuple):
    """The content of an embedding file."""

    class_names: list[str]
    embeddings: torch.Tensor  # (C, D)
    background: torch.Tensor  # (D,)
    templates: list[str]


def save_class_embeddings(
    path: str | os.PathLike,
    class_names: Sequence[str],
    embeddings: torch.Tensor,
    templates: Sequence[str],
    model: str,
    background: torch.Tensor,
) -> None:
    """Write an embedding file (see the module docstring); a row that is not finite (a diverged or
    corrupt text tower) is a :class:`DataError` naming ``path`` and the row, and nothing is written."""
    if embeddings.ndim != 2 or embeddings.shape[0] != len(class_names):
        raise ValueError(f"embeddings must be ({len(class_names)}, D), got {tuple(embeddings.shape)}")
    if background.shape != embeddings.shape[1:]:
        raise ValueError(f"background must be ({embeddings.shape[1]},), got {tuple(background.shape)}")
    check_finite(path, list(class_names), embeddings, background,
                 f"the text tower of {model} is not finite (diverged or corrupt weights); nothing written")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    content = {
        "class_names": list(class_names),
        "embeddings": embeddings.float().cpu(),
        "background": background.float().cpu(),
        "templates": list(templates),
        "model": str(model),
    }
    with atomic_output(path, "wb") as handle:  # whole or not at all; a failed write names the file
        torch.save(content, handle)


def check_finite(path, class_names: list[str], embeddings: torch.Tensor, background: torch.Tensor, hint: str) -> None:
    """A :class:`DataError` naming ``path`` and the first row (class name, or the background) holding
    NaN or inf: such a row would score every box NaN without any other sign."""
    bad_rows = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
    if bad_rows:
        row = bad_rows[0]
        raise DataError(path, f"field 'embeddings', row {row} ({class_names[row]!r}) holds NaN or inf "
                              f"({len(bad_rows)} of {len(class_names)} rows); {hint}")
    if not torch.isfinite(background).all():
        raise DataError(path, f"field 'background' holds NaN or inf; {hint}")


def load_class_embeddings(path: str | os.PathLike, field: str = "class_embeddings") -> ClassEmbeddings:
    """Read an embedding file; a :class:`DataError` names the file, then the config ``field`` or the
    bad entry (a missing field, a wrong shape, a row holding NaN or inf)."""
    if not path or not os.path.isfile(path):
        raise DataError(path, f"class-embedding file not found (set by {field}); write one with "
                              "tools/dump_class_embeddings.py")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        rewrite = "rewrite it with tools/dump_class_embeddings.py"
        raise refused_pickle(path, error, "class-embedding file", rewrite, rewrite) from error
    except (RuntimeError, OSError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(path, f"not a readable embedding file ({reason}); rewrite it with "
                              "tools/dump_class_embeddings.py") from error
    if not isinstance(content, dict) or "class_names" not in content or "embeddings" not in content:
        raise DataError(path, "expected a dict with 'class_names' and 'embeddings' (written by tools/dump_class_embeddings.py)")
    names, embeddings = content["class_names"], content["embeddings"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DataError(path, "field 'class_names' must be a list of strings")
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise DataError(path, f"field 'embeddings' must be a ({len(names)}, D) tensor, got {shape}")
    if len(set(names)) != len(names):
        raise DataError(path, "field 'class_names' has duplicates")
    if "background" not in content:
        raise DataError(path, "no field 'background' (the file predates the background embedding); rewrite it with "
                              f"python tools/dump_class_embeddings.py --config <detection config> (or --model ... --out {path})")
    background = content["background"]
    if not isinstance(background, torch.Tensor) or background.ndim != 1:
        shape = tuple(background.shape) if isinstance(background, torch.Tensor) else type(background).__name__
        raise DataError(path, f"field 'background' must be a ({embeddings.shape[1]},) tensor, got {shape}")
    if len(background) != embeddings.shape[1]:
        raise DataError(path, f"its class embeddings are {embeddings.shape[1]}-d but its background embedding is "
                              f"{len(background)}-d (one text tower writes both: the file was cut or mixed); "
                              "rewrite it with tools/dump_class_embeddings.py")
    check_finite(path, list(names), embeddings, background, "rewrite it with tools/dump_class_embeddings.py")
    templates = list(content.get("templates", []))
    return ClassEmbeddings(list(names), embeddings.float(), background.float(), templates)
