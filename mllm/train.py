"""Train LLaVA-1.5 with an FG-CLIP tower on HF Trainer (+ DeepSpeed when launched distributed).

Stage 1 (``--stage pretrain``): only the projector trains. Stage 2 (``--stage finetune``):
the language model and the projector train; with ``--lora`` the language model's linear
layers get peft LoRA adapters instead (the tower and the projector never get LoRA; the
projector trains fully, with its own ``--projector_lr``). The tower is always frozen.

    torchrun --nproc_per_node 8 -m mllm.train --deepspeed mllm/configs/zero2.json \\
        --stage pretrain --language_model lmsys/vicuna-7b-v1.5 --vision_tower FG_CLIP_DIR \\
        --data_path blip_laion_cc_sbu_558k.json --image_folder IMAGES --conversation_format plain ...

Started as plain ``python`` (no launcher) with ``--deepspeed``, the run trains with DeepSpeed in a
one-process world (:func:`fgclip.launch.one_process_world`). Without a GPU it trains on the CPU.
See ``mllm/pretrain.sh`` and ``mllm/finetune.sh`` for the published settings.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.models.llava.modeling_llava import LlavaModel
from transformers.utils import logging

from fgclip.errors import ConfigError, DataError, run_command
from fgclip.launch import one_process_world

from .builder import build_llava, load_llava, load_projector
from .data import ConversationCollator, ConversationDataset, ModalityLengthGroupedSampler

PROJECTOR = "multi_modal_projector"
STAGES = ("pretrain", "finetune")

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "an assembled LLaVA directory (mllm.builder, stage 1 or merge output)"}
    )
    language_model: str | None = field(default=None, metadata={"help": "causal LM to build from (e.g. Vicuna)"})
    vision_tower: str | None = field(default=None, metadata={"help": "FG-CLIP checkpoint to build from"})
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "LLaVA's stage-1 mm_projector.bin to start the projector from (as LLaVA's "
                                        "--pretrain_mm_mlp_adapter)"},
    )


@dataclass
class DataArguments:
    data_path: str = field(metadata={"help": "LLaVA conversation JSON / JSONL"})
    image_folder: str = field(default="", metadata={"help": "base directory of the records' image paths"})
    conversation_format: str = field(default="v1", metadata={"help": "plain (stage 1) or v1 (Vicuna, stage 2)"})
    check_image_files: bool = field(default=True, metadata={"help": "check every image file exists before training"})
    image_aspect_ratio: str | None = field(
        default=None,
        metadata={"help": "square: resize and centre-crop; pad: pad to a square with the mean colour first "
                          "(default: square for --stage pretrain, pad for finetune, as LLaVA-1.5's scripts)"},
    )
    allow_outside_root: bool = field(
        default=False, metadata={"help": "accept image paths that are absolute or leave --image_folder"},
    )
    strict_records: bool = field(
        default=False,
        metadata={"help": "refuse records left with no target token (LLaVA keeps them; they are counted)"},
    )


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    stage: str = field(default="finetune", metadata={"help": "pretrain: projector only; finetune: LM + projector"})
    model_max_length: int = field(default=2048, metadata={"help": "longest token sequence (image tokens included)"})
    lora: bool = field(default=False, metadata={"help": "finetune the LM with LoRA adapters instead of fully"})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA scale numerator (update = alpha / r * B A)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    projector_lr: float | None = field(
        default=None, metadata={"help": "projector learning rate (default: learning_rate)"}
    )
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "batches of one modality (image / text-only) and similar lengths"}
    )
    remove_unused_columns: bool = False

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.lora and self.stage != "finetune":
            raise ConfigError("--lora applies to --stage finetune only")
        if not self.use_cpu and not torch.accelerator.is_available():
            logger.warning("no GPU found: training on the CPU (--use_cpu true)")
            self.use_cpu = True
        try:
            super().__post_init__()
        except ValueError as error:
            raise ConfigError(f"training arguments: {error}") from None


def find_llava(model: nn.Module) -> LlavaModel:
    """The ``LlavaModel`` inside a Llava, a peft wrapper or a DeepSpeed engine."""
    for module in model.modules():
        if isinstance(module, LlavaModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no LlavaModel")


def set_trainable(model: nn.Module, stage: str) -> None:
    """Freeze per stage: pretrain trains the projector; finetune the projector and the LM."""
    llava = find_llava(model)
    model.requires_grad_(False)
    llava.multi_modal_projector.requires_grad_(True)
    if stage == "finetune":
        llava.language_model.requires_grad_(True)
        model.get_output_embeddings().requires_grad_(True)


def language_model_lora_targets(model: nn.Module) -> str:
    """A peft regex matching every ``nn.Linear`` of the language model and nothing else."""
    llava = find_llava(model)
    modules = llava.language_model.named_modules()
    names = {name.rsplit(".", 1)[-1] for name, module in modules if isinstance(module, nn.Linear)}
    if not names:
        raise ConfigError("the language model has no nn.Linear layers to adapt")
    prefix = next(name for name, module in model.named_modules() if module is llava.language_model)
    return rf"{re.escape(prefix)}\..*\.({'|'.join(sorted(names))})"


def add_lora(model: nn.Module, args: LlavaTrainingArguments) -> nn.Module:
    """peft LoRA on the LM's linear layers; the projector trains fully as a saved module.

    Under DeepSpeed the adapters take the model's dtype, as LLaVA casts its LoRA model to bf16:
    DeepSpeed keeps float32 master weights itself, and ZeRO-3 flattens each parameter group into
    one buffer of one dtype. Without DeepSpeed they stay float32 (peft's default) next to the
    bf16 base weights, so the optimizer updates float32 values.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=language_model_lora_targets(model),
        modules_to_save=[PROJECTOR],
        bias="none",
    )
    return get_peft_model(model, config, autocast_adapter_dtype=not args.deepspeed)


