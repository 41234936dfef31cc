"""Batched, sharded feature extraction shared by every benchmark.

:class:`FeatureExtractor` encodes

* images: one backbone pass per image gives its global embedding (:meth:`encode_images`) or
  the region embeddings of all its boxes (:meth:`encode_regions`); images are read and
  pre-processed in DataLoader workers, batched, and sharded across ranks (rank ``r`` takes
  images ``r, r + W, ...``);
* texts: each distinct text is encoded once per text path and cached for the whole run;
  texts are sorted by token count and cut into batches that pad little, sharded across ranks.

On the CPU a tower call takes at most :attr:`FeatureExtractor.device_images_per_call` images and
:attr:`FeatureExtractor.device_text_tokens_per_call` text tokens: larger calls only add memory
traffic there, and smaller image batches let the DataLoader workers decode the next images while
the tower runs. bfloat16 runs hold one autocast region per pass, so each weight is cast once.

Under ``torch.distributed`` every rank ends with the features of all images and texts
(gathered in rank order, then put back in request order), so the metrics are computed the
same way whatever the world size; the world size is read from the process group.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.collate import length_buckets
from ..distributed import gather_counts, get_rank, get_world_size
from ..encoders import Encoder, prepare_images
from ..image_io import load_image
from .common import DataError, ImageRequest


@dataclass
class RegionFeatures:
    """Region embeddings of a list of :class:`ImageRequest`, in request order.

    Args:
        features: (R, D), request 0's boxes first.
        offsets: (N + 1,) start of each request's boxes in ``features``.
    """

    features: torch.Tensor
    offsets: torch.Tensor

    def rows(self, handles: Iterable[tuple[int, int]]) -> torch.Tensor:
        """Embeddings of ``(image index, box index)`` handles (see :class:`RegionRequests`), (len, D)."""
        handles = torch.as_tensor(list(handles), dtype=torch.long).reshape(-1, 2)
        return self.features[self.offsets[handles[:, 0]] + handles[:, 1]]


class _ImageDataset(Dataset):
    """Reads the images of one shard (and their boxes in image pixels); :meth:`collate` turns a list
    of them into one model batch with the processor, in the DataLoader worker."""

    def __init__(self, requests: Sequence[ImageRequest], processor, with_boxes: bool):
        self.requests = list(requests)
        self.processor = processor
        self.with_boxes = with_boxes

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, position: int):
        request = self.requests[position]
        try:
            image = load_image(request.path)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"{request.source}: {error}") from error
        width, height = image.size
        if request.size is not None and tuple(request.size) != (width, height):
            raise DataError(
                f"{request.source}: image {request.path} is {width}x{height} but the annotation says "
                f"{request.size[0]}x{request.size[1]}"
            )
        if not self.with_boxes:
            return image, None
        boxes = torch.as_tensor(request.boxes, dtype=torch.float64)
        if request.normalized:
            boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float64)
        return image, boxes.float()

    def collate(self, batch):
        images, boxes = zip(*batch)
        return prepare_images(self.processor, list(images), None if boxes[0] is None else list(boxes))


def _real_tokens(features) -> list[torch.Tensor]:
    """Rows of :class:`~fgclip.modeling_common.TokenFeatures` without their padding, float16 on the CPU."""
    tokens, mask = features.tokens.half().cpu(), features.mask.bool().cpu()
    return [row[keep] for row, keep in zip(tokens, mask)]


def _comm_device() -> torch.device:
    """Device for collectives: the current CUDA device with NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's (N_r, D) tensor, in rank order (N_r may differ); ``[local]`` when not distributed."""
    if get_world_size() == 1:
        return [local]
    device = _comm_device()
    counts = gather_counts(local.shape[0], device)
    padded = local.new_zeros((max(counts), *local.shape[1:])).to(device)
    padded[: local.shape[0]] = local.to(device)
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    return [piece[:count].to(local.device) for piece, count in zip(pieces, counts)]


