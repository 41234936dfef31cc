"""LLaVA conversation data: prompt formats, answer-only labels, datasets, collation, sampling.

Records follow LCS-558K and llava_v1_5_mix665k::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

``image`` is optional (text-only records). An image record holds exactly one ``<image>``, in
a human turn; it is moved to the front of that turn (``"<image>\\n" + text``) as LLaVA does.

Prompt formats (``eos`` is the tokenizer's end token, ``</s>`` for Vicuna):

* ``plain`` (stage 1): ``"<image>" + caption + "\\n"``; the human text is dropped and the
  caption plus the newline are the targets.
* ``v1`` (Vicuna v1, stage 2): ``system + " USER: " + q1 + " ASSISTANT: " + a1 + eos +
  "USER: " + q2 + " ASSISTANT: " + a2 + eos ...``; each answer plus its ``eos`` are targets.

Labels are ``-100`` everywhere except on target tokens. Targets are found from the
tokenizer's character offsets, so the rule does not depend on how a tokenizer merges spaces.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

from .builder import IMAGE_TOKEN

IGNORE_INDEX = -100
HUMAN, GPT = "human", "gpt"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class RecordError(ValueError):
    """A conversation record that cannot be used; the message names the file, record and field."""


@dataclass(frozen=True)
class ConversationFormat:
    """How (question, answer) turns become one training string.

    Args:
        name: ``"plain"`` or ``"v1"``.
        system: text before the first turn (``v1`` only).
        roles: speaker tags of the human and the assistant (``v1`` only).
    """

    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")

    def render(self, turns: Sequence[tuple[str, str]], eos_token: str) -> tuple[str, list[tuple[int, int]]]:
        """Join turns into one string.

        Args:
            turns: ``(question, answer)`` pairs; ``<image>`` may appear in questions.
        Returns:
            The text and the ``[start, end)`` character spans of the targets.
        """
        if self.name == "plain":
            if len(turns) != 1 or IMAGE_TOKEN not in turns[0][0]:
                raise ValueError("the plain format takes one (image question, caption) pair")
            text = IMAGE_TOKEN + turns[0][1] + "\n"
            return text, [(len(IMAGE_TOKEN), len(text))]
        user, assistant = self.roles
        parts, spans, length = [self.system + " "], [], len(self.system) + 1
        for question, answer in turns:
            prompt = f"{user}: {question} {assistant}: "
            length += len(prompt)
            target = answer + eos_token
            spans.append((length, length + len(target)))
            length += len(target)
            parts += [prompt, target]
        return "".join(parts), spans

    def prompt(self, question: str) -> str:
        """Generation prompt for one question; the model continues after it."""
        if self.name == "plain":
            return IMAGE_TOKEN if IMAGE_TOKEN in question else ""
        user, assistant = self.roles
        return f"{self.system} {user}: {question} {assistant}:"


CONVERSATION_FORMATS = {
    "plain": ConversationFormat("plain"),
    "v1": ConversationFormat("v1", system=VICUNA_SYSTEM),
}


def get_format(name: str) -> ConversationFormat:
    if name not in CONVERSATION_FORMATS:
        raise ValueError(f"unknown conversation format {name!r}; expected one of {', '.join(CONVERSATION_FORMATS)}")
    return CONVERSATION_FORMATS[name]


def with_image_first(text: str) -> str:
    """LLaVA's placement: ``"<image>\\n"`` then the turn's text without the placeholder."""
    return IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()


def record_turns(record: dict, where: str) -> list[tuple[str, str]]:
    """Validate one record and return its ``(question, answer)`` pairs.

    Raises :class:`RecordError` (message starting with ``where``) for an empty or malformed
    conversation, roles that do not alternate human/gpt, an image record without exactly one
    ``<image>`` in a human turn, or a text-only record containing ``<image>``.
    """
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected an object, got {type(record).__name__}")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or len(conversations) == 0:
        raise RecordError(f"{where}: field 'conversations' is missing or empty")
    if len(conversations) % 2:
        raise RecordError(f"{where}: field 'conversations' has {len(conversations)} turns; expected human/gpt pairs")
    has_image = record.get("image") is not None
    if has_image and (not isinstance(record["image"], str) or not record["image"]):
        raise RecordError(f"{where}: field 'image' must be a non-empty path string, got {record['image']!r}")
    turns, image_count = [], 0
    for index in range(0, len(conversations), 2):
        pair = conversations[index : index + 2]
        for offset, (turn, role) in enumerate(zip(pair, (HUMAN, GPT))):
            if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
                raise RecordError(
                    f"{where}: conversations[{index + offset}] must be "
                    f"{{'from': '{role}', 'value': <text>}}, got {turn!r}"
                )
        question, answer = pair[0]["value"], pair[1]["value"]
        if not answer.strip():
            raise RecordError(f"{where}: conversations[{index + 1}] has an empty answer")
        if IMAGE_TOKEN in answer:
            raise RecordError(f"{where}: conversations[{index + 1}] (gpt) contains {IMAGE_TOKEN}")
        count = question.count(IMAGE_TOKEN)
        image_count += count
        turns.append((with_image_first(question) if count else question, answer))
    if has_image and image_count != 1:
        raise RecordError(
            f"{where}: an image record needs exactly one {IMAGE_TOKEN} in its human turns, found {image_count}"
        )
    if not has_image and image_count:
        raise RecordError(f"{where}: {IMAGE_TOKEN} appears {image_count} time(s) but the record has no 'image' field")
    return turns


def encode_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    target_spans: Sequence[tuple[int, int]],
    image_tokens: int,
    max_length: int | None,
    where: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``text`` with ``<image>`` expanded to ``image_tokens`` placeholders.

    Returns:
        ``input_ids`` (L,) and ``labels`` (L,): a token is a target when its characters
        overlap a target span; every other label is ``-100``. Sequences longer than
        ``max_length`` are cut at the end; cutting into the image placeholders is an error.
    """
    image_count = text.count(IMAGE_TOKEN)
    expanded = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * image_tokens)
    shift = len(IMAGE_TOKEN) * (image_tokens - 1)

    def moved(position: int) -> int:  # a position of ``text`` in ``expanded``
        return position + shift * text.count(IMAGE_TOKEN, 0, position)

    spans = [(moved(start), moved(end)) for start, end in target_spans]
    encoding = tokenizer(expanded, add_special_tokens=True, return_offsets_mapping=True)
    input_ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        if end > start and any(start < span_end and end > span_start for span_start, span_end in spans):
            labels[position] = input_ids[position]

    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    found = int((input_ids == image_token_id).sum())
    if found != image_count * image_tokens:
        raise RecordError(
            f"{where}: tokenized text holds {found} image tokens, expected {image_count} x {image_tokens}"
        )
    if max_length is not None and len(input_ids) > max_length:
        if int((input_ids[:max_length] == image_token_id).sum()) != found:
            raise RecordError(f"{where}: the image tokens do not fit in model_max_length={max_length}")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def load_records(path: str | os.PathLike) -> list[dict]:
    """A JSON list (LLaVA's files) or JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON: {error}") from error
        return records
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number}: invalid JSON: {error}") from error
    return records


def open_image(path: str | os.PathLike, where: str) -> Image.Image:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise RecordError(f"{where}: cannot read image {path}: {error}") from error


class ConversationDataset(Dataset):
    """LLaVA conversations -> ``input_ids``, ``labels`` and, for image records, ``pixel_values``.

    Args:
        data_path: JSON list or JSON lines of records (see the module docstring).
        tokenizer: the LM tokenizer with ``<image>`` added (:func:`mllm.prepare_tokenizer`).
        image_processor: turns a PIL image into ``pixel_values`` (1, 3, S, S).
        image_tokens: placeholders per image (the model's ``image_seq_length``).
        image_folder: base directory of the records' relative image paths.
        conversation_format: ``"plain"`` or ``"v1"``.
        max_length: longest token sequence kept (``model_max_length``).
        check_image_files: check at construction that every image file exists.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: BaseImageProcessor,
        image_tokens: int,
        image_folder: str | os.PathLike = "",
        conversation_format: str = "v1",
        max_length: int | None = 2048,
        check_image_files: bool = True,
    ):
        self.data_path = str(data_path)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_tokens = image_tokens
        self.image_folder = str(image_folder)
        self.format = get_format(conversation_format)
        self.max_length = max_length
        self.records = load_records(data_path)
        if not self.records:
            raise ValueError(f"{data_path}: no records")
        self.turns = [record_turns(record, self.where(index)) for index, record in enumerate(self.records)]
        for index, record in enumerate(self.records):
            if self.format.name == "plain" and (record.get("image") is None or len(self.turns[index]) != 1):
                raise RecordError(f"{self.where(index)}: the plain format needs an image and one human/gpt pair")
            if check_image_files and record.get("image") is not None:
                path = self.image_path(record)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{self.where(index)}: image file not found: {path}")

    def where(self, index: int) -> str:
        record = self.records[index]
        record_id = record.get("id") if isinstance(record, dict) else None
        return f"{self.data_path}: record {index}" + (f" (id {record_id!r})" if record_id is not None else "")

    def image_path(self, record: dict) -> str:
        return os.path.join(self.image_folder, record["image"])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Word count per record, positive for image records and negative for text-only ones."""
        lengths = []
        for record, turns in zip(self.records, self.turns):
            words = sum(len(question.split()) + len(answer.split()) for question, answer in turns)
            lengths.append(words if record.get("image") is not None else -words)
        return lengths

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record, where = self.records[index], self.where(index)
        text, spans = self.format.render(self.turns[index], self.tokenizer.eos_token)
        input_ids, labels = encode_text(self.tokenizer, text, spans, self.image_tokens, self.max_length, where)
        if not bool((labels != IGNORE_INDEX).any()):
            raise RecordError(f"{where}: no answer token is left within model_max_length={self.max_length}")
        item = {"input_ids": input_ids, "labels": labels}
        if record.get("image") is not None:
            image = open_image(self.image_path(record), where)
            item["pixel_values"] = self.image_processor(image, return_tensors="pt")["pixel_values"][0]
        return item


@dataclass
class ConversationCollator:
    """Right-pads ``input_ids`` (with ``pad_token_id``) and ``labels`` (with -100); stacks the
    ``pixel_values`` of the records that have an image, in batch order (Llava fills the image
    placeholders in that order). A batch without images has no ``pixel_values``."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, item in enumerate(items):
            size = len(item["input_ids"])
            input_ids[row, :size] = item["input_ids"]
            labels[row, :size] = item["labels"]
            attention_mask[row, :size] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [item["pixel_values"] for item in items if "pixel_values" in item]
        if images:
            batch["pixel_values"] = torch.stack(images)
        return batch