def parameter_count(parameter: nn.Parameter) -> int:
    """Elements of a parameter, also when ZeRO-3 has partitioned it away (``ds_numel``)."""
    return getattr(parameter, "ds_numel", parameter.numel())


class RunSettingsCallback(TrainerCallback):
    """Prints, once, the settings the run really trains with: precision of the weights, DeepSpeed's
    ZeRO stage (or none), the number of processes, and trainable against all parameters."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        parameters = list(model.parameters())
        trainable = sum(parameter_count(p) for p in parameters if p.requires_grad)
        total = sum(parameter_count(p) for p in parameters)
        dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in parameters}))
        zero = args.hf_deepspeed_config.config["zero_optimization"]["stage"] if args.deepspeed else None
        engine = f"DeepSpeed ZeRO-{zero}" if zero is not None else "no DeepSpeed"
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        lora = f", LoRA r={args.lora_r}" if args.lora else ""
        print(f"[mllm.train] stage {args.stage}{lora}: {precision} mixed precision, weights in {dtypes}, "
              f"{engine}, {args.world_size} process(es), {trainable:,} of {total:,} parameters trainable",
              flush=True)


class LlavaTrainer(Trainer):
    """Trainer with LLaVA's loss reduction, a projector learning rate, modality-grouped batches and a vision path that
    runs in every step (a batch without images still passes a blank image through the tower and
    projector with weight 0, so ZeRO-3 and DDP see the same modules and gradients on every rank)."""

    args: LlavaTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.llava = find_llava(self.model)
        # LLaVA's reduction (its transformers 4.37 Trainer): each micro-batch's loss is the mean over its
        # own targets, divided by the accumulation steps; ranks average gradients. transformers 5 would
        # instead divide the summed loss by the targets of all micro-batches and ranks (num_items_in_batch).
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            dataset.modality_lengths,
            batch_size=self.args.train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )

    def create_optimizer(self, model=None):
        if self.args.projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                key = (PROJECTOR in name, name in decay)
                groups.setdefault(key, []).append(parameter)
        # Language-model groups first, so the logged learning rate is --learning_rate.
        parameter_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                **({"lr": self.args.projector_lr} if is_projector else {}),
            }
            for (is_projector, decays), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        llava = self.llava
        if "pixel_values" in inputs or not any(p.requires_grad for p in llava.multi_modal_projector.parameters()):
            return result
        loss, outputs = result if return_outputs else (result, None)
        size = llava.config.vision_config.image_size
        tower_dtype = next(llava.vision_tower.parameters()).dtype
        blank = torch.zeros(1, 3, size, size, dtype=tower_dtype, device=inputs["input_ids"].device)
        features = llava.get_image_features(pixel_values=blank).pooler_output
        loss = loss + 0.0 * sum(feature.sum() for feature in features)
        return (loss, outputs) if return_outputs else loss


def weights_dtype(args: LlavaTrainingArguments) -> torch.dtype:
    """The dtype the weights are loaded in: bf16 / fp16 runs load them so, with or without DeepSpeed,
    as LLaVA's train.py does (a 7B language model is then 13.5 GB, not 27 GB in float32)."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def load_model(model_args: ModelArguments, args: LlavaTrainingArguments):
    """The model to train, in :func:`weights_dtype`. Under ZeRO-3 ``from_pretrained`` builds it inside
    ``deepspeed.zero.Init`` (the ``TrainingArguments`` hold the DeepSpeed config), so each rank keeps
    only its partition and no rank materialises the whole model."""
    dtype = weights_dtype(args)
    adapter = model_args.pretrain_mm_mlp_adapter
    if model_args.model_name_or_path:
        if model_args.language_model or model_args.vision_tower:
            raise ConfigError("give either --model_name_or_path or --language_model with --vision_tower, not both")
        model, processor = load_llava(model_args.model_name_or_path, dtype=dtype)
        if adapter:
            with gathered(list(model.model.multi_modal_projector.parameters())):
                load_projector(model, adapter)
        return model, processor
    if not (model_args.language_model and model_args.vision_tower):
        raise ConfigError("give --model_name_or_path, or both --language_model and --vision_tower")
    if args.lora:
        raise ConfigError("--lora needs --model_name_or_path (an assembled model the adapter refers to)")
    if is_deepspeed_zero3_enabled():
        raise ConfigError(
            "ZeRO-3 partitions weights while loading: assemble the model first (stage 1 output or "
            "python -m mllm.builder) and pass it as --model_name_or_path"
        )
    return build_llava(model_args.language_model, model_args.vision_tower, dtype=dtype, projector=adapter)


