"""The model families: one table, :data:`FAMILIES`, that the loader (:mod:`fgclip.encoders`), the
training recipes (:mod:`fgclip.training.config`), the command lines (``--model-type``) and the
evaluation read. Adding a family is one model file plus one :func:`register_family` call.

A family's model and processor follow the family API that :class:`fgclip.encoders.Encoder` uses:
the processor's one call ``processor(images=..., text=..., boxes=..., text_kind=...)`` returning a
``BatchFeature`` and ``processor.minimal_padding``; the model's ``get_image_features`` /
``get_text_features`` / ``get_region_features`` / ``encode_image`` / ``dense_maps`` taking that batch
as ``**batch``. Classes are named as ``"module:attribute"`` strings (imported on first use, so this
module and the command-line parsers built from it do not import torch) or given as objects.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any


def resolve(reference: Any) -> Any:
    """The object a ``"module:attribute[.attribute]"`` string names; any other value as it is."""
    if not isinstance(reference, str):
        return reference
    module, _, attributes = reference.partition(":")
    value = importlib.import_module(module)
    for attribute in attributes.split("."):
        value = getattr(value, attribute)
    return value


@dataclass(frozen=True)
class TrainingRecipe:
    """How a family trains (:mod:`fgclip.training`).

    Args:
        base_init: the ``model.init`` value that starts from the plain dual encoder the family extends.
        from_base: builds the model from that plain checkpoint (a path or hub id).
        presets: configuration presets by name (``model.config.preset``), each a config-class method.
        loss: the family's training objective class.
        builtin_tokenizer: the processor builds its tokenizer itself (FG-CLIP's offline CLIP BPE);
            otherwise ``model.tokenizer`` or ``model.path`` names it.
        data_options: the ``data`` keys of this family's processor and datasets; other families'
            keys are refused when set.
        loss_options: the ``loss`` keys only this family's loss takes.
        weights: ``loss`` weight key -> keyword of the family's loss class.
    """

    base_init: str
    from_base: Any
    presets: tuple[str, ...]
    loss: Any
    builtin_tokenizer: bool
    data_options: tuple[str, ...] = ()
    loss_options: tuple[str, ...] = ()
    weights: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One model family.

    Args:
        name: its name on command lines (``--model-type``) and in recipes (``model.family``).
        title: its name in messages.
        config / model / processor: its configuration, model and processor classes.
        model_types: the ``config.json`` ``model_type`` values it claims when the type is detected.
        recognise: for a ``model_type`` several families claim, a function ``(path) -> bool`` telling
            whether a checkpoint is this family's (families are asked in registration order; one
            without ``recognise`` takes what the earlier ones left).
        load: builds the model from a checkpoint directory or hub id (default: the model class's
            ``from_pretrained``).
        long_text_kind: the text path long texts take (``"short"`` for a model without a long one).
        auto_classes: register the family with transformers' Auto classes (its config class has
            its own ``model_type``).
        training: how it trains; ``None`` for an evaluation-only family.
    """

    name: str
    title: str
    config: Any
    model: Any
    processor: Any
    model_types: tuple[str, ...] = ()
    recognise: Any = None
    load: Any = None
    long_text_kind: str = "long"
    auto_classes: bool = False
    training: TrainingRecipe | None = None

    @property
    def config_class(self) -> type:
        return resolve(self.config)

    @property
    def model_class(self) -> type:
        return resolve(self.model)

    @property
    def processor_class(self) -> type:
        return resolve(self.processor)

    def load_model(self, path: str | os.PathLike, **kwargs):
        """The family's model from a checkpoint directory or hub id (``kwargs`` go to the loader)."""
        return resolve(self.load or self.model_class.from_pretrained)(path, **kwargs)

    @property
    def presets(self) -> dict:
        """Configuration presets by name (training families only)."""
        config_class = self.config_class
        return {name: getattr(config_class, name) for name in self.training.presets}

    def loss_class(self) -> type:
        return resolve(self.training.loss)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Add ``family`` to :data:`FAMILIES` (a name already taken is an error unless ``replace``)."""
    if family.name in FAMILIES and not replace:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    if family.name == "auto":
        raise ValueError("'auto' names type detection, not a family")
    FAMILIES[family.name] = family
    return family


def get_family(name: str, what: str = "model family") -> Family:
    """The family called ``name``; an unknown name is a ``ValueError`` listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"{what}: unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_checkpoint(model_type: str | None, path: str | os.PathLike) -> Family | None:
    """The family a checkpoint at ``path`` whose ``config.json`` says ``model_type`` belongs to: the one
    family claiming that type, or, when several do, the first whose ``recognise`` accepts it (or that
    has none); ``None`` when no family claims it."""
    claiming = [family for family in FAMILIES.values() if model_type in family.model_types]
    if len(claiming) == 1:
        return claiming[0]
    return next((family for family in claiming if family.recognise is None or resolve(family.recognise)(path)), None)


def model_type_choices() -> tuple[str, ...]:
    """The ``--model-type`` values: ``auto`` (detected from the checkpoint) and every family."""
    return ("auto", *FAMILIES)


def training_families() -> dict[str, Family]:
    """The families a recipe may train."""
    return {name: family for name, family in FAMILIES.items() if family.training is not None}


register_family(Family(
    "fgclip", "FG-CLIP",
    config="fgclip.configuration_fgclip:FGCLIPConfig",
    model="fgclip.modeling_fgclip:FGCLIPModel",
    processor="fgclip.processing_fgclip:FGCLIPProcessor",
    model_types=("fgclip", "clip"),  # upstream FG-CLIP checkpoints keep CLIP's model_type
    recognise="fgclip.checkpoint_files:holds_long_text_positions",
    auto_classes=True,
    training=TrainingRecipe(
        "clip", "fgclip.modeling_fgclip:FGCLIPModel.from_clip", ("tiny", "vit_b16", "vit_l14_336"),
        "fgclip.losses:FGCLIPLoss", builtin_tokenizer=True, data_options=("resize_mode",),
        loss_options=("region_scope", "region_scales_from_logit_scale"),
        weights={"regional_weight": "regional_weight", "hard_negative_weight": "hard_negative_weight"}),
))
register_family(Family(
    "fgclip2", "FG-CLIP 2",
    config="fgclip.configuration_fgclip2:FGCLIP2Config",
    model="fgclip.modeling_fgclip2:FGCLIP2Model",
    processor="fgclip.processing_fgclip2:FGCLIP2Processor",
    model_types=("fgclip2",),
    auto_classes=True,
    training=TrainingRecipe(
        "siglip2", "fgclip.modeling_fgclip2:FGCLIP2Model.from_siglip2", ("tiny", "base", "large", "so400m"),
        "fgclip.losses:FGCLIP2Loss", builtin_tokenizer=False, data_options=("max_num_patches", "small_image_size"),
        weights={"regional_weight": "regional_weight", "tic_weight": "tic_weight",
                 "hard_negative_weight": "hard_block_weight"}),
))
# A plain transformers CLIP checkpoint as the baseline, held as an FG-CLIP model
# (FGCLIPModel.from_clip): regions by FG-CLIP's recipe; no long-text path, so long texts take the short one.
register_family(Family(
    "clip", "CLIP",
    config="fgclip.configuration_fgclip:FGCLIPConfig",
    model="fgclip.modeling_fgclip:FGCLIPModel",
    processor="fgclip.processing_fgclip:FGCLIPProcessor",
    model_types=("clip",),
    load="fgclip.modeling_fgclip:FGCLIPModel.from_clip",
    long_text_kind="short",
))
