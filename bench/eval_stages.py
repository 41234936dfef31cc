"""One ``fgclip eval`` command with its stages timed, in this process (``bench/eval.py`` runs it).

    python bench/eval_stages.py OUT.json eval --model CKPT --data-root DIR --tasks fgovd --workers 0

The command runs as ``fgclip eval`` runs it (``fgclip.cli.main``); the library is unchanged, only
some of its functions are wrapped by timers in this process. A stage's time is exclusive: a timed
function called inside another counts once, in its own stage. The stages:

* imports: ``torch`` + ``transformers`` + transformers' CLIP modeling (the floor's import
  baseline), then the rest of the evaluation path (fgclip's modules, the checkpoint's family);
* model load: ``fgclip.encoders.load_encoder``;
* reading the records: ``fgclip.eval.runner.prepare`` (benchmark files parsed, image paths checked);
* image decoding: ``fgclip.image_io.load_image`` as the image dataset calls it;
* image resizing: the processor's image calls (resize, normalise, boxes mapped) in the collate;
* image tower: ``Encoder.encode_regions`` / ``encode_images`` without region pooling;
* region pooling: ``fgclip.modeling_common.roi_pool``;
* tokenizing: the processor's text calls (token counts for batching, then each batch);
* text tower: ``Encoder.encode_texts`` without tokenizing;
* image / text batching: the rest of ``FeatureExtractor``'s calls (DataLoader, copies, cache);
* scoring: the rest of ``fgclip.eval.runner.evaluate`` (requests built, scores, metrics);
* writing results; other: the rest of the command (argument parsing, set-up).

With ``--workers 0`` images are read and resized in this process, so their time shows; with
workers they run in other processes and only waits show (as image batching).

After the command (not timed) the model FLOPs of the work it did are counted with torch's
``FlopCounterMode``: each encoded image once (one image of each input shape counted, times the
images of that shape) and each text it encoded once at its own token count (for families padded
to a fixed length, at that length). Written to OUT.json with the stage times, the command's total
since this process started, and the seconds the counting took (the parent subtracts them).
"""
from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402

STAGES = ("imports: torch + transformers", "imports: rest of the evaluation path", "model load",
          "reading the records", "image decoding", "image resizing", "image tower", "region pooling",
          "tokenizing", "text tower", "image batching", "text batching", "scoring", "writing results", "other")
IMAGE_STAGES = ("image decoding", "image resizing", "image tower", "region pooling", "image batching")
TEXT_STAGES = ("tokenizing", "text tower", "text batching")