def gathered(parameters: list[nn.Parameter]):
    """A context in which ZeRO-3-partitioned ``parameters`` are whole and writes to them are kept
    (DeepSpeed's ``GatheredParameters`` with rank 0 as the writer); a no-op otherwise."""
    if not any(hasattr(parameter, "ds_id") for parameter in parameters):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters, modifier_rank=0)


def main(argv: list[str] | None = None) -> Trainer:
    argv = sys.argv[1:] if argv is None else list(argv)
    deepspeed = argparse.ArgumentParser(add_help=False)
    deepspeed.add_argument("--deepspeed")
    with one_process_world(deepspeed.parse_known_args(argv)[0].deepspeed and "--deepspeed"):
        return train(argv)


def train(argv: list[str]) -> Trainer:
    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    if not os.path.isfile(data_args.data_path):  # before a language model loads
        raise DataError(data_args.data_path, "conversation file not found")
    model, processor = load_model(model_args, args)
    model.config.use_cache = False

    set_trainable(model, args.stage)
    if args.lora:
        model = add_lora(model, args)
    if args.activation_checkpointing:
        model.enable_input_require_grads()

    dataset = ConversationDataset(
        data_args.data_path,
        processor.tokenizer,
        processor.image_processor,
        image_tokens=find_llava(model).config.image_seq_length,
        image_folder=data_args.image_folder,
        conversation_format=data_args.conversation_format,
        max_length=args.model_max_length,
        check_image_files=data_args.check_image_files,
        image_aspect_ratio=data_args.image_aspect_ratio or ("square" if args.stage == "pretrain" else "pad"),
        strict=data_args.strict_records,
        allow_outside_root=data_args.allow_outside_root,
    )
    trainer = LlavaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ConversationCollator(processor.tokenizer.pad_token_id),
        processing_class=processor,
        callbacks=[RunSettingsCallback()],
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.log({"records_without_targets": dataset.count_without_targets})  # kept as LLaVA keeps them
    trainer.save_state()
    if dataset.count_without_targets:
        logger.warning(dataset.summary())
    model.config.use_cache = True
    # The assembled model, or with --lora the adapter plus the projector; the processor with both.
    trainer.save_model(args.output_dir)
    return trainer


if __name__ == "__main__":
    sys.exit(run_command(main))
