"""FG-CLIP training on transformers' ``Trainer``: DDP, DeepSpeed and FSDP come from there.

What this adds to ``Trainer``:

* the step is :class:`FGCLIPForTraining` (model + loss); the per-term losses are averaged
  over the micro-batches (and ranks) between two log lines and logged next to the total;
* the dataset's ``set_epoch`` is called at the start of every epoch (accelerate skips it
  under DDP and when a resumed run fast-forwards its data), so the region-caption draw of a
  resumed run is the one of an uninterrupted run;
* a checkpoint directory counts only once its ``COMPLETE`` marker is written, after every
  file of it (and after all ranks are done); a resumed run starts from the newest complete
  checkpoint that can be read (:func:`resumable_checkpoint`), so a run killed mid-save, or one
  whose newest checkpoint was damaged later, resumes from the previous one (with a warning).
  Old checkpoints are rotated (``save_total_limit``) only after the new one is complete.
  Both happen in :class:`CompleteCheckpointCallback` (``on_step_end`` / ``on_save``);
* boxes travel as :class:`~fgclip.data.collate.Boxes`, which input preparation leaves alone
  (DeepSpeed would cast every float input to bf16); no weight decay on 1-d parameters
  (biases, norm gains, class embedding, temperatures);
* under DeepSpeed the 0-dim temperatures are held as (1,) tensors while training:
  DeepSpeed 0.19 broadcasts every parameter as ``p.data.view(torch.uint8)`` at start-up,
  which fails on 0-dim tensors; the final model gets them back as scalars;
* webdataset shards, which split themselves by rank and worker, are read by a plain
  DataLoader on every rank (accelerate would read them on rank 0 only and dispatch);
* bad FineHARD records skipped under ``skip_bad_records`` are counted, by reason, in the
  log and the final summary; a stage-2 recipe whose data holds no box (or no hard negative)
  for its regional (hard-negative) loss is refused before training;
* a DeepSpeed recipe started as one plain process (no launcher) runs in a one-rank world
  (:func:`one_process_world`); the precision the step really runs in (DeepSpeed's bf16,
  accelerate's autocast) and activation checkpointing are logged when training starts;
* the final model is written with ``save_pretrained`` (safetensors) together with its
  processor, ready for ``FGCLIPModel.from_pretrained``, and replaces ``final/`` atomically;
* every model family of :mod:`fgclip.families` trains through the same step
  (:class:`FGCLIPForTraining`); FG-CLIP 2 recipes add batches of one language
  (``data.group_by_language``), as the paper trains it;
* ``model.reranker`` trains an R2D2-style cross-encoder re-ranker on the frozen model
  (:class:`~fgclip.rerank.RerankerForTraining`); ``final/`` then holds the re-ranker, and with
  ``pre_ranking`` the trained dual encoder and its processor in ``final/dual_encoder/``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import DefaultFlowCallback, Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data import FineHARDCollator, FineHARDDataset, FineHARDShardDataset, LanguageGroupedBatchSampler
from ..checkpoint_files import check_checkpoint_files, check_file
from ..encoders import locate_config, processor_for
from ..families import get_family, resolve
from ..errors import CheckpointError, ConfigError, DataError, check_output_dir, write_atomically, writing
from ..host_memory import keep_freed_memory
from ..launch import one_process_world
from ..losses import clamp_logit_scales, copy_logit_scale_to_region_scales
from ..rerank import CrossEncoderReranker, CrossEncoderRerankerConfig, RerankerForTraining
from .config import TrainConfig
from .module import FGCLIPForTraining

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
RECIPE_FILE = "recipe.json"
CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# What a launcher (torchrun, deepspeed, accelerate launch) gives every rank: its rank, and where rank 0 listens.


def _checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) of every ``checkpoint-N`` directory, by step."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), path, (path / COMPLETE_MARKER).is_file()) for path in directory.iterdir()
             if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))]
    return sorted(found)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` whose ``COMPLETE`` marker exists."""
    complete = [path for _, path, is_complete in _checkpoints(output_dir) if is_complete]
    return str(complete[-1]) if complete else None


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint directory cannot be resumed from (a file truncated or corrupt after it was
    marked complete), or ``None``: ``trainer_state.json`` must parse, safetensors files be whole and
    torch files (optimizer, scheduler, RNG states) be complete zip archives."""
    checkpoint = Path(checkpoint)
    state = checkpoint / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{state}: {error}"
    for path in sorted(checkpoint.iterdir()):
        if path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
            try:
                check_file(path)
            except CheckpointError as error:
                return str(error)
    return None


def resumable_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint of ``output_dir`` that can be read; newer complete ones that cannot
    are named in a warning and passed over."""
    complete = [path for _, path, is_complete in _checkpoints(output_dir) if is_complete]
    for path in reversed(complete):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("%s is marked %s but cannot be read (%s); resuming from the previous complete checkpoint "
                       "instead", path, COMPLETE_MARKER, problem)
    return None


