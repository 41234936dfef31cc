"""Assemble LLaVA-1.5 from a causal language model and an FG-CLIP checkpoint.

The model is transformers' own ``LlavaForConditionalGeneration``:

* vision tower: FG-CLIP's ViT as transformers' ``CLIPVisionModel`` (:mod:`mllm.tower`), read at ``vision_feature_layer=-2``
  with ``vision_feature_select_strategy="default"`` (penultimate layer, CLS dropped);
* projector: ``LlavaMultiModalProjector`` with ``projector_hidden_act="gelu"`` and biases, which
  is LLaVA-1.5's ``mlp2x_gelu``: Linear(tower hidden -> LM hidden), GELU, Linear(LM hidden -> LM hidden);
* language model: the causal LM's decoder and ``lm_head``, with ``<image>`` added to the
  vocabulary and the embeddings resized.

The processor is transformers' ``LlavaProcessor`` whose PIL-backed ``LlavaImageProcessorPil``
pads every image to a square with the mean colour (LLaVA-1.5's ``image_aspect_ratio pad``)
before the resize, with PIL's bicubic filter as LLaVA's ``CLIPImageProcessor`` (``do_pad=False``
gives LLaVA's default, resize and centre crop). A directory written by :func:`save_llava`
reloads with :func:`load_llava` alone.

    python -m mllm.builder --language-model lmsys/vicuna-7b-v1.5 --fgclip FG_CLIP_DIR --output LLAVA_DIR
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.models.auto.tokenization_auto import get_tokenizer_config
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
from transformers.utils import logging

from fgclip import FGCLIPProcessor
from fgclip.checkpoint_files import check_checkpoint_files, read_tensor_file
from fgclip.encoders import locate_config
from fgclip.errors import CheckpointError, CommandParser, run_command

from .tower import LEGACY_TOWER_TYPE, clip_vision_config_dict, patch_tokens, vision_tower_from_fgclip

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
VISION_FEATURE_LAYER = -2
LLAMA_TOKENIZERS = ("LlamaTokenizer", "LlamaTokenizerFast")
SENTENCEPIECE_MODEL = "tokenizer.model"  # what LLaVA's slow LlamaTokenizer (transformers 4.37) reads
PROJECTOR_KEYS = {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias",
                  "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"}  # LLaVA's mm_projector -> ours

logger = logging.get_logger(__name__)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add ``<image>`` as a special token, make sure a pad token exists and keep ``legacy``.

    Vicuna has no pad token; like LLaVA we pad with ``unk`` when the tokenizer has one, and
    add ``<pad>`` otherwise. A LLaMA tokenizer's ``legacy`` (how text after a special token is
    tokenized, and LLaVA's ``v1`` label count) is read from its config but not written back by
    ``save_pretrained``; it is recorded so that it survives saving and reloading.
    """
    if hasattr(tokenizer, "legacy"):
        tokenizer.init_kwargs["legacy"] = tokenizer.legacy
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def load_language_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The causal LM's tokenizer, prepared by :func:`prepare_tokenizer`. A LLaMA tokenizer whose
    config leaves ``legacy`` unset loads with ``legacy=True``, the value LLaVA's transformers
    (4.37) gives it; transformers 5 would make it ``False``."""
    config = get_tokenizer_config(path)
    unset = config.get("tokenizer_class") in LLAMA_TOKENIZERS and "legacy" not in config
    if unset:
        logger.warning(f"{os.path.join(str(path), 'tokenizer_config.json')}: no 'legacy' field; read as legacy=True, "
                       "as LLaVA's transformers 4.37 reads it (transformers 5 alone would make it False)")
    tokenizer_type = getattr(transformers, config.get("tokenizer_class") or "", None)
    if not (isinstance(tokenizer_type, type) and issubclass(tokenizer_type, PreTrainedTokenizerBase)):
        tokenizer_type = AutoTokenizer  # (which reads config.json, of another model type in a LLaVA directory)
    return prepare_tokenizer(tokenizer_type.from_pretrained(path, **({"legacy": True} if unset else {})))


class LanguageModelLoss:
    """The causal LM loss over the language model's own vocabulary: the logit columns below ``columns``
    (the image token's id). LLaVA-1.5 keeps the language model's vocabulary and splices the image
    features in at id -200, so its loss has no ``<image>`` class; the row Llava adds for ``<image>``
    (and any row after it) then receives no probability mass and no gradient. Same reduction as
    transformers' ``ForCausalLMLoss`` (mean over targets, or sum / ``num_items_in_batch``)."""

    def __init__(self, columns: int):
        self.columns = columns

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs) -> torch.Tensor:
        columns = min(self.columns, vocab_size)
        return ForCausalLMLoss(logits[..., :columns], labels, columns, **kwargs)


def language_model_columns(model: LlavaForConditionalGeneration) -> int:
    """The number of vocabulary rows that are the language model's own (those below ``<image>``)."""
    return min(model.config.image_token_id, model.config.text_config.vocab_size)


