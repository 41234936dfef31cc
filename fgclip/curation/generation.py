"""The generative steps of FineHARD curation: captions and region descriptions from a VLM, hard
negatives from an LLM (FG-CLIP Sec. 3.2), with the cleaning and checks their outputs need."""
from __future__ import annotations

import re

from PIL import Image

from .expressions import Expression

LONG_CAPTION_PROMPT = ("Describe this image in detail: every visible object with its colour, material, "
                       "pattern and position, in one paragraph.")
SHORT_CAPTION_PROMPT = "Describe this image in one short sentence."
REGION_PROMPT = "Describe the main object in this image region in one detailed sentence: {expression}."
NEGATIVE_PROMPT = (
    "Rewrite the phrase \"{phrase}\" {count} times, each time changing one or more attributes (colour, "
    "material, pattern, size, shape, texture) but keeping the object \"{head}\". Answer with one phrase "
    "per line and nothing else."
)
SHORT_CAPTION_PREFIX = "a photo of "


def clean_expression(text: str) -> str:
    """One line of generated text as an expression: list markers, quotes, ``;`` and ``,`` and line
    breaks removed (FineHARD's negatives carry none), spaces collapsed."""
    text = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", text)
    text = re.sub(r"[;,\r\n]+", " ", text).strip().strip("\"'“”").strip()
    return re.sub(r"\s+", " ", text).rstrip(".").strip()


def parse_negatives(generated: str, expression: Expression, count: int = 10) -> tuple[str, ...] | None:
    """The first ``count`` usable negatives in an LLM answer, or None when there are fewer.

    Usable: non-empty after :func:`clean_expression`, still naming the object (its head noun,
    as a whole word), different from the positive and from each other (case-insensitive).
    """
    head = re.compile(rf"\b{re.escape(expression.head.lower())}\b")
    seen = {expression.text.lower()}
    negatives = []
    for line in generated.splitlines():
        negative = clean_expression(line)
        if negative and head.search(negative.lower()) and negative.lower() not in seen:
            seen.add(negative.lower())
            negatives.append(negative)
    return tuple(negatives[:count]) if len(negatives) >= count else None


def short_caption(text: str) -> str:
    """A VLM's one-sentence caption as a FineHARD ``short_caption`` ("a photo of ...")."""
    text = clean_expression(text)
    text = text[0].lower() + text[1:] if text else text
    return text if text.startswith(SHORT_CAPTION_PREFIX) else SHORT_CAPTION_PREFIX + text


def _generated_text(output) -> str:
    """The answer text of a transformers text / image-text generation pipeline call."""
    item = output[0] if isinstance(output, list) else output
    text = item["generated_text"]
    if isinstance(text, list):  # chat format: the conversation with the assistant's answer last
        text = text[-1]["content"]
    return text if isinstance(text, str) else str(text)


class VLMCaptioner:
    """Image captions and region descriptions from an ``image-text-to-text`` pipeline.

    Args:
        model: a hub id or directory of a chat VLM, or a ready pipeline.
        max_new_tokens: generation budget of the long caption (the others get a quarter).
    """

    def __init__(self, model="Qwen/Qwen2-VL-7B-Instruct", device=None, max_new_tokens: int = 256):
        if isinstance(model, str):
            from transformers import pipeline

            model = pipeline("image-text-to-text", model=model, device=device)
        self.vlm = model
        self.max_new_tokens = max_new_tokens

    def _ask(self, image: Image.Image, prompt: str, max_new_tokens: int) -> str:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
        output = self.vlm(text=messages, max_new_tokens=max_new_tokens, return_full_text=False)
        return _generated_text(output).strip()

    def caption(self, image: Image.Image) -> tuple[str, str]:
        """(long caption, short caption prefixed "a photo of ")."""
        long = re.sub(r"\s+", " ", self._ask(image, LONG_CAPTION_PROMPT, self.max_new_tokens))
        return long, short_caption(self._ask(image, SHORT_CAPTION_PROMPT, self.max_new_tokens // 4))

    def describe_region(self, image: Image.Image, box: tuple[float, float, float, float], expression: Expression) -> str:
        """A one-sentence description of the region (the ``long_expr``), from its crop."""
        crop = image.crop(tuple(round(v) for v in box))
        text = self._ask(crop, REGION_PROMPT.format(expression=expression.text), self.max_new_tokens // 4)
        return re.sub(r"\s+", " ", text).strip() or expression.phrase


class LLMNegativeWriter:
    """Hard negatives of an expression from a ``text-generation`` chat pipeline.

    Args:
        model: a hub id or directory of an instruction LLM, or a ready pipeline.
        count: negatives per expression (10 in FineHARD).
    """

    def __init__(self, model="meta-llama/Llama-3.1-8B-Instruct", device=None, count: int = 10,
                 max_new_tokens: int = 256):
        if isinstance(model, str):
            from transformers import pipeline

            model = pipeline("text-generation", model=model, device=device)
        self.llm = model
        self.count = count
        self.max_new_tokens = max_new_tokens

    def __call__(self, expression: Expression) -> tuple[str, ...] | None:
        prompt = NEGATIVE_PROMPT.format(phrase=expression.text, count=self.count + 2, head=expression.head)
        output = self.llm([{"role": "user", "content": prompt}], max_new_tokens=self.max_new_tokens,
                          return_full_text=False)
        return parse_negatives(_generated_text(output), expression, self.count)