class Stages:
    """Exclusive wall time per stage of nested timed calls."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    @contextlib.contextmanager
    def timing(self, label: str):
        self._stack.append([label, 0.0])
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            label, inner = self._stack.pop()
            self.seconds[label] += elapsed - inner
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, owner, name: str, stage, record=None) -> None:
        """Time ``owner.name`` as ``stage`` (a label, or a function of the call's arguments giving one);
        ``record(result, *args, **kwargs)`` is called after each call."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.timing(stage(*args, **kwargs) if callable(stage) else stage):
                result = original(*args, **kwargs)
            if record is not None:
                record(result, *args, **kwargs)
            return result

        setattr(owner, name, timed)


class Work:
    """What the command encoded: images per (method, input shape) with one sample each, texts per path."""

    def __init__(self):
        self.counting = False
        self.encoder = None
        self.images: Counter = Counter()
        self.samples: dict = {}
        self.texts: dict[str, list[str]] = defaultdict(list)

    def image_batch(self, method: str):
        def record(result, encoder, batch):
            if self.counting:
                return
            self.encoder = encoder
            shapes = batch.get("spatial_shapes")
            for index in range(batch["pixel_values"].shape[0]):
                key = (method, tuple(batch["pixel_values"].shape[1:]),
                       None if shapes is None else tuple(shapes[index].tolist()))
                self.images[key] += 1
                if key not in self.samples:
                    self.samples[key] = one_image(batch, index)
        return record

    def text_batch(self, result, encoder, texts, kind="short"):
        if not self.counting:
            self.encoder = encoder
            self.texts[encoder.text_kind(kind)].extend(texts)

    def flops(self) -> dict:
        """Model FLOPs of the recorded work: ``{"image": ..., "text": ...}``, and what was counted."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        def count(function) -> int:
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                function()
            return counter.get_total_flops()

        self.counting = True
        encoder = self.encoder
        image_flops = sum(number * count(lambda key=key: getattr(encoder, key[0])(self.samples[key]))
                          for key, number in self.images.items())
        text_flops, tokens, distinct = 0, 0, 0
        for path, texts in self.texts.items():
            texts = sorted(set(texts))
            distinct += len(texts)
            processor = encoder.processor
            if processor.minimal_padding == "longest":
                mask = processor(text=texts, text_kind=path, padding="longest")["attention_mask"]
                lengths = mask.sum(dim=1).tolist()
            else:
                lengths = [processor.max_length(path)] * len(texts)
            example = dict(zip(lengths, texts))  # one text of each token count
            per_length = {length: count(lambda text=text: encoder.encode_texts([text], path))
                          for length, text in example.items()}
            text_flops += sum(per_length[length] for length in lengths)
            tokens += sum(lengths)
        return {"image": image_flops, "text": text_flops, "images": sum(self.images.values()),
                "texts": distinct, "text_tokens": tokens}


def one_image(batch, index: int) -> dict:
    """Image ``index`` of a processor batch, as a batch of one."""
    from transformers import BatchFeature

    sliced = {}
    for key, value in batch.items():
        sliced[key] = value[index:index + 1] if hasattr(value, "shape") or isinstance(value, list) else value
    return BatchFeature(sliced)


def model_paths(argv: list[str]) -> tuple[list[str], str]:
    from fgclip.eval.cli import add_eval_arguments

    args = add_eval_arguments(argparse.ArgumentParser()).parse_args(argv[1:])
    return [spec.partition("=")[2] or spec for spec in args.model], args.model_type


def instrument(stages: Stages, work: Work) -> None:
    import fgclip.encoders as encoders
    import fgclip.eval.features as features
    import fgclip.eval.runner as runner
    import fgclip.modeling_common as modeling_common
    from fgclip.processing_common import DualEncoderProcessor

    stages.wrap(runner, "prepare", "reading the records")
    stages.wrap(runner, "evaluate", "scoring")
    stages.wrap(runner, "write_atomically", "writing results")
    stages.wrap(encoders, "load_encoder", "model load")
    stages.wrap(features, "load_image", "image decoding")
    stages.wrap(features._ImageDataset, "collate", "image resizing")
    stages.wrap(DualEncoderProcessor, "__call__",
                lambda self, images=None, text=None, **kwargs: "tokenizing" if images is None else "image resizing")
    stages.wrap(modeling_common, "roi_pool", "region pooling")  # before the family modules bind it
    stages.wrap(encoders.Encoder, "encode_regions", "image tower", work.image_batch("encode_regions"))
    stages.wrap(encoders.Encoder, "encode_images", "image tower", work.image_batch("encode_images"))
    stages.wrap(encoders.Encoder, "encode_texts", "text tower", work.text_batch)
    for method in ("encode_regions", "encode_images"):
        stages.wrap(features.FeatureExtractor, method, "image batching")
    stages.wrap(features.FeatureExtractor, "encode_texts", "text batching")


def main() -> int:
    output, argv = sys.argv[1], sys.argv[2:]
    stages, work = Stages(), Work()
    with stages.timing("imports: torch + transformers"):
        import torch  # noqa: F401
        import transformers.models.clip.modeling_clip  # noqa: F401
    with stages.timing("imports: rest of the evaluation path"):
        import fgclip.cli
        import fgclip.eval.runner  # noqa: F401
        from fgclip.encoders import checkpoint_family

        instrument(stages, work)
        paths, model_type = model_paths(argv)
        for path in paths:
            family = checkpoint_family(path, model_type)
            family.model_class, family.processor_class  # the modules loading the model imports
    with stages.timing("other"):
        status = fgclip.cli.main(argv)
    total = time.perf_counter() - START
    seconds = {stage: stages.seconds.get(stage, 0.0) for stage in STAGES}  # before counting re-runs the towers
    flops = work.flops() if work.encoder is not None else {}
    with open(output, "w") as handle:
        json.dump({"status": status, "seconds": seconds, "total": total, "flops": flops,
                   "counting": time.perf_counter() - START - total}, handle, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
