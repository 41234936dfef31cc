"""LLaVA-1.5 conversation data, formatted token for token as LLaVA's training code does.

Records follow LCS-558K and llava_v1_5_mix665k::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

``image`` is optional (text-only records). An image record holds exactly one ``<image>``, in
a human turn; it is moved to the front of that turn (``"<image>\\n" + text``, stripped).

The rules below are those of LLaVA's ``llava/train/train.py``, ``conversation.py`` and
``mm_utils.py`` (commit c121f04), which the tests check against values that code printed:

* Prompts. ``plain`` (stage 1): ``"<image>" + caption + "\\n"``, the human text dropped.
  ``v1`` (Vicuna, stage 2): ``system + " USER: " + q1 + " ASSISTANT: " + a1 + "</s>" +
  "USER: " + q2 + ...``; an empty message is written as ``"ROLE:"`` with no separator.
* Tokens. The text pieces around ``<image>`` are tokenized separately, each as a whole text
  (so each gets sentencepiece's leading ``▁``), and only the first keeps its BOS; with
  LLaMA, ``"USER: <image>\\nWhat"`` gives ``..., 29871, <image>, 29871, 13, ...``.
* Labels. ``plain``: everything after the image is a target. ``v1``: counted per round
  (the text between ``</s>``): the instruction up to ``" ASSISTANT: "`` is ignored by its
  token count minus two (its BOS and the ``▁`` that ends it), so a lone ``▁`` before an
  answer that starts with a digit, a space or a newline is a target; after the first round
  a non-``legacy`` tokenizer counts one token fewer per round. If the counted length differs
  from the sequence length, every label is ignored (LLaVA's "tokenization mismatch"): the
  record stays, with no target (an empty answer does this).
* Length. Tokens equal to the pad id are dropped (LLaVA's collator masks them and its model
  removes them), the image is expanded to its placeholders and the sequence is cut at
  ``max_length``. Text-only ``v1`` records are cut before their labels are counted (LLaVA
  tokenizes them with truncation), image records after.

A record left with no target (an empty answer, a first question longer than ``max_length``,
an image cut by the truncation) is kept as LLaVA keeps it; its loss contributes nothing.
An image that does not fit whole is dropped with the tokens from its first placeholder on:
LLaVA keeps the part that fits, but as nothing after it is a target the loss is the same.
:class:`ConversationDataset` counts these records when it indexes the file, and refuses
them there with ``strict=True``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers.pre_tokenizers import Metaspace
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging

from fgclip.errors import DataError, outside_root_reason
from fgclip.image_io import load_image

from .builder import IMAGE_TOKEN

IGNORE_INDEX = -100
IMAGE_SLOT = -200  # an image's place in token ids before its expansion (LLaVA's IMAGE_TOKEN_INDEX)
HUMAN, GPT = "human", "gpt"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IMAGE_ASPECT_RATIOS = ("square", "pad")
INDEX_BATCH = 1024  # records tokenized together when a dataset is indexed
MISMATCH_WARNINGS = 10  # LLaVA's "tokenization mismatch" lines logged one by one (the summary counts them all)

logger = logging.get_logger(__name__)


class RecordError(DataError):
    """A conversation record that cannot be used; the message names the file, record and field."""


@dataclass(frozen=True)
class ConversationFormat:
    """How (question, answer) turns become one training string.

    Args:
        name: ``"plain"`` or ``"v1"``.
        system: text before the first turn (``v1`` only).
        roles: speaker tags of the human and the assistant (``v1`` only).
        separators: written after a human and after an assistant message (``v1`` only).
    """

    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    separators: tuple[str, str] = (" ", "</s>")

    def render(self, turns: Sequence[tuple[str, str]]) -> str:
        """Join ``(question, answer)`` turns into one string; ``<image>`` may appear in questions."""
        if self.name == "plain":
            if len(turns) != 1 or IMAGE_TOKEN not in turns[0][0]:
                raise ValueError("the plain format takes one (image question, caption) pair")
            return IMAGE_TOKEN + turns[0][1] + "\n"
        text = self.system + self.separators[0]
        for question, answer in turns:
            for role, message, separator in zip(self.roles, (question, answer), self.separators):
                text += f"{role}: {message}{separator}" if message else f"{role}:"
        return text

    @property
    def answer_start(self) -> str:
        """What precedes each answer in a ``v1`` prompt (where a round's instruction ends)."""
        return f"{self.separators[0]}{self.roles[1]}: "

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
    """LLaVA's placement: ``"<image>\\n"`` then the turn's text without the placeholder, stripped."""
    return (IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def record_turns(record: dict, where: str) -> list[tuple[str, str]]:
    """Validate one record and return its ``(question, answer)`` pairs.

    Raises :class:`RecordError` (message starting with ``where``) for an empty or malformed
    conversation, roles that do not alternate human/gpt, an image record without exactly one
    ``<image>`` in a human turn, or ``<image>`` in an answer or in a text-only record.
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


def tokenizer_legacy(tokenizer: PreTrainedTokenizerBase) -> bool:
    """A LLaMA tokenizer's ``legacy``, or the config value a generic tokenizer keeps (what
    ``AutoTokenizer`` gives in a Llava directory); True, no ``v1`` offset, for other tokenizers."""
    legacy = getattr(tokenizer, "legacy", tokenizer.init_kwargs.get("legacy"))
    return True if legacy is None else bool(legacy)


def skips_boundary_before_space(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` is a tokenizers port of a sentencepiece model (a ``Metaspace`` that
    prepends ``▁``, as transformers 5's LLaMA tokenizer): unlike sentencepiece, it prepends no
    ``▁`` to a text that already starts with a space."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = backend.pre_tokenizer if backend is not None else None
    return isinstance(pre_tokenizer, Metaspace) and pre_tokenizer.prepend_scheme != "never"


@dataclass(frozen=True)
class Encoded:
    """One record's ``input_ids`` and ``labels`` (L each) and what happened to it.

    ``has_image``: the image placeholders are in ``input_ids``; ``image_cut``: the record's image
    did not fit in ``max_length`` and was dropped; ``masked``: when LLaVA's label count mismatched,
    the two numbers of its warning (the counted length and the tokens), else None.
    """

    input_ids: list[int]
    labels: list[int]
    has_image: bool
    image_cut: bool
    masked: tuple[int, int] | None

    @property
    def targets(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class LlavaTokenization:
    """LLaVA's token ids and labels for rendered conversations (see the module docstring).

    Args:
        tokenizer: the LM tokenizer; ``legacy`` (LLaMA tokenizers) selects the ``v1`` count offset.
        image_tokens: placeholders per image (the model's ``image_seq_length``).
        max_length: longest sequence kept, image placeholders included (``None``: no limit).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_tokens: int, max_length: int | None):
        self.tokenizer = tokenizer
        self.image_tokens = image_tokens
        self.max_length = max_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.pad_token_id, self.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
        self.legacy = tokenizer_legacy(tokenizer)
        self.restore_boundary = skips_boundary_before_space(tokenizer)
        self.tokenized: dict[str, list[int]] = {}

    def piece_text(self, text: str) -> str:
        # sentencepiece (LLaVA's slow tokenizer) prepends its "▁" to " 5" too ("▁▁5"); Metaspace does not.
        return "▁" + text if self.restore_boundary and text[:1] in (" ", "▁") else text

    def ids(self, text: str) -> list[int]:
        """Token ids with :data:`IMAGE_SLOT` for each ``<image>``; the pieces between images are
        tokenized separately and only the first keeps its BOS."""
        pieces = []
        for piece in map(self.piece_text, text.split(IMAGE_TOKEN)):
            known = self.tokenized.get(piece)
            pieces.append(known if known is not None else self.tokenizer(piece)["input_ids"])
        skip = int(bool(pieces[0]) and pieces[0][0] == self.bos_token_id)
        ids = list(pieces[0])
        for piece in pieces[1:]:
            ids += [IMAGE_SLOT, *piece[skip:]]
        return ids

    def encode_many(self, texts: Sequence[str], conversation_format: ConversationFormat) -> list[Encoded]:
        """:meth:`encode` of each text, with every piece tokenized in one batch (several times faster)."""
        needed = list(texts)
        for text in texts:
            needed += [IMAGE_TOKEN] if conversation_format.name == "plain" else [
                part for pair in v1_rounds(text, conversation_format) for part in pair]
        pieces = list({self.piece_text(piece) for text in needed for piece in text.split(IMAGE_TOKEN)})
        self.tokenized = dict(zip(pieces, self.tokenizer(pieces)["input_ids"]))
        try:
            return [self.encode(text, conversation_format) for text in texts]
        finally:
            self.tokenized = {}

    def encode(self, text: str, conversation_format: ConversationFormat) -> Encoded:
        """Ids and labels of one rendered conversation, cut to ``max_length``."""
        ids = self.ids(text)
        labels = list(ids)
        masked = None
        if conversation_format.name == "plain":
            ignore(labels, 0, len(self.ids(IMAGE_TOKEN)))
        else:
            if IMAGE_SLOT not in ids and self.max_length is not None:  # tokenized with truncation by LLaVA
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            masked = self.count_labels(ids, labels, text, conversation_format)
        return self.fit(ids, labels, masked)

    def count_labels(
        self, ids: list[int], labels: list[int], text: str, conversation_format: ConversationFormat
    ) -> tuple[int, int] | None:
        """Ignore the instructions in ``labels`` (in place) by LLaVA's count; when the count mismatches
        (every label is then ignored), LLaVA's "tokenization mismatch: {counted} vs. {tokens}" numbers."""
        cursor = 1
        ignore(labels, 0, cursor)
        for index, (round_text, instruction) in enumerate(v1_rounds(text, conversation_format)):
            round_length = len(self.ids(round_text))
            instruction_length = len(self.ids(instruction)) - 2
            if index > 0 and not self.legacy:
                round_length, instruction_length = round_length - 1, instruction_length - 1
            ignore(labels, cursor, cursor + instruction_length)
            cursor += round_length
        ignore(labels, cursor, len(labels))
        within_limit = self.max_length is None or cursor < self.max_length
        total = sum(token != self.pad_token_id for token in ids)
        if within_limit and cursor != total:
            ignore(labels, 0, len(labels))
            return cursor, total
        return None

    def fit(self, tokens: list[int], token_labels: list[int], masked: tuple[int, int] | None) -> Encoded:
        """Cut at ``max_length``, drop pad-id tokens, expand the image and cut again; an image
        whose placeholders do not all fit is dropped with everything from its first one on."""
        limit = self.max_length
        kept = [(token, label) for token, label in zip(tokens[:limit], token_labels[:limit])
                if token != self.pad_token_id]
        ids, labels = [token for token, _ in kept], [label for _, label in kept]
        start = ids.index(IMAGE_SLOT) if IMAGE_SLOT in ids else None
        if start is not None:
            ids[start : start + 1] = [self.image_token_id] * self.image_tokens
            labels[start : start + 1] = [IGNORE_INDEX] * self.image_tokens
            if limit is not None and start + self.image_tokens > limit:
                limit = start
        has_image = start is not None and (limit is None or start < limit)
        return Encoded(ids[:limit], labels[:limit], has_image, image_cut=IMAGE_SLOT in tokens and not has_image,
                       masked=masked)


def v1_rounds(text: str, conversation_format: ConversationFormat) -> Iterator[tuple[str, str]]:
    """LLaVA's ``v1`` rounds of a rendered text: ``(round, instruction)`` pairs, split at the
    assistant separator, up to the first round without exactly one answer start."""
    answer_start = conversation_format.answer_start
    for round_text in text.split(conversation_format.separators[1]):
        parts = round_text.split(answer_start)
        if not round_text or len(parts) != 2:
            return
        yield round_text, parts[0] + answer_start


def ignore(labels: list[int], start: int, stop: int) -> None:
    """``labels[start:stop] = -100`` within the list's length (as a tensor slice assignment)."""
    for position in range(max(start, 0), min(stop, len(labels))):
        labels[position] = IGNORE_INDEX


def encode_text(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    target_spans: Sequence[tuple[int, int]],
    image_tokens: int,
    max_length: int | None,
    where: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A generation prompt as ``input_ids`` (L,) laid out as in training (LLaVA's evaluation
    tokenizes prompts the same way), with ``labels`` (L,) all ``-100``.

    ``target_spans`` must be empty: training labels follow LLaVA's count rule
    (:class:`ConversationDataset`), not character spans. Raises :class:`RecordError` naming
    ``where`` when the tokenizer does not know ``<image>`` or an image does not fit in ``max_length``.
    """
    if target_spans:
        raise ValueError("encode_text encodes prompts; training labels come from ConversationDataset")
    if IMAGE_TOKEN in text and IMAGE_TOKEN not in tokenizer.get_vocab():
        raise RecordError(f"{where}: the tokenizer has no {IMAGE_TOKEN} token (see mllm.prepare_tokenizer)")
    tokenization = LlavaTokenization(tokenizer, image_tokens, max_length)
    ids = tokenization.ids(text)
    encoded = tokenization.fit(ids, [IGNORE_INDEX] * len(ids), masked=None)
    if encoded.image_cut:
        raise RecordError(f"{where}: the image tokens do not fit in model_max_length={max_length}")
    return torch.tensor(encoded.input_ids, dtype=torch.long), torch.tensor(encoded.labels, dtype=torch.long)


def load_records(path: str | os.PathLike) -> list[dict]:
    """A JSON list (LLaVA's files) or JSON lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "conversation file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(path, f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None
        return records
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(path, f"invalid JSON: {error.msg} (column {error.colno})", line_number) from None
    return records


def open_image(path: str | os.PathLike, where: str) -> Image.Image:
    """The image of a record through the project's reader (:func:`fgclip.image_io.load_image`);
    a missing or unreadable file is an :class:`~fgclip.errors.ImageError` naming ``where`` and the file."""
    return load_image(path, f"{where}: image {path}")


class ConversationDataset(Dataset):
    """LLaVA conversations -> ``input_ids``, ``labels`` and, for image records, ``pixel_values``.

    Every record is validated and tokenized once here (no image is read), so a record that
    cannot be used fails here, not in the middle of a run, and the records left with no
    target token are known and counted before training (:meth:`summary`).

    Args:
        data_path: JSON list or JSON lines of records (see the module docstring).
        tokenizer: the LM tokenizer with ``<image>`` added (:func:`mllm.prepare_tokenizer`).
        image_processor: turns a PIL image into ``pixel_values`` (1, 3, S, S); takes ``do_pad``.
        image_tokens: placeholders per image (the model's ``image_seq_length``).
        image_folder: base directory of the records' relative image paths.
        conversation_format: ``"plain"`` or ``"v1"``.
        max_length: longest token sequence kept (``model_max_length``).
        check_image_files: check that every image file exists.
        image_aspect_ratio: ``"square"`` resizes the short side and centre-crops (LLaVA's default,
            its stage 1); ``"pad"`` first pads to a square with the mean colour (its stage 2).
        strict: refuse records left with no target token instead of counting them.
        allow_outside_root: accept image paths that are absolute or leave ``image_folder``.
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
        image_aspect_ratio: str = "pad",
        strict: bool = False,
        allow_outside_root: bool = False,
    ):
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {', '.join(IMAGE_ASPECT_RATIOS)}, "
                             f"got {image_aspect_ratio!r}")
        self.data_path = str(data_path)
        self.image_processor = image_processor
        self.image_folder = str(image_folder)
        self.format = get_format(conversation_format)
        self.pad_images = image_aspect_ratio == "pad"
        self.tokenization = LlavaTokenization(tokenizer, image_tokens, max_length)
        self.records = load_records(data_path)
        if not self.records:
            raise DataError(data_path, "no records")
        self.turns = [record_turns(record, self.where(index)) for index, record in enumerate(self.records)]
        for index, record in enumerate(self.records):
            if self.format.name == "plain" and (record.get("image") is None or len(self.turns[index]) != 1):
                raise RecordError(f"{self.where(index)}: the plain format needs an image and one human/gpt pair")
            if record.get("image") is not None:
                if not isinstance(record["image"], str):
                    raise RecordError(f"{self.where(index)}: image: expected a path, got {record['image']!r}")
                reason = None if allow_outside_root else outside_root_reason(record["image"])
                if reason:
                    raise RecordError(f"{self.where(index)}: image: {reason}")
                path = self.image_path(record)
                if check_image_files and not os.path.isfile(path):
                    raise RecordError(f"{self.where(index)}: image file not found: {path}")
        self.without_targets: dict[str, list[int]] = {"masked": [], "truncated": [], "image cut": []}
        self.mismatches: dict[int, tuple[int, int]] = {}  # record -> LLaVA's "tokenization mismatch" numbers
        for start in range(0, len(self.records), INDEX_BATCH):
            indices = range(start, min(start + INDEX_BATCH, len(self.records)))
            texts = [self.format.render(self.turns[index]) for index in indices]
            for index, encoded in zip(indices, self.tokenization.encode_many(texts, self.format)):
                if not encoded.targets:
                    self.count_without_target(index, encoded, strict)
        if self.count_without_targets:
            logger.warning(self.summary())

    def count_without_target(self, index: int, encoded: Encoded, strict: bool) -> None:
        """Count record ``index``, left with no target token, or (``strict``) refuse it."""
        reason = "masked" if encoded.masked else "image cut" if encoded.image_cut else "truncated"
        if encoded.masked:
            self.mismatches[index] = encoded.masked
        if strict:
            raise RecordError(f"{self.where(index)}: {self.no_target_field(index, reason)}")
        if encoded.masked and len(self.mismatches) <= MISMATCH_WARNINGS:
            counted, total = encoded.masked
            logger.warning(f"{self.where(index)}: tokenization mismatch: {counted} vs. {total}. (ignored) "
                           "- LLaVA's warning: its label count differs from the length, every label is ignored")
        self.without_targets[reason].append(index)

    def no_target_field(self, index: int, reason: str) -> str:
        limit = f"model_max_length={self.tokenization.max_length}"
        if reason == "image cut":
            return f"image: its {self.tokenization.image_tokens} placeholders do not fit in {limit}"
        if reason == "truncated":
            return f"conversations: no answer token is left within {limit}"
        counted, total = self.mismatches[index]
        mismatch = f"(LLaVA's 'tokenization mismatch: {counted} vs. {total}')"
        empty = [2 * turn + 1 for turn, (_, answer) in enumerate(self.turns[index]) if not answer]
        if empty:
            return f"conversations[{empty[0]}]: empty answer; LLaVA's label count then ignores every token {mismatch}"
        return ("conversations: LLaVA's label count does not match the tokenized length; every token is ignored "
                + mismatch)

    @property
    def count_without_targets(self) -> int:
        return sum(len(indices) for indices in self.without_targets.values())

    def summary(self) -> str:
        """One line: how many records are kept with no target token, and why."""
        counts = ", ".join(f"{len(indices)} {reason}" for reason, indices in self.without_targets.items())
        examples = [self.where(index) for indices in self.without_targets.values() for index in indices[:2]]
        text = (f"{self.data_path}: {self.count_without_targets} of {len(self)} records have no target token "
                f"and add nothing to the loss ({counts}; LLaVA keeps them too)")
        return text + (f"; e.g. {'; '.join(examples)}" if examples else "")

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
        """Word count of the raw turns per record, positive for image records and negative for text-only ones."""
        lengths = []
        for record in self.records:
            words = sum(len(turn["value"].split()) for turn in record["conversations"])
            lengths.append(words if record.get("image") is not None else -words)
        return lengths

    def encode(self, index: int) -> Encoded:
        return self.tokenization.encode(self.format.render(self.turns[index]), self.format)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        encoded = self.encode(index)
        item = {"input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
                "labels": torch.tensor(encoded.labels, dtype=torch.long)}
        if encoded.has_image:
            image = open_image(self.image_path(self.records[index]), self.where(index))
            pixels = self.image_processor(image, do_pad=self.pad_images, return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels[0]
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