class FeatureExtractor:
    """Encodes images and texts of the benchmarks with an :class:`~fgclip.encoders.Encoder`.

    Args:
        batch_size: images per forward pass (on the CPU at most ``device_images_per_call["cpu"]``).
        text_batch_size: texts per forward pass (on the CPU at most ``device_text_tokens_per_call["cpu"]``
            tokens).
        num_workers: DataLoader workers reading and pre-processing images.
        bf16: run the towers under bfloat16 autocast (features are returned as float32).
        progress: show tqdm bars (rank 0 only).
    """

    def __init__(
        self,
        model: Encoder,
        batch_size: int = 64,
        text_batch_size: int = 256,
        num_workers: int = 2,
        bf16: bool = False,
        progress: bool = True,
    ):
        if batch_size < 1 or text_batch_size < 1 or num_workers < 0:
            raise ValueError("batch sizes must be >= 1 and num_workers >= 0")
        self.model = model
        self.batch_size = batch_size
        self.text_batch_size = text_batch_size
        self.num_workers = num_workers
        self.bf16 = bf16
        self.progress = progress
        self._text_index: dict[str, dict[str, int]] = {}
        self._text_bank: dict[str, torch.Tensor] = {}

    # Most images and text tokens per tower call, by device type (other devices: the batch sizes as
    # given). On the CPU a ViT-B/16 call of 64 images holds 150 MB per MLP activation, faulted in and
    # streamed from memory at every layer; 8 images (1576 tokens) or about 1000 text tokens keep the
    # activations in the caches: about 10% faster towers in float32 in a first profile (one thread,
    # docs/benchmarks.md; bench/eval.py measures the whole command).
    device_images_per_call = {"cpu": 8}
    device_text_tokens_per_call = {"cpu": 1024}

    def images_per_call(self) -> int:
        """Images per tower call (and per DataLoader batch) on the model's device."""
        return min(self.batch_size, self.device_images_per_call.get(self.model.device.type, self.batch_size))

    def texts_per_call(self, width: int) -> int:
        """Texts per tower call when each is padded to ``width`` tokens, on the model's device."""
        budget = self.device_text_tokens_per_call.get(self.model.device.type)
        return self.text_batch_size if budget is None else max(1, min(self.text_batch_size, budget // max(width, 1)))

    def _autocast(self):
        """bfloat16 autocast for a whole pass when ``bf16``: autocast keeps each weight's cast until its
        region ends, so one region over all batches casts every weight once (the same values). The
        passes run under ``torch.no_grad``, not ``inference_mode``: under inference mode autocast
        keeps no casts and every call casts every weight again."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def _bar(self, iterable, desc: str, total: int):
        disable = not self.progress or get_rank() != 0
        return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True)

    # ------------------------------------------------------------------ images
    def _encode_shard(self, requests: Sequence[ImageRequest], with_boxes: bool, desc: str) -> torch.Tensor:
        """This rank's images (``rank, rank + W, ...``) through the model, rows in shard order."""
        shard = requests[get_rank() :: get_world_size()]
        dataset = _ImageDataset(shard, self.model.processor, with_boxes)
        loader = DataLoader(dataset, batch_size=self.images_per_call(), num_workers=self.num_workers,
                            collate_fn=dataset.collate)
        device, pieces = self.model.device, []
        with self._autocast():
            for batch in self._bar(loader, desc, len(loader)):
                batch = batch.to(device, non_blocking=True)
                features = self.model.encode_regions(batch) if with_boxes else self.model.encode_images(batch)
                pieces.append(features.float().cpu())
        return torch.cat(pieces) if pieces else torch.zeros(0, self._feature_dim())

    @torch.no_grad()
    def encode_images(self, requests: Sequence[ImageRequest], desc: str = "images") -> torch.Tensor:
        """(N, D) global embeddings of ``requests`` (boxes ignored), gathered over ranks."""
        if not requests:
            raise ValueError("no images to encode")
        world = get_world_size()
        pieces = gather_rows(self._encode_shard(requests, with_boxes=False, desc=desc))
        features = torch.empty(len(requests), pieces[0].shape[-1])
        for source_rank, rows in enumerate(pieces):
            features[list(range(source_rank, len(requests), world))] = rows
        return features

    @torch.no_grad()
    def encode_regions(self, requests: Sequence[ImageRequest], desc: str = "images") -> RegionFeatures:
        """Region embeddings of every box of ``requests`` (one backbone pass per image), gathered over ranks."""
        if not requests:
            raise ValueError("no images to encode")
        empty = next((r for r in requests if r.num_boxes == 0), None)
        if empty is not None:
            raise ValueError(f"{empty.source}: image {empty.path} has no boxes")
        world = get_world_size()
        counts = torch.tensor([r.num_boxes for r in requests], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        pieces = gather_rows(self._encode_shard(requests, with_boxes=True, desc=desc))
        features = torch.empty(int(offsets[-1]), pieces[0].shape[-1])
        for source_rank, rows in enumerate(pieces):
            owned = range(source_rank, len(requests), world)
            destination = [torch.arange(offsets[i], offsets[i + 1]) for i in owned]
            if destination:
                features[torch.cat(destination)] = rows
        return RegionFeatures(features, offsets)

    def _feature_dim(self) -> int:
        """Embedding width, from a one-text probe (for ranks whose shard is empty)."""
        return self.model.encode_texts(["a"], "short").shape[-1]

    # ------------------------------------------------------------------ tokens (re-ranking)
    @torch.no_grad()
    def encode_image_tokens(
        self, requests: Sequence[ImageRequest], desc: str = "image tokens"
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """For a cross-encoder re-ranker: per image, its real tokens (L_i, C) as float16 on the CPU,
        and from the same pass the (N, D) L2-normalised global embeddings.

        Not sharded: under ``torch.distributed`` every rank encodes every image.
        """
        dataset = _ImageDataset(requests, self.model.processor, with_boxes=False)
        loader = DataLoader(dataset, batch_size=self.images_per_call(), num_workers=self.num_workers,
                            collate_fn=dataset.collate)
        tokens, embeds = [], []
        with self._autocast():
            for batch in self._bar(loader, desc, len(loader)):
                features = self.model.image_tokens(batch.to(self.model.device, non_blocking=True))
                tokens.extend(_real_tokens(features))
                embeds.append(F.normalize(features.embeds.float(), dim=-1).cpu())
        return tokens, torch.cat(embeds)

    @torch.no_grad()
    def encode_text_tokens(
        self, texts: Sequence[str], kind: str, desc: str = "text tokens"
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per text, its real tokens (L_t, C) as float16 on the CPU, and the (N, D) L2-normalised
        embeddings from the same pass (not sharded)."""
        batches = [texts[i : i + self.text_batch_size] for i in range(0, len(texts), self.text_batch_size)]
        tokens, embeds = [], []
        with self._autocast():
            for batch in self._bar(batches, desc, len(batches)):
                features = self.model.text_tokens(list(batch), kind)
                tokens.extend(_real_tokens(features))
                embeds.append(F.normalize(features.embeds.float(), dim=-1).cpu())
        return tokens, torch.cat(embeds)

    # ------------------------------------------------------------------ texts
    # Fixed cost of one more text batch, in tokens, when cutting texts into length buckets (on the
    # CPU a pass of small ops over every layer, and the first bf16 product of each new shape).
    text_batch_overhead_tokens = 512

    def _text_batches(self, texts: list[str], path: str) -> tuple[list[str], list[tuple[int, int]]]:
        """``texts`` sorted by token count, and ``(start, end)`` batches cut where padding each to its
        longest text costs least (:func:`length_buckets`), each of at most :meth:`texts_per_call`
        texts. Families that pad every text to the kind's full length get equal widths, so only the
        size cuts."""
        processor = self.model.processor
        if processor.minimal_padding == "longest":
            lengths = processor(text=texts, text_kind=path, padding="longest")["attention_mask"].sum(dim=1).tolist()
        else:
            lengths = [processor.max_length(path)] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], texts[i]))
        widths = [lengths[i] for i in order]
        batches = []
        for start, end in length_buckets(widths, self.text_batch_overhead_tokens):
            size = self.texts_per_call(widths[end - 1])
            batches.extend((first, min(first + size, end)) for first in range(start, end, size))
        return [texts[i] for i in order], batches

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], kind: str, desc: str = "texts") -> torch.Tensor:
        """(len(texts), D) features; each distinct text of a path is encoded once per run, in
        batches of similar token counts."""
        path = self.model.text_kind(kind)
        index = self._text_index.setdefault(path, {})
        missing = sorted({t for t in texts if t not in index})
        if missing:
            rank, world = get_rank(), get_world_size()
            missing, batches = self._text_batches(missing, path)
            mine = batches[rank::world]
            encoded = []
            with self._autocast():
                for start, end in self._bar(mine, f"{desc} ({path})", len(mine)):
                    encoded.append(self.model.encode_texts(missing[start:end], path).float().cpu())
            local = torch.cat(encoded) if encoded else torch.zeros(0, self._feature_dim())
            new_rows = torch.empty(len(missing), local.shape[-1])
            for source_rank, rows in enumerate(gather_rows(local)):
                destination = [torch.arange(start, end) for start, end in batches[source_rank::world]]
                if destination:
                    new_rows[torch.cat(destination)] = rows
            base = len(index)
            for offset, text in enumerate(missing):
                index[text] = base + offset
            bank = self._text_bank.get(path)
            self._text_bank[path] = new_rows if bank is None else torch.cat([bank, new_rows])
        rows = torch.tensor([index[t] for t in texts], dtype=torch.long)
        return self._text_bank[path][rows]
