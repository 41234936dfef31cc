"""FG-CLIP training on transformers' ``Trainer``: DDP, DeepSpeed and FSDP come from there.

What this adds to ``Trainer``:

* the step is :class:`FGCLIPForTraining` (model + loss), and the per-term losses are
  averaged between two log lines and logged next to the total;
* a checkpoint directory counts only once its ``COMPLETE`` marker is written, after every
  file of it (and after all ranks are done): :func:`last_complete_checkpoint` is what a
  resumed run starts from, so a run killed mid-save resumes from the previous checkpoint;
* bad FineHARD records skipped under ``skip_bad_records`` are counted in the log and the
  final summary;
* the final model is written with ``save_pretrained`` (safetensors) together with its
  processor, ready for ``FGCLIPModel.from_pretrained``.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from ..data import FineHARDCollator, FineHARDDataset, FineHARDShardDataset
from ..losses import FGCLIPLoss
from ..modeling_fgclip import FGCLIPModel
from ..processing_fgclip import FGCLIPProcessor
from .config import TrainConfig
from .module import FGCLIPForTraining

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` whose ``COMPLETE`` marker exists."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    complete = [(int(match.group(1)), path) for path in directory.iterdir()
                if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / COMPLETE_MARKER).is_file()]
    return str(max(complete)[1]) if complete else None


class FGCLIPTrainer(Trainer):
    """``Trainer`` for :class:`FGCLIPForTraining` (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._term_sums: dict[str, float] = defaultdict(float)
        self._term_steps = 0
        self.skipped_records: Counter = Counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.skipped_records.update(inputs.pop("skipped_records", ()))
        outputs = model(**inputs)
        for name, value in outputs["terms"].items():
            self._term_sums[name] += float(value)
        self._term_steps += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_steps:
            logs.update({f"loss_{name}": round(total / self._term_steps, 6) for name, total in self._term_sums.items()})
            self._term_sums.clear()
            self._term_steps = 0
        if self.skipped_records:
            logs["skipped_records"] = sum(self.skipped_records.values())
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.world_size > 1:
            torch.distributed.barrier()
        if self.args.should_save:
            checkpoint = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            marker = checkpoint / COMPLETE_MARKER
            temporary = marker.with_suffix(".tmp")
            temporary.write_text(f"{self.state.global_step}\n")
            os.replace(temporary, marker)


@dataclass
class TrainResult:
    output_dir: str
    final_model_dir: str
    log_history: list[dict]
    skipped_summary: str


def build_model(config: TrainConfig) -> FGCLIPModel:
    settings = config.model
    if settings.init == "clip":
        return FGCLIPModel.from_clip(settings.path)
    if settings.init == "pretrained":
        return FGCLIPModel.from_pretrained(settings.path)
    return FGCLIPModel(settings.build_config())


def build_dataset(config: TrainConfig, processor: FGCLIPProcessor, seed: int):
    data = config.data
    if data.shards:
        return FineHARDShardDataset(data.train, processor.preprocess, data.max_boxes, seed=seed,
                                    shuffle_shards=True, skip_bad_records=data.skip_bad_records)
    return FineHARDDataset(data.train, data.image_root, processor.preprocess, data.max_boxes, seed=seed,
                           skip_bad_records=data.skip_bad_records)


def train(config: TrainConfig, resume: bool | str = False, callbacks: list | None = None) -> TrainResult:
    """Run one training stage described by ``config``.

    Args:
        resume: ``True`` resumes from the last complete checkpoint of the output directory
            (a fresh start if there is none); a path resumes from that checkpoint.
        callbacks: extra ``TrainerCallback`` objects.
    """
    arguments = TrainingArguments(**{"remove_unused_columns": False,
                                     "report_to": "none", **config.training})
    model = build_model(config)
    processor = FGCLIPProcessor.for_config(model.config, resize_mode=config.data.resize_mode)
    dataset = build_dataset(config, processor, arguments.data_seed if arguments.data_seed is not None else arguments.seed)
    objective = FGCLIPLoss(regional_weight=config.loss.regional_weight,
                           hard_negative_weight=config.loss.hard_negative_weight)
    step = FGCLIPForTraining(model, objective, regional=config.loss.regional,
                             hard_negatives=config.loss.hard_negatives)
    trainer = FGCLIPTrainer(model=step, args=arguments, train_dataset=dataset,
                            data_collator=FineHARDCollator(processor.tokenize), callbacks=callbacks)
    checkpoint = last_complete_checkpoint(arguments.output_dir) if resume is True else (resume or None)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    final_dir = os.path.join(arguments.output_dir, "final")
    if trainer.args.should_save:
        model.save_pretrained(final_dir)
        processor.save_pretrained(final_dir)
    stats = getattr(dataset, "stats", None)
    skipped = Counter(trainer.skipped_records)
    if stats is not None and not config.data.shards:
        skipped.update(stats.reasons)
    summary = f"skipped {sum(skipped.values())} bad record(s)" + (
        " (" + ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common()) + ")" if skipped else "")
    return TrainResult(arguments.output_dir, final_dir, trainer.state.log_history, summary)