def modality_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    """An epoch order whose batches hold one modality and similar lengths.

    ``lengths`` is positive for image records and negative for text-only ones. Each modality
    is shuffled and cut into mega-batches of ``batch_size * world_size`` (the records of one
    optimizer step across ranks and accumulation steps); a mega-batch is sorted by length,
    longest first, so each consecutive ``batch_size`` chunk groups similar lengths. Full
    mega-batches of both modalities are shuffled together; the two remainders go last.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
    if any(length == 0 for length in lengths):
        raise ValueError("lengths must be non-zero (positive: image records, negative: text-only)")
    megabatch = batch_size * world_size
    full, remainder = [], []
    for sign in (1, -1):
        indices = [index for index, length in enumerate(lengths) if length * sign > 0]
        order = torch.randperm(len(indices), generator=generator).tolist()
        shuffled = [indices[position] for position in order]
        for start in range(0, len(shuffled), megabatch):
            chunk = sorted(shuffled[start : start + megabatch], key=lambda index: -abs(lengths[index]))
            (full if len(chunk) == megabatch else remainder).append(chunk)
    order = torch.randperm(len(full), generator=generator).tolist()
    return [index for position in order for index in full[position]] + [i for chunk in remainder for i in chunk]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler over :func:`modality_grouped_indices`; a new order each epoch (``set_epoch``)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))