def _write_marker(checkpoint: Path, step: int) -> None:
    temporary = checkpoint / f"{COMPLETE_MARKER}.tmp"
    with open(temporary, "w") as handle:
        handle.write(f"{step}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, checkpoint / COMPLETE_MARKER)


def _remove_checkpoint(path: Path) -> None:
    (path / COMPLETE_MARKER).unlink(missing_ok=True)  # a kill mid-delete leaves an incomplete directory
    shutil.rmtree(path)


def write_failure(error: Exception) -> str | None:
    """The reason a checkpoint write failed (``No space left on device``, ``File too large``), or
    ``None`` when ``error`` is not a failed write: an ``OSError`` or safetensors' ``SafetensorError``,
    which carries the I/O error in its message."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if type(error).__name__ == "SafetensorError":
        message = str(error)
        return message.split("I/O error: ", 1)[1] if "I/O error: " in message else message
    return None


@contextlib.contextmanager
def writing_checkpoint(directory: Path, output_dir: str | os.PathLike) -> Iterator[None]:
    """Around writing the checkpoint ``directory``: a failed write (a full disk, a file-size limit)
    removes what was written of it and becomes a :class:`CheckpointError` naming it and the last
    complete checkpoint, which stays as it was for ``--resume``."""
    try:
        yield
    except Exception as error:
        reason = write_failure(error)
        if reason is None:
            raise
        shutil.rmtree(directory, ignore_errors=True)
        last = last_complete_checkpoint(output_dir)
        kept = f"the last complete checkpoint {last} is kept" if last else "no complete checkpoint yet"
        raise CheckpointError(directory, f"could not be written ({reason}); {kept} (free space, then rerun "
                                         "with --resume)") from error


class DatasetEpochCallback(TrainerCallback):
    """Call ``set_epoch(epoch)`` of the dataset (and batch sampler) at the start of every epoch,
    before its data is read.

    accelerate's ``DataLoaderShard.set_epoch`` reaches the dataset only when the batch
    sampler is a plain one: not under DDP (``BatchSamplerShard``) nor in the epoch a resumed
    run fast-forwards (``SkipBatchSampler``). ``state.epoch`` is the integer epoch at an epoch
    start and ``epoch + fraction done`` when resumed mid-epoch, hence the floor.
    """

    def __init__(self, *seeded):
        self.seeded = seeded

    def on_epoch_begin(self, args, state, control, **kwargs):
        for item in self.seeded:
            item.set_epoch(int(state.epoch or 0))


class CompleteCheckpointCallback(TrainerCallback):
    """Marks each checkpoint ``COMPLETE`` once every rank has written it, and only then rotates old
    complete checkpoints down to ``save_total_limit`` (HF's own rotation is switched off: it would
    count an unfinished checkpoint as the newest)."""

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save and args.should_save:  # about to be (re)written: not complete until on_save
            (Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / COMPLETE_MARKER).unlink(
                missing_ok=True)

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if args.should_save:
            run_dir = Path(args.output_dir)
            _write_marker(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", state.global_step)
            self._rotate(run_dir, state.best_model_checkpoint)

    def _rotate(self, run_dir: Path, best: str | None) -> None:
        limit = self.save_total_limit
        if not limit or limit <= 0:
            return
        complete = [path for _, path, is_complete in _checkpoints(run_dir) if is_complete]
        for path in complete[:-limit]:
            if best is None or Path(best).resolve() != path.resolve():
                _remove_checkpoint(path)


class SetupLogCallback(TrainerCallback):
    """Logs :meth:`FGCLIPTrainer.setup_summary` once the model is prepared (DeepSpeed's engine built)."""

    def __init__(self, trainer: "FGCLIPTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            logger.info(self.trainer.setup_summary())


class LogitScaleClampCallback(TrainerCallback):
    """CLIP's clamp of every temperature to ``[0, ln max_scale]`` after each optimizer step (an option;
    the official FG-CLIP code has none)."""

    def __init__(self, max_scale: float):
        self.max_scale = max_scale

    def on_step_end(self, args, state, control, model=None, **kwargs):
        clamp_logit_scales(model, self.max_scale)


class FGCLIPTrainer(Trainer):
    """``Trainer`` for :class:`FGCLIPForTraining` (see the module docstring).

    Args:
        group_by_language: draw batches with :class:`~fgclip.data.LanguageGroupedBatchSampler`
            (a map-style dataset with ``languages()``), as FG-CLIP 2 trains.
    """

    def __init__(self, *args, group_by_language: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        # Right after transformers' DefaultFlowCallback (which decides when to save), before the callbacks
        # a user passes: a checkpoint is complete before anything else hears of its save.
        callbacks = self.callback_handler.callbacks
        flow = next(i for i, callback in enumerate(callbacks) if isinstance(callback, DefaultFlowCallback))
        callbacks.insert(flow + 1, CompleteCheckpointCallback(self.args.save_total_limit))
        self.args.save_total_limit = None  # rotated by CompleteCheckpointCallback once complete
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_steps = 0
        self.stream_skips: Counter = Counter()  # bad shard samples met by this rank, by reason
        self.language_sampler = None
        if group_by_language:
            self.language_sampler = LanguageGroupedBatchSampler(
                self.train_dataset.languages(), self._train_batch_size, self.args.world_size,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                rank=self.args.process_index)
        seeded = [item for item in (self.train_dataset, self.language_sampler) if hasattr(item, "set_epoch")]
        if seeded:
            self.add_callback(DatasetEpochCallback(*seeded))
        self.add_callback(SetupLogCallback(self))
        scalars = [parameter for parameter in self.model.parameters() if parameter.ndim == 0]
        self.scalar_parameters = scalars if self.is_deepspeed_enabled else []
        for parameter in self.scalar_parameters:
            parameter.data = parameter.data.reshape(1)

    def _save_checkpoint(self, model, trial):
        """transformers' checkpoint save, whose failed write (:func:`writing_checkpoint`) is one error line."""
        checkpoint = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with writing_checkpoint(checkpoint, self.args.output_dir):
            super()._save_checkpoint(model, trial)

    def setup_summary(self) -> str:
        """The precision the step really runs in (from the DeepSpeed engine, or accelerate's autocast), the
        dtype of the weights it trains and whether activation checkpointing is on, e.g. ``training precision:
        DeepSpeed ZeRO-2 bf16, weights bfloat16; activation checkpointing on``."""
        trained = {str(parameter.dtype).removeprefix("torch.") for parameter in self.model_wrapped.parameters()
                   if parameter.requires_grad}
        weights = " / ".join(sorted(trained))
        if self.is_deepspeed_enabled:
            engine = self.model_wrapped
            mode = "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"
            precision = f"DeepSpeed ZeRO-{engine.zero_optimization_stage()} {mode}"
        else:
            mixed = self.accelerator.mixed_precision
            precision = "fp32" if mixed == "no" else f"{mixed} autocast"
        checkpointing = any(getattr(module, "gradient_checkpointing", False) is True for module in self.model.modules())
        return (f"training precision: {precision}, weights {weights}; "
                f"activation checkpointing {'on' if checkpointing else 'off'}")

    def restore_scalar_parameters(self) -> None:
        """Give the parameters held as (1,) tensors for DeepSpeed their 0-dim shape back."""
        for parameter in self.scalar_parameters:
            parameter.data = parameter.data.reshape(())

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        workers = {"num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
                   "persistent_workers": args.dataloader_persistent_workers,
                   "prefetch_factor": args.dataloader_prefetch_factor}
        if self.language_sampler is not None:  # already this rank's batches
            return DataLoader(self.train_dataset, batch_sampler=self.language_sampler, collate_fn=self.data_collator,
                              **workers)
        if not isinstance(self.train_dataset, IterableDataset):
            return super().get_train_dataloader()
        return DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                          drop_last=args.dataloader_drop_last, **workers)

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Matrices and embedding tables decay; 1-d parameters and scalars do not (as open_clip)."""
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    # ------------------------------------------------------------------ loss and logging
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.stream_skips.update(inputs.pop("skipped_records", ()))
        inputs.pop("is_cn", None)
        outputs = model(**inputs)
        for name, value in outputs["terms"].items():
            self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach().float()
        self._term_steps += 1
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def indexed_skips(self) -> Counter:
        """Records dropped while indexing a FineHARD file (the same on every rank), by reason."""
        dataset = self.train_dataset
        return Counter(dataset.stats.reasons) if isinstance(dataset, FineHARDDataset) else Counter()

    def skipped_records(self) -> Counter:
        """Every bad record skipped so far, by reason, over all ranks (a collective call)."""
        streamed = Counter(self.stream_skips)
        if self.args.world_size > 1:
            gathered: list = [None] * self.args.world_size
            torch.distributed.all_gather_object(gathered, dict(self.stream_skips))
            streamed = sum((Counter(counts) for counts in gathered), Counter())
        return self.indexed_skips() + streamed

    def _logged_terms(self) -> dict[str, float]:
        """Mean of every loss term since the last log line over micro-batches and ranks, and the
        number of records skipped so far (a collective call under DDP)."""
        names = sorted(self._term_sums)
        device = self.args.device
        values = [self._term_sums[name].to(device=device, dtype=torch.float64) for name in names]
        counts = [float(self._term_steps), float(sum(self.stream_skips.values()))]
        reduced = torch.stack(values + [torch.tensor(count, dtype=torch.float64, device=device) for count in counts])
        if self.args.world_size > 1:
            torch.distributed.all_reduce(reduced)
        steps, streamed = reduced[-2].item(), reduced[-1].item()
        logs = {f"loss_{name}": reduced[index].item() / steps for index, name in enumerate(names)}
        skipped = sum(self.indexed_skips().values()) + int(streamed)
        if skipped:
            logs["skipped_records"] = skipped
        self._term_sums.clear()
        self._term_steps = 0
        return logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._term_steps:
            logs.update(self._logged_terms())
        super().log(logs, start_time)

@dataclass
class TrainResult:
    """What :func:`train` returns: where the run wrote, its log (one entry per log line, as
    ``trainer_state.json``) and the bad records skipped over all ranks, by reason."""

    output_dir: str
    final_model_dir: str
    log_history: list[dict]
    skipped_summary: str
    skipped_records: dict[str, int] = field(default_factory=dict)


def build_model(config: TrainConfig):
    """The model of ``config.model``: its family's model class, from a random config, the plain dual
    encoder it extends (``init: clip`` / ``siglip2``) or a checkpoint; stage-2 recipes then copy
    ``logit_scale`` into the region temperatures, as the official launch does."""
    settings = config.model
    family = get_family(settings.family, "model.family")
    if settings.init != "config":
        locate_config(settings.path)  # a missing directory or an unknown hub id, named
        if Path(settings.path).is_dir():
            check_checkpoint_files(settings.path)
    if settings.init == family.training.base_init:
        model = resolve(family.training.from_base)(settings.path)
    elif settings.init == "pretrained":
        model = family.model_class.from_pretrained(settings.path)
    else:
        model = family.model_class(settings.build_config())
    if config.loss.region_scales_from_logit_scale:
        copy_logit_scale_to_region_scales(model)
    return model


def build_processor(config: TrainConfig, model):
    return processor_for(model, tokenizer=config.model.load_tokenizer(), family=get_family(config.model.family),
                         **config.data.processor_options(config.model.family))


def build_step(config: TrainConfig, model) -> FGCLIPForTraining | RerankerForTraining:
    loss = config.loss
    if config.model.reranker is not None:
        options = dict(config.model.reranker)
        text_kind, negatives = options.pop("text_kind", "long"), options.pop("negatives", 2)
        reranker = CrossEncoderReranker(CrossEncoderRerankerConfig(
            image_width=model.config.vision_config.hidden_size, text_width=model.config.text_config.hidden_size,
            **options))
        seed = config.training.get("seed", 42)
        return RerankerForTraining(model, reranker, text_kind=text_kind, negatives=negatives, seed=seed)
    loss_class = get_family(config.model.family).loss_class()
    return FGCLIPForTraining(model, loss_class(**loss.loss_arguments(config.model.family)), loss.regional,
                             loss.hard_negatives)


def build_dataset(config: TrainConfig, processor, seed: int):
    data = config.data
    if data.shards and config.training.get("max_steps", -1) <= 0:
        raise ConfigError(f"{config.source}: data.shards: a shard stream has no length; set training.max_steps")
    options = data.dataset_options(config.model.family, config.training.get("per_device_train_batch_size", 8))
    if data.shards:
        return FineHARDShardDataset(data.train, processor, data.max_boxes, seed=seed, shuffle_shards=True,
                                    skip_bad_records=data.skip_bad_records, **options)
    dataset = FineHARDDataset(data.train, data.image_root, processor, data.max_boxes, seed=seed,
                              skip_bad_records=data.skip_bad_records, allow_outside_root=data.allow_outside_root,
                              **options)
    if dataset.stats.skipped:
        logger.warning("%s; first: %s", dataset.stats.summary(), " | ".join(dataset.stats.examples))
    if len(dataset) == 0:
        problem = (f"every record was skipped as bad ({dataset.stats.summary()}; first: {dataset.stats.examples[0]})"
                   if dataset.stats.skipped else "it holds no records")
        raise DataError(data.train, f"no usable record to train on: {problem}")
    check_regions(config, dataset)
    return dataset


def check_regions(config: TrainConfig, dataset: FineHARDDataset) -> None:
    """A recipe with the regional (hard-negative) loss on needs records with boxes (negatives): without
    any, the term would silently be zero and stage 2 would train the global loss only."""
    reader, loss = dataset.reader, config.loss
    needs = [("loss.regional", "a box (bbox_info)", reader.with_regions, loss.regional),
             ("loss.hard_negatives", "hard negatives (flag_short_neg: 1)", reader.with_negatives,
              loss.hard_negatives)]
    for option, what, count, on in needs:
        if on and count == 0:
            raise DataError(config.data.train, f"none of its {len(dataset)} records has {what}, but {option} is on "
                                               f"in {config.source}; give stage-2 data or set {option}=false")


def _discard_incomplete_checkpoints(output_dir: str, resume_from: str | None) -> None:
    """Remove the incomplete checkpoints a resumed run would overwrite (those after its start):
    HF's rotation would otherwise count them as the newest checkpoints and delete complete ones."""
    start = int(CHECKPOINT_PATTERN.match(Path(resume_from).name).group(1)) if resume_from else -1
    for step, path, is_complete in _checkpoints(output_dir):
        if not is_complete and step > start:
            logger.warning("removing incomplete checkpoint %s (no %s marker)", path, COMPLETE_MARKER)
            shutil.rmtree(path)


def _save_final(final_dir: Path, parts: list[tuple[str, object, object]]) -> None:
    """``save_pretrained`` of each ``(subdirectory, model, processor or None)`` into a staging
    directory, then swap it in for ``final_dir`` (``""`` is ``final_dir`` itself)."""
    staging, previous = final_dir.with_name(final_dir.name + ".tmp"), final_dir.with_name(final_dir.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    with writing_checkpoint(staging, final_dir.parent):
        for subdirectory, model, processor in parts:
            model.save_pretrained(staging / subdirectory)
            if processor is not None:
                processor.save_pretrained(staging / subdirectory)
    if final_dir.exists():
        shutil.rmtree(previous, ignore_errors=True)
        final_dir.rename(previous)
    staging.rename(final_dir)
    shutil.rmtree(previous, ignore_errors=True)


def write_recipe(config: TrainConfig, output_dir: Path) -> None:
    """The resolved recipe as ``output_dir/recipe.json`` (once every input has been checked)."""
    path = output_dir / RECIPE_FILE
    with writing(path):
        output_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(config.to_dict(), indent=2, default=str) + "\n")
    logger.info("resolved recipe: %s", path)


def final_parts(step, model, processor) -> list[tuple[str, object, object]]:
    """What ``final/`` holds: the trained model and its processor; for re-ranker training the re-ranker,
    and under ``pre_ranking`` (where the dual encoder trains too) the dual encoder in ``dual_encoder/``."""
    if not isinstance(step, RerankerForTraining):
        return [("", model, processor)]
    return [("", step.reranker, None)] + ([("dual_encoder", model, processor)] if step.pre_ranking else [])


def train(config: TrainConfig, resume: bool | str = False, callbacks: list | None = None) -> TrainResult:
    """Run one training stage described by ``config`` (a DeepSpeed recipe without a launcher in a
    one-process world: :func:`one_process_world`).

    Args:
        resume: ``True`` resumes from the last complete checkpoint of the output directory
            (a fresh start if there is none); a path resumes from that checkpoint.
        callbacks: extra ``TrainerCallback`` objects.
    """
    config.check_hardware()  # before a one-process world is set up for nothing
    if not config.training.get("output_dir"):  # checkpoints, recipe.json and final/ go there; no silent default
        raise ConfigError(f"{config.source}: training.output_dir: not set; give the folder for checkpoints and "
                          "the final model (e.g. training.output_dir=outputs/run)")
    check_output_dir(config.training["output_dir"], f"{config.source}: training.output_dir")
    with one_process_world(config.training.get("deepspeed") and f"{config.source}: training.deepspeed"):
        return _train(config, resume, callbacks)


def _train(config: TrainConfig, resume: bool | str, callbacks: list | None) -> TrainResult:
    try:
        arguments = config.training_arguments()
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{config.source}: training: {error}") from None
    if arguments.use_cpu or not torch.cuda.is_available():
        keep_freed_memory()
    set_seed(arguments.seed)  # the random initialisation of `init: config` models
    model = build_model(config)
    processor = build_processor(config, model)
    data_seed = arguments.data_seed if arguments.data_seed is not None else arguments.seed
    dataset = build_dataset(config, processor, data_seed)
    step = build_step(config, model)
    callbacks = list(callbacks or [])
    if config.loss.max_logit_scale is not None:
        callbacks.append(LogitScaleClampCallback(config.loss.max_logit_scale))
    trainer = FGCLIPTrainer(model=step, args=arguments, train_dataset=dataset,
                            data_collator=FineHARDCollator(processor), callbacks=callbacks,
                            group_by_language=config.data.group_by_language)

    checkpoint = resumable_checkpoint(arguments.output_dir) if resume is True else (resume or None)
    if checkpoint and resume is not True:
        if not Path(checkpoint).is_dir():
            raise CheckpointError(checkpoint, "checkpoint directory not found")
        if not (Path(checkpoint) / COMPLETE_MARKER).is_file():
            logger.warning("%s has no %s marker: it may be incomplete", checkpoint, COMPLETE_MARKER)
        problem = checkpoint_problem(checkpoint)
        if problem:
            raise CheckpointError(f"cannot resume from {checkpoint}: {problem}")
    if resume is True and trainer.args.should_save:
        _discard_incomplete_checkpoints(arguments.output_dir, checkpoint)
    if trainer.args.should_save:
        write_recipe(config, Path(arguments.output_dir))
    trainer.accelerator.wait_for_everyone()
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    final_dir = Path(arguments.output_dir) / "final"
    trainer.restore_scalar_parameters()
    if trainer.args.should_save:
        _save_final(final_dir, final_parts(step, model, processor))
    trainer.accelerator.wait_for_everyone()
    skipped = trainer.skipped_records()
    summary = f"skipped {sum(skipped.values())} bad record(s)" + (
        " (" + ", ".join(f"{reason}: {count}" for reason, count in skipped.most_common()) + ")" if skipped else "")
    return TrainResult(arguments.output_dir, str(final_dir), trainer.state.log_history, summary, dict(skipped))