def use_language_model_vocabulary(model: LlavaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """LLaVA-1.5's output vocabulary: the loss over the language model's own columns
    (:class:`LanguageModelLoss`) and generation that never emits ``<image>`` or a row after it
    (``suppress_tokens`` of the generation config, saved in ``generation_config.json`` and applied
    by plain transformers' ``generate`` too)."""
    columns = language_model_columns(model)
    model.loss_function = LanguageModelLoss(columns)
    suppressed = list(range(columns, model.config.text_config.vocab_size))
    if suppressed:
        model.generation_config.suppress_tokens = suppressed
    return model


def zero_added_rows(model: LlavaForConditionalGeneration) -> None:
    """Set the input and output rows of ``<image>`` (and any row after it) to zero: the input row is
    replaced by image features and the output row is outside the loss and suppressed in generation,
    so they hold nothing, and a conversion to LLaVA's layout (which has no such rows) and back is exact."""
    columns = language_model_columns(model)
    with torch.no_grad():
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            embedding.weight[columns:] = 0


def projector_from_llava(weights: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """LLaVA's ``mm_projector`` tensors (``model.mm_projector.0.weight`` ... as stage 1 saves them in
    ``mm_projector.bin``; any prefix before ``mm_projector.``, as LLaVA's ``get_w`` reads them) under
    the names of Llava's projector (``linear_1.weight`` ...)."""
    found = {key.split("mm_projector.", 1)[1]: value for key, value in weights.items() if "mm_projector." in key}
    if set(found) != set(PROJECTOR_KEYS):
        raise CheckpointError(where, f"expected the mlp2x_gelu projector tensors mm_projector.{{0,2}}.{{weight,bias}}, "
                                     f"found {sorted(found) or 'none'}")
    return {PROJECTOR_KEYS[key]: value for key, value in found.items()}


def load_projector(model: LlavaForConditionalGeneration, path: str | os.PathLike) -> None:
    """Copy a stage-1 ``mm_projector.bin`` of LLaVA (its ``--pretrain_mm_mlp_adapter``) into the
    projector of ``model``; a missing, foreign or mis-shaped file is a one-line error naming it."""
    weights = projector_from_llava(read_tensor_file(path), str(path))
    projector = model.model.multi_modal_projector
    expected = {name: tuple(tensor.shape) for name, tensor in projector.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if found != expected:
        raise CheckpointError(path, f"projector shapes {found} do not fit this model's {expected} "
                                    "(tower hidden -> LM hidden, LM hidden -> LM hidden)")
    with torch.no_grad():
        for name, parameter in projector.named_parameters():
            parameter.copy_(weights[name])


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    tower_config: CLIPVisionConfig,
    image_mean: tuple[float, float, float],
    image_std: tuple[float, float, float],
) -> LlavaProcessor:
    """LLaVA processor: pad to square with the mean colour, resize to the tower size (PIL, bicubic), normalise."""
    size = tower_config.image_size
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=tower_config.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # the CLS token, dropped again by the "default" strategy
    )


def build_llava(
    language_model_path: str | os.PathLike,
    fgclip_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    projector: str | os.PathLike | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """LLaVA-1.5 with an FG-CLIP tower and a freshly initialised ``mlp2x_gelu`` projector.

    Args:
        language_model_path: a causal LM directory (e.g. Vicuna-7B-v1.5) with its tokenizer.
        fgclip_path: an FG-CLIP checkpoint directory (ours or the upstream layout).
        dtype: dtype of every weight of the assembled model; the language model is read from
            its files directly in it, so the peak host memory is about the weights in ``dtype``.
        projector: a stage-1 ``mm_projector.bin`` of LLaVA (``--pretrain_mm_mlp_adapter``) to
            start the projector from (:func:`load_projector`).
    Returns:
        ``(model, processor)``; ``model.config.image_token_id`` is the id of ``<image>`` and
        ``model.config.image_seq_length`` the number of patch tokens per image.
    """
    for path in (fgclip_path, language_model_path):
        locate_config(path)  # a missing directory or unknown hub id, named before anything loads
    if os.path.isdir(fgclip_path):
        check_checkpoint_files(fgclip_path)
    tower = vision_tower_from_fgclip(fgclip_path, dtype=dtype)
    fgclip_processor = FGCLIPProcessor.from_pretrained(fgclip_path)
    tokenizer = load_language_tokenizer(language_model_path)
    # Loaded straight into ``dtype``: no float32 copy of a 7B model (28 GB) is ever held.
    language_model = AutoModelForCausalLM.from_pretrained(language_model_path, dtype=dtype)
    language_model.config.pad_token_id = tokenizer.pad_token_id

    config = LlavaConfig(
        vision_config=tower.config,
        text_config=language_model.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patch_tokens(tower.config),
        projector_hidden_act="gelu",
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy="default",
        multimodal_projector_bias=True,
    )
    # Build the shell without allocating weights, then move the loaded parts in.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = tower
    model.model.language_model = language_model.get_decoder()
    model.lm_head = language_model.get_output_embeddings()
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    left_on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left_on_meta:
        raise RuntimeError(f"LLaVA assembly left weights unset: {left_on_meta[:5]}")
    model.resize_token_embeddings(len(tokenizer))
    zero_added_rows(model)
    model.generation_config = GenerationConfig.from_model_config(language_model.config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    use_language_model_vocabulary(model)
    if projector is not None:
        load_projector(model, projector)

    image_processor = fgclip_processor.image_processor
    processor = build_processor(
        tokenizer, tower.config, tuple(image_processor.image_mean), tuple(image_processor.image_std)
    )
    return model, processor


def save_llava(model: LlavaForConditionalGeneration, processor: LlavaProcessor, directory: str | os.PathLike) -> None:
    """Write the assembled model and its processor; :func:`load_llava` needs nothing else.

    The generation config suppresses ``<image>`` (:func:`use_language_model_vocabulary`, also for
    models built before it did), and a sentencepiece ``tokenizer.model`` the tokenizer was read from
    is copied along: transformers 5 writes only ``tokenizer.json``, and LLaVA's own code (its slow
    ``LlamaTokenizer``, ``python -m mllm.convert to-llava``) needs the sentencepiece model."""
    prepare_tokenizer(processor.tokenizer)
    use_language_model_vocabulary(model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    vocab_file = getattr(processor.tokenizer, "vocab_file", None)
    target = os.path.join(directory, SENTENCEPIECE_MODEL)
    if (isinstance(vocab_file, str) and os.path.basename(vocab_file) == SENTENCEPIECE_MODEL
            and os.path.isfile(vocab_file) and not os.path.exists(target)):
        shutil.copyfile(vocab_file, target)


def load_processor(directory: str | os.PathLike) -> LlavaProcessor:
    """The processor saved in ``directory``, with the PIL image processor and the tokenizer class
    its config names: in a Llava directory ``AutoTokenizer`` gives a generic tokenizer, which
    has no LLaMA ``legacy`` attribute, and ``AutoImageProcessor`` the torchvision one."""
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as file:
        tokenizer_class = json.load(file).get("tokenizer_class")
    tokenizer_type = getattr(transformers, tokenizer_class or "", None)
    if not (isinstance(tokenizer_type, type) and issubclass(tokenizer_type, PreTrainedTokenizerBase)):
        raise CheckpointError(config_path, f"field 'tokenizer_class' names no transformers tokenizer: "
                                           f"{tokenizer_class!r}")
    tokenizer = prepare_tokenizer(tokenizer_type.from_pretrained(directory))
    return AutoProcessor.from_pretrained(directory, backend="pil", tokenizer=tokenizer)


def llava_config(directory: str | os.PathLike) -> LlavaConfig:
    """The ``LlavaConfig`` saved in ``directory``; a tower config of the pre-0.2.0 type
    ``fgclip_vision_tower`` is read as the ``clip_vision_model`` it always was."""
    config, _ = LlavaConfig.get_config_dict(directory)
    vision = config.get("vision_config") or {}
    if vision.get("model_type") == LEGACY_TOWER_TYPE:
        config["vision_config"] = clip_vision_config_dict(vision)
    return LlavaConfig.from_dict(config)


def load_llava(
    directory: str | os.PathLike, dtype: torch.dtype | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Reload a model saved by :func:`save_llava` (or by ``mllm.train`` / ``mllm.merge_lora``), or any
    llava-hf directory whose tower is a ``CLIPVisionModel``."""
    locate_config(directory)
    if os.path.isdir(directory):
        check_checkpoint_files(directory)
    model = LlavaForConditionalGeneration.from_pretrained(directory, config=llava_config(directory),
                                                          dtype=dtype or torch.float32)
    use_language_model_vocabulary(model)
    processor = load_processor(directory)
    if not isinstance(model.model.vision_tower, CLIPVisionModel):
        raise CheckpointError(
            f"{directory}: vision tower is {type(model.model.vision_tower).__name__}, expected a CLIP vision tower"
        )
    return model, processor


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description="Assemble LLaVA-1.5 from a causal LM and an FG-CLIP checkpoint.")
    parser.add_argument("--language-model", required=True, help="causal LM directory or hub id (e.g. Vicuna)")
    parser.add_argument("--fgclip", required=True, help="FG-CLIP checkpoint directory")
    parser.add_argument("--output", required=True, help="where to write the assembled model and processor")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--pretrain-mm-mlp-adapter", default=None, metavar="MM_PROJECTOR_BIN",
                        help="start the projector from LLaVA's stage-1 mm_projector.bin")
    args = parser.parse_args(argv)
    model, processor = build_llava(args.language_model, args.fgclip, dtype=getattr(torch, args.dtype),
                                   projector=args.pretrain_mm_mlp_adapter)
    save_llava(model, processor, args.output)


if __name__ == "__main__":
    sys.exit(run_command(main))
